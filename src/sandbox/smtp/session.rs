//! The SMTP conversation without I/O: one [`Session`] per connection turns command lines into replies and
//! keeps the envelope (sender, recipients). The listener (`mod.rs`) does the reading, DATA collection, the TLS
//! handshake after STARTTLS and faults; this file is what RFC 5321 and RFC 3207 (STARTTLS) say to answer, and is
//! unit-tested line by line.

use mail_parser::{MessageParser, PartType};

use crate::sandbox::record::Incoming;

/// Largest message accepted after DATA (advertised as `SIZE`).
pub(super) const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;
/// Most recipients of one message.
const MAX_RECIPIENTS: usize = 100;
/// Errors after which the connection is closed, so a client talking garbage cannot hold it forever.
const MAX_ERRORS: u32 = 10;
pub(super) const HOSTNAME: &str = "herald-sandbox";

/// What the listener does after a command.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Send this reply (one or more CRLF-terminated lines) and read the next command.
    Reply(String),
    /// Send the 354 reply and collect the message.
    Data(String),
    /// Send this reply and close the connection.
    Close(String),
    /// Send this reply (220), then run the TLS handshake and carry on over TLS with [`Session::secured`].
    StartTls(String),
}

/// The sender and recipients of the message being sent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Envelope {
    pub from: String,
    pub recipients: Vec<String>,
}

/// One connection's protocol state.
#[derive(Debug, Default)]
pub(super) struct Session {
    /// MAIL is refused until the connection is encrypted (`sandbox.smtp_require_tls`).
    require_tls: bool,
    /// The connection went through STARTTLS.
    secure: bool,
    greeted: bool,
    from: Option<String>,
    recipients: Vec<String>,
    errors: u32,
    /// Recipients refused so far (by address rules); the listener counts them as rejected.
    pub refused_recipients: u64,
}

fn reply(line: &str) -> Action {
    Action::Reply(format!("{line}\r\n"))
}

/// The address inside `<...>` after `FROM:` / `TO:` (case-insensitive, spaces allowed after the colon), and
/// the parameters after it.
fn path_argument<'a>(argument: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    let head = argument.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = argument[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let (address, params) = rest.split_once('>')?;
    Some((address.trim(), params.trim()))
}

impl Session {
    /// A new connection's session; with `require_tls`, MAIL waits for STARTTLS.
    pub fn new(require_tls: bool) -> Session {
        Session { require_tls, ..Session::default() }
    }

    /// The TLS handshake after STARTTLS succeeded. RFC 3207 §4.2: forget everything learnt before it (the
    /// greeting included), so the client must EHLO again. The error count carries over: it bounds the connection.
    pub fn secured(&mut self) {
        self.secure = true;
        self.greeted = false;
        self.reset();
    }

    /// Handles one command line (without its CRLF).
    pub fn command(&mut self, line: &str) -> Action {
        let (verb, argument) = match line.split_once(' ') {
            Some((verb, argument)) => (verb, argument.trim()),
            None => (line.trim(), ""),
        };
        let action = match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" if argument.is_empty() => reply("501 5.5.4 Syntax: EHLO hostname"),
            "EHLO" => {
                self.greeted = true;
                self.reset();
                // STARTTLS is offered only on a plain connection (RFC 3207 §4.2).
                let starttls = if self.secure { "" } else { "250-STARTTLS\r\n" };
                Action::Reply(format!(
                    "250-{HOSTNAME} greets {argument}\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE \
                     {MAX_MESSAGE_BYTES}\r\n{starttls}250-ENHANCEDSTATUSCODES\r\n250 SMTPUTF8\r\n"
                ))
            }
            "HELO" => {
                self.greeted = true;
                self.reset();
                Action::Reply(format!("250 {HOSTNAME}\r\n"))
            }
            "MAIL" => self.mail(argument),
            "RCPT" => self.rcpt(argument),
            "DATA" if !argument.is_empty() => reply("501 5.5.4 Syntax: DATA"),
            "DATA" if self.from.is_none() => reply("503 5.5.1 Error: need MAIL command"),
            "DATA" if self.recipients.is_empty() => reply("554 5.5.1 Error: no valid recipients"),
            "DATA" => Action::Data("354 End data with <CR><LF>.<CR><LF>\r\n".to_string()),
            "RSET" => {
                self.reset();
                reply("250 2.0.0 Ok")
            }
            "NOOP" => reply("250 2.0.0 Ok"),
            "QUIT" => Action::Close("221 2.0.0 Bye\r\n".to_string()),
            "STARTTLS" => self.starttls(argument),
            "VRFY" | "EXPN" | "HELP" | "TURN" | "ETRN" | "AUTH" | "BDAT" => {
                reply("502 5.5.1 Error: command not implemented")
            }
            _ => reply("500 5.5.2 Error: command not recognized"),
        };
        self.count_errors(action)
    }

    fn starttls(&mut self, argument: &str) -> Action {
        if !argument.is_empty() {
            return reply("501 5.5.4 Syntax: STARTTLS");
        }
        if self.secure {
            return reply("503 5.5.1 Error: TLS already active");
        }
        if !self.greeted {
            return reply("503 5.5.1 Error: send EHLO first");
        }
        if self.from.is_some() {
            return reply("503 5.5.1 Error: MAIL transaction in progress");
        }
        Action::StartTls("220 2.0.0 Ready to start TLS\r\n".to_string())
    }

    fn mail(&mut self, argument: &str) -> Action {
        if !self.greeted {
            return reply("503 5.5.1 Error: send EHLO or HELO first");
        }
        if self.require_tls && !self.secure {
            return reply("530 5.7.0 Must issue a STARTTLS command first");
        }
        if self.from.is_some() {
            return reply("503 5.5.1 Error: nested MAIL command");
        }
        let Some((address, params)) = path_argument(argument, "FROM:") else {
            return reply("501 5.5.4 Syntax: MAIL FROM:<address>");
        };
        let declared_size = params.split_ascii_whitespace().find_map(|p| {
            let (key, value) = p.split_once('=')?;
            key.eq_ignore_ascii_case("SIZE").then(|| value.parse::<u64>().unwrap_or(u64::MAX))
        });
        if declared_size.is_some_and(|size| size > MAX_MESSAGE_BYTES as u64) {
            return reply("552 5.3.4 Message size exceeds fixed limit");
        }
        self.from = Some(address.to_string());
        reply("250 2.1.0 Ok")
    }

    fn rcpt(&mut self, argument: &str) -> Action {
        if self.from.is_none() {
            return reply("503 5.5.1 Error: need MAIL command");
        }
        let Some((address, _params)) = path_argument(argument, "TO:") else {
            return reply("501 5.5.4 Syntax: RCPT TO:<address>");
        };
        let Some((local, domain)) = address.rsplit_once('@') else {
            return reply("501 5.1.3 Bad recipient address syntax");
        };
        if local.is_empty() || domain.is_empty() {
            return reply("501 5.1.3 Bad recipient address syntax");
        }
        if self.recipients.len() >= MAX_RECIPIENTS {
            return reply("452 4.5.3 Error: too many recipients");
        }
        if address.contains("invalid") || address.contains("unregistered") {
            self.refused_recipients += 1;
            return reply("550 5.1.1 Recipient address rejected: user unknown");
        }
        self.recipients.push(address.to_string());
        reply("250 2.1.5 Ok")
    }

    /// Counts protocol errors (5.5.x: unknown, malformed, out of order); too many closes the connection.
    fn count_errors(&mut self, action: Action) -> Action {
        let Action::Reply(text) = &action else {
            return action;
        };
        if text.starts_with("50") {
            self.errors += 1;
            if self.errors >= MAX_ERRORS {
                return Action::Close(format!("{}421 4.7.0 {HOSTNAME} Error: too many errors\r\n", text));
            }
        }
        action
    }

    /// Hands over the envelope of the message just received and starts a new transaction.
    pub fn take_envelope(&mut self) -> Envelope {
        let envelope =
            Envelope { from: self.from.take().unwrap_or_default(), recipients: std::mem::take(&mut self.recipients) };
        self.reset();
        envelope
    }

    fn reset(&mut self) {
        self.from = None;
        self.recipients.clear();
    }
}

/// What the record keeps of a message: Subject, the first text/plain part, the first text/html part and the
/// `X-Herald-Delivery` header. A message mail-parser cannot read is kept as its raw text.
pub(super) fn parse_message(data: &[u8]) -> Incoming {
    let Some(message) = MessageParser::default().parse(data) else {
        return Incoming { body: String::from_utf8_lossy(data).into_owned(), ..Default::default() };
    };
    // `body_text` / `body_html` convert between the two when a part is missing; the record wants the parts
    // exactly as sent, so look at the part types.
    // A MIME part ends with the line break before its boundary (or the end of the message): that break belongs
    // to the encoding, not to the text the sender wrote.
    let text = message.text_body.iter().find_map(|&id| match &message.part(id)?.body {
        PartType::Text(text) => Some(text.strip_suffix("\r\n").or(text.strip_suffix('\n')).unwrap_or(text).to_string()),
        _ => None,
    });
    let html = message.html_body.iter().find_map(|&id| match &message.part(id)?.body {
        PartType::Html(html) => Some(html.to_string()),
        _ => None,
    });
    let reference = message.header_raw("X-Herald-Delivery").map(|raw| raw.trim().to_string()).filter(|r| !r.is_empty());
    Incoming {
        title: message.subject().map(str::to_string),
        body: text.unwrap_or_default(),
        html,
        reference,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(action: &Action) -> &str {
        match action {
            Action::Reply(text) | Action::Data(text) | Action::Close(text) | Action::StartTls(text) => &text[..3],
        }
    }

    fn run(session: &mut Session, lines: &[&str]) -> Vec<String> {
        lines.iter().map(|line| code(&session.command(line)).to_string()).collect()
    }

    #[test]
    fn a_plain_transaction_is_accepted() {
        let mut session = Session::default();
        let codes = run(
            &mut session,
            &["EHLO client", "MAIL FROM:<a@x.com> SIZE=100", "RCPT TO:<b@y.com>", "rcpt to: <c@y.com>", "DATA"],
        );
        assert_eq!(codes, ["250", "250", "250", "250", "354"]);
        let envelope = session.take_envelope();
        assert_eq!(envelope.from, "a@x.com");
        assert_eq!(envelope.recipients, ["b@y.com", "c@y.com"]);
        assert_eq!(run(&mut session, &["DATA", "MAIL FROM:<>", "QUIT"]), ["503", "250", "221"]);
    }

    #[test]
    fn ehlo_advertises_the_extensions_lettre_looks_for() {
        let Action::Reply(text) = Session::default().command("EHLO client") else { panic!("EHLO must reply") };
        let lines: Vec<&str> = text.trim_end().split("\r\n").collect();
        assert!(lines[..lines.len() - 1].iter().all(|l| l.starts_with("250-")));
        assert!(lines.last().unwrap().starts_with("250 "));
        for extension in ["PIPELINING", "8BITMIME", "SIZE 10485760"] {
            assert!(lines.iter().any(|l| l[4..] == *extension), "{extension}");
        }
    }

    fn ehlo_lines(session: &mut Session) -> Vec<String> {
        let Action::Reply(text) = session.command("EHLO client") else { panic!("EHLO must reply") };
        text.trim_end().split("\r\n").map(|l| l[4..].to_string()).collect()
    }

    #[test]
    fn starttls_is_offered_once_and_resets_the_session() {
        let mut session = Session::default();
        assert!(ehlo_lines(&mut session).contains(&"STARTTLS".to_string()));
        assert_eq!(run(&mut session, &["STARTTLS now", "MAIL FROM:<a@x.com>", "STARTTLS"]), ["501", "250", "503"]);
        assert_eq!(run(&mut session, &["RSET"]), ["250"]);
        assert!(
            matches!(session.command("STARTTLS"), Action::StartTls(text) if text == "220 2.0.0 Ready to start TLS\r\n")
        );
        session.secured();
        // RFC 3207: the client must greet again, and STARTTLS is neither offered nor accepted any more.
        assert_eq!(run(&mut session, &["MAIL FROM:<a@x.com>"]), ["503"]);
        assert!(!ehlo_lines(&mut session).contains(&"STARTTLS".to_string()));
        assert_eq!(run(&mut session, &["STARTTLS", "MAIL FROM:<a@x.com>"]), ["503", "250"]);
    }

    #[test]
    fn starttls_needs_a_greeting_first() {
        assert_eq!(run(&mut Session::default(), &["STARTTLS"]), ["503"]);
    }

    #[test]
    fn required_tls_refuses_mail_until_starttls() {
        let mut session = Session::new(true);
        assert_eq!(run(&mut session, &["EHLO c", "MAIL FROM:<a@x.com>", "STARTTLS"]), ["250", "530", "220"]);
        session.secured();
        assert_eq!(run(&mut session, &["EHLO c", "MAIL FROM:<a@x.com>"]), ["250", "250"]);
    }

    #[test]
    fn out_of_order_and_malformed_commands_are_refused() {
        let mut session = Session::default();
        assert_eq!(run(&mut session, &["MAIL FROM:<a@x.com>", "RCPT TO:<b@y.com>", "EHLO"]), ["503", "503", "501"]);
        assert_eq!(
            run(&mut session, &["HELO c", "MAIL TO:<a@x.com>", "MAIL FROM:a@x.com", "MAIL FROM:<a@x.com>"]),
            ["250", "501", "501", "250"]
        );
        assert_eq!(
            run(&mut session, &["MAIL FROM:<a@x.com>", "RCPT TO:<nobody>", "DATA", "DATA now"]),
            ["503", "501", "554", "501"]
        );
        assert_eq!(run(&mut session, &["VRFY x", "FROB", "RSET", "NOOP"]), ["502", "500", "250", "250"]);
    }

    #[test]
    fn rules_and_limits_apply() {
        let mut session = Session::default();
        assert_eq!(run(&mut session, &["EHLO c", "MAIL FROM:<a@x.com> SIZE=99999999999"]), ["250", "552"]);
        assert_eq!(run(&mut session, &["MAIL FROM:<a@x.com>", "RCPT TO:<invalid@y.com>"]), ["250", "550"]);
        assert_eq!(session.refused_recipients, 1);
    }

    #[test]
    fn garbage_closes_the_connection_after_too_many_errors() {
        let mut session = Session::default();
        let closing = (0..MAX_ERRORS).map(|_| session.command("\u{fffd}\u{fffd} garbage")).last().unwrap();
        assert!(matches!(closing, Action::Close(text) if text.contains("421")));
    }

    #[test]
    fn messages_are_parsed_into_the_record_fields() {
        let raw = "From: a@x.com\r\nTo: b@y.com\r\nSubject: Hello\r\nX-Herald-Delivery: d-42\r\n\
                   MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n\
                   --b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain body\r\n\
                   --b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>html body</p>\r\n--b--\r\n";
        let parsed = parse_message(raw.as_bytes());
        assert_eq!(parsed.title.as_deref(), Some("Hello"));
        assert_eq!(parsed.body.trim_end(), "plain body");
        assert_eq!(parsed.html.as_deref().map(str::trim_end), Some("<p>html body</p>"));
        assert_eq!(parsed.reference.as_deref(), Some("d-42"));

        let text_only = parse_message(b"Subject: t\r\n\r\njust text\r\n");
        assert_eq!((text_only.body.trim_end(), text_only.html), ("just text", None));
        let html_only = parse_message(b"Subject: t\r\nContent-Type: text/html\r\n\r\n<b>x</b>\r\n");
        assert_eq!((html_only.body.as_str(), html_only.html.is_some()), ("", true));
    }
}

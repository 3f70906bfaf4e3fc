//! The SMTP client: one message per delivery over a pooled lettre transport (`transport.rs`: TLS, trusted
//! roots, AUTH), the message written by `message.rs`, failures classified by `error.rs`.

use std::time::Duration;

use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::transport::smtp::response::Response;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::{SmtpError, SmtpSettings, message, transport};
use crate::domain::contact::mask;
use crate::domain::{Address, ProviderKind};
use crate::providers::{Accepted, BuildError, Provider, ProviderError, SendRequest, log_refusal, wrong_address};

/// Sends e-mail through one SMTP relay.
pub struct SmtpClient {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpClient {
    /// `extra_roots` are PEM bundles trusted besides the system's roots (see [`super::extra_root_pems`]).
    /// Must be called inside a Tokio runtime: the connection pool starts its cleanup task.
    pub fn new(settings: &SmtpSettings, timeout: Duration, extra_roots: &[Vec<u8>]) -> Result<SmtpClient, BuildError> {
        let from = settings
            .from
            .parse::<Mailbox>()
            .map_err(|e| BuildError::invalid("smtp", "from", format!("`{}`: {e}", settings.from)))?;
        if settings.host.is_empty() {
            return Err(BuildError::invalid("smtp", "host", "must not be empty"));
        }
        if settings.pool_size == 0 {
            return Err(BuildError::invalid("smtp", "pool_size", "must be at least 1"));
        }
        Ok(SmtpClient { transport: transport::build(settings, timeout, extra_roots)?, from })
    }
}

#[async_trait]
impl Provider for SmtpClient {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Smtp
    }

    async fn send(&self, request: &SendRequest) -> Result<Accepted, ProviderError> {
        let Address::Email { email } = &request.address else {
            return Err(wrong_address(ProviderKind::Smtp, &request.address));
        };
        let message = match message::build(&self.from, request, email) {
            Ok(message) => message,
            Err(error) => return Err(refused(error, "the message could not be built".into(), email)),
        };
        match self.transport.send(message).await {
            Ok(response) => Ok(Accepted::Delivered { provider_message_id: queue_id(&response) }),
            Err(e) => {
                // Servers quote the recipient in their replies; keep it out of the timeline and the logs.
                let text = e.to_string().replace(email.as_str(), &mask(email));
                Err(refused(SmtpError::from_lettre(&e), text, email))
            }
        }
    }
}

fn refused(error: SmtpError, message: String, email: &str) -> ProviderError {
    let label = error.metric_label();
    let error = error.into_provider_error(message);
    log_refusal(&error, label, email);
    error
}

/// The queue id from a `250 2.0.0 Ok: queued as 4F2A1C` reply, else the whole reply text.
fn queue_id(response: &Response) -> Option<String> {
    let text = response.message().collect::<Vec<_>>().join(" ");
    if let Some((_, rest)) = text.split_once("queued as ")
        && let Some(id) = rest.split_whitespace().next()
    {
        return Some(id.trim_matches(|c: char| "<>()[].,;".contains(c)).to_string());
    }
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;
    use crate::domain::{Priority, Rendered};
    use crate::providers::ErrorClass;
    use crate::providers::smtp::SmtpTls;
    use crate::providers::testing::{DELIVERY_ID, request};

    /// A minimal plain SMTP server (no STARTTLS offered): accepts every command, answers RCPT by the recipient's
    /// local part (`busy` → 451, `nobody` → 550, `throttled` → 450 4.7.1), and keeps each DATA payload.
    struct FakeSmtp {
        port: u16,
        messages: Arc<Mutex<Vec<String>>>,
    }

    impl FakeSmtp {
        async fn start() -> FakeSmtp {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let messages = Arc::new(Mutex::new(Vec::new()));
            let kept = Arc::clone(&messages);
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(converse(stream, Arc::clone(&kept)));
                }
            });
            FakeSmtp { port, messages }
        }
    }

    async fn converse(stream: tokio::net::TcpStream, kept: Arc<Mutex<Vec<String>>>) {
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read);
        write.write_all(b"220 fake.test ESMTP\r\n").await.unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let command = line.to_ascii_uppercase();
            let reply: &[u8] = if command.starts_with("EHLO") || command.starts_with("HELO") {
                b"250 fake.test\r\n"
            } else if command.starts_with("RCPT") && line.contains("busy@") {
                b"451 4.3.0 mailbox busy, try later\r\n"
            } else if command.starts_with("RCPT") && line.contains("throttled@") {
                b"450 4.7.1 Error: too much mail from 127.0.0.1\r\n"
            } else if command.starts_with("RCPT") && line.contains("nobody@") {
                b"550 5.1.1 <nobody@example.com>: user unknown\r\n"
            } else if command.starts_with("DATA") {
                write.write_all(b"354 go ahead\r\n").await.unwrap();
                let mut data = String::new();
                loop {
                    line.clear();
                    lines.read_line(&mut line).await.unwrap();
                    if line == ".\r\n" {
                        break;
                    }
                    data.push_str(&line);
                }
                kept.lock().push(data);
                b"250 2.0.0 Ok: queued as Q4F2A1C\r\n"
            } else if command.starts_with("QUIT") {
                let _ = write.write_all(b"221 bye\r\n").await;
                return;
            } else {
                b"250 ok\r\n"
            };
            write.write_all(reply).await.unwrap();
        }
    }

    /// A plain-SMTP client for the fake server (TLS is tested against the sandbox in `transport.rs`).
    fn client(port: u16) -> SmtpClient {
        client_with(port, SmtpTls::None)
    }

    fn client_with(port: u16, tls: SmtpTls) -> SmtpClient {
        let settings = SmtpSettings {
            host: "127.0.0.1".into(),
            port,
            from: "Herald <herald@example.com>".into(),
            pool_size: 2,
            tls,
            username: String::new(),
            password: Default::default(),
        };
        SmtpClient::new(&settings, Duration::from_secs(5), &[]).unwrap()
    }

    fn mail(to: &str, html: Option<&str>) -> SendRequest {
        let mut req = request(Address::Email { email: to.into() }, Some("Your code"), "Code: 1234", Priority::Normal);
        req.content = Arc::new(Rendered { html: html.map(str::to_string), ..(*req.content).clone() });
        req
    }

    #[tokio::test]
    async fn text_mail_gets_a_generated_html_part_and_the_delivery_header() {
        let server = FakeSmtp::start().await;
        let accepted = client(server.port).send(&mail("kim@example.com", None)).await.unwrap();
        assert_eq!(accepted, Accepted::Delivered { provider_message_id: Some("Q4F2A1C".into()) });
        let raw = server.messages.lock()[0].clone();
        let parsed = mail_parser::MessageParser::default().parse(raw.as_bytes()).unwrap();
        assert_eq!(parsed.subject(), Some("Your code"));
        assert_eq!(parsed.header_raw("X-Herald-Delivery").map(str::trim), Some(DELIVERY_ID));
        assert_eq!(parsed.from().unwrap().first().unwrap().address(), Some("herald@example.com"));
        assert_eq!(parsed.to().unwrap().first().unwrap().address(), Some("kim@example.com"));
        assert!(raw.contains("multipart/alternative"), "{raw}");
        assert_eq!(parsed.body_text(0).unwrap().trim(), "Code: 1234");
        assert_eq!(parsed.body_html(0).unwrap().trim(), message::html_from_text("Code: 1234"));
    }

    #[tokio::test]
    async fn html_mail_is_multipart_alternative() {
        let server = FakeSmtp::start().await;
        client(server.port).send(&mail("kim@example.com", Some("<p>Code: <b>1234</b></p>"))).await.unwrap();
        let raw = server.messages.lock()[0].clone();
        assert!(raw.contains("multipart/alternative"), "{raw}");
        let parsed = mail_parser::MessageParser::default().parse(raw.as_bytes()).unwrap();
        assert_eq!(parsed.body_text(0).unwrap().trim(), "Code: 1234");
        assert_eq!(parsed.body_html(0).unwrap().trim(), "<p>Code: <b>1234</b></p>");
    }

    #[tokio::test]
    async fn a_missing_title_is_an_empty_subject() {
        let server = FakeSmtp::start().await;
        let mut req = mail("kim@example.com", None);
        req.content = Arc::new(Rendered { title: None, ..(*req.content).clone() });
        client(server.port).send(&req).await.unwrap();
        assert!(server.messages.lock()[0].contains("Subject: \r\n"));
    }

    #[tokio::test]
    async fn reply_codes_decide_the_class() {
        let server = FakeSmtp::start().await;
        let client = client(server.port);
        let error = client.send(&mail("busy@example.com", None)).await.unwrap_err();
        assert_eq!((error.class, error.code.as_str()), (ErrorClass::Retryable, "451"));
        let error = client.send(&mail("nobody@example.com", None)).await.unwrap_err();
        assert_eq!((error.class, error.code.as_str()), (ErrorClass::Permanent, "550"));
        assert!(!error.message.contains("nobody@example.com"), "{}", error.message);
        // The pool recovers: the next message goes through.
        assert!(client.send(&mail("kim@example.com", None)).await.is_ok());
    }

    #[tokio::test]
    async fn throttling_pauses_the_provider() {
        let server = FakeSmtp::start().await;
        let error = client(server.port).send(&mail("throttled@example.com", None)).await.unwrap_err();
        assert_eq!((error.class, error.code.as_str(), error.alert), (ErrorClass::RateLimited, "450", false));
    }

    #[tokio::test]
    async fn required_starttls_is_not_given_up_for_a_relay_without_it() {
        let server = FakeSmtp::start().await;
        let error = client_with(server.port, SmtpTls::Starttls).send(&mail("kim@example.com", None)).await.unwrap_err();
        assert_eq!((error.class, error.code.as_str(), error.alert), (ErrorClass::Permanent, "tls", true), "{error}");
        assert!(server.messages.lock().is_empty());
        // Opportunistic TLS falls back to plain text when STARTTLS is not offered.
        client_with(server.port, SmtpTls::Opportunistic).send(&mail("kim@example.com", None)).await.unwrap();
        assert_eq!(server.messages.lock().len(), 1);
    }

    #[tokio::test]
    async fn a_dead_server_is_a_transport_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let error = client(port).send(&mail("kim@example.com", None)).await.unwrap_err();
        assert_eq!((error.class, error.code.as_str()), (ErrorClass::Retryable, "transport"));
    }

    #[tokio::test]
    async fn an_unusable_address_is_permanent() {
        let server = FakeSmtp::start().await;
        let error = client(server.port).send(&mail("not an address", None)).await.unwrap_err();
        assert_eq!((error.class, error.code.as_str()), (ErrorClass::Permanent, "invalid_address"));
        assert!(server.messages.lock().is_empty());
    }

    #[test]
    fn queue_ids_are_read_from_the_reply() {
        use lettre::transport::smtp::response::{Category, Code, Detail, Severity};
        let code = Code::new(Severity::PositiveCompletion, Category::MailSystem, Detail::Zero);
        let reply = |text: &str| Response::new(code, vec![text.to_string()]);
        assert_eq!(queue_id(&reply("2.0.0 Ok: queued as 4F2A1C")).as_deref(), Some("4F2A1C"));
        assert_eq!(queue_id(&reply("2.0.0 Ok: queued as <abc@host>")).as_deref(), Some("abc@host"));
        assert_eq!(queue_id(&reply("OK id=1x2y")).as_deref(), Some("OK id=1x2y"));
        assert_eq!(queue_id(&reply("")), None);
    }
}

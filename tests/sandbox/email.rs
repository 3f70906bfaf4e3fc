//! SMTP: lettre interop (multipart, several recipients, custom header), refused recipients, a hand-written
//! pipelined dialogue with dot-stuffing, garbage that must not take the listener down, and STARTTLS (lettre and
//! a hand-written upgrade with tokio-rustls, `smtp_require_tls`).

use herald::domain::{Channel, ProviderKind};
use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::collections::BTreeMap;
use std::sync::Arc;

use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{DEADLINE, Sandbox, settings, spawn, spawn_configured};

/// Herald's delivery id header, as the SMTP provider client sets it.
#[derive(Clone)]
struct HeraldDelivery(String);

impl Header for HeraldDelivery {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("X-Herald-Delivery")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(HeraldDelivery(s.to_string()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

fn mailer(sandbox: &Sandbox) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1").port(sandbox.handle.smtp_addr().port()).build()
}

fn mailbox(address: &str) -> Mailbox {
    address.parse().unwrap()
}

#[tokio::test]
async fn lettre_multipart_mail_is_recorded_once_per_recipient() {
    let sandbox = spawn().await;
    let email = Message::builder()
        .from(mailbox("Herald <herald@example.com>"))
        .to(mailbox("kim@example.com"))
        .cc(mailbox("lee@example.com"))
        .subject("주문이 발송되었습니다")
        .header(HeraldDelivery("d-mail-1".to_string()))
        .multipart(MultiPart::alternative_plain_html(
            String::from("Your order has shipped.\n.leading dot line"),
            String::from("<p>Your order has <b>shipped</b>.</p>"),
        ))
        .unwrap();
    let response = mailer(&sandbox).send(email).await.expect("lettre sends");
    assert_eq!(response.code().to_string(), "250");
    let queue_id = response.message().next().unwrap().rsplit(' ').next().unwrap().to_string();

    let record = sandbox.handle.record();
    assert_eq!(record.iter().map(|m| m.to.as_str()).collect::<Vec<_>>(), ["kim@example.com", "lee@example.com"]);
    for message in &record {
        assert_eq!((message.channel, message.provider), (Channel::Email, ProviderKind::Smtp));
        assert_eq!(message.title.as_deref(), Some("주문이 발송되었습니다"));
        // lettre sends CRLF line endings; the leading dot survives stuffing and unstuffing.
        assert_eq!(message.body.trim_end(), "Your order has shipped.\r\n.leading dot line");
        assert_eq!(message.html.as_deref().map(str::trim_end), Some("<p>Your order has <b>shipped</b>.</p>"));
        assert_eq!(message.reference.as_deref(), Some("d-mail-1"));
        assert_eq!(message.provider_message_id, queue_id);
    }
}

#[tokio::test]
async fn invalid_recipients_are_refused_and_not_recorded() {
    let sandbox = spawn().await;
    let email = Message::builder()
        .from(mailbox("herald@example.com"))
        .to(mailbox("invalid-user@example.com"))
        .subject("x")
        .body(String::from("x"))
        .unwrap();
    let error = mailer(&sandbox).send(email).await.expect_err("550");
    assert!(error.is_permanent(), "{error}");
    assert_eq!(error.status().map(|c| c.to_string()).as_deref(), Some("550"));
    assert!(sandbox.handle.record().is_empty());
}

/// Reads one (possibly multi-line) reply and returns its lines.
async fn read_reply<R: AsyncBufRead + Unpin>(reader: &mut R) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let read = tokio::time::timeout(DEADLINE, reader.read_line(&mut line)).await.expect("reply in time").unwrap();
        assert!(read > 0, "connection closed while waiting for a reply; got {lines:?}");
        let done = line.as_bytes().get(3) != Some(&b'-');
        lines.push(line.trim_end().to_string());
        if done {
            return lines;
        }
    }
}

async fn codes<R: AsyncBufRead + Unpin>(reader: &mut R, n: usize) -> Vec<String> {
    let mut codes = Vec::new();
    for _ in 0..n {
        codes.push(read_reply(reader).await.last().unwrap()[..3].to_string());
    }
    codes
}

#[tokio::test]
async fn a_pipelined_dialogue_with_dot_stuffing_is_understood() {
    let sandbox = spawn().await;
    let (read, mut write) = TcpStream::connect(sandbox.handle.smtp_addr()).await.unwrap().into_split();
    let mut reader = BufReader::new(read);
    assert_eq!(codes(&mut reader, 1).await, ["220"]);
    // Everything up to DATA in one write, as a pipelining client does.
    write
        .write_all(b"EHLO tester\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<nobody@invalid.example>\r\nDATA\r\n")
        .await
        .unwrap();
    assert_eq!(codes(&mut reader, 5).await, ["250", "250", "250", "550", "354"]);
    write
        .write_all(b"Subject: dots\r\nX-Herald-Delivery: d-raw\r\n\r\nline one\r\n..starts with a dot\r\n.\r\nNOOP\r\nQUIT\r\n")
        .await
        .unwrap();
    assert_eq!(codes(&mut reader, 3).await, ["250", "250", "221"]);

    let record = sandbox.handle.record();
    assert_eq!(record.len(), 1);
    assert_eq!(record[0].to, "b@example.com");
    assert_eq!(record[0].body, "line one\r\n.starts with a dot", "the final line break belongs to the encoding");
    assert_eq!((record[0].title.as_deref(), record[0].reference.as_deref()), (Some("dots"), Some("d-raw")));
}

#[tokio::test]
async fn garbage_does_not_take_the_listener_down() {
    let sandbox = spawn().await;
    let addr = sandbox.handle.smtp_addr();

    // Binary noise and unknown commands: errors, then the server hangs up.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut noise = Vec::new();
    for i in 0..40u8 {
        noise.extend_from_slice(&[0xff, 0xfe, i, 0x00, b'\r', b'\n']);
    }
    stream.write_all(&noise).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer)).await.expect("server closes").unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("220 ") && answer.contains("500 ") && answer.contains("421 "), "{answer}");

    // A line far beyond the cap: refused and closed.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(&vec![b'A'; 100_000]).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer)).await.expect("server closes");
    assert!(String::from_utf8_lossy(&answer).contains("500 5.5.2"), "{}", String::from_utf8_lossy(&answer));

    // A client vanishing in the middle of DATA.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"HELO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nhalf a mess").await.unwrap();
    drop(stream);

    // The listener still serves real clients afterwards.
    let email = Message::builder()
        .from(mailbox("herald@example.com"))
        .to(mailbox("kim@example.com"))
        .subject("still alive")
        .body(String::from("ok"))
        .unwrap();
    mailer(&sandbox).send(email).await.expect("listener still works");
    let record = sandbox.wait_for_records(1).await;
    assert_eq!(record.len(), 1);
    assert_eq!(record[0].title.as_deref(), Some("still alive"));
}

/// lettre with required STARTTLS, trusting the sandbox's CA, to the sandbox's SMTP port under `host`.
fn tls_mailer(sandbox: &Sandbox, host: &str) -> AsyncSmtpTransport<Tokio1Executor> {
    let root = Certificate::from_pem(sandbox.handle.ca_pem().as_bytes()).unwrap();
    let parameters = TlsParameters::builder(host.to_string()).add_root_certificate(root).build_rustls().unwrap();
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(sandbox.handle.smtp_addr().port())
        .tls(Tls::Required(parameters))
        .build()
}

/// A sandbox whose SMTP refuses MAIL before STARTTLS.
async fn spawn_requiring_tls() -> Sandbox {
    let mut settings = settings(42, BTreeMap::new());
    settings.smtp_require_tls = true;
    spawn_configured(settings, "").await
}

#[tokio::test]
async fn lettre_upgrades_with_starttls_and_the_mail_is_recorded_with_both_parts() {
    let sandbox = spawn_requiring_tls().await;
    for (n, host) in ["localhost", "127.0.0.1"].into_iter().enumerate() {
        let email = Message::builder()
            .from(mailbox("herald@example.com"))
            .to(mailbox("kim@example.com"))
            .subject(format!("over tls {n}"))
            .header(HeraldDelivery(format!("d-tls-{n}")))
            .multipart(MultiPart::alternative_plain_html(String::from("plain part"), String::from("<p>html part</p>")))
            .unwrap();
        let response = tls_mailer(&sandbox, host).send(email).await.expect("lettre sends over STARTTLS");
        assert_eq!(response.code().to_string(), "250");
    }
    let record = sandbox.handle.record();
    assert_eq!(record.len(), 2);
    for (n, message) in record.iter().enumerate() {
        assert_eq!(message.title.as_deref(), Some(format!("over tls {n}").as_str()));
        assert_eq!(message.body, "plain part");
        assert_eq!(message.html.as_deref().map(str::trim_end), Some("<p>html part</p>"));
        assert_eq!(message.reference.as_deref(), Some(format!("d-tls-{n}").as_str()));
    }
}

#[tokio::test]
async fn required_tls_refuses_mail_before_starttls() {
    let sandbox = spawn_requiring_tls().await;
    let mut plain = BufReader::new(TcpStream::connect(sandbox.handle.smtp_addr()).await.unwrap());
    assert_eq!(codes(&mut plain, 1).await, ["220"]);
    plain.write_all(b"EHLO tester\r\nMAIL FROM:<a@example.com>\r\n").await.unwrap();
    let ehlo = read_reply(&mut plain).await;
    assert!(ehlo.iter().any(|line| &line[4..] == "STARTTLS"), "{ehlo:?}");
    assert_eq!(read_reply(&mut plain).await, ["530 5.7.0 Must issue a STARTTLS command first"]);

    // lettre without TLS gets the same answer, as a permanent error.
    let email = Message::builder()
        .from(mailbox("herald@example.com"))
        .to(mailbox("kim@example.com"))
        .subject("plain")
        .body(String::from("x"))
        .unwrap();
    let error = mailer(&sandbox).send(email).await.expect_err("530");
    assert_eq!(error.status().map(|c| c.to_string()).as_deref(), Some("530"), "{error}");
    assert!(sandbox.handle.record().is_empty());
}

/// A tokio-rustls client trusting only the sandbox's CA.
fn connector(sandbox: &Sandbox) -> TlsConnector {
    herald::sandbox::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(sandbox.handle.ca_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// Writes `text` and flushes it (a TLS stream only sends on flush).
async fn say<S: AsyncWrite + Unpin>(stream: &mut S, text: &str) {
    stream.write_all(text.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
}

#[tokio::test]
async fn a_hand_written_starttls_session_resets_and_refuses_a_second_starttls() {
    let sandbox = spawn_requiring_tls().await;
    let mut plain = BufReader::new(TcpStream::connect(sandbox.handle.smtp_addr()).await.unwrap());
    assert_eq!(codes(&mut plain, 1).await, ["220"]);
    say(&mut plain, "EHLO tester\r\n").await;
    read_reply(&mut plain).await;
    say(&mut plain, "STARTTLS\r\n").await;
    assert_eq!(read_reply(&mut plain).await, ["220 2.0.0 Ready to start TLS"]);

    let name = ServerName::try_from("localhost").unwrap();
    let tls = connector(&sandbox).connect(name, plain.into_inner()).await.expect("handshake with the sandbox CA");
    let mut secure = BufReader::new(tls);
    // RFC 3207: the session starts over; MAIL needs a new EHLO, which no longer offers STARTTLS.
    say(&mut secure, "MAIL FROM:<a@example.com>\r\n").await;
    assert_eq!(codes(&mut secure, 1).await, ["503"]);
    say(&mut secure, "EHLO tester\r\n").await;
    let ehlo = read_reply(&mut secure).await;
    assert!(ehlo[0].starts_with("250-") && !ehlo.iter().any(|line| line.contains("STARTTLS")), "{ehlo:?}");
    say(&mut secure, "STARTTLS\r\n").await;
    assert_eq!(codes(&mut secure, 1).await, ["503"]);

    say(&mut secure, "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n").await;
    assert_eq!(codes(&mut secure, 3).await, ["250", "250", "354"]);
    say(
        &mut secure,
        "Subject: secret\r\nX-Herald-Delivery: d-raw-tls\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/alternative; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\ntext\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--b--\r\n.\r\n",
    )
    .await;
    assert_eq!(codes(&mut secure, 1).await, ["250"]);

    // The line cap holds over TLS too: refused, then the connection is closed.
    secure.write_all(&vec![b'A'; 10_000]).await.unwrap();
    secure.flush().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, secure.read_to_end(&mut rest)).await.expect("server closes");
    assert!(String::from_utf8_lossy(&rest).starts_with("500 5.5.2"), "{}", String::from_utf8_lossy(&rest));

    let record = sandbox.handle.record();
    assert_eq!(record.len(), 1);
    assert_eq!((record[0].title.as_deref(), record[0].reference.as_deref()), (Some("secret"), Some("d-raw-tls")));
    assert_eq!((record[0].body.as_str(), record[0].html.as_deref().map(str::trim_end)), ("text", Some("<p>html</p>")));
}

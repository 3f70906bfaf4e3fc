//! Interop with an SMTP server Herald did not write: real HTTP into Herald, e-mail out over STARTTLS to aiosmtpd
//! (`tests/fixtures/smtp_sink.py`, STARTTLS required, certificate from a CA generated here), which writes each
//! message to a file that is parsed back with mail-parser. Skipped with a notice when `python3` cannot import
//! aiosmtpd, unless `HERALD_REQUIRE_AIOSMTPD=1` (CI), where the skip is a failure.

mod app;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use app::{TestApp, spawn_app_with, statuses};
use herald::providers::smtp::SmtpTls;
use mail_parser::{MessageParser, MimeHeaders};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long to wait for the sink to start or a message to arrive before failing (a hang guard only).
const DEADLINE: Duration = Duration::from_secs(30);

/// A running aiosmtpd, its files, and the CA its certificate chains to.
struct Sink {
    port: u16,
    out_dir: PathBuf,
    ca_pem: String,
    /// Killed on drop; it also exits by itself when its stdin (held here) closes.
    _child: Child,
    _dir: TempDir,
}

fn aiosmtpd_importable() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A CA and a server certificate it signs for `localhost` and `127.0.0.1`: (CA PEM, chain PEM, key PEM).
fn certificates() -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name.push(DnType::CommonName, "Herald interop test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    (ca_cert.pem(), format!("{}{}", server_cert.pem(), ca_cert.pem()), server_key.serialize_pem())
}

async fn start_sink() -> Sink {
    let dir = TempDir::new().unwrap();
    let (ca_pem, chain_pem, key_pem) = certificates();
    let (cert, key, out_dir) = (dir.path().join("cert.pem"), dir.path().join("key.pem"), dir.path().join("out"));
    std::fs::write(&cert, chain_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    std::fs::create_dir(&out_dir).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smtp_sink.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args([&cert, &key, &out_dir])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("aiosmtpd starts in time")
        .unwrap()
        .expect("smtp_sink.py prints READY <port> (see its stderr above)");
    let port = ready.strip_prefix("READY ").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{ready}"));
    Sink { port, out_dir, ca_pem, _child: child, _dir: dir }
}

impl Sink {
    /// The envelope and raw content of the `n`th message (from 1), once written.
    async fn message(&self, n: usize) -> (Value, Vec<u8>) {
        let meta = self.out_dir.join(format!("{n}.json"));
        let give_up = Instant::now() + DEADLINE;
        while !meta.exists() {
            assert!(Instant::now() < give_up, "aiosmtpd never received message {n}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let envelope = serde_json::from_slice(&std::fs::read(meta).unwrap()).unwrap();
        (envelope, std::fs::read(self.out_dir.join(format!("{n}.eml"))).unwrap())
    }
}

/// Sends one e-mail to `u-mail` and waits for it to be delivered; returns the delivery.
async fn send_and_deliver(app: &TestApp, body: Value) -> Value {
    let id = app.send(body).await;
    let n = app.wait_final(&id).await;
    assert_eq!(statuses(&n), [("email".to_string(), "delivered".to_string())], "{n:#}");
    n["deliveries"][0].clone()
}

/// The decoded text of the first part whose type is `text/{subtype}`.
fn part(message: &mail_parser::Message<'_>, subtype: &str) -> Option<String> {
    message.parts.iter().find_map(|part| {
        let content_type = part.content_type()?;
        let is = content_type.ctype().eq_ignore_ascii_case("text")
            && content_type.subtype().is_some_and(|s| s.eq_ignore_ascii_case(subtype));
        is.then(|| part.text_contents().unwrap_or_default().replace("\r\n", "\n").trim_end().to_string())
    })
}

#[tokio::test]
async fn herald_delivers_multipart_mail_over_starttls_to_aiosmtpd() {
    if !aiosmtpd_importable() {
        assert_ne!(
            std::env::var("HERALD_REQUIRE_AIOSMTPD").as_deref(),
            Ok("1"),
            "HERALD_REQUIRE_AIOSMTPD=1 but `python3 -c 'import aiosmtpd'` fails (python3 -m pip install aiosmtpd)"
        );
        eprintln!("notice: skipping the aiosmtpd interop test: python3 cannot import aiosmtpd");
        return;
    }
    let sink = start_sink().await;
    let app = spawn_app_with(|s| {
        s.sandbox.enabled = false;
        s.providers.smtp.host = "127.0.0.1".into();
        s.providers.smtp.port = sink.port;
        s.providers.smtp.tls = SmtpTls::Starttls;
        s.providers.extra_root_ca_pem = Some(sink.ca_pem.clone());
    })
    .await;
    let (status, reply) = app.put("/v1/users/u-mail", json!({"email": "u-mail@example.com"})).await;
    assert_eq!(status, 200, "{reply}");

    // Content without HTML: Herald writes the HTML part from the text.
    let delivery = send_and_deliver(
        &app,
        json!({"user_id": "u-mail", "channels": ["email"],
               "content": {"title": "Order shipped", "body": "Your order <#42> is on its way\nTrack it & smile"}}),
    )
    .await;
    let (envelope, raw) = sink.message(1).await;
    assert_eq!(envelope, json!({"mail_from": "herald@example.com", "rcpt_tos": ["u-mail@example.com"], "tls": true}));
    assert_eq!(delivery["provider_message_id"], "SINK1", "the queue id from aiosmtpd's 250 reply");
    let message = MessageParser::default().parse(&raw).expect("a parseable message");
    assert_eq!(message.to().and_then(|to| to.first()).and_then(|a| a.address()), Some("u-mail@example.com"));
    assert_eq!(message.subject(), Some("Order shipped"));
    assert_eq!(message.header_raw("X-Herald-Delivery").map(str::trim), delivery["id"].as_str());
    let root = message.root_part().content_type().unwrap();
    assert_eq!((root.ctype(), root.subtype()), ("multipart", Some("alternative")));
    assert_eq!(part(&message, "plain").as_deref(), Some("Your order <#42> is on its way\nTrack it & smile"));
    assert_eq!(
        part(&message, "html").as_deref(),
        Some(
            "<!DOCTYPE html><html><body><p>Your order &lt;#42&gt; is on its way<br>Track it &amp; smile</p></body></html>"
        )
    );

    // A template with its own HTML, rendered with the parameters.
    let template = json!({"channels": {"email": {"en": {
        "title": "Welcome, {{name}}", "body": "Hello {{name}}", "html": "<h1>Hello <b>{{name}}</b></h1>"}}}});
    assert_eq!(app.put("/v1/templates/welcome", template).await.0, 200);
    let delivery = send_and_deliver(
        &app,
        json!({"user_id": "u-mail", "channels": ["email"], "template": {"id": "welcome", "params": {"name": "Kim"}}}),
    )
    .await;
    let (envelope, raw) = sink.message(2).await;
    assert_eq!((&envelope["rcpt_tos"], &envelope["tls"]), (&json!(["u-mail@example.com"]), &json!(true)));
    let message = MessageParser::default().parse(&raw).expect("a parseable message");
    assert_eq!(message.subject(), Some("Welcome, Kim"));
    assert_eq!(message.header_raw("X-Herald-Delivery").map(str::trim), delivery["id"].as_str());
    assert_eq!(part(&message, "plain").as_deref(), Some("Hello Kim"));
    assert_eq!(part(&message, "html").as_deref(), Some("<h1>Hello <b>Kim</b></h1>"));
    app.running.stop().await;
}

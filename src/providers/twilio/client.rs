//! The Twilio Messages client: one form POST per delivery, finished later by a status callback.

use std::borrow::Cow;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;

use super::{TwilioError, TwilioSettings};
use crate::domain::{Address, ProviderKind};
use crate::providers::{Accepted, BuildError, Provider, ProviderError, SendRequest, http, log_refusal, wrong_address};

/// Sends SMS through a Twilio-compatible Messages API.
pub struct TwilioClient {
    http: reqwest::Client,
    /// `{base}/2010-04-01/Accounts/{sid}/Messages.json`.
    url: reqwest::Url,
    /// `Basic base64(sid:auth_token)`.
    authorization: HeaderValue,
    from: String,
    /// `{callback_base}/webhooks/sms?delivery_id=`; the delivery id is appended per request.
    callback_prefix: String,
}

impl TwilioClient {
    pub fn new(
        http: reqwest::Client,
        settings: &TwilioSettings,
        callback_base: &str,
    ) -> Result<TwilioClient, BuildError> {
        let base = http::base_url("twilio", &settings.base_url)?;
        if settings.account_sid.is_empty() {
            return Err(BuildError::invalid("twilio", "account_sid", "must not be empty"));
        }
        if settings.from.is_empty() {
            return Err(BuildError::invalid("twilio", "from", "must not be empty"));
        }
        let mut url = format!("{base}/2010-04-01/Accounts/");
        http::push_encoded(&mut url, &settings.account_sid);
        url.push_str("/Messages.json");
        let credentials = STANDARD.encode(format!("{}:{}", settings.account_sid, settings.auth_token.expose()));
        let callback_base = callback_base.trim_end_matches('/');
        Ok(TwilioClient {
            http,
            url: http::url("twilio", &url)?,
            authorization: http::secret_header("twilio", "auth_token", &format!("Basic {credentials}"))?,
            from: settings.from.clone(),
            callback_prefix: format!("{callback_base}/webhooks/sms?delivery_id="),
        })
    }
}

#[async_trait]
impl Provider for TwilioClient {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Twilio
    }

    async fn send(&self, request: &SendRequest) -> Result<Accepted, ProviderError> {
        let Address::Phone { phone } = &request.address else {
            return Err(wrong_address(ProviderKind::Twilio, &request.address));
        };
        let body = sms_body(request.content.title.as_deref(), &request.content.body);
        let mut callback = String::with_capacity(self.callback_prefix.len() + request.delivery_id.len());
        callback.push_str(&self.callback_prefix);
        http::push_encoded(&mut callback, &request.delivery_id);
        let form: [(&str, &str); 4] =
            [("To", phone), ("From", &self.from), ("Body", &body), ("StatusCallback", &callback)];
        let sent =
            self.http.post(self.url.clone()).header(AUTHORIZATION, self.authorization.clone()).form(&form).send().await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => return Err(refused(TwilioError::Transport, 0, http::describe(e), None, phone)),
        };
        let status = response.status().as_u16();
        let retry_after = http::retry_after(response.headers());
        let bytes = response.bytes().await.unwrap_or_default();
        if (200..300).contains(&status) {
            let sid = serde_json::from_slice::<CreatedAnswer>(&bytes).ok().and_then(|a| a.sid);
            return Ok(Accepted::Sent { provider_message_id: sid });
        }
        let (error, message) = classify(status, &bytes);
        Err(refused(error, status, message, retry_after, phone))
    }
}

fn refused(
    error: TwilioError,
    status: u16,
    message: String,
    retry_after: Option<Duration>,
    phone: &str,
) -> ProviderError {
    let label = error.metric_label();
    let error = error.into_provider_error(status, message, retry_after);
    log_refusal(&error, label, phone);
    error
}

/// SMS has no subject: a title becomes the first line.
fn sms_body<'a>(title: Option<&str>, body: &'a str) -> Cow<'a, str> {
    match title {
        Some(title) if !title.is_empty() => Cow::Owned(format!("{title}\n{body}")),
        _ => Cow::Borrowed(body),
    }
}

/// Reads a Twilio error answer `{"code", "message", "more_info", "status"}`.
pub(crate) fn classify(status: u16, body: &[u8]) -> (TwilioError, String) {
    match serde_json::from_slice::<ErrorAnswer>(body) {
        Ok(answer) => (TwilioError::from_answer(status, answer.code), answer.message.unwrap_or_default()),
        Err(_) => (TwilioError::from_answer(status, None), http::snippet(body, 200)),
    }
}

#[derive(Deserialize)]
struct CreatedAnswer {
    sid: Option<String>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    code: Option<u32>,
    message: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Secret;
    use crate::domain::Priority;
    use crate::providers::ErrorClass;
    use crate::providers::testing::{Canned, DELIVERY_ID, FakePeer, dead_base_url, http_client, request};

    const SID: &str = "AC00000000000000000000000000000000";

    fn client(base_url: &str) -> TwilioClient {
        let settings = TwilioSettings {
            base_url: base_url.into(),
            account_sid: SID.into(),
            auth_token: Secret::new("auth-token"),
            from: "+15005550006".into(),
        };
        TwilioClient::new(http_client(), &settings, "https://herald.example/").unwrap()
    }

    fn sms(phone: &str, title: Option<&str>) -> SendRequest {
        request(Address::Phone { phone: phone.into() }, title, "Code: 1234", Priority::Normal)
    }

    #[tokio::test]
    async fn send_posts_the_form_with_basic_auth_and_callback() {
        let peer = FakePeer::start(|_| Canned::json(201, json!({"sid": "SM123", "status": "queued"}))).await;
        let accepted = client(&peer.base_url).send(&sms("+821012345678", Some("Herald"))).await.unwrap();
        assert_eq!(accepted, Accepted::Sent { provider_message_id: Some("SM123".into()) });
        let sent = &peer.requests()[0];
        assert_eq!(sent.target, format!("/2010-04-01/Accounts/{SID}/Messages.json"));
        let expected_auth = format!("Basic {}", STANDARD.encode(format!("{SID}:auth-token")));
        assert_eq!(sent.header("authorization"), Some(expected_auth.as_str()));
        assert_eq!(sent.header("content-type"), Some("application/x-www-form-urlencoded"));
        let callback = format!("https://herald.example/webhooks/sms?delivery_id={DELIVERY_ID}");
        let expected = [
            ("To", "+821012345678"),
            ("From", "+15005550006"),
            ("Body", "Herald\nCode: 1234"),
            ("StatusCallback", callback.as_str()),
        ];
        let expected: Vec<(String, String)> = expected.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(sent.form(), expected);
    }

    #[tokio::test]
    async fn without_a_title_the_body_is_sent_alone() {
        let peer = FakePeer::start(|_| Canned::json(201, json!({"sid": "SM1"}))).await;
        client(&peer.base_url).send(&sms("+821012345678", None)).await.unwrap();
        let form = peer.requests()[0].form();
        assert_eq!(form.iter().find(|(k, _)| k == "Body").unwrap().1, "Code: 1234");
    }

    #[tokio::test]
    async fn every_error_code_is_classified_from_the_wire() {
        let cases = [
            ("+10000021211", 400, Some(21211), ErrorClass::Permanent, "21211"),
            ("+10000021614", 400, Some(21614), ErrorClass::Permanent, "21614"),
            ("+10000021610", 400, Some(21610), ErrorClass::OptedOut, "21610"),
            ("+10000020429", 429, Some(20429), ErrorClass::RateLimited, "20429"),
            ("+10000000429", 429, None, ErrorClass::RateLimited, "http_429"),
            ("+10000020003", 401, Some(20003), ErrorClass::Permanent, "20003"),
            ("+10000000500", 500, None, ErrorClass::Retryable, "http_500"),
            ("+10000020500", 503, Some(20500), ErrorClass::Retryable, "20500"),
        ];
        let peer = FakePeer::start(move |r| {
            let to = r.form().into_iter().find(|(k, _)| k == "To").unwrap().1;
            let (_, status, code, ..) = cases.iter().find(|c| c.0 == to).unwrap();
            let body = match code {
                Some(code) => json!({"code": code, "message": "nope", "more_info": "", "status": status}),
                None => json!({"message": "nope", "status": status}),
            };
            Canned::json(*status, body).with_header("retry-after", "2")
        })
        .await;
        let client = client(&peer.base_url);
        for (to, _, _, class, code) in cases {
            let error = client.send(&sms(to, None)).await.unwrap_err();
            assert_eq!((error.class, error.code.as_str()), (class, code), "{to}");
            let wait = class.is_retried().then_some(Duration::from_secs(2));
            assert_eq!(error.retry_after, wait, "{to}");
            assert_eq!(error.alert, code == "20003", "{to}");
        }
    }

    /// A sandbox on port 0 with `faults` for Twilio; settings read as the config file would be, so fields added
    /// later take their defaults.
    async fn sandbox(faults: serde_json::Value) -> crate::sandbox::SandboxHandle {
        let settings = json!({"enabled": true, "listen": "127.0.0.1:0", "smtp_listen": "127.0.0.1:0",
                              "tls_listen": "127.0.0.1:0", "seed": 3, "faults": {"twilio": faults}});
        crate::sandbox::start(&serde_json::from_value(settings).unwrap(), String::new()).await.unwrap()
    }

    #[tokio::test]
    async fn the_sandbox_answers_are_classified() {
        let sandbox = sandbox(json!({})).await;
        let client = client(&format!("http://{}", sandbox.http_addr()));
        let accepted = client.send(&sms("+821012345678", None)).await.unwrap();
        assert!(matches!(accepted, Accepted::Sent { provider_message_id: Some(ref sid) } if sid.starts_with("SM")));
        for (to, class, code) in
            [("+8210invalid", ErrorClass::Permanent, "21211"), ("+821012optout", ErrorClass::OptedOut, "21610")]
        {
            let error = client.send(&sms(to, None)).await.unwrap_err();
            assert_eq!((error.class, error.code.as_str(), error.alert), (class, code, false), "{to}");
        }

        let storms = [
            (json!({"rate_limit_rate": 1.0, "retry_after_s": 2}), ErrorClass::RateLimited, "20429", Some(2)),
            (json!({"error_rate": 1.0}), ErrorClass::Retryable, "20500", None),
            (json!({"unregistered_rate": 1.0}), ErrorClass::Permanent, "21614", None),
        ];
        for (faults, class, code, wait) in storms {
            sandbox.set_faults(ProviderKind::Twilio, serde_json::from_value(faults).unwrap());
            let error = client.send(&sms("+821012345678", None)).await.unwrap_err();
            assert_eq!((error.class, error.code.as_str()), (class, code));
            assert_eq!(error.retry_after, wait.map(Duration::from_secs), "{code}");
        }
        sandbox.shutdown();
    }

    #[test]
    fn non_json_errors_are_classed_by_status() {
        assert_eq!(classify(502, b"<html>").0.class(), ErrorClass::Retryable);
        assert_eq!(classify(404, b"not found").0.class(), ErrorClass::Permanent);
    }

    #[tokio::test]
    async fn connection_failures_are_transport_errors() {
        let error = client(&dead_base_url().await).send(&sms("+821012345678", None)).await.unwrap_err();
        assert_eq!((error.class, error.code.as_str()), (ErrorClass::Retryable, "transport"));
    }
}

//! Twilio status callbacks: the `X-Twilio-Signature` check and the mapping of `MessageStatus` to a [`Report`].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::domain::ProviderKind;
use crate::providers::{Report, ReportOutcome, WebhookError};

type HmacSha1 = Hmac<Sha1>;

/// `X-Twilio-Signature` for a request: base64(HMAC-SHA1(auth token, full URL + each POST param's name and value,
/// sorted by name)).
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    STANDARD.encode(mac(auth_token, url, params).finalize().into_bytes())
}

/// Whether `header_value` is the signature of this request, compared in constant time.
pub fn verify_signature(auth_token: &str, url: &str, params: &[(String, String)], header_value: &str) -> bool {
    let Ok(expected) = STANDARD.decode(header_value.trim()) else {
        return false;
    };
    mac(auth_token, url, params).verify_slice(&expected).is_ok()
}

fn mac(auth_token: &str, url: &str, params: &[(String, String)]) -> HmacSha1 {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = HmacSha1::new_from_slice(auth_token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

/// Reads a status callback. The delivery id comes from our own `?delivery_id=` on the callback URL.
pub fn parse_status_callback(
    query_delivery_id: Option<&str>,
    params: &[(String, String)],
) -> Result<Report, WebhookError> {
    let delivery_id = query_delivery_id.filter(|id| !id.is_empty()).ok_or(WebhookError::Missing("delivery_id"))?;
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());
    let status = param("MessageStatus").ok_or(WebhookError::Missing("MessageStatus"))?;
    let outcome = match status {
        "queued" | "sending" | "sent" | "accepted" | "scheduled" => ReportOutcome::Progress,
        "delivered" | "read" => ReportOutcome::Delivered,
        "undelivered" | "failed" | "canceled" => {
            let code = param("ErrorCode").unwrap_or(status);
            ReportOutcome::Failed { code: code.to_string(), reason: failure_reason(param("ErrorCode"), status) }
        }
        other => {
            return Err(WebhookError::Invalid { field: "MessageStatus", message: format!("unknown status `{other}`") });
        }
    };
    Ok(Report {
        delivery_id: delivery_id.to_string(),
        provider: ProviderKind::Twilio,
        provider_message_id: param("MessageSid").or(param("SmsSid")).map(str::to_string),
        outcome,
    })
}

/// A short text for the carrier-side codes Twilio reports most.
fn failure_reason(error_code: Option<&str>, status: &str) -> String {
    let known = match error_code {
        Some("30001") => "queue overflow",
        Some("30002") => "account suspended",
        Some("30003") => "unreachable destination handset",
        Some("30004") => "message blocked",
        Some("30005") => "unknown destination handset",
        Some("30006") => "landline or unreachable carrier",
        Some("30007") => "carrier filtered the message",
        Some("30008") => "unknown carrier error",
        Some(code) => return format!("twilio error {code} ({status})"),
        None => return format!("twilio reported {status}"),
    };
    known.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// The example in Twilio's webhook security documentation.
    fn documented_example() -> (&'static str, &'static str, Vec<(String, String)>) {
        let params = pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675310"),
            ("Digits", "1234"),
            ("From", "+14158675310"),
            ("To", "+18005551212"),
        ]);
        ("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", params)
    }

    #[test]
    fn signature_matches_twilio_documentation() {
        let (token, url, params) = documented_example();
        assert_eq!(signature(token, url, &params), "GvWf1cFY/Q7PnoempGyD5oXAezc=");
        // Parameter order on the wire does not matter.
        let reversed: Vec<_> = params.iter().rev().cloned().collect();
        assert_eq!(signature(token, url, &reversed), "GvWf1cFY/Q7PnoempGyD5oXAezc=");
    }

    #[test]
    fn verification_accepts_the_signature_and_refuses_tampering() {
        let (token, url, params) = documented_example();
        assert!(verify_signature(token, url, &params, "GvWf1cFY/Q7PnoempGyD5oXAezc="));
        let mut tampered = params.clone();
        tampered[2].1 = "9999".into();
        assert!(!verify_signature(token, url, &tampered, "GvWf1cFY/Q7PnoempGyD5oXAezc="));
        assert!(!verify_signature(
            token,
            "https://mycompany.com/myapp.php?foo=1&bar=3",
            &params,
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        ));
        assert!(!verify_signature("54321", url, &params, "GvWf1cFY/Q7PnoempGyD5oXAezc="));
        assert!(!verify_signature(token, url, &params, "not base64!"));
        assert!(!verify_signature(token, url, &params, ""));
    }

    #[test]
    fn statuses_map_to_outcomes() {
        let progress = ["queued", "sending", "sent", "accepted"];
        for status in progress {
            let params = pairs(&[("MessageSid", "SM1"), ("MessageStatus", status)]);
            let report = parse_status_callback(Some("d1"), &params).unwrap();
            assert_eq!(report.outcome, ReportOutcome::Progress, "{status}");
        }
        let params = pairs(&[("MessageSid", "SM1"), ("MessageStatus", "delivered"), ("To", "+821012345678")]);
        let report = parse_status_callback(Some("d1"), &params).unwrap();
        assert_eq!(
            report,
            Report {
                delivery_id: "d1".into(),
                provider: ProviderKind::Twilio,
                provider_message_id: Some("SM1".into()),
                outcome: ReportOutcome::Delivered,
            }
        );
    }

    #[test]
    fn failures_carry_the_error_code_or_the_status() {
        let params = pairs(&[("MessageSid", "SM1"), ("MessageStatus", "undelivered"), ("ErrorCode", "30003")]);
        let outcome = parse_status_callback(Some("d1"), &params).unwrap().outcome;
        assert_eq!(
            outcome,
            ReportOutcome::Failed { code: "30003".into(), reason: "unreachable destination handset".into() }
        );
        let params = pairs(&[("MessageSid", "SM1"), ("MessageStatus", "failed"), ("ErrorCode", "")]);
        let outcome = parse_status_callback(Some("d1"), &params).unwrap().outcome;
        assert_eq!(outcome, ReportOutcome::Failed { code: "failed".into(), reason: "twilio reported failed".into() });
        let params = pairs(&[("MessageStatus", "failed"), ("ErrorCode", "30410")]);
        let outcome = parse_status_callback(Some("d1"), &params).unwrap().outcome;
        assert_eq!(
            outcome,
            ReportOutcome::Failed { code: "30410".into(), reason: "twilio error 30410 (failed)".into() }
        );
    }

    #[test]
    fn malformed_callbacks_are_refused() {
        let params = pairs(&[("MessageSid", "SM1"), ("MessageStatus", "delivered")]);
        assert_eq!(parse_status_callback(None, &params), Err(WebhookError::Missing("delivery_id")));
        assert_eq!(parse_status_callback(Some(""), &params), Err(WebhookError::Missing("delivery_id")));
        let params = pairs(&[("MessageSid", "SM1")]);
        assert_eq!(parse_status_callback(Some("d1"), &params), Err(WebhookError::Missing("MessageStatus")));
        let params = pairs(&[("MessageSid", "SM1"), ("MessageStatus", "teleported")]);
        assert!(matches!(
            parse_status_callback(Some("d1"), &params),
            Err(WebhookError::Invalid { field: "MessageStatus", .. })
        ));
    }
}

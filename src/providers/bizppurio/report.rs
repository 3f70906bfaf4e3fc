//! Bizppurio delivery reports (the JSON POSTed to our webhook) mapped to a [`Report`].

use serde_json::Value;

use crate::domain::ProviderKind;
use crate::providers::{Report, ReportOutcome, WebhookError};

/// Reads a delivery report body: `{"REFKEY", "CMSGID", "RESULT", "MEDIA", ...}`.
pub fn parse_report(body: &[u8]) -> Result<Report, WebhookError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| WebhookError::Body(e.to_string()))?;
    parse_report_value(&value)
}

/// [`parse_report`] for a body already parsed as JSON.
pub fn parse_report_value(value: &Value) -> Result<Report, WebhookError> {
    let object = value.as_object().ok_or_else(|| WebhookError::Body("expected a JSON object".into()))?;
    // Bizppurio sends numbers as strings, but be lenient about either.
    let field = |name: &str| match object.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let delivery_id = field("REFKEY").ok_or(WebhookError::Missing("REFKEY"))?;
    let result = field("RESULT").ok_or(WebhookError::Missing("RESULT"))?;
    let outcome = match result.as_str() {
        // Alimtalk, SMS fallback, LMS/MMS fallback delivered.
        "7000" | "4100" | "6600" => ReportOutcome::Delivered,
        code => ReportOutcome::Failed { code: code.to_string(), reason: result_reason(code) },
    };
    Ok(Report { delivery_id, provider: ProviderKind::Bizppurio, provider_message_id: field("CMSGID"), outcome })
}

/// A short text for the result codes Bizppurio documents; the code itself otherwise.
fn result_reason(code: &str) -> String {
    let known = match code {
        "7101" => "KakaoTalk message format error",
        "7103" => "sender key is not valid",
        // Bizppurio's table skips 7104; Herald's notes group 7103–7107 as sender key problems.
        "7104" => "sender key problem",
        "7105" => "sender key does not exist",
        "7106" => "sender key was deleted",
        "7107" => "sender key is blocked",
        "7108" => "KakaoTalk channel is blocked",
        "7109" => "KakaoTalk channel is closed",
        "7110" => "KakaoTalk channel was deleted",
        "7204" => "template mismatch",
        "7300" => "KakaoTalk error",
        "7305" => "delivery uncertain",
        "7306" => "KakaoTalk system error",
        "7308" => "invalid phone number",
        "7311" => "message does not exist",
        "7314" => "message too long",
        "7315" => "template not found",
        "7318" => "message cannot be sent",
        "7322" => "sending not allowed at this time",
        "7421" => "timeout",
        "4400" => "SMS fallback: no coverage",
        "4401" => "SMS fallback: handset switched off",
        "4402" => "SMS fallback: handset storage full",
        "4403" => "SMS fallback: message deleted",
        "4404" => "SMS fallback: subscriber location unknown",
        "4405" => "SMS fallback: handset busy",
        "4410" => "SMS fallback: invalid number",
        "4411" => "SMS fallback: number portability lookup failed",
        "4412" => "SMS fallback: refused by recipient",
        "4413" => "SMS fallback: SMSC format error",
        "4414" => "SMS fallback: number not in service",
        "4420" => "SMS fallback: other error",
        "4421" => "SMS fallback: timeout",
        "4422" => "SMS fallback: handset suspended",
        "4423" => "SMS fallback: handset refuses messages",
        "4424" => "SMS fallback: handset cannot open URL messages",
        "4425" => "SMS fallback: handset in a call",
        "4426" => "SMS fallback: retry limit exceeded",
        "4427" => "SMS fallback: handset problem",
        "4428" => "SMS fallback: system error",
        "4430" | "4431" => "SMS fallback: blocked as spam",
        "4432" | "4433" => "SMS fallback: sender number blocked",
        "4434" | "4436" => "SMS fallback: sender number not registered",
        "4435" => "SMS fallback: sender number reported as spam",
        c if c.starts_with("44") => "SMS fallback failed",
        c => return format!("provider result {c}"),
    };
    known.to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn report(result: Value) -> Value {
        json!({
            "DEVICE": "KAT", "CMSGID": "240101120000kat0001", "MSGID": "m1", "PHONE": "01012345678",
            "MEDIA": "KAT", "UNIXTIME": "1704078000", "RESULT": result, "REFKEY": "d1", "RESEND_FLAG": "N",
            "TELRES": "", "KAORES": ""
        })
    }

    #[test]
    fn delivered_results_for_every_medium() {
        for result in ["7000", "4100", "6600"] {
            let parsed = parse_report(report(json!(result)).to_string().as_bytes()).unwrap();
            assert_eq!(
                parsed,
                Report {
                    delivery_id: "d1".into(),
                    provider: ProviderKind::Bizppurio,
                    provider_message_id: Some("240101120000kat0001".into()),
                    outcome: ReportOutcome::Delivered,
                }
            );
        }
    }

    #[test]
    fn results_may_be_numbers() {
        assert_eq!(parse_report_value(&report(json!(7000))).unwrap().outcome, ReportOutcome::Delivered);
        let failed = parse_report_value(&report(json!(7308))).unwrap().outcome;
        assert_eq!(failed, ReportOutcome::Failed { code: "7308".into(), reason: "invalid phone number".into() });
    }

    #[test]
    fn every_failure_class_has_a_reason() {
        let cases = [
            ("7101", "KakaoTalk message format error"),
            ("7103", "sender key is not valid"),
            ("7104", "sender key problem"),
            ("7105", "sender key does not exist"),
            ("7106", "sender key was deleted"),
            ("7107", "sender key is blocked"),
            ("7204", "template mismatch"),
            ("7308", "invalid phone number"),
            ("7315", "template not found"),
            ("7421", "timeout"),
            ("4401", "SMS fallback: handset switched off"),
            ("4410", "SMS fallback: invalid number"),
            ("4499", "SMS fallback failed"),
            ("9999", "provider result 9999"),
        ];
        for (code, reason) in cases {
            let outcome = parse_report_value(&report(json!(code))).unwrap().outcome;
            assert_eq!(outcome, ReportOutcome::Failed { code: code.into(), reason: reason.into() }, "{code}");
        }
    }

    #[test]
    fn malformed_reports_are_refused() {
        assert!(matches!(parse_report(b"not json"), Err(WebhookError::Body(_))));
        assert!(matches!(parse_report(b"[1,2]"), Err(WebhookError::Body(_))));
        assert_eq!(parse_report(br#"{"RESULT": "7000"}"#), Err(WebhookError::Missing("REFKEY")));
        assert_eq!(parse_report(br#"{"REFKEY": "d1", "RESULT": ""}"#), Err(WebhookError::Missing("RESULT")));
        let no_message_key = parse_report(br#"{"REFKEY": "d1", "RESULT": "7000"}"#).unwrap();
        assert_eq!(no_message_key.provider_message_id, None);
    }
}

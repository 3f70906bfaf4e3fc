//! Reading the sandbox's record of accepted push messages (`GET /_sandbox/messages?channel=push&after=<seq>`)
//! incrementally, and picking out this run's messages by their body `<tag> <index>`.

use serde_json::Value;

use crate::rfc3339;

/// One of this run's messages as the sandbox received it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// The number in the body: which notification this is.
    pub index: u64,
    /// When the sandbox accepted it, in nanoseconds since the Unix epoch.
    pub received_at_ns: i64,
}

/// What one page of the record held for this run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub arrivals: Vec<Arrival>,
    /// The largest `seq` on the page, to ask for the next page `after`; `None` for an empty page.
    pub last_seq: Option<u64>,
}

/// Follows the record from a starting `seq`; records with other bodies (other runs, other tools) are skipped.
pub struct RecordReader {
    url: String,
    tag: String,
    after: u64,
}

impl RecordReader {
    /// A reader of `sandbox`'s push record after `after`, for bodies `<tag> <index>`.
    pub fn new(sandbox: &str, tag: &str, after: u64) -> Self {
        Self { url: format!("{sandbox}/_sandbox/messages"), tag: tag.to_string(), after }
    }

    /// Everything recorded since the previous read (the sandbox answers all of it at once).
    pub async fn read(&mut self, http: &reqwest::Client) -> Result<Vec<Arrival>, String> {
        let records: Vec<Value> = http
            .get(format!("{}?channel=push&after={}", self.url, self.after))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("reading {}: {e}", self.url))?
            .json()
            .await
            .map_err(|e| format!("reading {}: {e}", self.url))?;
        let page = parse_page(&records, &self.tag)?;
        self.after = page.last_seq.unwrap_or(self.after);
        Ok(page.arrivals)
    }
}

/// This run's arrivals on a page of records, in record order.
pub fn parse_page(records: &[Value], tag: &str) -> Result<Page, String> {
    let mut page = Page::default();
    for record in records {
        let seq = record["seq"].as_u64().ok_or_else(|| format!("a record without a seq: {record}"))?;
        page.last_seq = page.last_seq.max(Some(seq));
        let Some(index) = record["body"].as_str().and_then(|body| index_in_body(body, tag)) else {
            continue;
        };
        let received_at = record["received_at"].as_str().unwrap_or_default();
        let received_at_ns = rfc3339::parse_unix_ns(received_at)
            .ok_or_else(|| format!("record {seq} has no RFC 3339 received_at: {received_at:?}"))?;
        page.arrivals.push(Arrival { index, received_at_ns });
    }
    Ok(page)
}

/// The index in a body `<tag> <index>`, if the body is one of this run's.
fn index_in_body(body: &str, tag: &str) -> Option<u64> {
    body.strip_prefix(tag)?.strip_prefix(' ')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record(seq: u64, body: &str, received_at: &str) -> Value {
        json!({"seq": seq, "channel": "push", "provider": "fcm", "to": "sched-token-1", "title": null,
               "body": body, "html": null, "reference": "d-1", "provider_message_id": "m",
               "received_at": received_at})
    }

    #[test]
    fn picks_this_runs_records_and_the_last_seq() {
        let records = [
            record(7, "sched r1 0", "2026-01-01T00:00:00.25Z"),
            record(8, "sched r2 1", "2026-01-01T00:00:00Z"),
            record(9, "sched r1 12", "2026-01-01T00:00:01.000000001Z"),
            record(10, "sched r1", "2026-01-01T00:00:00Z"),
            record(11, "sched r10 3", "2026-01-01T00:00:00Z"),
            record(12, "load 5 3", "junk"),
        ];
        let base = 1_767_225_600_000_000_000;
        assert_eq!(
            parse_page(&records, "sched r1").unwrap(),
            Page {
                arrivals: vec![
                    Arrival { index: 0, received_at_ns: base + 250_000_000 },
                    Arrival { index: 12, received_at_ns: base + 1_000_000_001 },
                ],
                last_seq: Some(12),
            }
        );
        assert_eq!(parse_page(&[], "sched r1").unwrap(), Page::default());
    }

    #[test]
    fn a_run_record_with_a_bad_time_is_an_error() {
        let error = parse_page(&[record(3, "sched r1 0", "yesterday")], "sched r1").unwrap_err();
        assert!(error.contains("record 3"), "{error}");
        assert!(parse_page(&[json!({"body": "sched r1 0"})], "sched r1").is_err());
    }
}

//! Following the sandbox's record: `GET /_sandbox/messages?after=<seq>&limit=<n>` page by page, each page
//! routed to the stream its bodies name, then forgotten (`DELETE ?through=<seq>`) so the sandbox holds only what
//! has not been read yet.
//!
//! Every message this tool causes carries a body `<tag> <stream letter> <rest>`: the run's tag, one letter per
//! traffic stream, and what identifies the message within it (an index, or a sequence and a step). Records of
//! other runs and tools are skipped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Deserialize;

use crate::clock::Clock;
use crate::ledger::{Arrived, Ledger};
use crate::progress::Counters;
use crate::rfc3339;

/// Records per page.
const PAGE: usize = 10_000;
const POLL_EVERY: Duration = Duration::from_millis(100);

/// One record as the sandbox serves it (the fields this tool reads).
#[derive(Debug, Deserialize)]
struct Record {
    seq: u64,
    channel: String,
    to: String,
    body: String,
    reference: Option<String>,
    received_at: String,
}

/// One of this run's messages as the sandbox received it.
#[derive(Debug, PartialEq, Eq)]
pub struct Arrival<'a> {
    pub seq: u64,
    pub to: &'a str,
    /// The body after the tag and the stream letter.
    pub rest: &'a str,
    pub reference: Option<&'a str>,
    /// When the sandbox received it, on the run's time axis.
    pub at_us: i64,
}

/// Where a stream's arrivals go.
pub trait Sink: Send + Sync {
    fn arrive(&self, arrival: &Arrival<'_>) -> Arrived;
}

/// Arrivals whose body ends in the ledger index.
pub struct IndexSink(pub Arc<Ledger>);

impl Sink for IndexSink {
    fn arrive(&self, arrival: &Arrival<'_>) -> Arrived {
        match arrival.rest.parse() {
            Ok(index) => self.0.arrive(index, arrival.seq, arrival.at_us),
            Err(_) => Arrived::Stray,
        }
    }
}

/// Which sink takes the arrivals of a stream letter on a channel.
pub struct Routes {
    tag: String,
    sinks: HashMap<(char, String), Arc<dyn Sink>>,
}

impl Routes {
    pub fn new(tag: &str) -> Routes {
        Routes { tag: tag.to_string(), sinks: HashMap::new() }
    }

    /// Routes stream `letter`'s messages on `channel` to `sink`.
    pub fn add(&mut self, letter: char, channel: &str, sink: Arc<dyn Sink>) {
        self.sinks.insert((letter, channel.to_string()), sink);
    }

    /// The sink and the rest of the body, for a body of this run on a routed stream.
    fn route<'b>(&self, channel: &str, body: &'b str) -> Option<(&Arc<dyn Sink>, &'b str)> {
        let rest = body.trim().strip_prefix(self.tag.as_str())?.strip_prefix(' ')?;
        let mut chars = rest.chars();
        let letter = chars.next()?;
        let rest = chars.as_str().strip_prefix(' ')?;
        Some((self.sinks.get(&(letter, channel.to_string()))?, rest))
    }
}

/// Reads the record until told to stop (then reads what is left and returns).
pub struct Follower {
    http: reqwest::Client,
    sandbox: String,
    after: u64,
    forget: bool,
    routes: Routes,
    clock: Clock,
    counters: Arc<Counters>,
}

impl Follower {
    /// A follower of `sandbox`'s record from its start; `forget`: drop each page from the sandbox once read.
    pub fn new(
        http: reqwest::Client,
        sandbox: &str,
        forget: bool,
        routes: Routes,
        clock: Clock,
        counters: Arc<Counters>,
    ) -> Follower {
        Follower { http, sandbox: sandbox.to_string(), after: 0, forget, routes, clock, counters }
    }

    /// Follows until `stop`, then drains what is left; returns the last error seen, if any. Reads nothing
    /// while `paused` (and not stopping).
    pub async fn run(mut self, stop: Arc<AtomicBool>, paused: Arc<AtomicBool>) -> Option<String> {
        let mut last_error = None;
        loop {
            let stopping = stop.load(Ordering::Acquire);
            if paused.load(Ordering::Acquire) && !stopping {
                tokio::time::sleep(POLL_EVERY).await;
                continue;
            }
            match self.page().await {
                Ok(PAGE) => continue,
                Ok(_) => {}
                Err(error) => last_error = Some(error),
            }
            if stopping {
                return last_error;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Reads and routes one page; returns how many records it held.
    async fn page(&mut self) -> Result<usize, String> {
        let url = format!("{}/_sandbox/messages?after={}&limit={PAGE}", self.sandbox, self.after);
        let records: Vec<Record> = get_json(&self.http, &url, "the sandbox record").await?;
        let Some(last) = records.last().map(|r| r.seq) else { return Ok(0) };
        for record in &records {
            self.route(record)?;
        }
        self.after = last;
        if self.forget {
            let url = format!("{}/_sandbox/messages?through={last}", self.sandbox);
            let fail = |e: reqwest::Error| format!("forgetting the sandbox record: {e}");
            self.http.delete(&url).send().await.and_then(reqwest::Response::error_for_status).map_err(fail)?;
        }
        Ok(records.len())
    }

    fn route(&self, record: &Record) -> Result<(), String> {
        let Some((sink, rest)) = self.routes.route(&record.channel, &record.body) else { return Ok(()) };
        let received_ns = rfc3339::parse_unix_ns(&record.received_at)
            .ok_or_else(|| format!("record {} has no RFC 3339 received_at: {:?}", record.seq, record.received_at))?;
        let arrival = Arrival {
            seq: record.seq,
            to: &record.to,
            rest,
            reference: record.reference.as_deref(),
            at_us: self.clock.on_axis(received_ns),
        };
        let counter = match sink.arrive(&arrival) {
            Arrived::First => &self.counters.delivered,
            Arrived::Again => &self.counters.duplicates,
            Arrived::Stray => &self.counters.strays,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// GETs `url` and reads its JSON answer; an error names `what` was being read.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    what: &str,
) -> Result<T, String> {
    let fail = |e: reqwest::Error| format!("reading {what}: {e}");
    let response = http.get(url).send().await.and_then(reqwest::Response::error_for_status).map_err(fail)?;
    response.json().await.map_err(fail)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Remembers the `rest` and `to` of what it was given.
    #[derive(Default)]
    struct Seen(Mutex<Vec<(String, String)>>);

    impl Sink for Seen {
        fn arrive(&self, arrival: &Arrival<'_>) -> Arrived {
            self.0.lock().unwrap().push((arrival.rest.to_string(), arrival.to.to_string()));
            Arrived::First
        }
    }

    #[test]
    fn bodies_are_routed_by_tag_stream_and_channel() {
        let push = Arc::new(Seen::default());
        let sms = Arc::new(Seen::default());
        let mut routes = Routes::new("lt1");
        routes.add('s', "push", push.clone());
        routes.add('s', "sms", sms.clone());
        assert!(routes.route("push", "lt1 s 12").is_some());
        assert_eq!(routes.route("push", "lt1 s 12").map(|(_, rest)| rest), Some("12"));
        assert_eq!(routes.route("sms", "lt1 s 3 2\r\n").map(|(_, rest)| rest), Some("3 2"), "SMTP bodies end in CRLF");
        for other in ["lt10 s 12", "lt1 x 12", "lt1 s", "lt1s 12", "lt2 s 12", "", "lt1"] {
            assert!(routes.route("push", other).is_none(), "{other:?}");
        }
        assert!(routes.route("email", "lt1 s 12").is_none(), "no sink for e-mail");
    }

    #[test]
    fn the_index_sink_reads_the_index() {
        let ledger = Arc::new(Ledger::new("t", crate::ledger::OrderBy::None));
        ledger.plan(0, 0, 0);
        let sink = IndexSink(ledger.clone());
        let arrival = |rest| Arrival { seq: 1, to: "t", rest, reference: None, at_us: 5 };
        assert_eq!(sink.arrive(&arrival("0")), Arrived::First);
        assert_eq!(sink.arrive(&arrival("0")), Arrived::Again);
        assert_eq!(sink.arrive(&arrival("7")), Arrived::Stray);
        assert_eq!(sink.arrive(&arrival("x")), Arrived::Stray);
    }

    #[test]
    fn records_deserialize_from_the_sandbox_shape() {
        let json = r#"[{"seq": 7, "channel": "push", "provider": "fcm", "to": "lt-token-1", "title": "lt",
            "body": "lt1 s 0", "html": null, "reference": "d-1", "provider_message_id": "m",
            "received_at": "2026-01-01T00:00:00.25Z"}]"#;
        let records: Vec<Record> = serde_json::from_str(json).unwrap();
        assert_eq!((records[0].seq, records[0].reference.as_deref()), (7, Some("d-1")));
    }
}

//! Posting to Herald: the run's shared context, the body template every message uses, one request with its
//! answer classified, the tally of answers, and the open-loop stream of notifications.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};

use crate::cli::Args;
use crate::clock::Clock;
use crate::ledger::{Ledger, OrderBy, State};
use crate::openloop::Stream;
use crate::progress::{Counters, Progress};
use crate::record::{IndexSink, Routes};
use crate::users;

/// The template every message renders: its body is the `b` parameter, `<tag> <stream letter> <rest>`.
pub const TEMPLATE: &str = "lt-body";

/// What every phase of a run shares.
pub struct Ctx {
    pub args: Args,
    pub http: reqwest::Client,
    pub herald: String,
    pub sandbox: String,
    pub clock: Clock,
    pub counters: Arc<Counters>,
    pub answers: Answers,
    /// Starts every body of this run: `lt<run id>`.
    pub tag: String,
    pub progress: Progress,
}

impl Ctx {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.herald)
    }

    /// The body of message `rest` of stream `letter`.
    pub fn body(&self, letter: char, rest: impl std::fmt::Display) -> String {
        format!("{} {letter} {rest}", self.tag)
    }
}

/// Creates (or replaces) [`TEMPLATE`] with a body for every channel the sandbox sees.
pub async fn put_template(ctx: &Ctx) -> Result<(), String> {
    let text = json!({"title": "lt", "body": "{{b}}"});
    let template = json!({"channels": {
        "push": {"en": text},
        "email": {"en": text},
        "sms": {"en": {"body": "{{b}}"}},
        "alimtalk": {"en": {"body": "{{b}}", "templatecode": "LT-BODY"}},
    }});
    let answer = post(&ctx.http, reqwest::Method::PUT, &ctx.url(&format!("/v1/templates/{TEMPLATE}")), &template).await;
    match answer.status {
        Some(200..=299) => Ok(()),
        _ => Err(format!("PUT /v1/templates/{TEMPLATE}: {}", answer.describe())),
    }
}

/// One answer from Herald.
#[derive(Debug)]
pub struct Answer {
    /// None: no answer (transport error or timeout).
    pub status: Option<u16>,
    /// `<status> <reported status or error code>` (`202 accepted`, `429 rate_limited`), or `transport error`.
    pub key: String,
    /// The error's field and message, or the transport error.
    pub message: Option<String>,
    /// What a 429 or 503 asked to wait.
    pub retry_after: Option<Duration>,
    pub body: Value,
}

impl Answer {
    pub fn accepted(&self) -> bool {
        self.status == Some(202)
    }

    pub fn describe(&self) -> String {
        match &self.message {
            Some(message) => format!("{} ({message})", self.key),
            None => self.key.clone(),
        }
    }
}

/// Sends one request and classifies the answer; `at` of the answer is when its head arrived.
pub async fn post(http: &reqwest::Client, method: reqwest::Method, url: &str, body: &Value) -> Answer {
    let response = match http.request(method, url).json(body).send().await {
        Ok(response) => response,
        Err(error) => {
            return Answer {
                status: None,
                key: "transport error".to_string(),
                message: Some(error.without_url().to_string()),
                retry_after: None,
                body: Value::Null,
            };
        }
    };
    let status = response.status().as_u16();
    let retry_after = matches!(status, 429 | 503).then(|| {
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.trim().parse().ok())
            .map_or(Duration::from_secs(1), Duration::from_secs)
    });
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let detail = body["status"].as_str().or(body["error"]["code"].as_str()).unwrap_or("-");
    let message = (!(200..300).contains(&status)).then(|| match body["error"]["field"].as_str() {
        Some(field) => format!("{field}: {}", body["error"]["message"].as_str().unwrap_or_default()),
        None => body["error"]["message"].as_str().unwrap_or_default().to_string(),
    });
    Answer { status: Some(status), key: format!("{status} {detail}"), message, retry_after, body }
}

/// How many answers of each kind the run got, with the first message of each refusal.
#[derive(Default)]
pub struct Answers(Mutex<BTreeMap<String, (u64, Option<String>)>>);

impl Answers {
    pub fn note(&self, answer: &Answer) {
        let mut answers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = answers.entry(answer.key.clone()).or_insert((0, answer.message.clone()));
        entry.0 += 1;
    }

    /// Count per answer.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).iter().map(|(k, (n, _))| (k.clone(), *n)).collect()
    }

    /// The first message of each answer that had one.
    pub fn messages(&self) -> BTreeMap<String, String> {
        let answers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        answers.iter().filter_map(|(k, (_, m))| Some((k.clone(), m.clone().filter(|m| !m.is_empty())?))).collect()
    }
}

/// A well-spread 64-bit hash of `n` under `seed` (SplitMix64's finalizer): which user and priority each
/// message gets, the same in every run with the same seed.
pub fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(n).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The priority lanes a notification stream uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lanes {
    /// Every message `high` (live transactional traffic).
    High,
    /// Half `high`, half `normal`, by the seeded hash.
    HighAndNormal,
    /// Every message `normal` (the scheduled gifts).
    Normal,
}

impl Lanes {
    fn pick(self, hash: u64) -> u8 {
        match self {
            Lanes::High => 0,
            Lanes::Normal => 1,
            Lanes::HighAndNormal => u8::from(hash >> 63 == 1),
        }
    }
}

/// The ledger state an answer puts a message in.
pub fn state_of(answer: &Answer) -> State {
    match answer.status {
        Some(202) => State::Accepted,
        Some(_) => State::Refused,
        None => State::Uncertain,
    }
}

fn priority(lane: u8) -> &'static str {
    if lane == 0 { "high" } else { "normal" }
}

/// Notifications of one stream: message n goes to a seeded user, in a seeded lane, with body
/// `<tag> <letter> <index>`, on every channel of the run. Each channel has its own ledger (a message arrives
/// once per channel); all of them hold the same messages at the same indexes.
pub struct Notifications {
    pub ctx: Arc<Ctx>,
    /// One per channel, in the order of `channels`.
    pub ledgers: Vec<Arc<Ledger>>,
    pub letter: char,
    pub lanes: Lanes,
    pub users: usize,
    pub channels: Vec<String>,
}

impl Notifications {
    /// A stream with a fresh ledger per channel, named `<name>` (one channel) or `<name>/<channel>`.
    pub fn new(ctx: &Arc<Ctx>, name: &str, letter: char, lanes: Lanes, order_by: OrderBy) -> Notifications {
        let channels = ctx.args.channels();
        let ledgers = channels
            .iter()
            .map(|c| {
                let name = if channels.len() == 1 { name.to_string() } else { format!("{name}/{c}") };
                Arc::new(Ledger::new(name, order_by))
            })
            .collect();
        Notifications { ctx: ctx.clone(), ledgers, letter, lanes, users: ctx.args.users(), channels }
    }

    /// Routes this stream's arrivals to its ledgers.
    pub fn route(&self, routes: &mut Routes) {
        for (channel, ledger) in self.channels.iter().zip(&self.ledgers) {
            routes.add(self.letter, channel, Arc::new(IndexSink(ledger.clone())));
        }
    }

    /// The request body of message `index`.
    pub fn request(&self, index: u64, send_at_ms: Option<i64>) -> Value {
        let (user, lane) = self.ledgers[0].target(index);
        let mut body = json!({
            "user_id": users::user_id(user as usize),
            "category": "transaction",
            "channels": self.channels,
            "priority": priority(lane),
            "template": {"id": TEMPLATE, "params": {"b": self.ctx.body(self.letter, index)}},
        });
        if let Some(at) = send_at_ms {
            body["send_at"] = json!(crate::rfc3339::format_unix_ms(at));
            body["idempotency_key"] = json!(format!("{}-{}-{index}", self.ctx.tag, self.letter));
        }
        body
    }

    /// Books message `n` due at `due_us` in the ledgers (one task plans a stream, so indexes stay in step).
    pub fn plan(&self, n: u64, due_us: i64) -> u64 {
        let hash = mix(self.ctx.args.seed ^ u64::from(self.letter), n);
        let user = (hash % self.users as u64) as u32;
        let indexes: Vec<u64> = self.ledgers.iter().map(|l| l.plan(user, self.lanes.pick(hash), due_us)).collect();
        debug_assert!(indexes.iter().all(|&i| i == indexes[0]), "channel ledgers out of step: {indexes:?}");
        indexes[0]
    }

    pub fn sent(&self, index: u64) {
        let at = self.ctx.clock.now_us();
        self.ledgers.iter().for_each(|l| l.sent(index, at));
        Counters::bump(&self.ctx.counters.sent);
    }

    /// Notes Herald's answer in the ledgers and the counters.
    pub fn answered(&self, index: u64, answer: &Answer, at_us: i64) {
        let state = state_of(answer);
        self.ledgers.iter().for_each(|l| l.answered(index, state, at_us));
        let counters = &self.ctx.counters;
        Counters::bump(if state == State::Accepted { &counters.accepted } else { &counters.refused });
        self.ctx.answers.note(answer);
    }
}

impl Stream for Notifications {
    fn book(&self, n: u64, due_us: i64) -> u64 {
        self.plan(n, due_us)
    }

    fn skip(&self, key: u64) {
        self.ledgers.iter().for_each(|l| l.skipped(key));
        Counters::bump(&self.ctx.counters.skipped);
    }

    async fn send(self: Arc<Self>, key: u64) {
        let body = self.request(key, None);
        let url = self.ctx.url("/v1/notifications");
        self.sent(key);
        let answer = post(&self.ctx.http, reqwest::Method::POST, &url, &body).await;
        self.answered(key, &answer, self.ctx.clock.now_us());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_spreads_users_and_lanes_and_repeats() {
        let users = 100;
        let mut per_user = vec![0; users];
        let mut high = 0;
        for n in 0..100_000 {
            let hash = mix(7, n);
            per_user[(hash % users as u64) as usize] += 1;
            high += u64::from(Lanes::HighAndNormal.pick(hash) == 0);
        }
        assert!(per_user.iter().all(|&c| (800..1200).contains(&c)), "{per_user:?}");
        assert!((48_000..52_000).contains(&high), "{high}");
        assert_eq!(mix(7, 3), mix(7, 3));
        assert_ne!(mix(7, 3), mix(8, 3));
        assert_eq!((Lanes::High.pick(u64::MAX), Lanes::Normal.pick(0)), (0, 1));
    }

    #[test]
    fn refusals_are_tallied_with_their_first_message() {
        let answers = Answers::default();
        let answer = |status: u16, key: &str, message: Option<&str>| Answer {
            status: Some(status),
            key: key.to_string(),
            message: message.map(str::to_string),
            retry_after: None,
            body: Value::Null,
        };
        answers.note(&answer(202, "202 accepted", None));
        answers.note(&answer(429, "429 rate_limited", Some("engine saturated")));
        answers.note(&answer(429, "429 rate_limited", Some("later message")));
        assert_eq!(answers.counts(), BTreeMap::from([("202 accepted".into(), 1), ("429 rate_limited".into(), 2)]));
        assert_eq!(answers.messages(), BTreeMap::from([("429 rate_limited".into(), "engine saturated".into())]));
    }
}

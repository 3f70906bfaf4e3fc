//! The accept phase: `--concurrency` clients post the plan's notifications in due order, each with
//! `send_at` and an idempotency key, so a retry after a 429, a 503 or a lost answer can never schedule one twice.
//! Posting stops when the window starts: anything still unposted could no longer be on time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Plan;
use crate::rfc3339::{format_unix_ms, now_unix_ms};
use crate::users;

/// Tries per notification; only 429, 503 and transport errors are retried.
const MAX_ATTEMPTS: u32 = 5;
/// The wait before a retry when the answer names none, and the most a `Retry-After` is honoured.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What the accept phase did.
pub struct Accepted {
    /// Per notification index: whether Herald answered 202 (it is stored and must arrive).
    pub scheduled: Vec<bool>,
    /// How many notifications got each final answer: `202 scheduled`, `422 invalid_value`, `transport error`, ...
    pub answers: BTreeMap<String, u64>,
    /// For each refusing answer, the first error message that came with it.
    pub refusal_messages: BTreeMap<String, String>,
    pub elapsed: Duration,
    /// Posting was cut short because the window started.
    pub ran_into_window: bool,
}

impl Accepted {
    /// How many notifications Herald accepted.
    pub fn count(&self) -> u64 {
        self.scheduled.iter().filter(|&&s| s).count() as u64
    }
}

/// One worker's share of the results.
#[derive(Default)]
struct Share {
    scheduled: Vec<u64>,
    answers: BTreeMap<String, u64>,
    refusal_messages: BTreeMap<String, String>,
}

/// One final answer to a notification.
struct Answer {
    /// `<status> <reported status or error code>`, or `transport error`.
    key: String,
    /// The error message of a refusal.
    message: Option<String>,
}

/// Posts every notification of `plan` to users `sched-0 … sched-<users-1>` in turn.
pub async fn schedule_all(
    http: &reqwest::Client,
    herald: &str,
    plan: &Arc<Plan>,
    users: usize,
    concurrency: usize,
) -> Accepted {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let posted = Arc::new(AtomicU64::new(0));
    let late = Arc::new(AtomicBool::new(false));
    let url = format!("{herald}/v1/notifications");
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (http, url, plan) = (http.clone(), url.clone(), plan.clone());
        let (next, posted, late) = (next.clone(), posted.clone(), late.clone());
        workers.push(tokio::spawn(async move {
            let mut share = Share::default();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= plan.total {
                    break;
                }
                if now_unix_ms() >= plan.window_start_ms {
                    late.store(true, Ordering::Relaxed);
                    break;
                }
                let body = json!({
                    "user_id": users::user_id(super::USER_PREFIX, (index % users as u64) as usize),
                    "channels": ["push"],
                    "content": {"body": plan.body(index)},
                    "send_at": format_unix_ms(plan.due_ms(index)),
                    "idempotency_key": plan.idempotency_key(index),
                });
                let answer = post_with_retries(&http, &url, &body, &plan).await;
                if answer.key.starts_with("202 ") {
                    share.scheduled.push(index);
                }
                if let Some(message) = answer.message {
                    share.refusal_messages.entry(answer.key.clone()).or_insert(message);
                }
                *share.answers.entry(answer.key).or_default() += 1;
                posted.fetch_add(1, Ordering::Relaxed);
            }
            share
        }));
    }
    let progress = tokio::spawn(report_progress(posted, plan.total, started));

    let mut accepted = Accepted {
        scheduled: vec![false; plan.total as usize],
        answers: BTreeMap::new(),
        refusal_messages: BTreeMap::new(),
        elapsed: Duration::ZERO,
        ran_into_window: false,
    };
    for worker in workers {
        let share = worker.await.expect("a posting task panicked");
        for index in share.scheduled {
            accepted.scheduled[index as usize] = true;
        }
        for (answer, count) in share.answers {
            *accepted.answers.entry(answer).or_default() += count;
        }
        for (answer, message) in share.refusal_messages {
            accepted.refusal_messages.entry(answer).or_insert(message);
        }
    }
    progress.abort();
    accepted.elapsed = started.elapsed();
    accepted.ran_into_window = late.load(Ordering::Relaxed) || now_unix_ms() >= plan.window_start_ms;
    accepted
}

/// The final answer to one notification; retries what is worth retrying while the window has not started.
async fn post_with_retries(http: &reqwest::Client, url: &str, body: &Value, plan: &Plan) -> Answer {
    let mut attempt = 1;
    loop {
        let (answer, retry_after) = post(http, url, body).await;
        let Some(wait) = retry_after else { return answer };
        let resume_ms = now_unix_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
        if attempt >= MAX_ATTEMPTS || resume_ms >= plan.window_start_ms {
            return answer;
        }
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

/// One try: the answer and, if it is worth retrying, how long to wait first.
async fn post(http: &reqwest::Client, url: &str, body: &Value) -> (Answer, Option<Duration>) {
    let response = match http.post(url).json(body).send().await {
        Ok(response) => response,
        Err(error) => {
            let answer = Answer { key: "transport error".to_string(), message: Some(error.to_string()) };
            return (answer, Some(DEFAULT_RETRY_AFTER));
        }
    };
    let status = response.status().as_u16();
    let retry_after = match status {
        429 | 503 => Some(
            response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.trim().parse().ok())
                .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs)
                .min(MAX_RETRY_AFTER),
        ),
        _ => None,
    };
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    // A 202 is keyed by the status it reports; an error by its code.
    let detail = answer["status"].as_str().or(answer["error"]["code"].as_str()).unwrap_or("-");
    let message = (status != 202).then(|| match answer["error"]["field"].as_str() {
        Some(field) => format!("{field}: {}", answer["error"]["message"].as_str().unwrap_or_default()),
        None => answer["error"]["message"].as_str().unwrap_or_default().to_string(),
    });
    (Answer { key: format!("{status} {detail}"), message }, retry_after)
}

async fn report_progress(posted: Arc<AtomicU64>, total: u64, started: Instant) {
    loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        let done = posted.load(Ordering::Relaxed);
        let rate = done as f64 / started.elapsed().as_secs_f64();
        eprintln!("scheduling: {done}/{total} posted, {rate:.0}/s");
    }
}

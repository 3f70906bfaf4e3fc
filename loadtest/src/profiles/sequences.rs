//! `sequences`: `POST /v1/sequences` open loop at `--rate` for `--duration`, each `--steps` alimtalk steps to a
//! seeded user (docs/scheduling.md, "Sequences"). Step k+1 may reach the provider only after the delivery
//! report of step k was sent: checked at the sandbox, from the record (when each step arrived, with its refkey)
//! and the report log (when each report was sent). Reports how many sequences completed and how long they took.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Value, json};

use super::{Outcome, drain, follow, set_up};
use crate::ledger::{Arrived, Ledger, OrderBy, histogram, record};
use crate::notify::{Ctx, TEMPLATE, mix, post, state_of};
use crate::openloop::{self, Stream, Until};
use crate::progress::Counters;
use crate::record::{Arrival, Routes, Sink};
use crate::rfc3339;
use crate::summary::Percentiles;
use crate::users;

/// Report-log entries per page.
const REPORT_PAGE: usize = 10_000;
/// Sequence reads in flight at the end.
const STATUS_READS: usize = 32;

/// The first arrival of each step: its refkey (Herald's delivery id) and when it arrived.
type StepArrivals = Vec<Option<(String, i64)>>;

/// Sequence steps, in a ledger at index `sequence × steps + step − 1`.
struct Steps {
    ledger: Arc<Ledger>,
    steps: usize,
    arrivals: Mutex<StepArrivals>,
}

impl Steps {
    fn arrivals(&self) -> std::sync::MutexGuard<'_, StepArrivals> {
        self.arrivals.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Sink for Steps {
    fn arrive(&self, arrival: &Arrival<'_>) -> Arrived {
        let mut words = arrival.rest.split(' ').map(str::parse::<usize>);
        let (Some(Ok(sequence)), Some(Ok(step)), None) = (words.next(), words.next(), words.next()) else {
            return Arrived::Stray;
        };
        if step == 0 || step > self.steps {
            return Arrived::Stray;
        }
        let index = sequence * self.steps + step - 1;
        let arrived = self.ledger.arrive(index as u64, arrival.seq, arrival.at_us);
        if arrived == Arrived::First {
            let mut arrivals = self.arrivals();
            if arrivals.len() <= index {
                arrivals.resize(index + 1, None);
            }
            arrivals[index] = Some((arrival.reference.unwrap_or_default().to_string(), arrival.at_us));
        }
        arrived
    }
}

/// The open-loop stream of sequences.
struct Sequences {
    ctx: Arc<Ctx>,
    steps: Arc<Steps>,
    /// Herald's id of each sequence it accepted.
    ids: Mutex<Vec<Option<String>>>,
}

impl Sequences {
    fn indexes(&self, sequence: u64) -> std::ops::Range<u64> {
        let steps = self.steps.steps as u64;
        sequence * steps..(sequence + 1) * steps
    }
}

impl Stream for Sequences {
    fn book(&self, n: u64, due_us: i64) -> u64 {
        let user = (mix(self.ctx.args.seed ^ u64::from('q'), n) % self.ctx.args.users() as u64) as u32;
        for _ in 0..self.steps.steps {
            self.steps.ledger.plan(user, 0, due_us);
        }
        self.ids.lock().unwrap_or_else(PoisonError::into_inner).push(None);
        n
    }

    fn skip(&self, key: u64) {
        self.indexes(key).for_each(|i| self.steps.ledger.skipped(i));
        Counters::bump(&self.ctx.counters.skipped);
    }

    async fn send(self: Arc<Self>, key: u64) {
        let (user, _) = self.steps.ledger.target(self.indexes(key).start);
        let steps: Vec<Value> = (1..=self.steps.steps)
            .map(|k| {
                json!({"channels": ["alimtalk"], "category": "transaction",
                       "template": {"id": TEMPLATE, "params": {"b": self.ctx.body('q', format!("{key} {k}"))}}})
            })
            .collect();
        let body = json!({"user_id": users::user_id(user as usize), "steps": steps, "on_failure": "stop",
                          "step_timeout": "60s"});
        let sent = self.ctx.clock.now_us();
        self.indexes(key).for_each(|i| self.steps.ledger.sent(i, sent));
        Counters::bump(&self.ctx.counters.sent);
        let answer = post(&self.ctx.http, reqwest::Method::POST, &self.ctx.url("/v1/sequences"), &body).await;
        let at = self.ctx.clock.now_us();
        let state = state_of(&answer);
        self.indexes(key).for_each(|i| self.steps.ledger.answered(i, state, at));
        let counters = &self.ctx.counters;
        Counters::bump(if answer.accepted() { &counters.accepted } else { &counters.refused });
        self.ctx.answers.note(&answer);
        if let Some(id) = answer.body["id"].as_str().filter(|_| answer.accepted()) {
            self.ids.lock().unwrap_or_else(PoisonError::into_inner)[key as usize] = Some(id.to_string());
        }
    }
}

pub async fn run(ctx: Arc<Ctx>) -> Result<Outcome, String> {
    let (rate, duration, steps) =
        (ctx.args.rate().expect("sequences have a rate"), ctx.args.duration_s(), ctx.args.steps);
    set_up(&ctx, ctx.args.users()).await?;
    let ledger = Arc::new(Ledger::new("sequences", OrderBy::None));
    let sink = Arc::new(Steps { ledger: ledger.clone(), steps, arrivals: Mutex::default() });
    let mut routes = Routes::new(&ctx.tag);
    routes.add('q', "alimtalk", sink.clone());
    let following = follow(&ctx, routes);

    let count = openloop::arrivals(rate, duration);
    ctx.progress.phase(format!("sequences: {count} of {steps} alimtalk steps at {rate}/s, open loop"));
    let stream = Arc::new(Sequences { ctx: ctx.clone(), steps: sink.clone(), ids: Mutex::default() });
    let start = ctx.clock.now_us() + super::steady::START_DELAY_US;
    let never = AtomicBool::new(false);
    let max = ctx.args.max_outstanding;
    let driven = openloop::drive(&ctx.clock, stream.clone(), rate, start, Until::Count(count), max, &never).await;
    drain(&ctx, std::slice::from_ref(&ledger)).await;

    ctx.progress.phase("reading sequence statuses and the sandbox's report log");
    let ids = stream.ids.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let statuses = read_statuses(&ctx, &ids).await;
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    {
        let arrivals = sink.arrivals();
        for (sequence, status) in statuses.iter().enumerate() {
            let Some(status) = status else { continue };
            *by_status.entry(status["status"].as_str().unwrap_or("?").to_string()).or_default() += 1;
            // A step Herald did not deliver (after a failed one, or timed out) is not expected at the sandbox.
            for (k, step) in status["steps"].as_array().into_iter().flatten().enumerate().take(steps) {
                let index = sequence * steps + k;
                let arrived = arrivals.get(index).is_some_and(Option::is_some);
                if step["status"] != "delivered" && !arrived {
                    ledger.excuse(index as u64);
                }
            }
        }
    }
    let reports = read_reports(&ctx).await;
    let read_error = following.stop(&ctx).await;
    let order = step_order(&sink.arrivals(), steps, &reports);
    ledger.add_violations(order.violations);

    let mut completion = histogram();
    let arrivals = sink.arrivals();
    let times = ledger.times();
    for (sequence, status) in statuses.iter().enumerate() {
        if status.as_ref().is_some_and(|s| s["status"] == "completed") {
            let last = (0..steps).filter_map(|k| arrivals.get(sequence * steps + k)?.as_ref().map(|a| a.1)).max();
            if let Some(last) = last {
                record(&mut completion, last - times[sequence * steps].0);
            }
        }
    }
    drop(arrivals);

    let mut outcome = Outcome::of(std::slice::from_ref(&ledger), start);
    let accepted = ids.iter().filter(|id| id.is_some()).count() as u64;
    // The ledger counts steps; sequences are what was posted.
    let last_answer = outcome.verdict("sequences").and_then(|v| v.last_answer_us);
    outcome.accepted_per_s = last_answer.and_then(|last| crate::ledger::per_second(accepted, start, last));
    let completed = by_status.get("completed").copied().unwrap_or(0);
    outcome.details = json!({
        "rate": rate, "duration_s": duration, "steps": steps,
        "sequences": {"issued": driven.issued, "skipped": driven.skipped, "accepted": accepted,
                      "by_status": by_status, "completed": completed,
                      "completion_ratio": if accepted > 0 { completed as f64 / accepted as f64 } else { 0.0 }},
        "completion_ms": Percentiles::of(&completion),
        "step_order": {"checked": order.checked, "violations": order.violations, "unverified": order.unverified},
        "reports_read": reports.len(),
    });
    if order.unverified > 0 {
        outcome.warnings.push(format!(
            "{} steps could not be checked against the previous step's report (not in the sandbox's report log, \
             which keeps the last 100,000)",
            order.unverified
        ));
    }
    if completed < accepted {
        outcome
            .warnings
            .push(format!("{} of {accepted} sequences did not complete: {by_status:?}", accepted - completed));
    }
    outcome.warnings.extend(read_error);
    Ok(outcome)
}

/// `GET /v1/sequences/{id}` of every accepted sequence, `STATUS_READS` at a time.
async fn read_statuses(ctx: &Arc<Ctx>, ids: &[Option<String>]) -> Vec<Option<Value>> {
    let mut statuses = vec![None; ids.len()];
    for chunk in ids.iter().enumerate().collect::<Vec<_>>().chunks(STATUS_READS) {
        let reads = chunk.iter().map(|&(sequence, id)| {
            let ctx = ctx.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let id = id?;
                let response = ctx.http.get(ctx.url(&format!("/v1/sequences/{id}"))).send().await.ok()?;
                let value: Value = response.error_for_status().ok()?.json().await.ok()?;
                Some((sequence, value))
            })
        });
        for read in reads.collect::<Vec<_>>() {
            if let Ok(Some((sequence, value))) = read.await {
                statuses[sequence] = Some(value);
            }
        }
    }
    statuses
}

/// When the sandbox first sent a successful-or-not report for each refkey (posted ones only), on the run's axis.
async fn read_reports(ctx: &Ctx) -> HashMap<String, i64> {
    let mut first_sent: HashMap<String, i64> = HashMap::new();
    let mut after = 0;
    loop {
        let url = format!("{}/_sandbox/reports?provider=bizppurio&after={after}&limit={REPORT_PAGE}", ctx.sandbox);
        let page: Vec<Value> = match ctx.http.get(&url).send().await.and_then(reqwest::Response::error_for_status) {
            Ok(response) => response.json().await.unwrap_or_default(),
            Err(error) => {
                ctx.progress.line(&format!("warning: reading the report log: {error}"));
                return first_sent;
            }
        };
        for entry in &page {
            let (Some(reference), Some(sent_at)) = (entry["reference"].as_str(), entry["sent_at"].as_str()) else {
                continue;
            };
            if entry["status"] != "posted" {
                continue;
            }
            let Some(sent_ns) = rfc3339::parse_unix_ns(sent_at) else { continue };
            let at = ctx.clock.on_axis(sent_ns);
            first_sent.entry(reference.to_string()).and_modify(|t| *t = (*t).min(at)).or_insert(at);
        }
        match page.last().and_then(|e| e["seq"].as_u64()) {
            Some(seq) if page.len() == REPORT_PAGE => after = seq,
            _ => return first_sent,
        }
    }
}

/// What the step-order check found.
#[derive(Debug, Default, PartialEq, Eq)]
struct StepOrder {
    /// Steps after the first that arrived and whose previous step's report was found.
    checked: u64,
    /// Steps that arrived before the previous step's report was sent, or whose previous step never arrived.
    violations: u64,
    /// Steps whose previous step's report is not in the log.
    unverified: u64,
}

fn step_order(arrivals: &[Option<(String, i64)>], steps: usize, reports: &HashMap<String, i64>) -> StepOrder {
    let mut order = StepOrder::default();
    for (index, arrival) in arrivals.iter().enumerate() {
        let Some((_, arrived_at)) = arrival else { continue };
        if index % steps == 0 {
            continue;
        }
        match &arrivals[index - 1] {
            None => order.violations += 1,
            Some((reference, _)) => match reports.get(reference) {
                None => order.unverified += 1,
                Some(&report_sent) => {
                    order.checked += 1;
                    order.violations += u64::from(report_sent > *arrived_at);
                }
            },
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_must_follow_the_previous_steps_report() {
        let step = |reference: &str, at: i64| Some((reference.to_string(), at));
        // Two sequences of three steps. Sequence 0: in order. Sequence 1: step 2 arrived before step 1's report
        // was sent, step 3 arrived although step 2's report is not in the log.
        let arrivals =
            vec![step("a1", 10), step("a2", 30), step("a3", 50), step("b1", 10), step("b2", 15), step("b3", 40)];
        let reports = HashMap::from([("a1".into(), 20), ("a2".into(), 40), ("b1".into(), 20)]);
        assert_eq!(step_order(&arrivals, 3, &reports), StepOrder { checked: 3, violations: 1, unverified: 1 });

        // A step that arrived although the one before it never did.
        let gap = vec![step("c1", 10), None, step("c3", 50)];
        assert_eq!(step_order(&gap, 3, &HashMap::new()), StepOrder { checked: 0, violations: 1, unverified: 0 });
    }

    #[test]
    fn step_bodies_name_the_sequence_and_the_step() {
        let ledger = Arc::new(Ledger::new("sequences", OrderBy::None));
        for _ in 0..4 {
            ledger.plan(0, 0, 0);
        }
        let steps = Steps { ledger, steps: 2, arrivals: Mutex::default() };
        let arrival = |rest| Arrival { seq: 1, to: "+821000000000", rest, reference: Some("d"), at_us: 7 };
        assert_eq!(steps.arrive(&arrival("1 2")), Arrived::First);
        assert_eq!(steps.arrivals().get(3).cloned().flatten(), Some(("d".to_string(), 7)));
        for bad in ["1 3", "1 0", "1", "x 1", "1 1 1"] {
            assert_eq!(steps.arrive(&arrival(bad)), Arrived::Stray, "{bad}");
        }
    }
}

//! `rate`: a first, closed-loop rate measurement. `--concurrency` clients send immediate push notifications as
//! fast as Herald acknowledges them; delivered/s counts what the sandbox accepted. See README.md for what this is
//! not yet.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::users;

#[derive(clap::Args)]
pub struct Args {
    /// Herald's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    herald: String,
    /// The sandbox's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    sandbox: String,
    #[arg(long, default_value_t = 1000)]
    users: usize,
    #[arg(long, default_value_t = 20_000)]
    total: u64,
    #[arg(long, default_value_t = 64)]
    concurrency: u64,
}

async fn push_accepted(http: &reqwest::Client, sandbox: &str) -> u64 {
    let stats: Value = http.get(format!("{sandbox}/_sandbox/stats")).send().await.unwrap().json().await.unwrap();
    stats["fcm"]["accepted"].as_u64().unwrap_or(0) + stats["apns"]["accepted"].as_u64().unwrap_or(0)
}

pub async fn run(args: Args, http: reqwest::Client) {
    let run = crate::run_id();
    let creators = usize::try_from(args.concurrency).unwrap_or(usize::MAX);
    users::create(&http, &args.herald, "load", args.users, creators).await.unwrap();
    let baseline = push_accepted(&http, &args.sandbox).await;
    let next = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (http, next, refused, run) = (http.clone(), next.clone(), refused.clone(), run.clone());
        let (url, users, total) = (format!("{}/v1/notifications", args.herald), args.users, args.total);
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let body = json!({"user_id": users::user_id("load", i as usize % users), "channels": ["push"],
                                  "content": {"body": format!("load {run} {i}")}});
                let status = http.post(&url).json(&body).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
                if status != 202 {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let accept_time = started.elapsed();
    let accepted = args.total - refused.load(Ordering::Relaxed);
    loop {
        let delivered = push_accepted(&http, &args.sandbox).await - baseline;
        if delivered >= accepted || started.elapsed() > accept_time * 10 + Duration::from_secs(30) {
            let total_time = started.elapsed();
            println!(
                "sent {} | accepted {accepted} ({} refused) in {:.2}s = {:.0}/s | delivered {delivered} in {:.2}s = {:.0}/s",
                args.total,
                args.total - accepted,
                accept_time.as_secs_f64(),
                accepted as f64 / accept_time.as_secs_f64(),
                total_time.as_secs_f64(),
                delivered as f64 / total_time.as_secs_f64()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! The recipients: users `lt-<n>`, each with what the run's channels need: an Android device `lt-token-<n>` (so
//! a push notification is exactly one FCM message), an e-mail address, a phone number `+8210<n, 8 digits>`.
//! Creating them again is harmless (the user PUT is an upsert, a known device token replaces itself).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::notify::{Ctx, post};

pub fn user_id(n: usize) -> String {
    format!("lt-{n}")
}

pub fn token(n: usize) -> String {
    format!("lt-token-{n}")
}

/// The user number of a device token of this tool.
pub fn user_of_token(token: &str) -> Option<usize> {
    token.strip_prefix("lt-token-")?.parse().ok()
}

/// A Korean mobile number in E.164, distinct for every n below 10^8.
pub fn phone(n: usize) -> String {
    format!("+8210{n:08}")
}

/// What the users need, from the channels they will be sent on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    pub device: bool,
    pub email: bool,
    pub phone: bool,
}

impl Needs {
    pub fn of(channels: &[String]) -> Needs {
        let has = |c: &str| channels.iter().any(|x| x == c);
        Needs { device: has("push"), email: has("email"), phone: has("sms") || has("alimtalk") }
    }
}

const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Creates users 0..count with `ctx.args.concurrency` requests in flight; the first failure is the error.
pub async fn create(ctx: &Arc<Ctx>, count: usize, needs: Needs) -> Result<(), String> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..ctx.args.concurrency {
        let (ctx, next) = (ctx.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return Ok::<(), String>(());
                }
                create_one(&ctx, n, needs).await?;
            }
        }));
    }
    let started = Instant::now();
    let watch = {
        let (ctx, next) = (ctx.clone(), next.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                let done = next.load(Ordering::Relaxed).min(count);
                let rate = done as f64 / started.elapsed().as_secs_f64();
                ctx.progress.line(&format!("   {done}/{count} users ({rate:.0}/s)"));
            }
        })
    };
    let mut result = Ok(());
    for worker in workers {
        let outcome = worker.await.map_err(|e| format!("a user-creating task failed: {e}")).and_then(|r| r);
        if result.is_ok() {
            result = outcome;
        }
    }
    watch.abort();
    result
}

async fn create_one(ctx: &Ctx, n: usize, needs: Needs) -> Result<(), String> {
    let path = format!("/v1/users/{}", user_id(n));
    let mut user = Map::new();
    if needs.email {
        user.insert("email".into(), json!(format!("{}@example.com", user_id(n))));
    }
    if needs.phone {
        user.insert("phone".into(), json!(phone(n)));
    }
    let answer = post(&ctx.http, reqwest::Method::PUT, &ctx.url(&path), &Value::Object(user)).await;
    if !matches!(answer.status, Some(200..=299)) {
        return Err(format!("PUT {path}: {}", answer.describe()));
    }
    if needs.device {
        let device = json!({"token": token(n), "platform": "android"});
        let answer = post(&ctx.http, reqwest::Method::POST, &ctx.url(&format!("{path}/devices")), &device).await;
        if !matches!(answer.status, Some(200..=299)) {
            return Err(format!("POST {path}/devices: {}", answer.describe()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(user_of_token(&token(123)), Some(123));
        assert_eq!(user_of_token("lt-token-x"), None);
        assert_eq!(user_of_token("other-token-1"), None);
        assert_eq!(phone(7), "+821000000007");
        assert_eq!(phone(99_999_999), "+821099999999");
    }

    #[test]
    fn channels_decide_what_a_user_needs() {
        let needs = |list: &[&str]| Needs::of(&list.iter().map(|c| c.to_string()).collect::<Vec<_>>());
        assert_eq!(needs(&["push"]), Needs { device: true, email: false, phone: false });
        assert_eq!(needs(&["alimtalk"]), Needs { device: false, email: false, phone: true });
        assert_eq!(needs(&["email", "sms"]), Needs { device: false, email: true, phone: true });
    }
}

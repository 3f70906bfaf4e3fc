//! The recipients a load run sends to: `count` users named `<prefix>-<n>`, each with one Android device whose
//! token is `<prefix>-token-<n>`, so every push notification becomes exactly one FCM message. Creating them again
//! is harmless: the user PUT is an upsert and a device with a known token replaces itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

/// The id of user number `n`.
pub fn user_id(prefix: &str, n: usize) -> String {
    format!("{prefix}-{n}")
}

/// Creates (or refreshes) the users with `concurrency` requests in flight; the first failure is the error.
pub async fn create(
    http: &reqwest::Client,
    herald: &str,
    prefix: &str,
    count: usize,
    concurrency: usize,
) -> Result<(), String> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (http, next, herald, prefix) = (http.clone(), next.clone(), herald.to_string(), prefix.to_string());
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return Ok::<(), String>(());
                }
                create_one(&http, &herald, &prefix, n).await?;
            }
        }));
    }
    for worker in workers {
        worker.await.map_err(|e| format!("a user-creating task failed: {e}"))??;
    }
    Ok(())
}

async fn create_one(http: &reqwest::Client, herald: &str, prefix: &str, n: usize) -> Result<(), String> {
    let user = format!("{herald}/v1/users/{}", user_id(prefix, n));
    let device = json!({"token": format!("{prefix}-token-{n}"), "platform": "android"});
    let fail = |what: &str, e: reqwest::Error| format!("{what} {user}: {e}");
    http.put(&user)
        .json(&json!({}))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| fail("PUT", e))?;
    http.post(format!("{user}/devices"))
        .json(&device)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| fail("POST devices of", e))?;
    Ok(())
}

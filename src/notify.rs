//! Notifications, fire-and-forget: a JSON POST to `notify.url`, and healthchecks.io-style pings
//! (`<url>/start`, `<url>`, `<url>/fail`). They run on blocking threads with a short timeout and
//! are never awaited by a job: a slow or dead endpoint can neither block nor fail the job.

use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(false)
        .user_agent(concat!("dbward/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// POSTs `body` to `url` in the background.
pub fn post(url: &str, body: serde_json::Value) {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let result = agent()
            .post(&url)
            .header("content-type", "application/json")
            .send(body.to_string());
        match result {
            Ok(r) if r.status().is_success() => tracing::debug!("notified {url}"),
            Ok(r) => tracing::warn!("notification to {url} answered {}", r.status()),
            Err(e) => tracing::warn!("notification to {url} failed: {e}"),
        }
    });
}

/// GETs a ping URL in the background; `suffix` is `/start`, `` or `/fail`.
pub fn ping(url: &str, suffix: &str) {
    let url = format!("{}{suffix}", url.trim_end_matches('/'));
    tokio::task::spawn_blocking(move || {
        if let Err(e) = agent().get(&url).call() {
            tracing::warn!("ping {url} failed: {e}");
        }
    });
}

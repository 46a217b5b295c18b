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
        let shown = shown(&url);
        match result {
            Ok(r) if r.status().is_success() => tracing::debug!("notified {shown}"),
            Ok(r) => tracing::warn!("notification to {shown} answered {}", r.status()),
            Err(e) => tracing::warn!(
                "notification to {shown} failed: {}",
                e.to_string().replace(&url, &shown)
            ),
        }
    });
}

/// GETs a ping URL in the background; `suffix` is `/start`, `` or `/fail`.
pub fn ping(url: &str, suffix: &str) {
    let url = format!("{}{suffix}", url.trim_end_matches('/'));
    tokio::task::spawn_blocking(move || {
        if let Err(e) = agent().get(&url).call() {
            let shown = shown(&url);
            tracing::warn!(
                "ping {shown} failed: {}",
                e.to_string().replace(&url, &shown)
            );
        }
    });
}

/// A notification or ping URL as logs show it: scheme and host only. Webhook and ping URLs
/// carry their token in the path or query (`https://hooks.slack.com/services/T0/B0/XXXX`,
/// `https://hc-ping.com/<uuid>`), so the rest is never written anywhere.
pub fn shown(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    // User info before the host is a secret too.
    let host = host.rsplit('@').next().unwrap_or(host);
    if rest.len() > host.len() {
        format!("{scheme}://{host}/…")
    } else {
        format!("{scheme}://{host}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_not_shown() {
        assert_eq!(
            super::shown("https://hooks.slack.com/services/T0/B0/XXXX"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            super::shown("https://user:pw@hc-ping.com/uuid?x=1"),
            "https://hc-ping.com/…"
        );
        assert_eq!(super::shown("http://127.0.0.1:9"), "http://127.0.0.1:9");
    }
}

//! Waits that say what they wait for: [`announced`] logs, from 10 s on, what a future is still
//! waiting for, at growing intervals (10 s, 20 s, 40 s, ... then every 5 minutes), so no wait
//! of dbward's is silent.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// `fut`, logging `still waiting for <what>` from 10 s on.
pub async fn announced<F: Future>(what: impl Display, fut: F) -> F::Output {
    let started = Instant::now();
    let mut gap = Duration::from_secs(10);
    let mut next = started + gap;
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return out,
            _ = tokio::time::sleep_until(next) => {
                tracing::info!(
                    "still waiting for {what} ({}s so far)",
                    started.elapsed().as_secs()
                );
                gap = (gap * 2).min(Duration::from_secs(300));
                next += gap;
            }
        }
    }
}

//! Undo steps that must run even when the command is stopped: an [`Undo`] holds one (dropping a
//! scratch database it created, say). Dropped armed (the command's future was dropped by a stop
//! request, or a path forgot it), it is queued, and `main` runs the queue ([`run_pending`])
//! before the process exits. Each step must be safe to run late and more than once: it checks
//! that what it removes is still exactly what it made.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

/// Why a step failed, with its causes.
pub type StepError = Box<dyn std::error::Error + Send + Sync>;

type Step = Pin<Box<dyn Future<Output = Result<(), StepError>> + Send>>;

static PENDING: Mutex<Vec<(String, Step)>> = Mutex::new(Vec::new());

/// An undo step, queued for [`run_pending`] if dropped before [`Undo::disarm`].
pub struct Undo {
    what: String,
    step: Option<Step>,
}

impl Undo {
    /// `what`: for the log (`dropping the scratch database x`).
    pub fn new<E: std::error::Error + Send + Sync + 'static>(
        what: impl Into<String>,
        step: impl Future<Output = Result<(), E>> + Send + 'static,
    ) -> Undo {
        Undo {
            what: what.into(),
            step: Some(Box::pin(async move { step.await.map_err(StepError::from) })),
        }
    }

    /// The step is not needed (done by the command itself, or what it undoes is kept).
    pub fn disarm(mut self) {
        self.step = None;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(step) = self.step.take() {
            PENDING
                .lock()
                .expect("not poisoned")
                .push((std::mem::take(&mut self.what), step));
        }
    }
}

/// Runs every queued step, each within `limit` (a step that does not finish in time is named
/// and given up on).
pub async fn run_pending(limit: Duration) {
    let steps = std::mem::take(&mut *PENDING.lock().expect("not poisoned"));
    for (what, step) in steps {
        tracing::info!("undoing what was half done: {what}");
        match tokio::time::timeout(limit, step).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let mut text = e.to_string();
                let mut cause = e.source();
                while let Some(c) = cause {
                    text.push_str(&format!(": {c}"));
                    cause = c.source();
                }
                tracing::warn!("{what} failed: {text}");
            }
            Err(_) => tracing::warn!(
                "{what} did not finish within {}; given up",
                crate::error::humanize(limit)
            ),
        }
    }
}

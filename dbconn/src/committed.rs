//! This run's point of no return, if it passed one: what a stop request's message must not
//! claim was undone (a committed batch, a swapped-in restore).

use std::sync::Mutex;

static WHAT: Mutex<Option<String>> = Mutex::new(None);

/// Records that `what` is done and stays, whatever happens next.
pub fn mark(what: impl Into<String>) {
    *WHAT.lock().unwrap_or_else(|e| e.into_inner()) = Some(what.into());
}

/// What this run committed, if anything.
pub fn get() -> Option<String> {
    WHAT.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

//! Sections a signal must not cut short: between stopping a cluster and starting it again (the
//! guard's rewind), dropping the command's future would leave the database down, or remove a
//! directory a server is starting on. `main` lets a command inside one run to its end, and says
//! so, instead of stopping it at the next await.

use std::sync::atomic::{AtomicUsize, Ordering};

static HELD: AtomicUsize = AtomicUsize::new(0);
static WHAT: std::sync::Mutex<&'static str> = std::sync::Mutex::new("");

/// Held while the section runs.
pub struct Section(());

/// Enters a section (`what`: for the message a signal gets).
pub fn enter(what: &'static str) -> Section {
    *WHAT.lock().expect("not poisoned") = what;
    HELD.fetch_add(1, Ordering::SeqCst);
    Section(())
}

impl Drop for Section {
    fn drop(&mut self) {
        HELD.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What is running that a signal must not cut short, if anything.
pub fn held() -> Option<&'static str> {
    (HELD.load(Ordering::SeqCst) > 0).then(|| *WHAT.lock().expect("not poisoned"))
}

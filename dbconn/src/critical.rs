//! Sections a signal must not cut short: between stopping a cluster and starting it again (the
//! guard's rewind), dropping the command's future would leave the database down, or remove a
//! directory a server is starting on. `main` lets a command inside one run to its end, and says
//! so, instead of stopping it at the next await.

use std::sync::Mutex;

/// What runs that a signal must not cut short (one section at a time).
static HELD: Mutex<Option<&'static str>> = Mutex::new(None);

/// Held while the section runs.
pub struct Section(());

/// Enters a section (`what`: for the message a signal gets).
pub fn enter(what: &'static str) -> Section {
    *HELD.lock().expect("not poisoned") = Some(what);
    Section(())
}

impl Section {
    /// What the section now does (for the message a signal gets).
    pub fn now(&self, what: &'static str) {
        *HELD.lock().expect("not poisoned") = Some(what);
    }
}

impl Drop for Section {
    fn drop(&mut self) {
        *HELD.lock().expect("not poisoned") = None;
    }
}

/// What is running that a signal must not cut short, if anything.
pub fn held() -> Option<&'static str> {
    *HELD.lock().expect("not poisoned")
}

//! A running replicator asked for a position that the primary store holds: `migrate`'s
//! pre-deploy point, in O(1) of the database's size. The two talk through files in the
//! replicator's own local folder (private to the user both run as), so no socket path, port or
//! signal is needed:
//!
//! 1. the asker writes `ask-<nonce>.request` (by a rename, whole);
//! 2. the replicator, which looks every few tens of milliseconds, removes it (the request is
//!    taken), ships a step at once, and writes `ask-<nonce>.answer` (by a rename, whole): the
//!    position the primary took, or why there is none;
//! 3. the asker reads the answer and removes it.
//!
//! An asker that gives up removes its own request (if it is still there, it was not taken) and
//! never reads a late answer; answers nobody read are removed by the replicator after a minute.
//! Only names of this scheme, with the asker's own nonce, are ever removed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::manifest::StreamPoint;

const PREFIX: &str = "ask-";
const REQUEST: &str = ".request";
const ANSWER: &str = ".answer";
/// How often the asker looks for the request to be taken and for the answer.
const POLL: Duration = Duration::from_millis(20);
/// How long an unread answer stays.
const UNREAD: Duration = Duration::from_secs(60);

/// Why no position came back.
#[derive(Debug, thiserror::Error)]
pub enum NoPosition {
    #[error("no replicator took the request within {0:?}")]
    NotTaken(Duration),
    #[error("the replicator did not answer within {0:?}")]
    NotAnswered(Duration),
    #[error("the replicator stopped before it answered")]
    Stopped,
    #[error("the replicator could not ship a step: {0}")]
    Refused(String),
    #[error("asking the replicator: {0}")]
    Io(String),
}

/// What the replicator answers.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Answer {
    Position(StreamPoint),
    Error(String),
}

fn nonce() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// The nonce of a name of this scheme with `suffix`.
fn nonce_of<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    let n = name.strip_prefix(PREFIX)?.strip_suffix(suffix)?;
    (n.len() == 16 && n.bytes().all(|b| b.is_ascii_hexdigit())).then_some(n)
}

fn path(dir: &Path, nonce: &str, suffix: &str) -> PathBuf {
    dir.join(format!("{PREFIX}{nonce}{suffix}"))
}

/// Writes `bytes` to `to` whole: a temp file of the same name plus `.tmp`, then a rename.
fn write_whole(to: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = to.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, to)
}

/// Asks the replicator whose local folder is `dir` for a position the primary store holds,
/// taken after this call began. Blocking; bounded by `taken_within` (for the request to be
/// taken) plus `answered_within` (for the step), and given up as soon as `alive` says the
/// replicator is gone.
pub fn position(
    dir: &Path,
    taken_within: Duration,
    answered_within: Duration,
    alive: &dyn Fn() -> bool,
) -> Result<StreamPoint, NoPosition> {
    let io = |what: &str, e: std::io::Error| NoPosition::Io(format!("{what}: {e}"));
    if !dir.is_dir() {
        return Err(NoPosition::Io(format!(
            "{} does not exist (has this replicator run as this user?)",
            dir.display()
        )));
    }
    let nonce = nonce();
    let request = path(dir, &nonce, REQUEST);
    let answer = path(dir, &nonce, ANSWER);
    write_whole(&request, b"").map_err(|e| io(&format!("writing {}", request.display()), e))?;
    let started = Instant::now();
    while request.exists() {
        if started.elapsed() >= taken_within {
            // Ours by its nonce; gone already means it was taken just now.
            match std::fs::remove_file(&request) {
                Ok(()) => return Err(NoPosition::NotTaken(taken_within)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(io(&format!("removing {}", request.display()), e)),
            }
        }
        std::thread::sleep(POLL);
    }
    let taken = Instant::now();
    loop {
        match std::fs::read(&answer) {
            Ok(bytes) => {
                let _ = std::fs::remove_file(&answer);
                return match serde_json::from_slice(&bytes) {
                    Ok(Answer::Position(p)) => Ok(p),
                    Ok(Answer::Error(e)) => Err(NoPosition::Refused(e)),
                    Err(e) => Err(NoPosition::Io(format!(
                        "{} is not an answer: {e}",
                        answer.display()
                    ))),
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&format!("reading {}", answer.display()), e)),
        }
        if taken.elapsed() >= answered_within {
            return Err(NoPosition::NotAnswered(answered_within));
        }
        if !alive() && !answer.exists() {
            return Err(NoPosition::Stopped);
        }
        std::thread::sleep(POLL);
    }
}

/// A request the replicator took: answered once the step is shipped.
#[derive(Debug)]
pub struct Taken {
    nonce: String,
}

/// The replicator's side: takes every request waiting in `dir` (removing it), and removes the
/// answers nobody read for a minute (and the temp files of a writer killed before its rename). Cheap: one listing of its own folder.
pub fn take(dir: &Path) -> Vec<Taken> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = nonce_of(name, REQUEST) {
            // Taken only if this removal is the one that took it.
            if std::fs::remove_file(e.path()).is_ok() {
                out.push(Taken {
                    nonce: n.to_string(),
                });
            }
        } else if nonce_of(name, ANSWER).is_some()
            || nonce_of(name, ".request.tmp").is_some()
            || nonce_of(name, ".answer.tmp").is_some()
        {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= UNREAD);
            if old {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    out
}

/// Answers a taken request: the position the primary holds, or why there is none.
pub fn answer(dir: &Path, taken: &Taken, result: Result<&StreamPoint, String>) {
    let a = match result {
        Ok(p) => Answer::Position(p.clone()),
        Err(e) => Answer::Error(e),
    };
    let to = path(dir, &taken.nonce, ANSWER);
    if let Err(e) = write_whole(&to, &serde_json::to_vec(&a).expect("serializes")) {
        tracing::warn!("answering a request for a position: {}: {e}", to.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point() -> StreamPoint {
        StreamPoint {
            generation: "20261206T160528123456Z-f464".into(),
            seq: 7,
            state: "00".into(),
            captured_at: "2026-12-06T16:05:29.000Z".into(),
        }
    }

    #[test]
    fn a_request_is_taken_answered_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let replicator = std::thread::spawn(move || loop {
            let taken = take(&d);
            if let Some(t) = taken.first() {
                answer(&d, t, Ok(&point()));
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        });
        let p = position(
            dir.path(),
            Duration::from_secs(10),
            Duration::from_secs(10),
            &|| true,
        )
        .unwrap();
        replicator.join().unwrap();
        assert_eq!(p, point());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_error_comes_back_as_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let replicator = std::thread::spawn(move || loop {
            if let Some(t) = take(&d).first() {
                answer(&d, t, Err("the primary refused".into()));
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        });
        let e = position(
            dir.path(),
            Duration::from_secs(10),
            Duration::from_secs(10),
            &|| true,
        )
        .unwrap_err();
        replicator.join().unwrap();
        assert!(
            matches!(e, NoPosition::Refused(ref m) if m == "the primary refused"),
            "{e}"
        );
    }

    #[test]
    fn nobody_there_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let e = position(
            dir.path(),
            Duration::from_millis(100),
            Duration::from_secs(1),
            &|| true,
        )
        .unwrap_err();
        assert!(matches!(e, NoPosition::NotTaken(_)), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn taken_and_never_answered_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let replicator = std::thread::spawn(move || loop {
            if !take(&d).is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        });
        let e = position(
            dir.path(),
            Duration::from_secs(10),
            Duration::from_millis(100),
            &|| true,
        )
        .unwrap_err();
        replicator.join().unwrap();
        assert!(matches!(e, NoPosition::NotAnswered(_)), "{e}");
    }

    #[test]
    fn a_replicator_that_dies_after_taking_is_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let gone = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let g = gone.clone();
        let replicator = std::thread::spawn(move || loop {
            if !take(&d).is_empty() {
                g.store(true, std::sync::atomic::Ordering::SeqCst);
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        });
        let alive = || !gone.load(std::sync::atomic::Ordering::SeqCst);
        let e = position(
            dir.path(),
            Duration::from_secs(10),
            Duration::from_secs(600),
            &alive,
        )
        .unwrap_err();
        replicator.join().unwrap();
        assert!(matches!(e, NoPosition::Stopped), "{e}");
    }

    #[test]
    fn only_its_own_names_are_taken_or_removed() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "ask-XYZ.request",
            "ask-0123456789abcdef.request.tmp",
            "app.db",
            "ask-0123456789abcdef.answer",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert!(take(dir.path()).is_empty());
        // A fresh answer stays (it may be read yet); foreign names are never touched.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
    }
}

//! The drill's checks: a runner that times each one and stops at the first failure, the
//! verdict types, and the comparisons against the manifest (migration head, row counts) that
//! both engines share.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Instant;

use serde::Serialize;

use backup::Manifest;

use crate::Options;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Passed,
    /// The snapshot failed this check.
    Failed,
    /// The check could not run for a reason that is not the snapshot's (a full disk, a write
    /// error, a server that refuses the scratch database): the drill failed, but it proved
    /// nothing against the snapshot.
    Error,
    Skipped,
}

/// Why a check did not pass, and whose fault that is.
#[derive(Debug)]
pub enum CheckFailure {
    /// The snapshot's.
    Snapshot(String),
    /// This machine's (disk space, a write error, the scratch server).
    Environment(String),
}

/// Why a check cannot run here: it is skipped, and says why.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl From<String> for CheckFailure {
    fn from(s: String) -> CheckFailure {
        CheckFailure::Snapshot(s)
    }
}

impl From<&str> for CheckFailure {
    fn from(s: &str) -> CheckFailure {
        CheckFailure::Snapshot(s.to_string())
    }
}

/// An error reading the restored copy: the snapshot's.
impl From<rusqlite::Error> for CheckFailure {
    fn from(e: rusqlite::Error) -> CheckFailure {
        CheckFailure::Snapshot(e.to_string())
    }
}

impl From<dbconn::Error> for CheckFailure {
    fn from(e: dbconn::Error) -> CheckFailure {
        CheckFailure::Snapshot(backup::error::chain(&e))
    }
}

/// A step's error: a full disk, a failed write or a missing key is the environment's, anything
/// else the snapshot's.
pub fn classify(e: backup::Error) -> CheckFailure {
    match e {
        backup::Error::NoSpace(_)
        | backup::Error::Full(_)
        | backup::Error::Io { .. }
        | backup::Error::NoKey(_) => CheckFailure::Environment(backup::error::chain(&e)),
        e => CheckFailure::Snapshot(backup::error::chain(&e)),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub seconds: f64,
    pub detail: String,
}

/// A check's result: a value for the next step and a detail for the report.
pub type Outcome<T> = Result<(T, String), CheckFailure>;

/// Runs the checks in order, stopping at the first failure.
#[derive(Default)]
pub struct Checks {
    pub list: Vec<Check>,
    pub failed: bool,
}

/// Runs one check and times it: its outcome and seconds.
pub async fn timed<T>(f: impl Future<Output = Outcome<T>>) -> (Outcome<T>, f64) {
    // Checks are partly synchronous; yielding first lets the runtime see a signal, so a stop
    // request ends the drill at the next check instead of being missed.
    tokio::task::yield_now().await;
    let started = Instant::now();
    let result = f.await;
    (result, started.elapsed().as_secs_f64())
}

impl Checks {
    pub async fn run<T>(
        &mut self,
        name: &'static str,
        f: impl Future<Output = Outcome<T>>,
    ) -> Option<T> {
        if self.failed {
            return None;
        }
        let outcome = timed(f).await;
        self.record(name, outcome)
    }

    /// Records a check that ran (see [`timed`]); its value if it passed. After a failure,
    /// nothing more is recorded.
    pub fn record<T>(
        &mut self,
        name: &'static str,
        (result, seconds): (Outcome<T>, f64),
    ) -> Option<T> {
        if self.failed {
            return None;
        }
        let (verdict, detail, value) = match result {
            Ok((value, detail)) => (Verdict::Passed, detail, Some(value)),
            Err(CheckFailure::Snapshot(d)) => (Verdict::Failed, d, None),
            Err(CheckFailure::Environment(d)) => (Verdict::Error, d, None),
        };
        if verdict == Verdict::Passed {
            tracing::info!("drill check {name}: passed in {seconds:.2}s {detail}");
        } else {
            tracing::error!("drill check {name}: {verdict:?} in {seconds:.2}s: {detail}");
            self.failed = true;
        }
        self.list.push(Check {
            name,
            verdict,
            seconds,
            detail,
        });
        value
    }

    pub fn skipped(&mut self, name: &'static str, detail: String) {
        tracing::warn!("drill check {name}: skipped: {detail}");
        self.list.push(Check {
            name,
            verdict: Verdict::Skipped,
            seconds: 0.0,
            detail,
        });
    }
}

/// Every probe (SQL returning one boolean) is true, asked in order through `probe`.
pub async fn probes_true<'a, F, Fut>(probes: &'a [String], probe: F) -> Outcome<()>
where
    F: Fn(&'a str) -> Fut,
    Fut: Future<Output = Result<bool, CheckFailure>>,
{
    for p in probes {
        if !probe(p).await? {
            return Err(format!("`{p}` returned false").into());
        }
    }
    Ok(((), format!("{} probe(s) true", probes.len())))
}

/// The restored head (version, checksum) is one of the migrations folder's files, unchanged,
/// when the folder is known.
pub fn in_folder(got: &Option<(i64, String)>, opts: &Options) -> Result<(), CheckFailure> {
    if let (Some(files), Some((v, sum))) = (&opts.migrations, got) {
        match files.iter().find(|f| f.version == *v) {
            Some(f) if f.checksum.to_string() == *sum => {}
            Some(f) => {
                return Err(format!(
                    "head V{v} differs from {} in the migrations folder",
                    f.path.display()
                )
                .into())
            }
            None => return Err(format!("head V{v} is not in the migrations folder").into()),
        }
    }
    Ok(())
}

pub fn head_matches(head: Option<dbconn::Applied>, m: &Manifest, opts: &Options) -> Outcome<()> {
    let got = head.as_ref().map(|h| (h.version, h.checksum.to_string()));
    let want = m
        .migration_head
        .as_ref()
        .map(|h| (h.version, h.checksum.clone()));
    if got != want {
        return Err(format!("restored head {got:?}, the manifest says {want:?}").into());
    }
    in_folder(&got, opts)?;
    let head = head
        .map(|h| dbconn::history::label(h.version, h.version_text.as_deref()))
        .unwrap_or_else(|| "no migration".into());
    Ok((
        (),
        match opts.migrations {
            Some(_) => head,
            None => format!(
                "{head}, as the manifest says (no migrations folder here to compare it with)"
            ),
        },
    ))
}

pub fn counts_match(got: BTreeMap<String, u64>, m: &Manifest) -> Outcome<()> {
    let mut diffs = Vec::new();
    for (t, want) in &m.row_counts {
        match got.get(t) {
            Some(g) if g == want => {}
            Some(g) => diffs.push(format!("{t}: {g} rows, manifest {want}")),
            None => diffs.push(format!("{t}: missing")),
        }
    }
    for t in got.keys().filter(|t| !m.row_counts.contains_key(*t)) {
        diffs.push(format!("{t}: not in the manifest"));
    }
    if diffs.is_empty() {
        Ok(((), format!("{} tables match", got.len())))
    } else {
        Err(diffs.join("; ").into())
    }
}

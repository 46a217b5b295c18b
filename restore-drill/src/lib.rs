//! Restore drills: a backup that has never been restored is a hope. A drill fetches a
//! snapshot, restores it into a scratch database (never the live one), checks it the way
//! docs/contract.md lists, times it, and always cleans up. Each check has its own verdict and
//! time; the drill stops at the first failure but reports what ran.
//!
//! One check sequence serves both engines ([`run_checks`]): download, decode, restore into a
//! [`ScratchDb`], then integrity, amcheck (PostgreSQL), migration head, row counts and probes
//! on it. [`checks`] holds the runner and the comparisons; [`sqlite`] and [`postgres`] the
//! engines' scratch databases.

pub mod checks;
pub mod ephemeral;
pub mod metrics;
pub mod physical;
pub mod postgres;
pub mod sqlite;
pub mod stream;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use backup::restore;
use backup::{Manifest, Store};
use dbconn::DatabaseUrl;
use dbconn::PgUrl;
use migrator::MigrationFile;

use checks::{classify, counts_match, head_matches, CheckFailure, Checks};
pub use checks::{Check, Verdict};

/// Where a PostgreSQL snapshot is restored for the drill.
#[derive(Debug, Clone)]
pub enum Scratch {
    /// A database `dbward_drill_<id>` on the same server as the live one.
    SameServer,
    /// A database `dbward_drill_<id>` on this server (the URL's database is only used to connect).
    Server(Box<PgUrl>),
    /// A throwaway local cluster started for the drill and removed after it.
    Ephemeral,
}

pub struct Options {
    pub scratch: Scratch,
    /// SQL returning one boolean each; all must be true.
    pub probes: Vec<String>,
    pub max_rto: Option<Duration>,
    pub max_snapshot_age: Option<Duration>,
    /// The migrations folder, when known: the restored head must be one of its files.
    pub migrations: Option<Vec<MigrationFile>>,
    pub temp_dir: PathBuf,
    /// What an encrypted snapshot is decrypted with.
    pub identities: backup::crypt::Identities,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub snapshot: String,
    pub database: String,
    pub engine: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// How old the snapshot was when drilled: the RPO this backup gives.
    pub snapshot_age_seconds: f64,
    /// Download + decode + restore: the RTO this backup gives. None if it never got there.
    pub rto_seconds: Option<f64>,
    /// A physical drill's achieved RPO: how long before the drill the last transaction it
    /// recovered committed (absent for dumps: their RPO is `snapshot_age_seconds`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpo_seconds: Option<f64>,
    pub stored_bytes: u64,
    pub raw_bytes: u64,
    /// Whether the stored object is encrypted (age).
    pub encrypted: bool,
    /// Which store's copy was drilled: 0 the primary, n the n-th mirror (the primary's did not
    /// verify).
    pub copy: usize,
    pub checks: Vec<Check>,
    pub success: bool,
}

impl Report {
    pub fn first_failure(&self) -> Option<&Check> {
        self.checks
            .iter()
            .find(|c| matches!(c.verdict, Verdict::Failed | Verdict::Error))
    }

    /// The drill could not run for a reason that is not the snapshot's.
    pub fn environment_failure(&self) -> bool {
        self.first_failure()
            .is_some_and(|c| c.verdict == Verdict::Error || c.name == "interrupted")
    }
}

/// What the checks measure on the way: the time to restore, and which copy was drilled.
#[derive(Default)]
struct Measured {
    rto: Option<f64>,
    copy: usize,
}

/// Drills `m` (a snapshot of `live`). Never touches `live`. Cleans up on every path, Ctrl-C
/// included (the scratch database of a drill killed outright is dropped by the next drill).
/// `stores`: the primary store, then its mirrors; the first copy that verifies is drilled.
pub async fn drill(stores: &[&Store], live: &DatabaseUrl, m: &Manifest, opts: &Options) -> Report {
    let now = time::OffsetDateTime::now_utc();
    let age = m
        .created()
        .map(|c| (now - c).as_seconds_f64())
        .unwrap_or(f64::NAN);
    let mut checks = Checks::default();
    let mut measured = Measured::default();
    let mut cleanup = postgres::Cleanup::default();

    let work = run_checks(
        stores,
        live,
        m,
        opts,
        &mut checks,
        &mut measured,
        &mut cleanup,
    );
    // SIGINT (Ctrl-C) or SIGTERM (`docker compose stop`, systemd) stops the drill; the scratch
    // copy is removed below either way.
    // Registered now, before any work: a signal that came before the first poll would
    // otherwise end the process with its scratch files in place.
    use tokio::signal::unix::{signal, SignalKind};
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    let stop = async {
        match signals {
            (Ok(mut t), Ok(mut i)) => tokio::select! {
                _ = t.recv() => "SIGTERM",
                _ = i.recv() => "SIGINT",
            },
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        _ = work => {}
        sig = stop => {
            checks.list.push(Check { name: "interrupted", verdict: Verdict::Failed, seconds: 0.0, detail: format!("{sig}: the drill was stopped") });
            checks.failed = true;
        }
    }
    cleanup.run().await;

    if !checks.failed {
        let started = Instant::now();
        let mut problems = Vec::new();
        if let (Some(max), Some(r)) = (opts.max_rto, measured.rto) {
            if r > max.as_secs_f64() {
                problems.push(format!(
                    "RTO {r:.1}s exceeds drill.max_rto {}",
                    dbconn::error::humanize(max)
                ));
            }
        }
        if let Some(max) = opts.max_snapshot_age {
            // An unknown age (NaN) fails the threshold too.
            if age.is_nan() || age > max.as_secs_f64() {
                problems.push(format!(
                    "the snapshot is {:.0}s old, more than drill.max_snapshot_age {}",
                    age,
                    dbconn::error::humanize(max)
                ));
            }
        }
        if opts.max_rto.is_some() || opts.max_snapshot_age.is_some() {
            let seconds = started.elapsed().as_secs_f64();
            let verdict = if problems.is_empty() {
                Verdict::Passed
            } else {
                Verdict::Failed
            };
            checks.failed |= verdict == Verdict::Failed;
            checks.list.push(Check {
                name: "thresholds",
                verdict,
                seconds,
                detail: problems.join("; "),
            });
        }
    }
    Report {
        snapshot: m.id.clone(),
        database: m.database.clone(),
        engine: m.engine.clone(),
        started_at: backup::manifest::now_rfc3339(now),
        snapshot_age_seconds: age,
        rto_seconds: measured.rto,
        rpo_seconds: None,
        copy: measured.copy,
        stored_bytes: m.stored_bytes,
        raw_bytes: m.raw_bytes,
        encrypted: m.encryption.is_some(),
        success: !checks.failed,
        checks: checks.list,
    }
}

/// The scratch database a drill checks, of either engine.
pub enum ScratchDb {
    Sqlite(rusqlite::Connection),
    Postgres(Box<postgres::Restored>),
}

impl ScratchDb {
    async fn integrity(&self) -> checks::Outcome<()> {
        match self {
            ScratchDb::Sqlite(c) => sqlite::integrity(c),
            ScratchDb::Postgres(p) => p.integrity().await,
        }
    }

    /// `None`: the engine has no such check; `Some(Err(why))`: it cannot run here.
    async fn amcheck_available(&self) -> Option<Result<(), checks::Unavailable>> {
        match self {
            ScratchDb::Sqlite(_) => None,
            ScratchDb::Postgres(p) => Some(p.amcheck_available().await),
        }
    }

    async fn amcheck(&self) -> checks::Outcome<()> {
        match self {
            ScratchDb::Sqlite(_) => Ok(((), String::new())),
            ScratchDb::Postgres(p) => p.amcheck().await,
        }
    }

    async fn head(&self) -> Result<Option<dbconn::Applied>, CheckFailure> {
        match self {
            ScratchDb::Sqlite(c) => sqlite::head(c),
            ScratchDb::Postgres(p) => p.head().await,
        }
    }

    async fn row_counts(&self) -> Result<BTreeMap<String, u64>, CheckFailure> {
        match self {
            ScratchDb::Sqlite(c) => sqlite::row_counts(c),
            ScratchDb::Postgres(p) => p.row_counts().await,
        }
    }

    async fn probe(&self, sql: &str) -> Result<bool, CheckFailure> {
        match self {
            ScratchDb::Sqlite(c) => sqlite::probe(c, sql),
            ScratchDb::Postgres(p) => p.probe(sql).await,
        }
    }
}

/// SQLite's `download` and `decode`, in one pass: the object is decoded while it downloads.
/// `download` judges the object (its size and SHA-256, on the first copy that verifies),
/// `decode` what came out of it.
async fn download_and_decode(
    stores: &[&Store],
    m: &Manifest,
    opts: &Options,
    checks: &mut Checks,
    measured: &mut Measured,
) -> Option<backup::scratch::ScratchPath> {
    let decoded = checks
        .run("download", async {
            opts.identities.check_can_try(m).map_err(classify)?;
            let (decoded, n) = restore::fetch_decoded_any(
                stores,
                m,
                &opts.temp_dir,
                ".dbward-drill-",
                &opts.identities,
            )
            .await
            .map_err(classify)?;
            measured.copy = n;
            Ok((decoded, downloaded(stores, m, n)))
        })
        .await?;
    checks
        .run("decode", async {
            let t = decoded.map_err(classify)?;
            Ok((
                t,
                format!("{} bytes, decoded while downloading", m.raw_bytes),
            ))
        })
        .await
}

/// The `download` check's detail: the size, and which copy verified.
fn downloaded(stores: &[&Store], m: &Manifest, copy: usize) -> String {
    let from = if copy == 0 {
        String::new()
    } else {
        format!(
            " (from mirror {copy}, {}: the primary's copy did not verify)",
            stores[copy].describe(&m.data_key)
        )
    };
    format!(
        "{} bytes, SHA-256 matches the manifest{from}",
        m.stored_bytes
    )
}

/// The checks, in order, each stopping the drill when it fails.
async fn run_checks(
    stores: &[&Store],
    live: &DatabaseUrl,
    m: &Manifest,
    opts: &Options,
    checks: &mut Checks,
    measured: &mut Measured,
    cleanup: &mut postgres::Cleanup,
) {
    let started = Instant::now();
    // The SQLite scratch file, removed when the drill is done with it (a WAL database needs
    // its file in place to the end: its -wal and -shm are made beside it).
    let scratch_file;
    let restored = match live {
        DatabaseUrl::Sqlite(live_path) => {
            let Some(decoded) = download_and_decode(stores, m, opts, checks, measured).await else {
                return;
            };
            scratch_file = decoded;
            checks
                .run("restore", async {
                    let (c, detail) = sqlite::open(&scratch_file, live_path)?;
                    Ok((ScratchDb::Sqlite(c), detail))
                })
                .await
        }
        DatabaseUrl::Postgres(live_pg) => {
            let Some(compressed) = checks
                .run("download", async {
                    opts.identities.check_can_try(m).map_err(classify)?;
                    let (t, n) = restore::fetch_any(stores, m, &opts.temp_dir)
                        .await
                        .map_err(classify)?;
                    measured.copy = n;
                    Ok((t, downloaded(stores, m, n)))
                })
                .await
            else {
                return;
            };
            let major = m
                .pg_dump_version
                .as_deref()
                .map(backup::engine::postgres::major)
                .unwrap_or(0);
            let server = match &opts.scratch {
                Scratch::SameServer => Some((**live_pg).clone()),
                Scratch::Server(s) => Some((**s).clone()),
                Scratch::Ephemeral => {
                    checks
                        .run("cluster", async { postgres::ephemeral(major, cleanup) })
                        .await
                }
            };
            let Some(server) = server else { return };
            // The archive is decoded into pg_restore's stdin: `decode` is judged by the same
            // run as `restore`, and the time is the restore's.
            tokio::task::yield_now().await;
            let at = Instant::now();
            let result = postgres::restore(live_pg, &server, &compressed, m, opts, cleanup).await;
            let seconds = at.elapsed().as_secs_f64();
            let streamed = || {
                Ok((
                    (),
                    format!("{} bytes, streamed into pg_restore", m.raw_bytes),
                ))
            };
            match result {
                Err(postgres::RestoreFailure::Decode(f)) => {
                    checks.record::<()>("decode", (Err(f), seconds));
                    return;
                }
                Err(postgres::RestoreFailure::Restore(f)) => {
                    checks.record("decode", (streamed(), 0.0));
                    checks.record::<ScratchDb>("restore", (Err(f), seconds))
                }
                Ok((r, detail)) => {
                    checks.record("decode", (streamed(), 0.0));
                    checks.record(
                        "restore",
                        (Ok((ScratchDb::Postgres(Box::new(r)), detail)), seconds),
                    )
                }
            }
        }
    };
    let Some(db) = restored else { return };
    measured.rto = Some(started.elapsed().as_secs_f64());

    // Reading every table and amcheck do not depend on each other: they run at once (amcheck
    // in its own process), each timed on its own, and both must pass.
    let amcheck_ready = db.amcheck_available().await;
    let (integrity, amcheck) = tokio::join!(checks::timed(db.integrity()), async {
        match amcheck_ready {
            Some(Ok(())) => Some(Ok(checks::timed(db.amcheck()).await)),
            Some(Err(why)) => Some(Err(why)),
            None => None,
        }
    });
    if checks.record("integrity", integrity).is_none() {
        return;
    }
    let amcheck_passed = match amcheck {
        None => true,
        Some(Ok(timed)) => checks.record("amcheck", timed).is_some(),
        Some(Err(why)) => {
            checks.skipped("amcheck", why.0);
            true
        }
    };
    if !amcheck_passed {
        return;
    }
    if checks
        .run("migration-head", async {
            head_matches(db.head().await?, m, opts)
        })
        .await
        .is_none()
    {
        return;
    }
    if checks
        .run("row-counts", async {
            counts_match(db.row_counts().await?, m)
        })
        .await
        .is_none()
    {
        return;
    }
    if opts.probes.is_empty() {
        return;
    }
    checks
        .run("probes", checks::probes_true(&opts.probes, |p| db.probe(p)))
        .await;
}

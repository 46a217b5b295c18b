//! Restore drills: a backup that has never been restored is a hope. A drill fetches a
//! snapshot, restores it into a scratch database (never the live one), checks it the way
//! DESIGN.md lists, times it, and always cleans up. Each check has its own verdict and time; the
//! drill stops at the first failure but reports what ran.

pub mod ephemeral;
pub mod metrics;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use backup::restore;
use backup::{Manifest, Store};
use migrator::database::postgres::{applied_on, describe, Postgres};
use migrator::database::PgUrl;
use migrator::{DatabaseUrl, MigrationFile};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Passed,
    /// The snapshot failed this check.
    Failed,
    /// The check could not run for a reason that is not the snapshot's (a full disk, a write
    /// error): the drill failed, but it proved nothing against the snapshot.
    Error,
    Skipped,
}

/// Why a check did not pass.
pub enum CheckFailure {
    /// The snapshot's fault.
    Snapshot(String),
    /// This machine's (disk space, a write error).
    Environment(String),
}

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

/// A step's error: a full disk or a failed write is the environment's, anything else the
/// snapshot's.
fn classify(e: backup::Error) -> CheckFailure {
    match e {
        // A missing key is this machine's, not the snapshot's.
        backup::Error::NoSpace(_) | backup::Error::Io { .. } | backup::Error::NoKey(_) => {
            CheckFailure::Environment(backup::error::chain(&e))
        }
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

/// Runs the checks in order, stopping at the first failure.
struct Checks {
    list: Vec<Check>,
    failed: bool,
}

impl Checks {
    async fn run<T, E: Into<CheckFailure>>(
        &mut self,
        name: &'static str,
        f: impl Future<Output = Result<(T, String), E>>,
    ) -> Option<T> {
        if self.failed {
            return None;
        }
        // Checks are partly synchronous; yielding between them lets the runtime see a signal,
        // so a stop request ends the drill at the next check instead of being missed.
        tokio::task::yield_now().await;
        let started = Instant::now();
        let result = f.await;
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok((value, detail)) => {
                tracing::info!("drill check {name}: passed in {seconds:.2}s {detail}");
                self.list.push(Check {
                    name,
                    verdict: Verdict::Passed,
                    seconds,
                    detail,
                });
                Some(value)
            }
            Err(failure) => {
                let (verdict, detail) = match failure.into() {
                    CheckFailure::Snapshot(d) => (Verdict::Failed, d),
                    CheckFailure::Environment(d) => (Verdict::Error, d),
                };
                tracing::error!("drill check {name}: {verdict:?} in {seconds:.2}s: {detail}");
                self.list.push(Check {
                    name,
                    verdict,
                    seconds,
                    detail,
                });
                self.failed = true;
                None
            }
        }
    }

    fn skipped(&mut self, name: &'static str, detail: String) {
        tracing::warn!("drill check {name}: skipped: {detail}");
        self.list.push(Check {
            name,
            verdict: Verdict::Skipped,
            seconds: 0.0,
            detail,
        });
    }
}

/// The scratch database's name for a snapshot id: `dbward_drill_<id>_<4 hex>`, lowercase and
/// unique, so two drills of one snapshot never share (or drop) each other's database.
pub fn scratch_name(id: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!(
        "dbward_drill_{}_{:04x}",
        id.to_lowercase().replace('-', "_"),
        h.finish() as u16
    )
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
    let mut checks = Checks {
        list: Vec::new(),
        failed: false,
    };
    let mut measured = Measured::default();
    let mut scratch_pg: Option<(Postgres, String)> = None;

    let work = run_checks(
        stores,
        live,
        m,
        opts,
        &mut checks,
        &mut measured,
        &mut scratch_pg,
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
    if let Some((admin, name)) = scratch_pg {
        drop_scratch(&admin, &name).await;
    }

    if !checks.failed {
        let started = Instant::now();
        let mut problems = Vec::new();
        if let (Some(max), Some(r)) = (opts.max_rto, measured.rto) {
            if r > max.as_secs_f64() {
                problems.push(format!(
                    "RTO {r:.1}s exceeds drill.max_rto {}",
                    migrator::error::humanize(max)
                ));
            }
        }
        if let Some(max) = opts.max_snapshot_age {
            // An unknown age (NaN) fails the threshold too.
            if age.is_nan() || age > max.as_secs_f64() {
                problems.push(format!(
                    "the snapshot is {:.0}s old, more than drill.max_snapshot_age {}",
                    age,
                    migrator::error::humanize(max)
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
        copy: measured.copy,
        stored_bytes: m.stored_bytes,
        raw_bytes: m.raw_bytes,
        encrypted: m.encryption.is_some(),
        success: !checks.failed,
        checks: checks.list,
    }
}

async fn run_checks(
    stores: &[&Store],
    live: &DatabaseUrl,
    m: &Manifest,
    opts: &Options,
    checks: &mut Checks,
    measured: &mut Measured,
    scratch_pg: &mut Option<(Postgres, String)>,
) {
    let started = Instant::now();
    let Some(fetched) = checks
        .run("download", async {
            opts.identities.check_can_try(m).map_err(classify)?;
            let (t, n) = restore::fetch_any(stores, m, &opts.temp_dir)
                .await
                .map_err(classify)?;
            measured.copy = n;
            let copy = if n == 0 {
                String::new()
            } else {
                format!(
                    " (from mirror {n}, {}: the primary's copy did not verify)",
                    stores[n].describe(&m.data_key)
                )
            };
            Ok::<_, CheckFailure>((
                t,
                format!(
                    "{} bytes, SHA-256 matches the manifest{copy}",
                    m.stored_bytes
                ),
            ))
        })
        .await
    else {
        return;
    };
    let Some(decoded) = checks
        .run("decode", async {
            let t = restore::decompress(
                &fetched,
                &opts.temp_dir,
                ".dbward-drill-",
                m,
                &opts.identities,
                restore::Lifetime::Scratch,
            )
            .map_err(classify)?;
            Ok::<_, CheckFailure>((t, format!("{} bytes", m.raw_bytes)))
        })
        .await
    else {
        return;
    };
    drop(fetched);

    match live {
        DatabaseUrl::Sqlite(live_path) => {
            let Some(conn) = checks
                .run("restore", async {
                    if std::fs::canonicalize(&decoded).ok() == std::fs::canonicalize(live_path).ok()
                    {
                        return Err(String::from(
                            "the scratch file is the live database; refusing",
                        ));
                    }
                    let c = rusqlite::Connection::open(&decoded).map_err(|e| e.to_string())?;
                    migrator::failpoint::hit("drill-after-restore")?;
                    Ok((c, format!("scratch file {}", decoded.display())))
                })
                .await
            else {
                return;
            };
            measured.rto = Some(started.elapsed().as_secs_f64());
            let c = &conn;
            if checks
                .run("integrity", async {
                    let v: String = c
                        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                        .map_err(|e| e.to_string())?;
                    if v != "ok" {
                        return Err(format!("integrity_check: {v}"));
                    }
                    let fk: i64 = c
                        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                            r.get(0)
                        })
                        .map_err(|e| e.to_string())?;
                    if fk > 0 {
                        return Err(format!("foreign_key_check: {fk} violation(s)"));
                    }
                    Ok(((), "integrity_check ok, foreign_key_check clean".into()))
                })
                .await
                .is_none()
            {
                return;
            }
            let head = migrator::database::sqlite::applied_on(c)
                .map(|a| a.into_iter().max_by_key(|a| a.version));
            if checks
                .run("migration-head", async {
                    head_matches(head.map_err(|e| e.to_string())?, m, opts)
                })
                .await
                .is_none()
            {
                return;
            }
            let counts = backup::engine::sqlite::row_counts(c).map_err(|e| e.to_string());
            if checks
                .run("row-counts", async { counts_match(counts?, m) })
                .await
                .is_none()
            {
                return;
            }
            if opts.probes.is_empty() {
                return;
            }
            checks
                .run("probes", async {
                    for p in &opts.probes {
                        let ok: bool = c
                            .query_row(p, [], |r| r.get(0))
                            .map_err(|e| format!("`{p}`: {e}"))?;
                        if !ok {
                            return Err(format!("`{p}` returned false"));
                        }
                    }
                    Ok(((), format!("{} probe(s) true", opts.probes.len())))
                })
                .await;
        }
        DatabaseUrl::Postgres(live_pg) => {
            // An ephemeral cluster lives until this drill's checks and cleanup are done.
            let mut _cluster = None;
            let server = match &opts.scratch {
                Scratch::SameServer => (**live_pg).clone(),
                Scratch::Server(s) => (**s).clone(),
                Scratch::Ephemeral => {
                    let major = m
                        .pg_dump_version
                        .as_deref()
                        .map(backup::engine::postgres::major)
                        .unwrap_or(0);
                    let started = checks
                        .run("cluster", async {
                            let c = ephemeral::Ephemeral::start(major)?;
                            let detail = format!("ephemeral cluster at {}", c.url.display);
                            Ok::<_, String>((c, detail))
                        })
                        .await;
                    let Some(c) = started else { return };
                    let url = c.url.clone();
                    _cluster = Some(c);
                    url
                }
            };
            let name = scratch_name(&m.id);
            let Some(db) = checks
                .run("restore", async {
                    let same_server = matches!(opts.scratch, Scratch::SameServer);
                    if same_server && live_pg.config.get_dbname() == Some(name.as_str()) {
                        return Err(String::from(
                            "the scratch database is the live database; refusing",
                        ));
                    }
                    let admin = create_scratch(&server, &name).await?;
                    // An ephemeral cluster goes away whole; on a real server the scratch database is dropped.
                    if !matches!(opts.scratch, Scratch::Ephemeral) {
                        *scratch_pg = Some((admin, name.clone()));
                    }
                    let out =
                        backup::engine::postgres::libpq_command("pg_restore", &server, Some(&name))
                            .args([
                                "--exit-on-error",
                                "--no-owner",
                                "--no-privileges",
                                "--no-password",
                            ])
                            .arg(&decoded)
                            .stdin(std::process::Stdio::null())
                            .output()
                            .map_err(|e| format!("running pg_restore: {e}"))?;
                    if !out.status.success() {
                        return Err(format!(
                            "pg_restore failed ({}): {}",
                            out.status,
                            String::from_utf8_lossy(&out.stderr).trim()
                        ));
                    }
                    let mut url = server.clone();
                    url.config.dbname(&name);
                    let db = Postgres::connect(&url).await.map_err(|e| e.to_string())?;
                    migrator::failpoint::hit("drill-after-restore")?;
                    Ok((db, format!("scratch database {name}")))
                })
                .await
            else {
                return;
            };
            measured.rto = Some(started.elapsed().as_secs_f64());
            let c = db.client();
            let Some(counts) = checks
                .run("integrity", async {
                    let counts = pg_row_counts(c).await?;
                    Ok::<_, String>((
                        counts.clone(),
                        format!("all {} tables read to the end", counts.len()),
                    ))
                })
                .await
            else {
                return;
            };
            let amcheck = match backup::engine::postgres::find_tool("pg_amcheck") {
                None => {
                    Err("pg_amcheck is not installed (PostgreSQL 14+ client tools)".to_string())
                }
                Some(_) => c
                    .batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck")
                    .await
                    .map_err(|e| {
                        format!(
                            "the amcheck extension cannot be installed here: {}",
                            describe(&e)
                        )
                    }),
            };
            match amcheck {
                Ok(()) => {
                    let r = checks
                        .run("amcheck", async {
                            let out = backup::engine::postgres::libpq_command(
                                "pg_amcheck",
                                &server,
                                Some(&name),
                            )
                            .args(["--heapallindexed", "--no-password", "--jobs=2"])
                            .output()
                            .map_err(|e| format!("running pg_amcheck: {e}"))?;
                            if !out.status.success() {
                                let said = format!(
                                    "{}{}",
                                    String::from_utf8_lossy(&out.stdout),
                                    String::from_utf8_lossy(&out.stderr)
                                );
                                return Err(format!(
                                    "pg_amcheck found problems ({}): {}",
                                    out.status,
                                    said.trim()
                                ));
                            }
                            Ok(((), "pg_amcheck --heapallindexed clean".into()))
                        })
                        .await;
                    if r.is_none() {
                        return;
                    }
                }
                Err(why) => checks.skipped("amcheck", why),
            }
            let head = applied_on(c)
                .await
                .map(|a| a.into_iter().max_by_key(|a| a.version));
            if checks
                .run("migration-head", async {
                    head_matches(head.map_err(|e| e.to_string())?, m, opts)
                })
                .await
                .is_none()
            {
                return;
            }
            if checks
                .run("row-counts", async { counts_match(counts, m) })
                .await
                .is_none()
            {
                return;
            }
            if opts.probes.is_empty() {
                return;
            }
            checks
                .run("probes", async {
                    for p in &opts.probes {
                        let row = c
                            .query_one(p.as_str(), &[])
                            .await
                            .map_err(|e| format!("`{p}`: {}", describe(&e)))?;
                        let ok: bool = row
                            .try_get(0)
                            .map_err(|e| format!("`{p}` must return one boolean: {e}"))?;
                        if !ok {
                            return Err(format!("`{p}` returned false"));
                        }
                    }
                    Ok(((), format!("{} probe(s) true", opts.probes.len())))
                })
                .await;
        }
    }
}

fn head_matches(
    head: Option<migrator::Applied>,
    m: &Manifest,
    opts: &Options,
) -> Result<((), String), String> {
    let got = head.as_ref().map(|h| (h.version, h.checksum.to_string()));
    let want = m
        .migration_head
        .as_ref()
        .map(|h| (h.version, h.checksum.clone()));
    if got != want {
        return Err(format!("restored head {got:?}, the manifest says {want:?}"));
    }
    if let (Some(files), Some((v, sum))) = (&opts.migrations, &got) {
        match files.iter().find(|f| f.version == *v) {
            Some(f) if f.checksum.to_string() == *sum => {}
            Some(f) => {
                return Err(format!(
                    "head V{v} differs from {} in the migrations folder",
                    f.path.display()
                ))
            }
            None => return Err(format!("head V{v} is not in the migrations folder")),
        }
    }
    Ok((
        (),
        got.map(|(v, _)| format!("V{v}"))
            .unwrap_or_else(|| "no migration".into()),
    ))
}

fn counts_match(got: BTreeMap<String, u64>, m: &Manifest) -> Result<((), String), String> {
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
        Err(diffs.join("; "))
    }
}

async fn pg_row_counts(c: &tokio_postgres::Client) -> Result<BTreeMap<String, u64>, String> {
    let tables = c
        .query(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| describe(&e))?;
    let mut out = BTreeMap::new();
    for t in tables {
        let (s, n): (String, String) = (t.get(0), t.get(1));
        let q = format!(
            "SELECT count(*) FROM ONLY {}.{}",
            migrator::sql::ident(&s),
            migrator::sql::ident(&n)
        );
        let count: i64 = c
            .query_one(&q, &[])
            .await
            .map_err(|e| format!("reading {s}.{n}: {}", describe(&e)))?
            .get(0);
        out.insert(format!("{s}.{n}"), count as u64);
    }
    Ok(out)
}

async fn admin(server: &PgUrl) -> Result<Postgres, String> {
    let mut url = server.clone();
    url.config.dbname("postgres");
    Postgres::connect(&url).await.map_err(|e| e.to_string())
}

/// The advisory-lock namespace of drill scratch databases ("dbwd").
const DRILL_LOCK: i32 = 0x6462_7764;

/// The comment on a scratch database: with the drill's lock, the proof that it is dbward's.
fn scratch_marker(name: &str) -> String {
    format!("dbward: restore drill scratch database {name:?}")
}

/// Creates the scratch database `name`, marked as dbward's, and returns the maintenance
/// connection that holds the lock on its name for the drill's whole life. A leftover of a drill
/// killed outright is recognised by its marker (its exact name in its own comment) and by its
/// lock being free (no live drill holds it), and only then dropped.
async fn create_scratch(server: &PgUrl, name: &str) -> Result<Postgres, String> {
    let a = admin(server).await?;
    let c = a.client();
    c.execute(
        "SELECT pg_advisory_lock($1, hashtext($2))",
        &[&DRILL_LOCK, &name],
    )
    .await
    .map_err(|e| format!("locking the scratch name: {}", describe(&e)))?;
    let marked = c
        .query(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database",
            &[],
        )
        .await
        .map_err(|e| describe(&e))?;
    for row in marked {
        let (n, comment): (String, Option<String>) = (row.get(0), row.get(1));
        if n == name || comment.as_deref() != Some(scratch_marker(&n).as_str()) {
            continue;
        }
        let free: bool = c
            .query_one(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                &[&DRILL_LOCK, &n],
            )
            .await
            .map_err(|e| describe(&e))?
            .get(0);
        if !free {
            continue; // a drill running now
        }
        tracing::info!("dropping {n}, left by an interrupted drill");
        if let Err(e) = c
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{n}\""))
            .await
        {
            tracing::warn!("could not drop {n}: {}", describe(&e));
        }
        let _ = c
            .execute(
                "SELECT pg_advisory_unlock($1, hashtext($2))",
                &[&DRILL_LOCK, &n],
            )
            .await;
    }
    c.batch_execute(&format!(
        "CREATE DATABASE {} TEMPLATE template0",
        migrator::sql::ident(name)
    ))
    .await
    .map_err(|e| format!("creating scratch database {name}: {}", describe(&e)))?;
    if let Err(e) = c
        .batch_execute(&format!(
            "COMMENT ON DATABASE {} IS {}",
            migrator::sql::ident(name),
            migrator::sql::literal(&scratch_marker(name))
        ))
        .await
    {
        drop_scratch(&a, name).await;
        return Err(format!("marking scratch database {name}: {}", describe(&e)));
    }
    Ok(a)
}

/// Drops the scratch database this drill created (its exact name), on the connection that holds
/// its lock.
async fn drop_scratch(admin: &Postgres, name: &str) {
    if let Err(e) = admin
        .client()
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
    {
        tracing::error!("could not drop scratch database {name}: {}", describe(&e));
    }
}

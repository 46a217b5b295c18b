//! A PostgreSQL drill's scratch database: `dbward_drill_<id>_<tag>` on the live server, on a
//! server of the drill's own, or in an ephemeral cluster; created marked as dbward's, restored
//! with `pg_restore`, and dropped by its exact name.

use std::collections::BTreeMap;
use std::path::Path;

use dbconn::postgres::{applied_on, describe, Postgres};
use dbconn::sql::{ident, literal};
use dbconn::PgUrl;

use crate::checks::{classify, CheckFailure, Outcome, Unavailable};
use crate::ephemeral::Ephemeral;
use crate::{Options, Scratch};

/// What a drill must clean up, whatever happens: the scratch database (dropped on the
/// connection that holds its name's lock) and an ephemeral cluster (removed whole).
#[derive(Default)]
pub struct Cleanup {
    pub cluster: Option<Ephemeral>,
    scratch: Option<(Postgres, String)>,
}

impl Cleanup {
    pub async fn run(self) {
        if let Some((admin, name)) = self.scratch {
            drop_scratch(&admin, &name).await;
        }
        drop(self.cluster);
    }
}

/// A restored scratch database.
pub struct Restored {
    pub server: PgUrl,
    pub name: String,
    pub db: Postgres,
    /// The rows the integrity check counted while reading every table, for the row-count check.
    pub counts: std::sync::Mutex<Option<BTreeMap<String, u64>>>,
}

/// A fresh ephemeral cluster of the dump's major version or newer, kept in `cleanup` until the
/// drill is done; its URL.
pub fn ephemeral(pg_dump_major: u32, cleanup: &mut Cleanup) -> Outcome<PgUrl> {
    let c = Ephemeral::start(pg_dump_major)?;
    let detail = format!("ephemeral cluster at {}", c.url.display);
    let url = c.url.clone();
    cleanup.cluster = Some(c);
    Ok((url, detail))
}

/// Why a drill's restore failed: the snapshot's stream did not decode, or the restore itself.
pub enum RestoreFailure {
    Decode(CheckFailure),
    Restore(CheckFailure),
}

impl From<CheckFailure> for RestoreFailure {
    fn from(f: CheckFailure) -> Self {
        RestoreFailure::Restore(f)
    }
}

/// Creates the scratch database on `server` and restores the snapshot into it, its verified
/// archive decoded straight into pg_restore's stdin (nothing decoded touches the disk).
pub async fn restore(
    live: &PgUrl,
    server: &PgUrl,
    compressed: &Path,
    m: &backup::Manifest,
    opts: &Options,
    cleanup: &mut Cleanup,
) -> Result<(Restored, String), RestoreFailure> {
    let name = scratch_name(&m.id);
    if matches!(opts.scratch, Scratch::SameServer)
        && live.config.get_dbname() == Some(name.as_str())
    {
        return Err(
            CheckFailure::from("the scratch database is the live database; refusing").into(),
        );
    }
    // The machine's tools cannot read this snapshot: not the snapshot's fault.
    let version = backup::restore::postgres::check_versions(m)
        .map_err(|e| CheckFailure::Environment(backup::error::chain(&e)))?;
    let admin = create_scratch(server, &name).await?;
    // An ephemeral cluster goes away whole; on a real server the scratch database is dropped.
    if !matches!(opts.scratch, Scratch::Ephemeral) {
        cleanup.scratch = Some((admin, name.clone()));
    }
    let archive = std::fs::File::open(compressed).map_err(|e| {
        RestoreFailure::Restore(CheckFailure::Environment(format!(
            "opening {}: {e}",
            compressed.display()
        )))
    })?;
    backup::restore::postgres::pg_restore(
        server,
        &name,
        archive,
        m,
        &opts.identities,
        &version,
        &["--no-owner", "--no-privileges"],
    )
    .await
    .map_err(|e| match e {
        backup::Error::Damaged(_) => RestoreFailure::Decode(classify(e)),
        e => RestoreFailure::Restore(classify(e)),
    })?;
    let mut url = server.clone();
    url.config.dbname(&name);
    let db = Postgres::connect(&url)
        .await
        .map_err(|e| CheckFailure::Environment(backup::error::chain(&e)))?;
    dbconn::failpoint::hit("drill-after-restore").map_err(CheckFailure::from)?;
    let detail = format!("scratch database {name}, the archive decoded into pg_restore");
    Ok((
        Restored {
            server: server.clone(),
            name,
            db,
            counts: std::sync::Mutex::new(None),
        },
        detail,
    ))
}

impl Restored {
    /// Every table read to the end (which also counts its rows).
    pub async fn integrity(&self) -> Outcome<()> {
        let counts = read_all(self.db.client()).await?;
        let detail = format!("all {} tables read to the end", counts.len());
        *self.counts.lock().unwrap_or_else(|e| e.into_inner()) = Some(counts);
        Ok(((), detail))
    }

    /// `Err(why)` when amcheck cannot run here (no pg_amcheck, or the extension cannot be
    /// installed): the check is skipped, and says why.
    pub async fn amcheck_available(&self) -> Result<(), Unavailable> {
        if backup::engine::postgres::find_tool("pg_amcheck").is_none() {
            return Err(Unavailable(
                "pg_amcheck is not installed (PostgreSQL 14+ client tools)".into(),
            ));
        }
        self.db
            .client()
            .batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            .await
            .map_err(|e| {
                Unavailable(format!(
                    "the amcheck extension cannot be installed here: {}",
                    describe(&e)
                ))
            })
    }

    /// `pg_amcheck --heapallindexed`: every heap and B-tree index page verified. Awaited, not
    /// blocked on: the checks that run beside it (reading every table) go on meanwhile.
    pub async fn amcheck(&self) -> Outcome<()> {
        let mut cmd =
            backup::engine::postgres::libpq_command("pg_amcheck", &self.server, Some(&self.name));
        cmd.args(["--heapallindexed", "--no-password", "--jobs=2"]);
        let out = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| CheckFailure::Environment(format!("running pg_amcheck: {e}")))?;
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
            )
            .into());
        }
        Ok(((), "pg_amcheck --heapallindexed clean".into()))
    }

    pub async fn head(&self) -> Result<Option<dbconn::Applied>, CheckFailure> {
        Ok(dbconn::history::newest(&applied_on(self.db.client()).await?).cloned())
    }

    pub async fn row_counts(&self) -> Result<BTreeMap<String, u64>, CheckFailure> {
        let counted = self.counts.lock().unwrap_or_else(|e| e.into_inner()).take();
        match counted {
            Some(c) => Ok(c),
            None => read_all(self.db.client()).await,
        }
    }

    pub async fn probe(&self, sql: &str) -> Result<bool, CheckFailure> {
        let row = self
            .db
            .client()
            .query_one(sql, &[])
            .await
            .map_err(|e| format!("`{sql}`: {}", describe(&e)))?;
        row.try_get(0)
            .map_err(|e| format!("`{sql}` must return one boolean: {e}").into())
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

async fn read_all(c: &tokio_postgres::Client) -> Result<BTreeMap<String, u64>, CheckFailure> {
    dbconn::postgres::row_counts(c)
        .await
        .map_err(|e| CheckFailure::Snapshot(backup::error::chain(&e)))
}

/// An error of the scratch server: the machine's, not the snapshot's.
fn env(what: &str) -> impl FnOnce(tokio_postgres::Error) -> CheckFailure + '_ {
    move |e| CheckFailure::Environment(format!("{what}: {}", describe(&e)))
}

async fn admin(server: &PgUrl) -> Result<Postgres, CheckFailure> {
    let mut url = server.clone();
    url.config.dbname("postgres");
    Postgres::connect(&url)
        .await
        .map_err(|e| CheckFailure::Environment(backup::error::chain(&e)))
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
async fn create_scratch(server: &PgUrl, name: &str) -> Result<Postgres, CheckFailure> {
    let a = admin(server).await?;
    let c = a.client();
    c.execute(
        "SELECT pg_advisory_lock($1, hashtext($2))",
        &[&DRILL_LOCK, &name],
    )
    .await
    .map_err(env("locking the scratch name"))?;
    let marked = c
        .query(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database",
            &[],
        )
        .await
        .map_err(env("listing databases"))?;
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
            .map_err(env("locking a leftover's name"))?
            .get(0);
        if !free {
            continue; // a drill running now
        }
        tracing::info!("dropping {n}, left by an interrupted drill");
        if let Err(e) = c
            .batch_execute(&format!("DROP DATABASE IF EXISTS {}", ident(&n)))
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
        ident(name)
    ))
    .await
    .map_err(env(&format!("creating scratch database {name}")))?;
    if let Err(e) = c
        .batch_execute(&format!(
            "COMMENT ON DATABASE {} IS {}",
            ident(name),
            literal(&scratch_marker(name))
        ))
        .await
    {
        drop_scratch(&a, name).await;
        return Err(env(&format!("marking scratch database {name}"))(e));
    }
    Ok(a)
}

/// Drops the scratch database this drill created (its exact name), on the connection that holds
/// its lock.
async fn drop_scratch(admin: &Postgres, name: &str) {
    if let Err(e) = admin
        .client()
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            ident(name)
        ))
        .await
    {
        tracing::error!("could not drop scratch database {name}: {}", describe(&e));
    }
}

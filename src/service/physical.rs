//! Point-in-time restore into a new data directory: which base a target needs, the WAL chain
//! checked before anything is written, the base extracted and its WAL fetched, then a private
//! server that recovers to the target and promotes ([`backup::restore::server`]).
//!
//! The live cluster is never contacted: the bases are the store folder owner's (its identity),
//! so a restore works when the production server is gone.

use std::path::{Path, PathBuf};
use std::time::Instant;

use backup::manifest::Format;
use backup::restore::physical::{self, Target};
use backup::restore::server::{self, OsUser, Server};
use migrator::DatabaseUrl;
use time::OffsetDateTime;

use crate::report::{Exit, Failure};
use crate::settings::Settings;

/// What a point-in-time restore is asked for.
#[derive(Debug, Clone)]
pub enum Which {
    /// A base by id: recovered to its end.
    Base(String),
    /// The newest base, recovered to the end of the archived WAL.
    Latest,
    /// A time (RFC 3339).
    Time(OffsetDateTime),
    /// An LSN.
    Lsn(u64),
}

/// A restored copy, running.
#[derive(Debug, serde::Serialize)]
pub struct Restored {
    pub base: String,
    pub target: String,
    pub data_dir: PathBuf,
    /// The copy's socket directory and port: `psql -h <data_dir> -p 5432`.
    pub port: u16,
    pub wal_segments: usize,
    pub wal_gap_before: Option<String>,
    /// Where replay ended, the commit time of the last transaction it replayed, and the
    /// migration head the copy holds.
    pub recovered: server::Recovered,
    pub seconds: f64,
    /// The user the server runs as (when dbward is root).
    pub server_user: Option<String>,
    pub stop_command: String,
}

/// This database's bases in the primary store, newest first (the folder owner's identity: the
/// live server is not asked).
pub async fn bases(store: &backup::Store, db: &str) -> Result<Vec<backup::Manifest>, Failure> {
    let owner = backup::owner::read(store, db).await?;
    let all = backup::catalog::list(store, db).await?;
    Ok(backup::owner::mine(
        store,
        db,
        all,
        &backup::owner::Live::Absent,
        Format::Pgbase,
        owner.as_ref(),
    )?)
}

/// The base and the recovery target `which` means.
async fn pick(
    store: &backup::Store,
    db: &str,
    which: &Which,
) -> Result<(backup::Manifest, Target), Failure> {
    let none = |what: String| Failure::new(Exit::Failed, what);
    let bases = bases(store, db).await?;
    let stop_of = |m: &backup::Manifest| {
        m.physical
            .as_ref()
            .and_then(|p| backup::engine::basebackup::parse_lsn(&p.stop_lsn))
    };
    match which {
        Which::Base(id) => {
            let m = bases.into_iter().find(|m| &m.id == id).ok_or_else(|| {
                none(format!(
                    "{id} is not a base backup of {db} in {} (`dbward snapshots` lists them)",
                    store.describe(db)
                ))
            })?;
            Ok((m, Target::Immediate))
        }
        Which::Latest => bases
            .into_iter()
            .next()
            .map(|m| (m, Target::End))
            .ok_or_else(|| {
                none(format!(
                    "there is no base backup of {db} in {} (take one: `dbward backup --physical`)",
                    store.describe(db)
                ))
            }),
        Which::Time(t) => {
            // A base ends before its snapshot ends (manifest time plus duration).
            let ended = |m: &backup::Manifest| {
                m.created()
                    .map(|c| c + std::time::Duration::from_millis(m.duration_ms))
            };
            let m = bases
                .into_iter()
                .find(|m| ended(m).is_some_and(|e| e <= *t))
                .ok_or_else(|| {
                    none(format!(
                        "no base backup of {db} ended before {t}: the archive cannot go back that far"
                    ))
                })?;
            // PostgreSQL's own form: it refuses RFC 3339's `T` and `Z` here.
            let stamp = t
                .to_offset(time::UtcOffset::UTC)
                .format(time::macros::format_description!(
                    "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]+00"
                ))
                .expect("formats");
            Ok((m, Target::Time(stamp)))
        }
        Which::Lsn(l) => {
            let m = bases
                .into_iter()
                .find(|m| stop_of(m).is_some_and(|s| s <= *l))
                .ok_or_else(|| {
                    none(format!(
                        "no base backup of {db} is consistent before LSN {}",
                        backup::engine::basebackup::lsn_text(*l)
                    ))
                })?;
            Ok((m, Target::Lsn(*l)))
        }
    }
}

/// A directory this run created, removed again unless kept.
struct NewDir(Option<PathBuf>);

impl NewDir {
    fn create(path: &Path) -> Result<NewDir, Failure> {
        use std::os::unix::fs::DirBuilderExt;
        let target = |problem: String| {
            Failure::from(backup::Error::Target {
                target: path.display().to_string(),
                problem,
            })
        };
        if !path.is_absolute() {
            return Err(target("give an absolute path".into()));
        }
        match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => Ok(NewDir(Some(path.to_path_buf()))),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(target(
                "it exists; a restore makes a new data directory and never writes into one that is there".into(),
            )),
            Err(e) => Err(target(format!("cannot create it: {e}"))),
        }
    }

    fn keep(mut self) -> PathBuf {
        self.0.take().expect("kept once")
    }
}

impl Drop for NewDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

/// A started server, stopped (immediately) when dropped before it was kept.
struct Started(Option<Server>);

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            let _ = s.stop();
        }
    }
}

/// Restores `which` into the new directory `to` and leaves its server running. A failure
/// leaves no directory and no server behind.
pub async fn restore_to(
    settings: &Settings,
    url: &DatabaseUrl,
    which: &Which,
    to: &Path,
) -> Result<Restored, Failure> {
    let existed = to.exists();
    restore_to_inner(settings, url, which, to)
        .await
        .map_err(|mut f| {
            if !existed {
                f.message.push_str(&format!(
                    "\nNothing was changed: {} was not kept, and no server runs on it.",
                    to.display()
                ));
            }
            f
        })
}

async fn restore_to_inner(
    settings: &Settings,
    url: &DatabaseUrl,
    which: &Which,
    to: &Path,
) -> Result<Restored, Failure> {
    let started = Instant::now();
    let DatabaseUrl::Postgres(pg) = url else {
        return Err(Failure::new(
            Exit::Usage,
            "--physical restores a PostgreSQL cluster's base backup; the database is SQLite",
        ));
    };
    let stores = settings.stores().await?;
    let primary = &stores[0];
    let db = url.name();
    backup::check_folder_name(&db)?;
    let (base, target) = pick(primary, &db, which).await?;
    let p = physical::physical_of(&base)?.clone();
    // Everything is checked before anything is written.
    let plan = physical::plan_wal(primary, &db, &base, &target).await?;
    if let (Some(gap), Target::End | Target::Time(_)) = (&plan.gap_before, &target) {
        tracing::warn!(
            "the archive has a gap at {gap}: recovery can replay only up to {} (see `dbward pitr verify`)",
            plan.last
        );
    }
    let major = backup::engine::postgres::major(&base.server_version);
    let bindir = server::bindir(major)?;
    let user = OsUser::for_server()?;
    let identities = settings.identities()?;
    tracing::info!(
        "restoring base {} and {} WAL segments ({}..{}) into {}, to {}",
        base.id,
        plan.segments.len(),
        plan.segments.first().map(String::as_str).unwrap_or(""),
        plan.last,
        to.display(),
        target.describe()
    );

    let dir = NewDir::create(to)?;
    let wal_bytes = plan.segments.len() as u64 * p.segment_bytes;
    backup::scratch::ensure_space(
        to,
        base.raw_bytes + wal_bytes,
        &format!("base {} and its WAL", base.id),
    )?;
    let copies = crate::service::select::in_order(&stores, primary);
    let (extracted, _) = physical::extract_any(&copies, &base, to, &identities).await?;
    extracted?;
    physical::fetch_wal(primary, &db, &plan, &to.join("pg_wal"), &identities).await?;
    let server = Started(Some(
        Server::start(to, bindir, user.clone(), &target, plan.timeline).await?,
    ));
    let s = server.0.as_ref().expect("just started");
    let user_name = pg.config.get_user().unwrap_or("postgres").to_string();
    let client = s.wait_promoted(&user_name, pg.dbname()).await?;
    let recovered = server::recovered(&client).await?;
    let mut server = server;
    let s = server.0.take().expect("running");
    let data_dir = dir.keep();
    let as_user = s
        .user
        .as_ref()
        .map(|u| format!("runuser -u {} -- ", u.name))
        .unwrap_or_default();
    Ok(Restored {
        base: base.id.clone(),
        target: target.describe(),
        stop_command: format!(
            "{as_user}{} -D {} stop",
            s.bindir.join("pg_ctl").display(),
            data_dir.display()
        ),
        data_dir,
        port: server::PORT,
        wal_segments: plan.segments.len(),
        wal_gap_before: plan.gap_before.clone(),
        recovered,
        seconds: started.elapsed().as_secs_f64(),
        server_user: user.map(|u| u.name),
    })
}

//! Point-in-time restore into a new data directory: which base a target needs, the WAL chain
//! checked before anything is written, the base extracted and its WAL fetched, then a private
//! server that recovers to the target and promotes ([`crate::pitr::server`]).
//!
//! The live cluster is never contacted: the bases are the store folder owner's (its identity),
//! so a restore works when the production server is gone.

use std::path::{Path, PathBuf};
use std::time::Instant;

use dbconn::fs::rename_new;
use dbconn::DatabaseUrl;
use time::OffsetDateTime;

use crate::crypt::Identities;
use crate::error::{Error, ErrorKind};
use crate::manifest::{Format, Manifest};
use crate::pitr::physical::{self, Target};
use crate::pitr::server::{self, OsUser, Server};
use crate::store::set::StoreSet;
use crate::store::Store;

/// Where one database's bases and WAL are: its stores (the primary first, then each mirror),
/// its folder in them, and the identities that open encrypted objects.
pub struct Archive {
    pub stores: StoreSet,
    pub db: String,
    pub identities: Identities,
}

/// What a point-in-time restore is asked for.
#[derive(Debug, Clone)]
pub enum Which {
    /// A base by id (recovered to its end), or a restore point by id (recovered to it, from
    /// the newest base before it).
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
    /// A later timeline the archive holds, which the restore did not follow.
    pub wal_later_timeline: Option<u32>,
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
pub async fn bases(store: &Store, db: &str) -> Result<Vec<Manifest>, Error> {
    of_format(store, db, Format::Pgbase).await
}

/// This database's snapshots of `format` in `store`, newest first, by the folder owner's
/// identity (the live server is not asked).
async fn of_format(store: &Store, db: &str, format: Format) -> Result<Vec<Manifest>, Error> {
    let owner = crate::owner::read(store, db).await?;
    let all = crate::catalog::list(store, db).await?;
    crate::owner::mine(
        store,
        db,
        all,
        &crate::owner::Live::Absent,
        format,
        owner.as_ref(),
    )
}

/// The newest restore point (the last deploy's) as `pitr verify` checks it: restorable when
/// its base exists and every segment from the base to the point is in the archive and, fetched,
/// decompresses to the bytes its record names.
#[derive(Debug, serde::Serialize)]
pub struct PointCheck {
    pub point: String,
    pub base: Option<String>,
    pub segments_checked: usize,
    /// Why it cannot be restored; `None` when it can.
    pub problem: Option<String>,
}

/// [`PointCheck`] of the newest restore point of the archive's database (`None` without
/// one); the segments are fetched into `temp_dir`, one at a time.
pub async fn check_newest_point(
    archive: Archive,
    temp_dir: &Path,
) -> Result<Option<PointCheck>, Error> {
    let stores = &archive.stores;
    let db = archive.db.clone();
    let points = of_format(stores.primary(), &db, Format::Pgpoint).await?;
    let Some(point) = points.first() else {
        return Ok(None);
    };
    let mut check = PointCheck {
        point: point.id.clone(),
        base: None,
        segments_checked: 0,
        problem: None,
    };
    // What is wrong with the archive is the check's finding; a store that cannot be read
    // now (a transport error, a full disk here) fails the check itself (exit 1).
    let identities = archive.identities.clone();
    let chosen = match choose(archive, &Which::Base(point.id.clone())).await {
        Ok(c) => c,
        Err(e) if e.kind() == ErrorKind::Failed => return Err(e),
        Err(e) => {
            check.problem = Some(crate::error::chain(&e));
            return Ok(Some(check));
        }
    };
    let stores = &chosen.archive.stores;
    let finding = |e: Error| match e.kind() {
        ErrorKind::Failed if !matches!(e, Error::Missing(_)) => Err(e),
        _ => Ok(crate::error::chain(&e)),
    };
    check.base = Some(chosen.base.id.clone());
    let plan =
        match physical::plan_wal(stores.primary(), &db, &chosen.base, &chosen.target, None).await {
            Ok(p) => p,
            Err(e) => {
                check.problem = Some(finding(e)?);
                return Ok(Some(check));
            }
        };
    // Each one fetched, decompressed and checked against its record, then removed: a segment
    // damaged in the store is found here, not during the incident.
    let dir = temp_dir;
    crate::scratch::create_private_dir(dir).map_err(Error::io(dir.display().to_string()))?;
    for name in plan.segments.iter().chain(&plan.histories) {
        // This run's own temp file (removed when dropped, also by a stop request).
        let dest = crate::scratch::temp_in(dir, "verify-")?;
        match crate::pitr::wal::fetch(stores.primary(), &db, name, &dest, &identities).await {
            Ok(crate::pitr::wal::Fetched::Restored { .. }) => check.segments_checked += 1,
            Ok(crate::pitr::wal::Fetched::Absent { .. }) => {
                check.problem = Some(format!("WAL segment {name} is not in the archive"));
                break;
            }
            Err(e) => {
                check.problem = Some(finding(e)?);
                break;
            }
        }
    }
    Ok(Some(check))
}

/// What followed the newest base in the archive.
pub struct SinceBase {
    /// The WAL stored past the newest base's last segment (each place in the WAL once, on
    /// whichever timelines it is stored), at the segment size: what a restore replays.
    pub bytes: u64,
    /// A timeline after the newest base's holds segments: a promotion or a rewind happened
    /// since, and a restore from that base would not follow it.
    pub later_timeline: Option<u32>,
}

/// The archive after the newest of `bases` (newest first); `None` without a base.
pub async fn wal_since_base(
    store: &Store,
    db: &str,
    bases: &[Manifest],
) -> Result<Option<SinceBase>, Error> {
    let Some(p) = bases.first().and_then(|b| b.physical.as_ref()) else {
        return Ok(None);
    };
    let place = |name: &str| crate::pitr::base::segment_number(name, p.segment_bytes);
    let Some(last) = place(&p.wal_last) else {
        return Ok(None);
    };
    let stored = crate::pitr::wal::stored_from(store, db, &p.wal_last).await?;
    let segments: Vec<&String> = stored.iter().filter(|n| n.len() == 24).collect();
    let places: std::collections::BTreeSet<u64> = segments
        .iter()
        .filter_map(|n| place(n))
        .filter(|n| *n > last)
        .collect();
    let later_timeline = segments
        .iter()
        .filter_map(|n| u32::from_str_radix(&n[..8], 16).ok())
        .filter(|t| *t > p.timeline)
        .max();
    Ok(Some(SinceBase {
        bytes: places.len() as u64 * p.segment_bytes,
        later_timeline,
    }))
}

/// The restore point `id` of this database (the folder owner's), if there is one.
pub async fn point(store: &Store, db: &str, id: &str) -> Result<Option<Manifest>, Error> {
    let key = crate::manifest_key(db, id);
    let m = match crate::catalog::read_manifest(store, db, &key).await {
        Ok(Ok(m)) if m.format == Format::Pgpoint => m,
        Ok(Ok(_)) | Err(Error::Missing(_)) => return Ok(None),
        Ok(Err(d)) => {
            return Err(Error::Refused(format!(
                "snapshot {id} is damaged: {} {}; nothing was restored",
                store.describe(&d.key),
                d.problem
            )))
        }
        Err(e) => return Err(e),
    };
    let owner = crate::owner::read(store, db).await?;
    Ok(crate::owner::mine(
        store,
        db,
        vec![m],
        &crate::owner::Live::Absent,
        Format::Pgpoint,
        owner.as_ref(),
    )?
    .pop())
}

/// What `which` means: a base, where recovery stops, the restore point read on the way, and
/// the WAL plan when choosing the base already checked it.
struct Picked {
    base: Manifest,
    target: Target,
    point: Option<Manifest>,
    wal: Option<physical::WalPlan>,
}

impl Picked {
    fn of(base: Manifest, target: Target) -> Picked {
        Picked {
            base,
            target,
            point: None,
            wal: None,
        }
    }
}

/// The base and the recovery target `which` means.
async fn pick(
    store: &Store,
    db: &str,
    which: &Which,
    identities: &Identities,
) -> Result<Picked, Error> {
    let none = Error::NotFound;
    let bases = bases(store, db).await?;
    let stop_of = |m: &Manifest| {
        m.physical
            .as_ref()
            .and_then(|p| crate::pitr::base::parse_lsn(&p.stop_lsn))
    };
    match which {
        Which::Base(id) => {
            if let Some(m) = bases.iter().find(|m| &m.id == id) {
                return Ok(Picked::of(m.clone(), Target::Immediate));
            }
            let point = point(store, db, id).await?.ok_or_else(|| {
                none(format!(
                    "{id} is not a base backup or restore point of {db} in {} (`dbward snapshots` lists them)",
                    store.describe(db)
                ))
            })?;
            let p = point
                .point
                .as_ref()
                .expect("a point's manifest has its facts");
            let lsn = crate::pitr::base::parse_lsn(&p.lsn).ok_or_else(|| {
                Error::Damaged(format!("restore point {id} has no LSN: `{}`", p.lsn))
            })?;
            let base = bases
                .into_iter()
                .find(|b| crate::pitr::point::restorable(&point, &[b]))
                .ok_or_else(|| {
                    Error::Refused(format!(
                        "no base backup of {db} on timeline {} ended before restore point {id} ({}): it cannot be restored any more",
                        p.timeline, p.lsn
                    ))
                })?;
            let target = Target::Point {
                name: p.name.clone(),
                lsn,
            };
            Ok(Picked {
                base,
                target,
                point: Some(point),
                wal: None,
            })
        }
        Which::Latest => {
            let Some(newest) = bases.first().cloned() else {
                return Err(none(format!(
                    "there is no base backup of {db} in {} (take one: `dbward backup --physical`)",
                    store.describe(db)
                )));
            };
            // The newest base the archive's newest timeline descends from: after a rewind,
            // a base taken on the abandoned branch would replay that branch.
            let newest_tl = crate::pitr::wal::stored_from(store, db, "00000002.history")
                .await?
                .iter()
                .filter_map(|n| u32::from_str_radix(n.get(..8)?, 16).ok())
                .max();
            for b in &bases {
                let on =
                    crate::pitr::physical::plan_wal(store, db, b, &Target::End, Some(identities))
                        .await;
                let reaches = match on {
                    Ok(plan) => {
                        let tl = plan.recovery_timeline.unwrap_or(plan.timeline);
                        newest_tl.is_none_or(|n| tl >= n).then_some(plan)
                    }
                    Err(_) => None,
                };
                if let Some(plan) = reaches {
                    if b.id != newest.id {
                        tracing::warn!(
                            "restoring base {} rather than the newer {}: the archive's newest timeline descends from it, and the newer base is on a branch abandoned since (a rewind or a promotion)",
                            b.id,
                            newest.id
                        );
                    }
                    return Ok(Picked {
                        wal: Some(plan),
                        ..Picked::of(b.clone(), Target::End)
                    });
                }
            }
            Ok(Picked::of(newest, Target::End))
        }
        Which::Time(t) => {
            // A base ends before its snapshot ends (manifest time plus duration).
            let ended = |m: &Manifest| {
                m.created()
                    .map(|c| c + std::time::Duration::from_millis(m.duration_ms))
            };
            let m = bases
                .into_iter()
                .find(|m| ended(m).is_some_and(|e| e <= *t))
                .ok_or_else(|| {
                    // Refused (exit 3), nothing written: not a failure of the restore.
                    Error::Refused(format!(
                        "no base backup of {db} ended before {t}: the archive cannot go back that far; nothing was written"
                    ))
                })?;
            // PostgreSQL's own form: it refuses RFC 3339's `T` and `Z` here.
            let stamp = t
                .to_offset(time::UtcOffset::UTC)
                .format(time::macros::format_description!(
                    "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]+00"
                ))
                .expect("formats");
            Ok(Picked::of(m, Target::Time(stamp)))
        }
        Which::Lsn(l) => {
            let m = bases
                .into_iter()
                .find(|m| stop_of(m).is_some_and(|s| s <= *l))
                .ok_or_else(|| {
                    none(format!(
                        "no base backup of {db} is consistent before LSN {}",
                        crate::pitr::base::lsn_text(*l)
                    ))
                })?;
            Ok(Picked::of(m, Target::Lsn(*l)))
        }
    }
}

/// A directory this run created, removed again unless kept. It is filled under a name of its
/// own beside the target (`.<name>.dbward-partial-<pid>`) and renamed to the target only once
/// complete: a restore killed outright leaves no directory at the target that looks like a
/// data directory.
pub struct NewDir {
    path: Option<PathBuf>,
    /// Its own name beside the target, where it is filled.
    partial: PathBuf,
    target: PathBuf,
}

impl NewDir {
    fn create(path: &Path) -> Result<NewDir, Error> {
        let target = |problem: String| Error::Target {
            target: path.display().to_string(),
            problem,
        };
        if !path.is_absolute() {
            return Err(target("give an absolute path".into()));
        }
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(target(
                "it exists; a restore makes a new data directory and never writes into one that is there".into(),
            ));
        }
        server::check_socket_path(path)?;
        NewDir::beside(path)
    }

    /// A directory to fill beside `path`, which may exist (a rewind moves it aside before this
    /// one takes its name).
    pub fn beside(path: &Path) -> Result<NewDir, Error> {
        use std::os::unix::fs::DirBuilderExt;
        let target = |problem: String| Error::Target {
            target: path.display().to_string(),
            problem,
        };
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(target("give an absolute path to a new directory".into()));
        };
        let partial = parent.join(format!(
            ".{}.dbward-partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&partial) {
            Ok(()) => Ok(NewDir {
                path: Some(partial.clone()),
                partial,
                target: path.to_path_buf(),
            }),
            Err(e) => Err(target(format!("cannot create {}: {e}", partial.display()))),
        }
    }

    /// Where it is now.
    pub fn path(&self) -> &Path {
        self.path.as_deref().expect("not kept yet")
    }

    /// Renames the filled directory to the target, which must still not exist.
    pub fn publish(&mut self) -> Result<(), Error> {
        rename_new(self.path(), &self.target).map_err(|e| Error::Target {
            target: self.target.display().to_string(),
            problem: format!("renaming the restored directory there: {e}"),
        })?;
        self.path = Some(self.target.clone());
        Ok(())
    }

    /// Renames it back from the target to its own name (a rewind that failed after the swap).
    pub fn unpublish(&mut self) -> std::io::Result<()> {
        rename_new(&self.target, &self.partial)?;
        self.path = Some(self.partial.clone());
        Ok(())
    }

    pub fn keep(mut self) -> PathBuf {
        self.path.take().expect("kept once")
    }
}

impl Drop for NewDir {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

/// A started server, stopped when dropped before it was kept.
struct Started(Option<Server>);

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            let _ = s.stop();
        }
    }
}

/// What a point-in-time restore will do, checked before anything is written.
pub struct Planned {
    pub base: Manifest,
    pub target: Target,
    pub plan: physical::WalPlan,
    archive: Archive,
    pub bindir: PathBuf,
    user: Option<OsUser>,
}

/// The base a restore or drill chose, and where recovery stops.
pub struct Chosen {
    pub base: Manifest,
    pub target: Target,
    /// The restore point's manifest, when the target is one.
    pub point: Option<Manifest>,
    wal: Option<physical::WalPlan>,
    archive: Archive,
}

/// Picks the base and the target `which` means.
pub async fn choose(archive: Archive, which: &Which) -> Result<Chosen, Error> {
    crate::check_folder_name(&archive.db)?;
    let picked = pick(
        archive.stores.primary(),
        &archive.db,
        which,
        &archive.identities,
    )
    .await?;
    physical::physical_of(&picked.base)?;
    Ok(Chosen {
        base: picked.base,
        target: picked.target,
        point: picked.point,
        wal: picked.wal,
        archive,
    })
}

/// Checks the WAL chain from the chosen base to its target, and what the restore needs on
/// this machine: nothing is written.
pub async fn plan(chosen: Chosen) -> Result<Planned, Error> {
    let Chosen {
        base,
        target,
        wal,
        archive,
        ..
    } = chosen;
    let plan = match wal {
        Some(plan) => plan, // checked while choosing the base
        None => {
            let Archive {
                stores,
                db,
                identities,
            } = &archive;
            physical::plan_wal(stores.primary(), db, &base, &target, Some(identities)).await?
        }
    };
    if let Some(t) = plan.recovery_timeline {
        tracing::info!(
            "the archive holds timeline {t}, which left the base's timeline {} after the base: recovery follows it",
            plan.timeline
        );
    }
    if let Some(t) = plan.later_timeline {
        tracing::warn!(
            "the archive holds WAL of timeline {t}, which does not descend from this base's WAL: the restore does not follow it (take a new base after a promotion)"
        );
    }
    if let (Some(gap), Target::End | Target::Time(_)) = (&plan.gap_before, &target) {
        tracing::warn!(
            "the archive has a gap at {gap}: recovery can replay only up to {} (see `dbward pitr verify`)",
            plan.last
        );
    }
    let major = crate::engine::postgres::major(&base.server_version);
    if major < 14 {
        return Err(Error::Refused(format!(
            "base {} is of PostgreSQL {major}: a point-in-time restore needs 14 or newer (13 promotes short of a target it never reached)",
            base.id
        )));
    }
    Ok(Planned {
        bindir: server::bindir(major)?,
        user: OsUser::for_server()?,
        archive,
        base,
        target,
        plan,
    })
}

/// A restored copy whose server runs; stopped and removed when dropped, unless kept.
pub struct Running {
    pub restored: Restored,
    /// The copy's URL: the live one's user and database, over the copy's socket.
    pub url: dbconn::PgUrl,
    server: Started,
    dir: NewDir,
}

impl Running {
    /// Leaves the server running and the directory in place.
    pub fn keep(self) -> Restored {
        let Running {
            restored,
            mut server,
            dir,
            ..
        } = self;
        server.0.take();
        dir.keep();
        restored
    }
}

/// Extracts the planned base into `dir` (this run's, empty) and fetches its WAL into its
/// `pg_wal`, after checking the disk can hold both.
pub async fn fill(planned: &Planned, dir: &Path) -> Result<(), Error> {
    let started = Instant::now();
    let Planned {
        base,
        plan,
        archive: Archive {
            stores,
            db,
            identities,
        },
        ..
    } = planned;
    let p = physical::physical_of(base)?;
    let wal_bytes = plan.segments.len() as u64 * p.segment_bytes;
    crate::scratch::ensure_space(
        dir,
        base.raw_bytes + wal_bytes,
        &format!("base {} and its WAL", base.id),
    )?;
    let copies: Vec<&Store> = stores.all().iter().collect();
    let (extracted, _) = physical::extract_any(&copies, base, dir, identities).await?;
    extracted?;
    remove_socket_locks(dir)?;
    let t_extract = started.elapsed().as_secs_f64();
    tracing::info!("base {} extracted in {t_extract:.2}s", base.id);
    physical::fetch_wal(stores.primary(), db, plan, &dir.join("pg_wal"), identities).await?;
    tracing::info!(
        "{} WAL segments fetched in {:.2}s",
        plan.segments.len(),
        started.elapsed().as_secs_f64() - t_extract
    );
    Ok(())
}

/// A cluster whose socket lives in its data directory leaves the socket's lock file
/// (`.s.PGSQL.<port>.lock`, a regular file) in its base: a server started on the restored copy
/// would take it for another postmaster's. Removed from `dir`, which this run just extracted.
fn remove_socket_locks(dir: &Path) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::io(format!("reading {}", dir.display()))(e);
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        let name = name.to_string_lossy();
        let port = name
            .strip_prefix(".s.PGSQL.")
            .and_then(|r| r.strip_suffix(".lock"));
        if port.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
            std::fs::remove_file(dir.join(&*name)).map_err(io)?;
        }
    }
    Ok(())
}

/// Extracts the planned base into the new directory `to`, fetches its WAL, starts the server
/// and waits until it promoted.
pub async fn materialize(
    planned: &Planned,
    live: &dbconn::PgUrl,
    to: &Path,
) -> Result<Running, Error> {
    let started = Instant::now();
    let Planned {
        base, target, plan, ..
    } = planned;
    tracing::info!(
        "restoring base {} and {} WAL segments ({}..{}) into {}, to {}",
        base.id,
        plan.segments.len(),
        plan.segments.first().map(String::as_str).unwrap_or(""),
        plan.last,
        to.display(),
        target.describe()
    );
    let mut dir = NewDir::create(to)?;
    fill(planned, dir.path()).await?;
    let t_wal = started.elapsed().as_secs_f64();
    dir.publish()?;
    // Held before the server starts: a restore stopped from here on stops the server before
    // its directory is removed.
    let server = Started(Some(Server::prepare(
        to,
        planned.bindir.clone(),
        planned.user.clone(),
        target,
        planned.plan.recovery_timeline,
    )?));
    server.0.as_ref().expect("prepared").launch().await?;
    let t_start = started.elapsed().as_secs_f64();
    tracing::info!(
        "the copy's server takes connections after {:.2}s",
        t_start - t_wal
    );
    let s = server.0.as_ref().expect("launched");
    let user = live.config.get_user().unwrap_or("postgres").to_string();
    let client = s.wait_promoted(&user, live.dbname()).await?;
    tracing::info!(
        "recovered and promoted after {:.2}s more",
        started.elapsed().as_secs_f64() - t_start
    );
    let recovered = server::recovered(&client).await?;
    drop(client);
    reached_the_end(planned, &recovered)?;
    let as_user = s
        .user
        .as_ref()
        .map(|u| format!("runuser -u {} -- ", u.name))
        .unwrap_or_default();
    let url = copy_url(&user, live.dbname(), to)?;
    Ok(Running {
        restored: Restored {
            base: base.id.clone(),
            target: target.describe(),
            stop_command: format!(
                "{as_user}{} -D {} stop",
                s.bindir.join("pg_ctl").display(),
                to.display()
            ),
            data_dir: to.to_path_buf(),
            port: server::PORT,
            wal_segments: plan.segments.len(),
            wal_gap_before: plan.gap_before.clone(),
            wal_later_timeline: plan.later_timeline,
            recovered,
            seconds: started.elapsed().as_secs_f64(),
            server_user: planned.user.as_ref().map(|u| u.name.clone()),
        },
        url,
        server,
        dir,
    })
}

/// A recovery to the end of the archive must end in its newest segment: PostgreSQL ends a
/// recovery without a target wherever the WAL stops making sense (a segment of another cluster
/// under a name the archive's checks let pass, contents damaged before they were pushed) and
/// promotes there, as if nothing came after. Short of the newest segment is a failure, naming
/// both: the restore (or the drill) does not report success on part of the archive. (With a
/// target, PostgreSQL itself refuses to promote short of it.)
fn reached_the_end(planned: &Planned, recovered: &server::Recovered) -> Result<(), Error> {
    if !matches!(planned.target, Target::End) {
        return Ok(());
    }
    let Some(seg) = planned.base.physical.as_ref().map(|p| p.segment_bytes) else {
        return Ok(());
    };
    let replayed = recovered
        .replayed_to_lsn
        .as_deref()
        .and_then(crate::pitr::base::parse_lsn);
    let last = crate::pitr::base::segment_number(&planned.plan.last, seg);
    match (replayed, last) {
        (Some(lsn), Some(last)) if lsn / seg >= last => Ok(()),
        (lsn, _) => Err(Error::Recovery(format!(
            "replay ended at {} (segment {}), short of the archive's newest segment {}: PostgreSQL refused the WAL from there on (another cluster's segment under that name, or contents damaged before they were pushed; its log says which) and would have promoted without the rest. Nothing was restored; `dbward pitr verify` and the server log above name the segment",
            recovered.replayed_to_lsn.as_deref().unwrap_or("an unknown position"),
            lsn.map(|l| crate::pitr::base::segment_name(planned.plan.timeline, l, seg))
                .unwrap_or_else(|| "?".into()),
            planned.plan.last
        ))),
    }
}

/// `postgres://USER@/DB?host=DIR&port=5432`: the copy, over its socket.
fn copy_url(user: &str, db: &str, dir: &Path) -> Result<dbconn::PgUrl, Error> {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'.' | b'_' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let text = format!(
        "postgres://{}@/{}?host={}&port={}&sslmode=disable",
        enc(user),
        enc(db),
        enc(&dir.display().to_string()),
        server::PORT
    );
    match DatabaseUrl::parse(&text) {
        Ok(DatabaseUrl::Postgres(pg)) => Ok(*pg),
        Ok(DatabaseUrl::Sqlite(_)) => unreachable!("a postgres:// URL"),
        Err(e) => Err(Error::Recovery(format!(
            "the restored copy's URL: {}",
            crate::error::chain(&e)
        ))),
    }
}

//! Putting a SQLite snapshot in place, in one call ([`restore`]): under the migration lock, with
//! no other process holding the file (unless forced), the snapshot is fetched and decoded in the
//! database's own directory, checked (`PRAGMA integrity_check`, the migration head), then swapped
//! in: the live file is hard-linked aside as `<file>.replaced-<ts>` and the restored one renamed
//! over the live name. Both steps are atomic, so the live path always holds either the old
//! database or the restored one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{Outcome, Replaced, Strategy};
use crate::crypt::Identities;
use crate::error::Error;
use crate::manifest::Manifest;
use crate::scratch::ScratchPath;
use crate::store::local::sync_dir;
use crate::store::Store;

pub struct Options {
    /// Swap the file in even while other processes hold it open (they keep the replaced file).
    pub force: bool,
    /// Restore into this new file and leave the live one alone (`--to`).
    pub to: Option<PathBuf>,
    /// Only if the live database is still missing once the migration lock is held.
    pub if_missing: bool,
    /// How long to wait for a running `migrate` (or restore) to release the lock.
    pub lock_wait: Duration,
    /// What an encrypted snapshot is decrypted with.
    pub identities: Identities,
}

/// Restores snapshot `m` (fetched from the first of `stores` whose copy verifies) as the
/// database `live`, or into `opts.to`. `Ok(None)`: with [`Options::if_missing`], the database
/// existed once the lock was held, or appeared while the snapshot was fetched, and nothing was
/// restored.
///
/// `live` may be a symbolic link: the file it resolves to is restored, in its own directory
/// (lock, temp and replaced copies beside it), and the link stays; a link to nothing is
/// refused (see `dbconn::sqlite::real_path`).
pub async fn restore(
    live: &Path,
    stores: &[&Store],
    m: &Manifest,
    opts: &Options,
) -> Result<Option<Outcome>, Error> {
    place(live, opts, |dir| async move {
        let (restored, copy) =
            super::fetch_decoded_any(stores, m, &dir, TEMP_PREFIX, &opts.identities).await?;
        let restored = restored?;
        check_durable(&restored, m)?;
        Ok((restored, copy))
    })
    .await
}

/// Puts the file `build` makes (in the directory it is given: the database's own, a temp file
/// of this run's, checked; with the index of the store copy it came from) in place as the
/// database `live`, or at `opts.to`, as [`restore`] says: under the migration lock, refused
/// while other processes hold the file (unless forced), swapped in atomically.
pub async fn place<F, Fut>(live: &Path, opts: &Options, build: F) -> Result<Option<Outcome>, Error>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<(ScratchPath, usize), Error>>,
{
    let real = dbconn::sqlite::real_path(live)?;
    let target = opts.to.clone().unwrap_or_else(|| real.clone());
    let dir = dir_of(&target);
    if let Some(to) = &opts.to {
        check_new_target(to, &dir)?;
    }
    // The migration lock: no `migrate` (or other restore) runs meanwhile. On a blocking
    // thread, so a stop request is seen while it waits.
    let lock_path = real.clone();
    let wait = opts.lock_wait;
    let _lock = tokio::task::spawn_blocking(move || dbconn::sqlite::lock_file(&lock_path, wait))
        .await
        .map_err(|e| Error::Restore(format!("waiting for the migration lock: {e}")))??;
    let url = dbconn::DatabaseUrl::Sqlite(real.clone());
    if opts.if_missing && !crate::owner::is_missing(&url).await? {
        tracing::info!("{} appeared meanwhile: nothing restored", live.display());
        return Ok(None);
    }
    if opts.to.is_none() {
        let holders = holders(&real);
        if !holders.is_empty() && !opts.force {
            return Err(Error::Refused(format!(
                "{} is open in {}; stop the application first, or pass --force (it keeps writing to the file moved aside). Nothing was replaced.",
                real.display(),
                holders.join(", ")
            )));
        }
        if !holders.is_empty() {
            tracing::warn!(
                "{} is still open in {}: --force swaps the file under them; they keep reading and writing the replaced file (kept aside), where their writes are not seen: restart them",
                real.display(),
                holders.join(", ")
            );
        }
    }
    let (restored, copy) = build(dir.clone()).await?;
    let (replaced, strategy) = if opts.to.is_some() {
        adopt_ownership(&restored, None)?;
        // Side files that appeared beside the target while the snapshot was fetched would be
        // applied to it: looked at once more, right before it gets its name.
        if let Some(problem) = side_files_problem(&target) {
            return Err(Error::Target {
                target: target.display().to_string(),
                problem,
            });
        }
        // Linked, not renamed: a file that appeared at the target since it was checked is
        // never overwritten (a link fails where a name exists; a rename replaces it).
        match std::fs::hard_link(&restored, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::Target {
                    target: target.display().to_string(),
                    problem:
                        "the file appeared while the snapshot was restored; it was left as it is"
                            .into(),
                })
            }
            Err(e) => return Err(Error::io(format!("linking {}", target.display()))(e)),
        }
        // The temp name goes; the restored file stays under the target's.
        drop(restored);
        sync_dir(&dir)?;
        (None, Strategy::New)
    } else {
        // The application may have created the database while the snapshot was fetched: the
        // last look at "missing" is right before the swap, which itself never renames over a
        // file that appears after it (see `swap_in`).
        if opts.if_missing && !crate::owner::is_missing(&url).await? {
            tracing::info!(
                "{} appeared while the snapshot was fetched: nothing restored",
                live.display()
            );
            return Ok(None);
        }
        // An application that opened (so created) the database meanwhile holds a file that is
        // still "missing" (empty, or no tables yet): it is the application's now.
        if opts.if_missing {
            let holders = holders(&real);
            if !holders.is_empty() {
                tracing::info!(
                    "{} appeared while the snapshot was fetched (open in {}): nothing restored",
                    live.display(),
                    holders.join(", ")
                );
                return Ok(None);
            }
        }
        match swap_in(&real, restored)? {
            Swapped::In(kept) => (kept, Strategy::FileSwap),
            Swapped::Appeared if opts.if_missing => {
                tracing::info!(
                    "{} appeared while the snapshot was restored: nothing restored",
                    live.display()
                );
                return Ok(None);
            }
            Swapped::Appeared => {
                return Err(Error::Restore(format!(
                    "{} appeared while the snapshot was restored (the application created it?); it was left as it is",
                    real.display()
                )))
            }
        }
    };
    let database = if opts.to.is_none() && real != live {
        format!("{} (through the link {})", real.display(), live.display())
    } else {
        target.display().to_string()
    };
    Ok(Some(Outcome {
        database,
        replaced,
        terminated: Vec::new(),
        strategy,
        strategy_reason: None,
        copy,
    }))
}

/// A `--to` path takes only a new file: nothing at its name (not even a link), its directory
/// there, and no WAL, shared-memory file or journal beside it that SQLite would apply to it.
fn check_new_target(to: &Path, dir: &Path) -> Result<(), Error> {
    let shown = to.to_string_lossy();
    let problem = if shown.contains("://") || shown.starts_with("postgres") {
        "a SQLite snapshot restores into a file path".to_string()
    } else if !dir.is_dir() {
        format!(
            "the directory {} does not exist (dbward creates no directories for a restore)",
            dir.display()
        )
    } else if to.symlink_metadata().is_ok() {
        "the file exists; restore into a new path".to_string()
    } else if let Some(problem) = side_files_problem(to) {
        problem
    } else {
        return Ok(());
    };
    Err(Error::Target {
        target: to.display().to_string(),
        problem,
    })
}

/// Side files beside a new path, which SQLite would apply to the file put there.
fn side_files_problem(to: &Path) -> Option<String> {
    let side = dbconn::sqlite::side_files(to);
    (!side.is_empty()).then(|| {
        format!(
            "{} exists beside it, and SQLite would apply it to the restored file; restore into another path (or move it away)",
            side.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        )
    })
}

/// The prefix of the restored file while it is checked, in the run directory beside the
/// database (see [`crate::scratch`]).
pub const TEMP_PREFIX: &str = "restore-";

/// The directory a restore of `db` works in.
pub fn dir_of(db: &Path) -> PathBuf {
    match db.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// [`check`] while the file is fsynced on another thread: both must succeed before the file
/// may replace anything (the check reads what the sync writes back, from the page cache).
fn check_durable(path: &Path, m: &Manifest) -> Result<(), Error> {
    std::thread::scope(|s| {
        let synced = s.spawn(|| {
            std::fs::File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(Error::io(format!("fsync {}", path.display())))
        });
        let checked = check(path, m);
        let synced = synced
            .join()
            .unwrap_or_else(|_| Err(Error::Restore("the fsync thread panicked".into())));
        checked.and(synced)
    })
}

/// `PRAGMA integrity_check` and the manifest's migration head, on the restored copy.
pub fn check(path: &Path, m: &Manifest) -> Result<(), Error> {
    let refuse = |why: String| {
        Error::Damaged(format!(
            "the restored copy of snapshot {} failed its check: {why}; nothing was replaced",
            m.id
        ))
    };
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| refuse(e.to_string()))?;
    let verdict: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| refuse(e.to_string()))?;
    if verdict != "ok" {
        return Err(refuse(format!("integrity_check says {verdict}")));
    }
    let applied = dbconn::sqlite::applied_on(&c)?;
    if let Some(differs) = crate::manifest::head_differs(&applied, m) {
        return Err(refuse(differs));
    }
    Ok(())
}

/// Gives `restored` the owner, group and mode of the file it is about to replace (`like`), so
/// an application running as another user can still open its database after a restore by root;
/// for a new file (`like` is `None`), the mode a plain `open(2)` gets under this process's umask
/// (the temp file was created 0600).
pub fn adopt_ownership(restored: &Path, like: Option<&Path>) -> Result<(), Error> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (mode, owner) = match like {
        Some(live) => {
            let meta =
                std::fs::metadata(live).map_err(Error::io(format!("stat {}", live.display())))?;
            (meta.mode() & 0o7777, Some((meta.uid(), meta.gid())))
        }
        None => (0o666 & !umask(), None),
    };
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(restored, Some(uid), Some(gid)).map_err(Error::io(format!(
            "giving {} the owner {uid}:{gid} of {}",
            restored.display(),
            like.map(|p| p.display().to_string()).unwrap_or_default()
        )))?;
    }
    std::fs::set_permissions(restored, std::fs::Permissions::from_mode(mode)).map_err(Error::io(
        format!("setting mode {mode:o} on {}", restored.display()),
    ))
}

/// This process's umask, from /proc (reading it with umask(2) would change it meanwhile).
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Processes other than this one that hold `db` (or its WAL) open, from /proc, and any
/// connection SQLite's own lock on the WAL index shows (see [`wal_index_holder`]) that /proc
/// does not: one in another container sharing the volume.
pub fn holders(db: &Path) -> Vec<String> {
    // dbward's own replicator only reads: it follows a file put in place as a new generation.
    let replicator = dbconn::sqlite::replicator(db).map(|pid| format!("pid {pid} "));
    let mut out = proc_holders(db);
    out.retain(|h| replicator.as_ref().is_none_or(|r| !h.starts_with(r)));
    match wal_index_holder(db) {
        Some(pid) if pid > 0 && out.iter().any(|h| h.starts_with(&format!("pid {pid} "))) => {}
        Some(pid) if pid > 0 && replicator.as_deref() == Some(&format!("pid {pid} ")) => {}
        Some(pid) if pid > 0 => out.push(format!(
            "pid {pid} (seen through SQLite's lock on {}-shm)",
            db.display()
        )),
        Some(_) => out.push(format!(
            "a connection in another container or PID namespace (seen through SQLite's lock on {}-shm; its process is not visible here)",
            db.display()
        )),
        None => {}
    }
    out
}

/// The process holding a WAL-mode connection to `db` open, if any: SQLite's unix VFS holds a
/// shared fcntl lock on byte 128 of `<db>-shm` (the "DMS" lock) for as long as a connection
/// has the database open in WAL mode. fcntl locks are the kernel's, so this sees connections in
/// other containers that share the volume, which /proc does not; their pid is 0 here when their
/// PID namespace is not ours. `Some(pid)` with the holder's pid as this namespace sees it.
/// A database not in WAL mode has no such lock (an idle connection then holds nothing).
///
/// The probe opens and closes `<db>-shm`; closing drops every fcntl lock this process holds on
/// it, so it must not run while this process itself has the database open.
pub fn wal_index_holder(db: &Path) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let shm = std::fs::File::open(format!("{}-shm", db.display())).ok()?;
    // SAFETY: a zeroed flock is a valid value; F_GETLK only writes into it.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 128;
    fl.l_len = 1;
    // SAFETY: F_GETLK on an open fd with a valid flock.
    let rc = unsafe { libc::fcntl(shm.as_raw_fd(), libc::F_GETLK, &mut fl) };
    if rc != 0 || fl.l_type == libc::F_UNLCK as libc::c_short {
        return None;
    }
    Some(fl.l_pid)
}

/// Processes other than this one that hold `db` (or its WAL) open, from /proc.
fn proc_holders(db: &Path) -> Vec<String> {
    let Ok(target) = std::fs::canonicalize(db) else {
        return Vec::new();
    };
    let wal = PathBuf::from(format!("{}-wal", target.display()));
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let open = std::fs::read_dir(p.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|l| l == target || l == wal);
        if open {
            let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd)
                .replace('\0', " ")
                .trim()
                .to_string();
            out.push(format!("pid {pid} ({cmd})"));
        }
    }
    out
}

/// What [`swap_in`] did.
pub enum Swapped {
    /// The restored file is in place; what it replaced is kept there (none for a database
    /// that was missing and had nothing beside it).
    In(Option<Replaced>),
    /// The database was missing, and a file appeared at its name while the swap ran: nothing
    /// was replaced (stale side files moved aside stay there).
    Appeared,
}

/// Swaps `restored` (a checked file in the database's directory) in at `db` (a real file's
/// path, see `dbconn::sqlite::real_path`). A process that still has the database open (a
/// forced restore) keeps writing to the file moved aside, so nothing it writes is lost.
///
/// The replaced database is kept exactly as it was, with its side files under names SQLite
/// pairs with the kept file: nothing is checkpointed or rolled back into it first (a
/// checkpoint of a file that lost its contents would drop the WAL it was given).
///
/// Every side file SQLite would apply to the restored file (`-wal`, `-shm`, `-journal`) goes
/// aside under the kept copy's name, also when the database itself is missing (a stale WAL of a
/// lost file would otherwise be replayed into the snapshot). With the database missing, the
/// restored file takes its name only if nothing appeared there meanwhile
/// (`RENAME_NOREPLACE`).
pub fn swap_in(db: &Path, restored: ScratchPath) -> Result<Swapped, Error> {
    use dbconn::sqlite::{side_files, suffixed, SIDE_FILES};
    let dir = dir_of(db);
    // A name nothing uses yet, also when two restores happen in the same second.
    let base = format!("{}.replaced-{}", db.display(), super::stamp());
    let kept = (0..)
        .map(|n| {
            PathBuf::from(if n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            })
        })
        .find(|k| {
            k.symlink_metadata().is_err()
                && SIDE_FILES
                    .iter()
                    .all(|s| suffixed(k, s).symlink_metadata().is_err())
        })
        .expect("some suffix is free");
    let exists = db.symlink_metadata().is_ok();
    let mut any_moved = false;
    adopt_ownership(&restored, exists.then_some(db))?;
    let move_aside = |from: &Path| -> Result<PathBuf, Error> {
        let suffix = &from.to_string_lossy()[db.as_os_str().len()..];
        let to = suffixed(&kept, suffix);
        dbconn::fs::rename_new(from, &to)
            .map_err(Error::io(format!("moving {} aside", from.display())))?;
        Ok(to)
    };
    if exists {
        // The order makes every crash point safe. The live file is linked aside first: until
        // its side files move, the live path is still the whole old database. Then the WAL,
        // shared memory and journal go aside under names SQLite pairs with the kept file (so
        // they are never applied to the restored one): from here the kept copy is complete
        // with them. Only then is the restored file renamed over the live path.
        std::fs::hard_link(db, &kept).map_err(Error::io(format!(
            "keeping {} as {}",
            db.display(),
            kept.display()
        )))?;
        dbconn::failpoint::hit("restore-sqlite-after-link").map_err(Error::Restore)?;
        for from in side_files(db) {
            move_aside(&from)?;
        }
        dbconn::failpoint::hit("restore-sqlite-after-wal-moved").map_err(Error::Restore)?;
        std::fs::rename(&restored, db).map_err(Error::io(format!(
            "renaming the restored file to {}",
            db.display()
        )))?;
    } else {
        // Missing: side files beside it are a lost database's (no connection can have a
        // database open whose file is gone, and none was seen holding it). They are kept, not
        // removed: a WAL may hold that database's last commits.
        let mut moved = Vec::new();
        for from in side_files(db) {
            // Each file moves only while the database is still absent: a side file of a
            // database that exists (created meanwhile) is that database's.
            if db.symlink_metadata().is_ok() {
                return Ok(Swapped::Appeared);
            }
            let to = move_aside(&from)?;
            tracing::warn!(
                "{} was missing but {} was there (left by a database that is gone; SQLite would have applied it to the restored file): kept as {}",
                db.display(),
                from.display(),
                to.display()
            );
            moved.push((from, to));
        }
        dbconn::failpoint::hit("restore-sqlite-after-side-files").map_err(Error::Restore)?;
        match dbconn::fs::rename_new(&restored, db) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Someone's new database: it is left alone. The side files moved aside were
                // moved while it did not exist (a database's file comes before its side
                // files), so they were a lost one's and stay aside, where the warning says.
                return Ok(Swapped::Appeared);
            }
            Err(e) => {
                return Err(Error::io(format!(
                    "renaming the restored file to {}",
                    db.display()
                ))(e))
            }
        }
        any_moved = !moved.is_empty();
    }
    // The rename consumed the temp file; make sure its guard does not try to remove `db`.
    restored.keep();
    let replaced = if exists {
        Some(Replaced::File(kept))
    } else {
        any_moved.then_some(Replaced::SideFiles(kept))
    };
    dbconn::committed::mark(format!(
        "the restored database was put in place at {}{}",
        db.display(),
        replaced
            .as_ref()
            .map(|r| format!(" (what it replaced is kept as {r})"))
            .unwrap_or_default()
    ));
    dbconn::failpoint::hit("restore-sqlite-after-swap").map_err(Error::AfterChange)?;
    sync_dir(&dir)?;
    Ok(Swapped::In(replaced))
}

//! Putting a SQLite snapshot in place. The restored file is checked (`PRAGMA integrity_check`)
//! in the database's own directory, then swapped in: the live file is hard-linked aside as
//! `<file>.replaced-<ts>` and the restored one renamed over the live name. Both steps are atomic,
//! so the live path always holds either the old database or the restored one.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::error::Error;
use crate::manifest::Manifest;
use crate::store::local::sync_dir;

/// Temp files this module leaves beside the database; a killed restore's are removed by the
/// next one.
pub const TEMP_PREFIX: &str = ".dbward-restore-";

/// The directory a restore of `db` works in.
pub fn dir_of(db: &Path) -> PathBuf {
    match db.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Removes temp files of a restore that was killed.
pub fn clean_stray(db: &Path) {
    let dir = dir_of(db);
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(TEMP_PREFIX) || name.starts_with(".dbward-fetch-") {
            tracing::info!(
                "removing {} left by an interrupted restore",
                e.path().display()
            );
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// `PRAGMA integrity_check` and the manifest's migration head, on the restored copy.
pub fn check(path: &Path, m: &Manifest) -> Result<(), Error> {
    let refuse = |why: String| {
        Error::Refused(format!(
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
    let applied = migrator::database::sqlite::applied_on(&c)?;
    let head = applied.iter().map(|a| a.version).max();
    if head != m.migration_head.as_ref().map(|h| h.version) {
        return Err(refuse(format!(
            "migration head {head:?} differs from the manifest's"
        )));
    }
    Ok(())
}

/// Processes other than this one that hold `db` (or its WAL) open, from /proc.
pub fn holders(db: &Path) -> Vec<String> {
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

/// Swaps `restored` (a checked file in the database's directory) in at `db`. Returns where the
/// replaced database was kept. `force`: another process may still have it open; it keeps
/// writing to the file moved aside, so nothing it writes is lost.
pub fn swap_in(db: &Path, restored: tempfile::TempPath, force: bool) -> Result<PathBuf, Error> {
    let dir = dir_of(db);
    let suffixed = |p: &Path, s: &str| PathBuf::from(format!("{}{s}", p.display()));
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
        .find(|k| !k.exists() && !suffixed(k, "-wal").exists() && !suffixed(k, "-shm").exists())
        .expect("some suffix is free");
    if db.exists() {
        if !force {
            // Nobody else has it open: fold the WAL into the main file so one file is the whole
            // database. The last connection to close removes the WAL.
            let c = Connection::open(db)
                .map_err(|e| Error::Source(format!("opening {}: {e}", db.display())))?;
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .map_err(|e| Error::Source(format!("checkpointing {}: {e}", db.display())))?;
        }
        // WAL and shared memory go aside first, with names SQLite pairs with the kept file, so
        // they are never applied to the restored one.
        for s in ["-wal", "-shm"] {
            let from = suffixed(db, s);
            if from.exists() {
                std::fs::rename(&from, suffixed(&kept, s))
                    .map_err(Error::io(format!("moving {} aside", from.display())))?;
            }
        }
        std::fs::hard_link(db, &kept).map_err(Error::io(format!(
            "keeping {} as {}",
            db.display(),
            kept.display()
        )))?;
    }
    std::fs::rename(&restored, db).map_err(Error::io(format!(
        "renaming the restored file to {}",
        db.display()
    )))?;
    // The rename consumed the temp file; make sure its guard does not try to remove `db`.
    let _ = restored.keep();
    sync_dir(&dir)?;
    Ok(kept)
}

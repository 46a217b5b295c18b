//! SQLite as migrate and restore both see it: the migration lock file beside the database
//! (`<db>.dbward-lock`, which both take, so they never overlap), and the history table read from
//! any connection (a live database, a snapshot's copy).

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::error::{humanize, Error};
use crate::history::{self, Applied};

/// The lock file belongs to the database's owner, so that the application's own user can still
/// run dbward after root did (the lock file is dbward's, by its name beside the database).
fn give_db_owner(lock: &File, db: &Path) {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(l), Ok(d)) = (lock.metadata(), std::fs::metadata(db)) {
        if (l.uid(), l.gid()) != (d.uid(), d.gid()) {
            let _ = std::os::unix::fs::fchown(lock, Some(d.uid()), Some(d.gid()));
        }
    }
}

/// The lock file beside the database: `<db>.dbward-lock`, for `db` as [`real_path`] gives it.
pub fn lock_path(db: &Path) -> PathBuf {
    suffixed(db, ".dbward-lock")
}

/// `db` with `suffix` appended to its file name (`app.db` → `app.db-wal`).
pub fn suffixed(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// The files SQLite keeps beside a database under its name and applies to whatever file has
/// that name when it opens it: the WAL and its index (WAL mode), and the rollback journal (a
/// hot one is rolled back into the file).
pub const SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// The side files ([`SIDE_FILES`]) that exist beside `db`, whether or not `db` does.
pub fn side_files(db: &Path) -> Vec<PathBuf> {
    SIDE_FILES
        .iter()
        .map(|s| suffixed(db, s))
        .filter(|p| p.symlink_metadata().is_ok())
        .collect()
}

/// The file a database path names: `db` itself, or, when `db` is a symbolic link (a release
/// directory linking the database on a data volume), the file its chain of links ends at. Every
/// file dbward puts beside a database (its lock, the restored copy, the replaced one) goes
/// beside that file, and a restore replaces the file, never the link. A link to nothing (a
/// volume not mounted yet) is refused: a file created through it, or in its place, is one the
/// application never sees once the volume is there. A `db` that does not exist is returned as
/// it is.
pub fn real_path(db: &Path) -> Result<PathBuf, Error> {
    let mut p = db.to_path_buf();
    for _ in 0..40 {
        let meta = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && p == db => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Refused {
                    what: format!("sqlite:{}", db.display()),
                    problem: format!(
                        "the path is a symbolic link to {}, which does not exist (is its volume mounted?). Nothing was changed: mount the volume, or point the link (or the URL) at the database",
                        p.display()
                    ),
                })
            }
            Err(e) => {
                return Err(Error::Open {
                    what: format!("sqlite:{}", db.display()),
                    message: format!("{}: {e}", p.display()),
                })
            }
        };
        if !meta.file_type().is_symlink() {
            return Ok(p);
        }
        let target = std::fs::read_link(&p).map_err(|e| Error::Open {
            what: format!("sqlite:{}", db.display()),
            message: format!("reading the link {}: {e}", p.display()),
        })?;
        p = match p.parent() {
            Some(dir) if target.is_relative() => dir.join(target),
            _ => target,
        };
    }
    Err(Error::Refused {
        what: format!("sqlite:{}", db.display()),
        problem: "the path is a loop of symbolic links".into(),
    })
}

/// Refuses to create a database at `db` while a WAL or rollback journal of a database that is
/// gone lies beside it: SQLite would replay or roll it back into the new file, giving a corrupt
/// or different database. (A lone `-shm` is rebuilt, never applied.)
pub fn refuse_stale_side_files(db: &Path) -> Result<(), Error> {
    if db.symlink_metadata().is_ok() {
        return Ok(());
    }
    let stale: Vec<String> = ["-wal", "-journal"]
        .iter()
        .map(|s| suffixed(db, s))
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| p.display().to_string())
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    Err(Error::Refused {
        what: format!("sqlite:{}", db.display()),
        problem: format!(
            "the database file does not exist, but {} does: left by a database that is gone, and SQLite would apply it to a new file of that name. Nothing was created. It may hold that database's last writes: move it elsewhere (with any `-shm`), then run again; or restore the database with `dbward restore latest --if-missing`, which keeps such files aside itself",
            stale.join(" and ")
        ),
    })
}

/// Takes the exclusive lock on `db`'s lock file, polling until `timeout`; held while the returned
/// file is open. The kernel releases it when the process exits, however it exits. `migrate` and
/// `restore` both take it, so they never overlap. The lock file is beside the file `db` names
/// ([`real_path`]).
pub fn lock_file(db: &Path, timeout: Duration) -> Result<File, Error> {
    let db = &real_path(db)?;
    let lock_path = lock_path(db);
    let open_err = |e: std::io::Error| Error::Open {
        what: format!("lock file {}", lock_path.display()),
        message: e.to_string(),
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(open_err)?;
    give_db_owner(&file, db);
    let started = Instant::now();
    let mut announced = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) => {
                if started.elapsed() >= timeout {
                    return Err(Error::LockTimeout {
                        what: format!("sqlite:{}", db.display()),
                        waited: timeout,
                        holder: Some(format!("whoever locks {}", lock_path.display())),
                    });
                }
                if !announced {
                    tracing::info!(
                        "waiting up to {} for the migration lock {}",
                        humanize(timeout),
                        lock_path.display()
                    );
                    announced = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(TryLockError::Error(e)) => return Err(open_err(e)),
        }
    }
}

/// The history rows of any SQLite connection (a snapshot's copy, say); empty without the table.
pub fn applied_on(conn: &Connection) -> Result<Vec<Applied>, Error> {
    let ctx = |e: rusqlite::Error| Error::db("reading the migration history", e);
    if !table_exists(conn, history::TABLE).map_err(ctx)? {
        return Ok(Vec::new());
    }
    let select = if has_version_text(conn).map_err(ctx)? {
        history::SELECT_WITH_TEXT
    } else {
        history::SELECT
    };
    let mut stmt = conn.prepare(select).map_err(ctx)?;
    let rows = stmt
        .query_map([], |r| {
            let text = if r.as_ref().column_count() > 4 {
                r.get(4)?
            } else {
                None
            };
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, text))
        })
        .map_err(ctx)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(ctx)?;
    rows.into_iter()
        .map(|(v, n, a, c, t)| history::row(v, n, a, c, t))
        .collect()
}

/// Whether the history table has the `version_text` column (a version with parts was recorded).
pub fn has_version_text(conn: &Connection) -> rusqlite::Result<bool> {
    Ok(columns(conn, history::TABLE)?
        .iter()
        .any(|c| c == "version_text"))
}

/// The columns of `table`; none when there is no such table.
pub fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    conn.prepare("SELECT name FROM pragma_table_info(?1)")?
        .query_map([table], |r| r.get(0))?
        .collect()
}

/// Whether the database has tables of its own (not only dbward's and refinery's).
pub fn has_user_tables(conn: &Connection) -> Result<bool, Error> {
    conn.query_row(
        &format!("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT IN ({}))", crate::history::OWN_TABLES),
        [],
        |r| r.get(0),
    )
    .map_err(|e| Error::db("reading the schema", e))
}

pub fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get(0),
    )
}

/// `<db>.dbward-replicate-lock`: the lease `dbward replicate` holds (`flock`) on a database
/// for as long as it ships its stream, with its pid inside.
pub fn lease_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".dbward-replicate-lock");
    PathBuf::from(name)
}

/// Takes the replication lease on `db` (see [`lease_path`]); `Ok(None)` when another process
/// holds it.
pub fn take_lease(db: &Path) -> std::io::Result<Option<File>> {
    use std::io::Write;
    let path = lease_path(db);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(None),
        Err(TryLockError::Error(e)) => return Err(e),
    }
    f.set_len(0)?;
    writeln!(f, "{}", std::process::id())?;
    Ok(Some(f))
}

/// The pid of the `dbward replicate` that holds `db`'s lease now, if one does.
pub fn replicator(db: &Path) -> Option<u32> {
    let path = lease_path(db);
    let f = File::open(&path).ok()?;
    match f.try_lock_shared() {
        Ok(()) => None,
        Err(TryLockError::WouldBlock) => std::fs::read_to_string(&path).ok()?.trim().parse().ok(),
        Err(TryLockError::Error(_)) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn a_link_resolves_to_its_file_and_a_dangling_one_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("volume");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("app.db"), "").unwrap();
        let release = d.path().join("release");
        std::fs::create_dir(&release).unwrap();
        // Relative and chained: release/app.db -> current.db -> ../volume/app.db
        std::os::unix::fs::symlink("../volume/app.db", release.join("current.db")).unwrap();
        std::os::unix::fs::symlink("current.db", release.join("app.db")).unwrap();
        let real = real_path(&release.join("app.db")).unwrap();
        assert_eq!(
            std::fs::canonicalize(&real).unwrap(),
            std::fs::canonicalize(data.join("app.db")).unwrap()
        );
        assert_eq!(real.file_name().unwrap(), "app.db");
        // A plain or missing path is itself.
        assert_eq!(
            real_path(&data.join("app.db")).unwrap(),
            data.join("app.db")
        );
        assert_eq!(
            real_path(&data.join("new.db")).unwrap(),
            data.join("new.db")
        );
        // A link to nothing is refused, naming what it points at.
        std::os::unix::fs::symlink("/nonexistent/volume/app.db", release.join("gone.db")).unwrap();
        let e = real_path(&release.join("gone.db")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused);
        assert!(e.to_string().contains("/nonexistent/volume/app.db"), "{e}");
        assert!(lock_file(&release.join("gone.db"), Duration::ZERO).is_err());
        assert!(!release.join("gone.db.dbward-lock").exists());
    }

    #[test]
    fn side_files_of_a_missing_database_refuse_a_new_one() {
        let d = tempfile::tempdir().unwrap();
        let db = d.path().join("app.db");
        refuse_stale_side_files(&db).unwrap();
        std::fs::write(suffixed(&db, "-shm"), "x").unwrap();
        refuse_stale_side_files(&db).unwrap();
        assert_eq!(side_files(&db), vec![suffixed(&db, "-shm")]);
        std::fs::write(suffixed(&db, "-journal"), "x").unwrap();
        let e = refuse_stale_side_files(&db).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused);
        assert!(e.to_string().contains("app.db-journal"), "{e}");
        // Beside an existing file they are that database's own.
        std::fs::write(&db, "").unwrap();
        refuse_stale_side_files(&db).unwrap();
    }
}

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

/// The lock file beside the database: `<db>.dbward-lock`.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".dbward-lock");
    db.with_file_name(name)
}

/// Takes the exclusive lock on `db`'s lock file, polling until `timeout`; held while the returned
/// file is open. The kernel releases it when the process exits, however it exits. `migrate` and
/// `restore` both take it, so they never overlap.
pub fn lock_file(db: &Path, timeout: Duration) -> Result<File, Error> {
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
    let mut stmt = conn.prepare(history::SELECT).map_err(ctx)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .map_err(ctx)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(ctx)?;
    rows.into_iter()
        .map(|(v, n, a, c)| history::row(v, n, a, c))
        .collect()
}

/// Whether the database has tables of its own (not only dbward's and refinery's).
pub fn has_user_tables(conn: &Connection) -> Result<bool, Error> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT IN ('refinery_schema_history', 'dbward_identity', 'dbward_repeatable_history'))",
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

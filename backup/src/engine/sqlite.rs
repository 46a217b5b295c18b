//! SQLite: the online backup API in ONE step (`sqlite3_backup_step(-1)`, one read transaction),
//! never the page-stepped loop `sqlite3 .backup` uses, which restarts on every commit of another
//! connection and may never finish under steady writes. The copy goes to a temp file (fsynced),
//! its row counts and migration head are read from the copy, and the copy is streamed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{head, Keep, Prepared};
use crate::error::Error;
use crate::manifest::Format;

pub fn prepare(db: &Path, temp_dir: &Path, busy_timeout: Duration) -> Result<Prepared, Error> {
    let open_err =
        |e: rusqlite::Error| Error::Source(format!("opening sqlite:{}: {e}", db.display()));
    if !db.exists() {
        return Err(Error::Source(format!(
            "sqlite:{}: the database file does not exist",
            db.display()
        )));
    }
    let src = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    src.busy_timeout(busy_timeout).map_err(open_err)?;

    let db_size = std::fs::metadata(db).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(format!("{}-wal", db.display()))
            .map(|m| m.len())
            .unwrap_or(0);
    crate::scratch::ensure_space(temp_dir, db_size, "the staged copy of the SQLite snapshot")?;
    let tmp = crate::scratch::temp_in(temp_dir, "snapshot-")?;
    {
        let mut dst = Connection::open(&*tmp)
            .map_err(|e| Error::Source(format!("opening the temp copy: {e}")))?;
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)
            .map_err(|e| Error::Source(format!("starting the backup: {e}")))?;
        // One step copies every page inside one read transaction; retry only while locked.
        let mut tries = 0;
        loop {
            match backup.step(-1) {
                Ok(rusqlite::backup::StepResult::Done) => break,
                Ok(_) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(r) => return Err(Error::Source(format!("the backup did not finish: {r:?}"))),
                Err(e) => return Err(Error::Source(format!("copying the database: {e}"))),
            }
        }
    }
    drop(src);
    std::fs::File::open(&*tmp)
        .and_then(|f| f.sync_all())
        .map_err(Error::io(format!("fsync {}", tmp.display())))?;

    let copy = Connection::open_with_flags(&*tmp, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| Error::Source(format!("opening the copy: {e}")))?;
    let row_counts =
        row_counts(&copy).map_err(|e| Error::Source(format!("counting rows in the copy: {e}")))?;
    let applied = dbconn::sqlite::applied_on(&copy)?;
    let database_id = dbconn::identity::read_sqlite(&copy)?;
    drop(copy);

    let size = std::fs::metadata(&*tmp)
        .map_err(Error::io("stat the copy"))?
        .len();
    let reader = std::fs::File::open(&*tmp).map_err(Error::io("opening the copy"))?;
    Ok(Prepared {
        format: Format::Sqlite,
        engine: "sqlite",
        server_version: rusqlite::version().to_string(),
        pg_dump_version: None,
        head: head(applied),
        database_id,
        row_counts,
        size_hint: size,
        workers: if size > 64 << 20 {
            std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
        } else {
            0
        },
        reader: Box::new(reader),
        finish: Box::new(|| Ok(())),
        keep: Keep::TempFile(tmp),
    })
}

/// Rows per table (not SQLite's internal tables), from a connection to the copy.
pub fn row_counts(conn: &Connection) -> rusqlite::Result<BTreeMap<String, u64>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )?;
    let names: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = BTreeMap::new();
    for name in names {
        let quoted = dbconn::sql::ident(&name);
        let n: i64 = conn.query_row(&format!("SELECT count(*) FROM {quoted}"), [], |r| r.get(0))?;
        out.insert(name, n as u64);
    }
    Ok(out)
}

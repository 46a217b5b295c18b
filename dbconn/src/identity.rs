//! The database's identity: a random id kept in a one-row table inside the database itself
//! (`dbward_identity`), created by the first `migrate` or `backup`. Every snapshot carries it
//! (it is a table like any other), so a restored database, on a new host or an empty volume,
//! keeps the identity of the database it came from. Snapshots are matched to a database by it:
//! two databases that share a store folder never take each other's snapshots.

use crate::error::Error;

pub const TABLE: &str = "dbward_identity";

/// One row at most: two first runs at once cannot give a database two identities.
const CREATE_SQLITE: &str = "CREATE TABLE IF NOT EXISTS dbward_identity (one INTEGER PRIMARY KEY CHECK (one = 1), id VARCHAR(64) NOT NULL, created_at VARCHAR(64) NOT NULL)";
const CREATE_PG: &str = "CREATE TABLE IF NOT EXISTS dbward_identity (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), id VARCHAR(64) NOT NULL, created_at VARCHAR(64) NOT NULL)";

/// 128 random bits, hex.
fn new_id() -> Result<String, Error> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| Error::db("making a database identity", e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 formats any time")
}

/// The identity of a SQLite database, if it has one.
pub fn read_sqlite(conn: &rusqlite::Connection) -> Result<Option<String>, Error> {
    let ctx = |e: rusqlite::Error| Error::db("reading the database identity", e);
    let exists: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [TABLE],
            |r| r.get(0),
        )
        .map_err(ctx)?;
    if !exists {
        return Ok(None);
    }
    use rusqlite::OptionalExtension;
    conn.query_row("SELECT id FROM dbward_identity LIMIT 1", [], |r| r.get(0))
        .optional()
        .map_err(ctx)
}

/// The identity of a SQLite database, created if missing (inside the caller's transaction).
pub fn ensure_sqlite(conn: &rusqlite::Connection) -> Result<String, Error> {
    if let Some(id) = read_sqlite(conn)? {
        return Ok(id);
    }
    let ctx = |e: rusqlite::Error| Error::db("creating the database identity", e);
    let id = new_id()?;
    conn.execute_batch(CREATE_SQLITE).map_err(ctx)?;
    conn.execute(
        "INSERT OR IGNORE INTO dbward_identity (one, id, created_at) VALUES (1, ?1, ?2)",
        [&id, &now()],
    )
    .map_err(ctx)?;
    Ok(read_sqlite(conn)?.unwrap_or(id))
}

/// The identity of a PostgreSQL database, if it has one (the table as the search path finds
/// it, as for the history table).
pub async fn read_pg(c: &tokio_postgres::Client) -> Result<Option<String>, Error> {
    let ctx = |e: tokio_postgres::Error| Error::db("reading the database identity", e);
    let exists: bool = c
        .query_one("SELECT to_regclass('dbward_identity') IS NOT NULL", &[])
        .await
        .map_err(ctx)?
        .get(0);
    if !exists {
        return Ok(None);
    }
    Ok(
        c.query_opt("SELECT id::text FROM dbward_identity LIMIT 1", &[])
            .await
            .map_err(ctx)?
            .map(|r| r.get(0)),
    )
}

/// The identity of a PostgreSQL database, created if missing (inside the caller's transaction
/// when there is one).
pub async fn ensure_pg(c: &tokio_postgres::Client) -> Result<String, Error> {
    if let Some(id) = read_pg(c).await? {
        return Ok(id);
    }
    let ctx = |e: tokio_postgres::Error| Error::db("creating the database identity", e);
    let id = new_id()?;
    c.batch_execute(CREATE_PG).await.map_err(ctx)?;
    c.execute(
        "INSERT INTO dbward_identity (one, id, created_at) VALUES (TRUE, $1, $2) ON CONFLICT DO NOTHING",
        &[&id, &now()],
    )
    .await
    .map_err(ctx)?;
    // Another run may have won the race: the table's row is the identity.
    Ok(read_pg(c).await?.unwrap_or(id))
}

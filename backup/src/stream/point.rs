//! A deploy's position in the stream, recorded as a snapshot of format `streampoint`: no data
//! of its own, only which generation and step hold the state (and that state's hash), so that
//! `restore pre-deploy`, the health guard, `snapshots` and retention treat it as they treat any
//! snapshot. Taking one is O(1) in the database's size: the running replicator ships a step
//! ([`super::ask`]) and this records where it ends.

use std::path::Path;
use std::time::Instant;

use time::OffsetDateTime;

use crate::catalog::manifest_key;
use crate::error::Error;
use crate::manifest::{self, Format, Kind, Manifest, StreamPoint};
use crate::store::set::StoreSet;

/// Records `p`, a position the replicator of the SQLite database at `db` says the primary store
/// holds, as a snapshot of `database`'s folder, in the primary (it must take it) and in each
/// mirror (whose copy of the stream follows; its retention keeps the generation a position
/// names, and a restore finds it there when the primary cannot be read). Checked first: the
/// generation is in the primary, and it is this database's (its identity). Returns the manifest
/// and the mirrors that did not take it, with why.
pub async fn record(
    stores: &StoreSet,
    database: &str,
    db: &Path,
    p: StreamPoint,
    kind: Kind,
) -> Result<(Manifest, Vec<String>), Error> {
    let store = stores.primary();
    let started = Instant::now();
    let (database_id, head) = identity_and_head(db)?;
    let key = super::generation_key(database, &p.generation);
    let bytes = store.get_bytes(&key).await.map_err(|e| match e {
        Error::Missing(_) => Error::Refused(format!(
            "the replicator's generation {} is not in {}",
            p.generation,
            store.describe(&key)
        )),
        e => e,
    })?;
    let g: super::Generation = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Damaged(format!("{key} is not a stream generation: {e}")))?;
    // The rule a restore follows.
    if !super::is_ours(g.database_id.as_deref(), database_id.as_deref()) {
        return Err(Error::Refused(format!(
            "generation {} is of the database {}, and {} is {}",
            p.generation,
            g.database_id.as_deref().unwrap_or("without an identity"),
            db.display(),
            database_id.as_deref().unwrap_or("without one")
        )));
    }
    let at = OffsetDateTime::now_utc();
    let id = manifest::snapshot_id(at, kind);
    let m = Manifest {
        server_version: rusqlite::version().into(),
        stream: Some(p),
        database_id,
        migration_head: head,
        duration_ms: started.elapsed().as_millis() as u64,
        ..Manifest::of_position(
            id.clone(),
            kind,
            at,
            "sqlite",
            Format::Streampoint,
            database,
        )
    };
    let json = serde_json::to_vec_pretty(&m).expect("serializes");
    let key = manifest_key(database, &id);
    store.put_new(&key, &json).await?;
    let mut failed = Vec::new();
    for (n, mirror) in stores.mirrors() {
        if let Err(e) = mirror.put_new(&key, &json).await {
            failed.push(format!("mirror {n}: {}", crate::error::chain(&e)));
        }
    }
    Ok((m, failed))
}

/// The database's identity and migration head, read from the file (read-only, a moment's read
/// transaction).
fn identity_and_head(db: &Path) -> Result<(Option<String>, Option<manifest::Head>), Error> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| dbconn::Error::db(format!("opening sqlite:{}", db.display()), e))?;
    let id = dbconn::identity::read_sqlite(&c)?;
    let applied = dbconn::sqlite::applied_on(&c)?;
    Ok((id, crate::engine::head(applied)))
}

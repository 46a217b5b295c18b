//! Which snapshots in a database's store folder belong to this database. The folder is named
//! after the database (`<prefix>/<name>/`), so two databases of one name (two `app.db` files, a
//! SQLite `shop.db` and a PostgreSQL `shop`, staging and production with a copied config) would
//! share it. The database's identity (kept inside it, see `dbconn::identity`)
//! decides: the folder's first backup writes `.owner.json` naming that identity, a backup of
//! another database there is refused, and `latest`, `pre-deploy` and retention only ever take
//! snapshots of this identity (and of the right format).

use dbconn::DatabaseUrl;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::manifest::{Format, Manifest};
use crate::store::Store;

/// `<database>/.owner.json`: a name prune never deletes (it is not a snapshot's).
pub fn owner_key(database: &str) -> String {
    format!("{database}/.owner.json")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Owner {
    pub database_id: String,
    pub engine: String,
    pub host: String,
    /// RFC 3339, UTC.
    pub created_at: String,
}

/// The folder's owner, if one was recorded.
pub async fn read(store: &Store, database: &str) -> Result<Option<Owner>, Error> {
    match store.get_bytes(&owner_key(database)).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Store {
                what: store.describe(&owner_key(database)),
                message: format!("not a dbward owner record: {e}"),
            }),
        Err(Error::Missing(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Refuses to write `id`'s snapshots into a folder another database owns.
pub async fn check(store: &Store, database: &str, id: &str) -> Result<(), Error> {
    match read(store, database).await? {
        Some(o) if o.database_id != id => Err(foreign(store, database, &o, Some(id))),
        _ => Ok(()),
    }
}

/// Refuses to write `id`'s snapshots into a folder another database owns; records the owner
/// on the folder's first use (after its first snapshot is complete).
pub async fn claim(
    store: &Store,
    database: &str,
    id: &str,
    engine: &str,
    host: &str,
) -> Result<(), Error> {
    match read(store, database).await? {
        Some(o) if o.database_id == id => Ok(()),
        Some(o) => Err(foreign(store, database, &o, Some(id))),
        None => {
            let owner = Owner {
                database_id: id.into(),
                engine: engine.into(),
                host: host.into(),
                created_at: crate::manifest::now_rfc3339(time::OffsetDateTime::now_utc()),
            };
            let json = serde_json::to_vec_pretty(&owner).expect("serializes");
            match store.put_new(&owner_key(database), &json).await {
                Ok(()) => Ok(()),
                // Another run claimed it first: check again whose it is.
                Err(_) => match read(store, database).await? {
                    Some(o) if o.database_id == id => Ok(()),
                    Some(o) => Err(foreign(store, database, &o, Some(id))),
                    None => Ok(()),
                },
            }
        }
    }
}

fn foreign(store: &Store, database: &str, o: &Owner, ours: Option<&str>) -> Error {
    Error::Refused(format!(
        "the store folder {} belongs to another database: {} {} (first backed up from host {} at {}){}. \
         Two databases named `{database}` share it; give each its own store prefix (store.url / --store / DBWARD_STORE). Nothing was written or deleted.",
        store.describe(database),
        o.engine,
        o.database_id,
        o.host,
        o.created_at,
        ours.map(|id| format!("; this database is {id}")).unwrap_or_default()
    ))
}

/// What is known of the live database's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Live {
    /// There is no live database (a SQLite file missing: an empty volume being recovered). It
    /// takes the folder owner's identity.
    Absent,
    /// A live database, with its identity if it has one (none: it predates identities, or its
    /// role could not create the table).
    Present(Option<String>),
}

/// This database's snapshots in a listing (newest first stays newest first). Only snapshots of
/// its format; of those, the ones with its identity, and the ones without any identity (taken
/// before identities existed) only if older than the folder's owner record. A database with no
/// identity never takes the owner's snapshots, except to recover an absent database.
pub fn mine(
    store: &Store,
    database: &str,
    all: Vec<Manifest>,
    live: &Live,
    format: Format,
    owner: Option<&Owner>,
) -> Result<Vec<Manifest>, Error> {
    if let (Live::Present(Some(id)), Some(o)) = (live, owner) {
        if &o.database_id != id {
            return Err(foreign(store, database, o, Some(id)));
        }
    }
    let id = match live {
        Live::Present(id) => id.as_deref(),
        Live::Absent => owner.map(|o| o.database_id.as_str()),
    };
    let owned_since = owner.and_then(|o| {
        time::OffsetDateTime::parse(
            &o.created_at,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()
    });
    Ok(all
        .into_iter()
        .filter(|m| m.format == format)
        .filter(|m| match (&m.database_id, id) {
            (None, _) => match (owned_since, m.created()) {
                (Some(since), Some(at)) => at < since,
                (Some(_), None) => false,
                (None, _) => true,
            },
            (Some(theirs), Some(ours)) => theirs == ours,
            // Without an identity, a snapshot that has one is not provably this database's.
            (Some(_), None) => false,
        })
        .collect())
}

/// A database without an identity may not write into a folder another database owns.
pub async fn check_unidentified(store: &Store, database: &str) -> Result<(), Error> {
    match read(store, database).await? {
        Some(o) => Err(Error::Refused(format!(
            "this database has no identity (dbward could not create its `dbward_identity` table; see the warning above), and the store folder {} belongs to the database {} (first backed up from host {} at {}). \
             Let dbward's role create that table (run `dbward migrate` or `dbward backup` once with a role that may), or give this database its own store prefix. Nothing was written.",
            store.describe(database),
            o.database_id,
            o.host,
            o.created_at
        ))),
        None => Ok(()),
    }
}

/// The format of `url`'s snapshots.
pub fn format_of(url: &DatabaseUrl) -> Format {
    match url {
        DatabaseUrl::Sqlite(_) => Format::Sqlite,
        DatabaseUrl::Postgres(_) => Format::Pgdump,
    }
}

/// Every format of `url`'s snapshots: SQLite's files and stream positions; PostgreSQL's
/// dumps, its cluster's base backups and restore points (in that order: a point's fate depends
/// on the bases kept).
pub fn formats_of(url: &DatabaseUrl) -> &'static [Format] {
    match url {
        DatabaseUrl::Sqlite(_) => &[Format::Sqlite, Format::Streampoint],
        DatabaseUrl::Postgres(_) => &[Format::Pgdump, Format::Pgbase, Format::Pgpoint],
    }
}

/// Whether the live database is missing: SQLite, no file or an empty one; PostgreSQL, the
/// database does not exist. A database with no tables at all counts as missing too: it is what
/// a fresh volume or a freshly created server holds.
pub async fn is_missing(url: &DatabaseUrl) -> Result<bool, Error> {
    match url {
        DatabaseUrl::Sqlite(path) => {
            // A symbolic link to nothing (a volume not mounted) is not a missing database:
            // refused, so nothing is restored or created in the link's place.
            let path = &dbconn::sqlite::real_path(path)?;
            if std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
                return Ok(true);
            }
            let c = rusqlite::Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .map_err(|e| dbconn::Error::Open {
                what: format!("sqlite:{}", path.display()),
                message: e.to_string(),
            })?;
            Ok(!dbconn::sqlite::has_user_tables(&c)?)
        }
        DatabaseUrl::Postgres(pg) => match dbconn::postgres::Postgres::connect(pg).await {
            Ok(db) => Ok(!db.has_user_tables().await?),
            Err(dbconn::Error::NoDatabase { .. }) => Ok(true),
            Err(e) => Err(e.into()),
        },
    }
}

/// The live database's identity: [`Live::Absent`] for a missing database (see
/// [`is_missing`]), which takes the folder owner's.
pub async fn live_identity(url: &DatabaseUrl) -> Result<Live, Error> {
    if is_missing(url).await? {
        return Ok(Live::Absent);
    }
    match url {
        DatabaseUrl::Sqlite(path) => {
            let c = rusqlite::Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .map_err(|e| Error::Source(format!("opening {}: {e}", path.display())))?;
            Ok(Live::Present(dbconn::identity::read_sqlite(&c)?))
        }
        DatabaseUrl::Postgres(pg) => {
            let db = dbconn::postgres::Postgres::connect(pg).await?;
            Ok(Live::Present(dbconn::identity::read_pg(db.client()).await?))
        }
    }
}

/// Gives the live database an identity if it has none (a database migrated before identities
/// existed): a one-row table, written in its own short transaction before a backup. A role
/// that may not create it leaves the database without one (the snapshot then carries none).
pub async fn ensure_identity(
    url: &DatabaseUrl,
    busy_timeout: std::time::Duration,
) -> Option<String> {
    let made = match url {
        DatabaseUrl::Sqlite(path) => (|| -> Result<String, Error> {
            let mut c = rusqlite::Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
            )
            .map_err(|e| Error::Source(format!("opening {}: {e}", path.display())))?;
            c.busy_timeout(busy_timeout)
                .map_err(|e| Error::Source(e.to_string()))?;
            if let Some(id) = dbconn::identity::read_sqlite(&c)? {
                return Ok(id);
            }
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| Error::Source(e.to_string()))?;
            let id = dbconn::identity::ensure_sqlite(&tx)?;
            tx.commit().map_err(|e| Error::Source(e.to_string()))?;
            Ok(id)
        })(),
        DatabaseUrl::Postgres(pg) => {
            async {
                let db = dbconn::postgres::Postgres::connect(pg).await?;
                Ok(dbconn::identity::ensure_pg(db.client()).await?)
            }
            .await
        }
    };
    match made {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::warn!(
                "could not give {} an identity (its snapshots will carry none): {}",
                url.display(),
                crate::error::chain(&e)
            );
            None
        }
    }
}

//! The copies a restore keeps of what it replaced (`app.db.replaced-<ts>` with the side files
//! moved aside with it, `<db>_replaced_<ts>_<tag>`): removing one by its exact name, and
//! measuring one. Which copies go is the binary's decision: only those it recorded by name,
//! beyond `restore.keep_replaced`.

use dbconn::DatabaseUrl;

use super::postgres::{connect_to, MAINTENANCE};
use crate::error::Error;

/// Removes the copy `name` of `url`'s database: a SQLite file with its side files, or a
/// PostgreSQL database (`DROP DATABASE IF EXISTS`, which refuses while anyone is connected).
pub async fn remove(url: &DatabaseUrl, name: &str) -> Result<(), Error> {
    match url {
        DatabaseUrl::Sqlite(_) => {
            for suffix in dbconn::sqlite::SIDE_FILES.iter().chain([&""]) {
                let p = format!("{name}{suffix}");
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(format!("removing {p}"))(e)),
                }
            }
            Ok(())
        }
        DatabaseUrl::Postgres(pg) => {
            let db = connect_to(pg, MAINTENANCE).await?;
            let ident = dbconn::sql::ident(name);
            db.client()
                .batch_execute(&format!("DROP DATABASE IF EXISTS {ident}"))
                .await
                .map_err(|e| Error::Database(dbconn::Error::db(format!("dropping {ident}"), e)))
        }
    }
}

/// The copy's size in bytes (a SQLite file and its side files together), or `None` when it is
/// gone or cannot be measured.
pub async fn size(url: &DatabaseUrl, name: &str) -> Option<u64> {
    match url {
        DatabaseUrl::Sqlite(_) => {
            let path = std::path::Path::new(name);
            let sizes: Vec<u64> = dbconn::sqlite::SIDE_FILES
                .iter()
                .map(|s| dbconn::sqlite::suffixed(path, s))
                .chain([path.to_path_buf()])
                .filter_map(|p| std::fs::metadata(p).ok().map(|m| m.len()))
                .collect();
            (!sizes.is_empty()).then(|| sizes.iter().sum())
        }
        DatabaseUrl::Postgres(pg) => {
            let db = connect_to(pg, MAINTENANCE).await.ok()?;
            db.client()
                .query_opt(
                    "SELECT pg_database_size(datname) FROM pg_database WHERE datname = $1",
                    &[&name],
                )
                .await
                .ok()
                .flatten()
                .map(|r| r.get::<_, i64>(0) as u64)
        }
    }
}

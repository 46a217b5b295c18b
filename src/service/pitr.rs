//! What the binary hands [`backup::pitr::cluster`]: this database's archive as the settings
//! name it, and the note a failed restore into a new directory ends with.

use std::path::Path;

use backup::pitr::cluster::{self, Archive, Restored, Which};
use migrator::DatabaseUrl;

use crate::exit::Exit;
use crate::report::Failure;
use crate::settings::Settings;

/// The stores (primary, then mirrors), the database's folder and the identities, for a
/// PostgreSQL database; a SQLite one is a usage error.
pub async fn archive(settings: &Settings, url: &DatabaseUrl) -> Result<Archive, Failure> {
    if matches!(url, DatabaseUrl::Sqlite(_)) {
        return Err(Failure::new(
            Exit::Usage,
            "--physical restores a PostgreSQL cluster's base backup; the database is SQLite",
        ));
    }
    Ok(Archive {
        stores: settings.stores().await?,
        db: url.name(),
        identities: settings.identities()?,
    })
}

/// Restores `which` into the new directory `to` and leaves its server running. A failure
/// leaves no directory and no server behind, and says so.
pub async fn restore_to(
    settings: &Settings,
    url: &DatabaseUrl,
    which: &Which,
    to: &Path,
) -> Result<Restored, Failure> {
    let DatabaseUrl::Postgres(pg) = url else {
        return Err(Failure::new(
            Exit::Usage,
            "--physical restores a PostgreSQL cluster's base backup; the database is SQLite",
        ));
    };
    let planned =
        cluster::plan(cluster::choose(archive(settings, url).await?, which).await?).await?;
    let existed = to.exists();
    match cluster::materialize(&planned, pg, to).await {
        Ok(running) => Ok(running.keep()),
        Err(e) => {
            let mut f = Failure::from(e);
            if !existed {
                f.message.push_str(&format!(
                    "\nNothing was changed: {} was not kept, and no server runs on it.",
                    to.display()
                ));
            }
            Err(f)
        }
    }
}

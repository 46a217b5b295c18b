//! What the binary hands [`backup::stream`]: a SQLite database's stream, built back and put in
//! place as a restore puts a snapshot ([`backup::restore::sqlite::place`]: under the migration
//! lock, checked, swapped in with the replaced file kept), and whether the stream's newest
//! state is newer than the newest snapshot (then it is what `latest` means).

use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;
use time::OffsetDateTime;

use backup::restore::{self, Outcome};
use backup::stream::restore::Restored as Built;
use migrator::DatabaseUrl;

use crate::exit::Exit;
use crate::report::Failure;
use crate::settings::Settings;

/// A finished restore from the stream.
#[derive(Debug, Serialize)]
pub struct Restored {
    pub stream: Built,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub seconds: f64,
    /// The store it was built from.
    pub store: String,
}

/// The stream's newest state's time, when the primary store (else a mirror) holds a stream of
/// this SQLite database (`None`: none does, or the database is PostgreSQL's).
pub async fn newest(
    settings: &Settings,
    url: &DatabaseUrl,
) -> Result<Option<OffsetDateTime>, Failure> {
    let DatabaseUrl::Sqlite(_) = url else {
        return Ok(None);
    };
    let stores = settings.stores().await?;
    let identities = settings.identities()?;
    let db = url.name();
    let id = whose(url, stores.primary()).await?;
    let found = stores
        .find(
            |store| backup::stream::restore::newest(store, &db, id.as_deref(), &identities),
            |_, store, e| {
                tracing::warn!(
                    "{}: the stream cannot be read: {}",
                    store.describe(""),
                    backup::error::chain(e)
                )
            },
        )
        .await?;
    Ok(found.and_then(|f| {
        OffsetDateTime::parse(&f.value.2, &time::format_description::well_known::Rfc3339).ok()
    }))
}

/// Builds the stream's state (the newest, or the last read at or before `until`) and puts it in
/// place as `url`'s database (or at `to`); with `if_missing`, only while the database is still
/// missing (`Ok(None)` otherwise).
pub async fn restore(
    settings: &Settings,
    url: &DatabaseUrl,
    until: Option<OffsetDateTime>,
    to: Option<&str>,
    force: bool,
    if_missing: bool,
) -> Result<Option<Restored>, Failure> {
    let DatabaseUrl::Sqlite(live) = url else {
        return Err(Failure::new(
            Exit::Usage,
            "a stream is a SQLite database's (`dbward replicate`); for PostgreSQL restore --physical",
        ));
    };
    let started = Instant::now();
    let stores = settings.stores().await?;
    let identities = settings.identities()?;
    let db = url.name();
    let id = whose(url, stores.primary()).await?;
    let built: Mutex<Option<(Built, String)>> = Mutex::new(None);
    let opts = restore::sqlite::Options {
        force,
        to: to.map(std::path::PathBuf::from),
        if_missing,
        lock_wait: super::restore::LOCK_WAIT,
        identities: backup::crypt::Identities::none(),
    };
    let (stores, db, identities, built_ref, id) =
        (&stores, &db, &identities, &built, id.as_deref());
    let outcome = restore::sqlite::place(live, &opts, |dir| async move {
        let file = backup::scratch::temp_in(&dir, restore::sqlite::TEMP_PREFIX)?;
        let found = stores
            .find(
                |store| backup::stream::restore::build(store, db, id, identities, until, &file),
                |_, store, e| tracing::warn!("{}: {}", store.describe(""), backup::error::chain(e)),
            )
            .await?;
        let Some(found) = found else {
            return Err(backup::Error::NotFound(format!(
                "no store holds a stream of {}{} (`dbward replicate` ships one)",
                url.display(),
                until
                    .map(|t| format!(" that began by {t}"))
                    .unwrap_or_default()
            )));
        };
        *built_ref.lock().expect("not poisoned") =
            Some((found.value, found.store.describe(&backup::stream::dir(db))));
        Ok((file, found.at))
    })
    .await?;
    let Some(outcome) = outcome else {
        return Ok(None);
    };
    let (stream, store) = built
        .into_inner()
        .expect("not poisoned")
        .expect("built before it was placed");
    if let Some(kept) = outcome
        .replaced
        .as_ref()
        .and_then(restore::Replaced::kept_copy)
    {
        crate::replaced::record_and_trim(
            settings,
            url,
            &kept,
            &format!("stream {} step {}", stream.generation, stream.seq),
        )
        .await;
    }
    Ok(Some(Restored {
        stream,
        outcome,
        seconds: started.elapsed().as_secs_f64(),
        store,
    }))
}

/// The identity whose stream a restore of `url` takes: the live database's, or for a missing
/// one the store folder owner's.
pub async fn whose(url: &DatabaseUrl, primary: &backup::Store) -> Result<Option<String>, Failure> {
    Ok(match backup::owner::live_identity(url).await? {
        backup::owner::Live::Present(id) => id,
        backup::owner::Live::Absent => backup::owner::read(primary, &url.name())
            .await?
            .map(|o| o.database_id),
    })
}

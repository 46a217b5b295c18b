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
pub use backup::stream::restore::Target;
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

/// Builds the stream's state `target` and puts it in place as `url`'s database (or at `to`);
/// with `if_missing`, only while the database is still missing (`Ok(None)` otherwise).
pub async fn restore(
    settings: &Settings,
    url: &DatabaseUrl,
    target: &Target,
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
                |store| backup::stream::restore::build(store, db, id, identities, target, &file),
                |_, store, e| tracing::warn!("{}: {}", store.describe(""), backup::error::chain(e)),
            )
            .await?;
        let Some(found) = found else {
            return Err(backup::Error::NotFound(match target {
                Target::Point(p) => format!(
                    "no store holds generation {} of the stream of {} any more (the position at step {} was in it)",
                    p.generation,
                    url.display(),
                    p.seq
                ),
                Target::Until(t) => format!(
                    "no store holds a stream of {} that began by {t} (`dbward replicate` ships one)",
                    url.display()
                ),
                Target::Newest => format!(
                    "no store holds a stream of {} (`dbward replicate` ships one)",
                    url.display()
                ),
            }));
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

/// The replicator's local folder: `<state-dir>/stream/<name>-<hash of the file's real path>`,
/// so two databases of one name (in two directories) never share one.
pub fn local_dir(settings: &Settings, path: &std::path::Path, name: &str) -> std::path::PathBuf {
    use sha2::{Digest, Sha256};
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let digest = Sha256::digest(real.as_os_str().as_encoded_bytes());
    let tail: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    settings
        .state_dir
        .join("stream")
        .join(format!("{name}-{tail}"))
}

/// How long a running replicator has to take `migrate`'s request for a position.
const TAKEN_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);
/// How long its step (read, compress, upload) may take before `migrate` snapshots instead.
const ANSWERED_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// `migrate`'s pre-deploy point from the running replicator of the SQLite database at `path`:
/// a position the primary store holds, recorded as a snapshot. `Ok(None)` when no replicator
/// runs (a snapshot is what the deploy takes); `Err` says why the one that runs gave none.
pub async fn pre_deploy_point(
    settings: &Settings,
    url: &DatabaseUrl,
    path: &std::path::Path,
) -> Result<Option<backup::Manifest>, String> {
    let Some(pid) = dbconn::sqlite::replicator(path) else {
        return Ok(None);
    };
    let dir = local_dir(settings, path, &url.name());
    let db = path.to_path_buf();
    let asked = tokio::task::spawn_blocking(move || {
        let alive = || dbconn::sqlite::replicator(&db).is_some();
        backup::stream::ask::position(&dir, TAKEN_WITHIN, ANSWERED_WITHIN, &alive)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("the replicator (pid {pid}) gave no position: {e}"))?;
    let stores = settings
        .stores()
        .await
        .map_err(|e| backup::error::chain(&e))?;
    let (m, failed) =
        backup::stream::point::record(&stores, &url.name(), path, asked, backup::Kind::PreDeploy)
            .await
            .map_err(|e| {
                format!(
                    "recording the replicator's position: {}",
                    backup::error::chain(&e)
                )
            })?;
    for f in failed {
        tracing::warn!(
            "the stream position {} has no copy in {f} (the primary has it)",
            m.id
        );
    }
    Ok(Some(m))
}

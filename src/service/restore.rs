//! The restore service, for `restore`, the health guard and `migrate --restore-if-missing`:
//! the engine's one restore call (`backup::restore::{sqlite, postgres}`), plus what needs the
//! settings: the identities, the in-place fallback's snapshot of the state before, and the
//! record of the replaced copy.

use std::time::{Duration, Instant};

use serde::Serialize;

use backup::restore::postgres::Swapped;
use backup::restore::{self, Outcome, Replaced};
use migrator::DatabaseUrl;

use crate::exit::Exit;
use crate::report::Failure;
use crate::settings::Settings;

/// How long a restore waits for a running `migrate` (the same default as `--lock-timeout`).
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(600);

pub struct Options {
    pub force: bool,
    pub terminate_connections: bool,
    pub to: Option<String>,
}

/// A finished restore: the engine's outcome and which snapshot, copy and time it took.
#[derive(Debug, Serialize)]
pub struct Restored {
    pub snapshot: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub seconds: f64,
    /// The store object restored from (a mirror's when the primary's copy did not verify).
    pub copy: String,
}

/// What `--if-missing` found and did.
pub enum IfMissing {
    Exists,
    NoSnapshot,
    Restored(Restored),
    /// From the stream, newer than the newest snapshot (SQLite).
    Streamed(super::stream::Restored),
}

impl IfMissing {
    pub fn message(&self, url: &DatabaseUrl) -> String {
        match self {
            IfMissing::Exists => format!("{} exists: nothing restored", url.display()),
            IfMissing::NoSnapshot => format!(
                "{} is missing and the store holds no snapshot of it: starting fresh",
                url.display()
            ),
            IfMissing::Restored(r) => {
                format!(
                    "{} was missing: restored snapshot {}",
                    url.display(),
                    r.snapshot
                )
            }
            IfMissing::Streamed(r) => format!(
                "{} was missing: restored the stream's state read at {} (generation {}, step {})",
                url.display(),
                r.stream.captured_at,
                r.stream.generation,
                r.stream.seq
            ),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            IfMissing::Exists => json!({ "missing": false, "restored": null }),
            IfMissing::NoSnapshot => json!({ "missing": true, "restored": null }),
            IfMissing::Restored(r) => json!({ "missing": true, "restored": r }),
            IfMissing::Streamed(r) => json!({ "missing": true, "restored": r }),
        }
    }
}

/// This database's snapshots in `store`, newest first; `None` when it holds none.
async fn candidates_in(
    store: &backup::Store,
    url: &DatabaseUrl,
) -> Result<Option<Vec<backup::Manifest>>, backup::Error> {
    let db = url.name();
    let listing = backup::list_all(store, &db).await?;
    let folder_owner = backup::owner::read(store, &db).await?;
    let candidates = backup::owner::mine(
        store,
        &db,
        listing.snapshots,
        &backup::owner::Live::Absent,
        backup::owner::format_of(url),
        folder_owner.as_ref(),
    )?;
    Ok((!candidates.is_empty()).then_some(candidates))
}

/// A database that is missing (a fresh volume, a new server) gets the newest of its snapshots
/// that verifies; one that exists is left alone. Never restores over an existing database: for
/// SQLite, "missing" is checked again under the migration lock.
pub async fn restore_if_missing(
    settings: &Settings,
    url: &DatabaseUrl,
) -> Result<IfMissing, Failure> {
    if !backup::owner::is_missing(url).await? {
        tracing::info!("{} exists: nothing to restore", url.display());
        return Ok(IfMissing::Exists);
    }
    // The newest snapshots of the first store that has any (the primary, else a mirror): a
    // primary that answers but lost its snapshots must not start the database fresh, and
    // neither may a store that does not answer (it may hold them).
    let stores = settings.stores().await?;
    let found = stores
        .find(|store| candidates_in(store, url), |_, store, e| {
            tracing::warn!("{}: {}", store.describe(""), backup::error::chain(e))
        })
        .await
        .map_err(|e| {
            let mut f = Failure::from(e);
            f.message.push_str(&format!(
                "; {} is missing, and not started fresh while a store that may hold its snapshots does not answer",
                url.display()
            ));
            f
        })?;
    // SQLite: the stream's newest state, when it is newer than the newest snapshot.
    let newest_snapshot = found
        .as_ref()
        .and_then(|f| f.value.first())
        .and_then(|m| m.created());
    let stream_at = match super::stream::newest(settings, url).await {
        Ok(at) => at,
        // A stream that cannot be read may hold newer data than the snapshots: said, and the
        // snapshots restore; with none, it is the failure.
        Err(f) if newest_snapshot.is_some() => {
            tracing::warn!("{}; restoring the newest snapshot", f.full());
            None
        }
        Err(f) => return Err(f),
    };
    if let Some(stream_at) = stream_at {
        if newest_snapshot.is_none_or(|t| t < stream_at) {
            tracing::warn!(
                "{} is missing: restoring the newest state of its stream (read at {stream_at}) before anything else",
                url.display()
            );
            match super::stream::restore(
                settings,
                url,
                &super::stream::Target::Newest,
                None,
                false,
                true,
            )
            .await
            {
                Ok(None) => return Ok(IfMissing::Exists),
                Ok(Some(r)) => return Ok(IfMissing::Streamed(r)),
                Err(f) if f.damaged && newest_snapshot.is_some() => tracing::warn!(
                    "the stream does not verify ({}); restoring the newest snapshot instead",
                    f.full()
                ),
                Err(f) => return Err(f),
            }
        }
    }
    let Some(backup::Found {
        at,
        store,
        value: candidates,
    }) = found
    else {
        tracing::warn!(
            "{} is missing and no store holds a snapshot of it: starting fresh",
            url.display()
        );
        return Ok(IfMissing::NoSnapshot);
    };
    if at > 0 {
        tracing::warn!(
            "the primary store holds no snapshot of {}; using mirror {at}",
            url.name()
        );
    }
    let opts = Options {
        force: false,
        terminate_connections: false,
        to: None,
    };
    for m in &candidates {
        tracing::warn!(
            "{} is missing: restoring its newest snapshot {} before anything else",
            url.display(),
            m.id
        );
        let copies = stores.starting_at(store);
        match restore_with(settings, &copies, url, m, &opts, true).await {
            Ok(None) => return Ok(IfMissing::Exists),
            Ok(Some(restored)) => return Ok(IfMissing::Restored(restored)),
            // A snapshot that is itself bad: the next newest. Anything else (no key, no space,
            // the database in use) would fail the older one too, or must be fixed first.
            Err(f) if f.damaged => {
                tracing::warn!(
                    "snapshot {} does not verify ({}); trying the one before",
                    m.id,
                    f.full()
                );
            }
            Err(f) => return Err(f),
        }
    }
    Err(Failure::new(
        Exit::Failed,
        format!(
            "{} is missing, and none of its {} snapshot(s) verifies; nothing was restored",
            url.display(),
            candidates.len()
        ),
    ))
}

/// Restores snapshot `m` from the first of `stores` whose copy verifies, over the live
/// database (or into `opts.to`). The replaced database is kept and recorded.
pub async fn restore_snapshot(
    settings: &Settings,
    stores: &[&backup::Store],
    url: &DatabaseUrl,
    m: &backup::Manifest,
    opts: &Options,
) -> Result<Restored, Failure> {
    restore_with(settings, stores, url, m, opts, false)
        .await?
        .ok_or_else(|| Failure::new(Exit::Failed, "the restore found the database present"))
}

/// [`restore_snapshot`]; with `if_missing`, only while the database is still missing once the
/// restore holds its lock (`None` when it is not).
async fn restore_with(
    settings: &Settings,
    stores: &[&backup::Store],
    url: &DatabaseUrl,
    m: &backup::Manifest,
    opts: &Options,
    if_missing: bool,
) -> Result<Option<Restored>, Failure> {
    // A deploy's position in the stream: its generation's base and steps up to it.
    if let (DatabaseUrl::Sqlite(_), Some(p)) = (url, &m.stream) {
        tracing::info!(
            "restoring snapshot {}: the stream's state at step {} of generation {} (read at {})",
            m.id,
            p.seq,
            p.generation,
            p.captured_at
        );
        let target = super::stream::Target::Point(p.clone());
        let r = super::stream::restore(
            settings,
            url,
            &target,
            opts.to.as_deref(),
            opts.force,
            if_missing,
        )
        .await?;
        return Ok(r.map(|r| Restored {
            snapshot: m.id.clone(),
            outcome: r.outcome,
            seconds: r.seconds,
            copy: r.store,
        }));
    }
    let started = Instant::now();
    tracing::info!(
        "restoring snapshot {} ({}) into {}",
        m.id,
        backup::bytes(m.stored_bytes),
        opts.to.as_deref().unwrap_or(&url.display())
    );
    // An encrypted snapshot needs an identity: refused before anything is fetched (a
    // plaintext one needs none, whatever the identity settings say).
    let identities = settings.identities_for(m)?;
    let outcome = match url {
        DatabaseUrl::Sqlite(live) => {
            restore::sqlite::restore(
                live,
                stores,
                m,
                &restore::sqlite::Options {
                    force: opts.force,
                    to: opts.to.as_ref().map(std::path::PathBuf::from),
                    if_missing,
                    lock_wait: LOCK_WAIT,
                    identities,
                },
            )
            .await?
        }
        DatabaseUrl::Postgres(pg) => {
            restore_postgres(settings, stores, url, pg, m, opts, if_missing, identities).await?
        }
    };
    let Some(outcome) = outcome else {
        return Ok(None);
    };
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!("restored snapshot {} in {seconds:.1}s", m.id);
    // A copy of the replaced database was kept: record it, and trim the oldest beyond
    // restore.keep_replaced (an in-place restore kept a snapshot instead).
    if let Some(kept) = outcome.replaced.as_ref().and_then(Replaced::kept_copy) {
        crate::replaced::record_and_trim(settings, url, &kept, &m.id).await;
    }
    Ok(Some(Restored {
        snapshot: m.id.clone(),
        copy: stores[outcome.copy].describe(&m.data_key),
        outcome,
        seconds,
    }))
}

/// PostgreSQL: a rename swap where one is possible, else in place after a snapshot of the
/// state before (none for a missing database, which has nothing to keep).
#[allow(clippy::too_many_arguments)]
async fn restore_postgres(
    settings: &Settings,
    stores: &[&backup::Store],
    url: &DatabaseUrl,
    pg: &migrator::database::PgUrl,
    m: &backup::Manifest,
    opts: &Options,
    if_missing: bool,
    identities: backup::crypt::Identities,
) -> Result<Option<Outcome>, Failure> {
    let (target_url, to) = match &opts.to {
        Some(to) => match DatabaseUrl::parse(to)? {
            DatabaseUrl::Postgres(t) => {
                let name = t.config.get_dbname().unwrap_or_default().to_string();
                (t, Some(name))
            }
            DatabaseUrl::Sqlite(_) => {
                return Err(Failure::new(
                    Exit::Usage,
                    "--to: a PostgreSQL snapshot restores into a postgres:// URL",
                ))
            }
        },
        None => (Box::new(pg.clone()), None),
    };
    let swap_blocked = if opts.to.is_none() {
        restore::postgres::rename_impossible(pg)
    } else {
        None
    };
    // The archive streams from the store into pg_restore (a copy that fails its checksum is
    // dropped and the next one restored); an encrypted snapshot no identity opens is refused
    // before pg_restore starts, and before any session is ended.
    let swapped = match swap_blocked {
        Some(why) => Swapped::NeedsInPlace(why),
        None => {
            restore::postgres::restore_any(
                &target_url,
                stores,
                m,
                &restore::postgres::Options {
                    terminate_connections: opts.terminate_connections,
                    to,
                    if_missing,
                    identities: identities.clone(),
                },
            )
            .await?
            .0?
        }
    };
    let outcome = match swapped {
        Swapped::NeedsInPlace(why) => {
            let (fetched, copy) = restore::fetch_any(stores, m, &settings.temp_dir()).await?;
            // An encrypted snapshot no identity opens is refused here, before a session is
            // ended or the in-place restore's snapshot taken.
            let header = std::fs::File::open(&fetched).map_err(|e| {
                Failure::new(Exit::Failed, format!("opening {}: {e}", fetched.display()))
            })?;
            identities.check_opens(header, m)?;
            let kept = if if_missing {
                // A missing (empty) database has nothing to keep, and no snapshot (nor
                // identity) is made of it; it is looked at again right before.
                if !backup::owner::is_missing(url).await? {
                    tracing::info!("{} appeared meanwhile: nothing restored", url.display());
                    return Ok(None);
                }
                tracing::warn!("restoring {} in place: {why}", url.display());
                None
            } else {
                // The replaced state is kept first, as a snapshot of its own.
                tracing::warn!(
                    "restoring {} in place: {why}. Taking a snapshot of its current state first",
                    url.display()
                );
                Some(
                    super::take::snapshot(
                        settings,
                        url,
                        backup::Kind::Manual,
                        Some(format!("before the in-place restore of {}", m.id)),
                    )
                    .await?,
                )
            };
            let mut out = restore::postgres::restore_in_place(
                pg,
                &fetched,
                m,
                &identities,
                opts.terminate_connections,
                why,
            )
            .await
            .map_err(|e| {
                let mut f = Failure::from(e);
                if let Some(k) = &kept {
                    f.message
                        .push_str(&format!(" (the state before is snapshot {})", k.id));
                }
                f
            })?;
            out.replaced = kept.map(|k| Replaced::Snapshot(k.id));
            out.copy = copy;
            out
        }
        Swapped::Done(Some(out)) => out,
        Swapped::Done(None) => return Ok(None),
    };
    Ok(Some(outcome))
}

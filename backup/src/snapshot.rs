//! Taking a snapshot: the engine's consistent stream, compressed (and encrypted) once by the
//! pipeline and fanned out to the primary store and its mirrors, each copy's manifest written
//! last, after its data object's size was confirmed in the store.

use std::path::Path;
use std::time::{Duration, Instant};

use dbconn::DatabaseUrl;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::catalog::{check_folder_name, manifest_key};
use crate::error::Error;
use crate::manifest::{self, Kind, Manifest};
use crate::store::set::StoreSet;
use crate::store::Store;
use crate::{bytes, hostname};
use crate::{crypt, engine, owner, pipeline};

pub struct Request<'a> {
    pub database: &'a DatabaseUrl,
    pub kind: Kind,
    pub label: Option<String>,
    /// zstd level (default 3).
    pub level: i32,
    /// Where a SQLite database not in WAL mode is copied before it is compressed.
    pub temp_dir: &'a Path,
    /// How long the snapshot may wait for a table lock (SQLite busy timeout, pg_dump's
    /// `--lock-wait-timeout`), so a backup never stalls a deploy.
    pub lock_timeout: Duration,
    /// Called with (raw bytes read so far, estimated total) as the stream advances.
    pub progress: Option<Progress>,
    /// Encrypt the stored object to these (age).
    pub encryption: Option<std::sync::Arc<crypt::Encryption>>,
    /// Record table names and row counts in the manifest (`encryption.manifest_details`).
    pub manifest_details: bool,
    /// A PostgreSQL cluster's base backup (`pg_basebackup`) instead of a `pg_dump` of the
    /// database; its WAL must be in the primary store's archive.
    pub physical: bool,
}

pub type Progress = std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Takes one snapshot into `store` and returns its manifest (already stored).
pub async fn take(store: &Store, req: &Request<'_>) -> Result<Manifest, Error> {
    take_into(store, &[], true, req).await.map(|t| t.manifest)
}

/// A snapshot taken to a primary store and its mirrors.
pub struct Taken {
    pub manifest: Manifest,
    /// The mirrors (by index into the `mirrors` given) that did not get their copy, and why;
    /// empty unless `require_all` was false.
    pub failed_mirrors: Vec<(usize, Error)>,
}

/// Takes one snapshot into the primary store and every mirror at once: the compressed stream
/// is read once and written to each, each copy with its own manifest, written last (the
/// mirrors' first, the primary's last). The primary must succeed. With `require_all`, so must
/// every mirror, and a copy that failed anywhere leaves no complete snapshot on the primary
/// (the data objects this run wrote are removed, by their exact keys); without it, a failing
/// mirror is reported in [`Taken::failed_mirrors`] and the others go on.
pub async fn take_to(stores: &StoreSet, req: &Request<'_>) -> Result<Taken, Error> {
    let mirrors: Vec<&Store> = stores.mirrors().map(|(_, s)| s).collect();
    take_into(stores.primary(), &mirrors, stores.require_all(), req).await
}

async fn take_into(
    primary: &Store,
    mirrors: &[&Store],
    require_all: bool,
    req: &Request<'_>,
) -> Result<Taken, Error> {
    let started = Instant::now();
    let at = OffsetDateTime::now_utc();
    let id = manifest::snapshot_id(at, req.kind);
    // The identity is made before the snapshot, so the snapshot carries it.
    owner::ensure_identity(req.database, req.lock_timeout).await;
    let (prepared, base) = prepare_source(req, &id, primary).await?;
    dbconn::failpoint::hit("backup-after-prepare").map_err(Error::Source)?;
    let database = req.database.name();
    check_folder_name(&database)?;
    let db_id = prepared.database_id.clone();
    check_owner(primary, &database, &db_id).await?;
    // (index into `mirrors`, store) of the mirrors still taking a copy.
    let (active, mut failed_mirrors) =
        owned_mirrors(mirrors, &database, &db_id, require_all).await?;
    let data_key = manifest::data_key(&database, &id, prepared.format, req.encryption.is_some());
    let all: Vec<&Store> = std::iter::once(primary)
        .chain(active.iter().map(|(_, s)| *s))
        .collect();
    // Chunks of the largest size any store needs for a database this size.
    let opts = pipeline::Options {
        level: req.level,
        workers: prepared.workers,
        chunk_size: all
            .iter()
            .map(|s| s.chunk_size(prepared.size_hint))
            .fold(0, usize::max),
        encryption: req.encryption.clone(),
    };
    tracing::info!(
        "snapshot {id}: {} → {}",
        req.database.display(),
        all.iter()
            .map(|s| s.describe(&data_key))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut manifest = draft(req, &id, at, &database, &data_key, &prepared);
    let engine::Prepared {
        mut reader,
        finish,
        keep,
        size_hint,
        ..
    } = prepared;
    // Two chunks in the channel: memory stays at a few chunks whatever the database's size.
    let (tx, rx) = mpsc::channel(2);
    let progress = req.progress.clone();
    let total = size_hint;
    let producer = tokio::task::spawn_blocking(move || {
        let report = |done: u64| {
            if let Some(p) = &progress {
                p(done, total)
            }
        };
        pipeline::compress(&mut reader, finish, &opts, tx, &report)
    });
    let (stored, produced) = tokio::join!(upload_all(&all, &data_key, rx, require_all), producer);
    let produced =
        produced.map_err(|e| Error::Source(format!("the compression thread panicked: {e}")))?;
    // Ends the exporting transaction (and gives the backups' lock back), or removes the temp
    // copy.
    keep.end().await;
    // The copies whose upload completed: removed again (by their exact key, this run's own)
    // when the snapshot as a whole fails.
    let completed: Vec<bool> = stored.iter().map(Result::is_ok).collect();
    let discard = || async {
        for (s, done) in all.iter().zip(&completed) {
            if *done {
                let _ = s.delete(&data_key).await;
            }
        }
    };
    let stats = match produced {
        Ok(stats) => stats,
        Err(e) => {
            discard().await;
            return Err(stream_failure(e, stored, require_all));
        }
    };
    // A base counts only with the WAL that makes it consistent in the primary's archive.
    let physical = match &base {
        Some(base) => match base_facts(primary, &database, base).await {
            Ok(p) => Some(p),
            Err(e) => {
                discard().await;
                return Err(e);
            }
        },
        None => None,
    };
    let mut copied = vec![false; all.len()];
    let checked = check_copies(&all, stored, stats.stored_bytes, &data_key).await;
    for (n, problem) in checked.into_iter().enumerate() {
        let Some(problem) = problem else {
            copied[n] = true;
            continue;
        };
        if n == 0 || require_all {
            discard().await;
            return Err(problem);
        }
        failed_mirrors.push((active[n - 1].0, problem));
    }

    let elapsed = started.elapsed();
    manifest.physical = physical;
    manifest.raw_bytes = stats.raw_bytes;
    manifest.stored_bytes = stats.stored_bytes;
    manifest.sha256 = stats.sha256;
    manifest.duration_ms = elapsed.as_millis() as u64;
    let manifest = manifest;
    dbconn::failpoint::hit("backup-before-manifest").map_err(Error::Source)?;
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest always serializes");
    // Mirrors first, the primary last: with `require_all`, a copy that failed anywhere leaves
    // no complete snapshot on the primary.
    match mirror_manifests(&all, &copied, &manifest, &json, require_all).await {
        Ok(failed) => {
            failed_mirrors.extend(failed.into_iter().map(|(n, e)| (active[n - 1].0, e)));
        }
        Err(e) => {
            discard().await;
            return Err(e);
        }
    }
    primary
        .put_new(&manifest_key(&database, &id), &json)
        .await?;
    dbconn::failpoint::hit("backup-after-manifest").map_err(Error::AfterChange)?;
    if let Some(db_id) = &manifest.database_id {
        owner::claim(primary, &database, db_id, &manifest.engine, &manifest.host).await?;
    }
    log_stored(&manifest, elapsed);
    failed_mirrors.sort_by_key(|(i, _)| *i);
    Ok(Taken {
        manifest,
        failed_mirrors,
    })
}

/// The manifest of snapshot `id` as far as the source's facts go: what the stream produces
/// (sizes, checksum, a base's WAL range, the time it took) is filled in once it is stored.
fn draft(
    req: &Request<'_>,
    id: &str,
    at: OffsetDateTime,
    database: &str,
    data_key: &str,
    prepared: &engine::Prepared,
) -> Manifest {
    Manifest {
        format_version: manifest::FORMAT_VERSION,
        id: id.to_string(),
        kind: req.kind,
        label: req.label.clone(),
        created_at: manifest::now_rfc3339(at),
        engine: prepared.engine.into(),
        server_version: prepared.server_version.clone(),
        pg_dump_version: prepared.pg_dump_version.clone(),
        physical: None,
        stream: None,
        point: None,
        database: database.to_string(),
        database_id: prepared.database_id.clone(),
        host: hostname(),
        dbward_version: env!("CARGO_PKG_VERSION").into(),
        format: prepared.format,
        data_key: data_key.to_string(),
        raw_bytes: 0,
        stored_bytes: 0,
        sha256: String::new(),
        compression: manifest::Compression {
            algorithm: "zstd".into(),
            level: req.level,
        },
        encryption: req.encryption.as_ref().map(|e| manifest::Encryption {
            scheme: "age".into(),
            recipients: e.names(),
        }),
        migration_head: prepared.head.clone(),
        row_counts: if req.manifest_details {
            prepared.row_counts.clone()
        } else {
            Default::default()
        },
        duration_ms: 0,
    }
}

/// `snapshot <id> stored: 1.2 GiB raw, 300 MiB stored (4.1x), 12.0s, 100 MB/s`.
fn log_stored(m: &Manifest, elapsed: std::time::Duration) {
    tracing::info!(
        "snapshot {} stored: {} raw, {} stored ({:.1}x), {:.1}s, {:.0} MB/s",
        m.id,
        bytes(m.raw_bytes),
        bytes(m.stored_bytes),
        m.raw_bytes as f64 / m.stored_bytes.max(1) as f64,
        elapsed.as_secs_f64(),
        m.raw_bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-3),
    );
}

/// Why a stream that did not complete failed: the source's own failure is the cause; "the
/// store stopped receiving" is the echo of a store's error (the primary's, or any copy's under
/// `require_all`), so that store's error is the one to report.
fn stream_failure(e: Error, stored: Vec<Result<u64, Error>>, require_all: bool) -> Error {
    let stopped = stored.into_iter().enumerate().find_map(|(n, r)| match r {
        Err(se) if n == 0 || require_all => Some(se),
        _ => None,
    });
    match (e, stopped) {
        (e @ Error::Source(_), _) => e,
        (_, Some(se)) => se,
        (e, None) => e,
    }
}

/// Every store's upload of the compressed stream on `rx`, fanned out (one bounded channel
/// each, see [`fan_out`]); each upload's result, in the order of `stores`.
async fn upload_all(
    stores: &[&Store],
    data_key: &str,
    rx: mpsc::Receiver<pipeline::Msg>,
    require_all: bool,
) -> Vec<Result<u64, Error>> {
    let mut senders = Vec::new();
    let mut uploads = Vec::new();
    for s in stores {
        let (tx, rx) = mpsc::channel(2);
        senders.push(Some(tx));
        uploads.push(s.put_stream(data_key, rx));
    }
    let (stored, ()) = tokio::join!(
        futures_util::future::join_all(uploads),
        fan_out(rx, senders, require_all)
    );
    stored
}

/// The engine's source for `req`: a SQLite file's pages, a `pg_dump`, or a base
/// (`pg_basebackup`, with what the manifest needs of it once the WAL is archived).
async fn prepare_source(
    req: &Request<'_>,
    id: &str,
    primary: &Store,
) -> Result<(engine::Prepared, Option<crate::pitr::base::Base>), Error> {
    Ok(match req.database {
        DatabaseUrl::Sqlite(_) if req.physical => {
            return Err(Error::Refused(
                "a physical base backup is PostgreSQL's; a SQLite snapshot already is a copy of the database file (drop --physical)".into(),
            ))
        }
        DatabaseUrl::Sqlite(path) => (
            engine::sqlite::prepare(path, req.temp_dir, req.lock_timeout)?,
            None,
        ),
        DatabaseUrl::Postgres(pg) if req.physical => {
            let (p, base) =
                crate::pitr::base::prepare(pg, id, primary, &req.database.name()).await?;
            (p, Some(base))
        }
        DatabaseUrl::Postgres(pg) => (
            engine::postgres::prepare(pg, req.lock_timeout).await?,
            None,
        ),
    })
}

/// The mirrors whose folder is this database's (index into `mirrors`, store), and the others
/// with why; with `require_all`, the first that is not is the error.
#[allow(clippy::type_complexity)]
async fn owned_mirrors<'a>(
    mirrors: &[&'a Store],
    database: &str,
    db_id: &Option<String>,
    require_all: bool,
) -> Result<(Vec<(usize, &'a Store)>, Vec<(usize, Error)>), Error> {
    let mut active = Vec::new();
    let mut failed = Vec::new();
    for (i, m) in mirrors.iter().enumerate() {
        match check_owner(m, database, db_id).await {
            Ok(()) => active.push((i, *m)),
            Err(e) if require_all => return Err(e),
            Err(e) => failed.push((i, e)),
        }
    }
    Ok((active, failed))
}

/// Each upload against the bytes produced: `None` for a complete copy; an object of another
/// size is removed (this run's own key) and is a problem, as is an upload that failed.
async fn check_copies(
    stores: &[&Store],
    stored: Vec<Result<u64, Error>>,
    expected: u64,
    data_key: &str,
) -> Vec<Option<Error>> {
    let mut out = Vec::new();
    for (store, result) in stores.iter().zip(stored) {
        out.push(match result {
            Ok(size) if size == expected => None,
            Ok(size) => {
                let _ = store.delete(data_key).await;
                Some(Error::Store {
                    what: store.describe(data_key),
                    message: format!("holds {size} bytes, {expected} were sent; the object was removed and no manifest written"),
                })
            }
            Err(e) => Some(e),
        });
    }
    out
}

/// The manifest (and the folder's claim) in each mirror that holds a complete copy
/// (`stores[1..]`, where `copied` says so). Without `require_all`, the mirrors that failed come
/// back (by their place in `stores`). With it, a failure removes the mirrors' manifests written
/// so far and is the error: no store is left with a manifest whose data the caller removes.
async fn mirror_manifests(
    stores: &[&Store],
    copied: &[bool],
    manifest: &Manifest,
    json: &[u8],
    require_all: bool,
) -> Result<Vec<(usize, Error)>, Error> {
    let key = manifest_key(&manifest.database, &manifest.id);
    let mut written: Vec<&Store> = Vec::new();
    let mut failed = Vec::new();
    for n in 1..stores.len() {
        if !copied[n] {
            continue;
        }
        let store = stores[n];
        let result = async {
            store.put_new(&key, json).await?;
            written.push(store);
            if let Some(db_id) = &manifest.database_id {
                owner::claim(
                    store,
                    &manifest.database,
                    db_id,
                    &manifest.engine,
                    &manifest.host,
                )
                .await?;
            }
            Ok::<(), Error>(())
        }
        .await;
        if let Err(e) = result {
            if require_all {
                for s in written.iter().rev() {
                    let _ = s.delete(&key).await;
                }
                return Err(e);
            }
            failed.push((n, e));
        }
    }
    Ok(failed)
}

/// A base's facts, once its stream ended, checked against the WAL archive in `store`: the
/// archive is this cluster's and holds every segment from the base's start to its stop.
async fn base_facts(
    store: &Store,
    database: &str,
    base: &crate::pitr::base::Base,
) -> Result<manifest::Physical, Error> {
    let p = base.physical()?;
    let archive = store.describe(&format!("{database}/{}/", crate::pitr::wal::DIR));
    let cluster = crate::pitr::wal::read_cluster(store, database).await?;
    if cluster.system_identifier != p.system_identifier {
        return Err(Error::Refused(format!(
            "the WAL archive at {archive} belongs to the cluster {}, and this base backup is of the cluster {}: \
             this cluster's archive_command does not push into this store (or into this database's folder)",
            cluster.system_identifier, p.system_identifier
        )));
    }
    let stored = crate::pitr::wal::stored_from(store, database, &p.wal_first).await?;
    if let Some(name) = crate::pitr::base::segments(&p)?
        .into_iter()
        .find(|n| !stored.contains(n))
    {
        return Err(Error::Refused(format!(
            "the base backup needs WAL segment {name}, which is not in the archive at {archive}: \
             is archive_command `dbward wal-push %p` with this store, and is archiving working (see pg_stat_archiver)? The base was not kept."
        )));
    }
    Ok(p)
}

/// The store's folder for `database` is this database's (or no one's yet).
async fn check_owner(store: &Store, database: &str, db_id: &Option<String>) -> Result<(), Error> {
    match db_id {
        Some(id) => owner::check(store, database, id).await,
        None => owner::check_unidentified(store, database).await,
    }
}

/// Forwards the compressed stream to every store's upload. An upload that stops (its receiver
/// dropped) is a failed copy: the primary's (index 0), or any with `require_all`, stops the
/// whole stream (no upload gets `Done`, so each abandons its object); a mirror's otherwise
/// just stops that copy.
async fn fan_out(
    mut rx: mpsc::Receiver<pipeline::Msg>,
    mut senders: Vec<Option<mpsc::Sender<pipeline::Msg>>>,
    require_all: bool,
) {
    use pipeline::Msg;
    while let Some(msg) = rx.recv().await {
        for (n, slot) in senders.iter_mut().enumerate() {
            let Some(tx) = slot else { continue };
            let copy = match &msg {
                Msg::Data(d) => Msg::Data(d.clone()),
                Msg::Done => Msg::Done,
            };
            if tx.send(copy).await.is_err() {
                if n == 0 || require_all {
                    return; // every sender dropped without Done: all uploads abandon
                }
                *slot = None;
            }
        }
    }
}

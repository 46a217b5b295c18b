//! Snapshots: a consistent copy of the database in its standard format (a SQLite file, a
//! `pg_dump` custom-format archive), zstd-compressed on the way to the store, with a manifest
//! written last and only after the data object's size is confirmed in the store.
//!
//! [`take`] is the whole pipeline; [`list`] reads the manifests back. This crate does not know
//! about migrations' locking or the command line: the binary decides when a snapshot is taken.

pub mod crypt;
pub mod engine;
pub mod error;
pub mod manifest;
pub mod owner;
pub mod pipeline;
pub mod restore;
pub mod retention;
pub mod scratch;
pub mod store;

use std::path::Path;
use std::time::{Duration, Instant};

use migrator::DatabaseUrl;
use time::OffsetDateTime;
use tokio::sync::mpsc;

pub use error::{Error, ErrorKind};
pub use manifest::{Kind, Manifest};
pub use store::{S3Options, Store};

pub struct Request<'a> {
    pub database: &'a DatabaseUrl,
    pub kind: Kind,
    pub label: Option<String>,
    /// zstd level (default 3).
    pub level: i32,
    /// Where a SQLite copy is staged before it is compressed.
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
}

pub type Progress = std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Takes one snapshot into `store` and returns its manifest (already stored).
pub async fn take(store: &Store, req: &Request<'_>) -> Result<Manifest, Error> {
    take_to(store, &[], true, req).await.map(|t| t.manifest)
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
pub async fn take_to(
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
    let prepared = match req.database {
        DatabaseUrl::Sqlite(path) => engine::sqlite::prepare(path, req.temp_dir, req.lock_timeout)?,
        DatabaseUrl::Postgres(pg) => engine::postgres::prepare(pg, req.lock_timeout).await?,
    };
    migrator::failpoint::hit("backup-after-prepare").map_err(Error::Source)?;
    let database = req.database.name();
    check_folder_name(&database)?;
    let db_id = prepared.database_id.clone();
    check_owner(primary, &database, &db_id).await?;
    // (index into `mirrors`, store) of the mirrors still taking a copy.
    let mut active: Vec<(usize, &Store)> = Vec::new();
    let mut failed_mirrors = Vec::new();
    for (i, m) in mirrors.iter().enumerate() {
        match check_owner(m, &database, &db_id).await {
            Ok(()) => active.push((i, m)),
            Err(e) if require_all => return Err(e),
            Err(e) => failed_mirrors.push((i, e)),
        }
    }
    let data_key = manifest::data_key(&database, &id, prepared.format, req.encryption.is_some());
    let chunk_size = active
        .iter()
        .map(|(_, s)| s.chunk_size(prepared.size_hint))
        .fold(primary.chunk_size(prepared.size_hint), usize::max);
    let opts = pipeline::Options {
        level: req.level,
        workers: prepared.workers,
        chunk_size,
        encryption: req.encryption.clone(),
    };
    tracing::info!(
        "snapshot {id}: {} → {}",
        req.database.display(),
        std::iter::once(primary)
            .chain(active.iter().map(|(_, s)| *s))
            .map(|s| s.describe(&data_key))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let engine::Prepared {
        format,
        engine,
        server_version,
        pg_dump_version,
        head,
        database_id,
        row_counts,
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
    let all: Vec<&Store> = std::iter::once(primary)
        .chain(active.iter().map(|(_, s)| *s))
        .collect();
    let mut senders = Vec::new();
    let mut uploads = Vec::new();
    for s in &all {
        let (tx, rx) = mpsc::channel(2);
        senders.push(Some(tx));
        uploads.push(s.put_stream(&data_key, rx));
    }
    let fan_out = fan_out(rx, senders, require_all);
    let (stored, produced, ()) =
        tokio::join!(futures_util::future::join_all(uploads), producer, fan_out);
    let produced =
        produced.map_err(|e| Error::Source(format!("the compression thread panicked: {e}")))?;
    drop(keep); // ends the exporting transaction / removes the temp copy
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
        // The source's own failure is the cause; "the store stopped receiving" is the store's
        // error's echo, so the store's error is the one to report.
        Err(e) => {
            discard().await;
            let stopped = stored.into_iter().enumerate().find_map(|(n, r)| match r {
                Err(se) if n == 0 || require_all => Some(se),
                _ => None,
            });
            return Err(match (e, stopped) {
                (e @ Error::Source(_), _) => e,
                (_, Some(se)) => se,
                (e, None) => e,
            });
        }
    };
    let mut copied = vec![false; all.len()];
    for (n, result) in stored.into_iter().enumerate() {
        let problem = match result {
            Ok(size) if size == stats.stored_bytes => {
                copied[n] = true;
                continue;
            }
            Ok(size) => {
                let _ = all[n].delete(&data_key).await;
                Error::Store {
                    what: all[n].describe(&data_key),
                    message: format!("holds {size} bytes, {} were sent; the object was removed and no manifest written", stats.stored_bytes),
                }
            }
            Err(e) => e,
        };
        if n == 0 || require_all {
            discard().await;
            return Err(problem);
        }
        failed_mirrors.push((active[n - 1].0, problem));
    }

    let elapsed = started.elapsed();
    let manifest = Manifest {
        format_version: manifest::FORMAT_VERSION,
        id: id.clone(),
        kind: req.kind,
        label: req.label.clone(),
        created_at: manifest::now_rfc3339(at),
        engine: engine.into(),
        server_version,
        pg_dump_version,
        database: database.clone(),
        database_id,
        host: hostname(),
        dbward_version: env!("CARGO_PKG_VERSION").into(),
        format,
        data_key: data_key.clone(),
        raw_bytes: stats.raw_bytes,
        stored_bytes: stats.stored_bytes,
        sha256: stats.sha256,
        compression: manifest::Compression {
            algorithm: "zstd".into(),
            level: req.level,
        },
        encryption: req.encryption.as_ref().map(|e| manifest::Encryption {
            scheme: "age".into(),
            recipients: e.names(),
        }),
        migration_head: head,
        row_counts: if req.manifest_details {
            row_counts
        } else {
            Default::default()
        },
        duration_ms: elapsed.as_millis() as u64,
    };
    migrator::failpoint::hit("backup-before-manifest").map_err(Error::Source)?;
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest always serializes");
    // Mirrors first, the primary last: with `require_all`, a copy that failed anywhere leaves
    // no complete snapshot on the primary.
    // With `require_all`, a failure undoes the mirrors' manifests written so far before their
    // data: no store is left with a manifest whose data is gone.
    let mut manifests_written: Vec<&Store> = Vec::new();
    for n in 1..all.len() {
        if !copied[n] {
            continue;
        }
        let store = all[n];
        let written = async {
            store.put_new(&manifest_key(&database, &id), &json).await?;
            manifests_written.push(store);
            if let Some(db_id) = &manifest.database_id {
                owner::claim(store, &database, db_id, &manifest.engine, &manifest.host).await?;
            }
            Ok::<(), Error>(())
        }
        .await;
        if let Err(e) = written {
            if require_all {
                for s in manifests_written.iter().rev() {
                    let _ = s.delete(&manifest_key(&database, &id)).await;
                }
                discard().await;
                return Err(e);
            }
            failed_mirrors.push((active[n - 1].0, e));
        }
    }
    primary
        .put_new(&manifest_key(&database, &id), &json)
        .await?;
    migrator::failpoint::hit("backup-after-manifest").map_err(Error::AfterChange)?;
    if let Some(db_id) = &manifest.database_id {
        owner::claim(primary, &database, db_id, &manifest.engine, &manifest.host).await?;
    }
    tracing::info!(
        "snapshot {id} stored: {} raw, {} stored ({:.1}x), {:.1}s, {:.0} MB/s",
        bytes(stats.raw_bytes),
        bytes(stats.stored_bytes),
        stats.raw_bytes as f64 / stats.stored_bytes.max(1) as f64,
        elapsed.as_secs_f64(),
        stats.raw_bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-3),
    );
    failed_mirrors.sort_by_key(|(i, _)| *i);
    Ok(Taken {
        manifest,
        failed_mirrors,
    })
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

/// What a restore drill leaves next to the snapshot it proved (or failed to prove).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DrillReceipt {
    pub snapshot: String,
    /// RFC 3339, UTC.
    pub at: String,
    pub success: bool,
    pub rto_seconds: Option<f64>,
    /// The first check that failed.
    pub failed_check: Option<String>,
}

pub fn receipt_key(database: &str, id: &str) -> String {
    format!("{database}/{id}.drill.json")
}

/// The drill receipts of `database`'s snapshots, by snapshot id.
pub async fn receipts(
    store: &Store,
    database: &str,
) -> Result<std::collections::HashMap<String, DrillReceipt>, Error> {
    check_folder_name(database)?;
    let objects = store.list(database).await?;
    read_receipts(store, database, &objects).await
}

async fn read_receipts(
    store: &Store,
    database: &str,
    objects: &[store::ObjectInfo],
) -> Result<std::collections::HashMap<String, DrillReceipt>, Error> {
    let mut out = std::collections::HashMap::new();
    for obj in objects {
        let Some(manifest::OwnKey::Receipt(id)) = manifest::OwnKey::parse(database, &obj.key)
        else {
            continue;
        };
        let bytes = store.get_bytes(&obj.key).await?;
        // A receipt that does not parse, or speaks of another snapshot, proves nothing; it is
        // skipped, not fatal.
        match serde_json::from_slice::<DrillReceipt>(&bytes) {
            Ok(r) if r.snapshot == id => {
                out.insert(id, r);
            }
            _ => tracing::warn!(
                "ignoring drill receipt {}: not readable",
                store.describe(&obj.key)
            ),
        }
    }
    Ok(out)
}

pub fn manifest_key(database: &str, id: &str) -> String {
    format!("{database}/{id}.json")
}

/// A database's name is its folder in the store: one path segment, nothing that would lead
/// out of the store's prefix.
pub fn check_folder_name(database: &str) -> Result<(), Error> {
    let bad = database.is_empty()
        || database == "."
        || database == ".."
        || database.contains(['/', '\\', '\0']);
    if bad {
        return Err(Error::Refused(format!(
            "the database name `{database}` cannot be a folder of the store (it would lead outside the store's prefix); nothing was read or written"
        )));
    }
    Ok(())
}

/// An object in a database's folder that looks like a manifest but is not a usable one.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Damaged {
    pub key: String,
    pub problem: String,
}

/// A database's snapshots (newest first) and the manifests that could not be used.
#[derive(Debug, Default)]
pub struct Listing {
    pub snapshots: Vec<Manifest>,
    pub damaged: Vec<Damaged>,
}

/// Every snapshot of `database` in the store, newest first. Only manifests count: data without
/// a manifest is not a snapshot. A damaged manifest (one that does not parse, a foreign
/// `.json`, names that are not dbward's) is skipped with a warning naming it; every other
/// snapshot stays usable.
pub async fn list(store: &Store, database: &str) -> Result<Vec<Manifest>, Error> {
    let listing = list_all(store, database).await?;
    for d in &listing.damaged {
        tracing::warn!("skipping {}: {}", store.describe(&d.key), d.problem);
    }
    Ok(listing.snapshots)
}

/// [`list`], with the damaged manifests returned rather than logged.
pub async fn list_all(store: &Store, database: &str) -> Result<Listing, Error> {
    check_folder_name(database)?;
    let objects = store.list(database).await?;
    read_manifests(store, database, &objects).await
}

fn is_manifest_candidate(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.ends_with(".json") && !name.ends_with(".drill.json") && !name.starts_with('.')
}

async fn read_manifests(
    store: &Store,
    database: &str,
    objects: &[store::ObjectInfo],
) -> Result<Listing, Error> {
    let mut out = Listing::default();
    for obj in objects.iter().filter(|o| is_manifest_candidate(&o.key)) {
        // A read that fails is an error, not a damaged manifest: skipping it could make an
        // older snapshot look like the latest.
        let bytes = store.get_bytes(&obj.key).await?;
        let checked = serde_json::from_slice::<Manifest>(&bytes)
            .map_err(|e| format!("not a dbward manifest: {e}"))
            .and_then(|m| m.check_names(database, &obj.key).map(|()| m));
        match checked {
            Ok(m) => out.snapshots.push(m),
            Err(problem) => out.damaged.push(Damaged {
                key: obj.key.clone(),
                problem,
            }),
        }
    }
    out.snapshots
        .sort_by(|a, b| (b.created(), &b.id).cmp(&(a.created(), &a.id)));
    Ok(out)
}

#[derive(Debug, serde::Serialize)]
pub struct PruneReport {
    pub policy: retention::Policy,
    pub decisions: Vec<retention::Decision>,
    /// Snapshot ids removed (or, with `dry_run`, that would be).
    pub removed: Vec<String>,
    /// Data objects and partial uploads without a manifest, older than a day, removed.
    pub orphans: Vec<String>,
    pub dry_run: bool,
}

/// Applies `policy` to `database`'s snapshots. For each snapshot removed, the manifest goes
/// first, then the data: a crash in between leaves an orphan data object (removed by the next
/// prune), never a manifest without its data. Orphans younger than a day are left alone: they
/// may be an upload in progress.
pub async fn prune(
    store: &Store,
    database: &str,
    policy: &retention::Policy,
    dry_run: bool,
    live: &owner::Live,
    format: manifest::Format,
) -> Result<PruneReport, Error> {
    check_folder_name(database)?;
    let objects = store.list(database).await?;
    let listing = read_manifests(store, database, &objects).await?;
    for d in &listing.damaged {
        tracing::warn!(
            "skipping {} (left alone): {}",
            store.describe(&d.key),
            d.problem
        );
    }
    let manifests = listing.snapshots;
    // Retention counts and removes only this database's snapshots: another database's in the
    // same folder are neither kept by its rules nor pruned by them.
    let folder_owner = owner::read(store, database).await?;
    let mine = owner::mine(
        store,
        database,
        manifests.clone(),
        live,
        format,
        folder_owner.as_ref(),
    )?;
    let mut decisions = retention::decide(&mine, policy);
    // The newest snapshot that passed a drill is the one known to restore: never removed.
    let receipts = read_receipts(store, database, &objects).await?;
    if let Some(proven) = mine
        .iter()
        .find(|m| receipts.get(&m.id).is_some_and(|r| r.success))
    {
        if let Some(d) = decisions.iter_mut().find(|d| d.id == proven.id) {
            d.keep = true;
            d.reasons.push("drilled");
        }
    }
    let mut removed = Vec::new();
    for d in decisions.iter().filter(|d| !d.keep) {
        let m = mine
            .iter()
            .find(|m| m.id == d.id)
            .expect("decisions come from these manifests");
        if !dry_run {
            // Every key deleted is built from the checked id by dbward's own scheme, never
            // taken from the manifest's text.
            store.delete(&manifest_key(database, &m.id)).await?;
            migrator::failpoint::hit("prune-after-manifest-delete").map_err(Error::AfterChange)?;
            store
                .delete(&manifest::data_key(
                    database,
                    &m.id,
                    m.format,
                    m.encryption.is_some(),
                ))
                .await?;
            store.delete(&receipt_key(database, &m.id)).await?;
            tracing::info!("pruned snapshot {}", m.id);
        }
        removed.push(m.id.clone());
    }
    let day_ago = std::time::SystemTime::now() - Duration::from_secs(24 * 3600);
    // Orphans: only objects named by dbward's scheme (data or a receipt whose snapshot has no
    // manifest, a partial write) and older than a day, since a younger one may be a backup in
    // progress. Anything else in the folder is not dbward's and stays.
    let damaged_ids: Vec<&str> = listing
        .damaged
        .iter()
        .filter_map(|d| d.key.rsplit('/').next()?.strip_suffix(".json"))
        .collect();
    let mut orphans = Vec::new();
    for obj in &objects {
        let orphan = match manifest::OwnKey::parse(database, &obj.key) {
            Some(manifest::OwnKey::Data(id, ..) | manifest::OwnKey::Receipt(id)) => {
                // A damaged manifest's data is kept: someone may still want to inspect it.
                !manifests.iter().any(|m| m.id == id) && !damaged_ids.contains(&id.as_str())
            }
            Some(manifest::OwnKey::Partial(_)) => true,
            Some(manifest::OwnKey::Manifest(_)) | None => false,
        };
        let old = obj.modified.is_some_and(|t| t < day_ago);
        if orphan && old {
            if !dry_run {
                store.delete(&obj.key).await?;
                tracing::info!("removed orphan {}", store.describe(&obj.key));
            }
            orphans.push(obj.key.clone());
        }
    }
    // Multipart uploads a killed backup left behind (S3). A store that cannot list them must not
    // stop retention from working.
    match store.abort_stale_uploads(database, day_ago, dry_run).await {
        Ok(aborted) => orphans.extend(aborted),
        Err(e) => tracing::warn!("could not clean stale multipart uploads: {e}"),
    }
    Ok(PruneReport {
        policy: *policy,
        decisions,
        removed,
        orphans,
        dry_run,
    })
}

/// This host's name, as manifests, the deploy log and notifications record it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// `1.2 GiB`: sizes in log lines are for people.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

//! Retention applied: [`crate::retention`]'s rules decide, this removes, manifest first, and
//! only this database's snapshots under dbward's own naming scheme.

use std::time::Duration;

use crate::catalog::{check_folder_name, manifest_key, read_manifests, read_receipts, receipt_key};
use crate::error::Error;
use crate::manifest;
use crate::store::Store;
use crate::{owner, retention};

#[derive(Debug, serde::Serialize)]
pub struct PruneReport {
    pub policy: retention::Policy,
    pub decisions: Vec<retention::Decision>,
    /// Snapshot ids removed (or, with `dry_run`, that would be).
    pub removed: Vec<String>,
    /// Data objects and partial uploads without a manifest, older than a day, removed.
    pub orphans: Vec<String>,
    /// WAL files older than every kept base needs (base retention only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub wal_removed: Vec<String>,
    pub dry_run: bool,
}

/// Applies `policy` to `database`'s snapshots of each of `formats`, each format's by the
/// rules among its own (dumps among dumps, bases among bases), over one listing of the folder.
/// For each snapshot removed, the manifest goes first, then the data: a crash in between
/// leaves an orphan data object (removed by the next prune), never a manifest without its
/// data. Orphans younger than a day are left alone: they may be an upload in progress.
pub async fn prune(
    store: &Store,
    database: &str,
    policy: &retention::Policy,
    dry_run: bool,
    live: &owner::Live,
    formats: &[manifest::Format],
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
    let folder = Folder {
        store,
        database,
        manifests: &listing.snapshots,
        // Retention counts and removes only this database's snapshots: another database's in
        // the same folder are neither kept by its rules nor pruned by them.
        owner: owner::read(store, database).await?,
        live,
        receipts: read_receipts(store, database, &objects).await?,
        generations: if formats.contains(&manifest::Format::Streampoint) {
            store.list(&crate::stream::dir(database)).await?
        } else {
            Vec::new()
        }
        .iter()
        .filter_map(|o| {
            let name = o
                .key
                .strip_prefix(&format!("{}/", crate::stream::dir(database)))?
                .strip_suffix(".json")?;
            crate::stream::is_generation_name(name).then(|| name.to_string())
        })
        .collect(),
    };
    let mut decisions = Vec::new();
    let mut removed = Vec::new();
    for &format in formats {
        let (mine, decided) = folder.decide(format, policy, &removed)?;
        for d in decided.iter().filter(|d| !d.keep) {
            let m = mine
                .iter()
                .find(|m| m.id == d.id)
                .expect("decisions come from these manifests");
            if !dry_run {
                remove_snapshot(store, database, m).await?;
            }
            removed.push(m.id.clone());
        }
        decisions.extend(decided);
    }
    let day_ago = std::time::SystemTime::now() - Duration::from_secs(24 * 3600);
    let mut orphans = remove_orphans(&folder, &objects, &listing.damaged, day_ago, dry_run).await?;
    // Multipart uploads a killed backup left behind (S3). A store that cannot list them must not
    // stop retention from working.
    // Only data objects of dbward's naming scheme in this database's folder.
    let ours = |key: &str| {
        matches!(
            manifest::OwnKey::parse(database, key),
            Some(manifest::OwnKey::Data(..))
        )
    };
    match store
        .abort_stale_uploads(database, day_ago, dry_run, &ours)
        .await
    {
        Ok(aborted) => orphans.extend(aborted),
        Err(e) => tracing::warn!("could not clean stale multipart uploads: {e}"),
    }
    let wal_removed = if formats.contains(&manifest::Format::Pgbase) {
        prune_wal(&folder, &listing.damaged, &removed, dry_run).await?
    } else {
        Vec::new()
    };
    Ok(PruneReport {
        policy: *policy,
        decisions,
        removed,
        orphans,
        wal_removed,
        dry_run,
    })
}

/// One database's folder as prune reads it: its manifests, who owns it, the live database's
/// identity and the drill receipts.
struct Folder<'a> {
    store: &'a Store,
    database: &'a str,
    manifests: &'a [manifest::Manifest],
    owner: Option<owner::Owner>,
    live: &'a owner::Live,
    receipts: std::collections::HashMap<String, crate::catalog::DrillReceipt>,
    /// The stream's generations whose records are in the folder (SQLite).
    generations: std::collections::BTreeSet<String>,
}

impl Folder<'_> {
    /// This database's snapshots of `format`, and what the rules decide for each, with the
    /// exceptions: a restore point no staying base comes before goes; the newest base before a
    /// kept point stays; the newest snapshot that passed a drill stays. `removed`: the ids
    /// already removed by this run (the bases, before the points are decided).
    fn decide(
        &self,
        format: manifest::Format,
        policy: &retention::Policy,
        removed: &[String],
    ) -> Result<(Vec<manifest::Manifest>, Vec<retention::Decision>), Error> {
        let mine = self.mine(format)?;
        let mut decided = retention::decide(&mine, policy);
        // A restore point no staying base comes before cannot be restored: it goes whatever
        // the rules say (its WAL goes with the bases).
        if format == manifest::Format::Pgpoint {
            let bases: Vec<&manifest::Manifest> = self
                .manifests
                .iter()
                .filter(|m| m.format == manifest::Format::Pgbase && !removed.contains(&m.id))
                .collect();
            for d in decided.iter_mut().filter(|d| d.keep) {
                let m = mine
                    .iter()
                    .find(|m| m.id == d.id)
                    .expect("decided from these");
                if !crate::pitr::point::restorable(m, &bases) {
                    d.keep = false;
                    d.reasons.clear();
                    tracing::info!("restore point {} has no base before it any more", m.id);
                }
            }
        }
        // A stream position whose generation is gone cannot be restored: it goes whatever the
        // rules say (the stream's retention keeps every generation a position names).
        if format == manifest::Format::Streampoint {
            for d in decided.iter_mut().filter(|d| d.keep) {
                let m = mine
                    .iter()
                    .find(|m| m.id == d.id)
                    .expect("decided from these");
                if m.stream
                    .as_ref()
                    .is_none_or(|p| !self.generations.contains(&p.generation))
                {
                    d.keep = false;
                    d.reasons.clear();
                    tracing::info!("stream position {} has no generation any more", m.id);
                }
            }
        }
        // A restore point the rules keep needs a base before it: the newest such base is kept
        // too (a deploy's restore point stays usable while a later base is taken).
        if format == manifest::Format::Pgbase {
            let points = self.mine(manifest::Format::Pgpoint)?;
            for kept in retention::decide(&points, policy).iter().filter(|d| d.keep) {
                let point = points.iter().find(|m| m.id == kept.id).expect("decided");
                let Some(base) = mine
                    .iter()
                    .filter(|b| crate::pitr::point::restorable(point, &[b]))
                    .max_by_key(|b| (b.created(), b.id.clone()))
                else {
                    continue;
                };
                if let Some(d) = decided.iter_mut().find(|d| d.id == base.id) {
                    if !d.keep {
                        d.keep = true;
                        d.reasons.push("point");
                    }
                }
            }
        }
        // The newest snapshot that passed a drill is the one known to restore: never removed.
        if let Some(proven) = mine
            .iter()
            .find(|m| self.receipts.get(&m.id).is_some_and(|r| r.success))
        {
            if let Some(d) = decided.iter_mut().find(|d| d.id == proven.id) {
                d.keep = true;
                d.reasons.push("drilled");
            }
        }
        Ok((mine, decided))
    }

    /// This database's snapshots of `format` among the folder's.
    fn mine(&self, format: manifest::Format) -> Result<Vec<manifest::Manifest>, Error> {
        owner::mine(
            self.store,
            self.database,
            self.manifests.to_vec(),
            self.live,
            format,
            self.owner.as_ref(),
        )
    }
}

/// Removes one snapshot: its manifest first, then its data and its drill receipt. Every key
/// deleted is built from the checked id by dbward's own scheme, never taken from the
/// manifest's text.
async fn remove_snapshot(
    store: &Store,
    database: &str,
    m: &manifest::Manifest,
) -> Result<(), Error> {
    store.delete(&manifest_key(database, &m.id)).await?;
    dbconn::failpoint::hit("prune-after-manifest-delete").map_err(Error::AfterChange)?;
    // A restore point or a stream position has no data object of its own.
    if !matches!(
        m.format,
        manifest::Format::Pgpoint | manifest::Format::Streampoint
    ) {
        store
            .delete(&manifest::data_key(
                database,
                &m.id,
                m.format,
                m.encryption.is_some(),
            ))
            .await?;
    }
    store.delete(&receipt_key(database, &m.id)).await?;
    tracing::info!("pruned snapshot {}", m.id);
    Ok(())
}

/// Orphans: only objects named by dbward's scheme (data or a receipt whose snapshot has no
/// manifest, a partial write) and older than a day, since a younger one may be a backup in
/// progress. Anything else in the folder is not dbward's and stays.
async fn remove_orphans(
    folder: &Folder<'_>,
    objects: &[crate::store::ObjectInfo],
    damaged: &[crate::catalog::Damaged],
    day_ago: std::time::SystemTime,
    dry_run: bool,
) -> Result<Vec<String>, Error> {
    let damaged_ids: Vec<&str> = damaged
        .iter()
        .filter_map(|d| d.key.rsplit('/').next()?.strip_suffix(".json"))
        .collect();
    let mut orphans = Vec::new();
    for obj in objects {
        let orphan = match manifest::OwnKey::parse(folder.database, &obj.key) {
            Some(manifest::OwnKey::Data(id, ..) | manifest::OwnKey::Receipt(id)) => {
                // A damaged manifest's data is kept: someone may still want to inspect it.
                !folder.manifests.iter().any(|m| m.id == id) && !damaged_ids.contains(&id.as_str())
            }
            Some(manifest::OwnKey::Partial(_)) => true,
            Some(manifest::OwnKey::Manifest(_)) | None => false,
        };
        let old = obj.modified.is_some_and(|t| t < day_ago);
        if orphan && old {
            if !dry_run {
                folder.store.delete(&obj.key).await?;
                tracing::info!("removed orphan {}", folder.store.describe(&obj.key));
            }
            orphans.push(obj.key.clone());
        }
    }
    Ok(orphans)
}

/// With bases, the WAL no kept base needs goes too: after the bases' manifests, so a crash in
/// between leaves WAL a later prune removes, never a base without its WAL. The WAL is kept for
/// every base that stays in the folder, whoever's it is (this rule's or not), and not touched
/// at all while a manifest there cannot be read: its base may need any of it.
async fn prune_wal(
    folder: &Folder<'_>,
    damaged: &[crate::catalog::Damaged],
    removed: &[String],
    dry_run: bool,
) -> Result<Vec<String>, Error> {
    if !damaged.is_empty() {
        tracing::warn!(
            "the WAL archive is not pruned: {} manifest(s) in {} cannot be read, and the bases they describe may need any of it",
            damaged.len(),
            folder.store.describe(folder.database)
        );
        return Ok(Vec::new());
    }
    let staying: Vec<&manifest::Manifest> = folder
        .manifests
        .iter()
        .filter(|m| m.format == manifest::Format::Pgbase && !removed.contains(&m.id))
        .collect();
    crate::pitr::wal::prune_unneeded(folder.store, folder.database, &staying, dry_run).await
}

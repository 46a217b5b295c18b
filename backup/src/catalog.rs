//! What a store holds for a database: its keys (manifests, drill receipts), its snapshots read
//! back from their manifests (damaged ones set aside, never fatal), and the drills' receipts.

use crate::error::Error;
use crate::manifest::{self, Manifest};
use crate::store;
use crate::store::Store;

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

pub(crate) async fn read_receipts(
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

pub(crate) async fn read_manifests(
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

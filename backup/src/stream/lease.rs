//! One replicator per database across hosts: the stream's lease in the store.
//!
//! On one machine the `flock` beside the database file decides (two containers on one volume
//! share the kernel that holds it). Across machines nothing is shared but the store, so each
//! generation's folder holds `holder.json` ([`Holder`]): which machine (its boot id), process
//! and lease file write the generation. The replicator writes it when the generation begins and again
//! every [`RENEW`]; a generation whose newest object was stored less than [`TTL`] ago is held.
//!
//! - A replicator that starts where the newest generation of its database is held by another
//!   machine or another file is refused ([`Error::Held`]); once that holder has stored nothing
//!   for [`TTL`], it takes over (a new generation).
//! - A running replicator that finds, at a renewal, a newer generation of its database written
//!   by another holder (it took over while this one could not reach the store) stops: two
//!   streams are never written on.
//!
//! The clocks of the hosts and of the store meet in the stored objects' times: a skew of a
//! minute is within [`TTL`]. `holder.json` is a key of the generation's own folder, written only
//! by its replicator.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::store::Store;

/// How long after its newest stored object a generation is still held.
pub const TTL: Duration = Duration::from_secs(180);
/// How often a running replicator says it is there (and looks for a newer holder).
pub const RENEW: Duration = Duration::from_secs(60);
/// The holder's name in a generation's folder.
pub const NAME: &str = "holder.json";

/// Who writes a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id`: one per machine and boot (containers share their
    /// host's).
    pub boot_id: String,
    pub pid: u32,
    /// The device and inode of the lease file beside the database (`<db>.dbward-replicate-lock`,
    /// which outlives the database file being replaced): on the same boot, the same lease file
    /// means the same `flock`, which this replicator holds.
    pub dev: u64,
    pub ino: u64,
    pub path: String,
}

impl Holder {
    /// This process, replicating the file at `db` (its lease taken).
    pub fn me(db: &Path) -> Result<Holder, Error> {
        let lease = dbconn::sqlite::lease_path(db);
        let meta =
            std::fs::metadata(&lease).map_err(Error::io(format!("reading {}", lease.display())))?;
        Ok(Holder {
            host: crate::hostname(),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            pid: std::process::id(),
            dev: meta.dev(),
            ino: meta.ino(),
            path: std::fs::canonicalize(db)
                .unwrap_or_else(|_| db.to_path_buf())
                .display()
                .to_string(),
        })
    }

    /// The same lease file on the same machine and boot: its `flock` decides.
    fn same_file(&self, other: &Holder) -> bool {
        !self.boot_id.is_empty()
            && self.boot_id == other.boot_id
            && (self.dev, self.ino) == (other.dev, other.ino)
    }
}

/// `<database>/stream/<generation>/holder.json`.
pub fn key(database: &str, generation: &str) -> String {
    format!("{}/{NAME}", super::generation_dir(database, generation))
}

/// Says, in the store, that `me` writes `generation`.
pub async fn hold(
    store: &Store,
    database: &str,
    generation: &str,
    me: &Holder,
) -> Result<(), Error> {
    store
        .put(
            &key(database, generation),
            &serde_json::to_vec_pretty(me).expect("serializes"),
        )
        .await
}

/// What [`check`] found the newest generation to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Newest {
    /// None yet, or the one this replicator's local state goes on from.
    Mine,
    /// Another one, not held: this replicator may go on, from a new generation.
    Other(String),
}

/// Refused ([`Error::Held`]) when the newest generation of `database` (identity `id`) other
/// than `mine` (the one this replicator's local state goes on from) is held by another machine
/// or file: an object stored in it less than [`TTL`] ago.
pub async fn check(
    store: &Store,
    database: &str,
    id: Option<&str>,
    mine: Option<&str>,
    me: &Holder,
) -> Result<Newest, Error> {
    let Some(g) = super::restore::generations(store, database, id)
        .await?
        .into_iter()
        .next()
    else {
        return Ok(Newest::Mine);
    };
    if Some(g.generation.as_str()) == mine {
        return Ok(Newest::Mine);
    }
    let holder: Option<Holder> = match store.get_bytes(&key(database, &g.generation)).await {
        Ok(bytes) => serde_json::from_slice(&bytes).ok(),
        Err(Error::Missing(_)) => None,
        Err(e) => return Err(e),
    };
    if holder.as_ref().is_some_and(|h| h.same_file(me)) {
        return Ok(Newest::Other(g.generation));
    }
    let newest = store
        .list(&super::generation_dir(database, &g.generation))
        .await?
        .into_iter()
        .filter_map(|o| o.modified)
        .max();
    // A time ahead of this clock counts as now.
    let age = newest.map(|t| t.elapsed().unwrap_or_default());
    match age {
        Some(age) if age < TTL => Err(Error::Held(format!(
            "the stream of {database} is written by another replicator{}: generation {}, its newest object stored {}s ago. One replicator per database: stop that one (once nothing is stored for {}s, a replicator here takes over with a new generation)",
            holder
                .map(|h| format!(" (host {}, pid {}, {})", h.host, h.pid, h.path))
                .unwrap_or_default(),
            g.generation,
            age.as_secs(),
            TTL.as_secs()
        ))),
        _ => Ok(Newest::Other(g.generation)),
    }
}

/// A running replicator's renewal: says it holds `generation`, and refuses ([`Error::Held`])
/// when a newer generation of the database was begun by another holder meanwhile.
pub async fn renew(
    store: &Store,
    database: &str,
    id: Option<&str>,
    generation: &str,
    me: &Holder,
) -> Result<(), Error> {
    // Only names after this generation's are listed (S3's `start-after`): one request.
    let names: Vec<String> = store
        .list_after(&super::dir(database), Some(&format!("{generation}.json")))
        .await?
        .into_iter()
        .filter_map(|o| {
            let name = o.key.rsplit('/').next()?.strip_suffix(".json")?;
            (super::is_generation_name(name) && name > generation).then(|| name.to_string())
        })
        .collect();
    for name in names {
        let record = store
            .get_bytes(&super::generation_key(database, &name))
            .await?;
        let Ok(g) = serde_json::from_slice::<super::Generation>(&record) else {
            continue;
        };
        if !super::is_ours(g.database_id.as_deref(), id) {
            continue;
        }
        let holder: Option<Holder> = match store.get_bytes(&key(database, &g.generation)).await {
            Ok(bytes) => serde_json::from_slice(&bytes).ok(),
            Err(Error::Missing(_)) => None,
            Err(e) => return Err(e),
        };
        if !holder
            .as_ref()
            .is_some_and(|h| h.same_file(me) && h.pid == me.pid)
        {
            return Err(Error::Held(format!(
                "another replicator{} began generation {} of {database} after this one's ({generation}): it took the stream over while this one could not reach the store; this one stops so that two streams are never written on",
                holder
                    .map(|h| format!(" (host {}, pid {}, {})", h.host, h.pid, h.path))
                    .unwrap_or_default(),
                g.generation
            )));
        }
    }
    hold(store, database, generation, me).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::Generation;

    async fn store(dir: &Path) -> Store {
        Store::open(
            &format!("file://{}", dir.display()),
            &crate::store::StoreOptions::default(),
        )
        .await
        .unwrap()
    }

    /// A generation's record in `store`, as a replicator writes it once its base is stored.
    async fn generation(store: &Store, name: &str) {
        let g = Generation {
            dbward_stream: 1,
            generation: name.into(),
            database_id: None,
            started_at: "2026-12-06T17:00:00.000Z".into(),
            reason: "test".into(),
            page_size: 4096,
            page_count: 1,
            state: "0".repeat(32),
            base_key: super::super::base_key("app", name, false),
            base_stored_bytes: 1,
            base_sha256: String::new(),
        };
        store.put(&g.base_key, b"x").await.unwrap();
        store
            .put(
                &super::super::generation_key("app", name),
                &serde_json::to_vec(&g).unwrap(),
            )
            .await
            .unwrap();
    }

    fn holder(dir: &Path, name: &str) -> Holder {
        let db = dir.join(name);
        std::fs::write(&db, b"").unwrap();
        std::fs::write(dbconn::sqlite::lease_path(&db), b"").unwrap();
        Holder::me(&db).unwrap()
    }

    #[tokio::test]
    async fn a_fresh_generation_of_another_lease_file_is_held_and_ones_own_is_not() {
        let d = tempfile::tempdir().unwrap();
        let s = store(&d.path().join("store")).await;
        let (a, b) = (holder(d.path(), "a.db"), holder(d.path(), "b.db"));
        let g = "20261206T170000000000Z-aaaa";
        generation(&s, g).await;
        hold(&s, "app", g, &a).await.unwrap();
        let e = check(&s, "app", None, None, &b).await.unwrap_err();
        assert!(
            matches!(e, Error::Held(ref m) if m.contains(&a.path)),
            "{e}"
        );
        // The same lease file (a restarted replicator of the same file), or the generation its
        // own local state goes on from: not held.
        assert_eq!(
            check(&s, "app", None, None, &a).await.unwrap(),
            Newest::Other(g.into())
        );
        assert_eq!(
            check(&s, "app", None, Some(g), &b).await.unwrap(),
            Newest::Mine
        );
    }

    #[tokio::test]
    async fn a_newer_generation_of_another_holder_stops_the_renewal() {
        let d = tempfile::tempdir().unwrap();
        let s = store(&d.path().join("store")).await;
        let (a, b) = (holder(d.path(), "a.db"), holder(d.path(), "b.db"));
        let old = "20261206T170000000000Z-aaaa";
        let new = "20261206T170100000000Z-bbbb";
        generation(&s, old).await;
        renew(&s, "app", None, old, &a).await.unwrap();
        assert!(s.get_bytes(&key("app", old)).await.is_ok());
        generation(&s, new).await;
        hold(&s, "app", new, &b).await.unwrap();
        let e = renew(&s, "app", None, old, &a).await.unwrap_err();
        assert!(matches!(e, Error::Held(ref m) if m.contains(new)), "{e}");
        // The newer holder renews on.
        renew(&s, "app", None, new, &b).await.unwrap();
    }
}

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

/// One drill in the database's drill history (`<database>/drills/<at>-<tag>.json`, one small
/// record per drill that ran, whatever its verdict; never pruned with its snapshot, so trends and
/// "done by host B" outlive the snapshots).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DrillRecord {
    /// RFC 3339, UTC: when the drill ended.
    pub at: String,
    pub host: String,
    pub snapshot: String,
    /// What was drilled: a snapshot, a base and the WAL archive, or a SQLite stream.
    #[serde(default)]
    pub kind: DrillKind,
    pub success: bool,
    pub rto_seconds: Option<f64>,
    pub failed_check: Option<String>,
    /// Run as a scheduled job (`restore-drill --scheduled`).
    #[serde(default)]
    pub scheduled: bool,
}

/// The kinds of drill (`restore-drill`, `--physical`, `--stream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrillKind {
    #[default]
    Snapshot,
    Physical,
    Stream,
}

fn drill_records(database: &str) -> String {
    format!("{database}/drills")
}

/// Adds `r` to `database`'s drill history: a new key of its own (its moment and this process),
/// never written over.
pub async fn record_drill(store: &Store, database: &str, r: &DrillRecord) -> Result<(), Error> {
    check_folder_name(database)?;
    let stamp: String = r.at.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let key = format!(
        "{}/{stamp}-{:04x}.json",
        drill_records(database),
        std::process::id() % 0x10000
    );
    let json = serde_json::to_vec_pretty(r).expect("serializes");
    store.put_new(&key, &json).await
}

/// The newest `n` drills of `database`'s history, newest first.
pub async fn drills(store: &Store, database: &str, n: usize) -> Result<Vec<DrillRecord>, Error> {
    check_folder_name(database)?;
    newest_records(store, &drill_records(database), n).await
}

/// The newest `n` JSON records of a folder whose keys sort by their moment (the drill history,
/// the deploy log), newest first: one listing, `n` reads. One that does not parse is skipped
/// with a warning.
pub async fn newest_records<T: serde::de::DeserializeOwned>(
    store: &Store,
    dir: &str,
    n: usize,
) -> Result<Vec<T>, Error> {
    let mut keys: Vec<String> = store
        .list(dir)
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.ends_with(".json"))
        .collect();
    keys.sort();
    let mut out = Vec::new();
    for key in keys.iter().rev() {
        if out.len() == n {
            break;
        }
        match serde_json::from_slice(&store.get_bytes(key).await?) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!("skipping {}: not readable: {e}", store.describe(key)),
        }
    }
    Ok(out)
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
        if let Some(r) = parse_receipt(store, database, &id, &bytes) {
            out.insert(id, r);
        }
    }
    Ok(out)
}

/// A receipt that does not parse, or speaks of another snapshot, proves nothing: skipped with a
/// warning, never fatal.
fn parse_receipt(store: &Store, database: &str, id: &str, bytes: &[u8]) -> Option<DrillReceipt> {
    match serde_json::from_slice::<DrillReceipt>(bytes) {
        Ok(r) if r.snapshot == id => Some(r),
        _ => {
            tracing::warn!(
                "ignoring drill receipt {}: not readable",
                store.describe(&receipt_key(database, id))
            );
            None
        }
    }
}

/// The UTC second a manifest key's snapshot id begins with (`20261122T093000Z`): key order is
/// time order to the second.
fn second_of(key: &str) -> &str {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.get(..16).unwrap_or(name)
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

/// How many manifests are read at once: a store 20-60 ms away answers a listing of thousands
/// in seconds instead of minutes.
const CONCURRENT_READS: usize = 16;

/// The keys of `database`'s manifests (and of objects that look like one) listed after `after`
/// (a name in its folder; all of them for `None`), newest snapshot first: ids begin with their
/// UTC second (`20261122T093000Z-...`), so key order is time order to the second. A listing,
/// no manifest read.
async fn manifest_keys_after(
    store: &Store,
    database: &str,
    after: Option<&str>,
) -> Result<Vec<String>, Error> {
    let mut keys: Vec<String> = store
        .list_after(database, after)
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| is_manifest_candidate(k))
        .collect();
    keys.sort_unstable_by(|a, b| b.cmp(a));
    Ok(keys)
}

/// How far back each listing of [`NewestKeys`] reaches, newest first; the last one lists the
/// whole folder.
const WINDOWS: [Option<time::Duration>; 4] = [
    Some(time::Duration::days(1)),
    Some(time::Duration::days(32)),
    Some(time::Duration::days(400)),
    None,
];

/// The manifest keys of a database, newest first, listed a time window at a time: the
/// snapshots of the last day, then of the last month, the last year, then all of them. A
/// prefix holding years of snapshots answers `latest` with a listing of one day's keys (S3's
/// `start-after`), not pages of thousands. The clock only decides how much one listing holds,
/// never what is found: a window starts at a name (`<database>/<UTC second>`), every later
/// name is in it (ids a skewed clock dated in the future too), and each wider window adds only
/// the names at or before the previous start.
struct NewestKeys<'a> {
    store: &'a Store,
    database: &'a str,
    now: time::OffsetDateTime,
    /// The next window to list.
    window: usize,
    /// Where the previous window started: the keys after it were listed already.
    listed_after: Option<String>,
    /// Listed, not yet handed out, newest first.
    pending: std::collections::VecDeque<String>,
}

impl<'a> NewestKeys<'a> {
    fn new(store: &'a Store, database: &'a str) -> Result<Self, Error> {
        check_folder_name(database)?;
        Ok(NewestKeys {
            store,
            database,
            now: time::OffsetDateTime::now_utc(),
            window: 0,
            listed_after: None,
            pending: Default::default(),
        })
    }

    /// Up to `n` of the next keys, newest first. When the listed windows are used up, the next
    /// (wider) one is listed only if `widen`: a caller that has what it needs stops there,
    /// because every key not yet listed is of an earlier second than every key handed out.
    /// `None` when there are no more (or `widen` is false and the listed ones are used up).
    async fn next(&mut self, n: usize, widen: bool) -> Result<Option<Vec<String>>, Error> {
        while self.pending.is_empty() && widen && self.window < WINDOWS.len() {
            let start = WINDOWS[self.window].map(|back| manifest::compact_stamp(self.now - back));
            self.window += 1;
            let keys = manifest_keys_after(self.store, self.database, start.as_deref()).await?;
            let bound = self
                .listed_after
                .as_ref()
                .map(|a| format!("{}/{a}", self.database));
            self.pending.extend(
                keys.into_iter()
                    .filter(|k| bound.as_ref().is_none_or(|b| k <= b)),
            );
            match start {
                Some(s) => self.listed_after = Some(s),
                None => self.window = WINDOWS.len(),
            }
        }
        if self.pending.is_empty() {
            return Ok(None);
        }
        let take = n.min(self.pending.len());
        Ok(Some(self.pending.drain(..take).collect()))
    }
}

/// Reads the manifest at `key`: `Ok(Err(..))` when the object is not a usable manifest of
/// `database` (it does not parse, or its names are not this key's). A read that fails is an
/// error, never a damaged manifest: skipping it could make an older snapshot look like the
/// latest. A missing object is [`Error::Missing`].
pub async fn read_manifest(
    store: &Store,
    database: &str,
    key: &str,
) -> Result<Result<Manifest, Damaged>, Error> {
    // A manifest file this store holds but cannot read (its mode, a directory in its place)
    // is that manifest's problem, not the store's: set aside as damaged, so every other
    // snapshot stays usable. A store that does not answer is the store's.
    let bytes = match store.get_bytes(key).await {
        Ok(bytes) => bytes,
        Err(e @ Error::Io { .. }) => {
            return Ok(Err(Damaged {
                key: key.to_string(),
                problem: format!("cannot be read: {}", crate::error::chain(&e)),
            }))
        }
        Err(e) => return Err(e),
    };
    Ok(serde_json::from_slice::<Manifest>(&bytes)
        .map_err(|e| format!("not a dbward manifest: {e}"))
        .and_then(|m| m.check_names(database, key).map(|()| m).map_err(|e| e.0))
        .map_err(|problem| Damaged {
            key: key.to_string(),
            problem,
        }))
}

/// How many manifests [`newest`] reads at once.
const NEWEST_BATCH: usize = 8;

/// The newest snapshot of `database` that `accept` takes (it returns the manifest back, or
/// `None` for one that is not this database's). Manifests are read newest first,
/// [`NEWEST_BATCH`] at a time, only until one is accepted: a store with thousands of snapshots
/// answers in a listing of the last day's keys ([`NewestKeys`]) and a handful of reads. Once one is accepted, only the others of the
/// same second can still be newer (ids order snapshots to the second), so those are read too
/// and the newest by creation time wins, as in a full listing. Damaged manifests are skipped
/// with a warning naming them.
pub async fn newest(
    store: &Store,
    database: &str,
    accept: &dyn Fn(Manifest) -> Result<Option<Manifest>, Error>,
) -> Result<Option<Manifest>, Error> {
    let mut keys = NewestKeys::new(store, database)?;
    let mut best: Option<Manifest> = None;
    while let Some(batch) = keys.next(NEWEST_BATCH, best.is_none()).await? {
        if let Some(b) = &best {
            if second_of(&batch[0]) != second_of(&manifest_key(database, &b.id)) {
                break;
            }
        }
        let read =
            futures_util::future::join_all(batch.iter().map(|k| read_manifest(store, database, k)))
                .await;
        for r in read {
            let m = match r? {
                Ok(m) => m,
                Err(d) => {
                    tracing::warn!("skipping {}: {}", store.describe(&d.key), d.problem);
                    continue;
                }
            };
            if let Some(m) = accept(m)? {
                if best
                    .as_ref()
                    .is_none_or(|b| (m.created(), &m.id) > (b.created(), &b.id))
                {
                    best = Some(m);
                }
            }
        }
    }
    Ok(best)
}

/// At least the newest `n` snapshots of `database` (newest first; more when others share the
/// n-th one's second), with the damaged manifests met on the way: manifests are read newest
/// first, [`CONCURRENT_READS`] at a time, and reading stops there. `snapshots --limit N` on a
/// prefix of thousands reads the listings of the windows that hold them ([`NewestKeys`]) and
/// about N manifests.
pub async fn list_newest(store: &Store, database: &str, n: usize) -> Result<Listing, Error> {
    let mut keys = NewestKeys::new(store, database)?;
    let mut out = Listing::default();
    if n == 0 {
        return Ok(out);
    }
    while let Some(batch) = keys.next(CONCURRENT_READS, out.snapshots.len() < n).await? {
        if out.snapshots.len() >= n {
            let nth = &out.snapshots[n - 1];
            if second_of(&batch[0]) != second_of(&manifest_key(database, &nth.id)) {
                break;
            }
        }
        let read =
            futures_util::future::join_all(batch.iter().map(|k| read_manifest(store, database, k)))
                .await;
        for r in read {
            match r? {
                Ok(m) => out.snapshots.push(m),
                Err(d) => out.damaged.push(d),
            }
        }
        out.snapshots
            .sort_by(|a, b| (b.created(), &b.id).cmp(&(a.created(), &a.id)));
    }
    Ok(out)
}

/// The drill receipts of the snapshots `ids` (one read each, at once; a snapshot never drilled
/// has none).
pub async fn receipts_of(
    store: &Store,
    database: &str,
    ids: &[String],
) -> Result<std::collections::HashMap<String, DrillReceipt>, Error> {
    let read = futures_util::future::join_all(
        ids.iter()
            .map(|id| async move { (id, store.get_bytes(&receipt_key(database, id)).await) }),
    )
    .await;
    let mut out = std::collections::HashMap::new();
    for (id, r) in read {
        let bytes = match r {
            Ok(b) => b,
            Err(Error::Missing(_)) => continue,
            Err(e) => return Err(e),
        };
        if let Some(r) = parse_receipt(store, database, id, &bytes) {
            out.insert(id.clone(), r);
        }
    }
    Ok(out)
}

/// The manifests among `objects`, read [`CONCURRENT_READS`] at a time, newest first.
pub(crate) async fn read_manifests(
    store: &Store,
    database: &str,
    objects: &[store::ObjectInfo],
) -> Result<Listing, Error> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    let read: Vec<Result<Manifest, Damaged>> = stream::iter(
        objects
            .iter()
            .filter(|o| is_manifest_candidate(&o.key))
            .map(|o| read_manifest(store, database, &o.key)),
    )
    .buffered(CONCURRENT_READS)
    .try_collect()
    .await?;
    let mut out = Listing::default();
    for r in read {
        match r {
            Ok(m) => out.snapshots.push(m),
            Err(d) => out.damaged.push(d),
        }
    }
    out.snapshots
        .sort_by(|a, b| (b.created(), &b.id).cmp(&(a.created(), &a.id)));
    Ok(out)
}

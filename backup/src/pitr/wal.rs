//! The WAL archive: PostgreSQL's `archive_command` (`dbward wal-push %p`) and
//! `restore_command` (`dbward wal-fetch %f %p`).
//!
//! One object per WAL file, at a key its name fixes: `<database>/wal/<name>.zst`
//! (`.zst.age` when encryption is on), so a fetch is one GET, never a listing. The object is
//! plain zstd: a skippable frame holding a small JSON header (the file's name, size and
//! SHA-256, and the cluster's system identifier), then the file compressed. `zstd -d` (after
//! `age -d` for an encrypted one) skips the header and gives the WAL file back byte for byte;
//! dbward checks the size and SHA-256 against the header before PostgreSQL sees the file.
//!
//! A push writes the file's record first (`<name>.json`: size and SHA-256, plain JSON), then
//! the object; both are written once (the store's no-overwrite write: a hard link, S3's
//! `If-None-Match: *`), whole or not at all, so a push killed at any point leaves nothing a
//! fetch would serve, and a repeated push is compared with the record without any key.
//! `<database>/wal/cluster.json`, written by the first push of a segment and never
//! overwritten, names the cluster whose WAL this is; segments of any other cluster are refused.
//!
//! A WAL file is read whole into memory (a segment is 16 MiB unless the cluster was
//! initialised with another `--wal-segsize`): what a push or a fetch holds does not grow with
//! the database.

use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::crypt::{Encryption, Identities};
use crate::error::Error;
use crate::store::set::StoreSet;
use crate::store::Store;

/// The folder of a database's WAL archive, under its own folder in the store.
pub const DIR: &str = "wal";

/// The skippable-frame magic number the header is stored under (zstd reserves
/// 0x184D2A50-0x184D2A5F for frames a decoder skips).
const HEADER_MAGIC: u32 = 0x184D_2A5D;

/// What the header of a stored WAL file says about it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    /// The header's own format.
    pub dbward_wal: u32,
    /// The file's name, as PostgreSQL gave it (`%f`).
    pub name: String,
    /// Its size and SHA-256 (hex), before compression.
    pub bytes: u64,
    pub sha256: String,
    /// The cluster's system identifier (segments only; history files carry none).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub system_identifier: Option<String>,
}

/// The record of the cluster an archive belongs to.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Cluster {
    pub system_identifier: String,
    /// The segment whose push recorded it, and when (RFC 3339).
    pub first_segment: String,
    pub recorded_at: String,
}

/// The kinds of file PostgreSQL archives, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `000000010000000000000003`: 24 hex digits (timeline, log, segment).
    Segment,
    /// `000000010000000000000003.partial`: the last segment of a timeline a promotion ended.
    Partial,
    /// `00000002.history`: a timeline's history.
    History,
    /// `000000010000000000000003.00000028.backup`: a base backup's label.
    BackupLabel,
}

impl FileKind {
    /// The kind of WAL file `name` is; `None` for any name PostgreSQL does not archive (so no
    /// name from outside can reach another key, or another folder).
    pub fn of(name: &str) -> Option<FileKind> {
        let hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
        };
        match name.split('.').collect::<Vec<_>>().as_slice() {
            [seg] if hex(seg, 24) => Some(FileKind::Segment),
            [seg, "partial"] if hex(seg, 24) => Some(FileKind::Partial),
            [tli, "history"] if hex(tli, 8) => Some(FileKind::History),
            [seg, off, "backup"] if hex(seg, 24) && hex(off, 8) => Some(FileKind::BackupLabel),
            _ => None,
        }
    }

    /// Segments start with a long page header that names their cluster.
    fn has_system_identifier(self) -> bool {
        matches!(self, FileKind::Segment | FileKind::Partial)
    }
}

/// The key of WAL file `name` in `database`'s archive.
pub fn key(database: &str, name: &str, encrypted: bool) -> String {
    let age = if encrypted { ".age" } else { "" };
    format!("{database}/{DIR}/{name}.zst{age}")
}

/// The key of the cluster record.
pub fn cluster_key(database: &str) -> String {
    format!("{database}/{DIR}/cluster.json")
}

fn check_name(name: &str) -> Result<FileKind, Error> {
    FileKind::of(name).ok_or_else(|| {
        Error::Refused(format!(
            "`{name}` is not the name of a file PostgreSQL archives (a WAL segment, `.partial`, `.history` or `.backup` file)"
        ))
    })
}

/// The system identifier in a segment's first page (its long header: `xlp_info` has
/// `XLP_LONG_HEADER`, and `xlp_sysid` is at byte 24, `xlp_seg_size` at 32, both in the
/// server's byte order, little-endian on every platform dbward ships for).
fn system_identifier(name: &str, raw: &[u8], kind: FileKind) -> Result<u64, Error> {
    let not_wal = |why: &str| {
        Error::Refused(format!(
            "{name} does not look like a WAL segment ({why}); nothing was archived"
        ))
    };
    if raw.len() < 40 {
        return Err(not_wal("shorter than a page header"));
    }
    let u32_at = |at: usize| u32::from_le_bytes(raw[at..at + 4].try_into().expect("4 bytes"));
    let info = u16::from_le_bytes([raw[2], raw[3]]);
    if info & 0x0002 == 0 {
        return Err(not_wal("its first page has no long header"));
    }
    let seg_size = u32_at(32) as usize;
    if kind == FileKind::Segment && seg_size != raw.len() {
        return Err(not_wal(&format!(
            "its header says {seg_size} bytes, the file has {}",
            raw.len()
        )));
    }
    Ok(u64::from_le_bytes(raw[24..32].try_into().expect("8 bytes")))
}

/// What [`push`] needs besides the file.
pub struct PushOptions<'a> {
    /// zstd level.
    pub level: i32,
    pub encryption: Option<&'a Encryption>,
}

/// What [`push`] did.
#[derive(Debug, serde::Serialize)]
pub struct Pushed {
    pub name: String,
    pub key: String,
    pub bytes: u64,
    pub sha256: String,
    /// The size stored; `None` when the same file was already there.
    pub stored_bytes: Option<u64>,
}

/// Archives the WAL file at `path` in `database`'s archive, in the primary store and then in
/// each mirror, read and encoded once. A file already stored with the same
/// contents is success (PostgreSQL repeats a push whose answer it did not see); different
/// contents under the same name are refused, and the stored copy stays. The primary's failure
/// is the error; a mirror's is returned beside the result, by its number (1, 2, ...).
pub async fn push(
    stores: &StoreSet,
    database: &str,
    path: &Path,
    opts: &PushOptions<'_>,
) -> Result<(Pushed, Vec<(usize, Error)>), Error> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let kind = check_name(&name)?;
    let raw = std::fs::read(path).map_err(Error::io(format!("reading {}", path.display())))?;
    let sysid = match kind.has_system_identifier() {
        true => Some(system_identifier(&name, &raw, kind)?),
        false => None,
    };
    let header = Header {
        dbward_wal: 1,
        name: name.clone(),
        bytes: raw.len() as u64,
        sha256: crate::pipeline::hex(&Sha256::digest(&raw)),
        system_identifier: sysid.map(|id| id.to_string()),
    };
    let object = encode(&header, &raw, opts.level, opts.encryption)?;
    drop(raw);
    let key = key(database, &name, opts.encryption.is_some());
    let (stored, mirrors) = stores
        .each(|store| push_one(store, database, &header, sysid, &key, &object, opts))
        .await?;
    let failed = mirrors
        .into_iter()
        .filter_map(|m| m.result.err().map(|e| (m.mirror, e)))
        .collect();
    Ok((
        Pushed {
            name,
            key,
            bytes: header.bytes,
            sha256: header.sha256,
            stored_bytes: stored,
        },
        failed,
    ))
}

/// One store's copy: the cluster checked, the record first (never overwritten: whatever is
/// stored under this name from now on holds these contents, whichever form it takes), then
/// the object. `None` when an earlier push stored it already.
async fn push_one(
    store: &Store,
    database: &str,
    header: &Header,
    sysid: Option<u64>,
    key: &str,
    object: &[u8],
    opts: &PushOptions<'_>,
) -> Result<Option<u64>, Error> {
    if let Some(id) = sysid {
        check_cluster(store, database, id, &header.name).await?;
    }
    record(store, database, header, store_form(opts.encryption)).await?;
    match store.put_new(key, object).await {
        Ok(()) => Ok(Some(object.len() as u64)),
        // Written by an earlier push of these same contents: nothing is stored under a name
        // before its record, and the record matched.
        Err(Error::Exists(_)) => {
            tracing::info!(
                "{} is already in {}, with the same contents",
                header.name,
                store.describe(key)
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn store_form(encryption: Option<&Encryption>) -> &'static str {
    match encryption {
        Some(_) => "zstd+age",
        None => "zstd",
    }
}

/// The key of the record of WAL file `name`: its size, SHA-256 and system identifier, in
/// plain JSON (no key needed to read it, even when the file itself is encrypted).
pub fn record_key(database: &str, name: &str) -> String {
    format!("{database}/{DIR}/{name}.json")
}

/// Writes the record of `header`'s file, or finds it there: with the same size and SHA-256
/// it is the same file pushed again (PostgreSQL repeats a push whose answer it lost); with
/// others, it is refused and nothing changes.
async fn record(store: &Store, database: &str, header: &Header, form: &str) -> Result<(), Error> {
    let key = record_key(database, &header.name);
    let mut json = serde_json::to_value(header).expect("serializable");
    json["first_stored_as"] = form.into();
    let text = serde_json::to_vec_pretty(&json).expect("serializable");
    match store.put_new(&key, &text).await {
        Ok(()) => return Ok(()),
        Err(Error::Exists(_)) => {}
        Err(e) => return Err(e),
    }
    let there: Header = serde_json::from_slice(&store.get_bytes(&key).await?).map_err(|e| {
        Error::Damaged(format!(
            "{} is not a WAL record dbward wrote: {e}",
            store.describe(&key)
        ))
    })?;
    if there.bytes == header.bytes && there.sha256 == header.sha256 {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "{} is already in the archive ({}) with different contents ({} bytes, SHA-256 {}; this one: {} bytes, {}): the stored copy stays. Two clusters may be archiving into the same place, or this is a timeline's file written again after a restore: check archive_command's settings on every server that uses this store",
        header.name,
        store.describe(&key),
        there.bytes,
        there.sha256,
        header.bytes,
        header.sha256
    )))
}

/// Records the cluster on the first push; refuses a segment of another one.
async fn check_cluster(store: &Store, database: &str, id: u64, name: &str) -> Result<(), Error> {
    let key = cluster_key(database);
    let recorded = match store.get_bytes(&key).await {
        Ok(bytes) => bytes,
        Err(Error::Missing(_)) => {
            let record = Cluster {
                system_identifier: id.to_string(),
                first_segment: name.to_string(),
                recorded_at: crate::manifest::now_rfc3339(time::OffsetDateTime::now_utc()),
            };
            let text = serde_json::to_vec_pretty(&record).expect("serializable");
            match store.put_new(&key, &text).await {
                Ok(()) => {
                    tracing::info!(
                        "the WAL archive {} now belongs to the cluster with system identifier {id}",
                        store.describe(&key)
                    );
                    return Ok(());
                }
                // Another push recorded it first: compare with theirs.
                Err(Error::Exists(_)) => store.get_bytes(&key).await?,
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    let cluster: Cluster = serde_json::from_slice(&recorded).map_err(|e| {
        Error::Damaged(format!(
            "{} is not a cluster record dbward wrote: {e}",
            store.describe(&key)
        ))
    })?;
    if cluster.system_identifier != id.to_string() {
        return Err(Error::Refused(format!(
            "{name} is WAL of the cluster with system identifier {id}, but this archive ({}) holds the WAL of cluster {} (since {} at {}): nothing was archived. Each cluster needs its own archive: another database name or store prefix",
            store.describe(&key),
            cluster.system_identifier,
            cluster.first_segment,
            cluster.recorded_at
        )));
    }
    Ok(())
}

/// The stored object: the header's skippable frame, then the file compressed, all of it
/// age-encrypted when `encryption` is given.
fn encode(
    header: &Header,
    raw: &[u8],
    level: i32,
    encryption: Option<&Encryption>,
) -> Result<Vec<u8>, Error> {
    let io = |what: &'static str| Error::io(format!("compressing {} ({what})", header.name));
    let json = serde_json::to_vec(header).expect("serializable");
    let mut plain = Vec::with_capacity(raw.len() / 3 + json.len() + 8);
    crate::pipeline::write_header_frame(&mut plain, HEADER_MAGIC, &json)
        .expect("writing to memory");
    let mut enc = zstd::stream::write::Encoder::new(plain, level).map_err(io("zstd init"))?;
    enc.include_checksum(true).map_err(io("zstd checksum"))?;
    enc.write_all(raw).map_err(io("zstd"))?;
    let plain = enc.finish().map_err(io("zstd"))?;
    let Some(e) = encryption else {
        return Ok(plain);
    };
    let mut out = e
        .encryptor()?
        .wrap_output(Vec::with_capacity(plain.len() + 1024))
        .map_err(io("age header"))?;
    out.write_all(&plain).map_err(io("age"))?;
    out.finish().map_err(io("age"))
}

fn damaged(key: &str, why: impl std::fmt::Display) -> Error {
    Error::Damaged(format!("{key} is not a WAL file dbward stored: {why}"))
}

fn header_from(input: &mut impl Read, key: &str) -> Result<Header, Error> {
    use crate::pipeline::{read_header_frame, HeaderFrame};
    let json = read_header_frame(input, HEADER_MAGIC).map_err(|e| match e {
        HeaderFrame::Unreadable(e) => damaged(key, format!("reading its header: {e}")),
        HeaderFrame::NotOurs => damaged(key, "it does not start with dbward's header frame"),
    })?;
    serde_json::from_slice(&json).map_err(|e| damaged(key, format!("its header: {e}")))
}

/// What [`fetch`] found.
#[derive(Debug, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Fetched {
    /// Written to the path PostgreSQL gave, checked against its header.
    Restored { key: String, bytes: u64 },
    /// The archive does not have it (every key it could be under answered "no such key").
    Absent { keys: Vec<String> },
}

/// Fetches WAL file `name` from `database`'s archive into `dest`, checked against its
/// header's size and SHA-256. An object that fails a check is `Damaged`; only a name that no
/// key holds, in an archive that exists, is [`Fetched::Absent`].
pub async fn fetch(
    store: &Store,
    database: &str,
    name: &str,
    dest: &Path,
    identities: &Identities,
) -> Result<Fetched, Error> {
    check_name(name)?;
    // The key this host's settings suggest first; the other if that one is not there (a
    // segment pushed before encryption was turned on or off).
    let encrypted_first = identities.any();
    let keys = [
        key(database, name, encrypted_first),
        key(database, name, !encrypted_first),
    ];
    for key in &keys {
        let object = match store.get_bytes(key).await {
            Ok(object) => object,
            Err(Error::Missing(_)) => continue,
            Err(e) => return Err(e),
        };
        let bytes = write_checked(&object, key, name, dest, identities)?;
        return Ok(Fetched::Restored {
            key: key.clone(),
            bytes,
        });
    }
    // "Not there" is an answer only from an archive that exists: an empty directory where a
    // store was not mounted, or a wrong prefix or database name, must stop recovery, not end
    // it as if every file had been replayed.
    match store.get_bytes(&cluster_key(database)).await {
        Ok(_) => Ok(Fetched::Absent {
            keys: keys.to_vec(),
        }),
        Err(Error::Missing(_)) => Err(Error::Refused(format!(
            "{name} is not in {}, and neither is the record every archive has from its first push ({}): this is not a WAL archive (a wrong store, prefix or database name, or a directory that is not mounted)",
            store.describe(&keys[0]),
            store.describe(&cluster_key(database))
        ))),
        Err(e) => Err(e),
    }
}

/// Decodes `object` into `dest` and checks it; on any failure `dest` is removed again.
///
/// Written in place, not renamed from a temp file: PostgreSQL removes `%p` before it asks and
/// reads it only after an exit of 0, so a fetch killed halfway leaves a file it never uses
/// and removes before the next ask, where a temp file beside it would stay in `pg_wal` for
/// good.
fn write_checked(
    object: &[u8],
    key: &str,
    name: &str,
    dest: &Path,
    identities: &Identities,
) -> Result<u64, Error> {
    let mut input = identities.plain(object, key, "The WAL file was not fetched.")?;
    let header = header_from(&mut input, key)?;
    if header.name != name {
        return Err(damaged(key, format!("its header names {}", header.name)));
    }
    let mut file =
        std::fs::File::create(dest).map_err(Error::io(format!("creating {}", dest.display())))?;
    let written = (|| {
        let mut sink = crate::store::HashingWriter::new(&mut file);
        let mut decoder = zstd::stream::read::Decoder::new(input).map_err(|e| damaged(key, e))?;
        crate::restore::copy_split(
            &mut decoder,
            &mut sink,
            |e| damaged(key, format!("it does not decode: {e}")),
            |e| Error::io(format!("writing {}", dest.display()))(e),
        )?;
        let (bytes, sha256) = sink.finish();
        if bytes != header.bytes || sha256 != header.sha256 {
            return Err(damaged(
                key,
                format!(
                    "it decodes to {bytes} bytes with SHA-256 {sha256}, its header says {} bytes, {}",
                    header.bytes, header.sha256
                ),
            ));
        }
        Ok(bytes)
    })();
    if written.is_err() {
        drop(file);
        let _ = std::fs::remove_file(dest);
    }
    written
}

/// The archive's cluster record; refused when there is none (nothing was pushed there yet).
pub async fn read_cluster(store: &Store, database: &str) -> Result<Cluster, Error> {
    let cluster_key = cluster_key(database);
    match store.get_bytes(&cluster_key).await {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            Error::Damaged(format!(
                "{} is not a cluster record dbward wrote: {e}",
                store.describe(&cluster_key)
            ))
        }),
        Err(Error::Missing(_)) => Err(Error::Refused(format!(
            "there is no WAL archive at {} (no cluster record): nothing was pushed there yet, or the store, prefix or database name is not the archive's",
            store.describe(&format!("{database}/{DIR}/"))
        ))),
        Err(e) => Err(e),
    }
}

/// The WAL files whose objects (in either form) the archive holds, of those named `first` or
/// after it (one listing that starts there).
pub async fn stored_from(
    store: &Store,
    database: &str,
    first: &str,
) -> Result<std::collections::BTreeSet<String>, Error> {
    Ok(store
        .list_after(&format!("{database}/{DIR}"), Some(first))
        .await?
        .into_iter()
        // `first` itself is listed: its keys sort after its name (`<first>.zst` > `<first>`).
        .filter_map(|o| {
            let file = o.key.rsplit('/').next()?;
            let name = file
                .strip_suffix(".zst.age")
                .or_else(|| file.strip_suffix(".zst"))?;
            FileKind::of(name).map(|_| name.to_string())
        })
        .collect())
}

/// Removes the WAL files no kept base needs: segments (and `.partial` and `.backup` files)
/// before the oldest kept base's first segment, on any timeline (a segment's number is its
/// place in the WAL, which timelines share). Timeline history files stay (they are tiny, and
/// a recovery reads them all). Nothing is removed without a kept base: WAL with no base of
/// dbward's may be someone else's. Each file's object goes before its record, and every key
/// removed is built from a name PostgreSQL's scheme accepts, in this archive's folder.
pub async fn prune_unneeded(
    store: &Store,
    database: &str,
    kept: &[&crate::manifest::Manifest],
    dry_run: bool,
) -> Result<Vec<String>, Error> {
    // The oldest first segment of a kept base, by its place in the WAL (timeline aside). Each
    // base must be of this archive's cluster and name a segment, or nothing is removed.
    let mut cutoff: Option<String> = None;
    let cluster = match read_cluster(store, database).await {
        Ok(c) => c,
        Err(Error::Refused(_)) => return Ok(Vec::new()), // no archive here (a mirror)
        Err(e) => return Err(e),
    };
    for m in kept {
        let Some(p) = m.physical.as_ref() else {
            return Ok(Vec::new());
        };
        if FileKind::of(&p.wal_first) != Some(FileKind::Segment)
            || p.system_identifier != cluster.system_identifier
        {
            tracing::warn!(
                "the WAL archive is not pruned: base {} ({} of cluster {}) is not one this archive can speak for",
                m.id,
                p.wal_first,
                p.system_identifier
            );
            return Ok(Vec::new());
        }
        let place = p.wal_first[8..].to_string();
        if cutoff.as_ref().is_none_or(|c| place < *c) {
            cutoff = Some(place);
        }
    }
    let Some(cutoff) = cutoff else {
        return Ok(Vec::new());
    };
    let mut names = std::collections::BTreeSet::new();
    for o in store.list(&format!("{database}/{DIR}")).await? {
        let Some(file) = o.key.strip_prefix(&format!("{database}/{DIR}/")) else {
            continue;
        };
        let name = file
            .strip_suffix(".zst.age")
            .or_else(|| file.strip_suffix(".zst"))
            .or_else(|| file.strip_suffix(".json"))
            .unwrap_or_default();
        let before = match FileKind::of(name) {
            Some(FileKind::Segment | FileKind::Partial | FileKind::BackupLabel) => {
                name[8..24] < *cutoff
            }
            Some(FileKind::History) | None => false,
        };
        if before {
            names.insert(name.to_string());
        }
    }
    if !dry_run {
        for name in &names {
            for k in [
                key(database, name, false),
                key(database, name, true),
                record_key(database, name),
            ] {
                match store.delete(&k).await {
                    Ok(()) | Err(Error::Missing(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if !names.is_empty() {
            tracing::info!(
                "removed {} WAL files, {} to {} (no kept base needs them)",
                names.len(),
                names.first().expect("not empty"),
                names.last().expect("not empty")
            );
        }
    }
    Ok(names.into_iter().collect())
}

/// One timeline's segments in the archive, first to last.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Timeline {
    pub timeline: u32,
    pub first: String,
    pub last: String,
    pub segments: u64,
}

/// Segments missing between two the archive holds, on one timeline.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Gap {
    pub timeline: u32,
    /// The segments either side of the gap, both stored.
    pub after: String,
    pub before: String,
    pub missing: u64,
}

/// What `pitr verify` found in an archive.
#[derive(Debug, serde::Serialize)]
pub struct Verified {
    pub system_identifier: String,
    pub segment_bytes: Option<u64>,
    pub timelines: Vec<Timeline>,
    pub gaps: Vec<Gap>,
    /// The segment stored last, and how long ago (by the store's clock for the object).
    pub newest: Option<String>,
    pub lag_seconds: Option<f64>,
}

/// Lists `database`'s archive and checks that each timeline's segments follow one another
/// without a gap. One listing of the folder and one record read (for the segment size).
pub async fn verify(store: &Store, database: &str) -> Result<Verified, Error> {
    let cluster = read_cluster(store, database).await?;
    // Each stored segment (in either form), with when it was stored.
    let mut stored: std::collections::BTreeMap<(u32, String), Option<std::time::SystemTime>> =
        Default::default();
    for o in store.list(&format!("{database}/{DIR}")).await? {
        let file = o.key.rsplit('/').next().unwrap_or_default();
        let name = file
            .strip_suffix(".zst.age")
            .or_else(|| file.strip_suffix(".zst"))
            .unwrap_or_default();
        if FileKind::of(name) != Some(FileKind::Segment) {
            continue;
        }
        let timeline = u32::from_str_radix(&name[..8], 16).expect("24 hex digits");
        let when = stored
            .entry((timeline, name.to_string()))
            .or_insert(o.modified);
        *when = (*when).max(o.modified);
    }
    let mut verified = Verified {
        system_identifier: cluster.system_identifier,
        segment_bytes: None,
        timelines: Vec::new(),
        gaps: Vec::new(),
        newest: None,
        lag_seconds: None,
    };
    let Some(((_, any), _)) = stored.iter().next() else {
        return Ok(verified);
    };
    let record: Header =
        serde_json::from_slice(&store.get_bytes(&record_key(database, any)).await?)
            .map_err(|e| Error::Damaged(format!("the record of {any}: {e}")))?;
    let bytes = record.bytes;
    if !bytes.is_power_of_two() || !(1 << 20..=1 << 30).contains(&bytes) {
        return Err(Error::Damaged(format!(
            "the record of {any} gives a segment size of {bytes} bytes, not one PostgreSQL uses"
        )));
    }
    verified.segment_bytes = Some(bytes);
    let per_id = 0x1_0000_0000 / bytes;
    let segno = |name: &str| {
        let hex = |s: &str| u64::from_str_radix(s, 16).expect("hex digits");
        hex(&name[8..16]) * per_id + hex(&name[16..24])
    };
    // Keys sort by timeline, then by segment (fixed-width hex).
    for (timeline, name) in stored.keys() {
        let n = segno(name);
        match verified.timelines.last_mut() {
            Some(t) if t.timeline == *timeline => {
                let last = segno(&t.last);
                if n > last + 1 {
                    verified.gaps.push(Gap {
                        timeline: *timeline,
                        after: t.last.clone(),
                        before: name.clone(),
                        missing: n - last - 1,
                    });
                }
                t.last = name.clone();
                t.segments += 1;
            }
            _ => verified.timelines.push(Timeline {
                timeline: *timeline,
                first: name.clone(),
                last: name.clone(),
                segments: 1,
            }),
        }
    }
    if let Some(((_, name), when)) = stored.iter().max_by_key(|(_, when)| **when) {
        verified.newest = Some(name.clone());
        verified.lag_seconds = when.and_then(|w| w.elapsed().ok()).map(|d| d.as_secs_f64());
    }
    Ok(verified)
}

/// The WAL file and time of the server's last failed archiving, when archiving is on and it
/// failed after its last success (`pg_stat_archiver`); `None` when it works, is off, or the
/// server cannot be asked.
pub async fn archiving_failure(pg: &dbconn::PgUrl) -> Option<(String, String)> {
    let db = dbconn::postgres::Postgres::connect(pg).await.ok()?;
    let row = db
        .client()
        .query_opt(
            "SELECT coalesce(last_failed_wal, ''), coalesce(last_failed_time::text, '') FROM pg_stat_archiver \
             WHERE current_setting('archive_mode') <> 'off' \
               AND last_failed_time > coalesce(last_archived_time, '-infinity')",
            &[],
        )
        .await
        .ok()??;
    Some((row.get(0), row.get(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_postgresql_archives_are_taken() {
        let ok = [
            ("000000010000000000000003", FileKind::Segment),
            ("00000001000000A20000003F.partial", FileKind::Partial),
            ("00000002.history", FileKind::History),
            (
                "000000010000000000000003.00000028.backup",
                FileKind::BackupLabel,
            ),
        ];
        for (name, kind) in ok {
            assert_eq!(FileKind::of(name), Some(kind), "{name}");
        }
        for name in [
            "",
            "cluster.json",
            "../000000010000000000000003",
            "000000010000000000000003/..",
            "00000001000000000000000g",
            "00000001000000000000000a",
            "0000000100000000000000031",
            "000000010000000000000003.history",
            "00000002.partial",
            "000000010000000000000003.backup",
        ] {
            assert_eq!(FileKind::of(name), None, "{name:?} was taken");
        }
    }

    fn segment(sysid: u64, size: usize) -> Vec<u8> {
        let mut raw = vec![7u8; size];
        raw[..40].fill(0);
        raw[2] = 0x02; // XLP_LONG_HEADER
        raw[24..32].copy_from_slice(&sysid.to_le_bytes());
        raw[32..36].copy_from_slice(&(size as u32).to_le_bytes());
        raw
    }

    #[test]
    fn the_system_identifier_is_read_from_the_long_header() {
        let raw = segment(7_311_234_567_890_123_456, 1 << 16);
        assert_eq!(
            system_identifier("x", &raw, FileKind::Segment).unwrap(),
            7_311_234_567_890_123_456
        );
        let mut short_header = raw.clone();
        short_header[2] = 0;
        assert!(system_identifier("x", &short_header, FileKind::Segment).is_err());
        assert!(system_identifier("x", &raw[..1 << 15], FileKind::Segment).is_err());
        // A partial segment may be cut short.
        assert!(system_identifier("x", &raw[..1 << 15], FileKind::Partial).is_ok());
    }

    #[test]
    fn an_object_is_plain_zstd_that_gives_the_file_back() {
        let raw = segment(42, 1 << 16);
        let header = Header {
            dbward_wal: 1,
            name: "000000010000000000000003".into(),
            bytes: raw.len() as u64,
            sha256: crate::pipeline::hex(&Sha256::digest(&raw)),
            system_identifier: Some("42".into()),
        };
        let object = encode(&header, &raw, 3, None).unwrap();
        // Any zstd decoder skips the header frame.
        assert_eq!(zstd::decode_all(&object[..]).unwrap(), raw);
        let mut plain = Identities::none().plain(&object, "k", "").unwrap();
        assert_eq!(header_from(&mut plain, "k").unwrap(), header);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        let n = write_checked(&object, "k", &header.name, &dest, &Identities::none()).unwrap();
        assert_eq!(n, raw.len() as u64);
        assert_eq!(std::fs::read(&dest).unwrap(), raw);
        // Another name's object, a flipped byte: refused, nothing written.
        std::fs::remove_file(&dest).unwrap();
        let other = write_checked(
            &object,
            "k",
            "000000010000000000000004",
            &dest,
            &Identities::none(),
        );
        assert!(matches!(other, Err(Error::Damaged(_))), "{other:?}");
        let mut flipped = object.clone();
        let at = flipped.len() - 20;
        flipped[at] ^= 1;
        let bad = write_checked(&flipped, "k", &header.name, &dest, &Identities::none());
        assert!(matches!(bad, Err(Error::Damaged(_))), "{bad:?}");
        assert!(!dest.exists(), "a file that failed its check was left");
    }
}

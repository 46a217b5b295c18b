//! The manifest: one JSON object per snapshot, written last. A snapshot exists iff its manifest
//! does. Field names are the contract of `docs/contract.md` (`docs/manifest.schema.json`);
//! `format_version` guards later changes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    PreDeploy,
    Scheduled,
    Manual,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::PreDeploy => "pre-deploy",
            Kind::Scheduled => "scheduled",
            Kind::Manual => "manual",
        }
    }
}

/// The data object's format: what `zstd -d` gives back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A plain SQLite database file.
    Sqlite,
    /// `pg_dump --format=custom` output, for `pg_restore`.
    Pgdump,
    /// A PostgreSQL cluster's base backup: `pg_basebackup --format=tar` of the data directory
    /// (with its `backup_manifest`), for `tar -x` and the WAL archive.
    Pgbase,
    /// A restore point in the cluster's WAL archive (`pg_create_restore_point`): no data
    /// object of its own; a base before it and the archived WAL up to it restore it.
    Pgpoint,
    /// A position in a SQLite database's stream (`dbward replicate`): no data object of its
    /// own; the generation's base and its steps up to `seq` restore it.
    Streampoint,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Sqlite => "sqlite",
            Format::Pgdump => "pgdump",
            Format::Pgbase => "base.tar",
            Format::Pgpoint | Format::Streampoint => "point",
        }
    }
}

/// The migration head a snapshot holds.
pub use dbconn::Head;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub id: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// `sqlite` or `postgres`.
    pub engine: String,
    pub server_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_dump_version: Option<String>,
    /// A base backup's facts (format `pgbase` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<Physical>,
    /// A restore point's facts (format `pgpoint` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<Point>,
    /// A stream position's facts (format `streampoint` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamPoint>,
    pub database: String,
    /// The identity kept inside the database (`dbward_identity`): whose snapshot this is.
    /// Absent in snapshots taken before identities existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_id: Option<String>,
    pub host: String,
    pub dbward_version: String,
    pub format: Format,
    pub data_key: String,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// Hex SHA-256 of the stored bytes (compressed, and encrypted when `encryption` is set):
    /// the integrity check needs no key.
    pub sha256: String,
    pub compression: Compression,
    /// Set when the stored object is age-encrypted; absent in plaintext snapshots (and in every
    /// snapshot taken before encryption existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    pub migration_head: Option<Head>,
    /// Rows per table (`schema.table` on PostgreSQL), counted in the snapshot's own view.
    pub row_counts: BTreeMap<String, u64>,
    pub duration_ms: u64,
}

/// What a base backup is and what it needs: the WAL from `wal_first` to `wal_last` (on
/// `timeline`, in the database's WAL archive) makes it consistent at `stop_lsn`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Physical {
    /// The cluster's system identifier: the WAL archive's `cluster.json` holds the same.
    pub system_identifier: String,
    pub timeline: u32,
    /// Where the backup's WAL starts (its checkpoint's redo point) and where it is consistent.
    pub start_lsn: String,
    pub stop_lsn: String,
    pub wal_first: String,
    pub wal_last: String,
    pub segment_bytes: u64,
    pub pg_basebackup_version: String,
}

/// A restore point: recovery from a base that ended before `lsn`, replaying the archived WAL
/// through `segment` with `recovery_target_name = name`, stops exactly there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point {
    /// The restore point's name in the WAL: the snapshot id.
    pub name: String,
    /// Where its record is, and the timeline it is on.
    pub lsn: String,
    pub timeline: u32,
    /// The WAL segment holding it: in the archive before this manifest was written.
    pub segment: String,
    pub system_identifier: String,
    /// The newest base when the point was taken (any base of the timeline that ended before
    /// `lsn` restores it).
    pub base: String,
}

/// A position in a SQLite database's stream: the state after step `seq` (0: the base alone) of
/// `generation`, whose page hashes sum to `state`; the primary store held it before this
/// manifest was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPoint {
    pub generation: String,
    pub seq: u64,
    pub state: String,
    /// When the replicator read that state (RFC 3339, UTC).
    pub captured_at: String,
}

/// How a snapshot's object is encrypted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// `age` (<https://age-encryption.org/v1>).
    pub scheme: String,
    /// The X25519 recipients (`age1...`, public keys), or `passphrase`.
    pub recipients: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    pub algorithm: String,
    pub level: i32,
}

impl Manifest {
    pub fn created(&self) -> Option<OffsetDateTime> {
        parse_rfc3339(&self.created_at)
    }

    /// The manifest of a position rather than a copy (a PostgreSQL restore point, a SQLite
    /// stream position): no data object, so no key, no bytes, no checksum, no compression. The
    /// caller fills in the position (`point` or `stream`), the server, the identity, the head
    /// and the duration.
    pub fn of_position(
        id: String,
        kind: Kind,
        at: OffsetDateTime,
        engine: &str,
        format: Format,
        database: &str,
    ) -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            id,
            kind,
            label: None,
            created_at: now_rfc3339(at),
            engine: engine.into(),
            server_version: String::new(),
            pg_dump_version: None,
            physical: None,
            point: None,
            stream: None,
            database: database.to_string(),
            database_id: None,
            host: crate::hostname(),
            dbward_version: env!("CARGO_PKG_VERSION").into(),
            format,
            data_key: String::new(),
            raw_bytes: 0,
            stored_bytes: 0,
            sha256: String::new(),
            compression: Compression {
                algorithm: "none".into(),
                level: 0,
            },
            encryption: None,
            migration_head: None,
            row_counts: Default::default(),
            duration_ms: 0,
        }
    }
}

/// A time-sortable id: `20261122T093000Z-pre-deploy-3f2a`.
pub fn snapshot_id(at: OffsetDateTime, kind: Kind) -> String {
    format!(
        "{}-{}-{:04x}",
        compact_stamp(at),
        kind.as_str(),
        random_u16()
    )
}

/// `20261122T093000Z`: the one compact UTC form, in snapshot ids and the names of replaced
/// databases.
pub fn compact_stamp(at: OffsetDateTime) -> String {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    at.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .expect("formats any time")
}

/// Whether `name` is a stream generation's name (`YYYYMMDDTHHMMSSuuuuuuZ-hhhh`, as
/// `stream::new_generation_id` makes them): a stream position naming anything else is not
/// dbward's.
pub fn is_generation_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 27
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..21].iter().all(u8::is_ascii_digit)
        && b[21] == b'Z'
        && b[22] == b'-'
        && b[23..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// Whether `s` is an id [`snapshot_id`] makes: `YYYYMMDDTHHMMSSZ-<kind>-<4 hex>`. Only names
/// built from such ids are dbward's to write, read as snapshots, or delete.
pub fn is_snapshot_id(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 18 || !s.is_char_boundary(16) {
        return false;
    }
    let stamp_ok = b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-';
    let Some((kind, tag)) = s[17..].rsplit_once('-') else {
        return false;
    };
    stamp_ok
        && [Kind::PreDeploy, Kind::Scheduled, Kind::Manual]
            .iter()
            .any(|k| k.as_str() == kind)
        && tag.len() == 4
        && tag.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// What a key in a database's folder of the store is, by dbward's naming scheme. Anything else
/// (a `notes.json`, a `customer-export.csv.zst`) is not dbward's and is never deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnKey {
    /// `<id>.json`
    Manifest(String),
    /// `<id>.sqlite.zst`, `<id>.pgdump.zst`, and `.age` after either (encrypted)
    Data(String, Format, bool),
    /// `<id>.drill.json`
    Receipt(String),
    /// `.<one of the above>.partial-<pid>`: a local store's object being written.
    Partial(String),
}

impl OwnKey {
    /// Parses `key` (`<database>/<name>`) as one of dbward's own names in `database`'s folder.
    pub fn parse(database: &str, key: &str) -> Option<OwnKey> {
        let name = key.strip_prefix(database)?.strip_prefix('/')?;
        if name.contains('/') {
            return None;
        }
        if let Some(rest) = name.strip_prefix('.') {
            let (inner, pid) = rest.rsplit_once(".partial-")?;
            let own = !pid.is_empty()
                && pid.bytes().all(|c| c.is_ascii_digit())
                && matches!(
                    OwnKey::parse(database, &format!("{database}/{inner}")),
                    Some(OwnKey::Manifest(_) | OwnKey::Data(..) | OwnKey::Receipt(_))
                );
            return own.then(|| OwnKey::Partial(inner.to_string()));
        }
        let (id, kind) = if let Some(id) = name.strip_suffix(".drill.json") {
            (id, OwnKey::Receipt(id.into()))
        } else if let Some(id) = name.strip_suffix(".json") {
            (id, OwnKey::Manifest(id.into()))
        } else if let Some(id) = name.strip_suffix(".sqlite.zst") {
            (id, OwnKey::Data(id.into(), Format::Sqlite, false))
        } else if let Some(id) = name.strip_suffix(".pgdump.zst") {
            (id, OwnKey::Data(id.into(), Format::Pgdump, false))
        } else if let Some(id) = name.strip_suffix(".base.tar.zst") {
            (id, OwnKey::Data(id.into(), Format::Pgbase, false))
        } else if let Some(id) = name.strip_suffix(".base.tar.zst.age") {
            (id, OwnKey::Data(id.into(), Format::Pgbase, true))
        } else if let Some(id) = name.strip_suffix(".sqlite.zst.age") {
            (id, OwnKey::Data(id.into(), Format::Sqlite, true))
        } else if let Some(id) = name.strip_suffix(".pgdump.zst.age") {
            (id, OwnKey::Data(id.into(), Format::Pgdump, true))
        } else {
            return None;
        };
        is_snapshot_id(id).then_some(kind)
    }
}

/// `<database>/<id>.<format>.zst`, `.zst.age` when encrypted: the only key a snapshot's data
/// may have.
pub fn data_key(database: &str, id: &str, format: Format, encrypted: bool) -> String {
    let age = if encrypted { ".age" } else { "" };
    format!("{database}/{id}.{}.zst{age}", format.extension())
}

/// Why a manifest is not where, or not named as, dbward's naming scheme puts it: it is damaged.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Misnamed(pub String);

impl Manifest {
    /// A manifest read from `key` in `database`'s folder is one of dbward's only if its id has
    /// dbward's form, it sits at `<id>.json`, and its data key is `<id>.<format>.zst` beside
    /// it. Anything else is damaged: never restored from, never followed when deleting.
    pub fn check_names(&self, database: &str, key: &str) -> Result<(), Misnamed> {
        let misnamed = |why: String| Err(Misnamed(why));
        if !is_snapshot_id(&self.id) {
            return misnamed(format!("its id `{}` is not a dbward snapshot id", self.id));
        }
        if key != format!("{database}/{}.json", self.id) {
            return misnamed(format!(
                "it names snapshot `{}` but is not at {}/{}.json",
                self.id, database, self.id
            ));
        }
        if self.format == Format::Pgpoint {
            return match (&self.point, self.data_key.is_empty(), &self.encryption) {
                (Some(p), true, None) if p.name == self.id => Ok(()),
                _ => misnamed(
                    "a restore point has a `point` named by its id, and no data object".into(),
                ),
            };
        }
        if self.point.is_some() {
            return misnamed("only a restore point has `point` facts".into());
        }
        if self.format == Format::Streampoint {
            return match (&self.stream, self.data_key.is_empty(), &self.encryption) {
                (Some(p), true, None) if is_generation_name(&p.generation) => Ok(()),
                _ => misnamed(
                    "a stream position has `stream` facts naming a generation, and no data object"
                        .into(),
                ),
            };
        }
        if self.stream.is_some() {
            return misnamed("only a stream position has `stream` facts".into());
        }
        let want = data_key(database, &self.id, self.format, self.encryption.is_some());
        if self.data_key != want {
            return misnamed(format!("its data key `{}` is not `{want}`", self.data_key));
        }
        if (self.format == Format::Pgbase) != self.physical.is_some() {
            return misnamed("its format and its `physical` facts disagree".into());
        }
        Ok(())
    }
}

pub(crate) fn random_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(OffsetDateTime::now_utc().unix_timestamp_nanos() as u128);
    h.write_u32(std::process::id());
    h.finish() as u16
}

/// A moment as records write it (RFC 3339), read back; `None` for text that is not one.
pub fn parse_rfc3339(at: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(at, &Rfc3339).ok()
}

/// RFC 3339 in UTC with milliseconds, so snapshots taken in the same second still sort.
pub fn now_rfc3339(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    at.replace_nanosecond(at.millisecond() as u32 * 1_000_000)
        .expect("whole milliseconds are valid nanoseconds")
        .format(&Rfc3339)
        .expect("RFC 3339 formats any time")
}

/// Whether a restored history's head (the newest by version parts, [`dbconn::history::newest`])
/// is not the manifest's: `Some` says how.
pub fn head_differs(applied: &[dbconn::Applied], m: &Manifest) -> Option<String> {
    let head = dbconn::history::newest(applied);
    let want = m.migration_head.as_ref();
    if head.map(|h| h.version) == want.map(|h| h.version) {
        return None;
    }
    let shown = |l: Option<String>| l.unwrap_or_else(|| "none".into());
    Some(format!(
        "migration head {} differs from the manifest's {}",
        shown(head.map(|h| h.label())),
        shown(want.map(|h| h.label()))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time() {
        let a = snapshot_id(
            time::macros::datetime!(2026-11-22 09:30:00 UTC),
            Kind::PreDeploy,
        );
        let b = snapshot_id(
            time::macros::datetime!(2026-11-22 10:00:00 UTC),
            Kind::Manual,
        );
        assert!(a.starts_with("20261122T093000Z-pre-deploy-"), "{a}");
        assert!(a < b);
        assert!(is_snapshot_id(&a) && is_snapshot_id(&b));
    }

    #[test]
    fn only_dbward_names_are_its_own() {
        let id = "20261122T093000Z-pre-deploy-3f2a";
        assert_eq!(
            OwnKey::parse("app", &format!("app/{id}.json")),
            Some(OwnKey::Manifest(id.into()))
        );
        assert_eq!(
            OwnKey::parse("app", &format!("app/{id}.sqlite.zst")),
            Some(OwnKey::Data(id.into(), Format::Sqlite, false))
        );
        assert_eq!(
            OwnKey::parse("app", &format!("app/{id}.pgdump.zst.age")),
            Some(OwnKey::Data(id.into(), Format::Pgdump, true))
        );
        assert_eq!(
            OwnKey::parse("app", &format!("app/{id}.base.tar.zst")),
            Some(OwnKey::Data(id.into(), Format::Pgbase, false))
        );
        assert_eq!(
            OwnKey::parse("app", &format!("app/{id}.drill.json")),
            Some(OwnKey::Receipt(id.into()))
        );
        assert!(matches!(
            OwnKey::parse("app", &format!("app/.{id}.pgdump.zst.partial-42")),
            Some(OwnKey::Partial(_))
        ));
        for foreign in [
            "app/notes.json",
            "app/customer-export-2024.csv.zst",
            "app/x.sqlite.zst",
            "app/20261122T093000Z-manual-3f2a.tar.zst",
            "app/20261122T093000Z-pre-deploy-3F2A.json",
            "app/20261122T093000Z-nightly-3f2a.json",
            "app/20261122T093000Z-manual-3f2a.sqlite.zst.bak",
            "app/.notes.json.partial-1",
            "app/.20261122T093000Z-manual-3f2a.json.partial-",
            "other/20261122T093000Z-manual-3f2a.json",
            "app/sub/20261122T093000Z-manual-3f2a.json",
            "app_x/20261122T093000Z-manual-3f2a.json",
        ] {
            assert_eq!(OwnKey::parse("app", foreign), None, "{foreign}");
        }
    }
}

//! The manifest: one JSON object per snapshot, written last. A snapshot exists iff its manifest
//! does. Field names are the contract of DESIGN.md; `format_version` guards later changes.

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
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Sqlite => "sqlite",
            Format::Pgdump => "pgdump",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub version: i64,
    pub name: String,
    pub checksum: String,
}

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
    pub database: String,
    pub host: String,
    pub dbward_version: String,
    pub format: Format,
    pub data_key: String,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// Hex SHA-256 of the stored (compressed) bytes.
    pub sha256: String,
    pub compression: Compression,
    pub migration_head: Option<Head>,
    /// Rows per table (`schema.table` on PostgreSQL), counted in the snapshot's own view.
    pub row_counts: BTreeMap<String, u64>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    pub algorithm: String,
    pub level: i32,
}

impl Manifest {
    pub fn created(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(&self.created_at, &Rfc3339).ok()
    }
}

/// A time-sortable id: `20261122T093000Z-pre-deploy-3f2a`.
pub fn snapshot_id(at: OffsetDateTime, kind: Kind) -> String {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let stamp = at
        .to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .expect("formats any time");
    format!("{stamp}-{}-{:04x}", kind.as_str(), random_u16())
}

fn random_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(OffsetDateTime::now_utc().unix_timestamp_nanos() as u128);
    h.write_u32(std::process::id());
    h.finish() as u16
}

/// RFC 3339 in UTC with milliseconds, so snapshots taken in the same second still sort.
pub fn now_rfc3339(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    at.replace_nanosecond(at.millisecond() as u32 * 1_000_000)
        .expect("whole milliseconds are valid nanoseconds")
        .format(&Rfc3339)
        .expect("RFC 3339 formats any time")
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
    }
}

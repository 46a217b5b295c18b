//! refinery's history table, `refinery_schema_history`, read and written exactly as refinery
//! does (RFC 3339 `applied_on`, decimal-text checksum), so projects switch without re-baselining.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::Error;

/// One row of `refinery_schema_history`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    /// The row's key: the version itself when it is a whole number, else [`dotted_key`].
    pub version: i64,
    pub name: String,
    pub applied_on: String,
    /// refinery's checksum, stored as decimal text (and shown as text: JSON numbers lose u64s).
    #[serde(serialize_with = "as_text")]
    pub checksum: u64,
    /// A version with parts (Flyway's `1.1`), as written: the column `version_text`, which
    /// only a history holding one has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_text: Option<String>,
}

/// A version as it is ordered: its parts (`1.10.2` is [1, 10, 2]; a whole number one part).
pub fn order(version: i64, text: Option<&str>) -> Vec<u64> {
    match text {
        Some(t) => t
            .split('.')
            .map(|p| p.parse().unwrap_or(u64::MAX))
            .collect(),
        None => vec![u64::try_from(version).unwrap_or(0)],
    }
}

/// A version as written: `12`, or `1.1` for a version with parts.
pub fn shown(version: i64, text: Option<&str>) -> String {
    text.map_or_else(|| version.to_string(), str::to_string)
}

/// How a version is named in messages: `V12`, `V1.1`.
pub fn label(version: i64, text: Option<&str>) -> String {
    format!("V{}", shown(version, text))
}

/// The parts of a Flyway version as Flyway compares them: `_` and `.` separate parts, each a
/// whole number (leading zeros do not count), trailing zero parts dropped (`1.0` is `1`).
/// `None` unless every part is digits.
pub fn version_parts(text: &str) -> Option<Vec<u64>> {
    let mut parts = Vec::new();
    for p in text.split(['.', '_']) {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        parts.push(p.parse().ok()?);
    }
    while parts.len() > 1 && parts.last() == Some(&0) {
        parts.pop();
    }
    Some(parts)
}

/// A version with parts as the history keys it: a number below zero, from SipHash-1-3 (zero
/// keys) of its parts joined by `.` (stable across releases), never a whole number's key.
/// Order is not in the key; it is in `version_text` ([`order`]). Two versions of a folder
/// with one key (odds of 2^-62 a pair) are refused where the folder is read.
pub fn dotted_key(parts: &[u64]) -> i64 {
    use std::hash::Hasher;
    let text = parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".");
    let mut h = siphasher::sip::SipHasher13::new();
    h.write(text.as_bytes());
    -1 - (h.finish() >> 2) as i64
}

/// The key and, for a version with parts, the text of the version `parts` ([`version_parts`])
/// make: `2.0` is version 2, `1.10` has the key [`dotted_key`] gives it and the text `1.10`.
/// `None` for a whole number beyond `i64`.
pub fn keyed(parts: &[u64]) -> Option<(i64, Option<String>)> {
    match parts {
        [whole] => i64::try_from(*whole).ok().map(|v| (v, None)),
        _ => Some((
            dotted_key(parts),
            Some(
                parts
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join("."),
            ),
        )),
    }
}

/// The newest applied migration of a history: the database's schema version. Versions with
/// parts are ordered by them, so the answer is the same wherever the history is read.
pub fn newest(rows: &[Applied]) -> Option<&Applied> {
    rows.iter()
        .max_by_key(|a| order(a.version, a.version_text.as_deref()))
}

impl Applied {
    /// `V12 name`, `V1.1 name`.
    pub fn label(&self) -> String {
        format!(
            "{} {}",
            label(self.version, self.version_text.as_deref()),
            self.name
        )
    }
}

fn as_text<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A database's migration head as manifests and the state dir record it: the newest applied
/// migration, its checksum as decimal text (JSON numbers lose u64s). The one head type.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Head {
    pub version: i64,
    pub name: String,
    pub checksum: String,
    /// A version with parts, as written (Flyway's `1.1`); absent for a whole number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_text: Option<String>,
}

impl Head {
    /// `V12 name`, `V1.1 name`.
    pub fn label(&self) -> String {
        format!(
            "{} {}",
            label(self.version, self.version_text.as_deref()),
            self.name
        )
    }
}

impl Applied {
    pub fn head(&self) -> Head {
        Head {
            version: self.version,
            name: self.name.clone(),
            checksum: self.checksum.to_string(),
            version_text: self.version_text.clone(),
        }
    }
}

/// One row of dbward's repeatable-migration history (`dbward_repeatable_history`): the text of
/// `R__<name>.sql` last applied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppliedRepeatable {
    pub name: String,
    pub applied_on: String,
    #[serde(serialize_with = "as_text")]
    pub checksum: u64,
}

pub const TABLE: &str = "refinery_schema_history";

/// refinery's own DDL (INT4 versions, its default).
pub const CREATE: &str = "CREATE TABLE IF NOT EXISTS refinery_schema_history(
             version int4 PRIMARY KEY,
             name VARCHAR(255),
             applied_on VARCHAR(255),
             checksum VARCHAR(255))";

/// Widens refinery's INT4 `version` to BIGINT (the layout of refinery's `int8-versions`), in
/// the transaction that first records a version beyond 32 bits (a timestamp version); a table
/// already BIGINT is left alone. PostgreSQL only: SQLite's integers are 64 bits already.
/// dbward reads either (`SELECT` casts), so nothing else changes.
pub const WIDEN_PG: &str = "DO $$ BEGIN
  IF (SELECT atttypid FROM pg_catalog.pg_attribute
      WHERE attrelid = 'refinery_schema_history'::regclass AND attname = 'version')
     = 'pg_catalog.int4'::regtype THEN
    ALTER TABLE refinery_schema_history ALTER COLUMN version TYPE bigint;
  END IF;
END $$";

/// Whether recording `versions` needs [`WIDEN_PG`].
pub fn needs_wide(mut versions: impl Iterator<Item = i64>) -> bool {
    versions.any(|v| i32::try_from(v).is_err())
}

pub const SELECT: &str = "SELECT CAST(version AS BIGINT), name, applied_on, checksum \
                          FROM refinery_schema_history ORDER BY version ASC";

/// [`SELECT`] with `version_text`, on PostgreSQL whether or not the table has that column yet
/// (a row as JSON has no such key then: NULL).
pub const SELECT_PG: &str =
    "SELECT CAST(version AS BIGINT), name, applied_on, checksum, to_jsonb(h)->>'version_text' \
     FROM refinery_schema_history h ORDER BY version ASC";

/// [`SELECT`] with `version_text`, for a SQLite table that has the column.
pub const SELECT_WITH_TEXT: &str =
    "SELECT CAST(version AS BIGINT), name, applied_on, checksum, version_text \
     FROM refinery_schema_history ORDER BY version ASC";

/// The column a version with parts needs, added in the transaction that first records one
/// (older histories, and histories of whole numbers only, never get it). Then each such row's
/// text ([`SET_TEXT_SQLITE`], [`set_text_pg_in`]). PostgreSQL: [`add_text_pg_in`].
pub fn add_text_pg_in(schema: &str) -> String {
    format!(
        "ALTER TABLE {}.refinery_schema_history ADD COLUMN IF NOT EXISTS version_text VARCHAR(255)",
        crate::sql::ident(schema)
    )
}
pub const ADD_TEXT_SQLITE: &str =
    "ALTER TABLE refinery_schema_history ADD COLUMN version_text VARCHAR(255)";
pub const SET_TEXT_SQLITE: &str =
    "UPDATE refinery_schema_history SET version_text = ?2 WHERE version = ?1";
pub fn set_text_pg_in(schema: &str) -> String {
    format!(
        "UPDATE {}.refinery_schema_history SET version_text = $2 WHERE version = $1",
        crate::sql::ident(schema)
    )
}

pub const INSERT_PG: &str =
    "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
                             VALUES ($1::int8, $2, $3, $4)";
/// Every row of a batch in one statement (arrays of versions, names, times, checksums), with
/// the table named in `schema`: one round trip however many files the batch holds.
pub fn insert_many_pg_in(schema: &str) -> String {
    format!(
        "INSERT INTO {}.refinery_schema_history (version, name, applied_on, checksum) \
         SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[])",
        crate::sql::ident(schema)
    )
}

/// Rows for [`insert_many_pg_in`] or [`upsert_many_repeatable_pg_in`], column by column.
#[derive(Default)]
pub struct Columns {
    pub versions: Vec<i64>,
    pub names: Vec<String>,
    pub applied_on: Vec<String>,
    pub checksums: Vec<String>,
}

impl Columns {
    pub fn push(&mut self, v: Values) {
        self.versions.push(v.version);
        self.names.push(v.name);
        self.applied_on.push(v.applied_on);
        self.checksums.push(v.checksum);
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

pub const INSERT_SQLITE: &str =
    "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
                                 VALUES (?1, ?2, ?3, ?4)";

pub struct Values {
    pub version: i64,
    pub name: String,
    pub applied_on: String,
    pub checksum: String,
}

impl Values {
    pub fn as_params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 4] {
        [&self.version, &self.name, &self.applied_on, &self.checksum]
    }
}

/// A history row for a file applied now.
pub fn values(version: i64, name: &str, checksum: u64) -> Values {
    Values {
        version,
        name: name.to_string(),
        applied_on: now(),
        checksum: checksum.to_string(),
    }
}

pub fn row(
    version: i64,
    name: Option<String>,
    applied_on: Option<String>,
    checksum: Option<String>,
    version_text: Option<String>,
) -> Result<Applied, Error> {
    let checksum = checksum.unwrap_or_default();
    let checksum = checksum.parse().map_err(|_| {
        Error::db(
            format!("reading {TABLE}"),
            format!("version {version} has checksum `{checksum}`, not a number; was the table edited by hand?"),
        )
    })?;
    Ok(Applied {
        version,
        name: name.unwrap_or_default(),
        applied_on: applied_on.unwrap_or_default(),
        checksum,
        version_text,
    })
}

/// dbward's history of repeatable migrations, kept out of refinery's table (whose rows refinery
/// reads as versions): one row per `R__<name>.sql`, the text last applied.
pub const REPEATABLE_TABLE: &str = "dbward_repeatable_history";

pub const CREATE_REPEATABLE: &str = "CREATE TABLE IF NOT EXISTS dbward_repeatable_history(
             name VARCHAR(255) PRIMARY KEY,
             applied_on VARCHAR(255) NOT NULL,
             checksum VARCHAR(255) NOT NULL)";

pub const SELECT_REPEATABLE: &str =
    "SELECT name, applied_on, checksum FROM dbward_repeatable_history ORDER BY name";

pub const UPSERT_REPEATABLE_SQLITE: &str =
    "INSERT INTO dbward_repeatable_history (name, applied_on, checksum) VALUES (?1, ?2, ?3) \
     ON CONFLICT (name) DO UPDATE SET applied_on = excluded.applied_on, checksum = excluded.checksum";

pub const UPSERT_REPEATABLE_PG: &str =
    "INSERT INTO dbward_repeatable_history (name, applied_on, checksum) VALUES ($1, $2, $3) \
     ON CONFLICT (name) DO UPDATE SET applied_on = excluded.applied_on, checksum = excluded.checksum";

/// Every repeatable file of a batch in one upsert, with the table named in `schema` (a file may
/// empty the search path).
pub fn upsert_many_repeatable_pg_in(schema: &str) -> String {
    format!(
        "INSERT INTO {}.dbward_repeatable_history (name, applied_on, checksum) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) \
         ON CONFLICT (name) DO UPDATE SET applied_on = excluded.applied_on, checksum = excluded.checksum",
        crate::sql::ident(schema)
    )
}

pub fn repeatable_row(
    name: String,
    applied_on: String,
    checksum: String,
) -> Result<AppliedRepeatable, Error> {
    let value = checksum.parse().map_err(|_| {
        Error::db(
            format!("reading {REPEATABLE_TABLE}"),
            format!(
                "R__{name} has checksum `{checksum}`, not a number; was the table edited by hand?"
            ),
        )
    })?;
    Ok(AppliedRepeatable {
        name,
        applied_on,
        checksum: value,
    })
}

/// Every table dbward keeps in the application's database, as a SQL list: left out of the
/// application's tables wherever they are counted or listed.
pub const OWN_TABLES: &str = "'refinery_schema_history', 'dbward_identity', 'dbward_repeatable_history', 'dbward_statement_progress'";

/// The statements of a non-transactional file that ran (`completed_on` set) or began (not set):
/// a rerun resumes after the last completed one. A file's rows are removed, by its version,
/// in the transaction that records it in the history table.
pub const PROGRESS_TABLE: &str = "dbward_statement_progress";

pub const CREATE_PROGRESS: &str = "CREATE TABLE IF NOT EXISTS dbward_statement_progress(
             version BIGINT NOT NULL,
             statement INTEGER NOT NULL,
             statement_checksum VARCHAR(255) NOT NULL,
             started_on VARCHAR(255) NOT NULL,
             completed_on VARCHAR(255),
             PRIMARY KEY (version, statement))";

/// One statement's record: its 0-based place in the file, the checksum of its text, whether it
/// completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub statement: i64,
    pub checksum: String,
    pub started_on: String,
    pub completed: bool,
}

/// The time now as the history tables write it (RFC 3339, UTC).
pub fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .expect("RFC 3339 formats any UTC time")
}

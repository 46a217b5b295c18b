//! The local state dir: what the last `migrate` did, for `restore pre-deploy` and the health
//! guard. One small JSON file per database, written atomically (temp, fsync, rename, fsync dir).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Deploy {
    /// The database, as shown in messages (password redacted).
    pub database: String,
    /// RFC 3339, UTC.
    pub at: String,
    pub pre_deploy_snapshot: Option<String>,
    /// Versions this deploy applied; empty for a deploy with nothing pending.
    pub applied: Vec<i64>,
    /// The migration head right after the deploy.
    pub head: Option<Head>,
    /// Set when the health guard restored this deploy's snapshot (it never does so twice).
    #[serde(default)]
    pub restored: Option<String>,
    /// Repeatable migrations this deploy applied, by name.
    #[serde(default)]
    pub repeatable: Vec<String>,
    /// Why an after-migrate hook of this deploy failed: the deploy is broken, and the guard
    /// restores it without asking the application.
    #[serde(default)]
    pub hook_failed: Option<String>,
    /// The batch's statements that are not purely additive (`file:line: why`); empty when the
    /// release still running on the old schema keeps working on the new one.
    #[serde(default)]
    pub not_additive: Vec<String>,
    /// The application's write counters just before the pre-deploy snapshot and just before
    /// the batch (PostgreSQL), and right after the batch committed: what a restore would
    /// discard is measured from them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters_before_snapshot: Option<migrator::database::Counters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters_before_apply: Option<migrator::database::Counters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters_after: Option<migrator::database::Counters>,
}

impl Deploy {
    /// Whether this deploy changed the database (versioned or repeatable migrations).
    pub fn changed(&self) -> bool {
        !self.applied.is_empty() || !self.repeatable.is_empty()
    }
}

pub use migrator::Head;

fn path(state_dir: &Path, database: &str) -> PathBuf {
    state_dir.join(format!("last-deploy-{database}.json"))
}

/// A state file that cannot be read, parsed, written or removed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{what} state file {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state record {where_} is not dbward's JSON (edit or remove it)")]
    Parse {
        where_: String,
        #[source]
        source: serde_json::Error,
    },
}

impl StateError {
    fn io<'a>(
        what: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> StateError + 'a {
        move |source| StateError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

pub fn read(state_dir: &Path, database: &str) -> Result<Option<Deploy>, StateError> {
    read_json(&path(state_dir, database))
}

/// A state file, `None` when it does not exist.
fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<Option<T>, StateError> {
    match std::fs::read(p) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateError::Parse {
                where_: p.display().to_string(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StateError::io("reading the", p)(e)),
    }
}

pub fn write(state_dir: &Path, database: &str, deploy: &Deploy) -> Result<(), StateError> {
    write_json(state_dir, &path(state_dir, database), deploy)
}

/// Temp name, fsync, rename, fsync of the directory.
fn write_json(state_dir: &Path, p: &Path, value: &impl Serialize) -> Result<(), StateError> {
    backup::scratch::create_private_dir(state_dir).map_err(StateError::io("writing the", p))?;
    // 0600: the state names hosts, databases and snapshots.
    let bytes = serde_json::to_vec_pretty(value).expect("serializes");
    backup::scratch::write_atomic(p, &bytes, 0o600).map_err(StateError::io("writing the", p))
}

/// A batch the health guard rolled back: `migrate` refuses to apply the same batch again (a
/// restart loop of a broken release stops at `ExecStartPre`), unless `--retry-failed`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedBatch {
    /// RFC 3339, UTC: when the guard restored.
    pub at: String,
    /// Why the guard restored (the health check's verdict).
    pub reason: String,
    /// The pre-deploy snapshot it restored.
    pub snapshot: String,
    /// The migrations of the batch, as applied.
    pub batch: Vec<BatchFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchFile {
    pub version: i64,
    pub name: String,
    pub checksum: String,
}

impl BatchFile {
    /// A file of the batch: a repeatable one as version 0, named `R__<name>`.
    pub fn of(f: &migrator::MigrationFile) -> BatchFile {
        BatchFile {
            version: f.version,
            name: match f.kind {
                migrator::Kind::Versioned => f.name.clone(),
                migrator::Kind::Repeatable => format!("R__{}", f.name),
            },
            checksum: f.checksum.to_string(),
        }
    }

    /// `V3 add_orders` or `R__views`.
    pub fn label(&self) -> String {
        if self.version == 0 && self.name.starts_with("R__") {
            self.name.clone()
        } else {
            format!("V{} {}", self.version, self.name)
        }
    }
}

fn failed_path(state_dir: &Path, database: &str) -> PathBuf {
    state_dir.join(format!("failed-batch-{database}.json"))
}

pub fn read_failed(state_dir: &Path, database: &str) -> Result<Option<FailedBatch>, StateError> {
    read_json(&failed_path(state_dir, database))
}

pub fn write_failed(state_dir: &Path, database: &str, f: &FailedBatch) -> Result<(), StateError> {
    write_json(state_dir, &failed_path(state_dir, database), f)
}

/// Forgets the failed batch (a batch was applied since, or `--retry-failed` succeeded).
pub fn clear_failed(state_dir: &Path, database: &str) -> Result<(), StateError> {
    let p = failed_path(state_dir, database);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StateError::io("removing the", &p)(e)),
    }
}

/// A replaced database that a restore kept aside, recorded by its exact name: the only copies
/// `restore.keep_replaced` may ever remove.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplacedCopy {
    /// The SQLite file's path, or the PostgreSQL database's name.
    pub name: String,
    /// `sqlite` or `postgres`.
    pub engine: String,
    /// RFC 3339, UTC.
    pub at: String,
    /// The snapshot restored over it.
    pub snapshot: String,
}

fn replaced_path(state_dir: &Path, database: &str) -> PathBuf {
    state_dir.join(format!("replaced-{database}.json"))
}

pub fn read_replaced(state_dir: &Path, database: &str) -> Result<Vec<ReplacedCopy>, StateError> {
    Ok(read_json(&replaced_path(state_dir, database))?.unwrap_or_default())
}

pub fn write_replaced(
    state_dir: &Path,
    database: &str,
    copies: &[ReplacedCopy],
) -> Result<(), StateError> {
    write_json(state_dir, &replaced_path(state_dir, database), &copies)
}

/// The failed batch's copy in the store, beside the database's snapshots: a container that
/// starts on a fresh state volume still knows the batch was rolled back. A name prune never
/// deletes (it is not a snapshot's).
pub fn failed_key(database: &str) -> String {
    format!("{database}/.failed-batch.json")
}

/// The failed batch from the state dir, else from the store.
pub async fn find_failed(
    state_dir: &Path,
    store: &backup::Store,
    database: &str,
) -> Result<Option<FailedBatch>, StateError> {
    if let Some(f) = read_failed(state_dir, database)? {
        return Ok(Some(f));
    }
    match store.get_bytes(&failed_key(database)).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateError::Parse {
                where_: store.describe(&failed_key(database)),
                source,
            }),
        Err(backup::Error::Missing(_)) => Ok(None),
        Err(e) => {
            // The state dir is the first record; a store that cannot answer now must not stop
            // a deploy that needs no snapshot.
            tracing::warn!(
                "could not read the failed-batch record from the store: {}",
                backup::error::chain(&e)
            );
            Ok(None)
        }
    }
}

//! The local state dir: what the last `migrate` did, for `restore pre-deploy` and the health
//! guard, the batch the guard rolled back, the replaced copies restores kept, and the deploy
//! log. Small JSON files, written atomically (temp, fsync, rename, fsync dir), named per
//! database by its [`Scope`]: its name and its identity, so two databases of the same name
//! sharing a state dir (two apps' `app.db` under one `/var/lib/dbward`) never read each other's
//! records.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use migrator::DatabaseUrl;

/// One database's records in the state dir: `<what>-<name>.<key>.json`, where the key is
/// `id-<identity>` (the `dbward_identity` every migrated database has, which a restore keeps,
/// so the records follow the database) or, for a database without one yet, `at-<digest of
/// where it is>` (the SQLite file's resolved path; the PostgreSQL server and database). A
/// record carries the identity it was written for and is ignored by any other.
#[derive(Debug, Clone)]
pub struct Scope {
    dir: PathBuf,
    name: String,
    key: String,
    identity: Option<String>,
}

impl Scope {
    /// The scope of `url`'s database in `state_dir`. Its identity is read from the database
    /// (a database that cannot be read is keyed by where it is, with a warning). Records of the
    /// older naming (`<what>-<name>.json`, by name alone) are moved to this scope's names on
    /// first use when they prove to be this database's (see [`Scope::adopt_legacy`]).
    pub async fn of(state_dir: &Path, url: &DatabaseUrl) -> Scope {
        let identity = match backup::owner::live_identity(url).await {
            Ok(backup::owner::Live::Present(id)) => id,
            Ok(backup::owner::Live::Absent) => None,
            Err(e) => {
                tracing::warn!(
                    "could not read the identity of {} ({}); its records in the state dir are looked up by where it is",
                    url.display(),
                    backup::error::chain(&e)
                );
                None
            }
        };
        let key = match &identity {
            Some(id) => format!("id-{}", safe(id)),
            None => format!("at-{}", digest(&location(url))),
        };
        let scope = Scope {
            dir: state_dir.to_path_buf(),
            name: url.name(),
            key,
            identity,
        };
        scope.adopt_legacy(url).await;
        scope
    }

    /// The database's name (its store folder), as the records' file names show it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The identity the records are written for.
    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    fn file(&self, what: &str, ext: &str) -> PathBuf {
        self.dir
            .join(format!("{what}-{}.{}.{ext}", self.name, self.key))
    }

    fn legacy(&self, what: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{what}-{}.{ext}", self.name))
    }

    /// The deploy log's file (see `crate::deploys`).
    pub fn log_path(&self) -> PathBuf {
        self.file("deploys", "jsonl")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records named by the database's name alone (dbward before scopes) are this database's
    /// when the last deploy recorded there names it (the same URL) and its migration head is
    /// in this database's history (same version, same checksum): then the last deploy, the
    /// failed batch, the replaced copies and the deploy log move to this scope's names (never
    /// over a file there). Otherwise they stay where they are, untouched.
    async fn adopt_legacy(&self, url: &DatabaseUrl) {
        let old = self.legacy("last-deploy", "json");
        if !old.exists() || self.file("last-deploy", "json").exists() {
            return;
        }
        let Ok(Some(deploy)) = read_json::<Deploy>(&old) else {
            return;
        };
        // The same URL (an IPv6 host was shown without brackets then), and its deploy this
        // database's: its head applied here. (A deploy the guard rolled back proves nothing this
        // way and stays; the store's copy of its failed batch still refuses the batch.)
        let same_url =
            deploy.database.replace(['[', ']'], "") == url.display().replace(['[', ']'], "");
        if !same_url || !head_applied(url, deploy.head.as_ref()).await {
            tracing::warn!(
                "{} is not {}'s (another database of the same name shares this state dir?): left as it is",
                old.display(),
                url.display()
            );
            return;
        }
        for (what, ext) in [
            ("last-deploy", "json"),
            ("failed-batch", "json"),
            ("replaced", "json"),
            ("deploys", "jsonl"),
        ] {
            let (from, to) = (self.legacy(what, ext), self.file(what, ext));
            if !from.exists() {
                continue;
            }
            match dbconn::fs::rename_new(&from, &to) {
                Ok(()) => tracing::info!(
                    "moved {} to {} (state records are kept per database identity now)",
                    from.display(),
                    to.display()
                ),
                Err(e) => tracing::warn!("could not move {}: {e}", from.display()),
            }
        }
    }

    /// Whether the state dir can take a record now (it exists or can be made, it is writable,
    /// its disk has room): checked before a batch is applied, since a committed batch whose
    /// record cannot be written is a deploy the guard does not know.
    pub fn check_writable(&self) -> Result<(), StateError> {
        let probe = self
            .dir
            .join(format!(".dbward-probe-{}", std::process::id()));
        backup::scratch::create_private_dir(&self.dir)
            .and_then(|()| backup::scratch::write_atomic(&probe, &[b' '; 16 << 10], 0o600))
            .map_err(StateError::io("writing a record into the", &self.dir))?;
        std::fs::remove_file(&probe).map_err(StateError::io("removing the probe in the", &probe))
    }

    pub fn read(&self) -> Result<Option<Deploy>, StateError> {
        let p = self.file("last-deploy", "json");
        Ok(read_json::<Deploy>(&p)?.filter(|d| self.mine(&d.database_id, &p)))
    }

    pub fn write(&self, deploy: &Deploy) -> Result<(), StateError> {
        let mut deploy = deploy.clone();
        deploy.database_id = self.identity.clone();
        write_json(&self.dir, &self.file("last-deploy", "json"), &deploy)
    }

    /// Puts back the deploy record that stood before this run wrote its own (`None`: there was
    /// none, and the one this run wrote is removed): a batch that changed nothing leaves the
    /// records as they were.
    pub fn put_back(&self, previous: Option<&Deploy>) -> Result<(), StateError> {
        match previous {
            Some(d) => self.write(d),
            None => {
                let p = self.file("last-deploy", "json");
                match std::fs::remove_file(&p) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(StateError::io("removing the", &p)(e)),
                }
            }
        }
    }

    pub fn read_failed(&self) -> Result<Option<FailedBatch>, StateError> {
        let p = self.file("failed-batch", "json");
        Ok(read_json::<FailedBatch>(&p)?.filter(|f| self.mine(&f.database_id, &p)))
    }

    pub fn write_failed(&self, f: &FailedBatch) -> Result<(), StateError> {
        let mut f = f.clone();
        f.database_id = self.identity.clone();
        write_json(&self.dir, &self.file("failed-batch", "json"), &f)
    }

    /// Forgets the failed batch (a batch was applied since, or `--retry-failed` succeeded).
    pub fn clear_failed(&self) -> Result<(), StateError> {
        let p = self.file("failed-batch", "json");
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StateError::io("removing the", &p)(e)),
        }
    }

    pub fn read_replaced(&self) -> Result<Vec<ReplacedCopy>, StateError> {
        Ok(read_json(&self.file("replaced", "json"))?.unwrap_or_default())
    }

    pub fn write_replaced(&self, copies: &[ReplacedCopy]) -> Result<(), StateError> {
        write_json(&self.dir, &self.file("replaced", "json"), &copies)
    }

    /// A record written for another identity is not this database's: ignored, said once.
    fn mine(&self, written_for: &Option<String>, p: &Path) -> bool {
        match (written_for, &self.identity) {
            (Some(theirs), Some(ours)) if theirs != ours => {
                tracing::warn!(
                    "ignoring {}: it was written for the database with identity {theirs}, not this one ({ours})",
                    p.display()
                );
                false
            }
            _ => true,
        }
    }

    /// The failed batch from the state dir, else from the store (a new host, a fresh state
    /// volume).
    pub async fn find_failed(
        &self,
        store: &backup::Store,
    ) -> Result<Option<FailedBatch>, StateError> {
        if let Some(f) = self.read_failed()? {
            return Ok(Some(f));
        }
        let key = failed_key(&self.name);
        match store.get_bytes(&key).await {
            Ok(bytes) => serde_json::from_slice::<FailedBatch>(&bytes)
                .map(|f| {
                    f.database_id
                        .clone()
                        .is_none_or(|id| Some(id) == self.identity)
                        .then_some(f)
                })
                .map_err(|source| StateError::Parse {
                    where_: store.describe(&key),
                    source,
                }),
            Err(backup::Error::Missing(_)) => Ok(None),
            Err(e) => {
                // The state dir is the first record; a store that cannot answer now must not
                // stop a deploy that needs no snapshot.
                tracing::warn!(
                    "could not read the failed-batch record from the store: {}",
                    backup::error::chain(&e)
                );
                Ok(None)
            }
        }
    }
}

/// An identity as a file-name part: hex digits and dashes only (it is dbward's own random hex;
/// anything else is digested).
/// The guard's own lock for `url`'s database on this host (`guard-<db>.at-<digest of where it
/// is>.lock` in `state_dir`: keyed by where the database is, not by its identity, which cannot
/// be read while a rewind has the cluster down; an exclusive lock the kernel releases when the
/// process ends, on a file opened without following a link): a second guard waits for the
/// first to finish, then finds the deploy undone and stops. Waits at most `wait`, saying from
/// 10 s on what it waits for.
pub async fn guard_lock(
    state_dir: &Path,
    url: &DatabaseUrl,
    wait: Duration,
) -> Result<Option<std::fs::File>, StateError> {
    use std::os::unix::fs::OpenOptionsExt;
    let p = state_dir.join(format!(
        "guard-{}.at-{}.lock",
        url.name(),
        digest(&location(url))
    ));
    backup::scratch::create_private_dir(state_dir)
        .map_err(StateError::io("creating the", state_dir))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&p)
        .map_err(StateError::io("opening the", &p))?;
    let taken = async {
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(true),
                Err(std::fs::TryLockError::WouldBlock) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
        }
    };
    let what = format!(
        "another guard of {} on this host (it holds {})",
        url.name(),
        p.display()
    );
    match tokio::time::timeout(wait, dbconn::wait::announced(what, taken)).await {
        Ok(Ok(_)) => Ok(Some(file)),
        Ok(Err(e)) => Err(StateError::io("locking the", &p)(e)),
        Err(_) => Ok(None),
    }
}

fn safe(id: &str) -> String {
    if !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        id.to_string()
    } else {
        digest(id)
    }
}

fn digest(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where a database is: a SQLite file's resolved path (its directory made absolute and its
/// links followed), a PostgreSQL server's hosts, port and database.
fn location(url: &DatabaseUrl) -> String {
    match url {
        DatabaseUrl::Sqlite(p) => {
            let real = dbconn::sqlite::real_path(p).unwrap_or_else(|_| p.clone());
            let dir = match real.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
            format!(
                "sqlite:{}",
                dir.join(real.file_name().unwrap_or_default()).display()
            )
        }
        DatabaseUrl::Postgres(pg) => format!("postgres:{}", pg.location()),
    }
}

/// Whether `head` (a recorded migration head) is in the database's history, same checksum.
async fn head_applied(url: &DatabaseUrl, head: Option<&Head>) -> bool {
    let Some(head) = head else {
        return true;
    };
    let Ok(mut db) = migrator::Database::open(url, migrator::database::Open::Existing).await else {
        return false;
    };
    db.applied().await.is_ok_and(|applied| {
        applied
            .iter()
            .any(|a| a.version == head.version && a.checksum.to_string() == head.checksum)
    })
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Deploy {
    /// The database, as shown in messages (password redacted).
    pub database: String,
    /// The identity of the database this was recorded for (see [`Scope`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_id: Option<String>,
    /// RFC 3339, UTC.
    pub at: String,
    pub pre_deploy_snapshot: Option<String>,
    /// Versions this deploy applied; empty for a deploy with nothing pending.
    pub applied: Vec<i64>,
    /// The text of each applied version with parts (Flyway's `1.1`), by its key.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub version_texts: std::collections::BTreeMap<i64, String>,
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
    /// The batch's transaction id (PostgreSQL, 32 bits): a rewind's count of what it discards
    /// leaves the batch's own changes out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_xid: Option<u32>,
    /// Set when the deploy stopped after part of its batch committed (a non-transactional
    /// file, or the batch after one, failed): why. The next `migrate` resumes it under the same
    /// pre-deploy snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unfinished: Option<String>,
}

impl Deploy {
    /// An applied version as written: `12`, or `1.1` for a version with parts.
    pub fn shown(&self, version: i64) -> String {
        dbconn::history::shown(
            version,
            self.version_texts.get(&version).map(String::as_str),
        )
    }
}

impl Deploy {
    /// Whether this deploy changed the database (versioned or repeatable migrations).
    pub fn changed(&self) -> bool {
        !self.applied.is_empty() || !self.repeatable.is_empty()
    }
}

pub use migrator::Head;

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

/// Temp name, fsync, rename, fsync of the directory.
fn write_json(state_dir: &Path, p: &Path, value: &impl Serialize) -> Result<(), StateError> {
    backup::scratch::create_private_dir(state_dir).map_err(StateError::io("writing the", p))?;
    // 0600: the state names hosts, databases and snapshots.
    let bytes = serde_json::to_vec_pretty(value).expect("serializes");
    backup::scratch::write_atomic(p, &bytes, 0o600).map_err(StateError::io("writing the", p))
}

/// A batch the health guard rolled back (or began to): `migrate` refuses to apply the same
/// batch again (a restart loop of a broken release stops at `ExecStartPre`), unless
/// `--retry-failed`.
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
    /// The identity of the database this was recorded for (see [`Scope`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_id: Option<String>,
    /// `None`: the guard undid the batch (restored the snapshot, or rewound the cluster).
    /// `Some`: the undo did not finish (it failed with this error, or the guard was killed
    /// while undoing): the batch is still applied; `migrate` refuses until it is undone (the
    /// next guard retries) or accepted (`--retry-failed`). Written before the undo starts, and
    /// cleared only once it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo_failed: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchFile {
    pub version: i64,
    pub name: String,
    pub checksum: String,
    /// A version with parts, as written (Flyway's `1.1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_text: Option<String>,
}

impl FailedBatch {
    /// Whether every file of the batch is applied in this history (same version or name, same
    /// checksum): the batch was not undone.
    pub fn still_applied(
        &self,
        history: &[migrator::Applied],
        repeatable: &[migrator::AppliedRepeatable],
    ) -> bool {
        self.batch.iter().all(|b| {
            if b.version == 0 && b.name.starts_with("R__") {
                repeatable.iter().any(|r| {
                    format!("R__{}", r.name) == b.name && r.checksum.to_string() == b.checksum
                })
            } else {
                history
                    .iter()
                    .any(|a| a.version == b.version && a.checksum.to_string() == b.checksum)
            }
        })
    }
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
            version_text: f.version_text.clone(),
        }
    }

    /// `V3 add_orders`, `V1.1 fix` or `R__views`.
    pub fn label(&self) -> String {
        if self.version == 0 && self.name.starts_with("R__") {
            self.name.clone()
        } else {
            format!(
                "{} {}",
                dbconn::history::label(self.version, self.version_text.as_deref()),
                self.name
            )
        }
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

/// The failed batch's copy in the store, beside the database's snapshots: a container that
/// starts on a fresh state volume still knows the batch was rolled back. A name prune never
/// deletes (it is not a snapshot's).
pub fn failed_key(database: &str) -> String {
    format!("{database}/.failed-batch.json")
}

//! Settings, resolved as `docs/contract.md` says: flag > environment > config file > default.
//! Unknown config keys are an error naming the key. Paths in the config file are relative to
//! the file's own directory; paths from flags and the environment to the working directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cli::{parse_duration, GlobalArgs, OnFailure};

mod databases;

#[derive(Debug, Clone)]
pub struct Settings {
    /// The `[[databases]]` entry these settings are (`None`: the single-database form).
    pub name: Option<String>,
    /// The database URL as given (may hold a password: never display it; show the parsed `DatabaseUrl::display`).
    pub database: Option<String>,
    pub migrations: PathBuf,
    /// Whether the migrations folder was given (flag, environment, file) rather than defaulted.
    pub migrations_given: bool,
    pub store: String,
    /// `store.mirrors`: more stores every snapshot is written to.
    pub store_mirrors: Vec<String>,
    /// `store.require`: `all` (true, the default): a snapshot needs every copy; `primary`:
    /// a mirror that fails is a warning.
    pub store_require_all: bool,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_path_style: bool,
    /// `store.part_size`: fixed multipart part size in bytes.
    pub s3_part_size: Option<usize>,
    /// `store.ca_file` / `AWS_CA_BUNDLE`: CA certificates for the S3 endpoint.
    pub s3_ca_file: Option<PathBuf>,
    /// `store.timeout` / `DBWARD_STORE_TIMEOUT`: the longest silence of a store request.
    pub store_timeout: Duration,
    /// `store.group`: the group a `file://` store's folders and files are shared with.
    pub store_group: Option<u32>,
    pub state_dir: PathBuf,
    /// `database.table_lock_timeout`: how long one statement of the batch may wait for a table
    /// lock (not the migration lock: that is `--lock-timeout`).
    pub lock_timeout: Duration,
    /// `migrate.lock_retries`: how many times a batch that waited `lock_timeout` for a table
    /// lock (PostgreSQL's `lock_not_available`) is tried again, with backoff and jitter.
    pub lock_retries: u32,
    /// `migrate.no_transaction_lock_timeout`: how long a statement of a non-transactional file
    /// that cannot run in a transaction (a concurrent index build) may wait for each lock;
    /// `None` (the default): as long as it takes, said every 10 s.
    pub no_transaction_lock_timeout: Option<Duration>,
    /// `backup.level`: zstd level (1-19).
    pub level: i32,
    /// `backup.temp_dir`: where restore downloads and copies of non-WAL SQLite databases are
    /// staged (default `<state_dir>/tmp`).
    pub temp_dir: Option<PathBuf>,
    /// `[health]`: the application's health endpoint and how to poll it.
    pub health: Health,
    /// `[drill]`.
    pub drill: Drill,
    /// `[schedule]`.
    pub schedule: Schedule,
    /// `schedule.once_within`: a scheduled job done by any host this recently is not done again
    /// (see `crate::jobs`).
    pub once_within: Option<Duration>,
    /// `[notify]`.
    pub notify: Notify,
    /// `[retention]`: empty means keep everything.
    pub retention: backup::retention::Policy,
    /// `retention.stream_window`: how long a SQLite stream's states stay restorable (`None`:
    /// every generation is kept).
    pub stream_window: Option<Duration>,
    /// `restore.keep_replaced`: how many replaced copies (recorded by dbward) to keep.
    pub keep_replaced: usize,
    /// `restore.if_missing`: `migrate` and `run` first restore a missing database.
    pub restore_if_missing: bool,
    /// `[hooks]`.
    pub hooks: Hooks,
    /// `[encryption]`.
    pub encryption: Encryption,
    /// `[pitr]`.
    pub pitr: Pitr,
}

/// `[pitr]`: restore points before deploys, and the guard's rewind of a cluster on this host.
#[derive(Debug, Clone)]
pub struct Pitr {
    /// `pitr.restore_point_wait`: how long `migrate` waits for a restore point's WAL segment
    /// to reach the archive before it takes a dump instead.
    pub restore_point_wait: Duration,
    /// `pitr.base_max_wal`: WAL since the newest base beyond which a base is due (replay
    /// time grows with it): `pitr verify` says so, `backup --physical --if-due` takes one.
    pub base_max_wal: Option<u64>,
    /// `[pitr.server]`: the cluster on this host the guard may rewind. Without it, pre-deploy
    /// snapshots are dumps (the guard could not use a restore point).
    pub server: Option<PitrServer>,
}

/// `[pitr.server]`: how dbward stops, starts and owns the PostgreSQL cluster on this host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PitrServer {
    /// The cluster's data directory (absolute): the live server must report the same
    /// `data_directory`.
    pub data_dir: PathBuf,
    /// Stops the cluster and returns once it is stopped (`sh -c`), e.g.
    /// `systemctl stop postgresql@15-main`.
    pub stop: String,
    /// Starts it (`sh -c`), e.g. `systemctl start postgresql@15-main`.
    pub start: String,
    /// The OS user that owns the data directory (the restored one is given to it).
    pub user: String,
    /// Rewind even when the cluster holds databases besides the application's (every one of
    /// them goes back to the restore point too).
    #[serde(default)]
    pub allow_other_databases: bool,
    /// How long `stop` may run before it is killed with its process group (default 5m).
    #[serde(default)]
    pub stop_timeout: Option<String>,
    /// How long `start` may run before it is killed with its process group (default 10m); the
    /// promotion itself is read from the data directory and may take up to an hour.
    #[serde(default)]
    pub start_timeout: Option<String>,
}

impl PitrServer {
    /// `stop_timeout` (checked when the settings are read).
    pub fn stop_limit(&self) -> Duration {
        self.stop_timeout
            .as_deref()
            .and_then(|s| parse_duration(s).ok())
            .unwrap_or(Duration::from_secs(300))
    }

    /// `start_timeout` (checked when the settings are read).
    pub fn start_limit(&self) -> Duration {
        self.start_timeout
            .as_deref()
            .and_then(|s| parse_duration(s).ok())
            .unwrap_or(Duration::from_secs(600))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PitrSection {
    restore_point_wait: Option<String>,
    base_max_wal: Option<String>,
    server: Option<PitrServer>,
}

/// `[encryption]`: age recipients for new snapshots, the identity for restores and drills.
#[derive(Debug, Clone, Default)]
pub struct Encryption {
    /// `encryption.recipients` and the lines of `encryption.recipients_file`: public keys.
    pub recipients: Vec<String>,
    /// `DBWARD_AGE_IDENTITY_FILE` / `encryption.identity_file`: the private keys (read only by
    /// restores and drills).
    pub identity_file: Option<PathBuf>,
    /// `DBWARD_AGE_PASSPHRASE` (environment only).
    pub passphrase: Option<Secret>,
    /// `encryption.manifest_details`: table names and row counts in the manifest (default true).
    pub manifest_details: bool,
}

/// A secret: never shown by `Debug`.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Settings {
    /// What new snapshots are encrypted to: the recipients, else the passphrase, else nothing.
    pub fn encryption(
        &self,
    ) -> Result<Option<std::sync::Arc<backup::crypt::Encryption>>, backup::Error> {
        let e = &self.encryption;
        if !e.recipients.is_empty() {
            return Ok(Some(std::sync::Arc::new(
                backup::crypt::Encryption::to_recipients(&e.recipients)?,
            )));
        }
        Ok(e.passphrase.as_ref().map(|p| {
            std::sync::Arc::new(backup::crypt::Encryption::to_passphrase(p.0.clone().into()))
        }))
    }

    /// What restores and drills decrypt with (nothing: plaintext snapshots only).
    /// The identities to open `m` with: none for a plaintext snapshot (an identity file that
    /// is missing or unreadable then stops nothing), the configured ones otherwise.
    pub fn identities_for(
        &self,
        m: &backup::Manifest,
    ) -> Result<backup::crypt::Identities, backup::Error> {
        if m.encryption.is_none() {
            return Ok(backup::crypt::Identities::none());
        }
        let ids = self.identities()?;
        ids.check_can_try(m)?;
        Ok(ids)
    }

    pub fn identities(&self) -> Result<backup::crypt::Identities, backup::Error> {
        let e = &self.encryption;
        let mut ids = match &e.identity_file {
            Some(path) => {
                warn_if_readable_by_others(path, "the age identity file");
                backup::crypt::Identities::from_file(path)?
            }
            None => backup::crypt::Identities::none(),
        };
        if let Some(p) = &e.passphrase {
            ids = ids.with_passphrase(p.0.clone().into());
        }
        Ok(ids)
    }
}

/// `scheme://user:password@host...`: a URL with a password in its user info.
fn has_password(url: &str) -> bool {
    url.split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// A secret file (or a config file that names one) that others can read is said loudly.
fn warn_if_readable_by_others(path: &Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                "{what} {} is readable by others (mode {:o}); make it 0600 (chmod 600)",
                path.display(),
                mode & 0o777
            );
        }
    }
}

/// `[hooks]`: what runs after a batch committed.
#[derive(Debug, Clone)]
pub struct Hooks {
    /// `hooks.after_migrate`: command lines for `sh -c`, in order.
    pub after_migrate: Vec<String>,
    /// `hooks.always`: run them even when nothing was applied.
    pub always: bool,
    /// `hooks.timeout`: how long each may run (default 1h).
    pub timeout: Duration,
}

/// A setting problem: exit 2, naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    state_dir: Option<PathBuf>,
    #[serde(default)]
    database: DatabaseSection,
    #[serde(default)]
    store: StoreSection,
    #[serde(default)]
    retention: RetentionSection,
    #[serde(default)]
    backup: BackupSection,
    #[serde(default)]
    health: HealthSection,
    #[serde(default)]
    drill: DrillSection,
    #[serde(default)]
    schedule: Schedule,
    #[serde(default)]
    notify: Notify,
    #[serde(default)]
    restore: RestoreSection,
    #[serde(default)]
    hooks: HooksSection,
    #[serde(default)]
    encryption: EncryptionSection,
    #[serde(default)]
    pitr: PitrSection,
    #[serde(default)]
    migrate: MigrateSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrateSection {
    lock_retries: Option<u32>,
    no_transaction_lock_timeout: Option<String>,
}

/// `migrate.lock_retries`' default: with the backoff, about a minute of tries.
pub const LOCK_RETRIES: u32 = 4;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EncryptionSection {
    recipients: Option<Vec<String>>,
    recipients_file: Option<PathBuf>,
    identity_file: Option<PathBuf>,
    manifest_details: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HooksSection {
    after_migrate: Option<Vec<String>>,
    always: Option<bool>,
    timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreSection {
    keep_replaced: Option<usize>,
    if_missing: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct Health {
    pub url: Option<String>,
    pub timeout: Duration,
    pub interval: Duration,
    /// Accepted status codes; empty means any 2xx.
    pub expect_status: Vec<u16>,
    /// Text the answer's body must contain (the release's git SHA, say).
    pub expect_body: Option<String>,
    /// Command lines (`sh -c`) that must exit 0, run once the endpoint is healthy.
    pub checks: Vec<String>,
    /// SQL that must return true against the live database, run after the checks.
    pub probes: Vec<String>,
    /// `health.on_failure`: what the guard does with an unhealthy deploy.
    pub on_failure: OnFailure,
    /// `health.hosts`: the other instances' health URLs, asked before the guard undoes a
    /// deploy (see `crate::hosts`).
    pub hosts: Vec<String>,
    /// `health.hosts_rule`.
    pub hosts_rule: HostsRule,
}

/// When the other hosts let the guard undo a deploy: `all` of them unhealthy, or a `majority`
/// of all hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostsRule {
    #[default]
    All,
    Majority,
}

/// An `on_failure` value of the config file or the environment.
fn parse_on_failure(key: &str, v: &str) -> Result<OnFailure, SettingsError> {
    <OnFailure as clap::ValueEnum>::from_str(v, false).map_err(|_| {
        SettingsError(format!(
            "{key}: `{v}` is not one of restore, restore-if-destructive, report"
        ))
    })
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// `UTC` (default) or `local`.
    pub timezone: Option<String>,
    pub backup: Option<String>,
    pub drill: Option<String>,
    pub prune: Option<String>,
    /// PostgreSQL: a base backup (`backup --physical`), and a drill of the newest base and the
    /// archive (`restore-drill --physical`).
    pub base: Option<String>,
    pub pitr_drill: Option<String>,
    /// A base when one is due (`backup --physical --if-due`: `pitr.base_max_wal`), checked
    /// this often.
    pub base_if_due: Option<String>,
    /// One scheduled job per database across hosts: a job any host did this recently is done.
    pub once_within: Option<String>,
    /// healthchecks.io-style ping URL per job name.
    #[serde(default, rename = "ping")]
    pub pings: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// Receives a JSON POST when a scheduled job fails (and succeeds, with `on_success`).
    pub url: Option<String>,
    #[serde(default)]
    pub on_success: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Drill {
    /// `drill.database`: the server for scratch databases (default: the live one's server).
    pub database: Option<String>,
    pub probes: Vec<String>,
    pub max_rto: Option<Duration>,
    pub max_snapshot_age: Option<Duration>,
    /// `drill.metrics`: the Prometheus textfile a drill writes when `--metrics` is not given.
    pub metrics: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrillSection {
    database: Option<String>,
    metrics: Option<PathBuf>,
    probes: Option<Vec<String>>,
    max_rto: Option<String>,
    max_snapshot_age: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthSection {
    url: Option<String>,
    timeout: Option<String>,
    interval: Option<String>,
    expect_status: Option<Vec<u16>>,
    expect_body: Option<String>,
    checks: Option<Vec<String>>,
    probes: Option<Vec<String>>,
    on_failure: Option<String>,
    hosts: Option<Vec<String>>,
    hosts_rule: Option<HostsRule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupSection {
    level: Option<i32>,
    temp_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionSection {
    keep_last: Option<u32>,
    keep_daily: Option<u32>,
    keep_weekly: Option<u32>,
    keep_monthly: Option<u32>,
    stream_window: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseSection {
    url: Option<String>,
    /// A direct (or session-mode) URL for dbward's own connections, when `url` is the
    /// application's pooled one.
    migrate_url: Option<String>,
    migrations: Option<PathBuf>,
    lock_timeout: Option<String>,
    table_lock_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreSection {
    url: Option<String>,
    mirrors: Option<Vec<String>>,
    require: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    path_style: Option<bool>,
    part_size: Option<String>,
    ca_file: Option<PathBuf>,
    timeout: Option<String>,
    group: Option<String>,
}

impl Settings {
    /// The settings of the one database this command acts on: with `[[databases]]`, the one
    /// `--db` names (exit 2 without it when there are several).
    pub fn load(args: &GlobalArgs) -> Result<Settings, SettingsError> {
        let mut all = Settings::load_all(args)?;
        if all.len() > 1 {
            return Err(SettingsError(format!(
                "several databases are configured ({}); this command acts on one: give --db NAME (or set DBWARD_DB)",
                names(&all)
            )));
        }
        Ok(all.remove(0))
    }

    /// The settings of every database configured (with `--db`: of that one).
    pub fn load_all(args: &GlobalArgs) -> Result<Vec<Settings>, SettingsError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let path = match &args.config {
            Some(path) => Some(path.clone()),
            None => Some(PathBuf::from("dbward.toml")).filter(|p| p.exists()),
        };
        let Some(path) = path else {
            if args.db.is_some() {
                return Err(no_databases());
            }
            return Ok(vec![resolve(args, env, None)?]);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| SettingsError(format!("config file {}: {e}", path.display())))?;
        let entries = databases::read(&path, &text)?;
        let base = if args.config.is_some() {
            base_dir(&path)
        } else {
            PathBuf::from(".")
        };
        for e in &entries {
            warn_about_secrets(&path, &e.config);
        }
        if entries[0].name.is_none() {
            if args.db.is_some() {
                return Err(no_databases());
            }
            let config = entries.into_iter().next().expect("one").config;
            return Ok(vec![resolve(args, env, Some((config, base)))?]);
        }
        several(args, env, entries, base)
    }

    pub fn store_options(&self) -> backup::StoreOptions {
        backup::StoreOptions {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            path_style: self.s3_path_style,
            part_size: self.s3_part_size,
            max_in_flight: 2,
            ca_file: self.s3_ca_file.clone(),
            timeout: self.store_timeout,
            group: self.store_group,
        }
    }

    /// Opens the snapshot store.
    pub async fn store(&self) -> Result<backup::Store, backup::Error> {
        backup::Store::open(&self.store, &self.store_options()).await
    }

    /// The primary store, then each mirror, opened.
    pub async fn stores(&self) -> Result<backup::StoreSet, backup::Error> {
        let primary = self.store().await?;
        let mut mirrors = Vec::new();
        for url in &self.store_mirrors {
            mirrors.push(backup::Store::open(url, &self.store_options()).await?);
        }
        Ok(backup::StoreSet::new(
            primary,
            mirrors,
            self.store_require_all,
        ))
    }

    /// Where restore downloads and copies of non-WAL SQLite databases are staged.
    pub fn temp_dir(&self) -> PathBuf {
        self.temp_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("tmp"))
    }

    pub fn database(&self) -> Result<&str, SettingsError> {
        self.database.as_deref().ok_or_else(|| {
            SettingsError("no database: give --database URL, set DBWARD_DATABASE or DATABASE_URL, or `url` under [database] in the config file".into())
        })
    }
}

fn base_dir(config: &Path) -> PathBuf {
    match config.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The warnings a config file's secrets call for, when others may read it.
fn warn_about_secrets(path: &Path, config: &FileConfig) {
    if config.encryption.identity_file.is_some() {
        warn_if_readable_by_others(path, "the config file (it names the age identity file)");
    }
    let with_password = [&config.database.url, &config.database.migrate_url]
        .into_iter()
        .flatten()
        .any(|u| has_password(u));
    if with_password {
        warn_if_readable_by_others(path, "the config file (a database URL in it holds a password; DATABASE_URL in an environment file only its owner reads is the better place)");
    }
}

fn no_databases() -> SettingsError {
    SettingsError(
        "--db NAME (DBWARD_DB) picks one of the config file's [[databases]] entries, and the config file has none"
            .into(),
    )
}

/// The names of `all`, for messages.
pub fn names(all: &[Settings]) -> String {
    all.iter()
        .filter_map(|s| s.name.clone())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `[[databases]]` form: every entry resolved (each database's URL and migrations are its
/// entry's: the variables that name one database are not read), `--db`'s alone when given.
/// Two entries whose snapshots would share a store folder are refused.
fn several(
    args: &GlobalArgs,
    env: impl Fn(&str) -> Option<String>,
    entries: Vec<databases::Entry>,
    base: PathBuf,
) -> Result<Vec<Settings>, SettingsError> {
    if args.database.is_some() {
        return Err(SettingsError("--database names one database, and the config file lists several ([[databases]]): pick one with --db NAME".into()));
    }
    if args.migrations.is_some() && args.db.is_none() {
        return Err(SettingsError("--migrations names one database's folder, and the config file lists several ([[databases]]): pick one with --db NAME".into()));
    }
    const ONE_DATABASE: [&str; 4] = [
        "DBWARD_DATABASE",
        "DATABASE_URL",
        "DBWARD_MIGRATE_URL",
        "DBWARD_MIGRATIONS",
    ];
    let mut all = Vec::new();
    let mut folders: Vec<(String, String, String)> = Vec::new();
    for e in entries {
        let name = e.name.expect("an entry has a name");
        // The environment's and the command line's store stand in for the top level's: an
        // entry with a store (or mirrors) of its own keeps them.
        let env = |k: &str| match k {
            _ if ONE_DATABASE.contains(&k) => None,
            "DBWARD_STORE" if e.own_store => None,
            "DBWARD_STORE_MIRRORS" if e.own_mirrors => None,
            _ => env(k),
        };
        let mut entry_args = args.clone();
        if e.own_store && args.db.as_deref() != Some(name.as_str()) {
            entry_args.store = None;
        }
        let mut s = resolve(&entry_args, env, Some((e.config, base.clone())))
            .map_err(|err| SettingsError(format!("[[databases]] `{name}`: {}", err.0)))?;
        let url = s
            .database
            .as_deref()
            .ok_or_else(|| SettingsError(format!("[[databases]] `{name}` has no `url`")))?;
        let folder = migrator::DatabaseUrl::parse(url)
            .map_err(|err| SettingsError(format!("[[databases]] `{name}`: {err}")))?
            .name();
        // Every copy counts: the primary and each mirror.
        for store in std::iter::once(&s.store).chain(&s.store_mirrors) {
            if let Some((other, _, _)) = folders
                .iter()
                .find(|(_, st, f)| st == store && *f == folder)
            {
                return Err(SettingsError(format!(
                    "[[databases]] `{other}` and `{name}` would keep their snapshots in the same folder `{folder}` of {store}: give one of them its own store (`[databases.store] url`, and `mirrors` when they share one)"
                )));
            }
        }
        for store in std::iter::once(&s.store).chain(&s.store_mirrors) {
            folders.push((name.clone(), store.clone(), folder.clone()));
        }
        s.name = Some(name);
        all.push(s);
    }
    let listed = names(&all);
    match &args.db {
        None => Ok(all),
        Some(db) => match all
            .into_iter()
            .find(|s| s.name.as_deref() == Some(db.as_str()))
        {
            Some(s) => Ok(vec![s]),
            None => Err(SettingsError(format!(
                "--db {db}: the config file has no such [[databases]] entry ({listed})"
            ))),
        },
    }
}

/// The pure part of [`Settings::load`], with the environment and the file passed in: each
/// section of the file resolved on its own, flags and environment over the file's values.
fn resolve(
    args: &GlobalArgs,
    env: impl Fn(&str) -> Option<String>,
    file: Option<(FileConfig, PathBuf)>,
) -> Result<Settings, SettingsError> {
    let (file, base) = file.unwrap_or_default();
    let base = Base(base);
    let env: Env = &env;
    let FileConfig {
        state_dir,
        database,
        store,
        retention,
        backup,
        health,
        drill,
        schedule,
        notify,
        restore,
        hooks,
        encryption,
        pitr,
        migrate,
    } = file;
    let lock_timeout = table_lock_timeout(&database)?;
    let store = store_section(args, env, store, &base)?;
    Ok(Settings {
        name: None,
        // dbward's own URL: a direct one (migrate_url) wins over the application's, which may
        // go through a transaction-mode pooler where a session lock cannot hold.
        database: args
            .database
            .clone()
            .or_else(|| env("DBWARD_MIGRATE_URL"))
            .or_else(|| database.migrate_url.clone().map(|u| base.url(u)))
            .or_else(|| env("DBWARD_DATABASE"))
            .or_else(|| env("DATABASE_URL"))
            .or_else(|| database.url.clone().map(|u| base.url(u))),
        migrations_given: args.migrations.is_some()
            || env("DBWARD_MIGRATIONS").is_some()
            || database.migrations.is_some(),
        migrations: args
            .migrations
            .clone()
            .or_else(|| env("DBWARD_MIGRATIONS").map(PathBuf::from))
            .or_else(|| database.migrations.clone().map(|p| base.path(p)))
            .unwrap_or_else(|| PathBuf::from("./migrations")),
        store: store.url,
        store_mirrors: store.mirrors,
        store_require_all: store.require_all,
        s3_endpoint: store.endpoint,
        s3_region: store.region,
        s3_path_style: store.path_style,
        s3_part_size: store.part_size,
        s3_ca_file: store.ca_file,
        store_timeout: store.timeout,
        store_group: store.group,
        state_dir: args
            .state_dir
            .clone()
            .or_else(|| env("DBWARD_STATE_DIR").map(PathBuf::from))
            .or_else(|| state_dir.map(|p| base.path(p)))
            // Under systemd with StateDirectory= (the packaged units): /var/lib/dbward. The
            // first directory when the unit names several.
            .or_else(|| {
                env("STATE_DIRECTORY")
                    .and_then(|v| v.split(':').next().map(PathBuf::from))
                    .filter(|p| p.is_absolute())
            })
            .unwrap_or_else(|| PathBuf::from("./.dbward")),
        lock_timeout,
        lock_retries: migrate.lock_retries.unwrap_or(LOCK_RETRIES),
        no_transaction_lock_timeout: match migrate.no_transaction_lock_timeout.as_deref() {
            None | Some("none") => None,
            Some(v) => Some(duration_key(
                "migrate.no_transaction_lock_timeout",
                Some(v),
                Duration::ZERO,
            )?)
            // 0 is PostgreSQL's "no limit" too.
            .filter(|d| !d.is_zero()),
        },
        level: match backup.level {
            Some(l) if (1..=19).contains(&l) => l,
            Some(l) => {
                return Err(SettingsError(format!(
                    "config key backup.level: {l} is not a zstd level from 1 to 19"
                )))
            }
            None => 3,
        },
        temp_dir: args
            .temp_dir
            .clone()
            .or_else(|| env("DBWARD_TEMP_DIR").map(PathBuf::from))
            .or_else(|| backup.temp_dir.map(|p| base.path(p))),
        drill: drill_section(env, drill, &base)?,
        once_within: match &schedule.once_within {
            Some(v) => Some(duration_key(
                "schedule.once_within",
                Some(v),
                Duration::ZERO,
            )?)
            .filter(|d| !d.is_zero()),
            None => None,
        },
        schedule,
        notify,
        health: health_section(env, health)?,
        retention: backup::retention::Policy {
            keep_last: retention.keep_last.unwrap_or(0),
            keep_daily: retention.keep_daily.unwrap_or(0),
            keep_weekly: retention.keep_weekly.unwrap_or(0),
            keep_monthly: retention.keep_monthly.unwrap_or(0),
        },
        stream_window: match &retention.stream_window {
            Some(v) => Some(duration_key(
                "retention.stream_window",
                Some(v),
                Duration::ZERO,
            )?),
            None => None,
        },
        keep_replaced: restore.keep_replaced.unwrap_or(3),
        restore_if_missing: env("DBWARD_RESTORE_IF_MISSING")
            .map(|v| matches!(v.as_str(), "1" | "true" | "yes"))
            .or(restore.if_missing)
            .unwrap_or(false),
        encryption: encryption_section(env, encryption, &base)?,
        hooks: Hooks {
            after_migrate: hooks.after_migrate.unwrap_or_default(),
            always: hooks.always.unwrap_or(false),
            timeout: duration_key(
                "hooks.timeout",
                hooks.timeout.as_deref(),
                Duration::from_secs(3600),
            )?,
        },
        pitr: pitr_section(pitr)?,
    })
}

/// The environment as [`resolve`] reads it.
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The config file's directory: relative paths and `file://` URLs in the file are taken from
/// there, not from wherever dbward runs.
struct Base(PathBuf);

impl Base {
    fn path(&self, p: PathBuf) -> PathBuf {
        if p.is_relative() && self.0 != Path::new("") {
            self.0.join(p)
        } else {
            p
        }
    }

    fn url(&self, u: String) -> String {
        rebase_url(&u, &self.0)
    }
}

/// The wait for a table lock inside the batch: `database.table_lock_timeout`. Its older name,
/// `database.lock_timeout`, read like the migration lock's wait (`--lock-timeout`), which it
/// never was: still read, with a warning.
fn table_lock_timeout(db: &DatabaseSection) -> Result<Duration, SettingsError> {
    let (key, value) = match (db.table_lock_timeout.clone(), db.lock_timeout.clone()) {
        (Some(_), Some(_)) => {
            return Err(SettingsError(
                "config keys database.table_lock_timeout and database.lock_timeout (its older name) are both set: keep database.table_lock_timeout".into(),
            ))
        }
        (Some(v), None) => ("database.table_lock_timeout", Some(v)),
        (None, Some(v)) => {
            tracing::warn!(
                "config key database.lock_timeout is now database.table_lock_timeout (how long one statement of the batch waits for a table lock; --lock-timeout is how long `migrate` waits for the migration lock): rename it"
            );
            ("database.lock_timeout", Some(v))
        }
        (None, None) => ("database.table_lock_timeout", None),
    };
    duration_key(key, value.as_deref(), Duration::from_secs(5))
}

/// `[store]`, resolved.
struct StoreResolved {
    url: String,
    mirrors: Vec<String>,
    require_all: bool,
    endpoint: Option<String>,
    region: Option<String>,
    path_style: bool,
    part_size: Option<usize>,
    ca_file: Option<PathBuf>,
    timeout: Duration,
    group: Option<u32>,
}

fn store_section(
    args: &GlobalArgs,
    env: Env,
    file: StoreSection,
    base: &Base,
) -> Result<StoreResolved, SettingsError> {
    let timeout = match env("DBWARD_STORE_TIMEOUT") {
        Some(v) => {
            parse_duration(&v).map_err(|e| SettingsError(format!("DBWARD_STORE_TIMEOUT: {e}")))?
        }
        None => duration_key(
            "store.timeout",
            file.timeout.as_deref(),
            backup::store::s3::DEFAULT_TIMEOUT,
        )?,
    };
    if timeout < Duration::from_secs(1) {
        return Err(SettingsError(format!(
            "store.timeout {}: at least 1s",
            dbconn::error::humanize(timeout)
        )));
    }
    let part_size = match &file.part_size {
        Some(v) => Some(parse_size(v).filter(|n| *n >= 5 << 20).ok_or_else(|| {
            SettingsError(format!(
                "config key store.part_size: `{v}` is not a size of at least 5MiB, like 16MiB"
            ))
        })?),
        None => None,
    };
    let require_all = match env("DBWARD_STORE_REQUIRE")
        .or(file.require.clone())
        .as_deref()
    {
        None | Some("all") => true,
        Some("primary") => false,
        Some(other) => {
            return Err(SettingsError(format!(
                "store.require (or DBWARD_STORE_REQUIRE): `{other}` is not `all` or `primary`"
            )))
        }
    };
    let mirrors: Vec<String> = match env("DBWARD_STORE_MIRRORS") {
        Some(v) => v
            .split([',', ' '])
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        None => file
            .mirrors
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|u| base.url(u))
            .collect(),
    };
    let path_style_env =
        env("DBWARD_S3_PATH_STYLE").map(|v| matches!(v.as_str(), "1" | "true" | "yes"));
    let url = args
        .store
        .clone()
        .or_else(|| env("DBWARD_STORE"))
        .or_else(|| file.url.map(|u| base.url(u)))
        .unwrap_or_else(|| "file://./.dbward/snapshots".into());
    // S3 settings beside stores that are all directories are a set-up gone wrong (a store URL
    // left at its default, say), not something to ignore.
    let s3_keys: Vec<&str> = [
        (
            "store.endpoint (--s3-endpoint)",
            args.s3_endpoint.is_some() || file.endpoint.is_some(),
        ),
        (
            "store.region (--s3-region)",
            args.s3_region.is_some() || file.region.is_some(),
        ),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    // A store given by flag or environment for one run (`--store file:///backups/app` to
    // restore from the mirror when the primary is gone) does not make the file's S3 keys wrong.
    let store_overridden = args.store.is_some() || env("DBWARD_STORE").is_some();
    if !store_overridden
        && !s3_keys.is_empty()
        && !std::iter::once(&url)
            .chain(&mirrors)
            .any(|u| u.starts_with("s3://"))
    {
        return Err(SettingsError(format!(
            "{} set, but the store is {url}{}: they apply to s3:// stores only. Set the store to s3://BUCKET/PREFIX, or remove them",
            s3_keys.join(" and "),
            if mirrors.is_empty() { String::new() } else { format!(" and its mirrors are {}", mirrors.join(", ")) }
        )));
    }
    Ok(StoreResolved {
        url,
        mirrors,
        require_all,
        endpoint: args
            .s3_endpoint
            .clone()
            .or_else(|| env("DBWARD_S3_ENDPOINT"))
            .or(file.endpoint),
        region: args
            .s3_region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or(file.region),
        path_style: args.s3_path_style || path_style_env.or(file.path_style).unwrap_or(false),
        part_size,
        ca_file: ca_file(env("AWS_CA_BUNDLE"), file.ca_file.map(|p| base.path(p))),
        timeout,
        group: match &file.group {
            Some(g) => Some(group_id(g).ok_or_else(|| {
                SettingsError(format!(
                    "config key store.group: no group `{g}` on this host (a name or a number)"
                ))
            })?),
            None => None,
        },
    })
}

fn drill_section(env: Env, file: DrillSection, base: &Base) -> Result<Drill, SettingsError> {
    let optional = |key: &str, v: Option<String>| {
        v.as_deref()
            .map(|v| duration_key(key, Some(v), Duration::ZERO))
            .transpose()
    };
    Ok(Drill {
        database: env("DBWARD_DRILL_DATABASE").or(file.database),
        probes: file.probes.unwrap_or_default(),
        metrics: file.metrics.map(|p| base.path(p)),
        max_rto: optional("drill.max_rto", file.max_rto)?,
        max_snapshot_age: optional("drill.max_snapshot_age", file.max_snapshot_age)?,
    })
}

fn health_section(env: Env, file: HealthSection) -> Result<Health, SettingsError> {
    let hosts = file.hosts.unwrap_or_default();
    if let Some(bad) = hosts.iter().find(|h| !h.starts_with("http://")) {
        return Err(SettingsError(format!(
            "health.hosts: `{bad}` is not an http:// URL (each other host's health endpoint, as this host reaches it)"
        )));
    }
    Ok(Health {
        hosts,
        hosts_rule: file.hosts_rule.unwrap_or_default(),
        url: env("DBWARD_HEALTH_URL").or(file.url),
        timeout: duration_key(
            "health.timeout",
            file.timeout.as_deref(),
            Duration::from_secs(60),
        )?,
        interval: duration_key(
            "health.interval",
            file.interval.as_deref(),
            Duration::from_secs(1),
        )?,
        expect_status: file.expect_status.unwrap_or_default(),
        expect_body: file.expect_body,
        checks: file.checks.unwrap_or_default(),
        probes: file.probes.unwrap_or_default(),
        on_failure: match env("DBWARD_HEALTH_ON_FAILURE") {
            Some(v) => parse_on_failure("DBWARD_HEALTH_ON_FAILURE", &v)?,
            None => match &file.on_failure {
                Some(v) => parse_on_failure("config key health.on_failure", v)?,
                None => OnFailure::Restore,
            },
        },
    })
}

fn encryption_section(
    env: Env,
    file: EncryptionSection,
    base: &Base,
) -> Result<Encryption, SettingsError> {
    let mut recipients = file.recipients.unwrap_or_default();
    if let Some(f) = file.recipients_file {
        let f = base.path(f);
        let text = std::fs::read_to_string(&f).map_err(|e| {
            SettingsError(format!(
                "config key encryption.recipients_file: {}: {e}",
                f.display()
            ))
        })?;
        recipients.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    Ok(Encryption {
        recipients,
        identity_file: env("DBWARD_AGE_IDENTITY_FILE")
            .map(PathBuf::from)
            .or_else(|| file.identity_file.map(|p| base.path(p))),
        passphrase: env("DBWARD_AGE_PASSPHRASE").map(Secret),
        manifest_details: file.manifest_details.unwrap_or(true),
    })
}

fn pitr_section(file: PitrSection) -> Result<Pitr, SettingsError> {
    Ok(Pitr {
        restore_point_wait: duration_key(
            "pitr.restore_point_wait",
            file.restore_point_wait.as_deref(),
            Duration::from_secs(30),
        )?,
        base_max_wal: match &file.base_max_wal {
            Some(v) => Some(parse_size(v).filter(|n| *n >= 16 << 20).ok_or_else(|| {
                SettingsError(format!(
                    "config key pitr.base_max_wal: `{v}` is not a size of at least 16MiB, like 4GiB"
                ))
            })? as u64),
            None => None,
        },
        server: match file.server {
            Some(s) if !s.data_dir.is_absolute() => {
                return Err(SettingsError(format!(
                    "config key pitr.server.data_dir: `{}` is not an absolute path",
                    s.data_dir.display()
                )))
            }
            Some(s) if s.stop.trim().is_empty() || s.start.trim().is_empty() => {
                return Err(SettingsError(
                    "config keys pitr.server.stop and pitr.server.start: both commands are needed".into(),
                ))
            }
            Some(s)
                if [("stop_timeout", &s.stop_timeout), ("start_timeout", &s.start_timeout)]
                    .iter()
                    .any(|(_, v)| v.as_deref().is_some_and(|v| parse_duration(v).is_err())) =>
            {
                return Err(SettingsError(format!(
                    "config keys pitr.server.stop_timeout / start_timeout: `{}` / `{}` must be durations, like 5m",
                    s.stop_timeout.as_deref().unwrap_or("unset"),
                    s.start_timeout.as_deref().unwrap_or("unset")
                )))
            }
            // `/var/lib/postgresql/15/main/` names the same directory as without the slash.
            Some(mut s) => {
                s.data_dir = s.data_dir.components().collect();
                Some(s)
            }
            None => None,
        },
    })
}

/// A group's id, by name or number.
fn group_id(g: &str) -> Option<u32> {
    if let Ok(n) = g.parse() {
        return Some(n);
    }
    let name = std::ffi::CString::new(g).ok()?;
    // SAFETY: getgrnam with a NUL-terminated name; the result is read at once, before any
    // other call that could reuse its static buffer.
    let entry = unsafe { libc::getgrnam(name.as_ptr()) };
    (!entry.is_null()).then(|| unsafe { (*entry).gr_gid })
}

/// The CA file in effect: `AWS_CA_BUNDLE` over `store.ca_file` (the environment wins over the
/// file), said when both are set and differ, so a system-wide `AWS_CA_BUNDLE` never overrides
/// the configured one unseen.
fn ca_file(env: Option<String>, file: Option<PathBuf>) -> Option<PathBuf> {
    match (env.map(PathBuf::from), file) {
        (Some(e), Some(f)) if e != f => {
            tracing::warn!(
                "the store's CA certificates come from AWS_CA_BUNDLE={} (the environment wins over the config file); store.ca_file = {} is not used: unset AWS_CA_BUNDLE for dbward (in its unit's environment) to use it",
                e.display(),
                f.display()
            );
            Some(e)
        }
        (Some(e), _) => Some(e),
        (None, f) => f,
    }
}

fn duration_key(
    key: &str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, SettingsError> {
    match value {
        Some(v) => parse_duration(v).map_err(|e| SettingsError(format!("config key {key}: {e}"))),
        None => Ok(default),
    }
}

/// `16MiB`, `8MB`, `1GiB` or a number of bytes.
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: usize = n.parse().ok()?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `sqlite:app.db` and `file://./snaps` in a config file are relative to the file's directory.
fn rebase_url(url: &str, base: &Path) -> String {
    if base == Path::new("") || base == Path::new(".") {
        return url.to_string();
    }
    for prefix in ["sqlite://", "sqlite:", "file://"] {
        if let Some(rest) = url.strip_prefix(prefix) {
            if !rest.starts_with('/') {
                return format!("{prefix}{}", base.join(rest).display());
            }
            return url.to_string();
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn passwords_in_urls() {
        assert!(has_password("postgres://app:s3cret@db/app"));
        assert!(has_password("postgres://app:p@ss@db/app"));
        assert!(!has_password("postgres://app@db/app"));
        assert!(!has_password("sqlite:/var/lib/app/app.db"));
        assert!(!has_password("postgres://db/app?user=x"));
    }

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn systemds_state_directory_is_the_default_state_dir() {
        let args = GlobalArgs::default();
        let systemd = |k: &str| {
            (k == "STATE_DIRECTORY").then(|| "/var/lib/dbward:/var/lib/other".to_string())
        };
        let s = resolve(&args, systemd, None).unwrap();
        assert_eq!(s.state_dir, PathBuf::from("/var/lib/dbward"));
        // The config file's state_dir (and the flag and DBWARD_STATE_DIR) still win.
        let s = resolve(
            &args,
            systemd,
            Some((file("state_dir = \"st\""), "/etc/app".into())),
        )
        .unwrap();
        assert_eq!(s.state_dir, PathBuf::from("/etc/app/st"));
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let cfg = "[database]\nurl = \"sqlite:file.db\"\nmigrations = \"m\"\n[store]\nurl = \"file://snaps\"";
        let env: HashMap<&str, &str> = [
            ("DATABASE_URL", "sqlite:env2.db"),
            ("DBWARD_MIGRATIONS", "envm"),
        ]
        .into();
        let get = |k: &str| env.get(k).map(|v| v.to_string());
        let mut args = GlobalArgs::default();
        let s = resolve(&args, get, Some((file(cfg), "/etc/app".into()))).unwrap();
        assert_eq!(s.database.as_deref(), Some("sqlite:env2.db"));
        assert_eq!(s.migrations, PathBuf::from("envm"));
        assert_eq!(s.store, "file:///etc/app/snaps");
        assert_eq!(s.state_dir, PathBuf::from("./.dbward"));
        assert_eq!(s.lock_timeout, Duration::from_secs(5));

        args.database = Some("sqlite:flag.db".into());
        let s = resolve(&args, |_| None, Some((file(cfg), "/etc/app".into()))).unwrap();
        assert_eq!(s.database.as_deref(), Some("sqlite:flag.db"));
        assert_eq!(s.migrations, PathBuf::from("/etc/app/m"));

        let s = resolve(
            &GlobalArgs::default(),
            |_| None,
            Some((file(cfg), "/etc/app".into())),
        )
        .unwrap();
        assert_eq!(s.database.as_deref(), Some("sqlite:/etc/app/file.db"));
    }

    #[test]
    fn dbward_database_beats_database_url() {
        let get = |k: &str| match k {
            "DBWARD_DATABASE" => Some("sqlite:a.db".to_string()),
            "DATABASE_URL" => Some("sqlite:b.db".to_string()),
            _ => None,
        };
        let s = resolve(&GlobalArgs::default(), get, None).unwrap();
        assert_eq!(s.database.as_deref(), Some("sqlite:a.db"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = toml::from_str::<FileConfig>("[database]\nurll = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("urll"), "{err}");
        let err = toml::from_str::<FileConfig>("[databse]\nurl = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("databse"), "{err}");
    }

    #[test]
    fn s3_keys_beside_a_directory_store_are_refused_unless_the_store_is_given_for_the_run() {
        let cfg = "[store]\nurl = \"file:///srv/snapshots\"\nendpoint = \"https://x.r2.cloudflarestorage.com\"\nregion = \"auto\"\n";
        let err = resolve(
            &GlobalArgs::default(),
            |_| None,
            Some((file(cfg), "/".into())),
        )
        .expect_err("refused");
        assert!(err.0.contains("apply to s3:// stores only"), "{}", err.0);
        // An R2 primary with a directory mirror, read from the mirror for one run.
        let r2 = "[store]\nurl = \"s3://backups/app\"\nmirrors = [\"file:///backups/app\"]\nendpoint = \"https://x.r2.cloudflarestorage.com\"\n";
        let args = GlobalArgs {
            store: Some("file:///backups/app".into()),
            ..GlobalArgs::default()
        };
        let s = resolve(&args, |_| None, Some((file(r2), "/".into()))).unwrap();
        assert_eq!(s.store, "file:///backups/app");
        let env = |k: &str| (k == "DBWARD_STORE").then(|| "file:///backups/app".to_string());
        assert!(resolve(&GlobalArgs::default(), env, Some((file(cfg), "/".into()))).is_ok());
    }

    #[test]
    fn bad_durations_name_the_key() {
        let err = resolve(
            &GlobalArgs::default(),
            |_| None,
            Some((file("[database]\nlock_timeout = \"soon\""), ".".into())),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("database.lock_timeout"), "{err}");
        let err = resolve(
            &GlobalArgs::default(),
            |_| None,
            Some((
                file("[database]\ntable_lock_timeout = \"soon\""),
                ".".into(),
            )),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("database.table_lock_timeout"), "{err}");
    }

    #[test]
    fn the_table_lock_wait_has_its_own_name_and_the_older_one_still_reads() {
        let get = |s: &str| {
            resolve(
                &GlobalArgs::default(),
                |_| None,
                Some((file(s), ".".into())),
            )
        };
        assert_eq!(
            get("[database]\ntable_lock_timeout = \"2s\"")
                .unwrap()
                .lock_timeout,
            Duration::from_secs(2)
        );
        assert_eq!(
            get("[database]\nlock_timeout = \"3s\"")
                .unwrap()
                .lock_timeout,
            Duration::from_secs(3)
        );
        assert!(get("[database]\nlock_timeout = \"3s\"\ntable_lock_timeout = \"2s\"").is_err());
    }
}

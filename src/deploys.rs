//! The deploy log: one entry per `migrate` that applied something (or failed), and per restore
//! of a deploy by the health guard, with who ran it (user, host), the release and the reason.
//! Appended to `<state_dir>/deploys-<db>.jsonl` and written beside the snapshots in the store
//! (`<db>/deploys/<at>-<tag>.json`, never pruned), so it survives the host.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// RFC 3339, UTC.
    pub at: String,
    /// `migrate` or `restore`.
    pub event: String,
    pub database: String,
    #[serde(default)]
    pub applied: Vec<i64>,
    /// Repeatable migrations applied, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repeatable: Vec<String>,
    pub snapshot: Option<String>,
    pub user: String,
    pub host: String,
    /// `DBWARD_RELEASE` (a git SHA, say).
    pub release: Option<String>,
    /// `migrate --reason`.
    pub reason: Option<String>,
    /// `applied`, `failed: ...`, `restored by the health guard: ...`.
    pub outcome: String,
}

impl Entry {
    pub fn new(event: &str, database: String, outcome: String) -> Entry {
        Entry {
            at: backup::manifest::now_rfc3339(time::OffsetDateTime::now_utc()),
            event: event.into(),
            database,
            applied: Vec::new(),
            repeatable: Vec::new(),
            snapshot: None,
            user: user(),
            host: backup::hostname(),
            release: std::env::var("DBWARD_RELEASE")
                .ok()
                .filter(|r| !r.is_empty()),
            reason: None,
            outcome,
        }
    }
}

/// Who runs this: `$USER` (or `$LOGNAME`), else the uid.
fn user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| {
            // SAFETY: getuid has no preconditions.
            format!("uid {}", unsafe { libc::getuid() })
        })
}

fn log_path(state_dir: &Path, database: &str) -> PathBuf {
    state_dir.join(format!("deploys-{database}.jsonl"))
}

fn store_key(database: &str, e: &Entry) -> String {
    let stamp: String = e.at.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let tag = std::process::id() % 0x10000;
    format!("{database}/deploys/{stamp}-{tag:04x}.json")
}

/// Appends `e` to the log in the state dir and writes it to the store. Failures are logged, not
/// fatal: the log records a deploy, it does not decide it.
pub async fn append(state_dir: &Path, store: Option<&backup::Store>, database: &str, e: &Entry) {
    let line = serde_json::to_string(e).expect("serializes");
    let path = log_path(state_dir, database);
    let written = backup::scratch::create_private_dir(state_dir).and_then(|()| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .mode(0o600)
            .create(true)
            .append(true)
            .open(&path)?;
        f.write_all(format!("{line}\n").as_bytes())?;
        f.sync_all()
    });
    if let Err(err) = written {
        tracing::warn!(
            "could not append to the deploy log {}: {err}",
            path.display()
        );
    }
    if let Some(store) = store {
        let json = serde_json::to_vec_pretty(e).expect("serializes");
        if let Err(err) = store.put_new(&store_key(database, e), &json).await {
            tracing::warn!(
                "could not store the deploy record: {}",
                backup::error::chain(&err)
            );
        }
    }
}

/// The log, newest first: the state dir's, else (a new host) the store's copies.
pub async fn read(state_dir: &Path, store: &backup::Store, database: &str) -> Vec<Entry> {
    let mut out: Vec<Entry> = std::fs::read_to_string(log_path(state_dir, database))
        .map(|s| {
            s.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default();
    if out.is_empty() {
        for obj in store
            .list(&format!("{database}/deploys"))
            .await
            .unwrap_or_default()
        {
            if let Ok(bytes) = store.get_bytes(&obj.key).await {
                if let Ok(e) = serde_json::from_slice(&bytes) {
                    out.push(e);
                }
            }
        }
    }
    // By time, not by text: RFC 3339 drops trailing zeros of the fraction, so `41.5Z` and
    // `41Z` do not sort as text.
    let time = |e: &Entry| {
        time::OffsetDateTime::parse(&e.at, &time::format_description::well_known::Rfc3339).ok()
    };
    out.sort_by_key(|e| std::cmp::Reverse(time(e)));
    out
}

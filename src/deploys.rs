//! The deploy log: one entry per `migrate` that applied something (or failed), and per restore
//! of a deploy by the health guard, with who ran it (user, host), the release and the reason.
//! Appended to the database's log in the state dir (`deploys-<db>.<key>.jsonl`, see
//! [`Scope`]) and written beside the snapshots in the store (`<db>/deploys/<at>-<tag>.json`,
//! never pruned), so it survives the host and every host reads every other's.

use std::io::Write;

use crate::state::Scope;

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
    /// The guard's: what the other hosts (`[health] hosts`) answered, and the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<crate::hosts::Verdict>,
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
            hosts: None,
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

fn stamp(at: &str) -> String {
    at.chars().filter(|c| c.is_ascii_alphanumeric()).collect()
}

fn store_key(database: &str, e: &Entry) -> String {
    let tag = std::process::id() % 0x10000;
    format!("{database}/deploys/{}-{tag:04x}.json", stamp(&e.at))
}

/// Appends `e` to the log in the state dir and writes it to the store. Failures are logged, not
/// fatal: the log records a deploy, it does not decide it.
pub async fn append(scope: &Scope, store: Option<&backup::Store>, e: &Entry) {
    let line = serde_json::to_string(e).expect("serializes");
    let path = scope.log_path();
    let written = backup::scratch::create_private_dir(scope.dir()).and_then(|()| {
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
        if let Err(err) = store.put_new(&store_key(scope.name(), e), &json).await {
            tracing::warn!(
                "could not store the deploy record: {}",
                backup::error::chain(&err)
            );
        }
    }
}

/// The log, newest first: this host's (the state dir) and every other host's (the store's
/// copies, one object per entry). An entry of the store whose moment this host's log holds is
/// this host's own and is not read again; a store that cannot be listed leaves this host's log
/// alone, with a warning.
pub async fn read(scope: &Scope, store: &backup::Store) -> Vec<Entry> {
    let mut out: Vec<Entry> = std::fs::read_to_string(scope.log_path())
        .map(|s| {
            s.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default();
    let local: std::collections::HashSet<String> = out.iter().map(|e| stamp(&e.at)).collect();
    match store.list(&format!("{}/deploys", scope.name())).await {
        Ok(objects) => {
            for obj in objects {
                let name = obj.key.rsplit('/').next().unwrap_or_default();
                let at = name.split('-').next().unwrap_or_default();
                if local.contains(at) {
                    continue;
                }
                match store.get_bytes(&obj.key).await {
                    Ok(bytes) => match serde_json::from_slice(&bytes) {
                        Ok(e) => out.push(e),
                        Err(err) => tracing::warn!("{}: not a deploy record: {err}", obj.key),
                    },
                    Err(err) => tracing::warn!("{}", backup::error::chain(&err)),
                }
            }
        }
        Err(err) => tracing::warn!(
            "the deploy records of other hosts could not be listed: {}",
            backup::error::chain(&err)
        ),
    }
    // By time, not by text: RFC 3339 drops trailing zeros of the fraction, so `41.5Z` and
    // `41Z` do not sort as text.
    let time = |e: &Entry| {
        time::OffsetDateTime::parse(&e.at, &time::format_description::well_known::Rfc3339).ok()
    };
    out.sort_by_key(|e| std::cmp::Reverse(time(e)));
    out
}

/// The newest deploy that changed the database, on any host: `restore pre-deploy` restores its
/// snapshot (a later `migrate` that found nothing pending does not hide it; one that took no
/// snapshot is not skipped for an older one that did).
pub async fn last_change(scope: &Scope, store: &backup::Store) -> Option<Entry> {
    read(scope, store)
        .await
        .into_iter()
        .find(|e| e.event == "migrate" && (!e.applied.is_empty() || !e.repeatable.is_empty()))
}

//! Replaced copies: every restore keeps the database it replaced (`app.db.replaced-<ts>`,
//! `<db>_replaced_<ts>_<tag>`). dbward records each by its exact name in the state dir, and
//! after a successful restore removes the oldest recorded ones beyond `restore.keep_replaced`,
//! never the one just kept. A copy that was not recorded (made by hand, or by an older
//! dbward) is never removed.

use migrator::DatabaseUrl;

use crate::settings::Settings;
use crate::state::{self, ReplacedCopy};

/// Records `name` as kept by a restore of `snapshot`, then trims the recorded copies.
pub async fn record_and_trim(settings: &Settings, url: &DatabaseUrl, name: &str, snapshot: &str) {
    let scope = state::Scope::of(&settings.state_dir, url).await;
    let mut copies = match scope.read_replaced() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("not trimming replaced copies: {}", backup::error::chain(&e));
            return;
        }
    };
    // A SQLite copy by its absolute path, so that a run from another directory finds it (its
    // directory's: a copy of a missing database's side files has no file of its own).
    let name = match url {
        DatabaseUrl::Sqlite(_) => absolute(std::path::Path::new(name))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| name.to_string()),
        DatabaseUrl::Postgres(_) => name.to_string(),
    };
    copies.push(ReplacedCopy {
        name,
        engine: engine(url).into(),
        at: backup::manifest::now_rfc3339(time::OffsetDateTime::now_utc()),
        snapshot: snapshot.to_string(),
    });
    // The newest `keep` stay, and always the one just kept.
    let keep = settings.keep_replaced.max(1);
    let excess = copies.len().saturating_sub(keep);
    let mut kept = Vec::new();
    for (i, c) in copies.into_iter().enumerate() {
        if i < excess {
            match remove(url, &c).await {
                Ok(()) => tracing::info!(
                    "removed the replaced copy {} (restore.keep_replaced = {})",
                    c.name,
                    settings.keep_replaced
                ),
                Err(e) => {
                    tracing::warn!(
                        "keeping the replaced copy {}: {}",
                        c.name,
                        backup::error::chain(&e)
                    );
                    kept.push(c);
                }
            }
        } else {
            kept.push(c);
        }
    }
    if let Err(e) = scope.write_replaced(&kept) {
        tracing::warn!("recording replaced copies: {}", backup::error::chain(&e));
    }
}

/// `p` with its directory made absolute and its links resolved (the file itself need not exist).
fn absolute(p: &std::path::Path) -> Option<std::path::PathBuf> {
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    Some(std::fs::canonicalize(dir).ok()?.join(p.file_name()?))
}

fn engine(url: &DatabaseUrl) -> &'static str {
    match url {
        DatabaseUrl::Sqlite(_) => "sqlite",
        DatabaseUrl::Postgres(_) => "postgres",
    }
}

/// Removes one recorded copy by its exact name, if it was recorded for this engine.
async fn remove(url: &DatabaseUrl, c: &ReplacedCopy) -> Result<(), backup::Error> {
    if c.engine != engine(url) {
        return Err(backup::Error::Refused("recorded for another engine".into()));
    }
    backup::restore::replaced::remove(url, &c.name).await
}

/// The recorded copies that still exist, with their size in bytes, for `status`.
pub async fn list(settings: &Settings, url: &DatabaseUrl) -> Vec<(ReplacedCopy, Option<u64>)> {
    let copies = state::Scope::of(&settings.state_dir, url)
        .await
        .read_replaced()
        .unwrap_or_default();
    let mut out = Vec::new();
    for c in copies {
        let size = backup::restore::replaced::size(url, &c.name).await;
        if size.is_some() {
            out.push((c, size));
        }
    }
    out
}

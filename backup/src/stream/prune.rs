//! The stream's retention in time (`retention.stream_window`): a generation whose every state
//! is older than the window (the next generation began before it) is removed; the newest is
//! never, nor one a deploy's stream position names (a snapshot, kept by the snapshots' rules). Only this database's generations are looked at (its identity), and only keys of the
//! stream's own scheme inside a generation's folder are deleted: its record first (from then
//! on it is not a generation a restore would take), then its base and its steps.

use time::OffsetDateTime;

use super::restore::generations;
use crate::error::Error;
use crate::store::Store;

/// The generations removed (or, with `dry_run`, that would be), oldest first.
pub async fn prune(
    store: &Store,
    database: &str,
    id: Option<&str>,
    window: std::time::Duration,
    dry_run: bool,
) -> Result<Vec<String>, Error> {
    let horizon = OffsetDateTime::now_utc() - window;
    let all = generations(store, database, id).await?;
    // A deploy's stream position (a snapshot until the snapshots' rules remove it) needs its
    // generation whole: kept whatever the window says.
    let named: std::collections::BTreeSet<String> = crate::catalog::list_all(store, database)
        .await?
        .snapshots
        .into_iter()
        .filter_map(|m| m.stream.map(|p| p.generation))
        .collect();
    let mut removed = Vec::new();
    // Newest first: each generation's states end where the one before it in this list began.
    for pair in all.windows(2) {
        let (next, old) = (&pair[0], &pair[1]);
        let ended = OffsetDateTime::parse(
            &next.started_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|e| Error::Damaged(format!("generation {}: started_at: {e}", next.generation)))?;
        if ended >= horizon {
            continue;
        }
        if named.contains(&old.generation) {
            tracing::info!(
                "stream generation {} is past the window but kept: a deploy's position is in it",
                old.generation
            );
            continue;
        }
        removed.push(old.generation.clone());
        if dry_run {
            continue;
        }
        store
            .delete(&super::generation_key(database, &old.generation))
            .await?;
        let dir = super::generation_dir(database, &old.generation);
        for o in store.list(&dir).await? {
            let name = o.key.rsplit('/').next().unwrap_or_default();
            let ours = super::span_of(&o.key).is_some()
                || name == "base.sqlite.zst"
                || name == "base.sqlite.zst.age"
                || name == super::lease::NAME;
            if ours {
                store.delete(&o.key).await?;
            }
        }
        tracing::info!(
            "removed stream generation {} (its states ended at {}, before the window)",
            old.generation,
            next.started_at
        );
    }
    removed.reverse();
    Ok(removed)
}

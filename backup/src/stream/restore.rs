//! A stream's state built back into a new file: the newest generation's base (or the newest that
//! began by a given time), then its steps in order up to the last one (or the last captured by
//! that time), then the checks: the file's page hashes sum to the last step's state, and
//! `PRAGMA integrity_check` says ok. A gap in the steps, a step that does not decode or match
//! its header, or a state that does not match refuses the restore (damaged).

use std::io::Write;
use std::path::Path;

use time::OffsetDateTime;

use super::{pages, step, Generation};
use crate::crypt::Identities;
use crate::error::Error;
use crate::store::Store;

/// Which state a restore builds.
#[derive(Debug, Clone)]
pub enum Target {
    /// The newest the store holds.
    Newest,
    /// The newest read at or before this time.
    Until(OffsetDateTime),
    /// Exactly this position (a deploy's, [`crate::manifest::StreamPoint`]).
    Point(crate::manifest::StreamPoint),
}

/// What a restore from the stream built.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Restored {
    pub generation: String,
    /// The last step applied (0: the base alone).
    pub seq: u64,
    /// When the restored state was read on the replicator's host.
    pub captured_at: String,
    pub page_count: u32,
    pub state: String,
    /// Step objects applied after the base (a compacted one spans many steps).
    pub objects_applied: u64,
}

fn parse_time(t: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
}

/// The generations in `store` of the database whose identity is `id` (`None`: a database
/// without one), newest first: a generation of another database of the same name is left out,
/// as is one with an identity when this database has none (it is not provably this one's).
pub async fn generations(
    store: &Store,
    database: &str,
    id: Option<&str>,
) -> Result<Vec<Generation>, Error> {
    let mut names: Vec<String> = store
        .list(&super::dir(database))
        .await?
        .into_iter()
        .filter_map(|o| {
            let name = o.key.rsplit('/').next()?.strip_suffix(".json")?.to_string();
            (!name.is_empty() && !name.contains('.')).then_some(name)
        })
        .collect();
    // Newest first: names sort by the time they were made.
    names.sort();
    names.reverse();
    let mut out = Vec::new();
    for name in names {
        let key = super::generation_key(database, &name);
        let bytes = store.get_bytes(&key).await?;
        let g: Generation = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Damaged(format!(
                "{key} is not a stream generation dbward wrote: {e}"
            ))
        })?;
        if g.generation != name {
            return Err(Error::Damaged(format!(
                "{key} names generation {}",
                g.generation
            )));
        }
        if super::is_ours(g.database_id.as_deref(), id) {
            out.push(g);
        }
    }
    Ok(out)
}

/// Where the stream's newest state stands: its generation, its last step (0: the base alone)
/// and when that state was read. `None` when the store holds no stream of `database`.
pub async fn newest(
    store: &Store,
    database: &str,
    id: Option<&str>,
    identities: &Identities,
) -> Result<Option<(String, u64, String)>, Error> {
    let Some(g) = generations(store, database, id).await?.into_iter().next() else {
        return Ok(None);
    };
    let last = store
        .list(&super::generation_dir(database, &g.generation))
        .await?
        .into_iter()
        .filter_map(|o| super::seq_of(&o.key).map(|s| (s, o.key)))
        .max();
    let Some((seq, key)) = last else {
        return Ok(Some((g.generation, 0, g.started_at)));
    };
    let object = store.get_bytes(&key).await?;
    let h = step::header_of(&object, &key, identities)?;
    Ok(Some((g.generation, seq, h.captured_at)))
}

/// Builds the stream's state `target` into `to`, a file of the caller's (a temp file: what it holds is replaced); checked as the module
/// says. `None` when the store holds no
/// stream of `database` (none that began by the time, or not the position's generation).
pub async fn build(
    store: &Store,
    database: &str,
    id: Option<&str>,
    identities: &Identities,
    target: &Target,
    to: &Path,
) -> Result<Option<Restored>, Error> {
    let (until, point) = match target {
        Target::Newest => (None, None),
        Target::Until(t) => (Some(*t), None),
        Target::Point(p) => (None, Some(p)),
    };
    let chosen = generations(store, database, id)
        .await?
        .into_iter()
        .find(|g| match (point, until, parse_time(&g.started_at)) {
            (Some(p), _, _) => g.generation == p.generation,
            (None, None, _) => true,
            (None, Some(t), Some(started)) => started <= t,
            (None, Some(_), None) => false,
        });
    let Some(g) = chosen else {
        return Ok(None);
    };
    base_into(store, &g, identities, to).await?;
    let mut state = g.state.clone();
    let mut last = (0u64, g.started_at.clone(), g.page_count);
    let dir = super::generation_dir(database, &g.generation);
    // Every step object by the step it starts at, the widest first.
    let mut by_first: std::collections::BTreeMap<u64, Vec<(super::Span, String)>> =
        Default::default();
    for o in store.list(&dir).await? {
        if let Some(span) = super::span_of(&o.key) {
            by_first.entry(span.first).or_default().push((span, o.key));
        }
    }
    for objects in by_first.values_mut() {
        objects.sort_by_key(|o| std::cmp::Reverse(o.0.level));
    }
    let newest = by_first
        .values()
        .flatten()
        .map(|(s, _)| s.last)
        .max()
        .unwrap_or(0);
    // A position ends at its step: nothing past it is read.
    let newest = point.map_or(newest, |p| p.seq);
    let mut applied = 0;
    // From the base on, the widest object that starts where the state stands (and, with
    // `until`, was read by then): a day of steps is a few dozen objects.
    'next: while last.0 < newest {
        let Some(objects) = by_first.get(&(last.0 + 1)) else {
            return Err(Error::Damaged(format!(
                "the stream of generation {} has no step {} (its newest is {newest}): it cannot be followed past step {}",
                g.generation,
                last.0 + 1,
                last.0
            )));
        };
        for (span, key) in objects {
            if point.is_some_and(|p| span.last > p.seq) {
                continue;
            }
            let object = store.get_bytes(key).await?;
            // The header says when the state was read: past `until`, a narrower object (or
            // none: the restore ends here).
            if let Some(t) = until {
                let h = step::header_of(&object, key, identities)?;
                if parse_time(&h.captured_at).is_none_or(|c| c > t) {
                    continue;
                }
            }
            let h = step::apply(&object, key, identities, to)?;
            let first = h.first.unwrap_or(h.seq);
            if h.generation != g.generation
                || h.seq != span.last
                || first != span.first
                || h.page_size != g.page_size
            {
                return Err(Error::Damaged(format!(
                    "{key} says it holds steps {first}..={} of generation {}",
                    h.seq, h.generation
                )));
            }
            state = h.state;
            last = (h.seq, h.captured_at, h.page_count);
            applied += 1;
            continue 'next;
        }
        // Every object from here was read after `until`.
        break;
    }
    if let Some(p) = point {
        if last.0 != p.seq || state != p.state {
            return Err(Error::Damaged(format!(
                "the stream of generation {} does not come to the position's state at step {} (it came to step {}, state {state}; the position says {})",
                g.generation, p.seq, last.0, p.state
            )));
        }
    }
    check(to, g.page_size, &state)?;
    Ok(Some(Restored {
        generation: g.generation,
        seq: last.0,
        captured_at: last.1,
        page_count: last.2,
        state,
        objects_applied: applied,
    }))
}

/// The generation's base, decoded into `to` (a new file), checked against its record.
async fn base_into(
    store: &Store,
    g: &Generation,
    identities: &Identities,
    to: &Path,
) -> Result<(), Error> {
    let object = store.get_bytes(&g.base_key).await?;
    let sha = {
        use sha2::{Digest, Sha256};
        crate::pipeline::hex(&Sha256::digest(&object))
    };
    if sha != g.base_sha256 {
        return Err(Error::Damaged(format!(
            "{} failed its checksum (SHA-256 {sha}, the generation's record says {})",
            g.base_key, g.base_sha256
        )));
    }
    let plain = identities.plain(&object, &g.base_key, "")?;
    let mut dec = zstd::stream::read::Decoder::new(plain)
        .map_err(|e| Error::Damaged(format!("{} does not decode: {e}", g.base_key)))?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(to)
        .map_err(Error::io(format!("creating {}", to.display())))?;
    std::io::copy(&mut dec, &mut out)
        .map_err(|e| Error::Damaged(format!("{} does not decode: {e}", g.base_key)))?;
    out.flush()
        .and_then(|()| out.sync_all())
        .map_err(Error::io(format!("writing {}", to.display())))
}

/// The built file's page hashes sum to `state`, and SQLite finds it whole.
fn check(file: &Path, page_size: u32, state: &str) -> Result<(), Error> {
    let got = pages::text(
        pages::of_file(file, page_size)
            .map_err(Error::io(format!("reading {}", file.display())))?,
    );
    if got != state {
        return Err(Error::Damaged(format!(
            "the restored state's page hashes sum to {got}, and the stream says {state}"
        )));
    }
    // Opened as any new file is (its WAL and shared memory come and go beside it): nothing is
    // written to it.
    let c = rusqlite::Connection::open(file)
        .map_err(|e| Error::Damaged(format!("{} does not open: {e}", file.display())))?;
    let verdict: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| Error::Damaged(format!("integrity_check of {}: {e}", file.display())))?;
    if verdict != "ok" {
        return Err(Error::Damaged(format!(
            "integrity_check of the restored state: {verdict}"
        )));
    }
    Ok(())
}

//! A stream checked from its store's listing, without downloading it: every generation's base
//! is there at the size its record says, its steps run from 1 to the newest without a gap (a
//! compacted object covers the steps it holds), every deploy's position is in a generation that
//! reaches its step (through objects that end by it, as a restore reads them), and how long ago
//! the newest object was stored (the lag; the replicator's lease renewal counts, as it follows
//! a step that found the database unchanged).

use std::collections::BTreeSet;
use std::time::SystemTime;

use serde::Serialize;

use super::restore::generations;
use crate::error::Error;
use crate::store::Store;

/// One generation as the listing shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub generation: String,
    pub started_at: String,
    /// The newest step stored (0: the base alone).
    pub newest_seq: u64,
    /// Steps between 1 and the newest that no object holds.
    pub missing_steps: Vec<u64>,
    /// Why the base is not usable (missing, or another size than its record's).
    pub base_problem: Option<String>,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    /// Newest first.
    pub generations: Vec<Checked>,
    /// Seconds since the newest object of the newest generation was stored.
    pub lag_seconds: Option<f64>,
    /// The deploys' positions (`streampoint` snapshots) that cannot be restored, with why.
    pub unrestorable_positions: Vec<(String, String)>,
    /// How many positions were checked.
    pub positions: usize,
}

impl Verified {
    pub fn missing_steps(&self) -> usize {
        self.generations.iter().map(|g| g.missing_steps.len()).sum()
    }

    /// Every problem, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for g in &self.generations {
            if let Some(p) = &g.base_problem {
                out.push(format!("generation {}: {p}", g.generation));
            }
            if let Some(first) = g.missing_steps.first() {
                out.push(format!(
                    "generation {}: {} step(s) missing before its newest ({}), the first: {first}; it cannot be restored past step {}",
                    g.generation,
                    g.missing_steps.len(),
                    g.newest_seq,
                    first - 1
                ));
            }
        }
        for (id, why) in &self.unrestorable_positions {
            out.push(format!(
                "the deploy position {id} cannot be restored: {why}"
            ));
        }
        out
    }
}

/// Checks the stream of `database` (identity `id`) in `store`.
pub async fn verify(store: &Store, database: &str, id: Option<&str>) -> Result<Verified, Error> {
    let gens = generations(store, database, id).await?;
    let mut checked = Vec::new();
    let mut spans_of = Vec::new();
    let mut newest_stored: Option<SystemTime> = None;
    for (i, g) in gens.iter().enumerate() {
        let objects = store
            .list(&super::generation_dir(database, &g.generation))
            .await?;
        let mut covered = BTreeSet::new();
        let mut spans = Vec::new();
        let mut newest_seq = 0;
        let mut base = None;
        for o in &objects {
            if o.key == g.base_key {
                base = Some(o.size);
            }
            if let Some(span) = super::span_of(&o.key) {
                covered.extend(span.first..=span.last);
                newest_seq = newest_seq.max(span.last);
                spans.push(span);
            }
            // The holder's renewal follows a step the primary took (one that found nothing
            // changed stores nothing else): while the database does not change, it says the
            // stream is current, to the minute.
            if i == 0 {
                newest_stored = newest_stored.max(o.modified);
            }
        }
        let missing_steps = (1..=newest_seq).filter(|s| !covered.contains(s)).collect();
        let base_problem = match base {
            None => Some(format!("its base {} is not in the store", g.base_key)),
            Some(size) if size != g.base_stored_bytes => Some(format!(
                "its base {} is {size} bytes, and its record says {}",
                g.base_key, g.base_stored_bytes
            )),
            Some(_) => None,
        };
        spans_of.push(spans);
        checked.push(Checked {
            generation: g.generation.clone(),
            started_at: g.started_at.clone(),
            newest_seq,
            missing_steps,
            base_problem,
        });
    }
    let lag_seconds = newest_stored
        .and_then(|t| t.elapsed().ok())
        .map(|d| d.as_secs_f64());
    // The deploys' positions: this database's `streampoint` snapshots.
    let listing = crate::catalog::list_all(store, database).await?;
    let mut positions = 0;
    let mut unrestorable = Vec::new();
    for m in listing.snapshots {
        let Some(p) = &m.stream else { continue };
        if !super::is_ours(m.database_id.as_deref(), id) {
            continue;
        }
        positions += 1;
        let found = checked.iter().position(|c| c.generation == p.generation);
        let why = match found.map(|i| (&checked[i], &spans_of[i])) {
            None => Some(format!(
                "its generation {} is not in the store",
                p.generation
            )),
            Some((c, _)) if c.base_problem.is_some() => c.base_problem.clone(),
            Some((c, _)) if c.newest_seq < p.seq => Some(format!(
                "generation {} holds steps up to {}, and the position is at {}",
                p.generation, c.newest_seq, p.seq
            )),
            // As a restore reads it: only objects that end by the position's step.
            Some((_, spans)) => (1..=p.seq)
                .find(|s| {
                    !spans
                        .iter()
                        .any(|sp| sp.last <= p.seq && (sp.first..=sp.last).contains(s))
                })
                .map(|s| format!("step {s} of generation {} is missing", p.generation)),
        };
        if let Some(why) = why {
            unrestorable.push((m.id.clone(), why));
        }
    }
    Ok(Verified {
        generations: checked,
        lag_seconds,
        unrestorable_positions: unrestorable,
        positions,
    })
}

//! Retention, with restic's semantics: `keep_last` N newest; `keep_daily`/`weekly`/`monthly` N:
//! for the N most recent days (ISO weeks, months) that have snapshots, the newest of each. A
//! snapshot is kept if any rule keeps it; the newest snapshot is always kept. Days are UTC.

use serde::Serialize;
use time::OffsetDateTime;

use crate::manifest::Manifest;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

impl Policy {
    /// No rule set: prune keeps everything (deleting backups is never a default).
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: String,
    pub keep: bool,
    /// Why it is kept: `last`, `daily`, `weekly`, `monthly`, `newest`, `drilled`, `point` (a
    /// base a kept restore point needs).
    pub reasons: Vec<&'static str>,
}

/// Decides for each snapshot (any order in; newest first out).
pub fn decide(snapshots: &[Manifest], policy: &Policy) -> Vec<Decision> {
    let mut sorted: Vec<(&Manifest, OffsetDateTime)> = snapshots
        .iter()
        .map(|m| (m, m.created().unwrap_or(OffsetDateTime::UNIX_EPOCH)))
        .collect();
    sorted.sort_by(|a, b| (b.1, &b.0.id).cmp(&(a.1, &a.0.id)));

    type Bucket = fn(OffsetDateTime) -> (i32, u32);
    let rules: [(&'static str, u32, Bucket); 3] = [
        ("daily", policy.keep_daily, |t| {
            (t.year(), t.ordinal() as u32)
        }),
        ("weekly", policy.keep_weekly, |t| {
            let (y, w, _) = t.to_iso_week_date();
            (y, w as u32)
        }),
        ("monthly", policy.keep_monthly, |t| {
            (t.year(), t.month() as u32)
        }),
    ];
    let mut remaining: Vec<u32> = rules.iter().map(|r| r.1).collect();
    let mut last_bucket: Vec<Option<(i32, u32)>> = vec![None; rules.len()];

    sorted
        .iter()
        .enumerate()
        .map(|(i, (m, at))| {
            let mut reasons = Vec::new();
            if i == 0 {
                reasons.push("newest");
            }
            if (i as u32) < policy.keep_last {
                reasons.push("last");
            }
            for (r, (name, _, bucket)) in rules.iter().enumerate() {
                let b = bucket(at.to_offset(time::UtcOffset::UTC));
                if remaining[r] > 0 && last_bucket[r] != Some(b) {
                    last_bucket[r] = Some(b);
                    remaining[r] -= 1;
                    reasons.push(name);
                }
            }
            Decision {
                id: m.id.clone(),
                keep: !reasons.is_empty(),
                reasons,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Compression, Format, Kind};
    use std::collections::BTreeMap;

    fn snap(at: &str) -> Manifest {
        Manifest {
            format_version: 1,
            id: at.into(),
            kind: Kind::Scheduled,
            label: None,
            created_at: at.into(),
            engine: "sqlite".into(),
            server_version: String::new(),
            pg_dump_version: None,
            physical: None,
            stream: None,
            point: None,
            database: "app".into(),
            host: String::new(),
            dbward_version: String::new(),
            format: Format::Sqlite,
            data_key: String::new(),
            database_id: None,
            raw_bytes: 0,
            stored_bytes: 0,
            sha256: String::new(),
            compression: Compression {
                algorithm: "zstd".into(),
                level: 3,
            },
            encryption: None,
            migration_head: None,
            row_counts: BTreeMap::new(),
            duration_ms: 0,
        }
    }

    fn kept(snaps: &[Manifest], p: Policy) -> Vec<String> {
        decide(snaps, &p)
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.id)
            .collect()
    }

    /// Two snapshots a day (03:00 and 15:00) from 2026-01-01 to 2026-03-31.
    fn history() -> Vec<Manifest> {
        let mut out = Vec::new();
        let start = time::macros::datetime!(2026-01-01 03:00 UTC);
        for half_days in 0..(90 * 2) {
            let t = start + time::Duration::hours(12 * half_days);
            out.push(snap(
                &t.format(&time::format_description::well_known::Rfc3339)
                    .unwrap(),
            ));
        }
        out
    }

    #[test]
    fn keep_last() {
        let k = kept(
            &history(),
            Policy {
                keep_last: 3,
                ..Policy::default()
            },
        );
        assert_eq!(
            k,
            [
                "2026-03-31T15:00:00Z",
                "2026-03-31T03:00:00Z",
                "2026-03-30T15:00:00Z"
            ]
        );
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day() {
        let k = kept(
            &history(),
            Policy {
                keep_daily: 3,
                ..Policy::default()
            },
        );
        assert_eq!(
            k,
            [
                "2026-03-31T15:00:00Z",
                "2026-03-30T15:00:00Z",
                "2026-03-29T15:00:00Z"
            ]
        );
    }

    #[test]
    fn weekly_and_monthly_use_iso_weeks_and_months() {
        let k = kept(
            &history(),
            Policy {
                keep_weekly: 2,
                keep_monthly: 3,
                ..Policy::default()
            },
        );
        // 2026-03-31 is a Tuesday (ISO week 14); week 13 ends Sunday 2026-03-29.
        assert_eq!(
            k,
            [
                "2026-03-31T15:00:00Z",
                "2026-03-29T15:00:00Z",
                "2026-02-28T15:00:00Z",
                "2026-01-31T15:00:00Z"
            ]
        );
    }

    #[test]
    fn rules_combine_and_the_newest_is_always_kept() {
        let d = decide(
            &history(),
            &Policy {
                keep_last: 1,
                keep_daily: 2,
                ..Policy::default()
            },
        );
        assert_eq!(d[0].reasons, ["newest", "last", "daily"]);
        assert_eq!(d.iter().filter(|d| d.keep).count(), 2);
        let none = decide(
            &history(),
            &Policy {
                keep_monthly: 0,
                ..Policy::default()
            },
        );
        assert_eq!(
            none.iter().filter(|d| d.keep).count(),
            1,
            "an empty policy is refused by prune; decide still keeps the newest"
        );
    }
}

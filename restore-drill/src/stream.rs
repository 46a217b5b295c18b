//! A drill of a SQLite stream (`dbward replicate`): its newest state built apart, in a scratch
//! file, by [`backup::stream::restore::build`] (which checks the page hashes and
//! `integrity_check`), then the checks a SQLite snapshot gets: integrity and foreign keys, the
//! migration head against the folder, the probes. The RTO is the build's; the RPO is how long
//! before the drill the state was read. The scratch file goes with the drill.

use std::time::Instant;

use backup::store::set::StoreSet;

use crate::checks::{self, classify, Checks, Outcome};
use crate::{sqlite, Options, Report};

/// Drills the newest state of `database`'s stream (the generations of identity `id`), from
/// the primary store, else the first mirror that holds one.
pub async fn drill(stores: &StoreSet, database: &str, id: Option<&str>, opts: &Options) -> Report {
    let now = time::OffsetDateTime::now_utc();
    let mut checks = Checks::default();
    let started = Instant::now();
    let mut built = None;
    let mut copy = 0;
    let file = checks
        .run("restore", async {
            let file = backup::scratch::temp_in(&opts.temp_dir, "stream-drill-").map_err(classify)?;
            let found = stores
                .find(
                    |store| {
                        backup::stream::restore::build(
                            store,
                            database,
                            id,
                            &opts.identities,
                            &backup::stream::restore::Target::Newest,
                            &file,
                        )
                    },
                    |_, store, e| {
                        tracing::warn!("{}: {}", store.describe(""), backup::error::chain(e))
                    },
                )
                .await
                .map_err(classify)?
                .ok_or_else(|| checks::CheckFailure::Snapshot(format!("no store holds a stream of {database}")))?;
            copy = found.at;
            let detail = format!(
                "generation {} step {} ({} object(s) after the base), page hashes and integrity_check checked",
                found.value.generation, found.value.seq, found.value.objects_applied
            );
            built = Some(found.value);
            Ok((file, detail))
        })
        .await;
    let rto = file.as_ref().map(|_| started.elapsed().as_secs_f64());
    if let Some(file) = &file {
        let conn = rusqlite::Connection::open(&**file);
        match conn {
            Ok(c) => checks_of(&c, opts, &mut checks).await,
            Err(e) => {
                checks.record::<()>(
                    "integrity",
                    (Err(checks::CheckFailure::Snapshot(e.to_string())), 0.0),
                );
            }
        }
    }
    let (snapshot, age) = match &built {
        Some(b) => (
            format!("stream {} step {}", b.generation, b.seq),
            time::OffsetDateTime::parse(
                &b.captured_at,
                &time::format_description::well_known::Rfc3339,
            )
            .map(|c| (now - c).as_seconds_f64())
            .unwrap_or(f64::NAN),
        ),
        None => ("stream".to_string(), f64::NAN),
    };
    Report {
        snapshot,
        database: database.to_string(),
        engine: "sqlite".into(),
        started_at: backup::manifest::now_rfc3339(now),
        snapshot_age_seconds: age,
        rto_seconds: rto,
        rpo_seconds: rto.map(|_| age),
        stored_bytes: 0,
        raw_bytes: built
            .as_ref()
            .and_then(|b| file.as_ref().map(|f| (b, f)))
            .and_then(|(_, f)| std::fs::metadata(&**f).ok())
            .map_or(0, |m| m.len()),
        encrypted: false,
        copy,
        success: !checks.failed,
        checks: checks.list,
    }
}

/// Integrity and foreign keys, the migration head against the folder, the probes.
async fn checks_of(c: &rusqlite::Connection, opts: &Options, checks: &mut Checks) {
    if checks
        .run("integrity", async { sqlite::integrity(c) })
        .await
        .is_none()
    {
        return;
    }
    if checks
        .run("migration-head", async {
            head_in_folder(sqlite::head(c)?, opts)
        })
        .await
        .is_none()
    {
        return;
    }
    if opts.probes.is_empty() {
        return;
    }
    checks
        .run(
            "probes",
            checks::probes_true(&opts.probes, |p| async move { sqlite::probe(c, p) }),
        )
        .await;
}

/// The restored head is one of the migrations folder's files, unchanged (when the folder is
/// known).
fn head_in_folder(head: Option<dbconn::Applied>, opts: &Options) -> Outcome<()> {
    let got = head.as_ref().map(|h| (h.version, h.checksum.to_string()));
    checks::in_folder(&got, opts)?;
    Ok((
        (),
        got.map(|(v, _)| format!("V{v}"))
            .unwrap_or_else(|| "no migration".into()),
    ))
}

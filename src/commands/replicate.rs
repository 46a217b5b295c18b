//! `dbward replicate`: the continuous protection of a SQLite database
//! ([`backup::stream::replica`]), one step each `--interval` while it changes, until SIGTERM or
//! SIGINT (then one last step, and exit 0). A step that fails is said (once a minute at most, with how many
//! failed since) and tried again at the next interval, from the last step the primary took.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};

use super::database_url;
use crate::cli::ReplicateArgs;
use crate::exit::Exit;
use crate::report::{Failure, Report};
use crate::settings::Settings;
use backup::stream::replica::{Options, Replica, Shipped};
use migrator::DatabaseUrl;

/// How often a failing replicator says so.
const SAY_EVERY: Duration = Duration::from_secs(60);

pub async fn run(settings: &Settings, args: &ReplicateArgs) -> Result<Report, Failure> {
    let url = database_url(settings)?;
    let DatabaseUrl::Sqlite(path) = &url else {
        return Err(Failure::new(
            Exit::Usage,
            "replicate protects a SQLite database; a PostgreSQL cluster has its WAL archive (`dbward wal-push`, docs/contract.md)",
        ));
    };
    let stores = settings.stores().await?;
    let n_stores = stores.all().len();
    let opts = Options {
        level: settings.level,
        encryption: settings.encryption()?,
        busy: settings.lock_timeout.min(Duration::from_secs(5)),
        state_dir: settings.state_dir.join("stream").join(url.name()),
    };
    let mut replica = Replica::open(path, stores, &url.name(), opts).await?;
    if args.once {
        let shipped = replica.step().await?;
        return Ok(Report {
            text: describe(&shipped),
            json: json!({ "shipped": shipped }),
            code: Exit::Success,
        });
    }
    let per_hour = (3600.0 / args.interval.as_secs_f64().max(0.001)).ceil() as u64;
    tracing::info!(
        "replicating {} every {} while it changes: at most {per_hour} writes an hour to each of {n_stores} store(s), one per step",
        url.display(),
        humantime::format_duration(args.interval)
    );
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| Failure::new(Exit::Failed, e.to_string()))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| Failure::new(Exit::Failed, e.to_string()))?;
    let (mut steps, mut failures_since, mut said_at) = (0u64, 0u64, None::<Instant>);
    let mut tick = tokio::time::interval(args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stop = tokio::select! {
            _ = tick.tick() => false,
            _ = term.recv() => true,
            _ = int.recv() => true,
        };
        // A stop request ships what changed first.
        match replica.step().await {
            Ok(shipped) => {
                if shipped.seq.is_some() || shipped.new_generation.is_some() {
                    steps += 1;
                    tracing::debug!("{}", describe(&shipped).trim_end());
                }
                if failures_since > 0 {
                    tracing::info!("replicating again after {failures_since} failed step(s)");
                    failures_since = 0;
                    said_at = None;
                }
            }
            Err(e) => {
                failures_since += 1;
                if said_at.is_none_or(|t| t.elapsed() >= SAY_EVERY) {
                    tracing::error!(
                        "a step failed ({failures_since} since the last one said): {}; trying again every {}",
                        backup::error::chain(&e),
                        humantime::format_duration(args.interval)
                    );
                    said_at = Some(Instant::now());
                }
            }
        }
        if stop {
            break;
        }
    }
    tracing::info!("replication stopped after {steps} step(s)");
    Ok(Report {
        text: format!("replication stopped after {steps} step(s)\n"),
        json: json!({ "steps": steps }),
        // Stopping is what a service is asked to do: a clean end, as `schedule`'s.
        code: Exit::Success,
    })
}

fn describe(s: &Shipped) -> String {
    match (&s.new_generation, s.seq) {
        (Some(why), _) => format!(
            "generation {} began ({why}): base of {} pages, {} bytes stored\n",
            s.generation, s.pages, s.stored_bytes
        ),
        (None, Some(seq)) => format!(
            "step {seq} of generation {}: {} page(s), {} bytes stored\n",
            s.generation, s.pages, s.stored_bytes
        ),
        (None, None) => format!("nothing changed (generation {})\n", s.generation),
    }
}

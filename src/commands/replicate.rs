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

/// `replicate --interval`'s default, and `run --replicate`'s.
pub const INTERVAL: Duration = Duration::from_millis(500);

/// How old a generation's base may grow before a new one is taken.
const BASE_EVERY: Duration = Duration::from_secs(24 * 3600);

/// How often a failing replicator says so.
const SAY_EVERY: Duration = Duration::from_secs(60);
/// How often the database's files are looked at for a change.
const LOOK: Duration = Duration::from_millis(50);
/// How long at most between steps whatever the files say.
const ANYWAY: Duration = Duration::from_secs(60);

pub async fn run(settings: &Settings, args: &ReplicateArgs) -> Result<Report, Failure> {
    let mut replica = match open(settings).await? {
        Opened::Ready(r) => *r,
        Opened::Held(why) => return Err(Failure::new(Exit::Refused, why)),
    };
    if args.once {
        let shipped = replica.step().await?;
        return Ok(Report {
            text: describe(&shipped),
            json: json!({ "shipped": shipped }),
            code: Exit::Success,
        });
    }
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| Failure::new(Exit::Failed, e.to_string()))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| Failure::new(Exit::Failed, e.to_string()))?;
    let stop = async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let metrics = args.metrics.as_deref().map(|path| Metrics {
        path,
        database: url_name(settings),
    });
    let steps = until(&mut replica, args.interval, stop, metrics.as_ref()).await?;
    Ok(Report {
        text: format!("replication stopped after {steps} step(s)\n"),
        json: json!({ "steps": steps }),
        // Stopping is what a service is asked to do: a clean end, as `schedule`'s.
        code: Exit::Success,
    })
}

/// What [`open`] came to.
enum Opened {
    Ready(Box<Replica>),
    /// Another replicator holds the database's stream (here or in the store): why.
    Held(String),
}

/// The replicator of the configured SQLite database, its leases taken.
async fn open(settings: &Settings) -> Result<Opened, Failure> {
    let url = database_url(settings)?;
    let DatabaseUrl::Sqlite(path) = &url else {
        return Err(Failure::new(
            Exit::Usage,
            "replicate protects a SQLite database; a PostgreSQL cluster has its WAL archive (`dbward wal-push`, docs/contract.md)",
        ));
    };
    let stores = settings.stores().await?;
    let opts = Options {
        level: settings.level,
        encryption: settings.encryption()?,
        busy: settings.lock_timeout.min(Duration::from_secs(5)),
        state_dir: crate::service::stream::local_dir(settings, path, &url.name()),
        base_every: BASE_EVERY,
        stream_window: settings.stream_window,
    };
    match Replica::open(path, stores, &url.name(), opts).await {
        Ok(r) => Ok(Opened::Ready(Box::new(r))),
        Err(backup::Error::Held(why)) => Ok(Opened::Held(why)),
        Err(e) => Err(e.into()),
    }
}

/// Where `--metrics` goes, and the database it is about.
struct Metrics<'a> {
    path: &'a std::path::Path,
    database: String,
}

impl Metrics<'_> {
    /// The gauges after a step: when the newest state the required stores hold was read, the
    /// counts.
    fn write(&self, newest: Option<Instant>, steps: u64, failed: u64, waiting: u64) {
        let mut g = restore_drill::metrics::Gauges::new(&self.database);
        if let Some(at) = newest {
            let read_at = std::time::SystemTime::now() - at.elapsed();
            let secs = read_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            g.gauge(
                "dbward_stream_last_step_timestamp_seconds",
                "When the newest state the required stores hold was read: the primary's, with store.require = all the slowest store's (time() minus it: the replication lag).",
                format!("{secs:.3}"),
            );
        }
        g.gauge(
            "dbward_stream_steps",
            "Steps shipped since the replicator started.",
            steps,
        );
        g.gauge(
            "dbward_stream_failed_steps",
            "Steps that failed since the last one that did not.",
            failed,
        );
        g.gauge(
            "dbward_stream_mirror_waiting_objects",
            "Objects waiting in this host's spools for mirrors that did not take them yet.",
            waiting,
        );
        if let Err(e) = restore_drill::metrics::write_textfile(self.path, &g.into_text()) {
            tracing::warn!("--metrics {}: {e}", self.path.display());
        }
    }
}

fn url_name(settings: &Settings) -> String {
    database_url(settings).map(|u| u.name()).unwrap_or_default()
}

/// Steps every `interval` until `stop` (then one last step); how many shipped something. Ends
/// early, with the error, when another replicator took the stream over.
async fn until(
    replica: &mut Replica,
    interval: Duration,
    stop: impl std::future::Future,
    metrics: Option<&Metrics<'_>>,
) -> Result<u64, backup::Error> {
    let per_hour = (3600.0 / interval.as_secs_f64().max(0.001)).ceil() as u64;
    tracing::info!(
        "replicating every change, at most one step every {}: at most {per_hour} writes an hour to each store while the database changes, none while it does not; and the lease in the primary store, one write and one listing a minute",
        humantime::format_duration(interval)
    );
    let (mut steps, mut failures_since, mut said_at) = (0u64, 0u64, None::<Instant>);
    // Changes are looked for often (two `stat`s), and shipped at most every `interval`: a
    // commit after a quiet time goes out at once, a steady stream of them in one step each
    // interval.
    let mut tick = tokio::time::interval(interval.min(LOOK));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    let mut stopping = false;
    let (mut last_step, mut seen) = (None::<Instant>, None);
    // When the newest state the primary took was read (a step that shipped nothing: the state
    // had not changed, so the newest is the current one).
    let mut newest = None::<Instant>;
    // The same, for the newest state every store holds (no mirror has objects waiting).
    let mut newest_everywhere = None::<Instant>;
    let (taken_tx, taken) = std::sync::mpsc::channel();
    let _taker = Taker::start(replica.state_dir().to_path_buf(), taken_tx);
    loop {
        // A stop request ships what changed first.
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop, if !stopping => stopping = true,
        }
        let now = replica.fingerprint();
        let since = last_step.map(|t| t.elapsed());
        let due = since.is_none_or(|s| s >= interval);
        // A step now and then whatever the files say (it ships nothing when nothing changed).
        let anyway = since.is_none_or(|s| s >= ANYWAY) || failures_since > 0;
        // `migrate` asking for a position (taken meanwhile, even during a long step): a step
        // at once, whatever the interval, begun after the request was.
        let asked: Vec<_> = taken.try_iter().collect();
        if !stopping && asked.is_empty() && !(due && (now != seen || anyway)) {
            continue;
        }
        // Taken before the step: a commit during it makes the next look differ.
        seen = now;
        last_step = Some(Instant::now());
        let read_at = Instant::now();
        let stepped = replica.step().await;
        for a in &asked {
            let answer = match (&stepped, replica.position()) {
                (Ok(_), Some(p)) => Ok(p),
                (Ok(_), None) => Err("the step recorded no position".to_string()),
                (Err(e), _) => Err(backup::error::chain(e)),
            };
            backup::stream::ask::answer(
                replica.state_dir(),
                a,
                answer.as_ref().map_err(String::clone),
            );
        }
        // The mirrors' spools, read once a step: for the lag and the gauge.
        let waiting = replica.mirrors_waiting();
        match stepped {
            Ok(shipped) => {
                newest = Some(read_at);
                if waiting == 0 {
                    newest_everywhere = Some(read_at);
                }
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
            Err(e @ backup::Error::Held(_)) => {
                tracing::error!("replication stops: {e}");
                return Err(e);
            }
            Err(e) => {
                failures_since += 1;
                if said_at.is_none_or(|t| t.elapsed() >= SAY_EVERY) {
                    tracing::error!(
                        "a step failed ({failures_since} since the last one said): {}; trying again every {}",
                        backup::error::chain(&e),
                        humantime::format_duration(interval)
                    );
                    said_at = Some(Instant::now());
                }
            }
        }
        if let Some(m) = metrics {
            let lag_from = if replica.require_all() {
                newest_everywhere
            } else {
                newest
            };
            m.write(lag_from, steps, failures_since, waiting);
        }
        if stopping {
            break;
        }
    }
    tracing::info!("replication stopped after {steps} step(s)");
    Ok(steps)
}

/// Takes `migrate`'s requests for a position ([`backup::stream::ask`]) every look, on a thread
/// of its own, so that one is taken within the second the asker waits even while a long step
/// (a new base, a mirror catching up) runs; each is answered after the next step.
struct Taker {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Taker {
    fn start(
        dir: std::path::PathBuf,
        to: std::sync::mpsc::Sender<backup::stream::ask::Taken>,
    ) -> Taker {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("ask".into())
            .spawn(move || {
                while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    for t in backup::stream::ask::take(&dir) {
                        if to.send(t).is_err() {
                            return;
                        }
                    }
                    std::thread::sleep(LOOK);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("requests for a position will not be taken: {e}");
        }
        Taker { stop }
    }
}

impl Drop for Taker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Replication beside `run`'s application, on a thread of its own (a step's reads never hold
/// the application's health checks up): stopped, after one last step, when dropped.
pub struct Beside {
    stop: Option<tokio::sync::watch::Sender<bool>>,
    done: std::sync::mpsc::Receiver<()>,
}

/// How long the last step beside an application that ended may take before dbward exits
/// without it (the step before it is in the store).
const LAST_STEP: Duration = Duration::from_secs(60);

/// Starts replication of the configured database beside the application; an error (not SQLite,
/// not in WAL mode) before the application starts. While another replicator holds the stream,
/// this one stands by ([`standing_by`]).
pub async fn beside(settings: &Settings, interval: Duration) -> Result<Beside, Failure> {
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (done_tx, done) = std::sync::mpsc::channel();
    let settings = settings.clone();
    std::thread::Builder::new()
        .name("replicate".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = opened_tx.send(Err(Failure::new(Exit::Failed, e.to_string())));
                    return;
                }
            };
            rt.block_on(async move {
                // Whether `run` asked to stop, answered as often as it is asked.
                let mut stop_rx = stop_rx;
                let mut opened = Some(opened_tx);
                // Taken over by another replicator: standing by again, until run ends.
                while let Some(mut replica) =
                    standing_by(&settings, &mut opened, &mut stop_rx).await
                {
                    let stop = async {
                        let _ = stop_rx.wait_for(|s| *s).await;
                    };
                    match until(&mut replica, interval, stop, None).await {
                        Err(backup::Error::Held(_)) => continue,
                        _ => break,
                    }
                }
                let _ = done_tx.send(());
            });
        })
        .map_err(|e| Failure::new(Exit::Failed, format!("starting replication: {e}")))?;
    match opened_rx.await {
        Ok(Ok(())) => Ok(Beside {
            stop: Some(stop_tx),
            done,
        }),
        Ok(Err(f)) => Err(f),
        Err(_) => Err(Failure::new(Exit::Failed, "replication did not start")),
    }
}

/// How often a replicator standing by looks whether the other one stopped.
const STANDBY: Duration = Duration::from_secs(5);

/// The replicator beside the application, once no other one holds the stream: while another
/// does (the other slot of a blue-green pair, on the same volume; another host, in the store),
/// this one stands by, said once, and the application starts meanwhile. A problem at the first
/// try (not SQLite, not in WAL mode, no store) is said to `opened`, before the application
/// starts; later ones are said once a minute and tried again. `None` once stopped.
async fn standing_by(
    settings: &Settings,
    opened: &mut Option<tokio::sync::oneshot::Sender<Result<(), Failure>>>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<Replica> {
    let (mut stood_by, mut said_at) = (false, None::<Instant>);
    loop {
        // The other slot's replicator holds the lease beside the file: not even tried (a try
        // takes that lease for a moment, and a `migrate` then would ask nobody).
        let held_here = match database_url(settings) {
            Ok(DatabaseUrl::Sqlite(path)) => dbconn::sqlite::replicator(&path)
                .map(|pid| format!("sqlite:{} is replicated by pid {pid}", path.display())),
            _ => None,
        };
        let tried = match held_here {
            Some(why) => Ok(Opened::Held(why)),
            None => open(settings).await,
        };
        match tried {
            Ok(Opened::Ready(r)) => {
                if let Some(tx) = opened.take() {
                    let _ = tx.send(Ok(()));
                }
                if stood_by {
                    tracing::info!("the other replicator stopped: this one replicates now");
                }
                return Some(*r);
            }
            Ok(Opened::Held(why)) => {
                if !stood_by {
                    tracing::warn!(
                        "{why}; standing by: this one replicates once that one stops (looked at every {})",
                        humantime::format_duration(STANDBY)
                    );
                    stood_by = true;
                }
            }
            Err(f) => match opened.take() {
                Some(tx) => {
                    let _ = tx.send(Err(f));
                    return None;
                }
                None => {
                    if said_at.is_none_or(|t| t.elapsed() >= SAY_EVERY) {
                        tracing::error!(
                            "replication cannot start now: {}; trying again every {}",
                            f.full(),
                            humantime::format_duration(STANDBY)
                        );
                        said_at = Some(Instant::now());
                    }
                }
            },
        }
        if let Some(tx) = opened.take() {
            let _ = tx.send(Ok(()));
        }
        tokio::select! {
            _ = tokio::time::sleep(STANDBY) => {}
            _ = stop.wait_for(|s| *s) => return None,
        }
    }
}

impl Drop for Beside {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if self.done.recv_timeout(LAST_STEP).is_err() {
            tracing::error!(
                "the last step of replication did not finish within {}; exiting without it (the step before it is in the store)",
                humantime::format_duration(LAST_STEP)
            );
        }
    }
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

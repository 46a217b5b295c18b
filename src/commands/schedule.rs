//! `dbward schedule`: runs the `[schedule]` jobs (backup, drill, prune) on cron expressions in
//! the foreground until SIGTERM/SIGINT. Each run is a child `dbward` process (same flags and
//! config), so a job that fails or crashes never takes the scheduler down, and stopping one
//! mid-backup simply abandons it: no manifest is ever written without its data. A job never
//! overlaps itself: a run that would is skipped and logged.

use std::collections::HashMap;
use std::ffi::OsString;
use std::process::Stdio;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Local, Utc};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::ScheduleArgs;
use crate::exit::Exit;
use crate::notify;
use crate::report::{Failure, Report};
use crate::settings::{Schedule, Settings};

/// How long a running job gets after SIGTERM when the scheduler stops, before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);

struct Job {
    /// `backup`, or `app/backup` for the database `app` of several (`[[databases]]`).
    name: String,
    expr: String,
    schedule: Expr,
    tz: Tz,
    /// The child's command (`--db NAME` first, for one of several databases).
    args: Vec<String>,
    ping: Option<String>,
    notify: crate::settings::Notify,
}

#[derive(Clone, Copy)]
enum Tz {
    Utc,
    Local,
}

impl Tz {
    fn next_after(self, e: &Expr, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        e.0.iter()
            .filter_map(|s| match self {
                Tz::Utc => s.after(&t).next(),
                Tz::Local => s
                    .after(&t.with_timezone(&Local))
                    .next()
                    .map(|d| d.with_timezone(&Utc)),
            })
            .min()
    }

    fn show(self, t: DateTime<Utc>) -> String {
        match self {
            Tz::Utc => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            Tz::Local => t
                .with_timezone(&Local)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }
}

pub async fn run(all: &[Settings], args: &ScheduleArgs) -> Result<Report, Failure> {
    let jobs = all_jobs(all)?;
    if jobs.is_empty() {
        return Err(Failure::new(
            Exit::Usage,
            "no jobs: set backup, drill or prune (cron expressions) under [schedule]",
        ));
    }
    if args.list {
        let now = Utc::now();
        let mut text = String::new();
        let mut out = serde_json::Map::new();
        for j in &jobs {
            let mut times = Vec::new();
            let mut t = now;
            for _ in 0..5 {
                match j.tz.next_after(&j.schedule, t) {
                    Some(n) => {
                        times.push(j.tz.show(n));
                        t = n;
                    }
                    None => break,
                }
            }
            text.push_str(&format!("{} ({}):\n", j.name, j.expr));
            for t in &times {
                text.push_str(&format!("  {t}\n"));
            }
            out.insert(
                j.name.clone(),
                json!({ "expression": j.expr, "command": j.args, "next": times }),
            );
        }
        return Ok(Report {
            text,
            json: json!({ "jobs": out }),
            code: Exit::Success,
        });
    }

    let mut term =
        signal(SignalKind::terminate()).map_err(|e| Failure::new(Exit::Failed, e.to_string()))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| Failure::new(Exit::Failed, e.to_string()))?;
    let running: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut next: Vec<Option<DateTime<Utc>>> = jobs
        .iter()
        .map(|j| j.tz.next_after(&j.schedule, Utc::now()))
        .collect();
    for (j, n) in jobs.iter().zip(&next) {
        tracing::info!(
            "job {} ({}): next run {}",
            j.name,
            j.expr,
            n.map(|t| j.tz.show(t)).unwrap_or_else(|| "never".into())
        );
    }
    loop {
        let Some((i, when)) = next
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.map(|t| (i, t)))
            .min_by_key(|(_, t)| *t)
        else {
            tracing::info!("no job has a future run time; stopping");
            break;
        };
        let wait = (when - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        }
        let job = &jobs[i];
        next[i] = job.tz.next_after(&job.schedule, when.max(Utc::now()));
        if running
            .lock()
            .expect("not poisoned")
            .contains_key(&job.name)
        {
            tracing::warn!(
                "job {}: the previous run is still going; this run is skipped",
                job.name
            );
            continue;
        }
        tasks.spawn(run_job(
            job.name.clone(),
            job.args.clone(),
            job.ping.clone(),
            job.notify.clone(),
            running.clone(),
        ));
    }

    // Stopping: running jobs get SIGTERM (a backup is abandoned, never half-written), then SIGKILL.
    let pids: Vec<(String, u32)> = running
        .lock()
        .expect("not poisoned")
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    for (name, pid) in &pids {
        tracing::info!("stopping: job {name} (pid {pid}) is abandoned");
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(*pid as i32, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(STOP_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        for (_, pid) in &pids {
            // SAFETY: as above.
            unsafe {
                libc::kill(*pid as i32, libc::SIGKILL);
            }
        }
    }
    tracing::info!("scheduler stopped");
    Ok(Report {
        text: String::new(),
        json: json!({ "stopped": true }),
        code: Exit::Success,
    })
}

/// Runs one job as a child `dbward` with this process's own flags, its output forwarded to our
/// stderr. Pings and notifies; never fails the scheduler.
async fn run_job(
    name: String,
    job_args: Vec<String>,
    ping: Option<String>,
    notify_cfg: crate::settings::Notify,
    running: Arc<Mutex<HashMap<String, u32>>>,
) {
    if let Some(p) = &ping {
        notify::ping(p, "/start");
    }
    let started = std::time::Instant::now();
    let exe = std::env::current_exe().unwrap_or_else(|_| "dbward".into());
    let mut cmd = tokio::process::Command::new(exe);
    // `--json`: the job's result (and on failure its error) comes back as one JSON document,
    // not as a log line to pick out.
    cmd.args(child_args(&job_args))
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tracing::info!("job {name}: starting");
    let (code, last_error) = match cmd.spawn() {
        Err(e) => (None, format!("could not start: {e}")),
        Ok(mut child) => {
            if let Some(pid) = child.id() {
                running
                    .lock()
                    .expect("not poisoned")
                    .insert(name.clone(), pid);
            }
            let stderr = child.stderr.take();
            let logs = async {
                if let Some(stderr) = stderr {
                    let mut lines = BufReader::new(stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        eprintln!("[{name}] {line}");
                    }
                }
            };
            let mut stdout = child.stdout.take();
            let result = async {
                let mut out = Vec::new();
                if let Some(s) = stdout.as_mut() {
                    use tokio::io::AsyncReadExt;
                    let _ = s.read_to_end(&mut out).await;
                }
                out
            };
            let ((), out) = tokio::join!(logs, result);
            let status = child.wait().await;
            running.lock().expect("not poisoned").remove(&name);
            let error = serde_json::from_slice::<serde_json::Value>(&out)
                .ok()
                .and_then(|doc| doc["error"].as_str().map(str::to_string))
                .unwrap_or_default();
            (status.ok().and_then(|s| s.code()), error)
        }
    };
    let ok = code == Some(0);
    let secs = started.elapsed().as_secs_f64();
    if ok {
        tracing::info!("job {name}: done in {secs:.1}s");
    } else {
        tracing::error!(
            "job {name}: failed (exit {}) after {secs:.1}s: {last_error}",
            code.map_or("none".into(), |c| c.to_string())
        );
    }
    if let Some(p) = &ping {
        notify::ping(p, if ok { "" } else { "/fail" });
    }
    if let Some(url) = &notify_cfg.url {
        if !ok || notify_cfg.on_success {
            notify::post(
                url,
                json!({
                    "job": name,
                    "status": if ok { "succeeded" } else { "failed" },
                    "exit_code": code,
                    "error": if ok { None } else { Some(last_error) },
                    "seconds": secs,
                    "host": backup::hostname(),
                    "at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                }),
            );
        }
    }
}

/// This process's arguments with `schedule [--list]` replaced by the job's command, so the job
/// sees the same config file and setting flags.
fn child_args(job: &[String]) -> Vec<OsString> {
    rewrite(std::env::args_os().skip(1).collect(), job)
}

/// The global flags that take a value (`--config FILE`, ...), from clap's own definitions: their
/// values are never the command name.
fn value_flags() -> Vec<String> {
    crate::cli::command()
        .get_arguments()
        .filter(|a| a.get_action().takes_values())
        .flat_map(|a| {
            a.get_long()
                .map(|l| format!("--{l}"))
                .into_iter()
                .chain(a.get_short().map(|s| format!("-{s}")))
        })
        .collect()
}

fn rewrite(args: Vec<OsString>, job: &[impl AsRef<str>]) -> Vec<OsString> {
    let value_flags = value_flags();
    let mut out = Vec::new();
    let mut replaced = false;
    let mut value_next = false;
    for a in args {
        if value_next {
            value_next = false;
            out.push(a);
            continue;
        }
        if !replaced && a == "schedule" {
            out.extend(job.iter().map(|a| OsString::from(a.as_ref())));
            replaced = true;
            continue;
        }
        if replaced && a == "--list" {
            continue;
        }
        value_next = a
            .to_str()
            .is_some_and(|s| value_flags.iter().any(|f| f == s));
        out.push(a);
    }
    out
}

/// Every database's jobs: with several (`[[databases]]`), each named and run for its own
/// database (`app/backup`: `dbward --db app backup --scheduled`), on its own schedule.
fn all_jobs(all: &[Settings]) -> Result<Vec<Job>, Failure> {
    let mut out = Vec::new();
    for settings in all {
        for mut job in jobs(&settings.schedule, &settings.notify)? {
            // One of several: the child is told which (one picked with --db keeps its flag).
            if let (Some(db), true) = (&settings.name, all.len() > 1) {
                job.name = format!("{db}/{}", job.name);
                job.args.splice(0..0, ["--db".to_string(), db.clone()]);
            }
            out.push(job);
        }
    }
    Ok(out)
}

fn jobs(s: &Schedule, notify: &crate::settings::Notify) -> Result<Vec<Job>, Failure> {
    let tz = match s.timezone.as_deref().unwrap_or("UTC") {
        "UTC" | "utc" => Tz::Utc,
        "local" => Tz::Local,
        other => {
            return Err(Failure::new(
                Exit::Usage,
                format!("config key schedule.timezone: `{other}` is not UTC or local"),
            ))
        }
    };
    let mut jobs = Vec::new();
    for (name, expr, args) in [
        ("backup", &s.backup, vec!["backup", "--scheduled"]),
        (
            "drill",
            &s.drill,
            vec!["restore-drill", "--scheduled", "latest"],
        ),
        ("prune", &s.prune, vec!["prune"]),
        ("base", &s.base, vec!["backup", "--scheduled", "--physical"]),
        (
            "base_if_due",
            &s.base_if_due,
            vec!["backup", "--scheduled", "--physical", "--if-due"],
        ),
        (
            "pitr_drill",
            &s.pitr_drill,
            vec!["restore-drill", "--scheduled", "--physical", "latest"],
        ),
    ] {
        let Some(expr) = expr else { continue };
        let schedule = parse(expr).map_err(|e| {
            Failure::new(
                Exit::Usage,
                format!("config key schedule.{name}: `{expr}`: {e}"),
            )
        })?;
        jobs.push(Job {
            name: name.to_string(),
            expr: expr.clone(),
            schedule,
            tz,
            args: args.into_iter().map(str::to_string).collect(),
            ping: s.pings.get(name).cloned(),
            notify: notify.clone(),
        });
    }
    Ok(jobs)
}

/// Why a schedule expression does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadSchedule(String);

/// A parsed schedule: its runs are the union of these (one, or two for a crontab line that
/// restricts both day fields).
pub struct Expr(Vec<cron::Schedule>);

/// A cron expression: the 5-field crontab form (`30 3 * * *`, day of week 0-7 with 0 and 7 =
/// Sunday) or the cron crate's 6/7-field form with seconds (day of week 1-7, 1 = Sunday).
///
/// In the crontab form, when both day of month and day of week are restricted, a day matches
/// if EITHER does, as cron has always done (`0 0 1 * 1`: the 1st of each month and every
/// Monday); the cron crate would require both.
pub fn parse(expr: &str) -> Result<Expr, BadSchedule> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let one = |s: String| cron::Schedule::from_str(&s).map_err(|e| BadSchedule(e.to_string()));
    match fields.len() {
        5 => {
            let (min, hour, dom, month) = (fields[0], fields[1], fields[2], fields[3]);
            let dow = crontab_dow(fields[4])?;
            let restricted = |f: &str| !matches!(f, "*" | "?");
            if restricted(dom) && restricted(fields[4]) {
                Ok(Expr(vec![
                    one(format!("0 {min} {hour} {dom} {month} *"))?,
                    one(format!("0 {min} {hour} * {month} {dow}"))?,
                ]))
            } else {
                Ok(Expr(vec![one(format!(
                    "0 {min} {hour} {dom} {month} {dow}"
                ))?]))
            }
        }
        6 | 7 => Ok(Expr(vec![one(fields.join(" "))?])),
        n => Err(BadSchedule(format!(
            "{n} fields; expected 5 (crontab) or 6-7 (with seconds)"
        ))),
    }
}

/// Crontab day-of-week numbers (0-7, 0 and 7 = Sunday) to the cron crate's (1-7, 1 = Sunday).
/// Numeric ranges are expanded so that `5-7` (Fri-Sun) does not become the invalid `6-1`.
fn crontab_dow(field: &str) -> Result<String, BadSchedule> {
    let map = |n: u32| -> Result<u32, BadSchedule> {
        if n > 7 {
            return Err(BadSchedule(format!("day of week {n} is not 0-7")));
        }
        Ok(n % 7 + 1)
    };
    let mut out = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (
                r,
                Some(
                    s.parse::<u32>()
                        .map_err(|_| BadSchedule(format!("bad step in `{item}`")))?,
                ),
            ),
            None => (item, None),
        };
        let bounds: Option<(u32, u32)> = if let Some((a, b)) = range.split_once('-') {
            match (a.parse(), b.parse()) {
                (Ok(a), Ok(b)) => Some((a, b)),
                _ => None,
            }
        } else if let Ok(n) = range.parse::<u32>() {
            Some((n, if step.is_some() { 7 } else { n }))
        } else if range == "*" && step.is_some() {
            Some((0, 6))
        } else {
            None
        };
        match bounds {
            Some((a, b)) => {
                let mut n = a;
                while n <= b {
                    out.push(map(n)?.to_string());
                    n += step.unwrap_or(1).max(1);
                }
            }
            None => out.push(item.to_string()), // `*`, names (MON-FRI), `?`
        }
    }
    out.dedup();
    Ok(out.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike};

    #[test]
    fn the_flags_with_values_come_from_clap() {
        let flags = value_flags();
        for f in [
            "--config",
            "--database",
            "--store",
            "--temp-dir",
            "--state-dir",
        ] {
            assert!(flags.iter().any(|x| x == f), "{f} in {flags:?}");
        }
        assert!(!flags
            .iter()
            .any(|x| x == "--s3-path-style" || x == "--json"));
        let args = [
            "dbward", "--store", "schedule", "schedule", "--list", "--json",
        ]
        .map(OsString::from)
        .to_vec();
        assert_eq!(
            rewrite(args, &["backup", "--scheduled"]),
            [
                "dbward",
                "--store",
                "schedule",
                "backup",
                "--scheduled",
                "--json"
            ]
            .map(OsString::from)
        );
    }

    fn next(expr: &str, after: DateTime<Utc>) -> DateTime<Utc> {
        Tz::Utc.next_after(&parse(expr).unwrap(), after).unwrap()
    }

    #[test]
    fn both_day_fields_restricted_means_either_as_in_cron() {
        let t = Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap(); // a Wednesday
                                                                       // The 1st of the month OR a Monday: the next Monday (Nov 30) comes before Dec 1.
        let n = next("0 0 1 * 1", t);
        assert_eq!((n.month(), n.day()), (11, 30));
        let n = next("0 0 1 * 1", n);
        assert_eq!((n.month(), n.day()), (12, 1));
        // One field restricted: only that one.
        assert_eq!(next("0 0 1 * *", t).day(), 1);
        assert_eq!(next("0 0 * * 1", t).day(), 30);
    }

    #[test]
    fn crontab_five_fields() {
        let t = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap(); // a Monday
        let n = next("30 3 * * *", t);
        assert_eq!((n.day(), n.hour(), n.minute(), n.second()), (24, 3, 30, 0));
        // 0 = Sunday in crontab.
        assert_eq!(next("0 4 * * 0", t).weekday(), chrono::Weekday::Sun);
        assert_eq!(next("0 4 * * 7", t).weekday(), chrono::Weekday::Sun);
        assert_eq!(
            next("0 4 * * 1", t + chrono::Duration::days(1)).weekday(),
            chrono::Weekday::Mon
        );
        assert_eq!(next("0 4 * * 5-7", t).weekday(), chrono::Weekday::Fri);
        assert_eq!(next("0 4 * * MON-FRI", t).weekday(), chrono::Weekday::Tue);
    }

    #[test]
    fn the_command_is_found_past_flag_values() {
        let args = [
            "--state-dir",
            "schedule",
            "-q",
            "schedule",
            "--config",
            "d.toml",
        ]
        .map(OsString::from)
        .to_vec();
        let out: Vec<String> = rewrite(args, &["backup", "--scheduled"])
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            out,
            [
                "--state-dir",
                "schedule",
                "-q",
                "backup",
                "--scheduled",
                "--config",
                "d.toml"
            ]
        );
    }

    #[test]
    fn seconds_form_passes_through() {
        let t = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        assert_eq!(next("*/10 * * * * *", t), t + chrono::Duration::seconds(10));
        assert!(parse("1 2 3").is_err());
        assert!(parse("0 4 * * 8").is_err());
    }
}

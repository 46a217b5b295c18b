//! The operator's commands dbward runs: `[hooks] after_migrate` (command lines run with
//! `sh -c` once a batch has committed, while `migrate` still holds the migration lock, so two
//! deploys never run them at once), the health guard's `--check` commands, the `locked`
//! command's job and the rewind's `[pitr.server]` commands. Each runs with dbward's environment
//! less the store's credentials and the snapshot keys (`dbconn::child::user`), in a process
//! group of its own: a command that overruns its deadline is killed with everything it
//! started, and a wait longer than 10 s says what it waits for.

use std::os::fd::AsFd;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::settings::Settings;

/// Why an operator's command did not succeed. Its text is what the deploy records and the
/// operator reads (`hook_failed`, a check's failure).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// It could not be started, or waited on.
    #[error("{what} could not {step}: {cause}")]
    NotRun {
        what: String,
        step: &'static str,
        cause: std::io::Error,
    },
    /// It exited with a failure (or was ended by a signal).
    #[error("{what} failed ({status})")]
    Failed { what: String, status: ExitStatus },
    /// It ran past its limit (`limit`: the limit as said, e.g. `hooks.timeout = 5m`) and was
    /// killed with its process group.
    #[error("{what} did not finish within {limit}; it was killed, with every process it started")]
    TimedOut { what: String, limit: String },
}

/// What the hooks are told about the batch, in their environment.
pub struct Batch<'a> {
    /// `DBWARD_APPLIED`: the versions applied, space-separated (`1.1` for a version with parts).
    pub applied: Vec<String>,
    /// `DBWARD_APPLIED_REPEATABLE`: the repeatable migrations applied, by name.
    pub repeatable: &'a [String],
    /// `DBWARD_SNAPSHOT`: the pre-deploy snapshot's id, when one was taken.
    pub snapshot: Option<&'a str>,
    /// `DBWARD_HEAD`: the migration head's version, as written.
    pub head: Option<String>,
}

impl<'a> Batch<'a> {
    /// What a deploy's record tells its hooks.
    pub fn of(deploy: &'a crate::state::Deploy) -> Batch<'a> {
        Batch {
            applied: deploy.applied.iter().map(|v| deploy.shown(*v)).collect(),
            repeatable: &deploy.repeatable,
            snapshot: deploy.pre_deploy_snapshot.as_deref(),
            head: deploy
                .head
                .as_ref()
                .map(|h| dbconn::history::shown(h.version, h.version_text.as_deref())),
        }
    }
}

/// Runs each hook in order; the first that fails (non-zero exit, signal, timeout, cannot
/// start) stops the rest and is the error, naming it. Their output goes to stderr as it comes
/// (a long refresh shows progress; `--json` on stdout stays one document).
pub async fn after_migrate(settings: &Settings, batch: &Batch<'_>) -> Result<(), Error> {
    for cmd in &settings.hooks.after_migrate {
        tracing::info!("after-migrate hook: sh -c {cmd:?}");
        let started = std::time::Instant::now();
        let status = run_one(settings, cmd, batch).await?;
        if !status.success() {
            return Err(Error::Failed {
                what: format!("after-migrate hook `{cmd}`"),
                status,
            });
        }
        tracing::info!(
            "after-migrate hook `{cmd}` done in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

async fn run_one(settings: &Settings, cmd: &str, batch: &Batch<'_>) -> Result<ExitStatus, Error> {
    let what = format!("after-migrate hook `{cmd}`");
    let not_run = |step, cause| Error::NotRun {
        what: what.clone(),
        step,
        cause,
    };
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| not_run("start", e))?;
    let mut c = command(settings, "sh");
    c.args(["-c", cmd])
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr));
    c.env("DBWARD_APPLIED", join(batch.applied.iter()))
        .env("DBWARD_APPLIED_REPEATABLE", batch.repeatable.join(" "))
        .env("DBWARD_SNAPSHOT", batch.snapshot.unwrap_or_default())
        .env("DBWARD_HEAD", batch.head.as_deref().unwrap_or_default());
    let mut child = c.spawn().map_err(|e| not_run("start", e))?;
    let timeout = settings.hooks.timeout;
    match dbconn::child::wait_bounded(&mut child, timeout, &format!("the {what}")).await {
        Ok(Some(status)) => Ok(status),
        Ok(None) => Err(Error::TimedOut {
            limit: format!("hooks.timeout = {}", humanize(timeout)),
            what,
        }),
        Err(e) => Err(not_run("be waited on", e)),
    }
}

/// A command dbward starts for the operator (a hook, a `locked` job, a health check, a
/// `[pitr.server]` command): `dbconn::child::user` (dbward's environment less the store's
/// credentials and the snapshot keys, a process group of its own), plus `DBWARD_DATABASE_URL`;
/// killed if dbward is stopped.
pub fn command(settings: &Settings, program: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::from(dbconn::child::user(program));
    c.kill_on_drop(true);
    if let Some(url) = &settings.database {
        c.env("DBWARD_DATABASE_URL", url);
    }
    c
}

/// A command that shares dbward's terminal (stdin is one) stays in dbward's process group, the
/// terminal's foreground one, so that it can read it (`locked -- psql`); otherwise it keeps the
/// group of its own [`command`] gave it.
pub fn foreground_if_terminal(c: &mut tokio::process::Command) {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        // SAFETY: getpgrp(2) has no preconditions.
        c.process_group(unsafe { libc::getpgrp() });
    }
}

/// The most of a command's output kept for its error message, and the longest line logged.
const TAIL: usize = 4096;
const LINE: usize = 2000;

/// Runs `sh -c cmd` (see [`command`]) for at most `limit`, its output (stdout and stderr) sent
/// to the log line by line as it comes (a line longer than 2,000 bytes is cut there), and kept
/// only as its last 4 KiB for the answer: `Ok` with the exit status and that tail, `Err` when it
/// could not run or did not finish in time (then killed with everything it started). Memory
/// stays flat whatever the command prints.
pub async fn run_captured(
    settings: &Settings,
    cmd: &str,
    limit: Duration,
    what: &str,
) -> Result<(ExitStatus, String), Error> {
    let mut c = command(settings, "sh");
    c.args(["-c", cmd])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|cause| Error::NotRun {
        what: what.to_string(),
        step: "run",
        cause,
    })?;
    let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|r| tokio::spawn(log_lines(r, tail.clone())))
    .collect();
    let status = dbconn::child::wait_bounded(&mut child, limit, what)
        .await
        .map_err(|cause| Error::NotRun {
            what: what.to_string(),
            step: "be waited on",
            cause,
        })?;
    // What it printed before it ended; a process it left running that still holds the pipes
    // is not waited for beyond a moment.
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_secs(1), r).await;
    }
    let tail = String::from_utf8_lossy(&tail.lock().expect("not poisoned")).into_owned();
    match status {
        Some(status) => Ok((status, tail)),
        None => Err(Error::TimedOut {
            what: what.to_string(),
            limit: humanize(limit),
        }),
    }
}

/// Reads `r` to its end in 8 KiB reads: each line to the log (cut at [`LINE`] bytes), the last
/// [`TAIL`] bytes into `tail`.
async fn log_lines(
    mut r: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    tail: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    let flush = |line: &mut Vec<u8>, cut: &mut bool| {
        tracing::info!(
            "  {}{}",
            String::from_utf8_lossy(line).trim_end(),
            if *cut { " [...]" } else { "" }
        );
        line.clear();
        *cut = false;
    };
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut t = tail.lock().expect("not poisoned");
            t.extend_from_slice(&buf[..n]);
            let excess = t.len().saturating_sub(TAIL);
            t.drain(..excess);
        }
        for &b in &buf[..n] {
            if b == b'\n' {
                flush(&mut line, &mut cut);
            } else if line.len() < LINE {
                line.push(b);
            } else {
                cut = true;
            }
        }
    }
    if !line.is_empty() {
        flush(&mut line, &mut cut);
    }
}

fn join(v: impl Iterator<Item = impl ToString>) -> String {
    v.map(|x| x.to_string()).collect::<Vec<_>>().join(" ")
}

fn humanize(d: Duration) -> String {
    migrator::error::humanize(d)
}

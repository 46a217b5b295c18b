//! `dbward run -- CMD ARGS`: the docker-compose entrypoint. Migrate; start CMD; check health.
//! Unhealthy (or CMD died first): stop CMD (SIGTERM, then SIGKILL after `--grace`) and let the
//! guard restore (exit 5). Healthy: forward SIGTERM/SIGINT to CMD and exit with its code.

use std::process::ExitStatus;
use std::time::Duration;

use serde_json::json;
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{MigrateArgs, RunArgs};
use crate::exit::Exit;
use crate::report::{Failure, Report};
use crate::settings::Settings;

pub async fn run(settings: &Settings, args: &RunArgs) -> Result<Report, Failure> {
    let health = args.health.apply(&settings.health)?;
    match health.url.as_deref() {
        None => {
            return Err(Failure::new(
                Exit::Usage,
                "run needs a health URL: --url, DBWARD_HEALTH_URL, or `url` under [health]",
            ))
        }
        // Said before anything runs: found after the start, it would reach the guard.
        Some(u) if !u.starts_with("http://") => {
            return Err(Failure::new(
                Exit::Usage,
                crate::probe::Error::NotHttp(u.to_string()).to_string(),
            ))
        }
        Some(_) => {}
    }
    // The guard found the last deploy unhealthy and could not undo it: it retries first
    // (`migrate` would refuse to go on).
    if let Ok(url) = super::database_url(settings) {
        let scope = crate::state::Scope::of(&settings.state_dir, &url).await;
        let retry = match scope.read().ok().flatten() {
            Some(d) => super::health::unfinished_undo(settings, &url, &scope, d).await,
            None => None,
        };
        if let Some(reason) = retry {
            return Err(super::health::guard(settings, &reason.to_string(), &health).await);
        }
    }
    // With --replicate, replication starts before the migration wherever there is a database
    // to follow (a missing one restored first): the deploy's pre-deploy point is then a
    // position of the stream, taken in O(1). A first deploy starts it once the file exists.
    let mut replicating = None;
    if args.replicate {
        let url = super::database_url(settings)?;
        if args.restore_if_missing || settings.restore_if_missing {
            let done = crate::service::restore::restore_if_missing(settings, &url).await?;
            tracing::info!("{}", done.message(&url));
        }
        if !backup::owner::is_missing(&url).await? {
            replicating =
                Some(super::replicate::beside(settings, super::replicate::INTERVAL).await?);
        }
    }
    let migrate = MigrateArgs {
        retry_failed: false,
        restore_if_missing: args.restore_if_missing,
        reason: None,
        dry_run: false,
        no_snapshot: false,
        lock_timeout: Duration::from_secs(600),
        wait_for_backup: false,
    };
    match super::migrate::run(settings, &migrate).await {
        // The container's log is the one place the operator reads what the deploy applied.
        Ok(report) => {
            for line in report.text.lines() {
                tracing::info!("{line}");
            }
        }
        // The batch is in, its hook failed: the deploy is broken, so the guard acts at once.
        Err(f) if f.code == Exit::HookFailed => {
            return Err(super::health::guard(settings, &f.full(), &health).await)
        }
        Err(f) => return Err(f),
    }
    // Stopped (after one last step) whenever `run` ends.
    if args.replicate && replicating.is_none() {
        replicating = Some(super::replicate::beside(settings, super::replicate::INTERVAL).await?);
    }
    let _replicating = replicating;

    let mut term =
        signal(SignalKind::terminate()).map_err(|e| Failure::new(Exit::Failed, e.to_string()))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| Failure::new(Exit::Failed, e.to_string()))?;
    let (program, rest) = args.cmd.split_first().expect("clap requires CMD");
    // The application: dbward's environment less the store's credentials and the snapshot
    // keys, in a process group of its own (killed whole once it ignored SIGTERM for --grace).
    let mut app = Command::from(dbconn::child::user(program));
    app.args(rest).kill_on_drop(true);
    crate::hooks::foreground_if_terminal(&mut app);
    let mut child = app
        .spawn()
        .map_err(|e| Failure::new(Exit::Failed, format!("starting {program}: {e}")))?;
    let pid = child.id().unwrap_or_default() as i32;
    let group = dbconn::child::Group::of(child.id());
    // As a container's process 1, orphans of the application are ours to reap.
    let _reaper = (std::process::id() == 1).then(|| tokio::spawn(reap_orphans(pid)));
    tracing::info!(
        "started {} (pid {pid}); checking health at {}",
        args.cmd.join(" "),
        health.url.as_deref().unwrap_or_default()
    );

    // An app that exits in the same moment as its verdict is judged by the verdict.
    let verdict = tokio::select! {
        biased;
        r = async {
            super::health::poll(&health).await?;
            super::health::after_checks(settings, &health).await
        } => r,
        status = child.wait() => Err(super::health::Unhealthy::Exited(format!("{program} exited ({}) before it was healthy", describe(status.ok())))),
        _ = term.recv() => return forward_and_wait(&mut child, pid, libc::SIGTERM).await,
        _ = int.recv() => return forward_and_wait(&mut child, pid, libc::SIGINT).await,
    };
    if let Err(reason) = verdict {
        stop(&mut child, pid, args.grace, group).await;
        return Err(super::health::guard(settings, &reason.to_string(), &health).await);
    }
    tracing::info!("healthy; waiting on {program}");
    let status = tokio::select! {
        s = child.wait() => s.ok(),
        _ = term.recv() => return forward_and_wait(&mut child, pid, libc::SIGTERM).await,
        _ = int.recv() => return forward_and_wait(&mut child, pid, libc::SIGINT).await,
    };
    Ok(finished(status))
}

/// Process 1 inherits every orphan in the container; like tini, it reaps them, or they stay
/// zombies until nothing can fork. The application itself (`main`) is left to its own wait.
/// Only zombies whose parent is this process are reaped, by pid, so no exit status the
/// application's wait needs is ever taken.
async fn reap_orphans(main: i32) {
    let Ok(mut chld) = signal(SignalKind::child()) else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = chld.recv() => {}
            _ = tick.tick() => {}
        }
        for pid in zombie_children() {
            if pid != main {
                // SAFETY: waitpid(2) on a zombie child of ours; WNOHANG never blocks.
                unsafe {
                    libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
                }
            }
        }
    }
}

/// Zombie processes whose parent is this process, from /proc.
fn zombie_children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        if fields.next() == Some("Z") && fields.next() == Some(me.as_str()) {
            out.push(pid);
        }
    }
    out
}

async fn forward_and_wait(child: &mut Child, pid: i32, sig: i32) -> Result<Report, Failure> {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(pid, sig);
    }
    Ok(finished(child.wait().await.ok()))
}

/// SIGTERM, then SIGKILL to the whole process group after `grace`.
async fn stop(child: &mut Child, pid: i32, grace: Duration, mut group: dbconn::child::Group) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!(
            "pid {pid} ignored SIGTERM for {}; killing it and every process it started",
            migrator::error::humanize(grace)
        );
        group.kill();
        let _ = child.kill().await;
    }
}

/// CMD's exit code, or 128 + the signal that ended it (the shell's convention).
fn finished(status: Option<ExitStatus>) -> Report {
    let code = Exit::of_child(status);
    Report {
        text: String::new(),
        json: json!({ "command_exit_code": code.code() }),
        code,
    }
}

fn describe(status: Option<ExitStatus>) -> String {
    status
        .map(|s| s.to_string())
        .unwrap_or_else(|| "unknown status".into())
}

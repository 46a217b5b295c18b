//! `[hooks] after_migrate`: command lines run with `sh -c` once a batch has committed (the
//! compose deploy that refreshes derived tables), while `migrate` still holds the migration
//! lock, so two deploys never run them at once. Their output goes to stderr as it comes (a
//! long refresh shows progress; `--json` on stdout stays one document).

use std::os::fd::AsFd;
use std::process::Stdio;
use std::time::Duration;

use crate::settings::Settings;

/// What the hooks are told about the batch, in their environment.
pub struct Batch<'a> {
    /// `DBWARD_APPLIED`: the versions applied, space-separated.
    pub applied: &'a [i64],
    /// `DBWARD_APPLIED_REPEATABLE`: the repeatable migrations applied, by name.
    pub repeatable: &'a [String],
    /// `DBWARD_SNAPSHOT`: the pre-deploy snapshot's id, when one was taken.
    pub snapshot: Option<&'a str>,
    /// `DBWARD_HEAD`: the migration head's version.
    pub head: Option<i64>,
}

/// Variables a job dbward starts never inherits: the store's credentials and the snapshot
/// keys are dbward's, not the job's.
const WITHHELD: &[&str] = &[
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "DBWARD_AGE_PASSPHRASE",
    "DBWARD_AGE_IDENTITY_FILE",
];

/// Runs each hook in order; the first that fails (non-zero exit, signal, timeout, cannot
/// start) stops the rest and is the error, naming it.
pub async fn after_migrate(settings: &Settings, batch: &Batch<'_>) -> Result<(), String> {
    for cmd in &settings.hooks.after_migrate {
        tracing::info!("after-migrate hook: sh -c {cmd:?}");
        let started = std::time::Instant::now();
        let status = run_one(settings, cmd, batch).await?;
        if !status.success() {
            return Err(format!("after-migrate hook `{cmd}` failed ({status})"));
        }
        tracing::info!(
            "after-migrate hook `{cmd}` done in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

async fn run_one(
    settings: &Settings,
    cmd: &str,
    batch: &Batch<'_>,
) -> Result<std::process::ExitStatus, String> {
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("after-migrate hook `{cmd}` could not start: {e}"))?;
    let mut c = command(settings, "sh");
    c.args(["-c", cmd])
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr));
    c.env("DBWARD_APPLIED", join(batch.applied.iter()))
        .env("DBWARD_APPLIED_REPEATABLE", batch.repeatable.join(" "))
        .env("DBWARD_SNAPSHOT", batch.snapshot.unwrap_or_default())
        .env(
            "DBWARD_HEAD",
            batch.head.map(|v| v.to_string()).unwrap_or_default(),
        );
    let mut child = c
        .spawn()
        .map_err(|e| format!("after-migrate hook `{cmd}` could not start: {e}"))?;
    let timeout = settings.hooks.timeout;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => {
            status.map_err(|e| format!("after-migrate hook `{cmd}` could not be waited on: {e}"))
        }
        Err(_) => {
            let _ = child.kill().await;
            Err(format!(
                "after-migrate hook `{cmd}` did not finish within hooks.timeout = {}; it was killed",
                humanize(timeout)
            ))
        }
    }
}

/// A job dbward starts for the operator (a hook, a `locked` job, a health check): dbward's
/// environment less the store's credentials and the snapshot keys, plus `DBWARD_DATABASE_URL`;
/// killed if dbward is stopped.
pub fn command(settings: &Settings, program: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(program);
    c.kill_on_drop(true);
    for k in WITHHELD {
        c.env_remove(k);
    }
    if let Some(url) = &settings.database {
        c.env("DBWARD_DATABASE_URL", url);
    }
    c
}

fn join(v: impl Iterator<Item = impl ToString>) -> String {
    v.map(|x| x.to_string()).collect::<Vec<_>>().join(" ")
}

fn humanize(d: Duration) -> String {
    migrator::error::humanize(d)
}

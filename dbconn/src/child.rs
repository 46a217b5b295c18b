//! Every child process dbward starts belongs to one of two classes, and runs in a process group
//! of its own, which is killed whole when dbward gives up on it (a timeout, a stop request):
//! a shell's children never outlive the shell that a deadline killed, and never keep dbward's
//! output open for whoever reads it.
//!
//! - [`tool`]: dbward's own tools and servers (every PostgreSQL binary, every cluster it
//!   starts). Only `PATH`, the locale (`LANG`, `LANGUAGE`, `LC_*`), `TZ`, `TMPDIR` and libpq's
//!   `PG*` reach them: never the store's credentials, the age identity, `DATABASE_URL`, or
//!   anything else of dbward's (a server's environment is readable by its OS user).
//! - [`user`]: the operator's commands (`run`'s application, after-migrate hooks, `--check`,
//!   `[pitr.server]` commands, `locked`'s job): dbward's environment less the store's
//!   credentials and the snapshot keys (every `AWS_*` and `DBWARD_AGE_*` variable) and the
//!   migration owner's `DBWARD_MIGRATE_URL`.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Whether a tool of dbward's gets variable `k` (see the module's doc).
/// (`PGPASSWORD` is not passed on: a tool that connects is given the URL's own password.)
fn tool_keeps(k: &OsStr) -> bool {
    let k = k.to_string_lossy();
    matches!(&*k, "PATH" | "LANG" | "LANGUAGE" | "TZ" | "TMPDIR")
        || k.starts_with("LC_")
        || (k.starts_with("PG") && k != "PGPASSWORD")
}

/// Whether an operator's command is denied variable `k`: the store's credentials, the
/// snapshot keys and the migration owner's URL are dbward's (a hook is given the URL it needs
/// as `DBWARD_DATABASE_URL`).
pub fn withheld(k: &OsStr) -> bool {
    let k = k.to_string_lossy();
    k.starts_with("AWS_") || k.starts_with("DBWARD_AGE_") || k == "DBWARD_MIGRATE_URL"
}

/// A tool or server of dbward's: the minimal environment, a process group of its own.
pub fn tool(program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new(program);
    c.env_clear();
    c.envs(std::env::vars_os().filter(|(k, _)| tool_keeps(k)));
    c.process_group(0);
    c
}

/// An operator's command: dbward's environment less what [`withheld`] names, a process group
/// of its own.
pub fn user(program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new(program);
    let denied: Vec<OsString> = std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| withheld(k))
        .collect();
    for k in denied {
        c.env_remove(k);
    }
    c.process_group(0);
    c
}

/// The process group of a started child (see [`tool`], [`user`]): killed whole (SIGKILL) when
/// dropped, unless the child ended by itself first ([`Group::ended`]): then whatever it left
/// running on purpose is its own business.
#[derive(Debug)]
pub struct Group {
    pgid: Option<i32>,
}

impl Group {
    /// The group a child was started in (its pid: it leads its own group).
    pub fn of(pid: Option<u32>) -> Group {
        Group {
            pgid: pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0),
        }
    }

    /// The child exited by itself: its group is left alone.
    pub fn ended(mut self) {
        self.pgid = None;
    }

    /// Sends `signal` to every process of the group.
    pub fn signal(&self, signal: i32) {
        if let Some(pgid) = self.pgid {
            // SAFETY: killpg(2) with a group this process started.
            unsafe { libc::killpg(pgid, signal) };
        }
    }

    /// Kills every process of the group now.
    pub fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // SAFETY: killpg(2) with a group this process started.
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for `child` (started from [`tool`] or [`user`], made with tokio's `Command`) at most
/// `limit`, saying from 10 s on what it waits for; past the limit its whole process group is
/// killed and the answer is `Ok(None)`. A caller that drops this future (a stop request) kills
/// the group too.
pub async fn wait_bounded(
    child: &mut tokio::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let mut group = Group::of(child.id());
    let waited = crate::wait::announced(what, tokio::time::timeout(limit, child.wait())).await;
    match waited {
        Ok(status) => {
            group.ended();
            status.map(Some)
        }
        Err(_) => {
            group.kill();
            let _ = child.wait().await;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_gets_the_minimal_environment_and_a_user_command_all_but_the_keys() {
        // SAFETY: this test process sets its own environment before starting children; no
        // other thread of this test reads it meanwhile.
        unsafe {
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "secret");
            std::env::set_var("DBWARD_AGE_IDENTITY_FILE", "/key");
            std::env::set_var("PGHOST", "/run/postgresql");
            std::env::set_var("APP_SETTING", "x");
        }
        let env = |mut c: Command| -> String {
            let out = c.arg("-c").arg("env").output().unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        let tool_env = env(tool("sh"));
        assert!(tool_env.contains("PGHOST=/run/postgresql"), "{tool_env}");
        assert!(tool_env.contains("PATH="), "{tool_env}");
        for denied in ["AWS_SECRET", "DBWARD_AGE", "APP_SETTING", "HOME="] {
            assert!(!tool_env.contains(denied), "{denied}: {tool_env}");
        }
        let user_env = env(user("sh"));
        assert!(user_env.contains("APP_SETTING=x"), "{user_env}");
        for denied in ["AWS_SECRET", "DBWARD_AGE"] {
            assert!(!user_env.contains(denied), "{denied}: {user_env}");
        }
    }

    #[test]
    fn dropping_a_group_kills_the_grandchildren_too() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut c = user("sh");
        c.arg("-c").arg(format!(
            "sleep 1000 & echo $! > {}; wait",
            pidfile.display()
        ));
        let mut child = c.spawn().unwrap();
        let group = Group::of(Some(child.id()));
        while std::fs::read_to_string(&pidfile).map_or(true, |s| !s.ends_with('\n')) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let grandchild: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        drop(group);
        child.wait().unwrap();
        // The grandchild goes (reaped by init, or a zombie no longer running). SIGKILL is
        // acted on when the process next runs, which on a busy machine is a moment after
        // `killpg` returned: waited for, for at most 30 s; a `sleep 1000` the signal never
        // reached is still sleeping (S) then.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let stat =
                std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            if state.is_empty() || state.starts_with('Z') {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the grandchild still runs 30 s after its group was killed: {state}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

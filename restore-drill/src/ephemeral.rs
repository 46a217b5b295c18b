//! A throwaway local PostgreSQL cluster for drills (`drill.database = "ephemeral"`): a staging
//! box needs no server of its own to prove that backups restore. initdb + pg_ctl from the local
//! binaries of the dump's major version or newer, on a free loopback port, in a temp dir; as the
//! `postgres` user when we are root (initdb refuses root). Stopped and removed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use dbconn::DatabaseUrl;

use crate::checks::CheckFailure;

pub struct Ephemeral {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    pub url: dbconn::PgUrl,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe extern "C" {
        fn geteuid() -> u32;
    }
    unsafe { geteuid() == 0 }
}

/// A server binary, as the cluster's owner, with a tool's environment (`dbconn::child::tool`:
/// the postmaster inherits it, and its OS user can read it).
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = dbconn::child::tool("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        dbconn::child::tool(program)
    }
}

/// The newest `/usr/lib/postgresql/<major>/bin` with initdb, if its major is at least `min`.
fn bindir(min: u32) -> Result<(u32, PathBuf), CheckFailure> {
    let env = CheckFailure::Environment;
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("initdb").is_file() && p.join("pg_ctl").is_file())
        .collect();
    found.sort();
    match found.pop() {
        Some((major, dir)) if major >= min => Ok((major, dir)),
        Some((major, _)) => Err(env(format!("the newest local PostgreSQL server binaries are version {major}, older than the dump's {min}"))),
        None => Err(env("no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql".into())),
    }
}

impl Ephemeral {
    pub fn start(min_major: u32) -> Result<Ephemeral, CheckFailure> {
        let env = CheckFailure::Environment;
        let (major, bindir) = bindir(min_major)?;
        let dir = tempfile::Builder::new()
            .prefix("dbward-drill-cluster-")
            .tempdir()
            .map_err(|e| env(format!("making the scratch cluster's directory: {e}")))?;
        if is_root() {
            let ok = dbconn::child::tool("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .map_err(|e| env(format!("chown: {e}")))?;
            if !ok.success() {
                return Err(env("running as root, the cluster must belong to a `postgres` user, and there is none".into()));
            }
        }
        let data = dir.path().join("data");
        let out = as_owner(&bindir.join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "dbward",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
                "-D",
            ])
            .arg(&data)
            .output()
            .map_err(|e| env(format!("initdb: {e}")))?;
        if !out.status.success() {
            return Err(env(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let mut last = String::new();
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| env(format!("choosing a port: {e}")))?
                .port();
            let out = as_owner(&bindir.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("log"))
                .arg("-o")
                .arg(format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                    data.display()
                ))
                .args(["-w", "-t", "60", "start"])
                .stdout(Stdio::null())
                .output()
                .map_err(|e| env(format!("pg_ctl: {e}")))?;
            if out.status.success() {
                let url = match DatabaseUrl::parse(&format!(
                    "postgres://dbward@127.0.0.1:{port}/postgres?sslmode=disable"
                )) {
                    Ok(DatabaseUrl::Postgres(u)) => *u,
                    _ => unreachable!("a postgres URL parses"),
                };
                tracing::info!(
                    "started an ephemeral PostgreSQL {major} cluster on port {port} for the drill"
                );
                return Ok(Ephemeral { dir, bindir, url });
            }
            last = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        }
        Err(env(format!(
            "the ephemeral cluster did not start: {}",
            last.trim()
        )))
    }
}

impl Drop for Ephemeral {
    fn drop(&mut self) {
        let _ = as_owner(&self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

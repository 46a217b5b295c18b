//! PostgreSQL: the real `pg_dump --format=custom --compress=0` (we compress), its stdout streamed
//! and never spooled. Row counts and the migration head come from the same MVCC snapshot as the
//! dump: a REPEATABLE READ transaction exports its snapshot and `pg_dump --snapshot` imports it.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use dbconn::postgres::{applied_on, describe, Postgres};
use dbconn::{PgUrl, SslMode};
use tokio_postgres::config::Host;

use super::{head, Keep, Prepared};
use crate::error::Error;
use crate::manifest::Format;

/// How long a dump waits for a migration batch that is running.
const BATCH_WAIT: Duration = Duration::from_secs(600);

pub async fn prepare(url: &PgUrl, lock_wait_timeout: Duration) -> Result<Prepared, Error> {
    let pg_dump_version = tool_version("pg_dump")?;
    let db = Postgres::connect(url).await?;
    let c = db.client();
    let q = |e: tokio_postgres::Error| Error::Source(describe(&e));
    let row = c
        .query_one("SELECT current_setting('server_version'), current_setting('server_version_num')::int, pg_database_size(current_database())", &[])
        .await
        .map_err(q)?;
    let (server_version, server_num, size): (String, i32, i64) =
        (row.get(0), row.get(1), row.get(2));
    let server_major = (server_num / 10000) as u32;
    let dump_major = major(&pg_dump_version);
    if dump_major < server_major {
        return Err(Error::Refused(format!(
            "pg_dump {pg_dump_version} is older than the server ({server_version}); it cannot dump it faithfully. \
             Install the PostgreSQL {server_major} client tools (or newer) and put their pg_dump first on PATH."
        )));
    }

    // No migration batch runs while the dump does (it would queue behind the dump's locks):
    // one running is waited for.
    match dbconn::lock::share_with_backups(c, &url.display, BATCH_WAIT).await {
        Ok(()) => {}
        Err(e @ dbconn::Error::Busy { .. }) => return Err(e.into()),
        // A server that cannot take it (a standby that refuses advisory locks, say): the dump
        // goes on without keeping batches out, as before there was a key; said.
        Err(e) => tracing::warn!(
            "{}: the backups' lock cannot be taken ({}); dumping without keeping migration batches out",
            url.display,
            crate::error::chain(&e)
        ),
    }
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(q)?;
    let snapshot: String = c
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(q)?
        .get(0);
    let applied = applied_on(c).await?;
    let database_id = dbconn::identity::read_pg(c).await?;
    let row_counts = row_counts(c).await?;

    let mut cmd = libpq_command("pg_dump", url, None);
    cmd.args(["--format=custom", "--compress=0", "--no-password"])
        .arg(format!("--snapshot={snapshot}"))
        .arg(format!(
            "--lock-wait-timeout={}",
            lock_wait_timeout.as_millis().max(1)
        ));
    let (mut child, stdout, stderr_thread) = spawn_streaming(cmd, "pg_dump")?;
    let display = url.display.clone();
    let finish = move || {
        let status = child
            .wait()
            .map_err(|e| Error::Source(format!("waiting for pg_dump: {e}")))?;
        let err = stderr_thread.join().unwrap_or_default();
        if status.success() {
            Ok(())
        } else {
            Err(Error::Source(format!(
                "pg_dump of {display} failed ({status}): {}",
                err.trim()
            )))
        }
    };
    Ok(Prepared {
        format: Format::Pgdump,
        engine: "postgres",
        server_version,
        pg_dump_version: Some(pg_dump_version),
        head: head(applied),
        database_id,
        row_counts,
        size_hint: size.max(0) as u64,
        workers: 0, // pg_dump and its backend already keep both cores busy
        reader: Box::new(stdout),
        finish: Box::new(finish),
        keep: Keep::Transaction(db),
    })
}

/// A tool whose stdout is the stream: spawned with stdout and stderr piped, its stderr read on
/// a thread of its own (a chatty tool never blocks on a full pipe), returned when joined.
pub(crate) fn spawn_streaming(
    mut cmd: Command,
    tool: &str,
) -> Result<
    (
        std::process::Child,
        std::process::ChildStdout,
        std::thread::JoinHandle<String>,
    ),
    Error,
> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| Error::Tool {
        tool: tool.into(),
        problem: format!("starting it: {e}"),
    })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let stderr_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    Ok((child, stdout, stderr_thread))
}

/// Rows of every table, as this transaction's snapshot sees them.
async fn row_counts(c: &tokio_postgres::Client) -> Result<BTreeMap<String, u64>, Error> {
    dbconn::postgres::row_counts(c)
        .await
        .map_err(|e| Error::Source(format!("counting rows: {}", crate::error::chain(&e))))
}

/// `pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` → `15.18`.
pub fn tool_version(tool: &str) -> Result<String, Error> {
    let out = dbconn::child::tool(tool)
        .arg("--version")
        .output()
        .map_err(|e| Error::Tool {
            tool: tool.to_string(),
            problem: format!("running `{tool} --version`: {e}"),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_string)
        .ok_or_else(|| Error::Tool {
            tool: tool.to_string(),
            problem: format!("cannot read a version from `{}`", text.trim()),
        })
}

pub fn major(version: &str) -> u32 {
    version
        .split(['.', ' '])
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// Where a PostgreSQL client tool is: on PATH, else in the newest `/usr/lib/postgresql/*/bin`
/// (Debian puts `pg_amcheck` and friends only there). `None` if it is nowhere.
pub fn find_tool(tool: &str) -> Option<std::path::PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(tool))
                .find(|c| c.is_file())
        })
        .unwrap_or_default();
    on_path.or_else(|| {
        let mut dirs: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                Some((
                    e.file_name().to_str()?.parse().ok()?,
                    e.path().join("bin").join(tool),
                ))
            })
            .filter(|(_, p)| p.is_file())
            .collect();
        dirs.sort();
        dirs.pop().map(|(_, p)| p)
    })
}

/// A libpq tool (`pg_dump`, `pg_restore`, ...) connected to `url`'s server and database (or
/// `dbname`): the password in PGPASSWORD, never on the command line (visible in `ps`); TLS as
/// the URL's sslmode.
pub fn libpq_command(tool: &str, url: &PgUrl, dbname: Option<&str>) -> Command {
    // Only what libpq and the tool need (`dbconn::child::tool`): never the store's
    // credentials (AWS_*), the database URL (DATABASE_URL holds the password), or anything else
    // of dbward's.
    let mut cmd = dbconn::child::tool(find_tool(tool).unwrap_or_else(|| tool.into()));
    // pg_amcheck takes the connection string as its operand; the others as --dbname.
    if tool == "pg_amcheck" {
        cmd.arg(conninfo(url, dbname));
    } else {
        cmd.arg(format!("--dbname={}", conninfo(url, dbname)));
    }
    cmd.env("PGAPPNAME", format!("dbward {tool}"));
    if let Some(pw) = url.config.get_password() {
        cmd.env("PGPASSWORD", String::from_utf8_lossy(pw).into_owned());
    }
    cmd.env(
        "PGSSLMODE",
        match url.ssl_mode {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        },
    );
    if let Some(root) = &url.root_cert {
        cmd.env("PGSSLROOTCERT", root);
    }
    cmd
}

/// A libpq key=value connection string without the password (that goes in PGPASSWORD).
pub fn conninfo(url: &PgUrl, dbname: Option<&str>) -> String {
    let c = &url.config;
    let mut parts = Vec::new();
    if let Some(host) = c.get_hosts().first() {
        let h = match host {
            Host::Tcp(h) => h.clone(),
            Host::Unix(p) => p.display().to_string(),
        };
        parts.push(format!("host={}", quote(&h)));
    }
    if let Some(port) = c.get_ports().first() {
        parts.push(format!("port={port}"));
    }
    if let Some(user) = c.get_user() {
        parts.push(format!("user={}", quote(user)));
    }
    if let Some(db) = dbname.or(c.get_dbname()) {
        parts.push(format!("dbname={}", quote(db)));
    }
    parts.join(" ")
}

fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(major("15.18"), 15);
        assert_eq!(major("9.6.24"), 9);
        assert_eq!(major("17devel"), 0);
    }

    #[test]
    fn conninfo_has_no_password() {
        let dbconn::DatabaseUrl::Postgres(pg) = dbconn::DatabaseUrl::parse(
            "postgres://app:s3cret@db.internal:6432/shop?sslmode=require",
        )
        .unwrap() else {
            panic!()
        };
        let c = conninfo(&pg, None);
        assert_eq!(c, "host='db.internal' port=6432 user='app' dbname='shop'");
    }
}

//! Putting a PostgreSQL snapshot in place: `zstd -dc | pg_restore --exit-on-error` into a new database
//! `<db>_restore_<ts>`, checked (migration head, row counts) against the manifest, then swapped
//! in by renaming `<db>` to `<db>_replaced_<ts>` and the new one to `<db>` in ONE transaction.
//! Until that commit, the live database is untouched; after it, the old one is kept.

use std::path::Path;
use std::process::Stdio;

use migrator::database::postgres::{applied_on, describe, Postgres};
use migrator::database::PgUrl;

use crate::engine::postgres::{libpq_command, major, tool_version};
use crate::error::Error;
use crate::manifest::Manifest;

pub struct Options {
    /// End the live database's sessions instead of refusing while there are any.
    pub terminate_connections: bool,
    /// Restore into this new database and leave the live one alone (`--to`).
    pub to: Option<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct Outcome {
    /// The database that now holds the snapshot.
    pub database: String,
    /// Where the replaced database was kept (none with `--to`).
    pub replaced: Option<String>,
    /// Sessions ended by `--terminate-connections`.
    pub terminated: Vec<String>,
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

async fn connect_to(url: &PgUrl, db: &str) -> Result<Postgres, Error> {
    let mut other = url.clone();
    other.config.dbname(db);
    Ok(Postgres::connect(&other).await?)
}

/// Restores the snapshot `compressed` (its object, already checked against the manifest) as
/// `url`'s database. The archive is decompressed straight into `pg_restore`'s stdin, never
/// spooled to disk (as `zstd -dc | pg_restore` would).
pub async fn restore(
    url: &PgUrl,
    compressed: &Path,
    m: &Manifest,
    opts: &Options,
) -> Result<Outcome, Error> {
    let pg_restore_version = check_versions(m)?;
    let live = url.config.get_dbname().unwrap_or("postgres").to_string();
    let admin = connect_to(url, "postgres").await?;
    let c = admin.client();
    let q = |what: &'static str| {
        move |e: tokio_postgres::Error| Error::Source(format!("{what}: {}", describe(&e)))
    };

    // Stray databases of a restore that was killed (and is not connected to).
    let strays = c
        .query(
            "SELECT datname FROM pg_database d WHERE datname LIKE $1 || '\\_restore\\_%' \
             AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)",
            &[&live],
        )
        .await
        .map_err(q("listing stray restore databases"))?;
    for s in strays {
        let name: String = s.get(0);
        tracing::info!("dropping {name}, left by an interrupted restore");
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {}", ident(&name)))
            .await
            .map_err(q("dropping a stray restore database"))?;
    }

    let target = match &opts.to {
        Some(t) => t.clone(),
        None => format!("{live}_restore_{}", super::stamp().to_lowercase()),
    };
    let owner: Option<String> = c
        .query_opt(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1",
            &[&live],
        )
        .await
        .map_err(q("reading the database owner"))?
        .map(|r| r.get(0));
    let owner_clause = owner
        .map(|o| format!(" OWNER {}", ident(&o)))
        .unwrap_or_default();
    c.batch_execute(&format!(
        "CREATE DATABASE {} TEMPLATE template0{owner_clause}",
        ident(&target)
    ))
    .await
    .map_err(q("creating the restore database"))?;
    tracing::info!("pg_restore into {target}");

    let restored = async {
        // One job: on 2 cores `--jobs=2` measured slower (5.1 s vs 3.5 s for a 450 MB pgbench
        // database), its index builds competing for the same cores; and it needs a file.
        let mut child = libpq_command("pg_restore", url, Some(&target))
            .args(["--exit-on-error", "--no-password"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Source(format!("running pg_restore: {e}")))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let source = compressed.to_path_buf();
        let feeder = std::thread::spawn(move || -> Result<u64, String> {
            let input = std::fs::File::open(&source).map_err(|e| e.to_string())?;
            let mut decoder = zstd::stream::read::Decoder::new(input).map_err(|e| e.to_string())?;
            std::io::copy(&mut decoder, &mut stdin).map_err(|e| e.to_string())
        });
        let out = child
            .wait_with_output()
            .map_err(|e| Error::Source(format!("waiting for pg_restore: {e}")))?;
        let fed = feeder.join().unwrap_or_else(|_| Err("the decompression thread panicked".into()));
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if err.contains("unsupported version") {
                return Err(Error::Refused(format!(
                    "pg_restore {pg_restore_version} cannot read this archive, written by pg_dump {}: {err}",
                    m.pg_dump_version.as_deref().unwrap_or("unknown")
                )));
            }
            return Err(Error::Source(format!("pg_restore into {target} failed ({}): {err}", out.status)));
        }
        match fed {
            Ok(n) if n == m.raw_bytes => {}
            Ok(n) => return Err(Error::Refused(format!("snapshot {} decoded to {n} bytes, the manifest says {}", m.id, m.raw_bytes))),
            Err(e) => return Err(Error::Refused(format!("snapshot {} does not decode: {e}", m.id))),
        }
        check_restored(&connect_to(url, &target).await?, m).await
    }
    .await;
    if let Err(e) = restored {
        let _ = c
            .batch_execute(&format!("DROP DATABASE IF EXISTS {}", ident(&target)))
            .await;
        return Err(e);
    }
    if opts.to.is_some() {
        return Ok(Outcome {
            database: target,
            replaced: None,
            terminated: Vec::new(),
        });
    }

    // The swap: no sessions on the live database, then both renames in one transaction.
    let sessions = sessions(c, &live).await?;
    let mut terminated = Vec::new();
    if !sessions.is_empty() {
        if !opts.terminate_connections {
            let _ = c
                .batch_execute(&format!("DROP DATABASE IF EXISTS {}", ident(&target)))
                .await;
            return Err(Error::Refused(format!(
                "{} session(s) are connected to {live}:\n  {}\nStop the application first, or pass --terminate-connections to end them. Nothing was replaced.",
                sessions.len(),
                sessions.join("\n  ")
            )));
        }
        c.batch_execute(&format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false",
            ident(&live)
        ))
        .await
        .map_err(q("blocking new connections"))?;
        c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            &[&live],
        )
        .await
        .map_err(q("ending sessions"))?;
        tracing::warn!(
            "ended {} session(s) on {live}: {}",
            sessions.len(),
            sessions.join("; ")
        );
        terminated = sessions;
        // pg_terminate_backend only signals; wait until they are gone.
        for _ in 0..100 {
            if self::sessions(c, &live).await?.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let replaced = format!("{live}_replaced_{}", super::stamp().to_lowercase());
    let swap = c
        .batch_execute(&format!(
            "BEGIN; ALTER DATABASE {} RENAME TO {}; ALTER DATABASE {} RENAME TO {}; COMMIT;",
            ident(&live),
            ident(&replaced),
            ident(&target),
            ident(&live)
        ))
        .await;
    if let Err(e) = swap {
        let _ = c.batch_execute("ROLLBACK").await;
        let _ = c
            .batch_execute(&format!(
                "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
                ident(&live)
            ))
            .await;
        let _ = c
            .batch_execute(&format!("DROP DATABASE IF EXISTS {}", ident(&target)))
            .await;
        return Err(Error::Source(format!(
            "swapping in the restored database: {}; {live} is unchanged",
            describe(&e)
        )));
    }
    c.batch_execute(&format!(
        "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
        ident(&replaced)
    ))
    .await
    .map_err(q("re-allowing connections to the replaced database"))?;
    Ok(Outcome {
        database: live,
        replaced: Some(replaced),
        terminated,
    })
}

/// Client sessions on `db`. Background workers (autovacuum) are not sessions: the rename asks
/// them to leave by itself.
async fn sessions(c: &tokio_postgres::Client, db: &str) -> Result<Vec<String>, Error> {
    let rows = c
        .query(
            "SELECT pid, coalesce(usename::text, ''), coalesce(application_name, ''), coalesce(host(client_addr), 'local socket') \
             FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() \
               AND backend_type = 'client backend' ORDER BY pid",
            &[&db],
        )
        .await
        .map_err(|e| Error::Source(format!("listing sessions: {}", describe(&e))))?;
    Ok(rows
        .iter()
        .map(|r| {
            let (pid, user, app, from): (i32, String, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            format!("pid {pid} user {user} `{app}` from {from}")
        })
        .collect())
}

/// A `pg_restore` older than the `pg_dump` that wrote the archive is refused, naming both,
/// before any database is created. Returns pg_restore's version.
fn check_versions(m: &Manifest) -> Result<String, Error> {
    let version = tool_version("pg_restore")?;
    let dumped = m.pg_dump_version.as_deref().unwrap_or("0");
    if major(&version) < major(dumped) {
        return Err(Error::Refused(format!(
            "pg_restore {version} is older than the pg_dump {dumped} that wrote snapshot {}; install PostgreSQL {} client tools or newer",
            m.id,
            major(dumped)
        )));
    }
    Ok(version)
}

/// The restored database's migration head and row counts must be the manifest's.
pub async fn check_restored(db: &Postgres, m: &Manifest) -> Result<(), Error> {
    let c = db.client();
    let head = applied_on(c).await?.into_iter().map(|a| a.version).max();
    if head != m.migration_head.as_ref().map(|h| h.version) {
        return Err(Error::Refused(format!(
            "the restored database's migration head {head:?} differs from the manifest's"
        )));
    }
    for (table, want) in &m.row_counts {
        let (schema, name) = table.split_once('.').unwrap_or(("public", table));
        let sql = format!(
            "SELECT count(*) FROM ONLY {}.{}",
            ident(schema),
            ident(name)
        );
        let got: i64 = c
            .query_one(&sql, &[])
            .await
            .map_err(|e| Error::Source(format!("counting {table}: {}", describe(&e))))?
            .get(0);
        if got as u64 != *want {
            return Err(Error::Refused(format!(
                "{table} has {got} rows after the restore, the manifest says {want}"
            )));
        }
    }
    Ok(())
}

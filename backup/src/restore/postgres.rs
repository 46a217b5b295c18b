//! Putting a PostgreSQL snapshot in place: `zstd -dc | pg_restore --exit-on-error` into a new database
//! `<db>_restore_<ts>`, checked (migration head, row counts) against the manifest, then swapped
//! in by renaming `<db>` to `<db>_replaced_<ts>` and the new one to `<db>` in ONE transaction.
//! Until that commit, the live database is untouched; after it, the old one is kept.

use std::path::Path;
use std::process::Stdio;

use dbconn::postgres::{applied_on, describe, Postgres};
use dbconn::PgUrl;

use super::{Outcome, Replaced, Strategy};
use crate::engine::postgres::{libpq_command, major, tool_version};
use crate::error::Error;
use crate::manifest::Manifest;

pub struct Options {
    /// End the live database's sessions instead of refusing while there are any.
    pub terminate_connections: bool,
    /// Restore into this new database and leave the live one alone (`--to`).
    pub to: Option<String>,
    /// Only if the live database is still missing (no database, or one without tables) once
    /// the restore lock is held: two hosts restoring a missing database at once restore it
    /// once, and a database that appeared meanwhile is left alone.
    pub if_missing: bool,
    /// What an encrypted snapshot is decrypted with.
    pub identities: crate::crypt::Identities,
}

/// Why a rename swap cannot be used for `live`, if it cannot: the database a restore must
/// connect to for renames is `postgres`, and PostgreSQL cannot rename the database a session
/// is connected to.
pub fn rename_impossible(url: &PgUrl) -> Option<String> {
    let live = url.dbname();
    (live == MAINTENANCE).then(|| {
        format!("`{live}` is the maintenance database the swap connects to, and a database cannot be renamed while connected to")
    })
}

/// The database a rename swap, and the removal of a replaced copy, connect to.
pub(crate) const MAINTENANCE: &str = "postgres";

use dbconn::sql::{ident, literal};

pub(crate) async fn connect_to(url: &PgUrl, db: &str) -> Result<Postgres, Error> {
    let mut other = url.clone();
    other.config.dbname(db);
    Ok(Postgres::connect(&other).await?)
}

/// PostgreSQL's identifier limit (NAMEDATALEN - 1): longer names are silently truncated by the
/// server, so dbward shortens the live name itself and always knows the exact name it made.
const MAX_NAME: usize = 63;

/// `<live>_<what>_<stamp>_<4 hex>`, unique (not second-resolution) and at most 63 bytes.
fn derived_name(live: &str, what: &str) -> String {
    let suffix = format!(
        "_{what}_{}_{:04x}",
        super::stamp().to_lowercase(),
        crate::manifest::random_u16()
    );
    let mut cut = MAX_NAME.saturating_sub(suffix.len()).min(live.len());
    while !live.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &live[..cut])
}

/// The comment dbward puts on a database it is restoring into, until it is swapped in (or, with
/// `--to`, until it passed its checks). It is the proof of ownership: only a database whose
/// name is exactly the one recorded in its own comment, for this live database, is ever dropped
/// as a leftover. The comment is replaced in the same transaction as the swap.
fn in_progress_marker(target: &str, live: &str) -> String {
    format!("dbward: restore in progress into {target:?} for {live:?}; dropped by the next restore of {live:?} if left behind")
}

/// Restores snapshot `m` as `url`'s database from the first of `stores` whose copy verifies
/// (see [`super::fetch_any`]): the object streams from the store, through the decoder, into
/// `pg_restore`'s stdin while it is hashed, so the download, the decompression and the restore
/// overlap and nothing is spooled to disk. Nothing is swapped before the whole object matched
/// the manifest's size and SHA-256 (and the restored database its head and row counts).
///
/// The outer result is the copy's: one that is unreachable, missing, or not the manifest's
/// bytes is named and the next is tried, from the start (its half-restored database dropped).
/// The inner result is the restore's, final (see [`Swapped`]).
pub async fn restore_any(
    url: &PgUrl,
    stores: &[&crate::store::Store],
    m: &Manifest,
    opts: &Options,
) -> Result<(Result<Swapped, Error>, usize), Error> {
    super::try_copies(stores, m, |store| async move {
        match restore_from(url, store, m, opts).await {
            Ok(out) => Ok(Ok(Swapped::Done(out))),
            Err(Stop::InPlace(why)) => Ok(Ok(Swapped::NeedsInPlace(why))),
            Err(Stop::Copy(e)) => Err(e),
            Err(Stop::Final(e)) => Ok(Err(e)),
        }
    })
    .await
    .map(|(r, n)| {
        let r = r.map(|s| match s {
            Swapped::Done(o) => Swapped::Done(o.map(|o| Outcome { copy: n, ..o })),
            other => other,
        });
        (r, n)
    })
}

/// What a restore beside the live database came to.
#[derive(Debug)]
pub enum Swapped {
    /// Restored and swapped in; `None` when, with [`Options::if_missing`], the database existed
    /// once the lock was held (nothing was restored).
    Done(Option<Outcome>),
    /// Nothing was changed: a rename swap cannot be used here (why: this role may not create
    /// databases), and a restore in place ([`restore_in_place`]) can.
    NeedsInPlace(String),
}

/// The swap of a restored database in for the live one.
struct Swap<'a> {
    live: &'a str,
    target: &'a str,
    /// Whether the live database exists (an empty server being recovered has nothing to
    /// rename aside).
    live_exists: bool,
    /// The live database's comment, carried over to the one swapped in.
    live_comment: Option<String>,
}

impl Swap<'_> {
    /// Both renames in one transaction on `c` (see inside); with `terminate`, a second
    /// connection ends the live database's sessions meanwhile. Returns the replaced
    /// database's name and the sessions ended; on an error nothing was changed.
    async fn run(
        &self,
        c: &tokio_postgres::Client,
        url: &PgUrl,
        terminate: bool,
    ) -> Result<(String, Terminated), Error> {
        // Both renames in ONE transaction. The first takes an exclusive lock on the live database
        // that makes new connections wait, then waits (up to 5 s) for the sessions on it to leave,
        // while a second connection ends them. Nothing is changed until COMMIT: if this process is
        // killed at any point, the transaction is rolled back and the live database stays as it was,
        // accepting connections.
        let replaced = derived_name(self.live, "replaced");
        let swap_sql = format!(
            "BEGIN; {aside} ALTER DATABASE {target_i} RENAME TO {live_i}; COMMENT ON DATABASE {live_i} IS {comment}; COMMIT;",
            aside = if self.live_exists {
                format!("ALTER DATABASE {} RENAME TO {};", ident(self.live), ident(&replaced))
            } else {
                String::new()
            },
            live_i = ident(self.live),
            target_i = ident(self.target),
            comment = self.live_comment.as_deref().map(literal).unwrap_or_else(|| "NULL".into()),
        );
        let terminator = if terminate {
            Some(connect_to(url, MAINTENANCE).await?)
        } else {
            None
        };
        let swapper_pid: i32 = c
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(|e| Error::Restore(format!("reading the session's pid: {}", describe(&e))))?
            .get(0);
        let mut ended = Terminated::default();
        let swap = {
            let swap = c.batch_execute(&swap_sql);
            tokio::pin!(swap);
            match &terminator {
                None => swap.await,
                Some(t) => loop {
                    tokio::select! {
                        r = &mut swap => break r,
                        r = terminate_sessions(t.client(), self.live, swapper_pid, &mut ended) => {
                            if let Err(e) = r {
                                // The swap is in flight: let it finish (or fail) on its own.
                                tracing::warn!("could not end sessions on {}: {e}", self.live);
                                break swap.await;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    }
                },
            }
        };
        if let Err(e) = swap {
            let _ = c.batch_execute("ROLLBACK").await;
            let mut msg = format!(
                "swapping in the restored database: {}; {} is unchanged",
                describe(&e),
                self.live
            );
            if !ended.refused.is_empty() {
                msg.push_str(&format!(
                    ". These sessions could not be ended: {} (ending another role's session needs membership in that role or in pg_signal_backend, and a superuser's needs a superuser)",
                    ended.refused.join("; ")
                ));
            }
            return Err(Error::Restore(msg));
        }
        Ok((replaced, ended))
    }
}

/// Streams the snapshot from `store` through the decoder into `pg_restore` into `target`, then
/// checks the copy (its checksum first: a damaged object explains whatever pg_restore made of
/// it, and another copy may do) and the restored database against the manifest.
async fn fill(
    url: &PgUrl,
    store: &crate::store::Store,
    m: &Manifest,
    opts: &Options,
    target: &str,
    pg_restore_version: &str,
) -> Result<(), Stop> {
    let (tx, rx) = super::blocks();
    let (downloaded, restored) = tokio::join!(
        store.download_blocks(&m.data_key, tx),
        pg_restore(
            url,
            target,
            crate::pipeline::BlockReader::new(rx),
            m,
            &opts.identities,
            pg_restore_version,
            &[],
        )
    );
    let (size, sha) = downloaded.map_err(|e| Stop::Copy(super::missing_is_damage(e, m)))?;
    super::check_sum(store, m, size, &sha).map_err(Stop::Copy)?;
    dbconn::failpoint::hit("restore-after-fetch").map_err(Error::Restore)?;
    restored?;
    dbconn::failpoint::hit("restore-pg-after-pg-restore").map_err(Error::Restore)?;
    check_restored(&connect_to(url, target).await?, m).await?;
    Ok(())
}

/// Drops `target`, the database this restore created (its exact name), when the restore does
/// not go on; a failure is said, and the marked database is then a leftover the next restore
/// of this database drops.
async fn drop_target(c: &tokio_postgres::Client, target: &str) {
    if let Err(e) = c
        .batch_execute(&format!("DROP DATABASE IF EXISTS {}", ident(target)))
        .await
    {
        tracing::warn!("could not drop {target}: {}", describe(&e));
    }
}

/// Leftovers of a killed restore of `live`: only databases that carry dbward's in-progress
/// marker naming exactly themselves and this live database, and that nobody is connected to.
async fn drop_strays(c: &tokio_postgres::Client, live: &str) -> Result<(), Error> {
    let q = |what: &'static str| {
        move |e: tokio_postgres::Error| Error::Restore(format!("{what}: {}", describe(&e)))
    };
    let strays = c
        .query(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database",
            &[],
        )
        .await
        .map_err(q("listing leftover restore databases"))?;
    for s in strays {
        let (name, comment): (String, Option<String>) = (s.get(0), s.get(1));
        if name == live || comment.as_deref() != Some(in_progress_marker(&name, live).as_str()) {
            continue;
        }
        if !sessions(c, &name).await?.is_empty() {
            tracing::warn!("leaving {name}: it carries dbward's in-progress marker, but sessions are connected to it");
            continue;
        }
        tracing::info!("dropping {name}, left by an interrupted restore of {live}");
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {}", ident(&name)))
            .await
            .map_err(q("dropping a leftover restore database"))?;
    }
    Ok(())
}

/// `CREATE DATABASE target`, owned by the live database's owner, and marked as this restore's. A role that may not create
/// databases stops the swap before anything changed (a restore in place can go on; with
/// `--to`, the target's problem), as does a `--to` database that exists.
async fn create_target(
    c: &tokio_postgres::Client,
    live: &str,
    target: &str,
    opts: &Options,
) -> Result<(), Stop> {
    let owner: Option<String> = c
        .query_opt(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1",
            &[&live],
        )
        .await
        .map_err(|e| Error::Restore(format!("reading the database owner: {}", describe(&e))))?
        .and_then(|r| r.get(0));
    let owner_clause = owner
        .map(|o| format!(" OWNER {}", ident(&o)))
        .unwrap_or_default();
    c.batch_execute(&format!(
        "CREATE DATABASE {} TEMPLATE template0{owner_clause}",
        ident(target)
    ))
    .await
    .map_err(|e| {
        if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
            let why = format!("this role may not create databases ({})", describe(&e));
            return match &opts.to {
                None => Stop::InPlace(why),
                // A new database this role cannot create: the target's problem.
                Some(_) => Stop::Final(Error::Target {
                    target: target.to_string(),
                    problem: format!("cannot create it: {why}"),
                }),
            };
        }
        Stop::Final(
            if opts.to.is_some()
                && e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE)
            {
                // As for a SQLite `--to` path that exists: a usage error, nothing touched.
                Error::Target {
                    target: target.to_string(),
                    problem: "the database exists; restore into a new name".into(),
                }
            } else {
                Error::Restore(format!("creating the restore database: {}", describe(&e)))
            },
        )
    })?;
    // Marked as dbward's, restore in progress, before anything is written into it: only a
    // database with this marker is ever dropped as a leftover.
    let marked = c
        .batch_execute(&format!(
            "COMMENT ON DATABASE {} IS {}",
            ident(target),
            literal(&in_progress_marker(target, live))
        ))
        .await;
    if let Err(e) = marked {
        drop_target(c, target).await;
        return Err(Stop::Final(Error::Restore(format!(
            "marking the restore database as dbward's: {}",
            describe(&e)
        ))));
    }
    Ok(())
}

/// Why [`restore_from`] stopped: the copy it streamed (another may do), a swap that cannot be
/// made here (before anything was changed), or anything else.
enum Stop {
    Copy(Error),
    InPlace(String),
    Final(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Final(e)
    }
}

impl From<dbconn::Error> for Stop {
    fn from(e: dbconn::Error) -> Stop {
        Stop::Final(e.into())
    }
}

async fn restore_from(
    url: &PgUrl,
    store: &crate::store::Store,
    m: &Manifest,
    opts: &Options,
) -> Result<Option<Outcome>, Stop> {
    let pg_restore_version = check_versions(m)?;
    let live = url.dbname().to_string();
    let admin = connect_to(url, MAINTENANCE).await?;
    // The restore lock below is a session lock, as the migration lock is.
    admin.refuse_pooled().await?;
    let c = admin.client();
    let q = |what: &'static str| {
        move |e: tokio_postgres::Error| Error::Restore(format!("{what}: {}", describe(&e)))
    };

    // One restore of a database at a time (a session lock on the maintenance database, so it
    // holds no session on the live one, and dies with this process).
    c.execute(
        "SELECT pg_advisory_lock(1684174706, hashtext($1))",
        &[&live],
    )
    .await
    .map_err(q("taking the restore lock"))?;
    if opts.if_missing
        && opts.to.is_none()
        && !crate::owner::is_missing(&dbconn::DatabaseUrl::Postgres(Box::new(url.clone()))).await?
    {
        tracing::info!("{live} appeared meanwhile: nothing restored");
        return Ok(None);
    }

    drop_strays(c, &live).await?;
    let target = match &opts.to {
        Some(t) => t.clone(),
        None => derived_name(&live, "restore"),
    };
    create_target(c, &live, &target, opts).await?;
    let drop_target = || drop_target(c, &target);
    // A stop request drops this future anywhere from here: the marked database is then dropped
    // before the process exits (`main` runs the queued undo steps).
    let undo = dbconn::cleanup::Undo::new(
        format!("dropping {target}, the database the stopped restore was filling"),
        drop_marked(url.clone(), target.clone(), live.clone()),
    );
    if let Err(e) = dbconn::failpoint::hit("restore-pg-after-create") {
        drop_target().await;
        return Err(Stop::Final(Error::Restore(e)));
    }
    tracing::info!("pg_restore into {target}");

    if let Err(e) = fill(url, store, m, opts, &target, &pg_restore_version).await {
        drop_target().await;
        return Err(e);
    }
    if opts.to.is_some() {
        // Checked: from now on it is the user's database, never a leftover.
        c.batch_execute(&format!("COMMENT ON DATABASE {} IS NULL", ident(&target)))
            .await
            .map_err(q("clearing the in-progress marker"))?;
        undo.disarm();
        return Ok(Some(Outcome {
            database: target,
            replaced: None,
            terminated: Vec::new(),
            strategy: Strategy::New,
            strategy_reason: None,
            copy: 0,
        }));
    }

    // The application may have created the database, or its tables, while the snapshot was
    // restored: the last look at "missing" is right before the swap, and what the swap renames
    // aside is read again.
    if opts.if_missing
        && !crate::owner::is_missing(&dbconn::DatabaseUrl::Postgres(Box::new(url.clone()))).await?
    {
        drop_target().await;
        tracing::info!("{live} appeared while the snapshot was restored: nothing restored");
        return Ok(None);
    }
    let live_row = c
        .query_opt(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            &[&live],
        )
        .await
        .map_err(q("reading the database owner"))?;
    // A live database that does not exist (an empty server being recovered) has nothing to
    // rename aside.
    let live_exists = live_row.is_some();
    let live_comment: Option<String> = live_row.and_then(|r| r.get(0));

    // The swap. Without --terminate-connections, open sessions refuse it.
    let sessions = lasting_sessions(c, &live).await?;
    if !sessions.is_empty() && !opts.terminate_connections {
        drop_target().await;
        return Err(Stop::Final(Error::Refused(format!(
            "{} session(s) are connected to {live}:\n  {}\nStop the application first, or pass --terminate-connections to end them. Nothing was replaced.",
            sessions.len(),
            sessions.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("\n  ")
        ))));
    }
    if let Err(e) = dbconn::failpoint::hit("restore-pg-before-swap") {
        drop_target().await;
        return Err(Stop::Final(Error::Restore(e)));
    }
    let swap = Swap {
        live: &live,
        target: &target,
        live_exists,
        live_comment,
    };
    let (replaced, ended) = match swap.run(c, url, opts.terminate_connections).await {
        Ok(done) => done,
        Err(e) => {
            drop_target().await;
            return Err(Stop::Final(e));
        }
    };
    undo.disarm();
    dbconn::committed::mark(format!(
        "the restored database was swapped in as {live} (the replaced one is {replaced})"
    ));
    if !ended.ended.is_empty() {
        tracing::warn!(
            "ended {} session(s) on {live}: {}",
            ended.ended.len(),
            ended.ended.join("; ")
        );
    }
    Ok(Some(Outcome {
        database: live,
        replaced: live_exists.then_some(Replaced::Database(replaced)),
        terminated: ended.ended,
        strategy: Strategy::RenameSwap,
        strategy_reason: None,
        copy: 0,
    }))
}

/// Drops `target` if it is still the database this restore of `live` created (its marker
/// names exactly it): the undo of a restore stopped half way. Sessions still on it (pg_restore's,
/// just killed) are ended.
async fn drop_marked(url: PgUrl, target: String, live: String) -> Result<(), Error> {
    let admin = connect_to(&url, MAINTENANCE).await?;
    let db = |e: tokio_postgres::Error| dbconn::Error::db(format!("dropping {target}"), e);
    let c = admin.client();
    let comment: Option<Option<String>> = c
        .query_opt(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            &[&target],
        )
        .await
        .map_err(db)?
        .map(|r| r.get(0));
    match comment {
        None => Ok(()),
        Some(Some(marker)) if marker == in_progress_marker(&target, &live) => {
            // WITH (FORCE) ends pg_restore's lingering session (PostgreSQL 13 and later).
            let version: String = c
                .query_one("SHOW server_version_num", &[])
                .await
                .map_err(db)?
                .get(0);
            let force = if version.parse::<u32>().unwrap_or(0) >= 130000 {
                " WITH (FORCE)"
            } else {
                ""
            };
            c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {}{force}",
                ident(&target)
            ))
            .await
            .map_err(db)?;
            tracing::info!("dropped {target}");
            Ok(())
        }
        Some(_) => Err(dbconn::Error::Refused {
            what: target.clone(),
            problem: "no longer carries this restore's marker: left as it is".into(),
        }
        .into()),
    }
}

#[derive(Default)]
struct Terminated {
    ended: Vec<String>,
    /// Sessions this role may not end, with the server's reason.
    refused: Vec<String>,
}

/// Ends every client session on `db` but the swapping one, one `pg_terminate_backend` per
/// session so that one refusal (a missing privilege) does not stop the others.
async fn terminate_sessions(
    c: &tokio_postgres::Client,
    db: &str,
    swapper: i32,
    out: &mut Terminated,
) -> Result<(), Error> {
    for s in sessions(c, db).await? {
        if s.pid == swapper {
            continue;
        }
        let r = c
            .query_one("SELECT pg_terminate_backend($1)", &[&s.pid])
            .await;
        let label = s.to_string();
        match r {
            Ok(row) if row.get::<_, bool>(0) => {
                if !out.ended.contains(&label) {
                    out.ended.push(label);
                }
            }
            Ok(_) => {}
            Err(e) => {
                let why = format!("{label}: {}", describe(&e));
                if !out.refused.contains(&why) {
                    tracing::warn!("could not end {why}");
                    out.refused.push(why);
                }
            }
        }
    }
    Ok(())
}

struct Session {
    pid: i32,
    user: String,
    app: String,
    from: String,
}

impl std::fmt::Display for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} user {} `{}` from {}",
            self.pid, self.user, self.app, self.from
        )
    }
}

/// Runs `zstd -dc | pg_restore --exit-on-error ARGS` into `db`, fed from `input` (the stored
/// object: a fetched file, or blocks streaming from the store): the archive is decoded straight
/// into pg_restore's stdin, never spooled to disk. An encrypted snapshot that no identity opens
/// is refused before pg_restore starts. A stream that does not decode (to the manifest's raw
/// size) is [`Error::Damaged`], whatever pg_restore made of it; pg_restore's own failure is
/// [`Error::Restore`] (or [`Error::Refused`] for an archive its version cannot read).
pub async fn pg_restore(
    url: &PgUrl,
    db: &str,
    input: impl std::io::Read + Send + 'static,
    m: &Manifest,
    identities: &crate::crypt::Identities,
    pg_restore_version: &str,
    args: &[&str],
) -> Result<(), Error> {
    let (reader, mut stdin) =
        std::io::pipe().map_err(|e| Error::Restore(format!("making a pipe: {e}")))?;
    // A 1 MiB pipe (64 KiB by default): pg_restore reads its stdin a few KiB at a time, and
    // with a small pipe each of its reads can wait for the decoder to be scheduled again.
    {
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on a pipe descriptor this function owns; failure is harmless.
        unsafe { libc::fcntl(stdin.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    }
    // The decoding thread opens the input first (decrypting reads the age header, which may
    // still be on its way from the store), says whether it could, then feeds pg_restore.
    // Both answers are awaited, never joined: the thread may be waiting for a block that a
    // download on this runtime has yet to send.
    let (opened_tx, opened) = tokio::sync::oneshot::channel::<Result<(), Error>>();
    let (fed_tx, fed) = tokio::sync::oneshot::channel::<Result<u64, Fed>>();
    {
        let (m, identities) = (m.clone(), identities.clone());
        std::thread::spawn(move || {
            let input = match identities.reader(input, &m) {
                Ok(input) => {
                    let _ = opened_tx.send(Ok(()));
                    input
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                    return;
                }
            };
            let fed = zstd::stream::read::Decoder::new(input)
                .map_err(|e| Fed::Decode(e.to_string()))
                .and_then(|mut decoder| {
                    // 1 MiB writes: `std::io::copy`'s 8 KiB ones cost pg_restore a read each,
                    // on cores that pg_restore's server process needs.
                    super::copy_split(&mut decoder, &mut stdin, Fed::Decode, |e| {
                        Fed::Write(e.to_string())
                    })
                });
            // pg_restore sees the end of its input before it is told how the feeding went.
            drop(stdin);
            let _ = fed_tx.send(fed);
        });
    }
    opened
        .await
        .unwrap_or_else(|_| Err(Error::Restore("the decompression thread panicked".into())))?;
    // One job: on 2 cores `--jobs=2` measured slower (5.1 s vs 3.5 s for a 450 MB pgbench
    // database), its index builds competing for the same cores; and it needs a file.
    // Awaited, not blocked on: a stop request drops this future, which kills pg_restore (its
    // transaction, or the scratch database's half, is then undone or left marked as dbward's).
    let mut cmd = libpq_command("pg_restore", url, Some(db));
    cmd.args(["--exit-on-error", "--no-password"])
        .args(args)
        .stdin(Stdio::from(reader))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Restore(format!("running pg_restore: {e}")))?;
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| Error::Restore(format!("waiting for pg_restore: {e}")))?;
    let fed = fed
        .await
        .unwrap_or_else(|_| Err(Fed::Decode("the decompression thread panicked".into())));
    // A stream that does not decode explains whatever pg_restore said about it.
    if let Err(Fed::Decode(e)) = &fed {
        return Err(Error::Damaged(format!(
            "snapshot {} does not decode: {e}",
            m.id
        )));
    }
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if err.contains("unsupported version") {
            return Err(Error::Refused(format!(
                "pg_restore {pg_restore_version} cannot read this archive, written by pg_dump {}: {err}",
                m.pg_dump_version.as_deref().unwrap_or("unknown")
            )));
        }
        return Err(Error::Restore(format!(
            "pg_restore into {db} failed ({}): {err}",
            out.status
        )));
    }
    match fed {
        Ok(n) if n == m.raw_bytes => Ok(()),
        Ok(n) => Err(Error::Damaged(format!(
            "snapshot {} decoded to {n} bytes, the manifest says {}",
            m.id, m.raw_bytes
        ))),
        Err(Fed::Write(e) | Fed::Decode(e)) => {
            Err(Error::Restore(format!("feeding pg_restore: {e}")))
        }
    }
}

/// Why the thread feeding pg_restore stopped early.
enum Fed {
    /// The snapshot's stream does not decode.
    Decode(String),
    /// pg_restore stopped reading.
    Write(String),
}

/// Restores in place, for a database that cannot be swapped by renaming (it is the
/// maintenance database `postgres`, or this role may not create databases: the usual case on
/// managed services). The caller has already kept the replaced state as a fresh snapshot. The
/// verified archive is applied to the live database by `pg_restore --clean --if-exists
/// --single-transaction`: all of it or none of it. Objects the archive does not hold (a table
/// the rolled-back release created) are left as they are.
pub async fn restore_in_place(
    url: &PgUrl,
    compressed: &Path,
    m: &Manifest,
    identities: &crate::crypt::Identities,
    terminate_connections: bool,
    reason: String,
) -> Result<Outcome, Error> {
    let pg_restore_version = check_versions(m)?;
    let live = url.dbname().to_string();
    let db = Postgres::connect(url).await?;
    let c = db.client();
    let open = lasting_sessions(c, &live).await?;
    let mut ended = Terminated::default();
    if !open.is_empty() {
        if !terminate_connections {
            return Err(Error::Refused(format!(
                "{} session(s) are connected to {live}:\n  {}\nStop the application first, or pass --terminate-connections to end them. Nothing was replaced.",
                open.len(),
                open.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("\n  ")
            )));
        }
        let me: i32 = c
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(|e| Error::Restore(describe(&e)))?
            .get(0);
        terminate_sessions(c, &live, me, &mut ended).await?;
    }
    drop(db);
    tracing::info!("pg_restore --clean --single-transaction into {live} (in place: {reason})");
    let archive = std::fs::File::open(compressed)
        .map_err(Error::io(format!("opening {}", compressed.display())))?;
    pg_restore(
        url,
        &live,
        archive,
        m,
        identities,
        &pg_restore_version,
        &["--clean", "--if-exists", "--single-transaction"],
    )
    .await?;
    dbconn::committed::mark(format!("the snapshot was applied to {live} in place"));
    if let Err(e) = check_restored(&Postgres::connect(url).await?, m).await {
        return Err(Error::AfterChange(format!(
            "the archive was applied to {live} in place, but the check that followed failed: {}. \
             The state before the restore is kept as a snapshot (see the log above); restore it to go back",
            crate::error::chain(&e)
        )));
    }
    Ok(Outcome {
        database: live,
        replaced: None,
        terminated: ended.ended,
        strategy: Strategy::InPlace,
        strategy_reason: Some(reason),
        copy: 0,
    })
}

/// The sessions on `db` that stay: ones that are closing (this process's own earlier
/// connections, say: the identity check, the snapshot taken just before an in-place restore)
/// get two seconds to go before they count.
async fn lasting_sessions(c: &tokio_postgres::Client, db: &str) -> Result<Vec<Session>, Error> {
    let mut open = sessions(c, db).await?;
    for _ in 0..20 {
        if open.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        open = sessions(c, db).await?;
    }
    Ok(open)
}

/// Every session on `db` but this connection's. Another role's session shows NULL in most
/// columns to a role without pg_read_all_stats, so it counts unless it is known to be a
/// background process; background workers without a user (autovacuum) are not sessions: the
/// rename asks them to leave by itself.
async fn sessions(c: &tokio_postgres::Client, db: &str) -> Result<Vec<Session>, Error> {
    let rows = c
        .query(
            "SELECT pid, coalesce(usename::text, '(another role)'), coalesce(application_name, ''), coalesce(host(client_addr), 'local socket or hidden') \
             FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() \
               AND usesysid IS NOT NULL AND coalesce(backend_type, 'client backend') = 'client backend' ORDER BY pid",
            &[&db],
        )
        .await
        .map_err(|e| Error::Restore(format!("listing sessions: {}", describe(&e))))?;
    Ok(rows
        .iter()
        .map(|r| Session {
            pid: r.get(0),
            user: r.get(1),
            app: r.get(2),
            from: r.get(3),
        })
        .collect())
}

/// A `pg_restore` older than the `pg_dump` that wrote the archive is refused, naming both,
/// before any database is created. Returns pg_restore's version.
pub fn check_versions(m: &Manifest) -> Result<String, Error> {
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
    if let Some(differs) = crate::manifest::head_differs(&applied_on(c).await?, m) {
        return Err(Error::Damaged(format!("the restored database's {differs}")));
    }
    // Every table counted (a schema or table name may hold a dot, so the manifest's
    // `schema.table` keys are matched whole, never split); tables the archive does not hold
    // (left by an in-place restore) are not compared.
    if m.row_counts.is_empty() {
        return Ok(());
    }
    let got = dbconn::postgres::row_counts(c)
        .await
        .map_err(|e| Error::Restore(crate::error::chain(&e)))?;
    for (table, want) in &m.row_counts {
        match got.get(table) {
            Some(n) if n == want => {}
            Some(n) => {
                return Err(Error::Damaged(format!(
                    "{table} has {n} rows after the restore, the manifest says {want}"
                )))
            }
            None => {
                return Err(Error::Damaged(format!(
                    "{table} is missing after the restore; the manifest counts {want} rows"
                )))
            }
        }
    }
    Ok(())
}

//! A PostgreSQL server on a restored data directory, recovering to a target and promoting.
//!
//! The copy is private and never touches production: its settings (appended to its
//! `postgresql.auto.conf`, where they outlast this run) turn archiving off, take no WAL from
//! any archive (`restore_command = 'false'`: every segment it needs was fetched into its
//! `pg_wal`), listen on no TCP address, and accept connections only on a Unix socket inside
//! the data directory (mode 0700: its owner and root) through an `hba_file` of its own.
//! Recovery is done when the server reports itself `ready` (promoted), answers
//! `pg_is_in_recovery() = false`, and its postmaster is still alive: `pg_ctl -w` returns as
//! soon as a recovering server accepts connections, and a target never reached ends the server
//! afterwards.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::physical::Target;
use crate::error::Error;

/// The socket's port number (it only names the socket file, in a directory of its own).
pub const PORT: u16 = 5432;

/// The OS user a server runs as when dbward is root (PostgreSQL refuses to run as root).
#[derive(Debug, Clone)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl OsUser {
    pub fn lookup(name: &str) -> Result<OsUser, Error> {
        let c = std::ffi::CString::new(name)
            .map_err(|_| Error::Refused(format!("`{name}` is not a user name")))?;
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; 16 << 10];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: getpwnam_r writes only into `pw` and `buf`, whose sizes are given.
        let rc = unsafe {
            libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut found)
        };
        if rc != 0 || found.is_null() {
            return Err(Error::Refused(format!(
                "there is no OS user `{name}` to run the restored PostgreSQL server as (it refuses to run as root)"
            )));
        }
        Ok(OsUser {
            name: name.to_string(),
            uid: pw.pw_uid,
            gid: pw.pw_gid,
        })
    }

    /// `postgres` when this process is root, else nobody (the server runs as this user).
    pub fn for_server() -> Result<Option<OsUser>, Error> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            OsUser::lookup("postgres").map(Some)
        } else {
            Ok(None)
        }
    }
}

/// A server started on a restored data directory.
#[derive(Debug)]
pub struct Server {
    pub data_dir: PathBuf,
    pub bindir: PathBuf,
    pub user: Option<OsUser>,
    pub log: PathBuf,
}

/// The settings a restored copy runs with, appended to its `postgresql.auto.conf`.
/// `hot_standby` needs the parameters PostgreSQL compares with the primary's (`required`, read
/// from the base's `pg_control`): a base whose `postgresql.conf` stayed in `/etc` would
/// otherwise start with smaller defaults and stop.
fn settings(
    data: &Path,
    target: &Target,
    timeline: Option<u32>,
    required: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut s = vec![
        ("archive_mode", "off".to_string()),
        ("restore_command", "false".into()),
        ("listen_addresses", String::new()),
        ("port", PORT.to_string()),
        ("unix_socket_directories", data.display().to_string()),
        ("hba_file", data.join(HBA).display().to_string()),
        ("ssl", "off".into()),
        ("shared_buffers", "128MB".into()),
        ("hot_standby", "on".into()),
    ];
    s.extend(required.iter().cloned());
    s.extend(recovery_settings(target, timeline, "promote"));
    s
}

/// Recovery to `target` and `action` there (`promote`, or `pause`), on the base's timeline or
/// along the one given (whose history file is fetched). A base of a cluster that was itself
/// restored may carry another target: each is reset, so the one given is the only one.
fn recovery_settings(
    target: &Target,
    timeline: Option<u32>,
    action: &str,
) -> Vec<(&'static str, String)> {
    let mut s = vec![
        (
            "recovery_target_timeline",
            timeline.map_or("current".to_string(), |t| t.to_string()),
        ),
        ("recovery_target_action", action.into()),
    ];
    for t in [
        "recovery_target",
        "recovery_target_name",
        "recovery_target_time",
        "recovery_target_xid",
        "recovery_target_lsn",
    ] {
        s.push((t, String::new()));
    }
    s.extend(target.settings());
    s
}

/// Prepares a restored data directory to replace a cluster's own (the guard's rewind): its
/// settings stay the cluster's (archiving on: the new timeline goes to the archive), with
/// recovery to `target` appended to `postgresql.auto.conf`, `recovery.signal`, and every
/// fetched WAL file marked archived already (the server must not push them again). Recovery
/// pauses at the target, read-only (`hot_standby = on`): the caller takes the migration lock
/// and promotes it (`pg_promote`), so no write is possible before the lock is held.
pub fn prepare_rewind(data: &Path, target: &Target, fetched: &[String]) -> Result<(), Error> {
    let mut settings = vec![
        ("restore_command", "false".to_string()),
        ("hot_standby", "on".to_string()),
    ];
    settings.extend(recovery_settings(target, None, "pause"));
    let status = write_recovery(
        data,
        "# Added by dbward for its rewind of this cluster (removed once the server promoted):\n# every WAL file recovery needs is in pg_wal.",
        &settings,
    )?;
    for name in fetched {
        write_own(&status.join(format!("{name}.done")), "", false)?;
    }
    Ok(())
}

/// Appends `settings` (after the comment `why`) to `data`'s `postgresql.auto.conf`, writes
/// `recovery.signal`, and makes `pg_wal/archive_status` (returned).
fn write_recovery(
    data: &Path,
    why: &str,
    settings: &[(&'static str, String)],
) -> Result<PathBuf, Error> {
    let mut text = format!("\n{why}\n");
    for (k, v) in settings {
        text.push_str(&format!("{k} = {}\n", conf_quote(v)));
    }
    write_own(&data.join("postgresql.auto.conf"), &text, true)?;
    write_own(&data.join("recovery.signal"), "", false)?;
    let status = data.join("pg_wal/archive_status");
    std::fs::create_dir_all(&status)
        .map_err(Error::io(format!("creating {}", status.display())))?;
    Ok(status)
}

/// Puts `original` back as `data`'s `postgresql.auto.conf`, byte for byte, with the owner and
/// mode the file has now (atomically: a temp file beside it, renamed over it).
pub fn put_back_auto_conf(data: &Path, original: &[u8]) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let auto = data.join("postgresql.auto.conf");
    let tmp = data.join("postgresql.auto.conf.dbward-tmp");
    let io = |e: std::io::Error| Error::io(format!("writing {}", auto.display()))(e);
    let meta = std::fs::symlink_metadata(&auto).map_err(io)?;
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, original, meta.mode() & 0o7777)?;
    std::os::unix::fs::lchown(&tmp, Some(meta.uid()), Some(meta.gid())).map_err(io)?;
    std::fs::rename(&tmp, &auto).map_err(io)?;
    std::fs::File::open(data)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

/// Writes `bytes` to `path`, which must not exist (never through a link), with `mode`.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| Error::io(format!("writing {}", path.display()))(e);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io)
}

/// The state the postmaster on `data` gives in its `postmaster.pid` (`starting`, `ready`,
/// `stopping`, ...), while that process lives.
pub fn postmaster_state(data: &Path) -> Option<String> {
    postmaster_pid(data)?;
    let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
    Some(text.lines().nth(7).unwrap_or("").trim().to_string())
}

/// The pid of the postmaster running on `data` (its `postmaster.pid`, while that process
/// lives).
pub fn postmaster_pid(data: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    // SAFETY: kill with signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    alive.then_some(pid)
}

/// The settings hot standby needs at least the primary's values of, from `pg_controldata`.
fn required_settings(bindir: &Path, data: &Path) -> Result<Vec<(&'static str, String)>, Error> {
    let out = dbconn::child::tool(bindir.join("pg_controldata"))
        .arg(data)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| Error::Tool {
            tool: "pg_controldata".into(),
            problem: format!("running it: {e}"),
        })?;
    if !out.status.success() {
        return Err(Error::Recovery(format!(
            "pg_controldata cannot read the restored base's control file: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found = Vec::new();
    for (label, name) in [
        ("max_connections setting:", "max_connections"),
        ("max_worker_processes setting:", "max_worker_processes"),
        ("max_wal_senders setting:", "max_wal_senders"),
        ("max_prepared_xacts setting:", "max_prepared_transactions"),
        ("max_locks_per_xact setting:", "max_locks_per_transaction"),
    ] {
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                Error::Recovery(format!(
                    "pg_controldata does not give the base's `{name}`: {}",
                    text.lines().take(5).collect::<Vec<_>>().join("; ")
                ))
            })?;
        found.push((name, value.to_string()));
    }
    Ok(found)
}

const HBA: &str = "dbward-restore-hba.conf";

/// A `postgresql.conf` value, quoted.
fn conf_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// Where the server binaries of major version `major` are: Debian's
/// `/usr/lib/postgresql/<major>/bin`, else `pg_ctl` on PATH if it is that version.
pub fn bindir(major: u32) -> Result<PathBuf, Error> {
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    if debian.join("pg_ctl").is_file() && debian.join("postgres").is_file() {
        return Ok(debian);
    }
    if let Some(on_path) = crate::engine::postgres::find_tool("pg_ctl") {
        let version = crate::engine::postgres::tool_version(&on_path.display().to_string())?;
        if crate::engine::postgres::major(&version) == major {
            return Ok(on_path.parent().map(Path::to_path_buf).unwrap_or_default());
        }
    }
    Err(Error::Tool {
        tool: "postgres".into(),
        problem: format!(
            "a base of PostgreSQL {major} needs that version's server binaries (pg_ctl, postgres); none found in /usr/lib/postgresql/{major}/bin or on PATH"
        ),
    })
}

/// Writes `text` to `path`, which must not be a symbolic link (a base is extracted without
/// any, but its files are never written through one).
fn write_own(path: &Path, text: &str, append: bool) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| Error::io(format!("writing {}", path.display()))(e);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .append(append)
        .truncate(!append)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io)?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io)
}

/// The socket's path (`<data>/.s.PGSQL.5432`) must fit in a sockaddr_un: checked before
/// anything is written.
pub fn check_socket_path(data: &Path) -> Result<(), Error> {
    if data.as_os_str().len() + 16 > 107 {
        return Err(Error::Target {
            target: data.display().to_string(),
            problem: "too long a path for the restored server's socket (at most 91 bytes): pick a shorter --to".into(),
        });
    }
    Ok(())
}

impl Server {
    /// Writes the copy's settings and `recovery.signal` and hands the directory to `user`;
    /// the server is not started yet ([`Server::launch`]).
    pub fn prepare(
        data: &Path,
        bindir: PathBuf,
        user: Option<OsUser>,
        target: &Target,
        timeline: Option<u32>,
    ) -> Result<Server, Error> {
        check_socket_path(data)?;
        // Debian keeps postgresql.conf, pg_hba.conf and pg_ident.conf in /etc: a base of such a
        // cluster has none.
        for (file, text) in [
            (
                "postgresql.conf",
                "# Written by dbward: the base backup had none.\n",
            ),
            ("pg_ident.conf", ""),
        ] {
            let path = data.join(file);
            if std::fs::symlink_metadata(&path).is_err() {
                write_own(&path, text, false)?;
            }
        }
        write_own(
            &data.join(HBA),
            "# Written by dbward: the restored copy takes connections only on its own socket,\n# in its data directory (mode 0700).\nlocal all all trust\n",
            false,
        )?;
        let required = required_settings(&bindir, data)?;
        write_recovery(
            data,
            "# Added by dbward when it restored this copy: it never archives, fetches no WAL from\n# any archive, and takes connections only on the socket in this directory.",
            &settings(data, target, timeline, &required),
        )?;
        if let Some(u) = &user {
            chown_tree(data, u)?;
        }
        Ok(Server {
            data_dir: data.to_path_buf(),
            log: data.join("dbward-restore.log"),
            bindir,
            user,
        })
    }

    /// Starts the server, until it takes connections (then see [`Server::wait_promoted`]).
    /// `-w`: pg_ctl returns once the server takes (read-only) connections, and tells a
    /// postmaster that died on the way from one still starting. A long wait for the base's own
    /// WAL is bounded by `-t`. A caller that drops this future kills pg_ctl; stopping the
    /// server is the caller's (it holds the `Server`).
    pub async fn launch(&self) -> Result<(), Error> {
        let mut start = self.pg_ctl();
        start
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "3600", "start"]);
        let out = tokio::process::Command::from(start)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| Error::Tool {
                tool: "pg_ctl".into(),
                problem: format!("running it: {e}"),
            })?;
        if !out.status.success() {
            let reach = match &self.user {
                Some(u) => format!(
                    " (the server runs as `{}`: every directory above {} must be searchable by that user)",
                    u.name,
                    self.data_dir.display()
                ),
                None => String::new(),
            };
            return Err(Error::Recovery(format!(
                "the restored server did not start{reach}: {}{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                self.log_tail()
            )));
        }
        Ok(())
    }

    fn pg_ctl(&self) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = dbconn::child::tool(self.bindir.join("pg_ctl"));
        c.arg("-D").arg(&self.data_dir);
        if let Some(u) = &self.user {
            c.uid(u.uid).gid(u.gid);
            c.current_dir("/");
        }
        c
    }

    /// The postmaster's pid and status (`postmaster.pid`, lines 1 and 8), while it is alive.
    fn postmaster(&self) -> Option<(i32, String)> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let lines: Vec<&str> = text.lines().collect();
        let pid: i32 = lines.first()?.trim().parse().ok()?;
        // SAFETY: kill with signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        alive.then(|| (pid, lines.get(7).unwrap_or(&"").trim().to_string()))
    }

    /// Waits until the server finished recovery and promoted: it answers
    /// `pg_is_in_recovery() = false` (it takes read-only connections while it replays:
    /// `hot_standby` is on) and its postmaster is alive. A server that stops on the way (a
    /// target never reached ends it) is an error with the end of its log. Returns a client
    /// connected to `dbname` as `user` over the copy's socket.
    pub async fn wait_promoted(
        &self,
        user: &str,
        dbname: &str,
    ) -> Result<tokio_postgres::Client, Error> {
        let stopped = || {
            Error::Recovery(format!(
                "the restored server stopped before it finished recovery{}",
                self.log_tail()
            ))
        };
        let mut client = None;
        // `launch` returned once the server took connections: a connection that keeps failing
        // (a role or database the copy does not have) is an answer, not a wait.
        let mut refused = 0;
        loop {
            if self.postmaster().is_none() {
                return Err(stopped());
            } else if client.is_none() {
                match self.connect(user, dbname).await {
                    Ok(c) => client = Some(c),
                    Err(e) => {
                        refused += 1;
                        if refused >= 50 {
                            return Err(e);
                        }
                    }
                }
            }
            if let Some(c) = &client {
                match c.query_one("SELECT pg_is_in_recovery()", &[]).await {
                    Ok(row) if !row.get::<_, bool>(0) => break,
                    Ok(_) => {}
                    Err(_) => {
                        client = None;
                        if self.postmaster().is_none() {
                            return Err(stopped());
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if self.postmaster().is_none() {
            return Err(stopped());
        }
        Ok(client.expect("connected"))
    }

    async fn connect(&self, user: &str, dbname: &str) -> Result<tokio_postgres::Client, Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.data_dir)
            .port(PORT)
            .user(user)
            .dbname(dbname)
            .application_name("dbward restore")
            .connect_timeout(Duration::from_secs(5));
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| {
            Error::Recovery(format!(
                "connecting to the restored server: {}",
                dbconn::postgres::describe(&e)
            ))
        })?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Stops the server (fast shutdown), waiting for it.
    pub fn stop(&self) -> Result<(), Error> {
        if self.postmaster().is_none() {
            return Ok(());
        }
        let out = self
            .pg_ctl()
            .args(["-m", "fast", "-w", "-t", "120", "stop"])
            .output()
            .map_err(|e| Error::Tool {
                tool: "pg_ctl".into(),
                problem: format!("running it: {e}"),
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Recovery(format!(
                "pg_ctl could not stop the restored server: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// The last lines of the server's log, for an error message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n");
        if tail.is_empty() {
            String::new()
        } else {
            format!(". Its log ({}) ends:\n{tail}", self.log.display())
        }
    }
}

/// Where a promoted copy's replay ended, and what it holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recovered {
    pub replayed_to_lsn: Option<String>,
    /// The commit time of the last transaction replayed.
    pub last_transaction_at: Option<String>,
    pub migration_head: Option<crate::manifest::Head>,
}

pub async fn recovered(client: &tokio_postgres::Client) -> Result<Recovered, Error> {
    let row = client
        .query_one(
            "SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()::text",
            &[],
        )
        .await
        .map_err(|e| Error::Recovery(dbconn::postgres::describe(&e)))?;
    let applied = dbconn::postgres::applied_on(client).await?;
    Ok(Recovered {
        replayed_to_lsn: row.get(0),
        last_transaction_at: row.get(1),
        migration_head: crate::engine::head(applied),
    })
}

/// Gives `dir` and everything in it (all of it this run's) to `user`.
pub fn chown_tree(dir: &Path, user: &OsUser) -> Result<(), Error> {
    chown_tree_to(dir, user.uid, user.gid)
}

/// Gives `dir` and everything in it (all of it this run's) to `uid` and `gid`.
pub fn chown_tree_to(dir: &Path, uid: u32, gid: u32) -> Result<(), Error> {
    let set = |p: &Path| {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid))
            .map_err(Error::io(format!("giving {} to uid {uid}", p.display())))
    };
    set(dir)?;
    for entry in std::fs::read_dir(dir).map_err(Error::io(format!("listing {}", dir.display())))? {
        let entry = entry.map_err(Error::io(format!("listing {}", dir.display())))?;
        let ty = entry
            .file_type()
            .map_err(Error::io(format!("stat {}", entry.path().display())))?;
        if ty.is_dir() {
            chown_tree_to(&entry.path(), uid, gid)?;
        } else {
            set(&entry.path())?;
        }
    }
    Ok(())
}

/// What a live server says about itself (the guard's rewind checks it is the configured one).
pub struct LiveCluster {
    pub data_directory: PathBuf,
    pub system_identifier: String,
    /// Databases besides `url`'s, templates and `postgres`.
    pub other_databases: Vec<String>,
    /// Tablespaces besides `pg_default` and `pg_global`, and replication slots.
    pub tablespaces: Vec<String>,
    pub replication_slots: Vec<String>,
    /// Streaming standbys connected without a replication slot (`application_name (address)`).
    pub standbys_without_slot: Vec<String>,
    /// Every file the live configuration reads (`pg_file_settings`: the main file, its
    /// `include`, `include_if_exists` and `include_dir` files, `postgresql.auto.conf`; and the
    /// SSL, `hba_file` and `ident_file` settings), absolute; `Err` when they cannot be listed
    /// (a role without `pg_read_all_settings`).
    pub config_files: Result<Vec<PathBuf>, dbconn::Error>,
    /// Whether this role may run `pg_promote` (a rewound cluster is promoted on its session).
    pub can_promote: bool,
}

pub async fn live_cluster(url: &dbconn::PgUrl) -> Result<LiveCluster, Error> {
    let db = dbconn::postgres::Postgres::connect(url).await?;
    let row = db
        .client()
        .query_one(
            "SELECT current_setting('data_directory'), \
                    (SELECT system_identifier::text FROM pg_control_system()), \
                    coalesce((SELECT array_agg(datname::text ORDER BY datname) FROM pg_database \
                      WHERE NOT datistemplate AND datname <> current_database() AND datname <> 'postgres'), '{}'), \
                    coalesce((SELECT array_agg(spcname::text ORDER BY spcname) FROM pg_tablespace \
                      WHERE spcname NOT IN ('pg_default', 'pg_global')), '{}'), \
                    coalesce((SELECT array_agg(slot_name::text ORDER BY slot_name) FROM pg_replication_slots), '{}'), \
                    has_function_privilege('pg_promote(boolean, integer)', 'EXECUTE')",
            &[],
        )
        .await
        .map_err(|e| Error::Source(dbconn::postgres::describe(&e)))?;
    let data_directory = PathBuf::from(row.get::<_, String>(0));
    let standbys_without_slot: Vec<String> = db
        .client()
        .query_one(
            "SELECT coalesce(array_agg(coalesce(nullif(application_name, ''), 'pid ' || pid) || ' (' || coalesce(client_addr::text, 'local socket') || ')' ORDER BY pid), '{}') \
             FROM pg_stat_replication r WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.active_pid = r.pid)",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or_default();
    let config_files = db
        .client()
        .query_one(
            "SELECT coalesce(array_agg(DISTINCT f), '{}') FROM ( \
               SELECT sourcefile AS f FROM pg_file_settings WHERE sourcefile IS NOT NULL \
               UNION SELECT setting FROM pg_settings \
                 WHERE name IN ('ssl_cert_file', 'ssl_key_file', 'ssl_ca_file', 'ssl_crl_file', 'hba_file', 'ident_file', 'config_file') \
                 AND setting <> '') s",
            &[],
        )
        .await
        .map(|r| {
            r.get::<_, Vec<String>>(0)
                .into_iter()
                .map(|f| data_directory.join(f)) // a relative setting is the data directory's
                .collect()
        })
        .map_err(|e| dbconn::Error::db("listing the configuration files", e));
    Ok(LiveCluster {
        data_directory,
        system_identifier: row.get(1),
        other_databases: row.get(2),
        tablespaces: row.get(3),
        replication_slots: row.get(4),
        standbys_without_slot,
        config_files,
        can_promote: row.get(5),
    })
}

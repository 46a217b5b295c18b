//! Test harness: real dependencies on loopback, started per test and stopped on drop (also
//! when the test panics). Nothing here skips: a missing dependency is a loud panic telling the
//! reader to run `scripts/test.sh`, which installs it.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod archive;
pub mod unit;

pub const MISSING: &str = "run scripts/test.sh, which installs the test dependencies";

/// The built binary, with no dbward setting inherited from the environment.
pub fn dbward(cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dbward"));
    c.current_dir(cwd);
    for (k, _) in std::env::vars() {
        if k.starts_with("DBWARD_") || k == "DATABASE_URL" || k.starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    c.stdin(Stdio::null());
    c
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `systemd-analyze verify UNITS...` passes with nothing to say.
pub fn systemd_verify(units: &[impl AsRef<std::ffi::OsStr>]) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(units)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze: {e}: {MISSING}"));
    let err = stderr(&out);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify: {err}"
    );
}

/// Every file under `dir`, at any depth, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and returns (exit code, stdout, stderr).
pub fn run(c: &mut Command) -> (i32, String, String) {
    let o = c.output().expect("run dbward");
    (o.status.code().unwrap_or(-1), stdout(&o), stderr(&o))
}

/// Runs a standard tool (`sqlite3`, `zstd`, `pg_restore`, ...), panics unless it succeeds,
/// returns its trimmed stdout.
pub fn tool(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}: {MISSING}"));
    assert!(out.status.success(), "{cmd:?}: {}", stderr(&out));
    stdout(&out).trim().to_string()
}

/// `sqlite3 DB SQL`, with the real sqlite3 CLI.
pub fn sqlite(db: &Path, sql: &str) -> String {
    tool(Command::new("sqlite3").arg(db).arg(sql))
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{s}"))
}

/// The snapshot ids a `snapshots --json` command lists, newest first (it must exit 0).
pub fn listed_ids(c: &mut Command) -> Vec<String> {
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{err}");
    json(&out)["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// The state dir's record `what` (`last-deploy`, `failed-batch`, `replaced`) of database `db`:
/// `<what>-<db>.<key>.json`, where the key is the database's identity; `None` when there is
/// none, and a panic when there are several.
pub fn state_file(state_dir: &Path, what: &str, db: &str) -> Option<PathBuf> {
    let prefix = format!("{what}-{db}.");
    let found: Vec<PathBuf> = std::fs::read_dir(state_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(&prefix) && n.ends_with(".json")
        })
        .collect();
    assert!(found.len() <= 1, "several {what} records: {found:?}");
    found.into_iter().next()
}

/// Flips every bit of the byte in the middle of `path`: a stored object damaged in place.
pub fn flip_a_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

/// A project directory with a `migrations/` folder.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Project {
        let dir = tempfile::Builder::new()
            .prefix("dbward-test-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("migrations")).unwrap();
        Project { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn migration(&self, file: &str, sql: &str) -> &Self {
        std::fs::write(self.path().join("migrations").join(file), sql).unwrap();
        self
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.path().join("migrations").join(file)).unwrap();
    }

    pub fn dbward(&self, database: &str) -> Command {
        let mut c = dbward(self.path());
        c.arg("--database").arg(database);
        c
    }
}

/// A directory for a test server's files: inside the run's own directory when
/// `scripts/test.sh` set `DBWARD_TEST_RUN_DIR` (its cleanup ends only servers whose command line
/// names that directory, never another checkout's), else in the system temp dir.
pub fn server_dir(prefix: &str) -> tempfile::TempDir {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    match std::env::var_os("DBWARD_TEST_RUN_DIR") {
        Some(dir) => b.tempdir_in(dir),
        None => b.tempdir(),
    }
    .unwrap()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe extern "C" {
        fn geteuid() -> u32;
    }
    unsafe { geteuid() == 0 }
}

/// Makes `path` and everything in it the `postgres` user's when we are root (the server and
/// the commands it runs, archive_command's included, run as that user).
pub fn give_to_postgres(path: &Path) {
    if !is_root() {
        return;
    }
    let ok = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .unwrap();
    assert!(
        ok.success(),
        "chown to postgres failed (is there a `postgres` user?): {MISSING}"
    );
}

/// Runs a server-side PostgreSQL binary as `postgres` when we are root (initdb refuses root).
fn as_pg_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

pub fn pg_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("DBWARD_TEST_PG_BINDIR") {
        return dir.into();
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates
        .into_iter()
        .rev()
        .find(|d| d.join("initdb").exists())
        .unwrap_or_else(|| panic!("PostgreSQL server binaries (initdb) not found under /usr/lib/postgresql: {MISSING}"))
}

/// Appends the harness's own settings, then `conf`'s lines, to a `postgresql.conf`.
fn append_conf(path: &Path, own: &str, conf: &[&str]) {
    let mut extra = format!("\n{own}\n");
    for line in conf {
        extra.push_str(line);
        extra.push('\n');
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(extra.as_bytes())
        .unwrap();
}

/// A new cluster's directory (`dir/data`, made by initdb as `postgres`) and the server binaries.
fn initdb() -> (tempfile::TempDir, PathBuf) {
    let bindir = pg_bindir();
    let dir = server_dir("dbward-test-pg-");
    give_to_postgres(dir.path());
    let out = as_pg_user(&bindir.join("initdb"))
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
            "-D",
        ])
        .arg(dir.path().join("data"))
        .output()
        .unwrap_or_else(|e| panic!("initdb: {e}: {MISSING}"));
    assert!(out.status.success(), "initdb failed: {}", stderr(&out));
    (dir, bindir)
}

/// A throwaway PostgreSQL cluster on a free loopback port, in a temp dir; superuser `postgres`,
/// trust authentication. Stopped and removed on drop.
pub struct Pg {
    dir: tempfile::TempDir,
    pub port: u16,
    pub bindir: PathBuf,
    opts: String,
}

impl Pg {
    pub fn start() -> Pg {
        Pg::start_with(&[], None)
    }

    /// `conf`: extra `postgresql.conf` lines; `hba`: replaces `pg_hba.conf`. `setup` runs on the
    /// data directory after initdb (to place certificates, say).
    pub fn start_with(conf: &[&str], hba: Option<&str>) -> Pg {
        Pg::start_full(conf, hba, |_| {})
    }

    pub fn start_full(conf: &[&str], hba: Option<&str>, setup: impl Fn(&Path)) -> Pg {
        let (dir, bindir) = initdb();
        let data = dir.path().join("data");
        append_conf(
            &data.join("postgresql.conf"),
            "fsync = off\nlisten_addresses = '127.0.0.1'\nmax_connections = 50",
            conf,
        );
        if let Some(hba) = hba {
            std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        }
        setup(&data);
        give_to_postgres(dir.path());
        Pg::launch(dir, bindir, "")
    }

    /// Starts a server on a data directory made another way (a base backup): `dir/data`.
    pub fn start_in(dir: tempfile::TempDir) -> Pg {
        give_to_postgres(dir.path());
        Pg::launch(dir, pg_bindir(), "")
    }

    /// A cluster laid out as Debian's packages lay it out: `postgresql.conf`, `pg_hba.conf`
    /// and `pg_ident.conf` outside the data directory (in `dir/etc`), so a base backup of it
    /// has none. `conf`: extra settings, in that file.
    pub fn start_debian_like(conf: &[&str]) -> Pg {
        let (dir, bindir) = initdb();
        let data = dir.path().join("data");
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        for f in ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"] {
            std::fs::rename(data.join(f), etc.join(f)).unwrap();
        }
        append_conf(
            &etc.join("postgresql.conf"),
            &format!(
                "fsync = off\nlisten_addresses = '127.0.0.1'\nhba_file = '{0}/pg_hba.conf'\nident_file = '{0}/pg_ident.conf'",
                etc.display()
            ),
            conf,
        );
        give_to_postgres(dir.path());
        let opts = format!("-c config_file={}/postgresql.conf", etc.display());
        Pg::launch(dir, bindir, &opts)
    }

    fn launch(dir: tempfile::TempDir, bindir: PathBuf, opts: &str) -> Pg {
        let data = dir.path().join("data");
        // A port picked free may be taken before the server binds it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let out = as_pg_user(&bindir.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("log"))
                .arg("-o")
                .arg(format!("-p {port} -k {} {opts}", data.display()))
                .args(["-w", "-t", "60", "start"])
                .output()
                .unwrap();
            if out.status.success() {
                let opts = opts.to_string();
                return Pg {
                    dir,
                    port,
                    bindir,
                    opts,
                };
            }
        }
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        panic!("PostgreSQL did not start:\n{log}");
    }

    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Creates a database and returns its URL.
    pub fn create_db(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(name)
    }

    fn psql_cmd(&self, db: &str) -> Command {
        let mut c = Command::new(self.bindir.join("psql"));
        c.args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .arg("-p")
        .arg(self.port.to_string())
        .arg("-d")
        .arg(db);
        c
    }

    /// Runs a file of SQL (`psql -f`, as a runner applies one file), panics on error.
    pub fn psql_file(&self, db: &str, file: &Path) -> String {
        tool(self.psql_cmd(db).arg("-f").arg(file))
    }

    /// Runs SQL, panics on error, returns the trimmed output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self.psql_cmd(db).arg("-c").arg(sql).output().unwrap();
        assert!(out.status.success(), "psql {sql}: {}", stderr(&out));
        stdout(&out).trim().to_string()
    }

    /// A session as `user` (a role of this cluster), fed on stdin; ends when the child is killed.
    pub fn session_as(&self, db: &str, user: &str) -> Child {
        let mut c = self.psql_cmd(db);
        c.arg("-U").arg(user);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The URL of `db` for the role `user`.
    pub fn url_as(&self, user: &str, db: &str) -> String {
        format!(
            "postgres://{user}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// An open session fed on stdin (for holding locks); ends when the child is killed.
    pub fn session(&self, db: &str) -> Child {
        self.psql_cmd(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Polls `sql` until it returns `want`, for up to 30 s.
    pub fn wait_for(&self, db: &str, sql: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.psql(db, sql) != want {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for `{sql}` to return {want}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates `db` and restores a plain `pg_dump` archive into it with the real `pg_restore`.
    pub fn restore_into(&self, db: &str, dump: &Path) {
        self.psql("postgres", &format!("CREATE DATABASE {db}"));
        tool(
            Command::new(self.bindir.join("pg_restore"))
                .args([
                    "--exit-on-error",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    db,
                ])
                .arg("-p")
                .arg(self.port.to_string())
                .arg(dump),
        );
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Shell command lines that stop this server and start it again as it was started (as an
    /// operator's `systemctl stop` and `start` would), each returning once that is done.
    pub fn stop_start_commands(&self) -> (String, String) {
        let ctl = format!(
            "{}{} -D {}",
            if is_root() {
                "runuser -u postgres -- "
            } else {
                ""
            },
            self.bindir.join("pg_ctl").display(),
            self.data_dir().display()
        );
        (
            format!("{ctl} -m fast -w -t 120 stop"),
            format!(
                "{ctl} -l {} -o '-p {} -k {} {}' -w -t 600 start",
                self.dir.path().join("log").display(),
                self.port,
                self.data_dir().display(),
                self.opts
            ),
        )
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = as_pg_user(&self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A real S3-compatible server (s3s-fs) on a free loopback port, serving a temp directory.
/// Killed on drop. Bucket names need at least 3 characters; `bucket` exists from the start.
pub struct S3 {
    child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub bucket: String,
}

pub const S3_ACCESS_KEY: &str = "dbward-test-key";
pub const S3_SECRET_KEY: &str = "dbward-test-secret";

impl S3 {
    pub fn start() -> S3 {
        let dir = server_dir("dbward-test-s3-");
        let bucket = "snapshots".to_string();
        std::fs::create_dir(dir.path().join(&bucket)).unwrap();
        let (child, port) = S3::spawn(dir.path());
        S3 {
            child,
            dir,
            port,
            bucket,
        }
    }

    /// Starts the server again on the same directory (on a new port), after [`S3::kill`].
    pub fn restart(&mut self) {
        self.kill();
        let (child, port) = S3::spawn(self.dir.path());
        self.child = child;
        self.port = port;
    }

    fn spawn(dir: &Path) -> (Child, u16) {
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("s3s-fs")
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
                .arg(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("s3s-fs: {e}: {MISSING}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return (child, port);
                }
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("s3s-fs did not start");
    }

    /// Points a dbward command at this server (path style, test credentials).
    pub fn configure(&self, c: &mut Command) {
        c.env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env("DBWARD_STORE", format!("s3://{}/backups", self.bucket))
            .env("DBWARD_S3_ENDPOINT", self.endpoint())
            .env("DBWARD_S3_PATH_STYLE", "1");
    }

    /// Downloads `key` (relative to the bucket) with a plain S3 client (boto3), not dbward.
    pub fn fetch(&self, key: &str, to: &Path) {
        let script = format!(
            "import boto3, botocore.config\n\
             s3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='{S3_ACCESS_KEY}', aws_secret_access_key='{S3_SECRET_KEY}', region_name='us-east-1', config=botocore.config.Config(s3={{'addressing_style': 'path'}}))\n\
             s3.download_file('{}', '{key}', '{}')\n",
            self.endpoint(),
            self.bucket,
            to.display()
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "boto3 download of {key}: {} ({MISSING})",
            stderr(&out)
        );
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server now (to simulate an outage mid-upload).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real HTTP server on a free loopback port standing in for the application's health
/// endpoint: it answers `status`, or 503 until `healthy_after` has passed and 200 from then on.
pub struct Http {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Every request received: request line, headers and body.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Http {
    pub fn status(status: u16) -> Http {
        Http::start(status, None)
    }

    pub fn healthy_after(delay: Duration) -> Http {
        Http::start(503, Some(delay))
    }

    fn start(status: u16, healthy_after: Option<Duration>) -> Http {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop2, hits2, requests2) = (stop.clone(), hits.clone(), requests.clone());
        let started = Instant::now();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                // Headers, then as many body bytes as Content-Length says.
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = std::io::Read::read(&mut conn, &mut buf) {
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if req.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                requests2
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&req).into_owned());
                hits2.fetch_add(1, Ordering::Relaxed);
                let code = match healthy_after {
                    Some(d) if started.elapsed() >= d => 200,
                    _ => status,
                };
                // The body names a release, as apps report the commit they run.
                let body = format!("{{\"release\":\"{RELEASE}\",\"status\":{code}}}");
                let _ = write!(
                    conn,
                    "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Http {
            port,
            stop,
            hits,
            requests,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/healthz", self.port)
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// The release the test HTTP server says it runs, in every answer's body.
pub const RELEASE: &str = "abc1234";

/// PgBouncer in front of a cluster, in transaction pooling mode, on a free loopback port; run
/// as `postgres` (it refuses root) and stopped on drop.
pub struct PgBouncer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    pub fn transaction_mode(pg: &Pg) -> PgBouncer {
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| panic!("pgbouncer is not installed: {MISSING}"));
        let dir = server_dir("dbward-test-pgbouncer-");
        std::fs::write(dir.path().join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        for _ in 0..5 {
            let port = free_port();
            let ini = dir.path().join("pgbouncer.ini");
            std::fs::write(
                &ini,
                format!(
                    "[databases]\n* = host=127.0.0.1 port={pg}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                     unix_socket_dir =\nauth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
                     default_pool_size = 5\nmax_client_conn = 50\nlogfile = {log}\n",
                    pg = pg.port,
                    users = dir.path().join("users.txt").display(),
                    log = dir.path().join("pgbouncer.log").display(),
                ),
            )
            .unwrap();
            if is_root() {
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(dir.path())
                    .status()
                    .unwrap();
            }
            let mut cmd = as_pg_user(Path::new(bin));
            let mut child = cmd
                .arg(&ini)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return PgBouncer {
                        child,
                        port,
                        _dir: dir,
                    };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.path().join("pgbouncer.log")).unwrap_or_default();
        panic!("pgbouncer did not start:\n{log}");
    }

    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // runuser forwards SIGTERM to pgbouncer.
        unsafe extern "C" {
            fn kill(pid: i32, sig: i32) -> i32;
        }
        // SAFETY: kill(2) on our own child.
        unsafe { kill(self.child.id() as i32, 15) };
        let _ = self.child.wait();
    }
}

/// A TCP server on a free loopback port that accepts every connection, reads what it is sent,
/// and never answers: a store that hangs.
pub struct Silent {
    pub port: u16,
}

impl Silent {
    pub fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut buf = vec![0u8; 64 << 10];
                    while matches!(std::io::Read::read(&mut stream, &mut buf), Ok(n) if n > 0) {}
                });
            }
        });
        Silent { port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A TCP proxy on a free loopback port to `target`, passing what clients send at most
/// `bytes_per_second` per connection (answers pass at full speed): a slow link that keeps
/// moving.
pub struct Throttle {
    pub port: u16,
}

impl Throttle {
    pub fn start(target: u16, bytes_per_second: usize) -> Throttle {
        Throttle::with(target, bytes_per_second, None)
    }

    /// A proxy at full speed that flips one bit of what a client sends at byte `at` of its
    /// connection (inside a large upload's body): bytes that change on the way.
    pub fn tampering(target: u16, at: usize) -> Throttle {
        Throttle::with(target, usize::MAX, Some(at))
    }

    fn with(target: u16, bytes_per_second: usize, tamper_at: Option<usize>) -> Throttle {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut s_read, mut c_write) = (server, client);
                std::thread::spawn(move || {
                    let chunk = 16 << 10;
                    let pause = Duration::from_secs_f64(chunk as f64 / bytes_per_second as f64);
                    let mut buf = vec![0u8; chunk];
                    let mut passed = 0usize;
                    loop {
                        match std::io::Read::read(&mut c_read, &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if let Some(at) = tamper_at {
                                    if (passed..passed + n).contains(&at) {
                                        buf[at - passed] ^= 0x01;
                                    }
                                }
                                passed += n;
                                if s_write.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                std::thread::sleep(pause.mul_f64(n as f64 / chunk as f64));
                            }
                        }
                    }
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_read, &mut c_write);
                    let _ = c_write.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Throttle { port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

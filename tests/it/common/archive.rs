//! A cluster archiving into a store through `dbward wal-push`, for the WAL and
//! point-in-time tests.

use std::path::Path;
use std::process::Command;

use super::{server_dir, Pg};

pub const BIN: &str = env!("CARGO_BIN_EXE_dbward");
/// Names the archive's folder (`app/wal/`); wal-push and wal-fetch never connect to it.
pub const APP: &str = "postgres://postgres@127.0.0.1/app";

/// A store directory the `postgres` user (who runs archive_command) can write.
pub fn store_dir() -> tempfile::TempDir {
    let dir = server_dir("dbward-test-wal-");
    super::give_to_postgres(dir.path());
    dir
}

pub fn store_url(store: &Path) -> String {
    format!("file://{}", store.display())
}

/// dbward with the archive's settings (as root: the test reads and damages the store).
pub fn dbward(store: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.args(["--database", APP, "--store", &store_url(store)])
        .env_remove("DATABASE_URL")
        .env_remove("DBWARD_DATABASE")
        .env_remove("DBWARD_STORE");
    c
}

pub fn wal_command(store: &Path, rest: &str) -> String {
    format!(
        "{BIN} -q --database {APP} --store {} {rest}",
        store_url(store)
    )
}

/// A cluster archiving into `store` through wal-push, with `app.t` holding 1..=1000.
pub fn archiving(store: &Path) -> Pg {
    archiving_with(store, &[])
}

/// The same with more settings (`archive_timeout = 60`, ...).
pub fn archiving_with(store: &Path, conf: &[&str]) -> Pg {
    let archive = format!("archive_command = '{}'", wal_command(store, "wal-push %p"));
    let mut all = vec!["wal_level = replica", "archive_mode = on", &archive];
    all.extend_from_slice(conf);
    let pg = Pg::start_with(&all, None);
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql(
        "app",
        "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000)",
    );
    pg
}

/// Switches to a new segment and waits until the one it closed is in the store; its name.
pub fn switch_and_wait(pg: &Pg, store: &Path) -> String {
    let seg = pg.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    let object = store.join(format!("app/wal/{seg}.zst"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !object.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{seg} never reached the archive; pg_stat_archiver: {}",
            pg.psql(
                "postgres",
                "SELECT failed_count, last_failed_wal FROM pg_stat_archiver"
            )
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    seg
}

/// Starts the cluster in `dir/data` (a base backup) as a copy that recovers through a plain
/// `restore_command` (`dbward wal-fetch` from `store`) to `target` (a `recovery_target...`
/// line), archiving off (a restored copy never pushes into the production archive); returned
/// once it has promoted.
pub fn recover_through_wal_fetch(dir: tempfile::TempDir, store: &Path, target: &str) -> Pg {
    let data = dir.path().join("data");
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.auto.conf"))
        .unwrap();
    std::io::Write::write_all(
        &mut conf,
        format!(
            "\narchive_mode = off\nrestore_command = '{}'\n{target}\nrecovery_target_action = 'promote'\n",
            wal_command(store, "wal-fetch %f %p")
        )
        .as_bytes(),
    )
    .unwrap();
    std::fs::write(data.join("recovery.signal"), "").unwrap();
    let restored = Pg::start_in(dir);
    restored.wait_for("postgres", "SELECT pg_is_in_recovery()", "f");
    restored
}

/// A restored copy's server (`restore --physical --to DIR`), stopped when the test ends (also
/// when it fails).
pub struct Copy {
    pub dir: std::path::PathBuf,
    stop: String,
}

impl Copy {
    /// `sql` in the copy's `app` database, over its socket.
    pub fn psql(&self, sql: &str) -> String {
        super::tool(
            Command::new(super::pg_bindir().join("psql"))
                .arg("-h")
                .arg(&self.dir)
                .args([
                    "-p", "5432", "-U", "postgres", "-X", "-A", "-t", "-c", sql, "app",
                ]),
        )
        .trim()
        .to_string()
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = Command::new("sh").arg("-c").arg(&self.stop).output();
    }
}

/// Runs `restore` (a dbward command up to its restore arguments) with `--json --to dir`: the
/// running copy and the command's stderr, or its exit code and stderr.
pub fn restore_copy(restore: &mut Command, dir: &Path) -> Result<(Copy, String), (i32, String)> {
    let (code, out, err) = super::run(restore.args(["--json", "--to"]).arg(dir));
    if code != 0 {
        return Err((code, err));
    }
    let report = super::json(&out);
    let restored = &report["restored"];
    assert_eq!(restored["data_dir"], dir.to_str().unwrap(), "{report}");
    let copy = Copy {
        dir: dir.to_path_buf(),
        stop: restored["stop_command"].as_str().unwrap().to_string(),
    };
    Ok((copy, err))
}

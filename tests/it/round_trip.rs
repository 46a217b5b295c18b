//! The round trip every kind of snapshot must pass, written once and run per engine: SQLite
//! (the file), PostgreSQL logical (`pg_dump`) and PostgreSQL physical (a base and its WAL).
//!
//! A database whose table `t` holds 1..=1000 is backed up; a row written after the backup is
//! not in what the backup restores; the drill of the backup passes its integrity check; a copy
//! with one byte flipped is refused by the restore (exit 3, naming its checksum) with the live
//! database unchanged and nothing left behind, and fails the drill (exit 1).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::archive::{self, archiving, restore_copy, store_dir, switch_and_wait};
use common::{json, run, sqlite, Pg, Project};

/// What differs between the engines; [`round_trip`] is the rest.
trait Engine {
    /// dbward, configured for this database and store.
    fn dbward(&self) -> Command;
    /// The rows of `t` in the live database.
    fn rows(&self) -> String;
    /// Writes a row after the backup.
    fn write_after(&self);
    /// What `backup` takes (`--physical` for a base).
    fn backup_args(&self) -> &'static [&'static str] {
        &["backup"]
    }
    /// Waits until what the backup needs is stored (a base's WAL in the archive).
    fn settle(&self) {}
    /// Restores snapshot `id` and returns the rows of `t` it holds; `Err` with the exit code
    /// and stderr when refused. A dump or a file replaces the live database.
    fn restore(&self, id: &str) -> Result<String, (i32, String)> {
        let (code, _, err) = run(self.dbward().args(["restore", id, "--yes"]));
        if code != 0 {
            return Err((code, err));
        }
        Ok(self.rows())
    }
    /// The drill's arguments for snapshot `id`.
    fn drill_args(&self, id: &str) -> Vec<String> {
        vec!["restore-drill".into(), id.into()]
    }
    /// Where the store keeps the object `data_key` names.
    fn object(&self, data_key: &str) -> PathBuf;
    /// Nothing of a refused restore is left (a scratch file, database or directory).
    fn nothing_left(&self);
}

fn round_trip(e: &impl Engine) {
    assert_eq!(e.rows(), "1000");
    let (code, out, err) = run(e.dbward().args(["--json"]).args(e.backup_args()));
    assert_eq!(code, 0, "{err}");
    let snapshot = json(&out)["snapshot"].clone();
    let id = snapshot["id"].as_str().unwrap().to_string();
    e.write_after();
    e.settle();
    assert_eq!(e.rows(), "1001");

    // The backup's moment comes back, and nothing after it.
    assert_eq!(e.restore(&id).expect("the restore"), "1000");

    // The drill restores it apart and checks it.
    let (code, out, err) = run(e.dbward().arg("--json").args(e.drill_args(&id)));
    assert_eq!(code, 0, "{err}");
    let report = &json(&out)["report"];
    let integrity = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "integrity")
        .unwrap_or_else(|| panic!("an integrity check: {report}"));
    assert_eq!(integrity["verdict"], "passed", "{report}");

    // One byte flipped in the stored object: refused before anything changes.
    let live = e.rows();
    common::flip_a_byte(&e.object(snapshot["data_key"].as_str().unwrap()));
    let (code, err) = e.restore(&id).expect_err("a damaged snapshot is refused");
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("checksum"), "{err}");
    assert_eq!(e.rows(), live, "the live database is unchanged");
    e.nothing_left();
    let (code, out, err) = run(e.dbward().arg("--json").args(e.drill_args(&id)));
    assert_eq!(code, 1, "{out}{err}");
}

struct Sqlite {
    p: Project,
}

impl Sqlite {
    fn new() -> Sqlite {
        let p = Project::new();
        p.migration("V1__t.sql", "CREATE TABLE t (id INTEGER);\n");
        assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
        let e = Sqlite { p };
        sqlite(
            &e.file(),
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) INSERT INTO t SELECT i FROM n",
        );
        e
    }

    fn file(&self) -> PathBuf {
        self.p.path().join("app.db")
    }
}

impl Engine for Sqlite {
    fn dbward(&self) -> Command {
        self.p.dbward("sqlite:app.db")
    }
    fn rows(&self) -> String {
        sqlite(&self.file(), "SELECT count(*) FROM t")
    }
    fn write_after(&self) {
        sqlite(&self.file(), "INSERT INTO t VALUES (-1)");
    }
    fn object(&self, data_key: &str) -> PathBuf {
        self.p.path().join(".dbward/snapshots").join(data_key)
    }
    fn nothing_left(&self) {
        // The one restore that succeeded kept the file it replaced; the refused one added none.
        let replaced: Vec<String> = std::fs::read_dir(self.p.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.starts_with("app.db.replaced-") && !n.ends_with("-wal") && !n.ends_with("-shm")
            })
            .collect();
        assert_eq!(replaced.len(), 1, "{replaced:?}");
    }
}

struct PgDump {
    pg: Pg,
    url: String,
    p: Project,
}

impl PgDump {
    fn new() -> PgDump {
        let pg = Pg::start();
        let url = pg.create_db("app");
        let p = Project::new();
        p.migration("V1__t.sql", "CREATE TABLE t (id int);\n");
        assert_eq!(run(p.dbward(&url).args(["migrate", "--no-snapshot"])).0, 0);
        pg.psql("app", "INSERT INTO t SELECT generate_series(1, 1000)");
        PgDump { pg, url, p }
    }
}

impl Engine for PgDump {
    fn dbward(&self) -> Command {
        self.p.dbward(&self.url)
    }
    fn rows(&self) -> String {
        self.pg.psql("app", "SELECT count(*) FROM t")
    }
    fn write_after(&self) {
        self.pg.psql("app", "INSERT INTO t VALUES (-1)");
    }
    fn object(&self, data_key: &str) -> PathBuf {
        self.p.path().join(".dbward/snapshots").join(data_key)
    }
    fn nothing_left(&self) {
        // The restore's own database of the refused run is gone; the one restore that
        // succeeded kept the replaced database.
        let names = self.pg.psql(
            "postgres",
            "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database WHERE datname LIKE 'app\\_%'",
        );
        assert_eq!(names.split(',').count(), 1, "{names}");
        assert!(names.contains("replaced"), "{names}");
    }
}

struct PgBase {
    pg: Pg,
    store: tempfile::TempDir,
    copies: tempfile::TempDir,
}

impl PgBase {
    fn new() -> PgBase {
        let store = store_dir();
        let pg = archiving(store.path());
        // A base needs the archive to have begun.
        switch_and_wait(&pg, store.path());
        let copies = common::server_dir("dbward-test-round-trip-");
        common::give_to_postgres(copies.path());
        PgBase { pg, store, copies }
    }
}

impl Engine for PgBase {
    fn dbward(&self) -> Command {
        let mut c = common::dbward(Path::new("/"));
        c.args([
            "--database",
            &self.pg.url("app"),
            "--store",
            &archive::store_url(self.store.path()),
        ]);
        c
    }
    fn rows(&self) -> String {
        self.pg.psql("app", "SELECT count(*) FROM t")
    }
    fn write_after(&self) {
        self.pg.psql("app", "INSERT INTO t VALUES (-1)");
    }
    fn backup_args(&self) -> &'static [&'static str] {
        &["backup", "--physical"]
    }
    fn settle(&self) {
        switch_and_wait(&self.pg, self.store.path());
    }
    fn restore(&self, id: &str) -> Result<String, (i32, String)> {
        let to = self.copies.path().join(format!("copy-{}", fastrand_name()));
        let (copy, _) = restore_copy(self.dbward().args(["restore", "--physical", id]), &to)?;
        Ok(copy.psql("SELECT count(*) FROM t"))
    }
    fn drill_args(&self, id: &str) -> Vec<String> {
        vec!["restore-drill".into(), "--physical".into(), id.into()]
    }
    fn object(&self, data_key: &str) -> PathBuf {
        self.store.path().join(data_key)
    }
    fn nothing_left(&self) {
        // Only the copy of the restore that succeeded (its server stopped with it).
        let left: Vec<_> = std::fs::read_dir(self.copies.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }
}

/// A name no earlier copy of this test has.
fn fastrand_name() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn sqlite_files_make_the_round_trip() {
    round_trip(&Sqlite::new());
}

#[test]
fn postgres_dumps_make_the_round_trip() {
    round_trip(&PgDump::new());
}

#[test]
fn postgres_bases_make_the_round_trip() {
    round_trip(&PgBase::new());
}

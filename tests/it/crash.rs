//! The crash-consistency suite: every named failure point of migrate, backup, restore (both
//! engines), prune and drill (`dbconn::failpoint::ALL`) is driven through an injected error
//! and through `kill -9` at exactly that point, and after each the invariants are checked:
//!
//! - the live database opens, passes its integrity check and holds either the old state or
//!   the new one (PostgreSQL: it accepts connections);
//! - every manifest in the store has its complete data object (no snapshot that looks complete
//!   but is not);
//! - nothing that dbward did not create was deleted (foreign files beside the database and in
//!   the store folder stay);
//! - the next run of the same command succeeds, and leaves no temp files and no leftover
//!   restore database.
//!
//! The tested binary must be built with the `failpoints` feature (scripts/test.sh does).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{json, run, sqlite, Pg, Project};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    Error,
    Kill,
    /// SIGTERM while the process stands at the point, then it goes on: it must stop at its next
    /// chance, undo what is half done and remove its own temp files.
    Term,
}

/// Runs `cmd` with the failure point `point` set to `action`. For `Kill`, waits until the
/// process stands at the point and kills it with SIGKILL.
fn provoke(mut cmd: Command, point: &str, action: Action) {
    let marks = tempfile::tempdir().unwrap();
    cmd.env(
        "DBWARD_FAILPOINTS",
        format!(
            "{point}={}",
            match action {
                Action::Error => "error",
                Action::Kill | Action::Term => "wait",
            }
        ),
    )
    .env("DBWARD_FAILPOINT_DIR", marks.path())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    match action {
        Action::Error => {
            let out = cmd.output().unwrap();
            assert!(
                !out.status.success(),
                "{point}: the injected error must fail the command: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Action::Kill | Action::Term => {
            let mut child = cmd.spawn().unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !marks.path().join(point).exists() {
                if let Some(status) = child.try_wait().unwrap() {
                    let mut err = String::new();
                    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err)
                        .unwrap();
                    panic!(
                        "{point}: the command ended ({status}) before reaching the point:\n{err}"
                    );
                }
                assert!(Instant::now() < deadline, "{point}: never reached");
                std::thread::sleep(Duration::from_millis(5));
            }
            if action == Action::Kill {
                child.kill().unwrap();
            } else {
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                std::fs::write(marks.path().join(format!("{point}.go")), "").unwrap();
            }
            let status = child.wait().unwrap();
            if action == Action::Term {
                // 143: stopped; 0: the command had no later chance to stop (it finished). A
                // drill reports the stop itself (exit 1).
                assert!(
                    matches!(status.code(), Some(143 | 0 | 1)),
                    "{point}: SIGTERM gave {status}"
                );
            }
        }
    }
}

/// Every manifest in `folder` has its data object, complete.
fn manifests_have_their_data(folder: &Path) {
    for e in std::fs::read_dir(folder).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // dbward's manifests only: `<YYYYMMDD>T...json` (a foreign `notes.json` is not one).
        if !name.ends_with(".json")
            || name.ends_with(".drill.json")
            || !name.starts_with(|c: char| c.is_ascii_digit())
        {
            continue;
        }
        let m = json(&std::fs::read_to_string(e.path()).unwrap());
        let data = folder.join(
            Path::new(m["data_key"].as_str().unwrap())
                .file_name()
                .unwrap(),
        );
        let len = std::fs::metadata(&data)
            .unwrap_or_else(|_| panic!("manifest {name} without its data"))
            .len();
        assert_eq!(
            len,
            m["stored_bytes"].as_u64().unwrap(),
            "{name}: data incomplete"
        );
    }
}

/// No temp files of dbward's left under `dir` (run directories, old-style partials).
fn no_temp_files(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(".dbward-run-") && !name.contains(".partial-"),
            "left behind: {}",
            e.path().display()
        );
    }
}

/// A SQLite app: V1 applied, 100 rows, one snapshot of them, 5 rows more since, V2 pending;
/// foreign files beside the database and in the store folder.
struct SqliteApp {
    p: Project,
    foreign: Vec<PathBuf>,
}

impl SqliteApp {
    fn new() -> SqliteApp {
        let p = Project::new();
        p.migration(
            "V1__items.sql",
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n",
        );
        assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
        let db = p.path().join("app.db");
        sqlite(&db, "PRAGMA journal_mode=WAL; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) INSERT INTO items (name) SELECT 'item ' || i FROM n;");
        let (code, _, err) = run(p.dbward("sqlite:app.db").arg("backup"));
        assert_eq!(code, 0, "{err}");
        sqlite(&db, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5) INSERT INTO items (name) SELECT 'later ' || i FROM n;");
        p.migration(
            "V2__note.sql",
            "ALTER TABLE items ADD COLUMN note TEXT;\nUPDATE items SET note = 'n';\n",
        );
        let foreign = vec![
            p.path().join(".dbward-restore-notes"),
            p.path().join("app.db.replaced-by-hand"),
            p.path().join(".dbward/snapshots/app/notes.json"),
            p.path().join(".dbward/snapshots/app/export.sqlite.zst"),
        ];
        for f in &foreign {
            std::fs::write(f, "not dbward's").unwrap();
        }
        SqliteApp { p, foreign }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.p.dbward("sqlite:app.db");
        c.args(args);
        c
    }

    fn check(&self, point: &str) {
        let db = self.p.path().join("app.db");
        assert_eq!(sqlite(&db, "PRAGMA integrity_check"), "ok", "{point}");
        let rows = sqlite(&db, "SELECT count(*) FROM items");
        assert!(
            rows == "100" || rows == "105",
            "{point}: old or new, never partial: {rows}"
        );
        let head = sqlite(&db, "SELECT max(version) FROM refinery_schema_history");
        let note = sqlite(
            &db,
            "SELECT count(*) FROM pragma_table_info('items') WHERE name = 'note'",
        );
        assert_eq!(
            head == "2",
            note == "1",
            "{point}: history and schema agree"
        );
        manifests_have_their_data(&self.p.path().join(".dbward/snapshots/app"));
        for f in &self.foreign {
            assert!(f.exists(), "{point}: {} was deleted", f.display());
        }
    }

    fn clean(&self, point: &str) {
        for dir in [
            self.p.path().to_path_buf(),
            self.p.path().join(".dbward/tmp"),
            self.p.path().join(".dbward/snapshots/app"),
        ] {
            no_temp_files(&dir);
        }
        let _ = point;
    }
}

/// The command that meets `point` on SQLite (None: the point is PostgreSQL's).
fn sqlite_command(point: &str) -> Option<Vec<&'static str>> {
    Some(match point {
        // Met only by a non-transactional file: tests/it/no_transaction.rs drives them.
        p if p.starts_with("migrate-statement-") => return None,
        p if p.starts_with("migrate-") => vec!["migrate"],
        p if p.starts_with("backup-") => vec!["backup"],
        p if p.starts_with("restore-pg-") => return None,
        // The guard's rewind of a PostgreSQL cluster: tests/rewind.rs drives its points.
        p if p.starts_with("rewind-") => return None,
        // Met only when the database is missing: driven by its own test below.
        "restore-sqlite-after-side-files" => return None,
        p if p.starts_with("restore-") => vec!["restore", "latest", "--yes", "--force"],
        "prune-after-manifest-delete" => vec!["prune"],
        "drill-after-restore" => vec!["restore-drill", "latest"],
        other => panic!("no command for {other}"),
    })
}

#[test]
fn the_tested_binary_has_failure_points() {
    let p = Project::new();
    p.migration("V1__a.sql", "CREATE TABLE a (id INTEGER);\n");
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .arg("migrate")
        .env("DBWARD_FAILPOINTS", "migrate-after-lock=error"));
    assert!(
        code == 1 && err.contains("injected failure"),
        "build the tested binary with `--features failpoints` (scripts/test.sh does): exit {code}, {err}"
    );
}

#[test]
fn sqlite_every_failure_point_by_error_kill_9_and_sigterm() {
    for point in dbconn::failpoint::ALL {
        let Some(args) = sqlite_command(point) else {
            continue;
        };
        for action in [Action::Error, Action::Kill, Action::Term] {
            let app = SqliteApp::new();
            if *point == "prune-after-manifest-delete" {
                // Two snapshots, so that keep_last = 1 removes one.
                assert_eq!(run(&mut app.cmd(&["backup"])).0, 0);
                std::fs::write(
                    app.p.path().join("dbward.toml"),
                    "[retention]\nkeep_last = 1\n",
                )
                .unwrap();
            }
            provoke(app.cmd(&args), point, action);
            let at = format!("{point} ({action:?})");
            app.check(&at);
            if action != Action::Kill {
                // Stopped by an error or a signal, a run removes its own temp files itself.
                app.clean(&at);
            }
            // The next run of the same command succeeds and leaves nothing behind.
            let (code, _, err) = run(&mut app.cmd(&args));
            assert_eq!(code, 0, "{at}: the next run: {err}");
            app.check(&at);
            app.clean(&at);
        }
    }
}

/// A PostgreSQL `shop`: V1 applied, 100 rows, one snapshot, 5 rows more, V2 pending.
fn pg_app(pg: &Pg, p: &Project) -> String {
    let url = pg.create_db("shop");
    p.migration(
        "V1__schema.sql",
        "CREATE TABLE accounts (id serial PRIMARY KEY, note text);\n",
    );
    assert_eq!(run(p.dbward(&url).args(["migrate", "--no-snapshot"])).0, 0);
    pg.psql(
        "shop",
        "INSERT INTO accounts (note) SELECT 'a' FROM generate_series(1, 100)",
    );
    let (code, _, err) = run(p.dbward(&url).arg("backup"));
    assert_eq!(code, 0, "{err}");
    pg.psql(
        "shop",
        "INSERT INTO accounts (note) SELECT 'b' FROM generate_series(1, 5)",
    );
    p.migration(
        "V2__extra.sql",
        "ALTER TABLE accounts ADD COLUMN extra int;\n",
    );
    url
}

fn pg_check(pg: &Pg, p: &Project, at: &str) {
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT datallowconn FROM pg_database WHERE datname = 'shop'"
        ),
        "t",
        "{at}"
    );
    let rows = pg.psql("shop", "SELECT count(*) FROM accounts");
    assert!(rows == "100" || rows == "105", "{at}: {rows}");
    let head = pg.psql("shop", "SELECT max(version) FROM refinery_schema_history");
    let extra = pg.psql(
        "shop",
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'accounts' AND column_name = 'extra'",
    );
    assert_eq!(head == "2", extra == "1", "{at}: history and schema agree");
    manifests_have_their_data(&p.path().join(".dbward/snapshots/shop"));
}

// One test per way of stopping (each with its own server), so the three run side by side.
#[test]
fn postgres_every_failure_point_by_error() {
    postgres_every_failure_point(Action::Error);
}

#[test]
fn postgres_every_failure_point_by_kill_9() {
    postgres_every_failure_point(Action::Kill);
}

#[test]
fn postgres_every_failure_point_by_sigterm() {
    postgres_every_failure_point(Action::Term);
}

fn postgres_every_failure_point(action: Action) {
    let pg = Pg::start();
    for point in dbconn::failpoint::ALL {
        let args: Vec<&str> = match *point {
            p if p.starts_with("migrate-statement-") => continue,
            p if p.starts_with("migrate-") => vec!["migrate"],
            p if p.starts_with("backup-") => vec!["backup"],
            // A PostgreSQL restore streams the archive into pg_restore: nothing is decompressed
            // to a file.
            p if p.starts_with("restore-sqlite-") || p == "restore-after-decompress" => continue,
            p if p.starts_with("restore-") => {
                vec!["restore", "latest", "--yes", "--terminate-connections"]
            }
            "drill-after-restore" => vec!["restore-drill", "latest"],
            _ => continue, // prune is the same code for both engines
        };
        let p = Project::new();
        let url = pg_app(&pg, &p);
        let at = format!("{point} ({action:?})");
        let mut cmd = p.dbward(&url);
        cmd.args(&args);
        provoke(cmd, point, action);
        pg_check(&pg, &p, &at);
        if action != Action::Kill {
            no_temp_files(&p.path().join(".dbward/tmp"));
            no_temp_files(&p.path().join(".dbward/snapshots/shop"));
            // Trust round 3, defect 12: a stopped restore drops its half-filled database
            // before it exits (not only the next restore).
            assert_eq!(
                pg.psql(
                    "postgres",
                    "SELECT count(*) FROM pg_database WHERE shobj_description(oid, 'pg_database') LIKE 'dbward:%'"
                ),
                "0",
                "{at}: no marked database left by the stopped run"
            );
        }
        let (code, _, err) = run(p.dbward(&url).args(&args));
        assert_eq!(code, 0, "{at}: the next run: {err}");
        pg_check(&pg, &p, &at);
        no_temp_files(&p.path().join(".dbward/tmp"));
        no_temp_files(&p.path().join(".dbward/snapshots/shop"));
        assert_eq!(
            pg.psql(
                "postgres",
                "SELECT count(*) FROM pg_database WHERE shobj_description(oid, 'pg_database') LIKE 'dbward:%'"
            ),
            "0",
            "{at}: no marked leftover after the next run"
        );
        // Each round starts from a fresh `shop`.
        let dbs = pg.psql(
            "postgres",
            "SELECT string_agg(datname, ' ') FROM pg_database WHERE datname LIKE 'shop%'",
        );
        for db in dbs.split_whitespace() {
            pg.psql("postgres", &format!("DROP DATABASE \"{db}\" WITH (FORCE)"));
        }
    }
}

/// Trust defect 12: `restore --force` on a WAL database moved the `-wal` aside before linking
/// the live file aside; killed in between, the committed WAL belonged to no database file.
/// Now, killed at either step, the committed rows are all in one place: the live path (before
/// the WAL moved) or the kept copy with its WAL (after).
#[test]
fn a_forced_restore_of_a_wal_database_killed_between_its_steps_loses_no_commit() {
    for (point, where_all_rows_are) in [
        ("restore-sqlite-after-link", "live"),
        ("restore-sqlite-after-wal-moved", "kept"),
    ] {
        let app = SqliteApp::new();
        let db = app.p.path().join("app.db");
        // An application holds the database open, with commits still in the WAL.
        let mut holder = Command::new("sqlite3")
            .arg(&db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::{BufRead, Write};
            let stdin = holder.stdin.as_mut().unwrap();
            writeln!(stdin, "PRAGMA wal_autocheckpoint=0; INSERT INTO items (name) VALUES ('in the wal'); SELECT count(*) FROM items;").unwrap();
            // `PRAGMA wal_autocheckpoint` answers first, then the count.
            let mut out = std::io::BufReader::new(holder.stdout.as_mut().unwrap());
            let mut line = String::new();
            for _ in 0..2 {
                line.clear();
                out.read_line(&mut line).unwrap();
            }
            assert_eq!(line.trim(), "106");
        }
        provoke(
            app.cmd(&["restore", "latest", "--yes", "--force"]),
            point,
            Action::Kill,
        );
        let _ = holder.kill();
        let _ = holder.wait();
        let kept: Vec<PathBuf> = std::fs::read_dir(app.p.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                n.starts_with("app.db.replaced-2") && !n.ends_with("-wal") && !n.ends_with("-shm")
            })
            .collect();
        assert_eq!(kept.len(), 1, "{point}: {kept:?}");
        let target = if where_all_rows_are == "live" {
            db.clone()
        } else {
            kept[0].clone()
        };
        assert_eq!(sqlite(&target, "PRAGMA integrity_check"), "ok", "{point}");
        assert_eq!(
            sqlite(&target, "SELECT count(*) FROM items"),
            "106",
            "{point}: every commit, the WAL's included, is in the {where_all_rows_are} database"
        );
        assert_eq!(
            sqlite(&db, "PRAGMA integrity_check"),
            "ok",
            "{point}: the live path opens"
        );
    }
}

/// Runs `cmd` until it stands at failure point `point`, calls `meanwhile`, lets it go on, and
/// returns its exit code and stderr.
fn meanwhile_at(mut cmd: Command, point: &str, meanwhile: impl FnOnce()) -> (i32, String) {
    let marks = tempfile::tempdir().unwrap();
    cmd.env("DBWARD_FAILPOINTS", format!("{point}=wait"))
        .env("DBWARD_FAILPOINT_DIR", marks.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marks.path().join(point).exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{point}: the command ended before reaching the point"
        );
        assert!(Instant::now() < deadline, "{point}: never reached");
        std::thread::sleep(Duration::from_millis(5));
    }
    meanwhile();
    std::fs::write(marks.path().join(format!("{point}.go")), "").unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Trust round 3, defect 3: `restore latest --if-missing` looked at "missing" before the
/// download only, so an application that created its database meanwhile had it replaced. Now
/// the last look is right before the swap, and the swap of a missing database never renames
/// over a file (RENAME_NOREPLACE): at either point, the application's new database stays as it
/// is, nothing is kept aside, and the command says nothing was restored.
#[test]
fn a_database_created_while_the_snapshot_is_fetched_is_never_restored_over() {
    for point in [
        "restore-after-decompress",
        "restore-sqlite-after-side-files",
    ] {
        let app = SqliteApp::new();
        let db = app.p.path().join("app.db");
        std::fs::remove_file(&db).unwrap();
        let _ = std::fs::remove_file(app.p.path().join("app.db-wal"));
        let _ = std::fs::remove_file(app.p.path().join("app.db-shm"));
        let (code, err) = meanwhile_at(
            app.cmd(&["restore", "latest", "--if-missing"]),
            point,
            || {
                sqlite(
                    &db,
                    "CREATE TABLE fresh (x); INSERT INTO fresh VALUES ('the app wrote this');",
                );
            },
        );
        assert_eq!(code, 0, "{point}: {err}");
        assert!(err.contains("nothing restored"), "{point}: {err}");
        assert_eq!(
            sqlite(&db, "SELECT x FROM fresh"),
            "the app wrote this",
            "{point}"
        );
        assert_eq!(
            sqlite(
                &db,
                "SELECT count(*) FROM sqlite_master WHERE name = 'items'"
            ),
            "0",
            "{point}: the snapshot did not land"
        );
        let kept: Vec<_> = std::fs::read_dir(app.p.path())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("app.db.replaced-2")
            })
            .collect();
        assert!(kept.is_empty(), "{point}: {kept:?}");
        no_temp_files(app.p.path());
    }
}

/// A restore of a missing database beside a stale WAL, killed once the WAL is moved aside and
/// before the snapshot took the name: the database is still missing (nothing half there), the
/// stale WAL is kept, and the next run restores.
#[test]
fn a_restore_of_a_missing_database_killed_after_its_side_files_moved_is_still_missing() {
    for action in [Action::Error, Action::Kill, Action::Term] {
        let app = SqliteApp::new();
        let db = app.p.path().join("app.db");
        std::fs::remove_file(&db).unwrap();
        let wal = app.p.path().join("app.db-wal");
        std::fs::write(&wal, "a WAL left by the lost database").unwrap();
        provoke(
            app.cmd(&["restore", "latest", "--yes"]),
            "restore-sqlite-after-side-files",
            action,
        );
        let at = format!("{action:?}");
        // A stop request waits for the next await, which comes after the swap: then the
        // restore is whole.
        if action == Action::Term && db.exists() {
            assert_eq!(sqlite(&db, "SELECT count(*) FROM items"), "100", "{at}");
        }
        assert!(action == Action::Term || !db.exists(), "{at}");
        assert!(!wal.exists(), "{at}");
        let kept: Vec<_> = std::fs::read_dir(app.p.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with("-wal"))
            .collect();
        assert_eq!(kept.len(), 1, "{at}: {kept:?}");
        assert_eq!(
            std::fs::read_to_string(&kept[0]).unwrap(),
            "a WAL left by the lost database"
        );
        let (code, _, err) = run(&mut app.cmd(&["restore", "latest", "--yes"]));
        assert_eq!(code, 0, "{at}: {err}");
        assert_eq!(sqlite(&db, "SELECT count(*) FROM items"), "100", "{at}");
        app.clean(&at);
    }
}

/// The same on PostgreSQL: the database created (with a table) while pg_restore ran is left as
/// it is, and the restore's own database is dropped.
#[test]
fn a_postgres_database_created_while_the_snapshot_is_restored_is_never_restored_over() {
    let pg = Pg::start();
    let p = Project::new();
    let url = pg_app(&pg, &p);
    pg.psql("postgres", "DROP DATABASE shop WITH (FORCE)");
    let (code, err) = meanwhile_at(
        {
            let mut c = p.dbward(&url);
            c.args(["restore", "latest", "--if-missing"]);
            c
        },
        "restore-pg-after-pg-restore",
        || {
            pg.psql("postgres", "CREATE DATABASE shop");
            pg.psql(
                "shop",
                "CREATE TABLE fresh (x text); INSERT INTO fresh VALUES ('the app wrote this')",
            );
        },
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("nothing restored"), "{err}");
    assert_eq!(pg.psql("shop", "SELECT x FROM fresh"), "the app wrote this");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT string_agg(datname, ' ') FROM pg_database WHERE datname LIKE 'shop_%'"
        ),
        "",
        "no restore or replaced database left"
    );
}

/// Trust round 3, defect 4: the guard records the batch as rolled back only once its undo
/// succeeded. Killed (or stopped) in the middle of the undo, it leaves a record of an undo
/// that did not finish: `migrate` refuses (and records nothing that would hide the deploy),
/// and the next guard retries the undo at once, also when the application answers healthy.
#[test]
fn a_guard_killed_while_undoing_leaves_an_unfinished_undo_that_the_next_guard_finishes() {
    for action in [Action::Kill, Action::Error] {
        let app = SqliteApp::new();
        let db = app.p.path().join("app.db");
        assert_eq!(run(&mut app.cmd(&["migrate"])).0, 0);
        let server = common::Http::status(503);
        let url = server.url();
        let guard = |extra: &[&str]| {
            let mut c = app.cmd(&["health", "--restore-on-failure", "--timeout", "1s", "--url"]);
            c.arg(&url).args(extra);
            c
        };
        provoke(guard(&[]), "restore-after-decompress", action);
        let at = format!("{action:?}");
        assert_eq!(
            sqlite(&db, "SELECT max(version) FROM refinery_schema_history"),
            "2",
            "{at}: the batch is still applied"
        );
        let (code, _, err) = run(&mut app.cmd(&["migrate"]));
        assert_eq!(code, 3, "{at}: {err}");
        assert!(err.contains("could not undo it"), "{at}: {err}");
        let healthy = common::Http::status(200);
        let (code, _, err) = run(&mut app.cmd(&[
            "health",
            "--restore-on-failure",
            "--timeout",
            "1s",
            "--url",
            &healthy.url(),
        ]));
        assert_eq!(code, 5, "{at}: {err}");
        assert_eq!(
            sqlite(&db, "SELECT max(version) FROM refinery_schema_history"),
            "1",
            "{at}"
        );
        app.check(&at);
    }
}

/// The same guard killed once the restored file is in place, before its success is recorded:
/// the undo did finish. The next `health --restore-on-failure` finds the batch no longer
/// applied and records the undo as done (it does not retry it, nor fail on a head it no longer
/// recognizes), and `migrate` then refuses the rolled-back batch like any other.
#[test]
fn a_guard_killed_after_its_swap_is_settled_by_the_next_guard_without_a_retry() {
    let app = SqliteApp::new();
    let db = app.p.path().join("app.db");
    assert_eq!(run(&mut app.cmd(&["migrate"])).0, 0);
    let server = common::Http::status(503);
    let mut guard = app.cmd(&["health", "--restore-on-failure", "--timeout", "1s", "--url"]);
    guard.arg(server.url());
    provoke(guard, "restore-sqlite-after-swap", Action::Kill);
    assert_eq!(
        sqlite(&db, "SELECT max(version) FROM refinery_schema_history"),
        "1",
        "the swap happened"
    );
    let healthy = common::Http::status(200);
    let (code, _, err) = run(&mut app.cmd(&[
        "health",
        "--restore-on-failure",
        "--timeout",
        "1s",
        "--url",
        &healthy.url(),
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("recording it as rolled back"), "{err}");
    let (code, _, err) = run(&mut app.cmd(&["migrate"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("rolled back by the health guard"), "{err}");
    app.check("after the swap");
}

/// Review of round 3: an application that opened (so created) the database while the snapshot
/// was fetched holds a file that still counts as missing (empty): it is the application's, and
/// `--if-missing` leaves it alone rather than swap a file in under it.
#[test]
fn a_database_an_application_opened_meanwhile_is_never_restored_over() {
    let app = SqliteApp::new();
    let db = app.p.path().join("app.db");
    std::fs::remove_file(&db).unwrap();
    let _ = std::fs::remove_file(app.p.path().join("app.db-wal"));
    let _ = std::fs::remove_file(app.p.path().join("app.db-shm"));
    let mut holder = None;
    let (code, err) = meanwhile_at(
        app.cmd(&["restore", "latest", "--if-missing"]),
        "restore-after-decompress",
        || {
            let mut child = Command::new("python3")
                .arg("-c")
                .arg("import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); c.execute('PRAGMA user_version').fetchone(); print('open', flush=True); time.sleep(120)")
                .arg(&db)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
                &mut line,
            )
            .unwrap();
            assert_eq!(line.trim(), "open");
            holder = Some(child);
        },
    );
    let mut holder = holder.unwrap();
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("nothing restored"), "{err}");
    assert_eq!(
        std::fs::metadata(&db).unwrap().len(),
        0,
        "left as the app made it"
    );
    let kept: Vec<_> = std::fs::read_dir(app.p.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("app.db.replaced-2")
        })
        .collect();
    assert!(kept.is_empty(), "{kept:?}");
}

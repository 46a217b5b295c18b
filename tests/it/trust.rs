//! Regression tests for the trust issue: each test reproduces one way dbward could destroy or
//! lock away data it did not own, and asserts that it no longer does. Real SQLite files, real
//! PostgreSQL clusters, the real binary.

use crate::common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use common::{json, run, sqlite, Pg, Project};

fn app(p: &Project) -> PathBuf {
    p.path().join("app.db")
}

/// A migrated SQLite app with `rows` rows and one snapshot of that state; returns its id.
fn sqlite_app(p: &Project, rows: u32) -> String {
    p.migration(
        "V1__items.sql",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n",
    );
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    sqlite(&app(p), &format!("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) INSERT INTO items (name) SELECT 'item ' || i FROM n;"));
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["backup", "--json"]));
    assert_eq!(code, 0, "{err}");
    json(&out)["snapshot"]["id"].as_str().unwrap().to_string()
}

/// The uid and gid of the `postgres` system user (scripts/test.sh creates it): a user other
/// than the one running the tests (root in CI) for ownership checks.
fn other_user() -> (u32, u32) {
    let out = common::tool(std::process::Command::new("id").args(["-u", "postgres"]));
    let uid: u32 = out.parse().unwrap();
    let gid: u32 = common::tool(std::process::Command::new("id").args(["-g", "postgres"]))
        .parse()
        .unwrap();
    (uid, gid)
}

fn owner_and_mode(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// Defect 1: a restore by root gave the app's database root's owner and mode 0600.
#[test]
fn d01_sqlite_restore_keeps_the_owner_and_mode_of_the_file_it_replaces() {
    let p = Project::new();
    sqlite_app(&p, 10);
    let (uid, gid) = other_user();
    std::os::unix::fs::chown(app(&p), Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(app(&p), std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["restore", "latest", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(owner_and_mode(&app(&p)), (uid, gid, 0o640));

    // A new file (`--to`) gets the umask's mode, as any file this user creates.
    let mut c = p.dbward("sqlite:app.db");
    c.args(["restore", "latest", "--yes", "--to", "copy.db"]);
    // SAFETY: umask is async-signal-safe and touches nothing else.
    unsafe {
        c.pre_exec(|| {
            libc::umask(0o027);
            Ok(())
        });
    }
    let (code, _, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    let (_, _, mode) = owner_and_mode(&p.path().join("copy.db"));
    assert_eq!(mode, 0o640, "0666 under umask 027");
}

fn store_dir(p: &Project) -> PathBuf {
    p.path().join(".dbward/snapshots/app")
}

fn backdate(path: &Path) {
    common::tool(
        std::process::Command::new("touch")
            .args(["-d", "2 days ago"])
            .arg(path),
    );
}

/// Defect 4: one unreadable or foreign `.json` in the database's folder made every listing,
/// restore, drill and prune fail.
#[test]
fn d04_a_damaged_or_foreign_manifest_is_skipped_and_every_other_snapshot_stays_usable() {
    let p = Project::new();
    let first = sqlite_app(&p, 20);
    let dir = store_dir(&p);
    std::fs::write(dir.join("notes.json"), "remember to rotate the keys").unwrap();
    std::fs::write(dir.join("20261122T093000Z-manual-0bad.json"), "{\"id\": 4").unwrap();

    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["snapshots", "--json"]));
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    assert_eq!(doc["snapshots"].as_array().unwrap().len(), 1);
    let damaged: Vec<&str> = doc["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["key"].as_str().unwrap())
        .collect();
    assert_eq!(damaged.len(), 2, "{damaged:?}");
    let (code, out, _) = run(p.dbward("sqlite:app.db").arg("snapshots"));
    assert_eq!(code, 0);
    assert!(
        out.contains("DAMAGED") && out.contains("notes.json"),
        "{out}"
    );

    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["restore", "latest", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("notes.json"), "the warning names it: {err}");
    let (code, _, err) =
        run(p
            .dbward("sqlite:app.db")
            .args(["restore", "20261122T093000Z-manual-0bad", "--yes"]));
    assert_eq!(code, 3, "a damaged snapshot is refused by name: {err}");
    assert!(err.contains("damaged"), "{err}");
    let (code, out, err) =
        run(p
            .dbward("sqlite:app.db")
            .args(["restore-drill", "latest", "--json"]));
    assert_eq!(code, 0, "{err}{out}");
    std::fs::write(p.path().join("dbward.toml"), "[retention]\nkeep_last = 1\n").unwrap();
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("backup"));
    assert_eq!(code, 0, "backup and its retention: {err}");
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("backup"));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("prune"));
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = run(p.dbward("sqlite:app.db").args(["snapshots", "--json"]));
    let left = json(&out)["snapshots"].as_array().unwrap().len();
    assert_eq!(
        left, 2,
        "retention still works: the newest and the drilled one"
    );
    assert!(
        dir.join(format!("{first}.json")).exists(),
        "the drilled one is kept"
    );
    assert!(
        dir.join("notes.json").exists(),
        "and never touches what is not its own"
    );
}

/// Defect 7: prune deleted any old `*.zst` in the folder, and followed a manifest's data key
/// outside the store.
#[test]
fn d07_prune_deletes_only_dbwards_own_names_inside_the_databases_folder() {
    let p = Project::new();
    sqlite_app(&p, 5);
    let dir = store_dir(&p);
    let export = dir.join("customer-export-2024.csv.zst");
    std::fs::write(&export, "precious").unwrap();
    let victim = p.path().join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    // A manifest with dbward's form of id, pointing its data key out of the store.
    let (_, out, _) = run(p.dbward("sqlite:app.db").args(["snapshots", "--json"]));
    let mut hostile = json(&out)["snapshots"][0].clone();
    hostile["id"] = "20200101T000000Z-manual-beef".into();
    hostile["created_at"] = "2020-01-01T00:00:00Z".into();
    for key in ["../../victim.txt", &victim.display().to_string()] {
        hostile["data_key"] = key.into();
        std::fs::write(
            dir.join("20200101T000000Z-manual-beef.json"),
            hostile.to_string(),
        )
        .unwrap();
        for f in [&export, &dir.join("20200101T000000Z-manual-beef.json")] {
            backdate(f);
        }
        std::fs::write(p.path().join("dbward.toml"), "[retention]\nkeep_last = 1\n").unwrap();
        let (code, out, err) = run(p.dbward("sqlite:app.db").args(["backup", "--json"]));
        assert_eq!(code, 0, "{err}");
        let (code, _, err) = run(p.dbward("sqlite:app.db").arg("prune"));
        assert_eq!(code, 0, "{err}");
        assert!(
            victim.exists(),
            "a file outside the store is never deleted ({key}): {out}"
        );
        assert!(
            export.exists(),
            "a foreign .zst in the folder is never deleted"
        );
        let (_, out, _) = run(p.dbward("sqlite:app.db").args(["snapshots", "--json"]));
        assert!(
            out.contains("is not `app/20200101T000000Z-manual-beef.sqlite.zst`"),
            "the hostile manifest is shown as damaged: {out}"
        );
    }

    // The file system's root is never a store.
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["--store", "file:///", "snapshots"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("root"), "{err}");
}

/// Defect 13 (in part): a manifest whose data object is gone is a damaged snapshot (exit 3),
/// not a raw ENOENT (exit 1).
#[test]
fn d13_a_snapshot_whose_data_is_gone_is_refused_as_damaged() {
    let p = Project::new();
    let id = sqlite_app(&p, 5);
    std::fs::remove_file(store_dir(&p).join(format!("{id}.sqlite.zst"))).unwrap();
    let (code, _, err) = run(p.dbward("sqlite:app.db").args(["restore", &id, "--yes"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("damaged") && err.contains("missing"), "{err}");
}

const PG_SCHEMA: &str = "CREATE TABLE accounts (id serial PRIMARY KEY, note text NOT NULL DEFAULT md5(random()::text));\n";

/// A migrated PostgreSQL database `db` with `rows` rows and one snapshot; returns (URL, id).
fn pg_app(pg: &Pg, p: &Project, db: &str, rows: u32) -> (String, String) {
    let url = pg.create_db(db);
    p.migration("V1__schema.sql", PG_SCHEMA);
    let (code, _, err) = run(p.dbward(&url).args(["migrate", "--no-snapshot"]));
    assert_eq!(code, 0, "{err}");
    pg.psql(
        db,
        &format!("INSERT INTO accounts SELECT FROM generate_series(1, {rows})"),
    );
    let (code, out, err) = run(p.dbward(&url).args(["backup", "--json"]));
    assert_eq!(code, 0, "{err}");
    let id = json(&out)["snapshot"]["id"].as_str().unwrap().to_string();
    (url, id)
}

fn databases(pg: &Pg) -> Vec<String> {
    pg.psql("postgres", "SELECT datname FROM pg_database ORDER BY 1")
        .lines()
        .map(str::to_string)
        .collect()
}

/// Defect 2: leftover cleanup dropped every database matching `<db>_restore_%` (with `_` a
/// wildcard), including ones the user made and ones restored with `--to`.
#[test]
fn d02_postgres_restore_drops_only_the_leftovers_it_marked_as_its_own() {
    let pg = Pg::start();
    let p = Project::new();
    let (url, id) = pg_app(&pg, &p, "my_app", 300_000);
    for name in [
        "myxapp_restore_keep",
        "my_app_restore_inspect",
        "my_app_restore_20260101t000000z",
    ] {
        pg.psql("postgres", &format!("CREATE DATABASE {name}"));
    }
    let to = pg.url("my_app_restore_copy");
    let (code, _, err) = run(p.dbward(&url).args(["restore", &id, "--yes", "--to", &to]));
    assert_eq!(code, 0, "{err}");

    // A restore killed outright leaves its scratch database behind...
    let mut child = p
        .dbward(&url)
        .args(["restore", &id, "--yes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let leftover = loop {
        let found = pg.psql(
            "postgres",
            "SELECT datname FROM pg_database WHERE shobj_description(oid, 'pg_database') LIKE 'dbward: restore in progress%'",
        );
        if !found.is_empty() {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no restore database appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(databases(&pg).contains(&leftover), "{leftover}");

    // ... which the next restore drops, and nothing else.
    let (code, _, err) = run(p.dbward(&url).args(["restore", &id, "--yes"]));
    assert_eq!(code, 0, "{err}");
    let after = databases(&pg);
    assert!(!after.contains(&leftover), "{after:?}");
    for kept in [
        "myxapp_restore_keep",
        "my_app_restore_inspect",
        "my_app_restore_20260101t000000z",
        "my_app_restore_copy",
    ] {
        assert!(
            after.iter().any(|d| d == kept),
            "{kept} was dropped: {after:?}"
        );
    }
    assert_eq!(pg.psql("my_app", "SELECT count(*) FROM accounts"), "300000");
    assert_eq!(
        pg.psql("my_app_restore_copy", "SELECT count(*) FROM accounts"),
        "300000"
    );
}

/// Defects 3 and 10: a restore by a role that may not end other roles' sessions saw none of
/// them (so ended none), and a restore killed while sessions were being ended left the live
/// database refusing every connection.
#[test]
fn d03_d10_sessions_of_other_roles_are_counted_and_a_killed_swap_leaves_the_database_open() {
    let pg = Pg::start();
    pg.psql(
        "postgres",
        "CREATE ROLE owner LOGIN CREATEDB; CREATE ROLE clerk LOGIN",
    );
    pg.psql("postgres", "CREATE DATABASE shop OWNER owner");
    let p = Project::new();
    p.migration("V1__schema.sql", PG_SCHEMA);
    let url = pg.url_as("owner", "shop");
    let (code, _, err) = run(p.dbward(&url).args(["migrate", "--no-snapshot"]));
    assert_eq!(code, 0, "{err}");
    pg.psql(
        "shop",
        "INSERT INTO accounts SELECT FROM generate_series(1, 10)",
    );
    let (code, out, err) = run(p.dbward(&url).args(["backup", "--json"]));
    assert_eq!(code, 0, "{err}");
    let id = json(&out)["snapshot"]["id"].as_str().unwrap().to_string();
    pg.psql("shop", "INSERT INTO accounts DEFAULT VALUES");

    // The clerk's session: `owner` sees it only as another role's.
    let mut clerk = pg.session_as("shop", "clerk");
    pg.wait_for(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop' AND usename = 'clerk'",
        "1",
    );
    let (code, _, err) = run(p.dbward(&url).args(["restore", &id, "--yes"]));
    assert_eq!(code, 3, "the clerk's session is counted: {err}");
    assert!(err.contains("1 session(s) are connected to shop"), "{err}");

    // Killed while waiting for a session it may not end: the database still takes connections.
    let mut child = p
        .dbward(&url)
        .args(["restore", &id, "--yes", "--terminate-connections"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    pg.wait_for(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'BEGIN; ALTER DATABASE%'",
        "1",
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT datallowconn FROM pg_database WHERE datname = 'shop'"
        ),
        "t"
    );
    assert_eq!(
        pg.psql("shop", "SELECT count(*) FROM accounts"),
        "11",
        "unchanged"
    );

    // Not killed: it fails, naming the session it could not end and the privilege it lacks.
    let (code, _, err) =
        run(p
            .dbward(&url)
            .args(["restore", &id, "--yes", "--terminate-connections"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("could not be ended") && err.contains("pg_signal_backend"),
        "{err}"
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT datallowconn FROM pg_database WHERE datname = 'shop'"
        ),
        "t"
    );
    assert_eq!(
        pg.psql("shop", "SELECT count(*) FROM accounts"),
        "11",
        "unchanged"
    );

    // With the privilege, the session is ended and the restore goes through.
    pg.psql("postgres", "GRANT pg_signal_backend TO owner");
    let (code, out, err) =
        run(p
            .dbward(&url)
            .args(["restore", &id, "--yes", "--terminate-connections", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&out)["terminated"].as_array().unwrap().len(),
        1,
        "{out}"
    );
    assert_eq!(pg.psql("shop", "SELECT count(*) FROM accounts"), "10");
    let _ = clerk.kill();
    let _ = clerk.wait();
}

/// Defect 5: a password holding `/` or `?` reached log lines, `status`, `--json` and the deploy
/// record; child processes inherited the store's secret key.
#[test]
fn d05_passwords_with_url_characters_never_leak_and_children_get_no_store_secrets() {
    let pg = Pg::start();
    pg.psql(
        "postgres",
        "CREATE ROLE gen LOGIN SUPERUSER PASSWORD 'Pa/ss?w@rd'",
    );
    pg.psql("postgres", "CREATE DATABASE shop OWNER gen");
    let url = format!(
        "postgres://gen:Pa/ss?w@rd@127.0.0.1:{}/shop?sslmode=disable",
        pg.port
    );
    let p = Project::new();
    p.migration("V1__schema.sql", PG_SCHEMA);
    // A pg_dump that records the environment it was given.
    let bin = p.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let env_file = p.path().join("pg_dump.env");
    std::fs::write(
        bin.join("pg_dump"),
        format!(
            "#!/bin/sh\nenv > '{}'\nexec '{}' \"$@\"\n",
            env_file.display(),
            common::pg_bindir().join("pg_dump").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        bin.join("pg_dump"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mut outputs = String::new();
    for args in [
        vec!["migrate", "--no-snapshot"],
        vec!["-v", "backup"],
        vec!["backup", "--json"],
        vec!["status"],
        vec!["status", "--json"],
        vec!["snapshots", "--json"],
        vec!["migrate", "--json"],
    ] {
        let (code, out, err) = run(p
            .dbward(&url)
            .args(&args)
            .env("PATH", &path)
            .env("AWS_SECRET_ACCESS_KEY", "do-not-pass-me"));
        assert_eq!(code, 0, "{args:?}: {err}");
        outputs.push_str(&out);
        outputs.push_str(&err);
    }
    for dir in [p.path().join(".dbward")] {
        for e in walk(&dir) {
            outputs.push_str(&String::from_utf8_lossy(&std::fs::read(e).unwrap()));
        }
    }
    assert!(outputs.contains("gen:***@127.0.0.1"), "{outputs}");
    for secret in ["Pa/ss", "w@rd", "ss?w"] {
        assert!(!outputs.contains(secret), "{secret} leaked:\n{outputs}");
    }
    let env = std::fs::read_to_string(&env_file).expect("the wrapper ran");
    assert!(!env.contains("do-not-pass-me"), "{env}");
    assert!(
        !env.contains("Pa/ss") || env.contains("PGPASSWORD=Pa/ss?w@rd"),
        "only in PGPASSWORD"
    );
    assert!(
        env.contains("PGPASSWORD=Pa/ss?w@rd"),
        "the password reaches pg_dump the libpq way"
    );

    // A libpq keyword string is refused (exit 2) without being echoed.
    let (code, _, err) = run(p
        .dbward("host=127.0.0.1 password=hunter2 dbname=shop")
        .arg("status"));
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    // `postgres://` alone names no server: a usage error, not a failed connection.
    let (code, _, err) = run(p.dbward("postgres://").arg("status"));
    assert_eq!(code, 2, "{err}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if !p.to_string_lossy().ends_with(".zst") {
            out.push(p);
        }
    }
    out
}

/// Defect 8 (correctness half; the speed is measured in bench/migrate.sh): a large seed file
/// applies whole, and an error in its last statement names that statement's line.
#[test]
fn d08_a_large_seed_migration_applies_whole_and_errors_name_the_right_line() {
    let p = Project::new();
    let mut seed = String::from("CREATE TABLE seed (id INTEGER PRIMARY KEY, v TEXT);\n");
    for i in 0..50_000 {
        seed.push_str(&format!("INSERT INTO seed (v) VALUES ('row {i}');\n"));
    }
    p.migration("V1__seed.sql", &seed);
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(sqlite(&app(&p), "SELECT count(*) FROM seed"), "50000");

    let mut broken = String::new();
    for i in 0..50_000 {
        broken.push_str(&format!("INSERT INTO seed (v) VALUES ('more {i}');\n"));
    }
    broken.push_str("-- the last one is wrong\nINSERT INTO nowhere VALUES (1);\n");
    p.migration("V2__more.sql", &broken);
    let (code, _, err) = run(p.dbward("sqlite:app.db").args(["migrate", "--no-snapshot"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("V2__more.sql:50002:"), "{err}");
    assert!(err.contains("no such table: nowhere"), "{err}");
    assert_eq!(
        sqlite(&app(&p), "SELECT count(*) FROM seed"),
        "50000",
        "rolled back"
    );
}

/// Defect 9: a NUL byte made SQLite stop reading the file, and the migration was recorded as
/// applied with most of it never run.
#[test]
fn d09_a_migration_with_a_nul_byte_is_refused_before_anything_runs() {
    let p = Project::new();
    p.migration(
        "V1__a.sql",
        "CREATE TABLE a (id INTEGER);\n\0CREATE TABLE b (id INTEGER);\n",
    );
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("V1__a.sql") && err.contains("NUL byte at offset 29"),
        "{err}"
    );
    assert!(!app(&p).exists() || sqlite(&app(&p), "SELECT count(*) FROM sqlite_master") == "0");
}

/// Defect 17: with foreign keys on (rusqlite's default), SQLite's documented table rebuild
/// (`DROP TABLE parent`) cascaded into the children and emptied them.
#[test]
fn d17_a_sqlite_table_rebuild_keeps_the_child_rows_and_dangling_rows_fail_the_batch() {
    let p = Project::new();
    p.migration(
        "V1__schema.sql",
        "CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL REFERENCES parent(id) ON DELETE CASCADE);
INSERT INTO parent VALUES (1, 'a'), (2, 'b');
INSERT INTO child VALUES (10, 1), (11, 2), (12, 2);
",
    );
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    // The 12-step procedure: create new, copy, drop old, rename.
    p.migration(
        "V2__rebuild_parent.sql",
        "CREATE TABLE parent_new (id INTEGER PRIMARY KEY, name TEXT NOT NULL DEFAULT '');
INSERT INTO parent_new SELECT id, name FROM parent;
DROP TABLE parent;
ALTER TABLE parent_new RENAME TO parent;
",
    );
    let (code, _, err) = run(p.dbward("sqlite:app.db").args(["migrate", "--no-snapshot"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        sqlite(&app(&p), "SELECT count(*) FROM child"),
        "3",
        "no cascade"
    );

    p.migration("V3__orphan.sql", "DELETE FROM parent WHERE id = 2;\n");
    let (code, _, err) = run(p.dbward("sqlite:app.db").args(["migrate", "--no-snapshot"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("foreign_key_check") && err.contains("child rowid 11"),
        "{err}"
    );
    assert_eq!(
        sqlite(&app(&p), "SELECT count(*) FROM parent"),
        "2",
        "rolled back"
    );

    // A row that already dangled (written by an app with foreign keys off, as the sqlite3
    // shell is) is not the batch's doing: an unrelated batch goes through.
    sqlite(&app(&p), "INSERT INTO child VALUES (99, 42);");
    p.remove("V3__orphan.sql");
    p.migration("V3__unrelated.sql", "CREATE TABLE other (id INTEGER);\n");
    let (code, _, err) = run(p.dbward("sqlite:app.db").args(["migrate", "--no-snapshot"]));
    assert_eq!(code, 0, "{err}");

    // SQLite's own table-rebuild recipe begins with the pragma: a note saying why it is not
    // needed, never in the way (the check above stays).
    p.migration("V4__fk.sql", "PRAGMA foreign_keys = OFF;\n");
    let (code, out, err) = run(p.dbward("sqlite:app.db").arg("lint"));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("note[ignored-in-transaction]")
            && out.contains("dbward runs the batch with foreign keys off"),
        "the lint note says why it is not needed: {out}"
    );
}

/// The run directories (`.dbward-run-*`) under `dir`.
fn run_dirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(".dbward-run-")
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Starts `cmd`, waits until a run directory with a file in it appears under `dir`, then sends
/// `sig`; returns the exit status. Retries a few times if the command finished first.
fn signal_mid_run(
    mut make: impl FnMut() -> std::process::Command,
    dir: &Path,
    sig: i32,
) -> std::process::ExitStatus {
    for _ in 0..5 {
        let mut child = make()
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        loop {
            let busy = run_dirs(dir)
                .iter()
                .any(|d| std::fs::read_dir(d).map(|e| e.count() > 1).unwrap_or(false));
            if busy {
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(child.id() as i32, sig) };
                return child.wait().unwrap();
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
        }
    }
    panic!("the command always finished before its temp files could be seen");
}

/// Defect 6: a killed or stopped run left its temp files (a whole uncompressed copy of the
/// database) forever.
#[test]
fn d06_temp_files_of_killed_runs_are_removed_and_a_signalled_run_removes_its_own() {
    let p = Project::new();
    sqlite_app(&p, 10);
    sqlite(&app(&p), "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400000) INSERT INTO items (name) SELECT hex(randomblob(60)) FROM n;");
    let tmp = p.path().join(".dbward/tmp");

    // kill -9 mid-backup: the copy stays behind, and the next run removes it.
    let status = signal_mid_run(
        || {
            let mut c = p.dbward("sqlite:app.db");
            c.arg("backup");
            c
        },
        &tmp,
        libc::SIGKILL,
    );
    assert!(!status.success());
    assert_eq!(run_dirs(&tmp).len(), 1, "a dead run's directory is left");
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("backup"));
    assert_eq!(code, 0, "{err}");
    assert!(run_dirs(&tmp).is_empty(), "{:?}", run_dirs(&tmp));

    // SIGTERM mid-backup: exit 143, its own files gone at once.
    let status = signal_mid_run(
        || {
            let mut c = p.dbward("sqlite:app.db");
            c.arg("backup");
            c
        },
        &tmp,
        libc::SIGTERM,
    );
    assert_eq!(status.code(), Some(143));
    assert!(run_dirs(&tmp).is_empty(), "{:?}", run_dirs(&tmp));

    // SIGTERM mid-drill (`docker compose stop` on `schedule`): non-zero, scratch files gone.
    let status = signal_mid_run(
        || {
            let mut c = p.dbward("sqlite:app.db");
            c.args(["restore-drill", "latest"]);
            c
        },
        &tmp,
        libc::SIGTERM,
    );
    assert!(!status.success());
    assert!(run_dirs(&tmp).is_empty(), "{:?}", run_dirs(&tmp));
}

/// Defect 11: a restore's cleanup deleted every `.dbward-*` file in the target's directory,
/// including another restore's files in progress (and anything in /tmp for `--to /tmp/x.db`).
#[test]
fn d11_restores_side_by_side_never_remove_each_others_files_or_foreign_ones() {
    let p = Project::new();
    sqlite_app(&p, 10);
    sqlite(&app(&p), "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000) INSERT INTO items (name) SELECT hex(randomblob(60)) FROM n;");
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("backup"));
    assert_eq!(code, 0, "{err}");
    std::fs::copy(app(&p), p.path().join("other.db")).unwrap();
    let (code, _, err) = run(p
        .dbward("sqlite:other.db")
        .args(["migrate", "--no-snapshot"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(p.dbward("sqlite:other.db").arg("backup"));
    assert_eq!(code, 0, "{err}");
    let foreign = p.path().join(".dbward-notes");
    std::fs::write(&foreign, "not dbward's").unwrap();

    // Two restores in one directory, at the same time: both succeed.
    let spawn = |db: &str| {
        p.dbward(&format!("sqlite:{db}"))
            .args(["restore", "latest", "--yes"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    for _ in 0..3 {
        let a = spawn("app.db");
        let b = spawn("other.db");
        for c in [a, b] {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert!(foreign.exists());
    // `--to` into another directory touches nothing there but its own.
    let elsewhere = tempfile::tempdir().unwrap();
    let keep = elsewhere.path().join(".dbward-restore-x");
    std::fs::write(&keep, "not dbward's").unwrap();
    let to = elsewhere.path().join("copy.db");
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["restore", "latest", "--yes", "--to"])
        .arg(&to));
    assert_eq!(code, 0, "{err}");
    assert!(keep.exists() && to.exists());
    assert!(run_dirs(elsewhere.path()).is_empty());
}

/// Defect 16: two databases of one name share `<prefix>/<name>/`, and each took the other's
/// snapshots for `latest` and for retention.
#[test]
fn d16_a_store_folder_belongs_to_one_database_and_survives_disaster_recovery() {
    let store = tempfile::tempdir().unwrap();
    let store_url = format!("file://{}", store.path().display());
    let a = Project::new();
    let b = Project::new();
    sqlite_app(&a, 10); // a's own store; now a's and b's shared one
    for p in [&a, &b] {
        p.migration(
            "V1__items.sql",
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n",
        );
    }
    assert_eq!(run(b.dbward("sqlite:app.db").arg("migrate")).0, 0);
    let (code, out, err) = run(a
        .dbward("sqlite:app.db")
        .args(["--store", &store_url, "backup", "--json"]));
    assert_eq!(code, 0, "{err}");
    let a_id = json(&out)["snapshot"]["id"].as_str().unwrap().to_string();
    let (code, _, err) = run(b
        .dbward("sqlite:app.db")
        .args(["--store", &store_url, "backup"]));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("belongs to another database") && err.contains("own store prefix"),
        "{err}"
    );
    // b's `latest` never picks a's snapshot.
    let (code, _, err) = run(b
        .dbward("sqlite:app.db")
        .args(["--store", &store_url, "restore", "latest", "--yes"]));
    assert_ne!(code, 0, "{err}");
    assert_eq!(
        sqlite(&app(&b), "SELECT count(*) FROM items"),
        "0",
        "b untouched"
    );

    // A PostgreSQL `app` in the same folder is refused too, and never restored from.
    let pg = Pg::start();
    let url = pg.create_db("app");
    let c = Project::new();
    c.migration("V1__schema.sql", PG_SCHEMA);
    assert_eq!(run(c.dbward(&url).args(["migrate", "--no-snapshot"])).0, 0);
    let (code, _, err) = run(c.dbward(&url).args(["--store", &store_url, "backup"]));
    assert_eq!(code, 3, "{err}");
    // A database that cannot be given an identity (its role may not create the table) is not
    // let into the folder either: it could not prove the snapshots there are not its own.
    pg.psql("postgres", "CREATE DATABASE app2");
    pg.psql(
        "app2",
        "CREATE TABLE t (id int); CREATE ROLE reader LOGIN; GRANT SELECT ON t TO reader",
    );
    let reader = pg.url_as("reader", "app2");
    let d = Project::new();
    let folder = store.path().join("app2");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(
        store.path().join("app/.owner.json"),
        folder.join(".owner.json"),
    )
    .unwrap();
    let (code, _, err) = run(d.dbward(&reader).args(["--store", &store_url, "backup"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("has no identity"), "{err}");

    // Disaster recovery: a's volume is empty; `latest` is still a's, and the restored database
    // keeps a's identity, so its next backup goes to the same folder.
    std::fs::remove_file(app(&a)).unwrap();
    let (code, _, err) = run(a
        .dbward("sqlite:app.db")
        .args(["--store", &store_url, "restore", "latest", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(sqlite(&app(&a), "SELECT count(*) FROM items"), "10");
    let (code, _, err) = run(a
        .dbward("sqlite:app.db")
        .args(["--store", &store_url, "backup"]));
    assert_eq!(code, 0, "{err}");

    // A snapshot from before identities (no database_id) stays restorable by id.
    let manifest = store.path().join(format!("app/{a_id}.json"));
    let mut m = json(&std::fs::read_to_string(&manifest).unwrap());
    m.as_object_mut().unwrap().remove("database_id");
    std::fs::write(&manifest, m.to_string()).unwrap();
    let (code, _, err) = run(a
        .dbward("sqlite:app.db")
        .args(["--store", &store_url, "restore", &a_id, "--yes"]));
    assert_eq!(code, 0, "{err}");
    // Retention in a shared folder counts only its own database's snapshots (b's snapshot,
    // taken in its own store before, is no concern here; a's are all it may prune).
    std::fs::write(a.path().join("dbward.toml"), "[retention]\nkeep_last = 1\n").unwrap();
    let (code, out, err) = run(a
        .dbward("sqlite:app.db")
        .args(["--store", &store_url, "prune", "--json"]));
    assert_eq!(code, 0, "{err}");
    let removed = json(&out)["removed"].as_array().unwrap().len();
    assert!(removed >= 1, "{out}");
    let (_, out, _) =
        run(a
            .dbward("sqlite:app.db")
            .args(["--store", &store_url, "snapshots", "--json"]));
    assert_eq!(
        json(&out)["snapshots"].as_array().unwrap().len(),
        1,
        "{out}"
    );
}

/// Defect 13 (more): errors that point the right way.
#[test]
fn d13_restore_targets_that_cannot_be_are_usage_errors_and_create_nothing() {
    let p = Project::new();
    sqlite_app(&p, 3);
    let (code, _, err) = run(p.dbward("sqlite:app.db").args([
        "restore",
        "latest",
        "--yes",
        "--to",
        "postgres://x@127.0.0.1/app",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(!p.path().join("postgres:").exists());
    let (code, _, err) = run(p.dbward("sqlite:app.db").args([
        "restore",
        "latest",
        "--yes",
        "--to",
        "nonexistent/dir/x.db",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(
        !p.path().join("nonexistent").exists(),
        "no directories made"
    );
}

/// Defect 14: a database named `postgres` (the official image's default) could not be
/// restored: the swap renames the database it is connected to. It is restored in place now,
/// after its current state was kept as a snapshot; so is a database whose role may not create
/// databases (managed services).
#[test]
fn d14_a_database_named_postgres_or_without_createdb_is_restored_in_place() {
    let pg = Pg::start();
    let p = Project::new();
    p.migration("V1__schema.sql", PG_SCHEMA);
    let url = pg.url("postgres");
    assert_eq!(run(p.dbward(&url).args(["migrate", "--no-snapshot"])).0, 0);
    pg.psql(
        "postgres",
        "INSERT INTO accounts SELECT FROM generate_series(1, 5)",
    );
    let (code, out, err) = run(p.dbward(&url).args(["backup", "--json"]));
    assert_eq!(code, 0, "{err}");
    let id = json(&out)["snapshot"]["id"].as_str().unwrap().to_string();
    pg.psql(
        "postgres",
        "INSERT INTO accounts SELECT FROM generate_series(1, 3)",
    );
    p.migration(
        "V2__more.sql",
        "ALTER TABLE accounts ADD COLUMN extra int;\n",
    );
    assert_eq!(run(p.dbward(&url).args(["migrate", "--no-snapshot"])).0, 0);

    let (code, out, err) = run(p.dbward(&url).args(["restore", &id, "--yes", "--json"]));
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    assert_eq!(doc["strategy"], "in-place", "{doc}");
    assert!(doc["strategy_reason"]
        .as_str()
        .unwrap()
        .contains("maintenance database"));
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM accounts"), "5");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT max(version) FROM refinery_schema_history"
        ),
        "1"
    );
    // The replaced state is a snapshot of its own, restorable like any.
    let kept = doc["replaced"]
        .as_str()
        .unwrap()
        .strip_prefix("snapshot ")
        .unwrap()
        .to_string();
    let (code, _, err) = run(p.dbward(&url).args(["restore", &kept, "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM accounts"), "8");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT max(version) FROM refinery_schema_history"
        ),
        "2"
    );

    // A role without CREATEDB owning its database: in place as well.
    pg.psql("postgres", "CREATE ROLE tenant LOGIN");
    pg.psql("postgres", "CREATE DATABASE tenantdb OWNER tenant");
    let q = Project::new();
    q.migration("V1__schema.sql", PG_SCHEMA);
    let turl = pg.url_as("tenant", "tenantdb");
    assert_eq!(run(q.dbward(&turl).args(["migrate", "--no-snapshot"])).0, 0);
    pg.psql(
        "tenantdb",
        "INSERT INTO accounts SELECT FROM generate_series(1, 4)",
    );
    let (code, out, err) = run(q.dbward(&turl).args(["backup", "--json"]));
    assert_eq!(code, 0, "{err}");
    let tid = json(&out)["snapshot"]["id"].as_str().unwrap().to_string();
    pg.psql("tenantdb", "DELETE FROM accounts");
    let (code, out, err) = run(q.dbward(&turl).args(["restore", &tid, "--yes", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["strategy"], "in-place");
    assert!(err.contains("may not create databases"), "{err}");
    assert_eq!(pg.psql("tenantdb", "SELECT count(*) FROM accounts"), "4");
}

/// Defect 15: behind PgBouncer in transaction mode the session lock leaked onto a pooled
/// server connection, and every later `migrate` waited for a lock nobody held (exit 4). The
/// pooler is detected and refused before anything runs; `DBWARD_MIGRATE_URL` gives dbward a
/// direct URL while the application keeps its pooled `DATABASE_URL`.
#[test]
fn d15_a_transaction_pooler_is_refused_and_migrate_url_goes_around_it() {
    let pg = Pg::start();
    pg.create_db("shop");
    let bouncer = common::PgBouncer::transaction_mode(&pg);
    let p = Project::new();
    p.migration("V1__schema.sql", PG_SCHEMA);
    let pooled = bouncer.url("shop");
    let (code, _, err) = run(p.dbward(&pooled).args(["migrate", "--no-snapshot"]));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("pooler") && err.contains("DBWARD_MIGRATE_URL"),
        "{err}"
    );
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'refinery_schema_history'"
        ),
        "0",
        "nothing ran"
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        ),
        "0",
        "no lock left on a pooled connection"
    );

    for _ in 0..2 {
        let (code, _, err) = run(common::dbward(p.path())
            .env("DATABASE_URL", &pooled)
            .env("DBWARD_MIGRATE_URL", pg.url("shop"))
            .args(["migrate", "--no-snapshot"]));
        assert_eq!(code, 0, "{err}");
    }
    assert_eq!(
        pg.psql("shop", "SELECT count(*) FROM refinery_schema_history"),
        "1"
    );
}

/// Replaced copies piled up (six restores of a 1 GB database left six copies). The oldest
/// recorded copies beyond `restore.keep_replaced` go; one not made by dbward never does.
#[test]
fn replaced_copies_beyond_keep_replaced_are_removed_and_only_recorded_ones() {
    let p = Project::new();
    sqlite_app(&p, 5);
    std::fs::write(
        p.path().join("dbward.toml"),
        "[restore]\nkeep_replaced = 2\n",
    )
    .unwrap();
    let by_hand = p.path().join("app.db.replaced-20200101T000000Z");
    std::fs::copy(app(&p), &by_hand).unwrap();
    for _ in 0..4 {
        let (code, _, err) = run(p
            .dbward("sqlite:app.db")
            .args(["restore", "latest", "--yes"]));
        assert_eq!(code, 0, "{err}");
    }
    let copies: Vec<String> = std::fs::read_dir(p.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with("app.db.replaced-") && !n.ends_with("-wal") && !n.ends_with("-shm")
        })
        .collect();
    assert_eq!(
        copies.len(),
        3,
        "two recorded and the one made by hand: {copies:?}"
    );
    assert!(by_hand.exists());
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["status", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&out)["replaced_copies"].as_array().unwrap().len(),
        2,
        "{out}"
    );

    let pg = Pg::start();
    let q = Project::new();
    let (url, id) = pg_app(&pg, &q, "shop", 10);
    std::fs::write(
        q.path().join("dbward.toml"),
        "[restore]\nkeep_replaced = 1\n",
    )
    .unwrap();
    pg.psql("postgres", "CREATE DATABASE shop_replaced_by_hand");
    for _ in 0..3 {
        let (code, _, err) = run(q.dbward(&url).args(["restore", &id, "--yes"]));
        assert_eq!(code, 0, "{err}");
    }
    let dbs = databases(&pg);
    let replaced: Vec<&String> = dbs
        .iter()
        .filter(|d| d.starts_with("shop_replaced_"))
        .collect();
    assert_eq!(
        replaced.len(),
        2,
        "the newest and the one made by hand: {replaced:?}"
    );
    assert!(dbs.iter().any(|d| d == "shop_replaced_by_hand"));
}

/// A small file system of its own (tmpfs; the suite runs as root), unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        common::tool(
            std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path()),
        );
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// Disk space is checked before it is needed: a staged copy or a restore that would fill the
/// disk is refused (exit 3, with needed and free), and nothing is left behind.
#[test]
fn disk_space_is_checked_before_a_staged_copy_or_a_restore_needs_it() {
    let p = Project::new();
    sqlite_app(&p, 10);
    let small = SmallDisk::new("16m");
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .arg("--temp-dir")
        .arg(small.dir.path())
        .arg("backup"));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("not enough disk space") && err.contains("free"),
        "{err}"
    );
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["restore", "latest", "--yes", "--to"])
        .arg(small.dir.path().join("copy.db")));
    assert_eq!(code, 3, "{err}");
    let left: Vec<_> = std::fs::read_dir(small.dir.path())
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A drill short of disk fails, but says it is not the snapshot's fault and stores no
    // receipt against it.
    let (code, out, err) = run(p
        .dbward("sqlite:app.db")
        .arg("--temp-dir")
        .arg(small.dir.path())
        .args(["restore-drill", "latest", "--json"]));
    assert_ne!(code, 0, "{err}");
    let doc = json(&out);
    assert_eq!(doc["report"]["checks"][0]["verdict"], "error", "{doc}");
    let (_, out, _) = run(p.dbward("sqlite:app.db").args(["snapshots", "--json"]));
    assert_eq!(
        json(&out)["drills"],
        serde_json::json!({}),
        "no receipt: {out}"
    );
}

/// Adversarial names: a PostgreSQL database and role whose names need quoting, a password with
/// every URL character (percent-encoded), and a SQLite file whose path holds spaces and
/// non-ASCII: migrate, backup, restore and drill all work, and nothing leaks.
#[test]
fn odd_names_and_every_special_character_in_a_url_work_end_to_end() {
    let pg = Pg::start();
    pg.psql(
        "postgres",
        "CREATE ROLE \"o'dd user\" LOGIN SUPERUSER PASSWORD 'p@ss:w/o?r#d%&='",
    );
    pg.psql(
        "postgres",
        "CREATE DATABASE \"we\"\"ird-db ü\" OWNER \"o'dd user\"",
    );
    let url = format!(
        "postgres://o'dd%20user:p%40ss%3Aw%2Fo%3Fr%23d%25%26%3D@127.0.0.1:{}/we%22ird-db%20%C3%BC?sslmode=disable",
        pg.port
    );
    let p = Project::new();
    p.migration("V1__schema.sql", PG_SCHEMA);
    let mut all = String::new();
    for args in [
        vec!["migrate"],
        vec!["backup", "--json"],
        vec!["restore", "latest", "--yes", "--json"],
        vec!["restore-drill", "latest"],
        vec!["status"],
    ] {
        let (code, out, err) = run(p.dbward(&url).args(&args));
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        all.push_str(&out);
        all.push_str(&err);
    }
    for secret in ["p@ss", "w/o?r", "p%40ss", "%3Fr%23d"] {
        assert!(!all.contains(secret), "{secret} leaked: {all}");
    }
    assert_eq!(
        pg.psql(
            "we\"ird-db ü",
            "SELECT count(*) FROM refinery_schema_history"
        ),
        "1"
    );

    let q = Project::new();
    std::fs::create_dir(q.path().join("data dir ü")).unwrap();
    q.migration(
        "V1__items.sql",
        "CREATE TABLE items (id INTEGER PRIMARY KEY);\n",
    );
    let db = "sqlite:data dir ü/my app.db";
    for args in [
        vec!["migrate"],
        vec!["backup"],
        vec!["restore", "latest", "--yes"],
        vec!["restore-drill", "latest"],
    ] {
        let (code, out, err) = run(q.dbward(db).args(&args));
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    }
}

/// Defect 13 (more): `migrate` opened the SQLite file before taking the migration lock, so a
/// restore that swapped the file in meanwhile left it writing to the replaced one ("attempt to
/// write a readonly database"). It locks first now, and applies to the file it finds then.
#[test]
fn d13_migrate_waits_for_the_lock_before_opening_the_sqlite_file() {
    let p = Project::new();
    sqlite_app(&p, 3);
    p.migration("V2__more.sql", "CREATE TABLE more (id INTEGER);\n");
    // Another process holds the migration lock (as a restore does) ...
    let mut holder = std::process::Command::new("flock")
        .arg(p.path().join("app.db.dbward-lock"))
        .args(["-c", "sleep 30"])
        .process_group(0)
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let migrate = p
        .dbward("sqlite:app.db")
        .args(["migrate", "--no-snapshot"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // ... and swaps a different database file in, as a restore would.
    let other = p.path().join("other.db");
    std::fs::copy(app(&p), &other).unwrap();
    sqlite(&other, "INSERT INTO items (name) VALUES ('swapped in')");
    std::fs::rename(&other, app(&p)).unwrap();
    // SAFETY: kill(2) on our own child's process group (flock and its sleep).
    unsafe { libc::kill(-(holder.id() as i32), libc::SIGKILL) };
    holder.wait().unwrap();
    let out = migrate.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sqlite(
            &app(&p),
            "SELECT count(*) FROM items WHERE name = 'swapped in'"
        ),
        "1"
    );
    assert_eq!(
        sqlite(&app(&p), "SELECT max(version) FROM refinery_schema_history"),
        "2",
        "applied to the file swapped in"
    );
}

/// `restore --to PATH` never overwrites a file that appears at PATH while the snapshot is being
/// restored (after the path was found free): the restored file is linked in, which fails where
/// a name exists, and the file that appeared keeps its content. The restore stops at its
/// decompressed-and-checked point until the file is there.
#[test]
fn restore_to_a_path_that_appears_meanwhile_leaves_that_file_alone() {
    let p = Project::new();
    sqlite_app(&p, 10);
    let points = tempfile::tempdir().unwrap();
    let target = p.path().join("copy.db");
    let mut child = p
        .dbward("sqlite:app.db")
        .args(["restore", "latest", "--yes", "--to"])
        .arg(&target)
        .env("DBWARD_FAILPOINTS", "restore-after-decompress=wait")
        .env("DBWARD_FAILPOINT_DIR", points.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let reached = points.path().join("restore-after-decompress");
    while !reached.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the restore ended early"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::write(&target, b"someone else's file").unwrap();
    std::fs::write(points.path().join("restore-after-decompress.go"), b"").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("appeared"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"someone else's file");
    let stray: Vec<_> = std::fs::read_dir(p.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restore-") || n.starts_with(".dbward-run"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

//! `dbward migrate`, `status` and `lint` against real SQLite files.

mod common;

use std::fs::File;
use std::time::{Duration, Instant};

use common::{json, run, Project};

fn sqlite(p: &Project, sql: &str) -> String {
    common::sqlite(&p.path().join("app.db"), sql)
}

const DB: &str = "sqlite:app.db";

fn shop(p: &Project) {
    p.migration(
        "V1__users.sql",
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL);\n",
    )
    .migration(
        "V2__orders.sql",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER);\n",
    );
}

#[test]
fn applies_pending_then_nothing() {
    let p = Project::new();
    shop(&p);
    let (code, out, err) = run(p.dbward(DB).args(["migrate", "--json"]));
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    assert_eq!(doc["applied"].as_array().unwrap().len(), 2);
    assert_eq!(doc["head"]["version"], 2);
    assert_eq!(
        sqlite(
            &p,
            "SELECT group_concat(version) FROM refinery_schema_history"
        ),
        "1,2"
    );

    p.migration(
        "V3__index.sql",
        "CREATE INDEX orders_user ON orders (user_id);",
    );
    let (code, out, _) = run(p.dbward(DB).args(["migrate", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(json(&out)["applied"][0]["name"], "index");

    let (code, out, _) = run(p.dbward(DB).args(["migrate", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(json(&out)["applied"].as_array().unwrap().len(), 0);
}

#[test]
fn a_failing_third_file_leaves_no_trace_of_the_first_two() {
    let p = Project::new();
    shop(&p);
    p.migration(
        "V3__broken.sql",
        "CREATE TABLE ok (id int);\n\nINSERT INTO no_such_table VALUES (1);\n",
    );
    let (code, out, err) = run(p.dbward(DB).args(["migrate", "--json"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("V3__broken.sql:3:"),
        "error names file and line: {err}"
    );
    assert!(
        err.contains("no such table: no_such_table"),
        "carries SQLite's message: {err}"
    );
    let doc = json(&out);
    assert_eq!(doc["ok"], false);
    assert!(doc["failed_migration"]
        .as_str()
        .unwrap()
        .ends_with("V3__broken.sql"));
    assert_eq!(doc["line"], 3);
    assert_eq!(
        sqlite(
            &p,
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
        ),
        "0",
        "no table, not even the history"
    );

    // Fixed, the next run simply retries: no dirty state.
    p.migration("V3__broken.sql", "CREATE TABLE ok (id int);\n");
    let (code, _, err) = run(p.dbward(DB).arg("migrate"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        sqlite(&p, "SELECT count(*) FROM refinery_schema_history"),
        "3"
    );
}

#[test]
fn drift_is_refused_and_listed() {
    let p = Project::new();
    shop(&p);
    p.migration("V5__later.sql", "CREATE TABLE later (id int);");
    assert_eq!(run(p.dbward(DB).arg("migrate")).0, 0);

    // Edited after it was applied, deleted, and a late merge below the head.
    p.migration(
        "V1__users.sql",
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);\n",
    );
    p.remove("V2__orders.sql");
    p.migration("V3__late.sql", "CREATE TABLE late (id int);");
    p.migration("V6__next.sql", "CREATE TABLE next (id int);");
    let (code, out, err) = run(p.dbward(DB).args(["migrate", "--json"]));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("V1__users.sql: changed since it was applied"),
        "{err}"
    );
    assert!(
        err.contains("V2__orders.sql: applied, but missing"),
        "{err}"
    );
    assert!(
        err.contains("V3__late.sql: not applied, but older"),
        "{err}"
    );
    let kinds: Vec<String> = json(&out)["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["drift"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["changed", "missing", "out-of-order"]);
    assert_eq!(
        sqlite(&p, "SELECT count(*) FROM sqlite_master WHERE name = 'next'"),
        "0",
        "nothing applied"
    );

    let (code, out, _) = run(p.dbward(DB).args(["status", "--json"]));
    assert_eq!(code, 3);
    let states: Vec<String> = json(&out)["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        states,
        ["changed", "missing", "applied", "out-of-order", "pending"]
    );
}

#[test]
fn status_is_clean_with_pending_migrations() {
    let p = Project::new();
    shop(&p);
    let (code, out, _) = run(p.dbward(DB).arg("status"));
    assert_eq!(code, 0);
    assert!(out.contains("does not exist yet"), "{out}");
    assert!(
        !p.path().join("app.db").exists(),
        "status must not create the database"
    );
    assert_eq!(run(p.dbward(DB).arg("migrate")).0, 0);
    p.migration("V3__x.sql", "CREATE TABLE x (id int);");
    let (code, out, _) = run(p.dbward(DB).args(["status", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(json(&out)["pending"], 1);
}

#[test]
fn lint_errors_refuse_the_batch_but_comments_and_strings_do_not() {
    let p = Project::new();
    shop(&p);
    p.migration(
        "V3__harmless.sql",
        "-- COMMIT; VACUUM; CREATE INDEX CONCURRENTLY\n/* BEGIN; */\nINSERT INTO users (email) VALUES ('COMMIT; VACUUM;');\n",
    );
    let (code, out, _) = run(p.dbward(DB).args(["lint", "--json"]));
    assert_eq!(code, 0, "{out}");
    assert_eq!(json(&out)["errors"], 0);

    p.migration("V4__commit.sql", "CREATE TABLE a (id int);\nCOMMIT;\n");
    p.migration("V5__vacuum.sql", "\nVACUUM;\n");
    p.migration(
        "V6__concurrently.sql",
        "CREATE INDEX CONCURRENTLY a_id ON a (id);\n",
    );
    let (code, out, _) = run(p.dbward(DB).arg("lint"));
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("V4__commit.sql:2:1: error[transaction-control]"),
        "{out}"
    );
    assert!(
        out.contains("V5__vacuum.sql:2:1: error[no-transaction]"),
        "{out}"
    );
    assert!(
        out.contains("V6__concurrently.sql:1:14: error[no-transaction]"),
        "{out}"
    );
    assert!(!out.contains("V3__harmless"), "{out}");

    let (code, _, err) = run(p.dbward(DB).arg("migrate"));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("V4__commit.sql:2"), "{err}");
    assert!(
        !p.path().join("app.db").exists(),
        "refused before touching the database"
    );
}

#[test]
fn lint_needs_no_database_and_warns_on_destructive_statements() {
    let p = Project::new();
    p.migration("V1__drop.sql", "DROP TABLE old;\nDELETE FROM sessions;\n");
    let (code, out, _) = run(common::dbward(p.path()).args(["lint", "--json"]));
    assert_eq!(code, 0);
    let doc = json(&out);
    assert_eq!(doc["warnings"], 2);
    assert_eq!(doc["findings"][1]["line"], 2);
}

#[test]
fn misnamed_and_duplicate_files_are_errors_naming_the_file() {
    let p = Project::new();
    shop(&p);
    p.migration("V3__add-index.sql", "SELECT 1;");
    p.migration("V2__dup.sql", "SELECT 1;");
    p.migration("notes.sql", "SELECT 1;");
    let (code, _, err) = run(p.dbward(DB).arg("migrate"));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("V3__add-index.sql: name `add-index`"), "{err}");
    assert!(
        err.contains("notes.sql: name does not start with V"),
        "{err}"
    );
    assert!(err.contains("version 2 is also used by"), "{err}");
    assert!(!p.path().join("app.db").exists());
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let p = Project::new();
    shop(&p);
    let (code, out, _) = run(p.dbward(DB).args(["migrate", "--dry-run"]));
    assert_eq!(code, 0);
    let v1 = out.find("V1__users.sql").unwrap();
    let v2 = out.find("V2__orders.sql").unwrap();
    assert!(v1 < v2, "{out}");
    assert!(!p.path().join("app.db").exists());
}

#[test]
fn a_held_migration_lock_times_out_with_exit_4() {
    let p = Project::new();
    shop(&p);
    let lock = File::create(p.path().join("app.db.dbward-lock")).unwrap();
    lock.lock().unwrap();
    let started = Instant::now();
    let (code, _, err) = run(p.dbward(DB).args(["migrate", "--lock-timeout", "500ms"]));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("migration lock"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    drop(lock);
    assert_eq!(run(p.dbward(DB).arg("migrate")).0, 0);
}

#[test]
fn kill_9_mid_batch_leaves_the_database_as_it_was() {
    let p = Project::new();
    shop(&p);
    assert_eq!(run(p.dbward(DB).arg("migrate")).0, 0);
    p.migration("V3__fast.sql", "CREATE TABLE fast (id int);");
    // Long enough that the kill lands inside the transaction (we wait for its journal).
    p.migration(
        "V4__slow.sql",
        "CREATE TABLE big (x int);\nWITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000000) INSERT INTO big SELECT x FROM c;",
    );
    let mut child = p
        .dbward(DB)
        .arg("migrate")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let journal = p.path().join("app.db-journal");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !journal.exists() {
        assert!(Instant::now() < deadline, "the batch never started writing");
        assert!(
            child.try_wait().unwrap().is_none(),
            "migrate ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    assert_eq!(sqlite(&p, "PRAGMA integrity_check"), "ok");
    assert_eq!(
        sqlite(
            &p,
            "SELECT group_concat(version) FROM refinery_schema_history"
        ),
        "1,2"
    );
    assert_eq!(
        sqlite(
            &p,
            "SELECT count(*) FROM sqlite_master WHERE name IN ('fast', 'big')"
        ),
        "0"
    );
}

#[test]
fn settings_come_from_the_config_file_and_unknown_keys_are_refused() {
    let p = Project::new();
    shop(&p);
    std::fs::write(
        p.path().join("dbward.toml"),
        "[database]\nurl = \"sqlite:app.db\"\n",
    )
    .unwrap();
    let (code, _, err) = run(common::dbward(p.path()).arg("migrate"));
    assert_eq!(code, 0, "{err}");

    std::fs::write(
        p.path().join("dbward.toml"),
        "[database]\nurl = \"sqlite:app.db\"\nlock_timout = \"5s\"\n",
    )
    .unwrap();
    let (code, out, err) = run(common::dbward(p.path()).args(["status", "--json"]));
    assert_eq!(code, 2);
    assert!(
        err.contains("lock_timout") && err.contains("dbward.toml"),
        "{err}"
    );
    assert_eq!(json(&out)["exit_code"], 2);

    let (code, _, err) = run(common::dbward(p.path()).args(["--config", "nope.toml", "status"]));
    assert_eq!(code, 2);
    assert!(err.contains("nope.toml"), "{err}");
}

#[test]
fn missing_database_setting_is_a_usage_error() {
    let p = Project::new();
    shop(&p);
    let (code, _, err) = run(common::dbward(p.path()).arg("migrate"));
    assert_eq!(code, 2);
    assert!(err.contains("--database"), "{err}");
}

//! The `migrate` scenarios every engine must pass, written once and run against each: a real
//! SQLite file and a real PostgreSQL server (ripgrep's `rgtest!` is the model: one body, one
//! test per engine). What only one engine has (lint and config handling, which need no server;
//! TLS, passwords and lock_timeout on PostgreSQL) stays in `migrate_sqlite.rs` and
//! `migrate_postgres.rs`.

use crate::common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{json, run, Pg, Project};

/// One body per scenario, one `#[test]` per engine.
macro_rules! engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                super::$name(&super::Case::sqlite());
            })*
        }
        mod postgres {
            $(#[test]
            fn $name() {
                super::$name(&super::Case::postgres());
            })*
        }
    };
}

engines!(
    applies_pending_then_nothing,
    a_failing_third_file_leaves_no_trace_and_the_fix_applies,
    drift_is_refused_and_listed,
    dry_run_prints_the_plan_and_changes_nothing,
    a_held_migration_lock_times_out_with_exit_4,
    concurrent_runs_apply_each_migration_once,
    kill_9_mid_batch_leaves_the_database_as_it_was,
);

/// A project and a database of one engine.
struct Case {
    p: Project,
    db: Db,
}

enum Db {
    Sqlite,
    Postgres { pg: Pg, url: String },
}

impl Case {
    fn sqlite() -> Case {
        let p = Project::new();
        p.migration(
            "V1__users.sql",
            "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL);\n",
        )
        .migration(
            "V2__orders.sql",
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER);\n",
        );
        Case { p, db: Db::Sqlite }
    }

    fn postgres() -> Case {
        let pg = Pg::start();
        let url = pg.create_db("shop");
        let p = Project::new();
        // Dollar-quoted bodies and a DO block: the statement splitter must leave them whole.
        p.migration("V1__users.sql", "CREATE TABLE users (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL);\n")
            .migration(
                "V2__orders.sql",
                "CREATE TABLE orders (id serial PRIMARY KEY, user_id bigint REFERENCES users (id));\n\
                 CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n  NEW.id := NEW.id;\n  RETURN NEW;\nEND;\n$$;\n\
                 DO $$ BEGIN PERFORM 1; END $$",
            );
        Case {
            p,
            db: Db::Postgres { pg, url },
        }
    }

    fn url(&self) -> String {
        match &self.db {
            Db::Sqlite => "sqlite:app.db".into(),
            Db::Postgres { url, .. } => url.clone(),
        }
    }

    fn dbward(&self) -> Command {
        self.p.dbward(&self.url())
    }

    /// One value from the database, with the engine's own CLI (sqlite3, psql).
    fn query(&self, sql: &str) -> String {
        match &self.db {
            Db::Sqlite => common::sqlite(&self.p.path().join("app.db"), sql),
            Db::Postgres { pg, .. } => pg.psql("shop", sql),
        }
    }

    /// The applied versions, `1,2,3`.
    fn versions(&self) -> String {
        self.query(match &self.db {
            Db::Sqlite => "SELECT group_concat(version) FROM (SELECT version FROM refinery_schema_history ORDER BY version)",
            Db::Postgres { .. } => "SELECT string_agg(version::text, ',' ORDER BY version) FROM refinery_schema_history",
        })
    }

    /// Tables other than dbward's identity record (which a pre-deploy snapshot adds).
    fn tables(&self) -> String {
        match &self.db {
            Db::Sqlite if !self.p.path().join("app.db").exists() => "0".into(),
            Db::Sqlite => self.query(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name <> 'dbward_identity'",
            ),
            Db::Postgres { .. } => self.query(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'dbward_identity'",
            ),
        }
    }

    fn has_table(&self, name: &str) -> bool {
        let sql = match &self.db {
            Db::Sqlite => format!("SELECT count(*) FROM sqlite_master WHERE name = '{name}'"),
            Db::Postgres { .. } => {
                format!("SELECT count(*) FROM pg_tables WHERE tablename = '{name}'")
            }
        };
        self.query(&sql) != "0"
    }

    /// A third file that fails on line `.1`, with the engine's message `.2`.
    fn broken(&self) -> (&'static str, usize, &'static str) {
        match &self.db {
            Db::Sqlite => (
                "CREATE TABLE ok (id int);\n\nINSERT INTO no_such_table VALUES (1);\n",
                3,
                "no such table: no_such_table",
            ),
            Db::Postgres { .. } => (
                "CREATE TABLE ok (id int);\n\nSELECT * FROM\n  no_such_table;\n",
                4,
                "relation \"no_such_table\" does not exist",
            ),
        }
    }

    /// Holds the migration lock, as another runner would, until the guard is dropped.
    fn hold_lock(&self) -> Box<dyn std::any::Any> {
        match &self.db {
            Db::Sqlite => {
                let lock = std::fs::File::create(self.p.path().join("app.db.dbward-lock")).unwrap();
                lock.lock().unwrap();
                Box::new(lock)
            }
            Db::Postgres { pg, .. } => {
                let mut holder = pg.session("shop");
                writeln!(
                    holder.stdin.as_mut().unwrap(),
                    "SELECT pg_advisory_lock({});",
                    0x6462_7761_7264_0001_i64
                )
                .unwrap();
                pg.wait_for(
                    "shop",
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted",
                    "1",
                );
                Box::new(KillOnDrop(holder))
            }
        }
    }

    /// A statement that takes a moment, so concurrent runners overlap.
    fn pause(&self) -> &'static str {
        match &self.db {
            Db::Sqlite => "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000) SELECT count(*) FROM c;\n",
            Db::Postgres { .. } => "SELECT pg_sleep(0.5);\n",
        }
    }

    /// A migration that runs until it is killed (or for minutes).
    fn slow(&self) -> &'static str {
        match &self.db {
            Db::Sqlite => "CREATE TABLE big (x int);\nWITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000000) INSERT INTO big SELECT x FROM c;",
            Db::Postgres { .. } => "CREATE TABLE big (x int);\nSELECT pg_sleep(600);\n",
        }
    }

    /// Waits until `child`'s batch is inside its transaction, writing.
    fn wait_until_applying(&self, child: &mut Child) {
        match &self.db {
            Db::Sqlite => {
                let journal = self.p.path().join("app.db-journal");
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
            }
            Db::Postgres { pg, .. } => pg.wait_for("shop", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(600)%' AND pid <> pg_backend_pid()", "1"),
        }
    }

    /// After a kill: PostgreSQL notices the dead client (dbward's session sets
    /// client_connection_check_interval), rolls back and frees the advisory lock; a SQLite
    /// file's lock went with the process.
    fn wait_until_released(&self) {
        if let Db::Postgres { pg, .. } = &self.db {
            pg.wait_for("shop", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(600)%' AND pid <> pg_backend_pid()", "0");
        }
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn applies_pending_then_nothing(c: &Case) {
    let (code, out, err) = run(c.dbward().args(["migrate", "--json"]));
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    assert_eq!(doc["applied"].as_array().unwrap().len(), 2);
    assert_eq!(doc["head"]["version"], 2);
    assert_eq!(c.versions(), "1,2");
    // refinery's format: RFC 3339 text and a decimal checksum.
    assert_eq!(
        c.query("SELECT count(*) FROM refinery_schema_history WHERE applied_on LIKE '____-__-__T%' AND checksum NOT LIKE '%-%' AND length(checksum) > 5"),
        "2"
    );

    c.p.migration(
        "V3__index.sql",
        "CREATE INDEX orders_user ON orders (user_id);",
    );
    let (code, out, _) = run(c.dbward().args(["migrate", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(json(&out)["applied"][0]["name"], "index");

    let (code, out, _) = run(c.dbward().args(["migrate", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(json(&out)["applied"].as_array().unwrap().len(), 0);
    assert_eq!(c.versions(), "1,2,3");
}

fn a_failing_third_file_leaves_no_trace_and_the_fix_applies(c: &Case) {
    let (sql, line, message) = c.broken();
    c.p.migration("V3__broken.sql", sql);
    let (code, out, err) = run(c.dbward().args(["migrate", "--json"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("V3__broken.sql:{line}:")),
        "names file and line: {err}"
    );
    assert!(err.contains(message), "carries the engine's message: {err}");
    let doc = json(&out);
    assert_eq!(doc["ok"], false);
    assert!(doc["failed_migration"]
        .as_str()
        .unwrap()
        .ends_with("V3__broken.sql"));
    assert_eq!(doc["line"], line);
    assert_eq!(
        c.tables(),
        "0",
        "nothing of the batch, not even the history"
    );
    if matches!(c.db, Db::Postgres { .. }) {
        assert_eq!(
            c.query("SELECT count(*) FROM pg_proc WHERE proname = 'touch'"),
            "0",
            "V2's function went with the batch"
        );
    }

    // Fixed, the next run simply retries: no dirty state.
    c.p.migration("V3__broken.sql", "CREATE TABLE ok (id int);\n");
    let (code, out, err) = run(c.dbward().args(["migrate", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["head"]["version"], 3);
    assert_eq!(c.versions(), "1,2,3");
}

fn drift_is_refused_and_listed(c: &Case) {
    c.p.migration("V5__later.sql", "CREATE TABLE later (id int);");
    assert_eq!(run(c.dbward().arg("migrate")).0, 0);

    // Edited after it was applied, deleted, and a late merge below the head.
    c.p.migration(
        "V1__users.sql",
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);\n",
    );
    c.p.remove("V2__orders.sql");
    c.p.migration("V3__late.sql", "CREATE TABLE late (id int);");
    c.p.migration("V6__next.sql", "CREATE TABLE next (id int);");
    let (code, out, err) = run(c.dbward().args(["migrate", "--json"]));
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
    assert!(!c.has_table("next"), "nothing applied");

    let (code, out, _) = run(c.dbward().args(["status", "--json"]));
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

fn dry_run_prints_the_plan_and_changes_nothing(c: &Case) {
    let (code, out, _) = run(c.dbward().args(["migrate", "--dry-run"]));
    assert_eq!(code, 0);
    let v1 = out.find("V1__users.sql").unwrap();
    let v2 = out.find("V2__orders.sql").unwrap();
    assert!(v1 < v2, "{out}");
    assert_eq!(c.tables(), "0");
}

fn a_held_migration_lock_times_out_with_exit_4(c: &Case) {
    let holder = c.hold_lock();
    let (code, _, err) = run(c.dbward().args(["migrate", "--lock-timeout", "1s"]));
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("timed out after 1s waiting for the migration lock"),
        "{err}"
    );
    if matches!(c.db, Db::Postgres { .. }) {
        assert!(err.contains("held by pid"), "names the holder: {err}");
    }
    assert_eq!(c.tables(), "0");
    drop(holder);
    assert_eq!(
        run(c.dbward().args(["migrate", "--lock-timeout", "30s"])).0,
        0
    );
}

fn concurrent_runs_apply_each_migration_once(c: &Case) {
    // Not idempotent: a second application would fail or double the row.
    c.p.migration(
        "V3__seed.sql",
        &format!(
            "CREATE TABLE runs (n int);\nINSERT INTO runs VALUES (1);\n{}",
            c.pause()
        ),
    );
    let children: Vec<_> = (0..5)
        .map(|_| {
            c.dbward()
                .args(["migrate", "--json", "--lock-timeout", "60s"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut applied = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
        applied += json(&common::stdout(&out))["applied"]
            .as_array()
            .unwrap()
            .len();
    }
    assert_eq!(
        applied, 3,
        "the three migrations were applied by exactly one runner"
    );
    assert_eq!(c.query("SELECT count(*) FROM runs"), "1");
    assert_eq!(c.versions(), "1,2,3");
}

fn kill_9_mid_batch_leaves_the_database_as_it_was(c: &Case) {
    assert_eq!(run(c.dbward().arg("migrate")).0, 0);
    c.p.migration("V3__fast.sql", "CREATE TABLE fast (id int);");
    c.p.migration("V4__slow.sql", c.slow());
    let mut child = c
        .dbward()
        .arg("migrate")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    c.wait_until_applying(&mut child);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    assert_eq!(c.versions(), "1,2");
    assert!(
        !c.has_table("fast") && !c.has_table("big"),
        "nothing committed"
    );
    if matches!(c.db, Db::Sqlite) {
        assert_eq!(c.query("PRAGMA integrity_check"), "ok");
    }
    c.wait_until_released();
    assert_eq!(c.versions(), "1,2");
    c.p.migration("V4__slow.sql", "CREATE TABLE big (x int);\n");
    let (code, _, err) = run(c.dbward().args(["migrate", "--lock-timeout", "30s"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(c.versions(), "1,2,3,4");
}

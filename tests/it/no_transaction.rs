//! Files marked to run outside a transaction (`-- dbward:no-transaction`, or sqlx's, goose's and
//! dbmate's markers): statement by statement between two atomic batches, each recorded as it
//! completes; a rerun resumes after the last completed one, drops only the INVALID index its own
//! interrupted attempt left, and checks every index it builds is valid. Killed or failed at any
//! statement, the rerun ends with every index valid and nothing applied twice.

use crate::common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{json, run, sqlite, state_file, Pg, Project};

const ORDERS: &str = "CREATE TABLE orders (id bigserial PRIMARY KEY, customer int NOT NULL, note text NOT NULL DEFAULT '');\n\
     INSERT INTO orders (customer) SELECT i % 50 FROM generate_series(1, 2000) i;\n\
     CREATE INDEX orders_old_idx ON orders (note);\n";

/// Three statements: a concurrent build, an ordinary update that must run once (the note of
/// order 1 is `x` after it, `xx` if it ran twice), a concurrent drop.
const CONCURRENT: &str = "-- dbward:no-transaction\n\
     CREATE INDEX CONCURRENTLY orders_customer_idx ON orders (customer);\n\
     UPDATE orders SET note = note || 'x' WHERE id = 1;\n\
     DROP INDEX CONCURRENTLY orders_old_idx;\n";

/// `orders` migrated (V1) on `url`.
fn orders(p: &Project, url: &str) {
    p.migration("V1__orders.sql", ORDERS);
    let (code, _, err) = run(p.dbward(url).arg("migrate"));
    assert_eq!(code, 0, "{err}");
}

/// A server with a database `shop` whose `orders` is migrated (V1), and its project.
fn shop() -> (Pg, String, Project) {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    orders(&p, &url);
    (pg, url, p)
}

/// The newest version in `shop`'s history.
fn head(pg: &Pg) -> String {
    pg.psql("shop", "SELECT max(version) FROM refinery_schema_history")
}

/// Pending: the file that runs outside a transaction, and one after it.
fn pending(p: &Project) {
    p.migration("V2__indexes.sql", CONCURRENT).migration(
        "V3__extra.sql",
        "ALTER TABLE orders ADD COLUMN extra int;\n",
    );
}

/// Every index of `orders` valid, the new one there and the old one gone, order 1's note `x`
/// (the update ran once), the three files in the history and no progress row left.
fn pg_done(pg: &Pg, db: &str, at: &str) {
    let q = |sql: &str| pg.psql(db, sql);
    assert_eq!(
        q("SELECT bool_and(i.indisvalid) FROM pg_index i WHERE i.indrelid = 'orders'::regclass"),
        "t",
        "{at}: every index valid"
    );
    assert_eq!(
        q("SELECT to_regclass('orders_customer_idx') IS NOT NULL AND to_regclass('orders_old_idx') IS NULL"),
        "t",
        "{at}: the new index built, the old one dropped"
    );
    assert_eq!(
        q("SELECT note FROM orders WHERE id = 1"),
        "x",
        "{at}: the update ran once"
    );
    assert_eq!(
        q("SELECT string_agg(version::text, ',' ORDER BY version) FROM refinery_schema_history"),
        "1,2,3",
        "{at}"
    );
    assert_eq!(
        q("SELECT count(*) FROM dbward_statement_progress"),
        "0",
        "{at}"
    );
}

#[test]
fn a_concurrent_index_runs_between_two_atomic_batches() {
    let (pg, url, p) = shop();
    pending(&p);
    // Lint allows what cannot run in a transaction only in a marked file.
    let (code, out, err) = run(p.dbward(&url).arg("lint"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("note[no-transaction]"), "{out}");
    p.migration(
        "V4__more.sql",
        "CREATE INDEX CONCURRENTLY orders_note_idx ON orders (note);\n",
    );
    let (code, out, err) = run(p.dbward(&url).arg("lint"));
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("V4__more.sql:1:14: error[no-transaction]"),
        "{out}"
    );
    p.remove("V4__more.sql");

    let (code, out, err) = run(p.dbward(&url).args(["migrate", "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("V2__indexes.sql outside a transaction, statement by statement")
            && out.contains("2 migration(s) would be applied in 2 steps"),
        "{out}"
    );
    let (code, out, err) = run(p.dbward(&url).args(["migrate", "--json"]));
    assert_eq!(code, 0, "{err}");
    pg_done(&pg, "shop", "migrate");
    assert!(
        err.contains("applying V2__indexes.sql outside a transaction: 3 statement(s)")
            && err.contains("applying 1 migration(s) in one transaction: V3__extra.sql"),
        "{err}"
    );
    let v = json(&out);
    assert_eq!(v["applied"].as_array().unwrap().len(), 2, "{out}");
}

/// Where a statement of `V2__indexes.sql` may stop, and how.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    Error,
    Kill,
}

/// Runs `cmd` with `point` set to act on its `nth` meeting: an injected error, or a stop there
/// and `kill -9`.
fn stop_at(mut cmd: Command, point: &str, nth: usize, how: Stop) -> String {
    let marks = tempfile::tempdir().unwrap();
    let action = match how {
        Stop::Error => "error",
        Stop::Kill => "wait",
    };
    cmd.env("DBWARD_FAILPOINTS", format!("{point}={action}@{nth}"))
        .env("DBWARD_FAILPOINT_DIR", marks.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if how == Stop::Error {
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{point}@{nth}: {err}");
        return err;
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marks.path().join(point).exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{point}@{nth}: ended before reaching the point"
        );
        assert!(Instant::now() < deadline, "{point}@{nth}: never reached");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    String::new()
}

#[test]
fn killed_or_failed_at_any_statement_a_rerun_applies_each_once_and_every_index_is_valid() {
    let pg = Pg::start();
    for point in ["migrate-statement-started", "migrate-statement-ran"] {
        for nth in 1..=3 {
            // `ran` is met only by the statements that cannot run in a transaction (1 and 3).
            if point == "migrate-statement-ran" && nth == 3 {
                continue;
            }
            for how in [Stop::Error, Stop::Kill] {
                let db = format!("shop_{}_{nth}_{how:?}", &point[18..]).to_lowercase();
                let url = pg.create_db(&db);
                let p = Project::new();
                orders(&p, &url);
                pending(&p);
                let at = format!("{point}@{nth} ({how:?})");
                let err = stop_at(migrate(&p, &url), point, nth, how);
                if how == Stop::Error {
                    assert!(err.contains("V2__indexes.sql"), "{at}: {err}");
                    assert!(err.contains("stopped part way"), "{at}: {err}");
                }
                // V1 committed before the file began, V3 never ran.
                assert_eq!(
                    pg.psql(
                        &db,
                        "SELECT string_agg(version::text, ',') FROM refinery_schema_history"
                    ),
                    "1",
                    "{at}"
                );
                let (code, _, err) = run(p.dbward(&url).arg("migrate"));
                assert_eq!(code, 0, "{at}: the rerun: {err}");
                assert!(err.contains("resuming the deploy"), "{at}: {err}");
                pg_done(&pg, &db, &at);
                pg.psql("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"));
            }
        }
    }
}

/// `dbward migrate` of `p` on `url`.
fn migrate(p: &Project, url: &str) -> Command {
    let mut c = p.dbward(url);
    c.arg("migrate");
    c
}

/// A build that waits for a writer's transaction has its INVALID index in the catalog already;
/// dbward killed there (its server session ends within a second, PostgreSQL's client check),
/// the index stays INVALID. The rerun drops exactly that index (the record shows its own run
/// started the statement) and builds it again.
#[test]
fn a_build_killed_while_it_waits_leaves_an_invalid_index_the_rerun_rebuilds() {
    let (pg, url, p) = shop();
    pending(&p);
    let mut writer = pg.session("shop");
    writeln!(
        writer.stdin.as_mut().unwrap(),
        "BEGIN; UPDATE orders SET customer = customer WHERE id = 2;"
    )
    .unwrap();
    pg.wait_for("shop", "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'orders' AND l.mode = 'RowExclusiveLock'", "1");
    let log = p.path().join("migrate.log");
    let mut migrate = p
        .dbward(&url)
        .arg("migrate")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The build waits for the writer: its index is in the catalog, not valid.
    pg.wait_for(
        "shop",
        "SELECT count(*) FROM pg_index WHERE indexrelid = to_regclass('orders_customer_idx') AND NOT indisvalid",
        "1",
    );
    migrate.kill().unwrap();
    migrate.wait().unwrap();
    // Its session ends (the server checks the client every second).
    pg.wait_for(
        "shop",
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY orders_customer_idx%'",
        "0",
    );
    writer.kill().unwrap();
    writer.wait().unwrap();
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('orders_customer_idx')"
        ),
        "f",
        "the interrupted build left its INVALID index"
    );
    let (code, _, err) = run(p.dbward(&url).arg("migrate"));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("dropping the INVALID index public.orders_customer_idx"),
        "{err}"
    );
    pg_done(&pg, "shop", "rerun");
}

/// The guard's restore undoes the whole deploy, its non-transactional file included: the index
/// it built is gone, the one it dropped is back, the update it made is undone.
#[test]
fn the_guard_undoes_a_deploy_whose_file_ran_outside_a_transaction() {
    let (pg, url, p) = shop();
    pending(&p);
    let (code, _, err) = run(&mut migrate(&p, &url));
    assert_eq!(code, 0, "{err}");
    pg_done(&pg, "shop", "migrate");
    let server = common::Http::status(503);
    let (code, _, err) = run(&mut crate::health::guard(&p, &url, &server.url()));
    assert_eq!(code, 5, "{err}");
    assert_eq!(head(&pg), "1");
    assert_eq!(
        pg.psql("shop", "SELECT to_regclass('orders_customer_idx') IS NULL AND to_regclass('orders_old_idx') IS NOT NULL AND (SELECT note FROM orders WHERE id = 1) = ''"),
        "t"
    );
}

/// A concurrent unique build over duplicates fails: the batch before it stays committed, the
/// deploy is recorded as stopped part way under its pre-deploy snapshot, and the rerun (once the
/// data is fixed) resumes without a new snapshot and rebuilds the index its own attempt left
/// INVALID.
#[test]
fn a_failed_build_stops_the_deploy_part_way_and_the_rerun_resumes_under_the_same_snapshot() {
    let (pg, url, p) = shop();
    p.migration("V2__code.sql", "ALTER TABLE orders ADD COLUMN code int;\nUPDATE orders SET code = id % 1000;\n")
        .migration(
            "V3__unique.sql",
            "-- dbward:no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY orders_code_key ON orders (code);\n",
        )
        .migration("V4__later.sql", "ALTER TABLE orders ADD COLUMN later int;\n");
    let taken_before = std::fs::read_dir(p.path().join(".dbward/snapshots/shop"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("-pre-deploy-")
        })
        .count();
    let (code, _, err) = run(p.dbward(&url).arg("migrate"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("V3__unique.sql:2:1 failed at statement 1 of 1")
            && err.contains("could not create unique index")
            && err.contains("committed before it: V2__code.sql")
            && err.contains("covers the whole deploy"),
        "{err}"
    );
    assert_eq!(head(&pg), "2");
    let state = p.path().join(".dbward");
    let record =
        json(&std::fs::read_to_string(state_file(&state, "last-deploy", "shop").unwrap()).unwrap());
    let snapshot = record["pre_deploy_snapshot"].as_str().unwrap().to_string();
    assert!(record["unfinished"].as_str().is_some(), "{record}");
    let snapshots = |p: &Project| {
        std::fs::read_dir(p.path().join(".dbward/snapshots/shop"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains("-pre-deploy-")
            })
            .count()
    };
    assert_eq!(
        snapshots(&p),
        taken_before + 2,
        "one snapshot: data and manifest"
    );

    pg.psql("shop", "UPDATE orders SET code = id");
    let (code, _, err) = run(p.dbward(&url).arg("migrate"));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("its pre-deploy snapshot {snapshot} covers it")),
        "{err}"
    );
    assert!(
        err.contains("dropping the INVALID index public.orders_code_key"),
        "{err}"
    );
    assert_eq!(
        snapshots(&p),
        taken_before + 2,
        "no new snapshot for the resumed deploy"
    );
    let record =
        json(&std::fs::read_to_string(state_file(&state, "last-deploy", "shop").unwrap()).unwrap());
    assert_eq!(record["pre_deploy_snapshot"], snapshot.as_str());
    assert!(record["unfinished"].is_null(), "{record}");
    assert_eq!(record["applied"], serde_json::json!([2, 3, 4]));
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('orders_code_key')"
        ),
        "t"
    );
    // The snapshot undoes the whole deploy: V2's column is gone with the rest.
    let (code, _, err) =
        run(p
            .dbward(&url)
            .args(["restore", "pre-deploy", "--yes", "--terminate-connections"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(head(&pg), "1");
    assert_eq!(
        pg.psql("shop", "SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'code'"),
        "0"
    );
}

/// An INVALID index that no run of dbward started is not dbward's to drop: `IF NOT EXISTS`
/// accepts it, the validity check fails naming it, and it is still there.
#[test]
fn an_invalid_index_dbward_did_not_start_is_named_and_left_alone() {
    let (pg, url, p) = shop();
    // Somebody's failed build by hand.
    let out = Command::new(common::pg_bindir().join("psql"))
        .args([
            "-X",
            "-q",
            &url,
            "-c",
            "CREATE UNIQUE INDEX CONCURRENTLY orders_customer_idx ON orders (customer)",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    p.migration(
        "V2__index.sql",
        "-- dbward:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS orders_customer_idx ON orders (customer);\n",
    );
    let (code, _, err) = run(p.dbward(&url).arg("migrate"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("the index public.orders_customer_idx it builds is INVALID")
            && err.contains("DROP INDEX CONCURRENTLY public.orders_customer_idx;"),
        "{err}"
    );
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('orders_customer_idx')"
        ),
        "f",
        "left as it was"
    );
}

fn sqlite_project(p: &Project) {
    p.migration(
        "V1__items.sql",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, note TEXT NOT NULL DEFAULT '');\nINSERT INTO items (note) VALUES ('');\n",
    );
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
    assert_eq!(code, 0, "{err}");
    p.migration(
        "V2__compact.sql",
        "-- dbward:no-transaction\nUPDATE items SET note = note || 'x' WHERE id = 1;\nVACUUM;\nCREATE INDEX items_note ON items (note);\n",
    )
    .migration("V3__extra.sql", "ALTER TABLE items ADD COLUMN extra INTEGER;\n");
}

fn sqlite_done(db: &Path, at: &str) {
    assert_eq!(sqlite(db, "PRAGMA integrity_check"), "ok", "{at}");
    assert_eq!(
        sqlite(db, "SELECT note FROM items WHERE id = 1"),
        "x",
        "{at}: the update ran once"
    );
    assert_eq!(
        sqlite(db, "SELECT group_concat(version) FROM (SELECT version FROM refinery_schema_history ORDER BY version)"),
        "1,2,3",
        "{at}"
    );
    assert_eq!(
        sqlite(db, "SELECT count(*) FROM dbward_statement_progress"),
        "0",
        "{at}"
    );
    assert_eq!(
        sqlite(
            db,
            "SELECT count(*) FROM sqlite_master WHERE name = 'items_note'"
        ),
        "1",
        "{at}"
    );
}

#[test]
fn sqlite_vacuum_in_a_marked_file_and_a_stop_at_any_statement() {
    let p = Project::new();
    sqlite_project(&p);
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
    assert_eq!(code, 0, "{err}");
    sqlite_done(&p.path().join("app.db"), "migrate");
    for point in ["migrate-statement-started", "migrate-statement-ran"] {
        for nth in 1..=3 {
            // `ran` is met only by VACUUM, statement 2: its first meeting.
            if point == "migrate-statement-ran" && nth > 1 {
                continue;
            }
            for how in [Stop::Error, Stop::Kill] {
                let p = Project::new();
                sqlite_project(&p);
                let at = format!("{point}@{nth} ({how:?})");
                stop_at(migrate(&p, "sqlite:app.db"), point, nth, how);
                let db = p.path().join("app.db");
                assert_eq!(
                    sqlite(&db, "SELECT max(version) FROM refinery_schema_history"),
                    "1",
                    "{at}"
                );
                let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
                assert_eq!(code, 0, "{at}: the rerun: {err}");
                sqlite_done(&db, &at);
            }
        }
    }
}

/// A partly applied file may change only where it has not run: a completed statement edited is
/// refused (exit 3, nothing run); the failed statement fixed is run, and the file completes.
#[test]
fn a_completed_statement_may_not_change_the_failed_one_may() {
    let p = Project::new();
    p.migration("V1__items.sql", "CREATE TABLE items (id INTEGER PRIMARY KEY, note TEXT);\n")
        .migration(
            "V2__two.sql",
            "-- dbward:no-transaction\nINSERT INTO items (note) VALUES ('one');\nINSERT INTO nowhere VALUES (1);\n",
        );
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("V2__two.sql:3:1 failed at statement 2 of 2")
            && err.contains("its statement 1 completed and stays applied")
            && err.contains("resumes at statement 2"),
        "{err}"
    );
    let (code, out, err) = run(p.dbward("sqlite:app.db").arg("status"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("partly applied: 1 of 2 statements"), "{out}");
    p.migration(
        "V2__two.sql",
        "-- dbward:no-transaction\nINSERT INTO items (note) VALUES ('uno');\nINSERT INTO nowhere VALUES (1);\n",
    );
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("statement 1 (line 2) completed on")
            && err.contains("its text has changed since"),
        "{err}"
    );
    p.migration(
        "V2__two.sql",
        "-- dbward:no-transaction\nINSERT INTO items (note) VALUES ('one');\nINSERT INTO items (note) VALUES ('two');\n",
    );
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
    assert_eq!(code, 0, "{err}");
    let db = p.path().join("app.db");
    assert_eq!(
        sqlite(&db, "SELECT group_concat(note) FROM items"),
        "one,two"
    );
}

/// A statement that cannot run in a transaction waits for the database's lock as long as it
/// takes (the default), saying every 10 s what it waits for, and runs once the lock is free. The
/// other connection takes its write lock once the statement's record is written (a failure
/// point holds the run there): the record itself waits `table_lock_timeout`, as every write.
#[test]
fn sqlite_vacuum_waits_for_the_lock_and_says_so() {
    let p = Project::new();
    p.migration(
        "V1__items.sql",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, note TEXT);\n",
    );
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    p.migration("V2__vacuum.sql", "-- dbward:no-transaction\nVACUUM;\n");
    let db = p.path().join("app.db");
    let marks = tempfile::tempdir().unwrap();
    let log = p.path().join("migrate.log");
    let mut migrate = migrate(&p, "sqlite:app.db")
        .env("DBWARD_FAILPOINTS", "migrate-statement-started=wait")
        .env("DBWARD_FAILPOINT_DIR", marks.path())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marks.path().join("migrate-statement-started").exists() {
        assert!(Instant::now() < deadline, "never reached the statement");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut holder = Command::new("sqlite3")
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(
        holder.stdin.as_mut().unwrap(),
        "BEGIN IMMEDIATE; INSERT INTO items (note) VALUES ('held'); SELECT 'holding';"
    )
    .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "holding");
    std::fs::write(marks.path().join("migrate-statement-started.go"), "").unwrap();
    crate::migrate_postgres::wait_said(
        &log,
        "V2__vacuum.sql: statement 1 of 1 (line 2) has waited 10s for the database's lock",
    );
    holder
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"COMMIT;\n.quit\n")
        .unwrap();
    holder.wait().unwrap();
    let status = migrate.wait().unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert_eq!(
        sqlite(&db, "SELECT count(*) FROM items WHERE note = 'held'"),
        "1"
    );
    assert_eq!(
        sqlite(&db, "SELECT max(version) FROM refinery_schema_history"),
        "2"
    );
}

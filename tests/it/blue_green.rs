//! The guard when the old release is still serving (blue-green, rolling deploys): it measures
//! what a restore would discard, restores only a batch that is not purely additive when told
//! `health.on_failure = "restore-if-destructive"`, and sees other connections to a SQLite
//! database through SQLite's own lock on the WAL index, also from another PID namespace.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{json, run, sqlite, Http, Pg, Project};

const DB: &str = "sqlite:app.db";

fn guard(p: &Project, db: &str, server: &Http, on_failure: &str) -> Command {
    let mut c = p.dbward(db);
    c.args([
        "health",
        "--restore-on-failure",
        "--timeout",
        "1s",
        "--interval",
        "200ms",
        "--on-failure",
        on_failure,
        "--url",
        &server.url(),
        "--json",
    ]);
    c
}

/// V1 with two orders; then a deploy that applies `batch` as V2.
fn deployed(p: &Project, batch: &str) {
    p.migration(
        "V1__orders.sql",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER NOT NULL);\n",
    );
    assert_eq!(run(p.dbward(DB).arg("migrate")).0, 0);
    sqlite(
        &p.path().join("app.db"),
        "PRAGMA journal_mode = WAL; INSERT INTO orders (total) VALUES (10), (20);",
    );
    p.migration("V2__next.sql", batch);
    let (code, _, err) = run(p.dbward(DB).arg("migrate"));
    assert_eq!(code, 0, "{err}");
}

/// The old slot keeps taking orders after the deploy.
fn old_slot_writes(p: &Project, n: usize) {
    for i in 0..n {
        sqlite(
            &p.path().join("app.db"),
            &format!("INSERT INTO orders (total) VALUES ({})", 100 + i),
        );
    }
}

#[test]
fn an_additive_batch_is_not_restored_and_the_old_slots_writes_are_counted() {
    let p = Project::new();
    deployed(
        &p,
        "ALTER TABLE orders ADD COLUMN coupon TEXT;\nCREATE TABLE coupons (code TEXT PRIMARY KEY);\nCREATE INDEX orders_total ON orders (total);\n",
    );
    old_slot_writes(&p, 3);
    let server = Http::status(503);
    let (code, out, err) = run(&mut guard(&p, DB, &server, "restore-if-destructive"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("purely additive"), "{err}");
    assert!(
        err.contains("would discard 3 write(s)") && err.contains("orders: 3"),
        "{err}"
    );
    let doc = json(&out);
    assert_eq!(doc["would_discard"]["orders"], 3, "{doc}");
    assert_eq!(
        sqlite(&p.path().join("app.db"), "SELECT count(*) FROM orders"),
        "5",
        "the old slot's writes stay"
    );
    // The deploy log says the guard left it.
    let (_, out, _) = run(p.dbward(DB).args(["deploys", "--json"]));
    let log = json(&out);
    assert_eq!(log["deploys"][0]["event"], "guard", "{log}");
    assert!(log["deploys"][0]["outcome"]
        .as_str()
        .unwrap()
        .contains("not restored"));

    // report: never restores, says the same.
    let (code, _, err) = run(&mut guard(&p, DB, &server, "report"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("health.on_failure = report"), "{err}");
}

#[test]
fn a_destructive_batch_is_restored_and_says_what_it_discarded() {
    let p = Project::new();
    deployed(&p, "ALTER TABLE orders RENAME COLUMN total TO amount;\n");
    old_slot_writes_after_rename(&p, 2);
    let server = Http::status(503);
    let (code, out, err) = run(&mut guard(&p, DB, &server, "restore-if-destructive"));
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("not purely additive"), "{err}");
    assert!(err.contains("discarded 2 write(s)"), "{err}");
    assert_eq!(json(&out)["discarded"]["orders"], 2);
    assert_eq!(
        sqlite(&p.path().join("app.db"), "SELECT count(*) FROM orders"),
        "2"
    );
}

fn old_slot_writes_after_rename(p: &Project, n: usize) {
    for i in 0..n {
        sqlite(
            &p.path().join("app.db"),
            &format!("INSERT INTO orders (amount) VALUES ({})", 100 + i),
        );
    }
}

/// A WAL-mode connection held open by another process until it is killed.
fn holder(p: &Project) -> Child {
    let child = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys, time\n\
             c = sqlite3.connect('app.db')\n\
             c.execute('SELECT count(*) FROM orders').fetchall()\n\
             print('open', flush=True)\n\
             time.sleep(120)\n",
        )
        .current_dir(p.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
}

fn wait_open(child: &mut Child) {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "open");
}

#[test]
fn a_connection_from_another_pid_namespace_is_seen_through_the_wal_index_lock() {
    let p = Project::new();
    deployed(&p, "CREATE TABLE t (id INTEGER);\n");
    let mut app = holder(&p);
    wait_open(&mut app);

    // Here, /proc shows it.
    let (code, _, err) = run(p.dbward(DB).args(["restore", "pre-deploy", "--yes"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&format!("pid {}", app.id())), "{err}");

    // dbward in a PID namespace of its own, with its own /proc (another container, as far as
    // /proc goes): only SQLite's lock on the WAL index shows the connection.
    let mut c = Command::new("unshare");
    c.args([
        "--pid",
        "--fork",
        "--mount-proc",
        env!("CARGO_BIN_EXE_dbward"),
    ])
    .current_dir(p.path())
    .args(["--database", DB, "restore", "pre-deploy", "--yes"]);
    for (k, _) in std::env::vars() {
        if k.starts_with("DBWARD_") {
            c.env_remove(k);
        }
    }
    let (code, _, err) = run(&mut c);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("another container or PID namespace"), "{err}");

    let _ = app.kill();
    let _ = app.wait();
    std::thread::sleep(Duration::from_millis(50));
    let (code, _, err) = run(p.dbward(DB).args(["restore", "pre-deploy", "--yes"]));
    assert_eq!(code, 0, "nobody connected now: {err}");
}

#[test]
fn postgres_writes_since_the_deploy_are_measured_from_pg_stat() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    p.migration(
        "V1__orders.sql",
        "CREATE TABLE orders (id serial PRIMARY KEY, total int NOT NULL);\n",
    );
    assert_eq!(run(p.dbward(&url).arg("migrate")).0, 0);
    pg.psql("shop", "INSERT INTO orders (total) VALUES (1), (2)");
    p.migration(
        "V2__coupon.sql",
        "ALTER TABLE orders ADD COLUMN coupon text;\n",
    );
    let (code, _, err) = run(p.dbward(&url).arg("migrate"));
    assert_eq!(code, 0, "{err}");
    // The old release: four inserts and an update, each in its own session.
    for sql in [
        "INSERT INTO orders (total) VALUES (3), (4)",
        "INSERT INTO orders (total) VALUES (5), (6)",
        "UPDATE orders SET total = 7 WHERE id = 1",
    ] {
        pg.psql("shop", sql);
    }
    let server = Http::status(503);
    let mut measured = None;
    // Statistics arrive within about a second of a session's end.
    for _ in 0..20 {
        let (code, out, err) = run(&mut guard(&p, &url, &server, "report"));
        assert_eq!(code, 1, "{err}");
        let n = json(&out)["would_discard"]["public.orders"].as_i64();
        if n == Some(5) {
            measured = n;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(measured, Some(5), "4 inserts + 1 update since the deploy");
    let (code, _, err) = run(&mut guard(&p, &url, &server, "restore"));
    assert_eq!(code, 5, "{err}");
    assert_eq!(pg.psql("shop", "SELECT count(*) FROM orders"), "2");
}

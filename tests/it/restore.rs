//! `dbward restore`: verified before anything changes, swapped in atomically, the replaced
//! database always kept; against real SQLite files and PostgreSQL.

use crate::common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{json, run, sqlite, Pg, Project};

fn app(p: &Project) -> std::path::PathBuf {
    p.path().join("app.db")
}

/// A migrated SQLite app with `rows` rows and one snapshot of that state; returns its id.
fn app_with_snapshot(p: &Project, rows: u32) -> String {
    p.migration(
        "V1__items.sql",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n",
    );
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    sqlite(&app(p), &format!("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) INSERT INTO items (name) SELECT 'item ' || i || ' ' || hex(randomblob(64)) FROM n;"));
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["backup", "--json"]));
    assert_eq!(code, 0, "{err}");
    json(&out)["snapshot"]["id"].as_str().unwrap().to_string()
}

fn kept_files(p: &Project) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with("app.db.replaced-") && !n.ends_with("-wal") && !n.ends_with("-shm")
        })
        .collect();
    v.sort();
    v
}

#[test]
fn restore_latest_puts_the_snapshot_back_and_keeps_the_replaced_file() {
    let p = Project::new();
    let id = app_with_snapshot(&p, 100);
    sqlite(
        &app(&p),
        "INSERT INTO items (name) VALUES ('after the snapshot');",
    );
    let (code, out, err) = run(p
        .dbward("sqlite:app.db")
        .args(["restore", "latest", "--yes", "--json"]));
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    assert_eq!(doc["snapshot"], id.as_str());
    assert_eq!(sqlite(&app(&p), "SELECT count(*) FROM items"), "100");
    let kept = kept_files(&p);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        sqlite(&p.path().join(&kept[0]), "SELECT count(*) FROM items"),
        "101",
        "the replaced database keeps the newer row"
    );
}

#[test]
fn without_a_terminal_restore_needs_yes() {
    let p = Project::new();
    app_with_snapshot(&p, 10);
    let (code, _, err) = run(p.dbward("sqlite:app.db").args(["restore", "latest"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--yes"), "{err}");
}

#[test]
fn a_corrupted_snapshot_is_refused_and_the_live_database_is_unchanged() {
    let p = Project::new();
    let id = app_with_snapshot(&p, 100);
    let object = p
        .path()
        .join(format!(".dbward/snapshots/app/{id}.sqlite.zst"));
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&object, bytes).unwrap();
    sqlite(&app(&p), "INSERT INTO items (name) VALUES ('live');");
    let before = std::fs::read(app(&p)).unwrap();
    let (code, _, err) = run(p.dbward("sqlite:app.db").args(["restore", &id, "--yes"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("failed its checksum"), "{err}");
    assert_eq!(
        std::fs::read(app(&p)).unwrap(),
        before,
        "the live file is byte for byte the same"
    );
    assert!(kept_files(&p).is_empty());
}

#[test]
fn a_database_held_open_is_refused_unless_forced() {
    let p = Project::new();
    app_with_snapshot(&p, 50);
    // Another process holds the database open.
    let mut holder = Command::new("sqlite3")
        .arg(app(&p))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(
        holder.stdin.as_mut().unwrap(),
        "SELECT count(*) FROM items;"
    )
    .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["restore", "latest", "--yes"]));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!("pid {}", holder.id())),
        "names the holder: {err}"
    );
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["restore", "latest", "--yes", "--force"]));
    assert_eq!(code, 0, "{err}");
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(sqlite(&app(&p), "SELECT count(*) FROM items"), "50");
}

#[test]
fn restore_pre_deploy_undoes_the_last_migrate_and_to_path_leaves_the_live_one_alone() {
    let p = Project::new();
    app_with_snapshot(&p, 10);
    p.migration(
        "V2__drop_names.sql",
        "ALTER TABLE items DROP COLUMN name;\n",
    );
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["migrate", "--json"]));
    assert_eq!(code, 0, "{err}");
    let pre = json(&out)["snapshot"].as_str().unwrap().to_string();

    let (code, out, err) = run(p.dbward("sqlite:app.db").args([
        "restore",
        "pre-deploy",
        "--yes",
        "--to",
        "copy.db",
        "--json",
    ]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["snapshot"], pre.as_str());
    assert_eq!(
        sqlite(
            &p.path().join("copy.db"),
            "SELECT max(version) FROM refinery_schema_history"
        ),
        "1"
    );
    assert_eq!(
        sqlite(&app(&p), "SELECT max(version) FROM refinery_schema_history"),
        "2",
        "--to never touches the live database"
    );

    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["restore", "pre-deploy", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        sqlite(&app(&p), "SELECT max(version) FROM refinery_schema_history"),
        "1"
    );
    assert_eq!(sqlite(&app(&p), "SELECT count(name) FROM items"), "10");
}

#[test]
fn kill_9_during_a_restore_never_leaves_a_broken_database_at_the_live_path() {
    let p = Project::new();
    app_with_snapshot(&p, 150_000);
    sqlite(&app(&p), "DELETE FROM items WHERE id > 1000;");
    // Kill at several points: early (fetching), middle (decompressing, checking), late (swapping).
    for delay_ms in [0u64, 20, 50, 100, 150, 200, 250, 300, 350, 450] {
        let mut child = p
            .dbward("sqlite:app.db")
            .args(["restore", "latest", "--yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
        assert_eq!(
            sqlite(&app(&p), "PRAGMA integrity_check"),
            "ok",
            "after a kill at {delay_ms} ms"
        );
        let rows = sqlite(&app(&p), "SELECT count(*) FROM items");
        assert!(
            rows == "1000" || rows == "150000",
            "old or restored, never partial: {rows} after {delay_ms} ms"
        );
        if rows == "150000" {
            sqlite(&app(&p), "DELETE FROM items WHERE id > 1000;");
        }
    }
    // The next restore cleans what the killed ones left, and works.
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["restore", "latest", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(sqlite(&app(&p), "SELECT count(*) FROM items"), "150000");
    // Every run directory a killed restore left was swept, except one killed between its
    // `mkdir` and marking its lock file: that one holds nothing (at most an empty lock file),
    // and a run removes it once it is a minute old (no run can be setting it up by then).
    let strays: Vec<(String, Vec<String>)> = std::fs::read_dir(p.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".dbward-"))
        .map(|e| {
            let inside: Vec<String> = std::fs::read_dir(e.path())
                .unwrap()
                .filter_map(|f| f.ok())
                .map(|f| f.file_name().to_string_lossy().into_owned())
                .collect();
            (e.file_name().to_string_lossy().into_owned(), inside)
        })
        .collect();
    for (dir, inside) in &strays {
        let empty_lock = inside.is_empty()
            || (inside == &["lock"]
                && std::fs::read(p.path().join(dir).join("lock"))
                    .unwrap()
                    .is_empty());
        assert!(empty_lock, "{dir} holds {inside:?}");
    }
}

const PG_SCHEMA: &str = "CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE TABLE accounts (id serial PRIMARY KEY, token text NOT NULL DEFAULT encode(gen_random_bytes(8), 'hex'));
CREATE VIEW account_ids AS SELECT id FROM accounts;
";

#[test]
fn postgres_restore_refuses_open_sessions_and_terminates_them_when_asked() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    p.migration("V1__schema.sql", PG_SCHEMA);
    assert_eq!(run(p.dbward(&url).args(["migrate", "--no-snapshot"])).0, 0);
    pg.psql("shop", "CREATE ROLE app LOGIN; GRANT SELECT ON accounts TO app; INSERT INTO accounts DEFAULT VALUES; INSERT INTO accounts DEFAULT VALUES;");
    let (code, out, err) = run(p.dbward(&url).args(["backup", "--json"]));
    assert_eq!(code, 0, "{err}");
    let id = json(&out)["snapshot"]["id"].as_str().unwrap().to_string();
    pg.psql("shop", "INSERT INTO accounts DEFAULT VALUES;");

    // The application is connected.
    let mut app = pg.session("shop");
    writeln!(app.stdin.as_mut().unwrap(), "SELECT 1;").unwrap();
    pg.wait_for("postgres", "SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop' AND application_name = 'psql'", "1");
    let (code, _, err) = run(p.dbward(&url).args(["restore", &id, "--yes"]));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("session(s) are connected to shop") && err.contains("psql"),
        "lists them: {err}"
    );
    assert_eq!(
        pg.psql("shop", "SELECT count(*) FROM accounts"),
        "3",
        "unchanged"
    );

    let (code, out, err) =
        run(p
            .dbward(&url)
            .args(["restore", &id, "--yes", "--terminate-connections", "--json"]));
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    assert_eq!(doc["terminated"].as_array().unwrap().len(), 1);
    let _ = app.kill();
    let _ = app.wait();
    assert_eq!(pg.psql("shop", "SELECT count(*) FROM account_ids"), "2");
    // Privileges and extensions survive; the replaced database is kept with its data.
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT has_table_privilege('app', 'accounts', 'SELECT')"
        ),
        "t"
    );
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT count(*) FROM pg_extension WHERE extname = 'pgcrypto'"
        ),
        "1"
    );
    let replaced = doc["replaced"].as_str().unwrap();
    assert!(replaced.starts_with("shop_replaced_"), "{replaced}");
    assert_eq!(pg.psql(replaced, "SELECT count(*) FROM accounts"), "3");
}

#[test]
fn postgres_corrupted_snapshot_is_refused() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    p.migration("V1__schema.sql", PG_SCHEMA);
    assert_eq!(run(p.dbward(&url).args(["migrate", "--no-snapshot"])).0, 0);
    let (code, out, err) = run(p.dbward(&url).args(["backup", "--json"]));
    assert_eq!(code, 0, "{err}");
    let data = p
        .path()
        .join(".dbward/snapshots")
        .join(json(&out)["snapshot"]["data_key"].as_str().unwrap());
    let len = std::fs::metadata(&data).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let (code, _, err) =
        run(p
            .dbward(&url)
            .args(["restore", "latest", "--yes", "--terminate-connections"]));
    assert_eq!(code, 3, "{err}");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'shop\\_%'"
        ),
        "0",
        "no restore database left"
    );
}

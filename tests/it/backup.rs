//! `dbward backup`, `snapshots` and the pre-deploy snapshot of `migrate`, against real SQLite
//! files and PostgreSQL, into a local directory store. Snapshots are checked with the standard
//! tools alone: `zstd -d`, `sqlite3`, `pg_restore`, `sha256sum`.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{json, run, tool, Pg, Project};

fn data_path(p: &Project, manifest: &serde_json::Value) -> PathBuf {
    p.path()
        .join(".dbward/snapshots")
        .join(manifest["data_key"].as_str().unwrap())
}

/// The ids `dbward snapshots` lists, newest first.
fn snapshot_ids(p: &Project, db: &str) -> Vec<String> {
    common::listed_ids(p.dbward(db).args(["snapshots", "--json"]))
}

fn backup(p: &Project, db: &str) -> serde_json::Value {
    let (code, out, err) = run(p.dbward(db).args(["backup", "--json"]));
    assert_eq!(code, 0, "{err}");
    json(&out)["snapshot"].clone()
}

/// The manifest's SHA-256 and size are those of the stored object; `zstd -d` decodes it.
fn check_object(path: &Path, m: &serde_json::Value) -> PathBuf {
    let sum = tool(Command::new("sha256sum").arg(path));
    assert_eq!(
        sum.split_whitespace().next().unwrap(),
        m["sha256"].as_str().unwrap()
    );
    assert_eq!(
        std::fs::metadata(path).unwrap().len(),
        m["stored_bytes"].as_u64().unwrap()
    );
    let out = path.with_extension("decoded");
    tool(
        Command::new("zstd")
            .args(["-q", "-d", "-f"])
            .arg(path)
            .arg("-o")
            .arg(&out),
    );
    assert_eq!(
        std::fs::metadata(&out).unwrap().len(),
        m["raw_bytes"].as_u64().unwrap()
    );
    out
}

#[test]
fn sqlite_snapshot_under_a_concurrent_writer_restores_with_standard_tools() {
    let p = Project::new();
    p.migration(
        "V1__events.sql",
        "CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT NOT NULL);\n",
    );
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    let db = p.path().join("app.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000) INSERT INTO events (body) SELECT printf('event %d with some padding text', i) FROM n;").unwrap();
    }
    // The application keeps committing while the snapshot is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, db) = (stop.clone(), db.clone());
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            let mut commits = 0;
            while !stop.load(Ordering::Relaxed) {
                c.execute("INSERT INTO events (body) VALUES ('live')", [])
                    .unwrap();
                commits += 1;
            }
            commits
        })
    };
    let m = backup(&p, "sqlite:app.db");
    stop.store(true, Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);

    assert_eq!(m["kind"], "manual");
    assert_eq!(m["format"], "sqlite");
    assert_eq!(m["migration_head"]["version"], 1);
    let restored = check_object(&data_path(&p, &m), &m);
    assert_eq!(
        tool(
            Command::new("sqlite3")
                .arg(&restored)
                .arg("PRAGMA integrity_check")
        ),
        "ok"
    );
    let rows: u64 = tool(
        Command::new("sqlite3")
            .arg(&restored)
            .arg("SELECT count(*) FROM events"),
    )
    .parse()
    .unwrap();
    assert_eq!(
        rows,
        m["row_counts"]["events"].as_u64().unwrap(),
        "row counts come from the copy itself"
    );
    assert!(rows >= 200_000);
}

#[test]
fn snapshots_lists_newest_first_and_migrate_takes_a_pre_deploy_snapshot_only_when_needed() {
    let p = Project::new();
    p.migration("V1__a.sql", "CREATE TABLE a (id int);\n");
    // First deploy: the file does not exist, nothing to protect, no snapshot.
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["migrate", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert!(json(&out)["snapshot"].is_null());

    p.migration("V2__b.sql", "CREATE TABLE b (id int);\n");
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["migrate", "--json"]));
    assert_eq!(code, 0, "{err}");
    let pre = json(&out)["snapshot"].as_str().unwrap().to_string();
    assert!(pre.contains("-pre-deploy-"), "{pre}");

    // Nothing pending: no snapshot.
    let (_, out, _) = run(p.dbward("sqlite:app.db").args(["migrate", "--json"]));
    assert!(json(&out)["snapshot"].is_null());

    let manual = backup(&p, "sqlite:app.db");
    let (code, out, _) = run(p.dbward("sqlite:app.db").args(["snapshots", "--json"]));
    assert_eq!(code, 0);
    let ids: Vec<String> = json(&out)["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().into())
        .collect();
    assert_eq!(
        ids,
        [manual["id"].as_str().unwrap().to_string(), pre.clone()]
    );
    let pre_manifest = &json(&out)["snapshots"][1];
    assert_eq!(
        pre_manifest["migration_head"]["version"], 1,
        "taken before V2 applied"
    );

    let (_, text, _) = run(p.dbward("sqlite:app.db").arg("snapshots"));
    assert!(text.contains(&pre) && text.contains("pre-deploy"), "{text}");
}

/// `snapshots --limit N` and `restore latest` read the newest manifests, not all of them: a
/// damaged manifest among the oldest of 40 is not met (a full listing reports it), and the
/// newest are the full listing's first ones.
#[test]
fn limited_listings_and_latest_read_only_the_newest_manifests() {
    let p = Project::new();
    p.migration("V1__a.sql", "CREATE TABLE a (id int);\n");
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    let real = backup(&p, "sqlite:app.db");
    let folder = p.path().join(".dbward/snapshots/app");
    // 39 older snapshots: the real manifest under ids an hour apart, going back (their data
    // objects are not needed: nothing reads them).
    let id = real["id"].as_str().unwrap();
    let at = time::PrimitiveDateTime::parse(
        &id[..16],
        time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"),
    )
    .unwrap();
    let mut older = Vec::new();
    for i in 1..40 {
        let t = at - time::Duration::hours(i);
        let sid = format!(
            "{}-scheduled-{i:04x}",
            t.format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .unwrap()
        );
        let mut m = real.clone();
        m["id"] = sid.clone().into();
        m["kind"] = "scheduled".into();
        m["created_at"] = format!(
            "{}Z",
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]"
            ))
            .unwrap()
        )
        .into();
        m["data_key"] = real["data_key"].as_str().unwrap().replace(id, &sid).into();
        std::fs::write(folder.join(format!("{sid}.json")), m.to_string()).unwrap();
        older.push(sid);
    }
    let oldest = older.last().unwrap();
    std::fs::write(folder.join(format!("{oldest}.json")), "{ not a manifest").unwrap();

    let (code, out, err) =
        run(p
            .dbward("sqlite:app.db")
            .args(["snapshots", "--limit", "2", "--json"]));
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    let ids: Vec<&str> = doc["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id, older[0].as_str()]);
    assert_eq!(doc["damaged"].as_array().unwrap().len(), 0, "{doc}");
    let (_, out, _) = run(p.dbward("sqlite:app.db").args(["snapshots", "--json"]));
    let full = json(&out);
    assert_eq!(full["snapshots"].as_array().unwrap().len(), 39);
    assert_eq!(full["damaged"].as_array().unwrap().len(), 1);

    // restore latest finds the real newest without meeting the damaged one.
    let (code, out, err) = run(p
        .dbward("sqlite:app.db")
        .args(["--json", "restore", "latest", "--to", "copy.db", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["snapshot"], id);
    assert!(!err.contains("skipping"), "{err}");
}

#[test]
fn a_failed_pre_deploy_snapshot_applies_nothing() {
    let p = Project::new();
    p.migration("V1__a.sql", "CREATE TABLE a (id int);\n");
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    p.migration("V2__b.sql", "CREATE TABLE b (id int);\n");
    // The store is a file where a directory should be.
    std::fs::write(p.path().join("not-a-dir"), "x").unwrap();
    let (code, _, err) =
        run(p
            .dbward("sqlite:app.db")
            .args(["--store", "file://./not-a-dir/sub", "migrate"]));
    assert_eq!(code, 1, "{err}");
    let (_, out, _) = run(p.dbward("sqlite:app.db").args(["status", "--json"]));
    assert_eq!(json(&out)["pending"], 1);
}

const PG_SCHEMA: &str = "CREATE TABLE users (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL UNIQUE);
CREATE SEQUENCE invoice_no START 1000;
CREATE TABLE orders (id serial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users (id), total numeric(10,2));
CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100;
CREATE FUNCTION order_count(uid bigint) RETURNS bigint LANGUAGE sql STABLE AS $$ SELECT count(*) FROM orders WHERE user_id = uid $$;
";

#[test]
fn postgres_snapshot_restores_with_pg_restore() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    p.migration("V1__schema.sql", PG_SCHEMA);
    assert_eq!(run(p.dbward(&url).arg("migrate")).0, 0);
    pg.psql("shop", "INSERT INTO users (email) SELECT 'u' || i || '@example.com' FROM generate_series(1, 500) i; INSERT INTO orders (user_id, total) SELECT 1 + i % 500, i FROM generate_series(1, 3000) i; SELECT nextval('invoice_no'), nextval('invoice_no');");

    let m = backup(&p, &url);
    assert_eq!(m["format"], "pgdump");
    assert_eq!(m["engine"], "postgres");
    assert!(m["pg_dump_version"]
        .as_str()
        .unwrap()
        .starts_with(char::is_numeric));
    assert_eq!(m["row_counts"]["public.orders"], 3000);
    assert_eq!(m["row_counts"]["public.users"], 500);
    assert_eq!(m["migration_head"]["version"], 1);

    let dump = check_object(&data_path(&p, &m), &m);
    pg.restore_into("restored", &dump);
    assert_eq!(pg.psql("restored", "SELECT count(*) FROM orders"), "3000");
    assert_eq!(
        pg.psql("restored", "SELECT count(*) FROM big_orders"),
        "2900"
    );
    assert_eq!(pg.psql("restored", "SELECT order_count(1)"), "6");
    assert_eq!(pg.psql("restored", "SELECT nextval('invoice_no')"), "1002");
    assert_eq!(
        pg.psql(
            "restored",
            "SELECT max(version) FROM refinery_schema_history"
        ),
        "1"
    );
}

#[test]
fn a_pg_dump_that_fails_leaves_no_manifest() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    p.migration("V1__schema.sql", PG_SCHEMA);
    assert_eq!(run(p.dbward(&url).args(["migrate", "--no-snapshot"])).0, 0);
    // A role that can read every table but not a sequence: our row counts succeed, pg_dump
    // fails reading the sequence ("permission denied").
    pg.psql(
        "shop",
        "CREATE ROLE limited LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO limited;",
    );
    let limited = format!(
        "postgres://limited@127.0.0.1:{}/shop?sslmode=disable",
        pg.port
    );
    let (code, out, err) = run(p.dbward(&limited).args(["backup", "--json"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("pg_dump") && err.contains("permission denied"),
        "{err}"
    );
    assert_eq!(json(&out)["ok"], false);
    assert!(snapshot_ids(&p, &limited).is_empty());
    let dir = p.path().join(".dbward/snapshots/shop");
    // (The deploy log of the migrate above lives in `deploys/`.)
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .filter(|n| n != "deploys")
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "no data object or temp file left: {left:?}"
    );
}

#[test]
fn a_pg_dump_killed_mid_stream_leaves_no_manifest() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    p.migration("V1__schema.sql", PG_SCHEMA);
    assert_eq!(run(p.dbward(&url).args(["migrate", "--no-snapshot"])).0, 0);
    pg.psql(
        "shop",
        "INSERT INTO users (email) SELECT 'u' || i FROM generate_series(1, 20000) i;",
    );
    // The real pg_dump, killed after 4 KiB of output.
    let bin = tempfile::tempdir().unwrap();
    let real = Command::new("sh")
        .args(["-c", "command -v pg_dump"])
        .output()
        .unwrap();
    let real = common::stdout(&real).trim().to_string();
    let script = format!("#!/bin/sh\nif [ \"$1\" = --version ]; then exec {real} --version; fi\n{real} \"$@\" | head -c 4096\nexit 1\n");
    std::fs::write(bin.path().join("pg_dump"), script).unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(bin.path().join("pg_dump"))
        .status()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap()
    );
    let (code, _, err) = run(p
        .dbward(&url)
        .env("PATH", path)
        .arg("backup")
        .stdout(Stdio::null()));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("No manifest was written"), "{err}");
    assert!(snapshot_ids(&p, &url).is_empty());
}

#[test]
fn prune_keeps_what_the_policy_says_and_removes_old_orphans() {
    let p = Project::new();
    p.migration("V1__a.sql", "CREATE TABLE a (id int);\n");
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    let ids: Vec<String> = (0..4)
        .map(|_| {
            backup(&p, "sqlite:app.db")["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();

    // No policy: prune refuses rather than guess.
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("prune"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("[retention]"), "{err}");

    std::fs::write(p.path().join("dbward.toml"), "[retention]\nkeep_last = 2\n").unwrap();
    let dir = p.path().join(".dbward/snapshots/app");
    let old_orphan = dir.join("20200101T000000Z-manual-dead.sqlite.zst");
    let new_orphan = dir.join("29990101T000000Z-manual-beef.sqlite.zst");
    std::fs::write(&old_orphan, "x").unwrap();
    std::fs::write(&new_orphan, "x").unwrap();
    Command::new("touch")
        .args(["-d", "2 days ago"])
        .arg(&old_orphan)
        .status()
        .unwrap();

    let (code, out, err) = run(p
        .dbward("sqlite:app.db")
        .args(["prune", "--dry-run", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["removed"].as_array().unwrap().len(), 2);
    assert_eq!(
        snapshot_ids(&p, "sqlite:app.db").len(),
        4,
        "dry run removed nothing"
    );

    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("prune"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        snapshot_ids(&p, "sqlite:app.db"),
        [ids[3].clone(), ids[2].clone()]
    );
    assert!(
        !dir.join(format!("{}.sqlite.zst", ids[0])).exists(),
        "data of a pruned snapshot is gone"
    );
    assert!(
        !old_orphan.exists(),
        "an orphan older than a day is removed"
    );
    assert!(
        new_orphan.exists(),
        "a young orphan may be an upload in progress"
    );

    // backup applies retention itself.
    let newest = backup(&p, "sqlite:app.db");
    assert_eq!(
        snapshot_ids(&p, "sqlite:app.db"),
        [newest["id"].as_str().unwrap().to_string(), ids[3].clone()]
    );
}

/// Runs `cmd` to its end and returns its exit code and its own peak resident memory in KiB
/// (`wait4`'s rusage for that one child, not the largest of the test's children).
#[allow(clippy::zombie_processes)] // reaped by wait4 below, which std cannot see
fn peak_rss_kib(cmd: &mut Command) -> (i32, i64) {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our own child's, not waited for by anyone else (`child` is only dropped).
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4");
    (libc::WEXITSTATUS(status), usage.ru_maxrss)
}

/// The regression check for the streamed SQLite snapshot: a database in WAL mode is read page by
/// page into zstd, so the snapshot needs no temp space at all (the temp dir given is a plain
/// file: any staged copy would fail) and its peak memory does not grow with the database (a
/// database three times larger stays within a few MiB of the smaller one's peak, which includes
/// the binary and zstd's two workers' buffers). The absolute cap is for this unoptimized test
/// build, about 58 MiB here where the release build peaks near 40 MiB (bench/snapshots.sh
/// reports that one): 80 MiB leaves room for allocator timing without hiding a copy of the
/// database in memory.
#[test]
fn a_wal_snapshot_stages_nothing_and_its_memory_does_not_grow_with_the_database() {
    let p = Project::new();
    let no_temp = p.path().join("not-a-directory");
    std::fs::write(&no_temp, b"any staged copy fails here").unwrap();
    let mut peaks = Vec::new();
    for (name, mib) in [("small.db", 64), ("large.db", 192)] {
        let db = p.path().join(name);
        let c = rusqlite::Connection::open(&db).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        // Half random, half repetitive: zstd works on every window, as on real data.
        c.execute_batch(&format!(
            "CREATE TABLE blobs (id INTEGER PRIMARY KEY, body BLOB NOT NULL);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {})
             INSERT INTO blobs (body) SELECT randomblob(2048) || zeroblob(2048) FROM n;",
            mib * 256
        ))
        .unwrap();
        drop(c);
        let size = std::fs::metadata(&db).unwrap().len();
        assert!(size >= mib << 20, "{name}: {size} bytes");
        let url = format!("sqlite:{name}");
        let (code, peak) =
            peak_rss_kib(p.dbward(&url).arg("--temp-dir").arg(&no_temp).arg("backup"));
        assert_eq!(code, 0, "backup of {name} with no usable temp dir");
        let (code, out, err) = run(p.dbward(&url).args(["snapshots", "--json"]));
        assert_eq!(code, 0, "{err}");
        let m = &json(&out)["snapshots"][0];
        assert_eq!(m["row_counts"]["blobs"], mib * 256, "{m}");
        // Every page of the database as of the snapshot (the identity row dbward adds first
        // included).
        let pages: u64 = tool(Command::new("sqlite3").arg(&db).arg("PRAGMA page_count"))
            .parse()
            .unwrap();
        assert_eq!(
            m["raw_bytes"],
            pages * 4096,
            "the stream is the whole database: {m}"
        );
        peaks.push(peak);
    }
    let (small, large) = (peaks[0], peaks[1]);
    eprintln!("peak RSS: {small} KiB for 64 MiB, {large} KiB for 192 MiB");
    assert!(
        large - small < 16 << 10,
        "peak RSS grew with the database: {small} KiB for 64 MiB, {large} KiB for 192 MiB"
    );
    assert!(large < 80 << 10, "peak RSS {large} KiB");
}

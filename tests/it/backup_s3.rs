//! Snapshots to a real S3-compatible server (s3s-fs) on loopback, fetched back with a plain S3
//! client (boto3) and decoded with the standard tools.

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{json, run, tool, Pg, Project, S3};

fn dbward(p: &Project, s3: &S3, db: &str) -> Command {
    let mut c = p.dbward(db);
    s3.configure(&mut c);
    c
}

/// A SQLite database of about `mib` MiB of incompressible rows.
fn big_sqlite(p: &Project, mib: u32) {
    p.migration(
        "V1__blobs.sql",
        "CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL);\n",
    );
    assert_eq!(run(p.dbward("sqlite:app.db").args(["migrate"])).0, 0);
    let c = rusqlite::Connection::open(p.path().join("app.db")).unwrap();
    c.execute(&format!("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {}) INSERT INTO blobs (data) SELECT randomblob(65536) FROM n", mib * 16), []).unwrap();
}

#[test]
fn a_multipart_snapshot_fetched_with_a_plain_client_decodes_and_opens() {
    let s3 = S3::start();
    let p = Project::new();
    big_sqlite(&p, 24);
    std::fs::write(
        p.path().join("dbward.toml"),
        "[store]\npart_size = \"5MiB\"\n",
    )
    .unwrap();
    let (code, out, err) = run(dbward(&p, &s3, "sqlite:app.db").args(["backup", "--json"]));
    assert_eq!(code, 0, "{err}");
    let m = json(&out)["snapshot"].clone();
    assert!(
        m["stored_bytes"].as_u64().unwrap() > 4 * (5 << 20),
        "more than four parts: {m}"
    );

    let key = format!("backups/{}", m["data_key"].as_str().unwrap());
    let fetched = p.path().join("fetched.sqlite.zst");
    s3.fetch(&key, &fetched);
    let sum = tool(Command::new("sha256sum").arg(&fetched));
    assert_eq!(
        sum.split_whitespace().next().unwrap(),
        m["sha256"].as_str().unwrap()
    );
    let restored = p.path().join("restored.db");
    tool(
        Command::new("zstd")
            .args(["-q", "-d"])
            .arg(&fetched)
            .arg("-o")
            .arg(&restored),
    );
    assert_eq!(
        tool(
            Command::new("sqlite3")
                .arg(&restored)
                .arg("PRAGMA integrity_check")
        ),
        "ok"
    );
    assert_eq!(
        tool(
            Command::new("sqlite3")
                .arg(&restored)
                .arg("SELECT count(*) FROM blobs")
        ),
        "384"
    );

    let (code, out, _) = run(dbward(&p, &s3, "sqlite:app.db").args(["snapshots", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(json(&out)["snapshots"][0]["id"], m["id"]);
}

#[test]
fn the_s3_server_killed_mid_upload_leaves_no_snapshot() {
    let mut s3 = S3::start();
    let p = Project::new();
    big_sqlite(&p, 64);
    std::fs::write(
        p.path().join("dbward.toml"),
        "[store]\npart_size = \"5MiB\"\n",
    )
    .unwrap();
    let mut child = dbward(&p, &s3, "sqlite:app.db")
        .arg("backup")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the server as soon as it has received anything of the upload.
    let files = |dir: &std::path::Path| -> usize {
        let mut n = 0;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path())
                } else {
                    n += 1
                }
            }
        }
        n
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while files(s3.dir.path()) == 0 {
        assert!(Instant::now() < deadline, "the upload never started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "backup ended before the server could be killed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    s3.kill();
    let out = child.wait_with_output().unwrap();
    assert_ne!(out.status.code(), Some(0), "the backup must fail");
    let err = common::stderr(&out);
    assert!(err.contains("part") || err.contains("upload"), "{err}");

    s3.restart();
    let (code, out, err) = run(dbward(&p, &s3, "sqlite:app.db").args(["snapshots", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&out)["snapshots"].as_array().unwrap().len(),
        0,
        "no manifest, no snapshot"
    );
}

#[test]
fn postgres_snapshot_and_retention_on_s3() {
    let s3 = S3::start();
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    p.migration(
        "V1__t.sql",
        "CREATE TABLE t (id int PRIMARY KEY);\nCREATE VIEW v AS SELECT id FROM t;\n",
    );
    assert_eq!(run(p.dbward(&url).args(["migrate", "--no-snapshot"])).0, 0);
    pg.psql("shop", "INSERT INTO t SELECT generate_series(1, 1000)");
    std::fs::write(p.path().join("dbward.toml"), "[retention]\nkeep_last = 1\n").unwrap();

    let (code, _, err) = run(dbward(&p, &s3, &url).arg("backup"));
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(dbward(&p, &s3, &url).args(["backup", "--json"]));
    assert_eq!(code, 0, "{err}");
    let m = json(&out)["snapshot"].clone();
    assert_eq!(
        json(&out)["pruned"].as_array().unwrap().len(),
        1,
        "keep_last = 1 removed the older one"
    );

    let (_, out, _) = run(dbward(&p, &s3, &url).args(["snapshots", "--json"]));
    assert_eq!(json(&out)["snapshots"].as_array().unwrap().len(), 1);

    let fetched = p.path().join("shop.pgdump.zst");
    s3.fetch(
        &format!("backups/{}", m["data_key"].as_str().unwrap()),
        &fetched,
    );
    let dump = p.path().join("shop.pgdump");
    tool(
        Command::new("zstd")
            .args(["-q", "-d"])
            .arg(&fetched)
            .arg("-o")
            .arg(&dump),
    );
    pg.restore_into("restored", &dump);
    assert_eq!(pg.psql("restored", "SELECT count(*) FROM v"), "1000");
}

/// `restore latest` and `snapshots --limit N` list the newest keys a time window at a time (the
/// last day, month, year, then all): what they find must not depend on the windows. The newest
/// snapshot three days old, 45 days old, 500 days old, or dated two days ahead by a skewed
/// clock is found, on S3 (`start-after`) and in a local directory alike.
fn latest_reaches_back_across_listing_windows(
    p: &Project,
    folder: &std::path::Path,
    dbward: &dyn Fn() -> Command,
) {
    let (code, out, err) = run(dbward().args(["backup", "--json"]));
    assert_eq!(code, 0, "{err}");
    let real = json(&out)["snapshot"].clone();
    let real_id = real["id"].as_str().unwrap().to_string();
    let data = std::fs::read(folder.join(format!("{real_id}.sqlite.zst"))).unwrap();
    let stamp = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let rfc = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    let now = time::OffsetDateTime::now_utc();
    // A copy of the real snapshot (manifest and data object) dated `offset` from now.
    let copy_at = |offset: time::Duration, n: u16| -> String {
        let t = now + offset;
        let sid = format!("{}-scheduled-{n:04x}", t.format(&stamp).unwrap());
        let mut m = real.clone();
        m["id"] = sid.clone().into();
        m["kind"] = "scheduled".into();
        m["created_at"] = t.format(&rfc).unwrap().into();
        m["data_key"] = real["data_key"]
            .as_str()
            .unwrap()
            .replace(&real_id, &sid)
            .into();
        std::fs::write(folder.join(format!("{sid}.sqlite.zst")), &data).unwrap();
        std::fs::write(folder.join(format!("{sid}.json")), m.to_string()).unwrap();
        sid
    };
    let remove = |sid: &str| {
        std::fs::remove_file(folder.join(format!("{sid}.json"))).unwrap();
        std::fs::remove_file(folder.join(format!("{sid}.sqlite.zst"))).unwrap();
    };
    let latest = || {
        let copy = p.path().join("copy.db");
        let _ = std::fs::remove_file(&copy);
        let (code, out, err) = run(dbward()
            .args(["--json", "restore", "latest", "--to"])
            .arg(&copy)
            .arg("--yes"));
        assert_eq!(code, 0, "{err}");
        json(&out)["snapshot"].as_str().unwrap().to_string()
    };
    let limited =
        |n: &str| common::listed_ids(dbward().args(["snapshots", "--limit", n, "--json"]));
    let days = time::Duration::days;
    let three = copy_at(-days(3), 1);
    let month = copy_at(-days(45), 2);
    let years = copy_at(-days(500), 3);
    let older = copy_at(-days(501), 4);
    remove(&real_id);

    assert_eq!(latest(), three);
    assert_eq!(limited("2"), [three.clone(), month.clone()]);
    assert_eq!(limited("3"), [three.clone(), month.clone(), years.clone()]);
    remove(&three);
    assert_eq!(latest(), month);
    assert_eq!(limited("2"), [month.clone(), years.clone()]);
    remove(&month);
    assert_eq!(latest(), years);
    assert_eq!(limited("9"), [years.clone(), older.clone()]);
    let future = copy_at(days(2), 5);
    assert_eq!(latest(), future);
    assert_eq!(limited("2"), [future, years]);
}

#[test]
fn latest_reaches_back_across_listing_windows_on_s3() {
    let s3 = S3::start();
    let p = Project::new();
    p.migration("V1__a.sql", "CREATE TABLE a (id int);\n");
    assert_eq!(run(dbward(&p, &s3, "sqlite:app.db").arg("migrate")).0, 0);
    let folder = s3.dir.path().join(&s3.bucket).join("backups/app");
    latest_reaches_back_across_listing_windows(&p, &folder, &|| dbward(&p, &s3, "sqlite:app.db"));
}

#[test]
fn latest_reaches_back_across_listing_windows_in_a_directory() {
    let p = Project::new();
    p.migration("V1__a.sql", "CREATE TABLE a (id int);\n");
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    let folder = p.path().join(".dbward/snapshots/app");
    latest_reaches_back_across_listing_windows(&p, &folder, &|| p.dbward("sqlite:app.db"));
}

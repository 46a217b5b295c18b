//! A second store: `store.mirrors` gets every snapshot too, each copy with its own manifest;
//! restore, the health guard and drills fall back to a mirror's copy when the primary's is
//! unreachable, missing or damaged. Real S3-compatible server, real directories, real SQLite
//! files and a real PostgreSQL server.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{json, run, sqlite, Http, Pg, Project, S3};

/// A dbward command with the S3 server as primary store and a local directory as mirror.
fn dbward(p: &Project, s3: &S3, db: &str, mirror: &Path) -> Command {
    let mut c = p.dbward(db);
    s3.configure(&mut c);
    c.env(
        "DBWARD_STORE_MIRRORS",
        format!("file://{}", mirror.display()),
    );
    c
}

/// The primary's (S3 server's) file for a key under the store's prefix.
fn in_s3(s3: &S3, key: &str) -> PathBuf {
    s3.dir.path().join(&s3.bucket).join("backups").join(key)
}

fn manifests(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.ends_with(".json") && n.as_bytes()[0].is_ascii_digit()
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn blue_green_sqlite_pre_deploy_snapshot_in_both_stores_and_the_guard_restores_from_the_mirror() {
    let s3 = S3::start();
    let p = Project::new();
    let mirror = p.path().join("mirror");
    std::fs::write(p.path().join("dbward.toml"), "[retention]\nkeep_last = 3\n").unwrap();
    let db = p.path().join("app.db");
    p.migration(
        "V1__notes.sql",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);\n",
    );
    assert_eq!(
        run(dbward(&p, &s3, "sqlite:app.db", &mirror).arg("migrate")).0,
        0
    );
    sqlite(&db, "INSERT INTO notes (body) VALUES ('kept')");
    p.migration(
        "V2__drop.sql",
        "DROP TABLE notes;\nCREATE TABLE notes (id INTEGER PRIMARY KEY);\n",
    );
    let (code, out, err) =
        run(dbward(&p, &s3, "sqlite:app.db", &mirror).args(["migrate", "--json"]));
    assert_eq!(code, 0, "{err}");
    let id = json(&out)["snapshot"].as_str().unwrap().to_string();
    let data_key = format!("app/{id}.sqlite.zst");
    assert!(in_s3(&s3, &data_key).exists(), "primary copy");
    assert!(mirror.join(&data_key).exists(), "mirror copy");
    assert!(
        mirror.join(format!("app/{id}.json")).exists(),
        "mirror manifest"
    );
    assert_eq!(
        std::fs::read(in_s3(&s3, &data_key)).unwrap(),
        std::fs::read(mirror.join(&data_key)).unwrap(),
        "the same bytes"
    );
    let (code, out, _) =
        run(dbward(&p, &s3, "sqlite:app.db", &mirror).args(["snapshots", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(
        json(&out)["copies"][&id],
        serde_json::json!(["primary", "mirror 1"])
    );

    // The primary's copy rots; the app is unhealthy: the guard restores the mirror's copy.
    common::flip_a_byte(&in_s3(&s3, &data_key));
    let server = Http::status(503);
    let (code, out, err) = run(dbward(&p, &s3, "sqlite:app.db", &mirror).args([
        "health",
        "--restore-on-failure",
        "--timeout",
        "1s",
        "--url",
        &server.url(),
        "--json",
    ]));
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("failed its checksum"),
        "names the bad copy: {err}"
    );
    assert!(err.contains("mirror 1"), "says which copy it used: {err}");
    let doc = json(&out);
    assert!(
        doc["restored"]["copy"]
            .as_str()
            .unwrap()
            .starts_with(&mirror.display().to_string()),
        "{doc}"
    );
    assert_eq!(sqlite(&db, "SELECT group_concat(body) FROM notes"), "kept");

    // Keep last 3, in every store.
    for _ in 0..4 {
        let (code, _, err) = run(dbward(&p, &s3, "sqlite:app.db", &mirror).arg("backup"));
        assert_eq!(code, 0, "{err}");
    }
    assert_eq!(manifests(&in_s3(&s3, "app")), 3);
    assert_eq!(manifests(&mirror.join("app")), 3);
}

#[test]
fn a_deploy_needs_every_copy_unless_store_require_is_primary() {
    let p = Project::new();
    let primary = p.path().join("primary");
    // A mirror that cannot be written: its directory would be under a regular file.
    std::fs::write(p.path().join("not-a-dir"), "").unwrap();
    let broken = format!("file://{}/not-a-dir/mirror", p.path().display());
    let cmd = |require: &str| {
        let mut c = p.dbward("sqlite:app.db");
        c.env("DBWARD_STORE", format!("file://{}", primary.display()))
            .env("DBWARD_STORE_MIRRORS", &broken)
            .env("DBWARD_STORE_REQUIRE", require);
        c
    };
    p.migration("V1__a.sql", "CREATE TABLE a (id INTEGER);\n");
    assert_eq!(
        run(cmd("all").arg("migrate")).0,
        0,
        "a first deploy takes no snapshot"
    );
    p.migration("V2__b.sql", "CREATE TABLE b (id INTEGER);\n");
    let (code, _, err) = run(cmd("all").arg("migrate"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not-a-dir"), "names the mirror: {err}");
    assert_eq!(
        sqlite(
            &p.path().join("app.db"),
            "SELECT max(version) FROM refinery_schema_history"
        ),
        "1",
        "nothing applied without every copy"
    );
    let left: Vec<String> = std::fs::read_dir(primary.join("app"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !left
            .iter()
            .any(|n| n.ends_with(".zst")
                || (n.ends_with(".json") && n.as_bytes()[0].is_ascii_digit())),
        "no snapshot and no data object left in the primary: {left:?}"
    );

    let (code, out, err) = run(cmd("primary").args(["migrate", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no copy in mirror 1"), "{err}");
    let id = json(&out)["snapshot"].as_str().unwrap().to_string();
    assert!(primary.join(format!("app/{id}.json")).exists());

    let (code, _, err) = run(cmd("sometimes").arg("status"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("store.require"), "{err}");
}

#[test]
fn postgres_restore_and_drill_use_the_mirror_when_the_primary_lost_its_copy() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let s3 = S3::start();
    let p = Project::new();
    let primary = p.path().join("primary");
    let cmd = || {
        let mut c = p.dbward(&url);
        s3.configure(&mut c);
        // Here the local directory is the primary and the S3 server the mirror.
        c.env("DBWARD_STORE", format!("file://{}", primary.display()))
            .env(
                "DBWARD_STORE_MIRRORS",
                format!("s3://{}/backups", s3.bucket),
            );
        c
    };
    p.migration(
        "V1__items.sql",
        "CREATE TABLE items (id int PRIMARY KEY, name text);\n",
    );
    assert_eq!(run(cmd().arg("migrate")).0, 0);
    pg.psql("shop", "INSERT INTO items VALUES (1, 'one'), (2, 'two')");
    let (code, out, err) = run(cmd().args(["backup", "--json"]));
    assert_eq!(code, 0, "{err}");
    let id = json(&out)["snapshot"]["id"].as_str().unwrap().to_string();
    let data_key = format!("shop/{id}.pgdump.zst");
    assert!(in_s3(&s3, &data_key).exists(), "mirror copy");
    std::fs::remove_file(primary.join(&data_key)).unwrap();

    let (code, out, err) = run(cmd().args(["restore-drill", "latest", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("from mirror 1"),
        "the drill says which copy it proved: {out}"
    );

    pg.psql("shop", "DELETE FROM items");
    let (code, out, err) = run(cmd().args([
        "restore",
        "latest",
        "--yes",
        "--terminate-connections",
        "--json",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("missing"), "names the missing copy: {err}");
    assert!(
        json(&out)["copy"].as_str().unwrap().starts_with("s3://"),
        "{out}"
    );
    assert_eq!(pg.psql("shop", "SELECT count(*) FROM items"), "2");
}

/// A PostgreSQL restore streams the archive from the store into pg_restore, staging nothing
/// (the temp dir is a plain file here). When the primary's copy (on the S3 server) is damaged
/// in the middle, its checksum fails at the end of the stream: the database it half-restored is
/// dropped, and the mirror's copy is restored from the start.
#[test]
fn a_postgres_restore_streams_and_a_damaged_copy_falls_back_to_the_mirror() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let s3 = S3::start();
    let p = Project::new();
    let mirror = p.path().join("mirror");
    let no_temp = p.path().join("not-a-directory");
    std::fs::write(&no_temp, "").unwrap();
    p.migration(
        "V1__items.sql",
        "CREATE TABLE items (id int PRIMARY KEY, name text);\n",
    );
    assert_eq!(run(dbward(&p, &s3, &url, &mirror).arg("migrate")).0, 0);
    pg.psql(
        "shop",
        "INSERT INTO items SELECT i, md5(i::text) FROM generate_series(1, 20000) i",
    );
    let (code, out, err) = run(dbward(&p, &s3, &url, &mirror).args(["backup", "--json"]));
    assert_eq!(code, 0, "{err}");
    let id = json(&out)["snapshot"]["id"].as_str().unwrap().to_string();
    pg.psql("shop", "DELETE FROM items");

    // Restores `id` with nothing usable as a temp dir; the copy it came from, and stderr.
    let restore = || {
        let (code, out, err) = run(dbward(&p, &s3, &url, &mirror)
            .arg("--temp-dir")
            .arg(&no_temp)
            .args(["restore", &id, "--yes", "--json"]));
        assert_eq!(code, 0, "{err}");
        assert_eq!(pg.psql("shop", "SELECT count(*) FROM items"), "20000");
        (json(&out)["copy"].as_str().unwrap().to_string(), err)
    };

    // Streamed from the primary: nothing in the temp dir.
    let (copy, _) = restore();
    assert!(copy.starts_with("s3://"), "{copy}");

    common::flip_a_byte(&in_s3(&s3, &format!("shop/{id}.pgdump.zst")));
    pg.psql("shop", "DELETE FROM items");
    let (copy, err) = restore();
    assert!(
        err.contains("failed its checksum"),
        "names the damaged copy: {err}"
    );
    assert!(copy.contains("/mirror/"), "{copy}");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'shop\\_restore\\_%'"
        ),
        "0",
        "the half-restored database is gone"
    );

    // Damaged everywhere: refused (exit 3), the live database left as it was.
    common::flip_a_byte(&mirror.join(format!("shop/{id}.pgdump.zst")));
    pg.psql("shop", "DELETE FROM items WHERE id > 10");
    let (code, _, err) = run(dbward(&p, &s3, &url, &mirror).args(["restore", &id, "--yes"]));
    assert_eq!(code, 3, "{err}");
    assert_eq!(pg.psql("shop", "SELECT count(*) FROM items"), "10");
}

/// A mirror (the S3 server) that dies in the middle of the stream: with `require = "all"` the
/// snapshot fails and the primary keeps nothing of it; with `"primary"` it counts, with a
/// warning naming the mirror.
#[test]
fn a_mirror_dying_mid_stream_fails_the_snapshot_only_when_every_copy_is_required() {
    let p = Project::new();
    p.migration(
        "V1__blobs.sql",
        "CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL);\n",
    );
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    let c = rusqlite::Connection::open(p.path().join("app.db")).unwrap();
    c.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1024) INSERT INTO blobs (data) SELECT randomblob(65536) FROM n", []).unwrap();
    drop(c);
    std::fs::write(
        p.path().join("dbward.toml"),
        "[store]\npart_size = \"5MiB\"\n",
    )
    .unwrap();
    let primary = p.path().join("primary");
    let attempt = |require: &str| {
        let mut s3 = S3::start();
        let mut c = p.dbward("sqlite:app.db");
        s3.configure(&mut c);
        c.env("DBWARD_STORE", format!("file://{}", primary.display()))
            .env(
                "DBWARD_STORE_MIRRORS",
                format!("s3://{}/backups", s3.bucket),
            )
            .env("DBWARD_STORE_REQUIRE", require)
            .args(["backup", "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = c.spawn().unwrap();
        // Kill the mirror as soon as it has received part of the upload.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let received = |dir: &Path| walk(dir) > 0;
        while !received(s3.dir.path()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the upload never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        s3.kill();
        child.wait_with_output().unwrap()
    };
    let snapshots_in_primary = || -> Vec<String> {
        std::fs::read_dir(primary.join("app"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| {
                        n.ends_with(".zst")
                            || (n.ends_with(".json") && n.as_bytes()[0].is_ascii_digit())
                    })
                    .collect()
            })
            .unwrap_or_default()
    };

    let out = attempt("all");
    assert_ne!(out.status.code(), Some(0), "{}", common::stderr(&out));
    assert_eq!(
        snapshots_in_primary(),
        Vec::<String>::new(),
        "the primary keeps nothing of it"
    );

    let out = attempt("primary");
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("no copy in mirror 1"), "{err}");
    let id = json(&common::stdout(&out))["snapshot"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(primary.join(format!("app/{id}.json")).exists());
}

/// Files under `dir`, recursively.
fn walk(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            n += walk(&e.path());
        } else {
            n += 1;
        }
    }
    n
}

/// A primary that answers but holds no snapshot (a wiped bucket): a fresh volume is restored
/// from the mirror, not started empty; a drill of the mirror's copy leaves its receipt there,
/// none on the primary.
/// dbward on `sqlite:app.db` with two directories as stores: `primary` and one mirror.
fn local_stores(p: &Project, primary: &Path, mirror: &Path) -> Command {
    let mut c = p.dbward("sqlite:app.db");
    c.env("DBWARD_STORE", format!("file://{}", primary.display()))
        .env(
            "DBWARD_STORE_MIRRORS",
            format!("file://{}", mirror.display()),
        );
    c
}

#[test]
fn a_fresh_volume_and_an_empty_primary_restore_from_the_mirror() {
    let p = Project::new();
    let (primary, mirror) = (p.path().join("primary"), p.path().join("mirror"));
    let cmd = || local_stores(&p, &primary, &mirror);
    p.migration(
        "V1__a.sql",
        "CREATE TABLE a (id INTEGER);\nINSERT INTO a VALUES (1), (2);\n",
    );
    assert_eq!(run(cmd().arg("migrate")).0, 0);
    let (code, out, _) = run(cmd().args(["backup", "--json"]));
    assert_eq!(code, 0);
    let id = json(&out)["snapshot"]["id"].as_str().unwrap().to_string();
    // The primary's copy rots: the drill proves the mirror's, and says so.
    common::flip_a_byte(&primary.join(format!("app/{id}.sqlite.zst")));
    let (code, _, err) = run(cmd().args(["restore-drill", &id]));
    assert_eq!(code, 0, "{err}");
    assert!(
        mirror.join(format!("app/{id}.drill.json")).exists(),
        "{err}"
    );
    assert!(
        !primary.join(format!("app/{id}.drill.json")).exists(),
        "no receipt for the bad copy"
    );
    // The bucket is wiped, and so is the volume.
    std::fs::remove_dir_all(primary.join("app")).unwrap();
    std::fs::create_dir_all(primary.join("app")).unwrap();
    std::fs::remove_file(p.path().join("app.db")).unwrap();
    let (code, _, err) = run(cmd().args(["restore", "latest", "--if-missing"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("using mirror 1"), "{err}");
    assert_eq!(
        sqlite(&p.path().join("app.db"), "SELECT count(*) FROM a"),
        "2"
    );
}

/// A fresh volume is started fresh only when every store answered that it holds no snapshot:
/// a primary that cannot be read is not "no snapshot", whether the mirror has one or not.
#[test]
fn a_fresh_volume_is_not_started_fresh_while_a_store_does_not_answer() {
    let p = Project::new();
    let (primary, mirror) = (p.path().join("primary"), p.path().join("mirror"));
    let cmd = || local_stores(&p, &primary, &mirror);
    p.migration("V1__a.sql", "CREATE TABLE a (id INTEGER);\n");
    // The primary's folder for this database cannot be listed (a file where it should be), and
    // the mirror holds nothing: refused, and no database is made.
    std::fs::create_dir_all(&primary).unwrap();
    std::fs::write(primary.join("app"), "not a folder").unwrap();
    let (code, out, err) = run(cmd().args(["migrate", "--restore-if-missing", "--json"]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        json(&out)["error"].as_str().unwrap().contains(
            "not started fresh while a store that may hold its snapshots does not answer"
        ),
        "{out}"
    );
    assert!(!p.path().join("app.db").exists(), "{err}");

    // With a snapshot in the mirror, the mirror's is restored.
    std::fs::remove_file(primary.join("app")).unwrap();
    assert_eq!(run(cmd().arg("migrate")).0, 0);
    sqlite(&p.path().join("app.db"), "INSERT INTO a VALUES (7)");
    let (code, _, err) = run(cmd().arg("backup"));
    assert_eq!(code, 0, "{err}");
    std::fs::remove_dir_all(primary.join("app")).unwrap();
    std::fs::write(primary.join("app"), "not a folder").unwrap();
    std::fs::remove_file(p.path().join("app.db")).unwrap();
    let (code, _, err) = run(cmd().args(["restore", "latest", "--if-missing"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("using mirror 1"), "{err}");
    assert_eq!(
        sqlite(&p.path().join("app.db"), "SELECT count(*) FROM a"),
        "1"
    );
}

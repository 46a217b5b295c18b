//! `dbward replicate` and `restore --stream`: a SQLite database's every state, shipped as a
//! base and steps, built back to its newest state or the one as of a time, checked; real
//! SQLite files written by a real writer, the store a directory (and a mirror).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{json, run, sqlite, Project};

/// A WAL-mode database `app.db` with table `t` and rows 1..=100.
fn app() -> Project {
    let p = Project::new();
    sqlite(
        &p.path().join("app.db"),
        "PRAGMA journal_mode = WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) \
         INSERT INTO t SELECT i, hex(randomblob(200)) FROM n;",
    );
    p
}

/// `dbward replicate` running in the background, its log in `replicate.log`; killed if the
/// test ends without stopping it (a failed assertion), so no replicator outlives its test.
struct Replicator(Option<std::process::Child>);

impl Replicator {
    fn start(p: &Project) -> Replicator {
        Replicator(Some(
            p.dbward("sqlite:app.db")
                .args(["replicate", "--interval", "100ms", "--metrics"])
                .arg(p.path().join("replicate.prom"))
                // A file: a pipe nobody reads would stop it once full.
                .stderr(std::fs::File::create(p.path().join("replicate.log")).unwrap())
                .spawn()
                .unwrap(),
        ))
    }

    /// SIGTERM, then its exit status and log.
    fn stop(mut self, p: &Project) -> (std::process::ExitStatus, String) {
        let mut child = self.0.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        let log = std::fs::read_to_string(p.path().join("replicate.log")).unwrap();
        (status, log)
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The project's settings encrypt to a new age key (`key.txt`, made by the real `age-keygen`)
/// and mirror into `mirror/`: the key file and the mirror.
fn encrypted_and_mirrored(p: &Project) -> (PathBuf, PathBuf) {
    let key = p.path().join("key.txt");
    common::tool(Command::new("age-keygen").arg("-o").arg(&key));
    let public = common::tool(Command::new("age-keygen").arg("-y").arg(&key));
    let mirror = p.path().join("mirror");
    std::fs::write(
        p.path().join("dbward.toml"),
        format!(
            "[encryption]\nrecipients = [{:?}]\n\n[store]\nmirrors = [\"file://{}\"]\n",
            public.trim(),
            mirror.display()
        ),
    )
    .unwrap();
    (key, mirror)
}

/// The folder of the stream's (one) generation in the project's default store.
fn generation_dir(p: &Project) -> PathBuf {
    std::fs::read_dir(p.path().join(".dbward/snapshots/app/stream"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|d| d.is_dir())
        .unwrap()
}

fn db(p: &Project) -> PathBuf {
    p.path().join("app.db")
}

fn once(p: &Project) -> serde_json::Value {
    let (code, out, err) = run(p
        .dbward("sqlite:app.db")
        .args(["--json", "replicate", "--once"]));
    assert_eq!(code, 0, "{err}");
    json(&out)["shipped"].clone()
}

/// `restore --stream --to <name>` (and its extra arguments): the rows of `t` it holds.
fn restored_rows(p: &Project, name: &str, extra: &[&str]) -> String {
    let (code, out, err) = run(p
        .dbward("sqlite:app.db")
        .args(["--json", "restore", "--stream", "--to", name])
        .args(extra));
    assert_eq!(code, 0, "{out}{err}");
    sqlite(&p.path().join(name), "SELECT count(*) FROM t")
}

/// The volume is lost: the database and its WAL and shared memory are gone.
fn lose_volume(p: &Project) {
    for side in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(p.path().join(format!("app.db{side}")));
    }
}

/// What the application wrote to `seen` (a row count it read).
fn seen(p: &Project) -> String {
    std::fs::read_to_string(p.path().join("seen"))
        .unwrap()
        .trim()
        .to_string()
}

fn side_files(dir: &Path, name: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(name) && n != name || n.contains("dbward-partial"))
        .collect()
}

#[test]
fn steps_follow_writes_checkpoints_and_vacuum_and_any_step_restores() {
    let p = app();
    let base = once(&p);
    assert!(base["new_generation"].is_string(), "{base}");
    sqlite(&db(&p), "INSERT INTO t SELECT id + 100, v FROM t");
    let first = once(&p);
    assert_eq!(first["seq"], 1, "{first}");
    assert!(first["pages"].as_u64().unwrap() > 0, "{first}");
    // Nothing changed: nothing shipped.
    assert!(once(&p)["seq"].is_null());
    std::thread::sleep(Duration::from_millis(1100));
    let between = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100));

    // The application checkpoints (and the WAL restarts, or is cut) between steps, and VACUUMs:
    // the stream follows, by the WAL when it can, by the page hashes when it cannot.
    sqlite(
        &db(&p),
        "DELETE FROM t WHERE id > 150; PRAGMA wal_checkpoint(TRUNCATE); INSERT INTO t VALUES (1000, 'x');",
    );
    assert_eq!(once(&p)["seq"], 2);
    sqlite(&db(&p), "DELETE FROM t WHERE id > 20; VACUUM;");
    let shrunk = once(&p);
    assert_eq!(shrunk["seq"], 3, "{shrunk}");

    assert_eq!(restored_rows(&p, "newest.db", &[]), "20");
    assert_eq!(restored_rows(&p, "then.db", &["--time", &between]), "200");
    assert_eq!(
        sqlite(&p.path().join("newest.db"), "PRAGMA integrity_check"),
        "ok"
    );
    assert!(
        side_files(p.path(), "newest.db").is_empty(),
        "{:?}",
        side_files(p.path(), "newest.db")
    );

    // The standard tools alone build the same state (docs/stream-restore.py).
    let generation = generation_dir(&p);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/stream-restore.py");
    let out = common::tool(
        Command::new("python3")
            .arg(&script)
            .arg(&generation)
            .arg(p.path().join("by-script.db")),
    );
    assert!(out.contains("3 step(s)"), "{out}");
    assert_eq!(
        std::fs::read(p.path().join("by-script.db")).unwrap(),
        std::fs::read(p.path().join("newest.db")).unwrap()
    );

    // A damaged step is refused, and nothing is left at the target.
    let step = generation.join("0000000000000002.step.zst");
    common::flip_a_byte(&step);
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["restore", "--stream", "--to", "bad.db"]));
    assert_eq!(code, 3, "{err}");
    assert!(!p.path().join("bad.db").exists());
    assert!(side_files(p.path(), "bad.db").is_empty());
}

#[test]
fn a_running_replicator_ships_every_commit_and_a_second_one_is_refused() {
    let p = app();
    let replicator = Replicator::start(&p);
    // Once it shipped its base, a second replicator of the same file is refused.
    let stream = p.path().join(".dbward/snapshots/app/stream");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_dir(&stream)
        .is_ok_and(|mut d| d.any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".json")))
    {
        assert!(Instant::now() < deadline, "no generation began");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, _, err) = run(p.dbward("sqlite:app.db").args(["replicate", "--once"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("already replicated"), "{err}");
    // A writer commits one row at a time, checkpointing now and then as applications do.
    let conn = rusqlite::Connection::open(db(&p)).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    for i in 0..300 {
        conn.execute("INSERT INTO t (v) VALUES (?1)", [format!("row {i}")])
            .unwrap();
        if i % 97 == 0 {
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                .unwrap();
        }
    }
    let want: String = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
        .unwrap()
        .to_string();
    // Every commit reaches the store (restored while the replicator runs).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    loop {
        n += 1;
        let name = format!("copy-{n}.db");
        if restored_rows(&p, &name, &[]) == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the last commits never reached the stream"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its gauges say how old the newest state in the store is: the lag.
    let prom = std::fs::read_to_string(p.path().join("replicate.prom")).unwrap();
    let at: f64 = prom
        .lines()
        .find_map(|l| {
            l.strip_prefix("dbward_stream_last_step_timestamp_seconds{database=\"app\"} ")
        })
        .unwrap_or_else(|| panic!("{prom}"))
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(now - at < 60.0, "{prom}");
    assert!(
        prom.contains("dbward_stream_failed_steps{database=\"app\"} 0"),
        "{prom}"
    );
    let (status, log) = replicator.stop(&p);
    assert!(status.success(), "{status}: {log}");
}

/// An encrypted stream (age recipients) goes to the primary and the mirror; its objects are
/// not readable without the identity, the identity restores it, and a primary that lost its
/// stream leaves the mirror's to restore.
#[test]
fn an_encrypted_stream_is_mirrored_and_restores_with_the_identity() {
    let p = app();
    let (key, mirror) = encrypted_and_mirrored(&p);
    once(&p);
    sqlite(
        &db(&p),
        "INSERT INTO t (v) VALUES ('secret after the base')",
    );
    assert_eq!(once(&p)["seq"], 1);
    let primary = p.path().join(".dbward/snapshots/app/stream");
    for root in [&primary, &mirror.join("app/stream")] {
        let objects: Vec<PathBuf> = walk(root);
        assert!(
            objects
                .iter()
                .any(|o| o.to_string_lossy().ends_with(".step.zst.age")),
            "{objects:?}"
        );
        for o in objects
            .iter()
            .filter(|o| !o.to_string_lossy().ends_with(".json"))
        {
            let bytes = std::fs::read(o).unwrap();
            assert!(
                !bytes.windows(6).any(|w| w == b"secret"),
                "{} holds plaintext",
                o.display()
            );
        }
    }
    // Without the identity: refused.
    let (code, _, err) =
        run(p
            .dbward("sqlite:app.db")
            .args(["restore", "--stream", "--to", "no-key.db"]));
    assert_ne!(code, 0, "{err}");
    assert!(!p.path().join("no-key.db").exists());
    // With it, from the mirror once the primary lost its stream.
    std::fs::remove_dir_all(&primary).unwrap();
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .env("DBWARD_AGE_IDENTITY_FILE", &key)
        .args(["restore", "--stream", "--to", "with-key.db"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        sqlite(&p.path().join("with-key.db"), "SELECT count(*) FROM t"),
        "101"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A step the primary store does not take changes nothing recorded: the next one ships the
/// same changes in the same generation, with the next number, rather than a new base.
#[test]
fn a_step_the_store_refused_is_shipped_again_in_the_same_generation() {
    let p = app();
    let generation = once(&p)["generation"].as_str().unwrap().to_string();
    sqlite(&db(&p), "INSERT INTO t (v) VALUES ('first')");
    assert_eq!(once(&p)["seq"], 1);
    // The generation's folder is not a folder for a moment: the store cannot write the step.
    let dir = p
        .path()
        .join(".dbward/snapshots/app/stream")
        .join(&generation);
    let aside = dir.with_extension("aside");
    std::fs::rename(&dir, &aside).unwrap();
    std::fs::write(&dir, "in the way").unwrap();
    sqlite(&db(&p), "INSERT INTO t (v) VALUES ('second')");
    let (code, _, err) = run(p.dbward("sqlite:app.db").args(["replicate", "--once"]));
    assert_ne!(code, 0, "{err}");
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&aside, &dir).unwrap();
    let next = once(&p);
    assert_eq!(next["generation"], generation.as_str(), "{next}");
    assert_eq!(next["seq"], 2, "{next}");
    assert_eq!(restored_rows(&p, "after.db", &[]), "102");
}

/// `restore --stream --to` until the rows of `t` are `want` (the replicator ships meanwhile).
fn wait_for_rows(p: &Project, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0.. {
        // Before the first base, there is no stream yet.
        let name = format!("wait-{want}-{n}.db");
        let (code, _, _) = run(p
            .dbward("sqlite:app.db")
            .args(["restore", "--stream", "--to", &name]));
        if code == 0 && sqlite(&p.path().join(&name), "SELECT count(*) FROM t") == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the stream never reached {want} rows"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A restore that puts another file at the path while the replicator runs: the stream follows
/// the new file, in a new generation (the old one stays restorable up to the swap).
#[test]
fn a_file_restored_under_a_running_replicator_begins_a_new_generation() {
    let p = app();
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["--json", "backup"]));
    assert_eq!(code, 0, "{err}");
    let snapshot = json(&out)["snapshot"]["id"].as_str().unwrap().to_string();
    let replicator = Replicator::start(&p);
    sqlite(
        &db(&p),
        "INSERT INTO t SELECT id + 100, v FROM t WHERE id <= 50",
    );
    wait_for_rows(&p, "150");
    // dbward's own replicator is not an application holding the file: no --force.
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["restore", &snapshot, "--yes"]));
    assert_eq!(code, 0, "{err}");
    sqlite(&db(&p), "INSERT INTO t (v) VALUES ('after the restore')");
    wait_for_rows(&p, "101");
    let (status, log) = replicator.stop(&p);
    assert!(status.success(), "{log}");
    assert!(log.contains("the database file was replaced"), "{log}");

    // `latest` is the newest state: the stream's, newer than the snapshot.
    sqlite(&db(&p), "DELETE FROM t WHERE id > 10");
    let (code, out, err) = run(p
        .dbward("sqlite:app.db")
        .args(["--json", "restore", "latest", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        json(&out)["restored"]["stream"]["generation"].is_string(),
        "{out}"
    );
    assert_eq!(sqlite(&db(&p), "SELECT count(*) FROM t"), "101");

    // An empty volume gets the stream's newest state back.
    lose_volume(&p);
    let (code, out, err) =
        run(p
            .dbward("sqlite:app.db")
            .args(["--json", "restore", "latest", "--if-missing"]));
    assert_eq!(code, 0, "{err}");
    assert!(json(&out)["restored"]["stream"]["seq"].is_u64(), "{out}");
    assert_eq!(sqlite(&db(&p), "SELECT count(*) FROM t"), "101");
}

/// Every 30 steps are merged into one object, which a restore reads instead of them; a time
/// inside such a span is reached through the steps themselves.
#[test]
fn compacted_steps_shorten_a_restore_and_any_step_is_still_reached() {
    let p = app();
    once(&p);
    let mut times = Vec::new();
    for i in 1..=65 {
        sqlite(&db(&p), &format!("INSERT INTO t (v) VALUES ('step {i}')"));
        assert_eq!(once(&p)["seq"], i);
        times.push(
            time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap(),
        );
    }
    let generation = generation_dir(&p);
    let mut compacted: Vec<String> = std::fs::read_dir(&generation)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".L"))
        .collect();
    compacted.sort();
    assert_eq!(
        compacted,
        [
            "0000000000000001-000000000000001e.L1.step.zst",
            "000000000000001f-000000000000003c.L1.step.zst"
        ]
    );
    let (code, out, err) =
        run(p
            .dbward("sqlite:app.db")
            .args(["--json", "restore", "--stream", "--to", "newest.db"]));
    assert_eq!(code, 0, "{err}");
    // Two compacted objects and the five steps after them.
    assert_eq!(
        json(&out)["restored"]["stream"]["objects_applied"],
        7,
        "{out}"
    );
    assert_eq!(
        sqlite(&p.path().join("newest.db"), "SELECT count(*) FROM t"),
        "165"
    );
    // Step 40 (inside the second span): the first span whole, then ten steps.
    assert_eq!(
        restored_rows(&p, "at-40.db", &["--time", &times[39]]),
        "140"
    );
    // The standard tools alone still build the newest state from the steps themselves.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/stream-restore.py");
    common::tool(
        Command::new("python3")
            .arg(&script)
            .arg(&generation)
            .arg(p.path().join("by-script.db")),
    );
    assert_eq!(
        std::fs::read(p.path().join("by-script.db")).unwrap(),
        std::fs::read(p.path().join("newest.db")).unwrap()
    );
}

/// `run --replicate`: the application's writes are in the stream when it ends (one last step),
/// and a fresh volume's `run --restore-if-missing` brings them back before the app starts.
#[test]
fn run_replicates_beside_the_app_and_a_fresh_volume_gets_its_last_writes_back() {
    let p = app();
    let server = common::Http::status(200);
    let run_app = |script: &str| {
        run(p.dbward("sqlite:app.db").args([
            "run",
            "--replicate",
            "--restore-if-missing",
            "--url",
            &server.url(),
            "--",
            "sh",
            "-c",
            script,
        ]))
    };
    let (code, _, err) =
        run_app("sleep 1; sqlite3 app.db \"INSERT INTO t (v) VALUES ('written by the app')\"");
    assert_eq!(code, 0, "{err}");
    lose_volume(&p);
    let (code, _, err) = run_app("sqlite3 app.db 'SELECT count(*) FROM t' > seen; sleep 1");
    assert_eq!(code, 0, "{err}");
    assert_eq!(seen(&p), "101", "{err}");
    assert!(
        err.contains("restoring the newest state of its stream"),
        "{err}"
    );
}

/// `kill -9` of the replicator at moments of a writer's load, then a restart: every time, the
/// stream goes on (or begins a new generation) and ends at the database's last state; what is
/// restorable is never damaged.
#[test]
fn a_replicator_killed_at_any_moment_restarts_without_losing_or_damaging_anything() {
    let p = app();
    let conn = rusqlite::Connection::open(db(&p)).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut written = 100;
    for round in 0..6 {
        let mut replicator = Replicator::start(&p);
        // Writes while it runs, then a kill after a different delay each round.
        for i in 0..40 {
            conn.execute("INSERT INTO t (v) VALUES (?1)", [format!("{round}-{i}")])
                .unwrap();
            written += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(37 * round));
        let mut child = replicator.0.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        // Whatever the stream holds restores, and holds no row that was never written.
        let name = format!("after-kill-{round}.db");
        let (code, _, err) = run(p
            .dbward("sqlite:app.db")
            .args(["restore", "--stream", "--to", &name]));
        if code == 0 {
            let rows: i64 = sqlite(&p.path().join(&name), "SELECT count(*) FROM t")
                .parse()
                .unwrap();
            assert!(rows <= written, "{rows} rows restored, {written} written");
            assert_eq!(
                sqlite(&p.path().join(&name), "PRAGMA integrity_check"),
                "ok"
            );
        } else {
            assert!(err.contains("no store holds a stream"), "{err}");
        }
    }
    // A last run ships what is left: the stream ends at the database's state.
    let replicator = Replicator::start(&p);
    wait_for_rows(&p, &written.to_string());
    let (status, log) = replicator.stop(&p);
    assert!(status.success(), "{log}");
}

/// The store folder is one database's: the stream of another database of the same name is
/// refused there, as its snapshots would be.
#[test]
fn another_database_of_the_same_name_cannot_stream_into_the_folder() {
    let a = app();
    let store = format!("file://{}", a.path().join("shared").display());
    let (code, _, err) = run(a
        .dbward("sqlite:app.db")
        .args(["--store", &store, "backup"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) =
        run(a
            .dbward("sqlite:app.db")
            .args(["--store", &store, "replicate", "--once"]));
    assert_eq!(code, 0, "{err}");
    let b = app();
    let (code, _, err) =
        run(b
            .dbward("sqlite:app.db")
            .args(["--store", &store, "replicate", "--once"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("belongs to"), "{err}");
    // A's stream restores; nothing of B's is in it.
    let (code, _, err) = run(a.dbward("sqlite:app.db").args([
        "--store",
        &store,
        "restore",
        "--stream",
        "--to",
        "a-copy.db",
    ]));
    assert_eq!(code, 0, "{err}");
}

/// `retention.stream_window`: `prune` removes the generations whose states all ended before
/// the window, never the newest, and a restore still builds the newest state.
#[test]
fn prune_removes_generations_older_than_the_stream_window() {
    let p = app();
    once(&p);
    // The file is replaced (a copy put in its place): a second generation begins.
    let copy = p.path().join("copy.db");
    std::fs::copy(db(&p), &copy).unwrap();
    sqlite(&copy, "INSERT INTO t (v) VALUES ('in the copy')");
    std::fs::rename(&copy, db(&p)).unwrap();
    let second = once(&p);
    assert!(second["new_generation"].is_string(), "{second}");
    let stream = p.path().join(".dbward/snapshots/app/stream");
    let records = || {
        std::fs::read_dir(&stream)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "json")
            })
            .count()
    };
    assert_eq!(records(), 2);
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(
        p.path().join("dbward.toml"),
        "[retention]\nstream_window = \"1s\"\n",
    )
    .unwrap();
    let (code, out, err) = run(p
        .dbward("sqlite:app.db")
        .args(["--json", "prune", "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&out)["stream_generations_removed"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(records(), 2, "a dry run removes nothing");
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("prune"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(records(), 1);
    let dirs = std::fs::read_dir(&stream)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .map(|e| std::fs::read_dir(e.unwrap().path()).unwrap().count())
        .collect::<Vec<_>>();
    assert!(
        dirs.contains(&0),
        "the old generation's objects are gone: {dirs:?}"
    );
    assert_eq!(restored_rows(&p, "after-prune.db", &[]), "101");
}

/// A mirror that cannot take the stream for a while gets every object it missed, in order,
/// once it can: its copy restores alone.
#[test]
fn a_mirror_that_was_away_catches_up_and_restores_alone() {
    let p = app();
    let mirror = p.path().join("mirror");
    std::fs::write(&mirror, "not a folder yet").unwrap();
    std::fs::write(
        p.path().join("dbward.toml"),
        format!("[store]\nmirrors = [\"file://{}\"]\n", mirror.display()),
    )
    .unwrap();
    once(&p);
    sqlite(
        &db(&p),
        "INSERT INTO t (v) VALUES ('while the mirror is away')",
    );
    let away = once(&p);
    assert!(
        !away["mirrors_failed"].as_array().unwrap().is_empty(),
        "{away}"
    );
    // The mirror is back: the next step sends what it missed first.
    std::fs::remove_file(&mirror).unwrap();
    sqlite(&db(&p), "INSERT INTO t (v) VALUES ('after it came back')");
    let back = once(&p);
    assert!(
        back["mirrors_failed"].as_array().unwrap().is_empty(),
        "{back}"
    );
    std::fs::remove_dir_all(p.path().join(".dbward/snapshots/app/stream")).unwrap();
    assert_eq!(restored_rows(&p, "from-the-mirror.db", &[]), "102");
}

/// `restore-drill --stream`: the stream's newest state built apart and checked, with RTO and
/// RPO, metrics for the textfile collector; a damaged step fails it.
#[test]
fn a_drill_of_the_stream_proves_its_newest_state() {
    let p = app();
    once(&p);
    sqlite(&db(&p), "INSERT INTO t (v) VALUES ('drilled')");
    once(&p);
    let metrics = p.path().join("drill.prom");
    let (code, out, err) = run(p.dbward("sqlite:app.db").args([
        "--json",
        "restore-drill",
        "--stream",
        "--metrics",
        metrics.to_str().unwrap(),
    ]));
    assert_eq!(code, 0, "{err}");
    let report = &json(&out)["report"];
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["restore", "integrity", "migration-head"],
        "{report}"
    );
    assert!(report["rto_seconds"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["rpo_seconds"].as_f64().unwrap() >= 0.0, "{report}");
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        prom.contains("dbward_drill_success{database=\"app\"} 1"),
        "{prom}"
    );
    // A step damaged in the store fails the drill (exit 1), and nothing of it is left.
    let generation = generation_dir(&p);
    common::flip_a_byte(&generation.join("0000000000000001.step.zst"));
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["restore-drill", "--stream"]));
    assert_eq!(code, 1, "{err}");
    let left: Vec<_> = std::fs::read_dir(p.path().join(".dbward/tmp"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// The blue-green SQLite set-up's container on an S3 server (as R2), a local mirror and age:
/// `run --replicate --restore-if-missing` while the app writes, the volume lost, the next
/// container gets the last writes back before its app starts, the stream drills from S3, and
/// the mirror alone restores it.
#[test]
fn blue_green_on_s3_with_a_mirror_and_age_gets_a_lost_volume_back() {
    let p = app();
    let s3 = common::S3::start();
    let server = common::Http::status(200);
    let (key, mirror) = encrypted_and_mirrored(&p);
    let dbward = |args: &[&str]| {
        let mut c = p.dbward("sqlite:app.db");
        s3.configure(&mut c);
        c.env("DBWARD_AGE_IDENTITY_FILE", &key).args(args);
        c
    };
    let container = |script: &str| {
        run(&mut dbward(&[
            "run",
            "--replicate",
            "--restore-if-missing",
            "--url",
            &server.url(),
            "--",
            "sh",
            "-c",
            script,
        ]))
    };
    let (code, _, err) = container(
        "sleep 1; for i in $(seq 20); do sqlite3 app.db \"INSERT INTO t (v) VALUES ('row $i')\"; sleep 0.05; done",
    );
    assert_eq!(code, 0, "{err}");
    lose_volume(&p);
    let (code, _, err) = container("sqlite3 app.db 'SELECT count(*) FROM t' > seen; sleep 1");
    assert_eq!(code, 0, "{err}");
    assert_eq!(seen(&p), "120", "{err}");
    let (code, _, err) = run(&mut dbward(&["restore-drill", "--stream"]));
    assert_eq!(code, 0, "{err}");
    // The mirror alone, as the only store.
    let mut from_mirror = dbward(&["restore", "--stream", "--to", "from-mirror.db"]);
    from_mirror.env("DBWARD_STORE", format!("file://{}", mirror.display()));
    let (code, _, err) = run(&mut from_mirror);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        sqlite(&p.path().join("from-mirror.db"), "SELECT count(*) FROM t"),
        "120"
    );

    // A release whose migration fails its health check: the pre-deploy point is the running
    // replicator's position (no snapshot of the file is taken), and the guard puts it back.
    p.migration(
        "V1__release.sql",
        "CREATE TABLE release (x INTEGER); INSERT INTO t (v) VALUES ('by the release');",
    );
    let sick = common::Http::status(503);
    let (code, out, err) = run(&mut dbward(&[
        "--json",
        "run",
        "--replicate",
        "--restore-if-missing",
        "--timeout",
        "1s",
        "--interval",
        "200ms",
        "--url",
        &sick.url(),
        "--",
        "sleep",
        "30",
    ]));
    assert_eq!(code, 5, "{out}{err}");
    assert!(err.contains("pre-deploy stream position"), "{err}");
    assert!(!err.contains("taking a snapshot instead"), "{err}");
    assert_eq!(sqlite(&db(&p), "SELECT count(*) FROM t"), "120");
    assert_eq!(
        sqlite(
            &db(&p),
            "SELECT count(*) FROM sqlite_master WHERE name = 'release'"
        ),
        "0"
    );
    // The deploy log and the store name the position the guard restored.
    let (code, out, err) = run(&mut dbward(&["--json", "snapshots"]));
    assert_eq!(code, 0, "{err}");
    let listed = json(&out);
    let pre_deploy: Vec<&serde_json::Value> = listed["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["kind"] == "pre-deploy")
        .collect();
    assert_eq!(pre_deploy.len(), 1, "{out}");
    assert_eq!(pre_deploy[0]["format"], "streampoint", "{out}");
    let points = pre_deploy;
    let (code, out, err) = run(&mut dbward(&["--json", "deploys"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(points[0]["id"].as_str().unwrap()), "{out}");
    assert!(out.contains("restored by the health guard"), "{out}");
}

/// `migrate` beside a running replicator: the pre-deploy point is the stream's position the
/// primary holds (recorded as a snapshot of format `streampoint`, no file copied), `restore
/// pre-deploy` builds exactly that state, and the stream's retention keeps its generation.
/// Without a replicator, a snapshot as before; with a lease held by something that never
/// answers, a snapshot and the reason.
#[test]
fn a_deploy_beside_a_replicator_takes_its_position_and_restores_to_it() {
    let p = app();
    let replicator = Replicator::start(&p);
    wait_for_rows(&p, "100");
    sqlite(
        &db(&p),
        "INSERT INTO t (v) VALUES ('just before the deploy')",
    );
    p.migration(
        "V1__release.sql",
        "CREATE TABLE release (x INTEGER); INSERT INTO t (v) VALUES ('by the release');",
    );
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["--json", "migrate"]));
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    assert_eq!(doc["snapshot_format"], "streampoint", "{out}");
    assert!(doc["restore_point_fallback"].is_null(), "{out}");
    let point = doc["snapshot"].as_str().unwrap().to_string();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(p.path().join(format!(".dbward/snapshots/app/{point}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["data_key"], "", "{manifest}");
    assert!(manifest["stream"]["seq"].is_u64(), "{manifest}");
    sqlite(&db(&p), "INSERT INTO t (v) VALUES ('after the deploy')");
    wait_for_rows(&p, "103");

    // The position, built into a new file: the row written just before the deploy, nothing
    // of the release or after it.
    let (code, out, err) = run(p.dbward("sqlite:app.db").args([
        "--json",
        "restore",
        "pre-deploy",
        "--to",
        "at-deploy.db",
        "--yes",
    ]));
    assert_eq!(code, 0, "{out}{err}");
    let at = p.path().join("at-deploy.db");
    assert_eq!(sqlite(&at, "SELECT count(*) FROM t"), "101");
    assert_eq!(
        sqlite(
            &at,
            "SELECT count(*) FROM sqlite_master WHERE name = 'release'"
        ),
        "0"
    );
    // A drill of a position is the stream's drill: said, not attempted on a file.
    let (code, _, err) = run(p.dbward("sqlite:app.db").args(["restore-drill", &point]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("restore-drill --stream"), "{err}");
    // A second deploy: the database has an identity now, its generation began without one.
    p.migration("V2__again.sql", "CREATE TABLE again (x INTEGER);");
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["--json", "migrate"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["snapshot_format"], "streampoint", "{out}{err}");
    let (status, log) = replicator.stop(&p);
    assert!(status.success(), "{log}");

    // A new generation (the file replaced), then the window passes: the generation the
    // deploy's position is in stays while the position does.
    let copy = p.path().join("copy.db");
    std::fs::copy(db(&p), &copy).unwrap();
    std::fs::rename(&copy, db(&p)).unwrap();
    assert!(once(&p)["new_generation"].is_string());
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(
        p.path().join("dbward.toml"),
        "[retention]\nstream_window = \"1s\"\n",
    )
    .unwrap();
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["--json", "prune"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&out)["stream_generations_removed"],
        serde_json::json!([]),
        "{out}{err}"
    );
    assert!(err.contains("a deploy's position is in it"), "{err}");
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["restore", &point, "--to", "again.db", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        sqlite(&p.path().join("again.db"), "SELECT count(*) FROM t"),
        "101"
    );

    // No replicator: the deploy copies the file, as without a stream.
    p.migration("V3__second.sql", "CREATE TABLE second (x INTEGER);");
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["--json", "migrate"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["snapshot_format"], "sqlite", "{out}");
    assert!(json(&out)["restore_point_fallback"].is_null(), "{out}");

    // A lease held by a process that never answers: a snapshot, and why.
    let lease = p.path().join("app.db.dbward-replicate-lock");
    // `--no-fork`: flock becomes the sleep, so killing it lets the lease go.
    let mut holder = Command::new("flock")
        .arg("--no-fork")
        .arg(&lease)
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    let held = Instant::now();
    while dbward_lease_free(&lease) {
        assert!(
            held.elapsed() < Duration::from_secs(10),
            "flock never took the lease"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(&lease, format!("{}\n", holder.id())).unwrap();
    p.migration("V4__third.sql", "CREATE TABLE third (x INTEGER);");
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["--json", "migrate"]));
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["snapshot_format"], "sqlite", "{out}");
    let why = json(&out)["restore_point_fallback"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.contains("no replicator took the request"), "{why}");
}

/// Whether nobody holds the lock file `lease` (a shared lock is granted at once).
fn dbward_lease_free(lease: &Path) -> bool {
    let Ok(f) = std::fs::File::open(lease) else {
        return true;
    };
    match f.try_lock_shared() {
        Ok(()) => true,
        Err(_) => false,
    }
}

/// `pitr verify` of a SQLite database checks its stream from the store's listing: bases,
/// steps without a gap, the deploys' positions, the lag; a step gone is exit 3, named.
#[test]
fn pitr_verify_checks_the_stream_and_the_deploys_positions() {
    let p = app();
    let replicator = Replicator::start(&p);
    wait_for_rows(&p, "100");
    sqlite(&db(&p), "INSERT INTO t (v) VALUES ('before the deploy')");
    p.migration("V1__release.sql", "CREATE TABLE release (x INTEGER);");
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["--json", "migrate"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["snapshot_format"], "streampoint", "{out}");
    let (status, log) = replicator.stop(&p);
    assert!(status.success(), "{log}");

    let metrics = p.path().join("stream.prom");
    let verify = || {
        run(p
            .dbward("sqlite:app.db")
            .args(["--json", "pitr", "verify", "--metrics"])
            .arg(&metrics))
    };
    let (code, out, err) = verify();
    assert_eq!(code, 0, "{out}{err}");
    let v = json(&out);
    assert_eq!(v["stream"]["positions"], 1, "{out}");
    assert!(
        v["stream"]["generations"][0]["newest_seq"]
            .as_u64()
            .unwrap()
            >= 1,
        "{out}"
    );
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        prom.contains("dbward_stream_missing_steps{database=\"app\"} 0"),
        "{prom}"
    );

    // Step 1 lost: the stream cannot be followed past the base, nor the position reached.
    std::fs::remove_file(generation_dir(&p).join("0000000000000001.step.zst")).unwrap();
    let (code, out, err) = verify();
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("step(s) missing"), "{err}");
    assert!(err.contains("cannot be restored: step 1"), "{err}");
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        prom.contains("dbward_stream_missing_steps{database=\"app\"} 1"),
        "{prom}"
    );
    assert!(
        prom.contains("dbward_stream_unrestorable_positions{database=\"app\"} 1"),
        "{prom}"
    );
}

/// Across machines the lease is in the store: a copy of the database elsewhere (another file,
/// its own local state: another host as far as the stream can tell) writing into the same
/// folder is refused while the stream's newest object is fresh, and `run --replicate` there
/// stands by instead of failing, its application started.
#[test]
fn a_second_host_is_refused_while_the_stream_is_held_and_run_stands_by() {
    let p = app();
    let replicator = Replicator::start(&p);
    wait_for_rows(&p, "100");
    let other = p.path().join("other");
    std::fs::create_dir_all(other.join("migrations")).unwrap();
    std::fs::copy(db(&p), other.join("app.db")).unwrap();
    let store = format!("file://{}", p.path().join(".dbward/snapshots").display());
    let on_other = |args: &[&str]| {
        let mut c = common::dbward(&other);
        c.args(["--database", "sqlite:app.db", "--store", &store])
            .args(args);
        c
    };
    let (code, _, err) = run(&mut on_other(&["replicate", "--once"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("written by another replicator"), "{err}");
    assert!(
        err.contains(&format!("pid {}", replicator.0.as_ref().unwrap().id())),
        "{err}"
    );

    let server = common::Http::status(200);
    let (code, _, err) = run(&mut on_other(&[
        "run",
        "--replicate",
        "--url",
        &server.url(),
        "--",
        "sh",
        "-c",
        "sqlite3 app.db \"INSERT INTO t (v) VALUES ('on the other host')\"",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("standing by"), "{err}");
    assert_eq!(
        sqlite(
            &other.join("app.db"),
            "SELECT count(*) FROM t WHERE v = 'on the other host'"
        ),
        "1"
    );
    // The stream stayed the first host's: one generation, and it holds no row of the other.
    let (status, log) = replicator.stop(&p);
    assert!(status.success(), "{log}");
    let generations = std::fs::read_dir(p.path().join(".dbward/snapshots/app/stream"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .count();
    assert_eq!(generations, 1);
    assert_eq!(restored_rows(&p, "first-host.db", &[]), "100");
}

/// With `store.require = all`, the lag the replicator reports is the slowest store's: while a
/// mirror does not take the stream, its objects wait in the spool (counted) and the newest state
/// every store holds does not move; once it is back, it catches up and the lag is current.
#[test]
fn with_every_store_required_the_lag_is_the_slowest_stores() {
    let p = app();
    let mirror = p.path().join("mirror");
    std::fs::write(&mirror, "not a folder yet").unwrap();
    std::fs::write(
        p.path().join("dbward.toml"),
        format!(
            "[store]\nmirrors = [\"file://{}\"]\nrequire = \"all\"\n",
            mirror.display()
        ),
    )
    .unwrap();
    let replicator = Replicator::start(&p);
    let metrics = p.path().join("replicate.prom");
    let gauge = |name: &str| -> Option<f64> {
        let text = std::fs::read_to_string(&metrics).ok()?;
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let until = |what: &str, ok: &dyn Fn() -> bool| {
        let began = Instant::now();
        while !ok() {
            assert!(began.elapsed() < Duration::from_secs(30), "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    sqlite(
        &db(&p),
        "INSERT INTO t (v) VALUES ('while the mirror is away')",
    );
    until("objects waiting for the mirror", &|| {
        gauge("dbward_stream_mirror_waiting_objects").is_some_and(|n| n >= 1.0)
    });
    // No state is in every store yet: no timestamp to take a lag from.
    assert_eq!(gauge("dbward_stream_last_step_timestamp_seconds"), None);
    std::fs::remove_file(&mirror).unwrap();
    sqlite(&db(&p), "INSERT INTO t (v) VALUES ('after it came back')");
    until("the mirror caught up", &|| {
        gauge("dbward_stream_mirror_waiting_objects") == Some(0.0)
            && gauge("dbward_stream_last_step_timestamp_seconds").is_some()
    });
    let (status, log) = replicator.stop(&p);
    assert!(status.success(), "{log}");
}

/// Every object of the stream's generation folders dated `seconds` back: a holder that has been
/// silent that long, as far as the store's lease can tell.
fn age_generations(p: &Project, seconds: u64) {
    let stream = p.path().join(".dbward/snapshots/app/stream");
    for d in std::fs::read_dir(&stream).unwrap() {
        let d = d.unwrap().path();
        if !d.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&d).unwrap() {
            let f = f.unwrap().path();
            let then = std::time::SystemTime::now() - Duration::from_secs(seconds);
            std::fs::File::options()
                .write(true)
                .open(&f)
                .unwrap()
                .set_modified(then)
                .unwrap();
        }
    }
}

/// A holder silent for longer than the lease is taken over by another host (a new generation);
/// when the first comes back, it does not go on from its own older generation (that would fork
/// the stream, and the other's newer one would stop it at its first renewal): it begins a new one,
/// and renews it.
#[test]
fn a_silent_holder_is_taken_over_and_coming_back_begins_anew() {
    let p = app();
    let first = once(&p);
    let other = p.path().join("other");
    std::fs::create_dir_all(other.join("migrations")).unwrap();
    std::fs::copy(db(&p), other.join("app.db")).unwrap();
    let store = format!("file://{}", p.path().join(".dbward/snapshots").display());
    let on_other = || {
        let mut c = common::dbward(&other);
        c.args(["--json", "--database", "sqlite:app.db", "--store", &store])
            .args(["replicate", "--once"]);
        c
    };
    let (code, _, err) = run(&mut on_other());
    assert_eq!(code, 3, "held while fresh: {err}");
    age_generations(&p, 200);
    let (code, out, err) = run(&mut on_other());
    assert_eq!(code, 0, "{err}");
    let second = json(&out)["shipped"].clone();
    assert_ne!(second["generation"], first["generation"], "{out}");
    // The first host is back: the other's generation is fresh, so it is held...
    let (code, _, err) = run(p.dbward("sqlite:app.db").args(["replicate", "--once"]));
    assert_eq!(code, 3, "{err}");
    // ...and once that one is silent too, the first begins anew instead of going on from its
    // own older generation; its next step goes on from that.
    age_generations(&p, 200);
    let third = once(&p);
    assert!(third["new_generation"].is_string(), "{third}");
    assert_ne!(third["generation"], second["generation"]);
    sqlite(&db(&p), "INSERT INTO t (v) VALUES ('back')");
    let fourth = once(&p);
    assert_eq!(fourth["generation"], third["generation"], "{fourth}");
    assert!(fourth["new_generation"].is_null(), "{fourth}");
    assert_eq!(restored_rows(&p, "after-the-takeovers.db", &[]), "101");
}

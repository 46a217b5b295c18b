//! The WAL archive: a real PostgreSQL cluster archives through `dbward wal-push` and a base
//! backup of it recovers to a restore point through `dbward wal-fetch`; the fetch's exit codes
//! (1 only for a file the archive does not have, 126 for everything else); pushes that repeat,
//! differ or come from another cluster; the same on the S3 test server, and encrypted; and
//! `archive_timeout = 60` keeping the archive's lag, as `pitr verify` measures it, under 65 s.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run, server_dir, tool, Pg, S3};

use common::archive::{
    archiving, archiving_with, dbward, recover_through_wal_fetch, store_dir, store_url,
    switch_and_wait, APP, BIN,
};

#[test]
fn a_cluster_archives_through_wal_push_and_a_base_backup_recovers_to_a_restore_point_through_wal_fetch(
) {
    let store = store_dir();
    let pg = archiving(store.path());
    // The base backup waits (-X none) until the WAL it needs is archived: wal-push works.
    let base = server_dir("dbward-test-wal-base-");
    tool(
        Command::new(pg.bindir.join("pg_basebackup"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-X",
                "none",
                "-c",
                "fast",
            ])
            .arg("-p")
            .arg(pg.port.to_string())
            .arg("-D")
            .arg(base.path().join("data")),
    );
    pg.psql("app", "INSERT INTO t SELECT generate_series(1001, 1500)");
    pg.psql(
        "postgres",
        "SELECT pg_create_restore_point('dbward-test-point')",
    );
    pg.psql("app", "INSERT INTO t SELECT generate_series(1501, 2000)");
    let last = switch_and_wait(&pg, store.path());

    // The archive names its cluster.
    let cluster: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.path().join("app/wal/cluster.json")).unwrap())
            .unwrap();
    assert_eq!(
        cluster["system_identifier"].as_str().unwrap(),
        pg.psql(
            "postgres",
            "SELECT system_identifier FROM pg_control_system()"
        )
    );
    // Nothing of dbward's in the data directory (no state dir, no temp files).
    let own: Vec<_> = std::fs::read_dir(pg.data_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("dbward"))
        .collect();
    assert!(own.is_empty(), "{own:?}");

    // A stored object is plain zstd: the standard tool gives the segment that dbward fetches.
    let scratch = tempfile::tempdir().unwrap();
    let fetched = scratch.path().join("RECOVERYXLOG");
    let (code, _, err) = run(dbward(store.path())
        .arg("wal-fetch")
        .arg(&last)
        .arg(&fetched));
    assert_eq!(code, 0, "{err}");
    let by_zstd = scratch.path().join("by-zstd");
    tool(
        Command::new("zstd")
            .args(["-q", "-d"])
            .arg(store.path().join(format!("app/wal/{last}.zst")))
            .arg("-o")
            .arg(&by_zstd),
    );
    assert!(std::fs::read(&fetched).unwrap() == std::fs::read(&by_zstd).unwrap());
    assert_eq!(std::fs::metadata(&fetched).unwrap().len(), 16 << 20);

    // Recover the base backup to the restore point, fetching every segment through dbward,
    // with archiving off (a restored copy never pushes into the production archive).
    let restored = recover_through_wal_fetch(
        base,
        store.path(),
        "recovery_target_name = 'dbward-test-point'",
    );
    assert_eq!(
        restored.psql("app", "SELECT count(*), max(id) FROM t"),
        "1500|1500"
    );

    // `pitr verify`: one timeline, no gap; then a segment in the middle goes missing.
    let verify = |extra: &[&str]| {
        let (code, out, err) = run(dbward(store.path())
            .args(["--json", "pitr", "verify"])
            .args(extra));
        (code, common::json(&out), err)
    };
    let (code, report, err) = verify(&[]);
    assert_eq!(code, 0, "{err}");
    let timeline = &report["archive"]["timelines"][0];
    assert_eq!(timeline["last"], serde_json::json!(last), "{report}");
    let segments = timeline["segments"].as_u64().unwrap();
    assert!(segments >= 3, "{report}");
    assert_eq!(report["archive"]["segment_bytes"], 16 << 20);
    let (code, _, err) = verify(&["--max-lag", "0s"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("--max-lag"), "{err}");
    let first = timeline["first"].as_str().unwrap();
    let middle = format!(
        "{}{:08X}",
        &first[..16],
        u32::from_str_radix(&first[16..], 16).unwrap() + 1
    );
    std::fs::remove_file(store.path().join(format!("app/wal/{middle}.zst"))).unwrap();
    let metrics = scratch.path().join("wal.prom");
    let (code, report, err) = verify(&["--metrics", metrics.to_str().unwrap()]);
    assert_eq!(code, 3, "{err}");
    assert_eq!(report["archive"]["gaps"][0]["missing"], 1, "{report}");
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        prom.contains("dbward_wal_archive_missing_segments{database=\"app\"} 1\n"),
        "{prom}"
    );
    assert!(
        err.contains(&format!("1 segment(s) missing between {first} and ")),
        "{err}"
    );
}

/// A stored segment of a real cluster, and the cluster (kept running so the test owns both).
fn one_segment() -> (tempfile::TempDir, Pg, String) {
    let store = store_dir();
    let pg = archiving(store.path());
    let seg = switch_and_wait(&pg, store.path());
    (store, pg, seg)
}

#[test]
fn wal_fetch_exits_1_only_when_the_archive_has_no_such_file_and_126_for_anything_else() {
    let (store, _pg, seg) = one_segment();
    let scratch = tempfile::tempdir().unwrap();
    let dest = scratch.path().join("RECOVERYXLOG");
    let fetch = |name: &str| run(dbward(store.path()).arg("wal-fetch").arg(name).arg(&dest));

    // Not there: 1, and nothing written. A timeline history that was never made is routine.
    for absent in ["0000000100000000000000FF", "00000002.history"] {
        let (code, _, err) = fetch(absent);
        assert_eq!(code, 1, "{absent}: {err}");
        assert!(!dest.exists());
    }
    // A damaged object: 126 after its retries, nothing left beside the destination.
    let object = store.path().join(format!("app/wal/{seg}.zst"));
    let good = std::fs::read(&object).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x20;
    std::fs::write(&object, &bad).unwrap();
    let (code, _, err) = fetch(&seg);
    assert_eq!(code, 126, "{err}");
    assert!(err.contains("not a WAL file dbward stored"), "{err}");
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
    std::fs::write(&object, &good).unwrap();
    assert_eq!(fetch(&seg).0, 0);

    // A store that is not there, a bad setting, a bad command line: 126, never 1 or 2.
    let (code, _, err) = run(Command::new(BIN)
        .args([
            "--database",
            APP,
            "--store",
            "s3://snapshots/x",
            "--s3-endpoint",
            "http://127.0.0.1:9",
            "--s3-path-style",
            "wal-fetch",
            &seg,
        ])
        .arg(&dest)
        .env("AWS_ACCESS_KEY_ID", "k")
        .env("AWS_SECRET_ACCESS_KEY", "s"));
    assert_eq!(code, 126, "{err}");
    let (code, _, err) = run(Command::new(BIN)
        .args([
            "--database",
            "sqlite:app.db",
            "--store",
            &store_url(store.path()),
        ])
        .args(["wal-fetch", &seg])
        .arg(&dest));
    assert_eq!(code, 126, "{err}");
    assert!(err.contains("SQLite"), "{err}");
    // A store with no archive in it (a directory that was not mounted, a wrong prefix): the
    // file may well exist elsewhere, so recovery stops.
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = run(dbward(empty.path()).args(["wal-fetch", &seg]).arg(&dest));
    assert_eq!(code, 126, "{err}");
    assert!(err.contains("not a WAL archive"), "{err}");
    let (code, _, err) = run(dbward(store.path()).args(["wal-fetch", &seg]));
    assert_eq!(code, 126, "{err}");
    // The default store is relative: it would be inside the data directory.
    let (code, _, err) = run(Command::new(BIN)
        .args(["--database", APP, "wal-fetch", &seg])
        .arg(&dest)
        .env_remove("DBWARD_STORE"));
    assert_eq!(code, 126, "{err}");
    assert!(err.contains("relative"), "{err}");
    let (code, _, err) = run(dbward(store.path()).args(["wal-fetch", "../../etc/passwd", "x"]));
    assert_eq!(code, 126, "{err}");
    assert!(
        err.contains("not the name of a file PostgreSQL archives"),
        "{err}"
    );
}

/// The segment's plain bytes, decoded from the store by the standard tool, at `dir/name`.
fn decoded(store: &Path, seg: &str, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    tool(
        Command::new("zstd")
            .args(["-q", "-d", "-f"])
            .arg(store.join(format!("app/wal/{seg}.zst")))
            .arg("-o")
            .arg(&path),
    );
    path
}

#[test]
fn a_repeated_push_succeeds_and_different_contents_or_another_cluster_are_refused() {
    let (store, _pg, seg) = one_segment();
    let object = store.path().join(format!("app/wal/{seg}.zst"));
    let stored = std::fs::read(&object).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let push = |path: &Path| run(dbward(store.path()).arg("wal-push").arg(path));

    // The same file again (PostgreSQL repeats a push whose answer it lost): 0, copy unchanged.
    let same = decoded(store.path(), &seg, scratch.path(), &seg);
    let (code, _, err) = push(&same);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("already archived"), "{err}");
    assert!(std::fs::read(&object).unwrap() == stored);

    // Other contents under the same name: 3, and the stored copy stays.
    let mut raw = std::fs::read(&same).unwrap();
    raw[100_000] ^= 1;
    std::fs::write(&same, &raw).unwrap();
    let (code, _, err) = push(&same);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("different contents"), "{err}");
    assert!(std::fs::read(&object).unwrap() == stored);

    // A segment of another cluster (its system identifier changed): 3, nothing stored.
    let other_name = "0000000100000000000000F0";
    let other = decoded(store.path(), &seg, scratch.path(), other_name);
    let mut raw = std::fs::read(&other).unwrap();
    raw[24] ^= 1;
    std::fs::write(&other, &raw).unwrap();
    let (code, _, err) = push(&other);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("system identifier"), "{err}");
    assert!(!store
        .path()
        .join(format!("app/wal/{other_name}.zst"))
        .exists());

    // A relative store (the default): 2, nothing stored anywhere.
    let (code, _, err) = run(Command::new(BIN)
        .current_dir(scratch.path())
        .args(["--database", APP, "wal-push"])
        .arg(&same)
        .env_remove("DBWARD_STORE"));
    assert_eq!(code, 2, "{err}");
    assert!(!scratch.path().join(".dbward").exists());

    // A file PostgreSQL would never archive: 3, nothing stored.
    let stray = scratch.path().join("notes.txt");
    std::fs::write(&stray, "hello").unwrap();
    assert_eq!(push(&stray).0, 3);
    let names: Vec<String> = std::fs::read_dir(store.path().join("app/wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}"); // the segment, its record, the cluster's
    assert!(names.contains(&format!("{seg}.json")), "{names:?}");

    // The snapshot commands are not confused by the archive's folder.
    let (code, out, err) = run(dbward(store.path()).args(["--json", "snapshots"]));
    assert_eq!(code, 0, "{err}");
    let listing = common::json(&out);
    assert_eq!(listing["snapshots"], serde_json::json!([]), "{out}");
    assert!(!out.contains("wal/"), "{out}");
}

/// A segment-shaped file (a long page header naming `sysid`), 64 KiB.
fn fake_segment(dir: &Path, name: &str, sysid: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let salt = dir.as_os_str().len() as u32;
    let mut raw: Vec<u8> = (0..64 << 10)
        .map(|i: u32| ((i + salt) % 251) as u8)
        .collect();
    raw[..40].fill(0);
    raw[2] = 0x02;
    raw[24..32].copy_from_slice(&sysid.to_le_bytes());
    raw[32..36].copy_from_slice(&(64u32 << 10).to_le_bytes());
    let path = dir.join(name);
    std::fs::write(&path, raw).unwrap();
    path
}

#[test]
fn on_s3_encrypted_a_segment_goes_and_comes_back_and_without_the_key_the_fetch_stops_recovery() {
    let s3 = S3::start();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("key.txt");
    tool(Command::new("age-keygen").arg("-o").arg(&key));
    let public = tool(Command::new("age-keygen").arg("-y").arg(&key));
    let config = keys.path().join("dbward.toml");
    std::fs::write(
        &config,
        format!("[encryption]\nrecipients = [\"{public}\"]\n"),
    )
    .unwrap();
    let dbward = || {
        let mut c = Command::new(BIN);
        s3.configure(&mut c);
        c.args(["--database", APP, "--config"]).arg(&config);
        c
    };
    let scratch = tempfile::tempdir().unwrap();
    let name = "000000010000000000000007";
    let seg = fake_segment(scratch.path(), name, 99);
    let (code, out, err) = run(dbward().args(["--json", "wal-push"]).arg(&seg));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(".zst.age"), "{out}");

    // The standard tools open it: age -d, then zstd -d.
    let object = scratch.path().join("object");
    s3.fetch(&format!("backups/app/wal/{name}.zst.age"), &object);
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "age -d -i {} {} | zstd -q -d -c",
            key.display(),
            object.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout == std::fs::read(&seg).unwrap());

    let dest = scratch.path().join("RECOVERYXLOG");
    // Without an identity: the key is missing, not the file (126, not 1).
    let (code, _, err) = run(dbward().arg("wal-fetch").arg(name).arg(&dest));
    assert_eq!(code, 126, "{err}");
    assert!(!dest.exists());
    let (code, _, err) = run(dbward()
        .env("DBWARD_AGE_IDENTITY_FILE", &key)
        .arg("wal-fetch")
        .arg(name)
        .arg(&dest));
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&seg).unwrap());
    // Absent on S3: 1.
    let (code, _, err) = run(dbward()
        .env("DBWARD_AGE_IDENTITY_FILE", &key)
        .args(["wal-fetch", "000000010000000000000008"])
        .arg(&dest));
    assert_eq!(code, 1, "{err}");
    // The same file again, on a host that holds only the public key: compared with its
    // plaintext record, 0.
    let (code, _, err) = run(dbward().arg("wal-push").arg(&seg));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("already archived"), "{err}");
    // Encryption turned off: the same contents may be stored plain as well (0), other
    // contents under the name are refused (3) in either form.
    let plain = || {
        let mut c = Command::new(BIN);
        s3.configure(&mut c);
        c.args(["--database", APP]);
        c
    };
    let (code, _, err) = run(plain().arg("wal-push").arg(&seg));
    assert_eq!(code, 0, "{err}");
    let other = fake_segment(&scratch.path().join("other"), name, 99);
    let (code, _, err) = run(plain().arg("wal-push").arg(&other));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("different contents"), "{err}");
    let (code, _, err) = run(plain().args(["wal-fetch", name]).arg(&dest));
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&seg).unwrap());
}

/// `archive_timeout` forces a switch of a segment that holds a commit but is far from full,
/// and `wal-push` stores it: in this order, for three commits in a row, a commit, then (no
/// switch of ours) the segment that holds it in the archive, then `pitr verify --max-lag`
/// passing. The order of events is asserted, not a duration: the lag a given `archive_timeout`
/// keeps is PostgreSQL's to honour.
#[test]
fn archive_timeout_puts_each_commits_segment_in_the_archive_without_a_switch() {
    let store = store_dir();
    let pg = archiving_with(store.path(), &["archive_timeout = 2"]);
    // PostgreSQL honours archive_timeout from the checkpointer's first wake-up after recovery
    // ended: its first sleep starts while the server is still starting and lasts up to
    // checkpoint_timeout. A reload wakes it (the README says so for a restarted server).
    pg.psql("postgres", "SELECT pg_reload_conf()");
    switch_and_wait(&pg, store.path());
    let mut seen = Vec::new();
    for round in 0..3 {
        pg.psql("app", &format!("INSERT INTO t VALUES ({round})"));
        // The segment that holds the commit: the one the write position is in.
        let segment = pg.psql("app", "SELECT pg_walfile_name(pg_current_wal_lsn())");
        let object = store.path().join(format!("app/wal/{segment}.zst"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while !object.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: {segment} never reached the archive; the server's log:\n{}",
                pg.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let (code, out, err) =
            run(dbward(store.path()).args(["--json", "pitr", "verify", "--max-lag", "60s"]));
        assert_eq!(code, 0, "round {round}: {err}");
        let newest = common::json(&out)["archive"]["newest"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            newest >= segment,
            "{segment} stored, newest {newest}: {out}"
        );
        seen.push(segment);
    }
    seen.dedup();
    assert_eq!(
        seen.len(),
        3,
        "each commit in a segment of its own: {seen:?}"
    );
}

/// With `store.mirrors`, every WAL file goes to the mirror too, and a fetch the primary cannot
/// serve (the object gone, or no archive there at all) comes from the mirror, checked as ever.
#[test]
fn with_a_mirror_every_wal_file_is_pushed_to_both_and_a_fetch_falls_back_to_the_mirror() {
    let primary = store_dir();
    let mirror = store_dir();
    let config = mirror.path().join("mirrored.toml");
    std::fs::write(
        &config,
        format!("[store]\nmirrors = [\"{}\"]\n", store_url(mirror.path())),
    )
    .unwrap();
    common::give_to_postgres(&config);
    let archive = format!(
        "archive_command = '{BIN} -q --database {APP} --store {} --config {} wal-push %p'",
        store_url(primary.path()),
        config.display()
    );
    let pg = Pg::start_with(
        &["wal_level = replica", "archive_mode = on", &archive],
        None,
    );
    pg.psql("postgres", "CREATE DATABASE app");
    let mut segments = Vec::new();
    for i in 0..3 {
        pg.psql("postgres", &format!("CREATE TABLE t{i} (id int)"));
        segments.push(switch_and_wait(&pg, primary.path()));
    }
    // Both stores hold the same files (the mirror's copy is written right after the primary's).
    let names = |store: &Path| {
        let mut n: Vec<String> = std::fs::read_dir(store.join("app/wal"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    };
    let wait = std::time::Instant::now();
    while names(mirror.path()) != names(primary.path()) {
        assert!(
            wait.elapsed() < std::time::Duration::from_secs(30),
            "{:?} vs {:?}",
            names(primary.path()),
            names(mirror.path())
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(names(mirror.path()).contains(&"cluster.json".to_string()));

    let out = server_dir("dbward-test-wal-mirror-");
    let fetch = |store: &Path, name: &str| {
        let to = out.path().join(name);
        let _ = std::fs::remove_file(&to);
        let (code, _, err) = run(Command::new(BIN)
            .args(["--database", APP, "--store", &store_url(store), "--config"])
            .arg(&config)
            .args(["wal-fetch", name])
            .arg(&to));
        (code, err, to)
    };
    // The primary lost one object: the mirror's copy is fetched, byte for byte.
    let seg = &segments[1];
    std::fs::remove_file(primary.path().join(format!("app/wal/{seg}.zst"))).unwrap();
    let (code, err, got) = fetch(primary.path(), seg);
    assert_eq!(code, 0, "{err}");
    let want = Command::new("zstd")
        .args(["-d", "-c", "-q"])
        .arg(mirror.path().join(format!("app/wal/{seg}.zst")))
        .output()
        .unwrap()
        .stdout;
    let got = std::fs::read(&got).unwrap();
    assert_eq!(got.len(), 16 << 20);
    assert!(
        got == want,
        "the fetched file is the mirror's, byte for byte"
    );
    // A primary with no archive at all: the mirror serves.
    let nowhere = server_dir("dbward-test-wal-nowhere-");
    let (code, err, _) = fetch(nowhere.path(), &segments[0]);
    assert_eq!(code, 0, "{err}");
    // A file neither holds is absent (exit 1), as the primary says.
    let (code, err, got) = fetch(primary.path(), "0000000100000000000000FF");
    assert_eq!(code, 1, "{err}");
    assert!(!got.exists());
}

//! Point-in-time recovery on a real PostgreSQL cluster archiving through `dbward wal-push`:
//! `backup --physical` stores a base that the standard tools restore and `pg_verifybackup`
//! passes; `restore --physical --to DIR` recovers it to a time, an LSN, the base's end and the
//! archive's end in private copies that never archive; and every refusal happens before
//! anything is written, every failure leaves no directory and no server.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::archive::{
    archiving, recover_through_wal_fetch, restore_copy, store_dir, store_url, switch_and_wait,
    wal_command, Copy,
};
use common::{json, pg_bindir, run, server_dir, tool, Pg};

/// dbward connected to the cluster's `app` database, with the archive's store.
fn dbward(pg: &Pg, store: &Path) -> Command {
    let mut c = common::dbward(Path::new("/"));
    c.args(["--database", &pg.url("app"), "--store", &store_url(store)]);
    c
}

/// `restore --physical` into `parent/name`; the copy, or the exit code and stderr.
fn restore(
    pg: &Pg,
    store: &Path,
    parent: &Path,
    name: &str,
    args: &[&str],
) -> Result<Copy, (i32, String)> {
    restore_copy(
        dbward(pg, store).args(["restore", "--physical"]).args(args),
        &parent.join(name),
    )
    .map(|(copy, _)| copy)
}

/// `backup --physical` of the cluster into `store`: its manifest.
fn take_base(pg: &Pg, store: &Path) -> serde_json::Value {
    let (code, out, err) = run(dbward(pg, store).args(["--json", "backup", "--physical"]));
    assert_eq!(code, 0, "{err}");
    json(&out)["snapshot"].clone()
}

/// A directory the `postgres` user can create copies in.
fn copies_dir() -> tempfile::TempDir {
    let d = server_dir("dbward-test-pitr-");
    common::give_to_postgres(d.path());
    d
}

#[test]
fn a_base_recovers_to_a_time_an_lsn_its_end_and_the_archives_end_in_private_copies() {
    let store = store_dir();
    let pg = archiving(store.path());
    switch_and_wait(&pg, store.path());
    let m = &take_base(&pg, store.path());
    assert_eq!(m["format"], "pgbase", "{m}");
    let base = m["id"].as_str().unwrap().to_string();
    assert_eq!(
        m["data_key"],
        format!("app/{base}.base.tar.zst"),
        "the key names what zstd -d gives back"
    );
    let p = &m["physical"];
    assert_eq!(
        p["system_identifier"].as_str().unwrap(),
        pg.psql(
            "postgres",
            "SELECT system_identifier FROM pg_control_system()"
        )
    );
    assert!(
        p["wal_first"].as_str().unwrap() <= p["wal_last"].as_str().unwrap(),
        "{p}"
    );

    pg.psql("app", "INSERT INTO t SELECT generate_series(1001, 1500)");
    let time = pg.psql(
        "postgres",
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    pg.psql("app", "INSERT INTO t SELECT generate_series(1501, 2000)");
    let lsn = pg.psql("postgres", "SELECT pg_current_wal_lsn()");
    pg.psql("app", "INSERT INTO t SELECT generate_series(2001, 2500)");
    switch_and_wait(&pg, store.path());

    let copies = copies_dir();
    for (name, args, rows) in [
        ("at-time", vec!["--time", time.as_str()], "1500"),
        ("at-lsn", vec!["--lsn", lsn.as_str()], "2000"),
        ("base-end", vec![base.as_str()], "1000"),
        ("archive-end", vec!["latest"], "2500"),
    ] {
        let copy = restore(&pg, store.path(), copies.path(), name, &args)
            .unwrap_or_else(|(code, err)| panic!("{name}: exit {code}: {err}"));
        assert_eq!(copy.psql("SELECT count(*) FROM t"), rows, "{name}");
        assert_eq!(copy.psql("SELECT pg_is_in_recovery()"), "f", "{name}");
        // A copy never archives, and takes connections only on its own socket.
        assert_eq!(copy.psql("SHOW archive_mode"), "off", "{name}");
        assert_eq!(copy.psql("SHOW listen_addresses"), "", "{name}");
        // It promoted to a timeline of its own.
        assert_eq!(
            copy.psql("SELECT timeline_id FROM pg_control_checkpoint()"),
            "2",
            "{name}"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&copy.dir).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o700, "{name}");
    }
    // None of the copies wrote into the archive (their timeline 2 would show).
    let foreign: Vec<String> = std::fs::read_dir(store.path().join("app/wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("00000001") && n != "cluster.json")
        .collect();
    assert!(foreign.is_empty(), "a copy archived: {foreign:?}");

    // A logical restore of a base is refused before anything is done.
    let (code, _, err) = run(dbward(&pg, store.path())
        .args(["restore", "--yes", &base, "--to"])
        .arg(pg.url("elsewhere")));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("--physical"), "{err}");
}

#[test]
fn the_base_restores_with_zstd_and_tar_and_passes_pg_verifybackup() {
    let store = store_dir();
    let pg = archiving(store.path());
    switch_and_wait(&pg, store.path());
    let m = take_base(&pg, store.path());
    let work = server_dir("dbward-test-pitr-plain-");
    let data = work.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let untar = format!(
        "zstd -q -d -c {} | tar -x -C {}",
        store.path().join(m["data_key"].as_str().unwrap()).display(),
        data.display()
    );
    tool(Command::new("sh").args(["-c", &untar]));
    // The WAL the manifest names, with zstd alone.
    let wal = work.path().join("wal");
    std::fs::create_dir(&wal).unwrap();
    let (first, last) = (
        m["physical"]["wal_first"].as_str().unwrap(),
        m["physical"]["wal_last"].as_str().unwrap(),
    );
    for e in std::fs::read_dir(store.path().join("app/wal")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(seg) = name.strip_suffix(".zst") {
            if seg.len() == 24 && (first..=last).contains(&seg) {
                tool(
                    Command::new("zstd")
                        .args(["-q", "-d"])
                        .arg(store.path().join("app/wal").join(&name))
                        .arg("-o")
                        .arg(wal.join(seg)),
                );
            }
        }
    }
    let verified = tool(
        Command::new(pg_bindir().join("pg_verifybackup"))
            .arg("-w")
            .arg(&wal)
            .arg(&data),
    );
    assert!(verified.contains("successfully verified"), "{verified}");

    // And it starts with a plain restore_command (dbward wal-fetch), archiving off.
    std::fs::remove_dir_all(&wal).unwrap();
    let restored = recover_through_wal_fetch(work, store.path(), "recovery_target = 'immediate'");
    assert_eq!(restored.psql("app", "SELECT count(*) FROM t"), "1000");
}

#[test]
fn refusals_come_before_anything_is_written_and_a_failed_recovery_leaves_nothing() {
    // A cluster that does not archive has no use for a base.
    let plain = Pg::start();
    plain.psql("postgres", "CREATE DATABASE app");
    let elsewhere = store_dir();
    let (code, _, err) = run(dbward(&plain, elsewhere.path()).args(["backup", "--physical"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("archive_mode"), "{err}");

    let store = store_dir();
    let pg = archiving(store.path());
    // A base into a store its WAL does not go to: refused, and nothing of it stays.
    let (code, _, err) = run(dbward(&pg, elsewhere.path()).args(["backup", "--physical"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no WAL archive"), "{err}");
    switch_and_wait(&pg, store.path());
    let left: Vec<_> = std::fs::read_dir(elsewhere.path())
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).into_iter().flatten())
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("manual"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    let m = take_base(&pg, store.path());
    let copies = copies_dir();

    // A target past the archive's end: the server stops short of it, so the restore fails
    // (exit 1), and neither the directory nor a server is left.
    let future = "2099-01-01T00:00:00Z";
    let Err((code, err)) = restore(
        &pg,
        store.path(),
        copies.path(),
        "future",
        &["--time", future],
    ) else {
        panic!("a recovery short of its target was called done")
    };
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("recovery"), "{err}");
    assert!(!copies.path().join("future").exists());
    let running = Command::new("pgrep")
        .args(["-f", &copies.path().join("future").display().to_string()])
        .output()
        .unwrap();
    assert!(running.stdout.is_empty(), "a server was left running");

    // A time before the first base: refused (exit 3), nothing written.
    let Err((code, err)) = restore(
        &pg,
        store.path(),
        copies.path(),
        "past",
        &["--time", "2000-01-01T00:00:00Z"],
    ) else {
        panic!("restored to a time before every base")
    };
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("cannot go back that far"), "{err}");
    assert!(!copies.path().join("past").exists());

    // An existing directory is never written into.
    std::fs::create_dir(copies.path().join("taken")).unwrap();
    std::fs::write(copies.path().join("taken/keep"), "x").unwrap();
    let Err((code, err)) = restore(&pg, store.path(), copies.path(), "taken", &["latest"]) else {
        panic!("restored into an existing directory")
    };
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        std::fs::read(copies.path().join("taken/keep")).unwrap(),
        b"x"
    );

    // A base whose WAL is gone: refused (exit 3) before the directory is made.
    let first = m["physical"]["wal_first"].as_str().unwrap();
    std::fs::remove_file(store.path().join(format!("app/wal/{first}.zst"))).unwrap();
    let Err((code, err)) = restore(&pg, store.path(), copies.path(), "gap", &["latest"]) else {
        panic!("restored a base without its WAL")
    };
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(first), "{err}");
    assert!(!copies.path().join("gap").exists());

    // Archiving that fails (the archive's folder unwritable for the server's user): the base
    // is abandoned with the reason, where pg_basebackup alone would wait without end.
    use std::os::unix::fs::PermissionsExt;
    let wal = store.path().join("app/wal");
    std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o500)).unwrap();
    let (code, _, err) = run(dbward(&pg, store.path()).args(["backup", "--physical"]));
    std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("archiving is failing"), "{err}");
}

#[test]
fn retention_keeps_bases_by_their_own_rules_and_removes_only_the_wal_no_kept_base_needs() {
    let store = store_dir();
    let pg = archiving(store.path());
    switch_and_wait(&pg, store.path());
    let take = |physical: bool| {
        let mut c = dbward(&pg, store.path());
        c.args(["--json", "backup"]);
        if physical {
            c.arg("--physical");
        }
        let (code, out, err) = run(&mut c);
        assert_eq!(code, 0, "{err}");
        json(&out)["snapshot"].clone()
    };
    let dump = take(false);
    let old = take(true);
    pg.psql("app", "INSERT INTO t SELECT generate_series(1001, 1500)");
    switch_and_wait(&pg, store.path());
    let new = take(true);
    pg.psql("app", "INSERT INTO t SELECT generate_series(1501, 2000)");
    switch_and_wait(&pg, store.path());
    // What is not dbward's, or not a WAL file, stays whatever its name.
    let wal = store.path().join("app/wal");
    for foreign in ["notes.txt", "000000010000000000000001.zst.bak"] {
        std::fs::write(wal.join(foreign), "keep").unwrap();
    }

    let config = store.path().join("retention.toml");
    std::fs::write(&config, "[retention]\nkeep_last = 1\n").unwrap();
    let (code, out, err) = run(dbward(&pg, store.path())
        .arg("--config")
        .arg(&config)
        .args(["--json", "prune"]));
    assert_eq!(code, 0, "{err}");
    let report = json(&out);
    let removed: Vec<&str> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // Each kind by its own rules: the one dump is the newest dump, the old base is not the
    // newest base.
    assert_eq!(removed, [old["id"].as_str().unwrap()], "{report}");
    assert!(store
        .path()
        .join(format!("app/{}.json", dump["id"].as_str().unwrap()))
        .exists());
    assert!(!store
        .path()
        .join(format!("app/{}.json", old["id"].as_str().unwrap()))
        .exists());
    assert!(!store
        .path()
        .join(old["data_key"].as_str().unwrap())
        .exists());

    // The WAL before the kept base's first segment is gone, object and record; the rest stays.
    let cutoff = new["physical"]["wal_first"].as_str().unwrap();
    let wal_removed = report["wal_removed"].as_array().unwrap();
    assert!(!wal_removed.is_empty(), "{report}");
    for entry in std::fs::read_dir(&wal).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let seg = name.split('.').next().unwrap();
        if seg.len() == 24 && !name.ends_with(".bak") {
            assert!(
                seg[8..] >= cutoff[8..],
                "{name} outlived the cutoff {cutoff}"
            );
        }
    }
    for stays in [
        "notes.txt",
        "000000010000000000000001.zst.bak",
        "cluster.json",
    ] {
        assert!(wal.join(stays).exists(), "{stays} was removed");
    }
    assert!(wal.join(format!("{cutoff}.zst")).exists());
    assert!(wal.join(format!("{cutoff}.json")).exists());

    // What is kept still restores, and pitr verify finds its WAL.
    let (code, out, err) = run(dbward(&pg, store.path()).args(["--json", "pitr", "verify"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["bases"][0]["ok"], true, "{out}");
    let copies = copies_dir();
    let copy = restore(&pg, store.path(), copies.path(), "kept", &["latest"])
        .unwrap_or_else(|(code, err)| panic!("exit {code}: {err}"));
    assert_eq!(copy.psql("SELECT count(*) FROM t"), "2000");
}

#[test]
fn a_physical_drill_restores_the_base_and_the_archive_reports_rto_and_rpo_and_leaves_nothing() {
    let store = store_dir();
    let pg = archiving(store.path());
    switch_and_wait(&pg, store.path());
    let base = take_base(&pg, store.path())["id"]
        .as_str()
        .unwrap()
        .to_string();
    pg.psql("app", "INSERT INTO t SELECT generate_series(1001, 1500)");
    switch_and_wait(&pg, store.path());

    let state = copies_dir();
    let metrics = state.path().join("drill.prom");
    // The copy goes in the system's temp dir (the state dir is root's alone): here, one the
    // test watches.
    let tmp = state.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let drill = |extra: &[&str]| {
        run(dbward(&pg, store.path())
            .env("TMPDIR", &tmp)
            .arg("--state-dir")
            .arg(state.path().join("state"))
            .args(["--json", "restore-drill", "--physical", "--metrics"])
            .arg(&metrics)
            .args(extra))
    };
    let (code, out, err) = drill(&[]);
    assert_eq!(code, 0, "{err}");
    let report = &json(&out)["report"];
    assert_eq!(report["snapshot"], base.as_str(), "{report}");
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names[..4],
        ["wal", "restore", "integrity", "amcheck"],
        "{report}"
    );
    assert!(report["rto_seconds"].as_f64().unwrap() > 0.0, "{report}");
    // The rows inserted after the base were recovered: the RPO is their commit's age.
    let rpo = report["rpo_seconds"].as_f64().unwrap();
    assert!((0.0..600.0).contains(&rpo), "{report}");
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        prom.contains("dbward_drill_success{database=\"app\"} 1"),
        "{prom}"
    );
    assert!(prom.contains("dbward_drill_rpo_seconds"), "{prom}");
    // The receipt proves the base; nothing of the copy is left, no server runs.
    assert!(store.path().join(format!("app/{base}.drill.json")).exists());
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let running = Command::new("pgrep")
        .args(["-f", &tmp.display().to_string()])
        .output()
        .unwrap();
    assert!(
        running.stdout.is_empty(),
        "a drill's server was left running"
    );

    // A gap in the archive fails the drill against the base (exit 1), with its metrics.
    let first = json(&out)["report"]["checks"][0]["detail"]
        .as_str()
        .unwrap()
        .to_string();
    let seg = first
        .split_whitespace()
        .nth(2)
        .unwrap()
        .split("..")
        .next()
        .unwrap()
        .to_string();
    std::fs::remove_file(store.path().join(format!("app/wal/{seg}.zst"))).unwrap();
    let (code, out, err) = drill(&[]);
    assert_eq!(code, 1, "{err}");
    let report = &json(&out)["report"];
    assert_eq!(report["checks"][0]["verdict"], "failed", "{report}");
    assert!(std::fs::read_to_string(&metrics)
        .unwrap()
        .contains("dbward_drill_success{database=\"app\"} 0"));
}

#[test]
fn a_base_of_a_cluster_laid_out_as_debian_does_with_higher_limits_and_a_link_restores_alone() {
    // postgresql.conf stays outside the data directory (the base has none), the limits hot
    // standby compares are above the defaults, and the data directory links elsewhere.
    let store = store_dir();
    let archive = format!(
        "archive_command = '{}'",
        wal_command(store.path(), "wal-push %p")
    );
    let pg = Pg::start_debian_like(&[
        "wal_level = replica",
        "archive_mode = on",
        &archive,
        "max_connections = 150",
        "max_worker_processes = 12",
    ]);
    let outside = server_dir("dbward-test-pitr-outside-");
    common::give_to_postgres(outside.path());
    std::os::unix::fs::symlink(outside.path(), pg.data_dir().join("linked")).unwrap();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql(
        "app",
        "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000)",
    );
    switch_and_wait(&pg, store.path());
    take_base(&pg, store.path());

    let copies = copies_dir();
    let copy = restore(&pg, store.path(), copies.path(), "debian", &["latest"])
        .unwrap_or_else(|(code, err)| panic!("exit {code}: {err}"));
    assert_eq!(copy.psql("SELECT count(*) FROM t"), "1000");
    assert_eq!(copy.psql("SHOW max_connections"), "150");
    // pg_basebackup leaves the link out ("skipping special file"); nothing was written where
    // it pointed. (A link in a base's tar becomes a directory: a unit test in physical.rs.)
    assert!(std::fs::symlink_metadata(copy.dir.join("linked")).is_err());
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    // No partial directory is left beside the copy.
    let beside: Vec<_> = std::fs::read_dir(copies.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(beside, ["debian"], "{beside:?}");
}

#[test]
fn a_base_is_due_once_the_wal_since_the_newest_grows_past_base_max_wal() {
    let store = store_dir();
    let pg = archiving(store.path());
    switch_and_wait(&pg, store.path());
    let config = store.path().join("due.toml");
    std::fs::write(&config, "[pitr]\nbase_max_wal = \"32MiB\"\n").unwrap();
    let with_config = |args: &[&str]| {
        let (code, out, err) = run(dbward(&pg, store.path())
            .arg("--config")
            .arg(&config)
            .arg("--json")
            .args(args));
        assert_eq!(code, 0, "{args:?}: {err}");
        (json(&out), err)
    };
    let if_due = ["backup", "--physical", "--if-due"];
    // No base yet: one is due.
    let (first, _) = with_config(&if_due);
    assert_eq!(first["snapshot"]["format"], "pgbase", "{first}");
    // Right after it, none is.
    let (again, _) = with_config(&if_due);
    assert!(again["snapshot"].is_null(), "{again}");
    assert_eq!(again["due"], false, "{again}");
    // Three segments later, 48 MiB of WAL since the base: pitr verify says a base is due.
    for _ in 0..3 {
        pg.psql("app", "INSERT INTO t SELECT generate_series(1, 1000)");
        switch_and_wait(&pg, store.path());
    }
    let (verified, err) = with_config(&["pitr", "verify"]);
    assert_eq!(verified["base_due"], true, "{verified}");
    assert!(
        verified["wal_since_base_bytes"].as_u64().unwrap() >= 48 << 20,
        "{verified}"
    );
    assert!(err.contains("a base is due"), "{err}");
    let (taken, _) = with_config(&if_due);
    assert_eq!(taken["snapshot"]["format"], "pgbase", "{taken}");
    assert_ne!(taken["snapshot"]["id"], first["snapshot"]["id"]);
    let (verified, _) = with_config(&["pitr", "verify"]);
    assert_eq!(verified["base_due"], false, "{verified}");
}

/// Replaces `name` in the archive by `contents` the way a confused or damaged host would:
/// through `wal-push` itself, so that dbward's own records and checks agree with it (the
/// stored object and its record are removed first, as nothing else would overwrite them).
fn replace_in_archive(pg: &Pg, store: &Path, name: &str, contents: &[u8]) {
    let wal = store.join("app/wal");
    for ext in ["zst", "json"] {
        std::fs::remove_file(wal.join(format!("{name}.{ext}"))).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(name), contents).unwrap();
    let (code, _, err) = run(dbward(pg, store).arg("wal-push").arg(dir.path().join(name)));
    assert_eq!(code, 0, "{err}");
}

/// `wal-fetch` of `name`: its bytes.
fn fetched(pg: &Pg, store: &Path, name: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(dbward(pg, store)
        .args(["wal-fetch", name])
        .arg(dir.path().join(name)));
    assert_eq!(code, 0, "{err}");
    std::fs::read(dir.path().join(name)).unwrap()
}

/// Trust for PITR, defect 2: a segment in the middle of the archive that passes dbward's
/// checks but not PostgreSQL's (another position's WAL under its name, or contents damaged
/// before the push) ended recovery there, and `restore latest --physical` and the drill
/// promoted the copy and reported success, the WAL after it silently left out. Now replay
/// short of the archive's newest segment fails both, and nothing is left behind.
#[test]
fn recovery_that_stops_short_of_the_archives_end_fails_the_restore_and_the_drill() {
    let store = store_dir();
    let pg = archiving(store.path());
    switch_and_wait(&pg, store.path());
    take_base(&pg, store.path());
    let mut segments = Vec::new();
    for i in 0..4 {
        pg.psql(
            "app",
            &format!(
                "INSERT INTO t SELECT generate_series({0}, {0} + 99)",
                10_000 + i * 100
            ),
        );
        segments.push(switch_and_wait(&pg, store.path()));
    }
    let copies = copies_dir();
    // Sound, the archive's end restores.
    let copy = restore(&pg, store.path(), copies.path(), "sound", &["latest"])
        .unwrap_or_else(|(code, err)| panic!("exit {code}: {err}"));
    drop(copy);
    // The second of them replaced by the first's bytes (a segment of another position, which
    // dbward's checks cannot tell), then by its own bytes with one flipped in its middle.
    let (victim, donor) = (segments[1].clone(), segments[0].clone());
    let own = fetched(&pg, store.path(), &victim);
    for (case, bytes) in [
        ("foreign", fetched(&pg, store.path(), &donor)),
        ("damaged", {
            // Its first page's records, past the page header, overwritten.
            let mut b = own.clone();
            b[40..8192].fill(0x5a);
            b
        }),
    ] {
        replace_in_archive(&pg, store.path(), &victim, &bytes);
        let failed = restore(&pg, store.path(), copies.path(), case, &["latest"]);
        let (code, err) = match failed {
            Err(e) => e,
            Ok(copy) => panic!(
                "{case}: the restore reported success (replayed to {}, the archive's segments {segments:?}, {victim} replaced)",
                copy.psql("SELECT pg_last_wal_replay_lsn()")
            ),
        };
        assert_eq!(code, 1, "{case}: {err}");
        assert!(
            err.contains("short of the archive's newest segment"),
            "{case}: {err}"
        );
        assert!(
            !copies.path().join(case).exists(),
            "{case}: the copy was left"
        );
        let (code, out, err) = run(dbward(&pg, store.path())
            .env("TMPDIR", copies.path())
            .args(["--json", "restore-drill", "--physical"]));
        assert_ne!(code, 0, "{case}: the drill passed: {out}{err}");
        assert!(
            out.contains("short of the archive's newest segment"),
            "{case}: {out}"
        );
    }
    replace_in_archive(&pg, store.path(), &victim, &own);
}

/// Trust for PITR, defect 9: a `file://` store shared by the archiver (`postgres`) and the
/// deploy hook (root) locked one of them out: whoever came first made the database's folder
/// 0700. With `store.group`, folders are 2770 and files 0640 for that group, whoever makes
/// them; while archiving fails, `backup --physical` refuses and `migrate` says so.
#[test]
fn a_local_store_shared_by_the_archiver_and_the_deploy_hook_needs_and_takes_a_group() {
    let uid: u32 = tool(Command::new("id").args(["-u", "postgres"]))
        .parse()
        .unwrap();
    let gid: u32 = tool(Command::new("id").args(["-g", "postgres"]))
        .parse()
        .unwrap();
    let shared = server_dir("dbward-test-shared-");
    common::give_to_postgres(shared.path());
    // The store's root: the operator's, the group's to write in.
    let root = shared.path().join("store");
    std::fs::create_dir(&root).unwrap();
    std::os::unix::fs::chown(&root, Some(0), Some(gid)).unwrap();
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o2770)).unwrap();
    let history = shared.path().join("00000002.history");
    std::fs::write(&history, "1\t0/3000000\tno recovery target specified\n").unwrap();
    std::os::unix::fs::chown(&history, Some(uid), Some(gid)).unwrap();
    let as_postgres = |c: &mut Command| {
        std::os::unix::process::CommandExt::uid(c, uid);
        std::os::unix::process::CommandExt::gid(c, gid);
    };
    let db = "postgres://postgres@127.0.0.1:1/app";
    for group in [None, Some("postgres")] {
        let config = shared.path().join("dbward.toml");
        std::fs::write(
            &config,
            format!(
                "[store]\nurl = \"file://{}\"\n{}",
                root.display(),
                group
                    .map(|g| format!("group = \"{g}\"\n"))
                    .unwrap_or_default()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        // Root writes first (here a push of its own; a deploy's snapshot makes the same
        // folder): the database's folders are made by root.
        let mut push_root = common::dbward(shared.path());
        push_root.args([
            "--config",
            config.to_str().unwrap(),
            "--database",
            db,
            "wal-push",
        ]);
        let root_history = shared.path().join("00000003.history");
        std::fs::write(
            &root_history,
            "2\t0/4000000\tno recovery target specified\n",
        )
        .unwrap();
        let (code, _, err) = run(push_root.arg(&root_history));
        assert_eq!(code, 0, "{group:?}: {err}");
        // Then PostgreSQL's archiver (user postgres).
        let mut push = common::dbward(shared.path());
        push.args([
            "--config",
            config.to_str().unwrap(),
            "--database",
            db,
            "wal-push",
        ])
        .arg(&history);
        as_postgres(&mut push);
        let (code, _, err) = run(&mut push);
        match group {
            None => {
                assert_ne!(code, 0, "without a group the archiver is locked out");
                assert!(err.contains("ermission denied"), "{err}");
            }
            Some(_) => {
                assert_eq!(code, 0, "{err}");
                use std::os::unix::fs::MetadataExt;
                for (path, mode) in [
                    (root.join("app"), 0o2770),
                    (root.join("app/wal"), 0o2770),
                    (root.join("app/wal/00000002.history.json"), 0o640),
                ] {
                    let m = std::fs::metadata(&path).unwrap();
                    assert_eq!(
                        (m.gid(), m.mode() & 0o7777),
                        (gid, mode),
                        "{}",
                        path.display()
                    );
                }
            }
        }
        std::fs::remove_dir_all(root.join("app")).unwrap();
    }
    // A link where the store keeps a folder is refused, not followed: its target is left as
    // it was (neither its group nor its mode changed, nothing written in it).
    let elsewhere = shared.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::set_permissions(
        &elsewhere,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink(&elsewhere, root.join("app")).unwrap();
    let mut push = common::dbward(shared.path());
    push.args([
        "--config",
        shared.path().join("dbward.toml").to_str().unwrap(),
        "--database",
        db,
        "wal-push",
    ])
    .arg(&history);
    let (code, _, err) = run(&mut push);
    assert_ne!(code, 0, "a link in the store was followed");
    assert!(err.contains("symbolic link"), "{err}");
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&elsewhere).unwrap();
    assert_eq!((m.gid(), m.mode() & 0o7777), (0, 0o755));
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

/// Trust for PITR, defect 9, the server's side: while its archiving fails, `backup --physical`
/// refuses before writing anything (a base without its WAL is useless), and a deploy says so.
#[test]
fn while_archiving_fails_a_base_is_refused_and_a_deploy_says_so() {
    let store = store_dir();
    let pg = archiving(store.path());
    switch_and_wait(&pg, store.path());
    // The archive's folder taken from the archiver (root's now, 0700, as a deploy hook that
    // came first would leave it).
    common::tool(
        Command::new("chown")
            .args(["-R", "root:root"])
            .arg(store.path().join("app")),
    );
    std::fs::set_permissions(
        store.path().join("app"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    pg.psql("app", "INSERT INTO t VALUES (1)");
    pg.psql("postgres", "SELECT pg_switch_wal()");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while pg.psql("postgres", "SELECT failed_count FROM pg_stat_archiver") == "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "the archiver never failed"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let before: Vec<_> = std::fs::read_dir(store.path().join("app"))
        .unwrap()
        .collect();
    let (code, _, err) = run(dbward(&pg, store.path()).args(["backup", "--physical"]));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("archiving is failing") && err.contains("store.group"),
        "{err}"
    );
    let after: Vec<_> = std::fs::read_dir(store.path().join("app"))
        .unwrap()
        .collect();
    assert_eq!(before.len(), after.len(), "nothing was written");
    let p = common::Project::new();
    p.migration("V1__a.sql", "CREATE TABLE a (id int);\n");
    let (code, _, err) =
        run(p
            .dbward(&pg.url("app"))
            .args(["--store", &store_url(store.path()), "migrate"]));
    assert_eq!(code, 0, "{err}");
    p.migration("V2__b.sql", "CREATE TABLE b (id int);\n");
    let (code, _, err) =
        run(p
            .dbward(&pg.url("app"))
            .args(["--store", &store_url(store.path()), "migrate"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("WAL archiving is failing"), "{err}");
}

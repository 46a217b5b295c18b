//! Restore points before deploys and the health guard's rewind of a cluster on this host
//! (`[pitr.server]`), on a real PostgreSQL cluster archiving through `dbward wal-push`: a
//! deploy's pre-deploy snapshot is a restore point once a base exists (a dump before, saying
//! why); a failed health check rewinds the cluster to it (exit 5), the old data directory
//! kept; a rewind refused leaves everything as it was (exit 3), and one that cannot complete
//! after the stop puts the old cluster back and starts it (exit 1).

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use common::archive::{archiving, restore_copy, store_dir, store_url, switch_and_wait};
use common::{json, run, Http, Pg, Project};

/// A cluster archiving into a store, a project whose `dbward.toml` names both and
/// `[pitr.server]`, V1 applied (a dump: no base yet), a base, 500 more rows in `t` in later
/// WAL, and V2 (`DROP TABLE t`) deployed with a restore point. The app wrote one order after it.
struct Deployed {
    pg: Pg,
    _store: tempfile::TempDir,
    p: Project,
    url: String,
    base: serde_json::Value,
    point: serde_json::Value,
}

fn deployed() -> Deployed {
    deployed_with(|stop, start| (stop, start), "")
}

/// [`deployed`], with `[pitr.server]`'s `stop` and `start` made from the real ones by
/// `commands`, and `extra` lines in that section.
fn deployed_with(commands: impl Fn(String, String) -> (String, String), extra: &str) -> Deployed {
    let store = store_dir();
    let pg = archiving(store.path());
    switch_and_wait(&pg, store.path());
    let p = Project::new();
    let (stop, start) = pg.stop_start_commands();
    let (stop, start) = commands(stop, start);
    std::fs::write(
        p.path().join("dbward.toml"),
        format!(
            "[store]\nurl = {:?}\n\n[pitr.server]\ndata_dir = {:?}\nstop = {stop:?}\nstart = {start:?}\nuser = \"postgres\"\n{extra}",
            store_url(store.path()),
            pg.data_dir().display().to_string()
        ),
    )
    .unwrap();
    let url = pg.url("app");
    p.migration(
        "V1__orders.sql",
        "CREATE TABLE orders (id int); INSERT INTO orders SELECT generate_series(1, 100);\n",
    );
    // No base yet: the pre-deploy snapshot is a dump, and the output says why.
    let (code, out, err) = run(p.dbward(&url).args(["--json", "migrate"]));
    assert_eq!(code, 0, "{err}");
    let first = json(&out);
    assert_eq!(first["snapshot_format"], "pgdump", "{first}");
    assert!(
        first["restore_point_fallback"]
            .as_str()
            .unwrap()
            .contains("no base backup"),
        "{first}"
    );

    let (code, out, err) = run(p.dbward(&url).args(["--json", "backup", "--physical"]));
    assert_eq!(code, 0, "{err}");
    let base = json(&out)["snapshot"].clone();
    // The rows after the base are in later segments than the base's own.
    switch_and_wait(&pg, store.path());
    pg.psql("app", "INSERT INTO t SELECT generate_series(1001, 1500)");

    p.migration("V2__drop.sql", "DROP TABLE t;\n");
    let (code, out, err) = run(p.dbward(&url).args(["--json", "migrate"]));
    assert_eq!(code, 0, "{err}");
    let second = json(&out);
    assert_eq!(second["snapshot_format"], "pgpoint", "{second}");
    assert!(second["restore_point_fallback"].is_null(), "{second}");
    let id = second["snapshot"].as_str().unwrap().to_string();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(store.path().join(format!("app/{id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["kind"], "pre-deploy", "{manifest}");
    assert_eq!(manifest["data_key"], "", "a restore point stores no data");
    assert_eq!(manifest["point"]["base"], base["id"], "{manifest}");
    assert!(
        store
            .path()
            .join(format!(
                "app/wal/{}.zst",
                manifest["point"]["segment"].as_str().unwrap()
            ))
            .exists(),
        "the point's segment was archived before its manifest was written"
    );
    // The application writes after the deploy (a rewind discards it).
    pg.psql("app", "INSERT INTO orders VALUES (101)");
    Deployed {
        pg,
        _store: store,
        p,
        url,
        base,
        point: manifest,
    }
}

impl Deployed {
    fn guard(&self, health: &Http) -> Command {
        let mut c = self.p.dbward(&self.url);
        c.args(["--json", "health", "--restore-on-failure", "--url"])
            .arg(health.url())
            .args(["--timeout", "1s", "--interval", "200ms"]);
        c
    }

    /// The guard, started and stopped at failure point `point` (it goes on once
    /// `<point>.go` exists in the directory returned).
    fn guard_paused_at(
        &self,
        health: &Http,
        point: &str,
    ) -> (std::process::Child, tempfile::TempDir) {
        let points = tempfile::tempdir().unwrap();
        let child = self
            .guard(health)
            .env("DBWARD_FAILPOINTS", format!("{point}=wait"))
            .env("DBWARD_FAILPOINT_DIR", points.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_until(|| points.path().join(point).exists(), point);
        (child, points)
    }

    /// What the parent of the data directory holds besides it, by name.
    fn beside_data_dir(&self) -> Vec<String> {
        let data = self.pg.data_dir();
        let mut names: Vec<String> = std::fs::read_dir(data.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("dbward"))
            .collect();
        names.sort();
        names
    }
}

#[test]
fn a_failed_deploy_rewinds_the_cluster_to_its_restore_point_and_keeps_the_old_one() {
    let d = deployed();
    let pg = &d.pg;
    let id = d.point["id"].as_str().unwrap();

    // By hand, the restore point restores into a private copy.
    let copies = common::server_dir("dbward-test-rw-");
    common::give_to_postgres(copies.path());
    let (copy, err) = restore_copy(
        d.p.dbward(&d.url).args(["restore", id, "--physical"]),
        &copies.path().join("at-point"),
    )
    .unwrap_or_else(|(code, err)| panic!("exit {code}: {err}"));
    assert_eq!(
        copy.psql("SELECT (SELECT count(*) FROM t) || ' ' || (SELECT count(*) FROM orders) || ' ' || (SELECT max(version) FROM refinery_schema_history)"),
        "1500 100 1",
        "{err}"
    );
    drop(copy);

    // A later base and retention keeping one base: the base the deploy's restore point needs
    // stays, with its WAL.
    let (code, out, err) = run(d.p.dbward(&d.url).args(["--json", "backup", "--physical"]));
    assert_eq!(code, 0, "{err}");
    let later = json(&out)["snapshot"]["id"].as_str().unwrap().to_string();
    std::fs::write(
        d.p.path().join("keep-one.toml"),
        format!(
            "{}\n[retention]\nkeep_last = 1\n",
            std::fs::read_to_string(d.p.path().join("dbward.toml")).unwrap()
        ),
    )
    .unwrap();
    let (code, out, err) =
        run(d
            .p
            .dbward(&d.url)
            .args(["--config", "keep-one.toml", "--json", "prune"]));
    assert_eq!(code, 0, "{err}");
    let pruned = json(&out);
    assert!(pruned["removed"].as_array().unwrap().is_empty(), "{pruned}");
    let base_id = d.base["id"].as_str().unwrap();
    let decided = |id: &str| {
        pruned["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        decided(base_id)["reasons"],
        serde_json::json!(["point"]),
        "{pruned}"
    );
    assert_eq!(decided(&later)["keep"], true, "{pruned}");

    let unhealthy = Http::status(503);
    // A cluster that holds another database is not rewound: nothing changes (exit 3).
    pg.psql("postgres", "CREATE DATABASE other");
    let (code, _, err) = run(&mut d.guard(&unhealthy));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("other databases") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(pg.psql("app", "SELECT count(*) FROM orders"), "101");
    assert!(d.beside_data_dir().is_empty(), "{:?}", d.beside_data_dir());
    // Not recorded as rolled back: as an undo that did not happen, which `migrate` refuses to
    // go past and the next guard retries (below, once the other database is gone).
    let record = common::state_file(&d.p.path().join(".dbward"), "failed-batch", "app")
        .expect("the failed undo is recorded");
    let record = json(&std::fs::read_to_string(record).unwrap());
    assert!(
        record["undo_failed"]
            .as_str()
            .is_some_and(|w| w.contains("other databases")),
        "{record}"
    );
    pg.psql("postgres", "DROP DATABASE other");

    // A setting changed after the base (ALTER SYSTEM): the rewound cluster keeps the live
    // configuration, not the base's.
    pg.psql("postgres", "ALTER SYSTEM SET work_mem = '7MB'");
    pg.psql("postgres", "SELECT pg_reload_conf()");
    // More of the application's writes after the deploy, for the count of what the rewind
    // discards (one order was written by `deployed`): 46 inserts, 3 updates, 1 delete.
    pg.psql(
        "app",
        "INSERT INTO orders SELECT generate_series(1001, 1045)",
    );
    pg.psql("app", "UPDATE orders SET id = id WHERE id <= 3");
    pg.psql("app", "DELETE FROM orders WHERE id = 4");
    // A SIGTERM while the cluster is down for the rewind waits: the rewind finishes.
    let (child, points) = d.guard_paused_at(&unhealthy, "rewind-after-swap");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    std::fs::write(points.path().join("rewind-after-swap.go"), "").unwrap();
    let done = child.wait_with_output().unwrap();
    let (code, out, err) = (
        done.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&done.stdout).into_owned(),
        String::from_utf8_lossy(&done.stderr).into_owned(),
    );
    assert_eq!(code, 5, "{err}\nthe server's log:\n{}", pg.log());
    assert!(
        err.contains(
            "SIGTERM received while the cluster is stopped for its rewind: finishing that first"
        ),
        "{err}"
    );
    let report = json(&out);
    assert_eq!(report["rewound"], true, "{report}");
    // What it discarded, counted in the stopped cluster's WAL: every committed row change after
    // the point, the batch's own (DROP TABLE t, its history row) left out (trust round 3: the
    // counters undercounted, 18 of 46).
    let discarded = &report["discarded"];
    assert_eq!(
        (
            discarded["inserted"].as_u64(),
            discarded["updated"].as_u64(),
            discarded["deleted"].as_u64()
        ),
        (Some(46), Some(3), Some(1)),
        "{report}"
    );
    assert_eq!(
        discarded["by_database"],
        serde_json::json!({ "app": 50 }),
        "{report}"
    );
    assert!(
        err.contains("discarded 50 committed row change(s)"),
        "{err}"
    );
    // Head and rows as at the restore point: t is back, the order written after the deploy
    // is gone, V2 is not applied.
    assert_eq!(pg.psql("app", "SELECT count(*) FROM t"), "1500");
    assert_eq!(pg.psql("app", "SELECT count(*) FROM orders"), "100");
    assert_eq!(
        pg.psql("app", "SELECT max(version) FROM refinery_schema_history"),
        "1"
    );
    assert_eq!(pg.psql("app", "SELECT pg_is_in_recovery()"), "f");
    // The cluster's own settings: it archives again, on a new timeline.
    assert_eq!(pg.psql("app", "SHOW archive_mode"), "on");
    let wal = pg.psql("app", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    assert!(!wal.starts_with("00000001"), "a new timeline: {wal}");
    let auto = std::fs::read_to_string(pg.data_dir().join("postgresql.auto.conf")).unwrap();
    assert!(
        !auto.contains("dbward"),
        "the recovery lines are gone: {auto}"
    );
    assert!(
        auto.contains("work_mem = '7MB'"),
        "the live settings: {auto}"
    );
    assert_eq!(pg.psql("app", "SHOW work_mem"), "7MB");
    // The old data directory is kept beside it, and the new one has its owner and mode.
    let kept = d.beside_data_dir();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].starts_with("data.dbward-replaced-"), "{kept:?}");
    let parent = pg.data_dir().parent().unwrap().to_path_buf();
    assert!(parent.join(&kept[0]).join("PG_VERSION").exists());
    use std::os::unix::fs::MetadataExt;
    let old = std::fs::metadata(parent.join(&kept[0])).unwrap();
    let new = std::fs::metadata(pg.data_dir()).unwrap();
    assert_eq!((new.uid(), new.gid()), (old.uid(), old.gid()));
    assert_eq!(new.mode() & 0o7777, old.mode() & 0o7777);
    // The new timeline reaches the archive: its history file is pushed.
    let history = d
        ._store
        .path()
        .join(format!("app/wal/{}.history.zst", &wal[..8]));
    wait_until(
        || history.exists(),
        "the new timeline's history file in the archive",
    );
    // A restore to the archive's end follows the new timeline: the rewound state and what
    // came after it, from the base before the point (the later base is on the abandoned
    // branch).
    pg.psql("app", "INSERT INTO orders VALUES (200)");
    switch_and_wait(pg, d._store.path());
    let (copy, err) = restore_copy(
        d.p.dbward(&d.url).args(["restore", "latest", "--physical"]),
        &copies.path().join("latest"),
    )
    .unwrap_or_else(|(code, err)| panic!("exit {code}: {err}"));
    assert!(err.contains("rather than the newer"), "{err}");
    assert_eq!(
        copy.psql("SELECT (SELECT count(*) FROM t) || ' ' || (SELECT count(*) FROM orders) || ' ' || (SELECT max(id) FROM orders)"),
        "1500 101 200",
        "{err}"
    );
    drop(copy);
    // `pitr verify` says a base is due on the new timeline, and never that a restore does not
    // follow it (trust round 3: it said so while restores followed it).
    let (code, out, err) = run(d.p.dbward(&d.url).args(["pitr", "verify", "--json"]));
    assert_eq!(code, 0, "{err}");
    let verified = json(&out);
    assert_eq!(verified["base_due"], true, "{verified}");
    let said = format!("{out}{err}");
    assert!(
        said.contains("restores from that base follow it") && !said.contains("does not follow"),
        "{said}"
    );
    // The base is unchanged and the guard never rewinds the same deploy twice.
    assert!(d.base["id"].is_string());
    let (code, _, err) = run(&mut d.guard(&unhealthy));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("never restored twice"), "{err}");
}

#[test]
fn a_rewind_that_cannot_complete_puts_the_old_cluster_back_running() {
    let d = deployed();
    let pg = &d.pg;
    let unhealthy = Http::status(503);
    let (child, points) = d.guard_paused_at(&unhealthy, "rewind-before-stop");
    // The restored directory loses the WAL after its base: recovery cannot reach the point,
    // and the server ends once it started on it.
    let partial: PathBuf = std::fs::read_dir(pg.data_dir().parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".data.dbward-partial-")
        })
        .expect("the restored directory beside the data directory");
    let wal_last = d.base["physical"]["wal_last"].as_str().unwrap();
    let mut removed = 0;
    for e in std::fs::read_dir(partial.join("pg_wal")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.len() == 24 && name.as_str() > wal_last {
            std::fs::remove_file(partial.join("pg_wal").join(&name)).unwrap();
            removed += 1;
        }
    }
    assert!(removed > 0, "the point lies past the base's WAL");
    std::fs::write(points.path().join("rewind-before-stop.go"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("put back and runs again"), "{err}");
    // It failed for the reason given: the restored cluster could not reach the point.
    assert!(
        pg.log()
            .contains("recovery ended before configured recovery target was reached"),
        "{}",
        pg.log()
    );
    // The old cluster runs, unchanged: V2 applied, t dropped, the later order there.
    assert_eq!(pg.psql("app", "SELECT count(*) FROM orders"), "101");
    assert_eq!(pg.psql("app", "SELECT to_regclass('t') IS NULL"), "t");
    assert_eq!(
        pg.psql("app", "SELECT max(version) FROM refinery_schema_history"),
        "2"
    );
    assert!(!pg.data_dir().join("recovery.signal").exists());
    // Nothing of the attempt is left beside it.
    assert!(d.beside_data_dir().is_empty(), "{:?}", d.beside_data_dir());
}

fn wait_until(what: impl Fn() -> bool, name: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !what() {
        assert!(
            std::time::Instant::now() < deadline,
            "waited too long for {name}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Trust for PITR, defect 1: the rewind dropped the migration lock before it ran `stop`, so a
/// `migrate` started while the old cluster was stopping applied its batch, and the rewind then
/// discarded it. Now the lock's session is held until the server is shutting down (when it
/// takes no new connection), and taken again on the restored cluster before it can be written
/// to: the `migrate` applies nothing.
#[test]
fn a_migrate_started_while_the_rewind_stops_the_cluster_applies_nothing() {
    let d = deployed_with(|stop, start| (format!("sleep 3; {stop}"), start), "");
    let pg = &d.pg;
    let unhealthy = Http::status(503);
    let (guard, points) = d.guard_paused_at(&unhealthy, "rewind-before-stop");
    d.p.migration("V3__during.sql", "CREATE TABLE during_the_stop (x int);\n");
    std::fs::write(points.path().join("rewind-before-stop.go"), "").unwrap();
    // The deploy starts while `stop` sleeps, the old cluster still serving (told to retry
    // the failed batch, so that only the lock can keep it out).
    let migrate =
        d.p.dbward(&d.url)
            .args(["migrate", "--retry-failed", "--lock-timeout", "60s"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    let guarded = guard.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&guarded.stderr);
    assert_eq!(guarded.status.code(), Some(5), "{err}");
    let migrated = migrate.wait_with_output().unwrap();
    let merr = String::from_utf8_lossy(&migrated.stderr);
    assert_ne!(migrated.status.code(), Some(0), "the deploy got in: {merr}");
    // It waited for the lock on the old cluster, and lost its session when that stopped.
    assert!(merr.contains("terminating connection"), "{merr}");
    assert_eq!(
        pg.psql("app", "SELECT to_regclass('during_the_stop') IS NULL"),
        "t",
        "{merr}"
    );
    assert_eq!(
        pg.psql("app", "SELECT max(version) FROM refinery_schema_history"),
        "1"
    );
}

/// Trust for PITR, defect 1: two guards started together both rewound (the second stopped the
/// first one's promoted cluster, both chose timeline 2, and every later `wal-push` failed). Now
/// the second waits for the first and finds the deploy undone.
#[test]
fn two_guards_at_once_rewind_the_cluster_once() {
    let d = deployed_with(|stop, start| (format!("sleep 3; {stop}"), start), "");
    let pg = &d.pg;
    let unhealthy = Http::status(503);
    let spawn = || {
        d.guard(&unhealthy)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let mut codes = [a.status.code(), b.status.code()];
    codes.sort();
    let errs = format!(
        "{}\n---\n{}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    assert_eq!(codes, [Some(1), Some(5)], "{errs}");
    assert!(errs.contains("never restored twice"), "{errs}");
    assert_eq!(
        d.beside_data_dir().len(),
        1,
        "one kept directory: {:?}",
        d.beside_data_dir()
    );
    // The cluster archives on its new timeline: a switch reaches the archive.
    pg.psql("app", "INSERT INTO orders VALUES (300)");
    switch_and_wait(pg, d._store.path());
    assert!(!pg.log().contains("already in the archive"), "{}", pg.log());
}

/// Trust for PITR, defect 3: a `start` that never returns kept the guard waiting although the
/// server promoted at once; promotion is read from the data directory, and the command is
/// killed with its process group when the guard is done.
#[test]
fn a_start_that_never_returns_does_not_hold_the_rewind() {
    let d = deployed_with(
        |stop, start| (stop, format!("{start}; exec sleep 1001.5")),
        "",
    );
    let unhealthy = Http::status(503);
    let (code, _, err) = run(&mut d.guard(&unhealthy));
    assert_eq!(code, 5, "{err}");
    // Done once the server promoted, not once `start` gave up at its deadline.
    assert!(!err.contains("did not finish within"), "{err}");
    assert_eq!(
        d.pg.psql("app", "SELECT max(version) FROM refinery_schema_history"),
        "1"
    );
    let sleeping = std::process::Command::new("pgrep")
        .args(["-fx", "sleep 1001.5"])
        .output()
        .unwrap();
    assert!(
        sleeping.stdout.is_empty(),
        "the start command was left running: {}",
        String::from_utf8_lossy(&sleeping.stdout)
    );
}

/// Trust for PITR, defects 3 and 4: a `stop` or `start` that hangs is killed at its
/// `pitr.server.stop_timeout` / `start_timeout`. A hanging stop changes nothing; a hanging
/// start of the rewound and then of the old cluster ends the guard at once, saying loudly that
/// the cluster is down and how to start it.
#[test]
fn hanging_stop_and_start_commands_are_bounded_and_said_loudly() {
    let d = deployed_with(
        |_stop, _start| ("sleep 1000".into(), "sleep 1000".into()),
        "stop_timeout = \"2s\"\nstart_timeout = \"2s\"\n",
    );
    let unhealthy = Http::status(503);
    let (code, _, err) = run(&mut d.guard(&unhealthy));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("did not stop") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(
        d.pg.psql("app", "SELECT max(version) FROM refinery_schema_history"),
        "2",
        "still serving, unchanged"
    );
}

/// A `stop` that works and a `start` that hangs: the rewound cluster does not start, the old
/// directory is put back, its start hangs as well: the guard ends at once (exit 1), saying
/// loudly that the cluster is down and how to start it; started by hand, it is the old one,
/// unchanged.
#[test]
fn a_start_that_hangs_after_a_stop_that_worked_says_the_cluster_is_down() {
    let d = deployed_with(
        |stop, _start| (stop, "exec sleep 1000".into()),
        "start_timeout = \"2s\"\n",
    );
    let unhealthy = Http::status(503);
    let (code, _, err) = run(&mut d.guard(&unhealthy));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("THE CLUSTER IS DOWN"), "{err}");
    assert!(
        err.contains("exec sleep 1000"),
        "the command to run is named: {err}"
    );
    assert!(!d.pg.data_dir().join("recovery.signal").exists());
    let (_, start) = d.pg.stop_start_commands();
    let started = std::process::Command::new("sh")
        .args(["-c", &start])
        .output()
        .unwrap();
    assert!(started.status.success(), "{started:?}");
    assert_eq!(
        d.pg.psql("app", "SELECT max(version) FROM refinery_schema_history"),
        "2",
        "the old cluster, unchanged"
    );
    assert!(d.beside_data_dir().is_empty(), "{:?}", d.beside_data_dir());
}

/// Trust for PITR, defect 5: a `start` killed by a signal meant for dbward (a terminal's Ctrl-C,
/// systemd's SIGTERM to the whole unit) undid the rewind. The signal waits for the section;
/// `start` is tried once more.
#[test]
fn a_start_killed_by_a_signal_is_tried_again_and_the_rewind_finishes() {
    let marks = tempfile::tempdir().unwrap();
    let once = marks.path().join("killed-once");
    let once_for = once.clone();
    let d = deployed_with(
        move |stop, start| {
            (
                stop,
                format!(
                    "if [ ! -e {0} ]; then touch {0}; kill -TERM $$; fi; {start}",
                    once_for.display()
                ),
            )
        },
        "",
    );
    let unhealthy = Http::status(503);
    let (code, _, err) = run(&mut d.guard(&unhealthy));
    assert_eq!(code, 5, "{err}");
    assert!(once.exists());
    assert!(err.contains("starting it once more"), "{err}");
    assert_eq!(
        d.pg.psql("app", "SELECT max(version) FROM refinery_schema_history"),
        "1"
    );
}

/// Trust for PITR, defect 6: files the configuration includes came from the base, not the live
/// cluster: an `include_dir` added after the base made the rewound cluster fail to start (and
/// the failed deploy stay live), and settings in them reverted. Every file the live
/// configuration reads in the data directory is carried over now.
#[test]
fn files_the_live_configuration_includes_are_carried_into_the_rewound_cluster() {
    let d = deployed();
    let pg = &d.pg;
    let data = pg.data_dir();
    let conf_d = data.join("conf.d");
    std::fs::create_dir(&conf_d).unwrap();
    std::fs::write(
        conf_d.join("tuning.conf"),
        "maintenance_work_mem = '77MB'\n",
    )
    .unwrap();
    let mut main = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
    main.push_str("include_dir 'conf.d'\n");
    std::fs::write(data.join("postgresql.conf"), main).unwrap();
    common::give_to_postgres(&data);
    pg.psql("postgres", "SELECT pg_reload_conf()");
    assert_eq!(pg.psql("app", "SHOW maintenance_work_mem"), "77MB");
    let unhealthy = Http::status(503);
    let (code, _, err) = run(&mut d.guard(&unhealthy));
    assert_eq!(code, 5, "{err}\nthe server's log:\n{}", pg.log());
    assert_eq!(pg.psql("app", "SHOW maintenance_work_mem"), "77MB");
    assert_eq!(
        pg.psql("app", "SELECT max(version) FROM refinery_schema_history"),
        "1"
    );
}

/// Trust for PITR, defect 8: a streaming standby without a replication slot stays on the
/// abandoned timeline, serving the failed deploy's data; the guard says so, in its message and
/// the deploy log.
#[test]
fn a_streaming_standby_without_a_slot_is_named_by_the_rewind() {
    let d = deployed();
    let pg = &d.pg;
    let dir = common::server_dir("dbward-test-standby-");
    common::give_to_postgres(dir.path());
    let runuser = |c: &mut std::process::Command| {
        if nix_root() {
            let mut r = std::process::Command::new("runuser");
            r.args(["-u", "postgres", "--"])
                .arg(c.get_program())
                .args(c.get_args());
            common::tool(&mut r)
        } else {
            common::tool(c)
        }
    };
    runuser(
        std::process::Command::new(common::pg_bindir().join("pg_basebackup"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-D",
            ])
            .arg(dir.path().join("data")),
    );
    let standby = common::Pg::start_in(dir);
    wait_until(
        || pg.psql("postgres", "SELECT count(*) FROM pg_stat_replication") == "1",
        "the standby streaming",
    );
    let unhealthy = Http::status(503);
    let (code, _, err) = run(&mut d.guard(&unhealthy));
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("streaming standbys are connected without a replication slot"),
        "{err}"
    );
    let (_, out, _) = run(d.p.dbward(&d.url).args(["deploys", "--json"]));
    assert!(out.contains("without a replication slot"), "{out}");
    drop(standby);
}

fn nix_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Trust for PITR, defect 7: `pitr verify` exited 0 while the last deploy's restore point could
/// not be restored (its segment missing, a segment damaged in the store), and the guard then
/// refused during the incident. It now fetches and checks every WAL file from the point's base
/// to the point, and says whether the point is restorable.
#[test]
fn pitr_verify_says_whether_the_last_deploys_restore_point_can_be_restored() {
    let d = deployed();
    let verify = || run(d.p.dbward(&d.url).args(["pitr", "verify", "--json"]));
    let (code, out, err) = verify();
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    assert_eq!(doc["restore_point"]["point"], d.point["id"], "{doc}");
    assert!(doc["restore_point"]["problem"].is_null(), "{doc}");
    assert!(
        doc["restore_point"]["segments_checked"].as_u64().unwrap() > 0,
        "{doc}"
    );

    let wal = d._store.path().join("app/wal");
    let segment = d.point["point"]["segment"].as_str().unwrap().to_string();
    // Damaged in the store: its compressed bytes changed (its record unchanged).
    let object = wal.join(format!("{segment}.zst"));
    let good = std::fs::read(&object).unwrap();
    let mut bad = good.clone();
    let at = bad.len() - 10;
    bad[at] ^= 0xff;
    std::fs::write(&object, &bad).unwrap();
    let (code, out, err) = verify();
    assert_eq!(code, 3, "{err}");
    assert!(json(&out)["restore_point"]["problem"].is_string(), "{out}");
    assert!(err.contains("cannot be restored"), "{err}");
    // Missing.
    std::fs::remove_file(&object).unwrap();
    let (code, _, err) = verify();
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&segment), "{err}");
    std::fs::write(&object, &good).unwrap();
    let (code, _, err) = verify();
    assert_eq!(code, 0, "{err}");
}

/// Trust for PITR, defect 1 (the other end): once the restored cluster takes connections, the
/// rewind holds the migration lock on it until it is verified: a deploy started then waits.
#[test]
fn the_migration_lock_is_held_on_the_rewound_cluster_until_it_is_verified() {
    let d = deployed();
    let unhealthy = Http::status(503);
    let (guard, points) = d.guard_paused_at(&unhealthy, "rewind-before-verify");
    d.p.migration("V3__after.sql", "CREATE TABLE after_the_rewind (x int);\n");
    let (code, _, err) = run(d.p.dbward(&d.url).args(["migrate", "--lock-timeout", "2s"]));
    assert_eq!(code, 4, "the lock was free on the rewound cluster: {err}");
    std::fs::write(points.path().join("rewind-before-verify.go"), "").unwrap();
    let out = guard.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        d.pg.psql("app", "SELECT to_regclass('after_the_rewind') IS NULL"),
        "t"
    );
}

//! `dbward health --restore-on-failure` and `dbward run`: a deploy that applied migrations and
//! then fails its health check gets its pre-deploy snapshot back (exit 5); anything else does not.
//! The health endpoint is a real HTTP server on loopback.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{json, run, sqlite, Http, Pg, Project};

/// V1 applied with data; then a deploy that applies V2 (drops a column, rewrites data).
fn deployed(p: &Project) {
    p.migration(
        "V1__notes.sql",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, author TEXT);\n",
    );
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    sqlite(
        &p.path().join("app.db"),
        "INSERT INTO notes (body, author) VALUES ('one', 'ann'), ('two', 'bob');",
    );
    p.migration("V2__drop_author.sql", "ALTER TABLE notes DROP COLUMN author;\nUPDATE notes SET body = upper(body) WHERE id > 0;\n");
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
    assert_eq!(code, 0, "{err}");
}

fn health(p: &Project, url: &str) -> Command {
    guard(p, "sqlite:app.db", url)
}

/// `health --restore-on-failure` of `database`, polling `url` every 200 ms for 2 s.
pub fn guard(p: &Project, database: &str, url: &str) -> Command {
    let mut c = p.dbward(database);
    c.args([
        "health",
        "--restore-on-failure",
        "--timeout",
        "2s",
        "--interval",
        "200ms",
        "--url",
        url,
    ]);
    c
}

#[test]
fn an_unhealthy_deploy_that_migrated_is_restored_with_exit_5_and_never_twice() {
    let p = Project::new();
    deployed(&p);
    let server = Http::status(503);
    let (code, out, err) = run(health(&p, &server.url()).arg("--json"));
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("Restored the pre-deploy snapshot"), "{err}");
    let doc = json(&out);
    let kept = doc["restored"]["replaced"].as_str().unwrap().to_string();
    let db = p.path().join("app.db");
    assert_eq!(
        sqlite(&db, "SELECT max(version) FROM refinery_schema_history"),
        "1",
        "schema back"
    );
    assert_eq!(
        sqlite(&db, "SELECT group_concat(body || ':' || author) FROM notes"),
        "one:ann,two:bob",
        "data back"
    );
    assert_eq!(
        sqlite(
            &p.path().join(&kept),
            "SELECT group_concat(body) FROM notes"
        ),
        "ONE,TWO",
        "the failed database is kept"
    );

    let (code, _, err) = run(&mut health(&p, &server.url()));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("never restored twice"), "{err}");
}

#[test]
fn a_no_op_deploy_that_fails_health_is_not_restored() {
    let p = Project::new();
    deployed(&p);
    assert_eq!(
        run(p.dbward("sqlite:app.db").arg("migrate")).0,
        0,
        "nothing pending: a no-op deploy"
    );
    let server = Http::status(503);
    let (code, _, err) = run(&mut health(&p, &server.url()));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("applied no migrations"), "{err}");
    assert_eq!(
        sqlite(
            &p.path().join("app.db"),
            "SELECT max(version) FROM refinery_schema_history"
        ),
        "2"
    );
}

#[test]
fn a_moved_head_is_not_restored() {
    let p = Project::new();
    deployed(&p);
    // Someone migrated since the deploy (by hand, say).
    sqlite(
        &p.path().join("app.db"),
        "INSERT INTO refinery_schema_history VALUES (3, 'by_hand', '2026-01-01T00:00:00Z', '1');",
    );
    let server = Http::status(500);
    let (code, _, err) = run(&mut health(&p, &server.url()));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("migration head moved"), "{err}");
}

#[test]
fn healthy_after_a_delay_is_healthy() {
    let p = Project::new();
    deployed(&p);
    let server = Http::healthy_after(Duration::from_millis(600));
    let (code, out, err) = run(p.dbward("sqlite:app.db").args([
        "health",
        "--restore-on-failure",
        "--timeout",
        "30s",
        "--interval",
        "100ms",
        "--url",
        &server.url(),
        "--json",
    ]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["status"], 200);
    assert!(
        server.hits.load(std::sync::atomic::Ordering::Relaxed) > 1,
        "polled until healthy"
    );
    assert_eq!(
        sqlite(
            &p.path().join("app.db"),
            "SELECT max(version) FROM refinery_schema_history"
        ),
        "2"
    );
}

#[test]
fn run_restores_and_stops_an_unhealthy_command() {
    let p = Project::new();
    deployed(&p);
    p.migration("V3__add_tags.sql", "CREATE TABLE tags (name TEXT);\n");
    let server = Http::status(503);
    let pidfile = p.path().join("app.pid");
    let script = format!("echo $$ > {}; exec sleep 300", pidfile.display());
    let (code, _, err) = run(p.dbward("sqlite:app.db").args([
        "run",
        "--url",
        &server.url(),
        "--timeout",
        "1s",
        "--interval",
        "200ms",
        "--grace",
        "2s",
        "--",
        "sh",
        "-c",
        &script,
    ]));
    assert_eq!(code, 5, "{err}");
    let db = p.path().join("app.db");
    assert_eq!(
        sqlite(&db, "SELECT max(version) FROM refinery_schema_history"),
        "2",
        "V3 undone"
    );
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the command was stopped"
    );
}

#[test]
fn run_passes_on_the_command_exit_code_and_forwards_sigterm() {
    let p = Project::new();
    deployed(&p);
    let server = Http::status(200);
    let (code, _, err) = run(p.dbward("sqlite:app.db").args([
        "run",
        "--url",
        &server.url(),
        "--",
        "sh",
        "-c",
        "sleep 0.5; exit 7",
    ]));
    assert_eq!(code, 7, "{err}");
    // The command's own code, in --json too: 0 is ok.
    for (exit, ok) in [(0, true), (3, false)] {
        let (code, out, err) = run(p.dbward("sqlite:app.db").args([
            "--json",
            "locked",
            "--",
            "sh",
            "-c",
            &format!("exit {exit}"),
        ]));
        assert_eq!(code, exit, "{err}");
        let doc = json(&out);
        assert_eq!(doc["ok"], ok, "{doc}");
        assert_eq!(doc["exit_code"], exit, "{doc}");
        assert_eq!(doc["command_exit_code"], exit, "{doc}");
    }

    let child = p
        .dbward("sqlite:app.db")
        .args(["run", "--url", &server.url(), "--", "sleep", "300"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the command is up (healthy), then ask dbward to stop.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server.hits.load(std::sync::atomic::Ordering::Relaxed) < 2 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    sigterm(child.id());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(128 + 15),
        "{}",
        common::stderr(&out)
    );
}

fn sigterm(pid: u32) {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
}

#[test]
fn postgres_unhealthy_deploy_is_restored_and_sessions_ended() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    p.migration(
        "V1__t.sql",
        "CREATE TABLE t (id int PRIMARY KEY, v text);\nINSERT INTO t VALUES (1, 'before');\n",
    );
    assert_eq!(run(p.dbward(&url).arg("migrate")).0, 0);
    p.migration("V2__change.sql", "UPDATE t SET v = 'after' WHERE id = 1;\n");
    assert_eq!(run(p.dbward(&url).arg("migrate")).0, 0);
    // SQL probes on PostgreSQL: a true one passes, a false one is unhealthy and names itself.
    let healthy = Http::status(200);
    for (probe, want) in [
        ("SELECT count(*) = 1 FROM t", 0),
        ("SELECT v = 'before' FROM t", 1),
    ] {
        std::fs::write(
            p.path().join("dbward.toml"),
            format!("[health]\nprobes = [\"{probe}\"]\n"),
        )
        .unwrap();
        let (code, _, err) =
            run(p
                .dbward(&url)
                .args(["health", "--timeout", "1s", "--url", &healthy.url()]));
        assert_eq!(code, want, "{probe}: {err}");
    }
    std::fs::remove_file(p.path().join("dbward.toml")).unwrap();
    // The new release is connected while it fails its health check.
    let mut app = pg.session("shop");
    std::io::Write::write_all(app.stdin.as_mut().unwrap(), b"SELECT 1;\n").unwrap();
    pg.wait_for("postgres", "SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop' AND application_name = 'psql'", "1");
    let server = Http::status(503);
    let (code, _, err) = run(p.dbward(&url).args([
        "health",
        "--restore-on-failure",
        "--timeout",
        "1s",
        "--url",
        &server.url(),
    ]));
    assert_eq!(code, 5, "{err}");
    let _ = app.kill();
    let _ = app.wait();
    assert_eq!(pg.psql("shop", "SELECT v FROM t"), "before");
    assert_eq!(
        pg.psql("shop", "SELECT max(version) FROM refinery_schema_history"),
        "1"
    );
}

/// The trust issue's restart loop: with `Restart=on-failure`, a release whose migrations break
/// the app looped (snapshot, migrate, unhealthy, restore) forever. After the guard rolled a
/// batch back, `migrate` refuses that same batch (exit 3) without touching the database, until
/// the release changes or `--retry-failed`.
#[test]
fn a_batch_the_guard_rolled_back_is_not_applied_again_by_a_restart() {
    let p = Project::new();
    deployed(&p);
    let server = Http::status(503);
    let (code, _, err) = run(&mut health(&p, &server.url()));
    assert_eq!(code, 5, "{err}");
    let snapshots = |p: &Project| {
        let (_, out, _) = run(p.dbward("sqlite:app.db").args(["snapshots", "--json"]));
        json(&out)["snapshots"].as_array().unwrap().len()
    };
    let before = snapshots(&p);
    let db = p.path().join("app.db");
    let bytes = std::fs::read(&db).unwrap();

    // The unit restarts: ExecStartPre=dbward migrate.
    for _ in 0..3 {
        let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
        assert_eq!(code, 3, "{err}");
        assert!(
            err.contains("rolled back by the health guard") && err.contains("--retry-failed"),
            "{err}"
        );
    }
    assert_eq!(snapshots(&p), before, "no new pre-deploy snapshots");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        bytes,
        "the database was not touched"
    );

    // A container on a fresh state volume: the store still knows.
    std::fs::remove_file(
        common::state_file(&p.path().join(".dbward"), "failed-batch", "app").unwrap(),
    )
    .unwrap();
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
    assert_eq!(code, 3, "the record in the store refuses it too: {err}");

    // A fixed release is a new batch.
    p.migration(
        "V2__drop_author.sql",
        "ALTER TABLE notes DROP COLUMN author;\n",
    );
    let (code, _, err) = run(p.dbward("sqlite:app.db").args(["migrate", "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    // And the same batch goes through only when asked.
    p.migration("V2__drop_author.sql", "ALTER TABLE notes DROP COLUMN author;\nUPDATE notes SET body = upper(body) WHERE id > 0;\n");
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["migrate", "--retry-failed"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        sqlite(&db, "SELECT max(version) FROM refinery_schema_history"),
        "2"
    );
}

/// As a container's process 1 (`entrypoint: ["dbward", "run", ...]`), `run` inherits every
/// orphan of the application; it reaps them as tini would. Run here as process 1 of its own
/// PID namespace, with an application that orphans a few short-lived processes.
#[test]
fn run_as_process_1_leaves_no_zombies() {
    let p = Project::new();
    p.migration("V1__t.sql", "CREATE TABLE t (id INTEGER);\n");
    let server = Http::status(200);
    let count = p.path().join("zombies");
    let app = format!(
        "for i in 1 2 3 4 5; do sh -c 'sleep 0.1 &'; done; sleep 2; \
         grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l > '{}'",
        count.display()
    );
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(env!("CARGO_BIN_EXE_dbward"))
        .args([
            "--database",
            "sqlite:app.db",
            "run",
            "--url",
            &server.url(),
            "--",
            "sh",
            "-c",
            &app,
        ])
        .current_dir(p.path())
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .expect("unshare (util-linux) runs dbward as process 1 of a new PID namespace");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&count).unwrap().trim(),
        "0",
        "no zombie left under process 1"
    );
}

/// A 200 is not proof the release works: the body must name the release being deployed, each
/// `--check` command must pass and each SQL probe must hold; any that does not is unhealthy,
/// and the guard acts exactly as for a failed HTTP probe, naming the check.
#[test]
fn body_checks_and_sql_probes_decide_health_too() {
    let server = Http::status(200);
    let p = Project::new();
    deployed(&p);
    // Healthy on every count.
    std::fs::write(
        p.path().join("dbward.toml"),
        "[health]\nprobes = [\"SELECT count(*) > 0 FROM notes\"]\n",
    )
    .unwrap();
    let (code, _, err) = run(health(&p, &server.url()).args([
        "--expect-body",
        common::RELEASE,
        "--check",
        "echo contract ok",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("contract ok"),
        "the check's output is logged: {err}"
    );

    // The wrong release answers: unhealthy, and the guard restores (exit 5).
    let (code, _, err) = run(health(&p, &server.url()).args(["--expect-body", "f00dfeed"]));
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("does not contain `f00dfeed`"), "{err}");

    // A failing check and a false probe name themselves (nothing left to restore: exit 1).
    let (code, _, err) =
        run(health(&p, &server.url()).args(["--check", "echo broken contract >&2; exit 3"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("check `echo broken contract") && err.contains("broken contract"),
        "{err}"
    );
    std::fs::write(
        p.path().join("dbward.toml"),
        "[health]\nprobes = [\"SELECT count(*) > 100 FROM notes\"]\n",
    )
    .unwrap();
    let (code, _, err) = run(&mut health(&p, &server.url()));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("returned false"), "{err}");
}

/// The deploy log: each migrate that applied something (or failed) and each restore by the
/// guard, with who, the release and the reason; kept in the state dir and in the store, so a
/// new host still has it.
#[test]
fn the_deploy_log_records_who_what_why_and_the_guards_restores() {
    let p = Project::new();
    p.migration(
        "V1__notes.sql",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);\n",
    );
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    p.migration(
        "V2__more.sql",
        "ALTER TABLE notes ADD COLUMN author TEXT;\n",
    );
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["migrate", "--reason", "ticket 42: authors"])
        .env("DBWARD_RELEASE", "4f2c9e1")
        .env("USER", "deployer"));
    assert_eq!(code, 0, "{err}");
    let server = Http::status(503);
    assert_eq!(run(&mut health(&p, &server.url())).0, 5);

    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["deploys", "--json"]));
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    let log = doc["deploys"].as_array().unwrap();
    assert_eq!(log.len(), 3, "{doc}");
    assert_eq!(log[0]["event"], "restore");
    assert_eq!(log[1]["event"], "migrate");
    assert_eq!(log[1]["applied"], serde_json::json!([2]));
    assert_eq!(log[1]["release"], "4f2c9e1");
    assert_eq!(log[1]["reason"], "ticket 42: authors");
    assert_eq!(log[1]["user"], "deployer");
    assert!(log[1]["snapshot"].is_string());

    // A new host: the state dir is gone, the store still has the log.
    for e in std::fs::read_dir(p.path().join(".dbward"))
        .unwrap()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with("deploys-") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let (_, out, _) = run(p.dbward("sqlite:app.db").args(["deploys", "--json"]));
    assert_eq!(json(&out)["deploys"].as_array().unwrap().len(), 3, "{out}");
}

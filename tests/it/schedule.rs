//! `dbward schedule`: cron jobs in the foreground, retention applied, clean exit on SIGTERM,
//! failures notified.

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{json, run, Http, Project};

fn sigterm(pid: u32) {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
}

fn app(p: &Project) {
    p.migration(
        "V1__t.sql",
        "CREATE TABLE t (id INTEGER PRIMARY KEY);\nINSERT INTO t VALUES (1), (2);\n",
    );
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
}

#[test]
fn list_shows_the_next_five_runs_of_each_job() {
    let p = Project::new();
    std::fs::write(
        p.path().join("dbward.toml"),
        "[schedule]\nbackup = \"30 3 * * *\"\ndrill = \"0 4 * * 0\"\n",
    )
    .unwrap();
    let (code, out, err) = run(p
        .dbward("sqlite:app.db")
        .args(["schedule", "--list", "--json"]));
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    let backups = doc["jobs"]["backup"]["next"].as_array().unwrap();
    assert_eq!(backups.len(), 5);
    assert!(
        backups
            .iter()
            .all(|t| t.as_str().unwrap().ends_with("T03:30:00Z")),
        "{backups:?}"
    );
    assert_eq!(doc["jobs"]["drill"]["next"].as_array().unwrap().len(), 5);

    // PostgreSQL's base backups and physical drills are jobs of their own.
    std::fs::write(
        p.path().join("dbward.toml"),
        "[schedule]\nbase = \"30 2 * * *\"\npitr_drill = \"0 5 * * 0\"\n",
    )
    .unwrap();
    let (code, out, err) = run(p
        .dbward("sqlite:app.db")
        .args(["schedule", "--list", "--json"]));
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    assert_eq!(
        doc["jobs"]["base"]["command"],
        serde_json::json!(["backup", "--scheduled", "--physical"])
    );
    assert_eq!(
        doc["jobs"]["pitr_drill"]["command"],
        serde_json::json!(["restore-drill", "--scheduled", "--physical", "latest"])
    );

    std::fs::write(
        p.path().join("dbward.toml"),
        "[schedule]\nbackup = \"61 * * * *\"\n",
    )
    .unwrap();
    let (code, _, err) = run(p.dbward("sqlite:app.db").args(["schedule", "--list"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("schedule.backup"), "{err}");
}

#[test]
fn a_one_second_backup_job_with_keep_last_2_leaves_two_snapshots_and_stops_on_sigterm() {
    let p = Project::new();
    app(&p);
    std::fs::write(
        p.path().join("dbward.toml"),
        "[schedule]\nbackup = \"* * * * * *\"\n\n[retention]\nkeep_last = 2\n",
    )
    .unwrap();
    let child = p
        .dbward("sqlite:app.db")
        .arg("schedule")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until at least four scheduled backups have completed (each prunes to two).
    let dir = p.path().join(".dbward/snapshots/app");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "the scheduler did not run four backups"
        );
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.ends_with(".json") {
                seen.insert(n);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    sigterm(child.id());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let (_, out, _) = run(p.dbward("sqlite:app.db").args(["snapshots", "--json"]));
    let snaps = json(&out)["snapshots"].as_array().unwrap().clone();
    assert_eq!(snaps.len(), 2, "keep_last = 2");
    assert!(snaps.iter().all(|s| s["kind"] == "scheduled"));
}

#[test]
fn a_failing_job_is_notified_and_does_not_stop_the_scheduler() {
    let p = Project::new();
    app(&p);
    let hook = Http::status(204);
    let ping = Http::status(200);
    // The store is a file where a directory should be: every backup fails.
    std::fs::write(p.path().join("not-a-dir"), "x").unwrap();
    std::fs::write(
        p.path().join("dbward.toml"),
        format!(
            "[store]\nurl = \"file://./not-a-dir/sub\"\n\n[schedule]\nbackup = \"* * * * * *\"\n\n[schedule.ping]\nbackup = \"http://127.0.0.1:{}/ping/abc\"\n\n[notify]\nurl = \"{}\"\n",
            ping.port,
            hook.url()
        ),
    )
    .unwrap();
    let child = p
        .dbward("sqlite:app.db")
        .arg("schedule")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while hook.requests.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "no failure notifications");
        std::thread::sleep(Duration::from_millis(50));
    }
    sigterm(child.id());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let first = hook.requests.lock().unwrap()[0].clone();
    assert!(first.starts_with("POST "), "{first}");
    let body: serde_json::Value =
        serde_json::from_str(first.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["job"], "backup");
    assert_eq!(body["status"], "failed");
    assert!(
        body["error"].as_str().unwrap().contains("not-a-dir"),
        "{body}"
    );
    let pings = ping.requests.lock().unwrap().clone();
    assert!(
        pings.iter().any(|r| r.starts_with("GET /ping/abc/start ")),
        "{pings:?}"
    );
    assert!(
        pings.iter().any(|r| r.starts_with("GET /ping/abc/fail ")),
        "{pings:?}"
    );
}

/// The 5-field form means what crontab means, day fields included (either matches when both
/// are restricted): the next runs of a table of expressions equal those of croniter, a
/// reference cron implementation (installed by scripts/test.sh).
#[test]
fn crontab_expressions_run_when_cron_would_run_them() {
    let exprs = [
        "30 3 * * *",
        "0 0 1 * 1",
        "30 4 1 * 0",
        "0 12 15 * 5",
        "15 2 * * 1-5",
        "0 */6 * * *",
        "0 0 1,15 * *",
        "45 23 * * 0,6",
        "0 5 1 1 *",
        "0 8 10-20 * 2",
    ];
    let p = Project::new();
    for expr in exprs {
        std::fs::write(
            p.path().join("dbward.toml"),
            format!("[schedule]\nbackup = \"{expr}\"\n"),
        )
        .unwrap();
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (code, out, err) = run(p
            .dbward("sqlite:app.db")
            .args(["schedule", "--list", "--json"]));
        assert_eq!(code, 0, "{err}");
        let ours: Vec<String> = json(&out)["jobs"]["backup"]["next"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let reference = common::tool(Command::new("python3").args([
            "-c",
            "import sys, datetime; from croniter import croniter\n\
             base = datetime.datetime.fromtimestamp(int(sys.argv[2]), datetime.timezone.utc)\n\
             it = croniter(sys.argv[1], base)\n\
             print('\\n'.join(it.get_next(datetime.datetime).strftime('%Y-%m-%dT%H:%M:%SZ') for _ in range(5)))",
            expr,
            &base.to_string(),
        ]));
        let theirs: Vec<String> = reference.lines().map(str::to_string).collect();
        assert_eq!(ours, theirs, "`{expr}`");
    }
}

//! Several hosts of one application behind a load balancer share one database and one store;
//! each has its own state dir and name (`DBWARD_HOST`). The guard of the host that applied a
//! batch asks the others (`[health] hosts`) before it undoes it: a release that fails on that
//! host alone leaves the database the others serve as it is; one that fails everywhere is
//! undone once, by that host, and the deploy log says what each host answered.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use common::{free_port, json, run, Http, Pg, Project};

/// One host: its name, its own state dir, the shared store.
struct Host<'a> {
    name: &'static str,
    p: &'a Project,
    store: String,
}

impl Host<'_> {
    fn state(&self) -> PathBuf {
        self.p.path().join(format!("state-{}", self.name))
    }

    fn dbward(&self, url: &str) -> Command {
        let mut c = self.p.dbward(url);
        c.env("DBWARD_HOST", self.name)
            .arg("--state-dir")
            .arg(self.state())
            .args(["--store", &self.store]);
        c
    }

    /// `health --restore-on-failure` on this host, its own endpoint answering `local`, with
    /// `[health]` settings `extra` (the other hosts).
    fn guard(&self, url: &str, local: &Http, extra: &str) -> (i32, String) {
        let config = self.p.path().join(format!("{}.toml", self.name));
        std::fs::write(
            &config,
            format!("[health]\ntimeout = \"1s\"\ninterval = \"200ms\"\n{extra}"),
        )
        .unwrap();
        let (code, _, err) = run(self.dbward(url).arg("--config").arg(&config).args([
            "health",
            "--restore-on-failure",
            "--url",
            &local.url(),
        ]));
        (code, err)
    }
}

fn hosts<'a>(p: &'a Project, names: &[&'static str]) -> Vec<Host<'a>> {
    let store = format!("file://{}", p.path().join("store").display());
    names
        .iter()
        .map(|name| Host {
            name,
            p,
            store: store.clone(),
        })
        .collect()
}

fn urls(servers: &[&Http]) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{}\"", s.url())).collect();
    format!("hosts = [{}]\n", list.join(", "))
}

/// The deploy log as any host reads it (its own records and the store's), newest first:
/// (event, host, whether the other hosts' answers are recorded).
fn log(host: &Host, url: &str) -> Vec<(String, String, serde_json::Value)> {
    let (code, out, err) = run(host.dbward(url).args(["deploys", "--json"]));
    assert_eq!(code, 0, "{err}");
    json(&out)["deploys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["event"].as_str().unwrap().to_string(),
                d["host"].as_str().unwrap().to_string(),
                d["hosts"].clone(),
            )
        })
        .collect()
}

#[test]
fn a_release_failing_on_one_host_is_left_alone_and_one_failing_everywhere_is_undone_once() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    let all = hosts(&p, &["a", "b", "c"]);
    let (a, b, c) = (&all[0], &all[1], &all[2]);
    p.migration(
        "V1__t.sql",
        "CREATE TABLE t (id int PRIMARY KEY, v text);\nINSERT INTO t VALUES (1, 'before');\n",
    );
    for h in &all {
        assert_eq!(run(h.dbward(&url).arg("migrate")).0, 0);
    }
    // The release: host a deploys first and applies the batch; b and c find nothing pending.
    p.migration("V2__change.sql", "UPDATE t SET v = 'after' WHERE id = 1;\n");
    for h in &all {
        let (code, out, err) = run(h.dbward(&url).arg("migrate"));
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            out.contains("applied 1"),
            h.name == "a",
            "{}: {out}",
            h.name
        );
    }
    let (up, down) = (Http::status(200), Http::status(503));
    let v = || pg.psql("shop", "SELECT v FROM t");

    // The release fails on host a alone: b and c serve. Nothing is undone, and the deploy log
    // says what each answered.
    let (code, err) = a.guard(&url, &down, &urls(&[&up, &up]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("2 of 2 other host(s) serving") && err.contains("restore pre-deploy"),
        "{err}"
    );
    assert_eq!(v(), "after");
    let entries = log(c, &url);
    assert_eq!(
        (entries[0].0.as_str(), entries[0].1.as_str()),
        ("guard", "a")
    );
    assert_eq!(entries[0].2["met"], false, "{:?}", entries[0]);
    assert_eq!(entries[0].2["answers"][0]["status"], 200);

    // No other host answers: this host may be the one cut off; nothing is undone.
    let silent = format!("hosts = [\"http://127.0.0.1:{}/healthz\"]\n", free_port());
    let (code, err) = a.guard(&url, &down, &silent);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no other host answered"), "{err}");
    assert_eq!(v(), "after");

    // It fails everywhere. A host that did not apply the batch never undoes it; the one that
    // did, does, once.
    let (code, err) = b.guard(&url, &down, &urls(&[&down, &down]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("applied no migrations"), "{err}");
    assert_eq!(v(), "after");
    let (code, err) = a.guard(&url, &down, &urls(&[&down, &down]));
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("0 of 2 other host(s) serving"), "{err}");
    assert_eq!(v(), "before");
    let (code, err) = a.guard(&url, &down, &urls(&[&down, &down]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("never restored twice"), "{err}");
    let entries = log(b, &url);
    let restores: Vec<_> = entries.iter().filter(|e| e.0 == "restore").collect();
    assert_eq!(restores.len(), 1, "{entries:?}");
    assert_eq!(restores[0].1, "a");
    assert_eq!(restores[0].2["met"], true);
    assert_eq!(restores[0].2["answers"][1]["status"], 503);
}

/// `hosts_rule = "majority"`: this host and one of two others unhealthy is enough; the serving
/// one's answer is in the record. SQLite: the rule is the guard's, whatever the engine.
#[test]
fn a_majority_rule_undoes_when_more_than_half_the_hosts_fail() {
    let p = Project::new();
    let all = hosts(&p, &["a"]);
    let a = &all[0];
    p.migration("V1__t.sql", "CREATE TABLE t (id INTEGER);\n");
    assert_eq!(run(a.dbward("sqlite:app.db").arg("migrate")).0, 0);
    p.migration("V2__u.sql", "CREATE TABLE u (id INTEGER);\n");
    assert_eq!(run(a.dbward("sqlite:app.db").arg("migrate")).0, 0);
    let (up, down) = (Http::status(200), Http::status(503));
    let rule = "hosts_rule = \"majority\"\n";
    let (code, err) = a.guard(
        "sqlite:app.db",
        &down,
        &format!("{rule}{}", urls(&[&up, &up])),
    );
    assert_eq!(code, 1, "{err}");
    let (code, err) = a.guard(
        "sqlite:app.db",
        &down,
        &format!("{rule}{}", urls(&[&down, &up])),
    );
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("1 of 2 other host(s) serving"), "{err}");
    assert_eq!(
        common::sqlite(
            &p.path().join("app.db"),
            "SELECT count(*) FROM sqlite_master WHERE name = 'u'"
        ),
        "0"
    );
}

/// `[schedule] once_within` on every host: the hosts' timers fire for one shared PostgreSQL
/// database.
fn scheduled(h: &Host, url: &str, job: &[&str]) -> Command {
    let config = h.p.path().join("schedule.toml");
    std::fs::write(&config, "[schedule]\nonce_within = \"1h\"\n").unwrap();
    let mut c = h.dbward(url);
    c.arg("--config").arg(&config).args(job);
    c
}

#[test]
fn three_hosts_timers_make_one_backup_and_one_drill_and_a_failed_one_is_done_by_the_next() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    let all = hosts(&p, &["a", "b", "c"]);
    p.migration(
        "V1__t.sql",
        "CREATE TABLE t (id int PRIMARY KEY);\nINSERT INTO t SELECT generate_series(1, 1000);\n",
    );
    assert_eq!(run(all[0].dbward(&url).arg("migrate")).0, 0);
    let scheduled_snapshots = || {
        let (code, out, err) = run(all[2].dbward(&url).args(["snapshots", "--json"]));
        assert_eq!(code, 0, "{err}");
        json(&out)["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["kind"] == "scheduled")
            .map(|s| s["host"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };

    // A backup that fails on its host (no pg_dump there) leaves no record: the next host's
    // timer backs up.
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) =
        run(scheduled(&all[0], &url, &["backup", "--scheduled"]).env("PATH", empty.path()));
    assert_ne!(code, 0, "a backup without pg_dump succeeded: {err}");
    assert_eq!(scheduled_snapshots(), Vec::<String>::new());

    // The three timers fire at once: one host backs up, the two others wait for its lease,
    // then find its snapshot and say so.
    let children: Vec<_> = all
        .iter()
        .map(|h| {
            scheduled(h, &url, &["backup", "--scheduled"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut done_by = Vec::new();
    for (h, child) in all.iter().zip(children) {
        let out = child.wait_with_output().unwrap();
        let (said, err) = (common::stdout(&out), common::stderr(&out));
        assert!(out.status.success(), "{}: {err}", h.name);
        if said.contains("was done by host") {
            done_by.push(h.name);
        }
    }
    let made = scheduled_snapshots();
    assert_eq!(made.len(), 1, "one backup of three timers: {made:?}");
    assert_eq!(done_by.len(), 2, "{done_by:?}");
    assert!(!done_by.contains(&made[0].as_str()), "{done_by:?} {made:?}");

    // The weekly drill: the first host drills, the next ones find it done.
    for (i, h) in all.iter().enumerate() {
        let (code, out, err) = run(&mut scheduled(
            h,
            &url,
            &["restore-drill", "--scheduled", "latest"],
        ));
        assert_eq!(code, 0, "{}: {err}", h.name);
        assert_eq!(
            out.contains("was done by host a") && out.contains("passed"),
            i > 0,
            "{}: {out}",
            h.name
        );
    }
    // A drill by hand in between is not the scheduled one: it hides nothing.
    assert_eq!(
        run(all[1].dbward(&url).args(["restore-drill", "latest"])).0,
        0
    );
    let (code, out, err) = run(&mut scheduled(
        &all[2],
        &url,
        &["restore-drill", "--scheduled", "latest"],
    ));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("was done by host a"), "{out}");
    // The drill history in the store: the scheduled drill, the drilling host's, and the one
    // by hand.
    let drills = p.path().join("store").join(pg_name(&url)).join("drills");
    let records: Vec<_> = std::fs::read_dir(&drills)
        .unwrap_or_else(|e| panic!("{}: {e}", drills.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    let mut records: Vec<serde_json::Value> = records
        .iter()
        .map(|p| json(&std::fs::read_to_string(p).unwrap()))
        .collect();
    records.sort_by_key(|r| r["at"].as_str().unwrap().to_string());
    let seen = |r: &serde_json::Value| {
        (
            r["host"].as_str().map(str::to_string),
            r["scheduled"].as_bool(),
            r["kind"].as_str().map(str::to_string),
            r["success"].as_bool(),
        )
    };
    assert_eq!(
        seen(&records[0]),
        (
            Some("a".into()),
            Some(true),
            Some("snapshot".into()),
            Some(true)
        )
    );
    assert_eq!(
        seen(&records[1]),
        (
            Some("b".into()),
            Some(false),
            Some("snapshot".into()),
            Some(true)
        )
    );

    // Without once_within, every scheduled run does its job, as before.
    assert_eq!(
        run(all[1].dbward(&url).args(["backup", "--scheduled"])).0,
        0
    );
    assert_eq!(scheduled_snapshots().len(), 2);
}

/// The store folder of a PostgreSQL URL's database (its name).
fn pg_name(url: &str) -> String {
    url.rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string()
}

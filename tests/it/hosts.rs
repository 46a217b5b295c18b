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

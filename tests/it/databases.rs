//! Several databases in one config (`[[databases]]`): an app server with its application
//! database, its jobs queue and a cache of record, all SQLite, one store. Each entry inherits the
//! top level; `--db` picks one; status, snapshots, backup, restore-drill and schedule act on all,
//! one database's failure never stopping the others; the commands that change one database need
//! `--db`.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{json, run, tool};

const NAMES: [&str; 3] = ["app", "jobs", "cache"];

fn config(root: &Path) -> String {
    let r = root.display();
    let mut text = format!(
        "state_dir = \"{r}/state\"\n[store]\nurl = \"file://{r}/store\"\n[drill]\nmetrics = \"{r}/metrics/dbward.prom\"\n[schedule]\nbackup = \"30 3 * * *\"\ndrill = \"0 5 * * 0\"\n"
    );
    for name in NAMES {
        text.push_str(&format!(
            "\n[[databases]]\nname = \"{name}\"\nurl = \"sqlite:{r}/{name}.db\"\nmigrations = \"{r}/m-{name}\"\n"
        ));
    }
    // One entry overrides an inherited section.
    text.push_str("[databases.drill]\nmax_rto = \"10m\"\n");
    text
}

fn dbward(root: &Path) -> Command {
    let mut c = common::dbward(root);
    c.arg("--config").arg(root.join("dbward.toml"));
    c
}

#[test]
fn three_databases_in_one_config_back_up_drill_and_report_each() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("dbward.toml"), config(root)).unwrap();
    std::fs::create_dir(root.join("metrics")).unwrap();
    for name in NAMES {
        let m = root.join(format!("m-{name}"));
        std::fs::create_dir(&m).unwrap();
        std::fs::write(
            m.join("V1__t.sql"),
            format!("CREATE TABLE {name}_items (id INTEGER PRIMARY KEY);\nINSERT INTO {name}_items VALUES (1), (2);\n"),
        )
        .unwrap();
    }

    // Changing a database needs to know which.
    let (code, _, err) = run(dbward(root).arg("migrate"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("app, jobs, cache") && err.contains("--db"),
        "{err}"
    );
    let (code, _, err) = run(dbward(root).args(["--db", "nope", "status"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("nope") && err.contains("app, jobs, cache"),
        "{err}"
    );
    for name in NAMES {
        // --db, or DBWARD_DB as a unit's environment gives it.
        let mut c = dbward(root);
        if name == "jobs" {
            c.env("DBWARD_DB", name);
        } else {
            c.args(["--db", name]);
        }
        let (code, out, err) = run(c.arg("migrate"));
        assert_eq!(code, 0, "{name}: {err}");
        assert!(out.contains("applied 1"), "{name}: {out}");
    }
    assert_eq!(
        common::sqlite(&root.join("cache.db"), "SELECT count(*) FROM cache_items"),
        "2"
    );

    // The nightly backup of all three: one snapshot in each database's own folder. The
    // variables that name one database (an app's DATABASE_URL in the environment file) are not
    // read in this form.
    let (code, out, err) = run(dbward(root)
        .env(
            "DATABASE_URL",
            format!("sqlite:{}/other.db", root.display()),
        )
        .args(["--json", "backup", "--scheduled"]));
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    assert_eq!(doc["databases"].as_array().unwrap().len(), 3, "{doc}");
    for name in NAMES {
        let kept: Vec<_> = std::fs::read_dir(root.join("store").join(name))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sqlite.zst"))
            .collect();
        assert_eq!(kept.len(), 1, "{name}: {kept:?}");
    }
    assert!(!root.join("store/other").exists());

    // The weekly drill of each, its metrics in a file of its own, labelled with its database.
    let (code, out, err) = run(dbward(root).args(["restore-drill", "--scheduled", "latest"]));
    assert_eq!(code, 0, "{err}");
    for name in NAMES {
        assert!(out.contains(&format!("== {name} ==")), "{out}");
        let metrics = std::fs::read_to_string(root.join(format!("metrics/dbward-{name}.prom")))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            metrics.contains(&format!("database=\"{name}\"")),
            "{metrics}"
        );
    }
    assert!(!root.join("metrics/dbward.prom").exists());
    let (code, out, err) = run(dbward(root).args(["--json", "snapshots"]));
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    for (i, name) in NAMES.iter().enumerate() {
        assert_eq!(doc["databases"][i]["database"], *name);
        assert_eq!(
            doc["databases"][i]["result"]["snapshots"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
    let (code, out, err) = run(dbward(root).arg("status"));
    assert_eq!(code, 0, "{err}");
    assert!(
        NAMES.iter().all(|n| out.contains(&format!("== {n} =="))),
        "{out}"
    );

    // One database that fails does not stop the others: the exit says it failed.
    std::fs::rename(root.join("jobs.db"), root.join("jobs.db.aside")).unwrap();
    let (code, out, err) = run(dbward(root).args(["--json", "backup", "--scheduled"]));
    assert_eq!(code, 1, "{err}");
    let doc = json(&out);
    let ok: Vec<bool> = (0..3)
        .map(|i| doc["databases"][i]["ok"].as_bool().unwrap())
        .collect();
    assert_eq!(ok, [true, false, true], "{doc}");
    assert!(err.contains("jobs:"), "{err}");
    let count = |name: &str| {
        std::fs::read_dir(root.join("store").join(name))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".sqlite.zst")
            })
            .count()
    };
    assert_eq!([count("app"), count("jobs"), count("cache")], [2, 1, 2]);
    std::fs::rename(root.join("jobs.db.aside"), root.join("jobs.db")).unwrap();

    // The scheduler runs each database's jobs as `--db NAME` children.
    let (code, out, err) = run(dbward(root).args(["--json", "schedule", "--list"]));
    assert_eq!(code, 0, "{err}");
    let jobs = &json(&out)["jobs"];
    assert_eq!(
        jobs["cache/drill"]["command"],
        serde_json::json!(["--db", "cache", "restore-drill", "--scheduled", "latest"]),
        "{jobs}"
    );
    assert_eq!(jobs.as_object().unwrap().len(), 6, "{jobs}");
    // One picked with --db: its jobs run with that flag as given, once.
    let (code, out, err) = run(dbward(root).args(["--db", "app", "--json", "schedule", "--list"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&out)["jobs"]["backup"]["command"],
        serde_json::json!(["backup", "--scheduled"])
    );
    // One file for every database's drill would keep only the last: refused without --db.
    let (code, _, err) = run(dbward(root).args(["restore-drill", "latest", "--metrics", "m.prom"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--db"), "{err}");
}

#[test]
fn entries_whose_snapshots_would_share_a_folder_and_flags_naming_one_database_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let r = root.display();
    std::fs::write(
        root.join("dbward.toml"),
        format!("[store]\nurl = \"file://{r}/store\"\n[[databases]]\nname = \"a\"\nurl = \"sqlite:{r}/a/app.db\"\n[[databases]]\nname = \"b\"\nurl = \"sqlite:{r}/b/app.db\"\n"),
    )
    .unwrap();
    let (code, _, err) = run(dbward(root).arg("snapshots"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("`a` and `b`") && err.contains("same folder `app`"),
        "{err}"
    );
    std::fs::write(
        root.join("dbward.toml"),
        format!("[store]\nurl = \"file://{r}/store\"\n[[databases]]\nname = \"a\"\nurl = \"sqlite:{r}/a.db\"\n[[databases]]\nname = \"b\"\nurl = \"sqlite:{r}/b.db\"\n"),
    )
    .unwrap();
    let (code, _, err) = run(dbward(root).args(["--database", "sqlite:x.db", "snapshots"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--db"), "{err}");
    // The environment's store stands in for the top level's; an entry's own store stays.
    std::fs::write(
        root.join("dbward.toml"),
        format!("[store]\nurl = \"file://{r}/store\"\n[[databases]]\nname = \"a\"\nurl = \"sqlite:{r}/a.db\"\n[[databases]]\nname = \"b\"\nurl = \"sqlite:{r}/b.db\"\n[databases.store]\nurl = \"file://{r}/b-store\"\n"),
    )
    .unwrap();
    for name in ["a", "b"] {
        std::fs::write(root.join(format!("{name}.db")), "").unwrap();
        tool(
            Command::new("sqlite3")
                .arg(root.join(format!("{name}.db")))
                .arg("CREATE TABLE t (id INTEGER)"),
        );
    }
    let (code, _, err) = run(dbward(root)
        .env("DBWARD_STORE", format!("file://{r}/env-store"))
        .args(["backup"]));
    assert_eq!(code, 0, "{err}");
    assert!(root.join("env-store/a").is_dir() && root.join("b-store/b").is_dir());
    assert!(!root.join("env-store/b").exists() && !root.join("store").exists());
    // --db without [[databases]] says what it is for.
    let (code, _, err) =
        run(common::dbward(root).args(["--database", "sqlite:x.db", "--db", "a", "status"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("[[databases]]"), "{err}");
}

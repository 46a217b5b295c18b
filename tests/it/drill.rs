//! `dbward restore-drill`: restores into a scratch database, checks, reports, cleans up; fails
//! (exit 1, naming the check) on damaged snapshots, wrong manifests and failing probes.

use crate::common;

use std::path::Path;

use common::{json, run, Pg, Project};

fn sqlite_app(p: &Project) -> String {
    p.migration("V1__users.sql", "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL);\nCREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users (id));\n");
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    let c = rusqlite::Connection::open(p.path().join("app.db")).unwrap();
    c.execute_batch("INSERT INTO users (email) VALUES ('a@x'), ('b@x'), ('c@x'); INSERT INTO orders (user_id) VALUES (1), (1), (2);").unwrap();
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["backup", "--json"]));
    assert_eq!(code, 0, "{err}");
    json(&out)["snapshot"]["id"].as_str().unwrap().to_string()
}

fn drill_failure(p: &Project, db: &str) -> (String, String) {
    let (code, out, err) = run(p.dbward(db).args(["restore-drill", "latest", "--json"]));
    assert_eq!(code, 1, "{err}");
    let doc = json(&out);
    let checks = doc["report"]["checks"].as_array().unwrap();
    let failed = checks
        .iter()
        .find(|c| c["verdict"] == "failed")
        .expect("a failed check");
    (failed["name"].as_str().unwrap().to_string(), err)
}

fn no_drill_leftovers(p: &Project) {
    let tmp = p.path().join(".dbward/tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "temp files left: {left:?}");
}

#[test]
fn a_good_sqlite_snapshot_passes_with_report_metrics_and_receipt() {
    let p = Project::new();
    let id = sqlite_app(&p);
    std::fs::write(
        p.path().join("dbward.toml"),
        "[drill]\nprobes = [\"SELECT count(*) = 3 FROM users\", \"SELECT NOT EXISTS (SELECT 1 FROM orders WHERE user_id IS NULL)\"]\nmax_rto = \"10m\"\nmax_snapshot_age = \"1h\"\n",
    )
    .unwrap();
    let (code, out, err) = run(p.dbward("sqlite:app.db").args([
        "restore-drill",
        "latest",
        "--report",
        "report.json",
        "--metrics",
        "drill.prom",
    ]));
    assert_eq!(code, 0, "{err}");
    for check in [
        "download",
        "decode",
        "restore",
        "integrity",
        "migration-head",
        "row-counts",
        "probes",
        "thresholds",
    ] {
        assert!(out.contains(check), "{check} in {out}");
    }
    assert!(out.contains("time to restore (RTO)"), "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["snapshot"], id.as_str());
    assert_eq!(report["success"], true);
    assert!(report["rto_seconds"].as_f64().unwrap() >= 0.0);
    assert!(report["snapshot_age_seconds"].as_f64().unwrap() >= 0.0);
    assert!(report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["verdict"] == "passed" && c["seconds"].is_number()));
    let metrics = std::fs::read_to_string(p.path().join("drill.prom")).unwrap();
    for series in [
        "dbward_drill_success{database=\"app\"} 1",
        "dbward_drill_last_run_timestamp_seconds{",
        "dbward_drill_rto_seconds{",
        "dbward_snapshot_age_seconds{",
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
    no_drill_leftovers(&p);
    let (_, out, _) = run(p.dbward("sqlite:app.db").arg("snapshots"));
    assert!(out.contains("DRILLED") && out.contains("ok "), "{out}");

    // A metrics file that cannot be written (node_exporter's directory is not on this host) is
    // a warning: the drill passed, and its exit says so.
    std::fs::write(
        p.path().join("dbward.toml"),
        "[drill]\nmetrics = \"no-such-dir/drill.prom\"\n",
    )
    .unwrap();
    let (code, out, err) =
        run(p
            .dbward("sqlite:app.db")
            .args(["restore-drill", "latest", "--json"]));
    assert_eq!(code, 0, "{out}{err}");
    let said = json(&out)["metrics_error"].as_str().unwrap().to_string();
    assert!(
        said.contains("no-such-dir/drill.prom (the setting drill.metrics)"),
        "{said}"
    );
    assert!(err.contains("the drill's own result stands"), "{err}");
}

/// A snapshot of a database in WAL mode (streamed page by page) is a WAL-mode file: the drill
/// opens it where it was decoded, SQLite makes its -wal and -shm beside it, every check passes,
/// and nothing is left in the temp dir.
#[test]
fn a_wal_mode_snapshot_passes_and_leaves_nothing() {
    let p = Project::new();
    p.migration(
        "V1__users.sql",
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL);\n",
    );
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    let c = rusqlite::Connection::open(p.path().join("app.db")).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.execute_batch("INSERT INTO users (email) VALUES ('a@x'), ('b@x');")
        .unwrap();
    drop(c);
    assert_eq!(run(p.dbward("sqlite:app.db").arg("backup")).0, 0);
    let (code, out, err) =
        run(p
            .dbward("sqlite:app.db")
            .args(["restore-drill", "latest", "--json"]));
    assert_eq!(code, 0, "{out}{err}");
    let doc = json(&out);
    let failed: Vec<_> = doc["report"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["verdict"] != "passed")
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    no_drill_leftovers(&p);
}

#[test]
fn a_flipped_byte_fails_the_download_check() {
    let p = Project::new();
    let id = sqlite_app(&p);
    let object = p
        .path()
        .join(format!(".dbward/snapshots/app/{id}.sqlite.zst"));
    let mut b = std::fs::read(&object).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x40;
    std::fs::write(&object, b).unwrap();
    let (check, err) = drill_failure(&p, "sqlite:app.db");
    assert_eq!(check, "download", "{err}");
    assert!(err.contains("failed at download"), "{err}");
    no_drill_leftovers(&p);
}

#[test]
fn a_truncated_object_fails() {
    let p = Project::new();
    let id = sqlite_app(&p);
    let object = p
        .path()
        .join(format!(".dbward/snapshots/app/{id}.sqlite.zst"));
    let len = std::fs::metadata(&object).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&object)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (check, _) = drill_failure(&p, "sqlite:app.db");
    assert_eq!(check, "download");
}

#[test]
fn a_manifest_whose_row_counts_disagree_fails_the_row_count_check() {
    let p = Project::new();
    let id = sqlite_app(&p);
    let manifest = p.path().join(format!(".dbward/snapshots/app/{id}.json"));
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    m["row_counts"]["users"] = 4.into();
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    let (check, err) = drill_failure(&p, "sqlite:app.db");
    assert_eq!(check, "row-counts", "{err}");
    assert!(err.contains("users: 3 rows, manifest 4"), "{err}");
}

#[test]
fn a_failing_probe_fails_the_drill_and_the_receipt_says_so() {
    let p = Project::new();
    let id = sqlite_app(&p);
    std::fs::write(
        p.path().join("dbward.toml"),
        "[drill]\nprobes = [\"SELECT count(*) > 100 FROM users\"]\n",
    )
    .unwrap();
    let (check, err) = drill_failure(&p, "sqlite:app.db");
    assert_eq!(check, "probes", "{err}");
    let receipt: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            p.path()
                .join(format!(".dbward/snapshots/app/{id}.drill.json")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(receipt["success"], false);
    assert_eq!(receipt["failed_check"], "probes");
}

#[test]
fn prune_never_deletes_the_newest_snapshot_that_passed_a_drill() {
    let p = Project::new();
    let drilled = sqlite_app(&p);
    assert_eq!(
        run(p.dbward("sqlite:app.db").args(["restore-drill", &drilled])).0,
        0
    );
    for _ in 0..2 {
        assert_eq!(run(p.dbward("sqlite:app.db").arg("backup")).0, 0);
    }
    std::fs::write(p.path().join("dbward.toml"), "[retention]\nkeep_last = 1\n").unwrap();
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["prune", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["removed"].as_array().unwrap().len(), 1);
    let (_, out, _) = run(p.dbward("sqlite:app.db").args(["snapshots", "--json"]));
    let ids: Vec<String> = json(&out)["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(
        ids[1], drilled,
        "the drilled snapshot survives keep_last = 1"
    );
}

#[test]
fn a_good_postgres_snapshot_passes_and_leaves_no_scratch_database() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    p.migration("V1__schema.sql", "CREATE TABLE users (id serial PRIMARY KEY, email text UNIQUE);\nCREATE TABLE orders (id serial PRIMARY KEY, user_id int REFERENCES users (id));\nCREATE INDEX orders_user ON orders (user_id);\n");
    assert_eq!(run(p.dbward(&url).args(["migrate", "--no-snapshot"])).0, 0);
    pg.psql("shop", "INSERT INTO users (email) SELECT 'u' || i FROM generate_series(1, 200) i; INSERT INTO orders (user_id) SELECT 1 + i % 200 FROM generate_series(1, 1000) i;");
    assert_eq!(run(p.dbward(&url).arg("backup")).0, 0);
    std::fs::write(
        p.path().join("dbward.toml"),
        "[drill]\nprobes = [\"SELECT count(*) = 1000 FROM orders\"]\n",
    )
    .unwrap();
    let (code, out, err) = run(p.dbward(&url).args(["restore-drill", "latest", "--json"]));
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    let checks = doc["report"]["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "download",
            "decode",
            "restore",
            "integrity",
            "amcheck",
            "migration-head",
            "row-counts",
            "probes"
        ]
    );
    let amcheck = checks.iter().find(|c| c["name"] == "amcheck").unwrap();
    assert!(
        amcheck["verdict"] == "passed" || amcheck["verdict"] == "skipped",
        "{amcheck}"
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'dbward\\_drill\\_%'"
        ),
        "0"
    );
    assert_eq!(
        pg.psql("shop", "SELECT count(*) FROM orders"),
        "1000",
        "the live database is untouched"
    );
    assert!(!Path::new(&p.path().join(".dbward/tmp"))
        .read_dir()
        .map(|mut d| d.next().is_some())
        .unwrap_or(false));
}

#[test]
fn a_postgres_drill_of_a_damaged_snapshot_fails_and_cleans_up() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    p.migration(
        "V1__schema.sql",
        "CREATE TABLE t (id int);\nINSERT INTO t SELECT generate_series(1, 10);\n",
    );
    assert_eq!(run(p.dbward(&url).args(["migrate", "--no-snapshot"])).0, 0);
    let (_, out, _) = run(p.dbward(&url).args(["backup", "--json"]));
    let id = json(&out)["snapshot"]["id"].as_str().unwrap().to_string();
    let manifest = p.path().join(format!(".dbward/snapshots/shop/{id}.json"));
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    m["row_counts"]["public.t"] = 11.into();
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    let (check, _) = drill_failure(&p, &url);
    assert_eq!(check, "row-counts");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'dbward\\_drill\\_%'"
        ),
        "0"
    );
}

#[test]
fn an_ephemeral_cluster_drill_works_as_root_and_is_removed() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    p.migration(
        "V1__schema.sql",
        "CREATE TABLE t (id int PRIMARY KEY);\nINSERT INTO t SELECT generate_series(1, 50);\n",
    );
    assert_eq!(run(p.dbward(&url).args(["migrate", "--no-snapshot"])).0, 0);
    assert_eq!(run(p.dbward(&url).arg("backup")).0, 0);
    std::fs::write(
        p.path().join("dbward.toml"),
        "[drill]\ndatabase = \"ephemeral\"\nprobes = [\"SELECT count(*) = 50 FROM t\"]\n",
    )
    .unwrap();
    let (code, out, err) = run(p.dbward(&url).args(["restore-drill", "--json"]));
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    assert_eq!(doc["report"]["checks"][0]["name"], "download");
    assert!(doc["report"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "cluster" && c["verdict"] == "passed"));
    // Nothing of the cluster is left: no server process, no scratch database on the live server.
    let ps = std::process::Command::new("pgrep")
        .args(["-f", "dbward-drill-cluster-"])
        .output()
        .unwrap();
    assert!(
        common::stdout(&ps).trim().is_empty(),
        "an ephemeral server is still running"
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'dbward\\_drill\\_%'"
        ),
        "0"
    );
}

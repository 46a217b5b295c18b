//! The manifest is what `docs/contract.md` says: every manifest the suite's runs write here, and
//! every manifest of the fixtures of earlier releases, validates against
//! `docs/manifest.schema.json` (with the `jsonschema` Python package, a validator that is not
//! ours). `additionalProperties: false`: a new field is a change to the contract first.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{json, run, tool, Pg, Project, MISSING};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn manifests_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            manifests_under(&p, out);
        } else if name.ends_with(".json")
            && !name.ends_with(".drill.json")
            && name.as_bytes()[0].is_ascii_digit()
            && p.parent().is_some_and(|d| {
                !d.ends_with("deploys") && !d.ends_with("wal") && !d.ends_with("stream")
            })
        {
            out.push(p);
        }
    }
}

fn validate(manifests: &[PathBuf]) {
    let (ok, report) = check(manifests);
    assert!(ok, "manifests that break the contract:\n{report}");
}

/// (all valid, the validator's report).
fn check(manifests: &[PathBuf]) -> (bool, String) {
    assert!(!manifests.is_empty());
    let script = "import json, sys, jsonschema\n\
                  schema = json.load(open(sys.argv[1]))\n\
                  jsonschema.Draft202012Validator.check_schema(schema)\n\
                  v = jsonschema.Draft202012Validator(schema)\n\
                  bad = 0\n\
                  for path in sys.argv[2:]:\n\
                  \x20   for e in v.iter_errors(json.load(open(path))):\n\
                  \x20       print(f'{path}: {e.json_path}: {e.message}'); bad += 1\n\
                  sys.exit(1 if bad else 0)\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(root().join("docs/manifest.schema.json"))
        .args(manifests)
        .output()
        .unwrap_or_else(|e| panic!("python3: {e}: {MISSING}"));
    (
        out.status.success(),
        format!("{}{}", common::stdout(&out), common::stderr(&out)),
    )
}

#[test]
fn the_manifests_of_earlier_releases_follow_the_schema() {
    let mut all = Vec::new();
    manifests_under(&root().join("tests/fixtures/snapshots"), &mut all);
    assert!(all.len() >= 4, "{all:?}");
    validate(&all);
    // The schema is strict: an unknown field, a data key off the scheme, are refused.
    let dir = tempfile::tempdir().unwrap();
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&all[0]).unwrap()).unwrap();
    doc["surprise"] = serde_json::json!(1);
    let bad = dir.path().join("1.json");
    std::fs::write(&bad, doc.to_string()).unwrap();
    let (ok, report) = check(std::slice::from_ref(&bad));
    assert!(!ok && report.contains("surprise"), "{report}");
    doc.as_object_mut().unwrap().remove("surprise");
    doc["data_key"] = serde_json::json!("app/../../etc/passwd");
    std::fs::write(&bad, doc.to_string()).unwrap();
    assert!(!check(&[bad]).0);
}

#[test]
fn every_kind_of_manifest_this_release_writes_follows_the_schema() {
    let p = Project::new();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("key.txt");
    tool(Command::new("age-keygen").arg("-o").arg(&key));
    let public = tool(Command::new("age-keygen").arg("-y").arg(&key));
    let store = p.path().join("store");
    let store_url = format!("file://{}", store.display());
    // SQLite: a first deploy, a pre-deploy snapshot, manual and scheduled ones, encrypted ones
    // with and without details, one with a label, one before any migration.
    let sqlite = |args: &[&str]| {
        let (code, _, err) = run(p
            .dbward("sqlite:app.db")
            .arg("--store")
            .arg(&store_url)
            .args(args));
        assert_eq!(code, 0, "{args:?}: {err}");
    };
    common::sqlite(&p.path().join("app.db"), "CREATE TABLE legacy (id INTEGER)");
    sqlite(&["backup"]);
    p.migration("V1__t.sql", "CREATE TABLE t (id INTEGER);\n");
    sqlite(&["migrate"]);
    p.migration("V2__u.sql", "CREATE TABLE u (id INTEGER);\n");
    sqlite(&["migrate"]);
    sqlite(&["backup", "--label", "before the move"]);
    sqlite(&["backup", "--scheduled"]);
    std::fs::write(
        p.path().join("dbward.toml"),
        format!("[encryption]\nrecipients = [\"{public}\"]\nmanifest_details = false\n"),
    )
    .unwrap();
    sqlite(&["backup"]);
    std::fs::remove_file(p.path().join("dbward.toml")).unwrap();
    let (code, _, _) = run(p
        .dbward("sqlite:app.db")
        .arg("--store")
        .arg(&store_url)
        .env("DBWARD_AGE_PASSPHRASE", "pass phrase")
        .arg("backup"));
    assert_eq!(code, 0);
    // A stream position as a deploy's pre-deploy snapshot (its replicator running).
    common::sqlite(
        &p.path().join("live.db"),
        "PRAGMA journal_mode = WAL; CREATE TABLE l (id INTEGER);",
    );
    let mut replicator = p
        .dbward("sqlite:live.db")
        .arg("--store")
        .arg(&store_url)
        .args(["replicate", "--interval", "100ms"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let began = std::time::Instant::now();
    while std::fs::read_dir(store.join("live/stream")).map_or(true, |d| d.count() == 0) {
        assert!(
            began.elapsed() < std::time::Duration::from_secs(30),
            "the replicator shipped no base"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (code, out, err) = run(p
        .dbward("sqlite:live.db")
        .arg("--store")
        .arg(&store_url)
        .args(["--json", "migrate"]));
    unsafe { libc::kill(replicator.id() as i32, libc::SIGTERM) };
    assert!(replicator.wait().unwrap().success());
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["snapshot_format"], "streampoint", "{out}");
    // PostgreSQL, plaintext and encrypted.
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let (code, _, err) = run(p.dbward(&url).arg("--store").arg(&store_url).arg("migrate"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        run(p.dbward(&url).arg("--store").arg(&store_url).arg("backup")).0,
        0
    );
    std::fs::write(
        p.path().join("dbward.toml"),
        format!("[encryption]\nrecipients = [\"{public}\"]\n"),
    )
    .unwrap();
    let (code, out, _) = run(p
        .dbward(&url)
        .arg("--store")
        .arg(&store_url)
        .args(["backup", "--json"]));
    assert_eq!(code, 0);
    assert!(json(&out)["snapshot"]["encryption"].is_object());

    // A cluster's base backup (its WAL archived through wal-push).
    let archive = common::archive::store_dir();
    let archiving = common::archive::archiving(archive.path());
    common::archive::switch_and_wait(&archiving, archive.path());
    let (code, _, err) = run(p
        .dbward(&archiving.url("app"))
        .arg("--store")
        .arg(common::archive::store_url(archive.path()))
        .args(["backup", "--physical"]));
    assert_eq!(code, 0, "{err}");
    // A restore point as a deploy's pre-deploy snapshot ([pitr.server] set, a base there).
    let q = Project::new();
    std::fs::write(
        q.path().join("dbward.toml"),
        "[pitr.server]\ndata_dir = \"/nowhere\"\nstop = \"false\"\nstart = \"false\"\nuser = \"postgres\"\n",
    )
    .unwrap();
    q.migration("V1__t2.sql", "CREATE TABLE t2 (id int);\n");
    let (code, out, err) = run(q
        .dbward(&archiving.url("app"))
        .arg("--store")
        .arg(common::archive::store_url(archive.path()))
        .args(["--json", "migrate"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["snapshot_format"], "pgpoint", "{out}");

    let mut all = Vec::new();
    manifests_under(&store, &mut all);
    manifests_under(archive.path(), &mut all);
    assert!(all.len() >= 10, "{all:?}");
    validate(&all);
}

/// README's command overview is the contract's table, word for word.
#[test]
fn the_readme_shows_the_contracts_commands() {
    let contract = std::fs::read_to_string(root().join("docs/contract.md")).unwrap();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let table: Vec<&str> = contract
        .lines()
        .skip_while(|l| !l.starts_with("| command | does"))
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert!(table.len() > 10, "{table:?}");
    assert!(
        readme.contains(&table.join("\n")),
        "README.md's command table differs from docs/contract.md's"
    );
    assert!(
        !readme.contains("shared/DESIGN.md"),
        "nothing the README links to is outside the repository"
    );
}

//! Regression tests for trust, round 3: each reproduces one way dbward misbehaved under an
//! adversarial look (a guard that disabled itself, a snapshot `restore pre-deploy` could no
//! longer find, records of two databases mixed in one state dir, a deploy log blind to other
//! hosts, ...) and asserts that it no longer does. Real SQLite files, real PostgreSQL clusters,
//! real child processes, the real binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{json, run, sqlite, state_file, tool, Http, Project};

/// V1 with two notes; then a deploy of V2 (drops a column). Returns the pre-deploy snapshot.
fn deployed(p: &Project, db: &str) -> String {
    p.migration(
        "V1__notes.sql",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, author TEXT);\n",
    );
    assert_eq!(run(p.dbward(db).arg("migrate")).0, 0);
    sqlite(
        &p.path().join(db.trim_start_matches("sqlite:")),
        "INSERT INTO notes (body, author) VALUES ('one', 'ann'), ('two', 'bob');",
    );
    p.migration(
        "V2__drop_author.sql",
        "ALTER TABLE notes DROP COLUMN author;\n",
    );
    let (code, out, err) = run(p.dbward(db).args(["migrate", "--json"]));
    assert_eq!(code, 0, "{err}");
    json(&out)["snapshot"].as_str().unwrap().to_string()
}

fn head(db: &Path) -> String {
    sqlite(db, "SELECT max(version) FROM refinery_schema_history")
}

fn guard(c: &mut Command, url: &str) -> (i32, String, String) {
    run(c.args([
        "health",
        "--restore-on-failure",
        "--timeout",
        "1s",
        "--interval",
        "200ms",
        "--url",
        url,
    ]))
}

/// A key pair made by the real `age-keygen`: (identity file, public key).
fn keygen(dir: &Path) -> (PathBuf, String) {
    let path = dir.join("key.txt");
    tool(Command::new("age-keygen").arg("-o").arg(&path));
    let public = tool(Command::new("age-keygen").arg("-y").arg(&path));
    (path, public)
}

/// Defect 4: a guard whose restore failed (the age identity missing on the host) recorded the
/// batch as rolled back anyway; the restarted unit's `migrate` then found nothing pending and
/// recorded an empty deploy, and from then on the guard said "the last deploy applied no
/// migrations" and never restored. Now the record says the undo failed, `migrate` refuses
/// (exit 3) without recording anything, and the next guard retries the undo at once.
#[test]
fn r04_a_guard_whose_undo_failed_never_disables_itself_and_the_next_guard_retries() {
    let p = Project::new();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path());
    std::fs::write(
        p.path().join("dbward.toml"),
        format!("[encryption]\nrecipients = [{public:?}]\n"),
    )
    .unwrap();
    let snapshot = deployed(&p, "sqlite:app.db");
    let db = p.path().join("app.db");
    let server = Http::status(503);

    // The identity is not on this host: the undo cannot open the snapshot.
    let (code, _, err) = guard(&mut p.dbward("sqlite:app.db"), &server.url());
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("Undoing the deploy failed") && err.contains("still applied"),
        "{err}"
    );
    assert_eq!(head(&db), "2", "nothing was changed");
    let record = state_file(&p.path().join(".dbward"), "failed-batch", "app").unwrap();
    let record = json(&std::fs::read_to_string(record).unwrap());
    assert!(record["undo_failed"].is_string(), "{record}");
    assert_eq!(record["snapshot"], snapshot.as_str());

    // The unit restarts: `migrate` finds nothing pending, and refuses instead of recording a
    // deploy that would hide this one from the guard.
    let deploy_before =
        std::fs::read(state_file(&p.path().join(".dbward"), "last-deploy", "app").unwrap())
            .unwrap();
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("could not undo it") && err.contains("health --restore-on-failure"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(state_file(&p.path().join(".dbward"), "last-deploy", "app").unwrap())
            .unwrap(),
        deploy_before,
        "the last deploy is still the broken one"
    );
    let (_, out, _) = run(p.dbward("sqlite:app.db").args(["deploys", "--json"]));
    let log = json(&out)["deploys"].as_array().unwrap().clone();
    assert!(
        log.iter()
            .any(|e| e["event"] == "guard"
                && e["outcome"].as_str().unwrap().starts_with("undo failed")),
        "{out}"
    );

    // The key is installed: the next guard retries the undo at once (the app is not even
    // asked), and restores.
    let healthy = Http::status(200);
    let (code, _, err) = guard(
        p.dbward("sqlite:app.db")
            .env("DBWARD_AGE_IDENTITY_FILE", &key),
        &healthy.url(),
    );
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("retrying the undo"), "{err}");
    assert_eq!(head(&db), "1");
    let record = state_file(&p.path().join(".dbward"), "failed-batch", "app").unwrap();
    assert!(json(&std::fs::read_to_string(record).unwrap())["undo_failed"].is_null());
    // Now it is a rolled-back batch like any other.
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("rolled back by the health guard"), "{err}");
}

/// Defect 4, the other way out: the operator keeps the batch (`--retry-failed`), and a batch
/// undone by hand (`restore pre-deploy`) counts as rolled back.
#[test]
fn r04_an_unfinished_undo_is_accepted_with_retry_failed_or_settled_by_a_restore_by_hand() {
    for way in ["retry", "by hand"] {
        let p = Project::new();
        let keys = tempfile::tempdir().unwrap();
        let (key, public) = keygen(keys.path());
        std::fs::write(
            p.path().join("dbward.toml"),
            format!("[encryption]\nrecipients = [{public:?}]\n"),
        )
        .unwrap();
        deployed(&p, "sqlite:app.db");
        let db = p.path().join("app.db");
        let server = Http::status(503);
        assert_eq!(guard(&mut p.dbward("sqlite:app.db"), &server.url()).0, 3);
        if way == "retry" {
            let (code, _, err) = run(p
                .dbward("sqlite:app.db")
                .args(["migrate", "--retry-failed"]));
            assert_eq!(code, 0, "{err}");
            assert_eq!(head(&db), "2", "kept");
            assert!(state_file(&p.path().join(".dbward"), "failed-batch", "app").is_none());
            assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
        } else {
            let (code, _, err) = run(p
                .dbward("sqlite:app.db")
                .env("DBWARD_AGE_IDENTITY_FILE", &key)
                .args(["restore", "pre-deploy", "--yes"]));
            assert_eq!(code, 0, "{err}");
            assert_eq!(head(&db), "1");
            let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
            assert_eq!(code, 3, "{err}");
            assert!(err.contains("rolled back by the health guard"), "{err}");
        }
    }
}

/// Defect 5: `restore pre-deploy` resolved from the last `migrate`, so any no-op `migrate`
/// after a deploy (the guard's own advice is to restart) made it refuse. Now it is the newest
/// deploy that changed the database and took a snapshot, from the deploy log, on any host.
#[test]
fn r05_restore_pre_deploy_finds_the_deploys_snapshot_after_a_no_op_migrate_and_on_a_new_host() {
    let p = Project::new();
    let snapshot = deployed(&p, "sqlite:app.db");
    let db = p.path().join("app.db");
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    let (code, out, err) =
        run(p
            .dbward("sqlite:app.db")
            .args(["restore", "pre-deploy", "--yes", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["snapshot"], snapshot.as_str());
    assert_eq!(head(&db), "1");

    // Another host (a state dir of its own, the same store): the store's log knows.
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    let (code, out, err) = run(p.dbward("sqlite:app.db").args([
        "--state-dir",
        "other-host",
        "restore",
        "pre-deploy",
        "--yes",
        "--json",
    ]));
    assert_eq!(code, 0, "{err}");
    assert_ne!(
        json(&out)["snapshot"],
        snapshot.as_str(),
        "the newer deploy's"
    );
}

/// Defect 8: state was keyed by the database's file name, so two apps' `app.db` sharing one
/// state dir read each other's last deploy (the guard looked for the other app's snapshot) and
/// each restore trimmed the other's replaced copies. Now each database's records are its own
/// (by its identity), and records of the older naming move over only when they prove to be
/// this database's.
#[test]
fn r08_two_databases_of_the_same_name_sharing_a_state_dir_keep_their_own_records() {
    let p = Project::new();
    for app in ["one", "two"] {
        std::fs::create_dir(p.path().join(app)).unwrap();
    }
    let shared = p.path().join("shared-state");
    let cmd = |app: &str| {
        let mut c = p.dbward(&format!("sqlite:{app}/app.db"));
        c.arg("--state-dir").arg(&shared);
        c.arg("--store").arg(format!("file://./{app}-store"));
        c
    };
    p.migration(
        "V1__notes.sql",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);\n",
    );
    for app in ["one", "two"] {
        assert_eq!(run(cmd(app).arg("migrate")).0, 0);
        sqlite(
            &p.path().join(format!("{app}/app.db")),
            &format!("INSERT INTO notes (body) VALUES ('{app}')"),
        );
    }
    p.migration("V2__more.sql", "ALTER TABLE notes ADD COLUMN extra TEXT;\n");
    let (_, out, _) = run(cmd("one").args(["migrate", "--json"]));
    let one_snapshot = json(&out)["snapshot"].as_str().unwrap().to_string();
    // `two` deploys after `one`: its record must not become `one`'s.
    assert_eq!(run(cmd("two").arg("migrate")).0, 0);
    let server = Http::status(503);
    let (code, out, err) = guard(cmd("one").arg("--json"), &server.url());
    assert_eq!(code, 5, "{err}");
    assert_eq!(json(&out)["restored"]["snapshot"], one_snapshot.as_str());
    assert_eq!(head(&p.path().join("one/app.db")), "1");
    assert_eq!(head(&p.path().join("two/app.db")), "2", "untouched");

    // Replaced copies: each restore trims only its own database's.
    std::fs::write(
        p.path().join("dbward.toml"),
        "[restore]\nkeep_replaced = 1\n",
    )
    .unwrap();
    for app in ["two", "one", "one"] {
        let (code, _, err) = run(cmd(app).args(["restore", "latest", "--yes"]));
        assert_eq!(code, 0, "{app}: {err}");
    }
    let replaced = |app: &str| {
        std::fs::read_dir(p.path().join(app))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".replaced-"))
            .count()
    };
    assert_eq!(
        replaced("one"),
        1,
        "one's oldest copies trimmed to keep_replaced"
    );
    assert!(replaced("two") >= 1, "two's copy is not one's to remove");
}

/// Defect 8, upgrading: the records of a database written under the older naming (by name
/// alone) move to its identity's names on first use when their head is in its history, and
/// stay where they are when they are another database's.
#[test]
fn r08_records_of_the_older_naming_move_over_only_when_they_are_this_databases() {
    let p = Project::new();
    let snapshot = deployed(&p, "sqlite:app.db");
    let state = p.path().join(".dbward");
    let keyed = state_file(&state, "last-deploy", "app").unwrap();
    let legacy = state.join("last-deploy-app.json");
    std::fs::rename(&keyed, &legacy).unwrap();
    let server = Http::status(503);
    let (code, out, err) = guard(p.dbward("sqlite:app.db").arg("--json"), &server.url());
    assert_eq!(code, 5, "{err}");
    assert_eq!(json(&out)["restored"]["snapshot"], snapshot.as_str());
    assert!(!legacy.exists(), "moved over");

    // Another database's record of the same name (its head is not in this history) stays.
    let q = Project::new();
    deployed(&q, "sqlite:app.db");
    let foreign = std::fs::read_to_string(state_file(&state, "last-deploy", "app").unwrap())
        .unwrap()
        .replace("\"checksum\": \"", "\"checksum\": \"9");
    let q_state = q.path().join(".dbward");
    std::fs::remove_file(state_file(&q_state, "last-deploy", "app").unwrap()).unwrap();
    std::fs::write(q_state.join("last-deploy-app.json"), &foreign).unwrap();
    let (code, _, err) = guard(&mut q.dbward("sqlite:app.db"), &server.url());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no deploy of"), "{err}");
    assert_eq!(
        std::fs::read_to_string(q_state.join("last-deploy-app.json")).unwrap(),
        foreign,
        "left as it is"
    );
}

/// Defect 9: `deploys` showed the store's entries only when the local log was empty, so in an
/// incident host A could not see who applied V3 from host B.
#[test]
fn r09_deploys_shows_every_hosts_entries() {
    let p = Project::new();
    deployed(&p, "sqlite:app.db");
    p.migration("V3__body.sql", "CREATE INDEX notes_body ON notes (body);\n");
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["--state-dir", "host-b", "migrate"])
        .env("DBWARD_RELEASE", "from-host-b"));
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["deploys", "--json"]));
    assert_eq!(code, 0, "{err}");
    let log = json(&out)["deploys"].as_array().unwrap().clone();
    assert_eq!(log.len(), 3, "{out}");
    assert_eq!(log[0]["release"], "from-host-b");
    assert_eq!(log[0]["applied"], serde_json::json!([3]));
    assert_eq!(log[1]["applied"], serde_json::json!([2]));
    assert_eq!(log[2]["applied"], serde_json::json!([1]));
}

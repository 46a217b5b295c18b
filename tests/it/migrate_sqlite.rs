//! `status`, `lint` and settings against real SQLite files (the migrate scenarios every engine
//! shares are in `migrate.rs`).

use crate::common;

use common::{json, run, Project};

const DB: &str = "sqlite:app.db";

fn shop(p: &Project) {
    p.migration(
        "V1__users.sql",
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL);\n",
    )
    .migration(
        "V2__orders.sql",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER);\n",
    );
}

#[test]
fn status_is_clean_with_pending_migrations() {
    let p = Project::new();
    shop(&p);
    let (code, out, _) = run(p.dbward(DB).arg("status"));
    assert_eq!(code, 0);
    assert!(out.contains("does not exist yet"), "{out}");
    assert!(
        !p.path().join("app.db").exists(),
        "status must not create the database"
    );
    assert_eq!(run(p.dbward(DB).arg("migrate")).0, 0);
    p.migration("V3__x.sql", "CREATE TABLE x (id int);");
    let (code, out, _) = run(p.dbward(DB).args(["status", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(json(&out)["pending"], 1);
}

#[test]
fn lint_errors_refuse_the_batch_but_comments_and_strings_do_not() {
    let p = Project::new();
    shop(&p);
    p.migration(
        "V3__harmless.sql",
        "-- COMMIT; VACUUM; CREATE INDEX CONCURRENTLY\n/* BEGIN; */\nINSERT INTO users (email) VALUES ('COMMIT; VACUUM;');\n",
    );
    let (code, out, _) = run(p.dbward(DB).args(["lint", "--json"]));
    assert_eq!(code, 0, "{out}");
    assert_eq!(json(&out)["errors"], 0);

    p.migration("V4__commit.sql", "CREATE TABLE a (id int);\nCOMMIT;\n");
    p.migration("V5__vacuum.sql", "\nVACUUM;\n");
    p.migration(
        "V6__concurrently.sql",
        "CREATE INDEX CONCURRENTLY a_id ON a (id);\n",
    );
    let (code, out, _) = run(p.dbward(DB).arg("lint"));
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("V4__commit.sql:2:1: error[transaction-control]"),
        "{out}"
    );
    assert!(
        out.contains("V5__vacuum.sql:2:1: error[no-transaction]"),
        "{out}"
    );
    assert!(
        out.contains("V6__concurrently.sql:1:14: error[no-transaction]"),
        "{out}"
    );
    assert!(!out.contains("V3__harmless"), "{out}");

    let (code, _, err) = run(p.dbward(DB).arg("migrate"));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("V4__commit.sql:2"), "{err}");
    assert!(
        !p.path().join("app.db").exists(),
        "refused before touching the database"
    );
}

#[test]
fn lint_needs_no_database_and_warns_on_destructive_statements() {
    let p = Project::new();
    p.migration("V1__drop.sql", "DROP TABLE old;\nDELETE FROM sessions;\n");
    let (code, out, _) = run(common::dbward(p.path()).args(["lint", "--json"]));
    assert_eq!(code, 0);
    let doc = json(&out);
    assert_eq!(doc["warnings"], 2);
    assert_eq!(doc["findings"][1]["line"], 2);
}

#[test]
fn misnamed_and_duplicate_files_are_errors_naming_the_file() {
    let p = Project::new();
    shop(&p);
    p.migration("V3__add-index.sql", "SELECT 1;");
    p.migration("V2__dup.sql", "SELECT 1;");
    p.migration("notes.sql", "SELECT 1;");
    let (code, _, err) = run(p.dbward(DB).arg("migrate"));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("V3__add-index.sql: name `add-index`"), "{err}");
    assert!(
        err.contains("notes.sql: name does not start with V"),
        "{err}"
    );
    assert!(err.contains("version 2 is also used by"), "{err}");
    assert!(!p.path().join("app.db").exists());
}

#[test]
fn settings_come_from_the_config_file_and_unknown_keys_are_refused() {
    let p = Project::new();
    shop(&p);
    std::fs::write(
        p.path().join("dbward.toml"),
        "[database]\nurl = \"sqlite:app.db\"\n",
    )
    .unwrap();
    let (code, _, err) = run(common::dbward(p.path()).arg("migrate"));
    assert_eq!(code, 0, "{err}");

    std::fs::write(
        p.path().join("dbward.toml"),
        "[database]\nurl = \"sqlite:app.db\"\nlock_timout = \"5s\"\n",
    )
    .unwrap();
    let (code, out, err) = run(common::dbward(p.path()).args(["status", "--json"]));
    assert_eq!(code, 2);
    assert!(
        err.contains("lock_timout") && err.contains("dbward.toml"),
        "{err}"
    );
    assert_eq!(json(&out)["exit_code"], 2);

    let (code, _, err) = run(common::dbward(p.path()).args(["--config", "nope.toml", "status"]));
    assert_eq!(code, 2);
    assert!(err.contains("nope.toml"), "{err}");
}

#[test]
fn missing_database_setting_is_a_usage_error() {
    let p = Project::new();
    shop(&p);
    let (code, _, err) = run(common::dbward(p.path()).arg("migrate"));
    assert_eq!(code, 2);
    assert!(err.contains("--database"), "{err}");
}

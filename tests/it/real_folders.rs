//! Migration folders as real projects ship them: placeholder files (an engine a version does
//! not touch), SQLite's own 12-step table rebuild with its `PRAGMA foreign_keys`, and files
//! wrapped in their own `BEGIN`/`COMMIT` (golang-migrate's habit). Each applies as one batch
//! with the rest, and stays atomic: a later file that fails takes the wrapped file's changes
//! with it.

use crate::common;

use common::{json, run, sqlite, Pg, Project};

const WRAPPED: &str = "BEGIN;\nCREATE TABLE wrapped (id INTEGER PRIMARY KEY, note TEXT);\nINSERT INTO wrapped (id, note) VALUES (1, 'in its own transaction, as written');\nCOMMIT;\n";

#[test]
fn sqlite_applies_placeholders_the_table_rebuild_and_a_wrapped_file_as_one_batch() {
    let p = Project::new();
    p.migration(
        "V1__parents.sql",
        "CREATE TABLE parent (id INTEGER PRIMARY KEY);\nCREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent (id), name TEXT);\nINSERT INTO parent VALUES (1);\nINSERT INTO child VALUES (1, 1, 'a');\n",
    )
    .migration("V2__postgres_only.sql", "")
    .migration("V3__comment_only.sql", "-- nothing to do for SQLite in this version\n")
    // SQLite's documented recipe for changing a table's definition.
    .migration(
        "V4__rebuild_child.sql",
        "PRAGMA foreign_keys=off;\nCREATE TABLE new_child (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL REFERENCES parent (id), name TEXT NOT NULL DEFAULT '');\nINSERT INTO new_child SELECT id, parent_id, coalesce(name, '') FROM child;\nDROP TABLE child;\nALTER TABLE new_child RENAME TO child;\nPRAGMA foreign_keys=on;\n",
    )
    .migration("V5__wrapped.sql", WRAPPED);
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["--json", "lint"]));
    assert_eq!(code, 0, "{out}{err}");
    let doc = json(&out);
    assert_eq!(doc["errors"], 0, "{out}");
    let rules: Vec<&str> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "note")
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    assert_eq!(
        rules,
        [
            "placeholder",
            "placeholder",
            "ignored-in-transaction",
            "ignored-in-transaction",
            "wrapping-transaction"
        ],
        "{out}"
    );

    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["--json", "migrate"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["applied"].as_array().unwrap().len(), 5, "{out}");
    assert!(err.contains("dropping the file's own BEGIN"), "{err}");
    let db = p.path().join("app.db");
    assert_eq!(sqlite(&db, "SELECT count(*) FROM wrapped"), "1");
    assert_eq!(sqlite(&db, "SELECT name FROM child"), "a");
    assert_eq!(
        sqlite(&db, "SELECT group_concat(version) FROM (SELECT version FROM refinery_schema_history ORDER BY version)"),
        "1,2,3,4,5"
    );
    // The foreign-key check stays: a rebuild that leaves a row without its parent fails the
    // batch, pragma or not.
    p.migration(
        "V6__dangling.sql",
        "PRAGMA foreign_keys=off;\nINSERT INTO child VALUES (2, 99, 'orphan');\nPRAGMA foreign_keys=on;\n",
    );
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("foreign_key_check"), "{err}");
    assert_eq!(sqlite(&db, "SELECT count(*) FROM child"), "1");
}

#[test]
fn a_wrapped_file_stays_inside_the_batch_on_both_engines() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    for db in [url.as_str(), "sqlite:app.db"] {
        let p = Project::new();
        p.migration("V1__wrapped.sql", WRAPPED)
            .migration("V2__placeholder.sql", "")
            .migration("V3__fails.sql", "INSERT INTO no_such_table VALUES (1);\n");
        let (code, _, err) = run(p.dbward(db).arg("migrate"));
        assert_ne!(code, 0, "{db}: {err}");
        assert!(
            err.contains("V3__fails.sql") && err.contains("rolled back"),
            "{db}: {err}"
        );
        // Nothing of the wrapped file was committed on its own.
        let (code, out, err) = run(p.dbward(db).args(["--json", "status"]));
        assert_eq!(code, 0, "{db}: {err}");
        assert!(json(&out)["head"].is_null(), "{db}: {out}");
        assert_eq!(json(&out)["pending"], 3, "{db}: {out}");
        if db.starts_with("sqlite:") {
            assert_eq!(
                sqlite(
                    &p.path().join("app.db"),
                    "SELECT count(*) FROM sqlite_master WHERE name = 'wrapped'"
                ),
                "0"
            );
        } else {
            assert_eq!(
                pg.psql("shop", "SELECT to_regclass('wrapped') IS NULL"),
                "t"
            );
        }
        // Fixed, the three apply in one batch.
        p.migration("V3__fails.sql", "SELECT 1;\n");
        let (code, out, err) = run(p.dbward(db).args(["--json", "migrate"]));
        assert_eq!(code, 0, "{db}: {err}");
        assert_eq!(
            json(&out)["applied"].as_array().unwrap().len(),
            3,
            "{db}: {out}"
        );
        if !db.starts_with("sqlite:") {
            assert_eq!(pg.psql("shop", "SELECT count(*) FROM wrapped"), "1");
        }
    }
}

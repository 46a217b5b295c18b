//! Migration folders as real projects ship them: placeholder files (an engine a version does
//! not touch), SQLite's own 12-step table rebuild with its `PRAGMA foreign_keys`, and files
//! wrapped in their own `BEGIN`/`COMMIT` (golang-migrate's habit). Each applies as one batch
//! with the rest, and stays atomic: a later file that fails takes the wrapped file's changes
//! with it. And three real projects' folders, copied as they ship (tests/fixtures/projects, with
//! their licences): atuin's (sqlx; PostgreSQL and SQLite side by side), shiori's (golang-migrate
//! names; both engines) and rauthy's (refinery), each applied by dbward and by its own runner
//! (the real sqlx-cli) or psql/sqlite3 file by file, then compared: schema and rows.

use crate::common;

use std::process::Command;

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

/// A real project's folder, as copied into tests/fixtures/projects (with its licence).
fn project(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/projects")
        .join(rel)
}

/// The tables that are a runner's own, never the application's.
const RUNNERS: &[&str] = &[
    "refinery_schema_history",
    "dbward_identity",
    "dbward_repeatable_history",
    "dbward_statement_progress",
    "_sqlx_migrations",
];

/// `dbward lint` on the folder finds no error, and `migrate` applies it in one run.
fn dbward_applies(folder: &std::path::Path, database: &str) {
    let p = Project::new();
    let (code, out, err) = run(p
        .dbward(database)
        .arg("--migrations")
        .arg(folder)
        .args(["--json", "lint"]));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json(&out)["errors"], 0, "{out}");
    let (code, out, err) = run(p
        .dbward(database)
        .arg("--migrations")
        .arg(folder)
        .args(["--json", "migrate"]));
    assert_eq!(code, 0, "{out}{err}");
    let files = std::fs::read_dir(folder)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.ends_with(".sql") && !name.ends_with(".down.sql")
        })
        .count();
    assert_eq!(
        json(&out)["applied"].as_array().unwrap().len(),
        files,
        "{out}"
    );
}

/// The application's schema and rows as pg_dump writes them, the runners' tables left out
/// (and the random `\restrict` key of this pg_dump).
fn pg_dump(pg: &Pg, db: &str, what: &str) -> String {
    let mut c = Command::new(common::pg_bindir().join("pg_dump"));
    c.args([
        what,
        "--no-owner",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-p",
    ])
    .arg(pg.port.to_string());
    for t in RUNNERS {
        c.arg("-T").arg(t);
    }
    c.arg(db);
    common::tool(&mut c)
        .lines()
        .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Each file applied on its own by psql, in version order: how the project's own runner
/// applies them (one file at a time).
fn psql_one_by_one(pg: &Pg, db: &str, files: &[std::path::PathBuf]) {
    for f in files {
        pg.psql_file(db, f);
    }
}

/// The `.sql` files of a folder that run (no down parts), by version.
fn up_files(folder: &std::path::Path) -> Vec<std::path::PathBuf> {
    let version = |p: &std::path::Path| -> u64 {
        let name = p.file_name().unwrap().to_string_lossy();
        let digits: String = name
            .trim_start_matches('V')
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().unwrap()
    };
    let mut files: Vec<_> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.ends_with(".sql") && !name.ends_with(".down.sql")
        })
        .collect();
    files.sort_by_key(|p| version(p));
    files
}

/// A SQLite database's schema and rows, the runners' tables left out.
fn sqlite_contents(db: &std::path::Path) -> String {
    let excluded = RUNNERS
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let schema = sqlite(
        db,
        &format!("SELECT type || ' ' || name || ': ' || coalesce(sql, '') FROM sqlite_master WHERE tbl_name NOT IN ({excluded}) ORDER BY name"),
    );
    let tables = sqlite(
        db,
        &format!("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN ({excluded}) AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"),
    );
    let mut out = schema;
    for t in tables.lines() {
        out.push_str(&format!(
            "\n-- {t}\n{}",
            sqlite(db, &format!("SELECT * FROM \"{t}\" ORDER BY 1"))
        ));
    }
    out
}

#[test]
fn atuin_applies_as_sqlx_applies_it_on_postgres_and_sqlite() {
    let pg = Pg::start();
    let folder = project("atuin/postgres");
    let by_dbward = pg.create_db("by_dbward");
    let by_sqlx = pg.create_db("by_sqlx");
    dbward_applies(&folder, &by_dbward);
    common::tool(
        Command::new("sqlx")
            .args(["migrate", "run", "--source"])
            .arg(&folder)
            .args(["--database-url", &by_sqlx]),
    );
    let schema = pg_dump(&pg, "by_dbward", "--schema-only");
    assert!(schema.contains("CREATE TABLE public.store"), "{schema}");
    assert_eq!(schema, pg_dump(&pg, "by_sqlx", "--schema-only"));
    assert_eq!(
        pg_dump(&pg, "by_dbward", "--data-only"),
        pg_dump(&pg, "by_sqlx", "--data-only")
    );

    // The SQLite server's folder beside it.
    let dir = tempfile::tempdir().unwrap();
    let folder = project("atuin/sqlite");
    let ours = dir.path().join("by_dbward.db");
    let theirs = dir.path().join("by_sqlx.db");
    dbward_applies(&folder, &format!("sqlite:{}", ours.display()));
    let url = format!("sqlite:{}", theirs.display());
    common::tool(Command::new("sqlx").args(["database", "create", "--database-url", &url]));
    common::tool(
        Command::new("sqlx")
            .args(["migrate", "run", "--source"])
            .arg(&folder)
            .args(["--database-url", &url]),
    );
    let contents = sqlite_contents(&ours);
    assert!(contents.contains("table store"), "{contents}");
    assert_eq!(contents, sqlite_contents(&theirs));
}

#[test]
fn shiori_applies_as_its_files_one_by_one_do_on_postgres_and_sqlite() {
    let pg = Pg::start();
    let folder = project("shiori/postgres");
    let by_dbward = pg.create_db("by_dbward");
    pg.create_db("by_psql");
    dbward_applies(&folder, &by_dbward);
    psql_one_by_one(&pg, "by_psql", &up_files(&folder));
    let schema = pg_dump(&pg, "by_dbward", "--schema-only");
    assert!(schema.contains("CREATE TABLE public.bookmark"), "{schema}");
    assert_eq!(schema, pg_dump(&pg, "by_psql", "--schema-only"));
    let data = pg_dump(&pg, "by_dbward", "--data-only");
    assert!(data.contains("0.0.0"), "shiori's own version row: {data}");
    assert_eq!(data, pg_dump(&pg, "by_psql", "--data-only"));

    let dir = tempfile::tempdir().unwrap();
    let folder = project("shiori/sqlite");
    let ours = dir.path().join("by_dbward.db");
    let theirs = dir.path().join("by_sqlite3.db");
    dbward_applies(&folder, &format!("sqlite:{}", ours.display()));
    for f in up_files(&folder) {
        common::tool(
            Command::new("sqlite3")
                .arg(&theirs)
                .arg(format!(".read {}", f.display())),
        );
    }
    let contents = sqlite_contents(&ours);
    assert!(contents.contains("USING fts5"), "{contents}");
    assert_eq!(contents, sqlite_contents(&theirs));
}

#[test]
fn rauthy_applies_as_its_files_one_by_one_do() {
    let pg = Pg::start();
    let folder = project("rauthy/postgres");
    let by_dbward = pg.create_db("by_dbward");
    pg.create_db("by_psql");
    dbward_applies(&folder, &by_dbward);
    psql_one_by_one(&pg, "by_psql", &up_files(&folder));
    let schema = pg_dump(&pg, "by_dbward", "--schema-only");
    assert!(schema.contains("CREATE TABLE public.clients"), "{schema}");
    assert_eq!(schema, pg_dump(&pg, "by_psql", "--schema-only"));
    let data = pg_dump(&pg, "by_dbward", "--data-only");
    assert!(
        data.contains("COPY public."),
        "rauthy's initial data: {data}"
    );
    assert_eq!(data, pg_dump(&pg, "by_psql", "--data-only"));
}

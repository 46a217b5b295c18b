//! Databases another migration tool ran: its history is adopted (which files it applied, their
//! checksums verified where it keeps them), its folder read in its own layout, its table left
//! as it was. sqlx and dbmate are the real tools; golang-migrate, goose, diesel and Flyway
//! tables are written as their documentation gives them (Flyway's checksums by a Java program
//! that reads files as Flyway's does).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{json, run, sqlite, tool, Pg, Project};

fn write(p: &Project, rel: &str, text: &str) {
    let path = p.path().join("migrations").join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn migrations(p: &Project) -> PathBuf {
    p.path().join("migrations")
}

/// `sqlx migrate run` with the real sqlx-cli.
fn sqlx(dir: &Path, url: &str) {
    tool(
        Command::new("sqlx")
            .args(["migrate", "run", "--source"])
            .arg(dir)
            .args(["--database-url", url]),
    );
}

/// `dbmate up` with the real dbmate, no schema dump.
fn dbmate(dir: &Path, url: &str) {
    tool(
        Command::new("dbmate")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .args(["--no-dump-schema", "--url", url, "--migrations-dir"])
            .arg(dir)
            .arg("up"),
    );
}

/// `status --json`'s account of another tool's history.
fn other_history(p: &Project, db: &str) -> serde_json::Value {
    let (code, out, err) = run(p.dbward(db).args(["status", "--json"]));
    assert_eq!(code, 0, "{out}{err}");
    json(&out)["other_history"].clone()
}

fn migrate_applies(p: &Project, db: &str) -> Vec<i64> {
    let (code, out, err) = run(p.dbward(db).args(["migrate", "--json"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("adopted"), "{err}");
    json(&out)["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["version"].as_i64().unwrap())
        .collect()
}

fn refused(p: &Project, db: &str, says: &[&str]) {
    let (code, out, err) = run(p.dbward(db).arg("migrate"));
    assert_eq!(code, 3, "{out}{err}");
    for s in says {
        assert!(err.contains(s), "expected {s:?} in: {err}");
    }
}

#[test]
fn sqlx_history_is_adopted_with_its_checksums_postgres_and_sqlite() {
    let pg = Pg::start();
    // PostgreSQL: sqlx's plain files, timestamp versions (beyond 32 bits).
    let p = Project::new();
    write(
        &p,
        "20240101120000_create_users.sql",
        "CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL);\n",
    );
    write(
        &p,
        "20240102120000_seed.sql",
        "INSERT INTO users (email) VALUES ('a@example.com');\n",
    );
    let app = pg.create_db("app");
    sqlx(&migrations(&p), &app);
    let before = pg.psql("app", "SELECT string_agg(version || ':' || encode(checksum, 'hex'), ',' ORDER BY version) FROM _sqlx_migrations");
    write(
        &p,
        "20240103120000_add_name.sql",
        "-- a new file, written the way the team did\nALTER TABLE users ADD COLUMN name text;\n",
    );

    assert_eq!(other_history(&p, &app)["state"], "pending");
    assert_eq!(migrate_applies(&p, &app), [20240103120000]);
    assert_eq!(
        pg.psql(
            "app",
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM refinery_schema_history"
        ),
        "20240101120000,20240102120000,20240103120000"
    );
    assert_eq!(
        pg.psql("app", "SELECT data_type FROM information_schema.columns WHERE table_name = 'refinery_schema_history' AND column_name = 'version'"),
        "bigint",
        "a timestamp version widens the history's versions"
    );
    assert_eq!(
        pg.psql("app", "SELECT count(*) FROM users WHERE name IS NULL"),
        "1"
    );
    let after = pg.psql("app", "SELECT string_agg(version || ':' || encode(checksum, 'hex'), ',' ORDER BY version) FROM _sqlx_migrations");
    assert_eq!(before, after, "sqlx's table is left as it was");
    assert_eq!(other_history(&p, &app)["state"], "adopted");
    let (code, out, _) = run(p.dbward(&app).arg("status"));
    assert_eq!(code, 0);
    assert!(out.contains("do not run `sqlx migrate run`"), "{out}");

    // A file edited after sqlx applied it: its SHA-384 differs, nothing is recorded.
    let edited = pg.create_db("edited");
    let q = Project::new();
    write(
        &q,
        "20240101120000_create_users.sql",
        "CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL);\n",
    );
    sqlx(&migrations(&q), &edited);
    write(
        &q,
        "20240101120000_create_users.sql",
        "CREATE TABLE users (id bigserial PRIMARY KEY, email text);\n",
    );
    refused(
        &q,
        &edited,
        &[
            "20240101120000_create_users.sql",
            "SHA-384",
            "Nothing was run or recorded",
        ],
    );
    assert_eq!(
        pg.psql(
            "edited",
            "SELECT to_regclass('refinery_schema_history') IS NULL"
        ),
        "t"
    );
    // A migration sqlx recorded as failed.
    write(
        &q,
        "20240101120000_create_users.sql",
        "CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL);\n",
    );
    pg.psql("edited", "UPDATE _sqlx_migrations SET success = false");
    refused(&q, &edited, &["not successful", "delete that row"]);

    // SQLite: sqlx's reversible files; the down parts never run.
    let s = Project::new();
    write(
        &s,
        "1_create_notes.up.sql",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);\n",
    );
    write(&s, "1_create_notes.down.sql", "DROP TABLE notes;\n");
    write(
        &s,
        "2_seed.up.sql",
        "INSERT INTO notes (body) VALUES ('kept');\n",
    );
    write(&s, "2_seed.down.sql", "DELETE FROM notes;\n");
    let db = s.path().join("app.db");
    tool(
        Command::new("sqlx")
            .args(["database", "create", "--database-url"])
            .arg(format!("sqlite:{}", db.display())),
    );
    sqlx(&migrations(&s), &format!("sqlite:{}", db.display()));
    write(
        &s,
        "3_more.up.sql",
        "INSERT INTO notes (body) VALUES ('new');\n",
    );
    write(
        &s,
        "3_more.down.sql",
        "DELETE FROM notes WHERE body = 'new';\n",
    );
    assert_eq!(migrate_applies(&s, "sqlite:app.db"), [3]);
    assert_eq!(
        sqlite(&db, "SELECT group_concat(body) FROM notes"),
        "kept,new"
    );
    assert_eq!(sqlite(&db, "SELECT count(*) FROM _sqlx_migrations"), "2");
}

#[test]
fn dbmate_history_is_adopted_and_only_up_sections_run() {
    let pg = Pg::start();
    for engine in ["postgres", "sqlite"] {
        let p = Project::new();
        write(&p, "20240101000000_create_posts.sql", "-- migrate:up\nCREATE TABLE posts (id integer PRIMARY KEY, title text);\n\n-- migrate:down\nDROP TABLE posts;\n");
        write(&p, "20240102000000_seed.sql", "-- migrate:up\nINSERT INTO posts VALUES (1, 'first');\n\n-- migrate:down\nDELETE FROM posts;\n");
        let (url, db) = if engine == "postgres" {
            (pg.create_db("blog"), "blog".to_string())
        } else {
            let path = p.path().join("blog.db");
            (
                format!("sqlite:{}", path.display()),
                path.display().to_string(),
            )
        };
        dbmate(&migrations(&p), &url);
        let concurrent = engine == "postgres";
        if concurrent {
            write(&p, "20240103000000_index.sql", "-- migrate:up transaction:false\nCREATE INDEX CONCURRENTLY posts_title ON posts (title);\n\n-- migrate:down\nDROP INDEX posts_title;\n");
        } else {
            write(&p, "20240103000000_index.sql", "-- migrate:up\nCREATE INDEX posts_title ON posts (title);\n\n-- migrate:down\nDROP INDEX posts_title;\n");
        }
        assert_eq!(other_history(&p, &url)["tool"], "dbmate");
        assert_eq!(migrate_applies(&p, &url), [20240103000000], "{engine}");
        let q = |sql: &str| {
            if engine == "postgres" {
                pg.psql("blog", sql)
            } else {
                sqlite(Path::new(&db), sql)
            }
        };
        assert_eq!(
            q("SELECT title FROM posts"),
            "first",
            "{engine}: no down part ran"
        );
        assert_eq!(q("SELECT count(*) FROM schema_migrations"), "2", "{engine}");
        if concurrent {
            assert_eq!(
                pg.psql(
                    "blog",
                    "SELECT indisvalid FROM pg_index WHERE indexrelid = 'posts_title'::regclass"
                ),
                "t"
            );
        }
        // dbmate sees its table as it left it: the new file is pending there, and dbward says
        // not to run dbmate again.
        let (_, out, _) = run(p.dbward(&url).arg("status"));
        assert!(out.contains("do not run `dbmate up`"), "{out}");
    }
}

#[test]
fn golang_migrate_goose_and_diesel_histories_as_documented() {
    let pg = Pg::start();

    // golang-migrate (PostgreSQL): one row, the version the database is at, and `dirty`.
    let p = Project::new();
    write(
        &p,
        "000001_create_accounts.up.sql",
        "BEGIN;\nCREATE TABLE accounts (id serial PRIMARY KEY, owner text);\nCOMMIT;\n",
    );
    write(
        &p,
        "000001_create_accounts.down.sql",
        "DROP TABLE accounts;\n",
    );
    write(
        &p,
        "000002_seed.up.sql",
        "INSERT INTO accounts (owner) VALUES ('ann');\n",
    );
    write(&p, "000002_seed.down.sql", "DELETE FROM accounts;\n");
    write(
        &p,
        "000003_add_balance.up.sql",
        "ALTER TABLE accounts ADD COLUMN balance numeric NOT NULL DEFAULT 0;\n",
    );
    write(
        &p,
        "000003_add_balance.down.sql",
        "ALTER TABLE accounts DROP COLUMN balance;\n",
    );
    let golang = |name: &str, dirty: bool| {
        let url = pg.create_db(name);
        pg.psql(name, "CREATE TABLE accounts (id serial PRIMARY KEY, owner text); INSERT INTO accounts (owner) VALUES ('ann');");
        pg.psql(name, &format!("CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL); INSERT INTO schema_migrations VALUES (2, {dirty});"));
        url
    };
    let bank = golang("bank", false);
    assert_eq!(other_history(&p, &bank)["tool"], "golang-migrate");
    assert_eq!(migrate_applies(&p, &bank), [3]);
    assert_eq!(
        pg.psql("bank", "SELECT owner || balance FROM accounts"),
        "ann0"
    );
    assert_eq!(
        pg.psql(
            "bank",
            "SELECT version || dirty::text FROM schema_migrations"
        ),
        "2false"
    );
    // Two tools that write this layout: dbward cannot tell which history is true.
    let both = golang("both_tools", false);
    pg.psql("both_tools", "CREATE TABLE _sqlx_migrations (version bigint PRIMARY KEY, description text NOT NULL, installed_on timestamptz NOT NULL DEFAULT now(), success boolean NOT NULL, checksum bytea NOT NULL, execution_time bigint NOT NULL)");
    refused(
        &p,
        &both,
        &["sqlx's _sqlx_migrations and golang-migrate's schema_migrations"],
    );
    // A table named like dbmate's (Rails and others write one too) beside a folder dbmate
    // cannot have run: left alone, and the database is built from the folder as usual.
    let rails = pg.create_db("rails");
    pg.psql("rails", "CREATE TABLE schema_migrations (version varchar PRIMARY KEY); INSERT INTO schema_migrations VALUES ('20240101000000');");
    assert_eq!(other_history(&p, &rails)["state"], "unrelated");
    let (code, _, err) = run(p.dbward(&rails).arg("migrate"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        pg.psql("rails", "SELECT count(*) FROM refinery_schema_history"),
        "3"
    );
    let dirty = golang("dirty", true);
    refused(
        &p,
        &dirty,
        &["golang-migrate marked version 2 dirty", "migrate force"],
    );
    assert_eq!(
        pg.psql(
            "dirty",
            "SELECT to_regclass('refinery_schema_history') IS NULL"
        ),
        "t"
    );
    // status says why, with the rest of what it knows (every file pending), and exits 3.
    let (code, out, err) = run(p.dbward(&dirty).arg("status"));
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("history: golang-migrate's history (schema_migrations) cannot be adopted"),
        "{out}"
    );
    assert!(out.contains("3 pending"), "{out}");

    // goose (SQLite): the newest row of a version says whether it stands applied.
    let g = Project::new();
    write(&g, "20240101000001_create_items.sql", "-- +goose Up\n-- +goose StatementBegin\nCREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);\n-- +goose StatementEnd\n\n-- +goose Down\nDROP TABLE items;\n");
    write(&g, "20240101000002_seed.sql", "-- +goose Up\nINSERT INTO items (name) VALUES ('bolt');\n-- +goose Down\nDELETE FROM items;\n");
    write(&g, "20240101000003_more.sql", "-- +goose Up\nINSERT INTO items (name) VALUES ('nut');\n-- +goose Down\nDELETE FROM items WHERE name = 'nut';\n");
    let db = g.path().join("shop.db");
    sqlite(&db, "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO items (name) VALUES ('bolt');
        CREATE TABLE goose_db_version (id INTEGER PRIMARY KEY AUTOINCREMENT, version_id INTEGER NOT NULL, is_applied INTEGER NOT NULL, tstamp TIMESTAMP DEFAULT (datetime('now')));
        INSERT INTO goose_db_version (version_id, is_applied) VALUES (0, 1), (20240101000001, 1), (20240101000002, 1), (20240101000003, 1), (20240101000003, 0);");
    assert_eq!(
        migrate_applies(&g, "sqlite:shop.db"),
        [20240101000003],
        "goose rolled 3 back"
    );
    assert_eq!(
        sqlite(&db, "SELECT group_concat(name) FROM items"),
        "bolt,nut"
    );

    // diesel (PostgreSQL): `<version>_<name>/up.sql`, a metadata.toml that keeps one file out of
    // a transaction.
    let d = Project::new();
    write(&d, "00000000000000_diesel_initial_setup/up.sql", "CREATE OR REPLACE FUNCTION diesel_set_updated_at() RETURNS trigger AS $$\nBEGIN\n  NEW.updated_at := current_timestamp;\n  RETURN NEW;\nEND;\n$$ LANGUAGE plpgsql;\n");
    write(
        &d,
        "00000000000000_diesel_initial_setup/down.sql",
        "DROP FUNCTION diesel_set_updated_at();\n",
    );
    write(
        &d,
        "2024-01-01-000000_create_posts/up.sql",
        "CREATE TABLE posts (id serial PRIMARY KEY, title text NOT NULL);\n",
    );
    write(
        &d,
        "2024-01-01-000000_create_posts/down.sql",
        "DROP TABLE posts;\n",
    );
    write(
        &d,
        "2024-02-01-000000_index_titles/up.sql",
        "CREATE INDEX CONCURRENTLY posts_title ON posts (title);\n",
    );
    write(
        &d,
        "2024-02-01-000000_index_titles/down.sql",
        "DROP INDEX posts_title;\n",
    );
    write(
        &d,
        "2024-02-01-000000_index_titles/metadata.toml",
        "run_in_transaction = false\n",
    );
    let news = pg.create_db("news");
    pg.psql("news", "CREATE TABLE __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY NOT NULL, run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);
        INSERT INTO __diesel_schema_migrations (version) VALUES ('00000000000000'), ('20240101000000');
        CREATE TABLE posts (id serial PRIMARY KEY, title text NOT NULL);");
    let (code, out, err) = run(d.dbward(&news).args(["migrate", "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("adopt diesel's history: record 2 migration(s)"),
        "{out}"
    );
    assert!(out.contains("outside a transaction"), "{out}");
    assert_eq!(migrate_applies(&d, &news), [20240201000000]);
    assert_eq!(
        pg.psql(
            "news",
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'posts_title'::regclass"
        ),
        "t"
    );
    assert_eq!(
        pg.psql("news", "SELECT count(*) FROM __diesel_schema_migrations"),
        "2"
    );
}

/// Flyway's checksums as Flyway computes them ([`tests/fixtures/flyway/FlywayChecksum.java`]).
fn flyway_checksums(files: &[PathBuf]) -> Vec<i32> {
    let java =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flyway/FlywayChecksum.java");
    tool(Command::new("java").arg(java).args(files))
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

#[test]
fn flyway_history_is_adopted_with_its_crc32_checksums() {
    let pg = Pg::start();
    let p = Project::new();
    write(&p, "V1__init.sql", "\u{feff}CREATE TABLE runs (what text);\r\nCREATE TABLE orders (id int PRIMARY KEY, total numeric);\r\n");
    write(
        &p,
        "V2__seed.sql",
        "INSERT INTO orders VALUES (1, 10);\n\n-- a comment\n",
    );
    write(&p, "R__order_view.sql", "CREATE OR REPLACE VIEW big_orders AS SELECT * FROM orders WHERE total > 5;\nINSERT INTO runs VALUES ('view');\n");
    let dir = migrations(&p);
    let sums = flyway_checksums(&[
        dir.join("V1__init.sql"),
        dir.join("V2__seed.sql"),
        dir.join("R__order_view.sql"),
    ]);
    let setup = |name: &str, v1_sum: i32, v2_success: bool| {
        let url = pg.create_db(name);
        pg.psql(name, "CREATE TABLE runs (what text); CREATE TABLE orders (id int PRIMARY KEY, total numeric); INSERT INTO orders VALUES (1, 10);
            CREATE OR REPLACE VIEW big_orders AS SELECT * FROM orders WHERE total > 5; INSERT INTO runs VALUES ('view');");
        pg.psql(name, &format!("CREATE TABLE flyway_schema_history (installed_rank integer NOT NULL PRIMARY KEY, version varchar(50), description varchar(200) NOT NULL, type varchar(20) NOT NULL, script varchar(1000) NOT NULL, checksum integer, installed_by varchar(100) NOT NULL, installed_on timestamp NOT NULL DEFAULT now(), execution_time integer NOT NULL, success boolean NOT NULL);
            INSERT INTO flyway_schema_history VALUES
              (1, '1', 'init', 'SQL', 'V1__init.sql', {v1_sum}, 'postgres', now(), 5, true),
              (2, '2', 'seed', 'SQL', 'V2__seed.sql', {}, 'postgres', now(), 5, {v2_success}),
              (3, NULL, 'order view', 'SQL', 'R__order_view.sql', {}, 'postgres', now(), 5, true);", sums[1], sums[2]));
        url
    };
    let shop = setup("shop", sums[0], true);
    write(
        &p,
        "V3__add_status.sql",
        "ALTER TABLE orders ADD COLUMN status text NOT NULL DEFAULT 'new';\n",
    );
    assert_eq!(other_history(&p, &shop)["tool"], "flyway");
    assert_eq!(
        migrate_applies(&p, &shop),
        [3],
        "V1, V2 and the unchanged R__ file are Flyway's"
    );
    assert_eq!(
        pg.psql("shop", "SELECT count(*) FROM runs"),
        "1",
        "the repeatable file did not run again"
    );
    assert_eq!(pg.psql("shop", "SELECT status FROM orders"), "new");
    assert_eq!(
        pg.psql("shop", "SELECT count(*) FROM flyway_schema_history"),
        "3"
    );

    // A checksum Flyway would not accept, and a failed migration, are refused.
    let edited = setup("edited", sums[0].wrapping_add(1), true);
    refused(&p, &edited, &["V1__init.sql", "Flyway's CRC32"]);
    let failed = setup("failed", sums[0], false);
    refused(&p, &failed, &["V2__seed.sql as failed", "flyway repair"]);

    // A table of another tool whose layout the folder is not in is left alone.
    let goose_too = setup("goose_too", sums[0], true);
    pg.psql("goose_too", "CREATE TABLE goose_db_version (id serial, version_id bigint NOT NULL, is_applied boolean NOT NULL)");
    assert_eq!(migrate_applies(&p, &goose_too), [3]);
    // baseline would forget what Flyway knows: it points to migrate.
    let fresh = setup("fresh", sums[0], true);
    let (code, _, err) = run(p.dbward(&fresh).args(["baseline", "2"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("`dbward migrate` adopts it"), "{err}");
}

#[test]
fn flyway_versions_with_parts_are_ordered_part_by_part_and_kept_as_written() {
    // SQLite, dbward's own folder: `_` and `.` separate parts; 1.10 comes after 1.9.
    let p = Project::new();
    p.migration("V1__init.sql", "CREATE TABLE t (a INTEGER);\n")
        .migration("V1_1__eleven.sql", "INSERT INTO t VALUES (11);\n")
        .migration("V1.10__one_ten.sql", "INSERT INTO t VALUES (110);\n")
        .migration("V1.9__nineteen.sql", "INSERT INTO t VALUES (19);\n");
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["migrate", "--json"]));
    assert_eq!(code, 0, "{err}");
    let texts: Vec<serde_json::Value> = json(&out)["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["version_text"].clone())
        .collect();
    assert_eq!(
        texts,
        [
            serde_json::Value::Null,
            "1.1".into(),
            "1.9".into(),
            "1.10".into()
        ]
    );
    let db = p.path().join("app.db");
    assert_eq!(sqlite(&db, "SELECT group_concat(a) FROM t"), "11,19,110");
    assert_eq!(
        sqlite(&db, "SELECT group_concat(coalesce(version_text, version), ' ') FROM (SELECT * FROM refinery_schema_history ORDER BY rowid)"),
        "1 1.1 1.9 1.10"
    );
    // The head every reader computes (a snapshot's manifest here) is the newest by parts.
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["backup", "--json"]));
    assert_eq!(code, 0, "{err}");
    let head = &json(&out)["snapshot"]["migration_head"];
    assert_eq!(head["version_text"], "1.10", "{out}");
    assert_eq!(head["name"], "one_ten");
    // And a restore checks the copy's head the same way.
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["restore", "latest", "--yes", "--to", "copy.db"]));
    assert_eq!(code, 0, "{err}");
    // baseline names a version with parts, and records exactly the files up to it.
    let b = Project::new();
    b.migration(
        "V1__init.sql",
        "CREATE TABLE t (a INTEGER);
",
    )
    .migration(
        "V1.1__a.sql",
        "SELECT 1;
",
    )
    .migration(
        "V2__b.sql",
        "SELECT 1;
",
    )
    .migration(
        "V2.1__c.sql",
        "SELECT 1;
",
    )
    .migration(
        "V3__d.sql",
        "SELECT 1;
",
    );
    sqlite(&b.path().join("app.db"), "CREATE TABLE t (a INTEGER)");
    let (code, out, err) = run(b.dbward("sqlite:app.db").args(["baseline", "2", "--json"]));
    assert_eq!(code, 0, "{err}");
    let names: Vec<&str> = json(&out)["recorded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect::<Vec<_>>()
        .into_iter()
        .map(|n| match n {
            "init" => "V1",
            "a" => "V1.1",
            "b" => "V2",
            "c" => "V2.1",
            _ => "V3",
        })
        .collect();
    assert_eq!(names, ["V1", "V1.1", "V2"]);
    p.migration("V2__two.sql", "INSERT INTO t VALUES (2);\n");
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["status"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1.10     one_ten"), "{out}");
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
    assert_eq!(code, 0, "{err}");
    p.migration("V1.5__late.sql", "INSERT INTO t VALUES (15);\n");
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("V1.5__late.sql: not applied, but older than the newest applied migration V2"),
        "{err}"
    );

    // PostgreSQL, adopted from Flyway with a version with parts in its history.
    let pg = Pg::start();
    let f = Project::new();
    write(
        &f,
        "V1__init.sql",
        "CREATE TABLE orders (id int PRIMARY KEY, total numeric);\n",
    );
    write(&f, "V1_1__seed.sql", "INSERT INTO orders VALUES (1, 10);\n");
    let dir = migrations(&f);
    let sums = flyway_checksums(&[dir.join("V1__init.sql"), dir.join("V1_1__seed.sql")]);
    pg.create_db("shop");
    pg.psql("shop", "CREATE TABLE orders (id int PRIMARY KEY, total numeric); INSERT INTO orders VALUES (1, 10);");
    pg.psql("shop", &format!("CREATE TABLE flyway_schema_history (installed_rank integer NOT NULL PRIMARY KEY, version varchar(50), description varchar(200) NOT NULL, type varchar(20) NOT NULL, script varchar(1000) NOT NULL, checksum integer, installed_by varchar(100) NOT NULL, installed_on timestamp NOT NULL DEFAULT now(), execution_time integer NOT NULL, success boolean NOT NULL);
        INSERT INTO flyway_schema_history VALUES
          (1, '1', 'init', 'SQL', 'V1__init.sql', {}, 'postgres', now(), 5, true),
          (2, '1.1', 'seed', 'SQL', 'V1_1__seed.sql', {}, 'postgres', now(), 5, true);", sums[0], sums[1]));
    write(
        &f,
        "V1.2__add_status.sql",
        "ALTER TABLE orders ADD COLUMN status text NOT NULL DEFAULT 'new';\n",
    );
    write(
        &f,
        "V2.1__add_note.sql",
        "ALTER TABLE orders ADD COLUMN note text;\n",
    );
    let url = pg.url("shop");
    let (code, out, err) = run(f.dbward(&url).args(["migrate", "--json"]));
    assert_eq!(code, 0, "{out}{err}");
    let applied: Vec<String> = json(&out)["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a["file"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(applied, ["V1.2__add_status.sql", "V2.1__add_note.sql"]);
    assert_eq!(
        pg.psql("shop", "SELECT string_agg(coalesce(version_text, version::text), ' ' ORDER BY coalesce(version_text, version::text)) FROM refinery_schema_history"),
        "1 1.1 1.2 2.1",
    );
    // The head is 2.1 wherever it is read: status, a snapshot's manifest, a restore's check.
    let (code, out, _) = run(f.dbward(&url).args(["status", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(json(&out)["head"]["version_text"], "2.1", "{out}");
    let (code, out, err) = run(f.dbward(&url).args(["backup", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&out)["snapshot"]["migration_head"]["version_text"],
        "2.1"
    );
    let copy = pg.url("shop_copy");
    let (code, _, err) = run(f
        .dbward(&url)
        .args(["restore", "latest", "--yes", "--to", &copy]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        pg.psql(
            "shop_copy",
            "SELECT count(*) FROM orders WHERE note IS NULL"
        ),
        "1"
    );

    // Flyway's baseline (baselineOnMigrate): files start after its version.
    let g = Project::new();
    write(
        &g,
        "V2__orders.sql",
        "CREATE TABLE orders (id int PRIMARY KEY);\n",
    );
    write(&g, "V3__seed.sql", "INSERT INTO orders VALUES (1);\n");
    pg.create_db("baselined");
    pg.psql("baselined", "CREATE TABLE legacy (id int); CREATE TABLE flyway_schema_history (installed_rank integer NOT NULL PRIMARY KEY, version varchar(50), description varchar(200) NOT NULL, type varchar(20) NOT NULL, script varchar(1000) NOT NULL, checksum integer, installed_by varchar(100) NOT NULL, installed_on timestamp NOT NULL DEFAULT now(), execution_time integer NOT NULL, success boolean NOT NULL);
        INSERT INTO flyway_schema_history VALUES (1, '1', '<< Flyway Baseline >>', 'BASELINE', '<< Flyway Baseline >>', NULL, 'postgres', now(), 0, true);");
    let baselined = pg.url("baselined");
    assert_eq!(migrate_applies(&g, &baselined), [2, 3]);
    // A Flyway placeholder would run as written: refused before anything runs.
    write(
        &g,
        "V4__tenant.sql",
        "INSERT INTO orders VALUES (${tenant_id});\n",
    );
    pg.create_db("placeholders");
    pg.psql("placeholders", "CREATE TABLE flyway_schema_history (installed_rank integer NOT NULL PRIMARY KEY, version varchar(50), description varchar(200) NOT NULL, type varchar(20) NOT NULL, script varchar(1000) NOT NULL, checksum integer, installed_by varchar(100) NOT NULL, installed_on timestamp NOT NULL DEFAULT now(), execution_time integer NOT NULL, success boolean NOT NULL);");
    refused(
        &g,
        &pg.url("placeholders"),
        &["V4__tenant.sql", "placeholders"],
    );
}

/// `refinery migrate` with the real refinery CLI, the database from the environment.
fn refinery(dir: &Path, url: &str) -> String {
    tool(
        Command::new("refinery")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("DATABASE_URL", url)
            .args(["migrate", "-e", "DATABASE_URL", "-d", "-m", "-p"])
            .arg(dir),
    )
}

#[test]
fn refinerys_history_is_dbwards_own_both_ways_with_the_real_refinery_cli() {
    let pg = Pg::start();
    for engine in ["postgres", "sqlite"] {
        let p = Project::new();
        p.migration(
            "V1__create_users.sql",
            "CREATE TABLE users (id integer PRIMARY KEY, email text);\n",
        )
        .migration(
            "V2__seed.sql",
            "INSERT INTO users VALUES (1, 'a@example.com');\n",
        );
        let url = if engine == "postgres" {
            pg.create_db("app")
        } else {
            format!("sqlite:{}", p.path().join("app.db").display())
        };
        let q = |sql: &str| {
            if engine == "postgres" {
                pg.psql("app", sql)
            } else {
                sqlite(&p.path().join("app.db"), sql)
            }
        };
        if engine == "sqlite" {
            std::fs::File::create(p.path().join("app.db")).unwrap();
        }
        refinery(&migrations(&p), &url);
        // dbward reads refinery's rows as its own: nothing to adopt, nothing drifted.
        p.migration(
            "V3__add_name.sql",
            "ALTER TABLE users ADD COLUMN name text;\n",
        );
        let (code, out, err) = run(p.dbward(&url).args(["migrate", "--json"]));
        assert_eq!(code, 0, "{engine}: {out}{err}");
        assert!(!err.contains("adopted"), "{err}");
        let applied: Vec<i64> = json(&out)["applied"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["version"].as_i64().unwrap())
            .collect();
        assert_eq!(applied, [3], "{engine}");
        // And refinery reads dbward's rows as its own: with divergence and missing checks on,
        // it applies only what comes after.
        p.migration(
            "V4__index.sql",
            "CREATE INDEX users_email ON users (email);\n",
        );
        let said = refinery(&migrations(&p), &url);
        assert!(
            said.contains("applying migration: V4__index") && !said.contains("V3__"),
            "{engine}: {said}"
        );
        assert_eq!(
            q("SELECT count(*) FROM refinery_schema_history"),
            "4",
            "{engine}"
        );
        assert_eq!(
            q("SELECT count(*) FROM users WHERE name IS NULL"),
            "1",
            "{engine}"
        );
        let (code, out, err) = run(p.dbward(&url).args(["status", "--json"]));
        assert_eq!(code, 0, "{engine}: {err}");
        let doc = json(&out);
        assert_eq!(doc["pending"], 0, "{out}");
        assert_eq!(doc["head"]["version"], 4, "{out}");
        assert!(doc["drift"].as_array().unwrap().is_empty(), "{out}");
    }
}

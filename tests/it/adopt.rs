//! Adopting a database a team already has: its schema as `pg_dump --schema-only` writes it as
//! the first migration (psql meta-commands, an emptied search path), and `dbward baseline` to
//! say the production database already holds it. Real pg_dump, real clusters, real SQLite.

use crate::common;

use std::process::Command;

use common::{json, run, sqlite, Pg, Project};

const PROD_SCHEMA: &str = "CREATE TABLE customers (id serial PRIMARY KEY, email text NOT NULL UNIQUE);
CREATE TABLE orders (id serial PRIMARY KEY, customer_id int NOT NULL REFERENCES customers(id), total numeric(10,2));
CREATE FUNCTION order_count(c int) RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM orders WHERE customer_id = c $$;
CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100;
INSERT INTO customers (email) VALUES ('a@example.com'), ('b@example.com');
INSERT INTO orders (customer_id, total) VALUES (1, 250), (2, 10);";

#[test]
fn a_pg_dump_schema_is_the_first_migration_and_baseline_adopts_production() {
    let pg = Pg::start();
    let prod = pg.create_db("prod");
    pg.psql("prod", PROD_SCHEMA);
    let p = Project::new();
    // V1: the schema exactly as the real pg_dump writes it.
    let dump = common::tool(
        Command::new(common::pg_bindir().join("pg_dump"))
            .args(["--schema-only", "-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(pg.port.to_string())
            .arg("prod"),
    );
    assert!(
        dump.contains("\\restrict "),
        "this pg_dump writes \\restrict lines: {dump}"
    );
    assert!(dump.contains("set_config('search_path', '', false)"));
    p.migration("V1__baseline.sql", &format!("{dump}\n"));
    p.migration(
        "V2__add_notes.sql",
        "ALTER TABLE orders ADD COLUMN note text;\nCREATE INDEX orders_customer ON orders (customer_id);\n",
    );

    // Lint names the meta-commands, and does not refuse pg_dump's own.
    let (code, out, err) = run(p.dbward(&prod).arg("lint"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        (out.clone() + &err).contains("psql-meta-command"),
        "{out}{err}"
    );

    // Production already has V1: baseline records it, migrate applies only V2.
    let (code, out, err) = run(p.dbward(&prod).args(["baseline", "1", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["recorded"].as_array().unwrap().len(), 1);
    let (code, _, err) = run(p.dbward(&prod).args(["baseline", "1"]));
    assert_eq!(code, 3, "a second baseline is refused: {err}");
    let (code, out, err) = run(p.dbward(&prod).args(["migrate", "--json"]));
    assert_eq!(code, 0, "{err}");
    let applied = json(&out)["applied"].clone();
    assert_eq!(applied.as_array().unwrap().len(), 1, "{applied}");
    assert_eq!(applied[0]["version"], 2);
    assert_eq!(
        pg.psql("prod", "SELECT count(*) FROM orders"),
        "2",
        "data untouched"
    );

    // A new environment is built from the same files in one batch: the dump empties the search
    // path, and neither its SET nor that reaches the next file or dbward's own history insert.
    let staging = pg.create_db("staging");
    let (code, _, err) = run(p.dbward(&staging).arg("migrate"));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("dropping pg_dump's psql meta-command"),
        "{err}"
    );
    assert_eq!(
        pg.psql("staging", "SELECT count(*) FROM refinery_schema_history"),
        "2"
    );
    assert_eq!(
        pg.psql("staging", "SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'note'"),
        "1"
    );
    // An empty database is not adopted: migrate builds it.
    let empty = pg.create_db("empty");
    let (code, _, err) = run(p.dbward(&empty).args(["baseline", "1"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no tables"), "{err}");
    let (code, _, err) = run(p.dbward(&empty).args(["baseline", "7"]));
    assert_eq!(code, 2, "no such migration: {err}");
}

#[test]
fn a_sqlite_database_that_exists_is_adopted_with_baseline() {
    let p = Project::new();
    let db = p.path().join("app.db");
    sqlite(&db, "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO items (name) VALUES ('kept');");
    p.migration(
        "V1__items.sql",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);\n",
    );
    p.migration(
        "V2__tags.sql",
        "CREATE TABLE tags (id INTEGER PRIMARY KEY);\n",
    );
    let (code, _, err) = run(p.dbward("sqlite:app.db").args(["baseline", "1"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(sqlite(&db, "SELECT name FROM items"), "kept");
    assert_eq!(
        sqlite(
            &db,
            "SELECT group_concat(version) FROM refinery_schema_history"
        ),
        "1,2"
    );
}

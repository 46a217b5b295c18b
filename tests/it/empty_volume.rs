//! A container rescheduled onto a fresh volume, a server rebuilt empty: the database is missing
//! while its snapshots are in the store. `restore latest --if-missing` (and `migrate` with
//! `restore.if_missing`) brings it back before anything else, and never restores over a
//! database that exists.

use crate::common;

use common::{json, run, sqlite, Pg, Project};

#[test]
fn a_fresh_sqlite_volume_gets_its_data_back_before_migrate() {
    let p = Project::new();
    p.migration(
        "V1__items.sql",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);\n",
    );
    let db = p.path().join("app.db");
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    sqlite(&db, "INSERT INTO items (name) VALUES ('precious');");
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("backup"));
    assert_eq!(code, 0, "{err}");

    // The database exists: nothing happens.
    let (code, out, err) =
        run(p
            .dbward("sqlite:app.db")
            .args(["restore", "latest", "--if-missing", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["missing"], false);

    // The volume is gone. Without the setting, migrate warns loudly and starts empty.
    std::fs::remove_file(&db).unwrap();
    let (code, _, err) =
        run(p
            .dbward("sqlite:app.db")
            .args(["migrate", "--no-snapshot", "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["migrate", "--restore-if-missing"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("is missing: restoring its newest snapshot"),
        "{err}"
    );
    assert_eq!(sqlite(&db, "SELECT name FROM items"), "precious");

    // An empty file counts as missing too; `migrate` with the setting in the config file.
    std::fs::write(&db, "").unwrap();
    std::fs::write(
        p.path().join("dbward.toml"),
        "[restore]\nif_missing = true\n",
    )
    .unwrap();
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(sqlite(&db, "SELECT name FROM items"), "precious");

    // No snapshot anywhere: a first deploy starts fresh.
    let q = Project::new();
    q.migration(
        "V1__items.sql",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);\n",
    );
    let (code, out, err) =
        run(q
            .dbward("sqlite:app.db")
            .args(["restore", "latest", "--if-missing"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("starting fresh"), "{out}");

    // Without the setting, a missing file with snapshots in the store is said loudly.
    std::fs::remove_file(&db).unwrap();
    std::fs::remove_file(p.path().join("dbward.toml")).unwrap();
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("lost volume"), "{err}");
}

#[test]
fn a_missing_postgres_database_is_restored_and_an_existing_one_never() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    p.migration(
        "V1__schema.sql",
        "CREATE TABLE accounts (id serial PRIMARY KEY, note text);\n",
    );
    assert_eq!(run(p.dbward(&url).args(["migrate", "--no-snapshot"])).0, 0);
    pg.psql("shop", "INSERT INTO accounts (note) VALUES ('precious')");
    let (code, _, err) = run(p.dbward(&url).arg("backup"));
    assert_eq!(code, 0, "{err}");
    pg.psql("shop", "INSERT INTO accounts (note) VALUES ('newer')");

    let (code, out, err) =
        run(p
            .dbward(&url)
            .args(["restore", "latest", "--if-missing", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["missing"], false);
    assert_eq!(
        pg.psql("shop", "SELECT count(*) FROM accounts"),
        "2",
        "never over an existing one"
    );

    // A role the server does not know is not a missing database (the server says 28000, not
    // 3D000): a failure naming it, nothing restored.
    let stranger = url.replacen("postgres@", "nobody_here@", 1);
    assert_ne!(stranger, url);
    let (code, _, err) =
        run(p
            .dbward(&stranger)
            .args(["restore", "latest", "--if-missing", "--json"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("nobody_here") && !err.contains("is missing"),
        "{err}"
    );
    assert_eq!(pg.psql("shop", "SELECT count(*) FROM accounts"), "2");

    // The server was rebuilt: the database does not exist.
    pg.psql("postgres", "DROP DATABASE shop");
    let (code, out, err) =
        run(p
            .dbward(&url)
            .args(["restore", "latest", "--if-missing", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["missing"], true, "{out}");
    assert_eq!(pg.psql("shop", "SELECT note FROM accounts"), "precious");

    // Created but empty (as a compose service's first start makes it): missing too.
    pg.psql("postgres", "DROP DATABASE shop");
    pg.psql("postgres", "CREATE DATABASE shop");
    let (code, _, err) = run(p.dbward(&url).args(["migrate", "--restore-if-missing"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(pg.psql("shop", "SELECT note FROM accounts"), "precious");
}

/// Two hosts starting on a rebuilt server at once both find the database missing; the restore
/// lock makes the second look again and leave the first one's restore alone.
#[test]
fn two_hosts_restoring_a_missing_postgres_database_restore_it_once() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    p.migration(
        "V1__schema.sql",
        "CREATE TABLE accounts (id serial PRIMARY KEY, note text);\n",
    );
    assert_eq!(run(p.dbward(&url).args(["migrate", "--no-snapshot"])).0, 0);
    pg.psql(
        "shop",
        "INSERT INTO accounts (note) SELECT 'row ' || g FROM generate_series(1, 20000) g",
    );
    assert_eq!(run(p.dbward(&url).arg("backup")).0, 0);
    pg.psql("postgres", "DROP DATABASE shop");

    let hosts: Vec<_> = (0..2)
        .map(|_| {
            p.dbward(&url)
                .args(["restore", "latest", "--if-missing", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut restored = 0;
    for h in hosts {
        let out = h.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
        let doc = json(&common::stdout(&out));
        if doc["restored"].is_object() {
            restored += 1;
        }
    }
    assert_eq!(pg.psql("shop", "SELECT count(*) FROM accounts"), "20000");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'shop\\_%'"
        ),
        "0",
        "no replaced copy: the second restore did not swap over the first"
    );
    assert!(restored >= 1);
}

//! `dbward migrate` against a real PostgreSQL server (a throwaway cluster per test).

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{json, run, Pg, Project};

fn shop(p: &Project) {
    p.migration("V1__users.sql", "CREATE TABLE users (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL);\n")
        .migration(
            "V2__orders.sql",
            "CREATE TABLE orders (id serial PRIMARY KEY, user_id bigint REFERENCES users (id));\n\
             CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n  NEW.id := NEW.id;\n  RETURN NEW;\nEND;\n$$;\n\
             DO $$ BEGIN PERFORM 1; END $$",
        );
}

#[test]
fn applies_in_one_transaction_and_a_failing_third_file_leaves_no_trace() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    shop(&p);
    p.migration(
        "V3__broken.sql",
        "CREATE TABLE ok (id int);\n\nSELECT * FROM\n  no_such_table;\n",
    );
    let (code, out, err) = run(p.dbward(&url).args(["migrate", "--json"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("V3__broken.sql:4:3"),
        "names file, line and column: {err}"
    );
    assert!(
        err.contains("relation \"no_such_table\" does not exist"),
        "carries the server's message: {err}"
    );
    assert_eq!(json(&out)["line"], 4);
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'dbward_identity'"
        ),
        "0",
        "nothing of the batch (the pre-deploy snapshot gave the database its identity table)"
    );
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT count(*) FROM pg_proc WHERE proname = 'touch'"
        ),
        "0"
    );

    p.migration("V3__broken.sql", "CREATE TABLE ok (id int);\n");
    let (code, out, err) = run(p.dbward(&url).args(["migrate", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["head"]["version"], 3);
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM refinery_schema_history"
        ),
        "1,2,3"
    );
    // refinery's format: RFC 3339 text and a decimal checksum.
    let row = pg.psql("shop", "SELECT applied_on ~ '^\\d{4}-\\d\\d-\\d\\dT', checksum ~ '^\\d+$' FROM refinery_schema_history WHERE version = 1");
    assert_eq!(row, "t|t");
}

#[test]
fn drift_is_refused() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    shop(&p);
    assert_eq!(run(p.dbward(&url).arg("migrate")).0, 0);
    p.migration("V1__users.sql", "CREATE TABLE users (id int);\n");
    let (code, _, err) = run(p.dbward(&url).arg("migrate"));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("V1__users.sql: changed since it was applied"),
        "{err}"
    );
    assert_eq!(run(p.dbward(&url).arg("status")).0, 3);
}

#[test]
fn five_concurrent_runs_all_succeed_and_apply_each_migration_once() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    shop(&p);
    // Not idempotent: a second application would fail or double the row.
    p.migration(
        "V3__seed.sql",
        "CREATE TABLE runs (n int);\nINSERT INTO runs VALUES (1);\nSELECT pg_sleep(0.5);\n",
    );
    let children: Vec<_> = (0..5)
        .map(|_| {
            p.dbward(&url)
                .args(["migrate", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut applied = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
        applied += json(&common::stdout(&out))["applied"]
            .as_array()
            .unwrap()
            .len();
    }
    assert_eq!(
        applied, 3,
        "the three migrations were applied by exactly one runner"
    );
    assert_eq!(pg.psql("shop", "SELECT count(*) FROM runs"), "1");
    assert_eq!(
        pg.psql("shop", "SELECT count(*) FROM refinery_schema_history"),
        "3"
    );
}

#[test]
fn a_held_advisory_lock_times_out_with_exit_4() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    shop(&p);
    let mut holder = pg.session("shop");
    writeln!(
        holder.stdin.as_mut().unwrap(),
        "SELECT pg_advisory_lock({});",
        0x6462_7761_7264_0001_i64
    )
    .unwrap();
    pg.wait_for(
        "shop",
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted",
        "1",
    );
    let (code, _, err) = run(p.dbward(&url).args(["migrate", "--lock-timeout", "1s"]));
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("timed out after 1s waiting for the migration lock"),
        "{err}"
    );
    assert!(err.contains("held by pid"), "names the holder: {err}");
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(run(p.dbward(&url).arg("migrate")).0, 0);
}

#[test]
fn a_migration_blocked_by_another_sessions_lock_fails_on_lock_timeout() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    shop(&p);
    assert_eq!(run(p.dbward(&url).arg("migrate")).0, 0);
    std::fs::write(
        p.path().join("dbward.toml"),
        "[database]\nlock_timeout = \"1s\"\n",
    )
    .unwrap();
    p.migration(
        "V3__add_column.sql",
        "ALTER TABLE users ADD COLUMN name text;\n",
    );

    let mut holder = pg.session("shop");
    writeln!(
        holder.stdin.as_mut().unwrap(),
        "BEGIN; SELECT count(*) FROM users;"
    )
    .unwrap();
    pg.wait_for("shop", "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'users' AND l.mode = 'AccessShareLock'", "1");
    let started = Instant::now();
    let (code, _, err) = run(p.dbward(&url).arg("migrate"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("V3__add_column.sql"), "{err}");
    assert!(
        err.contains("55P03") && err.contains("database.lock_timeout (1s)"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(
        pg.psql("shop", "SELECT count(*) FROM refinery_schema_history"),
        "2"
    );
}

#[test]
fn kill_9_mid_batch_leaves_the_database_as_it_was() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    shop(&p);
    p.migration(
        "V3__slow.sql",
        "CREATE TABLE slow (id int);\nSELECT pg_sleep(600);\n",
    );
    let mut child = p
        .dbward(&url)
        .arg("migrate")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    pg.wait_for("shop", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(600)%' AND pid <> pg_backend_pid()", "1");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'dbward_identity'"
        ),
        "0",
        "nothing committed"
    );
    // dbward's session sets client_connection_check_interval: the server notices the dead
    // client within a second, rolls back and frees the advisory lock.
    pg.wait_for("shop", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(600)%' AND pid <> pg_backend_pid()", "0");
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'dbward_identity'"
        ),
        "0"
    );
    p.migration("V3__slow.sql", "CREATE TABLE slow (id int);\n");
    let (code, _, err) = run(p.dbward(&url).args(["migrate", "--lock-timeout", "30s"]));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn passwords_never_reach_the_output() {
    let pg = Pg::start();
    let p = Project::new();
    shop(&p);
    let url = format!(
        "postgres://postgres:hunter2@127.0.0.1:{}/nope?sslmode=disable",
        pg.port
    );
    let (code, out, err) = run(p.dbward(&url).args(["-v", "migrate", "--json"]));
    assert_eq!(code, 1);
    assert!(err.contains("postgres://postgres:***@127.0.0.1"), "{err}");
    assert!(err.contains("database \"nope\" does not exist"), "{err}");
    assert!(
        !err.contains("hunter2") && !out.contains("hunter2"),
        "{err}{out}"
    );
}

/// A CA and a server certificate for `localhost`, made with the openssl CLI.
fn certificates(dir: &std::path::Path) {
    let sh = format!(
        "set -e; cd {dir}
         openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=dbward-test-ca -keyout ca.key -out ca.crt 2>/dev/null
         openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr 2>/dev/null
         printf 'subjectAltName=DNS:localhost\\nbasicConstraints=CA:FALSE\\n' > ext.cnf
         openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out server.crt 2>/dev/null
         chmod 600 server.key",
        dir = dir.display()
    );
    let ok = std::process::Command::new("sh")
        .arg("-c")
        .arg(sh)
        .status()
        .unwrap_or_else(|e| panic!("openssl: {e}: {}", common::MISSING));
    assert!(ok.success(), "openssl failed: {}", common::MISSING);
}

#[test]
fn tls_require_and_verify_full_against_a_self_signed_server() {
    // TCP connections without TLS are refused, so a success proves TLS was used.
    let hba = "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n";
    let pg = Pg::start_full(
        &[
            "ssl = on",
            "ssl_cert_file = 'server.crt'",
            "ssl_key_file = 'server.key'",
        ],
        Some(hba),
        certificates,
    );
    let ca = pg.data_dir().join("ca.crt");
    let p = Project::new();
    shop(&p);
    // psql over the socket, as TCP needs TLS now.
    let sock = pg.data_dir();
    let ok = std::process::Command::new(pg.bindir.join("psql"))
        .args([
            "-X",
            "-q",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            "CREATE DATABASE shop",
        ])
        .arg("-h")
        .arg(&sock)
        .arg("-p")
        .arg(pg.port.to_string())
        .status()
        .unwrap();
    assert!(ok.success());

    let base = format!("postgres://postgres@localhost:{}/shop", pg.port);
    let (code, _, err) = run(p.dbward(&format!("{base}?sslmode=disable")).arg("status"));
    assert_eq!(code, 1, "plain TCP is rejected by pg_hba: {err}");

    let (code, _, err) = run(p.dbward(&format!("{base}?sslmode=require")).arg("migrate"));
    assert_eq!(code, 0, "{err}");

    let verify = format!("{base}?sslmode=verify-full&sslrootcert={}", ca.display());
    let (code, _, err) = run(p.dbward(&verify).arg("status"));
    assert_eq!(code, 0, "{err}");

    // The certificate is for `localhost`, not 127.0.0.1: verify-full refuses, verify-ca accepts.
    let by_ip = format!(
        "postgres://postgres@127.0.0.1:{}/shop?sslrootcert={}",
        pg.port,
        ca.display()
    );
    let (code, _, err) = run(p
        .dbward(&format!("{by_ip}&sslmode=verify-full"))
        .arg("status"));
    assert_eq!(code, 1);
    assert!(err.contains("certificate"), "{err}");
    let (code, _, err) = run(p
        .dbward(&format!("{by_ip}&sslmode=verify-ca"))
        .arg("status"));
    assert_eq!(code, 0, "{err}");

    // A root that did not sign the server's certificate is refused.
    let other = tempfile::tempdir().unwrap();
    certificates(other.path());
    let wrong = format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        other.path().join("ca.crt").display()
    );
    let (code, _, err) = run(p.dbward(&wrong).arg("status"));
    assert_eq!(code, 1, "{err}");
}

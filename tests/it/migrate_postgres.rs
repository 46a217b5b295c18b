//! What only PostgreSQL has: lock_timeout against another session, passwords, TLS (the migrate
//! scenarios every engine shares are in `migrate.rs`).

use crate::common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{run, Pg, Project};

fn shop(p: &Project) {
    p.migration("V1__users.sql", "CREATE TABLE users (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL);\n")
        .migration(
            "V2__orders.sql",
            "CREATE TABLE orders (id serial PRIMARY KEY, user_id bigint REFERENCES users (id));\n\
             CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n  NEW.id := NEW.id;\n  RETURN NEW;\nEND;\n$$;\n\
             DO $$ BEGIN PERFORM 1; END $$",
        );
}

/// `shop` migrated, with `table_lock_timeout = 1s` (and `config`), a pending V3 that needs an
/// ACCESS EXCLUSIVE lock on `users`, and another session in a transaction that read `users`
/// (returned: it holds its lock until killed).
fn blocked_by_a_reader(pg: &Pg, p: &Project, url: &str, config: &str) -> std::process::Child {
    shop(p);
    assert_eq!(run(p.dbward(url).arg("migrate")).0, 0);
    std::fs::write(
        p.path().join("dbward.toml"),
        format!("[database]\ntable_lock_timeout = \"1s\"\n{config}"),
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
    holder
}

#[test]
fn a_migration_blocked_by_another_sessions_lock_fails_on_lock_timeout() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    // No retry: the first wait that times out fails the deploy.
    let mut holder = blocked_by_a_reader(&pg, &p, &url, "\n[migrate]\nlock_retries = 0\n");
    let started = Instant::now();
    let (code, _, err) = run(p.dbward(&url).arg("migrate"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("V3__add_column.sql"), "{err}");
    assert!(
        err.contains("55P03") && err.contains("database.table_lock_timeout (1s)"),
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

/// With retries (the default), a batch that timed out waiting for a table lock is rolled back
/// and tried again after a pause: once the other session is done, the deploy goes through,
/// and no query of the application queued behind the migration for longer than the timeout.
#[test]
fn a_migration_blocked_by_a_lock_goes_through_once_the_lock_is_gone() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    let mut holder = blocked_by_a_reader(&pg, &p, &url, "");
    let log = p.path().join("migrate.log");
    let mut migrate = p
        .dbward(&url)
        .arg("migrate")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The first try timed out and a retry is waiting: the other session ends.
    wait_said(&log, "trying again in");
    holder.kill().unwrap();
    holder.wait().unwrap();
    let status = migrate.wait().unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{said}");
    assert!(
        said.contains("retry 1 of 4, migrate.lock_retries"),
        "{said}"
    );
    assert_eq!(
        pg.psql("shop", "SELECT count(*) FROM refinery_schema_history"),
        "3"
    );
    assert_eq!(
        pg.psql("shop", "SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'name'"),
        "1"
    );
}

/// dbward's backups and batches keep out of each other's way on one database (the advisory key
/// "dbward" 2: a dump holds it shared, a batch exclusive).
const BACKUP_KEY: i64 = 0x6462_7761_7264_0002;

/// A session holding the backup key as a running dump (`shared`) or batch does.
fn holding(pg: &Pg, shared: bool) -> std::process::Child {
    let mut s = pg.session("shop");
    let f = if shared {
        "pg_advisory_lock_shared"
    } else {
        "pg_advisory_lock"
    };
    writeln!(s.stdin.as_mut().unwrap(), "SELECT {f}({BACKUP_KEY});").unwrap();
    let mode = if shared { "ShareLock" } else { "ExclusiveLock" };
    pg.wait_for(
        "shop",
        &format!("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND mode = '{mode}' AND objid = ({BACKUP_KEY}::int8 & 4294967295)::oid"),
        "1",
    );
    s
}

/// Polls the file `log` until it holds `text`.
pub fn wait_said(log: &std::path::Path, text: &str) {
    let began = Instant::now();
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(text)
    {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "never said {text:?}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_deploy_never_queues_ddl_behind_a_running_backup_and_a_backup_waits_for_a_batch() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    shop(&p);
    assert_eq!(run(p.dbward(&url).arg("migrate")).0, 0);
    p.migration(
        "V3__add_column.sql",
        "ALTER TABLE users ADD COLUMN name text;\n",
    );
    let snapshots = || {
        std::fs::read_dir(p.path().join(".dbward/snapshots/shop"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let before = snapshots();

    // A dump is running: the deploy stops at once (exit 4), before any snapshot, and says why.
    let mut dump = holding(&pg, true);
    let (code, _, err) = run(p.dbward(&url).arg("migrate"));
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("a dbward backup (pid") && err.contains("--wait-for-backup"),
        "{err}"
    );
    assert_eq!(snapshots(), before, "no snapshot was taken");
    assert_eq!(
        pg.psql("shop", "SELECT count(*) FROM refinery_schema_history"),
        "2"
    );

    // --wait-for-backup: it waits, said, and goes on once the dump is done.
    let log = p.path().join("migrate.log");
    let mut migrate = p
        .dbward(&url)
        .args(["migrate", "--wait-for-backup"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_said(&log, "waiting for a dbward backup");
    dump.kill().unwrap();
    dump.wait().unwrap();
    assert!(
        migrate.wait().unwrap().success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert_eq!(
        pg.psql("shop", "SELECT count(*) FROM refinery_schema_history"),
        "3"
    );

    // A batch is running: a backup waits for it, said, then dumps.
    let mut batch = holding(&pg, false);
    let log = p.path().join("backup.log");
    let mut backup = p
        .dbward(&url)
        .arg("backup")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_said(&log, "waiting for the migration batch");
    batch.kill().unwrap();
    batch.wait().unwrap();
    assert!(
        backup.wait().unwrap().success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
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

/// A server's error is kept whole: its SQLSTATE is there to decide on, its words are the cause
/// under what dbward was doing, and the command says them as a `Caused by:` line.
#[test]
fn a_server_error_keeps_its_sqlstate_and_is_said_as_the_cause() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let Ok(dbconn::DatabaseUrl::Postgres(u)) = dbconn::DatabaseUrl::parse(&url) else {
            panic!("a PostgreSQL URL: {url}")
        };
        let db = dbconn::postgres::Postgres::connect(&u).await.unwrap();
        let e = dbconn::postgres::count_rows(db.client(), "public", "no_such_table")
            .await
            .unwrap_err();
        assert_eq!(e.sqlstate().map(|c| c.code()), Some("42P01"), "{e:?}");
        assert_eq!(e.to_string(), "counting the rows of public.no_such_table");
        let cause = std::error::Error::source(&e)
            .expect("the server's words are the cause")
            .to_string();
        assert!(
            cause.contains("42P01") && cause.contains("no_such_table"),
            "{cause}"
        );
    });

    // A history row edited by hand: the command names what it read, then why it failed.
    let p = Project::new();
    shop(&p);
    assert_eq!(run(p.dbward(&url).arg("migrate")).0, 0);
    pg.psql(
        "shop",
        "UPDATE refinery_schema_history SET checksum = 'edited' WHERE version = 1",
    );
    let (code, out, _) = run(p.dbward(&url).args(["status", "--json"]));
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        common::json(&out)["error"],
        "reading refinery_schema_history\nCaused by:\n    version 1 has checksum `edited`, not a number; was the table edited by hand?",
        "{out}"
    );
}

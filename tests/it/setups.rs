//! One end-to-end test per deploy set-up dbward replaces (`../shared/SETUPS.md`), each run the
//! way its recipe in `recipes/` says, with a small real application (`tests/fixtures/app.py`, an
//! HTTP server over the real database) against the real servers the suite starts. The recipe
//! files are used as written; only host paths, ports and endpoints are pointed at the test's.

use crate::common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, json, run, sqlite, Pg, Project, S3};

/// A file of `recipes/` (or, `packaging/...`, of the package the recipes run on), with the
/// paths a real host has replaced by this one's.
fn recipe(path: &str, subs: &[(&str, String)]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = if path.starts_with("packaging/") {
        root.join(path)
    } else {
        root.join("recipes").join(path)
    };
    let mut text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{path}: {e}"));
    for (from, to) in subs {
        assert!(text.contains(from), "{path} has no `{from}`");
        text = text.replace(from, to);
    }
    text
}

/// The command lines of a unit's `key=` lines, as systemd splits them (no variable expanded).
fn unit_commands(unit: &str, key: &str) -> Vec<Vec<String>> {
    common::unit::Unit::new("recipe.service", unit).commands(key)
}

fn fixture_app() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/app.py")
}

/// A command with none of the test runner's dbward settings.
fn clean(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    for (k, _) in std::env::vars() {
        if k.starts_with("DBWARD_")
            || k == "DATABASE_URL"
            || k.starts_with("AWS_")
            || k.starts_with("APP_")
        {
            c.env_remove(k);
        }
    }
    c.stdin(Stdio::null());
    c
}

/// A running process, stopped on drop as a container is: SIGTERM (`dbward run` passes it on
/// to the application and waits for it), SIGKILL only if it is still there 10 s later.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the app exited before it listened"
        );
        assert!(
            Instant::now() < deadline,
            "the app never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP/1.0 request; (status, body).
fn http(method: &str, port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "{method} {path} HTTP/1.0\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn output(c: &mut Command) -> (i32, String, String) {
    run(c)
}

/// Set-ups 2 and 5 (an analytics API, a code forge): a systemd service on PostgreSQL whose
/// unit runs `migrate` before the release and `health --restore-on-failure` after it, with the
/// release's commit in the health answer and a data-contract check. A release whose migration
/// breaks the contract is rolled back (exit 5), and a restart does not apply it again.
#[test]
fn systemd_service_on_postgres_with_a_contract_check() {
    let pg = Pg::start();
    let url = pg.create_db("analytics");
    let s3 = S3::start();
    let p = Project::new();
    let port = free_port();
    let root = p.path().display().to_string();
    let psql = pg.bindir.join("psql").display().to_string();
    // The data contract: the API's consumers read `users.email`.
    let contract = p.path().join("contract-check");
    std::fs::write(
        &contract,
        format!("#!/bin/sh\nexec {psql} \"$DATABASE_URL\" -v ON_ERROR_STOP=1 -qAtc 'SELECT email FROM users LIMIT 1'\n"),
    )
    .unwrap();
    std::fs::set_permissions(
        &contract,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let config = p.path().join("dbward.toml");
    std::fs::write(
        &config,
        recipe(
            "systemd/dbward.toml",
            &[
                ("/var/lib/dbward", format!("{root}/state")),
                ("/opt/app/current/migrations", format!("{root}/migrations")),
                (
                    "/opt/app/current/bin/contract-check",
                    contract.display().to_string(),
                ),
                ("/var/lib/node_exporter/textfile", root.clone()),
                (
                    "http://127.0.0.1:8080/healthz",
                    format!("http://127.0.0.1:{port}/health"),
                ),
            ],
        ),
    )
    .unwrap();
    let unit = recipe(
        "systemd/app.service",
        &[
            ("/usr/bin/dbward", env!("CARGO_BIN_EXE_dbward").to_string()),
            ("/etc/dbward/dbward.toml", config.display().to_string()),
        ],
    );
    // What the unit's EnvironmentFile holds (the store's endpoint is the test server's).
    let environment = |release: &str| {
        let mut c = clean("true");
        s3.configure(&mut c);
        let mut env: Vec<(String, String)> = c
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string())))
            .collect();
        env.push(("DATABASE_URL".into(), url.clone()));
        env.push(("DBWARD_RELEASE".into(), release.into()));
        env
    };
    // One start of the unit, as systemd runs it: ExecStartPre, ExecStart, ExecStartPost.
    let start = |release: &str| -> (i32, String, Option<Running>) {
        for pre in unit_commands(&unit, "ExecStartPre") {
            let mut c = clean(&pre[0]);
            c.args(&pre[1..])
                .envs(environment(release))
                .current_dir(p.path());
            let (code, _, err) = output(&mut c);
            if code != 0 {
                return (code, err, None);
            }
        }
        let mut app = clean("python3");
        app.arg(fixture_app())
            .envs(environment(release))
            .env("APP_PORT", port.to_string())
            .env("APP_PG", &url)
            .env("APP_PSQL", &psql)
            .env("APP_RELEASE", release)
            .env("APP_NEEDS", "SELECT count(*) FROM users");
        let mut child = app.spawn().unwrap();
        wait_port(port, &mut child);
        let app = Running(child);
        for post in unit_commands(&unit, "ExecStartPost") {
            // systemd expands ${VAR} from the environment file.
            let post: Vec<String> = post
                .iter()
                .map(|a| a.replace("${DBWARD_RELEASE}", release))
                .collect();
            let mut c = clean(&post[0]);
            c.args(&post[1..])
                .envs(environment(release))
                .current_dir(p.path());
            let (code, _, err) = output(&mut c);
            if code != 0 {
                return (code, err, Some(app));
            }
        }
        (0, String::new(), Some(app))
    };

    // Release r1: the schema and its first users.
    p.migration(
        "V1__users.sql",
        "CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL);\nINSERT INTO users (email) VALUES ('admin@example.com');\n",
    );
    let (code, err, app) = start("r1");
    assert_eq!(code, 0, "{err}");
    drop(app);
    pg.psql(
        "analytics",
        "INSERT INTO users (email) VALUES ('ann@example.com'), ('bob@example.com')",
    );

    // Release r2 renames the column the contract promises: the app itself is healthy (it only
    // counts users) and reports r2, but the contract check fails: rolled back.
    p.migration(
        "V2__rename.sql",
        "ALTER TABLE users RENAME COLUMN email TO mail;\n",
    );
    let (code, err, app) = start("r2");
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("contract-check") && err.contains("failed"),
        "{err}"
    );
    drop(app);
    assert_eq!(
        pg.psql(
            "analytics",
            "SELECT string_agg(email, ',' ORDER BY id) FROM users"
        ),
        "admin@example.com,ann@example.com,bob@example.com"
    );

    // systemd restarts the unit (Restart=on-failure): ExecStartPre refuses the batch again.
    let (code, err, _) = start("r2");
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("rolled back by the health guard"), "{err}");

    // The deploy log has the release and the restore.
    let mut c = clean(env!("CARGO_BIN_EXE_dbward"));
    c.args(["--config", config.to_str().unwrap(), "deploys", "--json"])
        .envs(environment("r2"))
        .current_dir(p.path());
    let (code, out, _) = output(&mut c);
    assert_eq!(code, 0);
    let log = json(&out);
    let events: Vec<(String, String)> = log["deploys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["event"].as_str().unwrap().to_string(),
                d["release"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    // Newest first: the refused restart, the guard's restore, r2's migrate, r1's.
    assert_eq!(
        events,
        [
            ("migrate", "r2"),
            ("restore", "r2"),
            ("migrate", "r2"),
            ("migrate", "r1")
        ]
        .map(|(e, r)| (e.to_string(), r.to_string())),
        "{log}"
    );
}

/// The entrypoint of `service` in a compose file of the recipes, as docker compose reads it.
fn compose_entrypoint(file: &str, service: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("recipes")
        .join(file);
    let script = format!(
        "import json, yaml\nprint(json.dumps(yaml.safe_load(open('{}'))['services']['{service}']['entrypoint']))\n",
        path.display()
    );
    let out = common::tool(Command::new("python3").arg("-c").arg(script));
    serde_json::from_str(&out).unwrap()
}

/// Waits until `log` (a file a child writes its stderr to) contains `needle`.
fn wait_for_log(log: &Path, needle: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited before `{needle}`:\n{text}"
        );
        assert!(Instant::now() < deadline, "no `{needle}` in:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Set-up 3 (a small-apps platform on compose): `dbward run` is the app container's
/// entrypoint. A release starts healthy; a container rescheduled onto a fresh volume gets its
/// data back before migrations run; a broken release is stopped and rolled back (exit 5).
#[test]
fn compose_app_with_run_as_entrypoint_fresh_volume_and_rollback() {
    let s3 = S3::start();
    let p = Project::new();
    let root = p.path().display().to_string();
    let port = free_port();
    let config = p.path().join("dbward.toml");
    std::fs::write(
        &config,
        recipe(
            "compose/dbward.toml",
            &[
                ("/data/dbward", format!("{root}/data/dbward")),
                ("/app/migrations", format!("{root}/migrations")),
                (
                    "http://127.0.0.1:8080/health",
                    format!("http://127.0.0.1:{port}/health"),
                ),
                // A broken release is given up on sooner than in production (a healthy one
                // still has time to start on a busy machine).
                ("timeout = \"60s\"", "timeout = \"10s\"".to_string()),
            ],
        ),
    )
    .unwrap();
    let data = p.path().join("data");
    let db = data.join("app.db");
    let entrypoint: Vec<String> = compose_entrypoint("compose/compose.yaml", "app")
        .into_iter()
        .map(|a| {
            a.replace("/usr/bin/dbward", env!("CARGO_BIN_EXE_dbward"))
                .replace("/etc/dbward/dbward.toml", config.to_str().unwrap())
        })
        .collect();
    let container = |release: &str, broken: bool| {
        std::fs::create_dir_all(&data).unwrap();
        let log = p.path().join(format!("{release}.log"));
        let mut c = clean(&entrypoint[0]);
        s3.configure(&mut c);
        c.args(&entrypoint[1..])
            .arg("python3")
            .arg(fixture_app())
            .env("DATABASE_URL", format!("sqlite:{}", db.display()))
            .env("DBWARD_RELEASE", release)
            .env("APP_PORT", port.to_string())
            .env("APP_DB", &db)
            .env("APP_RELEASE", release)
            .env("APP_NEEDS", "SELECT count(*) FROM notes")
            .env("APP_QUERY", "SELECT count(*) FROM notes")
            .env(
                "APP_WRITE",
                "INSERT INTO notes (body) VALUES ('written by the app')",
            )
            .current_dir(p.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if broken {
            c.env("APP_BROKEN", "1");
        }
        (Running(c.spawn().unwrap()), log)
    };
    let stop = |mut r: Running| {
        // SIGTERM, as `docker compose stop` sends it; run forwards it to the app.
        unsafe { libc::kill(r.0.id() as i32, libc::SIGTERM) };
        let status = r.0.wait().unwrap();
        std::mem::forget(r);
        status
    };

    // Release 1 on an empty volume: a first deploy.
    p.migration(
        "V1__notes.sql",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);\n",
    );
    let (mut app, log) = container("r1", false);
    wait_for_log(&log, "healthy; waiting on", &mut app.0);
    assert_eq!(http("POST", port, "/write").0, 200);
    assert_eq!(http("POST", port, "/write").0, 200);
    let status = stop(app);
    assert_eq!(
        status.code(),
        Some(143),
        "the app's own exit (SIGTERM), passed on"
    );

    // The nightly backup (the `dbward schedule` service of the same compose project).
    let mut c = clean(env!("CARGO_BIN_EXE_dbward"));
    s3.configure(&mut c);
    c.args(["--config", config.to_str().unwrap(), "backup"])
        .env("DATABASE_URL", format!("sqlite:{}", db.display()))
        .current_dir(p.path());
    let (code, _, err) = output(&mut c);
    assert_eq!(code, 0, "{err}");

    // The container is rescheduled onto a fresh volume: database and state dir are gone.
    std::fs::remove_dir_all(&data).unwrap();
    let (mut app, log) = container("r1", false);
    wait_for_log(&log, "healthy; waiting on", &mut app.0);
    assert_eq!(
        http("GET", port, "/query"),
        (200, "2".to_string()),
        "the data is back"
    );
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("is missing: restoring its newest snapshot"));
    stop(app);

    // Release 2 adds a column, and its app is broken: stopped, rolled back, exit 5.
    p.migration("V2__tags.sql", "ALTER TABLE notes ADD COLUMN tags TEXT;\n");
    let (mut app, log) = container("r2", true);
    let status = app.0.wait().unwrap();
    std::mem::forget(app);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(5), "{text}");
    assert_eq!(
        sqlite(&db, "SELECT max(version) FROM refinery_schema_history"),
        "1"
    );
    assert_eq!(sqlite(&db, "SELECT count(*) FROM notes"), "2");
    // compose restarts it (restart: unless-stopped): the same batch is refused before it runs.
    let (mut app, log) = container("r2", true);
    let status = app.0.wait().unwrap();
    std::mem::forget(app);
    assert_eq!(
        status.code(),
        Some(3),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
}

/// Set-up 4 (a blue-green SQLite app): two slots share one SQLite file; every pre-deploy
/// snapshot goes to the primary store (R2 there, the S3 test server here) and a local mirror,
/// keeping the last 3 in each. While the new slot is checked the old one keeps serving and
/// writing: an additive batch is not rolled back (the old slot's writes stay); a destructive
/// one is, from the mirror when the primary's copy is gone.
#[test]
fn blue_green_sqlite_with_a_primary_store_and_a_local_mirror_keeping_3() {
    let s3 = S3::start();
    let p = Project::new();
    let root = p.path().display().to_string();
    let (blue_port, green_port) = (free_port(), free_port());
    let config = p.path().join("dbward.toml");
    std::fs::write(
        &config,
        recipe(
            "blue-green/dbward.toml",
            &[
                ("/data/dbward", format!("{root}/data/dbward")),
                ("/app/migrations", format!("{root}/migrations")),
                ("file:///backups/app", format!("file://{root}/backups/app")),
                ("timeout = \"60s\"", "timeout = \"10s\"".to_string()),
            ],
        ),
    )
    .unwrap();
    let db = p.path().join("data/app.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let slot = |name: &str, port: u16, release: &str, broken: bool| {
        let recipe_port = if name == "blue" { "8001" } else { "8002" };
        let entrypoint: Vec<String> = compose_entrypoint("blue-green/compose.yaml", name)
            .into_iter()
            .map(|a| {
                a.replace("/usr/bin/dbward", env!("CARGO_BIN_EXE_dbward"))
                    .replace("/etc/dbward/dbward.toml", config.to_str().unwrap())
                    .replace(recipe_port, &port.to_string())
            })
            .collect();
        let log = p.path().join(format!("{name}-{release}.log"));
        let mut c = clean(&entrypoint[0]);
        s3.configure(&mut c);
        c.args(&entrypoint[1..])
            .arg("python3")
            .arg(fixture_app())
            .env("DATABASE_URL", format!("sqlite:{}", db.display()))
            .env("APP_PORT", port.to_string())
            .env("APP_DB", &db)
            .env("APP_RELEASE", release)
            .env("APP_NEEDS", "SELECT count(*) FROM orders")
            .env("APP_QUERY", "SELECT count(*) FROM orders")
            .env("APP_WRITE", "INSERT INTO orders (total) VALUES (42)")
            .current_dir(p.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if broken {
            c.env("APP_BROKEN", "1");
        }
        (Running(c.spawn().unwrap()), log)
    };
    let finished = |mut r: Running, log: &Path| -> (Option<i32>, String) {
        let status = r.0.wait().unwrap();
        std::mem::forget(r);
        (status.code(), std::fs::read_to_string(log).unwrap())
    };
    let mirror = p.path().join("backups/app/app");
    let primary = s3.dir.path().join(&s3.bucket).join("backups/app");
    let manifests = |dir: &Path| {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        n.ends_with(".json") && n.contains("-pre-deploy-")
                    })
                    .count()
            })
            .unwrap_or(0)
    };

    // Blue runs release 1 and takes orders.
    p.migration(
        "V1__orders.sql",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER NOT NULL);\n",
    );
    let (mut blue, blue_log) = slot("blue", blue_port, "r1", false);
    wait_for_log(&blue_log, "healthy; waiting on", &mut blue.0);
    for _ in 0..3 {
        assert_eq!(http("POST", blue_port, "/write").0, 200);
    }

    // Green deploys release 2, an additive batch, and its app is broken. Blue keeps writing
    // while green is checked.
    p.migration(
        "V2__coupon.sql",
        "ALTER TABLE orders ADD COLUMN coupon TEXT;\n",
    );
    let (mut green, green_log) = slot("green", green_port, "r2", true);
    wait_for_log(&green_log, "checking health", &mut green.0);
    for _ in 0..2 {
        assert_eq!(http("POST", blue_port, "/write").0, 200);
    }
    let (code, text) = finished(green, &green_log);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("purely additive"), "{text}");
    assert!(
        text.contains("would discard 2 write(s)"),
        "blue's writes are counted: {text}"
    );
    assert_eq!(
        http("GET", blue_port, "/query"),
        (200, "5".to_string()),
        "blue kept every order"
    );
    assert_eq!(
        http("POST", blue_port, "/write").0,
        200,
        "and still serves on this schema"
    );

    // The fixed release 2 passes; then releases 3 to 5, each with its pre-deploy snapshot.
    let (mut green, green_log) = slot("green", green_port, "r2-fixed", false);
    wait_for_log(&green_log, "healthy; waiting on", &mut green.0);
    drop(green);
    for v in 3..=5 {
        p.migration(
            &format!("V{v}__index_{v}.sql"),
            &format!("CREATE INDEX orders_{v} ON orders (total, id);\n"),
        );
        let (mut green, green_log) = slot("green", green_port, &format!("r{v}"), false);
        wait_for_log(&green_log, "healthy; waiting on", &mut green.0);
        drop(green);
    }
    assert_eq!(manifests(&primary), 3, "keep_last = 3 in the primary");
    assert_eq!(manifests(&mirror), 3, "and in the mirror");

    // Release 6 drops a column (destructive) and is broken; the primary lost its copy of the
    // pre-deploy snapshot: the guard restores the mirror's.
    p.migration(
        "V6__drop_coupon.sql",
        "ALTER TABLE orders DROP COLUMN coupon;\n",
    );
    let (mut green, green_log) = slot("green", green_port, "r6", true);
    wait_for_log(&green_log, "checking health", &mut green.0);
    let deploy: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            common::state_file(&p.path().join("data/dbward"), "last-deploy", "app").unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let id = deploy["pre_deploy_snapshot"].as_str().unwrap().to_string();
    std::fs::remove_file(primary.join(format!("{id}.sqlite.zst"))).unwrap();
    let (code, text) = finished(green, &green_log);
    assert_eq!(code, Some(5), "{text}");
    assert!(text.contains("not purely additive"), "{text}");
    assert!(text.contains("mirror 1"), "says which copy it used: {text}");
    assert_eq!(
        sqlite(&db, "SELECT max(version) FROM refinery_schema_history"),
        "5"
    );
    assert_eq!(
        sqlite(
            &db,
            "SELECT count(*) FROM pragma_table_info('orders') WHERE name = 'coupon'"
        ),
        "1"
    );
    assert_eq!(
        http("GET", blue_port, "/query"),
        (200, "6".to_string()),
        "blue reads the restored file"
    );
    drop(blue);
}

/// Set-up 1 (a metrics dashboard on compose): the metric definitions are a repeatable
/// migration re-applied when it changes, and the derived data is recomputed by after-migrate
/// hooks (the jobs the deploy script ran by hand). A hook that fails breaks the deploy, and the
/// guard rolls it back.
#[test]
fn metrics_dashboard_with_repeatable_metric_sql_and_refresh_hooks() {
    let pg = Pg::start();
    let url = pg.create_db("marts");
    let s3 = S3::start();
    let p = Project::new();
    let root = p.path().display().to_string();
    let port = free_port();
    let compute = p.path().join("compute-latest-metrics");
    std::fs::write(
        &compute,
        "#!/bin/sh\n# Recomputes the latest metric values from the metric functions.\n\
         test ! -e \"$(dirname \"$0\")/fail\" || { echo 'benchmark source unreachable' >&2; exit 1; }\n\
         exec psql \"$DBWARD_DATABASE_URL\" -v ON_ERROR_STOP=1 -qc \"DELETE FROM latest_metrics; INSERT INTO latest_metrics SELECT 'revenue', metric_revenue()\"\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &compute,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let config = p.path().join("dbward.toml");
    std::fs::write(
        &config,
        recipe(
            "metrics/dbward.toml",
            &[
                ("/var/lib/dbward", format!("{root}/state")),
                ("/app/migrations", format!("{root}/migrations")),
                (
                    "/app/bin/compute-latest-metrics",
                    compute.display().to_string(),
                ),
                (
                    "http://127.0.0.1:8000/health",
                    format!("http://127.0.0.1:{port}/health"),
                ),
            ],
        ) + "timeout = \"10s\"\n",
    )
    .unwrap();
    let path = format!("{}:/usr/bin:/bin", pg.bindir.display());
    let deploy = || {
        let log = p.path().join("api.log");
        let mut c = clean(env!("CARGO_BIN_EXE_dbward"));
        s3.configure(&mut c);
        c.args(["--config", config.to_str().unwrap(), "run", "--", "python3"])
            .arg(fixture_app())
            .env("PATH", &path)
            .env("DATABASE_URL", &url)
            .env("APP_PORT", port.to_string())
            .env("APP_PG", &url)
            .env("APP_PSQL", pg.bindir.join("psql"))
            .env("APP_NEEDS", "SELECT count(*) FROM latest_metrics")
            .env(
                "APP_QUERY",
                "SELECT value FROM latest_metrics WHERE name = 'revenue'",
            )
            .current_dir(p.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        (Running(c.spawn().unwrap()), log)
    };
    p.migration(
        "V1__marts.sql",
        "CREATE TABLE events (id serial PRIMARY KEY, day date NOT NULL, amount int NOT NULL);\n\
         INSERT INTO events (day, amount) VALUES ('2026-11-01', 10), ('2026-11-01', 20), ('2026-11-02', 30);\n\
         CREATE MATERIALIZED VIEW daily_totals AS SELECT day, sum(amount) AS total FROM events GROUP BY day;\n\
         CREATE TABLE latest_metrics (name text PRIMARY KEY, value bigint NOT NULL);\n",
    )
    .migration(
        "R__metrics.sql",
        "CREATE OR REPLACE FUNCTION metric_revenue() RETURNS bigint LANGUAGE sql STABLE AS $$ SELECT sum(amount) FROM events $$;\n",
    );
    let (mut api, log) = deploy();
    wait_for_log(&log, "healthy; waiting on", &mut api.0);
    assert_eq!(http("GET", port, "/query"), (200, "60".to_string()));
    drop(api);

    // New events arrive; the revenue metric is redefined (in cents): only the repeatable file
    // is applied, and the hooks refresh the view and recompute the metric.
    pg.psql(
        "marts",
        "INSERT INTO events (day, amount) VALUES ('2026-11-03', 40)",
    );
    p.migration(
        "R__metrics.sql",
        "CREATE OR REPLACE FUNCTION metric_revenue() RETURNS bigint LANGUAGE sql STABLE AS $$ SELECT sum(amount) * 100 FROM events $$;\n",
    );
    let (mut api, log) = deploy();
    wait_for_log(&log, "healthy; waiting on", &mut api.0);
    assert_eq!(http("GET", port, "/query"), (200, "10000".to_string()));
    assert_eq!(
        pg.psql("marts", "SELECT count(*) FROM daily_totals"),
        "3",
        "the view was refreshed"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("R__metrics.sql") && !text.contains("V1__marts.sql"),
        "{text}"
    );
    drop(api);

    // The next definition's refresh job fails: the deploy is broken and rolled back (exit 5).
    std::fs::write(p.path().join("fail"), "").unwrap();
    p.migration(
        "R__metrics.sql",
        "CREATE OR REPLACE FUNCTION metric_revenue() RETURNS bigint LANGUAGE sql STABLE AS $$ SELECT sum(amount) * 1000 FROM events $$;\n",
    );
    let (mut api, log) = deploy();
    let status = api.0.wait().unwrap();
    std::mem::forget(api);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(5), "{text}");
    assert!(
        text.contains("benchmark source unreachable"),
        "the hook's output is in the log: {text}"
    );
    assert_eq!(
        pg.psql("marts", "SELECT metric_revenue()"),
        "10000",
        "the definition before it"
    );
}

/// Set-up 5 (a self-hosted code forge under systemd): before a major schema change, a backup
/// confirmed in the store; after it, the weekly drill timer's unit proves the post-deploy backup
/// restores, and leaves metrics for Grafana.
#[test]
fn staging_drill_after_a_major_schema_change() {
    let pg = Pg::start();
    let url = pg.create_db("forge");
    let s3 = S3::start();
    let p = Project::new();
    let root = p.path().display().to_string();
    let config = p.path().join("dbward.toml");
    std::fs::write(
        &config,
        recipe(
            "systemd/dbward.toml",
            &[
                ("/var/lib/dbward", format!("{root}/state")),
                ("/opt/app/current/migrations", format!("{root}/migrations")),
                ("/var/lib/node_exporter/textfile", root.clone()),
            ],
        ),
    )
    .unwrap();
    let unit_exec = |unit: &str| -> (i32, String, String) {
        let text = recipe(
            unit,
            &[
                ("/usr/bin/dbward", env!("CARGO_BIN_EXE_dbward").to_string()),
                ("/etc/dbward/dbward.toml", config.display().to_string()),
            ],
        );
        let argv = &unit_commands(&text, "ExecStart")[0];
        let mut c = clean(&argv[0]);
        s3.configure(&mut c);
        c.args(&argv[1..])
            .env("DATABASE_URL", &url)
            .current_dir(p.path());
        output(&mut c)
    };
    let migrate = || {
        let mut c = clean(env!("CARGO_BIN_EXE_dbward"));
        s3.configure(&mut c);
        c.args(["--config", config.to_str().unwrap(), "migrate"])
            .env("DATABASE_URL", &url)
            .current_dir(p.path());
        output(&mut c)
    };
    p.migration(
        "V1__repos.sql",
        "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL);\n\
         CREATE TABLE repos (id serial PRIMARY KEY, owner text NOT NULL, name text NOT NULL);\n",
    );
    assert_eq!(migrate().0, 0);
    pg.psql(
        "forge",
        "INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, 50) g; \
         INSERT INTO repos (owner, name) SELECT 'u' || (g % 50 + 1), 'r' || g FROM generate_series(1, 200) g",
    );
    // The major change: repos point at users by id; the owner name column goes.
    p.migration(
        "V2__repo_owner_id.sql",
        "ALTER TABLE repos ADD COLUMN owner_id int REFERENCES users (id);\n\
         UPDATE repos r SET owner_id = u.id FROM users u WHERE u.name = r.owner;\n\
         ALTER TABLE repos ALTER COLUMN owner_id SET NOT NULL;\n\
         ALTER TABLE repos DROP COLUMN owner;\n",
    );
    let (code, _, err) = migrate();
    assert_eq!(code, 0, "{err}");
    // The nightly backup unit, then the weekly drill unit.
    let (code, _, err) = unit_exec("packaging/deb/dbward-backup.service");
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = unit_exec("packaging/deb/dbward-drill.service");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("V2"),
        "the drill restored the post-change head: {out}"
    );
    let metrics = std::fs::read_to_string(p.path().join("dbward.prom")).unwrap();
    assert!(
        metrics.contains("dbward_drill_success{database=\"forge\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("dbward_drill_rto_seconds"), "{metrics}");
    // node_exporter runs as a user of its own: the textfile is readable by others.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(p.path().join("dbward.prom"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o644);
    assert_eq!(
        pg.psql(
            "forge",
            "SELECT count(*) FROM repos WHERE owner_id IS NOT NULL"
        ),
        "200"
    );
}

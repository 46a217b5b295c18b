//! Nothing dbward writes holds a secret. Every command runs with distinctive secrets in every
//! place they come from (the database password in the URL, the store's keys, the age identity
//! and passphrase, a notification URL's token), on success and failure paths; then stdout,
//! stderr, the state dir, the store's objects, reports and metrics are searched for them. Jobs
//! dbward starts (hooks, checks) never see the store's keys or the snapshot keys.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{run, tool, Http, Pg, Project, S3, S3_SECRET_KEY};

const DB_PASSWORD: &str = "Pw-7f3a-never-shown";
const PASSPHRASE: &str = "passphrase-2b9d-never-shown";
const NOTIFY_TOKEN: &str = "token-c41e-never-shown";

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn no_secret_reaches_anything_dbward_writes() {
    let pg = Pg::start();
    pg.psql(
        "postgres",
        &format!("ALTER USER postgres PASSWORD '{DB_PASSWORD}'"),
    );
    pg.create_db("shop");
    let url = format!(
        "postgres://postgres:{DB_PASSWORD}@127.0.0.1:{}/shop?sslmode=disable",
        pg.port
    );
    let s3 = S3::start();
    let p = Project::new();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("key.txt");
    tool(Command::new("age-keygen").arg("-o").arg(&key));
    let public = tool(Command::new("age-keygen").arg("-y").arg(&key));
    let identity = std::fs::read_to_string(&key)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();
    let hook_env = p.path().join("hook-env.txt");
    let check_env = p.path().join("check-env.txt");
    std::fs::write(
        p.path().join("dbward.toml"),
        format!(
            "[encryption]\nrecipients = [\"{public}\"]\n\
             [notify]\nurl = \"http://127.0.0.1:9/hooks/{NOTIFY_TOKEN}\"\n\
             [schedule]\nbackup = \"30 3 * * *\"\n\
             [schedule.ping]\nbackup = \"http://127.0.0.1:9/ping/{NOTIFY_TOKEN}\"\n\
             [hooks]\nafter_migrate = [\"env > {}\"]\n\
             [health]\nchecks = [\"env > {}\"]\n\
             [drill]\nmetrics = \"{}/drill.prom\"\n",
            hook_env.display(),
            check_env.display(),
            p.path().display()
        ),
    )
    .unwrap();
    let healthy = Http::status(200);
    let unhealthy = Http::status(503);
    let outputs = std::cell::RefCell::new(String::new());
    let dbward = |args: &[&str]| -> i32 {
        let mut c = p.dbward(&url);
        s3.configure(&mut c);
        c.env("DATABASE_URL", &url)
            .env("DBWARD_AGE_IDENTITY_FILE", &key)
            .env("DBWARD_AGE_PASSPHRASE", PASSPHRASE)
            .args(args);
        let (code, out, err) = run(&mut c);
        outputs
            .borrow_mut()
            .push_str(&format!("$ dbward {}\n{out}{err}", args.join(" ")));
        code
    };

    p.migration(
        "V1__items.sql",
        "CREATE TABLE items (id int PRIMARY KEY, name text);\n",
    );
    assert_eq!(dbward(&["migrate"]), 0);
    pg.psql("shop", "INSERT INTO items VALUES (1, 'one')");
    p.migration("V2__more.sql", "ALTER TABLE items ADD COLUMN note text;\n");
    // Success paths, with --json and without.
    assert_eq!(
        dbward(&["migrate", "--json", "--reason", "secrets test"]),
        0
    );
    assert_eq!(dbward(&["status"]), 0);
    assert_eq!(dbward(&["status", "--json"]), 0);
    assert_eq!(dbward(&["backup", "--json"]), 0);
    assert_eq!(dbward(&["snapshots", "--json"]), 0);
    assert_eq!(dbward(&["snapshots"]), 0);
    let report = p.path().join("drill-report.json");
    assert_eq!(
        dbward(&[
            "restore-drill",
            "latest",
            "--report",
            report.to_str().unwrap()
        ]),
        0
    );
    assert_eq!(dbward(&["health", "--url", &healthy.url(), "--json"]), 0);
    assert_eq!(dbward(&["deploys", "--json"]), 0);
    assert_eq!(dbward(&["schedule", "--list"]), 0);
    // Failure paths: a failing migration, an unhealthy deploy restored by the guard, a restore
    // the store cannot serve, a backup the store refuses, a dry run that finds drift.
    p.migration("V3__broken.sql", "INSERT INTO no_such_table VALUES (1);\n");
    assert_eq!(dbward(&["migrate", "--json"]), 1);
    p.remove("V3__broken.sql");
    p.migration("V3__fine.sql", "CREATE INDEX items_name ON items (name);\n");
    assert_eq!(dbward(&["migrate"]), 0);
    assert_eq!(
        dbward(&[
            "health",
            "--restore-on-failure",
            "--timeout",
            "1s",
            "--url",
            &unhealthy.url()
        ]),
        5
    );
    assert_eq!(
        dbward(&["restore", "20261122T093000Z-manual-3f2a", "--yes"]),
        1
    );
    assert_ne!(
        dbward(&["restore-drill", "--json", "20261122T093000Z-manual-3f2a"]),
        0
    );
    let mut c = p.dbward(&url);
    s3.configure(&mut c);
    c.env("AWS_SECRET_ACCESS_KEY", "wrong-but-also-secret-5e6f")
        .args(["backup"]);
    let (code, out, err) = run(&mut c);
    assert_ne!(code, 0);
    outputs.borrow_mut().push_str(&format!("{out}{err}"));
    assert!(!format!("{out}{err}").contains("wrong-but-also-secret-5e6f"));

    // Everything written: outputs, the project dir (state, reports, metrics), the store.
    let mut written = vec![outputs.borrow().clone()];
    let mut all = Vec::new();
    files(p.path(), &mut all);
    files(s3.dir.path(), &mut all);
    for f in &all {
        let name = f.to_string_lossy();
        if name.ends_with("hook-env.txt")
            || name.ends_with("check-env.txt")
            || name.ends_with("dbward.toml")
        {
            continue; // the jobs' own dumps (checked below) and the config given to dbward
        }
        if let Ok(bytes) = std::fs::read(f) {
            written.push(String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    assert!(
        all.iter().any(|f| f.to_string_lossy().contains("deploys")),
        "the deploy log was searched"
    );
    assert!(report.exists() && p.path().join("drill.prom").exists());
    for secret in [
        DB_PASSWORD,
        S3_SECRET_KEY,
        &identity,
        PASSPHRASE,
        NOTIFY_TOKEN,
    ] {
        for (i, text) in written.iter().enumerate() {
            assert!(
                !text.contains(secret),
                "`{secret}` found in {}",
                if i == 0 {
                    "the commands' output".to_string()
                } else {
                    all.get(i - 1)
                        .map(|f| f.display().to_string())
                        .unwrap_or_default()
                }
            );
        }
    }
    // The jobs dbward started: never the store's keys or the snapshot keys.
    for dump in [&hook_env, &check_env] {
        let env = std::fs::read_to_string(dump).unwrap();
        for secret in [S3_SECRET_KEY, PASSPHRASE, key.to_str().unwrap()] {
            assert!(
                !env.contains(secret),
                "`{secret}` in the environment of a job: {}",
                dump.display()
            );
        }
        assert!(
            env.contains("DBWARD_DATABASE_URL="),
            "what the job needs, it has"
        );
    }
}

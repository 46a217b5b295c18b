//! Regression tests for trust, round 3: each reproduces one way dbward misbehaved under an
//! adversarial look (a guard that disabled itself, a snapshot `restore pre-deploy` could no
//! longer find, records of two databases mixed in one state dir, a deploy log blind to other
//! hosts, ...) and asserts that it no longer does. Real SQLite files, real PostgreSQL clusters,
//! real child processes, the real binary.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{json, run, sqlite, state_file, tool, Http, Project};

/// V1 with two notes; then a deploy of V2 (drops a column). Returns the pre-deploy snapshot.
fn deployed(p: &Project, db: &str) -> String {
    p.migration(
        "V1__notes.sql",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, author TEXT);\n",
    );
    assert_eq!(run(p.dbward(db).arg("migrate")).0, 0);
    sqlite(
        &p.path().join(db.trim_start_matches("sqlite:")),
        "INSERT INTO notes (body, author) VALUES ('one', 'ann'), ('two', 'bob');",
    );
    p.migration(
        "V2__drop_author.sql",
        "ALTER TABLE notes DROP COLUMN author;\n",
    );
    let (code, out, err) = run(p.dbward(db).args(["migrate", "--json"]));
    assert_eq!(code, 0, "{err}");
    json(&out)["snapshot"].as_str().unwrap().to_string()
}

fn head(db: &Path) -> String {
    sqlite(db, "SELECT max(version) FROM refinery_schema_history")
}

fn guard(c: &mut Command, url: &str) -> (i32, String, String) {
    run(c.args([
        "health",
        "--restore-on-failure",
        "--timeout",
        "1s",
        "--interval",
        "200ms",
        "--url",
        url,
    ]))
}

/// A key pair made by the real `age-keygen`: (identity file, public key).
fn keygen(dir: &Path) -> (PathBuf, String) {
    let path = dir.join("key.txt");
    tool(Command::new("age-keygen").arg("-o").arg(&path));
    let public = tool(Command::new("age-keygen").arg("-y").arg(&path));
    (path, public)
}

/// Defect 4: a guard whose restore failed (the age identity missing on the host) recorded the
/// batch as rolled back anyway; the restarted unit's `migrate` then found nothing pending and
/// recorded an empty deploy, and from then on the guard said "the last deploy applied no
/// migrations" and never restored. Now the record says the undo failed, `migrate` refuses
/// (exit 3) without recording anything, and the next guard retries the undo at once.
#[test]
fn r04_a_guard_whose_undo_failed_never_disables_itself_and_the_next_guard_retries() {
    let p = Project::new();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path());
    std::fs::write(
        p.path().join("dbward.toml"),
        format!("[encryption]\nrecipients = [{public:?}]\n"),
    )
    .unwrap();
    let snapshot = deployed(&p, "sqlite:app.db");
    let db = p.path().join("app.db");
    let server = Http::status(503);

    // The identity is not on this host: the undo cannot open the snapshot.
    let (code, _, err) = guard(&mut p.dbward("sqlite:app.db"), &server.url());
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("Undoing the deploy failed") && err.contains("still applied"),
        "{err}"
    );
    assert_eq!(head(&db), "2", "nothing was changed");
    let record = state_file(&p.path().join(".dbward"), "failed-batch", "app").unwrap();
    let record = json(&std::fs::read_to_string(record).unwrap());
    assert!(record["undo_failed"].is_string(), "{record}");
    assert_eq!(record["snapshot"], snapshot.as_str());

    // The unit restarts: `migrate` finds nothing pending, and refuses instead of recording a
    // deploy that would hide this one from the guard.
    let deploy_before =
        std::fs::read(state_file(&p.path().join(".dbward"), "last-deploy", "app").unwrap())
            .unwrap();
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("could not undo it") && err.contains("health --restore-on-failure"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(state_file(&p.path().join(".dbward"), "last-deploy", "app").unwrap())
            .unwrap(),
        deploy_before,
        "the last deploy is still the broken one"
    );
    let (_, out, _) = run(p.dbward("sqlite:app.db").args(["deploys", "--json"]));
    let log = json(&out)["deploys"].as_array().unwrap().clone();
    assert!(
        log.iter()
            .any(|e| e["event"] == "guard"
                && e["outcome"].as_str().unwrap().starts_with("undo failed")),
        "{out}"
    );

    // The key is installed: the next guard retries the undo at once (the app is not even
    // asked), and restores.
    let healthy = Http::status(200);
    let (code, _, err) = guard(
        p.dbward("sqlite:app.db")
            .env("DBWARD_AGE_IDENTITY_FILE", &key),
        &healthy.url(),
    );
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("retrying the undo"), "{err}");
    assert_eq!(head(&db), "1");
    let record = state_file(&p.path().join(".dbward"), "failed-batch", "app").unwrap();
    assert!(json(&std::fs::read_to_string(record).unwrap())["undo_failed"].is_null());
    // Now it is a rolled-back batch like any other.
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("rolled back by the health guard"), "{err}");
}

/// Defect 4, the other way out: the operator keeps the batch (`--retry-failed`), and a batch
/// undone by hand (`restore pre-deploy`) counts as rolled back.
#[test]
fn r04_an_unfinished_undo_is_accepted_with_retry_failed_or_settled_by_a_restore_by_hand() {
    for way in ["retry", "by hand"] {
        let p = Project::new();
        let keys = tempfile::tempdir().unwrap();
        let (key, public) = keygen(keys.path());
        std::fs::write(
            p.path().join("dbward.toml"),
            format!("[encryption]\nrecipients = [{public:?}]\n"),
        )
        .unwrap();
        deployed(&p, "sqlite:app.db");
        let db = p.path().join("app.db");
        let server = Http::status(503);
        assert_eq!(guard(&mut p.dbward("sqlite:app.db"), &server.url()).0, 3);
        if way == "retry" {
            let (code, _, err) = run(p
                .dbward("sqlite:app.db")
                .args(["migrate", "--retry-failed"]));
            assert_eq!(code, 0, "{err}");
            assert_eq!(head(&db), "2", "kept");
            assert!(state_file(&p.path().join(".dbward"), "failed-batch", "app").is_none());
            assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
        } else {
            let (code, _, err) = run(p
                .dbward("sqlite:app.db")
                .env("DBWARD_AGE_IDENTITY_FILE", &key)
                .args(["restore", "pre-deploy", "--yes"]));
            assert_eq!(code, 0, "{err}");
            assert_eq!(head(&db), "1");
            let (code, _, err) = run(p.dbward("sqlite:app.db").arg("migrate"));
            assert_eq!(code, 3, "{err}");
            assert!(err.contains("rolled back by the health guard"), "{err}");
        }
    }
}

/// Defect 5: `restore pre-deploy` resolved from the last `migrate`, so any no-op `migrate`
/// after a deploy (the guard's own advice is to restart) made it refuse. Now it is the newest
/// deploy that changed the database and took a snapshot, from the deploy log, on any host.
#[test]
fn r05_restore_pre_deploy_finds_the_deploys_snapshot_after_a_no_op_migrate_and_on_a_new_host() {
    let p = Project::new();
    let snapshot = deployed(&p, "sqlite:app.db");
    let db = p.path().join("app.db");
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    let (code, out, err) =
        run(p
            .dbward("sqlite:app.db")
            .args(["restore", "pre-deploy", "--yes", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["snapshot"], snapshot.as_str());
    assert_eq!(head(&db), "1");

    // Another host (a state dir of its own, the same store): the store's log knows.
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    let (code, out, err) = run(p.dbward("sqlite:app.db").args([
        "--state-dir",
        "other-host",
        "restore",
        "pre-deploy",
        "--yes",
        "--json",
    ]));
    assert_eq!(code, 0, "{err}");
    assert_ne!(
        json(&out)["snapshot"],
        snapshot.as_str(),
        "the newer deploy's"
    );

    // A newer deploy that took no snapshot is not skipped for an older one that did (that
    // would undo more than the last deploy): refused, naming it.
    p.migration("V3__c.sql", "CREATE TABLE c (id INTEGER);\n");
    assert_eq!(
        run(p.dbward("sqlite:app.db").args(["migrate", "--no-snapshot"])).0,
        0
    );
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["restore", "pre-deploy", "--yes"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("took no pre-deploy snapshot") && err.contains("V3"),
        "{err}"
    );
    assert_eq!(head(&db), "3", "nothing restored");
}

/// Defect 8: state was keyed by the database's file name, so two apps' `app.db` sharing one
/// state dir read each other's last deploy (the guard looked for the other app's snapshot) and
/// each restore trimmed the other's replaced copies. Now each database's records are its own
/// (by its identity), and records of the older naming move over only when they prove to be
/// this database's.
#[test]
fn r08_two_databases_of_the_same_name_sharing_a_state_dir_keep_their_own_records() {
    let p = Project::new();
    for app in ["one", "two"] {
        std::fs::create_dir(p.path().join(app)).unwrap();
    }
    let shared = p.path().join("shared-state");
    let cmd = |app: &str| {
        let mut c = p.dbward(&format!("sqlite:{app}/app.db"));
        c.arg("--state-dir").arg(&shared);
        c.arg("--store").arg(format!("file://./{app}-store"));
        c
    };
    p.migration(
        "V1__notes.sql",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);\n",
    );
    for app in ["one", "two"] {
        assert_eq!(run(cmd(app).arg("migrate")).0, 0);
        sqlite(
            &p.path().join(format!("{app}/app.db")),
            &format!("INSERT INTO notes (body) VALUES ('{app}')"),
        );
    }
    p.migration("V2__more.sql", "ALTER TABLE notes ADD COLUMN extra TEXT;\n");
    let (_, out, _) = run(cmd("one").args(["migrate", "--json"]));
    let one_snapshot = json(&out)["snapshot"].as_str().unwrap().to_string();
    // `two` deploys after `one`: its record must not become `one`'s.
    assert_eq!(run(cmd("two").arg("migrate")).0, 0);
    let server = Http::status(503);
    let (code, out, err) = guard(cmd("one").arg("--json"), &server.url());
    assert_eq!(code, 5, "{err}");
    assert_eq!(json(&out)["restored"]["snapshot"], one_snapshot.as_str());
    assert_eq!(head(&p.path().join("one/app.db")), "1");
    assert_eq!(head(&p.path().join("two/app.db")), "2", "untouched");

    // Replaced copies: each restore trims only its own database's.
    std::fs::write(
        p.path().join("dbward.toml"),
        "[restore]\nkeep_replaced = 1\n",
    )
    .unwrap();
    for app in ["two", "one", "one"] {
        let (code, _, err) = run(cmd(app).args(["restore", "latest", "--yes"]));
        assert_eq!(code, 0, "{app}: {err}");
    }
    let replaced = |app: &str| {
        std::fs::read_dir(p.path().join(app))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".replaced-"))
            .count()
    };
    assert_eq!(
        replaced("one"),
        1,
        "one's oldest copies trimmed to keep_replaced"
    );
    assert!(replaced("two") >= 1, "two's copy is not one's to remove");
}

/// Defect 8, upgrading: the records of a database written under the older naming (by name
/// alone) move to its identity's names on first use when their head is in its history, and
/// stay where they are when they are another database's.
#[test]
fn r08_records_of_the_older_naming_move_over_only_when_they_are_this_databases() {
    let p = Project::new();
    let snapshot = deployed(&p, "sqlite:app.db");
    let state = p.path().join(".dbward");
    let keyed = state_file(&state, "last-deploy", "app").unwrap();
    let legacy = state.join("last-deploy-app.json");
    std::fs::rename(&keyed, &legacy).unwrap();
    let server = Http::status(503);
    let (code, out, err) = guard(p.dbward("sqlite:app.db").arg("--json"), &server.url());
    assert_eq!(code, 5, "{err}");
    assert_eq!(json(&out)["restored"]["snapshot"], snapshot.as_str());
    assert!(!legacy.exists(), "moved over");

    // Another database's record of the same name (its head is not in this history) stays.
    let q = Project::new();
    deployed(&q, "sqlite:app.db");
    let foreign = std::fs::read_to_string(state_file(&state, "last-deploy", "app").unwrap())
        .unwrap()
        .replace("\"checksum\": \"", "\"checksum\": \"9");
    let q_state = q.path().join(".dbward");
    std::fs::remove_file(state_file(&q_state, "last-deploy", "app").unwrap()).unwrap();
    std::fs::write(q_state.join("last-deploy-app.json"), &foreign).unwrap();
    let (code, _, err) = guard(&mut q.dbward("sqlite:app.db"), &server.url());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no deploy of"), "{err}");
    assert_eq!(
        std::fs::read_to_string(q_state.join("last-deploy-app.json")).unwrap(),
        foreign,
        "left as it is"
    );
}

/// Defect 9: `deploys` showed the store's entries only when the local log was empty, so in an
/// incident host A could not see who applied V3 from host B.
#[test]
fn r09_deploys_shows_every_hosts_entries() {
    let p = Project::new();
    deployed(&p, "sqlite:app.db");
    p.migration("V3__body.sql", "CREATE INDEX notes_body ON notes (body);\n");
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["--state-dir", "host-b", "migrate"])
        .env("DBWARD_RELEASE", "from-host-b"));
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["deploys", "--json"]));
    assert_eq!(code, 0, "{err}");
    let log = json(&out)["deploys"].as_array().unwrap().clone();
    assert_eq!(log.len(), 3, "{out}");
    assert_eq!(log[0]["release"], "from-host-b");
    assert_eq!(log[0]["applied"], serde_json::json!([3]));
    assert_eq!(log[1]["applied"], serde_json::json!([2]));
    assert_eq!(log[2]["applied"], serde_json::json!([1]));
}

/// Runs `c` with its output captured, waiting at most a minute (a generous bound: the test
/// fails, never hangs, if dbward or what it started holds the pipes).
fn run_bounded(c: &mut Command) -> (i32, String, String) {
    use std::io::Read;
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let (mut o, mut e) = (String::new(), String::new());
        let _ = out.read_to_string(&mut o);
        let _ = err.read_to_string(&mut e);
        (o, e)
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("dbward did not finish within a minute");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    while !reader.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "dbward exited, but its output stayed open (a child it started still holds it)"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (o, e) = reader.join().unwrap();
    (status.code().unwrap_or(-1), o, e)
}

/// Whether process `pid` still runs (a zombie does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim().to_string()))
        .is_some_and(|state| !state.starts_with('Z'))
}

/// Defect 6: a hook or a `--check` that overran its deadline was reported killed, but only its
/// `sh` was: what it started kept working after the migration lock was released, and a caller
/// capturing dbward's output waited for it. Now the whole process group is killed.
#[test]
fn r06_a_command_past_its_deadline_is_killed_with_everything_it_started() {
    let p = Project::new();
    let pids = p.path().join("pids");
    std::fs::create_dir(&pids).unwrap();
    std::fs::write(
        p.path().join("dbward.toml"),
        format!(
            "[hooks]\nafter_migrate = [\"sleep 1000 & echo $! > {0}/hook; sleep 1000\"]\ntimeout = \"1s\"\n",
            pids.display()
        ),
    )
    .unwrap();
    p.migration("V1__a.sql", "CREATE TABLE a (id INTEGER);\n");
    let (code, _, err) = run_bounded(p.dbward("sqlite:app.db").arg("migrate"));
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("every process it started"), "{err}");
    let hook_child: i32 = std::fs::read_to_string(pids.join("hook"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!alive(hook_child), "the hook's background child was killed");

    let server = Http::status(200);
    let check = format!(
        "sleep 1000 & echo $! > {}/check; sleep 1000",
        pids.display()
    );
    let (code, _, err) = run_bounded(p.dbward("sqlite:app.db").args([
        "health",
        "--url",
        &server.url(),
        "--timeout",
        "1s",
        "--check",
        &check,
    ]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("did not finish within 1s"), "{err}");
    let check_child: i32 = std::fs::read_to_string(pids.join("check"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !alive(check_child),
        "the check's background child was killed"
    );
}

/// Low: a `--check` printing without end was buffered whole (300 MB of output, 890 MB of
/// memory, one 300 MB log line). Now its lines are logged cut at 2,000 bytes and only its
/// end is kept for the message.
#[test]
fn r06_a_check_that_prints_without_end_is_logged_in_bounded_lines() {
    let p = Project::new();
    p.migration("V1__a.sql", "CREATE TABLE a (id INTEGER);\n");
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    let server = Http::status(200);
    // 64 MiB on one line, then a last word, and a failure.
    let (code, _, err) = run_bounded(p.dbward("sqlite:app.db").args([
        "health",
        "--url",
        &server.url(),
        "--check",
        "yes x | head -c 67108864 | tr -d '\\n'; echo; echo the-last-word; exit 3",
    ]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the-last-word"), "the tail is kept");
    let longest = err.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 8 << 10, "a log line of {longest} bytes");
}

/// Defect 11: `pg_dump --version`, `pg_controldata` and the drill's ephemeral cluster (whose
/// postmaster's environment its OS user can read) inherited dbward's whole environment, the
/// store's secret key included. Now dbward's tools and servers get only PATH, the locale, TZ,
/// TMPDIR and PG*; the operator's commands (here `run`'s application) all but AWS_* and
/// DBWARD_AGE_*.
#[test]
fn r11_servers_and_tools_get_the_minimal_environment_and_the_app_no_keys() {
    let pg = common::Pg::start();
    let url = pg.create_db("shop");
    let p = Project::new();
    p.migration("V1__a.sql", "CREATE TABLE a (id int);\n");
    let secret = |c: &mut Command| {
        c.env("AWS_SECRET_ACCESS_KEY", "aws-secret-9d1c")
            .env("AWS_ACCESS_KEY_ID", "aws-key-9d1c")
            .env("APP_SETTING", "for-the-app");
    };
    let mut c = p.dbward(&url);
    secret(&mut c);
    assert_eq!(run(c.args(["migrate"])).0, 0);
    let mut c = p.dbward(&url);
    secret(&mut c);
    assert_eq!(run(c.args(["backup"])).0, 0);

    // The drill's ephemeral cluster, looked at while the drill stands after its restore.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let marks = tempfile::tempdir().unwrap();
    let mut c = p.dbward(&url);
    secret(&mut c);
    let mut drill = c
        .args(["restore-drill", "latest"])
        .env("DBWARD_DRILL_DATABASE", "ephemeral")
        .env("TMPDIR", tmp.path())
        .env("DBWARD_FAILPOINTS", "drill-after-restore=wait")
        .env("DBWARD_FAILPOINT_DIR", marks.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !marks.path().join("drill-after-restore").exists() {
        assert!(drill.try_wait().unwrap().is_none(), "the drill ended early");
        assert!(std::time::Instant::now() < deadline, "never reached");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let cluster = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("dbward-drill-cluster-")
        })
        .expect("the ephemeral cluster is in TMPDIR")
        .path();
    let pid: i32 = std::fs::read_to_string(cluster.join("data/postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ).replace('\0', "\n");
    std::fs::write(marks.path().join("drill-after-restore.go"), "").unwrap();
    let out = drill.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for denied in [
        "aws-secret-9d1c",
        "aws-key-9d1c",
        "for-the-app",
        "DATABASE_URL",
    ] {
        assert!(
            !environ.contains(denied),
            "{denied} in the postmaster's environment:\n{environ}"
        );
    }
    assert!(environ.contains("PATH="), "{environ}");

    // `run`'s application: the app's own settings, never the store's keys.
    let server = Http::status(200);
    let env_file = p.path().join("app-env.txt");
    let mut c = p.dbward(&url);
    secret(&mut c);
    let (code, _, err) = run_bounded(c.args([
        "run",
        "--url",
        &server.url(),
        "--check",
        "touch go",
        "--",
        "sh",
        "-c",
        &format!(
            // Ends a moment after its check: not while the check still runs.
            "env > {}; while [ ! -e go ]; do sleep 0.05; done; sleep 3",
            env_file.display()
        ),
    ]));
    assert_eq!(code, 0, "{err}");
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(env.contains("APP_SETTING=for-the-app"), "{env}");
    assert!(
        !env.contains("aws-secret-9d1c") && !env.contains("aws-key-9d1c"),
        "{env}"
    );
}

/// Defect 10: checks that could not fail. `--expect-body ""` (an unset `${DBWARD_RELEASE}` in a
/// unit) matched every body; a drill whose migrations folder did not exist reported
/// `migration-head` as passed without a folder to compare with.
#[test]
fn r10_an_empty_expected_body_and_a_missing_migrations_folder_are_configuration_errors() {
    let p = Project::new();
    p.migration("V1__a.sql", "CREATE TABLE a (id INTEGER);\n");
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    let server = Http::status(200);
    for args in [
        vec!["health", "--url", &server.url(), "--expect-body", ""],
        vec![
            "run",
            "--url",
            &server.url(),
            "--expect-body",
            " ",
            "--",
            "true",
        ],
    ] {
        let (code, _, err) = run(p.dbward("sqlite:app.db").args(&args));
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("DBWARD_RELEASE"), "{err}");
    }
    std::fs::write(
        p.path().join("dbward.toml"),
        "[health]\nexpect_body = \"\"\n",
    )
    .unwrap();
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["health", "--url", &server.url()]));
    assert_eq!(code, 2, "{err}");
    std::fs::remove_file(p.path().join("dbward.toml")).unwrap();

    assert_eq!(run(p.dbward("sqlite:app.db").arg("backup")).0, 0);
    let (code, _, err) = run(p.dbward("sqlite:app.db").args([
        "--migrations",
        "no-such-folder",
        "restore-drill",
        "latest",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no-such-folder"), "{err}");
    // No folder given and none here (a host that only drills): the head is checked against
    // the manifest, and the report says that is all it was checked against.
    std::fs::rename(p.path().join("migrations"), p.path().join("elsewhere")).unwrap();
    let (code, out, err) =
        run(p
            .dbward("sqlite:app.db")
            .args(["restore-drill", "latest", "--json"]));
    assert_eq!(code, 0, "{err}");
    let checks = json(&out)["report"]["checks"].clone();
    let head = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "migration-head")
        .unwrap()
        .clone();
    assert!(
        head["detail"]
            .as_str()
            .unwrap()
            .contains("no migrations folder here"),
        "{head}"
    );
}

/// Points `c` at an S3 endpoint with the test credentials, `store.timeout` = `timeout`.
fn s3_at(c: &mut Command, endpoint: &str, timeout: &str) {
    c.env("AWS_ACCESS_KEY_ID", common::S3_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", common::S3_SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("DBWARD_STORE", "s3://snapshots/backups")
        .env("DBWARD_S3_ENDPOINT", endpoint)
        .env("DBWARD_S3_PATH_STYLE", "1")
        .env("DBWARD_STORE_TIMEOUT", timeout);
}

/// Defect 7: a store that accepts connections and never answers held `migrate` (and the
/// migration lock) for 15 minutes and more without a log line; `wal-push` was exposed the same
/// way. Now no request may stay silent longer than `store.timeout`, retries are bounded, and
/// the command fails, naming the store and the setting.
#[test]
fn r07_a_store_that_never_answers_fails_the_command_within_its_timeout() {
    let silent = common::Silent::start();
    let p = Project::new();
    p.migration("V1__a.sql", "CREATE TABLE a (id INTEGER);\n");
    assert_eq!(
        run(p.dbward("sqlite:app.db").args(["migrate", "--no-snapshot"])).0,
        0
    );
    sqlite(&p.path().join("app.db"), "INSERT INTO a VALUES (1)");
    p.migration("V2__b.sql", "CREATE TABLE b (id INTEGER);\n");
    let mut c = p.dbward("sqlite:app.db");
    s3_at(&mut c, &silent.endpoint(), "2s");
    let (code, _, err) = run_bounded(c.arg("migrate"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("store.timeout"), "{err}");
    assert!(
        err.contains(&silent.endpoint().replace("http://", "")) || err.contains("s3://snapshots"),
        "{err}"
    );
    assert_eq!(
        head(&p.path().join("app.db")),
        "1",
        "nothing applied without its snapshot"
    );
    // The lock went with the process: a deploy to a working store goes through.
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);

    // PostgreSQL's archive_command fails (and PostgreSQL retries later).
    let wal = p.path().join("00000002.history");
    std::fs::write(&wal, "1\t0/3000000\tno recovery target specified\n").unwrap();
    let mut c = p.dbward("postgres://nobody@127.0.0.1:1/app");
    s3_at(&mut c, &silent.endpoint(), "2s");
    let (code, _, err) = run_bounded(c.arg("wal-push").arg(&wal));
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("store.timeout"), "{err}");
}

/// Defect 7, the other side: an upload on a slow link that keeps moving is never cut, however
/// much longer than `store.timeout` each of its parts takes.
#[test]
fn r07_a_slow_upload_that_keeps_moving_is_never_cut() {
    let s3 = common::S3::start();
    // 1 MiB/s per connection; a part of 8 MiB takes 8 s, store.timeout is 1 s.
    let slow = common::Throttle::start(s3.port, 1 << 20);
    let p = Project::new();
    p.migration(
        "V1__blobs.sql",
        "CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB);\n",
    );
    assert_eq!(
        run(p.dbward("sqlite:app.db").args(["migrate", "--no-snapshot"])).0,
        0
    );
    // 20 MiB that do not compress: three parts.
    sqlite(
        &p.path().join("app.db"),
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20) INSERT INTO blobs (b) SELECT randomblob(1048576) FROM n;",
    );
    let mut c = p.dbward("sqlite:app.db");
    s3_at(&mut c, &slow.endpoint(), "1s");
    let (code, out, err) = run_bounded(c.args(["backup", "--json"]));
    assert_eq!(code, 0, "{err}");
    let stored = json(&out)["snapshot"]["stored_bytes"].as_u64().unwrap();
    assert!(stored > 16 << 20, "{stored} bytes: more than two parts");
    // And the same snapshot comes back through the slow link.
    let mut c = p.dbward("sqlite:app.db");
    s3_at(&mut c, &slow.endpoint(), "1s");
    let (code, _, err) = run_bounded(c.args(["restore-drill", "latest"]));
    assert_eq!(code, 0, "{err}");
}

/// Low: a migration file whose name is not UTF-8 panicked (exit 101) where a bad file is exit 3,
/// and `V2__x.sql ` (a trailing space) was skipped without a word.
#[test]
fn r_low_odd_file_names_are_refused_by_name_never_panicked_on_or_skipped() {
    use std::os::unix::ffi::OsStrExt;
    let p = Project::new();
    p.migration("V1__a.sql", "CREATE TABLE a (id INTEGER);\n");
    let dir = p.path().join("migrations");
    std::fs::write(
        dir.join(std::ffi::OsStr::from_bytes(b"V2__caf\xe9.sql")),
        "CREATE TABLE b (id INTEGER);\n",
    )
    .unwrap();
    std::fs::write(dir.join("V3__c.sql "), "CREATE TABLE c (id INTEGER);\n").unwrap();
    for json_flag in [false, true] {
        let mut c = p.dbward("sqlite:app.db");
        c.arg("migrate");
        if json_flag {
            c.arg("--json");
        }
        let (code, out, err) = run(&mut c);
        assert_eq!(code, 3, "{out}{err}");
        assert!(
            err.contains("not valid UTF-8") && err.contains("whitespace"),
            "{err}"
        );
        if json_flag {
            assert_eq!(
                json(&out)["file_problems"].as_array().unwrap().len(),
                2,
                "{out}"
            );
        }
    }
    assert!(!p.path().join("app.db").exists(), "nothing ran");
}

/// Lows: a missing `DBWARD_AGE_IDENTITY_FILE` blocked restoring a plaintext snapshot; a
/// manifest file that cannot be read failed every `restore latest`; with the state dir on a full
/// disk, `migrate` applied the batch, exited 0 with an ERROR line, and the guard never knew.
#[test]
fn r_low_plaintext_restores_need_no_key_an_unreadable_manifest_is_skipped_and_a_full_state_dir_stops_migrate(
) {
    let p = Project::new();
    let snapshot = deployed(&p, "sqlite:app.db");
    let db = p.path().join("app.db");
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .env("DBWARD_AGE_IDENTITY_FILE", "/nonexistent/key.txt")
        .args(["restore", &snapshot, "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(head(&db), "1");

    // A manifest file the user running dbward may not read: skipped as damaged (the project
    // is given to an unprivileged user; root reads every file).
    let folder = p.path().join(".dbward/snapshots/app");
    let unreadable = folder.join("29991231T000000Z-manual-dead.json");
    std::fs::write(&unreadable, "{}").unwrap();
    let uid: u32 = tool(Command::new("id").args(["-u", "postgres"]))
        .parse()
        .unwrap();
    let gid: u32 = tool(Command::new("id").args(["-g", "postgres"]))
        .parse()
        .unwrap();
    tool(
        Command::new("chown")
            .args(["-R", &format!("{uid}:{gid}")])
            .arg(p.path()),
    );
    std::fs::set_permissions(
        &unreadable,
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    let mut c = p.dbward("sqlite:app.db");
    c.args(["restore", "latest", "--yes", "--json"]);
    std::os::unix::process::CommandExt::uid(&mut c, uid);
    std::os::unix::process::CommandExt::gid(&mut c, gid);
    let (code, out, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("29991231T000000Z-manual-dead.json"), "{err}");
    assert!(json(&out)["snapshot"].is_string());
    std::fs::remove_file(&unreadable).unwrap();

    // The state dir on a full disk: refused before anything is applied.
    let full = p.path().join("full-state");
    std::fs::create_dir(&full).unwrap();
    common::tool(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&full),
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(full.clone());
    let _ = std::fs::write(full.join("ballast"), vec![0u8; 256 << 10]);
    p.migration("V3__c.sql", "CREATE TABLE c (id INTEGER);\n");
    let before = head(&db);
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .arg("--state-dir")
        .arg(&full)
        .arg("migrate"));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("nothing was applied"), "{err}");
    assert_eq!(head(&db), before);
}

/// Low: `restore --to postgres://…/existing` exited 1 where SQLite's `--to` onto an existing
/// file is a usage error (exit 2).
#[test]
fn r_low_restore_to_an_existing_postgres_database_is_a_usage_error() {
    let pg = common::Pg::start();
    let url = pg.create_db("shop");
    pg.create_db("taken");
    let p = Project::new();
    p.migration("V1__a.sql", "CREATE TABLE a (id int);\n");
    assert_eq!(run(p.dbward(&url).arg("migrate")).0, 0);
    assert_eq!(run(p.dbward(&url).arg("backup")).0, 0);
    let (code, _, err) =
        run(p
            .dbward(&url)
            .args(["restore", "latest", "--yes", "--to", &pg.url("taken")]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("exists"), "{err}");
    assert_eq!(
        pg.psql(
            "taken",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'a'"
        ),
        "0",
        "left as it was"
    );
}

/// Review of round 3: an upload's body is streamed (signed UNSIGNED-PAYLOAD, and the SDK's CRC
/// trailers are off for R2, B2 and MinIO), so its Content-MD5 is what makes the store refuse
/// bytes that changed on the way: a bit flipped inside a snapshot's upload fails the backup,
/// and no manifest claims it.
#[test]
fn r07_an_upload_whose_bytes_change_on_the_way_is_refused_by_the_store() {
    let s3 = common::S3::start();
    let tamper = common::Throttle::tampering(s3.port, 300_000);
    let p = Project::new();
    p.migration(
        "V1__blobs.sql",
        "CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB);\n",
    );
    assert_eq!(
        run(p.dbward("sqlite:app.db").args(["migrate", "--no-snapshot"])).0,
        0
    );
    sqlite(
        &p.path().join("app.db"),
        "INSERT INTO blobs (b) SELECT randomblob(1048576);",
    );
    let mut c = p.dbward("sqlite:app.db");
    s3_at(&mut c, &tamper.endpoint(), "30s");
    let (code, _, err) = run_bounded(c.arg("backup"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("BadDigest"), "{err}");
    let mut c = p.dbward("sqlite:app.db");
    s3_at(&mut c, &s3.endpoint(), "30s");
    let (code, out, err) = run(c.args(["snapshots", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        json(&out)["snapshots"].as_array().unwrap().is_empty(),
        "{out}"
    );
}

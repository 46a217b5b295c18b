//! The Debian package installs as an operator tool: `dpkg -i` puts `dbward` in /usr/bin with
//! its man page and completions, the example config in /etc/dbward, and units and timers that
//! pass `systemd-analyze verify` and are not enabled; the binary takes systemd's
//! `$STATE_DIRECTORY` as its state dir; `dpkg --purge` removes every file again. And the set-up
//! the README gives on top of it works as written, on the package's own paths.
//!
//! The package is the one `scripts/package.sh` builds (scripts/test.sh builds it first and names
//! it in DBWARD_TEST_DEB). The tests install it on this machine, so they refuse to run where a
//! dbward package, its config or its state dir is already there: they remove only what they
//! made themselves.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use common::unit::{outcome, Unit};
use common::{free_port, json, run, tool, Http, MISSING};

/// Purges the package on every path out of the test, panics included, and removes what the
/// admin's part of the test wrote (the config, the secrets file, the state dir): the package was
/// installed by this test, and none of these existed before it (checked by `install`).
struct Installed {
    _turn: std::fs::File,
}

/// The config and secrets file an admin writes beside the examples.
const ADMINS_CONFIG: &str = "/etc/dbward/dbward.toml";
const ADMINS_ENV: &str = "/etc/dbward/env";
/// The packaged units' state dir (`StateDirectory=dbward`), and the example config's.
const STATE_DIR: &str = "/var/lib/dbward";

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "dbward"]).output();
        let _ = std::fs::remove_file(ADMINS_CONFIG);
        let _ = std::fs::remove_file(ADMINS_ENV);
        let _ = std::fs::remove_dir("/etc/dbward");
        let _ = std::fs::remove_dir_all(STATE_DIR);
    }
}

/// dpkg knows a dbward package in any state (installed, half-installed, removed with its
/// config files kept).
fn known_to_dpkg() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "dbward"])
        .output()
        .map(|o| {
            o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("not-installed")
        })
        .unwrap_or(false)
}

/// dpkg's state is the machine's: two suites running side by side (and the two tests here)
/// take turns, each installing and purging only its own package.
fn machine_lock() -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/lock/dbward-package-test.lock")
        .unwrap();
    f.lock().unwrap();
    f
}

/// `dpkg -i` of the suite's package, on a machine with no dbward on it; purged (and what the
/// test wrote removed) when the result is dropped.
fn install() -> Installed {
    let deb = PathBuf::from(std::env::var("DBWARD_TEST_DEB").unwrap_or_else(|_| {
        panic!(
            "DBWARD_TEST_DEB is not set: {MISSING} (it builds the package with scripts/package.sh)"
        )
    }));
    assert!(deb.is_file(), "{} does not exist", deb.display());
    let turn = machine_lock();
    assert!(
        !known_to_dpkg()
            && !Path::new("/usr/bin/dbward").exists()
            && !Path::new("/etc/dbward").exists()
            && !Path::new(STATE_DIR).exists(),
        "a dbward package (or /usr/bin/dbward, /etc/dbward, {STATE_DIR}) is already on this \
         machine; this test installs and purges the package, so it will not touch one it did not \
         install: remove it first (dpkg --purge dbward; rm -r {STATE_DIR})"
    );
    // From here on the package is this test's, also when `dpkg -i` fails halfway.
    let installed = Installed { _turn: turn };
    tool(Command::new("dpkg").arg("-i").arg(&deb));
    installed
}

const UNITS: [&str; 9] = [
    "dbward-backup.service",
    "dbward-backup.timer",
    "dbward-drill.service",
    "dbward-drill.timer",
    "dbward-alert@.service",
    // One instance per database of [[databases]]: `dbward-backup@NAME.timer`.
    "dbward-backup@.service",
    "dbward-backup@.timer",
    "dbward-drill@.service",
    "dbward-drill@.timer",
];

#[test]
fn the_debian_package_installs_runs_and_purges_cleanly() {
    let installed = install();

    // The binary, its version, its man page and completions.
    let version = tool(Command::new("/usr/bin/dbward").arg("--version"));
    assert_eq!(version, format!("dbward {}", env!("CARGO_PKG_VERSION")));
    let man = tool(Command::new("sh").args(["-c", "zcat /usr/share/man/man1/dbward.1.gz"]));
    assert!(man.contains(".TH dbward 1"), "{man}");
    assert!(
        man.contains("restore\\-drill"),
        "the man page lists the commands: {man}"
    );
    // The pages dbward(1) names (and the one dbward-pitr(1) names) are installed.
    for page in ["dbward-migrate", "dbward-restore-drill", "dbward-pitr"] {
        assert!(
            man.contains(&format!("{}(1)", page.replace('-', "\\-"))),
            "dbward(1) names {page}(1)"
        );
    }
    for page in [
        "dbward-migrate",
        "dbward-restore-drill",
        "dbward-pitr",
        "dbward-pitr-verify",
    ] {
        let path = format!("/usr/share/man/man1/{page}.1.gz");
        assert!(Path::new(&path).is_file(), "{path} is not installed");
    }
    let bash = tool(Command::new("bash").args([
        "-c",
        "source /usr/share/bash-completion/completions/dbward && complete -p dbward",
    ]));
    assert!(bash.contains("dbward"), "{bash}");
    for f in [
        "/usr/share/zsh/vendor-completions/_dbward",
        "/usr/share/fish/vendor_completions.d/dbward.fish",
        "/usr/share/doc/dbward/contract.md",
        "/etc/dbward/env.example",
    ] {
        assert!(Path::new(f).is_file(), "{f} is not installed");
    }

    // The shipped units verify, and nothing enabled the timers.
    let units: Vec<String> = UNITS
        .iter()
        .map(|u| format!("/lib/systemd/system/{u}"))
        .collect();
    common::systemd_verify(&units);
    for t in [
        "dbward-backup.timer",
        "dbward-drill.timer",
        "dbward-backup@.timer",
        "dbward-drill@.timer",
    ] {
        let wants = Path::new("/etc/systemd/system/timers.target.wants").join(t);
        assert!(!wants.exists(), "{t} was enabled by installing the package");
        let unit = std::fs::read_to_string(format!("/lib/systemd/system/{t}")).unwrap();
        assert!(unit.contains("WantedBy=timers.target"), "{unit}");
    }
    for s in [
        "dbward-backup.service",
        "dbward-drill.service",
        "dbward-backup@.service",
        "dbward-drill@.service",
    ] {
        let unit = std::fs::read_to_string(format!("/lib/systemd/system/{s}")).unwrap();
        assert!(
            unit.contains("ConditionPathExists=/etc/dbward/dbward.toml")
                && unit.contains("StateDirectory=dbward"),
            "{s}: {unit}"
        );
    }

    // The example config loads (no unknown key), as the installed binary reads it.
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(Command::new("/usr/bin/dbward")
        .current_dir(dir.path())
        .env_clear()
        .args(["--config", "/etc/dbward/dbward.example.toml"])
        .args(["--store", &format!("file://{}/store", dir.path().display())])
        .args(["snapshots"]));
    assert_eq!(code, 0, "{err}");

    // Under a unit with StateDirectory=, systemd sets STATE_DIRECTORY: the state lands there.
    let migrations = dir.path().join("migrations");
    std::fs::create_dir(&migrations).unwrap();
    std::fs::write(migrations.join("V1__t.sql"), "CREATE TABLE t (id INTEGER);").unwrap();
    let state = dir.path().join("var-lib-dbward");
    std::fs::create_dir(&state).unwrap();
    let (code, _, err) = run(Command::new("/usr/bin/dbward")
        .current_dir(dir.path())
        .env_clear()
        .env("STATE_DIRECTORY", &state)
        .args(["--database", "sqlite:app.db", "migrate"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        common::state_file(&state, "last-deploy", "app").is_some(),
        "the deploy record is not in $STATE_DIRECTORY: {:?}",
        std::fs::read_dir(&state).unwrap().collect::<Vec<_>>()
    );
    assert!(common::state_file(&dir.path().join(".dbward"), "last-deploy", "app").is_none());

    // An admin enabled a timer; removing the package disables it again (prerm), so nothing is
    // left to start a binary that is gone.
    tool(Command::new("systemctl").args([
        "enable",
        "dbward-backup.timer",
        "dbward-drill@app.timer",
    ]));
    let wants = Path::new("/etc/systemd/system/timers.target.wants/dbward-backup.timer");
    let instance = Path::new("/etc/systemd/system/timers.target.wants/dbward-drill@app.timer");
    assert!(
        wants.exists() && instance.exists(),
        "systemctl enable made no link"
    );

    // Purged: every file the package installed is gone, the example config included; what the
    // admin wrote stays (the README says so).
    std::fs::write(ADMINS_CONFIG, "# the admin's own config\n").unwrap();
    let _ = Command::new("dpkg").args(["--purge", "dbward"]).output();
    assert!(!known_to_dpkg(), "dpkg still lists dbward");
    // (The links themselves: a link left to a removed unit file would not `exist()`.)
    assert!(
        wants.symlink_metadata().is_err() && instance.symlink_metadata().is_err(),
        "an enabled timer's link outlived the package"
    );
    for f in [
        "/usr/bin/dbward",
        "/etc/dbward/dbward.example.toml",
        "/etc/dbward/env.example",
        "/lib/systemd/system/dbward-backup.service",
    ] {
        assert!(!Path::new(f).exists(), "{f} is left after dpkg --purge");
    }
    assert!(
        Path::new(ADMINS_CONFIG).is_file(),
        "dpkg --purge removed the admin's own config"
    );
    drop(installed);
    assert!(!Path::new("/etc/dbward").exists());
}

/// The first fenced block of `lang` after `marker` in the README, as it is shown.
fn readme_block(marker: &str, lang: &str) -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let after = &readme[readme
        .find(marker)
        .unwrap_or_else(|| panic!("README.md has no `{marker}`"))..];
    let start = after.find(&format!("```{lang}\n")).unwrap() + lang.len() + 4;
    let len = after[start..].find("```").unwrap();
    after[start..start + len].to_string()
}

/// `text` with each `from` (which must be there) replaced: the operator's edits.
fn edit(text: &str, edits: &[(&str, String)]) -> String {
    let mut text = text.to_string();
    for (from, to) in edits {
        assert!(text.contains(from), "no `{from}` in:\n{text}");
        text = text.replace(from, to);
    }
    text
}

/// The application's process, stopped on every path out.
struct App(Child);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An operator's shell command on the host: nothing but a PATH, from `/`.
fn shell(command: &str, extra: &[(&str, &str)]) -> (i32, String, String) {
    run(Command::new("env")
        .arg("-i")
        .arg("PATH=/usr/bin:/bin")
        .args(extra.iter().map(|(k, v)| format!("{k}={v}")))
        .args(["bash", "-c", command])
        .current_dir("/"))
}

/// The operator's first hour, on the installed package and as the README says: the Install
/// block (copy and edit the example config and secrets, enable the timers), the deploy hook on
/// top of the app's own unit, each packaged unit and each cron line run with what systemd and
/// cron give them. No dbward path is substituted: the binary, the config, the secrets file and
/// the state dir are the package's. Only the operator's own choices are edited in (where the
/// app and its SQLite file live, a local store, the health URL, the ping URLs).
#[test]
fn the_readme_set_up_runs_on_the_installed_package_as_written() {
    let installed = install();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    let hooks = Http::status(200);
    let port = free_port();

    // The application: its migrations, its database's directory, and its program (the suite's
    // small HTTP app over SQLite).
    let app = dir.path().join("app");
    std::fs::create_dir_all(app.join("migrations")).unwrap();
    std::fs::create_dir_all(app.join("bin")).unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(
        app.join("migrations/V1__notes.sql"),
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);\n",
    )
    .unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/app.py");
    std::fs::write(
        app.join("bin/app"),
        format!("#!/bin/sh\nexec python3 {}\n", fixture.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        app.join("bin/app"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    // The README's Install block, line by line, with an editor that makes the operator's edits.
    let example = std::fs::read_to_string("/etc/dbward/dbward.example.toml").unwrap();
    let edited = dir.path().join("edited");
    std::fs::create_dir(&edited).unwrap();
    std::fs::write(
        edited.join("dbward.toml"),
        edit(
            &example,
            &[
                (
                    "url = \"sqlite:/var/lib/app/app.db\"",
                    format!("url = \"sqlite:{root}/data/app.db\""),
                ),
                (
                    "migrations = \"/opt/app/current/migrations\"",
                    format!("migrations = \"{root}/app/migrations\""),
                ),
                (
                    "url = \"s3://backups/app\"",
                    format!("url = \"file://{root}/backups\""),
                ),
            ],
        ) + &format!("\n[health]\nurl = \"http://127.0.0.1:{port}/health\"\ntimeout = \"10s\"\n"),
    )
    .unwrap();
    let env_example = std::fs::read_to_string("/etc/dbward/env.example").unwrap();
    std::fs::write(
        edited.join("env"),
        format!(
            "{env_example}DBWARD_ALERT_URL=http://127.0.0.1:{0}/fail\nDBWARD_BACKUP_PING=http://127.0.0.1:{0}/backup\nDBWARD_DRILL_PING=http://127.0.0.1:{0}/drill\n",
            hooks.port
        ),
    )
    .unwrap();
    let editor = dir.path().join("editor");
    std::fs::write(
        &editor,
        format!(
            "#!/bin/sh\nexec cp {}/\"$(basename \"$1\")\" \"$1\"\n",
            edited.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let install_block = readme_block("Debian package (built by", "sh");
    let lines: Vec<&str> = install_block.lines().collect();
    assert!(
        lines[0].starts_with("cp /etc/dbward/dbward.example.toml") && lines.len() == 3,
        "{install_block}"
    );
    for line in &lines[..2] {
        let (code, _, err) = shell(line, &[("EDITOR", editor.to_str().unwrap())]);
        assert_eq!(code, 0, "{line}: {err}");
    }
    let mode = |p: &str| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(ADMINS_ENV), 0o600, "the secrets file is root's alone");
    // `systemctl enable --now`: the links are made; starting needs a running systemd, which this
    // machine has not (the units are run by hand below, as systemd runs them).
    let (code, _, err) = shell(lines[2], &[]);
    assert!(
        code == 0 || err.contains("System has not been booted with systemd"),
        "{}: {err}",
        lines[2]
    );
    for t in ["dbward-backup.timer", "dbward-drill.timer"] {
        let wants = Path::new("/etc/systemd/system/timers.target.wants").join(t);
        assert!(wants.exists(), "{t} is not enabled: {err}");
    }

    // The app's own unit with the README's deploy hook on top, verified as one unit.
    let hook = readme_block("The deploy hook goes on top", "ini");
    let unit_text = |needs: &str| {
        format!(
            "[Unit]\nDescription=app\n\n[Service]\nEnvironment=APP_PORT={port} APP_DB={root}/data/app.db \"APP_NEEDS={needs}\" \"APP_WRITE=INSERT INTO notes (body) VALUES ('written while r1 served')\"\nExecStart={root}/app/bin/app\n\n{hook}"
        )
    };
    let service = dir.path().join("app.service");
    std::fs::write(&service, unit_text("SELECT count(*) FROM notes")).unwrap();
    common::systemd_verify(&[&service]);
    // One start of the unit: ExecStartPre, ExecStart (simple: started, not waited for),
    // ExecStartPost. Some(the app) when it got that far.
    let start = |needs: &str| -> (i32, String, Option<App>) {
        let unit = Unit::new("app.service", &unit_text(needs));
        let (code, err) = outcome(&unit.exec("ExecStartPre"));
        if code != 0 {
            return (code, err, None);
        }
        let app = App(unit.spawn(&dir.path().join("app.log")));
        let (code, err) = outcome(&unit.exec("ExecStartPost"));
        (code, err, Some(app))
    };

    // Release 1 deploys and serves; the app writes.
    let (code, err, served) = start("SELECT count(*) FROM notes");
    assert_eq!(code, 0, "{err}");
    tool(
        Command::new("curl")
            .args(["-fsS", "-m", "10", "-X", "POST"])
            .arg(format!("http://127.0.0.1:{port}/write")),
    );
    drop(served);

    // The timers' services, run as systemd runs them, then the cron file's lines as cron runs
    // them: each job exits 0 and the cron jobs ping.
    for name in ["dbward-backup.service", "dbward-drill.service"] {
        let unit = Unit::read(Path::new("/lib/systemd/system").join(name), name);
        assert!(unit.conditions_hold(), "{name} would not run");
        let (code, err) = outcome(&unit.exec("ExecStart"));
        assert_eq!(code, 0, "{name}: {err}");
        // UMask=0077: what the job wrote is the owner's alone.
        for f in common::files_under(&dir.path().join("backups")) {
            assert_eq!(
                mode(f.to_str().unwrap()) & 0o077,
                0,
                "{name} wrote {}",
                f.display()
            );
        }
    }
    assert_eq!(mode(STATE_DIR), 0o700, "StateDirectoryMode=0700");
    // The cron file's lines as written: no path substituted.
    for (_, user, command) in crate::recipes::cron_lines() {
        assert_eq!(user, "root", "{command}");
        let out = crate::recipes::as_cron_runs(&command);
        assert!(out.status.success(), "{command}: {}", common::stderr(&out));
    }
    let pinged: Vec<String> = hooks
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.lines().next().unwrap_or("").to_string())
        .collect();
    assert!(
        pinged.len() == 2
            && pinged[0].starts_with("GET /backup ")
            && pinged[1].starts_with("GET /drill "),
        "{pinged:?}"
    );
    let (code, out, err) = shell(
        "/usr/bin/dbward --config /etc/dbward/dbward.toml snapshots --json",
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let snapshots = json(&out)["snapshots"].as_array().unwrap().clone();
    assert_eq!(snapshots.len(), 2, "the timer's backup and cron's: {out}");

    // Release 2's migration renames the column release 2 still reads: unhealthy. The guard
    // restores the pre-deploy snapshot (the note written while release 1 served is there), and
    // the restart systemd makes refuses the same batch.
    std::fs::write(
        app.join("migrations/V2__rename.sql"),
        "ALTER TABLE notes RENAME COLUMN body TO text;\n",
    )
    .unwrap();
    let (code, err, served) = start("SELECT body FROM notes");
    assert_eq!(code, 5, "{err}");
    drop(served);
    let db = format!("{root}/data/app.db");
    assert_eq!(
        tool(Command::new("sqlite3").args([&db, "SELECT body FROM notes"])),
        "written while r1 served"
    );
    let (code, err, _) = start("SELECT body FROM notes");
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("rolled back by the health guard"), "{err}");
    // One state dir: the operator's shell with the package's config sees every deploy.
    let (code, out, err) = shell(
        "/usr/bin/dbward --config /etc/dbward/dbward.toml deploys --json",
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let events: Vec<String> = json(&out)["deploys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        events,
        ["migrate", "restore", "migrate", "migrate"],
        "{out}"
    );

    // A job that fails: OnFailure= starts the alert unit for it, which posts its name.
    std::fs::rename(&db, format!("{db}.aside")).unwrap();
    let backup = Unit::read(
        "/lib/systemd/system/dbward-backup.service",
        "dbward-backup.service",
    );
    let (code, _) = outcome(&backup.exec("ExecStart"));
    assert_ne!(code, 0, "a backup of a missing database succeeded");
    assert!(backup
        .values("OnFailure")
        .contains(&"dbward-alert@%n.service".to_string()));
    let alert = Unit::read(
        "/lib/systemd/system/dbward-alert@.service",
        "dbward-alert@dbward-backup.service.service",
    );
    let (code, err) = outcome(&alert.exec("ExecStart"));
    assert_eq!(code, 0, "{err}");
    let posted = hooks
        .requests
        .lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap_or_default();
    assert!(
        posted.starts_with("POST /fail ") && posted.ends_with("unit=dbward-backup.service"),
        "{posted}"
    );
    std::fs::rename(format!("{db}.aside"), &db).unwrap();

    // Purged: the package's files go, what the admin wrote and the state stay (as the README
    // says).
    tool(Command::new("dpkg").args(["--purge", "dbward"]));
    assert!(!Path::new("/usr/bin/dbward").exists());
    for kept in [ADMINS_CONFIG, ADMINS_ENV, STATE_DIR] {
        assert!(Path::new(kept).exists(), "dpkg --purge removed {kept}");
    }
    drop(installed);
}

//! The Debian package installs as an operator tool: `dpkg -i` puts `dbward` in /usr/bin with
//! its man page and completions, the example config in /etc/dbward, and units and timers that
//! pass `systemd-analyze verify` and are not enabled; the binary takes systemd's
//! `$STATE_DIRECTORY` as its state dir; `dpkg --purge` removes every file again.
//!
//! The package is the one `scripts/package.sh` builds (scripts/test.sh builds it first and names
//! it in DBWARD_TEST_DEB). The test installs it on this machine, so it refuses to run where a
//! dbward package is already installed: it removes only what it installed itself.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run, tool, MISSING};

/// Purges the package on every path out of the test, panics included: it was installed by
/// this test (checked before installing).
struct Installed;

/// The config an admin writes beside the example: the test writes it, and removes it (and
/// the directory, if empty) on every path out.
const ADMINS_CONFIG: &str = "/etc/dbward/dbward.toml";

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "dbward"]).output();
        let _ = std::fs::remove_file(ADMINS_CONFIG);
        let _ = std::fs::remove_dir("/etc/dbward");
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

/// dpkg's state is the machine's: two suites running side by side take turns here, each
/// installing and purging only its own package.
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

const UNITS: [&str; 5] = [
    "dbward-backup.service",
    "dbward-backup.timer",
    "dbward-drill.service",
    "dbward-drill.timer",
    "dbward-alert@.service",
];

#[test]
fn the_debian_package_installs_runs_and_purges_cleanly() {
    let deb = PathBuf::from(std::env::var("DBWARD_TEST_DEB").unwrap_or_else(|_| {
        panic!(
            "DBWARD_TEST_DEB is not set: {MISSING} (it builds the package with scripts/package.sh)"
        )
    }));
    assert!(deb.is_file(), "{} does not exist", deb.display());
    let _turn = machine_lock();
    assert!(
        !known_to_dpkg()
            && !Path::new("/usr/bin/dbward").exists()
            && !Path::new("/etc/dbward").exists(),
        "a dbward package (or /usr/bin/dbward, /etc/dbward) is already on this machine; this test \
         installs and purges the package, so it will not touch one it did not install: remove it first (dpkg --purge dbward)"
    );
    // From here on the package is this test's, also when `dpkg -i` fails halfway.
    let _purge = Installed;
    tool(Command::new("dpkg").arg("-i").arg(&deb));

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
    for t in ["dbward-backup.timer", "dbward-drill.timer"] {
        let wants = Path::new("/etc/systemd/system/timers.target.wants").join(t);
        assert!(!wants.exists(), "{t} was enabled by installing the package");
        let unit = std::fs::read_to_string(format!("/lib/systemd/system/{t}")).unwrap();
        assert!(unit.contains("WantedBy=timers.target"), "{unit}");
    }
    for s in ["dbward-backup.service", "dbward-drill.service"] {
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
    tool(Command::new("systemctl").args(["enable", "dbward-backup.timer"]));
    let wants = Path::new("/etc/systemd/system/timers.target.wants/dbward-backup.timer");
    assert!(wants.exists(), "systemctl enable made no link");

    // Purged: every file the package installed is gone, the example config included; what the
    // admin wrote stays (the README says so).
    std::fs::write(ADMINS_CONFIG, "# the admin's own config\n").unwrap();
    let _ = Command::new("dpkg").args(["--purge", "dbward"]).output();
    assert!(!known_to_dpkg(), "dpkg still lists dbward");
    assert!(
        !wants.exists(),
        "the enabled timer's link outlived the package"
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
    drop(_purge);
    assert!(!Path::new("/etc/dbward").exists());
}

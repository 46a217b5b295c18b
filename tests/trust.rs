//! Regression tests for the trust issue: each test reproduces one way dbward could destroy or
//! lock away data it did not own, and asserts that it no longer does. Real SQLite files, real
//! PostgreSQL clusters, the real binary.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use common::{json, run, sqlite, Pg, Project};

fn app(p: &Project) -> PathBuf {
    p.path().join("app.db")
}

/// A migrated SQLite app with `rows` rows and one snapshot of that state; returns its id.
fn sqlite_app(p: &Project, rows: u32) -> String {
    p.migration(
        "V1__items.sql",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n",
    );
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    sqlite(&app(p), &format!("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) INSERT INTO items (name) SELECT 'item ' || i FROM n;"));
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["backup", "--json"]));
    assert_eq!(code, 0, "{err}");
    json(&out)["snapshot"]["id"].as_str().unwrap().to_string()
}

/// The uid and gid of the `postgres` system user (scripts/test.sh creates it): a user other
/// than the one running the tests (root in CI) for ownership checks.
fn other_user() -> (u32, u32) {
    let out = common::tool(std::process::Command::new("id").args(["-u", "postgres"]));
    let uid: u32 = out.parse().unwrap();
    let gid: u32 = common::tool(std::process::Command::new("id").args(["-g", "postgres"]))
        .parse()
        .unwrap();
    (uid, gid)
}

fn owner_and_mode(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// Defect 1: a restore by root gave the app's database root's owner and mode 0600.
#[test]
fn d01_sqlite_restore_keeps_the_owner_and_mode_of_the_file_it_replaces() {
    let p = Project::new();
    sqlite_app(&p, 10);
    let (uid, gid) = other_user();
    std::os::unix::fs::chown(app(&p), Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(app(&p), std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["restore", "latest", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(owner_and_mode(&app(&p)), (uid, gid, 0o640));

    // A new file (`--to`) gets the umask's mode, as any file this user creates.
    let mut c = p.dbward("sqlite:app.db");
    c.args(["restore", "latest", "--yes", "--to", "copy.db"]);
    // SAFETY: umask is async-signal-safe and touches nothing else.
    unsafe {
        c.pre_exec(|| {
            libc::umask(0o027);
            Ok(())
        });
    }
    let (code, _, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    let (_, _, mode) = owner_and_mode(&p.path().join("copy.db"));
    assert_eq!(mode, 0o640, "0666 under umask 027");
}

#[allow(dead_code)]
fn _uses(_: Pg) {}

//! The SQLite restore path against every state the files around a database can be in: side
//! files (`-wal`, `-shm`, `-journal`) stale or live, symbolic and hard links, missing, empty
//! and read-only files and directories, another owner; for `restore`, `restore --if-missing`,
//! `restore --to`, the health guard and `run --restore-if-missing`. Every case ends in one of
//! two ways: the database path holds the snapshot's exact bytes (and opening it changes
//! nothing: no side file is left for SQLite to apply), or a refusal that changed nothing.

use crate::common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{json, run, sqlite, Http, Project};

/// Rows in the snapshot; the stale side files come from a state with twice as many and a table
/// the snapshot does not have.
const ROWS: u32 = 300;

/// A project with `app.db` migrated (WAL mode, `ROWS` rows) and one snapshot of it, plus side
/// files of a later state of the same database, kept in `stale/` to be put where a case wants.
struct App {
    p: Project,
    id: String,
    /// The snapshot's bytes, decoded with the real `zstd`.
    bytes: Vec<u8>,
}

impl App {
    fn new() -> App {
        let p = Project::new();
        p.migration(
            "V1__items.sql",
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n",
        );
        assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
        let db = p.path().join("app.db");
        sqlite(&db, &format!("PRAGMA journal_mode=WAL; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS}) INSERT INTO items (name) SELECT 'item ' || i FROM n;"));
        let (code, out, err) = run(p.dbward("sqlite:app.db").args(["backup", "--json"]));
        assert_eq!(code, 0, "{err}");
        let id = json(&out)["snapshot"]["id"].as_str().unwrap().to_string();
        let object = p
            .path()
            .join(format!(".dbward/snapshots/app/{id}.sqlite.zst"));
        let bytes = Command::new("zstd")
            .args(["-d", "-c"])
            .arg(&object)
            .output()
            .expect("zstd (run scripts/test.sh)")
            .stdout;
        assert!(bytes.len() > 4096);
        let app = App { p, id, bytes };
        app.make_stale();
        app
    }

    fn db(&self) -> PathBuf {
        self.p.path().join("app.db")
    }

    fn stale(&self, suffix: &str) -> PathBuf {
        self.p.path().join(format!("stale/app.db{suffix}"))
    }

    /// `stale/app.db-wal` and `-shm`: a WAL holding 300 more rows and a table `extra`, copied
    /// while its connection was open; `stale/app.db-journal`: a hot rollback journal of a
    /// rollback-mode copy, copied mid-transaction.
    fn make_stale(&self) {
        let dir = self.p.path().join("stale");
        std::fs::create_dir(&dir).unwrap();
        let copy = dir.join("work.db");
        std::fs::write(&copy, &self.bytes).unwrap();
        let c = rusqlite::Connection::open(&copy).unwrap();
        c.execute_batch(
            "PRAGMA wal_autocheckpoint=0; INSERT INTO items (name) SELECT name FROM items; CREATE TABLE extra (x);",
        )
        .unwrap();
        std::fs::copy(dir.join("work.db-wal"), self.stale("-wal")).unwrap();
        std::fs::copy(dir.join("work.db-shm"), self.stale("-shm")).unwrap();
        drop(c);
        std::fs::write(&copy, &self.bytes).unwrap();
        let c = rusqlite::Connection::open(&copy).unwrap();
        c.execute_batch("PRAGMA journal_mode=DELETE; BEGIN; UPDATE items SET name = name || ' changed'; DELETE FROM items WHERE id > 50;")
            .unwrap();
        std::fs::copy(dir.join("work.db-journal"), self.stale("-journal")).unwrap();
        c.execute_batch("ROLLBACK").unwrap();
        drop(c);
        std::fs::remove_file(&copy).unwrap();
    }

    /// Puts the stale side files with these suffixes beside `db`.
    fn put_stale(&self, db: &Path, suffixes: &[&str]) {
        for s in suffixes {
            std::fs::copy(self.stale(s), format!("{}{s}", db.display())).unwrap();
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.p.dbward("sqlite:app.db");
        c.args(args);
        c
    }
}

/// Every file under `dir` but dbward's own state and store (`.dbward`), the migrations and the
/// stale originals: a symbolic link as its target, a file as its bytes, owner and mode.
fn listing(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if d == dir && matches!(name.as_str(), ".dbward" | "migrations" | "stale")
                || name.ends_with(".dbward-lock")
            {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            // What any reader of a WAL database leaves (its index, an empty WAL): not a change.
            if name.ends_with("-shm") && !name.contains(".replaced-")
                || name.ends_with("-wal") && meta.len() == 0
            {
                continue;
            }
            let what = if meta.file_type().is_symlink() {
                format!("link to {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                todo.push(path.clone());
                format!("dir {:o}", meta.mode() & 0o7777)
            } else {
                let bytes = std::fs::read(&path).unwrap();
                format!(
                    "file {}:{} {:o} {} bytes {:x}",
                    meta.uid(),
                    meta.gid(),
                    meta.mode() & 0o7777,
                    bytes.len(),
                    fnv(&bytes)
                )
            };
            out.insert(path.strip_prefix(dir).unwrap().to_path_buf(), what);
        }
    }
    out
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// The file at `db` (through its links) is the snapshot, byte for byte, with nothing beside it
/// that SQLite would apply; opened, it passes its integrity check and holds the snapshot's
/// rows and tables only.
fn holds_the_snapshot(app: &App, db: &Path, case: &str) {
    holds(app, db, case, true)
}

/// [`holds_the_snapshot`]; `exact: false` after a command that opened the database since (its
/// bytes may differ, its contents may not).
fn holds(app: &App, db: &Path, case: &str, exact: bool) {
    let real = std::fs::canonicalize(db).unwrap_or_else(|e| panic!("{case}: {e}"));
    // (An empty WAL is what a reader of a WAL database leaves: it holds nothing to apply.)
    for s in ["-wal", "-journal"] {
        let side = PathBuf::from(format!("{}{s}", real.display()));
        assert!(
            std::fs::metadata(&side).map_or(true, |m| m.len() == 0),
            "{case}: {} is beside the restored file",
            side.display()
        );
    }
    assert!(
        !exact || std::fs::read(&real).unwrap() == app.bytes,
        "{case}: {} is not the snapshot's bytes",
        real.display()
    );
    assert_eq!(sqlite(&real, "PRAGMA integrity_check"), "ok", "{case}");
    assert_eq!(
        sqlite(&real, "SELECT count(*) FROM items"),
        ROWS.to_string(),
        "{case}"
    );
    assert_eq!(
        sqlite(
            &real,
            "SELECT count(*) FROM sqlite_master WHERE name = 'extra'"
        ),
        "0",
        "{case}"
    );
}

/// The stale side file `suffix` was kept (not deleted, not applied): a file named by dbward's
/// scheme in `dir` holds its bytes.
fn kept_aside(app: &App, dir: &Path, suffix: &str, case: &str) {
    let want = std::fs::read(app.stale(suffix)).unwrap();
    let found = std::fs::read_dir(dir).unwrap().flatten().any(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        n.starts_with("app.db.replaced-")
            && n.ends_with(suffix)
            && std::fs::read(e.path()).unwrap() == want
    });
    assert!(
        found,
        "{case}: the stale {suffix} was not kept aside in {}: {:?}",
        dir.display(),
        listing(dir)
    );
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// The database path holds the snapshot.
    Restored,
    /// Exit with this code, nothing changed.
    Unchanged(i32),
}

/// One state of the files, set up on a fresh app.
struct Case {
    name: &'static str,
    setup: fn(&App),
    restore: Expect,
    if_missing: Expect,
    /// Stale side files that must be found kept aside after a restore.
    kept: &'static [&'static str],
    /// Where the real file lives, relative to the project (the restore happens there).
    real: &'static str,
}

fn gone(app: &App) {
    std::fs::remove_file(app.db()).unwrap();
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "missing, with a stale -wal and -shm",
            setup: |a| {
                gone(a);
                a.put_stale(&a.db(), &["-wal", "-shm"]);
            },
            restore: Expect::Restored,
            if_missing: Expect::Restored,
            kept: &["-wal", "-shm"],
            real: "app.db",
        },
        Case {
            name: "missing, with a stale hot -journal",
            setup: |a| {
                gone(a);
                a.put_stale(&a.db(), &["-journal"]);
            },
            restore: Expect::Restored,
            if_missing: Expect::Restored,
            kept: &["-journal"],
            real: "app.db",
        },
        Case {
            name: "missing, with a stale -shm only",
            setup: |a| {
                gone(a);
                a.put_stale(&a.db(), &["-shm"]);
            },
            restore: Expect::Restored,
            if_missing: Expect::Restored,
            kept: &["-shm"],
            real: "app.db",
        },
        Case {
            name: "empty (0 bytes), with a stale -wal",
            setup: |a| {
                std::fs::write(a.db(), "").unwrap();
                a.put_stale(&a.db(), &["-wal"]);
            },
            restore: Expect::Restored,
            if_missing: Expect::Restored,
            kept: &["-wal"],
            real: "app.db",
        },
        Case {
            name: "present, its own commits still in its WAL",
            setup: |a| {
                // The file and its WAL as a connection left them mid-way (copied while it was
                // open: closing would have checkpointed the commit into the file).
                let c = rusqlite::Connection::open(a.db()).unwrap();
                c.execute_batch(
                    "PRAGMA wal_autocheckpoint=0; INSERT INTO items (name) VALUES ('in the wal');",
                )
                .unwrap();
                let main = std::fs::read(a.db()).unwrap();
                let wal = std::fs::read(format!("{}-wal", a.db().display())).unwrap();
                drop(c);
                std::fs::write(a.db(), main).unwrap();
                std::fs::write(format!("{}-wal", a.db().display()), wal).unwrap();
            },
            restore: Expect::Restored,
            if_missing: Expect::Unchanged(0),
            kept: &[],
            real: "app.db",
        },
        Case {
            name: "a symbolic link to the file on a data volume",
            setup: |a| {
                let vol = a.p.path().join("volume");
                std::fs::create_dir(&vol).unwrap();
                std::fs::rename(a.db(), vol.join("app.db")).unwrap();
                std::os::unix::fs::symlink("volume/app.db", a.db()).unwrap();
            },
            restore: Expect::Restored,
            if_missing: Expect::Unchanged(0),
            kept: &[],
            real: "volume/app.db",
        },
        Case {
            name: "a symbolic link to a missing file on the volume, a stale -wal beside it",
            setup: |a| {
                let vol = a.p.path().join("volume");
                std::fs::create_dir(&vol).unwrap();
                gone(a);
                a.put_stale(&vol.join("app.db"), &["-wal"]);
                std::os::unix::fs::symlink("volume/app.db", a.db()).unwrap();
            },
            // The link names a file in an existing directory that does not exist: a dangling
            // link all the same (the volume may be there without its database).
            restore: Expect::Unchanged(3),
            if_missing: Expect::Unchanged(3),
            kept: &[],
            real: "volume/app.db",
        },
        Case {
            name: "a symbolic link into a volume that is not mounted",
            setup: |a| {
                gone(a);
                std::os::unix::fs::symlink("/nonexistent-volume/app.db", a.db()).unwrap();
            },
            restore: Expect::Unchanged(3),
            if_missing: Expect::Unchanged(3),
            kept: &[],
            real: "app.db",
        },
        Case {
            name: "a hard link shared with another name",
            setup: |a| {
                std::fs::hard_link(a.db(), a.p.path().join("other-name.db")).unwrap();
            },
            restore: Expect::Restored,
            if_missing: Expect::Unchanged(0),
            kept: &[],
            real: "app.db",
        },
        Case {
            name: "owned by another user, mode 0640",
            setup: |a| {
                let (uid, gid) = postgres_user();
                std::os::unix::fs::chown(a.db(), Some(uid), Some(gid)).unwrap();
                std::fs::set_permissions(a.db(), PermissionsExt::from_mode(0o640)).unwrap();
            },
            restore: Expect::Restored,
            if_missing: Expect::Unchanged(0),
            kept: &[],
            real: "app.db",
        },
    ]
}

fn postgres_user() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        common::tool(Command::new("id").args([flag, "postgres"]))
            .parse()
            .unwrap()
    };
    (id("-u"), id("-g"))
}

fn check(app: &App, case: &Case, expect: Expect, args: &[&str]) {
    let at = format!("{} / {}", case.name, args.join(" "));
    let before = listing(app.p.path());
    let meta_before = std::fs::metadata(app.p.path().join(case.real)).ok();
    let (code, out, err) = run(&mut app.cmd(args));
    match expect {
        Expect::Unchanged(want) => {
            assert_eq!(code, want, "{at}: {out}{err}");
            assert_eq!(listing(app.p.path()), before, "{at}: something changed");
        }
        Expect::Restored => {
            assert_eq!(code, 0, "{at}: {out}{err}");
            let link = std::fs::symlink_metadata(app.db()).unwrap();
            if before
                .get(Path::new("app.db"))
                .is_some_and(|w| w.starts_with("link"))
            {
                assert!(link.file_type().is_symlink(), "{at}: the link was replaced");
            }
            holds(app, &app.db(), &at, args[0] == "restore");
            let real = app.p.path().join(case.real);
            let dir = real.parent().unwrap();
            for s in case.kept {
                kept_aside(app, dir, s, &at);
            }
            if let Some(m) = meta_before {
                let now = std::fs::metadata(&real).unwrap();
                assert_eq!(
                    (now.uid(), now.gid(), now.mode() & 0o7777),
                    (m.uid(), m.gid(), m.mode() & 0o7777),
                    "{at}: owner and mode of the file replaced"
                );
                // The replaced database is kept beside the real file, whole.
                let kept: Vec<_> = std::fs::read_dir(dir)
                    .unwrap()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        let n = p.file_name().unwrap().to_string_lossy().into_owned();
                        n.starts_with("app.db.replaced-")
                            && !n.contains("-wal")
                            && !n.contains("-shm")
                            && !n.contains("-journal")
                    })
                    .collect();
                if m.len() > 0 {
                    assert_eq!(kept.len(), 1, "{at}: {kept:?}");
                    assert_eq!(sqlite(&kept[0], "PRAGMA integrity_check"), "ok", "{at}");
                }
            }
        }
    }
}

#[test]
fn restore_by_id_ends_with_the_snapshot_or_changes_nothing_in_every_state() {
    for case in cases() {
        let app = App::new();
        (case.setup)(&app);
        let id = app.id.clone();
        check(&app, &case, case.restore, &["restore", &id, "--yes"]);
    }
}

#[test]
fn restore_if_missing_ends_with_the_snapshot_or_changes_nothing_in_every_state() {
    for case in cases() {
        let app = App::new();
        (case.setup)(&app);
        check(
            &app,
            &case,
            case.if_missing,
            &["restore", "latest", "--if-missing"],
        );
        // `migrate` with restore.if_missing meets the same restore first.
        let app = App::new();
        (case.setup)(&app);
        if case.if_missing == Expect::Unchanged(0) {
            // `migrate` uses the database it found (SQLite checkpoints it on closing): its
            // contents stay what they were.
            let rows = sqlite(&app.db(), "SELECT count(*) FROM items");
            let (code, out, err) = run(&mut app.cmd(&["migrate", "--restore-if-missing"]));
            assert_eq!(code, 0, "{}: {out}{err}", case.name);
            assert!(err.contains("exists: nothing to restore"), "{err}");
            assert_eq!(sqlite(&app.db(), "SELECT count(*) FROM items"), rows);
        } else {
            check(
                &app,
                &case,
                case.if_missing,
                &["migrate", "--restore-if-missing"],
            );
        }
    }
}

#[test]
fn a_first_migrate_refuses_a_dangling_link_and_the_side_files_of_a_lost_database() {
    let app = App::new();
    gone(&app);
    app.put_stale(&app.db(), &["-wal"]);
    let before = listing(app.p.path());
    let (code, _, err) = run(&mut app.cmd(&["migrate"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("app.db-wal"), "{err}");
    assert_eq!(listing(app.p.path()), before);

    std::fs::remove_file(format!("{}-wal", app.db().display())).unwrap();
    std::os::unix::fs::symlink("/nonexistent-volume/app.db", app.db()).unwrap();
    let before = listing(app.p.path());
    let (code, _, err) = run(&mut app.cmd(&["migrate"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("/nonexistent-volume/app.db"), "{err}");
    assert_eq!(listing(app.p.path()), before);
}

#[test]
fn restore_to_a_new_path_refuses_side_files_and_links_there() {
    let app = App::new();
    let id = app.id.clone();
    let new = app.p.path().join("new.db");
    // A stale WAL beside the new name.
    app.put_stale(&new, &["-wal"]);
    let before = listing(app.p.path());
    let (code, _, err) = run(&mut app.cmd(&["restore", &id, "--yes", "--to", "new.db"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("new.db-wal"), "{err}");
    assert_eq!(listing(app.p.path()), before);
    std::fs::remove_file(format!("{}-wal", new.display())).unwrap();
    // A dangling link at the new name.
    std::os::unix::fs::symlink("/nonexistent-volume/new.db", &new).unwrap();
    let before = listing(app.p.path());
    let (code, _, err) = run(&mut app.cmd(&["restore", &id, "--yes", "--to", "new.db"]));
    assert_eq!(code, 2, "{err}");
    assert_eq!(listing(app.p.path()), before);
    std::fs::remove_file(&new).unwrap();
    // A clean new name gets the snapshot.
    let (code, _, err) = run(&mut app.cmd(&["restore", &id, "--yes", "--to", "new.db"]));
    assert_eq!(code, 0, "{err}");
    holds_the_snapshot(&app, &new, "--to new.db");
}

#[test]
fn an_unprivileged_restore_into_a_read_only_directory_changes_nothing() {
    let app = App::new();
    let id = app.id.clone();
    let (uid, gid) = postgres_user();
    // The project belongs to the unprivileged user; the database's directory is read-only.
    let vol = app.p.path().join("volume");
    std::fs::create_dir(&vol).unwrap();
    std::fs::rename(app.db(), vol.join("app.db")).unwrap();
    std::os::unix::fs::symlink("volume/app.db", app.db()).unwrap();
    common::tool(
        Command::new("chown")
            .args(["-R", &format!("{uid}:{gid}")])
            .arg(app.p.path()),
    );
    // The lock file exists already (created by an earlier run, as the app's user).
    std::fs::write(vol.join("app.db.dbward-lock"), "").unwrap();
    std::os::unix::fs::chown(vol.join("app.db.dbward-lock"), Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(&vol, PermissionsExt::from_mode(0o555)).unwrap();
    let before = listing(app.p.path());
    let mut c = app.cmd(&["restore", &id, "--yes"]);
    std::os::unix::process::CommandExt::uid(&mut c, uid);
    std::os::unix::process::CommandExt::gid(&mut c, gid);
    let (code, out, err) = run(&mut c);
    assert_ne!(code, 0, "{out}{err}");
    assert_eq!(listing(app.p.path()), before, "{err}");
    // Writable again, the same user restores, and the file keeps its read-only mode.
    std::fs::set_permissions(&vol, PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(vol.join("app.db"), PermissionsExt::from_mode(0o444)).unwrap();
    let mut c = app.cmd(&["restore", &id, "--yes"]);
    std::os::unix::process::CommandExt::uid(&mut c, uid);
    std::os::unix::process::CommandExt::gid(&mut c, gid);
    let (code, out, err) = run(&mut c);
    assert_eq!(code, 0, "{out}{err}");
    holds_the_snapshot(&app, &app.db(), "read-only file");
    let m = std::fs::metadata(vol.join("app.db")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (uid, 0o444));
}

/// A small tmpfs that cannot hold the restored copy: refused before anything is written.
#[test]
fn a_restore_onto_a_full_disk_changes_nothing() {
    let app = App::new();
    let id = app.id.clone();
    let vol = app.p.path().join("volume");
    std::fs::create_dir(&vol).unwrap();
    common::tool(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&vol),
    );
    let _unmount = Unmount(vol.clone());
    // Beside it, a file that fills the rest of the volume.
    std::fs::copy(app.db(), vol.join("app.db")).unwrap();
    let free = {
        let out = common::tool(Command::new("df").args(["-B1", "--output=avail"]).arg(&vol));
        out.lines().last().unwrap().trim().parse::<u64>().unwrap()
    };
    std::fs::write(
        vol.join("ballast"),
        vec![0u8; free.saturating_sub(4096) as usize],
    )
    .ok();
    std::fs::remove_file(app.db()).unwrap();
    std::os::unix::fs::symlink("volume/app.db", app.db()).unwrap();
    let before = listing(app.p.path());
    let (code, out, err) = run(&mut app.cmd(&["restore", &id, "--yes"]));
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("space") || err.contains("disk"),
        "the refusal names the full disk: {err}"
    );
    assert_eq!(listing(app.p.path()), before, "{err}");
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The health guard restores through a symbolic link, with the application still holding the
/// database (forced): the link stays, the real file is the snapshot, and the application's
/// writes since are in the kept copy and its WAL.
#[test]
fn the_guard_restores_the_file_a_link_names_and_keeps_the_link() {
    let app = App::new();
    let vol = app.p.path().join("volume");
    std::fs::create_dir(&vol).unwrap();
    std::fs::rename(app.db(), vol.join("app.db")).unwrap();
    std::os::unix::fs::symlink("volume/app.db", app.db()).unwrap();
    app.p
        .migration("V2__note.sql", "ALTER TABLE items ADD COLUMN note TEXT;\n");
    let (code, out, err) = run(&mut app.cmd(&["migrate", "--json"]));
    assert_eq!(code, 0, "{err}");
    let pre_deploy = json(&out)["snapshot"].as_str().unwrap().to_string();
    // The application writes after the deploy, and keeps the database open.
    let holder = rusqlite::Connection::open(app.db()).unwrap();
    holder
        .execute_batch("PRAGMA wal_autocheckpoint=0; INSERT INTO items (name, note) VALUES ('after', 'the deploy');")
        .unwrap();
    let server = Http::status(500);
    let (code, out, err) = run(&mut app.cmd(&[
        "health",
        "--url",
        &server.url(),
        "--timeout",
        "1s",
        "--restore-on-failure",
        "--json",
    ]));
    assert_eq!(code, 5, "{out}{err}");
    assert!(std::fs::symlink_metadata(app.db())
        .unwrap()
        .file_type()
        .is_symlink());
    let real = vol.join("app.db");
    assert_eq!(sqlite(&real, "PRAGMA integrity_check"), "ok");
    assert_eq!(
        sqlite(&real, "SELECT max(version) FROM refinery_schema_history"),
        "1"
    );
    assert_eq!(
        sqlite(&real, "SELECT count(*) FROM items"),
        ROWS.to_string()
    );
    let kept = app
        .p
        .path()
        .join(json(&out)["restored"]["replaced"].as_str().unwrap());
    assert_eq!(kept.parent().unwrap(), vol, "kept beside the real file");
    drop(holder);
    assert_eq!(
        sqlite(&kept, "SELECT count(*) FROM items WHERE name = 'after'"),
        "1",
        "the write after the deploy is in the kept copy"
    );
    let _ = pre_deploy;
}

/// `run --restore-if-missing`: a container on a volume whose database is gone but whose WAL
/// was left gets the snapshot, never the WAL replayed into it.
#[test]
fn run_restores_a_missing_database_beside_a_stale_wal_and_starts_the_app_on_the_snapshot() {
    let app = App::new();
    gone(&app);
    app.put_stale(&app.db(), &["-wal", "-shm"]);
    let server = Http::status(200);
    // The check (run once the endpoint answers) reads the database the app was started on and
    // tells the app to finish, which it does a moment later: an app that exits while its checks
    // still run is one that exited before it was healthy.
    let (code, out, err) = run(&mut app.cmd(&[
        "run",
        "--restore-if-missing",
        "--url",
        &server.url(),
        "--check",
        "sqlite3 app.db 'PRAGMA integrity_check; SELECT count(*) FROM items;' > seen && touch go",
        "--",
        "sh",
        "-c",
        "while [ ! -e go ]; do sleep 0.05; done; sleep 3",
    ]));
    assert_eq!(code, 0, "{out}{err}");
    let seen = std::fs::read_to_string(app.p.path().join("seen")).unwrap();
    assert_eq!(seen, format!("ok\n{ROWS}\n"), "{err}");
    kept_aside(&app, app.p.path(), "-wal", "run");
}

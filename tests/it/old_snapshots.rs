//! Snapshots written by earlier releases restore with this one, and with the standard tools:
//! `tests/fixtures/snapshots/plain` was written by dbward 0.1.0 before encryption existed
//! (a SQLite `app` and a PostgreSQL `shop`), `age` by the first release with encryption, to
//! the committed test key `fixture-key.txt`; `stream` by the first release with streams (a
//! SQLite stream and a deploy's position in it); `migrations/` holds the files they were
//! migrated with (the drill checks the head against them). Never regenerate these: add new ones
//! beside them.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{json, run, sqlite, tool, Pg, Project};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/snapshots")
}

/// A copy of a fixture store (drills write receipts into the store).
fn store_copy(p: &Project, which: &str) -> PathBuf {
    let to = p.path().join(format!("store-{which}"));
    tool(
        Command::new("cp")
            .arg("-r")
            .arg(fixtures().join(which))
            .arg(&to),
    );
    to
}

/// The one snapshot id of `database` in a fixture store.
fn id_in(store: &Path, database: &str) -> String {
    std::fs::read_dir(store.join(database))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find_map(|n| {
            n.strip_suffix(".json")
                .filter(|s| s.as_bytes()[0].is_ascii_digit() && !s.ends_with(".drill"))
                .map(str::to_string)
        })
        .unwrap()
}

#[test]
fn sqlite_snapshots_of_earlier_releases_restore_with_dbward_and_the_standard_tools() {
    let p = Project::new();
    let key = fixtures().join("fixture-key.txt");
    for which in ["plain", "age"] {
        let store = store_copy(&p, which);
        let id = id_in(&store, "app");
        let dbward = || {
            let mut c = p.dbward("sqlite:app.db");
            c.arg("--migrations")
                .arg(fixtures().join("migrations/app"))
                .arg("--store")
                .arg(format!("file://{}", store.display()))
                .env("DBWARD_AGE_IDENTITY_FILE", &key);
            c
        };
        let to = p.path().join(format!("{which}.db"));
        let (code, _, err) =
            run(dbward().args(["restore", &id, "--yes", "--to", to.to_str().unwrap()]));
        assert_eq!(code, 0, "{which}: {err}");
        assert_eq!(
            sqlite(&to, "SELECT body FROM notes WHERE id = 1"),
            "kept since 0.1.0"
        );
        let (code, out, err) = run(dbward().args(["restore-drill", &id, "--json"]));
        assert_eq!(code, 0, "{which}: {err}");
        assert_eq!(json(&out)["report"]["encrypted"], which == "age");

        // Without dbward.
        let by_hand = p.path().join(format!("{which}-by-hand.db"));
        let object = store.join(format!(
            "app/{id}.sqlite.zst{}",
            if which == "age" { ".age" } else { "" }
        ));
        let sh = if which == "age" {
            format!(
                "age -d -i {} {} | zstd -dq > {}",
                key.display(),
                object.display(),
                by_hand.display()
            )
        } else {
            format!("zstd -dq {} -o {}", object.display(), by_hand.display())
        };
        tool(Command::new("sh").args(["-c", &sh]));
        assert_eq!(sqlite(&by_hand, "PRAGMA integrity_check"), "ok");
        assert_eq!(sqlite(&by_hand, "SELECT count(*) FROM notes"), "2");
    }
}

#[test]
fn postgres_snapshots_of_earlier_releases_restore_with_dbward_and_pg_restore() {
    let pg = Pg::start();
    let p = Project::new();
    let key = fixtures().join("fixture-key.txt");
    for which in ["plain", "age"] {
        let store = store_copy(&p, which);
        let id = id_in(&store, "shop");
        let target = pg.url(&format!("restored_{which}"));
        let dbward = || {
            let mut c = p.dbward(&pg.url("shop"));
            c.arg("--migrations")
                .arg(fixtures().join("migrations/shop"))
                .arg("--store")
                .arg(format!("file://{}", store.display()))
                .env("DBWARD_AGE_IDENTITY_FILE", &key);
            c
        };
        let (code, _, err) = run(dbward().args(["restore", &id, "--yes", "--to", &target]));
        assert_eq!(code, 0, "{which}: {err}");
        assert_eq!(
            pg.psql(
                &format!("restored_{which}"),
                "SELECT name FROM items WHERE id = 1"
            ),
            "kept since 0.1.0"
        );
        let (code, _, err) = run(dbward().args(["restore-drill", &id]));
        assert_eq!(code, 0, "{which}: {err}");

        let object = store.join(format!(
            "shop/{id}.pgdump.zst{}",
            if which == "age" { ".age" } else { "" }
        ));
        let decode = if which == "age" {
            format!(
                "age -d -i {} {} | zstd -dq",
                key.display(),
                object.display()
            )
        } else {
            format!("zstd -dqc {}", object.display())
        };
        let listing = tool(Command::new("sh").args([
            "-c",
            &format!("{decode} | {} -l", pg.bindir.join("pg_restore").display()),
        ]));
        assert!(listing.contains("TABLE public items"), "{listing}");
    }
}

/// A SQLite stream written by the first release with streams (`stream/`): a generation's base
/// and steps, and a deploy's position (a `streampoint` snapshot, taken by `migrate` beside the
/// running replicator, before `V1__notes.sql`). Its newest state and the position restore with
/// this release, and the newest state also with `docs/stream-restore.py` and `zstd` alone.
#[test]
fn sqlite_streams_of_earlier_releases_restore_with_dbward_and_the_script() {
    let p = Project::new();
    let store = store_copy(&p, "stream");
    let point = id_in(&store, "app");
    let dbward = || {
        let mut c = p.dbward("sqlite:app.db");
        c.arg("--migrations")
            .arg(fixtures().join("migrations/app"))
            .arg("--store")
            .arg(format!("file://{}", store.display()));
        c
    };
    let newest = p.path().join("newest.db");
    let (code, _, err) =
        run(dbward().args(["restore", "--stream", "--to", newest.to_str().unwrap()]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(sqlite(&newest, "SELECT count(*) FROM legacy"), "2");
    assert_eq!(
        sqlite(&newest, "SELECT group_concat(body, '|') FROM notes"),
        "kept since 0.1.0|second|after the deploy"
    );
    let at = p.path().join("at-the-deploy.db");
    let (code, _, err) =
        run(dbward().args(["restore", &point, "--yes", "--to", at.to_str().unwrap()]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(sqlite(&at, "SELECT count(*) FROM legacy"), "2");
    assert_eq!(
        sqlite(
            &at,
            "SELECT count(*) FROM sqlite_master WHERE name = 'notes'"
        ),
        "0"
    );

    // Without dbward.
    let generation = std::fs::read_dir(store.join("app/stream"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|d| d.is_dir())
        .unwrap();
    let by_hand = p.path().join("by-hand.db");
    tool(
        Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/stream-restore.py"))
            .arg(&generation)
            .arg(&by_hand),
    );
    assert_eq!(sqlite(&by_hand, "PRAGMA integrity_check"), "ok");
    assert_eq!(sqlite(&by_hand, "SELECT count(*) FROM notes"), "3");
}

//! Encrypted snapshots (age): written so the standard `age` CLI opens them, restored and
//! drilled with an identity file, refused (exit 3, naming the recipients) without one, mixed
//! with plaintext snapshots in one store; passphrase mode; local copies private.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{json, run, sqlite, tool, Http, Pg, Project, S3};

/// A key pair made by the real `age-keygen`: (identity file, public key).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(format!("{name}.txt"));
    tool(Command::new("age-keygen").arg("-o").arg(&path));
    let public = tool(Command::new("age-keygen").arg("-y").arg(&path));
    assert!(public.starts_with("age1"), "{public}");
    (path, public)
}

fn encrypt_to(p: &Project, recipients: &[&str], extra: &str) {
    let list: Vec<String> = recipients.iter().map(|r| format!("{r:?}")).collect();
    std::fs::write(
        p.path().join("dbward.toml"),
        format!("[encryption]\nrecipients = [{}]\n{extra}", list.join(", ")),
    )
    .unwrap();
}

fn notes(p: &Project) {
    p.migration(
        "V1__notes.sql",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);\n",
    );
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    sqlite(
        &p.path().join("app.db"),
        "INSERT INTO notes (body) VALUES ('secret row one'), ('secret row two')",
    );
}

#[test]
fn an_encrypted_sqlite_snapshot_opens_with_the_age_cli_and_restores_with_the_identity() {
    let p = Project::new();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path(), "key");
    let (_, recovery) = keygen(keys.path(), "recovery");
    notes(&p);
    encrypt_to(&p, &[&public, &recovery], "");
    let (code, out, err) = run(p.dbward("sqlite:app.db").args(["backup", "--json"]));
    assert_eq!(code, 0, "{err}");
    let m = json(&out)["snapshot"].clone();
    let id = m["id"].as_str().unwrap();
    assert_eq!(m["encryption"]["scheme"], "age");
    assert_eq!(
        m["encryption"]["recipients"],
        serde_json::json!([public, recovery])
    );
    let object = p
        .path()
        .join(format!(".dbward/snapshots/app/{id}.sqlite.zst.age"));
    assert_eq!(m["data_key"], format!("app/{id}.sqlite.zst.age"));
    let stored = std::fs::read(&object).unwrap();
    assert!(
        stored.starts_with(b"age-encryption.org/v1\n"),
        "an age file"
    );
    assert!(
        !stored.windows(14).any(|w| w == b"secret row one"),
        "no plaintext in the object"
    );
    // The integrity check needs no key: the SHA-256 is of the stored bytes.
    let sum = tool(Command::new("sha256sum").arg(&object));
    assert_eq!(m["sha256"], sum.split_whitespace().next().unwrap());

    // Without dbward: age -d | zstd -d gives the SQLite file.
    let restored = p.path().join("by-hand.db");
    let sh = format!(
        "age -d -i {} {} | zstd -dq > {}",
        key.display(),
        object.display(),
        restored.display()
    );
    tool(Command::new("sh").args(["-c", &sh]));
    assert_eq!(
        sqlite(&restored, "SELECT group_concat(body) FROM notes"),
        "secret row one,secret row two"
    );

    // With dbward: the identity comes from the environment.
    sqlite(&p.path().join("app.db"), "DELETE FROM notes");
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .env("DBWARD_AGE_IDENTITY_FILE", &key)
        .args(["restore", id, "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        sqlite(&p.path().join("app.db"), "SELECT count(*) FROM notes"),
        "2"
    );
}

#[test]
fn without_a_matching_identity_a_restore_is_refused_before_it_touches_anything() {
    let p = Project::new();
    let keys = tempfile::tempdir().unwrap();
    let (_, public) = keygen(keys.path(), "key");
    let (other, _) = keygen(keys.path(), "other");
    notes(&p);
    encrypt_to(&p, &[&public], "");
    let (code, out, _) = run(p.dbward("sqlite:app.db").args(["backup", "--json"]));
    assert_eq!(code, 0);
    let id = json(&out)["snapshot"]["id"].as_str().unwrap().to_string();
    sqlite(
        &p.path().join("app.db"),
        "INSERT INTO notes (body) VALUES ('after')",
    );

    // No identity at all: refused before anything is fetched, naming the recipients.
    let (code, _, err) = run(p.dbward("sqlite:app.db").args(["restore", &id, "--yes"]));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&public) && err.contains("DBWARD_AGE_IDENTITY_FILE"),
        "{err}"
    );
    // Another key: refused too.
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .env("DBWARD_AGE_IDENTITY_FILE", &other)
        .args(["restore", &id, "--yes"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("none of the identities"), "{err}");
    assert_eq!(
        sqlite(&p.path().join("app.db"), "SELECT count(*) FROM notes"),
        "3",
        "the live database is as it was"
    );
    let leftovers: Vec<String> = std::fs::read_dir(p.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("app.db") && n != "app.db" && !n.ends_with("-lock"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A drill without the key is the machine's failure, not the snapshot's: no receipt.
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["restore-drill", &id, "--json"]));
    assert_eq!(code, 3, "{err}");
    let (code, out, _) = run(p
        .dbward("sqlite:app.db")
        .env("DBWARD_AGE_IDENTITY_FILE", &other)
        .args(["restore-drill", &id, "--json"]));
    assert_eq!(code, 1);
    let doc = json(&out);
    assert_eq!(doc["report"]["encrypted"], true, "{doc}");
    assert_eq!(
        doc["report"]["checks"][1]["verdict"], "error",
        "the machine's failure: {doc}"
    );
    assert!(!p
        .path()
        .join(format!(".dbward/snapshots/app/{id}.drill.json"))
        .exists());
}

#[test]
fn a_store_mixes_plaintext_and_encrypted_snapshots_through_every_command() {
    let p = Project::new();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path(), "key");
    notes(&p);
    let backup = |p: &Project| {
        let (code, out, err) = run(p.dbward("sqlite:app.db").args(["backup", "--json"]));
        assert_eq!(code, 0, "{err}");
        json(&out)["snapshot"]["id"].as_str().unwrap().to_string()
    };
    let before = backup(&p);
    encrypt_to(&p, &[&public], "");
    let during = backup(&p);
    std::fs::remove_file(p.path().join("dbward.toml")).unwrap();
    let after = backup(&p);
    let with_key = |c: &mut Command| {
        c.env("DBWARD_AGE_IDENTITY_FILE", &key);
    };
    let (code, out, _) = run(p.dbward("sqlite:app.db").args(["snapshots", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(json(&out)["snapshots"].as_array().unwrap().len(), 3);
    for id in [&before, &during, &after] {
        let mut c = p.dbward("sqlite:app.db");
        with_key(&mut c);
        let (code, out, err) = run(c.args(["restore-drill", id, "--json"]));
        assert_eq!(code, 0, "{id}: {err}");
        assert_eq!(json(&out)["report"]["encrypted"], id == &during, "{out}");
        let mut c = p.dbward("sqlite:app.db");
        with_key(&mut c);
        let to = p.path().join(format!("{id}.db"));
        let (code, _, err) = run(c.args(["restore", id, "--yes", "--to", to.to_str().unwrap()]));
        assert_eq!(code, 0, "{id}: {err}");
    }
    // Retention removes encrypted snapshots by their own key.
    std::fs::write(p.path().join("dbward.toml"), "[retention]\nkeep_last = 1\n").unwrap();
    let (code, _, err) = run(p.dbward("sqlite:app.db").arg("prune"));
    assert_eq!(code, 0, "{err}");
    let left: Vec<String> = std::fs::read_dir(p.path().join(".dbward/snapshots/app"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&during))
        .collect();
    assert!(
        left.is_empty(),
        "the encrypted snapshot's files are gone: {left:?}"
    );
}

#[test]
fn postgres_encrypted_pre_deploy_snapshot_on_s3_pg_restore_reads_it_and_the_guard_restores_it() {
    let pg = Pg::start();
    let url = pg.create_db("shop");
    let s3 = S3::start();
    let p = Project::new();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path(), "key");
    // The deploying host has only the public key in its config; the identity is in the env.
    encrypt_to(&p, &[&public], "manifest_details = false\n");
    let dbward = || {
        let mut c = p.dbward(&url);
        s3.configure(&mut c);
        c.env("DBWARD_AGE_IDENTITY_FILE", &key);
        c
    };
    p.migration(
        "V1__items.sql",
        "CREATE TABLE items (id int PRIMARY KEY, name text);\n",
    );
    assert_eq!(run(dbward().arg("migrate")).0, 0);
    pg.psql("shop", "INSERT INTO items VALUES (1, 'one'), (2, 'two')");
    p.migration("V2__drop.sql", "DROP TABLE items;\n");
    let (code, out, err) = run(dbward().args(["migrate", "--json"]));
    assert_eq!(code, 0, "{err}");
    let id = json(&out)["snapshot"].as_str().unwrap().to_string();

    // The object in the bucket: age, then zstd, then a pg_restore-able archive.
    let fetched = p.path().join("fetched.age");
    s3.fetch(&format!("backups/shop/{id}.pgdump.zst.age"), &fetched);
    let sh = format!(
        "age -d -i {} {} | zstd -dq | {} -l",
        key.display(),
        fetched.display(),
        pg.bindir.join("pg_restore").display()
    );
    let listing = tool(Command::new("sh").args(["-c", &sh]));
    assert!(listing.contains("TABLE public items"), "{listing}");
    // manifest_details = false: no table names in the manifest.
    let manifest = p.path().join("manifest.json");
    s3.fetch(&format!("backups/shop/{id}.json"), &manifest);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    assert_eq!(doc["row_counts"], serde_json::json!({}), "{doc}");

    let server = Http::status(503);
    let (code, _, err) = run(dbward().args([
        "health",
        "--restore-on-failure",
        "--timeout",
        "1s",
        "--url",
        &server.url(),
    ]));
    assert_eq!(code, 5, "{err}");
    assert_eq!(pg.psql("shop", "SELECT count(*) FROM items"), "2");

    // Another key: the archive streams from the bucket into the decoder, which refuses it
    // before pg_restore starts; the scratch database made for it is dropped, the live one
    // left as it was.
    let (other, _) = keygen(keys.path(), "other");
    let (code, _, err) = run(dbward().env("DBWARD_AGE_IDENTITY_FILE", &other).args([
        "restore",
        &id,
        "--yes",
        "--terminate-connections",
    ]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("none of the identities"), "{err}");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'shop\\_restore\\_%'"
        ),
        "0"
    );
    assert_eq!(pg.psql("shop", "SELECT count(*) FROM items"), "2");
}

#[test]
fn passphrase_mode_from_the_environment() {
    let p = Project::new();
    notes(&p);
    let (code, out, err) = run(p
        .dbward("sqlite:app.db")
        .env("DBWARD_AGE_PASSPHRASE", "correct horse battery staple")
        .args(["backup", "--json"]));
    assert_eq!(code, 0, "{err}");
    let m = json(&out)["snapshot"].clone();
    assert_eq!(
        m["encryption"]["recipients"],
        serde_json::json!(["passphrase"])
    );
    let id = m["id"].as_str().unwrap().to_string();
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .env("DBWARD_AGE_PASSPHRASE", "wrong")
        .args(["restore", &id, "--yes"]));
    assert_eq!(code, 3, "{err}");
    assert!(
        !err.contains("wrong"),
        "the passphrase is never echoed: {err}"
    );
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .env("DBWARD_AGE_PASSPHRASE", "correct horse battery staple")
        .args(["restore", &id, "--yes"]));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn local_copies_are_as_private_as_the_database() {
    let p = Project::new();
    notes(&p);
    std::fs::set_permissions(
        p.path().join("app.db"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    // The usual umask.
    let (code, out, err) = run(Command::new("sh").current_dir(p.path()).args([
        "-c",
        &format!(
            "umask 022; exec {} --database sqlite:app.db backup --json",
            env!("CARGO_BIN_EXE_dbward")
        ),
    ]));
    assert_eq!(code, 0, "{err}");
    let id = json(&out)["snapshot"]["id"].as_str().unwrap().to_string();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let store = p.path().join(".dbward/snapshots");
    assert_eq!(mode(&store.join(format!("app/{id}.sqlite.zst"))), 0o600);
    assert_eq!(mode(&store.join(format!("app/{id}.json"))), 0o600);
    assert_eq!(mode(&store.join("app")), 0o700);
    assert_eq!(mode(&store), 0o700);
    let (code, _, _) = run(Command::new("sh").current_dir(p.path()).args([
        "-c",
        &format!(
            "umask 022; exec {} --database sqlite:app.db migrate",
            env!("CARGO_BIN_EXE_dbward")
        ),
    ]));
    assert_eq!(code, 0);
    for e in std::fs::read_dir(p.path().join(".dbward"))
        .unwrap()
        .flatten()
    {
        let path = e.path();
        if path.is_file() {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
    assert_eq!(mode(&p.path().join(".dbward")), 0o700);
}

#[test]
fn an_identity_file_others_can_read_is_warned_about() {
    let p = Project::new();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path(), "key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    notes(&p);
    encrypt_to(&p, &[&public], "");
    let (_, out, _) = run(p.dbward("sqlite:app.db").args(["backup", "--json"]));
    let id = json(&out)["snapshot"]["id"].as_str().unwrap().to_string();
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .env("DBWARD_AGE_IDENTITY_FILE", &key)
        .args(["restore-drill", &id]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("readable by others"), "{err}");
    let secret = std::fs::read_to_string(&key).unwrap();
    let secret_line = secret
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap();
    assert!(!err.contains(secret_line), "the key is never logged");
}

/// A fresh volume whose newest snapshot is encrypted, on a host without the key: the restore
/// fails (exit 3) instead of quietly taking an older plaintext snapshot.
#[test]
fn if_missing_never_falls_back_past_a_snapshot_it_has_no_key_for() {
    let p = Project::new();
    let keys = tempfile::tempdir().unwrap();
    let (_, public) = keygen(keys.path(), "key");
    notes(&p);
    assert_eq!(run(p.dbward("sqlite:app.db").arg("backup")).0, 0);
    encrypt_to(&p, &[&public], "");
    assert_eq!(run(p.dbward("sqlite:app.db").arg("backup")).0, 0);
    std::fs::remove_file(p.path().join("app.db")).unwrap();
    let (code, _, err) = run(p
        .dbward("sqlite:app.db")
        .args(["restore", "latest", "--if-missing"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("DBWARD_AGE_IDENTITY_FILE"), "{err}");
    assert!(
        !p.path().join("app.db").exists(),
        "nothing older was restored in its place"
    );
}

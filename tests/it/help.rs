//! What operators read is pinned: `--help` of dbward and of every command, and how each kind of
//! failure is rendered (message and exit code). A change here is a reviewed change: update the
//! snapshots in `tests/snapshots/` with `INSTA_UPDATE=always cargo nextest run -E 'test(/^help::/)'`
//! and read the diff.

use crate::common;

use std::process::Command;

use common::{run, Project};

/// `text`, pinned as `tests/snapshots/help__<name>.snap`.
fn pinned(name: &str, text: String) {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path("../snapshots");
    s.set_prepend_module_to_snapshot(false);
    s.bind(|| insta::assert_snapshot!(format!("help__{name}"), text));
}

fn dbward() -> Command {
    let p = std::env::temp_dir();
    common::dbward(&p)
}

/// The commands `dbward --help` lists.
fn commands() -> Vec<String> {
    let (code, out, _) = run(dbward().arg("--help"));
    assert_eq!(code, 0);
    out.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn help_of_dbward_and_every_command() {
    let (_, out, _) = run(dbward().arg("--help"));
    pinned("dbward", out);
    let commands = commands();
    assert!(commands.len() >= 14, "{commands:?}");
    for c in commands {
        let (code, out, err) = run(dbward().args([c.as_str(), "--help"]));
        assert_eq!(code, 0, "{c}: {err}");
        pinned(&c, out);
    }
}

/// One failure of each kind, as stderr and the exit code show it (paths and ports that change
/// from run to run replaced).
#[test]
fn each_kind_of_failure_as_operators_read_it() {
    let p = Project::new();
    let root = p.path().display().to_string();
    let mut cases = Vec::new();
    let mut case = |name: &str, c: &mut Command| {
        let (code, _, err) = run(c);
        cases.push(format!(
            "## {name} (exit {code})\n{}",
            err.replace(&root, "<project>")
        ));
    };
    case("usage: no database", common::dbward(p.path()).arg("status"));
    case("usage: an unknown config key", &mut {
        std::fs::write(p.path().join("bad.toml"), "[store]\nurll = \"x\"\n").unwrap();
        let mut c = p.dbward("sqlite:app.db");
        c.args(["--config", "bad.toml", "status"]);
        c
    });
    case(
        "usage: a migrations folder it cannot read, with its cause",
        p.dbward("sqlite:app.db")
            .args(["--migrations", "no-such-folder", "migrate"]),
    );
    p.migration("V1__bad-name.sql", "SELECT 1;");
    case(
        "refused: a migration file it cannot use",
        p.dbward("sqlite:app.db").arg("migrate"),
    );
    p.remove("V1__bad-name.sql");
    p.migration("V1__t.sql", "CREATE TABLE t (id INTEGER);\nVACUUM;\n");
    case("refused: lint", p.dbward("sqlite:app.db").arg("migrate"));
    p.migration(
        "V1__t.sql",
        "CREATE TABLE t (id INTEGER);\nINSERT INTO nope VALUES (1);\n",
    );
    case(
        "failed: a migration, rolled back",
        p.dbward("sqlite:app.db").arg("migrate"),
    );
    case(
        "failed: no such snapshot",
        p.dbward("sqlite:app.db")
            .args(["restore", "20261122T093000Z-manual-3f2a", "--yes"]),
    );
    // What a newcomer's first mistakes say: each names the fault and the next step.
    case(
        "usage: a file path as the database",
        common::dbward(p.path()).args(["--database", "demo.db", "status"]),
    );
    case("usage: S3 settings beside a directory store", &mut {
        std::fs::write(
            p.path().join("s3.toml"),
            "[store]\nurl = \"file:///srv/snapshots\"\nendpoint = \"https://example.r2.cloudflarestorage.com\"\nregion = \"auto\"\n",
        )
        .unwrap();
        let mut c = p.dbward("sqlite:app.db");
        c.args(["--config", "s3.toml", "snapshots"]);
        c
    });
    case(
        "usage: health without a URL, under the guard",
        p.dbward("sqlite:app.db")
            .args(["health", "--restore-on-failure"]),
    );
    case(
        "failed: a backup of a database file that does not exist",
        p.dbward("sqlite:missing.db").arg("backup"),
    );
    case(
        "failed: restore pre-deploy before any deploy",
        p.dbward("sqlite:app.db")
            .args(["restore", "pre-deploy", "--yes"]),
    );
    case(
        "failed: an S3 store without credentials",
        p.dbward("sqlite:app.db")
            .args([
                "--store",
                "s3://backups/app",
                "--s3-endpoint",
                "http://127.0.0.1:9",
            ])
            .env("HOME", p.path())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .arg("snapshots"),
    );
    // A drill that passed, whose metrics file has nowhere to go: a warning, exit 0.
    assert_eq!(run(p.dbward("sqlite:app.db").arg("backup")).0, 0);
    case(
        "passed: a drill whose metrics file cannot be written",
        p.dbward("sqlite:app.db").args([
            "-q",
            "restore-drill",
            "latest",
            "--metrics",
            "no-such-dir/dbward.prom",
        ]),
    );
    pinned("failures", cases.join("\n"));
}

/// One man page per command, each one dbward(1) (or dbward-pitr(1)) names, and dbward(1) with
/// the sections a man page reader looks for.
#[test]
fn a_man_page_for_every_command_and_the_sections_readers_look_for() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(dbward().args(["generate", "man", "--dir"]).arg(dir.path()));
    assert_eq!(code, 0, "{err}");
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let top = read("dbward.1");
    for section in [
        ".SH SUBCOMMANDS",
        ".SH \"EXIT STATUS\"",
        ".SH ENVIRONMENT",
        ".SH FILES",
        ".SH EXAMPLES",
    ] {
        assert!(top.contains(section), "{section} in dbward(1)");
    }
    let mut named = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for (i, _) in text.match_indices("dbward\\-") {
            // `dbward\-restore\-drill(1)`: letters, `\` and `-`, then `(1)`.
            let rest = &text[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '\\' || c == '-'))
                .unwrap_or(rest.len());
            if rest[end..].starts_with("(1)") {
                named.push(rest[..end].replace('\\', ""));
            }
        }
    }
    for command in commands() {
        assert!(
            named.contains(&format!("dbward-{command}")),
            "dbward(1) names dbward-{command}(1): {named:?}"
        );
    }
    // Each page's synopsis is the command as typed.
    assert!(
        read("dbward-restore-drill.1").contains("\\fBdbward restore\\-drill\\fR"),
        "{}",
        read("dbward-restore-drill.1")
    );
    assert!(read("dbward-pitr-verify.1").contains("\\fBdbward pitr verify\\fR"));
    for page in named {
        assert!(
            dir.path().join(format!("{page}.1")).is_file(),
            "{page}(1) is named, not written"
        );
    }
}

/// `dbward deploys` as operators read it: one short line per event, a guard's long failure
/// cut in its OUTCOME cell (`--json` keeps it whole). The moment and the host change from run
/// to run: they are replaced, and columns are joined by ` | ` so their widths do not matter.
#[test]
fn the_deploy_log_as_operators_read_it() {
    let p = Project::new();
    p.migration("V1__t.sql", "CREATE TABLE t (id INTEGER);\n");
    let dbward = || {
        let mut c = p.dbward("sqlite:app.db");
        c.env("USER", "deployer").env("DBWARD_RELEASE", "4f2c9e1");
        c
    };
    assert_eq!(run(dbward().args(["migrate", "--reason", "first"])).0, 0);
    p.migration("V2__u.sql", "CREATE TABLE u (id INTEGER);\n");
    assert_eq!(run(dbward().arg("migrate")).0, 0);
    let (code, _, err) = run(dbward().args([
        "health",
        "--restore-on-failure",
        "--url",
        "http://127.0.0.1:9/healthz",
        "--timeout",
        "1s",
    ]));
    assert_eq!(code, 5, "{err}");
    let (code, json, _) = run(dbward().args(["deploys", "--json"]));
    assert_eq!(code, 0);
    let doc = common::json(&json);
    let entries = doc["deploys"].as_array().unwrap();
    let (code, mut text, err) = run(dbward().arg("deploys"));
    assert_eq!(code, 0, "{err}");
    for e in entries {
        text = text.replace(e["at"].as_str().unwrap(), "<at>");
        text = text.replace(e["host"].as_str().unwrap(), "<host>");
    }
    let text: String = text
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
                .join(" | ")
                + "\n"
        })
        .collect();
    pinned("deploy-log", text);
}

//! The recipes in `recipes/` work as written, and the README shows them as they are: systemd
//! units pass `systemd-analyze verify`, cron lines run in cron's own environment
//! (`env -i PATH=/usr/bin:/bin`, no environment file but the one they load), compose files
//! parse, and every config file loads (no unknown key).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{json, run, tool, Http, Project};

fn recipes() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes")
}

fn all_recipes() -> Vec<PathBuf> {
    common::files_under(&recipes())
}

#[test]
fn the_readme_shows_every_recipe_file_as_it_is() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let all = all_recipes();
    assert!(all.len() >= 8, "{all:?}");
    for f in all {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            readme.contains(text.trim_end()),
            "README.md does not show {} as it is in the repository",
            f.display()
        );
    }
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("dbward.env");
    std::fs::write(&env_file, "DATABASE_URL=sqlite:/tmp/app.db\n").unwrap();
    let mut units = Vec::new();
    // The recipe's unit runs beside the package's timers: one set-up, verified together.
    let mut packaged: Vec<PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/deb"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
    packaged.sort();
    for f in all_recipes().into_iter().chain(packaged) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.ends_with(".service") || name.ends_with(".timer")) {
            continue;
        }
        // The paths a real host has, pointed at what this one has: the unit text is otherwise
        // the recipe's.
        // (`Documentation=man:dbward(1)`: the man page is there once the package is; its test
        // verifies the units with it.)
        let text = std::fs::read_to_string(&f)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("Documentation="))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .replace("/usr/bin/dbward", env!("CARGO_BIN_EXE_dbward"))
            .replace("/opt/app/current/bin/app", "/bin/true")
            .replace("/etc/dbward/env", &env_file.display().to_string())
            .replace("/opt/app/current", &dir.path().display().to_string());
        let to = dir.path().join(&name);
        std::fs::write(&to, text).unwrap();
        units.push(to);
    }
    assert!(units.len() >= 6, "{units:?}");
    common::systemd_verify(&units);
}

/// The cron lines of `recipes/cron/dbward`: (schedule, user, command).
pub fn cron_lines() -> Vec<(String, String, String)> {
    std::fs::read_to_string(recipes().join("cron/dbward"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let schedule = fields[..5].join(" ");
            let user = fields[5].to_string();
            // The command is the rest of the line as written.
            let mut rest = l;
            for f in &fields[..6] {
                rest = rest.trim_start().strip_prefix(f).unwrap();
            }
            (schedule, user, rest.trim().to_string())
        })
        .collect()
}

/// `command` run as cron runs a line's command: its environment (`PATH=/usr/bin:/bin`, no
/// other variable but `HOME`), `/bin/sh -c`, from `/`.
pub fn as_cron_runs(command: &str) -> std::process::Output {
    Command::new("env")
        .args([
            "-i",
            "PATH=/usr/bin:/bin",
            "HOME=/root",
            "/bin/sh",
            "-c",
            command,
        ])
        .current_dir("/")
        .output()
        .unwrap()
}

#[test]
fn cron_lines_run_in_crons_environment_and_ping_only_on_success() {
    let p = Project::new();
    p.migration(
        "V1__notes.sql",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);\nINSERT INTO notes (body) VALUES ('a');\n",
    );
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    let ping = Http::status(200);
    let env_file = p.path().join("dbward.env");
    let config = p.path().join("dbward.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{0}/.dbward\"\n[database]\nmigrations = \"{0}/migrations\"\n[store]\nurl = \"file://{0}/backups\"\n",
            p.path().display()
        ),
    )
    .unwrap();
    std::fs::write(
        &env_file,
        format!(
            "DATABASE_URL=sqlite:{}/app.db\nDBWARD_BACKUP_PING=http://127.0.0.1:{1}/backup\nDBWARD_DRILL_PING=http://127.0.0.1:{1}/drill\n",
            p.path().display(),
            ping.port
        ),
    )
    .unwrap();
    let lines = cron_lines();
    assert_eq!(lines.len(), 2);
    let cron = |command: &str| {
        as_cron_runs(
            &command
                .replace("/usr/bin/dbward", env!("CARGO_BIN_EXE_dbward"))
                .replace("/etc/dbward/env", &env_file.display().to_string())
                .replace("/etc/dbward/dbward.toml", &config.display().to_string()),
        )
    };
    for (schedule, user, command) in &lines {
        assert_eq!(user, "root");
        // dbward's own scheduler reads the same expression the same way.
        let toml = p.path().join("schedule.toml");
        std::fs::write(&toml, format!("[schedule]\nbackup = \"{schedule}\"\n")).unwrap();
        let (code, _, err) = run(p.dbward("sqlite:app.db").args([
            "--config",
            toml.to_str().unwrap(),
            "schedule",
            "--list",
        ]));
        assert_eq!(code, 0, "{schedule}: {err}");

        let out = cron(command);
        assert!(out.status.success(), "{command}: {}", common::stderr(&out));
    }
    let requests = ping.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2, "one ping per job: {requests:?}");
    assert!(requests[0].starts_with("GET /backup "), "{requests:?}");
    assert!(requests[1].starts_with("GET /drill "), "{requests:?}");
    let (code, out, _) = run(p.dbward("sqlite:app.db").args([
        "--config",
        config.to_str().unwrap(),
        "snapshots",
        "--json",
    ]));
    assert_eq!(code, 0);
    assert_eq!(json(&out)["snapshots"][0]["kind"], "scheduled");

    // A job that cannot run (its environment file is gone) fails, and sends no ping: the
    // dead-man's switch alerts.
    std::fs::remove_file(&env_file).unwrap();
    let out = cron(&lines[0].2);
    assert!(!out.status.success());
    assert_eq!(
        ping.requests.lock().unwrap().len(),
        2,
        "no ping from a failed job"
    );
}

#[test]
fn compose_files_parse_and_run_dbward_as_the_entrypoint() {
    for f in all_recipes() {
        if f.file_name().unwrap() != "compose.yaml" {
            continue;
        }
        let script = format!(
            "import json, yaml\n\
             doc = yaml.safe_load(open('{}'))\n\
             print(json.dumps(doc))\n",
            f.display()
        );
        let doc = json(&tool(Command::new("python3").arg("-c").arg(script)));
        let services = doc["services"].as_object().unwrap();
        assert!(!services.is_empty(), "{}", f.display());
        for (name, s) in services {
            let entry: Vec<&str> = s["entrypoint"]
                .as_array()
                .unwrap_or_else(|| panic!("{}: {name} has no entrypoint", f.display()))
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(entry[0], "/usr/bin/dbward", "{}: {name}", f.display());
            assert!(
                entry.contains(&"run") && entry.last() == Some(&"--"),
                "{entry:?}"
            );
            // The config it mounts is the one beside it in the repository.
            let mounts = s["volumes"].to_string();
            assert!(
                mounts.contains("./dbward.toml:/etc/dbward/dbward.toml"),
                "{mounts}"
            );
            assert!(f.parent().unwrap().join("dbward.toml").exists());
            // Its flags are dbward's: `run --help` accepts them (the command after `--`).
            let flags: Vec<&str> = entry[1..entry.len() - 1]
                .iter()
                .filter(|a| a.starts_with("--"))
                .copied()
                .collect();
            let (code, help, _) =
                run(Command::new(env!("CARGO_BIN_EXE_dbward")).args(["run", "--help"]));
            assert_eq!(code, 0);
            let (code, global, _) = run(Command::new(env!("CARGO_BIN_EXE_dbward")).arg("--help"));
            assert_eq!(code, 0);
            for flag in flags {
                assert!(
                    help.contains(flag) || global.contains(flag),
                    "{}: {name}: unknown flag {flag}",
                    f.display()
                );
            }
        }
    }
}

#[test]
fn every_config_file_loads() {
    let empty = tempfile::tempdir().unwrap();
    for f in all_recipes() {
        if f.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        // `lint` loads every setting (an unknown key is exit 2) and needs no database.
        let mut c = Command::new(env!("CARGO_BIN_EXE_dbward"));
        c.arg("--config")
            .arg(&f)
            .arg("--migrations")
            .arg(empty.path())
            .arg("lint");
        for (k, _) in std::env::vars() {
            if k.starts_with("DBWARD_") || k == "DATABASE_URL" {
                c.env_remove(k);
            }
        }
        let (code, _, err) = run(&mut c);
        assert_eq!(code, 0, "{}: {err}", f.display());
    }
}

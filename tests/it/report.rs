//! `dbward report`: the status page and gauges of every database in a store, from the store
//! alone, checked against what the store holds. The page is rendered by a real browser
//! (Debian's headless Chromium): its DOM, as Chromium parsed it, holds each database's numbers,
//! and it draws at a phone's width.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{json, run, tool, MISSING};

const NAMES: [&str; 3] = ["app", "jobs", "cache"];

fn dbward(root: &Path) -> Command {
    let mut c = common::dbward(root);
    c.arg("--config").arg(root.join("dbward.toml"));
    c
}

/// Chromium, headless, bounded: what it printed on stdout.
fn chromium(args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args([
            "120",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
        ])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("chromium: {e}: {MISSING}"));
    assert!(
        out.status.success(),
        "chromium {args:?}: {} ({MISSING})",
        common::stderr(&out)
    );
    common::stdout(&out)
}

/// The value of `attr="..."` in `tag` (a serialized start tag).
fn attr<'a>(tag: &'a str, attr: &str) -> &'a str {
    let start = tag
        .find(&format!(" {attr}=\""))
        .unwrap_or_else(|| panic!("no {attr} in {tag}"))
        + attr.len()
        + 3;
    &tag[start..start + tag[start..].find('"').unwrap()]
}

#[test]
fn the_status_page_shows_every_database_of_the_store_as_the_store_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let r = root.display();
    for name in NAMES {
        let m = root.join(format!("m-{name}"));
        std::fs::create_dir(&m).unwrap();
        std::fs::write(
            m.join("V1__t.sql"),
            "CREATE TABLE items (id INTEGER PRIMARY KEY);\nINSERT INTO items VALUES (1), (2);\n",
        )
        .unwrap();
    }
    // The jobs database's drill checks a probe that fails: a red verdict on the page.
    let config = NAMES
        .iter()
        .map(|name| {
            let mut e = format!(
                "\n[[databases]]\nname = \"{name}\"\nurl = \"sqlite:{r}/{name}.db\"\nmigrations = \"{r}/m-{name}\"\n"
            );
            if *name == "jobs" {
                e.push_str("[databases.drill]\nprobes = [\"SELECT count(*) > 100 FROM items\"]\n");
            }
            e
        })
        .collect::<String>();
    std::fs::write(
        root.join("dbward.toml"),
        format!("state_dir = \"{r}/state\"\n[store]\nurl = \"file://{r}/store\"\n{config}"),
    )
    .unwrap();

    for name in NAMES {
        let (code, _, err) =
            run(dbward(root).args(["--db", name, "migrate", "--reason", "first release"]));
        assert_eq!(code, 0, "{name}: {err}");
    }
    for _ in 0..2 {
        assert_eq!(run(dbward(root).args(["backup", "--scheduled"])).0, 0);
    }
    // A second release of app: a pre-deploy snapshot and a deploy record.
    std::fs::write(
        root.join("m-app/V2__u.sql"),
        "CREATE TABLE u (id INTEGER);\n",
    )
    .unwrap();
    let (code, _, err) = run(dbward(root)
        .env("DBWARD_RELEASE", "4f2c9e1")
        .args(["--db", "app", "migrate", "--reason", "add u"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = run(dbward(root).args(["restore-drill", "--scheduled", "latest"]));
    assert_eq!(code, 1, "the jobs drill fails its probe");

    let page = root.join("status.html");
    let metrics = root.join("dbward.prom");
    let (code, out, err) = run(dbward(root)
        .args(["--json", "report", "--html"])
        .arg(&page)
        .arg("--metrics")
        .arg(&metrics));
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    assert_eq!(doc["databases"].as_array().unwrap().len(), 3, "{doc}");

    // What the store holds, read with dbward's own listing.
    let (code, out, _) = run(dbward(root).args(["--json", "snapshots"]));
    assert_eq!(code, 0);
    let listed = json(&out);
    let dom = chromium(&["--dump-dom", &format!("file://{}", page.display())]);
    let sections: Vec<&str> = dom
        .match_indices("<section ")
        .map(|(i, _)| &dom[i..i + dom[i..].find('>').unwrap()])
        .collect();
    assert_eq!(sections.len(), 3, "{dom}");
    for (i, name) in NAMES.iter().enumerate() {
        let snaps = listed["databases"][i]["result"]["snapshots"]
            .as_array()
            .unwrap();
        let section = sections
            .iter()
            .find(|s| attr(s, "data-database") == *name)
            .unwrap_or_else(|| panic!("no section for {name}"));
        assert_eq!(
            attr(section, "data-snapshots"),
            snaps.len().to_string(),
            "{name}"
        );
        assert_eq!(
            attr(section, "data-last-backup"),
            snaps[0]["id"].as_str().unwrap(),
            "{name}"
        );
        let drills = std::fs::read_dir(root.join("store").join(name).join("drills"))
            .unwrap()
            .count();
        assert_eq!(attr(section, "data-drills"), drills.to_string(), "{name}");
        let deploys = std::fs::read_dir(root.join("store").join(name).join("deploys"))
            .unwrap()
            .count();
        assert_eq!(attr(section, "data-deploys"), deploys.to_string(), "{name}");
    }
    assert_eq!(
        listed["databases"][0]["result"]["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // The verdicts, as the browser shows them: jobs' drill failed, naming the check.
    let summary = &dom[dom.find("id=\"summary\"").unwrap()..dom.find("</table>").unwrap()];
    let rows: Vec<&str> = summary.split("<tr>").skip(2).collect();
    assert_eq!(rows.len(), 3, "{summary}");
    // (Databases in the store's order: by name.)
    let row = |name: &str| {
        *rows
            .iter()
            .find(|r| r.contains(&format!(">{name}<")))
            .unwrap_or_else(|| panic!("no row for {name}: {summary}"))
    };
    assert!(row("jobs").contains("failed: probe"), "{}", row("jobs"));
    assert!(row("app").contains("passed") && row("cache").contains("passed"));
    // The deploy log, with who and why.
    assert!(dom.contains("add u") && dom.contains("4f2c9e1"), "{dom}");

    // At a phone's width, Chromium draws it (a PNG of that width).
    let shot = root.join("phone.png");
    chromium(&[
        "--hide-scrollbars",
        "--window-size=390,844",
        &format!("--screenshot={}", shot.display()),
        &format!("file://{}", page.display()),
    ]);
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 390);

    // The gauges: one series per database, the newest backup's time as the store has it.
    let text = std::fs::read_to_string(&metrics).unwrap();
    for (i, name) in NAMES.iter().enumerate() {
        let created = listed["databases"][i]["result"]["snapshots"][0]["created_at"]
            .as_str()
            .unwrap();
        let unix = tool(Command::new("date").args(["-u", "-d", created, "+%s"]));
        assert!(
            text.contains(&format!(
                "dbward_last_backup_timestamp_seconds{{database=\"{name}\",store=\"{}\"}} {unix}\n",
                root.join("store").join(name).display()
            )),
            "{name}: {text}"
        );
    }
    assert!(
        text.contains(&format!(
            "dbward_last_drill_success{{database=\"jobs\",store=\"{}\"}} 0\n",
            root.join("store/jobs").display()
        )),
        "{text}"
    );
    assert_eq!(
        text.matches("# TYPE dbward_last_drill_success gauge")
            .count(),
        1
    );
}

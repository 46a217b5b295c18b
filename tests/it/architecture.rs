//! ARCHITECTURE.md's layers hold: each line of its "Layers" section lists modules from the
//! bottom up, and no module imports one listed after it (no import runs back up). Read from the
//! sources themselves: every `crate::` path (and `super::` inside a listed directory module),
//! through the crate root's `pub use` re-exports, test modules included.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The "Layers" section: `(name, modules bottom up)` per line, e.g. `backup::pitr`.
fn layers() -> Vec<(String, Vec<String>)> {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let section = doc
        .split("\n## Layers\n")
        .nth(1)
        .expect("ARCHITECTURE.md has a `## Layers` section");
    let section = section.split("\n## ").next().unwrap();
    let mut out = Vec::new();
    for line in section.lines() {
        let Some(rest) = line.strip_prefix("- `") else {
            continue;
        };
        let (name, list) = rest.split_once("`: ").expect("- `name`: a, b, c");
        let modules = list
            .trim_end_matches('.')
            .split(", ")
            .map(|m| m.trim().to_string())
            .collect();
        out.push((name.to_string(), modules));
    }
    assert!(
        out.len() >= 5,
        "the Layers section lists the crates' modules"
    );
    out
}

/// The source directory of `name` (`backup`, `backup::pitr`, `dbward`).
fn dir_of(name: &str) -> PathBuf {
    let mut parts = name.split("::");
    let krate = parts.next().unwrap();
    let mut dir = if krate == "dbward" {
        root().join("src")
    } else {
        root().join(krate).join("src")
    };
    for p in parts {
        dir = dir.join(p);
    }
    dir
}

/// Every `.rs` file under `dir`, with the top-level module it belongs to.
fn files(dir: &Path) -> Vec<(String, PathBuf)> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut all = Vec::new();
    walk(dir, &mut all);
    all.into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(dir).unwrap();
            let top = rel
                .iter()
                .next()?
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            (!["lib", "main", "mod"].contains(&top.as_str())).then_some((top, p))
        })
        .collect()
}

/// The module paths `text` names after `prefix` (`crate::`, `crate::pitr::`, `super::`): the
/// first segment of each, grouped imports (`prefix{a, b::c}`) included. Comments are skipped.
fn named(text: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap();
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            // Not the tail of a longer path (`backup::crate::` does not occur; `x_super::` might).
            let before = rest[..at].chars().next_back();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap();
                for item in inner.split(',') {
                    let id: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    if !id.is_empty() {
                        out.push(id);
                    }
                }
            } else {
                let id: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if !id.is_empty() {
                    out.push(id);
                }
            }
        }
    }
    out
}

/// What the crate root re-exports by name (`pub use catalog::{list, ...}`): name -> module.
fn reexports(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for root_file in ["lib.rs", "main.rs"] {
        let Ok(text) = std::fs::read_to_string(dir.join(root_file)) else {
            continue;
        };
        for stmt in text.split(';') {
            let Some(u) = stmt.trim().strip_prefix("pub use ") else {
                continue;
            };
            let Some((module, names)) = u.split_once("::") else {
                continue;
            };
            for n in names.trim_matches(|c| c == '{' || c == '}').split(',') {
                let n = n.trim();
                if n.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                    out.insert(n.to_string(), module.trim().to_string());
                }
            }
        }
    }
    out
}

#[test]
fn no_import_runs_back_up_the_layers_architecture_md_lists() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for (name, order) in layers() {
        if name == "crates" {
            continue;
        }
        let dir = dir_of(&name);
        let nested = name.contains("::");
        let reexported = if nested {
            BTreeMap::new()
        } else {
            reexports(&dir)
        };
        let prefixes: Vec<String> = if nested {
            let inner = name.split_once("::").unwrap().1;
            vec![format!("crate::{inner}::"), "super::".to_string()]
        } else {
            vec!["crate::".to_string()]
        };
        let rank = |m: &str| order.iter().position(|o| o == m);
        let mut seen = Vec::new();
        for (module, path) in files(&dir) {
            let Some(own) = rank(&module) else {
                broken.push(format!(
                    "{}: module `{module}` is not in the `{name}` line",
                    path.display()
                ));
                continue;
            };
            seen.push(module.clone());
            let text = std::fs::read_to_string(&path).unwrap();
            for prefix in &prefixes {
                for used in named(&text, prefix) {
                    let used = reexported.get(&used).cloned().unwrap_or(used);
                    // Items of the crate root itself (`crate::hostname`), or of this module.
                    let Some(theirs) = rank(&used) else { continue };
                    checked += 1;
                    if theirs > own {
                        broken.push(format!(
                            "{}: `{module}` imports `{used}`, which `{name}` lists above it",
                            path.strip_prefix(root()).unwrap().display()
                        ));
                    }
                }
            }
        }
        for m in &order {
            assert!(
                seen.contains(m),
                "ARCHITECTURE.md lists `{m}` under `{name}`, which has no such module"
            );
        }
    }
    assert!(checked > 100, "the scan found the imports ({checked})");
    broken.sort();
    broken.dedup();
    assert!(
        broken.is_empty(),
        "imports against the layers:\n{}",
        broken.join("\n")
    );
}

#[test]
fn each_crate_depends_only_on_the_crates_below_it() {
    let (_, order) = layers()
        .into_iter()
        .find(|(n, _)| n == "crates")
        .expect("a `crates` line");
    for (i, krate) in order.iter().enumerate() {
        let manifest = if krate == "dbward" {
            root().join("Cargo.toml")
        } else {
            root().join(krate).join("Cargo.toml")
        };
        let text = std::fs::read_to_string(&manifest).unwrap();
        let deps = text
            .split("\n[dependencies]\n")
            .nth(1)
            .expect("a [dependencies] table")
            .split("\n[")
            .next()
            .unwrap();
        for (j, other) in order.iter().enumerate() {
            let depends = deps
                .lines()
                .any(|l| l.starts_with(&format!("{other} = {{ path")));
            assert!(
                !(depends && j >= i),
                "{krate} depends on {other}, which the crates line lists at or above it"
            );
        }
    }
}

#[test]
fn only_main_writes_stdout() {
    let mut writers = Vec::new();
    for dir in [
        "src",
        "dbconn/src",
        "migrator/src",
        "backup/src",
        "restore-drill/src",
    ] {
        for (_, path) in files(&root().join(dir)) {
            let text = std::fs::read_to_string(&path).unwrap();
            // `println!`, `print!` and `io::stdout`, not `eprintln!` or `eprint!` (stderr).
            let writes = ["println!", "print!(", "io::stdout"].iter().any(|w| {
                text.match_indices(w).any(|(at, _)| {
                    !text[..at]
                        .chars()
                        .next_back()
                        .is_some_and(|c| c.is_alphanumeric() || c == '_')
                })
            });
            if writes {
                writers.push(path.strip_prefix(root()).unwrap().display().to_string());
            }
        }
    }
    let main = std::fs::read_to_string(root().join("src/main.rs")).unwrap();
    assert!(main.contains("io::stdout"), "main writes the result");
    assert!(
        writers.is_empty(),
        "stdout written outside src/main.rs: {writers:?}"
    );
}

/// What only a library crate does: talk to a database, run a server's tools, move or remove
/// directories. The binary decides and reports; it never does them itself.
const DATABASE_WORK: [&str; 9] = [
    ".client()",
    "tokio_postgres",
    "rusqlite",
    "batch_execute",
    "query_opt(",
    "query_one(",
    "pg_ctl",
    "remove_dir_all",
    "fs::rename(",
];

/// The files under `dir` that do [`DATABASE_WORK`] (comments left out), with what they do.
fn doing_database_work(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for (_, path) in files(dir) {
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            let code = line.split("//").next().unwrap();
            for w in DATABASE_WORK {
                if code.contains(w) {
                    found.push(format!(
                        "{}: {w}",
                        path.strip_prefix(root()).unwrap().display()
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn the_binary_does_no_database_or_cluster_work() {
    // The scan sees such work where it is: in the library crates.
    let in_backup = doing_database_work(&root().join("backup/src"));
    assert!(
        in_backup.iter().any(|f| f.contains(".client()"))
            && in_backup.iter().any(|f| f.contains("pg_ctl")),
        "the scan finds the libraries' database work: {in_backup:?}"
    );
    let in_binary = doing_database_work(&root().join("src"));
    assert!(
        in_binary.is_empty(),
        "database or cluster work in the binary (it belongs in a library crate):\n{}",
        in_binary.join("\n")
    );
}

/// The product contract is docs/contract.md; nothing points at a design document the
/// repository does not have.
#[test]
fn docs_point_at_files_that_exist() {
    assert!(root().join("docs/contract.md").is_file());
    let mut citing = Vec::new();
    let mut read = 0;
    let mut stack = vec![root()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    stack.push(p);
                }
                continue;
            }
            if !["rs", "md", "sh", "py", "toml"]
                .iter()
                .any(|x| p.extension().is_some_and(|e| e == *x))
                // Tests may name it to assert it is absent.
                || p.starts_with(root().join("tests"))
            {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            read += 1;
            if text.contains(&format!("{}.md", "DESIGN")) {
                citing.push(p.strip_prefix(root()).unwrap().display().to_string());
            }
        }
    }
    assert!(read > 50, "the walk read the sources ({read})");
    assert!(
        citing.is_empty(),
        "files citing a DESIGN.md that does not exist: {citing:?}"
    );
}

/// No function of the workspace's sources is longer than 150 lines (from its `fn` line to
/// its closing brace, test modules included): long ones are split at their natural steps.
#[test]
fn no_function_is_longer_than_150_lines() {
    const LIMIT: usize = 150;
    let mut long = Vec::new();
    let mut seen = 0;
    for dir in [
        "src",
        "dbconn/src",
        "migrator/src",
        "backup/src",
        "restore-drill/src",
    ] {
        for (_, path) in files(&root().join(dir)) {
            let text = std::fs::read_to_string(&path).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let body = line.trim_start();
                let indent = line.len() - body.len();
                let head = body
                    .strip_prefix("pub ")
                    .or_else(|| body.strip_prefix("pub(crate) "))
                    .unwrap_or(body);
                let head = head.strip_prefix("async ").unwrap_or(head);
                if !head.starts_with("fn ") {
                    continue;
                }
                seen += 1;
                let close = format!("{}}}", " ".repeat(indent));
                let end = lines[i + 1..]
                    .iter()
                    .position(|l| l.trim_end() == close)
                    .map(|n| i + 1 + n);
                if let Some(end) = end {
                    if end - i + 1 > LIMIT {
                        let name = head[3..].split(['(', '<']).next().unwrap_or("?");
                        long.push(format!(
                            "{}:{} {name}: {} lines",
                            path.strip_prefix(root()).unwrap().display(),
                            i + 1,
                            end - i + 1
                        ));
                    }
                }
            }
        }
    }
    assert!(seen > 500, "the scan found the functions ({seen})");
    assert!(
        long.is_empty(),
        "functions over {LIMIT} lines:\n{}",
        long.join("\n")
    );
}

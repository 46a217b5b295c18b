//! The several-database form of the config file: `[[databases]]` entries, each a `name` and any
//! setting of the single-database form (`url`, `migrate_url`, `migrations` and the table lock
//! waits of `[database]` written directly in the entry; `[databases.store]`,
//! `[databases.health]`, `[databases.drill]`, `[databases.schedule]`, ... as sections), laid
//! over the file's top level: what an entry does not set, it inherits.

use std::path::Path;

use toml::{Table, Value};

use super::{FileConfig, SettingsError};

/// One database's config: the single-database form (`name` `None`), or an entry laid over the
/// top level.
pub(super) struct Entry {
    pub name: Option<String>,
    pub config: FileConfig,
    /// The entry sets its own `store.url` / `store.mirrors` (not inherited from the top level,
    /// which the environment's and the command line's store stand in for).
    pub own_store: bool,
    pub own_mirrors: bool,
}

/// The keys of `[database]`, written directly in an entry.
const DATABASE_KEYS: [&str; 5] = [
    "url",
    "migrate_url",
    "migrations",
    "lock_timeout",
    "table_lock_timeout",
];

/// The config file `text` (at `path`) as one config per database.
pub(super) fn read(path: &Path, text: &str) -> Result<Vec<Entry>, SettingsError> {
    let said =
        |e: &dyn std::fmt::Display| SettingsError(format!("config file {}: {e}", path.display()));
    let mut top: Table = toml::from_str(text).map_err(|e| said(&e))?;
    let Some(entries) = top.remove("databases") else {
        // The single-database form, read as before (its errors name line and column).
        let config = toml::from_str(text).map_err(|e| said(&e))?;
        return Ok(vec![Entry {
            name: None,
            config,
            own_store: false,
            own_mirrors: false,
        }]);
    };
    let Value::Array(entries) = entries else {
        return Err(said(
            &"`databases` is a list of tables: write each database as a [[databases]] entry",
        ));
    };
    if entries.is_empty() {
        return Err(said(&"[[databases]] lists no database"));
    }
    // The top level alone must read too: a typo there would otherwise be named once per entry.
    Value::Table(top.clone())
        .try_into::<FileConfig>()
        .map_err(|e| said(&format!("top level: {e}")))?;
    let mut out: Vec<Entry> = Vec::new();
    for entry in entries {
        let Value::Table(mut entry) = entry else {
            return Err(said(&"each [[databases]] entry is a table"));
        };
        let name = match entry.remove("name") {
            Some(Value::String(n)) if valid_name(&n) => n,
            Some(Value::String(n)) => {
                return Err(said(&format!(
                    "[[databases]] name `{n}`: use letters, digits, `-`, `_` and `.` (it names the database in --db, unit instances and metrics files)"
                )))
            }
            _ => return Err(said(&"a [[databases]] entry has no `name`")),
        };
        if out.iter().any(|e| e.name.as_deref() == Some(name.as_str())) {
            return Err(said(&format!(
                "two [[databases]] entries are named `{name}`"
            )));
        }
        let own = |key: &str| entry.get("store").and_then(|t| t.get(key)).is_some();
        let (own_store, own_mirrors) = (own("url"), own("mirrors"));
        let config = lay_over(&top, entry, &name)
            .try_into::<FileConfig>()
            .map_err(|e| said(&format!("[[databases]] `{name}`: {e}")))?;
        out.push(Entry {
            name: Some(name),
            config,
            own_store,
            own_mirrors,
        });
    }
    Ok(out)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The top level with `entry` laid over it: `[database]`'s keys from the entry's own, its
/// sections merged key by key. A drill metrics file the entry inherits gets the entry's name
/// (`dbward.prom` → `dbward-NAME.prom`): one file per database, none overwriting another's.
fn lay_over(top: &Table, entry: Table, name: &str) -> Value {
    let mut merged = top.clone();
    let mut over = Table::new();
    for (k, v) in entry {
        if DATABASE_KEYS.contains(&k.as_str()) {
            let db = over
                .entry("database")
                .or_insert_with(|| Value::Table(Table::new()));
            if let Value::Table(t) = db {
                t.insert(k, v);
            }
        } else {
            over.insert(k, v);
        }
    }
    let own_metrics = over.get("drill").and_then(|d| d.get("metrics")).is_some();
    merge(&mut merged, over);
    if !own_metrics {
        if let Some(Value::Table(drill)) = merged.get_mut("drill") {
            if let Some(Value::String(m)) = drill.get("metrics") {
                let m = suffixed(m, name);
                drill.insert("metrics".into(), Value::String(m));
            }
        }
    }
    Value::Table(merged)
}

fn merge(base: &mut Table, over: Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// `dir/dbward.prom` → `dir/dbward-NAME.prom`.
fn suffixed(path: &str, name: &str) -> String {
    let (dir, file) = match path.rsplit_once('/') {
        Some((d, f)) => (format!("{d}/"), f),
        None => (String::new(), path),
    };
    match file.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{dir}{stem}-{name}.{ext}"),
        _ => format!("{dir}{file}-{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_inherit_the_top_level_and_override_it_key_by_key() {
        let text = r#"
state_dir = "/var/lib/dbward"
[store]
url = "file:///srv/backups"
[drill]
metrics = "/var/lib/node_exporter/textfile/dbward.prom"
max_rto = "10m"
[[databases]]
name = "app"
url = "sqlite:/var/lib/app/app.db"
migrations = "/opt/app/migrations"
[[databases]]
name = "jobs"
url = "sqlite:/var/lib/app/jobs.db"
[databases.drill]
max_rto = "1m"
"#;
        let entries = read(Path::new("x.toml"), text).unwrap();
        assert_eq!(entries.len(), 2);
        let (app, jobs) = (&entries[0].config, &entries[1].config);
        assert_eq!(
            app.database.url.as_deref(),
            Some("sqlite:/var/lib/app/app.db")
        );
        assert_eq!(app.store.url.as_deref(), Some("file:///srv/backups"));
        assert_eq!(
            app.drill.metrics.as_deref(),
            Some(Path::new("/var/lib/node_exporter/textfile/dbward-app.prom"))
        );
        assert_eq!(jobs.drill.max_rto.as_deref(), Some("1m"));
        assert_eq!(jobs.database.migrations, None);
        assert_eq!(
            jobs.drill.metrics.as_deref(),
            Some(Path::new(
                "/var/lib/node_exporter/textfile/dbward-jobs.prom"
            ))
        );
    }

    #[test]
    fn an_entry_without_a_name_a_name_twice_and_an_unknown_key_are_named() {
        let bad = |t: &str| read(Path::new("x.toml"), t).err().unwrap().0;
        assert!(bad("[[databases]]\nurl = \"sqlite:a.db\"\n").contains("no `name`"));
        assert!(bad("[[databases]]\nname = \"a\"\n[[databases]]\nname = \"a\"\n").contains("two"));
        let e = bad("[[databases]]\nname = \"a\"\nurll = \"x\"\n");
        assert!(e.contains("`a`") && e.contains("urll"), "{e}");
        assert!(bad("[[databases]]\nname = \"a/b\"\n").contains("letters"));
    }
}

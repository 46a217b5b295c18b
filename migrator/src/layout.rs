//! How each migration tool names its files and where a file's up part is: a folder is read as
//! the tool that wrote it lays it out, so a team that adopts dbward goes on writing files the
//! way it did.
//!
//! | layout | a migration | its up part |
//! |---|---|---|
//! | dbward (refinery, Flyway) | `V<version>__<name>.sql`, `R__<name>.sql` | the file |
//! | sqlx | `<version>_<name>.sql` | the file |
//! | up/down (golang-migrate, sqlx reversible) | `<version>_<name>.up.sql` (`.down.sql` beside it) | the file |
//! | goose | `<version>_<name>.sql` with `-- +goose Up` | before `-- +goose Down` |
//! | dbmate | `<version>_<name>.sql` with `-- migrate:up` | before `-- migrate:down` |
//! | diesel | `<version>_<name>/up.sql` (`down.sql`, `metadata.toml` beside it) | the file |
//!
//! Down parts are never run. A folder holds one layout: files of two are named as a problem.

use std::path::Path;

/// The layout a migration file is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// `V<version>__<name>.sql` and `R__<name>.sql`: refinery's and Flyway's names.
    Dbward,
    /// `<version>_<name>.sql`, the whole file: sqlx.
    Sqlx,
    /// `<version>_<name>.up.sql`: golang-migrate, and sqlx's reversible migrations.
    UpDown,
    /// `<version>_<name>.sql` with `-- +goose Up` / `-- +goose Down` sections.
    Goose,
    /// `<version>_<name>.sql` with `-- migrate:up` / `-- migrate:down` sections.
    Dbmate,
    /// `<version>_<name>/up.sql`.
    Diesel,
}

impl Layout {
    /// How the layout is named to the operator.
    pub fn describe(self) -> &'static str {
        match self {
            Layout::Dbward => "V<version>__<name>.sql (dbward, refinery, Flyway)",
            Layout::Sqlx => "<version>_<name>.sql (sqlx)",
            Layout::UpDown => "<version>_<name>.up.sql (golang-migrate, sqlx reversible)",
            Layout::Goose => "<version>_<name>.sql with -- +goose Up (goose)",
            Layout::Dbmate => "<version>_<name>.sql with -- migrate:up (dbmate)",
            Layout::Diesel => "<version>_<name>/up.sql (diesel)",
        }
    }
}

/// What a file's path says it is.
#[derive(Debug, PartialEq, Eq)]
pub enum Named<'a> {
    /// Not a migration (a README, a down part, diesel's `metadata.toml`): not read.
    Other,
    /// `V<version>__<name>.sql`; `text` for a version with parts (Flyway's `V1.1__`, `V1_1__`),
    /// whose `version` is then its key ([`dbconn::history::dotted_key`]).
    Versioned {
        version: i64,
        name: &'a str,
        text: Option<String>,
    },
    /// `R__<name>.sql`.
    Repeatable { name: &'a str },
    /// A file of another tool's layout: [`Layout::Sqlx`] here stands for every
    /// `<version>_<name>.sql` file until its text says goose or dbmate ([`sections`]).
    Tool {
        layout: Layout,
        version: i64,
        name: &'a str,
    },
}

/// The names every layout accepts, for a message about a file that matches none.
pub const EXPECTED: &str = "expected V<version>__<name>.sql or R__<name>.sql (dbward, refinery, Flyway), <version>_<name>.sql (sqlx, goose, dbmate), <version>_<name>.up.sql (golang-migrate, sqlx reversible) or <version>_<name>/up.sql (diesel)";

/// Reads a `.sql` file's name (and, for diesel, its folder's). `Err` names what is wrong with a
/// name that looks like a migration's and is not one; a file is never skipped for its name.
pub fn name(path: &Path) -> Result<Named<'_>, String> {
    let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
        return Err("file name is not valid UTF-8".into());
    };
    let Some((stem, ext)) = file_name.rsplit_once('.') else {
        return Ok(Named::Other);
    };
    if ext == "go" && stem.starts_with(|c: char| c.is_ascii_digit()) && stem.contains('_') {
        return Err("a goose migration written in Go: dbward runs SQL files only; rewrite it as a `.sql` file with the same version".into());
    }
    if !ext.trim().eq_ignore_ascii_case("sql") {
        return Ok(Named::Other);
    }
    if ext != ext.trim() || stem != stem.trim() {
        return Err(format!(
            "the name {file_name:?} has whitespace around it; remove it (a migration is never skipped for its name)"
        ));
    }
    if ext != "sql" {
        return Err(format!("extension `.{ext}` must be lowercase `.sql`"));
    }
    if stem == "up" || stem == "down" {
        return diesel(path, stem);
    }
    if stem.starts_with(|c: char| c.is_ascii_digit()) {
        return tool(stem);
    }
    dbward(stem)
}

/// `<version>_<name>`, `<version>_<name>.up` or `<version>_<name>.down`.
fn tool(stem: &str) -> Result<Named<'_>, String> {
    let (rest, layout) = match stem.rsplit_once('.') {
        Some((rest, "up")) => (rest, Layout::UpDown),
        Some((_, "down")) => return Ok(Named::Other),
        _ => (stem, Layout::Sqlx),
    };
    let Some((digits, name)) = rest.split_once('_') else {
        return Err(format!("no `_` between version and name; {EXPECTED}"));
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
        return Err(format!(
            "`{digits}` is not a whole-number version followed by `_<name>`; {EXPECTED}"
        ));
    }
    Ok(Named::Tool {
        layout,
        version: version(digits)?,
        name,
    })
}

/// diesel's `<version>_<name>/up.sql`: the version is the folder name's part before the first
/// `_`, dashes removed (`2017-01-01-000000_create_users` is 20170101000000), as diesel reads it.
fn diesel<'a>(path: &'a Path, stem: &str) -> Result<Named<'a>, String> {
    if stem == "down" {
        return Ok(Named::Other);
    }
    let dir = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("up.sql outside a `<version>_<name>` folder; {EXPECTED}"))?;
    let (stamp, name) = dir.split_once('_').ok_or_else(|| {
        format!("up.sql in folder `{dir}`, which is not `<version>_<name>`; {EXPECTED}")
    })?;
    let digits: String = stamp.chars().filter(|c| *c != '-').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
        return Err(format!(
            "up.sql in folder `{dir}`, whose version `{stamp}` is not digits and dashes; {EXPECTED}"
        ));
    }
    Ok(Named::Tool {
        layout: Layout::Diesel,
        version: version(&digits)?,
        name,
    })
}

/// A version of digits; at most `i64::MAX` (timestamps fit many times over).
fn version(digits: &str) -> Result<i64, String> {
    digits
        .parse()
        .map_err(|_| format!("version {digits} is larger than {}", i64::MAX))
}

/// `V12__add_users` → V12 "add_users"; `R__views` → R "views". Stricter than refinery's
/// unanchored pattern, which would read `V1__add-users` as a migration named `add`.
fn dbward(stem: &str) -> Result<Named<'_>, String> {
    const V: &str = "expected V<version>__<name>.sql (e.g. V3__add_orders.sql) or R__<name>.sql (a repeatable migration), with a name of letters, digits and underscores";
    let name_ok =
        |name: &str| !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_');
    if let Some(name) = stem.strip_prefix("R__") {
        if !name_ok(name) {
            return Err(format!(
                "name `{name}` has characters other than letters, digits and `_`; {V}"
            ));
        }
        return Ok(Named::Repeatable { name });
    }
    if stem.starts_with('U') {
        return Err(
            "a `U` file (refinery's unversioned migrations, Flyway's undo migrations) is not run by dbward; rename it to V<version>__<name>.sql, or move an undo file out of the folder"
                .into(),
        );
    }
    let rest = stem
        .strip_prefix('V')
        .ok_or_else(|| format!("name does not start with V; {EXPECTED}"))?;
    let (digits, name) = rest
        .split_once("__")
        .ok_or_else(|| format!("no `__` between version and name; {V}"))?;
    if !name_ok(name) {
        return Err(format!(
            "name `{name}` has characters other than letters, digits and `_`; {V}"
        ));
    }
    if digits.contains(['.', '_']) {
        // Flyway's versions with parts: `1.1`, `1_1`, `2.0.1`.
        let parts = dbconn::history::version_parts(digits).ok_or_else(|| {
            format!("version `{digits}` is not whole numbers separated by `.` or `_`; {V}")
        })?;
        let (version, text) = dbconn::history::keyed(&parts)
            .ok_or_else(|| format!("version {digits} is larger than {}", i64::MAX))?;
        return Ok(Named::Versioned {
            version,
            name,
            text,
        });
    }
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("version `{digits}` is not a whole number; {V}"));
    }
    Ok(Named::Versioned {
        version: version(digits)?,
        name,
        text: None,
    })
}

/// A `<version>_<name>.sql` file's layout, read from its text: goose's or dbmate's section
/// markers, or neither (sqlx: the whole file). Returns the layout and the up part, which is
/// everything before the down marker (the up marker and any marker above it stay: they are
/// comments, and a `NO TRANSACTION` marker is read from there).
pub fn sections(sql: &str) -> Result<(Layout, &str), String> {
    let mut layout = None;
    let mut offset = 0;
    for line in sql.split_inclusive('\n') {
        let trimmed = line.trim();
        let found = if let Some(word) = trimmed.strip_prefix("-- +goose") {
            Some((Layout::Goose, word.trim().to_ascii_lowercase()))
        } else {
            trimmed
                .strip_prefix("-- migrate:")
                .map(|word| (Layout::Dbmate, word.trim().to_ascii_lowercase()))
        };
        if let Some((this, word)) = found {
            match layout {
                Some(l) if l != this => {
                    return Err("the file has both goose's and dbmate's section markers".into())
                }
                _ => layout = Some(this),
            }
            if word == "down" || word.starts_with("down ") {
                return up_before(this, sql, offset);
            }
            if this == Layout::Goose && word.starts_with("envsub on") {
                return Err("`-- +goose ENVSUB ON`: dbward does not substitute environment variables into migrations; write the values into the file".into());
            }
        }
        offset += line.len();
    }
    match layout {
        None => Ok((Layout::Sqlx, sql)),
        Some(l) => up_before(l, sql, sql.len()),
    }
}

/// The up part of a sectioned file: before `end`, which must follow an up marker.
fn up_before(layout: Layout, sql: &str, end: usize) -> Result<(Layout, &str), String> {
    let up = &sql[..end];
    let marker = match layout {
        Layout::Goose => "-- +goose up",
        _ => "-- migrate:up",
    };
    let has_up = up
        .lines()
        .any(|l| l.trim().to_ascii_lowercase().starts_with(marker));
    if !has_up {
        return Err(format!(
            "the file has no `{marker}` line before its down part; every {} migration starts its up part with one",
            if layout == Layout::Goose { "goose" } else { "dbmate" }
        ));
    }
    Ok((layout, up))
}

/// diesel's `metadata.toml` beside an `up.sql`: whether it says `run_in_transaction = false`.
pub fn diesel_no_transaction(up: &Path) -> Result<bool, String> {
    let Some(meta) = up.parent().map(|d| d.join("metadata.toml")) else {
        return Ok(false);
    };
    let text = match std::fs::read_to_string(&meta) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("cannot read {}: {e}", meta.display())),
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        if let Some((key, value)) = line.split_once('=') {
            if key.trim() == "run_in_transaction" {
                return match value.trim() {
                    "false" => Ok(true),
                    "true" => Ok(false),
                    other => Err(format!(
                        "{}: run_in_transaction = {other} is neither true nor false",
                        meta.display()
                    )),
                };
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(p: &str) -> Result<Named<'_>, String> {
        name(Path::new(p))
    }

    #[test]
    fn every_tools_names() {
        assert_eq!(
            named("V1__init.sql"),
            Ok(Named::Versioned {
                version: 1,
                name: "init",
                text: None
            })
        );
        assert_eq!(
            named("V0012__add_users_2.sql"),
            Ok(Named::Versioned {
                version: 12,
                name: "add_users_2",
                text: None
            })
        );
        assert_eq!(
            named("R__views.sql"),
            Ok(Named::Repeatable { name: "views" })
        );
        assert_eq!(
            named("20240101120000_create users.sql"),
            Ok(Named::Tool {
                layout: Layout::Sqlx,
                version: 20240101120000,
                name: "create users"
            })
        );
        assert_eq!(
            named("000001_create_users.up.sql"),
            Ok(Named::Tool {
                layout: Layout::UpDown,
                version: 1,
                name: "create_users"
            })
        );
        assert_eq!(named("000001_create_users.down.sql"), Ok(Named::Other));
        assert_eq!(
            named("m/2017-01-01-000000_create_users/up.sql"),
            Ok(Named::Tool {
                layout: Layout::Diesel,
                version: 20170101000000,
                name: "create_users"
            })
        );
        assert_eq!(
            named("m/2017-01-01-000000_create_users/down.sql"),
            Ok(Named::Other)
        );
        assert_eq!(named("README.md"), Ok(Named::Other));
        assert_eq!(named("main.go"), Ok(Named::Other));
        assert!(named("00003_backfill.go").unwrap_err().contains("Go"));
        for bad in [
            "V1__add-users.sql",
            "V1_init.sql",
            "v1__init.sql",
            "V__init.sql",
            "V1..1__x.sql",
            "V1.a__x.sql",
            "V1__.sql",
            "U1__x.sql",
            "init.sql",
            "1init.sql",
            "1_.sql",
            "99999999999999999999_big.sql",
            "V1__init.SQL",
            "m/notaversion/up.sql",
        ] {
            assert!(named(bad).is_err(), "{bad} must be refused");
        }
        // Flyway's versions with parts: `_` is `.`, trailing zero parts do not count.
        let dotted = |p| match named(p).unwrap() {
            Named::Versioned { version, text, .. } => (version, text),
            other => panic!("{other:?}"),
        };
        let (key, text) = dotted("V1.1__x.sql");
        assert_eq!(text.as_deref(), Some("1.1"));
        assert!(key < 0, "a key no whole number has");
        assert_eq!(dotted("V1_1__x.sql"), (key, text.clone()));
        assert_eq!(dotted("V1.1.0__x.sql"), (key, text));
        assert_eq!(dotted("V01.10__x.sql").1.as_deref(), Some("1.10"));
        assert_eq!(dotted("V2.0__x.sql"), (2, None), "2.0 is version 2");
    }

    #[test]
    fn sections_give_the_up_part() {
        let goose = "-- +goose NO TRANSACTION\n-- +goose Up\nCREATE INDEX CONCURRENTLY i ON t (a);\n-- +goose Down\nDROP INDEX i;\n";
        let (l, up) = sections(goose).unwrap();
        assert_eq!(l, Layout::Goose);
        assert_eq!(
            up,
            "-- +goose NO TRANSACTION\n-- +goose Up\nCREATE INDEX CONCURRENTLY i ON t (a);\n"
        );
        let dbmate = "-- migrate:up transaction:false\nVACUUM;\n\n-- migrate:down\n";
        assert_eq!(
            sections(dbmate).unwrap(),
            (
                Layout::Dbmate,
                "-- migrate:up transaction:false\nVACUUM;\n\n"
            )
        );
        assert_eq!(
            sections("-- migrate:up\nCREATE TABLE t (a int);\n").unwrap(),
            (Layout::Dbmate, "-- migrate:up\nCREATE TABLE t (a int);\n")
        );
        assert_eq!(
            sections("CREATE TABLE t (a int);\n").unwrap(),
            (Layout::Sqlx, "CREATE TABLE t (a int);\n")
        );
        assert!(sections("-- +goose Down\nDROP TABLE t;\n-- +goose Up\n").is_err());
        assert!(sections("-- +goose Up\n-- migrate:up\n").is_err());
        assert!(sections("-- +goose ENVSUB ON\n-- +goose Up\nSELECT '${X}';\n").is_err());
    }
}

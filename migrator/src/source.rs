//! Finding migrations on disk, in the layout of the tool that wrote them ([`crate::layout`]):
//! `V<version>__<name>.sql`, refinery's convention, with repeatable `R__<name>.sql` files
//! (Flyway's), re-applied whenever their text changes; or sqlx's, golang-migrate's, goose's,
//! dbmate's or diesel's files, of which only the up part is read.
//!
//! Unlike refinery's loader, nothing is skipped silently: a `.sql` file whose name does not
//! match, a duplicate version, a file that is not UTF-8, a folder mixing two layouts is an
//! error naming the file. An empty file is a placeholder (lint says so): it is applied, and
//! runs nothing. The checksum is refinery's own (name, version, up part), so a history table
//! written by refinery is read back without re-baselining.

use std::path::{Path, PathBuf};

use crate::layout::{self, Layout, Named};

/// Why the migrations folder cannot be used; nothing was run.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read the migrations folder {} (setting `database.migrations`, flag --migrations)", path.display())]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{} migration file problem(s), nothing was run:\n{}", problems.len(), list(problems))]
    Files { problems: Vec<FileProblem> },
}

/// One problem with one file in the migrations folder, found before any database work.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileProblem {
    /// Shown lossily (a name that is not UTF-8 is one of the problems reported).
    #[serde(serialize_with = "lossy")]
    pub file: PathBuf,
    pub problem: String,
}

fn lossy<S: serde::Serializer>(p: &std::path::Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

impl std::fmt::Display for FileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.problem)
    }
}

/// Items one per line, indented: the lists of problems in messages.
pub(crate) fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| format!("  {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One migration file, read and checked.
#[derive(Debug, Clone)]
pub struct MigrationFile {
    pub path: PathBuf,
    /// The version of a versioned file (a version with parts: its key,
    /// [`dbconn::history::dotted_key`]); 0 for a repeatable one.
    pub version: i64,
    /// A version with parts as written (Flyway's `1.1`); `None` for a whole number.
    pub version_text: Option<String>,
    pub name: String,
    /// What runs: the up part ([`layout::sections`]; the whole file in most layouts).
    pub sql: String,
    /// The whole file as read: what another tool's checksum covers.
    pub text: String,
    /// Versioned: refinery's SipHash-1-3 of name, version and up part. Repeatable: SipHash-1-3
    /// (keys 0, 0) of the name and text, computed the same way.
    pub checksum: u64,
    pub kind: Kind,
    pub layout: Layout,
    /// Marked to run outside a transaction ([`no_transaction_marker`]): one statement at a
    /// time, each recorded as it completes, between the atomic batches before and after it.
    pub no_transaction: bool,
}

/// Whether a file is applied once, in version order, or again whenever it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `V<version>__<name>.sql`: applied once; editing it afterwards is drift.
    Versioned,
    /// `R__<name>.sql`: applied after the versioned files of a batch, in name order, whenever it
    /// is new or its text changed. Its history is dbward's own table, not refinery's.
    Repeatable,
}

/// Every migration file of a folder.
#[derive(Debug, Clone, Default)]
pub struct Migrations {
    /// By version.
    pub versioned: Vec<MigrationFile>,
    /// By name.
    pub repeatable: Vec<MigrationFile>,
    /// The folder's layout; `None` for a folder without migrations.
    pub layout: Option<Layout>,
}

impl Migrations {
    /// Versioned then repeatable: every file, for lint.
    pub fn all(&self) -> impl Iterator<Item = &MigrationFile> {
        self.versioned.iter().chain(&self.repeatable)
    }
}

impl MigrationFile {
    /// 1-based (line, column) of a byte offset in the file's text, for error messages.
    pub fn line_col(&self, byte: usize) -> (usize, usize) {
        let before = self.sql.get(..byte).unwrap_or(&self.sql);
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    /// How the version is ordered ([`dbconn::history::order`]).
    pub fn order(&self) -> Vec<u64> {
        dbconn::history::order(self.version, self.version_text.as_deref())
    }

    /// `V3 add_orders`, `V1.1 fix` or `R__refresh_views`: how the migration is named in a
    /// short list.
    pub fn label(&self) -> String {
        match self.kind {
            Kind::Versioned => format!(
                "{} {}",
                dbconn::history::label(self.version, self.version_text.as_deref()),
                self.name
            ),
            Kind::Repeatable => format!("R__{}", self.name),
        }
    }

    /// `V3__add_orders.sql`: how the file is named in messages.
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// A line `\restrict <key>` or `\unrestrict <key>` exactly as pg_dump writes it.
pub fn is_pg_dump_restrict(line: &str) -> bool {
    let line = line.trim_end_matches(['\n', '\r']);
    let rest = line
        .strip_prefix("\\restrict ")
        .or_else(|| line.strip_prefix("\\unrestrict "));
    rest.is_some_and(|key| !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Reads every migration under `dir` (recursively, as refinery does): versioned files sorted by
/// version, repeatable ones by name.
pub fn discover(dir: &Path) -> Result<Migrations, SourceError> {
    let mut paths = Vec::new();
    walk(dir, &mut paths).map_err(|source| SourceError::Folder {
        path: dir.to_path_buf(),
        source,
    })?;
    paths.sort();

    let mut files: Vec<MigrationFile> = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        match read_one(&path) {
            Ok(Some(file)) => files.push(file),
            Ok(None) => {}
            Err(problem) => problems.push(FileProblem {
                file: path.clone(),
                problem,
            }),
        }
    }
    let (mut repeatable, mut files): (Vec<_>, Vec<_>) =
        files.into_iter().partition(|f| f.kind == Kind::Repeatable);
    repeatable.sort_by(|a, b| a.name.cmp(&b.name));
    problems.extend(same_key(
        &repeatable,
        |f| f.name.clone(),
        |f, before| {
            format!(
            "repeatable migration `{}` is also {}; every repeatable migration needs its own name",
            f.name,
            before.path.display()
        )
        },
    ));
    // Duplicates are found by key (two versions with parts cannot share one unseen), then the
    // files are put in version order.
    files.sort_by_key(|f| f.version);
    problems.extend(same_key(
        &files,
        |f| f.version,
        |f, before| {
            format!(
                "version {} is also used by {}; every migration needs its own version",
                dbconn::history::shown(f.version, f.version_text.as_deref()),
                before.path.display()
            )
        },
    ));
    files.sort_by_key(|f| f.order());
    let layout = files.iter().chain(&repeatable).map(|f| f.layout).next();
    if let Some(first) = files.iter().chain(&repeatable).next() {
        problems.extend(
            files
                .iter()
                .chain(&repeatable)
                .filter(|f| f.layout != first.layout)
                .map(|f| FileProblem {
                    file: f.path.clone(),
                    problem: format!(
                        "is written as {}, but {} is {}: a migrations folder holds one layout",
                        f.layout.describe(),
                        first.path.display(),
                        first.layout.describe()
                    ),
                }),
        );
    }
    if problems.is_empty() {
        Ok(Migrations {
            versioned: files,
            repeatable,
            layout,
        })
    } else {
        Err(SourceError::Files { problems })
    }
}

/// Each file of `sorted` whose key equals the one before it: a problem, worded by `message`
/// (the file, the one it collides with).
fn same_key<K: PartialEq>(
    sorted: &[MigrationFile],
    key: impl Fn(&MigrationFile) -> K,
    message: impl Fn(&MigrationFile, &MigrationFile) -> String,
) -> Vec<FileProblem> {
    sorted
        .windows(2)
        .filter(|pair| key(&pair[0]) == key(&pair[1]))
        .map(|pair| FileProblem {
            file: pair[1].path.clone(),
            problem: message(&pair[1], &pair[0]),
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        // Follows symlinks, as a deploy tree made of links should work.
        if std::fs::metadata(&path)?.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// `Ok(None)` for files that are not migrations (a README beside them, a down part).
fn read_one(path: &Path) -> Result<Option<MigrationFile>, String> {
    let named = layout::name(path)?;
    if named == Named::Other {
        return Ok(None);
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        format!(
            "not valid UTF-8 (first bad byte at offset {}); save the file as UTF-8",
            e.utf8_error().valid_up_to()
        )
    })?;
    if let Some(at) = text.find('\0') {
        return Err(format!(
            "contains a NUL byte at offset {at}; SQLite would silently stop reading the file there. Remove it (a file saved as UTF-16, or binary data pasted in?)"
        ));
    }
    let mut version_text = None;
    let (version, name, kind, layout, sql) = match named {
        Named::Other => return Ok(None),
        Named::Versioned {
            version,
            name,
            text: dotted,
        } => {
            version_text = dotted;
            (version, name, Kind::Versioned, Layout::Dbward, text.clone())
        }
        Named::Repeatable { name } => (0, name, Kind::Repeatable, Layout::Dbward, text.clone()),
        Named::Tool {
            layout: Layout::Sqlx,
            version,
            name,
        } => {
            let (layout, up) = layout::sections(&text)?;
            (version, name, Kind::Versioned, layout, up.to_string())
        }
        Named::Tool {
            layout,
            version,
            name,
        } => (version, name, Kind::Versioned, layout, text.clone()),
    };
    let checksum = match kind {
        Kind::Versioned => versioned_checksum(name, version, &sql),
        Kind::Repeatable => repeatable_checksum(name, &sql),
    };
    let no_transaction = no_transaction_marker(&sql).is_some()
        || (layout == Layout::Diesel && layout::diesel_no_transaction(path)?)
        // goose reads its annotation on any line of the file, not only the first.
        || (layout == Layout::Goose
            && sql
                .lines()
                .any(|l| l.trim().eq_ignore_ascii_case("-- +goose NO TRANSACTION")));
    Ok(Some(MigrationFile {
        path: path.to_path_buf(),
        version,
        version_text,
        name: name.to_string(),
        sql,
        text,
        checksum,
        kind,
        layout,
        no_transaction,
    }))
}

/// refinery's checksum of a versioned file: SipHash-1-3 (zero keys) of its name, version and
/// text, so a history refinery wrote reads back. A version that fits 32 bits is hashed as
/// refinery's default `i32`; a larger one as its `int8-versions` `i64`.
fn versioned_checksum(name: &str, version: i64, sql: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = siphasher::sip::SipHasher13::new();
    name.hash(&mut h);
    match i32::try_from(version) {
        Ok(v) => v.hash(&mut h),
        Err(_) => version.hash(&mut h),
    }
    sql.hash(&mut h);
    h.finish()
}

/// The markers that make a file non-transactional, each on the file's first line that is not
/// blank: dbward's own, and those of the tools a folder may come from (sqlx, goose, dbmate).
pub const NO_TRANSACTION_MARKERS: &[&str] = &[
    "-- dbward:no-transaction",
    "-- no-transaction",
    "-- +goose NO TRANSACTION",
    "-- migrate:up transaction:false",
];

/// The marker of a file that runs outside a transaction, when its first line that is not blank
/// is one of [`NO_TRANSACTION_MARKERS`] (surrounding whitespace aside).
pub fn no_transaction_marker(sql: &str) -> Option<&'static str> {
    let first = sql.lines().map(str::trim).find(|l| !l.is_empty())?;
    NO_TRANSACTION_MARKERS.iter().copied().find(|m| *m == first)
}

/// A repeatable file's checksum: SipHash-1-3 with zero keys (refinery's hasher) of its name and
/// text. Stable across Rust releases, unlike `std`'s `DefaultHasher`.
/// Line endings do not count: a checkout that turns LF into CRLF (or back) is the same file,
/// and re-applying a repeatable migration for it would be a deploy nobody asked for.
fn repeatable_checksum(name: &str, sql: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new();
    h.write(name.as_bytes());
    h.write_u8(0);
    for (i, line) in sql.split('\n').enumerate() {
        if i > 0 {
            h.write_u8(b'\n');
        }
        h.write(line.strip_suffix('\r').unwrap_or(line).as_bytes());
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeatable_checksum_ignores_line_endings_only() {
        let lf = repeatable_checksum("views", "CREATE VIEW v AS\nSELECT 1;\n");
        assert_eq!(
            lf,
            repeatable_checksum("views", "CREATE VIEW v AS\r\nSELECT 1;\r\n")
        );
        assert_ne!(
            lf,
            repeatable_checksum("views", "CREATE VIEW v AS\nSELECT 2;\n")
        );
        // Unchanged for a file without CR: histories already written stay valid.
        let mut h = siphasher::sip::SipHasher13::new();
        std::hash::Hasher::write(&mut h, b"views");
        std::hash::Hasher::write_u8(&mut h, 0);
        std::hash::Hasher::write(&mut h, b"CREATE VIEW v AS\nSELECT 1;\n");
        assert_eq!(lf, std::hash::Hasher::finish(&h));
    }

    #[test]
    fn checksum_is_refinerys() {
        // The value refinery computes for this name and text, so its history tables read back.
        let m =
            refinery_core::Migration::unapplied("V1__initial", "CREATE TABLE t (id int);").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("V1__initial.sql"),
            "CREATE TABLE t (id int);",
        )
        .unwrap();
        let files = discover(dir.path()).unwrap().versioned;
        assert_eq!(files[0].checksum, m.checksum());
    }

    #[test]
    fn problems_name_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("V1__a.sql"), "select 1;").unwrap();
        std::fs::write(p.join("V1__b.sql"), "select 1;").unwrap();
        std::fs::write(p.join("V2__add-x.sql"), "select 1;").unwrap();
        // An empty file is a placeholder, not a problem.
        std::fs::write(p.join("V3__empty.sql"), "  \n").unwrap();
        std::fs::write(p.join("V4__latin1.sql"), b"select '\xe9';").unwrap();
        std::fs::write(p.join("V5__spaced.sql "), "select 1;").unwrap();
        std::fs::write(p.join("README.md"), "notes").unwrap();
        let Err(SourceError::Files { problems }) = discover(p) else {
            panic!("expected file problems")
        };
        let names: Vec<String> = problems
            .iter()
            .map(|p| p.file.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "V2__add-x.sql",
                "V4__latin1.sql",
                "V5__spaced.sql ",
                "V1__b.sql"
            ]
        );
    }

    #[test]
    fn a_repeatable_name_used_twice_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("R__views.sql"), "select 1;").unwrap();
        std::fs::write(dir.path().join("sub/R__views.sql"), "select 2;").unwrap();
        let Err(SourceError::Files { problems }) = discover(dir.path()) else {
            panic!("expected file problems")
        };
        assert_eq!(problems.len(), 1);
        assert!(problems[0]
            .problem
            .contains("repeatable migration `views` is also"));
    }
}

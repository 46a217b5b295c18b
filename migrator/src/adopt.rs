//! Another migration tool's history, read and mapped to the folder's files: a database that
//! sqlx, Flyway, golang-migrate, goose, dbmate or diesel migrated is adopted with which files
//! it applied and (where the tool keeps them) their checksums, instead of a `baseline` that
//! forgets both. refinery's table is dbward's own history: nothing to adopt.
//!
//! Found automatically: when dbward's history is empty and exactly one other tool's table is
//! there, `migrate` records that tool's applied files in dbward's history (in one transaction,
//! before anything runs) and is the runner from then on. The other tool's table is only read,
//! never written: it stays as the record that its runner must not run against the database
//! again.

use std::collections::{BTreeMap, BTreeSet};

use crate::database::Database;
use crate::error::Error;
use crate::layout::Layout;
use crate::lint::Dialect;
use crate::source::{MigrationFile, Migrations};

/// A tool whose history dbward adopts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tool {
    Sqlx,
    Flyway,
    GolangMigrate,
    Goose,
    Dbmate,
    Diesel,
}

impl Tool {
    pub const ALL: [Tool; 6] = [
        Tool::Sqlx,
        Tool::Flyway,
        Tool::GolangMigrate,
        Tool::Goose,
        Tool::Dbmate,
        Tool::Diesel,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tool::Sqlx => "sqlx",
            Tool::Flyway => "Flyway",
            Tool::GolangMigrate => "golang-migrate",
            Tool::Goose => "goose",
            Tool::Dbmate => "dbmate",
            Tool::Diesel => "diesel",
        }
    }

    /// The history table, under the tool's default name.
    pub fn table(self) -> &'static str {
        match self {
            Tool::Sqlx => "_sqlx_migrations",
            Tool::Flyway => "flyway_schema_history",
            Tool::GolangMigrate | Tool::Dbmate => "schema_migrations",
            Tool::Goose => "goose_db_version",
            Tool::Diesel => "__diesel_schema_migrations",
        }
    }

    /// What must not run against the database once dbward is its runner.
    pub fn runner(self) -> &'static str {
        match self {
            Tool::Sqlx => "`sqlx migrate run` (nor `sqlx::migrate!` at the application's start)",
            Tool::Flyway => "`flyway migrate` (nor Flyway at the application's start)",
            Tool::GolangMigrate => "`migrate up`",
            Tool::Goose => "`goose up`",
            Tool::Dbmate => "`dbmate up` (nor `dbmate migrate`)",
            Tool::Diesel => {
                "`diesel migration run` (nor `embed_migrations!` at the application's start)"
            }
        }
    }

    /// The folder layouts this tool writes.
    fn layouts(self) -> &'static [Layout] {
        match self {
            Tool::Sqlx => &[Layout::Sqlx, Layout::UpDown],
            Tool::Flyway => &[Layout::Dbward],
            Tool::GolangMigrate => &[Layout::UpDown],
            Tool::Goose => &[Layout::Goose],
            Tool::Dbmate => &[Layout::Dbmate],
            Tool::Diesel => &[Layout::Diesel],
        }
    }

    /// golang-migrate's and dbmate's tables share a name: golang-migrate's has `dirty`.
    fn owns(self, columns: &[String]) -> bool {
        let has = |c: &str| columns.iter().any(|x| x.eq_ignore_ascii_case(c));
        match self {
            Tool::GolangMigrate => has("dirty"),
            Tool::Dbmate => has("version") && !has("dirty"),
            _ => true,
        }
    }
}

/// Where another tool's history stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Standing {
    /// dbward's history is empty: `migrate` records the tool's files in it first.
    Pending,
    /// dbward's history holds rows: adopted earlier (or a leftover); only reported.
    Adopted,
    /// A table of that name, but the folder is not in the tool's layout (another tool's
    /// table, such as Rails' `schema_migrations`, or a folder that moved on): only reported.
    Unrelated,
}

/// Another tool's history in the database.
#[derive(Debug)]
pub struct Adoption<'a> {
    pub tool: Tool,
    pub standing: Standing,
    /// The versioned files the tool applied, by version.
    pub files: Vec<&'a MigrationFile>,
    /// Repeatable files the tool applied with the text they have now (Flyway): not run again.
    pub repeatable: Vec<&'a MigrationFile>,
}

impl Adoption<'_> {
    /// The files as history rows, for a plan made before they are recorded.
    pub fn as_applied(&self) -> (Vec<dbconn::Applied>, Vec<dbconn::AppliedRepeatable>) {
        let on = format!("(by {})", self.tool.name());
        let versioned = self
            .files
            .iter()
            .map(|f| dbconn::Applied {
                version: f.version,
                name: f.name.clone(),
                applied_on: on.clone(),
                checksum: f.checksum,
                version_text: f.version_text.clone(),
            })
            .collect();
        let repeatable = self
            .repeatable
            .iter()
            .map(|f| dbconn::AppliedRepeatable {
                name: f.name.clone(),
                applied_on: on.clone(),
                checksum: f.checksum,
            })
            .collect();
        (versioned, repeatable)
    }

    /// What `status` says of it.
    pub fn describe(&self) -> String {
        let t = self.tool;
        match self.standing {
            Standing::Adopted => format!(
                "{}'s history ({}) is left as it was: dbward is this database's runner now; do not run {} against it",
                t.name(),
                t.table(),
                t.runner()
            ),
            Standing::Pending => format!(
                "{}'s history ({}): {} migration(s) applied by {}, adopted into dbward's history at the next `dbward migrate` (the table is left as it was)",
                t.name(),
                t.table(),
                self.files.len() + self.repeatable.len(),
                t.name()
            ),
            Standing::Unrelated => format!(
                "a table named like {}'s history ({}) is there, but the migrations folder is not in {}'s layout: not adopted, left alone",
                t.name(),
                t.table(),
                t.name()
            ),
        }
    }
}

/// The history a plan is made from: dbward's own, or, on a database another tool migrated and
/// dbward has not yet, that tool's (its files as rows, [`Adoption::as_applied`]).
pub struct History<'a> {
    pub applied: Vec<dbconn::Applied>,
    pub repeatable: Vec<dbconn::AppliedRepeatable>,
    pub adoption: Option<Adoption<'a>>,
}

impl History<'_> {
    /// Another tool's history that `migrate` records into dbward's before anything runs.
    pub fn to_adopt(&self) -> Option<&Adoption<'_>> {
        self.adoption
            .as_ref()
            .filter(|a| a.standing == Standing::Pending)
    }
}

pub async fn history<'a>(db: &mut Database, files: &'a Migrations) -> Result<History<'a>, Error> {
    let applied = db.applied().await?;
    let repeatable = db.applied_repeatable().await?;
    let adoption = find(db, files, !applied.is_empty() || !repeatable.is_empty()).await?;
    match &adoption {
        Some(a) if a.standing == Standing::Pending => {
            let (applied, repeatable) = a.as_applied();
            Ok(History {
                applied,
                repeatable,
                adoption,
            })
        }
        _ => Ok(History {
            applied,
            repeatable,
            adoption,
        }),
    }
}

/// Records what the tool applied in dbward's history, in one transaction, without running it.
/// The tool's own table is not touched.
pub async fn record(db: &mut Database, a: &Adoption<'_>) -> Result<(), Error> {
    let all: Vec<&MigrationFile> = a.files.iter().chain(&a.repeatable).copied().collect();
    db.record(&all).await?;
    tracing::info!(
        "adopted {}'s history: {} migration(s) it applied recorded as applied in dbward's history without running them; {} is left as it was, and {} must not run against this database again",
        a.tool.name(),
        all.len(),
        a.tool.table(),
        a.tool.runner()
    );
    Ok(())
}

/// Finds another tool's history. `own_rows`: whether dbward's history has rows (then nothing is
/// adopted, and the table found is only reported). Refuses a history that cannot be adopted
/// as it stands: a failed or dirty migration, a checksum that differs, a version no file has.
pub async fn find<'a>(
    db: &mut Database,
    files: &'a Migrations,
    own_rows: bool,
) -> Result<Option<Adoption<'a>>, Error> {
    let mut found = Vec::new();
    for tool in Tool::ALL {
        if let Some(columns) = db.columns(tool.table()).await? {
            if tool.owns(&columns) {
                found.push(tool);
            }
        }
    }
    let Some(&first) = found.first() else {
        return Ok(None);
    };
    let reported = |tool, standing| {
        Ok(Some(Adoption {
            tool,
            standing,
            files: Vec::new(),
            repeatable: Vec::new(),
        }))
    };
    // Only a tool that writes the folder's layout can have run its files.
    found.retain(|t| files.layout.is_some_and(|l| t.layouts().contains(&l)));
    let Some(&tool) = found.first() else {
        return reported(first, Standing::Unrelated);
    };
    if own_rows {
        return reported(tool, Standing::Adopted);
    }
    let refuse = |message: String| Error::Adopt {
        tool: tool.name(),
        table: tool.table(),
        message,
    };
    if found.len() > 1 {
        let names: Vec<String> = found
            .iter()
            .map(|t| format!("{}'s {}", t.name(), t.table()))
            .collect();
        return Err(refuse(format!(
            "the database holds the histories of {}, both tools that write this folder's layout, and dbward cannot tell which one is true. Once you have checked which one is stale, drop its table yourself (dbward never drops a table it did not create), then run dbward again",
            names.join(" and ")
        )));
    }
    let dialect = db.dialect();
    let history = read(db, tool, dialect).await.map_err(|e| match e {
        Fault::Refused(m) => refuse(m),
        Fault::Db(e) => e,
    })?;
    map(tool, history, files).map_err(refuse)
}

/// A history, read: the versions applied, each with the checksum the tool kept (if it keeps
/// one), and the repeatable scripts applied last with their checksums (Flyway).
#[derive(Debug, Default)]
struct Kept {
    versions: BTreeMap<i64, Option<String>>,
    /// Every version up to these parts is applied: golang-migrate's one row (its file must
    /// be there), Flyway's baseline (a version the folder need not have: files start after it).
    up_to: Option<UpTo>,
    repeatable: BTreeMap<String, String>,
}

#[derive(Debug)]
struct UpTo {
    parts: Vec<u64>,
    key: i64,
    file_needed: bool,
}

enum Fault {
    Refused(String),
    Db(Error),
}

impl From<Error> for Fault {
    fn from(e: Error) -> Fault {
        Fault::Db(e)
    }
}

async fn read(db: &mut Database, tool: Tool, dialect: Dialect) -> Result<Kept, Fault> {
    let pg = dialect == Dialect::Postgres;
    let mut h = Kept::default();
    match tool {
        Tool::Sqlx => {
            let hex = if pg {
                "encode(checksum, 'hex')"
            } else {
                "hex(checksum)"
            };
            let sql =
                format!("SELECT version, success, {hex} FROM _sqlx_migrations ORDER BY version");
            for row in db.text_rows(&sql).await? {
                let version = number(&row[0])?;
                if !truth(&row[1])? {
                    return Err(Fault::Refused(format!(
                        "sqlx recorded version {version} as not successful: it failed part way and may have left part of its changes. Fix the database by hand, delete that row from _sqlx_migrations, then run dbward again"
                    )));
                }
                h.versions.insert(version, row[2].clone());
            }
        }
        Tool::Flyway => flyway(db, &mut h).await?,
        Tool::GolangMigrate => {
            let rows = db
                .text_rows("SELECT version, dirty FROM schema_migrations")
                .await?;
            if rows.len() > 1 {
                return Err(Fault::Refused(format!(
                    "schema_migrations holds {} rows; golang-migrate keeps exactly one (the version the database is at). Was it edited by hand?",
                    rows.len()
                )));
            }
            if let Some(row) = rows.first() {
                let version = number(&row[0])?;
                if truth(&row[1])? {
                    return Err(Fault::Refused(format!(
                        "golang-migrate marked version {version} dirty: a migration failed part way and may have left part of its changes. Fix the database by hand, then `migrate force <version>` to the version it now holds; dbward adopts a clean state only"
                    )));
                }
                h.up_to = Some(UpTo {
                    parts: dbconn::history::order(version, None),
                    key: version,
                    file_needed: true,
                });
            }
        }
        Tool::Goose => {
            let rows = db
                .text_rows("SELECT version_id, is_applied FROM goose_db_version ORDER BY id")
                .await?;
            // The newest row of a version says whether it stands applied (goose's own rule).
            let mut last = BTreeMap::new();
            for row in rows {
                last.insert(number(&row[0])?, truth(&row[1])?);
            }
            for (version, applied) in last {
                // goose writes a row for version 0 when it creates its table.
                if applied && version != 0 {
                    h.versions.insert(version, None);
                }
            }
        }
        Tool::Dbmate | Tool::Diesel => {
            let sql = format!("SELECT version FROM {}", tool.table());
            for row in db.text_rows(&sql).await? {
                h.versions.insert(number(&row[0])?, None);
            }
        }
    }
    Ok(h)
}

/// Flyway's rows, in the order it installed them. A version row is `SQL` (with its CRC32) or a
/// `BASELINE` (everything up to it is there); repeatable rows have no version, and the newest
/// per script counts.
async fn flyway(db: &mut Database, h: &mut Kept) -> Result<(), Fault> {
    let rows = db
        .text_rows("SELECT version, type, script, checksum, success FROM flyway_schema_history ORDER BY installed_rank")
        .await?;
    for row in rows {
        let kind = row[1].clone().unwrap_or_default();
        let script = row[2].clone().unwrap_or_default();
        if !truth(&row[4])? {
            return Err(Fault::Refused(format!(
                "Flyway recorded {script} as failed: it may have left part of its changes. Fix the database by hand, then `flyway repair` (which removes the failed row); dbward adopts a clean history only"
            )));
        }
        match (kind.as_str(), &row[0]) {
            ("SCHEMA", _) => {}
            ("BASELINE", Some(v)) => {
                h.up_to = Some(UpTo {
                    parts: dbconn::history::version_parts(v.trim()).unwrap_or_default(),
                    key: flyway_version(v)?,
                    file_needed: false,
                })
            }
            ("SQL", Some(v)) => {
                h.versions.insert(flyway_version(v)?, row[3].clone());
            }
            ("SQL", None) => {
                // `script` is the path below Flyway's location; dbward matches by file name.
                let name = script.rsplit('/').next().unwrap_or_default().to_string();
                h.repeatable.insert(name, row[3].clone().unwrap_or_default());
            }
            (other, _) => {
                return Err(Fault::Refused(format!(
                    "{script} is a Flyway migration of type {other}; dbward runs SQL files only, so a history with Java or other migrations cannot be adopted"
                )))
            }
        }
    }
    Ok(())
}

/// A Flyway version as the folder's files are keyed ([`crate::layout`]): a whole number, or
/// the key of a version with parts.
fn flyway_version(v: &str) -> Result<i64, Fault> {
    let parts = dbconn::history::version_parts(v.trim()).ok_or_else(|| {
        Fault::Refused(format!(
            "Flyway version `{v}` is not whole numbers separated by `.`"
        ))
    })?;
    dbconn::history::keyed(&parts)
        .map(|(key, _)| key)
        .ok_or_else(|| Fault::Refused(format!("Flyway version {v} is larger than {}", i64::MAX)))
}

fn number(v: &Option<String>) -> Result<i64, Fault> {
    let text = v.as_deref().unwrap_or_default();
    text.trim().parse().map_err(|_| {
        Fault::Refused(format!(
            "version `{text}` is not a whole number of at most 19 digits"
        ))
    })
}

/// A boolean as PostgreSQL (`t`/`f`) or SQLite (`1`/`0`) writes it in text.
fn truth(v: &Option<String>) -> Result<bool, Fault> {
    match v.as_deref().map(str::trim) {
        Some("t" | "true" | "1" | "TRUE") => Ok(true),
        Some("f" | "false" | "0" | "FALSE") => Ok(false),
        other => Err(Fault::Refused(format!(
            "`{}` where a true/false column was expected",
            other.unwrap_or("NULL")
        ))),
    }
}

/// Each applied version to its file, each checksum the tool kept compared with the file's.
fn map(tool: Tool, h: Kept, files: &Migrations) -> Result<Option<Adoption<'_>>, String> {
    if tool == Tool::Flyway {
        // Flyway replaces `${name}` placeholders (on by default); dbward runs files as written.
        let placeholders: Vec<String> = files
            .all()
            .filter(|f| f.sql.contains("${"))
            .map(|f| f.path.display().to_string())
            .collect();
        if !placeholders.is_empty() {
            return Err(format!(
                "{} hold `${{...}}`, which Flyway replaces with its placeholders' values and dbward would run as written. Write the values into the files (Flyway's checksums then change: recompute them with `flyway repair`), then run dbward again",
                placeholders.join(", ")
            ));
        }
    }
    let by_version: BTreeMap<i64, &MigrationFile> =
        files.versioned.iter().map(|f| (f.version, f)).collect();
    let mut applied = Vec::new();
    if let Some(up_to) = &h.up_to {
        if up_to.file_needed && !by_version.contains_key(&up_to.key) {
            return Err(format!(
                "{} says the database is at version {}, and no file of the folder has that version. Point `database.migrations` at the folder {} ran",
                tool.name(),
                up_to.parts.iter().map(u64::to_string).collect::<Vec<_>>().join("."),
                tool.name()
            ));
        }
        applied.extend(files.versioned.iter().filter(|f| f.order() <= up_to.parts));
    }
    let mut missing = BTreeSet::new();
    for (version, kept) in &h.versions {
        let Some(f) = by_version.get(version) else {
            missing.insert(*version);
            continue;
        };
        if let Some(kept) = kept {
            let (ours, how) = checksum(tool, f);
            if !ours.eq_ignore_ascii_case(kept.trim()) {
                let sqlx_note = if tool == Tool::Sqlx {
                    " (or, if sqlx.toml sets `ignored-chars`, sqlx's checksums are not over the whole file, which dbward does not read yet)"
                } else {
                    ""
                };
                return Err(format!(
                    "{} was edited after {} applied it ({how} differs: {} recorded {kept}, the file gives {ours}). Put back the text {} ran; dbward adopts only files that match their history{sqlx_note}",
                    f.path.display(),
                    tool.name(),
                    tool.name(),
                    tool.name()
                ));
            }
        }
        if !applied
            .iter()
            .any(|a: &&MigrationFile| a.version == *version)
        {
            applied.push(f);
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "{} applied version(s) {} and no file of the folder has them. Put the files back (or point `database.migrations` at the folder {} ran)",
            tool.name(),
            missing.iter().map(i64::to_string).collect::<Vec<_>>().join(", "),
            tool.name()
        ));
    }
    applied.sort_by_key(|f| f.order());
    let repeatable = files
        .repeatable
        .iter()
        .filter(|f| {
            h.repeatable
                .get(&f.file_name())
                .is_some_and(|kept| checksum(tool, f).0 == kept.trim())
        })
        .collect();
    Ok(Some(Adoption {
        tool,
        standing: Standing::Pending,
        files: applied,
        repeatable,
    }))
}

/// The checksum `tool` keeps for a file, as its history table holds it in text, and its name.
fn checksum(tool: Tool, f: &MigrationFile) -> (String, &'static str) {
    match tool {
        Tool::Sqlx => {
            use sha2::Digest;
            let digest = sha2::Sha384::digest(f.text.as_bytes());
            (
                digest.iter().map(|b| format!("{b:02x}")).collect(),
                "sqlx's SHA-384",
            )
        }
        _ => (flyway_crc32(&f.text).to_string(), "Flyway's CRC32"),
    }
}

/// Flyway's checksum: CRC-32 over the file's lines without their line breaks (`\n`, `\r\n`
/// or `\r` end a line, as Java's `readLine` reads them), a byte-order mark at the start left
/// out, kept as a signed 32-bit number.
pub fn flyway_crc32(text: &str) -> i32 {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut crc = crc32fast::Hasher::new();
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest.find(['\n', '\r']).unwrap_or(rest.len());
        crc.update(&rest.as_bytes()[..end]);
        rest = &rest[end..];
        if let Some(r) = rest.strip_prefix("\r\n") {
            rest = r;
        } else if !rest.is_empty() {
            rest = &rest[1..];
        }
    }
    crc.finalize() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flyways_checksum_ignores_line_breaks_and_a_bom() {
        let lf = flyway_crc32("CREATE TABLE t (a int);\nINSERT INTO t VALUES (1);\n");
        assert_eq!(
            lf,
            flyway_crc32("CREATE TABLE t (a int);\r\nINSERT INTO t VALUES (1);")
        );
        assert_eq!(
            lf,
            flyway_crc32("\u{feff}CREATE TABLE t (a int);\rINSERT INTO t VALUES (1);\r")
        );
        assert_ne!(
            lf,
            flyway_crc32("CREATE TABLE t (a int);\nINSERT INTO t VALUES (2);\n")
        );
        // CRC-32 (IEEE) of "CREATE TABLE t (a int);INSERT INTO t VALUES (1);", signed.
        assert_eq!(
            lf,
            crc32fast::hash(b"CREATE TABLE t (a int);INSERT INTO t VALUES (1);") as i32
        );
        // Flyway reads an empty line as a line: it adds nothing.
        assert_eq!(flyway_crc32("a\n\nb"), crc32fast::hash(b"ab") as i32);
        assert_eq!(flyway_crc32(""), 0);
    }
}

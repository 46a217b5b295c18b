//! Static checks of migration files, on tokens rather than raw text: comments, string literals
//! and `$tag$` bodies are single tokens from sqlparser's tokenizer, so `COMMIT` in a comment or
//! `BEGIN ... END` in a function body never trips a rule.
//!
//! Errors are statements that break the one-transaction batch (they end it, cannot run inside
//! it, or are silently ignored inside it). Warnings are destructive statements.

use std::path::PathBuf;

use sqlparser::dialect::{Dialect as SqlDialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::tokenizer::{Location, Token, Tokenizer};

use crate::source::MigrationFile;

/// Which database's rules and tokenizer to use. `Any` when linting without `--database`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Any,
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    /// Not a problem: a statement that is not purely additive (the running release may not work
    /// on the schema it leaves). Only [`all`] returns these.
    Note,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub severity: Severity,
    /// A short stable name, e.g. `transaction-control`.
    pub rule: &'static str,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        };
        write!(
            f,
            "{}:{}:{}: {sev}[{}]: {}",
            self.file.display(),
            self.line,
            self.column,
            self.rule,
            self.message
        )
    }
}

/// Lints every file; findings come in file order, then line order. The notes on how dbward runs
/// a file (a placeholder, a wrapping transaction dropped, a pragma that does nothing) are kept;
/// the not-additive ones are `migrate`'s ([`all`]).
pub fn lint<'a>(
    files: impl IntoIterator<Item = &'a MigrationFile>,
    dialect: Dialect,
) -> Vec<Finding> {
    findings(files, dialect, |_| true)
        .into_iter()
        .filter(|f| f.rule != NOT_ADDITIVE)
        .collect()
}

/// The rule of the notes that say a statement is not purely additive.
pub const NOT_ADDITIVE: &str = "not-additive";

/// Every finding, notes included: what `migrate` reads once, for its gate (errors, warnings)
/// and for the batch's statements that are not purely additive (notes: the expand step of
/// expand/contract is new tables, views, nullable columns, columns with a default, non-unique
/// indexes, inserted rows; anything else may break the release that is still running on the
/// old schema).
pub fn all<'a>(
    files: impl IntoIterator<Item = &'a MigrationFile>,
    dialect: Dialect,
) -> Vec<Finding> {
    findings(files, dialect, |_| true)
}

fn findings<'a>(
    files: impl IntoIterator<Item = &'a MigrationFile>,
    dialect: Dialect,
    keep: impl Fn(Severity) -> bool + Copy,
) -> Vec<Finding> {
    files
        .into_iter()
        .flat_map(move |f| {
            let mut raw = if f.no_transaction {
                pass(&f.sql, dialect, true, WINDOW).findings
            } else {
                lint_sql(&f.sql, dialect)
            };
            if f.no_transaction && f.kind == crate::source::Kind::Repeatable {
                raw.insert(0, (Location { line: 1, column: 1 }, Severity::Error, "no-transaction", "a repeatable migration cannot run outside a transaction (it is re-applied whenever it changes, inside the batch); move what needs it to a versioned file".into()));
            }
            raw.into_iter()
                .filter(move |(_, severity, _, _)| keep(*severity))
                .map(move |(at, severity, rule, message)| Finding {
                    file: f.path.clone(),
                    line: at.line,
                    column: at.column,
                    severity,
                    rule,
                    message,
                })
        })
        .collect()
}

type RawFinding = (Location, Severity, &'static str, String);

/// A significant token: an unquoted word (uppercased) or a symbol, with where it starts.
#[derive(Debug)]
struct Tok {
    word: Option<String>,
    at: Location,
}

/// How much text is tokenized at a time. Memory stays at a few times this (tokens cost more
/// than the text they come from), whatever the file's size.
const WINDOW: usize = 1 << 20;

/// Lints one file's text, a window at a time. A window ends at its last top-level `;`: the text
/// after it is tokenized again with the next window, so a cut through a string, a comment or a
/// `$$` body never changes a token. Statements are checked as they complete and dropped.
pub fn lint_sql(sql: &str, dialect: Dialect) -> Vec<RawFinding> {
    lint_windowed(sql, dialect, WINDOW).findings
}

/// Where a file's own wrapping transaction is: its leading `BEGIN` statement and its trailing
/// `COMMIT` (each from its first token to its `;`, or to the end of the file), when those are
/// the file's only transaction control. dbward runs the file inside the batch's transaction
/// without them ([`crate::MigrationFile::executable_sql`]).
pub fn wrapping_transaction(
    sql: &str,
    dialect: Dialect,
) -> Option<[(Location, Option<Location>); 2]> {
    lint_windowed(sql, dialect, WINDOW).wrap
}

/// The file with the key of each pg_dump `\restrict <key>` / `\unrestrict <key>` line blanked
/// (same length: every location stays the file's). The key is random letters and digits, and
/// one such as `0B7...` does not tokenize (a binary literal's prefix); the command word stays,
/// for its warning.
fn restrict_keys_blanked(sql: &str) -> std::borrow::Cow<'_, str> {
    if !sql.contains("restrict ") {
        return std::borrow::Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    for l in sql.split_inclusive('\n') {
        if crate::source::is_pg_dump_restrict(l) {
            let (command, rest) = l.split_once(' ').unwrap_or((l, ""));
            out.push_str(command);
            out.push(' ');
            let key = rest.trim_end_matches(['\n', '\r']);
            out.extend(std::iter::repeat_n(' ', key.len()));
            out.push_str(&rest[key.len()..]);
        } else {
            out.push_str(l);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The text to execute: the file, less pg_dump's `\restrict <key>` / `\unrestrict <key>`
/// lines (psql meta-commands that current `pg_dump` releases write around a schema dump;
/// they are not SQL) and less the file's own wrapping `BEGIN` and `COMMIT` when they are its
/// only transaction control ([`wrapping_transaction`]: the batch's transaction
/// holds it). Each is blanked with spaces, so every byte offset, line and column stays the
/// file's. Returns the text and what was dropped, one line each (`12: ...`), to be said.
pub fn executable(f: &MigrationFile, dialect: Dialect) -> (std::borrow::Cow<'_, str>, Vec<String>) {
    let mut said = Vec::new();
    let mut blank: Vec<std::ops::Range<usize>> = Vec::new();
    let mut offset = 0;
    for (i, l) in f.sql.split_inclusive('\n').enumerate() {
        if crate::source::is_pg_dump_restrict(l) {
            let body = l.trim_end_matches(['\n', '\r']);
            blank.push(offset..offset + body.len());
            said.push(format!(
                "{}: dropping pg_dump's psql meta-command (not SQL)",
                i + 1
            ));
        }
        offset += l.len();
    }
    if let Some([begin, commit]) = wrapping_transaction(&f.sql, dialect) {
        for (from, to) in [begin, commit] {
            let start = byte_at(&f.sql, from.line, from.column);
            let end = to.map_or(f.sql.len(), |t| {
                let at = byte_at(&f.sql, t.line, t.column);
                at + f.sql[at..].chars().next().map_or(0, char::len_utf8)
            });
            blank.push(start..end);
        }
        said.push(format!(
            "{}: dropping the file's own BEGIN and its COMMIT (line {}): it runs inside the batch's transaction",
            begin.0.line, commit.0.line
        ));
    }
    if blank.is_empty() {
        return (std::borrow::Cow::Borrowed(&f.sql), said);
    }
    let mut text = f.sql.clone().into_bytes();
    for r in blank {
        for b in &mut text[r] {
            // Line breaks stay, so lines and columns do too.
            if *b != b'\n' && *b != b'\r' {
                *b = b' ';
            }
        }
    }
    // Only ASCII bytes of whole characters were replaced by spaces, or whole multi-byte
    // characters inside the blanked statements byte by byte: still UTF-8.
    let text = String::from_utf8(text).expect("spaces keep the text UTF-8");
    (std::borrow::Cow::Owned(text), said)
}

/// One statement of a non-transactional file, as it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Its text in the file: from its first token to its `;` (included).
    pub range: std::ops::Range<usize>,
    /// 1-based line of its first token.
    pub line: u64,
    /// It cannot run inside a transaction; any other statement runs in one, with its record.
    pub outside: bool,
    /// The index a concurrent build creates or drops, for the checks around it.
    pub index: Option<IndexChange>,
}

/// What a concurrent index statement does, with names as the file writes them (quoted ones
/// with their quotes, so PostgreSQL reads them back the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexChange {
    /// `CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] index ON [ONLY] table`: the index
    /// is made in the table's schema.
    Create { index: String, table: String },
    /// `DROP INDEX CONCURRENTLY [IF EXISTS] index` (one index).
    Drop { index: String },
}

impl Statement {
    pub fn text<'a>(&self, f: &'a MigrationFile) -> &'a str {
        &f.sql[self.range.clone()]
    }
}

/// The statements of a non-transactional file, in order: what dbward runs one at a time.
/// psql meta-commands (pg_dump's `\restrict` lines) are left out.
pub fn split(f: &MigrationFile, dialect: Dialect) -> Vec<Statement> {
    pass(&f.sql, dialect, true, WINDOW)
        .spans
        .into_iter()
        .filter_map(|span| {
            let start = byte_at(&f.sql, span.start.line, span.start.column);
            let end = span.semi.map_or(f.sql.len(), |t| {
                let at = byte_at(&f.sql, t.line, t.column);
                at + f.sql[at..].chars().next().map_or(0, char::len_utf8)
            });
            let text = &f.sql[start..end];
            if text.starts_with('\\') {
                return None;
            }
            let index = match dialect {
                Dialect::Sqlite => None,
                Dialect::Any | Dialect::Postgres => index_change(text),
            };
            Some(Statement {
                range: start..end,
                line: span.start.line,
                outside: span.outside,
                index,
            })
        })
        .collect()
}

/// Reads a concurrent index statement's names (see [`IndexChange`]).
fn index_change(text: &str) -> Option<IndexChange> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, text)
        .tokenize()
        .ok()?;
    let toks: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::EOF))
        .collect();
    let kw = |i: usize| match toks.get(i) {
        Some(Token::Word(w)) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
        _ => String::new(),
    };
    let ident = |i: usize| match toks.get(i) {
        Some(Token::Word(w)) => Some(match w.quote_style {
            Some(q) => format!("{q}{}{q}", w.value.replace(q, &format!("{q}{q}"))),
            None => w.value.clone(),
        }),
        _ => None,
    };
    // A dotted name from `i`, with the index after it.
    let chain = |mut i: usize| {
        let mut parts = vec![ident(i)?];
        while matches!(toks.get(i + 1), Some(Token::Period)) {
            parts.push(ident(i + 2)?);
            i += 2;
        }
        Some((parts.join("."), i + 1))
    };
    match kw(0).as_str() {
        "CREATE" => {
            let mut i = if kw(1) == "UNIQUE" { 2 } else { 1 };
            if kw(i) != "INDEX" || kw(i + 1) != "CONCURRENTLY" {
                return None;
            }
            i += 2;
            if kw(i) == "IF" {
                i += 3;
            }
            if kw(i) == "ON" {
                return None;
            }
            let index = ident(i)?;
            if kw(i + 1) != "ON" {
                return None;
            }
            i += 2;
            if kw(i) == "ONLY" {
                i += 1;
            }
            let (table, _) = chain(i)?;
            Some(IndexChange::Create { index, table })
        }
        "DROP" if kw(1) == "INDEX" && kw(2) == "CONCURRENTLY" => {
            let i = if kw(3) == "IF" { 5 } else { 3 };
            let (index, after) = chain(i)?;
            // One index only: a list is left to the database.
            (!matches!(toks.get(after), Some(Token::Comma))).then_some(IndexChange::Drop { index })
        }
        _ => None,
    }
}

/// The byte offset of a 1-based line and (character) column of `sql`.
fn byte_at(sql: &str, line: u64, column: u64) -> usize {
    let line_start: usize = sql
        .split_inclusive('\n')
        .take(line.saturating_sub(1) as usize)
        .map(str::len)
        .sum();
    line_start
        + sql[line_start..]
            .chars()
            .take(column.saturating_sub(1) as usize)
            .map(char::len_utf8)
            .sum::<usize>()
}

/// What one pass over a file finds.
#[derive(Debug)]
struct Linted {
    findings: Vec<RawFinding>,
    wrap: Option<[(Location, Option<Location>); 2]>,
    /// A non-transactional file's statements, in order (empty for any other file).
    spans: Vec<Span>,
}

/// Where one statement of a non-transactional file is, and whether it cannot run inside a
/// transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Span {
    start: Location,
    semi: Option<Location>,
    outside: bool,
}

/// The transaction control a file holds, as the pass meets it: whether its first statement is
/// a plain `BEGIN` (and where it runs), where its last plain `COMMIT` is, and how many
/// statements control the transaction.
#[derive(Default)]
struct TxControl {
    statements: usize,
    begin: Option<(Location, Option<Location>)>,
    /// The newest plain `COMMIT`/`END` and the statement count when it was met.
    commit: Option<((Location, Option<Location>), usize)>,
    control: usize,
}

impl TxControl {
    fn see(&mut self, stmt: &[Tok], semi: Option<Location>) {
        self.statements += 1;
        let w = |i: usize| stmt.get(i).and_then(|t| t.word.as_deref());
        let rest_is = |from: usize, allowed: &[&str]| {
            stmt.len() <= from + 1 && w(from).is_none_or(|x| allowed.contains(&x))
        };
        let plain_begin = match w(0) {
            Some("BEGIN") => {
                // SQLite's locking modes change nothing inside dbward's transaction.
                let from =
                    usize::from(matches!(w(1), Some("DEFERRED" | "IMMEDIATE" | "EXCLUSIVE")));
                rest_is(1 + from, &["TRANSACTION", "WORK"])
            }
            Some("START") => w(1) == Some("TRANSACTION") && stmt.len() == 2,
            _ => false,
        };
        let plain_commit =
            matches!(w(0), Some("COMMIT" | "END")) && rest_is(1, &["TRANSACTION", "WORK"]);
        let control = matches!(
            w(0),
            Some("BEGIN" | "COMMIT" | "END" | "ABORT" | "ROLLBACK")
        ) || (w(0) == Some("START") && w(1) == Some("TRANSACTION"));
        // `ROLLBACK TO` a savepoint is not the transaction's.
        let control = control
            && !(w(0) == Some("ROLLBACK") && stmt.iter().any(|t| t.word.as_deref() == Some("TO")));
        if control {
            self.control += 1;
        }
        let span = (stmt[0].at, semi);
        if plain_begin && self.statements == 1 {
            self.begin = Some(span);
        }
        if plain_commit {
            self.commit = Some((span, self.statements));
        }
    }

    /// The wrapping pair, when the first statement begins, the last commits, and nothing else
    /// controls the transaction.
    fn wrap(&self) -> Option<[(Location, Option<Location>); 2]> {
        let begin = self.begin?;
        let (commit, at) = self.commit?;
        (at == self.statements && at > 1 && self.control == 2).then_some([begin, commit])
    }
}

fn lint_windowed(sql: &str, dialect: Dialect, first_window: usize) -> Linted {
    pass(sql, dialect, false, first_window)
}

/// One pass over a file. A non-transactional one (`no_tx`) may hold what cannot run inside a
/// transaction, and its statements' places are kept ([`Linted::spans`]).
fn pass(sql: &str, dialect: Dialect, no_tx: bool, first_window: usize) -> Linted {
    let keys_blanked = restrict_keys_blanked(sql);
    let sql: &str = &keys_blanked;
    let d: &dyn SqlDialect = match dialect {
        Dialect::Sqlite => &SQLiteDialect {},
        Dialect::Any | Dialect::Postgres => &PostgreSqlDialect {},
    };
    let mut findings = Vec::new();
    let mut savepoints: Vec<String> = Vec::new();
    // Tables this file creates: empty, so nothing on them waits for a lock.
    let mut created: Vec<String> = Vec::new();
    let mut tx = TxControl::default();
    let mut spans = Vec::new();
    let mut pos = 0;
    // Where `pos` is in the file, 1-based: every location in a window is shifted by it.
    let mut base = Location { line: 1, column: 1 };
    let mut window = first_window;
    let mut buf = Vec::new();
    loop {
        let mut end = (pos + window).min(sql.len());
        while !sql.is_char_boundary(end) {
            end += 1;
        }
        let last = end == sql.len();
        let text = &sql[pos..end];
        buf.clear();
        let tokenized = Tokenizer::new(d, text).tokenize_with_location_into_buf(&mut buf);
        if let (true, Err(e)) = (last, &tokenized) {
            findings.push((
                shift(base, e.location),
                Severity::Error,
                "syntax",
                format!("cannot tokenize: {}", e.message),
            ));
            return Linted {
                findings,
                wrap: None,
                spans: Vec::new(),
            };
        }
        let mut stmts = statements(std::mem::take(&mut buf));
        // Before the last window, the statement after the last top-level `;` may be cut.
        let resume = if last {
            None
        } else {
            match stmts.iter().rposition(|(_, semi)| semi.is_some()) {
                Some(i) => {
                    let semi = stmts[i].1.expect("found by its `;`");
                    stmts.truncate(i + 1);
                    Some(semi)
                }
                None => {
                    // One statement longer than the window: take a larger one.
                    window *= 2;
                    continue;
                }
            }
        };
        for (stmt, semi) in &mut stmts {
            for t in stmt.iter_mut() {
                t.at = shift(base, t.at);
            }
            let semi = semi.map(|at| shift(base, at));
            tx.see(stmt, semi);
            let before = findings.len();
            check_statement(stmt, dialect, &mut savepoints, &mut created, &mut findings);
            if no_tx {
                // What cannot run inside a transaction is why the file has its marker.
                let mut outside = false;
                let mut i = before;
                while i < findings.len() {
                    let (_, severity, rule, _) = &findings[i];
                    if *severity == Severity::Error && OUTSIDE_RULES.contains(rule) {
                        findings.remove(i);
                        outside = true;
                    } else {
                        i += 1;
                    }
                }
                no_tx_checks(stmt, dialect, &mut findings);
                spans.push(Span {
                    start: stmt[0].at,
                    semi,
                    outside,
                });
            }
        }
        let Some(semi) = resume else {
            let mut linted = finish(findings, &tx, no_tx);
            if no_tx {
                no_tx_notes(&mut linted.findings, &spans);
                linted.spans = spans;
            }
            return linted;
        };
        // Resume right after that `;`.
        let line_start: usize = text
            .split_inclusive('\n')
            .take(semi.line as usize - 1)
            .map(str::len)
            .sum();
        let col_byte: usize = text[line_start..]
            .chars()
            .take(semi.column as usize)
            .map(char::len_utf8)
            .sum();
        base = shift(
            base,
            Location {
                line: semi.line,
                column: semi.column + 1,
            },
        );
        pos += line_start + col_byte;
        window = first_window;
    }
}

/// The pass's findings, with what is only known once the whole file was read: a file without a
/// statement is a placeholder, and a file wrapped in its own `BEGIN`/`COMMIT` has those two
/// dropped (notes, not errors).
fn finish(mut findings: Vec<RawFinding>, tx: &TxControl, no_tx: bool) -> Linted {
    if tx.statements == 0 {
        findings.push((
            Location { line: 1, column: 1 },
            Severity::Note,
            "placeholder",
            "the file holds no SQL (a placeholder, as projects that number their migrations across engines ship): it is recorded as applied and runs nothing".into(),
        ));
    }
    // A non-transactional file runs statement by statement: its BEGIN and COMMIT would be run.
    let wrap = tx.wrap().filter(|_| !no_tx);
    if let Some([begin, commit]) = wrap {
        findings.retain(|(at, _, rule, _)| {
            !(*rule == "transaction-control" && (*at == begin.0 || *at == commit.0))
        });
        findings.push((
            begin.0,
            Severity::Note,
            "wrapping-transaction",
            format!(
                "the file's own leading `BEGIN` and trailing `COMMIT` (line {}) are its only transaction control: dbward drops those two and runs the file inside the batch's one transaction",
                commit.0.line
            ),
        ));
        findings.sort_by_key(|(at, ..)| (at.line, at.column));
    }
    Linted {
        findings,
        wrap,
        spans: Vec::new(),
    }
}

/// The rules of statements that cannot run inside a transaction (or do nothing in one): errors
/// in a file that runs in the batch, allowed in a non-transactional one.
const OUTSIDE_RULES: &[&str] = &["no-transaction", "ignored-in-transaction"];

/// A non-transactional file's own rules: a concurrent index build must name its index, so that
/// an earlier attempt's INVALID index can be found and its validity checked.
fn no_tx_checks(stmt: &[Tok], dialect: Dialect, findings: &mut Vec<RawFinding>) {
    if dialect == Dialect::Sqlite {
        return;
    }
    let w = |i: usize| stmt.get(i).and_then(|t| t.word.as_deref());
    let from = if w(1) == Some("UNIQUE") { 2 } else { 1 };
    if w(0) == Some("CREATE") && w(from) == Some("INDEX") && w(from + 1) == Some("CONCURRENTLY") {
        let mut i = from + 2;
        if w(i) == Some("IF") {
            i += 3;
        }
        if w(i) == Some("ON") {
            findings.push((stmt[0].at, Severity::Error, "unnamed-concurrent-index", "name the index (`CREATE INDEX CONCURRENTLY name ON ...`): dbward finds an earlier attempt's INVALID index, and checks the new one is valid, by its name".into()));
        }
    }
}

/// The note every non-transactional file gets, and the warning for one whose marker buys
/// nothing (none of its statements needs to run outside a transaction).
fn no_tx_notes(findings: &mut Vec<RawFinding>, spans: &[Span]) {
    let at = Location { line: 1, column: 1 };
    findings.insert(0, (at, Severity::Note, "no-transaction", "marked to run outside a transaction: its statements run one at a time, each recorded as it completes, and a rerun resumes after the last completed one; the files before it are one atomic batch, those after it another".into()));
    if !spans.iter().any(|s| s.outside) && !spans.is_empty() {
        findings.insert(1, (at, Severity::Warning, "needless-no-transaction", "nothing in this file needs to run outside a transaction (`CREATE INDEX CONCURRENTLY`, `VACUUM`, ...); without the marker it would be part of the atomic batch".into()));
    }
}

/// A location in a window that starts at `base`, as a location in the file.
fn shift(base: Location, at: Location) -> Location {
    if at.line <= 1 {
        Location {
            line: base.line,
            column: base.column + at.column.saturating_sub(1),
        }
    } else {
        Location {
            line: base.line + at.line - 1,
            column: at.column,
        }
    }
}

/// Splits tokens into statements at top-level `;`, each with the location of the `;` that
/// ended it (none for a last statement without one). The bodies of SQLite triggers
/// (`CREATE TRIGGER ... BEGIN ...; END`) and of PostgreSQL `BEGIN ATOMIC ... END` functions hold
/// `;` of their own: inside them `BEGIN`/`CASE` ... `END` nest and `;` does not split. Only those
/// two forms open a block, so a column named `begin` cannot swallow the rest of the file.
fn statements(
    tokens: Vec<sqlparser::tokenizer::TokenWithSpan>,
) -> Vec<(Vec<Tok>, Option<Location>)> {
    // Significant tokens only; `None` word with `semi` for a `;`.
    let toks: Vec<(Tok, bool)> = tokens
        .into_iter()
        .filter_map(|t| match &t.token {
            Token::Whitespace(_) | Token::EOF => None,
            Token::SemiColon => Some((
                Tok {
                    word: None,
                    at: t.span.start,
                },
                true,
            )),
            // Kept as a word, so a schema-qualified name can be read (`public . users`).
            Token::Period => Some((
                Tok {
                    word: Some(".".into()),
                    at: t.span.start,
                },
                false,
            )),
            // A psql meta-command (`\restrict`, `\connect`): kept as the word `\`.
            Token::Backslash => Some((
                Tok {
                    word: Some("\\".into()),
                    at: t.span.start,
                },
                false,
            )),
            Token::Word(w) if w.quote_style.is_none() => Some((
                Tok {
                    word: Some(w.value.to_ascii_uppercase()),
                    at: t.span.start,
                },
                false,
            )),
            _ => Some((
                Tok {
                    word: None,
                    at: t.span.start,
                },
                false,
            )),
        })
        .collect();
    let word = |i: usize| toks.get(i).and_then(|(t, _)| t.word.as_deref());

    let mut out = Vec::new();
    let mut cur: Vec<Tok> = Vec::new();
    let mut depth = 0usize;
    let mut trigger = false;
    let mut meta_line: Option<u64> = None;
    for (i, (tok, semi)) in toks.iter().enumerate() {
        // A psql meta-command is one line, whatever follows it.
        if let Some(line) = meta_line {
            if tok.at.line != line {
                out.push((std::mem::take(&mut cur), None));
                meta_line = None;
            }
        }
        if cur.is_empty() && tok.word.as_deref() == Some("\\") {
            meta_line = Some(tok.at.line);
        }
        if *semi && depth == 0 {
            if !cur.is_empty() {
                out.push((std::mem::take(&mut cur), Some(tok.at)));
            } else if let Some(prev) = out.last_mut() {
                // `;;`: the boundary moves on.
                prev.1 = Some(tok.at);
            }
            trigger = false;
            continue;
        }
        if !cur.is_empty() {
            match tok.word.as_deref() {
                Some("TRIGGER") if cur[0].word.as_deref() == Some("CREATE") => trigger = true,
                Some("BEGIN") if depth > 0 || trigger || word(i + 1) == Some("ATOMIC") => {
                    depth += 1
                }
                Some("CASE") if depth > 0 => depth += 1,
                Some("END") if depth > 0 => depth -= 1,
                _ => {}
            }
        }
        cur.push(Tok {
            word: tok.word.clone(),
            at: tok.at,
        });
    }
    if !cur.is_empty() {
        out.push((cur, None));
    }
    out
}

fn check_statement(
    stmt: &[Tok],
    dialect: Dialect,
    savepoints: &mut Vec<String>,
    created: &mut Vec<String>,
    findings: &mut Vec<RawFinding>,
) {
    errors_of(stmt, dialect, savepoints, findings);
    warnings_of(stmt, findings);
    if dialect == Dialect::Postgres {
        lock_warnings_of(stmt, created, findings);
    }
    let at = stmt[0].at;
    if let Some(why) = not_additive_statement(stmt) {
        findings.push((at, Severity::Note, NOT_ADDITIVE, why));
    }
}

/// What breaks the batch's one transaction, or is silently ignored in it: errors.
fn errors_of(
    stmt: &[Tok],
    dialect: Dialect,
    savepoints: &mut Vec<String>,
    findings: &mut Vec<RawFinding>,
) {
    let w = |i: usize| stmt.get(i).and_then(|t| t.word.as_deref()).unwrap_or("");
    let has = |word: &str| stmt.iter().any(|t| t.word.as_deref() == Some(word));
    let find = |word: &str| stmt.iter().find(|t| t.word.as_deref() == Some(word));
    let at = stmt[0].at;
    let mut error = |at: Location, rule: &'static str, msg: String| {
        findings.push((at, Severity::Error, rule, msg))
    };
    const TX: &str = "dbward runs the whole batch in one transaction; remove it";
    const NO_TX: &str = "it cannot run inside a transaction, and dbward applies the batch in one transaction; run it outside dbward (after the deploy)";

    match w(0) {
        "\\" => {
            let command = w(1).to_ascii_lowercase();
            if command == "restrict" || command == "unrestrict" {
                findings.push((
                    at,
                    Severity::Warning,
                    "psql-meta-command",
                    format!("`\\{command}` is a psql meta-command that pg_dump writes, not SQL; dbward drops pg_dump's `\\restrict`/`\\unrestrict` lines when it applies the file"),
                ));
            } else {
                error(
                    at,
                    "psql-meta-command",
                    format!("`\\{command}` is a psql meta-command, not SQL: dbward runs SQL, not psql scripts; remove it (or write its SQL equivalent)"),
                );
            }
        }
        "BEGIN" | "COMMIT" | "END" | "ABORT" => error(
            at,
            "transaction-control",
            format!("`{}` ends or starts a transaction: {TX}", w(0)),
        ),
        "START" if w(1) == "TRANSACTION" => error(
            at,
            "transaction-control",
            format!("`START TRANSACTION` starts a transaction: {TX}"),
        ),
        "ROLLBACK" => {
            let to = stmt.iter().position(|t| t.word.as_deref() == Some("TO"));
            match to {
                Some(i) => {
                    let name = savepoint_name(stmt, i + 1);
                    if !savepoints.contains(&name) {
                        error(
                            at,
                            "savepoint",
                            format!(
                                "`ROLLBACK TO {name}` names a savepoint this file never declared"
                            ),
                        );
                    }
                }
                None => error(
                    at,
                    "transaction-control",
                    format!("`ROLLBACK` ends the transaction: {TX}"),
                ),
            }
        }
        "SAVEPOINT" => savepoints.push(savepoint_name(stmt, 1)),
        "RELEASE" => {
            let name = savepoint_name(stmt, 1);
            if !savepoints.contains(&name) {
                error(
                    at,
                    "savepoint",
                    format!("`RELEASE {name}` names a savepoint this file never declared"),
                );
            }
        }
        "VACUUM" => error(at, "no-transaction", format!("`VACUUM`: {NO_TX}")),
        "CREATE" | "DROP" => {
            let object = if w(1) == "UNIQUE" { w(2) } else { w(1) };
            if object == "INDEX" && has("CONCURRENTLY") {
                error(
                    find("CONCURRENTLY").unwrap().at,
                    "no-transaction",
                    format!("`{} INDEX CONCURRENTLY`: {NO_TX}", w(0)),
                );
            }
            if matches!(w(1), "DATABASE" | "TABLESPACE") {
                error(
                    at,
                    "no-transaction",
                    format!("`{} {}`: {NO_TX}", w(0), w(1)),
                );
            }
        }
        "REINDEX" => {
            if has("CONCURRENTLY") {
                error(
                    at,
                    "no-transaction",
                    format!("`REINDEX ... CONCURRENTLY`: {NO_TX}"),
                );
            } else if has("DATABASE") || has("SYSTEM") {
                error(
                    at,
                    "no-transaction",
                    format!("`REINDEX DATABASE/SYSTEM`: {NO_TX}"),
                );
            }
        }
        "ALTER" if w(1) == "SYSTEM" => {
            error(at, "no-transaction", format!("`ALTER SYSTEM`: {NO_TX}"))
        }
        "PRAGMA" if dialect != Dialect::Postgres => {
            // `PRAGMA foreign_keys = ON` or `PRAGMA main.journal_mode = WAL`.
            let ignored = |n: &str| matches!(n, "FOREIGN_KEYS" | "JOURNAL_MODE");
            let name = if ignored(w(1)) { w(1) } else { w(3) };
            if name == "FOREIGN_KEYS" {
                // SQLite's own 12-step table rebuild begins with it: harmless, so a note.
                findings.push((at, Severity::Note, "ignored-in-transaction", "`PRAGMA foreign_keys` does nothing inside a transaction, and is not needed: dbward runs the batch with foreign keys off (as SQLite's 12-step table rebuild asks) and runs `PRAGMA foreign_key_check` before COMMIT, failing the batch if any row dangles".to_string()));
            } else if ignored(name) {
                error(at, "ignored-in-transaction", format!("`PRAGMA {}` is silently ignored inside a transaction, and dbward applies the batch in one transaction; set it in the application's connection instead", name.to_ascii_lowercase()));
            }
        }
        "ATTACH" | "DETACH" if dialect != Dialect::Postgres => {
            error(at, "no-transaction", format!("`{}`: {NO_TX}", w(0)))
        }
        _ => {}
    }
}

/// What deletes data, or cannot be used until the batch commits: warnings.
fn warnings_of(stmt: &[Tok], findings: &mut Vec<RawFinding>) {
    let w = |i: usize| stmt.get(i).and_then(|t| t.word.as_deref()).unwrap_or("");
    let has = |word: &str| stmt.iter().any(|t| t.word.as_deref() == Some(word));
    let at = stmt[0].at;
    let mut warn = |at: Location, rule: &'static str, msg: String| {
        findings.push((at, Severity::Warning, rule, msg))
    };
    match (w(0), w(1)) {
        ("DROP", "TABLE") => warn(at, "destructive", "`DROP TABLE` deletes data; the pre-deploy snapshot is the way back".into()),
        ("TRUNCATE", _) => warn(at, "destructive", "`TRUNCATE` deletes every row".into()),
        ("DELETE", _) if !has("WHERE") => warn(at, "destructive", "`DELETE` without `WHERE` deletes every row".into()),
        ("UPDATE", _) if !has("WHERE") => warn(at, "destructive", "`UPDATE` without `WHERE` changes every row".into()),
        ("ALTER", "TABLE") => {
            for (i, t) in stmt.iter().enumerate() {
                if t.word.as_deref() != Some("DROP") {
                    continue;
                }
                // `DROP COLUMN x` or PostgreSQL's bare `DROP x`; not `DROP CONSTRAINT`, `DROP DEFAULT`, ...
                let next = w(i + 1);
                let column = next == "COLUMN"
                    || (stmt.get(i + 1).is_some()
                        && !matches!(next, "CONSTRAINT" | "DEFAULT" | "NOT" | "IDENTITY" | "EXPRESSION"));
                if column {
                    warn(t.at, "destructive", "`ALTER TABLE ... DROP COLUMN` deletes the column's data".into());
                }
            }
        }
        ("ALTER", "TYPE") if has("ADD") && has("VALUE") => warn(at, "enum-value", "a value added by `ALTER TYPE ... ADD VALUE` cannot be used until the batch commits; later migrations of the same batch must not use it".into()),
        _ => {}
    }
}

/// The name at `i` (the last part of a schema-qualified one: `public . users` is `USERS`), with
/// the index after it. Quoted names are not read (`None`).
fn name_at(stmt: &[Tok], mut i: usize) -> (Option<String>, usize) {
    let w = |i: usize| stmt.get(i).and_then(|t| t.word.clone());
    while w(i + 1).as_deref() == Some(".") {
        i += 2;
    }
    (w(i).filter(|n| n != "."), i + 1)
}

/// Functions whose value differs row by row: a column added with one as its default is written
/// into every row (a rewrite), unlike a constant or `now()`.
const VOLATILE: &[&str] = &[
    "RANDOM",
    "GEN_RANDOM_UUID",
    "UUID_GENERATE_V4",
    "UUID_GENERATE_V1",
    "CLOCK_TIMESTAMP",
    "TIMEOFDAY",
    "NEXTVAL",
];

/// PostgreSQL DDL that takes a lock readers or writers queue behind for as long as it scans or
/// rewrites a big table, or that breaks the release still running during a rolling deploy:
/// warnings, with the lock-safe way. Tables created earlier in the same file are empty: not
/// warned about.
fn lock_warnings_of(stmt: &[Tok], created: &mut Vec<String>, findings: &mut Vec<RawFinding>) {
    let w = |i: usize| stmt.get(i).and_then(|t| t.word.as_deref()).unwrap_or("");
    let has = |word: &str| stmt.iter().any(|t| t.word.as_deref() == Some(word));
    let at = stmt[0].at;
    let mut warn = |at: Location, rule: &'static str, msg: &str| {
        findings.push((at, Severity::Warning, rule, msg.to_string()))
    };
    let skip = |mut i: usize, words: &[&str]| {
        while words.contains(&w(i)) {
            i += 1;
        }
        i
    };
    match (w(0), w(1)) {
        ("CREATE", "TABLE") | ("CREATE", "UNLOGGED") => {
            let i = skip(2, &["TABLE", "IF", "NOT", "EXISTS"]);
            if let (Some(name), _) = name_at(stmt, i) {
                created.push(name);
            }
        }
        ("CREATE", "INDEX") | ("CREATE", "UNIQUE") if !has("CONCURRENTLY") => {
            let Some(on) = stmt.iter().position(|t| t.word.as_deref() == Some("ON")) else {
                return;
            };
            let (table, _) = name_at(stmt, skip(on + 1, &["ONLY"]));
            if table.is_none_or(|t| !created.contains(&t)) {
                warn(at, "locks-table", "`CREATE INDEX` blocks every write to the table while it builds; on a big table, build it `CONCURRENTLY` outside the batch (its own deploy step)");
            }
        }
        ("ALTER", "TABLE") => {
            let (table, after) = name_at(stmt, skip(2, &["IF", "EXISTS", "ONLY"]));
            if table.is_some_and(|t| created.contains(&t)) {
                return;
            }
            for i in after..stmt.len() {
                let t = &stmt[i];
                match t.word.as_deref() {
                    Some("TYPE") if (after..i).any(|j| w(j) == "ALTER") && w(i - 1) != "ADD" => warn(t.at, "locks-table", "`ALTER COLUMN ... TYPE` rewrites the table (most type changes) under an ACCESS EXCLUSIVE lock: every query waits for the whole rewrite. Add a new column, fill it in batches, then switch over"),
                    Some("SET") if w(i + 1) == "NOT" && w(i + 2) == "NULL" => warn(t.at, "locks-table", "`SET NOT NULL` scans the whole table under an ACCESS EXCLUSIVE lock; first add `CHECK (col IS NOT NULL) NOT VALID` and `VALIDATE CONSTRAINT` it (a lighter lock), then `SET NOT NULL` uses it (PostgreSQL 12+)"),
                    Some("DEFAULT") if (after..i).any(|j| w(j) == "ADD") && VOLATILE.contains(&w(i + 1)) => warn(t.at, "locks-table", "a column added with a volatile default (`random()`, `gen_random_uuid()`, `clock_timestamp()`, `nextval()`) is written into every row: a rewrite under an ACCESS EXCLUSIVE lock. Add it without the default, set the default, fill existing rows in batches"),
                    Some("ADD") => {
                        let kind = if w(i + 1) == "CONSTRAINT" { w(i + 3) } else { w(i + 1) };
                        let not_valid = (i..stmt.len()).any(|j| w(j) == "NOT" && w(j + 1) == "VALID");
                        match kind {
                            "FOREIGN" | "CHECK" if !not_valid => warn(t.at, "locks-table", "a constraint added without `NOT VALID` checks every row while it holds its lock; add it `NOT VALID`, then `VALIDATE CONSTRAINT` in a later migration (that takes a lock writers do not wait for)"),
                            "UNIQUE" | "PRIMARY" | "EXCLUDE" if !(has("USING") && has("INDEX")) => warn(t.at, "locks-table", "a unique or primary key constraint builds its index under an ACCESS EXCLUSIVE lock; build a unique index `CONCURRENTLY` first (outside the batch), then `ADD CONSTRAINT ... USING INDEX`"),
                            _ => {}
                        }
                    }
                    Some("RENAME") => warn(t.at, "breaks-running-release", "a rename breaks the release still running on the old schema during a rolling deploy (its queries name the old one); add the new name beside the old (a column, a view), switch the code, then drop the old one"),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// Why a statement is not purely additive, or `None` when it only adds (see [`all`]).
fn not_additive_statement(stmt: &[Tok]) -> Option<String> {
    let w = |i: usize| stmt.get(i).and_then(|t| t.word.as_deref()).unwrap_or("");
    let has = |word: &str| stmt.iter().any(|t| t.word.as_deref() == Some(word));
    let verb = w(0);
    let first_two = format!("{} {}", w(0), w(1));
    match verb {
        // Reads, session settings, comments, grants, new rows.
        "SELECT" | "SET" | "RESET" | "COMMENT" | "GRANT" | "INSERT" | "ANALYZE" | "\\" | "" => None,
        "CREATE" => {
            if w(1) == "OR" {
                return Some(format!(
                    "`CREATE OR REPLACE {}` changes an object the running release may use",
                    w(3)
                ));
            }
            let object = if matches!(w(1), "TEMP" | "TEMPORARY" | "UNLOGGED") {
                w(2)
            } else {
                w(1)
            };
            match object {
                "TABLE" | "VIEW" | "INDEX" | "SEQUENCE" | "SCHEMA" | "TYPE" | "EXTENSION"
                | "FUNCTION" | "PROCEDURE" | "DOMAIN" | "MATERIALIZED" | "VIRTUAL" => None,
                "UNIQUE" => {
                    Some("a new unique index can reject writes the running release makes".into())
                }
                "TRIGGER" | "RULE" | "POLICY" => Some(format!(
                    "a new {} changes what the running release's writes do",
                    object.to_ascii_lowercase()
                )),
                other => Some(format!("`CREATE {other}` is not known to be additive")),
            }
        }
        "ALTER" if w(1) == "TABLE" => {
            // Only `ADD [COLUMN]` clauses (no constraint, nothing dropped, renamed or altered);
            // a NOT NULL column without a default rejects the running release's inserts.
            let adds = has("ADD")
                && ![
                    "DROP",
                    "RENAME",
                    "ALTER",
                    "SET",
                    "CONSTRAINT",
                    "PRIMARY",
                    "UNIQUE",
                    "FOREIGN",
                    "CHECK",
                    "REFERENCES",
                ]
                .iter()
                .any(|word| {
                    stmt.iter()
                        .skip(3)
                        .any(|t| t.word.as_deref() == Some(*word))
                });
            let not_null_without_default = has("NOT") && has("NULL") && !has("DEFAULT");
            if !adds {
                Some(format!(
                    "`{}` changes a table the running release uses",
                    alter_summary(stmt)
                ))
            } else if not_null_without_default {
                Some(
                    "a `NOT NULL` column without a default rejects the running release's inserts"
                        .into(),
                )
            } else {
                None
            }
        }
        _ => Some(format!(
            "`{first_two}` changes what the running release sees"
        )),
    }
}

/// `ALTER TABLE t RENAME ...`, for a note: the first words.
fn alter_summary(stmt: &[Tok]) -> String {
    stmt.iter()
        .take(5)
        .map(|t| t.word.clone().unwrap_or_else(|| "...".into()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn savepoint_name(stmt: &[Tok], mut i: usize) -> String {
    if stmt.get(i).and_then(|t| t.word.as_deref()) == Some("SAVEPOINT") {
        i += 1;
    }
    stmt.get(i).and_then(|t| t.word.clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(sql: &str, dialect: Dialect) -> Vec<(u64, Severity, &'static str)> {
        lint_sql(sql, dialect)
            .into_iter()
            .filter(|f| f.1 != Severity::Note)
            .map(|(at, s, r, _)| (at.line, s, r))
            .collect()
    }

    #[test]
    fn transaction_control_is_an_error() {
        for sql in [
            "BEGIN;",
            "commit;",
            "END",
            "ROLLBACK;",
            "START TRANSACTION;",
            "abort;",
        ] {
            assert_eq!(
                rules(sql, Dialect::Any),
                [(1, Severity::Error, "transaction-control")],
                "{sql}"
            );
        }
    }

    #[test]
    fn no_transaction_statements() {
        for sql in [
            "VACUUM;",
            "CREATE INDEX CONCURRENTLY i ON t (a);",
            "create unique index concurrently if not exists i on t (a);",
            "DROP INDEX CONCURRENTLY i;",
            "REINDEX TABLE CONCURRENTLY t;",
            "REINDEX (VERBOSE) DATABASE d;",
            "CREATE DATABASE x;",
            "ALTER SYSTEM SET work_mem = '1GB';",
        ] {
            assert_eq!(
                rules(sql, Dialect::Postgres),
                [(1, Severity::Error, "no-transaction")],
                "{sql}"
            );
        }
    }

    #[test]
    fn words_in_comments_strings_and_bodies_are_ignored() {
        let sql = r#"
-- COMMIT; VACUUM; CREATE INDEX CONCURRENTLY
/* BEGIN; ROLLBACK; */
INSERT INTO notes (body) VALUES ('COMMIT; VACUUM; DROP TABLE x');
CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  COMMIT;
  EXECUTE 'CREATE INDEX CONCURRENTLY i ON t (a)';
  RETURN NEW;
END;
$fn$;
DO $$ BEGIN PERFORM 1; END $$;
CREATE TABLE "commit" (id int);
"#;
        assert_eq!(rules(sql, Dialect::Postgres), []);
    }

    #[test]
    fn sqlite_trigger_and_atomic_bodies_are_one_statement() {
        let sql = "CREATE TRIGGER t AFTER INSERT ON a BEGIN\n  UPDATE b SET n = n + 1 WHERE id = NEW.id;\n  SELECT CASE WHEN 1 THEN 1 END;\nEND;\nCREATE TABLE c (id int);";
        assert_eq!(rules(sql, Dialect::Sqlite), []);
        let sql =
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;\nVACUUM;";
        assert_eq!(
            rules(sql, Dialect::Postgres),
            [(2, Severity::Error, "no-transaction")]
        );
        // A column named `begin` opens no block.
        let sql = "CREATE TABLE ev (begin int, finish int);\nCOMMIT;";
        assert_eq!(
            rules(sql, Dialect::Postgres),
            [(2, Severity::Error, "transaction-control")]
        );
    }

    #[test]
    fn sqlite_pragmas() {
        // foreign_keys is a note (how_dbward_runs_a_file_is_a_note_not_an_error).
        assert_eq!(rules("PRAGMA foreign_keys = ON;", Dialect::Sqlite), []);
        assert_eq!(
            rules("PRAGMA main.journal_mode=WAL;", Dialect::Any),
            [(1, Severity::Error, "ignored-in-transaction")]
        );
        assert_eq!(rules("PRAGMA user_version = 3;", Dialect::Sqlite), []);
    }

    #[test]
    fn savepoints_must_be_declared() {
        assert_eq!(
            rules(
                "SAVEPOINT a; ROLLBACK TO SAVEPOINT a; RELEASE a;",
                Dialect::Any
            ),
            []
        );
        assert_eq!(
            rules("RELEASE SAVEPOINT b;", Dialect::Any),
            [(1, Severity::Error, "savepoint")]
        );
    }

    #[test]
    fn destructive_statements_warn() {
        let sql = "DROP TABLE a;\nALTER TABLE b DROP COLUMN c;\nALTER TABLE b DROP CONSTRAINT k, ALTER COLUMN d DROP NOT NULL;\nDELETE FROM d;\nDELETE FROM d WHERE id = 1;\nUPDATE e SET x = 1;\nTRUNCATE f;";
        let got = rules(sql, Dialect::Any);
        assert_eq!(
            got.iter().map(|(l, _, _)| *l).collect::<Vec<_>>(),
            [1, 2, 4, 6, 7]
        );
        assert!(got.iter().all(|(_, s, _)| *s == Severity::Warning));
    }

    #[test]
    fn additive_statements_and_the_rest() {
        let notes = |sql: &str| -> Vec<u64> {
            lint_sql(sql, Dialect::Postgres)
                .into_iter()
                .filter(|f| f.1 == Severity::Note)
                .map(|f| f.0.line)
                .collect()
        };
        let additive = "CREATE TABLE a (id int);\nCREATE INDEX ai ON a (id);\nALTER TABLE a ADD COLUMN note text;\n\
                        ALTER TABLE a ADD COLUMN n int NOT NULL DEFAULT 0;\nINSERT INTO a VALUES (1);\n\
                        CREATE VIEW v AS SELECT * FROM a;\nSELECT pg_catalog.set_config('search_path', '', false);\nCOMMENT ON TABLE a IS 'x';";
        assert_eq!(notes(additive), Vec::<u64>::new());
        let not = "DROP TABLE a;\nALTER TABLE a RENAME COLUMN x TO y;\nALTER TABLE a ADD COLUMN m int NOT NULL;\n\
                   CREATE UNIQUE INDEX u ON a (id);\nUPDATE a SET x = 1 WHERE id = 2;\nCREATE OR REPLACE VIEW v AS SELECT 1;\n\
                   ALTER TABLE a ADD CONSTRAINT c CHECK (id > 0);\nALTER TABLE a ALTER COLUMN x TYPE bigint;\nDELETE FROM a WHERE id = 1;";
        assert_eq!(notes(not), (1..=9).collect::<Vec<u64>>());
    }

    #[test]
    fn reports_the_line_of_the_statement() {
        let sql = "CREATE TABLE a (id int);\n\n-- next\nCREATE INDEX\n  CONCURRENTLY i ON a (id);";
        assert_eq!(
            rules(sql, Dialect::Postgres),
            [(5, Severity::Error, "no-transaction")]
        );
    }

    #[test]
    fn any_window_size_finds_the_same_as_one_pass() {
        let sql = "CREATE TABLE a (x text DEFAULT 'a;b');\n-- COMMIT; in a comment\nBEGIN;\n\
            CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;\n\
            DO $$ BEGIN COMMIT; END $$;\n  VACUUM;;\nSELECT 'é;ü'; COMMIT;\nDROP TABLE a";
        let full = lint_windowed(sql, Dialect::Postgres, usize::MAX / 4);
        assert!(full.findings.len() >= 4, "{full:?}");
        for w in 1..sql.len() + 2 {
            let got = lint_windowed(sql, Dialect::Postgres, w);
            assert_eq!(format!("{got:?}"), format!("{full:?}"), "window {w}");
        }
        let trigger = "CREATE TABLE t (x int);\nCREATE TRIGGER tr AFTER INSERT ON t BEGIN\n  UPDATE t SET x = 1; DELETE FROM t;\nEND;\nCOMMIT;\n";
        let full = lint_windowed(trigger, Dialect::Sqlite, usize::MAX / 4);
        for w in 1..trigger.len() + 2 {
            assert_eq!(
                format!("{:?}", lint_windowed(trigger, Dialect::Sqlite, w)),
                format!("{full:?}"),
                "window {w}"
            );
        }
    }

    fn file(sql: &str) -> MigrationFile {
        MigrationFile {
            path: "V1__x.sql".into(),
            version: 1,
            version_text: None,
            name: "x".into(),
            sql: sql.into(),
            text: sql.into(),
            checksum: 0,
            kind: crate::source::Kind::Versioned,
            layout: crate::layout::Layout::Dbward,
            no_transaction: false,
        }
    }

    #[test]
    fn a_wrapping_transaction_is_blanked_in_place_and_nothing_else() {
        let f = file("-- up\nBEGIN;\nCREATE TABLE t (x text DEFAULT 'é');\nCOMMIT;\n");
        let (sql, said) = executable(&f, Dialect::Postgres);
        assert_eq!(
            sql,
            "-- up\n      \nCREATE TABLE t (x text DEFAULT 'é');\n       \n"
        );
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].starts_with("2: dropping the file's own BEGIN"),
            "{said:?}"
        );
        // Without a `;` after the COMMIT, to the end of the file; SQLite's locking modes too.
        let f = file("BEGIN IMMEDIATE TRANSACTION;\nDELETE FROM t;\nEND");
        assert_eq!(
            executable(&f, Dialect::Sqlite).0,
            "                            \nDELETE FROM t;\n   "
        );
        // Any other transaction control, or a BEGIN that is not first: the text runs as it is
        // (and lint refuses it).
        for sql in [
            "BEGIN;\nCOMMIT;\nBEGIN;\nSELECT 1;\nCOMMIT;",
            "SELECT 1;\nBEGIN;\nSELECT 2;\nCOMMIT;",
            "BEGIN;\nSELECT 1;\nROLLBACK;",
            "BEGIN;\nSELECT 1;\nCOMMIT;\nSELECT 2;",
            "BEGIN ISOLATION LEVEL SERIALIZABLE;\nSELECT 1;\nCOMMIT;",
        ] {
            let f = file(sql);
            assert_eq!(executable(&f, Dialect::Postgres).0, sql, "{sql}");
        }
    }

    #[test]
    fn a_wrapped_file_is_found_whatever_the_window() {
        let sql = "-- golang-migrate style\nBEGIN;\nCREATE TABLE a (x text DEFAULT 'a;b');\nINSERT INTO a VALUES ('é;ü');\nCOMMIT;\n";
        let full = lint_windowed(sql, Dialect::Postgres, usize::MAX / 4);
        assert!(full.wrap.is_some(), "{full:?}");
        for w in 1..sql.len() + 2 {
            let got = lint_windowed(sql, Dialect::Postgres, w);
            assert_eq!(format!("{got:?}"), format!("{full:?}"), "window {w}");
        }
    }

    #[test]
    fn how_dbward_runs_a_file_is_a_note_not_an_error() {
        let notes = |sql: &str, dialect| -> Vec<(u64, Severity, &'static str)> {
            lint_sql(sql, dialect)
                .into_iter()
                .filter(|f| f.2 != NOT_ADDITIVE)
                .map(|(at, s, r, _)| (at.line, s, r))
                .collect()
        };
        // Placeholders: empty, blank, comments only.
        for sql in [
            "",
            "  \n",
            "-- nothing for SQLite in this version\n",
            "/* none */",
        ] {
            assert_eq!(
                notes(sql, Dialect::Sqlite),
                [(1, Severity::Note, "placeholder")],
                "{sql:?}"
            );
        }
        // SQLite's 12-step table rebuild, as its documentation writes it.
        let rebuild = "PRAGMA foreign_keys=off;\nCREATE TABLE new_t (id INTEGER PRIMARY KEY);\nINSERT INTO new_t SELECT id FROM t;\nDROP TABLE t;\nALTER TABLE new_t RENAME TO t;\nPRAGMA foreign_keys=on;\n";
        assert_eq!(
            notes(rebuild, Dialect::Sqlite)
                .into_iter()
                .filter(|f| f.1 != Severity::Warning)
                .collect::<Vec<_>>(),
            [
                (1, Severity::Note, "ignored-in-transaction"),
                (6, Severity::Note, "ignored-in-transaction")
            ]
        );
        // A leading BEGIN and a trailing COMMIT: one note, no error.
        assert_eq!(
            notes(
                "BEGIN;\nCREATE TABLE t (id int);\nCOMMIT;",
                Dialect::Postgres
            ),
            [(1, Severity::Note, "wrapping-transaction")]
        );
        // Anything more is still refused.
        assert_eq!(
            notes(
                "BEGIN;\nCREATE TABLE t (id int);\nCOMMIT;\nCREATE TABLE u (id int);",
                Dialect::Postgres
            ),
            [
                (1, Severity::Error, "transaction-control"),
                (3, Severity::Error, "transaction-control")
            ]
        );
        assert_eq!(
            notes("BEGIN;\nCOMMIT;", Dialect::Postgres),
            [(1, Severity::Note, "wrapping-transaction")]
        );
    }

    #[test]
    fn ddl_that_locks_a_busy_table_is_a_warning_on_postgres_only() {
        let warned = |sql: &str, dialect| -> Vec<(u64, &'static str)> {
            lint_sql(sql, dialect)
                .into_iter()
                .filter(|f| matches!(f.2, "locks-table" | "breaks-running-release"))
                .map(|(at, _, r, _)| (at.line, r))
                .collect()
        };
        for sql in [
            "CREATE INDEX i ON public.users (email);",
            "CREATE UNIQUE INDEX IF NOT EXISTS i ON ONLY users (email);",
            "ALTER TABLE users ALTER COLUMN id TYPE bigint;",
            "ALTER TABLE users ALTER id SET DATA TYPE bigint;",
            "ALTER TABLE IF EXISTS users ALTER COLUMN email SET NOT NULL;",
            "ALTER TABLE users ADD COLUMN token uuid DEFAULT gen_random_uuid();",
            "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (user_id) REFERENCES users (id);",
            "ALTER TABLE orders ADD CHECK (total > 0);",
            "ALTER TABLE users ADD CONSTRAINT u UNIQUE (email);",
            "ALTER TABLE users ADD PRIMARY KEY (id);",
            "ALTER TABLE users RENAME COLUMN email TO mail;",
            "ALTER TABLE users RENAME TO people;",
        ] {
            assert_eq!(warned(sql, Dialect::Postgres).len(), 1, "{sql}");
            assert_eq!(warned(sql, Dialect::Sqlite), [], "{sql}");
            assert_eq!(warned(sql, Dialect::Any), [], "{sql}");
        }
        for sql in [
            "CREATE INDEX CONCURRENTLY i ON users (email);",
            "ALTER TABLE users ADD COLUMN note text DEFAULT 'x';",
            "ALTER TABLE users ADD COLUMN at timestamptz DEFAULT now();",
            "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID;",
            "ALTER TABLE orders VALIDATE CONSTRAINT fk;",
            "ALTER TABLE users ADD CONSTRAINT u UNIQUE USING INDEX users_email;",
            "ALTER TABLE users ADD COLUMN kind text;",
            "ALTER TYPE mood ADD VALUE 'meh';",
            // A table this file creates is empty: nothing waits on it.
            "CREATE TABLE IF NOT EXISTS app.items (id int, sku text);\nCREATE INDEX i ON app.items (sku);\nALTER TABLE items ALTER COLUMN sku SET NOT NULL;",
        ] {
            assert_eq!(warned(sql, Dialect::Postgres), [], "{sql}");
        }
    }

    #[test]
    fn a_restrict_key_that_looks_like_a_binary_literal_still_lints() {
        // pg_dump's keys are random: `0B` then letters is a binary literal's prefix to the
        // tokenizer, which must never see it.
        let sql = "\\restrict 0BZgk9Qw1\nCREATE TABLE t (a int);\n\\unrestrict 0BZgk9Qw1\n";
        let found = lint_sql(sql, Dialect::Postgres);
        assert!(
            found.iter().all(|f| f.2 == "psql-meta-command"),
            "{found:?}"
        );
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn psql_meta_commands_are_named_and_pg_dumps_restrict_lines_only_warn() {
        let dump = "\\restrict Abc123\n\nSET statement_timeout = 0;\nSELECT pg_catalog.set_config('search_path', '', false);\nCOMMIT;\n\\unrestrict Abc123\n";
        assert_eq!(
            rules(dump, Dialect::Postgres),
            [
                (1, Severity::Warning, "psql-meta-command"),
                (5, Severity::Error, "transaction-control"),
                (6, Severity::Warning, "psql-meta-command"),
            ]
        );
        assert_eq!(
            rules(
                "\\connect other\nCREATE TABLE a (id int);\n",
                Dialect::Postgres
            ),
            [(1, Severity::Error, "psql-meta-command")]
        );
    }

    fn marked(sql: &str) -> MigrationFile {
        MigrationFile {
            no_transaction: crate::source::no_transaction_marker(sql).is_some(),
            ..file(sql)
        }
    }

    #[test]
    fn the_markers_of_dbward_sqlx_goose_and_dbmate() {
        for first in [
            "-- dbward:no-transaction",
            "-- no-transaction",
            "-- +goose NO TRANSACTION",
            "  -- migrate:up transaction:false  ",
        ] {
            assert!(
                marked(&format!("\n{first}\nVACUUM;\n")).no_transaction,
                "{first}"
            );
        }
        // Only on the first line that is not blank, and only as written.
        assert!(!marked("SELECT 1;\n-- dbward:no-transaction\n").no_transaction);
        assert!(!marked("-- dbward:no-transaction please\n").no_transaction);
    }

    #[test]
    fn a_marked_file_may_hold_what_cannot_run_in_a_transaction() {
        let findings = |f: &MigrationFile| -> Vec<(u64, Severity, &'static str)> {
            lint([f], Dialect::Postgres)
                .into_iter()
                .map(|f| (f.line, f.severity, f.rule))
                .collect()
        };
        let body = "CREATE INDEX CONCURRENTLY a_b ON a (b);\nVACUUM a;\nBEGIN;\n";
        assert_eq!(
            findings(&file(body)),
            [
                (1, Severity::Error, "no-transaction"),
                (2, Severity::Error, "no-transaction"),
                (3, Severity::Error, "transaction-control"),
            ]
        );
        // Marked: allowed, but transaction control never is.
        assert_eq!(
            findings(&marked(&format!("-- dbward:no-transaction\n{body}"))),
            [
                (1, Severity::Note, "no-transaction"),
                (4, Severity::Error, "transaction-control"),
            ]
        );
        // A marker nothing needs is a warning; an unnamed concurrent index an error.
        assert_eq!(
            findings(&marked(
                "-- dbward:no-transaction\nCREATE TABLE t (id int);\n"
            )),
            [
                (1, Severity::Note, "no-transaction"),
                (1, Severity::Warning, "needless-no-transaction"),
            ]
        );
        assert_eq!(
            findings(&marked(
                "-- dbward:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS ON a (b);\n"
            )),
            [
                (1, Severity::Note, "no-transaction"),
                (2, Severity::Error, "unnamed-concurrent-index"),
            ]
        );
        // A repeatable file cannot be marked.
        let mut r = marked("-- dbward:no-transaction\nVACUUM;\n");
        r.kind = crate::source::Kind::Repeatable;
        assert_eq!(findings(&r)[0], (1, Severity::Error, "no-transaction"));
    }

    #[test]
    fn a_marked_file_splits_into_its_statements_with_the_indexes_they_change() {
        let f = marked(
            "-- dbward:no-transaction\n\\restrict abc\n\
             CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS \"Odd\"\"Name\" ON ONLY sales.\"Orders\" (id);\n\
             -- a comment\nUPDATE t SET a = ';' WHERE b = $$x;y$$;\n\
             DROP INDEX CONCURRENTLY IF EXISTS public.old_idx CASCADE;\n\
             DROP INDEX CONCURRENTLY a, b;\n\
             SELECT 1",
        );
        let st = split(&f, Dialect::Postgres);
        let texts: Vec<&str> = st.iter().map(|s| s.text(&f)).collect();
        assert_eq!(
            texts,
            [
                "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS \"Odd\"\"Name\" ON ONLY sales.\"Orders\" (id);",
                "UPDATE t SET a = ';' WHERE b = $$x;y$$;",
                "DROP INDEX CONCURRENTLY IF EXISTS public.old_idx CASCADE;",
                "DROP INDEX CONCURRENTLY a, b;",
                "SELECT 1",
            ]
        );
        assert_eq!(
            st.iter().map(|s| (s.line, s.outside)).collect::<Vec<_>>(),
            [(3, true), (5, false), (6, true), (7, true), (8, false)]
        );
        assert_eq!(
            st[0].index,
            Some(IndexChange::Create {
                index: "\"Odd\"\"Name\"".into(),
                table: "sales.\"Orders\"".into()
            })
        );
        assert_eq!(
            st[2].index,
            Some(IndexChange::Drop {
                index: "public.old_idx".into()
            })
        );
        assert_eq!(st[3].index, None, "a list is left to the database");
    }
}

//! Quoting for SQL text dbward builds itself (names it did not choose: tables, schemas,
//! databases). The one place it is done, for SQLite and PostgreSQL alike.

/// `"name"`, inner `"` doubled: an identifier, whatever characters it holds.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'`, inner `'` doubled: a string literal (standard_conforming_strings, PostgreSQL's
/// default since 9.1, and SQLite's only form).
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting() {
        assert_eq!(super::ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(super::literal("it's"), "'it''s'");
    }
}

//! `dbward lint`: the migrations folder alone; `--database` only selects the dialect's rules.

use serde_json::json;

use migrator::{DatabaseUrl, Dialect, Severity};

use super::dialect;
use crate::exit::Exit;
use crate::report::{Failure, Report};
use crate::settings::Settings;

pub fn run(settings: &Settings) -> Result<Report, Failure> {
    let dialect = match &settings.database {
        Some(url) => dialect(&DatabaseUrl::parse(url)?),
        None => Dialect::Any,
    };
    let migrations = migrator::discover(&settings.migrations)?;
    let findings = migrator::lint::lint(migrations.all(), dialect);
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    let (errors, warnings, notes) = (
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Note),
    );

    let mut text: String = findings.iter().map(|f| format!("{f}\n")).collect();
    text.push_str(&format!(
        "{} migration file(s) in {}: {errors} error(s), {warnings} warning(s), {notes} note(s)\n",
        migrations.all().count(),
        settings.migrations.display()
    ));
    Ok(Report {
        text,
        json: json!({
            "migrations": settings.migrations,
            "files": migrations.all().count(),
            "errors": errors,
            "warnings": warnings,
            "notes": notes,
            "findings": findings,
        }),
        code: if errors > 0 {
            Exit::Refused
        } else {
            Exit::Success
        },
    })
}

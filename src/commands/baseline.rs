//! `dbward baseline VERSION`: adopt a database that already exists. The migrations up to
//! VERSION are recorded as applied, with their checksums, without running them; only on a
//! database that has tables of its own and no migration history yet (Flyway's `baseline`,
//! golang-migrate's `force`).

use serde_json::json;

use migrator::database::Open;
use migrator::Database;

use super::database_url;
use crate::cli::BaselineArgs;
use crate::exit::Exit;
use crate::report::{Failure, Report};
use crate::settings::Settings;

pub async fn run(settings: &Settings, args: &BaselineArgs) -> Result<Report, Failure> {
    let url = database_url(settings)?;
    let migrations = migrator::discover(&settings.migrations)?;
    let files = &migrations.versioned;
    // The version as written (`3`, `V3`, `1.1`), ordered as the folder is.
    let wanted = dbconn::history::version_parts(args.version.trim_start_matches(['V', 'v']));
    let Some(target) = files.iter().find(|f| Some(f.order()) == wanted) else {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "no migration with version {} in {}: baseline names the newest migration the database already holds",
                args.version,
                settings.migrations.display()
            ),
        ));
    };
    let mut db =
        Database::open_locked(&url, Open::Existing, std::time::Duration::from_secs(600)).await?;
    if let Some(a) = migrator::adopt::history(&mut db, &migrations)
        .await?
        .to_adopt()
    {
        return Err(Failure::new(
            Exit::Refused,
            format!(
                "{} holds {}'s history ({}): `dbward migrate` adopts it with which files ran and their checksums; baseline would forget both. Nothing was recorded.",
                url.display(),
                a.tool.name(),
                a.tool.table()
            ),
        ));
    }
    let applied = db.applied().await?;
    if !applied.is_empty() {
        return Err(Failure::new(
            Exit::Refused,
            format!(
                "{} already has a migration history ({} applied, newest {}); baseline only adopts a database that has none. Nothing was recorded.",
                url.display(),
                applied.len(),
                dbconn::history::newest(&applied).map(|a| a.label()).unwrap_or_default()
            ),
        ));
    }
    if !db.has_user_tables().await? {
        return Err(Failure::new(
            Exit::Refused,
            format!(
                "{} has no tables: there is nothing to adopt; run `dbward migrate` to create it from the migrations. Nothing was recorded.",
                url.display()
            ),
        ));
    }
    let upto: Vec<&migrator::MigrationFile> = files
        .iter()
        .filter(|f| f.order() <= target.order())
        .collect();
    db.record(&upto).await?;
    let names: Vec<String> = upto.iter().map(|f| f.file_name()).collect();
    tracing::info!(
        "recorded {} migration(s) as applied without running them: {}",
        names.len(),
        names.join(", ")
    );
    Ok(Report {
        text: format!(
            "recorded as applied (not run): {}\nthe next `dbward migrate` applies what comes after {}\n",
            names.join(", "),
            target.label()
        ),
        json: json!({
            "database": url.display(),
            "recorded": upto.iter().map(|f| json!({ "version": f.version, "name": f.name, "checksum": f.checksum.to_string() })).collect::<Vec<_>>(),
        }),
        code: Exit::Success,
    })
}

//! `dbward status`: applied / pending / drifted, read without the migration lock.

use serde_json::json;

use migrator::database::Open;
use migrator::{Database, DatabaseUrl, Drift, Plan};

use super::{database_url, table};
use crate::exit::Exit;
use crate::report::{Failure, Report};
use crate::settings::Settings;

pub async fn run(settings: &Settings) -> Result<Report, Failure> {
    let url = database_url(settings)?;
    let files = migrator::discover(&settings.migrations)?;
    let missing_file = matches!(&url, DatabaseUrl::Sqlite(p) if !p.exists());
    let (history, unadoptable, progress) = if missing_file {
        (
            migrator::adopt::History {
                applied: Vec::new(),
                repeatable: Vec::new(),
                adoption: None,
            },
            None,
            Default::default(),
        )
    } else {
        read_history(&url, &files).await?
    };
    let migrator::adopt::History {
        applied,
        repeatable: applied_repeatable,
        adoption,
    } = history;
    let plan = Plan::new(&files, applied, &applied_repeatable);

    let mut rows = Vec::new();
    let mut items = Vec::new();
    for a in &plan.applied {
        let state = match plan.drift.iter().find(|d| matches!(d, Drift::Changed { version, .. } | Drift::Missing { version, .. } if *version == a.version)) {
            Some(Drift::Changed { .. }) => "changed",
            Some(_) => "missing",
            None => "applied",
        };
        rows.push(vec![
            dbconn::history::shown(a.version, a.version_text.as_deref()),
            a.name.clone(),
            state.into(),
            a.applied_on.clone(),
        ]);
        items.push(json!({ "version": a.version, "version_text": a.version_text, "name": a.name, "state": state, "applied_on": a.applied_on }));
    }
    for d in &plan.drift {
        if let Drift::OutOfOrder { version, file, .. } = d {
            let file_of = files.versioned.iter().find(|f| f.version == *version);
            let name = file_of.map(|f| f.name.clone()).unwrap_or_default();
            rows.push(vec![
                dbconn::history::shown(*version, file_of.and_then(|f| f.version_text.as_deref())),
                name.clone(),
                "out-of-order".into(),
                String::new(),
            ]);
            items.push(
                json!({ "version": version, "name": name, "state": "out-of-order", "file": file }),
            );
        }
    }
    for f in &plan.pending {
        // A non-transactional file a run stopped in: how far it got (`migrate` resumes it).
        let state = match progress.get(&f.version) {
            Some(done) => format!(
                "partly applied: {done} of {} statements",
                migrator::lint::split(f, super::dialect(&url)).len()
            ),
            None => "pending".into(),
        };
        rows.push(vec![
            dbconn::history::shown(f.version, f.version_text.as_deref()),
            f.name.clone(),
            state.clone(),
            String::new(),
        ]);
        items.push(json!({ "version": f.version, "version_text": f.version_text, "name": f.name, "state": state, "completed_statements": progress.get(&f.version), "file": f.path }));
    }
    for r in &files.repeatable {
        let state = if plan.repeatable.iter().any(|p| p.name == r.name) {
            "pending"
        } else {
            "applied"
        };
        let on = applied_repeatable
            .iter()
            .find(|a| a.name == r.name)
            .map(|a| a.applied_on.clone())
            .unwrap_or_default();
        rows.push(vec!["R".into(), r.name.clone(), state.into(), on.clone()]);
        items.push(
            json!({ "repeatable": r.name, "state": state, "applied_on": on, "file": r.path }),
        );
    }

    let mut text = format!("{}\n", url.display());
    if missing_file {
        text.push_str("(the database file does not exist yet; `migrate` creates it)\n");
    }
    text.push_str(&table(&["VERSION", "NAME", "STATE", "APPLIED ON"], &rows));
    let head = plan
        .head()
        .map(|h| h.label())
        .unwrap_or_else(|| "none".into());
    text.push_str(&format!(
        "head: {head}; {} pending; {} drifted\n",
        plan.pending.len() + plan.repeatable.len(),
        plan.drift.len()
    ));
    for d in &plan.drift {
        text.push_str(&format!("drift: {d}\n"));
    }
    if let Some(layout) = files.layout {
        text.push_str(&format!("layout: {}\n", layout.describe()));
    }
    if let Some(a) = &adoption {
        text.push_str(&format!("history: {}\n", a.describe()));
    }
    if let Some(e) = &unadoptable {
        text.push_str(&format!("history: {e}\n"));
    }
    let replaced = crate::replaced::list(settings, &url).await;
    let now = time::OffsetDateTime::now_utc();
    for (c, size) in &replaced {
        let age =
            time::OffsetDateTime::parse(&c.at, &time::format_description::well_known::Rfc3339)
                .map(|t| format!("{}h", (now - t).whole_hours()))
                .unwrap_or_else(|_| c.at.clone());
        text.push_str(&format!(
            "replaced copy: {} ({}, {age} old, replaced by snapshot {})\n",
            c.name,
            size.map(backup::bytes).unwrap_or_default(),
            c.snapshot
        ));
    }
    Ok(Report {
        text,
        json: json!({
            "database": url.display(),
            "head": plan.head(),
            "pending": plan.pending.len() + plan.repeatable.len(),
            "migrations": items,
            "drift": plan.drift,
            "layout": files.layout,
            "unadoptable": unadoptable,
            "other_history": adoption.as_ref().map(|a| json!({ "tool": a.tool, "table": a.tool.table(), "state": a.standing, "runner_not_to_run": a.tool.runner() })),
            "replaced_copies": replaced.iter().map(|(c, size)| json!({ "name": c.name, "at": c.at, "snapshot": c.snapshot, "bytes": size })).collect::<Vec<_>>(),
        }),
        code: if plan.drift.is_empty() && unadoptable.is_none() {
            Exit::Success
        } else {
            Exit::Refused
        },
    })
}

/// The history the plan is made from ([`migrator::adopt::history`]), why another tool's
/// history cannot be adopted as it stands (said with the rest, not instead of it), and the
/// progress of partly applied files.
async fn read_history<'a>(
    url: &DatabaseUrl,
    files: &'a migrator::Migrations,
) -> Result<
    (
        migrator::adopt::History<'a>,
        Option<String>,
        std::collections::BTreeMap<i64, i64>,
    ),
    Failure,
> {
    let mut db = Database::open(url, Open::Existing).await?;
    let (history, unadoptable) = match migrator::adopt::history(&mut db, files).await {
        Err(e @ migrator::Error::Adopt { .. }) => (
            migrator::adopt::History {
                applied: db.applied().await?,
                repeatable: db.applied_repeatable().await?,
                adoption: None,
            },
            Some(e.to_string()),
        ),
        other => (other?, None),
    };
    Ok((history, unadoptable, db.statement_progress().await?))
}

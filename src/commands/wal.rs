//! `dbward wal-push` and `dbward wal-fetch`: PostgreSQL's `archive_command` and
//! `restore_command`, over the WAL archive in the store ([`backup::pitr::wal`]).
//!
//! PostgreSQL reads a `restore_command` exit of 1 to 125 as "not in the archive", and then
//! ends recovery: it may promote a cluster that has not replayed what it should. So
//! `wal-fetch` exits 1 only when the store answered that the file is not there, and 126 for
//! everything else (a store it cannot reach, a damaged object, a bad setting, a bad command
//! line: see `cli::parse`, a panic: see `main`), which stops recovery instead.

use std::time::Duration;

use migrator::DatabaseUrl;
use serde_json::json;

use crate::cli::{GlobalArgs, PitrVerifyArgs, WalFetchArgs, WalPushArgs};
use crate::exit::Exit;
use crate::report::{Failure, Report};
use crate::settings::Settings;

/// Tries a fetch makes before it gives up on a store that does not answer.
const FETCH_TRIES: u32 = 3;

/// The archive's folder: the database's name, which must be a PostgreSQL one. The store must
/// not be a relative directory: PostgreSQL runs both commands in its data directory, where a
/// relative store (the default `file://./.dbward/snapshots` included) would put the archive
/// inside the very directory it is there to rebuild.
fn database(settings: &Settings) -> Result<String, Failure> {
    let store = settings.store.as_str();
    if store.starts_with("file://") && !store.starts_with("file:///") {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "the WAL archive's store `{store}` is a relative directory: PostgreSQL runs archive_command and restore_command in its data directory, so the archive would land inside it. Give an absolute one (file:///...) or s3://... (setting `store.url`, flag --store, env DBWARD_STORE)"
            ),
        ));
    }
    match super::database_url(settings)? {
        DatabaseUrl::Postgres(pg) => {
            let name = pg.dbname().to_string();
            backup::check_folder_name(&name)?;
            Ok(name)
        }
        DatabaseUrl::Sqlite(_) => Err(Failure::new(
            Exit::Usage,
            "wal-push and wal-fetch archive PostgreSQL's WAL; the database is SQLite",
        )),
    }
}

/// `wal-push`: into the primary store and each mirror (`store.mirrors`). A mirror that fails
/// fails the push with `store.require = all` (PostgreSQL pushes again later; what is stored
/// already is the same file), and is a warning with `primary`.
pub async fn push(settings: &Settings, args: &WalPushArgs) -> Result<Report, Failure> {
    let database = database(settings)?;
    let stores = settings.stores().await?;
    let store = stores.primary();
    let encryption = settings.encryption()?;
    let opts = backup::pitr::wal::PushOptions {
        level: settings.level,
        encryption: encryption.as_deref(),
    };
    let (pushed, failed) = backup::pitr::wal::push(&stores, &database, &args.path, &opts).await?;
    for (n, e) in &failed {
        let what = format!(
            "{} is archived in the primary store, not in mirror {n} ({}): {}",
            pushed.name,
            settings.store_mirrors[n - 1],
            backup::error::chain(e)
        );
        if settings.store_require_all {
            return Err(Failure::new(
                Exit::Failed,
                format!("{what} (store.require = all: PostgreSQL will push it again)"),
            ));
        }
        tracing::warn!("{what} (store.require = primary: going on)");
    }
    // Logged, not printed: PostgreSQL runs this for every WAL file and keeps what it prints in
    // its own log (`-q` keeps that to failures).
    match pushed.stored_bytes {
        Some(n) => tracing::info!(
            "{} archived: {} bytes stored as {}",
            pushed.name,
            n,
            store.describe(&pushed.key)
        ),
        None => tracing::info!(
            "{} was already archived, with the same contents",
            pushed.name
        ),
    }
    Ok(Report {
        text: String::new(),
        json: json!({ "wal": pushed }),
        code: Exit::Success,
    })
}

/// `wal-fetch`, settings included: every failure is [`Exit::WalUnavailable`].
pub async fn fetch(global: &GlobalArgs, args: &WalFetchArgs) -> Result<Report, Failure> {
    let unavailable = |mut f: Failure| {
        f.code = Exit::WalUnavailable;
        f
    };
    let settings = Settings::load(global).map_err(|e| unavailable(e.into()))?;
    let database = database(&settings).map_err(unavailable)?;
    let identities = settings.identities().map_err(|e| unavailable(e.into()))?;
    let primary = fetch_from(&settings, &settings.store, &database, args, &identities).await;
    // The primary's answer, unless it has no copy or no answer: then each mirror's, in turn.
    // A file no store has is absent (exit 1) only when the primary said so; when the primary
    // failed, recovery stops (126) rather than end on a mirror's word.
    // The first mirror that has the file, in order.
    let from_mirrors = || async {
        for url in &settings.store_mirrors {
            if let Ok(f @ backup::pitr::wal::Fetched::Restored { .. }) =
                fetch_from(&settings, url, &database, args, &identities).await
            {
                tracing::warn!("{} fetched from mirror {url}", args.name);
                return Some(f);
            }
        }
        None
    };
    let fetched = match primary {
        Ok(f @ backup::pitr::wal::Fetched::Restored { .. }) => f,
        Ok(absent) => from_mirrors().await.unwrap_or(absent),
        Err(e) => {
            if !settings.store_mirrors.is_empty() {
                tracing::warn!(
                    "fetching {} from the primary store failed ({}); trying the mirrors",
                    args.name,
                    backup::error::chain(&e)
                );
            }
            match from_mirrors().await {
                Some(f) => f,
                None => return Err(unavailable(e.into())),
            }
        }
    };
    let code = match &fetched {
        backup::pitr::wal::Fetched::Restored { bytes, .. } => {
            tracing::info!("{} fetched ({bytes} bytes)", args.name);
            Exit::Success
        }
        backup::pitr::wal::Fetched::Absent { .. } => {
            // Routine: recovery asks for the next file until one is not there.
            tracing::info!("{} is not in the archive", args.name);
            Exit::Failed
        }
    };
    Ok(Report {
        text: String::new(),
        json: json!({ "wal": fetched }),
        code,
    })
}

/// One store's answer for `args.name`, with retries while it does not answer.
async fn fetch_from(
    settings: &Settings,
    url: &str,
    database: &str,
    args: &WalFetchArgs,
    identities: &backup::crypt::Identities,
) -> Result<backup::pitr::wal::Fetched, backup::Error> {
    let mut tries = 0;
    loop {
        tries += 1;
        let attempt = async {
            let store = backup::Store::open(url, &settings.store_options()).await?;
            backup::pitr::wal::fetch(&store, database, &args.name, &args.path, identities).await
        };
        match attempt.await {
            // Only what may pass: a store that did not answer, a read cut short. A damaged
            // object or a missing key stays so, and recovery should stop at once.
            Err(e @ (backup::Error::Store { .. } | backup::Error::Io { .. }))
                if tries < FETCH_TRIES =>
            {
                tracing::warn!(
                    "fetching {} from {url} (try {tries} of {FETCH_TRIES}): {}",
                    args.name,
                    backup::error::chain(&e)
                );
                tokio::time::sleep(Duration::from_secs(tries.into())).await;
            }
            other => return other,
        }
    }
}

/// `pitr verify`: the archive's timelines, gaps and lag; exit 3 on a gap, or a lag beyond
/// `--max-lag`.
pub async fn verify(settings: &Settings, args: &PitrVerifyArgs) -> Result<Report, Failure> {
    if let url @ DatabaseUrl::Sqlite(_) = super::database_url(settings)? {
        return verify_stream(settings, &url, args).await;
    }
    let database = database(settings)?;
    let store = settings.store().await?;
    let v = backup::pitr::wal::verify(&store, &database).await?;
    let bases = backup::pitr::cluster::bases(&store, &database).await?;
    let mut text = format!("WAL archive of cluster {}\n", v.system_identifier);
    for t in &v.timelines {
        text.push_str(&format!(
            "  timeline {}: {} to {} ({} segments)\n",
            t.timeline, t.first, t.last, t.segments
        ));
    }
    if let (Some(newest), Some(lag)) = (&v.newest, v.lag_seconds) {
        text.push_str(&format!("  newest: {newest}, stored {lag:.0}s ago\n"));
    }
    let mut problems = Vec::new();
    for g in &v.gaps {
        problems.push(format!(
            "timeline {}: {} segment(s) missing between {} and {}",
            g.timeline, g.missing, g.after, g.before
        ));
    }
    if let (Some(max), Some(lag)) = (args.max_lag, v.lag_seconds) {
        if lag > max.as_secs_f64() {
            problems.push(format!(
                "the newest segment was stored {lag:.0}s ago, more than --max-lag {}s: is archive_command failing (pg_stat_archiver)?",
                max.as_secs()
            ));
        }
    }
    if v.timelines.is_empty() {
        text.push_str("  no segment stored yet\n");
    }
    // Each base needs every segment from its first to its last (what makes it consistent),
    // and the timeline's chain from there on has no gap (checked above for the archive).
    let mut base_rows = Vec::new();
    for b in &bases {
        let Some(p) = &b.physical else { continue };
        let stored = backup::pitr::wal::stored_from(&store, &database, &p.wal_first).await?;
        let missing: Vec<String> = backup::pitr::base::segments(p)?
            .into_iter()
            .filter(|n| !stored.contains(n))
            .collect();
        if let Some(first) = missing.first() {
            problems.push(format!(
                "base {} needs WAL segments {}..{}, and {} of them are not in the archive (the first: {first})",
                b.id,
                p.wal_first,
                p.wal_last,
                missing.len()
            ));
        }
        base_rows.push(json!({ "id": b.id, "wal_first": p.wal_first, "wal_last": p.wal_last, "timeline": p.timeline, "ok": missing.is_empty() }));
    }
    text.push_str(&format!(
        "  bases: {} ({} with their WAL)\n",
        base_rows.len(),
        base_rows.iter().filter(|b| b["ok"] == true).count()
    ));
    // Replay time grows with the WAL since the newest base: past pitr.base_max_wal, one is due.
    let since_base = backup::pitr::cluster::wal_since_base(&store, &database, &bases).await?;
    let since = since_base.as_ref().map(|s| s.bytes);
    let due_why = match (&since_base, settings.pitr.base_max_wal) {
        (Some(s), _) if s.later_timeline.is_some() => Some(format!(
            "the archive holds timeline {}, after the newest base's (a promotion or a rewind happened since): restores from that base follow it, but deploys take dumps instead of restore points until a base of the current timeline exists",
            s.later_timeline.unwrap_or_default()
        )),
        (Some(s), Some(max)) if s.bytes > max => Some(format!(
            "{} of WAL since the newest base, more than pitr.base_max_wal {} (a restore replays all of it)",
            backup::bytes(s.bytes),
            backup::bytes(max)
        )),
        _ => None,
    };
    let due = due_why.is_some();
    if let Some(bytes) = since {
        text.push_str(&format!(
            "  WAL since the newest base: {}\n",
            backup::bytes(bytes)
        ));
    }
    if let Some(why) = due_why {
        let why = format!(
            "a base is due: {why}: run `dbward backup --physical`, or set [schedule] base_if_due"
        );
        tracing::warn!("{why}");
        text.push_str(&format!("  {why}\n"));
    }
    // What a rewind or a restore to the last deploy's restore point needs, checked now rather
    // than found missing during the incident.
    let url = super::database_url(settings)?;
    let point = backup::pitr::cluster::check_newest_point(
        crate::service::pitr::archive(settings, &url).await?,
        &settings.temp_dir(),
    )
    .await?;
    match &point {
        Some(c) => match &c.problem {
            None => text.push_str(&format!(
                "  the newest restore point {} is restorable: base {}, {} WAL file(s) fetched and checked\n",
                c.point,
                c.base.as_deref().unwrap_or("?"),
                c.segments_checked
            )),
            Some(why) => {
                text.push_str(&format!(
                    "  the newest restore point {} CANNOT be restored: {why}\n",
                    c.point
                ));
                problems.push(format!(
                    "the newest restore point {} (the last deploy's) cannot be restored: {why}",
                    c.point
                ));
            }
        },
        None => text.push_str("  no restore point yet\n"),
    }
    if let Some(path) = &args.metrics {
        let without_wal = base_rows.iter().filter(|b| b["ok"] != true).count();
        restore_drill::metrics::write_textfile(
            path,
            &metrics(&database, &v, base_rows.len(), without_wal, since),
        )
        .map_err(|e| Failure::new(Exit::Failed, format!("--metrics {}: {e}", path.display())))?;
    }
    let json = json!({ "archive": v, "bases": base_rows, "wal_since_base_bytes": since, "base_due": due, "restore_point": point, "problems": problems });
    verdict(text, json, &problems)
}

/// The archive's state as Prometheus gauges (node_exporter's textfile format).
fn metrics(
    database: &str,
    v: &backup::pitr::wal::Verified,
    bases: usize,
    without_wal: usize,
    since_base: Option<u64>,
) -> String {
    let mut g = restore_drill::metrics::Gauges::new(database);
    g.gauge(
        "dbward_pitr_wal_since_base_bytes",
        "WAL stored after the newest base's: what a restore to the end replays.",
        since_base.map_or("NaN".into(), |b| b.to_string()),
    );
    g.gauge(
        "dbward_pitr_bases",
        "Base backups of this database in the store.",
        bases,
    );
    g.gauge(
        "dbward_pitr_bases_without_wal",
        "Base backups whose first WAL segment the archive no longer holds.",
        without_wal,
    );
    g.gauge(
        "dbward_wal_archive_missing_segments",
        "Segments missing between the first and last stored of each timeline.",
        v.gaps.iter().map(|g| g.missing).sum::<u64>(),
    );
    g.gauge(
        "dbward_wal_archive_lag_seconds",
        "How long ago the newest segment was stored.",
        v.lag_seconds.map_or("NaN".into(), |l| format!("{l:.0}")),
    );
    g.gauge(
        "dbward_wal_archive_segments",
        "Segments stored, all timelines.",
        v.timelines.iter().map(|t| t.segments).sum::<u64>(),
    );
    g.gauge(
        "dbward_wal_archive_verify_timestamp_seconds",
        "When pitr verify last ran (Unix time).",
        time::OffsetDateTime::now_utc().unix_timestamp(),
    );
    g.into_text()
}

/// `pitr verify` of a SQLite database: its stream in the primary store ([`backup::stream::verify`]);
/// exit 3 on a missing base or step, a deploy position that cannot be restored, or a lag beyond
/// `--max-lag`.
async fn verify_stream(
    settings: &Settings,
    url: &DatabaseUrl,
    args: &PitrVerifyArgs,
) -> Result<Report, Failure> {
    let store = settings.store().await?;
    let db = url.name();
    let id = crate::service::stream::whose(url, &store).await?;
    let v = backup::stream::verify::verify(&store, &db, id.as_deref()).await?;
    let mut text = format!("stream of {} in {}\n", url.display(), settings.store);
    for g in &v.generations {
        text.push_str(&format!(
            "  generation {} (began {}): base and {} step(s){}\n",
            g.generation,
            g.started_at,
            g.newest_seq,
            if g.missing_steps.is_empty() && g.base_problem.is_none() {
                ""
            } else {
                ", INCOMPLETE"
            }
        ));
    }
    if v.generations.is_empty() {
        text.push_str("  no generation yet (is `dbward replicate` running?)\n");
    }
    if let Some(lag) = v.lag_seconds {
        text.push_str(&format!("  newest object stored {lag:.0}s ago\n"));
    }
    text.push_str(&format!(
        "  deploy positions: {} ({} restorable)\n",
        v.positions,
        v.positions - v.unrestorable_positions.len()
    ));
    let mut problems = v.problems();
    if v.generations.is_empty() {
        problems.push(format!(
            "the store holds no stream of {} (`dbward replicate` ships one)",
            url.display()
        ));
    }
    if let (Some(max), Some(lag)) = (args.max_lag, v.lag_seconds) {
        if lag > max.as_secs_f64() {
            problems.push(format!(
                "the newest object was stored {lag:.0}s ago, more than --max-lag {}s: is `dbward replicate` running, and does its store answer?",
                max.as_secs()
            ));
        }
    }
    if let Some(path) = &args.metrics {
        let mut g = restore_drill::metrics::Gauges::new(&db);
        g.gauge(
            "dbward_stream_lag_seconds",
            "How long ago the stream's newest object was stored.",
            v.lag_seconds.map_or("NaN".into(), |l| format!("{l:.0}")),
        );
        g.gauge(
            "dbward_stream_missing_steps",
            "Steps no object holds, before each generation's newest.",
            v.missing_steps(),
        );
        g.gauge(
            "dbward_stream_generations",
            "Generations of the stream in the store.",
            v.generations.len(),
        );
        g.gauge(
            "dbward_stream_unrestorable_positions",
            "Deploy positions whose generation cannot reach them.",
            v.unrestorable_positions.len(),
        );
        g.gauge(
            "dbward_stream_verify_timestamp_seconds",
            "When pitr verify last ran (Unix time).",
            time::OffsetDateTime::now_utc().unix_timestamp(),
        );
        restore_drill::metrics::write_textfile(path, &g.into_text()).map_err(|e| {
            Failure::new(Exit::Failed, format!("--metrics {}: {e}", path.display()))
        })?;
    }
    let json = json!({ "stream": v, "problems": problems });
    verdict(text, json, &problems)
}

/// `pitr verify`'s outcome: the report, or exit 3 naming every problem (the report kept).
fn verdict(text: String, json: serde_json::Value, problems: &[String]) -> Result<Report, Failure> {
    if problems.is_empty() {
        return Ok(Report {
            text,
            json,
            code: Exit::Success,
        });
    }
    let mut f = Failure::new(Exit::Refused, problems.join("; "));
    f.text = text;
    f.details = json;
    Err(f)
}

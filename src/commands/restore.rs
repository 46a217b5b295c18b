//! `dbward restore SNAPSHOT|latest|pre-deploy`: fetch and verify, restore beside the live
//! database, check, then swap it in; the replaced database is kept. Also the restore step of
//! the health guard.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Instant;

use serde_json::{json, Value};

use backup::restore;
use migrator::DatabaseUrl;

use super::database_url;
use crate::cli::RestoreArgs;
use crate::report::{Failure, Report, EXIT_FAILED, EXIT_USAGE};
use crate::settings::Settings;
use crate::state;

pub async fn run(settings: &Settings, args: &RestoreArgs) -> Result<Report, Failure> {
    let url = database_url(settings)?;
    if args.if_missing {
        if args.snapshot != "latest" || args.to.is_some() {
            return Err(Failure::new(
                EXIT_USAGE,
                "--if-missing restores `latest` into the database itself (no --to)",
            ));
        }
        let outcome = restore_if_missing(settings, &url).await?;
        return Ok(Report {
            text: format!("{}\n", outcome.message(&url)),
            json: outcome.json(),
            code: 0,
        });
    }
    let stores = settings.stores().await?;
    let (m, copies) = resolve(settings, &stores, &url, &args.snapshot).await?;
    let target = args.to.as_deref().unwrap_or("the live database");
    confirm(
        args.yes,
        &format!(
            "Restore snapshot {} ({}, {}) over {} ({target})?",
            m.id,
            m.kind.as_str(),
            m.created_at,
            url.display()
        ),
    )?;
    let opts = Options {
        force: args.force,
        terminate_connections: args.terminate_connections,
        to: args.to.clone(),
        if_missing: false,
    };
    let outcome = restore_snapshot(settings, &copies, &url, &m, &opts).await?;
    Ok(Report {
        text: format!(
            "restored {} into {}{}\n",
            m.id,
            outcome["database"].as_str().unwrap_or_default(),
            outcome["replaced"]
                .as_str()
                .map(|r| format!("; the replaced database is kept as {r}"))
                .unwrap_or_default()
        ),
        json: outcome,
        code: 0,
    })
}

/// How long a restore waits for a running `migrate` (the same default as `--lock-timeout`).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

pub struct Options {
    pub force: bool,
    pub terminate_connections: bool,
    pub to: Option<String>,
    /// Only restore if the database is still missing once the lock is held.
    pub if_missing: bool,
}

/// What `--if-missing` found and did.
pub enum IfMissing {
    Exists,
    NoSnapshot,
    Restored { snapshot: String, outcome: Value },
}

impl IfMissing {
    pub fn message(&self, url: &DatabaseUrl) -> String {
        match self {
            IfMissing::Exists => format!("{} exists: nothing restored", url.display()),
            IfMissing::NoSnapshot => format!(
                "{} is missing and the store holds no snapshot of it: starting fresh",
                url.display()
            ),
            IfMissing::Restored { snapshot, .. } => {
                format!(
                    "{} was missing: restored snapshot {snapshot}",
                    url.display()
                )
            }
        }
    }

    pub fn json(&self) -> Value {
        match self {
            IfMissing::Exists => json!({ "missing": false, "restored": null }),
            IfMissing::NoSnapshot => json!({ "missing": true, "restored": null }),
            IfMissing::Restored { outcome, .. } => json!({ "missing": true, "restored": outcome }),
        }
    }
}

/// A database that is missing (a fresh volume, a new server) gets the newest of its snapshots
/// that verifies; one that exists is left alone. Never restores over an existing database: for
/// SQLite, "missing" is checked again under the migration lock.
pub async fn restore_if_missing(
    settings: &Settings,
    url: &DatabaseUrl,
) -> Result<IfMissing, Failure> {
    if !backup::owner::is_missing(url).await? {
        tracing::info!("{} exists: nothing to restore", url.display());
        return Ok(IfMissing::Exists);
    }
    // The newest snapshots of the first store that has any (the primary, else a mirror): a
    // primary that answers but lost its snapshots must not start the database fresh.
    let stores = settings.stores().await?;
    let mut found = None;
    for (n, store) in stores.iter().enumerate() {
        let listing = match backup::list_all(store, &url.name()).await {
            Ok(l) => l,
            Err(e) if n + 1 < stores.len() => {
                tracing::warn!("{e}");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let folder_owner = backup::owner::read(store, &url.name()).await?;
        let candidates = backup::owner::mine(
            store,
            &url.name(),
            listing.snapshots,
            &backup::owner::Live::Absent,
            backup::owner::format_of(url),
            folder_owner.as_ref(),
        )?;
        if !candidates.is_empty() {
            if n > 0 {
                tracing::warn!(
                    "the primary store holds no snapshot of {}; using mirror {n}",
                    url.name()
                );
            }
            found = Some((store, candidates));
            break;
        }
    }
    let Some((store, candidates)) = found else {
        tracing::warn!(
            "{} is missing and no store holds a snapshot of it: starting fresh",
            url.display()
        );
        return Ok(IfMissing::NoSnapshot);
    };
    let opts = Options {
        force: false,
        terminate_connections: false,
        to: None,
        if_missing: true,
    };
    for m in &candidates {
        tracing::warn!(
            "{} is missing: restoring its newest snapshot {} before anything else",
            url.display(),
            m.id
        );
        let copies = in_order(&stores, store);
        match restore_snapshot(settings, &copies, url, m, &opts).await {
            Ok(outcome) if outcome["exists"] == true => return Ok(IfMissing::Exists),
            Ok(outcome) => {
                return Ok(IfMissing::Restored {
                    snapshot: m.id.clone(),
                    outcome,
                })
            }
            // A snapshot that is itself bad: the next newest. Anything else (no key, no space,
            // the database in use) would fail the older one too, or must be fixed first.
            Err(f) if f.damaged => {
                tracing::warn!(
                    "snapshot {} does not verify ({}); trying the one before",
                    m.id,
                    f.message
                );
            }
            Err(f) => return Err(f),
        }
    }
    Err(Failure::new(
        crate::report::EXIT_FAILED,
        format!(
            "{} is missing, and none of its {} snapshot(s) verifies; nothing was restored",
            url.display(),
            candidates.len()
        ),
    ))
}

/// `first`, then every other store in their order: where a restore fetches from.
fn in_order<'a>(stores: &'a [backup::Store], first: &'a backup::Store) -> Vec<&'a backup::Store> {
    std::iter::once(first)
        .chain(stores.iter().filter(|s| !std::ptr::eq(*s, first)))
        .collect()
}

/// Finds the manifest for an id, `latest`, or `pre-deploy` (from the state dir), in the primary
/// store, else in the first mirror that has it (the primary unreachable, or the snapshot missing
/// there). Returns it with the stores to fetch from, that one first.
pub async fn resolve<'a>(
    settings: &Settings,
    stores: &'a [backup::Store],
    url: &DatabaseUrl,
    which: &str,
) -> Result<(backup::Manifest, Vec<&'a backup::Store>), Failure> {
    let mut first_failure = None;
    for (n, store) in stores.iter().enumerate() {
        match resolve_in(settings, store, url, which).await {
            Ok(m) => {
                if n > 0 {
                    tracing::warn!(
                        "snapshot {} found in mirror {n} ({})",
                        m.id,
                        store.describe(&m.data_key)
                    );
                }
                return Ok((m, in_order(stores, store)));
            }
            Err(f) => {
                if stores.len() > 1 {
                    tracing::warn!("{}: {}", store.describe(""), f.message);
                }
                first_failure.get_or_insert(f);
            }
        }
    }
    Err(first_failure.expect("there is always a primary store"))
}

async fn resolve_in(
    settings: &Settings,
    store: &backup::Store,
    url: &DatabaseUrl,
    which: &str,
) -> Result<backup::Manifest, Failure> {
    let listing = backup::list_all(store, &url.name()).await?;
    for d in &listing.damaged {
        tracing::warn!("skipping {}: {}", store.describe(&d.key), d.problem);
    }
    if let Some(d) = listing
        .damaged
        .iter()
        .find(|d| d.key == backup::manifest_key(&url.name(), which))
    {
        return Err(backup::Error::Refused(format!(
            "snapshot {which} is damaged: {} {}; nothing was restored. Pick another one (`dbward snapshots`).",
            store.describe(&d.key),
            d.problem
        ))
        .into());
    }
    // `latest` is the newest of THIS database's snapshots: same identity, same format.
    let live = backup::owner::live_identity(url).await?;
    let folder_owner = backup::owner::read(store, &url.name()).await?;
    let mine = backup::owner::mine(
        store,
        &url.name(),
        listing.snapshots.clone(),
        &live,
        backup::owner::format_of(url),
        folder_owner.as_ref(),
    )?;
    let all = listing.snapshots;
    let id = match which {
        "latest" => mine.first().map(|m| m.id.clone()),
        "pre-deploy" => {
            let deploy = state::read(&settings.state_dir, &url.name())
                .map_err(|e| Failure::new(EXIT_FAILED, e))?;
            match deploy.and_then(|d| d.pre_deploy_snapshot) {
                Some(id) => Some(id),
                None => return Err(Failure::new(EXIT_FAILED, format!("the last `migrate` of {} took no pre-deploy snapshot (nothing was pending, or it was a first deploy); name a snapshot id instead", url.display()))),
            }
        }
        id => Some(id.to_string()),
    };
    let Some(id) = id else {
        return Err(Failure::new(
            EXIT_FAILED,
            format!("no snapshot of {} in {}", url.name(), settings.store),
        ));
    };
    all.into_iter().find(|m| m.id == id).ok_or_else(|| {
        Failure::new(
            EXIT_FAILED,
            format!(
                "snapshot {id} is not in {} (see `dbward snapshots`)",
                settings.store
            ),
        )
    })
}

/// Asks on a terminal; without one, `--yes` is required.
fn confirm(yes: bool, question: &str) -> Result<(), Failure> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::new(
            EXIT_USAGE,
            "restore replaces the database: pass --yes to confirm (no terminal to ask on)",
        ));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    if matches!(line.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Failure::new(
            EXIT_USAGE,
            "not confirmed; nothing was restored",
        ))
    }
}

/// The restore itself, for `restore` and the health guard. Returns the JSON result.
pub async fn restore_snapshot(
    settings: &Settings,
    stores: &[&backup::Store],
    url: &DatabaseUrl,
    m: &backup::Manifest,
    opts: &Options,
) -> Result<Value, Failure> {
    let started = Instant::now();
    tracing::info!(
        "restoring snapshot {} ({}) into {}",
        m.id,
        backup::bytes(m.stored_bytes),
        opts.to.as_deref().unwrap_or(&url.display())
    );
    // An encrypted snapshot needs an identity: refused before anything is fetched.
    let identities = settings.identities()?;
    identities.check_can_try(m)?;
    // Which store's copy was restored: the first that verified.
    let used: usize;
    let result = match url {
        DatabaseUrl::Sqlite(live) => {
            let target = opts
                .to
                .as_deref()
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| live.clone());
            if let Some(to) = &opts.to {
                if to.contains("://") || to.starts_with("postgres") {
                    return Err(Failure::new(
                        EXIT_USAGE,
                        format!("--to {to}: a SQLite snapshot restores into a file path"),
                    ));
                }
                let dir = restore::sqlite::dir_of(&target);
                if !dir.is_dir() {
                    return Err(Failure::new(
                        EXIT_USAGE,
                        format!(
                            "--to {}: the directory {} does not exist (dbward creates no directories for a restore)",
                            target.display(),
                            dir.display()
                        ),
                    ));
                }
            }
            if opts.to.is_some() && target.exists() {
                return Err(Failure::new(
                    EXIT_USAGE,
                    format!(
                        "--to {}: the file exists; restore into a new path",
                        target.display()
                    ),
                ));
            }
            // The migration lock: no `migrate` (or other restore) runs meanwhile.
            // On a blocking thread, so a stop request is seen while it waits.
            let lock_path = live.clone();
            let _lock = tokio::task::spawn_blocking(move || {
                migrator::database::sqlite::lock_file(&lock_path, LOCK_WAIT)
            })
            .await
            .map_err(|e| Failure::new(EXIT_FAILED, e.to_string()))??;
            if opts.if_missing && !backup::owner::is_missing(url).await? {
                tracing::info!("{} appeared meanwhile: nothing restored", url.display());
                return Ok(json!({ "exists": true }));
            }
            if opts.to.is_none() && opts.force {
                let holders = restore::sqlite::holders(live);
                if !holders.is_empty() {
                    tracing::warn!(
                        "{} is still open in {}: --force swaps the file under them; they keep reading and writing the replaced file (kept aside), where their writes are not seen: restart them",
                        live.display(),
                        holders.join(", ")
                    );
                }
            }
            if opts.to.is_none() && !opts.force {
                let holders = restore::sqlite::holders(live);
                if !holders.is_empty() {
                    return Err(backup::Error::Refused(format!(
                        "{} is open in {}; stop the application first, or pass --force (it keeps writing to the file moved aside). Nothing was replaced.",
                        live.display(),
                        holders.join(", ")
                    ))
                    .into());
                }
            }
            let dir = restore::sqlite::dir_of(&target);
            let (fetched, copy) = restore::fetch_any(stores, m, &dir).await?;
            used = copy;
            let restored = restore::decompress(
                &fetched,
                &dir,
                restore::sqlite::TEMP_PREFIX,
                m,
                &identities,
                restore::Lifetime::Durable,
            )?;
            drop(fetched);
            restore::sqlite::check(&restored, m)?;
            if opts.to.is_some() {
                restore::sqlite::adopt_ownership(&restored, None)?;
                std::fs::rename(&restored, &target).map_err(|e| {
                    Failure::new(
                        EXIT_FAILED,
                        format!("renaming to {}: {e}", target.display()),
                    )
                })?;
                restored.keep();
                json!({ "database": target, "replaced": null })
            } else {
                let kept = restore::sqlite::swap_in(live, restored, opts.force)?;
                json!({ "database": live, "replaced": kept })
            }
        }
        DatabaseUrl::Postgres(pg) => {
            let (fetched, copy) = restore::fetch_any(stores, m, &settings.temp_dir()).await?;
            used = copy;
            // An encrypted snapshot no identity opens is refused here, before a session is ended,
            // a database created, or an in-place restore's snapshot taken.
            let header = std::fs::File::open(&fetched).map_err(|e| {
                Failure::new(EXIT_FAILED, format!("opening {}: {e}", fetched.display()))
            })?;
            identities.check_opens(header, m)?;
            let (target_url, to) = match &opts.to {
                Some(to) => match DatabaseUrl::parse(to)? {
                    DatabaseUrl::Postgres(t) => {
                        let name = t.config.get_dbname().unwrap_or_default().to_string();
                        (t, Some(name))
                    }
                    DatabaseUrl::Sqlite(_) => {
                        return Err(Failure::new(
                            EXIT_USAGE,
                            "--to: a PostgreSQL snapshot restores into a postgres:// URL",
                        ))
                    }
                },
                None => (pg.clone(), None),
            };
            let swap_blocked = if opts.to.is_none() {
                restore::postgres::rename_impossible(pg)
            } else {
                None
            };
            let swapped = match swap_blocked {
                Some(why) => Err(backup::Error::NeedsInPlace(why)),
                None => {
                    restore::postgres::restore(
                        &target_url,
                        &fetched,
                        m,
                        &restore::postgres::Options {
                            terminate_connections: opts.terminate_connections,
                            to,
                            if_missing: opts.if_missing,
                            identities: identities.clone(),
                        },
                    )
                    .await
                }
            };
            let out = match swapped {
                Err(backup::Error::NeedsInPlace(why)) if opts.to.is_none() => {
                    let kept = if opts.if_missing {
                        // A missing (empty) database has nothing to keep, and no snapshot (nor
                        // identity) is made of it; it is looked at again right before.
                        if !backup::owner::is_missing(url).await? {
                            tracing::info!(
                                "{} appeared meanwhile: nothing restored",
                                url.display()
                            );
                            return Ok(json!({ "exists": true }));
                        }
                        tracing::warn!("restoring {} in place: {why}", url.display());
                        None
                    } else {
                        // The replaced state is kept first, as a snapshot of its own.
                        tracing::warn!(
                            "restoring {} in place: {why}. Taking a snapshot of its current state first",
                            url.display()
                        );
                        Some(
                            super::backup::snapshot(
                                settings,
                                url,
                                backup::Kind::Manual,
                                Some(format!("before the in-place restore of {}", m.id)),
                            )
                            .await?,
                        )
                    };
                    let mut out = restore::postgres::restore_in_place(
                        pg,
                        &fetched,
                        m,
                        &identities,
                        opts.terminate_connections,
                        why,
                    )
                    .await
                    .map_err(|e| {
                        let mut f = Failure::from(e);
                        if let Some(k) = &kept {
                            f.message
                                .push_str(&format!(" (the state before is snapshot {})", k.id));
                        }
                        f
                    })?;
                    out.replaced = kept.map(|k| format!("snapshot {}", k.id));
                    out
                }
                other => other?,
            };
            json!(out)
        }
    };
    let secs = started.elapsed().as_secs_f64();
    tracing::info!("restored snapshot {} in {secs:.1}s", m.id);
    // A copy of the replaced database was kept: record it, and trim the oldest beyond
    // restore.keep_replaced (an in-place restore kept a snapshot instead).
    if opts.to.is_none() {
        if let Some(kept) = result["replaced"].as_str() {
            if !kept.starts_with("snapshot ") {
                crate::replaced::record_and_trim(settings, url, kept, &m.id).await;
            }
        }
    }
    let mut out = result;
    if let Value::Object(map) = &mut out {
        map.insert("snapshot".into(), m.id.clone().into());
        map.insert("seconds".into(), json!(secs));
        map.insert("copy".into(), stores[used].describe(&m.data_key).into());
    }
    Ok(out)
}

//! Which snapshot a name means (an id, `latest`, `pre-deploy`), and in which store's copy: the
//! primary first, then each mirror. Used by `restore`, the health guard and drills.

use migrator::DatabaseUrl;

use crate::exit::Exit;
use crate::report::Failure;
use crate::settings::Settings;
use crate::state;

/// Finds the manifest for an id, `latest`, or `pre-deploy` (from the state dir), in the primary
/// store, else in the first mirror that has it (the primary unreachable, or the snapshot missing
/// there). Returns it with the stores to fetch from, that one first.
pub async fn resolve<'a>(
    settings: &Settings,
    stores: &'a backup::StoreSet,
    url: &DatabaseUrl,
    which: &str,
) -> Result<(backup::Manifest, Vec<&'a backup::Store>), Failure> {
    let several = stores.all().len() > 1;
    let found = stores
        .find(
            |store| async move { resolve_in(settings, store, url, which).await.map(Some) },
            |_, store, f: &Failure| {
                if several {
                    tracing::warn!("{}: {}", store.describe(""), f.full());
                }
            },
        )
        .await?;
    let backup::Found {
        at,
        store,
        value: m,
    } = found.expect("resolve_in finds the manifest or fails");
    if at > 0 {
        tracing::warn!(
            "snapshot {} found in mirror {at} ({})",
            m.id,
            store.describe(&m.data_key)
        );
    }
    Ok((m, stores.starting_at(store)))
}

/// The manifest `which` names in `store`. `latest` reads manifests newest first, a few at a
/// time, only until it has this database's newest (its identity, its format); an id (or the
/// `pre-deploy` one from the state dir) is one read. A store with thousands of snapshots answers
/// in a listing of the last day's keys and a handful of reads, not one read per snapshot.
async fn resolve_in(
    settings: &Settings,
    store: &backup::Store,
    url: &DatabaseUrl,
    which: &str,
) -> Result<backup::Manifest, Failure> {
    let db = url.name();
    backup::check_folder_name(&db)?;
    // Only this database's snapshots: same identity, same format (and a folder another
    // database owns is refused, whatever is asked for).
    let live = backup::owner::live_identity(url).await?;
    let folder_owner = backup::owner::read(store, &db).await?;
    let format = backup::owner::format_of(url);
    let mine = |all: Vec<backup::Manifest>| {
        backup::owner::mine(store, &db, all, &live, format, folder_owner.as_ref())
    };
    mine(Vec::new())?;
    let id = match which {
        "latest" => return latest(settings, store, url, &mine).await,
        "pre-deploy" => pre_deploy_id(settings, url).await?,
        id => id.to_string(),
    };
    let key = backup::manifest_key(&db, &id);
    match backup::catalog::read_manifest(store, &db, &key).await {
        Ok(Ok(m)) if m.format == backup::manifest::Format::Pgpoint => Err(backup::Error::Refused(format!(
            "snapshot {id} is a restore point in the cluster's WAL archive, not a pg_dump of {}: restore it with `dbward restore {id} --physical --to DIR` (the health guard rewinds the cluster to it with [pitr.server]); nothing was restored",
            url.display()
        ))
        .into()),
        Ok(Ok(m)) if m.format == backup::manifest::Format::Pgbase => Err(backup::Error::Refused(format!(
            "snapshot {id} is a base backup of the whole cluster, not a pg_dump of {}: restore it with `dbward restore {id} --physical --to DIR`; nothing was restored",
            url.display()
        ))
        .into()),
        Ok(Ok(m)) => Ok(m),
        Ok(Err(d)) => Err(backup::Error::Refused(format!(
            "snapshot {id} is damaged: {} {}; nothing was restored. Pick another one (`dbward snapshots`).",
            store.describe(&d.key),
            d.problem
        ))
        .into()),
        Err(backup::Error::Missing(_)) => Err(Failure::new(
            Exit::Failed,
            format!(
                "snapshot {id} is not in {} (see `dbward snapshots`)",
                settings.store
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

/// The pre-deploy snapshot of the newest deploy that changed the database and took one, on any
/// host (the deploy log, this host's and the store's): a later `migrate` that found nothing
/// pending does not hide it.
pub async fn pre_deploy_id(settings: &Settings, url: &DatabaseUrl) -> Result<String, Failure> {
    let scope = state::Scope::of(&settings.state_dir, url).await;
    let store = settings.store().await?;
    match crate::deploys::last_change(&scope, &store).await {
        Some(e) if e.snapshot.is_none() => Err(Failure::new(
            Exit::Failed,
            format!(
                "the newest deploy of {} (at {} on {}, {}) took no pre-deploy snapshot (--no-snapshot, or a first deploy): restoring an older one would undo more than that deploy. Name a snapshot id instead (`dbward snapshots`, `dbward deploys`)",
                url.display(),
                e.at,
                e.host,
                e.applied.iter().map(|v| format!("V{v}")).collect::<Vec<_>>().join(", ")
            ),
        )),
        Some(e) => {
            let id = e.snapshot.expect("checked above");
            tracing::info!(
                "pre-deploy: snapshot {id}, taken by the deploy at {} on {} ({})",
                e.at,
                e.host,
                e.outcome
            );
            Ok(id)
        }
        None => Err(Failure::new(
            Exit::Failed,
            format!(
                "no deploy of {} changed it (the deploy log, here and in the store, has none); name a snapshot id instead (`dbward snapshots`)",
                url.display()
            ),
        )),
    }
}

/// This database's newest snapshot in `store` ([`backup::catalog::newest`]).
async fn latest(
    settings: &Settings,
    store: &backup::Store,
    url: &DatabaseUrl,
    mine: &impl Fn(Vec<backup::Manifest>) -> Result<Vec<backup::Manifest>, backup::Error>,
) -> Result<backup::Manifest, Failure> {
    let accept = |m: backup::Manifest| Ok(mine(vec![m])?.pop());
    backup::catalog::newest(store, &url.name(), &accept)
        .await?
        .ok_or_else(|| {
            Failure::new(
                Exit::Failed,
                format!("no snapshot of {} in {}", url.name(), settings.store),
            )
        })
}

//! Which snapshot a name means (an id, `latest`, `pre-deploy`), and in which store's copy: the
//! primary first, then each mirror. Used by `restore`, the health guard and drills.

use migrator::DatabaseUrl;

use crate::report::{Exit, Failure};
use crate::settings::Settings;
use crate::state;

/// `first`, then every other store in their order: where a restore fetches from.
pub fn in_order<'a>(
    stores: &'a [backup::Store],
    first: &'a backup::Store,
) -> Vec<&'a backup::Store> {
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
            let deploy = state::read(&settings.state_dir, &url.name())?;
            match deploy.and_then(|d| d.pre_deploy_snapshot) {
                Some(id) => Some(id),
                None => return Err(Failure::new(Exit::Failed, format!("the last `migrate` of {} took no pre-deploy snapshot (nothing was pending, or it was a first deploy); name a snapshot id instead", url.display()))),
            }
        }
        id => Some(id.to_string()),
    };
    let Some(id) = id else {
        return Err(Failure::new(
            Exit::Failed,
            format!("no snapshot of {} in {}", url.name(), settings.store),
        ));
    };
    all.into_iter().find(|m| m.id == id).ok_or_else(|| {
        Failure::new(
            Exit::Failed,
            format!(
                "snapshot {id} is not in {} (see `dbward snapshots`)",
                settings.store
            ),
        )
    })
}

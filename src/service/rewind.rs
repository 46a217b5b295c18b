//! The guard's rewind of the PostgreSQL cluster on this host to a deploy's restore point, as
//! the settings name it (`[pitr.server]`): [`backup::pitr::rewind`] checks, prepares and
//! finishes it; the binary decides that it may (a PostgreSQL database, `[pitr.server]` set,
//! the deploy not undone by another guard meanwhile) and reports it.

use backup::pitr::rewind::{self, Cluster, Error, Rewound};
use migrator::DatabaseUrl;

use crate::report::Failure;
use crate::settings::Settings;

/// Rewinds the cluster at `url` to restore point `point_id`; `deploy_head` is the head the
/// deploy left (the live cluster must still hold it). Exit 3 when refused before anything
/// changed, exit 1 when it failed (the message says what runs).
pub async fn rewind(
    settings: &Settings,
    url: &DatabaseUrl,
    point_id: &str,
    deploy_head: Option<(i64, String)>,
) -> Result<Rewound, Failure> {
    let DatabaseUrl::Postgres(pg) = url else {
        return Err(Error::Refused("a rewind is of a PostgreSQL cluster".into()).into());
    };
    let Some(cluster) = cluster(settings) else {
        return Err(Error::Refused(format!(
            "{point_id} is a restore point, and [pitr.server] is not set: dbward cannot stop, rewind and start this cluster (restore it by hand: `dbward restore {point_id} --physical --to DIR`)"
        ))
        .into());
    };
    let archive = crate::service::pitr::archive(settings, url).await?;
    let checked = rewind::check(&cluster, pg, archive, point_id, deploy_head).await?;
    // Under the migration lock, the deploy is still to be undone: a guard that came second
    // finds it done.
    let locked = rewind::lock(pg).await?;
    let deploy = crate::state::Scope::of(&settings.state_dir, url)
        .await
        .read()?;
    if let Some(at) = deploy.as_ref().and_then(|d| d.restored.as_ref()) {
        return Err(Error::Failed(format!(
            "the deploy was undone meanwhile (at {at}); not rewinding again"
        ))
        .into());
    }
    let prepared = rewind::prepare(&cluster, checked, locked).await?;
    Ok(rewind::finish(&cluster, pg, prepared).await?)
}

/// Fills in what the rewind discarded (see [`rewind::count_discarded`]).
pub async fn count_discarded(
    settings: &Settings,
    url: &DatabaseUrl,
    r: &mut Rewound,
    batch_xid: Option<u32>,
) {
    let DatabaseUrl::Postgres(pg) = url else {
        return;
    };
    match crate::service::pitr::archive(settings, url).await {
        Ok(archive) => rewind::count_discarded(pg, &archive, r, batch_xid).await,
        Err(f) => {
            tracing::warn!(
                "what the rewind discarded could not be counted: {}",
                f.full()
            );
            r.discarded_unknown = Some(f.full());
        }
    }
}

/// `[pitr.server]` as the rewind takes it.
fn cluster(settings: &Settings) -> Option<Cluster> {
    let cfg = settings.pitr.server.as_ref()?;
    Some(Cluster {
        data_dir: cfg.data_dir.clone(),
        stop: cfg.stop.clone(),
        start: cfg.start.clone(),
        user: cfg.user.clone(),
        allow_other_databases: cfg.allow_other_databases,
        stop_limit: cfg.stop_limit(),
        start_limit: cfg.start_limit(),
        temp_dir: settings.temp_dir(),
        database_url: settings.database.clone(),
    })
}

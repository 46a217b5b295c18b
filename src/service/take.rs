//! Taking a snapshot with the settings' stores (primary and mirrors), temp dir, lock timeout
//! and encryption, and retention after it: for `backup`, `migrate`'s pre-deploy snapshot, and
//! the in-place restore's snapshot of the state before.

use migrator::DatabaseUrl;

use crate::report::Failure;
use crate::settings::Settings;

/// Retention after a new snapshot `m`, in the primary store and in every mirror (each store's
/// own listing: a mirror that missed a snapshot keeps what it has). Returns the ids removed
/// from the primary; `None` without a policy.
pub async fn retain(
    settings: &Settings,
    url: &DatabaseUrl,
    m: &backup::Manifest,
) -> Result<Option<Vec<String>>, Failure> {
    if settings.retention.is_empty() {
        return Ok(None);
    }
    let live = backup::owner::Live::Present(m.database_id.clone());
    let db = url.name();
    let stores = settings.stores().await?;
    let formats = [m.format];
    let (primary, mirrors) = stores
        .each(|store| backup::prune(store, &db, &settings.retention, false, &live, &formats))
        .await?;
    for backup::InMirror { mirror, result } in mirrors {
        if let Err(e) = result {
            let e = backup::error::chain(&e);
            tracing::warn!("retention in mirror {mirror}: {e}");
        }
    }
    Ok(Some(primary.removed))
}

/// `migrate`'s pre-deploy snapshot. SQLite with its replicator running: the position it ships
/// at once ([`super::stream::pre_deploy_point`]). PostgreSQL with `[pitr.server]` (the guard
/// can rewind this cluster): a restore point, when the archive can take one. Otherwise, or when
/// those cannot, a dump or a file; the second value says why it was taken where a point was
/// wanted.
pub async fn pre_deploy(
    settings: &Settings,
    url: &DatabaseUrl,
) -> Result<(backup::Manifest, Option<String>), Failure> {
    // SQLite with its replicator running: the position it ships now.
    if let DatabaseUrl::Sqlite(path) = url {
        return match super::stream::pre_deploy_point(settings, url, path).await {
            Ok(Some(m)) => Ok((m, None)),
            Ok(None) => Ok((
                snapshot(settings, url, backup::Kind::PreDeploy, None).await?,
                None,
            )),
            Err(why) => {
                let why = format!("no stream position: {why}; taking a snapshot instead");
                tracing::warn!("{why}");
                let m = snapshot(settings, url, backup::Kind::PreDeploy, None).await?;
                Ok((m, Some(why)))
            }
        };
    }
    let (DatabaseUrl::Postgres(pg), Some(_)) = (url, &settings.pitr.server) else {
        return Ok((
            snapshot(settings, url, backup::Kind::PreDeploy, None).await?,
            None,
        ));
    };
    let db = url.name();
    let point = async {
        let store = settings.store().await?;
        let bases = backup::pitr::cluster::bases(&store, &db).await?;
        backup::pitr::point::take(
            &store,
            &db,
            pg,
            bases.first(),
            backup::Kind::PreDeploy,
            settings.pitr.restore_point_wait,
        )
        .await
        .map_err(Failure::from)
    };
    match point.await {
        Ok(m) => Ok((m, None)),
        Err(f) => {
            let why = format!("no restore point: {}; taking a dump instead", f.full());
            tracing::warn!("{why}");
            let m = snapshot(settings, url, backup::Kind::PreDeploy, None).await?;
            Ok((m, Some(why)))
        }
    }
}

/// Takes one snapshot with the settings' store, temp dir and lock timeout.
pub async fn snapshot(
    settings: &Settings,
    url: &DatabaseUrl,
    kind: backup::Kind,
    label: Option<String>,
) -> Result<backup::Manifest, Failure> {
    take(settings, url, kind, label, false).await
}

/// A snapshot (`physical`: a PostgreSQL cluster's base backup) with the settings' stores.
pub async fn take(
    settings: &Settings,
    url: &DatabaseUrl,
    kind: backup::Kind,
    label: Option<String>,
    physical: bool,
) -> Result<backup::Manifest, Failure> {
    let stores = settings.stores().await?;
    let temp_dir = settings.temp_dir();
    let bar = progress_bar();
    let req = backup::Request {
        database: url,
        kind,
        label,
        level: settings.level,
        temp_dir: &temp_dir,
        lock_timeout: settings.lock_timeout,
        encryption: settings.encryption()?,
        manifest_details: settings.encryption.manifest_details,
        physical,
        progress: bar.clone().map(|bar| -> backup::Progress {
            std::sync::Arc::new(move |done, total| {
                bar.set_length(total.max(done));
                bar.set_position(done);
            })
        }),
    };
    let result = backup::take_to(&stores, &req).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let taken = result?;
    for (i, e) in &taken.failed_mirrors {
        tracing::warn!(
            "snapshot {} has no copy in mirror {} ({}): {} (store.require = primary: going on)",
            taken.manifest.id,
            i + 1,
            settings.store_mirrors[*i],
            backup::error::chain(e)
        );
    }
    if stores.all().len() > 1 {
        tracing::info!(
            "snapshot {} stored in {} of {} stores",
            taken.manifest.id,
            stores.all().len() - taken.failed_mirrors.len(),
            stores.all().len()
        );
    }
    Ok(taken.manifest)
}

/// A byte progress bar on stderr when it is a terminal (never in the journal or a pipe).
fn progress_bar() -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar =
        indicatif::ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::stderr());
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} snapshot {bytes}/{total_bytes} {bytes_per_sec} {wide_bar} {eta}",
    )
    .expect("a valid template");
    bar.set_style(style);
    Some(bar)
}

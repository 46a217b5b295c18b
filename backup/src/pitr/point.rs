//! A restore point as a pre-deploy snapshot: `pg_create_restore_point(<id>)` and a WAL switch,
//! waited for until the switched segment is in the store's WAL archive, then checked to follow
//! a base without a gap, and only then recorded by a manifest (format `pgpoint`, no data
//! object). Its cost does not grow with the database: the archive already holds everything
//! before it.
//!
//! Every check that can fail runs before the manifest exists: a caller that gets an error has
//! no snapshot and takes a logical one instead.

use std::time::{Duration, Instant};

use dbconn::postgres::{applied_on, describe, Postgres};
use dbconn::PgUrl;
use time::OffsetDateTime;

use crate::error::Error;
use crate::manifest::{self, Format, Kind, Manifest, Point};
use crate::pitr::base::{lsn_text, parse_lsn};
use crate::pitr::physical::{physical_of, plan_wal, Target};
use crate::store::Store;

/// How often the archive is asked for the switched segment.
const POLL: Duration = Duration::from_millis(20);

/// Takes a restore point of the cluster `url` is on, recorded in `store`'s folder `database`
/// (whose WAL archive it is). `base` is the newest base of the folder's owner. Returns the
/// manifest (stored), or why a restore point cannot stand in for a dump.
pub async fn take(
    store: &Store,
    database: &str,
    url: &PgUrl,
    base: Option<&Manifest>,
    kind: Kind,
    wait: Duration,
) -> Result<Manifest, Error> {
    let started = Instant::now();
    let at = OffsetDateTime::now_utc();
    let id = manifest::snapshot_id(at, kind);
    let base = base.ok_or_else(|| {
        Error::Refused(format!(
            "there is no base backup of {database} in {} (take one: `dbward backup --physical`)",
            store.describe(database)
        ))
    })?;
    physical_of(base)?;
    let db = Postgres::connect(url).await?;
    let c = db.client();
    let cluster = check(c, store, database, url, base).await?;
    let applied = applied_on(c).await?;
    let database_id = dbconn::identity::read_pg(c).await?;
    let (point_lsn, switched) = create(c, &id).await?;
    drop(db);
    wait_archived(store, database, &switched, started, wait).await?;
    // The base's WAL and everything after it up to the point, without a gap.
    let target = Target::Point {
        name: id.clone(),
        lsn: point_lsn,
    };
    plan_wal(store, database, base, &target, None).await?;

    let manifest = Manifest {
        server_version: cluster.server_version,
        point: Some(Point {
            name: id.clone(),
            lsn: lsn_text(point_lsn),
            timeline: cluster.timeline,
            segment: switched,
            system_identifier: cluster.system_identifier,
            base: base.id.clone(),
        }),
        database_id,
        migration_head: crate::engine::head(applied),
        duration_ms: started.elapsed().as_millis() as u64,
        ..Manifest::of_position(id.clone(), kind, at, "postgres", Format::Pgpoint, database)
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("serializes");
    store
        .put_new(&crate::catalog::manifest_key(database, &id), &json)
        .await?;
    Ok(manifest)
}

/// The live cluster, as a point taken now would need it.
struct Cluster {
    server_version: String,
    system_identifier: String,
    timeline: u32,
}

/// Every check before anything is written: no tablespace beyond pg_default, a primary, an
/// archiver that is not failing, the base's and the archive's cluster, the base's timeline.
async fn check(
    c: &tokio_postgres::Client,
    store: &Store,
    database: &str,
    url: &PgUrl,
    base: &Manifest,
) -> Result<Cluster, Error> {
    let unusable = |why: String| Error::Refused(why);
    let p = physical_of(base)?;
    let q = |e: tokio_postgres::Error| Error::Source(describe(&e));
    let row = c
        .query_one(
            "SELECT current_setting('server_version'), \
                    (SELECT system_identifier::text FROM pg_control_system()), \
                    pg_is_in_recovery(), \
                    (SELECT coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) FROM pg_stat_archiver), \
                    (SELECT last_failed_wal FROM pg_stat_archiver), \
                    CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END, \
                    (SELECT string_agg(spcname, ', ') FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global'))",
            &[],
        )
        .await
        .map_err(q)?;
    let (server_version, sysid, in_recovery, failing, failed_wal, current, tablespaces): (
        String,
        String,
        bool,
        bool,
        Option<String>,
        Option<String>,
        Option<String>,
    ) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
        row.get(6),
    );
    if let Some(names) = tablespaces {
        return Err(unusable(format!(
            "the cluster has tablespaces besides pg_default ({names}), which no base holds"
        )));
    }
    if in_recovery {
        return Err(unusable(format!(
            "{} is a standby (in recovery): a restore point is the primary's",
            url.display
        )));
    }
    if failing {
        return Err(unusable(format!(
            "the server's archiver is failing (last failure on {}; see pg_stat_archiver and the server log)",
            failed_wal.unwrap_or_default()
        )));
    }
    if sysid != p.system_identifier {
        return Err(unusable(format!(
            "the newest base ({}) is of cluster {}, and {} is cluster {sysid}",
            base.id, p.system_identifier, url.display
        )));
    }
    let cluster = crate::pitr::wal::read_cluster(store, database).await?;
    if cluster.system_identifier != sysid {
        return Err(unusable(format!(
            "the WAL archive at {} holds cluster {}, and {} is cluster {sysid}",
            store.describe(database),
            cluster.system_identifier,
            url.display
        )));
    }
    let timeline = current
        .as_deref()
        .and_then(|w| u32::from_str_radix(w.get(..8)?, 16).ok())
        .ok_or_else(|| Error::Source("pg_walfile_name gave no timeline".into()))?;
    if timeline != p.timeline {
        return Err(unusable(format!(
            "the cluster is on timeline {timeline} and the newest base ({}) on timeline {}: a restore from that base cannot reach a point taken now (after a promotion or a rewind, take a new base: `dbward backup --physical`)",
            base.id, p.timeline
        )));
    }
    Ok(Cluster {
        server_version,
        system_identifier: sysid,
        timeline,
    })
}

/// `pg_create_restore_point`, then a WAL switch: the point's LSN and the switched segment.
async fn create(c: &tokio_postgres::Client, id: &str) -> Result<(u64, String), Error> {
    let row = c
        .query_one("SELECT pg_create_restore_point($1)::text", &[&id])
        .await
        .map_err(|e| {
            Error::Refused(format!(
                "pg_create_restore_point failed: {} (the role needs superuser, or GRANT EXECUTE ON FUNCTION pg_create_restore_point(text), pg_switch_wal() TO it)",
                describe(&e)
            ))
        })?;
    let point_text: String = row.get(0);
    let point_lsn = parse_lsn(&point_text)
        .ok_or_else(|| Error::Source(format!("pg_create_restore_point returned `{point_text}`")))?;
    let switched: String = c
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .map_err(|e| Error::Refused(format!("pg_switch_wal failed: {}", describe(&e))))?
        .get(0);
    Ok((point_lsn, switched))
}

/// The archiver pushes the switched segment: waited for in the store, until `wait` after
/// `started`.
async fn wait_archived(
    store: &Store,
    database: &str,
    switched: &str,
    started: Instant,
    wait: Duration,
) -> Result<(), Error> {
    loop {
        if crate::pitr::wal::stored_from(store, database, switched)
            .await?
            .iter()
            .any(|n| n == switched)
        {
            return Ok(());
        }
        if started.elapsed() > wait {
            return Err(Error::Refused(format!(
                "WAL segment {switched} (holding the restore point) did not reach the archive at {} within {} (is archive_command failing? see pg_stat_archiver)",
                store.describe(database),
                humantime(wait)
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn humantime(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Whether restore point `m` can be restored from one of `bases`: one of its cluster and
/// timeline, consistent at or before the point.
pub fn restorable(m: &Manifest, bases: &[&Manifest]) -> bool {
    let Some(point) = &m.point else {
        return false;
    };
    let lsn = parse_lsn(&point.lsn);
    bases.iter().any(|b| {
        b.physical.as_ref().is_some_and(|p| {
            p.system_identifier == point.system_identifier
                && p.timeline == point.timeline
                && parse_lsn(&p.stop_lsn).is_some()
                && parse_lsn(&p.stop_lsn) <= lsn
        })
    })
}

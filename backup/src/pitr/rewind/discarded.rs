//! What a rewind discarded: the committed row changes after the restore point in the kept
//! cluster's WAL ([`crate::pitr::waldump`]), the databases named by the rewound cluster.

use std::path::Path;

use dbconn::PgUrl;

use super::Rewound;
use crate::pitr::cluster::Archive;
use crate::pitr::{server, waldump};

/// [`waldump::Changes`] with the databases named.
#[derive(Debug, serde::Serialize)]
pub struct Discarded {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub by_database: std::collections::BTreeMap<String, u64>,
    pub from_lsn: String,
    pub to_lsn: String,
}

impl Discarded {
    pub fn total(&self) -> u64 {
        self.inserted + self.updated + self.deleted
    }
}

/// Fills `r.discarded` (or `r.discarded_unknown`): the committed row changes in the kept
/// (stopped) cluster's WAL after the restore point, in every database, the deploy's batch
/// (`batch_xid`) left out, WAL the kept directory no longer holds read from `archive`'s
/// primary store, the databases named by the rewound cluster at `pg` (the same oids). Run once
/// the cluster runs again and the rewind is recorded.
pub async fn count_discarded(
    pg: &PgUrl,
    archive: &Archive,
    r: &mut Rewound,
    batch_xid: Option<u32>,
) {
    match discarded_in(pg, archive, &r.kept, r.point_lsn, batch_xid).await {
        Ok(d) => r.discarded = Some(d),
        Err(e) => {
            let why = crate::error::chain(&e);
            tracing::warn!("what the rewind discarded could not be counted: {why}");
            r.discarded_unknown = Some(why);
        }
    }
}

async fn discarded_in(
    pg: &PgUrl,
    archive: &Archive,
    kept: &Path,
    lsn: u64,
    batch_xid: Option<u32>,
) -> Result<Discarded, crate::Error> {
    let version = kept.join("PG_VERSION");
    let major: u32 = std::fs::read_to_string(&version)
        .map_err(crate::Error::io(version.display().to_string()))?
        .trim()
        .parse()
        .map_err(|e| crate::Error::Damaged(format!("{}: {e}", version.display())))?;
    let bindir = server::bindir(major)?;
    let changes = waldump::discarded_since(
        kept,
        &bindir,
        lsn,
        batch_xid,
        Some((archive.stores.primary(), &archive.db, &archive.identities)),
    )
    .await?;
    let names: std::collections::HashMap<u32, String> =
        match dbconn::postgres::Postgres::connect(pg).await {
            Ok(db) => db
                .client()
                .query("SELECT oid::int8, datname::text FROM pg_database", &[])
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|r| (r.get::<_, i64>(0) as u32, r.get(1)))
                        .collect()
                })
                .unwrap_or_default(),
            Err(_) => Default::default(),
        };
    Ok(Discarded {
        inserted: changes.inserted,
        updated: changes.updated,
        deleted: changes.deleted,
        by_database: changes
            .by_database
            .iter()
            .map(|(oid, n)| {
                (
                    names
                        .get(oid)
                        .cloned()
                        .unwrap_or_else(|| format!("database oid {oid}")),
                    *n,
                )
            })
            .collect(),
        from_lsn: changes.from_lsn,
        to_lsn: changes.to_lsn,
    })
}

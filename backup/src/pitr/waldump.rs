//! What a rewind discarded, counted from the stopped cluster's own final state: its WAL from
//! the restore point to its shutdown checkpoint, read by PostgreSQL's `pg_waldump`. Every
//! database of the cluster counts; only committed transactions count (their inserts, updates
//! and deletes of tables the cluster's users made, relfilenode 16384 and up), and the deploy's
//! own batch (its transaction id) does not. Segments the kept data directory no longer holds
//! are fetched from the archive, each checked.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

use crate::crypt::Identities;
use crate::error::Error;
use crate::pitr::base::{lsn_text, parse_lsn, segment_from_number};
use crate::store::Store;

/// Committed row changes after a restore point.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Changes {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    /// Row changes per database (its oid, until the caller names it).
    pub by_database: BTreeMap<u32, u64>,
    /// Where the count began (the point) and ended (the stopped cluster's shutdown checkpoint).
    pub from_lsn: String,
    pub to_lsn: String,
}

impl Changes {
    pub fn total(&self) -> u64 {
        self.inserted + self.updated + self.deleted
    }
}

/// The first relfilenode of objects made after initdb: below it, the system catalogs.
const FIRST_USER_RELFILENODE: u32 = 16384;

/// How long `pg_waldump` may run.
const LIMIT: Duration = Duration::from_secs(600);

/// Counts the committed row changes in `data_dir`'s WAL (a stopped cluster's) from `from` (a
/// restore point's LSN) to its last checkpoint, leaving out transaction `exclude` (the
/// deploy's batch). `bindir`: the cluster's major version's binaries.
pub async fn discarded_since(
    data_dir: &Path,
    bindir: &Path,
    from: u64,
    exclude: Option<u32>,
    archive: Option<(&Store, &str, &Identities)>,
) -> Result<Changes, Error> {
    let control = controldata(bindir, data_dir)?;
    if control.checkpoint <= from {
        return Ok(Changes {
            from_lsn: lsn_text(from),
            to_lsn: lsn_text(control.checkpoint),
            ..Changes::default()
        });
    }
    // The segments from the point's to the checkpoint's: the kept directory's own, else the
    // archive's, side by side in a directory of this run's.
    let dir = tempfile::Builder::new()
        .prefix(".dbward-waldump-")
        .tempdir_in(data_dir.parent().unwrap_or(Path::new("/tmp")))
        .map_err(Error::io("making a directory for pg_waldump"))?;
    let seg = control.segment_bytes;
    for segno in from / seg..=control.checkpoint / seg {
        let name = segment_from_number(control.timeline, segno, seg);
        let own = data_dir.join("pg_wal").join(&name);
        if std::fs::metadata(&own).is_ok_and(|m| m.len() == seg) {
            std::os::unix::fs::symlink(&own, dir.path().join(&name))
                .map_err(Error::io(format!("linking {}", own.display())))?;
            continue;
        }
        let Some((store, database, identities)) = archive else {
            return Err(Error::Restore(format!(
                "WAL segment {name} is no longer in {}, and there is no archive to fetch it from",
                data_dir.join("pg_wal").display()
            )));
        };
        match crate::pitr::wal::fetch(store, database, &name, &dir.path().join(&name), identities)
            .await?
        {
            crate::pitr::wal::Fetched::Restored { .. } => {}
            crate::pitr::wal::Fetched::Absent { .. } => {
                return Err(Error::Restore(format!(
                    "WAL segment {name} is neither in the kept data directory nor in the archive"
                )))
            }
        }
    }
    let mut cmd = dbconn::child::tool(bindir.join("pg_waldump"));
    // No --end: pg_waldump misreads the record at an --end that follows a WAL switch. It
    // reads to the end of the WAL instead (nothing follows a shutdown checkpoint), and the
    // records from the checkpoint on are not counted.
    cmd.arg(format!("--path={}", dir.path().display()))
        .arg(format!("--timeline={}", control.timeline))
        .arg(format!("--start={}", lsn_text(from)))
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| Error::Tool {
        tool: "pg_waldump".into(),
        problem: format!("running it: {e}"),
    })?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let group = dbconn::child::Group::of(Some(child.id()));
    // Read on threads: the output is one line per WAL record, read and counted as it comes.
    let end = control.checkpoint;
    let counted = std::thread::spawn(move || count(std::io::BufReader::new(stdout), exclude, end));
    let said = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::BufReader::new(stderr), &mut s);
        s
    });
    let status = tokio::task::spawn_blocking(move || child.wait());
    let status = match tokio::time::timeout(LIMIT, status).await {
        Ok(Ok(Ok(status))) => {
            group.ended();
            status
        }
        Ok(_) => return Err(Error::Restore("waiting for pg_waldump failed".into())),
        Err(_) => {
            drop(group);
            return Err(Error::Restore(format!(
                "pg_waldump did not finish within {}; it was killed",
                dbconn::error::humanize(LIMIT)
            )));
        }
    };
    let mut changes = counted
        .join()
        .map_err(|_| Error::Restore("counting pg_waldump's output panicked".into()))?;
    let said = said.join().unwrap_or_default();
    // The end of the WAL is where pg_waldump finds no valid record: past the checkpoint, that
    // is where the stopped cluster's WAL ended, and everything before it was read.
    let at_the_end = said
        .split_once("error in WAL record at ")
        .and_then(|(_, rest)| parse_lsn(rest.split(':').next().unwrap_or_default()))
        .is_some_and(|at| at >= control.checkpoint);
    if !status.success() && !at_the_end {
        return Err(Error::Tool {
            tool: "pg_waldump".into(),
            problem: format!(
                "{status}, reading {} to {} on timeline {}: {}",
                lsn_text(from),
                lsn_text(control.checkpoint),
                control.timeline,
                said.trim()
            ),
        });
    }
    changes.from_lsn = lsn_text(from);
    changes.to_lsn = lsn_text(control.checkpoint);
    Ok(changes)
}

struct Control {
    checkpoint: u64,
    timeline: u32,
    segment_bytes: u64,
}

/// `pg_controldata`'s latest checkpoint (a cleanly stopped cluster's last record), its
/// timeline, and the segment size.
fn controldata(bindir: &Path, data_dir: &Path) -> Result<Control, Error> {
    let out = dbconn::child::tool(bindir.join("pg_controldata"))
        .arg(data_dir)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| Error::Tool {
            tool: "pg_controldata".into(),
            problem: format!("running it: {e}"),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |label: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(label))
            .map(|v| v.trim().to_string())
    };
    let missing = |what: &str| Error::Tool {
        tool: "pg_controldata".into(),
        problem: format!(
            "no `{what}` in its output for {}: {}",
            data_dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    };
    Ok(Control {
        checkpoint: field("Latest checkpoint location:")
            .and_then(|v| parse_lsn(&v))
            .ok_or_else(|| missing("Latest checkpoint location"))?,
        timeline: field("Latest checkpoint's TimeLineID:")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| missing("Latest checkpoint's TimeLineID"))?,
        segment_bytes: field("Bytes per WAL segment:")
            .and_then(|v| v.parse().ok())
            .filter(|n: &u64| *n > 0)
            .ok_or_else(|| missing("Bytes per WAL segment"))?,
    })
}

/// One WAL record's row changes: (xid, database oid, inserts, updates, deletes).
type RecordChanges = (u32, u32, u64, u64, u64);

/// Counts `pg_waldump`'s records before `end`: each transaction's row changes are held until its
/// COMMIT (then counted, with those of the subtransactions it lists) or dropped at its ABORT; a
/// transaction that did not end before `end` did not commit.
fn count(out: impl BufRead, exclude: Option<u32>, end: u64) -> Changes {
    let mut pending: HashMap<u32, Vec<(u32, u64, u64, u64)>> = HashMap::new();
    let mut changes = Changes::default();
    for line in out.lines().map_while(Result::ok) {
        let at = line
            .split_once("lsn: ")
            .and_then(|(_, rest)| parse_lsn(rest.split(',').next().unwrap_or_default()));
        if at.is_some_and(|at| at >= end) {
            break;
        }
        if let Some((xid, db, i, u, d)) = row_changes(&line) {
            pending.entry(xid).or_default().push((db, i, u, d));
            continue;
        }
        let Some((xid, committed, subxacts)) = transaction_end(&line) else {
            continue;
        };
        for x in std::iter::once(xid).chain(subxacts) {
            let Some(rows) = pending.remove(&x) else {
                continue;
            };
            if !committed || Some(xid) == exclude {
                continue;
            }
            for (db, i, u, d) in rows {
                changes.inserted += i;
                changes.updated += u;
                changes.deleted += d;
                *changes.by_database.entry(db).or_default() += i + u + d;
            }
        }
    }
    changes
}

/// `tx:` and the fields after `desc:` of a record line.
fn fields(line: &str) -> Option<(&str, u32, &str)> {
    let rmgr = line.strip_prefix("rmgr: ")?.split_whitespace().next()?;
    let xid = line
        .split_once("tx:")?
        .1
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let desc = line.split_once("desc: ")?.1;
    Some((rmgr, xid, desc))
}

/// A heap record's row changes in a table of the cluster's users.
fn row_changes(line: &str) -> Option<RecordChanges> {
    let (rmgr, xid, desc) = fields(line)?;
    let op = desc.split_whitespace().next()?;
    let (i, u, d) = match (rmgr, op) {
        ("Heap", "INSERT" | "INSERT+INIT") => (1, 0, 0),
        ("Heap", "UPDATE" | "HOT_UPDATE" | "UPDATE+INIT" | "HOT_UPDATE+INIT") => (0, 1, 0),
        ("Heap", "DELETE") => (0, 0, 1),
        ("Heap2", "MULTI_INSERT" | "MULTI_INSERT+INIT") => {
            // `MULTI_INSERT 5 tuples` (15) or `MULTI_INSERT ntuples: 5, ...` (16 and later).
            let n = desc[op.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .find(|s| !s.is_empty())?
                .parse()
                .ok()?;
            (n, 0, 0)
        }
        _ => return None,
    };
    // `blkref #0: rel <tablespace>/<database>/<relfilenode>`
    let rel = line.split_once("rel ")?.1.split_whitespace().next()?;
    let mut parts = rel.split('/').map(|p| p.parse::<u32>().ok());
    let (_, db, relnode) = (parts.next()??, parts.next()??, parts.next()??);
    (relnode >= FIRST_USER_RELFILENODE).then_some((xid, db, i, u, d))
}

/// A transaction's end: its id, whether it committed, and the subtransactions it lists.
fn transaction_end(line: &str) -> Option<(u32, bool, Vec<u32>)> {
    let (rmgr, xid, desc) = fields(line)?;
    if rmgr != "Transaction" {
        return None;
    }
    let committed = match desc.split_whitespace().next()? {
        "COMMIT" => true,
        "ABORT" => false,
        _ => return None,
    };
    let subxacts = desc
        .split_once("subxacts:")
        .map(|(_, rest)| {
            rest.split(';')
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    Some((xid, committed, subxacts))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pg_waldump` 15's own lines, from a cluster that inserted, updated and deleted rows,
    /// copied 5 rows, committed a transaction with a subtransaction and aborted one.
    const DUMP: &str = "\
rmgr: Heap        len (rec/tot):     54/   258, tx:        727, lsn: 0/01922A60, prev 0/019229E8, desc: INSERT off 5 flags 0x00, blkref #0: rel 1663/16384/16385 blk 0 FPW
rmgr: Heap        len (rec/tot):     61/    61, tx:        727, lsn: 0/01922B68, prev 0/01922A60, desc: INSERT off 6 flags 0x00, blkref #0: rel 1663/16384/16385 blk 0
rmgr: Heap        len (rec/tot):     69/    69, tx:        727, lsn: 0/01922BE8, prev 0/01922BA8, desc: HOT_UPDATE off 5 xmax 727 flags 0x20 ; new off 8 xmax 0, blkref #0: rel 1663/16384/16385 blk 0
rmgr: Heap        len (rec/tot):     54/    54, tx:        727, lsn: 0/01922C30, prev 0/01922BE8, desc: DELETE off 6 flags 0x00 KEYS_UPDATED , blkref #0: rel 1663/16384/16385 blk 0
rmgr: Heap        len (rec/tot):     54/    54, tx:        727, lsn: 0/01922C31, prev 0/01922BE8, desc: INSERT off 6 flags 0x00, blkref #0: rel 1663/16384/1259 blk 0
rmgr: Transaction len (rec/tot):     34/    34, tx:        727, lsn: 0/01922C68, prev 0/01922C30, desc: COMMIT 2026-12-06 09:52:15.338207 UTC
rmgr: Heap2       len (rec/tot):    130/   130, tx:        728, lsn: 0/01922C90, prev 0/01922C68, desc: MULTI_INSERT 5 tuples flags 0x02, blkref #0: rel 1663/16390/16385 blk 0
rmgr: Transaction len (rec/tot):     34/    34, tx:        728, lsn: 0/01922D18, prev 0/01922C90, desc: COMMIT 2026-12-06 09:52:15.342818 UTC
rmgr: Heap        len (rec/tot):     59/    59, tx:        729, lsn: 0/01922D40, prev 0/01922D18, desc: INSERT off 14 flags 0x00, blkref #0: rel 1663/16384/16385 blk 0
rmgr: Heap        len (rec/tot):     59/    59, tx:        730, lsn: 0/01922D80, prev 0/01922D40, desc: INSERT off 15 flags 0x00, blkref #0: rel 1663/16384/16385 blk 0
rmgr: Transaction len (rec/tot):     46/    46, tx:        729, lsn: 0/01922DC0, prev 0/01922D80, desc: COMMIT 2026-12-06 09:52:15.343535 UTC; subxacts: 730
rmgr: Heap        len (rec/tot):     59/    59, tx:        731, lsn: 0/01922DF0, prev 0/01922DC0, desc: INSERT off 16 flags 0x00, blkref #0: rel 1663/16384/16385 blk 0
rmgr: Transaction len (rec/tot):     34/    34, tx:        731, lsn: 0/01922E30, prev 0/01922DF0, desc: ABORT 2026-12-06 09:52:15.344060 UTC
rmgr: Heap        len (rec/tot):     59/    59, tx:        732, lsn: 0/01922E70, prev 0/01922E30, desc: INSERT off 17 flags 0x00, blkref #0: rel 1663/16384/16385 blk 0
rmgr: Heap2       len (rec/tot):    130/   130, tx:        733, lsn: 0/01922E90, prev 0/01922E70, desc: MULTI_INSERT ntuples: 3, flags: 0x02, blkref #0: rel 1663/16384/16385 blk 0
rmgr: Transaction len (rec/tot):     34/    34, tx:        733, lsn: 0/01922F18, prev 0/01922E90, desc: COMMIT 2026-12-06 09:52:16.000000 UTC
";

    #[test]
    fn only_committed_user_rows_count_every_database_and_never_the_batch() {
        let c = count(DUMP.as_bytes(), None, u64::MAX);
        // 727: 2 inserts, 1 update, 1 delete (the catalog row not); 728: 5 copied rows in
        // another database; 729 with its subtransaction 730: 2; 731 aborted; 732 never ended;
        // 733: 3 (the newer pg_waldump's wording).
        assert_eq!((c.inserted, c.updated, c.deleted), (2 + 5 + 2 + 3, 1, 1));
        assert_eq!(c.by_database[&16384], 4 + 2 + 3);
        assert_eq!(c.by_database[&16390], 5);
        let without_batch = count(DUMP.as_bytes(), Some(727), u64::MAX);
        assert_eq!(without_batch.total(), c.total() - 4);
        // Nothing from the end on: 729's COMMIT is at the end, so it did not commit before it.
        let to_the_end = count(DUMP.as_bytes(), None, parse_lsn("0/01922DC0").unwrap());
        assert_eq!(to_the_end.total(), 4 + 5);
    }
}

//! A base backup restored into a new data directory: the WAL it needs is checked in the
//! archive before anything is written, the base is extracted (streamed: download, decrypt,
//! decompress, untar, while the object is hashed), and the WAL up to the target is fetched
//! into its `pg_wal`. The copy never reads the production archive once it runs: recovery
//! finds every segment in `pg_wal` (see [`super::server`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::manifest::{Manifest, Physical};
use crate::pitr::base::parse_lsn;
use crate::store::Store;

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// As soon as the base is consistent (its stop LSN).
    Immediate,
    /// At the end of the WAL the archive holds without a gap.
    End,
    /// At a restore point (`pg_create_restore_point`), by name; `lsn` is where its record
    /// ends (its segment must be in the archive).
    Point { name: String, lsn: u64 },
    /// At a time (`recovery_target_time`, a timestamp PostgreSQL parses).
    Time(String),
    /// At an LSN.
    Lsn(u64),
}

impl Target {
    /// The recovery settings that stop there (`recovery_target_action = promote` is the
    /// server's part).
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        match self {
            Target::Immediate => vec![("recovery_target", "immediate".into())],
            Target::End => Vec::new(),
            Target::Point { name, .. } => vec![("recovery_target_name", name.clone())],
            Target::Time(t) => vec![("recovery_target_time", t.clone())],
            Target::Lsn(l) => vec![("recovery_target_lsn", crate::pitr::base::lsn_text(*l))],
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Target::Immediate => "the end of the base backup".into(),
            Target::End => "the end of the archived WAL".into(),
            Target::Point { name, .. } => format!("restore point {name}"),
            Target::Time(t) => format!("time {t}"),
            Target::Lsn(l) => format!("LSN {}", crate::pitr::base::lsn_text(*l)),
        }
    }
}

/// The WAL a restore fetches: the base's segments and what follows them without a gap.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WalPlan {
    pub timeline: u32,
    pub segments: Vec<String>,
    /// The last segment of the chain, and the first one missing after it when the archive
    /// holds later segments on this timeline (WAL past a gap cannot be replayed).
    pub last: String,
    pub gap_before: Option<String>,
    /// A later timeline the archive holds segments of (a promotion after the base): a restore
    /// stays on the base's timeline and does not follow it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub later_timeline: Option<u32>,
    /// The history files of later timelines: fetched too, so that a promotion picks a
    /// timeline the archive has not seen (a cluster rewound twice must not reuse one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub histories: Vec<String>,
    /// The timeline recovery follows to, when it is not the base's (a promotion or a rewind
    /// after the base): `recovery_target_timeline`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_timeline: Option<u32>,
}

/// Checks the archive before anything is written: it is this base's cluster's, and holds every
/// segment the base needs and what the target needs (for an LSN, up to its segment; for a
/// time, a restore point or the end, what follows without a gap).
pub async fn plan_wal(
    store: &Store,
    database: &str,
    base: &Manifest,
    target: &Target,
    follow: Option<&crate::crypt::Identities>,
) -> Result<WalPlan, Error> {
    let p = physical_of(base)?;
    let cluster = crate::pitr::wal::read_cluster(store, database).await?;
    if cluster.system_identifier != p.system_identifier {
        return Err(Error::Refused(format!(
            "base {} is of cluster {}, and the WAL archive at {} holds the WAL of cluster {}: nothing was restored",
            base.id,
            p.system_identifier,
            store.describe(&format!("{database}/{}/", crate::pitr::wal::DIR)),
            cluster.system_identifier
        )));
    }
    // From the base's first segment on, and every timeline history file: those of later
    // timelines sort after it, those up to the base's own (`0000000N.history`, N >= 2) before.
    let first = p.wal_first.as_str().min("00000002.history");
    let stored = crate::pitr::wal::stored_from(store, database, first).await?;
    let path = match (follow, target) {
        (Some(identities), Target::End | Target::Time(_)) => {
            timeline_path(store, database, p, &stored, identities).await?
        }
        _ => vec![(p.timeline, None)],
    };
    chain(p, &stored, target, &base.id, &path)
}

/// The timelines a restore to the end (or to a time) follows from the base's: the newest
/// timeline whose history leaves the base's at or after the base's stop LSN, as PostgreSQL's
/// `recovery_target_timeline = latest` would, with each step's first segment number (where the
/// next timeline's files are read from). Just the base's when no later timeline descends
/// from it.
async fn timeline_path(
    store: &Store,
    database: &str,
    p: &Physical,
    stored: &BTreeSet<String>,
    identities: &crate::crypt::Identities,
) -> Result<Vec<(u32, Option<u64>)>, Error> {
    let stop = parse_lsn(&p.stop_lsn).unwrap_or(u64::MAX);
    let mut later: Vec<u32> = stored
        .iter()
        .filter_map(|n| n.strip_suffix(".history"))
        .filter_map(|t| u32::from_str_radix(t, 16).ok())
        .filter(|t| *t > p.timeline)
        .collect();
    later.sort_unstable_by(|a, b| b.cmp(a));
    for t in later {
        let entries = read_history(store, database, t, identities).await?;
        let Some(i) = entries.iter().position(|(tli, _)| *tli == p.timeline) else {
            continue;
        };
        if entries[i].1 < stop {
            continue; // it left the base's timeline before the base was consistent
        }
        let mut path: Vec<(u32, Option<u64>)> = entries[i..]
            .iter()
            .map(|(tli, switch)| (*tli, Some(switch / p.segment_bytes)))
            .collect();
        path.push((t, None));
        return Ok(path);
    }
    Ok(vec![(p.timeline, None)])
}

/// Timeline `t`'s history file (`<parent timeline> <switch LSN> <reason>` per line), fetched
/// and checked like any WAL file: each ancestor and where it ended.
async fn read_history(
    store: &Store,
    database: &str,
    t: u32,
    identities: &crate::crypt::Identities,
) -> Result<Vec<(u32, u64)>, Error> {
    let name = format!("{t:08X}.history");
    let dir = tempfile::tempdir().map_err(Error::io("creating a temp dir"))?;
    let dest = dir.path().join(&name);
    match crate::pitr::wal::fetch(store, database, &name, &dest, identities).await? {
        crate::pitr::wal::Fetched::Restored { .. } => {}
        crate::pitr::wal::Fetched::Absent { .. } => {
            return Err(Error::Damaged(format!(
                "{name} was listed in the archive and is gone"
            )))
        }
    }
    let text = std::fs::read_to_string(&dest).map_err(Error::io(format!("reading {name}")))?;
    Ok(parse_history(&text))
}

fn parse_history(text: &str) -> Vec<(u32, u64)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.parse().ok()?, parse_lsn(f.next()?)?))
        })
        .collect()
}

/// The WAL a restore fetches along `path` (the timelines it follows, each until the segment
/// number where the next one's files are read from): PostgreSQL reads each segment from the
/// newest timeline that has begun by it.
fn chain(
    p: &Physical,
    stored: &BTreeSet<String>,
    target: &Target,
    id: &str,
    path: &[(u32, Option<u64>)],
) -> Result<WalPlan, Error> {
    let seg = p.segment_bytes;
    let tl_at = |n: u64| {
        path.iter()
            .find(|(_, until)| until.is_none_or(|u| n < u))
            .map_or(p.timeline, |(t, _)| *t)
    };
    let name = |n: u64| crate::pitr::base::segment_from_number(tl_at(n), n, seg);
    let number = |name: &str| crate::pitr::base::segment_number(name, seg);
    let needed = crate::pitr::base::segments(p)?;
    let missing = |name: &str, why: &str| {
        Error::Refused(format!(
            "WAL segment {name} is not in the archive, and {why}: nothing was restored. `dbward pitr verify` lists the archive's gaps."
        ))
    };
    if let Some(gone) = needed.iter().find(|n| !stored.contains(*n)) {
        return Err(missing(
            gone,
            &format!("base {id} needs it to be consistent"),
        ));
    }
    let (first, last) = match (number(&p.wal_first), number(&p.wal_last)) {
        (Some(f), Some(l)) => (f, l),
        _ => return Err(Error::Damaged(format!("base {id} names no WAL range"))),
    };
    let mut segments = needed.clone();
    // Where a later timeline began inside the base's own range, its file of that segment too.
    for n in first..=last {
        if tl_at(n) != p.timeline {
            let later = name(n);
            if !stored.contains(&later) {
                return Err(missing(
                    &later,
                    "the timeline recovery follows begins in it",
                ));
            }
            segments.push(later);
        }
    }
    let mut next = last + 1;
    // How far the chain must reach, and whether it goes on to the first gap.
    let (must_reach, to_the_end) = match target {
        Target::Immediate => (None, false),
        Target::Lsn(l) => (Some(l / seg), false),
        // A restore point's LSN is where its record ends: the record is in the segment of the
        // byte before.
        Target::Point { lsn, .. } => (Some(lsn.saturating_sub(1) / seg), false),
        Target::End | Target::Time(_) => (None, true),
    };
    let extend = |segments: &mut Vec<String>, next: &mut u64| {
        let found = stored.contains(&name(*next));
        if found {
            segments.push(name(*next));
            *next += 1;
        }
        found
    };
    if let Some(want) = must_reach {
        while next <= want {
            if !extend(&mut segments, &mut next) {
                return Err(missing(
                    &name(next),
                    &format!(
                        "recovery to {} needs every segment up to {}",
                        target.describe(),
                        name(want)
                    ),
                ));
            }
        }
        // The record at the target may run on into the next segment: taken when stored.
        extend(&mut segments, &mut next);
    }
    if to_the_end {
        while extend(&mut segments, &mut next) {}
    }
    let last_name = segments
        .iter()
        .max_by_key(|n| number(n))
        .expect("not empty")
        .clone();
    // Later segments past a missing one cannot be replayed (only a target at the end meets it).
    let final_tl = path.last().map_or(p.timeline, |(t, _)| *t);
    let tl = format!("{final_tl:08X}");
    let gap_before = (to_the_end
        && stored
            .iter()
            .any(|n| n.len() == 24 && n.starts_with(&tl) && number(n) > Some(next)))
    .then(|| name(next));
    // Names sort by timeline first: any later timeline's segments are in `stored`.
    let later_timeline = stored
        .iter()
        .filter(|n| n.len() == 24)
        .filter_map(|n| u32::from_str_radix(&n[..8], 16).ok())
        .filter(|t| *t > final_tl)
        .max();
    let histories = stored
        .iter()
        .filter(|n| n.ends_with(".history"))
        .cloned()
        .collect();
    Ok(WalPlan {
        timeline: p.timeline,
        segments,
        last: last_name,
        gap_before,
        later_timeline,
        histories,
        recovery_timeline: (final_tl != p.timeline).then_some(final_tl),
    })
}

#[cfg(test)]
fn next_segment(name: &str, seg: u64) -> String {
    let per_id = 0x1_0000_0000 / seg;
    let hex = |s: &str| u64::from_str_radix(s, 16).expect("a segment name");
    let n = hex(&name[8..16]) * per_id + hex(&name[16..24]) + 1;
    let tl = u32::from_str_radix(&name[..8], 16).expect("a segment name");
    format!("{tl:08X}{:08X}{:08X}", n / per_id, n % per_id)
}

pub fn physical_of(m: &Manifest) -> Result<&Physical, Error> {
    m.physical.as_ref().ok_or_else(|| {
        Error::Refused(format!(
            "snapshot {} is a logical snapshot ({}), not a base backup: restore it without --physical",
            m.id,
            m.format.extension()
        ))
    })
}

/// Parses `--lsn` (`0/4000028`).
pub fn lsn(s: &str) -> Option<u64> {
    parse_lsn(s)
}

/// Extracts base `m` into `dir` (which exists, is empty and is this run's), from the first copy
/// that verifies. As with [`crate::restore::fetch_decoded_any`], the outer result is the fetch's (a
/// copy that fails its checksum is refused and the next one tried, after `dir` was emptied),
/// the inner one the extraction's.
pub async fn extract_any(
    stores: &[&Store],
    m: &Manifest,
    dir: &Path,
    identities: &crate::crypt::Identities,
) -> Result<(Result<(), Error>, usize), Error> {
    crate::scratch::ensure_space(dir, m.raw_bytes, &format!("extracting base {}", m.id))?;
    crate::restore::try_copies(stores, m, |store| async move {
        let r = extract(store, m, dir, identities).await;
        if !matches!(r, Ok(Ok(()))) {
            empty_dir(dir)?;
        }
        r
    })
    .await
}

/// Removes what an extraction wrote into `dir`: the directory is this run's own (created
/// empty by it), so everything in it is.
fn empty_dir(dir: &Path) -> Result<(), Error> {
    for entry in std::fs::read_dir(dir).map_err(Error::io(format!("listing {}", dir.display())))? {
        let path = entry
            .map_err(Error::io(format!("listing {}", dir.display())))?
            .path();
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(Error::io(format!("removing {}", path.display())))?;
    }
    Ok(())
}

async fn extract(
    store: &Store,
    m: &Manifest,
    dir: &Path,
    identities: &crate::crypt::Identities,
) -> Result<Result<(), Error>, Error> {
    let (tx, rx) = crate::restore::blocks();
    let mut untar = Joined(Some({
        let (dir, m, identities) = (dir.to_path_buf(), m.clone(), identities.clone());
        let input = crate::pipeline::BlockReader::new(rx);
        std::thread::spawn(move || untar_into(input, &dir, &m, &identities))
    }));
    let downloaded = store.download_blocks(&m.data_key, tx).await;
    let untarred = untar
        .0
        .take()
        .expect("joined once")
        .join()
        .unwrap_or_else(|_| Err(Error::Recovery("the extracting thread panicked".into())));
    let (size, sha) = downloaded.map_err(|e| crate::restore::missing_is_damage(e, m))?;
    crate::restore::check_sum(store, m, size, &sha)?;
    Ok(untarred)
}

/// The extracting thread, joined when dropped: a restore stopped mid-download (its future
/// dropped, the sender gone, so the thread's input ends) removes its directory only after the
/// thread wrote its last file there.
struct Joined(Option<std::thread::JoinHandle<Result<(), Error>>>);

impl Drop for Joined {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
    }
}

/// The syncing thread, joined when dropped (its channel closed first by the caller's return).
struct SyncJoined(Option<std::thread::JoinHandle<std::io::Result<()>>>);

impl Drop for SyncJoined {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
    }
}

/// Reads the decoding thread's blocks in order; its read error is this reader's.
struct Blocks {
    rx: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    block: Vec<u8>,
    at: usize,
}

impl std::io::Read for Blocks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.block.len() {
            match self.rx.recv() {
                Ok(Ok(b)) => {
                    self.block = b;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.block.len() - self.at);
        buf[..n].copy_from_slice(&self.block[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A reader that counts what passes.
struct Counted<R> {
    inner: R,
    n: u64,
}

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

fn untar_into(
    input: impl std::io::Read + Send + 'static,
    dir: &Path,
    m: &Manifest,
    identities: &crate::crypt::Identities,
) -> Result<(), Error> {
    let refuse = |why: String| {
        Error::Damaged(format!(
            "base {} does not extract: {why}; nothing was restored",
            m.id
        ))
    };
    let input = identities.reader(input, m)?;
    let mut decoder = zstd::stream::read::Decoder::new(input).map_err(|e| refuse(e.to_string()))?;
    // Decompression on a thread of its own, the files written on this one (and flushed on a
    // third): the three overlap. The decoder's blocks come through a channel of eight.
    let (blocks, decoded) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(8);
    let mut decoding = Joined(Some(std::thread::spawn(move || -> Result<(), Error> {
        loop {
            let mut block = vec![0u8; 256 << 10];
            let filled = match crate::restore::fill(&mut decoder, &mut block) {
                Ok(k) => k,
                Err(e) => {
                    let _ = blocks.send(Err(e));
                    return Ok(());
                }
            };
            if filled == 0 {
                return Ok(());
            }
            block.truncate(filled);
            if blocks.send(Ok(block)).is_err() {
                return Ok(());
            }
        }
    })));
    // Bound after the thread's handle: an early return closes the channel before the join.
    let mut counted = Counted {
        inner: Blocks {
            rx: decoded,
            block: Vec::new(),
            at: 0,
        },
        n: 0,
    };
    // The files written so far, flushed one after another (see below); joined on every path.
    let (tx, to_sync) = std::sync::mpsc::sync_channel::<PathBuf>(64);
    let mut syncer = SyncJoined(Some(std::thread::spawn(move || -> std::io::Result<()> {
        for path in to_sync {
            std::fs::File::open(&path)?.sync_data()?;
        }
        Ok(())
    })));
    // Bound after the thread's handle, so an early return drops (closes) it first and the
    // join in `SyncJoined`'s drop ends.
    let synced = tx;
    {
        let failed = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::StorageFull {
                Error::Full(format!(
                    "extracting base {} into {}: {e}",
                    m.id,
                    dir.display()
                ))
            } else {
                refuse(e.to_string())
            }
        };
        let mut archive = tar::Archive::new(&mut counted);
        archive.set_preserve_permissions(false);
        archive.set_preserve_ownerships(false);
        archive.set_overwrite(false);
        for entry in archive.entries().map_err(failed)? {
            let mut entry = entry.map_err(failed)?;
            // A symbolic link in the data directory (a `log` directory elsewhere, say) would
            // point the copy at the production server's files: it becomes an empty directory
            // of the copy's own.
            if entry.header().entry_type().is_symlink() {
                let path = entry.path().map_err(failed)?.into_owned();
                if path
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
                {
                    return Err(refuse(format!("a link named {}", path.display())));
                }
                tracing::warn!(
                    "the base holds {} as a link to {}: the copy gets an empty directory there",
                    path.display(),
                    entry
                        .link_name()
                        .ok()
                        .flatten()
                        .map(|l| l.display().to_string())
                        .unwrap_or_default()
                );
                std::fs::create_dir_all(dir.join(&path)).map_err(failed)?;
                continue;
            }
            let file = entry.header().entry_type().is_file();
            let path = entry.path().map_err(failed)?.into_owned();
            // `unpack_in` refuses entries that would land outside `dir` (`..`, absolute paths).
            if !entry.unpack_in(dir).map_err(failed)? {
                return Err(refuse(format!(
                    "an entry outside the data directory ({})",
                    entry
                        .path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                )));
            }
            // Each file is flushed to disk on the syncing thread while the next one is
            // decompressed: the server syncs its whole data directory when it starts from a
            // base, and finds it written already.
            if file && synced.send(dir.join(path)).is_err() {
                break;
            }
        }
    }
    drop(synced);
    syncer
        .0
        .take()
        .expect("joined once")
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the syncing thread panicked")))
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::StorageFull {
                Error::Full(format!("writing base {} into {}: {e}", m.id, dir.display()))
            } else {
                Error::io(format!("syncing base {} in {}", m.id, dir.display()))(e)
            }
        })?;
    // What follows the tar's end-of-archive blocks still counts towards the raw size.
    std::io::copy(&mut counted, &mut std::io::sink()).map_err(|e| refuse(e.to_string()))?;
    drop(counted.inner);
    decoding
        .0
        .take()
        .expect("joined once")
        .join()
        .unwrap_or_else(|_| Err(Error::Recovery("the decoding thread panicked".into())))?;
    if counted.n != m.raw_bytes {
        return Err(refuse(format!(
            "{} bytes, the manifest says {}",
            counted.n, m.raw_bytes
        )));
    }
    Ok(())
}

/// Fetches the plan's segments and history files into `pg_wal`, each checked against its
/// record.
pub async fn fetch_wal(
    store: &Store,
    database: &str,
    plan: &WalPlan,
    pg_wal: &Path,
    identities: &crate::crypt::Identities,
) -> Result<u64, Error> {
    let mut bytes = 0;
    for name in plan.segments.iter().chain(&plan.histories) {
        match crate::pitr::wal::fetch(store, database, name, &pg_wal.join(name), identities).await?
        {
            crate::pitr::wal::Fetched::Restored { bytes: n, .. } => bytes += n,
            crate::pitr::wal::Fetched::Absent { .. } => {
                return Err(Error::Damaged(format!(
                    "WAL segment {name} was listed in the archive and is gone: nothing was restored"
                )))
            }
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn physical(first: &str, last: &str) -> Physical {
        Physical {
            system_identifier: "1".into(),
            timeline: 1,
            start_lsn: "0/3000028".into(),
            stop_lsn: "0/4000100".into(),
            wal_first: first.into(),
            wal_last: last.into(),
            segment_bytes: 16 << 20,
            pg_basebackup_version: "15".into(),
        }
    }

    fn seg(n: u32) -> String {
        format!("0000000100000000{n:08X}")
    }

    #[test]
    fn the_chain_runs_from_the_base_to_the_target_or_the_first_gap() {
        let p = physical(&seg(3), &seg(4));
        let stored: BTreeSet<String> = [3, 4, 5, 6, 8, 9].map(seg).into_iter().collect();
        let end = chain(&p, &stored, &Target::End, "b", &[(1, None)]).unwrap();
        assert_eq!(end.segments, [3, 4, 5, 6].map(seg));
        assert_eq!(end.gap_before, Some(seg(7)));
        let immediate = chain(&p, &stored, &Target::Immediate, "b", &[(1, None)]).unwrap();
        assert_eq!(immediate.segments, [3, 4].map(seg));
        // The target's segment, and the next one (the record may run on into it).
        let lsn = chain(&p, &stored, &Target::Lsn(0x5000100), "b", &[(1, None)]).unwrap();
        assert_eq!(lsn.segments, [3, 4, 5, 6].map(seg));
        assert_eq!(lsn.gap_before, None);
        assert_eq!(immediate.gap_before, None);
        // Past the gap: refused before anything is written.
        let e = chain(&p, &stored, &Target::Lsn(0x8000100), "b", &[(1, None)]).unwrap_err();
        assert!(e.to_string().contains(&seg(7)), "{e}");
        // A base whose own WAL is missing.
        let stored: BTreeSet<String> = [3, 5].map(seg).into_iter().collect();
        let e = chain(&p, &stored, &Target::End, "b", &[(1, None)]).unwrap_err();
        assert!(e.to_string().contains(&seg(4)), "{e}");
    }

    #[test]
    fn a_restore_follows_a_later_timeline_from_where_it_began() {
        // Timeline 2 left timeline 1 in segment 6 (a rewind to a point there); timeline 1 went
        // on to 7 (the abandoned branch), timeline 2 to 8.
        let history = "# comment\n1\t0/6000100\tat restore point \"x\"\n\n";
        assert_eq!(parse_history(history), [(1, 0x6000100)]);
        let p = physical(&seg(3), &seg(4));
        let tl2 = |n: u32| format!("0000000200000000{n:08X}");
        let mut stored: BTreeSet<String> = [3, 4, 5, 6, 7].map(seg).into_iter().collect();
        stored.extend([6, 7, 8].map(tl2));
        stored.insert("00000002.history".into());
        let path = [(1, Some(6)), (2, None)];
        let end = chain(&p, &stored, &Target::End, "b", &path).unwrap();
        let mut want: Vec<String> = [3, 4, 5].map(seg).into();
        want.extend([6, 7, 8].map(tl2));
        assert_eq!(end.segments, want);
        assert_eq!(end.recovery_timeline, Some(2));
        assert_eq!(end.gap_before, None);
        assert_eq!(end.histories, ["00000002.history"]);
        // Without the path, the base's timeline to its end: the abandoned branch.
        let own = chain(&p, &stored, &Target::End, "b", &[(1, None)]).unwrap();
        assert_eq!(own.segments, [3, 4, 5, 6, 7].map(seg));
        assert_eq!((own.recovery_timeline, own.later_timeline), (None, Some(2)));
    }

    #[test]
    fn a_link_in_a_base_becomes_a_directory_and_nothing_is_written_through_it() {
        let outside = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "log", outside.path()).unwrap();
        let body = b"PG_VERSION contents";
        let mut h = tar::Header::new_ustar();
        h.set_size(body.len() as u64);
        h.set_mode(0o600);
        h.set_cksum();
        b.append_data(&mut h, "log/inside", &body[..]).unwrap();
        let raw = b.into_inner().unwrap();
        let m: Manifest = serde_json::from_value(serde_json::json!({
            "format_version": 1, "id": "20261126T000000Z-manual-0000", "kind": "manual",
            "created_at": "2026-11-26T00:00:00Z", "engine": "postgres", "server_version": "15",
            "database": "app", "host": "h", "dbward_version": "0", "format": "pgbase",
            "data_key": "app/20261126T000000Z-manual-0000.base.tar.zst",
            "raw_bytes": raw.len(), "stored_bytes": 0, "sha256": "", "compression": {"algorithm": "zstd", "level": 3},
            "migration_head": null, "row_counts": {}, "duration_ms": 0
        }))
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let input = std::io::Cursor::new(zstd::encode_all(&raw[..], 3).unwrap());
        untar_into(input, dir.path(), &m, &crate::crypt::Identities::none()).unwrap();
        let log = std::fs::symlink_metadata(dir.path().join("log")).unwrap();
        assert!(log.is_dir(), "{log:?}");
        assert!(dir.path().join("log/inside").is_file());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);

        // A stream cut short is the base's fault, whichever thread meets it first.
        let whole = zstd::encode_all(&raw[..], 3).unwrap();
        let cut = std::io::Cursor::new(whole[..whole.len() / 2].to_vec());
        let dir = tempfile::tempdir().unwrap();
        let e = untar_into(cut, dir.path(), &m, &crate::crypt::Identities::none()).unwrap_err();
        assert!(matches!(e, Error::Damaged(_)), "{e:?}");
    }

    #[test]
    fn segments_count_across_a_log_boundary() {
        assert_eq!(
            next_segment("0000000100000000000000FF", 16 << 20),
            "000000010000000100000000"
        );
    }
}

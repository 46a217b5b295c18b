//! Restoring a snapshot: fetch it and check it against its manifest, decompress it, check the
//! result, and only then put it in place. A snapshot that fails a check is refused
//! ([`Error::Refused`], exit 3) before the live database is touched.

pub mod postgres;
pub mod replaced;
pub mod sqlite;

use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::manifest::Manifest;
use crate::scratch::{self, ScratchPath};
use crate::store::Store;

/// What a restore did, for both engines.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// The database that now holds the snapshot: a file path or a database name.
    pub database: String,
    /// What was kept of the database it replaced: none with `--to`, or when there was none.
    pub replaced: Option<Replaced>,
    /// Sessions ended by `--terminate-connections` (PostgreSQL).
    pub terminated: Vec<String>,
    pub strategy: Strategy,
    /// Why a restore went in place.
    pub strategy_reason: Option<String>,
    /// The index, in the stores given, of the copy that was restored (0: the primary).
    #[serde(skip)]
    pub copy: usize,
}

/// How the snapshot was put in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// SQLite: the checked file renamed over the live one, which was linked aside first.
    FileSwap,
    /// PostgreSQL: restored beside, then swapped by renaming in one transaction.
    RenameSwap,
    /// PostgreSQL: applied to the live database itself, after a snapshot of it was taken.
    InPlace,
    /// `--to`: restored into a new file or database; nothing was replaced.
    New,
}

/// Where the database a restore replaced is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replaced {
    /// SQLite: `<file>.replaced-<ts>`, with its WAL, shared memory and journal beside it.
    File(PathBuf),
    /// SQLite, a database that was missing: only the side files a lost database left
    /// (`<file>.replaced-<ts>-wal`, `-shm`, `-journal`), never applied to the restored one.
    SideFiles(PathBuf),
    /// PostgreSQL: `<db>_replaced_<ts>_<tag>`.
    Database(String),
    /// An in-place restore: the snapshot taken of the state before.
    Snapshot(String),
}

impl Replaced {
    /// A copy on this machine that restores keep a bounded number of (not a snapshot).
    pub fn kept_copy(&self) -> Option<String> {
        match self {
            Replaced::File(p) | Replaced::SideFiles(p) => Some(p.display().to_string()),
            Replaced::Database(d) => Some(d.clone()),
            Replaced::Snapshot(_) => None,
        }
    }
}

impl std::fmt::Display for Replaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Replaced::File(p) => write!(f, "{}", p.display()),
            Replaced::SideFiles(p) => write!(
                f,
                "{}-* (the side files of a database that was missing)",
                p.display()
            ),
            Replaced::Database(d) => f.write_str(d),
            Replaced::Snapshot(id) => write!(f, "snapshot {id}"),
        }
    }
}

impl serde::Serialize for Replaced {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Downloads the data object into a temp file in `dir`, refusing it unless its size and SHA-256
/// are the manifest's.
pub async fn fetch(store: &Store, m: &Manifest, dir: &Path) -> Result<ScratchPath, Error> {
    scratch::ensure_space(
        dir,
        m.stored_bytes,
        &format!("downloading snapshot {}", m.id),
    )?;
    let tmp = scratch::temp_in(dir, "fetch-")?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&tmp)
        .map_err(Error::io(format!("opening {}", tmp.display())))?;
    let (size, sha) = store
        .download(&m.data_key, &mut file)
        .await
        .map_err(|e| missing_is_damage(e, m))?;
    check_sum(store, m, size, &sha)?;
    dbconn::failpoint::hit("restore-after-fetch").map_err(Error::Restore)?;
    Ok(tmp)
}

/// A data object missing from the store: the snapshot is damaged.
pub(crate) fn missing_is_damage(e: Error, m: &Manifest) -> Error {
    match e {
        Error::Missing(what) => Error::Damaged(format!(
            "snapshot {} is damaged: its data object {what} is missing from the store; nothing was restored. Pick another one (`dbward snapshots`).",
            m.id
        )),
        e => e,
    }
}

/// Refuses a download whose size or SHA-256 is not the manifest's.
pub(crate) fn check_sum(store: &Store, m: &Manifest, size: u64, sha: &str) -> Result<(), Error> {
    if size != m.stored_bytes || sha != m.sha256 {
        return Err(Error::Damaged(format!(
            "snapshot {} failed its checksum: {} holds {size} bytes with SHA-256 {sha}, the manifest says {} bytes with {}. \
             The snapshot is damaged; nothing was restored. Pick another one (`dbward snapshots`).",
            m.id,
            store.describe(&m.data_key),
            m.stored_bytes,
            m.sha256
        )));
    }
    Ok(())
}

/// [`fetch`] from the first copy that verifies: the primary store, then each mirror in order
/// (every copy of a snapshot is the same bytes under the same key, checked against the same
/// manifest). A copy that is unreachable, missing or fails its checksum is named in a warning
/// and the next is tried. Returns the file and the index of the store it came from.
pub async fn fetch_any(
    stores: &[&Store],
    m: &Manifest,
    dir: &Path,
) -> Result<(ScratchPath, usize), Error> {
    try_copies(stores, m, |store| fetch(store, m, dir)).await
}

/// Runs `attempt` on each copy in turn until one succeeds (see [`fetch_any`]).
pub(crate) async fn try_copies<'a, T, F, Fut>(
    stores: &[&'a Store],
    m: &Manifest,
    attempt: F,
) -> Result<(T, usize), Error>
where
    F: Fn(&'a Store) -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut problems = Vec::new();
    for (n, store) in stores.iter().enumerate() {
        match attempt(store).await {
            Ok(t) => {
                if n > 0 {
                    tracing::warn!(
                        "using the copy of snapshot {} in {} (mirror {n})",
                        m.id,
                        store.describe(&m.data_key)
                    );
                }
                return Ok((t, n));
            }
            // Not the copy's fault: every copy would meet it.
            Err(e @ (Error::NoSpace(_) | Error::Full(_))) => return Err(e),
            Err(e) if stores.len() == 1 => return Err(e),
            Err(e) => {
                tracing::warn!("{}", crate::error::chain(&e));
                problems.push(e);
            }
        }
    }
    let all_refused = problems.iter().all(|e| matches!(e, Error::Damaged(_)));
    let text = problems
        .iter()
        .map(|e| crate::error::chain(e))
        .collect::<Vec<_>>()
        .join("\n");
    Err(if all_refused {
        Error::Damaged(format!("no copy of snapshot {} verifies:\n{text}", m.id))
    } else {
        Error::Restore(format!(
            "no copy of snapshot {} could be fetched:\n{text}",
            m.id
        ))
    })
}

/// Fetches and decodes in one pass, from the first copy that verifies (see [`fetch_any`]): the
/// object is streamed from the store into a decoding thread while it is hashed, so the
/// download and the decompression overlap and only the decoded file touches the disk.
///
/// The outer result is the fetch's: a copy whose size or SHA-256 is not the manifest's is
/// refused as [`fetch`] refuses it (the next copy is tried), even when the decoder gave up
/// first. The inner result is the decoding's, for a copy that did verify: the same bytes are
/// in every copy, so no other is tried. Either way a failure leaves no output behind.
pub async fn fetch_decoded_any(
    stores: &[&Store],
    m: &Manifest,
    dir: &Path,
    prefix: &str,
    identities: &crate::crypt::Identities,
) -> Result<(Result<ScratchPath, Error>, usize), Error> {
    try_copies(stores, m, |store| {
        fetch_decoded(store, m, dir, prefix, identities)
    })
    .await
}

async fn fetch_decoded(
    store: &Store,
    m: &Manifest,
    dir: &Path,
    prefix: &str,
    identities: &crate::crypt::Identities,
) -> Result<Result<ScratchPath, Error>, Error> {
    scratch::ensure_space(
        dir,
        m.raw_bytes,
        &format!("decompressing snapshot {}", m.id),
    )?;
    let out = scratch::temp_in(dir, prefix)?;
    let (tx, rx) = blocks();
    let decoder = {
        let (out, m, identities) = (out.to_path_buf(), m.clone(), identities.clone());
        let input = crate::pipeline::BlockReader::new(rx);
        std::thread::spawn(move || decode_into(input, &out, &m, &identities))
    };
    let downloaded = store.download_blocks(&m.data_key, tx).await;
    let decoded = decoder
        .join()
        .unwrap_or_else(|_| Err(Error::Restore("the decoding thread panicked".into())));
    let (size, sha) = downloaded.map_err(|e| missing_is_damage(e, m))?;
    check_sum(store, m, size, &sha)?;
    dbconn::failpoint::hit("restore-after-fetch").map_err(Error::Restore)?;
    if let Err(e) = decoded {
        return Ok(Err(e));
    }
    dbconn::failpoint::hit("restore-after-decompress").map_err(Error::Restore)?;
    Ok(Ok(out))
}

/// The channel between a download and the thread that decodes it: four blocks of 1 MiB.
pub(crate) fn blocks() -> (
    tokio::sync::mpsc::Sender<Vec<u8>>,
    tokio::sync::mpsc::Receiver<Vec<u8>>,
) {
    tokio::sync::mpsc::channel(4)
}

/// Decrypts (age, when the manifest says so) and decompresses `input` (zstd) into `out`; a
/// stream that does not decode to the end, or to the manifest's raw size, is refused. Not
/// fsynced: a file that becomes a live database is synced by its caller.
fn decode_into(
    input: impl std::io::Read + Send + 'static,
    out: &Path,
    m: &Manifest,
    identities: &crate::crypt::Identities,
) -> Result<(), Error> {
    let refuse = |why: String| {
        Error::Damaged(format!(
            "snapshot {} does not decode: {why}; nothing was restored",
            m.id
        ))
    };
    // Decrypted first when the snapshot is encrypted (refused here if no identity opens it).
    let input = identities.reader(input, m)?;
    let output = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(out)
        .map_err(Error::io(format!("opening {}", out.display())))?;
    let mut decoder = zstd::stream::read::Decoder::new(input).map_err(|e| refuse(e.to_string()))?;
    // A read error is the snapshot's fault (exit 3); a write error (a full disk) is not.
    let n = decode_to_file(&mut decoder, output, refuse, |e| {
        Error::io(format!("writing {} (is the disk full?)", out.display()))(e)
    })?;
    if n != m.raw_bytes {
        return Err(refuse(format!(
            "{n} bytes, the manifest says {}",
            m.raw_bytes
        )));
    }
    Ok(())
}

/// Copies the decoder's output into `out`, the writes on a thread of their own: decompressing
/// and the write syscalls (a third of the time when both ran on one thread, measured on an
/// 870 MiB database) overlap. Read errors and write errors are told apart; a read error comes
/// first, since a writer that stopped for a full disk cannot be what damaged the input.
fn decode_to_file<E>(
    from: &mut impl std::io::Read,
    mut out: std::fs::File,
    on_read: impl Fn(String) -> E,
    on_write: impl Fn(std::io::Error) -> E,
) -> Result<u64, E> {
    use std::io::Write;
    use std::sync::mpsc::{channel, sync_channel};
    // 128 KiB writes, not the store's 1 MiB blocks: on this kernel (ext4 with large folios)
    // 1 MiB writes are given large page-cache folios that are slow to fault in after the
    // memory churn of a big restore (decoding an 870 MiB database took 1.4-2.6 s that way,
    // 1.2-1.3 s with 128 KiB writes, and 1.3-1.4 s with 32 KiB ones, in the same runs).
    const BLOCK: usize = 128 << 10;
    let (full_tx, full_rx) = sync_channel::<Vec<u8>>(4);
    // Written blocks come back to be filled again: a handful at most, not a new one each time.
    let (empty_tx, empty_rx) = channel::<Vec<u8>>();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        for block in full_rx {
            out.write_all(&block)?;
            let _ = empty_tx.send(block);
        }
        Ok(())
    });
    let mut n = 0u64;
    let read = 'blocks: loop {
        let mut block = empty_rx.try_recv().unwrap_or_else(|_| vec![0u8; BLOCK]);
        block.resize(BLOCK, 0);
        let filled = match fill(from, &mut block) {
            Ok(k) => k,
            Err(e) => break 'blocks Err(on_read(e.to_string())),
        };
        if filled == 0 {
            break Ok(n);
        }
        block.truncate(filled);
        n += filled as u64;
        // A closed channel means the writer stopped on an error: reported below.
        if full_tx.send(block).is_err() || filled < BLOCK {
            break Ok(n);
        }
    };
    drop(full_tx);
    let written = writer
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the writing thread panicked")));
    let n = read?;
    written.map_err(on_write)?;
    Ok(n)
}

/// Reads into `block` until it is full or the input ends: the bytes read, fewer than its
/// length only at the end.
pub(crate) fn fill(from: &mut impl std::io::Read, block: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < block.len() {
        match from.read(&mut block[filled..]) {
            Ok(0) => break,
            Ok(k) => filled += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// `std::io::copy` in 1 MiB blocks, with read errors and write errors told apart.
pub fn copy_split<E>(
    from: &mut impl std::io::Read,
    to: &mut impl std::io::Write,
    on_read: impl Fn(String) -> E,
    on_write: impl Fn(std::io::Error) -> E,
) -> Result<u64, E> {
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = match from.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(on_read(e.to_string())),
        };
        to.write_all(&buf[..got]).map_err(&on_write)?;
        n += got as u64;
    }
}

/// `20261123T143000Z`, for the names of replaced databases.
pub fn stamp() -> String {
    crate::manifest::compact_stamp(time::OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::decode_to_file;

    /// Reads `left` bytes (byte `i` is `i % 251`), then fails if told to.
    struct Source {
        at: usize,
        left: usize,
        fail: bool,
    }

    impl std::io::Read for Source {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.left == 0 {
                return match self.fail {
                    true => Err(std::io::Error::other("bad frame")),
                    false => Ok(0),
                };
            }
            let k = buf.len().min(self.left).min(300_000);
            for (i, b) in buf[..k].iter_mut().enumerate() {
                *b = ((self.at + i) % 251) as u8;
            }
            self.at += k;
            self.left -= k;
            Ok(k)
        }
    }

    fn run(left: usize, fail: bool, writable: bool) -> (Result<u64, String>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        std::fs::write(&path, b"old").unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .truncate(writable)
            .open(&path)
            .unwrap();
        let got = decode_to_file(
            &mut Source { at: 0, left, fail },
            file,
            |e| format!("read: {e}"),
            |e| format!("write: {e}"),
        );
        (got, std::fs::read(&path).unwrap())
    }

    #[test]
    fn every_byte_arrives_in_order_across_blocks() {
        let n = 3 * (1 << 20) + 12_345;
        let (got, written) = run(n, false, true);
        assert_eq!(got, Ok(n as u64));
        let want: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        assert!(written == want, "the file differs from what was read");
    }

    #[test]
    fn a_read_error_and_a_write_error_are_told_apart() {
        let (got, _) = run(2 << 20, true, true);
        assert_eq!(got, Err("read: bad frame".to_string()));
        let (got, written) = run(2 << 20, false, false);
        assert!(got.unwrap_err().starts_with("write: "));
        assert_eq!(written, b"old");
    }
}

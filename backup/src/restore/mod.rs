//! Restoring a snapshot: fetch it and check it against its manifest, decompress it, check the
//! result, and only then put it in place. A snapshot that fails a check is refused
//! ([`Error::Refused`], exit 3) before the live database is touched.

pub mod postgres;
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
    /// SQLite: `<file>.replaced-<ts>`, with its WAL beside it.
    File(PathBuf),
    /// PostgreSQL: `<db>_replaced_<ts>_<tag>`.
    Database(String),
    /// An in-place restore: the snapshot taken of the state before.
    Snapshot(String),
}

impl Replaced {
    /// A copy on this machine that restores keep a bounded number of (not a snapshot).
    pub fn kept_copy(&self) -> Option<String> {
        match self {
            Replaced::File(p) => Some(p.display().to_string()),
            Replaced::Database(d) => Some(d.clone()),
            Replaced::Snapshot(_) => None,
        }
    }
}

impl std::fmt::Display for Replaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Replaced::File(p) => write!(f, "{}", p.display()),
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
    let (size, sha) = match store.download(&m.data_key, &mut file).await {
        Err(Error::Missing(what)) => {
            return Err(Error::Damaged(format!(
                "snapshot {} is damaged: its data object {what} is missing from the store; nothing was restored. Pick another one (`dbward snapshots`).",
                m.id
            )))
        }
        other => other?,
    };
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
    dbconn::failpoint::hit("restore-after-fetch").map_err(Error::Restore)?;
    Ok(tmp)
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
    let mut problems = Vec::new();
    for (n, store) in stores.iter().enumerate() {
        match fetch(store, m, dir).await {
            Ok(tmp) => {
                if n > 0 {
                    tracing::warn!(
                        "using the copy of snapshot {} in {} (mirror {n})",
                        m.id,
                        store.describe(&m.data_key)
                    );
                }
                return Ok((tmp, n));
            }
            // Not the copy's fault: every copy would meet it.
            Err(e @ Error::NoSpace(_)) => return Err(e),
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

/// How long the decompressed file has to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// It becomes the live database (SQLite restore): fsynced before anything is swapped.
    Durable,
    /// Read once and removed (a dump for pg_restore, a drill's scratch copy): no fsync.
    Scratch,
}

/// Decrypts (age, when the manifest says so) and decompresses `src` (zstd) into a temp file
/// in `dir`; a stream that does not decode to the
/// end, or to the manifest's raw size, is refused.
pub fn decompress(
    src: &Path,
    dir: &Path,
    prefix: &str,
    m: &Manifest,
    identities: &crate::crypt::Identities,
    lifetime: Lifetime,
) -> Result<ScratchPath, Error> {
    scratch::ensure_space(
        dir,
        m.raw_bytes,
        &format!("decompressing snapshot {}", m.id),
    )?;
    let out = scratch::temp_in(dir, prefix)?;
    let refuse = |why: String| {
        Error::Damaged(format!(
            "snapshot {} does not decode: {why}; nothing was restored",
            m.id
        ))
    };
    let input =
        std::fs::File::open(src).map_err(Error::io(format!("opening {}", src.display())))?;
    // Decrypted first when the snapshot is encrypted (refused here if no identity opens it).
    let input = identities.reader(input, m)?;
    let mut output = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&out)
        .map_err(Error::io(format!("opening {}", out.display())))?;
    let mut decoder = zstd::stream::read::Decoder::new(input).map_err(|e| refuse(e.to_string()))?;
    // A read error is the snapshot's fault (exit 3); a write error (a full disk) is not.
    let n = copy_split(&mut decoder, &mut output, refuse, |e| {
        Error::io(format!("writing {} (is the disk full?)", out.display()))(e)
    })?;
    if n != m.raw_bytes {
        return Err(refuse(format!(
            "{n} bytes, the manifest says {}",
            m.raw_bytes
        )));
    }
    if lifetime == Lifetime::Durable {
        output
            .sync_all()
            .map_err(Error::io(format!("fsync {}", out.display())))?;
    }
    dbconn::failpoint::hit("restore-after-decompress").map_err(Error::Restore)?;
    Ok(out)
}

/// `std::io::copy`, with read errors and write errors told apart.
pub fn copy_split(
    from: &mut impl std::io::Read,
    to: &mut impl std::io::Write,
    on_read: impl Fn(String) -> Error,
    on_write: impl Fn(std::io::Error) -> Error,
) -> Result<u64, Error> {
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

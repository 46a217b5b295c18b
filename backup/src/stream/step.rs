//! A step: the pages that changed between two consistent states of the database, as one
//! object. The format (docs/streams.md) is plain zstd, like a WAL object's:
//!
//! - a zstd skippable frame (magic `0x184D2A5E`, little-endian, then the length) holding the
//!   step's header as JSON ([`Header`]);
//! - then the payload compressed: for each page, its number (4 bytes, big-endian) and its
//!   `page_size` bytes, in page order.
//!
//! `zstd -d` gives the payload (the header frame is skipped); the header is read from the
//! object's first bytes. An encrypted step is the whole object in age (`.zst.age`). Applying a
//! step to the file of the state before it: write each page at `(pgno - 1) * page_size`, then
//! cut the file to `page_count` pages; the result's page hashes sum to `state`
//! ([`super::pages`]).

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::crypt::{Encryption, Identities};
use crate::error::Error;

/// The skippable-frame magic a step's header is stored under (the WAL archive's is 0x184D2A5D).
pub const HEADER_MAGIC: u32 = 0x184D_2A5E;

/// What a step says about itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    /// The format's version: 1.
    pub dbward_step: u32,
    /// The generation it continues (its base), and its place in it (1, 2, ...).
    pub generation: String,
    pub seq: u64,
    /// A compacted step spans steps `first..=seq` (its pages are each page's last version
    /// among them); a step itself has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<u64>,
    /// When the state was read (RFC 3339, UTC): every commit before it is in the state.
    pub captured_at: String,
    pub page_size: u32,
    /// The database's size in pages after the step.
    pub page_count: u32,
    /// Pages in the payload.
    pub pages: u32,
    /// The payload's size and SHA-256 (hex), before compression.
    pub payload_bytes: u64,
    pub payload_sha256: String,
    /// The state's hash after the step ([`super::pages`], 32 hex digits).
    pub state: String,
}

/// Encodes a step: `header` (whose payload fields are filled here) and the payload read from
/// `payload` (the page records, as written by [`record`]), into `out`.
pub fn encode(
    header: &mut Header,
    payload: &Path,
    level: i32,
    encryption: Option<&Encryption>,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let io = |what: &'static str| Error::io(format!("encoding step {} ({what})", header.seq));
    let mut sha = Sha256::new();
    let mut bytes = 0u64;
    {
        let mut f = std::fs::File::open(payload).map_err(io("reading the payload"))?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).map_err(io("reading the payload"))?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            bytes += n as u64;
        }
    }
    header.payload_bytes = bytes;
    header.payload_sha256 = crate::pipeline::hex(&sha.finalize());
    let json = serde_json::to_vec(&*header).expect("serializable");
    match encryption {
        None => write_plain(&json, payload, level, out).map_err(io("writing")),
        Some(e) => {
            let mut w = e.encryptor()?.wrap_output(out).map_err(io("age header"))?;
            write_plain(&json, payload, level, &mut w).map_err(io("writing"))?;
            w.finish().map(|_| ()).map_err(io("age"))
        }
    }
}

/// The header frame, then the payload compressed.
fn write_plain<W: Write + ?Sized>(
    json: &[u8],
    payload: &Path,
    level: i32,
    out: &mut W,
) -> std::io::Result<()> {
    crate::pipeline::write_header_frame(out, HEADER_MAGIC, json)?;
    let mut enc = zstd::stream::write::Encoder::new(out, level)?;
    enc.include_checksum(true)?;
    std::io::copy(&mut std::fs::File::open(payload)?, &mut enc)?;
    enc.finish()?;
    Ok(())
}

/// The payloads at `parts`, in order, merged into one at `out`: each page's last version, in
/// page order, pages past `page_count` left out; the number of pages. `scratch` (a file of the
/// caller's) holds the pages meanwhile, at their places, so memory holds only their numbers.
pub fn merge(
    parts: &[std::path::PathBuf],
    page_size: u32,
    page_count: u32,
    scratch: &Path,
    out: &Path,
) -> Result<u32, Error> {
    let io = |what: String| Error::io(what);
    let size = page_size as usize;
    let pages = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(scratch)
        .map_err(io(format!("creating {}", scratch.display())))?;
    let mut present = std::collections::BTreeSet::new();
    let mut rec = vec![0u8; 4 + size];
    for part in parts {
        let mut f = std::io::BufReader::new(
            std::fs::File::open(part).map_err(io(format!("reading {}", part.display())))?,
        );
        loop {
            // A record cut short is a damaged payload, never the end of one.
            let mut got = 0;
            while got < rec.len() {
                match f.read(&mut rec[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io(format!("reading {}", part.display()))(e)),
                }
            }
            if got == 0 {
                break;
            }
            if got < rec.len() {
                return Err(Error::Damaged(format!(
                    "{} ends in the middle of a page record",
                    part.display()
                )));
            }
            let pgno = u32::from_be_bytes(rec[..4].try_into().expect("4 bytes"));
            pages
                .write_all_at(&rec[4..], u64::from(pgno - 1) * size as u64)
                .map_err(io(format!("writing {}", scratch.display())))?;
            present.insert(pgno);
        }
    }
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(out).map_err(io(format!("writing {}", out.display())))?,
    );
    let mut page = vec![0u8; size];
    let mut n = 0;
    for pgno in present.into_iter().filter(|p| *p <= page_count) {
        pages
            .read_exact_at(&mut page, u64::from(pgno - 1) * size as u64)
            .map_err(io(format!("reading {}", scratch.display())))?;
        record(&mut w, pgno, &page).map_err(io(format!("writing {}", out.display())))?;
        n += 1;
    }
    w.flush()
        .map_err(io(format!("writing {}", out.display())))?;
    drop(pages);
    let _ = std::fs::remove_file(scratch);
    Ok(n)
}

/// One page record of a payload.
pub fn record(out: &mut impl Write, pgno: u32, page: &[u8]) -> std::io::Result<()> {
    out.write_all(&pgno.to_be_bytes())?;
    out.write_all(page)
}

fn damaged(key: &str, why: impl std::fmt::Display) -> Error {
    Error::Damaged(format!("{key} is not a step dbward stored: {why}"))
}

/// The step in `object` (as stored at `key`) applied to the file `to` (the state before it):
/// its header, once every page is written and the payload matched its size and SHA-256.
pub fn apply(
    object: &[u8],
    key: &str,
    identities: &Identities,
    to: &Path,
) -> Result<Header, Error> {
    let mut plain = identities.plain(object, key, "")?;
    let header = header_from(&mut plain, key)?;
    if header.dbward_step != 1 {
        return Err(damaged(
            key,
            format!("format {} is newer than this dbward's", header.dbward_step),
        ));
    }
    let mut dec = zstd::stream::read::Decoder::new(plain).map_err(|e| damaged(key, e))?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(to)
        .map_err(Error::io(format!("opening {}", to.display())))?;
    let size = header.page_size as usize;
    let mut sha = Sha256::new();
    let mut bytes = 0u64;
    let mut rec = vec![0u8; 4 + size];
    for _ in 0..header.pages {
        dec.read_exact(&mut rec)
            .map_err(|e| damaged(key, format!("its payload ends early: {e}")))?;
        sha.update(&rec);
        bytes += rec.len() as u64;
        let pgno = u32::from_be_bytes(rec[..4].try_into().expect("4 bytes"));
        if pgno == 0 || pgno > header.page_count {
            return Err(damaged(
                key,
                format!("page {pgno} is outside its {} pages", header.page_count),
            ));
        }
        file.write_all_at(&rec[4..], u64::from(pgno - 1) * size as u64)
            .map_err(Error::io(format!("writing {}", to.display())))?;
    }
    let mut rest = [0u8; 1];
    if dec.read(&mut rest).map_err(|e| damaged(key, e))? != 0 {
        return Err(damaged(key, "its payload is longer than its header says"));
    }
    if bytes != header.payload_bytes
        || crate::pipeline::hex(&sha.finalize()) != header.payload_sha256
    {
        return Err(damaged(
            key,
            "its payload does not match its header's size and SHA-256",
        ));
    }
    file.set_len(u64::from(header.page_count) * size as u64)
        .map_err(Error::io(format!("sizing {}", to.display())))?;
    Ok(header)
}

/// The header of the step in `object` (as stored at `key`, decrypted with `identities` when it
/// is encrypted).
pub fn header_of(object: &[u8], key: &str, identities: &Identities) -> Result<Header, Error> {
    header_from(&mut identities.plain(object, key, "")?, key)
}

/// A step's header, read from the first bytes of its plain (decrypted) object.
pub fn header_from(input: &mut impl Read, key: &str) -> Result<Header, Error> {
    use crate::pipeline::{read_header_frame, HeaderFrame};
    let json = read_header_frame(input, HEADER_MAGIC).map_err(|e| match e {
        HeaderFrame::Unreadable(e) => damaged(key, format!("reading its header: {e}")),
        HeaderFrame::NotOurs => damaged(key, "it does not start with a step's header frame"),
    })?;
    serde_json::from_slice(&json).map_err(|e| damaged(key, format!("its header: {e}")))
}

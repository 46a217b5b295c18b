//! The one streaming pipeline: source bytes → zstd (frame checksum on) → SHA-256 and byte
//! counts → fixed-size chunks on a bounded channel → the store. Memory is bounded by the chunk
//! size times the channel depth, whatever the database's size.
//!
//! The producer sends [`Msg::Done`] only after the source reported success (for `pg_dump`: exit
//! status 0). A store that sees the channel close without `Done` abandons the object, so a dump
//! that dies mid-stream never becomes a snapshot.

use std::io::{Read, Write};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::error::Error;

pub enum Msg {
    Data(Vec<u8>),
    /// The source ended successfully and every byte was sent.
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub sha256: String,
}

pub struct Options {
    pub level: i32,
    /// zstd worker threads; 0 compresses on the calling thread.
    pub workers: u32,
    /// Every chunk but the last has exactly this size (R2 wants equal multipart parts).
    pub chunk_size: usize,
    /// Encrypt the compressed stream (age) before it is hashed and chunked.
    pub encryption: Option<std::sync::Arc<crate::crypt::Encryption>>,
}

/// Bytes of input per zstd worker's job.
const JOB_SIZE: u32 = 2 << 20;

/// Runs on a blocking thread. `finish` is called after the source hit EOF and decides whether
/// the snapshot may count (it waits for `pg_dump` and checks its exit status).
pub fn compress(
    source: &mut dyn Read,
    finish: impl FnOnce() -> Result<(), Error>,
    opts: &Options,
    tx: mpsc::Sender<Msg>,
    progress: &dyn Fn(u64),
) -> Result<Stats, Error> {
    let sink = ChunkSink {
        buf: Vec::with_capacity(opts.chunk_size),
        chunk_size: opts.chunk_size,
        hasher: Sha256::new(),
        stored: 0,
        tx,
    };
    let io = |what: &'static str| Error::io(format!("compressing the snapshot ({what})"));
    let out = match &opts.encryption {
        None => Out::Plain(sink),
        Some(e) => Out::Age(e.encryptor()?.wrap_output(sink).map_err(io("age header"))?),
    };
    let mut enc = zstd::stream::write::Encoder::new(out, opts.level).map_err(io("zstd init"))?;
    enc.include_checksum(true).map_err(io("zstd checksum"))?;
    if opts.workers > 0 {
        enc.multithread(opts.workers).map_err(io("zstd workers"))?;
        // 2 MiB jobs instead of zstd's default of four windows (8 MiB at level 3): each worker
        // holds a job's input and output, so memory stays under 64 MiB for the same ratio.
        enc.set_parameter(zstd::zstd_safe::CParameter::JobSize(JOB_SIZE))
            .map_err(io("zstd job size"))?;
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut raw = 0u64;
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Source(format!("reading the source: {e}"))),
        };
        enc.write_all(&buf[..n]).map_err(io("write"))?;
        raw += n as u64;
        progress(raw);
    }
    let mut sink = match enc.finish().map_err(io("finish"))? {
        Out::Plain(sink) => sink,
        Out::Age(w) => w.finish().map_err(io("age finish"))?,
    };
    sink.send_buffer().map_err(io("send"))?;
    finish()?;
    let stats = Stats {
        raw_bytes: raw,
        stored_bytes: sink.stored,
        sha256: hex(&sink.hasher.finalize()),
    };
    sink.tx.blocking_send(Msg::Done).map_err(|_| Error::Store {
        what: "store".into(),
        message: "stopped before the snapshot was complete".into(),
    })?;
    Ok(stats)
}

/// Where zstd writes: the chunks, or age's stream writer in front of them.
enum Out {
    Plain(ChunkSink),
    Age(age::stream::StreamWriter<ChunkSink>),
}

impl Write for Out {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            Out::Plain(s) => s.write(data),
            Out::Age(w) => w.write(data),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::Plain(s) => s.flush(),
            Out::Age(w) => w.flush(),
        }
    }
}

struct ChunkSink {
    buf: Vec<u8>,
    chunk_size: usize,
    hasher: Sha256,
    stored: u64,
    tx: mpsc::Sender<Msg>,
}

impl ChunkSink {
    fn send_buffer(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk_size));
        self.tx
            .blocking_send(Msg::Data(chunk))
            .map_err(|_| std::io::Error::other("the store stopped receiving (see its error)"))
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(self.chunk_size - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.hasher.update(&data[..n]);
        self.stored += n as u64;
        if self.buf.len() == self.chunk_size {
            self.send_buffer()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads the blocks another thread (or a task: see [`Blocks`]) sends on a bounded channel, in
/// order; EOF once the sender is gone. The channel's depth bounds what is held in memory.
pub(crate) struct BlockReader<B: Blocks = std::sync::mpsc::Receiver<Vec<u8>>> {
    rx: B,
    buf: Vec<u8>,
    at: usize,
}

/// The receiving end of a channel of blocks, read from a plain thread.
pub(crate) trait Blocks {
    /// The next block, or `None` once the sender is gone.
    fn next_block(&mut self) -> Option<Vec<u8>>;
}

impl Blocks for std::sync::mpsc::Receiver<Vec<u8>> {
    fn next_block(&mut self) -> Option<Vec<u8>> {
        self.recv().ok()
    }
}

/// From a task on the runtime (which awaits room instead of blocking its thread); the reader
/// must be a thread outside the runtime.
impl Blocks for tokio::sync::mpsc::Receiver<Vec<u8>> {
    fn next_block(&mut self) -> Option<Vec<u8>> {
        self.blocking_recv()
    }
}

impl<B: Blocks> BlockReader<B> {
    pub(crate) fn new(rx: B) -> BlockReader<B> {
        BlockReader {
            rx,
            buf: Vec::new(),
            at: 0,
        }
    }
}

impl<B: Blocks> Read for BlockReader<B> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.buf.len() {
            match self.rx.next_block() {
                Some(next) => {
                    self.buf = next;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The most a header frame holds: a header is a few hundred bytes; more is not one of ours.
const HEADER_MAX: u32 = 64 << 10;

/// Writes `header` as a zstd skippable frame (`magic`, one of 0x184D2A50-0x184D2A5F, then its
/// length, both little-endian): `zstd -d` skips it, dbward reads it back with
/// [`read_header_frame`].
pub fn write_header_frame<W: Write + ?Sized>(
    out: &mut W,
    magic: u32,
    header: &[u8],
) -> std::io::Result<()> {
    out.write_all(&magic.to_le_bytes())?;
    out.write_all(&(header.len() as u32).to_le_bytes())?;
    out.write_all(header)
}

/// Why a header frame was not read.
pub enum HeaderFrame {
    Unreadable(std::io::Error),
    /// The input does not start with a frame of this magic (and a sane length).
    NotOurs,
}

/// The header a stream starts with, written by [`write_header_frame`] with `magic`.
pub fn read_header_frame(input: &mut impl Read, magic: u32) -> Result<Vec<u8>, HeaderFrame> {
    let mut head = [0u8; 8];
    input
        .read_exact(&mut head)
        .map_err(HeaderFrame::Unreadable)?;
    let got = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
    if got != magic || len > HEADER_MAX {
        return Err(HeaderFrame::NotOurs);
    }
    let mut header = vec![0u8; len as usize];
    input
        .read_exact(&mut header)
        .map_err(HeaderFrame::Unreadable)?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_equal_and_the_stream_decodes() {
        // Incompressible (hashes), so the stream spans many chunks.
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| Sha256::digest(i.to_le_bytes()))
            .collect();
        let (tx, mut rx) = mpsc::channel(1024);
        let opts = Options {
            level: 3,
            workers: 0,
            chunk_size: 64 * 1024,
            encryption: None,
        };
        let stats = compress(&mut &data[..], || Ok(()), &opts, tx, &|_| {}).unwrap();
        let mut stored = Vec::new();
        let mut sizes = Vec::new();
        let mut done = false;
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Data(c) => {
                    sizes.push(c.len());
                    stored.extend(c);
                }
                Msg::Done => done = true,
            }
        }
        assert!(done);
        assert!(
            sizes.len() > 2 && sizes[..sizes.len() - 1].iter().all(|s| *s == 64 * 1024),
            "{sizes:?}"
        );
        assert_eq!(stats.raw_bytes, data.len() as u64);
        assert_eq!(stats.stored_bytes, stored.len() as u64);
        assert_eq!(stats.sha256, hex(&Sha256::digest(&stored)));
        assert_eq!(zstd::decode_all(&stored[..]).unwrap(), data);
    }

    #[test]
    fn a_failed_source_sends_no_done() {
        let (tx, mut rx) = mpsc::channel(1024);
        let opts = Options {
            level: 1,
            workers: 0,
            chunk_size: 1024,
            encryption: None,
        };
        let err = compress(
            &mut &b"partial"[..],
            || Err(Error::Source("pg_dump exited 1".into())),
            &opts,
            tx,
            &|_| {},
        );
        assert!(err.is_err());
        while let Ok(msg) = rx.try_recv() {
            assert!(!matches!(msg, Msg::Done));
        }
    }
}

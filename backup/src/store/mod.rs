//! Where snapshots live: a local directory or an S3-compatible bucket. Keys are relative to the
//! store's prefix: `<database>/<snapshot-id>.<format>.zst` and `<database>/<snapshot-id>.json`.

pub mod local;
pub mod s3;
pub mod set;

pub use s3::StoreOptions;

use std::io::Write;

use tokio::sync::mpsc;

use crate::error::Error;
use crate::pipeline::Msg;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Relative to the store's prefix.
    pub key: String,
    pub size: u64,
    pub modified: Option<std::time::SystemTime>,
}

pub enum Store {
    Local(local::LocalStore),
    S3(Box<s3::S3Store>),
}

impl Store {
    /// `s3://bucket/prefix`, `file:///abs/dir`, `file://./rel/dir` (relative to the working
    /// directory).
    pub async fn open(url: &str, s3: &StoreOptions) -> Result<Store, Error> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::StoreUrl {
                    url: url.into(),
                    problem: "no bucket after s3://".into(),
                });
            }
            let prefix = prefix.trim_matches('/').to_string();
            let ca_pem = match &s3.ca_file {
                Some(path) => Some(std::fs::read(path).map_err(|e| Error::StoreUrl {
                    url: url.into(),
                    problem: format!(
                        "the CA file {} (store.ca_file, AWS_CA_BUNDLE) cannot be read: {e}",
                        path.display()
                    ),
                })?),
                None => None,
            };
            return Ok(Store::S3(Box::new(
                s3::S3Store::new(bucket.into(), prefix, s3.clone(), ca_pem).await,
            )));
        }
        if let Some(path) = url.strip_prefix("file://") {
            if path.is_empty() {
                return Err(Error::StoreUrl {
                    url: url.into(),
                    problem: "no directory after file://".into(),
                });
            }
            let root = std::path::Path::new(path);
            if root.is_absolute()
                && !root
                    .components()
                    .any(|c| matches!(c, std::path::Component::Normal(_)))
            {
                return Err(Error::StoreUrl {
                    url: url.into(),
                    problem: "the file system's root cannot be a store; name a directory of its own, such as file:///var/backups/app".into(),
                });
            }
            return Ok(Store::Local(local::LocalStore::new(path.into(), s3.group)));
        }
        Err(Error::StoreUrl {
            url: url.into(),
            problem: "expected s3://bucket/prefix or file:///abs/dir".into(),
        })
    }

    /// The size of every chunk but the last for a stream of about `size_hint` bytes.
    pub fn chunk_size(&self, size_hint: u64) -> usize {
        match self {
            Store::Local(_) => 1 << 20,
            Store::S3(s) => s.chunk_size(size_hint),
        }
    }

    /// Where `key` is, for messages.
    pub fn describe(&self, key: &str) -> String {
        match self {
            Store::Local(s) => s.path(key).display().to_string(),
            Store::S3(s) => s.describe(key),
        }
    }

    /// Stores the chunks received until [`Msg::Done`]; without it, abandons the object.
    /// Returns the object's size as the store reports it after the write.
    pub async fn put_stream(&self, key: &str, rx: mpsc::Receiver<Msg>) -> Result<u64, Error> {
        match self {
            Store::Local(s) => s.put_stream(key, rx).await,
            Store::S3(s) => s.put_stream(key, rx).await,
        }
    }

    /// Writes a small object that must not exist yet (a manifest is never overwritten).
    pub async fn put_new(&self, key: &str, bytes: &[u8]) -> Result<(), Error> {
        match self {
            Store::Local(s) => s.put_new(key, bytes),
            Store::S3(s) => s.put_new(key, bytes).await,
        }
    }

    /// Writes a small object, replacing any (drill receipts).
    pub async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), Error> {
        match self {
            Store::Local(s) => s.put(key, bytes),
            Store::S3(s) => s.put(key, bytes).await,
        }
    }

    /// Streams `key` into `to` (a temp file, not fsynced: it is read once and removed); returns
    /// its size and hex SHA-256.
    /// Streams the object into `to`; returns its size and SHA-256 (hex).
    pub async fn download(&self, key: &str, to: &mut impl Write) -> Result<(u64, String), Error> {
        let mut sink = HashingWriter::new(to);
        match self {
            Store::Local(s) => s.download(key, &mut sink)?,
            Store::S3(s) => s.download(key, &mut sink).await?,
        }
        Ok(sink.finish())
    }

    /// Streams the object at `key` into `tx` in blocks of [`BLOCK`] (the last one shorter) and
    /// returns its size and SHA-256. Sending awaits the receiver, never blocking the runtime, so
    /// the receiver can be a thread feeding a process the runtime waits on. Once the receiver is
    /// gone, the rest is still read and hashed: a damaged object is told by its checksum, not
    /// by whatever its reader tripped on.
    pub async fn download_blocks(
        &self,
        key: &str,
        tx: mpsc::Sender<Vec<u8>>,
    ) -> Result<(u64, String), Error> {
        let mut sink = BlockSink::new(tx);
        match self {
            Store::Local(s) => {
                let (mut file, path) = s.open(key)?;
                let mut buf = vec![0u8; BLOCK];
                loop {
                    let n = match std::io::Read::read(&mut file, &mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(Error::io(format!("reading {}", path.display()))(e)),
                    };
                    sink.push(&buf[..n]).await;
                }
            }
            Store::S3(s) => s.download_blocks(key, &mut sink).await?,
        }
        Ok(sink.finish().await)
    }

    pub async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, Error> {
        match self {
            Store::Local(s) => s.get_bytes(key),
            Store::S3(s) => s.get_bytes(key).await,
        }
    }

    /// Objects under `dir` (one level), in no particular order.
    /// The folders directly under the store's root (one per database), sorted.
    pub async fn folders(&self) -> Result<Vec<String>, Error> {
        let mut out = match self {
            Store::Local(s) => s.folders()?,
            Store::S3(s) => s.folders().await?,
        };
        out.sort();
        Ok(out)
    }

    pub async fn list(&self, dir: &str) -> Result<Vec<ObjectInfo>, Error> {
        self.list_after(dir, None).await
    }

    /// Objects under `dir` (one level) whose name sorts after `after` (all of them for
    /// `None`), in no particular order. On S3 this is the listing's `start-after`: a store
    /// answers it without sending the names before it.
    pub async fn list_after(
        &self,
        dir: &str,
        after: Option<&str>,
    ) -> Result<Vec<ObjectInfo>, Error> {
        match self {
            Store::Local(s) => s.list_after(dir, after),
            Store::S3(s) => s.list_after(dir, after).await,
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        match self {
            Store::Local(s) => s.delete(key),
            Store::S3(s) => s.delete(key).await,
        }
    }

    /// Multipart uploads under `dir` older than `before` whose key `is_ours` accepts, aborted
    /// (S3 only; a local partial file is an orphan like any other).
    pub async fn abort_stale_uploads(
        &self,
        dir: &str,
        before: std::time::SystemTime,
        dry_run: bool,
        is_ours: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<String>, Error> {
        match self {
            Store::Local(_) => Ok(Vec::new()),
            Store::S3(s) => s.abort_stale_uploads(dir, before, dry_run, is_ours).await,
        }
    }
}

/// The size of the blocks [`Store::download_blocks`] sends.
pub const BLOCK: usize = 1 << 20;

/// Gathers a download into [`BLOCK`]-sized blocks for a channel (a local file reads in any
/// size, S3 gives what the network gave), counting and hashing everything, sent or not.
pub struct BlockSink {
    tx: Option<mpsc::Sender<Vec<u8>>>,
    block: Vec<u8>,
    hasher: sha2::Sha256,
    len: u64,
}

impl BlockSink {
    fn new(tx: mpsc::Sender<Vec<u8>>) -> BlockSink {
        use sha2::Digest;
        BlockSink {
            tx: Some(tx),
            block: Vec::with_capacity(BLOCK),
            hasher: sha2::Sha256::new(),
            len: 0,
        }
    }

    pub(crate) async fn push(&mut self, mut data: &[u8]) {
        use sha2::Digest;
        self.hasher.update(data);
        self.len += data.len() as u64;
        while !data.is_empty() && self.tx.is_some() {
            let n = data.len().min(BLOCK - self.block.len());
            self.block.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.block.len() == BLOCK {
                self.send().await;
            }
        }
    }

    async fn send(&mut self) {
        let block = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
        if let Some(tx) = &self.tx {
            if tx.send(block).await.is_err() {
                // The receiver stopped: the rest is only hashed.
                self.tx = None;
            }
        }
    }

    /// Sends the last, partial block; the object's size and SHA-256.
    async fn finish(mut self) -> (u64, String) {
        use sha2::Digest;
        if !self.block.is_empty() {
            self.send().await;
        }
        (self.len, crate::pipeline::hex(&self.hasher.finalize()))
    }
}

/// Writes through while counting and hashing.
pub struct HashingWriter<'a, W: Write> {
    inner: &'a mut W,
    hasher: sha2::Sha256,
    len: u64,
}

impl<'a, W: Write> HashingWriter<'a, W> {
    pub(crate) fn new(inner: &'a mut W) -> Self {
        use sha2::Digest;
        HashingWriter {
            inner,
            hasher: sha2::Sha256::new(),
            len: 0,
        }
    }

    pub(crate) fn finish(self) -> (u64, String) {
        use sha2::Digest;
        (self.len, crate::pipeline::hex(&self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

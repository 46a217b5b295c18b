//! Where snapshots live: a local directory or an S3-compatible bucket. Keys are relative to the
//! store's prefix: `<database>/<snapshot-id>.<format>.zst` and `<database>/<snapshot-id>.json`.

pub mod local;
pub mod s3;

pub use s3::S3Options;

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
    pub async fn open(url: &str, s3: &S3Options) -> Result<Store, Error> {
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
            return Ok(Store::Local(local::LocalStore::new(path.into())));
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

    pub async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, Error> {
        match self {
            Store::Local(s) => s.get_bytes(key),
            Store::S3(s) => s.get_bytes(key).await,
        }
    }

    /// Objects under `dir` (one level), in no particular order.
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

/// Writes through while counting and hashing.
pub struct HashingWriter<'a, W: Write> {
    inner: &'a mut W,
    hasher: sha2::Sha256,
    len: u64,
}

impl<'a, W: Write> HashingWriter<'a, W> {
    fn new(inner: &'a mut W) -> Self {
        use sha2::Digest;
        HashingWriter {
            inner,
            hasher: sha2::Sha256::new(),
            len: 0,
        }
    }

    fn finish(self) -> (u64, String) {
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

//! Where snapshots live: a local directory or an S3-compatible bucket. Keys are relative to the
//! store's prefix: `<database>/<snapshot-id>.<format>.zst` and `<database>/<snapshot-id>.json`.

pub mod local;

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
}

impl Store {
    /// `file:///abs/dir`, `file://./rel/dir` (relative to the working directory).
    pub async fn open(url: &str) -> Result<Store, Error> {
        if let Some(path) = url.strip_prefix("file://") {
            if path.is_empty() {
                return Err(Error::StoreUrl {
                    url: url.into(),
                    problem: "no directory after file://".into(),
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
    pub fn chunk_size(&self, _size_hint: u64) -> usize {
        8 << 20
    }

    /// Where `key` is, for messages.
    pub fn describe(&self, key: &str) -> String {
        match self {
            Store::Local(s) => s.path(key).display().to_string(),
        }
    }

    /// Stores the chunks received until [`Msg::Done`]; without it, abandons the object.
    /// Returns the object's size as the store reports it after the write.
    pub async fn put_stream(&self, key: &str, rx: mpsc::Receiver<Msg>) -> Result<u64, Error> {
        match self {
            Store::Local(s) => s.put_stream(key, rx).await,
        }
    }

    /// Writes a small object that must not exist yet (a manifest is never overwritten).
    pub async fn put_new(&self, key: &str, bytes: &[u8]) -> Result<(), Error> {
        match self {
            Store::Local(s) => s.put_new(key, bytes),
        }
    }

    pub async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, Error> {
        match self {
            Store::Local(s) => s.get_bytes(key),
        }
    }

    /// Objects under `dir` (one level), in no particular order.
    pub async fn list(&self, dir: &str) -> Result<Vec<ObjectInfo>, Error> {
        match self {
            Store::Local(s) => s.list(dir),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        match self {
            Store::Local(s) => s.delete(key),
        }
    }
}

//! Snapshots: a consistent copy of the database in its standard format (a SQLite file, a
//! `pg_dump` custom-format archive), zstd-compressed on the way to the store, with a manifest
//! written last and only after the data object's size is confirmed in the store.
//!
//! [`take`] is the whole pipeline; [`list`] reads the manifests back. This crate does not know
//! about migrations' locking or the command line: the binary decides when a snapshot is taken.

pub mod catalog;
pub mod crypt;
pub mod engine;
pub mod error;
pub mod manifest;
pub mod owner;
pub mod pipeline;
pub mod pitr;
pub mod prune;
pub mod restore;
pub mod retention;
pub mod scratch;
pub mod snapshot;
pub mod store;
pub mod stream;

pub use catalog::{
    check_folder_name, drills, list, list_all, manifest_key, receipt_key, receipts, record_drill,
    Damaged, DrillKind, DrillReceipt, DrillRecord, Listing,
};
pub use error::{Error, ErrorKind};
pub use manifest::{Kind, Manifest};
pub use prune::{prune, PruneReport};
pub use snapshot::{take, take_to, Progress, Request, Taken};
pub use store::set::{Found, InMirror, StoreSet};
pub use store::{Store, StoreOptions};

/// This host's name, as manifests, the deploy log, leases and notifications record it:
/// `DBWARD_HOST` when set (hosts whose system names say nothing, containers), else the system's.
pub fn hostname() -> String {
    if let Some(name) = std::env::var("DBWARD_HOST").ok().filter(|h| !h.is_empty()) {
        return name;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// `1.2 GiB`: sizes in log lines are for people.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

//! Continuous protection of a SQLite database: a stream of its states, each a step of the pages
//! that changed since the one before, on top of a base (the whole file), so that any moment the
//! replicator saw can be restored. The design and the formats are in docs/streams.md.
//!
//! In the store, under the database's folder:
//!
//! - `stream/<generation>.json`: a generation's record ([`Generation`]), written once its base is
//!   stored; a generation without one does not exist.
//! - `stream/<generation>/base.sqlite.zst[.age]`: the base, a plain SQLite file after `zstd -d`.
//! - `stream/<generation>/<seq>.step.zst[.age]`: step `seq` (16 hex digits, from 1), written once.
//!
//! [`wal`] reads which pages changed from the WAL's frames; [`capture`] pins a state without
//! holding the application up; [`pages`] keeps the page hashes that prove a restored state;
//! [`step`] is a step's format; [`replica`] ships a generation; [`restore`] builds a state back.

pub mod capture;
pub mod pages;
pub mod replica;
pub mod restore;
pub mod step;
pub mod wal;

/// The folder of a database's stream, under its own folder in the store.
pub const DIR: &str = "stream";

/// A generation's record: what its base is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Generation {
    /// The format's version: 1.
    pub dbward_stream: u32,
    pub generation: String,
    /// When its base was read (RFC 3339, UTC).
    pub started_at: String,
    /// Why it began (`first start`, `the database file was replaced`, ...).
    pub reason: String,
    pub page_size: u32,
    pub page_count: u32,
    /// The base's state hash ([`pages`]) and its object's size and SHA-256 as stored.
    pub state: String,
    pub base_key: String,
    pub base_stored_bytes: u64,
    pub base_sha256: String,
}

/// `<database>/stream`.
pub fn dir(database: &str) -> String {
    format!("{database}/{DIR}")
}

/// `<database>/stream/<generation>.json`.
pub fn generation_key(database: &str, generation: &str) -> String {
    format!("{database}/{DIR}/{generation}.json")
}

/// `<database>/stream/<generation>`: the base and the steps.
pub fn generation_dir(database: &str, generation: &str) -> String {
    format!("{database}/{DIR}/{generation}")
}

fn suffix(encrypted: bool) -> &'static str {
    if encrypted {
        ".zst.age"
    } else {
        ".zst"
    }
}

pub fn base_key(database: &str, generation: &str, encrypted: bool) -> String {
    format!(
        "{}/base.sqlite{}",
        generation_dir(database, generation),
        suffix(encrypted)
    )
}

pub fn step_key(database: &str, generation: &str, seq: u64, encrypted: bool) -> String {
    format!(
        "{}/{seq:016x}.step{}",
        generation_dir(database, generation),
        suffix(encrypted)
    )
}

/// The step number a key of [`step_key`]'s form holds.
pub fn seq_of(key: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?;
    let (hex, rest) = name.split_once('.')?;
    (hex.len() == 16 && (rest == "step.zst" || rest == "step.zst.age"))
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

/// A new generation's name: the time and a random tail, so that names sort by age.
pub fn new_generation_id() -> String {
    format!(
        "{}-{:04x}",
        crate::manifest::compact_stamp(time::OffsetDateTime::now_utc()),
        crate::manifest::random_u16()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_keys_read_back_and_nothing_else_does() {
        let k = step_key("app", "g", 42, true);
        assert_eq!(k, "app/stream/g/000000000000002a.step.zst.age");
        assert_eq!(seq_of(&k), Some(42));
        assert_eq!(seq_of("app/stream/g/base.sqlite.zst"), None);
        assert_eq!(seq_of("app/stream/g/2a.step.zst"), None);
    }
}

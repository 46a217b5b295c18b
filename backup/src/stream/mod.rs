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

pub mod ask;
pub mod capture;
pub mod lease;
pub mod pages;
pub mod point;
pub mod prune;
pub mod replica;
pub mod restore;
pub mod step;
pub mod verify;
pub mod wal;

/// The folder of a database's stream, under its own folder in the store.
pub const DIR: &str = "stream";

/// A generation's record: what its base is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Generation {
    /// The format's version: 1.
    pub dbward_stream: u32,
    pub generation: String,
    /// The database's identity (`dbward_identity`), when it has one: a restore takes only its
    /// own database's generations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_id: Option<String>,
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

/// How many objects of the level below one compacted object of each level merges: 30 steps
/// (30 s at the default interval), 10 of those (5 min), 12 of those (1 h). A restore reads at
/// most a few dozen objects a day after the base, whatever the interval.
pub const LEVELS: [u64; 3] = [30, 10, 12];

/// The steps a level-`level` object spans (1 for a step itself).
pub fn span(level: u32) -> u64 {
    LEVELS[..level as usize].iter().product()
}

/// `<database>/stream/<generation>/<first>-<last>.L<level>.step.zst[.age]`: steps `first..=last`
/// merged (each page's last version), for restores that read fewer objects.
pub fn compacted_key(
    database: &str,
    generation: &str,
    level: u32,
    first: u64,
    last: u64,
    encrypted: bool,
) -> String {
    format!(
        "{}/{first:016x}-{last:016x}.L{level}.step{}",
        generation_dir(database, generation),
        suffix(encrypted)
    )
}

/// What a step object's key says: its level (0 for a step) and the steps it spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span {
    pub first: u64,
    pub last: u64,
    pub level: u32,
}

/// The span a key of [`step_key`]'s or [`compacted_key`]'s form holds.
pub fn span_of(key: &str) -> Option<Span> {
    let name = key.rsplit('/').next()?;
    let (stem, rest) = name.split_once('.')?;
    let hex = |h: &str| {
        (h.len() == 16)
            .then(|| u64::from_str_radix(h, 16).ok())
            .flatten()
    };
    if rest == "step.zst" || rest == "step.zst.age" {
        let seq = hex(stem)?;
        return Some(Span {
            first: seq,
            last: seq,
            level: 0,
        });
    }
    let (first, last) = stem.split_once('-')?;
    let (level, tail) = rest.strip_prefix('L')?.split_once('.')?;
    let level: u32 = level.parse().ok()?;
    let (first, last) = (hex(first)?, hex(last)?);
    ((tail == "step.zst" || tail == "step.zst.age")
        && (1..=LEVELS.len() as u32).contains(&level)
        && last >= first
        && last - first + 1 == span(level)
        && first % span(level) == 1 % span(level))
    .then_some(Span { first, last, level })
}

/// The step number a key of [`step_key`]'s form holds.
pub fn seq_of(key: &str) -> Option<u64> {
    span_of(key).filter(|s| s.level == 0).map(|s| s.last)
}

/// A new generation's name: the time to the microsecond and a random tail, so that names sort
/// by age (`20261206T160528123456Z-f464`).
pub fn new_generation_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let stamp = crate::manifest::compact_stamp(now);
    format!(
        "{}{:06}Z-{:04x}",
        stamp.trim_end_matches('Z'),
        now.microsecond(),
        crate::manifest::random_u16()
    )
}

pub use crate::manifest::is_generation_name;

/// Whether something of the stream recorded with identity `theirs` is the database's whose
/// identity is `ours`: one without an identity may be this database's from before it had one;
/// one with another identity (or with one, when this database has none) is not provably this
/// one's.
pub fn is_ours(theirs: Option<&str>, ours: Option<&str>) -> bool {
    match (theirs, ours) {
        (Some(theirs), Some(ours)) => theirs == ours,
        (Some(_), None) => false,
        (None, _) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_names_are_told_apart() {
        assert!(is_generation_name(&new_generation_id()));
        assert!(is_generation_name("20261206T160528123456Z-f464"));
        assert!(!is_generation_name("20261206T160528Z-pre-deploy-f464"));
        assert!(!is_generation_name("20261206T160528123456Z-F464"));
        assert!(!is_generation_name("../20261206T16052812345Z-f464"));
    }

    #[test]
    fn generation_names_sort_by_age() {
        let a = new_generation_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_generation_id();
        assert!(a < b, "{a} {b}");
        assert_eq!(a.len(), "20261206T160528123456Z-f464".len(), "{a}");
    }

    #[test]
    fn step_keys_read_back_and_nothing_else_does() {
        let k = step_key("app", "g", 42, true);
        assert_eq!(k, "app/stream/g/000000000000002a.step.zst.age");
        assert_eq!(seq_of(&k), Some(42));
        assert_eq!(seq_of("app/stream/g/base.sqlite.zst"), None);
        assert_eq!(seq_of("app/stream/g/2a.step.zst"), None);
        let c = compacted_key("app", "g", 1, 31, 60, false);
        assert_eq!(
            span_of(&c),
            Some(Span {
                first: 31,
                last: 60,
                level: 1
            })
        );
        assert_eq!(seq_of(&c), None);
        // A span that is not the level's is not one of ours.
        assert_eq!(span_of(&compacted_key("app", "g", 1, 31, 61, false)), None);
        assert_eq!(
            span_of(&compacted_key("app", "g", 2, 1, 300, true))
                .unwrap()
                .level,
            2
        );
    }
}

//! The SQLite WAL file (`<db>-wal`), read for one thing: which pages changed since a position.
//! The pages' contents never come from here (they are read from the database inside one read
//! transaction, so each step is a state SQLite itself would show); the frames' page numbers say
//! which pages to read.
//!
//! The format (sqlite.org/fileformat2.html#walformat): a 32-byte header (magic, version, page
//! size, checkpoint sequence, salt-1, salt-2, checksums), then frames of a 24-byte header (page
//! number; the database's size in pages for the frame that commits a transaction, else 0;
//! salt-1, salt-2; checksums) and one page. A frame belongs to the WAL's current generation
//! when its salts are the header's; a restart of the WAL (after a complete checkpoint, the next
//! writer starts again at frame 1) changes the salts and adds one to the checkpoint sequence.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Where the stream stands in the WAL: the generation (salts and checkpoint sequence) and the
/// last frame that committed a transaction already shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub salts: (u32, u32),
    pub checkpoint_seq: u32,
    /// Frames 1..=frame are shipped (0: none of this WAL generation's).
    pub frame: u64,
}

/// The WAL's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub page_size: u32,
    pub checkpoint_seq: u32,
    pub salts: (u32, u32),
}

/// What changed since a [`Position`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// The pages written by frames after the position (a superset of what changed: frames of
    /// a transaction that rolled back are in it, which costs a page read, never a miss).
    pub pages: BTreeSet<u32>,
    /// Where the stream stands once those pages are shipped: the last commit frame found (the
    /// position itself when there is none).
    pub to: Option<Position>,
    /// The frames since the position cannot all be read (the WAL restarted over frames never
    /// shipped, restarted more than once, or is gone): which pages changed is unknown.
    pub unknown: Option<&'static str>,
}

const MAGICS: [u32; 2] = [0x377f_0682, 0x377f_0683];
const HEADER: u64 = 32;
const FRAME_HEADER: u64 = 24;

/// The WAL at `path`'s header; `None` when there is no WAL (missing, empty, or shorter than a
/// header: every frame was checkpointed and the file removed or truncated).
pub fn header(path: &Path) -> std::io::Result<Option<Header>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut h = [0u8; HEADER as usize];
    match f.read_exact(&mut h) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let word = |i: usize| u32::from_be_bytes(h[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    if !MAGICS.contains(&word(0)) {
        return Ok(None);
    }
    Ok(Some(Header {
        page_size: word(2),
        checkpoint_seq: word(3),
        salts: (word(4), word(5)),
    }))
}

/// A frame's header: its page, the database's size it commits (0: none), its salts.
struct Frame {
    pgno: u32,
    commit: u32,
    salts: (u32, u32),
}

/// Frame `n`'s header, or `None` past the end of the file.
fn frame_at(f: &std::fs::File, page_size: u32, n: u64) -> std::io::Result<Option<Frame>> {
    let at = HEADER + (n - 1) * (FRAME_HEADER + u64::from(page_size));
    let mut h = [0u8; FRAME_HEADER as usize];
    match f.read_exact_at(&mut h, at) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let word = |i: usize| u32::from_be_bytes(h[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    Ok(Some(Frame {
        pgno: word(0),
        commit: word(1),
        salts: (word(2), word(3)),
    }))
}

/// How a run of frames ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// At a frame of another generation (or none): the run is whole.
    Frame,
    /// At the end of the file: frames after it may have been cut.
    File,
    /// At the last frame the WAL index counts (`mxFrame`): frames past it are not committed.
    Limit,
}

/// The frames after `from` whose salts are `salts`, up to the first that is not, or to frame
/// `limit`: their pages, the last commit frame among them, the last frame of the run, and how
/// it ended.
fn run_of(
    f: &std::fs::File,
    page_size: u32,
    salts: (u32, u32),
    from: u64,
    limit: Option<u64>,
    pages: &mut BTreeSet<u32>,
) -> std::io::Result<(Option<u64>, u64, End)> {
    let mut last_commit = None;
    let mut n = from + 1;
    loop {
        if limit.is_some_and(|l| n > l) {
            return Ok((last_commit, n - 1, End::Limit));
        }
        match frame_at(f, page_size, n)? {
            Some(fr) if fr.salts == salts && fr.pgno > 0 => {
                pages.insert(fr.pgno);
                if fr.commit > 0 {
                    last_commit = Some(n);
                }
                n += 1;
            }
            Some(_) => return Ok((last_commit, n - 1, End::Frame)),
            None => return Ok((last_commit, n - 1, End::File)),
        }
    }
}

/// The last frame the WAL index (`<db>-shm`) counts as committed (`mxFrame`), when it describes
/// the WAL generation of `salts`. Frames past it are not part of the database: a writer killed
/// after writing them and before updating the index leaves them, with valid salts and a commit
/// mark, to be written over by the next commit. `None` when the index cannot be read or is of
/// another generation (in the middle of a restart, outside the write lock).
fn committed_frames(wal: &Path, salts: (u32, u32)) -> Option<u64> {
    let shm = std::path::PathBuf::from(
        wal.to_string_lossy()
            .strip_suffix("-wal")
            .map(|db| format!("{db}-shm"))?,
    );
    let mut h = [0u8; 96];
    std::fs::File::open(&shm).ok()?.read_exact(&mut h).ok()?;
    // Two copies of the header, equal when it is not being written; native byte order.
    let (first, second) = h.split_at(48);
    let word = |i: usize| u32::from_ne_bytes(first[i..i + 4].try_into().expect("4 bytes"));
    let mut salt_bytes = [0u8; 8];
    salt_bytes[..4].copy_from_slice(&salts.0.to_be_bytes());
    salt_bytes[4..].copy_from_slice(&salts.1.to_be_bytes());
    (first == second && word(0) == 3_007_000 && first[12] == 1 && first[32..40] == salt_bytes)
        .then(|| u64::from(word(16)))
}

/// The pages changed since `since` (`None`: from the start of the WAL's current generation, as
/// for a new base), read from the WAL at `path`, up to the last frame the WAL index counts as
/// committed.
pub fn changes(path: &Path, since: Option<Position>) -> std::io::Result<Changes> {
    let Some(h) = header(path)? else {
        return Ok(match since {
            // No WAL: every frame was checkpointed and the file removed or truncated; frames
            // after the position may have been among them.
            Some(p) => Changes {
                to: Some(p),
                unknown: Some("the WAL was removed or truncated since the last step"),
                ..Changes::default()
            },
            None => Changes::default(),
        });
    };
    let position = |frame| Position {
        salts: h.salts,
        checkpoint_seq: h.checkpoint_seq,
        frame,
    };
    let Some(limit) = committed_frames(path, h.salts) else {
        return Ok(Changes {
            to: since,
            unknown: Some("the WAL index does not say which frames are committed"),
            ..Changes::default()
        });
    };
    let f = std::fs::File::open(path)?;
    let mut pages = BTreeSet::new();
    match since {
        Some(p) if p.salts == h.salts => {
            let (commit, _, _) =
                run_of(&f, h.page_size, h.salts, p.frame, Some(limit), &mut pages)?;
            Ok(Changes {
                pages,
                to: Some(position(commit.unwrap_or(p.frame))),
                unknown: None,
            })
        }
        Some(p) => {
            // The WAL restarted: every frame of the old generation was checkpointed first. Its
            // frames after the position are still there, past the new generation's last frame,
            // unless the new generation already wrote over them or the file was cut.
            let (commit, end, _) = run_of(&f, h.page_size, h.salts, 0, Some(limit), &mut pages)?;
            let to = Some(position(commit.unwrap_or(0)));
            let unknown = |why| {
                Ok(Changes {
                    pages: BTreeSet::new(),
                    to,
                    unknown: Some(why),
                })
            };
            // Each restart adds one to salt-1, whichever connection makes it.
            if h.salts.0 != p.salts.0.wrapping_add(1) {
                return unknown("the WAL restarted more than once since the last step");
            }
            // The last shipped frame must still be the old generation's: then nothing after it
            // was overwritten (a restart writes from frame 1 on).
            let intact = p.frame > end
                && frame_at(&f, h.page_size, p.frame)?.is_some_and(|fr| fr.salts == p.salts);
            if !intact {
                return unknown(
                    "the WAL restarted and its new frames overwrote frames not yet shipped",
                );
            }
            // The old generation's run must end at a frame of another one: a run that ends with
            // the file may have been cut (`journal_size_limit`, a TRUNCATE checkpoint).
            let (_, _, ended) = run_of(&f, h.page_size, p.salts, p.frame, None, &mut pages)?;
            if ended != End::Frame {
                return unknown(
                    "the WAL restarted and was cut: the old frames' end cannot be read",
                );
            }
            Ok(Changes {
                pages,
                to,
                unknown: None,
            })
        }
        None => {
            let (commit, _, _) = run_of(&f, h.page_size, h.salts, 0, Some(limit), &mut pages)?;
            Ok(Changes {
                pages,
                to: Some(position(commit.unwrap_or(0))),
                unknown: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn wal_db(dir: &Path) -> (Connection, std::path::PathBuf) {
        let db = dir.join("app.db");
        let c = Connection::open(&db).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);",
        )
        .unwrap();
        (c, dir.join("app.db-wal"))
    }

    #[test]
    fn new_frames_name_their_pages_and_the_position_moves_to_the_last_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (c, wal) = wal_db(dir.path());
        let first = changes(&wal, None).unwrap();
        assert!(first.unknown.is_none());
        let at = first.to.unwrap();
        assert!(at.frame > 0, "{first:?}");
        // Nothing new: nothing changed, the position stays.
        let none = changes(&wal, Some(at)).unwrap();
        assert!(none.pages.is_empty() && none.to == Some(at), "{none:?}");
        c.execute("INSERT INTO t (v) VALUES (?1)", [&"x".repeat(10_000)])
            .unwrap();
        let next = changes(&wal, Some(at)).unwrap();
        assert!(next.unknown.is_none());
        assert!(next.pages.contains(&2), "the table's root page: {next:?}");
        assert!(next.to.unwrap().frame > at.frame);
    }

    #[test]
    fn a_restart_is_followed_unless_its_frames_overwrote_unshipped_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (c, wal) = wal_db(dir.path());
        // A long first generation, then a shorter one: its frames end at one of the first's.
        for i in 0..60 {
            c.execute(
                "INSERT INTO t (v) VALUES (?1)",
                [format!("{i}").repeat(2000)],
            )
            .unwrap();
        }
        c.query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))
            .unwrap();
        for i in 0..20 {
            c.execute("INSERT INTO t (v) VALUES (?1)", [format!("{i}")])
                .unwrap();
        }
        let at = changes(&wal, None).unwrap().to.unwrap();
        // Unshipped frames, then a complete checkpoint, then a restart by a small write.
        c.execute("INSERT INTO t (v) VALUES ('unshipped')", [])
            .unwrap();
        c.query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))
            .unwrap();
        c.execute("UPDATE t SET v = 'restarted' WHERE id = 1", [])
            .unwrap();
        let h = header(&wal).unwrap().unwrap();
        assert_ne!(h.salts, at.salts, "the WAL restarted");
        let after = changes(&wal, Some(at)).unwrap();
        assert!(after.unknown.is_none(), "{after:?}");
        // The unshipped insert's pages (the old generation's tail) and the update's (the new's).
        assert!(after.pages.len() >= 2, "{after:?}");
        assert_eq!(after.to.unwrap().salts, h.salts);

        // A restart whose old frames run to the end of the file: they may have been cut, and
        // that is said.
        let dir2 = tempfile::tempdir().unwrap();
        let (c2, wal2) = wal_db(dir2.path());
        for i in 0..20 {
            c2.execute("INSERT INTO t (v) VALUES (?1)", [format!("{i}")])
                .unwrap();
        }
        let at2 = changes(&wal2, None).unwrap().to.unwrap();
        c2.execute("INSERT INTO t (v) VALUES ('unshipped')", [])
            .unwrap();
        c2.query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))
            .unwrap();
        c2.execute("UPDATE t SET v = 'restarted' WHERE id = 1", [])
            .unwrap();
        assert!(changes(&wal2, Some(at2)).unwrap().unknown.is_some());

        // Many frames after a restart overwrite what was not shipped: unknown.
        let at = after.to.unwrap();
        c.execute("INSERT INTO t (v) VALUES ('unshipped again')", [])
            .unwrap();
        c.query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))
            .unwrap();
        for i in 0..50 {
            c.execute(
                "INSERT INTO t (v) VALUES (?1)",
                [&format!("{i}").repeat(3000)],
            )
            .unwrap();
        }
        let lost = changes(&wal, Some(at)).unwrap();
        assert!(lost.unknown.is_some(), "{lost:?}");
    }

    #[test]
    fn a_removed_wal_is_unknown_past_a_position_and_empty_for_a_base() {
        let dir = tempfile::tempdir().unwrap();
        let (c, wal) = wal_db(dir.path());
        let at = changes(&wal, None).unwrap().to.unwrap();
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        assert!(header(&wal).unwrap().is_none());
        assert!(changes(&wal, Some(at)).unwrap().unknown.is_some());
        assert_eq!(changes(&wal, None).unwrap(), Changes::default());
    }

    /// Two restarts by two connections (each keeps its own checkpoint count) are two: the
    /// frames of the generation between them are gone, and that is said.
    #[test]
    fn two_restarts_by_two_connections_are_not_taken_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let (a, wal) = wal_db(dir.path());
        a.execute_batch("CREATE TABLE b (id INTEGER PRIMARY KEY, v BLOB)")
            .unwrap();
        let b = Connection::open(dir.path().join("app.db")).unwrap();
        b.execute_batch("PRAGMA wal_autocheckpoint = 0").unwrap();
        b.query_row("SELECT count(*) FROM t", [], |_| Ok(()))
            .unwrap();
        for _ in 0..60 {
            a.execute("INSERT INTO t (v) VALUES (hex(randomblob(1500)))", [])
                .unwrap();
        }
        let at = changes(&wal, None).unwrap().to.unwrap();
        a.query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))
            .unwrap();
        for _ in 0..20 {
            a.execute("INSERT INTO b (v) VALUES (randomblob(3000))", [])
                .unwrap();
        }
        a.query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))
            .unwrap();
        b.execute("UPDATE t SET v = 'x' WHERE id = 1", []).unwrap();
        let after = changes(&wal, Some(at)).unwrap();
        assert!(after.unknown.is_some(), "{after:?}");
    }

    /// A restart whose first commit cuts the WAL (`journal_size_limit`) cuts the old frames not
    /// yet shipped: that is said, never taken for their end.
    #[test]
    fn a_restart_that_cuts_the_wal_is_said() {
        let dir = tempfile::tempdir().unwrap();
        let (c, wal) = wal_db(dir.path());
        c.query_row("PRAGMA journal_size_limit = 200000", [], |_| Ok(()))
            .unwrap();
        for _ in 0..40 {
            c.execute("INSERT INTO t (v) VALUES (hex(randomblob(1500)))", [])
                .unwrap();
        }
        let at = changes(&wal, None).unwrap().to.unwrap();
        for _ in 0..200 {
            c.execute("INSERT INTO t (v) VALUES (hex(randomblob(1500)))", [])
                .unwrap();
        }
        c.query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))
            .unwrap();
        c.execute("UPDATE t SET v = 'x' WHERE id = 1", []).unwrap();
        assert!(
            std::fs::metadata(&wal).unwrap().len() <= 200_000 + 32 + 4120,
            "the WAL was cut"
        );
        let after = changes(&wal, Some(at)).unwrap();
        assert!(after.unknown.is_some(), "{after:?}");
    }
}

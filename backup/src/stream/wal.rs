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

/// The frames after `from` whose salts are `salts`, up to the first that is not: their pages,
/// the last commit frame among them (with the database's size it commits), and the last frame
/// of the run.
fn run_of(
    f: &std::fs::File,
    page_size: u32,
    salts: (u32, u32),
    from: u64,
    pages: &mut BTreeSet<u32>,
) -> std::io::Result<(Option<u64>, u64)> {
    let mut last_commit = None;
    let mut n = from + 1;
    loop {
        match frame_at(f, page_size, n)? {
            Some(fr) if fr.salts == salts && fr.pgno > 0 => {
                pages.insert(fr.pgno);
                if fr.commit > 0 {
                    last_commit = Some(n);
                }
                n += 1;
            }
            _ => return Ok((last_commit, n - 1)),
        }
    }
}

/// The pages changed since `since` (`None`: from the start of the WAL's current generation, as
/// for a new base), read from the WAL at `path`.
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
    let f = std::fs::File::open(path)?;
    let mut pages = BTreeSet::new();
    let position = |frame| Position {
        salts: h.salts,
        checkpoint_seq: h.checkpoint_seq,
        frame,
    };
    match since {
        Some(p) if p.salts == h.salts => {
            let (commit, _) = run_of(&f, h.page_size, h.salts, p.frame, &mut pages)?;
            Ok(Changes {
                pages,
                to: Some(position(commit.unwrap_or(p.frame))),
                unknown: None,
            })
        }
        Some(p) => {
            // The WAL restarted: every frame of the old generation was checkpointed first. Its
            // frames after the position are still there, past the new generation's last frame,
            // unless the new generation already wrote over them.
            let (commit, end) = run_of(&f, h.page_size, h.salts, 0, &mut pages)?;
            let to = Some(position(commit.unwrap_or(0)));
            if h.checkpoint_seq != p.checkpoint_seq.wrapping_add(1) {
                return Ok(Changes {
                    pages,
                    to,
                    unknown: Some("the WAL restarted more than once since the last step"),
                });
            }
            // The last shipped frame must still be the old generation's: then nothing after it
            // was overwritten (a restart writes from frame 1 on) or cut (a TRUNCATE checkpoint).
            let intact = p.frame > end
                && frame_at(&f, h.page_size, p.frame)?.is_some_and(|fr| fr.salts == p.salts);
            if !intact {
                return Ok(Changes {
                    pages,
                    to,
                    unknown: Some(
                        "the WAL restarted and its new frames overwrote, or a checkpoint cut, frames not yet shipped",
                    ),
                });
            }
            run_of(&f, h.page_size, p.salts, p.frame, &mut pages)?;
            Ok(Changes {
                pages,
                to,
                unknown: None,
            })
        }
        None => {
            let (commit, _) = run_of(&f, h.page_size, h.salts, 0, &mut pages)?;
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
        assert!(after.pages.contains(&2), "{after:?}");
        assert_eq!(after.to.unwrap().salts, h.salts);

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
}

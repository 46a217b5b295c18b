//! Page hashes: what proves a restored stream is the state that was shipped.
//!
//! Each page's hash is the first 16 bytes of SHA-256(page number as 4 bytes big-endian ‖ page),
//! read as a big-endian number; a state's hash is the sum of its pages' hashes modulo 2^128.
//! The sum changes by the difference of one page's hashes when that page changes, so the
//! replicator keeps it current from the pages it ships without reading the others, and a
//! restore recomputes it from the file it built (one read, as `integrity_check` makes anyway).
//! The replicator keeps every page's hash in a file of 16 bytes a page ([`Table`]), not in
//! memory: what it holds does not grow with the database.

use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// One page's hash.
pub fn hash(pgno: u32, page: &[u8]) -> u128 {
    let mut h = Sha256::new();
    h.update(pgno.to_be_bytes());
    h.update(page);
    u128::from_be_bytes(h.finalize()[..16].try_into().expect("16 bytes"))
}

/// A state's hash, as text (32 hex digits).
pub fn text(state: u128) -> String {
    format!("{state:032x}")
}

/// The state hash of a whole SQLite file: its pages, read in order.
pub fn of_file(path: &Path, page_size: u32) -> std::io::Result<u128> {
    use std::io::Read;
    let mut f = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut page = vec![0u8; page_size as usize];
    let mut state = 0u128;
    let mut pgno = 0u32;
    loop {
        match f.read_exact(&mut page) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(state),
            Err(e) => return Err(e),
        }
        pgno += 1;
        state = state.wrapping_add(hash(pgno, &page));
    }
}

/// Every page's hash, 16 bytes a page at `(pgno - 1) * 16`, and the state's.
pub struct Table {
    file: std::fs::File,
    /// Pages it holds hashes for (the database's size at the last step).
    pages: u32,
    state: u128,
}

impl Table {
    /// A new, empty table at `path` (an earlier one is replaced: it was this replicator's).
    pub fn create(path: &Path) -> std::io::Result<Table> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Table {
            file,
            pages: 0,
            state: 0,
        })
    }

    /// The table at `path`, for a database of `pages` pages whose state hash is `state`; `None`
    /// when it does not hold that state (a replicator stopped between writing it and recording
    /// the step): the stream then starts a new base.
    pub fn open(path: &Path, pages: u32, state: u128) -> std::io::Result<Option<Table>> {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut t = Table {
            file,
            pages,
            state: 0,
        };
        let mut sum = 0u128;
        for pgno in 1..=pages {
            sum = sum.wrapping_add(t.hash_of(pgno)?);
        }
        t.state = sum;
        Ok((sum == state).then_some(t))
    }

    pub fn state(&self) -> u128 {
        self.state
    }

    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Page `pgno`'s hash as the table holds it (0 past its pages).
    pub fn hash_of(&self, pgno: u32) -> std::io::Result<u128> {
        if pgno == 0 || pgno > self.pages {
            return Ok(0);
        }
        let mut b = [0u8; 16];
        self.file
            .read_exact_at(&mut b, u64::from(pgno - 1) * 16)
            .map(|()| u128::from_be_bytes(b))
    }

    /// Records page `pgno`'s new contents: `true` when they differ from what the table held
    /// (the page must be shipped).
    pub fn set(&mut self, pgno: u32, page: &[u8]) -> std::io::Result<bool> {
        let new = hash(pgno, page);
        if pgno <= self.pages && self.hash_of(pgno)? == new {
            return Ok(false);
        }
        self.put(pgno, new)?;
        Ok(true)
    }

    /// Records `new` as page `pgno`'s hash.
    pub fn put(&mut self, pgno: u32, new: u128) -> std::io::Result<()> {
        let old = self.hash_of(pgno)?;
        self.file
            .write_all_at(&new.to_be_bytes(), u64::from(pgno - 1) * 16)?;
        self.state = self.state.wrapping_sub(old).wrapping_add(new);
        self.pages = self.pages.max(pgno);
        Ok(())
    }

    /// The database now has `pages` pages: those past it are gone from the state.
    pub fn truncate(&mut self, pages: u32) -> std::io::Result<()> {
        for pgno in pages + 1..=self.pages {
            let old = self.hash_of(pgno)?;
            self.state = self.state.wrapping_sub(old);
        }
        if pages < self.pages {
            self.file.set_len(u64::from(pages) * 16)?;
        }
        self.pages = pages;
        Ok(())
    }

    /// Written through to the disk (before the step that relies on it is recorded).
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_state_is_the_files_whatever_order_pages_change_in() {
        let dir = tempfile::tempdir().unwrap();
        let page = |b: u8| vec![b; 512];
        let mut t = Table::create(&dir.path().join("pages")).unwrap();
        for (pgno, b) in [(1, 1u8), (2, 2), (3, 3)] {
            assert!(t.set(pgno, &page(b)).unwrap());
        }
        assert!(!t.set(2, &page(2)).unwrap(), "unchanged: not shipped");
        assert!(t.set(2, &page(9)).unwrap());
        t.truncate(2).unwrap();
        let file = dir.path().join("db");
        std::fs::write(&file, [page(1), page(9)].concat()).unwrap();
        assert_eq!(of_file(&file, 512).unwrap(), t.state());
        let again = Table::open(&dir.path().join("pages"), 2, t.state()).unwrap();
        assert!(again.is_some());
        assert!(Table::open(&dir.path().join("pages"), 2, t.state() ^ 1)
            .unwrap()
            .is_none());
    }
}

//! The replicator: a generation's base, then a step each time the database changed, shipped to
//! every store (the primary must take each step; a mirror that fails is said and skipped).
//!
//! What it keeps on this host (`<state>/`, its own folder): `stream.json` ([`Local`]: the
//! generation, the last step shipped, the WAL position and the state hash it ends at) and
//! `pages` (every page's hash, [`super::pages::Table`]). Both are written after the primary
//! acknowledged the step they describe; a replicator stopped before that writes the step again
//! on its next start, finds it there (a step is written once) and starts a new generation. A
//! local state that does not match the database file (another inode), the store (no such
//! generation) or its own page table starts a new generation too: a stream never forks.
//!
//! One replicator per database: `<db>.dbward-replicate-lock` beside the file is held (`flock`)
//! for as long as it runs.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::capture::{Pinned, Source};
use super::pages::{self, Table};
use super::step::{self, Header};
use super::wal::Position;
use super::Generation;
use crate::crypt::Encryption;
use crate::error::Error;
use crate::store::set::StoreSet;
use crate::store::Store;

/// How the replicator runs.
pub struct Options {
    pub level: i32,
    pub encryption: Option<Arc<Encryption>>,
    /// How long the write lock is waited for behind the application's writer.
    pub busy: Duration,
    /// This database's folder of local state (made private if missing).
    pub state_dir: PathBuf,
    /// A new base once the generation is this old: a restore's base is never older.
    pub base_every: Duration,
    /// `retention.stream_window`: generations whose states all ended before it are removed
    /// when a new one begins (`None`: kept).
    pub stream_window: Option<Duration>,
}

/// What the replicator keeps on this host between steps.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Local {
    pub generation: String,
    /// The last step the primary took (0: only the base).
    pub seq: u64,
    pub position: Option<Position>,
    pub page_size: u32,
    pub page_count: u32,
    pub state: String,
    /// The database file's identity when the generation began.
    pub dev: u64,
    pub ino: u64,
    /// When the generation began (RFC 3339).
    #[serde(default)]
    pub started_at: Option<String>,
    /// When the state after step `seq` was last read (RFC 3339).
    #[serde(default)]
    pub captured_at: Option<String>,
}

/// What one [`Replica::step`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Shipped {
    pub generation: String,
    /// `None` when nothing changed since the last step.
    pub seq: Option<u64>,
    pub pages: u32,
    pub stored_bytes: u64,
    /// Why a new generation began with this step, if it did.
    pub new_generation: Option<String>,
    /// Mirrors that did not take it, with why.
    pub mirrors_failed: Vec<String>,
}

/// What [`Replica::next_step`] came to.
enum Next {
    Shipped(Box<(Shipped, Local)>),
    NewGeneration(&'static str),
}

/// A step that failed: before anything was recorded (the next goes on from the same place),
/// or after the page hashes moved (the next begins a new generation).
enum Failed {
    Before(Error),
    After(Error),
}

pub struct Replica {
    source: Source,
    stores: StoreSet,
    database: String,
    opts: Options,
    local: Option<(Local, Table)>,
    _lease: std::fs::File,
    /// When each mirror's refusal was last said.
    said: std::sync::Mutex<std::collections::HashMap<usize, std::time::Instant>>,
    /// A mirror's spool was dropped: a new generation gives it a whole one again.
    base_wanted: std::sync::atomic::AtomicBool,
    /// Who this replicator is, in the store's lease ([`super::lease`]), and when it last said so.
    holder: super::lease::Holder,
    renewed: Option<std::time::Instant>,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    Error::io(what)
}

impl Replica {
    /// Takes the database's replication lease and opens it; the next [`Replica::step`] goes on
    /// from the local state when it still matches, or starts a new generation.
    pub async fn open(
        path: &Path,
        stores: StoreSet,
        database: &str,
        opts: Options,
    ) -> Result<Replica, Error> {
        let lease = lease(path)?;
        let holder = super::lease::Holder::me(path)?;
        let source = Source::open(path, opts.busy)?;
        crate::scratch::create_private_dir(&opts.state_dir)
            .map_err(io(format!("making {}", opts.state_dir.display())))?;
        let mut r = Replica {
            source,
            stores,
            database: database.to_string(),
            opts,
            local: None,
            _lease: lease,
            said: Default::default(),
            base_wanted: Default::default(),
            holder,
            renewed: None,
        };
        r.local = r.resume().await;
        // Across machines, the lease in the store: the newest generation is not another's
        // (refused while it is held); and the local state goes on only from the newest one (a
        // newer one, begun by another holder meanwhile, is not forked: a new generation begins).
        let mine = r.local.as_ref().map(|(l, _)| l.generation.clone());
        let id = r.identity().await?;
        match super::lease::check(
            r.stores.primary(),
            &r.database,
            id.as_deref(),
            mine.as_deref(),
            &r.holder,
        )
        .await
        {
            Ok(super::lease::Newest::Mine) => {}
            Ok(super::lease::Newest::Other(g)) => {
                if let Some(mine) = mine {
                    tracing::warn!(
                        "generation {g} began after this replicator's {mine} (another replicator held the stream meanwhile): a new generation begins here"
                    );
                    r.local = None;
                }
            }
            Err(e @ Error::Held(_)) => return Err(e),
            // The store does not answer: said; the lease is looked at again at the first
            // renewal, and a newer holder's generation stops this one then.
            Err(e) => tracing::warn!(
                "the stream's lease in the store cannot be read now ({}); replicating, and looking again at the first renewal",
                crate::error::chain(&e)
            ),
        }
        Ok(r)
    }

    /// What a write to the database changes, read with two `stat`s and no lock: the WAL's
    /// size and time, the database file's time and inode. When it is the same as at the last
    /// step, nothing was committed meanwhile (a commit appends to the WAL; a checkpoint writes
    /// the file).
    pub fn fingerprint(&self) -> Option<(u64, std::time::SystemTime, std::time::SystemTime, u64)> {
        let db = std::fs::metadata(self.source.path()).ok()?;
        let mut wal = self.source.path().as_os_str().to_owned();
        wal.push("-wal");
        let (len, at) = match std::fs::metadata(PathBuf::from(wal)) {
            Ok(w) => (w.len(), w.modified().ok()?),
            Err(_) => (0, std::time::UNIX_EPOCH),
        };
        Some((len, at, db.modified().ok()?, db.ino()))
    }

    fn state_file(&self) -> PathBuf {
        self.opts.state_dir.join("stream.json")
    }

    fn table_file(&self) -> PathBuf {
        self.opts.state_dir.join("pages")
    }

    /// The local state, if it still describes this file and the primary's stream.
    async fn resume(&self) -> Option<(Local, Table)> {
        let text = std::fs::read(self.state_file()).ok()?;
        let local: Local = serde_json::from_slice(&text).ok()?;
        let meta = std::fs::metadata(self.source.path()).ok()?;
        if (meta.dev(), meta.ino()) != (local.dev, local.ino) {
            tracing::warn!(
                "the database file was replaced since the last step: a new generation begins"
            );
            return None;
        }
        let key = super::generation_key(&self.database, &local.generation);
        if let Err(e) = self.stores.primary().get_bytes(&key).await {
            tracing::warn!(
                "generation {} is not in the primary store ({}): a new generation begins",
                local.generation,
                crate::error::chain(&e)
            );
            return None;
        }
        let state = u128::from_str_radix(&local.state, 16).ok()?;
        let table = Table::open(&self.table_file(), local.page_count, state).ok()??;
        Some((local, table))
    }

    fn save(&self, local: &Local, table: &Table) -> Result<(), Error> {
        table.sync().map_err(io("writing the page hashes"))?;
        let path = self.state_file();
        let tmp = path.with_extension("json.tmp");
        let mut f =
            std::fs::File::create(&tmp).map_err(io(format!("writing {}", tmp.display())))?;
        f.write_all(&serde_json::to_vec_pretty(local).expect("serializable"))
            .and_then(|()| f.sync_all())
            .map_err(io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io(format!("writing {}", path.display())))
    }

    /// The newest position the primary store holds: the state after the last step it took.
    /// `None` before the first step, and after one that failed past its record (the next step
    /// begins a new generation).
    pub fn position(&self) -> Option<crate::manifest::StreamPoint> {
        let (l, _) = self.local.as_ref()?;
        Some(crate::manifest::StreamPoint {
            generation: l.generation.clone(),
            seq: l.seq,
            state: l.state.clone(),
            captured_at: l.captured_at.clone().or_else(|| l.started_at.clone())?,
        })
    }

    /// This replicator's local folder (where [`super::ask`] requests are made).
    pub fn state_dir(&self) -> &Path {
        &self.opts.state_dir
    }

    /// The database's identity (`dbward_identity`), read now.
    async fn identity(&self) -> Result<Option<String>, Error> {
        let url = dbconn::DatabaseUrl::Sqlite(self.source.path().to_path_buf());
        Ok(match crate::owner::live_identity(&url).await? {
            crate::owner::Live::Present(id) => id,
            crate::owner::Live::Absent => None,
        })
    }

    /// [`Replica::step`], then the lease in the store renewed when it is due: a newer
    /// generation begun by another holder stops this replicator ([`Error::Held`]); a store
    /// that does not answer the renewal is said, and tried again at the next step.
    pub async fn step(&mut self) -> Result<Shipped, Error> {
        let shipped = self.step_only().await?;
        let due = self
            .renewed
            .is_none_or(|t| t.elapsed() >= super::lease::RENEW);
        if due || shipped.new_generation.is_some() {
            // The step is in the store whatever the renewal comes to: only another holder's
            // newer generation makes this an error.
            let id = match self.identity().await {
                Ok(id) => id,
                Err(e) => {
                    tracing::warn!(
                        "renewing the stream's lease: the identity cannot be read now: {}",
                        crate::error::chain(&e)
                    );
                    return Ok(shipped);
                }
            };
            match super::lease::renew(
                self.stores.primary(),
                &self.database,
                id.as_deref(),
                &shipped.generation,
                &self.holder,
            )
            .await
            {
                Ok(()) => self.renewed = Some(std::time::Instant::now()),
                Err(e @ Error::Held(_)) => return Err(e),
                Err(e) => tracing::warn!(
                    "renewing the stream's lease in the store: {}",
                    crate::error::chain(&e)
                ),
            }
        }
        Ok(shipped)
    }

    /// Ships what changed since the last step (a new generation when there is none to go on
    /// from, or which pages changed cannot be told from the WAL... then every page is compared
    /// with its hash, and only those that differ are shipped).
    async fn step_only(&mut self) -> Result<Shipped, Error> {
        self.catch_up().await;
        // The file at the path is the one followed: a restore (or a copy by hand) that put
        // another file there is a new database to the stream, read through new connections.
        let path = self.source.path().to_path_buf();
        let meta = std::fs::metadata(&path).map_err(|e| {
            Error::Source(format!(
                "sqlite:{}: {e} (a restore may be putting it in place; the next step looks again)",
                path.display()
            ))
        })?;
        let Some((local, mut table)) = self.local.take() else {
            return self
                .new_generation("first start, or the last one cannot be continued")
                .await;
        };
        if self
            .base_wanted
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            return self
                .new_generation(
                    "a mirror's spool was dropped: a new base gives it a whole generation",
                )
                .await;
        }
        if (meta.dev(), meta.ino()) != (local.dev, local.ino) {
            self.source = Source::open(&path, self.opts.busy)?;
            return self
                .new_generation("the database file was replaced (a restore, or a copy)")
                .await;
        }
        let started = local.started_at.as_deref().and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        });
        if started.is_some_and(|t| time::OffsetDateTime::now_utc() - t >= self.opts.base_every) {
            return self
                .new_generation(
                    "the base is older than a day: a new one bounds what a restore reads",
                )
                .await;
        }
        match self.next_step(&local, &mut table).await {
            Ok(Next::Shipped(done)) => {
                let (shipped, next) = *done;
                self.local = Some((next, table));
                Ok(shipped)
            }
            Ok(Next::NewGeneration(why)) => self.new_generation(why).await,
            // Nothing was recorded: the next step goes on from the same place.
            Err(Failed::Before(e)) => {
                self.local = Some((local, table));
                Err(e)
            }
            // The page hashes moved past the recorded state: the next step starts anew.
            Err(Failed::After(e)) => Err(e),
        }
    }

    /// The step after `local`. The page table changes only once the primary took the step.
    async fn next_step(&mut self, local: &Local, table: &mut Table) -> Result<Next, Failed> {
        let spool = self.opts.state_dir.join("step.payload");
        let seq = local.seq + 1;
        // The pages that differ from their hashes, recorded into the payload file.
        let (changed, to, page_size, page_count, captured_at) = {
            let pinned = self.source.pin(local.position).map_err(Failed::Before)?;
            if pinned.page_size != local.page_size {
                return Ok(Next::NewGeneration(
                    "the page size changed (VACUUM with a new page_size)",
                ));
            }
            let changed = differing(&pinned, local, table, &spool).map_err(Failed::Before)?;
            (
                changed,
                pinned.changes.to,
                pinned.page_size,
                pinned.page_count,
                crate::manifest::now_rfc3339(pinned.at),
            )
        };
        if changed.is_empty() && page_count == local.page_count {
            // The same state, seen again now.
            let next = Local {
                position: to,
                captured_at: Some(captured_at),
                ..local.clone()
            };
            self.save(&next, table).map_err(Failed::Before)?;
            return Ok(Next::Shipped(Box::new((
                Shipped {
                    generation: local.generation.clone(),
                    seq: None,
                    pages: 0,
                    stored_bytes: 0,
                    new_generation: None,
                    mirrors_failed: Vec::new(),
                },
                next,
            ))));
        }
        let state = state_after(table, &changed, page_count).map_err(Failed::Before)?;
        let mut header = Header {
            dbward_step: 1,
            generation: local.generation.clone(),
            seq,
            first: None,
            captured_at,
            page_size,
            page_count,
            pages: changed.len() as u32,
            payload_bytes: 0,
            payload_sha256: String::new(),
            state: pages::text(state),
        };
        let object = self.opts.state_dir.join("step.object");
        self.encode_to(&mut header, &spool, &object)
            .map_err(Failed::Before)?;
        let encrypted = self.opts.encryption.is_some();
        let key = super::step_key(&self.database, &local.generation, seq, encrypted);
        let (stored_bytes, mirrors_failed) = match self.ship(&key, &object).await {
            Ok(shipped) => shipped,
            // A replicator stopped right after storing this step, before recording it (or
            // another wrote it): this stream cannot go on without forking.
            Err(Error::Exists(_)) => {
                return Ok(Next::NewGeneration(
                    "the next step was already in the store (a replicator stopped right after storing it)",
                ))
            }
            Err(e) => return Err(Failed::Before(e)),
        };
        // The primary has it: the table and the record follow.
        let recorded = (|| {
            for (pgno, new) in &changed {
                table
                    .put(*pgno, *new)
                    .map_err(io("writing the page hashes"))?;
            }
            table
                .truncate(page_count)
                .map_err(io("writing the page hashes"))?;
            debug_assert_eq!(table.state(), state);
            let next = Local {
                seq,
                position: to,
                page_count,
                state: pages::text(state),
                captured_at: Some(header.captured_at.clone()),
                ..local.clone()
            };
            self.save(&next, table)?;
            Ok::<_, Error>(next)
        })();
        let next = recorded.map_err(Failed::After)?;
        // Kept for the compacted steps that will hold it; they are a restore's shortcut, so
        // one that cannot be made is said, and the steps stay.
        if let Err(e) = self.compact(&spool, &header).await {
            tracing::warn!(
                "compacting the steps up to {seq}: {} (a restore reads the steps themselves)",
                crate::error::chain(&e)
            );
        }
        Ok(Next::Shipped(Box::new((
            Shipped {
                generation: local.generation.clone(),
                seq: Some(seq),
                pages: header.pages,
                stored_bytes,
                new_generation: None,
                mirrors_failed,
            },
            next,
        ))))
    }

    /// The local folder of a generation's level-`level` payloads, kept until the level above
    /// merges them (`<state>/levels/<generation>/<level>`, all of it this replicator's).
    fn level_dir(&self, generation: &str, level: u32) -> PathBuf {
        self.opts
            .state_dir
            .join("levels")
            .join(generation)
            .join(level.to_string())
    }

    /// Keeps step `last`'s payload (`spool`), then ships each compacted step that ends with it:
    /// at every [`super::span`]`(level)`-th step, the payloads of the level below merged.
    async fn compact(&self, spool: &Path, last: &Header) -> Result<(), Error> {
        let dir = |level: u32| self.level_dir(&last.generation, level);
        let keep = |level: u32, seq: u64| dir(level).join(format!("{seq:016x}"));
        std::fs::create_dir_all(dir(0))
            .and_then(|()| std::fs::File::open(spool)?.sync_all())
            .and_then(|()| std::fs::rename(spool, keep(0, last.seq)))
            .map_err(io("keeping the step's payload"))?;
        for level in 1..=super::LEVELS.len() as u32 {
            let (span, below) = (super::span(level), super::span(level - 1));
            if !last.seq.is_multiple_of(span) {
                break;
            }
            let first = last.seq - span + 1;
            let parts: Vec<PathBuf> = (1..=span / below)
                .map(|k| keep(level - 1, first - 1 + k * below))
                .collect();
            let missing = parts.iter().any(|p| !p.exists());
            if missing {
                // A replicator restarted meanwhile: that span goes without its shortcut.
                for p in &parts {
                    let _ = std::fs::remove_file(p);
                }
                tracing::debug!(
                    "steps {first}..={} are not all kept here: not compacted",
                    last.seq
                );
                break;
            }
            std::fs::create_dir_all(dir(level)).map_err(io("making the compaction folder"))?;
            let merged = keep(level, last.seq);
            let pages = step::merge(
                &parts,
                last.page_size,
                last.page_count,
                &self.opts.state_dir.join("merge.pages"),
                &merged,
            )?;
            let mut header = Header {
                first: Some(first),
                pages,
                payload_bytes: 0,
                payload_sha256: String::new(),
                ..last.clone()
            };
            let object = self.opts.state_dir.join("compacted.object");
            self.encode_to(&mut header, &merged, &object)?;
            let key = super::compacted_key(
                &self.database,
                &last.generation,
                level,
                first,
                last.seq,
                self.opts.encryption.is_some(),
            );
            self.ship(&key, &object).await?;
            let _ = std::fs::remove_file(&object);
            for p in &parts {
                let _ = std::fs::remove_file(p);
            }
            if level as usize == super::LEVELS.len() {
                let _ = std::fs::remove_file(&merged);
            }
        }
        Ok(())
    }

    /// The step's object: `header` and the payload at `spool`, encoded into `object`.
    fn encode_to(&self, header: &mut Header, spool: &Path, object: &Path) -> Result<(), Error> {
        let mut out =
            std::fs::File::create(object).map_err(io(format!("writing {}", object.display())))?;
        step::encode(
            header,
            spool,
            self.opts.level,
            self.opts.encryption.as_deref(),
            &mut out,
        )
    }

    /// Stores the object at `path` under `key` in every store: the primary must take it. A
    /// mirror that does not (or still has objects waiting) gets it later, in order, from its
    /// spool ([`Replica::catch_up`]). Its size, and what the mirrors said.
    async fn ship(&self, key: &str, path: &Path) -> Result<(u64, Vec<String>), Error> {
        let bytes = put_file(self.stores.primary(), key, path).await?;
        let mut failed = Vec::new();
        for (n, store) in self.stores.mirrors() {
            let sent = if self.waiting(n) {
                Err(None)
            } else {
                put_file(store, key, path).await.map_err(Some)
            };
            if let Err(e) = sent {
                let said = match e {
                    Some(e) => format!("mirror {n}: {}", crate::error::chain(&e)),
                    None => format!("mirror {n}: behind, objects before this one wait for it"),
                };
                tracing::debug!("{said}; kept to send again");
                failed.push(said);
                self.queue(n, key, path)?;
            }
        }
        Ok((bytes, failed))
    }

    /// Mirror `n`'s spool: the objects it has not taken yet, in order (`<seq>` and `<seq>.key`).
    fn spool(&self, n: usize) -> PathBuf {
        self.opts.state_dir.join("mirrors").join(n.to_string())
    }

    /// Objects waiting in the mirrors' spools, all mirrors.
    pub fn mirrors_waiting(&self) -> u64 {
        self.stores
            .mirrors()
            .map(|(n, _)| {
                std::fs::read_dir(self.spool(n)).map_or(0, |d| {
                    d.flatten()
                        .filter(|e| {
                            e.file_name()
                                .to_str()
                                .is_some_and(|n| n.parse::<u64>().is_ok())
                        })
                        .count() as u64
                })
            })
            .sum()
    }

    /// `store.require = all`: a state counts once every store holds it.
    pub fn require_all(&self) -> bool {
        self.stores.require_all()
    }

    fn waiting(&self, n: usize) -> bool {
        std::fs::read_dir(self.spool(n)).is_ok_and(|mut d| d.next().is_some())
    }

    /// Keeps a copy of the object at `path` for mirror `n`. A spool past [`SPOOL_MAX`] is
    /// emptied instead, and said: the mirror's stream then has a gap until the next generation.
    fn queue(&self, n: usize, key: &str, path: &Path) -> Result<(), Error> {
        let dir = self.spool(n);
        std::fs::create_dir_all(&dir).map_err(io(format!("making {}", dir.display())))?;
        let held: u64 = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        if held > SPOOL_MAX {
            tracing::error!(
                "mirror {n} has not taken the stream's objects for a while: its spool ({held} bytes) is dropped, and its copy of the stream has a gap until the next generation begins"
            );
            std::fs::remove_dir_all(&dir).map_err(io(format!("emptying {}", dir.display())))?;
            self.base_wanted
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        }
        // The next number after those waiting: the order objects were made in, whatever the
        // clock does.
        let next = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
                    .max()
                    .map_or(0, |m| m + 1)
            })
            .unwrap_or(0);
        let at = dir.join(format!("{next:020}"));
        std::fs::copy(path, &at)
            .and_then(|_| std::fs::write(at.with_extension("key"), key))
            .map_err(io(format!("keeping {key} for mirror {n}")))?;
        Ok(())
    }

    /// Sends each mirror's spool, oldest first, until one is refused (tried again next time).
    async fn catch_up(&self) {
        for (n, store) in self.stores.mirrors() {
            let Ok(entries) = std::fs::read_dir(self.spool(n)) else {
                continue;
            };
            let mut objects: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_none())
                .collect();
            objects.sort();
            let mut sent = 0;
            for object in objects {
                let key_file = object.with_extension("key");
                let Ok(key) = std::fs::read_to_string(&key_file) else {
                    let _ = std::fs::remove_file(&object);
                    continue;
                };
                match put_file(store, &key, &object).await {
                    // Taken, or taken before (a catch-up cut short after the write).
                    Ok(_) | Err(Error::Exists(_)) => {
                        let _ = std::fs::remove_file(&object);
                        let _ = std::fs::remove_file(&key_file);
                        sent += 1;
                    }
                    Err(e) => {
                        // Said once a minute, not at every step.
                        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
                        if said
                            .get(&n)
                            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                        {
                            tracing::warn!(
                                "mirror {n} does not take the stream's objects ({}); they wait in {} and are sent again at each step",
                                crate::error::chain(&e),
                                self.spool(n).display()
                            );
                            said.insert(n, std::time::Instant::now());
                        }
                        break;
                    }
                }
            }
            if sent > 0 {
                tracing::info!("mirror {n} caught up {sent} object(s) of the stream");
            }
        }
    }

    /// A new generation: every page of one pinned state as the base, then its record.
    async fn new_generation(&mut self, reason: &str) -> Result<Shipped, Error> {
        let generation = super::new_generation_id();
        tracing::info!(
            "stream of sqlite:{}: generation {generation} begins ({reason})",
            self.source.path().display()
        );
        // The store folder is this database's (by its identity, as for snapshots): a stream of
        // another database of the same name never mixes with its.
        let url = dbconn::DatabaseUrl::Sqlite(self.source.path().to_path_buf());
        let database_id = match crate::owner::live_identity(&url).await? {
            crate::owner::Live::Present(id) => id,
            crate::owner::Live::Absent => None,
        };
        match &database_id {
            Some(id) => {
                crate::owner::claim(
                    self.stores.primary(),
                    &self.database,
                    id,
                    "sqlite",
                    &crate::hostname(),
                )
                .await?
            }
            None => crate::owner::check_unidentified(self.stores.primary(), &self.database).await?,
        }
        // What an earlier generation kept for its compactions is of no use to this one.
        let _ = std::fs::remove_dir_all(self.opts.state_dir.join("levels"));
        let raw = self.opts.state_dir.join("base.raw");
        let mut table = Table::create(&self.table_file()).map_err(io("writing the page hashes"))?;
        let (to, page_size, page_count, started_at) = {
            let pinned = self.source.pin(None)?;
            let mut out = std::io::BufWriter::new(
                std::fs::File::create(&raw).map_err(io(format!("writing {}", raw.display())))?,
            );
            pinned.each_page(|pgno, page| {
                table
                    .set(pgno, page)
                    .map_err(io("writing the page hashes"))?;
                out.write_all(page)
                    .map_err(io(format!("writing {}", raw.display())))
            })?;
            out.flush()
                .map_err(io(format!("writing {}", raw.display())))?;
            (
                pinned.changes.to,
                pinned.page_size,
                pinned.page_count,
                crate::manifest::now_rfc3339(pinned.at),
            )
        };
        let object = self.opts.state_dir.join("base.object");
        compress_file(
            &raw,
            &object,
            self.opts.level,
            self.opts.encryption.as_deref(),
        )?;
        let _ = std::fs::remove_file(&raw);
        let encrypted = self.opts.encryption.is_some();
        let base_key = super::base_key(&self.database, &generation, encrypted);
        let (stored, mut mirrors_failed) = self.ship(&base_key, &object).await?;
        let sha = sha256_of(&object)?;
        let _ = std::fs::remove_file(&object);
        let record = Generation {
            dbward_stream: 1,
            generation: generation.clone(),
            database_id,
            started_at,
            reason: reason.to_string(),
            page_size,
            page_count,
            state: pages::text(table.state()),
            base_key,
            base_stored_bytes: stored,
            base_sha256: sha,
        };
        let record_file = self.opts.state_dir.join("generation.json");
        std::fs::write(
            &record_file,
            serde_json::to_vec_pretty(&record).expect("serializable"),
        )
        .map_err(io(format!("writing {}", record_file.display())))?;
        // Who writes it, before its record makes it a generation: a replicator killed right
        // after the record is still this one to the store's lease when it restarts.
        super::lease::hold(
            self.stores.primary(),
            &self.database,
            &generation,
            &self.holder,
        )
        .await?;
        let key = super::generation_key(&self.database, &generation);
        // After the base: in a mirror's spool too, behind it.
        let (_, failed) = self.ship(&key, &record_file).await?;
        mirrors_failed.extend(failed);
        let meta = std::fs::metadata(self.source.path())
            .map_err(io(format!("reading {}", self.source.path().display())))?;
        if let Some(window) = self.opts.stream_window {
            let id = record.database_id.as_deref();
            let (_, mirrors) = self
                .stores
                .each(|store| super::prune::prune(store, &self.database, id, window, false))
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!("stream retention: {}", crate::error::chain(&e));
                    (Vec::new(), Vec::new())
                });
            for m in mirrors {
                if let Err(e) = m.result {
                    tracing::warn!(
                        "stream retention in mirror {}: {}",
                        m.mirror,
                        crate::error::chain(&e)
                    );
                }
            }
        }
        let local = Local {
            generation: generation.clone(),
            seq: 0,
            position: to,
            page_size,
            page_count,
            state: pages::text(table.state()),
            dev: meta.dev(),
            ino: meta.ino(),
            started_at: Some(record.started_at.clone()),
            captured_at: Some(record.started_at.clone()),
        };
        self.save(&local, &table)?;
        self.local = Some((local, table));
        Ok(Shipped {
            generation,
            seq: None,
            pages: page_count,
            stored_bytes: stored,
            new_generation: Some(reason.to_string()),
            mirrors_failed,
        })
    }
}

/// The pages of `pinned` that differ from `table`, written as a payload to `spool`: each with
/// its new hash. Pages the WAL names (and every page past the last step's size), or every page
/// when the WAL cannot tell.
fn differing(
    pinned: &Pinned<'_>,
    local: &Local,
    table: &Table,
    spool: &Path,
) -> Result<Vec<(u32, u128)>, Error> {
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(spool).map_err(io(format!("writing {}", spool.display())))?,
    );
    let mut changed = Vec::new();
    let mut consider = |pgno: u32, page: &[u8]| -> Result<(), Error> {
        let new = pages::hash(pgno, page);
        if pgno > local.page_count
            || table.hash_of(pgno).map_err(io("reading the page hashes"))? != new
        {
            step::record(&mut out, pgno, page)
                .map_err(io(format!("writing {}", spool.display())))?;
            changed.push((pgno, new));
        }
        Ok(())
    };
    // Without a position (the WAL was empty or gone when the last step was read), the WAL
    // seen now may not be the first since: which pages changed is unknown.
    let unknown = pinned.changes.unknown.or(local
        .position
        .is_none()
        .then_some("the WAL was empty at the last step"));
    if let Some(why) = unknown {
        tracing::debug!("{why}: comparing every page with its hash");
        pinned.each_page(&mut consider)?;
    } else {
        let mut wanted: std::collections::BTreeSet<u32> = pinned
            .changes
            .pages
            .iter()
            .copied()
            .filter(|p| *p <= pinned.page_count)
            .collect();
        wanted.extend(local.page_count + 1..=pinned.page_count);
        for pgno in wanted {
            let page = pinned.page(pgno)?;
            consider(pgno, &page)?;
        }
    }
    out.flush()
        .map_err(io(format!("writing {}", spool.display())))?;
    Ok(changed)
}

/// `raw` compressed (and encrypted) into `object`.
fn compress_file(
    raw: &Path,
    object: &Path,
    level: i32,
    encryption: Option<&Encryption>,
) -> Result<(), Error> {
    let err = io(format!("compressing {}", raw.display()));
    let run = || -> std::io::Result<()> {
        let mut input = std::fs::File::open(raw)?;
        let out = std::fs::File::create(object)?;
        match encryption {
            None => {
                let mut enc = zstd::stream::write::Encoder::new(out, level)?;
                enc.include_checksum(true)?;
                std::io::copy(&mut input, &mut enc)?;
                enc.finish()?.sync_all()
            }
            Some(e) => {
                let w = e
                    .encryptor()
                    .map_err(|e| std::io::Error::other(e.to_string()))?
                    .wrap_output(out)?;
                let mut enc = zstd::stream::write::Encoder::new(w, level)?;
                enc.include_checksum(true)?;
                std::io::copy(&mut input, &mut enc)?;
                enc.finish()?.finish()?.sync_all()
            }
        }
    };
    run().map_err(err)
}

fn sha256_of(path: &Path) -> Result<String, Error> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).map_err(io(format!("reading {}", path.display())))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io(format!("reading {}", path.display())))?;
    Ok(crate::pipeline::hex(&h.finalize()))
}

/// The most a mirror's spool holds before it is dropped (and said).
const SPOOL_MAX: u64 = 1 << 30;

/// Objects up to this size are written in one request that never overwrites.
const SMALL: u64 = 16 << 20;

/// The file at `path` stored under `key`, written once; its size.
async fn put_file(store: &Store, key: &str, path: &Path) -> Result<u64, Error> {
    let size = std::fs::metadata(path)
        .map_err(io(format!("reading {}", path.display())))?
        .len();
    if size <= SMALL {
        let bytes = std::fs::read(path).map_err(io(format!("reading {}", path.display())))?;
        store.put_new(key, &bytes).await?;
        return Ok(size);
    }
    let chunk = store.chunk_size(size);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let path = path.to_path_buf();
    let feed = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Read;
        let mut f = std::fs::File::open(&path)?;
        loop {
            let mut buf = vec![0u8; chunk];
            let mut n = 0;
            while n < chunk {
                let got = f.read(&mut buf[n..])?;
                if got == 0 {
                    break;
                }
                n += got;
            }
            if n == 0 {
                break;
            }
            buf.truncate(n);
            if tx.blocking_send(crate::pipeline::Msg::Data(buf)).is_err() {
                return Ok(());
            }
        }
        let _ = tx.blocking_send(crate::pipeline::Msg::Done);
        Ok(())
    });
    let stored = store.put_stream(key, rx).await?;
    feed.await
        .map_err(|e| Error::Source(format!("reading {key} to store it: {e}")))?
        .map_err(io(format!("reading {key} to store it")))?;
    Ok(stored)
}

/// The replication lease on `db` (`dbconn::sqlite::take_lease`): another replicator of the same
/// file is refused.
fn lease(db: &Path) -> Result<std::fs::File, Error> {
    let path = dbconn::sqlite::lease_path(db);
    dbconn::sqlite::take_lease(db)
        .map_err(io(format!("locking {}", path.display())))?
        .ok_or_else(|| {
            Error::Held(format!(
                "sqlite:{} is already replicated by another process (it holds {}): one replicator per database",
                db.display(),
                path.display()
            ))
        })
}

/// The state's hash once `changed` pages have their new hashes and the pages past
/// `page_count` are gone; the table itself is not changed.
fn state_after(table: &Table, changed: &[(u32, u128)], page_count: u32) -> Result<u128, Error> {
    let hash_of = |pgno| table.hash_of(pgno).map_err(io("reading the page hashes"));
    let mut state = table.state();
    for (pgno, new) in changed {
        state = state.wrapping_sub(hash_of(*pgno)?).wrapping_add(*new);
    }
    for pgno in page_count + 1..=table.pages() {
        state = state.wrapping_sub(hash_of(pgno)?);
    }
    Ok(state)
}

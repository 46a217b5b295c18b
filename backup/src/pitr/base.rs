//! A PostgreSQL cluster's base backup: the real `pg_basebackup --format=tar --wal-method=none
//! --pgdata=-`, its one tar streamed from stdout and never spooled. The facts the manifest needs
//! are read from that same stream as it passes: `backup_label` (where the backup's WAL starts,
//! on which timeline) and the end of `backup_manifest` (where it stops). The WAL itself is the
//! archive's (`dbward wal-push`): a base names the segments it needs, and the snapshot checks
//! that the archive holds them before its manifest is written.

use std::io::Read;
use std::sync::{Arc, Mutex};

use dbconn::postgres::{applied_on, describe, Postgres};
use dbconn::PgUrl;

use crate::engine::postgres::{libpq_command, major, tool_version};
use crate::engine::{head, Keep, Prepared};
use crate::error::Error;
use crate::manifest::{Format, Physical};

/// What a base backup knows before its stream and learns from it.
pub struct Base {
    system_identifier: String,
    segment_bytes: u64,
    pg_basebackup_version: String,
    seen: Arc<Mutex<TarWatch>>,
}

/// Checks the server and the archive, then starts `pg_basebackup`. The archive (`store`'s, for
/// `database`) must exist before the base: its WAL goes there, and the first push (as the
/// server's user) makes the folder a base would otherwise make first.
pub async fn prepare(
    url: &PgUrl,
    label: &str,
    store: &crate::store::Store,
    database: &str,
) -> Result<(Prepared, Base), Error> {
    let version = tool_version("pg_basebackup")?;
    let db = Postgres::connect(url).await?;
    let c = db.client();
    let checked = check(c, url, &version, store, database).await?;
    let applied = applied_on(c).await?;
    let database_id = dbconn::identity::read_pg(c).await?;
    let Checked {
        server_version,
        sysid,
        seg,
        size,
        failed_before,
    } = checked;

    let mut cmd = libpq_command("pg_basebackup", url, None);
    cmd.args([
        "--pgdata=-",
        "--format=tar",
        "--wal-method=none",
        "--checkpoint=fast",
        "--no-password",
    ])
    .arg(format!("--label={label}"))
    .env("LC_MESSAGES", "C");
    let (mut child, stdout, stderr_thread) =
        crate::engine::postgres::spawn_streaming(cmd, "pg_basebackup")?;
    let seen = Arc::new(Mutex::new(TarWatch::default()));
    let watched = seen.clone();
    let display = url.display.clone();
    let archiver = Arc::new(Mutex::new(Archiver::default()));
    let (stop_watch, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(watch_archiver(
        db,
        failed_before,
        child.id() as i32,
        archiver.clone(),
        stopped,
    ));
    let finish = move || {
        // The child is reaped below: from here on the watch may not signal its pid.
        archiver.lock().expect("not poisoned").reaped = true;
        drop(stop_watch);
        let status = child
            .wait()
            .map_err(|e| Error::Source(format!("waiting for pg_basebackup: {e}")))?;
        let err = stderr_thread.join().unwrap_or_default();
        if let Some(problem) = archiver.lock().expect("not poisoned").problem.take() {
            return Err(Error::Source(problem));
        }
        if !status.success() {
            return Err(Error::Source(format!(
                "pg_basebackup of {display} failed ({status}): {}",
                err.trim()
            )));
        }
        watched.lock().expect("not poisoned").complete()
    };
    let prepared = Prepared {
        format: Format::Pgbase,
        engine: "postgres",
        server_version,
        pg_dump_version: None,
        head: head(applied),
        database_id,
        row_counts: Default::default(),
        size_hint: size.unwrap_or(0).max(0) as u64,
        workers: 2,
        reader: Box::new(Watched {
            inner: stdout,
            seen: seen.clone(),
        }),
        finish: Box::new(finish),
        keep: Keep::Nothing,
    };
    Ok((
        prepared,
        Base {
            system_identifier: sysid,
            segment_bytes: seg.max(0) as u64,
            pg_basebackup_version: version,
            seen,
        },
    ))
}

/// The server, as a base needs it: facts for the manifest, and every refusal before anything
/// is written.
struct Checked {
    server_version: String,
    sysid: String,
    seg: i64,
    size: Option<i64>,
    /// The archiver's failures so far: the watch during the backup counts new ones.
    failed_before: i64,
}

/// PostgreSQL 14 or newer, a `pg_basebackup` as new as the server, no tablespace beyond
/// pg_default, archiving on and set, the cluster's WAL archive in this store, and an archiver
/// that is not failing.
async fn check(
    c: &tokio_postgres::Client,
    url: &PgUrl,
    version: &str,
    store: &crate::store::Store,
    database: &str,
) -> Result<Checked, Error> {
    let q = |e: tokio_postgres::Error| Error::Source(describe(&e));
    let row = c
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int, \
                    (SELECT system_identifier::text FROM pg_control_system()), \
                    (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), \
                    current_setting('archive_mode') || ' ' || (current_setting('archive_command') <> '' OR coalesce(current_setting('archive_library', true), '') <> '')::text, \
                    (SELECT sum(pg_database_size(oid))::bigint FROM pg_database), \
                    (SELECT string_agg(spcname, ', ') FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global'))",
            &[],
        )
        .await
        .map_err(q)?;
    let (server_version, server_num, sysid, seg, archive_mode, size, tablespaces): (
        String,
        i32,
        String,
        i64,
        String,
        Option<i64>,
        Option<String>,
    ) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
        row.get(6),
    );
    let server_major = (server_num / 10000) as u32;
    if server_major < 14 {
        return Err(Error::Refused(format!(
            "point-in-time recovery through dbward needs PostgreSQL 14 or newer; this server is {server_version} (PostgreSQL 13 promotes short of a recovery target it never reached, where 14 stops). Use logical snapshots (`dbward backup` without --physical)."
        )));
    }
    if major(version) < server_major.max(13) {
        return Err(Error::Refused(format!(
            "pg_basebackup {version} cannot take a base backup of this server ({server_version}): it needs pg_basebackup {} or newer (with backup manifests). \
             Install those client tools and put their pg_basebackup first on PATH.",
            server_major.max(13)
        )));
    }
    if let Some(names) = tablespaces {
        return Err(Error::Refused(format!(
            "this cluster has tablespaces besides pg_default ({names}); a physical base is one tar of the data directory and cannot hold them. \
             Use logical snapshots (`dbward backup` without --physical) for this cluster."
        )));
    }
    let (archive_mode, archiver_set) = archive_mode
        .split_once(' ')
        .map(|(m, set)| (m.to_string(), set == "true"))
        .unwrap_or((archive_mode, false));
    if archive_mode != "off" && !archiver_set {
        return Err(Error::Refused(format!(
            "archive_mode is {archive_mode} on {} but archive_command is empty: nothing is archived, and a base would wait for its WAL without end. Set archive_command = 'dbward -q wal-push %p' and reload the server.",
            url.display
        )));
    }
    if archive_mode == "off" {
        return Err(Error::Refused(format!(
            "archive_mode is off on {}: a base backup is useless without the WAL after it. \
             Set archive_mode = on and archive_command = 'dbward -q wal-push %p' (see the README's \"Point-in-time recovery\"), restart the server, and try again.",
            url.display
        )));
    }
    crate::pitr::wal::read_cluster(store, database)
        .await
        .map_err(|e| match e {
            Error::Refused(why) => Error::Refused(format!(
                "{why}. A base needs the cluster's WAL archive in this store first: set archive_command = 'dbward -q wal-push %p' with this store, and wait for a first segment to be archived (or run SELECT pg_switch_wal()). Nothing was written."
            )),
            e => e,
        })?;
    let archiver = c
        .query_one(
            "SELECT failed_count, \
                    coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false), \
                    coalesce(last_failed_wal, ''), coalesce(last_failed_time::text, '') \
             FROM pg_stat_archiver",
            &[],
        )
        .await
        .map_err(q)?;
    let failed_before: i64 = archiver.get(0);
    // Archiving that fails now (a store directory the archiver's user cannot write, say) would
    // leave the base without its WAL: refused before anything is written.
    if archiver.get::<_, bool>(1) {
        return Err(Error::Refused(format!(
            "the server's WAL archiving is failing (its last failure, on {}, at {}, came after its last success; pg_stat_archiver and the server log say why): a base is useless without its WAL. A `file://` store written by two users (this command's and PostgreSQL's) needs store.group. Nothing was written.",
            archiver.get::<_, String>(2),
            archiver.get::<_, String>(3)
        )));
    }
    Ok(Checked {
        server_version,
        sysid,
        seg,
        size,
        failed_before,
    })
}

/// What the archiver watch found, and whether the child may still be signalled.
#[derive(Default)]
struct Archiver {
    problem: Option<String>,
    reaped: bool,
}

/// `pg_basebackup --wal-method=none` waits, without end, until the server archived the
/// base's last segment. While it runs, the server's archiver is watched: once it failed three
/// more times than before the base started (it tries each file three times, then waits a
/// minute), and failed after it last succeeded, the base is abandoned with the reason.
async fn watch_archiver(
    db: Postgres,
    failed_before: i64,
    pid: i32,
    state: Arc<Mutex<Archiver>>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        let row = db
            .client()
            .query_one(
                "SELECT failed_count, coalesce(last_failed_wal, ''), \
                        coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) \
                 FROM pg_stat_archiver",
                &[],
            )
            .await;
        let Ok(row) = row else { return };
        let (failed, wal, failing): (i64, String, bool) = (row.get(0), row.get(1), row.get(2));
        if failing && failed - failed_before >= 3 {
            let mut s = state.lock().expect("not poisoned");
            if s.reaped {
                return;
            }
            s.problem = Some(format!(
                "the server's WAL archiving is failing (pg_stat_archiver: {} failures since the base started, the last on {wal}); a base is useless without its WAL, and pg_basebackup would wait for it without end, so the base was abandoned. The server's log has archive_command's error",
                failed - failed_before
            ));
            // SAFETY: kill(2) on our own child, not yet reaped (checked under the lock).
            unsafe { libc::kill(pid, libc::SIGTERM) };
            return;
        }
    }
}

impl Base {
    /// The base's facts, once its stream ended and `pg_basebackup` exited 0.
    pub fn physical(&self) -> Result<Physical, Error> {
        let seen = self.seen.lock().expect("not poisoned");
        let label = parse_label(&seen.label)?;
        let stop = parse_stop(&seen.manifest_tail)?;
        if stop.timeline != label.timeline {
            return Err(Error::Source(format!(
                "the base backup's WAL starts on timeline {} and ends on {}: a base taken across a timeline switch is not supported",
                label.timeline, stop.timeline
            )));
        }
        let seg = self.segment_bytes;
        if !seg.is_power_of_two() || seg < 1 << 20 {
            return Err(Error::Source(format!(
                "the server reports a WAL segment size of {seg} bytes"
            )));
        }
        Ok(Physical {
            system_identifier: self.system_identifier.clone(),
            timeline: label.timeline,
            start_lsn: lsn_text(label.start),
            stop_lsn: lsn_text(stop.lsn),
            wal_first: segment_name(label.timeline, label.start, seg),
            // The segment that holds the backup's last record (PostgreSQL waits for the same).
            wal_last: segment_name(label.timeline, stop.lsn.saturating_sub(1), seg),
            segment_bytes: seg,
            pg_basebackup_version: self.pg_basebackup_version.clone(),
        })
    }
}

/// The WAL segments from `first` to `last` (inclusive), on their timeline.
pub fn segments(p: &Physical) -> Result<Vec<String>, Error> {
    let parse = |name: &str| segment_number(name, p.segment_bytes);
    let (Some(first), Some(last)) = (parse(&p.wal_first), parse(&p.wal_last)) else {
        return Err(Error::Damaged(format!(
            "the base's WAL range {}..{} is not two segment names",
            p.wal_first, p.wal_last
        )));
    };
    if last < first || last - first > 1 << 20 {
        return Err(Error::Damaged(format!(
            "the base's WAL range {}..{} is not a range",
            p.wal_first, p.wal_last
        )));
    }
    Ok((first..=last)
        .map(|n| segment_from_number(p.timeline, n, p.segment_bytes))
        .collect())
}

/// A segment name's place in the WAL (its number, whatever its timeline); `None` for a name
/// that is not 24 hex digits.
pub fn segment_number(name: &str, seg: u64) -> Option<u64> {
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    let per_id = 0x1_0000_0000 / seg;
    Some(hex(name.get(8..16)?)? * per_id + hex(name.get(16..24)?)?)
}

pub fn segment_from_number(timeline: u32, segno: u64, seg: u64) -> String {
    let per_id = 0x1_0000_0000 / seg;
    format!("{timeline:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

/// The name of the segment holding `lsn` (PostgreSQL's `XLogFileName`).
pub fn segment_name(timeline: u32, lsn: u64, seg: u64) -> String {
    segment_from_number(timeline, lsn / seg, seg)
}

/// `0/4000028`, as PostgreSQL writes an LSN.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let half = |h: &str| {
        (!h.is_empty() && h.len() <= 8)
            .then(|| u32::from_str_radix(h, 16).ok())
            .flatten()
    };
    Some((u64::from(half(hi)?) << 32) | u64::from(half(lo)?))
}

struct Label {
    start: u64,
    timeline: u32,
}

fn parse_label(raw: &[u8]) -> Result<Label, Error> {
    let text = std::str::from_utf8(raw).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
    };
    let start = field("START WAL LOCATION").and_then(|v| parse_lsn(v.split_whitespace().next()?));
    let timeline = field("START TIMELINE").and_then(|v| v.trim().parse().ok());
    match (start, timeline) {
        (Some(start), Some(timeline)) => Ok(Label { start, timeline }),
        _ => Err(Error::Source(format!(
            "the base backup's backup_label does not say where its WAL starts: {:?}",
            text.chars().take(300).collect::<String>()
        ))),
    }
}

struct Stop {
    lsn: u64,
    timeline: u32,
}

/// The end of the last WAL range in `backup_manifest` (its last lines:
/// `"WAL-Ranges": [ { "Timeline": 1, "Start-LSN": "0/4000028", "End-LSN": "0/4000100" } ], ...`).
fn parse_stop(tail: &[u8]) -> Result<Stop, Error> {
    #[derive(serde::Deserialize)]
    struct Range {
        #[serde(rename = "Timeline")]
        timeline: u32,
        #[serde(rename = "End-LSN")]
        end: String,
    }
    let bad = || {
        Error::Source(
            "the base backup's backup_manifest has no WAL range (pg_basebackup 13 or newer writes one)"
                .into(),
        )
    };
    let text = String::from_utf8_lossy(tail);
    let at = text.rfind("\"WAL-Ranges\"").ok_or_else(bad)?;
    let rest = &text[at..];
    let open = rest.find('[').ok_or_else(bad)?;
    let close = rest.find(']').ok_or_else(bad)?;
    let ranges: Vec<Range> =
        serde_json::from_str(rest.get(open..=close).ok_or_else(bad)?).map_err(|_| bad())?;
    let last = ranges.last().ok_or_else(bad)?;
    Ok(Stop {
        lsn: parse_lsn(&last.end).ok_or_else(bad)?,
        timeline: last.timeline,
    })
}

/// A reader that shows every byte it passes to a [`TarWatch`].
struct Watched<R> {
    inner: R,
    seen: Arc<Mutex<TarWatch>>,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen.lock().expect("not poisoned").feed(&buf[..n]);
        Ok(n)
    }
}

/// How much of `backup_label` is kept (it is a few hundred bytes) and of the end of
/// `backup_manifest` (its WAL ranges are its last lines).
const LABEL_MAX: usize = 64 << 10;
const TAIL: usize = 16 << 10;

/// Follows a tar stream's headers (ustar, as `pg_basebackup` writes it) as the bytes pass, and
/// keeps `backup_label` and the end of `backup_manifest`; everything else only passes by.
#[derive(Default)]
struct TarWatch {
    header: Vec<u8>,
    /// Bytes of the current member's contents, then of its padding, still to come.
    body_left: u64,
    pad_left: u64,
    member: Member,
    label: Vec<u8>,
    manifest_tail: Vec<u8>,
    saw_label: bool,
    saw_manifest: bool,
    zero_blocks: u32,
    problem: Option<String>,
}

#[derive(Default, Clone, Copy, PartialEq)]
enum Member {
    #[default]
    Other,
    Label,
    Manifest,
}

impl TarWatch {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.problem.is_none() {
            if self.body_left > 0 {
                let n = data.len().min(self.body_left as usize);
                self.keep(&data[..n]);
                self.body_left -= n as u64;
                data = &data[n..];
            } else if self.pad_left > 0 {
                let n = data.len().min(self.pad_left as usize);
                self.pad_left -= n as u64;
                data = &data[n..];
            } else {
                let n = data.len().min(512 - self.header.len());
                self.header.extend_from_slice(&data[..n]);
                data = &data[n..];
                if self.header.len() == 512 {
                    let header = std::mem::take(&mut self.header);
                    self.header_done(&header);
                }
            }
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        match self.member {
            Member::Other => {}
            Member::Label => {
                let room = LABEL_MAX.saturating_sub(self.label.len());
                self.label
                    .extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            Member::Manifest => {
                self.manifest_tail.extend_from_slice(bytes);
                if self.manifest_tail.len() > 2 * TAIL {
                    let cut = self.manifest_tail.len() - TAIL;
                    self.manifest_tail.drain(..cut);
                }
            }
        }
    }

    fn header_done(&mut self, h: &[u8]) {
        if h.iter().all(|&b| b == 0) {
            self.zero_blocks += 1;
            return;
        }
        if self.zero_blocks >= 2 {
            self.problem = Some("data after the tar stream's end".into());
            return;
        }
        let stored = octal(&h[148..156]);
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    b as u64
                }
            })
            .sum();
        if stored != Some(sum) {
            self.problem = Some("a tar header's checksum does not match".into());
            return;
        }
        let Some(size) = tar_size(&h[124..136]) else {
            self.problem = Some("a tar header's size is not a number".into());
            return;
        };
        let name = cstr(&h[..100]);
        let prefix = if &h[257..262] == b"ustar" {
            cstr(&h[345..500])
        } else {
            ""
        };
        let regular = matches!(h[156], b'0' | 0);
        self.member = match (prefix, name, regular) {
            ("", "backup_label", true) => {
                self.saw_label = true;
                Member::Label
            }
            ("", "backup_manifest", true) => {
                self.saw_manifest = true;
                Member::Manifest
            }
            _ => Member::Other,
        };
        self.body_left = size;
        self.pad_left = (512 - size % 512) % 512;
    }

    /// Whether the stream was a whole tar with both files the base's facts come from.
    fn complete(&self) -> Result<(), Error> {
        let what = if let Some(p) = &self.problem {
            p.clone()
        } else if self.body_left > 0 || self.pad_left > 0 || !self.header.is_empty() {
            "the tar stream ended inside a member".into()
        } else if !self.saw_label {
            "it has no backup_label".into()
        } else if !self.saw_manifest {
            "it has no backup_manifest (pg_basebackup 13 or newer writes one)".into()
        } else {
            return Ok(());
        };
        Err(Error::Source(format!(
            "pg_basebackup's output is not a base backup dbward can record: {what}"
        )))
    }
}

fn cstr(b: &[u8]) -> &str {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    std::str::from_utf8(&b[..end]).unwrap_or("")
}

fn octal(b: &[u8]) -> Option<u64> {
    let s = cstr(b).trim_matches(|c: char| c == ' ' || c == '\0');
    u64::from_str_radix(s, 8).ok()
}

/// A tar size field: octal, or base-256 (the high bit of the first byte set) for large files.
fn tar_size(b: &[u8]) -> Option<u64> {
    if b[0] & 0x80 != 0 {
        return Some(
            b[1..]
                .iter()
                .fold(u64::from(b[0] & 0x7f), |n, &d| (n << 8) | u64::from(d)),
        );
    }
    octal(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, size: usize) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000600\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn member(name: &str, body: &[u8]) -> Vec<u8> {
        let mut m = header(name, body.len());
        m.extend_from_slice(body);
        m.resize(m.len().div_ceil(512) * 512, 0);
        m
    }

    const LABEL: &str = "START WAL LOCATION: 0/4000028 (file 000000010000000000000004)\nCHECKPOINT LOCATION: 0/4000060\nLABEL: x\nSTART TIMELINE: 1\n";

    fn tar(manifest: &str) -> Vec<u8> {
        let mut t = member("backup_label", LABEL.as_bytes());
        t.extend(member("base/1/1259", &vec![9u8; 70_000]));
        t.extend(member("backup_manifest", manifest.as_bytes()));
        t.extend(vec![0u8; 1024]);
        t
    }

    fn manifest() -> String {
        let files: String = (0..2000)
            .map(|i| format!("{{ \"Path\": \"base/1/{i}\", \"Size\": 8192 }},\n"))
            .collect();
        format!("{{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n{files}],\n\"WAL-Ranges\": [\n{{ \"Timeline\": 1, \"Start-LSN\": \"0/4000028\", \"End-LSN\": \"1/2000100\" }}\n],\n\"Manifest-Checksum\": \"00\"}}\n")
    }

    #[test]
    fn the_facts_are_read_from_the_stream_in_any_read_sizes() {
        let t = tar(&manifest());
        for step in [1, 7, 512, 4096, t.len()] {
            let mut w = TarWatch::default();
            for chunk in t.chunks(step) {
                w.feed(chunk);
            }
            w.complete().unwrap();
            let label = parse_label(&w.label).unwrap();
            assert_eq!((label.start, label.timeline), (0x4000028, 1));
            let stop = parse_stop(&w.manifest_tail).unwrap();
            assert_eq!(stop.lsn, (1 << 32) | 0x2000100);
            assert!(w.manifest_tail.len() <= 2 * TAIL);
        }
    }

    #[test]
    fn a_cut_or_foreign_stream_is_refused() {
        let t = tar(&manifest());
        let mut w = TarWatch::default();
        w.feed(&t[..t.len() - 5000]);
        assert!(w.complete().is_err());
        let mut w = TarWatch::default();
        let mut bad = t.clone();
        bad[0] = b'X'; // the header's checksum no longer matches
        w.feed(&bad);
        assert!(w.complete().is_err());
        let mut w = TarWatch::default();
        w.feed(&member("backup_label", LABEL.as_bytes()));
        w.feed(&[0u8; 1024]);
        let e = w.complete().unwrap_err().to_string();
        assert!(e.contains("backup_manifest"), "{e}");
    }

    #[test]
    fn segments_and_lsns_are_named_as_postgresql_names_them() {
        assert_eq!(
            segment_name(1, 0x4000028, 16 << 20),
            "000000010000000000000004"
        );
        assert_eq!(
            segment_name(2, (0xA2 << 32) | 0x3F00_0000, 16 << 20),
            "00000002000000A20000003F"
        );
        assert_eq!(lsn_text((1 << 32) | 0x2000100), "1/2000100");
        assert_eq!(parse_lsn("1/2000100"), Some((1 << 32) | 0x2000100));
        assert_eq!(parse_lsn("1/123456789"), None);
        assert_eq!(parse_lsn("/1"), None);
        let p = Physical {
            system_identifier: "1".into(),
            timeline: 1,
            start_lsn: "0/FF000028".into(),
            stop_lsn: "1/1000000".into(),
            wal_first: segment_name(1, 0xFF00_0028, 16 << 20),
            wal_last: segment_name(1, (1 << 32) | 0xFF_FFFF, 16 << 20),
            segment_bytes: 16 << 20,
            pg_basebackup_version: "15".into(),
        };
        assert_eq!(
            segments(&p).unwrap(),
            ["0000000100000000000000FF", "000000010000000100000000"]
        );
    }
}

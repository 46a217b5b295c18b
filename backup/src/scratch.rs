//! Temp files with provable ownership. Every temp file dbward makes lives in a directory of its
//! run, `<parent>/.dbward-run-<pid>-<random>/`, which holds a `lock` file locked (flock) for as
//! long as the run lives; the kernel releases the lock however the process ends. A run that
//! makes temp files in a parent first removes the run directories there whose lock is free: the
//! runs that made them are dead. A live run's directory is never touched, whatever its name, and
//! nothing outside such directories is ever removed.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use crate::error::Error;

const PREFIX: &str = ".dbward-run-";
const LOCK: &str = "lock";
/// What the lock file says: with the lock, the proof that the directory is a dbward run's.
const MARK: &str = "dbward run ";

/// One run's directory in one parent; removed when the last temp file in it is dropped.
#[derive(Debug)]
struct RunDir {
    path: PathBuf,
    _lock: File,
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// This process's run directories, by parent, so every temp file in one parent shares one.
static RUNS: Mutex<Option<Runs>> = Mutex::new(None);

/// Parent directory -> (this run's directory in it, its handle while any temp file lives).
type Runs = HashMap<PathBuf, (PathBuf, Weak<RunDir>)>;

/// A temp file in this run's directory under some parent. Removed on drop (file first, then the
/// directory once it holds nothing else of this run's).
#[derive(Debug)]
pub struct ScratchPath {
    path: Option<tempfile::TempPath>,
    _dir: Arc<RunDir>,
}

impl ScratchPath {
    /// Keeps the file (it was renamed away, say): drop will not remove anything at its path.
    pub fn keep(mut self) {
        if let Some(p) = self.path.take() {
            let _ = p.keep();
        }
    }
}

impl std::ops::Deref for ScratchPath {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.path.as_deref().expect("present until kept")
    }
}

impl AsRef<Path> for ScratchPath {
    fn as_ref(&self) -> &Path {
        self
    }
}

impl AsRef<std::ffi::OsStr> for ScratchPath {
    fn as_ref(&self) -> &std::ffi::OsStr {
        let p: &Path = self;
        p.as_os_str()
    }
}

/// Free bytes for an unprivileged writer on the file system of `dir` (or of its nearest
/// existing ancestor).
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let mut d = dir;
    while !d.exists() {
        d = d.parent()?;
    }
    let d = if d.as_os_str().is_empty() {
        Path::new(".")
    } else {
        d
    };
    let c = std::ffi::CString::new(d.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Refuses (exit 3) before `what` needs `needed` bytes in `dir` where fewer are free, so a
/// production host's disk is never filled: the check says both numbers.
pub fn ensure_space(dir: &Path, needed: u64, what: &str) -> Result<(), Error> {
    // Room to spare: a full disk breaks the application, not only dbward.
    let margin = 64 << 20;
    if let Some(free) = free_bytes(dir) {
        if free < needed.saturating_add(margin) {
            return Err(Error::NoSpace(format!(
                "not enough disk space in {} for {what}: needs {} (plus {} to spare), {} free. Free some space, or point --temp-dir / backup.temp_dir elsewhere. Nothing was changed.",
                dir.display(),
                crate::bytes(needed),
                crate::bytes(margin),
                crate::bytes(free)
            )));
        }
    }
    Ok(())
}

/// Creates `dir` and any missing parent, each missing one 0700: what dbward keeps (snapshots,
/// state, temp copies) is as private as the database. Directories that exist keep their mode.
/// Each new directory's entry is fsynced in its parent: a file written and synced inside it
/// (a WAL file acknowledged to PostgreSQL, a manifest) then survives a crash with its path.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    for new in missing.iter().rev() {
        if let Some(parent) = new.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

/// Replaces `path` with `bytes` atomically: a new temp file beside it (a random name, created
/// exclusively with `mode`: never a file or link someone else put there), fsynced, renamed over
/// it, and the directory fsynced. A reader sees the old file or the new one, never half of
/// either; concurrent writers each write their own temp file.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".dbward-write-")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(&dir)
        .map_err(|e| {
            // tempfile's message names its random file; the directory is what a reader can fix.
            let said = e.to_string();
            let cause = said.split(" at path \"").next().unwrap_or(&said);
            std::io::Error::new(e.kind(), format!("{}: {cause}", dir.display()))
        })?;
    // The mode asked for, whatever the umask took away.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(&dir)?.sync_all()
}

/// A new empty temp file named `<prefix>...` in this run's directory under `parent` (created,
/// after the directories of dead runs there were removed, on first use).
pub fn temp_in(parent: &Path, prefix: &str) -> Result<ScratchPath, Error> {
    let dir = run_dir(parent)?;
    let path = tempfile::Builder::new()
        .prefix(prefix)
        .tempfile_in(&dir.path)
        .map_err(Error::io(format!(
            "creating a temp file in {}",
            dir.path.display()
        )))?
        .into_temp_path();
    Ok(ScratchPath {
        path: Some(path),
        _dir: dir,
    })
}

fn run_dir(parent: &Path) -> Result<Arc<RunDir>, Error> {
    let mut runs = RUNS.lock().unwrap_or_else(|e| e.into_inner());
    let runs = runs.get_or_insert_with(HashMap::new);
    if let Some(dir) = runs.get(parent).and_then(|(_, w)| w.upgrade()) {
        return Ok(dir);
    }
    create_private_dir(parent).map_err(Error::io(format!("creating {}", parent.display())))?;
    sweep(parent);
    let dir = tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}-", std::process::id()))
        .tempdir_in(parent)
        .map_err(Error::io(format!(
            "creating a run directory in {}",
            parent.display()
        )))?
        .keep();
    let lock_path = dir.join(LOCK);
    let lock = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&lock_path)
        .map_err(Error::io(format!("creating {}", lock_path.display())))?;
    // Blocking: a sweep of another run may hold it for a moment while it looks (it never
    // removes a directory whose lock file does not say `dbward run` yet).
    lock.lock()
        .map_err(Error::io(format!("locking {}", lock_path.display())))?;
    {
        use std::io::Write;
        let mut l = &lock;
        l.write_all(format!("{MARK}{}\n", std::process::id()).as_bytes())
            .map_err(Error::io(format!("writing {}", lock_path.display())))?;
    }
    let run = Arc::new(RunDir {
        path: dir.clone(),
        _lock: lock,
    });
    runs.insert(parent.to_path_buf(), (dir, Arc::downgrade(&run)));
    Ok(run)
}

/// Removes the run directories under `parent` whose runs are dead (their lock is free).
pub fn sweep(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = e.path();
        if !name.starts_with(PREFIX) || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        match OpenOptions::new().write(true).open(path.join(LOCK)) {
            Ok(lock) => match lock.try_lock() {
                Ok(()) => {
                    let said = std::fs::read_to_string(path.join(LOCK)).unwrap_or_default();
                    if !said.starts_with(MARK) {
                        // Killed before its lock file said whose it is: only an otherwise empty
                        // directory, and not one a run is setting up right now.
                        let only_lock = std::fs::read_dir(&path)
                            .map(|d| d.count() == 1)
                            .unwrap_or(false);
                        if said.is_empty() && only_lock && settled(&path) {
                            let _ = std::fs::remove_file(path.join(LOCK));
                            let _ = std::fs::remove_dir(&path);
                        }
                        continue;
                    }
                    tracing::info!(
                        "removing {}, left by a run that ended early",
                        path.display()
                    );
                    if let Err(err) = std::fs::remove_dir_all(&path) {
                        tracing::warn!("could not remove {}: {err}", path.display());
                    }
                }
                Err(TryLockError::WouldBlock) => {} // a live run's
                Err(TryLockError::Error(err)) => {
                    tracing::warn!("leaving {}: cannot check its lock: {err}", path.display())
                }
            },
            // Killed between creating the directory and its lock file: it can hold nothing.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if settled(&path) {
                    let _ = std::fs::remove_dir(&path);
                }
            }
            Err(_) => {}
        }
    }
}

/// A directory untouched for a minute: not one another run is creating at this moment (between
/// its `mkdir` and its lock, a run directory has no lock to show).
fn settled(path: &Path) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() >= 60))
}

/// Removes this process's run directories now, whoever still holds files in them: called when
/// the process is stopped by a signal, before it exits.
pub fn remove_this_runs() {
    let runs = RUNS.lock().unwrap_or_else(|e| e.into_inner());
    for (dir, _) in runs.iter().flat_map(|m| m.values()) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_runs_directory_is_swept_and_a_live_ones_is_not() {
        let parent = tempfile::tempdir().unwrap();
        // A dead run: its lock file is not locked by anyone.
        let dead = parent.path().join(".dbward-run-1-dead");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(LOCK), "dbward run 1\n").unwrap();
        std::fs::write(dead.join("copy"), "x").unwrap();
        // Not dbward's: same-looking names without its lock, and other files.
        let foreign = parent.path().join(".dbward-run-notes");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join("keep"), "x").unwrap();
        std::fs::write(foreign.join(LOCK), "mine").unwrap();
        std::fs::write(parent.path().join(".dbward-restore-x"), "x").unwrap();

        let t = temp_in(parent.path(), "f-").unwrap();
        assert!(!dead.exists(), "dead run removed");
        assert!(
            foreign.join("keep").exists(),
            "a directory without dbward's lock is kept"
        );
        assert!(parent.path().join(".dbward-restore-x").exists());
        let live = t.parent().unwrap().to_path_buf();
        sweep(parent.path());
        assert!(t.exists(), "a live run's files stay");
        let t2 = temp_in(parent.path(), "g-").unwrap();
        assert_eq!(
            t2.parent().unwrap(),
            live,
            "one directory per run and parent"
        );
        drop(t);
        assert!(live.exists());
        drop(t2);
        assert!(!live.exists(), "removed with its last file");
    }
}

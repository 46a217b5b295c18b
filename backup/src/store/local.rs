//! A local directory store. Data is written to a hidden temp name, fsynced, renamed into place,
//! and the directory fsynced; a manifest is hard-linked into place, which fails if one exists.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use super::ObjectInfo;
use crate::error::Error;
use crate::pipeline::Msg;

pub struct LocalStore {
    root: PathBuf,
    /// `store.group`: directories `2770` and files `0640` for it (else `0700` and `0600`).
    group: Option<u32>,
}

impl LocalStore {
    pub fn new(root: PathBuf, group: Option<u32>) -> LocalStore {
        LocalStore { root, group }
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn prepare_dir(&self, key: &str) -> Result<PathBuf, Error> {
        let p = self.path(key);
        let dir = p.parent().unwrap_or(&self.root).to_path_buf();
        // Below the root (the operator's, which may be a link) every folder is dbward's own:
        // a link there is not followed, whatever it leads to.
        let mut at = self.root.clone();
        for part in dir
            .strip_prefix(&self.root)
            .unwrap_or(Path::new(""))
            .components()
        {
            at.push(part);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(Error::Store {
                        what: at.display().to_string(),
                        message: "it is a symbolic link where the store keeps a folder of its own; not followed: replace the link with the folder itself".into(),
                    })
                }
                _ => {}
            }
        }
        crate::scratch::create_private_dir(&dir).map_err(Error::io(format!(
            "creating store directory {}",
            dir.display()
        )))?;
        if let Some(gid) = self.group {
            // Every directory from the store's root down to this one: the group's to write in
            // (the setgid bit gives what is made inside the same group).
            // (The root itself is the operator's: set its group and mode once, by hand.)
            // From the top down, so that a link on the way is met (and refused) as itself.
            let mut below: Vec<&Path> = dir
                .ancestors()
                .take_while(|d| *d != self.root && d.starts_with(&self.root))
                .collect();
            below.reverse();
            for d in below {
                share(d, gid, 0o2770)?;
            }
        }
        Ok(dir)
    }

    /// A file put in place: readable by the store's group, when there is one.
    fn shared(&self, file: &Path) -> Result<(), Error> {
        match self.group {
            Some(gid) => share(file, gid, 0o640),
            None => Ok(()),
        }
    }

    /// Writes into a temp file in this run's directory beside the object (see
    /// [`crate::scratch`]: a killed run's partial object is removed by the next run), fsyncs
    /// it, renames it into place and fsyncs the directory.
    pub async fn put_stream(&self, key: &str, mut rx: mpsc::Receiver<Msg>) -> Result<u64, Error> {
        let dir = self.prepare_dir(key)?;
        let final_path = self.path(key);
        let tmp = crate::scratch::temp_in(&dir, "partial-")?;
        let io = |what: String| Error::io(what);
        let mut file = File::create(&*tmp).map_err(io(format!("creating {}", tmp.display())))?;
        let mut complete = false;
        while let Some(msg) = rx.recv().await {
            match msg {
                Msg::Data(chunk) => {
                    file.write_all(&chunk)
                        .map_err(io(format!("writing {}", tmp.display())))?;
                }
                Msg::Done => {
                    complete = true;
                    break;
                }
            }
        }
        if !complete {
            return Err(Error::Source(
                "the stream ended before the snapshot was complete".into(),
            ));
        }
        file.sync_all()
            .map_err(io(format!("fsync {}", tmp.display())))?;
        drop(file);
        if final_path.exists() {
            return Err(Error::Exists(final_path.display().to_string()));
        }
        self.shared(&tmp)?;
        fs::rename(&*tmp, &final_path)
            .map_err(io(format!("renaming to {}", final_path.display())))?;
        tmp.keep();
        sync_dir(&dir)?;
        let size = fs::metadata(&final_path)
            .map_err(io(format!("stat {}", final_path.display())))?
            .len();
        Ok(size)
    }

    /// Writes `bytes` to a temp file beside `key`, fsynced; returns (dir, final path, temp).
    fn write_temp(
        &self,
        key: &str,
        bytes: &[u8],
    ) -> Result<(PathBuf, PathBuf, crate::scratch::ScratchPath), Error> {
        let dir = self.prepare_dir(key)?;
        let tmp = crate::scratch::temp_in(&dir, "partial-")?;
        let mut f =
            File::create(&*tmp).map_err(Error::io(format!("creating {}", tmp.display())))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(Error::io(format!("writing {}", tmp.display())))?;
        self.shared(&tmp)?;
        Ok((dir, self.path(key), tmp))
    }

    pub fn put_new(&self, key: &str, bytes: &[u8]) -> Result<(), Error> {
        let (dir, final_path, tmp) = self.write_temp(key, bytes)?;
        // A hard link fails if the name exists: never overwrite, atomically.
        let linked = fs::hard_link(&*tmp, &final_path);
        drop(tmp);
        linked.map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Exists(final_path.display().to_string())
            } else {
                Error::Store {
                    what: final_path.display().to_string(),
                    message: e.to_string(),
                }
            }
        })?;
        sync_dir(&dir)
    }

    pub fn download(&self, key: &str, to: &mut impl Write) -> Result<(), Error> {
        let (mut f, p) = self.open(key)?;
        std::io::copy(&mut f, to).map_err(Error::io(format!("copying {}", p.display())))?;
        Ok(())
    }

    /// The object at `key`, opened for reading, with its path.
    pub fn open(&self, key: &str) -> Result<(File, PathBuf), Error> {
        let p = self.path(key);
        let f = File::open(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Missing(p.display().to_string()),
            _ => Error::io(format!("reading {}", p.display()))(e),
        })?;
        Ok((f, p))
    }

    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<(), Error> {
        let (dir, final_path, tmp) = self.write_temp(key, bytes)?;
        fs::rename(&*tmp, &final_path)
            .map_err(Error::io(format!("renaming to {}", final_path.display())))?;
        tmp.keep();
        sync_dir(&dir)
    }

    pub fn get_bytes(&self, key: &str) -> Result<Vec<u8>, Error> {
        let p = self.path(key);
        fs::read(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Missing(p.display().to_string()),
            _ => Error::io(format!("reading {}", p.display()))(e),
        })
    }

    /// The folders directly under the store's root.
    pub fn folders(&self) -> Result<Vec<String>, Error> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("listing {}", self.root.display()))(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Error::io(format!("listing {}", self.root.display())))?;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(out)
    }

    pub fn list_after(&self, dir: &str, after: Option<&str>) -> Result<Vec<ObjectInfo>, Error> {
        let d = self.path(dir);
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("listing {}", d.display()))(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Error::io(format!("listing {}", d.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if after.is_some_and(|a| name.as_str() <= a) {
                continue;
            }
            let meta = entry
                .metadata()
                .map_err(Error::io(format!("stat {}", entry.path().display())))?;
            if meta.is_file() {
                out.push(ObjectInfo {
                    key: join(dir, &name),
                    size: meta.len(),
                    modified: meta.modified().ok(),
                });
            }
        }
        Ok(out)
    }

    pub fn delete(&self, key: &str) -> Result<(), Error> {
        let p = self.path(key);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("deleting {}", p.display()))(e)),
        }
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{}/{name}", dir.trim_end_matches('/'))
    }
}

pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(format!("fsync directory {}", dir.display())))
}

/// Gives `path` (dbward's, in its own store) to group `gid` with `mode`, when it is not so
/// already. Only a real directory or regular file this user owns is changed, through a handle
/// opened without following a link: a link, or an entry another user made, is refused with
/// what to do (root is not to change a file someone else placed in the store).
fn share(path: &Path, gid: u32, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let refused = |message: String| Error::Store {
        what: path.display().to_string(),
        message,
    };
    let dir = mode & 0o111 != 0;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(
            libc::O_NOFOLLOW | libc::O_NONBLOCK | if dir { libc::O_DIRECTORY } else { 0 },
        )
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                refused("it is a symbolic link; a store with store.group holds only real folders and files: replace the link with the folder itself".into())
            } else {
                Error::io(format!("opening {}", path.display()))(e)
            }
        })?;
    let meta = file
        .metadata()
        .map_err(Error::io(format!("stat {}", path.display())))?;
    if (dir && !meta.is_dir()) || (!dir && !meta.is_file()) {
        return Err(refused(format!(
            "expected a {} here (store.group)",
            if dir { "folder" } else { "regular file" }
        )));
    }
    if meta.gid() == gid && meta.mode() & 0o7777 == mode {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(refused(format!(
            "it belongs to uid {}, not to this user (uid {me}), and is not yet group {gid} with mode {mode:o} (store.group): run once as uid {} to share it, or `chgrp -R` and `chmod g+rwxs` the store yourself",
            meta.uid(),
            meta.uid()
        )));
    }
    let done = std::os::unix::fs::fchown(&file, None, Some(gid))
        .and_then(|()| file.set_permissions(fs::Permissions::from_mode(mode)));
    done.map_err(|e| {
        refused(format!(
            "giving it to group {gid} with mode {mode:o} (store.group): {e}; `chgrp -R` and `chmod g+rwxs` the store yourself"
        ))
    })
}

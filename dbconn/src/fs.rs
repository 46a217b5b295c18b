//! File-system steps that changes by dbward rely on, for every crate: a rename that never
//! replaces anything.

use std::path::Path;

/// `rename(from, to)` where `to` must not exist (`renameat2(RENAME_NOREPLACE)`): nothing is
/// ever renamed over. An existing `to` is `ErrorKind::AlreadyExists`.
pub fn rename_new(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let from_c = std::ffi::CString::new(from.as_os_str().as_bytes()).expect("paths hold no NUL");
    let to_c = std::ffi::CString::new(to.as_os_str().as_bytes()).expect("paths hold no NUL");
    // SAFETY: two NUL-terminated paths, relative to the working directory when not absolute.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        // A file system without RENAME_NOREPLACE (NFS, OpenZFS before 2.2, some FUSE ones).
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => without_noreplace(from, to),
        _ => Err(err),
    }
}

/// [`rename_new`] where the file system has no RENAME_NOREPLACE: a file is linked to its new
/// name (which fails where a name exists) and its old name removed; a directory (which cannot
/// be linked) is renamed after its new name was found free, which callers do only under their
/// own lock.
fn without_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(from)?.is_dir() {
        if to.symlink_metadata().is_ok() {
            return Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists));
        }
        return std::fs::rename(from, to);
    }
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rename_new_never_replaces() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&b, "b").unwrap();
        let e = super::rename_new(&a, &b).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "b");
        std::fs::remove_file(&b).unwrap();
        super::rename_new(&a, &b).unwrap();
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "a");
        assert!(!a.exists());
        // The way without RENAME_NOREPLACE keeps the promise too.
        std::fs::write(&a, "a2").unwrap();
        let e = super::without_noreplace(&a, &b).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "a");
        let c = d.path().join("c");
        super::without_noreplace(&a, &c).unwrap();
        assert_eq!(std::fs::read_to_string(&c).unwrap(), "a2");
        assert!(!a.exists());
    }
}

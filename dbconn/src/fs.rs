//! File-system steps that changes by dbward rely on, for every crate: a rename that never
//! replaces anything.

use std::path::Path;

/// `rename(from, to)` where `to` must not exist (`renameat2(RENAME_NOREPLACE)`): nothing is
/// ever renamed over. An existing `to` is `ErrorKind::AlreadyExists`.
pub fn rename_new(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let from = std::ffi::CString::new(from.as_os_str().as_bytes()).expect("paths hold no NUL");
    let to = std::ffi::CString::new(to.as_os_str().as_bytes()).expect("paths hold no NUL");
    // SAFETY: two NUL-terminated paths, relative to the working directory when not absolute.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
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
    }
}

//! Named failure points for the crash-consistency suite (`tests/it/crash.rs`). Compiled in only
//! with the `failpoints` feature (scripts/test.sh builds the tested binary with it); without
//! it, [`hit`] is an empty inline function.
//!
//! `DBWARD_FAILPOINTS="name=action;name=action"`, where the action is `error` (the step fails
//! as if its own work had failed) or `wait` (the process writes `<name>` into
//! `DBWARD_FAILPOINT_DIR` and stops there, so a test can `kill -9` it at exactly that point, or
//! send it a signal and then let it go on by creating `<name>.go` there). `action@N` acts on the
//! N-th time the point is met (1-based) and lets the others pass: the statements of a
//! non-transactional file meet the same points one after the other.

/// Every failure point, in the order a run meets them; the suite drives each one.
pub const ALL: &[&str] = &[
    "migrate-after-lock",
    "migrate-after-snapshot",
    "migrate-mid-batch",
    "migrate-statement-started",
    "migrate-statement-ran",
    "migrate-after-commit",
    "backup-after-prepare",
    "backup-before-manifest",
    "backup-after-manifest",
    "restore-after-fetch",
    "restore-after-decompress",
    "restore-sqlite-after-link",
    "restore-sqlite-after-wal-moved",
    "restore-sqlite-after-side-files",
    "restore-sqlite-after-swap",
    "restore-pg-after-create",
    "restore-pg-after-pg-restore",
    "restore-pg-before-swap",
    "prune-after-manifest-delete",
    "drill-after-restore",
    "rewind-before-stop",
    "rewind-after-swap",
    "rewind-before-verify",
];

/// `Err` when the failure point `name` is set to `error`; never returns when it is set to
/// `wait`.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) -> Result<(), String> {
    debug_assert!(ALL.contains(&name), "unknown failure point {name}");
    let Ok(spec) = std::env::var("DBWARD_FAILPOINTS") else {
        return Ok(());
    };
    static MET: std::sync::Mutex<Vec<(String, usize)>> = std::sync::Mutex::new(Vec::new());
    let met = {
        let mut m = MET.lock().unwrap_or_else(|e| e.into_inner());
        let i = match m.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                m.push((name.to_string(), 0));
                m.len() - 1
            }
        };
        m[i].1 += 1;
        m[i].1
    };
    for item in spec.split(';') {
        let Some((point, action)) = item.split_once('=') else {
            continue;
        };
        if point != name {
            continue;
        }
        let (action, nth) = match action.split_once('@') {
            Some((a, n)) => (a, n.parse().ok()),
            None => (action, None),
        };
        if nth.is_some_and(|n: usize| n != met) {
            continue;
        }
        match action {
            "error" => return Err(format!("injected failure at failure point {name}")),
            "wait" => {
                let dir = std::env::var("DBWARD_FAILPOINT_DIR").ok();
                if let Some(dir) = &dir {
                    let _ = std::fs::write(std::path::Path::new(dir).join(name), "");
                }
                loop {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    let go = dir.as_ref().is_some_and(|d| {
                        std::path::Path::new(d).join(format!("{name}.go")).exists()
                    });
                    if go {
                        return Ok(());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) -> Result<(), String> {
    Ok(())
}

/// Whether this build has failure points (the suite refuses to run against one without).
pub const ENABLED: bool = cfg!(feature = "failpoints");

//! The files of a rewind: what the live configuration reads from inside the data directory
//! (carried into the restored one), and the swap of the two directories.

use std::path::{Path, PathBuf};

use dbconn::fs::rename_new;

use super::{Checked, Error};
use crate::pitr::cluster::NewDir;
use crate::pitr::server;

/// The configuration files a cluster may keep in its data directory: the live ones replace the
/// base's in the restored directory.
const CONFIG_FILES: [&str; 4] = [
    "postgresql.conf",
    "pg_hba.conf",
    "pg_ident.conf",
    "postgresql.auto.conf",
];

/// Why the directories were not swapped.
pub(super) enum SwapError {
    /// Nothing moved, or it moved back: the old cluster can start again as it was.
    NotSwapped(Error),
    /// The old data directory could not be moved back: said, for the operator.
    Stuck(Error),
}

/// The restored directory made ready to start (recovery to the point, the fetched WAL marked
/// done, owned like the live one), the stopped cluster's directory moved aside under a new
/// name, and the restored one renamed into its place. Returns where the old one is kept.
pub(super) fn swap_dirs(
    dir: &mut NewDir,
    data_dir: &Path,
    checked: &Checked,
) -> Result<PathBuf, SwapError> {
    let fetched: Vec<String> = checked
        .planned
        .plan
        .segments
        .iter()
        .chain(&checked.planned.plan.histories)
        .cloned()
        .collect();
    server::prepare_rewind(dir.path(), &checked.planned.target, &fetched)
        .and_then(|()| server::chown_tree_to(dir.path(), checked.user.uid, checked.gid))
        .map_err(|e| SwapError::NotSwapped(e.into()))?;
    let kept = PathBuf::from(format!(
        "{}.dbward-replaced-{}",
        data_dir.display(),
        crate::manifest::compact_stamp(time::OffsetDateTime::now_utc())
    ));
    rename_new(data_dir, &kept).map_err(|e| {
        SwapError::NotSwapped(Error::Failed(format!(
            "moving {} aside to {} failed: {e}",
            data_dir.display(),
            kept.display()
        )))
    })?;
    if let Err(e) = dir.publish() {
        return Err(match rename_new(&kept, data_dir) {
            Ok(()) => SwapError::NotSwapped(e.into()),
            Err(b) => SwapError::Stuck(Error::Failed(format!(
                "{}; and moving the old data directory back from {} failed: {b}. Move it back and start the cluster by hand",
                crate::error::chain(&e),
                kept.display()
            ))),
        });
    }
    Ok(kept)
}

/// What a rewind leaves undone, said before it starts: replication slots (a base holds none)
/// and standbys streaming without one (they stay on the abandoned timeline).
pub(super) fn warnings_of(live: &server::LiveCluster) -> Vec<String> {
    let mut warnings = Vec::new();
    if !live.replication_slots.is_empty() {
        warnings.push(format!(
            "the cluster has replication slots ({}): a base holds none, so the rewound cluster has none; standbys and logical consumers of them must be set up again",
            live.replication_slots.join(", ")
        ));
    }
    if !live.standbys_without_slot.is_empty() {
        warnings.push(format!(
            "streaming standbys are connected without a replication slot ({}): they stay on the abandoned timeline, serving the failed deploy's data, until they are rebuilt from the rewound cluster",
            live.standbys_without_slot.join(", ")
        ));
    }
    warnings
}

/// The configuration files the live server reads from inside its data directory (beyond
/// PostgreSQL's own), by their path there: carried into the rewound cluster.
pub(super) fn carried_files(live: &server::LiveCluster, data_dir: &Path) -> Vec<PathBuf> {
    match &live.config_files {
        Ok(files) => files
            .iter()
            .filter_map(|f| {
                f.strip_prefix(&live.data_directory)
                    .or_else(|_| f.strip_prefix(data_dir))
                    .ok()
                    .map(Path::to_path_buf)
            })
            .filter(|rel| !CONFIG_FILES.iter().any(|c| rel == Path::new(c)))
            .filter(|rel| {
                let fit = carriable(rel);
                if !fit {
                    tracing::warn!(
                        "not carrying {} into the rewound cluster: a configuration file is carried only by a plain path inside the data directory, outside PostgreSQL's own folders",
                        rel.display()
                    );
                }
                fit
            })
            .collect(),
        Err(e) => {
            tracing::warn!(
                "the files the live configuration reads could not be listed ({}): only {} are carried into the rewound cluster; grant pg_read_all_settings to dbward's role",
                crate::error::chain(e),
                CONFIG_FILES.join(", ")
            );
            Vec::new()
        }
    }
}

/// Whether a path the configuration names may be carried from the stopped cluster into the
/// restored one: plain names only (no `..`, nothing absolute), and none of PostgreSQL's own
/// folders and files (`global/pg_control` named as an SSL file must never be copied over the
/// restored cluster's).
fn carriable(rel: &Path) -> bool {
    use std::path::Component;
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    let first = rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    let own = first.starts_with("pg_")
        || matches!(
            first.as_str(),
            "global" | "base" | "PG_VERSION" | "postmaster.pid" | "postmaster.opts"
        );
    plain && !own && rel.components().count() > 0
}

/// `rel` inside `root` with no symbolic link on the way (every folder a real one, the file a
/// regular file): `None` otherwise, or when it is not there.
fn no_link_on_the_way(root: &Path, rel: &Path) -> Option<std::fs::Metadata> {
    let mut at = root.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for (i, part) in parts.iter().enumerate() {
        at.push(part);
        let meta = std::fs::symlink_metadata(&at).ok()?;
        let last = i + 1 == parts.len();
        if meta.file_type().is_symlink() || (!last && !meta.is_dir()) || (last && !meta.is_file()) {
            return None;
        }
        if last {
            return Some(meta);
        }
    }
    None
}

/// The live cluster's configuration files (those in its data directory, as the stopped cluster
/// leaves them: the four main ones, and every other one its configuration reads there, an
/// `include_dir`'s files, SSL keys and certificates) copied over the base's in `to`, byte for
/// byte with their modes (a directory they are in is made with its live mode); returns the
/// live `postgresql.auto.conf` (empty when there is none), put back after the promotion.
pub(super) fn live_config(live: &Path, to: &Path, checked: &Checked) -> Result<Vec<u8>, Error> {
    let failed = Error::Failed;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut auto = Vec::new();
    let names = CONFIG_FILES
        .iter()
        .map(PathBuf::from)
        .chain(checked.carried.iter().cloned());
    for name in names {
        let from = live.join(&name);
        // Read only through real folders to a regular file (a link could lead anywhere).
        let Some(meta) = no_link_on_the_way(live, &name) else {
            continue; // kept elsewhere (Debian: /etc/postgresql), or not a plain file
        };
        let bytes =
            std::fs::read(&from).map_err(|e| failed(format!("reading {}: {e}", from.display())))?;
        let dest = to.join(&name);
        // The directories it is in (an include_dir added after the base), as the live ones.
        let mut made = Vec::new();
        for dir in name
            .ancestors()
            .skip(1)
            .filter(|d| !d.as_os_str().is_empty())
        {
            if !to.join(dir).exists() {
                made.push(dir.to_path_buf());
            }
        }
        // In the restored directory (all of it this run's, extracted without links), the
        // folders on the way must be real ones too.
        if let Some(parent) = name.parent().filter(|p| !p.as_os_str().is_empty()) {
            let mut at = to.to_path_buf();
            for part in parent.components() {
                at.push(part);
                if std::fs::symlink_metadata(&at).is_ok_and(|m| !m.is_dir()) {
                    return Err(failed(format!("{} is not a folder", at.display())));
                }
            }
        }
        for dir in made.iter().rev() {
            let mode = std::fs::metadata(live.join(dir))
                .map(|m| m.mode() & 0o7777)
                .unwrap_or(0o700);
            std::fs::create_dir(to.join(dir))
                .and_then(|()| {
                    std::fs::set_permissions(to.join(dir), std::fs::Permissions::from_mode(mode))
                })
                .map_err(|e| failed(format!("making {}: {e}", to.join(dir).display())))?;
            std::os::unix::fs::lchown(to.join(dir), Some(checked.user.uid), Some(checked.gid))
                .map_err(|e| {
                    failed(format!(
                        "giving {} to its owner: {e}",
                        to.join(dir).display()
                    ))
                })?;
        }
        let _ = std::fs::remove_file(&dest); // the base's copy, extracted by this run
        server::write_new(&dest, &bytes, meta.mode() & 0o7777)?;
        std::os::unix::fs::lchown(&dest, Some(checked.user.uid), Some(checked.gid))
            .map_err(|e| failed(format!("giving {} to its owner: {e}", dest.display())))?;
        // The mode exactly, whatever the umask took from it at creation.
        let _ =
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(meta.mode() & 0o7777));
        if name == Path::new("postgresql.auto.conf") {
            auto = bytes;
        }
    }
    Ok(auto)
}

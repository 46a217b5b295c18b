//! The local state dir: what the last `migrate` did, for `restore pre-deploy` and the health
//! guard. One small JSON file per database, written atomically (temp, fsync, rename, fsync dir).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deploy {
    /// The database, as shown in messages (password redacted).
    pub database: String,
    /// RFC 3339, UTC.
    pub at: String,
    pub pre_deploy_snapshot: Option<String>,
    /// Versions this deploy applied; empty for a deploy with nothing pending.
    pub applied: Vec<i64>,
    /// The migration head right after the deploy.
    pub head: Option<Head>,
    /// Set when the health guard restored this deploy's snapshot (it never does so twice).
    #[serde(default)]
    pub restored: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub version: i64,
    pub name: String,
    pub checksum: String,
}

fn path(state_dir: &Path, database: &str) -> PathBuf {
    state_dir.join(format!("last-deploy-{database}.json"))
}

pub fn read(state_dir: &Path, database: &str) -> Result<Option<Deploy>, String> {
    let p = path(state_dir, database);
    match std::fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

pub fn write(state_dir: &Path, database: &str, deploy: &Deploy) -> Result<(), String> {
    use std::io::Write;
    let p = path(state_dir, database);
    let fail = |e: std::io::Error| format!("writing {}: {e}", p.display());
    std::fs::create_dir_all(state_dir).map_err(fail)?;
    let tmp = p.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(fail)?;
    f.write_all(&serde_json::to_vec_pretty(deploy).expect("serializes"))
        .map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, &p).map_err(fail)?;
    std::fs::File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(fail)
}

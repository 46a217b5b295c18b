//! Prometheus textfile metrics for node_exporter's textfile collector, written atomically
//! (temp file in the same directory, then rename), so the collector never reads half a file.

use std::io::Write;
use std::path::Path;

use crate::Report;

pub fn render(r: &Report) -> String {
    let db = r.database.replace('\\', "\\\\").replace('"', "\\\"");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut s = String::new();
    let mut gauge = |name: &str, help: &str, value: String| {
        s.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{database=\"{db}\"}} {value}\n"
        ));
    };
    gauge(
        "dbward_drill_success",
        "1 if the last restore drill passed every check, else 0.",
        (r.success as u8).to_string(),
    );
    gauge(
        "dbward_drill_last_run_timestamp_seconds",
        "When the last restore drill ran (Unix time).",
        now.to_string(),
    );
    gauge(
        "dbward_drill_rto_seconds",
        "Time to restore in the last drill: download, decode, restore.",
        r.rto_seconds.map_or("NaN".into(), |v| format!("{v:.3}")),
    );
    gauge(
        "dbward_snapshot_encrypted",
        "1 if the drilled snapshot is encrypted (age), else 0.",
        (r.encrypted as u8).to_string(),
    );
    gauge(
        "dbward_snapshot_age_seconds",
        "Age of the drilled snapshot when the drill ran.",
        format!("{:.0}", r.snapshot_age_seconds),
    );
    s
}

pub fn write(path: &Path, r: &Report) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
    tmp.write_all(render(r).as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

//! Prometheus textfile metrics for node_exporter's textfile collector, written atomically
//! (temp file in the same directory, then rename), so the collector never reads half a file.

use std::path::Path;

use crate::Report;

/// Gauges labelled with one database, in node_exporter's textfile format: the drill's, and
/// `pitr verify`'s.
pub struct Gauges {
    database: String,
    text: String,
}

impl Gauges {
    pub fn new(database: &str) -> Gauges {
        Gauges {
            database: database.replace('\\', "\\\\").replace('"', "\\\""),
            text: String::new(),
        }
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{database=\"{}\"}} {value}\n",
            self.database
        ));
    }

    pub fn into_text(self) -> String {
        self.text
    }
}

/// Writes a textfile's `text` to `path`, 0644: node_exporter, which reads it, runs as a user of
/// its own. It holds no data.
pub fn write_textfile(path: &Path, text: &str) -> std::io::Result<()> {
    backup::scratch::write_atomic(path, text.as_bytes(), 0o644)
}

pub fn render(r: &Report) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut g = Gauges::new(&r.database);
    g.gauge(
        "dbward_drill_success",
        "1 if the last restore drill passed every check, else 0.",
        (r.success as u8).to_string(),
    );
    g.gauge(
        "dbward_drill_last_run_timestamp_seconds",
        "When the last restore drill ran (Unix time).",
        now.to_string(),
    );
    g.gauge(
        "dbward_drill_rto_seconds",
        "Time to restore in the last drill: download, decode, restore.",
        r.rto_seconds.map_or("NaN".into(), |v| format!("{v:.3}")),
    );
    g.gauge(
        "dbward_snapshot_encrypted",
        "1 if the drilled snapshot is encrypted (age), else 0.",
        (r.encrypted as u8).to_string(),
    );
    g.gauge(
        "dbward_snapshot_age_seconds",
        "Age of the drilled snapshot when the drill ran.",
        format!("{:.0}", r.snapshot_age_seconds),
    );
    if let Some(rpo) = r.rpo_seconds {
        g.gauge(
            "dbward_drill_rpo_seconds",
            "Physical drills: how long before the drill the last transaction it recovered committed.",
            format!("{rpo:.0}"),
        );
    }
    g.into_text()
}

pub fn write(path: &Path, r: &Report) -> std::io::Result<()> {
    write_textfile(path, &render(r))
}

//! The status page: one self-contained HTML file (no script, no external asset: styles and
//! charts inline, SVG), readable on a phone. Every text from the store is escaped.

use super::{age, Database, Overview};

const STYLE: &str = "\
body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:1rem;color:#222}\
h1{font-size:1.3rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;width:100%;margin:.5rem 0;font-size:.9rem}\
th,td{text-align:left;padding:.25rem .4rem;border-bottom:1px solid #eee;vertical-align:top}\
.wide{overflow-x:auto}.ok{color:#17692c}.bad{color:#b00020;font-weight:600}\
.muted{color:#666}.charts{display:flex;flex-wrap:wrap;gap:1rem}\
figure{margin:0;flex:1 1 18rem}figcaption{font-size:.85rem;color:#555}\
svg{width:100%;height:auto;background:#fafafa;border:1px solid #eee}\
@media (prefers-color-scheme:dark){body{background:#111;color:#ddd}svg{background:#1a1a1a;border-color:#333}\
th,td{border-color:#333}.muted,figcaption{color:#999}}";

/// `s` safe in HTML text and attribute values.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn bytes(n: u64) -> String {
    backup::bytes(n)
}

pub fn page(o: &Overview) -> String {
    let mut h = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>dbward: {} database(s)</title><style>{STYLE}</style></head><body>\n\
         <h1>dbward: the state of {} database(s)</h1>\n<p class=\"muted\">From the store alone, at {}.</p>\n",
        o.databases.len(),
        o.databases.len(),
        esc(&o.at)
    );
    h.push_str("<div class=\"wide\"><table id=\"summary\"><thead><tr><th>database</th><th>last backup</th><th>last drill</th><th>RTO</th><th>WAL / stream</th></tr></thead><tbody>\n");
    for (i, d) in o.databases.iter().enumerate() {
        let drill = d.drills.first();
        h.push_str(&format!(
            "<tr><td><a href=\"#db-{i}\">{0}</a></td><td>{1}</td><td>{2}</td><td>{3}</td><td>{4}</td></tr>\n",
            esc(&d.name),
            d.last_backup_age_seconds
                .map(|s| format!("{} ago", age(s)))
                .unwrap_or_else(|| "<span class=\"bad\">none</span>".into()),
            drill
                .map(verdict)
                .unwrap_or_else(|| "<span class=\"bad\">never drilled</span>".into()),
            drill
                .and_then(|r| r.rto_seconds)
                .map(|s| format!("{s:.1} s"))
                .unwrap_or_default(),
            activity(d),
        ));
    }
    h.push_str("</tbody></table></div>\n");
    for (i, d) in o.databases.iter().enumerate() {
        h.push_str(&section(i, d));
    }
    h.push_str("</body></html>\n");
    h
}

fn verdict(r: &backup::DrillRecord) -> String {
    if r.success {
        "<span class=\"ok\">passed</span>".into()
    } else {
        format!(
            "<span class=\"bad\">failed{}</span>",
            r.failed_check
                .as_deref()
                .map(|c| format!(": {}", esc(c)))
                .unwrap_or_default()
        )
    }
}

fn activity(d: &Database) -> String {
    match (&d.wal_last_archived, &d.stream_last_seen) {
        (Some(w), _) => format!("WAL stored {}", esc(w)),
        (None, Some(s)) => format!("stream seen {}", esc(s)),
        (None, None) => String::new(),
    }
}

/// Database `i` of the page (its id: two stores may each hold a database of one name).
fn section(i: usize, d: &Database) -> String {
    let mut h = format!(
        "<section class=\"db\" id=\"db-{i}\" data-database=\"{0}\" data-snapshots=\"{1}\" data-drills=\"{2}\" data-deploys=\"{3}\" data-last-backup=\"{4}\">\n<h2>{0}</h2>\n<p class=\"muted\">{5}</p>\n",
        esc(&d.name),
        d.snapshots.len(),
        d.drills.len(),
        d.deploys.len(),
        d.last_backup.as_ref().map(|s| esc(&s.id)).unwrap_or_default(),
        esc(&d.store),
    );
    match &d.last_backup {
        Some(s) => h.push_str(&format!(
            "<p>Last backup <b>{}</b> ({}, {} stored, by {}), {} ago.</p>\n",
            esc(&s.id),
            esc(&s.kind),
            bytes(s.stored_bytes),
            esc(&s.host),
            d.last_backup_age_seconds.map(age).unwrap_or_default()
        )),
        None => h.push_str("<p class=\"bad\">No backup in the store.</p>\n"),
    }
    if d.damaged > 0 {
        h.push_str(&format!(
            "<p class=\"bad\">{} damaged manifest(s): see <code>dbward snapshots</code>.</p>\n",
            d.damaged
        ));
    }
    // Oldest first, for the charts.
    let sizes: Vec<(String, f64, Option<bool>)> = d
        .snapshots
        .iter()
        .rev()
        .map(|s| (s.created_at.clone(), s.stored_bytes as f64, None))
        .collect();
    let rtos: Vec<(String, f64, Option<bool>)> = d
        .drills
        .iter()
        .rev()
        .filter_map(|r| Some((r.at.clone(), r.rto_seconds?, Some(r.success))))
        .collect();
    h.push_str("<div class=\"charts\">");
    h.push_str(&chart(
        &sizes,
        &format!("Stored size of the last {} snapshots", sizes.len()),
        |v| bytes(v as u64),
    ));
    h.push_str(&chart(
        &rtos,
        &format!(
            "Time to restore in the last {} drills (red: failed)",
            rtos.len()
        ),
        |s| format!("{s:.1} s"),
    ));
    h.push_str("</div>\n");
    if !d.drills.is_empty() {
        h.push_str("<h3>Drills</h3><div class=\"wide\"><table class=\"drills\"><thead><tr><th>at</th><th>snapshot</th><th>verdict</th><th>RTO</th><th>host</th></tr></thead><tbody>\n");
        for r in &d.drills {
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                esc(&r.at),
                esc(&r.snapshot),
                verdict(r),
                r.rto_seconds
                    .map(|s| format!("{s:.1} s"))
                    .unwrap_or_default(),
                esc(&r.host)
            ));
        }
        h.push_str("</tbody></table></div>\n");
    }
    if !d.deploys.is_empty() {
        h.push_str("<h3>Deploys</h3><div class=\"wide\"><table class=\"deploys\"><thead><tr><th>at</th><th>event</th><th>applied</th><th>by</th><th>release</th><th>why</th><th>outcome</th></tr></thead><tbody>\n");
        for e in &d.deploys {
            let applied: Vec<String> = e.applied.iter().map(|v| format!("V{v}")).collect();
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                esc(&e.at),
                esc(&e.event),
                esc(&applied.join(", ")),
                esc(&e.by),
                esc(e.release.as_deref().unwrap_or("")),
                esc(e.reason.as_deref().unwrap_or("")),
                esc(&e.outcome),
            ));
        }
        h.push_str("</tbody></table></div>\n");
    }
    h.push_str("</section>\n");
    h
}

/// A small line chart of `points` (time, value, verdict), oldest first, as inline SVG.
fn chart(
    points: &[(String, f64, Option<bool>)],
    caption: &str,
    show: impl Fn(f64) -> String,
) -> String {
    let (w, hgt, pad) = (320.0, 90.0, 8.0);
    let caption = esc(caption);
    if points.is_empty() {
        return format!("<figure><figcaption>{caption}: none yet</figcaption></figure>");
    }
    let max = points.iter().map(|p| p.1).fold(0.0_f64, f64::max).max(1e-9);
    let step = if points.len() > 1 {
        (w - 2.0 * pad) / (points.len() - 1) as f64
    } else {
        0.0
    };
    let xy: Vec<(f64, f64)> = points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let x = pad + step * i as f64;
            let y = hgt - pad - (p.1 / max) * (hgt - 2.0 * pad);
            (x, y)
        })
        .collect();
    let line: Vec<String> = xy.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let mut svg = format!(
        "<figure><svg viewBox=\"0 0 {w} {hgt}\" role=\"img\"><title>{caption}</title>\
         <polyline fill=\"none\" stroke=\"#4a78c2\" stroke-width=\"1.5\" points=\"{}\"/>",
        line.join(" ")
    );
    for ((x, y), p) in xy.iter().zip(points) {
        let colour = match p.2 {
            Some(false) => "#b00020",
            Some(true) => "#17692c",
            None => "#4a78c2",
        };
        svg.push_str(&format!(
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2.5\" fill=\"{colour}\"><title>{}: {}</title></circle>",
            esc(&p.0),
            esc(&show(p.1))
        ));
    }
    let last = points.last().expect("not empty");
    svg.push_str(&format!(
        "</svg><figcaption>{caption}; the last: {}, the most: {}</figcaption></figure>",
        esc(&show(last.1)),
        esc(&show(max))
    ));
    svg
}

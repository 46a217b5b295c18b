//! Repeatable migrations (`R__<name>.sql`) and `[hooks] after_migrate`, against real SQLite
//! files and a real PostgreSQL server: the compose deploy that re-applies its view files and
//! then refreshes derived data.

use crate::common;

use common::{json, run, sqlite, Http, Pg, Project};

const DB: &str = "sqlite:app.db";

fn q(p: &Project, sql: &str) -> String {
    sqlite(&p.path().join("app.db"), sql)
}

fn config(p: &Project, toml: &str) {
    std::fs::write(p.path().join("dbward.toml"), toml).unwrap();
}

#[test]
fn sqlite_repeatables_apply_when_new_or_changed_after_the_versioned_files() {
    let p = Project::new();
    p.migration(
        "V1__orders.sql",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER NOT NULL);\n",
    )
    .migration(
        "R__order_stats.sql",
        "DROP VIEW IF EXISTS order_stats;\nCREATE VIEW order_stats AS SELECT count(*) AS n FROM orders;\n",
    )
    .migration(
        "R__big_orders.sql",
        "DROP VIEW IF EXISTS big_orders;\nCREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100;\n",
    );
    let (code, out, err) = run(p.dbward(DB).args(["migrate", "--json"]));
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    let applied: Vec<String> = doc["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a["repeatable"]
                .as_str()
                .map(|r| format!("R__{r}"))
                .unwrap_or_else(|| format!("V{}", a["version"]))
        })
        .collect();
    assert_eq!(
        applied,
        ["V1", "R__big_orders", "R__order_stats"],
        "versioned first, then repeatables by name"
    );
    // refinery's table holds only versioned rows, so refinery reads the history as its own.
    assert_eq!(
        q(
            &p,
            "SELECT group_concat(version || ':' || name) FROM refinery_schema_history"
        ),
        "1:orders"
    );
    assert_eq!(
        q(
            &p,
            "SELECT group_concat(name) FROM dbward_repeatable_history ORDER BY name"
        ),
        "big_orders,order_stats"
    );
    q(&p, "INSERT INTO orders (total) VALUES (50), (150)");

    // Unchanged: nothing pending, not even the repeatables.
    let (code, out, _) = run(p.dbward(DB).args(["migrate", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(json(&out)["applied"].as_array().unwrap().len(), 0);

    // One view changed: only it is applied, after a pre-deploy snapshot.
    p.migration(
        "R__order_stats.sql",
        "DROP VIEW IF EXISTS order_stats;\nCREATE VIEW order_stats AS SELECT count(*) AS n, sum(total) AS revenue FROM orders;\n",
    );
    let (code, out, err) = run(p.dbward(DB).args(["migrate", "--json"]));
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    assert_eq!(doc["applied"].as_array().unwrap().len(), 1);
    assert_eq!(doc["applied"][0]["repeatable"], "order_stats");
    assert_eq!(
        doc["head"]["version"], 1,
        "a repeatable does not move the head"
    );
    assert!(
        doc["snapshot"].is_string(),
        "a changed view is a change: {doc}"
    );
    assert_eq!(
        q(&p, "SELECT n || ',' || revenue FROM order_stats"),
        "2,200"
    );

    // A removed repeatable file is not drift; what it created stays.
    p.remove("R__big_orders.sql");
    let (code, out, err) = run(p.dbward(DB).args(["status", "--json"]));
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    assert_eq!(doc["pending"], 0);
    assert!(doc["drift"].as_array().unwrap().is_empty());
    assert_eq!(q(&p, "SELECT count(*) FROM big_orders"), "1");

    // A new versioned file and a changed view go in one transaction: a broken view undoes both.
    p.migration("V2__paid.sql", "ALTER TABLE orders ADD COLUMN paid INTEGER;\n")
        .migration(
            "R__order_stats.sql",
            "DROP VIEW IF EXISTS order_stats;\nCREATE VIEW order_stats AS SELECT count(*) AS n FROM no_such_table;\nSELECT * FROM order_stats;\n",
        );
    let (code, _, err) = run(p.dbward(DB).arg("migrate"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("R__order_stats.sql"), "names the file: {err}");
    assert_eq!(
        q(&p, "SELECT max(version) FROM refinery_schema_history"),
        "1"
    );
    assert_eq!(
        q(
            &p,
            "SELECT count(*) FROM pragma_table_info('orders') WHERE name = 'paid'"
        ),
        "0",
        "V2 rolled back with the view"
    );
    assert_eq!(
        q(&p, "SELECT n || ',' || revenue FROM order_stats"),
        "2,200"
    );
}

#[test]
fn repeatables_are_linted_and_badly_named_ones_refused() {
    let p = Project::new();
    p.migration("V1__t.sql", "CREATE TABLE t (id INTEGER);\n")
        .migration("R__vacuum.sql", "VACUUM;\n");
    let (code, _, err) = run(p.dbward(DB).arg("migrate"));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("R__vacuum.sql:1"), "{err}");
    assert!(
        !p.path().join("app.db").exists()
            || q(&p, "SELECT count(*) FROM sqlite_master WHERE name = 't'") == "0"
    );

    p.remove("R__vacuum.sql");
    p.migration("R__my-view.sql", "SELECT 1;\n");
    let (code, _, err) = run(p.dbward(DB).arg("migrate"));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("R__my-view.sql"), "{err}");
}

/// A hook that records what it was told, and fails while `fail` exists.
fn recording_hook(p: &Project) -> String {
    format!(
        "echo \"url=$DBWARD_DATABASE_URL applied=$DBWARD_APPLIED repeatable=$DBWARD_APPLIED_REPEATABLE snapshot=${{DBWARD_SNAPSHOT:+yes}} head=$DBWARD_HEAD secret=${{AWS_SECRET_ACCESS_KEY:-none}}\" >> {0}/hook.log; test ! -e {0}/fail",
        p.path().display()
    )
}

fn hook_log(p: &Project) -> Vec<String> {
    std::fs::read_to_string(p.path().join("hook.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn sqlite_hooks_run_after_a_batch_and_a_failing_one_breaks_the_deploy() {
    let p = Project::new();
    config(
        &p,
        &format!(
            "[hooks]\nafter_migrate = [{:?}, \"sqlite3 app.db 'INSERT INTO refreshed VALUES (1)'\"]\n",
            recording_hook(&p)
        ),
    );
    p.migration(
        "V1__notes.sql",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);\nCREATE TABLE refreshed (n INTEGER);\n",
    )
    .migration("R__v.sql", "DROP VIEW IF EXISTS v;\nCREATE VIEW v AS SELECT 1 AS one;\n");
    let (code, _, err) = run(p
        .dbward(DB)
        .env("AWS_SECRET_ACCESS_KEY", "s3cr3t-never-in-hooks")
        .arg("migrate"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        hook_log(&p),
        ["url=sqlite:app.db applied=1 repeatable=v snapshot= head=1 secret=none"]
    );
    assert_eq!(
        q(&p, "SELECT count(*) FROM refreshed"),
        "1",
        "second hook ran after the first"
    );

    // Nothing applied: the hooks do not run.
    assert_eq!(run(p.dbward(DB).arg("migrate")).0, 0);
    assert_eq!(hook_log(&p).len(), 1);

    // A failing hook: exit 6, the batch stays applied, the deploy is recorded as broken.
    q(&p, "INSERT INTO notes (body) VALUES ('before V2')");
    std::fs::write(p.path().join("fail"), "").unwrap();
    p.migration("V2__tags.sql", "ALTER TABLE notes ADD COLUMN tags TEXT;\n");
    let (code, out, err) = run(p.dbward(DB).args(["migrate", "--json"]));
    assert_eq!(code, 6, "{err}");
    assert!(
        err.contains("after-migrate hook") && err.contains("failed"),
        "{err}"
    );
    assert!(
        err.contains("restore pre-deploy"),
        "says how to undo: {err}"
    );
    let doc = json(&out);
    assert!(doc["hook_failed"].is_string(), "{doc}");
    assert_eq!(doc["applied"][0]["version"], 2);
    assert_eq!(
        q(&p, "SELECT max(version) FROM refinery_schema_history"),
        "2"
    );
    assert_eq!(
        hook_log(&p)[1],
        "url=sqlite:app.db applied=2 repeatable= snapshot=yes head=2 secret=none"
    );
    assert_eq!(
        q(&p, "SELECT count(*) FROM refreshed"),
        "1",
        "the second hook did not run"
    );

    // A restart (nothing pending) runs the unfinished deploy's hooks again, and fails again.
    let (code, _, err) = run(p.dbward(DB).arg("migrate"));
    assert_eq!(code, 6, "{err}");
    assert_eq!(hook_log(&p).len(), 3);
    assert_eq!(hook_log(&p)[2], hook_log(&p)[1], "told the same batch");

    // The deploy log says so.
    let (code, out, _) = run(p.dbward(DB).args(["deploys", "--json"]));
    assert_eq!(code, 0);
    let doc = json(&out);
    let v2 = doc["deploys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["applied"][0] == 2)
        .expect("the V2 deploy is logged");
    assert!(v2["outcome"].as_str().unwrap().contains("exit 6"), "{doc}");
    assert!(
        doc["deploys"][0]["outcome"]
            .as_str()
            .unwrap()
            .contains("exit 6"),
        "so is the restart whose hooks failed again: {doc}"
    );

    // The guard restores the broken deploy even though the application answers healthy.
    let server = Http::status(200);
    let (code, _, err) = run(p.dbward(DB).args([
        "health",
        "--restore-on-failure",
        "--timeout",
        "2s",
        "--url",
        &server.url(),
    ]));
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("after-migrate hook"), "{err}");
    assert_eq!(
        q(&p, "SELECT max(version) FROM refinery_schema_history"),
        "1"
    );
    assert_eq!(q(&p, "SELECT group_concat(body) FROM notes"), "before V2");
}

#[test]
fn sqlite_a_hook_that_passes_on_the_restart_finishes_the_deploy() {
    let p = Project::new();
    config(
        &p,
        &format!("[hooks]\nafter_migrate = [{:?}]\n", recording_hook(&p)),
    );
    p.migration("V1__a.sql", "CREATE TABLE a (id INTEGER);\n");
    assert_eq!(run(p.dbward(DB).arg("migrate")).0, 0);
    std::fs::write(p.path().join("fail"), "").unwrap();
    p.migration("V2__b.sql", "CREATE TABLE b (id INTEGER);\n");
    assert_eq!(run(p.dbward(DB).arg("migrate")).0, 6);
    std::fs::remove_file(p.path().join("fail")).unwrap();
    let (code, out, err) = run(p.dbward(DB).arg("migrate"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("passed this time"), "{out}");
    // Finished: the guard has nothing against this deploy but the application's answer.
    let server = Http::status(200);
    let (code, _, err) = run(p.dbward(DB).args([
        "health",
        "--restore-on-failure",
        "--timeout",
        "2s",
        "--url",
        &server.url(),
    ]));
    assert_eq!(code, 0, "{err}");
    // And the hooks are done: the next no-op migrate runs none.
    assert_eq!(run(p.dbward(DB).arg("migrate")).0, 0);
    assert_eq!(hook_log(&p).len(), 3);

    // hooks.always runs them with nothing applied.
    config(
        &p,
        &format!(
            "[hooks]\nalways = true\nafter_migrate = [{:?}]\n",
            recording_hook(&p)
        ),
    );
    assert_eq!(run(p.dbward(DB).arg("migrate")).0, 0);
    assert_eq!(
        hook_log(&p).last().unwrap(),
        "url=sqlite:app.db applied= repeatable= snapshot= head=2 secret=none"
    );
}

#[test]
fn postgres_repeatable_views_and_a_refresh_hook() {
    let pg = Pg::start();
    let url = pg.create_db("metrics");
    let p = Project::new();
    let psql = common::pg_bindir().join("psql");
    config(
        &p,
        &format!(
            "[hooks]\nafter_migrate = [\"{} \\\"$DBWARD_DATABASE_URL\\\" -v ON_ERROR_STOP=1 -qc 'REFRESH MATERIALIZED VIEW daily_totals'\"]\n",
            psql.display()
        ),
    );
    p.migration(
        "V1__events.sql",
        "CREATE TABLE events (id bigserial PRIMARY KEY, day date NOT NULL, amount int NOT NULL);\n\
         CREATE MATERIALIZED VIEW daily_totals AS SELECT day, sum(amount) AS total FROM events GROUP BY day;\n",
    )
    // As pg_dump writes a function: the search path emptied first.
    .migration(
        "R__metrics.sql",
        "SELECT pg_catalog.set_config('search_path', '', false);\n\
         CREATE OR REPLACE FUNCTION public.total_on(d date) RETURNS bigint LANGUAGE sql STABLE \
         AS $$ SELECT coalesce(sum(amount), 0) FROM public.events WHERE day = d $$;\n",
    );
    let (code, _, err) = run(p.dbward(&url).arg("migrate"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        pg.psql(
            "metrics",
            "SELECT string_agg(name, ',' ORDER BY name) FROM dbward_repeatable_history"
        ),
        "metrics"
    );
    assert_eq!(
        pg.psql(
            "metrics",
            "SELECT string_agg(version::text, ',') FROM refinery_schema_history"
        ),
        "1"
    );
    pg.psql(
        "metrics",
        "INSERT INTO events (day, amount) VALUES ('2026-11-01', 5), ('2026-11-01', 7)",
    );
    // The function changes (a new version of the metric): re-applied, and the hook refreshes.
    p.migration(
        "R__metrics.sql",
        "SELECT pg_catalog.set_config('search_path', '', false);\n\
         CREATE OR REPLACE FUNCTION public.total_on(d date) RETURNS bigint LANGUAGE sql STABLE \
         AS $$ SELECT coalesce(sum(amount), 0) * 100 FROM public.events WHERE day = d $$;\n",
    );
    let (code, out, err) = run(p.dbward(&url).args(["migrate", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["applied"][0]["repeatable"], "metrics");
    assert_eq!(
        pg.psql("metrics", "SELECT public.total_on('2026-11-01')"),
        "1200"
    );
    assert_eq!(
        pg.psql("metrics", "SELECT total FROM daily_totals"),
        "12",
        "the after-migrate hook refreshed the materialized view"
    );
}

#[test]
fn a_locked_one_off_job_keeps_deploys_out_and_passes_its_exit_code_on() {
    let p = Project::new();
    p.migration("V1__a.sql", "CREATE TABLE a (id INTEGER);\n");
    assert_eq!(run(p.dbward(DB).arg("migrate")).0, 0);
    p.migration("V2__b.sql", "CREATE TABLE b (id INTEGER);\n");
    let started = p.path().join("started");
    let release = p.path().join("release");
    let script = format!(
        "echo \"$DBWARD_DATABASE_URL\" > {0}; while [ ! -e {1} ]; do sleep 0.05; done; exit 7",
        started.display(),
        release.display()
    );
    let mut job = p
        .dbward(DB)
        .args(["locked", "--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    while !started.exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(std::fs::read_to_string(&started).unwrap().trim(), DB);
    let (code, _, err) = run(p.dbward(DB).args(["migrate", "--lock-timeout", "1s"]));
    assert_eq!(code, 4, "a deploy waits for the job: {err}");
    std::fs::write(&release, "").unwrap();
    assert_eq!(job.wait().unwrap().code(), Some(7));
    assert_eq!(
        run(p.dbward(DB).arg("migrate")).0,
        0,
        "the lock is free again"
    );
}

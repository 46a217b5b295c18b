//! The command line: global setting flags (accepted before or after the command name) and the
//! commands of `docs/contract.md`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "dbward",
    version,
    about = "Keeps a production database safe through deploys: atomic migrations, snapshots, restore, drills."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Every setting flag is global: every command accepts it and ignores the ones it does not need.
#[derive(Debug, Default, Clone, Args)]
pub struct GlobalArgs {
    /// Config file (TOML). Default: ./dbward.toml if present.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print one JSON document on stdout (logs stay on stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,

    /// With [[databases]] in the config file: the one to act on [env: DBWARD_DB]
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        env = "DBWARD_DB",
        hide_env = true
    )]
    pub db: Option<String>,
    /// Database URL: sqlite:PATH or postgres://user@host:port/db [env: DBWARD_DATABASE, DATABASE_URL]
    #[arg(long, global = true, value_name = "URL")]
    pub database: Option<String>,
    /// Migrations folder [env: DBWARD_MIGRATIONS] [default: ./migrations]
    #[arg(long, global = true, value_name = "DIR")]
    pub migrations: Option<PathBuf>,
    /// Snapshot store: s3://bucket/prefix or file:///abs/dir [env: DBWARD_STORE] [default: file://./.dbward/snapshots]
    #[arg(long, global = true, value_name = "URL")]
    pub store: Option<String>,
    /// S3 endpoint for R2, MinIO, B2, ... [env: DBWARD_S3_ENDPOINT]
    #[arg(long, global = true, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region [env: AWS_REGION] [default: us-east-1; auto for R2]
    #[arg(long, global = true, value_name = "R")]
    pub s3_region: Option<String>,
    /// Path-style S3 addressing (MinIO, local servers) [env: DBWARD_S3_PATH_STYLE=1]
    #[arg(long, global = true)]
    pub s3_path_style: bool,
    /// Local state directory [env: DBWARD_STATE_DIR] [default: ./.dbward]
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where drills, in-place PostgreSQL restores and backups of non-WAL SQLite databases stage
    /// their files [env: DBWARD_TEMP_DIR]
    /// [config: backup.temp_dir] [default: <state-dir>/tmp]
    #[arg(long, global = true, value_name = "DIR")]
    pub temp_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Lint, lock, refuse on drift, then apply every pending migration in ONE transaction.
    Migrate(MigrateArgs),
    /// Show applied, pending and drifted migrations (exit 3 on drift).
    Status,
    /// The deploy log, newest first: what each migrate applied, who ran it, release, reason,
    /// outcome, and restores by the health guard.
    Deploys,
    /// Adopt a database that already exists: record the migrations up to VERSION as applied,
    /// without running them (only on a database with tables and no migration history).
    Baseline(BaselineArgs),
    /// Check the migrations folder without touching a database (exit 3 on errors).
    Lint,
    /// Run a one-off job (a long backfill) under the migration lock, so no deploy migrates
    /// meanwhile; exits with its code.
    Locked(LockedArgs),
    /// Snapshot the database to the store (kind `manual`).
    Backup(BackupArgs),
    /// List this database's snapshots, newest first.
    Snapshots(SnapshotsArgs),
    /// Apply retention ([retention] keep_last/daily/weekly/monthly) and remove orphans.
    Prune(PruneArgs),
    /// Restore a snapshot (id, `latest` or `pre-deploy`); the replaced database is kept aside.
    Restore(RestoreArgs),
    /// Poll the health endpoint until healthy or timeout; --restore-on-failure restores the
    /// pre-deploy snapshot of a deploy that broke it (exit 5).
    Health(HealthArgs),
    /// Migrate, start CMD, check health: on failure stop CMD and restore (exit 5); otherwise
    /// forward SIGTERM/SIGINT to CMD and exit with its code. The docker-compose entrypoint.
    Run(RunArgs),
    /// Restore a snapshot into a scratch database, check it, time it, remove it (exit 1 if any
    /// check fails).
    RestoreDrill(DrillArgs),
    /// Run the [schedule] jobs (backup, drill, prune) on their cron expressions until SIGTERM.
    Schedule(ScheduleArgs),
    /// The state of every database in the store, from the store alone: last backup and its
    /// age, sizes, drill verdicts and RTO, WAL/stream activity, deploys (--html: a status page).
    Report(ReportArgs),
    /// SQLite: protect every commit, continuously: a base, then each --interval a step of the
    /// pages that changed, in the store and its mirrors (until SIGTERM; `restore --stream`
    /// builds any of those states back).
    Replicate(ReplicateArgs),
    /// PostgreSQL's archive_command (`dbward wal-push %p`): store WAL file PATH in the
    /// archive, compressed (and encrypted when encryption is on); 0 only once it is stored.
    WalPush(WalPushArgs),
    /// PostgreSQL's restore_command (`dbward wal-fetch %f %p`): fetch WAL file NAME into PATH,
    /// checked; exit 1 only when the archive does not have it, 126 when it cannot be fetched.
    WalFetch(WalFetchArgs),
    /// Point-in-time recovery: `pitr verify` checks the WAL archive (PostgreSQL) or the stream
    /// (SQLite).
    #[command(subcommand)]
    Pitr(PitrCommand),
    /// Print the man page or a shell's completion script on stdout (for packagers).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ReplicateArgs {
    /// The shortest time between two steps: a change after a quiet time is shipped at once,
    /// a steady stream of changes in one step each interval.
    #[arg(long, value_name = "DUR", default_value = "500ms", value_parser = parse_duration)]
    pub interval: std::time::Duration,
    /// Ship one step (the base, when the stream must begin) and exit.
    #[arg(long)]
    pub once: bool,
    /// Write Prometheus textfile metrics here after each step: when the newest state in the
    /// primary store was read (its age is the lag), steps, failed steps.
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    pub what: Asset,
    /// With `man`: write every page into DIR (dbward.1, dbward-migrate.1, ...) instead of
    /// dbward(1) to stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Asset {
    /// The man page, dbward(1), in roff (with --dir: every page, dbward-COMMAND(1) too).
    Man,
    Bash,
    Zsh,
    Fish,
}

/// The command line's definition, with the exit codes from the one table in `report`.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let codes = crate::exit::Exit::TABLE
        .iter()
        .map(|e| format!("{} {}", e.code(), e.label()))
        .collect::<Vec<_>>()
        .join(", ");
    Cli::command().after_help(format!(
        "Settings: flag > environment > config file (--config, else ./dbward.toml) > default.\nExit codes: {codes}; run and locked: the command's own."
    ))
}

/// The parsed command line (clap's own error and exit 2 for a bad one).
pub fn parse() -> Cli {
    use clap::FromArgMatches;
    // restore_command: an exit of 1-125 tells PostgreSQL the file is not in the archive (and
    // recovery may end early); a wal-fetch that cannot read its own command line must stop
    // recovery instead (clap's exit is 2). Help and version still exit 0.
    let fail = |e: clap::Error| -> ! {
        if e.use_stderr() && std::env::args_os().any(|a| a == "wal-fetch") {
            let _ = e.print();
            std::process::exit(crate::exit::Exit::WalUnavailable.code().into());
        }
        e.exit()
    };
    let matches = command().try_get_matches().unwrap_or_else(|e| fail(e));
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| fail(e))
}

/// Every man page, by file name: dbward(1) with its EXIT STATUS, ENVIRONMENT, FILES and
/// EXAMPLES, then dbward-COMMAND(1) for each command its SUBCOMMANDS section names (and
/// dbward-pitr-verify(1) below dbward-pitr(1)).
pub fn man_pages() -> Vec<(String, String)> {
    // Without clap's `help` commands: `--help` is every page's option, and the pages say the rest.
    let mut cmd = command()
        .disable_help_subcommand(true)
        .mut_subcommand("pitr", |c| c.disable_help_subcommand(true));
    cmd.build();
    let mut pages = vec![("dbward.1".to_string(), top_page(&cmd))];
    fn below(parent: &str, cmd: &clap::Command, pages: &mut Vec<(String, String)>) {
        // How the command is typed: `dbward restore-drill`, `dbward pitr verify`.
        let typed = cmd.get_bin_name().unwrap_or(cmd.get_name()).to_string();
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("{parent}-{}", sub.get_name());
            let mut out = Vec::new();
            // clap names are `&'static str` (its `string` feature is not built): a page is
            // rendered once, by a process that then exits.
            let page = sub
                .clone()
                .name(&*name.clone().leak())
                .bin_name(format!("{typed} {}", sub.get_name()));
            clap_mangen::Man::new(page)
                .render(&mut out)
                .expect("rendering into memory");
            let mut text = String::from_utf8(out).expect("clap writes UTF-8");
            text.push_str(&format!(
                ".SH \"EXIT STATUS\"\nAs for every command: see \\fBdbward\\fR(1).\n.SH \"SEE ALSO\"\n\\fB{}\\fR(1), /usr/share/doc/dbward/contract.md\n",
                parent.replace('-', "\\-")
            ));
            pages.push((format!("{name}.1"), text));
            below(&name, sub, pages);
        }
    }
    below("dbward", &cmd, &mut pages);
    pages
}

/// dbward(1): clap's page, then what an operator looks up in a man page.
fn top_page(cmd: &clap::Command) -> String {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut out)
        .expect("rendering into memory");
    let mut page = String::from_utf8(out).expect("clap writes UTF-8");
    let item = |term: &str, text: &str| {
        format!(
            ".TP\n\\fB{}\\fR\n{}\n",
            term.replace('-', "\\-"),
            text.replace('-', "\\-")
        )
    };
    page.push_str(".SH \"EXIT STATUS\"\n");
    for e in crate::exit::Exit::TABLE {
        page.push_str(&item(&e.code().to_string(), e.label()));
    }
    page.push_str(&item(
        "run, locked",
        "the command's own code (128 + the signal that ended it)",
    ));
    page.push_str(".SH ENVIRONMENT\nA flag wins over its variable, which mostly wins over the config file (the exceptions, such as STATE_DIRECTORY below the file's state_dir, are in contract.md). The main ones:\n");
    for (var, what) in [
        (
            "DBWARD_DATABASE, DATABASE_URL",
            "the database URL (sqlite:PATH or postgres://...)",
        ),
        (
            "DBWARD_MIGRATE_URL",
            "a direct URL for migrations, when the application's goes through a pooler",
        ),
        ("DBWARD_MIGRATIONS", "the migrations folder"),
        (
            "DBWARD_DB",
            "with [[databases]] in the config file, the one to act on (--db)",
        ),
        (
            "DBWARD_HOST",
            "this host's name in the deploy log, manifests and leases (default: the system's)",
        ),
        (
            "DBWARD_STORE, DBWARD_STORE_MIRRORS",
            "the snapshot store and its mirrors",
        ),
        (
            "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION",
            "S3 credentials and region",
        ),
        (
            "DBWARD_STATE_DIR, STATE_DIRECTORY",
            "the state dir (deploy records)",
        ),
        ("DBWARD_HEALTH_URL", "the health endpoint the guard polls"),
        (
            "DBWARD_RELEASE",
            "the release's name, in the deploy log and for the hooks",
        ),
        (
            "DBWARD_AGE_IDENTITY_FILE, DBWARD_AGE_PASSPHRASE",
            "what opens encrypted snapshots",
        ),
    ] {
        page.push_str(&item(var, what));
    }
    page.push_str(".SH FILES\n");
    for (path, what) in [
        (
            "./dbward.toml",
            "the config file when --config is not given",
        ),
        (
            "/etc/dbward/dbward.toml",
            "the Debian package's config (copy dbward.example.toml)",
        ),
        (
            "/etc/dbward/env",
            "secrets for the package's units: DATABASE_URL, AWS_* keys (mode 0600)",
        ),
        (
            "/var/lib/dbward",
            "the package's state dir: deploy records, failed batches",
        ),
        (
            "./.dbward/",
            "the default state dir and local snapshot store, without a config",
        ),
        (
            "DB.dbward-lock",
            "beside a SQLite database: the migration lock",
        ),
    ] {
        page.push_str(&item(path, what));
    }
    page.push_str(".SH EXAMPLES\n");
    for (example, what) in [
        (
            "dbward --database sqlite:app.db migrate",
            "apply ./migrations to app.db, after a pre-deploy snapshot",
        ),
        (
            "dbward --config /etc/dbward/dbward.toml health --restore-on-failure",
            "the guard after a deploy",
        ),
        (
            "dbward --config /etc/dbward/dbward.toml backup --scheduled",
            "a nightly backup",
        ),
        (
            "dbward --config /etc/dbward/dbward.toml restore-drill --scheduled latest",
            "prove the newest snapshot restores",
        ),
    ] {
        page.push_str(&item(example, what));
    }
    page.push_str(
        ".SH \"SEE ALSO\"\n/usr/share/doc/dbward/README.md, /usr/share/doc/dbward/contract.md\n",
    );
    page
}

/// The man page or a completion script for `what`.
pub fn generate(what: Asset) -> String {
    let mut out = Vec::new();
    let mut cmd = command();
    match what {
        Asset::Man => return man_pages().swap_remove(0).1,
        Asset::Bash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "dbward", &mut out)
        }
        Asset::Zsh => {
            clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, "dbward", &mut out)
        }
        Asset::Fish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, "dbward", &mut out)
        }
    }
    String::from_utf8(out).expect("clap writes UTF-8")
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Print each job's next five run times and exit.
    #[arg(long)]
    pub list: bool,
}

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// A snapshot id, `latest` or `random` (with --physical: a base's id or `latest`).
    #[arg(default_value = "latest")]
    pub snapshot: String,
    /// PostgreSQL: drill a base backup and the WAL archive: restored to the end of the archive
    /// by a private server in the temp dir, checked, then removed; reports RTO and RPO.
    #[arg(long)]
    pub physical: bool,
    /// SQLite: drill the newest state of the stream `dbward replicate` ships, built apart and
    /// checked; reports RTO and RPO.
    #[arg(long, conflicts_with = "physical")]
    pub stream: bool,
    /// Write the JSON report here too.
    #[arg(long, value_name = "FILE")]
    pub report: Option<std::path::PathBuf>,
    /// Write Prometheus textfile metrics here (for node_exporter's textfile collector).
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<std::path::PathBuf>,
    /// A scheduled drill: what timers, cron lines and `dbward schedule` run. With
    /// schedule.once_within, done once per database across hosts
    #[arg(long)]
    pub scheduled: bool,
}

#[derive(Debug, Args)]
pub struct HealthFlags {
    /// Health endpoint, http://host:port/path [env: DBWARD_HEALTH_URL] [config: health.url]
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Give up after this long [config: health.timeout] [default: 60s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Time between polls [config: health.interval] [default: 1s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub interval: Option<std::time::Duration>,
    /// Healthy status codes, comma-separated [config: health.expect_status] [default: any 2xx]
    #[arg(long, value_name = "CODES", value_delimiter = ',')]
    pub expect_status: Vec<u16>,
    /// Text the health answer's body must contain, e.g. the git SHA being deployed
    /// [config: health.expect_body]
    #[arg(long, value_name = "TEXT")]
    pub expect_body: Option<String>,
    /// A command (run with `sh -c`) that must exit 0 once the endpoint is healthy; repeatable
    /// [config: health.checks]
    #[arg(long = "check", value_name = "CMD")]
    pub checks: Vec<String>,
    /// What the guard does with an unhealthy deploy [env: DBWARD_HEALTH_ON_FAILURE]
    /// [config: health.on_failure] [default: restore]
    #[arg(long, value_name = "WHAT")]
    pub on_failure: Option<OnFailure>,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    #[command(flatten)]
    pub flags: HealthFlags,
    /// If unhealthy and the last `migrate` applied migrations (and nobody migrated since),
    /// restore its pre-deploy snapshot and exit 5.
    #[arg(long)]
    pub restore_on_failure: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub health: HealthFlags,
    /// How long CMD gets after SIGTERM before SIGKILL, when it is stopped for being unhealthy.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    pub grace: std::time::Duration,
    /// First restore the newest snapshot if the database is missing (a fresh volume); also
    /// `restore.if_missing = true`.
    #[arg(long)]
    pub restore_if_missing: bool,
    /// SQLite: replicate the database (as `dbward replicate` does) from before the migration,
    /// whose pre-deploy snapshot is then a position of the stream, until the application ends.
    #[arg(long)]
    pub replicate: bool,
    /// The application and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A snapshot id, `latest`, or `pre-deploy` (the one the last `migrate` took). With
    /// --physical: a base's id (recovered to its end) or `latest` (the newest base, recovered
    /// to the end of the archived WAL).
    #[arg(required_unless_present_any = ["time", "lsn", "stream"], conflicts_with_all = ["time", "lsn", "stream"])]
    pub snapshot: Option<String>,
    /// Do not ask for confirmation (required without a terminal).
    #[arg(long)]
    pub yes: bool,
    /// SQLite: restore even if another process has the database open; it keeps writing to the
    /// file moved aside.
    #[arg(long)]
    pub force: bool,
    /// PostgreSQL: end the sessions connected to the database instead of refusing.
    #[arg(long)]
    pub terminate_connections: bool,
    /// Restore into this new SQLite file or PostgreSQL database instead (with --physical: a new
    /// data directory); the live one is not touched.
    #[arg(long, value_name = "PATH|URL|DIR")]
    pub to: Option<String>,
    /// Only if the database is missing (no file, an empty file, no database, no tables):
    /// restore the newest snapshot that verifies; otherwise do nothing. Exit 0 either way.
    #[arg(long)]
    pub if_missing: bool,
    /// PostgreSQL: restore a base backup and replay the WAL archive into a new data directory
    /// (--to DIR), and start a private server on it (its own socket in DIR, archiving off).
    #[arg(long, requires = "to")]
    pub physical: bool,
    /// SQLite: restore the newest state of the stream `dbward replicate` ships (with --time:
    /// the last state read by then), checked, over the database or into --to PATH.
    #[arg(long, conflicts_with_all = ["physical", "if_missing"])]
    pub stream: bool,
    /// With --physical: recover to this time (RFC 3339, e.g. 2026-11-26T09:30:00Z), from the
    /// newest base that ended before it. With --stream: the last state read by then.
    #[arg(long, value_name = "TIME", conflicts_with = "lsn")]
    pub time: Option<String>,
    /// With --physical: recover to this LSN (e.g. 0/4000028).
    #[arg(long, value_name = "LSN", requires = "physical")]
    pub lsn: Option<String>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Show what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum PitrCommand {
    /// Check the WAL archive: each timeline's segments follow one another with no gap (exit 3
    /// if one is missing), and how long ago the newest was stored.
    Verify(PitrVerifyArgs),
}

#[derive(Debug, Args)]
pub struct PitrVerifyArgs {
    /// Also fail (exit 3) when the newest segment was stored longer ago than DUR: a cluster's
    /// archive_timeout plus a margin (65s for 60), where it always has writes to archive.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub max_lag: Option<std::time::Duration>,
    /// Write Prometheus metrics (node_exporter textfile format) to FILE: missing segments,
    /// lag, segments stored; also when a check fails.
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct WalPushArgs {
    /// The WAL file, as PostgreSQL gives it (`%p`, relative to the data directory).
    #[arg(value_name = "PATH")]
    pub path: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub struct WalFetchArgs {
    /// The WAL file's name (`%f`).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Where PostgreSQL wants it (`%p`).
    #[arg(value_name = "PATH")]
    pub path: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// A note stored in the manifest.
    #[arg(long)]
    pub label: Option<String>,
    /// PostgreSQL: a base backup of the whole cluster (pg_basebackup) for point-in-time
    /// recovery, instead of a pg_dump of the database; needs the WAL archive (wal-push).
    #[arg(long)]
    pub physical: bool,
    /// With --physical: only when a base is due (the WAL since the newest base exceeds
    /// pitr.base_max_wal, or there is no base); otherwise exit 0 and take none.
    #[arg(long, requires = "physical")]
    pub if_due: bool,
    /// Mark the snapshot `scheduled`, not `manual`: what timers, cron lines and `dbward
    /// schedule` run (`snapshots` shows the kind; retention treats both alike). With
    /// schedule.once_within, done once per database across hosts
    #[arg(long)]
    pub scheduled: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Write the status page here: one self-contained HTML file (no script, no external asset).
    #[arg(long, value_name = "FILE")]
    pub html: Option<std::path::PathBuf>,
    /// Write Prometheus textfile gauges here: each database's last backup, last drill and its
    /// verdict, WAL and stream activity, as timestamps.
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// Show at most N snapshots.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Print the plan and the lint result; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not take the pre-deploy snapshot.
    #[arg(long)]
    pub no_snapshot: bool,
    /// Apply a batch that the health guard rolled back before (refused otherwise, exit 3).
    #[arg(long)]
    pub retry_failed: bool,
    /// First restore the newest snapshot if the database is missing (a fresh volume); also
    /// `restore.if_missing = true`.
    #[arg(long)]
    pub restore_if_missing: bool,
    /// How long to wait for another migrate run's lock (exit 4 after it), e.g. 30s, 10m.
    #[arg(long, value_name = "DUR", default_value = "10m", value_parser = parse_duration)]
    pub lock_timeout: std::time::Duration,
    /// PostgreSQL: while a dbward backup of the database runs, wait for it (up to
    /// --lock-timeout, progress every 10s) instead of stopping at once (exit 4): DDL would
    /// queue behind the dump's locks and stall the application.
    #[arg(long)]
    pub wait_for_backup: bool,
    /// Why this deploy, for the deploy log (`dbward deploys`); the release comes from
    /// DBWARD_RELEASE.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct LockedArgs {
    /// How long to wait for a migrate run's lock (exit 4 after it), e.g. 30s, 10m.
    #[arg(long, value_name = "DUR", default_value = "10m", value_parser = parse_duration)]
    pub lock_timeout: std::time::Duration,
    /// The job and its arguments, after `--`. It gets DBWARD_DATABASE_URL.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BaselineArgs {
    /// The newest migration the database already holds (V1 = the schema it has today; `1.1`
    /// for a version with parts).
    pub version: String,
}

/// A duration that does not parse (its text, and humantime's reason).
#[derive(Debug, thiserror::Error)]
#[error("`{text}` is not a duration like 30s, 10m, 1h ({reason})")]
pub struct BadDuration {
    text: String,
    reason: humantime::DurationError,
}

pub fn parse_duration(s: &str) -> Result<std::time::Duration, BadDuration> {
    humantime::parse_duration(s).map_err(|reason| BadDuration {
        text: s.to_string(),
        reason,
    })
}

/// What the guard does when a deploy that changed the database is unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Restore the pre-deploy snapshot (the default).
    #[default]
    Restore,
    /// Restore only when the batch was not purely additive (a release still running on the old
    /// schema keeps working on an additive one, and keeps its writes).
    RestoreIfDestructive,
    /// Never restore: say what a restore would discard, exit 1.
    Report,
}

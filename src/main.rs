//! dbward: keeps a production database safe through deploys.
//!
//! This binary parses the command line, resolves settings, and wires the library crates
//! (`dbconn`, `migrator`, `backup`, `restore-drill`) into the commands of `docs/contract.md`:
//! it decides and reports; the libraries act.

mod cli;
mod commands;
mod deploys;
mod exit;
mod hooks;
mod hosts;
mod jobs;
mod notify;
mod probe;
mod replaced;
mod report;
mod service;
mod settings;
mod state;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use tracing::level_filters::LevelFilter;

use cli::Cli;

fn main() -> ExitCode {
    let cli = cli::parse();
    init_logging(cli.global.verbose, cli.global.quiet);
    if matches!(cli.command, cli::Command::WalFetch(_)) {
        // restore_command: a panic's exit (101) would read as "not in the archive".
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            report(info);
            std::process::exit(exit::Exit::WalUnavailable.code().into());
        }));
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a single-threaded tokio runtime always builds");
    let command = commands::name(&cli.command);
    let (result, stopped) = runtime.block_on(run_until_signalled(&cli));
    // What a stopped (or failed) command left half done and queued to undo: a scratch database.
    runtime.block_on(dbconn::cleanup::run_pending(
        std::time::Duration::from_secs(60),
    ));
    if stopped {
        // What the dropped command held is gone; files still held by a blocking thread (a
        // copy in progress) are removed with their run directories, and those threads are not
        // waited for.
        backup::scratch::remove_this_runs();
        runtime.shutdown_background();
    }

    let mut stdout = std::io::stdout().lock();
    let code = match result {
        Ok(report) => {
            let out = if cli.global.json {
                let mut doc = report.json;
                if let serde_json::Value::Object(map) = &mut doc {
                    map.insert("command".into(), command.into());
                    map.insert("ok".into(), (report.code.code() == 0).into());
                    map.insert("exit_code".into(), report.code.code().into());
                }
                format!("{doc:#}\n")
            } else {
                report.text
            };
            let _ = stdout.write_all(out.as_bytes());
            report.code.code()
        }
        Err(failure) => {
            if cli.global.json {
                let _ = writeln!(stdout, "{:#}", failure.to_json(command));
            } else {
                let _ = stdout.write_all(failure.text.as_bytes());
            }
            tracing::error!("{}", failure.full());
            failure.code.code()
        }
    };
    let _ = stdout.flush();
    ExitCode::from(code)
}

/// Runs the command; SIGTERM or SIGINT stops it. Dropping the command's future undoes what is
/// half done: an open transaction is rolled back with its connection, temp files are removed,
/// a snapshot without its manifest never counts. `run`, `schedule` and `restore-drill` handle
/// the signals themselves (forwarding them, ending a job, cleaning a scratch database).
async fn run_until_signalled(cli: &Cli) -> (Result<report::Report, report::Failure>, bool) {
    use tokio::signal::unix::{signal, SignalKind};
    // Registered before any work, for every command: from here on a signal never ends the
    // process with its work half done; the commands that handle signals themselves listen too.
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    if matches!(
        cli.command,
        cli::Command::Run(_)
            | cli::Command::Schedule(_)
            | cli::Command::RestoreDrill(_)
            | cli::Command::Replicate(_)
    ) {
        return (commands::run(cli).await, false);
    }
    let (Ok(mut term), Ok(mut int)) = signals else {
        return (commands::run(cli).await, false);
    };
    let stopped = |sig: &str, code: exit::Exit| {
        let message = match dbconn::committed::get() {
            Some(what) => format!(
                "stopped by {sig} after {what}: that change stands; what came after it (records, cleanup) may be incomplete, and temp files were removed"
            ),
            None => format!(
                "stopped by {sig} before the command finished: an unfinished migration batch is rolled back, temp files are removed, a snapshot without its manifest does not count, and a restore not yet swapped in leaves the database as it was (the log above shows how far it got)"
            ),
        };
        report::Failure::new(code, message)
    };
    let command = commands::run(cli);
    tokio::pin!(command);
    loop {
        let (sig, code) = tokio::select! {
            biased;
            r = &mut command => return (r, false),
            _ = term.recv() => ("SIGTERM", exit::Exit::Terminated),
            _ = int.recv() => ("SIGINT", exit::Exit::Interrupted),
        };
        match dbconn::critical::held() {
            // Cut short here, the database would be left down: the command finishes first.
            Some(what) => tracing::warn!("{sig} received while {what}: finishing that first"),
            None => return (Err(stopped(sig, code)), true),
        }
    }
}

/// Logs go to stderr, plain (systemd's journal adds its own timestamps), coloured on a terminal.
fn init_logging(verbose: u8, quiet: u8) {
    let level = match (verbose, quiet) {
        (0, 0) => LevelFilter::INFO,
        (1, _) => LevelFilter::DEBUG,
        (v, _) if v >= 2 => LevelFilter::TRACE,
        (_, 1) => LevelFilter::WARN,
        _ => LevelFilter::ERROR,
    };
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    // The AWS SDK's credential chain warns about each provider it tries (a screenful of debug
    // text for missing keys); dbward's own error says once what to set. Shown with -v.
    let sdk = if level >= LevelFilter::DEBUG {
        level
    } else {
        LevelFilter::ERROR
    };
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(level)
        .with_target("aws_config", sdk);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false)
                .without_time()
                .with_filter(filter),
        )
        .init();
}

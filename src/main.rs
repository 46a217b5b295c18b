//! dbward: keeps a production database safe through deploys.
//!
//! This binary parses the command line, resolves settings, and wires the library crates
//! (`migrator`, later `backup` and `restore-drill`) into the commands of DESIGN.md.

mod cli;
mod commands;
mod notify;
mod probe;
mod report;
mod settings;
mod state;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use tracing::level_filters::LevelFilter;

use cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.global.verbose, cli.global.quiet);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a single-threaded tokio runtime always builds");
    let command = commands::name(&cli.command);
    let result = runtime.block_on(commands::run(&cli));

    let mut stdout = std::io::stdout().lock();
    let code = match result {
        Ok(report) => {
            let out = if cli.global.json {
                let mut doc = report.json;
                if let serde_json::Value::Object(map) = &mut doc {
                    map.insert("command".into(), command.into());
                    map.insert("ok".into(), (report.code == 0).into());
                    map.insert("exit_code".into(), report.code.into());
                }
                format!("{doc:#}\n")
            } else {
                report.text
            };
            let _ = stdout.write_all(out.as_bytes());
            report.code
        }
        Err(failure) => {
            if cli.global.json {
                let _ = writeln!(stdout, "{:#}", failure.to_json(command));
            } else {
                let _ = stdout.write_all(failure.text.as_bytes());
            }
            tracing::error!("{}", failure.message);
            failure.code
        }
    };
    let _ = stdout.flush();
    ExitCode::from(code)
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
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .with_max_level(level)
        .init();
}

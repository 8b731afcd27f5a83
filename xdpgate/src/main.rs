//! `xdpgate`: the daemon and its command-line tools. This file parses the
//! command line, sets up logging, hands the verb to [`xdpgate::cli`] and
//! turns its outcome into the exit code: 0, 64 (`EX_USAGE`) for invalid
//! input, 1 for any other failure (and for `status`, the health codes of
//! `cli::health::Health`).
use std::process::ExitCode;

use clap::Parser as _;
use xdpgate::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(cli::EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // The daemon's logger; datapath events (aya-log records) are rate limited.
    let logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
            .format_target(false)
            .build();
    let level = logger.filter();
    if log::set_boxed_logger(Box::new(xdpgate::events::RateLimited::new(logger))).is_ok() {
        log::set_max_level(level);
    }
    match cli::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let label = match e {
                cli::CliError::Unhealthy { .. } => "status",
                _ => "error",
            };
            eprintln!("xdpgate: {label}: {}", e.report());
            ExitCode::from(e.exit_code())
        }
    }
}

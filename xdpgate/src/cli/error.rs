//! The command line's errors, and whether each is invalid input (exit 64).
use std::{error::Error as _, path::PathBuf};

use thiserror::Error;
use xdpgate_model::config::ConfigError;

use crate::{
    api::ClientError,
    daemon::run::RunError,
    sys::{SysError, netlink::NetlinkError},
};

/// Exit code for usage and configuration errors (sysexits.h EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// Why a verb failed.
#[derive(Debug, Error)]
pub enum CliError {
    /// A command-line argument or input file the client rejects before
    /// asking the daemon.
    #[error("{0}")]
    BadInput(String),
    /// The daemon refused the request; nothing was changed.
    #[error("{}", .errors.join("\n  "))]
    Refused {
        /// The daemon's errors.
        errors: Vec<String>,
        /// Whether the daemon found the request or its input at fault.
        invalid: bool,
    },
    /// The daemon answered `ok` without a result.
    #[error("bad answer from the daemon: no result")]
    NoResult,
    /// The daemon could not be reached, or its answer not read.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The configuration file of `check` is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `run` failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// Not root (a client verb needs the daemon's root-only socket).
    #[error(transparent)]
    Sys(#[from] SysError),
    /// An input file could not be read.
    #[error("cannot read {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The interfaces could not be listed (`status`).
    #[error("listing interfaces")]
    Links(#[source] NetlinkError),
    /// `down` while a daemon runs.
    #[error(
        "a daemon is running{}: stop it first (`systemctl stop xdpgate`, or SIGTERM), then run `xdpgate down`; stopping it leaves the datapath enforcing",
        .pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    DaemonRunning {
        /// Its pid, when the lock file tells.
        pid: Option<u32>,
    },
    /// The pinned datapath cannot be changed (`down`).
    #[error(transparent)]
    Pins(#[from] crate::datapath::PinError),
    /// The output could not be serialized.
    #[error("cannot write the output: {0}")]
    Output(#[from] serde_json::Error),
    /// `status` found the daemon not healthy; `code` is its exit code
    /// (decided by `cli::health::Health`).
    #[error("{message}")]
    Unhealthy {
        /// The exit code.
        code: u8,
        /// What the code means, with the reason.
        message: String,
    },
}

impl CliError {
    /// Whether the caller's input is at fault ([`EXIT_USAGE`]; any other
    /// error exits 1): the client's own
    /// checks of arguments and files, the daemon's `invalid` flag (decided by
    /// [`DaemonError::is_invalid_input`](crate::daemon::DaemonError::is_invalid_input)),
    /// and for `run` and `check` the same decision taken locally.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            CliError::BadInput(_) | CliError::Config(_) => true,
            CliError::Refused { invalid, .. } => *invalid,
            CliError::Run(e) => e.is_invalid_input(),
            CliError::NoResult
            | CliError::Client(_)
            | CliError::Sys(_)
            | CliError::Read { .. }
            | CliError::Links(_)
            | CliError::DaemonRunning { .. }
            | CliError::Pins(_)
            | CliError::Output(_)
            | CliError::Unhealthy { .. } => false,
        }
    }

    /// The process's exit code: [`EXIT_USAGE`] for invalid input, the
    /// health's own code for `status`, 1 for any other failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Unhealthy { code, .. } => *code,
            e if e.is_invalid_input() => EXIT_USAGE,
            _ => 1,
        }
    }

    /// The message for stderr: the error, then each cause not already part
    /// of the message before it, joined by `": "`.
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        let mut cause = self.source();
        while let Some(c) = cause {
            let text = c.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            cause = c.source();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::daemon::DaemonError;

    fn io_error() -> io::Error {
        io::Error::from_raw_os_error(libc::ENOENT)
    }

    /// Every variant of [`CliError`] (and of [`RunError`], which `run`
    /// returns), by name, with whether it is invalid input (exit 64) or not
    /// (exit 1).
    #[test]
    fn invalid_input_table() {
        let table: Vec<(&str, CliError, bool)> = vec![
            ("BadInput", CliError::BadInput("x".into()), true),
            (
                "Refused(invalid)",
                CliError::Refused {
                    errors: vec!["x".into()],
                    invalid: true,
                },
                true,
            ),
            (
                "Refused(not invalid)",
                CliError::Refused {
                    errors: vec!["x".into()],
                    invalid: false,
                },
                false,
            ),
            ("NoResult", CliError::NoResult, false),
            (
                "Client(Connect)",
                ClientError::Connect {
                    path: "/s".into(),
                    source: io_error(),
                }
                .into(),
                false,
            ),
            (
                "Config",
                ConfigError::Read {
                    path: "/c".into(),
                    source: io_error(),
                }
                .into(),
                true,
            ),
            (
                "Sys",
                SysError::NotRoot {
                    what: "xdpgate acl",
                }
                .into(),
                false,
            ),
            (
                "Read",
                CliError::Read {
                    path: "/f".into(),
                    source: io_error(),
                },
                false,
            ),
            (
                "Links",
                CliError::Links(NetlinkError::Malformed("x")),
                false,
            ),
            (
                "Output",
                serde_json::from_str::<u8>("x").unwrap_err().into(),
                false,
            ),
            (
                "Run(Config)",
                RunError::Config(ConfigError::Read {
                    path: "/c".into(),
                    source: io_error(),
                })
                .into(),
                true,
            ),
            (
                "Run(Daemon(NoInterface))",
                RunError::Daemon(DaemonError::NoInterface).into(),
                true,
            ),
            (
                "Run(Daemon(Datapath))",
                RunError::Daemon(DaemonError::Datapath(
                    crate::datapath::DatapathError::Missing("m".into()),
                ))
                .into(),
                false,
            ),
            (
                "Run(Sys)",
                RunError::Sys(SysError::NotRoot {
                    what: "xdpgate run",
                })
                .into(),
                false,
            ),
            ("Run(Runtime)", RunError::Runtime(io_error()).into(), false),
            (
                "Run(Signal)",
                RunError::Signal("SIGHUP", io_error()).into(),
                false,
            ),
            (
                "Run(Metrics)",
                RunError::Metrics {
                    addr: "127.0.0.1:9464".parse().unwrap(),
                    source: io_error().into(),
                }
                .into(),
                false,
            ),
            (
                "Run(Api)",
                RunError::Api(crate::api::ApiError::Unsafe {
                    path: "/s".into(),
                    why: "x".into(),
                })
                .into(),
                false,
            ),
            (
                "DaemonRunning",
                CliError::DaemonRunning { pid: Some(7) },
                false,
            ),
            (
                "Pins",
                CliError::Pins(crate::datapath::PinError::Busy("/p".into())),
                false,
            ),
            (
                "Unhealthy",
                CliError::Unhealthy {
                    code: 3,
                    message: "not running".into(),
                },
                false,
            ),
        ];
        for (name, e, invalid) in table {
            assert_eq!(e.is_invalid_input(), invalid, "{name}: {e}");
            // The exit code follows: 64 for invalid input, else 1, except
            // the health codes of `status`.
            let code = match &e {
                CliError::Unhealthy { code, .. } => *code,
                _ if invalid => EXIT_USAGE,
                _ => 1,
            };
            assert_eq!(e.exit_code(), code, "{name}");
        }
    }

    /// Causes are appended once: a cause already in the message is not
    /// repeated (`ConfigError::Read` shows its OS error itself).
    #[test]
    fn report_appends_each_cause_once() {
        let e = CliError::from(ConfigError::Read {
            path: "/c.toml".into(),
            source: io_error(),
        });
        assert_eq!(
            e.report(),
            "cannot read config file /c.toml: No such file or directory (os error 2)"
        );
        let e = CliError::from(ClientError::Connect {
            path: "/run/xdpgate/xdpgate.sock".into(),
            source: io_error(),
        });
        assert_eq!(
            e.report(),
            "no running xdpgate daemon reachable at /run/xdpgate/xdpgate.sock (start one with \
             `xdpgate run`, or pass the daemon's --run-dir): No such file or directory (os error 2)"
        );
        let e = CliError::Read {
            path: "/rules.toml".into(),
            source: io_error(),
        };
        assert_eq!(
            e.report(),
            "cannot read /rules.toml: No such file or directory (os error 2)"
        );
        let e = CliError::from(RunError::Runtime(io_error()));
        assert_eq!(
            e.report(),
            "cannot start the async runtime: No such file or directory (os error 2)"
        );
    }
}

//! The command line: every verb of `xdpgate`, one file per verb group, each
//! parsing its arguments, sending its request through the [`api`](crate::api)
//! client and printing the typed answer through [`render`], as text or JSON.
//! [`dispatch`] runs the verb; [`CliError::is_invalid_input`] decides its exit
//! code.
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use serde::de::DeserializeOwned;
use xdpgate_model::{
    acl::{Change, Verdict},
    iface::{Malformed, XdpMode},
};

use crate::{
    api::{self, Request, protocol::Applied},
    daemon::Overrides,
    paths::{DEFAULT_BPFFS_DIR, DEFAULT_RUN_DIR, Paths},
};

pub mod acl;
pub mod bind;
pub mod down;
pub mod error;
pub mod health;
pub mod lb;
pub mod policy;
pub mod reload;
pub mod render;
pub mod set;
pub mod status;

pub use acl::AclCmd;
pub use bind::BindCmd;
pub use error::{CliError, EXIT_USAGE};
pub use lb::LbCmd;
pub use set::SetCmd;

/// xdpgate: an XDP packet gate for dual-stack servers.
#[derive(Debug, Parser)]
#[command(name = "xdpgate", version, about, long_about = None)]
pub struct Cli {
    /// Directory under bpffs where the daemon pins its maps.
    #[arg(long, global = true, env = "XDPGATE_BPFFS_DIR", default_value = DEFAULT_BPFFS_DIR)]
    bpffs_dir: PathBuf,
    /// Runtime directory of the daemon (lock file).
    #[arg(long, global = true, env = "XDPGATE_RUN_DIR", default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: load the XDP program, attach it to every interface of the
    /// config file and of --iface, serve the control API and the metrics, until
    /// SIGINT or SIGTERM; SIGHUP reloads the config file.
    Run {
        /// Configuration file (TOML; see deploy/xdpgate.toml). Flags override it.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// Interface to attach to (repeat for several); replaces the config's list.
        #[arg(long = "iface", short = 'i', value_name = "IF")]
        ifaces: Vec<String>,
        /// XDP attach mode of every interface (default native). There is no
        /// fallback: if the mode cannot attach, xdpgate fails.
        #[arg(long, value_enum)]
        mode: Option<Mode>,
        /// What to do with malformed packets (truncated or inconsistent headers;
        /// default drop). Either way they are counted per drop reason.
        #[arg(long, value_enum)]
        malformed: Option<MalformedPolicy>,
        /// Rule file (TOML: sets, rules, policies) replacing the config's sets and rules.
        #[arg(long, value_name = "RULES.toml")]
        acl_file: Option<PathBuf>,
        /// Metrics listen address (repeat; replaces the config's list; default
        /// 127.0.0.1:9464 and [::1]:9464).
        #[arg(long = "metrics-listen", value_name = "ADDR:PORT")]
        metrics_listen: Vec<std::net::SocketAddr>,
        /// Serve no metrics.
        #[arg(long, conflicts_with = "metrics_listen")]
        no_metrics: bool,
        /// Where runtime changes are saved (default /var/lib/xdpgate/state.json).
        #[arg(long, env = "XDPGATE_STATE_FILE", value_name = "FILE")]
        state_file: Option<PathBuf>,
        /// Backend role of the load balancer: decapsulate IPIP, IP6IP6,
        /// IPv4-in-IPv6 and IPv6-in-IPv4 packets addressed to the interfaces'
        /// own addresses in XDP and pass the inner packet to the stack (no
        /// tunnel module needed). Same as `decap = true` on every [[interface]].
        #[arg(long)]
        decap: bool,
    },
    /// Validate a configuration file without touching the kernel; print every
    /// error with its line and column.
    Check {
        /// The configuration file.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },
    /// Make the running daemon re-read its configuration file (like SIGHUP).
    /// A file that fails validation or cannot be applied changes nothing.
    Reload,
    /// Address bindings: add or remove addresses on an interface, list them.
    Bind {
        /// What to do with them.
        #[command(subcommand)]
        cmd: BindCmd,
    },
    /// Rules: add, delete, list (with counters), replace from a file.
    Acl {
        /// What to do with them.
        #[command(subcommand)]
        cmd: AclCmd,
    },
    /// Prefix sets: add and delete prefixes, list sets.
    Set {
        /// What to do with them.
        #[command(subcommand)]
        cmd: SetCmd,
    },
    /// Set an interface's default policy (what happens when no rule matches).
    Policy {
        /// Interface.
        iface: String,
        /// allow or deny.
        #[arg(value_enum)]
        verdict: VerdictArg,
    },
    /// Load balancing: services (VIP, protocol, port) and their backends.
    Lb {
        /// What to do with them.
        #[command(subcommand)]
        cmd: LbCmd,
    },
    /// Take xdpgate off the interfaces: detach its pinned links and remove its
    /// pins. Stopping the daemon does not do this: the datapath goes on
    /// enforcing the last committed state until `down`. Stop the daemon first.
    Down {
        /// Only this interface (its link; the maps and the other interfaces stay).
        #[arg(long = "iface", short = 'i', value_name = "IF")]
        iface: Option<String>,
    },
    /// Show which interfaces carry xdpgate or another XDP program, in which
    /// mode, with which program id; whether xdpgate enforces with or without a
    /// running daemon, its schema, program tag and since when.
    ///
    /// Exit codes (a health check): 0 the daemon runs and enforces, its
    /// state is saved; 1 error (a daemon holds the lock but does not answer);
    /// 2 degraded: the daemon enforces but the state in force is not saved
    /// ("state not saved: REASON"; a restart would lose it); 3 not running:
    /// no daemon and nothing of xdpgate enforces; 4 no daemon, but the pinned
    /// datapath still enforces its last state; 64 invalid input. Warnings
    /// (an interface the state file names but the configuration does not)
    /// are printed and do not change the code.
    Status {
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Show packets and bytes per interface, family and action, summed over all CPUs.
    Stats {
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// allow or deny.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum VerdictArg {
    /// Pass.
    Allow,
    /// Drop.
    Deny,
}

impl From<VerdictArg> for Verdict {
    fn from(v: VerdictArg) -> Self {
        match v {
            VerdictArg::Allow => Verdict::Allow,
            VerdictArg::Deny => Verdict::Deny,
        }
    }
}

/// `--mode`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Mode {
    /// Driver (native) XDP.
    Native,
    /// Generic XDP in the kernel stack; works on any interface, slower.
    Skb,
    /// Hardware offload; needs a NIC with XDP offload.
    Hw,
}

impl From<Mode> for XdpMode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Native => XdpMode::Native,
            Mode::Skb => XdpMode::Skb,
            Mode::Hw => XdpMode::Hw,
        }
    }
}

/// `--malformed`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum MalformedPolicy {
    /// Drop them.
    Drop,
    /// Pass them to the kernel stack.
    Pass,
}

impl From<MalformedPolicy> for Malformed {
    fn from(m: MalformedPolicy) -> Self {
        match m {
            MalformedPolicy::Drop => Malformed::Drop,
            MalformedPolicy::Pass => Malformed::Pass,
        }
    }
}

/// `--output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned text for people.
    Text,
    /// JSON for scripts.
    Json,
}

/// Sends a request and reads the verb's answer `T`; fails with the daemon's
/// errors listed if it refused.
pub fn call<T: DeserializeOwned>(paths: &Paths, req: &Request) -> Result<T, CliError> {
    let resp = api::call::<T>(&paths.socket(), req)?;
    if !resp.ok {
        return Err(CliError::Refused {
            errors: resp.errors,
            invalid: resp.invalid,
        });
    }
    resp.result.ok_or(CliError::NoResult)
}

/// Sends an ACL change and prints what was installed.
pub fn apply(paths: &Paths, change: Change) -> Result<(), CliError> {
    let applied: Applied = call(paths, &Request::Apply { change })?;
    print!("{}", render::applied(&applied));
    Ok(())
}

/// Prints `value` as JSON (`-o json`).
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<(), CliError> {
    println!("{}", render::json(value)?);
    Ok(())
}

/// Runs the verb `cli` names. The caller turns an error into the exit code
/// with [`CliError::is_invalid_input`].
pub fn dispatch(cli: Cli) -> Result<(), CliError> {
    let paths = Paths {
        bpffs_dir: cli.bpffs_dir,
        run_dir: cli.run_dir,
    };
    // The daemon's socket is root's (mode 0600): say so rather than fail to connect.
    let client = match &cli.command {
        Command::Acl { .. } => Some("xdpgate acl"),
        Command::Set { .. } => Some("xdpgate set"),
        Command::Policy { .. } => Some("xdpgate policy"),
        Command::Bind { .. } => Some("xdpgate bind"),
        Command::Lb { .. } => Some("xdpgate lb"),
        Command::Stats { .. } => Some("xdpgate stats"),
        Command::Reload => Some("xdpgate reload"),
        _ => None,
    };
    if let Some(what) = client {
        crate::sys::require_root(what)?;
    }
    match cli.command {
        Command::Run {
            config,
            ifaces,
            mode,
            malformed,
            acl_file,
            metrics_listen,
            no_metrics,
            state_file,
            decap,
        } => {
            let overrides = Overrides {
                ifaces,
                mode: mode.map(Into::into),
                malformed: malformed.map(Into::into),
                metrics_listen,
                no_metrics,
                state_file,
                acl_file,
                decap,
            };
            Ok(crate::daemon::run::run(
                &paths,
                config.as_deref(),
                overrides,
            )?)
        }
        Command::Check { config } => reload::check(&config),
        Command::Reload => reload::reload(&paths),
        Command::Bind { cmd } => bind::bind_cmd(&paths, cmd),
        Command::Lb { cmd } => lb::lb_cmd(&paths, cmd),
        Command::Acl { cmd } => acl::acl_cmd(&paths, cmd),
        Command::Set { cmd } => set::set_cmd(&paths, cmd),
        Command::Policy { iface, verdict } => policy::policy(&paths, iface, verdict),
        Command::Down { iface } => down::down(&paths, iface.as_deref()),
        Command::Status { output } => status::status(&paths, output),
        Command::Stats { output } => status::stats(&paths, output),
    }
}

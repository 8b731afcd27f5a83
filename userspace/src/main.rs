//! `xdpgate`: the daemon and its command-line tools.
use std::{collections::HashMap, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use xdpgate::{
    datapath::{Datapath, Malformed},
    netlink::{self, XdpMode},
    paths::{DEFAULT_BPFFS_DIR, DEFAULT_RUN_DIR, Paths},
    stats,
    sys::{self, DaemonLock},
};
use xdpgate_common::PROGRAM_NAME;

/// Exit code for usage and configuration errors (sysexits.h EX_USAGE).
const EXIT_USAGE: u8 = 64;

/// xdpgate: an XDP packet gate for dual-stack servers.
#[derive(Debug, Parser)]
#[command(name = "xdpgate", version, about, long_about = None)]
struct Cli {
    /// Directory under bpffs where the daemon pins its maps.
    #[arg(long, global = true, env = "XDPGATE_BPFFS_DIR", default_value = DEFAULT_BPFFS_DIR)]
    bpffs_dir: PathBuf,
    /// Runtime directory of the daemon (lock file).
    #[arg(long, global = true, env = "XDPGATE_RUN_DIR", default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: load the XDP program, attach it to every --iface, count
    /// traffic until SIGINT or SIGTERM, then detach and exit.
    Run {
        /// Interface to attach to (repeat for several).
        #[arg(long = "iface", short = 'i', required = true, value_name = "IF")]
        ifaces: Vec<String>,
        /// XDP attach mode. There is no fallback: if the mode cannot attach, xdpgate fails.
        #[arg(long, value_enum, default_value_t = Mode::Native)]
        mode: Mode,
        /// What to do with malformed packets (truncated or inconsistent headers).
        /// Either way they are counted per drop reason.
        #[arg(long, value_enum, default_value_t = MalformedPolicy::Drop)]
        malformed: MalformedPolicy,
    },
    /// Show which interfaces carry xdpgate or another XDP program, in which mode, with which program id.
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

/// `--mode`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
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
enum MalformedPolicy {
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
enum Output {
    /// Aligned text for people.
    Text,
    /// JSON for scripts.
    Json,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let paths = Paths {
        bpffs_dir: cli.bpffs_dir,
        run_dir: cli.run_dir,
    };
    let result = match cli.command {
        Command::Run {
            ifaces,
            mode,
            malformed,
        } => run(&paths, &ifaces, mode.into(), malformed.into()),
        Command::Status { output } => status(&paths, output),
        Command::Stats { output } => show_stats(&paths, output),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xdpgate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    paths: &Paths,
    ifaces: &[String],
    mode: XdpMode,
    malformed: Malformed,
) -> anyhow::Result<()> {
    sys::require_root("xdpgate run")?;
    sys::require_bpffs(paths.bpffs_mount())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        // Install signal handlers before attaching, so a signal that arrives right
        // after the program is attached still detaches it cleanly.
        let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let _lock = DaemonLock::acquire(&paths.run_dir, &paths.lock_file())?;
        let datapath = Datapath::start(paths, ifaces, mode, malformed)?;
        for a in datapath.attached() {
            log::info!(
                "attached to {} (ifindex {}) in {} mode, program id {}",
                a.iface,
                a.ifindex,
                a.mode.name(),
                a.prog_id
            );
        }
        log::info!(
            "xdpgate ready on {} interface(s); maps pinned in {}; SIGINT or SIGTERM stops",
            datapath.attached().len(),
            paths.bpffs_dir.display()
        );

        let root = CancellationToken::new();
        let tracker = TaskTracker::new();
        let token = root.clone();
        tracker.spawn(async move {
            let name = tokio::select! {
                _ = sigterm.recv() => "SIGTERM",
                _ = sigint.recv() => "SIGINT",
                _ = token.cancelled() => return,
            };
            log::info!("{name} received, detaching");
            token.cancel();
        });
        tracker.close();
        root.cancelled().await;
        tracker.wait().await;

        let n = datapath.attached().len();
        datapath.shutdown().context("detaching")?;
        log::info!("detached from {n} interface(s), maps unpinned");
        Ok(())
    })
}

#[derive(serde::Serialize)]
struct StatusInterface {
    interface: String,
    ifindex: u32,
    mode: &'static str,
    prog_id: u32,
    program: Option<String>,
    xdpgate: bool,
}

fn status(paths: &Paths, output: Output) -> anyhow::Result<()> {
    let links = netlink::links().context("listing interfaces")?;
    // Program names need CAP_SYS_ADMIN; without it they stay unknown.
    let names: HashMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_owned()))
        .collect();
    let mut rows = Vec::new();
    for link in &links {
        for a in &link.xdp {
            let program = names.get(&a.prog_id).cloned();
            rows.push(StatusInterface {
                interface: link.name.clone(),
                ifindex: link.ifindex,
                mode: a.mode.name(),
                prog_id: a.prog_id,
                xdpgate: program.as_deref() == Some(PROGRAM_NAME),
                program,
            });
        }
    }
    let daemon = DaemonLock::holder(&paths.lock_file());
    match output {
        Output::Json => {
            let doc = serde_json::json!({
                "daemon": {
                    "running": daemon.is_some(),
                    "pid": daemon,
                    "run_dir": paths.run_dir,
                    "bpffs_dir": paths.bpffs_dir,
                },
                "interfaces": rows,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Text => {
            match daemon {
                Some(pid) => println!(
                    "daemon: running (pid {pid}), maps pinned in {}",
                    paths.bpffs_dir.display()
                ),
                None => println!(
                    "daemon: not running (no lock held in {})",
                    paths.run_dir.display()
                ),
            }
            if rows.is_empty() {
                println!("no interface in this network namespace has an XDP program");
                return Ok(());
            }
            let w = rows
                .iter()
                .map(|r| r.interface.len())
                .max()
                .unwrap_or(0)
                .max(9);
            println!(
                "{:<w$}  {:>7}  {:<6}  {:>7}  {:<16}  OWNER",
                "INTERFACE", "IFINDEX", "MODE", "PROG_ID", "PROGRAM"
            );
            for r in rows {
                println!(
                    "{:<w$}  {:>7}  {:<6}  {:>7}  {:<16}  {}",
                    r.interface,
                    r.ifindex,
                    r.mode,
                    r.prog_id,
                    r.program.as_deref().unwrap_or("?"),
                    if r.xdpgate { "xdpgate" } else { "other" }
                );
            }
        }
    }
    Ok(())
}

fn show_stats(paths: &Paths, output: Output) -> anyhow::Result<()> {
    sys::require_root("xdpgate stats")?;
    let rows = stats::read(paths)?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Text => print!("{}", stats::render(&rows)),
    }
    Ok(())
}

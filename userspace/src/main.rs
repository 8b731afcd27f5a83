//! `xdpgate`: the daemon and its command-line tools.
use std::{collections::HashMap, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use std::sync::{Arc, Mutex};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use xdpgate::{
    acl::{AclState, Change, Rule, RuleFile, Verdict, model::proto},
    api::{self, Request, Shared},
    control::AclController,
    datapath::{Datapath, Malformed},
    netlink::{self, XdpMode},
    paths::{DEFAULT_BPFFS_DIR, DEFAULT_RUN_DIR, Paths},
    stats,
    sys::{self, DaemonLock},
};
use xdpgate_common::PROGRAM_NAME;

/// Exit code for usage and configuration errors (sysexits.h EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// How long shutdown waits for tasks before detaching anyway.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

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
        /// Rule file (TOML: sets, rules, policies) to install at start.
        #[arg(long, value_name = "RULES.toml")]
        acl_file: Option<PathBuf>,
    },
    /// Rules: add, delete, list (with counters), replace from a file.
    Acl {
        #[command(subcommand)]
        cmd: AclCmd,
    },
    /// Prefix sets: add and delete prefixes, list sets.
    Set {
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

#[derive(Debug, Subcommand)]
enum AclCmd {
    /// Add a rule.
    Add(RuleArgs),
    /// Delete rules by id.
    Del {
        /// Rule ids.
        #[arg(required = true)]
        ids: Vec<u32>,
    },
    /// List rules in evaluation order with their counters.
    List {
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Replace every set, rule and policy with the contents of a TOML file.
    Replace {
        /// The rule file.
        #[arg(long)]
        file: PathBuf,
    },
}

/// The fields of one rule (see README, "ACL").
#[derive(Debug, clap::Args)]
struct RuleArgs {
    /// Unique id.
    #[arg(long)]
    id: u32,
    /// Lower is evaluated first; ties by id.
    #[arg(long)]
    priority: u32,
    /// Source prefix or @set.
    #[arg(long)]
    src: Option<String>,
    /// Destination prefix or @set.
    #[arg(long)]
    dst: Option<String>,
    /// Protocol: tcp, udp, sctp, icmp, icmpv6 or a number.
    #[arg(long)]
    proto: Option<String>,
    /// Source port or range A-B.
    #[arg(long)]
    sport: Option<String>,
    /// Destination port or range A-B.
    #[arg(long)]
    dport: Option<String>,
    /// ICMP or ICMPv6 type.
    #[arg(long)]
    icmp_type: Option<u8>,
    /// ICMP or ICMPv6 code.
    #[arg(long)]
    icmp_code: Option<u8>,
    /// Ingress interface.
    #[arg(long)]
    iface: Option<String>,
    /// allow or deny.
    #[arg(long, value_enum)]
    action: VerdictArg,
}

#[derive(Debug, Subcommand)]
enum SetCmd {
    /// Add prefixes to a set (created if needed).
    Add {
        /// Set name.
        name: String,
        /// Prefixes of either family.
        prefixes: Vec<String>,
        /// Also read prefixes from a file, one per line (# comments allowed).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Delete prefixes from a set, or the whole set when none are given.
    Del {
        /// Set name.
        name: String,
        /// Prefixes to remove.
        prefixes: Vec<String>,
    },
    /// List sets, or the prefixes of one set.
    List {
        /// One set.
        name: Option<String>,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// allow or deny.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum VerdictArg {
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
            acl_file,
        } => run(
            &paths,
            &ifaces,
            mode.into(),
            malformed.into(),
            acl_file.as_deref(),
        ),
        Command::Acl { cmd } => acl_cmd(&paths, cmd),
        Command::Set { cmd } => set_cmd(&paths, cmd),
        Command::Policy { iface, verdict } => apply(
            &paths,
            Change::Policy {
                iface,
                verdict: verdict.into(),
            },
        ),
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
    acl_file: Option<&std::path::Path>,
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
        let initial = match acl_file {
            Some(f) => read_rule_file(f)?,
            None => AclState::default(),
        };
        let _lock = DaemonLock::acquire(&paths.run_dir, &paths.lock_file())?;
        let mut datapath = Datapath::start(paths, ifaces, mode, malformed)?;
        if let Some(n) = datapath.verified_instructions() {
            log::info!("program verified: {n} instructions processed (kernel limit 1000000)");
        }
        let slots = ifaces
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), i as u32 + 1))
            .collect();
        let mut ctl = AclController::new(slots);
        let applied = ctl
            .install(&mut datapath, initial)
            .context("installing the initial rule set")?;
        log::info!(
            "ACL installed: {} rules, {} prefixes",
            applied.rules,
            applied.prefixes
        );
        let listener = api::bind(&paths.socket())?;
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
        let shared = Arc::new(Mutex::new(Shared { dp: datapath, ctl }));
        tracker.spawn(api::serve(listener, shared.clone(), root.child_token()));
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
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            log::warn!("tasks still running after {SHUTDOWN_GRACE:?}; detaching anyway");
        }
        let _ = std::fs::remove_file(paths.socket());
        let mut shared = shared.lock().unwrap_or_else(|e| e.into_inner());
        let n = shared.dp.attached().len();
        shared.dp.detach_all().context("detaching")?;
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

fn read_rule_file(path: &std::path::Path) -> anyhow::Result<AclState> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read rule file {}", path.display()))?;
    let file: RuleFile =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    AclState::from_file(&file).map_err(|errs| {
        anyhow::anyhow!(
            "{}: {}",
            path.display(),
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )
    })
}

/// Sends a request; fails with the daemon's errors listed.
fn call(paths: &Paths, req: &Request) -> anyhow::Result<serde_json::Value> {
    let resp = api::call(&paths.socket(), req)?;
    if !resp.ok {
        anyhow::bail!("{}", resp.errors.join("\n  "));
    }
    Ok(resp.result.unwrap_or_default())
}

fn apply(paths: &Paths, change: Change) -> anyhow::Result<()> {
    let r = call(paths, &Request::Apply { change })?;
    println!(
        "applied: {} rules, {} prefixes installed (compile {}, install {})",
        r["rules"],
        r["prefixes"],
        fmt_duration(&r["compile"]),
        fmt_duration(&r["install"])
    );
    Ok(())
}

fn fmt_duration(v: &serde_json::Value) -> String {
    let secs = v["secs"].as_f64().unwrap_or(0.0) + v["nanos"].as_f64().unwrap_or(0.0) / 1e9;
    format!("{:.1} ms", secs * 1e3)
}

fn rule_of(a: RuleArgs) -> anyhow::Result<Rule> {
    fn parse<T: std::str::FromStr<Err = xdpgate::acl::AclError>>(
        s: Option<String>,
    ) -> anyhow::Result<Option<T>> {
        s.map(|s| {
            s.parse()
                .map_err(|e: xdpgate::acl::AclError| anyhow::anyhow!(e))
        })
        .transpose()
    }
    Ok(Rule {
        id: a.id,
        priority: a.priority,
        src: parse(a.src)?,
        dst: parse(a.dst)?,
        proto: a
            .proto
            .map(|p| proto::parse(&p))
            .transpose()
            .map_err(|e| anyhow::anyhow!(e))?,
        sport: parse(a.sport)?,
        dport: parse(a.dport)?,
        icmp_type: a.icmp_type,
        icmp_code: a.icmp_code,
        iface: a.iface,
        action: a.action.into(),
    })
}

fn acl_cmd(paths: &Paths, cmd: AclCmd) -> anyhow::Result<()> {
    match cmd {
        AclCmd::Add(args) => apply(
            paths,
            Change::RuleAdd {
                rules: vec![rule_of(args)?],
            },
        ),
        AclCmd::Del { ids } => apply(paths, Change::RuleDel { ids }),
        AclCmd::Replace { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let file: RuleFile = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
            apply(paths, Change::Replace { file })
        }
        AclCmd::List { output } => {
            let r = call(paths, &Request::AclList)?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            println!(
                "{:>10}  {:<6}  {:>14}  {:>16}  MATCH",
                "ID", "ACTION", "PACKETS", "BYTES"
            );
            for row in r["rules"].as_array().into_iter().flatten() {
                let mut fields = row.clone();
                if let Some(o) = fields.as_object_mut() {
                    o.remove("packets");
                    o.remove("bytes");
                }
                let rule: Rule = serde_json::from_value(fields)?;
                println!(
                    "{:>10}  {:<6}  {:>14}  {:>16}  {}",
                    rule.id,
                    rule.action.to_string(),
                    row["packets"],
                    row["bytes"],
                    api::describe(&rule)
                );
            }
            for d in r["defaults"].as_array().into_iter().flatten() {
                println!(
                    "{:>10}  {:<6}  {:>14}  {:>16}  default policy of {}",
                    "-",
                    d["policy"].as_str().unwrap_or("?"),
                    d["packets"],
                    d["bytes"],
                    d["iface"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }
    }
}

fn set_cmd(paths: &Paths, cmd: SetCmd) -> anyhow::Result<()> {
    match cmd {
        SetCmd::Add {
            name,
            mut prefixes,
            file,
        } => {
            if let Some(f) = file {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("cannot read {}", f.display()))?;
                let before = prefixes.len();
                prefixes.extend(
                    text.lines()
                        .map(|l| l.split('#').next().unwrap_or("").trim())
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned),
                );
                eprintln!(
                    "read {} prefixes from {}; sending to the daemon",
                    prefixes.len() - before,
                    f.display()
                );
            }
            if prefixes.is_empty() {
                anyhow::bail!("no prefixes given");
            }
            apply(paths, Change::SetAdd { name, prefixes })
        }
        SetCmd::Del { name, prefixes } => apply(paths, Change::SetDel { name, prefixes }),
        SetCmd::List { name, output } => {
            let r = call(paths, &Request::SetList { name: name.clone() })?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else if name.is_some() {
                for p in r["prefixes"].as_array().into_iter().flatten() {
                    println!("{}", p.as_str().unwrap_or(""));
                }
            } else {
                println!("{:<24}  {:>9}  {:>9}  USED BY", "SET", "IPV4", "IPV6");
                for s in r["sets"].as_array().into_iter().flatten() {
                    println!(
                        "{:<24}  {:>9}  {:>9}  {}",
                        s["name"].as_str().unwrap_or(""),
                        s["ipv4"],
                        s["ipv6"],
                        s["used_by"]
                    );
                }
            }
            Ok(())
        }
    }
}

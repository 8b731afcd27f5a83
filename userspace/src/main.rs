//! `xdpgate`: the daemon and its command-line tools.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use std::sync::{Arc, Mutex};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use xdpgate::{
    acl::{Change, Rule, RuleFile, Verdict, model::proto},
    api::{self, Request},
    bind::BindRequest,
    config::{self, Config, ConfigError},
    daemon::{self, Daemon, DaemonError, Overrides},
    datapath::Malformed,
    listen, metrics,
    netlink::{self, XdpMode},
    paths::{DEFAULT_BPFFS_DIR, DEFAULT_RUN_DIR, Paths},
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
        #[command(subcommand)]
        cmd: BindCmd,
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
    /// Load balancing: services (VIP, protocol, port) and their backends.
    Lb {
        #[command(subcommand)]
        cmd: LbCmd,
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
enum BindCmd {
    /// Bind addresses: each SPEC is an address, a prefix (every address in it)
    /// or a range A-B. Addresses already on the interface are adopted.
    Add {
        /// Addresses, prefixes or ranges.
        #[arg(required = true, value_name = "SPEC")]
        specs: Vec<String>,
        /// Interface (one the daemon is attached to).
        #[arg(long, short = 'i', value_name = "IF")]
        iface: String,
        /// On-link prefix length of each address (default 32 or 128).
        #[arg(long)]
        plen: Option<u8>,
        /// IPv6: skip duplicate address detection.
        #[arg(long)]
        nodad: bool,
    },
    /// Remove bindings; addresses xdpgate added are removed from the
    /// interface, adopted ones stay.
    Del {
        /// Addresses, prefixes or ranges.
        #[arg(required = true, value_name = "SPEC")]
        specs: Vec<String>,
        /// Interface.
        #[arg(long, short = 'i', value_name = "IF")]
        iface: String,
    },
    /// List the bindings.
    List {
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum LbCmd {
    /// Add a service: `lb add 192.0.2.10:80/tcp --backend 10.200.2.2
    /// --backend fd00:200:2::3 weight=2`. The ring is rebuilt and swapped
    /// atomically; all or nothing.
    Add {
        /// VIP:PORT/PROTO (IPv6 VIPs in brackets), or VIP/PROTO for every port.
        service: String,
        /// A backend address of either family, optionally followed by
        /// weight=N (default 1; 0 drains it). Repeat for each backend.
        #[arg(long = "backend", short = 'b', num_args = 1..=2, value_name = "ADDR [weight=N]", required = true)]
        backends: Vec<String>,
        /// How packets reach the backends: encap (IPIP/IP6IP6/mixed; the
        /// backends run `xdpgate run --decap`) or l2dsr (MAC rewrite; the
        /// backends are on-link).
        #[arg(long, value_enum, default_value_t = ForwardArg::Encap)]
        forward: ForwardArg,
        /// Health check of each backend: tcp, http or udp (none by default).
        #[arg(long, value_enum)]
        health: Option<HealthArg>,
        /// Port probed (default: the service's).
        #[arg(long, requires = "health")]
        health_port: Option<u16>,
        /// Seconds between probes (default 2).
        #[arg(long, requires = "health")]
        interval: Option<f64>,
        /// Seconds one probe may take (default 1).
        #[arg(long, requires = "health")]
        timeout: Option<f64>,
        /// Successful probes that bring a backend back (default 2).
        #[arg(long, requires = "health")]
        rise: Option<u32>,
        /// Failed probes that take a backend out (default 3).
        #[arg(long, requires = "health")]
        fall: Option<u32>,
        /// HTTP: path to GET (default /).
        #[arg(long, requires = "health")]
        http_path: Option<String>,
        /// HTTP: expected status (default 200).
        #[arg(long, requires = "health")]
        http_status: Option<u16>,
        /// UDP: probe payload (default "ping").
        #[arg(long, requires = "health")]
        udp_payload: Option<String>,
        /// Replace an existing service with the same VIP, protocol and port.
        #[arg(long)]
        replace: bool,
    },
    /// Remove a service.
    Del {
        /// VIP:PORT/PROTO.
        service: String,
    },
    /// List services, backends, their health, ring shares and counters.
    List {
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// Forwarding method of a service.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum ForwardArg {
    /// Encapsulation.
    Encap,
    /// L2 direct server return.
    L2dsr,
}

/// Health-check type.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum HealthArg {
    /// TCP connect.
    Tcp,
    /// HTTP GET with an expected status.
    Http,
    /// UDP probe expecting a reply.
    Udp,
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
    // The daemon's logger; datapath events (aya-log records) are rate limited.
    let logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
            .format_target(false)
            .build();
    let level = logger.filter();
    if log::set_boxed_logger(Box::new(xdpgate::events::RateLimited::new(logger))).is_ok() {
        log::set_max_level(level);
    }
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
    if let Some(what) = client
        && let Err(e) = sys::require_root(what)
    {
        eprintln!("xdpgate: error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
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
            run(&paths, config.as_deref(), overrides)
        }
        Command::Check { config } => check(&config),
        Command::Reload => reload(&paths),
        Command::Bind { cmd } => bind_cmd(&paths, cmd),
        Command::Lb { cmd } => lb_cmd(&paths, cmd),
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
            if is_usage_error(&e) {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Configuration and usage errors exit with 64, like clap's.
fn is_usage_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<ConfigError>().is_some()
            || c.downcast_ref::<Refused>().is_some_and(|r| r.invalid)
            || c.downcast_ref::<BadInput>().is_some()
            || matches!(
                c.downcast_ref::<DaemonError>(),
                Some(
                    DaemonError::Config(_)
                        | DaemonError::NoInterface
                        | DaemonError::RuleFile { .. }
                        | DaemonError::Lb(
                            xdpgate::lb::LbError::Invalid(_) | xdpgate::lb::LbError::Parse(_)
                        )
                )
            )
    })
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = config::load(path)?;
    let state = cfg.acl_state();
    println!(
        "{}: ok: {} interface(s), {} set(s) with {} prefixes, {} rule(s), {} binding(s), {} service(s), metrics on {}",
        path.display(),
        cfg.interfaces.len(),
        state.sets.len(),
        state.sets.values().map(|s| s.len()).sum::<usize>(),
        state.rules.len(),
        cfg.bindings.len(),
        cfg.services.len(),
        if cfg.metrics_listen.is_empty() {
            "nothing".to_string()
        } else {
            cfg.metrics_listen
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    Ok(())
}

fn reload(paths: &Paths) -> anyhow::Result<()> {
    let r = call(paths, &Request::Reload)?;
    println!("{}", r["message"].as_str().unwrap_or("reloaded"));
    Ok(())
}

fn run(paths: &Paths, config_path: Option<&Path>, overrides: Overrides) -> anyhow::Result<()> {
    // Everything the operator gave is validated before anything is touched.
    let cfg = match config_path {
        Some(p) => config::load(p)?,
        None => Config::from_flags(&[], XdpMode::Native, Malformed::Drop),
    };
    let cfg = daemon::apply_overrides(cfg, &overrides)?;
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
        let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        let _lock = DaemonLock::acquire(&paths.run_dir, &paths.lock_file())?;
        // Listeners before the datapath: a port in use fails the start cleanly.
        let mut metrics_listeners = Vec::new();
        for addr in &cfg.metrics_listen {
            let l = listen::tcp_listener(
                *addr,
                listen::ListenOptions {
                    freebind: cfg.metrics_freebind,
                    ..Default::default()
                },
            )
            .with_context(|| format!("metrics listener {addr}"))?;
            metrics_listeners.push(
                tokio::net::TcpListener::from_std(l)
                    .with_context(|| format!("metrics listener {addr}"))?,
            );
        }
        let api_listener = api::bind(&paths.socket())?;
        let grace = cfg.shutdown_grace;
        let mut d = Daemon::start(paths, cfg, overrides)?;
        if let Some(n) = d.dp.verified_instructions() {
            log::info!("program verified: {n} instructions processed (kernel limit 1000000)");
        }
        log::info!(
            "state from {}: {} rules, {} sets, {} bound addresses; saved in {}",
            match d.origin {
                daemon::Origin::Config => "the configuration",
                daemon::Origin::StateFile => "the state file",
            },
            d.ctl.state().rules.len(),
            d.ctl.state().sets.len(),
            d.binds.list().len(),
            d.config.state_file.display()
        );
        for a in d.dp.attached() {
            log::info!(
                "attached to {} (ifindex {}) in {} mode, program id {}",
                a.iface,
                a.ifindex,
                a.mode.name(),
                a.prog_id
            );
        }
        for l in &metrics_listeners {
            if let Ok(a) = l.local_addr() {
                log::info!("metrics on http://{a}/metrics");
            }
        }
        log::info!(
            "xdpgate ready on {} interface(s); maps pinned in {}; SIGHUP reloads, SIGINT or SIGTERM stops",
            d.dp.attached().len(),
            paths.bpffs_dir.display()
        );

        let root = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut health_events = d.start_health(tracker.clone(), root.child_token());
        let shared = Arc::new(Mutex::new(d));
        tracker.spawn(api::serve(api_listener, shared.clone(), root.child_token()));
        {
            // Health state changes move backends out of and into the rings.
            let shared = shared.clone();
            let token = root.child_token();
            tracker.spawn(async move {
                loop {
                    tokio::select! {
                        _ = token.cancelled() => break,
                        ev = health_events.recv() => match ev {
                            Some(ev) => {
                                let mut d = shared.lock().unwrap_or_else(|e| e.into_inner());
                                d.on_health(&ev);
                            }
                            None => break,
                        },
                    }
                }
            });
        }
        if !metrics_listeners.is_empty() {
            let source = shared.clone();
            let gather: Arc<dyn Fn() -> Result<String, String> + Send + Sync> =
                Arc::new(move || {
                    let d = source.lock().unwrap_or_else(|e| e.into_inner());
                    let mut bound: Vec<(String, String, u64)> = Vec::new();
                    for i in &d.config.interfaces {
                        for fam in ["ipv4", "ipv6"] {
                            bound.push((i.name.clone(), fam.to_string(), 0));
                        }
                    }
                    for (iface, fam, n) in d.binds.counts() {
                        if let Some(row) =
                            bound.iter_mut().find(|r| r.0 == iface && r.1 == fam)
                        {
                            row.2 = n as u64;
                        }
                    }
                    let status = metrics::DaemonStatus {
                        last_reload_success_unix: d.reload.last_success_unix,
                        last_reload_ok: d.reload.last_ok,
                        bound_addresses: bound,
                        lb_services: d.lb.status(&d.dp).map_err(|e| e.to_string())?,
                        health: d.health.as_ref().map(|m| m.status()).unwrap_or_default(),
                        decap: d.decap_counters().map_err(|e| e.to_string())?,
                    };
                    metrics::gather(&d.dp, &d.ctl, &d.paths, &status)
                        .map(|s| metrics::render(&s))
                        .map_err(|e| e.to_string())
                });
            tracker.spawn(metrics::serve(metrics_listeners, gather, root.child_token()));
        }
        let token = root.clone();
        let reloader = shared.clone();
        tracker.spawn(async move {
            let name = loop {
                tokio::select! {
                    _ = sigterm.recv() => break "SIGTERM",
                    _ = sigint.recv() => break "SIGINT",
                    _ = sighup.recv() => {
                        log::info!("SIGHUP received, reloading the configuration");
                        let d = reloader.clone();
                        let r = tokio::task::spawn_blocking(move || {
                            let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
                            d.reload()
                        })
                        .await;
                        match r {
                            Ok(Ok(msg)) => log::info!("{msg}"),
                            Ok(Err(e)) => log::error!(
                                "reload failed, the running configuration stays in force: {e}"
                            ),
                            Err(e) => log::error!("reload task failed: {e}"),
                        }
                    }
                    _ = token.cancelled() => return,
                }
            };
            log::info!("{name} received, draining");
            token.cancel();
        });
        tracker.close();
        root.cancelled().await;
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            log::warn!("tasks still running after {grace:?}; detaching anyway");
        }
        let _ = std::fs::remove_file(paths.socket());
        let mut d = shared.lock().unwrap_or_else(|e| e.into_inner());
        let n = d.dp.attached().len();
        d.dp.detach_all().context("detaching")?;
        log::info!(
            "detached from {n} interface(s), maps unpinned; {} bound address(es) stay on their interfaces",
            d.binds.list().len()
        );
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
    // What the daemon itself says (configuration, state file, last reload).
    let detail = daemon.and_then(|_| call(paths, &Request::Status).ok());
    match output {
        Output::Json => {
            let doc = serde_json::json!({
                "daemon": {
                    "running": daemon.is_some(),
                    "pid": daemon,
                    "run_dir": paths.run_dir,
                    "bpffs_dir": paths.bpffs_dir,
                    "detail": detail,
                },
                "interfaces": rows,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Text => {
            match daemon {
                Some(pid) => {
                    println!(
                        "daemon: running (pid {pid}), maps pinned in {}",
                        paths.bpffs_dir.display()
                    );
                    if let Some(d) = &detail {
                        let cfg = d["config"].as_str().unwrap_or("");
                        println!(
                            "config: {}; state file: {}; started from the {}",
                            if cfg.is_empty() {
                                "(none, flags only)"
                            } else {
                                cfg
                            },
                            d["state_file"].as_str().unwrap_or("?"),
                            d["started_from"].as_str().unwrap_or("?").replace('_', " ")
                        );
                        println!(
                            "{} rules, {} sets, {} bound addresses; last reload {}",
                            d["rules"],
                            d["sets"],
                            d["bindings"],
                            if d["reload"]["last_ok"].as_bool().unwrap_or(true) {
                                "ok".to_string()
                            } else {
                                format!(
                                    "FAILED: {}",
                                    d["reload"]["last_error"].as_str().unwrap_or("?")
                                )
                            }
                        );
                    }
                }
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
    let r = call(paths, &Request::Stats)?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&r["report"])?),
        Output::Text => print!("{}", r["text"].as_str().unwrap_or_default()),
    }
    Ok(())
}

fn lb_cmd(paths: &Paths, cmd: LbCmd) -> anyhow::Result<()> {
    match cmd {
        LbCmd::Add {
            service,
            backends,
            forward,
            health,
            health_port,
            interval,
            timeout,
            rise,
            fall,
            http_path,
            http_status,
            udp_payload,
            replace,
        } => {
            // Validated here first, so a typo gets a usage error without a
            // round trip (the daemon validates again).
            let tokens =
                xdpgate::lb::parse_backends(&backends).map_err(|e| BadInput(e.to_string()))?;
            let entry = xdpgate::lb::ServiceEntry {
                service,
                forward: Some(
                    match forward {
                        ForwardArg::Encap => "encap",
                        ForwardArg::L2dsr => "l2dsr",
                    }
                    .into(),
                ),
                backends: tokens
                    .iter()
                    .map(|b| format!("{} weight={}", b.addr, b.weight))
                    .collect(),
                health: health.map(|h| xdpgate::lb::HealthEntry {
                    kind: Some(
                        match h {
                            HealthArg::Tcp => "tcp",
                            HealthArg::Http => "http",
                            HealthArg::Udp => "udp",
                        }
                        .into(),
                    ),
                    port: health_port,
                    interval,
                    timeout,
                    rise,
                    fall,
                    path: http_path,
                    host: None,
                    status: http_status,
                    payload: udp_payload,
                }),
            };
            if let Err(problems) = entry.to_spec() {
                return Err(BadInput(problems.join("; ")).into());
            }
            let r = call(
                paths,
                &Request::LbAdd {
                    service: entry,
                    replace,
                },
            )?;
            println!("{}", r["message"].as_str().unwrap_or("ok"));
        }
        LbCmd::Del { service } => {
            let r = call(paths, &Request::LbDel { service })?;
            println!("{}", r["message"].as_str().unwrap_or("ok"));
        }
        LbCmd::List { output } => {
            let r = call(paths, &Request::LbList)?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            let services = r["services"].as_array().cloned().unwrap_or_default();
            if services.is_empty() {
                println!("no services");
            }
            for s in services {
                println!(
                    "{}  forward {}  ring {}  forwarded {}  slow-path {}  dropped {}{}",
                    s["service"].as_str().unwrap_or("?"),
                    s["forward"].as_str().unwrap_or("?"),
                    s["ring_size"],
                    s["forwarded_packets"],
                    s["slow_path_packets"],
                    s["dropped_packets"],
                    if s["health_checked"].as_bool() == Some(true) {
                        "  health-checked"
                    } else {
                        ""
                    }
                );
                println!(
                    "  {:<40}  {:>6}  {:<7}  {:>8}  {:>12}  {:>14}",
                    "BACKEND", "WEIGHT", "HEALTH", "RING", "PACKETS", "BYTES"
                );
                for b in s["backends"].as_array().into_iter().flatten() {
                    println!(
                        "  {:<40}  {:>6}  {:<7}  {:>8}  {:>12}  {:>14}",
                        b["addr"].as_str().unwrap_or("?"),
                        b["weight"],
                        if b["healthy"].as_bool() == Some(true) {
                            "up"
                        } else {
                            "down"
                        },
                        b["ring_entries"],
                        b["packets"],
                        b["bytes"]
                    );
                }
            }
        }
    }
    Ok(())
}

fn bind_cmd(paths: &Paths, cmd: BindCmd) -> anyhow::Result<()> {
    let reqs = |specs: Vec<String>, iface: String, plen, nodad| -> Vec<BindRequest> {
        specs
            .into_iter()
            .map(|spec| BindRequest {
                iface: iface.clone(),
                spec,
                plen,
                nodad,
            })
            .collect()
    };
    match cmd {
        BindCmd::Add {
            specs,
            iface,
            plen,
            nodad,
        } => {
            let r = call(
                paths,
                &Request::BindAdd {
                    binds: reqs(specs, iface, plen, nodad),
                },
            )?;
            println!("{}", bind_summary(&r));
        }
        BindCmd::Del { specs, iface } => {
            let r = call(
                paths,
                &Request::BindDel {
                    binds: reqs(specs, iface, None, false),
                },
            )?;
            println!("{}", bind_summary(&r));
        }
        BindCmd::List { output } => {
            let r = call(paths, &Request::BindList)?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            println!(
                "{:<16}  {:<40}  {:<7}  ORIGIN",
                "INTERFACE", "ADDRESS", "NODAD"
            );
            for b in r["bindings"].as_array().into_iter().flatten() {
                println!(
                    "{:<16}  {:<40}  {:<7}  {}",
                    b["iface"].as_str().unwrap_or("?"),
                    format!("{}/{}", b["addr"].as_str().unwrap_or("?"), b["plen"]),
                    b["nodad"].as_bool().unwrap_or(false),
                    b["origin"].as_str().unwrap_or("?")
                );
            }
            let drop: Vec<&str> = r["drop_unbound"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .collect();
            if !drop.is_empty() {
                println!(
                    "traffic to unbound addresses is dropped on: {}",
                    drop.join(", ")
                );
            }
        }
    }
    Ok(())
}

fn bind_summary(r: &serde_json::Value) -> String {
    match r.as_object() {
        Some(o) => o
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        None => r.to_string(),
    }
}

/// A command-line argument or input file the client rejects before asking
/// the daemon (exit 64, like the daemon's own refusals of bad input).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadInput(String);

/// The daemon refused a request; `invalid` when the input was at fault.
#[derive(Debug, thiserror::Error)]
#[error("{}", .errors.join("\n  "))]
struct Refused {
    errors: Vec<String>,
    invalid: bool,
}

/// Sends a request; fails with the daemon's errors listed.
fn call(paths: &Paths, req: &Request) -> anyhow::Result<serde_json::Value> {
    let resp = api::call(&paths.socket(), req)?;
    if !resp.ok {
        return Err(Refused {
            errors: resp.errors,
            invalid: resp.invalid,
        }
        .into());
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
                .map_err(|e: xdpgate::acl::AclError| BadInput(e.to_string()).into())
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
            .map_err(|e| BadInput(e.to_string()))?,
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
            let file: RuleFile =
                toml::from_str(&text).map_err(|e| BadInput(format!("{}: {e}", file.display())))?;
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
                return Err(BadInput("no prefixes given".into()).into());
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

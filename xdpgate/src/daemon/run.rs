//! The daemon's run loop, in the manner of linkerd2-proxy's `App`: [`run`]
//! validates the configuration and installs the signal handlers, then
//! [`App::start`] takes the lock, opens the listeners and starts the
//! [`Daemon`], [`App::spawn`] wires its tasks (API server, metrics server,
//! health events, the routing generation, signals) under one root cancellation token and one task
//! tracker, and [`Running::wait`] waits for SIGINT or SIGTERM, drains the
//! tasks within the grace period and detaches.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use thiserror::Error;
use tokio::{
    net::{TcpListener, UnixListener},
    signal::unix::{Signal, SignalKind, signal},
    sync::mpsc::UnboundedReceiver,
    task::JoinHandle,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use xdpgate_model::{
    config::{self, Config, ConfigError},
    iface::{Malformed, XdpMode},
};

use super::{Daemon, DaemonError, Origin, Overrides, apply_overrides, shared::Shared};
use crate::{
    api::{self, ApiError, protocol::MAX_CONNECTIONS},
    cancel::{Cancelled, Work},
    lb::{self, health::HealthEvent},
    metrics,
    paths::Paths,
    sys::{self, DaemonLock, SysError, listen},
};

/// Why `xdpgate run` failed or stopped with an error.
#[derive(Debug, Error)]
pub enum RunError {
    /// The configuration file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The configuration with the command line applied is unusable, or the
    /// daemon could not start.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// Not root, no bpffs, or another daemon holds the lock.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// The async runtime could not start.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// A signal handler could not be installed.
    #[error("installing {0} handler")]
    Signal(&'static str, #[source] std::io::Error),
    /// A metrics listener could not be opened.
    #[error("metrics listener {addr}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// The failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The API socket could not be set up.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl RunError {
    /// Whether the caller's input (configuration, command line) is at fault:
    /// a configuration error, or a [`DaemonError`] that
    /// [`is_invalid_input`](DaemonError::is_invalid_input).
    pub fn is_invalid_input(&self) -> bool {
        match self {
            RunError::Config(_) => true,
            RunError::Daemon(e) => e.is_invalid_input(),
            RunError::Sys(_)
            | RunError::Runtime(_)
            | RunError::Signal(..)
            | RunError::Metrics { .. }
            | RunError::Api(_) => false,
        }
    }
}

/// Runs the daemon until SIGINT or SIGTERM (`xdpgate run`).
pub fn run(
    paths: &Paths,
    config_path: Option<&Path>,
    overrides: Overrides,
) -> Result<(), RunError> {
    // Everything the operator gave is validated before anything is touched.
    let cfg = match config_path {
        Some(p) => config::load(p)?,
        None => Config::from_flags(&[], XdpMode::Native, Malformed::Drop),
    };
    let cfg = apply_overrides(cfg, &overrides)?;
    sys::require_root("xdpgate run")?;
    sys::require_bpffs(paths.bpffs_mount())?;
    let max_connections = api_connections(sys::raise_nofile_limit());
    // Before the runtime's threads start (`sys::malloc`).
    sys::no_fastbins();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    rt.block_on(async {
        // Signal handlers before attaching, so a signal during the start
        // stops it cleanly.
        let signals = Signals::install()?;
        let app = App::start(paths, cfg, overrides, max_connections)?;
        app.spawn(signals).wait().await
    })
}

/// SIGTERM, SIGINT and SIGHUP, installed before anything is attached.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> Result<Self, RunError> {
        let handler = |kind, name| signal(kind).map_err(|e| RunError::Signal(name, e));
        Ok(Signals {
            term: handler(SignalKind::terminate(), "SIGTERM")?,
            int: handler(SignalKind::interrupt(), "SIGINT")?,
            hup: handler(SignalKind::hangup(), "SIGHUP")?,
        })
    }
}

/// The daemon and what it serves, started: the lock held, the listeners
/// open, the datapath attached with its state installed; no task yet.
struct App {
    paths: Paths,
    lock: DaemonLock,
    daemon: Daemon,
    api: UnixListener,
    metrics: Vec<TcpListener>,
    grace: Duration,
    max_connections: usize,
}

/// File descriptors kept for everything but API connections (maps, links,
/// netlink, health probes, metrics connections).
const RESERVED_FDS: u64 = 256;

/// API connections allowed with `nofile` open files at most: at most
/// [`MAX_CONNECTIONS`], and never so many that they could exhaust the
/// descriptors the rest of the daemon needs.
fn api_connections(nofile: u64) -> usize {
    let spare = nofile.saturating_sub(RESERVED_FDS);
    usize::try_from(spare).map_or(MAX_CONNECTIONS, |n| n.clamp(16, MAX_CONNECTIONS))
}

impl App {
    /// Takes the daemon lock, opens the metrics listeners and the API socket
    /// (a port in use fails the start before the datapath is touched), and
    /// starts the [`Daemon`].
    fn start(
        paths: &Paths,
        cfg: Config,
        overrides: Overrides,
        max_connections: usize,
    ) -> Result<Self, RunError> {
        let lock = DaemonLock::acquire(&paths.run_dir, &paths.lock_file())?;
        let mut metrics = Vec::new();
        for &addr in &cfg.metrics_listen {
            let failed = |source: Box<dyn std::error::Error + Send + Sync>| RunError::Metrics {
                addr,
                source,
            };
            let opts = listen::ListenOptions {
                freebind: cfg.metrics_freebind,
                ..Default::default()
            };
            let l = listen::tcp_listener(addr, opts).map_err(|e| failed(e.into()))?;
            metrics.push(TcpListener::from_std(l).map_err(|e| failed(e.into()))?);
        }
        let api = api::bind(&paths.socket())?;
        let grace = cfg.shutdown_grace;
        let daemon = Daemon::start(paths, cfg, overrides)?;
        let mut app = App {
            paths: paths.clone(),
            lock,
            daemon,
            api,
            metrics,
            grace,
            max_connections,
        };
        app.log_ready();
        Ok(app)
    }

    fn log_ready(&mut self) {
        let d = &mut self.daemon;
        if let Some(n) = d.dp.verified_instructions() {
            log::info!("program verified: {n} instructions processed (kernel limit 1000000)");
        }
        log::info!(
            "state from {}: {} rules, {} sets, {} bound addresses; saved in {}",
            match d.origin {
                Origin::Config => "the configuration",
                Origin::StateFile => "the state file",
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
        for l in &self.metrics {
            if let Ok(a) = l.local_addr() {
                log::info!("metrics on http://{a}/metrics");
            }
        }
        log::info!(
            "xdpgate ready on {} interface(s); maps pinned in {}; SIGHUP reloads, SIGINT or SIGTERM stops",
            d.dp.attached().len(),
            self.paths.bpffs_dir.display()
        );
    }

    /// Spawns every task under one root token (each task holds a child
    /// token, so no stuck peer delays the exit) and one tracker: the API
    /// server, the health events that move backends in and out of the rings,
    /// the metrics server, and the signals (SIGHUP reloads; SIGINT or
    /// SIGTERM cancel the root).
    fn spawn(self, signals: Signals) -> Running {
        let App {
            paths,
            lock,
            mut daemon,
            api,
            metrics,
            grace,
            max_connections,
        } = self;
        let root = CancellationToken::new();
        let tracker = TaskTracker::new();
        let health = daemon.start_health(tracker.clone(), root.child_token());
        match daemon.dp.route_generation() {
            Ok(generation) => {
                tracker.spawn(lb::route_watch::run(
                    generation,
                    lb::route_watch::subscribe(),
                    lb::route_watch::PERIOD,
                    root.child_token(),
                ));
            }
            Err(e) => log::warn!(
                "load balancer: cannot move the routing generation ({e}); cached next hops expire by their lifetime only"
            ),
        }
        let shared = Shared::new(daemon);
        tracker.spawn(api::serve(
            api,
            shared.clone(),
            max_connections,
            root.child_token(),
        ));
        tracker.spawn(health_events(health, shared.clone(), root.child_token()));
        if !metrics.is_empty() {
            let source = shared.clone();
            let gather: metrics::GatherFn = Arc::new(move || source.metrics());
            tracker.spawn(metrics::serve(metrics, gather, root.child_token()));
        }
        tracker.spawn(signal_loop(signals, shared.clone(), root.clone()));
        tracker.spawn(super::save::retry_saves(shared.clone(), root.child_token()));
        tracker.close();
        Running {
            socket: paths.socket(),
            _lock: lock,
            root,
            tracker,
            shared,
            grace,
        }
    }
}

/// The daemon's tasks, running.
struct Running {
    socket: PathBuf,
    /// Held until the daemon has detached.
    _lock: DaemonLock,
    root: CancellationToken,
    tracker: TaskTracker,
    shared: Arc<Shared>,
    grace: Duration,
}

impl Running {
    /// Waits until SIGINT or SIGTERM cancelled the root token, gives the
    /// tasks the grace period to finish and removes the socket. The datapath
    /// stays attached and enforcing the last committed state (its links and
    /// maps are pinned): the next start adopts it, and only `xdpgate down`
    /// removes it.
    async fn wait(self) -> Result<(), RunError> {
        self.root.cancelled().await;
        if tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .is_err()
        {
            log::warn!(
                "tasks still running after {:?}; detaching anyway",
                self.grace
            );
        }
        let _ = std::fs::remove_file(&self.socket);
        // A change still running stops at its next cancellation point.
        let shared = self.shared.clone();
        let (attached, pins) = tokio::task::spawn_blocking(move || {
            let mut d = shared.lock();
            // The journal compacted into the state file (logged if it fails:
            // the journal then still holds every change).
            if let Err(e) = d.persist() {
                log::warn!("state not saved at shutdown (the journal keeps the changes): {e}");
            }
            (d.dp.attached().len(), d.dp.pin_dir().map(Path::to_path_buf))
        })
        .await
        .map_err(|e| RunError::Runtime(std::io::Error::other(e)))?;
        log::info!(
            "stopped; the datapath stays enforcing on {attached} interface(s) (pinned in {}), health checks stop and the rings keep their last state; `xdpgate down` removes it",
            pins.map_or_else(String::new, |p| p.display().to_string())
        );
        Ok(())
    }
}

/// Health state changes move backends out of and into the rings, one at a
/// time on a blocking thread (a long change holds the daemon meanwhile; the
/// probes keep running on the runtime and their events wait here).
async fn health_events(
    mut events: UnboundedReceiver<HealthEvent>,
    shared: Arc<Shared>,
    token: CancellationToken,
) {
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            ev = events.recv() => match ev {
                Some(ev) => {
                    let shared = shared.clone();
                    if let Err(e) =
                        tokio::task::spawn_blocking(move || shared.lock().on_health(&ev)).await
                    {
                        log::error!("health event task failed: {e}");
                    }
                }
                None => break,
            },
        }
    }
}

/// SIGHUP reloads the configuration as a change (on a blocking thread,
/// stopped at its cancellation points by shutdown; a SIGHUP during a reload
/// starts one more after it); SIGINT or SIGTERM cancel `root`.
async fn signal_loop(mut signals: Signals, shared: Arc<Shared>, root: CancellationToken) {
    let mut running: Option<ReloadTask> = None;
    let mut again = false;
    let name = loop {
        tokio::select! {
            _ = signals.term.recv() => break "SIGTERM",
            _ = signals.int.recv() => break "SIGINT",
            _ = signals.hup.recv() => {
                if running.is_some() {
                    log::info!("SIGHUP received during a reload: reloading again after it");
                    again = true;
                } else {
                    running = Some(start_reload(&shared, &root));
                }
            }
            r = async {
                match running.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            }, if running.is_some() => {
                running = None;
                match r {
                    Ok(Ok(Ok(msg))) => log::info!("{msg}"),
                    Ok(Ok(Err(e))) => log::error!(
                        "reload failed, the running configuration stays in force: {e}"
                    ),
                    Ok(Err(why)) => log::warn!("reload {why} (nothing was changed)"),
                    Err(e) => log::error!("reload task failed: {e}"),
                }
                if std::mem::take(&mut again) {
                    running = Some(start_reload(&shared, &root));
                }
            }
            () = root.cancelled() => return,
        }
    };
    log::info!("{name} received, draining");
    root.cancel();
}

/// A reload running on a blocking thread: its message or error, or why it
/// stopped before it began.
type ReloadTask = JoinHandle<Result<Result<String, DaemonError>, Cancelled>>;

fn start_reload(shared: &Arc<Shared>, root: &CancellationToken) -> ReloadTask {
    log::info!("SIGHUP received, reloading the configuration");
    let shared = shared.clone();
    let work = Work::new("reload (SIGHUP)", root.child_token());
    tokio::task::spawn_blocking(move || {
        shared.change(&work, super::shared::Weight::Full, Daemon::reload)
    })
}

//! The running daemon's state: the datapath, the ACL controller, the address
//! bindings, the load balancer and the configuration in force, and the
//! operations that change them (runtime changes here, reload in `reload`,
//! services and health in `lb`), each all or nothing and each saved to the
//! state file when it succeeds. [`run`] is the process around it: listeners,
//! tasks, signals, shutdown.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use thiserror::Error;
use xdpgate_model::{
    acl::{AclState, Change},
    bind::{BindRequest, Report},
    config::{Config, ConfigError},
    iface::XdpMode,
    lb::ServiceEntry,
    state::StateError,
};

use crate::{
    acl::{AclController, Applied, ApplyError},
    bind::{BindError, Bindings},
    datapath::{Datapath, DatapathError, MapSizes, Opened, PinError, stats::StatsError},
    lb::{LbController, LbError, health::HealthMonitor},
    paths::Paths,
    sys::{self, netlink},
};

pub mod ddos;
mod handler;
mod lb;
mod overrides;
mod reload;
pub mod run;
pub mod save;
mod scrape;
mod shared;

pub use overrides::{Overrides, apply_overrides, bind_requests};
pub use save::{SaveStatus, Unsaved};

/// Errors of starting, reloading and changing the daemon.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The command line and configuration name no interface.
    #[error("no interface to attach to: give --iface IF or an [[interface]] in the config file")]
    NoInterface,
    /// A reload asked for something only a restart can do.
    #[error("{0}; restart xdpgate to apply it (nothing was changed)")]
    NeedsRestart(String),
    /// The rule file could not be read or is invalid.
    #[error("rule file {path}: {why}")]
    RuleFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The ACL change was refused or failed.
    #[error(transparent)]
    Acl(#[from] ApplyError),
    /// An address binding was refused or failed.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The datapath failed.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// The state file could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// A load-balancer change was refused or failed.
    #[error(transparent)]
    Lb(#[from] LbError),
    /// Reading the kernel's addresses failed.
    #[error("{what}: {source}")]
    Netlink {
        /// What was being done.
        what: &'static str,
        /// The failure.
        #[source]
        source: netlink::NetlinkError,
    },
    /// A change took effect but could not be saved.
    #[error("the change is in force, but it could not be saved, so a restart would lose it: {0}")]
    NotSaved(StateError),
    /// A request named a set that does not exist.
    #[error("no set named {0}")]
    NoSet(String),
    /// The packet counters could not be read.
    #[error(transparent)]
    Stats(#[from] StatsError),
    /// Rules with a limit or `syncookie = true` cannot be honoured (the
    /// kernel refused the DDoS program, or a sysctl is not as SYN cookies
    /// need it).
    #[error("{0}")]
    Ddos(String),
}

impl DaemonError {
    /// Whether the error is the caller's fault: invalid input (a bad
    /// configuration, request, rule file or command line, or a change that
    /// names something missing or needs a restart) rather than a failure of
    /// the system (netlink, the datapath, the state file). The one decision
    /// behind both the API's `invalid` flag and the CLI's exit code 64.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            DaemonError::Config(_)
            | DaemonError::NoInterface
            | DaemonError::NeedsRestart(_)
            | DaemonError::RuleFile { .. }
            | DaemonError::NoSet(_)
            | DaemonError::Ddos(_)
            | DaemonError::Datapath(DatapathError::Pins(PinError::Resized { .. }))
            | DaemonError::Acl(ApplyError::Invalid(_))
            | DaemonError::Bind(BindError::Invalid(_))
            | DaemonError::Lb(LbError::Invalid(_) | LbError::Parse(_) | LbError::NoService(_)) => {
                true
            }
            DaemonError::Acl(
                ApplyError::Datapath(_) | ApplyError::Rollback { .. } | ApplyError::Cancelled(_),
            )
            | DaemonError::Bind(
                BindError::Capacity { .. }
                | BindError::Cancelled(_)
                | BindError::Netlink(_)
                | BindError::Datapath(_)
                | BindError::Rollback { .. },
            )
            | DaemonError::Lb(LbError::Datapath(_) | LbError::Rollback { .. })
            | DaemonError::Datapath(_)
            | DaemonError::State(_)
            | DaemonError::Netlink { .. }
            | DaemonError::NotSaved(_)
            | DaemonError::Stats(_) => false,
        }
    }
}

#[cfg(test)]
mod classification {
    use std::{io, path::PathBuf};

    use xdpgate_model::{
        acl::AclError,
        bind::RequestError,
        config::{ConfigError, Issue},
        lb::ParseError,
        state::StateError,
    };

    use super::DaemonError;
    use crate::{
        acl::ApplyError,
        bind::BindError,
        datapath::{DatapathError, PinError, stats::StatsError},
        lb::LbError,
        sys::netlink::NetlinkError,
    };

    fn io() -> io::Error {
        io::Error::from_raw_os_error(libc::EPERM)
    }
    fn datapath() -> DatapathError {
        DatapathError::Missing("map X".into())
    }
    fn state() -> StateError {
        StateError::Corrupt {
            path: "/s".into(),
            why: "x".into(),
        }
    }

    /// Every variant, by name, with whether it is the caller's fault.
    #[test]
    fn invalid_input_table() {
        let table: Vec<(&str, DaemonError, bool)> = vec![
            (
                "Config(Read)",
                DaemonError::Config(ConfigError::Read {
                    path: "/c".into(),
                    source: io(),
                }),
                true,
            ),
            (
                "Config(Invalid)",
                DaemonError::Config(ConfigError::Invalid {
                    path: "/c".into(),
                    issues: vec![Issue {
                        at: Some((1, 1)),
                        message: "x".into(),
                    }],
                }),
                true,
            ),
            ("NoInterface", DaemonError::NoInterface, true),
            ("NeedsRestart", DaemonError::NeedsRestart("x".into()), true),
            (
                "RuleFile",
                DaemonError::RuleFile {
                    path: PathBuf::from("/r"),
                    why: "x".into(),
                },
                true,
            ),
            ("NoSet", DaemonError::NoSet("s".into()), true),
            ("Ddos", DaemonError::Ddos("x".into()), true),
            (
                "Datapath(Pins(Resized))",
                DaemonError::Datapath(DatapathError::Pins(PinError::Resized {
                    path: "/p".into(),
                    found: 1024,
                    wanted: 2048,
                    setting: "[ddos] limit_buckets",
                    found_setting: "1024".into(),
                })),
                true,
            ),
            (
                "Acl(Invalid)",
                ApplyError::Invalid(vec![AclError::BadSetName("!".into())]).into(),
                true,
            ),
            (
                "Acl(Datapath)",
                ApplyError::Datapath(datapath()).into(),
                false,
            ),
            (
                "Acl(Rollback)",
                ApplyError::Rollback {
                    cause: Box::new(datapath()),
                    undo: Box::new(datapath()),
                }
                .into(),
                false,
            ),
            (
                "Acl(Cancelled)",
                ApplyError::Cancelled(crate::cancel::Cancelled::ClientGone).into(),
                false,
            ),
            (
                "Bind(Cancelled)",
                BindError::Cancelled(crate::cancel::Cancelled::Shutdown).into(),
                false,
            ),
            (
                "Bind(Invalid)",
                BindError::Invalid(vec![RequestError::Spec {
                    iface: "eth0".into(),
                    spec: "x".into(),
                    why: "x".into(),
                }])
                .into(),
                true,
            ),
            (
                "Bind(Capacity)",
                BindError::Capacity { count: 2, max: 1 }.into(),
                false,
            ),
            (
                "Bind(Netlink)",
                BindError::Netlink(NetlinkError::Kernel(io())).into(),
                false,
            ),
            (
                "Bind(Datapath)",
                BindError::Datapath(datapath()).into(),
                false,
            ),
            (
                "Bind(Rollback)",
                BindError::Rollback {
                    cause: Box::new(BindError::Datapath(datapath())),
                    undo: "x".into(),
                }
                .into(),
                false,
            ),
            (
                "Lb(Parse)",
                LbError::Parse(ParseError::Proto("x".into())).into(),
                true,
            ),
            (
                "Lb(Invalid)",
                LbError::Invalid(vec!["x".into()]).into(),
                true,
            ),
            ("Lb(NoService)", LbError::NoService("x".into()).into(), true),
            ("Lb(Datapath)", LbError::Datapath(datapath()).into(), false),
            (
                "Lb(Rollback)",
                LbError::Rollback {
                    cause: Box::new(LbError::Datapath(datapath())),
                    undo: vec![datapath()],
                }
                .into(),
                false,
            ),
            ("Datapath", DaemonError::Datapath(datapath()), false),
            ("State", DaemonError::State(state()), false),
            (
                "Netlink",
                DaemonError::Netlink {
                    what: "listing addresses",
                    source: NetlinkError::Kernel(io()),
                },
                false,
            ),
            ("NotSaved", DaemonError::NotSaved(state()), false),
            (
                "Stats",
                DaemonError::Stats(StatsError::NotRunning("/b".into())),
                false,
            ),
        ];
        for (name, e, invalid) in table {
            assert_eq!(e.is_invalid_input(), invalid, "{name}: {e}");
        }
    }
}

/// The outcome of the last reload, for `status` and metrics.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReloadStatus {
    /// Reloads attempted.
    pub attempts: u64,
    /// Whether the last reload succeeded (true before the first one).
    pub last_ok: bool,
    /// When the configuration in force was last loaded successfully (seconds
    /// since the epoch; the start counts).
    pub last_success_unix: u64,
    /// Why the last reload failed, if it did.
    pub last_error: Option<String>,
}

/// Where the state at start came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The configuration (and command line).
    Config,
    /// The state file, because the configuration is unchanged since it was saved.
    StateFile,
}

/// The daemon. The control API and the metrics server reach it behind one mutex.
pub struct Daemon {
    /// The datapath.
    pub dp: Datapath,
    /// The ACL controller.
    pub ctl: AclController,
    /// The address bindings.
    pub binds: Bindings,
    /// The load balancer's services.
    pub lb: LbController,
    /// Health checks of the services' backends (started inside the async
    /// runtime by [`Daemon::start_health`]).
    pub health: Option<HealthMonitor>,
    /// Interfaces (ifindex) that decapsulate.
    decap_ifaces: Vec<(u32, u32)>,
    /// The configuration in force, overrides applied.
    pub config: Config,
    /// The command-line overrides.
    pub overrides: Overrides,
    /// Pinned-map and runtime paths.
    pub paths: Paths,
    /// The outcome of the last reload.
    pub reload: ReloadStatus,
    /// Where the state at start came from.
    pub origin: Origin,
    /// When the daemon started.
    pub started: Instant,
    /// Whether the reader of datapath events runs (started the first time
    /// events are on, then kept).
    events_reader: bool,
    /// Whether the state in force is saved ([`save`]).
    save: SaveStatus,
    /// The journal of ACL changes beside the state file.
    journal: save::Journaled,
    /// Interfaces the state file named that the configuration does not.
    warnings: Vec<String>,
    /// Whether SYN cookies can be used, and why not ([`ddos`]).
    syncookies: ddos::Readiness,
    /// Whether the warning about `tcp_timestamps` was logged.
    timestamps_warned: bool,
}

/// Applies `[daemon] datapath_events*`: the rate limit, the reader of the
/// program's records (started once, when events are first on, inside the
/// async runtime), then the datapath's switch and sampling rate.
fn apply_events(dp: &mut Datapath, cfg: &Config, reader: &mut bool) -> Result<(), DaemonError> {
    crate::events::set_per_second(cfg.datapath_events_per_second);
    if cfg.datapath_events && !*reader {
        if tokio::runtime::Handle::try_current().is_ok() {
            let logger = dp.event_logger()?;
            crate::events::spawn_reader(logger).map_err(|source| DatapathError::Io {
                what: "cannot watch the aya-log ring buffer",
                path: PathBuf::new(),
                source,
            })?;
            *reader = true;
        } else {
            log::warn!("datapath events: no async runtime to read them in; not reading them");
        }
    }
    dp.set_events(cfg.datapath_events, cfg.datapath_events_sample)?;
    if cfg.datapath_events {
        log::info!(
            "datapath events on: one of every {} drops per CPU, at most {} logged per second",
            cfg.datapath_events_sample,
            cfg.datapath_events_per_second
        );
    }
    Ok(())
}

/// The counter slot of each configured interface: the slot the running
/// datapath gave it, if it has one, else the lowest slot no registered
/// interface has.
fn keep_slots(
    dp: &mut Datapath,
    cfg: &Config,
    resolved: &[u32],
) -> Result<BTreeMap<String, u32>, DaemonError> {
    let known: HashMap<u32, u32> = dp
        .registered()?
        .into_iter()
        .map(|(ifindex, c)| (ifindex, c.slot))
        .collect();
    // A registered interface's slot is never given to another while it is
    // registered (it may still be attached, its counters and bindings on it).
    let mut used: HashSet<u32> = known.values().copied().collect();
    let mut slots = BTreeMap::new();
    for (i, ifindex) in cfg.interfaces.iter().zip(resolved) {
        let slot = match known.get(ifindex) {
            Some(s) => *s,
            None => {
                let s = (1..xdpgate_common::MAX_IFACES)
                    .find(|s| !used.contains(s))
                    .ok_or(DatapathError::TooManyInterfaces(resolved.len()))?;
                used.insert(s);
                s
            }
        };
        slots.insert(i.name.clone(), slot);
    }
    Ok(slots)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Daemon {
    /// Opens the pinned datapath (adopting the one an earlier run left
    /// enforcing, or loading a new one), installs either the saved state (when
    /// the state file grew from this same configuration) or the
    /// configuration's rules, bindings and services, and only then makes the
    /// program enforce on the configured interfaces: the first packet of a
    /// cold start is judged by the whole policy, and an adopted datapath
    /// changes program in one step per interface. On an error before that
    /// step, an adopted datapath goes on enforcing what it enforced.
    ///
    /// The state file's directory is checked first (a directory another user
    /// owns or may write to is refused); a state that cannot be written (a
    /// full or read-only filesystem) does not stop the start: the daemon
    /// enforces and reports the state unsaved ([`save`]).
    pub fn start(paths: &Paths, cfg: Config, overrides: Overrides) -> Result<Daemon, DaemonError> {
        let (saved, seq) = save::load(&cfg)?;
        let configured: Vec<String> = cfg.interfaces.iter().map(|i| i.name.clone()).collect();
        // Only a state that is resumed (same configuration) can carry
        // policies for interfaces the command line no longer names.
        let warnings = saved
            .as_ref()
            .filter(|s| s.config_digest == cfg.digest)
            .map(|s| save::orphans(s, &configured, &cfg.state_file))
            .unwrap_or_default();
        for w in &warnings {
            log::warn!("{w}");
        }
        let mut resolved = Vec::new();
        for i in &cfg.interfaces {
            resolved.push(sys::ifindex(&i.name).map_err(DatapathError::from)?);
        }
        let (mut dp, opened) = Datapath::open(
            paths,
            MapSizes {
                rings: cfg.lb.load_options(),
                limit_buckets: cfg.ddos.limit_buckets,
                acl: cfg.capacities,
            },
        )?;
        match &opened {
            Opened::Cold => {}
            Opened::Adopted(meta) => log::info!(
                "adopting the datapath pinned in {} (schema {}, program tag {}, enforcing on {} interface(s))",
                paths.bpffs_dir.display(),
                meta.schema,
                crate::datapath::pins::tag_hex(&meta.prog_tag),
                dp.adopted().count()
            ),
            Opened::Migrating(meta) => log::info!(
                "migrating the datapath pinned in {} from schema {} to {}: new maps beside the old, filled, then each of its {} link(s) switched in one step; counters start from zero",
                paths.bpffs_dir.display(),
                meta.schema,
                xdpgate_common::pins::SCHEMA_VERSION,
                dp.adopted().count()
            ),
        }
        // Only a datapath of this schema has state to take over.
        let adopted = matches!(opened, Opened::Adopted(_));
        // Rules with a limit or `syncookie` are refused before anything of
        // a running datapath is touched when they cannot be honoured.
        let starting_rules = match &saved {
            Some(s) if s.config_digest == cfg.digest => &s.acl.rules,
            _ => &cfg.acl.rules,
        };
        let mut timestamps_warned = false;
        let syncookies = ddos::prepare(
            &mut dp,
            &cfg.ddos,
            &ddos::Needs::of(starting_rules),
            &mut timestamps_warned,
        )?;
        if let Some(why) = &syncookies.reason {
            log::info!("SYN cookies disabled: {why}");
        }
        // Interfaces the running datapath knows keep their slot (and with it
        // their counters and bindings); new ones take free slots.
        let slots = keep_slots(&mut dp, &cfg, &resolved)?;
        dp.set_lb_config(&cfg.lb.lb_config().map_err(LbError::from)?)?;
        for (i, ifindex) in cfg.interfaces.iter().zip(&resolved) {
            dp.register(*ifindex, slots[&i.name], cfg.malformed)?;
        }
        dp.set_decision_cache(cfg.decision_cache)?;
        let mut events_reader = false;
        apply_events(&mut dp, &cfg, &mut events_reader)?;
        let mut ctl = AclController::new(slots.clone()).with_capacities(dp.acl_capacities());
        let mut binds = Bindings::new(cfg.bind_limit);
        let mut lb = LbController::new(&dp, resolved.clone());
        let ring_services = cfg.lb.max_services;
        let specs_of = |entries: &[ServiceEntry]| {
            xdpgate_model::lb::specs_of(entries, ring_services).map_err(LbError::Invalid)
        };
        if adopted {
            // Take over what the running datapath holds, as the earlier
            // daemon saved it, so that the install below changes only what
            // differs (and removes what is no longer configured).
            let previous = saved.as_ref();
            if let Some(acl) = previous.and_then(|s| AclState::from_file(&s.acl).ok()) {
                let n = ctl.adopt_counters(&dp, &acl)?;
                log::info!("adopted the counters of {n} rule(s)");
            }
            let specs = previous
                .and_then(|s| specs_of(&s.services).ok())
                .unwrap_or_default();
            let n = lb.adopt(&mut dp, &specs)?;
            if n > 0 {
                log::info!("adopted {n} load-balanced service(s)");
            }
        }
        if let Some(kind) = cfg.lb.flow_hash {
            let n = lb.set_flow_hash(&mut dp, kind)?;
            if n > 0 {
                log::info!("switched {n} service(s) to the {} flow hash", kind.name());
            }
        }
        let origin = match saved {
            Some(s) if s.config_digest == cfg.digest => {
                log::info!(
                    "resuming the state saved in {} at {} (configuration unchanged since)",
                    cfg.state_file.display(),
                    s.saved_at
                );
                let acl = s.acl_state(&cfg.state_file)?;
                ctl.install(&mut dp, acl)?;
                binds.restore(&mut dp, s.bindings)?;
                lb.apply(&mut dp, &specs_of(&s.services)?)?;
                Origin::StateFile
            }
            other => {
                if let Some(s) = other {
                    log::info!(
                        "the configuration changed since {} was saved: applying the configuration",
                        cfg.state_file.display()
                    );
                    // Take over what the previous run added, so that
                    // bindings the configuration no longer wants are removed.
                    binds.restore(&mut dp, s.bindings)?;
                }
                ctl.install(&mut dp, cfg.acl_state())?;
                binds.replace(&mut dp, &bind_requests(&cfg))?;
                lb.apply(&mut dp, &specs_of(&cfg.services)?)?;
                Origin::Config
            }
        };
        for i in &cfg.interfaces {
            binds.set_drop_unbound(&mut dp, &i.name, i.drop_unbound)?;
        }
        let decap_ifaces: Vec<(u32, u32)> = cfg
            .interfaces
            .iter()
            .zip(&resolved)
            .filter(|(i, _)| i.decap)
            .map(|(i, ifindex)| (*ifindex, slots[&i.name]))
            .collect();
        // Every interface's decapsulation flag as configured: an adopted
        // datapath may have it from an earlier configuration.
        for (i, ifindex) in cfg.interfaces.iter().zip(&resolved) {
            dp.set_iface_flag(*ifindex, xdpgate_common::IFACE_DECAP, i.decap)?;
        }
        if adopted {
            let n = binds.sweep(&mut dp)?;
            if n > 0 {
                log::info!(
                    "removed {n} bound address(es) the running datapath had and no binding makes"
                );
            }
        }
        let mut d = Daemon {
            dp,
            ctl,
            binds,
            lb,
            health: None,
            decap_ifaces,
            config: cfg,
            overrides,
            paths: paths.clone(),
            reload: ReloadStatus {
                attempts: 0,
                last_ok: true,
                last_success_unix: now_unix(),
                last_error: None,
            },
            origin,
            started: Instant::now(),
            events_reader,
            save: SaveStatus::default(),
            journal: save::Journaled::new(seq),
            warnings,
            syncookies,
            timestamps_warned,
        };
        d.refresh_decap()?;
        // Everything is in the maps: now the program enforces.
        let ifaces: Vec<(String, u32, XdpMode)> = d
            .config
            .interfaces
            .iter()
            .zip(&resolved)
            .map(|(i, ifindex)| (i.name.clone(), *ifindex, i.mode))
            .collect();
        let done = d.dp.enforce(&ifaces)?;
        for name in &done.retired {
            log::info!("{name} is no longer in the configuration: detached");
        }
        let known: HashSet<u32> = resolved.iter().copied().collect();
        for (ifindex, _) in d.dp.registered()? {
            if !known.contains(&ifindex) {
                d.dp.unregister(ifindex)?;
            }
        }
        d.dp.commit()?;
        d.manage_neighbours();
        // Enforcing now: a state that cannot be written leaves the daemon
        // degraded (reported and retried), never stopped; only a state
        // directory that became unsafe meanwhile stops the start.
        if let Err(e @ StateError::Unsafe(_)) = d.persist() {
            return Err(e.into());
        }
        Ok(d)
    }

    /// Applies an ACL change and records it in the journal.
    pub fn apply(&mut self, change: &Change) -> Result<Applied, DaemonError> {
        let t0 = Instant::now();
        let ddos = self.config.ddos.clone();
        self.refresh_syncookies(&ddos, &ddos::Needs::of_change(change))?;
        let t1 = Instant::now();
        // The second copy of the delta goes after the answer (`Shared::change`).
        let applied = self.ctl.apply_deferred(&mut self.dp, change)?;
        let t2 = Instant::now();
        self.record_change(change).map_err(DaemonError::NotSaved)?;
        log::debug!(
            "apply: syncookies {:?}, controller {:?}, journal {:?}",
            t1 - t0,
            t2 - t1,
            t2.elapsed()
        );
        Ok(applied)
    }

    /// Adds bindings and saves the result.
    pub fn bind_add(&mut self, reqs: &[BindRequest]) -> Result<Report, DaemonError> {
        let r = self.binds.add(&mut self.dp, reqs)?;
        self.refresh_decap()?;
        self.persist().map_err(DaemonError::NotSaved)?;
        Ok(r)
    }

    /// Removes bindings and saves the result.
    pub fn bind_del(&mut self, reqs: &[BindRequest]) -> Result<Report, DaemonError> {
        let r = self.binds.del(&mut self.dp, reqs)?;
        self.refresh_decap()?;
        self.persist().map_err(DaemonError::NotSaved)?;
        Ok(r)
    }
}

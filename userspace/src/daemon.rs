//! The running daemon's state: the datapath, the ACL controller, the address
//! bindings and the configuration in force, and the operations that change
//! them (runtime changes, reload), each all or nothing and each saved to the
//! state file when it succeeds.
use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use thiserror::Error;

use crate::{
    acl::{AclState, Change},
    bind::{BindError, BindRequest, Bindings},
    config::{self, Config, ConfigError},
    control::{AclController, Applied, ApplyError},
    datapath::{Datapath, DatapathError, Malformed},
    health::{HealthEvent, HealthMonitor},
    lb::{LbController, LbError, ServiceEntry, ServiceId, ServiceSpec},
    netlink::XdpMode,
    paths::Paths,
    state::{self, Saved, StateError},
    sys,
};

/// Command-line settings that override the configuration file, kept so a
/// reload applies them again.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--iface` (replaces the file's interface list; settings of interfaces
    /// named in both are kept).
    pub ifaces: Vec<String>,
    /// `--mode` (every interface).
    pub mode: Option<XdpMode>,
    /// `--malformed`.
    pub malformed: Option<Malformed>,
    /// `--metrics-listen` (replaces the file's list).
    pub metrics_listen: Vec<SocketAddr>,
    /// `--no-metrics`.
    pub no_metrics: bool,
    /// `--state-file`.
    pub state_file: Option<PathBuf>,
    /// `--acl-file`: sets and rules from a rule file instead of the config.
    pub acl_file: Option<PathBuf>,
    /// `--decap`: decapsulate on every interface.
    pub decap: bool,
}

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
    /// A change took effect but could not be saved.
    #[error("the change is in force, but it could not be saved, so a restart would lose it: {0}")]
    NotSaved(StateError),
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

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Applies the command-line overrides to a configuration read from a file
/// (or built from flags).
pub fn apply_overrides(mut cfg: Config, o: &Overrides) -> Result<Config, DaemonError> {
    if !o.ifaces.is_empty() {
        let old = std::mem::take(&mut cfg.interfaces);
        for name in &o.ifaces {
            let kept = old.iter().find(|i| &i.name == name).cloned();
            cfg.interfaces.push(kept.unwrap_or(config::Interface {
                name: name.clone(),
                mode: XdpMode::Native,
                policy: crate::acl::Verdict::Allow,
                drop_unbound: false,
                decap: false,
            }));
        }
        // Rules and bindings of interfaces no longer named are refused by
        // validation below, like any other reference to an unknown interface.
    }
    if let Some(m) = o.mode {
        for i in &mut cfg.interfaces {
            i.mode = m;
        }
    }
    if let Some(m) = o.malformed {
        cfg.malformed = m;
    }
    if o.decap {
        for i in &mut cfg.interfaces {
            i.decap = true;
        }
    }
    if !o.metrics_listen.is_empty() {
        cfg.metrics_listen = o.metrics_listen.clone();
    }
    if o.no_metrics {
        cfg.metrics_listen.clear();
    }
    if let Some(f) = &o.state_file {
        cfg.state_file = f.clone();
    }
    if let Some(f) = &o.acl_file {
        let text = std::fs::read_to_string(f).map_err(|e| DaemonError::RuleFile {
            path: f.clone(),
            why: e.to_string(),
        })?;
        let file: crate::acl::RuleFile =
            toml::from_str(&text).map_err(|e| DaemonError::RuleFile {
                path: f.clone(),
                why: e.to_string(),
            })?;
        cfg.acl.sets = file.sets;
        cfg.acl.rules = file.rules;
        cfg.acl.policy.extend(file.policy);
        cfg.digest = config::digest(&format!("{}{text}", cfg.digest));
    }
    if cfg.interfaces.is_empty() {
        return Err(DaemonError::NoInterface);
    }
    for i in &cfg.interfaces {
        cfg.acl.policy.entry(i.name.clone()).or_insert(i.policy);
    }
    // Re-validate what the overrides may have changed.
    let names = cfg.iface_names();
    let mut issues = Vec::new();
    if let Err(errs) = AclState::from_file(&cfg.acl)
        .map_err(|e| e.into_iter().map(|e| e.to_string()).collect::<Vec<_>>())
        .and_then(|s| {
            crate::acl::compile::compile(&s, &cfg.slots())
                .map(|_| ())
                .map_err(|e| e.into_iter().map(|e| e.to_string()).collect())
        })
    {
        issues.extend(errs);
    }
    for p in cfg.acl.policy.keys() {
        if !names.contains(p) {
            issues.push(format!(
                "default policy for {p}, which is not an attached interface"
            ));
        }
    }
    for b in &cfg.bindings {
        if !names.contains(&b.iface) {
            issues.push(format!(
                "binding {} on {}, which is not an attached interface",
                b.spec, b.iface
            ));
        }
    }
    if !issues.is_empty() {
        return Err(ConfigError::Invalid {
            path: cfg.path.clone(),
            issues: issues
                .into_iter()
                .map(|message| config::Issue { at: None, message })
                .collect(),
        }
        .into());
    }
    Ok(cfg)
}

/// The binding requests of a configuration.
pub fn bind_requests(cfg: &Config) -> Vec<BindRequest> {
    cfg.bindings
        .iter()
        .map(|b| BindRequest {
            iface: b.iface.clone(),
            spec: b.spec.clone(),
            plen: b.plen,
            nodad: b.nodad,
        })
        .collect()
}

impl Daemon {
    /// Loads and attaches the datapath for `cfg`, then installs either the
    /// saved state (when the state file grew from this same configuration) or
    /// the configuration's rules and bindings. On any error everything is
    /// undone (the datapath detaches when dropped).
    pub fn start(paths: &Paths, cfg: Config, overrides: Overrides) -> Result<Daemon, DaemonError> {
        let saved = state::load(&cfg.state_file)?;
        let mut resolved = Vec::new();
        for i in &cfg.interfaces {
            resolved.push(sys::ifindex(&i.name).map_err(DatapathError::from)?);
        }
        let mut dp = Datapath::load_with(cfg.lb.load_options())?;
        dp.set_lb_config(&cfg.lb.lb_config()?)?;
        for (slot, ifindex) in resolved.iter().enumerate() {
            dp.register(*ifindex, slot as u32 + 1, cfg.malformed)?;
        }
        dp.pin(paths)?;
        for (i, ifindex) in cfg.interfaces.iter().zip(&resolved) {
            dp.attach(&i.name, *ifindex, i.mode)?;
        }
        dp.set_decision_cache(cfg.decision_cache)?;
        let mut events_reader = false;
        apply_events(&mut dp, &cfg, &mut events_reader)?;
        let mut ctl = AclController::new(cfg.slots());
        let mut binds = Bindings::new(cfg.bind_limit);
        let mut lb = LbController::new(&dp, resolved.clone());
        let ring_services = cfg.lb.max_services;
        let specs_of = |entries: &[ServiceEntry]| {
            crate::lb::specs_of(entries, ring_services).map_err(LbError::Invalid)
        };
        let origin = match saved {
            Some(s) if s.config_digest == cfg.digest => {
                log::info!(
                    "resuming the state saved in {} at {} (configuration unchanged since)",
                    cfg.state_file.display(),
                    s.saved_at
                );
                let acl = AclState::from_file(&s.acl).map_err(|errs| StateError::Corrupt {
                    path: cfg.state_file.clone(),
                    why: errs
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; "),
                })?;
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
            .enumerate()
            .filter(|(_, (i, _))| i.decap)
            .map(|(slot, (_, ifindex))| (*ifindex, slot as u32 + 1))
            .collect();
        for (ifindex, _) in &decap_ifaces {
            dp.set_iface_flag(*ifindex, xdpgate_common::IFACE_DECAP, true)?;
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
        };
        d.refresh_decap()?;
        d.manage_neighbours();
        d.persist()?;
        Ok(d)
    }

    /// Saves the state in force to the state file.
    pub fn persist(&self) -> Result<(), StateError> {
        state::save(
            &self.config.state_file,
            &Saved {
                services: self
                    .lb
                    .specs()
                    .iter()
                    .map(ServiceEntry::from_spec)
                    .collect(),
                ..Saved::new(
                    &self.config.digest,
                    self.ctl.state(),
                    self.binds.list().to_vec(),
                )
            },
        )
    }

    /// Sets the decapsulator's outer destinations to the addresses now on
    /// the interfaces that decapsulate (at start, after binding changes and
    /// on reload).
    pub fn refresh_decap(&mut self) -> Result<(), DaemonError> {
        if self.decap_ifaces.is_empty() {
            return Ok(());
        }
        let addrs = crate::netlink::addresses(None).map_err(|e| {
            DaemonError::Lb(LbError::Parse(format!(
                "cannot read the interfaces' addresses for decapsulation: {e}"
            )))
        })?;
        let mut keys = Vec::new();
        for (ifindex, slot) in &self.decap_ifaces {
            for a in addrs.iter().filter(|a| a.ifindex == *ifindex) {
                let (addr, family) = crate::lb::addr_key(a.addr);
                keys.push(xdpgate_common::LocalAddrKey {
                    slot: *slot,
                    family: family as u32,
                    addr,
                });
            }
        }
        self.dp.set_decap_dsts(&keys)?;
        Ok(())
    }

    /// Decapsulated packets and bytes per (interface, outer family, inner
    /// family) of every interface that decapsulates.
    #[allow(clippy::type_complexity)]
    pub fn decap_counters(
        &self,
    ) -> Result<Vec<(String, &'static str, &'static str, u64, u64)>, DaemonError> {
        use xdpgate_common::lb::{FAMILY_V4, FAMILY_V6};
        let mut out = Vec::new();
        for (ifindex, slot) in &self.decap_ifaces {
            let name = self
                .dp
                .attached()
                .iter()
                .find(|a| a.ifindex == *ifindex)
                .map(|a| a.iface.clone())
                .unwrap_or_else(|| ifindex.to_string());
            for (o, on) in [(FAMILY_V4, "ipv4"), (FAMILY_V6, "ipv6")] {
                for (i, iname) in [(FAMILY_V4, "ipv4"), (FAMILY_V6, "ipv6")] {
                    let c = self.dp.decap_counter(*slot, o, i)?;
                    out.push((name.clone(), on, iname, c.packets, c.bytes));
                }
            }
        }
        Ok(out)
    }

    /// Starts the health checks of every service (inside the async runtime)
    /// and returns the receiver of their state changes, which the caller
    /// feeds to [`Daemon::on_health`].
    pub fn start_health(
        &mut self,
        tracker: tokio_util::task::TaskTracker,
        cancel: tokio_util::sync::CancellationToken,
    ) -> tokio::sync::mpsc::UnboundedReceiver<HealthEvent> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut m = HealthMonitor::new(tracker, cancel, tx);
        m.set_targets(self.lb.health_targets());
        self.health = Some(m);
        rx
    }

    /// Asks the kernel to keep the neighbour entries of every on-link
    /// backend resolved (managed entries, Linux 5.16+), so the datapath's
    /// route lookups find their link-layer addresses from the first packet:
    /// L2 DSR needs them (it drops as `lb_no_neighbor` otherwise) and
    /// encapsulation avoids the slow path. Failures are logged, not fatal.
    fn manage_neighbours(&self) {
        let ifindexes: Vec<u32> = self.dp.attached().iter().map(|a| a.ifindex).collect();
        let addrs = match crate::netlink::addresses(None) {
            Ok(a) => a,
            Err(e) => {
                log::warn!("load balancer: cannot read interface addresses for neighbours: {e}");
                return;
            }
        };
        let mut done = std::collections::BTreeSet::new();
        for spec in self.lb.specs() {
            for b in &spec.backends {
                let on = addrs.iter().find(|a| {
                    ifindexes.contains(&a.ifindex)
                        && ipnetwork::IpNetwork::new(a.addr, a.plen)
                            .is_ok_and(|n| n.contains(b.addr) && a.addr != b.addr)
                });
                let Some(on) = on else {
                    continue;
                };
                if !done.insert((on.ifindex, b.addr)) {
                    continue;
                }
                if let Err(e) = crate::netlink::neigh_managed(on.ifindex, b.addr) {
                    log::warn!(
                        "load balancer: cannot keep the neighbour entry of backend {} resolved: {e}",
                        b.addr
                    );
                }
            }
        }
    }

    /// Re-targets the health checks after the services changed.
    fn retarget_health(&mut self) {
        if let Some(m) = &mut self.health {
            m.set_targets(self.lb.health_targets());
        }
    }

    /// Applies a health state change: the backend leaves or rejoins its
    /// service's ring.
    pub fn on_health(&mut self, ev: &HealthEvent) {
        let Ok(id) = ev.key.service.parse::<ServiceId>() else {
            return;
        };
        match self.lb.set_health(&mut self.dp, &id, ev.key.backend, ev.up) {
            Ok(true) => log::info!(
                "load balancer: backend {} of {id} {} the ring",
                ev.key.backend,
                if ev.up { "rejoined" } else { "left" }
            ),
            Ok(false) => {}
            Err(e) => log::error!(
                "load balancer: cannot update the ring of {id} for backend {}: {e}",
                ev.key.backend
            ),
        }
    }

    /// Replaces the services with `specs` (all or nothing), re-targets the
    /// health checks and saves the result.
    pub fn lb_replace(&mut self, specs: Vec<ServiceSpec>) -> Result<(), DaemonError> {
        self.lb.apply(&mut self.dp, &specs)?;
        self.retarget_health();
        self.sync_health_state();
        self.manage_neighbours();
        self.persist().map_err(DaemonError::NotSaved)?;
        Ok(())
    }

    /// Pushes the health state the monitor knows into the rings (a service
    /// re-installed starts with every backend in).
    fn sync_health_state(&mut self) {
        let Some(m) = &self.health else {
            return;
        };
        let down: Vec<_> = m.status().into_iter().filter(|t| !t.up).collect();
        for t in down {
            if let Ok(id) = t.key.service.parse::<ServiceId>() {
                let _ = self.lb.set_health(&mut self.dp, &id, t.key.backend, false);
            }
        }
    }

    /// Adds a service, or replaces the one with the same VIP, protocol and
    /// port when `replace`.
    pub fn lb_add(&mut self, entry: &ServiceEntry, replace: bool) -> Result<(), DaemonError> {
        let spec = entry.to_spec().map_err(LbError::Invalid)?;
        let mut specs = self.lb.specs();
        match specs.iter().position(|s| s.id == spec.id) {
            Some(_) if !replace => {
                return Err(LbError::Invalid(vec![format!(
                    "service {} exists; use lb add --replace to change it",
                    spec.id
                )])
                .into());
            }
            Some(i) => specs[i] = spec,
            None => specs.push(spec),
        }
        self.lb_replace(specs)
    }

    /// Removes a service.
    pub fn lb_del(&mut self, service: &str) -> Result<(), DaemonError> {
        let id: ServiceId = service.parse()?;
        let mut specs = self.lb.specs();
        let before = specs.len();
        specs.retain(|s| s.id != id);
        if specs.len() == before {
            return Err(LbError::NoService(id.to_string()).into());
        }
        self.lb_replace(specs)
    }

    /// Applies an ACL change and saves the result.
    pub fn apply(&mut self, change: &Change) -> Result<Applied, DaemonError> {
        let applied = self.ctl.apply(&mut self.dp, change)?;
        self.persist().map_err(DaemonError::NotSaved)?;
        Ok(applied)
    }

    /// Adds bindings and saves the result.
    pub fn bind_add(&mut self, reqs: &[BindRequest]) -> Result<crate::bind::Report, DaemonError> {
        let r = self.binds.add(&mut self.dp, reqs)?;
        self.refresh_decap()?;
        self.persist().map_err(DaemonError::NotSaved)?;
        Ok(r)
    }

    /// Removes bindings and saves the result.
    pub fn bind_del(&mut self, reqs: &[BindRequest]) -> Result<crate::bind::Report, DaemonError> {
        let r = self.binds.del(&mut self.dp, reqs)?;
        self.refresh_decap()?;
        self.persist().map_err(DaemonError::NotSaved)?;
        Ok(r)
    }

    /// Re-reads the configuration file and makes it the state in force: its
    /// rules, sets, policies and bindings replace the running ones (runtime
    /// changes included). All or nothing: on any error the running state
    /// stays, and the error says why.
    pub fn reload(&mut self) -> Result<String, DaemonError> {
        self.reload.attempts += 1;
        let r = self.try_reload();
        match &r {
            Ok(_) => {
                self.reload.last_ok = true;
                self.reload.last_success_unix = now_unix();
                self.reload.last_error = None;
            }
            Err(e) => {
                self.reload.last_ok = false;
                self.reload.last_error = Some(e.to_string());
            }
        }
        r
    }

    fn try_reload(&mut self) -> Result<String, DaemonError> {
        if self.config.path.as_os_str().is_empty() {
            return Err(DaemonError::NeedsRestart(
                "the daemon was started without --config, so there is no file to reload".into(),
            ));
        }
        let next = apply_overrides(config::load(&self.config.path)?, &self.overrides)?;
        let running = &self.config;
        let shape = |c: &Config| {
            c.interfaces
                .iter()
                .map(|i| format!("{} ({})", i.name, i.mode.name()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if shape(&next) != shape(running) {
            return Err(DaemonError::NeedsRestart(format!(
                "the interfaces changed (running: {}; file: {})",
                shape(running),
                shape(&next)
            )));
        }
        if next.metrics_listen != running.metrics_listen
            || next.metrics_freebind != running.metrics_freebind
        {
            return Err(DaemonError::NeedsRestart(
                "the metrics listen addresses changed".into(),
            ));
        }
        if next.state_file != running.state_file {
            return Err(DaemonError::NeedsRestart("the state file changed".into()));
        }
        if next.malformed != running.malformed {
            return Err(DaemonError::NeedsRestart(
                "the malformed-packet policy changed".into(),
            ));
        }
        if next.lb != running.lb {
            return Err(DaemonError::NeedsRestart(
                "the [lb] settings changed".into(),
            ));
        }
        let decaps = |c: &Config| c.interfaces.iter().map(|i| i.decap).collect::<Vec<_>>();
        if decaps(&next) != decaps(running) {
            return Err(DaemonError::NeedsRestart(
                "the interfaces' decap settings changed".into(),
            ));
        }
        let specs =
            crate::lb::specs_of(&next.services, next.lb.max_services).map_err(LbError::Invalid)?;
        // Validate the bindings before touching anything.
        let reqs = bind_requests(&next);
        let errs = Bindings::validate(&reqs, next.bind_limit, &next.iface_names());
        if !errs.is_empty() {
            return Err(ConfigError::Invalid {
                path: next.path.clone(),
                issues: errs
                    .into_iter()
                    .map(|e| config::Issue {
                        at: None,
                        message: e.to_string(),
                    })
                    .collect(),
            }
            .into());
        }
        // ACL first, then bindings; a failure of the bindings puts the old
        // ACL back.
        let old_acl = self.ctl.state().clone();
        let applied = self.ctl.install(&mut self.dp, next.acl_state())?;
        self.binds.set_limit(next.bind_limit);
        let old_binds = bind_requests(&self.config);
        if let Err(e) = self.binds.replace(&mut self.dp, &reqs) {
            if let Err(back) = self.ctl.install(&mut self.dp, old_acl) {
                log::error!("reload: restoring the previous rules failed too: {back}");
            }
            return Err(e.into());
        }
        if let Err(e) = self.lb.apply(&mut self.dp, &specs) {
            if let Err(back) = self.binds.replace(&mut self.dp, &old_binds) {
                log::error!("reload: restoring the previous bindings failed too: {back}");
            }
            if let Err(back) = self.ctl.install(&mut self.dp, old_acl) {
                log::error!("reload: restoring the previous rules failed too: {back}");
            }
            return Err(e.into());
        }
        self.retarget_health();
        self.sync_health_state();
        self.manage_neighbours();
        self.refresh_decap()?;
        let mut flags = Ok(());
        for i in &next.interfaces {
            flags = flags.and(
                self.binds
                    .set_drop_unbound(&mut self.dp, &i.name, i.drop_unbound),
            );
        }
        flags?;
        self.dp.set_decision_cache(next.decision_cache)?;
        apply_events(&mut self.dp, &next, &mut self.events_reader)?;
        self.config = next;
        self.persist().map_err(DaemonError::NotSaved)?;
        Ok(format!(
            "reloaded {}: {} rules, {} prefixes, {} bound addresses, {} services",
            self.config.path.display(),
            applied.rules,
            applied.prefixes,
            self.binds.list().len(),
            self.lb.specs().len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn example() -> Config {
        config::parse(
            include_str!("../../deploy/xdpgate.toml"),
            Path::new("deploy/xdpgate.toml"),
        )
        .unwrap()
    }

    #[test]
    fn flags_override_the_file() {
        let cfg = example();
        let o = Overrides {
            mode: Some(XdpMode::Skb),
            malformed: Some(Malformed::Pass),
            metrics_listen: vec!["[::]:9100".parse().unwrap()],
            state_file: Some("/tmp/x.json".into()),
            ..Default::default()
        };
        let c = apply_overrides(cfg.clone(), &o).unwrap();
        assert_eq!(c.interfaces[0].mode, XdpMode::Skb);
        assert_eq!(c.malformed, Malformed::Pass);
        assert_eq!(c.metrics_listen, ["[::]:9100".parse().unwrap()]);
        assert_eq!(c.state_file, Path::new("/tmp/x.json"));
        // Without flags the file stands as it is.
        assert_eq!(
            apply_overrides(cfg.clone(), &Overrides::default()).unwrap(),
            cfg
        );
        let c = apply_overrides(
            cfg.clone(),
            &Overrides {
                no_metrics: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(c.metrics_listen.is_empty());
    }

    #[test]
    fn an_iface_flag_keeps_the_settings_of_interfaces_it_names() {
        let mut cfg = example();
        cfg.bindings.clear();
        cfg.interfaces[0].policy = crate::acl::Verdict::Deny;
        cfg.acl.policy.clear();
        let c = apply_overrides(
            cfg.clone(),
            &Overrides {
                ifaces: vec!["eth0".into(), "eth1".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.iface_names(), ["eth0", "eth1"]);
        assert_eq!(c.interfaces[0].policy, crate::acl::Verdict::Deny);
        assert_eq!(c.interfaces[1].policy, crate::acl::Verdict::Allow);
        assert_eq!(c.acl.policy["eth0"], crate::acl::Verdict::Deny);
    }

    #[test]
    fn an_iface_flag_that_drops_a_bound_interface_is_refused() {
        let err = apply_overrides(
            example(),
            &Overrides {
                ifaces: vec!["eth1".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, DaemonError::Config(_)), "{err}");
        assert!(err.to_string().contains("eth0"), "{err}");
        assert!(matches!(
            apply_overrides(
                Config::from_flags(&[], XdpMode::Native, Malformed::Drop),
                &Overrides::default()
            ),
            Err(DaemonError::NoInterface)
        ));
    }
}

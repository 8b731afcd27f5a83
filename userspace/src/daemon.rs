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
        let mut dp = Datapath::load()?;
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
                Origin::Config
            }
        };
        for i in &cfg.interfaces {
            binds.set_drop_unbound(&mut dp, &i.name, i.drop_unbound)?;
        }
        let d = Daemon {
            dp,
            ctl,
            binds,
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
        d.persist()?;
        Ok(d)
    }

    /// Saves the state in force to the state file.
    pub fn persist(&self) -> Result<(), StateError> {
        state::save(
            &self.config.state_file,
            &Saved::new(
                &self.config.digest,
                self.ctl.state(),
                self.binds.list().to_vec(),
            ),
        )
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
        self.persist().map_err(DaemonError::NotSaved)?;
        Ok(r)
    }

    /// Removes bindings and saves the result.
    pub fn bind_del(&mut self, reqs: &[BindRequest]) -> Result<crate::bind::Report, DaemonError> {
        let r = self.binds.del(&mut self.dp, reqs)?;
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
        if let Err(e) = self.binds.replace(&mut self.dp, &reqs) {
            if let Err(back) = self.ctl.install(&mut self.dp, old_acl) {
                log::error!("reload: restoring the previous rules failed too: {back}");
            }
            return Err(e.into());
        }
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
            "reloaded {}: {} rules, {} prefixes, {} bound addresses",
            self.config.path.display(),
            applied.rules,
            applied.prefixes,
            self.binds.list().len()
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

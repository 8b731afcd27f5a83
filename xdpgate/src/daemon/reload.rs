//! Reload (SIGHUP, `xdpgate reload`): the configuration file becomes the
//! state in force, all or nothing. Interfaces may be added and removed: a
//! new one is registered and gets its whole state (rules, bindings,
//! services, flags) before it is attached, last; a removed one is detached
//! and unregistered; the others are not touched.
use std::collections::{BTreeMap, HashSet};

use xdpgate_model::{
    acl::AclState,
    bind::{self, BindRequest},
    config::{self, ConfigError},
    iface::XdpMode,
    lb::ServiceSpec,
};

use super::{
    Daemon, DaemonError, apply_events, apply_overrides, bind_requests, ddos, keep_slots, now_unix,
};
use crate::{datapath::DatapathError, lb::LbError, sys};

/// What a reload puts back when a later step fails.
struct Undo {
    acl: AclState,
    slots: BTreeMap<String, u32>,
    binds: Vec<BindRequest>,
    services: Vec<ServiceSpec>,
    ifindexes: Vec<u32>,
    /// Interfaces the reload registered: (ifindex, slot).
    new: Vec<(u32, u32)>,
}

/// The step of a reload that failed (everything before it is undone).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Acl,
    Binds,
    Services,
    All,
}

impl Daemon {
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
        // Interfaces may come and go; a kept interface cannot change its mode
        // (that is a detach and an attach: a moment unfiltered).
        for i in &next.interfaces {
            if let Some(r) = running.interfaces.iter().find(|r| r.name == i.name)
                && r.mode != i.mode
            {
                return Err(DaemonError::NeedsRestart(format!(
                    "{}'s XDP mode changed from {} to {}: run `xdpgate down --iface {}` with the daemon stopped, then start it",
                    i.name,
                    r.mode.name(),
                    i.mode.name(),
                    i.name
                )));
            }
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
        if let Some(why) = running.ddos.needs_restart(&next.ddos) {
            return Err(DaemonError::NeedsRestart(why));
        }
        if let Some(why) = running.capacities.needs_restart(&next.capacities) {
            return Err(DaemonError::NeedsRestart(why));
        }
        // Rules with a limit or `syncookie` are refused before anything is
        // touched when they cannot be honoured; the SYN-cookie configuration
        // is written once the reload succeeded.
        ddos::refuse(&self.dp, &ddos::Needs::of(&next.acl.rules))?;
        let specs = xdpgate_model::lb::specs_of(&next.services, next.lb.max_services)
            .map_err(LbError::Invalid)?;
        // Validate the bindings before touching anything.
        let reqs = bind_requests(&next);
        let errs = bind::validate(&reqs, next.bind_limit, &next.iface_names());
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
        let mut resolved = Vec::with_capacity(next.interfaces.len());
        for i in &next.interfaces {
            resolved.push(sys::ifindex(&i.name).map_err(DatapathError::from)?);
        }
        // New interfaces are registered (under a slot no registered interface
        // has) and get their whole state before they are attached, last.
        let slots = keep_slots(&mut self.dp, &next, &resolved)?;
        let registered: HashSet<u32> = self.dp.registered()?.into_iter().map(|(i, _)| i).collect();
        let new: Vec<(u32, u32)> = next
            .interfaces
            .iter()
            .zip(&resolved)
            .filter(|(_, ifindex)| !registered.contains(ifindex))
            .map(|(i, ifindex)| (*ifindex, slots[&i.name]))
            .collect();
        for (ifindex, slot) in &new {
            self.dp.register(*ifindex, *slot, next.malformed)?;
        }
        let old = Undo {
            acl: self.ctl.state().clone(),
            slots: self.ctl.slots().clone(),
            binds: bind_requests(&self.config),
            services: self.lb.specs(),
            ifindexes: self.lb.set_ifindexes(resolved.clone()),
            new,
        };
        let applied = match self.ctl.install_for(&mut self.dp, next.acl_state(), slots) {
            Ok(a) => a,
            Err(e) => {
                self.undo(old, Step::Acl);
                return Err(e.into());
            }
        };
        self.binds.set_limit(next.bind_limit);
        if let Err(e) = self.binds.replace(&mut self.dp, &reqs) {
            self.undo(old, Step::Binds);
            return Err(e.into());
        }
        if let Err(e) = self.lb.apply(&mut self.dp, &specs) {
            self.undo(old, Step::Services);
            return Err(e.into());
        }
        let ifaces: Vec<(String, u32, XdpMode)> = next
            .interfaces
            .iter()
            .zip(&resolved)
            .map(|(i, ifindex)| (i.name.clone(), *ifindex, i.mode))
            .collect();
        let mut flags = Ok(());
        for (i, ifindex) in next.interfaces.iter().zip(&resolved) {
            flags = flags.and(
                self.dp
                    .set_iface_flag(*ifindex, xdpgate_common::IFACE_DECAP, i.decap)
                    .map_err(DaemonError::from),
            );
        }
        let enforced = flags.and_then(|()| self.dp.set_interfaces(&ifaces).map_err(Into::into));
        let done = match enforced {
            Ok(done) => done,
            Err(e) => {
                self.undo(old, Step::All);
                return Err(e);
            }
        };
        let kept: HashSet<u32> = resolved.iter().copied().collect();
        for ifindex in registered.iter().filter(|i| !kept.contains(i)) {
            self.dp.unregister(*ifindex)?;
        }
        self.decap_ifaces = next
            .interfaces
            .iter()
            .zip(&resolved)
            .filter(|(i, _)| i.decap)
            .map(|(i, ifindex)| (*ifindex, self.ctl.slots()[&i.name]))
            .collect();
        for name in &done.attached {
            log::info!("reload: attached to {name}");
        }
        for name in &done.retired {
            log::info!("reload: {name} is no longer in the configuration: detached");
        }
        self.retarget_health();
        self.sync_health_state();
        self.manage_neighbours();
        self.refresh_decap()?;
        let mut unbound = Ok(());
        for i in &next.interfaces {
            unbound = unbound.and(self.binds.set_drop_unbound(
                &mut self.dp,
                &i.name,
                i.drop_unbound,
            ));
        }
        unbound?;
        self.dp.set_decision_cache(next.decision_cache)?;
        apply_events(&mut self.dp, &next, &mut self.events_reader)?;
        self.refresh_syncookies(&next.ddos, &ddos::Needs::of(&next.acl.rules))?;
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

impl Daemon {
    /// Puts back what a reload changed before `failed` (in reverse order);
    /// failures here are logged: the error of the reload is what is reported.
    fn undo(&mut self, old: Undo, failed: Step) {
        if failed > Step::Services
            && let Err(e) = self.lb.apply(&mut self.dp, &old.services)
        {
            log::error!("reload: restoring the previous services failed too: {e}");
        }
        self.lb.set_ifindexes(old.ifindexes);
        if failed > Step::Binds
            && let Err(e) = self.binds.replace(&mut self.dp, &old.binds)
        {
            log::error!("reload: restoring the previous bindings failed too: {e}");
        }
        if failed > Step::Acl
            && let Err(e) = self.ctl.install_for(&mut self.dp, old.acl, old.slots)
        {
            log::error!("reload: restoring the previous rules failed too: {e}");
        }
        if failed == Step::All {
            for i in &self.config.interfaces {
                if let Ok(ifindex) = sys::ifindex(&i.name)
                    && let Err(e) =
                        self.dp
                            .set_iface_flag(ifindex, xdpgate_common::IFACE_DECAP, i.decap)
                {
                    log::error!("reload: restoring {}'s decap flag failed: {e}", i.name);
                }
            }
        }
        for (ifindex, _) in old.new {
            if let Err(e) = self.dp.unregister(ifindex) {
                log::error!("reload: unregistering interface {ifindex} failed: {e}");
            }
        }
    }
}

//! Reload (SIGHUP, `xdpgate reload`): the configuration file becomes the
//! state in force, all or nothing.
use xdpgate_model::{
    bind,
    config::{self, Config, ConfigError},
};

use super::{Daemon, DaemonError, apply_events, apply_overrides, bind_requests, now_unix};
use crate::lb::LbError;

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

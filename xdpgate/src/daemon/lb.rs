//! The daemon's load balancer and decapsulator: service changes, health
//! state changes, the neighbour entries of on-link backends, and the
//! decapsulator's outer destinations.
use xdpgate_model::lb::{ServiceEntry, ServiceId, ServiceSpec};

use super::{Daemon, DaemonError};
use crate::{
    lb::{
        LbError,
        health::{HealthEvent, HealthMonitor},
    },
    sys::netlink,
};

impl Daemon {
    /// Sets the decapsulator's outer destinations to the addresses now on
    /// the interfaces that decapsulate (at start, after binding changes and
    /// on reload).
    pub fn refresh_decap(&mut self) -> Result<(), DaemonError> {
        if self.decap_ifaces.is_empty() {
            // No interface decapsulates: none of its outer destinations may
            // stay (an adopted datapath may hold an earlier configuration's).
            self.dp.set_decap_dsts(&[])?;
            return Ok(());
        }
        let addrs = netlink::addresses(None).map_err(|source| DaemonError::Netlink {
            what: "cannot read the interfaces' addresses for decapsulation",
            source,
        })?;
        let mut keys = Vec::new();
        for (ifindex, slot) in &self.decap_ifaces {
            for a in addrs.iter().filter(|a| a.ifindex == *ifindex) {
                let (addr, family) = xdpgate_model::lb::addr_key(a.addr);
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
    #[allow(
        clippy::type_complexity,
        reason = "a row tuple read by two callers that each name its fields"
    )]
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
    pub(super) fn manage_neighbours(&self) {
        let ifindexes: Vec<u32> = self.dp.attached().iter().map(|a| a.ifindex).collect();
        let addrs = match netlink::addresses(None) {
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
                if let Err(e) = netlink::neigh_managed(on.ifindex, b.addr) {
                    log::warn!(
                        "load balancer: cannot keep the neighbour entry of backend {} resolved: {e}",
                        b.addr
                    );
                }
            }
        }
    }

    /// Re-targets the health checks after the services changed.
    pub(super) fn retarget_health(&mut self) {
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
    pub fn lb_replace(&mut self, specs: &[ServiceSpec]) -> Result<(), DaemonError> {
        self.lb.apply(&mut self.dp, specs)?;
        self.retarget_health();
        self.sync_health_state();
        self.manage_neighbours();
        self.persist().map_err(DaemonError::NotSaved)?;
        Ok(())
    }

    /// Pushes the health state the monitor knows into the rings (a service
    /// re-installed starts with every backend in).
    pub(super) fn sync_health_state(&mut self) {
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
        self.lb_replace(&specs)
    }

    /// Removes a service.
    pub fn lb_del(&mut self, service: &str) -> Result<(), DaemonError> {
        let id: ServiceId = service.parse().map_err(LbError::from)?;
        let mut specs = self.lb.specs();
        let before = specs.len();
        specs.retain(|s| s.id != id);
        if specs.len() == before {
            return Err(LbError::NoService(id.to_string()).into());
        }
        self.lb_replace(&specs)
    }
}

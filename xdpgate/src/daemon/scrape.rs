//! One Prometheus scrape of the daemon: its own status (reload, bound
//! addresses, services, health checks, decapsulation) with the datapath's
//! counters, gathered under the daemon's lock and rendered as the text
//! exposition (see [`crate::metrics`]).
use super::Daemon;
use crate::{lb::health::HealthMonitor, metrics};

impl Daemon {
    /// The metrics exposition, or why it could not be gathered (the metrics
    /// server answers 500 with it).
    pub fn metrics(&self) -> Result<String, String> {
        // Every interface and family is present, at zero until bound.
        let mut bound: Vec<(String, String, u64)> = Vec::new();
        for i in &self.config.interfaces {
            for fam in ["ipv4", "ipv6"] {
                bound.push((i.name.clone(), fam.to_string(), 0));
            }
        }
        for (iface, fam, n) in self.binds.counts() {
            if let Some(row) = bound.iter_mut().find(|r| r.0 == iface && r.1 == fam) {
                row.2 = n as u64;
            }
        }
        let status = metrics::DaemonStatus {
            last_reload_success_unix: self.reload.last_success_unix,
            last_reload_ok: self.reload.last_ok,
            state_save: metrics::StateSave {
                unsaved: self.save_status().unsaved.is_some(),
                failures: self.save_status().failures,
            },
            bound_addresses: bound,
            lb_services: self.lb.status(&self.dp).map_err(|e| e.to_string())?,
            health: self
                .health
                .as_ref()
                .map(HealthMonitor::status)
                .unwrap_or_default(),
            decap: self.decap_counters().map_err(|e| e.to_string())?,
            datapath: metrics::DatapathInfo {
                schema: xdpgate_common::pins::SCHEMA_VERSION,
                prog_tag: self
                    .dp
                    .committed_tag()
                    .map(|t| crate::datapath::pins::tag_hex(&t))
                    .unwrap_or_default(),
                attached: self
                    .dp
                    .attached()
                    .iter()
                    .map(|a| {
                        let since = a
                            .since
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs());
                        (a.iface.clone(), since)
                    })
                    .collect(),
            },
        };
        metrics::gather(&self.dp, &self.ctl, &self.paths, &status)
            .map(|s| metrics::render(&s))
            .map_err(|e| e.to_string())
    }
}

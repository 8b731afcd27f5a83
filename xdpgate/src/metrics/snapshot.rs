//! What the daemon exports, gathered in one [`Snapshot`] under its lock (it
//! only reads maps and the controllers' state); rendered outside it.
use thiserror::Error;
use xdpgate_common::MAX_IFACES;
use xdpgate_model::acl::model::{AddrMatch, limits};

use crate::{
    acl::AclController,
    datapath::{
        Datapath, DatapathError,
        stats::{self, Report, StatsError},
    },
    paths::Paths,
    sys,
};

/// Errors of gathering a snapshot.
#[derive(Debug, Error)]
pub enum MetricsError {
    /// Reading the traffic counters failed.
    #[error("reading counters: {0}")]
    Stats(#[from] StatsError),
    /// Reading the rule or default-policy counters failed.
    #[error("reading rule counters: {0}")]
    Datapath(#[from] DatapathError),
}

/// Packets and bytes one ACL rule matched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleRow {
    /// Rule id.
    pub id: u32,
    /// The rule's verdict: `allow` or `deny`.
    pub action: String,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
    /// Packets of each limit and SYN-cookie counter
    /// (`xdpgate_common::limit::rule_stat` order), for a rule with a limit
    /// or `syncookie`.
    pub limits: Option<[u64; 6]>,
}

/// Packets and bytes that fell to one interface's default policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DefaultRow {
    /// Interface name.
    pub interface: String,
    /// The policy: `allow` or `deny`.
    pub policy: String,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Fill of one capacity-limited table: entries in use against the limit
/// beyond which a change is rejected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableFill {
    /// Table name: `interfaces`, `rules`, `prefix_sets`, `ipv4_prefixes`,
    /// `ipv6_prefixes`.
    pub table: &'static str,
    /// Entries in use.
    pub entries: u64,
    /// Most entries allowed.
    pub capacity: u64,
}

/// The daemon's own status, which [`gather`] cannot read from the datapath.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DaemonStatus {
    /// Unix time (seconds) the configuration was last loaded successfully:
    /// at start-up, then at every successful reload; 0 if never.
    pub last_reload_success_unix: u64,
    /// Whether the last reload attempt succeeded (the start-up load counts).
    pub last_reload_ok: bool,
    /// Addresses bound per (interface, family `ipv4`/`ipv6`, count). Pairs
    /// left out are exported as 0 for every registered interface.
    pub bound_addresses: Vec<(String, String, u64)>,
    /// The load balancer's services with their backends and counters.
    pub lb_services: Vec<crate::lb::ServiceStatus>,
    /// Health-check state of every backend that is checked.
    pub health: Vec<crate::lb::health::TargetStatus>,
    /// Decapsulated packets and bytes per (interface, outer family, inner
    /// family), for every interface that decapsulates.
    pub decap: Vec<(String, &'static str, &'static str, u64, u64)>,
    /// The running datapath: schema, program, since when each interface enforces.
    pub datapath: DatapathInfo,
    /// Whether the state in force is saved, and the failed saves.
    pub state_save: StateSave,
}

/// Whether the state in force is saved (`daemon::save`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateSave {
    /// The state in force is not saved (the state file could not be written).
    pub unsaved: bool,
    /// Saves that failed since the start.
    pub failures: u64,
}

/// The pinned datapath in force (`docs/design/lifecycle.md`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatapathInfo {
    /// Its schema (`xdpgate_common::pins::SCHEMA_VERSION`).
    pub schema: u32,
    /// The kernel's tag of the program running, in hex.
    pub prog_tag: String,
    /// (interface, Unix time in seconds since which it enforces: its link
    /// was pinned; an adopted link keeps its time across restarts).
    pub attached: Vec<(String, u64)>,
}

/// Version of the daemon and of the kernel it runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    /// `CARGO_PKG_VERSION`.
    pub version: String,
    /// `uname -r`, or `unknown`.
    pub kernel: String,
}

impl Default for BuildInfo {
    fn default() -> Self {
        BuildInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel: sys::kernel_release()
                .map(|(release, _)| release)
                .unwrap_or_else(|| "unknown".to_owned()),
        }
    }
}

/// Everything one scrape exports, as plain data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Traffic, drop-reason and decision-cache counters.
    pub report: Report,
    /// Per-rule counters, in evaluation order.
    pub rules: Vec<RuleRow>,
    /// Default-policy counters per interface.
    pub defaults: Vec<DefaultRow>,
    /// Table fill against capacity.
    pub tables: Vec<TableFill>,
    /// Bound addresses per (interface, family, count).
    pub bound_addresses: Vec<(String, String, u64)>,
    /// Unix time of the last successful configuration load, seconds; 0 if
    /// never.
    pub last_reload_success_unix: u64,
    /// Whether the last configuration load succeeded.
    pub last_reload_ok: bool,
    /// Build information.
    pub build: BuildInfo,
    /// Load balancer, health checks, decapsulation (as in [`DaemonStatus`]).
    pub lb_services: Vec<crate::lb::ServiceStatus>,
    /// Health-check state.
    pub health: Vec<crate::lb::health::TargetStatus>,
    /// Decapsulation counters.
    pub decap: Vec<(String, &'static str, &'static str, u64, u64)>,
    /// The running datapath.
    pub datapath: DatapathInfo,
    /// Whether the state in force is saved.
    pub state_save: StateSave,
}

/// Reads every counter and gauge. The daemon calls this under its lock; it
/// only reads (the maps pinned under `paths`, the rule counters, the
/// controller's state) and takes a few milliseconds with thousands of rules.
pub fn gather(
    dp: &Datapath,
    ctl: &AclController,
    paths: &Paths,
    status: &DaemonStatus,
) -> Result<Snapshot, MetricsError> {
    let report = stats::read(paths)?;
    let rules = ctl
        .rule_counters(dp)?
        .into_iter()
        .map(|r| RuleRow {
            id: r.rule.id,
            action: r.rule.action.to_string(),
            packets: r.packets,
            bytes: r.bytes,
            limits: r.limits.map(|l| l.map(|c| c.packets)),
        })
        .collect();
    let state = ctl.state();
    let mut defaults = Vec::with_capacity(ctl.slots().len());
    for iface in ctl.slots().keys() {
        let (packets, bytes) = ctl.default_counters(dp, iface)?;
        defaults.push(DefaultRow {
            interface: iface.clone(),
            policy: state.policy(iface).to_string(),
            packets,
            bytes,
        });
    }
    Ok(Snapshot {
        report,
        rules,
        defaults,
        tables: table_fill(ctl),
        bound_addresses: status.bound_addresses.clone(),
        last_reload_success_unix: status.last_reload_success_unix,
        last_reload_ok: status.last_reload_ok,
        build: BuildInfo::default(),
        lb_services: status.lb_services.clone(),
        health: status.health.clone(),
        decap: status.decap.clone(),
        datapath: status.datapath.clone(),
        state_save: status.state_save,
    })
}

/// The capacity-limited tables of the controller's state, counted as
/// `AclState::validate` counts them against `acl::model::limits`.
pub fn table_fill(ctl: &AclController) -> Vec<TableFill> {
    let state = ctl.state();
    let (mut v4, mut v6) = (0u64, 0u64);
    for s in state.sets.values() {
        v4 += s.v4.len() as u64;
        v6 += s.v6.len() as u64;
    }
    for r in state.rules.values() {
        for m in [&r.src, &r.dst].into_iter().flatten() {
            match m {
                AddrMatch::Prefix(ipnetwork::IpNetwork::V4(_)) => v4 += 1,
                AddrMatch::Prefix(ipnetwork::IpNetwork::V6(_)) => v6 += 1,
                AddrMatch::Set(_) => {}
            }
        }
    }
    let fill = |table, entries: u64, capacity: usize| TableFill {
        table,
        entries,
        capacity: capacity as u64,
    };
    vec![
        fill(
            "interfaces",
            ctl.slots().len() as u64,
            MAX_IFACES as usize - 1,
        ),
        fill("rules", state.rules.len() as u64, limits::MAX_RULES),
        fill("prefix_sets", state.sets.len() as u64, limits::MAX_SETS),
        fill("ipv4_prefixes", v4, limits::MAX_PREFIXES_PER_FAMILY),
        fill("ipv6_prefixes", v6, limits::MAX_PREFIXES_PER_FAMILY),
    ]
}

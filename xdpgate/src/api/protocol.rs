//! The control API's protocol, shared by the server and the CLI: the
//! [`Request`], the [`Response`] envelope, and one typed answer per verb.
//!
//! The server builds these types, the client deserializes them; nothing on
//! either side reads a `serde_json::Value` back. This module depends only on
//! the model crate and std: the daemon's internal types (controllers,
//! datapath readers) are converted into these by the server, so a refactor
//! behind the server cannot change what goes over the socket or what
//! `-o json` prints. The tests at the bottom pin the JSON of every answer.
//!
//! | request            | answer          |
//! |--------------------|-----------------|
//! | `apply`            | [`Applied`]     |
//! | `acl_list`         | [`AclList`]     |
//! | `set_list` (all)   | [`SetList`]     |
//! | `set_list` (name)  | [`SetShow`]     |
//! | `bind_add`, `bind_del` | [`BindReport`] |
//! | `bind_list`        | [`BindList`]    |
//! | `lb_add`, `lb_del`, `reload` | [`Message`] |
//! | `lb_list`          | [`LbList`]      |
//! | `stats`            | [`Stats`]       |
//! | `status`           | [`Status`]      |
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use xdpgate_model::{
    acl::{Change, Rule, Verdict},
    bind::{BindRequest, Binding},
    iface::XdpMode,
    lb::{ServiceEntry, health::TargetKey},
};
// Answers that are the model's own report types, as they are.
pub use xdpgate_model::{
    acl::Applied,
    lb::{BackendStatus, ServiceStatus},
};

/// What a binding change did (the model's report, as it is on the wire).
pub use xdpgate_model::bind::Report as BindReport;

/// Largest request accepted: sized to the largest legitimate one, a set at
/// the model's capacity (2^20 prefixes of each family, 1,048,576) written at
/// the longest text of each (`255.255.255.255/32`, 21 bytes in JSON;
/// `ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0/124`, 46 bytes), about 70 MB.
/// Such a set travels in one request, so that it is applied all or nothing.
pub const MAX_REQUEST: usize = 80 << 20;
/// What all connections together may hold of requests still arriving: one
/// request of the largest size in flight and another arriving. A request
/// that would exceed it is refused and its connection closed (the others
/// continue), so the daemon's memory stays bounded whatever clients send.
pub const MAX_BUFFERED: usize = 2 * MAX_REQUEST;
/// API connections open at once at most (fewer when the open-file limit is
/// low: see `api::server::serve`). When every one is taken, the connection
/// idle the longest (at least a second) is closed to make room; when none is
/// idle, the new connection is refused with a message.
pub const MAX_CONNECTIONS: usize = 512;
/// How long a client may take to send one whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Apply a change (all or nothing).
    Apply {
        /// The change.
        change: Change,
    },
    /// Rules in evaluation order with counters, and interface defaults.
    AclList,
    /// Sets: names and sizes, or one set's prefixes.
    SetList {
        /// One set, with its prefixes.
        name: Option<String>,
    },
    /// Bind addresses (all or nothing).
    BindAdd {
        /// What to bind.
        binds: Vec<BindRequest>,
    },
    /// Remove bindings (all or nothing).
    BindDel {
        /// What to unbind.
        binds: Vec<BindRequest>,
    },
    /// The bindings, with whether xdpgate added or adopted each address.
    BindList,
    /// Re-read the configuration file (like SIGHUP).
    Reload,
    /// Packet counters.
    Stats,
    /// What the daemon runs: interfaces, configuration, state file, last reload.
    Status,
    /// Add a load-balanced service (or replace it, with `replace`).
    LbAdd {
        /// The service.
        service: ServiceEntry,
        /// Replace a service with the same VIP, protocol and port.
        #[serde(default)]
        replace: bool,
    },
    /// Remove a service by `VIP:PORT/PROTO`.
    LbDel {
        /// The service.
        service: String,
    },
    /// The services with their backends, health and counters.
    LbList,
}

impl Request {
    /// The verb as it appears on the wire (`cmd`), for the log and `status`.
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Apply { .. } => "apply",
            Request::AclList => "acl_list",
            Request::SetList { .. } => "set_list",
            Request::BindAdd { .. } => "bind_add",
            Request::BindDel { .. } => "bind_del",
            Request::BindList => "bind_list",
            Request::Reload => "reload",
            Request::Stats => "stats",
            Request::Status => "status",
            Request::LbAdd { .. } => "lb_add",
            Request::LbDel { .. } => "lb_del",
            Request::LbList => "lb_list",
        }
    }

    /// Whether the request changes anything. Changes run one at a time;
    /// reads never wait for them (they are answered from the state as of the
    /// running change's start).
    pub fn is_write(&self) -> bool {
        match self {
            Request::Apply { .. }
            | Request::BindAdd { .. }
            | Request::BindDel { .. }
            | Request::Reload
            | Request::LbAdd { .. }
            | Request::LbDel { .. } => true,
            Request::AclList
            | Request::SetList { .. }
            | Request::BindList
            | Request::Stats
            | Request::Status
            | Request::LbList => false,
        }
    }
}

/// A response: `ok` with a `result`, or the list of `errors`. The server
/// sends `Response<Answer>`; a client reads `Response<T>` with `T` the
/// answer of the verb it asked for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response<T = Answer> {
    /// Whether the request succeeded.
    pub ok: bool,
    /// Errors when it did not; nothing was changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Whether the request or its input was at fault (a client exits 64).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invalid: bool,
    /// The result when it did (absent means none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
}

impl<T> Response<T> {
    /// A success carrying `result`.
    pub fn answer(result: T) -> Self {
        Response {
            ok: true,
            errors: Vec::new(),
            invalid: false,
            result: Some(result),
        }
    }

    /// A refusal: nothing was changed; `invalid` when the caller's input was
    /// at fault.
    pub fn refused(errors: Vec<String>, invalid: bool) -> Self {
        Response {
            ok: false,
            errors,
            invalid,
            result: None,
        }
    }
}

/// Every answer the server gives, one variant per kind of answer. It is
/// serialized untagged: the wire carries only the answer's own object.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Answer {
    /// `apply`.
    Applied(Applied),
    /// `acl_list`.
    AclList(AclList),
    /// `set_list` without a name.
    SetList(SetList),
    /// `set_list` with a name.
    SetShow(SetShow),
    /// `bind_add`, `bind_del`.
    BindReport(BindReport),
    /// `bind_list`.
    BindList(BindList),
    /// `lb_list`.
    LbList(LbList),
    /// `stats`.
    Stats(Stats),
    /// `status` (boxed: by far the largest answer).
    Status(Box<Status>),
    /// `lb_add`, `lb_del`, `reload`.
    Message(Message),
}

/// Rules with their counters, and the interfaces' default policies (`acl_list`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AclList {
    /// Rules in evaluation order.
    pub rules: Vec<RuleRow>,
    /// One row per interface.
    pub defaults: Vec<DefaultRow>,
}

/// A rule with its counters: the rule's own fields, then `packets` and `bytes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleRow {
    /// The rule.
    #[serde(flatten)]
    pub rule: Rule,
    /// Packets it matched.
    pub packets: u64,
    /// Bytes it matched.
    pub bytes: u64,
    /// What its limit and SYN cookies did (rules with a limit or
    /// `syncookie` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_counters: Option<LimitCounters>,
}

/// Packets counted by a rule's limit and SYN-cookie path
/// (`xdpgate_common::limit::rule_stat`), summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitCounters {
    /// Over the limit: dropped (reason `rate_limited`).
    pub limited: u64,
    /// SYN-ACKs with a cookie sent.
    pub cookies_sent: u64,
    /// ACKs with a valid cookie passed to the kernel.
    pub cookie_acks: u64,
    /// Packets neither of a connection nor a valid cookie ACK: dropped
    /// (reason `bad_cookie`).
    pub bad_cookies: u64,
    /// SYNs not answered: the reflector limit was reached (reason
    /// `synack_limited`).
    pub synacks_limited: u64,
    /// SYNs passed to the kernel so that its listener accepts cookies.
    pub kernel_syns: u64,
}

impl LimitCounters {
    /// The counters with their names, in `rule_stat` order.
    pub fn named(&self) -> [(&'static str, u64); 6] {
        [
            ("limited", self.limited),
            ("cookies_sent", self.cookies_sent),
            ("cookie_acks", self.cookie_acks),
            ("bad_cookies", self.bad_cookies),
            ("synacks_limited", self.synacks_limited),
            ("kernel_syns", self.kernel_syns),
        ]
    }

    /// From the packet counts in `rule_stat` order.
    pub fn from_packets(p: [u64; 6]) -> LimitCounters {
        LimitCounters {
            limited: p[0],
            cookies_sent: p[1],
            cookie_acks: p[2],
            bad_cookies: p[3],
            synacks_limited: p[4],
            kernel_syns: p[5],
        }
    }
}

/// One interface's default policy and what it decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DefaultRow {
    /// Interface name.
    pub iface: String,
    /// Its default policy.
    pub policy: Verdict,
    /// Packets no rule matched.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Every set (`set_list` without a name).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetList {
    /// The sets, by name.
    pub sets: Vec<SetRow>,
}

/// One set's size and users.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetRow {
    /// Set name.
    pub name: String,
    /// IPv4 prefixes.
    pub ipv4: usize,
    /// IPv6 prefixes.
    pub ipv6: usize,
    /// Ids of the rules that name it.
    pub used_by: Vec<u32>,
}

/// One set's prefixes (`set_list` with a name).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetShow {
    /// Set name.
    pub name: String,
    /// Its prefixes, IPv4 first.
    pub prefixes: Vec<String>,
}

/// The bindings (`bind_list`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BindList {
    /// Every bound address.
    pub bindings: Vec<Binding>,
    /// Interfaces that drop traffic to addresses not bound.
    pub drop_unbound: Vec<String>,
}

/// A one-line outcome (`lb_add`, `lb_del`, `reload`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// What was done.
    pub message: String,
}

/// The load balancer (`lb_list`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LbList {
    /// Services installed, with their backends and counters.
    pub services: Vec<ServiceStatus>,
    /// Every health-checked target.
    pub health: Vec<HealthTarget>,
    /// Decapsulation counters of the interfaces that decapsulate.
    pub decap: Vec<DecapRow>,
    /// The services as they would be written in a configuration file.
    pub specs: Vec<ServiceEntry>,
}

/// One health-checked target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthTarget {
    /// Service and backend.
    pub key: TargetKey,
    /// The address it is probed at.
    pub addr: SocketAddr,
    /// Whether it is up.
    pub up: bool,
    /// Successful probes since the last failed one.
    pub consecutive_successes: u32,
    /// Failed probes since the last successful one.
    pub consecutive_failures: u32,
    /// Probes completed since the target was added (or restarted).
    pub checks_total: u64,
    /// Failed probes among them.
    pub failures_total: u64,
    /// Error of the most recent failed probe, kept after recovery.
    pub last_error: Option<String>,
    /// When it was added or last changed state (seconds since the epoch).
    pub last_change: u64,
}

/// Decapsulated packets of one interface and pair of families.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecapRow {
    /// Interface name.
    pub interface: String,
    /// Outer family: `ipv4` or `ipv6`.
    pub outer: String,
    /// Inner family: `ipv4` or `ipv6`.
    pub inner: String,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// The packet counters (`stats`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// The counters, summed over all CPUs.
    pub report: StatsReport,
}

/// Everything `xdpgate stats` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    /// Packets and bytes per interface, family and action.
    pub counters: Vec<CounterRow>,
    /// Packets per interface and drop reason (every reason, not only
    /// malformed frames; the field keeps its name for existing consumers).
    pub malformed: Vec<ReasonRow>,
    /// ACL decision-cache hits and misses over all interfaces.
    pub decision_cache: CacheStats,
    /// The limit and SYN-cookie counters of every rule, summed.
    #[serde(default)]
    pub limits: LimitCounters,
}

/// Packets and bytes of one interface, family and action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterRow {
    /// Interface name (`ifindex N` if it no longer exists, `unregistered` for slot 0).
    pub interface: String,
    /// Interface index (0 for unregistered interfaces).
    pub ifindex: u32,
    /// `ipv4`, `ipv6` or `other`.
    pub family: String,
    /// `pass`, `drop`, `tx`, `redirect` or `aborted`.
    pub action: String,
    /// Packets.
    pub packets: u64,
    /// Bytes, Ethernet header included.
    pub bytes: u64,
}

/// Packets of one interface and drop reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonRow {
    /// Interface name, as in [`CounterRow`].
    pub interface: String,
    /// Interface index.
    pub ifindex: u32,
    /// Reason name (`xdpgate_common::DropReason::name`).
    pub reason: String,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// ACL decision-cache counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    /// Packets decided from the cache.
    pub hits: u64,
    /// Packets resolved without the cache (not cached, or cache off).
    pub misses: u64,
    /// Of the misses, packets that walked the rule bitmaps because the rule
    /// set exceeded the phased tables' budget.
    #[serde(default)]
    pub walks: u64,
}

/// What the daemon runs (`status`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The daemon's process id.
    pub pid: u32,
    /// Seconds since it started.
    pub uptime_seconds: u64,
    /// Its configuration file (empty when started from flags only).
    pub config: PathBuf,
    /// Where runtime changes are saved.
    pub state_file: PathBuf,
    /// Where the state at start came from.
    pub started_from: StartedFrom,
    /// The interfaces it is attached to.
    pub interfaces: Vec<AttachedIface>,
    /// Rules installed.
    pub rules: usize,
    /// Sets defined.
    pub sets: usize,
    /// Bound addresses.
    pub bindings: usize,
    /// Metrics listen addresses.
    pub metrics_listen: Vec<SocketAddr>,
    /// The outcome of the last reload.
    pub reload: ReloadInfo,
    /// The change running now, if one is (the counts above are as of its start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<Busy>,
    /// Why the state in force is not saved, while it is not (the state
    /// file's filesystem is full or read-only, ...): it is in force, but a
    /// restart would lose it. `null` when it is saved.
    #[serde(default)]
    pub state_not_saved: Option<String>,
    /// Saves of the state file that failed since the start.
    #[serde(default)]
    pub state_save_failures: u64,
    /// Warnings about the state in force: interfaces the state file names
    /// that the configuration does not configure.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Whether rules with `syncookie` get SYN cookies, and why not.
    #[serde(default)]
    pub syncookies: SyncookieStatus,
}

/// Whether the datapath answers SYNs with cookies (`status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncookieStatus {
    /// The SYN-cookie program is loaded and `net.ipv4.tcp_syncookies` is 2.
    pub enabled: bool,
    /// Why not, when not (rules with `syncookie` are refused meanwhile).
    pub reason: Option<String>,
    /// What connections through cookies lose with the sysctls as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// A change in progress (`status` while it runs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Busy {
    /// The verb (`apply`, `bind_add`, `reload`, ...).
    pub what: String,
    /// Seconds it has been running.
    pub seconds: f64,
    /// Its phase.
    pub phase: String,
    /// Items done in the phase.
    pub done: u64,
    /// Items in the phase (0 when unknown).
    pub total: u64,
}

/// Where the daemon's state at start came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartedFrom {
    /// The configuration (and command line).
    Config,
    /// The state file, because the configuration is unchanged since it was saved.
    StateFile,
}

/// One interface the daemon is attached to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedIface {
    /// Interface name.
    pub interface: String,
    /// Interface index.
    pub ifindex: u32,
    /// Mode the kernel reports for the attachment.
    pub mode: XdpMode,
    /// Kernel program id.
    pub prog_id: u32,
    /// Whether traffic to unbound addresses is dropped.
    pub drop_unbound: bool,
}

/// The outcome of the last reload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadInfo {
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

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;

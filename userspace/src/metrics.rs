//! Prometheus metrics: a [`Snapshot`] of every counter and gauge the daemon
//! exports, its text exposition ([`render`]), and a small HTTP/1.1 server for
//! `GET /metrics` ([`serve`]).
//!
//! The daemon calls [`gather`] under its lock (it only reads maps and the
//! controller's state) and renders outside it. Every series is present from
//! the first scrape on, at zero until something happens: every interface
//! (and the `unregistered` slot) times every family and action, every
//! interface times every drop reason. Labels are bounded:
//! interface names, families, actions, reasons, rule ids, table names.
use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use prometheus::{Encoder as _, Gauge, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use thiserror::Error;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use xdpgate_common::{Action, DropReason, Family, MAX_IFACES};

use crate::{
    acl::model::{AddrMatch, limits},
    control::AclController,
    datapath::{Datapath, DatapathError},
    paths::Paths,
    stats::{self, Report, StatsError},
    sys,
};

/// Interface label of packets seen on an interface the daemon did not
/// register (slot 0; see `xdpgate_common::UNKNOWN_IFACE_SLOT`).
pub const UNREGISTERED: &str = "unregistered";

/// `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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
    pub health: Vec<crate::health::TargetStatus>,
    /// Decapsulated packets and bytes per (interface, outer family, inner
    /// family), for every interface that decapsulates.
    pub decap: Vec<(String, &'static str, &'static str, u64, u64)>,
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
    pub health: Vec<crate::health::TargetStatus>,
    /// Decapsulation counters.
    pub decap: Vec<(String, &'static str, &'static str, u64, u64)>,
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

/// The load balancer's, health checks' and decapsulator's series. Labels are
/// bounded by the configuration (services, their backends, interfaces);
/// every configured pair is present at zero.
fn render_lb(r: &Registry, s: &Snapshot) {
    let be_packets = counter(
        r,
        "xdpgate_lb_backend_packets_total",
        "Packets the load balancer sent to a backend (forwarded or handed to the stack to forward), by service (VIP:PORT/PROTO) and backend address.",
        &["service", "backend"],
    );
    let be_bytes = counter(
        r,
        "xdpgate_lb_backend_bytes_total",
        "Bytes (as received, before encapsulation) the load balancer sent to a backend, by service and backend.",
        &["service", "backend"],
    );
    let be_up = gauge(
        r,
        "xdpgate_lb_backend_up",
        "1 if the backend is in its service's Maglev ring's healthy set (health checks pass, or none are configured), else 0.",
        &["service", "backend"],
    );
    let be_ring = gauge(
        r,
        "xdpgate_lb_backend_ring_entries",
        "Entries of the service's Maglev ring that point to the backend (0 when down or drained).",
        &["service", "backend"],
    );
    let svc = counter(
        r,
        "xdpgate_lb_service_packets_total",
        "Packets to a service, by result: forwarded (XDP_TX or redirect), slow_path (encapsulated and handed to the kernel to forward while the next hop's neighbour entry is resolved) or dropped (no backend, no route, too big).",
        &["service", "result"],
    );
    let checks = counter(
        r,
        "xdpgate_health_checks_total",
        "Health-check probes run, by service and backend.",
        &["service", "backend"],
    );
    let failures = counter(
        r,
        "xdpgate_health_check_failures_total",
        "Health-check probes that failed, by service and backend.",
        &["service", "backend"],
    );
    let decap_packets = counter(
        r,
        "xdpgate_decap_packets_total",
        "Tunnelled packets decapsulated in XDP and passed to the stack, by interface, outer and inner family.",
        &["interface", "outer", "inner"],
    );
    let decap_bytes = counter(
        r,
        "xdpgate_decap_bytes_total",
        "Bytes (outer frame) of the packets counted in xdpgate_decap_packets_total.",
        &["interface", "outer", "inner"],
    );
    for svc_row in &s.lb_services {
        let name = svc_row.service.to_string();
        for what in xdpgate_common::lb::ServiceStat::ALL {
            svc.with_label_values(&[name.as_str(), what.name()]);
        }
        svc.with_label_values(&[name.as_str(), "forwarded"])
            .inc_by(svc_row.forwarded_packets);
        svc.with_label_values(&[name.as_str(), "slow_path"])
            .inc_by(svc_row.slow_path_packets);
        svc.with_label_values(&[name.as_str(), "dropped"])
            .inc_by(svc_row.dropped_packets);
        for b in &svc_row.backends {
            let addr = b.addr.to_string();
            let l = [name.as_str(), addr.as_str()];
            be_packets.with_label_values(&l).inc_by(b.packets);
            be_bytes.with_label_values(&l).inc_by(b.bytes);
            be_up.with_label_values(&l).set(i64::from(b.healthy));
            be_ring.with_label_values(&l).set(i64::from(b.ring_entries));
        }
    }
    for t in &s.health {
        let addr = t.key.backend.to_string();
        let l = [t.key.service.as_str(), addr.as_str()];
        checks.with_label_values(&l).inc_by(t.checks_total);
        failures.with_label_values(&l).inc_by(t.failures_total);
    }
    for (iface, outer, inner, packets, bytes) in &s.decap {
        let l = [iface.as_str(), *outer, *inner];
        decap_packets.with_label_values(&l).inc_by(*packets);
        decap_bytes.with_label_values(&l).inc_by(*bytes);
    }
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

/// Renders `s` in the Prometheus text exposition format (version 0.0.4),
/// through a fresh registry: counters are set to their absolute values.
/// Missing rows are filled in at zero (every known interface, plus
/// [`UNREGISTERED`], times every family and action and every drop
/// reason; both families of bound addresses for every registered interface), so every
/// series exists before its first event.
pub fn render(s: &Snapshot) -> String {
    let r = Registry::new();
    let packets = counter(
        &r,
        "xdpgate_packets_total",
        "Packets the XDP program saw, by receiving interface, address family (by EtherType) and XDP action taken (pass, drop, tx, redirect, aborted).",
        &["interface", "family", "action"],
    );
    let bytes = counter(
        &r,
        "xdpgate_bytes_total",
        "Bytes (Ethernet header included) the XDP program saw, by receiving interface, address family and XDP action taken.",
        &["interface", "family", "action"],
    );
    let malformed = counter(
        &r,
        "xdpgate_drop_reason_packets_total",
        "Packets the datapath classified under a drop reason, by interface and reason: malformed frames (dropped, or passed on interfaces configured to pass malformed packets) and policy drops such as not_bound.",
        &["interface", "reason"],
    );
    let malformed_bytes = counter(
        &r,
        "xdpgate_drop_reason_bytes_total",
        "Bytes of the packets counted in xdpgate_drop_reason_packets_total, by interface and reason.",
        &["interface", "reason"],
    );
    let rule_packets = counter(
        &r,
        "xdpgate_rule_packets_total",
        "Packets decided by an ACL rule, by rule id and the rule's verdict (allow or deny). Resets when a rule is replaced by a different rule with the same id.",
        &["rule_id", "action"],
    );
    let rule_bytes = counter(
        &r,
        "xdpgate_rule_bytes_total",
        "Bytes decided by an ACL rule, by rule id and the rule's verdict.",
        &["rule_id", "action"],
    );
    let default_packets = counter(
        &r,
        "xdpgate_default_policy_packets_total",
        "IP packets no ACL rule matched, decided by the interface's default policy (allow or deny).",
        &["interface", "policy"],
    );
    let default_bytes = counter(
        &r,
        "xdpgate_default_policy_bytes_total",
        "Bytes of IP packets decided by the interface's default policy.",
        &["interface", "policy"],
    );
    let cache = counter(
        &r,
        "xdpgate_acl_decision_cache_lookups_total",
        "ACL decision-cache lookups over all interfaces and CPUs: hit (decided from the cache) or miss (walked the rule bitmaps).",
        &["result"],
    );
    let table_entries = gauge(
        &r,
        "xdpgate_table_entries",
        "Entries in use in a capacity-limited table of the installed configuration (interfaces, rules, prefix_sets, ipv4_prefixes, ipv6_prefixes; prefixes counted over all sets and rules).",
        &["table"],
    );
    let table_capacity = gauge(
        &r,
        "xdpgate_table_capacity_entries",
        "Most entries a table may hold; a change beyond it is rejected.",
        &["table"],
    );
    let bound = gauge(
        &r,
        "xdpgate_bound_addresses",
        "Addresses bound by the daemon, by interface and address family.",
        &["interface", "family"],
    );
    let build = gauge(
        &r,
        "xdpgate_build_info",
        "Always 1; labels carry the xdpgate version and the running kernel's release.",
        &["version", "kernel"],
    );
    let reload_ts = Gauge::new(
        "xdpgate_config_last_reload_success_timestamp_seconds",
        "Unix time of the last successful configuration load (start-up or reload); 0 if none yet.",
    )
    .expect("valid metric definition");
    r.register(Box::new(reload_ts.clone()))
        .expect("metric registered once");
    let reload_ok = IntGauge::new(
        "xdpgate_config_last_reload_successful",
        "1 if the last configuration load (start-up or reload) succeeded, else 0.",
    )
    .expect("valid metric definition");
    r.register(Box::new(reload_ok.clone()))
        .expect("metric registered once");

    // Every known interface, so missing rows can be filled in at zero.
    let mut ifaces: BTreeSet<&str> = BTreeSet::from([UNREGISTERED]);
    ifaces.extend(s.report.counters.iter().map(|r| r.interface.as_str()));
    ifaces.extend(s.report.malformed.iter().map(|r| r.interface.as_str()));
    ifaces.extend(s.defaults.iter().map(|r| r.interface.as_str()));
    for iface in &ifaces {
        for f in Family::ALL {
            for a in Action::ALL {
                let l = [*iface, f.name(), a.name()];
                packets.with_label_values(&l);
                bytes.with_label_values(&l);
            }
        }
        for reason in DropReason::ALL {
            malformed.with_label_values(&[*iface, reason.name()]);
            malformed_bytes.with_label_values(&[*iface, reason.name()]);
        }
    }
    for row in &s.report.counters {
        let l = [row.interface.as_str(), row.family, row.action];
        packets.with_label_values(&l).inc_by(row.packets);
        bytes.with_label_values(&l).inc_by(row.bytes);
    }
    for row in &s.report.malformed {
        let l = [row.interface.as_str(), row.reason];
        malformed.with_label_values(&l).inc_by(row.packets);
        malformed_bytes.with_label_values(&l).inc_by(row.bytes);
    }
    for row in &s.rules {
        let id = row.id.to_string();
        let l = [id.as_str(), row.action.as_str()];
        rule_packets.with_label_values(&l).inc_by(row.packets);
        rule_bytes.with_label_values(&l).inc_by(row.bytes);
    }
    for row in &s.defaults {
        let l = [row.interface.as_str(), row.policy.as_str()];
        default_packets.with_label_values(&l).inc_by(row.packets);
        default_bytes.with_label_values(&l).inc_by(row.bytes);
    }
    let c = s.report.decision_cache;
    cache.with_label_values(&["hit"]).inc_by(c.hits);
    cache.with_label_values(&["miss"]).inc_by(c.misses);
    for t in &s.tables {
        table_entries
            .with_label_values(&[t.table])
            .set(clamp(t.entries));
        table_capacity
            .with_label_values(&[t.table])
            .set(clamp(t.capacity));
    }
    let mut bound_rows: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let registered = ifaces.iter().copied().filter(|i| *i != UNREGISTERED);
    for iface in registered.chain(s.bound_addresses.iter().map(|b| b.0.as_str())) {
        for family in [Family::Ipv4.name(), Family::Ipv6.name()] {
            bound_rows.entry((iface, family)).or_insert(0);
        }
    }
    for (iface, family, n) in &s.bound_addresses {
        *bound_rows
            .entry((iface.as_str(), family.as_str()))
            .or_insert(0) += n;
    }
    for ((iface, family), n) in bound_rows {
        bound.with_label_values(&[iface, family]).set(clamp(n));
    }
    render_lb(&r, s);
    build
        .with_label_values(&[s.build.version.as_str(), s.build.kernel.as_str()])
        .set(1);
    reload_ts.set(s.last_reload_success_unix as f64);
    reload_ok.set(i64::from(s.last_reload_ok));

    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&r.gather(), &mut out)
        .expect("text encoding into memory");
    String::from_utf8(out).expect("the text encoder writes UTF-8")
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Most bytes of a request head (request line and headers); more is answered
/// with 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head; then the connection
/// is closed without an answer.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long writing a response may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once; further connections are closed at once.
pub const MAX_CONNECTIONS: usize = 64;

/// A gather-and-render function for [`serve`]: the rendered exposition, or
/// a message for a 500 answer. It runs on tokio's blocking pool, so it may
/// take a lock.
pub type GatherFn = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Serves `GET /metrics` (the output of `gather`) and `GET /` (a pointer to
/// `/metrics`) on every listener until `token` is cancelled, then waits for
/// its accept loops and connection tasks, all of which observe the token, and
/// returns. HEAD is answered like GET without a body; other methods get 405,
/// other paths 404, a head over [`MAX_HEAD`] 431; a client that does not send
/// its head within [`HEAD_TIMEOUT`] is disconnected. One request per
/// connection (`Connection: close`).
pub async fn serve(listeners: Vec<TcpListener>, gather: GatherFn, token: CancellationToken) {
    let tracker = TaskTracker::new();
    let active = Arc::new(AtomicUsize::new(0));
    for listener in listeners {
        tracker.spawn(accept_loop(
            listener,
            gather.clone(),
            token.clone(),
            tracker.clone(),
            active.clone(),
        ));
    }
    tracker.close();
    tracker.wait().await;
}

/// Decrements the active-connection count when a connection task ends.
struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept_loop(
    listener: TcpListener,
    gather: GatherFn,
    token: CancellationToken,
    tracker: TaskTracker,
    active: Arc<AtomicUsize>,
) {
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    loop {
        let accepted = tokio::select! {
            _ = token.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("metrics listener {local}: accept: {e}");
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        if active.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::Relaxed);
            log::debug!(
                "metrics listener {local}: {peer} refused, {MAX_CONNECTIONS} connections busy"
            );
            continue;
        }
        let guard = Active(active.clone());
        let (gather, token) = (gather.clone(), token.clone());
        tracker.spawn(async move {
            let _guard = guard;
            tokio::select! {
                _ = token.cancelled() => {}
                r = connection(stream, gather) => {
                    if let Err(e) = r {
                        log::debug!("metrics connection from {peer}: {e}");
                    }
                }
            }
        });
    }
}

/// A parsed request line.
#[derive(Debug, PartialEq, Eq)]
struct RequestLine<'a> {
    method: &'a str,
    path: &'a str,
}

enum Head {
    Complete(Vec<u8>),
    TooLarge,
    Closed,
}

/// Reads until the blank line that ends the head, at most [`MAX_HEAD`] bytes.
async fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf, from) {
            buf.truncate(end);
            return Ok(Head::Complete(buf));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

/// End of the head (after its blank line) if `buf` holds one; the search
/// starts at `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let tail = &buf[from..];
    if let Some(i) = tail.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some(from + i + 4);
    }
    tail.windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| from + i + 2)
}

fn parse_request_line(head: &[u8]) -> Option<RequestLine<'_>> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !version.starts_with("HTTP/1.")
    {
        return None;
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Some(RequestLine { method, path })
}

const INDEX: &str = "<!DOCTYPE html>\n<html><head><title>xdpgate</title></head><body>\n\
<h1>xdpgate</h1>\n<p>Prometheus metrics: <a href=\"/metrics\">/metrics</a></p>\n</body></html>\n";

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    extra: &'static str,
    body: String,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: String) -> Self {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            extra: "",
            body,
        }
    }
}

async fn connection(mut stream: TcpStream, gather: GatherFn) -> io::Result<()> {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => return Ok(()), // too slow: close without an answer
        Ok(head) => head?,
    };
    let (response, head_only) = match head {
        Head::Closed => return Ok(()),
        Head::TooLarge => (
            Response::text(
                431,
                "Request Header Fields Too Large",
                format!("request head over {MAX_HEAD} bytes\n"),
            ),
            false,
        ),
        Head::Complete(head) => match parse_request_line(&head) {
            None => (
                Response::text(400, "Bad Request", "malformed request line\n".into()),
                false,
            ),
            Some(req) => (route(&req, &gather).await, req.method == "HEAD"),
        },
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
        response.status,
        response.reason,
        response.content_type,
        response.body.len(),
        response.extra,
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(response.body.as_bytes());
    }
    let write = async {
        stream.write_all(&out).await?;
        stream.shutdown().await?;
        // Read what the client still sends (bounded), so closing with unread
        // data does not reset the connection before it read the answer.
        let mut sink = [0u8; 1024];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
        io::Result::Ok(())
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "response not taken within the write timeout",
        )),
        Ok(r) => r,
    }
}

async fn route(req: &RequestLine<'_>, gather: &GatherFn) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        return Response {
            extra: "Allow: GET, HEAD\r\n",
            ..Response::text(405, "Method Not Allowed", "only GET and HEAD\n".into())
        };
    }
    match req.path {
        "/metrics" => {
            let g = gather.clone();
            match tokio::task::spawn_blocking(move || g()).await {
                Ok(Ok(body)) => Response {
                    content_type: CONTENT_TYPE,
                    ..Response::text(200, "OK", body)
                },
                Ok(Err(e)) => {
                    log::warn!("metrics: {e}");
                    Response::text(
                        500,
                        "Internal Server Error",
                        format!("cannot gather metrics: {e}\n"),
                    )
                }
                Err(e) => {
                    log::warn!("metrics: gathering failed: {e}");
                    Response::text(
                        500,
                        "Internal Server Error",
                        "cannot gather metrics: the gatherer failed\n".into(),
                    )
                }
            }
        }
        "/" => Response {
            content_type: "text/html; charset=utf-8",
            ..Response::text(200, "OK", INDEX.into())
        },
        _ => Response::text(
            404,
            "Not Found",
            "not found; metrics are at /metrics\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, BTreeSet},
        io::Write as _,
        net::{Ipv4Addr, SocketAddr},
        process::{Command, Stdio},
        time::Duration,
    };

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::stats::{CacheStats, ReasonRow, Row};

    /// A snapshot with two interfaces. `eth1` has no drop-reason rows and no
    /// bound-address rows (both are filled in at zero); the
    /// unregistered slot has no rows at all.
    fn snapshot() -> Snapshot {
        let mut counters = Vec::new();
        for (i, iface) in ["eth0", "eth1"].into_iter().enumerate() {
            for f in Family::ALL {
                for a in Action::ALL {
                    let packets = if a == Action::Pass { 10 + i as u64 } else { 0 };
                    counters.push(Row {
                        interface: iface.into(),
                        ifindex: 2 + i as u32,
                        family: f.name(),
                        action: a.name(),
                        packets,
                        bytes: packets * 100,
                    });
                }
            }
        }
        let malformed = DropReason::ALL
            .iter()
            .map(|r| ReasonRow {
                interface: "eth0".into(),
                ifindex: 2,
                reason: r.name(),
                packets: u64::from(*r == DropReason::TruncatedL4) * 3,
                bytes: u64::from(*r == DropReason::TruncatedL4) * 180,
            })
            .collect();
        Snapshot {
            report: Report {
                counters,
                malformed,
                decision_cache: CacheStats {
                    hits: 40,
                    misses: 2,
                },
            },
            rules: vec![
                RuleRow {
                    id: 7,
                    action: "deny".into(),
                    packets: 5,
                    bytes: 500,
                },
                RuleRow {
                    id: 12,
                    action: "allow".into(),
                    packets: 0,
                    bytes: 0,
                },
            ],
            defaults: vec![
                DefaultRow {
                    interface: "eth0".into(),
                    policy: "allow".into(),
                    packets: 9,
                    bytes: 900,
                },
                DefaultRow {
                    interface: "eth1".into(),
                    policy: "deny".into(),
                    packets: 0,
                    bytes: 0,
                },
            ],
            tables: vec![
                TableFill {
                    table: "rules",
                    entries: 2,
                    capacity: 12288,
                },
                TableFill {
                    table: "ipv4_prefixes",
                    entries: 0,
                    capacity: 1 << 20,
                },
            ],
            bound_addresses: vec![
                ("eth0".into(), "ipv4".into(), 1),
                ("eth0".into(), "ipv6".into(), 2),
            ],
            last_reload_success_unix: 1_700_000_000,
            last_reload_ok: true,
            build: BuildInfo {
                version: "0.1.0".into(),
                kernel: "6.18.0-test".into(),
            },
            lb_services: vec![crate::lb::ServiceStatus {
                service: "192.0.2.10:80/tcp".parse().expect("valid service"),
                forward: crate::lb::Forward::Encap,
                health_checked: true,
                ring_size: 65537,
                forwarded_packets: 10,
                slow_path_packets: 1,
                dropped_packets: 0,
                backends: vec![crate::lb::BackendStatus {
                    addr: "10.200.2.2".parse().expect("valid address"),
                    weight: 1,
                    healthy: true,
                    ring_entries: 65537,
                    packets: 11,
                    bytes: 1100,
                }],
            }],
            health: Vec::new(),
            decap: vec![("eth0".into(), "ipv4", "ipv6", 3, 300)],
        }
    }

    /// One sample line: name, labels, value.
    type Sample = (String, BTreeMap<String, String>, f64);

    /// Parses the exposition (enough of it for these tests: our label values
    /// contain no quotes, commas or braces). Returns the samples and the
    /// `# TYPE` of each family.
    fn parse(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').unwrap();
                types.insert(name.to_owned(), ty.to_owned());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').unwrap();
                    let labels = inner
                        .split(',')
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').unwrap();
                            (k.to_owned(), v.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name, labels)
                }
            };
            samples.push((name.to_owned(), labels, value.parse().unwrap()));
        }
        (samples, types)
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        samples
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|s| s.2)
    }

    #[test]
    fn render_has_every_series_with_bounded_labels() {
        let text = render(&snapshot());
        let (samples, types) = parse(&text);

        let expected: BTreeMap<&str, (&str, &[&str])> = BTreeMap::from([
            (
                "xdpgate_packets_total",
                ("counter", &["interface", "family", "action"][..]),
            ),
            (
                "xdpgate_bytes_total",
                ("counter", &["interface", "family", "action"][..]),
            ),
            (
                "xdpgate_drop_reason_packets_total",
                ("counter", &["interface", "reason"][..]),
            ),
            (
                "xdpgate_drop_reason_bytes_total",
                ("counter", &["interface", "reason"][..]),
            ),
            (
                "xdpgate_rule_packets_total",
                ("counter", &["rule_id", "action"][..]),
            ),
            (
                "xdpgate_rule_bytes_total",
                ("counter", &["rule_id", "action"][..]),
            ),
            (
                "xdpgate_default_policy_packets_total",
                ("counter", &["interface", "policy"][..]),
            ),
            (
                "xdpgate_default_policy_bytes_total",
                ("counter", &["interface", "policy"][..]),
            ),
            (
                "xdpgate_acl_decision_cache_lookups_total",
                ("counter", &["result"][..]),
            ),
            ("xdpgate_table_entries", ("gauge", &["table"][..])),
            ("xdpgate_table_capacity_entries", ("gauge", &["table"][..])),
            (
                "xdpgate_bound_addresses",
                ("gauge", &["interface", "family"][..]),
            ),
            ("xdpgate_build_info", ("gauge", &["version", "kernel"][..])),
            (
                "xdpgate_config_last_reload_success_timestamp_seconds",
                ("gauge", &[][..]),
            ),
            ("xdpgate_config_last_reload_successful", ("gauge", &[][..])),
            (
                "xdpgate_lb_backend_packets_total",
                ("counter", &["service", "backend"][..]),
            ),
            (
                "xdpgate_lb_backend_bytes_total",
                ("counter", &["service", "backend"][..]),
            ),
            (
                "xdpgate_lb_backend_up",
                ("gauge", &["service", "backend"][..]),
            ),
            (
                "xdpgate_lb_backend_ring_entries",
                ("gauge", &["service", "backend"][..]),
            ),
            (
                "xdpgate_lb_service_packets_total",
                ("counter", &["service", "result"][..]),
            ),
            (
                "xdpgate_decap_packets_total",
                ("counter", &["interface", "outer", "inner"][..]),
            ),
            (
                "xdpgate_decap_bytes_total",
                ("counter", &["interface", "outer", "inner"][..]),
            ),
        ]);
        let names: BTreeSet<&str> = types.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            expected.keys().copied().collect::<BTreeSet<_>>(),
            "{text}"
        );
        for (name, (ty, labels)) in &expected {
            assert_eq!(types[*name], *ty, "{name}");
            assert_eq!(name.ends_with("_total"), *ty == "counter", "{name}");
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
            let want: BTreeSet<&str> = labels.iter().copied().collect();
            for (n, l, _) in samples.iter().filter(|s| s.0 == *name) {
                let have: BTreeSet<&str> = l.keys().map(String::as_str).collect();
                assert_eq!(have, want, "labels of {n}");
            }
        }

        // Bounded label values, and every combination present (zeros included).
        let ifaces = ["eth0", "eth1", UNREGISTERED];
        let fams: Vec<&str> = Family::ALL.iter().map(|f| f.name()).collect();
        let acts: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
        let reasons: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
        for name in ["xdpgate_packets_total", "xdpgate_bytes_total"] {
            let rows: Vec<&Sample> = samples.iter().filter(|s| s.0 == name).collect();
            assert_eq!(rows.len(), ifaces.len() * fams.len() * acts.len(), "{name}");
            for (_, l, _) in &rows {
                assert!(ifaces.contains(&l["interface"].as_str()));
                assert!(fams.contains(&l["family"].as_str()));
                assert!(acts.contains(&l["action"].as_str()));
            }
        }
        for name in [
            "xdpgate_drop_reason_packets_total",
            "xdpgate_drop_reason_bytes_total",
        ] {
            let rows: Vec<&Sample> = samples.iter().filter(|s| s.0 == name).collect();
            assert_eq!(rows.len(), ifaces.len() * reasons.len(), "{name}");
            for (_, l, _) in &rows {
                assert!(reasons.contains(&l["reason"].as_str()));
            }
        }

        let v = |name, labels: &[(&str, &str)]| {
            value(&samples, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?}\n{text}"))
        };
        let pkt = |i, f, a| {
            v(
                "xdpgate_packets_total",
                &[("interface", i), ("family", f), ("action", a)],
            )
        };
        assert_eq!(pkt("eth0", "ipv4", "pass"), 10.0);
        assert_eq!(pkt("eth1", "ipv6", "pass"), 11.0);
        assert_eq!(pkt("eth1", "other", "aborted"), 0.0);
        assert_eq!(pkt(UNREGISTERED, "ipv4", "drop"), 0.0);
        assert_eq!(
            v(
                "xdpgate_bytes_total",
                &[
                    ("interface", "eth1"),
                    ("family", "ipv4"),
                    ("action", "pass")
                ]
            ),
            1100.0
        );
        let reason = |i, r| {
            v(
                "xdpgate_drop_reason_packets_total",
                &[("interface", i), ("reason", r)],
            )
        };
        assert_eq!(reason("eth0", "truncated_l4"), 3.0);
        assert_eq!(reason("eth1", "truncated_l4"), 0.0);
        assert_eq!(reason(UNREGISTERED, "vlan_too_deep"), 0.0);
        assert_eq!(
            v(
                "xdpgate_rule_packets_total",
                &[("rule_id", "7"), ("action", "deny")]
            ),
            5.0
        );
        assert_eq!(
            v(
                "xdpgate_rule_bytes_total",
                &[("rule_id", "12"), ("action", "allow")]
            ),
            0.0
        );
        assert_eq!(
            v(
                "xdpgate_default_policy_packets_total",
                &[("interface", "eth0"), ("policy", "allow")]
            ),
            9.0
        );
        assert_eq!(
            v(
                "xdpgate_default_policy_packets_total",
                &[("interface", "eth1"), ("policy", "deny")]
            ),
            0.0
        );
        assert_eq!(
            v(
                "xdpgate_acl_decision_cache_lookups_total",
                &[("result", "hit")]
            ),
            40.0
        );
        assert_eq!(
            v(
                "xdpgate_acl_decision_cache_lookups_total",
                &[("result", "miss")]
            ),
            2.0
        );
        assert_eq!(v("xdpgate_table_entries", &[("table", "rules")]), 2.0);
        assert_eq!(
            v("xdpgate_table_capacity_entries", &[("table", "rules")]),
            12288.0
        );
        let bound = |i, f| {
            v(
                "xdpgate_bound_addresses",
                &[("interface", i), ("family", f)],
            )
        };
        assert_eq!(bound("eth0", "ipv6"), 2.0);
        assert_eq!(bound("eth1", "ipv4"), 0.0, "filled in at zero");
        assert_eq!(bound("eth1", "ipv6"), 0.0, "filled in at zero");
        assert_eq!(
            samples
                .iter()
                .filter(|s| s.0 == "xdpgate_bound_addresses")
                .count(),
            4
        );
        assert_eq!(
            v(
                "xdpgate_build_info",
                &[("version", "0.1.0"), ("kernel", "6.18.0-test")]
            ),
            1.0
        );
        assert_eq!(
            v("xdpgate_config_last_reload_success_timestamp_seconds", &[]),
            1.7e9
        );
        assert_eq!(v("xdpgate_config_last_reload_successful", &[]), 1.0);
    }

    #[test]
    fn empty_snapshot_still_has_the_unregistered_slot_at_zero() {
        let (samples, _) = parse(&render(&Snapshot::default()));
        let packets: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.0 == "xdpgate_packets_total")
            .collect();
        assert_eq!(packets.len(), 15);
        assert!(
            packets
                .iter()
                .all(|s| s.1["interface"] == UNREGISTERED && s.2 == 0.0)
        );
        assert_eq!(
            value(
                &samples,
                "xdpgate_config_last_reload_success_timestamp_seconds",
                &[]
            ),
            Some(0.0)
        );
        assert_eq!(
            value(&samples, "xdpgate_config_last_reload_successful", &[]),
            Some(0.0)
        );
        // The default build info names this crate's version and the kernel.
        let build = samples
            .iter()
            .find(|s| s.0 == "xdpgate_build_info")
            .unwrap();
        assert_eq!(build.1["version"], env!("CARGO_PKG_VERSION"));
        assert!(!build.1["kernel"].is_empty());
    }

    /// `promtool check metrics` must accept the exposition without a single
    /// lint complaint. promtool comes with the Debian package `prometheus`,
    /// which `cargo xtask bootstrap` installs; without it this test fails.
    #[test]
    fn promtool_accepts_the_exposition() {
        const PROMTOOL: &str = "/usr/bin/promtool";
        assert!(
            std::path::Path::new(PROMTOOL).is_file(),
            "{PROMTOOL} is missing: install the Debian package `prometheus` \
             (`cargo xtask bootstrap` does; or `apt-get install --no-install-recommends prometheus`)"
        );
        let text = render(&snapshot());
        let mut child = Command::new(PROMTOOL)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run promtool");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool: {report}\n{text}");
        assert!(report.trim().is_empty(), "promtool lint: {report}");
    }

    async fn start(
        gather: GatherFn,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let l = crate::listen::tcp_listener(
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
            crate::listen::ListenOptions::default(),
        )
        .unwrap();
        let addr = l.local_addr().unwrap();
        let l = TcpListener::from_std(l).unwrap();
        let token = CancellationToken::new();
        let task = tokio::spawn(serve(vec![l], gather, token.clone()));
        (addr, token, task)
    }

    /// Sends `request` raw and reads the whole answer (the server closes).
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("answer within 5 s")
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    fn fixed(body: &'static str) -> GatherFn {
        Arc::new(move || Ok(body.to_owned()))
    }

    #[tokio::test]
    async fn http_routes_and_status_codes() {
        let (addr, token, task) = start(fixed("xdpgate_up 1\n")).await;

        let r = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.contains(&format!("\r\nContent-Type: {CONTENT_TYPE}\r\n")),
            "{r}"
        );
        assert!(r.contains("\r\nContent-Length: 13\r\n"), "{r}");
        assert!(r.contains("\r\nConnection: close\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\nxdpgate_up 1\n"), "{r}");

        let r = exchange(addr, b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");

        let r = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.contains("Content-Length: 13\r\n") && r.ends_with("\r\n\r\n"),
            "{r}"
        );

        let r = exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("href=\"/metrics\""), "{r}");

        let r = exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");

        let r = exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{r}");
        assert!(r.contains("\r\nAllow: GET, HEAD\r\n"), "{r}");

        let r = exchange(addr, b"hello\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");

        let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while big.len() <= MAX_HEAD {
            big.extend_from_slice(
                b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        big.extend_from_slice(b"\r\n");
        let r = exchange(addr, &big).await;
        assert!(
            r.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{r}"
        );

        token.cancel();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("serve returns after cancel")
            .unwrap();
    }

    #[tokio::test]
    async fn gather_errors_and_panics_are_500() {
        let (addr, token, task) = start(Arc::new(|| Err("map XG_STATS: gone".into()))).await;
        let r = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(
            r.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{r}"
        );
        assert!(
            r.ends_with("cannot gather metrics: map XG_STATS: gone\n"),
            "{r}"
        );
        token.cancel();
        task.await.unwrap();

        let (addr, token, task) = start(Arc::new(|| panic!("gatherer bug"))).await;
        let r = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(
            r.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{r}"
        );
        token.cancel();
        task.await.unwrap();
    }

    /// A client that never finishes its head is disconnected after
    /// HEAD_TIMEOUT (paused clock: no real wait).
    #[tokio::test(start_paused = true)]
    async fn slow_head_is_disconnected_after_the_time_limit() {
        let (addr, token, task) = start(fixed("x 1\n")).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let t0 = tokio::time::Instant::now();
        let mut out = Vec::new();
        tokio::time::timeout(HEAD_TIMEOUT * 2, s.read_to_end(&mut out))
            .await
            .expect("closed within twice the time limit")
            .unwrap();
        assert!(out.is_empty(), "no answer to an incomplete head");
        assert!(t0.elapsed() >= HEAD_TIMEOUT, "{:?}", t0.elapsed());
        token.cancel();
        task.await.unwrap();
    }

    /// Cancelling returns at once although a client holds a connection open
    /// (and the clock is real: no paused-time shortcut).
    #[tokio::test]
    async fn stuck_client_does_not_delay_shutdown() {
        let (addr, token, task) = start(fixed("x 1\n")).await;
        let mut stuck = TcpStream::connect(addr).await.unwrap();
        stuck.write_all(b"GET /met").await.unwrap();
        // Let the server accept it and start reading.
        let r = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        let t0 = std::time::Instant::now();
        token.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("serve returns within 1 s of cancel")
            .unwrap();
        assert!(t0.elapsed() < Duration::from_secs(1));
        // The stuck connection was closed without an answer.
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(1), stuck.read_to_end(&mut out))
            .await
            .expect("stuck connection closed")
            .unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn request_line_parsing() {
        fn p(s: &str) -> Option<RequestLine<'_>> {
            parse_request_line(s.as_bytes())
        }
        assert_eq!(
            p("GET /metrics?x=1 HTTP/1.1\r\n"),
            Some(RequestLine {
                method: "GET",
                path: "/metrics"
            })
        );
        assert_eq!(p("GET /metrics HTTP/2\r\n"), None);
        assert_eq!(p("GET /metrics\r\n"), None);
        assert_eq!(p("get /metrics HTTP/1.1\r\n"), None);
        assert_eq!(p("GET  /metrics HTTP/1.1\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest", 0), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.0\r\n", 0), None);
    }
}

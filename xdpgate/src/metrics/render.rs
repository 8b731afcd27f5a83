//! The Prometheus text exposition of a [`Snapshot`]: every series present
//! from the first scrape, at zero until something happens, with bounded
//! labels.
use std::collections::{BTreeMap, BTreeSet};

use prometheus::{Encoder as _, Gauge, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use xdpgate_common::{Action, DropReason, Family, limit::rule_stat};

use super::{Snapshot, UNREGISTERED};

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
    let rule_limit = counter(
        &r,
        "xdpgate_rule_limit_packets_total",
        "Packets counted by the limit and SYN-cookie path of an ACL rule with a limit or syncookie, by rule id and kind: limited (over the limit, dropped), cookies_sent (SYN-ACKs with a cookie), cookie_acks (valid cookie ACKs passed), bad_cookies (neither a connection nor a valid cookie, dropped), synacks_limited (SYNs unanswered under the reflector limit), kernel_syns (SYNs passed to the kernel to keep its listener accepting cookies).",
        &["rule_id", "kind"],
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
    let addr_cache = counter(
        &r,
        "xdpgate_acl_address_cache_lookups_total",
        "IPv6 address-class cache lookups over all CPUs, source and destination counted apart: hit (the class from the cache) or miss (looked up in the address tables).",
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
    let dp_info = gauge(
        &r,
        "xdpgate_datapath_info",
        "Always 1; labels carry the schema of the pinned datapath and the tag of the program it runs.",
        &["schema", "prog_tag"],
    );
    let dp_since = gauge(
        &r,
        "xdpgate_datapath_attached_timestamp_seconds",
        "Unix time since which xdpgate enforces on the interface (its link was pinned); restarts and upgrades keep it.",
        &["interface"],
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
    let unsaved = IntGauge::new(
        "xdpgate_state_unsaved",
        "1 while the state in force is not saved to the state file (full or read-only filesystem, ...): a restart would lose it; 0 when saved.",
    )
    .expect("valid metric definition");
    r.register(Box::new(unsaved.clone()))
        .expect("metric registered once");
    let save_failures = prometheus::IntCounter::new(
        "xdpgate_state_save_failures_total",
        "Saves of the state file that failed since the daemon started.",
    )
    .expect("valid metric definition");
    r.register(Box::new(save_failures.clone()))
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
        if let Some(limits) = &row.limits {
            for (kind, n) in rule_stat::NAMES.iter().zip(limits) {
                rule_limit
                    .with_label_values(&[id.as_str(), kind])
                    .inc_by(*n);
            }
        }
    }
    for row in &s.defaults {
        let l = [row.interface.as_str(), row.policy.as_str()];
        default_packets.with_label_values(&l).inc_by(row.packets);
        default_bytes.with_label_values(&l).inc_by(row.bytes);
    }
    let c = s.report.decision_cache;
    cache.with_label_values(&["hit"]).inc_by(c.hits);
    cache.with_label_values(&["miss"]).inc_by(c.misses);
    addr_cache.with_label_values(&["hit"]).inc_by(c.addr_hits);
    addr_cache
        .with_label_values(&["miss"])
        .inc_by(c.addr_misses);
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
    dp_info
        .with_label_values(&[
            s.datapath.schema.to_string().as_str(),
            s.datapath.prog_tag.as_str(),
        ])
        .set(1);
    for (iface, since) in &s.datapath.attached {
        dp_since
            .with_label_values(&[iface.as_str()])
            .set(clamp(*since));
    }
    reload_ts.set(s.last_reload_success_unix as f64);
    reload_ok.set(i64::from(s.last_reload_ok));
    unsaved.set(i64::from(s.state_save.unsaved));
    save_failures.inc_by(s.state_save.failures);

    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&r.gather(), &mut out)
        .expect("text encoding into memory");
    String::from_utf8(out).expect("the text encoder writes UTF-8")
}

/// The metrics server's own series, appended to every exposition it
/// serves: connections it closed before a complete exchange, by reason
/// (`closed`: every reason with its count, so each is present at zero).
pub fn render_server(closed: &[(&str, u64)]) -> String {
    let r = Registry::new();
    let c = counter(
        &r,
        "xdpgate_metrics_connections_closed_total",
        "Connections to this metrics endpoint closed before a complete exchange, by reason: head_timeout (no complete request head within 3 s of connecting), evicted (its slot went to a newer connection while all were taken: it had waited longest without sending its request), refused (no slot could be freed: all were being answered), write_timeout (the client did not take its answer within 10 s). A steady rise means a client holds connections open (slowloris).",
        &["reason"],
    );
    for (reason, n) in closed {
        c.with_label_values(&[*reason]).inc_by(*n);
    }
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&r.gather(), &mut out)
        .expect("text encoding into memory");
    String::from_utf8(out).expect("the text encoder writes UTF-8")
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

//! The one renderer of the CLI's output: every table and line the verbs
//! print as text, and their JSON (`-o json`).
//!
//! JSON is printed from the typed answers with every object's keys in
//! alphabetical order, as it always has been (the answers went through a
//! `serde_json::Value`, whose maps are sorted): scripts and the tests parse
//! it, so its shape is pinned by the tests of [`api::protocol`](crate::api::protocol).
use std::{fmt::Write as _, path::PathBuf};

use serde::Serialize;
use xdpgate_model::{acl::Rule, config::Config, iface::XdpMode};

use crate::api::protocol::{
    AclList, Applied, BindList, BindReport, CounterRow, LbList, LimitCounters, RuleRow, SetList,
    SetShow, StatsReport, Status,
};

/// `value` as pretty-printed JSON, keys sorted.
pub fn json<T: Serialize>(value: &T) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&serde_json::to_value(value)?)
}

/// What `status` shows: the daemon as seen from outside (and, when it
/// answers, from inside), and every XDP attachment of the namespace.
#[derive(Clone, Debug, Serialize)]
pub struct StatusView {
    /// What the report means for a health check.
    pub health: super::health::Health,
    /// `status`'s exit code ([`Health::exit_code`](super::health::Health::exit_code)).
    pub exit_code: u8,
    /// The daemon.
    pub daemon: DaemonView,
    /// Every XDP attachment, ours or not.
    pub interfaces: Vec<XdpRow>,
}

/// The daemon in `status`.
#[derive(Clone, Debug, Serialize)]
pub struct DaemonView {
    /// Whether a daemon holds the lock.
    pub running: bool,
    /// Its pid.
    pub pid: Option<u32>,
    /// The runtime directory looked at.
    pub run_dir: PathBuf,
    /// Where its maps are pinned.
    pub bpffs_dir: PathBuf,
    /// What it says about itself, if it answered.
    pub detail: Option<Status>,
}

/// One XDP attachment as `status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct XdpRow {
    /// Interface name.
    pub interface: String,
    /// Interface index.
    pub ifindex: u32,
    /// Attach mode.
    pub mode: XdpMode,
    /// Kernel program id.
    pub prog_id: u32,
    /// Program name (unknown without CAP_SYS_ADMIN).
    pub program: Option<String>,
    /// Whether the program is xdpgate's.
    pub xdpgate: bool,
    /// Whether this is xdpgate's pinned link, enforcing with or without a
    /// running daemon (`None`: not a pinned link of this bpffs directory).
    pub enforcing: Option<Enforcing>,
    /// The schema of the pinned datapath.
    pub schema: Option<u32>,
    /// The kernel's tag of the program, in hex.
    pub prog_tag: Option<String>,
    /// Since when the interface is enforcing (its link was pinned), Unix seconds.
    pub since_unix: Option<u64>,
}

/// Who keeps an interface's policy in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcing {
    /// The pinned datapath, with a daemon managing it.
    WithDaemon,
    /// The pinned datapath alone: the last committed state, health checks stopped.
    WithoutDaemon,
}

/// A duration in milliseconds, one decimal.
fn ms(d: std::time::Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The line every ACL change prints.
pub fn applied(a: &Applied) -> String {
    format!(
        "applied: {} rules, {} prefixes installed (compile {}, install {})\n",
        a.rules,
        a.prefixes,
        ms(a.compile),
        ms(a.install)
    )
}

/// A rule's match fields as `acl list` prints them.
pub fn describe(rule: &Rule) -> String {
    let mut parts = vec![format!("prio {}", rule.priority)];
    if let Some(s) = &rule.src {
        parts.push(format!("src {s}"));
    }
    if let Some(d) = &rule.dst {
        parts.push(format!("dst {d}"));
    }
    if let Some(p) = rule.proto {
        parts.push(format!("proto {p}"));
    }
    if let Some(p) = rule.sport {
        parts.push(format!("sport {p}"));
    }
    if let Some(p) = rule.dport {
        parts.push(format!("dport {p}"));
    }
    if let Some(t) = rule.icmp_type {
        parts.push(format!("icmp-type {t}"));
    }
    if let Some(c) = rule.icmp_code {
        parts.push(format!("icmp-code {c}"));
    }
    if let Some(i) = &rule.iface {
        parts.push(format!("iface {i}"));
    }
    parts.join(" ")
}

/// `acl list`: rules in evaluation order, then the default policies.
pub fn acl_list(l: &AclList) -> String {
    let mut out = format!(
        "{:>10}  {:<6}  {:>14}  {:>16}  MATCH\n",
        "ID", "ACTION", "PACKETS", "BYTES"
    );
    for r in &l.rules {
        let _ = writeln!(
            out,
            "{:>10}  {:<6}  {:>14}  {:>16}  {}",
            r.rule.id,
            r.rule.action.to_string(),
            r.packets,
            r.bytes,
            describe(&r.rule)
        );
        if let Some(line) = limit_line(r) {
            let _ = writeln!(out, "{:>10}  {line}", "");
        }
    }
    for d in &l.defaults {
        let _ = writeln!(
            out,
            "{:>10}  {:<6}  {:>14}  {:>16}  default policy of {}",
            "-",
            d.policy.to_string(),
            d.packets,
            d.bytes,
            d.iface
        );
    }
    out
}

/// The second line of a rule with a limit or `syncookie` in `acl list`: the
/// limit, `syncookie`, and the six counters (all of them, zeros included,
/// so that columns of several rules line up by name).
fn limit_line(r: &RuleRow) -> Option<String> {
    let counters = r.limit_counters?;
    let mut what = Vec::new();
    if let Some(l) = &r.rule.limit {
        what.push(format!("limit {l}"));
    }
    if r.rule.syncookie {
        what.push("syncookie".to_owned());
    }
    Some(format!(
        "{}: {}",
        what.join(", "),
        limit_counters(&counters)
    ))
}

/// `limited 3, cookies_sent 0, ...`.
fn limit_counters(c: &LimitCounters) -> String {
    c.named()
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `set list`: every set with its sizes and the rules that use it.
pub fn set_list(l: &SetList) -> String {
    let mut out = format!("{:<24}  {:>9}  {:>9}  USED BY\n", "SET", "IPV4", "IPV6");
    for s in &l.sets {
        let used_by: Vec<String> = s.used_by.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "{:<24}  {:>9}  {:>9}  [{}]",
            s.name,
            s.ipv4,
            s.ipv6,
            used_by.join(",")
        );
    }
    out
}

/// `set list NAME`: the set's prefixes, one per line.
pub fn set_show(s: &SetShow) -> String {
    s.prefixes.iter().map(|p| format!("{p}\n")).collect()
}

/// What a binding change did, as `bind add` and `bind del` print it.
pub fn bind_report(r: &BindReport) -> String {
    format!(
        "added {}, adopted {}, dropped {}, readded {}, released {}, removed {}, total {}, unchanged {}\n",
        r.added, r.adopted, r.dropped, r.readded, r.released, r.removed, r.total, r.unchanged
    )
}

/// `bind list`.
pub fn bind_list(l: &BindList) -> String {
    let mut out = format!(
        "{:<16}  {:<40}  {:<7}  ORIGIN\n",
        "INTERFACE", "ADDRESS", "NODAD"
    );
    for b in &l.bindings {
        let origin = match b.origin {
            xdpgate_model::bind::Origin::Added => "added",
            xdpgate_model::bind::Origin::Adopted => "adopted",
        };
        let _ = writeln!(
            out,
            "{:<16}  {:<40}  {:<7}  {origin}",
            b.iface,
            format!("{}/{}", b.addr, b.plen),
            b.nodad,
        );
    }
    if !l.drop_unbound.is_empty() {
        let _ = writeln!(
            out,
            "traffic to unbound addresses is dropped on: {}",
            l.drop_unbound.join(", ")
        );
    }
    out
}

/// `lb list`: each service, then its backends.
pub fn lb_list(l: &LbList) -> String {
    if l.services.is_empty() {
        return "no services\n".into();
    }
    let mut out = String::new();
    for s in &l.services {
        let _ = writeln!(
            out,
            "{}  forward {}  ring {}  forwarded {}  slow-path {}  dropped {}{}",
            s.service,
            s.forward.name(),
            s.ring_size,
            s.forwarded_packets,
            s.slow_path_packets,
            s.dropped_packets,
            if s.health_checked {
                "  health-checked"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "  {:<40}  {:>6}  {:<7}  {:>8}  {:>12}  {:>14}",
            "BACKEND", "WEIGHT", "HEALTH", "RING", "PACKETS", "BYTES"
        );
        for b in &s.backends {
            let _ = writeln!(
                out,
                "  {:<40}  {:>6}  {:<7}  {:>8}  {:>12}  {:>14}",
                b.addr.to_string(),
                b.weight,
                if b.healthy { "up" } else { "down" },
                b.ring_entries,
                b.packets,
                b.bytes
            );
        }
    }
    out
}

/// The counter table of `stats`. Rows whose action never happened are left
/// out unless the action is `pass` or `drop`, to keep the table short.
pub fn counter_table(rows: &[CounterRow]) -> String {
    let shown: Vec<_> = rows
        .iter()
        .filter(|r| r.packets != 0 || r.action == "pass" || r.action == "drop")
        .collect();
    let width = shown
        .iter()
        .map(|r| r.interface.len())
        .max()
        .unwrap_or(0)
        .max("INTERFACE".len());
    let mut out = format!(
        "{:<width$}  {:<6}  {:<8}  {:>14}  {:>16}\n",
        "INTERFACE", "FAMILY", "ACTION", "PACKETS", "BYTES"
    );
    for r in shown {
        let _ = writeln!(
            out,
            "{:<width$}  {:<6}  {:<8}  {:>14}  {:>16}",
            r.interface, r.family, r.action, r.packets, r.bytes
        );
    }
    out
}

/// `stats`: the counter table, then the non-zero drop-reason counters
/// (malformed frames, `not_bound`, and those of limits and SYN cookies),
/// then the decision cache and the limit and SYN-cookie totals. Counter rows
/// whose action never happened are left out unless the action is `pass` or
/// `drop`, to keep the table short.
pub fn stats(report: &StatsReport) -> String {
    let mut out = counter_table(&report.counters);
    let bad: Vec<_> = report.malformed.iter().filter(|r| r.packets != 0).collect();
    if !bad.is_empty() {
        out.push_str(
            "\nDROP REASONS (malformed frames; not_bound: destination not bound; rate_limited, synack_limited, bad_cookie: rule limits and SYN cookies)\n",
        );
        for r in bad {
            let _ = writeln!(
                out,
                "{}  {:<20}  {:>14}  {:>16}",
                r.interface, r.reason, r.packets, r.bytes
            );
        }
    }
    let c = report.decision_cache;
    let _ = writeln!(
        out,
        "\nACL decision cache: {} hits, {} misses",
        c.hits, c.misses
    );
    if c.walks > 0 {
        let _ = writeln!(
            out,
            "  {} of the misses walked the rule bitmaps (the rule set exceeds the phased tables' budget, or they were being rebuilt after a rule change)",
            c.walks
        );
    }
    let _ = writeln!(
        out,
        "rule limits and SYN cookies (all rules): {}",
        limit_counters(&report.limits)
    );
    out
}

/// `status`: the daemon, then the XDP attachments of the namespace.
pub fn status(v: &StatusView) -> String {
    let mut out = String::new();
    let d = &v.daemon;
    match d.pid {
        Some(pid) if d.running => {
            let _ = writeln!(
                out,
                "daemon: running (pid {pid}), maps pinned in {}",
                d.bpffs_dir.display()
            );
            if let Some(s) = &d.detail {
                let config = if s.config.as_os_str().is_empty() {
                    "(none, flags only)".to_string()
                } else {
                    s.config.display().to_string()
                };
                let _ = writeln!(
                    out,
                    "config: {config}; state file: {}; started from the {}",
                    s.state_file.display(),
                    match s.started_from {
                        crate::api::protocol::StartedFrom::Config => "config",
                        crate::api::protocol::StartedFrom::StateFile => "state file",
                    }
                );
                let _ = writeln!(
                    out,
                    "{} rules, {} sets, {} bound addresses; last reload {}",
                    s.rules,
                    s.sets,
                    s.bindings,
                    if s.reload.last_ok {
                        "ok".to_string()
                    } else {
                        format!("FAILED: {}", s.reload.last_error.as_deref().unwrap_or("?"))
                    }
                );
                if let Some(b) = &s.busy {
                    let of = if b.total > 0 {
                        format!(" {}/{}", b.done, b.total)
                    } else {
                        String::new()
                    };
                    let _ = writeln!(
                        out,
                        "busy: {} running for {:.1} s ({}{of}); the counts above are as of its start",
                        b.what, b.seconds, b.phase
                    );
                }
                if let Some(why) = &s.state_not_saved {
                    let _ = writeln!(
                        out,
                        "DEGRADED: state not saved: {why} ({} failed save(s); the state in force is enforced, but a restart would lose it; retried after every change and every 15 s)",
                        s.state_save_failures
                    );
                }
                for w in &s.warnings {
                    let _ = writeln!(out, "warning: {w}");
                }
                let c = &s.syncookies;
                match (&c.reason, c.enabled) {
                    (_, true) => {
                        let _ = writeln!(out, "SYN cookies: enabled");
                    }
                    (Some(why), false) => {
                        let _ = writeln!(out, "SYN cookies: disabled: {why}");
                    }
                    (None, false) => {
                        let _ = writeln!(out, "SYN cookies: disabled");
                    }
                }
                if let Some(w) = &c.warning {
                    let _ = writeln!(out, "warning: {w}");
                }
            }
        }
        _ => {
            let _ = writeln!(
                out,
                "daemon: not running (no lock held in {})",
                d.run_dir.display()
            );
        }
    }
    let _ = writeln!(out, "health: {} (exit {})", v.health.meaning(), v.exit_code);
    if v.interfaces.is_empty() {
        out.push_str("no interface in this network namespace has an XDP program\n");
        return out;
    }
    let w = v
        .interfaces
        .iter()
        .map(|r| r.interface.len())
        .max()
        .unwrap_or(0)
        .max(9);
    let _ = writeln!(
        out,
        "{:<w$}  {:>7}  {:<6}  {:>7}  {:<16}  {:<7}  {:<18}  {:>6}  {:<16}  SINCE",
        "INTERFACE", "IFINDEX", "MODE", "PROG_ID", "PROGRAM", "OWNER", "ENFORCING", "SCHEMA", "TAG"
    );
    for r in &v.interfaces {
        let _ = writeln!(
            out,
            "{:<w$}  {:>7}  {:<6}  {:>7}  {:<16}  {:<7}  {:<18}  {:>6}  {:<16}  {}",
            r.interface,
            r.ifindex,
            r.mode.name(),
            r.prog_id,
            r.program.as_deref().unwrap_or("?"),
            if r.xdpgate { "xdpgate" } else { "other" },
            match r.enforcing {
                Some(Enforcing::WithDaemon) => "yes, daemon",
                Some(Enforcing::WithoutDaemon) => "yes, no daemon",
                None => "-",
            },
            r.schema.map_or("-".to_string(), |s| s.to_string()),
            r.prog_tag.as_deref().unwrap_or("-"),
            r.since_unix
                .map_or("-".to_string(), |s| format!("unix {s}")),
        );
    }
    out
}

/// `check`: what a valid configuration file holds.
pub fn check(path: &std::path::Path, cfg: &Config) -> String {
    let state = cfg.acl_state();
    format!(
        "{}: ok: {} interface(s), {} set(s) with {} prefixes, {} rule(s), {} binding(s), {} service(s), metrics on {}\n",
        path.display(),
        cfg.interfaces.len(),
        state.sets.len(),
        state
            .sets
            .values()
            .map(xdpgate_model::acl::PrefixSet::len)
            .sum::<usize>(),
        state.rules.len(),
        cfg.bindings.len(),
        cfg.services.len(),
        if cfg.metrics_listen.is_empty() {
            "nothing".to_string()
        } else {
            cfg.metrics_listen
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    )
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;

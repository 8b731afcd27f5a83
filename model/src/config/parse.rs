//! The configuration file's parser: the TOML document with the position of
//! every key and value, converted into a [`Config`] table by table and key
//! by key, every error collected with the position of the key (or list
//! element) at fault.
//!
//! A syntax error stops the conversion: every syntax error is reported, the
//! keys are checked once the file parses (a document recovered from broken
//! syntax would yield errors that are not there).
use std::{collections::BTreeSet, net::SocketAddr, path::Path, time::Duration};

use toml::de::DeTable;

use super::{
    BindEntry, Config, ConfigError, Interface, acl, capacity, ddos,
    fields::{Ctx, Section, Span, Value, entries},
    paths, service,
};
use crate::{
    acl::Verdict,
    iface::{Malformed, XdpMode},
    lb::maglev,
};

/// The tables a configuration file may hold.
const TABLES: &[&str] = &[
    "daemon",
    "metrics",
    "bindings",
    "interface",
    "bind",
    "sets",
    "rule",
    "lb",
    "service",
    "ddos",
    "acl",
];

fn mode_of(s: &str) -> Result<XdpMode, String> {
    match s {
        "native" => Ok(XdpMode::Native),
        "skb" => Ok(XdpMode::Skb),
        "hw" => Ok(XdpMode::Hw),
        _ => Err(format!("mode {s:?} is not native, skb or hw")),
    }
}

fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n != "."
        && n != ".."
        && !n.contains(['/', ':'])
        && !n.chars().any(char::is_whitespace)
}

/// The file's top-level tables, each with the position of its name.
struct Top<'t, 'i> {
    doc: &'t DeTable<'i>,
}

impl<'t, 'i> Top<'t, 'i> {
    fn get(&self, name: &str) -> Option<(Span, &'t Value<'i>)> {
        self.doc
            .iter()
            .find(|(k, _)| k.get_ref() == name)
            .map(|(k, v)| (k.span(), v))
    }
    /// `[name]` as a section.
    fn section(&self, cx: &mut Ctx<'_>, name: &str) -> Option<Section<'t, 'i>> {
        let (_, v) = self.get(name)?;
        Section::of(cx, format!("[{name}]"), v)
    }
    /// The entries of `[[name]]`.
    fn entries(&self, cx: &mut Ctx<'_>, name: &str) -> Vec<(Section<'t, 'i>, usize)> {
        match self.get(name) {
            Some((at, v)) => entries(cx, name, &at, v),
            None => Vec::new(),
        }
    }
}

/// Parses and validates a configuration's text. `path` only names it in
/// messages. Every error found is reported, each with its line and column;
/// the state file's path is also checked against the filesystem, as `run`
/// would use it.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let invalid = |cx: Ctx<'_>| ConfigError::Invalid {
        path: path.to_path_buf(),
        issues: cx.into_issues(),
    };
    let mut cx = Ctx::new(text);
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for e in syntax {
            let at = e.span().unwrap_or(0..0);
            cx.push(&at, e.message().trim().replace('\n', " "));
        }
        return Err(invalid(cx));
    }
    let top = Top { doc: doc.get_ref() };
    for (k, _) in top.doc {
        if !TABLES.contains(&k.get_ref().as_ref()) {
            cx.push(
                &k.span(),
                format!(
                    "unknown table [{}] (the tables are [daemon], [metrics], [bindings], [[interface]], [[bind]], [sets], [[rule]], [lb], [[service]], [ddos] and [acl])",
                    k.get_ref()
                ),
            );
        }
    }
    let mut cfg = Config::from_flags(&[], XdpMode::Native, Malformed::Drop);
    cfg.path = path.to_path_buf();
    cfg.digest = super::digest(text);

    if let Some(s) = top.section(&mut cx, "daemon") {
        daemon(&mut cx, &s, &mut cfg);
    }
    if let Some(s) = top.section(&mut cx, "metrics") {
        metrics(&mut cx, &s, &mut cfg);
    }
    if let Some(s) = top.section(&mut cx, "bindings") {
        cx.known_keys(&s, &["max_expand"]);
        if let Some((n, _)) = cx.integer(&s, "max_expand", 1..=1 << 24) {
            cfg.bind_limit = n as usize;
        }
    }
    let list = top.entries(&mut cx, "interface");
    let names = interfaces(&mut cx, &list, &mut cfg);
    let list = top.entries(&mut cx, "bind");
    binds(&mut cx, &list, &names, &mut cfg);
    let lb_max_services = top
        .section(&mut cx, "lb")
        .map(|s| lb(&mut cx, &s, &mut cfg));
    let list = top.entries(&mut cx, "service");
    cfg.services = service::services(
        &mut cx,
        &list,
        cfg.lb.max_services,
        lb_max_services.flatten().as_ref(),
    );
    if let Some(s) = top.section(&mut cx, "ddos") {
        ddos::ddos(&mut cx, &s, &mut cfg.ddos);
    }
    // Before the rules: they are compiled for these capacities.
    if let Some(s) = top.section(&mut cx, "acl") {
        capacity::capacities(&mut cx, &s, &mut cfg.capacities);
    }
    let sets = top.section(&mut cx, "sets");
    let list = top.entries(&mut cx, "rule");
    acl::acl(&mut cx, sets.as_ref(), &list, &names, &mut cfg);

    if cx.is_empty() {
        Ok(cfg)
    } else {
        Err(invalid(cx))
    }
}

fn daemon(cx: &mut Ctx<'_>, s: &Section<'_, '_>, cfg: &mut Config) {
    cx.known_keys(
        s,
        &[
            "malformed",
            "decision_cache",
            "state_file",
            "shutdown_grace_seconds",
            "datapath_events",
            "datapath_events_sample",
            "datapath_events_per_second",
        ],
    );
    match cx.string(s, "malformed") {
        None => {}
        Some((m, _)) if m == "drop" => cfg.malformed = Malformed::Drop,
        Some((m, _)) if m == "pass" => cfg.malformed = Malformed::Pass,
        Some((m, at)) => cx.push(
            &at,
            format!("[daemon] malformed = {m:?}: use \"drop\" or \"pass\""),
        ),
    }
    if let Some(b) = cx.boolean(s, "decision_cache") {
        cfg.decision_cache = b;
    }
    if let Some((f, at)) = cx.string(s, "state_file") {
        match paths::state_file_problem(&f) {
            Some(why) => cx.push(&at, format!("[daemon] state_file: {why}")),
            None => cfg.state_file = f.into(),
        }
    }
    if let Some((g, at)) = cx.number(s, "shutdown_grace_seconds") {
        if (0.0..=300.0).contains(&g) {
            cfg.shutdown_grace = Duration::from_secs_f64(g);
        } else {
            cx.push(
                &at,
                format!("[daemon] shutdown_grace_seconds = {g}: use 0 to 300"),
            );
        }
    }
    if let Some(b) = cx.boolean(s, "datapath_events") {
        cfg.datapath_events = b;
    }
    if let Some((n, _)) = cx.integer(s, "datapath_events_sample", 1..=1_000_000) {
        cfg.datapath_events_sample = n as u32;
    }
    if let Some((n, _)) = cx.integer(s, "datapath_events_per_second", 1..=10_000) {
        cfg.datapath_events_per_second = n as u32;
    }
}

fn metrics(cx: &mut Ctx<'_>, s: &Section<'_, '_>, cfg: &mut Config) {
    cx.known_keys(s, &["listen", "freebind"]);
    if let Some((list, _)) = cx.strings(s, "listen") {
        let mut seen = BTreeSet::new();
        cfg.metrics_listen.clear();
        for (a, at) in list {
            match a.parse::<SocketAddr>() {
                Ok(sa) => {
                    if !seen.insert(sa) {
                        cx.push(&at, format!("[metrics] listen: {a} is listed twice"));
                    }
                    cfg.metrics_listen.push(sa);
                }
                Err(_) => cx.push(
                    &at,
                    format!(
                        "[metrics] listen: {a:?} is not ADDRESS:PORT (IPv6 in brackets, e.g. \"[::1]:9464\")"
                    ),
                ),
            }
        }
    }
    if let Some(b) = cx.boolean(s, "freebind") {
        cfg.metrics_freebind = b;
    }
}

/// The interfaces; returns their names.
fn interfaces(
    cx: &mut Ctx<'_>,
    list: &[(Section<'_, '_>, usize)],
    cfg: &mut Config,
) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (s, i) in list {
        cx.known_keys(s, &["name", "mode", "policy", "drop_unbound", "decap"]);
        if *i + 1 == xdpgate_common::MAX_IFACES as usize {
            cx.push(
                &s.span,
                format!(
                    "{}: too many interfaces: at most {} are supported",
                    s.name,
                    xdpgate_common::MAX_IFACES - 1
                ),
            );
        }
        let name = match cx.string(s, "name") {
            Some((n, at)) => {
                // Listed even when invalid, so that the entries naming it
                // are not reported too.
                let fresh = names.insert(n.clone());
                if !valid_ifname(&n) {
                    cx.push(
                        &at,
                        format!(
                            "{}: {n:?} is not an interface name (1 to 15 characters, no '/', ':' or spaces)",
                            s.name
                        ),
                    );
                } else if !fresh {
                    cx.push(&at, format!("{}: interface {n} is listed twice", s.name));
                }
                Some(n)
            }
            None => {
                if s.key("name").is_none() {
                    cx.missing(s, "name", "the interface's name, e.g. name = \"eth0\"");
                }
                None
            }
        };
        let label = name.as_deref().unwrap_or("?");
        let mode = match cx.string(s, "mode") {
            None => XdpMode::Native,
            Some((m, at)) => mode_of(&m).unwrap_or_else(|why| {
                cx.push(&at, format!("{} ({label}): {why}", s.name));
                XdpMode::Native
            }),
        };
        let policy = match cx.string(s, "policy") {
            None => Verdict::Allow,
            Some((p, at)) => p.parse::<Verdict>().unwrap_or_else(|_| {
                cx.push(
                    &at,
                    format!("{} ({label}): policy {p:?} is not allow or deny", s.name),
                );
                Verdict::Allow
            }),
        };
        let drop_unbound = cx.boolean(s, "drop_unbound").unwrap_or(false);
        let decap = cx.boolean(s, "decap").unwrap_or(false);
        if let Some(name) = name {
            cfg.interfaces.push(Interface {
                name,
                mode,
                policy,
                drop_unbound,
                decap,
            });
        }
    }
    names
}

fn binds(
    cx: &mut Ctx<'_>,
    list: &[(Section<'_, '_>, usize)],
    names: &BTreeSet<String>,
    cfg: &mut Config,
) {
    for (s, _) in list {
        cx.known_keys(s, &["iface", "spec", "addr", "plen", "nodad"]);
        let iface = cx.string(s, "iface");
        if let Some((i, at)) = &iface
            && !names.contains(i)
        {
            cx.push(
                at,
                format!(
                    "{}: interface {i} is not one of the [[interface]] entries",
                    s.name
                ),
            );
        }
        if s.key("iface").is_none() {
            cx.missing(
                s,
                "iface",
                "the interface to bind on, e.g. iface = \"eth0\"",
            );
        }
        let spec = match (s.key("spec"), s.key("addr")) {
            (Some(_), Some(at)) => {
                cx.push(
                    &at,
                    format!("{}: give spec or addr (the same key), not both", s.name),
                );
                None
            }
            (Some(_), None) => cx.string(s, "spec"),
            (None, Some(_)) => cx.string(s, "addr"),
            (None, None) => {
                cx.missing(
                    s,
                    "spec",
                    "an address, a prefix or a range A-B, e.g. spec = \"192.0.2.10\"",
                );
                None
            }
        };
        let plen = cx.integer(s, "plen", 0..=128);
        let nodad = cx.boolean(s, "nodad").unwrap_or(false);
        let (Some((iface, _)), Some((spec, spec_at))) = (iface, spec) else {
            continue;
        };
        let entry = BindEntry {
            iface,
            spec,
            plen: plen.as_ref().map(|(n, _)| *n as u8),
            nodad,
        };
        let req = crate::bind::BindRequest {
            iface: entry.iface.clone(),
            spec: entry.spec.clone(),
            plen: entry.plen,
            nodad: entry.nodad,
        };
        // The interface was checked above; this checks the spec and limit.
        for e in crate::bind::validate(&[req], cfg.bind_limit, std::slice::from_ref(&entry.iface)) {
            let at = match (&e, &plen) {
                (crate::bind::RequestError::Plen { .. }, Some((_, at))) => at,
                _ => &spec_at,
            };
            cx.push(at, format!("{}: {e}", s.name));
        }
        cfg.bindings.push(entry);
    }
}

/// `[lb]`; returns the position of `max_services` if given.
fn lb(cx: &mut Ctx<'_>, s: &Section<'_, '_>, cfg: &mut Config) -> Option<Span> {
    cx.known_keys(
        s,
        &[
            "max_services",
            "table_size",
            "encap_source_v4",
            "encap_source_v6",
            "encap_ttl",
            "flow_hash",
        ],
    );
    let max = xdpgate_common::lb::MAX_SERVICES;
    let max_at = cx
        .integer(s, "max_services", 1..=i64::from(max))
        .map(|(n, at)| {
            cfg.lb.max_services = n as u32;
            at
        });
    let ring = xdpgate_common::lb::DEFAULT_RING_SIZE;
    if let Some((n, at)) = cx.integer(s, "table_size", 0..=i64::from(u32::MAX)) {
        let n = n as u32;
        if maglev::is_prime(n) && (257..=ring).contains(&n) {
            cfg.lb.table_size = n;
        } else {
            cx.push(
                &at,
                format!(
                    "[lb] table_size = {n}: use a prime from 257 to {ring} (e.g. 4099, 16381, 65537)"
                ),
            );
        }
    }
    if let Some((p, at)) = cx.string(s, "encap_source_v4") {
        match p.parse::<ipnetwork::Ipv4Network>() {
            Ok(n) if n.ip() == n.network() => cfg.lb.source_v4 = n,
            _ => cx.push(
                &at,
                format!("[lb] encap_source_v4 = {p:?} is not an IPv4 prefix without host bits"),
            ),
        }
    }
    if let Some((p, at)) = cx.string(s, "encap_source_v6") {
        match p.parse::<ipnetwork::Ipv6Network>() {
            Ok(n) if n.ip() == n.network() => cfg.lb.source_v6 = n,
            _ => cx.push(
                &at,
                format!("[lb] encap_source_v6 = {p:?} is not an IPv6 prefix without host bits"),
            ),
        }
    }
    if let Some((t, _)) = cx.integer(s, "encap_ttl", 1..=255) {
        cfg.lb.ttl = t as u32;
    }
    if let Some((h, at)) = cx.string(s, "flow_hash") {
        use xdpgate_common::lb::FlowHash;
        match [FlowHash::Fast, FlowHash::Murmur3]
            .into_iter()
            .find(|k| k.name() == h)
        {
            Some(k) => cfg.lb.flow_hash = Some(k),
            None => cx.push(
                &at,
                format!("[lb] flow_hash = {h:?}: use \"fast\" or \"murmur3\""),
            ),
        }
    }
    max_at
}

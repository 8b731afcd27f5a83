//! The configuration file's parser: the file's shape as TOML, and its
//! conversion into a [`Config`], item by item, every error with its position.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use super::{BindEntry, Config, ConfigError, Interface, Issue, digest};
use crate::{
    acl::{AclError, AclState, Rule, Verdict, compile::compile},
    iface::{Malformed, XdpMode},
    lb::{ServiceEntry, maglev},
};

// The file's shape. Items whose errors should each be reported with their own
// position are kept as spanned TOML values and converted one by one.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    daemon: Option<Spanned<toml::Value>>,
    #[serde(default)]
    metrics: Option<Spanned<toml::Value>>,
    #[serde(default)]
    bindings: Option<Spanned<toml::Value>>,
    #[serde(default)]
    interface: Vec<Spanned<toml::Value>>,
    #[serde(default)]
    bind: Vec<Spanned<toml::Value>>,
    #[serde(default)]
    sets: BTreeMap<Spanned<String>, Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    rule: Vec<Spanned<toml::Value>>,
    #[serde(default)]
    lb: Option<Spanned<toml::Value>>,
    #[serde(default)]
    service: Vec<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LbSection {
    #[serde(default)]
    max_services: Option<u32>,
    #[serde(default)]
    table_size: Option<u32>,
    #[serde(default)]
    encap_source_v4: Option<String>,
    #[serde(default)]
    encap_source_v6: Option<String>,
    #[serde(default)]
    encap_ttl: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DaemonSection {
    #[serde(default)]
    malformed: Option<String>,
    #[serde(default)]
    decision_cache: Option<bool>,
    #[serde(default)]
    state_file: Option<PathBuf>,
    #[serde(default)]
    shutdown_grace_seconds: Option<f64>,
    #[serde(default)]
    datapath_events: Option<bool>,
    #[serde(default)]
    datapath_events_sample: Option<u64>,
    #[serde(default)]
    datapath_events_per_second: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    #[serde(default)]
    listen: Option<Vec<String>>,
    #[serde(default)]
    freebind: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingsSection {
    #[serde(default)]
    max_expand: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InterfaceEntry {
    name: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    drop_unbound: Option<bool>,
    #[serde(default)]
    decap: Option<bool>,
}

struct Ctx<'a> {
    text: &'a str,
    issues: Vec<Issue>,
}

impl Ctx<'_> {
    fn at(&self, span: &Range<usize>) -> Option<(usize, usize)> {
        let upto = &self.text[..span.start.min(self.text.len())];
        let line = upto.matches('\n').count() + 1;
        let col = upto.len() - upto.rfind('\n').map_or(0, |i| i + 1) + 1;
        Some((line, col))
    }
    fn push(&mut self, span: Option<&Range<usize>>, message: impl Into<String>) {
        let at = span.and_then(|s| self.at(s));
        self.issues.push(Issue {
            at,
            message: message.into(),
        });
    }
    /// The position of `key = ` inside the table at `span` (the table's own
    /// position if the key is not found).
    fn key(&self, span: &Range<usize>, key: &str) -> Range<usize> {
        key_in(self.text, span, key)
    }
    /// Converts a spanned table into `T`, reporting a failure at its position.
    fn typed<T: serde::de::DeserializeOwned>(
        &mut self,
        v: &Spanned<toml::Value>,
        what: &str,
    ) -> Option<T> {
        match v.get_ref().clone().try_into::<T>() {
            Ok(t) => Some(t),
            Err(e) => {
                let msg = e.to_string();
                let msg = msg.trim().replace('\n', " ");
                self.push(Some(&v.span()), format!("{what}: {msg}"));
                None
            }
        }
    }
}

/// The position of `key = ` inside the table at `span` of `text` (the table's
/// own position if the key is not found).
fn key_in(text: &str, span: &Range<usize>, key: &str) -> Range<usize> {
    // The span may cover only the table's header: look from it to the next
    // header.
    let body = &text[span.start.min(text.len())..];
    let mut off = 0;
    for (i, line) in body.split_inclusive('\n').enumerate() {
        let t = line.trim_start();
        if i > 0 && t.starts_with('[') {
            break;
        }
        if let Some(rest) = t.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            let at = span.start + off + (line.len() - t.len());
            return at..at + key.len();
        }
        off += line.len();
    }
    span.clone()
}

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

/// Parses and validates a configuration's text. `path` only names it in
/// messages. Every error found is reported.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let invalid = |issues| ConfigError::Invalid {
        path: path.to_path_buf(),
        issues,
    };
    let mut cx = Ctx {
        text,
        issues: Vec::new(),
    };
    let file: File = match toml::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            let span = e.span();
            cx.push(span.as_ref(), e.message().trim().to_string());
            return Err(invalid(cx.issues));
        }
    };
    let mut cfg = Config::from_flags(&[], XdpMode::Native, Malformed::Drop);
    cfg.path = path.to_path_buf();
    cfg.digest = digest(text);

    if let Some(d) = &file.daemon
        && let Some(d) = cx.typed::<DaemonSection>(d, "[daemon]")
    {
        let span = file.daemon.as_ref().map(Spanned::span).unwrap_or_default();
        let k = |key| Some(key_in(text, &span, key));
        match d.malformed.as_deref() {
            None | Some("drop") => {}
            Some("pass") => cfg.malformed = Malformed::Pass,
            Some(o) => cx.push(
                k("malformed").as_ref(),
                format!("[daemon] malformed = {o:?}: use \"drop\" or \"pass\""),
            ),
        }
        cfg.decision_cache = d.decision_cache.unwrap_or(true);
        if let Some(f) = d.state_file {
            if f.is_relative() {
                cx.push(
                    k("state_file").as_ref(),
                    format!(
                        "[daemon] state_file {} must be an absolute path",
                        f.display()
                    ),
                );
            }
            cfg.state_file = f;
        }
        if let Some(g) = d.shutdown_grace_seconds {
            if !(0.0..=300.0).contains(&g) {
                cx.push(
                    k("shutdown_grace_seconds").as_ref(),
                    format!("[daemon] shutdown_grace_seconds = {g}: use 0 to 300"),
                );
            } else {
                cfg.shutdown_grace = Duration::from_secs_f64(g);
            }
        }
        cfg.datapath_events = d.datapath_events.unwrap_or(false);
        if let Some(n) = d.datapath_events_sample {
            if !(1..=1_000_000).contains(&n) {
                cx.push(
                    k("datapath_events_sample").as_ref(),
                    format!("[daemon] datapath_events_sample = {n}: use 1 to 1000000"),
                );
            } else {
                cfg.datapath_events_sample = n as u32;
            }
        }
        if let Some(n) = d.datapath_events_per_second {
            if !(1..=10_000).contains(&n) {
                cx.push(
                    k("datapath_events_per_second").as_ref(),
                    format!("[daemon] datapath_events_per_second = {n}: use 1 to 10000"),
                );
            } else {
                cfg.datapath_events_per_second = n as u32;
            }
        }
    }

    if let Some(m) = &file.metrics
        && let Some(sec) = cx.typed::<MetricsSection>(m, "[metrics]")
    {
        let span = cx.key(&m.span(), "listen");
        if let Some(list) = sec.listen {
            let mut seen = BTreeSet::new();
            cfg.metrics_listen.clear();
            for a in list {
                match a.parse::<SocketAddr>() {
                    Ok(sa) => {
                        if !seen.insert(sa) {
                            cx.push(Some(&span), format!("[metrics] listen: {a} is listed twice"));
                        }
                        cfg.metrics_listen.push(sa);
                    }
                    Err(_) => cx.push(
                        Some(&span),
                        format!(
                            "[metrics] listen: {a:?} is not ADDRESS:PORT (IPv6 in brackets, e.g. \"[::1]:9464\")"
                        ),
                    ),
                }
            }
        }
        cfg.metrics_freebind = sec.freebind.unwrap_or(false);
    }

    if let Some(b) = &file.bindings
        && let Some(sec) = cx.typed::<BindingsSection>(b, "[bindings]")
        && let Some(n) = sec.max_expand
    {
        if n == 0 || n > 1 << 24 {
            cx.push(
                Some(&cx.key(&b.span(), "max_expand")),
                format!("[bindings] max_expand = {n}: use 1 to {}", 1 << 24),
            );
        } else {
            cfg.bind_limit = n;
        }
    }

    let mut names = BTreeSet::new();
    for (i, v) in file.interface.iter().enumerate() {
        let what = format!("[[interface]] #{}", i + 1);
        let Some(e) = cx.typed::<InterfaceEntry>(v, &what) else {
            continue;
        };
        let span = v.span();
        if !valid_ifname(&e.name) {
            cx.push(
                Some(&cx.key(&span, "name")),
                format!("{what}: {:?} is not an interface name", e.name),
            );
        }
        if !names.insert(e.name.clone()) {
            cx.push(
                Some(&span),
                format!("{what}: interface {} is listed twice", e.name),
            );
        }
        let mode = match e.mode.as_deref().map(mode_of).transpose() {
            Ok(m) => m.unwrap_or(XdpMode::Native),
            Err(m) => {
                cx.push(
                    Some(&cx.key(&span, "mode")),
                    format!("{what} ({}): {m}", e.name),
                );
                XdpMode::Native
            }
        };
        let policy = match e.policy.as_deref().map(str::parse::<Verdict>).transpose() {
            Ok(p) => p.unwrap_or(Verdict::Allow),
            Err(_) => {
                cx.push(
                    Some(&cx.key(&span, "policy")),
                    format!(
                        "{what} ({}): policy {:?} is not allow or deny",
                        e.name,
                        e.policy.as_deref().unwrap_or("")
                    ),
                );
                Verdict::Allow
            }
        };
        cfg.interfaces.push(Interface {
            name: e.name,
            mode,
            policy,
            drop_unbound: e.drop_unbound.unwrap_or(false),
            decap: e.decap.unwrap_or(false),
        });
    }
    if cfg.interfaces.len() >= xdpgate_common::MAX_IFACES as usize {
        cx.push(
            None,
            format!(
                "{} interfaces; at most {} are supported",
                cfg.interfaces.len(),
                xdpgate_common::MAX_IFACES - 1
            ),
        );
    }

    for (i, v) in file.bind.iter().enumerate() {
        let what = format!("[[bind]] #{}", i + 1);
        let Some(b) = cx.typed::<BindEntry>(v, &what) else {
            continue;
        };
        if !names.contains(&b.iface) {
            cx.push(
                Some(&cx.key(&v.span(), "iface")),
                format!(
                    "{what}: interface {} is not one of the [[interface]] entries",
                    b.iface
                ),
            );
        }
        let req = crate::bind::BindRequest {
            iface: b.iface.clone(),
            spec: b.spec.clone(),
            plen: b.plen,
            nodad: b.nodad,
        };
        // The interface was checked above; this checks the spec and limit.
        for e in crate::bind::validate(&[req], cfg.bind_limit, std::slice::from_ref(&b.iface)) {
            cx.push(
                Some(&key_in(text, &v.span(), "spec")),
                format!("{what}: {e}"),
            );
        }
        cfg.bindings.push(b);
    }

    if let Some(l) = &file.lb
        && let Some(sec) = cx.typed::<LbSection>(l, "[lb]")
    {
        let span = l.span();
        if let Some(n) = sec.max_services {
            if (1..=xdpgate_common::lb::MAX_SERVICES).contains(&n) {
                cfg.lb.max_services = n;
            } else {
                cx.push(
                    Some(&key_in(text, &span, "max_services")),
                    format!(
                        "[lb] max_services = {n}: use 1 to {}",
                        xdpgate_common::lb::MAX_SERVICES
                    ),
                );
            }
        }
        if let Some(n) = sec.table_size {
            if maglev::is_prime(n) && (257..=xdpgate_common::lb::DEFAULT_RING_SIZE).contains(&n) {
                cfg.lb.table_size = n;
            } else {
                cx.push(
                    Some(&key_in(text, &span, "table_size")),
                    format!(
                        "[lb] table_size = {n}: use a prime from 257 to {} (e.g. 4099, 16381, 65537)",
                        xdpgate_common::lb::DEFAULT_RING_SIZE
                    ),
                );
            }
        }
        if let Some(p) = sec.encap_source_v4 {
            match p.parse::<ipnetwork::Ipv4Network>() {
                Ok(n) if n.ip() == n.network() => cfg.lb.source_v4 = n,
                _ => cx.push(
                    Some(&key_in(text, &span, "encap_source_v4")),
                    format!("[lb] encap_source_v4 = {p:?} is not an IPv4 prefix without host bits"),
                ),
            }
        }
        if let Some(p) = sec.encap_source_v6 {
            match p.parse::<ipnetwork::Ipv6Network>() {
                Ok(n) if n.ip() == n.network() => cfg.lb.source_v6 = n,
                _ => cx.push(
                    Some(&key_in(text, &span, "encap_source_v6")),
                    format!("[lb] encap_source_v6 = {p:?} is not an IPv6 prefix without host bits"),
                ),
            }
        }
        if let Some(t) = sec.encap_ttl {
            if (1..=255).contains(&t) {
                cfg.lb.ttl = t;
            } else {
                cx.push(
                    Some(&key_in(text, &span, "encap_ttl")),
                    format!("[lb] encap_ttl = {t}: use 1 to 255"),
                );
            }
        }
    }

    let mut service_ids = BTreeSet::new();
    for (i, v) in file.service.iter().enumerate() {
        let what = format!("[[service]] #{}", i + 1);
        let Some(e) = cx.typed::<ServiceEntry>(v, &what) else {
            continue;
        };
        match e.to_spec() {
            Ok(spec) => {
                if !service_ids.insert(spec.id) {
                    cx.push(
                        Some(&key_in(text, &v.span(), "service")),
                        format!("{what}: service {} is defined twice", spec.id),
                    );
                }
            }
            Err(problems) => {
                for p in problems {
                    cx.push(
                        Some(&key_in(text, &v.span(), "service")),
                        format!("{what}: {p}"),
                    );
                }
            }
        }
        cfg.services.push(e);
    }
    if cfg.services.len() > cfg.lb.max_services as usize {
        cx.push(
            None,
            format!(
                "{} services, but [lb] max_services is {}",
                cfg.services.len(),
                cfg.lb.max_services
            ),
        );
    }

    // The ACL: sets, rules and the interfaces' policies, validated by the same
    // code that validates runtime changes; each error is placed at the item
    // it names.
    let mut set_spans: BTreeMap<String, Range<usize>> = BTreeMap::new();
    let mut prefix_spans: BTreeMap<String, Range<usize>> = BTreeMap::new();
    for (name, prefixes) in &file.sets {
        set_spans.insert(name.get_ref().clone(), name.span());
        let list: Vec<String> = prefixes
            .get_ref()
            .iter()
            .map(|p| {
                prefix_spans
                    .entry(p.get_ref().clone())
                    .or_insert_with(|| p.span());
                p.get_ref().clone()
            })
            .collect();
        cfg.acl.sets.insert(name.get_ref().clone(), list);
    }
    let mut rule_spans: BTreeMap<u32, Vec<Range<usize>>> = BTreeMap::new();
    for (i, v) in file.rule.iter().enumerate() {
        let id = v
            .get_ref()
            .get("id")
            .and_then(toml::Value::as_integer)
            .map(|x| format!(" (id {x})"))
            .unwrap_or_default();
        let Some(r) = cx.typed::<Rule>(v, &format!("[[rule]] #{}{id}", i + 1)) else {
            continue;
        };
        rule_spans.entry(r.id).or_default().push(v.span());
        if let Some(ifc) = &r.iface
            && !names.contains(ifc)
        {
            cx.push(
                Some(&cx.key(&v.span(), "iface")),
                format!(
                    "rule {}: iface {ifc} is not one of the [[interface]] entries",
                    r.id
                ),
            );
        }
        cfg.acl.rules.push(r);
    }
    for i in &cfg.interfaces {
        cfg.acl.policy.insert(i.name.clone(), i.policy);
    }
    let acl_errors = match AclState::from_file(&cfg.acl) {
        Ok(state) => compile(&state, &cfg.slots()).err().unwrap_or_default(),
        Err(errs) => errs,
    };
    for e in acl_errors {
        let span = match &e {
            AclError::UnknownSet { rule, .. } | AclError::BadRule { rule, .. } => {
                rule_spans.get(rule).and_then(|v| v.first())
            }
            AclError::DuplicateRule(id) => rule_spans.get(id).and_then(|v| v.get(1)),
            AclError::BadPrefix(p, _) => prefix_spans.get(p),
            AclError::BadSetName(n) | AclError::NoSuchSet(n) => set_spans.get(n),
            _ => None,
        };
        cx.push(span, e.to_string());
    }

    if cx.issues.is_empty() {
        Ok(cfg)
    } else {
        Err(invalid(cx.issues))
    }
}

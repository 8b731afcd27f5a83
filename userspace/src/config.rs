//! The daemon's declarative configuration (`xdpgate run --config FILE`,
//! `xdpgate check --config FILE`, SIGHUP and `xdpgate reload`).
//!
//! One TOML file describes the interfaces and their modes, default policies,
//! prefix sets, rules, address bindings and the listen addresses of the
//! metrics server; `deploy/xdpgate.toml` is the commented example. Parsing
//! validates everything that can be checked without the kernel and reports
//! every error it finds, each with its line and column.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

use crate::{
    acl::{AclError, AclState, Rule, RuleFile, Verdict, compile::compile},
    datapath::Malformed,
    netlink::XdpMode,
};

/// Default metrics listen addresses: loopback of both families.
pub const DEFAULT_METRICS_LISTEN: [&str; 2] = ["127.0.0.1:9464", "[::1]:9464"];
/// Default state file.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/xdpgate/state.json";
/// Default limit on the addresses one binding request may expand to.
pub const DEFAULT_BIND_LIMIT: usize = 65_536;
/// Default grace period of a shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Default `[daemon] datapath_events_sample`: one of every 1024 drops per CPU.
pub const DEFAULT_EVENTS_SAMPLE: u32 = 1024;

/// One problem in a configuration file, with its position when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// 1-based line and column.
    pub at: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

/// Why a configuration was not accepted. Nothing was changed.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file has errors; every one is listed.
    #[error("{}", render_issues(path, issues))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The errors.
        issues: Vec<Issue>,
    },
}

fn render_issues(path: &Path, issues: &[Issue]) -> String {
    let mut s = format!(
        "config file {} has {} error(s):",
        path.display(),
        issues.len()
    );
    for i in issues {
        match i.at {
            Some((line, col)) => s.push_str(&format!(
                "\n  {}:{line}:{col}: {}",
                path.display(),
                i.message
            )),
            None => s.push_str(&format!("\n  {}: {}", path.display(), i.message)),
        }
    }
    s
}

/// One interface the daemon attaches to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// XDP attach mode (no fallback).
    pub mode: XdpMode,
    /// Default policy: what happens when no rule matches.
    pub policy: Verdict,
    /// Drop unicast traffic to destinations not bound on this interface.
    pub drop_unbound: bool,
    /// Decapsulate IPIP/IP6IP6 (and the mixed forms) addressed to this
    /// interface's addresses (the backend role of the load balancer).
    pub decap: bool,
}

/// `[lb]`: load-balancer settings fixed at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbSettings {
    /// Service slots with ring storage (`max_services`, 1..=256).
    pub max_services: u32,
    /// Maglev ring size (`table_size`, a prime up to 65,537).
    pub table_size: u32,
    /// Outer IPv4 source prefix of encapsulated packets.
    pub source_v4: ipnetwork::Ipv4Network,
    /// Outer IPv6 source prefix (the last 32 bits vary per flow).
    pub source_v6: ipnetwork::Ipv6Network,
    /// Outer TTL / hop limit.
    pub ttl: u32,
}

impl Default for LbSettings {
    fn default() -> Self {
        use xdpgate_common::lb::*;
        LbSettings {
            max_services: DEFAULT_RING_SERVICES,
            table_size: DEFAULT_RING_SIZE,
            source_v4: ipnetwork::Ipv4Network::new(DEFAULT_SRC_V4.0.into(), DEFAULT_SRC_V4.1)
                .expect("valid default"),
            source_v6: ipnetwork::Ipv6Network::new(DEFAULT_SRC_V6.0.into(), DEFAULT_SRC_V6.1)
                .expect("valid default"),
            ttl: DEFAULT_OUTER_TTL,
        }
    }
}

impl LbSettings {
    /// The datapath's outer-source configuration.
    pub fn lb_config(&self) -> Result<xdpgate_common::lb::LbConfig, crate::lb::LbError> {
        crate::lb::lb_config(
            self.source_v4.ip(),
            self.source_v4.prefix(),
            self.source_v6.ip(),
            self.source_v6.prefix(),
            self.ttl,
        )
    }

    /// The ring sizing to load the datapath with.
    pub fn load_options(&self) -> crate::datapath::LoadOptions {
        crate::datapath::LoadOptions {
            ring_services: self.max_services,
            ring_size: self.table_size,
        }
    }
}

/// One address binding as configured (see `xdpgate bind add`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindEntry {
    /// Interface.
    pub iface: String,
    /// An address, a prefix (every address in it) or a range `A-B`.
    #[serde(alias = "addr")]
    pub spec: String,
    /// On-link prefix length of each address (default 32 or 128).
    #[serde(default)]
    pub plen: Option<u8>,
    /// IPv6: add without duplicate address detection.
    #[serde(default)]
    pub nodad: bool,
}

/// A parsed and validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// FNV-1a digest of the file's text: tells the state file whether the
    /// configuration changed since runtime changes were saved.
    pub digest: String,
    /// Interfaces, in slot order.
    pub interfaces: Vec<Interface>,
    /// Malformed-packet policy of every interface.
    pub malformed: Malformed,
    /// The ACL decision cache (on unless disabled).
    pub decision_cache: bool,
    /// Where runtime changes are saved.
    pub state_file: PathBuf,
    /// Grace period of a shutdown.
    pub shutdown_grace: Duration,
    /// Metrics listen addresses (empty: no metrics server).
    pub metrics_listen: Vec<SocketAddr>,
    /// Bind listeners to addresses not (yet) present on the host.
    pub metrics_freebind: bool,
    /// Bridge sampled datapath events into the daemon's log.
    pub datapath_events: bool,
    /// Report one of every this many drops per CPU (1..=1,000,000).
    pub datapath_events_sample: u32,
    /// Most datapath events logged per second (1..=10,000).
    pub datapath_events_per_second: u32,
    /// Limit on the addresses one binding request may expand to.
    pub bind_limit: usize,
    /// Address bindings.
    pub bindings: Vec<BindEntry>,
    /// Sets, rules and default policies.
    pub acl: RuleFile,
    /// `[lb]` settings.
    pub lb: LbSettings,
    /// Load-balanced services (`[[service]]`), validated.
    pub services: Vec<crate::lb::ServiceEntry>,
}

impl Config {
    /// Interface names in slot order.
    pub fn iface_names(&self) -> Vec<String> {
        self.interfaces.iter().map(|i| i.name.clone()).collect()
    }

    /// Interface name -> counter slot, as the daemon assigns them.
    pub fn slots(&self) -> BTreeMap<String, u32> {
        slots_of(&self.iface_names())
    }

    /// The validated ACL state this configuration describes.
    pub fn acl_state(&self) -> AclState {
        AclState::from_file(&self.acl).unwrap_or_default()
    }

    /// A configuration without a file: the interfaces and options given on the
    /// command line, everything else at its default.
    pub fn from_flags(ifaces: &[String], mode: XdpMode, malformed: Malformed) -> Config {
        Config {
            path: PathBuf::new(),
            digest: digest(""),
            interfaces: ifaces
                .iter()
                .map(|n| Interface {
                    name: n.clone(),
                    mode,
                    policy: Verdict::Allow,
                    drop_unbound: false,
                    decap: false,
                })
                .collect(),
            malformed,
            decision_cache: true,
            state_file: PathBuf::from(DEFAULT_STATE_FILE),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            metrics_listen: DEFAULT_METRICS_LISTEN
                .iter()
                .map(|a| a.parse().expect("valid default"))
                .collect(),
            metrics_freebind: false,
            datapath_events: false,
            datapath_events_sample: DEFAULT_EVENTS_SAMPLE,
            datapath_events_per_second: crate::events::DEFAULT_PER_SECOND,
            bind_limit: DEFAULT_BIND_LIMIT,
            bindings: Vec::new(),
            acl: RuleFile::default(),
            lb: LbSettings::default(),
            services: Vec::new(),
        }
    }
}

/// Interface name -> counter slot (1-based, in the order given).
pub fn slots_of(names: &[String]) -> BTreeMap<String, u32> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), i as u32 + 1))
        .collect()
}

/// FNV-1a 64 of `text`, in hex. Stable across releases (never std's hasher).
pub fn digest(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Reads and validates `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

// ---------------------------------------------------------------------------
// The file's shape. Items whose errors should each be reported with their own
// position are kept as spanned TOML values and converted one by one.
// ---------------------------------------------------------------------------

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
        let span = file.daemon.as_ref().map(|s| s.span()).unwrap_or_default();
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
        for e in
            crate::bind::Bindings::validate(&[req], cfg.bind_limit, std::slice::from_ref(&b.iface))
        {
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
            if crate::maglev::is_prime(n)
                && (257..=xdpgate_common::lb::DEFAULT_RING_SIZE).contains(&n)
            {
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
        let Some(e) = cx.typed::<crate::lb::ServiceEntry>(v, &what) else {
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
            .and_then(|x| x.as_integer())
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

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((l, c)) => write!(f, "{l}:{c}: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issues(text: &str) -> Vec<String> {
        match parse(text, Path::new("x.toml")) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid { issues, .. }) => {
                issues.iter().map(|i| i.to_string()).collect()
            }
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../../deploy/xdpgate.toml");
        let cfg = parse(text, Path::new("deploy/xdpgate.toml")).unwrap();
        assert_eq!(cfg.iface_names(), ["eth0"]);
        assert_eq!(cfg.metrics_listen.len(), 2);
        assert_eq!(cfg.bindings.len(), 2);
        assert_eq!(cfg.acl_state().rules.len(), 3);
        assert_eq!(cfg.services.len(), 2);
        assert_eq!(cfg.lb, LbSettings::default());
        let specs = crate::lb::specs_of(&cfg.services, cfg.lb.max_services).unwrap();
        assert_eq!(specs[0].backends[1].weight, 2);
        assert!(specs[0].health.is_some());
        assert_eq!(cfg.state_file, Path::new(DEFAULT_STATE_FILE));
        assert_eq!(cfg.digest, digest(text));
        assert_ne!(cfg.digest, digest(&format!("{text}\n")));
    }

    #[test]
    fn every_error_is_reported_with_its_line() {
        let text = r#"
[daemon]
malformed = "maybe"

[metrics]
listen = ["127.0.0.1", "[::1]:9464"]

[[interface]]
name = "veth0"
mode = "turbo"

[[interface]]
name = "veth0"

[sets]
good = ["10.200.0.0/16"]
bad = ["10.200.0.1/16"]

[[rule]]
id = 1
priority = 1
src = "@nosuch"
action = "deny"

[[rule]]
id = 2
priority = 2
dport = 70000
action = "deny"

[[rule]]
id = 3
priority = 3
iface = "eth9"
action = "allow"
"#;
        let got = issues(text);
        let want = [
            ("3:", "malformed"),
            ("6:", "127.0.0.1"),
            ("10:", "turbo"),
            ("12:", "listed twice"),
            ("17:", "10.200.0.1/16"),
            ("19:", "unknown set @nosuch"),
            ("25:", "70000 is not a port"),
            ("34:", "eth9"),
        ];
        for (line, what) in want {
            assert!(
                got.iter().any(|g| g.starts_with(line) && g.contains(what)),
                "no error at line {line} about {what:?} in {got:#?}"
            );
        }
    }

    #[test]
    fn syntax_and_unknown_keys_are_located() {
        let got = issues("[daemon]\nmalformed = \n");
        assert!(got[0].starts_with("2:"), "{got:?}");
        let got = issues("[deamon]\nmalformed = \"drop\"\n");
        assert!(
            got[0].starts_with("1:") && got[0].contains("deamon"),
            "{got:?}"
        );
        let got = issues("[[interface]]\nname = \"a\"\nmtu = 9000\n");
        assert!(
            got[0].starts_with("1:") && got[0].contains("mtu"),
            "{got:?}"
        );
    }

    #[test]
    fn datapath_event_settings_are_range_checked_and_located() {
        let cfg = parse(
            "[daemon]\ndatapath_events = true\ndatapath_events_sample = 1\ndatapath_events_per_second = 5\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert!(cfg.datapath_events);
        assert_eq!(cfg.datapath_events_sample, 1);
        assert_eq!(cfg.datapath_events_per_second, 5);
        let dflt = parse("", Path::new("x.toml")).unwrap();
        assert!(!dflt.datapath_events);
        assert_eq!(dflt.datapath_events_sample, DEFAULT_EVENTS_SAMPLE);
        assert_eq!(dflt.datapath_events_per_second, 20);
        let got =
            issues("[daemon]\ndatapath_events_sample = 0\ndatapath_events_per_second = 10001\n");
        assert!(
            got.iter()
                .any(|g| g.starts_with("2:") && g.contains("datapath_events_sample = 0")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|g| g.starts_with("3:") && g.contains("datapath_events_per_second = 10001")),
            "{got:?}"
        );
    }

    #[test]
    fn load_balancer_errors_are_located() {
        let text = r#"
[[interface]]
name = "eth0"

[lb]
table_size = 65536
encap_source_v4 = "10.0.0.1/16"

[[service]]
service = "192.0.2.10:80"
backends = ["10.0.0.1"]

[[service]]
service = "192.0.2.11:80/tcp"
backends = ["10.0.0.1", "10.0.0.1", "10.0.0.2 weight=5000"]
health = { type = "http", payload = "x" }

[[service]]
service = "192.0.2.12/udp"
backends = ["10.0.0.3"]
health = { type = "udp" }
"#;
        let got = issues(text);
        let want = [
            "6:1: [lb] table_size = 65536",
            "7:1: [lb] encap_source_v4",
            "10:1: [[service]] #1: service \"192.0.2.10:80\"",
            "14:1: [[service]] #2: 192.0.2.11:80/tcp: health payload",
            "19:1: [[service]] #3: 192.0.2.12:*/udp: a service on every port needs a health-check port",
        ];
        for w in want {
            assert!(
                got.iter().any(|g| g.starts_with(w)),
                "missing {w:?} in {got:#?}"
            );
        }
        // The duplicate backend and the weight: found once the health entry
        // is fixed (entry errors come first, then the whole service).
        let fixed = text.replace(r#"health = { type = "http", payload = "x" }"#, "");
        let got = issues(&fixed);
        assert!(got.iter().any(|g| g.contains("listed twice")), "{got:#?}");
        assert!(got.iter().any(|g| g.contains("weight 5000")), "{got:#?}");
    }

    #[test]
    fn digest_is_stable() {
        // FNV-1a 64 test vectors.
        assert_eq!(digest(""), "cbf29ce484222325");
        assert_eq!(digest("a"), "af63dc4c8601ec8c");
    }
}

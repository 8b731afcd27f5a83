//! The daemon's declarative configuration (`xdpgate run --config FILE`,
//! `xdpgate check --config FILE`, SIGHUP and `xdpgate reload`).
//!
//! One TOML file describes the interfaces and their modes, default policies,
//! prefix sets, rules, address bindings and the listen addresses of the
//! metrics server; `deploy/xdpgate.toml` is the commented example. Parsing
//! validates everything that can be checked without the kernel and reports
//! every error it finds, each with its line and column.
use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use thiserror::Error;

use crate::{
    acl::{AclState, RuleFile, Verdict, compile::Capacities},
    iface::{Malformed, XdpMode},
    lb::{LoadOptions, ParseError, ServiceEntry},
};

mod acl;
mod capacity;
#[cfg(test)]
mod capacity_tests;
mod ddos;
#[cfg(test)]
mod ddos_tests;
mod fields;
mod limit;
mod parse;
mod paths;
mod service;
#[cfg(test)]
mod tests;

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
/// Default `[daemon] datapath_events_per_second`: the most datapath events
/// logged per second (a line says how many the cap suppressed).
pub const DEFAULT_EVENTS_PER_SECOND: u32 = 20;

/// One problem in a configuration file, with its position when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// 1-based line and column (counted in characters).
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
    /// The flow hash (`flow_hash`): `None` keeps each installed service's
    /// (an upgrade in place moves no flow) and gives new services the fast
    /// one; a kind switches every service to it at start (a one-time remap).
    pub flow_hash: Option<xdpgate_common::lb::FlowHash>,
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
            flow_hash: None,
        }
    }
}

impl LbSettings {
    /// The datapath's outer-source configuration.
    pub fn lb_config(&self) -> Result<xdpgate_common::lb::LbConfig, ParseError> {
        crate::lb::lb_config(
            self.source_v4.ip(),
            self.source_v4.prefix(),
            self.source_v6.ip(),
            self.source_v6.prefix(),
            self.ttl,
        )
    }

    /// The ring sizing to load the datapath with.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            ring_services: self.max_services,
            ring_size: self.table_size,
        }
    }
}

/// `[ddos]`: settings of rate limits and the SYN-cookie path (see
/// `docs/design/ddos.md`). `limit_buckets` is fixed at start (a change needs
/// a restart); the others apply on reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DdosSettings {
    /// Entries of the per-prefix bucket table (`limit_buckets`,
    /// `MIN_BUCKETS..=MAX_BUCKETS` of `xdpgate_common::limit`).
    pub limit_buckets: u32,
    /// The reflector limit: SYN-ACKs per second to one source prefix
    /// (`synack_pps`).
    pub synack_pps: u64,
    /// Its burst (`synack_burst`).
    pub synack_burst: u64,
    /// The IPv4 prefix length SYN-ACK destinations are aggregated to
    /// (`synack_v4_prefix`, default 24).
    pub synack_v4_prefix: u8,
    /// The IPv6 prefix length (`synack_v6_prefix`, default 48).
    pub synack_v6_prefix: u8,
    /// How often a SYN per destination address and port goes to the kernel
    /// so that its listener keeps accepting cookies (`syncookie_refresh_secs`,
    /// 1..=60).
    pub syncookie_refresh: Duration,
}

impl Default for DdosSettings {
    fn default() -> Self {
        DdosSettings {
            limit_buckets: xdpgate_common::limit::DEFAULT_BUCKETS,
            synack_pps: 500,
            synack_burst: 100,
            synack_v4_prefix: 24,
            synack_v6_prefix: 48,
            syncookie_refresh: Duration::from_secs(30),
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
    pub services: Vec<ServiceEntry>,
    /// `[ddos]` settings.
    pub ddos: DdosSettings,
    /// `[acl]`: the capacities of the ACL tables (fixed at start).
    pub capacities: Capacities,
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
            datapath_events_per_second: DEFAULT_EVENTS_PER_SECOND,
            bind_limit: DEFAULT_BIND_LIMIT,
            bindings: Vec::new(),
            acl: RuleFile::default(),
            lb: LbSettings::default(),
            services: Vec::new(),
            ddos: DdosSettings::default(),
            capacities: Capacities::default(),
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

/// Reads and validates `path`. A file that is not UTF-8 is an error at the
/// first byte that is not.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    match std::str::from_utf8(&bytes) {
        Ok(text) => parse(text, path),
        Err(e) => Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            issues: vec![not_utf8(&bytes, e)],
        }),
    }
}

/// The error of a file that is not UTF-8, at its first invalid byte.
fn not_utf8(bytes: &[u8], e: std::str::Utf8Error) -> Issue {
    let good = e.valid_up_to();
    // The bytes before are valid UTF-8 by definition.
    let text = std::str::from_utf8(&bytes[..good]).unwrap_or_default();
    Issue {
        at: Some(fields::position(text, good)),
        message: format!(
            "byte 0x{:02x} (offset {good}) is not UTF-8: the configuration must be UTF-8 text (convert it, e.g. with iconv -t UTF-8)",
            bytes[good]
        ),
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

pub use parse::parse;

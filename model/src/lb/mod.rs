//! The load balancer's model: services (VIP, protocol, port), their
//! backends and health checks as configured, their validation, the datapath
//! keys and flow hash they map to, and the Maglev ring ([`maglev`]).
//!
//! A service is a VIP (either family), a protocol and a port (or every port).
//! Its backends are addresses of either family with weights. [`entry`] is the
//! written form (configuration file, state file, API requests) and converts
//! to a validated [`ServiceSpec`]. The controller that installs services in
//! the datapath is `xdpgate::lb`.
use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    str::FromStr,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use xdpgate_common::lb::{
    DEFAULT_OUTER_TTL, DEFAULT_RING_SERVICES, DEFAULT_RING_SIZE, DEFAULT_SRC_V4, DEFAULT_SRC_V6,
    FAMILY_V4, FAMILY_V6, FlowHash, LbConfig, MAX_BACKENDS, MAX_SERVICES, ServiceKey, addr_words,
};

pub mod entry;
pub mod health;
pub mod maglev;
#[cfg(test)]
mod tests;

pub use entry::{HealthEntry, ServiceEntry, parse_backends, specs_of};
use health::{CheckSpec, TargetKey};

/// Largest backend weight.
pub const MAX_WEIGHT: u32 = maglev::MAX_WEIGHT;

/// Most backends of one service.
pub const MAX_SERVICE_BACKENDS: usize = 4096;

/// Why a service, a backend or a load-balancer setting does not parse.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    /// Not tcp, udp or sctp.
    #[error("unknown protocol {0:?} (tcp, udp or sctp)")]
    Proto(String),
    /// A service name that is not `VIP:PORT/PROTO` or `VIP/PROTO`.
    #[error(
        "service {input:?}: {why} (expected VIP:PORT/PROTO, e.g. 192.0.2.10:80/tcp, \
         [2001:db8::10]:443/tcp, or VIP/PROTO for every port)"
    )]
    Service {
        /// What was given.
        input: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Not encap or l2dsr.
    #[error("unknown forwarding method {0:?} (encap or l2dsr)")]
    Forward(String),
    /// `weight=N` before any backend address.
    #[error("{0:?} must follow a backend address")]
    OrphanWeight(String),
    /// A weight that is not a number.
    #[error("backend {addr}: weight {text:?} is not a number in 0..={MAX_WEIGHT}")]
    Weight {
        /// The backend it follows.
        addr: IpAddr,
        /// What was given.
        text: String,
    },
    /// A backend that is not an address.
    #[error("backend {0:?} is not an IP address (expected ADDR [weight=N])")]
    Backend(String),
    /// An outer-source prefix length beyond its family's.
    #[error("outer source prefix lengths /{v4} and /{v6} out of range")]
    SourceLength {
        /// The IPv4 prefix length.
        v4: u8,
        /// The IPv6 prefix length.
        v6: u8,
    },
    /// An outer TTL outside 1..=255.
    #[error("outer TTL {0} is not in 1..=255")]
    Ttl(u32),
    /// An outer IPv4 source prefix with host bits set.
    #[error("outer source prefix {addr}/{len} has host bits set")]
    SourceHostBits {
        /// The address.
        addr: Ipv4Addr,
        /// The prefix length.
        len: u8,
    },
}

/// A backend's state as the controller reports it (`lb list`, metrics).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// Its address.
    pub addr: IpAddr,
    /// Its weight.
    pub weight: u32,
    /// Whether health checks consider it up (always true without checks).
    pub healthy: bool,
    /// Ring entries it holds (0 when down or drained).
    pub ring_entries: u32,
    /// Packets forwarded to it.
    pub packets: u64,
    /// Bytes forwarded to it.
    pub bytes: u64,
}

/// A service's state as the controller reports it (`lb list`, metrics):
/// its spec, its ring and the datapath's counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// `VIP:PORT/PROTO`.
    pub service: ServiceId,
    /// Forwarding method.
    pub forward: Forward,
    /// Whether its backends are health-checked.
    pub health_checked: bool,
    /// Ring size.
    pub ring_size: u32,
    /// Packets forwarded (XDP_TX or redirect).
    pub forwarded_packets: u64,
    /// Packets handed to the stack to forward (next hop unresolved).
    pub slow_path_packets: u64,
    /// Packets dropped (no backend, no route, too big).
    pub dropped_packets: u64,
    /// Its backends.
    pub backends: Vec<BackendStatus>,
}

/// Sizes of the datapath's ring storage, fixed when the XDP object is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Service slots that have ring storage (at most `MAX_SERVICES`).
    pub ring_services: u32,
    /// Maglev ring size (a prime).
    pub ring_size: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            ring_services: DEFAULT_RING_SERVICES,
            ring_size: DEFAULT_RING_SIZE,
        }
    }
}

impl LoadOptions {
    /// Whether the datapath can be loaded with these sizes: 1..=`MAX_SERVICES`
    /// services, a prime ring size, and both ring halves of every service
    /// addressable in the ring array.
    pub fn is_valid(&self) -> bool {
        self.ring_services != 0
            && self.ring_services <= MAX_SERVICES
            && maglev::is_prime(self.ring_size)
            && u64::from(self.ring_services) * 2 * u64::from(self.ring_size)
                <= u64::from(u32::MAX) / 4
    }
}

/// Transport protocol of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
}

impl Proto {
    /// The protocol of IP protocol number `n`, if it is one of these.
    pub const fn from_number(n: u8) -> Option<Proto> {
        match n {
            xdpgate_common::wire::IPPROTO_TCP => Some(Proto::Tcp),
            xdpgate_common::wire::IPPROTO_UDP => Some(Proto::Udp),
            xdpgate_common::wire::IPPROTO_SCTP => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => xdpgate_common::wire::IPPROTO_TCP,
            Proto::Udp => xdpgate_common::wire::IPPROTO_UDP,
            Proto::Sctp => xdpgate_common::wire::IPPROTO_SCTP,
        }
    }

    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

impl FromStr for Proto {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "sctp" => Ok(Proto::Sctp),
            _ => Err(ParseError::Proto(s.to_owned())),
        }
    }
}

/// A service's identity: VIP, protocol and port (0: every port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId {
    /// The virtual IP.
    pub vip: IpAddr,
    /// Destination port; 0 means every port.
    pub port: u16,
    /// Transport protocol.
    pub proto: Proto,
}

impl fmt::Display for ServiceId {
    /// `192.0.2.10:80/tcp`, `[2001:db8::10]:443/tcp`, `192.0.2.10:*/udp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.vip {
            IpAddr::V4(a) => write!(f, "{a}")?,
            IpAddr::V6(a) => write!(f, "[{a}]")?,
        }
        if self.port == 0 {
            write!(f, ":*/{}", self.proto.name())
        } else {
            write!(f, ":{}/{}", self.port, self.proto.name())
        }
    }
}

impl FromStr for ServiceId {
    type Err = ParseError;
    /// Accepts `VIP:PORT/PROTO` (IPv6 VIPs in brackets), `VIP:*/PROTO` and
    /// `VIP/PROTO` (every port).
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = |why: &'static str| ParseError::Service {
            input: s.to_owned(),
            why,
        };
        let (addr_port, proto) = s.rsplit_once('/').ok_or_else(|| bad("no /PROTO"))?;
        let proto: Proto = proto.parse().map_err(|_| bad("unknown protocol"))?;
        let (vip, port) = if let Some(rest) = addr_port.strip_prefix('[') {
            let (addr, after) = rest.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = match after {
                "" | ":*" => 0,
                p => p
                    .strip_prefix(':')
                    .ok_or_else(|| bad("junk after ']'"))?
                    .parse::<u16>()
                    .map_err(|_| bad("bad port"))?,
            };
            (
                addr.parse::<IpAddr>().map_err(|_| bad("bad address"))?,
                port,
            )
        } else if let Ok(addr) = addr_port.parse::<IpAddr>() {
            (addr, 0)
        } else {
            let (addr, port) = addr_port
                .rsplit_once(':')
                .ok_or_else(|| bad("bad address"))?;
            let addr: IpAddr = addr.parse().map_err(|_| bad("bad address"))?;
            if addr.is_ipv6() {
                return Err(bad("an IPv6 VIP with a port needs brackets"));
            }
            let port = if port == "*" {
                0
            } else {
                port.parse::<u16>().map_err(|_| bad("bad port"))?
            };
            (addr, port)
        };
        if port == 0 && addr_port.ends_with(":0") {
            return Err(bad("port 0: write VIP/PROTO or VIP:*/PROTO for every port"));
        }
        let vip = canonical(vip);
        if vip.is_unspecified() || vip.is_multicast() {
            return Err(bad("the VIP must be a unicast address"));
        }
        Ok(ServiceId { vip, port, proto })
    }
}

impl Serialize for ServiceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ServiceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// IPv4-mapped IPv6 addresses become IPv4.
pub(crate) fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// How packets reach a service's backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forward {
    /// Encapsulation in an outer header of the backend's family (IPIP,
    /// IP6IP6, IPv4-in-IPv6, IPv6-in-IPv4); the backend decapsulates
    /// (`xdpgate run --decap`) and answers the client directly.
    #[default]
    Encap,
    /// L2 direct server return: only the Ethernet addresses change; the
    /// backend must be on-link and own the VIP.
    L2dsr,
}

impl Forward {
    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Forward::Encap => "encap",
            Forward::L2dsr => "l2dsr",
        }
    }
}

impl FromStr for Forward {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "encap" => Ok(Forward::Encap),
            "l2dsr" => Ok(Forward::L2dsr),
            _ => Err(ParseError::Forward(s.to_owned())),
        }
    }
}

/// One backend of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BackendSpec {
    /// Its address (either family).
    pub addr: IpAddr,
    /// Its weight, 0..=[`MAX_WEIGHT`]; 0 keeps it configured but out of the
    /// ring (drained).
    pub weight: u32,
}

/// Health checking of a service's backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// Probe, interval, timeout, rise, fall.
    pub check: CheckSpec,
    /// Port probed on each backend; `None`: the service's port.
    pub port: Option<u16>,
}

/// A service as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// VIP, protocol, port.
    pub id: ServiceId,
    /// Forwarding method.
    pub forward: Forward,
    /// Backends in the order given.
    pub backends: Vec<BackendSpec>,
    /// Health checks, if any.
    pub health: Option<HealthConfig>,
}

impl ServiceSpec {
    /// The health-check targets of this service: one per backend.
    pub fn health_targets(&self) -> Vec<(TargetKey, SocketAddr, CheckSpec)> {
        let Some(h) = &self.health else {
            return Vec::new();
        };
        let port = h.port.unwrap_or(self.id.port);
        self.backends
            .iter()
            .map(|b| {
                (
                    TargetKey {
                        service: self.id.to_string(),
                        backend: b.addr,
                    },
                    SocketAddr::new(b.addr, port),
                    h.check.clone(),
                )
            })
            .collect()
    }
}

/// The default outer-source configuration: [`DEFAULT_SRC_V4`],
/// [`DEFAULT_SRC_V6`], TTL [`DEFAULT_OUTER_TTL`].
pub fn default_lb_config() -> LbConfig {
    lb_config(
        DEFAULT_SRC_V4.0.into(),
        DEFAULT_SRC_V4.1,
        DEFAULT_SRC_V6.0.into(),
        DEFAULT_SRC_V6.1,
        DEFAULT_OUTER_TTL,
    )
    .expect("the defaults are valid")
}

/// Builds the datapath's outer-source configuration from an IPv4 prefix, an
/// IPv6 prefix (only its last 32 bits can vary: prefixes shorter than /96
/// vary the last 32 bits) and a TTL.
pub fn lb_config(
    v4: Ipv4Addr,
    v4_len: u8,
    v6: std::net::Ipv6Addr,
    v6_len: u8,
    ttl: u32,
) -> Result<LbConfig, ParseError> {
    if v4_len > 32 || v6_len > 128 {
        return Err(ParseError::SourceLength {
            v4: v4_len,
            v6: v6_len,
        });
    }
    if !(1..=255).contains(&ttl) {
        return Err(ParseError::Ttl(ttl));
    }
    let mask_v4 = if v4_len == 0 {
        u32::MAX
    } else {
        u32::MAX >> v4_len
    };
    let mask_v6 = if v6_len <= 96 {
        u32::MAX
    } else {
        u32::MAX >> (v6_len - 96)
    };
    let v4b = u32::from(v4);
    if v4b & mask_v4 != 0 {
        return Err(ParseError::SourceHostBits {
            addr: v4,
            len: v4_len,
        });
    }
    let mut src_v6 = v6.octets();
    // Host bits of the varying last word must be zero; higher host bits
    // (prefixes shorter than /96) are kept as written.
    let last = u32::from_be_bytes([src_v6[12], src_v6[13], src_v6[14], src_v6[15]]) & !mask_v6;
    src_v6[12..16].copy_from_slice(&last.to_be_bytes());
    Ok(LbConfig {
        src_v4: v4.octets(),
        mask_v4,
        src_v6,
        mask_v6,
        ttl,
    })
}

/// An address as the datapath stores it: 16 bytes, IPv4 zero-padded.
pub fn addr_key(a: IpAddr) -> ([u8; 16], u8) {
    match a {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            (b, FAMILY_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

/// The address [`addr_key`] made `(addr, family)` from; `None` for an unknown family.
pub fn addr_of(addr: [u8; 16], family: u8) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::from([addr[0], addr[1], addr[2], addr[3]])),
        FAMILY_V6 => Some(IpAddr::from(addr)),
        _ => None,
    }
}

/// The service whose datapath key is `key` ([`service_key`] inverted);
/// `None` for a key no service makes.
pub fn service_id(key: &ServiceKey) -> Option<ServiceId> {
    Some(ServiceId {
        vip: addr_of(key.addr, key.family)?,
        port: u16::from_be(key.port),
        proto: Proto::from_number(key.proto)?,
    })
}

/// The datapath key of a service.
pub fn service_key(id: &ServiceId) -> ServiceKey {
    let (addr, family) = addr_key(id.vip);
    ServiceKey {
        addr,
        port: id.port.to_be(),
        proto: id.proto.number(),
        family,
    }
}

/// The flow hash the datapath computes for a packet from `src:sport` to
/// `dst:dport` of protocol `proto` to a service installed now
/// ([`FlowHash::default`], the fast hash; [`packet_hash_of`] for a given
/// kind).
pub fn packet_hash(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: Proto) -> u32 {
    packet_hash_of(FlowHash::default(), src, sport, dst, dport, proto)
}

/// The flow hash of kind `kind` the datapath computes for a packet from
/// `src:sport` to `dst:dport` of protocol `proto`: the words as the datapath
/// loads them, of the VIP's family.
pub fn packet_hash_of(
    kind: FlowHash,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    proto: Proto,
) -> u32 {
    let (s, _) = addr_key(canonical(src));
    let (d, family) = addr_key(canonical(dst));
    kind.hash(
        family == FAMILY_V4,
        &addr_words(&s),
        &addr_words(&d),
        sport,
        dport,
        proto.number(),
    )
}

/// Validates a service's backends and forwarding; every problem as text.
fn check_spec(spec: &ServiceSpec, problems: &mut Vec<String>) {
    let id = spec.id;
    if spec.backends.len() > MAX_SERVICE_BACKENDS {
        problems.push(format!(
            "{id}: {} backends, at most {MAX_SERVICE_BACKENDS}",
            spec.backends.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for b in &spec.backends {
        let a = canonical(b.addr);
        if !seen.insert(a) {
            problems.push(format!("{id}: backend {a} is listed twice"));
        }
        if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
            problems.push(format!(
                "{id}: backend {a} must be a unicast, non-loopback address"
            ));
        }
        if b.weight > MAX_WEIGHT {
            problems.push(format!(
                "{id}: backend {a} weight {} is above {MAX_WEIGHT}",
                b.weight
            ));
        }
        if a == id.vip {
            problems.push(format!("{id}: backend {a} is the VIP itself"));
        }
    }
    if let Some(h) = &spec.health {
        if let Err(e) = h.check.validate() {
            problems.push(format!("{id}: {e}"));
        }
        if h.port.unwrap_or(id.port) == 0 {
            problems.push(format!(
                "{id}: a service on every port needs a health-check port"
            ));
        }
    }
}

/// Validates a whole set of services against the datapath's capacity.
pub fn validate(specs: &[ServiceSpec], ring_services: u32) -> Vec<String> {
    let mut problems = Vec::new();
    let mut ids = BTreeSet::new();
    let mut backends = 0usize;
    for s in specs {
        if !ids.insert(s.id) {
            problems.push(format!("service {} is defined twice", s.id));
        }
        check_spec(s, &mut problems);
        backends += s.backends.len();
    }
    if specs.len() > ring_services as usize {
        problems.push(format!(
            "{} services, but the datapath has ring storage for {ring_services} \
             (raise [lb] max_services and restart)",
            specs.len()
        ));
    }
    if backends >= MAX_BACKENDS as usize {
        problems.push(format!(
            "{backends} backends in all, at most {}",
            MAX_BACKENDS - 1
        ));
    }
    problems
}

/// Canonical addresses (IPv4-mapped IPv6 becomes IPv4).
pub fn normalise(s: &ServiceSpec) -> ServiceSpec {
    let mut s = s.clone();
    s.id.vip = canonical(s.id.vip);
    for b in &mut s.backends {
        b.addr = canonical(b.addr);
    }
    s
}

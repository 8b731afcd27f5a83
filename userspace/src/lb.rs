//! The load balancer's control plane: services, their backends, their Maglev
//! rings in the datapath, and the health of each backend.
//!
//! A service is a VIP (either family), a protocol and a port (or every port).
//! Its backends are addresses of either family with weights. The ring of a
//! service is built by [`maglev::build`] over its backends that are healthy
//! and have a weight above zero; it is written into the idle half of the
//! service's ring storage and then the service's map entry is replaced, so
//! packets see the old ring or the new one, never a mix.
//!
//! Changes ([`LbController::apply`]) are validated as a whole first; then
//! every service is switched one by one. If a map operation fails midway the
//! services already switched are switched back, so the datapath ends in the
//! old state.
use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use xdpgate_common::{
    Counter, IFACE_LB,
    lb::{
        Backend, DEFAULT_OUTER_TTL, DEFAULT_SRC_V4, DEFAULT_SRC_V6, FAMILY_V4, FAMILY_V6, LbConfig,
        MAX_BACKENDS, SERVICE_ENCAP, SERVICE_L2DSR, ServiceInfo, ServiceKey, ServiceStat,
        addr_words, flow_hash, ring_base,
    },
};

use crate::{
    datapath::{Datapath, DatapathError},
    health::{CheckSpec, TargetKey},
    maglev::{self, Member},
};

/// Largest backend weight.
pub const MAX_WEIGHT: u32 = maglev::MAX_WEIGHT;

/// Most backends of one service.
pub const MAX_SERVICE_BACKENDS: usize = 4096;

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
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
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
    type Err = LbError;
    fn from_str(s: &str) -> Result<Self, LbError> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "sctp" => Ok(Proto::Sctp),
            _ => Err(LbError::Parse(format!(
                "unknown protocol {s:?} (tcp, udp or sctp)"
            ))),
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
    type Err = LbError;
    /// Accepts `VIP:PORT/PROTO` (IPv6 VIPs in brackets), `VIP:*/PROTO` and
    /// `VIP/PROTO` (every port).
    fn from_str(s: &str) -> Result<Self, LbError> {
        let bad = |why: &str| {
            LbError::Parse(format!(
                "service {s:?}: {why} (expected VIP:PORT/PROTO, e.g. 192.0.2.10:80/tcp, \
                 [2001:db8::10]:443/tcp, or VIP/PROTO for every port)"
            ))
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
fn canonical(a: IpAddr) -> IpAddr {
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
    type Err = LbError;
    fn from_str(s: &str) -> Result<Self, LbError> {
        match s {
            "encap" => Ok(Forward::Encap),
            "l2dsr" => Ok(Forward::L2dsr),
            _ => Err(LbError::Parse(format!(
                "unknown forwarding method {s:?} (encap or l2dsr)"
            ))),
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

/// Errors of the load balancer's control plane.
#[derive(Debug, Error)]
pub enum LbError {
    /// A service, backend or option could not be parsed.
    #[error("{0}")]
    Parse(String),
    /// The services are invalid as a whole; every problem is listed.
    #[error("invalid load-balancer configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
    /// The service named does not exist.
    #[error("no service {0}")]
    NoService(String),
    /// The datapath refused an update; the previous state was restored.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

/// A backend's state as `lb list` shows it.
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

/// A service's state as `lb list` shows it.
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

/// What the controller keeps per installed service.
#[derive(Debug, Clone)]
struct Installed {
    spec: ServiceSpec,
    slot: u32,
    /// Live ring half (0 or 1).
    half: u32,
    /// Backend slot per address.
    backends: BTreeMap<IpAddr, u32>,
    /// Backends health checks consider down.
    down: BTreeSet<IpAddr>,
    /// The ring last written (backend slots).
    ring: Vec<u32>,
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
    v4: std::net::Ipv4Addr,
    v4_len: u8,
    v6: std::net::Ipv6Addr,
    v6_len: u8,
    ttl: u32,
) -> Result<LbConfig, LbError> {
    if v4_len > 32 || v6_len > 128 {
        return Err(LbError::Parse(format!(
            "outer source prefix lengths /{v4_len} and /{v6_len} out of range"
        )));
    }
    if !(1..=255).contains(&ttl) {
        return Err(LbError::Parse(format!("outer TTL {ttl} is not in 1..=255")));
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
        return Err(LbError::Parse(format!(
            "outer source prefix {v4}/{v4_len} has host bits set"
        )));
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
/// `dst:dport` of protocol `proto` ([`flow_hash`]).
pub fn packet_hash(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: Proto) -> u32 {
    let (s, _) = addr_key(canonical(src));
    let (d, _) = addr_key(canonical(dst));
    flow_hash(
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

/// Owns the services installed in the datapath.
#[derive(Debug)]
pub struct LbController {
    services: BTreeMap<ServiceId, Installed>,
    free_services: BTreeSet<u32>,
    free_backends: VecDeque<u32>,
    next_backend: u32,
    ifindexes: Vec<u32>,
}

impl LbController {
    /// A controller with no services, for a datapath registered on
    /// `ifindexes` (they get `IFACE_LB` while any service exists).
    pub fn new(dp: &Datapath, ifindexes: Vec<u32>) -> Self {
        LbController {
            services: BTreeMap::new(),
            free_services: (0..dp.ring_sizes().ring_services).collect(),
            free_backends: VecDeque::new(),
            next_backend: 1,
            ifindexes,
        }
    }

    /// The services as configured, in order.
    pub fn specs(&self) -> Vec<ServiceSpec> {
        self.services.values().map(|i| i.spec.clone()).collect()
    }

    /// The spec of one service.
    pub fn spec(&self, id: &ServiceId) -> Option<&ServiceSpec> {
        self.services.get(id).map(|i| &i.spec)
    }

    /// Every health-check target of every service.
    pub fn health_targets(&self) -> Vec<(TargetKey, SocketAddr, CheckSpec)> {
        self.services
            .values()
            .flat_map(|i| i.spec.health_targets())
            .collect()
    }

    fn alloc_backend(&mut self) -> Option<u32> {
        if let Some(s) = self.free_backends.pop_front() {
            return Some(s);
        }
        if self.next_backend < MAX_BACKENDS {
            self.next_backend += 1;
            Some(self.next_backend - 1)
        } else {
            None
        }
    }

    /// Replaces the installed services with `specs`, all or nothing.
    pub fn apply(&mut self, dp: &mut Datapath, specs: &[ServiceSpec]) -> Result<(), LbError> {
        let specs: Vec<ServiceSpec> = specs.iter().map(normalise).collect();
        let problems = validate(&specs, dp.ring_sizes().ring_services);
        if !problems.is_empty() {
            return Err(LbError::Invalid(problems));
        }
        let old = self.specs();
        match self.apply_inner(dp, &specs) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Put the previous services back; their rings are rebuilt
                // from the same members, so they are the same rings.
                if let Err(again) = self.apply_inner(dp, &old) {
                    log::error!(
                        "load balancer: restoring the previous services failed too: {again}"
                    );
                }
                Err(e)
            }
        }
    }

    fn apply_inner(&mut self, dp: &mut Datapath, specs: &[ServiceSpec]) -> Result<(), LbError> {
        let want: BTreeMap<ServiceId, &ServiceSpec> = specs.iter().map(|s| (s.id, s)).collect();
        // Removed services: entry first, then (after every program that may
        // still read them finished) their slots are free.
        let removed: Vec<ServiceId> = self
            .services
            .keys()
            .filter(|id| !want.contains_key(id))
            .copied()
            .collect();
        for id in &removed {
            dp.remove_service(&service_key(id))?;
        }
        if !removed.is_empty() {
            dp.rcu_wait()?;
        }
        for id in removed {
            if let Some(inst) = self.services.remove(&id) {
                self.free_services.insert(inst.slot);
                self.free_backends.extend(inst.backends.values());
            }
        }
        for spec in specs {
            let unchanged = self.services.get(&spec.id).is_some_and(|i| i.spec == *spec);
            if !unchanged {
                self.install(dp, spec)?;
            }
        }
        let on = !self.services.is_empty();
        for ifindex in self.ifindexes.clone() {
            dp.set_iface_flag(ifindex, IFACE_LB, on)?;
        }
        Ok(())
    }

    /// Installs or updates one service: backends, ring, entry.
    fn install(&mut self, dp: &mut Datapath, spec: &ServiceSpec) -> Result<(), LbError> {
        let (mut inst, new) = match self.services.get(&spec.id) {
            Some(i) => (i.clone(), false),
            None => {
                let slot = *self
                    .free_services
                    .iter()
                    .next()
                    .ok_or_else(|| LbError::Invalid(vec!["no free service slot".into()]))?;
                (
                    Installed {
                        spec: spec.clone(),
                        slot,
                        half: 1,
                        backends: BTreeMap::new(),
                        down: BTreeSet::new(),
                        ring: Vec::new(),
                    },
                    true,
                )
            }
        };
        if new {
            dp.reset_service_counters(inst.slot)?;
        }
        // Backend slots: keep those of kept addresses, allocate new ones.
        let keep: BTreeSet<IpAddr> = spec.backends.iter().map(|b| b.addr).collect();
        let mut freed = Vec::new();
        inst.backends.retain(|a, s| {
            if keep.contains(a) {
                true
            } else {
                freed.push(*s);
                false
            }
        });
        inst.down.retain(|a| keep.contains(a));
        let mut fresh = Vec::new();
        for b in &spec.backends {
            if let std::collections::btree_map::Entry::Vacant(e) = inst.backends.entry(b.addr) {
                let slot = self.alloc_backend().ok_or_else(|| {
                    LbError::Invalid(vec![format!("no free backend slot for {}", b.addr)])
                })?;
                let (addr, family) = addr_key(b.addr);
                dp.set_backend(
                    slot,
                    &Backend {
                        addr,
                        family: family as u32,
                        flags: 0,
                    },
                )?;
                dp.reset_backend_counter(slot)?;
                e.insert(slot);
                fresh.push(slot);
            }
        }
        inst.spec = spec.clone();
        let result = self.switch_ring(dp, &mut inst);
        if let Err(e) = result {
            self.free_backends.extend(fresh);
            return Err(e);
        }
        if new {
            self.free_services.remove(&inst.slot);
        }
        self.services.insert(spec.id, inst);
        if !freed.is_empty() {
            dp.rcu_wait()?;
            self.free_backends.extend(freed);
        }
        Ok(())
    }

    /// Builds the ring of `inst` from its healthy, weighted backends, writes
    /// it into the idle half and switches the service entry to it.
    fn switch_ring(&self, dp: &mut Datapath, inst: &mut Installed) -> Result<(), LbError> {
        let size = dp.ring_sizes().ring_size;
        let members: Vec<Member> = inst
            .spec
            .backends
            .iter()
            .filter(|b| b.weight > 0 && !inst.down.contains(&b.addr))
            .map(|b| Member {
                slot: inst.backends[&b.addr],
                addr: b.addr,
                weight: b.weight,
            })
            .collect();
        let ring = maglev::build(&members, size)
            .map_err(|e| LbError::Invalid(vec![format!("{}: {e}", inst.spec.id)]))?;
        let idle = 1 - inst.half;
        let base = ring_base(inst.slot, idle, size);
        dp.write_ring(base, &ring)?;
        let info = ServiceInfo {
            slot: inst.slot,
            flags: match inst.spec.forward {
                Forward::Encap => SERVICE_ENCAP,
                Forward::L2dsr => SERVICE_L2DSR,
            },
            ring_base: base,
            ring_size: if members.is_empty() { 0 } else { size },
        };
        dp.set_service(&service_key(&inst.spec.id), &info)?;
        inst.half = idle;
        inst.ring = ring;
        Ok(())
    }

    /// Marks backend `addr` of service `id` healthy or not and rebuilds the
    /// service's ring when that changes. Returns whether it changed.
    pub fn set_health(
        &mut self,
        dp: &mut Datapath,
        id: &ServiceId,
        addr: IpAddr,
        up: bool,
    ) -> Result<bool, LbError> {
        let Some(inst) = self.services.get(id) else {
            return Ok(false);
        };
        if !inst.backends.contains_key(&addr) || inst.down.contains(&addr) != up {
            return Ok(false);
        }
        let mut next = inst.clone();
        if up {
            next.down.remove(&addr);
        } else {
            next.down.insert(addr);
        }
        self.switch_ring(dp, &mut next)?;
        self.services.insert(*id, next);
        Ok(true)
    }

    /// The backend the datapath picks for a flow, from the ring last written
    /// (`None`: no service or no backend).
    pub fn predict(&self, id: &ServiceId, src: IpAddr, sport: u16, dport: u16) -> Option<IpAddr> {
        let inst = self.services.get(id)?;
        if inst.ring.is_empty() {
            return None;
        }
        let h = packet_hash(src, sport, id.vip, dport, id.proto);
        let slot = maglev::lookup(&inst.ring, h);
        inst.backends
            .iter()
            .find(|(_, s)| **s == slot)
            .map(|(a, _)| *a)
    }

    /// Every service's state, with the datapath's counters.
    pub fn status(&self, dp: &Datapath) -> Result<Vec<ServiceStatus>, LbError> {
        let mut out = Vec::new();
        for inst in self.services.values() {
            let c = |what| dp.service_counter(inst.slot, what);
            let mut backends = Vec::new();
            for b in &inst.spec.backends {
                let slot = inst.backends[&b.addr];
                let Counter { packets, bytes } = dp.backend_counter(slot)?;
                backends.push(BackendStatus {
                    addr: b.addr,
                    weight: b.weight,
                    healthy: !inst.down.contains(&b.addr),
                    ring_entries: inst.ring.iter().filter(|s| **s == slot).count() as u32,
                    packets,
                    bytes,
                });
            }
            out.push(ServiceStatus {
                service: inst.spec.id,
                forward: inst.spec.forward,
                health_checked: inst.spec.health.is_some(),
                ring_size: inst.ring.len() as u32,
                forwarded_packets: c(ServiceStat::Forwarded)?.packets,
                slow_path_packets: c(ServiceStat::SlowPath)?.packets,
                dropped_packets: c(ServiceStat::Dropped)?.packets,
                backends,
            });
        }
        Ok(out)
    }
}

/// Canonical addresses (IPv4-mapped IPv6 becomes IPv4).
fn normalise(s: &ServiceSpec) -> ServiceSpec {
    let mut s = s.clone();
    s.id.vip = canonical(s.id.vip);
    for b in &mut s.backends {
        b.addr = canonical(b.addr);
    }
    s
}

/// Parses the `--backend` values of `lb add`: addresses, each optionally
/// followed by `weight=N` (default weight 1).
pub fn parse_backends(tokens: &[String]) -> Result<Vec<BackendSpec>, LbError> {
    let mut out: Vec<BackendSpec> = Vec::new();
    for t in tokens {
        if let Some(w) = t.strip_prefix("weight=") {
            let last = out
                .last_mut()
                .ok_or_else(|| LbError::Parse(format!("{t:?} must follow a backend address")))?;
            last.weight = w.parse().map_err(|_| {
                LbError::Parse(format!(
                    "backend {}: weight {w:?} is not a number in 0..={MAX_WEIGHT}",
                    last.addr
                ))
            })?;
            continue;
        }
        let addr: IpAddr = t.parse().map_err(|_| {
            LbError::Parse(format!(
                "backend {t:?} is not an IP address (expected ADDR [weight=N])"
            ))
        })?;
        out.push(BackendSpec { addr, weight: 1 });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ids_parse_and_print() {
        for (text, shown) in [
            ("192.0.2.10:80/tcp", "192.0.2.10:80/tcp"),
            ("[2001:db8::10]:443/tcp", "[2001:db8::10]:443/tcp"),
            ("192.0.2.10/udp", "192.0.2.10:*/udp"),
            ("192.0.2.10:*/udp", "192.0.2.10:*/udp"),
            ("2001:db8::10/sctp", "[2001:db8::10]:*/sctp"),
            ("[2001:db8::10]/tcp", "[2001:db8::10]:*/tcp"),
            ("[::ffff:192.0.2.1]:53/udp", "192.0.2.1:53/udp"),
        ] {
            let id: ServiceId = text.parse().unwrap();
            assert_eq!(id.to_string(), shown, "{text}");
            assert_eq!(shown.parse::<ServiceId>().unwrap(), id);
        }
        for bad in [
            "192.0.2.10:80",
            "192.0.2.10:80/icmp",
            "192.0.2.10:70000/tcp",
            "192.0.2.10:0/tcp",
            "0.0.0.0:80/tcp",
            "[2001:db8::1:80/tcp",
            "example.com:80/tcp",
        ] {
            assert!(bad.parse::<ServiceId>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn backends_parse_with_weights() {
        let t: Vec<String> = ["10.200.2.2", "fd00:200:2::3", "weight=2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let b = parse_backends(&t).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].weight, 1);
        assert_eq!(b[1].weight, 2);
        assert!(parse_backends(&["weight=2".into()]).is_err());
        assert!(parse_backends(&["10.0.0.1".into(), "weight=x".into()]).is_err());
        assert!(parse_backends(&["host".into()]).is_err());
    }

    #[test]
    fn validation_lists_every_problem() {
        let id: ServiceId = "192.0.2.10:80/tcp".parse().unwrap();
        let spec = ServiceSpec {
            id,
            forward: Forward::Encap,
            backends: vec![
                BackendSpec {
                    addr: "10.0.0.1".parse().unwrap(),
                    weight: 1,
                },
                BackendSpec {
                    addr: "10.0.0.1".parse().unwrap(),
                    weight: MAX_WEIGHT + 1,
                },
                BackendSpec {
                    addr: "127.0.0.1".parse().unwrap(),
                    weight: 1,
                },
            ],
            health: None,
        };
        let p = validate(&[spec.clone(), spec], 16);
        assert!(p.iter().any(|m| m.contains("defined twice")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("listed twice")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("weight")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("loopback")), "{p:?}");
    }

    #[test]
    fn outer_source_config() {
        let c = default_lb_config();
        assert_eq!(c.src_v4, [172, 16, 0, 0]);
        assert_eq!(c.mask_v4, 0xffff);
        assert_eq!(c.mask_v6, u32::MAX);
        let c = lb_config(
            "10.200.255.0".parse().unwrap(),
            24,
            "fd00:200:ff::".parse().unwrap(),
            112,
            32,
        )
        .unwrap();
        assert_eq!(c.mask_v4, 0xff);
        assert_eq!(c.mask_v6, 0xffff);
        assert!(
            lb_config(
                "10.0.0.1".parse().unwrap(),
                24,
                "::".parse().unwrap(),
                64,
                64
            )
            .is_err()
        );
        assert!(lb_config("10.0.0.0".parse().unwrap(), 8, "::".parse().unwrap(), 64, 0).is_err());
    }
}

/// A service as written in the configuration file (`[[service]]`), the
/// state file and API requests: plain strings and numbers, converted to a
/// [`ServiceSpec`] by [`ServiceEntry::to_spec`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    /// `VIP:PORT/PROTO` (see [`ServiceId`]).
    pub service: String,
    /// `encap` (default) or `l2dsr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<String>,
    /// Backends: `"ADDR"` or `"ADDR weight=N"`.
    #[serde(default)]
    pub backends: Vec<String>,
    /// Health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthEntry>,
}

/// Health checks as written (`health = { type = "http", path = "/", ... }`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthEntry {
    /// `tcp` (default), `http` or `udp`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Port probed (default: the service's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Seconds between probes (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<f64>,
    /// Seconds a probe may take (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Successes that bring a backend up (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    /// Failures that take a backend down (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fall: Option<u32>,
    /// HTTP: path (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// HTTP: Host header (default: the backend's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// HTTP: expected status (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// UDP: the probe's payload (default `ping`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
}

fn seconds(
    what: &str,
    v: Option<f64>,
    default: std::time::Duration,
) -> Result<std::time::Duration, String> {
    match v {
        None => Ok(default),
        Some(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => {
            Ok(std::time::Duration::from_secs_f64(s))
        }
        Some(s) => Err(format!(
            "health {what} = {s}: use seconds above 0, at most 3600"
        )),
    }
}

impl HealthEntry {
    /// The validated health configuration.
    pub fn to_config(&self) -> Result<HealthConfig, String> {
        use crate::health::Probe;
        let d = CheckSpec::default();
        let probe = match self.kind.as_deref().unwrap_or("tcp") {
            "tcp" => Probe::Tcp,
            "http" => Probe::Http {
                path: self.path.clone().unwrap_or_else(|| "/".into()),
                host: self.host.clone(),
                expect_status: self.status.unwrap_or(200),
            },
            "udp" => Probe::Udp {
                payload: self
                    .payload
                    .clone()
                    .unwrap_or_else(|| "ping".into())
                    .into_bytes(),
            },
            other => return Err(format!("health type {other:?} is not tcp, http or udp")),
        };
        if !matches!(probe, Probe::Http { .. })
            && (self.path.is_some() || self.host.is_some() || self.status.is_some())
        {
            return Err("health path, host and status apply to type = \"http\" only".into());
        }
        if !matches!(probe, Probe::Udp { .. }) && self.payload.is_some() {
            return Err("health payload applies to type = \"udp\" only".into());
        }
        let check = CheckSpec {
            probe,
            interval: seconds("interval", self.interval, d.interval)?,
            timeout: seconds("timeout", self.timeout, d.timeout)?,
            rise: self.rise.unwrap_or(d.rise),
            fall: self.fall.unwrap_or(d.fall),
        };
        check.validate().map_err(|e| e.to_string())?;
        if self.port == Some(0) {
            return Err("health port 0: use 1-65535".into());
        }
        Ok(HealthConfig {
            check,
            port: self.port,
        })
    }

    /// The entry that describes `h`.
    pub fn from_config(h: &HealthConfig) -> HealthEntry {
        use crate::health::Probe;
        let mut e = HealthEntry {
            port: h.port,
            interval: Some(h.check.interval.as_secs_f64()),
            timeout: Some(h.check.timeout.as_secs_f64()),
            rise: Some(h.check.rise),
            fall: Some(h.check.fall),
            ..HealthEntry::default()
        };
        match &h.check.probe {
            Probe::Tcp => e.kind = Some("tcp".into()),
            Probe::Http {
                path,
                host,
                expect_status,
            } => {
                e.kind = Some("http".into());
                e.path = Some(path.clone());
                e.host = host.clone();
                e.status = Some(*expect_status);
            }
            Probe::Udp { payload } => {
                e.kind = Some("udp".into());
                e.payload = Some(String::from_utf8_lossy(payload).into_owned());
            }
        }
        e
    }
}

impl ServiceEntry {
    /// The validated service; every problem of this entry otherwise.
    pub fn to_spec(&self) -> Result<ServiceSpec, Vec<String>> {
        let mut problems = Vec::new();
        let id = match self.service.parse::<ServiceId>() {
            Ok(id) => Some(id),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        let name = id.map_or(self.service.clone(), |i| i.to_string());
        let forward = match self
            .forward
            .as_deref()
            .map(str::parse::<Forward>)
            .transpose()
        {
            Ok(f) => f.unwrap_or_default(),
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                Forward::Encap
            }
        };
        let tokens: Vec<String> = self
            .backends
            .iter()
            .flat_map(|b| b.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        let backends = match parse_backends(&tokens) {
            Ok(b) => b,
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                Vec::new()
            }
        };
        let health = match self.health.as_ref().map(HealthEntry::to_config).transpose() {
            Ok(h) => h,
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                None
            }
        };
        match id {
            Some(id) if problems.is_empty() => {
                let spec = normalise(&ServiceSpec {
                    id,
                    forward,
                    backends,
                    health,
                });
                let mut p = Vec::new();
                check_spec(&spec, &mut p);
                if p.is_empty() { Ok(spec) } else { Err(p) }
            }
            _ => Err(problems),
        }
    }

    /// The entry that describes `s`.
    pub fn from_spec(s: &ServiceSpec) -> ServiceEntry {
        ServiceEntry {
            service: s.id.to_string(),
            forward: Some(s.forward.name().into()),
            backends: s
                .backends
                .iter()
                .map(|b| {
                    if b.weight == 1 {
                        b.addr.to_string()
                    } else {
                        format!("{} weight={}", b.addr, b.weight)
                    }
                })
                .collect(),
            health: s.health.as_ref().map(HealthEntry::from_config),
        }
    }
}

/// Converts entries to specs, collecting every problem, and checks them as a
/// whole against `ring_services` service slots.
pub fn specs_of(
    entries: &[ServiceEntry],
    ring_services: u32,
) -> Result<Vec<ServiceSpec>, Vec<String>> {
    let mut problems = Vec::new();
    let mut specs = Vec::new();
    for e in entries {
        match e.to_spec() {
            Ok(s) => specs.push(s),
            Err(p) => problems.extend(p),
        }
    }
    if problems.is_empty() {
        problems = validate(&specs, ring_services);
    }
    if problems.is_empty() {
        Ok(specs)
    } else {
        Err(problems)
    }
}

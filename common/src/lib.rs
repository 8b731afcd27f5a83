//! The ABI shared by the xdpgate XDP program (`xdp-prog`) and its control plane
//! (`userspace`).
//!
//! Every map name, key, value and counter index lives here so the two sides cannot
//! drift. All types are `#[repr(C)]` or `#[repr(u32)]` with explicit padding, so their
//! layout is the same in the BPF object and on the host.
#![no_std]
#![deny(missing_docs)]

pub mod acl;
pub mod csum;
pub mod lb;
pub mod limit;
pub mod pins;
pub mod wire;

/// Names of the maps in the XDP object, as the loader finds them and as they are
/// pinned under the daemon's bpffs directory.
pub mod maps {
    /// `HashMap<u32 ifindex, IfaceConfig>`: the interfaces xdpgate is attached to.
    pub const IFACES: &str = "XG_IFACES";
    /// `Array<IfaceConfig>` indexed by ifindex, for ifindexes below
    /// [`IFACE_INDEX_ENTRIES`](crate::IFACE_INDEX_ENTRIES): a copy of
    /// [`IFACES`]' entries there (all zero: not registered), which the
    /// datapath reads instead of the hash map (an array lookup is inlined,
    /// a hash lookup hashes the key: measured 24-30 ns per packet).
    /// [`IFACES`] stays the table of record and serves larger ifindexes.
    pub const IFACE_INDEX: &str = "XG_IFACE_INDEX";
    /// `PerCpuArray<Counter>`: packets and bytes per interface slot, family and action,
    /// indexed by [`stats_index`](crate::stats_index).
    pub const STATS: &str = "XG_STATS";
    /// `Array<AclConfig>` (one entry): the live ACL generation.
    pub const ACL_CONFIG: &str = "XG_ACL_CONFIG";
    /// `PerCpuArray<Counter>`: packets and bytes per rule counter slot.
    pub const RULE_STATS: &str = "XG_RULE_STATS";
    /// Names of one generation's tables, generation 0 then 1. Each is the
    /// base name below with suffix `_0` or `_1`.
    pub const GEN_TABLES: [&str; 13] = [
        "XG_BM_IFACE",
        "XG_BM_PROTO",
        "XG_BM_SPORT",
        "XG_BM_DPORT",
        "XG_BM_SRC",
        "XG_BM_DST",
        "XG_SPORT_CLASS",
        "XG_DPORT_CLASS",
        "XG_V4_TBL24",
        "XG_V6_BUCKETS",
        "XG_LENSETS",
        "XG_PREFIXES",
        "XG_V6_BLOCKS",
    ];
    /// `Array<RuleInfo>` per generation (suffix `_0`/`_1`): verdict and counter
    /// slot per rule index.
    pub const RULE_INFO: &str = "XG_RULE_INFO";
    /// `PerCpuArray<Counter>`: dropped packets and bytes per interface slot and
    /// [`DropReason`](crate::DropReason), indexed by [`reason_index`](crate::reason_index).
    pub const REASONS: &str = "XG_REASONS";
    /// `PerCpuArray<CacheEntry>`: the ACL decision cache (datapath only).
    pub const DECISIONS: &str = "XG_DECISIONS";
    /// `PerCpuArray<AddrCacheEntry>`: the IPv6 address-class cache
    /// (datapath only; see [`AddrCacheEntry`](crate::acl::AddrCacheEntry)).
    pub const ADDR_CACHE: &str = "XG_ADDR_CACHE";
    /// `PerCpuArray<u64>`: decision-cache hits and misses, indexed by
    /// [`acl::cache_stat`](crate::acl::cache_stat).
    pub const CACHE_STATS: &str = "XG_CACHE_STATS";
    /// `HashMap<LocalAddrKey, u32>`: the addresses bound to each interface
    /// (see [`LocalAddrKey`](crate::LocalAddrKey)); read only on interfaces
    /// with [`IFACE_DROP_UNBOUND`](crate::IFACE_DROP_UNBOUND).
    pub const LOCAL_ADDRS: &str = "XG_LOCAL_ADDRS";
    /// `Array<EventConfig>` (one entry): whether dropped packets are reported
    /// as datapath events (through aya-log), and the sampling rate.
    pub const EVENT_CONFIG: &str = "XG_EVENT_CONFIG";
    /// `PerCpuArray` (one entry, datapath only): drops seen since the last
    /// sampled event, per CPU, and the event being written.
    pub const EVENT_SAMPLE: &str = "XG_EVENT_SAMPLE";
    /// `ProgramArray`: tail-call targets; [`lb::PROG_STEER`](crate::lb::PROG_STEER)
    /// holds the steering program (load balancing and decapsulation).
    pub const PROGS: &str = "XG_PROGS";
    /// `HashMap<ServiceKey, ServiceInfo>`: the load-balanced services.
    pub const LB_SERVICES: &str = "XG_LB_SERVICES";
    /// `Array<u32>` (mmapable): every service's two Maglev ring halves of
    /// backend slots (see [`lb::ring_base`](crate::lb::ring_base)).
    pub const LB_RINGS: &str = "XG_LB_RINGS";
    /// `Array<Backend>`: backends by slot (slot 0 unused).
    pub const LB_BACKENDS: &str = "XG_LB_BACKENDS";
    /// `PerCpuArray<Counter>`: packets and bytes sent to each backend slot.
    pub const LB_BACKEND_STATS: &str = "XG_LB_BACKEND_STATS";
    /// `PerCpuArray<Counter>`: per-service counters
    /// ([`lb::service_stat_index`](crate::lb::service_stat_index)).
    pub const LB_SERVICE_STATS: &str = "XG_LB_SERVICE_STATS";
    /// `Array<LbConfig>` (one entry): outer source prefixes and TTL.
    pub const LB_CONFIG: &str = "XG_LB_CONFIG";
    /// `Array<u64>` (one entry, mmapable): the routing generation, which the
    /// daemon moves whenever the kernel reports a route, neighbour, link,
    /// address or rule change (and once a second); a cached next hop
    /// (`XG_LB_NEXTHOP`) is valid only while its generation equals it.
    pub const LB_ROUTE_GEN: &str = "XG_LB_ROUTE_GEN";
    /// `HashMap<LocalAddrKey, u32>`: outer destinations the decapsulator
    /// accepts, per interface slot (on interfaces with
    /// [`IFACE_DECAP`](crate::IFACE_DECAP)).
    pub const DECAP_DSTS: &str = "XG_DECAP_DSTS";
    /// `PerCpuArray<Counter>`: decapsulated packets per interface slot and
    /// outer/inner family ([`lb::decap_stat_index`](crate::lb::decap_stat_index)).
    pub const DECAP_STATS: &str = "XG_DECAP_STATS";
}

/// Name of the XDP program function in the object (also its kernel program name,
/// which `xdpgate status` uses to recognise its own attachments).
pub const PROGRAM_NAME: &str = "xdpgate";

/// Maximum number of interfaces one daemon attaches to. Slot 0 is reserved for
/// packets seen on an interface the daemon did not register (another loader
/// attached the same program), so usable slots are `1..MAX_IFACES`.
pub const MAX_IFACES: u32 = 256;

/// Entries of [`maps::IFACE_INDEX`]: interfaces with a smaller ifindex are
/// looked up by index (ifindexes count up per network namespace from 1), the
/// others in [`maps::IFACES`]. 32 KiB.
pub const IFACE_INDEX_ENTRIES: u32 = 4096;

/// Slot that counts packets from interfaces missing from [`maps::IFACES`].
pub const UNKNOWN_IFACE_SLOT: u32 = 0;

/// Address family of a packet, as the datapath classifies it for counting: by
/// the EtherType after any VLAN tags, whether or not the IP header is intact.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// EtherType 0x0800.
    Ipv4 = 0,
    /// EtherType 0x86DD.
    Ipv6 = 1,
    /// Everything else (ARP, LLDP, other EtherTypes) and frames too short to
    /// carry an EtherType.
    Other = 2,
}

impl Family {
    /// Number of families (length of the family dimension of the stats array).
    pub const COUNT: u32 = 3;
    /// All families in index order.
    pub const ALL: [Family; 3] = [Family::Ipv4, Family::Ipv6, Family::Other];

    /// Lower-case name used in CLI output and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
            Family::Other => "other",
        }
    }
}

/// The verdict the XDP program returned; values equal the kernel's `XDP_*` codes.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// `XDP_ABORTED`: program error; the packet is dropped and traced.
    Aborted = 0,
    /// `XDP_DROP`.
    Drop = 1,
    /// `XDP_PASS`: handed to the kernel stack.
    Pass = 2,
    /// `XDP_TX`: bounced out of the receiving interface.
    Tx = 3,
    /// `XDP_REDIRECT`: forwarded to another interface, CPU or socket.
    Redirect = 4,
}

impl Action {
    /// Number of actions (length of the action dimension of the stats array).
    pub const COUNT: u32 = 5;
    /// All actions in index order.
    pub const ALL: [Action; 5] = [
        Action::Aborted,
        Action::Drop,
        Action::Pass,
        Action::Tx,
        Action::Redirect,
    ];

    /// Lower-case name used in CLI output and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Action::Aborted => "aborted",
            Action::Drop => "drop",
            Action::Pass => "pass",
            Action::Tx => "tx",
            Action::Redirect => "redirect",
        }
    }
}

/// Why the datapath dropped (or, with [`IFACE_PASS_MALFORMED`], would have dropped)
/// a packet. A bounded set: every value has a counter per interface.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Frame shorter than an Ethernet header.
    TruncatedEthernet = 0,
    /// A VLAN tag (802.1Q or 802.1ad) cut short.
    TruncatedVlan = 1,
    /// More than two VLAN tags.
    VlanTooDeep = 2,
    /// IPv4 header shorter than 20 bytes, or its options cut short.
    TruncatedIpv4 = 3,
    /// IPv4 version field not 4, or IHL below 5.
    BadIpv4Header = 4,
    /// IPv4 total length smaller than the header or larger than the frame.
    BadIpv4Length = 5,
    /// IPv6 header shorter than 40 bytes.
    TruncatedIpv6 = 6,
    /// IPv6 version field not 6, or payload length beyond the frame.
    BadIpv6Header = 7,
    /// An IPv6 extension header cut short.
    TruncatedIpv6Ext = 8,
    /// More IPv6 extension headers than the datapath walks
    /// ([`MAX_IPV6_EXT_HEADERS`]).
    Ipv6ExtTooDeep = 9,
    /// The L4 header (TCP 20, UDP 8, SCTP 12, ICMP/ICMPv6 4 bytes) is cut short in
    /// an unfragmented packet or a first fragment.
    TruncatedL4 = 10,
    /// Not malformed: a unicast IPv4/IPv6 packet to a destination not bound to
    /// an interface with [`IFACE_DROP_UNBOUND`] (see [`maps::LOCAL_ADDRS`]).
    /// Always dropped: [`IFACE_PASS_MALFORMED`] does not apply to it.
    NotBound = 11,
    /// Not malformed: a packet to a load-balanced service that has no
    /// (healthy) backend.
    LbNoBackend = 12,
    /// Not malformed: the route lookup for a load-balanced packet's backend
    /// failed (no route, unreachable, forwarding disabled on the interface).
    LbNoRoute = 13,
    /// Not malformed: the encapsulated packet would exceed the egress MTU.
    LbTooBig = 14,
    /// Not malformed: an L2 DSR backend has no neighbour entry yet, or is not
    /// on-link.
    LbNoNeighbor = 15,
    /// Not malformed: over the limit of the rule that matched it
    /// (`limit::RULE_LIMIT`); counted per rule too.
    RateLimited = 16,
    /// Not malformed: a SYN to a SYN-cookie rule not answered because the
    /// SYN-ACKs to its source prefix reached the reflector limit.
    SynackLimited = 17,
    /// Not malformed: a non-SYN TCP packet to a SYN-cookie rule that is
    /// neither of an established connection nor an ACK with a valid cookie.
    BadCookie = 18,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: u32 = 19;
    /// All reasons in index order.
    pub const ALL: [DropReason; 19] = [
        DropReason::TruncatedEthernet,
        DropReason::TruncatedVlan,
        DropReason::VlanTooDeep,
        DropReason::TruncatedIpv4,
        DropReason::BadIpv4Header,
        DropReason::BadIpv4Length,
        DropReason::TruncatedIpv6,
        DropReason::BadIpv6Header,
        DropReason::TruncatedIpv6Ext,
        DropReason::Ipv6ExtTooDeep,
        DropReason::TruncatedL4,
        DropReason::NotBound,
        DropReason::LbNoBackend,
        DropReason::LbNoRoute,
        DropReason::LbTooBig,
        DropReason::LbNoNeighbor,
        DropReason::RateLimited,
        DropReason::SynackLimited,
        DropReason::BadCookie,
    ];

    /// Snake-case name used in CLI output and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::TruncatedEthernet => "truncated_ethernet",
            DropReason::TruncatedVlan => "truncated_vlan",
            DropReason::VlanTooDeep => "vlan_too_deep",
            DropReason::TruncatedIpv4 => "truncated_ipv4",
            DropReason::BadIpv4Header => "bad_ipv4_header",
            DropReason::BadIpv4Length => "bad_ipv4_length",
            DropReason::TruncatedIpv6 => "truncated_ipv6",
            DropReason::BadIpv6Header => "bad_ipv6_header",
            DropReason::TruncatedIpv6Ext => "truncated_ipv6_ext",
            DropReason::Ipv6ExtTooDeep => "ipv6_ext_too_deep",
            DropReason::TruncatedL4 => "truncated_l4",
            DropReason::NotBound => "not_bound",
            DropReason::LbNoBackend => "lb_no_backend",
            DropReason::LbNoRoute => "lb_no_route",
            DropReason::LbTooBig => "lb_too_big",
            DropReason::LbNoNeighbor => "lb_no_neighbor",
            DropReason::RateLimited => "rate_limited",
            DropReason::SynackLimited => "synack_limited",
            DropReason::BadCookie => "bad_cookie",
        }
    }

    /// Whether the reason describes a malformed frame (every reason but
    /// [`DropReason::NotBound`] and the reasons after it, which drop
    /// well-formed packets).
    pub const fn is_malformed(self) -> bool {
        (self as u32) < DropReason::NotBound as u32
    }
}

/// Most IPv6 extension headers the parser walks before giving up with
/// [`DropReason::Ipv6ExtTooDeep`].
pub const MAX_IPV6_EXT_HEADERS: u32 = 8;

/// [`IfaceConfig::flags`] bit: pass malformed packets instead of dropping them
/// (they are still counted under their [`DropReason`]).
pub const IFACE_PASS_MALFORMED: u32 = 1 << 0;

/// [`IfaceConfig::flags`] bit: drop unicast IPv4/IPv6 packets whose destination
/// is not bound to the interface ([`maps::LOCAL_ADDRS`]), counted under
/// [`DropReason::NotBound`]. Multicast (224.0.0.0/4, ff00::/8), the limited
/// broadcast 255.255.255.255 and link-local destinations (169.254.0.0/16,
/// fe80::/10) are exempt, and non-IP frames are untouched, so ARP, NDP and
/// DHCP keep working. The check runs after parsing and before the ACL.
pub const IFACE_DROP_UNBOUND: u32 = 1 << 1;

/// [`IfaceConfig::flags`] bit: decapsulate IPIP, IPv6-in-IPv4, IP6IP6 and
/// IPv4-in-IPv6 packets whose outer destination is in
/// [`maps::DECAP_DSTS`] for this interface, after the ACL passed the outer
/// packet, and pass the inner packet to the stack.
pub const IFACE_DECAP: u32 = 1 << 2;

/// [`IfaceConfig::flags`] bit: look packets that the ACL passed up in the
/// load balancer's services ([`maps::LB_SERVICES`]) and forward those that
/// match.
pub const IFACE_LB: u32 = 1 << 3;

/// Capacity of [`maps::LOCAL_ADDRS`] over all interfaces.
pub const LOCAL_ADDR_ENTRIES: u32 = 262_144;

/// [`LocalAddrKey::family`] of an IPv4 address ([`Family::Ipv4`]).
pub const LOCAL_ADDR_V4: u32 = Family::Ipv4 as u32;
/// [`LocalAddrKey::family`] of an IPv6 address ([`Family::Ipv6`]).
pub const LOCAL_ADDR_V6: u32 = Family::Ipv6 as u32;
/// Value of a [`maps::LOCAL_ADDRS`] entry (the datapath only checks presence).
pub const LOCAL_ADDR_BOUND: u32 = 1;

/// Key of [`maps::LOCAL_ADDRS`]: one address bound to one interface.
///
/// The address is in network byte order as it appears in the packet: an IPv6
/// address fills all 16 bytes; an IPv4 address takes the first 4 bytes and
/// the other 12 are zero (not v4-mapped), which is how the parser stores it.
/// The family field keeps `10.0.0.1` apart from the IPv6 address `a00:1::`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LocalAddrKey {
    /// Counter slot of the interface ([`IfaceConfig::slot`]), not its ifindex.
    pub slot: u32,
    /// [`LOCAL_ADDR_V4`] or [`LOCAL_ADDR_V6`].
    pub family: u32,
    /// The address, big-endian, IPv4 zero-padded.
    pub addr: [u8; 16],
}

/// Number of entries in [`maps::REASONS`].
pub const REASON_ENTRIES: u32 = MAX_IFACES * DropReason::COUNT;

/// Index into [`maps::REASONS`] of the counter for `slot` and `reason`.
#[inline(always)]
pub const fn reason_index(slot: u32, reason: DropReason) -> u32 {
    slot * DropReason::COUNT + reason as u32
}

/// Number of entries in [`maps::STATS`].
pub const STATS_ENTRIES: u32 = MAX_IFACES * Family::COUNT * Action::COUNT;

/// Index into [`maps::STATS`] of the counter for `slot`, `family` and `action`.
///
/// `slot` must be below [`MAX_IFACES`]; the datapath guarantees that by masking.
#[inline(always)]
pub const fn stats_index(slot: u32, family: Family, action: Action) -> u32 {
    (slot * Family::COUNT + family as u32) * Action::COUNT + action as u32
}

/// Value of [`maps::STATS`]: one CPU's packet and byte counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted, from the start of the Ethernet header to the end of the frame.
    pub bytes: u64,
}

/// Value of [`maps::IFACES`]: per-interface datapath configuration, keyed by ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceConfig {
    /// Counter slot of this interface, `1..MAX_IFACES`.
    pub slot: u32,
    /// `IFACE_*` flag bits.
    pub flags: u32,
}

/// Value of [`maps::EVENT_CONFIG`]: datapath events, off unless `enabled`.
///
/// When on, each CPU reports one of every `sample_every` dropped packets as a
/// log record (target [`EVENT_TARGET`]); each record costs the datapath about
/// 170-200 ns (measured; the daemon's rate limit does not reduce that cost,
/// sampling does). When off, a drop costs one array lookup more and a pass
/// nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventConfig {
    /// Non-zero: report sampled drops.
    pub enabled: u32,
    /// Report one of every this many drops per CPU (0 and 1: every drop).
    pub sample_every: u32,
    /// Zero. Two words in the schema-upgrade test's build (the field its
    /// schema adds, see [`pins::SCHEMA_VERSION`]), none otherwise.
    pub _variant: [u32; EVENT_VARIANT_WORDS],
}

/// Words of [`EventConfig::_variant`].
pub const EVENT_VARIANT_WORDS: usize = if pins::SCHEMA_VARIANT { 2 } else { 0 };

/// The `log` target of datapath event records (the eBPF program's aya-log
/// records carry it; the daemon rate-limits records with this target).
pub const EVENT_TARGET: &str = "xdpgate::datapath";

/// `cause` of a datapath drop event: a [`DropReason`] index below
/// [`DropReason::COUNT`], or one of these.
pub mod event_cause {
    /// A deny rule; the event's `rule` is its id.
    pub const RULE: u32 = 64;
    /// The interface's default policy (no rule matched).
    pub const DEFAULT_POLICY: u32 = 65;
}

#[cfg(feature = "user")]
mod pod {
    /// Implements `aya::Pod` for map keys and values.
    macro_rules! pod {
        ($($t:ty),* $(,)?) => {
            $(
                // SAFETY: every type listed is `repr(C)` and holds only
                // integers and arrays of integers, with no padding (their
                // sizes are pinned by `tests::layout` and the acl/lb tests),
                // so every bit pattern is a valid value.
                unsafe impl aya::Pod for $t {}
            )*
        };
    }

    pod!(
        super::Counter,
        super::IfaceConfig,
        super::LocalAddrKey,
        super::EventConfig,
        super::lb::ServiceKey,
        super::lb::ServiceInfo,
        super::lb::Backend,
        super::lb::LbConfig,
        super::acl::Bitmap,
        super::acl::V6Bucket,
        super::acl::V6Block,
        super::acl::LenSet,
        super::acl::PrefixKey,
        super::acl::PrefixEntry,
        super::acl::PrefixBucket,
        super::acl::RuleInfo,
        super::acl::AclConfig,
        super::limit::LimitSpec,
        super::limit::Bucket,
        super::limit::BucketKey,
        super::limit::SyncookieConfig,
        super::pins::Meta,
    );
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn stats_indices_are_dense_and_unique() {
        let mut seen = std::vec![false; STATS_ENTRIES as usize];
        for slot in 0..MAX_IFACES {
            for f in Family::ALL {
                for a in Action::ALL {
                    let i = stats_index(slot, f, a) as usize;
                    assert!(!seen[i], "index {i} used twice");
                    seen[i] = true;
                }
            }
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    #[allow(
        unused_qualifications,
        reason = "the layout assertions keep their wording from before the 2024 prelude"
    )]
    fn enum_values_match_kernel_and_order() {
        // XDP_ABORTED..XDP_REDIRECT from include/uapi/linux/bpf.h.
        assert_eq!(Action::Aborted as u32, 0);
        assert_eq!(Action::Drop as u32, 1);
        assert_eq!(Action::Pass as u32, 2);
        assert_eq!(Action::Tx as u32, 3);
        assert_eq!(Action::Redirect as u32, 4);
        for (i, a) in Action::ALL.iter().enumerate() {
            assert_eq!(*a as usize, i);
        }
        for (i, f) in Family::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i);
        }
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert_eq!(reason_index(1, *r), DropReason::COUNT + i as u32);
        }
        assert_eq!(DropReason::ALL.len() as u32, DropReason::COUNT);
        assert_eq!(core::mem::size_of::<Counter>(), 16);
        assert_eq!(core::mem::size_of::<IfaceConfig>(), 8);
        assert_eq!(core::mem::size_of::<LocalAddrKey>(), 24);
        assert_eq!(core::mem::size_of::<EventConfig>(), 8);
        const { assert!(event_cause::RULE >= DropReason::COUNT) };
        assert_eq!(DropReason::NotBound.name(), "not_bound");
        assert!(!DropReason::NotBound.is_malformed());
        assert!(DropReason::TruncatedL4.is_malformed());
        assert_eq!(limit::RULE_SLOTS, acl::RULE_COUNTERS);
    }
}

//! Every map of the XDP program, each with its purpose. Names come from
//! `xdpgate_common::maps`; the control plane finds and pins them by those names.
//!
//! The ACL tables exist twice, generation 0 and 1 (suffix `_0`/`_1`); the
//! [`Generation`] trait gives the classifier one generation's maps as direct
//! references, so each generation gets its own copy of the code and the
//! verifier can inline every array lookup.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, ProgramArray},
};
use xdpgate_common::{
    Counter, EventConfig, IfaceConfig, LOCAL_ADDR_ENTRIES, LocalAddrKey, MAX_IFACES,
    REASON_ENTRIES, STATS_ENTRIES,
    acl::{
        AclConfig, Bitmap, CACHE_ENTRIES, CacheEntry, DPORT_QUADS, LENSETS, LenSet,
        MAX_ADDR_CLASSES, MAX_PORT_CLASSES, PREFIX_BUCKETS, Pair, PrefixBucket, Quad, RULE_BITS,
        RULE_COUNTERS, RuleInfo, SPORT_QUADS, V4_TBL24_PAIRS, V6Bucket, cache_stat,
    },
    lb::{
        Backend, DECAP_STAT_ENTRIES, DEFAULT_RING_SERVICES, DEFAULT_RING_SIZE, LbConfig,
        MAX_BACKENDS, MAX_SERVICES, SERVICE_STAT_ENTRIES, ServiceInfo, ServiceKey, ring_entries,
    },
};

/// `BPF_F_MMAPABLE`: the control plane writes these arrays through mmap.
const MMAP: u32 = 1 << 10;

/// Interfaces the daemon attached to, by ifindex: counter slot and flags.
#[map(name = "XG_IFACES")]
pub static IFACES: HashMap<u32, IfaceConfig> = HashMap::with_max_entries(MAX_IFACES, 0);

/// Per-CPU packet and byte counters by interface slot, family and action.
#[map(name = "XG_STATS")]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);

/// Per-CPU counters of dropped (or passed malformed) packets by interface slot
/// and drop reason.
#[map(name = "XG_REASONS")]
pub static REASONS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_ENTRIES, 0);

/// The live ACL generation.
#[map(name = "XG_ACL_CONFIG")]
pub static ACL_CONFIG: Array<AclConfig> = Array::with_max_entries(1, 0);

/// Per-CPU packet and byte counters per rule counter slot (shared by both
/// generations, so counters survive generation switches).
#[map(name = "XG_RULE_STATS")]
pub static RULE_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(RULE_COUNTERS, 0);

/// Per-CPU scratch slot through which the classifier's input passes (see
/// `acl::classify`).
#[map(name = "XG_SCRATCH")]
pub static SCRATCH: PerCpuArray<crate::acl::Fields> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU direct-mapped cache of ACL decisions by class combination and epoch
/// (see `acl::resolve`); never read or written by the control plane.
#[map(name = "XG_DECISIONS")]
pub static DECISIONS: PerCpuArray<CacheEntry> = PerCpuArray::with_max_entries(CACHE_ENTRIES, 0);

/// Per-CPU decision-cache hit and miss counters (`acl::cache_stat`).
#[map(name = "XG_CACHE_STATS")]
pub static CACHE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(cache_stat::ENTRIES, 0);

/// Per-CPU word through which the prefix-length search passes its probe index
/// (see `acl::search`).
#[map(name = "XG_PROBE")]
pub static PROBE: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// `BPF_F_NO_PREALLOC`: hash entries are allocated on insert, so an unused
/// capacity costs no memory.
const NO_PREALLOC: u32 = 1 << 0;

/// Addresses bound to each interface slot (`bind::unbound`); written by the
/// control plane's binding manager.
#[map(name = "XG_LOCAL_ADDRS")]
pub static LOCAL_ADDRS: HashMap<LocalAddrKey, u32> =
    HashMap::with_max_entries(LOCAL_ADDR_ENTRIES, NO_PREALLOC);

/// Per-CPU slot through which the local-address key passes (see
/// `bind::unbound`).
#[map(name = "XG_BIND_KEY")]
pub static BIND_KEY: PerCpuArray<LocalAddrKey> = PerCpuArray::with_max_entries(1, 0);

/// Whether drops are reported as datapath events, and one in how many
/// (`events::dropped`); read on the drop path only.
#[map(name = "XG_EVENT_CONFIG")]
pub static EVENT_CONFIG: Array<EventConfig> = Array::with_max_entries(1, 0);

/// Per-CPU count of drops since the last sampled event, and the drop being
/// reported (`events::dropped`); never read or written by the control plane.
#[map(name = "XG_EVENT_SAMPLE")]
pub static EVENT_SAMPLE: PerCpuArray<crate::events::Pending> = PerCpuArray::with_max_entries(1, 0);

/// Tail-call targets: `lb::PROG_STEER` is the steering program.
#[map(name = "XG_PROGS")]
pub static PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Per-CPU slot through which the main program hands a passed packet's fields
/// to the steering program it tail-calls.
#[map(name = "XG_STEER_CTX")]
pub static STEER_CTX: PerCpuArray<crate::steer::SteerCtx> = PerCpuArray::with_max_entries(1, 0);

/// Load-balanced services by (VIP, protocol, port).
#[map(name = "XG_LB_SERVICES")]
pub static LB_SERVICES: HashMap<ServiceKey, ServiceInfo> =
    HashMap::with_max_entries(MAX_SERVICES, 0);

/// Maglev rings of backend slots, two halves per service (resized by the
/// control plane at load time).
#[map(name = "XG_LB_RINGS")]
pub static LB_RINGS: Array<u32> =
    Array::with_max_entries(ring_entries(DEFAULT_RING_SERVICES, DEFAULT_RING_SIZE), MMAP);

/// Backends by slot.
#[map(name = "XG_LB_BACKENDS")]
pub static LB_BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Per-CPU packets and bytes sent to each backend slot.
#[map(name = "XG_LB_BACKEND_STATS")]
pub static LB_BACKEND_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Per-CPU next hop by backend slot (`steer::NextHop`): the last successful
/// `bpf_fib_lookup` to the backend, used for `steer::HOP_LIFETIME_NS`
/// instead of a lookup per packet; never read or written by the control
/// plane. 48 bytes per slot and possible CPU (3 MiB per CPU).
#[map(name = "XG_LB_NEXTHOP")]
pub static LB_NEXTHOP: PerCpuArray<crate::steer::NextHop> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Per-CPU per-service counters (`lb::service_stat_index`).
#[map(name = "XG_LB_SERVICE_STATS")]
pub static LB_SERVICE_STATS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(SERVICE_STAT_ENTRIES, 0);

/// Outer source prefixes and TTL of encapsulated packets.
#[map(name = "XG_LB_CONFIG")]
pub static LB_CONFIG: Array<LbConfig> = Array::with_max_entries(1, 0);

/// Outer destinations the decapsulator accepts, per interface slot.
#[map(name = "XG_DECAP_DSTS")]
pub static DECAP_DSTS: HashMap<LocalAddrKey, u32> = HashMap::with_max_entries(65_536, NO_PREALLOC);

/// Per-CPU decapsulated packets per interface slot and outer/inner family.
#[map(name = "XG_DECAP_STATS")]
pub static DECAP_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(DECAP_STAT_ENTRIES, 0);

/// One generation of the ACL tables.
pub trait Generation {
    /// Rule bitmap per interface slot.
    fn bm_iface() -> &'static Array<Bitmap>;
    /// Rule bitmap per IP protocol.
    fn bm_proto() -> &'static Array<Bitmap>;
    /// Rule bitmap per source-port class.
    fn bm_sport() -> &'static Array<Bitmap>;
    /// Rule bitmap per destination-port/ICMP class.
    fn bm_dport() -> &'static Array<Bitmap>;
    /// Rule bitmap per address class, source side.
    fn bm_src() -> &'static Array<Bitmap>;
    /// Rule bitmap per address class, destination side.
    fn bm_dst() -> &'static Array<Bitmap>;
    /// Source-port class per (group, port), four per element.
    fn sport_class() -> &'static Array<Quad>;
    /// Destination-port/ICMP class per (group, key), four per element.
    fn dport_class() -> &'static Array<Quad>;
    /// IPv4 first level (top 24 bits): class or v4_entry, two per element.
    fn v4_tbl24() -> &'static Array<Pair>;
    /// IPv6 top-16 buckets.
    fn v6_buckets() -> &'static Array<V6Bucket>;
    /// Prefix-length sets of both families.
    fn lensets() -> &'static Array<LenSet>;
    /// Long prefixes (IPv4 > /24, IPv6 > /16) and binary-search markers, in a
    /// bucketized cuckoo table (`prefix_buckets`).
    fn prefixes() -> &'static Array<PrefixBucket>;
    /// Verdict and counter slot per rule index.
    fn rule_info() -> &'static Array<RuleInfo>;
}

/// Generation 0.
pub struct Gen0;

/// Generation 0: rule bitmap per interface slot.
#[map(name = "XG_BM_IFACE_0")]
static XG_BM_IFACE_0: Array<Bitmap> = Array::with_max_entries(MAX_IFACES, MMAP);

/// Generation 0: rule bitmap per IP protocol.
#[map(name = "XG_BM_PROTO_0")]
static XG_BM_PROTO_0: Array<Bitmap> = Array::with_max_entries(256, MMAP);

/// Generation 0: rule bitmap per source-port class.
#[map(name = "XG_BM_SPORT_0")]
static XG_BM_SPORT_0: Array<Bitmap> = Array::with_max_entries(MAX_PORT_CLASSES, MMAP);

/// Generation 0: rule bitmap per destination-port/ICMP class.
#[map(name = "XG_BM_DPORT_0")]
static XG_BM_DPORT_0: Array<Bitmap> = Array::with_max_entries(MAX_PORT_CLASSES, MMAP);

/// Generation 0: rule bitmap per address class, source side.
#[map(name = "XG_BM_SRC_0")]
static XG_BM_SRC_0: Array<Bitmap> = Array::with_max_entries(MAX_ADDR_CLASSES, MMAP);

/// Generation 0: rule bitmap per address class, destination side.
#[map(name = "XG_BM_DST_0")]
static XG_BM_DST_0: Array<Bitmap> = Array::with_max_entries(MAX_ADDR_CLASSES, MMAP);

/// Generation 0: source-port class per (group, port), four per element.
#[map(name = "XG_SPORT_CLASS_0")]
static XG_SPORT_CLASS_0: Array<Quad> = Array::with_max_entries(SPORT_QUADS, MMAP);

/// Generation 0: destination-port/ICMP class per (group, key), four per element.
#[map(name = "XG_DPORT_CLASS_0")]
static XG_DPORT_CLASS_0: Array<Quad> = Array::with_max_entries(DPORT_QUADS, MMAP);

/// Generation 0: IPv4 first level (top 24 bits): class or v4_entry, two per element.
#[map(name = "XG_V4_TBL24_0")]
static XG_V4_TBL24_0: Array<Pair> = Array::with_max_entries(V4_TBL24_PAIRS, MMAP);

/// Generation 0: IPv6 top-16 buckets.
#[map(name = "XG_V6_BUCKETS_0")]
static XG_V6_BUCKETS_0: Array<V6Bucket> = Array::with_max_entries(65536, MMAP);

/// Generation 0: prefix-length sets of both families.
#[map(name = "XG_LENSETS_0")]
static XG_LENSETS_0: Array<LenSet> = Array::with_max_entries(LENSETS, MMAP);

/// Generation 0: long prefixes (IPv4 > /24, IPv6 > /16) and binary-search markers.
#[map(name = "XG_PREFIXES_0")]
static XG_PREFIXES_0: Array<PrefixBucket> = Array::with_max_entries(PREFIX_BUCKETS, MMAP);

/// Generation 0: verdict and counter slot per rule index.
#[map(name = "XG_RULE_INFO_0")]
static XG_RULE_INFO_0: Array<RuleInfo> = Array::with_max_entries(RULE_BITS, MMAP);

impl Generation for Gen0 {
    #[inline(always)]
    fn bm_iface() -> &'static Array<Bitmap> {
        &XG_BM_IFACE_0
    }
    #[inline(always)]
    fn bm_proto() -> &'static Array<Bitmap> {
        &XG_BM_PROTO_0
    }
    #[inline(always)]
    fn bm_sport() -> &'static Array<Bitmap> {
        &XG_BM_SPORT_0
    }
    #[inline(always)]
    fn bm_dport() -> &'static Array<Bitmap> {
        &XG_BM_DPORT_0
    }
    #[inline(always)]
    fn bm_src() -> &'static Array<Bitmap> {
        &XG_BM_SRC_0
    }
    #[inline(always)]
    fn bm_dst() -> &'static Array<Bitmap> {
        &XG_BM_DST_0
    }
    #[inline(always)]
    fn sport_class() -> &'static Array<Quad> {
        &XG_SPORT_CLASS_0
    }
    #[inline(always)]
    fn dport_class() -> &'static Array<Quad> {
        &XG_DPORT_CLASS_0
    }
    #[inline(always)]
    fn v4_tbl24() -> &'static Array<Pair> {
        &XG_V4_TBL24_0
    }
    #[inline(always)]
    fn v6_buckets() -> &'static Array<V6Bucket> {
        &XG_V6_BUCKETS_0
    }
    #[inline(always)]
    fn lensets() -> &'static Array<LenSet> {
        &XG_LENSETS_0
    }
    #[inline(always)]
    fn prefixes() -> &'static Array<PrefixBucket> {
        &XG_PREFIXES_0
    }
    #[inline(always)]
    fn rule_info() -> &'static Array<RuleInfo> {
        &XG_RULE_INFO_0
    }
}

/// Generation 1.
pub struct Gen1;

/// Generation 1: rule bitmap per interface slot.
#[map(name = "XG_BM_IFACE_1")]
static XG_BM_IFACE_1: Array<Bitmap> = Array::with_max_entries(MAX_IFACES, MMAP);

/// Generation 1: rule bitmap per IP protocol.
#[map(name = "XG_BM_PROTO_1")]
static XG_BM_PROTO_1: Array<Bitmap> = Array::with_max_entries(256, MMAP);

/// Generation 1: rule bitmap per source-port class.
#[map(name = "XG_BM_SPORT_1")]
static XG_BM_SPORT_1: Array<Bitmap> = Array::with_max_entries(MAX_PORT_CLASSES, MMAP);

/// Generation 1: rule bitmap per destination-port/ICMP class.
#[map(name = "XG_BM_DPORT_1")]
static XG_BM_DPORT_1: Array<Bitmap> = Array::with_max_entries(MAX_PORT_CLASSES, MMAP);

/// Generation 1: rule bitmap per address class, source side.
#[map(name = "XG_BM_SRC_1")]
static XG_BM_SRC_1: Array<Bitmap> = Array::with_max_entries(MAX_ADDR_CLASSES, MMAP);

/// Generation 1: rule bitmap per address class, destination side.
#[map(name = "XG_BM_DST_1")]
static XG_BM_DST_1: Array<Bitmap> = Array::with_max_entries(MAX_ADDR_CLASSES, MMAP);

/// Generation 1: source-port class per (group, port), four per element.
#[map(name = "XG_SPORT_CLASS_1")]
static XG_SPORT_CLASS_1: Array<Quad> = Array::with_max_entries(SPORT_QUADS, MMAP);

/// Generation 1: destination-port/ICMP class per (group, key), four per element.
#[map(name = "XG_DPORT_CLASS_1")]
static XG_DPORT_CLASS_1: Array<Quad> = Array::with_max_entries(DPORT_QUADS, MMAP);

/// Generation 1: IPv4 first level (top 24 bits): class or v4_entry, two per element.
#[map(name = "XG_V4_TBL24_1")]
static XG_V4_TBL24_1: Array<Pair> = Array::with_max_entries(V4_TBL24_PAIRS, MMAP);

/// Generation 1: IPv6 top-16 buckets.
#[map(name = "XG_V6_BUCKETS_1")]
static XG_V6_BUCKETS_1: Array<V6Bucket> = Array::with_max_entries(65536, MMAP);

/// Generation 1: prefix-length sets of both families.
#[map(name = "XG_LENSETS_1")]
static XG_LENSETS_1: Array<LenSet> = Array::with_max_entries(LENSETS, MMAP);

/// Generation 1: long prefixes (IPv4 > /24, IPv6 > /16) and binary-search markers.
#[map(name = "XG_PREFIXES_1")]
static XG_PREFIXES_1: Array<PrefixBucket> = Array::with_max_entries(PREFIX_BUCKETS, MMAP);

/// Generation 1: verdict and counter slot per rule index.
#[map(name = "XG_RULE_INFO_1")]
static XG_RULE_INFO_1: Array<RuleInfo> = Array::with_max_entries(RULE_BITS, MMAP);

impl Generation for Gen1 {
    #[inline(always)]
    fn bm_iface() -> &'static Array<Bitmap> {
        &XG_BM_IFACE_1
    }
    #[inline(always)]
    fn bm_proto() -> &'static Array<Bitmap> {
        &XG_BM_PROTO_1
    }
    #[inline(always)]
    fn bm_sport() -> &'static Array<Bitmap> {
        &XG_BM_SPORT_1
    }
    #[inline(always)]
    fn bm_dport() -> &'static Array<Bitmap> {
        &XG_BM_DPORT_1
    }
    #[inline(always)]
    fn bm_src() -> &'static Array<Bitmap> {
        &XG_BM_SRC_1
    }
    #[inline(always)]
    fn bm_dst() -> &'static Array<Bitmap> {
        &XG_BM_DST_1
    }
    #[inline(always)]
    fn sport_class() -> &'static Array<Quad> {
        &XG_SPORT_CLASS_1
    }
    #[inline(always)]
    fn dport_class() -> &'static Array<Quad> {
        &XG_DPORT_CLASS_1
    }
    #[inline(always)]
    fn v4_tbl24() -> &'static Array<Pair> {
        &XG_V4_TBL24_1
    }
    #[inline(always)]
    fn v6_buckets() -> &'static Array<V6Bucket> {
        &XG_V6_BUCKETS_1
    }
    #[inline(always)]
    fn lensets() -> &'static Array<LenSet> {
        &XG_LENSETS_1
    }
    #[inline(always)]
    fn prefixes() -> &'static Array<PrefixBucket> {
        &XG_PREFIXES_1
    }
    #[inline(always)]
    fn rule_info() -> &'static Array<RuleInfo> {
        &XG_RULE_INFO_1
    }
}

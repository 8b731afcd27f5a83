//! Every map of the XDP programs, each with its purpose. Names come from
//! `xdpgate_common::maps`; the control plane finds and pins them by those
//! names. Keys and values are `xdpgate_common` types, except the per-CPU
//! hand-off values of `handoff` (datapath-only); nothing else is imported.
//!
//! The ACL tables exist twice, generation 0 and 1 (suffix `_0`/`_1`),
//! declared once by `acl_generations!`; the [`Generation`] trait gives the
//! classifier one generation's maps as direct references, so each
//! generation gets its own copy of the code and the verifier can inline
//! every array lookup.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray},
};
use xdpgate_common::{
    Counter, EventConfig, IFACE_INDEX_ENTRIES, IfaceConfig, LOCAL_ADDR_ENTRIES, LocalAddrKey,
    MAX_IFACES, REASON_ENTRIES, STATS_ENTRIES,
    acl::{
        ADDR_CACHE_ENTRIES, AclConfig, AddrCacheEntry, Bitmap, CACHE_ENTRIES, CacheEntry,
        DPORT_QUADS, LENSETS, LenSet, MAX_PHASE_GROUPS, PHASE_CELLS, PREFIX_BUCKET_BITS,
        PREFIX_BUCKETS, Pair, PhaseGroup, PrefixBucket, Quad, RULE_BITS, RULE_COUNTERS, RuleInfo,
        SPORT_QUADS, V4_TBL24_PAIRS, V6_BLOCKS, V6Block, V6Bucket, WALK_ADDR_CLASSES,
        WALK_PORT_CLASSES, cache_stat,
    },
    lb::{
        Backend, DECAP_STAT_ENTRIES, DEFAULT_RING_SERVICES, DEFAULT_RING_SIZE, LbConfig,
        MAX_BACKENDS, MAX_SERVICES, PROG_SLOTS, SERVICE_STAT_ENTRIES, ServiceInfo, ServiceKey,
        ring_entries,
    },
    limit::{Bucket, BucketKey, DEFAULT_BUCKETS, LIMIT_STAT_ENTRIES, RULE_SLOTS, SyncookieConfig},
};

use crate::handoff::{DdosCtx, Fields, NextHop, Pending, SteerCtx, SynScratch};

/// `BPF_F_MMAPABLE`: the control plane writes these arrays through mmap.
const MMAP: u32 = 1 << 10;

/// Index bits of the long-prefix tables (`XG_PREFIXES_*` hold `1 << bits`
/// buckets): a read-only global the loader sets to the size it gives those
/// maps (`xdpgate_common::acl::PREFIX_BITS_GLOBAL`, `[acl] prefix_slots`),
/// so the verifier sees a constant. The default is the largest table.
#[unsafe(no_mangle)]
static XG_PREFIX_BUCKET_BITS: u32 = PREFIX_BUCKET_BITS;

/// The index bits of the long-prefix tables ([`XG_PREFIX_BUCKET_BITS`]),
/// read volatile so the compiler cannot fold in the default.
#[inline(always)]
pub(crate) fn prefix_bucket_bits() -> u32 {
    // SAFETY: a read of an initialised static through a valid pointer.
    unsafe { core::ptr::read_volatile(&raw const XG_PREFIX_BUCKET_BITS) }
}

/// Interfaces the daemon attached to, by ifindex: counter slot and flags.
#[map(name = "XG_IFACES")]
pub(crate) static IFACES: HashMap<u32, IfaceConfig> = HashMap::with_max_entries(MAX_IFACES, 0);

/// `IFACES`' entries for ifindexes below `IFACE_INDEX_ENTRIES`, by index
/// (zero: not registered); the per-packet lookup (`stats::iface`).
#[map(name = "XG_IFACE_INDEX")]
pub(crate) static IFACE_INDEX: Array<IfaceConfig> = Array::with_max_entries(IFACE_INDEX_ENTRIES, 0);

/// Per-CPU copy of the receiving interface's configuration (`stats::iface`
/// launders it through here).
#[map(name = "XG_IFACE_SCRATCH")]
pub(crate) static IFACE_SCRATCH: PerCpuArray<IfaceConfig> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU packet and byte counters by interface slot, family and action.
#[map(name = "XG_STATS")]
pub(crate) static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);

/// Per-CPU drop counters by interface slot and drop reason.
///
/// Malformed frames an interface passes are counted here too.
#[map(name = "XG_REASONS")]
pub(crate) static REASONS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_ENTRIES, 0);

/// The live ACL generation.
#[map(name = "XG_ACL_CONFIG")]
pub(crate) static ACL_CONFIG: Array<AclConfig> = Array::with_max_entries(1, 0);

/// Per-CPU packet and byte counters by rule counter slot.
///
/// Shared by both generations, so counters survive generation switches.
#[map(name = "XG_RULE_STATS")]
pub(crate) static RULE_STATS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(RULE_COUNTERS, 0);

/// Per-CPU copy of the classifier's input (`handoff::Fields`, `acl::classify`).
#[map(name = "XG_SCRATCH")]
pub(crate) static SCRATCH: PerCpuArray<Fields> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU cache of ACL decisions (`acl::resolve`).
///
/// Direct-mapped, by class combination and epoch; never read or written by
/// the control plane.
#[map(name = "XG_DECISIONS")]
pub(crate) static DECISIONS: PerCpuArray<CacheEntry> =
    PerCpuArray::with_max_entries(CACHE_ENTRIES, 0);

/// Per-CPU IPv6 address-class cache (`addrcache`).
///
/// Direct-mapped, by address and epoch; never read or written by the control
/// plane. 24 bytes per entry and possible CPU (192 KiB per CPU).
#[map(name = "XG_ADDR_CACHE")]
pub(crate) static ADDR_CACHE: PerCpuArray<AddrCacheEntry> =
    PerCpuArray::with_max_entries(ADDR_CACHE_ENTRIES, 0);

/// Per-CPU decision-cache and address-cache hit and miss counters
/// (`acl::cache_stat`).
#[map(name = "XG_CACHE_STATS")]
pub(crate) static CACHE_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(cache_stat::ENTRIES, 0);

/// Per-CPU ids of one phased resolution (leaves, steps, the packet's raw
/// leaf ids and the result so far).
///
/// See `acl::phased`: a step's operands are data, and a map value may be
/// indexed by a bounded variable where a stack slot may not on 6.1.
#[map(name = "XG_PHASE_IDS")]
pub(crate) static PHASE_IDS: PerCpuArray<[u32; 32]> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU word the prefix-length search passes its probe index through.
///
/// See `acl::search`.
#[map(name = "XG_PROBE")]
pub(crate) static PROBE: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// `BPF_F_NO_PREALLOC`: hash entries are allocated on insert, so an unused
/// capacity costs no memory.
const NO_PREALLOC: u32 = 1 << 0;

/// Addresses bound to each interface slot (`bind::unbound`).
///
/// Written by the control plane's binding manager.
#[map(name = "XG_LOCAL_ADDRS")]
pub(crate) static LOCAL_ADDRS: HashMap<LocalAddrKey, u32> =
    HashMap::with_max_entries(LOCAL_ADDR_ENTRIES, NO_PREALLOC);

/// Per-CPU slot the local-address key is built in (`bind::unbound`).
#[map(name = "XG_BIND_KEY")]
pub(crate) static BIND_KEY: PerCpuArray<LocalAddrKey> = PerCpuArray::with_max_entries(1, 0);

/// Whether drops are reported as datapath events, and one in how many.
///
/// Read on the drop path only (`events::dropped`).
#[map(name = "XG_EVENT_CONFIG")]
pub(crate) static EVENT_CONFIG: Array<EventConfig> = Array::with_max_entries(1, 0);

/// Per-CPU event sampling state and the drop being reported (`handoff::Pending`).
///
/// See `events::dropped`; never read or written by the control plane.
#[map(name = "XG_EVENT_SAMPLE")]
pub(crate) static EVENT_SAMPLE: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

/// Tail-call targets: `lb::PROG_STEER` is the steering program,
/// `lb::PROG_DDOS` the DDoS program (limits and SYN cookies).
#[map(name = "XG_PROGS")]
pub(crate) static PROGS: ProgramArray = ProgramArray::with_max_entries(PROG_SLOTS, 0);

/// Per-prefix limit buckets, SYN-ACK reflector buckets and kernel-refresh
/// stamps (`limit`, `syncookie`). Resized by the control plane at load time.
#[map(name = "XG_LIMIT_BUCKETS")]
pub(crate) static LIMIT_BUCKETS: LruHashMap<BucketKey, Bucket> =
    LruHashMap::with_max_entries(DEFAULT_BUCKETS, 0);

/// Rule-wide limit buckets by rule counter slot (never evicted).
#[map(name = "XG_LIMIT_RULE")]
pub(crate) static LIMIT_RULE: Array<Bucket> = Array::with_max_entries(RULE_SLOTS, 0);

/// Per-CPU per-rule counters of limits and SYN cookies (`limit::rule_stat`).
#[map(name = "XG_LIMIT_STATS")]
pub(crate) static LIMIT_STATS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(LIMIT_STAT_ENTRIES, 0);

/// The SYN-cookie path's settings (written by the daemon after it checked
/// the kernel and its sysctls).
#[map(name = "XG_SYNCOOKIE")]
pub(crate) static SYNCOOKIE: Array<SyncookieConfig> = Array::with_max_entries(1, 0);

/// Per-CPU hand-off to the tail-called DDoS program (`handoff::DdosCtx`).
#[map(name = "XG_DDOS_CTX")]
pub(crate) static DDOS_CTX: PerCpuArray<DdosCtx> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU copy of the headers the SYN-cookie helpers read and the reply
/// being built (`handoff::SynScratch`); datapath only.
#[map(name = "XG_SYN_SCRATCH")]
pub(crate) static SYN_SCRATCH: PerCpuArray<SynScratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU bucket key being built (`limit`); datapath only.
#[map(name = "XG_LIMIT_KEY")]
pub(crate) static LIMIT_KEY: PerCpuArray<BucketKey> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU hand-off to the tail-called steering program (`handoff::SteerCtx`).
#[map(name = "XG_STEER_CTX")]
pub(crate) static STEER_CTX: PerCpuArray<SteerCtx> = PerCpuArray::with_max_entries(1, 0);

/// Load-balanced services by (VIP, protocol, port).
#[map(name = "XG_LB_SERVICES")]
pub(crate) static LB_SERVICES: HashMap<ServiceKey, ServiceInfo> =
    HashMap::with_max_entries(MAX_SERVICES, 0);

/// Maglev rings of backend slots, two halves per service.
///
/// Resized by the control plane at load time.
#[map(name = "XG_LB_RINGS")]
pub(crate) static LB_RINGS: Array<u32> =
    Array::with_max_entries(ring_entries(DEFAULT_RING_SERVICES, DEFAULT_RING_SIZE), MMAP);

/// Backends by slot.
#[map(name = "XG_LB_BACKENDS")]
pub(crate) static LB_BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Per-CPU packets and bytes sent to each backend slot.
#[map(name = "XG_LB_BACKEND_STATS")]
pub(crate) static LB_BACKEND_STATS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Per-CPU next-hop cache by backend slot (`handoff::NextHop`).
///
/// The last successful `bpf_fib_lookup` to the backend, used while the
/// routing generation ([`LB_ROUTE_GEN`]) is the one it was made in and for
/// at most `HOP_LIFETIME_JIFFIES` (`steer::nexthop`) instead of a lookup per
/// packet; never read or written by the control plane. 56 bytes per slot
/// and possible CPU (3.5 MiB per CPU).
#[map(name = "XG_LB_NEXTHOP")]
pub(crate) static LB_NEXTHOP: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// The routing generation (one `u64`): the daemon adds one whenever the
/// kernel reports a route, neighbour, link, address or rule change, and once
/// a second; a cached next hop is valid only in the generation it was
/// resolved in. Written by the daemon through mmap.
#[map(name = "XG_LB_ROUTE_GEN")]
pub(crate) static LB_ROUTE_GEN: Array<u64> = Array::with_max_entries(1, MMAP);

/// Per-CPU per-service counters (`lb::service_stat_index`).
#[map(name = "XG_LB_SERVICE_STATS")]
pub(crate) static LB_SERVICE_STATS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(SERVICE_STAT_ENTRIES, 0);

/// Outer source prefixes and TTL of encapsulated packets.
#[map(name = "XG_LB_CONFIG")]
pub(crate) static LB_CONFIG: Array<LbConfig> = Array::with_max_entries(1, 0);

/// Outer destinations the decapsulator accepts, per interface slot.
#[map(name = "XG_DECAP_DSTS")]
pub(crate) static DECAP_DSTS: HashMap<LocalAddrKey, u32> =
    HashMap::with_max_entries(65_536, NO_PREALLOC);

/// Per-CPU decapsulated packets per interface slot and outer/inner family.
#[map(name = "XG_DECAP_STATS")]
pub(crate) static DECAP_STATS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(DECAP_STAT_ENTRIES, 0);

/// Declares the ACL tables of both generations from one list: the
/// [`Generation`] trait with one accessor per table, the maps of generation
/// 0 (module `gen0`, names with `_0`) and 1 (`gen1`, `_1`), both the same
/// type and size, and `Gen0`/`Gen1` implementing the trait.
macro_rules! acl_generations {
    ($(
        $(#[doc = $doc:literal])+
        $table:ident / $static:ident: Array<$value:ty>[$entries:expr] = $name0:literal, $name1:literal;
    )*) => {
        /// One generation of the ACL tables.
        pub(crate) trait Generation {
            $(
                $(#[doc = $doc])+
                fn $table() -> &'static Array<$value>;
            )*
        }

        /// The maps of generation 0.
        mod gen0 {
            use super::*;
            $(
                #[doc = concat!("Generation 0:", $($doc, "\n"),+)]
                #[map(name = $name0)]
                pub(super) static $static: Array<$value> = Array::with_max_entries($entries, MMAP);
            )*
        }

        /// The maps of generation 1.
        mod gen1 {
            use super::*;
            $(
                #[doc = concat!("Generation 1:", $($doc, "\n"),+)]
                #[map(name = $name1)]
                pub(super) static $static: Array<$value> = Array::with_max_entries($entries, MMAP);
            )*
        }

        /// Generation 0.
        pub(crate) struct Gen0;

        impl Generation for Gen0 {
            $(
                #[inline(always)]
                fn $table() -> &'static Array<$value> {
                    &gen0::$static
                }
            )*
        }

        /// Generation 1.
        pub(crate) struct Gen1;

        impl Generation for Gen1 {
            $(
                #[inline(always)]
                fn $table() -> &'static Array<$value> {
                    &gen1::$static
                }
            )*
        }
    };
}

acl_generations! {
    /// Rule bitmap per interface slot.
    bm_iface / BM_IFACE: Array<Bitmap>[MAX_IFACES] = "XG_BM_IFACE_0", "XG_BM_IFACE_1";
    /// Rule bitmap per IP protocol.
    bm_proto / BM_PROTO: Array<Bitmap>[256] = "XG_BM_PROTO_0", "XG_BM_PROTO_1";
    /// Rule bitmap per source-port class.
    bm_sport / BM_SPORT: Array<Bitmap>[WALK_PORT_CLASSES] = "XG_BM_SPORT_0", "XG_BM_SPORT_1";
    /// Rule bitmap per destination-port/ICMP class.
    bm_dport / BM_DPORT: Array<Bitmap>[WALK_PORT_CLASSES] = "XG_BM_DPORT_0", "XG_BM_DPORT_1";
    /// Rule bitmap per address class, source side.
    bm_src / BM_SRC: Array<Bitmap>[WALK_ADDR_CLASSES] = "XG_BM_SRC_0", "XG_BM_SRC_1";
    /// Rule bitmap per address class, destination side.
    bm_dst / BM_DST: Array<Bitmap>[WALK_ADDR_CLASSES] = "XG_BM_DST_0", "XG_BM_DST_1";
    /// Source-port class per (group, port), four per element.
    sport_class / SPORT_CLASS: Array<Quad>[SPORT_QUADS] = "XG_SPORT_CLASS_0", "XG_SPORT_CLASS_1";
    /// Destination-port/ICMP class per (group, key), four per element.
    dport_class / DPORT_CLASS: Array<Quad>[DPORT_QUADS] = "XG_DPORT_CLASS_0", "XG_DPORT_CLASS_1";
    /// IPv4 first level (top 24 bits): class or v4_entry, two per element.
    v4_tbl24 / V4_TBL24: Array<Pair>[V4_TBL24_PAIRS] = "XG_V4_TBL24_0", "XG_V4_TBL24_1";
    /// IPv6 top-16 buckets.
    v6_buckets / V6_BUCKETS: Array<V6Bucket>[65536] = "XG_V6_BUCKETS_0", "XG_V6_BUCKETS_1";
    /// IPv6 trie blocks under the top-16 buckets (`V6_CHILD` entries).
    v6_blocks / V6_BLOCK_TABLE: Array<V6Block>[V6_BLOCKS] = "XG_V6_BLOCKS_0", "XG_V6_BLOCKS_1";
    /// Prefix-length sets of both families.
    lensets / LENSETS_MAP: Array<LenSet>[LENSETS] = "XG_LENSETS_0", "XG_LENSETS_1";
    /// Long prefixes (IPv4 > /24, IPv6 > /16) and binary-search markers, in a
    /// bucketized cuckoo table (`prefix_buckets`).
    prefixes / PREFIXES: Array<PrefixBucket>[PREFIX_BUCKETS] = "XG_PREFIXES_0", "XG_PREFIXES_1";
    /// Phased resolution: header and table offsets per rule group (group 0's
    /// `groups` is 0 when the generation walks the bitmaps instead).
    phase_groups / PHASE_GROUPS: Array<PhaseGroup>[MAX_PHASE_GROUPS as u32] = "XG_PHASE_GROUPS_0", "XG_PHASE_GROUPS_1";
    /// Phased resolution: every remap and step table, `u16` cells four per element.
    phase_cells / PHASE_CELL_TABLE: Array<Quad>[PHASE_CELLS / 4] = "XG_PHASE_CELLS_0", "XG_PHASE_CELLS_1";
    /// Verdict and counter slot per rule index.
    rule_info / RULE_INFO: Array<RuleInfo>[RULE_BITS] = "XG_RULE_INFO_0", "XG_RULE_INFO_1";
}

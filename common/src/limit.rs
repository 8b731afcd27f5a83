//! ABI of DDoS defence: the rate-limit action of rules and the SYN-cookie
//! path (see `docs/design/ddos.md`).
//!
//! A rule's [`RuleInfo`](crate::acl::RuleInfo) carries [`RULE_LIMIT`] and a
//! [`LimitSpec`] when it has a `limit`, and [`RULE_SYNCOOKIE`] when it
//! answers SYNs with cookies. Buckets are GCRA states ([`Bucket`]): one
//! "theoretical arrival time" per dimension (packets, bytes), advanced with
//! compare-and-swap by every CPU that admits a packet, so the rate holds
//! across CPUs. Rule-wide buckets live in an array indexed by the rule's
//! counter slot ([`maps::LIMIT_RULE`]), never evicted; per-prefix buckets in
//! an LRU hash ([`maps::LIMIT_BUCKETS`]) whose size the configuration sets.

use crate::MAX_IFACES;

/// Map names of this feature (pinned like every other map).
pub mod maps {
    /// `LruHashMap<BucketKey, Bucket>`: per-prefix buckets (source or
    /// destination aggregated to the rule's prefix lengths), the SYN-ACK
    /// reflector buckets and the kernel-refresh stamps of the SYN-cookie path.
    /// Its size is set at load time from the configuration.
    pub const LIMIT_BUCKETS: &str = "XG_LIMIT_BUCKETS";
    /// `Array<Bucket>`: the bucket of each rule-wide limit, by rule counter
    /// slot (an LRU full of attacker buckets cannot evict these).
    pub const LIMIT_RULE: &str = "XG_LIMIT_RULE";
    /// `PerCpuArray<Counter>`: per rule counter slot, the packets and bytes
    /// of each [`rule_stat`] kind ([`rule_stat_index`]).
    pub const LIMIT_STATS: &str = "XG_LIMIT_STATS";
    /// `Array<SyncookieConfig>` (one entry): the SYN-cookie path's settings.
    pub const SYNCOOKIE: &str = "XG_SYNCOOKIE";
}

/// Default size of [`maps::LIMIT_BUCKETS`] (entries) when the configuration
/// names none.
pub const DEFAULT_BUCKETS: u32 = 65_536;
/// Smallest and largest configurable size of [`maps::LIMIT_BUCKETS`].
pub const MIN_BUCKETS: u32 = 1024;
/// See [`MIN_BUCKETS`].
pub const MAX_BUCKETS: u32 = 1 << 24;

/// [`RuleInfo::flags`](crate::acl::RuleInfo::flags): the rule has a limit
/// ([`RuleInfo::limit`](crate::acl::RuleInfo::limit)).
pub const RULE_LIMIT: u32 = 1 << 0;
/// [`RuleInfo::flags`](crate::acl::RuleInfo::flags): TCP packets the rule
/// allows go through the SYN-cookie path.
pub const RULE_SYNCOOKIE: u32 = 1 << 1;

/// [`LimitSpec::key`] values: what one bucket is shared by.
pub mod key {
    /// One bucket for the whole rule.
    pub const RULE: u32 = 0;
    /// One bucket per source prefix (the rule's prefix lengths).
    pub const SRC: u32 = 1;
    /// One bucket per destination prefix.
    pub const DST: u32 = 2;
}

/// Fixed-point shift of [`LimitSpec::pkt_interval`] and
/// [`LimitSpec::byte_interval`] (nanoseconds times 2^16).
pub const INTERVAL_SHIFT: u32 = 16;
/// Nanoseconds per second.
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// A limit as the datapath applies it (GCRA: a packet is admitted when the
/// bucket's theoretical arrival time, advanced by the packet's cost, is at
/// most `tolerance` nanoseconds ahead of now).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitSpec {
    /// [`key`] value.
    pub key: u32,
    /// Source or destination prefix length of IPv4 buckets (1..=32).
    pub v4_prefix: u32,
    /// Source or destination prefix length of IPv6 buckets (1..=128).
    pub v6_prefix: u32,
    /// Zero.
    pub _pad: u32,
    /// Nanoseconds per packet, times 2^[`INTERVAL_SHIFT`]; 0: no packet rate.
    pub pkt_interval: u64,
    /// Packet burst as nanoseconds of credit (burst x interval).
    pub pkt_tolerance: u64,
    /// Nanoseconds per byte, times 2^[`INTERVAL_SHIFT`]; 0: no byte rate.
    pub byte_interval: u64,
    /// Byte burst as nanoseconds of credit.
    pub byte_tolerance: u64,
}

impl LimitSpec {
    /// The spec of a packet rate and burst and/or a byte rate and burst
    /// (`None` for a dimension without a limit). Rates must be non-zero.
    pub const fn new(
        key: u32,
        v4_prefix: u32,
        v6_prefix: u32,
        packets: Option<(u64, u64)>,
        bytes: Option<(u64, u64)>,
    ) -> LimitSpec {
        let (pkt_interval, pkt_tolerance) = match packets {
            Some((rate, burst)) => interval_and_tolerance(rate, burst),
            None => (0, 0),
        };
        let (byte_interval, byte_tolerance) = match bytes {
            Some((rate, burst)) => interval_and_tolerance(rate, burst),
            None => (0, 0),
        };
        LimitSpec {
            key,
            v4_prefix,
            v6_prefix,
            _pad: 0,
            pkt_interval,
            pkt_tolerance,
            byte_interval,
            byte_tolerance,
        }
    }
}

/// Fixed-point interval of `rate` units per second and the tolerance of a
/// burst of `burst` units (saturating: the model refuses bursts longer than
/// [`MAX_BURST_SECONDS`] of the rate before it gets here).
const fn interval_and_tolerance(rate: u64, burst: u64) -> (u64, u64) {
    let rate = if rate == 0 { 1 } else { rate };
    let interval = ((NS_PER_SEC as u128) << INTERVAL_SHIFT) / rate as u128;
    let tolerance = (interval * burst as u128) >> INTERVAL_SHIFT;
    let tolerance = if tolerance > u32::MAX as u128 * NS_PER_SEC as u128 {
        u32::MAX as u64 * NS_PER_SEC
    } else {
        tolerance as u64
    };
    (interval as u64, tolerance)
}

/// Longest burst a limit may name, in seconds of its rate.
pub const MAX_BURST_SECONDS: u64 = 3600;

/// Most packets or bytes per second a limit may name (and the largest burst).
pub const MAX_RATE: u64 = 1_000_000_000_000;

/// One bucket: GCRA theoretical arrival times in `bpf_ktime_get_ns` time.
/// All zero is a full bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Of the packet dimension.
    pub tat_packets: u64,
    /// Of the byte dimension.
    pub tat_bytes: u64,
}

/// [`BucketKey::kind`] values.
pub mod kind {
    /// A rule's per-source bucket, IPv4.
    pub const SRC4: u32 = 1;
    /// A rule's per-source bucket, IPv6.
    pub const SRC6: u32 = 2;
    /// A rule's per-destination bucket, IPv4.
    pub const DST4: u32 = 3;
    /// A rule's per-destination bucket, IPv6.
    pub const DST6: u32 = 4;
    /// SYN-ACKs sent to an IPv4 prefix (the reflector limit).
    pub const SYNACK4: u32 = 5;
    /// SYN-ACKs sent to an IPv6 prefix.
    pub const SYNACK6: u32 = 6;
    /// When a SYN to this IPv4 destination and port last went to the kernel
    /// (`Bucket::tat_packets`; see [`SyncookieConfig::refresh_ns`]).
    pub const REFRESH4: u32 = 7;
    /// As [`REFRESH4`], IPv6.
    pub const REFRESH6: u32 = 8;
}

/// Key of [`maps::LIMIT_BUCKETS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BucketKey {
    /// The rule's counter slot (the SYN-cookie rule's for `SYNACK*` and
    /// `REFRESH*`).
    pub slot: u32,
    /// A [`kind`] value.
    pub kind: u32,
    /// The address masked to the prefix length, big-endian words (IPv4 in
    /// word 0); for `REFRESH*` the destination port is in the low 16 bits
    /// of [`BucketKey::port`].
    pub addr: [u32; 4],
    /// Destination port (`REFRESH*` only), else zero.
    pub port: u32,
}

/// Counter kinds per rule in [`maps::LIMIT_STATS`].
pub mod rule_stat {
    /// Packets over the rule's limit (dropped, reason `rate_limited`).
    pub const LIMITED: u32 = 0;
    /// SYN-ACKs with a cookie sent (`XDP_TX`).
    pub const COOKIES_SENT: u32 = 1;
    /// ACKs with a valid cookie passed to the kernel.
    pub const COOKIE_ACKS: u32 = 2;
    /// Non-SYN packets neither of an established connection nor a valid
    /// cookie ACK (dropped, reason `bad_cookie`).
    pub const BAD_COOKIES: u32 = 3;
    /// SYNs not answered because the reflector limit was reached (dropped,
    /// reason `synack_limited`).
    pub const SYNACKS_LIMITED: u32 = 4;
    /// SYNs passed to the kernel so that its listener accepts cookies (see
    /// [`SyncookieConfig::refresh_ns`](super::SyncookieConfig::refresh_ns)).
    pub const KERNEL_SYNS: u32 = 5;
    /// Kinds per rule.
    pub const ENTRIES: u32 = 6;
    /// Names in index order (CLI and metrics).
    pub const NAMES: [&str; ENTRIES as usize] = [
        "limited",
        "cookies_sent",
        "cookie_acks",
        "bad_cookies",
        "synacks_limited",
        "kernel_syns",
    ];
}

/// Rule counter slots (`acl::RULE_COUNTERS`, restated here so that this
/// module does not import `acl`, which imports it; `tests` in `lib.rs`
/// checks they agree).
pub const RULE_SLOTS: u32 = 12_288 + MAX_IFACES;
/// Entries of [`maps::LIMIT_STATS`].
pub const LIMIT_STAT_ENTRIES: u32 = RULE_SLOTS * rule_stat::ENTRIES;

/// Index into [`maps::LIMIT_STATS`] of rule counter slot `counter`'s `kind`.
#[inline(always)]
pub const fn rule_stat_index(counter: u32, kind: u32) -> u32 {
    counter * rule_stat::ENTRIES + kind
}

/// [`SyncookieConfig::flags`]: the daemon checked the kernel and its
/// sysctls; without it SYN-cookie rules drop every packet they match that
/// is not of an established connection (reason `bad_cookie`).
pub const SYNCOOKIE_ENABLED: u32 = 1 << 0;
/// [`SyncookieConfig::flags`]: echo the client's timestamps and encode
/// window scaling and SACK in ours (`net.ipv4.tcp_timestamps = 2`).
pub const SYNCOOKIE_TIMESTAMPS: u32 = 1 << 1;
/// [`SyncookieConfig::flags`]: offer SACK (`net.ipv4.tcp_sack = 1`).
pub const SYNCOOKIE_SACK: u32 = 1 << 2;
/// [`SyncookieConfig::flags`]: offer window scaling
/// (`net.ipv4.tcp_window_scaling = 1`).
pub const SYNCOOKIE_WSCALE: u32 = 1 << 3;

/// Value of [`maps::SYNCOOKIE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncookieConfig {
    /// `SYNCOOKIE_*` bits.
    pub flags: u32,
    /// The window scale the kernel's listeners use (what its own SYN-ACK
    /// would carry: `ilog2(max(tcp_rmem[2], rmem_max)) - 15`, at most 14).
    pub wscale: u32,
    /// The SYN-ACK window (unscaled, as in any SYN-ACK).
    pub window: u32,
    /// Zero.
    pub _pad: u32,
    /// A SYN to a destination address and port whose last SYN went to the
    /// kernel longer ago than this goes to the kernel (which answers it
    /// with its own cookie under `tcp_syncookies = 2`): the kernel checks
    /// cookie ACKs only on listeners that sent a cookie in the last two
    /// minutes.
    pub refresh_ns: u64,
    /// The reflector limit: SYN-ACKs per source prefix (key
    /// [`key::SRC`], the prefix lengths of this spec).
    pub synack: LimitSpec,
}

/// Length of the TCP header of a SYN-ACK xdpgate sends: 20 bytes and 20 of
/// options (MSS, SACK permitted, timestamps, window scale, padded with NOPs).
pub const SYNACK_TCP_LEN: usize = 40;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_fixed() {
        assert_eq!(size_of::<LimitSpec>(), 48);
        assert_eq!(size_of::<Bucket>(), 16);
        assert_eq!(size_of::<BucketKey>(), 28);
        assert_eq!(size_of::<SyncookieConfig>(), 72);
    }

    #[test]
    fn a_spec_spends_its_burst_then_one_interval_per_packet() {
        let s = LimitSpec::new(key::SRC, 24, 48, Some((1000, 10)), Some((125_000, 3000)));
        assert_eq!(s.pkt_interval >> INTERVAL_SHIFT, 1_000_000);
        assert_eq!(s.pkt_tolerance, 10_000_000);
        assert_eq!(s.byte_interval >> INTERVAL_SHIFT, 8000);
        assert_eq!(s.byte_tolerance, 24_000_000);
        let none = LimitSpec::new(key::RULE, 32, 64, Some((1, 1)), None);
        assert_eq!(none.byte_interval, 0);
        assert_eq!(none.pkt_tolerance, NS_PER_SEC);
        // The largest rate and burst stay in range.
        let max = LimitSpec::new(key::RULE, 32, 64, Some((MAX_RATE, MAX_RATE)), Some((1, 1)));
        assert!(max.pkt_interval > 0);
    }

    #[test]
    fn stat_indices_are_dense() {
        assert_eq!(rule_stat_index(0, 0), 0);
        assert_eq!(
            rule_stat_index(RULE_SLOTS - 1, rule_stat::ENTRIES - 1),
            LIMIT_STAT_ENTRIES - 1
        );
    }
}

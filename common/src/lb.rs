//! ABI of the load balancer and the decapsulator: services, backends, Maglev
//! rings, the flow hash both sides compute, and the steering counters.
//!
//! The datapath looks a packet up in [`maps::LB_SERVICES`](crate::maps::LB_SERVICES)
//! by ([`ServiceKey`]: VIP, protocol, destination port), first with the
//! packet's port and then with port 0 (a service on all ports). The
//! [`ServiceInfo`] found names the live half of the service's Maglev ring in
//! [`maps::LB_RINGS`](crate::maps::LB_RINGS); the ring entry at
//! `flow_hash % ring_size` is a backend slot of
//! [`maps::LB_BACKENDS`](crate::maps::LB_BACKENDS). Each service has two ring
//! halves: the control plane writes the idle half and then replaces the
//! service's hash-map entry (an atomic replace), so a packet sees either the old
//! ring or the new one, never a mix.

/// Service slots: capacity of [`maps::LB_SERVICES`](crate::maps::LB_SERVICES)
/// and of the per-service counters.
pub const MAX_SERVICES: u32 = 256;

/// Backend slots, capacity of [`maps::LB_BACKENDS`](crate::maps::LB_BACKENDS).
/// Slot 0 is never used: a ring entry of 0 means "no backend".
pub const MAX_BACKENDS: u32 = 65_536;

/// Default (and largest) Maglev ring size: a prime, as Maglev requires.
pub const DEFAULT_RING_SIZE: u32 = 65_537;

/// Service slots whose rings the object's [`maps::LB_RINGS`](crate::maps::LB_RINGS)
/// holds by default (the daemon can resize the map at load time).
pub const DEFAULT_RING_SERVICES: u32 = 16;

/// Entries of [`maps::LB_RINGS`](crate::maps::LB_RINGS) for `services`
/// service slots of rings of `ring_size`: two halves per service.
pub const fn ring_entries(services: u32, ring_size: u32) -> u32 {
    services * 2 * ring_size
}

/// Index in [`maps::LB_RINGS`](crate::maps::LB_RINGS) of the first entry of
/// half `half` (0 or 1) of the ring of service slot `slot`.
pub const fn ring_base(slot: u32, half: u32, ring_size: u32) -> u32 {
    (slot * 2 + half) * ring_size
}

/// [`ServiceKey::family`]: IPv4 (same value as [`Family::Ipv4`](crate::Family)).
pub const FAMILY_V4: u8 = 0;
/// [`ServiceKey::family`]: IPv6 (same value as [`Family::Ipv6`](crate::Family)).
pub const FAMILY_V6: u8 = 1;

/// Key of [`maps::LB_SERVICES`](crate::maps::LB_SERVICES).
///
/// The address is stored like [`LocalAddrKey::addr`](crate::LocalAddrKey):
/// network byte order, an IPv4 address in the first 4 bytes and zeros after.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// The virtual IP, big-endian, IPv4 zero-padded.
    pub addr: [u8; 16],
    /// Destination port in network byte order; 0: every port.
    pub port: u16,
    /// IP protocol (6 TCP, 17 UDP, 132 SCTP).
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}

/// [`ServiceInfo::flags`]: forward by encapsulation (IPIP, IP6IP6,
/// IPv4-in-IPv6 or IPv6-in-IPv4, chosen by the families of the VIP and of the
/// backend). The default.
pub const SERVICE_ENCAP: u32 = 0;
/// [`ServiceInfo::flags`]: forward by L2 direct server return: rewrite the
/// Ethernet addresses to the backend's (which must be on-link) and leave the
/// packet unchanged.
pub const SERVICE_L2DSR: u32 = 1 << 0;

/// [`ServiceInfo::flags`]: the service's flow hash is [`flow_hash_fast`];
/// without it, [`flow_hash`] (MurmurHash3 over ten words), the only hash
/// before this flag existed. A service entry pinned by an older datapath
/// lacks the flag, so a datapath upgraded in place keeps placing its flows
/// where they were (docs/design/lb.md, "Hashes").
pub const SERVICE_HASH_FAST: u32 = 1 << 1;

/// The flow hash a service uses ([`SERVICE_HASH_FAST`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FlowHash {
    /// [`flow_hash`]: MurmurHash3_x86_32 over ten words; services installed
    /// before [`SERVICE_HASH_FAST`] existed.
    Murmur3,
    /// [`flow_hash_fast`]: multiply-xorshift rounds over the words of the
    /// packet's family; what a new service gets.
    #[default]
    Fast,
}

impl FlowHash {
    /// The hash a service entry's `flags` name.
    pub const fn of_flags(flags: u32) -> FlowHash {
        if flags & SERVICE_HASH_FAST != 0 {
            FlowHash::Fast
        } else {
            FlowHash::Murmur3
        }
    }

    /// The [`ServiceInfo::flags`] bit of this hash.
    pub const fn flag(self) -> u32 {
        match self {
            FlowHash::Murmur3 => 0,
            FlowHash::Fast => SERVICE_HASH_FAST,
        }
    }

    /// Name in the configuration and the status (`murmur3`, `fast`).
    pub const fn name(self) -> &'static str {
        match self {
            FlowHash::Murmur3 => "murmur3",
            FlowHash::Fast => "fast",
        }
    }

    /// This hash of a flow (`v4`: the addresses are IPv4, in word 0).
    #[inline(always)]
    pub fn hash(
        self,
        v4: bool,
        src: &[u32; 4],
        dst: &[u32; 4],
        sport: u16,
        dport: u16,
        proto: u8,
    ) -> u32 {
        match self {
            FlowHash::Murmur3 => flow_hash(src, dst, sport, dport, proto),
            FlowHash::Fast => flow_hash_fast(v4, src, dst, sport, dport, proto),
        }
    }
}

/// Value of [`maps::LB_SERVICES`](crate::maps::LB_SERVICES).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Service slot, `0..MAX_SERVICES`: index of its counters.
    pub slot: u32,
    /// `SERVICE_*` flags.
    pub flags: u32,
    /// Index in [`maps::LB_RINGS`](crate::maps::LB_RINGS) of the live ring
    /// half's first entry ([`ring_base`]).
    pub ring_base: u32,
    /// Entries in the ring (a prime); 0 means the service has no backend and
    /// its packets are dropped ([`DropReason::LbNoBackend`](crate::DropReason)).
    pub ring_size: u32,
}

/// Value of [`maps::LB_BACKENDS`](crate::maps::LB_BACKENDS): one backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// The backend's address, big-endian, IPv4 zero-padded.
    pub addr: [u8; 16],
    /// [`FAMILY_V4`] or [`FAMILY_V6`] (as u32).
    pub family: u32,
    /// Reserved, zero.
    pub flags: u32,
}

/// Value of [`maps::LB_CONFIG`](crate::maps::LB_CONFIG) (one entry): the
/// outer source addresses of encapsulated packets.
///
/// The outer source is `src_v4` (or `src_v6`) with its last 32 bits ORed with
/// `flow_hash & mask_v4` (or `& mask_v6`), so packets of one flow share an
/// outer source and different flows spread over the backend's receive queues.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbConfig {
    /// IPv4 outer source prefix, big-endian (host bits zero).
    pub src_v4: [u8; 4],
    /// Host-bit mask of the IPv4 source prefix, host byte order.
    pub mask_v4: u32,
    /// IPv6 outer source prefix, big-endian (host bits zero).
    pub src_v6: [u8; 16],
    /// Host-bit mask of the last 32 bits of the IPv6 source prefix, host byte order.
    pub mask_v6: u32,
    /// Hop limit / TTL of the outer header.
    pub ttl: u32,
}

/// How long the steering program uses a cached next hop at most, in jiffies
/// (`bpf_jiffies64`): 1 s at `CONFIG_HZ=250`, 0.25 s at 1000, 2.5 s at 100.
/// Within it, a cached hop is used only while the routing generation
/// ([`maps::LB_ROUTE_GEN`](crate::maps::LB_ROUTE_GEN)) is the one it was
/// looked up in; the lifetime is what bounds a route change when no daemon
/// moves the generation.
pub const HOP_LIFETIME_JIFFIES: u64 = 250;

/// Default IPv4 outer source prefix (Katran's choice): 172.16.0.0/16.
pub const DEFAULT_SRC_V4: ([u8; 4], u8) = ([172, 16, 0, 0], 16);
/// Default IPv6 outer source prefix: 100::/64, the discard-only prefix of
/// RFC 6666 (the last 32 bits vary).
pub const DEFAULT_SRC_V6: ([u8; 16], u8) = ([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 64);
/// Default TTL / hop limit of outer headers.
pub const DEFAULT_OUTER_TTL: u32 = 64;

/// Per-service counters ([`maps::LB_SERVICE_STATS`](crate::maps::LB_SERVICE_STATS)):
/// index of a service slot's counter of `what`.
pub const fn service_stat_index(slot: u32, what: ServiceStat) -> u32 {
    slot * ServiceStat::COUNT + what as u32
}

/// What a per-service counter counts.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceStat {
    /// Packets forwarded straight out (XDP_TX or XDP_REDIRECT).
    Forwarded = 0,
    /// Packets encapsulated and handed to the kernel to forward because the
    /// next hop's neighbour entry was missing (the kernel resolves it).
    SlowPath = 1,
    /// Packets dropped (no backend, no route, too big).
    Dropped = 2,
}

impl ServiceStat {
    /// Number of per-service counters.
    pub const COUNT: u32 = 3;
    /// All, in index order.
    pub const ALL: [ServiceStat; 3] = [
        ServiceStat::Forwarded,
        ServiceStat::SlowPath,
        ServiceStat::Dropped,
    ];
    /// Snake-case name (metrics label).
    pub const fn name(self) -> &'static str {
        match self {
            ServiceStat::Forwarded => "forwarded",
            ServiceStat::SlowPath => "slow_path",
            ServiceStat::Dropped => "dropped",
        }
    }
}

/// Entries of [`maps::LB_SERVICE_STATS`](crate::maps::LB_SERVICE_STATS).
pub const SERVICE_STAT_ENTRIES: u32 = MAX_SERVICES * ServiceStat::COUNT;

/// Counters of the decapsulator ([`maps::DECAP_STATS`](crate::maps::DECAP_STATS),
/// per interface slot): index of a slot's counter of an outer/inner family pair.
/// `outer` and `inner` are [`FAMILY_V4`] or [`FAMILY_V6`].
pub const fn decap_stat_index(slot: u32, outer: u8, inner: u8) -> u32 {
    slot * 4 + (outer as u32) * 2 + inner as u32
}

/// Entries of [`maps::DECAP_STATS`](crate::maps::DECAP_STATS).
pub const DECAP_STAT_ENTRIES: u32 = crate::MAX_IFACES * 4;

/// Index in [`maps::PROGS`](crate::maps::PROGS) of the steering program.
pub const PROG_STEER: u32 = 0;
/// Index in [`maps::PROGS`](crate::maps::PROGS) of the DDoS program: rate
/// limits and SYN cookies (`crate::limit`).
pub const PROG_DDOS: u32 = 1;
/// Entries of [`maps::PROGS`](crate::maps::PROGS).
pub const PROG_SLOTS: u32 = 2;

/// Seed of [`flow_hash`].
pub const FLOW_HASH_SEED: u32 = 0x5847_4c42; // "XGLB"

/// MurmurHash3_x86_32 (Austin Appleby, public domain) of `words`, each taken
/// as one 32-bit block, with `seed`. This is the reference algorithm applied
/// to the little-endian bytes of `words`; the length mixed into the
/// finalisation is `4 * words.len()`.
#[inline(always)]
pub fn murmur3_32(words: &[u32], seed: u32) -> u32 {
    let mut h = seed;
    let mut i = 0;
    while i < words.len() {
        h = murmur3_round(h, words[i]);
        i += 1;
    }
    murmur3_finish(h, (words.len() * 4) as u32)
}

/// One MurmurHash3_x86_32 block round.
#[inline(always)]
pub const fn murmur3_round(h: u32, k: u32) -> u32 {
    let mut k = k.wrapping_mul(0xcc9e_2d51);
    k = k.rotate_left(15);
    k = k.wrapping_mul(0x1b87_3593);
    let h = h ^ k;
    h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

/// MurmurHash3_x86_32 finalisation (`len` in bytes).
#[inline(always)]
pub const fn murmur3_finish(h: u32, len: u32) -> u32 {
    let mut h = h ^ len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The flow hash that picks a packet's Maglev ring entry.
///
/// It is [`murmur3_32`] with seed [`FLOW_HASH_SEED`] over ten 32-bit words:
/// the source address (4 words), the destination address (4 words), each as
/// the address's big-endian bytes read as little-endian `u32`s (exactly how
/// the datapath loads them; an IPv4 address is word 0 and words 1-3 are zero),
/// then `sport << 16 | dport` (ports in host order), then `proto`.
#[inline(always)]
pub fn flow_hash(src: &[u32; 4], dst: &[u32; 4], sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h = FLOW_HASH_SEED;
    h = murmur3_round(h, src[0]);
    h = murmur3_round(h, src[1]);
    h = murmur3_round(h, src[2]);
    h = murmur3_round(h, src[3]);
    h = murmur3_round(h, dst[0]);
    h = murmur3_round(h, dst[1]);
    h = murmur3_round(h, dst[2]);
    h = murmur3_round(h, dst[3]);
    h = murmur3_round(h, ((sport as u32) << 16) | dport as u32);
    h = murmur3_round(h, proto as u32);
    murmur3_finish(h, 40)
}

/// Seed of [`flow_hash_fast`].
pub const FAST_HASH_SEED: u64 = 0x5847_4c42_4641_5354; // "XGLBFAST"

/// Multiplier of [`fast_round`]: 2^64 / golden ratio, odd.
const FAST_MUL: u64 = 0x9e37_79b9_7f4a_7c15;
/// Multiplier of [`fast_finish`] (MurmurHash3's `fmix64` second constant).
const FAST_FINISH_MUL: u64 = 0xc4ce_b9fe_1a85_ec53;

/// One round of [`flow_hash_fast`]: the word mixed in, one 64-bit multiply,
/// the high half folded into the low one.
#[inline(always)]
pub const fn fast_round(h: u64, w: u64) -> u64 {
    let h = (h ^ w).wrapping_mul(FAST_MUL);
    h ^ (h >> 32)
}

/// The finalisation of [`flow_hash_fast`]: one more multiply and fold, so
/// that every input bit reaches the low 32 bits (the flow label and the
/// outer source take the low bits).
#[inline(always)]
pub const fn fast_finish(h: u64) -> u32 {
    let h = h.wrapping_mul(FAST_FINISH_MUL);
    (h ^ (h >> 32)) as u32
}

/// Two 32-bit words as one 64-bit one (`hi` in the high half).
#[inline(always)]
const fn pair(hi: u32, lo: u32) -> u64 {
    ((hi as u64) << 32) | lo as u64
}

/// The fast flow hash ([`SERVICE_HASH_FAST`]): [`fast_round`]s from
/// [`FAST_HASH_SEED`] over the 64-bit words that exist for the family, then
/// [`fast_finish`]. The words are the same as [`flow_hash`]'s (addresses as
/// loaded: bytes in network order read as little-endian `u32`s; ports in
/// host order): IPv4 (`v4`), two rounds: `src[0] << 32 | dst[0]`, then
/// `(sport << 16 | dport) << 32 | proto`; IPv6, five rounds: the source's
/// words 0-1 and 2-3, the destination's words 0-1 and 2-3 (each pair the
/// first word high), then the ports and protocol word. Three multiplies for
/// IPv4 and six for IPv6, where [`flow_hash`] makes 32 (three per word, two
/// to finish).
#[inline(always)]
pub fn flow_hash_fast(
    v4: bool,
    src: &[u32; 4],
    dst: &[u32; 4],
    sport: u16,
    dport: u16,
    proto: u8,
) -> u32 {
    let last = pair(((sport as u32) << 16) | dport as u32, proto as u32);
    let mut h = FAST_HASH_SEED;
    if v4 {
        h = fast_round(h, pair(src[0], dst[0]));
    } else {
        h = fast_round(h, pair(src[0], src[1]));
        h = fast_round(h, pair(src[2], src[3]));
        h = fast_round(h, pair(dst[0], dst[1]));
        h = fast_round(h, pair(dst[2], dst[3]));
    }
    fast_finish(fast_round(h, last))
}

/// An address as [`flow_hash`] takes it: bytes in network order read as
/// little-endian words (IPv4 in word 0).
pub const fn addr_words(addr: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_le_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_le_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_le_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_le_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `flow_hash_fast` of 192.0.2.1:40000 -> 192.0.2.10:80/tcp, computed
    /// independently (a Python transcription of the definition).
    const KNOWN_FAST_V4: u32 = 0xae0a_2e4a;

    #[test]
    fn murmur3_reference_vectors() {
        // MurmurHash3_x86_32 reference values (SMHasher's verification set).
        assert_eq!(murmur3_32(&[], 0), 0);
        assert_eq!(murmur3_32(&[], 1), 0x514e_28b7);
        assert_eq!(murmur3_32(&[], 0xffff_ffff), 0x81f1_6f39);
        // "test" = 0x74736574 little-endian, seed 0: 0xba6bd213.
        assert_eq!(murmur3_32(&[u32::from_le_bytes(*b"test")], 0), 0xba6b_d213);
        // "aaaa", seed 0x9747b28c: 0x5a97808a.
        assert_eq!(
            murmur3_32(&[u32::from_le_bytes(*b"aaaa")], 0x9747_b28c),
            0x5a97_808a
        );
    }

    #[test]
    fn flow_hash_is_murmur3_of_the_ten_words() {
        let src = addr_words(&[192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let dst = addr_words(&[192, 0, 2, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let words = [
            src[0],
            src[1],
            src[2],
            src[3],
            dst[0],
            dst[1],
            dst[2],
            dst[3],
            (40000u32 << 16) | 80,
            6,
        ];
        assert_eq!(
            flow_hash(&src, &dst, 40000, 80, 6),
            murmur3_32(&words, FLOW_HASH_SEED)
        );
    }

    #[test]
    fn the_fast_hash_is_its_rounds_over_the_words_of_the_family() {
        let src = addr_words(&[192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let dst = addr_words(&[192, 0, 2, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let last = ((((40000u32 << 16) | 80) as u64) << 32) | 6;
        let h = fast_round(FAST_HASH_SEED, ((src[0] as u64) << 32) | dst[0] as u64);
        assert_eq!(
            flow_hash_fast(true, &src, &dst, 40000, 80, 6),
            fast_finish(fast_round(h, last))
        );
        let s6 = addr_words(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let d6 = addr_words(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20]);
        let mut h = FAST_HASH_SEED;
        for w in [
            ((s6[0] as u64) << 32) | s6[1] as u64,
            ((s6[2] as u64) << 32) | s6[3] as u64,
            ((d6[0] as u64) << 32) | d6[1] as u64,
            ((d6[2] as u64) << 32) | d6[3] as u64,
        ] {
            h = fast_round(h, w);
        }
        assert_eq!(
            flow_hash_fast(false, &s6, &d6, 40000, 80, 6),
            fast_finish(fast_round(h, last))
        );
        // The known value pins the constants: a change of seed or multiplier
        // moves every flow of every fast-hashed service.
        assert_eq!(
            flow_hash_fast(true, &src, &dst, 40000, 80, 6),
            KNOWN_FAST_V4
        );
    }

    #[test]
    fn a_service_entry_without_the_fast_flag_keeps_murmur3() {
        let src = addr_words(&[198, 51, 100, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let dst = addr_words(&[203, 0, 113, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let cases = [
            (
                "encap, pinned before the flag",
                SERVICE_ENCAP,
                FlowHash::Murmur3,
            ),
            (
                "l2dsr, pinned before the flag",
                SERVICE_L2DSR,
                FlowHash::Murmur3,
            ),
            (
                "encap, fast",
                SERVICE_ENCAP | SERVICE_HASH_FAST,
                FlowHash::Fast,
            ),
            (
                "l2dsr, fast",
                SERVICE_L2DSR | SERVICE_HASH_FAST,
                FlowHash::Fast,
            ),
        ];
        for (name, flags, kind) in cases {
            assert_eq!(FlowHash::of_flags(flags), kind, "{name}");
            assert_eq!(FlowHash::of_flags(kind.flag()), kind, "{name}");
        }
        assert_eq!(
            FlowHash::Murmur3.hash(true, &src, &dst, 40000, 443, 6),
            flow_hash(&src, &dst, 40000, 443, 6)
        );
        assert_eq!(
            FlowHash::Fast.hash(true, &src, &dst, 40000, 443, 6),
            flow_hash_fast(true, &src, &dst, 40000, 443, 6)
        );
        assert_eq!(FlowHash::default(), FlowHash::Fast);
    }

    #[test]
    #[allow(
        unused_qualifications,
        reason = "the layout assertions keep their wording from before the 2024 prelude"
    )]
    fn layout() {
        assert_eq!(core::mem::size_of::<ServiceKey>(), 20);
        assert_eq!(core::mem::size_of::<ServiceInfo>(), 16);
        assert_eq!(core::mem::size_of::<Backend>(), 24);
        assert_eq!(core::mem::size_of::<LbConfig>(), 32);
        assert_eq!(ring_base(1, 1, 7), 21);
        assert_eq!(ring_entries(16, DEFAULT_RING_SIZE), 2_097_184);
    }
}

//! ABI of the ACL tables: classes, rule bitmaps and address tables. See
//! `docs/design/acl.md` for how they fit together.

use crate::MAX_IFACES;

/// Most rules in one generation.
pub const MAX_RULES: u32 = 12288;
/// Bits of a rule bitmap: the rules in evaluation order, then one virtual
/// "default policy" rule per interface slot.
pub const RULE_BITS: u32 = MAX_RULES + MAX_IFACES;
/// 64-bit words of a rule bitmap.
pub const BITMAP_WORDS: usize = (RULE_BITS as usize).div_ceil(64);
/// 64-bit words of a bitmap's summary (bit `w` set when word `w` is non-zero).
pub const SUMMARY_WORDS: usize = BITMAP_WORDS.div_ceil(64);

/// Bit of the virtual default-policy rule of interface `slot`, given `rules`
/// real rules.
pub const fn default_rule_bit(rules: u32, slot: u32) -> u32 {
    rules + slot
}

/// A set of rules (by evaluation index) that accept one class of one dimension.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bitmap {
    /// Bit `w` set when `words[w]` is non-zero.
    pub summary: [u64; SUMMARY_WORDS],
    /// Bit `i` set when rule `i` accepts the class.
    pub words: [u64; BITMAP_WORDS],
}

impl Bitmap {
    /// The empty bitmap.
    pub const EMPTY: Bitmap = Bitmap {
        summary: [0; SUMMARY_WORDS],
        words: [0; BITMAP_WORDS],
    };
}

/// Port-like dimensions are looked up in arrays of `GROUPS x 65536` classes.
pub mod group {
    /// TCP ports.
    pub const TCP: u32 = 0;
    /// UDP ports.
    pub const UDP: u32 = 1;
    /// SCTP ports.
    pub const SCTP: u32 = 2;
    /// ICMP (IPv4): key `type << 8 | code` (destination dimension only).
    pub const ICMP4: u32 = 3;
    /// ICMPv6: key `type << 8 | code` (destination dimension only).
    pub const ICMP6: u32 = 4;
    /// Groups of the source-port dimension.
    pub const SPORT_GROUPS: u32 = 3;
    /// Groups of the destination-port/ICMP dimension.
    pub const DPORT_GROUPS: u32 = 5;
}

/// Port class of packets without L4 fields (other protocols, later fragments).
pub const NO_L4_CLASS: u16 = 0;
/// Address class of IPv4 addresses no rule condition covers.
pub const V4_NONE_CLASS: u16 = 0;
/// Address class of IPv6 addresses no rule condition covers.
pub const V6_NONE_CLASS: u16 = 1;

/// Most classes of a port dimension (class ids are `u16`).
pub const MAX_PORT_CLASSES: u32 = 65535;
/// Most address classes, both families together (class ids are `u16`).
pub const MAX_ADDR_CLASSES: u32 = 65535;
/// Most (and default) port classes the rule-bitmap tables hold (`[acl]
/// walk_port_classes` sets fewer): a rule set with more is resolved by its
/// phased tables only, and refused if it has none.
pub const WALK_PORT_CLASSES: u32 = 4096;
/// Most (and default) address classes the rule-bitmap tables hold (`[acl]
/// walk_addr_classes`; see [`WALK_PORT_CLASSES`]).
pub const WALK_ADDR_CLASSES: u32 = 8192;

/// IPv4 first-level entry flag: the /24 holds longer prefixes. The entry's low
/// 16 bits are then the class of addresses no longer prefix covers, and bits
/// 16..28 the length set to search (see [`v4_entry`]).
pub const V4_EXT: u32 = 1 << 31;
/// Entries of the IPv4 first-level table (indexed by the top 24 bits).
pub const V4_TBL24_ENTRIES: u32 = 1 << 24;

/// An IPv4 first-level entry for a /24 with longer prefixes.
pub const fn v4_entry(class: u16, lenset: u16) -> u32 {
    V4_EXT | (lenset as u32) << 16 | class as u32
}

/// IPv4 keys in the shared prefix hash carry their length plus this offset, so
/// they never collide with IPv6 keys of the same length.
pub const V4_KEY_LEN_OFFSET: u32 = 128;

/// The kernel rounds array elements up to 8 bytes, so tables of `u16` classes
/// are stored four to an element.
pub type Quad = [u16; 4];
/// The IPv4 first-level table stores two `u32` entries per array element.
pub type Pair = [u32; 2];
/// Array elements of the IPv4 first-level table.
pub const V4_TBL24_PAIRS: u32 = V4_TBL24_ENTRIES / 2;
/// Array elements of the source-port class table.
pub const SPORT_QUADS: u32 = group::SPORT_GROUPS * 65536 / 4;
/// Array elements of the destination-port/ICMP class table.
pub const DPORT_QUADS: u32 = group::DPORT_GROUPS * 65536 / 4;
/// Distinct length sets of both families (index 0 is the empty set; at most
/// 4096 so an id fits the 12 bits of an IPv4 entry).
pub const LENSETS: u32 = 4096;
/// Most buckets of the long-prefix table (a power of two; the default):
/// IPv4 prefixes longer than /24, IPv6 prefixes longer than /16, and
/// binary-search markers of both. The table a datapath is loaded with has
/// `1 << bits` buckets, `bits` in [`MIN_PREFIX_BUCKET_BITS`]`..=`
/// [`PREFIX_BUCKET_BITS`] (`[acl] prefix_slots`).
pub const PREFIX_BUCKETS: u32 = 1 << PREFIX_BUCKET_BITS;
/// Most (and default) index bits of the long-prefix table.
pub const PREFIX_BUCKET_BITS: u32 = 20;
/// Fewest index bits of the long-prefix table (256 buckets, 1,024 slots).
pub const MIN_PREFIX_BUCKET_BITS: u32 = 8;
/// Slots per bucket of the long-prefix table.
pub const PREFIX_BUCKET_SLOTS: usize = 4;
/// Most entries the largest long-prefix table is filled to (see
/// [`prefix_entries`]).
pub const PREFIX_ENTRIES: u32 = prefix_entries(PREFIX_BUCKET_BITS);
/// Name of the datapath's read-only global holding the index bits of the
/// long-prefix table it was loaded with (set by the loader; the verifier
/// sees a constant).
pub const PREFIX_BITS_GLOBAL: &str = "XG_PREFIX_BUCKET_BITS";

/// Most entries a long-prefix table of `1 << bits` buckets is filled to (95%
/// of its slots; a bucketized cuckoo table with two choices and four slots
/// places that many with room to spare).
pub const fn prefix_entries(bits: u32) -> u32 {
    (1u32 << bits) * PREFIX_BUCKET_SLOTS as u32 / 20 * 19
}

/// Which generation of the ACL tables is live, and its rule count.
///
/// The datapath reads `epoch` once per packet and derives everything from that
/// one aligned word: whether the ACL is enabled, which generation to use, and
/// which decision-cache entries are valid. A packet can therefore never pair one
/// generation's tables with another's cached decisions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AclConfig {
    /// Number of generations installed so far (wrapping, never 0 again once
    /// non-zero); 0 means none yet, and every IP packet passes without
    /// classification. Its low bit is the live generation.
    pub epoch: u32,
    /// Real rules in each generation (rule bitmaps' bits at and above this
    /// index are the per-interface default rules).
    pub rules: [u32; 2],
    /// [`ACL_NO_CACHE`] and future flags.
    pub flags: u32,
}

/// [`AclConfig::flags`]: bypass the decision cache (every packet walks the
/// rule bitmaps; for measurements and diagnosis).
pub const ACL_NO_CACHE: u32 = 1;

impl AclConfig {
    /// Whether a generation has been installed.
    pub const fn enabled(&self) -> bool {
        self.epoch != 0
    }

    /// The live generation (0 or 1), meaningful when [`enabled`](Self::enabled).
    pub const fn generation(&self) -> usize {
        (self.epoch & 1) as usize
    }

    /// The epoch the next install switches to: the other generation, skipping 0.
    pub const fn next_epoch(&self) -> u32 {
        match self.epoch.wrapping_add(1) {
            0 => 2,
            e => e,
        }
    }
}

/// Entries of the per-CPU decision cache (direct-mapped, a power of two).
pub const CACHE_ENTRIES: u32 = 1 << CACHE_BITS;
/// Index bits of the decision cache.
pub const CACHE_BITS: u32 = 15;
/// [`CacheEntry::rule`] of a cached "no rule accepts" decision.
pub const CACHE_NO_RULE: u32 = u32::MAX;
/// Bit of [`CacheEntry::k1`] set in every written entry (a zeroed entry never
/// matches).
pub const CACHE_VALID: u64 = 1 << 31;

/// One entry of the decision cache: the rule that decided a combination of
/// classes under one epoch. The first match over the rule bitmaps is a pure
/// function of (interface slot, protocol, the four class ids) within one
/// generation, so the entry is exact, not a heuristic.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheEntry {
    /// Source class, destination class, source-port class, destination-port
    /// class, 16 bits each from the low end.
    pub k0: u64,
    /// Protocol (bits 0-7), interface slot (8-23), [`CACHE_VALID`], epoch (32-63).
    pub k1: u64,
    /// Deciding rule index (bit of the rule bitmaps), or [`CACHE_NO_RULE`].
    pub rule: u32,
    /// Padding.
    pub pad: u32,
}

/// Counter indices of `XG_CACHE_STATS`.
pub mod cache_stat {
    /// Packets decided from the cache.
    pub const HIT: u32 = 0;
    /// Packets resolved without the cache (a miss, or the cache bypassed):
    /// by the phased tables, or by the bitmap walk ([`WALK`]).
    pub const MISS: u32 = 1;
    /// Of the [`MISS`] packets, those that walked the rule bitmaps (the
    /// generation has no phased tables: its rule set exceeded their budget).
    pub const WALK: u32 = 2;
    /// IPv6 addresses (source or destination) whose class came from the
    /// address-class cache (`XG_ADDR_CACHE`, [`AddrCacheEntry`]).
    pub const ADDR_HIT: u32 = 3;
    /// IPv6 addresses the address-class cache did not hold: looked up in the
    /// address tables and stored (not counted with the cache off).
    pub const ADDR_MISS: u32 = 4;
    /// Entries of the counter array.
    pub const ENTRIES: u32 = 5;
}

/// Index bits of the per-CPU IPv6 address-class cache (`XG_ADDR_CACHE`).
pub const ADDR_CACHE_BITS: u32 = 13;
/// Entries of the per-CPU IPv6 address-class cache (direct-mapped; 8,192
/// entries of 24 bytes, 192 KiB per possible CPU).
pub const ADDR_CACHE_ENTRIES: u32 = 1 << ADDR_CACHE_BITS;

const _: () = assert!(
    ADDR_CACHE_BITS >= MIN_PREFIX_BUCKET_BITS && ADDR_CACHE_BITS <= PREFIX_BUCKET_BITS,
    "addr_cache_index uses prefix_buckets, which clamps its bits to this range"
);

/// One entry of the IPv6 address-class cache: the class of one address under
/// one epoch. An address's class is a pure function of the address within one
/// generation, so the entry is exact; the epoch in it means a generation
/// switch (which every change, incremental or full, makes) invalidates every
/// entry at once. Epoch 0 (no ACL) is never looked up, so a zeroed entry never
/// matches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrCacheEntry {
    /// The address, big-endian words.
    pub addr: [u32; 4],
    /// The epoch (`AclConfig::epoch`) the class was looked up under.
    pub epoch: u32,
    /// The address class.
    pub class: u16,
    /// Padding.
    pub pad: u16,
}

/// Slot of an IPv6 address in the address-class cache: the first bucket of
/// the long-prefix table's hash ([`prefix_buckets`]) of the full address
/// with length 0, which no stored key has.
#[inline(always)]
pub const fn addr_cache_index(addr: &[u32; 4]) -> u32 {
    prefix_buckets(addr, 0, ADDR_CACHE_BITS).0
}

#[cfg(test)]
mod addr_cache_tests {
    use super::*;

    /// An address family of the test: the address of index `i`.
    type Addresses = fn(u32) -> [u32; 4];

    #[test]
    fn consecutive_sources_of_one_prefix_spread_over_the_address_cache() {
        // 8,192 consecutive addresses of one /64 (a scan, or one host's
        // privacy addresses), and 8,192 that differ only in the top word.
        let sets: [(&str, Addresses); 2] = [
            ("low word", |i| [0x2001_0db8u32.to_be(), 0, 0, i.to_be()]),
            ("top word", |i| {
                [(0x2001_0000u32 | i).to_be(), 0, 0, 1u32.to_be()]
            }),
        ];
        for (name, addr) in sets {
            let mut used = [false; ADDR_CACHE_ENTRIES as usize];
            for i in 0..ADDR_CACHE_ENTRIES {
                let slot = addr_cache_index(&addr(i));
                assert!(slot < ADDR_CACHE_ENTRIES, "{name}: slot {slot}");
                used[slot as usize] = true;
            }
            // A random function fills 1 - 1/e (63%) of the slots.
            let n = used.iter().filter(|u| **u).count();
            assert!(
                n * 100 > ADDR_CACHE_ENTRIES as usize * 60,
                "{name}: {n} slots"
            );
        }
    }
}

/// Entry of the IPv6 top-16 table: the class of addresses in this /16 that no
/// longer prefix covers, and the set of longer prefix lengths to search.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V6Bucket {
    /// Class when the search finds nothing.
    pub class: u16,
    /// Index into the length-set array; 0 means no longer prefixes;
    /// [`V6_CHILD`] means `class` is the index of a [`V6Block`] that splits
    /// the region by its next 8 address bits.
    pub lenset: u16,
}

/// [`V6Bucket::lenset`] of an entry that points to a child block: its
/// `class` is the block's index in the block array (never a length-set id,
/// which is below [`LENSETS`]).
pub const V6_CHILD: u16 = u16::MAX;

/// Entries of an IPv6 block: one per value of the next 8 address bits.
pub const V6_BLOCK_ENTRIES: usize = 256;

/// A block of the IPv6 address trie under the /16 array: the region of a
/// /16 (or of a /24, /32, ... inside it, 8 bits deeper per level) split by
/// its next 8 address bits, each entry a class, a class and a length set to
/// search, or a deeper block ([`V6_CHILD`]). 1 KiB.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V6Block {
    /// The entries, indexed by the 8 address bits after the region's prefix.
    pub entries: [V6Bucket; V6_BLOCK_ENTRIES],
}

/// Most IPv6 trie blocks per generation (16 MiB), the default of `[acl]
/// v6_blocks`: the benchmark's 1,000,000 random IPv6 prefixes over 2000::/3
/// need one per /16 of it, about 8,200. When they run out the compiler
/// leaves further regions to the length search.
pub const V6_BLOCKS: u32 = 16384;

/// Most block reads of one IPv6 lookup: one per 8 bits from /16 to /128.
pub const V6_MAX_DEPTH: usize = 14;

/// Most distinct prefix lengths in one bucket (IPv6 /16: 17..=128; IPv4 /24: 25..=32).
pub const MAX_LENS: usize = 112;

/// A sorted list of prefix lengths searched by binary search.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LenSet {
    /// Number of lengths used.
    pub n: u32,
    /// Lengths in increasing order; `lens[..n]` are valid.
    pub lens: [u8; MAX_LENS],
}

/// Key of the prefix hash: a length and the address masked to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrefixKey {
    /// Prefix length: 17..=128 for IPv6; 25..=32 plus [`V4_KEY_LEN_OFFSET`] for IPv4.
    pub len: u32,
    /// Address masked to the length, big-endian words (IPv4 in word 0).
    pub addr: [u32; 4],
}

/// Value of the prefix hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixEntry {
    /// The class of a real prefix; ignored for markers.
    pub class: u16,
    /// 1 for a marker (search longer), 0 for a real prefix.
    pub marker: u16,
}

/// One slot of the long-prefix table: a prefix (or marker) and its entry.
/// `len == 0` marks an empty slot (no key has length 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixSlot {
    /// Address masked to the length, big-endian words (IPv4 in word 0).
    pub addr: [u32; 4],
    /// [`PrefixKey::len`] (at most 160, so it fits a byte).
    pub len: u8,
    /// 1 for a marker, 0 for a real prefix.
    pub marker: u8,
    /// The class of a real prefix.
    pub class: u16,
}

/// One bucket of the long-prefix table: a bucketized cuckoo hash table in an
/// array. Every key sits in one of the two buckets [`prefix_buckets`] names,
/// so a lookup reads at most two buckets: no chains, no hash-map helper call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixBucket {
    /// The slots.
    pub slots: [PrefixSlot; PREFIX_BUCKET_SLOTS],
}

/// The two candidate buckets of a long-prefix key (address words as stored,
/// length as in [`PrefixKey::len`]) in a table of `1 << bits` buckets
/// (`bits` in [`MIN_PREFIX_BUCKET_BITS`]`..=`[`PREFIX_BUCKET_BITS`]). Shared
/// by the datapath and the compiler, which must agree bit for bit. The two
/// are always different.
#[inline(always)]
pub const fn prefix_buckets(addr: &[u32; 4], len: u32, bits: u32) -> (u32, u32) {
    let a = ((addr[0] as u64) << 32 | addr[1] as u64)
        ^ (len as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let b = (addr[2] as u64) << 32 | addr[3] as u64;
    let h = a.wrapping_mul(0xff51_afd7_ed55_8ccd) ^ b.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    let h = (h ^ (h >> 31)).wrapping_mul(0xd6e8_feb8_6659_fd93);
    let h = h ^ (h >> 32);
    // Clamped so that a shift is never out of range, whatever `bits` holds.
    let bits = if bits > PREFIX_BUCKET_BITS {
        PREFIX_BUCKET_BITS
    } else if bits < MIN_PREFIX_BUCKET_BITS {
        MIN_PREFIX_BUCKET_BITS
    } else {
        bits
    };
    let mask = (1u32 << bits) - 1;
    let b1 = (h >> (64 - bits)) as u32 & mask;
    let mut b2 = (h as u32) & mask;
    if b2 == b1 {
        b2 ^= 1;
    }
    (b1, b2)
}

/// What the datapath needs per rule index: its verdict, counter slot and id,
/// and its limit and SYN-cookie protection (`crate::limit`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleInfo {
    /// Counter slot in `XG_RULE_STATS`.
    pub counter: u32,
    /// `crate::Action` value (`Pass` or `Drop`).
    pub action: u32,
    /// The rule's id, for datapath events (0 for a default policy, whose
    /// counter slot is `MAX_RULES` or above).
    pub id: u32,
    /// `limit::RULE_LIMIT` and `limit::RULE_SYNCOOKIE` bits (only on rules
    /// whose action is `Pass`).
    pub flags: u32,
    /// The limit, when `flags` has `limit::RULE_LIMIT`.
    pub limit: crate::limit::LimitSpec,
}

/// Counter slots: one per real rule, then one per interface for its default policy.
pub const RULE_COUNTERS: u32 = MAX_RULES + MAX_IFACES;

/// Leaves of a phased reduction (the per-packet class lookups), in this order:
/// interface slot, protocol, source class, destination class, source-port
/// class, destination-port class. See `docs/design/acl.md`, "Phased
/// reduction".
pub mod leaf {
    /// Interface slot.
    pub const IFACE: u32 = 0;
    /// IP protocol.
    pub const PROTO: u32 = 1;
    /// Source address class.
    pub const SRC: u32 = 2;
    /// Destination address class.
    pub const DST: u32 = 3;
    /// Source-port class.
    pub const SPORT: u32 = 4;
    /// Destination-port/ICMP class.
    pub const DPORT: u32 = 5;
    /// Number of leaves.
    pub const COUNT: usize = 6;
}

/// Steps of a phased reduction: each combines two earlier ids (leaves or
/// steps) into one; the last yields the first matching rule.
pub const PHASE_STEPS: usize = leaf::COUNT - 1;
/// Most rule groups one generation's phased tables are split into (each group
/// resolves its own rules; the packet takes the lowest rule index over groups).
pub const MAX_PHASE_GROUPS: usize = 16;
/// Most (and default) `u16` cells of one generation's phased tables, all
/// groups together (32 MiB; `[acl] phase_cells` sets fewer, down to 0). A
/// rule set that needs more is resolved by the bitmap walk.
pub const PHASE_CELLS: u32 = 1 << 24;
/// Most classes of one step of a phased reduction (ids are `u16`, and
/// [`PHASE_NONE`] is reserved).
pub const MAX_PHASE_CLASSES: u32 = 0xffff;
/// Value of a final-step cell when no rule of the group matches.
pub const PHASE_NONE: u16 = 0xffff;
/// Flag in a destination-port remap entry: the class is neighbour discovery
/// that only rules naming it match, so the interface default does not apply.
pub const PHASE_NODEFAULT: u16 = 0x8000;
/// [`PhaseGroup::remap`] of a leaf folded into its step: the raw class is
/// the group's class, no remap read (never the destination-port leaf, whose
/// remap carries [`PHASE_NODEFAULT`]).
pub const PHASE_RAW: u32 = u32::MAX;

/// One step of a phased reduction: `id[LEAVES + s] = cells[off + id[left] *
/// stride + id[right]]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhaseStep {
    /// Id index of the left operand (0..6 leaves, 6.. earlier steps).
    pub left: u32,
    /// Id index of the right operand.
    pub right: u32,
    /// Offset of the step's table in the cell array.
    pub off: u32,
    /// Classes of the right operand.
    pub stride: u32,
}

/// One rule group of a phased reduction: where its leaf remaps and step
/// tables are in the generation's cell array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhaseGroup {
    /// Groups of the generation (the same in every group); 0 in group 0 means
    /// the generation has no phased tables and the datapath walks the bitmaps.
    pub groups: u32,
    /// Real rules of the generation: the interface default of slot `s` is
    /// rule index `rules + s`.
    pub rules: u32,
    /// Offset of each leaf's remap table (raw class -> the group's class),
    /// or [`PHASE_RAW`].
    pub remap: [u32; leaf::COUNT],
    /// The steps, in evaluation order.
    pub steps: [PhaseStep; PHASE_STEPS],
}

/// Base name of the per-generation `Array<PhaseGroup>` (suffix `_0`/`_1`).
pub const PHASE_GROUPS_MAP: &str = "XG_PHASE_GROUPS";
/// Base name of the per-generation `Array<Quad>` of phased cells (suffix `_0`/`_1`).
pub const PHASE_CELLS_MAP: &str = "XG_PHASE_CELLS";

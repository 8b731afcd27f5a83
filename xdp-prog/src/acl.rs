//! ACL classification: field lookups to classes, then the decision cache, and
//! on a miss the phased tables (five table reads per rule group to the first
//! matching rule), or, for a generation over their budget, the first rule set
//! in the AND of the six class bitmaps (see `docs/design/acl.md`, part 2). Its input goes through per-CPU
//! memory first (`handoff::Fields` in `SCRATCH`, see [`classify`]).
use xdpgate_common::{
    Family,
    acl::{
        ACL_NO_CACHE, BITMAP_WORDS, Bitmap, CACHE_BITS, CACHE_NO_RULE, CACHE_VALID, MAX_LENS,
        MAX_PHASE_GROUPS, NO_L4_CLASS, PHASE_NODEFAULT, PHASE_NONE, PHASE_RAW, PHASE_STEPS, Quad,
        RuleInfo, SUMMARY_WORDS, V4_EXT, V4_KEY_LEN_OFFSET, V6_CHILD, V6_MAX_DEPTH, V6Bucket,
        cache_stat, group, leaf, prefix_buckets,
    },
    wire::{IPPROTO_TCP, IPPROTO_UDP},
};

use aya_ebpf::maps::Array;

use crate::{
    addrcache, bind,
    handoff::{Fields, NONE},
    maps::{ACL_CONFIG, DECISIONS, Gen0, Gen1, Generation, PHASE_IDS, PROBE, SCRATCH},
    parse::{Frag, L4, Packet},
    stats,
};

/// The classifier's view of `p` (what goes through `SCRATCH`).
#[inline(always)]
fn fields(p: &Packet) -> Fields {
    let v4 = p.family == Family::Ipv4;
    let (sport, dport) = if p.frag == Frag::Later {
        (NONE, NONE)
    } else {
        match p.l4 {
            L4::None => (NONE, NONE),
            L4::Ports => {
                let g = match p.proto {
                    IPPROTO_TCP => group::TCP,
                    IPPROTO_UDP => group::UDP,
                    _ => group::SCTP,
                };
                (g * 65536 + p.sport as u32, g * 65536 + p.dport as u32)
            }
            L4::Icmp => {
                let g = if v4 { group::ICMP4 } else { group::ICMP6 };
                (
                    NONE,
                    g * 65536 + ((p.icmp_type as u32) << 8 | p.icmp_code as u32),
                )
            }
        }
    };
    Fields {
        src: p.src,
        dst: p.dst,
        v4: v4 as u32,
        proto: p.proto as u32,
        sport,
        dport,
    }
}

/// What decides a packet.
pub(crate) enum Decision {
    /// The interface drops unbound destinations and this one is not bound
    /// (see `bind`); checked before any rule.
    NotBound,
    /// The rule (or interface default rule) that decides the packet.
    /// A reference into the generation's rule table, so the 64-byte
    /// `RuleInfo` (with its limit) is not copied to the stack per packet.
    Rule(&'static RuleInfo),
    /// No rule: the ACL has no generation yet, or no rule accepts the packet
    /// (neighbour discovery that no rule names); the caller passes it.
    NoRule,
}

/// Decides `p` on interface `slot`: first, when `drop_unbound` is set, the
/// bound-address check, then the ACL.
#[inline(always)]
pub(crate) fn classify(p: &Packet, slot: u32, drop_unbound: bool) -> Decision {
    // Launder the fields through per-CPU memory: every parser path then reaches
    // the bound-address check and the classifier with the same (unknown)
    // register state, so the verifier checks them once instead of once per
    // parser path.
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Decision::NoRule;
    };
    // SAFETY: per-CPU scratch slot, written and read back by this packet only.
    let f = unsafe {
        scratch.write_volatile(fields(p));
        scratch.read_volatile()
    };
    if drop_unbound && bind::unbound(&f.dst, f.v4 != 0, slot) {
        return Decision::NotBound;
    }
    let Some(cfg) = ACL_CONFIG.get_ptr(0) else {
        return Decision::NoRule;
    };
    // One read of the epoch picks the generation and the valid cache entries
    // together (see `AclConfig`).
    // SAFETY: pointer to the map's only element, valid for the program's run.
    let (epoch, flags) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*cfg).epoch),
            core::ptr::read_volatile(&raw const (*cfg).flags),
        )
    };
    if epoch == 0 {
        return Decision::NoRule;
    }
    let cache = flags & ACL_NO_CACHE == 0;
    let rule = if epoch & 1 == 0 {
        resolve::<Gen0>(&f, slot, epoch, cache)
    } else {
        resolve::<Gen1>(&f, slot, epoch, cache)
    };
    match rule {
        Some(r) => Decision::Rule(r),
        None => Decision::NoRule,
    }
}

#[inline(always)]
fn resolve<G: Generation>(
    f: &Fields,
    slot: u32,
    epoch: u32,
    cache: bool,
) -> Option<&'static RuleInfo> {
    // The class ids pass through per-CPU memory as soon as they are known
    // (see `id_get`): the destination lookup, the cache and the resolution
    // are then verified once, not once per outcome of the source lookup's
    // search (measured on 6.1: with the phased tables added and the ids in
    // registers, the program exceeded the 1,000,000-instruction budget).
    let ids = PHASE_IDS.get_ptr_mut(0)?;
    // IPv6 addresses go through the address-class cache first (IPv4's
    // lookup is one array read already); its lookup is IPv6's only.
    let v4 = f.v4 != 0;
    let src = if v4 {
        addr_class::<G>(true, &f.src)?
    } else {
        v6_class::<G>(cache, epoch, &f.src)?
    };
    id_set(ids, RAW + leaf::SRC as usize, u32::from(src));
    let dst = if v4 {
        addr_class::<G>(true, &f.dst)?
    } else {
        v6_class::<G>(cache, epoch, &f.dst)?
    };
    id_set(ids, RAW + leaf::DST as usize, u32::from(dst));
    id_set(
        ids,
        RAW + leaf::SPORT as usize,
        u32::from(port_class(G::sport_class(), f.sport)?),
    );
    id_set(
        ids,
        RAW + leaf::DPORT as usize,
        u32::from(port_class(G::dport_class(), f.dport)?),
    );
    let src = id_get(ids, RAW + leaf::SRC as usize) as u16;
    let dst = id_get(ids, RAW + leaf::DST as usize) as u16;
    let sk = id_get(ids, RAW + leaf::SPORT as usize) as u16;
    let dk = id_get(ids, RAW + leaf::DPORT as usize) as u16;
    let k0 = src as u64 | (dst as u64) << 16 | (sk as u64) << 32 | (dk as u64) << 48;
    let k1 =
        (f.proto as u64 & 0xff) | (slot as u64 & 0xffff) << 8 | CACHE_VALID | (epoch as u64) << 32;
    let entry = if cache {
        DECISIONS.get_ptr_mut(cache_index(k0, k1))
    } else {
        None
    };
    if let Some(e) = entry {
        // SAFETY: per-CPU entry; nothing else on this CPU runs while we do.
        let (ek0, ek1, rule) = unsafe { ((*e).k0, (*e).k1, (*e).rule) };
        if ek0 == k0 && ek1 == k1 {
            stats::count_cache(cache_stat::HIT);
            return rule_info::<G>(rule);
        }
    }
    stats::count_cache(cache_stat::MISS);
    let head = G::phase_groups().get(0)?;
    let rule = if head.groups != 0 {
        id_set(ids, RAW + leaf::IFACE as usize, slot);
        id_set(ids, RAW + leaf::PROTO as usize, f.proto);
        phased::<G>(ids, head.groups, head.rules, slot)?
    } else {
        stats::count_cache(cache_stat::WALK);
        walk::<G>(f, slot, src, dst, sk, dk).unwrap_or(CACHE_NO_RULE)
    };
    if let Some(e) = entry {
        // SAFETY: as above.
        unsafe {
            (*e).k0 = k0;
            (*e).k1 = k1;
            (*e).rule = rule;
        }
    }
    rule_info::<G>(rule)
}

/// Verdict and counter of rule index `rule` (`None` for [`CACHE_NO_RULE`]).
#[inline(always)]
fn rule_info<G: Generation>(rule: u32) -> Option<&'static RuleInfo> {
    if rule == CACHE_NO_RULE {
        return None;
    }
    G::rule_info().get(rule)
}

/// Decision-cache slot of a key: a multiplicative hash of both key words.
#[inline(always)]
fn cache_index(k0: u64, k1: u64) -> u32 {
    let h = (k0 ^ k1.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let h = (h ^ (h >> 32)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    (h >> (64 - CACHE_BITS)) as u32
}

/// The cell at `index` of the phased tables (four per element).
#[inline(always)]
fn cell<G: Generation>(index: u32) -> Option<u16> {
    Some(G::phase_cells().get(index >> 2)?[(index & 3) as usize])
}

/// Slots of the per-CPU id array (`PHASE_IDS`): the ids of one group's
/// leaves and steps at `0..11`, the raw leaf ids at [`RAW`]`..RAW + 6`, the
/// lowest rule so far at [`BEST`], whether the default applies at [`DEFAULT`].
const RAW: usize = 16;
/// See [`RAW`].
const BEST: usize = 24;
/// See [`RAW`].
const DEFAULT: usize = 25;

/// Reads slot `i` of the id array.
///
/// Every value of [`phased`] passes through per-CPU memory, which the
/// verifier does not track: each group's iteration then starts from the
/// same verifier state whatever the packet's classes were, so the verifier
/// walks the group loop once per generation instead of once per combination
/// of the address lookups' outcomes (measured on 6.1: with the values in
/// registers the program exceeded the 1,000,000-instruction budget).
#[inline(always)]
fn id_get(ids: *mut [u32; 32], i: usize) -> u32 {
    // SAFETY: per-CPU ids, written and read by this packet only; `i & 31` is
    // in bounds.
    unsafe { core::ptr::read_volatile(&raw const (*ids)[i & 31]) }
}

/// Writes slot `i` of the id array (see [`id_get`]).
#[inline(always)]
fn id_set(ids: *mut [u32; 32], i: usize, v: u32) {
    // SAFETY: as in `id_get`.
    unsafe { core::ptr::write_volatile(&raw mut (*ids)[i & 31], v) }
}

/// The deciding rule index through the phased tables (`compile::phases`),
/// from the raw leaf ids in `ids` (slots [`RAW`]`..RAW + 6`):
/// per group, six remaps of the leaf ids (one when the compiler folded the
/// other five into the steps, `PHASE_RAW`) and five step reads, no loop over
/// rules; the lowest rule over the groups, else the interface default of
/// `slot` (rule index `rules + slot`), or [`CACHE_NO_RULE`] for neighbour
/// discovery that no rule names.
#[inline(always)]
fn phased<G: Generation>(ids: *mut [u32; 32], groups: u32, rules: u32, slot: u32) -> Option<u32> {
    id_set(ids, BEST, PHASE_NONE as u32);
    id_set(ids, DEFAULT, 1);
    for g in 0..MAX_PHASE_GROUPS as u32 {
        if g >= groups {
            break;
        }
        let grp = G::phase_groups().get(g)?;
        for d in 0..leaf::COUNT {
            let raw = id_get(ids, RAW + d);
            let off = grp.remap[d];
            if off == PHASE_RAW && d != leaf::DPORT as usize {
                // Folded into its step: the raw class, no table read.
                id_set(ids, d, raw);
                continue;
            }
            let mut v = cell::<G>(off.wrapping_add(raw))?;
            if d == leaf::DPORT as usize {
                id_set(ids, DEFAULT, u32::from(v & PHASE_NODEFAULT == 0));
                v &= !PHASE_NODEFAULT;
            }
            id_set(ids, d, v as u32);
        }
        for s in 0..PHASE_STEPS {
            let st = &grp.steps[s];
            // The operand indices are data: masked, they index the map value.
            let (l, r) = (
                id_get(ids, (st.left & 15) as usize),
                id_get(ids, (st.right & 15) as usize),
            );
            let v = cell::<G>(
                st.off
                    .wrapping_add(l.wrapping_mul(st.stride))
                    .wrapping_add(r),
            )?;
            id_set(ids, leaf::COUNT + s, v as u32);
        }
        let r = id_get(ids, leaf::COUNT + PHASE_STEPS - 1);
        if r < id_get(ids, BEST) {
            id_set(ids, BEST, r);
        }
    }
    let best = id_get(ids, BEST);
    Some(if best != PHASE_NONE as u32 {
        best
    } else if id_get(ids, DEFAULT) != 0 {
        rules.wrapping_add(slot)
    } else {
        CACHE_NO_RULE
    })
}

/// The first rule index set in the AND of the six class bitmaps.
#[inline(always)]
fn walk<G: Generation>(f: &Fields, slot: u32, src: u16, dst: u16, sk: u16, dk: u16) -> Option<u32> {
    let b: [&Bitmap; 6] = [
        G::bm_iface().get(slot)?,
        G::bm_proto().get(f.proto)?,
        G::bm_src().get(src as u32)?,
        G::bm_dst().get(dst as u32)?,
        G::bm_sport().get(sk as u32)?,
        G::bm_dport().get(dk as u32)?,
    ];
    for s in 0..SUMMARY_WORDS {
        let mut m = b[0].summary[s]
            & b[1].summary[s]
            & b[2].summary[s]
            & b[3].summary[s]
            & b[4].summary[s]
            & b[5].summary[s];
        for _ in 0..64 {
            if m == 0 {
                break;
            }
            let w = opaque(s * 64 + m.trailing_zeros() as usize);
            m &= m - 1;
            if w >= BITMAP_WORDS {
                break;
            }
            let word = b[0].words[w]
                & b[1].words[w]
                & b[2].words[w]
                & b[3].words[w]
                & b[4].words[w]
                & b[5].words[w];
            if word != 0 {
                return Some((w * 64) as u32 + word.trailing_zeros());
            }
        }
    }
    None
}

/// The class at `index` of a class table (four classes per element).
#[inline(always)]
fn port_class(table: &Array<Quad>, index: u32) -> Option<u16> {
    if index == NONE {
        return Some(NO_L4_CLASS);
    }
    Some(table.get(index >> 2)?[(index & 3) as usize])
}

/// Hides a value's range from LLVM. LLVM knows `trailing_zeros() < 64` and
/// would drop the bounds check that follows, but the verifier sees a byte from
/// a lookup table (LLVM's cttz lowering) and needs the check.
#[inline(always)]
fn opaque(x: usize) -> usize {
    // SAFETY: reads a local through a valid pointer.
    unsafe { core::ptr::read_volatile(&raw const x) }
}

/// The address class of an IPv4 or IPv6 address (big-endian words).
#[inline(always)]
fn addr_class<G: Generation>(v4: bool, addr: &[u32; 4]) -> Option<u16> {
    if v4 {
        let a = u32::from_be(addr[0]);
        let top = a >> 8;
        let e = G::v4_tbl24().get(top >> 1)?[(top & 1) as usize];
        if e & V4_EXT == 0 {
            return Some(e as u16);
        }
        // Only word 0 of an IPv4 key is used; the search masks the rest to 0.
        let words = [addr[0], 0, 0, 0];
        return search::<G>(e as u16, (e >> 16) & 0xfff, &words, V4_KEY_LEN_OFFSET);
    }
    let bucket = v6_entry::<G>(addr)?;
    if bucket.lenset == 0 {
        return Some(bucket.class);
    }
    search::<G>(bucket.class, bucket.lenset as u32, addr, 0)
}

/// The class of IPv6 address `addr` under `epoch`: from the address-class
/// cache when it holds it, else from [`addr_class`], then stored. With
/// `cache` false (`ACL_NO_CACHE`) only [`addr_class`], nothing hashed or
/// counted. One copy of the lookup serves a miss and the cache off.
#[inline(always)]
fn v6_class<G: Generation>(cache: bool, epoch: u32, addr: &[u32; 4]) -> Option<u16> {
    // The slot's hash only with the cache on: the benchmark's "cache off"
    // rows measure the lookup without any of the cache's work.
    let slot = if cache { addrcache::slot(addr) } else { 0 };
    if cache && let Some(class) = addrcache::get(slot, epoch, addr) {
        return Some(class);
    }
    let class = addr_class::<G>(false, addr)?;
    if cache {
        addrcache::put(slot, epoch, addr, class);
    }
    Some(class)
}

/// The IPv6 entry of `addr`: its /16's entry, or where that points to a
/// block, the entry the trie under it leads to (one block read per 8
/// address bits while the entry points to a block).
#[inline(always)]
fn v6_entry<G: Generation>(addr: &[u32; 4]) -> Option<&'static V6Bucket> {
    let mut e = G::v6_buckets().get(u32::from_be(addr[0]) >> 16)?;
    // The address in network byte order: byte `k` is the byte in memory.
    // SAFETY: `[u32; 4]` and `[u8; 16]` have the same size, and u8 has the
    // smaller alignment.
    let bytes = unsafe { &*(addr as *const [u32; 4]).cast::<[u8; 16]>() };
    // Address byte `k` indexes the block of depth `8 * k`.
    for k in 2..2 + V6_MAX_DEPTH {
        if e.lenset != V6_CHILD {
            break;
        }
        e = &G::v6_blocks().get(e.class as u32)?.entries[bytes[k & 15] as usize];
    }
    Some(e)
}

/// The masks of prefix lengths `0..N`: per length, the mask of each 32-bit
/// address word, in network byte order (so masking needs no byte swap);
/// lengths over 128 get the /128 mask.
const fn masks<const N: usize>() -> [[u32; 4]; N] {
    let mut t = [[0u32; 4]; N];
    let mut len = 0;
    while len < N {
        let mut i = 0;
        while i < 4 {
            let bits = len as i32 - 32 * i as i32;
            let m = if bits <= 0 {
                0
            } else if bits >= 32 {
                u32::MAX
            } else {
                u32::MAX << (32 - bits)
            };
            t[len][i] = m.to_be();
            i += 1;
        }
        len += 1;
    }
    t
}

/// Per prefix length 0..=128: the mask of each 32-bit address word, in network
/// byte order (so masking needs no byte swap).
pub(crate) static PREFIX_MASKS: [[u32; 4]; 129] = masks::<129>();

/// [`PREFIX_MASKS`] for every `u8` length (over 128: the /128 mask), for the
/// length search: any byte indexes it, so its index needs no bound the
/// verifier must keep. With the trie walk inlined before the search, LLVM
/// spilled the length between its `len > 128` check and the table read, and
/// 6.1's verifier, which does not carry a check over to the spilled copy,
/// refused the 129-entry table ("invalid access to map value, value_size=2361
/// off=4332", measured with `cargo xtask vmtest --kernel 6.1`).
static SEARCH_MASKS: [[u32; 4]; 256] = masks::<256>();

/// The (class, marker) stored for a masked address and key length: the key is
/// in one of its two buckets or nowhere.
#[inline(always)]
fn lookup<G: Generation>(addr: &[u32; 4], len: u32) -> Option<(u16, u8)> {
    let (b1, b2) = prefix_buckets(addr, len, crate::maps::prefix_bucket_bits());
    for b in [b1, b2] {
        let bucket = G::prefixes().get(b)?;
        for s in &bucket.slots {
            if s.len as u32 == len
                && s.addr[0] == addr[0]
                && s.addr[1] == addr[1]
                && s.addr[2] == addr[2]
                && s.addr[3] == addr[3]
            {
                return Some((s.class, s.marker));
            }
        }
    }
    None
}

/// Binary search over the lengths of `lenset` in the prefix hash: a real prefix
/// ends it, a marker sends it longer, a miss shorter; `class` if nothing is
/// found. Keys carry the length plus `len_offset` (IPv4 keys are offset).
///
/// Inlined, with the trie walk before it: the main program's frame stays
/// 304 bytes (as without the trie, measured in the object), under the
/// 512-byte limit with the event path's two calls (16 + 128 bytes) and, in
/// `xdpgate_time_path`, the wrapper's 48. (On i16-m2 the same inlining made
/// it 376 bytes, "combined stack size of 4 calls is 528" on 6.18, and the
/// search was a BPF subprogram, 8-13 ns per IPv6 lookup.)
#[inline(always)]
fn search<G: Generation>(class: u16, lenset: u32, addr: &[u32; 4], len_offset: u32) -> Option<u16> {
    let set = G::lensets().get(lenset)?;
    let probe = PROBE.get_ptr_mut(0)?;
    let (mut lo, mut hi) = (0i32, set.n as i32 - 1);
    // Binary search over at most MAX_LENS lengths: at most 7 probes.
    for _ in 0..7 {
        if lo > hi {
            break;
        }
        // The probe index passes through per-CPU memory, which the verifier
        // does not track: the search bounds then need no precise values, and
        // the verifier prunes the 2^7 search paths instead of walking each
        // (measured on 6.18: 550,045 instructions processed for the whole
        // program without this, 176,106 with it).
        // SAFETY: per-CPU word, written and read back by this packet only.
        let mid = unsafe {
            probe.write_volatile(((lo + hi) / 2) as u32);
            probe.read_volatile() as i32
        };
        if mid < 0 || mid as usize >= MAX_LENS {
            break;
        }
        let len = set.lens[mid as usize] as usize;
        if len > 128 {
            break;
        }
        let key_len = len as u32 + len_offset;
        // Masks from a table, not computed: a computed mask is three branches
        // per word, and the verifier of older kernels (6.1) walks every
        // combination of them in every probe.
        let mask = &SEARCH_MASKS[len & 0xff];
        let masked = [
            addr[0] & mask[0],
            addr[1] & mask[1],
            addr[2] & mask[2],
            addr[3] & mask[3],
        ];
        match lookup::<G>(&masked, key_len) {
            Some((class, 0)) => return Some(class),
            Some(_) => lo = mid + 1,
            None => hi = mid - 1,
        }
    }
    Some(class)
}

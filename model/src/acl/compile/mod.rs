//! Compiles an [`AclState`] into one generation of datapath tables. With the
//! `test-support` feature, [`eval`] evaluates those tables in software exactly
//! as the XDP program does (so the compiled form can be checked against the
//! reference classifier without a kernel).
//!
//! See `docs/design/acl.md`, part 2.
use std::collections::{BTreeMap, HashMap};

use ipnetwork::IpNetwork;
use xdpgate_common::{
    MAX_IFACES,
    acl::{
        Bitmap, LENSETS, LenSet, MAX_ADDR_CLASSES, MAX_LENS, MAX_PORT_CLASSES, NO_L4_CLASS,
        PrefixBucket, PrefixEntry, PrefixKey, V4_KEY_LEN_OFFSET, V4_NONE_CLASS, V4_TBL24_ENTRIES,
        V6_NONE_CLASS, V6Block, V6Bucket, group, v4_entry,
    },
    limit::{LimitSpec, RULE_LIMIT, RULE_SYNCOOKIE},
};

use super::model::{AclError, AclState, AddrMatch, Rule, RuleFamily, Verdict, limits, proto};

mod caps;
mod cuckoo;
mod dims;
#[cfg(any(test, feature = "test-support"))]
pub mod eval;
pub mod incr;
pub mod phases;
pub mod v6trie;

pub use caps::{Capacities, MIN_WALK_ADDR_CLASSES, MIN_WALK_PORT_CLASSES};
pub(super) use cuckoo::emptier;
use cuckoo::place;
use dims::rule_tables;

/// [`LimitSpec::tag`] of a rule: FNV-1a of its definition, never 0 (the
/// tag of buckets that are not a rule's). Stable for an unchanged rule, so
/// its buckets survive replacements and restarts of the same build.
fn rule_tag(r: &Rule) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in format!("{r:?}").bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

/// The `limit::RULE_*` flags and limit of a rule's `RuleInfo`.
fn extras(r: &Rule) -> (u32, LimitSpec) {
    let mut flags = 0;
    let mut spec = LimitSpec::default();
    if let Some(l) = &r.limit {
        flags |= RULE_LIMIT;
        spec = l.spec();
        spec.tag = rule_tag(r);
    }
    if r.syncookie {
        flags |= RULE_SYNCOOKIE;
    }
    (flags, spec)
}

/// One compiled generation.
#[derive(Clone)]
pub struct Image {
    /// Rule ids in evaluation order (bit `i` of a bitmap is `rule_ids[i]`).
    pub rule_ids: Vec<u32>,
    /// Verdicts in the same order.
    pub rule_verdicts: Vec<Verdict>,
    /// `limit::RULE_*` flags and the limit of each rule, in the same order.
    pub rule_extras: Vec<(u32, LimitSpec)>,
    /// Default verdict per interface slot (the virtual rules after the real ones).
    pub default_verdicts: Vec<Verdict>,
    /// Bitmap per interface slot.
    pub iface_bm: Vec<Bitmap>,
    /// Bitmap per IP protocol number.
    pub proto_bm: Vec<Bitmap>,
    /// Source-port class per `group * 65536 + port`.
    pub sport_class: Vec<u16>,
    /// Destination-port/ICMP class per `group * 65536 + key`.
    pub dport_class: Vec<u16>,
    /// Bitmap per source-port class.
    pub sport_bm: Vec<Bitmap>,
    /// Bitmap per destination-port/ICMP class.
    pub dport_bm: Vec<Bitmap>,
    /// Bitmap per address class, for the source address.
    pub src_bm: Vec<Bitmap>,
    /// Bitmap per address class, for the destination address.
    pub dst_bm: Vec<Bitmap>,
    /// IPv4 first level: entry per top 24 bits (a class, or `v4_entry`).
    pub v4_tbl24: Vec<u32>,
    /// IPv6 top-16 buckets.
    pub v6_buckets: Vec<V6Bucket>,
    /// IPv6 trie blocks under the top-16 buckets (at most
    /// [`Capacities::v6_blocks`]; an index no entry reaches is free).
    pub v6_blocks: Vec<V6Block>,
    /// Length sets of both families; index 0 is the empty set.
    pub lensets: Vec<LenSet>,
    /// IPv4 prefixes longer than /24, IPv6 prefixes longer than /16, and the
    /// binary-search markers of both, placed in the datapath's cuckoo table
    /// ([`Capacities::prefix_buckets`] buckets).
    pub prefix_table: Vec<PrefixBucket>,
    /// Entries in `prefix_table`.
    pub prefix_entries: usize,
    /// Phased rule resolution (`None`: over budget, the bitmaps are walked).
    pub phases: Option<phases::Phases>,
    /// The capacities it was compiled for (the datapath's tables must have
    /// these sizes).
    pub caps: Capacities,
}

/// Compile statistics, for logs and progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompileStats {
    /// Address classes.
    pub addr_classes: usize,
    /// Source and destination port classes.
    pub port_classes: (usize, usize),
    /// Long-prefix table entries (long prefixes and markers).
    pub hash_entries: usize,
    /// Groups and `u16` cells of the phased tables (`None`: bitmap walk).
    pub phases: Option<(usize, usize)>,
}

impl Image {
    /// Statistics of this image.
    pub fn stats(&self) -> CompileStats {
        CompileStats {
            addr_classes: self.src_bm.len(),
            port_classes: (self.sport_bm.len(), self.dport_bm.len()),
            hash_entries: self.prefix_entries,
            phases: phases::stats(self.phases.as_ref()),
        }
    }
}

struct Bits(Bitmap);

impl Bits {
    fn new() -> Self {
        Bits(Bitmap::EMPTY)
    }
    fn set(&mut self, i: usize) {
        self.0.words[i / 64] |= 1 << (i % 64);
        self.0.summary[i / 64 / 64] |= 1 << ((i / 64) % 64);
    }
}

/// The address conditions (distinct src/dst matches) and the rules using them.
struct Conditions {
    list: Vec<AddrMatch>,
    index: HashMap<AddrMatch, u32>,
}

impl Conditions {
    fn of(rules: &[&Rule]) -> Self {
        let mut c = Conditions {
            list: Vec::new(),
            index: HashMap::new(),
        };
        for r in rules {
            for m in [&r.src, &r.dst].into_iter().flatten() {
                if !c.index.contains_key(m) {
                    c.index.insert(m.clone(), c.list.len() as u32);
                    c.list.push(m.clone());
                }
            }
        }
        c
    }
}

/// A position in an address space of up to 2^128 addresses; `(true, 0)` is the
/// position just past the last address.
type Pos = (bool, u128);

/// Start and one-past-the-end positions of a prefix of `bits`-bit addresses.
fn span(start: u128, len: u8, bits: u8) -> (Pos, Pos) {
    let host = (bits - len) as u32;
    let end = if host == 128 {
        None
    } else {
        start.checked_add(1u128 << host)
    };
    ((false, start), end.map_or((true, 0), |e| (false, e)))
}

/// Disjoint intervals `[start, end]` with their condition sets, from events
/// `(position, +1 at start / -1 at end, condition)`; gaps (no condition) omitted.
fn sweep(mut events: Vec<(Pos, i32, u32)>) -> Vec<(u128, u128, Vec<u32>)> {
    events.sort_unstable();
    let mut out: Vec<(u128, u128, Vec<u32>)> = Vec::new();
    let mut active: BTreeMap<u32, u32> = BTreeMap::new();
    let mut i = 0;
    while i < events.len() {
        let pos = events[i].0;
        while i < events.len() && events[i].0 == pos {
            let (_, d, c) = events[i];
            if d > 0 {
                *active.entry(c).or_insert(0) += 1;
            } else if let Some(n) = active.get_mut(&c) {
                *n -= 1;
                if *n == 0 {
                    active.remove(&c);
                }
            }
            i += 1;
        }
        if let Some(next) = events.get(i).map(|e| e.0)
            && !active.is_empty()
        {
            let last = if next.0 { u128::MAX } else { next.1 - 1 };
            let set: Vec<u32> = active.keys().copied().collect();
            match out.last_mut() {
                Some(prev) if prev.1.checked_add(1) == Some(pos.1) && prev.2 == set => {
                    prev.1 = last;
                }
                _ => out.push((pos.1, last, set)),
            }
        }
    }
    out
}

fn events(state: &AclState, conds: &Conditions, v6: bool) -> Vec<(Pos, i32, u32)> {
    let mut ev = Vec::new();
    for (ci, m) in conds.list.iter().enumerate() {
        let ci = ci as u32;
        let mut push = |(a, b): (Pos, Pos)| {
            ev.push((a, 1, ci));
            ev.push((b, -1, ci));
        };
        match (m, v6) {
            (AddrMatch::Prefix(IpNetwork::V4(p)), false) => {
                push(span(u32::from(p.network()) as u128, p.prefix(), 32));
            }
            (AddrMatch::Prefix(IpNetwork::V6(p)), true) => {
                push(span(u128::from(p.network()), p.prefix(), 128));
            }
            (AddrMatch::Prefix(_), _) => {}
            (AddrMatch::Set(s), false) => state.sets[s]
                .v4
                .iter()
                .for_each(|p| push(span(u32::from(p.network()) as u128, p.prefix(), 32))),
            (AddrMatch::Set(s), true) => state.sets[s]
                .v6
                .iter()
                .for_each(|p| push(span(u128::from(p.network()), p.prefix(), 128))),
        }
    }
    ev
}

/// Compiles `state` for the interfaces in `slots` (name -> slot 1..MAX_IFACES),
/// for tables of the default (largest) capacities.
pub fn compile(state: &AclState, slots: &BTreeMap<String, u32>) -> Result<Image, Vec<AclError>> {
    compile_for(state, slots, &Capacities::default())
}

/// [`compile`] for tables of capacities `caps` (`[acl]`): a rule set that
/// does not fit them is refused, naming the key.
pub fn compile_for(
    state: &AclState,
    slots: &BTreeMap<String, u32>,
    caps: &Capacities,
) -> Result<Image, Vec<AclError>> {
    compile_parts(state, slots, caps).map(|(image, _)| image)
}

/// The address part of a compile, kept by the incremental compiler
/// (`incr`): the conditions, the disjoint intervals of each family with
/// their class, and the condition set of each class.
struct AddrParts {
    conds: Vec<AddrMatch>,
    v4: Vec<(u128, u128, u16)>,
    v6: Vec<(u128, u128, u16)>,
    class_sets: Vec<(u8, Vec<u32>)>,
}

/// [`compile`], also returning the address part for the incremental compiler.
fn compile_parts(
    state: &AclState,
    slots: &BTreeMap<String, u32>,
    caps: &Capacities,
) -> Result<(Image, AddrParts), Vec<AclError>> {
    let rules = state.ordered_rules();
    if rules.len() > xdpgate_common::acl::MAX_RULES as usize {
        return Err(vec![AclError::Capacity {
            what: "rules",
            have: rules.len(),
            max: xdpgate_common::acl::MAX_RULES as usize,
        }]);
    }
    debug_assert!(xdpgate_common::acl::MAX_RULES as usize <= limits::MAX_RULES);
    let n = rules.len();
    let (rt, mut errs) = rule_tables(state, &rules, slots);
    // Address dimensions.
    let conds = Conditions::of(&rules);
    let v4 = sweep(events(state, &conds, false));
    let v6 = sweep(events(state, &conds, true));
    let mut class_of: HashMap<(u8, Vec<u32>), u16> = HashMap::new();
    let mut class_sets: Vec<(u8, Vec<u32>)> = vec![(4, Vec::new()), (6, Vec::new())];
    class_of.insert((4, Vec::new()), V4_NONE_CLASS);
    class_of.insert((6, Vec::new()), V6_NONE_CLASS);
    let mut intern = |fam: u8, set: &Vec<u32>| -> u16 {
        if let Some(c) = class_of.get(&(fam, set.clone())) {
            return *c;
        }
        let c = class_sets.len() as u16;
        class_sets.push((fam, set.clone()));
        class_of.insert((fam, set.clone()), c);
        c
    };
    let v4: Vec<(u128, u128, u16)> = v4.iter().map(|(a, b, s)| (*a, *b, intern(4, s))).collect();
    let v6: Vec<(u128, u128, u16)> = v6.iter().map(|(a, b, s)| (*a, *b, intern(6, s))).collect();
    if class_sets.len() > MAX_ADDR_CLASSES as usize {
        errs.push(AclError::Capacity {
            what: "address classes (distinct combinations of rule address matches)",
            have: class_sets.len(),
            max: MAX_ADDR_CLASSES as usize,
        });
    }
    if !errs.is_empty() {
        return Err(errs);
    }

    let (src_bm, dst_bm) = address_bitmaps(&rules, &conds, &class_sets, n);
    let mut long = Long::default();
    let v4_tbl24 = build_v4(&v4, &mut long);
    let (v6_buckets, v6_blocks) = build_v6(&v6, &mut long, caps.v6_blocks as usize);
    if long.lensets.len() > LENSETS as usize {
        errs.push(AclError::Capacity {
            what: "prefix-length sets",
            have: long.lensets.len(),
            max: LENSETS as usize,
        });
    }
    if let Err(e) = caps.check_prefixes(long.table.len()) {
        errs.push(e);
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let prefix_entries = long.table.len();
    let prefix_table = place(&long.table, caps.prefix_bucket_bits).map_err(|()| {
        vec![AclError::Capacity {
            what: "long prefixes (IPv4 > /24, IPv6 > /16) and search markers (table could not place them all)",
            have: prefix_entries,
            max: prefix_entries.saturating_sub(1),
        }]
    })?;

    let bms = [
        &rt.iface_bm,
        &rt.proto_bm,
        &src_bm,
        &dst_bm,
        &rt.sport_bm,
        &rt.dport_bm,
    ];
    let dims = phases::Dims { bms, rules: n };
    let phases = phases::build_within(&dims, caps.phase_cells as usize);
    caps.walk_fits(phases.as_ref(), &dims)?;
    let image = Image {
        rule_ids: rules.iter().map(|r| r.id).collect(),
        rule_verdicts: rules.iter().map(|r| r.action).collect(),
        rule_extras: rules.iter().map(|r| extras(r)).collect(),
        default_verdicts: rt.default_verdicts,
        iface_bm: rt.iface_bm,
        proto_bm: rt.proto_bm,
        sport_class: rt.sport_class,
        dport_class: rt.dport_class,
        sport_bm: rt.sport_bm,
        dport_bm: rt.dport_bm,
        src_bm,
        dst_bm,
        v4_tbl24,
        v6_buckets,
        v6_blocks,
        lensets: long.lensets,
        prefix_table,
        prefix_entries,
        phases,
        caps: *caps,
    };
    let parts = AddrParts {
        conds: conds.list,
        v4,
        v6,
        class_sets,
    };
    Ok((image, parts))
}

fn port_group(p: u8) -> Option<u32> {
    match p {
        proto::TCP => Some(group::TCP),
        proto::UDP => Some(group::UDP),
        proto::SCTP => Some(group::SCTP),
        _ => None,
    }
}

/// The ND range of the ICMPv6 group: types 133..=137, any code.
const ND_KEYS: (u32, u32) = (133 << 8, (137 << 8) | 0xff);

/// Builds a port-like dimension: class per (group, key) and bitmap per class.
/// `dst` selects the destination-port/ICMP dimension (with ICMP groups and the
/// neighbour-discovery exception) over the source-port dimension.
fn port_dimension(
    rules: &[&Rule],
    n: usize,
    dst: bool,
) -> Result<(Vec<u16>, Vec<Bitmap>), AclError> {
    let groups = if dst {
        group::DPORT_GROUPS
    } else {
        group::SPORT_GROUPS
    };
    // What each rule asks of this dimension: None = anything, Some((g, lo, hi)).
    let want: Vec<Option<(u32, u32, u32)>> = rules
        .iter()
        .map(|r| {
            let range = if dst { r.dport } else { r.sport };
            if let Some(pr) = range {
                return Some((port_group(r.proto?)?, pr.lo as u32, pr.hi as u32));
            }
            if dst && let Some(t) = r.icmp_type {
                let g = if r.proto == Some(proto::ICMP) {
                    group::ICMP4
                } else {
                    group::ICMP6
                };
                let (lo, hi) = match r.icmp_code {
                    Some(c) => (c as u32, c as u32),
                    None => (0, 255),
                };
                return Some((g, (t as u32) << 8 | lo, (t as u32) << 8 | hi));
            }
            None
        })
        .collect();
    let names_nd = |i: usize| matches!(want[i], Some((g, lo, hi)) if g == group::ICMP6 && lo <= ND_KEYS.1 && hi >= ND_KEYS.0);
    // Bitmap of a key (or of NO_L4 for key None).
    let bitmap_for = |g: u32, key: Option<u32>| -> Bitmap {
        let nd =
            dst && g == group::ICMP6 && key.is_some_and(|k| (ND_KEYS.0..=ND_KEYS.1).contains(&k));
        let mut b = Bits::new();
        for (i, w) in want.iter().enumerate() {
            let ok = match (*w, key) {
                (None, _) => !nd || names_nd(i),
                (Some(_), None) => false,
                (Some((wg, lo, hi)), Some(k)) => wg == g && lo <= k && k <= hi,
            };
            if ok {
                b.set(i);
            }
        }
        if !nd {
            for slot in 0..MAX_IFACES {
                b.set(n + slot as usize);
            }
        }
        b.0
    };
    let mut classes = vec![NO_L4_CLASS; groups as usize * 65536];
    let mut bms = vec![bitmap_for(0, None)];
    let mut seen: HashMap<Vec<u64>, u16> = HashMap::new();
    seen.insert(bms[0].words.to_vec(), NO_L4_CLASS);
    for g in 0..groups {
        // Cut points: every range start and every range end + 1 in this group.
        let mut cuts = vec![0u32, 65536];
        for (wg, lo, hi) in want.iter().flatten() {
            if *wg == g {
                cuts.push(*lo);
                cuts.push(hi + 1);
            }
        }
        if dst && g == group::ICMP6 {
            cuts.push(ND_KEYS.0);
            cuts.push(ND_KEYS.1 + 1);
        }
        cuts.sort_unstable();
        cuts.dedup();
        for w in cuts.windows(2) {
            let b = bitmap_for(g, Some(w[0]));
            let next = bms.len() as u16;
            let class = *seen.entry(b.words.to_vec()).or_insert_with(|| {
                bms.push(b);
                next
            });
            for k in w[0]..w[1] {
                classes[(g * 65536 + k) as usize] = class;
            }
        }
    }
    if bms.len() > MAX_PORT_CLASSES as usize {
        return Err(AclError::Capacity {
            what: if dst {
                "destination port/ICMP classes"
            } else {
                "source port classes"
            },
            have: bms.len(),
            max: MAX_PORT_CLASSES as usize,
        });
    }
    Ok((classes, bms))
}

fn address_bitmaps(
    rules: &[&Rule],
    conds: &Conditions,
    class_sets: &[(u8, Vec<u32>)],
    n: usize,
) -> (Vec<Bitmap>, Vec<Bitmap>) {
    let fam_ok = |r: &Rule, fam: u8| match r.family() {
        RuleFamily::Any => true,
        RuleFamily::V4 => fam == 4,
        RuleFamily::V6 => fam == 6,
    };
    let build = |pick: fn(&Rule) -> &Option<AddrMatch>| -> Vec<Bitmap> {
        class_sets
            .iter()
            .map(|(fam, set)| {
                let mut b = Bits::new();
                for (i, r) in rules.iter().enumerate() {
                    if !fam_ok(r, *fam) {
                        continue;
                    }
                    let ok = match pick(r) {
                        None => true,
                        Some(m) => set.binary_search(&conds.index[m]).is_ok(),
                    };
                    if ok {
                        b.set(i);
                    }
                }
                for slot in 0..MAX_IFACES {
                    b.set(n + slot as usize);
                }
                b.0
            })
            .collect()
    };
    (build(|r| &r.src), build(|r| &r.dst))
}

/// The long-prefix part of the address tables, shared by both families:
/// length sets and the hash of prefixes and markers.
struct Long {
    lensets: Vec<LenSet>,
    ids: HashMap<Vec<u8>, u16>,
    table: HashMap<PrefixKey, PrefixEntry>,
}

impl Default for Long {
    fn default() -> Self {
        Long {
            lensets: vec![LenSet {
                n: 0,
                lens: [0; MAX_LENS],
            }],
            ids: HashMap::new(),
            table: HashMap::new(),
        }
    }
}

impl Long {
    /// The id of length set `lens` (sorted, distinct), added if new.
    fn intern(&mut self, lens: &[u8]) -> u16 {
        let next = self.lensets.len() as u16;
        *self.ids.entry(lens.to_vec()).or_insert_with(|| {
            let mut s = LenSet {
                n: lens.len() as u32,
                lens: [0; MAX_LENS],
            };
            s.lens[..lens.len()].copy_from_slice(lens);
            self.lensets.push(s);
            next
        })
    }

    /// Adds one bucket's prefixes `(start, len, class)` (all longer than the
    /// bucket, disjoint); returns the bucket's length-set id. `key` builds a
    /// hash key from an address and a length.
    fn bucket(&mut self, list: &[(u128, u8, u16)], key: impl Fn(u128, u8) -> PrefixKey) -> u16 {
        let mut lens: Vec<u8> = list.iter().map(|p| p.1).collect();
        lens.sort_unstable();
        lens.dedup();
        let id = self.intern(&lens);
        insert_searched(&mut self.table, list, &lens, key);
        id
    }
}

/// IPv4: a class per /24, or for /24s holding longer prefixes the class of the
/// rest of the /24 plus the length set to search in the shared hash.
fn build_v4(intervals: &[(u128, u128, u16)], long: &mut Long) -> Vec<u32> {
    let mut tbl24 = vec![V4_NONE_CLASS as u32; V4_TBL24_ENTRIES as usize];
    let mut longer: BTreeMap<u32, Vec<(u128, u8, u16)>> = BTreeMap::new();
    let mut prefixes = Vec::new();
    for &(a, b, class) in intervals {
        prefixes.clear();
        // Work in the 128-bit space with the IPv4 address in the low 32 bits.
        cidrs(a << 96, (b << 96) | ((1u128 << 96) - 1), &mut prefixes);
        for &(start, len) in &prefixes {
            let start = (start >> 96) as u32;
            if len <= 24 {
                let first = (start >> 8) as usize;
                let count = 1usize << (24 - len);
                for e in &mut tbl24[first..first + count] {
                    *e = class as u32;
                }
            } else {
                longer
                    .entry(start >> 8)
                    .or_default()
                    .push((start as u128, len, class));
            }
        }
    }
    for (blk, list) in longer {
        let id = long.bucket(&list, |a, l| v4_key(a as u32, l));
        tbl24[blk as usize] = v4_entry(tbl24[blk as usize] as u16, id);
    }
    tbl24
}

fn v4_key(addr: u32, len: u8) -> PrefixKey {
    let m = if len == 0 {
        0
    } else {
        addr & (u32::MAX << (32 - len as u32))
    };
    PrefixKey {
        len: V4_KEY_LEN_OFFSET + len as u32,
        addr: [m.to_be(), 0, 0, 0],
    }
}

/// Splits `[a, b]` into the fewest aligned prefixes: (start, length).
fn cidrs(mut a: u128, b: u128, out: &mut Vec<(u128, u8)>) {
    loop {
        let mut bits = if a == 0 { 128 } else { a.trailing_zeros() };
        let last = |bits: u32| {
            if bits == 128 {
                u128::MAX
            } else {
                a | ((1u128 << bits) - 1)
            }
        };
        while bits > 0 && last(bits) > b {
            bits -= 1;
        }
        out.push((a, (128 - bits) as u8));
        let end = last(bits);
        if end >= b {
            return;
        }
        a = end + 1;
    }
}

fn mask128(addr: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - len as u32))
    }
}

fn key(addr: u128, len: u8) -> PrefixKey {
    let m = mask128(addr, len);
    PrefixKey {
        len: len as u32,
        addr: [
            ((m >> 96) as u32).to_be(),
            ((m >> 64) as u32).to_be(),
            ((m >> 32) as u32).to_be(),
            (m as u32).to_be(),
        ],
    }
}

/// IPv6: a class per /16, or the class of the rest of the /16 plus the length
/// set to search in the shared hash, or the trie of blocks under the /16
/// ([`v6trie`]; the /16s in address order take blocks until they run out).
fn build_v6(
    intervals: &[(u128, u128, u16)],
    long: &mut Long,
    max_blocks: usize,
) -> (Vec<V6Bucket>, Vec<V6Block>) {
    let mut buckets = vec![
        V6Bucket {
            class: V6_NONE_CLASS,
            lenset: 0
        };
        65536
    ];
    let mut longer: BTreeMap<u16, Vec<(u128, u8, u16)>> = BTreeMap::new();
    let mut prefixes = Vec::new();
    for &(a, b, class) in intervals {
        prefixes.clear();
        cidrs(a, b, &mut prefixes);
        for &(start, len) in &prefixes {
            if len <= 16 {
                let first = (start >> 112) as usize;
                let count = 1usize << (16 - len);
                for bk in &mut buckets[first..first + count] {
                    bk.class = class;
                }
            } else {
                longer
                    .entry((start >> 112) as u16)
                    .or_default()
                    .push((start, len, class));
            }
        }
    }
    let mut blocks: Vec<V6Block> = Vec::new();
    for (bucket, list) in longer {
        let tree = v6trie::Tree::build(&list, max_blocks.saturating_sub(blocks.len()));
        let ids: Vec<u16> = (blocks.len()..blocks.len() + tree.blocks.len())
            .map(|i| i as u16)
            .collect();
        let sets: Vec<u16> = tree.lens.iter().map(|l| long.intern(l)).collect();
        for i in 0..tree.blocks.len() {
            blocks.push(tree.global_block(i, &ids, &sets));
        }
        buckets[bucket as usize] = v6trie::Tree::globalize(tree.root, &ids, &sets);
        long.table.extend(tree.entries);
    }
    (buckets, blocks)
}

/// Inserts the prefixes `(start, len, class)` of one region searched over
/// the sorted lengths `lens` into `table` (`key` builds a hash key from an
/// address and a length), with the markers of the search: at every length
/// the binary search passes on its way up to `len`, a marker says "longer".
pub(crate) fn insert_searched(
    table: &mut HashMap<PrefixKey, PrefixEntry>,
    list: &[(u128, u8, u16)],
    lens: &[u8],
    key: impl Fn(u128, u8) -> PrefixKey,
) {
    for &(start, len, class) in list {
        table.insert(key(start, len), PrefixEntry { class, marker: 0 });
        let (mut lo, mut hi) = (0i32, lens.len() as i32 - 1);
        while lo <= hi {
            let mid = (lo + hi) / 2;
            let l = lens[mid as usize];
            if l == len {
                break;
            }
            if l < len {
                table.entry(key(start, l)).or_insert(PrefixEntry {
                    class: 0,
                    marker: 1,
                });
                lo = mid + 1;
            } else {
                hi = mid - 1;
            }
        }
    }
}

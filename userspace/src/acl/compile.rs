//! Compiles an [`AclState`] into one generation of datapath tables, and evaluates
//! those tables in software exactly as the XDP program does (so the compiled form
//! can be checked against the reference classifier without a kernel).
//!
//! See `docs/design/acl.md`, part 2.
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnetwork::IpNetwork;
use xdpgate_common::{
    MAX_IFACES,
    acl::{
        BITMAP_WORDS, Bitmap, MAX_ADDR_CLASSES, MAX_PORT_CLASSES, NO_L4_CLASS, SUMMARY_WORDS,
        V4_EXT, V4_NONE_CLASS, V4_TBL8_BLOCKS, V4_TBL24_ENTRIES, V6_LENSETS, V6_MAX_LENS,
        V6_NONE_CLASS, V6_PREFIX_ENTRIES, V6Bucket, V6Entry, V6Key, V6LenSet, group,
    },
};

use super::{
    model::{AclError, AclState, AddrMatch, Rule, RuleFamily, Verdict, limits, proto},
    reference::{Decision, PacketInfo},
};

/// One compiled generation.
#[derive(Clone)]
pub struct Image {
    /// Rule ids in evaluation order (bit `i` of a bitmap is `rule_ids[i]`).
    pub rule_ids: Vec<u32>,
    /// Verdicts in the same order.
    pub rule_verdicts: Vec<Verdict>,
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
    /// IPv4 first level: entry per top 24 bits (class, or `V4_EXT | block`).
    pub v4_tbl24: Vec<u16>,
    /// IPv4 second level: 256 classes per block.
    pub v4_tbl8: Vec<u16>,
    /// IPv6 top-16 buckets.
    pub v6_buckets: Vec<V6Bucket>,
    /// IPv6 length sets; index 0 is the empty set.
    pub v6_lensets: Vec<V6LenSet>,
    /// IPv6 prefixes longer than /16 and search markers.
    pub v6_prefixes: HashMap<V6Key, V6Entry>,
}

/// Compile statistics, for logs and progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompileStats {
    /// Address classes.
    pub addr_classes: usize,
    /// Source and destination port classes.
    pub port_classes: (usize, usize),
    /// IPv4 second-level blocks.
    pub v4_blocks: usize,
    /// IPv6 hash entries (prefixes and markers).
    pub v6_entries: usize,
}

impl Image {
    /// Statistics of this image.
    pub fn stats(&self) -> CompileStats {
        CompileStats {
            addr_classes: self.src_bm.len(),
            port_classes: (self.sport_bm.len(), self.dport_bm.len()),
            v4_blocks: self.v4_tbl8.len() / 256,
            v6_entries: self.v6_prefixes.len(),
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
                    prev.1 = last
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
                push(span(u32::from(p.network()) as u128, p.prefix(), 32))
            }
            (AddrMatch::Prefix(IpNetwork::V6(p)), true) => {
                push(span(u128::from(p.network()), p.prefix(), 128))
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

/// Compiles `state` for the interfaces in `slots` (name -> slot 1..MAX_IFACES).
pub fn compile(state: &AclState, slots: &BTreeMap<String, u32>) -> Result<Image, Vec<AclError>> {
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
    let virtual_bit = |slot: u32| n + slot as usize;
    let mut errs = Vec::new();

    // Interface dimension: one bitmap per slot.
    let mut iface_bm = Vec::with_capacity(MAX_IFACES as usize);
    for slot in 0..MAX_IFACES {
        let mut b = Bits::new();
        for (i, r) in rules.iter().enumerate() {
            let ok = match &r.iface {
                None => true,
                Some(name) => slots.get(name) == Some(&slot),
            };
            if ok {
                b.set(i);
            }
        }
        b.set(virtual_bit(slot));
        iface_bm.push(b.0);
    }
    let mut default_verdicts = vec![Verdict::Allow; MAX_IFACES as usize];
    for (name, slot) in slots {
        default_verdicts[*slot as usize] = state.policy(name);
    }

    // Protocol dimension: one bitmap per protocol number.
    let proto_bm: Vec<Bitmap> = (0..=255u8)
        .map(|p| {
            let mut b = Bits::new();
            for (i, r) in rules.iter().enumerate() {
                if r.proto.is_none_or(|rp| rp == p) {
                    b.set(i);
                }
            }
            for slot in 0..MAX_IFACES {
                b.set(virtual_bit(slot));
            }
            b.0
        })
        .collect();

    // Port dimensions.
    let (sport_class, sport_bm) = match port_dimension(&rules, n, false) {
        Ok(v) => v,
        Err(e) => {
            errs.push(e);
            (Vec::new(), Vec::new())
        }
    };
    let (dport_class, dport_bm) = match port_dimension(&rules, n, true) {
        Ok(v) => v,
        Err(e) => {
            errs.push(e);
            (Vec::new(), Vec::new())
        }
    };

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
    let v4: Vec<(u32, u32, u16)> = v4
        .iter()
        .map(|(a, b, s)| (*a as u32, *b as u32, intern(4, s)))
        .collect();
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
    let (v4_tbl24, v4_tbl8) = build_v4(&v4);
    let (v6_buckets, v6_lensets, v6_prefixes) = build_v6(&v6);
    let caps = [
        (
            "IPv4 second-level blocks (/24s holding longer prefixes)",
            v4_tbl8.len() / 256,
            V4_TBL8_BLOCKS as usize,
        ),
        (
            "IPv6 prefix-length sets",
            v6_lensets.len(),
            V6_LENSETS as usize,
        ),
        (
            "IPv6 prefixes longer than /16 and search markers",
            v6_prefixes.len(),
            V6_PREFIX_ENTRIES as usize,
        ),
    ];
    for (what, have, max) in caps {
        if have > max {
            errs.push(AclError::Capacity { what, have, max });
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }

    Ok(Image {
        rule_ids: rules.iter().map(|r| r.id).collect(),
        rule_verdicts: rules.iter().map(|r| r.action).collect(),
        default_verdicts,
        iface_bm,
        proto_bm,
        sport_class,
        dport_class,
        sport_bm,
        dport_bm,
        src_bm,
        dst_bm,
        v4_tbl24,
        v4_tbl8,
        v6_buckets,
        v6_lensets,
        v6_prefixes,
    })
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

fn build_v4(intervals: &[(u32, u32, u16)]) -> (Vec<u16>, Vec<u16>) {
    let mut tbl24 = vec![V4_NONE_CLASS; V4_TBL24_ENTRIES as usize];
    let mut tbl8: Vec<u16> = Vec::new();
    for &(a, b, class) in intervals {
        let (first, last) = (a >> 8, b >> 8);
        for blk in first..=last {
            let lo = blk << 8;
            let hi = lo | 0xff;
            if a <= lo && hi <= b {
                tbl24[blk as usize] = class;
                continue;
            }
            let e = tbl24[blk as usize];
            let block = if e & V4_EXT != 0 {
                (e & !V4_EXT) as usize
            } else {
                let idx = tbl8.len() / 256;
                tbl8.extend(std::iter::repeat_n(e, 256));
                tbl24[blk as usize] = V4_EXT | idx as u16;
                idx
            };
            for x in a.max(lo)..=b.min(hi) {
                tbl8[block * 256 + (x & 0xff) as usize] = class;
            }
        }
    }
    (tbl24, tbl8)
}

/// Splits `[a, b]` into the fewest aligned prefixes: (start, length).
fn cidrs(mut a: u128, b: u128, out: &mut Vec<(u128, u8)>) {
    loop {
        let size_bits = if a == 0 {
            128
        } else {
            a.trailing_zeros().min(128)
        };
        let mut bits = size_bits;
        // Shrink until the block fits in [a, b].
        while bits > 0 {
            let last = if bits == 128 {
                u128::MAX
            } else {
                a | ((1u128 << bits) - 1)
            };
            if last <= b {
                break;
            }
            bits -= 1;
        }
        out.push((a, (128 - bits) as u8));
        let last = if bits == 128 {
            u128::MAX
        } else {
            a | ((1u128 << bits) - 1)
        };
        if last >= b {
            return;
        }
        a = last + 1;
    }
}

fn mask128(addr: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - len as u32))
    }
}

fn key(addr: u128, len: u8) -> V6Key {
    let m = mask128(addr, len);
    V6Key {
        len: len as u32,
        addr: [
            ((m >> 96) as u32).to_be(),
            ((m >> 64) as u32).to_be(),
            ((m >> 32) as u32).to_be(),
            (m as u32).to_be(),
        ],
    }
}

#[allow(clippy::type_complexity)]
fn build_v6(
    intervals: &[(u128, u128, u16)],
) -> (Vec<V6Bucket>, Vec<V6LenSet>, HashMap<V6Key, V6Entry>) {
    let mut buckets = vec![
        V6Bucket {
            class: V6_NONE_CLASS,
            lenset: 0
        };
        65536
    ];
    let mut long: BTreeMap<u16, Vec<(u128, u8, u16)>> = BTreeMap::new();
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
                long.entry((start >> 112) as u16)
                    .or_default()
                    .push((start, len, class));
            }
        }
    }
    let empty = V6LenSet {
        n: 0,
        lens: [0; V6_MAX_LENS],
    };
    let mut lensets = vec![empty];
    let mut lenset_ids: HashMap<Vec<u8>, u16> = HashMap::new();
    let mut table = HashMap::new();
    for (bucket, list) in long {
        let mut lens: Vec<u8> = list.iter().map(|p| p.1).collect();
        lens.sort_unstable();
        lens.dedup();
        let id = *lenset_ids.entry(lens.clone()).or_insert_with(|| {
            let mut s = empty;
            s.n = lens.len() as u32;
            s.lens[..lens.len()].copy_from_slice(&lens);
            lensets.push(s);
            (lensets.len() - 1) as u16
        });
        buckets[bucket as usize].lenset = id;
        for &(start, len, class) in &list {
            table.insert(key(start, len), V6Entry { class, marker: 0 });
            // Markers along the binary-search path toward `len`.
            let (mut lo, mut hi) = (0i32, lens.len() as i32 - 1);
            while lo <= hi {
                let mid = (lo + hi) / 2;
                let l = lens[mid as usize];
                if l == len {
                    break;
                }
                if l < len {
                    table.entry(key(start, l)).or_insert(V6Entry {
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
    (buckets, lensets, table)
}

impl Image {
    /// The address class of `ip`, as the datapath computes it.
    pub fn addr_class(&self, ip: IpAddr) -> u16 {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                let e = self.v4_tbl24[(a >> 8) as usize];
                if e & V4_EXT != 0 {
                    self.v4_tbl8[((e & !V4_EXT) as usize) * 256 + (a & 0xff) as usize]
                } else {
                    e
                }
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                let b = self.v6_buckets[(a >> 112) as usize];
                if b.lenset == 0 {
                    return b.class;
                }
                let set = &self.v6_lensets[b.lenset as usize];
                let (mut lo, mut hi) = (0i32, set.n as i32 - 1);
                // At most ceil(log2(V6_MAX_LENS + 1)) = 7 probes.
                for _ in 0..7 {
                    if lo > hi {
                        break;
                    }
                    let mid = (lo + hi) / 2;
                    let l = set.lens[mid as usize];
                    match self.v6_prefixes.get(&key(a, l)) {
                        Some(e) if e.marker == 0 => return e.class,
                        Some(_) => lo = mid + 1,
                        None => hi = mid - 1,
                    }
                }
                b.class
            }
        }
    }

    /// The index of the first rule (real, or virtual default) that accepts the
    /// packet on interface `slot`, by ANDing the six bitmaps the way the datapath
    /// does; `None` when no rule does (neighbour discovery without a rule).
    pub fn resolve(&self, slot: u32, pkt: &PacketInfo) -> Option<usize> {
        let (sk, dk) = self.port_keys(pkt);
        let bms = [
            &self.iface_bm[slot as usize],
            &self.proto_bm[pkt.proto as usize],
            &self.src_bm[self.addr_class(pkt.src) as usize],
            &self.dst_bm[self.addr_class(pkt.dst) as usize],
            &self.sport_bm[sk as usize],
            &self.dport_bm[dk as usize],
        ];
        for s in 0..SUMMARY_WORDS {
            let mut m = bms.iter().fold(u64::MAX, |acc, b| acc & b.summary[s]);
            while m != 0 {
                let w = s * 64 + m.trailing_zeros() as usize;
                m &= m - 1;
                if w >= BITMAP_WORDS {
                    break;
                }
                let word = bms.iter().fold(u64::MAX, |acc, b| acc & b.words[w]);
                if word != 0 {
                    return Some(w * 64 + word.trailing_zeros() as usize);
                }
            }
        }
        None
    }

    fn port_keys(&self, pkt: &PacketInfo) -> (u16, u16) {
        if pkt.later_fragment {
            return (NO_L4_CLASS, NO_L4_CLASS);
        }
        if let (Some((sp, dp)), Some(g)) = (pkt.ports, port_group(pkt.proto)) {
            return (
                self.sport_class[(g * 65536 + sp as u32) as usize],
                self.dport_class[(g * 65536 + dp as u32) as usize],
            );
        }
        if let Some((t, c)) = pkt.icmp {
            let g = if pkt.src.is_ipv4() {
                group::ICMP4
            } else {
                group::ICMP6
            };
            let k = (t as u32) << 8 | c as u32;
            return (NO_L4_CLASS, self.dport_class[(g * 65536 + k) as usize]);
        }
        (NO_L4_CLASS, NO_L4_CLASS)
    }

    /// The decision, in the reference classifier's terms.
    pub fn decide(&self, slot: u32, pkt: &PacketInfo) -> Decision {
        match self.resolve(slot, pkt) {
            Some(i) if i < self.rule_ids.len() => Decision {
                verdict: self.rule_verdicts[i],
                rule: Some(self.rule_ids[i]),
            },
            Some(i) => Decision {
                verdict: self.default_verdicts[i - self.rule_ids.len()],
                rule: None,
            },
            None => Decision {
                verdict: Verdict::Allow,
                rule: None,
            },
        }
    }
}

/// Converts an address to the big-endian words the datapath and `V6Key` use.
pub fn v6_words(a: Ipv6Addr) -> [u32; 4] {
    key(u128::from(a), 128).addr
}

/// The IPv4 address as the datapath reads it (big-endian word).
pub fn v4_word(a: Ipv4Addr) -> u32 {
    u32::from(a).to_be()
}

//! Incremental compilation: the compiled state kept between changes, and the
//! update of its tables for one change (prefixes added to or removed from a
//! set, rules added or removed) without recompiling everything.
//!
//! [`Incremental::build`] compiles a state in full ([`compile`](super::compile))
//! and keeps what the next change needs: the conditions (the distinct address
//! matches of the rules, with stable ids and the number of rule sides naming
//! each), the disjoint address intervals of each family with their class,
//! each class's condition set with the number of intervals holding it, and
//! the length sets with the number of blocks (IPv4 /24s, IPv6 /16s) using
//! them. [`Incremental::update`] recomputes only the address ranges a change
//! touches (the prefixes added or removed, or the prefixes of a condition a
//! rule adds or drops), interns the condition sets found there as classes
//! (new ids from a free list), rebuilds the blocks of the first-level tables
//! those ranges overlap, and moves their long prefixes and markers in and out
//! of the cuckoo table. What changed is returned as a [`Delta`]: the table
//! entries to write into each generation. The result is the full compile's,
//! up to the numbering of classes and length sets and the placement of keys
//! in the cuckoo table (the equivalence test below compares them).
//!
//! See `docs/design/acl.md`, "Incremental updates".
use std::collections::{BTreeMap, BTreeSet, HashMap};

use ipnetwork::IpNetwork;
use xdpgate_common::{
    MAX_IFACES,
    acl::{
        Bitmap, LENSETS, LenSet, MAX_ADDR_CLASSES, MAX_LENS, PREFIX_BUCKET_SLOTS, PREFIX_ENTRIES,
        PrefixEntry, PrefixKey, PrefixSlot, SUMMARY_WORDS, V4_EXT, V4_NONE_CLASS, V6_NONE_CLASS,
        prefix_buckets, v4_entry,
    },
};

use super::{
    AddrParts, Bits, Image, cidrs, compile_parts, extras, key, rule_tables, sweep, v4_key,
};
use crate::acl::model::{
    AclError, AclState, AddrMatch, Change, PrefixSet, Rule, RuleFamily, parse_prefix,
};

/// A change touching more prefixes than this (a rule naming a large set, a
/// change listing many prefixes) is compiled in full: past it the per-range
/// work costs more than one pass over everything.
pub const MAX_INCREMENTAL_PREFIXES: usize = 50_000;

/// An address range shorter than this many first-level blocks is updated
/// incrementally; a wider one (an IPv4 prefix shorter than /8) is compiled in
/// full, which rewrites the first level in one sweep.
const MAX_RANGE_BLOCKS: u128 = 1 << 16;

/// The entries of the tables that an update changed: write exactly these
/// (their values are the image's) into a generation that holds the image of
/// before the update, and it holds the image of after.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// IPv4 first-level entries (indices into `v4_tbl24`), ascending.
    pub v4_tbl24: Vec<u32>,
    /// IPv6 top-16 buckets, ascending.
    pub v6_buckets: Vec<u32>,
    /// Length sets, ascending.
    pub lensets: Vec<u16>,
    /// Buckets of the long-prefix table, ascending.
    pub prefix_buckets: Vec<u32>,
    /// Address classes whose bitmaps (source and destination) are new: the
    /// classes this update created. A later phase recomputation consumes
    /// these (with [`Delta::freed_classes`]).
    pub new_classes: Vec<u16>,
    /// Address classes no table refers to any more (their ids are free).
    pub freed_classes: Vec<u16>,
    /// The rules changed: every rule-dimension table (interfaces, protocols,
    /// ports, the rule information) and the bitmap of every address class
    /// (one bit column more or less) are rewritten.
    pub rules: bool,
}

impl Delta {
    /// Whether the update changed no table entry.
    pub fn is_empty(&self) -> bool {
        self.v4_tbl24.is_empty()
            && self.v6_buckets.is_empty()
            && self.lensets.is_empty()
            && self.prefix_buckets.is_empty()
            && self.new_classes.is_empty()
            && !self.rules
    }
}

/// Why an update was not made incrementally. The caller compiles the new
/// state in full instead (which also finds the errors a change really has).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// The change is of a kind compiled in full (a replacement, a policy),
    /// or touches too many prefixes or too wide a range. Nothing changed.
    Shape,
    /// A table filled up, the cuckoo table could not place a key, or a rule
    /// change turned out to touch too wide a range: the full compile reports
    /// the capacity error, or succeeds by renumbering. The compiled state was
    /// half updated and is no longer usable (drop it).
    Spoiled,
}

/// The geometry of one family's address tables.
#[derive(Clone, Copy)]
struct Fam {
    /// Class-set family tag (4 or 6), as in the full compile.
    tag: u8,
    /// Address bits.
    bits: u32,
    /// An address's first-level block is `addr >> shift`.
    shift: u32,
    /// The class of addresses in no prefix.
    none: u16,
}

const FAMS: [Fam; 2] = [
    Fam {
        tag: 4,
        bits: 32,
        shift: 8,
        none: V4_NONE_CLASS,
    },
    Fam {
        tag: 6,
        bits: 128,
        shift: 112,
        none: V6_NONE_CLASS,
    },
];

/// The content of one first-level block: its class (the block is one class)
/// or its length set and long-prefix entries.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Block {
    class: u16,
    lens: Vec<u8>,
    entries: HashMap<PrefixKey, PrefixEntry>,
}

/// The compiled state kept between changes. See the module documentation.
#[derive(Clone)]
pub struct Incremental {
    image: Image,
    slots: BTreeMap<String, u32>,
    conds: Vec<Option<AddrMatch>>,
    cond_of: HashMap<AddrMatch, u32>,
    cond_users: Vec<u32>,
    free_conds: Vec<u32>,
    /// Per family: interval start -> (end, class); gaps (no condition) absent.
    ivs: [BTreeMap<u128, (u128, u16)>; 2],
    class_sets: Vec<Option<(u8, Vec<u32>)>>,
    class_of: HashMap<(u8, Vec<u32>), u16>,
    class_refs: Vec<u32>,
    free_classes: Vec<u16>,
    lenset_of: HashMap<Vec<u8>, u16>,
    lenset_refs: Vec<u32>,
    free_lensets: Vec<u16>,
    /// Length sets whose last block went during the current update.
    unused_lensets: Vec<u16>,
    rng: u64,
}

impl std::fmt::Debug for Incremental {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incremental")
            .field("stats", &self.image.stats())
            .field("intervals", &[self.ivs[0].len(), self.ivs[1].len()])
            .finish_non_exhaustive()
    }
}

impl Incremental {
    /// Compiles `state` in full for the interfaces in `slots`, keeping what
    /// the next [`Incremental::update`] needs.
    pub fn build(state: &AclState, slots: &BTreeMap<String, u32>) -> Result<Self, Vec<AclError>> {
        let (image, parts) = compile_parts(state, slots)?;
        let AddrParts {
            conds,
            v4,
            v6,
            class_sets,
        } = parts;
        let mut cond_users = vec![0u32; conds.len()];
        let cond_of: HashMap<AddrMatch, u32> = conds
            .iter()
            .enumerate()
            .map(|(i, m)| (m.clone(), i as u32))
            .collect();
        for r in state.rules.values() {
            for m in [&r.src, &r.dst].into_iter().flatten() {
                cond_users[cond_of[m] as usize] += 1;
            }
        }
        let mut class_refs = vec![0u32; class_sets.len()];
        let mut ivs = [BTreeMap::new(), BTreeMap::new()];
        for (f, list) in [v4, v6].into_iter().enumerate() {
            for (a, b, c) in list {
                class_refs[c as usize] += 1;
                ivs[f].insert(a, (b, c));
            }
        }
        let class_of = class_sets
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u16))
            .collect();
        let mut lenset_refs = vec![0u32; image.lensets.len()];
        for e in &image.v4_tbl24 {
            if e & V4_EXT != 0 {
                lenset_refs[(e >> 16 & 0xfff) as usize] += 1;
            }
        }
        for b in &image.v6_buckets {
            lenset_refs[b.lenset as usize] += 1;
        }
        let lenset_of = image
            .lensets
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, s)| (s.lens[..s.n as usize].to_vec(), i as u16))
            .collect();
        Ok(Incremental {
            image,
            slots: slots.clone(),
            conds: conds.into_iter().map(Some).collect(),
            cond_of,
            cond_users,
            free_conds: Vec::new(),
            ivs,
            class_sets: class_sets.into_iter().map(Some).collect(),
            class_of,
            class_refs,
            free_classes: Vec::new(),
            lenset_of,
            lenset_refs,
            free_lensets: Vec::new(),
            unused_lensets: Vec::new(),
            rng: 0x9e37_79b9_7f4a_7c15,
        })
    }

    /// The compiled tables.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// The interfaces the tables were compiled for.
    pub fn slots(&self) -> &BTreeMap<String, u32> {
        &self.slots
    }

    /// Updates the tables from `old` (the state they were compiled from) to
    /// `next` (`old` with `change` applied and validated). On
    /// [`Fallback::Shape`] nothing changed; on [`Fallback::Spoiled`] the
    /// tables are half updated and must be dropped.
    pub fn update(
        &mut self,
        old: &AclState,
        next: &AclState,
        change: &Change,
    ) -> Result<Delta, Fallback> {
        let mut ranges: [Vec<(u128, u128)>; 2] = [Vec::new(), Vec::new()];
        let mut delta = Delta::default();
        match change {
            Change::SetAdd { name, prefixes } | Change::SetDel { name, prefixes } => {
                if prefixes.is_empty() {
                    // Removing a whole set: allowed only when no rule uses it.
                    return Ok(delta);
                }
                if prefixes.len() > MAX_INCREMENTAL_PREFIXES {
                    return Err(Fallback::Shape);
                }
                if !self.cond_of.contains_key(&AddrMatch::Set(name.clone())) {
                    // No rule names the set: no table holds its prefixes.
                    return Ok(delta);
                }
                for p in prefixes {
                    let net = parse_prefix(p).map_err(|_| Fallback::Shape)?;
                    push_range(&mut ranges, &net);
                }
            }
            Change::RuleAdd { rules } => {
                let added: Vec<&Rule> = rules.iter().collect();
                self.rule_change(old, next, &[], &added, &mut ranges, &mut delta)?;
            }
            Change::RuleDel { ids } => {
                let removed: Vec<&Rule> = ids.iter().filter_map(|id| old.rules.get(id)).collect();
                self.rule_change(old, next, &removed, &[], &mut ranges, &mut delta)?;
            }
            Change::Replace { .. } | Change::Policy { .. } => return Err(Fallback::Shape),
        }
        for (f, list) in ranges.iter_mut().enumerate() {
            list.sort_unstable();
            let mut merged: Vec<(u128, u128)> = Vec::new();
            for &(a, b) in list.iter() {
                match merged.last_mut() {
                    Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                    _ => merged.push((a, b)),
                }
            }
            let shift = FAMS[f].shift;
            if merged
                .iter()
                .any(|&(a, b)| (b >> shift) - (a >> shift) >= MAX_RANGE_BLOCKS)
            {
                return Err(if delta.rules {
                    Fallback::Spoiled
                } else {
                    Fallback::Shape
                });
            }
            *list = merged;
        }
        let rules = next.ordered_rules();
        // The blocks the ranges overlap, with their content before.
        let mut before: BTreeMap<(usize, u32), Block> = BTreeMap::new();
        for (f, list) in ranges.iter().enumerate() {
            for &(a, b) in list {
                let shift = FAMS[f].shift;
                for blk in (a >> shift) as u32..=(b >> shift) as u32 {
                    before.entry((f, blk)).or_insert_with(|| self.block(f, blk));
                }
            }
        }
        for (f, list) in ranges.iter().enumerate() {
            for &(a, b) in list {
                self.refresh(next, &rules, f, a, b, &mut delta)?;
            }
        }
        self.rebuild_blocks(before, &mut delta)?;
        self.release(&mut delta);
        Ok(delta)
    }

    /// Rule changes: condition reference counts, the bit columns of every
    /// address class, the rule-dimension tables, and the ranges of the
    /// conditions that appear or disappear.
    fn rule_change(
        &mut self,
        old: &AclState,
        next: &AclState,
        removed: &[&Rule],
        added: &[&Rule],
        ranges: &mut [Vec<(u128, u128)>; 2],
        delta: &mut Delta,
    ) -> Result<(), Fallback> {
        let cover = |ranges: &mut [Vec<(u128, u128)>; 2], m: &AddrMatch, st: &AclState| match m {
            AddrMatch::Prefix(p) => push_range(ranges, p),
            AddrMatch::Set(s) => {
                let set = &st.sets[s];
                for p in &set.v4 {
                    push_range(ranges, &IpNetwork::V4(*p));
                }
                for p in &set.v6 {
                    push_range(ranges, &IpNetwork::V6(*p));
                }
            }
        };
        // Check the size first: nothing may change before a fallback.
        {
            let mut users: HashMap<&AddrMatch, i64> = HashMap::new();
            for r in removed {
                for m in [&r.src, &r.dst].into_iter().flatten() {
                    *users.entry(m).or_insert(0) -= 1;
                }
            }
            for r in added {
                for m in [&r.src, &r.dst].into_iter().flatten() {
                    *users.entry(m).or_insert(0) += 1;
                }
            }
            let mut size = 0usize;
            for (m, d) in &users {
                let have = self
                    .cond_of
                    .get(*m)
                    .map_or(0, |c| self.cond_users[*c as usize]);
                let after = have as i64 + d;
                if (have == 0) != (after == 0) {
                    size += match m {
                        AddrMatch::Prefix(_) => 1,
                        AddrMatch::Set(s) => old
                            .sets
                            .get(s)
                            .or(next.sets.get(s))
                            .map_or(0, PrefixSet::len),
                    };
                }
            }
            if size > MAX_INCREMENTAL_PREFIXES {
                return Err(Fallback::Shape);
            }
        }
        let old_order = old.ordered_rules();
        let new_order = next.ordered_rules();
        // Rules naming no port and no ICMP type leave the port classes as
        // they are (their column is the same in every class but the
        // neighbour-discovery ones): their bit columns go in and out of the
        // interface, protocol and port bitmaps as of the address ones.
        // Other rule changes rebuild those tables.
        let columns = removed
            .iter()
            .chain(added)
            .all(|r| r.sport.is_none() && r.dport.is_none() && r.icmp_type.is_none());
        // Bit columns out: the removed rules, highest position first.
        let mut gone: Vec<usize> = removed
            .iter()
            .filter_map(|r| old_order.iter().position(|o| o.id == r.id))
            .collect();
        gone.sort_unstable_by(|a, b| b.cmp(a));
        for &pos in &gone {
            let img = &mut self.image;
            for bm in img.src_bm.iter_mut().chain(img.dst_bm.iter_mut()) {
                remove_bit(bm, pos);
            }
            if columns {
                let dims = [
                    &mut img.iface_bm,
                    &mut img.proto_bm,
                    &mut img.sport_bm,
                    &mut img.dport_bm,
                ];
                for bm in dims.into_iter().flat_map(|d| d.iter_mut()) {
                    remove_bit(bm, pos);
                }
            }
        }
        for r in removed {
            for m in [&r.src, &r.dst].into_iter().flatten() {
                let c = self.cond_of[m];
                self.cond_users[c as usize] -= 1;
                if self.cond_users[c as usize] == 0 {
                    cover(ranges, m, old);
                    self.cond_of.remove(m);
                    self.conds[c as usize] = None;
                    self.free_conds.push(c);
                }
            }
        }
        for r in added {
            for m in [&r.src, &r.dst].into_iter().flatten() {
                let c = match self.cond_of.get(m) {
                    Some(c) => *c,
                    None => {
                        cover(ranges, m, next);
                        let c = match self.free_conds.pop() {
                            Some(c) => c,
                            None => {
                                self.conds.push(None);
                                self.cond_users.push(0);
                                self.conds.len() as u32 - 1
                            }
                        };
                        self.conds[c as usize] = Some(m.clone());
                        self.cond_of.insert(m.clone(), c);
                        c
                    }
                };
                self.cond_users[c as usize] += 1;
            }
        }
        // Bit columns in: the added rules, lowest final position first, each
        // set for the classes the rule's address conditions accept.
        let mut fresh: Vec<(usize, &Rule)> = added
            .iter()
            .filter_map(|r| new_order.iter().position(|o| o.id == r.id).map(|p| (p, *r)))
            .collect();
        fresh.sort_unstable_by_key(|(p, _)| *p);
        // Real rules in the bitmaps so far (the virtual bits follow them).
        let mut n = old_order.len() - gone.len();
        for (pos, r) in fresh {
            if columns {
                let img = &mut self.image;
                for (slot, bm) in img.iface_bm.iter_mut().enumerate() {
                    let ok = r
                        .iface
                        .as_ref()
                        .is_none_or(|name| self.slots.get(name) == Some(&(slot as u32)));
                    insert_bit(bm, pos, ok);
                }
                for (p, bm) in img.proto_bm.iter_mut().enumerate() {
                    insert_bit(bm, pos, r.proto.is_none_or(|rp| rp as usize == p));
                }
                for bm in &mut img.sport_bm {
                    insert_bit(bm, pos, true);
                }
                // Neighbour discovery's classes lack the virtual bits, and
                // only rules naming it accept them.
                for bm in &mut img.dport_bm {
                    let nd = bm.words[n / 64] >> (n % 64) & 1 == 0;
                    insert_bit(bm, pos, !nd);
                }
            }
            n += 1;
            for (id, cs) in self.class_sets.iter().enumerate() {
                let (src, dst) = match cs {
                    Some((tag, set)) => (
                        self.accepts(r, *tag, set, |r| &r.src),
                        self.accepts(r, *tag, set, |r| &r.dst),
                    ),
                    None => (false, false),
                };
                insert_bit(&mut self.image.src_bm[id], pos, src);
                insert_bit(&mut self.image.dst_bm[id], pos, dst);
            }
        }
        if !columns {
            let (rt, errs) = rule_tables(next, &new_order, &self.slots);
            if !errs.is_empty() {
                return Err(Fallback::Spoiled);
            }
            let img = &mut self.image;
            img.iface_bm = rt.iface_bm;
            img.default_verdicts = rt.default_verdicts;
            img.proto_bm = rt.proto_bm;
            img.sport_class = rt.sport_class;
            img.sport_bm = rt.sport_bm;
            img.dport_class = rt.dport_class;
            img.dport_bm = rt.dport_bm;
        }
        let img = &mut self.image;
        img.rule_ids = new_order.iter().map(|r| r.id).collect();
        img.rule_verdicts = new_order.iter().map(|r| r.action).collect();
        img.rule_extras = new_order.iter().map(|r| extras(r)).collect();
        delta.rules = true;
        Ok(())
    }

    /// Whether rule `r`'s address match picked by `pick` accepts the class
    /// of family `tag` with condition set `set`.
    fn accepts(
        &self,
        r: &Rule,
        tag: u8,
        set: &[u32],
        pick: fn(&Rule) -> &Option<AddrMatch>,
    ) -> bool {
        let fam_ok = match r.family() {
            RuleFamily::Any => true,
            RuleFamily::V4 => tag == 4,
            RuleFamily::V6 => tag == 6,
        };
        fam_ok
            && match pick(r) {
                None => true,
                Some(m) => self
                    .cond_of
                    .get(m)
                    .is_some_and(|c| set.binary_search(c).is_ok()),
            }
    }

    /// The class of condition set `set` of family `tag`: an existing one, or
    /// a new id (from the free list) with its bitmaps computed.
    fn intern(
        &mut self,
        rules: &[&Rule],
        tag: u8,
        set: Vec<u32>,
        delta: &mut Delta,
    ) -> Result<u16, Fallback> {
        if let Some(c) = self.class_of.get(&(tag, set.clone())) {
            return Ok(*c);
        }
        let id = match self.free_classes.pop() {
            Some(id) => id,
            None => {
                let id = self.class_sets.len();
                if id >= MAX_ADDR_CLASSES as usize {
                    return Err(Fallback::Spoiled);
                }
                self.class_sets.push(None);
                self.class_refs.push(0);
                self.image.src_bm.push(Bitmap::EMPTY);
                self.image.dst_bm.push(Bitmap::EMPTY);
                id as u16
            }
        };
        let n = rules.len();
        let (mut src, mut dst) = (Bits::new(), Bits::new());
        for (i, r) in rules.iter().enumerate() {
            if self.accepts(r, tag, &set, |r| &r.src) {
                src.set(i);
            }
            if self.accepts(r, tag, &set, |r| &r.dst) {
                dst.set(i);
            }
        }
        for slot in 0..MAX_IFACES {
            src.set(n + slot as usize);
            dst.set(n + slot as usize);
        }
        self.image.src_bm[id as usize] = src.0;
        self.image.dst_bm[id as usize] = dst.0;
        self.class_sets[id as usize] = Some((tag, set.clone()));
        self.class_of.insert((tag, set), id);
        delta.new_classes.push(id);
        Ok(id)
    }

    /// Recomputes the intervals of `[lo, hi]` in family `f` from the
    /// prefixes of the active conditions that overlap it.
    fn refresh(
        &mut self,
        state: &AclState,
        rules: &[&Rule],
        f: usize,
        lo: u128,
        hi: u128,
        delta: &mut Delta,
    ) -> Result<(), Fallback> {
        let fam = FAMS[f];
        let mut events = Vec::new();
        for (ci, m) in self.conds.iter().enumerate() {
            let Some(m) = m else { continue };
            let ci = ci as u32;
            let mut push = |start: u128, len: u8| {
                let end = last(start, len, fam.bits);
                if end < lo || start > hi {
                    return;
                }
                let (a, b) = (start.max(lo), end.min(hi));
                events.push(((false, a), 1, ci));
                let stop = b.checked_add(1).map_or((true, 0), |e| (false, e));
                events.push((stop, -1, ci));
            };
            match m {
                AddrMatch::Prefix(IpNetwork::V4(p)) if f == 0 => {
                    push(u32::from(p.network()) as u128, p.prefix());
                }
                AddrMatch::Prefix(IpNetwork::V6(p)) if f == 1 => {
                    push(u128::from(p.network()), p.prefix());
                }
                AddrMatch::Prefix(_) => {}
                AddrMatch::Set(s) => {
                    let set = &state.sets[s];
                    if f == 0 {
                        let (lo4, hi4) = (lo as u32, hi as u32);
                        for len in 0..=32u8 {
                            let a = mask(lo, len, 32) as u32;
                            if a < lo4
                                && let Ok(n) = ipnetwork::Ipv4Network::new(a.into(), len)
                                && set.v4.contains(&n)
                            {
                                push(a as u128, len);
                            }
                        }
                        let from = ipnetwork::Ipv4Network::new(lo4.into(), 0).expect("length 0");
                        let to = ipnetwork::Ipv4Network::new(hi4.into(), 32).expect("length 32");
                        for p in set.v4.range(from..=to) {
                            push(u32::from(p.network()) as u128, p.prefix());
                        }
                    } else {
                        for len in 0..=128u8 {
                            let a = mask(lo, len, 128);
                            if a < lo
                                && let Ok(n) = ipnetwork::Ipv6Network::new(a.into(), len)
                                && set.v6.contains(&n)
                            {
                                push(a, len);
                            }
                        }
                        let from = ipnetwork::Ipv6Network::new(lo.into(), 0).expect("length 0");
                        let to = ipnetwork::Ipv6Network::new(hi.into(), 128).expect("length 128");
                        for p in set.v6.range(from..=to) {
                            push(u128::from(p.network()), p.prefix());
                        }
                    }
                }
            }
        }
        let fresh = sweep(events);
        // Out: every interval overlapping [lo, hi]; back: their parts outside.
        let mut out: Vec<(u128, u128, u16)> = Vec::new();
        if let Some((&a, &(b, c))) = self.ivs[f].range(..lo).next_back()
            && b >= lo
        {
            out.push((a, b, c));
        }
        out.extend(self.ivs[f].range(lo..=hi).map(|(&a, &(b, c))| (a, b, c)));
        for &(a, b, c) in &out {
            self.ivs[f].remove(&a);
            self.class_refs[c as usize] -= 1;
            if a < lo {
                self.add_iv(f, a, lo - 1, c);
            }
            if b > hi {
                self.add_iv(f, hi + 1, b, c);
            }
        }
        for (a, b, set) in fresh {
            let c = self.intern(rules, fam.tag, set, delta)?;
            self.add_iv(f, a, b, c);
        }
        // Merge across the range's edges where the class continues.
        if lo > 0 {
            self.merge_at(f, lo);
        }
        if let Some(next) = hi.checked_add(1) {
            self.merge_at(f, next);
        }
        Ok(())
    }

    fn add_iv(&mut self, f: usize, a: u128, b: u128, c: u16) {
        self.class_refs[c as usize] += 1;
        self.ivs[f].insert(a, (b, c));
    }

    /// Merges the interval starting at `pos` into the one ending just
    /// before it when both have the same class.
    fn merge_at(&mut self, f: usize, pos: u128) {
        let Some(&(b, c)) = self.ivs[f].get(&pos) else {
            return;
        };
        let Some((&pa, &(pb, pc))) = self.ivs[f].range(..pos).next_back() else {
            return;
        };
        if pb + 1 == pos && pc == c {
            self.ivs[f].remove(&pos);
            self.ivs[f].insert(pa, (b, c));
            self.class_refs[c as usize] -= 1;
        }
    }

    /// The content of block `blk` of family `f`, from the intervals, exactly
    /// as the full compile builds it (`build_v4`, `build_v6`, `Long::bucket`).
    fn block(&self, f: usize, blk: u32) -> Block {
        let fam = FAMS[f];
        let lo = (blk as u128) << fam.shift;
        let hi = lo | ((1u128 << fam.shift) - 1);
        let mut clipped: Vec<(u128, u128, u16)> = Vec::new();
        if let Some((_, &(b, c))) = self.ivs[f].range(..lo).next_back()
            && b >= lo
        {
            clipped.push((lo, b.min(hi), c));
        }
        for (&a, &(b, c)) in self.ivs[f].range(lo..=hi) {
            clipped.push((a, b.min(hi), c));
        }
        let plain = |class| Block {
            class,
            lens: Vec::new(),
            entries: HashMap::new(),
        };
        match clipped.as_slice() {
            [] => return plain(fam.none),
            [(a, b, c)] if *a == lo && *b == hi => return plain(*c),
            _ => {}
        }
        let mut pieces: Vec<(u128, u8)> = Vec::new();
        let mut list: Vec<(u128, u8, u16)> = Vec::new();
        for &(a, b, c) in &clipped {
            pieces.clear();
            if f == 0 {
                cidrs(a << 96, (b << 96) | ((1u128 << 96) - 1), &mut pieces);
                list.extend(pieces.iter().map(|&(s, l)| (s >> 96, l, c)));
            } else {
                cidrs(a, b, &mut pieces);
                list.extend(pieces.iter().map(|&(s, l)| (s, l, c)));
            }
        }
        let mut lens: Vec<u8> = list.iter().map(|p| p.1).collect();
        lens.sort_unstable();
        lens.dedup();
        let k = |a: u128, l: u8| {
            if f == 0 {
                v4_key(a as u32, l)
            } else {
                key(a, l)
            }
        };
        let mut entries = HashMap::new();
        for &(start, len, class) in &list {
            entries.insert(k(start, len), PrefixEntry { class, marker: 0 });
            let (mut lo, mut hi) = (0i32, lens.len() as i32 - 1);
            while lo <= hi {
                let mid = (lo + hi) / 2;
                let l = lens[mid as usize];
                if l == len {
                    break;
                }
                if l < len {
                    entries.entry(k(start, l)).or_insert(PrefixEntry {
                        class: 0,
                        marker: 1,
                    });
                    lo = mid + 1;
                } else {
                    hi = mid - 1;
                }
            }
        }
        Block {
            class: fam.none,
            lens,
            entries,
        }
    }

    /// Rebuilds the blocks in `before` (with their old content) from the
    /// intervals: first-level entries, length sets, long-prefix table.
    fn rebuild_blocks(
        &mut self,
        before: BTreeMap<(usize, u32), Block>,
        delta: &mut Delta,
    ) -> Result<(), Fallback> {
        let mut inserts: Vec<(PrefixKey, PrefixEntry)> = Vec::new();
        let mut buckets: BTreeSet<u32> = BTreeSet::new();
        let mut lensets: BTreeSet<u16> = BTreeSet::new();
        for ((f, blk), old) in before {
            let new = self.block(f, blk);
            if new == old {
                continue;
            }
            // The first level and the length set.
            let old_id = self.lenset_id(f, blk);
            let new_id = if new.lens.is_empty() {
                0
            } else {
                match self.lenset_of.get(&new.lens) {
                    Some(id) => *id,
                    None => {
                        let id = self.new_lenset(&new.lens)?;
                        lensets.insert(id);
                        id
                    }
                }
            };
            if new_id != 0 {
                self.lenset_refs[new_id as usize] += 1;
            }
            if old_id != 0 {
                self.lenset_refs[old_id as usize] -= 1;
                if self.lenset_refs[old_id as usize] == 0 {
                    self.unused_lensets.push(old_id);
                }
            }
            if f == 0 {
                self.image.v4_tbl24[blk as usize] = if new_id == 0 {
                    new.class as u32
                } else {
                    v4_entry(new.class, new_id)
                };
                delta.v4_tbl24.push(blk);
            } else {
                self.image.v6_buckets[blk as usize].class = new.class;
                self.image.v6_buckets[blk as usize].lenset = new_id;
                delta.v6_buckets.push(blk);
            }
            // The long-prefix table: out, changed in place, in.
            for (k, e) in &old.entries {
                match new.entries.get(k) {
                    Some(n) if n == e => {}
                    Some(n) => {
                        let (b, s) = self.find(k).ok_or(Fallback::Spoiled)?;
                        self.image.prefix_table[b].slots[s].class = n.class;
                        self.image.prefix_table[b].slots[s].marker = n.marker as u8;
                        buckets.insert(b as u32);
                    }
                    None => {
                        let (b, s) = self.find(k).ok_or(Fallback::Spoiled)?;
                        self.image.prefix_table[b].slots[s] = PrefixSlot::default();
                        self.image.prefix_entries -= 1;
                        buckets.insert(b as u32);
                    }
                }
            }
            inserts.extend(
                new.entries
                    .iter()
                    .filter(|(k, _)| !old.entries.contains_key(*k))
                    .map(|(k, e)| (*k, *e)),
            );
        }
        if self.image.prefix_entries + inserts.len() > PREFIX_ENTRIES as usize {
            return Err(Fallback::Spoiled);
        }
        for (k, e) in inserts {
            self.place(k, e, &mut buckets)?;
        }
        delta.v4_tbl24.sort_unstable();
        delta.v6_buckets.sort_unstable();
        delta.prefix_buckets = buckets.into_iter().collect();
        delta.lensets = lensets.into_iter().collect();
        Ok(())
    }

    fn lenset_id(&self, f: usize, blk: u32) -> u16 {
        if f == 0 {
            let e = self.image.v4_tbl24[blk as usize];
            if e & V4_EXT == 0 {
                0
            } else {
                (e >> 16 & 0xfff) as u16
            }
        } else {
            self.image.v6_buckets[blk as usize].lenset
        }
    }

    fn new_lenset(&mut self, lens: &[u8]) -> Result<u16, Fallback> {
        let id = match self.free_lensets.pop() {
            Some(id) => id,
            None => {
                let id = self.image.lensets.len();
                if id >= LENSETS as usize {
                    return Err(Fallback::Spoiled);
                }
                self.image.lensets.push(LenSet {
                    n: 0,
                    lens: [0; MAX_LENS],
                });
                self.lenset_refs.push(0);
                id as u16
            }
        };
        let s = &mut self.image.lensets[id as usize];
        s.n = lens.len() as u32;
        s.lens = [0; MAX_LENS];
        s.lens[..lens.len()].copy_from_slice(lens);
        self.lenset_of.insert(lens.to_vec(), id);
        Ok(id)
    }

    /// The bucket and slot holding `k`.
    fn find(&self, k: &PrefixKey) -> Option<(usize, usize)> {
        let (b1, b2) = prefix_buckets(&k.addr, k.len);
        [b1, b2].into_iter().find_map(|b| {
            self.image.prefix_table[b as usize]
                .slots
                .iter()
                .position(|s| s.len as u32 == k.len && s.addr == k.addr)
                .map(|s| (b as usize, s))
        })
    }

    fn next_rng(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Places one key in the cuckoo table as the full compile's `place`
    /// does (the emptier bucket, else evictions), recording every bucket
    /// it writes.
    fn place(
        &mut self,
        k: PrefixKey,
        e: PrefixEntry,
        touched: &mut BTreeSet<u32>,
    ) -> Result<(), Fallback> {
        const MAX_KICKS: usize = 2000;
        let mut slot = PrefixSlot {
            addr: k.addr,
            len: k.len as u8,
            marker: e.marker as u8,
            class: e.class,
        };
        let (b1, b2) = prefix_buckets(&slot.addr, k.len);
        let r = self.next_rng();
        let table = &self.image.prefix_table;
        let fill = |b: u32| {
            table[b as usize]
                .slots
                .iter()
                .filter(|s| s.len != 0)
                .count()
        };
        let (f1, f2) = (fill(b1), fill(b2));
        let first = if f1 < f2 || (f1 == f2 && r & 2 == 0) {
            b1
        } else {
            b2
        };
        if let Some(s) = table[first as usize].slots.iter().position(|s| s.len == 0) {
            self.image.prefix_table[first as usize].slots[s] = slot;
            self.image.prefix_entries += 1;
            touched.insert(first);
            return Ok(());
        }
        let mut at = if r & 1 == 0 { b1 } else { b2 };
        for _ in 0..MAX_KICKS {
            let victim = (self.next_rng() % PREFIX_BUCKET_SLOTS as u64) as usize;
            std::mem::swap(
                &mut self.image.prefix_table[at as usize].slots[victim],
                &mut slot,
            );
            touched.insert(at);
            let (v1, v2) = prefix_buckets(&slot.addr, slot.len as u32);
            at = if v1 == at { v2 } else { v1 };
            if let Some(s) = self.image.prefix_table[at as usize]
                .slots
                .iter()
                .position(|s| s.len == 0)
            {
                self.image.prefix_table[at as usize].slots[s] = slot;
                self.image.prefix_entries += 1;
                touched.insert(at);
                return Ok(());
            }
        }
        Err(Fallback::Spoiled)
    }

    /// Frees the classes no interval holds and the length sets no block
    /// uses; records the freed classes.
    fn release(&mut self, delta: &mut Delta) {
        let pinned = [V4_NONE_CLASS, V6_NONE_CLASS];
        let candidates: Vec<u16> = (0..self.class_refs.len() as u16)
            .filter(|c| self.class_refs[*c as usize] == 0)
            .collect();
        for c in candidates {
            if self.class_refs[c as usize] == 0
                && !pinned.contains(&c)
                && let Some(key) = self.class_sets[c as usize].take()
            {
                self.class_of.remove(&key);
                self.free_classes.push(c);
                delta.freed_classes.push(c);
            }
        }
        delta
            .new_classes
            .retain(|c| self.class_sets[*c as usize].is_some());
        for id in std::mem::take(&mut self.unused_lensets) {
            let s = &self.image.lensets[id as usize];
            let lens = &s.lens[..s.n as usize];
            // (An id can be listed twice: freed once.)
            if self.lenset_refs[id as usize] == 0 && self.lenset_of.get(lens) == Some(&id) {
                self.lenset_of.remove(lens);
                self.free_lensets.push(id);
            }
        }
    }
}

/// The last address of the prefix `start/len` of `bits`-bit addresses.
fn last(start: u128, len: u8, bits: u32) -> u128 {
    let host = bits - len as u32;
    if host == 128 {
        u128::MAX
    } else {
        start | ((1u128 << host) - 1)
    }
}

/// `addr` masked to `len` bits of `bits`-bit addresses.
fn mask(addr: u128, len: u8, bits: u32) -> u128 {
    let host = bits - len as u32;
    if host >= 128 {
        0
    } else {
        addr & !((1u128 << host) - 1)
    }
}

fn push_range(ranges: &mut [Vec<(u128, u128)>; 2], net: &IpNetwork) {
    match net {
        IpNetwork::V4(p) => {
            let a = u32::from(p.network()) as u128;
            ranges[0].push((a, last(a, p.prefix(), 32)));
        }
        IpNetwork::V6(p) => {
            let a = u128::from(p.network());
            ranges[1].push((a, last(a, p.prefix(), 128)));
        }
    }
}

/// Inserts bit `val` at `pos`, moving the bits at and above it one up.
fn insert_bit(b: &mut Bitmap, pos: usize, val: bool) {
    let (w, o) = (pos / 64, pos % 64);
    let mut carry = b.words[w] >> 63;
    let low = (1u64 << o) - 1;
    b.words[w] = (b.words[w] & low) | ((b.words[w] & !low) << 1) | (u64::from(val) << o);
    for word in &mut b.words[w + 1..] {
        let c = *word >> 63;
        *word = (*word << 1) | carry;
        carry = c;
    }
    summarize(b);
}

/// Removes the bit at `pos`, moving the bits above it one down.
fn remove_bit(b: &mut Bitmap, pos: usize) {
    let (w, o) = (pos / 64, pos % 64);
    let n = b.words.len();
    let low = (1u64 << o) - 1;
    for i in w..n {
        let next = if i + 1 < n { b.words[i + 1] & 1 } else { 0 };
        let word = b.words[i];
        let down = if i == w {
            (word & low) | ((word >> 1) & !low)
        } else {
            word >> 1
        };
        b.words[i] = down | (next << 63);
    }
    summarize(b);
}

fn summarize(b: &mut Bitmap) {
    b.summary = [0; SUMMARY_WORDS];
    for (i, w) in b.words.iter().enumerate() {
        if *w != 0 {
            b.summary[i / 64] |= 1 << (i % 64);
        }
    }
}

#[cfg(test)]
mod tests;

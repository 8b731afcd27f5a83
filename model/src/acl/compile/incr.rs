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
use std::collections::{BTreeMap, HashMap};

use ipnetwork::IpNetwork;
use xdpgate_common::{
    MAX_IFACES,
    acl::{Bitmap, MAX_ADDR_CLASSES, V4_EXT, V4_NONE_CLASS, V6_CHILD, V6_NONE_CLASS},
};

use super::{AddrParts, Bits, Capacities, Image, compile_parts, sweep};
use crate::acl::model::{AclError, AclState, AddrMatch, Change, Rule, Undo, parse_prefix};
use blocks::Block;

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
    /// IPv6 trie blocks, ascending.
    pub v6_blocks: Vec<u32>,
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
    /// The phased tables changed (rebuilt from the updated bitmaps, see
    /// [`Incremental::update`]): every phase group and cell is rewritten.
    /// When the image has no phased tables, the generation changes from the
    /// phased tables to the bitmap walk (a rebuild deferred, see
    /// [`Incremental::defer_phases`]): its six bitmap tables are written
    /// whole and its phase groups say "walk".
    pub phases: bool,
}

impl Delta {
    /// Whether the update changed no table entry.
    pub fn is_empty(&self) -> bool {
        self.v4_tbl24.is_empty()
            && self.v6_buckets.is_empty()
            && self.v6_blocks.is_empty()
            && self.lensets.is_empty()
            && self.prefix_buckets.is_empty()
            && self.new_classes.is_empty()
            && !self.rules
            && !self.phases
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
    /// IPv6 trie blocks no /16 uses.
    free_v6_blocks: Vec<u16>,
    /// Length sets whose last block went during the current update.
    unused_lensets: Vec<u16>,
    rng: u64,
    /// Phased tables are rebuilt off the change ([`Incremental::defer_phases`]).
    deferred: bool,
    /// The tables walk the bitmaps until a [`PhaseJob`] rebuilds the phased
    /// tables (see [`Incremental::phase_job`]).
    pending: bool,
    /// Counts the updates, so that a [`PhaseJob`] is installed only into the
    /// tables it was taken from.
    version: u64,
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
        Self::build_for(state, slots, &Capacities::default())
    }

    /// [`Incremental::build`] for tables of capacities `caps` (updates keep
    /// to them: see [`Image::caps`]).
    pub fn build_for(
        state: &AclState,
        slots: &BTreeMap<String, u32>,
        caps: &Capacities,
    ) -> Result<Self, Vec<AclError>> {
        let (image, parts) = compile_parts(state, slots, caps)?;
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
        let trie = image.v6_blocks.iter().flat_map(|b| &b.entries);
        for b in image.v6_buckets.iter().chain(trie) {
            if b.lenset != V6_CHILD {
                lenset_refs[b.lenset as usize] += 1;
            }
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
            free_v6_blocks: Vec::new(),
            rng: 0x9e37_79b9_7f4a_7c15,
            deferred: false,
            pending: false,
            version: 0,
        })
    }

    /// The compiled tables.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// Updates the tables from the state they were compiled from to `next`,
    /// that state with `change` applied and validated in place (`undo`, from
    /// [`AclState::apply_in_place`], holds the rules it removed: the rules
    /// before are `next`'s without the added ones plus the removed ones). On
    /// [`Fallback::Shape`] nothing changed; on [`Fallback::Spoiled`] the
    /// tables are half updated and must be dropped.
    pub fn update(
        &mut self,
        next: &AclState,
        undo: &Undo,
        change: &Change,
    ) -> Result<Delta, Fallback> {
        self.version += 1;
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
                self.rule_change(next, &[], &added, &mut ranges, &mut delta)?;
            }
            Change::RuleDel { .. } => {
                let removed: Vec<&Rule> = undo.removed_rules().iter().collect();
                self.rule_change(next, &removed, &[], &mut ranges, &mut delta)?;
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
                    before.entry((f, blk)).or_insert_with(|| {
                        let max_blocks = if f == 1 { self.trie_ids(blk).len() } else { 0 };
                        self.block(f, blk, max_blocks)
                    });
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
        self.rephase(&mut delta)?;
        Ok(delta)
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

mod blocks;
mod rephase;
mod rules;

pub use rephase::PhaseJob;

/// What the equivalence test (`acl::incr_tests`) reads.
#[cfg(test)]
impl Incremental {
    /// Class ids allocated (live or free).
    pub(crate) fn class_ids(&self) -> usize {
        self.class_sets.len()
    }

    /// The family tag and address matches of live class `c`.
    pub(crate) fn class_meaning(&self, c: u16) -> Option<(u8, Vec<AddrMatch>)> {
        let (tag, set) = self.class_sets[c as usize].as_ref()?;
        let matches = set
            .iter()
            .map(|id| self.conds[*id as usize].clone().expect("a live condition"))
            .collect();
        Some((*tag, matches))
    }

    /// The intervals of family `f` (0: IPv4, 1: IPv6) with their class.
    pub(crate) fn intervals(&self, f: usize) -> Vec<(u128, u128, u16)> {
        self.ivs[f].iter().map(|(a, (b, c))| (*a, *b, *c)).collect()
    }
}

#[cfg(test)]
mod tests;

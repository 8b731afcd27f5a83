//! Rule changes in the incremental compiler: condition reference counts,
//! bit columns in and out of the bitmaps, and the rule-dimension tables.
use std::collections::{HashMap, HashSet};

use ipnetwork::IpNetwork;
use xdpgate_common::acl::{Bitmap, SUMMARY_WORDS};

use super::{Delta, Fallback, Incremental, MAX_INCREMENTAL_PREFIXES, push_range};
use crate::acl::{
    compile::{extras, rule_tables},
    model::{AclState, AddrMatch, PrefixSet, Rule, RuleFamily},
};

impl Incremental {
    /// Rule changes: condition reference counts, the bit columns of every
    /// address class, the rule-dimension tables, and the ranges of the
    /// conditions that appear or disappear.
    pub(super) fn rule_change(
        &mut self,
        next: &AclState,
        removed: &[&Rule],
        added: &[&Rule],
        ranges: &mut [Vec<(u128, u128)>; 2],
        delta: &mut Delta,
    ) -> Result<(), Fallback> {
        // A rule change leaves the sets as they were: `next`'s are also the
        // sets before the change.
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
                        AddrMatch::Set(s) => next.sets.get(s).map_or(0, PrefixSet::len),
                    };
                }
            }
            if size > MAX_INCREMENTAL_PREFIXES {
                return Err(Fallback::Shape);
            }
        }
        // The rules before the change, in evaluation order: `next`'s but
        // the added ones, and the removed ones (no copy of the state kept).
        let old_order = {
            let ids: HashSet<u32> = added.iter().map(|r| r.id).collect();
            let mut v: Vec<&Rule> = next
                .rules
                .values()
                .filter(|r| !ids.contains(&r.id))
                .chain(removed.iter().copied())
                .collect();
            v.sort_by_key(|r| r.order());
            v
        };
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
                    cover(ranges, m, next);
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
        let kept = old_order.len() - gone.len();
        for (n, (pos, r)) in (kept..).zip(fresh) {
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
    pub(super) fn accepts(
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
}

/// Inserts bit `val` at `pos`, moving the bits at and above it one up.
pub(super) fn insert_bit(b: &mut Bitmap, pos: usize, val: bool) {
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
pub(super) fn remove_bit(b: &mut Bitmap, pos: usize) {
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

pub(super) fn summarize(b: &mut Bitmap) {
    b.summary = [0; SUMMARY_WORDS];
    for (i, w) in b.words.iter().enumerate() {
        if *w != 0 {
            b.summary[i / 64] |= 1 << (i % 64);
        }
    }
}

//! The first-level blocks of the incremental compiler: their content from
//! the intervals (exactly as the full compile builds it), their rebuild
//! after a change (first-level entries, length sets, long-prefix table),
//! and the release of what no block uses any more.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use xdpgate_common::acl::{
    LENSETS, LenSet, MAX_LENS, PREFIX_BUCKET_SLOTS, PrefixEntry, PrefixKey, PrefixSlot, V4_EXT,
    V4_NONE_CLASS, V6_NONE_CLASS, prefix_buckets, v4_entry,
};

use super::{Delta, FAMS, Fallback, Incremental};
use crate::acl::compile::{cidrs, emptier, key, v4_key};

/// The content of one first-level block: its class (the block is one class)
/// or its length set and long-prefix entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Block {
    class: u16,
    lens: Vec<u8>,
    entries: HashMap<PrefixKey, PrefixEntry>,
}

impl Incremental {
    /// The content of block `blk` of family `f`, from the intervals, exactly
    /// as the full compile builds it (`build_v4`, `build_v6`, `Long::bucket`).
    pub(super) fn block(&self, f: usize, blk: u32) -> Block {
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
    pub(super) fn rebuild_blocks(
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
        if self.image.prefix_entries + inserts.len() > self.image.caps.prefix_entries() as usize {
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
        let (b1, b2) = prefix_buckets(&k.addr, k.len, self.image.caps.prefix_bucket_bits);
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
        let (b1, b2) = prefix_buckets(&slot.addr, k.len, self.image.caps.prefix_bucket_bits);
        let r = self.next_rng();
        let table = &self.image.prefix_table;
        let first = emptier(table, b1, b2, r);
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
            let (v1, v2) = prefix_buckets(
                &slot.addr,
                slot.len as u32,
                self.image.caps.prefix_bucket_bits,
            );
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
    pub(super) fn release(&mut self, delta: &mut Delta) {
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

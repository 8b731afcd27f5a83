//! The first-level blocks of the incremental compiler: their content from
//! the intervals (exactly as the full compile builds it), their rebuild
//! after a change (first-level entries, length sets, long-prefix table),
//! and the release of what no block uses any more.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use xdpgate_common::acl::{
    LENSETS, LenSet, MAX_LENS, PREFIX_BUCKET_SLOTS, PrefixEntry, PrefixKey, PrefixSlot, V4_EXT,
    V4_NONE_CLASS, V6_CHILD, V6_NONE_CLASS, V6Block, V6Bucket, prefix_buckets, v4_entry,
};

use super::{Delta, FAMS, Fallback, Incremental};
use crate::acl::compile::{cidrs, emptier, insert_searched, v4_key, v6trie::Tree};

/// The content of one first-level block: its class (the block is one class)
/// or its length set and long-prefix entries; for an IPv6 /16, its trie
/// (whose entries are in `entries`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Block {
    class: u16,
    lens: Vec<u8>,
    entries: HashMap<PrefixKey, PrefixEntry>,
    trie: Option<Tree>,
}

impl Incremental {
    /// The content of block `blk` of family `f`, from the intervals, exactly
    /// as the full compile builds it (`build_v4`, `build_v6`, `Long::bucket`),
    /// an IPv6 trie with at most `max_blocks` blocks.
    pub(super) fn block(&self, f: usize, blk: u32, max_blocks: usize) -> Block {
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
            trie: None,
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
        if f == 1 {
            let mut tree = Tree::build(&list, max_blocks);
            return Block {
                class: fam.none,
                lens: Vec::new(),
                entries: std::mem::take(&mut tree.entries),
                trie: Some(tree),
            };
        }
        let mut lens: Vec<u8> = list.iter().map(|p| p.1).collect();
        lens.sort_unstable();
        lens.dedup();
        let k = |a: u128, l: u8| v4_key(a as u32, l);
        let mut entries = HashMap::new();
        insert_searched(&mut entries, &list, &lens, k);
        Block {
            class: fam.none,
            lens,
            entries,
            trie: None,
        }
    }

    /// The blocks of the trie under IPv6 /16 `blk`, in depth-first order
    /// (the order [`Tree::build`] creates them in).
    pub(super) fn trie_ids(&self, blk: u32) -> Vec<u16> {
        let mut ids = Vec::new();
        let root = self.image.v6_buckets[blk as usize];
        if root.lenset == V6_CHILD {
            self.trie_walk(root.class, &mut ids);
        }
        ids
    }

    fn trie_walk(&self, id: u16, ids: &mut Vec<u16>) {
        ids.push(id);
        for e in self.image.v6_blocks[id as usize].entries {
            if e.lenset == V6_CHILD {
                self.trie_walk(e.class, ids);
            }
        }
    }

    /// Blocks no trie uses.
    pub(super) fn free_blocks(&self) -> usize {
        let cap = self.image.caps.v6_blocks as usize;
        self.free_v6_blocks.len() + cap.saturating_sub(self.image.v6_blocks.len())
    }

    /// Rebuilds the trie of IPv6 /16 `blk` (before: `old`) as `new`,
    /// reusing its blocks: first level, blocks and length sets.
    fn rebuild_trie(
        &mut self,
        blk: u32,
        new: &Tree,
        lensets: &mut BTreeSet<u16>,
        delta: &mut Delta,
    ) -> Result<(), Fallback> {
        let old_ids = self.trie_ids(blk);
        let mut old_sets: Vec<u16> = Vec::new();
        let root = self.image.v6_buckets[blk as usize];
        if root.lenset != 0 && root.lenset != V6_CHILD {
            old_sets.push(root.lenset);
        }
        for id in &old_ids {
            for e in self.image.v6_blocks[*id as usize].entries {
                if e.lenset != 0 && e.lenset != V6_CHILD {
                    old_sets.push(e.lenset);
                }
            }
        }
        let mut sets = Vec::with_capacity(new.lens.len());
        for lens in &new.lens {
            sets.push(self.lenset_ref(lens, lensets)?);
        }
        for id in old_sets {
            self.lenset_unref(id);
        }
        let mut ids: Vec<u16> = old_ids.iter().copied().take(new.blocks.len()).collect();
        self.free_v6_blocks
            .extend(old_ids.iter().skip(new.blocks.len()).copied());
        while ids.len() < new.blocks.len() {
            let id = match self.free_v6_blocks.pop() {
                Some(id) => id,
                None => {
                    let id = self.image.v6_blocks.len();
                    if id >= self.image.caps.v6_blocks as usize {
                        return Err(Fallback::Spoiled);
                    }
                    let none = V6Bucket {
                        class: V6_NONE_CLASS,
                        lenset: 0,
                    };
                    self.image.v6_blocks.push(V6Block {
                        entries: [none; xdpgate_common::acl::V6_BLOCK_ENTRIES],
                    });
                    id as u16
                }
            };
            ids.push(id);
        }
        for (i, id) in ids.iter().enumerate() {
            let b = new.global_block(i, &ids, &sets);
            if self.image.v6_blocks[*id as usize] != b {
                self.image.v6_blocks[*id as usize] = b;
                delta.v6_blocks.push(u32::from(*id));
            }
        }
        let root = Tree::globalize(new.root, &ids, &sets);
        if self.image.v6_buckets[blk as usize] != root {
            self.image.v6_buckets[blk as usize] = root;
            delta.v6_buckets.push(blk);
        }
        Ok(())
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
            let max_blocks = if f == 1 {
                self.trie_ids(blk).len() + self.free_blocks()
            } else {
                0
            };
            let new = self.block(f, blk, max_blocks);
            if new == old {
                continue;
            }
            if f == 1 {
                // The /16's entry, its trie and their length sets.
                let plain;
                let tree = match &new.trie {
                    Some(t) => t,
                    None => {
                        plain = Tree::plain(new.class);
                        &plain
                    }
                };
                self.rebuild_trie(blk, tree, &mut lensets, delta)?;
            } else {
                self.rebuild_v4(blk, &new, &mut lensets, delta)?;
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
        delta.v6_blocks.sort_unstable();
        delta.prefix_buckets = buckets.into_iter().collect();
        delta.lensets = lensets.into_iter().collect();
        Ok(())
    }

    /// Rebuilds the entry of IPv4 /24 `blk` as `new`: the first level and
    /// the length set.
    fn rebuild_v4(
        &mut self,
        blk: u32,
        new: &Block,
        lensets: &mut BTreeSet<u16>,
        delta: &mut Delta,
    ) -> Result<(), Fallback> {
        let old_id = self.lenset_id(blk);
        let new_id = if new.lens.is_empty() {
            0
        } else {
            self.lenset_ref(&new.lens, lensets)?
        };
        if old_id != 0 {
            self.lenset_unref(old_id);
        }
        self.image.v4_tbl24[blk as usize] = if new_id == 0 {
            new.class as u32
        } else {
            v4_entry(new.class, new_id)
        };
        delta.v4_tbl24.push(blk);
        Ok(())
    }

    /// The length set of IPv4 /24 `blk` (0: none).
    fn lenset_id(&self, blk: u32) -> u16 {
        let e = self.image.v4_tbl24[blk as usize];
        if e & V4_EXT == 0 {
            0
        } else {
            (e >> 16 & 0xfff) as u16
        }
    }

    /// One more user of the length set `lens`: its id, the set created (and
    /// its id added to `lensets`, the sets to write) if none holds it yet.
    fn lenset_ref(&mut self, lens: &[u8], lensets: &mut BTreeSet<u16>) -> Result<u16, Fallback> {
        let id = match self.lenset_of.get(lens) {
            Some(id) => *id,
            None => {
                let id = self.new_lenset(lens)?;
                lensets.insert(id);
                id
            }
        };
        self.lenset_refs[id as usize] += 1;
        Ok(id)
    }

    /// One user less of length set `id`; unused, it is released with the
    /// update.
    fn lenset_unref(&mut self, id: u16) {
        self.lenset_refs[id as usize] -= 1;
        if self.lenset_refs[id as usize] == 0 {
            self.unused_lensets.push(id);
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

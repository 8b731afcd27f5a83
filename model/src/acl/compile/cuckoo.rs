//! The long-prefix table's placement: a bucketized cuckoo hash table of
//! `1 << bits` buckets, each key in one of its two [`prefix_buckets`].
use std::collections::HashMap;

use xdpgate_common::acl::{
    PREFIX_BUCKET_SLOTS, PrefixBucket, PrefixEntry, PrefixKey, PrefixSlot, prefix_buckets,
};

#[cfg(doc)]
use super::Capacities;

/// Which of a key's two buckets it goes to first: the emptier one, ties
/// broken by bit 1 of the random word `r` (the full compile's [`place`] and
/// the incremental compiler place keys alike).
pub(in crate::acl) fn emptier(buckets: &[PrefixBucket], b1: u32, b2: u32, r: u64) -> u32 {
    let fill = |b: u32| {
        buckets[b as usize]
            .slots
            .iter()
            .filter(|s| s.len != 0)
            .count()
    };
    let (f1, f2) = (fill(b1), fill(b2));
    if f1 < f2 || (f1 == f2 && r & 2 == 0) {
        b1
    } else {
        b2
    }
}

/// Places every long prefix and marker in a bucketized cuckoo table: each key
/// in one of its two [`prefix_buckets`] of a table of `1 << bits` buckets,
/// evicting and moving occupants to their other bucket when both are full.
/// Fails only when a key cannot be placed after many moves (far beyond
/// [`Capacities::prefix_entries`] in practice).
pub(super) fn place(
    table: &HashMap<PrefixKey, PrefixEntry>,
    bits: u32,
) -> Result<Vec<PrefixBucket>, ()> {
    const MAX_KICKS: usize = 2000;
    let mut buckets = vec![PrefixBucket::default(); 1usize << bits];
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let free = |b: &PrefixBucket| b.slots.iter().position(|s| s.len == 0);
    for (k, e) in table {
        let mut slot = PrefixSlot {
            addr: k.addr,
            len: k.len as u8,
            marker: e.marker as u8,
            class: e.class,
        };
        let (b1, b2) = prefix_buckets(&slot.addr, k.len, bits);
        // The emptier bucket, ties broken at random: spreads the load, and
        // puts keys in both buckets even in small tables, so tests exercise
        // both of the datapath's probes.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let first = emptier(&buckets, b1, b2, rng);
        let mut placed = false;
        if let Some(f) = free(&buckets[first as usize]) {
            buckets[first as usize].slots[f] = slot;
            placed = true;
        }
        // Both full: evict from one of them, alternating by the random state.
        let mut at = if rng & 1 == 0 { b1 } else { b2 };
        let mut kicks = 0;
        while !placed {
            if kicks == MAX_KICKS {
                return Err(());
            }
            kicks += 1;
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let victim = (rng % PREFIX_BUCKET_SLOTS as u64) as usize;
            std::mem::swap(&mut buckets[at as usize].slots[victim], &mut slot);
            let (v1, v2) = prefix_buckets(&slot.addr, slot.len as u32, bits);
            at = if v1 == at { v2 } else { v1 };
            if let Some(f) = free(&buckets[at as usize]) {
                buckets[at as usize].slots[f] = slot;
                placed = true;
            }
        }
    }
    Ok(buckets)
}

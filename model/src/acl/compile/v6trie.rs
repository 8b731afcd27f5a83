//! The IPv6 address trie under the /16 array: the prefixes longer than /16
//! inside one /16, as a tree of 256-entry blocks where a region holds many
//! lengths and as length sets (searched in the long-prefix table) where it
//! holds few. Shared by the full compile (`build_v6`) and the incremental
//! compiler (`incr::blocks`), which rebuilds one /16's tree at a time.
//!
//! See `docs/design/acl.md`, "Address table".
use std::collections::HashMap;

use xdpgate_common::acl::{
    PrefixEntry, PrefixKey, V6_BLOCK_ENTRIES, V6_CHILD, V6_NONE_CLASS, V6Block, V6Bucket,
};

use super::{insert_searched, key};

/// A region whose prefixes have more than this many distinct lengths is
/// split into a block (while blocks remain): a binary search over at most
/// three lengths is at most two probes of the long-prefix table.
pub const SPLIT_LENS: usize = 3;

/// One /16's trie, with block indices and length sets local to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    /// The /16's entry: `lenset` 0 (a class), [`V6_CHILD`] (block `class` of
    /// [`Tree::blocks`]), or `1 + i` for length set `i` of [`Tree::lens`].
    pub root: V6Bucket,
    /// Blocks in depth-first order (the root's block first), entries
    /// encoded as [`Tree::root`].
    pub blocks: Vec<V6Block>,
    /// Length sets of the leaf regions, in the order they were found.
    pub lens: Vec<Vec<u8>>,
    /// Long-prefix keys: the prefixes of the leaf regions and the markers of
    /// their searches (leaf regions are disjoint, so no key is shared).
    pub entries: HashMap<PrefixKey, PrefixEntry>,
}

impl Tree {
    /// The trie of one /16 holding `list` (prefixes `(start, len, class)`
    /// longer than /16, disjoint, ascending), splitting regions (depth
    /// first) only while the tree has fewer than `max_blocks` blocks: the
    /// tree of `n` blocks is rebuilt exactly with `max_blocks = n`.
    pub fn build(list: &[(u128, u8, u16)], max_blocks: usize) -> Tree {
        let mut t = Tree::default();
        t.root = t.region(list, 16, max_blocks);
        t
    }

    /// The trie of a /16 that is one class.
    pub fn plain(class: u16) -> Tree {
        Tree {
            root: V6Bucket { class, lenset: 0 },
            ..Tree::default()
        }
    }

    /// The entry of the region of depth `depth` holding `list`.
    fn region(&mut self, list: &[(u128, u8, u16)], depth: u32, max_blocks: usize) -> V6Bucket {
        if list.is_empty() {
            return V6Bucket {
                class: V6_NONE_CLASS,
                lenset: 0,
            };
        }
        let mut lens: Vec<u8> = list.iter().map(|p| p.1).collect();
        lens.sort_unstable();
        lens.dedup();
        if lens.len() <= SPLIT_LENS || depth + 8 > 128 || self.blocks.len() >= max_blocks {
            self.leaf(list, lens);
            return V6Bucket {
                class: V6_NONE_CLASS,
                lenset: self.lens.len() as u16,
            };
        }
        let at = self.blocks.len();
        let none = V6Bucket {
            class: V6_NONE_CLASS,
            lenset: 0,
        };
        self.blocks.push(V6Block {
            entries: [none; V6_BLOCK_ENTRIES],
        });
        let byte = |a: u128| ((a >> (120 - depth)) & 0xff) as usize;
        let mut i = 0;
        while i < list.len() {
            let (start, len, class) = list[i];
            if u32::from(len) <= depth + 8 {
                // Expanded into its entries (prefixes are disjoint, so no
                // entry holds anything else).
                let first = byte(start);
                let count = 1usize << (depth + 8 - u32::from(len));
                for e in &mut self.blocks[at].entries[first..first + count] {
                    *e = V6Bucket { class, lenset: 0 };
                }
                i += 1;
                continue;
            }
            let b = byte(start);
            let mut j = i + 1;
            while j < list.len() && u32::from(list[j].1) > depth + 8 && byte(list[j].0) == b {
                j += 1;
            }
            let child = self.region(&list[i..j], depth + 8, max_blocks);
            self.blocks[at].entries[b] = child;
            i = j;
        }
        V6Bucket {
            class: at as u16,
            lenset: V6_CHILD,
        }
    }

    /// A leaf region: its length set, prefixes and markers.
    fn leaf(&mut self, list: &[(u128, u8, u16)], lens: Vec<u8>) {
        insert_searched(&mut self.entries, list, &lens, key);
        self.lens.push(lens);
    }

    /// The global form of `entry` (of [`Tree::root`] or a block): local
    /// block `b` is `blocks[b]`, local length set `1 + i` is `lensets[i]`.
    pub fn globalize(entry: V6Bucket, blocks: &[u16], lensets: &[u16]) -> V6Bucket {
        match entry.lenset {
            0 => entry,
            V6_CHILD => V6Bucket {
                class: blocks[entry.class as usize],
                lenset: V6_CHILD,
            },
            l => V6Bucket {
                class: entry.class,
                lenset: lensets[l as usize - 1],
            },
        }
    }

    /// Block `i` with global block indices and length sets (see
    /// [`Tree::globalize`]).
    pub fn global_block(&self, i: usize, blocks: &[u16], lensets: &[u16]) -> V6Block {
        let mut b = self.blocks[i];
        for e in &mut b.entries {
            *e = Self::globalize(*e, blocks, lensets);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::compile::cidrs;

    /// The class of `addr` in `tree` (of the /16 of `addr`), the way the
    /// datapath walks it: blocks, then the binary search over the leaf's
    /// lengths in the tree's own keys. Also the number of block reads.
    fn walk(tree: &Tree, addr: u128) -> (u16, usize) {
        let mut e = tree.root;
        let mut reads = 0;
        let mut depth = 16;
        while e.lenset == V6_CHILD {
            e = tree.blocks[e.class as usize].entries[((addr >> (120 - depth)) & 0xff) as usize];
            depth += 8;
            reads += 1;
        }
        if e.lenset == 0 {
            return (e.class, reads);
        }
        let lens = &tree.lens[e.lenset as usize - 1];
        assert!(
            lens.len() <= MAX_SEARCH_LENS,
            "a leaf of {} lengths",
            lens.len()
        );
        let (mut lo, mut hi) = (0i32, lens.len() as i32 - 1);
        while lo <= hi {
            let mid = (lo + hi) / 2;
            match tree.entries.get(&key(addr, lens[mid as usize])) {
                Some(p) if p.marker == 0 => return (p.class, reads),
                Some(_) => lo = mid + 1,
                None => hi = mid - 1,
            }
        }
        (e.class, reads)
    }

    /// Leaves of at most this many lengths (no block cap): a leaf with more
    /// had room to split.
    const MAX_SEARCH_LENS: usize = 112;

    /// The prefixes (start, len, class) of disjoint CIDR ranges.
    fn pieces(ranges: &[(&str, &str, u16)]) -> Vec<(u128, u8, u16)> {
        let mut out = Vec::new();
        for &(a, b, c) in ranges {
            let (a, b): (std::net::Ipv6Addr, std::net::Ipv6Addr) =
                (a.parse().unwrap(), b.parse().unwrap());
            let mut p = Vec::new();
            cidrs(u128::from(a), u128::from(b), &mut p);
            out.extend(p.into_iter().map(|(s, l)| (s, l, c)));
        }
        out
    }

    /// The class the prefixes give `addr` (the one holding it, or none).
    fn brute(list: &[(u128, u8, u16)], addr: u128) -> u16 {
        list.iter()
            .find(|&&(s, l, _)| addr & (u128::MAX << (128 - u32::from(l))) == s)
            .map_or(V6_NONE_CLASS, |p| p.2)
    }

    /// Addresses at the edges of every prefix, and just outside them.
    fn probes(list: &[(u128, u8, u16)]) -> Vec<u128> {
        let mut out = Vec::new();
        for &(s, l, _) in list {
            let end = s | u128::MAX.checked_shr(u32::from(l)).unwrap_or(0);
            out.extend([s, end, s.wrapping_sub(1), end.wrapping_add(1), s | 0x1234]);
        }
        out
    }

    struct Case {
        name: &'static str,
        ranges: Vec<(&'static str, &'static str, u16)>,
        /// Blocks of the tree without a cap.
        blocks: usize,
        /// Most block reads of any probe.
        deepest: usize,
    }

    fn cases() -> Vec<Case> {
        // A chain fd00::/16 ⊃ fd00:8000::/17 ⊃ ... ⊃ one /128, leaf-pushed:
        // one piece at every length 17..=128 (the half not on the path).
        let chain: Vec<(&str, &str, u16)> =
            vec![("fd00:0000::", "fd00:7fff:ffff:ffff:ffff:ffff:ffff:ffff", 7)];
        vec![
            Case {
                name: "a nested chain of every length splits at every level down to /128",
                ranges: {
                    let mut r = chain.clone();
                    r.push(("fd00:8000::", "fd00:bfff:ffff:ffff:ffff:ffff:ffff:ffff", 8));
                    r.push(("fd00:c000::", "fd00:ffff:ffff:ffff:ffff:ffff:ffff:fffe", 9));
                    r.push((
                        "fd00:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                        "fd00:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                        10,
                    ));
                    r
                },
                blocks: 14,
                deepest: 14,
            },
            Case {
                name: "few lengths under the /16 stay one length search",
                ranges: vec![
                    ("2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", 3),
                    ("2001:db9:1::", "2001:db9:1:ffff:ffff:ffff:ffff:ffff", 4),
                    ("2001:dba:1:2::", "2001:dba:1:2:ffff:ffff:ffff:ffff", 5),
                ],
                blocks: 0,
                deepest: 0,
            },
            Case {
                name: "many lengths under one /24 split it, lengths not multiples of 8 expand",
                ranges: vec![
                    // /19 and /21 inside the /16's block: expanded to entries.
                    ("2001:2000::", "2001:3fff:ffff:ffff:ffff:ffff:ffff:ffff", 3),
                    ("2001:4000::", "2001:47ff:ffff:ffff:ffff:ffff:ffff:ffff", 4),
                    // Under 2001:0d00::/24: /33, /42, /47, /50, /64 and a /128.
                    ("2001:db8::", "2001:db8:7fff:ffff:ffff:ffff:ffff:ffff", 5),
                    ("2001:db9:40::", "2001:db9:7f:ffff:ffff:ffff:ffff:ffff", 6),
                    ("2001:dba:2::", "2001:dba:3:ffff:ffff:ffff:ffff:ffff", 7),
                    (
                        "2001:dbb:0:4000::",
                        "2001:dbb:0:7fff:ffff:ffff:ffff:ffff",
                        8,
                    ),
                    ("2001:dbc:1:2::", "2001:dbc:1:2:ffff:ffff:ffff:ffff", 9),
                    ("2001:dbd::1", "2001:dbd::1", 10),
                ],
                blocks: 2,
                deepest: 2,
            },
        ]
    }

    #[test]
    fn tries_classify_every_address_as_the_prefixes_do() {
        for case in cases() {
            let list = pieces(&case.ranges);
            let tree = Tree::build(&list, usize::MAX);
            assert_eq!(tree.blocks.len(), case.blocks, "{}", case.name);
            let mut deepest = 0;
            for a in probes(&list) {
                if a >> 112 != list[0].0 >> 112 {
                    continue;
                }
                let (class, reads) = walk(&tree, a);
                assert_eq!(class, brute(&list, a), "{}: {a:#x}", case.name);
                deepest = deepest.max(reads);
            }
            assert_eq!(deepest, case.deepest, "{}", case.name);
            // Split leaves search few lengths.
            if case.blocks > 0 {
                assert!(
                    tree.lens.iter().all(|l| l.len() <= SPLIT_LENS),
                    "{}: {:?}",
                    case.name,
                    tree.lens
                );
            }
        }
    }

    #[test]
    fn a_tree_out_of_blocks_leaves_the_rest_to_the_length_search() {
        for case in cases() {
            let list = pieces(&case.ranges);
            let full = Tree::build(&list, usize::MAX).blocks.len();
            for cap in 0..=full {
                let tree = Tree::build(&list, cap);
                assert_eq!(tree.blocks.len(), cap, "{}: cap {cap}", case.name);
                for a in probes(&list) {
                    if a >> 112 != list[0].0 >> 112 {
                        continue;
                    }
                    assert_eq!(
                        walk(&tree, a).0,
                        brute(&list, a),
                        "{}: cap {cap}: {a:#x}",
                        case.name
                    );
                }
                // Rebuilding with the cap at its block count gives the same
                // tree (what the incremental compiler relies on).
                assert_eq!(Tree::build(&list, tree.blocks.len()), tree, "{}", case.name);
            }
        }
    }
}

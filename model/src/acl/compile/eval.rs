//! Evaluates a compiled [`Image`] in software exactly as the XDP program
//! does, so the compiled form can be checked against the reference
//! classifier without a kernel (tests and benchmarks only: the
//! `test-support` feature).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use xdpgate_common::acl::{
    BITMAP_WORDS, NO_L4_CLASS, PrefixBucket, PrefixEntry, PrefixKey, SUMMARY_WORDS, V4_EXT,
    V6_CHILD, group, prefix_buckets,
};

use super::{Image, key, port_group, v4_key};
use crate::acl::{
    model::Verdict,
    reference::{Decision, PacketInfo},
};

impl Image {
    /// The address class of `ip`, as the datapath computes it.
    pub fn addr_class(&self, ip: IpAddr) -> u16 {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                let e = self.v4_tbl24[(a >> 8) as usize];
                if e & V4_EXT == 0 {
                    return e as u16;
                }
                self.search(e as u16, (e >> 16 & 0xfff) as u16, |l| v4_key(a, l))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                let mut b = self.v6_buckets[(a >> 112) as usize];
                for depth in (16..128).step_by(8) {
                    if b.lenset != V6_CHILD {
                        break;
                    }
                    let byte = (a >> (120 - depth)) as u8;
                    b = self.v6_blocks[b.class as usize].entries[byte as usize];
                }
                if b.lenset == 0 {
                    return b.class;
                }
                self.search(b.class, b.lenset, |l| key(a, l))
            }
        }
    }

    /// Binary search over the lengths of `lenset`: a real prefix ends it, a
    /// marker sends it longer, a miss shorter; `class` if nothing is found.
    fn search(&self, class: u16, lenset: u16, key: impl Fn(u8) -> PrefixKey) -> u16 {
        let set = &self.lensets[lenset as usize];
        let (mut lo, mut hi) = (0i32, set.n as i32 - 1);
        // At most ceil(log2(MAX_LENS + 1)) = 7 probes.
        for _ in 0..7 {
            if lo > hi {
                break;
            }
            let mid = (lo + hi) / 2;
            match table_get(&self.prefix_table, &key(set.lens[mid as usize])) {
                Some(e) if e.marker == 0 => return e.class,
                Some(_) => lo = mid + 1,
                None => hi = mid - 1,
            }
        }
        class
    }

    /// The index of the first rule (real, or virtual default) that accepts the
    /// packet on interface `slot`, the way the datapath resolves it: through
    /// the phased tables when the image has them, else by walking the
    /// bitmaps; `None` when no rule does (neighbour discovery without a rule).
    pub fn resolve(&self, slot: u32, pkt: &PacketInfo) -> Option<usize> {
        let Some(ph) = &self.phases else {
            return self.resolve_walk(slot, pkt);
        };
        let (sk, dk) = self.port_keys(pkt);
        let leaves = [
            slot,
            u32::from(pkt.proto),
            u32::from(self.addr_class(pkt.src)),
            u32::from(self.addr_class(pkt.dst)),
            u32::from(sk),
            u32::from(dk),
        ];
        match ph.resolve(leaves) {
            (Some(i), _) => Some(i),
            (None, true) => Some(self.rule_ids.len() + slot as usize),
            (None, false) => None,
        }
    }

    /// As [`resolve`](Self::resolve), by ANDing the six bitmaps the way the
    /// datapath's walk does (the fallback when there are no phased tables).
    pub fn resolve_walk(&self, slot: u32, pkt: &PacketInfo) -> Option<usize> {
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

/// Converts an address to the big-endian words the datapath and `PrefixKey` use.
pub fn v6_words(a: Ipv6Addr) -> [u32; 4] {
    key(u128::from(a), 128).addr
}

/// The IPv4 address as the datapath reads it (big-endian word).
pub fn v4_word(a: Ipv4Addr) -> u32 {
    u32::from(a).to_be()
}

/// Looks `key` up in a placed table (of a power of two buckets), as the
/// datapath does.
fn table_get(buckets: &[PrefixBucket], key: &PrefixKey) -> Option<PrefixEntry> {
    let bits = buckets.len().trailing_zeros();
    let (b1, b2) = prefix_buckets(&key.addr, key.len, bits);
    [b1, b2]
        .into_iter()
        .flat_map(|b| buckets[b as usize].slots.iter())
        .find(|s| s.len as u32 == key.len && s.addr == key.addr)
        .map(|s| PrefixEntry {
            class: s.class,
            marker: s.marker as u16,
        })
}

//! What the benchmark classifies: seeded random prefix sets, filler rules, the
//! one rule the "hit" packets hit, and the test frames of every packet class.
//!
//! Addresses the test packets use are fixed and chosen from documentation
//! ranges; random prefixes never cover the miss addresses.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::Serialize;
use xdpgate_common::acl::addr_cache_index;
use xdpgate_model::acl::{
    AclState, AddrMatch, PortRange, PrefixSet, Rule, Verdict, compile::eval::v6_words,
    model::proto, random::Rng,
};
use xdpgate_tests::packet::{Ethernet, Ext, Ipv4, Ipv6, Transport, ethertype, pad};

use xdpgate_tests::bpf::{XDP_DROP, XDP_PASS};

/// Source of the IPv4 "hit" packets (192.0.2.0/24 is in the deny set).
pub(crate) const HIT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Source of the IPv4 "miss" packets (no prefix of the set covers 198.51.100.0/24).
pub(crate) const MISS_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// Source of the IPv6 "hit" packets (2001:db8:1::/48 is in the deny set).
pub(crate) const HIT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// Source of the IPv6 "miss" packets (no prefix of the set covers 2001:db8:ffff::/48).
pub(crate) const MISS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
/// The deepest member of the nested IPv4 chain 10.0.0.0/8, ..., NEST_V4/32.
pub(crate) const NEST_V4: Ipv4Addr = Ipv4Addr::new(10, 85, 170, 85);
/// The deepest member of the nested IPv6 chain fd00::/16, ..., NEST_V6/128.
pub(crate) const NEST_V6: Ipv6Addr = Ipv6Addr::new(
    0xfd00, 0x5555, 0xaaaa, 0x5555, 0xaaaa, 0x5555, 0xaaaa, 0x5555,
);
/// Name of the class whose IPv6 source shares its address-cache slot with
/// the destination ([`flood_v6`]): every repetition misses both addresses.
/// It measures the cache's miss, so the cache-on targets leave it out.
pub(crate) const ADDR_FLOOD: &str = "v6-flood";

/// A source in the miss network 2001:db8:ffff::/48 (default policy, like
/// [`MISS_V6`]) that shares its address-class cache slot with [`DST_V6`]
/// (`xdpgate_common::acl::addr_cache_index`): each evicts the other, so every
/// packet misses both, as a flood of new sources misses its source.
pub(crate) fn flood_v6() -> Ipv6Addr {
    let slot = |a: Ipv6Addr| addr_cache_index(&v6_words(a));
    let want = slot(DST_V6);
    (1u128..1 << 24)
        .map(|i| Ipv6Addr::from(MISS_NET_V6.0 | i))
        .find(|a| slot(*a) == want)
        .expect("a source sharing the destination's slot among 16M candidates")
}
/// Destination of every test packet.
pub(crate) const DST_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// Destination of every IPv6 test packet.
pub(crate) const DST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 0x10);
/// Ports of every test packet (TCP).
pub(crate) const SPORT: u16 = 40000;
/// Destination port of every test packet; no filler rule's port range holds it.
pub(crate) const DPORT: u16 = 443;

/// Name of the deny set.
pub(crate) const SET: &str = "bench";
/// Id of the rule the hit packets hit; it is evaluated last.
pub(crate) const HIT_RULE_ID: u32 = 1_000_000;

const MISS_NET_V4: (u32, u32) = (0xc633_6400, 24); // 198.51.100.0/24
const MISS_NET_V6: (u128, u32) = (0x2001_0db8_ffff_u128 << 80, 48); // 2001:db8:ffff::/48

fn v4_overlaps(a: u32, len: u32, b: u32, blen: u32) -> bool {
    let l = len.min(blen);
    let m = if l == 0 { 0 } else { u32::MAX << (32 - l) };
    a & m == b & m
}

fn v6_overlaps(a: u128, len: u32, b: u128, blen: u32) -> bool {
    let l = len.min(blen);
    let m = if l == 0 { 0 } else { u128::MAX << (128 - l) };
    a & m == b & m
}

/// Most random IPv4 prefixes longer than /24, to keep the mix like a routing
/// table's. (It was first a capacity limit of a DIR-24-8 second level; longer
/// prefixes now live in the length-search hash, which holds millions.)
const MAX_LONG_V4: usize = 4000;

/// A random IPv4 prefix in 1.0.0.0-223.255.255.255, with a length mix like a
/// routing table's (mostly /24, some shorter, 1% longer).
fn rand_v4(rng: &mut Rng, long_left: &mut usize) -> Ipv4Network {
    let r = rng.below(100);
    let mut len = match r {
        0..55 => 24,
        55..65 => 23,
        65..73 => 22,
        73..79 => 21,
        79..84 => 20,
        84..88 => 19,
        88..91 => 18,
        91..94 => 17,
        94..97 => 16,
        97..99 => 12 + rng.below(4) as u32,
        _ => 25 + rng.below(8) as u32,
    };
    if len > 24 {
        if *long_left == 0 {
            len = 24;
        } else {
            *long_left -= 1;
        }
    }
    let a = ((1 + rng.below(223) as u32) << 24) | (rng.next_u64() as u32 & 0x00ff_ffff);
    let a = a & (u32::MAX << (32 - len));
    Ipv4Network::new(Ipv4Addr::from(a), len as u8).expect("valid length")
}

/// A random IPv6 prefix in 2000::/3 of length 32, 40, 48, 56 or 64.
fn rand_v6(rng: &mut Rng) -> Ipv6Network {
    let len = match rng.below(100) {
        0..20 => 32,
        20..30 => 40,
        30..80 => 48,
        80..90 => 56,
        _ => 64,
    };
    let a = (0x2u128 << 124) | ((rng.next_u64() as u128) << 60 & ((1u128 << 125) - 1));
    let a = a & (u128::MAX << (128 - len));
    Ipv6Network::new(Ipv6Addr::from(a), len as u8).expect("valid length")
}

/// The deny set: `n` prefixes per family (random ones, the hit prefixes and the
/// nested chains), never covering the miss addresses.
pub(crate) fn prefix_set(n: usize, seed: u64) -> PrefixSet {
    let mut rng = Rng::new(seed);
    let mut set = PrefixSet::default();
    set.v4
        .insert(Ipv4Network::new(Ipv4Addr::new(192, 0, 2, 0), 24).unwrap());
    set.v6
        .insert(Ipv6Network::new(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0), 48).unwrap());
    for len in 8..=32u8 {
        let a = u32::from(NEST_V4) & (u32::MAX << (32 - u32::from(len)));
        set.v4
            .insert(Ipv4Network::new(Ipv4Addr::from(a), len).unwrap());
    }
    for len in 16..=128u8 {
        let m = if len == 128 {
            u128::MAX
        } else {
            u128::MAX << (128 - u32::from(len))
        };
        let a = u128::from(NEST_V6) & m;
        set.v6
            .insert(Ipv6Network::new(Ipv6Addr::from(a), len).unwrap());
    }
    let mut long_left = MAX_LONG_V4;
    while set.v4.len() < n {
        let p = rand_v4(&mut rng, &mut long_left);
        let a = u32::from(p.network());
        if !v4_overlaps(a, p.prefix().into(), MISS_NET_V4.0, MISS_NET_V4.1) {
            set.v4.insert(p);
        }
    }
    while set.v6.len() < n {
        let p = rand_v6(&mut rng);
        let a = u128::from(p.network());
        if !v6_overlaps(a, p.prefix().into(), MISS_NET_V6.0, MISS_NET_V6.1) {
            set.v6.insert(p);
        }
    }
    set
}

fn rule(id: u32, priority: u32, action: Verdict) -> Rule {
    Rule {
        ..Rule::new(id, priority, action)
    }
}

/// 128 port ranges, none of which holds [`DPORT`].
fn port_pool(rng: &mut Rng) -> Vec<PortRange> {
    let mut pool = Vec::new();
    while pool.len() < 128 {
        let lo = 1 + rng.below(65535) as u16;
        let hi = if rng.chance(1, 2) {
            lo
        } else {
            lo.saturating_add(rng.below(1000) as u16)
        };
        let r = PortRange { lo, hi };
        if !r.contains(DPORT) {
            pool.push(r);
        }
    }
    pool
}

fn net(s: &str) -> AddrMatch {
    AddrMatch::Prefix(s.parse::<IpNetwork>().expect("valid prefix"))
}

/// `total` rules: `total - 1` filler rules, then the deny rule `src @bench`,
/// evaluated last. Filler rules look like a firewall's: services (a
/// destination prefix, tcp or udp, a port range), source blocks, ICMP types,
/// other protocols, UDP/SCTP port rules. None matches any test packet (each
/// fails on its destination, source, protocol or port), but many match some
/// of a test packet's fields.
pub(crate) fn rules(total: usize, seed: u64) -> BTreeMap<u32, Rule> {
    let mut rng = Rng::new(seed);
    let ports = port_pool(&mut rng);
    let mut out = BTreeMap::new();
    for i in 1..total as u32 {
        let v6 = rng.chance(1, 2);
        let k = rng.below(256);
        let action = if rng.chance(7, 10) {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        let mut r = rule(i, i * 10, action);
        match rng.below(100) {
            // A service: destination prefix, protocol, port range.
            0..60 => {
                r.dst = Some(if v6 {
                    net(&format!("fd00:64:{k:x}::/48"))
                } else {
                    net(&format!("100.64.{k}.0/24"))
                });
                r.proto = Some(if rng.chance(1, 2) {
                    proto::TCP
                } else {
                    proto::UDP
                });
                r.dport = Some(*rng.pick(&ports));
            }
            // A source block.
            60..70 => {
                r.src = Some(if v6 {
                    net(&format!("2001:db8:f{k:03x}::/48"))
                } else {
                    net(&format!("198.18.{k}.0/24"))
                });
                r.action = Verdict::Deny;
            }
            // ICMP types.
            70..80 => {
                r.proto = Some(if v6 { proto::ICMPV6 } else { proto::ICMP });
                r.icmp_type = Some(*rng.pick(&[0u8, 3, 8, 11, 128, 129, 1, 2]));
            }
            // Another protocol.
            80..85 => {
                r.proto = Some(*rng.pick(&[47u8, 50, 51, 89, 112, 115]));
            }
            // TCP, UDP or SCTP ports without addresses (TCP ones never hold DPORT).
            _ => {
                r.proto = Some(*rng.pick(&[proto::TCP, proto::UDP, proto::SCTP]));
                if rng.chance(1, 3) {
                    r.sport = Some(*rng.pick(&ports));
                }
                r.dport = Some(*rng.pick(&ports));
            }
        }
        out.insert(i, r);
    }
    let mut hit = rule(HIT_RULE_ID, u32::MAX, Verdict::Deny);
    hit.src = Some(AddrMatch::Set(SET.into()));
    out.insert(HIT_RULE_ID, hit);
    out
}

/// The state: the set of `prefixes` per family and `total` rules.
pub(crate) fn state(set: PrefixSet, total: usize, seed: u64) -> AclState {
    let mut s = AclState::default();
    s.sets.insert(SET.into(), set);
    s.rules = rules(total, seed);
    s
}

/// A packet class and its frame.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Class {
    /// Short name.
    pub name: &'static str,
    /// What it is.
    pub what: &'static str,
    /// Source address (the one a deny list matches).
    pub src: std::net::IpAddr,
    /// Action xdpgate must return.
    pub expect: u32,
    /// The frame.
    #[serde(skip)]
    pub frame: Vec<u8>,
}

fn v4_frame(src: Ipv4Addr, vlan: bool) -> Vec<u8> {
    let l4 = Transport::tcp(SPORT, DPORT).bytes();
    let ip = Ipv4::new(src.octets(), DST_V4.octets(), proto::TCP).build(&l4);
    let mut eth = Ethernet::new(ethertype::IPV4);
    if vlan {
        eth = eth.vlan(100);
    }
    pad(eth.build(&ip), 60)
}

fn v6_frame(src: Ipv6Addr, exts: bool) -> Vec<u8> {
    let l4 = Transport::tcp(SPORT, DPORT).bytes();
    let mut ip = Ipv6::new(src.octets(), DST_V6.octets(), proto::TCP);
    if exts {
        ip = ip
            .ext(Ext::hop_by_hop())
            .ext(Ext::routing())
            .ext(Ext::dest_opts());
    }
    Ethernet::new(ethertype::IPV6).build(&ip.build(&l4))
}

/// Every packet class, in report order.
pub(crate) fn classes() -> Vec<Class> {
    let c = |name, what, src: std::net::IpAddr, expect, frame| Class {
        name,
        what,
        src,
        expect,
        frame,
    };
    vec![
        c(
            "v4-hit",
            "IPv4 TCP, source in the deny set",
            HIT_V4.into(),
            XDP_DROP,
            v4_frame(HIT_V4, false),
        ),
        c(
            "v4-miss",
            "IPv4 TCP, source in no prefix (default policy)",
            MISS_V4.into(),
            XDP_PASS,
            v4_frame(MISS_V4, false),
        ),
        c(
            "v6-hit",
            "IPv6 TCP, source in the deny set",
            HIT_V6.into(),
            XDP_DROP,
            v6_frame(HIT_V6, false),
        ),
        c(
            "v6-miss",
            "IPv6 TCP, source in no prefix (default policy)",
            MISS_V6.into(),
            XDP_PASS,
            v6_frame(MISS_V6, false),
        ),
        c(
            ADDR_FLOOD,
            "IPv6 TCP, source in no prefix sharing the destination's address-cache slot (every packet misses both addresses)",
            flood_v6().into(),
            XDP_PASS,
            v6_frame(flood_v6(), false),
        ),
        c(
            "vlan-v4",
            "802.1Q-tagged IPv4 TCP, source in the deny set",
            HIT_V4.into(),
            XDP_DROP,
            v4_frame(HIT_V4, true),
        ),
        c(
            "v6-3ext",
            "IPv6 with hop-by-hop, routing and destination options headers, TCP, source in the deny set",
            HIT_V6.into(),
            XDP_DROP,
            v6_frame(HIT_V6, true),
        ),
        c(
            "nest-v4",
            "IPv4 to the deepest of nested /8../32 (source)",
            NEST_V4.into(),
            XDP_DROP,
            v4_frame(NEST_V4, false),
        ),
        c(
            "nest-v6",
            "IPv6 to the deepest of nested /16../128 (source)",
            NEST_V6.into(),
            XDP_DROP,
            v6_frame(NEST_V6, false),
        ),
    ]
}

/// A live-frames test frame (IPv4 or IPv6 UDP, 64 bytes on the wire without
/// FCS) between the two ends of the lab's veth pair.
pub(crate) fn live_frame(src_mac: [u8; 6], dst_mac: [u8; 6], v6: bool) -> Vec<u8> {
    let l4 = Transport::udp(SPORT, 9).payload(&[0u8; 18]).bytes();
    let mut eth = Ethernet::new(if v6 { ethertype::IPV6 } else { ethertype::IPV4 });
    eth.src = src_mac;
    eth.dst = dst_mac;
    let ip = if v6 {
        Ipv6::new(HIT_V6.octets(), DST_V6.octets(), proto::UDP).build(&l4)
    } else {
        Ipv4::new(HIT_V4.octets(), DST_V4.octets(), proto::UDP).build(&l4)
    };
    pad(eth.build(&ip), 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xdpgate_model::acl::{compile::compile, reference::PacketInfo};

    fn slots() -> BTreeMap<String, u32> {
        [("lo".to_string(), 1)].into()
    }

    #[test]
    fn sets_hold_the_hits_and_never_the_misses() {
        let set = prefix_set(5000, 7);
        assert_eq!((set.v4.len(), set.v6.len()), (5000, 5000));
        for a in [HIT_V4, NEST_V4] {
            assert!(set.contains(a.into()));
        }
        for a in [HIT_V6, NEST_V6] {
            assert!(set.contains(a.into()));
        }
        assert!(!set.contains(MISS_V4.into()));
        assert!(!set.contains(MISS_V6.into()));
    }

    #[test]
    fn hits_hit_the_last_rule_and_misses_fall_through() {
        let st = state(prefix_set(2000, 1), 1000, 2);
        assert!(st.validate().is_empty());
        let img = compile(&st, &slots()).expect("compiles");
        let n = img.rule_ids.len();
        let pkt = |src: std::net::IpAddr, dst: std::net::IpAddr| PacketInfo {
            src,
            dst,
            proto: proto::TCP,
            ports: Some((SPORT, DPORT)),
            icmp: None,
            later_fragment: false,
        };
        for src in [HIT_V4, NEST_V4] {
            let d = img.resolve(1, &pkt(src.into(), DST_V4.into()));
            assert_eq!(d, Some(n - 1), "{src}");
        }
        for src in [HIT_V6, NEST_V6] {
            let d = img.resolve(1, &pkt(src.into(), DST_V6.into()));
            assert_eq!(d, Some(n - 1), "{src}");
        }
        assert_eq!(
            img.resolve(1, &pkt(MISS_V4.into(), DST_V4.into())),
            Some(n + 1)
        );
        assert_eq!(
            img.resolve(1, &pkt(MISS_V6.into(), DST_V6.into())),
            Some(n + 1)
        );
    }
}

#[cfg(test)]
mod phased {
    use super::*;
    use xdpgate_model::acl::compile::compile;

    /// The benchmark's firewall-like rule sets resolve through phased
    /// tables, not the bitmap walk, up to 10,000 rules.
    #[test]
    fn firewall_like_rule_sets_compile_to_phased_tables() {
        for rules in [10, 1000, 10_000] {
            let st = state(prefix_set(1000, 1), rules, 2);
            let t = std::time::Instant::now();
            let img = compile(&st, &[("lo".to_string(), 1)].into()).expect("compiles");
            let ph = img.phases.as_ref();
            eprintln!(
                "{rules} rules: {:?}, plan {:?}, {:?}",
                img.stats().phases,
                ph.map(|p| p.plan),
                t.elapsed()
            );
            assert!(ph.is_some(), "{rules} rules: no phased tables");
        }
    }
}

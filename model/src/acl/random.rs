//! Seeded random rule sets and packets, for the differential tests (compiled
//! tables and datapath against the reference classifier) and the benchmarks.
//!
//! Addresses come from the documentation and lab prefixes (192.0.2.0/24,
//! 198.51.100.0/24, 203.0.113.0/24, 10.200.0.0/16, 2001:db8::/32,
//! fd00:200::/32) so that rules and packets overlap often.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

mod adversarial;
pub use adversarial::{ADVERSARIES, Adversary, adversarial_packet, adversarial_state};

use super::{
    model::{AclState, AddrMatch, PortRange, PrefixSet, Rule, Verdict, proto},
    reference::PacketInfo,
};

/// A small, fast, seeded PRNG (xorshift64*), so every failure is reproducible
/// from its seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
    /// One element of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const V4_POOLS: [(&str, u8); 4] = [
    ("192.0.2.0", 24),
    ("198.51.100.0", 24),
    ("203.0.113.0", 24),
    ("10.200.0.0", 16),
];
const V6_POOLS: [(&str, u8); 2] = [("2001:db8::", 32), ("fd00:200::", 32)];

fn rand_v4(rng: &mut Rng) -> Ipv4Addr {
    let (base, len) = *rng.pick(&V4_POOLS);
    let base = u32::from(base.parse::<Ipv4Addr>().unwrap());
    let host = (rng.next_u64() as u32) & (u32::MAX >> len);
    Ipv4Addr::from(base | host)
}

fn rand_v6(rng: &mut Rng) -> Ipv6Addr {
    let (base, len) = *rng.pick(&V6_POOLS);
    let base = u128::from(base.parse::<Ipv6Addr>().unwrap());
    // Keep most variation in a few bits so prefixes nest and collide.
    let mut host = ((rng.next_u64() as u128) << 64 | rng.next_u64() as u128) & (u128::MAX >> len);
    if rng.chance(3, 4) {
        host &= !((1u128 << 80) - 1) | 0xff; // vary bits 32..48 and the last byte
    }
    Ipv6Addr::from(base | host)
}

/// A random prefix of either family; nested often.
pub fn rand_prefix(rng: &mut Rng, v6: bool) -> IpNetwork {
    if v6 {
        let len = *rng.pick(&[16u8, 32, 33, 40, 47, 48, 56, 64, 96, 127, 128]);
        let len = if rng.chance(1, 4) {
            17 + rng.below(112) as u8
        } else {
            len
        };
        let a = u128::from(rand_v6(rng)) & (u128::MAX.checked_shl(128 - len as u32).unwrap_or(0));
        IpNetwork::V6(Ipv6Network::new(Ipv6Addr::from(a), len).unwrap())
    } else {
        let len = *rng.pick(&[8u8, 16, 20, 24, 25, 28, 30, 31, 32]);
        let len = if rng.chance(1, 4) {
            rng.below(33) as u8
        } else {
            len
        };
        let a = u32::from(rand_v4(rng)) & (u32::MAX.checked_shl(32 - len as u32).unwrap_or(0));
        IpNetwork::V4(Ipv4Network::new(Ipv4Addr::from(a), len).unwrap())
    }
}

const INTERESTING_PORTS: [u16; 9] = [0, 1, 22, 53, 80, 443, 1024, 8080, 65535];

fn rand_range(rng: &mut Rng) -> PortRange {
    let a = if rng.chance(1, 2) {
        *rng.pick(&INTERESTING_PORTS)
    } else {
        rng.below(65536) as u16
    };
    let b = if rng.chance(1, 2) {
        a
    } else {
        a.saturating_add(rng.below(2000) as u16)
    };
    PortRange { lo: a, hi: b }
}

/// Interfaces the generated rules and policies name.
pub const IFACES: [&str; 2] = ["eth0", "eth1"];

/// A random valid state: `sets` sets of up to `set_size` prefixes, `rules` rules.
pub fn rand_state(rng: &mut Rng, sets: usize, set_size: usize, rules: usize) -> AclState {
    let mut state = AclState::default();
    for s in 0..sets {
        let mut set = PrefixSet::default();
        for _ in 0..rng.below(set_size as u64 + 1) {
            let v6 = rng.chance(1, 2);
            match rand_prefix(rng, v6) {
                IpNetwork::V4(p) => set.v4.insert(p),
                IpNetwork::V6(p) => set.v6.insert(p),
            };
        }
        state.sets.insert(format!("set{s}"), set);
    }
    let names: Vec<String> = state.sets.keys().cloned().collect();
    for _ in 0..rules {
        let id = loop {
            let id = rng.below(1_000_000) as u32;
            if !state.rules.contains_key(&id) {
                break id;
            }
        };
        // 0 = any family, 4, 6
        let fam = *rng.pick(&[0u8, 4, 6]);
        let addr = |rng: &mut Rng| -> Option<AddrMatch> {
            match rng.below(4) {
                0 if !names.is_empty() => Some(AddrMatch::Set(rng.pick(&names).clone())),
                1 | 2 if fam != 0 => Some(AddrMatch::Prefix(rand_prefix(rng, fam == 6))),
                _ => None,
            }
        };
        let src = addr(rng);
        let dst = addr(rng);
        let icmp = if fam == 6 { proto::ICMPV6 } else { proto::ICMP };
        let protos: Vec<Option<u8>> = if fam == 0 {
            vec![
                None,
                Some(proto::TCP),
                Some(proto::UDP),
                Some(proto::SCTP),
                Some(47),
            ]
        } else {
            vec![
                None,
                Some(proto::TCP),
                Some(proto::UDP),
                Some(proto::SCTP),
                Some(icmp),
                Some(47),
            ]
        };
        let p = *rng.pick(&protos);
        let mut rule = Rule {
            id,
            priority: rng.below(8) as u32,
            src,
            dst,
            proto: p,
            sport: None,
            dport: None,
            icmp_type: None,
            icmp_code: None,
            iface: rng.chance(1, 5).then(|| rng.pick(&IFACES).to_string()),
            action: if rng.chance(1, 2) {
                Verdict::Allow
            } else {
                Verdict::Deny
            },
            limit: None,
            syncookie: false,
        };
        if p.is_some_and(proto::has_ports) {
            if rng.chance(1, 3) {
                rule.sport = Some(rand_range(rng));
            }
            if rng.chance(2, 3) {
                rule.dport = Some(rand_range(rng));
            }
        }
        if p == Some(icmp) && rng.chance(2, 3) {
            let t = *rng.pick(&[0u8, 3, 8, 128, 129, 133, 135, 136, 137]);
            rule.icmp_type = Some(t);
            if rng.chance(1, 3) {
                rule.icmp_code = Some(rng.below(3) as u8);
            }
        }
        state.rules.insert(id, rule);
    }
    for i in IFACES {
        if rng.chance(1, 2) {
            state.policies.insert(i.to_string(), Verdict::Deny);
        }
    }
    debug_assert!(state.validate().is_empty(), "{:?}", state.validate());
    state
}

/// An address inside a random prefix of the state (or a random one).
fn addr_near(rng: &mut Rng, state: &AclState, v6: bool) -> IpAddr {
    let mut prefixes: Vec<IpNetwork> = Vec::new();
    for s in state.sets.values() {
        if v6 {
            prefixes.extend(s.v6.iter().take(8).map(|p| IpNetwork::V6(*p)));
        } else {
            prefixes.extend(s.v4.iter().take(8).map(|p| IpNetwork::V4(*p)));
        }
    }
    for r in state.rules.values().take(64) {
        for m in [&r.src, &r.dst].into_iter().flatten() {
            if let AddrMatch::Prefix(p) = m
                && p.is_ipv6() == v6
            {
                prefixes.push(*p);
            }
        }
    }
    if !prefixes.is_empty() && rng.chance(3, 4) {
        let p = *rng.pick(&prefixes);
        match p {
            IpNetwork::V4(p) => {
                let host = (rng.next_u64() as u32)
                    & (u32::MAX.checked_shr(p.prefix() as u32).unwrap_or(0));
                // Edges of prefixes are where off-by-one errors live.
                let host = match rng.below(4) {
                    0 => 0,
                    1 => u32::MAX.checked_shr(p.prefix() as u32).unwrap_or(0),
                    _ => host,
                };
                IpAddr::V4(Ipv4Addr::from(u32::from(p.network()) | host))
            }
            IpNetwork::V6(p) => {
                let mask = u128::MAX.checked_shr(p.prefix() as u32).unwrap_or(0);
                let host = ((rng.next_u64() as u128) << 64 | rng.next_u64() as u128) & mask;
                let host = match rng.below(4) {
                    0 => 0,
                    1 => mask,
                    _ => host,
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(p.network()) | host))
            }
        }
    } else if v6 {
        IpAddr::V6(rand_v6(rng))
    } else {
        IpAddr::V4(rand_v4(rng))
    }
}

/// A random IPv4 or IPv6 packet aimed at the state's prefixes and ports.
pub fn rand_packet(rng: &mut Rng, state: &AclState) -> PacketInfo {
    let v6 = rng.chance(1, 2);
    let icmp = if v6 { proto::ICMPV6 } else { proto::ICMP };
    let p = *rng.pick(&[
        proto::TCP,
        proto::UDP,
        proto::SCTP,
        icmp,
        icmp,
        47,
        proto::ICMP,
    ]);
    let later_fragment = rng.chance(1, 10);
    let mut ports_seen: Vec<u16> = INTERESTING_PORTS.to_vec();
    for r in state.rules.values().take(64) {
        for pr in [r.sport, r.dport].into_iter().flatten() {
            ports_seen.extend([pr.lo, pr.hi, pr.lo.wrapping_sub(1), pr.hi.wrapping_add(1)]);
        }
    }
    let port = |rng: &mut Rng| {
        if rng.chance(3, 4) {
            *rng.pick(&ports_seen)
        } else {
            rng.below(65536) as u16
        }
    };
    let ports = (!later_fragment && proto::has_ports(p)).then(|| (port(rng), port(rng)));
    let icmp_fields = (!later_fragment && p == icmp).then(|| {
        (
            *rng.pick(&[0u8, 3, 8, 128, 129, 133, 134, 135, 136, 137, 138]),
            rng.below(3) as u8,
        )
    });
    PacketInfo {
        src: addr_near(rng, state, v6),
        dst: addr_near(rng, state, v6),
        proto: p,
        later_fragment,
        ports,
        icmp: icmp_fields,
    }
}

/// Interface slots for the generated interface names: eth0 -> 1, eth1 -> 2.
pub fn slots() -> BTreeMap<String, u32> {
    IFACES
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), i as u32 + 1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{compile::compile, reference::classify};

    /// The compiled tables, evaluated in software the way the datapath evaluates
    /// them, agree with the reference classifier on random states and packets.
    #[test]
    fn compiled_tables_agree_with_reference() {
        let slots = slots();
        let (mut checked, mut by_rule, mut nd, mut later) = (0, 0, 0, 0);
        let mut tries = 0;
        for seed in 0..150u64 {
            let mut rng = Rng::new(seed);
            let rules = 1 + rng.below(40) as usize;
            let state = rand_state(&mut rng, 3, 12, rules);
            let image = compile(&state, &slots).expect("compile");
            assert!(image.phases.is_some(), "seed {seed}: no phased tables");
            tries += usize::from(!image.v6_blocks.is_empty());
            for _ in 0..300 {
                let pkt = rand_packet(&mut rng, &state);
                for (iface, slot) in [("eth0", 1), ("eth1", 2), ("lo", 0)] {
                    let want = classify(&state, iface, &pkt);
                    let got = image.decide(slot, &pkt);
                    assert_eq!(
                        image.resolve(slot, &pkt),
                        image.resolve_walk(slot, &pkt),
                        "seed {seed}: phased tables and bitmap walk disagree on {pkt:?}"
                    );
                    assert_eq!(
                        got,
                        want,
                        "seed {seed}, iface {iface}, packet {pkt:?}\nrules: {:#?}\nsets: {:?}",
                        state.ordered_rules(),
                        state.sets
                    );
                    checked += 1;
                    by_rule += usize::from(want.rule.is_some());
                }
                nd += usize::from(pkt.is_neighbour_discovery());
                later += usize::from(pkt.later_fragment);
            }
        }
        // The generator must keep the comparison meaningful: most packets are
        // decided by a rule, some by the default policy, and neighbour discovery
        // and later fragments occur.
        assert_eq!(checked, 150 * 300 * 3);
        assert!(
            by_rule > checked / 2 && by_rule < checked * 9 / 10,
            "{by_rule}/{checked}"
        );
        assert!(
            nd > 1000 && later > 2000,
            "nd {nd}, later fragments {later}"
        );
        // And IPv6 lookups go through trie blocks in most states.
        assert!(tries > 75, "{tries} of 150 states with IPv6 blocks");
    }

    #[test]
    fn address_classes_cover_the_top_of_both_spaces() {
        let mut state = AclState::default();
        let mut set = PrefixSet::default();
        set.v4.insert("255.255.255.255/32".parse().unwrap());
        set.v4.insert("0.0.0.0/1".parse().unwrap());
        set.v6.insert(
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"
                .parse()
                .unwrap(),
        );
        set.v6.insert("8000::/1".parse().unwrap());
        state.sets.insert("edges".into(), set);
        state.rules.insert(
            1,
            Rule {
                src: Some(AddrMatch::Set("edges".into())),
                ..Rule::new(1, 0, Verdict::Deny)
            },
        );
        let image = compile(&state, &slots()).unwrap();
        for (ip, hit) in [
            ("255.255.255.255", true),
            ("255.255.255.254", false),
            ("127.255.255.255", true),
            ("128.0.0.0", false),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", true),
            ("7fff::", false),
            ("8000::", true),
        ] {
            let pkt = PacketInfo {
                src: ip.parse().unwrap(),
                dst: ip.parse().unwrap(),
                proto: 47,
                later_fragment: false,
                ports: None,
                icmp: None,
            };
            assert_eq!(image.decide(1, &pkt).rule.is_some(), hit, "{ip}");
            assert_eq!(classify(&state, "eth0", &pkt).rule.is_some(), hit, "{ip}");
        }
    }
}

#[cfg(test)]
mod capacity {
    use super::*;
    use crate::acl::{
        AclError, Change,
        compile::{Capacities, compile, phases},
        model::limits::MAX_RULES,
    };
    use xdpgate_common::acl::WALK_ADDR_CLASSES;

    fn deny_src(id: u32, src: IpNetwork) -> Rule {
        Rule {
            src: Some(AddrMatch::Prefix(src)),
            ..Rule::new(id, id, Verdict::Deny)
        }
    }

    #[test]
    fn too_many_rules_is_rejected_whole() {
        let rules: Vec<Rule> = (0..=MAX_RULES as u32)
            .map(|i| deny_src(i, "192.0.2.0/24".parse().unwrap()))
            .collect();
        let errs = AclState::default()
            .apply(&Change::RuleAdd { rules })
            .unwrap_err();
        assert!(
            errs.iter()
                .any(|e| matches!(e, AclError::Capacity { what: "rules", .. })),
            "{errs:?}"
        );
    }

    #[test]
    fn rules_with_more_address_classes_than_the_bitmaps_hold_compile_to_phased_tables() {
        // Every rule names its own /32: one address class per rule, plus the
        // two "no condition" classes, more than the bitmap walk's tables hold.
        let mut state = AclState::default();
        for i in 0..8200u32 {
            let a = Ipv4Addr::from(0x0ac8_0000 | i); // 10.200.0.0/16
            state.rules.insert(
                i,
                deny_src(i, IpNetwork::V4(Ipv4Network::new(a, 32).unwrap())),
            );
        }
        assert!(state.validate().is_empty());
        let image = compile(&state, &slots()).expect("compiles");
        assert!(image.src_bm.len() > WALK_ADDR_CLASSES as usize);
        assert!(image.phases.is_some());
        // Without phased tables the walk's capacity is the limit, and named.
        let walk = image.with_phase_budget(0);
        let dims = phases::Dims {
            bms: [
                &walk.iface_bm,
                &walk.proto_bm,
                &walk.src_bm,
                &walk.dst_bm,
                &walk.sport_bm,
                &walk.dport_bm,
            ],
            rules: walk.rule_ids.len(),
        };
        let errs = Capacities::default()
            .walk_fits(walk.phases.as_ref(), &dims)
            .expect_err("must not fit");
        assert!(
            errs.iter().any(|e| matches!(
                e,
                AclError::Configured(x) if x.key == "[acl] walk_addr_classes"
            )),
            "{errs:?}"
        );
    }
}

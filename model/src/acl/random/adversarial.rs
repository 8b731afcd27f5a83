//! Rule sets built to be hard for the phased reduction (`compile::phases`),
//! and packets aimed at them: every rule with its own source and destination
//! address and its own port range (the source x destination product and the
//! port classes grow with the rule count), heavily overlapping port ranges,
//! and rules that alternate wildcard and specific in every dimension.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::{IFACES, Rng};
use crate::acl::{
    model::{AclState, AddrMatch, PortRange, Rule, Verdict, proto},
    reference::PacketInfo,
};

/// Which adversarial shape a rule set has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adversary {
    /// Every rule names its own /32 or /128 source and destination and its
    /// own destination port range: as many address and port classes as
    /// rules, and a source x destination product of rules squared.
    OwnPairs,
    /// Nested and staggered port ranges on both ports: every range overlaps
    /// most others, so the port classes' rule sets are all different.
    OverlappingPorts,
    /// Rule `i` is specific in dimension `d` when bit `d` of `i` (mixed by a
    /// per-set permutation) is set, wildcard otherwise: every combination of
    /// wildcard and specific dimensions occurs.
    Alternating,
}

/// Every adversary, for tests that run them all.
pub const ADVERSARIES: [Adversary; 3] = [
    Adversary::OwnPairs,
    Adversary::OverlappingPorts,
    Adversary::Alternating,
];

fn host_v4(i: u32, salt: u32) -> Ipv4Addr {
    // 10.200.0.0/16 and 198.18.0.0/15 hold every generated host.
    if salt & 1 == 0 {
        Ipv4Addr::from(0x0ac8_0000 | (i.wrapping_mul(2_654_435_761) ^ salt) & 0xffff)
    } else {
        Ipv4Addr::from(0xc612_0000 | (i.wrapping_mul(40_503) ^ salt) & 0x1_ffff)
    }
}

fn host_v6(i: u32, salt: u32) -> Ipv6Addr {
    let base = 0xfd00_0200u128 << 96;
    Ipv6Addr::from(base | u128::from(salt & 0xff) << 64 | u128::from(i.wrapping_mul(2_654_435_761)))
}

fn host(v6: bool, i: u32, salt: u32) -> IpNetwork {
    if v6 {
        IpNetwork::V6(Ipv6Network::new(host_v6(i, salt), 128).expect("valid /128"))
    } else {
        IpNetwork::V4(Ipv4Network::new(host_v4(i, salt), 32).expect("valid /32"))
    }
}

fn short(v6: bool, i: u32) -> IpNetwork {
    if v6 {
        let a = (0xfd00_0200u128 << 96) | u128::from(i & 0xff) << 80;
        IpNetwork::V6(Ipv6Network::new(Ipv6Addr::from(a), 48).expect("valid /48"))
    } else {
        IpNetwork::V4(
            Ipv4Network::new(Ipv4Addr::from(0x0ac8_0000 | (i & 0xff) << 8), 24).expect("valid /24"),
        )
    }
}

/// A state of `rules` rules of the given shape (rule ids 1..=rules).
pub fn adversarial_state(rng: &mut Rng, kind: Adversary, rules: usize) -> AclState {
    let mut state = AclState::default();
    let salt = rng.next_u64() as u32;
    for i in 1..=rules as u32 {
        let v6 = rng.chance(1, 2);
        let action = if rng.chance(1, 2) {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        let mut r = Rule::new(i, rng.below(4) as u32, action);
        let tcp_or_udp = if rng.chance(1, 2) {
            proto::TCP
        } else {
            proto::UDP
        };
        match kind {
            Adversary::OwnPairs => {
                r.src = Some(AddrMatch::Prefix(host(v6, i, salt)));
                r.dst = Some(AddrMatch::Prefix(host(v6, i, salt ^ 0x5a5a)));
                r.proto = Some(tcp_or_udp);
                let lo = (i * 6) as u16;
                r.dport = Some(PortRange {
                    lo,
                    hi: lo.saturating_add(rng.below(12) as u16),
                });
            }
            Adversary::OverlappingPorts => {
                r.proto = Some(tcp_or_udp);
                let a = rng.below(65536) as u16;
                let nested = PortRange {
                    lo: a / 2,
                    hi: 65535 - a / 2,
                };
                let staggered = PortRange {
                    lo: a,
                    hi: a.saturating_add(rng.below(20000) as u16),
                };
                (r.sport, r.dport) = match rng.below(3) {
                    0 => (Some(nested), Some(staggered)),
                    1 => (Some(staggered), Some(nested)),
                    _ => (None, Some(staggered)),
                };
                if rng.chance(1, 3) {
                    r.src = Some(AddrMatch::Prefix(short(v6, i)));
                }
            }
            Adversary::Alternating => {
                let bits = (i ^ salt).wrapping_mul(0x9e37_79b1) >> 26;
                if bits & 1 != 0 {
                    r.src = Some(AddrMatch::Prefix(if rng.chance(1, 2) {
                        host(v6, i, salt)
                    } else {
                        short(v6, i)
                    }));
                }
                if bits & 2 != 0 {
                    r.dst = Some(AddrMatch::Prefix(short(v6, i >> 2)));
                }
                if bits & 4 != 0 {
                    r.iface = Some(IFACES[(i & 1) as usize].to_string());
                }
                if bits & 56 != 0 {
                    r.proto = Some(tcp_or_udp);
                    let lo = rng.below(65536) as u16;
                    let range = PortRange {
                        lo,
                        hi: lo.saturating_add(rng.below(3000) as u16),
                    };
                    if bits & 8 != 0 {
                        r.sport = Some(range);
                    }
                    if bits & 16 != 0 {
                        r.dport = Some(range);
                    }
                }
            }
        }
        state.rules.insert(i, r);
    }
    if rng.chance(1, 2) {
        state.policies.insert(IFACES[0].to_string(), Verdict::Deny);
    }
    debug_assert!(state.validate().is_empty(), "{:?}", state.validate());
    state
}

fn inside(rng: &mut Rng, m: &Option<AddrMatch>, v6: bool) -> IpAddr {
    if let Some(AddrMatch::Prefix(p)) = m
        && p.is_ipv6() == v6
    {
        return match p {
            IpNetwork::V4(p) => {
                let mask = u32::MAX.checked_shr(p.prefix() as u32).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(
                    u32::from(p.network()) | rng.next_u64() as u32 & mask,
                ))
            }
            IpNetwork::V6(p) => {
                let mask = u128::MAX.checked_shr(p.prefix() as u32).unwrap_or(0);
                let h = (rng.next_u64() as u128) << 64 | rng.next_u64() as u128;
                IpAddr::V6(Ipv6Addr::from(u128::from(p.network()) | h & mask))
            }
        };
    }
    if v6 {
        IpAddr::V6(host_v6(rng.next_u64() as u32, rng.next_u64() as u32))
    } else {
        IpAddr::V4(host_v4(rng.next_u64() as u32, rng.next_u64() as u32))
    }
}

fn port_in(rng: &mut Rng, r: &Option<PortRange>) -> u16 {
    match r {
        Some(r) => match rng.below(4) {
            0 => r.lo,
            1 => r.hi,
            2 => r.hi.wrapping_add(1),
            _ => r.lo + (rng.below(u64::from(r.hi - r.lo) + 1) as u16),
        },
        None => rng.below(65536) as u16,
    }
}

/// A packet whose fields each come from a random rule of `rules` (so it
/// matches some rules in some dimensions and mixes pairs no rule names), or
/// at random.
pub fn adversarial_packet(rng: &mut Rng, rules: &[&Rule]) -> PacketInfo {
    let pick = |rng: &mut Rng| *rng.pick(rules);
    let base = pick(rng);
    let v6 = match base.src.as_ref().or(base.dst.as_ref()) {
        Some(AddrMatch::Prefix(p)) => p.is_ipv6(),
        _ => rng.chance(1, 2),
    };
    let same = rng.chance(1, 3);
    let other = if same { base } else { pick(rng) };
    let p = base
        .proto
        .filter(|_| rng.chance(7, 8))
        .unwrap_or(*rng.pick(&[proto::TCP, proto::UDP, proto::SCTP, 47]));
    let later_fragment = rng.chance(1, 16);
    let ports = (!later_fragment && proto::has_ports(p))
        .then(|| (port_in(rng, &other.sport), port_in(rng, &base.dport)));
    PacketInfo {
        src: inside(rng, &base.src, v6),
        dst: inside(rng, &other.dst, v6),
        proto: p,
        later_fragment,
        ports,
        icmp: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{
        compile::{Image, compile},
        random::slots,
        reference::classify,
    };

    const ALL: [(&str, u32); 3] = [("eth0", 1), ("eth1", 2), ("lo", 0)];

    /// Checks `packets` adversarial packets on interfaces `ifaces` against
    /// the reference; returns how many decisions came from a rule.
    fn check(
        state: &AclState,
        image: &Image,
        rng: &mut Rng,
        (packets, ifaces): (usize, &[(&str, u32)]),
        what: &str,
    ) -> usize {
        let rules = state.ordered_rules();
        let mut by_rule = 0;
        for _ in 0..packets {
            let pkt = adversarial_packet(rng, &rules);
            for &(iface, slot) in ifaces {
                let want = classify(state, iface, &pkt);
                assert_eq!(
                    image.decide(slot, &pkt),
                    want,
                    "{what}, iface {iface}, {pkt:?}"
                );
                by_rule += usize::from(want.rule.is_some());
            }
        }
        by_rule
    }

    /// Adversarial rule sets compile to phased tables, and the tables decide
    /// exactly as the reference classifier.
    #[test]
    fn phased_tables_agree_with_reference_on_adversarial_rule_sets() {
        for kind in ADVERSARIES {
            for seed in 0..3u64 {
                let mut rng = Rng::new(seed);
                let state = adversarial_state(&mut rng, kind, 400);
                let image = compile(&state, &slots()).expect("compile");
                assert!(
                    image.phases.is_some(),
                    "{kind:?} seed {seed}: no phased tables"
                );
                let by_rule = check(
                    &state,
                    &image,
                    &mut rng,
                    (3000, &ALL),
                    &format!("{kind:?} seed {seed}"),
                );
                // Most packets take a field from a rule: many must be decided by one.
                assert!(
                    by_rule > 3000 * 3 / 10,
                    "{kind:?} seed {seed}: {by_rule} by a rule"
                );
            }
        }
    }

    /// With a budget too small for the folded tables one group keeps its
    /// remaps, with one too small for that the rules are split into several
    /// groups, and with none at all the bitmap walk decides: all agree with
    /// the reference.
    #[test]
    fn remaps_split_groups_and_the_bitmap_walk_agree_with_reference() {
        let mut rng = Rng::new(7);
        let state = adversarial_state(&mut rng, Adversary::OwnPairs, 300);
        let image = compile(&state, &slots()).expect("compile");
        let folded = image.phases.as_ref().expect("phased");
        assert!(folded.folded, "the remaps are folded when they fit");
        // One cell less: one group with its remaps; one less again: groups.
        let remaps = image.clone().with_phase_budget(folded.cells.len() - 1);
        let one = remaps.phases.as_ref().expect("phased");
        assert!(!one.folded && one.groups.len() == 1, "one group, remaps");
        check(&state, &remaps, &mut rng, (3000, &ALL), "remaps");
        let one = one.cells.len();
        let split = image.clone().with_phase_budget(one - 1);
        let groups = split.phases.as_ref().map_or(0, |p| p.groups.len());
        assert!(groups > 1, "{groups} groups within {} cells", one - 1);
        check(&state, &split, &mut rng, (3000, &ALL), "split");
        let walk = image.with_phase_budget(0);
        assert!(walk.phases.is_none());
        check(&state, &walk, &mut rng, (3000, &ALL), "walk");
    }

    /// The long run reported in `docs/design/acl.md`: 10,000 rules of each
    /// shape, `XDPGATE_DIFF_PACKETS` packets in all (default 1,000,000,
    /// split over the shapes, on eth0: the reference scans 10,000 rules per
    /// packet); run
    /// with `cargo test --release -p xdpgate-model -- --ignored`.
    #[test]
    #[ignore = "long: a million packets per rule set"]
    fn million_packets_agree_with_reference_on_10k_adversarial_rules() {
        let packets = std::env::var("XDPGATE_DIFF_PACKETS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000usize);
        for kind in ADVERSARIES {
            let mut rng = Rng::new(16);
            let state = adversarial_state(&mut rng, kind, 10_000);
            let t = std::time::Instant::now();
            let image = compile(&state, &slots()).expect("compile");
            let compiled = t.elapsed();
            let each = (packets / 3, &ALL[..1]);
            let by_rule = check(&state, &image, &mut rng, each, &format!("{kind:?}"));
            println!(
                "{kind:?}: compile {compiled:?}, phased (groups, cells) {:?}, {} packets, {by_rule} decided by a rule",
                image.stats().phases,
                packets / 3
            );
        }
    }
}

//! The per-CPU IPv6 address-class cache (`XG_ADDR_CACHE`) on the loaded
//! datapath, with real frames through `BPF_PROG_TEST_RUN`: every packet is
//! decided the same, and counted on the same rule, with the cache bypassed,
//! cold and warm; its hits and misses are exactly the IPv6 addresses it held
//! or did not (IPv4 never uses it); and a prefix change (incremental, which
//! keeps every class id) and a generation switch (a full install) are seen
//! by the very next packet while the cache holds the addresses' old classes.
mod acl_common;

use acl_common::counts;
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
};

use xdpgate::{
    acl::AclController,
    datapath::{Datapath, stats::CacheStats},
};
use xdpgate_common::acl::addr_cache_index;
use xdpgate_model::{
    acl::{
        AclState, AddrMatch, Change, PortRange, PrefixSet, Rule, Verdict,
        compile::eval::v6_words,
        reference::{PacketInfo, classify},
    },
    iface::Malformed,
};
use xdpgate_tests::{
    lab::{Netns, serial},
    packet::{Ethernet, Ipv4, Ipv6, Transport, ethertype},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// The destination every server-bound case uses.
const SERVER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 0x10);

/// Pins the calling thread to the CPU it runs on: the cache is per CPU, and
/// the counts below assume every run lands on the same one.
fn pin_to_current_cpu() {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    assert!(cpu >= 0, "sched_getcpu failed");
    xdpgate_tests::bpf::pin_to_cpu(cpu as usize).expect("sched_setaffinity");
}

fn set(prefixes: &[&str]) -> PrefixSet {
    let mut s = PrefixSet::default();
    for p in prefixes {
        if p.contains(':') {
            s.v6.insert(p.parse().unwrap());
        } else {
            s.v4.insert(p.parse().unwrap());
        }
    }
    s
}

/// Rule 1 denies sources in `block`; rule 2 allows DNS to `servers`; rule 3
/// denies destinations in 2001:db8:300::/48; rule 4 allows the rest, so every
/// packet is counted on a rule.
fn state(block: &[&str]) -> AclState {
    let mut st = AclState::default();
    st.sets.insert("block".into(), set(block));
    st.sets.insert(
        "servers".into(),
        set(&["2001:db8:200::/48", "192.0.2.0/24"]),
    );
    let rules = [
        Rule {
            src: Some(AddrMatch::Set("block".into())),
            ..Rule::new(1, 10, Verdict::Deny)
        },
        Rule {
            dst: Some(AddrMatch::Set("servers".into())),
            proto: Some(17),
            dport: Some(PortRange { lo: 53, hi: 53 }),
            ..Rule::new(2, 20, Verdict::Allow)
        },
        Rule {
            dst: Some(AddrMatch::Prefix("2001:db8:300::/48".parse().unwrap())),
            ..Rule::new(3, 30, Verdict::Deny)
        },
        Rule::new(4, 40, Verdict::Allow),
    ];
    for r in rules {
        st.rules.insert(r.id, r);
    }
    st
}

/// The deny set of the fixture: a /48 and a nested chain down to a /128.
const BLOCK: &[&str] = &[
    "2001:db8:1::/48",
    "fd00::/16",
    "fd00:5555::/32",
    "fd00:5555:aaaa:5555::/64",
    "fd00:5555:aaaa:5555::1/128",
    "198.51.100.0/24",
];

fn dns(src: IpAddr, dst: IpAddr) -> PacketInfo {
    PacketInfo {
        src,
        dst,
        proto: 17,
        later_fragment: false,
        ports: Some((5000, 53)),
        icmp: None,
    }
}

fn frame(p: &PacketInfo) -> Vec<u8> {
    let l4 = Transport::udp(p.ports.unwrap().0, p.ports.unwrap().1).bytes();
    match (p.src, p.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            Ethernet::new(ethertype::IPV4).build(&Ipv4::new(s.octets(), d.octets(), 17).build(&l4))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            Ethernet::new(ethertype::IPV6).build(&Ipv6::new(s.octets(), d.octets(), 17).build(&l4))
        }
        _ => unreachable!("mixed families"),
    }
}

fn slot(a: Ipv6Addr) -> u32 {
    addr_cache_index(&v6_words(a))
}

/// A source in 2001:db8:ffff::/48 (no set covers it) that shares its cache
/// slot with `dst`: each of the two evicts the other, so both always miss.
fn colliding_source(dst: Ipv6Addr) -> Ipv6Addr {
    let base = u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0));
    (1u128..1 << 24)
        .map(|i| Ipv6Addr::from(base | i))
        .find(|a| slot(*a) == slot(dst))
        .expect("a colliding source among 16M candidates")
}

/// Address-cache (hits, misses) of `runs` runs of `p` with the cache on:
/// IPv4 never uses it; an IPv6 address hits unless the run is the first
/// after a switch (`cold`) or the other address of the packet evicted it.
fn expected_addr(p: &PacketInfo, cold: bool, runs: u64) -> (u64, u64) {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (p.src, p.dst) else {
        return (0, 0);
    };
    if s != d && slot(s) == slot(d) {
        return (0, 2 * runs);
    }
    // The first run of a cold cache misses the source, and the destination
    // unless it is the same address (then stored by the source's miss).
    let first = if !cold {
        (2, 0)
    } else if s == d {
        (1, 1)
    } else {
        (0, 2)
    };
    (first.0 + 2 * (runs - 1), first.1)
}

fn addr_delta(dp: &Datapath, before: CacheStats) -> (u64, u64) {
    let now = dp.cache_stats().expect("cache stats");
    (
        now.addr_hits - before.addr_hits,
        now.addr_misses - before.addr_misses,
    )
}

fn xdp_action(v: Verdict) -> u32 {
    match v {
        Verdict::Allow => XDP_PASS,
        Verdict::Deny => XDP_DROP,
    }
}

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse().unwrap())
}

#[test]
fn bypassed_cold_and_warm_address_caches_decide_and_count_every_case_the_same() {
    let _g = serial();
    let ns = Netns::new("addrcache").unwrap();
    ns.run(|| {
        pin_to_current_cpu();
        let mut dp = Datapath::load().expect("load");
        dp.register(1, 1, Malformed::Drop).expect("register lo");
        let mut ctl = AclController::new(BTreeMap::from([("lo".to_owned(), 1)]));
        let st = state(BLOCK);
        let server = IpAddr::V6(SERVER);
        let cases = [
            (
                "source in the deny set's /48",
                dns(v6("2001:db8:1::5"), server),
            ),
            (
                "source the deepest of a nested chain (/128)",
                dns(v6("fd00:5555:aaaa:5555::1"), server),
            ),
            (
                "source in the chain's /64 beside the /128",
                dns(v6("fd00:5555:aaaa:5555::2"), server),
            ),
            (
                "source in the chain's /16 only",
                dns(v6("fd00:1::1"), server),
            ),
            (
                "source in no set, to a server",
                dns(v6("2001:db8:ffff::1"), server),
            ),
            (
                "source in no set, to the denied destination /48",
                dns(v6("2001:db8:ffff::1"), v6("2001:db8:300::1")),
            ),
            (
                "source and destination the same address",
                dns(server, server),
            ),
            (
                "source sharing the destination's cache slot",
                dns(IpAddr::V6(colliding_source(SERVER)), server),
            ),
            (
                "IPv4 source in the deny set",
                dns(
                    "198.51.100.7".parse().unwrap(),
                    "192.0.2.10".parse().unwrap(),
                ),
            ),
            (
                "IPv4 source in no set, to a server",
                dns(
                    "203.0.113.7".parse().unwrap(),
                    "192.0.2.10".parse().unwrap(),
                ),
            ),
        ];
        for (name, p) in &cases {
            let want = classify(&st, "lo", p);
            let action = xdp_action(want.verdict);
            let rule = want.rule.expect("rule 4 matches every packet");
            let f = frame(p);
            // Every install switches the generation: the cache is cold.
            ctl.install(&mut dp, st.clone()).expect("install");
            let before = counts(&ctl, &dp);

            dp.set_decision_cache(false).unwrap();
            let c = dp.cache_stats().unwrap();
            assert_eq!(
                dp.test_run(&f, 1).unwrap().action,
                action,
                "{name}: bypassed"
            );
            assert_eq!(addr_delta(&dp, c), (0, 0), "{name}: bypassed, not counted");

            dp.set_decision_cache(true).unwrap();
            let c = dp.cache_stats().unwrap();
            assert_eq!(dp.test_run(&f, 1).unwrap().action, action, "{name}: cold");
            assert_eq!(
                addr_delta(&dp, c),
                expected_addr(p, true, 1),
                "{name}: cold"
            );
            let c = dp.cache_stats().unwrap();
            assert_eq!(dp.test_run(&f, 3).unwrap().action, action, "{name}: warm");
            assert_eq!(
                addr_delta(&dp, c),
                expected_addr(p, false, 3),
                "{name}: warm"
            );

            let after = counts(&ctl, &dp);
            for (id, n) in &after {
                let moved = if *id == rule { 5 } else { 0 };
                assert_eq!(
                    n - before[id],
                    moved,
                    "{name}: packets counted on rule {id}"
                );
            }
        }
    });
}

#[test]
fn a_prefix_change_is_seen_by_the_next_packet_with_the_address_cache_warm() {
    let _g = serial();
    let ns = Netns::new("addrcacheincr").unwrap();
    ns.run(|| {
        pin_to_current_cpu();
        let mut dp = Datapath::load().expect("load");
        dp.register(1, 1, Malformed::Drop).expect("register lo");
        let mut ctl = AclController::new(BTreeMap::from([("lo".to_owned(), 1)]));
        ctl.install(&mut dp, state(BLOCK)).expect("install");
        let host = dns(v6("2001:db8:ffff::7"), IpAddr::V6(SERVER));
        let f = frame(&host);
        let apply = |ctl: &mut AclController, dp: &mut Datapath, change: Change| {
            ctl.apply(dp, &change)
                .unwrap_or_else(|e| panic!("{change:?}: {e}"));
            assert!(
                ctl.last_timing().expect("timed").incremental,
                "{change:?} took the incremental path"
            );
        };
        let block = |del: bool| {
            let (name, prefixes) = ("block".to_owned(), vec!["2001:db8:ffff::7/128".to_owned()]);
            if del {
                Change::SetDel { name, prefixes }
            } else {
                Change::SetAdd { name, prefixes }
            }
        };
        let servers = Change::SetDel {
            name: "servers".into(),
            prefixes: vec!["2001:db8:200::/48".into()],
        };
        // Each step: the verdict before, the change, the verdict and the
        // rule of the next packet.
        let steps = [
            (
                "the source added to the deny set",
                XDP_PASS,
                block(false),
                XDP_DROP,
                1,
            ),
            (
                "the source removed from it again",
                XDP_DROP,
                block(true),
                XDP_PASS,
                2,
            ),
            (
                "the destination removed from the servers",
                XDP_PASS,
                servers,
                XDP_PASS,
                4,
            ),
        ];
        // Warm: the addresses' classes are cached.
        assert_eq!(dp.test_run(&f, 3).unwrap().action, XDP_PASS);
        for (name, was, change, action, rule) in steps {
            let c = dp.cache_stats().unwrap();
            assert_eq!(dp.test_run(&f, 1).unwrap().action, was, "{name}: before");
            assert_eq!(
                addr_delta(&dp, c),
                (2, 0),
                "{name}: the cache is warm before"
            );
            let before = counts(&ctl, &dp);
            apply(&mut ctl, &mut dp, change);
            let c = dp.cache_stats().unwrap();
            assert_eq!(dp.test_run(&f, 1).unwrap().action, action, "{name}");
            assert_eq!(
                addr_delta(&dp, c),
                (0, 2),
                "{name}: the switch invalidated both cached addresses"
            );
            let after = counts(&ctl, &dp);
            assert_eq!(
                after[&rule] - before[&rule],
                1,
                "{name}: counted on rule {rule}"
            );
        }
    });
}

#[test]
fn a_generation_switch_is_seen_by_the_next_packet_with_the_address_cache_warm() {
    let _g = serial();
    let ns = Netns::new("addrcacheswitch").unwrap();
    ns.run(|| {
        pin_to_current_cpu();
        let mut dp = Datapath::load().expect("load");
        dp.register(1, 1, Malformed::Drop).expect("register lo");
        let mut ctl = AclController::new(BTreeMap::from([("lo".to_owned(), 1)]));
        // The two states give their one blocked /48 the same class layout,
        // so a stale class would be the other /48's.
        let one = dns(v6("2001:db8:1::1"), IpAddr::V6(SERVER));
        let two = dns(v6("2001:db8:2::1"), IpAddr::V6(SERVER));
        let (f1, f2) = (frame(&one), frame(&two));
        for (round, (block, want1, want2)) in [
            ("2001:db8:1::/48", XDP_DROP, XDP_PASS),
            ("2001:db8:2::/48", XDP_PASS, XDP_DROP),
            ("2001:db8:1::/48", XDP_DROP, XDP_PASS),
            ("2001:db8:2::/48", XDP_PASS, XDP_DROP),
        ]
        .into_iter()
        .enumerate()
        {
            ctl.install(&mut dp, state(&[block])).expect("install");
            let c = dp.cache_stats().unwrap();
            assert_eq!(
                dp.test_run(&f1, 1).unwrap().action,
                want1,
                "round {round}, 1"
            );
            assert_eq!(
                dp.test_run(&f2, 1).unwrap().action,
                want2,
                "round {round}, 2"
            );
            // The two packets share the destination: after the switch the
            // first misses both addresses, the second only its source.
            assert_eq!(
                addr_delta(&dp, c),
                (1, 3),
                "round {round}: cold after the switch"
            );
            let c = dp.cache_stats().unwrap();
            assert_eq!(
                dp.test_run(&f1, 2).unwrap().action,
                want1,
                "round {round}, 1"
            );
            assert_eq!(
                dp.test_run(&f2, 2).unwrap().action,
                want2,
                "round {round}, 2"
            );
            assert_eq!(addr_delta(&dp, c), (8, 0), "round {round}: warm");
        }
    });
}

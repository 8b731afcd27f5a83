//! Incremental ACL updates on the loaded datapath: at a large state (100,000
//! prefixes, half of each family, in the set a deny rule names), a prefix
//! added to the set through the controller drops the next packet from it,
//! its removal passes the next one again, a rule added and removed does the
//! same, every rule keeps its counters throughout, and rejected changes
//! change nothing (they are made in the controller's state in place and
//! undone: the rules and prefixes they took out are back). Packets go through the real XDP program with
//! `BPF_PROG_TEST_RUN`; the changes go through `AclController::apply`, as
//! the daemon makes them, and are checked to have taken the incremental path.
mod acl_common;

use acl_common::counts;
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use xdpgate::{acl::AclController, datapath::Datapath};
use xdpgate_model::{
    acl::{AclState, AddrMatch, Change, PrefixSet, Rule, Verdict, compile::compile},
    iface::Malformed,
};
use xdpgate_tests::{
    lab::{Netns, serial},
    packet::{Ethernet, Ipv4, Ipv6, Transport, ethertype},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Prefixes per family in the set.
const PER_FAMILY: u32 = 50_000;

/// Rule 1 denies sources in `block`; rule 2 allows the rest of UDP.
fn large_state() -> AclState {
    let mut set = PrefixSet::default();
    for i in 0..PER_FAMILY {
        // 10.0.0.0/24 .. : one /24 each, inside 10.0.0.0/8.
        let a = Ipv4Addr::from(0x0a00_0000 | (i << 8));
        set.v4.insert(format!("{a}/24").parse().unwrap());
        // Spread over 4,096 IPv6 /16s (2000::/16 .. 2fff::/16), one /32 each.
        let a = Ipv6Addr::new(
            0x2000 + (i % 4096) as u16,
            (i / 4096) as u16,
            0,
            0,
            0,
            0,
            0,
            0,
        );
        set.v6.insert(format!("{a}/32").parse().unwrap());
    }
    let mut state = AclState::default();
    state.sets.insert("block".into(), set);
    state.rules.insert(
        1,
        Rule {
            src: Some(AddrMatch::Set("block".into())),
            ..Rule::new(1, 10, Verdict::Deny)
        },
    );
    state.rules.insert(
        2,
        Rule {
            proto: Some(17),
            ..Rule::new(2, 20, Verdict::Allow)
        },
    );
    state
}

fn udp4(src: [u8; 4]) -> Vec<u8> {
    Ethernet::new(ethertype::IPV4)
        .build(&Ipv4::new(src, [192, 0, 2, 200], 17).build(&Transport::udp(5000, 53).bytes()))
}

fn udp6(src: Ipv6Addr) -> Vec<u8> {
    let dst = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xc8);
    Ethernet::new(ethertype::IPV6)
        .build(&Ipv6::new(src.octets(), dst.octets(), 17).build(&Transport::udp(5000, 53).bytes()))
}

fn apply(ctl: &mut AclController, dp: &mut Datapath, change: &Change) {
    ctl.apply(dp, change)
        .unwrap_or_else(|e| panic!("{change:?}: {e}"));
    assert!(
        ctl.last_timing().expect("timed").incremental,
        "{change:?} took the incremental path"
    );
}

#[test]
fn a_prefix_or_rule_change_at_100k_prefixes_is_enforced_by_the_next_packet_and_keeps_counters() {
    let _g = serial();
    let ns = Netns::new("aclincr").unwrap();
    ns.run(|| {
        let mut dp = Datapath::load().expect("load");
        dp.register(1, 1, Malformed::Drop).expect("register lo");
        let mut ctl = AclController::new(BTreeMap::from([("lo".to_owned(), 1)]));
        ctl.install(&mut dp, large_state()).expect("install");

        let blocked = udp4([10, 0, 7, 9]);
        assert_eq!(dp.test_run(&blocked, 1).unwrap().action, XDP_DROP);
        struct Host {
            name: &'static str,
            frame: Vec<u8>,
            prefix: &'static str,
        }
        let hosts = [
            Host {
                name: "IPv4",
                frame: udp4([192, 0, 2, 1]),
                prefix: "192.0.2.1/32",
            },
            Host {
                name: "IPv6",
                frame: udp6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
                prefix: "2001:db8::1/128",
            },
        ];
        for h in &hosts {
            let name = h.name;
            assert_eq!(dp.test_run(&h.frame, 3).unwrap().action, XDP_PASS, "{name}");
            let before = counts(&ctl, &dp);
            let set = |del: bool| {
                let (name, prefixes) = ("block".to_string(), vec![h.prefix.to_string()]);
                if del {
                    Change::SetDel { name, prefixes }
                } else {
                    Change::SetAdd { name, prefixes }
                }
            };
            apply(&mut ctl, &mut dp, &set(false));
            assert_eq!(
                dp.test_run(&h.frame, 1).unwrap().action,
                XDP_DROP,
                "{name}: the next packet after the add is dropped"
            );
            apply(&mut ctl, &mut dp, &set(true));
            assert_eq!(
                dp.test_run(&h.frame, 1).unwrap().action,
                XDP_PASS,
                "{name}: the next packet after the removal passes"
            );
            let after = counts(&ctl, &dp);
            assert_eq!(
                after[&1],
                before[&1] + 1,
                "{name}: the deny rule kept its count"
            );
            assert_eq!(
                after[&2],
                before[&2] + 1,
                "{name}: the allow rule kept its count"
            );

            // A rule in front of both, added and removed.
            let rule = Rule {
                src: Some(AddrMatch::Prefix(h.prefix.parse().unwrap())),
                ..Rule::new(3, 5, Verdict::Deny)
            };
            apply(&mut ctl, &mut dp, &Change::RuleAdd { rules: vec![rule] });
            assert_eq!(dp.test_run(&h.frame, 2).unwrap().action, XDP_DROP, "{name}");
            let with = counts(&ctl, &dp);
            assert_eq!(with[&3], 2, "{name}: the new rule counts from zero");
            apply(&mut ctl, &mut dp, &Change::RuleDel { ids: vec![3] });
            assert_eq!(dp.test_run(&h.frame, 1).unwrap().action, XDP_PASS, "{name}");
            let end = counts(&ctl, &dp);
            assert_eq!(
                (end[&1], end[&2]),
                (after[&1], after[&2] + 1),
                "{name}: rules 1 and 2 kept their counts across the rule change"
            );
        }
        assert_eq!(dp.test_run(&blocked, 1).unwrap().action, XDP_DROP);
    });
}

#[test]
fn a_rejected_change_at_100k_prefixes_changes_nothing() {
    let _g = serial();
    let ns = Netns::new("aclincrbad").unwrap();
    ns.run(|| {
        let mut dp = Datapath::load().expect("load");
        dp.register(1, 1, Malformed::Drop).expect("register lo");
        let mut ctl = AclController::new(BTreeMap::from([("lo".to_owned(), 1)]));
        ctl.install(&mut dp, large_state()).expect("install");
        let host = udp4([192, 0, 2, 1]);
        let blocked = udp4([10, 0, 7, 9]);
        assert_eq!(dp.test_run(&host, 1).unwrap().action, XDP_PASS);
        let cases = [
            (
                "a bad prefix among good ones",
                Change::SetAdd {
                    name: "block".into(),
                    prefixes: vec!["192.0.2.1/32".into(), "192.0.2.0/33".into()],
                },
            ),
            (
                "removing a prefix the set does not hold",
                Change::SetDel {
                    name: "block".into(),
                    prefixes: vec!["10.0.7.0/24".into(), "192.0.2.0/24".into()],
                },
            ),
            (
                "a rule naming a set that does not exist",
                Change::RuleAdd {
                    rules: vec![Rule {
                        src: Some(AddrMatch::Set("nope".into())),
                        ..Rule::new(4, 1, Verdict::Deny)
                    }],
                },
            ),
            (
                "a good rule and one with an id in use (the good one is undone)",
                Change::RuleAdd {
                    rules: vec![
                        Rule {
                            src: Some(AddrMatch::Prefix("192.0.2.1/32".parse().unwrap())),
                            ..Rule::new(5, 1, Verdict::Deny)
                        },
                        Rule::new(1, 1, Verdict::Allow),
                    ],
                },
            ),
            (
                "removing a rule and one that does not exist (the removal is undone)",
                Change::RuleDel { ids: vec![1, 99] },
            ),
            (
                "removing a set a rule names (its prefixes stay)",
                Change::SetDel {
                    name: "block".into(),
                    prefixes: Vec::new(),
                },
            ),
        ];
        for (name, change) in cases {
            let cfg = dp.acl_config().unwrap();
            let state = ctl.state().clone();
            let before = counts(&ctl, &dp);
            let e = ctl.apply(&mut dp, &change).unwrap_err();
            assert!(e.to_string().starts_with("rejected"), "{name}: {e}");
            assert_eq!(dp.acl_config().unwrap(), cfg, "{name}: no switch");
            assert_eq!(ctl.state(), &state, "{name}: the state");
            assert_eq!(counts(&ctl, &dp), before, "{name}: the counters");
            assert_eq!(dp.test_run(&host, 1).unwrap().action, XDP_PASS, "{name}");
            assert_eq!(dp.test_run(&blocked, 1).unwrap().action, XDP_DROP, "{name}");
        }
        // And the next valid change still goes the incremental way.
        apply(
            &mut ctl,
            &mut dp,
            &Change::SetAdd {
                name: "block".into(),
                prefixes: vec!["192.0.2.1/32".into()],
            },
        );
        assert_eq!(dp.test_run(&host, 1).unwrap().action, XDP_DROP);
    });
}

/// IPv6 prefixes of four more lengths added one at a time under 2001::/16
/// (which holds /32s of the set) split its region into trie blocks; removed
/// again, the blocks merge back. After every change, through the controller's
/// incremental path, packets from inside each prefix held are dropped and
/// packets beside them pass.
#[test]
fn an_ipv6_region_split_into_trie_blocks_and_merged_back_decides_every_packet() {
    let _g = serial();
    let ns = Netns::new("acltrie").unwrap();
    ns.run(|| {
        let mut dp = Datapath::load().expect("load");
        dp.register(1, 1, Malformed::Drop).expect("register lo");
        let slots = BTreeMap::from([("lo".to_owned(), 1)]);
        let mut ctl = AclController::new(slots.clone());
        ctl.install(&mut dp, large_state()).expect("install");
        // (prefix, a source inside it, a source beside it)
        let prefixes: [(&str, Ipv6Addr, Ipv6Addr); 4] = [
            (
                "2001:db8:100::/40",
                Ipv6Addr::new(0x2001, 0xdb8, 0x1ff, 0, 0, 0, 0, 1),
                Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 1),
            ),
            (
                "2001:db8:8000::/33",
                Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1),
                Ipv6Addr::new(0x2001, 0xdb8, 0x7fff, 0, 0, 0, 0, 1),
            ),
            (
                "2001:db8:3:4::/64",
                Ipv6Addr::new(0x2001, 0xdb8, 3, 4, 0, 0, 0, 0x99),
                Ipv6Addr::new(0x2001, 0xdb8, 3, 5, 0, 0, 0, 0x99),
            ),
            (
                "2001:db8:1::/48",
                Ipv6Addr::new(0x2001, 0xdb8, 1, 0xffff, 0, 0, 0, 1),
                Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1),
            ),
        ];
        let in_set = udp6(Ipv6Addr::new(0x2001, 5, 0, 0, 0, 0, 0, 1));
        let change = |p: &str, add: bool| {
            let (name, prefixes) = ("block".to_string(), vec![p.to_string()]);
            if add {
                Change::SetAdd { name, prefixes }
            } else {
                Change::SetDel { name, prefixes }
            }
        };
        let check = |dp: &mut Datapath, held: usize, step: &str| {
            for (i, (p, inside, beside)) in prefixes.iter().enumerate() {
                let want = if i < held { XDP_DROP } else { XDP_PASS };
                let got = dp.test_run(&udp6(*inside), 1).unwrap().action;
                assert_eq!(got, want, "{step}: {inside} in {p}");
                let got = dp.test_run(&udp6(*beside), 1).unwrap().action;
                assert_eq!(got, XDP_PASS, "{step}: {beside} beside {p}");
            }
            let got = dp.test_run(&in_set, 1).unwrap().action;
            assert_eq!(got, XDP_DROP, "{step}: a /32 of the set");
        };
        let blocks = |ctl: &AclController| {
            let image = compile(ctl.state(), &slots).expect("compile");
            image.v6_blocks.len()
        };
        assert_eq!(blocks(&ctl), 0, "one length under 2001::/16: no block");
        for (held, (p, ..)) in prefixes.iter().enumerate() {
            apply(&mut ctl, &mut dp, &change(p, true));
            check(&mut dp, held + 1, &format!("after adding {p}"));
        }
        assert!(blocks(&ctl) > 0, "five lengths under 2001::/16: blocks");
        for (i, (p, ..)) in prefixes.iter().enumerate().rev() {
            apply(&mut ctl, &mut dp, &change(p, false));
            check(&mut dp, i, &format!("after removing {p}"));
        }
        assert_eq!(blocks(&ctl), 0, "merged back");
    });
}

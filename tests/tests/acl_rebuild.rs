//! A rule change at 1,000 rules, on the loaded datapath: the
//! change is enforced when `AclController::apply` returns, by a generation
//! that walks the rule bitmaps (exact; the decision-cache statistics count
//! its walks), while the phased tables are rebuilt on a thread; switching to
//! them (`AclController::wait_rebuilt`, the daemon's background install)
//! keeps every verdict and every rule counter, and the walks stop. A change
//! during a rebuild stops it and the rebuild of its own tables lands; a
//! rejected change changes nothing. Packets go through the real XDP program
//! with `BPF_PROG_TEST_RUN`, with the decision cache off so that every packet
//! is resolved by the generation's tables.
mod acl_common;

use acl_common::counts;
use std::collections::BTreeMap;

use xdpgate::{acl::AclController, datapath::Datapath};
use xdpgate_model::{
    acl::{AclState, AddrMatch, Change, PortRange, Rule, Verdict},
    iface::Malformed,
};
use xdpgate_tests::{
    lab::{Netns, serial},
    packet::{Ethernet, Ipv4, Transport, ethertype},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Service rules (one destination /32 and port each).
const SERVICES: u32 = 1_000;

/// Firewall-like: a source block (rule 1), `SERVICES` service rules
/// alternately allowing and denying TCP to 10.200.x.y, port 1000 + i
/// (ids 100 + i), and a final TCP deny (rule 99,999). Frames only go through
/// `BPF_PROG_TEST_RUN`; the service addresses are in 10.200.0.0/16.
fn firewall() -> AclState {
    let mut state = AclState::default();
    let mut add = |r: Rule| {
        state.rules.insert(r.id, r);
    };
    add(Rule {
        src: Some(AddrMatch::Prefix("203.0.113.0/24".parse().unwrap())),
        ..Rule::new(1, 50, Verdict::Deny)
    });
    for i in 0..SERVICES {
        let verdict = if i % 2 == 0 {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        let port = 1000 + i as u16;
        add(Rule {
            proto: Some(6),
            dst: Some(AddrMatch::Prefix(service(i).parse().unwrap())),
            dport: Some(PortRange { lo: port, hi: port }),
            ..Rule::new(100 + i, 100 + i, verdict)
        });
    }
    add(Rule {
        proto: Some(6),
        ..Rule::new(99_999, 1_000_000, Verdict::Deny)
    });
    state
}

/// Service `i`'s address, as a /32.
fn service(i: u32) -> String {
    format!("10.200.{}.{}/32", i / 250, i % 250 + 1)
}

fn tcp(src: [u8; 4], service_no: u32, port: u16) -> Vec<u8> {
    let dst: std::net::Ipv4Addr = service(service_no).trim_end_matches("/32").parse().unwrap();
    Ethernet::new(ethertype::IPV4)
        .build(&Ipv4::new(src, dst.octets(), 6).build(&Transport::tcp(40000, port).bytes()))
}

/// A frame and the action the rules give it.
struct Probe {
    name: &'static str,
    frame: Vec<u8>,
    action: u32,
}

/// The probes, with the actions of `firewall()` (plus `host_denied`: a
/// rule in front denies 192.0.2.1).
fn probes(host_denied: bool) -> Vec<Probe> {
    let host = [192, 0, 2, 1];
    let allowed = if host_denied { XDP_DROP } else { XDP_PASS };
    vec![
        Probe {
            name: "an allowed service (rule 100)",
            frame: tcp(host, 0, 1000),
            action: allowed,
        },
        Probe {
            name: "a denied service (rule 101)",
            frame: tcp(host, 1, 1001),
            action: XDP_DROP,
        },
        Probe {
            name: "an allowed service deep in the list (rule 998)",
            frame: tcp(host, 898, 1898),
            action: allowed,
        },
        Probe {
            name: "a service address on another service's port (the final deny)",
            frame: tcp(host, 0, 1001),
            action: XDP_DROP,
        },
        Probe {
            name: "the blocked source to an allowed service (rule 1)",
            frame: tcp([203, 0, 113, 9], 0, 1000),
            action: XDP_DROP,
        },
        Probe {
            name: "another source to an allowed service",
            frame: tcp([192, 0, 2, 2], 2, 1002),
            action: XDP_PASS,
        },
    ]
}

/// Sends every probe once and checks its action; returns the walks the
/// datapath counted meanwhile.
fn check(dp: &mut Datapath, probes: &[Probe], when: &str) -> u64 {
    let before = dp.cache_stats().expect("cache stats").walks;
    for p in probes {
        let got = dp.test_run(&p.frame, 1).expect("test run").action;
        assert_eq!(got, p.action, "{when}: {}", p.name);
    }
    dp.cache_stats().expect("cache stats").walks - before
}

fn deny_host(id: u32) -> Change {
    Change::RuleAdd {
        rules: vec![Rule {
            src: Some(AddrMatch::Prefix("192.0.2.1/32".parse().unwrap())),
            ..Rule::new(id, 10, Verdict::Deny)
        }],
    }
}

/// A datapath on `lo` of a new namespace with `firewall()` installed and
/// the decision cache off.
fn loaded() -> (Datapath, AclController) {
    let mut dp = Datapath::load().expect("load");
    dp.register(1, 1, Malformed::Drop).expect("register lo");
    dp.set_decision_cache(false).expect("cache off");
    let mut ctl = AclController::new(BTreeMap::from([("lo".to_owned(), 1)]));
    ctl.install(&mut dp, firewall()).expect("install");
    (dp, ctl)
}

#[test]
fn a_rule_change_at_1000_rules_is_enforced_by_the_walk_then_by_rebuilt_phased_tables() {
    let _g = serial();
    let ns = Netns::new("aclrebuild").unwrap();
    ns.run(|| {
        let (mut dp, mut ctl) = loaded();
        assert_eq!(check(&mut dp, &probes(false), "installed"), 0, "phased");
        let before = counts(&ctl, &dp);

        ctl.apply(&mut dp, &deny_host(5)).expect("apply");
        assert!(ctl.last_timing().expect("timed").incremental);
        assert!(ctl.rebuild_pending(), "the walk until the rebuild");
        let want = probes(true);
        let walks = check(&mut dp, &want, "when the call returned");
        assert_eq!(walks, want.len() as u64, "every packet walked the bitmaps");

        assert!(ctl.wait_rebuilt(&mut dp).expect("rebuilt"), "switched");
        assert!(!ctl.rebuild_pending());
        assert_eq!(check(&mut dp, &want, "rebuilt"), 0, "phased again");
        // Two rounds since `before`: rule 5 took the host's four probes in
        // each; rules 101 and 99,999 took none but kept their counts.
        let after = counts(&ctl, &dp);
        assert_eq!(after[&5], 8, "the new rule counted both rounds");
        assert_eq!(after[&1], before[&1] + 2, "rule 1 kept its count");
        assert_eq!(after[&102], before[&102] + 2, "rule 102 kept its count");
        for id in [101, 99_999] {
            assert!(before[&id] > 0, "rule {id} counted the first round");
            assert_eq!(after[&id], before[&id], "rule {id} kept its count");
        }

        ctl.apply(&mut dp, &Change::RuleDel { ids: vec![5] })
            .expect("del");
        check(&mut dp, &probes(false), "removed, walking");
        assert!(ctl.wait_rebuilt(&mut dp).expect("rebuilt"));
        assert_eq!(check(&mut dp, &probes(false), "removed, rebuilt"), 0);
        assert_eq!(counts(&ctl, &dp)[&100], before[&100] + 2, "rule 100");
    });
}

#[test]
fn a_change_during_a_rebuild_at_1000_rules_is_enforced_and_its_own_rebuild_lands() {
    let _g = serial();
    let ns = Netns::new("aclrebuild2").unwrap();
    ns.run(|| {
        let (mut dp, mut ctl) = loaded();
        ctl.apply(&mut dp, &deny_host(5)).expect("apply");
        let first = ctl.rebuild_wait().expect("a rebuild runs");
        // At once, before that rebuild is done: the rule goes again.
        ctl.apply(&mut dp, &Change::RuleDel { ids: vec![5] })
            .expect("del");
        first.wait();
        assert!(ctl.rebuild_pending(), "the second change's rebuild runs");
        let want = probes(false);
        assert_eq!(check(&mut dp, &want, "walking"), want.len() as u64);
        assert!(ctl.wait_rebuilt(&mut dp).expect("rebuilt"));
        assert_eq!(check(&mut dp, &want, "rebuilt"), 0);
        assert!(!ctl.state().rules.contains_key(&5));
    });
}

#[test]
fn a_rejected_change_during_a_rebuild_at_1000_rules_changes_nothing() {
    let _g = serial();
    let ns = Netns::new("aclrebuild3").unwrap();
    ns.run(|| {
        let (mut dp, mut ctl) = loaded();
        ctl.apply(&mut dp, &deny_host(5)).expect("apply");
        let cfg = dp.acl_config().unwrap();
        let state = ctl.state().clone();
        let cases = [
            ("an id in use", deny_host(100)),
            (
                "a rule that does not exist",
                Change::RuleDel { ids: vec![7] },
            ),
        ];
        for (name, change) in cases {
            let e = ctl.apply(&mut dp, &change).unwrap_err();
            assert!(e.to_string().starts_with("rejected"), "{name}: {e}");
            assert_eq!(dp.acl_config().unwrap(), cfg, "{name}: no switch");
            assert_eq!(ctl.state(), &state, "{name}: the state");
            check(&mut dp, &probes(true), name);
        }
        assert!(ctl.wait_rebuilt(&mut dp).expect("the rebuild still lands"));
        assert_eq!(check(&mut dp, &probes(true), "rebuilt"), 0);
    });
}

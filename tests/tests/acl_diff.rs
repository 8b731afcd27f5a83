//! Differential test of the ACL datapath: random rule sets are installed through
//! the real controller (compile, write the idle generation, switch), random
//! packets are run through the loaded XDP program with BPF_PROG_TEST_RUN, and
//! every verdict and rule counter is compared with the reference classifier.
//!
//! `XDPGATE_DIFF_PACKETS` sets the number of packets (default 100,000; set it
//! to millions for a long run). Any mismatch prints the seed, the packet, its
//! frame and the rule set.
mod common;

use common::frame_of;
use xdpgate::{acl::AclController, datapath::Datapath};
use xdpgate_model::{
    acl::{
        AclState, Verdict,
        random::{Rng, rand_packet, rand_state},
        reference::classify,
    },
    iface::Malformed,
};
use xdpgate_tests::{
    lab::{Netns, serial},
    packet::{Ethernet, Ipv4, Ipv6, Transport, ethertype, hex},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Pins the calling thread to the CPU it runs on. The decision cache is per
/// CPU: a test that counts hits across separate test runs must keep them on
/// one CPU, or a run on another CPU misses (correctly) and the count is off.
fn pin_to_current_cpu() {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    assert!(cpu >= 0, "sched_getcpu failed");
    xdpgate_tests::bpf::pin_to_cpu(cpu as usize).expect("sched_setaffinity");
}

fn packets_wanted() -> usize {
    std::env::var("XDPGATE_DIFF_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

#[test]
fn datapath_agrees_with_reference_classifier() {
    let _g = serial();
    let ns = Netns::new("acldiff").unwrap();
    let total = packets_wanted();
    let checked = ns.run(move || {
        pin_to_current_cpu();
        let mut dp = Datapath::load().expect("load");
        // BPF_PROG_TEST_RUN delivers on the namespace's lo (ifindex 1): it plays
        // "eth0" (slot 1) of the generated rule sets.
        dp.register(1, 1, Malformed::Drop).expect("register lo");
        let slots = xdpgate_model::acl::random::slots();
        let mut ctl = AclController::new(slots);
        let mut checked = 0usize;
        let mut seed = 0u64;
        let cache_before = dp.cache_stats().unwrap();
        while checked < total {
            seed += 1;
            let mut rng = Rng::new(seed);
            let rules = 1 + rng.below(60) as usize;
            let state = rand_state(&mut rng, 4, 16, rules);
            ctl.install(&mut dp, state.clone()).expect("install");
            let before = ctl.rule_counters(&dp).unwrap();
            let mut expected_hits: std::collections::BTreeMap<u32, (u64, u64)> = Default::default();
            for _ in 0..500 {
                let pkt = rand_packet(&mut rng, &state);
                let frame = frame_of(&pkt);
                let want = classify(&state, "eth0", &pkt);
                let want_action = match want.verdict {
                    Verdict::Allow => XDP_PASS,
                    Verdict::Deny => XDP_DROP,
                };
                // Twice: the first run decides through the cache or the rule
                // walk, the second from the cache; both are checked. (Two runs,
                // not one run with repeat 2: a repeated XDP test run swaps the
                // XDP dispatcher, which waits for an RCU grace period.)
                for pass in 0..2 {
                    let got = dp.test_run(&frame, 1).expect("test run");
                    assert_eq!(
                        got.action,
                        want_action,
                        "seed {seed}, run {pass}: packet {pkt:?}\nframe {}\nreference {want:?}\nrules {:#?}\nsets {:?}\npolicies {:?}",
                        hex(&frame),
                        state.ordered_rules(),
                        state.sets,
                        state.policies
                    );
                }
                if let Some(id) = want.rule {
                    let e = expected_hits.entry(id).or_default();
                    e.0 += 2;
                    e.1 += 2 * frame.len() as u64;
                }
                checked += 1;
            }
            // Each rule's counters moved by exactly the packets the reference
            // attributed to it.
            let after = ctl.rule_counters(&dp).unwrap();
            for (b, a) in before.iter().zip(&after) {
                assert_eq!(b.rule.id, a.rule.id);
                let want = expected_hits.get(&a.rule.id).copied().unwrap_or_default();
                assert_eq!(
                    (a.packets - b.packets, a.bytes - b.bytes),
                    want,
                    "seed {seed}: counters of rule {}",
                    a.rule.id
                );
            }
        }
        // Every repetition was decided once, and every second one from the cache.
        let cache = dp.cache_stats().unwrap();
        let (hits, misses) = (
            cache.hits - cache_before.hits,
            cache.misses - cache_before.misses,
        );
        assert_eq!(hits + misses, 2 * checked as u64, "{cache:?}");
        assert!(hits >= checked as u64 && misses > 0, "{cache:?}");
        checked
    });
    assert!(checked >= total);
}

#[test]
fn decision_cache_is_exact_and_invalidated_by_every_switch() {
    let _g = serial();
    let ns = Netns::new("aclcache").unwrap();
    ns.run(|| {
        pin_to_current_cpu();
        let mut dp = Datapath::load().expect("load");
        dp.register(1, 1, Malformed::Drop).expect("register lo");
        let mut ctl = AclController::new(xdpgate_model::acl::random::slots());
        let rules = |action: &str| -> AclState {
            let file: xdpgate_model::acl::RuleFile = toml::from_str(&format!(
                r#"
                [[rule]]
                id = 1
                priority = 10
                proto = "udp"
                dport = "53"
                action = "{action}"
                "#
            ))
            .unwrap();
            AclState::from_file(&file).unwrap()
        };
        let dns = Ethernet::new(ethertype::IPV6).build(
            &Ipv6::new(
                "2001:db8::1"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
                "2001:db8::2"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
                17,
            )
            .build(&Transport::udp(5000, 53).bytes()),
        );
        let delta = |dp: &Datapath, before: xdpgate::datapath::stats::CacheStats| {
            let now = dp.cache_stats().unwrap();
            (now.hits - before.hits, now.misses - before.misses)
        };

        ctl.install(&mut dp, rules("deny")).unwrap();
        let c = dp.cache_stats().unwrap();
        assert_eq!(dp.test_run(&dns, 5).unwrap().action, XDP_DROP);
        assert_eq!(delta(&dp, c), (4, 1), "one walk, then four cache hits");

        // Every switch (even to an identical rule set, which reuses the other
        // generation's tables) invalidates what was cached before it.
        for (action, want) in [("allow", XDP_PASS), ("deny", XDP_DROP), ("deny", XDP_DROP)] {
            ctl.install(&mut dp, rules(action)).unwrap();
            let c = dp.cache_stats().unwrap();
            assert_eq!(dp.test_run(&dns, 3).unwrap().action, want, "{action}");
            assert_eq!(
                delta(&dp, c),
                (2, 1),
                "{action}: first packet after a switch walks"
            );
        }

        // With the cache off every packet is resolved by the phased tables,
        // with the same verdict.
        dp.set_decision_cache(false).unwrap();
        let c = dp.cache_stats().unwrap();
        assert_eq!(dp.test_run(&dns, 3).unwrap().action, XDP_DROP);
        assert_eq!(delta(&dp, c), (0, 3));
        dp.set_decision_cache(true).unwrap();
        let c = dp.cache_stats().unwrap();
        assert_eq!(dp.test_run(&dns, 3).unwrap().action, XDP_DROP);
        assert_eq!(
            delta(&dp, c),
            (3, 0),
            "the entry from before the bypass is still valid"
        );
        let counters = ctl.rule_counters(&dp).unwrap();
        // A changed definition starts at zero: the last "deny" kept its count.
        assert_eq!(counters[0].packets, 3 + 3 + 3 + 3);
    });
}

#[test]
fn unchanged_rules_keep_their_counters_across_swaps() {
    let _g = serial();
    let ns = Netns::new("aclswap").unwrap();
    ns.run(|| {
        let mut dp = Datapath::load().expect("load");
        dp.register(1, 1, Malformed::Drop).expect("register lo");
        let mut ctl = AclController::new(xdpgate_model::acl::random::slots());
        let file: xdpgate_model::acl::RuleFile = toml::from_str(
            r#"
            [[rule]]
            id = 1
            priority = 10
            proto = "udp"
            dport = "53"
            action = "allow"

            [[rule]]
            id = 2
            priority = 20
            proto = "udp"
            action = "deny"
            "#,
        )
        .unwrap();
        ctl.install(&mut dp, AclState::from_file(&file).unwrap())
            .unwrap();
        let dns = Ethernet::new(ethertype::IPV4).build(
            &Ipv4::new([192, 0, 2, 1], [192, 0, 2, 2], 17).build(&Transport::udp(5000, 53).bytes()),
        );
        let other = Ethernet::new(ethertype::IPV4).build(
            &Ipv4::new([192, 0, 2, 1], [192, 0, 2, 2], 17).build(&Transport::udp(5000, 54).bytes()),
        );
        assert_eq!(dp.test_run(&dns, 10).unwrap().action, XDP_PASS);
        assert_eq!(dp.test_run(&other, 3).unwrap().action, XDP_DROP);
        // Add a rule in front (changes every rule's index) and change rule 2.
        let change = xdpgate_model::acl::Change::RuleAdd {
            rules: vec![xdpgate_model::acl::Rule {
                src: Some("198.51.100.0/24".parse().unwrap()),
                ..xdpgate_model::acl::Rule::new(0, 1, Verdict::Deny)
            }],
        };
        ctl.apply(&mut dp, &change).unwrap();
        let counters = ctl.rule_counters(&dp).unwrap();
        let of = |id: u32| counters.iter().find(|c| c.rule.id == id).unwrap().packets;
        assert_eq!((of(0), of(1), of(2)), (0, 10, 3));
        // Replace rule 2 by a different definition: its counters start at zero.
        ctl.apply(
            &mut dp,
            &xdpgate_model::acl::Change::RuleDel { ids: vec![2] },
        )
        .unwrap();
        let mut r2 = file.rules[1].clone();
        r2.action = Verdict::Allow;
        ctl.apply(
            &mut dp,
            &xdpgate_model::acl::Change::RuleAdd { rules: vec![r2] },
        )
        .unwrap();
        assert_eq!(dp.test_run(&other, 1).unwrap().action, XDP_PASS);
        let counters = ctl.rule_counters(&dp).unwrap();
        let of = |id: u32| counters.iter().find(|c| c.rule.id == id).unwrap().packets;
        assert_eq!((of(1), of(2)), (10, 1));
        // An invalid change is rejected and changes nothing.
        let before = dp.acl_config().unwrap();
        let bad = xdpgate_model::acl::Change::SetAdd {
            name: "x".into(),
            prefixes: vec!["10.0.0.1/33".into()],
        };
        assert!(ctl.apply(&mut dp, &bad).is_err());
        assert_eq!(dp.acl_config().unwrap(), before);
        assert_eq!(dp.test_run(&dns, 1).unwrap().action, XDP_PASS);
    });
}

//! The XDP program loads and passes the verifier on the running kernel, and runs
//! under every datapath configuration the daemon can set: malformed frames
//! dropped or passed, the ACL empty or installed, the decision cache on or off,
//! datapath events off or on.
//!
//! Verification does not depend on map contents, so the program is loaded once;
//! the configurations are then switched on the loaded datapath and checked with
//! `BPF_PROG_TEST_RUN`. This is the first check `cargo xtask vmtest` runs on
//! every other kernel.
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

/// Malformed frames of both families (IPv4 header length below 5 words,
/// IPv6 version field 4).
fn malformed_frames() -> Vec<Vec<u8>> {
    let udp = Transport::udp(1000, 53);
    vec![
        Ethernet::new(ethertype::IPV4).build(
            &Ipv4::new([192, 0, 2, 1], [198, 51, 100, 2], 17)
                .ihl(4)
                .build(&udp.bytes()),
        ),
        Ethernet::new(ethertype::IPV6).build(
            &Ipv6::new([0x20; 16], [0x21; 16], 17)
                .version(4)
                .build(&udp.bytes()),
        ),
    ]
}

#[test]
fn loads_and_runs_under_every_configuration() {
    let _g = serial();
    let ns = Netns::new("verify").unwrap();
    ns.run(|| {
        let mut dp = Datapath::load().unwrap_or_else(|e| panic!("load and verify: {e}"));
        match dp.verified_instructions() {
            Some(n) => eprintln!("verifier processed {n} instructions"),
            None => eprintln!("the kernel does not report the verified instruction count"),
        }
        // The DDoS program (limits and SYN cookies) is loaded beside the main
        // one; a kernel that refuses it leaves the daemon running without
        // them, which the daemon reports but a load does not fail on.
        assert_eq!(dp.ddos_unavailable(), None, "the DDoS program verifies");
        if let Some(n) = dp.ddos_verified_instructions() {
            eprintln!("verifier processed {n} instructions of the DDoS program");
        }
        // BPF_PROG_TEST_RUN delivers on the namespace's lo (ifindex 1), which
        // plays "eth0" (slot 1) of the generated rule sets.
        let mut ctl = AclController::new(xdpgate_model::acl::random::slots());
        let mut rng = Rng::new(7);
        let installed = rand_state(&mut rng, 4, 16, 40);
        for (acl_name, state) in [("empty", AclState::default()), ("installed", installed)] {
            ctl.install(&mut dp, state.clone())
                .unwrap_or_else(|e| panic!("install the {acl_name} ACL: {e}"));
            for malformed in [Malformed::Drop, Malformed::Pass] {
                dp.register(1, 1, malformed).expect("register lo");
                for (cache, events) in [(true, false), (false, false), (true, true)] {
                    dp.set_decision_cache(cache).expect("decision cache");
                    // Events on with every drop sampled: the record path runs
                    // (no reader: the ring buffer fills and records are lost).
                    dp.set_events(events, 1).expect("datapath events");
                    let what = format!(
                        "ACL {acl_name}, malformed {malformed:?}, cache {cache}, events {events}"
                    );
                    let want_bad = match malformed {
                        Malformed::Drop => XDP_DROP,
                        Malformed::Pass => XDP_PASS,
                    };
                    for frame in malformed_frames() {
                        let got = dp.test_run(&frame, 1).expect("test run");
                        assert_eq!(got.action, want_bad, "{what}: malformed {}", hex(&frame));
                    }
                    for _ in 0..100 {
                        let pkt = rand_packet(&mut rng, &state);
                        let frame = frame_of(&pkt);
                        let want = match classify(&state, "eth0", &pkt).verdict {
                            Verdict::Allow => XDP_PASS,
                            Verdict::Deny => XDP_DROP,
                        };
                        let got = dp.test_run(&frame, 1).expect("test run");
                        assert_eq!(got.action, want, "{what}: {pkt:?}\nframe {}", hex(&frame));
                    }
                    eprintln!("{what}: ok");
                }
            }
        }
    });
}

//! The XDP program loads and passes the verifier on the running kernel, and runs
//! under every datapath configuration the daemon can set: malformed frames
//! dropped or passed, the ACL empty or installed, the decision cache on or off.
//!
//! Verification does not depend on map contents, so the program is loaded once;
//! the configurations are then switched on the loaded datapath and checked with
//! `BPF_PROG_TEST_RUN`. This is the first check `cargo xtask vmtest` runs on
//! every other kernel.
use std::net::IpAddr;

use xdpgate::{
    acl::{
        AclState, Verdict,
        random::{Rng, rand_packet, rand_state},
        reference::{PacketInfo, classify},
    },
    control::AclController,
    datapath::{Datapath, Malformed},
};
use xdpgate_tests::{
    lab::{Netns, serial},
    packet::{Ethernet, Ext, Ipv4, Ipv6, Transport, ethertype, hex},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// The frame a parser would turn into `pkt` (as in `acl_diff.rs`).
fn frame_of(pkt: &PacketInfo) -> Vec<u8> {
    let l4 = match (pkt.ports, pkt.icmp) {
        (Some((s, d)), _) => match pkt.proto {
            6 => Transport::tcp(s, d),
            17 => Transport::udp(s, d),
            _ => Transport::sctp(s, d),
        },
        (None, Some((t, c))) if pkt.src.is_ipv4() => Transport::icmp(t, c),
        (None, Some((t, c))) => Transport::icmpv6(t, c),
        (None, None) => Transport::raw(pkt.proto, &[0xa5; 24]),
    };
    let payload = l4.bytes();
    match (pkt.src, pkt.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = Ipv4::new(s.octets(), d.octets(), pkt.proto);
            if pkt.later_fragment {
                ip = ip.fragment(185, false);
            }
            Ethernet::new(ethertype::IPV4).build(&ip.build(&payload))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut ip = Ipv6::new(s.octets(), d.octets(), pkt.proto);
            if pkt.later_fragment {
                ip = ip.ext(Ext::fragment(185, false));
            }
            Ethernet::new(ethertype::IPV6).build(&ip.build(&payload))
        }
        _ => unreachable!("mixed families"),
    }
}

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
        // BPF_PROG_TEST_RUN delivers on the namespace's lo (ifindex 1), which
        // plays "eth0" (slot 1) of the generated rule sets.
        let mut ctl = AclController::new(xdpgate::acl::random::slots());
        let mut rng = Rng::new(7);
        let installed = rand_state(&mut rng, 4, 16, 40);
        for (acl_name, state) in [("empty", AclState::default()), ("installed", installed)] {
            ctl.install(&mut dp, state.clone())
                .unwrap_or_else(|e| panic!("install the {acl_name} ACL: {e}"));
            for malformed in [Malformed::Drop, Malformed::Pass] {
                dp.register(1, 1, malformed).expect("register lo");
                for cache in [true, false] {
                    dp.set_decision_cache(cache).expect("decision cache");
                    let what = format!("ACL {acl_name}, malformed {malformed:?}, cache {cache}");
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

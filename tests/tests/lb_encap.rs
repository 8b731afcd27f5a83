//! `BPF_PROG_TEST_RUN` fixtures of the steering program: encapsulation of
//! every family pair (IPIP, IPv4 in IPv6, IP6IP6, IPv6 in IPv4) for TCP, UDP,
//! SCTP and all-port services, with exact output bytes, verdicts and counters.
//!
//! The rig (a namespace with a veth pair, the backends' neighbours and
//! routes; the datapath with lo as slot 1; expected frames written out field
//! by field) is in `lb_common/`.
mod lb_common;

use std::collections::BTreeMap;

use lb_common::{
    LO, MAC3, XDP_REDIRECT, action_packets, backend_counts, encapsulated, frame, ip, l4_of, load,
    mac_of, net, packet, reasons, run, same, service_counts, sid, spec,
};
use xdpgate::lb::LbController;
use xdpgate_common::IFACE_LB;
use xdpgate_model::lb::{Forward, Proto, packet_hash};
use xdpgate_tests::{
    lab::serial,
    packet::{Ethernet, Transport, checksum, ethertype, pad},
};

/// Encapsulation of every family pair, TCP, UDP, SCTP and all-port
/// services, an exact port before an all-port service, Ethernet padding.
#[test]
fn encapsulation_of_every_family_pair() {
    let _g = serial();
    let n = net("lbencap");
    n.ns.run(|| {
        let mut dp = load();
        let mut ctl = LbController::new(&dp, vec![LO]);
        let specs = [
            spec("192.0.2.10:80/tcp", Forward::Encap, &[("10.200.9.2", 1)]),
            spec("192.0.2.11:80/tcp", Forward::Encap, &[("fd00:200:9::2", 1)]),
            spec(
                "[2001:db8::10]:80/tcp",
                Forward::Encap,
                &[("fd00:200:9::2", 1)],
            ),
            spec(
                "[2001:db8::11]:80/tcp",
                Forward::Encap,
                &[("10.200.9.2", 1)],
            ),
            spec("192.0.2.10:53/udp", Forward::Encap, &[("10.200.9.3", 1)]),
            spec(
                "[2001:db8::10]:53/udp",
                Forward::Encap,
                &[("fd00:200:9::3", 1)],
            ),
            spec("192.0.2.12/tcp", Forward::Encap, &[("fd00:200:9::3", 1)]),
            spec("192.0.2.12:443/tcp", Forward::Encap, &[("10.200.9.3", 1)]),
            spec("[2001:db8::12]/sctp", Forward::Encap, &[("10.200.9.2", 1)]),
        ];
        ctl.apply(&mut dp, &specs).expect("apply");
        let flags = dp.iface_config(LO).unwrap().expect("lo registered").flags;
        assert_ne!(flags & IFACE_LB, 0, "the controller sets IFACE_LB on lo");

        // (service, client, destination port, protocol, backend)
        let cases: &[(&str, &str, u16, Proto, &str)] = &[
            (
                "192.0.2.10:80/tcp",
                "198.51.100.7",
                80,
                Proto::Tcp,
                "10.200.9.2",
            ),
            (
                "192.0.2.11:80/tcp",
                "198.51.100.7",
                80,
                Proto::Tcp,
                "fd00:200:9::2",
            ),
            (
                "[2001:db8::10]:80/tcp",
                "2001:db8:1::7",
                80,
                Proto::Tcp,
                "fd00:200:9::2",
            ),
            (
                "[2001:db8::11]:80/tcp",
                "2001:db8:1::7",
                80,
                Proto::Tcp,
                "10.200.9.2",
            ),
            (
                "192.0.2.10:53/udp",
                "203.0.113.9",
                53,
                Proto::Udp,
                "10.200.9.3",
            ),
            (
                "[2001:db8::10]:53/udp",
                "2001:db8:1::9",
                53,
                Proto::Udp,
                "fd00:200:9::3",
            ),
            (
                "192.0.2.12/tcp",
                "198.51.100.8",
                8080,
                Proto::Tcp,
                "fd00:200:9::3",
            ),
            (
                "192.0.2.12/tcp",
                "198.51.100.8",
                1,
                Proto::Tcp,
                "fd00:200:9::3",
            ),
            (
                "192.0.2.12:443/tcp",
                "198.51.100.8",
                443,
                Proto::Tcp,
                "10.200.9.3",
            ),
            (
                "[2001:db8::12]/sctp",
                "2001:db8:1::8",
                9999,
                Proto::Sctp,
                "10.200.9.2",
            ),
        ];
        let mut want_fwd: BTreeMap<&str, u64> = BTreeMap::new();
        let mut want_backend: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
        let (mut n4, mut n6) = (0, 0);
        for &(svc, client, dport, proto, backend) in cases {
            let vip = sid(svc).vip;
            for sport in [40000u16, 40001, 65535] {
                let (src, be) = (ip(client), ip(backend));
                let input = frame(src, vip, &l4_of(proto, sport, dport));
                let hash = packet_hash(src, sport, vip, dport, proto);
                let want = encapsulated(&input, input.len() - 14, be, hash, mac_of(be), n.mac);
                let what = format!("{svc} {client}:{sport} -> :{dport} via {backend}");
                let (action, got) = run(&mut dp, &input);
                assert_eq!(action, XDP_REDIRECT, "{what}");
                same(&got, &want, &what);
                if be.is_ipv4() {
                    assert_eq!(checksum(&got[14..34]), 0, "{what}: outer checksum");
                }
                assert_eq!(
                    ctl.predict(&sid(svc), src, sport, dport),
                    Some(be),
                    "{what}"
                );
                *want_fwd.entry(svc).or_default() += 1;
                let e = want_backend.entry((svc, backend)).or_default();
                e.0 += 1;
                e.1 += input.len() as u64;
                if vip.is_ipv4() {
                    n4 += 1;
                } else {
                    n6 += 1;
                }
            }
        }

        // Ethernet padding: the outer length counts the IP packet only, the
        // padding stays at the end.
        let (src, vip, be) = (ip("203.0.113.10"), ip("192.0.2.10"), ip("10.200.9.3"));
        let ip_pkt = packet(src, vip, &Transport::udp(5353, 53));
        let input = pad(Ethernet::new(ethertype::IPV4).build(&ip_pkt), 60);
        assert!(input.len() > 14 + ip_pkt.len());
        let hash = packet_hash(src, 5353, vip, 53, Proto::Udp);
        let want = encapsulated(&input, ip_pkt.len(), be, hash, MAC3, n.mac);
        let (action, got) = run(&mut dp, &input);
        assert_eq!(action, XDP_REDIRECT, "padded");
        same(&got, &want, "padded frame");
        assert_eq!(got.len(), input.len() + 20);
        *want_fwd.entry("192.0.2.10:53/udp").or_default() += 1;
        let e = want_backend
            .entry(("192.0.2.10:53/udp", "10.200.9.3"))
            .or_default();
        e.0 += 1;
        e.1 += input.len() as u64;
        n4 += 1;

        for (svc, fwd) in &want_fwd {
            assert_eq!(service_counts(&ctl, &dp, svc), (*fwd, 0, 0), "{svc}");
        }
        for ((svc, be), counts) in &want_backend {
            assert_eq!(backend_counts(&ctl, &dp, svc, be), *counts, "{svc} {be}");
        }
        assert_eq!(action_packets(&dp, "ipv4", "redirect"), n4);
        assert_eq!(action_packets(&dp, "ipv6", "redirect"), n6);
        assert!(reasons(&dp).values().all(|n| *n == 0), "{:?}", reasons(&dp));
    });
}

//! `BPF_PROG_TEST_RUN` fixtures of the steering program: what the load
//! balancer must leave alone (not a VIP, another port or protocol, ICMP,
//! VLAN tags, fragments) and the ACL deciding before it.
//!
//! The rig (a namespace with a veth pair, the backends' neighbours and
//! routes; the datapath with lo as slot 1; expected frames written out field
//! by field) is in `lb_common/`.
mod lb_common;

use std::net::IpAddr;

use lb_common::{
    LO, XDP_DROP, XDP_PASS, XDP_REDIRECT, frame, ip, l4_of, load, net, reasons, run, same,
    service_counts, spec, status, tagged, v6,
};
use xdpgate::{acl::AclController, lb::LbController};
use xdpgate_model::{
    acl::{AclState, RuleFile},
    lb::{Forward, Proto},
};
use xdpgate_tests::{
    lab::serial,
    packet::{Ethernet, Ext, Ipv4, Ipv6, Transport, ethertype, hex},
};

/// Packets the load balancer must leave alone, and the ACL before it.
#[test]
fn not_steered_and_acl_first() {
    let _g = serial();
    let n = net("lbpass");
    n.ns.run(|| {
        let mut dp = load();
        let mut ctl = LbController::new(&dp, vec![LO]);
        let specs = [
            spec("192.0.2.10:80/tcp", Forward::Encap, &[("10.200.9.2", 1)]),
            spec(
                "[2001:db8::10]:80/tcp",
                Forward::Encap,
                &[("fd00:200:9::2", 1)],
            ),
            spec("192.0.2.20:80/tcp", Forward::L2dsr, &[("10.200.9.2", 1)]),
        ];
        ctl.apply(&mut dp, &specs).expect("apply");
        let (c4, c6) = (ip("198.51.100.7"), ip("2001:db8:1::7"));
        let (vip4, vip6) = (ip("192.0.2.10"), ip("2001:db8::10"));
        let tcp = |dport| l4_of(Proto::Tcp, 40000, dport);
        let tagged = |vlan: bool, src: IpAddr, dst: IpAddr| tagged(vlan, src, dst, &tcp(80));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("v4 not a VIP", frame(c4, ip("192.0.2.99"), &tcp(80))),
            ("v6 not a VIP", frame(c6, ip("2001:db8::99"), &tcp(80))),
            ("v4 VIP, other port", frame(c4, vip4, &tcp(81))),
            ("v6 VIP, other port", frame(c6, vip6, &tcp(8080))),
            (
                "v4 VIP, UDP",
                frame(c4, vip4, &l4_of(Proto::Udp, 40000, 80)),
            ),
            (
                "v6 VIP, SCTP",
                frame(c6, vip6, &l4_of(Proto::Sctp, 40000, 80)),
            ),
            (
                "v4 VIP, ICMP",
                Ethernet::new(ethertype::IPV4).build(
                    &Ipv4::new([198, 51, 100, 7], [192, 0, 2, 10], 1)
                        .build(&Transport::icmp(8, 0).bytes()),
                ),
            ),
            ("v4 VIP, VLAN", tagged(true, c4, vip4)),
            ("v6 VIP, VLAN", tagged(true, c6, vip6)),
            ("v4 VIP, QinQ", tagged(false, c4, vip4)),
        ];
        for (name, input) in &cases {
            let (action, got) = run(&mut dp, input);
            assert_eq!(action, XDP_PASS, "{name}");
            same(&got, input, name);
        }
        for s in &specs {
            let id = s.id.to_string();
            assert_eq!(service_counts(&ctl, &dp, &id), (0, 0, 0), "{id}");
            let st = status(&ctl, &dp, &id);
            assert!(st.backends.iter().all(|b| b.packets == 0), "{id}");
        }
        assert!(reasons(&dp).values().all(|n| *n == 0), "{:?}", reasons(&dp));

        // The ACL decides first: a deny rule for the VIPs drops their packets
        // before the load balancer sees them.
        let file: RuleFile = toml::from_str(
            r#"
            [[rule]]
            id = 1
            priority = 1
            dst = "192.0.2.10/32"
            proto = "tcp"
            action = "deny"

            [[rule]]
            id = 2
            priority = 2
            dst = "2001:db8::10/128"
            action = "deny"
            "#,
        )
        .expect("rules");
        let mut acl = AclController::new(xdpgate_model::acl::random::slots());
        acl.install(&mut dp, AclState::from_file(&file).expect("state"))
            .expect("install the ACL");
        let to4 = frame(c4, vip4, &tcp(80));
        let to6 = frame(c6, vip6, &tcp(80));
        for (name, input) in [("v4", &to4), ("v6", &to6)] {
            let (action, got) = run(&mut dp, input);
            assert_eq!(action, XDP_DROP, "{name} VIP behind a deny rule");
            same(&got, input, name);
        }
        for s in &specs[..2] {
            let id = s.id.to_string();
            assert_eq!(service_counts(&ctl, &dp, &id), (0, 0, 0), "{id}");
        }
        let rc = acl.rule_counters(&dp).expect("rule counters");
        for id in [1, 2] {
            let c = rc.iter().find(|c| c.rule.id == id).expect("rule");
            assert_eq!(c.packets, 1, "rule {id}");
        }
        // Without the rule, steered again.
        acl.install(&mut dp, AclState::default())
            .expect("empty ACL");
        assert_eq!(run(&mut dp, &to4).0, XDP_REDIRECT);
        assert_eq!(run(&mut dp, &to6).0, XDP_REDIRECT);
        assert_eq!(service_counts(&ctl, &dp, "192.0.2.10:80/tcp"), (1, 0, 0));
        assert_eq!(
            service_counts(&ctl, &dp, "[2001:db8::10]:80/tcp"),
            (1, 0, 0)
        );
    });
}

/// Fragments to a VIP pass unchanged, the first ones (which carry the ports)
/// included: steering them would split a datagram between a backend and the
/// load balancer's own stack, which gets the later fragments.
#[test]
fn fragments_to_a_vip_are_not_steered() {
    let _g = serial();
    let n = net("lbfrag");
    n.ns.run(|| {
        let mut dp = load();
        let mut ctl = LbController::new(&dp, vec![LO]);
        let specs = [
            spec("192.0.2.10:80/tcp", Forward::Encap, &[("10.200.9.2", 1)]),
            spec(
                "[2001:db8::10]:80/tcp",
                Forward::Encap,
                &[("fd00:200:9::2", 1)],
            ),
            spec("192.0.2.10:53/udp", Forward::L2dsr, &[("10.200.9.2", 1)]),
        ];
        ctl.apply(&mut dp, &specs).expect("apply");
        let v4frag = |l4: Transport, offset, more| {
            Ethernet::new(ethertype::IPV4).build(
                &Ipv4::new([198, 51, 100, 7], [192, 0, 2, 10], l4.proto())
                    .fragment(offset, more)
                    .build(&l4.bytes()),
            )
        };
        let v6frag = |offset, more| {
            Ethernet::new(ethertype::IPV6).build(
                &Ipv6::new(v6("2001:db8:1::7").octets(), v6("2001:db8::10").octets(), 6)
                    .ext(Ext::fragment(offset, more))
                    .build(&l4_of(Proto::Tcp, 40000, 80).bytes()),
            )
        };
        let tcp = || l4_of(Proto::Tcp, 40000, 80);
        let udp = || l4_of(Proto::Udp, 40000, 53);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("v4 TCP, first fragment", v4frag(tcp(), 0, true)),
            ("v4 TCP, middle fragment", v4frag(tcp(), 7, true)),
            ("v4 TCP, last fragment", v4frag(tcp(), 185, false)),
            ("v4 UDP (L2 DSR), first fragment", v4frag(udp(), 0, true)),
            ("v4 UDP (L2 DSR), last fragment", v4frag(udp(), 185, false)),
            ("v6 TCP, first fragment", v6frag(0, true)),
            ("v6 TCP, later fragment", v6frag(185, false)),
        ];
        for (name, input) in &cases {
            let (action, got) = run(&mut dp, input);
            assert_eq!(action, XDP_PASS, "{name}: {}", hex(&got));
            same(&got, input, name);
        }
        for s in &specs {
            let id = s.id.to_string();
            assert_eq!(service_counts(&ctl, &dp, &id), (0, 0, 0), "{id}");
        }
        assert!(reasons(&dp).values().all(|n| *n == 0), "{:?}", reasons(&dp));
    });
}

//! `BPF_PROG_TEST_RUN` fixtures of the steering program: decapsulation on a
//! backend (`IFACE_DECAP`) of the four tunnel kinds to listed outer
//! destinations, what is left alone (other destinations, extension headers,
//! the wrong inner version, VLAN tags, outer fragments), and the load
//! balancer's output decapsulated again (round trip).
//!
//! The rig (a namespace with a veth pair, the backends' neighbours and
//! routes; the datapath with lo as slot 1; expected frames written out field
//! by field) is in `lb_common/`.
mod lb_common;

use std::{collections::BTreeMap, net::IpAddr};

use lb_common::{
    EN4, EN6, LO, SLOT, XDP_PASS, XDP_REDIRECT, frame, ip, l4_of, load, mac_of, net, outer_dst,
    outer_src6, packet, run, same, spec, v6,
};
use xdpgate::{datapath::Datapath, lb::LbController};
use xdpgate_common::{
    IFACE_DECAP, LOCAL_ADDR_V4, LOCAL_ADDR_V6, LocalAddrKey,
    lb::{FAMILY_V4, FAMILY_V6},
};
use xdpgate_model::lb::{Forward, Proto};
use xdpgate_tests::{
    lab::serial,
    packet::{Ethernet, Ext, Ipv4, Ipv6, ethertype},
};

/// A decapsulation fixture: name, frame, outer family, inner family, inner
/// packet.
type DecapCase<'a> = (&'a str, Vec<u8>, u8, u8, &'a [u8]);

fn decap_key(addr: IpAddr) -> LocalAddrKey {
    let mut a = [0u8; 16];
    let family = match addr {
        IpAddr::V4(v) => {
            a[..4].copy_from_slice(&v.octets());
            LOCAL_ADDR_V4
        }
        IpAddr::V6(v) => {
            a = v.octets();
            LOCAL_ADDR_V6
        }
    };
    LocalAddrKey {
        slot: SLOT,
        family,
        addr: a,
    }
}

/// A tunnel packet in a frame: outer IPv4 or IPv6 (by `outer_dst`) from a
/// 172.16/100:: source, protocol `proto`, around `inner`.
fn tunnel(outer_dst: IpAddr, proto: u8, inner: &[u8]) -> Vec<u8> {
    match outer_dst {
        IpAddr::V4(d) => Ethernet::new(ethertype::IPV4)
            .build(&Ipv4::new([172, 16, 1, 2], d.octets(), proto).build(inner)),
        IpAddr::V6(d) => Ethernet::new(ethertype::IPV6)
            .build(&Ipv6::new(outer_src6(0x0102), d.octets(), proto).build(inner)),
    }
}

/// What decapsulation leaves of a frame: its Ethernet addresses, the inner
/// packet's EtherType, the inner packet.
fn decapsulated(macs: &[u8], inner: &[u8]) -> Vec<u8> {
    let mut out = macs[..12].to_vec();
    out.extend_from_slice(if inner[0] >> 4 == 4 { &EN4 } else { &EN6 });
    out.extend_from_slice(inner);
    out
}

/// Decapsulation of the four tunnel kinds to listed outer destinations,
/// what is left alone, and the load balancer's output decapsulated again.
#[test]
fn decapsulation_and_round_trip() {
    let _g = serial();
    let n = net("lbdecap");
    n.ns.run(|| {
        let mut dp = load();
        dp.set_iface_flag(LO, IFACE_DECAP, true)
            .expect("decap flag");
        let (d4, d6) = (ip("10.200.9.1"), ip("fd00:200:9::1"));
        dp.set_decap_dsts(&[decap_key(d4), decap_key(d6)])
            .expect("decap destinations");
        let mut listed = dp.decap_dsts().expect("list");
        listed.sort_by_key(|k| k.family);
        assert_eq!(listed, vec![decap_key(d4), decap_key(d6)]);

        let inner4 = packet(
            ip("198.51.100.7"),
            ip("192.0.2.10"),
            &l4_of(Proto::Tcp, 40000, 80),
        );
        let inner6 = packet(
            ip("2001:db8:1::7"),
            ip("2001:db8::10"),
            &l4_of(Proto::Udp, 40000, 53),
        );
        let cases: Vec<DecapCase> = vec![
            (
                "IPIP",
                tunnel(d4, 4, &inner4),
                FAMILY_V4,
                FAMILY_V4,
                &inner4,
            ),
            (
                "IPv6 in IPv4",
                tunnel(d4, 41, &inner6),
                FAMILY_V4,
                FAMILY_V6,
                &inner6,
            ),
            (
                "IP6IP6",
                tunnel(d6, 41, &inner6),
                FAMILY_V6,
                FAMILY_V6,
                &inner6,
            ),
            (
                "IPv4 in IPv6",
                tunnel(d6, 4, &inner4),
                FAMILY_V6,
                FAMILY_V4,
                &inner4,
            ),
            (
                "IPIP, outer options",
                Ethernet::new(ethertype::IPV4).build(
                    &Ipv4::new([172, 16, 1, 2], [10, 200, 9, 1], 4)
                        .options(&[1, 1, 1, 1])
                        .build(&inner4),
                ),
                FAMILY_V4,
                FAMILY_V4,
                &inner4,
            ),
        ];
        let mut want: BTreeMap<(u8, u8), (u64, u64)> = BTreeMap::new();
        for (name, input, outer, inner_family, inner) in &cases {
            let (action, got) = run(&mut dp, input);
            assert_eq!(action, XDP_PASS, "{name}");
            same(&got, &decapsulated(input, inner), name);
            let e = want.entry((*outer, *inner_family)).or_default();
            e.0 += 1;
            e.1 += input.len() as u64;
            for o in [FAMILY_V4, FAMILY_V6] {
                for i in [FAMILY_V4, FAMILY_V6] {
                    let c = dp.decap_counter(SLOT, o, i).expect("decap counter");
                    let w = want.get(&(o, i)).copied().unwrap_or_default();
                    assert_eq!((c.packets, c.bytes), w, "{name}: counter {o}/{i}");
                }
            }
        }
        let counted = |dp: &Datapath| -> u64 {
            [FAMILY_V4, FAMILY_V6]
                .iter()
                .flat_map(|o| [FAMILY_V4, FAMILY_V6].map(|i| (*o, i)))
                .map(|(o, i)| dp.decap_counter(SLOT, o, i).unwrap().packets)
                .sum()
        };
        assert_eq!(counted(&dp), cases.len() as u64);

        // Left alone: other outer destinations, an extension header before
        // the tunnel payload, an inner packet of the wrong version, VLAN tags.
        let not_listed4 = ip("10.200.9.99");
        let not_listed6 = ip("fd00:200:9::99");
        let ext6 = Ethernet::new(ethertype::IPV6).build(
            &Ipv6::new(outer_src6(7), v6("fd00:200:9::1").octets(), 41)
                .ext(Ext::dest_opts())
                .build(&inner6),
        );
        let vlan = Ethernet::new(ethertype::IPV4)
            .vlan(5)
            .build(&Ipv4::new([172, 16, 1, 2], [10, 200, 9, 1], 4).build(&inner4));
        let passed: Vec<(&str, Vec<u8>)> = vec![
            ("IPIP, not listed", tunnel(not_listed4, 4, &inner4)),
            ("IPv6 in IPv4, not listed", tunnel(not_listed4, 41, &inner6)),
            ("IP6IP6, not listed", tunnel(not_listed6, 41, &inner6)),
            ("IPv4 in IPv6, not listed", tunnel(not_listed6, 4, &inner4)),
            ("IP6IP6 behind destination options", ext6),
            ("IPIP with an IPv6 inside", tunnel(d4, 4, &inner6)),
            ("IP6IP6 with an IPv4 inside", tunnel(d6, 41, &inner4)),
            ("IPIP, VLAN", vlan),
            (
                "IPv4 address as IPv6 key",
                tunnel(ip("ac8:901::"), 4, &inner4),
            ),
        ];
        for (name, input) in &passed {
            let (action, got) = run(&mut dp, input);
            assert_eq!(action, XDP_PASS, "{name}");
            same(&got, input, name);
        }
        assert_eq!(
            counted(&dp),
            cases.len() as u64,
            "nothing more decapsulated"
        );

        // Round trip: the load balancer's output for backends .2, fed to a
        // second datapath (the backends' side) that decapsulates to .2.
        let mut ctl = LbController::new(&dp, vec![LO]);
        ctl.apply(
            &mut dp,
            &[
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
            ],
        )
        .expect("apply");
        let cases = [
            ("198.51.100.7", "192.0.2.10", FAMILY_V4, FAMILY_V4),
            ("198.51.100.7", "192.0.2.11", FAMILY_V6, FAMILY_V4),
            ("2001:db8:1::7", "2001:db8::10", FAMILY_V6, FAMILY_V6),
            ("2001:db8:1::7", "2001:db8::11", FAMILY_V4, FAMILY_V6),
        ];
        let mut encapsulated = Vec::new();
        for (client, vip, _, _) in cases {
            let original = frame(ip(client), ip(vip), &l4_of(Proto::Tcp, 50000, 80));
            let (action, encap) = run(&mut dp, &original);
            assert_eq!(action, XDP_REDIRECT, "{vip}: load balanced");
            // The first datapath does not decapsulate its own output: .2 is
            // not one of its decapsulation addresses.
            let (action, again) = run(&mut dp, &encap);
            assert_eq!(
                action, XDP_PASS,
                "{vip}: the balancer's output on the balancer"
            );
            same(&again, &encap, vip);
            encapsulated.push((original, encap));
        }
        // One datapath at a time: each holds a few hundred MB of tables,
        // and the VM guests of `cargo xtask vmtest` have 1 GB.
        drop(ctl);
        drop(dp);
        let mut be = load();
        be.set_iface_flag(LO, IFACE_DECAP, true).unwrap();
        be.set_decap_dsts(&[decap_key(ip("10.200.9.2")), decap_key(ip("fd00:200:9::2"))])
            .unwrap();
        for ((_, vip, outer, inner), (original, encap)) in cases.iter().zip(&encapsulated) {
            let (action, back) = run(&mut be, encap);
            assert_eq!(action, XDP_PASS, "{vip}: decapsulated");
            let mut want = encap[..12].to_vec();
            want.extend_from_slice(&original[12..]);
            same(&back, &want, vip);
            assert_eq!(back[..6], mac_of(outer_dst(encap)));
            assert_eq!(back[6..12], n.mac);
            let c = be.decap_counter(SLOT, *outer, *inner).unwrap();
            assert_eq!((c.packets, c.bytes), (1, encap.len() as u64), "{vip}");
        }
    });
}

/// Fragmented tunnel packets are not decapsulated: the stack reassembles the
/// outer packet first (stripping the outer header of a first fragment leaves
/// a truncated inner packet; a later fragment has no inner header at all).
#[test]
fn decap_leaves_outer_fragments_alone() {
    let _g = serial();
    let n = net("lbdecfrag");
    n.ns.run(|| {
        let mut dp = load();
        dp.set_iface_flag(LO, IFACE_DECAP, true)
            .expect("decap flag");
        let (d4, d6) = (ip("10.200.9.1"), ip("fd00:200:9::1"));
        dp.set_decap_dsts(&[decap_key(d4), decap_key(d6)])
            .expect("decap destinations");
        let inner4 = packet(
            ip("198.51.100.7"),
            ip("192.0.2.10"),
            &l4_of(Proto::Tcp, 40000, 80),
        );
        let inner6 = packet(
            ip("2001:db8:1::7"),
            ip("2001:db8::10"),
            &l4_of(Proto::Tcp, 40000, 80),
        );
        let frag4 = |proto: u8, inner: &[u8], offset: u16, more: bool| {
            Ethernet::new(ethertype::IPV4).build(
                &Ipv4::new([172, 16, 1, 2], [10, 200, 9, 1], proto)
                    .fragment(offset, more)
                    .build(inner),
            )
        };
        let frag6 = |proto: u8, inner: &[u8], offset: u16, more: bool| {
            Ethernet::new(ethertype::IPV6).build(
                &Ipv6::new(outer_src6(1), v6("fd00:200:9::1").octets(), proto)
                    .ext(Ext::fragment(offset, more))
                    .build(inner),
            )
        };
        // A later fragment's data is the middle of the inner packet; here
        // it happens to start like an IP header (the worst case).
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("IPIP, first fragment", frag4(4, &inner4, 0, true)),
            ("IPIP, later fragment", frag4(4, &inner4, 3, false)),
            ("IPv6 in IPv4, first fragment", frag4(41, &inner6, 0, true)),
            ("IPv6 in IPv4, later fragment", frag4(41, &inner6, 5, true)),
            ("IP6IP6, first fragment", frag6(41, &inner6, 0, true)),
            ("IPv4 in IPv6, later fragment", frag6(4, &inner4, 3, false)),
        ];
        for (name, input) in &cases {
            let (action, got) = run(&mut dp, input);
            assert_eq!(action, XDP_PASS, "{name}");
            same(&got, input, name);
        }
        for o in [FAMILY_V4, FAMILY_V6] {
            for i in [FAMILY_V4, FAMILY_V6] {
                let c = dp.decap_counter(SLOT, o, i).expect("decap counter");
                assert_eq!(c.packets, 0, "decapsulated {o}/{i}");
            }
        }
    });
}

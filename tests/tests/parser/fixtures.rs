//! The fixture tables: well-formed frames (every one must pass) and
//! malformed frames (every one is counted under its reason).
use xdpgate_common::{DropReason, Family};
use xdpgate_tests::packet::{Ethernet, Ext, Transport, ethertype, pad, proto};

use DropReason::*;
use Family::{Ipv4 as V4, Ipv6 as V6, Other};

use crate::{
    PAYLOAD,
    frames::{
        TAGGINGS, cut, ext_chain, frame4, frame6, frame6_cut, ip4, ip6, l4_need, single_exts,
        tagged, tcp, transports, udp, with_exts,
    },
    runner::{
        Case,
        Want::{Bad, Pass},
        case,
    },
};

/// Well-formed frames: every one must pass.
pub(crate) fn well_formed() -> Vec<Case> {
    let mut v = Vec::new();

    // Plain L4 of both families, and exactly the header the parser needs.
    for (family, et) in [(V4, ethertype::IPV4), (V6, ethertype::IPV6)] {
        for (name, l4) in transports(family) {
            let build = |l4: &Transport| match family {
                V4 => frame4(&ip4(l4), l4),
                _ => frame6(&ip6(l4), l4),
            };
            v.push(case(
                format!("{} {name}", family.name()),
                build(&l4),
                Pass(family),
            ));
            let exact = cut(&l4, l4_need(family, l4.proto()));
            v.push(case(
                format!(
                    "{} {name}, exactly the L4 bytes the parser reads",
                    family.name()
                ),
                build(&exact),
                Pass(family),
            ));
            // One and two VLAN tags of every kind.
            for (tname, tags) in TAGGINGS {
                let ip = match family {
                    V4 => ip4(&l4).build(&l4.bytes()),
                    _ => ip6(&l4).build(&l4.bytes()),
                };
                v.push(case(
                    format!("{tname} {} {name}", family.name()),
                    tagged(tags, et).build(&ip),
                    Pass(family),
                ));
            }
        }
    }

    // Non-IP frames.
    let arp = [
        0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 192, 0, 2, 2,
    ];
    let lldp = [
        2, 7, 4, 2, 0, 0, 0, 0, 1, 4, 3, 3, 101, 116, 104, 6, 2, 0, 120, 0, 0,
    ];
    v.push(case(
        "arp",
        Ethernet::new(ethertype::ARP).build(&arp),
        Pass(Other),
    ));
    v.push(case(
        "lldp",
        Ethernet::new(ethertype::LLDP).build(&lldp),
        Pass(Other),
    ));
    v.push(case(
        "arp padded to 60",
        pad(Ethernet::new(ethertype::ARP).build(&arp), 60),
        Pass(Other),
    ));
    v.push(case(
        "802.1Q arp",
        Ethernet::new(ethertype::ARP).vlan(5).build(&arp),
        Pass(Other),
    ));
    v.push(case(
        "QinQ lldp",
        Ethernet::new(ethertype::LLDP).qinq(5, 6).build(&lldp),
        Pass(Other),
    ));
    v.push(case(
        "unknown ethertype 0x88b5, no payload (exactly 14 bytes)",
        Ethernet::new(0x88b5).build(&[]),
        Pass(Other),
    ));
    v.push(case(
        "802.3 length field with LLC",
        Ethernet::new(0x0026).build(&[0x42, 0x42, 0x03, 0, 0, 0]),
        Pass(Other),
    ));
    v.push(case(
        "802.1Q tag then an unknown ethertype, no payload",
        Ethernet::new(0x1234).vlan(1).build(&[]),
        Pass(Other),
    ));

    // IPv4 options: IHL 6..15.
    for ihl in 6..=15usize {
        let mut options = vec![1u8; (ihl - 5) * 4 - 1]; // NOPs
        options.push(0); // end of option list
        let l4 = tcp();
        v.push(case(
            format!("ipv4 IHL {ihl} + tcp"),
            frame4(&ip4(&l4).options(&options), &l4),
            Pass(V4),
        ));
    }
    let l4 = udp();
    v.push(case(
        "ipv4 router alert option (IHL 6) + udp",
        frame4(&ip4(&l4).options(&[0x94, 0x04, 0, 0]), &l4),
        Pass(V4),
    ));
    v.push(case(
        "ipv4 3 option bytes padded to IHL 6 + udp",
        frame4(&ip4(&l4).options(&[1, 1, 0]), &l4),
        Pass(V4),
    ));

    // Ethernet padding after the IP packet.
    let l4 = tcp();
    v.push(case(
        "ipv4 tcp + 10 bytes of ethernet padding",
        pad(frame4(&ip4(&l4), &l4), 14 + 20 + 20 + PAYLOAD.len() + 10),
        Pass(V4),
    ));
    let l4 = Transport::udp(1, 2);
    v.push(case(
        "ipv4 udp without payload padded to 60",
        pad(frame4(&ip4(&l4), &l4), 60),
        Pass(V4),
    ));
    let l4 = Transport::tcp(1, 2);
    v.push(case(
        "ipv4 bare tcp SYN padded to 60",
        pad(frame4(&ip4(&l4), &l4), 60),
        Pass(V4),
    ));
    let l4 = Transport::raw(proto::GRE, &[]);
    v.push(case(
        "ipv4 with no payload (tot_len 20) padded to 60",
        pad(frame4(&ip4(&l4), &l4), 60),
        Pass(V4),
    ));
    let l4 = udp();
    v.push(case(
        "ipv6 udp + 7 bytes of trailing padding",
        pad(frame6(&ip6(&l4), &l4), 14 + 40 + 8 + PAYLOAD.len() + 7),
        Pass(V6),
    ));

    // IPv4 fragments.
    for (name, l4) in transports(V4) {
        v.push(case(
            format!("ipv4 first fragment (MF, offset 0) with full {name}"),
            frame4(&ip4(&l4).fragment(0, true), &l4),
            Pass(V4),
        ));
        v.push(case(
            format!("ipv4 later fragment (offset 1, MF) with 2 bytes of {name}"),
            frame4(&ip4(&l4).fragment(1, true), &cut(&l4, 2)),
            Pass(V4),
        ));
    }
    let l4 = tcp();
    v.push(case(
        "ipv4 later fragment (offset 3, MF) whose 8 bytes look like a cut tcp header",
        frame4(&ip4(&l4).fragment(3, true), &cut(&l4, 8)),
        Pass(V4),
    ));
    v.push(case(
        "ipv4 last fragment (offset 185, no MF) with 4 bytes",
        frame4(&ip4(&l4).fragment(185, false), &cut(&l4, 4)),
        Pass(V4),
    ));
    v.push(case(
        "ipv4 later fragment with no payload",
        frame4(&ip4(&l4).fragment(0x1fff, false), &cut(&l4, 0)),
        Pass(V4),
    ));
    v.push(case(
        "ipv4 DF set, not a fragment",
        frame4(&ip4(&l4).dont_fragment(), &l4),
        Pass(V4),
    ));
    v.push(case(
        "ipv4 IHL 15 first fragment with full udp",
        frame4(&ip4(&udp()).options(&[1; 40]).fragment(0, true), &udp()),
        Pass(V4),
    ));

    // Protocols the parser reads no L4 fields of.
    for (name, family, p, n) in [
        ("ipv4 gre, no payload", V4, proto::GRE, 0),
        (
            "ipv4 protocol 58 (icmpv6 number) with 2 bytes",
            V4,
            proto::ICMPV6,
            2,
        ),
        (
            "ipv4 protocol 44 (ipv6 fragment number) with 1 byte",
            V4,
            proto::FRAGMENT,
            1,
        ),
        ("ipv4 protocol 0 with 1 byte", V4, proto::HOPOPTS, 1),
        ("ipv6 no next header, no payload", V6, proto::NONE, 0),
        (
            "ipv6 next header 1 (icmp number) with 2 bytes",
            V6,
            proto::ICMP,
            2,
        ),
        ("ipv6 gre with 3 bytes", V6, proto::GRE, 3),
    ] {
        let l4 = Transport::raw(p, &[0xee; 3][..n]);
        let f = match family {
            V4 => frame4(&ip4(&l4), &l4),
            _ => frame6(&ip6(&l4), &l4),
        };
        v.push(case(name, f, Pass(family)));
    }

    // IPv6 extension headers.
    for (ename, ext) in single_exts() {
        for (lname, l4) in [
            ("tcp", tcp()),
            ("udp", udp()),
            ("icmpv6", Transport::icmpv6(143, 0)),
        ] {
            v.push(case(
                format!("ipv6 {ename} + {lname}"),
                frame6(&ip6(&l4).ext(ext.clone()), &l4),
                Pass(V6),
            ));
        }
    }
    for (name, l4) in [
        ("udp", udp()),
        ("tcp", tcp()),
        ("nothing", Transport::raw(proto::NONE, &[])),
    ] {
        v.push(case(
            format!("ipv6 chain of 8 extension headers + {name}"),
            frame6(&with_exts(ip6(&l4), ext_chain(8)), &l4),
            Pass(V6),
        ));
    }
    let l4 = udp();
    v.push(case(
        "ipv6 chain of 8 destination options + udp",
        frame6(&with_exts(ip6(&l4), vec![Ext::dest_opts(); 8]), &l4),
        Pass(V6),
    ));
    v.push(case(
        "ipv6 all five kinds, hop-by-hop first + udp",
        frame6(&with_exts(ip6(&l4), ext_chain(5)), &l4),
        Pass(V6),
    ));
    for l4 in [tcp(), udp(), Transport::icmpv6(128, 0)] {
        v.push(case(
            format!(
                "ipv6 first fragment (offset 0, M) with full proto {}",
                l4.proto()
            ),
            frame6(&ip6(&l4).ext(Ext::fragment(0, true)), &l4),
            Pass(V6),
        ));
    }
    v.push(case(
        "ipv6 hop-by-hop + first fragment + destination options + udp",
        frame6(
            &ip6(&l4)
                .ext(Ext::hop_by_hop())
                .ext(Ext::fragment(0, true))
                .ext(Ext::dest_opts()),
            &l4,
        ),
        Pass(V6),
    ));
    let l4 = tcp();
    v.push(case(
        "ipv6 later fragment (offset 185, M) whose 8 bytes look like a cut tcp header",
        frame6(&ip6(&l4).ext(Ext::fragment(185, true)), &cut(&l4, 8)),
        Pass(V6),
    ));
    v.push(case(
        "ipv6 last fragment (offset 1, no M) with 2 bytes",
        frame6(&ip6(&l4).ext(Ext::fragment(1, false)), &cut(&l4, 2)),
        Pass(V6),
    ));
    v.push(case(
        "ipv6 hop-by-hop + later fragment with no payload",
        frame6(
            &ip6(&l4).ext(Ext::hop_by_hop()).ext(Ext::fragment(8, true)),
            &cut(&l4, 0),
        ),
        Pass(V6),
    ));
    let dst = Transport::raw(proto::DSTOPTS, &[proto::UDP]);
    v.push(case(
        "ipv6 later fragment naming destination options, 1 byte of them",
        frame6(&ip6(&dst).ext(Ext::fragment(2, true)), &dst),
        Pass(V6),
    ));
    v
}

/// Malformed frames: every one is counted under its reason.
pub(crate) fn malformed() -> Vec<Case> {
    let mut v = Vec::new();

    // VLAN.
    for (name, et) in [
        ("ipv4", ethertype::IPV4),
        ("ipv6", ethertype::IPV6),
        ("arp", ethertype::ARP),
    ] {
        let l4 = udp();
        let payload = match et {
            ethertype::IPV4 => ip4(&l4).build(&l4.bytes()),
            ethertype::IPV6 => ip6(&l4).build(&l4.bytes()),
            _ => vec![0; 28],
        };
        v.push(case(
            format!("three tags (QinQ + 802.1Q) {name}"),
            Ethernet::new(et).qinq(1, 2).vlan(3).build(&payload),
            Bad(Other, VlanTooDeep),
        ));
        v.push(case(
            format!("three 802.1Q tags {name}"),
            Ethernet::new(et).vlan(1).vlan(2).vlan(3).build(&payload),
            Bad(Other, VlanTooDeep),
        ));
        v.push(case(
            format!("four tags {name}"),
            Ethernet::new(et).qinq(1, 2).vlan(3).vlan(4).build(&payload),
            Bad(Other, VlanTooDeep),
        ));
    }
    v.push(case(
        "two tags then a third TPID, frame ends",
        Ethernet::new(ethertype::VLAN).qinq(1, 2).build(&[]),
        Bad(Other, VlanTooDeep),
    ));
    let tag1 = Ethernet::new(ethertype::IPV4).vlan(7).build(&[]);
    for n in 14..tag1.len() {
        v.push(case(
            format!("802.1Q tag cut after {} bytes", n - 14),
            tag1[..n].to_vec(),
            Bad(Other, TruncatedVlan),
        ));
    }
    let tag2 = Ethernet::new(ethertype::IPV6).qinq(7, 8).build(&[]);
    for n in 18..tag2.len() {
        v.push(case(
            format!("QinQ inner tag cut after {} bytes", n - 18),
            tag2[..n].to_vec(),
            Bad(Other, TruncatedVlan),
        ));
    }

    // IPv4 header.
    let l4 = tcp();
    let full4 = ip4(&l4).build(&l4.bytes());
    for n in [0, 1, 10, 19] {
        v.push(case(
            format!("ipv4 header cut after {n} bytes"),
            Ethernet::new(ethertype::IPV4).build(&full4[..n]),
            Bad(V4, TruncatedIpv4),
        ));
        v.push(case(
            format!("802.1Q ipv4 header cut after {n} bytes"),
            Ethernet::new(ethertype::IPV4).vlan(9).build(&full4[..n]),
            Bad(V4, TruncatedIpv4),
        ));
    }
    let opts = ip4(&l4).options(&[1; 40]);
    let full = frame4(&opts, &l4);
    for n in [20, 21, 39, 59] {
        v.push(case(
            format!("ipv4 IHL 15 options cut after {} option bytes", n - 20),
            full[..14 + n].to_vec(),
            Bad(V4, TruncatedIpv4),
        ));
    }
    v.push(case(
        "ipv4 IHL 15 claimed on a 20-byte header with 20 bytes of tcp behind it",
        frame4(&ip4(&l4).ihl(15), &cut(&l4, 20)),
        Bad(V4, TruncatedIpv4),
    ));
    v.push(case(
        "ipv4 IHL 6 claimed, frame ends with the base header",
        frame4(&ip4(&l4).ihl(6).tot_len(24), &cut(&l4, 0)),
        Bad(V4, TruncatedIpv4),
    ));
    for ihl in 0..5 {
        v.push(case(
            format!("ipv4 IHL {ihl}"),
            frame4(&ip4(&l4).ihl(ihl), &l4),
            Bad(V4, BadIpv4Header),
        ));
    }
    for version in [0, 5, 6, 15] {
        v.push(case(
            format!("ipv4 ethertype, version {version}"),
            frame4(&ip4(&l4).version(version), &l4),
            Bad(V4, BadIpv4Header),
        ));
    }
    v.push(case(
        "ipv4 ethertype carrying an ipv6 packet",
        Ethernet::new(ethertype::IPV4).build(&ip6(&l4).build(&l4.bytes())),
        Bad(V4, BadIpv4Header),
    ));
    let n = (20 + l4.bytes().len()) as u16;
    for (name, ip) in [
        ("total length 0", ip4(&l4).tot_len(0)),
        ("total length 19 < header 20", ip4(&l4).tot_len(19)),
        (
            "total length 23 < header 24 (IHL 6)",
            ip4(&l4).options(&[1; 4]).tot_len(23),
        ),
        ("total length one beyond the frame", ip4(&l4).tot_len(n + 1)),
        ("total length 65535", ip4(&l4).tot_len(65535)),
        (
            "later fragment, total length beyond the frame",
            ip4(&l4).fragment(5, true).tot_len(n + 8),
        ),
        (
            "later fragment, total length 19",
            ip4(&l4).fragment(5, true).tot_len(19),
        ),
    ] {
        v.push(case(
            format!("ipv4 {name}"),
            frame4(&ip, &l4),
            Bad(V4, BadIpv4Length),
        ));
    }

    // Truncated L4, lengths consistent (the frame ends where the IP packet does).
    for family in [V4, V6] {
        for (name, l4) in transports(family) {
            let need = l4_need(family, l4.proto());
            let mut lens = vec![0, need - 1];
            if name == "tcp" {
                lens.push(4);
                lens.push(8);
            }
            if name.starts_with("icmp") {
                lens.push(2);
            }
            for k in lens {
                let short = cut(&l4, k);
                let f = match family {
                    V4 => frame4(&ip4(&short), &short),
                    _ => frame6(&ip6(&short), &short),
                };
                v.push(case(
                    format!("{} {name} with {k} of {need} header bytes", family.name()),
                    f,
                    Bad(family, TruncatedL4),
                ));
                if family == V4 {
                    v.push(case(
                        format!("ipv4 first fragment, {name} with {k} of {need} header bytes"),
                        frame4(&ip4(&short).fragment(0, true), &short),
                        Bad(V4, TruncatedL4),
                    ));
                    v.push(case(
                        format!("ipv4 IHL 15, {name} with {k} of {need} header bytes"),
                        frame4(&ip4(&short).options(&[1; 40]), &short),
                        Bad(V4, TruncatedL4),
                    ));
                } else {
                    v.push(case(
                        format!("ipv6 first fragment, {name} with {k} of {need} header bytes"),
                        frame6(&ip6(&short).ext(Ext::fragment(0, true)), &short),
                        Bad(V6, TruncatedL4),
                    ));
                    v.push(case(
                        format!(
                            "ipv6 hop-by-hop + routing, {name} with {k} of {need} header bytes"
                        ),
                        frame6(
                            &ip6(&short).ext(Ext::hop_by_hop()).ext(Ext::routing()),
                            &short,
                        ),
                        Bad(V6, TruncatedL4),
                    ));
                }
            }
        }
    }

    // IPv6 fixed header.
    let l4 = udp();
    let full6 = ip6(&l4).build(&l4.bytes());
    for n in [0, 1, 6, 39] {
        v.push(case(
            format!("ipv6 header cut after {n} bytes"),
            Ethernet::new(ethertype::IPV6).build(&full6[..n]),
            Bad(V6, TruncatedIpv6),
        ));
        v.push(case(
            format!("QinQ ipv6 header cut after {n} bytes"),
            Ethernet::new(ethertype::IPV6).qinq(1, 2).build(&full6[..n]),
            Bad(V6, TruncatedIpv6),
        ));
    }
    for version in [0, 4, 7, 15] {
        v.push(case(
            format!("ipv6 ethertype, version {version}"),
            frame6(&ip6(&l4).version(version), &l4),
            Bad(V6, BadIpv6Header),
        ));
    }
    v.push(case(
        "ipv6 ethertype carrying an ipv4 packet",
        Ethernet::new(ethertype::IPV6).build(&ip4(&l4).build(&l4.bytes())),
        Bad(V6, BadIpv6Header),
    ));
    let n = l4.bytes().len() as u16;
    for (name, ip) in [
        (
            "payload length one beyond the frame",
            ip6(&l4).payload_len(n + 1),
        ),
        ("payload length 65535", ip6(&l4).payload_len(65535)),
        (
            "hop-by-hop, payload length one beyond the frame",
            ip6(&l4).ext(Ext::hop_by_hop()).payload_len(n + 9),
        ),
        (
            "later fragment, payload length beyond the frame",
            ip6(&l4).ext(Ext::fragment(3, true)).payload_len(n + 100),
        ),
    ] {
        v.push(case(
            format!("ipv6 {name}"),
            frame6(&ip, &l4),
            Bad(V6, BadIpv6Header),
        ));
    }

    // IPv6 extension headers cut short, payload length consistent.
    for (ename, ext) in single_exts() {
        let len = ext.len();
        for (pre_name, pre) in [("", vec![]), (" after hop-by-hop", vec![Ext::hop_by_hop()])] {
            let ip = with_exts(ip6(&l4), pre.clone()).ext(ext.clone());
            let before: usize = pre.iter().map(Ext::len).sum();
            for k in [0, 1, 2, len / 2, len - 1] {
                v.push(case(
                    format!("ipv6 {ename}{pre_name} cut after {k} of its {len} bytes"),
                    frame6_cut(&ip, &l4, before + k),
                    Bad(V6, TruncatedIpv6Ext),
                ));
            }
        }
    }
    let hbh_255 = Transport::raw(proto::HOPOPTS, &[proto::UDP, 255, 1, 4, 0, 0, 0, 0]);
    v.push(case(
        "ipv6 hop-by-hop claiming 2048 bytes in an 8-byte payload",
        frame6(&ip6(&hbh_255), &hbh_255),
        Bad(V6, TruncatedIpv6Ext),
    ));
    let ah_255 = Transport::raw(
        proto::AH,
        &[proto::UDP, 255, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0],
    );
    v.push(case(
        "ipv6 ah claiming 1028 bytes in a 16-byte payload",
        frame6(&ip6(&ah_255), &ah_255),
        Bad(V6, TruncatedIpv6Ext),
    ));
    let ip = ip6(&l4).ext(Ext::ah()).ext(Ext::dest_opts());
    v.push(case(
        "ipv6 ah (24 bytes) + destination options cut after 4 of their 8 bytes",
        frame6_cut(&ip, &l4, 24 + 4),
        Bad(V6, TruncatedIpv6Ext),
    ));

    // IPv6 extension chains too deep.
    for (name, exts, l4) in [
        ("9 extension headers + udp", ext_chain(9), udp()),
        ("10 extension headers + udp", ext_chain(10), udp()),
        (
            "9 destination options + udp",
            vec![Ext::dest_opts(); 9],
            udp(),
        ),
        (
            "8 extension headers + a fragment header + tcp",
            [ext_chain(8), vec![Ext::fragment(0, false)]].concat(),
            tcp(),
        ),
        (
            "8 extension headers + a later fragment",
            [ext_chain(8), vec![Ext::fragment(9, true)]].concat(),
            cut(&tcp(), 8),
        ),
        (
            "8 extension headers + ah + icmpv6",
            [ext_chain(8), vec![Ext::ah()]].concat(),
            Transport::icmpv6(128, 0),
        ),
        ("16 extension headers + udp", ext_chain(16), udp()),
    ] {
        v.push(case(
            format!("ipv6 {name}"),
            frame6(&with_exts(ip6(&l4), exts), &l4),
            Bad(V6, Ipv6ExtTooDeep),
        ));
    }
    let nine = with_exts(ip6(&l4), ext_chain(9));
    let eight: usize = ext_chain(8).iter().map(Ext::len).sum();
    v.push(case(
        "ipv6 8 extension headers, a 9th announced but absent",
        frame6_cut(&nine, &l4, eight),
        Bad(V6, Ipv6ExtTooDeep),
    ));
    v
}

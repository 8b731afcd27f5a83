//! Frame helpers of the fixtures: VLAN taggings, the addresses and L4
//! headers every fixture uses, cut headers and IPv6 extension-header chains.
use xdpgate_common::Family;
use xdpgate_tests::packet::{Ethernet, Ext, Ipv4, Ipv6, Transport, ethertype, proto};

use Family::{Ipv4 as V4, Ipv6 as V6};

use crate::{A4, A6, B4, B6, PAYLOAD};

/// VLAN taggings applied to both families: name and `(TPID, TCI)` outermost first.
pub(crate) const TAGGINGS: &[(&str, &[(u16, u16)])] = &[
    ("802.1Q", &[(0x8100, 100)]),
    ("single 802.1ad", &[(0x88a8, 100)]),
    ("QinQ 88a8/8100", &[(0x88a8, 10), (0x8100, 20)]),
    ("double 8100/8100", &[(0x8100, 10), (0x8100, 20)]),
    ("88a8/88a8", &[(0x88a8, 10), (0x88a8, 20)]),
];

pub(crate) fn tagged(tags: &[(u16, u16)], ether_type: u16) -> Ethernet {
    tags.iter()
        .fold(Ethernet::new(ether_type), |e, &(tpid, tci)| {
            e.tag(tpid, tci)
        })
}

pub(crate) fn ip4(l4: &Transport) -> Ipv4 {
    Ipv4::new(A4, B4, l4.proto())
}

pub(crate) fn ip6(l4: &Transport) -> Ipv6 {
    Ipv6::new(A6, B6, l4.proto())
}

pub(crate) fn frame4(ip: &Ipv4, l4: &Transport) -> Vec<u8> {
    Ethernet::new(ethertype::IPV4).build(&ip.build(&l4.bytes()))
}

pub(crate) fn frame6(ip: &Ipv6, l4: &Transport) -> Vec<u8> {
    Ethernet::new(ethertype::IPV6).build(&ip.build(&l4.bytes()))
}

pub(crate) fn tcp() -> Transport {
    Transport::tcp(40000, 443).payload(PAYLOAD)
}

pub(crate) fn udp() -> Transport {
    Transport::udp(5353, 53).payload(PAYLOAD)
}

/// The L4 protocols of each family, each with a payload.
pub(crate) fn transports(family: Family) -> Vec<(&'static str, Transport)> {
    let icmp = match family {
        V4 => ("icmp echo", Transport::icmp(8, 0).payload(PAYLOAD)),
        _ => ("icmpv6 echo", Transport::icmpv6(128, 0).payload(PAYLOAD)),
    };
    vec![
        ("tcp", tcp()),
        ("udp", udp()),
        ("sctp", Transport::sctp(2905, 2905).payload(PAYLOAD)),
        icmp,
    ]
}

/// The first `n` bytes of `l4` (header and payload), still announced as its protocol.
pub(crate) fn cut(l4: &Transport, n: usize) -> Transport {
    Transport::raw(l4.proto(), &l4.bytes()[..n])
}

/// Bytes of L4 header the parser needs for `proto` in `family` (0: it reads none).
/// From `DropReason::TruncatedL4`: TCP 20, UDP 8, SCTP 12, ICMP/ICMPv6 4.
pub(crate) fn l4_need(family: Family, proto: u8) -> usize {
    match (family, proto) {
        (_, proto::TCP) => 20,
        (_, proto::UDP) => 8,
        (_, proto::SCTP) => 12,
        (V4, proto::ICMP) | (V6, proto::ICMPV6) => 4,
        _ => 0,
    }
}

/// An IPv6 frame whose IP packet is cut after `keep` bytes of the payload
/// (extension headers included), with a payload length saying exactly that.
pub(crate) fn frame6_cut(ip: &Ipv6, l4: &Transport, keep: usize) -> Vec<u8> {
    let mut p = ip.clone().payload_len(keep as u16).build(&l4.bytes());
    p.truncate(Ipv6::HEADER_LEN + keep);
    Ethernet::new(ethertype::IPV6).build(&p)
}

/// `n` extension headers cycling through every kind (fragment headers are
/// atomic: offset 0, no M flag).
pub(crate) fn ext_chain(n: usize) -> Vec<Ext> {
    let kinds = [
        Ext::hop_by_hop(),
        Ext::dest_opts(),
        Ext::routing(),
        Ext::fragment(0, false),
        Ext::ah(),
    ];
    (0..n).map(|i| kinds[i % kinds.len()].clone()).collect()
}

pub(crate) fn with_exts(mut ip: Ipv6, exts: Vec<Ext>) -> Ipv6 {
    ip.exts = exts;
    ip
}

/// The single extension headers, by name.
pub(crate) fn single_exts() -> Vec<(&'static str, Ext)> {
    vec![
        ("hop-by-hop", Ext::hop_by_hop()),
        (
            "hop-by-hop router alert",
            Ext::HopByHop(vec![5, 2, 0, 0]), // RFC 2711, MLD
        ),
        ("routing type 2", Ext::routing()),
        ("destination options", Ext::dest_opts()),
        (
            "24-byte destination options",
            Ext::DestOpts([vec![0x1e, 20], vec![0; 20]].concat()),
        ),
        ("ah (24 bytes, length field 4)", Ext::ah()),
        (
            "ah without ICV (16 bytes, length field 2)",
            Ext::Ah {
                spi: 7,
                seq: 9,
                icv: vec![],
            },
        ),
        ("atomic fragment", Ext::fragment(0, false)),
    ]
}

//! Helpers shared by the ACL test binaries (`acl_diff.rs`, `verify.rs`).
use std::net::IpAddr;

use xdpgate_model::acl::reference::PacketInfo;
use xdpgate_tests::packet::{Ethernet, Ext, Ipv4, Ipv6, Transport, ethertype};

/// The frame a parser would turn into `pkt`.
pub(crate) fn frame_of(pkt: &PacketInfo) -> Vec<u8> {
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

//! Truncation sweeps: complete frames with the offsets where each header the
//! parser reads ends, every prefix of them, and what each prefix must give.
use xdpgate_common::{DropReason, Family};
use xdpgate_tests::packet::{Ethernet, Ext, Ipv4, Ipv6, Transport, checksum, ethertype};

use DropReason::*;
use Family::{Ipv4 as V4, Ipv6 as V6, Other};

use crate::{
    PAYLOAD,
    frames::{ip4, ip6, l4_need, tcp, udp},
    runner::{
        Case,
        Want::{self, Bad, Pass, Refused},
        case,
    },
};

/// What `BPF_PROG_TEST_RUN` does with frames shorter than an Ethernet header.
///
/// Observed on Linux 6.18: the kernel refuses every XDP test run with fewer
/// than 14 bytes (`ETH_HLEN`) of data, 0 bytes included, with `EINVAL`
/// before the program runs (the size check of `net/bpf/test_run.c`), so
/// nothing is counted, whatever the interface's malformed policy. From 14
/// bytes on the program runs. `TruncatedEthernet` therefore cannot be produced
/// through the test-run path; it is asserted nowhere else.
pub(crate) fn short_frame() -> Want {
    Refused
}

/// A complete, well-formed frame and where the headers the parser reads end.
pub(crate) struct Layered {
    pub(crate) name: String,
    pub(crate) frame: Vec<u8>,
    family: Family,
    /// End of the Ethernet header with its tags.
    eth_end: usize,
    /// End of the IPv4 header with its options, or of the IPv6 fixed header.
    pub(crate) ip_end: usize,
    /// After `ip_end`: where each extension header and the L4 bytes the
    /// parser needs end, with the reason when the packet ends before.
    inner: Vec<(usize, DropReason)>,
}

impl Layered {
    #[expect(
        clippy::needless_pass_by_value,
        reason = "the fixture table builds each layer in place; taken by value, its rows stay short"
    )]
    fn v4(name: &str, eth: Ethernet, ip: Ipv4, l4: Transport) -> Layered {
        assert_eq!(eth.ether_type, ethertype::IPV4);
        let frame = eth.build(&ip.build(&l4.bytes()));
        let eth_end = eth.header_len();
        let ip_end = eth_end + ip.header_len();
        let mut inner = Vec::new();
        let need = l4_need(V4, l4.proto());
        if ip.frag_offset == 0 && need > 0 {
            inner.push((ip_end + need, TruncatedL4));
        }
        Layered {
            name: name.into(),
            frame,
            family: V4,
            eth_end,
            ip_end,
            inner,
        }
    }

    #[expect(
        clippy::needless_pass_by_value,
        reason = "the fixture table builds each layer in place; taken by value, its rows stay short"
    )]
    fn v6(name: &str, eth: Ethernet, ip: Ipv6, l4: Transport) -> Layered {
        assert_eq!(eth.ether_type, ethertype::IPV6);
        let frame = eth.build(&ip.build(&l4.bytes()));
        let eth_end = eth.header_len();
        let ip_end = eth_end + Ipv6::HEADER_LEN;
        let mut inner = Vec::new();
        let mut at = ip_end;
        let mut later = false;
        for ext in &ip.exts {
            at += ext.len();
            inner.push((at, TruncatedIpv6Ext));
            if let Ext::Fragment { offset, .. } = ext {
                later |= *offset != 0;
            }
        }
        let need = l4_need(V6, l4.proto());
        if !later && need > 0 {
            inner.push((at + need, TruncatedL4));
        }
        Layered {
            name: name.into(),
            frame,
            family: V6,
            eth_end,
            ip_end,
            inner,
        }
    }

    /// What the first `n` bytes of the frame must give, lengths unchanged (so
    /// once the IP header is complete its length field exceeds the frame).
    fn prefix_want(&self, n: usize) -> Want {
        if n < Ethernet::HEADER_LEN {
            short_frame()
        } else if n < self.eth_end {
            Bad(Other, TruncatedVlan)
        } else if n < self.ip_end {
            // IPv4: the base header or its options are cut (options are
            // skipped before the total length is checked).
            match self.family {
                V4 => Bad(V4, TruncatedIpv4),
                _ => Bad(V6, TruncatedIpv6),
            }
        } else {
            match self.family {
                V4 => Bad(V4, BadIpv4Length),
                _ => Bad(V6, BadIpv6Header),
            }
        }
    }

    /// The first `n` bytes (`n >= ip_end`) with the IP length field rewritten
    /// to end exactly there (IPv4 checksum fixed).
    pub(crate) fn consistent_prefix(&self, n: usize) -> Vec<u8> {
        let mut f = self.frame[..n].to_vec();
        let e = self.eth_end;
        match self.family {
            V4 => {
                f[e + 2..e + 4].copy_from_slice(&((n - e) as u16).to_be_bytes());
                f[e + 10..e + 12].copy_from_slice(&[0, 0]);
                let sum = checksum(&f[e..self.ip_end]);
                f[e + 10..e + 12].copy_from_slice(&sum.to_be_bytes());
            }
            _ => {
                let len = (n - self.ip_end) as u16;
                f[e + 4..e + 6].copy_from_slice(&len.to_be_bytes());
            }
        }
        f
    }

    /// What [`Layered::consistent_prefix`] of `n` bytes must give.
    pub(crate) fn consistent_want(&self, n: usize) -> Want {
        match self.inner.iter().find(|(end, _)| n < *end) {
            Some(&(_, reason)) => Bad(self.family, reason),
            None => Pass(self.family),
        }
    }
}

pub(crate) fn layered() -> Vec<Layered> {
    let opts = [0x94, 0x04, 0, 0, 1, 1, 1, 0]; // router alert, NOPs, end: IHL 7
    vec![
        Layered::v4(
            "802.1Q ipv4 + 8 option bytes + tcp",
            Ethernet::new(ethertype::IPV4).vlan(42),
            ip4(&tcp()).options(&opts),
            tcp(),
        ),
        Layered::v6(
            "QinQ ipv6 + hop-by-hop + fragment (first) + udp",
            Ethernet::new(ethertype::IPV6).qinq(100, 200),
            ip6(&udp())
                .ext(Ext::hop_by_hop())
                .ext(Ext::fragment(0, true)),
            udp(),
        ),
        Layered::v6(
            "ipv6 + routing + icmpv6",
            Ethernet::new(ethertype::IPV6),
            ip6(&Transport::icmpv6(128, 0)).ext(Ext::routing()),
            Transport::icmpv6(128, 0).payload(PAYLOAD),
        ),
        Layered::v4(
            "QinQ ipv4 first fragment + IHL 15 + sctp",
            Ethernet::new(ethertype::IPV4).qinq(1, 2),
            ip4(&Transport::sctp(1, 2))
                .options(&[1; 40])
                .fragment(0, true),
            Transport::sctp(1, 2).payload(PAYLOAD),
        ),
        Layered::v4(
            "ipv4 icmp",
            Ethernet::new(ethertype::IPV4),
            ip4(&Transport::icmp(0, 0)),
            Transport::icmp(0, 0).payload(b"pong"),
        ),
        Layered::v6(
            "802.1Q ipv6 + ah + destination options + tcp",
            Ethernet::new(ethertype::IPV6).vlan(3),
            ip6(&tcp()).ext(Ext::ah()).ext(Ext::dest_opts()),
            tcp(),
        ),
    ]
}

/// Every prefix of every layered frame, lengths unchanged.
pub(crate) fn prefix_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for l in layered() {
        for n in 0..l.frame.len() {
            v.push(case(
                format!("{}: first {n} of {} bytes", l.name, l.frame.len()),
                l.frame[..n].to_vec(),
                l.prefix_want(n),
            ));
        }
    }
    v
}

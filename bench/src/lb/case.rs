//! The classes: a frame, the action and output frame one run must give, and
//! the counter of its path.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use xdpgate_common::wire::{IPPROTO_IPIP, IPPROTO_IPV6};

use anyhow::{Context as _, ensure};
use xdpgate::datapath::TestRunOutcome;
use xdpgate_model::lb::ServiceId;
use xdpgate_tests::packet::{
    Ethernet, Ipv4, Ipv6, Transport, checksum, ethertype, hex, pad, proto, tcp::flags as tcp_flags,
};

use super::{DECAP_DST, FIRST_SPORT, PORT, TUNNEL_SRC, VETH_MAC, action_name, backend_mac};
use crate::workload;

/// Which datapath counter counts a class's path.
#[derive(Clone, Copy)]
pub(super) enum PathCounter {
    /// The service's forwarded packets.
    Service(ServiceId),
    /// Decapsulated IPv4-in-IPv4 packets on slot 1.
    Decap,
    /// None (the packet is passed unchanged).
    None,
}

/// What one run must do to the frame.
#[derive(Clone, Copy)]
pub(super) enum Expect {
    /// Encapsulated to `backend`, sent to its neighbour.
    Encap(IpAddr),
    /// Ethernet addresses rewritten to reach `backend`.
    L2dsr(IpAddr),
    /// The outer IPv4 header removed.
    Decap,
    /// Not changed.
    Unchanged,
}

pub(super) struct Case {
    pub(super) name: &'static str,
    pub(super) what: String,
    pub(super) frame: Vec<u8>,
    pub(super) action: u32,
    pub(super) sport: u16,
    pub(super) backend: Option<IpAddr>,
    pub(super) expect: Expect,
    pub(super) counter: PathCounter,
    /// Judged against `WRAPPED_TARGET_RATIO` (the SYN and ACK classes).
    pub(super) target: bool,
}

pub(super) fn tcp_v4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16) -> Vec<u8> {
    let l4 = Transport::tcp(sport, PORT).bytes();
    let ip = Ipv4::new(src.octets(), dst.octets(), proto::TCP).build(&l4);
    pad(Ethernet::new(ethertype::IPV4).build(&ip), 60)
}

pub(super) fn tcp_v6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16) -> Vec<u8> {
    let l4 = Transport::tcp(sport, PORT).bytes();
    let ip = Ipv6::new(src.octets(), dst.octets(), proto::TCP).build(&l4);
    Ethernet::new(ethertype::IPV6).build(&ip)
}

/// IPIP: `TUNNEL_SRC` -> `DECAP_DST`, inner IPv4 TCP from the client to
/// `inner_dst`.
pub(super) fn ipip(inner_dst: Ipv4Addr) -> Vec<u8> {
    let l4 = Transport::tcp(FIRST_SPORT, PORT).bytes();
    let inner = Ipv4::new(workload::MISS_V4.octets(), inner_dst.octets(), proto::TCP).build(&l4);
    let outer = Ipv4::new(TUNNEL_SRC.octets(), DECAP_DST.octets(), IPPROTO_IPIP).build(&inner);
    pad(Ethernet::new(ethertype::IPV4).build(&outer), 60)
}

/// The ACK of the flow whose SYN is `syn` (a frame of [`tcp_v4`] or
/// [`tcp_v6`]): the same frame with the TCP flags ACK instead of SYN.
pub(super) fn ack(syn: &[u8]) -> Vec<u8> {
    let l4 = if syn[12..14] == [0x08, 0x00] {
        14 + 20
    } else {
        14 + 40
    };
    let mut f = syn.to_vec();
    f[l4 + 13] = tcp_flags::ACK;
    f
}

/// Checks one run's action and output frame against the class.
pub(super) fn verify(c: &Case, out: &TestRunOutcome) -> anyhow::Result<()> {
    ensure!(
        out.action == c.action,
        "{}: xdpgate returned {} ({}), expected {} ({})",
        c.name,
        out.action,
        action_name(out.action),
        c.action,
        action_name(c.action)
    );
    let (f, o) = (&c.frame, &out.frame);
    let r = verify_frame(c, f, o);
    r.with_context(|| format!("{}: in {}, out {}", c.name, hex(f), hex(o)))
}

/// Checks one run's output frame `o` (of the input `f`) against the class.
fn verify_frame(c: &Case, f: &[u8], o: &[u8]) -> anyhow::Result<()> {
    match c.expect {
        Expect::Encap(backend) => {
            let inner_proto = if f[12..14] == [0x08, 0x00] {
                IPPROTO_IPIP
            } else {
                IPPROTO_IPV6
            };
            ensure!(
                o[0..6] == backend_mac(backend) && o[6..12] == VETH_MAC,
                "{}: Ethernet addresses {:02x?} are not those of {backend}'s neighbour",
                c.name,
                &o[0..12]
            );
            match backend {
                IpAddr::V4(b) => {
                    ensure!(o.len() == f.len() + 20, "{}: length {}", c.name, o.len());
                    ensure!(
                        o[12..14] == [0x08, 0x00]
                            && o[14] == 0x45
                            && o[23] == inner_proto
                            && o[30..34] == b.octets()
                            && checksum(&o[14..34]) == 0
                            && o[34..] == f[14..],
                        "{}: not an IPv4 encapsulation to {b}",
                        c.name
                    );
                }
                IpAddr::V6(b) => {
                    ensure!(o.len() == f.len() + 40, "{}: length {}", c.name, o.len());
                    ensure!(
                        o[12..14] == [0x86, 0xdd]
                            && o[14] >> 4 == 6
                            && o[20] == inner_proto
                            && o[38..54] == b.octets()
                            && o[54..] == f[14..],
                        "{}: not an IPv6 encapsulation to {b}",
                        c.name
                    );
                }
            }
        }
        Expect::L2dsr(backend) => {
            ensure!(
                o.len() == f.len()
                    && o[0..6] == backend_mac(backend)
                    && o[6..12] == VETH_MAC
                    && o[12..] == f[12..],
                "{}: not the frame readdressed to {backend}'s neighbour",
                c.name
            );
        }
        Expect::Decap => {
            ensure!(
                o.len() + 20 == f.len()
                    && o[0..12] == f[0..12]
                    && o[12..14] == [0x08, 0x00]
                    && o[14..] == f[34..],
                "{}: not the inner packet",
                c.name
            );
        }
        Expect::Unchanged => ensure!(o == f, "{}: the frame was changed", c.name),
    }
    Ok(())
}

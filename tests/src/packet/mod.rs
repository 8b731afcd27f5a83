//! A small, std-only builder of Ethernet frames for parser fixtures.
//!
//! Frames are built inside out: an L4 header ([`Transport`]) with its payload
//! becomes the payload of an [`Ipv4`] or [`Ipv6`] packet, which becomes the
//! payload of an [`Ethernet`] frame:
//!
//! ```
//! use xdpgate_tests::packet::{Ethernet, Ipv4, Transport, ethertype};
//!
//! let tcp = Transport::tcp(40000, 80).payload(b"hi");
//! let ip = Ipv4::new([192, 0, 2, 1], [198, 51, 100, 2], tcp.proto());
//! let frame = Ethernet::new(ethertype::IPV4)
//!     .vlan(100)
//!     .build(&ip.build(&tcp.bytes()));
//! assert_eq!(frame.len(), 18 + 20 + 20 + 2);
//! ```
//!
//! Every length, next-header and checksum field is computed from the bytes
//! actually emitted, unless it is overridden on purpose to build an
//! inconsistent header ([`Ipv4::tot_len`], [`Ipv4::ihl`], [`Ipv4::version`],
//! [`Ipv6::payload_len`], [`Ipv6::version`]). L4 checksums are left zero except
//! ICMP's (which needs no pseudo-header): the datapath does not verify them.
//! Nothing is padded to the Ethernet minimum of 60 bytes; use [`pad`] for that.
//!
//! The EtherTypes and protocol numbers here are written out on purpose
//! rather than taken from `xdpgate_common::wire`: this builder is the tests'
//! independent account of the wire format, so a wrong constant in the shared
//! ABI makes the fixtures fail instead of agreeing with it.
//!
//! Files: this one (EtherTypes, protocol numbers, helpers, [`Ethernet`]),
//! `ipv4.rs` ([`Ipv4`]), `ipv6.rs` ([`Ipv6`] and its extension headers
//! [`Ext`]), `transport.rs` ([`Transport`]), `tcp.rs` ([`Tcp`] segments with
//! options and checksums, [`TcpSegment`] to read them back).

mod ipv4;
mod ipv6;
pub mod tcp;
#[cfg(test)]
mod tests;
mod transport;

pub use ipv4::Ipv4;
pub use ipv6::{Ext, Ipv6};
pub use tcp::{Tcp, TcpOption, TcpSegment};
pub use transport::Transport;

/// EtherTypes.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// 802.1Q VLAN tag (C-tag).
    pub const VLAN: u16 = 0x8100;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
    /// 802.1ad service tag (S-tag, the outer tag of QinQ).
    pub const QINQ: u16 = 0x88a8;
    /// LLDP.
    pub const LLDP: u16 = 0x88cc;
}

/// IP protocol numbers (IPv4 protocol, IPv6 next header).
pub mod proto {
    /// IPv6 hop-by-hop options.
    pub const HOPOPTS: u8 = 0;
    /// ICMP (IPv4).
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 routing header.
    pub const ROUTING: u8 = 43;
    /// IPv6 fragment header.
    pub const FRAGMENT: u8 = 44;
    /// GRE.
    pub const GRE: u8 = 47;
    /// Authentication header.
    pub const AH: u8 = 51;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 "no next header".
    pub const NONE: u8 = 59;
    /// IPv6 destination options.
    pub const DSTOPTS: u8 = 60;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

/// The Internet checksum (RFC 1071) of `data`: the one's complement of the
/// one's-complement sum of its 16-bit big-endian words (an odd last byte is
/// padded with zero). Over a header that carries a correct checksum it is 0.
pub fn checksum(data: &[u8]) -> u16 {
    // The datapath's own implementation (common/src/csum.rs).
    xdpgate_common::csum::checksum(data)
}

/// `frame` extended with zero bytes to at least `len` bytes (e.g. 60, the
/// Ethernet minimum without FCS), as a NIC pads short frames.
pub fn pad(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    if frame.len() < len {
        frame.resize(len, 0);
    }
    frame
}

/// `bytes` as lower-case hex without separators (for failure messages).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An Ethernet II header with up to any number of VLAN tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ethernet {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// VLAN tags as `(TPID, TCI)`, outermost first.
    pub tags: Vec<(u16, u16)>,
    /// The EtherType after the last tag (any value; below 0x0600 it is an
    /// 802.3 length, which the builder does not check).
    pub ether_type: u16,
}

impl Ethernet {
    /// Length of the untagged header.
    pub const HEADER_LEN: usize = 14;
    /// Length of one VLAN tag (TPID and TCI).
    pub const TAG_LEN: usize = 4;

    /// An untagged header between two locally administered MACs.
    pub fn new(ether_type: u16) -> Self {
        Ethernet {
            dst: [0x02, 0, 0, 0, 0, 0x02],
            src: [0x02, 0, 0, 0, 0, 0x01],
            tags: Vec::new(),
            ether_type,
        }
    }

    /// Adds a tag with protocol identifier `tpid` inside the existing ones.
    pub fn tag(mut self, tpid: u16, tci: u16) -> Self {
        self.tags.push((tpid, tci));
        self
    }

    /// Adds an 802.1Q tag (TPID 0x8100) for VLAN `vid` inside the existing ones.
    pub fn vlan(self, vid: u16) -> Self {
        self.tag(ethertype::VLAN, vid & 0x0fff)
    }

    /// Adds QinQ tags: an 802.1ad S-tag (0x88a8) for `outer`, then an 802.1Q
    /// C-tag (0x8100) for `inner`.
    pub fn qinq(self, outer: u16, inner: u16) -> Self {
        self.tag(ethertype::QINQ, outer & 0x0fff).vlan(inner)
    }

    /// Length of the header with its tags.
    pub fn header_len(&self) -> usize {
        Self::HEADER_LEN + Self::TAG_LEN * self.tags.len()
    }

    /// The header followed by `payload`.
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header_len() + payload.len());
        out.extend_from_slice(&self.dst);
        out.extend_from_slice(&self.src);
        for &(tpid, tci) in &self.tags {
            out.extend_from_slice(&tpid.to_be_bytes());
            out.extend_from_slice(&tci.to_be_bytes());
        }
        // The TPID of each tag sits where the previous EtherType would be, so
        // writing TPID then TCI per tag and the EtherType last is the wire order.
        out.extend_from_slice(&self.ether_type.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }
}

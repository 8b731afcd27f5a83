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

/// An IPv4 header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4 {
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
    /// Protocol of the payload.
    pub protocol: u8,
    /// Type of service.
    pub tos: u8,
    /// Identification.
    pub id: u16,
    /// Time to live.
    pub ttl: u8,
    /// The DF flag.
    pub dont_fragment: bool,
    /// The MF flag.
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units (13 bits).
    pub frag_offset: u16,
    /// Option bytes, padded with zeros (end of option list) to a multiple of 4.
    pub options: Vec<u8>,
    /// Total length to write instead of the computed one.
    pub tot_len: Option<u16>,
    /// IHL to write instead of the computed one (4 bits).
    pub ihl: Option<u8>,
    /// Version to write instead of 4 (4 bits).
    pub version: Option<u8>,
}

impl Ipv4 {
    /// Length of the header without options.
    pub const MIN_HEADER_LEN: usize = 20;

    /// An unfragmented header without options.
    pub fn new(src: [u8; 4], dst: [u8; 4], protocol: u8) -> Self {
        Ipv4 {
            src,
            dst,
            protocol,
            tos: 0,
            id: 0x1234,
            ttl: 64,
            dont_fragment: false,
            more_fragments: false,
            frag_offset: 0,
            options: Vec::new(),
            tot_len: None,
            ihl: None,
            version: None,
        }
    }

    /// Sets the option bytes (padded to a multiple of 4 when built).
    pub fn options(mut self, options: &[u8]) -> Self {
        self.options = options.to_vec();
        self
    }

    /// Makes the packet a fragment at `offset` (8-byte units) with the MF flag `more`.
    pub fn fragment(mut self, offset: u16, more: bool) -> Self {
        self.frag_offset = offset;
        self.more_fragments = more;
        self
    }

    /// Sets the DF flag.
    pub fn dont_fragment(mut self) -> Self {
        self.dont_fragment = true;
        self
    }

    /// Writes `tot_len` as the total length instead of the computed one.
    pub fn tot_len(mut self, tot_len: u16) -> Self {
        self.tot_len = Some(tot_len);
        self
    }

    /// Writes `ihl` (4 bits) as the IHL instead of the computed one; the header
    /// bytes emitted do not change.
    pub fn ihl(mut self, ihl: u8) -> Self {
        self.ihl = Some(ihl);
        self
    }

    /// Writes `version` (4 bits) instead of 4.
    pub fn version(mut self, version: u8) -> Self {
        self.version = Some(version);
        self
    }

    fn padded_options(&self) -> Vec<u8> {
        let mut o = self.options.clone();
        o.resize(o.len().div_ceil(4) * 4, 0);
        o
    }

    /// Length of the header actually emitted: 20 plus the padded options.
    pub fn header_len(&self) -> usize {
        Self::MIN_HEADER_LEN + self.options.len().div_ceil(4) * 4
    }

    /// The header followed by `payload`, with the total length (unless
    /// overridden) covering both and the header checksum computed over the
    /// header as emitted (overrides included).
    ///
    /// Panics if the options need an IHL above 15 and none is given, or if the
    /// total length does not fit 16 bits.
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let hl = self.header_len();
        let ihl = self.ihl.unwrap_or_else(|| {
            assert!(
                hl <= 60,
                "{} option bytes need an IHL above 15",
                self.options.len()
            );
            (hl / 4) as u8
        });
        let tot_len = self.tot_len.unwrap_or_else(|| {
            u16::try_from(hl + payload.len()).expect("IPv4 total length above 65535")
        });
        let flags_frag = (u16::from(self.dont_fragment) << 14)
            | (u16::from(self.more_fragments) << 13)
            | (self.frag_offset & 0x1fff);
        let mut out = Vec::with_capacity(hl + payload.len());
        out.push((self.version.unwrap_or(4) << 4) | (ihl & 0x0f));
        out.push(self.tos);
        out.extend_from_slice(&tot_len.to_be_bytes());
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&flags_frag.to_be_bytes());
        out.push(self.ttl);
        out.push(self.protocol);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.src);
        out.extend_from_slice(&self.dst);
        out.extend_from_slice(&self.padded_options());
        let sum = checksum(&out[..hl]);
        out[10..12].copy_from_slice(&sum.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }
}

/// An IPv6 extension header. Length fields are computed when encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options: the option TLVs, padded with Pad1/PadN so the
    /// header is a multiple of 8 bytes.
    HopByHop(Vec<u8>),
    /// Routing header: type, segments left and the type-specific data after the
    /// first 4 bytes, zero-padded so the header is a multiple of 8 bytes.
    Routing {
        /// Routing type.
        routing_type: u8,
        /// Segments left.
        segments_left: u8,
        /// Type-specific data.
        data: Vec<u8>,
    },
    /// Destination options, padded like [`Ext::HopByHop`].
    DestOpts(Vec<u8>),
    /// Fragment header (always 8 bytes).
    Fragment {
        /// Offset in 8-byte units (13 bits).
        offset: u16,
        /// The M (more fragments) flag.
        more: bool,
        /// Identification.
        id: u32,
    },
    /// Authentication header: the ICV is zero-padded so the header is a
    /// multiple of 8 bytes; its length field counts 4-byte units minus 2.
    Ah {
        /// Security parameters index.
        spi: u32,
        /// Sequence number.
        seq: u32,
        /// Integrity check value.
        icv: Vec<u8>,
    },
}

impl Ext {
    /// An empty hop-by-hop options header (8 bytes, length field 0).
    pub fn hop_by_hop() -> Self {
        Ext::HopByHop(Vec::new())
    }

    /// An empty destination options header (8 bytes, length field 0).
    pub fn dest_opts() -> Self {
        Ext::DestOpts(Vec::new())
    }

    /// A type 2 routing header (RFC 6275: 4 reserved bytes and one address;
    /// 24 bytes, length field 2, segments left 1).
    pub fn routing() -> Self {
        let mut data = vec![0; 4];
        data.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99,
        ]);
        Ext::Routing {
            routing_type: 2,
            segments_left: 1,
            data,
        }
    }

    /// A fragment header at `offset` (8-byte units) with the M flag `more`.
    pub fn fragment(offset: u16, more: bool) -> Self {
        Ext::Fragment {
            offset,
            more,
            id: 0xdead_beef,
        }
    }

    /// An AH with a 12-byte ICV (HMAC-SHA1-96): 24 bytes, length field 4.
    pub fn ah() -> Self {
        Ext::Ah {
            spi: 0x100,
            seq: 1,
            icv: vec![0xa5; 12],
        }
    }

    /// The protocol number that announces this header.
    pub fn proto(&self) -> u8 {
        match self {
            Ext::HopByHop(_) => proto::HOPOPTS,
            Ext::Routing { .. } => proto::ROUTING,
            Ext::DestOpts(_) => proto::DSTOPTS,
            Ext::Fragment { .. } => proto::FRAGMENT,
            Ext::Ah { .. } => proto::AH,
        }
    }

    /// Encoded length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Ext::HopByHop(o) | Ext::DestOpts(o) => (2 + o.len()).div_ceil(8) * 8,
            Ext::Routing { data, .. } => (4 + data.len()).div_ceil(8) * 8,
            Ext::Fragment { .. } => 8,
            Ext::Ah { icv, .. } => (12 + icv.len()).div_ceil(8) * 8,
        }
    }

    /// Always false: every extension header is at least 8 bytes.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The header with `next_header` in its first byte.
    ///
    /// Panics if the header is too long for its length field.
    pub fn encode(&self, next_header: u8) -> Vec<u8> {
        let total = self.len();
        let mut out = Vec::with_capacity(total);
        out.push(next_header);
        match self {
            Ext::HopByHop(options) | Ext::DestOpts(options) => {
                out.push(u8::try_from(total / 8 - 1).expect("options too long"));
                out.extend_from_slice(options);
                match total - out.len() {
                    0 => {}
                    1 => out.push(0), // Pad1
                    n => {
                        out.extend_from_slice(&[1, (n - 2) as u8]); // PadN
                        out.resize(total, 0);
                    }
                }
            }
            Ext::Routing {
                routing_type,
                segments_left,
                data,
            } => {
                out.push(u8::try_from(total / 8 - 1).expect("routing data too long"));
                out.extend_from_slice(&[*routing_type, *segments_left]);
                out.extend_from_slice(data);
                out.resize(total, 0);
            }
            Ext::Fragment { offset, more, id } => {
                out.push(0);
                out.extend_from_slice(&((offset << 3) | u16::from(*more)).to_be_bytes());
                out.extend_from_slice(&id.to_be_bytes());
            }
            Ext::Ah { spi, seq, icv } => {
                out.push(u8::try_from(total / 4 - 2).expect("ICV too long"));
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&spi.to_be_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(icv);
                out.resize(total, 0);
            }
        }
        out
    }
}

/// An IPv6 fixed header and its extension-header chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6 {
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// The upper-layer protocol after the extension headers.
    pub next_header: u8,
    /// Traffic class.
    pub traffic_class: u8,
    /// Flow label (20 bits).
    pub flow_label: u32,
    /// Hop limit.
    pub hop_limit: u8,
    /// Extension headers in wire order.
    pub exts: Vec<Ext>,
    /// Payload length to write instead of the computed one.
    pub payload_len: Option<u16>,
    /// Version to write instead of 6 (4 bits).
    pub version: Option<u8>,
}

impl Ipv6 {
    /// Length of the fixed header.
    pub const HEADER_LEN: usize = 40;

    /// A header without extension headers whose payload is `next_header`.
    pub fn new(src: [u8; 16], dst: [u8; 16], next_header: u8) -> Self {
        Ipv6 {
            src,
            dst,
            next_header,
            traffic_class: 0,
            flow_label: 0,
            hop_limit: 64,
            exts: Vec::new(),
            payload_len: None,
            version: None,
        }
    }

    /// Appends an extension header to the chain.
    pub fn ext(mut self, ext: Ext) -> Self {
        self.exts.push(ext);
        self
    }

    /// Writes `len` as the payload length instead of the computed one.
    pub fn payload_len(mut self, len: u16) -> Self {
        self.payload_len = Some(len);
        self
    }

    /// Writes `version` (4 bits) instead of 6.
    pub fn version(mut self, version: u8) -> Self {
        self.version = Some(version);
        self
    }

    /// Length of the fixed header and the extension headers.
    pub fn header_len(&self) -> usize {
        Self::HEADER_LEN + self.exts.iter().map(Ext::len).sum::<usize>()
    }

    /// The fixed header, the extension chain (each header naming the next)
    /// and `payload`; the payload length (unless overridden) covers the chain
    /// and `payload`.
    ///
    /// Panics if the payload length does not fit 16 bits.
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let mut chain = Vec::with_capacity(self.header_len() - Self::HEADER_LEN);
        for (i, ext) in self.exts.iter().enumerate() {
            let next = self.exts.get(i + 1).map_or(self.next_header, Ext::proto);
            chain.extend_from_slice(&ext.encode(next));
        }
        let payload_len = self.payload_len.unwrap_or_else(|| {
            u16::try_from(chain.len() + payload.len()).expect("IPv6 payload length above 65535")
        });
        let first = self.exts.first().map_or(self.next_header, Ext::proto);
        let word = (u32::from(self.version.unwrap_or(6) & 0x0f) << 28)
            | (u32::from(self.traffic_class) << 20)
            | (self.flow_label & 0x000f_ffff);
        let mut out = Vec::with_capacity(Self::HEADER_LEN + chain.len() + payload.len());
        out.extend_from_slice(&word.to_be_bytes());
        out.extend_from_slice(&payload_len.to_be_bytes());
        out.push(first);
        out.push(self.hop_limit);
        out.extend_from_slice(&self.src);
        out.extend_from_slice(&self.dst);
        out.extend_from_slice(&chain);
        out.extend_from_slice(payload);
        out
    }
}

/// An L4 header and its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transport {
    proto: u8,
    header: Vec<u8>,
    payload: Vec<u8>,
}

impl Transport {
    /// TCP header length without options.
    pub const TCP_LEN: usize = 20;
    /// UDP header length.
    pub const UDP_LEN: usize = 8;
    /// SCTP common header length.
    pub const SCTP_LEN: usize = 12;
    /// ICMP and ICMPv6 header length (type, code, checksum, 4 more bytes).
    pub const ICMP_LEN: usize = 8;

    /// A 20-byte TCP SYN header (data offset 5).
    pub fn tcp(sport: u16, dport: u16) -> Self {
        let mut h = Vec::with_capacity(Self::TCP_LEN);
        h.extend_from_slice(&sport.to_be_bytes());
        h.extend_from_slice(&dport.to_be_bytes());
        h.extend_from_slice(&1u32.to_be_bytes()); // sequence number
        h.extend_from_slice(&0u32.to_be_bytes()); // acknowledgment number
        h.extend_from_slice(&[5 << 4, 0x02]); // data offset 5, SYN
        h.extend_from_slice(&0xffffu16.to_be_bytes()); // window
        h.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        Transport {
            proto: proto::TCP,
            header: h,
            payload: Vec::new(),
        }
    }

    /// An 8-byte UDP header; its length field covers the payload.
    pub fn udp(sport: u16, dport: u16) -> Self {
        let mut h = Vec::with_capacity(Self::UDP_LEN);
        h.extend_from_slice(&sport.to_be_bytes());
        h.extend_from_slice(&dport.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 0]); // length (set in `bytes`), checksum
        Transport {
            proto: proto::UDP,
            header: h,
            payload: Vec::new(),
        }
    }

    /// A 12-byte SCTP common header (ports, verification tag, checksum 0).
    pub fn sctp(sport: u16, dport: u16) -> Self {
        let mut h = Vec::with_capacity(Self::SCTP_LEN);
        h.extend_from_slice(&sport.to_be_bytes());
        h.extend_from_slice(&dport.to_be_bytes());
        h.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 0]);
        Transport {
            proto: proto::SCTP,
            header: h,
            payload: Vec::new(),
        }
    }

    /// An 8-byte ICMP (IPv4) header with identifier and sequence 1; its
    /// checksum covers the payload.
    pub fn icmp(icmp_type: u8, code: u8) -> Self {
        Transport {
            proto: proto::ICMP,
            header: vec![icmp_type, code, 0, 0, 0, 1, 0, 1],
            payload: Vec::new(),
        }
    }

    /// An 8-byte ICMPv6 header with identifier and sequence 1 (checksum 0).
    pub fn icmpv6(icmp_type: u8, code: u8) -> Self {
        Transport {
            proto: proto::ICMPV6,
            header: vec![icmp_type, code, 0, 0, 0, 1, 0, 1],
            payload: Vec::new(),
        }
    }

    /// Arbitrary bytes announced as protocol `proto` (no header of its own).
    pub fn raw(proto: u8, bytes: &[u8]) -> Self {
        Transport {
            proto,
            header: Vec::new(),
            payload: bytes.to_vec(),
        }
    }

    /// Sets the payload after the header.
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// The protocol number.
    pub fn proto(&self) -> u8 {
        self.proto
    }

    /// Length of the header (0 for [`Transport::raw`]).
    pub fn header_len(&self) -> usize {
        self.header.len()
    }

    /// Header and payload, with the UDP length or ICMP checksum filled in.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = self.header.clone();
        out.extend_from_slice(&self.payload);
        if self.proto == proto::UDP && self.header.len() == Self::UDP_LEN {
            let len = u16::try_from(out.len()).expect("UDP length above 65535");
            out[4..6].copy_from_slice(&len.to_be_bytes());
        }
        if self.proto == proto::ICMP && self.header.len() == Self::ICMP_LEN {
            let sum = checksum(&out);
            out[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A4: [u8; 4] = [192, 0, 2, 1];
    const B4: [u8; 4] = [198, 51, 100, 2];
    const A6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const B6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
        assert_eq!(checksum(&[]), 0xffff);
        assert_eq!(checksum(&[0x12]), !0x1200);
    }

    #[test]
    fn ethernet_tags_and_ethertype_in_wire_order() {
        let f = Ethernet::new(ethertype::IPV6).qinq(10, 20).build(&[0xaa]);
        assert_eq!(f.len(), 14 + 8 + 1);
        assert_eq!(&f[12..14], &[0x88, 0xa8]);
        assert_eq!(&f[14..16], &[0x00, 10]);
        assert_eq!(&f[16..18], &[0x81, 0x00]);
        assert_eq!(&f[18..20], &[0x00, 20]);
        assert_eq!(&f[20..22], &[0x86, 0xdd]);
        assert_eq!(f[22], 0xaa);
        let plain = Ethernet::new(0x88cc);
        assert_eq!(plain.header_len(), 14);
        assert_eq!(&plain.build(&[])[12..], &[0x88, 0xcc]);
        assert_eq!(
            Ethernet::new(0x0800).vlan(0xfff7).tags,
            vec![(0x8100, 0x0ff7)]
        );
    }

    #[test]
    fn ipv4_lengths_flags_and_checksum() {
        let ip = Ipv4::new(A4, B4, proto::TCP);
        let p = ip.build(&[1, 2, 3]);
        assert_eq!(p.len(), 23);
        assert_eq!(p[0], 0x45);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 23);
        assert_eq!(p[9], proto::TCP);
        assert_eq!(&p[12..16], &A4);
        assert_eq!(&p[16..20], &B4);
        assert_eq!(checksum(&p[..20]), 0, "header checksum must verify");

        // 5 option bytes pad to 8: IHL 7.
        let ip = Ipv4::new(A4, B4, proto::UDP)
            .options(&[1, 1, 1, 1, 7])
            .fragment(185, true)
            .dont_fragment();
        assert_eq!(ip.header_len(), 28);
        let p = ip.build(&[0; 8]);
        assert_eq!(p[0], 0x47);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 36);
        assert_eq!(u16::from_be_bytes([p[6], p[7]]), 0x4000 | 0x2000 | 185);
        assert_eq!(&p[20..28], &[1, 1, 1, 1, 7, 0, 0, 0]);
        assert_eq!(checksum(&p[..28]), 0);

        for n in 0..=40 {
            let ip = Ipv4::new(A4, B4, proto::TCP).options(&vec![1; n]);
            let p = ip.build(&[]);
            assert_eq!(p.len(), 20 + n.div_ceil(4) * 4);
            assert_eq!(usize::from(p[0] & 0x0f) * 4, p.len());
            assert_eq!(checksum(&p), 0);
        }
    }

    #[test]
    fn ipv4_overrides_are_written_and_still_checksummed() {
        let p = Ipv4::new(A4, B4, proto::TCP)
            .tot_len(1000)
            .ihl(3)
            .version(6)
            .build(&[0; 4]);
        assert_eq!(p.len(), 24);
        assert_eq!(p[0], 0x63);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 1000);
        assert_eq!(checksum(&p[..20]), 0);
    }

    #[test]
    #[should_panic(expected = "IHL above 15")]
    fn ipv4_options_beyond_ihl_15_panic() {
        Ipv4::new(A4, B4, proto::TCP).options(&[1; 41]).build(&[]);
    }

    #[test]
    fn ext_header_lengths() {
        // (header, encoded length, length field)
        let cases = [
            (Ext::hop_by_hop(), 8, 0),
            (Ext::HopByHop(vec![5, 2, 0, 0]), 8, 0), // router alert: 6 + PadN(2)
            (Ext::HopByHop(vec![0x1e, 7, 1, 2, 3, 4, 5, 6, 7]), 16, 1),
            (Ext::dest_opts(), 8, 0),
            (Ext::DestOpts(vec![0x1e, 4, 1, 2, 3, 4]), 8, 0), // exactly 8, no padding
            (Ext::DestOpts(vec![0x1e, 3, 1, 2, 3]), 8, 0),    // Pad1
            (Ext::routing(), 24, 2),
            (Ext::fragment(0, true), 8, 0),
            (Ext::ah(), 24, 4),
            (
                Ext::Ah {
                    spi: 1,
                    seq: 2,
                    icv: vec![],
                },
                16,
                2,
            ),
        ];
        for (ext, len, field) in cases {
            let b = ext.encode(proto::UDP);
            assert_eq!(b.len(), len, "{ext:?}");
            assert_eq!(ext.len(), len, "{ext:?}");
            assert_eq!(b[0], proto::UDP, "{ext:?}");
            assert_eq!(b[1], field, "{ext:?}");
            let decoded = match ext {
                Ext::Ah { .. } => (usize::from(b[1]) + 2) * 4,
                Ext::Fragment { .. } => 8,
                _ => (usize::from(b[1]) + 1) * 8,
            };
            assert_eq!(decoded, len, "{ext:?}");
        }
        // Padding is Pad1 or a PadN that exactly fills the header.
        assert_eq!(Ext::DestOpts(vec![0x1e, 3, 1, 2, 3]).encode(0)[7], 0);
        assert_eq!(&Ext::hop_by_hop().encode(0)[2..], &[1, 4, 0, 0, 0, 0]);
        // Fragment: offset in the top 13 bits, M in bit 0.
        let f = Ext::fragment(185, true).encode(proto::TCP);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), (185 << 3) | 1);
        assert_eq!(&f[4..8], &0xdead_beefu32.to_be_bytes());
    }

    #[test]
    fn ipv6_chain_and_payload_length() {
        let ip = Ipv6::new(A6, B6, proto::UDP)
            .ext(Ext::hop_by_hop())
            .ext(Ext::routing())
            .ext(Ext::fragment(0, true))
            .ext(Ext::ah())
            .ext(Ext::dest_opts());
        assert_eq!(ip.header_len(), 40 + 8 + 24 + 8 + 24 + 8);
        let p = ip.build(&[0; 8]);
        assert_eq!(p.len(), ip.header_len() + 8);
        assert_eq!(p[0] >> 4, 6);
        assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])), p.len() - 40);
        assert_eq!(&p[8..24], &A6);
        assert_eq!(&p[24..40], &B6);
        // Walk the chain as a receiver would.
        let mut next = p[6];
        let mut at = 40;
        let mut seen = Vec::new();
        while next != proto::UDP {
            seen.push(next);
            let len = match next {
                proto::FRAGMENT => 8,
                proto::AH => (usize::from(p[at + 1]) + 2) * 4,
                _ => (usize::from(p[at + 1]) + 1) * 8,
            };
            next = p[at];
            at += len;
        }
        assert_eq!(
            seen,
            [
                proto::HOPOPTS,
                proto::ROUTING,
                proto::FRAGMENT,
                proto::AH,
                proto::DSTOPTS
            ]
        );
        assert_eq!(at, ip.header_len());

        let p = Ipv6::new(A6, B6, proto::TCP)
            .payload_len(9999)
            .version(4)
            .build(&[]);
        assert_eq!(p.len(), 40);
        assert_eq!(p[0] >> 4, 4);
        assert_eq!(u16::from_be_bytes([p[4], p[5]]), 9999);
        assert_eq!(p[6], proto::TCP);
    }

    #[test]
    fn l4_headers() {
        let t = Transport::tcp(1, 2).payload(b"xyz");
        assert_eq!((t.proto(), t.header_len()), (proto::TCP, 20));
        let b = t.bytes();
        assert_eq!(b.len(), 23);
        assert_eq!(&b[..4], &[0, 1, 0, 2]);
        assert_eq!(b[12] >> 4, 5);

        let u = Transport::udp(53, 5353).payload(&[0; 5]).bytes();
        assert_eq!(u.len(), 13);
        assert_eq!(&u[..4], &[0, 53, 0x14, 0xe9]);
        assert_eq!(u16::from_be_bytes([u[4], u[5]]), 13);

        let s = Transport::sctp(7, 8);
        assert_eq!((s.proto(), s.header_len()), (proto::SCTP, 12));

        let i = Transport::icmp(8, 0).payload(b"ping").bytes();
        assert_eq!(i.len(), 12);
        assert_eq!(&i[..2], &[8, 0]);
        assert_eq!(checksum(&i), 0, "ICMP checksum must verify");

        let i6 = Transport::icmpv6(128, 0);
        assert_eq!((i6.proto(), i6.header_len()), (proto::ICMPV6, 8));

        let r = Transport::raw(proto::GRE, &[1, 2]);
        assert_eq!((r.proto(), r.header_len(), r.bytes()), (47, 0, vec![1, 2]));
    }

    #[test]
    fn full_frame_and_helpers() {
        let l4 = Transport::udp(1000, 2000).payload(b"hello");
        let ip = Ipv4::new(A4, B4, l4.proto()).options(&[1, 1, 1, 1]);
        let f = Ethernet::new(ethertype::IPV4)
            .vlan(7)
            .build(&ip.build(&l4.bytes()));
        assert_eq!(f.len(), 18 + 24 + 8 + 5);
        assert_eq!(checksum(&f[18..42]), 0);
        let padded = pad(f.clone(), 60);
        assert_eq!(padded.len(), 60);
        assert_eq!(&padded[..f.len()], &f[..]);
        assert!(padded[f.len()..].iter().all(|b| *b == 0));
        assert_eq!(pad(padded.clone(), 10), padded);
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    }
}

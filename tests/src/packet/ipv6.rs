//! The IPv6 header builder and its extension headers.
use super::proto;

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

//! The IPv4 header builder.
use super::checksum;

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

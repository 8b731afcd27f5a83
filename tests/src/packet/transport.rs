//! L4 headers (TCP, UDP, SCTP, ICMP, ICMPv6, raw) and their payload.
use super::{checksum, proto};

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

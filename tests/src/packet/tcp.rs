//! TCP segments with flags, sequence numbers and options, their checksum
//! over the IPv4 or IPv6 pseudo-header, and a reader of received segments
//! (the SYN-ACKs the SYN-cookie path sends).
use super::{Transport, checksum, proto};

/// TCP flag bits (the 13th byte of the header).
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// One TCP option as it appears on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpOption {
    /// End of option list (kind 0).
    Eol,
    /// No-operation (kind 1).
    Nop,
    /// Maximum segment size (kind 2).
    Mss(u16),
    /// Window scale shift (kind 3).
    WindowScale(u8),
    /// SACK permitted (kind 4).
    SackPermitted,
    /// Timestamps (kind 8): value and echo reply.
    Timestamps(u32, u32),
    /// Any other kind with its length (the data is not kept).
    Other(u8, u8),
}

impl TcpOption {
    /// The option's bytes.
    pub fn encode(self) -> Vec<u8> {
        match self {
            TcpOption::Eol => vec![0],
            TcpOption::Nop => vec![1],
            TcpOption::Mss(m) => {
                let [a, b] = m.to_be_bytes();
                vec![2, 4, a, b]
            }
            TcpOption::WindowScale(s) => vec![3, 3, s],
            TcpOption::SackPermitted => vec![4, 2],
            TcpOption::Timestamps(v, e) => {
                let mut o = vec![8, 10];
                o.extend_from_slice(&v.to_be_bytes());
                o.extend_from_slice(&e.to_be_bytes());
                o
            }
            TcpOption::Other(kind, len) => {
                let mut o = vec![kind, len];
                o.resize(usize::from(len.max(2)), 0);
                o
            }
        }
    }
}

/// The options of a typical Linux SYN: MSS `mss`, SACK permitted,
/// timestamps (`tsval`, echo 0) and window scale 7, 20 bytes.
pub fn linux_syn_options(mss: u16, tsval: u32) -> Vec<TcpOption> {
    vec![
        TcpOption::Mss(mss),
        TcpOption::SackPermitted,
        TcpOption::Timestamps(tsval, 0),
        TcpOption::Nop,
        TcpOption::WindowScale(7),
    ]
}

/// A TCP header with options, built for one address pair (the checksum
/// covers the pseudo-header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tcp {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// [`flags`] bits.
    pub flags: u8,
    /// Window.
    pub window: u16,
    /// Options in wire order; padded with EOL to a multiple of 4 bytes.
    pub options: Vec<TcpOption>,
    /// Payload after the header.
    pub payload: Vec<u8>,
}

impl Tcp {
    /// A SYN with sequence number `seq` and no options.
    pub fn syn(sport: u16, dport: u16, seq: u32) -> Tcp {
        Tcp {
            sport,
            dport,
            seq,
            ack: 0,
            flags: flags::SYN,
            window: 64240,
            options: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// The ACK that completes a handshake: sequence `seq`, acknowledging
    /// `ack`, no options.
    pub fn ack(sport: u16, dport: u16, seq: u32, ack: u32) -> Tcp {
        Tcp {
            ack,
            flags: flags::ACK,
            ..Tcp::syn(sport, dport, seq)
        }
    }

    /// Replaces the options.
    pub fn options(mut self, options: &[TcpOption]) -> Tcp {
        self.options = options.to_vec();
        self
    }

    /// Replaces the flags.
    pub fn flags(mut self, flags: u8) -> Tcp {
        self.flags = flags;
        self
    }

    /// Replaces the payload.
    pub fn payload(mut self, payload: &[u8]) -> Tcp {
        self.payload = payload.to_vec();
        self
    }

    /// Length of the header with its padded options.
    pub fn header_len(&self) -> usize {
        let o: usize = self.options.iter().map(|o| o.encode().len()).sum();
        20 + o.div_ceil(4) * 4
    }

    /// Header and payload with a zero checksum.
    fn unsummed(&self) -> Vec<u8> {
        let hl = self.header_len();
        assert!(hl <= 60, "TCP options longer than 40 bytes");
        let mut out = Vec::with_capacity(hl + self.payload.len());
        out.extend_from_slice(&self.sport.to_be_bytes());
        out.extend_from_slice(&self.dport.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.ack.to_be_bytes());
        out.push(((hl / 4) as u8) << 4);
        out.push(self.flags);
        out.extend_from_slice(&self.window.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        for o in &self.options {
            out.extend_from_slice(&o.encode());
        }
        out.resize(hl, 0);
        out.extend_from_slice(&self.payload);
        out
    }

    /// The segment between IPv4 `src` and `dst`, checksum filled in.
    pub fn v4(&self, src: [u8; 4], dst: [u8; 4]) -> Transport {
        let mut seg = self.unsummed();
        let sum = tcp_checksum(&pseudo4(src, dst, seg.len()), &seg);
        seg[16..18].copy_from_slice(&sum.to_be_bytes());
        Transport::raw(proto::TCP, &seg)
    }

    /// The segment between IPv6 `src` and `dst`, checksum filled in.
    pub fn v6(&self, src: [u8; 16], dst: [u8; 16]) -> Transport {
        let mut seg = self.unsummed();
        let sum = tcp_checksum(&pseudo6(src, dst, seg.len()), &seg);
        seg[16..18].copy_from_slice(&sum.to_be_bytes());
        Transport::raw(proto::TCP, &seg)
    }
}

/// The IPv4 pseudo-header of a TCP segment of `len` bytes.
pub fn pseudo4(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0, proto::TCP]);
    p.extend_from_slice(&u16::try_from(len).expect("segment length").to_be_bytes());
    p
}

/// The IPv6 pseudo-header of a TCP segment of `len` bytes.
pub fn pseudo6(src: [u8; 16], dst: [u8; 16], len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&u32::try_from(len).expect("segment length").to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, proto::TCP]);
    p
}

/// The TCP checksum of `segment` (checksum field as it is) after `pseudo`:
/// over a segment carrying a correct checksum it is 0.
pub fn tcp_checksum(pseudo: &[u8], segment: &[u8]) -> u16 {
    let mut all = pseudo.to_vec();
    all.extend_from_slice(segment);
    checksum(&all)
}

/// A received TCP segment, read field by field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Header length in bytes (data offset x 4).
    pub header_len: usize,
    /// [`flags`] bits (and CWR/ECE).
    pub flags: u8,
    /// Window.
    pub window: u16,
    /// Checksum field.
    pub checksum: u16,
    /// Urgent pointer.
    pub urgent: u16,
    /// The options in wire order (NOPs and EOLs included).
    pub options: Vec<TcpOption>,
    /// Bytes after the header.
    pub payload_len: usize,
}

impl TcpSegment {
    /// Reads `seg`; `None` if it is shorter than its header or an option
    /// runs past the header.
    pub fn parse(seg: &[u8]) -> Option<TcpSegment> {
        if seg.len() < 20 {
            return None;
        }
        let be16 = |i: usize| u16::from_be_bytes([seg[i], seg[i + 1]]);
        let be32 = |i: usize| u32::from_be_bytes([seg[i], seg[i + 1], seg[i + 2], seg[i + 3]]);
        let header_len = usize::from(seg[12] >> 4) * 4;
        if header_len < 20 || header_len > seg.len() {
            return None;
        }
        let mut options = Vec::new();
        let mut i = 20;
        while i < header_len {
            let kind = seg[i];
            if kind == 0 || kind == 1 {
                options.push(if kind == 0 {
                    TcpOption::Eol
                } else {
                    TcpOption::Nop
                });
                i += 1;
                continue;
            }
            let len = usize::from(*seg.get(i + 1)?);
            if len < 2 || i + len > header_len {
                return None;
            }
            let o = &seg[i..i + len];
            options.push(match (kind, len) {
                (2, 4) => TcpOption::Mss(u16::from_be_bytes([o[2], o[3]])),
                (3, 3) => TcpOption::WindowScale(o[2]),
                (4, 2) => TcpOption::SackPermitted,
                (8, 10) => TcpOption::Timestamps(
                    u32::from_be_bytes([o[2], o[3], o[4], o[5]]),
                    u32::from_be_bytes([o[6], o[7], o[8], o[9]]),
                ),
                _ => TcpOption::Other(kind, len as u8),
            });
            i += len;
        }
        Some(TcpSegment {
            sport: be16(0),
            dport: be16(2),
            seq: be32(4),
            ack: be32(8),
            header_len,
            flags: seg[13],
            window: be16(14),
            checksum: be16(16),
            urgent: be16(18),
            options,
            payload_len: seg.len() - header_len,
        })
    }

    /// The MSS option's value, if present.
    pub fn mss(&self) -> Option<u16> {
        self.options.iter().find_map(|o| match o {
            TcpOption::Mss(m) => Some(*m),
            _ => None,
        })
    }

    /// The window scale option's shift, if present.
    pub fn window_scale(&self) -> Option<u8> {
        self.options.iter().find_map(|o| match o {
            TcpOption::WindowScale(s) => Some(*s),
            _ => None,
        })
    }

    /// The timestamps option (value, echo reply), if present.
    pub fn timestamps(&self) -> Option<(u32, u32)> {
        self.options.iter().find_map(|o| match o {
            TcpOption::Timestamps(v, e) => Some((*v, *e)),
            _ => None,
        })
    }

    /// Whether SACK is permitted.
    pub fn sack_permitted(&self) -> bool {
        self.options.contains(&TcpOption::SackPermitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syn_with_linux_options_reads_back_and_sums_to_zero() {
        let (a, b) = ([192, 0, 2, 1], [198, 51, 100, 2]);
        let t = Tcp::syn(40000, 443, 0x1234_5678).options(&linux_syn_options(1460, 77));
        assert_eq!(t.header_len(), 40);
        let seg = t.v4(a, b).bytes();
        assert_eq!(tcp_checksum(&pseudo4(a, b, seg.len()), &seg), 0);
        let r = TcpSegment::parse(&seg).unwrap();
        assert_eq!(
            (r.sport, r.dport, r.seq, r.flags),
            (40000, 443, 0x1234_5678, 0x02)
        );
        assert_eq!(r.mss(), Some(1460));
        assert_eq!(r.timestamps(), Some((77, 0)));
        assert_eq!(r.window_scale(), Some(7));
        assert!(r.sack_permitted());
        let a6 = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let seg = Tcp::ack(1, 2, 3, 4).payload(b"odd").v6(a6, a6).bytes();
        assert_eq!(tcp_checksum(&pseudo6(a6, a6, seg.len()), &seg), 0);
        assert_eq!(TcpSegment::parse(&seg).unwrap().payload_len, 3);
    }

    #[test]
    fn an_option_running_past_the_header_is_refused() {
        let mut seg = Tcp::syn(1, 2, 3)
            .options(&[TcpOption::Mss(1460)])
            .v4([1; 4], [2; 4])
            .bytes();
        seg[21] = 9;
        assert_eq!(TcpSegment::parse(&seg), None);
    }
}

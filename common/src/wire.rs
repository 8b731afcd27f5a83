//! Wire-format constants: EtherTypes, IP protocol numbers, header lengths and
//! field offsets of the headers xdpgate reads and writes.
//!
//! One definition of each, for the datapath (`xdp-prog`, whose header structs
//! check their layouts against these offsets) and for the control plane and
//! the tests. Numbers are host-order values as IANA and the RFCs give them;
//! `to_be_bytes()` gives the bytes on the wire. Offsets count from the start
//! of their own header.

// EtherTypes (IEEE 802 numbers).

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86DD;
/// TPID of an 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// TPID of an 802.1ad (QinQ service) VLAN tag.
pub const ETH_P_8021AD: u16 = 0x88A8;

// IP protocol numbers (IPv4 protocol, IPv6 next header).

/// IPv6 hop-by-hop options header.
pub const IPPROTO_HOPOPTS: u8 = 0;
/// ICMP (IPv4).
pub const IPPROTO_ICMP: u8 = 1;
/// IPv4 in IP (IPIP; also IPv4-in-IPv6).
pub const IPPROTO_IPIP: u8 = 4;
/// TCP.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IPv6 in IP (IPv6-in-IPv4, IP6IP6).
pub const IPPROTO_IPV6: u8 = 41;
/// IPv6 routing header.
pub const IPPROTO_ROUTING: u8 = 43;
/// IPv6 fragment header.
pub const IPPROTO_FRAGMENT: u8 = 44;
/// Authentication header (its length counts 4-byte units).
pub const IPPROTO_AH: u8 = 51;
/// ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 destination options header.
pub const IPPROTO_DSTOPTS: u8 = 60;
/// SCTP.
pub const IPPROTO_SCTP: u8 = 132;

// Ethernet II.

/// Length of a MAC address.
pub const ETH_ALEN: usize = 6;
/// Length of the Ethernet II header.
pub const ETH_HLEN: usize = 14;
/// Offset of the destination MAC address.
pub const ETH_DST: usize = 0;
/// Offset of the source MAC address.
pub const ETH_SRC: usize = 6;
/// Offset of the EtherType.
pub const ETH_TYPE: usize = 12;
/// Length of an 802.1Q/802.1ad tag after the TPID (TCI and the next EtherType).
pub const VLAN_HLEN: usize = 4;

// IPv4 (RFC 791).

/// The version field of an IPv4 header (the high nibble of its first byte).
pub const IPV4_VERSION: u8 = 4;
/// Length of an IPv4 header without options.
pub const IPV4_HLEN: usize = 20;
/// Offset of the version (high nibble) and header length in words (low nibble).
pub const IPV4_VERSION_IHL: usize = 0;
/// Offset of the type of service (DSCP and ECN).
pub const IPV4_TOS: usize = 1;
/// Offset of the total length.
pub const IPV4_TOT_LEN: usize = 2;
/// Offset of the identification.
pub const IPV4_ID: usize = 4;
/// Offset of the flags and fragment offset.
pub const IPV4_FRAG_OFF: usize = 6;
/// Offset of the time to live.
pub const IPV4_TTL: usize = 8;
/// Offset of the protocol.
pub const IPV4_PROTOCOL: usize = 9;
/// Offset of the header checksum.
pub const IPV4_CHECK: usize = 10;
/// Offset of the source address.
pub const IPV4_SRC: usize = 12;
/// Offset of the destination address.
pub const IPV4_DST: usize = 16;
/// The version/IHL byte of a header without options (version 4, 5 words).
pub const IPV4_VERSION_IHL_NO_OPTIONS: u8 = (IPV4_VERSION << 4) | (IPV4_HLEN / 4) as u8;
/// Flags/fragment-offset field: more fragments follow.
pub const IPV4_MF: u16 = 0x2000;
/// Flags/fragment-offset field: the fragment offset (8-byte units).
pub const IPV4_OFFSET_MASK: u16 = 0x1fff;

// IPv6 (RFC 8200).

/// The version field of an IPv6 header (the high nibble of its first byte).
pub const IPV6_VERSION: u8 = 6;
/// Length of the IPv6 fixed header.
pub const IPV6_HLEN: usize = 40;
/// Offset of the version (high nibble) and the traffic class's high nibble.
pub const IPV6_VERSION_TC: usize = 0;
/// Offset of the payload length.
pub const IPV6_PAYLOAD_LEN: usize = 4;
/// Offset of the next header.
pub const IPV6_NEXT_HDR: usize = 6;
/// Offset of the hop limit.
pub const IPV6_HOP_LIMIT: usize = 7;
/// Offset of the source address.
pub const IPV6_SRC: usize = 8;
/// Offset of the destination address.
pub const IPV6_DST: usize = 24;
/// Length of the IPv6 fragment header.
pub const IPV6_FRAG_HLEN: usize = 8;
/// Fragment header's offset/flags field: more fragments follow.
pub const IPV6_FRAG_MF: u16 = 0x0001;
/// Fragment header's offset/flags field: the fragment offset is the value
/// shifted right by this (8-byte units).
pub const IPV6_FRAG_OFFSET_SHIFT: u32 = 3;
/// An extension header's length field counts 8-byte units after the first 8.
pub const IPV6_EXT_UNIT: usize = 8;
/// An authentication header's length field counts 4-byte units after the
/// first 8 (RFC 4302).
pub const IPV6_AH_UNIT: usize = 4;

// Transport headers: the length the datapath requires of an unfragmented
// packet or a first fragment before it reads ports (RFC 1858).

/// Length of a TCP header without options.
pub const TCP_HLEN: usize = 20;
/// Longest TCP header (data offset 15).
pub const TCP_MAX_HLEN: usize = 60;
/// Offset in the TCP header of the sequence number.
pub const TCP_SEQ: usize = 4;
/// Offset in the TCP header of the acknowledgment number.
pub const TCP_ACK_SEQ: usize = 8;
/// Offset in the TCP header of the data offset (high nibble).
pub const TCP_DOFF: usize = 12;
/// Offset in the TCP header of the flags byte.
pub const TCP_FLAGS: usize = 13;
/// TCP flag FIN.
pub const TCP_FIN: u8 = 0x01;
/// TCP flag SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP flag RST.
pub const TCP_RST: u8 = 0x04;
/// TCP flag ACK.
pub const TCP_ACK: u8 = 0x10;
/// TCP option kind: end of option list.
pub const TCPOPT_EOL: u8 = 0;
/// TCP option kind: no operation.
pub const TCPOPT_NOP: u8 = 1;
/// TCP option kind: maximum segment size (length 4).
pub const TCPOPT_MSS: u8 = 2;
/// TCP option kind: window scale (length 3).
pub const TCPOPT_WINDOW: u8 = 3;
/// TCP option kind: SACK permitted (length 2).
pub const TCPOPT_SACK_PERM: u8 = 4;
/// TCP option kind: timestamps (length 10).
pub const TCPOPT_TIMESTAMP: u8 = 8;
/// IPv4 flag "don't fragment" (in the flags/fragment-offset word).
pub const IPV4_DF: u16 = 0x4000;
/// Length of the UDP header.
pub const UDP_HLEN: usize = 8;
/// Length of the SCTP common header.
pub const SCTP_HLEN: usize = 12;
/// The ICMP and ICMPv6 bytes the datapath reads: type, code and checksum.
pub const ICMP_TYPE_CODE_CHECK_LEN: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layouts_add_up() {
        assert_eq!(ETH_TYPE + 2, ETH_HLEN);
        assert_eq!(ETH_SRC, ETH_DST + ETH_ALEN);
        assert_eq!(IPV4_DST + 4, IPV4_HLEN);
        assert_eq!(IPV6_DST + 16, IPV6_HLEN);
        assert_eq!(IPV6_SRC + 16, IPV6_DST);
        assert_eq!(IPV4_VERSION_IHL_NO_OPTIONS, 0x45);
        assert_eq!(ETH_P_IP.to_be_bytes(), [0x08, 0x00]);
        assert_eq!(ETH_P_IPV6.to_be_bytes(), [0x86, 0xdd]);
    }
}

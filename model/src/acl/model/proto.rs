//! IP protocol numbers with names (the numbers are `xdpgate_common::wire`'s).
/// ICMP.
pub const ICMP: u8 = xdpgate_common::wire::IPPROTO_ICMP;
/// TCP.
pub const TCP: u8 = xdpgate_common::wire::IPPROTO_TCP;
/// UDP.
pub const UDP: u8 = xdpgate_common::wire::IPPROTO_UDP;
/// ICMPv6.
pub const ICMPV6: u8 = xdpgate_common::wire::IPPROTO_ICMPV6;
/// SCTP.
pub const SCTP: u8 = xdpgate_common::wire::IPPROTO_SCTP;

/// Parses a protocol name or number.
pub fn parse(s: &str) -> Result<u8, super::AclError> {
    Ok(match s {
        "tcp" => TCP,
        "udp" => UDP,
        "sctp" => SCTP,
        "icmp" => ICMP,
        "icmpv6" | "ipv6-icmp" => ICMPV6,
        n => n.parse().map_err(|_| super::AclError::BadValue {
            field: "proto",
            reason: format!("{n:?} is not tcp, udp, sctp, icmp, icmpv6 or a number 0-255"),
        })?,
    })
}

/// Whether the protocol has ports.
pub fn has_ports(p: u8) -> bool {
    matches!(p, TCP | UDP | SCTP)
}

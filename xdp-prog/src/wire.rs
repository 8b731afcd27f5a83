//! The headers the datapath reads and writes, as `repr(C)` structs of bytes
//! and byte arrays (alignment 1: a header may lie at any offset of a frame).
//! Their layouts are checked at compile time against the offsets and lengths
//! in `xdpgate_common::wire`, which also holds the EtherTypes and protocol
//! numbers (one definition for the datapath, the control plane and the tests).
//!
//! Only `cursor` turns frame positions into references to these types. The
//! parser reads a multi-byte field with `cursor::load`, one load instruction per
//! field: LLVM's BPF backend splits a load it cannot assume aligned into byte
//! loads, which costs the verifier instructions on every parser path.
use core::mem::{align_of, offset_of, size_of};

use xdpgate_common::wire::{
    ETH_ALEN, ETH_DST, ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, ETH_SRC,
    ETH_TYPE, ICMP_TYPE_CODE_CHECK_LEN, IPV4_CHECK, IPV4_DST, IPV4_FRAG_OFF, IPV4_HLEN, IPV4_ID,
    IPV4_MF, IPV4_OFFSET_MASK, IPV4_PROTOCOL, IPV4_SRC, IPV4_TOS, IPV4_TOT_LEN, IPV4_TTL,
    IPV4_VERSION_IHL, IPV6_DST, IPV6_FRAG_HLEN, IPV6_HLEN, IPV6_HOP_LIMIT, IPV6_NEXT_HDR,
    IPV6_PAYLOAD_LEN, IPV6_SRC, IPV6_VERSION_TC, VLAN_HLEN,
};

/// A header type `cursor` may hand out references to at any frame offset.
///
/// # Safety
///
/// Implementers are `repr(C)`, have alignment 1, and every byte pattern is a
/// valid value (bytes and byte arrays only).
pub(crate) unsafe trait Header {}

/// Implements [`Header`] for a header struct and checks its size.
macro_rules! header {
    ($t:ty, $len:expr) => {
        // SAFETY: `repr(C)` of u8 and u8 arrays only (alignment checked here).
        unsafe impl Header for $t {}
        const _: () = assert!(size_of::<$t>() == $len && align_of::<$t>() == 1);
    };
}

// SAFETY: a byte array has alignment 1 and no invalid values.
unsafe impl<const N: usize> Header for [u8; N] {}

/// EtherTypes as they lie in memory, for comparing a field loaded with
/// `cursor::load` without a byte swap.
pub(crate) const ETH_IP_NE: u16 = ETH_P_IP.to_be();
/// See [`ETH_IP_NE`].
pub(crate) const ETH_IPV6_NE: u16 = ETH_P_IPV6.to_be();
/// See [`ETH_IP_NE`].
pub(crate) const ETH_8021Q_NE: u16 = ETH_P_8021Q.to_be();
/// See [`ETH_IP_NE`].
pub(crate) const ETH_8021AD_NE: u16 = ETH_P_8021AD.to_be();
/// EtherTypes as bytes on the wire, for the rewriting side.
pub(crate) const ETH_IP_BYTES: [u8; 2] = ETH_P_IP.to_be_bytes();
/// See [`ETH_IP_BYTES`].
pub(crate) const ETH_IPV6_BYTES: [u8; 2] = ETH_P_IPV6.to_be_bytes();

/// Ethernet II header.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct EthHdr {
    pub(crate) dst: [u8; ETH_ALEN],
    pub(crate) src: [u8; ETH_ALEN],
    pub(crate) ether_type: [u8; 2],
}
header!(EthHdr, ETH_HLEN);
const _: () = assert!(
    offset_of!(EthHdr, dst) == ETH_DST
        && offset_of!(EthHdr, src) == ETH_SRC
        && offset_of!(EthHdr, ether_type) == ETH_TYPE
);

/// The 4 bytes of an 802.1Q/802.1ad tag after the TPID.
#[repr(C)]
pub(crate) struct VlanHdr {
    pub(crate) _tci: [u8; 2],
    pub(crate) ether_type: [u8; 2],
}
header!(VlanHdr, VLAN_HLEN);

/// IPv4 header without options.
#[repr(C)]
pub(crate) struct Ipv4Hdr {
    pub(crate) version_ihl: u8,
    pub(crate) tos: u8,
    pub(crate) tot_len: [u8; 2],
    pub(crate) _id: [u8; 2],
    pub(crate) frag_off: [u8; 2],
    pub(crate) _ttl: u8,
    pub(crate) protocol: u8,
    pub(crate) _check: [u8; 2],
    pub(crate) src: [u8; 4],
    pub(crate) dst: [u8; 4],
}
header!(Ipv4Hdr, IPV4_HLEN);
const _: () = assert!(
    offset_of!(Ipv4Hdr, version_ihl) == IPV4_VERSION_IHL
        && offset_of!(Ipv4Hdr, tos) == IPV4_TOS
        && offset_of!(Ipv4Hdr, tot_len) == IPV4_TOT_LEN
        && offset_of!(Ipv4Hdr, _id) == IPV4_ID
        && offset_of!(Ipv4Hdr, frag_off) == IPV4_FRAG_OFF
        && offset_of!(Ipv4Hdr, _ttl) == IPV4_TTL
        && offset_of!(Ipv4Hdr, protocol) == IPV4_PROTOCOL
        && offset_of!(Ipv4Hdr, _check) == IPV4_CHECK
        && offset_of!(Ipv4Hdr, src) == IPV4_SRC
        && offset_of!(Ipv4Hdr, dst) == IPV4_DST
);

/// The bits of an IPv4 header's flags/fragment-offset field that make it a
/// fragment (MF and the offset), as the field's two bytes.
const IPV4_FRAGMENT_BITS: [u8; 2] = (IPV4_MF | IPV4_OFFSET_MASK).to_be_bytes();

impl Ipv4Hdr {
    /// Whether the packet is a fragment (more fragments follow, or a non-zero
    /// offset). Byte by byte, as the steering program has always tested it
    /// (no byte swap).
    #[inline(always)]
    pub(crate) fn is_fragment(&self) -> bool {
        (self.frag_off[0] & IPV4_FRAGMENT_BITS[0]) != 0
            || (self.frag_off[1] & IPV4_FRAGMENT_BITS[1]) != 0
    }
}

/// IPv6 fixed header.
#[repr(C)]
pub(crate) struct Ipv6Hdr {
    pub(crate) version_tc: u8,
    pub(crate) tc_flow: [u8; 3],
    pub(crate) payload_len: [u8; 2],
    pub(crate) next_hdr: u8,
    pub(crate) _hop_limit: u8,
    pub(crate) src: [u8; 16],
    pub(crate) dst: [u8; 16],
}
header!(Ipv6Hdr, IPV6_HLEN);
const _: () = assert!(
    offset_of!(Ipv6Hdr, version_tc) == 0
        && offset_of!(Ipv6Hdr, payload_len) == IPV6_PAYLOAD_LEN
        && offset_of!(Ipv6Hdr, next_hdr) == IPV6_NEXT_HDR
        && offset_of!(Ipv6Hdr, _hop_limit) == IPV6_HOP_LIMIT
        && offset_of!(Ipv6Hdr, src) == IPV6_SRC
        && offset_of!(Ipv6Hdr, dst) == IPV6_DST
);
const _: () = assert!(IPV6_VERSION_TC == 0);

/// The first two bytes every IPv6 extension header shares.
#[repr(C)]
pub(crate) struct ExtHdr {
    pub(crate) next_hdr: u8,
    pub(crate) len: u8,
}
header!(ExtHdr, 2);

/// IPv6 fragment header.
#[repr(C)]
pub(crate) struct FragHdr {
    pub(crate) next_hdr: u8,
    pub(crate) _reserved: u8,
    pub(crate) frag_off: [u8; 2],
    pub(crate) _id: [u8; 4],
}
header!(FragHdr, IPV6_FRAG_HLEN);

/// The first bytes of TCP, UDP and SCTP headers: the ports.
#[repr(C)]
pub(crate) struct Ports {
    pub(crate) sport: [u8; 2],
    pub(crate) dport: [u8; 2],
}
header!(Ports, 4);

/// The first bytes of ICMP and ICMPv6 headers.
#[repr(C)]
pub(crate) struct IcmpHdr {
    pub(crate) type_: u8,
    pub(crate) code: u8,
    pub(crate) _check: [u8; 2],
}
header!(IcmpHdr, ICMP_TYPE_CODE_CHECK_LEN);

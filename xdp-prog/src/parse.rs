//! Packet parsing: the only module that touches raw packet pointers.
//!
//! [`Cursor`] walks the frame front to back; every read goes through
//! [`Cursor::take`], which proves to the verifier that the whole header lies
//! before `data_end` before handing out a pointer to it.
use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use xdpgate_common::Family;

/// EtherType of IPv4, in network byte order as read from the wire.
const ETH_P_IP: u16 = 0x0800u16.to_be();
/// EtherType of IPv6, in network byte order as read from the wire.
const ETH_P_IPV6: u16 = 0x86DDu16.to_be();

/// Ethernet II header.
#[repr(C)]
pub struct EthHdr {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// EtherType, big-endian.
    pub ether_type: u16,
}

/// IPv4 header without options.
#[repr(C)]
pub struct Ipv4Hdr {
    /// Version (high nibble) and IHL in 32-bit words (low nibble).
    pub version_ihl: u8,
    /// DSCP and ECN.
    pub tos: u8,
    /// Total length, big-endian.
    pub tot_len: u16,
    /// Identification, big-endian.
    pub id: u16,
    /// Flags and fragment offset, big-endian.
    pub frag_off: u16,
    /// Time to live.
    pub ttl: u8,
    /// Protocol of the next header.
    pub protocol: u8,
    /// Header checksum.
    pub check: u16,
    /// Source address, big-endian.
    pub src: [u8; 4],
    /// Destination address, big-endian.
    pub dst: [u8; 4],
}

/// IPv6 fixed header.
#[repr(C)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class (8), flow label (20), big-endian.
    pub vtc_flow: u32,
    /// Payload length, big-endian.
    pub payload_len: u16,
    /// Next header.
    pub next_hdr: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
}

/// A bounds-checked read position in the frame.
pub struct Cursor {
    pos: usize,
    end: usize,
}

impl Cursor {
    /// A cursor at the start of the frame.
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Cursor {
            pos: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// Returns a pointer to a `T` at the cursor and advances past it, or `None`
    /// if the frame ends before the whole `T`.
    #[inline(always)]
    pub fn take<T>(&mut self) -> Option<*const T> {
        let start = self.pos;
        if start + size_of::<T>() > self.end {
            return None;
        }
        self.pos = start + size_of::<T>();
        Some(start as *const T)
    }
}

/// Parses the Ethernet header and the IP header that follows it, and returns the
/// packet's family. A frame whose IP header is truncated or has the wrong version
/// (or an IPv4 IHL below 5) counts as [`Family::Other`].
#[inline(always)]
pub fn family(cursor: &mut Cursor) -> Family {
    let Some(eth) = cursor.take::<EthHdr>() else {
        return Family::Other;
    };
    // SAFETY: `take` checked that the header lies inside the frame.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == ETH_P_IP {
        let Some(ip) = cursor.take::<Ipv4Hdr>() else {
            return Family::Other;
        };
        // SAFETY: as above.
        let version_ihl = unsafe { (*ip).version_ihl };
        if version_ihl >> 4 == 4 && version_ihl & 0x0f >= 5 {
            return Family::Ipv4;
        }
    } else if ether_type == ETH_P_IPV6 {
        let Some(ip) = cursor.take::<Ipv6Hdr>() else {
            return Family::Other;
        };
        // SAFETY: as above. The first byte holds the version in its high nibble.
        let first = unsafe { *(ip as *const u8) };
        if first >> 4 == 6 {
            return Family::Ipv6;
        }
    }
    Family::Other
}

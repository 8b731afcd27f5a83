//! Packet parsing for the classifier.
//!
//! [`parse`] turns a frame into a [`Packet`]: VLAN/QinQ tags, IPv4 with options
//! and fragments, IPv6 with its extension-header chain and fragments, and the L4
//! fields rules match on (ports, ICMP type and code). Malformed frames come back
//! as [`Malformed`] with a [`DropReason`]. Every read goes through the
//! bounds-checked [`Cursor`] (module `cursor`), which hands out references to
//! the header structs of `wire`.
use core::mem::size_of;

use xdpgate_common::{
    DropReason, Family, MAX_IPV6_EXT_HEADERS,
    wire::{
        IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMP,
        IPPROTO_ICMPV6, IPPROTO_ROUTING, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, IPV4_MF,
        IPV4_OFFSET_MASK, IPV4_VERSION, IPV6_AH_UNIT, IPV6_EXT_UNIT, IPV6_FRAG_MF,
        IPV6_FRAG_OFFSET_SHIFT, IPV6_VERSION, SCTP_HLEN, TCP_HLEN, UDP_HLEN,
    },
};

use crate::{
    cursor::{Cursor, load},
    handoff::TcpOffsets,
    maps::TCP_OFFSETS,
    wire::{
        ETH_8021AD_NE, ETH_8021Q_NE, ETH_IP_NE, ETH_IPV6_NE, EthHdr, ExtHdr, FragHdr, IcmpHdr,
        Ipv4Hdr, Ipv6Hdr, Ports, VlanHdr,
    },
};

/// Fragment position of a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frag {
    /// Not a fragment.
    None,
    /// First fragment (offset 0, more fragments follow): carries the L4 header.
    First,
    /// Any later fragment: carries no L4 header.
    Later,
}

/// Which L4 fields of a [`Packet`] are valid.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum L4 {
    /// None (non-first fragment, or a protocol without ports or ICMP fields).
    None,
    /// `sport` and `dport` (TCP, UDP, SCTP).
    Ports,
    /// `icmp_type` and `icmp_code` (ICMP for IPv4, ICMPv6 for IPv6).
    Icmp,
}

/// What the classifier needs to know about a frame.
pub(crate) struct Packet {
    /// Family by EtherType.
    pub(crate) family: Family,
    /// Source address, big-endian; IPv4 in word 0, rest zero.
    pub(crate) src: [u32; 4],
    /// Destination address, like `src`.
    pub(crate) dst: [u32; 4],
    /// L4 protocol: IPv4 protocol, or the IPv6 next header after the extension
    /// chain (for a later fragment: the fragment header's next header).
    pub(crate) proto: u8,
    /// Fragment position.
    pub(crate) frag: Frag,
    /// Which L4 fields are valid.
    pub(crate) l4: L4,
    /// Source port, host byte order.
    pub(crate) sport: u16,
    /// Destination port, host byte order.
    pub(crate) dport: u16,
    /// ICMP or ICMPv6 type.
    pub(crate) icmp_type: u8,
    /// ICMP or ICMPv6 code.
    pub(crate) icmp_code: u8,
}

impl Packet {
    #[inline(always)]
    fn new(family: Family) -> Self {
        Packet {
            family,
            src: [0; 4],
            dst: [0; 4],
            proto: 0,
            frag: Frag::None,
            l4: L4::None,
            sport: 0,
            dport: 0,
            icmp_type: 0,
            icmp_code: 0,
        }
    }
}

/// A malformed frame: its family (by EtherType) and what is wrong with it.
pub(crate) struct Malformed {
    /// Family by EtherType (`Other` if the frame ends before one).
    pub(crate) family: Family,
    /// The reason it is dropped.
    pub(crate) reason: DropReason,
}

#[inline(always)]
fn bad(family: Family, reason: DropReason) -> Malformed {
    Malformed { family, reason }
}

/// A big-endian 16-bit length field as a byte count the verifier knows is at
/// most 65535. Many kernels do not track bounds through a byte swap
/// (`BPF_END`; measured with `cargo xtask vmtest`: Debian's 6.1 up to 6.18.15
/// do not, 7.2 does): the swapped value is an unbounded scalar there, and
/// adding it to a packet pointer (the IP packet's end) is refused. LLVM knows the
/// value fits 16 bits and would drop a plain mask; `read_volatile` hides that,
/// so the mask stays and every verifier sees it.
#[inline(always)]
fn length(be: u16) -> usize {
    let host = u16::from_be(be) as usize;
    // SAFETY: reads a local through a valid pointer.
    (unsafe { core::ptr::read_volatile(&raw const host) }) & 0xffff
}

/// The smallest IPv4 header length field (in 4-byte words): no options.
const IPV4_MIN_IHL: usize = xdpgate_common::wire::IPV4_HLEN / 4;

/// Parses a frame.
#[inline(always)]
pub(crate) fn parse(c: &mut Cursor) -> Result<Packet, Malformed> {
    let eth = c
        .take::<EthHdr>()
        .ok_or(bad(Family::Other, DropReason::TruncatedEthernet))?;
    // EtherTypes compared as they lie in memory: no byte swap.
    let mut ether_type: u16 = load(&eth.ether_type);
    for _ in 0..2 {
        if ether_type != ETH_8021Q_NE && ether_type != ETH_8021AD_NE {
            break;
        }
        let tag = c
            .take::<VlanHdr>()
            .ok_or(bad(Family::Other, DropReason::TruncatedVlan))?;
        ether_type = load(&tag.ether_type);
    }
    if ether_type == ETH_8021Q_NE || ether_type == ETH_8021AD_NE {
        return Err(bad(Family::Other, DropReason::VlanTooDeep));
    }
    if ether_type == ETH_IP_NE {
        ipv4(c)
    } else if ether_type == ETH_IPV6_NE {
        ipv6(c)
    } else {
        Ok(Packet::new(Family::Other))
    }
}

#[inline(always)]
fn ipv4(c: &mut Cursor) -> Result<Packet, Malformed> {
    const F: Family = Family::Ipv4;
    let on_wire = c.remaining();
    let ip_start = c.position();
    let l3 = c.offset();
    let ip = c
        .take::<Ipv4Hdr>()
        .ok_or(bad(F, DropReason::TruncatedIpv4))?;
    let version_ihl = ip.version_ihl;
    let tot_len = length(load(&ip.tot_len));
    let frag_off = u16::from_be(load(&ip.frag_off));
    let proto = ip.protocol;
    let src: u32 = load(&ip.src);
    let dst: u32 = load(&ip.dst);
    let ihl = (version_ihl & 0x0f) as usize;
    if version_ihl >> 4 != IPV4_VERSION || ihl < IPV4_MIN_IHL {
        return Err(bad(F, DropReason::BadIpv4Header));
    }
    c.skip((ihl - IPV4_MIN_IHL) * 4)
        .ok_or(bad(F, DropReason::TruncatedIpv4))?;
    if tot_len < ihl * 4 || tot_len > on_wire {
        return Err(bad(F, DropReason::BadIpv4Length));
    }
    // Whatever follows the packet in the frame (Ethernet padding) is not L4.
    c.limit_to(ip_start, tot_len);
    let mut p = Packet::new(F);
    p.src[0] = src;
    p.dst[0] = dst;
    p.proto = proto;
    let offset = frag_off & IPV4_OFFSET_MASK;
    let more = frag_off & IPV4_MF != 0;
    p.frag = if offset != 0 {
        Frag::Later
    } else if more {
        Frag::First
    } else {
        Frag::None
    };
    if p.frag != Frag::Later {
        l4(c, &mut p, IPPROTO_ICMP, l3)?;
    }
    Ok(p)
}

#[inline(always)]
fn ipv6(c: &mut Cursor) -> Result<Packet, Malformed> {
    const F: Family = Family::Ipv6;
    let l3 = c.offset();
    let ip = c
        .take::<Ipv6Hdr>()
        .ok_or(bad(F, DropReason::TruncatedIpv6))?;
    let version = ip.version_tc >> 4;
    let payload_len = length(load(&ip.payload_len));
    let mut next = ip.next_hdr;
    let src: [u32; 4] = load(&ip.src);
    let dst: [u32; 4] = load(&ip.dst);
    if version != IPV6_VERSION || payload_len > c.remaining() {
        return Err(bad(F, DropReason::BadIpv6Header));
    }
    // Whatever follows the packet in the frame (Ethernet padding) is not a header.
    c.limit_to(c.position(), payload_len);
    let mut p = Packet::new(F);
    p.src = src;
    p.dst = dst;
    let mut done = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
                let h = c
                    .take::<ExtHdr>()
                    .ok_or(bad(F, DropReason::TruncatedIpv6Ext))?;
                let (n, len) = (h.next_hdr, h.len as usize);
                // Length in 8-byte units not counting the first 8 (AH: 4-byte
                // units not counting the first 8); the 2 bytes read are included.
                let total = if next == IPPROTO_AH {
                    (len + 2) * IPV6_AH_UNIT
                } else {
                    (len + 1) * IPV6_EXT_UNIT
                };
                c.skip(total - size_of::<ExtHdr>())
                    .ok_or(bad(F, DropReason::TruncatedIpv6Ext))?;
                next = n;
            }
            IPPROTO_FRAGMENT => {
                let h = c
                    .take::<FragHdr>()
                    .ok_or(bad(F, DropReason::TruncatedIpv6Ext))?;
                let (n, off) = (h.next_hdr, u16::from_be(load(&h.frag_off)));
                next = n;
                if off >> IPV6_FRAG_OFFSET_SHIFT != 0 {
                    p.frag = Frag::Later;
                    p.proto = next;
                    return Ok(p);
                }
                if off & IPV6_FRAG_MF != 0 {
                    p.frag = Frag::First;
                }
            }
            _ => {
                done = true;
                break;
            }
        }
    }
    if !done {
        // The loop ran out: the next header is either an upper-layer protocol
        // (fine) or yet another extension header (too deep).
        if matches!(
            next,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT
        ) {
            return Err(bad(F, DropReason::Ipv6ExtTooDeep));
        }
    }
    p.proto = next;
    l4(c, &mut p, IPPROTO_ICMPV6, l3)?;
    Ok(p)
}

/// Reads the L4 fields of an unfragmented packet or a first fragment.
/// `icmp` is the ICMP protocol number of the packet's family; `l3` the IP
/// header's offset, recorded with the TCP header's for the SYN-cookie
/// program (`maps::TCP_OFFSETS`).
#[inline(always)]
fn l4(c: &mut Cursor, p: &mut Packet, icmp: u8, l3: u16) -> Result<(), Malformed> {
    let need = match p.proto {
        IPPROTO_TCP => TCP_HLEN,
        IPPROTO_UDP => UDP_HLEN,
        IPPROTO_SCTP => SCTP_HLEN,
        n if n == icmp => size_of::<IcmpHdr>(),
        _ => return Ok(()),
    };
    // A first fragment too short for the whole L4 header is the classic
    // tiny-fragment evasion (RFC 1858): treat it as malformed.
    if c.remaining() < need {
        return Err(bad(p.family, DropReason::TruncatedL4));
    }
    if p.proto == icmp {
        let h = c
            .take::<IcmpHdr>()
            .ok_or(bad(p.family, DropReason::TruncatedL4))?;
        p.icmp_type = h.type_;
        p.icmp_code = h.code;
        p.l4 = L4::Icmp;
    } else {
        if p.proto == IPPROTO_TCP
            && let Some(o) = TCP_OFFSETS.get_ptr_mut(0)
        {
            // Stored at once, not carried in `Packet`: a value that differs
            // per parser path and stays live would keep the verifier from
            // merging the paths before the classifier (measured on 6.18: the
            // main program went from 166k to 463k verified instructions).
            // SAFETY: per-CPU slot, written for this packet.
            unsafe { o.write_volatile(TcpOffsets { l3, l4: c.offset() }) };
        }
        let h = c
            .take::<Ports>()
            .ok_or(bad(p.family, DropReason::TruncatedL4))?;
        p.sport = u16::from_be(load(&h.sport));
        p.dport = u16::from_be(load(&h.dport));
        p.l4 = L4::Ports;
    }
    Ok(())
}

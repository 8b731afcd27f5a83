//! Packet parsing: the only module that touches raw packet pointers.
//!
//! [`Cursor`] walks the frame front to back; every read goes through
//! [`Cursor::take`] or [`Cursor::skip`], which prove to the verifier that the
//! bytes lie before `data_end` before handing out a pointer to them.
//!
//! [`parse`] turns a frame into a [`Packet`]: VLAN/QinQ tags, IPv4 with options
//! and fragments, IPv6 with its extension-header chain and fragments, and the L4
//! fields rules match on (ports, ICMP type and code). Malformed frames come back
//! as [`Malformed`] with a [`DropReason`].
//!
//! [`Frame`] is the rewriting side: bounds-checked mutable access to fixed-size
//! byte regions of the frame, for the steering program, and [`adjust_head`]
//! moves the frame's start.
use core::mem::size_of;

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use xdpgate_common::{DropReason, Family, MAX_IPV6_EXT_HEADERS};

/// EtherTypes and IP protocol numbers, in the byte order they are read in.
mod wire {
    pub const ETH_P_IP: u16 = 0x0800u16.to_be();
    pub const ETH_P_IPV6: u16 = 0x86DDu16.to_be();
    pub const ETH_P_8021Q: u16 = 0x8100u16.to_be();
    pub const ETH_P_8021AD: u16 = 0x88A8u16.to_be();
    pub const IPPROTO_HOPOPTS: u8 = 0;
    pub const IPPROTO_ICMP: u8 = 1;
    pub const IPPROTO_TCP: u8 = 6;
    pub const IPPROTO_UDP: u8 = 17;
    pub const IPPROTO_ROUTING: u8 = 43;
    pub const IPPROTO_FRAGMENT: u8 = 44;
    pub const IPPROTO_AH: u8 = 51;
    pub const IPPROTO_ICMPV6: u8 = 58;
    pub const IPPROTO_DSTOPTS: u8 = 60;
    pub const IPPROTO_SCTP: u8 = 132;
}
use wire::*;

/// Ethernet II header.
#[repr(C)]
struct EthHdr {
    _dst: [u8; 6],
    _src: [u8; 6],
    ether_type: u16,
}

/// The 4 bytes of an 802.1Q/802.1ad tag after the TPID.
#[repr(C)]
struct VlanHdr {
    _tci: u16,
    ether_type: u16,
}

/// IPv4 header without options.
#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    _tos: u8,
    tot_len: u16,
    _id: u16,
    frag_off: u16,
    _ttl: u8,
    protocol: u8,
    _check: u16,
    src: u32,
    dst: u32,
}

/// IPv6 fixed header.
#[repr(C)]
struct Ipv6Hdr {
    version_tc: u8,
    _tc_flow: [u8; 3],
    payload_len: u16,
    next_hdr: u8,
    _hop_limit: u8,
    src: [u32; 4],
    dst: [u32; 4],
}

/// The first two bytes every IPv6 extension header shares.
#[repr(C)]
struct ExtHdr {
    next_hdr: u8,
    len: u8,
}

/// IPv6 fragment header.
#[repr(C)]
struct FragHdr {
    next_hdr: u8,
    _reserved: u8,
    frag_off: u16,
    _id: u32,
}

/// The first bytes of TCP, UDP and SCTP headers: the ports.
#[repr(C)]
struct Ports {
    sport: u16,
    dport: u16,
}

/// The first bytes of ICMP and ICMPv6 headers.
#[repr(C)]
struct IcmpHdr {
    type_: u8,
    code: u8,
    _check: u16,
}

/// Fragment position of a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not a fragment.
    None,
    /// First fragment (offset 0, more fragments follow): carries the L4 header.
    First,
    /// Any later fragment: carries no L4 header.
    Later,
}

/// Which L4 fields of a [`Packet`] are valid.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// None (non-first fragment, or a protocol without ports or ICMP fields).
    None,
    /// `sport` and `dport` (TCP, UDP, SCTP).
    Ports,
    /// `icmp_type` and `icmp_code` (ICMP for IPv4, ICMPv6 for IPv6).
    Icmp,
}

/// What the classifier needs to know about a frame.
pub struct Packet {
    /// Family by EtherType.
    pub family: Family,
    /// Source address, big-endian; IPv4 in word 0, rest zero.
    pub src: [u32; 4],
    /// Destination address, like `src`.
    pub dst: [u32; 4],
    /// L4 protocol: IPv4 protocol, or the IPv6 next header after the extension
    /// chain (for a later fragment: the fragment header's next header).
    pub proto: u8,
    /// Fragment position.
    pub frag: Frag,
    /// Which L4 fields are valid.
    pub l4: L4,
    /// Source port, host byte order.
    pub sport: u16,
    /// Destination port, host byte order.
    pub dport: u16,
    /// ICMP or ICMPv6 type.
    pub icmp_type: u8,
    /// ICMP or ICMPv6 code.
    pub icmp_code: u8,
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
pub struct Malformed {
    /// Family by EtherType (`Other` if the frame ends before one).
    pub family: Family,
    /// The reason it is dropped.
    pub reason: DropReason,
}

#[inline(always)]
fn bad(family: Family, reason: DropReason) -> Malformed {
    Malformed { family, reason }
}

/// A bounds-checked read position in the frame.
///
/// Two bounds: `end` is the frame's `data_end`, the bound the verifier knows;
/// `limit` is where the IP packet ends according to its own length field (once
/// known), so Ethernet padding after the packet is never read as headers.
pub struct Cursor {
    pos: usize,
    end: usize,
    limit: usize,
}

impl Cursor {
    /// A cursor at the start of the frame.
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Cursor {
            pos: ctx.data(),
            end: ctx.data_end(),
            limit: ctx.data_end(),
        }
    }

    /// Returns a pointer to a `T` at the cursor and advances past it, or `None`
    /// if the frame ends before the whole `T`.
    #[inline(always)]
    fn take<T>(&mut self) -> Option<*const T> {
        let start = self.pos;
        if start + size_of::<T>() > self.end || start + size_of::<T>() > self.limit {
            return None;
        }
        self.pos = start + size_of::<T>();
        Some(start as *const T)
    }

    /// Advances `len` bytes, or returns `None` if the frame ends first. `len`
    /// must be bounded by the caller (the verifier needs a maximum).
    #[inline(always)]
    fn skip(&mut self, len: usize) -> Option<()> {
        if self.pos + len > self.end || self.pos + len > self.limit {
            return None;
        }
        self.pos += len;
        Some(())
    }

    /// Bytes from the cursor to the end of the IP packet (or of the frame,
    /// before the packet's length is known).
    #[inline(always)]
    fn remaining(&self) -> usize {
        self.limit - self.pos
    }

    /// Ends the readable region `len` bytes after `from` (a position this cursor
    /// passed). The caller has checked that this lies within the frame.
    #[inline(always)]
    fn limit_to(&mut self, from: usize, len: usize) {
        self.limit = from + len;
    }

    /// The current position, for [`Cursor::limit_to`].
    #[inline(always)]
    fn position(&self) -> usize {
        self.pos
    }
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
    (unsafe { core::ptr::read_volatile(&host) }) & 0xffff
}

/// Parses a frame.
#[inline(always)]
pub fn parse(c: &mut Cursor) -> Result<Packet, Malformed> {
    let eth = c
        .take::<EthHdr>()
        .ok_or(bad(Family::Other, DropReason::TruncatedEthernet))?;
    // SAFETY: `take` checked that the header lies inside the frame.
    let mut ether_type = unsafe { (*eth).ether_type };
    for _ in 0..2 {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let tag = c
            .take::<VlanHdr>()
            .ok_or(bad(Family::Other, DropReason::TruncatedVlan))?;
        // SAFETY: as above.
        ether_type = unsafe { (*tag).ether_type };
    }
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        return Err(bad(Family::Other, DropReason::VlanTooDeep));
    }
    if ether_type == ETH_P_IP {
        ipv4(c)
    } else if ether_type == ETH_P_IPV6 {
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
    let ip = c
        .take::<Ipv4Hdr>()
        .ok_or(bad(F, DropReason::TruncatedIpv4))?;
    // SAFETY: `take` checked the 20-byte header.
    let (version_ihl, tot_len, frag_off, proto, src, dst) = unsafe {
        (
            (*ip).version_ihl,
            length((*ip).tot_len),
            u16::from_be((*ip).frag_off),
            (*ip).protocol,
            (*ip).src,
            (*ip).dst,
        )
    };
    let ihl = (version_ihl & 0x0f) as usize;
    if version_ihl >> 4 != 4 || ihl < 5 {
        return Err(bad(F, DropReason::BadIpv4Header));
    }
    c.skip((ihl - 5) * 4)
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
    let offset = frag_off & 0x1fff;
    let more = frag_off & 0x2000 != 0;
    p.frag = if offset != 0 {
        Frag::Later
    } else if more {
        Frag::First
    } else {
        Frag::None
    };
    if p.frag != Frag::Later {
        l4(c, &mut p, IPPROTO_ICMP)?;
    }
    Ok(p)
}

#[inline(always)]
fn ipv6(c: &mut Cursor) -> Result<Packet, Malformed> {
    const F: Family = Family::Ipv6;
    let ip = c
        .take::<Ipv6Hdr>()
        .ok_or(bad(F, DropReason::TruncatedIpv6))?;
    // SAFETY: `take` checked the 40-byte header.
    let (version, payload_len, mut next, src, dst) = unsafe {
        (
            (*ip).version_tc >> 4,
            length((*ip).payload_len),
            (*ip).next_hdr,
            (*ip).src,
            (*ip).dst,
        )
    };
    if version != 6 || payload_len > c.remaining() {
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
                // SAFETY: `take` checked the two bytes.
                let (n, len) = unsafe { ((*h).next_hdr, (*h).len as usize) };
                // Length in 8-byte units not counting the first 8 (AH: 4-byte
                // units not counting the first 8); the 2 bytes read are included.
                let total = if next == IPPROTO_AH {
                    (len + 2) * 4
                } else {
                    (len + 1) * 8
                };
                c.skip(total - size_of::<ExtHdr>())
                    .ok_or(bad(F, DropReason::TruncatedIpv6Ext))?;
                next = n;
            }
            IPPROTO_FRAGMENT => {
                let h = c
                    .take::<FragHdr>()
                    .ok_or(bad(F, DropReason::TruncatedIpv6Ext))?;
                // SAFETY: `take` checked the 8-byte header.
                let (n, off) = unsafe { ((*h).next_hdr, u16::from_be((*h).frag_off)) };
                next = n;
                if off >> 3 != 0 {
                    p.frag = Frag::Later;
                    p.proto = next;
                    return Ok(p);
                }
                if off & 1 != 0 {
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
    l4(c, &mut p, IPPROTO_ICMPV6)?;
    Ok(p)
}

/// Reads the L4 fields of an unfragmented packet or a first fragment.
/// `icmp` is the ICMP protocol number of the packet's family.
#[inline(always)]
fn l4(c: &mut Cursor, p: &mut Packet, icmp: u8) -> Result<(), Malformed> {
    let need = match p.proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP => 8,
        IPPROTO_SCTP => 12,
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
        // SAFETY: `take` checked the 4 bytes.
        unsafe {
            p.icmp_type = (*h).type_;
            p.icmp_code = (*h).code;
        }
        p.l4 = L4::Icmp;
    } else {
        let h = c
            .take::<Ports>()
            .ok_or(bad(p.family, DropReason::TruncatedL4))?;
        // SAFETY: `take` checked the 4 bytes.
        unsafe {
            p.sport = u16::from_be((*h).sport);
            p.dport = u16::from_be((*h).dport);
        }
        p.l4 = L4::Ports;
    }
    Ok(())
}

/// Bounds-checked mutable access to the frame, for rewriting it. Regions are
/// byte arrays (alignment 1), so no field is ever read or written unaligned.
/// Any [`adjust_head`] invalidates every `Frame`: make a new one.
pub struct Frame {
    start: usize,
    end: usize,
}

impl Frame {
    /// The frame as it is now.
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Frame {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// The `N` bytes at offset `off`, or `None` if the frame ends first.
    /// `off` must be bounded by the caller (the verifier needs a maximum).
    #[inline(always)]
    pub fn bytes<const N: usize>(&mut self, off: usize) -> Option<&mut [u8; N]> {
        let at = self.start + off;
        // Through memory once, so LLVM cannot recompute the pointer after the
        // check (the recomputed register would lack the checked range).
        // SAFETY: reads a local through a valid pointer.
        let at = unsafe { core::ptr::read_volatile(&at) };
        if at + N > self.end {
            return None;
        }
        // SAFETY: the N bytes lie inside the frame (checked above), arrays of
        // u8 have alignment 1, and `&mut self` keeps the borrow unique.
        Some(unsafe { &mut *(at as *mut [u8; N]) })
    }
}

impl Frame {
    /// A copy of the `N` bytes at `off`, or `None` if the frame ends first.
    /// Byte by byte and volatile, so LLVM emits no `memcpy`/`memmove` call
    /// (the verifier loses packet bounds across such calls).
    #[inline(always)]
    pub fn read<const N: usize>(&mut self, off: usize) -> Option<[u8; N]> {
        let src = self.bytes::<N>(off)?;
        let mut out = [0u8; N];
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: `i < N`, inside the checked region.
            *b = unsafe { core::ptr::read_volatile(src.as_ptr().add(i)) };
        }
        Some(out)
    }

    /// Writes `value` at `off`; false if the frame ends first. Byte by byte
    /// and volatile, like [`Frame::read`].
    #[inline(always)]
    pub fn write<const N: usize>(&mut self, off: usize, value: &[u8; N]) -> bool {
        let Some(dst) = self.bytes::<N>(off) else {
            return false;
        };
        for (i, b) in value.iter().enumerate() {
            // SAFETY: `i < N`, inside the checked region.
            unsafe { core::ptr::write_volatile(dst.as_mut_ptr().add(i), *b) };
        }
        true
    }
}

/// Moves the start of the frame by `delta` bytes (negative: prepends room
/// for headers; positive: strips them). False if the kernel refused.
#[inline(always)]
pub fn adjust_head(ctx: &XdpContext, delta: i32) -> bool {
    // SAFETY: `ctx.ctx` is the program's context pointer.
    unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) == 0 }
}

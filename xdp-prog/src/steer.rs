//! Steering: the load balancer and the decapsulator.
//!
//! They run in a second XDP program, `xdpgate_steer`, which the main program
//! tail-calls (`maps::PROGS`) for packets the ACL passed on interfaces with
//! `IFACE_LB` or `IFACE_DECAP`. Being a separate program, it is verified on
//! its own: its paths do not multiply the main program's.
//!
//! - Decapsulation (`IFACE_DECAP`): an IPv4 packet of protocol 4 (IPIP) or 41
//!   (IPv6-in-IPv4), or an IPv6 packet whose fixed header's next header is 4
//!   or 41, addressed to an outer destination listed in `DECAP_DSTS` for the
//!   interface, loses its outer header; the inner packet goes to the stack
//!   with the original Ethernet addresses. Outer IPv6 extension headers and
//!   VLAN tags are not decapsulated (the packet passes unchanged).
//! - Load balancing (`IFACE_LB`): a packet with ports (TCP, UDP, SCTP; later
//!   fragments carry none and pass to the stack, so fragmented datagrams to a
//!   VIP are not supported) to a service in `LB_SERVICES` goes to the backend its flow hash
//!   picks from the service's Maglev ring, either encapsulated (outer header
//!   of the backend's family, outer source varying per flow) or by L2 DSR
//!   (Ethernet addresses rewritten). The route and next hop come from the
//!   kernel's FIB (`bpf_fib_lookup`), cached per CPU and backend slot for
//!   [`HOP_LIFETIME_NS`] ([`NextHop`], `maps::LB_NEXTHOP`): the packet leaves
//!   by XDP_TX when the egress interface is the ingress one, by XDP_REDIRECT
//!   otherwise. When the next hop has no neighbour entry yet, the
//!   encapsulated packet is passed to the stack, which forwards it and
//!   resolves the neighbour (counted `slow_path`).
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup,
    },
    helpers::{bpf_check_mtu, bpf_fib_lookup as fib_lookup, bpf_ktime_get_coarse_ns, bpf_redirect},
    programs::XdpContext,
};
use xdpgate_common::{
    Action, DropReason, Family, IFACE_DECAP, IFACE_LB, LocalAddrKey,
    csum::{add32, fold32},
    lb::{
        Backend, DEFAULT_OUTER_TTL, FAMILY_V4, FAMILY_V6, LbConfig, SERVICE_L2DSR, ServiceKey,
        ServiceStat, flow_hash,
    },
};

use crate::{
    maps::{DECAP_DSTS, LB_BACKENDS, LB_CONFIG, LB_NEXTHOP, LB_RINGS, LB_SERVICES},
    parse::{Frame, adjust_head},
    stats,
};

/// IP protocol numbers of the tunnel payloads.
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
/// EtherTypes, as bytes on the wire.
const ETH_IPV4: [u8; 2] = [0x08, 0x00];
const ETH_IPV6: [u8; 2] = [0x86, 0xdd];
/// Address families of `bpf_fib_lookup`.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The packet's fields as the classifier laundered them (`acl::Fields`),
/// into `s` (the main program wrote `bytes`, `slot` and `flags`). Ports
/// count only for TCP, UDP and SCTP with an L4 header (not later fragments).
#[inline(always)]
pub fn fill(s: &mut SteerCtx, f: &crate::acl::Fields) {
    // Word by word: an array assignment between the two map values becomes
    // a `memmove` call, a byte loop per packet.
    let (a, b) = (&f.src, &f.dst);
    s.src = [a[0], a[1], a[2], a[3]];
    s.dst = [b[0], b[1], b[2], b[3]];
    s.family = if f.v4 != 0 {
        Family::Ipv4 as u32
    } else {
        Family::Ipv6 as u32
    };
    s.proto = f.proto as u8;
    let l4 = matches!(s.proto, 6 | 17 | 132) && f.sport != crate::acl::NONE;
    s.ports = l4 as u8;
    s.sport = if l4 { (f.sport & 0xffff) as u16 } else { 0 };
    s.dport = if l4 { (f.dport & 0xffff) as u16 } else { 0 };
}

/// What the main program hands over (through `maps::STEER_CTX`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SteerCtx {
    /// Source address as parsed (big-endian words, IPv4 in word 0).
    pub src: [u32; 4],
    /// Destination address, like `src`.
    pub dst: [u32; 4],
    /// Frame length in bytes.
    pub bytes: u64,
    /// Interface counter slot.
    pub slot: u32,
    /// Interface flags.
    pub flags: u32,
    /// `Family` as u32 (IPv4 or IPv6 only).
    pub family: u32,
    /// Source port, host order (0 without ports).
    pub sport: u16,
    /// Destination port, host order.
    pub dport: u16,
    /// L4 protocol.
    pub proto: u8,
    /// Non-zero: the packet has ports (TCP, UDP, SCTP; not a later fragment).
    pub ports: u8,
    /// Padding.
    pub _pad: [u8; 2],
}

/// How long a resolved next hop is used without a new FIB lookup: 1 s (on
/// the coarse monotonic clock, so give or take a tick). The trade-off: a
/// change of the neighbour's MAC address, of the route, or of a route's MTU
/// (not the egress device's: that is checked on every packet) takes effect
/// within this time instead of at once; a failed lookup is never cached.
pub const HOP_LIFETIME_NS: u64 = 1_000_000_000;

/// [`NextHop::mode`]: resolved for encapsulation (outer header of the
/// backend's family, any next hop).
const HOP_ENCAP: u8 = 1;
/// [`NextHop::mode`]: resolved for L2 DSR (the backend itself on-link).
const HOP_L2DSR: u8 = 2;

/// A cached next hop: the value of `maps::LB_NEXTHOP` (per CPU, by backend
/// slot; datapath-only), what a successful `bpf_fib_lookup` to the backend
/// returned. Valid for a packet when it was resolved for the backend's
/// current address and family (a reused slot never matches its previous
/// backend's entry), the same mode and ingress interface, has not expired,
/// and was resolved for a packet at least as long (the lookup's MTU check;
/// the egress device's MTU is checked on every use by `bpf_check_mtu`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NextHop {
    /// The backend address it was resolved for: `Backend::addr` as words.
    pub addr: [u32; 4],
    /// `bpf_ktime_get_coarse_ns` after which it is stale; 0: never valid.
    pub expires: u64,
    /// The ingress interface of the lookup (the FIB lookup depends on it:
    /// forwarding enabled, policy rules).
    pub iif: u32,
    /// Egress interface.
    pub ifindex: u32,
    /// Source MAC (the egress interface's) and destination MAC (the next
    /// hop's), the 12 bytes as `bpf_fib_lookup` returns them (`hop_macs`).
    pub macs: [u32; 3],
    /// The L3 length the lookup checked against the route's MTU: packets up
    /// to this long use the entry, longer ones are looked up again.
    pub fits: u16,
    /// The backend's family (`FAMILY_V4`, `FAMILY_V6`): the outer family.
    pub family: u8,
    /// `HOP_ENCAP` or `HOP_L2DSR`.
    pub mode: u8,
}

// The size `maps::LB_NEXTHOP`'s memory is documented with.
const _: () = assert!(core::mem::size_of::<NextHop>() == 48);

/// How a steered packet ends; `Drop` carries its reason.
#[derive(Clone, Copy)]
enum Outcome {
    /// Sent on (or handed to the stack after rewriting) with this action.
    Act(Action),
    /// Dropped for this reason.
    Drop(DropReason),
    /// Not steered after all (a VLAN-tagged frame): passed unchanged.
    Bypass,
}

/// Steers one packet and returns the XDP action; drops are counted here (the
/// interface/family/action counters are the caller's).
#[inline(always)]
pub fn run(ctx: &XdpContext, s: &SteerCtx) -> Action {
    if s.flags & IFACE_DECAP != 0
        && (s.proto == IPPROTO_IPIP || s.proto == IPPROTO_IPV6)
        && let Some(action) = decap(ctx, s)
    {
        return action;
    }
    if s.flags & IFACE_LB != 0 && s.ports != 0 {
        return match lb(ctx, s) {
            Outcome::Act(a) => a,
            Outcome::Bypass => Action::Pass,
            Outcome::Drop(reason) => {
                stats::count_reason(s.slot, reason, s.bytes);
                Action::Drop
            }
        };
    }
    Action::Pass
}

/// An address of the parser's layout as key bytes.
#[inline(always)]
fn addr_bytes(words: &[u32; 4]) -> [u8; 16] {
    // SAFETY: [u32; 4] and [u8; 16] have the same size and no invalid values.
    unsafe { core::mem::transmute(*words) }
}

/// Decapsulates a tunnelled packet to a listed outer destination; `None`
/// leaves the packet to the load balancer / the stack unchanged.
#[inline(always)]
fn decap(ctx: &XdpContext, s: &SteerCtx) -> Option<Action> {
    let outer_v4 = s.family == Family::Ipv4 as u32;
    let key = LocalAddrKey {
        slot: s.slot,
        family: s.family,
        addr: addr_bytes(&s.dst),
    };
    let key = &key;
    // SAFETY: presence check only.
    unsafe { DECAP_DSTS.get(key) }?;
    let mut f = Frame::new(ctx);
    let eth = f.read::<14>(0)?;
    let (inner_off, proto) = if outer_v4 {
        if eth[12..14] != ETH_IPV4 {
            return None;
        }
        let ip = f.bytes::<20>(14)?;
        // A fragment of a tunnelled packet is left to the stack.
        if (ip[6] & 0x3f) != 0 || ip[7] != 0 {
            return None;
        }
        (14 + ((ip[0] & 0x0f) as usize) * 4, ip[9])
    } else {
        if eth[12..14] != ETH_IPV6 {
            return None;
        }
        let ip = f.bytes::<40>(14)?;
        (54, ip[6])
    };
    let inner_v4 = match proto {
        IPPROTO_IPIP => true,
        IPPROTO_IPV6 => false,
        // Tunnel protocol behind IPv6 extension headers: not decapsulated.
        _ => return None,
    };
    // The inner fixed header must be there, with its version.
    let version = if inner_v4 {
        f.bytes::<20>(inner_off)?[0] >> 4
    } else {
        f.bytes::<40>(inner_off)?[0] >> 4
    };
    if version != if inner_v4 { 4 } else { 6 } {
        return None;
    }
    let ty = if inner_v4 { ETH_IPV4 } else { ETH_IPV6 };
    let new_eth = [
        eth[0], eth[1], eth[2], eth[3], eth[4], eth[5], eth[6], eth[7], eth[8], eth[9], eth[10],
        eth[11], ty[0], ty[1],
    ];
    if !f.write(inner_off - 14, &new_eth) {
        return None;
    }
    if !adjust_head(ctx, (inner_off - 14) as i32) {
        return Some(Action::Aborted);
    }
    stats::count_decap(
        s.slot,
        if outer_v4 { FAMILY_V4 } else { FAMILY_V6 },
        if inner_v4 { FAMILY_V4 } else { FAMILY_V6 },
        s.bytes,
    );
    Some(Action::Pass)
}

/// Looks the packet up in the services and forwards it to its backend.
#[inline(always)]
fn lb(ctx: &XdpContext, s: &SteerCtx) -> Outcome {
    let mut key = ServiceKey {
        addr: addr_bytes(&s.dst),
        port: s.dport.to_be(),
        proto: s.proto,
        family: s.family as u8,
    };
    // Through references: `get(key)` would copy the key first.
    let k = &key;
    // SAFETY: plain data, copied out.
    let info = match unsafe { LB_SERVICES.get(k) } {
        Some(info) => *info,
        None => {
            key.port = 0;
            let k = &key;
            // SAFETY: as above.
            match unsafe { LB_SERVICES.get(k) } {
                Some(info) => *info,
                None => return Outcome::Act(Action::Pass),
            }
        }
    };
    if !balanceable(ctx, s) {
        return Outcome::Bypass;
    }
    let out = forward(ctx, s, info.ring_base, info.ring_size, info.flags);
    match out {
        Outcome::Act(Action::Pass) => {
            stats::count_service(info.slot, ServiceStat::SlowPath, s.bytes)
        }
        Outcome::Act(_) => stats::count_service(info.slot, ServiceStat::Forwarded, s.bytes),
        Outcome::Drop(_) => stats::count_service(info.slot, ServiceStat::Dropped, s.bytes),
        Outcome::Bypass => {}
    }
    out
}

/// Whether a packet to a service can be balanced: an untagged frame of its
/// family that is not a fragment. IPv4: no MF flag and offset 0. IPv6: the
/// fixed header's next header is the transport protocol itself (a fragment
/// header, or any extension header, before it: not balanced). Fragments carry
/// ports only in the first one, so balancing by ports would split them.
#[inline(always)]
fn balanceable(ctx: &XdpContext, s: &SteerCtx) -> bool {
    let mut f = Frame::new(ctx);
    let Some(eth) = f.bytes::<14>(0) else {
        return false;
    };
    if s.family == Family::Ipv4 as u32 {
        if eth[12..14] != ETH_IPV4 {
            return false;
        }
        let Some(ip) = f.bytes::<20>(14) else {
            return false;
        };
        (ip[6] & 0x3f) == 0 && ip[7] == 0
    } else {
        if eth[12..14] != ETH_IPV6 {
            return false;
        }
        let Some(ip) = f.bytes::<40>(14) else {
            return false;
        };
        ip[6] == s.proto
    }
}

/// Picks the backend from the ring and forwards to it.
#[inline(always)]
fn forward(ctx: &XdpContext, s: &SteerCtx, ring_base: u32, ring_size: u32, flags: u32) -> Outcome {
    if ring_size == 0 {
        return Outcome::Drop(DropReason::LbNoBackend);
    }
    let hash = flow_hash(&s.src, &s.dst, s.sport, s.dport, s.proto);
    let slot = match LB_RINGS.get(ring_base + hash % ring_size) {
        Some(slot) => *slot,
        None => 0,
    };
    if slot == 0 {
        return Outcome::Drop(DropReason::LbNoBackend);
    }
    let Some(backend) = LB_BACKENDS.get(slot) else {
        return Outcome::Drop(DropReason::LbNoBackend);
    };
    // Same index range as `LB_BACKENDS`: present whenever the backend is.
    let Some(hop) = LB_NEXTHOP.get_ptr_mut(slot) else {
        return Outcome::Drop(DropReason::LbNoRoute);
    };
    let out = if flags & SERVICE_L2DSR != 0 {
        l2dsr(ctx, s, backend, hop)
    } else {
        encap(ctx, s, backend, hop, hash)
    };
    if let Outcome::Act(_) = out {
        stats::count_backend(slot, s.bytes);
    }
    out
}

/// A `bpf_fib_lookup` request, aligned so that it can be zeroed in words.
#[repr(C, align(8))]
struct FibRequest(bpf_fib_lookup);

/// Words of a [`FibRequest`].
const FIB_WORDS: usize = core::mem::size_of::<FibRequest>() / 8;

/// Runs a FIB lookup; the kernel's `BPF_FIB_LKUP_RET_*` code (negative on a
/// bad request).
#[inline(always)]
fn fib(ctx: &XdpContext, p: &mut bpf_fib_lookup) -> i64 {
    // SAFETY: `p` is a valid request of the size passed.
    unsafe {
        fib_lookup(
            ctx.ctx.cast(),
            p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    }
}

/// A backend's address as four words, bytes in memory order (IPv4: word 0).
#[inline(always)]
fn backend_words(b: &Backend) -> [u32; 4] {
    let w = b.addr.as_ptr().cast::<u32>();
    // SAFETY: `Backend` is `repr(C)` with u32 fields, so `addr` (its first
    // field) is 4-aligned; the four words lie inside it.
    unsafe { [*w, *w.add(1), *w.add(2), *w.add(3)] }
}

/// An address as four words, bytes in memory order.
#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// Whether the egress device `ifindex` takes an L3 packet of `len` bytes
/// (`bpf_check_mtu` with `len` as the packet's length: the FIB lookup's
/// comparison, `len` against the device's MTU).
#[inline(always)]
fn mtu_ok(ctx: &XdpContext, ifindex: u32, len: u16) -> bool {
    let mut mtu_len = len as u32;
    // SAFETY: `mtu_len` is a valid, initialised u32 the helper reads and writes.
    unsafe { bpf_check_mtu(ctx.ctx.cast(), ifindex, &mut mtu_len, 0, 0) == 0 }
}

/// The next hop to `backend` for an L3 packet of `len` bytes from outer
/// source `src` carrying `proto` (L2 DSR: zero and 0), in `mode`. `hop` is
/// the backend slot's cache entry on this CPU: used when valid for the packet
/// (see [`NextHop`]) and the egress device's MTU takes it; otherwise
/// `bpf_fib_lookup` decides, as without the cache, and a success (for L2 DSR
/// only an on-link backend) is written into `hop`. Returns the lookup's
/// `BPF_FIB_LKUP_RET_*` code: on SUCCESS `hop` holds the next hop. L2 DSR to
/// a backend behind a gateway comes back as NO_NEIGH.
#[inline(always)]
fn resolve(
    ctx: &XdpContext,
    hop: *mut NextHop,
    backend: &Backend,
    mode: u8,
    src: &[u32; 4],
    proto: u8,
    len: u16,
) -> i64 {
    let v4 = backend.family == FAMILY_V4 as u32;
    let family = backend.family as u8;
    // The coarse clock (CLOCK_MONOTONIC_COARSE, a tick's resolution) is
    // plenty for a 1 s lifetime and costs less than `bpf_ktime_get_ns`
    // (measured: 40-60 ns per forwarded packet less on this VM).
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // Loaded after the call, so not kept (spilled) across it.
    let dst = backend_words(backend);
    let ingress = ctx.ingress_ifindex() as u32;
    // SAFETY: this CPU's entry of a per-CPU array; nothing else holds it.
    let e = unsafe { &mut *hop };
    if e.expires > now
        && e.iif == ingress
        && e.mode == mode
        && e.family == family
        && len <= e.fits
        && e.addr[0] == dst[0]
        && e.addr[1] == dst[1]
        && e.addr[2] == dst[2]
        && e.addr[3] == dst[3]
        && mtu_ok(ctx, e.ifindex, len)
    {
        return BPF_FIB_LKUP_RET_SUCCESS as i64;
    }
    // The request, zeroed word by word (volatile: no `memset` call, which
    // LLVM emits for a zeroed struct and which costs the verifier a loop).
    let mut req = core::mem::MaybeUninit::<FibRequest>::uninit();
    let w = req.as_mut_ptr().cast::<u64>();
    for i in 0..FIB_WORDS {
        // SAFETY: inside `req`, 8-aligned.
        unsafe { core::ptr::write_volatile(w.add(i), 0) };
    }
    // SAFETY: all-zero is a valid (empty) request, written just above.
    let p = unsafe { &mut (*req.as_mut_ptr()).0 };
    p.ifindex = ingress;
    p.__bindgen_anon_1.tot_len = len;
    p.l4_protocol = proto;
    // L2 DSR's source is zero: the request has it already (writing the
    // zeros would become a `memset` call).
    let with_src = mode == HOP_ENCAP;
    if v4 {
        p.family = AF_INET;
        if with_src {
            p.__bindgen_anon_3.ipv4_src = src[0];
        }
        p.__bindgen_anon_4.ipv4_dst = dst[0];
    } else {
        p.family = AF_INET6;
        // SAFETY (both): writing plain-data union members.
        unsafe {
            if with_src {
                p.__bindgen_anon_3.ipv6_src[0] = src[0];
                p.__bindgen_anon_3.ipv6_src[1] = src[1];
                p.__bindgen_anon_3.ipv6_src[2] = src[2];
                p.__bindgen_anon_3.ipv6_src[3] = src[3];
            }
            p.__bindgen_anon_4.ipv6_dst[0] = dst[0];
            p.__bindgen_anon_4.ipv6_dst[1] = dst[1];
            p.__bindgen_anon_4.ipv6_dst[2] = dst[2];
            p.__bindgen_anon_4.ipv6_dst[3] = dst[3];
        }
    }
    let ret = fib(ctx, p);
    if ret != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        // Too big for the route: the entry still serves shorter packets.
        // Anything else: the next hop is gone, look it up again next time.
        if ret != BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
            e.expires = 0;
        }
        return ret;
    }
    // Read again rather than kept across the call (fewer spills).
    let dst = backend_words(backend);
    if mode == HOP_L2DSR {
        // The lookup replaces the destination with the gateway when there is
        // one: then the backend is not on-link and L2 DSR cannot reach it.
        // SAFETY: reading the union member of the family requested.
        let on_link = unsafe {
            if v4 {
                p.__bindgen_anon_4.ipv4_dst == dst[0]
            } else {
                let d = &p.__bindgen_anon_4.ipv6_dst;
                d[0] == dst[0] && d[1] == dst[1] && d[2] == dst[2] && d[3] == dst[3]
            }
        };
        if !on_link {
            e.expires = 0;
            return BPF_FIB_LKUP_RET_NO_NEIGH as i64;
        }
    }
    // The MACs as three words: `smac` and `dmac` are adjacent, 4-aligned.
    const { assert!(core::mem::offset_of!(bpf_fib_lookup, smac) % 4 == 0) };
    const {
        assert!(
            core::mem::offset_of!(bpf_fib_lookup, dmac)
                == core::mem::offset_of!(bpf_fib_lookup, smac) + 6
        )
    };
    let m = p.smac.as_ptr().cast::<u32>();
    // SAFETY: the 12 bytes of `smac` and `dmac`, 4-aligned (checked above;
    // the request is 8-aligned).
    let macs = unsafe { [*m, *m.add(1), *m.add(2)] };
    e.addr = dst;
    e.expires = now + HOP_LIFETIME_NS;
    e.iif = ingress;
    e.ifindex = p.ifindex;
    e.macs = macs;
    e.fits = len;
    e.family = family;
    e.mode = mode;
    ret
}

/// The destination and source MAC of a resolved next hop.
#[inline(always)]
fn hop_macs(hop: *const NextHop) -> ([u8; 6], [u8; 6]) {
    // SAFETY: the caller's entry, filled by `resolve`.
    let m = unsafe { (*hop).macs };
    let (a, b, c) = (m[0].to_ne_bytes(), m[1].to_ne_bytes(), m[2].to_ne_bytes());
    (
        [b[2], b[3], c[0], c[1], c[2], c[3]],
        [a[0], a[1], a[2], a[3], b[0], b[1]],
    )
}

/// The action that sends a frame out of `egress`: XDP_TX when it is the
/// ingress interface, a redirect otherwise.
#[inline(always)]
fn send(ctx: &XdpContext, egress: u32) -> Outcome {
    if egress == ctx.ingress_ifindex() as u32 {
        return Outcome::Act(Action::Tx);
    }
    // SAFETY: plain helper call; it returns XDP_REDIRECT or XDP_ABORTED.
    if unsafe { bpf_redirect(egress, 0) } == Action::Redirect as i64 {
        Outcome::Act(Action::Redirect)
    } else {
        Outcome::Drop(DropReason::LbNoRoute)
    }
}

/// L2 direct server return: the backend must be on-link; only the Ethernet
/// addresses change.
#[inline(always)]
fn l2dsr(ctx: &XdpContext, s: &SteerCtx, backend: &Backend, hop: *mut NextHop) -> Outcome {
    let len = (s.bytes as u16).saturating_sub(14);
    let ret = resolve(ctx, hop, backend, HOP_L2DSR, &[0; 4], 0, len);
    if ret == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return Outcome::Drop(DropReason::LbNoNeighbor);
    }
    if ret == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        return Outcome::Drop(DropReason::LbTooBig);
    }
    if ret != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Outcome::Drop(DropReason::LbNoRoute);
    }
    let (d, m) = hop_macs(hop);
    // SAFETY: `resolve` filled this CPU's entry.
    let egress = unsafe { (*hop).ifindex };
    let macs = [
        d[0], d[1], d[2], d[3], d[4], d[5], m[0], m[1], m[2], m[3], m[4], m[5],
    ];
    if !Frame::new(ctx).write(0, &macs) {
        return Outcome::Bypass;
    }
    send(ctx, egress)
}

/// The outer source for a flow: the configured prefix with the flow hash in
/// its host bits.
#[inline(always)]
fn outer_source(cfg: &LbConfig, v4: bool, hash: u32) -> [u8; 16] {
    let mut src = [0u8; 16];
    if v4 {
        let word = u32::from_be_bytes(cfg.src_v4) | (hash & cfg.mask_v4);
        src[..4].copy_from_slice(&word.to_be_bytes());
    } else {
        src = cfg.src_v6;
        let last = u32::from_be_bytes([src[12], src[13], src[14], src[15]]) | (hash & cfg.mask_v6);
        src[12..16].copy_from_slice(&last.to_be_bytes());
    }
    src
}

/// Encapsulates the packet in an outer header of the backend's family and
/// sends it to the backend.
#[inline(always)]
fn encap(
    ctx: &XdpContext,
    s: &SteerCtx,
    backend: &Backend,
    hop: *mut NextHop,
    hash: u32,
) -> Outcome {
    let inner_v4 = s.family == Family::Ipv4 as u32;
    let outer_v4 = backend.family == FAMILY_V4 as u32;
    let default = LbConfig::default();
    let cfg = LB_CONFIG.get(0).unwrap_or(&default);
    let ttl = if cfg.ttl == 0 || cfg.ttl > 255 {
        DEFAULT_OUTER_TTL as u8
    } else {
        cfg.ttl as u8
    };
    let mut f = Frame::new(ctx);
    let Some(eth) = f.read::<14>(0) else {
        return Outcome::Bypass;
    };
    // Inner length (from its own header: Ethernet padding is not carried)
    // and traffic class.
    let (inner_len, tos) = if inner_v4 {
        if eth[12..14] != ETH_IPV4 {
            return Outcome::Bypass;
        }
        let Some(ip) = f.bytes::<20>(14) else {
            return Outcome::Bypass;
        };
        (u16::from_be_bytes([ip[2], ip[3]]) as u32, ip[1])
    } else {
        if eth[12..14] != ETH_IPV6 {
            return Outcome::Bypass;
        }
        let Some(ip) = f.bytes::<40>(14) else {
            return Outcome::Bypass;
        };
        (
            u16::from_be_bytes([ip[4], ip[5]]) as u32 + 40,
            (ip[0] << 4) | (ip[1] >> 4),
        )
    };
    let hdr_len: u32 = if outer_v4 { 20 } else { 40 };
    let outer_len = inner_len + hdr_len;
    if outer_len > 0xffff {
        return Outcome::Drop(DropReason::LbTooBig);
    }
    let proto = if inner_v4 { IPPROTO_IPIP } else { IPPROTO_IPV6 };
    let src = outer_source(cfg, outer_v4, hash);
    let ret = resolve(
        ctx,
        hop,
        backend,
        HOP_ENCAP,
        &words(&src),
        proto,
        outer_len as u16,
    );
    let (dmac, smac, egress) = if ret == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        let (d, m) = hop_macs(hop);
        // SAFETY: `resolve` filled this CPU's entry.
        (d, m, unsafe { (*hop).ifindex })
    } else if ret == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        // The stack forwards it and resolves the neighbour meanwhile.
        (
            [eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]],
            [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]],
            0,
        )
    } else if ret == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        return Outcome::Drop(DropReason::LbTooBig);
    } else {
        return Outcome::Drop(DropReason::LbNoRoute);
    };
    if !adjust_head(ctx, -(hdr_len as i32)) {
        return Outcome::Drop(DropReason::LbTooBig);
    }
    let mut f = Frame::new(ctx);
    let ty = if outer_v4 { ETH_IPV4 } else { ETH_IPV6 };
    let new_eth = [
        dmac[0], dmac[1], dmac[2], dmac[3], dmac[4], dmac[5], smac[0], smac[1], smac[2], smac[3],
        smac[4], smac[5], ty[0], ty[1],
    ];
    if !f.write(0, &new_eth) {
        return Outcome::Act(Action::Aborted);
    }
    let dst = &backend.addr;
    // In pieces, from values already at hand: no header-sized copy on the
    // stack (the steering program's frame is close to the 512-byte limit).
    let written = if outer_v4 {
        let src_word = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        let dst_word = u32::from_be_bytes([dst[0], dst[1], dst[2], dst[3]]);
        // RFC 1071 over the ten header words (identification and fragment
        // offset are zero, so they add nothing).
        let mut sum = (0x45u32 << 8) | tos as u32;
        sum += outer_len;
        sum += ((ttl as u32) << 8) | proto as u32;
        sum = add32(sum, src_word);
        sum = add32(sum, dst_word);
        let ck = (!fold32(sum)).to_be_bytes();
        let len = (outer_len as u16).to_be_bytes();
        f.write(
            14,
            &[
                0x45, tos, len[0], len[1], 0, 0, 0, 0, ttl, proto, ck[0], ck[1],
            ],
        ) && f.write(26, &src_word.to_be_bytes())
            && f.write(30, &dst_word.to_be_bytes())
    } else {
        let flow = hash & 0x000f_ffff;
        let len = (inner_len as u16).to_be_bytes();
        f.write(
            14,
            &[
                0x60 | (tos >> 4),
                ((tos & 0x0f) << 4) | (flow >> 16) as u8,
                (flow >> 8) as u8,
                flow as u8,
                len[0],
                len[1],
                proto,
                ttl,
            ],
        ) && f.write(22, &src)
            && f.write(38, dst)
    };
    if !written {
        return Outcome::Act(Action::Aborted);
    }
    if egress == 0 {
        return Outcome::Act(Action::Pass);
    }
    send(ctx, egress)
}

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
//!   kernel's FIB (`bpf_fib_lookup`): the packet leaves by XDP_TX when the
//!   egress interface is the ingress one, by XDP_REDIRECT otherwise. When the
//!   next hop has no neighbour entry yet, the encapsulated packet is passed to
//!   the stack, which forwards it and resolves the neighbour (counted
//!   `slow_path`).
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
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
    maps::{DECAP_DSTS, LB_BACKENDS, LB_CONFIG, LB_RINGS, LB_SERVICES},
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
    s.src = f.src;
    s.dst = f.dst;
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
    if s.flags & IFACE_DECAP != 0 && (s.proto == IPPROTO_IPIP || s.proto == IPPROTO_IPV6) {
        if let Some(action) = decap(ctx, s) {
            return action;
        }
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
    // SAFETY: presence check only.
    unsafe { DECAP_DSTS.get(&key) }?;
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
    // SAFETY: plain data, copied out.
    let info = match unsafe { LB_SERVICES.get(&key) } {
        Some(info) => *info,
        None => {
            key.port = 0;
            // SAFETY: as above.
            match unsafe { LB_SERVICES.get(&key) } {
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
    let out = if flags & SERVICE_L2DSR != 0 {
        l2dsr(ctx, s, backend)
    } else {
        encap(ctx, s, backend, hash)
    };
    if let Outcome::Act(_) = out {
        stats::count_backend(slot, s.bytes);
    }
    out
}

/// A zeroed FIB lookup request from `src` to `dst` (`v4`: IPv4 addresses in
/// the first 4 bytes) for a packet of `tot_len` bytes entering on `ifindex`.
#[inline(always)]
fn fib_request(
    v4: bool,
    src: &[u8; 16],
    dst: &[u8; 16],
    tot_len: u16,
    ifindex: u32,
) -> bpf_fib_lookup {
    // SAFETY: the struct is plain data; all-zero is a valid (empty) request.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.ifindex = ifindex;
    p.__bindgen_anon_1.tot_len = tot_len;
    if v4 {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src[0], src[1], src[2], src[3]]);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]);
    } else {
        p.family = AF_INET6;
        // SAFETY: same size, plain data.
        p.__bindgen_anon_3.ipv6_src = unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(*src) };
        // SAFETY: as above.
        p.__bindgen_anon_4.ipv6_dst = unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(*dst) };
    }
    p
}

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
fn l2dsr(ctx: &XdpContext, s: &SteerCtx, backend: &Backend) -> Outcome {
    let v4 = backend.family == FAMILY_V4 as u32;
    let len = (s.bytes as u16).saturating_sub(14);
    let mut p = fib_request(
        v4,
        &[0; 16],
        &backend.addr,
        len,
        ctx.ingress_ifindex() as u32,
    );
    let ret = fib(ctx, &mut p);
    if ret == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return Outcome::Drop(DropReason::LbNoNeighbor);
    }
    if ret == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        return Outcome::Drop(DropReason::LbTooBig);
    }
    if ret != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Outcome::Drop(DropReason::LbNoRoute);
    }
    // The lookup replaces the destination with the gateway when there is one:
    // then the backend is not on-link and L2 DSR cannot reach it.
    // SAFETY: reading the union member of the family requested.
    let on_link = unsafe {
        if v4 {
            p.__bindgen_anon_4.ipv4_dst
                == u32::from_ne_bytes([
                    backend.addr[0],
                    backend.addr[1],
                    backend.addr[2],
                    backend.addr[3],
                ])
        } else {
            p.__bindgen_anon_4.ipv6_dst == core::mem::transmute::<[u8; 16], [u32; 4]>(backend.addr)
        }
    };
    if !on_link {
        return Outcome::Drop(DropReason::LbNoNeighbor);
    }
    let (d, m) = (p.dmac, p.smac);
    let macs = [
        d[0], d[1], d[2], d[3], d[4], d[5], m[0], m[1], m[2], m[3], m[4], m[5],
    ];
    if !Frame::new(ctx).write(0, &macs) {
        return Outcome::Bypass;
    }
    send(ctx, p.ifindex)
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
fn encap(ctx: &XdpContext, s: &SteerCtx, backend: &Backend, hash: u32) -> Outcome {
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
    let ingress = ctx.ingress_ifindex() as u32;
    let mut p = fib_request(outer_v4, &src, &backend.addr, outer_len as u16, ingress);
    p.l4_protocol = proto;
    let ret = fib(ctx, &mut p);
    let (dmac, smac, egress) = if ret == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        (p.dmac, p.smac, p.ifindex)
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

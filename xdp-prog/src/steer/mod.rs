//! Steering: the load balancer and the decapsulator.
//!
//! They run in a second XDP program, `xdpgate_steer`, which the main program
//! tail-calls ([`tail_call`], `maps::PROGS`) for packets the ACL passed on
//! interfaces with `IFACE_LB` or `IFACE_DECAP`. Being a separate program, it
//! is verified on its own: its paths do not multiply the main program's.
//! What it knows of the packet comes through per-CPU memory
//! (`handoff::SteerCtx`, filled by [`fill`]); it reads and rewrites the frame
//! through `cursor::Frame`.
//!
//! [`run`] tries the steps in order, each in its own module:
//! - `decap` (`IFACE_DECAP`): IPIP, IPv6-in-IPv4, IP6IP6 and IPv4-in-IPv6
//!   packets to a listed outer destination lose their outer header.
//! - `service` (`IFACE_LB`): a packet with ports (TCP, UDP, SCTP; later
//!   fragments carry none and pass to the stack, so fragmented datagrams to
//!   a VIP are not supported) to a service in `LB_SERVICES` goes to the
//!   backend its flow hash picks from the service's Maglev ring, by
//! - `encap` (outer header of the backend's family, outer source varying per
//!   flow) or
//! - `l2dsr` (Ethernet addresses rewritten), the service's mode; both get
//!   the route and next hop from
//! - `nexthop`: the kernel's FIB (`bpf_fib_lookup`), cached per CPU and
//!   backend slot for 1 s; the packet leaves by XDP_TX when the egress
//!   interface is the ingress one, by XDP_REDIRECT otherwise. When the next
//!   hop has no neighbour entry yet, the encapsulated packet is passed to the
//!   stack, which forwards it and resolves the neighbour (counted
//!   `slow_path`).
mod decap;
mod encap;
mod l2dsr;
mod nexthop;
mod service;

use aya_ebpf::programs::XdpContext;
use xdpgate_common::{
    Action, Family, IFACE_DECAP, IFACE_LB,
    lb::PROG_STEER,
    wire::{IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP},
};

use self::nexthop::Outcome;
use crate::{
    handoff::{Fields, NONE, SteerCtx},
    maps::{PROGS, STEER_CTX},
    stats,
};

/// Hands a packet the ACL passed to the steering program when its
/// interface steers (`IFACE_LB` or `IFACE_DECAP`): [`hand_over`], then a
/// tail call. Returns only if the interface does not steer or the tail call
/// fails (no steering program loaded): the packet then passes as usual.
///
/// Nothing of the packet is kept across the classifier for this: per-path
/// values live across its calls cost the verifier half again as many
/// instructions (measured).
#[inline(always)]
pub(crate) fn tail_call(ctx: &XdpContext, slot: u32, flags: u32, bytes: u64) {
    if hand_over(slot, flags, bytes) {
        // SAFETY: a tail call with the program's own context.
        unsafe { PROGS.tail_call(ctx, PROG_STEER) };
    }
}

/// When the interface steers (`IFACE_LB` or `IFACE_DECAP`), writes its slot
/// and flags and the frame's length to `STEER_CTX` (the packet's fields are
/// in the classifier's `SCRATCH` already) and returns true: the steering
/// program's work may follow, by tail call ([`tail_call`]) or, in the
/// timing wrappers only, by direct call.
#[inline(always)]
pub(crate) fn hand_over(slot: u32, flags: u32, bytes: u64) -> bool {
    if flags & (IFACE_LB | IFACE_DECAP) == 0 {
        return false;
    }
    let Some(s) = STEER_CTX.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot, written here and read by the steering program's
    // work on the same CPU for the same packet.
    unsafe {
        (*s).bytes = bytes;
        (*s).slot = slot;
        (*s).flags = flags;
    }
    true
}

/// The packet's fields as the classifier laundered them (`handoff::Fields`),
/// into `s` (the main program wrote `bytes`, `slot` and `flags`). Ports
/// count only for TCP, UDP and SCTP with an L4 header (not later fragments).
#[inline(always)]
pub(crate) fn fill(s: &mut SteerCtx, f: &Fields) {
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
    let l4 = matches!(s.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) && f.sport != NONE;
    s.ports = l4 as u8;
    s.sport = if l4 { (f.sport & 0xffff) as u16 } else { 0 };
    s.dport = if l4 { (f.dport & 0xffff) as u16 } else { 0 };
}

/// Steers one packet and returns the XDP action; drops are counted here (the
/// interface/family/action counters are the caller's).
#[inline(always)]
pub(crate) fn run(ctx: &XdpContext, s: &SteerCtx) -> Action {
    if s.flags & IFACE_DECAP != 0
        && (s.proto == IPPROTO_IPIP || s.proto == IPPROTO_IPV6)
        && let Some(action) = decap::decap(ctx, s)
    {
        return action;
    }
    if s.flags & IFACE_LB != 0 && s.ports != 0 {
        return match service::lb(ctx, s) {
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

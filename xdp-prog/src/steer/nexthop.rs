//! Where a steered packet goes next: the route and next hop to a backend
//! from the kernel's FIB (`bpf_fib_lookup`), cached per CPU and backend slot
//! (`handoff::NextHop` in `maps::LB_NEXTHOP`) for as long as the routing
//! generation (`maps::LB_ROUTE_GEN`) stays the one it was resolved in, and
//! at most `HOP_LIFETIME_JIFFIES`; and the action that sends the
//! rewritten frame out
//! (XDP_TX back out of the ingress interface, XDP_REDIRECT to another).
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_jiffies64, bpf_redirect},
    programs::XdpContext,
};
use xdpgate_common::{
    Action, DropReason,
    lb::{Backend, FAMILY_V4, HOP_LIFETIME_JIFFIES},
};

use crate::{
    handoff::{HOP_ENCAP, HOP_L2DSR, NextHop},
    maps::LB_ROUTE_GEN,
};

/// Address families of `bpf_fib_lookup`.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

// `HOP_LIFETIME_JIFFIES` (common) is how long a resolved next hop is used
// at most without a new FIB lookup. With a daemon running, the routing
// generation moves at every route, neighbour, link, address or rule change
// the kernel reports and once a second, and an entry of an older generation
// is not used; the lifetime is what bounds a change without a daemon (the
// datapath outlives it). The trade-off: such a change (the neighbour's MAC
// address, the route, a route's or the egress device's MTU: no
// `bpf_check_mtu` per packet, about 20 ns of a forwarded packet, measured;
// docs/bench.md, "Load balancer path") takes effect within that time instead
// of at once; a failed lookup is never cached.
//
// `bpf_jiffies64` rather than `bpf_ktime_get_coarse_ns`: the verifier
// inlines it on a 64-bit JIT into a load of `jiffies`, where the coarse
// clock is a call into the kernel per packet (docs/bench.md, part 1b).

/// How a steered packet ends; `Drop` carries its reason.
#[derive(Clone, Copy)]
pub(super) enum Outcome {
    /// Sent on (or handed to the stack after rewriting) with this action.
    Act(Action),
    /// Dropped for this reason.
    Drop(DropReason),
    /// Not steered after all (a VLAN-tagged frame): passed unchanged.
    Bypass,
}

/// A `bpf_fib_lookup` request, aligned so that it can be zeroed in words.
#[repr(C, align(8))]
struct FibRequest(bpf_fib_lookup);

/// Words of a [`FibRequest`].
const FIB_WORDS: usize = size_of::<FibRequest>() / 8;

/// Runs a FIB lookup; the kernel's `BPF_FIB_LKUP_RET_*` code (negative on a
/// bad request).
#[inline(always)]
fn fib(ctx: &XdpContext, p: &mut bpf_fib_lookup) -> i64 {
    // SAFETY: `p` is a valid request of the size passed.
    unsafe { fib_lookup(ctx.ctx.cast(), p, size_of::<bpf_fib_lookup>() as i32, 0) }
}

/// A backend's address as four words, bytes in memory order (IPv4: word 0).
#[inline(always)]
fn backend_words(b: &Backend) -> [u32; 4] {
    let w = b.addr.as_ptr().cast::<u32>();
    // SAFETY: `Backend` is `repr(C)` with u32 fields, so `addr` (its first
    // field) is 4-aligned; the four words lie inside it.
    unsafe { [*w, *w.add(1), *w.add(2), *w.add(3)] }
}

/// The next hop to `backend` for an L3 packet of `len` bytes from outer
/// source `src` carrying `proto` (L2 DSR: zero and 0), in `mode`. `hop` is
/// the backend slot's cache entry on this CPU: used when valid for the packet
/// (see [`NextHop`]: of the routing generation in force, not expired, and
/// the packet no longer than the one the lookup checked against the route's
/// MTU, which is the egress device's unless the route sets its own); otherwise
/// `bpf_fib_lookup` decides, as without the cache, and a success (for L2 DSR
/// only an on-link backend) is written into `hop`. Returns the lookup's
/// `BPF_FIB_LKUP_RET_*` code: on SUCCESS `hop` holds the next hop. L2 DSR to
/// a backend behind a gateway comes back as NO_NEIGH.
#[inline(always)]
pub(super) fn resolve(
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
    // Read before the lookup: a change reported after it moves the word
    // past what the entry records. No word (cannot happen: an array of one):
    // generation 0, which the lifetime still bounds.
    let generation = match LB_ROUTE_GEN.get(0) {
        Some(g) => *g,
        None => 0,
    };
    // SAFETY: plain helper call (a load of `jiffies` once JIT-inlined).
    let now = unsafe { bpf_jiffies64() };
    // Loaded after the call, so not kept (spilled) across it.
    let dst = backend_words(backend);
    let ingress = ctx.ingress_ifindex() as u32;
    // SAFETY: this CPU's entry of a per-CPU array; nothing else holds it.
    let e = unsafe { &mut *hop };
    if e.generation == generation
        && e.expires > now
        && e.iif == ingress
        && e.mode == mode
        && e.family == family
        && len <= e.fits
        && e.addr[0] == dst[0]
        && e.addr[1] == dst[1]
        && e.addr[2] == dst[2]
        && e.addr[3] == dst[3]
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
        // SAFETY: writing plain-data union members (both addresses).
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
        );
    };
    let m = p.smac.as_ptr().cast::<u32>();
    // SAFETY: the 12 bytes of `smac` and `dmac`, 4-aligned (checked above;
    // the request is 8-aligned).
    let macs = unsafe { [*m, *m.add(1), *m.add(2)] };
    e.addr = dst;
    e.generation = generation;
    e.expires = now + HOP_LIFETIME_JIFFIES;
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
pub(super) fn hop_macs(hop: *const NextHop) -> ([u8; 6], [u8; 6]) {
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
pub(super) fn send(ctx: &XdpContext, egress: u32) -> Outcome {
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

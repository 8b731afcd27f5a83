//! The xdpgate XDP programs: `xdpgate`, attached to the interfaces, and the
//! two it tail-calls: `xdpgate_steer`, the load balancer and decapsulator,
//! and `xdpgate_ddos`, rate limits and SYN cookies; and two measurement-only
//! wrappers the daemon never loads (`timing`). This file holds the entry
//! points and the main program's work they share (`gate`).
//!
//! The modules are layers in the manner of Katran's `bpf/` split and
//! Cilium's header per feature; each imports only modules listed before it
//! (no import cycles):
//! - `wire`: the header structs (bytes and byte arrays, alignment 1); the
//!   EtherTypes, protocol numbers and offsets are `xdpgate_common::wire`.
//! - `cursor`: the only packet pointers: the parser's bounds-checked
//!   `Cursor`, the steering program's rewriting `Frame`, `load`.
//! - `handoff`: the values passed between parts through per-CPU maps.
//! - `maps`: every map (imports only `handoff` and `xdpgate_common`).
//! - `stats`: the counters.
//! - `parse`: a frame to a `Packet`, or the reason it is malformed.
//! - `bind`: the drop-unbound check.
//! - `addrcache`: the per-CPU IPv6 address-class cache.
//! - `acl`: the classifier.
//! - `events`: sampled drop events.
//! - `steer`: the steering program (`decap`, `service`, `nexthop`, `encap`,
//!   `l2dsr`).
//! - `limit`: the rate-limit action (GCRA buckets).
//! - `syncookie`: the SYN-cookie path.
//! - `ddos`: the DDoS program (limit, then SYN cookies, then steering).
//! - `timing`: the benchmark's wrappers that restore the frame after the
//!   load-balancer path (measurement only).
//!
//! Order per frame: parse (malformed frames stop here with their reason), then
//! on interfaces with `IFACE_DROP_UNBOUND` the bound-address check (unbound
//! unicast destinations stop here, reason `not_bound`), then the ACL. A drop
//! then goes to `events` (sampled datapath events, off by default). A packet
//! the ACL passes, on an interface with `IFACE_LB` or `IFACE_DECAP`, goes on
//! to the steering program `xdpgate_steer` (`steer`) by tail call. A packet
//! that a rule with a limit or `syncookie` allowed goes first to the DDoS
//! program `xdpgate_ddos` (`ddos`), which applies them and then hands what
//! it passes to steering the same way.
#![no_std]
#![no_main]
// BPF atomics with a result (`limit::cas`) are written as inline assembly.
#![feature(asm_experimental_arch)]

mod acl;
mod addrcache;
mod bind;
mod cursor;
mod ddos;
mod events;
mod handoff;
mod limit;
mod maps;
mod parse;
mod stats;
mod steer;
mod syncookie;
mod timing;
mod wire;

use acl::Decision;
use aya_ebpf::{bindings::xdp_md, macros::xdp, programs::XdpContext};
use xdpgate_common::{
    Action, DropReason, Family, IFACE_DROP_UNBOUND, IFACE_PASS_MALFORMED,
    acl::MAX_RULES,
    event_cause,
    limit::{RULE_LIMIT, RULE_SYNCOOKIE},
};

/// Set when the program was built with `XDPGATE_PROG_VARIANT` (only by
/// `cargo xtask test`, for its upgrade test): the program then reads the
/// clock once more and drops the result, so its tag differs while its
/// behaviour and its schema do not. Release builds never set it.
const VARIANT: bool = option_env!("XDPGATE_PROG_VARIANT").is_some();

/// Entry point: parse, classify, count, decide.
///
/// Loaded with multi-buffer support (`xdp.frags`), so that native mode
/// attaches on interfaces with jumbo MTUs. The parser reads only the first
/// buffer (`ctx.data..ctx.data_end`): headers that do not fit it are
/// malformed (the `truncated_*` reason of the header cut off); lengths are
/// checked, and bytes counted, over the whole frame (`cursor::frame_len`). The flag is part of the schema (the pinned
/// tail-call map keeps its owner's), so it never changes within one.
#[xdp(frags)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] macro passes the context by value"
)]
fn xdpgate(ctx: XdpContext) -> u32 {
    gate::<false>(&ctx)
}

/// The main program's work on one frame: parse, classify, count, decide.
/// `xdpgate` runs it with `DIRECT` false: a packet to steer leaves by tail
/// call to `xdpgate_steer`. The timing wrapper `xdpgate_time_path` runs it
/// with `DIRECT` true: where the tail call would be, it returns
/// `timing::STEER` instead, and the wrapper calls the steering program's work
/// ([`steer_packet`]) directly, so it times the very code a packet to a VIP
/// runs in production, in one program.
#[inline(always)]
fn gate<const DIRECT: bool>(ctx: &XdpContext) -> u32 {
    if VARIANT {
        // SAFETY: a helper without arguments or side effects on the packet.
        let _ = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    }
    let iface = stats::iface(ctx);
    let len = cursor::frame_len(ctx);
    let bytes = len as u64;
    let mut cursor = cursor::Cursor::new(ctx, len);
    // Each drop goes to `events::dropped` where its cause is known, so the
    // cause is not live across the paths' joins (6.1's verifier, which keeps
    // every scalar precise here, would tell the paths apart by it).
    let ifindex = ctx.ingress_ifindex() as u32;
    let (family, action) = match parse::parse(&mut cursor) {
        Ok(packet) => {
            // Non-IP frames are not subject to rules or to the bound-address check.
            let decided = if packet.family == Family::Other {
                Decision::NoRule
            } else {
                acl::classify(&packet, iface.slot, iface.flags & IFACE_DROP_UNBOUND != 0)
            };
            let action = match decided {
                Decision::NotBound => {
                    // A policy drop, not a malformed frame: IFACE_PASS_MALFORMED
                    // does not apply.
                    stats::count_reason(iface.slot, DropReason::NotBound, bytes);
                    events::dropped(ifindex, DropReason::NotBound as u32, 0);
                    Action::Drop
                }
                Decision::Rule(rule) => {
                    stats::count_rule(rule.counter, bytes);
                    if rule.flags & (RULE_LIMIT | RULE_SYNCOOKIE) != 0
                        && rule.action == Action::Pass as u32
                    {
                        ddos::tail_call(ctx, rule, iface, ifindex, bytes);
                        // The DDoS program is not installed: closed.
                        Action::Drop
                    } else if rule.action == Action::Drop as u32 {
                        let cause = if rule.counter < MAX_RULES {
                            event_cause::RULE
                        } else {
                            event_cause::DEFAULT_POLICY
                        };
                        events::dropped(ifindex, cause, rule.id);
                        Action::Drop
                    } else {
                        Action::Pass
                    }
                }
                Decision::NoRule => Action::Pass,
            };
            if action == Action::Pass && packet.family != Family::Other {
                if DIRECT {
                    if steer::hand_over(iface.slot, iface.flags, bytes) {
                        return timing::STEER;
                    }
                } else {
                    steer::tail_call(ctx, iface.slot, iface.flags, bytes);
                }
            }
            (packet.family, action)
        }
        Err(bad) => {
            stats::count_reason(iface.slot, bad.reason, bytes);
            let action = if iface.flags & IFACE_PASS_MALFORMED != 0 {
                Action::Pass
            } else {
                events::dropped(ifindex, bad.reason as u32, 0);
                Action::Drop
            };
            (bad.family, action)
        }
    };
    stats::count(iface.slot, family, action, bytes);
    action as u32
}

/// The steering program (load balancing and decapsulation), reached only by
/// tail call from `xdpgate`; counts the packet like the main program would.
#[xdp(frags)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] macro passes the context by value"
)]
fn xdpgate_steer(ctx: XdpContext) -> u32 {
    steer_packet(&ctx)
}

/// The steering program's work on the packet the main program handed over
/// (`STEER_CTX`, `SCRATCH`): fill the context, steer, count.
#[inline(always)]
fn steer_packet(ctx: &XdpContext) -> u32 {
    let Some(s) = maps::STEER_CTX.get_ptr_mut(0) else {
        return Action::Pass as u32;
    };
    let Some(f) = maps::SCRATCH.get_ptr(0) else {
        return Action::Pass as u32;
    };
    // SAFETY: per-CPU slots written by the main program for this packet just
    // before the tail call (`SCRATCH` by the classifier).
    let s = unsafe {
        steer::fill(&mut *s, &*f);
        &*s
    };
    let family = if s.family == Family::Ipv4 as u32 {
        Family::Ipv4
    } else {
        Family::Ipv6
    };
    let action = steer::run(ctx, s);
    stats::count(s.slot, family, action, s.bytes);
    action as u32
}

/// The DDoS program (`ddos`: limits and SYN cookies), reached only by tail
/// call from `xdpgate` for packets that a rule with a limit or `syncookie`
/// allowed; counts the packet like the main program would.
#[xdp(frags)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] macro passes the context by value"
)]
fn xdpgate_ddos(ctx: XdpContext) -> u32 {
    ddos::run(&ctx)
}

/// Measurement only, never loaded by the daemon (see `timing`): the path a
/// packet takes in production, the main program's work, then the steering
/// program's called directly in place of the tail call, followed by the
/// restoration of the frame it was given, so that every repetition of a
/// `BPF_PROG_TEST_RUN` sees the same bytes.
#[xdp(frags)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] macro passes the context by value"
)]
fn xdpgate_time_path(ctx: XdpContext) -> u32 {
    let Some(saved) = timing::save(&ctx) else {
        return Action::Aborted as u32;
    };
    let mut action = timed_main(ctx.ctx);
    if action == timing::STEER {
        action = timed_steer(ctx.ctx);
    }
    timing::restore(&ctx, &saved, action)
}

/// Measurement only, never loaded by the daemon (see `timing`): the same
/// save and restore work as `xdpgate_time_path`, and the same two calls,
/// around nothing (XDP_PASS): the baseline the path is timed against.
#[xdp(frags)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] macro passes the context by value"
)]
fn xdpgate_time_noop(ctx: XdpContext) -> u32 {
    let Some(saved) = timing::save(&ctx) else {
        return Action::Aborted as u32;
    };
    let mut action = timed_nothing(ctx.ctx, timing::STEER);
    if action == timing::STEER {
        action = timed_nothing(ctx.ctx, Action::Pass as u32);
    }
    timing::restore(&ctx, &saved, action)
}

/// The main program's part of `xdpgate_time_path`, as a BPF-to-BPF call.
/// Inlined, the verifier would check the steering code once per state the
/// main program reaches it in: more than its 1,000,000 instructions
/// (measured on 6.18). After the call returns, those states are one.
#[inline(never)]
fn timed_main(ctx: *mut xdp_md) -> u32 {
    gate::<true>(&XdpContext::new(ctx))
}

/// The steering program's part of `xdpgate_time_path`, as a BPF-to-BPF
/// call: inlined into the wrapper, its stack frame and the saved header
/// exceed the 512-byte stack (LLVM refuses it, measured).
#[inline(never)]
fn timed_steer(ctx: *mut xdp_md) -> u32 {
    steer_packet(&XdpContext::new(ctx))
}

/// `xdpgate_time_noop`'s stand-in for [`timed_main`] and [`timed_steer`]:
/// returns `action` through the same kind of call. Read through memory:
/// LLVM would otherwise fold the result into the caller and drop the call.
#[inline(never)]
fn timed_nothing(_ctx: *mut xdp_md, action: u32) -> u32 {
    // SAFETY: reads a local through a valid pointer.
    unsafe { core::ptr::read_volatile(&raw const action) }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

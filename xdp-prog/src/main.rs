//! The xdpgate XDP programs: `xdpgate`, attached to the interfaces, and the
//! two it tail-calls: `xdpgate_steer`, the load balancer and decapsulator,
//! and `xdpgate_ddos`, rate limits and SYN cookies. This file holds the
//! three entry points only.
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
//! - `acl`: the classifier.
//! - `events`: sampled drop events.
//! - `steer`: the steering program (`decap`, `service`, `nexthop`, `encap`,
//!   `l2dsr`).
//! - `limit`: the rate-limit action (GCRA buckets).
//! - `syncookie`: the SYN-cookie path.
//! - `ddos`: the DDoS program (limit, then SYN cookies, then steering).
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
mod wire;

use acl::Decision;
use aya_ebpf::{macros::xdp, programs::XdpContext};
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
    if VARIANT {
        // SAFETY: a helper without arguments or side effects on the packet.
        let _ = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    }
    let iface = stats::iface(&ctx);
    let len = cursor::frame_len(&ctx);
    let bytes = len as u64;
    let mut cursor = cursor::Cursor::new(&ctx, len);
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
                        ddos::tail_call(&ctx, rule, iface, ifindex, bytes);
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
                steer::tail_call(&ctx, iface.slot, iface.flags, bytes);
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
    let action = steer::run(&ctx, s);
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

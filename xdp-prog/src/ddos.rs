//! The DDoS program `xdpgate_ddos`, tail-called by the main program for a
//! packet that a rule with a limit or `syncookie` allowed (see
//! `docs/design/ddos.md`): first the rule's limit (`limit`), then for a
//! `syncookie` rule the SYN-cookie path (`syncookie`); a packet that passes
//! both goes on to steering like any other passed packet.
//!
//! Why a program of its own: inlined after the classifier, the limit's
//! checks were verified once per way out of the classifier (measured on
//! 6.18: 166k -> 461k instructions for the main program); here they are
//! verified once, and the main program only hands over and tail-calls.
use aya_ebpf::programs::XdpContext;
use xdpgate_common::{
    Action, DropReason, Family, IfaceConfig,
    acl::RuleInfo,
    lb::PROG_DDOS,
    limit::{RULE_LIMIT, RULE_SYNCOOKIE, rule_stat},
};

use crate::{
    handoff::{DdosCtx, Fields},
    limit,
    maps::{DDOS_CTX, PROGS, SCRATCH},
    stats, steer, syncookie,
};

/// Hands a packet that `rule` allowed to the DDoS program. Returns only if
/// the tail call failed (the program is not installed); the caller drops
/// the packet.
#[inline(always)]
pub(crate) fn tail_call(
    ctx: &XdpContext,
    rule: &RuleInfo,
    iface: IfaceConfig,
    ifindex: u32,
    bytes: u64,
) {
    let Some(s) = DDOS_CTX.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, read by the tail-called program for this packet;
    // then a tail call with the program's own context. Field by field into
    // map memory: a struct built on the stack and copied cost the main
    // program's verifier a copy per way out of the classifier.
    unsafe {
        (*s).bytes = bytes;
        (*s).slot = iface.slot;
        (*s).iface_flags = iface.flags;
        (*s).ifindex = ifindex;
        (*s).counter = rule.counter;
        (*s).rule_id = rule.id;
        (*s).rule_flags = rule.flags;
        (*s).limit = rule.limit;
        PROGS.tail_call(ctx, PROG_DDOS);
    }
}

/// The DDoS program's body: its verdict, counted like the main program
/// counts one.
#[inline(always)]
pub(crate) fn run(ctx: &XdpContext) -> u32 {
    let Some(s) = DDOS_CTX.get_ptr(0) else {
        return Action::Drop as u32;
    };
    // SAFETY: per-CPU slot written by the main program before the tail call
    // (a reference, not a copy: the stack is 512 bytes for all frames).
    let s: &DdosCtx = unsafe { &*s };
    let Some(f) = SCRATCH.get_ptr(0) else {
        return Action::Drop as u32;
    };
    // SAFETY: the classifier's fields of this packet, looked up once here
    // for the limit and the SYN-cookie path.
    let f: &Fields = unsafe { &*f };
    let family = if f.v4 != 0 {
        Family::Ipv4
    } else {
        Family::Ipv6
    };
    let verdict =
        if s.rule_flags & RULE_LIMIT != 0 && !limit::admit(&s.limit, s.counter, s.bytes, f) {
            Err(DropReason::RateLimited)
        } else if s.rule_flags & RULE_SYNCOOKIE != 0 {
            syncookie::decide(ctx, s, f)
        } else {
            Ok(Action::Pass)
        };
    let action = match verdict {
        Ok(a) => a,
        Err(reason) => {
            let kind = match reason {
                DropReason::RateLimited => rule_stat::LIMITED,
                DropReason::SynackLimited => rule_stat::SYNACKS_LIMITED,
                _ => rule_stat::BAD_COOKIES,
            };
            limit::count(s.counter, kind, s.bytes);
            // No datapath event: `events::emit`'s frame on top of this
            // program's exceeds the 512-byte stack (measured: 576). The
            // counters say what happened, per rule and per interface.
            stats::count_reason(s.slot, reason, s.bytes);
            Action::Drop
        }
    };
    if action == Action::Pass {
        // On to load balancing or decapsulation, as from the main program.
        steer::tail_call(ctx, s.slot, s.iface_flags, s.bytes);
    }
    stats::count(s.slot, family, action, s.bytes);
    action as u32
}

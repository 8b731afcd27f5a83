//! Datapath events: sampled drops reported through aya-log, off by default.
//!
//! [`dropped`] runs on the drop path only. With events off (the default) it
//! costs one array lookup; with events on, each CPU reports one of every
//! `sample_every` drops, and each report costs about 170-200 ns more (this
//! record of about 200 bytes; measured with `BPF_PROG_TEST_RUN`, see the
//! README's Datapath events). The daemon reads the records, rate limits them
//! and writes them to its log (target `EVENT_TARGET`).
//!
//! The record is built in one place, [`emit`], behind one BPF-to-BPF call
//! ([`sampled`]): the verifier checks aya-log's serialisation code there,
//! apart from the classifier's states. The call takes no arguments; the drop
//! (ifindex, cause, rule) goes through the per-CPU `EVENT_SAMPLE` value
//! (`handoff::Pending`), and the addresses, protocol and ports come from the
//! classifier's per-CPU copy of the packet's fields (`SCRATCH`,
//! `handoff::Fields`), which holds this packet's fields for every drop
//! except a malformed frame (those report no addresses).
use aya_log_ebpf::info;
use xdpgate_common::{DropReason, EVENT_TARGET, event_cause};

use crate::{
    handoff::{Fields, NONE, Pending},
    maps::{EVENT_CONFIG, EVENT_SAMPLE, SCRATCH},
};

/// Reports a dropped packet when events are on and this drop is sampled.
/// `cause` is a `DropReason` index or an `event_cause` value; `rule` the rule
/// id for `event_cause::RULE`.
///
/// Only the on/off check and three stores are inlined into the drop paths;
/// the rest is one BPF-to-BPF function, [`sampled`]. A call is a point where
/// the verifier compares states, so the many drop paths of the classifier
/// meet there and the code behind it is checked about once, not once per
/// path.
///
/// The family is not passed at all: it is a constant the classifier branched
/// on, so the verifier would tell the paths apart by it (measured on 6.18:
/// 155k instructions processed became 290k). `emit` takes it from `SCRATCH`.
#[inline(always)]
pub(crate) fn dropped(ifindex: u32, cause: u32, rule: u32) {
    let Some(cfg) = EVENT_CONFIG.get_ptr(0) else {
        return;
    };
    // SAFETY: pointer to the map's only element, valid for the program's run.
    if unsafe { core::ptr::read_volatile(&raw const (*cfg).enabled) } == 0 {
        return;
    }
    let Some(p) = EVENT_SAMPLE.get_ptr_mut(0) else {
        return;
    };
    // The drop goes to `sampled` through memory, not as arguments: the call
    // then sees the same registers from every drop path. (6.1 cannot track
    // precision across BPF-to-BPF calls and treats every scalar as precise,
    // so constant arguments would tell the paths apart.)
    // SAFETY: per-CPU value, so no other CPU writes it concurrently.
    unsafe {
        core::ptr::write_volatile(&raw mut (*p).ifindex, ifindex);
        core::ptr::write_volatile(&raw mut (*p).cause, cause);
        core::ptr::write_volatile(&raw mut (*p).rule, rule);
    }
    sampled();
}

/// Counts a drop and writes a record for one of every `sample_every`.
#[inline(never)]
fn sampled() {
    let Some(cfg) = EVENT_CONFIG.get_ptr(0) else {
        return;
    };
    let Some(p) = EVENT_SAMPLE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the config's only element; a per-CPU value, so no other CPU
    // writes it concurrently.
    unsafe {
        let every = core::ptr::read_volatile(&raw const (*cfg).sample_every);
        let n = (*p).seen + 1;
        if n < every {
            (*p).seen = n;
            return;
        }
        (*p).seen = 0;
    }
    emit();
}

/// The port of a `Fields::sport`/`dport` class index (ICMP: type << 8 | code),
/// 0 when the packet has none.
#[inline(always)]
fn port(index: u32) -> u32 {
    if index == NONE { 0 } else { index & 0xffff }
}

/// An address as 16 bytes: IPv6 as is, IPv4 mapped (`::ffff:a.b.c.d`, which
/// aya-log's `{:i}` prints as such). One fixed size for both families keeps
/// the record's layout constant (a variable size costs a byte-copy loop).
#[inline(always)]
fn addr(v4: bool, words: [u32; 4]) -> [u8; 16] {
    let words = if v4 {
        [0, 0, 0xffffu32.to_be(), words[0]]
    } else {
        words
    };
    // SAFETY: [u32; 4] and [u8; 16] have the same size and no invalid values.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
}

/// The fields reported for a malformed frame (it never reached the
/// classifier).
static NO_FIELDS: Fields = Fields {
    src: [0; 4],
    dst: [0; 4],
    v4: 0,
    proto: 0,
    sport: NONE,
    dport: NONE,
};

/// Writes one drop record: the drop in `EVENT_SAMPLE`, the packet's fields
/// in `SCRATCH`.
#[inline(never)]
fn emit() {
    let Some(p) = EVENT_SAMPLE.get_ptr(0) else {
        return;
    };
    // SAFETY: per-CPU value `dropped` just wrote.
    let Pending {
        ifindex,
        cause,
        rule,
        ..
    } = unsafe { p.read_volatile() };
    // Malformed frames never reach the classifier: SCRATCH is another packet's.
    let fresh = cause == DropReason::NotBound as u32 || cause >= event_cause::RULE;
    // A reference, not a copy on the stack: this frame adds to the calling
    // program's, and 6.1 rounds each frame up to 32 bytes within a 512-byte
    // total (a copy made it 136 bytes; with the main program's 296 that was
    // 544, refused).
    let scratch = if fresh { SCRATCH.get_ptr(0) } else { None };
    let f: &Fields = match scratch {
        // SAFETY: per-CPU slot the classifier wrote for this packet.
        Some(s) => unsafe { &*s },
        None => &NO_FIELDS,
    };
    let v4 = f.v4 != 0;
    // 4 or 6; 0 for a malformed frame (its reason tells the family).
    let family: u32 = if !fresh {
        0
    } else if v4 {
        4
    } else {
        6
    };
    info!(
        &(),
        target: EVENT_TARGET,
        "drop ifindex={} family={} cause={} rule={} proto={} src={:i} sport={} dst={:i} dport={}",
        ifindex,
        family,
        cause,
        rule,
        f.proto,
        addr(v4, f.src),
        port(f.sport),
        addr(v4, f.dst),
        port(f.dport)
    );
}

//! Per-CPU packet and byte counters: by interface slot, family and action;
//! by drop reason; by rule; decision-cache hits and misses; per service,
//! backend and decapsulation.
use aya_ebpf::programs::XdpContext;
use xdpgate_common::{
    Action, DropReason, Family, IfaceConfig, MAX_IFACES, UNKNOWN_IFACE_SLOT,
    lb::{ServiceStat, decap_stat_index, service_stat_index},
    reason_index, stats_index,
};

use crate::maps::{
    CACHE_STATS, DECAP_STATS, IFACE_INDEX, IFACE_SCRATCH, IFACES, LB_BACKEND_STATS,
    LB_SERVICE_STATS, REASONS, RULE_STATS, STATS,
};

/// The configuration of the receiving interface; unregistered interfaces get
/// slot 0 and default flags.
///
/// By index in `IFACE_INDEX` (an unregistered interface's entry is zero:
/// slot 0, no flags); an ifindex past its end (`IFACE_INDEX_ENTRIES`) is not
/// found there and is looked up in the hash map `IFACES`. Measured with
/// `BPF_PROG_TEST_RUN` on 6.18 (1,000 prefixes, 10 rules): the hash lookup
/// (a call that hashes the key) cost 24-30 ns per packet, about a third of
/// the main program's own cost for a denied packet; the array lookup is
/// inlined.
///
/// The configuration is laundered through per-CPU memory (`IFACE_SCRATCH`,
/// as `acl::classify` does with the packet's fields): the array hit, the
/// hash hit and the miss (constants) then reach the rest of the program with
/// the same unknown register state, and the verifier walks it once instead
/// of once per path. Measured in `cargo xtask vmtest --kernel 6.1`: without
/// the laundering 6.1 stopped at its limit of 1,000,000 processed
/// instructions; with it 481,956 (main with the hash lookup alone: 945,561).
/// 6.18 on the host: 206,407. A version that returned early from the
/// program when the scratch slot is missing (no unlaundered path at all)
/// was refused by 6.1 for another reason: LLVM then spilled the prefix
/// length in `acl::search` before its bounds check and 6.1 lost the bound.
///
/// The slot is masked into `0..MAX_IFACES`, not compared: the control plane
/// writes no larger slot (`Datapath::register` refuses one), and for the
/// comparison LLVM emits `r1 = 256; if r1 > r6` once the value comes from
/// an array map, after which 6.18's verifier processes 462,860 instructions
/// instead of 167,674 (measured).
#[inline(always)]
pub(crate) fn iface(ctx: &XdpContext) -> IfaceConfig {
    const { assert!(MAX_IFACES.is_power_of_two()) };
    let ifindex = ctx.ingress_ifindex() as u32;
    let found = IFACE_INDEX
        .get_ptr(ifindex)
        .or_else(|| IFACES.get_ptr(ifindex));
    // SAFETY: the map value is plain data and only read here.
    let cfg = match found.map(|p| unsafe { p.read_volatile() }) {
        Some(cfg) => cfg,
        None => IfaceConfig {
            slot: UNKNOWN_IFACE_SLOT,
            flags: 0,
        },
    };
    // The scratch slot is never missing (a one-entry array); the verifier's
    // path without it keeps the values as they are.
    let cfg = match IFACE_SCRATCH.get_ptr_mut(0) {
        // SAFETY: per-CPU scratch slot, written and read back by this packet only.
        Some(scratch) => unsafe {
            scratch.write_volatile(cfg);
            scratch.read_volatile()
        },
        None => cfg,
    };
    IfaceConfig {
        slot: cfg.slot & (MAX_IFACES - 1),
        flags: cfg.flags,
    }
}

#[inline(always)]
fn add(map: &aya_ebpf::maps::PerCpuArray<xdpgate_common::Counter>, index: u32, bytes: u64) {
    if let Some(counter) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU value, so no other CPU writes it concurrently.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}

/// Adds a frame of `bytes` to the counters of its interface slot, family and action.
#[inline(always)]
pub(crate) fn count(slot: u32, family: Family, action: Action, bytes: u64) {
    add(&STATS, stats_index(slot, family, action), bytes);
}

/// Adds a frame of `bytes` to the drop-reason counters of its interface slot.
#[inline(always)]
pub(crate) fn count_reason(slot: u32, reason: DropReason, bytes: u64) {
    add(&REASONS, reason_index(slot, reason), bytes);
}

/// Adds a frame of `bytes` to the counters of rule counter slot `counter`.
#[inline(always)]
pub(crate) fn count_rule(counter: u32, bytes: u64) {
    add(&RULE_STATS, counter, bytes);
}

/// Counts one decision-cache hit or miss (`cache_stat` index).
#[inline(always)]
pub(crate) fn count_cache(index: u32) {
    if let Some(counter) = CACHE_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU value, so no other CPU writes it concurrently.
        unsafe { *counter += 1 };
    }
}

/// Adds a frame to service slot `slot`'s counter of `what`.
#[inline(always)]
pub(crate) fn count_service(slot: u32, what: ServiceStat, bytes: u64) {
    add(&LB_SERVICE_STATS, service_stat_index(slot, what), bytes);
}

/// Adds a frame to the counters of backend slot `slot`.
#[inline(always)]
pub(crate) fn count_backend(slot: u32, bytes: u64) {
    add(&LB_BACKEND_STATS, slot, bytes);
}

/// Adds a decapsulated frame to interface slot `slot`'s counter of its outer
/// and inner families (`lb::FAMILY_*`).
#[inline(always)]
pub(crate) fn count_decap(slot: u32, outer: u8, inner: u8, bytes: u64) {
    add(&DECAP_STATS, decap_stat_index(slot, outer, inner), bytes);
}

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
    CACHE_STATS, DECAP_STATS, IFACES, LB_BACKEND_STATS, LB_SERVICE_STATS, REASONS, RULE_STATS,
    STATS,
};

/// The configuration of the receiving interface; unregistered interfaces get
/// slot 0 and default flags.
#[inline(always)]
pub(crate) fn iface(ctx: &XdpContext) -> IfaceConfig {
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: the map value is plain data and only read here.
    let cfg = match unsafe { IFACES.get(ifindex) } {
        Some(cfg) => *cfg,
        None => IfaceConfig {
            slot: UNKNOWN_IFACE_SLOT,
            flags: 0,
        },
    };
    if cfg.slot < MAX_IFACES {
        cfg
    } else {
        IfaceConfig {
            slot: UNKNOWN_IFACE_SLOT,
            flags: cfg.flags,
        }
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

//! Every map of the XDP program, each with its purpose. Names come from
//! `xdpgate_common::maps`; the control plane finds and pins them by those names.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use xdpgate_common::{Counter, IfaceConfig, MAX_IFACES, REASON_ENTRIES, STATS_ENTRIES};

/// Interfaces the daemon attached to, by ifindex: counter slot and flags.
#[map(name = "XG_IFACES")]
pub static IFACES: HashMap<u32, IfaceConfig> = HashMap::with_max_entries(MAX_IFACES, 0);

/// Per-CPU packet and byte counters by interface slot, family and action.
#[map(name = "XG_STATS")]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);

/// Per-CPU counters of malformed packets by interface slot and drop reason.
#[map(name = "XG_REASONS")]
pub static REASONS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_ENTRIES, 0);

//! Per-CPU packet and byte counters.
use aya_ebpf::programs::XdpContext;
use xdpgate_common::{Action, Family, MAX_IFACES, UNKNOWN_IFACE_SLOT, stats_index};

use crate::maps::{IFACES, STATS};

/// Adds the frame to the counters of its interface, family and action.
#[inline(always)]
pub fn count(ctx: &XdpContext, family: Family, action: Action) {
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: the map value is plain data and only read here.
    let slot = match unsafe { IFACES.get(ifindex) } {
        Some(cfg) => cfg.slot,
        None => UNKNOWN_IFACE_SLOT,
    };
    let slot = if slot < MAX_IFACES {
        slot
    } else {
        UNKNOWN_IFACE_SLOT
    };
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    if let Some(counter) = STATS.get_ptr_mut(stats_index(slot, family, action)) {
        // SAFETY: per-CPU value, so no other CPU writes it concurrently.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}

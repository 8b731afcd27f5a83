//! The per-CPU IPv6 address-class cache (`XG_ADDR_CACHE`): direct-mapped,
//! exact, from (epoch, address) to the address's class, consulted for the
//! source and the destination before the address tables (the /16 array and
//! the long-prefix table's probes) and written after a miss. See
//! `docs/design/acl.md`, "Address-class cache".
//!
//! The caller (`acl::v6_class`) calls [`get`], its own lookup, then [`put`]:
//! the lookup is not passed in as a closure, because a closure (or a function
//! item through `FnOnce`) is not inlined: in the object it was a BPF
//! subprogram, so every IPv6 address lookup, cache on or off, paid a
//! BPF-to-BPF call.
use xdpgate_common::acl::{addr_cache_index, cache_stat};

use crate::{maps::ADDR_CACHE, stats};

/// The cache slot of IPv6 address `addr`.
#[inline(always)]
pub(crate) fn slot(addr: &[u32; 4]) -> u32 {
    addr_cache_index(addr)
}

/// The class that slot `slot` holds for `addr` under `epoch` (never 0), if
/// it holds that address under this epoch; counts the hit or the miss.
#[inline(always)]
pub(crate) fn get(slot: u32, epoch: u32, addr: &[u32; 4]) -> Option<u16> {
    let e = ADDR_CACHE.get_ptr(slot)?;
    // SAFETY: per-CPU entry; nothing else on this CPU runs while we do.
    let (hit, class) = unsafe {
        (
            (*e).epoch == epoch
                && (*e).addr[0] == addr[0]
                && (*e).addr[1] == addr[1]
                && (*e).addr[2] == addr[2]
                && (*e).addr[3] == addr[3],
            (*e).class,
        )
    };
    if hit {
        stats::count_cache(cache_stat::ADDR_HIT);
        return Some(class);
    }
    stats::count_cache(cache_stat::ADDR_MISS);
    None
}

/// Stores `class` for `addr` under `epoch` in slot `slot`. The entry is
/// looked up again rather than kept from [`get`]: a pointer held across the
/// address lookup makes the verifier walk the lookup once with it and once
/// without.
#[inline(always)]
pub(crate) fn put(slot: u32, epoch: u32, addr: &[u32; 4], class: u16) {
    if let Some(e) = ADDR_CACHE.get_ptr_mut(slot) {
        // The epoch is cleared first and written last: an entry is never
        // valid with another address's class in it, even half written.
        // SAFETY: as in `get`; volatile so the stores keep their order.
        unsafe {
            core::ptr::write_volatile(&raw mut (*e).epoch, 0);
            core::ptr::write_volatile(&raw mut (*e).addr, *addr);
            core::ptr::write_volatile(&raw mut (*e).class, class);
            core::ptr::write_volatile(&raw mut (*e).epoch, epoch);
        }
    }
}

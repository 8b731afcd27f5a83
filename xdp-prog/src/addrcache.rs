//! The per-CPU IPv6 address-class cache (`XG_ADDR_CACHE`): direct-mapped,
//! exact, from (epoch, address) to the address's class, consulted for the
//! source and the destination before the address tables (the /16 array and
//! the long-prefix table's probes) and written after a miss. See
//! `docs/design/acl.md`, "Address-class cache".
use xdpgate_common::acl::{addr_cache_index, cache_stat};

use crate::{maps::ADDR_CACHE, stats};

/// The class of IPv6 address `addr` under `epoch` (never 0): from the cache
/// when it holds the address under this epoch, else from `lookup` (the
/// address tables), which is then stored. With `on` false (the decision
/// cache is off: `ACL_NO_CACHE`) only `lookup`, and nothing is counted.
#[inline(always)]
pub(crate) fn class(
    on: bool,
    epoch: u32,
    addr: &[u32; 4],
    lookup: impl FnOnce() -> Option<u16>,
) -> Option<u16> {
    // The slot's hash only with the cache on: the benchmark's "cache off"
    // rows measure the lookup without any of the cache's work.
    let index = if on { addr_cache_index(addr) } else { 0 };
    if on && let Some(e) = ADDR_CACHE.get_ptr(index) {
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
    }
    // One copy of the lookup for a miss and for the cache off: the entry is
    // looked up again to store (a pointer held across the lookup would make
    // the verifier walk it once with and once without).
    let class = lookup()?;
    if on && let Some(e) = ADDR_CACHE.get_ptr_mut(index) {
        // The epoch is cleared first and written last: an entry is never
        // valid with another address's class in it, even half written.
        // SAFETY: as above; volatile so the stores keep their order.
        unsafe {
            core::ptr::write_volatile(&raw mut (*e).epoch, 0);
            core::ptr::write_volatile(&raw mut (*e).addr, *addr);
            core::ptr::write_volatile(&raw mut (*e).class, class);
            core::ptr::write_volatile(&raw mut (*e).epoch, epoch);
        }
    }
    Some(class)
}

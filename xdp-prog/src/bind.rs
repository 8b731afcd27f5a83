//! The drop-unbound check: on interfaces with `IFACE_DROP_UNBOUND`, a unicast
//! packet whose destination is not bound to the interface (`LOCAL_ADDRS`) is
//! dropped with `DropReason::NotBound`.
//!
//! Exempt (never looked up): multicast (224.0.0.0/4, ff00::/8), the limited
//! broadcast 255.255.255.255 and link-local destinations (169.254.0.0/16,
//! fe80::/10), so ARP-adjacent traffic, NDP and DHCP keep working. Non-IP
//! frames never get here.
use xdpgate_common::{LOCAL_ADDR_V4, LOCAL_ADDR_V6, LocalAddrKey};

use crate::{
    handoff::addr_bytes,
    maps::{BIND_KEY, LOCAL_ADDRS},
};

/// Whether the destination `dst` (network byte order, IPv4 in word 0) is
/// exempt from the check: multicast, limited broadcast or link-local.
#[inline(always)]
fn exempt(dst: &[u32; 4], v4: bool) -> bool {
    // Word 0 is in network byte order; the comparisons need host order.
    let w = u32::from_be(dst[0]);
    if v4 {
        w >> 28 == 0xe || w == u32::MAX || w >> 16 == 0xa9fe
    } else {
        w >> 24 == 0xff || w >> 22 == 0x3fa
    }
}

/// Whether a packet to `dst` (IPv4 when `v4`), received on interface `slot`,
/// goes to an address that is not bound there. Called by `acl::classify` with
/// the fields it laundered through per-CPU memory, so the verifier checks
/// this once for all parser paths.
#[inline(always)]
pub(crate) fn unbound(dst: &[u32; 4], v4: bool, slot: u32) -> bool {
    if exempt(dst, v4) {
        return false;
    }
    let Some(key) = BIND_KEY.get_ptr_mut(0) else {
        return false;
    };
    let family = if v4 { LOCAL_ADDR_V4 } else { LOCAL_ADDR_V6 };
    // IPv4 words 1-3 are zero already (the parser's layout is the key's).
    let addr = addr_bytes(dst);
    // The key is built in per-CPU memory so the lookup reads it straight from
    // the map value.
    // SAFETY: per-CPU slot, written and read by this packet only.
    unsafe {
        key.write_volatile(LocalAddrKey { slot, family, addr });
        let key: &LocalAddrKey = &*key;
        LOCAL_ADDRS.get(key).is_none()
    }
}

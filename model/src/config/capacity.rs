//! `[acl]`: the capacities of the ACL tables (fixed at start: the datapath's
//! maps are sized from them when it is loaded), each key checked on its own
//! and reported at its position. See the README, "Capacities".
use xdpgate_common::acl::{
    PHASE_CELLS, PREFIX_BUCKET_SLOTS, V6_BLOCKS, WALK_ADDR_CLASSES, WALK_PORT_CLASSES,
};

use super::fields::{Ctx, Section};
use crate::acl::compile::{Capacities, MIN_WALK_ADDR_CLASSES, MIN_WALK_PORT_CLASSES};

/// The keys `[acl]` may hold.
const ACL_KEYS: &[&str] = &[
    "prefix_slots",
    "phase_cells",
    "walk_addr_classes",
    "walk_port_classes",
    "v6_blocks",
];

/// Fills `out` from `[acl]`, reporting every error.
pub(super) fn capacities(cx: &mut Ctx<'_>, s: &Section<'_, '_>, out: &mut Capacities) {
    cx.known_keys(s, ACL_KEYS);
    if let Some((n, at)) = cx.count(s, "prefix_slots") {
        match u32::try_from(n).ok().and_then(Capacities::prefix_bits_for) {
            Some(bits) => out.prefix_bucket_bits = bits,
            None => cx.push(
                &at,
                format!(
                    "[acl] prefix_slots = {n}: use {} to {} (rounded up to a power of two of {PREFIX_BUCKET_SLOTS}-slot buckets)",
                    Capacities::MIN_PREFIX_SLOTS,
                    Capacities::MAX_PREFIX_SLOTS
                ),
            ),
        }
    }
    if let Some((n, _)) = cx.integer(s, "phase_cells", 0..=i64::from(PHASE_CELLS)) {
        out.phase_cells = n as u32;
    }
    let walk = i64::from(MIN_WALK_ADDR_CLASSES)..=i64::from(WALK_ADDR_CLASSES);
    if let Some((n, _)) = cx.integer(s, "walk_addr_classes", walk) {
        out.walk_addr_classes = n as u32;
    }
    let walk = i64::from(MIN_WALK_PORT_CLASSES)..=i64::from(WALK_PORT_CLASSES);
    if let Some((n, _)) = cx.integer(s, "walk_port_classes", walk) {
        out.walk_port_classes = n as u32;
    }
    if let Some((n, _)) = cx.integer(s, "v6_blocks", 1..=i64::from(V6_BLOCKS)) {
        out.v6_blocks = n as u32;
    }
}

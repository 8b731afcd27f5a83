//! Helpers shared by the ACL fixtures that drive the controller directly
//! (`acl_addr_cache.rs`, `acl_incremental.rs`, `acl_rebuild.rs`).
use std::collections::BTreeMap;

use xdpgate::{acl::AclController, datapath::Datapath};

/// Packets counted per rule id.
pub(crate) fn counts(ctl: &AclController, dp: &Datapath) -> BTreeMap<u32, u64> {
    ctl.rule_counters(dp)
        .expect("counters")
        .into_iter()
        .map(|c| (c.rule.id, c.packets))
        .collect()
}

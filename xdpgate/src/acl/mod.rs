//! The ACL in the daemon: the [`controller`] that compiles each change of
//! the ACL state (`xdpgate_model::acl`) into a new generation of datapath
//! tables and switches to it, keeping rule counters across changes.
pub mod controller;

pub use controller::{AclController, ApplyError, RebuildWait, RuleCounters};
pub use xdpgate_model::acl::Applied;

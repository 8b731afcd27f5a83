//! xdpgate's control plane as a library: loading and attaching the XDP program,
//! reading its counters, and querying the kernel's XDP attachments.
//!
//! The `xdpgate` binary (src/main.rs) is a thin CLI over these modules.
#![deny(missing_docs)]

pub mod acl;
pub mod api;
pub mod bind;
pub mod config;
pub mod control;
pub mod csum;
pub mod daemon;
pub mod datapath;
pub mod events;
pub mod health;
pub mod lb;
pub mod listen;
pub mod maglev;
pub mod metrics;
pub mod netlink;
pub mod paths;
pub mod state;
pub mod stats;
pub mod sys;
pub mod tables;

//! xdpgate's model: what the operator configures and what the datapath's
//! tables hold, in plain Rust, with no kernel in sight.
//!
//! - [`acl`]: prefix sets, rules and default policies, their validation, and
//!   the compiler that turns them into one generation of datapath tables;
//! - [`lb`]: load-balanced services, their backends and health checks, the
//!   datapath keys and flow hash, and the weighted Maglev ring;
//! - [`bind`]: address-binding requests and the bindings in force;
//! - [`iface`]: per-interface datapath settings (XDP mode, malformed packets);
//! - [`config`]: the configuration file, parsed and validated with every
//!   error's line and column;
//! - [`state`]: the state file that keeps runtime changes across restarts;
//! - [`fsafe`]: directories no other user can write to, and atomic writes
//!   in them (the state file, the lock file, the socket and pin directories).
//!
//! The daemon (`xdpgate`) applies these to the kernel. With the
//! `test-support` feature the crate also offers the reference classifier and
//! random rule sets that tests and benchmarks check the datapath against.
#![deny(missing_docs)]

pub mod acl;
pub mod bind;
pub mod config;
pub mod fsafe;
pub mod iface;
pub mod lb;
pub mod state;

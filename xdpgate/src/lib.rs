//! xdpgate's daemon and command-line tools as a library. The `xdpgate`
//! binary (src/main.rs) parses the command line and hands over to [`cli`].
//!
//! - [`cli`]: every verb: its arguments, the request it sends, its text and
//!   JSON output;
//! - [`api`]: the daemon's control API: the typed protocol, the server, the
//!   client;
//! - [`daemon`]: the running daemon's state, its run loop, reload and the
//!   command-line overrides of the configuration;
//! - [`datapath`]: the XDP object: loading, attaching, pinning, and every
//!   map the controllers write (interfaces, ACL tables, load balancer,
//!   decapsulation, counters);
//! - [`acl`], [`lb`], [`bind`]: the controllers that apply the model
//!   (`xdpgate_model`) to the datapath, all or nothing;
//! - [`metrics`]: the Prometheus exposition and its HTTP server;
//! - [`events`]: sampled datapath drops bridged into the log;
//! - [`sys`]: the OS below: raw bpf(2), rtnetlink, listeners, the daemon lock.
#![deny(missing_docs)]

pub mod acl;
pub mod api;
pub mod bind;
pub mod cancel;
pub mod cli;
pub mod daemon;
pub mod datapath;
pub mod events;
pub mod lb;
pub mod metrics;
pub mod paths;
pub mod sys;

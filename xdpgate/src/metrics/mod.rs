//! Prometheus metrics: a [`Snapshot`] of every counter and gauge the daemon
//! exports, its text exposition ([`render`]), and a small HTTP/1.1 server for
//! `GET /metrics` ([`serve`]).
//!
//! The daemon calls [`gather`] under its lock (it only reads maps and the
//! controller's state) and renders outside it. Every series is present from
//! the first scrape on, at zero until something happens: every interface
//! (and the `unregistered` slot) times every family and action, every
//! interface times every drop reason. Labels are bounded:
//! interface names, families, actions, reasons, rule ids, table names.
//!
//! [`snapshot`] gathers, [`render`] writes the exposition, [`http`] serves it.
pub mod http;
pub mod render;
pub mod snapshot;
#[cfg(test)]
mod tests;

pub use http::{GatherFn, serve};
pub use render::render;
pub use snapshot::{DaemonStatus, DatapathInfo, Snapshot, StateSave, gather};

/// Interface label of packets seen on an interface the daemon did not
/// register (slot 0; see `xdpgate_common::UNKNOWN_IFACE_SLOT`).
pub const UNREGISTERED: &str = "unregistered";

/// `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

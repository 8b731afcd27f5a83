//! The daemon's local control API: newline-delimited JSON over a root-only
//! Unix socket. The daemon is the only writer of the datapath; the CLI verbs
//! (`acl`, `set`, `policy`, `bind`, `lb`, `reload`, `stats`, `status`) are
//! clients of this API.
//!
//! One request per line, one response per line; a connection may carry many.
//! Each connection is served by its own task, a request is bounded in size
//! and in how long it may take to arrive, and changes are applied one at a time.
//!
//! - [`protocol`]: the request, the response envelope and one typed answer
//!   per verb, shared by both ends;
//! - [`server`]: the socket and the connections; each request goes to a
//!   [`Handler`] (the daemon implements it in `daemon::handler`, so this
//!   module does not depend on the daemon);
//! - [`client`]: one request, one typed answer.

pub mod client;
mod limits;
pub mod protocol;
pub mod server;

pub use client::{ClientError, call};
pub use protocol::{MAX_REQUEST, REQUEST_TIMEOUT, Request, Response};
pub use server::{AfterAnswer, ApiError, Handler, bind, serve};

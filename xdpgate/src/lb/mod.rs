//! The load balancer in the daemon: the [`controller`] that installs services
//! and their Maglev rings in the datapath, the [`health`] monitor that
//! probes their backends, and [`route_watch`], which moves the routing
//! generation that the datapath's cached next hops depend on. What a service is (and how it is written,
//! validated and hashed) is `xdpgate_model::lb`.
pub mod controller;
pub mod health;
pub mod route_watch;

pub use controller::{LbController, LbError};
pub use xdpgate_model::lb::{BackendStatus, ServiceStatus};

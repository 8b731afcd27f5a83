//! The load balancer in the daemon: the [`controller`] that installs services
//! and their Maglev rings in the datapath, and the [`health`] monitor that
//! probes their backends. What a service is (and how it is written,
//! validated and hashed) is `xdpgate_model::lb`.
pub mod controller;
pub mod health;

pub use controller::{LbController, LbError};
pub use xdpgate_model::lb::{BackendStatus, ServiceStatus};

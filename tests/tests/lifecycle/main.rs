//! The gate never opens by itself: the datapath is pinned and outlives the
//! daemon. Under live traffic of both families (UDP to an allowed and to a
//! denied port, TCP connections to a denied port) through a default-deny
//! interface, the daemon is killed (SIGKILL) or stopped (SIGTERM) and started
//! again; sockets behind XDP on the protected side count every denied packet
//! that got through: there must be none, the allowed flow keeps flowing, and
//! the rule counters and the metrics continue. `xdpgate down` leaves nothing behind, and
//! pins this build cannot use are refused with their path, untouched.

mod adopt;
mod cold;
mod pins;
mod reload;
mod restart;
mod traffic;

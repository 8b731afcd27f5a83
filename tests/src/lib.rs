//! Test support for xdpgate's end-to-end tests.
//!
//! [`lab`] builds throw-away network namespaces joined by veth pairs; [`xdpgate`]
//! runs the `xdpgate` binary inside them.
pub mod bpf;
pub mod lab;
pub mod lblab;
pub mod packet;
pub mod traffic;
pub mod xdpgate;

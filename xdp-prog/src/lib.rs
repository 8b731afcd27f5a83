//! Host-buildable stub of the `xdp-prog` package: the XDP program itself is the
//! `xdpgate-xdp` binary target (src/main.rs), built only for BPF targets.
#![no_std]

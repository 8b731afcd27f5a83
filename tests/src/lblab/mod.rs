//! The load balancer's three-role lab: a client, the load balancer (LB) and
//! two or three backends on one L2 segment, with echo servers on the
//! backends, the daemons of every role and TCP streams from the client.
//! Used by the `lb_streams` tests and by `cargo xtask demo --lb`.
//!
//! # Topology
//!
//! ```text
//!                       switch namespace: bridge br0
//!        sw-c            sw-lb (XDP_PASS)    sw-be1    sw-be2   (sw-be3)
//!         |                 |                   |         |         |
//!   client eth0        LB eth0             be1 eth0   be2 eth0  be3 eth0
//!   .1 / ::1           .2 / ::2            .11/::11   .12/::12  .13/::13
//!   MTU 1400           xdpgate run         xdpgate run --decap (native)
//!                      (native)            VIPs on lo, echo servers
//! ```
//!
//! One segment, 10.200.60.0/24 and fd00:200:60::/64 (IPv6 added `nodad`, DAD
//! off), neighbours resolved by ARP/NDP through the bridge. The client routes
//! the VIPs 192.0.2.10/32 and 2001:db8::10/128 via the LB's addresses; its MTU
//! is 1400 so that encapsulated packets (at most 40 bytes more) fit the 1500
//! of every other link. The LB has forwarding on (its kernel forwards the
//! encapsulated packets of the slow path until a backend's neighbour entry
//! exists). Backends hold the VIPs on `lo` (`arp_ignore=1`, `arp_announce=2`,
//! as DSR backends do) and answer the client directly. Every namespace,
//! link and program of the lab is gone when its [`Topo`] is dropped.
//!
//! # XDP modes
//!
//! Everything runs in native (driver) mode. The LB answers with XDP_TX on its
//! veth, which only works when the *peer* (`sw-lb`, the switch-side end) runs
//! NAPI: the lab attaches a two-instruction XDP_PASS program to `sw-lb` in
//! native mode (`bpf::load_constant_xdp` + `bpf::attach_native`).
//!
//! # Streams
//!
//! Each echo server (one per backend and family, threads with bounded
//! lifetimes inside the backend's namespace) reads an 8-byte length, sends
//! `beN\n`, echoes exactly that many bytes and closes first, so the client
//! never holds a TIME_WAIT and can reuse its source ports. A [`Flow`] is one
//! such stream from a chosen source port; [`run_flows`] runs them from the
//! client and returns each one's greeting, the name of the backend that
//! served it.
//!
//! # Lab details that matter
//!
//! - The client's transmit checksum offload is off (see [`tx_checksum_off`]):
//!   otherwise its veth hands the LB `CHECKSUM_PARTIAL` packets, XDP_TX sends
//!   their incomplete checksums on, and the backends drop every segment
//!   (`TcpInCsumErrors`). A real NIC checksums on the wire.
//! - L2 DSR needs the backends' neighbour entries (it drops as
//!   `lb_no_neighbor` without them); the daemon keeps them resolved as
//!   managed entries.
//!
//! Helpers panic on failure, as test helpers do; everything built so far is
//! removed while the panic unwinds.
//!
//! Files: `topo.rs` (the namespaces, links and addresses: [`Topo`]),
//! `echo.rs` (the backends' [`EchoServer`]s), `client.rs` (the client's
//! streams: [`Flow`], [`run_flows`]); this file holds the addresses, the
//! daemons and their JSON.

mod client;
mod echo;
mod topo;

use std::{
    ffi::OsStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use serde_json::Value;

use crate::{
    lab::Netns,
    xdpgate::{Daemon, StateDirs},
};

pub use client::{Flow, connect_from, echo_through, flows, read_greeting, run_flows};
pub use echo::{EchoServer, echo_all, echo_all_for};
pub use topo::{Node, Topo, tx_checksum_off};

/// The interface of every role namespace (names are per namespace).
pub const IF: &str = "eth0";
/// The IPv4 VIP (on the backends' `lo`, routed via the LB by the client).
pub const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The IPv6 VIP.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
/// The services' port, where the echo servers listen.
pub const PORT: u16 = 80;
/// The IPv4 VIP's TCP service, as `lb add` and `lb list` name it.
pub const SVC4: &str = "192.0.2.10:80/tcp";
/// The IPv6 VIP's TCP service.
pub const SVC6: &str = "[2001:db8::10]:80/tcp";
/// Client-side bound of one stream's connect, reads and writes.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of an echo server's accept loop ([`EchoServer::start`]).
pub const SERVER_LIFETIME: Duration = Duration::from_secs(150);

/// [`VIP4`] as an [`IpAddr`].
pub fn vip4() -> IpAddr {
    VIP4.into()
}

/// [`VIP6`] as an [`IpAddr`].
pub fn vip6() -> IpAddr {
    VIP6.into()
}

// ---------------------------------------------------------------------------
// Daemons and their JSON
// ---------------------------------------------------------------------------

/// Starts `xdpgate run` (native, no metrics listener) on the LB's `eth0`.
pub fn start_lb(topo: &Topo) -> Daemon {
    Daemon::start_with(&topo.lb.ns, &[IF], "native", &[OsStr::new("--no-metrics")])
        .expect("LB daemon (native)")
}

/// Starts `xdpgate run --decap` (native, no metrics listener) on a
/// backend's `eth0`.
pub fn start_backend(node: &Node) -> Daemon {
    Daemon::start_with(
        &node.ns,
        &[IF],
        "native",
        &[OsStr::new("--decap"), OsStr::new("--no-metrics")],
    )
    .unwrap_or_else(|e| panic!("{} daemon (native, --decap): {e}", node.name))
}

/// `xdpgate lb add SERVICE --backend ADDR weight=W ... EXTRA` on the LB.
pub fn lb_add(d: &Daemon, topo: &Topo, service: &str, backends: &[(IpAddr, u32)], extra: &[&str]) {
    let mut args: Vec<String> = vec!["lb".into(), "add".into(), service.into()];
    for (a, w) in backends {
        args.extend(["--backend".into(), a.to_string(), format!("weight={w}")]);
    }
    args.extend(extra.iter().map(ToString::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    d.dirs.run_ok(&topo.lb.ns, &args);
}

/// `xdpgate lb list -o json` of the daemon with state directories `dirs` in
/// `ns`, parsed.
pub fn lb_list(dirs: &StateDirs, ns: &Netns) -> Value {
    serde_json::from_str(&dirs.run_ok(ns, &["lb", "list", "-o", "json"])).expect("lb list JSON")
}

/// The service `id` of an `lb list` document.
pub fn service<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["service"] == id)
        .unwrap_or_else(|| panic!("no service {id} in {list:#}"))
}

/// The backend `addr` of a service of `lb list`.
pub fn backend_of(svc: &Value, addr: IpAddr) -> Option<&Value> {
    svc["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["addr"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) == Some(addr))
}

/// The unsigned number `key` of a JSON object; panics if it is missing.
pub fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v:#}"))
}

/// The LB's `stats`, `lb list` and neighbours, for failure messages.
pub fn diagnose(topo: &Topo, lb: &Daemon) -> String {
    let ns = &topo.lb.ns;
    let stats = lb.dirs.run(ns, &["stats"], Duration::from_secs(10));
    let list = lb.dirs.run(ns, &["lb", "list"], Duration::from_secs(10));
    let neigh = ns.exec("ip", &["neigh", "show"]).unwrap_or_default();
    let neigh6 = ns.exec("ip", &["-6", "neigh", "show"]).unwrap_or_default();
    format!(
        "LB stats:\n{}\nLB lb list:\n{}\nLB neighbours:\n{neigh}{neigh6}\nLB daemon log:\n{}",
        String::from_utf8_lossy(&stats.stdout),
        String::from_utf8_lossy(&list.stdout),
        lb.log()
    )
}

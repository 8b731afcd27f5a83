//! The rig shared by the `BPF_PROG_TEST_RUN` fixtures of the steering program
//! (`lb_encap.rs`, `lb_l2dsr.rs`, `lb_maglev.rs`, `lb_drops.rs`,
//! `lb_not_steered.rs`, `lb_next_hop.rs`, `lb_decap.rs`): the namespace each
//! test runs in, loading and running the datapath, input frames, the frames
//! the load balancer must make of them, and its counters.
//!
//! `BPF_PROG_TEST_RUN` delivers on the namespace's `lo` (ifindex 1), which is
//! registered as slot 1 with `IFACE_LB` (set by the controller) and, for the
//! decapsulation fixtures, `IFACE_DECAP`. The datapath's `bpf_fib_lookup`
//! runs with lo as the ingress interface, so every namespace here has
//! forwarding on and a veth pair `lbt0`/`lbt1` (both ends inside it) with
//! `10.200.9.1/24` and `fd00:200:9::1/64` on `lbt0` and permanent neighbours
//! for the backends `.2` and `.3` of both families: a packet for a VIP leaves
//! by XDP_REDIRECT to `lbt0` with the neighbour's MAC as destination and
//! `lbt0`'s as source. Nothing is sent: test runs only return the frame.
//!
//! Every expected frame is written out field by field here (the outer IPv4
//! checksum with `packet::checksum`, cross-checked by a local RFC 1071 sum),
//! not derived from the datapath's code.
#![allow(
    dead_code,
    reason = "every test binary includes this module and uses only some of it"
)]

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

use xdpgate::{
    datapath::{Datapath, stats},
    lb::{LbController, ServiceStatus},
};
use xdpgate_common::{DropReason, maps};
use xdpgate_model::{
    iface::Malformed,
    lb::{BackendSpec, Forward, Proto, ServiceId, ServiceSpec, default_lb_config},
};
use xdpgate_tests::{
    lab::Netns,
    packet::{Ethernet, Ipv4, Ipv6, Transport, checksum, ethertype, hex},
};

pub(crate) const XDP_DROP: u32 = 1;
pub(crate) const XDP_PASS: u32 = 2;
pub(crate) const XDP_REDIRECT: u32 = 4;

/// Where `BPF_PROG_TEST_RUN` delivers: the namespace's lo, as slot 1.
pub(crate) const LO: u32 = 1;
pub(crate) const SLOT: u32 = 1;

/// The veth pair of each namespace.
pub(crate) const LBT0: &str = "lbt0";
pub(crate) const LBT1: &str = "lbt1";

/// Neighbour MACs of the backends .2 and .3 (both families) on lbt0.
pub(crate) const MAC2: [u8; 6] = [0x02, 0, 0, 0, 0x09, 0x02];
pub(crate) const MAC3: [u8; 6] = [0x02, 0, 0, 0, 0x09, 0x03];
/// The Ethernet addresses of every input frame (`Ethernet::new`).
pub(crate) const IN_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub(crate) const IN_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// Inner IPv4 TOS and IPv6 traffic class / flow label of the input packets:
/// the TOS / class must be copied to the outer header, the flow label not.
pub(crate) const TOS: u8 = 0xb8;
pub(crate) const TCLASS: u8 = 0x28;
pub(crate) const FLOW: u32 = 0xabcde;

pub(crate) const EN4: [u8; 2] = [0x08, 0x00];
pub(crate) const EN6: [u8; 2] = [0x86, 0xdd];

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

pub(crate) fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

pub(crate) fn sid(s: &str) -> ServiceId {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

pub(crate) fn spec(id: &str, forward: Forward, backends: &[(&str, u32)]) -> ServiceSpec {
    ServiceSpec {
        id: sid(id),
        forward,
        backends: backends
            .iter()
            .map(|(a, w)| BackendSpec {
                addr: ip(a),
                weight: *w,
            })
            .collect(),
        health: None,
    }
}

/// The namespace of one test and what the datapath's route lookups see in it.
pub(crate) struct Net {
    pub ns: Netns,
    /// lbt0's MAC: the source MAC of forwarded frames.
    pub mac: [u8; 6],
}

/// A namespace with forwarding on, the veth pair up, lbt0's addresses, the
/// backends' neighbours and routes to the off-link prefixes
/// (10.200.50.0/24 and fd00:200:50::/64 via the .2 neighbours).
pub(crate) fn net(tag: &str) -> Net {
    let ns = Netns::new(tag).expect("namespace");
    for key in [
        "net.ipv4.conf.all.forwarding",
        "net.ipv6.conf.all.forwarding",
    ] {
        ns.sysctl(key, "1").expect("forwarding");
    }
    for scope in ["all", "default"] {
        ns.sysctl(&format!("net.ipv6.conf.{scope}.accept_dad"), "0")
            .expect("accept_dad");
        ns.sysctl(&format!("net.ipv6.conf.{scope}.router_solicitations"), "0")
            .expect("router_solicitations");
    }
    let ipc = |args: &[&str]| {
        ns.exec("ip", args)
            .unwrap_or_else(|e| panic!("ip {}: {e}", args.join(" ")))
    };
    ipc(&["link", "add", LBT0, "type", "veth", "peer", "name", LBT1]);
    ipc(&["link", "set", "dev", LBT0, "up"]);
    ipc(&["link", "set", "dev", LBT1, "up"]);
    ipc(&["addr", "add", "10.200.9.1/24", "dev", LBT0]);
    ipc(&[
        "-6",
        "addr",
        "add",
        "fd00:200:9::1/64",
        "dev",
        LBT0,
        "nodad",
    ]);
    for (addr, mac) in [
        ("10.200.9.2", MAC2),
        ("10.200.9.3", MAC3),
        ("fd00:200:9::2", MAC2),
        ("fd00:200:9::3", MAC3),
    ] {
        ipc(&[
            "neigh",
            "replace",
            addr,
            "lladdr",
            &fmt_mac(&mac),
            "dev",
            LBT0,
            "nud",
            "permanent",
        ]);
    }
    // Bounded wait for the carrier (the routes of a link without one are
    // "linkdown").
    let start = Instant::now();
    loop {
        let out = ipc(&["-o", "link", "show", "dev", LBT0]);
        if out.contains(" state UP ") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{LBT0} not up: {out}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    ipc(&["route", "add", "10.200.50.0/24", "via", "10.200.9.2"]);
    ipc(&[
        "-6",
        "route",
        "add",
        "fd00:200:50::/64",
        "via",
        "fd00:200:9::2",
    ]);
    let out = ipc(&["-j", "link", "show", "dev", LBT0]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j link");
    let text = v[0]["address"].as_str().expect("address");
    let mac = parse_mac(text);
    Net { ns, mac }
}

pub(crate) fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub(crate) fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("MAC byte"))
        .collect();
    v.try_into().expect("6 bytes")
}

/// Loads the datapath (inside the namespace) with lo registered as slot 1.
pub(crate) fn load() -> Datapath {
    let mut dp = Datapath::load().unwrap_or_else(|e| panic!("load and verify: {e}"));
    match dp.steer_verified_instructions() {
        Some(n) => eprintln!("verifier processed {n} instructions of the steering program"),
        None => eprintln!("the kernel does not report the verified instruction count"),
    }
    dp.register(LO, SLOT, Malformed::Drop).expect("register lo");
    assert_eq!(
        dp.lb_config().expect("lb config"),
        default_lb_config(),
        "the default outer sources"
    );
    dp
}

/// Runs the program once on `frame`.
pub(crate) fn run(dp: &mut Datapath, frame: &[u8]) -> (u32, Vec<u8>) {
    let r = dp.test_run(frame, 1).expect("test run");
    (r.action, r.frame)
}

/// A test packet from `src` to `dst` carrying `l4` (IPv4 with TOS [`TOS`],
/// IPv6 with class [`TCLASS`] and flow label [`FLOW`]).
pub(crate) fn packet(src: IpAddr, dst: IpAddr, l4: &Transport) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Ipv4 {
            tos: TOS,
            ..Ipv4::new(s.octets(), d.octets(), l4.proto())
        }
        .build(&l4.bytes()),
        (IpAddr::V6(s), IpAddr::V6(d)) => Ipv6 {
            traffic_class: TCLASS,
            flow_label: FLOW,
            ..Ipv6::new(s.octets(), d.octets(), l4.proto())
        }
        .build(&l4.bytes()),
        _ => panic!("mixed families {src} {dst}"),
    }
}

/// The Ethernet frame of [`packet`].
pub(crate) fn frame(src: IpAddr, dst: IpAddr, l4: &Transport) -> Vec<u8> {
    let et = if src.is_ipv4() {
        ethertype::IPV4
    } else {
        ethertype::IPV6
    };
    Ethernet::new(et).build(&packet(src, dst, l4))
}

pub(crate) fn l4_of(proto: Proto, sport: u16, dport: u16) -> Transport {
    let t = match proto {
        Proto::Tcp => Transport::tcp(sport, dport),
        Proto::Udp => Transport::udp(sport, dport),
        Proto::Sctp => Transport::sctp(sport, dport),
    };
    t.payload(b"xdpgate load balancer")
}

/// RFC 1071 written out here, to cross-check `packet::checksum` (which is
/// the datapath's own `csum` module).
pub(crate) fn rfc1071(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for w in data.chunks(2) {
        sum += (u32::from(w[0]) << 8) | u32::from(*w.get(1).unwrap_or(&0));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An outer IPv4 header: version 4, IHL 5, `tos`, `total` bytes, id 0, no
/// flags or offset, TTL 64, `proto`, checksum, `src`, `dst`.
pub(crate) fn outer_ipv4(tos: u8, total: usize, proto: u8, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let total = u16::try_from(total).expect("total length");
    let mut h = Vec::with_capacity(20);
    h.push(0x45);
    h.push(tos);
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 0]); // identification
    h.extend_from_slice(&[0, 0]); // flags, fragment offset
    h.push(64); // TTL
    h.push(proto);
    h.extend_from_slice(&[0, 0]); // checksum, below
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let sum = checksum(&h);
    assert_eq!(sum, rfc1071(&h), "packet::checksum against RFC 1071");
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    assert_eq!(checksum(&h), 0, "outer checksum verifies");
    assert_eq!(rfc1071(&h), 0, "outer checksum verifies");
    h
}

/// An outer IPv6 header: version 6, `class`, `flow`, payload `len`, next
/// header `nh`, hop limit 64, `src`, `dst`.
pub(crate) fn outer_ipv6(
    class: u8,
    flow: u32,
    len: usize,
    nh: u8,
    src: [u8; 16],
    dst: [u8; 16],
) -> Vec<u8> {
    let len = u16::try_from(len).expect("payload length");
    let mut h = Vec::with_capacity(40);
    h.push(0x60 | (class >> 4));
    h.push((class << 4) | ((flow >> 16) as u8 & 0x0f));
    h.push((flow >> 8) as u8);
    h.push(flow as u8);
    h.extend_from_slice(&len.to_be_bytes());
    h.push(nh);
    h.push(64);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h
}

/// Outer IPv4 source of a flow: 172.16.0.0/16 with the hash's low 16 bits.
pub(crate) fn outer_src4(hash: u32) -> [u8; 4] {
    [172, 16, (hash >> 8) as u8, hash as u8]
}

/// Outer IPv6 source of a flow: 100::/64 with the last 32 bits the hash.
pub(crate) fn outer_src6(hash: u32) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0x01;
    a[12..].copy_from_slice(&hash.to_be_bytes());
    a
}

/// The frame the load balancer makes of `input` (an untagged frame whose IP
/// packet is `ip_len` bytes, maybe followed by Ethernet padding) for a
/// backend `backend` and flow hash `hash`, sent with `dmac`/`smac`.
pub(crate) fn encapsulated(
    input: &[u8],
    ip_len: usize,
    backend: IpAddr,
    hash: u32,
    dmac: [u8; 6],
    smac: [u8; 6],
) -> Vec<u8> {
    let inner = &input[14..];
    let (inner_v4, class) = match [input[12], input[13]] {
        EN4 => (true, TOS),
        EN6 => (false, TCLASS),
        other => panic!("input EtherType {other:02x?}"),
    };
    let proto = if inner_v4 { 4 } else { 41 };
    let mut out = Vec::new();
    out.extend_from_slice(&dmac);
    out.extend_from_slice(&smac);
    match backend {
        IpAddr::V4(b) => {
            out.extend_from_slice(&EN4);
            out.extend_from_slice(&outer_ipv4(
                class,
                20 + ip_len,
                proto,
                outer_src4(hash),
                b.octets(),
            ));
        }
        IpAddr::V6(b) => {
            out.extend_from_slice(&EN6);
            out.extend_from_slice(&outer_ipv6(
                class,
                hash & 0xf_ffff,
                ip_len,
                proto,
                outer_src6(hash),
                b.octets(),
            ));
        }
    }
    out.extend_from_slice(inner);
    out
}

/// The outer destination of an encapsulated frame.
pub(crate) fn outer_dst(frame: &[u8]) -> IpAddr {
    match [frame[12], frame[13]] {
        EN4 => IpAddr::from(<[u8; 4]>::try_from(&frame[30..34]).unwrap()),
        EN6 => IpAddr::from(<[u8; 16]>::try_from(&frame[38..54]).unwrap()),
        other => panic!("EtherType {other:02x?} in {}", hex(frame)),
    }
}

/// Asserts equal frames, printing both in hex.
#[track_caller]
pub(crate) fn same(got: &[u8], want: &[u8], what: &str) {
    assert!(
        got == want,
        "{what}: frame differs\n got  {}\n want {}",
        hex(got),
        hex(want)
    );
}

/// Packets counted under `reason` on lo.
pub(crate) fn reason_packets(dp: &Datapath, reason: DropReason) -> u64 {
    report(dp)
        .malformed
        .iter()
        .filter(|r| r.ifindex == LO && r.reason == reason.name())
        .map(|r| r.packets)
        .sum()
}

/// Every drop-reason counter of lo, by name.
pub(crate) fn reasons(dp: &Datapath) -> BTreeMap<&'static str, u64> {
    report(dp)
        .malformed
        .iter()
        .filter(|r| r.ifindex == LO)
        .map(|r| (r.reason, r.packets))
        .collect()
}

/// Packets counted on lo for `family` ("ipv4", "ipv6") and `action`.
pub(crate) fn action_packets(dp: &Datapath, family: &str, action: &str) -> u64 {
    report(dp)
        .counters
        .iter()
        .filter(|r| r.ifindex == LO && r.family == family && r.action == action)
        .map(|r| r.packets)
        .sum()
}

pub(crate) fn report(dp: &Datapath) -> stats::Report {
    stats::collect(
        dp.map(maps::IFACES).unwrap(),
        dp.map(maps::STATS).unwrap(),
        dp.map(maps::REASONS).unwrap(),
    )
    .expect("counters")
}

/// The status of service `id`.
pub(crate) fn status(ctl: &LbController, dp: &Datapath, id: &str) -> ServiceStatus {
    let id = sid(id);
    ctl.status(dp)
        .expect("status")
        .into_iter()
        .find(|s| s.service == id)
        .unwrap_or_else(|| panic!("no service {id}"))
}

/// (forwarded, slow path, dropped) packets of service `id`.
pub(crate) fn service_counts(ctl: &LbController, dp: &Datapath, id: &str) -> (u64, u64, u64) {
    let s = status(ctl, dp, id);
    (s.forwarded_packets, s.slow_path_packets, s.dropped_packets)
}

/// Packets and bytes sent to backend `addr` of service `id`.
pub(crate) fn backend_counts(
    ctl: &LbController,
    dp: &Datapath,
    id: &str,
    addr: &str,
) -> (u64, u64) {
    let a = ip(addr);
    let s = status(ctl, dp, id);
    let b = s
        .backends
        .iter()
        .find(|b| b.addr == a)
        .unwrap_or_else(|| panic!("{id} has no backend {a}"));
    (b.packets, b.bytes)
}

/// The neighbour MAC of an on-link backend.
pub(crate) fn mac_of(backend: IpAddr) -> [u8; 6] {
    match backend.to_string().as_str() {
        "10.200.9.2" | "fd00:200:9::2" => MAC2,
        "10.200.9.3" | "fd00:200:9::3" => MAC3,
        other => panic!("no neighbour for {other}"),
    }
}

/// Pins the calling thread to the CPU it runs on. The datapath's next-hop
/// cache is per CPU: test runs that are to find each other's next hops
/// must run on one CPU.
pub(crate) fn pin_to_current_cpu() {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    assert!(cpu >= 0, "sched_getcpu failed");
    xdpgate_tests::bpf::pin_to_cpu(cpu as usize).expect("sched_setaffinity");
}

/// [`frame`] with an 802.1Q tag (`vlan`) or QinQ tags.
pub(crate) fn tagged(vlan: bool, src: IpAddr, dst: IpAddr, l4: &Transport) -> Vec<u8> {
    let et = if src.is_ipv4() {
        ethertype::IPV4
    } else {
        ethertype::IPV6
    };
    let eth = if vlan {
        Ethernet::new(et).vlan(100)
    } else {
        Ethernet::new(et).qinq(10, 20)
    };
    eth.build(&packet(src, dst, l4))
}

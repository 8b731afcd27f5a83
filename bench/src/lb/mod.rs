//! Part 1b: the load-balancer path, timed with `BPF_PROG_TEST_RUN` beside the
//! empty XDP program, in part 1's namespace (whose loopback, ifindex 1, is
//! where test runs deliver; registered as slot 1).
//!
//! The namespace gets forwarding, a veth pair (`10.200.9.1/24`,
//! `fd00:200:9::1/64` on one end) and permanent neighbours for the backends,
//! so `bpf_fib_lookup` resolves every backend; three services (IPv4 and IPv6
//! VIP with encapsulation, an IPv4 VIP with L2 DSR; 10 backends each, both
//! families) are installed with `LbController`. The ACL is empty (default
//! policy allow): the numbers are the steering path on top of the cheapest
//! classification. Last, slot 1 gets `IFACE_DECAP` and a decapsulation
//! address for `decap-v4` (IPIP to it: the outer header stripped).
//!
//! **Repetitions do not restart from the input.** `BPF_PROG_TEST_RUN` with
//! `repeat` N runs the program N times on one `xdp_buff` (net/bpf/test_run.c,
//! `bpf_test_run()`: the loop calls `bpf_prog_run_xdp(prog, ctx)` with the same
//! `ctx` and resets neither its pointers nor the bytes): from the second
//! repetition an encapsulating program would see its own output (addressed
//! to a backend, no ports: passed). So the path is timed through the
//! measurement-only wrappers of `xdp-prog/src/timing.rs`, loaded from the same
//! object (same maps): `xdpgate_time_path` runs the main program's work with
//! the steering program's called directly instead of tail-called, then
//! restores the frame (head moved back, the first 34 bytes written back);
//! `xdpgate_time_noop` does the same restoration around nothing. Each round
//! times the empty program, the no-op wrapper and the path wrapper with N
//! repetitions; every wrapper run is checked (its action, its output frame
//! equal to the input, and for the path the service's forwarded counter, or
//! the decapsulation counter, advanced by exactly N), and one run of the
//! production program per class checks the output frame (the encapsulation
//! or decapsulation). Reported per class: the
//! wrapper's own cost (no-op / empty), the path (path / empty) and the net
//! ratio ((path - no-op + empty) / empty), the one the target is judged on.
//!
//! Files: `rig.rs` (the namespace's network, which backend a frame went to,
//! picking flows), `case.rs` (the classes and the check of each run's
//! output), `measure.rs` (the checked, timed runs); this file holds the
//! constants, the report and [`run`].

mod case;
mod measure;
mod rig;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;
use serde::Serialize;
use xdpgate::{
    acl::AclController,
    datapath::{Datapath, Wrapper},
    lb::LbController,
};
use xdpgate_common::IFACE_DECAP;
use xdpgate_model::{
    acl::AclState,
    iface::Malformed,
    lb::{BackendSpec, Forward, Proto, ServiceId, ServiceSpec, default_lb_config},
};
use xdpgate_tests::lab::Netns;

use case::{Case, Expect, PathCounter, ack, ipip, tcp_v4, tcp_v6};
use measure::run_case;
use rig::{pick_flow, setup_network};

use crate::{
    bpf,
    report::{Section, Target},
    workload,
};

/// `XDP_REDIRECT`.
const XDP_REDIRECT: u32 = 4;

/// The live-frames target (part 5b, `lblive`): the LB path at most this
/// many times the empty `XDP_TX` program.
pub(crate) const TARGET_RATIO: f64 = 2.5;

/// The target for the wrapped test runs: the net ratio of each
/// SYN and ACK class at most this many times the empty program (Katran's
/// balancer timed the same way: 6.0-6.7x).
pub(crate) const WRAPPED_TARGET_RATIO: f64 = 6.0;

/// The encapsulating IPv4 service's VIP.
const VIP_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
/// The encapsulating IPv6 service's VIP.
const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 0x20);
/// The L2 DSR service's VIP.
const VIP_DSR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 21);
/// The service port (TCP).
const PORT: u16 = 443;
/// Decapsulation address (outer destination) on slot 1, for `decap-v4`.
const DECAP_DST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 30);
/// Outer source of `decap-v4`'s tunnelled packet.
const TUNNEL_SRC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 50);
/// First source port tried when looking for a flow whose backend has the
/// wanted family.
const FIRST_SPORT: u16 = workload::SPORT;
/// The veth end with the addresses, and its peer (names inside the namespace).
const VETH: &str = "xglb0";
const PEER: &str = "xglb1";
/// MAC of [`VETH`]: the source MAC of every forwarded frame.
const VETH_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x09, 0x01];
/// Backends of each family per service.
const BACKENDS_PER_FAMILY: u8 = 5;

/// The backends: 10.200.9.2-6 and fd00:200:9::2-6.
fn backends() -> Vec<IpAddr> {
    let v4 = (0..BACKENDS_PER_FAMILY).map(|i| IpAddr::V4(Ipv4Addr::new(10, 200, 9, 2 + i)));
    let net_v6 = u128::from(Ipv6Addr::new(0xfd00, 0x200, 9, 0, 0, 0, 0, 0));
    let v6 = (0..BACKENDS_PER_FAMILY).map(|i| IpAddr::V6((net_v6 + 2 + u128::from(i)).into()));
    v4.chain(v6).collect()
}

/// The permanent neighbour entry's MAC of backend `a`: 02:00:00:00:09:NN for
/// IPv4, 02:00:00:06:09:NN for IPv6 (NN: the address's last byte).
fn backend_mac(a: IpAddr) -> [u8; 6] {
    match a {
        IpAddr::V4(a) => [0x02, 0, 0, 0, 0x09, a.octets()[3]],
        IpAddr::V6(a) => [0x02, 0, 0, 0x06, 0x09, a.octets()[15]],
    }
}

fn mac_string(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn action_name(a: u32) -> &'static str {
    match a {
        0 => "aborted",
        1 => "drop",
        2 => "pass",
        3 => "tx",
        4 => "redirect",
        _ => "?",
    }
}

/// One class as measured.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LbClassResult {
    /// Short name.
    pub name: &'static str,
    /// What the frame is and what happens to it.
    pub what: String,
    /// Frame length in, bytes.
    pub frame_len: usize,
    /// Frame length out after one run of the production program.
    pub out_len: usize,
    /// The action one run must return.
    pub expect: u32,
    /// Source port of the frame.
    pub sport: u16,
    /// The backend the datapath forwards the flow to, for LB classes.
    pub backend: Option<IpAddr>,
    /// Whether the class is judged against [`WRAPPED_TARGET_RATIO`].
    pub target: bool,
    /// The empty program, ns per packet (median of the rounds).
    pub empty_ns: f64,
    /// The no-op wrapper, ns per packet.
    pub noop_ns: f64,
    /// The path wrapper, ns per packet.
    pub path_ns: f64,
    /// The wrapper's own cost: median over the rounds of no-op / empty.
    pub noop_ratio: f64,
    /// Median over the rounds of path / empty.
    pub path_ratio: f64,
    /// Median over the rounds of (path - no-op + empty) / empty: the path
    /// without the wrapper's cost (the target's figure).
    pub net_ratio: f64,
    /// Every round's empty program.
    pub empty_rounds: Vec<f64>,
    /// Every round's no-op wrapper.
    pub noop_rounds: Vec<f64>,
    /// Every round's path wrapper.
    pub path_rounds: Vec<f64>,
}

/// What this part measured.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LbReport {
    /// Repetitions per run.
    pub repeat: u32,
    /// Ring entries per service.
    pub ring_size: u32,
    /// Instructions the verifier processed for the main program.
    pub main_verified_instructions: Option<u32>,
    /// Instructions the verifier processed for the steering program.
    pub steer_verified_instructions: Option<u32>,
    /// ... for the path wrapper (main and steering program in one).
    pub path_wrapper_verified_instructions: Option<u32>,
    /// The services, as `VIP:PORT/PROTO forward: backends`.
    pub services: Vec<String>,
    /// How the runs were checked.
    pub checks: String,
    /// Flows of the classes whose backend (as the datapath forwards them)
    /// is not the one `LbController::predict` names.
    pub predict_mismatch: Vec<String>,
    /// The reference class `no-steer` first, then the steered classes.
    pub classes: Vec<LbClassResult>,
    /// Per SYN and ACK class: net ratio at most [`WRAPPED_TARGET_RATIO`].
    pub targets: Vec<Target>,
}

/// The TCP SYN frame of a class, by source port.
type FrameOf = fn(u16) -> Vec<u8>;

/// Runs this part inside `ns` (part 1's namespace, after part 1).
pub(crate) fn run(ns: &Netns, repeat: u32) -> anyhow::Result<LbReport> {
    setup_network(ns)?;
    ns.run(|| -> anyhow::Result<LbReport> {
        let empty = bpf::load_constant_xdp(bpf::XDP_PASS, "bench_empty")
            .context("loading the empty XDP program")?;
        let mut dp = Datapath::load().context("loading xdpgate")?;
        let main_verified_instructions = dp.verified_instructions();
        let steer_verified_instructions = dp.steer_verified_instructions();
        eprintln!(
            "bench: lb: verified instructions: main program {main_verified_instructions:?}, steering program {steer_verified_instructions:?}"
        );
        dp.load_timing()
            .context("loading the timing wrappers (measurement only)")?;
        dp.register(1, 1, Malformed::Drop)
            .context("registering lo")?;
        let mut acl = AclController::new([("lo".to_string(), 1)].into());
        acl.install(&mut dp, AclState::default())
            .map_err(|e| anyhow::anyhow!("installing the empty rule set: {e}"))?;
        dp.set_lb_config(&default_lb_config())?;
        let path_wrapper_verified_instructions = dp.timing_verified_instructions(Wrapper::Path);
        let ring_size = dp.ring_sizes().ring_size;

        let client_v4 = IpAddr::V4(workload::MISS_V4);
        let client_v6 = IpAddr::V6(workload::MISS_V6);
        let miss_frame = tcp_v4(workload::MISS_V4, workload::DST_V4, FIRST_SPORT);
        let mut results = Vec::new();
        let mut ctl = LbController::new(&dp, vec![1]);
        // Reference: lb-miss's frame before any steering flag is set.
        results.push(run_case(
            &empty,
            &mut dp,
            &ctl,
            &Case {
                name: "no-steer",
                what: format!(
                    "reference: lb-miss's frame (IPv4 TCP to {}) without IFACE_LB: the main program alone",
                    workload::DST_V4
                ),
                frame: miss_frame.clone(),
                action: bpf::XDP_PASS,
                sport: FIRST_SPORT,
                backend: None,
                expect: Expect::Unchanged,
                counter: PathCounter::None,
                target: false,
            },
            repeat,
        )?);

        let members: Vec<BackendSpec> = backends()
            .into_iter()
            .map(|addr| BackendSpec { addr, weight: 1 })
            .collect();
        let id = |vip: IpAddr| ServiceId {
            vip,
            port: PORT,
            proto: Proto::Tcp,
        };
        let (id_v4, id_v6, id_dsr) = (
            id(VIP_V4.into()),
            id(VIP_V6.into()),
            id(VIP_DSR.into()),
        );
        let specs: Vec<ServiceSpec> = [
            (id_v4, Forward::Encap),
            (id_v6, Forward::Encap),
            (id_dsr, Forward::L2dsr),
        ]
        .into_iter()
        .map(|(id, forward)| ServiceSpec {
            id,
            forward,
            backends: members.clone(),
            health: None,
        })
        .collect();
        ctl.apply(&mut dp, &specs)
            .context("installing the services")?;
        let services = specs
            .iter()
            .map(|s| {
                format!(
                    "{} {}: {}",
                    s.id,
                    s.forward.name(),
                    s.backends
                        .iter()
                        .map(|b| b.addr.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            })
            .collect();

        // The LB classes: (spec index, name, client, IPv4 backend wanted,
        // SYN frame); each encapsulating one also as the flow's ACK.
        let lb_classes: [(usize, &'static str, IpAddr, bool, FrameOf); 3] = [
            (0, "lb-v4", client_v4, true, |p| {
                tcp_v4(workload::MISS_V4, VIP_V4, p)
            }),
            (1, "lb-v6", client_v6, false, |p| {
                tcp_v6(workload::MISS_V6, VIP_V6, p)
            }),
            (2, "lb-v4-l2dsr", client_v4, true, |p| {
                tcp_v4(workload::MISS_V4, VIP_DSR, p)
            }),
        ];
        let mut predict_mismatch = Vec::new();
        for (i, name, client, want_v4, frame) in lb_classes {
            let spec = &specs[i];
            let dsr = spec.forward == Forward::L2dsr;
            let f = pick_flow(&mut dp, &ctl, &spec.id, client, want_v4, dsr, frame)?;
            if f.predicted != Some(f.backend) {
                let m = format!(
                    "{} sport {}: the datapath sends to {}, LbController::predict says {}",
                    spec.id,
                    f.sport,
                    f.backend,
                    f.predicted.map_or("none".to_string(), |a| a.to_string())
                );
                eprintln!("bench: lb: WARNING: {m}");
                predict_mismatch.push(m);
            }
            let (how, expect) = match (dsr, f.backend) {
                (true, _) => ("L2 DSR: MACs rewritten", Expect::L2dsr(f.backend)),
                (false, IpAddr::V4(_)) => ("IPIP", Expect::Encap(f.backend)),
                (false, IpAddr::V6(_)) => ("IP6IP6", Expect::Encap(f.backend)),
            };
            let syn = frame(f.sport);
            let variants: Vec<(&'static str, &str, Vec<u8>, bool)> = if dsr {
                vec![(name, "SYN", syn, false)]
            } else {
                let (syn_name, ack_name) = if want_v4 {
                    ("lb-v4-syn", "lb-v4-ack")
                } else {
                    ("lb-v6-syn", "lb-v6-ack")
                };
                let ack = ack(&syn);
                vec![(syn_name, "SYN", syn, true), (ack_name, "ACK", ack, true)]
            };
            for (name, flags, frame, target) in variants {
                let c = Case {
                    name,
                    what: format!(
                        "{} TCP {flags} {}:{} -> {}; the ring picks {}: {how}, redirected to the veth",
                        if client.is_ipv4() { "IPv4" } else { "IPv6" },
                        client,
                        f.sport,
                        spec.id,
                        f.backend
                    ),
                    frame,
                    action: XDP_REDIRECT,
                    sport: f.sport,
                    backend: Some(f.backend),
                    expect,
                    counter: PathCounter::Service(spec.id),
                    target,
                };
                results.push(run_case(&empty, &mut dp, &ctl, &c, repeat)?);
            }
        }
        let miss = Case {
            name: "lb-miss",
            what: format!(
                "IPv4 TCP to {}:{PORT}, no service there (IFACE_LB): two service lookups, passed",
                workload::DST_V4
            ),
            frame: miss_frame,
            action: bpf::XDP_PASS,
            sport: FIRST_SPORT,
            backend: None,
            expect: Expect::Unchanged,
            counter: PathCounter::None,
            target: false,
        };
        results.push(run_case(&empty, &mut dp, &ctl, &miss, repeat)?);
        // Last, so that no other class runs with IFACE_DECAP set.
        dp.set_iface_flag(1, IFACE_DECAP, true)?;
        dp.set_decap_dsts(&[xdpgate_model::bind::key(1, DECAP_DST.into())])?;
        let decap = Case {
            name: "decap-v4",
            what: format!(
                "IPIP {TUNNEL_SRC} -> {DECAP_DST} (decapsulation address, IFACE_DECAP), inner IPv4 TCP to {}: outer header removed, passed",
                workload::DST_V4
            ),
            frame: ipip(workload::DST_V4),
            action: bpf::XDP_PASS,
            sport: FIRST_SPORT,
            backend: None,
            expect: Expect::Decap,
            counter: PathCounter::Decap,
            target: false,
        };
        results.push(run_case(&empty, &mut dp, &ctl, &decap, repeat)?);

        let targets = results
            .iter()
            .filter(|r| r.target)
            .map(|r| Target {
                goal: format!(
                    "LB path {} <= {WRAPPED_TARGET_RATIO}x the empty XDP program (net of the timing wrapper; Katran timed this way: 6.0-6.7x)",
                    r.name
                ),
                measured: format!(
                    "net {:.2}x (path {:.2}x, wrapper {:.2}x; empty {:.1} ns, no-op {:.1} ns, path {:.1} ns)",
                    r.net_ratio, r.path_ratio, r.noop_ratio, r.empty_ns, r.noop_ns, r.path_ns
                ),
                met: Some(r.net_ratio <= WRAPPED_TARGET_RATIO),
            })
            .collect();
        let checks = format!(
            "every wrapper run of {repeat} repetitions returned the class's action and left the input frame; \
             every path run advanced the service's forwarded (decap-v4: decapsulated) counter by exactly {repeat}; one run of the \
             production program per class gave the expected output frame; xdpgate keeps no connection \
             table (the backend is the Maglev ring's pick for the flow hash, for SYN and ACK alike)"
        );
        Ok(LbReport {
            repeat,
            ring_size,
            main_verified_instructions,
            steer_verified_instructions,
            path_wrapper_verified_instructions,
            services,
            checks,
            predict_mismatch,
            classes: results,
            targets,
        })
    })
}

/// Prints this part.
pub(crate) fn print(r: &Section<LbReport>) {
    println!(
        "1b. Load-balancer path, BPF_PROG_TEST_RUN through the timing wrappers (frame restored after every repetition), ns/packet and ratios to the empty XDP program"
    );
    match (&r.result, &r.error) {
        (Some(r), _) => {
            let n = |v: Option<u32>| v.map_or("?".to_string(), |n| n.to_string());
            println!(
                "   instructions verified: main program {}, steering program {}, path wrapper {}; ring {} entries; empty rule set; {} repetitions per run",
                n(r.main_verified_instructions),
                n(r.steer_verified_instructions),
                n(r.path_wrapper_verified_instructions),
                r.ring_size,
                r.repeat
            );
            println!(
                "   {:<12} {:>7} {:>7} {:>7} | {:>8} {:>7} {:>7} | picked",
                "class", "empty", "no-op", "path", "wrapper", "path", "net"
            );
            for c in &r.classes {
                println!(
                    "   {:<12} {:>7.1} {:>7.1} {:>7.1} | {:>7.2}x {:>6.2}x {:>6.2}x | {}",
                    c.name,
                    c.empty_ns,
                    c.noop_ns,
                    c.path_ns,
                    c.noop_ratio,
                    c.path_ratio,
                    c.net_ratio,
                    c.backend
                        .map_or("-".to_string(), |b| format!("{b} (sport {})", c.sport)),
                );
            }
            println!(
                "   (wrapper: no-op / empty; path: path / empty; net: (path - no-op + empty) / empty, the figure judged; medians over the rounds)"
            );
            println!("   checks: {}", r.checks);
            for m in &r.predict_mismatch {
                println!("   WARNING: {m}");
            }
            for t in &r.targets {
                t.print("   ");
            }
        }
        (None, Some(e)) => println!("   not measured: {e}"),
        _ => {}
    }
}

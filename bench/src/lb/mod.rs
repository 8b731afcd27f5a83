//! Part 1b: the load-balancer path. The steering program `xdpgate_steer`,
//! which the main program tail-calls for packets the ACL passed on an
//! interface with `IFACE_LB` or `IFACE_DECAP`, timed with `BPF_PROG_TEST_RUN`
//! beside the empty XDP program, in part 1's namespace (whose loopback,
//! ifindex 1, is where test runs deliver; registered as slot 1).
//!
//! The namespace gets forwarding, a veth pair (`10.200.9.1/24`,
//! `fd00:200:9::1/64` on one end) and permanent neighbours for the backends,
//! so `bpf_fib_lookup` resolves every backend; three services (IPv4 and IPv6
//! VIP with encapsulation, an IPv4 VIP with L2 DSR; 10 backends each, both
//! families) are installed with `LbController`, and one decapsulation address.
//! The ACL is empty (default policy allow): the numbers are the steering
//! path on top of the cheapest classification.
//!
//! **Repetitions do not restart from the input.** `BPF_PROG_TEST_RUN` with
//! `repeat` N runs the program N times on one `xdp_buff` (net/bpf/test_run.c,
//! `bpf_test_run()`: the loop calls `bpf_prog_run_xdp(prog, ctx)` with the same
//! `ctx` and resets neither its pointers nor the bytes). A program that moves
//! the packet's head sees its own output from the second repetition on:
//! after an encapsulation the next repetition parses an IPIP packet to the
//! backend (no ports: passed), after a decapsulation the inner packet. Each
//! class is therefore checked once with 1 and once with N repetitions: same
//! action, same output frame, and the class's datapath counter (service
//! forwarded, decapsulated) advanced by N. Only classes that pass
//! ("repeat-invariant") are reported from the N-repetition runs, like part 1.
//! The others are reported by single runs: pairs of one-repetition runs of
//! the empty program and of xdpgate, whose median difference (the kernel's
//! fixed cost per call cancels) is added to the empty program's
//! N-repetition time of the same round. The repeat-invariant classes get the
//! single-run estimate too, as a check of the method.
//!
//! Files: `rig.rs` (the namespace's network, which backend a frame went to,
//! picking flows), `case.rs` (the classes and the check of each run's
//! output), `measure.rs` (checking a class with 1 and N repetitions, and
//! timing it); this file holds the constants, the report and [`run`].

mod case;
mod measure;
mod rig;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;
use serde::Serialize;
use xdpgate::{acl::AclController, datapath::Datapath, lb::LbController};
use xdpgate_common::IFACE_DECAP;
use xdpgate_model::{
    acl::AclState,
    iface::Malformed,
    lb::{BackendSpec, Forward, Proto, ServiceId, ServiceSpec, default_lb_config},
};
use xdpgate_tests::lab::Netns;

use case::{Case, Expect, PathCounter, ipip, tcp_v4, tcp_v6};
use measure::run_case;
use rig::{pick_flow, setup_network};

use crate::{
    bpf,
    report::{Section, Target},
    testrun::ClassResult,
    workload,
};

/// `XDP_REDIRECT`.
const XDP_REDIRECT: u32 = 4;

/// The target: the LB path at most this many times the empty program.
pub(crate) const TARGET_RATIO: f64 = 2.5;

/// The encapsulating IPv4 service's VIP.
const VIP_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
/// The encapsulating IPv6 service's VIP.
const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 0x20);
/// The L2 DSR service's VIP.
const VIP_DSR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 21);
/// The service port (TCP).
const PORT: u16 = 443;
/// Decapsulation address (outer destination) on slot 1.
const DECAP_DST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 30);
/// Outer source of the tunnelled packet.
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
    /// Frame length out after one run.
    pub out_len: usize,
    /// The action one run must return.
    pub expect: u32,
    /// Source port of the frame.
    pub sport: u16,
    /// The backend the datapath forwards the flow to, for LB classes.
    pub backend: Option<IpAddr>,
    /// Whether `repeat` repetitions give the action and output frame of one,
    /// with the class's path counter advanced by `repeat`.
    pub repeat_invariant: bool,
    /// The action after `repeat` repetitions (the last repetition's).
    pub repeat_action: u32,
    /// Of the `repeat` repetitions, how many took the class's path (its
    /// service's forwarded counter or the decapsulation counter; `None`: the
    /// class has no such counter).
    pub repeat_path_count: Option<u64>,
    /// How `ns` and `ratio` were measured: "repeat" (N repetitions per run,
    /// like part 1) or "single" (single-run differences, see the module).
    pub method: &'static str,
    /// ns per packet (from `repeat` or `single`, see `method`).
    pub ns: f64,
    /// Ratio to the empty program (median over the rounds).
    pub ratio: f64,
    /// The N-repetition runs side by side with the empty program (for a
    /// class that is not repeat-invariant: not this class's path after the
    /// first repetition).
    pub repeated: ClassResult,
    /// The single-run measurement.
    pub single: SingleRun,
}

/// Single runs: pairs of one-repetition runs (empty program, then xdpgate).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct SingleRun {
    /// Pairs per round.
    pub calls: usize,
    /// The empty program, one repetition: median of the rounds' medians
    /// (includes the kernel's fixed cost per call).
    pub empty_single_ns: f64,
    /// xdpgate, one repetition: median of the rounds' medians.
    pub xdpgate_single_ns: f64,
    /// Median over the rounds of the round's median (xdpgate - empty) per pair.
    pub delta_ns: f64,
    /// Every round's median difference.
    pub delta_rounds: Vec<f64>,
    /// Estimate: the empty program's N-repetition time of the round plus the
    /// round's difference; median over the rounds.
    pub ns: f64,
    /// Every round's estimate.
    pub rounds: Vec<f64>,
    /// Median over the rounds of (estimate / empty program) of the round.
    pub ratio: f64,
}

/// What this part measured.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LbReport {
    /// Repetitions per N-repetition run.
    pub repeat: u32,
    /// Ring entries per service.
    pub ring_size: u32,
    /// Instructions the verifier processed for the steering program.
    pub steer_verified_instructions: Option<u32>,
    /// The services, as `VIP:PORT/PROTO forward: backends`.
    pub services: Vec<String>,
    /// What was found about repetitions.
    pub repeat_semantics: String,
    /// Flows of the classes whose backend (as the datapath forwards them)
    /// is not the one `LbController::predict` names.
    pub predict_mismatch: Vec<String>,
    /// The reference class `no-steer` first, then the steered classes.
    pub classes: Vec<LbClassResult>,
    /// The LB path at most [`TARGET_RATIO`] x the empty program.
    pub target: Target,
}

/// Runs this part inside `ns` (part 1's namespace, after part 1).
pub(crate) fn run(ns: &Netns, repeat: u32) -> anyhow::Result<LbReport> {
    setup_network(ns)?;
    let calls = (repeat as usize / 50).clamp(1_000, 20_000);
    ns.run(|| -> anyhow::Result<LbReport> {
        let empty = bpf::load_constant_xdp(bpf::XDP_PASS, "bench_empty")
            .context("loading the empty XDP program")?;
        let mut dp = Datapath::load().context("loading xdpgate")?;
        dp.register(1, 1, Malformed::Drop)
            .context("registering lo")?;
        let mut acl = AclController::new([("lo".to_string(), 1)].into());
        acl.install(&mut dp, AclState::default())
            .map_err(|e| anyhow::anyhow!("installing the empty rule set: {e}"))?;
        dp.set_lb_config(&default_lb_config())?;
        let steer_verified_instructions = dp.steer_verified_instructions();
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
                    "reference: lb-miss's frame (IPv4 TCP to {}) without IFACE_LB/IFACE_DECAP: the main program alone",
                    workload::DST_V4
                ),
                frame: miss_frame.clone(),
                action: bpf::XDP_PASS,
                sport: FIRST_SPORT,
                backend: None,
                expect: Expect::Unchanged,
                counter: PathCounter::None,
            },
            repeat,
            calls,
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
        dp.set_iface_flag(1, IFACE_DECAP, true)?;
        dp.set_decap_dsts(&[xdpgate_model::bind::key(1, DECAP_DST.into())])?;
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

        // The LB classes: (spec index, name, client, IPv4 backend wanted, frame).
        type Frame = fn(u16) -> Vec<u8>;
        let lb_classes: [(usize, &'static str, IpAddr, bool, Frame); 3] = [
            (0, "lb-v4-encap", client_v4, true, |p| {
                tcp_v4(workload::MISS_V4, VIP_V4, p)
            }),
            (1, "lb-v6-encap", client_v6, false, |p| {
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
                (false, IpAddr::V4(_)) => ("IPv4 encapsulation", Expect::Encap(f.backend)),
                (false, IpAddr::V6(_)) => ("IPv6 encapsulation", Expect::Encap(f.backend)),
            };
            let c = Case {
                name,
                what: format!(
                    "{} TCP {}:{} -> {}; the ring picks {}: {how}, redirected to the veth",
                    if client.is_ipv4() { "IPv4" } else { "IPv6" },
                    client,
                    f.sport,
                    spec.id,
                    f.backend
                ),
                frame: frame(f.sport),
                action: XDP_REDIRECT,
                sport: f.sport,
                backend: Some(f.backend),
                expect,
                counter: PathCounter::Service(spec.id),
            };
            results.push(run_case(&empty, &mut dp, &ctl, &c, repeat, calls)?);
        }
        let cases = [
            Case {
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
            },
            Case {
                name: "lb-miss",
                what: format!(
                    "IPv4 TCP to {}:{PORT}, no service there (IFACE_LB): the tail call and two service lookups, passed",
                    workload::DST_V4
                ),
                frame: miss_frame,
                action: bpf::XDP_PASS,
                sport: FIRST_SPORT,
                backend: None,
                expect: Expect::Unchanged,
                counter: PathCounter::None,
            },
        ];
        for c in &cases {
            results.push(run_case(&empty, &mut dp, &ctl, c, repeat, calls)?);
        }

        let steered: Vec<&LbClassResult> = results.iter().filter(|r| r.name != "no-steer").collect();
        let worst = steered
            .iter()
            .max_by(|a, b| a.ratio.total_cmp(&b.ratio))
            .context("no class")?;
        let target = Target {
            goal: format!(
                "LB path <= {TARGET_RATIO}x the empty XDP program (BPF_PROG_TEST_RUN, every steered class)"
            ),
            measured: format!(
                "worst {}: {:.2}x ({:.0} ns); {}",
                worst.name,
                worst.ratio,
                worst.ns,
                steered
                    .iter()
                    .map(|r| format!("{} {:.2}x", r.name, r.ratio))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            met: Some(worst.ratio <= TARGET_RATIO),
        };
        let repeat_semantics = format!(
            "BPF_PROG_TEST_RUN repeats run the program on the same xdp_buff without resetting it \
             (net/bpf/test_run.c bpf_test_run()); measured: {}",
            results
                .iter()
                .map(|r| format!(
                    "{} {}/{} repetitions on its path, last action {}{}",
                    r.name,
                    r.repeat_path_count.map_or("-".to_string(), |n| n.to_string()),
                    repeat,
                    action_name(r.repeat_action),
                    if r.repeat_invariant {
                        " (repeat-invariant)"
                    } else {
                        " (NOT repeat-invariant)"
                    }
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        Ok(LbReport {
            repeat,
            ring_size,
            steer_verified_instructions,
            services,
            repeat_semantics,
            predict_mismatch,
            classes: results,
            target,
        })
    })
}

/// Prints this part.
pub(crate) fn print(r: &Section<LbReport>) {
    println!(
        "1b. Load-balancer path (steering program by tail call), BPF_PROG_TEST_RUN ns/packet and ratio to the empty XDP program"
    );
    match (&r.result, &r.error) {
        (Some(r), _) => {
            println!(
                "   steering program: {} instructions verified; ring {} entries; empty rule set",
                r.steer_verified_instructions
                    .map_or("?".to_string(), |n| n.to_string()),
                r.ring_size
            );
            println!(
                "   {:<12} {:>8} {:>7} {:>7} | {:>17} {:>9} {:>7} | {:>26} | picked",
                "class",
                "ns",
                "ratio",
                "method",
                format!("{} repetitions", r.repeat),
                "last act",
                "on path",
                "single runs: x - e, est"
            );
            for c in &r.classes {
                println!(
                    "   {:<12} {:>8.1} {:>6.2}x {:>7} | {:>8.1} {:>7.2}x {:>9} {:>7} | {:>+8.1} {:>8.1} {:>7.2}x | {}",
                    c.name,
                    c.ns,
                    c.ratio,
                    c.method,
                    c.repeated.ns,
                    c.repeated.ratio,
                    action_name(c.repeat_action),
                    c.repeat_path_count.map_or("-".to_string(), |n| {
                        if n == u64::from(r.repeat) {
                            "all".to_string()
                        } else {
                            n.to_string()
                        }
                    }),
                    c.single.delta_ns,
                    c.single.ns,
                    c.single.ratio,
                    c.backend
                        .map_or("-".to_string(), |b| format!("{b} (sport {})", c.sport)),
                );
            }
            println!(
                "   (method repeat: {} repetitions per run, as part 1; single: {} pairs of one-repetition runs per round, \
                 the empty program's {}-repetition time plus the median difference; a class whose repetitions do not \
                 all take its path is reported by single runs)",
                r.repeat,
                r.classes.first().map_or(0, |c| c.single.calls),
                r.repeat
            );
            println!("   {}", r.repeat_semantics);
            for m in &r.predict_mismatch {
                println!("   WARNING: {m}");
            }
            r.target.print("   ");
        }
        (None, Some(e)) => println!("   not measured: {e}"),
        _ => {}
    }
}

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
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::OwnedFd,
};

use anyhow::{Context as _, bail, ensure};
use serde::Serialize;
use xdpgate::{
    acl::AclState,
    control::AclController,
    datapath::{Datapath, Malformed, TestRunOutcome},
    lb::{BackendSpec, Forward, LbController, Proto, ServiceId, ServiceSpec, default_lb_config},
};
use xdpgate_common::{IFACE_DECAP, lb::FAMILY_V4};
use xdpgate_tests::{
    lab::Netns,
    packet::{Ethernet, Ipv4, Ipv6, Transport, checksum, ethertype, hex, pad, proto},
};

use crate::{
    bpf,
    report::{Section, Target},
    testrun::{ClassResult, ROUNDS},
    workload,
};

/// `XDP_REDIRECT`.
const XDP_REDIRECT: u32 = 4;
/// IP protocol numbers of the tunnels.
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;

/// The target: the LB path at most this many times the empty program.
pub const TARGET_RATIO: f64 = 2.5;

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
pub struct LbClassResult {
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
pub struct SingleRun {
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
pub struct LbReport {
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

/// Which datapath counter counts a class's path.
#[derive(Clone, Copy)]
enum PathCounter {
    /// The service's forwarded packets.
    Service(ServiceId),
    /// Decapsulated IPv4-in-IPv4 packets on slot 1.
    Decap,
    /// None (the packet is passed unchanged).
    None,
}

/// What one run must do to the frame.
#[derive(Clone, Copy)]
enum Expect {
    /// Encapsulated to `backend`, sent to its neighbour.
    Encap(IpAddr),
    /// Ethernet addresses rewritten to reach `backend`.
    L2dsr(IpAddr),
    /// The outer IPv4 header removed.
    Decap,
    /// Not changed.
    Unchanged,
}

struct Case {
    name: &'static str,
    what: String,
    frame: Vec<u8>,
    action: u32,
    sport: u16,
    backend: Option<IpAddr>,
    expect: Expect,
    counter: PathCounter,
}

fn tcp_v4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16) -> Vec<u8> {
    let l4 = Transport::tcp(sport, PORT).bytes();
    let ip = Ipv4::new(src.octets(), dst.octets(), proto::TCP).build(&l4);
    pad(Ethernet::new(ethertype::IPV4).build(&ip), 60)
}

fn tcp_v6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16) -> Vec<u8> {
    let l4 = Transport::tcp(sport, PORT).bytes();
    let ip = Ipv6::new(src.octets(), dst.octets(), proto::TCP).build(&l4);
    Ethernet::new(ethertype::IPV6).build(&ip)
}

/// IPIP: `TUNNEL_SRC` -> `DECAP_DST`, inner IPv4 TCP from the client to
/// `inner_dst`.
fn ipip(inner_dst: Ipv4Addr) -> Vec<u8> {
    let l4 = Transport::tcp(FIRST_SPORT, PORT).bytes();
    let inner = Ipv4::new(workload::MISS_V4.octets(), inner_dst.octets(), proto::TCP).build(&l4);
    let outer = Ipv4::new(TUNNEL_SRC.octets(), DECAP_DST.octets(), IPPROTO_IPIP).build(&inner);
    pad(Ethernet::new(ethertype::IPV4).build(&outer), 60)
}

/// Checks one run's action and output frame against the class.
fn verify(c: &Case, out: &TestRunOutcome) -> anyhow::Result<()> {
    ensure!(
        out.action == c.action,
        "{}: xdpgate returned {} ({}), expected {} ({})",
        c.name,
        out.action,
        action_name(out.action),
        c.action,
        action_name(c.action)
    );
    let (f, o) = (&c.frame, &out.frame);
    let r = verify_frame(c, f, o);
    r.with_context(|| format!("{}: in {}, out {}", c.name, hex(f), hex(o)))
}

/// Checks one run's output frame `o` (of the input `f`) against the class.
fn verify_frame(c: &Case, f: &[u8], o: &[u8]) -> anyhow::Result<()> {
    match c.expect {
        Expect::Encap(backend) => {
            let inner_proto = if f[12..14] == [0x08, 0x00] {
                IPPROTO_IPIP
            } else {
                IPPROTO_IPV6
            };
            ensure!(
                o[0..6] == backend_mac(backend) && o[6..12] == VETH_MAC,
                "{}: Ethernet addresses {:02x?} are not those of {backend}'s neighbour",
                c.name,
                &o[0..12]
            );
            match backend {
                IpAddr::V4(b) => {
                    ensure!(o.len() == f.len() + 20, "{}: length {}", c.name, o.len());
                    ensure!(
                        o[12..14] == [0x08, 0x00]
                            && o[14] == 0x45
                            && o[23] == inner_proto
                            && o[30..34] == b.octets()
                            && checksum(&o[14..34]) == 0
                            && o[34..] == f[14..],
                        "{}: not an IPv4 encapsulation to {b}",
                        c.name
                    );
                }
                IpAddr::V6(b) => {
                    ensure!(o.len() == f.len() + 40, "{}: length {}", c.name, o.len());
                    ensure!(
                        o[12..14] == [0x86, 0xdd]
                            && o[14] >> 4 == 6
                            && o[20] == inner_proto
                            && o[38..54] == b.octets()
                            && o[54..] == f[14..],
                        "{}: not an IPv6 encapsulation to {b}",
                        c.name
                    );
                }
            }
        }
        Expect::L2dsr(backend) => {
            ensure!(
                o.len() == f.len()
                    && o[0..6] == backend_mac(backend)
                    && o[6..12] == VETH_MAC
                    && o[12..] == f[12..],
                "{}: not the frame readdressed to {backend}'s neighbour",
                c.name
            );
        }
        Expect::Decap => {
            ensure!(
                o.len() + 20 == f.len()
                    && o[0..12] == f[0..12]
                    && o[12..14] == [0x08, 0x00]
                    && o[14..] == f[34..],
                "{}: not the inner packet",
                c.name
            );
        }
        Expect::Unchanged => ensure!(o == f, "{}: the frame was changed", c.name),
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// The packets counted on the class's path so far.
fn path_count(dp: &Datapath, ctl: &LbController, c: PathCounter) -> anyhow::Result<Option<u64>> {
    Ok(match c {
        PathCounter::Service(id) => Some(
            ctl.status(dp)?
                .iter()
                .find(|s| s.service == id)
                .with_context(|| format!("no status of service {id}"))?
                .forwarded_packets,
        ),
        PathCounter::Decap => Some(dp.decap_counter(1, FAMILY_V4, FAMILY_V4)?.packets),
        PathCounter::None => None,
    })
}

/// Sets up forwarding, the veth pair and the backends' neighbours in `ns`.
fn setup_network(ns: &Netns) -> anyhow::Result<()> {
    for key in [
        "net.ipv4.conf.all.forwarding",
        "net.ipv6.conf.all.forwarding",
    ] {
        ns.sysctl(key, "1")
            .with_context(|| format!("setting {key} in the benchmark namespace"))?;
    }
    let ip = |args: &[&str]| -> anyhow::Result<()> {
        ns.exec("ip", args)
            .with_context(|| format!("ip {}", args.join(" ")))?;
        Ok(())
    };
    let mac = mac_string(VETH_MAC);
    ip(&[
        "link", "add", VETH, "address", &mac, "type", "veth", "peer", "name", PEER,
    ])?;
    ip(&["addr", "add", "10.200.9.1/24", "dev", VETH])?;
    ip(&["addr", "add", "fd00:200:9::1/64", "dev", VETH, "nodad"])?;
    ip(&["link", "set", VETH, "up"])?;
    ip(&["link", "set", PEER, "up"])?;
    for b in backends() {
        ip(&[
            "neigh",
            "replace",
            &b.to_string(),
            "lladdr",
            &mac_string(backend_mac(b)),
            "dev",
            VETH,
            "nud",
            "permanent",
        ])?;
    }
    Ok(())
}

/// The backend a forwarded frame went to: the outer destination of an
/// encapsulation, or (`dsr`) the backend whose neighbour MAC is the
/// destination MAC; `None` if it is not one of [`backends`].
fn sent_to(o: &[u8], dsr: bool) -> Option<IpAddr> {
    let a = if dsr {
        match o.get(0..6)? {
            [0x02, 0, 0, 0, 0x09, n] => IpAddr::V4(Ipv4Addr::new(10, 200, 9, *n)),
            [0x02, 0, 0, 0x06, 0x09, n] => {
                let net = u128::from(Ipv6Addr::new(0xfd00, 0x200, 9, 0, 0, 0, 0, 0));
                IpAddr::V6((net + u128::from(*n)).into())
            }
            _ => return None,
        }
    } else if o.get(12..14)? == [0x08, 0x00] && matches!(o.get(23)?, 4 | 41) {
        let d: [u8; 4] = o.get(30..34)?.try_into().ok()?;
        IpAddr::V4(d.into())
    } else if o.get(12..14)? == [0x86, 0xdd] && matches!(o.get(20)?, 4 | 41) {
        let d: [u8; 16] = o.get(38..54)?.try_into().ok()?;
        IpAddr::V6(d.into())
    } else {
        return None;
    };
    backends().contains(&a).then_some(a)
}

/// A flow of a service: its source port, the backend the datapath sends it
/// to, and the one `LbController::predict` names.
struct Flow {
    sport: u16,
    backend: IpAddr,
    predicted: Option<IpAddr>,
}

/// The first source port from [`FIRST_SPORT`] whose frame (`frame(sport)`)
/// the datapath forwards to a backend of the wanted family. Asked of the
/// datapath itself (one run per port), not of the controller's prediction.
fn pick_flow(
    dp: &mut Datapath,
    ctl: &LbController,
    id: &ServiceId,
    src: IpAddr,
    want_v4: bool,
    dsr: bool,
    frame: impl Fn(u16) -> Vec<u8>,
) -> anyhow::Result<Flow> {
    for sport in FIRST_SPORT..FIRST_SPORT + 1000 {
        let o = dp.test_run(&frame(sport), 1)?;
        if o.action != XDP_REDIRECT {
            continue;
        }
        if let Some(backend) = sent_to(&o.frame, dsr)
            && backend.is_ipv4() == want_v4
        {
            return Ok(Flow {
                sport,
                backend,
                predicted: ctl.predict(id, src, sport, PORT),
            });
        }
    }
    bail!("{id}: no source port of 1,000 is forwarded to a backend of the wanted family")
}

/// Times one class: [`ROUNDS`] rounds of (empty program with `repeat`
/// repetitions, xdpgate with `repeat`, then `calls` pairs of single runs).
fn measure(
    empty: &OwnedFd,
    dp: &mut Datapath,
    c: &Case,
    repeat: u32,
    calls: usize,
) -> anyhow::Result<(ClassResult, SingleRun)> {
    let (mut rounds, mut empty_rounds, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut deltas, mut estimates, mut est_ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut e1_meds, mut x1_meds) = (Vec::new(), Vec::new());
    let mut action = 0;
    for _ in 0..ROUNDS {
        let e = bpf::test_run(empty, &c.frame, repeat)?;
        ensure!(
            e.retval == bpf::XDP_PASS,
            "the empty program returned {}",
            e.retval
        );
        let x = dp.test_run(&c.frame, repeat)?;
        action = x.action;
        let (e, x) = (e.duration.as_nanos() as f64, x.duration.as_nanos() as f64);
        empty_rounds.push(e);
        rounds.push(x);
        ratios.push(x / e.max(1.0));
        let (mut d, mut e1s, mut x1s) = (
            Vec::with_capacity(calls),
            Vec::with_capacity(calls),
            Vec::with_capacity(calls),
        );
        for _ in 0..calls {
            let e1 = bpf::test_run(empty, &c.frame, 1)?;
            let x1 = dp.test_run(&c.frame, 1)?;
            if x1.action != c.action {
                bail!(
                    "{}: a single run returned {}, expected {}",
                    c.name,
                    action_name(x1.action),
                    action_name(c.action)
                );
            }
            let (e1, x1) = (e1.duration.as_nanos() as f64, x1.duration.as_nanos() as f64);
            d.push(x1 - e1);
            e1s.push(e1);
            x1s.push(x1);
        }
        let delta = median(&d);
        deltas.push(delta);
        estimates.push(e + delta);
        est_ratios.push((e + delta) / e.max(1.0));
        e1_meds.push(median(&e1s));
        x1_meds.push(median(&x1s));
    }
    Ok((
        ClassResult {
            ns: median(&rounds),
            rounds,
            empty_ns: median(&empty_rounds),
            empty_rounds,
            ratio: median(&ratios),
            action,
        },
        SingleRun {
            calls,
            empty_single_ns: median(&e1_meds),
            xdpgate_single_ns: median(&x1_meds),
            delta_ns: median(&deltas),
            delta_rounds: deltas,
            ns: median(&estimates),
            rounds: estimates,
            ratio: median(&est_ratios),
        },
    ))
}

/// Checks a class with one and with `repeat` repetitions, then times it.
fn run_case(
    empty: &OwnedFd,
    dp: &mut Datapath,
    ctl: &LbController,
    c: &Case,
    repeat: u32,
    calls: usize,
) -> anyhow::Result<LbClassResult> {
    let before = path_count(dp, ctl, c.counter)?;
    let one = dp.test_run(&c.frame, 1)?;
    verify(c, &one)?;
    let mid = path_count(dp, ctl, c.counter)?;
    if let (Some(a), Some(b)) = (before, mid) {
        ensure!(
            b - a == 1,
            "{}: one run counted {} packets on its path",
            c.name,
            b - a
        );
    }
    let many = dp.test_run(&c.frame, repeat)?;
    let after = path_count(dp, ctl, c.counter)?;
    let path = mid.zip(after).map(|(a, b)| b - a);
    let invariant = many.action == one.action
        && many.frame == one.frame
        && path.is_none_or(|n| n == u64::from(repeat));
    eprintln!(
        "bench: lb {}: {} ({} -> {} bytes); {} repetitions: {}, {} of them on the path, {}",
        c.name,
        action_name(one.action),
        c.frame.len(),
        one.frame.len(),
        repeat,
        action_name(many.action),
        path.map_or("-".to_string(), |n| n.to_string()),
        if invariant {
            "repeat-invariant"
        } else {
            "NOT repeat-invariant"
        }
    );
    let (repeated, single) = measure(empty, dp, c, repeat, calls)?;
    if invariant && repeated.action != c.action {
        bail!(
            "{}: {} repetitions returned {}",
            c.name,
            repeat,
            action_name(repeated.action)
        );
    }
    let (method, ns, ratio) = if invariant {
        ("repeat", repeated.ns, repeated.ratio)
    } else {
        ("single", single.ns, single.ratio)
    };
    Ok(LbClassResult {
        name: c.name,
        what: c.what.clone(),
        frame_len: c.frame.len(),
        out_len: one.frame.len(),
        expect: c.action,
        sport: c.sport,
        backend: c.backend,
        repeat_invariant: invariant,
        repeat_action: many.action,
        repeat_path_count: path,
        method,
        ns,
        ratio,
        repeated,
        single,
    })
}

/// Runs this part inside `ns` (part 1's namespace, after part 1).
pub fn run(ns: &Netns, repeat: u32) -> anyhow::Result<LbReport> {
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
        dp.set_decap_dsts(&[xdpgate::bind::key(1, DECAP_DST.into())])?;
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
pub fn print(r: &Section<LbReport>) {
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
                )
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

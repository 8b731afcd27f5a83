//! Part 1c: the load-balancer path on live frames, against the empty
//! `XDP_TX` program, on a veth pair of its own (one core).
//!
//! The rig is part 3's (see `live.rs`) turned into a loop. A generator in
//! namespace `b` injects frames with `BPF_PROG_TEST_RUN` and
//! `BPF_F_TEST_XDP_LIVE_FRAMES` as if received on b's veth end; its `XDP_TX`
//! puts them on a's receive ring. In namespace `a` the device under test runs
//! natively on a's end and sends every frame back out of the same device with
//! `XDP_TX`: either the empty program `r0 = XDP_TX; exit`, or xdpgate with a
//! service whose backend is on a's own subnet, reached through that veth
//! (`bpf_fib_lookup`: egress = ingress, so `XDP_TX`). b's end runs
//! `r0 = XDP_DROP; exit` natively: a veth accepts `ndo_xdp_xmit` frames only
//! with NAPI on, and the returned frames are dropped there as cheaply as
//! possible. The generator thread is pinned to one CPU, and the receive
//! paths of both ends run in softirq on that CPU: generation, the DUT, the
//! return hop and the drop share one core. The rate is the frames that came
//! back to b (b's veth receive count) over the wall time; ns per frame is
//! 1e9 / that rate, so the rig's own cost (generator, two veth hops, the
//! drop) is in both numbers of a ratio.
//!
//! **The generator rewrites the Ethernet header of every frame.** Live-frames
//! mode copies the frame into a page once, when its page pool allocates the
//! page; a recycled page gets its pointers reset but keeps its bytes
//! (net/bpf/test_run.c). An encapsulation writes the new Ethernet and outer
//! IP headers in front of the frame, over its first 14 bytes: from the
//! second pass of a page on, the generator would send a frame whose Ethernet
//! header is the end of the last outer header. The generator is therefore
//! the program "store the frame's 14-byte Ethernet header, then `XDP_TX`"
//! (one per family); the inner packet behind it is never touched by
//! xdpgate. The same generator drives the empty program's runs.
//!
//! Before timing, each class is checked with 10,000 frames: the service's
//! forwarded counter and xdpgate's `tx` action counter grow by 10,000, its
//! dropped and slow-path counters and every other action counter by 0, and
//! b receives 10,000 frames back. The same check with the plain generator
//! (`r0 = XDP_TX; exit`) is recorded to show the recycled-page effect.
//!
//! Then rounds alternate the empty program and xdpgate (ABBA: the order
//! flips every round); the ratio of a class is the median over the rounds
//! of (xdpgate's ns / the empty program's ns of the same family and round).
//!
//! Files: `generator.rs` (the live-frames generator), `rig.rs` (the lab's
//! forwarding and neighbours, the frames, receive counts), `check.rs` (the
//! classes and their 10,000-frame check), `timing.rs` (one timed run); this
//! file holds the constants, the report, [`run`] and [`print`].

mod check;
mod generator;
mod rig;
mod timing;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, anyhow, ensure};
use serde::Serialize;
use xdpgate::{acl::AclController, datapath::Datapath, lb::LbController};
use xdpgate_model::{
    acl::AclState,
    iface::{Malformed, XdpMode},
    lb::{BackendSpec, Forward, Proto, ServiceId, ServiceSpec, lb_config},
};
use xdpgate_tests::{lab::Lab, packet::ethertype};

use check::{Class, check_class, service_counters, settle};
use generator::{Generator, load_generator};
use rig::{rx_packets, setup, tcp_frame};
use timing::{push, timed};

use crate::{
    bpf,
    lb::TARGET_RATIO,
    live::CPU,
    report::{Section, Target},
    workload,
};

/// Lab subnet of this rig (10.200.232.0/24, fd00:200:232::/64).
pub(crate) const SUBNET: u8 = 232;
/// Frames of a verification burst.
const CHECK_FRAMES: u32 = 10_000;
/// Stray packets a check tolerates: the namespaces' own stacks send the odd
/// packet out of their veth ends (1-2 seen per check); b counts a's, xdpgate
/// passes b's.
const STRAY: u64 = 16;
/// Warm-up before each timed run, seconds.
const WARMUP_S: f64 = 0.3;
/// The encapsulating IPv4 service's VIP.
const VIP_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
/// The encapsulating IPv6 service's VIP.
const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 0x20);
/// The L2 DSR service's VIP.
const VIP_DSR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 21);
/// The service port (TCP).
const PORT: u16 = 443;
/// The backends, on a's subnet; their neighbour entries name b's MAC.
const BACKEND_V4: Ipv4Addr = Ipv4Addr::new(10, 200, SUBNET, 10);
const BACKEND_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0x232, 0, 0, 0, 0, 0x10);

/// One timed run.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LbLiveRun {
    /// Round (0-based).
    pub round: usize,
    /// `empty-tx` or `xdpgate`.
    pub program: &'static str,
    /// The class (`lb-v4-encap`, ...; `ipv4`/`ipv6` for the empty program).
    pub class: &'static str,
    /// Frames that came back to b per second, millions.
    pub mpps: f64,
    /// ns per frame: 1e9 / the rate.
    pub ns: f64,
    /// Frames injected per second, millions.
    pub offered_mpps: f64,
    /// Frames a's end received.
    pub received: u64,
    /// Frames b's end received back.
    pub returned: u64,
    /// The service's forwarded counter delta (xdpgate runs).
    pub forwarded: Option<u64>,
    /// Wall time, seconds.
    pub secs: f64,
}

/// One class over the rounds.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LbLiveClass {
    /// Short name.
    pub name: &'static str,
    /// What happens to the frame.
    pub what: String,
    /// Frame length in, and back out, bytes.
    pub frame_len: usize,
    /// Frame length after xdpgate.
    pub out_len: usize,
    /// Median Mpps (frames back at b).
    pub mpps: f64,
    /// Median ns per frame.
    pub ns: f64,
    /// The empty `XDP_TX` program, same family: median Mpps.
    pub empty_mpps: f64,
    /// The empty `XDP_TX` program, same family: median ns per frame.
    pub empty_ns: f64,
    /// Median over the rounds of (ns / the empty program's ns of the round).
    pub ratio: f64,
    /// Every round's ratio.
    pub ratios: Vec<f64>,
    /// Median over the rounds of (ns - the empty program's ns of the round).
    pub extra_ns: f64,
}

/// A verification burst.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Checked {
    /// Class (or `empty-tx ipv4`/`ipv6`).
    pub class: &'static str,
    /// Frames injected.
    pub sent: u64,
    /// Frames b received back.
    pub returned: u64,
    /// The service's forwarded counter delta (xdpgate).
    pub forwarded: Option<u64>,
    /// The service's slow-path counter delta (xdpgate).
    pub slow_path: Option<u64>,
    /// The service's dropped counter delta (xdpgate).
    pub dropped: Option<u64>,
    /// xdpgate's action counters on a's end (deltas; non-zero only).
    pub actions: BTreeMap<&'static str, u64>,
    /// The same burst with the plain generator `r0 = XDP_TX; exit`: the
    /// service's forwarded delta (recycled pages keep xdpgate's rewrite).
    pub plain_generator_forwarded: Option<u64>,
}

/// What this part measured.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LbLiveReport {
    /// Seconds per timed run.
    pub secs: f64,
    /// Rounds.
    pub rounds: usize,
    /// The CPU of the generator (and of both receive paths).
    pub cpu: usize,
    /// The services.
    pub services: Vec<String>,
    /// The verification bursts.
    pub checks: Vec<Checked>,
    /// Every timed run.
    pub runs: Vec<LbLiveRun>,
    /// The classes.
    pub classes: Vec<LbLiveClass>,
    /// The LB path at most [`TARGET_RATIO`] x the empty `XDP_TX` program.
    pub target: Target,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// Runs this part on a lab of its own (subnet [`SUBNET`]): `rounds` rounds
/// of `secs`-second runs.
pub(crate) fn run(secs: f64, rounds: usize) -> anyhow::Result<LbLiveReport> {
    let lab = Lab::new("benchlb", SUBNET).context("creating the veth lab")?;
    setup(&lab)?;
    let sink = bpf::load_constant_xdp(bpf::XDP_DROP, "bench_sink")
        .context("loading the XDP_DROP program for b")?;
    let b_ifindex = lab.b_end.ifindex;
    let sink_link = lab
        .b
        .run(|| bpf::attach_native(&sink, b_ifindex))
        .context("attaching XDP_DROP natively to b's end")?;
    let eth = |et: u16| -> [u8; 14] {
        let mut e = [0u8; 14];
        e[0..6].copy_from_slice(&lab.a_end.mac);
        e[6..12].copy_from_slice(&lab.b_end.mac);
        e[12..14].copy_from_slice(&et.to_be_bytes());
        e
    };
    let gen_v4 =
        load_generator(eth(ethertype::IPV4), "bench_gen_eth4").context("loading the generator")?;
    let gen_v6 =
        load_generator(eth(ethertype::IPV6), "bench_gen_eth6").context("loading the generator")?;
    let plain_prog =
        bpf::load_constant_xdp(bpf::XDP_TX, "bench_gen").context("loading the plain generator")?;
    let empty = bpf::load_constant_xdp(bpf::XDP_TX, "bench_tx")
        .context("loading the empty XDP_TX program")?;
    let g4 = Generator {
        lab: &lab,
        prog: &gen_v4,
    };
    let g6 = Generator {
        lab: &lab,
        prog: &gen_v6,
    };
    let plain = Generator {
        lab: &lab,
        prog: &plain_prog,
    };

    let id = |vip: IpAddr| ServiceId {
        vip,
        port: PORT,
        proto: Proto::Tcp,
    };
    let specs: Vec<ServiceSpec> = [
        (id(VIP_V4.into()), Forward::Encap, IpAddr::V4(BACKEND_V4)),
        (id(VIP_DSR.into()), Forward::L2dsr, IpAddr::V4(BACKEND_V4)),
        (id(VIP_V6.into()), Forward::Encap, IpAddr::V6(BACKEND_V6)),
    ]
    .into_iter()
    .map(|(id, forward, addr)| ServiceSpec {
        id,
        forward,
        backends: vec![BackendSpec { addr, weight: 1 }],
        health: None,
    })
    .collect();
    let services: Vec<String> = specs
        .iter()
        .map(|s| format!("{} {}: {}", s.id, s.forward.name(), s.backends[0].addr))
        .collect();
    let f4 = tcp_frame(&lab, VIP_V4.into());
    let f6 = tcp_frame(&lab, VIP_V6.into());
    // The empty program's classes: index 0 IPv4, 1 IPv6.
    let empties = [("ipv4", &f4, &g4), ("ipv6", &f6, &g6)];
    let classes = [
        Class {
            name: "lb-v4-encap",
            what: format!(
                "IPv4 TCP {}:{} -> {}: IPIP to {BACKEND_V4}, XDP_TX",
                workload::MISS_V4,
                workload::SPORT,
                specs[0].id
            ),
            out_len: f4.len() + 20,
            frame: f4.clone(),
            id: specs[0].id,
            family: 0,
            generator: Generator {
                lab: &lab,
                prog: &gen_v4,
            },
        },
        Class {
            name: "lb-v4-l2dsr",
            what: format!(
                "IPv4 TCP {}:{} -> {}: L2 DSR to {BACKEND_V4} (MACs rewritten), XDP_TX",
                workload::MISS_V4,
                workload::SPORT,
                specs[1].id
            ),
            frame: tcp_frame(&lab, VIP_DSR.into()),
            out_len: f4.len(),
            id: specs[1].id,
            family: 0,
            generator: Generator {
                lab: &lab,
                prog: &gen_v4,
            },
        },
        Class {
            name: "lb-v6-encap",
            what: format!(
                "IPv6 TCP [{}]:{} -> {}: IP6IP6 to {BACKEND_V6}, XDP_TX",
                workload::MISS_V6,
                workload::SPORT,
                specs[2].id
            ),
            out_len: f6.len() + 40,
            frame: f6.clone(),
            id: specs[2].id,
            family: 1,
            generator: Generator {
                lab: &lab,
                prog: &gen_v6,
            },
        },
    ];

    let (a_name, a_ifindex) = (lab.a_end.ifname.clone(), lab.a_end.ifindex);
    let out = lab.a.run(|| -> anyhow::Result<LbLiveReport> {
        let mut dp = Datapath::load().context("loading xdpgate")?;
        dp.register(a_ifindex, 1, Malformed::Drop)?;
        let mut acl = AclController::new(BTreeMap::from([(a_name.clone(), 1)]));
        acl.install(&mut dp, AclState::default())
            .map_err(|e| anyhow!("installing the empty rule set: {e}"))?;
        let cfg = lb_config(
            Ipv4Addr::new(10, 200, 233, 0),
            24,
            Ipv6Addr::new(0xfd00, 0x200, 0x233, 0, 0, 0, 0, 0),
            64,
            64,
        )?;
        dp.set_lb_config(&cfg)?;
        let mut ctl = LbController::new(&dp, vec![a_ifindex]);
        ctl.apply(&mut dp, &specs)
            .context("installing the services")?;

        // Checks: the empty program first, then xdpgate.
        let mut checks = Vec::new();
        {
            let _link = bpf::attach_native(&empty, a_ifindex)
                .context("attaching the empty XDP_TX program natively to a's end")?;
            for (family, frame, g) in empties {
                let b0 = rx_packets(&lab.b, &lab.b_end.ifname)?;
                g.burst(frame, CHECK_FRAMES)?;
                settle();
                let returned = rx_packets(&lab.b, &lab.b_end.ifname)?.saturating_sub(b0);
                eprintln!(
                    "bench: lb live check empty-tx {family}: {CHECK_FRAMES} sent, {returned} back at b"
                );
                let n = u64::from(CHECK_FRAMES);
                ensure!(
                    (n..=n + STRAY).contains(&returned),
                    "empty XDP_TX program, {family}: {returned} frames came back to b for {n} sent"
                );
                checks.push(Checked {
                    class: if family == "ipv4" {
                        "empty-tx ipv4"
                    } else {
                        "empty-tx ipv6"
                    },
                    sent: n,
                    returned,
                    forwarded: None,
                    slow_path: None,
                    dropped: None,
                    actions: BTreeMap::new(),
                    plain_generator_forwarded: None,
                });
            }
        }
        dp.attach(&a_name, a_ifindex, XdpMode::Native)
            .context("attaching xdpgate natively to a's end")?;
        for c in &classes {
            checks.push(check_class(&lab, &dp, &ctl, c, &plain)?);
        }
        dp.detach_all()?;

        let mut runs = Vec::new();
        for round in 0..rounds {
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for xdpgate in order {
                if xdpgate {
                    dp.attach(&a_name, a_ifindex, XdpMode::Native)
                        .context("attaching xdpgate natively to a's end")?;
                    for c in &classes {
                        let fwd = || -> anyhow::Result<Option<u64>> {
                            Ok(Some(service_counters(&dp, &ctl, &c.id)?.0))
                        };
                        let t = timed(&lab, &c.generator, &c.frame, secs, &fwd)
                            .with_context(|| format!("xdpgate {}", c.name))?;
                        push(&mut runs, round, "xdpgate", c.name, &t);
                    }
                    dp.detach_all()?;
                } else {
                    let _link = bpf::attach_native(&empty, a_ifindex)
                        .context("attaching the empty XDP_TX program natively to a's end")?;
                    for (family, frame, g) in empties {
                        let t = timed(&lab, g, frame, secs, &|| Ok(None))
                            .with_context(|| format!("empty XDP_TX program, {family}"))?;
                        push(&mut runs, round, "empty-tx", family, &t);
                    }
                }
            }
        }
        dp.shutdown()?;
        Ok(LbLiveReport {
            secs,
            rounds,
            cpu: CPU,
            services,
            checks,
            runs,
            classes: Vec::new(),
            target: Target {
                goal: String::new(),
                measured: String::new(),
                met: None,
            },
        })
    });
    drop(sink_link);
    let mut out = out?;

    let run_of = |round: usize, program: &str, class: &str| {
        out.runs
            .iter()
            .find(|r| r.round == round && r.program == program && r.class == class)
    };
    let mut results = Vec::new();
    for c in &classes {
        let family = empties[c.family].0;
        let (mut ns, mut mpps, mut ens, mut empps, mut ratios, mut extra) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for round in 0..rounds {
            let (Some(x), Some(e)) = (
                run_of(round, "xdpgate", c.name),
                run_of(round, "empty-tx", family),
            ) else {
                continue;
            };
            ns.push(x.ns);
            mpps.push(x.mpps);
            ens.push(e.ns);
            empps.push(e.mpps);
            ratios.push(x.ns / e.ns);
            extra.push(x.ns - e.ns);
        }
        ensure!(!ratios.is_empty(), "{}: no round measured", c.name);
        results.push(LbLiveClass {
            name: c.name,
            what: c.what.clone(),
            frame_len: c.frame.len(),
            out_len: c.out_len,
            mpps: median(&mpps),
            ns: median(&ns),
            empty_mpps: median(&empps),
            empty_ns: median(&ens),
            ratio: median(&ratios),
            ratios,
            extra_ns: median(&extra),
        });
    }
    let worst = results
        .iter()
        .max_by(|a, b| a.ratio.total_cmp(&b.ratio))
        .context("no class")?;
    out.target = Target {
        goal: format!(
            "LB path <= {TARGET_RATIO}x the empty XDP_TX program (live frames on a veth, one core, every forwarding class)"
        ),
        measured: format!(
            "worst {}: {:.2}x ({:.0} vs {:.0} ns/frame); {}",
            worst.name,
            worst.ratio,
            worst.ns,
            worst.empty_ns,
            results
                .iter()
                .map(|r| format!("{} {:.2}x", r.name, r.ratio))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        met: Some(worst.ratio <= TARGET_RATIO),
    };
    out.classes = results;
    Ok(out)
}

/// Prints this part.
pub(crate) fn print(r: &Section<LbLiveReport>) {
    println!(
        "1c. Load-balancer path on live frames (veth, XDP_TX back out of the ingress device, one core), ns/frame and ratio to the empty XDP_TX program"
    );
    match (&r.result, &r.error) {
        (Some(r), _) => {
            println!("   services: {}", r.services.join("; "));
            for c in &r.checks {
                println!(
                    "   check {:<14} {} sent, {} back at b{}{}",
                    c.class,
                    c.sent,
                    c.returned,
                    c.forwarded.map_or(String::new(), |f| format!(
                        ", forwarded {f}, slow path {}, dropped {}, actions {:?}",
                        c.slow_path.unwrap_or(0),
                        c.dropped.unwrap_or(0),
                        c.actions
                    )),
                    c.plain_generator_forwarded
                        .map_or(String::new(), |p| format!(
                            "; plain generator: {p} forwarded"
                        )),
                );
            }
            println!(
                "   {:<12} {:>7} {:>8} | {:>9} {:>8} | {:>6} {:>8} | rounds",
                "class", "Mpps", "ns/frame", "empty Mpps", "empty ns", "ratio", "extra ns"
            );
            for c in &r.classes {
                println!(
                    "   {:<12} {:>7.3} {:>8.1} | {:>10.3} {:>8.1} | {:>5.2}x {:>+8.1} | {}",
                    c.name,
                    c.mpps,
                    c.ns,
                    c.empty_mpps,
                    c.empty_ns,
                    c.ratio,
                    c.extra_ns,
                    c.ratios
                        .iter()
                        .map(|x| format!("{x:.2}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            println!(
                "   ({} rounds of {:.1} s runs, empty program and xdpgate alternating (ABBA); medians; ratio: median of the rounds' ratios; \
                 the generator, both veth hops and the drop at b are in both numbers)",
                r.rounds, r.secs
            );
            r.target.print("   ");
        }
        (None, Some(e)) => println!("   not measured: {e}"),
        _ => {}
    }
}

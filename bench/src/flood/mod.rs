//! Part 6: the flood benchmark (issue 15). Legitimate TCP transactions
//! through the gate while a SYN flood and a UDP flood from random sources
//! (live frames) run at the rig's maximum; no protection, xdpgate and
//! nftables side by side in one run. Then the per-packet cost of the limit
//! action and of the SYN-cookie path (`cost.rs`).
//!
//! Rig (`rig.rs`): namespaces `c` (client), `s` (server and gate) and `a`
//! (attacker); `c` and `a` reach `s` over veth pairs of their own, so the
//! legitimate path is the same in every configuration and the flood enters
//! the gate on its own interface. The legitimate loop (`txn.rs`): 16 client
//! threads, a new connection per transaction, 64-byte request, 64-byte
//! response, from 64 source addresses in 64 /24s (10.200.128.0/18). The flood (`attack.rs`): one
//! thread pinned to CPU 1 alternating calls of 50,000 SYNs to the server's
//! port and 50,000 UDP datagrams to port 53, each from a random source in
//! 10.200.64.0/18, with `BPF_F_TEST_XDP_LIVE_FRAMES` as fast as they go.
//!
//! Configurations (`protect.rs`), each a phase (`measure.rs`): `no-attack`
//! (baseline), `no-protection` (flood, nothing loaded), `xdpgate` (the
//! daemon on both of the gate's veth ends: a syncookie rule on the server
//! port, a per-/24 UDP limit, default deny; `tcp_syncookies = 2` in `s`),
//! `nftables` (netdev ingress per-/24 `limit` on UDP and default drop on
//! both ends, `synproxy` on the server port in an inet table), and
//! `xdp-drop` (the empty `XDP_DROP` program on the attack interface only:
//! the rig's ceiling, the flood dropped as cheaply as XDP can). Rounds run
//! the five in order, then reversed (ABBA); a configuration's kept fraction is
//! the median over the rounds of its TPS / that round's no-attack TPS.

mod attack;
mod cost;
mod measure;
mod protect;
mod rig;
mod txn;

use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use anyhow::Context as _;
use serde::Serialize;

use crate::report::{Section, Target};
use attack::Generators;
pub(crate) use cost::CostReport;
pub(crate) use measure::Phase;
use protect::{Active, Protection};
use rig::{ATT_NET, Rig};
use txn::Load;

/// The server's address on the legitimate path.
pub(super) const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 244, 1);
/// The server's TCP port.
pub(super) const PORT: u16 = 8080;
/// The UDP flood's port (the profile's rate-limited UDP service).
pub(super) const UDP_PORT: u16 = 53;
/// The attack sources: this /18, random host bits.
pub(super) const ATTACK_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 64, 0);
/// The legitimate client's source addresses, one per /24.
pub(super) const CLIENT_PREFIXES: usize = 64;
/// The unmeasured flood before the first round.
const WARMUP_FLOOD: Duration = Duration::from_secs(3);
/// The target: xdpgate keeps at least this fraction of the no-attack TPS.
const TARGET_KEPT: f64 = 0.9;

/// One configuration over the rounds.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct FloodConfig {
    /// Name.
    pub config: &'static str,
    /// Median TPS.
    pub tps: f64,
    /// Median over the rounds of TPS / the round's no-attack TPS.
    pub kept: f64,
    /// Median flood frames handled per second, millions.
    pub handled_mpps: f64,
    /// Median offered, millions per second.
    pub offered_mpps: f64,
    /// Median CPUs busy (whole machine).
    pub busy_cpus: f64,
    /// Median busy fraction of the flood's CPU.
    pub flood_cpu_busy: f64,
    /// Median CPU time of the generator thread, seconds per second.
    pub generator_cpu: f64,
    /// Median flood frames handled per second per busy second of the
    /// flood's CPU, millions.
    pub handled_mpps_per_cpu: f64,
    /// Failed transactions, all rounds.
    pub failed: u64,
}

/// Part 6's results.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct FloodReport {
    /// Seconds per window.
    pub secs: f64,
    /// Rounds.
    pub rounds: usize,
    /// The nftables ruleset used.
    pub nft_ruleset: String,
    /// Every phase.
    pub phases: Vec<Phase>,
    /// Per configuration.
    pub configs: Vec<FloodConfig>,
    /// Phases that could not be measured, with the reason.
    pub failed: Vec<String>,
    /// Per-packet costs (6b).
    pub cost: Section<CostReport>,
    /// Wall time of this part, seconds.
    pub elapsed_s: f64,
    /// xdpgate keeps >= 90% of the no-attack TPS.
    pub target: Target,
}

const CONFIGS: [(&str, Protection, bool); 5] = [
    ("no-attack", Protection::None, false),
    ("no-protection", Protection::None, true),
    ("xdpgate", Protection::Xdpgate, true),
    ("nftables", Protection::Nftables, true),
    ("xdp-drop", Protection::XdpDrop, true),
];

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs part 6: `rounds` rounds of `secs`-second windows, then the costs
/// with `repeat` repetitions and `syn_calls` single SYN runs.
pub(crate) fn run(
    secs: f64,
    rounds: usize,
    repeat: u32,
    syn_calls: usize,
) -> anyhow::Result<FloodReport> {
    let started = std::time::Instant::now();
    let rig = Rig::new().context("building the flood rig")?;
    let dst = Ipv4Addr::new(ATT_NET[0], ATT_NET[1], ATT_NET[2], 1);
    let syn = attack::syn_frame(&rig, ATTACK_V4, dst, PORT);
    let udp = attack::udp_frame(&rig, ATTACK_V4, dst, UDP_PORT);
    let gens = Arc::new(Generators::new(syn, udp)?);
    // Bounded: every phase (about secs + 3 s with the daemon's start) and
    // the costs, with a wide margin.
    let max = Duration::from_secs_f64((secs + 20.0) * (rounds * CONFIGS.len()) as f64 + 120.0);
    let load = Load::start(rig.s.path(), &rig.c.path(), max)?;
    // An unmeasured flood first, nothing loaded: the first flood of a run
    // is about 20 times slower than the next ones (measured: 0.03 against
    // 0.7 Mpps), while the stack builds its per-source state.
    let warm = attack::Flood::start(&rig, gens.clone(), WARMUP_FLOOD);
    std::thread::sleep(WARMUP_FLOOD);
    warm.stop().context("the warm-up flood")?;
    std::thread::sleep(Duration::from_millis(500));
    let mut phases = Vec::new();
    let mut cost = None;
    let mut failed = Vec::new();
    for round in 0..rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..CONFIGS.len()).collect()
        } else {
            (0..CONFIGS.len()).rev().collect()
        };
        for i in order {
            let name = CONFIGS[i].0;
            let (ph, active): (Phase, Active) =
                match measure::phase(&rig, &load, &gens, round, CONFIGS[i], secs) {
                    Ok(x) => x,
                    Err(e) => {
                        let msg = format!("round {round} {name}: {e:#}");
                        eprintln!("bench: flood {msg}");
                        failed.push(msg);
                        continue;
                    }
                };
            phases.push(ph);
            if active.daemon().is_some() && round + 1 == rounds {
                cost = Some(cost::run(&rig, repeat, syn_calls));
            }
            active.remove(&rig)?;
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    load.stop();
    let nft_ruleset = protect::nft_ruleset(&rig);
    drop(rig);

    let mut configs = Vec::new();
    for (name, _, _) in CONFIGS {
        let of = |f: fn(&Phase) -> f64| -> f64 {
            let mut v: Vec<f64> = phases.iter().filter(|p| p.config == name).map(f).collect();
            median(&mut v)
        };
        let mut kept: Vec<f64> = (0..rounds)
            .filter_map(|r| {
                let base = phases
                    .iter()
                    .find(|p| p.round == r && p.config == "no-attack")?;
                let x = phases.iter().find(|p| p.round == r && p.config == name)?;
                Some(x.tps / base.tps.max(1.0))
            })
            .collect();
        configs.push(FloodConfig {
            config: name,
            tps: of(|p| p.tps),
            kept: median(&mut kept),
            handled_mpps: of(|p| p.handled_mpps),
            offered_mpps: of(|p| p.offered_mpps),
            busy_cpus: of(|p| p.busy_cpus),
            flood_cpu_busy: of(|p| p.busy_per_cpu.get(crate::live::CPU).copied().unwrap_or(0.0)),
            generator_cpu: of(|p| p.generator_cpu),
            handled_mpps_per_cpu: of(|p| p.handled_mpps_per_cpu),
            failed: phases
                .iter()
                .filter(|p| p.config == name)
                .map(|p| p.failed)
                .sum(),
        });
    }
    let get = |n: &str| configs.iter().find(|c| c.config == n);
    let target = match (get("xdpgate"), get("no-protection"), get("nftables")) {
        (Some(x), Some(b), Some(n)) => Target {
            goal: format!(
                "legitimate TPS under a SYN + UDP flood with xdpgate >= {:.0}% of the no-attack TPS",
                TARGET_KEPT * 100.0
            ),
            measured: format!(
                "xdpgate {:.1}% ({:.0} of {:.0} TPS), no protection {:.1}%, nftables {:.1}%",
                x.kept * 100.0,
                x.tps,
                get("no-attack").map_or(0.0, |a| a.tps),
                b.kept * 100.0,
                n.kept * 100.0
            ),
            met: Some(x.kept >= TARGET_KEPT),
        },
        _ => Target {
            goal: "legitimate TPS under a flood with xdpgate >= 90% of the no-attack TPS".into(),
            measured: "not measured".into(),
            met: None,
        },
    };
    Ok(FloodReport {
        secs,
        rounds,
        nft_ruleset,
        phases,
        configs,
        failed,
        cost: Section::from(Some(cost.unwrap_or_else(|| {
            Err(anyhow::anyhow!("xdpgate did not run in the last round"))
        }))),
        elapsed_s: started.elapsed().as_secs_f64(),
        target,
    })
}

/// Prints part 6.
pub(crate) fn print(r: &Section<FloodReport>) {
    println!(
        "6. Flood: legitimate TCP transactions (new connection each, 64 B each way) under a SYN + UDP flood from random sources (live frames)"
    );
    let r = match (&r.result, &r.error) {
        (Some(r), _) => r,
        (None, Some(e)) => {
            println!("   not measured: {e}");
            return;
        }
        _ => return,
    };
    println!(
        "   {:<14} {:>8} {:>7} | {:>8} {:>8} {:>5} {:>5} {:>5} {:>9} | {:>6}",
        "config", "TPS", "kept", "offered", "handled", "CPUs", "CPU1", "gen", "Mpps/CPU1", "failed"
    );
    for c in &r.configs {
        println!(
            "   {:<14} {:>8.0} {:>6.1}% | {:>8.2} {:>8.2} {:>5.2} {:>5.2} {:>5.2} {:>9.2} | {:>6}",
            c.config,
            c.tps,
            c.kept * 100.0,
            c.offered_mpps,
            c.handled_mpps,
            c.busy_cpus,
            c.flood_cpu_busy,
            c.generator_cpu,
            c.handled_mpps_per_cpu,
            c.failed
        );
    }
    println!(
        "   ({} rounds of {:.1} s windows, ABBA order; medians; kept: median of TPS / the round's no-attack TPS; \
         offered/handled: flood Mpps injected / received by the gate's attack interface; \
         CPUs: busy over the window, whole machine; CPU1: the flood's CPU (generator and the gate's receive path), busy fraction; \
         gen: the generator thread's own CPU time; Mpps/CPU1: handled per busy second of CPU1)",
        r.rounds, r.secs
    );
    for f in &r.failed {
        println!("   FAILED: {f}");
    }
    r.target.print("   ");
    println!(
        "   6b. Per-packet cost, BPF_PROG_TEST_RUN of the daemon's program, ratio to the empty XDP program"
    );
    match (&r.cost.result, &r.cost.error) {
        (Some(c), _) => {
            for row in &c.rows {
                println!(
                    "   {:<12} {:>7.1} ns {:>7.1} ns {:>6.2}x  repeat {:<8} {}",
                    row.name, row.ns, row.empty_ns, row.ratio, row.repeat, row.what
                );
            }
        }
        (None, Some(e)) => println!("   not measured: {e}"),
        _ => {}
    }
    println!("   (part 6 took {:.0} s)", r.elapsed_s);
}

//! Part 1: nanoseconds per packet with `BPF_PROG_TEST_RUN`, per packet class,
//! prefix count and rule count, beside an empty XDP program measured in the
//! same namespace with the same repeat count.
use std::{
    collections::BTreeMap,
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;
use xdpgate::{acl::AclController, datapath::Datapath};
use xdpgate_model::{
    acl::{compile::compile, reference::PacketInfo},
    iface::Malformed,
};
use xdpgate_tests::lab::Netns;

use crate::{
    bpf, memory,
    workload::{self, Class},
};

/// Rounds per measurement; the median is reported.
pub(crate) const ROUNDS: usize = 3;

/// One measurement: the median of [`ROUNDS`] kernel-reported averages.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Sample {
    /// Median ns per packet.
    pub ns: f64,
    /// Every round's ns per packet.
    pub rounds: Vec<f64>,
}

/// Runs `f` (which returns the kernel's average per repetition) [`ROUNDS`]
/// times; returns the median.
pub(crate) fn sample(mut f: impl FnMut() -> anyhow::Result<Duration>) -> anyhow::Result<Sample> {
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        rounds.push(f()?.as_nanos() as f64);
    }
    let mut sorted = rounds.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(Sample {
        ns: sorted[sorted.len() / 2],
        rounds,
    })
}

/// One installed rule set and its per-class results.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Config {
    /// Prefixes per family in the deny set.
    pub prefixes: usize,
    /// Rules (filler rules plus the hit rule).
    pub rules: usize,
    /// Address classes the compiler made.
    pub address_classes: usize,
    /// Time to build the state in the benchmark (random generation).
    pub generate_ms: f64,
    /// `AclController::install`: validate and compile.
    pub compile_ms: f64,
    /// `AclController::install`: write the tables, switch, wait for the old generation.
    pub install_ms: f64,
    /// Rule groups of the phased tables (`None`: the generation walks the
    /// rule bitmaps), from a separate compile of the same state.
    pub phase_groups: Option<usize>,
    /// `u16` cells of the phased tables (2 bytes each, kernel memory of one
    /// generation's tables in use).
    pub phase_cells: usize,
    /// Per class: the measurement and its ratio to the empty program, with the
    /// decision cache on (the daemon's default: every repetition after the
    /// first is a cache hit).
    pub classes: BTreeMap<String, ClassResult>,
    /// The same with the decision cache off: every repetition is resolved
    /// by the phased tables (or walks the rule bitmaps when the generation
    /// has none), the cost of a packet whose class combination is not cached.
    pub walk: BTreeMap<String, ClassResult>,
}

/// One class under one configuration.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ClassResult {
    /// ns per packet (median of the rounds).
    pub ns: f64,
    /// Every round.
    pub rounds: Vec<f64>,
    /// The empty program on the same frame, measured in the same rounds (each
    /// round runs the empty program, then the program under test).
    pub empty_ns: f64,
    /// The empty program's rounds.
    pub empty_rounds: Vec<f64>,
    /// Median over the rounds of (ns / empty ns) of the same round.
    pub ratio: f64,
    /// The XDP action returned.
    pub action: u32,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// [`ROUNDS`] rounds of: the empty program on `frame`, then `test` (which
/// returns the kernel's average per repetition and the action). Measuring the
/// two side by side keeps the ratio meaningful on a shared, noisy machine.
pub(crate) fn side_by_side(
    empty: &OwnedFd,
    frame: &[u8],
    repeat: u32,
    mut test: impl FnMut() -> anyhow::Result<(Duration, u32)>,
) -> anyhow::Result<ClassResult> {
    let (mut rounds, mut empty_rounds, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut action = 0;
    for _ in 0..ROUNDS {
        let e = bpf::test_run(empty, frame, repeat)?;
        if e.retval != bpf::XDP_PASS {
            bail!("the empty program returned {}", e.retval);
        }
        let (d, a) = test()?;
        action = a;
        let (e, d) = (e.duration.as_nanos() as f64, d.as_nanos() as f64);
        empty_rounds.push(e);
        rounds.push(d);
        ratios.push(d / e.max(1.0));
    }
    Ok(ClassResult {
        ns: median(&rounds),
        rounds,
        empty_ns: median(&empty_rounds),
        empty_rounds,
        ratio: median(&ratios),
        action,
    })
}

/// Part 1's results.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TestRunReport {
    /// Repetitions per test run.
    pub repeat: u32,
    /// The empty XDP program (`r0 = XDP_PASS; exit`), per class frame, measured
    /// once at the start (every result below carries its own side-by-side
    /// measurement of it, which its ratio uses).
    pub empty: BTreeMap<String, Sample>,
    /// The empty program's median over the classes at the start.
    pub empty_ns: f64,
    /// The packet classes.
    pub classes: Vec<Class>,
    /// Words of the rule bitmaps the classifier visits per class, per rule count
    /// (computed from the compiled tables with the datapath's algorithm).
    pub words_visited: BTreeMap<usize, BTreeMap<String, usize>>,
    /// Every configuration.
    pub configs: Vec<Config>,
    /// Kernel memory of the datapath's maps, right after loading (the
    /// default capacities).
    pub kernel_memory: memory::MapMemory,
}

fn slots() -> BTreeMap<String, u32> {
    [("lo".to_string(), 1)].into()
}

fn packet_info(c: &Class) -> PacketInfo {
    let dst = if c.src.is_ipv4() {
        workload::DST_V4.into()
    } else {
        workload::DST_V6.into()
    };
    PacketInfo {
        src: c.src,
        dst,
        proto: 6,
        later_fragment: false,
        ports: Some((workload::SPORT, workload::DPORT)),
        icmp: None,
    }
}

/// How many 64-rule words of the rule bitmaps the datapath's walk visits for
/// `pkt` (a TCP packet on slot 1): the words whose six summary bits are all
/// set, up to and including the one that decides. A software replica of the
/// classifier's loop over the compiled tables.
fn words_visited(img: &xdpgate_model::acl::compile::Image, pkt: &PacketInfo) -> usize {
    let (sp, dp) = pkt.ports.unwrap_or_default();
    let bms = [
        &img.iface_bm[1],
        &img.proto_bm[pkt.proto as usize],
        &img.src_bm[img.addr_class(pkt.src) as usize],
        &img.dst_bm[img.addr_class(pkt.dst) as usize],
        &img.sport_bm[img.sport_class[sp as usize] as usize],
        &img.dport_bm[img.dport_class[dp as usize] as usize],
    ];
    let words = bms[0].words.len();
    let mut visited = 0;
    for s in 0..bms[0].summary.len() {
        let mut m = bms.iter().fold(u64::MAX, |acc, b| acc & b.summary[s]);
        while m != 0 {
            let w = s * 64 + m.trailing_zeros() as usize;
            m &= m - 1;
            if w >= words {
                break;
            }
            visited += 1;
            if bms.iter().fold(u64::MAX, |acc, b| acc & b.words[w]) != 0 {
                return visited;
            }
        }
    }
    visited
}

/// Runs part 1 inside `ns`.
pub(crate) fn run(
    ns: &Netns,
    repeat: u32,
    prefix_counts: &[usize],
    rule_counts: &[usize],
) -> anyhow::Result<TestRunReport> {
    let classes = workload::classes();
    ns.run(|| -> anyhow::Result<TestRunReport> {
        // The empty program, on every class's frame.
        let empty_fd = bpf::load_constant_xdp(bpf::XDP_PASS, "bench_empty")
            .context("loading the empty XDP program")?;
        let mut empty = BTreeMap::new();
        for c in &classes {
            let s = sample(|| {
                let r = bpf::test_run(&empty_fd, &c.frame, repeat)?;
                if r.retval != bpf::XDP_PASS {
                    bail!("empty program returned {}", r.retval);
                }
                Ok(r.duration)
            })?;
            empty.insert(c.name.to_string(), s);
        }
        let mut all: Vec<f64> = empty.values().map(|s| s.ns).collect();
        all.sort_by(f64::total_cmp);
        let empty_ns = all[all.len() / 2];
        eprintln!("bench: empty XDP program: {empty_ns:.1} ns/packet (median over classes)");

        // Words visited per rule count (from a small set: independent of the prefixes).
        let mut words = BTreeMap::new();
        for &r in rule_counts {
            let st = workload::state(workload::prefix_set(1000, 11), r, 22);
            let img = compile(&st, &slots()).map_err(|e| anyhow::anyhow!("compile: {e:?}"))?;
            let m: BTreeMap<String, usize> = classes
                .iter()
                .map(|c| (c.name.to_string(), words_visited(&img, &packet_info(c))))
                .collect();
            words.insert(r, m);
        }

        let mut dp = Datapath::load().context("loading xdpgate")?;
        let kernel_memory = memory::of_this_process().context("reading the maps' memlock")?;
        eprintln!(
            "bench: kernel memory of the datapath's maps: {:.1} MiB in {} maps",
            kernel_memory.total as f64 / memory::MIB,
            kernel_memory.maps.len()
        );
        dp.register(1, 1, Malformed::Drop)
            .context("registering lo")?;
        let mut ctl = AclController::new(slots());
        let mut configs = Vec::new();
        for &p in prefix_counts {
            let t = Instant::now();
            let set = workload::prefix_set(p, 0xb5e7 + p as u64);
            let set_ms = t.elapsed().as_secs_f64() * 1e3;
            for &r in rule_counts {
                let t = Instant::now();
                let st = workload::state(set.clone(), r, 0x5eed + r as u64);
                let generate_ms = set_ms + t.elapsed().as_secs_f64() * 1e3;
                eprintln!("bench: installing {p} prefixes per family, {r} rules ...");
                let phases = compile(&st, &slots())
                    .map_err(|e| anyhow::anyhow!("compile: {e:?}"))?
                    .stats()
                    .phases;
                let applied = ctl
                    .install(&mut dp, st)
                    .map_err(|e| anyhow::anyhow!("install {p} prefixes / {r} rules: {e}"))?;
                eprintln!(
                    "bench:   compile {:.0} ms, install {:.0} ms, {} address classes",
                    applied.compile.as_secs_f64() * 1e3,
                    applied.install.as_secs_f64() * 1e3,
                    applied.address_classes
                );
                let mut results = BTreeMap::new();
                let mut walk = BTreeMap::new();
                for (cache, out) in [(true, &mut results), (false, &mut walk)] {
                    dp.set_decision_cache(cache)
                        .context("switching the decision cache")?;
                    for c in &classes {
                        let res = side_by_side(&empty_fd, &c.frame, repeat, || {
                            let o = dp.test_run(&c.frame, repeat)?;
                            Ok((o.duration, o.action))
                        })?;
                        if res.action != c.expect {
                            bail!(
                                "{}: xdpgate returned action {}, expected {} ({p} prefixes, {r} rules, cache {cache})",
                                c.name,
                                res.action,
                                c.expect
                            );
                        }
                        out.insert(c.name.to_string(), res);
                    }
                }
                dp.set_decision_cache(true)
                    .context("switching the decision cache")?;
                configs.push(Config {
                    prefixes: p,
                    rules: r,
                    address_classes: applied.address_classes,
                    generate_ms,
                    compile_ms: applied.compile.as_secs_f64() * 1e3,
                    install_ms: applied.install.as_secs_f64() * 1e3,
                    phase_groups: phases.map(|p| p.0),
                    phase_cells: phases.map_or(0, |p| p.1),
                    classes: results,
                    walk,
                });
            }
        }
        Ok(TestRunReport {
            repeat,
            empty,
            empty_ns,
            classes: classes.clone(),
            words_visited: words,
            configs,
            kernel_memory,
        })
    })
}

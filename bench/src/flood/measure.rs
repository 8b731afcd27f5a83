//! One measured phase: a protection in force, the flood on or off, the
//! legitimate loop's transactions per second, the flood frames the gate's
//! attack interface received per second, and the CPUs busy meanwhile.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;

use crate::live::CPU;

use super::{
    attack::{Flood, Generators},
    protect::{Active, Protection},
    rig::Rig,
    txn::Load,
};

/// Time between applying a configuration (and starting the flood) and the
/// window: every transaction in flight when an XDP program is attached or
/// detached, a table loaded or the flood started can lose a packet, and
/// the 16 clients then wait out a retransmission (1 s) or their time-out
/// (2 s) together (measured: 22 transactions/s in a window that began
/// 0.7 s after the warm-up flood, 20,000 otherwise).
const WARMUP: Duration = Duration::from_millis(2500);
/// Upper bound of one flood (warm-up, window, margin).
const FLOOD_MAX: Duration = Duration::from_secs(30);

/// One phase's numbers.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Phase {
    /// Round (0-based).
    pub round: usize,
    /// `no-attack`, `no-protection`, `xdpgate` or `nftables`.
    pub config: &'static str,
    /// Completed transactions per second.
    pub tps: f64,
    /// Transactions that failed (time-out, reset) in the window.
    pub failed: u64,
    /// Flood frames injected per second (offered), millions.
    pub offered_mpps: f64,
    /// Frames the gate's attack interface received per second (the flood
    /// the gate handled, whatever it did with it), millions.
    pub handled_mpps: f64,
    /// CPUs busy over the window (whole machine, /proc/stat: everything that
    /// ran, including the generator and the legitimate loop).
    pub busy_cpus: f64,
    /// Each CPU's busy fraction over the window (/proc/stat).
    pub busy_per_cpu: Vec<f64>,
    /// The generator thread's own CPU time over the window, seconds per
    /// second (the gate's receive path runs inside it, in softirq).
    pub generator_cpu: f64,
    /// Flood frames handled per second per busy second of the flood's CPU
    /// ([`CPU`], where the generator and the gate's receive path run),
    /// millions.
    pub handled_mpps_per_cpu: f64,
    /// Window, seconds.
    pub secs: f64,
    /// Packets the gate's legitimate-side interface received per second.
    pub legit_rx_pps: f64,
    /// Packets it sent per second.
    pub legit_tx_pps: f64,
    /// xdpgate's limit and SYN-cookie counters over the window (deltas;
    /// xdpgate phases only): cookies_sent, cookie_acks, synacks_limited,
    /// limited, kernel_syns, bad_cookies.
    pub xdpgate: BTreeMap<String, u64>,
    /// The gate namespace's kernel counters over the window (deltas,
    /// non-zero only): SYN cookies, listen queue drops, passive opens.
    pub kernel: BTreeMap<String, u64>,
}

/// The gate namespace's TCP/UDP counters a phase records (deltas).
const KERNEL_COUNTERS: [&str; 10] = [
    "TcpExt.SyncookiesSent",
    "TcpExt.SyncookiesRecv",
    "TcpExt.SyncookiesFailed",
    "TcpExt.ListenOverflows",
    "TcpExt.ListenDrops",
    "TcpExt.TCPReqQFullDrop",
    "TcpExt.TCPReqQFullDoCookies",
    "Tcp.PassiveOpens",
    "Tcp.OutRsts",
    "Udp.NoPorts",
];

/// `/proc/thread-self/net/{netstat,snmp}` of the gate's namespace, as
/// `Group.Name` -> value.
fn kernel_counters(rig: &Rig) -> anyhow::Result<BTreeMap<String, u64>> {
    let text = rig.s.run(|| -> std::io::Result<String> {
        Ok(std::fs::read_to_string("/proc/thread-self/net/netstat")?
            + &std::fs::read_to_string("/proc/thread-self/net/snmp")?)
    })?;
    let mut out = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks_exact(2) {
        let (Some((g, names)), Some((_, values))) =
            (pair[0].split_once(':'), pair[1].split_once(':'))
        else {
            continue;
        };
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            let key = format!("{g}.{n}");
            if KERNEL_COUNTERS.contains(&key.as_str()) {
                out.insert(key, v.parse().unwrap_or(0));
            }
        }
    }
    Ok(out)
}

/// xdpgate's `limits` counters (`xdpgate stats`), when it is in force.
fn xdpgate_counters(active: &Active, rig: &Rig) -> BTreeMap<String, u64> {
    let Some(d) = active.daemon() else {
        return BTreeMap::new();
    };
    let report = d.report(&rig.s);
    report["limits"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// (busy, total) jiffies of every CPU (`cpuN` lines of /proc/stat, in
/// order).
fn cpu_times() -> anyhow::Result<Vec<(u64, u64)>> {
    let s = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let mut out = Vec::new();
    for line in s
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
    {
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|x| x.parse().ok())
            .collect();
        anyhow::ensure!(v.len() == 8, "unexpected /proc/stat line: {line}");
        // user nice system idle iowait irq softirq steal
        let busy = v[0] + v[1] + v[2] + v[5] + v[6];
        out.push((busy, busy + v[3] + v[4] + v[7]));
    }
    Ok(out)
}

/// Busy fraction of each CPU between two [`cpu_times`] readings.
fn busy(c0: &[(u64, u64)], c1: &[(u64, u64)]) -> Vec<f64> {
    c0.iter()
        .zip(c1)
        .map(|(a, b)| (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64)
        .collect()
}

/// Runs one phase of configuration `(config, p, attack)`: applies `p`,
/// starts the flood when `attack`, waits
/// [`WARMUP`], measures `secs`, stops the flood and (unless `keep`)
/// removes the protection; returns it when kept.
pub(super) fn phase(
    rig: &Rig,
    load: &Load,
    gens: &Arc<Generators>,
    round: usize,
    (config, p, attack): (&'static str, Protection, bool),
    secs: f64,
) -> anyhow::Result<(Phase, Active)> {
    let active = Active::apply(rig, p).with_context(|| format!("applying {config}"))?;
    let flood = attack.then(|| Flood::start(rig, gens.clone(), FLOOD_MAX));
    std::thread::sleep(WARMUP);
    let (ok0, f0) = load.snapshot();
    let rx0 = rig.attack_rx()?;
    let leg0 = rig.packets(&rig.s_leg.ifname)?;
    let sent0 = flood.as_ref().map_or(0, Flood::sent);
    let gen0 = flood.as_ref().map_or(0, Flood::cpu_ns);
    let k0 = kernel_counters(rig)?;
    let x0 = xdpgate_counters(&active, rig);
    let c0 = cpu_times()?;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (ok1, f1) = load.snapshot();
    let rx1 = rig.attack_rx()?;
    let leg1 = rig.packets(&rig.s_leg.ifname)?;
    let sent1 = flood.as_ref().map_or(0, Flood::sent);
    let gen1 = flood.as_ref().map_or(0, Flood::cpu_ns);
    let c1 = cpu_times()?;
    let k1 = kernel_counters(rig)?;
    let x1 = xdpgate_counters(&active, rig);
    let s = t.elapsed().as_secs_f64();
    if let Some(f) = flood {
        f.stop().context("the flood")?;
    }
    let per_cpu = busy(&c0, &c1);
    let flood_cpu = per_cpu.get(CPU).copied().unwrap_or(0.0);
    let gen_cpu = gen1.saturating_sub(gen0) as f64 / 1e9 / s;
    let handled = (rx1 - rx0) as f64 / s / 1e6;
    let ph = Phase {
        round,
        config,
        tps: (ok1 - ok0) as f64 / s,
        failed: f1 - f0,
        offered_mpps: (sent1 - sent0) as f64 / s / 1e6,
        handled_mpps: handled,
        busy_cpus: per_cpu.iter().sum(),
        busy_per_cpu: per_cpu,
        generator_cpu: gen_cpu,
        handled_mpps_per_cpu: if flood_cpu > 0.0 {
            handled / flood_cpu
        } else {
            0.0
        },
        secs: s,
        legit_rx_pps: (leg1.0 - leg0.0) as f64 / s,
        legit_tx_pps: (leg1.1 - leg0.1) as f64 / s,
        xdpgate: x1
            .iter()
            .map(|(k, v)| (k.clone(), v.saturating_sub(x0.get(k).copied().unwrap_or(0))))
            .collect(),
        kernel: k1
            .iter()
            .filter_map(|(k, v)| {
                let d = v.saturating_sub(k0.get(k).copied().unwrap_or(0));
                (d > 0).then(|| (k.clone(), d))
            })
            .collect(),
    };
    eprintln!(
        "bench: flood round {round} {config}: {:.0} transactions/s ({} failed), flood offered {:.2} Mpps, handled {:.2} Mpps, CPUs busy {:.2?} (generator thread {:.2})",
        ph.tps, ph.failed, ph.offered_mpps, ph.handled_mpps, ph.busy_per_cpu, ph.generator_cpu
    );
    eprintln!(
        "bench:   legitimate side: {:.0} packets/s in, {:.0} out; kernel counters in the gate's namespace: {:?}; xdpgate: {:?}",
        ph.legit_rx_pps, ph.legit_tx_pps, ph.kernel, ph.xdpgate
    );
    Ok((ph, active))
}

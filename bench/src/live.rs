//! Part 3: live frames on the lab's veth pair, one core.
//!
//! The generator is the XDP program `r0 = XDP_TX; exit`, run with
//! `BPF_PROG_TEST_RUN` and `BPF_F_TEST_XDP_LIVE_FRAMES` from a thread in
//! namespace `b` with `xdp_md.ingress_ifindex` set to b's veth end: the kernel
//! injects the frames as if received there, turns `XDP_TX` into a redirect to
//! that same device, and veth's `ndo_xdp_xmit` puts them on the peer's (a's)
//! receive ring. a's NAPI poll then runs, in softirq on the same CPU, whatever
//! is under test: xdpgate or xdp-filter attached natively to a's end, or
//! (with no XDP program there) the stack up to nftables' netdev ingress hook.
//! The generator thread is pinned to one CPU, so generation and filtering
//! share that core.
//!
//! A drop rate is the filter's own drop counter delta (xdpgate's rule counter,
//! xdp-filter's XDP_DROP statistic; for nftables a counter on the rule) over the
//! wall time of a bounded run. The rig's ceiling is measured the same way with
//! the program `r0 = XDP_DROP; exit` attached natively (counted by the veth's
//! received-packet statistic, which every run also records as a cross-check),
//! before and after xdpgate's runs; [`ceiling_target`] compares xdpgate with
//! the mean of the two.
use std::{
    collections::BTreeMap,
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use serde::Serialize;
use xdpgate::{acl::AclController, datapath::Datapath};
use xdpgate_model::{
    acl::{AclState, PrefixSet},
    iface::{Malformed, XdpMode},
};
use xdpgate_tests::lab::Lab;

use crate::{
    bpf::{self, XdpMd},
    workload,
    xdpfilter::XdpFilter,
};

/// Frames per `BPF_PROG_TEST_RUN` call; each call runs to completion, so this
/// bounds how far a run can overshoot its time.
pub(crate) const CHUNK: u32 = 250_000;
/// Frames per live-frames batch (the kernel's default is 64).
pub(crate) const BATCH: u32 = 64;
/// CPU the generator (and so the receive path) runs on.
pub(crate) const CPU: usize = 1;

/// One live run.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LiveResult {
    /// What was under test.
    pub target: String,
    /// `ipv4` or `ipv6` frames.
    pub family: &'static str,
    /// Entries in the deny set (per family).
    pub entries: usize,
    /// Million frames per second the filter dropped (its own counter).
    pub mpps: f64,
    /// Frames the generator injected per second (offered load), millions.
    pub offered_mpps: f64,
    /// Frames dropped over the run.
    pub dropped: u64,
    /// Frames a's veth end received over the run (`ip -s link`), a cross-check.
    pub received: u64,
    /// Wall time of the run, seconds.
    pub secs: f64,
}

/// Part 3's results.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LiveReport {
    /// Frame length (bytes, without FCS).
    pub frame_len: usize,
    /// Seconds per run.
    pub secs: f64,
    /// Every run.
    pub runs: Vec<LiveResult>,
    /// Runs that could not be made, with the reason.
    pub failed: Vec<String>,
}

struct Generator {
    fd: OwnedFd,
    ingress: u32,
}

impl Generator {
    /// Injects frames for about `secs` (bounded by time and by count); returns
    /// frames injected and the wall time.
    fn run(&self, lab: &Lab, frame: &[u8], secs: f64) -> anyhow::Result<(u64, Duration)> {
        let max_calls = 400; // 100M frames at most
        lab.b.run(|| -> anyhow::Result<(u64, Duration)> {
            bpf::pin_to_cpu(CPU).context("pinning the generator")?;
            // The kernel wants data_end == the frame's length in a test-run context.
            let ctx = XdpMd {
                data_end: frame.len() as u32,
                ingress_ifindex: self.ingress,
                ..Default::default()
            };
            let t = Instant::now();
            let mut sent = 0u64;
            let mut calls = 0;
            while t.elapsed().as_secs_f64() < secs && calls < max_calls {
                bpf::live_frames(&self.fd, frame, CHUNK, BATCH, ctx)
                    .context("BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES")?;
                sent += u64::from(CHUNK);
                calls += 1;
            }
            Ok((sent, t.elapsed()))
        })
    }
}

/// What one measured run saw.
struct Measured {
    mpps: f64,
    offered_mpps: f64,
    dropped: u64,
    received: u64,
    secs: f64,
}

/// Warm up, then one measured run; `dropped` reads the filter's drop counter.
fn measure(
    lab: &Lab,
    gen_: &Generator,
    frame: &[u8],
    secs: f64,
    dropped: &dyn Fn() -> anyhow::Result<u64>,
) -> anyhow::Result<Measured> {
    gen_.run(lab, frame, 0.3)?;
    let rx0 = rx_packets(lab)?;
    let before = dropped()?;
    let (sent, wall) = gen_.run(lab, frame, secs)?;
    let after = dropped()?;
    let rx = rx_packets(lab)?.saturating_sub(rx0);
    let d = after.saturating_sub(before);
    let s = wall.as_secs_f64();
    if d == 0 {
        bail!("nothing was dropped ({sent} frames injected): the frames did not reach the filter");
    }
    Ok(Measured {
        mpps: d as f64 / s / 1e6,
        offered_mpps: sent as f64 / s / 1e6,
        dropped: d,
        received: rx,
        secs: s,
    })
}

fn frames(lab: &Lab) -> [(&'static str, Vec<u8>); 2] {
    [
        (
            "ipv4",
            workload::live_frame(lab.b_end.mac, lab.a_end.mac, false),
        ),
        (
            "ipv6",
            workload::live_frame(lab.b_end.mac, lab.a_end.mac, true),
        ),
    ]
}

fn record(
    out: &mut LiveReport,
    target: &str,
    family: &'static str,
    entries: usize,
    r: anyhow::Result<Measured>,
) {
    match r {
        Ok(m) => {
            eprintln!(
                "bench: live {target} {family} ({entries} entries): {:.2} Mpps dropped (offered {:.2}, received {})",
                m.mpps, m.offered_mpps, m.received
            );
            out.runs.push(LiveResult {
                target: target.into(),
                family,
                entries,
                mpps: m.mpps,
                offered_mpps: m.offered_mpps,
                dropped: m.dropped,
                received: m.received,
                secs: m.secs,
            });
        }
        Err(e) => {
            let msg = format!("{target} {family} ({entries} entries): {e:#}");
            eprintln!("bench: live run failed: {msg}");
            out.failed.push(msg);
        }
    }
}

fn xdpgate_runs(
    lab: &Lab,
    gen_: &Generator,
    secs: f64,
    out: &mut LiveReport,
) -> anyhow::Result<()> {
    let slot_name = lab.a_end.ifname.clone();
    let ifindex = lab.a_end.ifindex;
    lab.a.run(|| -> anyhow::Result<()> {
        let mut dp = Datapath::load().context("loading xdpgate")?;
        dp.register(ifindex, 1, Malformed::Drop)?;
        let mut ctl = AclController::new(BTreeMap::from([(slot_name.clone(), 1)]));
        let mut one = PrefixSet::default();
        one.v4.insert("192.0.2.0/24".parse()?);
        one.v6.insert("2001:db8:1::/48".parse()?);
        let variants = [
            (1usize, one),
            (100_000, workload::prefix_set(100_000, 0xb5e7 + 100_000)),
        ];
        dp.attach(&slot_name, ifindex, XdpMode::Native)
            .context("attaching xdpgate natively to the veth end")?;
        for (entries, set) in variants {
            let st: AclState = workload::state(set, 1, 0);
            ctl.install(&mut dp, st)
                .map_err(|e| anyhow!("installing the live rule set: {e}"))?;
            let counter = || -> anyhow::Result<u64> {
                let c = ctl.rule_counters(&dp)?;
                c.iter()
                    .find(|r| r.rule.id == workload::HIT_RULE_ID)
                    .map(|r| r.packets)
                    .ok_or_else(|| anyhow!("no counter for the deny rule"))
            };
            for (family, frame) in frames(lab) {
                let r = measure(lab, gen_, &frame, secs, &counter);
                record(out, "xdpgate", family, entries, r);
            }
        }
        dp.shutdown()?;
        Ok(())
    })
}

fn xdp_filter_runs(
    lab: &Lab,
    gen_: &Generator,
    secs: f64,
    out: &mut LiveReport,
) -> anyhow::Result<()> {
    let mut xf = XdpFilter::load(&lab.a, &lab.a_end.ifname)?;
    xf.deny_src(workload::HIT_V4.into())?;
    xf.deny_src(workload::HIT_V6.into())?;
    let counter = || xf.drops();
    for (family, frame) in frames(lab) {
        let r = measure(lab, gen_, &frame, secs, &counter);
        record(out, "xdp-filter", family, 1, r);
    }
    Ok(())
}

/// Enables GRO on `ifname` of the calling thread's namespace (SIOCETHTOOL,
/// ETHTOOL_SGRO). A veth without an XDP program accepts `ndo_xdp_xmit` frames
/// from its peer only with GRO (NAPI) on.
pub(crate) fn enable_gro(ifname: &str) -> std::io::Result<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct Ifreq {
        name: [u8; 16],
        data: *mut libc::c_void,
        _pad: [u8; 16],
    }
    const ETHTOOL_SGRO: u32 = 0x2c;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let mut v = EthtoolValue {
        cmd: ETHTOOL_SGRO,
        data: 1,
    };
    let mut req = Ifreq {
        name: [0; 16],
        data: (&raw mut v).cast::<libc::c_void>(),
        _pad: [0; 16],
    };
    for (d, s) in req.name.iter_mut().zip(ifname.bytes().take(15)) {
        *d = s;
    }
    // SAFETY: a plain datagram socket, closed below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if sock < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCETHTOOL with a valid ifreq whose data points at `v`.
    let rc = unsafe { libc::ioctl(sock, SIOCETHTOOL, &mut req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(sock) };
    if rc != 0 { Err(err) } else { Ok(()) }
}

fn nft_runs(lab: &Lab, gen_: &Generator, secs: f64, out: &mut LiveReport) -> anyhow::Result<()> {
    let ifname = lab.a_end.ifname.clone();
    lab.a
        .run(|| enable_gro(&ifname))
        .with_context(|| format!("enabling GRO on {ifname}"))?;
    let big = workload::prefix_set(100_000, 0xb5e7 + 100_000);
    let one = {
        let mut s = PrefixSet::default();
        s.v4.insert("192.0.2.0/24".parse()?);
        s.v6.insert("2001:db8:1::/48".parse()?);
        s
    };
    for (entries, set) in [(1usize, one), (100_000, big)] {
        let v4: Vec<String> = set.v4.iter().map(ToString::to_string).collect();
        let v6: Vec<String> = set.v6.iter().map(ToString::to_string).collect();
        let ruleset = format!(
            "table netdev xgbench {{\n\
             set s {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {} }} }}\n\
             set s6 {{ type ipv6_addr; flags interval; auto-merge; elements = {{ {} }} }}\n\
             chain c {{ type filter hook ingress device \"{ifname}\" priority 0; \
             ip saddr @s counter drop; ip6 saddr @s6 counter drop; }}\n}}\n",
            v4.join(", "),
            v6.join(", ")
        );
        let path =
            std::env::temp_dir().join(format!("xdpgate-bench-nft-{}.nft", std::process::id()));
        std::fs::write(&path, ruleset)?;
        let t = Instant::now();
        let loaded = lab.a.exec("nft", &["-f", &path.display().to_string()]);
        let _ = std::fs::remove_file(&path);
        loaded.context("nft -f")?;
        eprintln!(
            "bench: nft: loaded {entries}+{entries} set entries in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let counter = || -> anyhow::Result<u64> {
            let o = lab
                .a
                .exec("nft", &["-j", "list", "table", "netdev", "xgbench"])?;
            let v: serde_json::Value = serde_json::from_str(&o)?;
            let mut total = 0;
            for item in v["nftables"].as_array().into_iter().flatten() {
                for e in item["rule"]["expr"].as_array().into_iter().flatten() {
                    total += e["counter"]["packets"].as_u64().unwrap_or(0);
                }
            }
            Ok(total)
        };
        for (family, frame) in frames(lab) {
            let r = measure(lab, gen_, &frame, secs, &counter);
            record(out, "nftables", family, entries, r);
        }
        lab.a
            .exec("nft", &["delete", "table", "netdev", "xgbench"])?;
    }
    Ok(())
}

type Part = fn(&Lab, &Generator, f64, &mut LiveReport) -> anyhow::Result<()>;

/// Packets a's veth end received (`ip -s link`): every frame its receive ring
/// delivered, whatever XDP or the stack then did with it.
fn rx_packets(lab: &Lab) -> anyhow::Result<u64> {
    let o = lab.a.exec(
        "ip",
        &["-j", "-s", "link", "show", "dev", &lab.a_end.ifname],
    )?;
    let v: serde_json::Value = serde_json::from_str(&o)?;
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .ok_or_else(|| anyhow!("no rx packet count in `ip -j -s link`: {o}"))
}

/// The ceiling of this rig: the XDP program `r0 = XDP_DROP; exit` attached
/// natively (it has no counter: the veth's received-packet count is used).
fn ceiling_runs(
    lab: &Lab,
    gen_: &Generator,
    secs: f64,
    out: &mut LiveReport,
) -> anyhow::Result<()> {
    let prog = bpf::load_constant_xdp(bpf::XDP_DROP, "bench_drop")?;
    let ifindex = lab.a_end.ifindex;
    let link = lab
        .a
        .run(|| bpf::attach_native(&prog, ifindex))
        .context("attaching the empty XDP_DROP program natively")?;
    let counter = || rx_packets(lab);
    for (family, frame) in frames(lab) {
        let r = measure(lab, gen_, &frame, secs, &counter);
        record(out, "xdp-drop", family, 0, r);
    }
    drop(link);
    Ok(())
}

/// Runs part 3 (nftables only with `with_nft`).
pub(crate) fn run(
    lab: &Lab,
    secs: f64,
    with_xdp_filter: bool,
    with_nft: bool,
) -> anyhow::Result<LiveReport> {
    let fd = bpf::load_constant_xdp(bpf::XDP_TX, "bench_gen").context("loading the generator")?;
    let gen_ = Generator {
        fd,
        ingress: lab.b_end.ifindex,
    };
    let mut out = LiveReport {
        frame_len: frames(lab)[0].1.len(),
        secs,
        runs: Vec::new(),
        failed: Vec::new(),
    };
    // The ceiling before and after xdpgate, so that drift during xdpgate's
    // runs shows in both sides of the ratio.
    let parts: [(&str, Part); 5] = [
        ("xdp-drop", ceiling_runs),
        ("xdpgate", xdpgate_runs),
        ("xdp-drop", ceiling_runs),
        ("xdp-filter", xdp_filter_runs),
        ("nftables", nft_runs),
    ];
    for (name, f) in parts {
        if (name == "xdp-filter" && !with_xdp_filter) || (name == "nftables" && !with_nft) {
            continue;
        }
        if let Err(e) = f(lab, &gen_, secs, &mut out) {
            let msg = format!("{name}: {e:#}");
            eprintln!("bench: live {msg}");
            out.failed.push(msg);
        }
    }
    Ok(out)
}

/// The fast-path target as evaluated (`report` lists it with the others;
/// this module does not import `report`, which imports it).
pub(crate) struct CeilingTarget {
    /// The target as stated.
    pub goal: String,
    /// What was measured.
    pub measured: String,
    /// Whether it was met (`None`: not every run was made).
    pub met: Option<bool>,
}

/// The fast-path target's fraction of the rig's ceiling.
pub(crate) const CEILING_FRACTION: f64 = 0.9;

/// The fast-path target: xdpgate's drop rate with the small rule set (deny
/// `src @bench`, 1 and 100,000 prefixes per family) at least
/// [`CEILING_FRACTION`] of the empty `XDP_DROP` program's on the same rig, in
/// this run (the mean of its runs before and after xdpgate's), per family.
pub(crate) fn ceiling_target(l: &LiveReport) -> CeilingTarget {
    let mean = |target: &str, family: &str, entries: usize| {
        let v: Vec<f64> = l
            .runs
            .iter()
            .filter(|r| r.target == target && r.family == family && r.entries == entries)
            .map(|r| r.mpps)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let mut measured = Vec::new();
    let mut met = Some(true);
    for family in ["ipv4", "ipv6"] {
        for entries in [1, 100_000] {
            match (
                mean("xdpgate", family, entries),
                mean("xdp-drop", family, 0),
            ) {
                (Some(a), Some(c)) => {
                    measured.push(format!(
                        "{family} {entries}: {a:.2} / {c:.2} Mpps = {:.3} (+{:.1} ns/frame)",
                        a / c,
                        1e3 / a - 1e3 / c
                    ));
                    met = met.map(|m| m && a / c >= CEILING_FRACTION);
                }
                _ => {
                    measured.push(format!("{family} {entries}: not measured"));
                    met = None;
                }
            }
        }
    }
    CeilingTarget {
        goal: format!(
            "live drop rate >= {CEILING_FRACTION} of the rig's ceiling (xdpgate Mpps / empty XDP_DROP program Mpps, same run; deny rule src @bench with 1 and 100,000 prefixes per family)"
        ),
        measured: measured.join("; "),
        met,
    }
}

/// Prints part 3 alone (`--only live`): every run, then the fast-path target.
pub(crate) fn print(l: &LiveReport) {
    println!("3. Live frames on a veth pair, one core: Mpps dropped");
    println!(
        "   {:<12} {:>8} {:>6} {:>9} {:>9}",
        "target", "entries", "family", "dropped", "offered"
    );
    for r in &l.runs {
        println!(
            "   {:<12} {:>8} {:>6} {:>9.2} {:>9.2}",
            r.target, r.entries, r.family, r.mpps, r.offered_mpps
        );
    }
    for f in &l.failed {
        println!("   FAILED: {f}");
    }
    let t = ceiling_target(l);
    let verdict = match t.met {
        Some(true) => "MET",
        Some(false) => "NOT MET",
        None => "not evaluated",
    };
    println!("   [{verdict}] {}: {}", t.goal, t.measured);
}

//! The classes (a frame, its service, its generator) and the check of each
//! with 10,000 frames: counters, actions and frames back at b.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, anyhow, ensure};
use xdpgate::{
    datapath::{Datapath, stats},
    lb::LbController,
};
use xdpgate_common::maps;
use xdpgate_model::lb::ServiceId;
use xdpgate_tests::lab::Lab;

use super::{CHECK_FRAMES, Checked, STRAY, generator::Generator, rig::rx_packets};

/// A class: a frame, its service, its generator.
pub(super) struct Class<'a> {
    pub(super) name: &'static str,
    pub(super) what: String,
    pub(super) frame: Vec<u8>,
    pub(super) out_len: usize,
    pub(super) id: ServiceId,
    /// Index of the empty program's class of the same family.
    pub(super) family: usize,
    pub(super) generator: Generator<'a>,
}

/// The service's (forwarded, slow path, dropped) counters.
pub(super) fn service_counters(
    dp: &Datapath,
    ctl: &LbController,
    id: &ServiceId,
) -> anyhow::Result<(u64, u64, u64)> {
    let s = ctl
        .status(dp)?
        .into_iter()
        .find(|s| s.service == *id)
        .with_context(|| format!("no status of service {id}"))?;
    Ok((s.forwarded_packets, s.slow_path_packets, s.dropped_packets))
}

/// xdpgate's action counters on `ifindex`, summed over the families.
fn actions(dp: &Datapath, ifindex: u32) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    let map = |name: &'static str| dp.map(name).with_context(|| format!("map {name}"));
    let r = stats::collect(map(maps::IFACES)?, map(maps::STATS)?, map(maps::REASONS)?)
        .map_err(|e| anyhow!("reading the action counters: {e}"))?;
    let mut out = BTreeMap::new();
    for row in r.counters.iter().filter(|r| r.ifindex == ifindex) {
        *out.entry(row.action).or_insert(0) += row.packets;
    }
    Ok(out)
}

fn delta(
    a: &BTreeMap<&'static str, u64>,
    b: &BTreeMap<&'static str, u64>,
) -> BTreeMap<&'static str, u64> {
    b.iter()
        .map(|(k, v)| (*k, v.saturating_sub(a.get(k).copied().unwrap_or(0))))
        .filter(|(_, v)| *v != 0)
        .collect()
}

/// Waits for the softirq work of a burst to finish (it runs on the
/// generator's CPU as the call returns; this is slack).
pub(super) fn settle() {
    std::thread::sleep(Duration::from_millis(50));
}

/// Checks a class with xdpgate attached: `CHECK_FRAMES` frames, all
/// forwarded with `XDP_TX` and back at b; then the plain generator's count.
pub(super) fn check_class(
    lab: &Lab,
    dp: &Datapath,
    ctl: &LbController,
    c: &Class,
    plain: &Generator,
) -> anyhow::Result<Checked> {
    let n = u64::from(CHECK_FRAMES);
    let s0 = service_counters(dp, ctl, &c.id)?;
    let a0 = actions(dp, lab.a_end.ifindex)?;
    let b0 = rx_packets(&lab.b, &lab.b_end.ifname)?;
    c.generator.burst(&c.frame, CHECK_FRAMES)?;
    settle();
    let s1 = service_counters(dp, ctl, &c.id)?;
    let a1 = actions(dp, lab.a_end.ifindex)?;
    let b1 = rx_packets(&lab.b, &lab.b_end.ifname)?;
    let acts = delta(&a0, &a1);
    let (fwd, slow, drop) = (s1.0 - s0.0, s1.1 - s0.1, s1.2 - s0.2);
    let returned = b1.saturating_sub(b0);
    eprintln!(
        "bench: lb live check {}: {n} sent, forwarded {fwd}, slow path {slow}, dropped {drop}, actions {acts:?}, {returned} back at b",
        c.name
    );
    ensure!(
        fwd == n && slow == 0 && drop == 0,
        "{}: of {n} frames the service forwarded {fwd}, slow path {slow}, dropped {drop}",
        c.name
    );
    // b's own stack sends the odd packet too: passed by xdpgate.
    let other = acts
        .iter()
        .filter(|(k, _)| !matches!(**k, "tx" | "pass"))
        .count();
    ensure!(
        acts.get("tx") == Some(&n) && other == 0 && acts.get("pass").copied().unwrap_or(0) <= STRAY,
        "{}: xdpgate's action counters moved by {acts:?}, expected tx {n} (and a stray pass)",
        c.name
    );
    ensure!(
        (n..=n + STRAY).contains(&returned),
        "{}: {returned} frames came back to b for {n} sent",
        c.name
    );
    let p0 = service_counters(dp, ctl, &c.id)?.0;
    plain.burst(&c.frame, CHECK_FRAMES)?;
    settle();
    let p = service_counters(dp, ctl, &c.id)?.0 - p0;
    eprintln!(
        "bench: lb live check {}: with the plain generator (r0 = XDP_TX; exit) {p} of {n} forwarded",
        c.name
    );
    Ok(Checked {
        class: c.name,
        sent: n,
        returned,
        forwarded: Some(fwd),
        slow_path: Some(slow),
        dropped: Some(drop),
        actions: acts,
        plain_generator_forwarded: Some(p),
    })
}

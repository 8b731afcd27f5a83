//! Checking a class and timing it: the empty program, the no-op wrapper and
//! the path wrapper (`xdp-prog/src/timing.rs`) side by side in each round,
//! each run checked to have restored the frame, and each path run to have
//! taken the class's path on every repetition.
use std::os::fd::OwnedFd;

use anyhow::{Context as _, ensure};
use xdpgate::{
    datapath::{Datapath, Wrapper},
    lb::LbController,
};
use xdpgate_common::lb::FAMILY_V4;

use super::{
    LbClassResult, action_name,
    case::{Case, PathCounter, verify},
};
use crate::{bpf, testrun::ROUNDS};

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

/// One wrapper run of `repeat` repetitions, checked: the action the class
/// expects (`want`), the frame restored to the input, and (`counter`) the
/// class's path counter advanced by exactly `repeat`. Returns ns per packet.
fn wrapper_run(
    dp: &mut Datapath,
    ctl: &LbController,
    c: &Case,
    w: Wrapper,
    want: u32,
    counter: PathCounter,
    repeat: u32,
) -> anyhow::Result<f64> {
    let before = path_count(dp, ctl, counter)?;
    let out = dp.timing_test_run(w, &c.frame, repeat)?;
    let after = path_count(dp, ctl, counter)?;
    ensure!(
        out.action == want,
        "{}: the {} wrapper returned {} after {repeat} repetitions, expected {}",
        c.name,
        w.program_name(),
        action_name(out.action),
        action_name(want)
    );
    ensure!(
        out.frame == c.frame,
        "{}: the {} wrapper did not restore the frame",
        c.name,
        w.program_name()
    );
    if let (Some(a), Some(b)) = (before, after) {
        ensure!(
            b - a == u64::from(repeat),
            "{}: {} of {repeat} repetitions of the {} wrapper took the class's path",
            c.name,
            b - a,
            w.program_name()
        );
    }
    Ok(out.duration.as_nanos() as f64)
}

/// Checks a class (one run of the production program: action and output
/// frame), then times it: [`ROUNDS`] rounds of the empty program, the no-op
/// wrapper and the path wrapper with `repeat` repetitions each.
pub(super) fn run_case(
    empty: &OwnedFd,
    dp: &mut Datapath,
    ctl: &LbController,
    c: &Case,
    repeat: u32,
) -> anyhow::Result<LbClassResult> {
    let before = path_count(dp, ctl, c.counter)?;
    let one = dp.test_run(&c.frame, 1)?;
    verify(c, &one)?;
    let after = path_count(dp, ctl, c.counter)?;
    if let (Some(a), Some(b)) = (before, after) {
        ensure!(
            b - a == 1,
            "{}: one run counted {} packets on its path",
            c.name,
            b - a
        );
    }
    let (mut empty_ns, mut noop_ns, mut path_ns) = (Vec::new(), Vec::new(), Vec::new());
    let (mut noop_ratio, mut path_ratio, mut net_ratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let e = bpf::test_run(empty, &c.frame, repeat)?;
        ensure!(
            e.retval == bpf::XDP_PASS,
            "the empty program returned {}",
            e.retval
        );
        let e = e.duration.as_nanos() as f64;
        let n = wrapper_run(
            dp,
            ctl,
            c,
            Wrapper::Noop,
            bpf::XDP_PASS,
            PathCounter::None,
            repeat,
        )?;
        let p = wrapper_run(dp, ctl, c, Wrapper::Path, c.action, c.counter, repeat)?;
        let e1 = e.max(1.0);
        empty_ns.push(e);
        noop_ns.push(n);
        path_ns.push(p);
        noop_ratio.push(n / e1);
        path_ratio.push(p / e1);
        net_ratio.push((p - n + e) / e1);
    }
    eprintln!(
        "bench: lb {}: {} ({} -> {} bytes); wrapped, {repeat} repetitions per run: every one on the path, frame restored; net {:.2}x",
        c.name,
        action_name(one.action),
        c.frame.len(),
        one.frame.len(),
        median(&net_ratio)
    );
    Ok(LbClassResult {
        name: c.name,
        what: c.what.clone(),
        frame_len: c.frame.len(),
        out_len: one.frame.len(),
        expect: c.action,
        sport: c.sport,
        backend: c.backend,
        target: c.target,
        empty_ns: median(&empty_ns),
        noop_ns: median(&noop_ns),
        path_ns: median(&path_ns),
        noop_ratio: median(&noop_ratio),
        path_ratio: median(&path_ratio),
        net_ratio: median(&net_ratio),
        empty_rounds: empty_ns,
        noop_rounds: noop_ns,
        path_rounds: path_ns,
    })
}

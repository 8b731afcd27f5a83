//! Checking a class with one and with N repetitions, and timing it beside
//! the empty program (N-repetition runs and pairs of single runs).
use std::os::fd::OwnedFd;

use anyhow::{Context as _, bail, ensure};
use xdpgate::{datapath::Datapath, lb::LbController};
use xdpgate_common::lb::FAMILY_V4;

use super::{
    LbClassResult, SingleRun, action_name,
    case::{Case, PathCounter, verify},
};
use crate::{
    bpf,
    testrun::{ClassResult, ROUNDS},
};

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
pub(super) fn run_case(
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

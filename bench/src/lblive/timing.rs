//! One timed run: warm-up, then frames injected for a few seconds, and the
//! rate of frames that came back.

use anyhow::ensure;
use xdpgate_tests::lab::Lab;

use super::{LbLiveRun, WARMUP_S, generator::Generator, rig::rx_packets};

/// What one timed run saw.
pub(super) struct Timed {
    mpps: f64,
    ns: f64,
    offered_mpps: f64,
    received: u64,
    returned: u64,
    forwarded: Option<u64>,
    secs: f64,
}

/// Warm up, then one timed run.
pub(super) fn timed(
    lab: &Lab,
    g: &Generator,
    frame: &[u8],
    secs: f64,
    forwarded: &dyn Fn() -> anyhow::Result<Option<u64>>,
) -> anyhow::Result<Timed> {
    g.run(frame, WARMUP_S)?;
    let a0 = rx_packets(&lab.a, &lab.a_end.ifname)?;
    let b0 = rx_packets(&lab.b, &lab.b_end.ifname)?;
    let f0 = forwarded()?;
    let (sent, wall) = g.run(frame, secs)?;
    let f1 = forwarded()?;
    let b1 = rx_packets(&lab.b, &lab.b_end.ifname)?;
    let a1 = rx_packets(&lab.a, &lab.a_end.ifname)?;
    let returned = b1.saturating_sub(b0);
    let s = wall.as_secs_f64();
    ensure!(
        returned > 0,
        "no frame came back ({sent} injected, a received {})",
        a1.saturating_sub(a0)
    );
    let pps = returned as f64 / s;
    Ok(Timed {
        mpps: pps / 1e6,
        ns: 1e9 / pps,
        offered_mpps: sent as f64 / s / 1e6,
        received: a1.saturating_sub(a0),
        returned,
        forwarded: f0.zip(f1).map(|(a, b)| b - a),
        secs: s,
    })
}

pub(super) fn push(
    runs: &mut Vec<LbLiveRun>,
    round: usize,
    program: &'static str,
    class: &'static str,
    t: &Timed,
) {
    eprintln!(
        "bench: lb live round {round} {program} {class}: {:.3} Mpps back ({:.1} ns/frame; offered {:.3}, a received {}, b {}{})",
        t.mpps,
        t.ns,
        t.offered_mpps,
        t.received,
        t.returned,
        t.forwarded
            .map_or(String::new(), |f| format!(", forwarded {f}"))
    );
    runs.push(LbLiveRun {
        round,
        program,
        class,
        mpps: t.mpps,
        ns: t.ns,
        offered_mpps: t.offered_mpps,
        received: t.received,
        returned: t.returned,
        forwarded: t.forwarded,
        secs: t.secs,
    });
}

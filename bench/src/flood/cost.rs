//! Part 6b: per-packet cost of the limit action and of the SYN-cookie path
//! with `BPF_PROG_TEST_RUN`, against the empty XDP program in the same run.
//!
//! The program under test is the daemon's own (the one attached to the
//! gate's attack interface, by its id), run in the gate's namespace with
//! that interface as the ingress device, under the profile of the flood
//! runs plus three bench-only UDP rules: a per-source limit that always
//! admits (10^12 packets/s), one that drops after its first packet (1/s,
//! burst 1), and a plain allow without a limit.
//!
//! The limit rows run `repeat` repetitions per call, three rounds side by
//! side with the empty program (part 1's method): the admitting limit
//! refills faster than it is drawn from, the dropping one is empty from the
//! second repetition on. The SYN-cookie path rewrites the frame into a
//! SYN-ACK and `BPF_PROG_TEST_RUN` does not restore it between repetitions,
//! so it runs as single-repetition calls, each on a fresh SYN from another
//! source /24 (the SYN-ACK limit per /24 stays far away), alternating with
//! single-repetition calls of the empty program; the medians are compared.
//! A single repetition's time carries the test-run's fixed cost (timer
//! start and stop around one run), in both numbers of that ratio.

use std::net::Ipv4Addr;

use anyhow::{Context as _, anyhow, bail};
use serde::Serialize;

use super::{
    PORT,
    attack::{syn_frame, udp_frame},
    protect::COST_PORTS,
    rig::{ATT_NET, Rig},
};
use crate::{
    bpf::{self, XdpMd},
    testrun::side_by_side,
};

/// One measured path.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct CostRow {
    /// Short name.
    pub name: &'static str,
    /// What the frame meets.
    pub what: &'static str,
    /// ns per packet (median).
    pub ns: f64,
    /// The empty program, same rounds (median).
    pub empty_ns: f64,
    /// ns / the empty program's ns (median of the rounds' ratios, or of the
    /// medians for single repetitions).
    pub ratio: f64,
    /// The XDP action returned (1 drop, 2 pass, 3 tx).
    pub action: u32,
    /// Repetitions per call.
    pub repeat: u32,
    /// Calls measured.
    pub calls: usize,
}

/// Part 6b's results.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct CostReport {
    /// Every path.
    pub rows: Vec<CostRow>,
    /// SYN calls that returned `XDP_TX` (a SYN-ACK) out of all.
    pub syn_tx: usize,
    /// SYN calls made.
    pub syn_calls: usize,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs part 6b against the program attached to the gate's attack end.
pub(super) fn run(rig: &Rig, repeat: u32, syn_calls: usize) -> anyhow::Result<CostReport> {
    let id = rig
        .xdp_prog_id(&rig.s_att.ifname)?
        .ok_or_else(|| anyhow!("no XDP program on the gate's attack end"))?;
    let dst = Ipv4Addr::new(ATT_NET[0], ATT_NET[1], ATT_NET[2], 1);
    let src = Ipv4Addr::new(10, 200, 64, 7);
    let ifindex = rig.s_att.ifindex;
    rig.s.run(|| -> anyhow::Result<CostReport> {
        let prog = bpf::prog_fd_by_id(id).context("opening xdpgate's program by id")?;
        let empty = bpf::load_constant_xdp(bpf::XDP_PASS, "bench_fl_empty")
            .context("loading the empty XDP program")?;
        let ctx = |f: &[u8]| XdpMd {
            data_end: f.len() as u32,
            ingress_ifindex: ifindex,
            ..Default::default()
        };
        let mut rows = Vec::new();
        let [admit, drop, plain] = COST_PORTS;
        for (name, what, port, expect) in [
            (
                "allow",
                "UDP allowed by a rule without a limit",
                plain,
                bpf::XDP_PASS,
            ),
            (
                "limit-admit",
                "UDP allowed by a per-source limit whose bucket admits",
                admit,
                bpf::XDP_PASS,
            ),
            (
                "limit-drop",
                "UDP over a per-source limit (dropped, rate_limited)",
                drop,
                bpf::XDP_DROP,
            ),
        ] {
            let f = udp_frame(rig, src, dst, port);
            let r = side_by_side(&empty, &f, repeat, || {
                let o = bpf::test_run_ctx(&prog, &f, repeat, ctx(&f))?;
                Ok((o.duration, o.retval))
            })?;
            if r.action != expect {
                bail!("{name}: xdpgate returned action {}, expected {expect}", r.action);
            }
            eprintln!(
                "bench: flood cost {name}: {:.1} ns vs empty {:.1} ns = {:.2}x",
                r.ns, r.empty_ns, r.ratio
            );
            rows.push(CostRow {
                name,
                what,
                ns: r.ns,
                empty_ns: r.empty_ns,
                ratio: r.ratio,
                action: r.action,
                repeat,
                calls: crate::testrun::ROUNDS,
            });
        }
        let (mut syn, mut emp) = (Vec::new(), Vec::new());
        let mut tx = 0;
        for i in 0..syn_calls {
            let s = Ipv4Addr::new(10, 201 + (i >> 8) as u8, (i & 0xff) as u8, 1);
            let f = syn_frame(rig, s, dst, PORT);
            let e = bpf::test_run_ctx(&empty, &f, 1, ctx(&f))?;
            let o = bpf::test_run_ctx(&prog, &f, 1, ctx(&f))?;
            emp.push(e.duration.as_nanos() as f64);
            if o.retval == bpf::XDP_TX {
                tx += 1;
                syn.push(o.duration.as_nanos() as f64);
            }
        }
        if syn.is_empty() {
            bail!("no SYN of {syn_calls} was answered (XDP_TX): is the SYN-cookie program loaded?");
        }
        let (ns, empty_ns) = (median(&mut syn), median(&mut emp));
        eprintln!(
            "bench: flood cost syn-cookie: {ns:.1} ns vs empty {empty_ns:.1} ns = {:.2}x ({tx} of {syn_calls} SYNs answered)",
            ns / empty_ns.max(1.0)
        );
        rows.push(CostRow {
            name: "syn-cookie",
            what: "SYN to the syncookie rule's port: SYN-ACK with a cookie, XDP_TX (single repetitions)",
            ns,
            empty_ns,
            ratio: ns / empty_ns.max(1.0),
            action: bpf::XDP_TX,
            repeat: 1,
            calls: tx,
        });
        Ok(CostReport {
            rows,
            syn_tx: tx,
            syn_calls,
        })
    })
}

//! The Internet checksum (`xdpgate_common::csum`), in user space only (no
//! root, no namespace): throughput of the plain 16-bit loop `sum_naive`, of
//! the portable 64-bit-word `sum_wide`, of `dispatch::sum` (the
//! sum dispatched at run time to the best vector implementation for the
//! CPU, labelled with `dispatch::implementation`)
//! and of `copy_from_slice` (memcpy, the memory bandwidth ceiling of one pass
//! over the buffer), over buffers of 64 B, 1,500 B and 64 KiB.
//!
//! Each round times the four back to back, [`BYTES_PER_SAMPLE`] bytes each
//! (many calls over the same buffer, which stays in cache), after one
//! untimed round; the numbers are the medians over [`ROUNDS`] rounds, and the
//! ratios the medians of each round's own ratio (on a shared machine the
//! absolute speed drifts, the side-by-side ratio much less). Time is the
//! thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not the wall clock, which
//! on a busy machine also counts the time the thread waited for a CPU.
use std::hint::black_box;

use anyhow::ensure;
use dispatch::{implementation, sum as sum_dispatched};
use serde::Serialize;
use xdpgate_common::csum::{fold, sum_naive, sum_wide};

mod dispatch;

use crate::report::{Section, Target};

/// Timed rounds per buffer size (the median is reported).
pub(crate) const ROUNDS: usize = 15;

/// Bytes processed per function per round: 64 MiB.
pub(crate) const BYTES_PER_SAMPLE: usize = 64 << 20;

/// Buffer sizes: a minimal frame, an Ethernet MTU, a large (GSO/GRO) buffer.
pub(crate) const SIZES: [usize; 3] = [64, 1_500, 65_536];

/// The target: the checksum at least this many times as fast as
/// `sum_naive`, evaluated for both `sum_wide` (portable) and the dispatched
/// `dispatch::sum`.
pub(crate) const TARGET_RATIO: f64 = 8.0;

/// One buffer size.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct SizeResult {
    /// Buffer length, bytes.
    pub bytes: usize,
    /// Calls per function per round.
    pub calls: usize,
    /// `sum_naive`, GB/s (10^9 bytes per second), median of the rounds.
    pub naive_gbps: f64,
    /// `sum_wide`, GB/s, median.
    pub wide_gbps: f64,
    /// `dispatch::sum` (run-time dispatch), GB/s, median.
    pub dispatched_gbps: f64,
    /// `copy_from_slice`, GB/s (bytes copied), median.
    pub memcpy_gbps: f64,
    /// Median over the rounds of (wide / naive) of the same round.
    pub wide_over_naive: f64,
    /// Median over the rounds of (wide / memcpy) of the same round.
    pub wide_over_memcpy: f64,
    /// Median over the rounds of (dispatched / naive) of the same round.
    pub dispatched_over_naive: f64,
    /// Median over the rounds of (dispatched / memcpy) of the same round.
    pub dispatched_over_memcpy: f64,
    /// Every round's GB/s, in order: naive.
    pub rounds_naive_gbps: Vec<f64>,
    /// Every round's GB/s: wide.
    pub rounds_wide_gbps: Vec<f64>,
    /// Every round's GB/s: dispatched.
    pub rounds_dispatched_gbps: Vec<f64>,
    /// Every round's GB/s: memcpy.
    pub rounds_memcpy_gbps: Vec<f64>,
}

/// What this part measured.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct CsumReport {
    /// Timed rounds per size.
    pub rounds: usize,
    /// Bytes per function per round.
    pub bytes_per_sample: usize,
    /// The implementation `dispatch::sum` chose on this machine.
    pub implementation: String,
    /// Per buffer size.
    pub sizes: Vec<SizeResult>,
    /// `sum_wide` (portable) >= [`TARGET_RATIO`] x `sum_naive` at every size.
    pub target: Target,
    /// `dispatch::sum` (dispatched) >= [`TARGET_RATIO`] x `sum_naive`
    /// at every size.
    pub target_dispatched: Target,
}

/// CPU time consumed by the calling thread, seconds.
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// Times `calls` calls of `f` (thread CPU time), GB/s over `bytes` bytes
/// each.
fn time(calls: usize, bytes: usize, mut f: impl FnMut()) -> f64 {
    let t = thread_cpu_s();
    for _ in 0..calls {
        f();
    }
    (calls * bytes) as f64 / (thread_cpu_s() - t) / 1e9
}

fn measure(len: usize) -> anyhow::Result<SizeResult> {
    // Deterministic, non-trivial contents (a multiplicative hash of the
    // index): every byte value, carries in the sums.
    let src: Vec<u8> = (0..len as u32)
        .map(|i| (i.wrapping_mul(0x9e37_79b9) >> 13) as u8)
        .collect();
    let mut dst = vec![0u8; len];
    ensure!(
        fold(sum_wide(0, &src)) == fold(sum_naive(0, &src)),
        "sum_wide and sum_naive disagree over {len} bytes"
    );
    ensure!(
        fold(sum_dispatched(0, &src)) == fold(sum_naive(0, &src)),
        "dispatch::sum ({}) and sum_naive disagree over {len} bytes",
        implementation()
    );
    let calls = BYTES_PER_SAMPLE / len;
    let naive = |n: usize| {
        time(n, len, || {
            black_box(sum_naive(0, black_box(&src)));
        })
    };
    let wide = |n: usize| {
        time(n, len, || {
            black_box(sum_wide(0, black_box(&src)));
        })
    };
    let dispatched = |n: usize| {
        time(n, len, || {
            black_box(sum_dispatched(0, black_box(&src)));
        })
    };
    let mut memcpy = |n: usize| {
        time(n, len, || {
            black_box(&mut dst).copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    };
    // Untimed round: page faults, frequency ramp-up.
    naive(calls);
    wide(calls);
    dispatched(calls);
    memcpy(calls);
    let (mut n, mut w, mut d, mut m) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut wn, mut wm, mut dn, mut dm) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let a = naive(calls);
        let b = wide(calls);
        let x = dispatched(calls);
        let c = memcpy(calls);
        wn.push(b / a);
        wm.push(b / c);
        dn.push(x / a);
        dm.push(x / c);
        n.push(a);
        w.push(b);
        d.push(x);
        m.push(c);
    }
    ensure!(dst == src, "copy_from_slice did not copy");
    Ok(SizeResult {
        bytes: len,
        calls,
        naive_gbps: median(&n),
        wide_gbps: median(&w),
        dispatched_gbps: median(&d),
        memcpy_gbps: median(&m),
        wide_over_naive: median(&wn),
        wide_over_memcpy: median(&wm),
        dispatched_over_naive: median(&dn),
        dispatched_over_memcpy: median(&dm),
        rounds_naive_gbps: n,
        rounds_wide_gbps: w,
        rounds_dispatched_gbps: d,
        rounds_memcpy_gbps: m,
    })
}

/// Runs this part.
pub(crate) fn run() -> anyhow::Result<CsumReport> {
    let sizes = SIZES
        .iter()
        .map(|&len| measure(len))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let name = implementation();
    let target = ratio_target("sum_wide (portable, baseline x86-64)", &sizes, |s| {
        s.wide_over_naive
    });
    let target_dispatched = ratio_target(
        &format!("dispatch::sum ({name}, run-time dispatch)"),
        &sizes,
        |s| s.dispatched_over_naive,
    );
    Ok(CsumReport {
        rounds: ROUNDS,
        bytes_per_sample: BYTES_PER_SAMPLE,
        implementation: name.to_string(),
        sizes,
        target,
        target_dispatched,
    })
}

/// The target ">= [`TARGET_RATIO`]x `sum_naive` at every buffer size" for
/// the function `what`, whose ratio to `sum_naive` is `ratio`; the measured
/// text lists every ratio and the sizes that meet it and those that do not.
fn ratio_target(what: &str, sizes: &[SizeResult], ratio: impl Fn(&SizeResult) -> f64) -> Target {
    let list = |meets: bool| {
        let l: Vec<String> = sizes
            .iter()
            .filter(|s| (ratio(s) >= TARGET_RATIO) == meets)
            .map(|s| format!("{} B", s.bytes))
            .collect();
        if l.is_empty() {
            "none".to_string()
        } else {
            l.join(", ")
        }
    };
    let ratios = sizes
        .iter()
        .map(|s| format!("{} B: {:.2}x", s.bytes, ratio(s)))
        .collect::<Vec<_>>()
        .join(", ");
    Target {
        goal: format!("csum: {what} >= {TARGET_RATIO}x sum_naive (GB/s) at every buffer size"),
        measured: format!(
            "{ratios}; met at: {}; not met at: {}",
            list(true),
            list(false)
        ),
        met: Some(sizes.iter().all(|s| ratio(s) >= TARGET_RATIO)),
    }
}

/// Prints this part.
pub(crate) fn print(r: &Section<CsumReport>) {
    println!("Internet checksum (user space, one thread): GB/s, median of the rounds");
    match (&r.result, &r.error) {
        (Some(r), _) => {
            println!(
                "   {} rounds of {} MiB per function; ratios: median of each round's own ratio",
                r.rounds,
                r.bytes_per_sample >> 20
            );
            println!(
                "   sum[{0}]: dispatch::sum, dispatched at run time to {0}",
                r.implementation
            );
            let disp = format!("sum[{}]", r.implementation);
            println!(
                "   {:>8} {:>10} {:>10} {:>14} {:>10} {:>11} {:>11} {:>12} {:>12}",
                "buffer",
                "sum_naive",
                "sum_wide",
                disp,
                "memcpy",
                "wide/naive",
                "disp/naive",
                "wide/memcpy",
                "disp/memcpy"
            );
            for s in &r.sizes {
                println!(
                    "   {:>6} B {:>10.2} {:>10.2} {:>14.2} {:>10.2} {:>10.2}x {:>10.2}x {:>11.2}x {:>11.2}x",
                    s.bytes,
                    s.naive_gbps,
                    s.wide_gbps,
                    s.dispatched_gbps,
                    s.memcpy_gbps,
                    s.wide_over_naive,
                    s.dispatched_over_naive,
                    s.wide_over_memcpy,
                    s.dispatched_over_memcpy
                );
            }
            for t in [&r.target, &r.target_dispatched] {
                t.print("   ");
            }
        }
        (None, Some(e)) => println!("   not measured: {e}"),
        _ => {}
    }
}

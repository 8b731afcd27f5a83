//! The Internet checksum (`xdpgate_common::csum`), in user space only (no
//! root, no namespace): throughput of the plain 16-bit loop `sum_naive`, of
//! the 64-bit-word `sum_wide`, and of `copy_from_slice` (memcpy, the memory
//! bandwidth ceiling of one pass over the buffer), over buffers of 64 B,
//! 1,500 B and 64 KiB.
//!
//! Each round times the three back to back, [`BYTES_PER_SAMPLE`] bytes each
//! (many calls over the same buffer, which stays in cache), after one
//! untimed round; the numbers are the medians over [`ROUNDS`] rounds, and the
//! ratios the medians of each round's own ratio (on a shared machine the
//! absolute speed drifts, the side-by-side ratio much less). Time is the
//! thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not the wall clock, which
//! on a busy machine also counts the time the thread waited for a CPU.
use std::hint::black_box;

use anyhow::ensure;
use serde::Serialize;
use xdpgate_common::csum::{fold, sum_naive, sum_wide};

use crate::report::{Section, Target};

/// Timed rounds per buffer size (the median is reported).
pub const ROUNDS: usize = 15;

/// Bytes processed per function per round: 64 MiB.
pub const BYTES_PER_SAMPLE: usize = 64 << 20;

/// Buffer sizes: a minimal frame, an Ethernet MTU, a large (GSO/GRO) buffer.
pub const SIZES: [usize; 3] = [64, 1_500, 65_536];

/// The target: `sum_wide` at least this many times as fast as `sum_naive`.
pub const TARGET_RATIO: f64 = 8.0;

/// One buffer size.
#[derive(Clone, Debug, Serialize)]
pub struct SizeResult {
    /// Buffer length, bytes.
    pub bytes: usize,
    /// Calls per function per round.
    pub calls: usize,
    /// `sum_naive`, GB/s (10^9 bytes per second), median of the rounds.
    pub naive_gbps: f64,
    /// `sum_wide`, GB/s, median.
    pub wide_gbps: f64,
    /// `copy_from_slice`, GB/s (bytes copied), median.
    pub memcpy_gbps: f64,
    /// Median over the rounds of (wide / naive) of the same round.
    pub wide_over_naive: f64,
    /// Median over the rounds of (wide / memcpy) of the same round.
    pub wide_over_memcpy: f64,
    /// Every round's GB/s, in order: naive.
    pub rounds_naive_gbps: Vec<f64>,
    /// Every round's GB/s: wide.
    pub rounds_wide_gbps: Vec<f64>,
    /// Every round's GB/s: memcpy.
    pub rounds_memcpy_gbps: Vec<f64>,
}

/// What this part measured.
#[derive(Clone, Debug, Serialize)]
pub struct CsumReport {
    /// Timed rounds per size.
    pub rounds: usize,
    /// Bytes per function per round.
    pub bytes_per_sample: usize,
    /// Per buffer size.
    pub sizes: Vec<SizeResult>,
    /// `sum_wide` >= [`TARGET_RATIO`] x `sum_naive` at every size.
    pub target: Target,
}

/// CPU time consumed by the calling thread, seconds.
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
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
    let mut memcpy = |n: usize| {
        time(n, len, || {
            black_box(&mut dst).copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    };
    // Untimed round: page faults, frequency ramp-up.
    naive(calls);
    wide(calls);
    memcpy(calls);
    let (mut n, mut w, mut m) = (Vec::new(), Vec::new(), Vec::new());
    let (mut wn, mut wm) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (a, b, c) = (naive(calls), wide(calls), memcpy(calls));
        wn.push(b / a);
        wm.push(b / c);
        n.push(a);
        w.push(b);
        m.push(c);
    }
    ensure!(dst == src, "copy_from_slice did not copy");
    Ok(SizeResult {
        bytes: len,
        calls,
        naive_gbps: median(&n),
        wide_gbps: median(&w),
        memcpy_gbps: median(&m),
        wide_over_naive: median(&wn),
        wide_over_memcpy: median(&wm),
        rounds_naive_gbps: n,
        rounds_wide_gbps: w,
        rounds_memcpy_gbps: m,
    })
}

/// Runs this part.
pub fn run() -> anyhow::Result<CsumReport> {
    let sizes = SIZES
        .iter()
        .map(|&len| measure(len))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let measured = sizes
        .iter()
        .map(|s| format!("{} B: {:.2}x", s.bytes, s.wide_over_naive))
        .collect::<Vec<_>>()
        .join(", ");
    let target = Target {
        goal: format!("csum: sum_wide >= {TARGET_RATIO}x sum_naive (GB/s) at every buffer size"),
        measured,
        met: Some(sizes.iter().all(|s| s.wide_over_naive >= TARGET_RATIO)),
    };
    Ok(CsumReport {
        rounds: ROUNDS,
        bytes_per_sample: BYTES_PER_SAMPLE,
        sizes,
        target,
    })
}

/// Prints this part.
pub fn print(r: &Section<CsumReport>) {
    println!("Internet checksum (user space, one thread): GB/s, median of the rounds");
    match (&r.result, &r.error) {
        (Some(r), _) => {
            println!(
                "   {} rounds of {} MiB per function; ratios: median of each round's own ratio",
                r.rounds,
                r.bytes_per_sample >> 20
            );
            println!(
                "   {:>8} {:>10} {:>10} {:>10} {:>11} {:>12}",
                "buffer", "sum_naive", "sum_wide", "memcpy", "wide/naive", "wide/memcpy"
            );
            for s in &r.sizes {
                println!(
                    "   {:>6} B {:>10.2} {:>10.2} {:>10.2} {:>10.2}x {:>11.2}x",
                    s.bytes,
                    s.naive_gbps,
                    s.wide_gbps,
                    s.memcpy_gbps,
                    s.wide_over_naive,
                    s.wide_over_memcpy
                );
            }
            let t = &r.target;
            let verdict = match t.met {
                Some(true) => "MET",
                Some(false) => "NOT MET",
                None => "not evaluated",
            };
            println!("   [{verdict}] {}: {}", t.goal, t.measured);
        }
        (None, Some(e)) => println!("   not measured: {e}"),
        _ => {}
    }
}

//! Maglev rings (`xdpgate_model::lb::maglev`), in user space only (no root, no
//! namespace): wall-clock time of `maglev::build` for 100 and 1,000 backends
//! (mixed IPv4/IPv6, weights 1..4; and 1,000 with one of weight 1000 and the
//! others 1) at the default ring size 65,537, median of [`ROUNDS`] builds; and the disruption of removing one backend: the fraction
//! of ring entries that change backend, against the ideal (the removed
//! backend's own share, 1/N for equal weights).
use std::{
    hint::black_box,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use anyhow::Context as _;
use serde::Serialize;
use xdpgate_model::lb::maglev::{self, MAX_RING_SIZE, Member};

/// Builds timed per configuration (the median is reported).
pub(crate) const ROUNDS: usize = 11;

/// Ring size: the datapath's default (and largest), 65,537.
const SIZE: u32 = MAX_RING_SIZE;

/// Build time of one configuration.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct BuildTime {
    /// Backends.
    pub members: usize,
    /// Their weights (description).
    pub weights: String,
    /// Ring entries.
    pub size: u32,
    /// Median of the rounds, milliseconds.
    pub median_ms: f64,
    /// Fastest round, milliseconds.
    pub min_ms: f64,
    /// Slowest round, milliseconds.
    pub max_ms: f64,
    /// Every round, milliseconds, in order.
    pub rounds_ms: Vec<f64>,
}

/// Entries moved by removing one backend.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Disruption {
    /// Backends before the removal.
    pub members: usize,
    /// Their weights (description).
    pub weights: String,
    /// Slot of the backend removed.
    pub removed_slot: u32,
    /// Fraction of the ring's entries whose backend changed.
    pub moved: f64,
    /// Of which: the removed backend's entries (must all move), fraction of
    /// the ring. This is the ideal: nothing else would move.
    pub ideal: f64,
    /// Of which: entries of other backends that moved, fraction of the ring.
    pub moved_other: f64,
}

/// What this part measured.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct MaglevReport {
    /// Ring entries.
    pub size: u32,
    /// Builds timed per configuration.
    pub rounds: usize,
    /// Build times.
    pub builds: Vec<BuildTime>,
    /// Disruption of removing one backend.
    pub disruption: Vec<Disruption>,
}

/// Backend `i`, slot `i + 1`: IPv4 10.0.0.0 + i for even `i`, IPv6
/// fd00:200:300:: + i for odd `i`; weight `weight(i)`.
fn members(n: u32, weight: impl Fn(u32) -> u32) -> Vec<Member> {
    (0..n)
        .map(|i| Member {
            slot: i + 1,
            addr: if i.is_multiple_of(2) {
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
            } else {
                IpAddr::V6(Ipv6Addr::from(
                    0xfd00_0200_0300_0000_0000_0000_0000_0000u128 + u128::from(i),
                ))
            },
            weight: weight(i),
        })
        .collect()
}

fn time_build(n: u32, weights: &str, weight: impl Fn(u32) -> u32) -> anyhow::Result<BuildTime> {
    let m = members(n, weight);
    let mut rounds_ms = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let ring = maglev::build(black_box(&m), black_box(SIZE))
            .with_context(|| format!("building the ring of {n} backends"))?;
        rounds_ms.push(t.elapsed().as_secs_f64() * 1e3);
        black_box(ring);
    }
    let mut sorted = rounds_ms.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(BuildTime {
        members: n as usize,
        weights: weights.into(),
        size: SIZE,
        median_ms: sorted[sorted.len() / 2],
        min_ms: sorted[0],
        max_ms: sorted[sorted.len() - 1],
        rounds_ms,
    })
}

fn disruption(n: u32, weights: &str, weight: impl Fn(u32) -> u32) -> anyhow::Result<Disruption> {
    let all = members(n, weight);
    let removed = all[n as usize / 2];
    let rest: Vec<Member> = all
        .iter()
        .filter(|m| m.slot != removed.slot)
        .copied()
        .collect();
    let before = maglev::build(&all, SIZE)?;
    let after = maglev::build(&rest, SIZE)?;
    let frac = |c: usize| c as f64 / f64::from(SIZE);
    let pairs = || before.iter().zip(&after);
    Ok(Disruption {
        members: n as usize,
        weights: weights.into(),
        removed_slot: removed.slot,
        moved: frac(pairs().filter(|(b, a)| b != a).count()),
        ideal: frac(before.iter().filter(|&&s| s == removed.slot).count()),
        moved_other: frac(
            pairs()
                .filter(|(b, a)| **b != removed.slot && b != a)
                .count(),
        ),
    })
}

/// Runs this part.
pub(crate) fn run() -> anyhow::Result<MaglevReport> {
    // One untimed build first (page faults of the first allocations).
    maglev::build(&members(1_000, |i| 1 + i % 4), SIZE)?;
    let builds = vec![
        time_build(100, "1..4", |i| 1 + i % 4)?,
        time_build(1_000, "1..4", |i| 1 + i % 4)?,
        // Skewed: the weight rounds are many (about 33,000), which the
        // counting sort of claims makes cost no more than even weights.
        time_build(1_000, "1000,1..", |i| if i == 0 { 1000 } else { 1 })?,
    ];
    let disruption = vec![
        disruption(10, "1", |_| 1)?,
        disruption(1_000, "1", |_| 1)?,
        disruption(1_000, "1..4", |i| 1 + i % 4)?,
    ];
    Ok(MaglevReport {
        size: SIZE,
        rounds: ROUNDS,
        builds,
        disruption,
    })
}

/// Prints this part.
pub(crate) fn print(r: &crate::report::Section<MaglevReport>) {
    println!("Maglev rings (user space, one thread): build time and disruption");
    match (&r.result, &r.error) {
        (Some(r), _) => {
            println!(
                "   build, median of {} (min-max), ring of {} entries:",
                r.rounds, r.size
            );
            println!(
                "   {:>8} {:>9} {:>10} {:>19}",
                "backends", "weights", "median", "min-max"
            );
            for b in &r.builds {
                println!(
                    "   {:>8} {:>9} {:>8.2}ms {:>19}",
                    b.members,
                    b.weights,
                    b.median_ms,
                    format!("{:.2}-{:.2}ms", b.min_ms, b.max_ms)
                );
            }
            println!("   removing one backend: fraction of the ring's entries moved");
            println!(
                "   {:>8} {:>9} {:>9} {:>9} {:>13}",
                "backends", "weights", "moved", "ideal", "others moved"
            );
            for d in &r.disruption {
                println!(
                    "   {:>8} {:>9} {:>8.3}% {:>8.3}% {:>12.3}%",
                    d.members,
                    d.weights,
                    d.moved * 100.0,
                    d.ideal * 100.0,
                    d.moved_other * 100.0
                );
            }
            println!(
                "   (ideal: the removed backend's own entries, 1/N for equal weights; \
                 others moved: entries of the remaining backends that changed backend)"
            );
        }
        (None, Some(e)) => println!("   not measured: {e}"),
        _ => {}
    }
}

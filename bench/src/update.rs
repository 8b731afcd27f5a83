//! Part 7: update latency (issue 16, deliverable 3). Loads the benchmark's
//! deny set (`prefixes` per family, part 1's generator) and `rules` rules
//! through `AclController::install` as the daemon does, then times single
//! changes through `AclController::apply`, the call the daemon makes for
//! `xdpgate acl set add|del` and `acl rule add|del`:
//!
//! - one IPv4 /32 added to the deny set, then each removed again;
//! - one IPv6 /128 likewise;
//! - one rule (a new source /32, priority in the middle of the filler rules)
//!   added, then each removed.
//!
//! What is timed, per change, as the daemon makes it: its snapshot for the
//! reads during the change (`AclController::shared_state`), then from the
//! call (validation of the change included) to the compiled delta, the idle
//! generation written, the switch of generations (the next packet sees the
//! change), the end of the grace period (`enforced`: no packet uses the old
//! generation), and the return of the call (`total`, with the snapshot;
//! `apply_deferred`, the daemon's call, which leaves the second copy of the
//! delta for after the answer: timed apart). The target is judged on
//! `total`'s maximum. Not included: the CLI's socket round trip and JSON and the
//! daemon's journal append (both in the second half). The daemon's old
//! whole-state save and the full compile of the same state are timed on
//! their own, for comparison.
//!
//! The second half ([`cli`]) times what a user sees: the CLI's round trip
//! through a running daemon loaded with the same state, at each rule count.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use ipnetwork::IpNetwork;
use serde::Serialize;
use xdpgate::{acl::AclController, datapath::Datapath};
use xdpgate_model::{
    acl::{AclState, AddrMatch, Change, Rule, Verdict, compile::compile},
    iface::Malformed,
    state::{self, Saved},
};
use xdpgate_tests::lab::Netns;

use crate::{
    report::{Section, Target},
    workload,
};

mod cli;

/// The bound on one update, milliseconds.
pub(crate) const TARGET_MS: f64 = 50.0;

/// One kind of change, timed `n` times.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Series {
    /// What changed.
    pub what: String,
    /// Changes timed.
    pub n: usize,
    /// Of which went through the incremental compiler.
    pub incremental: usize,
    /// The daemon's snapshot for reads taken before the change
    /// (`AclController::shared_state`: the previous change replayed into
    /// the readers' copy): median and max, ms.
    pub snapshot_median_ms: f64,
    /// See `snapshot_median_ms`.
    pub snapshot_max_ms: f64,
    /// Call to the validated next state (the change made in place): median, ms.
    pub validated_median_ms: f64,
    /// Call to the compiled delta (validation included): median, ms.
    pub compiled_median_ms: f64,
    /// Call to the idle generation written: median, ms.
    pub written_median_ms: f64,
    /// Call to the switch: median, ms.
    pub switched_median_ms: f64,
    /// Call to the end of the grace period (every packet sees the change):
    /// median and max, milliseconds.
    pub enforced_median_ms: f64,
    /// See `enforced_median_ms`.
    pub enforced_max_ms: f64,
    /// The second copy of the delta, written after the return (as the
    /// daemon does after its answer): median and max, ms.
    pub second_copy_median_ms: f64,
    /// See `second_copy_median_ms`.
    pub second_copy_max_ms: f64,
    /// Changes after which the live generation walked the rule bitmaps
    /// until the phased tables were rebuilt off the change.
    pub walked: usize,
    /// From the return (second copy written) to the rebuilt phased tables
    /// live (`AclController::wait_rebuilt`, the daemon's background install),
    /// for the changes that walked: median and max, ms (0 when none did).
    pub rebuilt_median_ms: f64,
    /// See `rebuilt_median_ms`.
    pub rebuilt_max_ms: f64,
    /// Snapshot and call to return: median, 99th percentile and max, ms.
    pub total_median_ms: f64,
    /// See `total_median_ms`.
    pub total_p99_ms: f64,
    /// See `total_median_ms`.
    pub total_max_ms: f64,
}

/// One loaded state and its series.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Config {
    /// Prefixes per family in the deny set.
    pub prefixes: usize,
    /// Rules.
    pub rules: usize,
    /// The initial install (full compile, both generations written), ms.
    pub install_ms: f64,
    /// `compile()` of the same state alone (what every change cost before), ms.
    pub full_compile_ms: f64,
    /// The daemon's state-file save of the same state (`Saved::new` and
    /// `state::save` into a private directory under /tmp), median of 3, ms:
    /// after every change the daemon saves before it answers the CLI.
    pub state_save_ms: Option<f64>,
    /// The series.
    pub series: Vec<Series>,
}

/// What this part measured.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct UpdateReport {
    /// Per loaded state.
    pub configs: Vec<Config>,
    /// The CLI round trip through a running daemon, per rule count.
    pub cli: Section<Vec<cli::CliReport>>,
    /// The targets, evaluated.
    pub targets: Vec<Target>,
}

fn slots() -> BTreeMap<String, u32> {
    [("lo".to_string(), 1)].into()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median_max(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}

/// The 99th percentile (nearest rank) of `v`, sorted.
fn p99(v: &[f64]) -> f64 {
    v[(v.len() * 99).div_ceil(100).max(1) - 1]
}

/// `n` addresses of the family in none of `state`'s deny-set prefixes,
/// from `skip` on: from the networks the benchmark's sets never cover
/// (`workload::prefix_set` keeps 198.51.100.0/24 and 2001:db8:ffff::/48
/// free for its "miss" packets; random prefixes cover nearly all the rest
/// of the IPv4 space at 1M prefixes, so an added /32 elsewhere would
/// change nothing).
fn fresh_prefixes(
    state: &AclState,
    n: usize,
    v6: bool,
    skip: usize,
) -> anyhow::Result<Vec<IpNetwork>> {
    let set = &state.sets[workload::SET];
    let out: Vec<IpNetwork> = (1 + skip..255)
        .map(|i| {
            let ip = if v6 {
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, i as u16))
            } else {
                IpAddr::V4(Ipv4Addr::new(198, 51, 100, i as u8))
            };
            IpNetwork::from(ip)
        })
        .filter(|p| !set.contains(p.ip()))
        .take(n)
        .collect();
    if out.len() < n {
        bail!(
            "only {} addresses outside the deny set, {n} wanted",
            out.len()
        );
    }
    Ok(out)
}

/// Applies `changes` one by one as the daemon does (its snapshot for reads
/// first, then the change), timing each.
fn time_changes(
    dp: &mut Datapath,
    ctl: &mut AclController,
    what: &str,
    changes: &[Change],
) -> anyhow::Result<Series> {
    let (mut snapshot, mut enforced, mut total) = (Vec::new(), Vec::new(), Vec::new());
    let (mut validated, mut compiled) = (Vec::new(), Vec::new());
    let (mut written, mut switched, mut copy) = (Vec::new(), Vec::new(), Vec::new());
    let mut incremental = 0;
    let mut rebuilt = Vec::new();
    for c in changes {
        let t = Instant::now();
        let shared = ctl.shared_state();
        let snap = t.elapsed();
        let t1 = Instant::now();
        ctl.apply_deferred(dp, c)
            .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        let wall = t1.elapsed();
        drop(shared);
        let t2 = Instant::now();
        ctl.finish(dp);
        copy.push(ms(t2.elapsed()));
        // The phased tables rebuilt off the change and switched to, before
        // the next change (each change starts from them: its worst case).
        if ctl.rebuild_pending() {
            let t3 = Instant::now();
            ctl.wait_rebuilt(dp)
                .map_err(|e| anyhow::anyhow!("{what}: the rebuilt phased tables: {e}"))?;
            rebuilt.push(ms(t3.elapsed()));
        }
        let timing = ctl.last_timing().context("the change is timed")?;
        incremental += usize::from(timing.incremental);
        snapshot.push(ms(snap));
        validated.push(ms(timing.validated));
        compiled.push(ms(timing.compiled));
        written.push(ms(timing.written));
        switched.push(ms(timing.switched));
        enforced.push(ms(timing.enforced));
        total.push(ms(snap + wall.max(timing.total)));
    }
    let (sm, sx) = median_max(&mut snapshot);
    let (em, ex) = median_max(&mut enforced);
    let (tm, tx) = median_max(&mut total);
    let (cm, cx) = median_max(&mut copy);
    let walked = rebuilt.len();
    let (rm, rx) = if rebuilt.is_empty() {
        (0.0, 0.0)
    } else {
        median_max(&mut rebuilt)
    };
    Ok(Series {
        what: what.to_string(),
        n: changes.len(),
        incremental,
        snapshot_median_ms: sm,
        snapshot_max_ms: sx,
        validated_median_ms: median_max(&mut validated).0,
        compiled_median_ms: median_max(&mut compiled).0,
        written_median_ms: median_max(&mut written).0,
        switched_median_ms: median_max(&mut switched).0,
        enforced_median_ms: em,
        enforced_max_ms: ex,
        second_copy_median_ms: cm,
        second_copy_max_ms: cx,
        walked,
        rebuilt_median_ms: rm,
        rebuilt_max_ms: rx,
        total_median_ms: tm,
        total_p99_ms: p99(&total),
        total_max_ms: tx,
    })
}

/// Runs part 7 inside `ns`: `n` changes of each kind per rule count.
pub(crate) fn run(
    ns: &Netns,
    prefixes: usize,
    rule_counts: &[usize],
    n: usize,
) -> anyhow::Result<UpdateReport> {
    let configs = ns.run(|| -> anyhow::Result<Vec<Config>> {
        let mut dp = Datapath::load().context("loading xdpgate")?;
        dp.register(1, 1, Malformed::Drop)
            .context("registering lo")?;
        let set = workload::prefix_set(prefixes, 0xb5e7 + prefixes as u64);
        let mut configs = Vec::new();
        for &r in rule_counts {
            let mut ctl = AclController::new(slots());
            let st = workload::state(set.clone(), r, 0x5eed + r as u64);
            eprintln!("bench: update latency: loading {prefixes} prefixes per family, {r} rules ...");
            let t = Instant::now();
            ctl.install(&mut dp, st.clone())
                .map_err(|e| anyhow::anyhow!("install: {e}"))?;
            let install_ms = ms(t.elapsed());
            let t = Instant::now();
            compile(&st, &slots()).map_err(|e| anyhow::anyhow!("compile: {e:?}"))?;
            let full_compile_ms = ms(t.elapsed());
            let mut series = Vec::new();
            for (v6, fam) in [(false, "IPv4 /32"), (true, "IPv6 /128")] {
                let nets = fresh_prefixes(&st, n, v6, 0)?;
                let change = |del: bool, p: &IpNetwork| {
                    let (name, prefixes) = (workload::SET.to_string(), vec![p.to_string()]);
                    if del {
                        Change::SetDel { name, prefixes }
                    } else {
                        Change::SetAdd { name, prefixes }
                    }
                };
                let adds: Vec<Change> = nets.iter().map(|p| change(false, p)).collect();
                let dels: Vec<Change> = nets.iter().map(|p| change(true, p)).collect();
                series.push(time_changes(&mut dp, &mut ctl, &format!("{fam} added to the set"), &adds)?);
                series.push(time_changes(&mut dp, &mut ctl, &format!("{fam} removed from the set"), &dels)?);
            }
            let nets = fresh_prefixes(&st, n, false, 100)?;
            let rules: Vec<Change> = nets
                .iter()
                .enumerate()
                .map(|(i, p)| Change::RuleAdd {
                    rules: vec![Rule {
                        src: Some(AddrMatch::Prefix(*p)),
                        ..Rule::new(2_000_000 + i as u32, (r as u32 / 2) * 10 + 5, Verdict::Deny)
                    }],
                })
                .collect();
            let dels: Vec<Change> = (0..n)
                .map(|i| Change::RuleDel {
                    ids: vec![2_000_000 + i as u32],
                })
                .collect();
            series.push(time_changes(&mut dp, &mut ctl, "rule added (new source /32)", &rules)?);
            series.push(time_changes(&mut dp, &mut ctl, "rule removed", &dels)?);
            let state_save_ms = time_state_save(ctl.state());
            if ctl.state() != &st {
                bail!("the state after adding and removing everything again differs from the loaded one");
            }
            configs.push(Config {
                prefixes,
                rules: r,
                install_ms,
                full_compile_ms,
                state_save_ms,
                series,
            });
        }
        Ok(configs)
    })?;
    let cli = Section::from(Some(
        rule_counts
            .iter()
            .map(|&r| cli::run(prefixes, r, n))
            .collect::<anyhow::Result<Vec<_>>>(),
    ));
    let mut targets = targets(&configs);
    targets.extend(cli.result.iter().flatten().flat_map(cli::targets));
    Ok(UpdateReport {
        configs,
        cli,
        targets,
    })
}

/// [`Config::state_save_ms`]; `None` when the save fails (the error is
/// printed).
fn time_state_save(state: &AclState) -> Option<f64> {
    let dir = std::env::temp_dir().join(format!("xdpgate-bench-state-{}", std::process::id()));
    let path = dir.join("state.json");
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let saved = Saved::new("bench", state, Vec::new());
        if let Err(e) = state::save(&path, &saved) {
            eprintln!("bench: state-file save: {e}");
            break;
        }
        times.push(ms(t.elapsed()));
    }
    let _ = std::fs::remove_dir_all(&dir);
    (times.len() == 3).then(|| median_max(&mut times).0)
}

fn targets(configs: &[Config]) -> Vec<Target> {
    let mut out = Vec::new();
    for c in configs {
        // Prefix changes and rule changes apart (their costs differ by
        // orders of magnitude at 10,000 rules), then every change.
        // (what, rule changes only / prefix changes only / every change)
        let kinds = [
            ("one-prefix update", Some(false)),
            ("one-rule update", Some(true)),
            ("one-prefix and one-rule update", None),
        ];
        for (kind, rules) in kinds {
            let series: Vec<&Series> = c
                .series
                .iter()
                .filter(|s| rules.is_none_or(|r| s.what.starts_with("rule") == r))
                .collect();
            let worst = series
                .iter()
                .max_by(|a, b| a.total_max_ms.total_cmp(&b.total_max_ms));
            let Some(worst) = worst else { continue };
            let all_incremental = series.iter().all(|s| s.incremental == s.n);
            out.push(Target {
                goal: format!(
                    "{kind} enforced within {TARGET_MS:.0} ms at {} prefixes per family, {} rules (call to return, every change)",
                    c.prefixes, c.rules
                ),
                measured: format!(
                    "worst {}: max {:.1} ms (median {:.1}, p99 {:.1}); full compile {:.0} ms{}",
                    worst.what,
                    worst.total_max_ms,
                    worst.total_median_ms,
                    worst.total_p99_ms,
                    c.full_compile_ms,
                    if all_incremental {
                        ""
                    } else {
                        "; some changes were compiled in full"
                    }
                ),
                met: Some(worst.total_max_ms <= TARGET_MS),
            });
        }
    }
    out
}

/// Prints the part's table and targets.
pub(crate) fn print(r: &Section<UpdateReport>) {
    println!(
        "7. Update latency: one change through AclController::apply (the daemon's call for `acl set add|del`, `acl rule add|del`)"
    );
    let Some(rep) = &r.result else {
        println!("   not run: {}", r.error.as_deref().unwrap_or("?"));
        return;
    };
    for c in &rep.configs {
        println!(
            "   {} prefixes per family, {} rules: initial install {:.0} ms; full compile alone {:.0} ms; daemon's state-file save {}",
            c.prefixes,
            c.rules,
            c.install_ms,
            c.full_compile_ms,
            c.state_save_ms
                .map_or_else(|| "failed".to_string(), |v| format!("{v:.0} ms"))
        );
        println!(
            "   change                                  n  incr | snap med/max | valid compiled written switched | enforced med/max |  total med/p99/max | 2nd copy med/max | walk n, rebuilt med/max ms"
        );
        for s in &c.series {
            println!(
                "   {:<38} {:>3} {:>5} | {:>5.2} {:>6.2} | {:>5.1} {:>8.1} {:>7.1} {:>8.1} | {:>8.2} {:>7.2} | {:>6.2} {:>6.2} {:>6.2} | {:>6.2} {:>6.2} | {:>3} {:>6.0} {:>6.0}",
                s.what,
                s.n,
                s.incremental,
                s.snapshot_median_ms,
                s.snapshot_max_ms,
                s.validated_median_ms,
                s.compiled_median_ms,
                s.written_median_ms,
                s.switched_median_ms,
                s.enforced_median_ms,
                s.enforced_max_ms,
                s.total_median_ms,
                s.total_p99_ms,
                s.total_max_ms,
                s.second_copy_median_ms,
                s.second_copy_max_ms,
                s.walked,
                s.rebuilt_median_ms,
                s.rebuilt_max_ms
            );
        }
    }
    println!(
        "   (snap: the daemon's snapshot for reads before the change (`shared_state`); then medians of the time from the call to: valid: the change made and validated; compiled: the delta and counter slots; written: the idle generation written; switched: the configuration word switched, after which every packet that starts sees the change; enforced: the grace period over, no packet uses the old generation; total: snapshot plus the call to its return (`apply_deferred`, as the daemon calls it); 2nd copy: the delta written into the other generation after the return (`finish`, the daemon's after its answer); walk: the changes after which the live generation walked the rule bitmaps (exact) until the phased tables, rebuilt on a thread, were switched to, and the time from the return to that switch (`wait_rebuilt`; waited for before each next change, so every change starts from the phased tables); the CLI's socket round trip and the journal append are in the CLI table below)"
    );
    cli::print(&rep.cli);
    for t in &rep.targets {
        t.print("   ");
    }
}

//! Part 7, second half: the real CLI round trip of one change through a
//! running daemon at the same size. A daemon (`xdpgate run`, the release
//! build beside the bench: `cargo build --release -p xdpgate`, or
//! `$XDPGATE_BIN`) is started on a veth end of its own lab, loaded with the
//! same state as the first half (one `acl replace` through the API socket,
//! not timed as a target), then each change is made `n` times with the CLI
//! a user runs: `xdpgate set add|del bench ADDR/32|/128`, `xdpgate acl add
//! --id ... --src ADDR/32 --action deny`, `xdpgate acl del ID`.
//!
//! What is timed: from spawning the CLI process to its exit with success,
//! that is the process start, the socket round trip, the daemon's change
//! (its snapshot for reads, the validation, the incremental compile, the
//! switch and the grace period) and its journal append with `fdatasync`,
//! which comes before the answer. A read (`xdpgate set list -o json`: the
//! sets' sizes) is timed the same way as the floor of any CLI call.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, anyhow, bail};
use ipnetwork::IpNetwork;
use serde::Serialize;
use xdpgate::api::{self, Request, Response};
use xdpgate_model::{acl::Change, state::rule_file_of};
use xdpgate_tests::{
    lab::Lab,
    xdpgate::{Daemon, StateDirs},
};

use super::{TARGET_MS, fresh_prefixes, median_max, ms, p99};
use crate::{report::Target, workload};

/// The lab's subnet (its own namespaces: no clash with other labs).
const SUBNET: u8 = 207;

/// The wait after the load before the timing starts (the daemon's journal
/// compaction of the load runs meanwhile).
const SETTLE: std::time::Duration = std::time::Duration::from_secs(4);

/// One CLI command, timed `n` times.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct CliSeries {
    /// The command.
    pub what: String,
    /// Calls timed.
    pub n: usize,
    /// Spawn to exit: median, ms.
    pub median_ms: f64,
    /// Spawn to exit: 99th percentile, ms.
    pub p99_ms: f64,
    /// Spawn to exit: max, ms.
    pub max_ms: f64,
}

/// The CLI half of part 7.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct CliReport {
    /// Prefixes per family in the deny set.
    pub prefixes: usize,
    /// Rules.
    pub rules: usize,
    /// The daemon binary timed.
    pub binary: PathBuf,
    /// The initial `acl replace` through the API (full compile and the
    /// daemon's full save), ms.
    pub load_ms: f64,
    /// The series, the read first.
    pub series: Vec<CliSeries>,
}

/// The daemon binary: `$XDPGATE_BIN`, else `xdpgate` beside this bench.
fn daemon_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("XDPGATE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating the bench")?;
    let p = exe.with_file_name("xdpgate");
    if !p.is_file() {
        bail!(
            "{} does not exist: build it with `cargo build --release -p xdpgate` (or set XDPGATE_BIN)",
            p.display()
        );
    }
    Ok(p)
}

/// Runs `xdpgate ARGS` with the daemon's directories `n` times (the
/// arguments of call `i` from `args(i)`), timing each from spawn to exit.
///
/// The CLI is spawned as a shell spawns it: a plain `Command`, which the
/// standard library starts with `posix_spawn` (the child shares the
/// bench's memory until its `exec`). It is not started in the lab's
/// namespace: the CLI only talks to the daemon's socket, by path, which
/// needs none, and the namespace's `setns` hook (`Netns::command`, a
/// `pre_exec`) makes the standard library `fork` instead. A fork copies
/// the bench's page tables, and after the controller half the bench holds
/// about 470 MB: `clone` alone took 8-16 ms per call (strace), and a bare
/// read 20-22 ms median (5.3-5.9 ms with the controller half left out; the
/// daemon's part of it 0.4 ms). That was the floor of every CLI call timed
/// here, and no part of a user's call.
fn time_cli(
    d: &Daemon,
    bin: &std::path::Path,
    what: &str,
    n: usize,
    args: impl Fn(usize) -> Vec<String>,
) -> anyhow::Result<CliSeries> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let a = args(i);
        let t = Instant::now();
        let out = Command::new(bin)
            .env("XDPGATE_BPFFS_DIR", &d.dirs.bpffs)
            .env("XDPGATE_RUN_DIR", &d.dirs.run)
            .env("XDPGATE_STATE_FILE", &d.dirs.state_file)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .args(&a)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("running xdpgate {a:?}"))?;
        let took = t.elapsed();
        if !out.status.success() {
            bail!(
                "xdpgate {a:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        times.push(ms(took));
    }
    let (median_ms, max_ms) = median_max(&mut times);
    Ok(CliSeries {
        what: what.to_string(),
        n,
        median_ms,
        p99_ms: p99(&times),
        max_ms,
    })
}

/// Starts the daemon, loads `prefixes` per family and `rules` rules, and
/// times `n` CLI calls of each kind.
pub(crate) fn run(prefixes: usize, rules: usize, n: usize) -> anyhow::Result<CliReport> {
    let bin = daemon_binary()?;
    let lab = Lab::new("bupdcli", SUBNET).context("creating the lab")?;
    let iface = lab.a_end.ifname.clone();
    let d = Daemon::start_binary(
        &lab.a,
        StateDirs::unique("bupdcli"),
        &bin,
        &[&iface],
        "skb",
        &[],
    )
    .map_err(|e| anyhow!("starting {}: {e}", bin.display()))?;
    let set = workload::prefix_set(prefixes, 0xb5e7 + prefixes as u64);
    let st = workload::state(set, rules, 0x5eed + rules as u64);
    eprintln!(
        "bench: update latency through the CLI: loading {prefixes} prefixes per family, {rules} rules into {} ...",
        bin.display()
    );
    let t = Instant::now();
    let socket = d.dirs.run.join("xdpgate.sock");
    let r: Response<serde_json::Value> = api::call(
        &socket,
        &Request::Apply {
            change: Change::Replace {
                file: rule_file_of(&st),
            },
        },
    )
    .context("loading the state through the API")?;
    if !r.ok {
        bail!("loading the state: {}", r.errors.join("; "));
    }
    let load_ms = ms(t.elapsed());
    // The load is one journal entry of two million prefixes: the daemon
    // compacts its journal on a background thread right after it (1.4 s
    // measured). The first change timed during that compaction took 633 ms
    // in one run; the timing starts after it.
    std::thread::sleep(SETTLE);
    let v4 = fresh_prefixes(&st, n, false, 0)?;
    let v6 = fresh_prefixes(&st, n, true, 0)?;
    let rule_src = fresh_prefixes(&st, n, false, 100)?;
    let set_cmd = |verb: &'static str, nets: &[IpNetwork]| {
        let nets = nets.to_vec();
        move |i: usize| {
            vec![
                "set".into(),
                verb.into(),
                workload::SET.into(),
                nets[i].to_string(),
            ]
        }
    };
    let priority = ((rules as u32 / 2) * 10 + 5).to_string();
    let mut series = vec![time_cli(&d, &bin, "read: xdpgate set list", n, |_| {
        vec!["set".into(), "list".into(), "-o".into(), "json".into()]
    })?];
    series.push(time_cli(
        &d,
        &bin,
        "set add (IPv4 /32)",
        n,
        set_cmd("add", &v4),
    )?);
    series.push(time_cli(
        &d,
        &bin,
        "set del (IPv4 /32)",
        n,
        set_cmd("del", &v4),
    )?);
    series.push(time_cli(
        &d,
        &bin,
        "set add (IPv6 /128)",
        n,
        set_cmd("add", &v6),
    )?);
    series.push(time_cli(
        &d,
        &bin,
        "set del (IPv6 /128)",
        n,
        set_cmd("del", &v6),
    )?);
    series.push(time_cli(&d, &bin, "acl add (new source /32)", n, |i| {
        [
            "acl",
            "add",
            "--id",
            &(2_000_000 + i).to_string(),
            "--priority",
            &priority,
            "--src",
            &rule_src[i].to_string(),
            "--action",
            "deny",
        ]
        .map(String::from)
        .to_vec()
    })?);
    series.push(time_cli(&d, &bin, "acl del", n, |i| {
        vec!["acl".into(), "del".into(), (2_000_000 + i).to_string()]
    })?);
    let status = d.stop_with(libc::SIGTERM);
    if !status.success() {
        bail!("the daemon exited with {status}");
    }
    Ok(CliReport {
        prefixes,
        rules,
        binary: bin,
        load_ms,
        series,
    })
}

/// The targets judged on the CLI round trip: the max of the set changes,
/// of the rule changes, and of every change.
pub(crate) fn targets(r: &CliReport) -> Vec<Target> {
    // (what, rule changes only / set changes only / every change)
    let kinds = [
        ("one-prefix change", Some(false)),
        ("one-rule change", Some(true)),
        ("one-prefix and one-rule change", None),
    ];
    kinds
        .into_iter()
        .map(|(kind, rules)| {
            let worst = r
                .series
                .iter()
                .skip(1)
                .filter(|s| rules.is_none_or(|r| s.what.starts_with("acl") == r))
                .max_by(|a, b| a.max_ms.total_cmp(&b.max_ms));
            Target {
                goal: format!(
                    "{kind} answered by the CLI within {TARGET_MS:.0} ms at {} prefixes per family, {} rules (CLI spawn to exit, every call)",
                    r.prefixes, r.rules
                ),
                measured: worst.map_or_else(
                    || "no change timed".to_string(),
                    |w| {
                        format!(
                            "worst {}: max {:.1} ms (median {:.1}, p99 {:.1}); a read's round trip median {:.1} ms",
                            w.what, w.max_ms, w.median_ms, w.p99_ms, r.series[0].median_ms
                        )
                    },
                ),
                met: worst.map(|w| w.max_ms <= TARGET_MS),
            }
        })
        .collect()
}

/// Prints the CLI half's table.
pub(crate) fn print(r: &crate::report::Section<Vec<CliReport>>) {
    let Some(reps) = &r.result else {
        println!(
            "   CLI round trip: not run: {}",
            r.error.as_deref().unwrap_or("?")
        );
        return;
    };
    for rep in reps {
        print_one(rep);
    }
    println!(
        "   (the CLI process as a user runs it: start, socket round trip, the daemon's change and its journal append with fdatasync before the answer)"
    );
}

fn print_one(rep: &CliReport) {
    println!(
        "   CLI round trip through a running daemon ({}), {} prefixes per family, {} rules (loaded in {:.0} ms):",
        rep.binary.display(),
        rep.prefixes,
        rep.rules,
        rep.load_ms
    );
    println!("   command                                   n | spawn to exit med/p99/max ms");
    for s in &rep.series {
        println!(
            "   {:<40} {:>3} | {:>8.2} {:>8.2} {:>8.2}",
            s.what, s.n, s.median_ms, s.p99_ms, s.max_ms
        );
    }
}

//! xdpgate's benchmark harness (`cargo xtask bench [--quick] [--out PATH]`).
//!
//! 1. ns/packet with `BPF_PROG_TEST_RUN` per packet class, prefix count and rule
//!    count, beside an empty XDP program measured in the same run; then the
//!    load-balancer path (steering program) the same way, and on live frames
//!    beside the empty `XDP_TX` program (a copy of part 3's rig; `--only lb`,
//!    `--only lb-live` run just these);
//! 2. Debian's xdp-filter on the same frames, timed the same way;
//! 3. live frames on a veth pair: Mpps dropped by xdpgate, xdp-filter and
//!    nftables (netdev ingress) on one core;
//! 4. address bindings: seconds to bind and unbind 10,000 IPv4 + 10,000 IPv6
//!    addresses on a veth.
//!
//! Then Maglev ring build times and disruption, in user space
//! (`--only maglev` runs just that, without root or namespaces), and the
//! Internet checksum's throughput (`--only csum`, likewise).
//!
//! 7. update latency: one prefix or one rule added or removed at the
//!    largest prefix count, through the ACL controller as the daemon does
//!    (`--only update` runs just that).
//!
//! 6. the flood: legitimate TCP transactions per second under a SYN and a
//!    UDP flood (live frames), with no protection, xdpgate and nftables, and
//!    the per-packet cost of the limit action and the SYN-cookie path
//!    (`--only flood` runs just that).
//!
//! Everything runs inside network namespaces created here, which are removed
//! on exit (also on failure). See docs/bench.md.
// Raw bpf(2) helpers live in the test library, shared with the tests.
use xdpgate_tests::bpf;
mod bind;
mod csum;
mod flood;
mod lb;
mod lblive;
mod lifecycle;
mod live;
mod maglev;
mod memory;
mod report;
mod testrun;
mod update;
mod workload;
mod xdpfilter;

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Parser;
use xdpgate_tests::lab::{self, Lab, Netns};

#[derive(Parser)]
#[command(name = "xdpgate-bench", about = "xdpgate benchmarks (run as root)")]
struct Cli {
    /// Smaller run: 100,000 repetitions, 1k/100k prefixes, 10/1k rules, 2 s live runs.
    #[arg(long)]
    quick: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench/latest.json")]
    out: PathBuf,
    /// Skip the live-frames parts (drop rates, and the load-balancer path on
    /// live frames).
    #[arg(long)]
    no_live: bool,
    /// Skip xdp-filter (test runs and live frames).
    #[arg(long)]
    no_xdp_filter: bool,
    /// Deny-list sizes per family for xdp-filter's test runs (comma-separated;
    /// default 1000,10000; adding 10,000 takes about 195 s).
    #[arg(long, value_delimiter = ',')]
    xdp_filter_entries: Vec<usize>,
    /// Skip the address-binding timing (part 4).
    #[arg(long)]
    no_bind: bool,
    /// Only the address-binding timing (part 4).
    #[arg(long)]
    only_bind: bool,
    /// Skip the checksum throughput (user space).
    #[arg(long)]
    no_csum: bool,
    /// Only this part: prints its table and its JSON (maglev, csum: user
    /// space, no root, no namespaces; lb, lb-live: root).
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// Prefix counts per family for part 1 (comma-separated; overrides the
    /// default list, for focused runs).
    #[arg(long, value_delimiter = ',')]
    prefixes: Vec<usize>,
    /// Rule counts for part 1 (comma-separated; overrides the default list).
    #[arg(long, value_delimiter = ',')]
    rules: Vec<usize>,
    /// Repetitions per test run (overrides the default).
    #[arg(long)]
    repeat: Option<u32>,
}

/// Parts `--only` runs by themselves.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Only {
    /// Maglev ring build time and disruption.
    Maglev,
    /// Internet checksum throughput: sum_naive, sum_wide, memcpy.
    Csum,
    /// The load-balancer path: test runs (1b), then live frames (1c; not
    /// with --no-live).
    Lb,
    /// The load-balancer path on live frames only (1c).
    LbLive,
    /// The enforcement gap across restarts and upgrades, and the cold start (5).
    Lifecycle,
    /// Legitimate transactions under a SYN + UDP flood, and the cost of the
    /// limit action and the SYN-cookie path (6).
    Flood,
    /// Update latency: single prefix and rule changes (7).
    Update,
    /// The classifier: test runs (1) and xdp-filter on the same frames (2),
    /// with their targets.
    Acl,
    /// Part 1 alone.
    Cost,
    /// Live frames (3) without nftables: the rig's ceiling, xdpgate, and
    /// xdp-filter unless `--no-xdp-filter`.
    Live,
    /// Kernel memory of the datapath's maps at the default and at small
    /// capacities.
    Memory,
}

/// Lab subnet of the benchmark's veth pair (10.200.X.0/24); the tests and the
/// demo use small numbers.
const LAB_SUBNET: u8 = 231;

/// Rounds of the live load-balancer comparison (1c); `--quick`: 3.
const LB_LIVE_ROUNDS: usize = 5;

/// Part 6: window seconds, rounds (ABBA), single SYN runs; `--quick` and
/// the full run.
const FLOOD_QUICK: (f64, usize, usize) = (2.0, 2, 500);
const FLOOD_FULL: (f64, usize, usize) = (3.0, 3, 2000);

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    // The allocator as the daemon sets it: part 7 times the daemon's calls
    // in this process too.
    xdpgate::sys::no_fastbins();
    let cli = Cli::parse();
    if cli.only == Some(Only::Maglev) {
        let m = report::Section::from(Some(maglev::run()));
        maglev::print(&m);
        println!("{}", serde_json::to_string_pretty(&m)?);
        return Ok(());
    }
    if cli.only == Some(Only::Csum) {
        let c = report::Section::from(Some(csum::run()));
        csum::print(&c);
        println!("{}", serde_json::to_string_pretty(&c)?);
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads XDP programs and creates network namespaces: run it as root");
    }
    let (repeat, prefixes, rules, live_secs): (u32, &[usize], &[usize], f64) = if cli.quick {
        (100_000, &[1_000, 100_000], &[10, 1_000], 2.0)
    } else {
        (
            1_000_000,
            &[1_000, 100_000, 1_000_000],
            &[10, 1_000, 10_000],
            4.0,
        )
    };
    let repeat = cli.repeat.unwrap_or(repeat);
    let prefixes = if cli.prefixes.is_empty() {
        prefixes
    } else {
        &cli.prefixes[..]
    };
    let rules = if cli.rules.is_empty() {
        rules
    } else {
        &cli.rules[..]
    };
    if repeat == 0 || prefixes.contains(&0) || rules.contains(&0) {
        bail!("--repeat, --prefixes and --rules take positive numbers");
    }
    // Kernel-touching tests and this benchmark must not overlap: they would
    // disturb each other's timings and namespaces.
    let _serial = lab::serial();
    let started = std::time::Instant::now();
    // 1c: rounds of runs half as long as part 3's.
    let lb_live_rounds = if cli.quick { 3 } else { LB_LIVE_ROUNDS };
    let lb_live_secs = live_secs / 2.0;

    let (flood_secs, flood_rounds, flood_syns) = if cli.quick { FLOOD_QUICK } else { FLOOD_FULL };
    let run_flood = || flood::run(flood_secs, flood_rounds, repeat, flood_syns);
    if cli.only == Some(Only::Flood) {
        let r = report::Section::from(Some(run_flood()));
        flood::print(&r);
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    // 7: the largest prefix count, the smallest and largest rule counts.
    let update_prefixes = prefixes.iter().copied().max().unwrap_or(1);
    let mut update_rules = vec![rules.iter().copied().min().unwrap_or(1)];
    update_rules.extend(
        rules
            .iter()
            .copied()
            .max()
            .filter(|m| *m != update_rules[0]),
    );
    let update_n = if cli.quick { 10 } else { 20 };
    let run_update = |ns: &Netns| update::run(ns, update_prefixes, &update_rules, update_n);
    if cli.only == Some(Only::Update) {
        let ns = Netns::new("bench").context("creating the benchmark namespace")?;
        let r = report::Section::from(Some(run_update(&ns)));
        drop(ns);
        update::print(&r);
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    if cli.only == Some(Only::Lifecycle) {
        let r = report::Section::from(Some(lifecycle::run(cli.quick)));
        lifecycle::print(&r);
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    if matches!(cli.only, Some(Only::Lb | Only::LbLive)) {
        let lb_path = if cli.only == Some(Only::Lb) {
            let ns = Netns::new("bench").context("creating the benchmark namespace")?;
            let r = report::Section::from(Some(lb::run(&ns, repeat)));
            drop(ns);
            Some(r)
        } else {
            None
        };
        let lb_live = report::Section::from(
            (!(cli.no_live && lb_path.is_some()))
                .then(|| lblive::run(lb_live_secs, lb_live_rounds)),
        );
        if let Some(r) = &lb_path {
            lb::print(r);
            println!();
        }
        lblive::print(&lb_live);
        let json = serde_json::json!({ "lb": lb_path, "lb_live": lb_live });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }

    if cli.only == Some(Only::Memory) {
        let ns = Netns::new("benchmem").context("creating the benchmark namespace")?;
        let c = memory::compare(&ns)?;
        memory::print(&c);
        println!("{}", serde_json::to_string_pretty(&c)?);
        return Ok(());
    }
    if cli.only == Some(Only::Cost) {
        let ns = Netns::new("bench").context("creating the benchmark namespace")?;
        let part1 = testrun::run(&ns, repeat, prefixes, rules)?;
        drop(ns);
        let report = report::Report::new(cli.quick, part1, None, None, None, started.elapsed());
        report.print();
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if cli.only == Some(Only::Live) {
        let lab = Lab::new("bench", LAB_SUBNET).context("creating the veth lab")?;
        let l = report::Section::from(Some(live::run(&lab, live_secs, !cli.no_xdp_filter, false)));
        drop(lab);
        match (&l.result, &l.error) {
            (Some(r), _) => live::print(r),
            (None, Some(e)) => println!("3. Live frames: not measured: {e}"),
            _ => {}
        }
        println!("{}", serde_json::to_string_pretty(&l)?);
        return Ok(());
    }
    let bind = if cli.no_bind {
        None
    } else {
        Some(bind::run(10_000))
    };
    if cli.only_bind {
        let bind = report::Section::from(bind);
        report::print_bind(&bind);
        println!("{}", serde_json::to_string_pretty(&bind)?);
        return Ok(());
    }

    let maglev = report::Section::from(Some(maglev::run()));
    let csum = report::Section::from((!cli.no_csum).then(csum::run));
    let ns = Netns::new("bench").context("creating the benchmark namespace")?;
    let part1 = testrun::run(&ns, repeat, prefixes, rules)?;
    let only_acl = cli.only == Some(Only::Acl);
    let memory = report::Section::from((!only_acl).then(|| memory::compare(&ns)));
    let lb_path = report::Section::from((!only_acl).then(|| lb::run(&ns, repeat)));
    let update = report::Section::from((!only_acl).then(|| run_update(&ns)));
    drop(ns);

    let lab = if (!cli.no_live && !only_acl) || !cli.no_xdp_filter {
        Some(Lab::new("bench", LAB_SUBNET).context("creating the veth lab")?)
    } else {
        None
    };
    let filter = if cli.no_xdp_filter {
        None
    } else {
        let lab = lab.as_ref().expect("lab exists");
        let sizes: &[usize] = if !cli.xdp_filter_entries.is_empty() {
            &cli.xdp_filter_entries
        } else if cli.quick {
            &[1_000]
        } else {
            &[1_000, 10_000]
        };
        Some(xdpfilter::run(lab, repeat, &part1.classes, sizes))
    };
    if only_acl {
        drop(lab);
        let report = report::Report::new(cli.quick, part1, filter, None, None, started.elapsed());
        report.print();
        return Ok(());
    }
    let live = if cli.no_live {
        None
    } else {
        let lab = lab.as_ref().expect("lab exists");
        Some(live::run(lab, live_secs, !cli.no_xdp_filter, true))
    };
    drop(lab);
    let lb_live =
        report::Section::from((!cli.no_live).then(|| lblive::run(lb_live_secs, lb_live_rounds)));
    let gap = report::Section::from(Some(lifecycle::run(cli.quick)));
    let flood = report::Section::from(Some(run_flood()));

    let report = report::Report::new(cli.quick, part1, filter, live, bind, started.elapsed());
    report.print();
    println!();
    lb::print(&lb_path);
    println!();
    lblive::print(&lb_live);
    println!();
    maglev::print(&maglev);
    println!();
    csum::print(&csum);
    println!();
    lifecycle::print(&gap);
    println!();
    flood::print(&flood);
    println!();
    update::print(&update);
    println!();
    match (&memory.result, &memory.error) {
        (Some(m), _) => memory::print(m),
        (None, Some(e)) => println!("Kernel memory by configuration: not measured: {e}"),
        _ => {}
    }
    if let Some(dir) = cli.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut json = serde_json::to_value(&report)?;
    json["lb"] = serde_json::to_value(&lb_path)?;
    json["lb_live"] = serde_json::to_value(&lb_live)?;
    json["maglev"] = serde_json::to_value(&maglev)?;
    json["csum"] = serde_json::to_value(&csum)?;
    json["lifecycle"] = serde_json::to_value(&gap)?;
    json["flood"] = serde_json::to_value(&flood)?;
    json["update"] = serde_json::to_value(&update)?;
    json["memory"] = serde_json::to_value(&memory)?;
    std::fs::write(&cli.out, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", cli.out.display()))?;
    eprintln!("bench: wrote {}", cli.out.display());
    Ok(())
}

//! Part 5: the enforcement gap. A flood of denied UDP datagrams (both
//! families, sockets in the peer namespace, as fast as two threads send)
//! and a stream of allowed ones (1,000/s) cross a default-deny interface
//! while the daemon is killed and started again, stopped and started, and
//! replaced by another build of the program (same schema) and by a build of
//! the next schema. Sockets behind XDP count the denied datagrams that got
//! through (target: 0 in every case) and the time between the first and the
//! last of them (the gap, 0 when none). Then the time from `xdpgate run` to
//! enforcing with 1,000,000 prefixes per family.
//!
//! The daemon binaries come from `cargo xtask bench`: `XDPGATE_BIN` (release
//! build), `XDPGATE_BIN_VARIANT` and `XDPGATE_BIN_SCHEMA` (see
//! `xtask/src/main.rs`, `build_variant`).
use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;
use xdpgate_tests::{
    lab::Lab,
    xdpgate::{Daemon, StateDirs, binary, sum},
};

use crate::report::{Section, Target};

/// Lab subnet of this part (10.200.X.0/24).
const SUBNET: u8 = 243;
const ALLOWED: u16 = 7000;
const DENIED: u16 = 7001;
/// Time without a daemon between the stop and the next start.
const DOWN: Duration = Duration::from_secs(1);

/// One scenario's outcome.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Gap {
    /// What happened to the daemon.
    pub scenario: String,
    /// Denied datagrams sent during the scenario.
    pub denied_sent: u64,
    /// Denied datagrams that reached a socket behind XDP.
    pub leaked: u64,
    /// Time between the first and the last leaked datagram, ms (0: none).
    pub gap_ms: f64,
    /// Allowed datagrams sent and received.
    pub allowed_sent: u64,
    /// Allowed datagrams received.
    pub allowed_received: u64,
}

/// Part 5's results.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LifecycleReport {
    /// One row per scenario.
    pub gaps: Vec<Gap>,
    /// Seconds from `xdpgate run` to its "ready" line with 1,000,000
    /// prefixes per family (the program attaches last).
    pub cold_start_s: f64,
    /// Packets the program passed at that cold start under the flood (its
    /// own counters): 0 when the first packet met the whole policy.
    pub cold_start_passed: u64,
    /// Packets it dropped then.
    pub cold_start_dropped: u64,
    /// The targets.
    pub targets: Vec<Target>,
}

/// What leaked: count, first and last arrival.
#[derive(Default)]
struct Leaks {
    count: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// The flood and the counters behind XDP.
struct Flood {
    stop: Arc<AtomicBool>,
    leaks: Arc<Mutex<Leaks>>,
    denied_sent: Arc<AtomicU64>,
    allowed_sent: Arc<AtomicU64>,
    allowed_received: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Flood {
    fn start(lab: &Lab) -> anyhow::Result<Flood> {
        let stop = Arc::new(AtomicBool::new(false));
        let leaks = Arc::new(Mutex::new(Leaks::default()));
        let (denied_sent, allowed_sent, allowed_received) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let mut threads = Vec::new();
        let (allowed, denied) = lab.a.run(|| -> std::io::Result<_> {
            let bind = |port| {
                let s = UdpSocket::bind(SocketAddr::from(([0u16; 8], port)))?;
                s.set_read_timeout(Some(Duration::from_millis(20)))?;
                Ok::<_, std::io::Error>(s)
            };
            Ok((bind(ALLOWED)?, bind(DENIED)?))
        })?;
        {
            let (stop, leaks) = (stop.clone(), leaks.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 16];
                while !stop.load(Ordering::Relaxed) {
                    if denied.recv_from(&mut buf).is_ok() {
                        let now = Instant::now();
                        let mut l = leaks
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        l.count += 1;
                        l.first.get_or_insert(now);
                        l.last = Some(now);
                    }
                }
            }));
        }
        {
            let (stop, got) = (stop.clone(), allowed_received.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 16];
                while !stop.load(Ordering::Relaxed) {
                    if allowed.recv_from(&mut buf).is_ok() {
                        got.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        let v4 = SocketAddr::from((lab.a_end.ipv4, DENIED));
        let v6 = SocketAddr::from((lab.a_end.ipv6, DENIED));
        for dst in [v4, v6] {
            let sock = lab
                .b
                .run(|| UdpSocket::bind(if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }))?;
            let (stop, sent) = (stop.clone(), denied_sent.clone());
            threads.push(std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if sock.send_to(b"denied", dst).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        let sock = lab.b.run(|| UdpSocket::bind("0.0.0.0:0"))?;
        let dst = SocketAddr::from((lab.a_end.ipv4, ALLOWED));
        let (s, sent) = (stop.clone(), allowed_sent.clone());
        threads.push(std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                if sock.send_to(b"allowed", dst).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }));
        Ok(Flood {
            stop,
            leaks,
            denied_sent,
            allowed_sent,
            allowed_received,
            threads,
        })
    }

    fn stop(self, scenario: &str) -> Gap {
        std::thread::sleep(Duration::from_millis(100));
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let l = self
            .leaks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Gap {
            scenario: scenario.into(),
            denied_sent: self.denied_sent.load(Ordering::Relaxed),
            leaked: l.count,
            gap_ms: match (l.first, l.last) {
                (Some(a), Some(b)) => (b - a).as_secs_f64() * 1e3,
                _ => 0.0,
            },
            allowed_sent: self.allowed_sent.load(Ordering::Relaxed),
            allowed_received: self.allowed_received.load(Ordering::Relaxed),
        }
    }
}

fn env_binary(var: &str) -> anyhow::Result<PathBuf> {
    match std::env::var_os(var).map(PathBuf::from) {
        Some(p) if p.is_file() => Ok(p),
        _ => bail!(
            "{var} is not set to a build of xdpgate: run the benchmark through `cargo xtask bench`"
        ),
    }
}

/// Denies everything but UDP to `ALLOWED`.
fn rules(dir: &Path, iface: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join("rules.toml");
    std::fs::write(
        &p,
        format!(
            "[[rule]]\nid = 1\npriority = 1\nproto = \"udp\"\ndport = {ALLOWED}\naction = \"allow\"\n\n[policy]\n{iface} = \"deny\"\n"
        ),
    )?;
    Ok(p)
}

/// Runs a daemon of `first`, floods, stops it with `signal`, waits, starts
/// `next` on the same pins, floods on, and reports.
fn scenario(name: &str, signal: i32, first: &Path, next: &Path) -> anyhow::Result<Gap> {
    let lab = Lab::new("benchlc", SUBNET).context("lab")?;
    let iface = lab.a_end.ifname.clone();
    let dirs = StateDirs::unique("benchlc");
    std::fs::create_dir_all(&dirs.run)?;
    let file = rules(&dirs.run, &iface)?;
    let args = [
        "--acl-file".as_ref(),
        file.as_os_str(),
        "--no-metrics".as_ref(),
    ];
    let d = Daemon::start_binary(&lab.a, dirs, first, &[&iface], "native", &args)
        .map_err(anyhow::Error::msg)?;
    let flood = Flood::start(&lab)?;
    std::thread::sleep(Duration::from_millis(500));
    let (_, dirs) = d.stop_keeping_state(signal);
    std::thread::sleep(DOWN);
    let d = Daemon::start_binary(&lab.a, dirs, next, &[&iface], "native", &args)
        .map_err(anyhow::Error::msg)?;
    std::thread::sleep(Duration::from_millis(500));
    let gap = flood.stop(name);
    drop(d);
    Ok(gap)
}

/// Seconds from the start to "ready" with `n` prefixes per family, under
/// the flood (started before the daemon); what the program then passed and
/// dropped by its own counters.
fn cold_start(bin: &Path, n: u32) -> anyhow::Result<(f64, u64, u64)> {
    let lab = Lab::new("benchlcc", SUBNET).context("lab")?;
    let iface = lab.a_end.ifname.clone();
    let dirs = StateDirs::unique("benchlcc");
    std::fs::create_dir_all(&dirs.run)?;
    let mut set = String::with_capacity(n as usize * 48);
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 0));
    for i in 0..n {
        let _ = write!(
            set,
            "\"{}/32\",\"fd00:200:ffff::{:x}:{:x}/128\",",
            Ipv4Addr::from(base + i),
            i >> 16,
            i & 0xffff
        );
    }
    let file = dirs.run.join("big.toml");
    std::fs::write(
        &file,
        format!(
            "[sets]\nbig = [{set}]\n\n[[rule]]\nid = 1\npriority = 1\nsrc = \"@big\"\naction = \"deny\"\n\n[policy]\n{iface} = \"deny\"\n"
        ),
    )?;
    let args = [
        "--acl-file".as_ref(),
        file.as_os_str(),
        "--no-metrics".as_ref(),
    ];
    let flood = Flood::start(&lab)?;
    let t0 = Instant::now();
    let d = Daemon::start_binary(&lab.a, dirs, bin, &[&iface], "native", &args)
        .map_err(anyhow::Error::msg)?;
    let s = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let rows = d.stats(&lab.a);
    let _ = flood.stop("cold start");
    let (passed, _) = sum(&rows, &iface, None, Some("pass"));
    let (dropped, _) = sum(&rows, &iface, None, Some("drop"));
    drop(d);
    Ok((s, passed, dropped))
}

/// Part 5.
pub(crate) fn run(quick: bool) -> anyhow::Result<LifecycleReport> {
    let this = binary();
    let variant = env_binary("XDPGATE_BIN_VARIANT")?;
    let schema = env_binary("XDPGATE_BIN_SCHEMA")?;
    let gaps = vec![
        scenario("SIGKILL, 1 s down, start", libc::SIGKILL, &this, &this)?,
        scenario(
            "SIGTERM, 1 s down, start (restart)",
            libc::SIGTERM,
            &this,
            &this,
        )?,
        scenario(
            "upgrade, same schema, another program",
            libc::SIGTERM,
            &this,
            &variant,
        )?,
        scenario(
            "upgrade to the next schema (migration)",
            libc::SIGTERM,
            &this,
            &schema,
        )?,
    ];
    let n = if quick { 100_000 } else { 1_000_000 };
    let (cold_start_s, cold_start_passed, cold_start_dropped) = cold_start(&this, n)?;
    let mut targets: Vec<Target> = gaps
        .iter()
        .map(|g| Target {
            goal: format!("0 denied packets through: {}", g.scenario),
            measured: format!(
                "{} of {} leaked, gap {:.1} ms; allowed {} of {} received",
                g.leaked, g.denied_sent, g.gap_ms, g.allowed_received, g.allowed_sent
            ),
            met: Some(g.leaked == 0),
        })
        .collect();
    targets.push(Target {
        goal: format!(
            "cold start with {n} prefixes per family under the flood: the program passes 0 packets"
        ),
        measured: format!(
            "{cold_start_passed} passed, {cold_start_dropped} dropped; enforcing {cold_start_s:.1} s after the start (the program attaches only after every table is written)"
        ),
        met: Some(cold_start_passed == 0),
    });
    Ok(LifecycleReport {
        gaps,
        cold_start_s,
        cold_start_passed,
        cold_start_dropped,
        targets,
    })
}

/// Prints part 5.
pub(crate) fn print(r: &Section<LifecycleReport>) {
    println!(
        "5. Enforcement gap: denied UDP flood (both families) and 1,000 allowed datagrams/s through a default-deny veth while the daemon goes away and comes back"
    );
    match (&r.result, &r.error) {
        (Some(r), _) => {
            println!(
                "   {:<42} {:>10} {:>7} {:>8} {:>15}",
                "scenario", "denied", "leaked", "gap ms", "allowed rx/tx"
            );
            for g in &r.gaps {
                println!(
                    "   {:<42} {:>10} {:>7} {:>8.1} {:>7}/{:<7}",
                    g.scenario,
                    g.denied_sent,
                    g.leaked,
                    g.gap_ms,
                    g.allowed_received,
                    g.allowed_sent
                );
            }
            for t in &r.targets {
                t.print("   ");
            }
        }
        (None, Some(e)) => println!("   not run: {e}"),
        (None, None) => println!("   not run"),
    }
}

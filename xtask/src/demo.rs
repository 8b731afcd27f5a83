//! `cargo xtask demo`: xdpgate on a throw-away dual-stack lab, or on real NICs;
//! `cargo xtask demo --lb`: the load balancer in its three-role lab.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use xdpgate_tests::{
    lab::Lab,
    lblab::{
        EchoServer, Flow, SVC4, SVC6, Topo, backend_of, echo_all_for, lb_add, num, run_flows,
        service, start_backend, start_lb, vip4, vip6,
    },
    xdpgate::{Daemon, sum},
};

use crate::say;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Points the lab helpers at `bin` and installs the Ctrl-C handlers.
fn prepare(bin: &Path) {
    // SAFETY: single-threaded here; the lab helpers read XDPGATE_BIN.
    unsafe { std::env::set_var("XDPGATE_BIN", bin) };
    install_signal_handlers();
}

/// Runs the demo until `duration` elapses or Ctrl-C.
pub(crate) fn run(
    bin: &Path,
    duration: Option<u64>,
    ifaces: &[String],
    mode: &str,
) -> anyhow::Result<()> {
    prepare(bin);
    let deadline = duration.map(|d| Instant::now() + Duration::from_secs(d));
    let done = || STOP.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d);
    let half = Duration::from_secs(duration.map_or(5, |d| d / 2));
    if ifaces.is_empty() {
        lab_demo(mode, half, &done)
    } else {
        nic_demo(bin, ifaces, mode, &done)
    }
}

fn lab_demo(mode: &str, half: Duration, done: &dyn Fn() -> bool) -> anyhow::Result<()> {
    say("creating a two-namespace dual-stack lab (10.200.1.0/24, fd00:200:1::/64)");
    let lab = Lab::new("demo", 1).context("creating the lab")?;
    say(&format!(
        "lab: {} [{} {} {}] <-veth-> {} [{} {} {}]",
        lab.a.name(),
        lab.a_end.ifname,
        lab.a_end.ipv4,
        lab.a_end.ipv6,
        lab.b.name(),
        lab.b_end.ifname,
        lab.b_end.ipv4,
        lab.b_end.ipv6
    ));
    say(&format!(
        "starting xdpgate run --iface {} --mode {mode} in {}",
        lab.a_end.ifname,
        lab.a.name()
    ));
    let daemon = Daemon::start(&lab.a, &[&lab.a_end.ifname], mode)
        .map_err(|e| anyhow::anyhow!("xdpgate did not start: {e}"))?;
    say("driving ping, ping -6, UDP and TCP from the peer namespace; Ctrl-C stops");

    let targets = [IpAddr::V4(lab.a_end.ipv4), IpAddr::V6(lab.a_end.ipv6)];
    let mut last_print = Instant::now() - Duration::from_secs(10);
    let mut first: Option<Vec<serde_json::Value>> = None;
    let started = Instant::now();
    let mut rule_installed = false;
    while !done() {
        // Halfway through (or after 5 s without --duration): show the ACL at
        // work by denying IPv4 ICMP from the peer at runtime.
        if !rule_installed && started.elapsed() >= half {
            rule_installed = true;
            let peer = format!("{}/32", lab.b_end.ipv4);
            say(&format!(
                "installing a rule at runtime: xdpgate acl add --id 1 --priority 1 --src {peer} --proto icmp --action deny"
            ));
            let out = daemon.dirs.run(
                &lab.a,
                &[
                    "acl",
                    "add",
                    "--id",
                    "1",
                    "--priority",
                    "1",
                    "--src",
                    &peer,
                    "--proto",
                    "icmp",
                    "--action",
                    "deny",
                ],
                Duration::from_secs(30),
            );
            if !out.status.success() {
                bail!("acl add failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            say("ping to the IPv4 address is now dropped by the gate (watch ipv4 drop)");
        }
        for t in targets {
            let ping = lab
                .b
                .command("ping")
                .args(["-c", "1", "-W", "1", "-q", &t.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if let Err(e) = ping {
                bail!("cannot run ping: {e}");
            }
        }
        lab.b.run(|| {
            for t in targets {
                // UDP to the discard port and a TCP connect to a closed port:
                // both draw an answer (ICMP unreachable, RST) and cross the gate.
                if let Ok(s) = UdpSocket::bind(SocketAddr::new(
                    if t.is_ipv4() {
                        "0.0.0.0".parse().unwrap()
                    } else {
                        "::".parse().unwrap()
                    },
                    0,
                )) {
                    let _ = s.send_to(b"xdpgate demo", SocketAddr::new(t, 9));
                }
                let _ =
                    TcpStream::connect_timeout(&SocketAddr::new(t, 9), Duration::from_millis(500));
            }
        });
        if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            let out = daemon.dirs.run(&lab.a, &["stats"], Duration::from_secs(10));
            println!("{}", String::from_utf8_lossy(&out.stdout));
            if first.is_none() {
                first = Some(daemon.stats(&lab.a));
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }

    let end = daemon.stats(&lab.a);
    let begin = first.unwrap_or_default();
    let iface = lab.a_end.ifname.as_str();
    let mut report = Vec::new();
    for family in ["ipv4", "ipv6"] {
        let (p0, _) = sum(&begin, iface, Some(family), None);
        let (p1, b1) = sum(&end, iface, Some(family), None);
        report.push((family, p1.saturating_sub(p0), p1, b1));
    }
    let (dropped, _) = sum(&end, iface, Some("ipv4"), Some("drop"));
    say("stopping xdpgate (SIGTERM): the datapath stays enforcing without it");
    let (status, dirs) = daemon.stop_keeping_state(libc::SIGTERM);
    say("xdpgate down: detaching and removing the pins");
    dirs.run_ok(&lab.a, &["down"]);
    drop(dirs);
    let names = (lab.a.name().to_owned(), lab.b.name().to_owned());
    drop(lab);
    say(&format!("removed the lab ({} and {})", names.0, names.1));
    for (family, rise, packets, bytes) in &report {
        say(&format!(
            "{family}: {packets} packets, {bytes} bytes ({rise} since the first report)"
        ));
    }
    if !status.success() {
        bail!("xdpgate exited with {status}");
    }
    say(&format!(
        "ipv4 packets dropped by the runtime rule: {dropped}"
    ));
    if report.iter().any(|(_, _, packets, _)| *packets == 0) {
        bail!("a family saw no packets: the demo traffic did not cross the gate");
    }
    if rule_installed && dropped == 0 {
        bail!("the runtime deny rule dropped nothing");
    }
    Ok(())
}

fn nic_demo(
    bin: &Path,
    ifaces: &[String],
    mode: &str,
    done: &dyn Fn() -> bool,
) -> anyhow::Result<()> {
    let mut cmd = Command::new(bin);
    cmd.arg("run").args(["--mode", mode]);
    for i in ifaces {
        cmd.args(["--iface", i]);
    }
    say(&format!("starting {cmd:?}"));
    let mut child = cmd
        .stdin(Stdio::null())
        .spawn()
        .context("starting xdpgate")?;
    std::thread::sleep(Duration::from_secs(1));
    while !done() {
        if let Some(status) = child.try_wait()? {
            bail!("xdpgate exited with {status}");
        }
        let out = Command::new(bin).arg("stats").output()?;
        println!("{}", String::from_utf8_lossy(&out.stdout));
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until && !done() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait()?;
    if !status.success() {
        bail!("xdpgate exited with {status}");
    }
    // SIGTERM leaves the datapath enforcing; the demo takes it off again.
    say("xdpgate down: detaching and removing the pins");
    let down = Command::new(bin).arg("down").status()?;
    if !down.success() {
        bail!("xdpgate down exited with {down}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// cargo xtask demo --lb
// ---------------------------------------------------------------------------

/// Shortest `--duration` with `--lb`: the drain and the restore each get a
/// quarter, at least 3 s for health checks of 0.5 s (fall 2, rise 2).
/// Checked before the build.
pub(crate) const LB_MIN_SECS: u64 = 12;
/// The schedule without `--duration`: be2 drained at half of it, restored at
/// three quarters; traffic goes on until Ctrl-C.
const LB_DEFAULT_SECS: u64 = 20;
/// Connections per VIP in one batch (all at once, each bounded by its
/// timeouts).
const LB_BATCH: u16 = 12;
/// Pause between batches.
const LB_PAUSE: Duration = Duration::from_millis(100);
/// Client source ports, per VIP: `LB_SPORT_BASE..LB_SPORT_BASE + LB_SPORT_SPAN`,
/// in turn (a port comes back after minutes, long after the backend's
/// TIME_WAIT of its last connection ended).
const LB_SPORT_BASE: u16 = 40_000;
/// How many source ports the client takes in turn.
const LB_SPORT_SPAN: u16 = 20_000;
/// Health checks of both services.
const LB_HEALTH: [&str; 10] = [
    "--health",
    "tcp",
    "--interval",
    "0.5",
    "--timeout",
    "0.3",
    "--rise",
    "2",
    "--fall",
    "2",
];

/// Runs the load-balancer demo (`--lb`) until `duration` seconds of traffic
/// passed or Ctrl-C.
pub(crate) fn run_lb(bin: &Path, duration: Option<u64>) -> anyhow::Result<()> {
    prepare(bin);
    // The lab's helpers panic (they are test helpers); what they built is
    // removed while the panic unwinds, which ends here.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lb_demo(duration))) {
        Ok(r) => r,
        Err(_) => bail!(
            "the load-balancer lab failed (see the panic above); its namespaces and daemons \
             are gone"
        ),
    }
}

/// Which VIP: index 0 the IPv4 VIP, 1 the IPv6 VIP.
fn vip_index(vip: IpAddr) -> usize {
    usize::from(vip.is_ipv6())
}

/// The VIPs by [`vip_index`], for messages.
const VIP_NAMES: [&str; 2] = ["IPv4 VIP", "IPv6 VIP"];

/// Where be2 is in the demo's schedule.
#[derive(Clone, Copy, PartialEq)]
enum Phase {
    /// Both backends serve.
    Both,
    /// be2's listeners stopped at the instant; not out of the rings yet.
    Draining(Instant),
    /// `lb list` showed be2 down in both services at the instant.
    Drained(Instant),
    /// be2's listeners started again at the instant; not back yet.
    Restoring(Instant),
    /// `lb list` showed be2 back.
    Restored,
}

/// Connections served per backend name and VIP.
type Served = BTreeMap<String, [u64; 2]>;

/// What the traffic loop counted.
#[derive(Default)]
struct LbTally {
    total: Served,
    since_print: Served,
    /// Per VIP: failed outside the drained window, failed inside it.
    failed_outside: [u64; 2],
    failed_window: [u64; 2],
    failed_since_print: u64,
    /// The first failures outside the window.
    errors: Vec<String>,
    /// Per backend, while `lb list` showed be2 drained.
    while_drained: Served,
    /// be2's connections after it was shown back.
    be2_after_restore: u64,
}

fn served_text(m: &Served) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(name, [v4, v6])| format!("{name} v4 {v4:>3} v6 {v6:>3}"))
        .collect::<Vec<_>>()
        .join("  ")
}

/// `lb list -o json` of the LB, or `None` if it failed (the daemon is gone,
/// e.g. it got the terminal's Ctrl-C too).
fn try_lb_list(lb: &Daemon, topo: &Topo) -> Option<serde_json::Value> {
    let out = lb.dirs.run(
        &topo.lb.ns,
        &["lb", "list", "-o", "json"],
        Duration::from_secs(10),
    );
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Prints one compact line per backend of both services of `list`.
fn print_lb_view(topo: &Topo, list: &serde_json::Value) {
    for id in [SVC4, SVC6] {
        let svc = service(list, id);
        for (i, b) in svc["backends"].as_array().into_iter().flatten().enumerate() {
            let addr: IpAddr = b["addr"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            println!(
                "  {:<22} {:<4} {:<18} {:<4} ring {:>6}  packets {:>8}",
                if i == 0 { id } else { "" },
                topo.owner(addr).name,
                addr.to_string(),
                if b["healthy"].as_bool() == Some(true) {
                    "up"
                } else {
                    "down"
                },
                num(b, "ring_entries"),
                num(b, "packets"),
            );
        }
    }
}

/// be2's state in both services of `list`: `Some(up)` when its health and
/// ring entries agree (up with entries, or down with none) in both, `None`
/// while they do not.
fn be2_state(list: &serde_json::Value, be2: [IpAddr; 2]) -> Option<bool> {
    let mut states = [SVC4, SVC6].iter().zip(be2).map(|(id, addr)| {
        let b = backend_of(service(list, id), addr)?;
        let up = b["healthy"].as_bool()?;
        (up == (num(b, "ring_entries") > 0)).then_some(up)
    });
    let first = states.next()??;
    states.all(|s| s == Some(first)).then_some(first)
}

/// The LB lab: client, LB, be1 and be2 (both `--decap`); both VIPs with an
/// IPv4 and an IPv6 backend, weights 1 and 2, TCP health checks.
fn lb_demo(duration: Option<u64>) -> anyhow::Result<()> {
    say(
        "creating the load-balancer lab: a switch namespace (bridge) with client, lb, be1 and \
         be2 on 10.200.60.0/24 and fd00:200:60::/64; VIPs 192.0.2.10 and 2001:db8::10 on the \
         backends' lo",
    );
    let topo = Topo::new(2);
    let names: Vec<String> = [&topo.client, &topo.lb]
        .into_iter()
        .chain(&topo.backends)
        .map(|n| format!("{} ({})", n.name, n.ns.name()))
        .collect();
    say(&format!("lab up: {}", names.join(", ")));
    let (be1, be2) = (topo.backend("be1"), topo.backend("be2"));
    // Echo servers outlive the traffic (their accept loops are bounded).
    let lifetime = Duration::from_secs(duration.unwrap_or(24 * 3600) + 60);
    let mut echo = echo_all_for(&topo, lifetime);
    say("echo servers on port 80 of be1 and be2, both families (they greet with their name)");
    say("starting xdpgate run --decap --mode native on be1 and be2, xdpgate run on lb");
    let backend_daemons: Vec<Daemon> = topo.backends.iter().map(start_backend).collect();
    let lb = start_lb(&topo);
    let set4 = [(be1.addr(true), 1), (be2.addr(false), 2)];
    let set6 = [(be1.addr(false), 1), (be2.addr(true), 2)];
    for (id, set) in [(SVC4, &set4), (SVC6, &set6)] {
        let backends: Vec<String> = set
            .iter()
            .map(|(a, w)| format!("--backend {a} weight={w}"))
            .collect();
        say(&format!(
            "xdpgate lb add {id} {} {}",
            backends.join(" "),
            LB_HEALTH.join(" ")
        ));
        lb_add(&lb, &topo, id, set, &LB_HEALTH);
    }
    let be2_addrs = [set4[1].0, set6[1].0];
    // Backends start up; this waits for lb list to show it (bounded).
    let up_by = Instant::now() + Duration::from_secs(10);
    let mut list = None;
    while Instant::now() < up_by && !STOP.load(Ordering::SeqCst) {
        list = try_lb_list(&lb, &topo);
        if list.as_ref().and_then(|l| be2_state(l, be2_addrs)) == Some(true) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(list) = list {
        println!("lb list before any traffic:");
        print_lb_view(&topo, &list);
    }

    let secs = duration.unwrap_or(LB_DEFAULT_SECS);
    let drain_at = Duration::from_secs(secs) / 2;
    let restore_at = Duration::from_secs(secs) * 3 / 4;
    say(&format!(
        "driving batches of {LB_BATCH} short TCP connections per VIP from the client (source \
         ports {LB_SPORT_BASE}..{}); be2's listeners stop at {drain_at:?} and start again at \
         {restore_at:?}; {}",
        LB_SPORT_BASE + LB_SPORT_SPAN - 1,
        match duration {
            Some(d) => format!("{d} s of traffic"),
            None => "Ctrl-C stops".into(),
        }
    ));
    let started = Instant::now();
    let deadline = duration.map(|d| started + Duration::from_secs(d));
    let done = || STOP.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d);
    let mut phase = Phase::Both;
    let mut t = LbTally::default();
    let mut next_port: u16 = 0;
    let mut last_print = Instant::now();
    let mut lost_lb = false;
    while !done() {
        let now = started.elapsed();
        if phase == Phase::Both && now >= drain_at {
            echo.remove(&("be2".to_owned(), true));
            echo.remove(&("be2".to_owned(), false));
            say(
                "halfway: be2's echo servers stopped (listeners closed); its TCP health checks \
                 fail and after fall 2 x 0.5 s it leaves both rings",
            );
            phase = Phase::Draining(Instant::now());
        }
        if matches!(phase, Phase::Draining(_) | Phase::Drained(_)) && now >= restore_at {
            match phase {
                Phase::Drained(_) => {
                    let on_be2 = t.while_drained.get("be2").map_or(0, |c| c[0] + c[1]);
                    let n: u64 = t.while_drained.values().flatten().sum();
                    say(&format!(
                        "while be2 was drained: {n} connections, {}",
                        if on_be2 == 0 {
                            "all on be1".to_owned()
                        } else {
                            format!("{on_be2} of them on be2 (!)")
                        }
                    ));
                }
                _ => say("be2 was not drained before its restore"),
            }
            for v4 in [true, false] {
                echo.insert(
                    ("be2".to_owned(), v4),
                    EchoServer::start_for(be2, v4, lifetime),
                );
            }
            say(
                "three quarters: be2's echo servers started again; after rise 2 x 0.5 s it \
                 rejoins both rings",
            );
            phase = Phase::Restoring(Instant::now());
        }

        // One batch of both VIPs. Connections of a batch started between
        // be2's stop and the sight of its return may fail: that is the
        // drained window.
        let in_window = matches!(
            phase,
            Phase::Draining(_) | Phase::Drained(_) | Phase::Restoring(_)
        );
        let batch: Vec<Flow> = (0..LB_BATCH)
            .flat_map(|i| {
                let sport = LB_SPORT_BASE + (next_port + i) % LB_SPORT_SPAN;
                [vip4(), vip6()].map(|vip| Flow {
                    vip,
                    sport,
                    len: 64 + (usize::from(sport) * 37) % 1984,
                })
            })
            .collect();
        next_port = (next_port + LB_BATCH) % LB_SPORT_SPAN;
        let results = run_flows(&topo, &batch, batch.len());
        // A terminal's Ctrl-C stops the daemons too: the batch it cut short
        // counts its successes only.
        let cut_short = STOP.load(Ordering::SeqCst);
        for (f, r) in batch.iter().zip(results) {
            let v = vip_index(f.vip);
            match r {
                Ok(name) => {
                    for m in [&mut t.total, &mut t.since_print] {
                        m.entry(name.clone()).or_default()[v] += 1;
                    }
                    if matches!(phase, Phase::Drained(_)) {
                        t.while_drained.entry(name.clone()).or_default()[v] += 1;
                    }
                    if phase == Phase::Restored && name == "be2" {
                        t.be2_after_restore += 1;
                    }
                }
                Err(_) if cut_short => {}
                Err(e) => {
                    t.failed_since_print += 1;
                    if in_window {
                        t.failed_window[v] += 1;
                    } else {
                        t.failed_outside[v] += 1;
                        if t.errors.len() < 5 {
                            t.errors.push(e);
                        }
                    }
                }
            }
        }

        // Watch lb list while be2 leaves or returns.
        if let Phase::Draining(since) | Phase::Restoring(since) = phase {
            let Some(list) = try_lb_list(&lb, &topo) else {
                lost_lb = true;
                break;
            };
            match (phase, be2_state(&list, be2_addrs)) {
                (Phase::Draining(_), Some(false)) => {
                    say(&format!(
                        "be2 is down in lb list {:.1} s after its listeners stopped: 0 ring \
                         entries in both services, new connections go to be1 only ({} \
                         refused meanwhile)",
                        since.elapsed().as_secs_f64(),
                        t.failed_window[0] + t.failed_window[1]
                    ));
                    print_lb_view(&topo, &list);
                    phase = Phase::Drained(Instant::now());
                }
                (Phase::Restoring(_), Some(true)) => {
                    say(&format!(
                        "be2 is back in lb list {:.1} s after its listeners started: up, with \
                         its ring entries again",
                        since.elapsed().as_secs_f64()
                    ));
                    print_lb_view(&topo, &list);
                    phase = Phase::Restored;
                }
                _ => {}
            }
        }

        if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            let Some(list) = try_lb_list(&lb, &topo) else {
                lost_lb = true;
                break;
            };
            println!(
                "[{:>5.1} s] served since the last view: {}  failed {}",
                started.elapsed().as_secs_f64(),
                served_text(&t.since_print),
                t.failed_since_print
            );
            print_lb_view(&topo, &list);
            t.since_print.clear();
            t.failed_since_print = 0;
        }
        std::thread::sleep(LB_PAUSE);
    }
    let interrupted = STOP.load(Ordering::SeqCst);
    let traffic = started.elapsed();

    say("stopping the daemons (SIGTERM)");
    let mut bad_exits = Vec::new();
    for (name, d) in std::iter::once(("lb", lb)).chain(
        topo.backends
            .iter()
            .map(|b| b.name.as_str())
            .zip(backend_daemons),
    ) {
        let status = d.stop_with(libc::SIGTERM);
        if !status.success() {
            bad_exits.push(format!("{name}: {status}"));
        }
    }
    drop(echo);
    let ns_names: Vec<String> = [&topo.client, &topo.lb]
        .into_iter()
        .chain(&topo.backends)
        .map(|n| n.ns.name().to_owned())
        .collect();
    drop(topo);
    say(&format!(
        "removed the lab ({} and the switch namespace)",
        ns_names.join(", ")
    ));

    say(&format!(
        "totals after {:.1} s of traffic:",
        traffic.as_secs_f64()
    ));
    for name in ["be1", "be2"] {
        let [v4, v6] = t.total.get(name).copied().unwrap_or_default();
        say(&format!("  {name}: IPv4 VIP {v4}, IPv6 VIP {v6}"));
    }
    for (v, vip_name) in VIP_NAMES.iter().enumerate() {
        say(&format!(
            "  {}: {} failed outside the drained window, {} inside it",
            vip_name, t.failed_outside[v], t.failed_window[v]
        ));
    }
    if phase == Phase::Restored {
        say(&format!(
            "  be2 after its return: {} connections",
            t.be2_after_restore
        ));
    }

    let mut problems = Vec::new();
    if !bad_exits.is_empty() {
        problems.push(format!("daemons exited badly: {}", bad_exits.join(", ")));
    }
    if lost_lb && !interrupted {
        problems.push("lb list failed: the LB daemon is gone".into());
    }
    for (v, vip_name) in VIP_NAMES.iter().enumerate() {
        if t.failed_outside[v] > 0 {
            problems.push(format!(
                "{}: {} connections failed outside the drained window, first: {}",
                vip_name,
                t.failed_outside[v],
                t.errors.join("; ")
            ));
        }
    }
    for name in ["be1", "be2"] {
        if t.total.get(name).is_none_or(|c| c[0] + c[1] == 0) {
            problems.push(format!("{name} served no connection"));
        }
    }
    if let Some(c) = t.while_drained.get("be2") {
        problems.push(format!(
            "{} connections reached be2 while lb list showed it drained",
            c[0] + c[1]
        ));
    }
    if !interrupted {
        match phase {
            Phase::Draining(_) => problems.push("be2 never showed down in lb list".into()),
            Phase::Restoring(_) => problems.push("be2 never came back in lb list".into()),
            _ => {}
        }
    }
    if !problems.is_empty() {
        bail!(
            "the load-balancer demo failed:\n  {}",
            problems.join("\n  ")
        );
    }
    say("ok: both VIPs served by both backends; be2 drained and came back");
    Ok(())
}

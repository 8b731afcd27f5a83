//! `cargo xtask demo`: xdpgate on a throw-away dual-stack lab, or on real NICs.
use std::{
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use xdpgate_tests::{
    lab::Lab,
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

/// Runs the demo until `duration` elapses or Ctrl-C.
pub fn run(bin: &Path, duration: Option<u64>, ifaces: &[String], mode: &str) -> anyhow::Result<()> {
    // SAFETY: single-threaded here; the lab helpers read XDPGATE_BIN.
    unsafe { std::env::set_var("XDPGATE_BIN", bin) };
    install_signal_handlers();
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
    say("stopping xdpgate (SIGTERM)");
    let status = daemon.stop_with(libc::SIGTERM);
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
    Ok(())
}

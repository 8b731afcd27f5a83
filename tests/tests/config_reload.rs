//! Configuration, state file and reload (end to end): the daemon under a
//! configuration file. Rules and bindings change through the CLI while ping,
//! TCP and UDP of both families run; a restart comes back with the same state
//! (the state file); a broken configuration sent with SIGHUP or `xdpgate
//! reload` leaves the running one enforced; and every malformed configuration
//! and API request gets its clear error and changes nothing.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use xdpgate_tests::{
    lab::{Lab, serial},
    traffic::{ping_ok, reach, tcp_ok, udp_ok},
    xdpgate::{Daemon, StateDirs},
};

fn cli(dirs: &StateDirs, lab: &Lab, args: &[&str]) -> std::process::Output {
    dirs.run(&lab.a, args, Duration::from_secs(60))
}

fn cli_ok(dirs: &StateDirs, lab: &Lab, args: &[&str]) -> String {
    dirs.run_ok(&lab.a, args)
}

/// Rules (without counters), sets and bindings as the daemon lists them.
fn snapshot(dirs: &StateDirs, lab: &Lab) -> (Value, Value, Value) {
    let mut acl: Value = serde_json::from_str(&cli_ok(dirs, lab, &["acl", "list", "-o", "json"]))
        .expect("acl list JSON");
    for r in acl["rules"].as_array_mut().into_iter().flatten() {
        let o = r.as_object_mut().unwrap();
        o.remove("packets");
        o.remove("bytes");
    }
    for r in acl["defaults"].as_array_mut().into_iter().flatten() {
        let o = r.as_object_mut().unwrap();
        o.remove("packets");
        o.remove("bytes");
    }
    let sets = serde_json::from_str(&cli_ok(dirs, lab, &["set", "list", "-o", "json"])).unwrap();
    let binds = serde_json::from_str(&cli_ok(dirs, lab, &["bind", "list", "-o", "json"])).unwrap();
    (acl, sets, binds)
}

/// The addresses on `ifname` in `a` (`ip -j addr`), as strings.
fn addrs_on(lab: &Lab, ifname: &str) -> Vec<String> {
    let out = lab
        .a
        .exec("ip", &["-j", "addr", "show", "dev", ifname])
        .expect("ip addr");
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["local"].as_str().map(str::to_owned))
        .collect()
}

fn wait_log(d: &Daemon, what: &str, after: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = d.log();
        if log[after.min(log.len())..].contains(what) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "daemon never logged {what:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Background ping, TCP and UDP of both families to addresses no change
/// touches; counts failures.
struct Background {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
    rounds: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    fn start(lab: Arc<Lab>, addrs: Vec<IpAddr>) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicU64::new(0));
        let rounds = Arc::new(AtomicU64::new(0));
        let (s, f, r) = (stop.clone(), failures.clone(), rounds.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: at most 10 minutes or 2,000 rounds.
            let deadline = Instant::now() + Duration::from_secs(600);
            for _ in 0..2000 {
                if s.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                for a in &addrs {
                    for ok in [ping_ok(&lab, *a), tcp_ok(&lab, *a), udp_ok(&lab, *a)] {
                        if !ok {
                            f.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                r.fetch_add(1, Ordering::Relaxed);
            }
        });
        Background {
            stop,
            failures,
            rounds,
            thread: Some(thread),
        }
    }

    /// Stops and returns (rounds, failures).
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        (
            self.rounds.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct TempFile(PathBuf);
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn config_path(tag: &str) -> TempFile {
    TempFile(std::env::temp_dir().join(format!("xdpgate-{tag}-{}.toml", std::process::id())))
}

/// The lab configuration: the a end's own addresses are bound (adopted), and
/// `extra` addresses are bound (added); traffic to anything else is dropped;
/// rule 10 denies TCP to the extra addresses.
fn lab_config(lab: &Lab, extra: &[IpAddr], with_rule: bool) -> String {
    let iface = &lab.a_end.ifname;
    let mut c = format!(
        "[daemon]\nshutdown_grace_seconds = 3\n\n[metrics]\nlisten = [\"127.0.0.1:9464\", \"[::1]:9464\"]\n\n\
         [[interface]]\nname = \"{iface}\"\nmode = \"native\"\ndrop_unbound = true\n\n\
         [[bind]]\niface = \"{iface}\"\nspec = \"{}\"\n\n[[bind]]\niface = \"{iface}\"\nspec = \"{}\"\nnodad = true\n\n",
        lab.a_end.ipv4, lab.a_end.ipv6
    );
    for a in extra {
        c.push_str(&format!(
            "[[bind]]\niface = \"{iface}\"\nspec = \"{a}\"\nnodad = true\n\n"
        ));
    }
    c.push_str("[sets]\nextra = [");
    c.push_str(
        &extra
            .iter()
            .map(|a| format!("\"{a}/{}\"", if a.is_ipv4() { 32 } else { 128 }))
            .collect::<Vec<_>>()
            .join(", "),
    );
    c.push_str("]\n\n");
    if with_rule {
        c.push_str("[[rule]]\nid = 10\npriority = 10\ndst = \"@extra\"\nproto = \"tcp\"\naction = \"deny\"\n");
    }
    c
}

fn metrics_scrape(lab: &Lab) -> String {
    lab.a.run(|| {
        let mut s = std::net::TcpStream::connect_timeout(
            &"127.0.0.1:9464".parse().unwrap(),
            Duration::from_secs(2),
        )
        .expect("connect to the metrics listener");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    })
}

fn metric(text: &str, name_and_labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| name_and_labels.iter().all(|p| l.contains(p)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn config_runtime_changes_restart_and_reload_under_live_traffic() {
    let _g = serial();
    let lab = Arc::new(Lab::new("ctl", 50).expect("lab"));
    let iface = lab.a_end.ifname.clone();
    let (v4, v6) = (IpAddr::V4(lab.a_end.ipv4), IpAddr::V6(lab.a_end.ipv6));
    let x4: IpAddr = "10.200.50.10".parse().unwrap();
    let x6: IpAddr = "fd00:200:50::10".parse().unwrap();
    let r4: IpAddr = "10.200.50.20".parse().unwrap();
    let r6: IpAddr = "fd00:200:50::20".parse().unwrap();
    // On the interface, but never bound: the kernel would answer, xdpgate must not let it.
    lab.a
        .exec("ip", &["addr", "add", "10.200.50.30/32", "dev", &iface])
        .unwrap();
    let stray: IpAddr = "10.200.50.30".parse().unwrap();

    let cfg = config_path("ctl");
    std::fs::write(&cfg.0, lab_config(&lab, &[x4, x6], true)).unwrap();
    let check = StateDirs::unique("chk");
    let out = check.run(
        &lab.a,
        &["check", "--config", cfg.0.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "check: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cfg_arg = ["--config".as_ref(), cfg.0.as_os_str()];
    let d = Daemon::start_in(&lab.a, StateDirs::unique("ctl"), &[], "", &cfg_arg)
        .expect("run --config");
    assert!(
        d.log().contains("state from the configuration"),
        "{}",
        d.log()
    );

    // The configuration is in force.
    assert_eq!(reach(&lab, v4), (true, true, true), "v4 baseline");
    assert_eq!(reach(&lab, v6), (true, true, true), "v6 baseline");
    assert_eq!(
        reach(&lab, x4),
        (true, false, true),
        "rule 10 denies TCP to x4"
    );
    assert_eq!(
        reach(&lab, x6),
        (true, false, true),
        "rule 10 denies TCP to x6"
    );
    assert!(!ping_ok(&lab, stray), "an unbound address is dropped");
    let on = addrs_on(&lab, &iface);
    for a in [x4, x6] {
        assert_eq!(
            on.iter().filter(|s| **s == a.to_string()).count(),
            1,
            "{a} added once: {on:?}"
        );
    }
    let report = d.report(&lab.a);
    let not_bound: u64 = report["malformed"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(report["drops"].as_array().into_iter().flatten())
        .filter(|r| r["reason"] == "not_bound")
        .map(|r| r["packets"].as_u64().unwrap())
        .sum();
    assert!(
        not_bound >= 1,
        "the stray ping is counted as not_bound: {report}"
    );
    let m = metrics_scrape(&lab);
    assert!(m.contains("xdpgate_packets_total"), "metrics: {m}");

    // Runtime changes under live traffic of both families.
    let bg = Background::start(lab.clone(), vec![v4, v6]);
    cli_ok(
        &d.dirs,
        &lab,
        &[
            "bind",
            "add",
            &r4.to_string(),
            &r6.to_string(),
            "--iface",
            &iface,
            "--nodad",
        ],
    );
    cli_ok(
        &d.dirs,
        &lab,
        &[
            "acl",
            "add",
            "--id",
            "20",
            "--priority",
            "20",
            "--dst",
            &format!("{r4}/32"),
            "--proto",
            "udp",
            "--action",
            "deny",
        ],
    );
    cli_ok(
        &d.dirs,
        &lab,
        &[
            "acl",
            "add",
            "--id",
            "21",
            "--priority",
            "21",
            "--dst",
            &format!("{r6}/128"),
            "--proto",
            "udp",
            "--action",
            "deny",
        ],
    );
    assert_eq!(
        reach(&lab, r4),
        (true, true, false),
        "runtime bind + rule 20"
    );
    assert_eq!(
        reach(&lab, r6),
        (true, true, false),
        "runtime bind + rule 21"
    );
    cli_ok(
        &d.dirs,
        &lab,
        &["bind", "del", &x6.to_string(), "--iface", &iface],
    );
    assert!(
        !addrs_on(&lab, &iface).contains(&x6.to_string()),
        "x6 was added by xdpgate: removed"
    );
    assert!(!ping_ok(&lab, x6), "x6 is gone");
    let (rounds, failures) = bg.finish();
    assert!(rounds >= 1, "background traffic ran");
    assert_eq!(
        failures, 0,
        "untouched flows kept working through {rounds} rounds of changes"
    );
    let before = snapshot(&d.dirs, &lab);

    // Restart: the same state comes back from the state file.
    let (status, dirs) = d.stop_keeping_state(libc::SIGTERM);
    assert!(status.success(), "SIGTERM exit: {status}");
    assert!(
        addrs_on(&lab, &iface).contains(&r4.to_string()),
        "bound addresses stay across a restart"
    );
    let d = Daemon::start_in(&lab.a, dirs, &[], "", &cfg_arg).expect("restart");
    assert!(d.log().contains("state from the state file"), "{}", d.log());
    assert_eq!(
        snapshot(&d.dirs, &lab),
        before,
        "same state after a restart"
    );
    assert_eq!(reach(&lab, r4), (true, true, false));
    assert_eq!(reach(&lab, r6), (true, true, false));
    assert_eq!(reach(&lab, x4), (true, false, true));
    assert!(!ping_ok(&lab, x6));
    let on = addrs_on(&lab, &iface);
    assert_eq!(
        on.iter().filter(|s| **s == r4.to_string()).count(),
        1,
        "not duplicated: {on:?}"
    );

    // A broken configuration, by SIGHUP and by `xdpgate reload`: the running
    // state stays in force.
    let good = std::fs::read_to_string(&cfg.0).unwrap();
    std::fs::write(
        &cfg.0,
        good.replace("dst = \"@extra\"", "dst = \"@nosuch\""),
    )
    .unwrap();
    let mark = d.log().len();
    d.signal(libc::SIGHUP);
    let log = wait_log(&d, "reload failed", mark);
    assert!(
        log[mark..].contains("unknown set @nosuch"),
        "{}",
        &log[mark..]
    );
    let out = cli(&d.dirs, &lab, &["reload"]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "reload of a broken config exits 64"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown set @nosuch") && err.contains(":"),
        "{err}"
    );
    assert_eq!(
        snapshot(&d.dirs, &lab),
        before,
        "a broken config changed nothing"
    );
    assert_eq!(
        reach(&lab, x4),
        (true, false, true),
        "old rules still enforced"
    );
    assert_eq!(
        reach(&lab, r4),
        (true, true, false),
        "old runtime rules still enforced"
    );

    // A valid edit, reloaded: the file is the state in force again.
    std::fs::write(&cfg.0, lab_config(&lab, &[x4, x6], false)).unwrap();
    let msg = cli_ok(&d.dirs, &lab, &["reload"]);
    assert!(msg.contains("reloaded"), "{msg}");
    assert_eq!(reach(&lab, x4), (true, true, true), "rule 10 is gone");
    assert_eq!(reach(&lab, x6), (true, true, true), "x6 is bound again");
    let on = addrs_on(&lab, &iface);
    assert!(
        !on.contains(&r4.to_string()),
        "runtime binding r4 (added) removed by the reload: {on:?}"
    );
    assert!(
        on.contains(&v4.to_string()) && on.contains(&v6.to_string()),
        "adopted addresses stay: {on:?}"
    );
    let m = metrics_scrape(&lab);
    assert_eq!(
        metric(&m, &["xdpgate_config_last_reload_successful"]),
        Some(1.0),
        "{m}"
    );

    let status = d.stop_with(libc::SIGTERM);
    assert!(status.success());
}

/// Sends raw bytes as one API request and reads the one-line answer.
fn raw_request(socket: &Path, ns_lab: &Lab, body: &[u8]) -> Value {
    let socket = socket.to_path_buf();
    let body = body.to_vec();
    ns_lab.a.run(move || {
        let s = UnixStream::connect(&socket).expect("connect to the API socket");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        (&s).write_all(&body).unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer {line:?}: {e}"))
    })
}

#[test]
fn bad_configs_and_bad_requests_change_nothing() {
    let _g = serial();
    let lab = Arc::new(Lab::new("bad", 51).expect("lab"));
    let iface = lab.a_end.ifname.clone();
    let x4: IpAddr = "10.200.51.10".parse().unwrap();
    let cfg = config_path("bad");
    let good = lab_config(&lab, &[x4], true);
    std::fs::write(&cfg.0, &good).unwrap();
    let cfg_arg = ["--config".as_ref(), cfg.0.as_os_str()];
    let d = Daemon::start_in(&lab.a, StateDirs::unique("bad"), &[], "", &cfg_arg)
        .expect("run --config");
    let before = snapshot(&d.dirs, &lab);
    let addrs_before = addrs_on(&lab, &iface);

    // Malformed configurations: `check` locates the error and exits 64; a
    // reload with them is refused with 64 and changes nothing.
    let bad_configs: Vec<(String, &str)> = vec![
        (good.replace("[daemon]", "[daemon"), ":1:8: unclosed table"),
        (good.replace("[daemon]", "[deamon]"), "deamon"),
        (
            good.replace("mode = \"native\"", "mode = \"turbo\""),
            "turbo",
        ),
        (
            good.replace("dst = \"@extra\"", "dst = \"@nosuch\""),
            "unknown set @nosuch",
        ),
        (
            good.replace("proto = \"tcp\"", "proto = \"tcp\"\ndport = 70000"),
            "70000 is not a port",
        ),
        (
            good.replace("10.200.51.10/32", "10.200.51.10/24"),
            "host bits set",
        ),
        (
            format!("{good}\n[[rule]]\nid = 10\npriority = 1\naction = \"allow\"\n"),
            "used more than once",
        ),
        (
            good.replace(&format!("spec = \"{x4}\""), "spec = \"10.200.51.300\""),
            "10.200.51.300",
        ),
        (
            good.replace(&format!("spec = \"{x4}\""), "spec = \"10.200.0.0/8\""),
            "10.200.0.0/8",
        ),
        (
            good.replace("listen = [\"127.0.0.1:9464\"", "listen = [\"localhost\""),
            "localhost",
        ),
        (
            format!("{good}\n[[bind]]\niface = \"nosuch0\"\nspec = \"10.200.51.11\"\n"),
            "nosuch0",
        ),
    ];
    for (text, what) in &bad_configs {
        std::fs::write(&cfg.0, text).unwrap();
        let out = cli(
            &d.dirs,
            &lab,
            &["check", "--config", cfg.0.to_str().unwrap()],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(64),
            "check of a config with {what:?}: {err}"
        );
        assert!(err.contains(what), "check names {what:?}: {err}");
        assert!(
            err.contains(&format!("{}:", cfg.0.display())),
            "check gives the location: {err}"
        );
        let out = cli(&d.dirs, &lab, &["reload"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(64),
            "reload of a config with {what:?}: {err}"
        );
        assert_eq!(
            snapshot(&d.dirs, &lab),
            before,
            "config with {what:?} changed the state"
        );
        assert_eq!(
            addrs_on(&lab, &iface),
            addrs_before,
            "config with {what:?} changed addresses"
        );
    }
    std::fs::write(&cfg.0, &good).unwrap();

    // Malformed API requests: each gets ok=false and its error; nothing changes.
    let socket = d.dirs.run.join("xdpgate.sock");
    let requests: Vec<(Vec<u8>, &str)> = vec![
        (b"this is not json\n".to_vec(), "bad request"),
        (b"{\"cmd\":\"format_disk\"}\n".to_vec(), "bad request"),
        (b"{\"cmd\":\"apply\"}\n".to_vec(), "bad request"),
        (
            br#"{"cmd":"apply","change":{"op":"rule_add","rules":[{"id":99,"priority":1,"dport":"9-1","proto":6,"action":"deny"}]}}"#.iter().chain(b"\n").copied().collect(),
            "port",
        ),
        (
            br#"{"cmd":"apply","change":{"op":"set_add","name":"extra","prefixes":["10.200.51.1/8","not-a-prefix"]}}"#.iter().chain(b"\n").copied().collect(),
            "bad prefix",
        ),
        (
            br#"{"cmd":"apply","change":{"op":"rule_del","ids":[12345]}}"#.iter().chain(b"\n").copied().collect(),
            "no rule with id 12345",
        ),
        (
            format!(r#"{{"cmd":"bind_add","binds":[{{"iface":"{iface}","spec":"10.200.51.12"}},{{"iface":"{iface}","spec":"10.200.51.999"}}]}}"#).into_bytes().into_iter().chain(*b"\n").collect(),
            "10.200.51.999",
        ),
        (
            br#"{"cmd":"bind_add","binds":[{"iface":"nosuch0","spec":"10.200.51.12"}]}"#.iter().chain(b"\n").copied().collect(),
            "nosuch0",
        ),
    ];
    for (body, what) in &requests {
        let v = raw_request(&socket, &lab, body);
        assert_eq!(
            v["ok"],
            false,
            "request {:?}: {v}",
            String::from_utf8_lossy(body)
        );
        let errs = v["errors"].to_string();
        assert!(
            errs.contains(what),
            "request {:?} names {what:?}: {v}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(
            snapshot(&d.dirs, &lab),
            before,
            "request {:?} changed the state",
            String::from_utf8_lossy(body)
        );
        assert_eq!(addrs_on(&lab, &iface), addrs_before);
    }

    // A stuck client (half a request, never finished) does not stall others.
    let stuck_socket = socket.clone();
    let stuck = lab.a.run(move || {
        let s = UnixStream::connect(&stuck_socket).unwrap();
        (&s).write_all(b"{\"cmd\":\"acl_li").unwrap();
        s
    });
    let t0 = Instant::now();
    let v = raw_request(&socket, &lab, b"{\"cmd\":\"acl_list\"}\n");
    assert_eq!(v["ok"], true);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "a stuck client stalled another"
    );
    cli_ok(
        &d.dirs,
        &lab,
        &[
            "acl",
            "add",
            "--id",
            "30",
            "--priority",
            "30",
            "--proto",
            "udp",
            "--dport",
            "9",
            "--action",
            "deny",
        ],
    );
    cli_ok(&d.dirs, &lab, &["acl", "del", "30"]);
    drop(stuck);
    assert_eq!(snapshot(&d.dirs, &lab), before);

    // Shutdown is not held up by a stuck client either.
    let stuck_socket = socket.clone();
    let _stuck = lab.a.run(move || {
        let s = UnixStream::connect(&stuck_socket).unwrap();
        (&s).write_all(b"{\"cmd\":").unwrap();
        s
    });
    let t0 = Instant::now();
    let status = d.stop_with(libc::SIGTERM);
    assert!(status.success());
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "shutdown waited on a stuck client"
    );
}

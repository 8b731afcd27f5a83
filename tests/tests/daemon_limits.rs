//! The daemon under hostile or unlucky clients (issue 14): thousands of idle
//! API clients and an exhausted file-descriptor table neither spin it nor
//! keep `stats` waiting; oversized requests are refused within a memory
//! bound; reads answer within 100 ms and health checks hold while a million
//! prefixes load and ten thousand IPv6 addresses bind; a long change whose
//! client goes away is stopped and undone.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    os::unix::net::UnixStream,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use xdpgate_tests::{
    lab::{Lab, Netns, serial},
    xdpgate::Daemon,
};

/// CPU seconds (user + system) the process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command (which may contain spaces) start after ')'.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 (1-based), 12 and 13 here.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// Resident memory of `pid` in bytes.
fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count()
}

/// Sets the open-file limit of `pid` (soft:hard; without CAP_SYS_RESOURCE
/// a hard limit can only be lowered).
fn prlimit_nofile(pid: u32, soft: u64, hard: u64) {
    let out = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={soft}:{hard}"),
        ])
        .output()
        .expect("prlimit");
    assert!(out.status.success(), "prlimit: {out:?}");
}

/// Raises this test process's own open-file soft limit to its hard limit
/// (it holds thousands of client sockets).
fn raise_own_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to rlimit structures.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim);
    }
    assert!(
        lim.rlim_max >= 4096,
        "hard open-file limit {}",
        lim.rlim_max
    );
}

/// One API request on `stream`; the answer, or `None` when the connection
/// was closed without one (bounded by `timeout`).
fn ask(stream: &UnixStream, req: &str, timeout: Duration) -> Option<Value> {
    let _ = (&*stream).write_all(format!("{req}\n").as_bytes());
    answer(stream, req, timeout)
}

/// The next answer on `stream` (to `req`), or `None` when the connection was
/// closed without one (bounded by `timeout`).
fn answer(stream: &UnixStream, req: &str, timeout: Duration) -> Option<Value> {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line) {
        Ok(0) => None,
        Ok(_) => Some(serde_json::from_str(&line).expect("answer JSON")),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
        Err(e) => panic!("no answer to {req} within {timeout:?}: {e}"),
    }
}

/// `req` on a fresh connection, with how long the answer took.
fn timed(socket: &Path, req: &str) -> (Value, Duration) {
    let t = Instant::now();
    let s = UnixStream::connect(socket).expect("connect");
    let v = ask(&s, req, Duration::from_secs(10)).expect("answer");
    (v, t.elapsed())
}

fn api_log_lines(d: &Daemon) -> usize {
    d.log().lines().filter(|l| l.contains("api:")).count()
}

#[test]
fn two_thousand_idle_clients_and_exhausted_descriptors_neither_spin_the_daemon_nor_keep_stats_waiting()
 {
    let _g = serial();
    raise_own_nofile();
    let lab = Lab::new("apifd", 70).expect("lab");
    let d = Daemon::start(&lab.b, &[&lab.b_end.ifname], "skb").expect("xdpgate run");
    let socket = d.dirs.run.join("xdpgate.sock");
    let pid = d.pid();
    // The defect's setting: the default limit of 1,024 open files.
    prlimit_nofile(pid, 1024, 1024);

    // 2,000 clients connect and send nothing.
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    let clients: Vec<UnixStream> = (0..2000)
        .map(|i| UnixStream::connect(&socket).unwrap_or_else(|e| panic!("client {i} connect: {e}")))
        .collect();
    thread::sleep(Duration::from_millis(1200));
    let (stats, took) = timed(&socket, r#"{"cmd":"stats"}"#);
    assert_eq!(stats["ok"], true, "{stats}");
    assert!(
        took < Duration::from_secs(1),
        "stats took {took:?} with 2,000 idle clients"
    );
    // Every held client gets an answer, a refusal or a clean close, at once.
    let (mut answered, mut refused, mut closed) = (0, 0, 0);
    for c in &clients {
        match ask(c, r#"{"cmd":"status"}"#, Duration::from_secs(5)) {
            Some(v) if v["ok"] == true => answered += 1,
            Some(v) => {
                let e = v["errors"].to_string();
                assert!(e.contains("too many API connections"), "{v}");
                refused += 1;
            }
            None => closed += 1,
        }
    }
    let (cpu, wall) = (cpu_seconds(pid) - cpu0, t0.elapsed());
    drop(clients);
    eprintln!(
        "2,000 idle clients: stats in {took:?}; {answered} answered, {refused} refused, {closed} closed to make room; daemon CPU {cpu:.2} s in {wall:?}; {} api log line(s)",
        api_log_lines(&d)
    );
    assert!(answered >= 100, "only {answered} held clients answered");
    assert!(
        cpu < wall.as_secs_f64() / 2.0,
        "daemon used {cpu:.2} CPU-s in {wall:?}"
    );
    assert!(api_log_lines(&d) <= 3, "{}", d.log());

    // Out of descriptors: the accept loop pauses instead of spinning and
    // logs once; when descriptors are free again, stats answers.
    // The daemon closes the dropped clients' connections.
    let t = Instant::now();
    let mut idle = open_fds(pid);
    loop {
        thread::sleep(Duration::from_millis(200));
        let now = open_fds(pid);
        if now == idle || t.elapsed() > Duration::from_secs(10) {
            break;
        }
        idle = now;
    }
    let idle = idle as u64;
    prlimit_nofile(pid, idle + 4, 1024);
    let logs0 = api_log_lines(&d);
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    let held: Vec<UnixStream> = (0..40)
        .map(|_| UnixStream::connect(&socket).expect("connect"))
        .collect();
    thread::sleep(Duration::from_secs(5));
    let cpu = cpu_seconds(pid) - cpu0;
    let logged = api_log_lines(&d) - logs0;
    eprintln!(
        "EMFILE for {:?}: daemon CPU {cpu:.3} s, {logged} log line(s)",
        t0.elapsed()
    );
    assert!(cpu < 1.0, "the accept loop spun: {cpu:.2} CPU-s in 5 s");
    assert!((1..=2).contains(&logged), "{logged} log lines: {}", d.log());
    prlimit_nofile(pid, 1024, 1024);
    let (stats, took) = timed(&socket, r#"{"cmd":"stats"}"#);
    assert_eq!(stats["ok"], true, "{stats}");
    // At most one pause of the backoff (0.5 s) after the limit is raised.
    assert!(took < Duration::from_secs(1), "stats took {took:?}");
    drop(held);
}

#[test]
fn oversized_requests_are_refused_and_the_daemon_memory_stays_bounded() {
    let _g = serial();
    let lab = Lab::new("apimem", 71).expect("lab");
    let d = Daemon::start(&lab.b, &[&lab.b_end.ifname], "skb").expect("xdpgate run");
    let socket = d.dirs.run.join("xdpgate.sock");
    let pid = d.pid();
    let base = rss(pid);
    // Four clients each send 200 MB of one unterminated line.
    let done = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let socket = socket.clone();
            thread::spawn(move || {
                let mut s = UnixStream::connect(&socket).expect("connect");
                s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
                let chunk = vec![b' '; 1 << 20];
                let mut sent = 0usize;
                let _ = s.write_all(b"{\"cmd\":\"set_list\",\"name\":\"");
                while sent < 200 << 20 {
                    if s.write_all(&chunk).is_err() {
                        break;
                    }
                    sent += chunk.len();
                }
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                (sent, answer)
            })
        })
        .collect();
    let mut peak = base;
    let watcher = {
        let done = done.clone();
        thread::spawn(move || {
            let mut peak = 0;
            let t = Instant::now();
            while !done.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(120) {
                peak = peak.max(rss(pid));
                thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let outcomes: Vec<(usize, String)> = senders.into_iter().map(|h| h.join().unwrap()).collect();
    done.store(true, Ordering::Relaxed);
    peak = peak.max(watcher.join().unwrap());
    for (sent, answer) in &outcomes {
        eprintln!("sent {} MiB, answer: {}", sent >> 20, answer.trim());
        assert!(
            answer.contains("request larger than") || answer.contains("too many large requests"),
            "{answer}"
        );
    }
    let grown = peak.saturating_sub(base);
    eprintln!(
        "RSS {} MiB before, peak {} MiB (+{} MiB)",
        base >> 20,
        peak >> 20,
        grown >> 20
    );
    // Two requests of at most 80 MiB, in whole chunks, plus slack.
    assert!(grown < 224 << 20, "RSS grew by {} MiB", grown >> 20);
    let (status, _) = timed(&socket, r#"{"cmd":"status"}"#);
    assert_eq!(status["ok"], true, "{status}");
}

/// A TCP listener in `ns` at `addr` that accepts and closes (a health-check
/// target), until `stop`.
fn target(ns: &Netns, addr: SocketAddr, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    let l = ns.run(|| TcpListener::bind(addr)).expect("listen");
    l.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        let t = Instant::now();
        while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(600) {
            match l.accept() {
                Ok(_) => {}
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    })
}

/// Health probes and failures over every target of `lb_list`.
fn health(socket: &Path) -> (u64, u64, usize) {
    let (v, _) = timed(socket, r#"{"cmd":"lb_list"}"#);
    let h = v["result"]["health"].as_array().expect("health").clone();
    let sum = |k: &str| h.iter().map(|t| t[k].as_u64().unwrap()).sum::<u64>();
    let up = h.iter().filter(|t| t["up"] == true).count();
    (sum("checks_total"), sum("failures_total"), up)
}

/// Polls `stats` and `status` on fresh connections until the CLI command
/// `change` exits (bounded by 300 s); returns the slowest answer, how many
/// `status` answers showed the change in progress, and how many reads there
/// were. Fails if the change failed.
fn poll_reads(socket: &Path, change: &mut std::process::Child) -> Reads {
    let mut r = Reads::default();
    let t = Instant::now();
    loop {
        if let Some(st) = change.try_wait().unwrap() {
            assert!(st.success(), "the change failed: {st}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the change took over 300 s"
        );
        for req in [r#"{"cmd":"stats"}"#, r#"{"cmd":"status"}"#] {
            let (v, took) = timed(socket, req);
            assert_eq!(v["ok"], true, "{v}");
            r.worst = r.worst.max(took);
            r.n += 1;
            if took > Duration::from_millis(100) {
                r.slow += 1;
            }
            if !v["result"]["busy"].is_null() {
                r.busy += 1;
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    r
}

/// What [`poll_reads`] saw.
#[derive(Debug, Default)]
struct Reads {
    /// Reads.
    n: usize,
    /// The slowest.
    worst: Duration,
    /// Reads over 100 ms.
    slow: usize,
    /// `status` answers that showed the change running.
    busy: usize,
}

impl Reads {
    /// Reads answer within 100 ms: every one on a quiet machine; on these
    /// shared 2-core machines the scheduler may delay one now and then, so
    /// at most 1% may be slower, and none takes a second.
    fn assert_quick(&self, what: &str) {
        eprintln!("{what}: {self:?}");
        assert!(
            self.busy > 0,
            "{what}: no read was answered while the change ran"
        );
        assert!(
            self.slow * 100 <= self.n && self.worst < Duration::from_secs(1),
            "{what}: {} of {} reads over 100 ms, slowest {:?}",
            self.slow,
            self.n,
            self.worst
        );
    }
}

#[test]
fn reads_answer_within_100_ms_and_health_checks_hold_while_long_changes_run() {
    let _g = serial();
    let lab = Lab::new("apibusy", 72).expect("lab");
    let ifname = lab.b_end.ifname.clone();
    let d = Daemon::start(&lab.b, &[&ifname], "skb").expect("xdpgate run");
    let socket = d.dirs.run.join("xdpgate.sock");
    let stop = Arc::new(AtomicBool::new(false));
    let port = 8080;
    let targets = [
        target(&lab.b, (lab.b_end.ipv4, port).into(), stop.clone()),
        target(&lab.b, (lab.b_end.ipv6, port).into(), stop.clone()),
    ];
    d.dirs.run_ok(
        &lab.b,
        &[
            "lb",
            "add",
            &format!("192.0.2.10:{port}/tcp"),
            "--backend",
            &lab.b_end.ipv4.to_string(),
            "--backend",
            &lab.b_end.ipv6.to_string(),
            "--health",
            "tcp",
            "--interval",
            "0.2",
            "--timeout",
            "0.1",
            "--rise",
            "1",
            "--fall",
            "1",
        ],
    );
    let t = Instant::now();
    while health(&socket).2 < 2 {
        assert!(t.elapsed() < Duration::from_secs(5), "backends not up");
        thread::sleep(Duration::from_millis(100));
    }

    // A million prefixes (half of each family) in one set, used by a rule.
    let file = std::env::temp_dir().join(format!("xdpgate-busy-{}.txt", std::process::id()));
    let mut text = String::with_capacity(30 << 20);
    for i in 0..500_000u32 {
        text.push_str(&format!(
            "{}.{}.{}.0/24\n{:x}:{:x}::/32\n",
            10 + (i >> 16),
            (i >> 8) & 255,
            i & 255,
            0x2001 + (i >> 16),
            i & 0xffff
        ));
    }
    std::fs::write(&file, text).unwrap();
    let (checks0, failures0, _) = health(&socket);
    let mut load = d
        .dirs
        .command(&lab.b)
        .args(["set", "add", "big", "--file"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("set add");
    let reads = poll_reads(&socket, &mut load);
    let _ = std::fs::remove_file(&file);
    let (checks1, failures1, up) = health(&socket);
    eprintln!(
        "1M prefixes: health checks {} with {} failures, {up} up",
        checks1 - checks0,
        failures1 - failures0
    );
    reads.assert_quick("reads while 1M prefixes load");
    assert_eq!(
        failures1 - failures0,
        0,
        "health checks failed during the load"
    );
    assert!(checks1 - checks0 >= 5, "too few health checks ran");
    assert_eq!(up, 2);

    // Ten thousand IPv6 addresses, bound in one request.
    let range = |hi: u32| format!("fd00:200:72:1::1-fd00:200:72:1::{:x}", hi);
    let mut bind = d
        .dirs
        .command(&lab.b)
        .args(["bind", "add", "--iface", &ifname, "--nodad", &range(10_000)])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("bind add");
    let reads = poll_reads(&socket, &mut bind);
    let (checks2, failures2, up) = health(&socket);
    eprintln!(
        "10,000 IPv6 binds: health checks {} with {} failures, {up} up",
        checks2 - checks1,
        failures2 - failures1
    );
    reads.assert_quick("reads while 10,000 IPv6 addresses bind");
    assert_eq!(
        failures2 - failures1,
        0,
        "health checks failed during the binds"
    );
    assert_eq!(up, 2);

    // A client that goes away stops its change, which is undone.
    let count = |d: &Daemon| {
        let (v, _) = timed(&d.dirs.run.join("xdpgate.sock"), r#"{"cmd":"bind_list"}"#);
        v["result"]["bindings"].as_array().expect("bindings").len()
    };
    assert_eq!(count(&d), 10_000);
    let req = format!(
        r#"{{"cmd":"bind_add","binds":[{{"iface":"{ifname}","spec":"fd00:200:72:2::1-fd00:200:72:2::2710","nodad":true}}]}}"#
    );
    let c = UnixStream::connect(&socket).expect("connect");
    (&c).write_all(format!("{req}\n").as_bytes()).unwrap();
    let t = Instant::now();
    loop {
        let (v, _) = timed(&socket, r#"{"cmd":"status"}"#);
        if v["result"]["busy"]["done"].as_u64().unwrap_or(0) >= 500 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "bind never progressed: {v}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    drop(c);
    let t = Instant::now();
    loop {
        let (v, _) = timed(&socket, r#"{"cmd":"status"}"#);
        if v["result"]["busy"].is_null() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "change not stopped: {v}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let stopped = t.elapsed();
    assert_eq!(count(&d), 10_000, "the stopped change left bindings");
    let left = kernel_addrs(&lab.b, &ifname, "fd00:200:72:2:");
    assert_eq!(left, 0, "the stopped change left {left} kernel addresses");
    assert!(
        d.log().contains("stopped: the client went away"),
        "{}",
        d.log()
    );
    eprintln!("a bind whose client left stopped and was undone {stopped:?} after the client left");
    stop.store(true, Ordering::Relaxed);
    for t in targets {
        t.join().unwrap();
    }
}

/// How many IPv6 addresses on `ifname` in `ns` start with `prefix`.
fn kernel_addrs(ns: &Netns, ifname: &str, prefix: &str) -> usize {
    ns.exec("ip", &["-6", "-o", "addr", "show", "dev", ifname])
        .expect("ip addr")
        .lines()
        .filter(|l| l.contains(prefix))
        .count()
}

/// Waits (bounded by 60 s) until `status` shows a running change with at
/// least `done` items done.
fn wait_progress(socket: &Path, done: u64) {
    let t = Instant::now();
    loop {
        let (v, _) = timed(socket, r#"{"cmd":"status"}"#);
        if v["result"]["busy"]["done"].as_u64().unwrap_or(0) >= done {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no progress: {v}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_during_a_long_bind_stops_it_undone_and_the_daemon_exits_promptly() {
    let _g = serial();
    let lab = Lab::new("apiterm", 73).expect("lab");
    let ifname = lab.b_end.ifname.clone();
    let d = Daemon::start(&lab.b, &[&ifname], "skb").expect("xdpgate run");
    let socket = d.dirs.run.join("xdpgate.sock");
    let req = format!(
        r#"{{"cmd":"bind_add","binds":[{{"iface":"{ifname}","spec":"fd00:200:73:2::1-fd00:200:73:2::2710","nodad":true}}]}}"#
    );
    let c = UnixStream::connect(&socket).expect("connect");
    (&c).write_all(format!("{req}\n").as_bytes()).unwrap();
    wait_progress(&socket, 500);
    let t = Instant::now();
    let answer = thread::spawn(move || answer(&c, "bind_add", Duration::from_secs(30)));
    let status = d.stop_with(libc::SIGTERM);
    let exited = t.elapsed();
    assert!(status.success(), "{status}");
    let answer = answer.join().unwrap();
    eprintln!(
        "SIGTERM during a 10,000-address bind: exited in {exited:?}; the client got {answer:?}"
    );
    // Within the default grace period, with the change stopped and undone.
    assert!(exited < Duration::from_secs(5), "exit took {exited:?}");
    let answer = answer.expect("an answer before the exit");
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(
        answer["errors"].to_string().contains("shutting down"),
        "{answer}"
    );
    let left = kernel_addrs(&lab.b, &ifname, "fd00:200:73:2:");
    assert_eq!(left, 0, "the stopped change left {left} kernel addresses");
}

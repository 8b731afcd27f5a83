//! Metrics end to end: the `xdpgate` daemon attached to a lab veth with one
//! deny rule and its metrics listener on loopback inside the lab namespace,
//! and a real Prometheus server in the same namespace scraping it every
//! second. Traffic from the peer namespace must show up, exactly, in
//! Prometheus's query API.
//!
//! A slowloris client against the same endpoint: connections opened as fast
//! as it can, each sending a byte a second and never a whole request, while
//! a scraper must get every one of its scrapes answered.
//!
//! Everything (daemon, metrics listener, Prometheus, the slow client) lives
//! in the lab's namespaces: nothing is bound or sent on the host.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use xdpgate::metrics::http::MAX_CONNECTIONS;
use xdpgate_tests::{
    lab::{Lab, Netns, serial},
    xdpgate::{Daemon, StateDirs, http_get},
};

const PROMETHEUS: &str = "/usr/bin/prometheus";
/// Prometheus's own port inside the lab namespace (nothing else listens there).
const PROM_PORT: u16 = 9090;
/// UDP port the deny rule matches.
const DENIED_PORT: u16 = 9999;
/// Every wait in this test is bounded by this.
const WAIT: Duration = Duration::from_secs(30);

/// A Prometheus process and its scratch directory; killed and removed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
}

impl Prometheus {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts Prometheus in `ns`, listening on 127.0.0.1:PROM_PORT and scraping
/// 127.0.0.1:`target` every second.
fn start_prometheus(ns: &Netns, target: u16) -> Prometheus {
    assert!(
        Path::new(PROMETHEUS).is_file(),
        "{PROMETHEUS} is missing: install the Debian package `prometheus` \
         (`cargo xtask bootstrap` does; or `apt-get install --no-install-recommends prometheus`)"
    );
    let dir = std::env::temp_dir().join(format!(
        "xdpgate-prometheus-{}-{}",
        std::process::id(),
        target
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: xdpgate\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = ns
        .command(PROMETHEUS)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{PROM_PORT}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {PROMETHEUS}: {e}"));
    Prometheus { child, dir }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of instant query `q` through Prometheus's HTTP API, if the query
/// returns exactly one sample.
fn query(ns: &Netns, q: &str) -> Option<f64> {
    let (status, body) = http_get(
        ns,
        PROM_PORT,
        &format!("/api/v1/query?query={}", urlencode(q)),
    )
    .ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let result = v["data"]["result"].as_array()?;
    if result.len() != 1 {
        return None;
    }
    result[0]["value"][1].as_str()?.parse().ok()
}

/// Polls `q` until it returns `want` (bounded by WAIT); returns how long it took.
fn wait_for(ns: &Netns, prom: &Prometheus, q: &str, want: f64) -> Duration {
    let t0 = Instant::now();
    let mut last = None;
    while t0.elapsed() < WAIT {
        last = query(ns, q);
        if last == Some(want) {
            return t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "Prometheus: {q} is {last:?}, not {want}, after {WAIT:?}\nprometheus log:\n{}",
        prom.log()
    );
}

/// `n` UDP datagrams from b to a's IPv4 address, port `port`.
fn send_udp(lab: &Lab, port: u16, n: usize) {
    let dst = SocketAddr::new(IpAddr::V4(lab.a_end.ipv4), port);
    lab.b.run(|| {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        for i in 0..n {
            s.send_to(format!("metrics {i}").as_bytes(), dst).unwrap();
        }
    });
}

#[test]
fn prometheus_scrapes_the_counters_of_real_traffic() {
    let _g = serial();
    let lab = Lab::new("metrics", 42).unwrap();
    let iface = lab.a_end.ifname.clone();
    // The real daemon on a's veth end, from a configuration with rule 7
    // denying UDP to DENIED_PORT and metrics on loopback inside a.
    let metrics_port: u16 = 9464;
    let cfg = std::env::temp_dir().join(format!("xdpgate-metrics-{}.toml", std::process::id()));
    std::fs::write(
        &cfg,
        format!(
            "[metrics]\nlisten = [\"127.0.0.1:{metrics_port}\", \"[::1]:{metrics_port}\"]\n\n\
             [[interface]]\nname = \"{iface}\"\n\n\
             [[rule]]\nid = 7\npriority = 10\nproto = \"udp\"\ndport = {DENIED_PORT}\naction = \"deny\"\n"
        ),
    )
    .unwrap();
    let daemon = Daemon::start_in(
        &lab.a,
        StateDirs::unique("metrics"),
        &[],
        "",
        &["--config".as_ref(), cfg.as_os_str()],
    );
    let _ = std::fs::remove_file(&cfg);
    let daemon = daemon.expect("xdpgate run --config");

    // The endpoint answers inside a with every series at zero.
    let (code, body) = http_get(&lab.a, metrics_port, "/metrics").unwrap();
    assert_eq!(code, 200, "{body}");
    let zero = "xdpgate_rule_packets_total{action=\"deny\",rule_id=\"7\"} 0\n";
    assert!(body.contains(zero), "{body}");
    assert!(
        body.contains(&format!(
            "xdpgate_drop_reason_packets_total{{interface=\"{iface}\",reason=\"truncated_l4\"}} 0\n"
        )),
        "{body}"
    );

    let prom = start_prometheus(&lab.a, metrics_port);
    let t0 = Instant::now();
    loop {
        if let Ok((200, _)) = http_get(&lab.a, PROM_PORT, "/-/ready") {
            break;
        }
        assert!(
            t0.elapsed() < WAIT,
            "Prometheus not ready after {WAIT:?}:\n{}",
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("prometheus ready after {:?}", t0.elapsed());
    wait_for(&lab.a, &prom, "up{job=\"xdpgate\"}", 1.0);

    // 5 datagrams the rule drops, 3 the default policy passes.
    send_udp(&lab, DENIED_PORT, 5);
    send_udp(&lab, DENIED_PORT + 1, 3);
    let rule_q = "xdpgate_rule_packets_total{job=\"xdpgate\",rule_id=\"7\",action=\"deny\"}";
    let drop_q =
        format!("xdpgate_packets_total{{interface=\"{iface}\",family=\"ipv4\",action=\"drop\"}}");
    let took = wait_for(&lab.a, &prom, rule_q, 5.0);
    eprintln!("rule counter 5 visible in Prometheus {took:?} after sending");
    wait_for(&lab.a, &prom, &drop_q, 5.0);
    let allowed = query(
        &lab.a,
        &format!("xdpgate_default_policy_packets_total{{interface=\"{iface}\",policy=\"allow\"}}"),
    )
    .unwrap_or_else(|| panic!("no default-policy series:\n{}", prom.log()));
    assert!(
        allowed >= 3.0,
        "default policy passed {allowed} packets, sent 3"
    );
    // Series at zero before their first event are in Prometheus too.
    wait_for(
        &lab.a,
        &prom,
        &format!(
            "xdpgate_drop_reason_packets_total{{interface=\"{iface}\",reason=\"truncated_l4\"}}"
        ),
        0.0,
    );
    wait_for(
        &lab.a,
        &prom,
        &format!("xdpgate_bound_addresses{{interface=\"{iface}\",family=\"ipv6\"}}"),
        0.0,
    );
    wait_for(&lab.a, &prom, "xdpgate_config_last_reload_successful", 1.0);

    // The counter keeps moving: 2 more drops reach Prometheus as 7.
    send_udp(&lab, DENIED_PORT, 2);
    let took = wait_for(&lab.a, &prom, rule_q, 7.0);
    eprintln!("rule counter 7 visible in Prometheus {took:?} after sending");
    wait_for(&lab.a, &prom, &drop_q, 7.0);
    // rate() over the scrapes sees the increase: Prometheus treats it as a counter.
    let inc = query(&lab.a, &format!("increase({rule_q}[1m])"))
        .unwrap_or_else(|| panic!("no increase():\n{}", prom.log()));
    assert!(inc > 0.0, "increase() over 1m is {inc}");

    // Shutdown: the daemon exits promptly even with Prometheus connected.
    let t0 = Instant::now();
    let status = daemon.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "the daemon took {:?} to stop",
        t0.elapsed()
    );
    drop(prom);
}

/// How long the slowloris client may run at most.
const ATTACK_MAX: Duration = Duration::from_secs(25);
/// Most connections the slowloris client opens in all.
const ATTACK_CONNECTIONS: u64 = 1_000_000;
/// A slowloris connect gives up after this and tries again at once (a SYN
/// the full accept queue dropped would otherwise idle the thread for the
/// 1 s retransmission).
const ATTACK_CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
/// Slowloris threads; thread `i` connects from 127.0.0.`i + 1` (thread 0
/// from the scraper's own address).
const ATTACK_THREADS: u8 = 4;
/// Most connections one slowloris thread keeps open (the test's file
/// descriptors); at the limit it waits for the server to close one.
const ATTACK_OPEN_PER_THREAD: usize = 150;
/// Scrapes the scraper performs.
const SCRAPES: usize = 60;
/// A scrape's time limit: Prometheus's default `scrape_timeout`.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one slowloris thread did.
#[derive(Debug, Default)]
struct Attack {
    opened: u64,
    connect_failures: u64,
    /// Connections the server closed (seen by a read or the next byte).
    closed_by_server: u64,
    /// Longest time one connection stayed open, as far as the client saw.
    longest_open: Duration,
    /// Connections open when it stopped.
    still_open: u64,
}

/// A slow connection: when it was opened, when its next byte is due.
struct Slow {
    stream: TcpStream,
    opened: Instant,
    due: Instant,
}

impl Slow {
    /// Whether the server closed it (a non-blocking read sees the end or an
    /// error, or sending the due byte fails).
    fn closed(&mut self, now: Instant) -> bool {
        let mut buf = [0u8; 64];
        match self.stream.read(&mut buf) {
            Ok(0) => return true,
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return true,
            _ => {}
        }
        if self.due <= now {
            if !self.stream.write(b"a").is_ok_and(|n| n == 1) {
                return true;
            }
            self.due = now + Duration::from_secs(1);
        }
        false
    }
}

/// Opens connections to `target` from `from` as fast as it can until `stop`
/// or [`ATTACK_MAX`] (or [`ATTACK_CONNECTIONS`] over all threads), keeping
/// up to [`ATTACK_OPEN_PER_THREAD`] open until the server closes them; each
/// sends a request line and then one header byte a second, never ending its
/// head.
fn slowloris(from: Ipv4Addr, target: SocketAddr, stop: &AtomicBool, total: &AtomicU64) -> Attack {
    let t0 = Instant::now();
    let mut a = Attack::default();
    let mut open: Vec<Slow> = Vec::new();
    let mut swept = Instant::now();
    while !stop.load(Ordering::Relaxed) && t0.elapsed() < ATTACK_MAX {
        if open.len() >= ATTACK_OPEN_PER_THREAD || swept.elapsed() >= Duration::from_millis(20) {
            let now = Instant::now();
            let before = open.len();
            open.retain_mut(|c| {
                let closed = c.closed(now);
                if closed {
                    a.longest_open = a.longest_open.max(now - c.opened);
                }
                !closed
            });
            a.closed_by_server += (before - open.len()) as u64;
            swept = now;
            if open.len() >= ATTACK_OPEN_PER_THREAD {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        }
        if total.fetch_add(1, Ordering::Relaxed) >= ATTACK_CONNECTIONS {
            break;
        }
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let connected = sock
            .bind(&SocketAddr::new(from.into(), 0).into())
            .and_then(|()| sock.connect_timeout(&target.into(), ATTACK_CONNECT_TIMEOUT));
        if connected.is_err() {
            a.connect_failures += 1;
            continue;
        }
        let mut stream: TcpStream = sock.into();
        stream.set_nonblocking(true).expect("nonblocking");
        if stream
            .write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
            .is_err()
        {
            a.closed_by_server += 1;
            continue;
        }
        a.opened += 1;
        let now = Instant::now();
        open.push(Slow {
            stream,
            opened: now,
            due: now + Duration::from_secs(1),
        });
    }
    a.still_open = open.len() as u64;
    a
}

/// One scrape of `/metrics` at 127.0.0.1:`port`: the body, or why it failed.
fn scrape(port: u16) -> Result<String, String> {
    let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
    let t0 = Instant::now();
    let mut s =
        TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    let left = SCRAPE_TIMEOUT
        .saturating_sub(t0.elapsed())
        .max(Duration::from_millis(1));
    s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(left)).map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    match raw.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200 ") => Ok(body.to_owned()),
        Some((head, _)) => Err(format!("answer {head:?}")),
        None if raw.is_empty() => Err("closed without an answer".into()),
        None => Err(format!("truncated answer {raw:?}")),
    }
}

/// The value of `name` (with its labels, as written) in an exposition.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Four slowloris threads (one from the scraper's own address, three from
/// others) connect as fast as the daemon accepts, keep up to 600
/// connections open and send a byte a second on each, never a whole head;
/// meanwhile 60 scrapes, 200 ms apart, must all be answered (within
/// Prometheus's default 10 s scrape timeout each) and `xdpgate stats` must
/// answer. On the server that refused connections beyond 64 and let each
/// hold its slot for 10 s, 0 of 60 scrapes were answered.
#[test]
fn slowloris_clients_do_not_starve_scrapes() {
    let _g = serial();
    let lab = Lab::new("mslow", 43).unwrap();
    let iface = lab.a_end.ifname.clone();
    let port: u16 = 9465;
    let cfg = std::env::temp_dir().join(format!("xdpgate-mslow-{}.toml", std::process::id()));
    std::fs::write(
        &cfg,
        format!(
            "[metrics]\nlisten = [\"127.0.0.1:{port}\"]\n\n[[interface]]\nname = \"{iface}\"\n"
        ),
    )
    .unwrap();
    let daemon = Daemon::start_in(
        &lab.a,
        StateDirs::unique("mslow"),
        &[],
        "",
        &["--config".as_ref(), cfg.as_os_str()],
    );
    let _ = std::fs::remove_file(&cfg);
    let daemon = daemon.expect("xdpgate run --config");
    let target = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
    lab.a
        .run(|| scrape(port))
        .expect("a scrape before the attack");

    let stop = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    let attack_t0 = Instant::now();
    let (attacks, latencies, failures, last_body, stats_ok, attack_running) =
        std::thread::scope(|scope| {
            let attackers: Vec<_> = (0..ATTACK_THREADS)
                .map(|i| {
                    let (lab, stop, total) = (&lab, &stop, &total);
                    scope.spawn(move || {
                        lab.a
                            .run(|| slowloris(Ipv4Addr::new(127, 0, 0, i + 1), target, stop, total))
                    })
                })
                .collect();
            // Let the slow connections take every slot first.
            std::thread::sleep(Duration::from_secs(2));
            let mut latencies = Vec::new();
            let mut failures = Vec::new();
            let mut last_body = String::new();
            let mut stats_ok = Vec::new();
            for i in 0..SCRAPES {
                let t0 = Instant::now();
                match lab.a.run(|| scrape(port)) {
                    Ok(body) => last_body = body,
                    Err(e) => failures.push(format!("scrape {i}: {e}")),
                }
                latencies.push(t0.elapsed());
                if i == SCRAPES / 2 || i == SCRAPES - 1 {
                    // The daemon answers its control socket meanwhile.
                    let t0 = Instant::now();
                    let out = daemon.dirs.run(&lab.a, &["stats"], Duration::from_secs(10));
                    stats_ok.push(out.status.success());
                    eprintln!("`xdpgate stats` during the attack: {:?}", t0.elapsed());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let attack_running = attackers.iter().all(|t| !t.is_finished());
            stop.store(true, Ordering::Relaxed);
            eprintln!("scrapes done after {:?}", attack_t0.elapsed());
            let attacks: Vec<Attack> = attackers.into_iter().map(|t| t.join().unwrap()).collect();
            (
                attacks,
                latencies,
                failures,
                last_body,
                stats_ok,
                attack_running,
            )
        });

    let opened: u64 = attacks.iter().map(|a| a.opened).sum();
    let closed: u64 = attacks.iter().map(|a| a.closed_by_server).sum();
    let longest = attacks
        .iter()
        .map(|a| a.longest_open)
        .max()
        .unwrap_or_default();
    let max = latencies.iter().max().copied().unwrap_or_default();
    let mean = latencies.iter().sum::<Duration>() / latencies.len().max(1) as u32;
    eprintln!(
        "slowloris: {opened} connections opened ({} connect failures), {closed} seen closed by the server, \
         longest open {longest:?}; scrapes: {}/{SCRAPES} answered, latency mean {mean:?} max {max:?}",
        attacks.iter().map(|a| a.connect_failures).sum::<u64>(),
        SCRAPES - failures.len(),
    );
    assert!(
        failures.is_empty(),
        "{} of {SCRAPES} scrapes failed under the slowloris client:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        attack_running,
        "the slowloris client stopped before the last scrape (limits too low to prove anything): {attacks:?}"
    );
    assert!(
        opened > 10 * MAX_CONNECTIONS as u64,
        "the slowloris client opened only {opened} connections"
    );
    assert_eq!(stats_ok, [true, true], "`xdpgate stats` during the attack");
    // The server counted what it closed, and said so in its log without a
    // line per connection.
    let evicted = sample(
        &last_body,
        "xdpgate_metrics_connections_closed_total{reason=\"evicted\"}",
    )
    .unwrap_or_else(|| panic!("no eviction counter in\n{last_body}"));
    for reason in ["evicted", "head_timeout", "refused", "write_timeout"] {
        let series = format!("xdpgate_metrics_connections_closed_total{{reason=\"{reason}\"}}");
        eprintln!("{series} {:?}", sample(&last_body, &series));
    }
    assert!(evicted > 0.0, "no connection evicted:\n{last_body}");
    // The first close is logged at once, then at most a line a minute.
    let log = daemon.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("metrics endpoint: closed"))
        .collect();
    let most = 1 + attack_t0.elapsed().as_secs() / 60;
    eprintln!(
        "{} log lines about closed connections:\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(
        !lines.is_empty() && lines.len() as u64 <= most,
        "{} log lines about closed connections, expected 1 to {most}:\n{log}",
        lines.len()
    );
    let status = daemon.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}");
}

//! Metrics end to end: the `xdpgate` daemon attached to a lab veth with one
//! deny rule and its metrics listener on loopback inside the lab namespace,
//! and a real Prometheus server in the same namespace scraping it every
//! second. Traffic from the peer namespace must show up, exactly, in
//! Prometheus's query API.
//!
//! Everything (daemon, metrics listener, Prometheus) lives in the lab's
//! namespaces: nothing is bound or sent on the host.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

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

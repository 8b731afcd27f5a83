//! Tests of the health monitor: state changes, probes against real
//! listeners, cancellation.
use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicU16, AtomicUsize, Ordering},
};

use tokio::{
    net::TcpListener,
    sync::mpsc::{self, UnboundedReceiver},
};

use super::*;

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

fn key(service: &str, backend: IpAddr) -> TargetKey {
    TargetKey {
        service: service.into(),
        backend,
    }
}

fn spec(probe: Probe, interval_ms: u64, rise: u32, fall: u32) -> CheckSpec {
    CheckSpec {
        probe,
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(interval_ms),
        rise,
        fall,
    }
}

fn monitor() -> (
    HealthMonitor,
    TaskTracker,
    CancellationToken,
    UnboundedReceiver<HealthEvent>,
) {
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let (tx, rx) = mpsc::unbounded_channel();
    let m = HealthMonitor::new(tracker.clone(), cancel.clone(), tx);
    (m, tracker, cancel, rx)
}

fn status_of(m: &HealthMonitor, k: &TargetKey) -> TargetStatus {
    m.status().into_iter().find(|s| &s.key == k).unwrap()
}

async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        time::sleep(Duration::from_millis(10)).await;
    }
}

async fn next_event(rx: &mut UnboundedReceiver<HealthEvent>) -> HealthEvent {
    time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no event within 5 s")
        .expect("event channel closed")
}

/// No event arrives within `quiet`.
async fn no_event(rx: &mut UnboundedReceiver<HealthEvent>, quiet: Duration) {
    if let Ok(ev) = time::timeout(quiet, rx.recv()).await {
        panic!("unexpected event {ev:?}");
    }
}

/// A TCP listener accepting (and dropping) connections forever.
async fn tcp_listener(ip: IpAddr) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let _ = l.accept().await;
        }
    });
    addr
}

/// A TCP address nothing listens on (connections are refused).
async fn refused_tcp(ip: IpAddr) -> SocketAddr {
    TcpListener::bind((ip, 0))
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A UDP address nothing is bound to (ICMP port unreachable).
async fn closed_udp(ip: IpAddr) -> SocketAddr {
    UdpSocket::bind((ip, 0))
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn record_counts_rise_and_fall() {
    let mut s = State::new();
    assert!(s.up, "targets start up");
    let fail = || Err::<(), _>("refused".to_string());
    assert_eq!(s.record(fail(), 2, 3), None);
    assert_eq!(s.record(fail(), 2, 3), None);
    // A success in between resets the failure count.
    assert_eq!(s.record(Ok(()), 2, 3), None);
    assert_eq!(s.record(fail(), 2, 3), None);
    assert_eq!(s.record(fail(), 2, 3), None);
    let reason = s.record(fail(), 2, 3).expect("down after 3 failures");
    assert_eq!(reason, "3 consecutive failed checks, last: refused");
    assert!(!s.up);
    assert_eq!(s.record(fail(), 2, 3), None, "already down");
    assert_eq!((s.failures, s.failures_total, s.checks_total), (4, 6, 7));
    assert_eq!(s.record(Ok(()), 2, 3), None);
    assert_eq!(s.record(fail(), 2, 3), None);
    assert_eq!(s.record(Ok(()), 2, 3), None);
    assert_eq!(
        s.record(Ok(()), 2, 3).as_deref(),
        Some("2 consecutive successful checks")
    );
    assert!(s.up);
    assert_eq!(s.record(Ok(()), 2, 3), None, "already up");
    assert_eq!(
        s.last_error.as_deref(),
        Some("refused"),
        "kept after recovery"
    );
    assert_eq!((s.successes, s.failures), (3, 0));
}

#[test]
fn jitter_is_deterministic_and_small() {
    let interval = Duration::from_secs(2);
    let mut distinct = std::collections::BTreeSet::new();
    for i in 0..1000u32 {
        let k = key("web", IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + i)));
        let j = jitter(&k, interval);
        assert!(j < interval / 10);
        assert_eq!(j, jitter(&k.clone(), interval));
        distinct.insert(j);
    }
    assert!(distinct.len() > 900, "spread: {} distinct", distinct.len());
    assert_eq!(
        jitter(&key("web", V4), Duration::from_nanos(5)),
        Duration::ZERO
    );
}

#[test]
fn status_lines() {
    assert_eq!(status_code(b"HTTP/1.0 200 OK\r"), Some(200));
    assert_eq!(status_code(b"HTTP/1.1 503 Service Unavailable"), Some(503));
    assert_eq!(status_code(b"HTTP/1.1 204"), Some(204));
    assert_eq!(status_code(b"HTTP/1.1 20 OK"), None);
    assert_eq!(status_code(b"HTTP/1.1 2000 OK"), None);
    assert_eq!(status_code(b"SSH-2.0-OpenSSH"), None);
    assert_eq!(status_code(b""), None);
    assert_eq!(host_header("[::1]:80".parse().unwrap()), "[::1]:80");
    assert_eq!(host_header("127.0.0.1:80".parse().unwrap()), "127.0.0.1:80");
}

#[test]
fn probe_errors_read_as_the_log_and_lb_list_show_them() {
    let refused = || io::Error::from_raw_os_error(libc::ECONNREFUSED);
    let cases: Vec<(ProbeError, &str)> = vec![
        (
            ProbeError::Timeout(Duration::from_millis(50)),
            "timed out after 50ms",
        ),
        (
            ProbeError::Connect(refused()),
            "connect: Connection refused (os error 111)",
        ),
        (ProbeError::Bind(io::Error::other("x")), "bind: x"),
        (ProbeError::Send(io::Error::other("x")), "send: x"),
        (
            ProbeError::Receive(refused()),
            "receive: Connection refused (os error 111)",
        ),
        (
            ProbeError::NoResponse,
            "connection closed without a response",
        ),
        (
            ProbeError::MalformedStatus("SSH-2.0-OpenSSH".into()),
            "malformed status line \"SSH-2.0-OpenSSH\"",
        ),
        (
            ProbeError::Status {
                got: 503,
                expected: 200,
            },
            "HTTP status 503, expected 200",
        ),
    ];
    for (e, text) in cases {
        assert_eq!(e.to_string(), text, "{e:?}");
    }
}

#[test]
fn status_serializes_to_json() {
    let st = TargetStatus {
        key: key("web", V6),
        addr: "[::1]:80".parse().unwrap(),
        up: false,
        consecutive_successes: 0,
        consecutive_failures: 3,
        checks_total: 5,
        failures_total: 3,
        last_error: Some("connect: refused".into()),
        last_change: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    };
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["key"]["service"], "web");
    assert_eq!(json["key"]["backend"], "::1");
    assert_eq!(json["addr"], "[::1]:80");
    assert_eq!(json["up"], false);
    assert_eq!(json["last_change"], 1_700_000_000u64);
    assert_eq!(json["last_error"], "connect: refused");
}

#[tokio::test]
async fn tcp_up_and_down_both_families() {
    let (mut m, _tracker, cancel, mut rx) = monitor();
    let up4 = tcp_listener(V4).await;
    let up6 = tcp_listener(V6).await;
    let down4 = refused_tcp(V4).await;
    let down6 = refused_tcp(V6).await;
    let s = spec(Probe::Tcp, 50, 2, 3);
    let (ku4, ku6) = (key("up", V4), key("up", V6));
    let (kd4, kd6) = (key("down", V4), key("down", V6));
    m.set_targets(vec![
        (ku4.clone(), up4, s.clone()),
        (ku6.clone(), up6, s.clone()),
        (kd4.clone(), down4, s.clone()),
        (kd6.clone(), down6, s.clone()),
    ]);
    assert!(m.status().iter().all(|t| t.up), "targets start up");

    // Exactly one event per refused target: down after 3 failures.
    let mut downs = [next_event(&mut rx).await, next_event(&mut rx).await];
    downs.sort_by(|a, b| a.key.cmp(&b.key));
    for (ev, (k, addr)) in downs.iter().zip([(&kd4, down4), (&kd6, down6)]) {
        assert_eq!((&ev.key, ev.addr, ev.up), (k, addr, false));
        assert!(
            ev.reason.starts_with("3 consecutive failed checks"),
            "{ev:?}"
        );
        assert!(ev.reason.contains("refused"), "{ev:?}");
    }
    no_event(&mut rx, Duration::from_millis(300)).await;
    for k in [&ku4, &ku6] {
        let st = status_of(&m, k);
        assert!(
            st.up && st.checks_total >= 3 && st.failures_total == 0,
            "{st:?}"
        );
        assert_eq!(m.is_up(k), Some(true));
    }
    for k in [&kd4, &kd6] {
        let st = status_of(&m, k);
        assert!(!st.up && st.consecutive_failures >= 4, "{st:?}");
        assert_eq!(st.failures_total, st.checks_total);
        assert!(st.last_error.as_deref().unwrap().contains("refused"));
        assert_eq!(m.is_up(k), Some(false));
    }
    assert_eq!(m.is_up(&key("other", V4)), None);

    // A listener on the refused port: up again after 2 successes.
    let l = TcpListener::bind(down4).await.unwrap();
    tokio::spawn(async move {
        loop {
            let _ = l.accept().await;
        }
    });
    let ev = next_event(&mut rx).await;
    assert_eq!((&ev.key, ev.up), (&kd4, true));
    assert_eq!(ev.reason, "2 consecutive successful checks");
    let st = status_of(&m, &kd4);
    assert!(st.up && st.consecutive_successes >= 2, "{st:?}");
    no_event(&mut rx, Duration::from_millis(200)).await;
    cancel.cancel();
}

/// An HTTP server answering every request with the current `status`;
/// records the `Host` headers it saw.
async fn http_server(
    ip: IpAddr,
    status: Arc<AtomicU16>,
    hosts: Arc<Mutex<Vec<String>>>,
) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let status = Arc::clone(&status);
            let hosts = Arc::clone(&hosts);
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&req).into_owned();
                assert!(req.starts_with("GET /health HTTP/1.0\r\n"), "{req}");
                if let Some(h) = req.lines().find_map(|l| l.strip_prefix("Host: ")) {
                    hosts.lock().unwrap().push(h.to_string());
                }
                let code = status.load(Ordering::Relaxed);
                let resp = format!("HTTP/1.0 {code} Whatever\r\nContent-Length: 0\r\n\r\n");
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn http_status_matching_and_flips() {
    let (mut m, _tracker, cancel, mut rx) = monitor();
    let status = Arc::new(AtomicU16::new(200));
    let hosts = Arc::new(Mutex::new(Vec::new()));
    let addr4 = http_server(V4, Arc::clone(&status), Arc::clone(&hosts)).await;
    let addr6 = http_server(V6, Arc::clone(&status), Arc::clone(&hosts)).await;
    let http = |expect_status, host: Option<&str>| {
        spec(
            Probe::Http {
                path: "/health".into(),
                host: host.map(Into::into),
                expect_status,
            },
            50,
            2,
            2,
        )
    };
    let (k200, k200v6, k503) = (key("ok", V4), key("ok", V6), key("maint", V4));
    m.set_targets(vec![
        (k200.clone(), addr4, http(200, None)),
        (k200v6.clone(), addr6, http(200, None)),
        (k503.clone(), addr4, http(503, Some("health.example"))),
    ]);

    // The server answers 200: the target expecting 503 goes down.
    let ev = next_event(&mut rx).await;
    assert_eq!((&ev.key, ev.up), (&k503, false));
    assert_eq!(
        ev.reason,
        "2 consecutive failed checks, last: HTTP status 200, expected 503"
    );
    no_event(&mut rx, Duration::from_millis(200)).await;
    assert_eq!(m.is_up(&k200), Some(true));
    assert_eq!(m.is_up(&k200v6), Some(true));
    {
        let hosts = hosts.lock().unwrap();
        for h in [addr4.to_string(), format!("[::1]:{}", addr6.port())] {
            assert!(hosts.contains(&h), "{h} not in {hosts:?}");
        }
        assert!(hosts.iter().any(|h| h == "health.example"), "{hosts:?}");
    }

    // 503: the two expecting 200 go down, the one expecting 503 up.
    status.store(503, Ordering::Relaxed);
    let mut evs = Vec::new();
    for _ in 0..3 {
        evs.push(next_event(&mut rx).await);
    }
    evs.sort_by(|a, b| a.key.cmp(&b.key));
    let got: Vec<_> = evs.iter().map(|e| (e.key.clone(), e.up)).collect();
    assert_eq!(
        got,
        vec![
            (k503.clone(), true),
            (k200.clone(), false),
            (k200v6.clone(), false)
        ]
    );
    assert_eq!(evs[0].reason, "2 consecutive successful checks");
    assert!(
        evs[1].reason.ends_with("HTTP status 503, expected 200"),
        "{evs:?}"
    );
    no_event(&mut rx, Duration::from_millis(200)).await;

    // Back to 200.
    status.store(200, Ordering::Relaxed);
    let mut evs = Vec::new();
    for _ in 0..3 {
        evs.push(next_event(&mut rx).await);
    }
    evs.sort_by(|a, b| a.key.cmp(&b.key));
    let got: Vec<_> = evs.iter().map(|e| (e.key.clone(), e.up)).collect();
    assert_eq!(
        got,
        vec![
            (k503.clone(), false),
            (k200.clone(), true),
            (k200v6.clone(), true)
        ]
    );
    cancel.cancel();
}

/// A UDP socket echoing every datagram.
async fn udp_echo(ip: IpAddr) -> SocketAddr {
    let s = UdpSocket::bind((ip, 0)).await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        loop {
            if let Ok((n, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(&buf[..n], from).await;
            }
        }
    });
    addr
}

#[tokio::test]
async fn udp_echo_up_closed_and_silent_down() {
    let (mut m, _tracker, cancel, mut rx) = monitor();
    let echo4 = udp_echo(V4).await;
    let echo6 = udp_echo(V6).await;
    let closed4 = closed_udp(V4).await;
    let closed6 = closed_udp(V6).await;
    // Bound, never answers: the probe times out.
    let silent = UdpSocket::bind((V4, 0)).await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let s = spec(
        Probe::Udp {
            payload: b"ping".to_vec(),
        },
        50,
        2,
        2,
    );
    let (ke4, ke6) = (key("echo", V4), key("echo", V6));
    let (kc4, kc6, ks) = (key("closed", V4), key("closed", V6), key("silent", V4));
    m.set_targets(vec![
        (ke4.clone(), echo4, s.clone()),
        (ke6.clone(), echo6, s.clone()),
        (kc4.clone(), closed4, s.clone()),
        (kc6.clone(), closed6, s.clone()),
        (ks.clone(), silent_addr, s.clone()),
    ]);
    let mut evs = Vec::new();
    for _ in 0..3 {
        evs.push(next_event(&mut rx).await);
    }
    evs.sort_by(|a, b| a.key.cmp(&b.key));
    let got: Vec<_> = evs.iter().map(|e| (e.key.clone(), e.up)).collect();
    assert_eq!(
        got,
        vec![
            (kc4.clone(), false),
            (kc6.clone(), false),
            (ks.clone(), false)
        ]
    );
    for ev in &evs[..2] {
        assert!(ev.reason.contains("refused"), "{ev:?}");
    }
    assert!(evs[2].reason.ends_with("timed out after 50ms"), "{evs:?}");
    no_event(&mut rx, Duration::from_millis(200)).await;
    for k in [&ke4, &ke6] {
        let st = status_of(&m, k);
        assert!(
            st.up && st.checks_total >= 3 && st.failures_total == 0,
            "{st:?}"
        );
    }
    cancel.cancel();
    drop(silent);
}

#[tokio::test(flavor = "current_thread")]
async fn scale_2000_targets_on_one_thread() {
    use tokio::runtime::{Handle, RuntimeFlavor};
    // Every task, listener and probe runs on this one thread.
    assert_eq!(
        Handle::current().runtime_flavor(),
        RuntimeFlavor::CurrentThread
    );
    assert_eq!(Handle::current().metrics().num_workers(), 1);

    // 2,000 targets over 20 listeners on 127.0.0.1..=20.
    let mut listeners = Vec::new();
    for x in 1..=20u8 {
        listeners.push(tcp_listener(IpAddr::V4(Ipv4Addr::new(127, 0, 0, x))).await);
    }
    let (mut m, tracker, cancel, mut rx) = monitor();
    let s = CheckSpec {
        probe: Probe::Tcp,
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(200),
        rise: 2,
        fall: 3,
    };
    let targets: Vec<_> = (0..2000u32)
        .map(|i| {
            let backend = IpAddr::V4(Ipv4Addr::from(0x7f01_0000 + i));
            let k = key(&format!("svc{}", i % 10), backend);
            (k, listeners[i as usize % 20], s.clone())
        })
        .collect();
    let start = Instant::now();
    m.set_targets(targets);
    assert_eq!(tracker.len(), 2000);
    // Polled without building 2,000 statuses every 10 ms.
    let deadline = start + Duration::from_secs(20);
    while !m.targets.values().all(|e| lock(&e.state).checks_total >= 3) {
        assert!(Instant::now() < deadline, "3 checks of every target");
        time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = start.elapsed();
    let status = m.status();
    assert_eq!(status.len(), 2000);
    let failures: u64 = status.iter().map(|t| t.failures_total).sum();
    assert!(status.iter().all(|t| t.up), "all stay up");
    assert!(rx.try_recv().is_err(), "no transitions");
    eprintln!("2000 targets, 3 checks each: {elapsed:?}, {failures} failed probes");
    // 3 rounds take 0.4 s plus jitter (about 1 s in a debug build); the
    // bound is generous for loaded machines.
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
    cancel.cancel();
    tracker.close();
    time::timeout(Duration::from_secs(1), tracker.wait())
        .await
        .expect("tasks end");
}

/// An HTTP server that accepts and never answers; counts the connections
/// it holds open (a connection closed by the client is no longer held).
async fn hanging_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind((V4, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&open);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let count = Arc::clone(&count);
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                count.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open)
}

fn hanging_spec() -> CheckSpec {
    CheckSpec {
        probe: Probe::Http {
            path: "/health".into(),
            host: None,
            expect_status: 200,
        },
        interval: Duration::from_secs(30),
        timeout: Duration::from_secs(30),
        rise: 1,
        fall: 1,
    }
}

#[tokio::test]
async fn cancel_interrupts_hanging_probes() {
    let (addr, open) = hanging_server().await;
    let (mut m, tracker, cancel, _rx) = monitor();
    let keys: Vec<_> = (1..=5u8)
        .map(|x| key("hang", IpAddr::V4(Ipv4Addr::new(127, 0, 0, x))))
        .collect();
    m.set_targets(
        keys.iter()
            .map(|k| (k.clone(), addr, hanging_spec()))
            .collect(),
    );
    // First probes start within the jitter (below 3 s) and then hang.
    wait_until("5 probes in flight", Duration::from_secs(10), || {
        open.load(Ordering::SeqCst) == 5
    })
    .await;
    assert_eq!(tracker.len(), 5);
    assert!(m.status().iter().all(|t| t.up && t.checks_total == 0));

    let start = Instant::now();
    cancel.cancel();
    tracker.close();
    time::timeout(Duration::from_secs(1), tracker.wait())
        .await
        .expect("cancelled tasks end within 1 s");
    assert!(start.elapsed() < Duration::from_secs(1));
    // The probes' connections were closed.
    wait_until("connections closed", Duration::from_secs(1), || {
        open.load(Ordering::SeqCst) == 0
    })
    .await;
}

#[tokio::test]
async fn removing_a_target_stops_its_task() {
    let (addr, open) = hanging_server().await;
    let (mut m, tracker, _cancel, _rx) = monitor();
    let (a, b) = (key("hang", V4), key("hang", V6));
    m.set_targets(vec![
        (a.clone(), addr, hanging_spec()),
        (b.clone(), addr, hanging_spec()),
    ]);
    wait_until("2 probes in flight", Duration::from_secs(10), || {
        open.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(tracker.len(), 2);

    m.set_targets(vec![(a.clone(), addr, hanging_spec())]);
    assert_eq!(m.is_up(&b), None);
    assert_eq!(m.status().len(), 1);
    wait_until("removed task ends", Duration::from_secs(1), || {
        tracker.len() == 1
    })
    .await;
    wait_until(
        "its probe's connection closed",
        Duration::from_secs(1),
        || open.load(Ordering::SeqCst) == 1,
    )
    .await;

    // Dropping the monitor stops the rest.
    drop(m);
    wait_until(
        "tasks of a dropped monitor end",
        Duration::from_secs(1),
        || tracker.is_empty(),
    )
    .await;
    wait_until("all connections closed", Duration::from_secs(1), || {
        open.load(Ordering::SeqCst) == 0
    })
    .await;
}

#[tokio::test]
async fn set_targets_keeps_unchanged_and_restarts_changed() {
    let (mut m, tracker, cancel, mut rx) = monitor();
    let refused = refused_tcp(V4).await;
    let up = tcp_listener(V4).await;
    let up2 = tcp_listener(V6).await;
    let (ka, kb) = (
        key("svc", IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))),
        key("svc", V4),
    );
    let sa = spec(Probe::Tcp, 50, 1, 1);
    let sb = spec(Probe::Tcp, 50, 2, 3);
    let both = |sa: &CheckSpec, b_addr| {
        vec![
            (ka.clone(), refused, sa.clone()),
            (kb.clone(), b_addr, sb.clone()),
        ]
    };
    m.set_targets(both(&sa, up));
    let ev = next_event(&mut rx).await;
    assert_eq!((&ev.key, ev.up), (&ka, false));
    wait_until("a few checks of b", Duration::from_secs(5), || {
        status_of(&m, &kb).checks_total >= 3
    })
    .await;
    let state_a = Arc::clone(&m.targets[&ka].state);
    let state_b = Arc::clone(&m.targets[&kb].state);

    // Same set: same tasks, state kept (a stays down, counts go on).
    let before_a = status_of(&m, &ka);
    let before_b = status_of(&m, &kb);
    m.set_targets(both(&sa, up));
    assert!(Arc::ptr_eq(&state_a, &m.targets[&ka].state));
    assert!(Arc::ptr_eq(&state_b, &m.targets[&kb].state));
    assert_eq!(tracker.len(), 2);
    assert_eq!(m.is_up(&ka), Some(false));
    wait_until("checks go on", Duration::from_secs(5), || {
        status_of(&m, &ka).checks_total > before_a.checks_total
            && status_of(&m, &kb).checks_total > before_b.checks_total
    })
    .await;
    assert_eq!(status_of(&m, &ka).last_change, before_a.last_change);
    no_event(&mut rx, Duration::from_millis(150)).await;

    // a's spec changes: restarted up, fresh counts, an up event.
    let sa2 = CheckSpec {
        rise: 2,
        ..sa.clone()
    };
    m.set_targets(both(&sa2, up));
    let st = status_of(&m, &ka);
    assert!(
        st.up && st.checks_total == 0 && st.last_error.is_none(),
        "{st:?}"
    );
    assert!(!Arc::ptr_eq(&state_a, &m.targets[&ka].state));
    assert!(Arc::ptr_eq(&state_b, &m.targets[&kb].state));
    let ev = rx.try_recv().expect("restart event sent by set_targets");
    assert_eq!((&ev.key, ev.up), (&ka, true));
    assert_eq!(ev.reason, "check restarted (address or check changed)");
    // Still refused: down again after one failure.
    let ev = next_event(&mut rx).await;
    assert_eq!((&ev.key, ev.up), (&ka, false));

    // b's address changes: restarted (it was up, so no event).
    m.set_targets(both(&sa2, up2));
    let st = status_of(&m, &kb);
    assert!(st.up && st.checks_total == 0 && st.addr == up2, "{st:?}");
    assert!(!Arc::ptr_eq(&state_b, &m.targets[&kb].state));
    wait_until("old tasks end", Duration::from_secs(1), || {
        tracker.len() == 2
    })
    .await;
    wait_until(
        "b checked at its new address",
        Duration::from_secs(5),
        || status_of(&m, &kb).checks_total >= 2,
    )
    .await;
    assert_eq!(status_of(&m, &kb).failures_total, 0);
    no_event(&mut rx, Duration::from_millis(150)).await;

    // An invalid spec is not monitored.
    m.set_targets(vec![(
        kb.clone(),
        up,
        CheckSpec {
            rise: 0,
            ..sb.clone()
        },
    )]);
    assert!(m.status().is_empty());
    cancel.cancel();
}

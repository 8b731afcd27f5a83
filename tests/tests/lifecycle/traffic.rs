//! Live traffic through the protected interface and what arrives behind
//! XDP; the metrics and the rule counters.
use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;
use xdpgate_tests::{
    lab::Lab,
    xdpgate::{Daemon, http_get},
};

pub(crate) const ALLOWED: u16 = 7000;
pub(crate) const DENIED: u16 = 7001;
pub(crate) const DENIED_TCP: u16 = 7002;

/// Default deny on `iface`; UDP to `ALLOWED` is the one thing let in.
pub(crate) fn rules(dir: &Path, iface: &str) -> std::path::PathBuf {
    let p = dir.join("rules.toml");
    std::fs::write(
        &p,
        format!(
            "[[rule]]\nid = 1\npriority = 1\nproto = \"udp\"\ndport = {ALLOWED}\naction = \"allow\"\n\n\
             [policy]\n{iface} = \"deny\"\n"
        ),
    )
    .unwrap();
    p
}

/// What the protected side received, counted behind XDP.
#[derive(Default)]
pub(crate) struct Seen {
    allowed: AtomicU64,
    denied_udp: AtomicU64,
    denied_tcp: AtomicU64,
}

/// Live traffic from `b` to `a` until stopped (bounded: at most 60 s):
/// UDP to the allowed and the denied port and TCP connection attempts to a
/// denied port, both families, and `ping` of both families (denied unless a
/// rule allows ICMP: every echo reply is an echo request that got through).
pub(crate) struct Traffic {
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
    sent_allowed: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
    pings: Vec<std::process::Child>,
}

/// What [`Traffic::stop`] counted behind XDP.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counted {
    /// Denied UDP datagrams that arrived.
    pub denied_udp: u64,
    /// Denied TCP connections that were accepted.
    pub denied_tcp: u64,
    /// Echo replies `ping` received (echo requests that got through).
    pub ping_replies: u64,
    /// Allowed UDP datagrams that arrived.
    pub allowed: u64,
    /// Allowed UDP datagrams sent.
    pub sent: u64,
}

impl Traffic {
    pub(crate) fn start(lab: &Lab) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Seen::default());
        let sent_allowed = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        // Receivers in a (dual-stack sockets: IPv4 arrives v4-mapped).
        let (allowed, denied, tcp) = lab.a.run(|| {
            let u = |port| {
                let s = UdpSocket::bind(SocketAddr::from(([0u16; 8], port))).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                s
            };
            let t = TcpListener::bind(SocketAddr::from(([0u16; 8], DENIED_TCP))).unwrap();
            t.set_nonblocking(true).unwrap();
            (u(ALLOWED), u(DENIED), t)
        });
        for (sock, counter) in [(allowed, 0), (denied, 1)] {
            let (stop, seen) = (stop.clone(), seen.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if sock.recv_from(&mut buf).is_ok() {
                        let c = if counter == 0 {
                            &seen.allowed
                        } else {
                            &seen.denied_udp
                        };
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        {
            let (stop, seen) = (stop.clone(), seen.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok(_) => {
                            seen.denied_tcp.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
        }
        // Senders in b: about 500 datagrams/s per port and family, and TCP
        // connection attempts to the denied port.
        let targets = [IpAddr::V4(lab.a_end.ipv4), IpAddr::V6(lab.a_end.ipv6)];
        let senders: Vec<UdpSocket> = lab.b.run(|| {
            vec![
                UdpSocket::bind("0.0.0.0:0").unwrap(),
                UdpSocket::bind("[::]:0").unwrap(),
            ]
        });
        for (sock, dst) in senders.into_iter().zip(targets) {
            let (stop, sent) = (stop.clone(), sent_allowed.clone());
            threads.push(std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    seq += 1;
                    let _ = sock.send_to(&seq.to_be_bytes(), SocketAddr::new(dst, DENIED));
                    if sock
                        .send_to(&seq.to_be_bytes(), SocketAddr::new(dst, ALLOWED))
                        .is_ok()
                    {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }));
        }
        for dst in targets {
            let stop = stop.clone();
            let b = lab.b.path();
            threads.push(std::thread::spawn(move || {
                let ns = std::fs::File::open(b).unwrap();
                let fd = std::os::fd::AsRawFd::as_raw_fd(&ns);
                // SAFETY: setns on this thread only, to the lab's namespace.
                let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns");
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let _ = TcpStream::connect_timeout(
                        &SocketAddr::new(dst, DENIED_TCP),
                        Duration::from_millis(20),
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
            }));
        }
        // ping of both families, 100 echo requests/s each, at most 60 s.
        let pings = targets
            .iter()
            .map(|dst| {
                lab.b
                    .command("ping")
                    .args(["-i", "0.01", "-w", "60", "-q", &dst.to_string()])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("ping")
            })
            .collect();
        Traffic {
            stop,
            seen,
            sent_allowed,
            threads,
            pings,
        }
    }

    /// Stops the senders, lets the last packets land, stops the receivers.
    pub(crate) fn stop(self) -> Counted {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let mut ping_replies = 0;
        for p in self.pings {
            // SAFETY: kill(2) on our own child; SIGINT makes ping print its summary.
            unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
            let out = p.wait_with_output().expect("ping");
            let text = String::from_utf8_lossy(&out.stdout);
            // "N packets transmitted, M received, ..."
            ping_replies += text
                .split(',')
                .find_map(|part| part.trim().strip_suffix(" received"))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no ping summary in {text:?}"));
        }
        Counted {
            denied_udp: self.seen.denied_udp.load(Ordering::Relaxed),
            denied_tcp: self.seen.denied_tcp.load(Ordering::Relaxed),
            ping_replies,
            allowed: self.seen.allowed.load(Ordering::Relaxed),
            sent: self.sent_allowed.load(Ordering::Relaxed),
        }
    }
}

/// Port of the metrics listener inside the protected namespace.
pub(crate) const METRICS: u16 = 9464;

/// The value of the sample `name{labels}` in the daemon's exposition.
pub(crate) fn metric(lab: &Lab, name: &str, labels: &str) -> f64 {
    let (status, body) = http_get(&lab.a, METRICS, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    let want = format!("{name}{{{labels}}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&want))
        .unwrap_or_else(|| panic!("no {want} in {body}"))
        .trim()
        .parse()
        .unwrap()
}

pub(crate) fn rule_packets(d: &Daemon, lab: &Lab) -> u64 {
    let out = d.dirs.run_ok(&lab.a, &["acl", "list", "--output", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|r| r["id"].as_u64() == Some(1))
        .map(|r| r["packets"].as_u64().unwrap())
        .sum()
}

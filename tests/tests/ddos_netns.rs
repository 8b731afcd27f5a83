//! DDoS defence with real traffic: two namespaces joined by a veth pair, the
//! daemon on `a`'s end in native mode with a rule file, senders and clients
//! in `b` (see `docs/design/ddos.md`):
//!
//! - a UDP stream at about three times a rule's per-source limit arrives at
//!   the receiving socket at the configured rate, within ±10% once the burst
//!   is subtracted, from one sender CPU and from two, and under a byte
//!   limit of the same rate in bytes;
//! - a sender in another IPv6 /64 has its own budget: two senders, each
//!   about at the rate;
//! - real TCP clients of both families connect through the SYN-cookie path
//!   and move 1 MiB each way intact, and the rule counted cookies sent and
//!   cookie ACKs passed.
//!
//! Measured rates are printed (`--nocapture`). Every sender and receiver is
//! bounded in time; the labs' namespaces go when the test ends or fails.
use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hasher as _},
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use xdpgate_tests::{
    bpf,
    lab::{Lab, serial},
    lblab::tx_checksum_off,
    xdpgate::Daemon,
};

/// The UDP limit of the rate tests: packets per second per source, burst.
const RATE: u64 = 2000;
const BURST: u64 = 200;
const UDP_PORT: u16 = 9000;
const UDP_RULE: u32 = 20;
const TCP_PORT: u16 = 8443;
const TCP_RULE: u32 = 10;
/// How long each sender sends, and at what multiple of the limit.
const SEND_FOR: Duration = Duration::from_secs(5);
const OVERLOAD: u64 = 3;

/// A rule file in a fresh temporary directory (removed on drop).
struct RuleFile(PathBuf);

impl RuleFile {
    fn new(tag: &str, body: &str) -> RuleFile {
        let dir = std::env::temp_dir().join(format!("xdpgate-ddos-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("rules.toml");
        std::fs::write(&path, body).expect("write the rule file");
        RuleFile(path)
    }
}

impl Drop for RuleFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn start(lab: &Lab, rules: &RuleFile) -> Daemon {
    Daemon::start_with(
        &lab.a,
        &[&lab.a_end.ifname],
        "native",
        &["--acl-file".as_ref(), rules.0.as_os_str()],
    )
    .expect("xdpgate run --acl-file")
}

/// The rule `id` of `acl list --output json`.
fn listed_rule(d: &Daemon, lab: &Lab, id: u32) -> Value {
    let out = d.dirs.run_ok(&lab.a, &["acl", "list", "--output", "json"]);
    let v: Value = serde_json::from_str(&out).expect("acl list JSON");
    v["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("rule {id} not listed: {v}"))
}

/// A counter of a listed rule by name (`limited`, `cookies_sent`, ...),
/// wherever the listing puts it: a field of the rule or of an object in it.
fn rule_counter(rule: &Value, name: &str) -> Option<u64> {
    if let Some(n) = rule.get(name).and_then(Value::as_u64) {
        return Some(n);
    }
    rule.as_object()?
        .values()
        .filter(|v| v.is_object())
        .find_map(|v| v.get(name).and_then(Value::as_u64))
}

fn udp_rules() -> String {
    format!(
        "[[rule]]\nid = {UDP_RULE}\npriority = 1\nproto = \"udp\"\ndport = {UDP_PORT}\n\
         action = \"allow\"\nlimit = {{ pps = {RATE}, burst_packets = {BURST}, per = \"src\" }}\n"
    )
}

/// What one sender did.
struct Sent {
    packets: u64,
    first: Instant,
    last: Instant,
}

/// Sends 64-byte datagrams on `sock` at `pps` for [`SEND_FOR`], pinned to
/// `cpu` if given: every millisecond, as many as the time so far asks for.
fn send_paced(sock: &UdpSocket, pps: u64, cpu: Option<usize>) -> Sent {
    if let Some(cpu) = cpu {
        bpf::pin_to_cpu(cpu).expect("pin the sender");
    }
    let payload = [0x42u8; 64];
    let start = Instant::now();
    let mut sent = Sent {
        packets: 0,
        first: start,
        last: start,
    };
    loop {
        let elapsed = start.elapsed();
        if elapsed >= SEND_FOR {
            break;
        }
        let due = (elapsed.as_secs_f64() * pps as f64) as u64 + 1;
        while sent.packets < due {
            if sock.send(&payload).is_ok() {
                if sent.packets == 0 {
                    sent.first = Instant::now();
                }
                sent.packets += 1;
                sent.last = Instant::now();
            } else {
                break; // ENOBUFS: try again next tick
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    sent
}

/// A UDP receiver on `addr` in `a`, counting datagrams per source address
/// until stopped (bounded: [`SEND_FOR`] plus 10 s).
struct Receiver {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<BTreeMap<IpAddr, u64>>,
}

impl Receiver {
    fn start(lab: &Lab, addr: SocketAddr) -> Receiver {
        let sock = lab.a.run(move || {
            let domain = if addr.is_ipv4() {
                socket2::Domain::IPV4
            } else {
                socket2::Domain::IPV6
            };
            let s = socket2::Socket::new(domain, socket2::Type::DGRAM, None).expect("socket");
            s.set_recv_buffer_size(8 << 20).expect("SO_RCVBUF");
            s.bind(&addr.into()).expect("bind the receiver");
            UdpSocket::from(s)
        });
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + SEND_FOR + Duration::from_secs(10);
            let mut counts = BTreeMap::new();
            let mut buf = [0u8; 256];
            while Instant::now() < deadline {
                match sock.recv_from(&mut buf) {
                    Ok((_, from)) => *counts.entry(from.ip()).or_insert(0) += 1,
                    Err(_) if flag.load(Ordering::Relaxed) => break,
                    Err(_) => {}
                }
            }
            counts
        });
        Receiver { stop, thread }
    }

    fn finish(self) -> BTreeMap<IpAddr, u64> {
        // Datagrams in flight arrive within the receiver's next timeouts.
        std::thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("receiver")
    }
}

/// One sender thread: its source address, the CPU it is pinned to.
struct Sender {
    src: IpAddr,
    cpu: Option<usize>,
}

/// Runs the senders (each at `pps`) against a receiver on `dst`; returns
/// what arrived per source and, per source, the packets sent and the span
/// from its first to its last datagram.
fn stream(
    lab: &Lab,
    dst: SocketAddr,
    senders: &[Sender],
    pps: u64,
) -> (BTreeMap<IpAddr, u64>, BTreeMap<IpAddr, (u64, Duration)>) {
    let rx = Receiver::start(lab, dst);
    let socks: Vec<(IpAddr, UdpSocket, Option<usize>)> = lab.b.run(|| {
        senders
            .iter()
            .map(|s| {
                let sock = UdpSocket::bind(SocketAddr::new(s.src, 0)).expect("bind the sender");
                sock.connect(dst).expect("connect the sender");
                (s.src, sock, s.cpu)
            })
            .collect()
    });
    let threads: Vec<_> = socks
        .into_iter()
        .map(|(src, sock, cpu)| (src, std::thread::spawn(move || send_paced(&sock, pps, cpu))))
        .collect();
    let mut per_src: BTreeMap<IpAddr, Vec<Sent>> = BTreeMap::new();
    for (src, t) in threads {
        per_src
            .entry(src)
            .or_default()
            .push(t.join().expect("sender"));
    }
    let got = rx.finish();
    let sent = per_src
        .into_iter()
        .map(|(src, v)| {
            let packets = v.iter().map(|s| s.packets).sum();
            let first = v.iter().map(|s| s.first).min().unwrap();
            let last = v.iter().map(|s| s.last).max().unwrap();
            (src, (packets, last - first))
        })
        .collect();
    (got, sent)
}

/// Checks that `src`'s datagrams arrived at [`RATE`] ±10% once the burst is
/// subtracted, and returns the measured rate.
fn assert_rate(
    what: &str,
    got: &BTreeMap<IpAddr, u64>,
    sent: &BTreeMap<IpAddr, (u64, Duration)>,
    src: IpAddr,
) -> f64 {
    let received = got.get(&src).copied().unwrap_or(0);
    let (packets, span) = sent[&src];
    let offered = packets as f64 / span.as_secs_f64();
    let measured = received.saturating_sub(BURST) as f64 / span.as_secs_f64();
    eprintln!(
        "{what}: {src} sent {packets} in {span:.2?} ({offered:.0} pps), received {received}: \
         {measured:.0} pps after the burst of {BURST}, configured {RATE} pps ({:+.1}%)",
        (measured / RATE as f64 - 1.0) * 100.0
    );
    assert!(
        offered > 2.0 * RATE as f64,
        "{what}: the sender managed only {offered:.0} pps; the test needs well over {RATE}"
    );
    assert!(
        (measured - RATE as f64).abs() <= RATE as f64 / 10.0,
        "{what}: {measured:.0} pps arrived from {src}, configured {RATE} pps ±10% \
         ({received} received in {span:.2?}, burst {BURST})"
    );
    measured
}

fn limited_count(d: &Daemon, lab: &Lab) -> Option<u64> {
    rule_counter(&listed_rule(d, lab, UDP_RULE), "limited")
}

#[test]
fn a_rate_limited_udp_stream_arrives_at_the_configured_rate_from_one_sender_cpu() {
    let _g = serial();
    let lab = Lab::new("ddudp1", 150).expect("lab");
    let rules = RuleFile::new("udp1", &udp_rules());
    let d = start(&lab, &rules);
    let dst = SocketAddr::new(IpAddr::V4(lab.a_end.ipv4), UDP_PORT);
    let src = IpAddr::V4(lab.b_end.ipv4);
    let (got, sent) = stream(&lab, dst, &[Sender { src, cpu: Some(0) }], OVERLOAD * RATE);
    assert_rate("one sender, cpu 0", &got, &sent, src);
    // Every datagram the gate did not pass was counted as limited.
    let limited = limited_count(&d, &lab).expect("a limited counter in acl list");
    let (packets, _) = sent[&src];
    assert_eq!(limited + got[&src], packets, "limited + received = sent");
}

/// Bytes of one datagram of [`send_paced`] on the wire over IPv4: Ethernet
/// 14, IPv4 20, UDP 8, payload 64 (limits count whole frames).
const FRAME_V4: u64 = 14 + 20 + 8 + 64;

#[test]
fn a_byte_limit_passes_the_configured_bytes_per_second() {
    let _g = serial();
    let lab = Lab::new("ddbytes", 154).expect("lab");
    // The byte rate and burst of RATE and BURST datagrams: the receiver then
    // sees RATE datagrams per second after the burst.
    let rules = RuleFile::new(
        "bytes",
        &format!(
            "[[rule]]\nid = {UDP_RULE}\npriority = 1\nproto = \"udp\"\ndport = {UDP_PORT}\n\
             action = \"allow\"\nlimit = {{ bytes_per_sec = {}, burst_bytes = {}, per = \"src\" }}\n",
            RATE * FRAME_V4,
            BURST * FRAME_V4
        ),
    );
    let d = start(&lab, &rules);
    let dst = SocketAddr::new(IpAddr::V4(lab.a_end.ipv4), UDP_PORT);
    let src = IpAddr::V4(lab.b_end.ipv4);
    let (got, sent) = stream(&lab, dst, &[Sender { src, cpu: Some(0) }], OVERLOAD * RATE);
    assert_rate("bytes, one sender", &got, &sent, src);
    let limited = limited_count(&d, &lab).expect("a limited counter in acl list");
    let (packets, _) = sent[&src];
    assert_eq!(limited + got[&src], packets, "limited + received = sent");
}

#[test]
fn a_rate_limited_udp_stream_from_two_sender_cpus_shares_one_source_budget() {
    let _g = serial();
    let lab = Lab::new("ddudp2", 151).expect("lab");
    let rules = RuleFile::new("udp2", &udp_rules());
    let _d = start(&lab, &rules);
    let dst = SocketAddr::new(IpAddr::V4(lab.a_end.ipv4), UDP_PORT);
    let src = IpAddr::V4(lab.b_end.ipv4);
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    assert!(cpus >= 2, "needs two CPUs, has {cpus}");
    // Each thread at 1.5x the limit: together 3x, from two CPUs.
    let senders = [Sender { src, cpu: Some(0) }, Sender { src, cpu: Some(1) }];
    let (got, sent) = stream(&lab, dst, &senders, OVERLOAD * RATE / 2);
    assert_rate("two senders, cpus 0 and 1, one source", &got, &sent, src);
}

#[test]
fn a_sender_in_another_ipv6_slash_64_keeps_its_own_budget() {
    let _g = serial();
    let lab = Lab::new("ddudp64", 152).expect("lab");
    // A second address on b's veth in the next /64, routed from a.
    let other: Ipv6Addr = "fd00:200:152:1::2".parse().unwrap();
    let mac = lab
        .b_end
        .mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let o = other.to_string();
    lab.b
        .exec(
            "ip",
            &[
                "-6",
                "addr",
                "add",
                &format!("{o}/64"),
                "dev",
                &lab.b_end.ifname,
                "nodad",
            ],
        )
        .expect("second address");
    lab.a
        .exec(
            "ip",
            &[
                "-6",
                "route",
                "add",
                "fd00:200:152:1::/64",
                "dev",
                &lab.a_end.ifname,
            ],
        )
        .expect("route to the second /64");
    lab.a
        .exec(
            "ip",
            &[
                "-6",
                "neigh",
                "replace",
                &o,
                "lladdr",
                &mac,
                "dev",
                &lab.a_end.ifname,
                "nud",
                "permanent",
            ],
        )
        .expect("neighbour of the second address");
    let rules = RuleFile::new("udp64", &udp_rules());
    let _d = start(&lab, &rules);
    let dst = SocketAddr::new(IpAddr::V6(lab.a_end.ipv6), UDP_PORT);
    let first = IpAddr::V6(lab.b_end.ipv6);
    let second = IpAddr::V6(other);
    let senders = [
        Sender {
            src: first,
            cpu: Some(0),
        },
        Sender {
            src: second,
            cpu: Some(1),
        },
    ];
    let (got, sent) = stream(&lab, dst, &senders, OVERLOAD * RATE);
    assert_rate("fd00:200:152::/64", &got, &sent, first);
    assert_rate("fd00:200:152:1::/64", &got, &sent, second);
}

/// 1 MiB of bytes from a seeded generator (xorshift), different per seed.
fn data(seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn digest(bytes: &[u8]) -> (usize, u64) {
    let mut h = DefaultHasher::new();
    h.write(bytes);
    (bytes.len(), h.finish())
}

/// The server side of one transfer: reads to EOF, answers with `data(seed)`
/// and returns the digest of what it read.
fn serve_one(listener: &TcpListener, seed: u64) -> (usize, u64) {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("no connection within 20 s: {e}"),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got).expect("server read");
    conn.write_all(&data(seed)).expect("server write");
    digest(&got)
}

/// One client transfer to `addr` from `b`: sends `data(seed)`, reads the
/// answer to EOF; returns its digest.
fn client_one(lab: &Lab, addr: SocketAddr, seed: u64) -> (usize, u64) {
    let mut c = lab.b.run(move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    });
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(&data(seed)).expect("client write");
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).expect("client read");
    digest(&got)
}

#[test]
fn real_tcp_clients_of_both_families_connect_through_syn_cookies_and_move_1_mib_each_way() {
    let _g = serial();
    let lab = Lab::new("ddtcp", 153).expect("lab");
    for (k, v) in [
        ("net.ipv4.tcp_syncookies", "2"),
        ("net.ipv4.tcp_timestamps", "2"),
    ] {
        lab.a.sysctl(k, v).expect("server sysctl");
    }
    // XDP_TX on a's veth needs NAPI on its peer; the client's segments
    // must carry full checksums (see lblab).
    let _peer_xdp = lab.b.run(|| {
        tx_checksum_off(&lab.b_end.ifname).expect("client tx checksum off");
        let prog = bpf::load_constant_xdp(bpf::XDP_PASS, "ddos_peer").expect("load XDP_PASS");
        bpf::attach_native(&prog, lab.b_end.ifindex).expect("XDP_PASS on the client's veth")
    });
    let rules = RuleFile::new(
        "tcp",
        &format!(
            "[[rule]]\nid = {TCP_RULE}\npriority = 1\nproto = \"tcp\"\ndport = {TCP_PORT}\n\
             action = \"allow\"\nsyncookie = true\n"
        ),
    );
    let d = start(&lab, &rules);
    let counters = |d: &Daemon| {
        let r = listed_rule(d, &lab, TCP_RULE);
        let get = |n: &str| {
            rule_counter(&r, n).unwrap_or_else(|| panic!("no {n} counter in the listing: {r}"))
        };
        (get("cookies_sent"), get("cookie_acks"), get("kernel_syns"))
    };
    for addr in [IpAddr::V4(lab.a_end.ipv4), IpAddr::V6(lab.a_end.ipv6)] {
        let listener = lab
            .a
            .run(move || TcpListener::bind(SocketAddr::new(addr, TCP_PORT)).expect("listen"));
        let before = counters(&d);
        // The first SYN to the service goes to the kernel (its listener then
        // accepts cookie ACKs); the next ones are answered in XDP.
        for i in 0..3u64 {
            let seed = (i + 1) * if addr.is_ipv4() { 11 } else { 13 };
            let server = std::thread::scope(|s| {
                let server = s.spawn(|| serve_one(&listener, seed + 1000));
                let got = client_one(&lab, SocketAddr::new(addr, TCP_PORT), seed);
                assert_eq!(
                    got,
                    digest(&data(seed + 1000)),
                    "{addr} #{i}: server to client"
                );
                server.join().expect("server")
            });
            assert_eq!(server, digest(&data(seed)), "{addr} #{i}: client to server");
        }
        let after = counters(&d);
        eprintln!(
            "{addr}: cookies_sent +{}, cookie_acks +{}, kernel_syns +{}",
            after.0 - before.0,
            after.1 - before.1,
            after.2 - before.2
        );
        assert!(after.0 > before.0, "{addr}: no SYN-ACK with a cookie sent");
        assert!(after.1 > before.1, "{addr}: no cookie ACK passed");
    }
}

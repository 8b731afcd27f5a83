//! The gate never opens by itself: the datapath is pinned and outlives the
//! daemon. Under live traffic of both families (UDP to an allowed and to a
//! denied port, TCP connections to a denied port) through a default-deny
//! interface, the daemon is killed (SIGKILL) or stopped (SIGTERM) and started
//! again; sockets behind XDP on the protected side count every denied packet
//! that got through: there must be none, the allowed flow keeps flowing, and
//! the rule counters and the metrics continue. `xdpgate down` leaves nothing behind, and
//! pins this build cannot use are refused with their path, untouched.
use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsFd as _,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;
use xdpgate::sys::object;
use xdpgate_common::pins::{META_MAGIC, Meta, SCHEMA_VERSION};
use xdpgate_tests::{
    bpf,
    lab::{Lab, serial},
    xdpgate::{Daemon, StateDirs, binary, http_get, variant_binary, xdp_on},
};

const ALLOWED: u16 = 7000;
const DENIED: u16 = 7001;
const DENIED_TCP: u16 = 7002;

/// Default deny on `iface`; UDP to `ALLOWED` is the one thing let in.
fn rules(dir: &Path, iface: &str) -> std::path::PathBuf {
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
struct Seen {
    allowed: AtomicU64,
    denied_udp: AtomicU64,
    denied_tcp: AtomicU64,
}

/// Live traffic from `b` to `a` until stopped (bounded: at most 60 s).
struct Traffic {
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
    sent_allowed: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Traffic {
    fn start(lab: &Lab) -> Traffic {
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
        Traffic {
            stop,
            seen,
            sent_allowed,
            threads,
        }
    }

    /// Stops the senders, lets the last packets land, stops the receivers.
    fn stop(self) -> (u64, u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.seen.denied_udp.load(Ordering::Relaxed),
            self.seen.denied_tcp.load(Ordering::Relaxed),
            self.seen.allowed.load(Ordering::Relaxed),
            self.sent_allowed.load(Ordering::Relaxed),
        )
    }
}

/// Port of the metrics listener inside the protected namespace.
const METRICS: u16 = 9464;

/// The value of the sample `name{labels}` in the daemon's exposition.
fn metric(lab: &Lab, name: &str, labels: &str) -> f64 {
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

fn rule_packets(d: &Daemon, lab: &Lab) -> u64 {
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

/// Kill or stop the daemon under traffic, wait, start `next` (this build or
/// another) on the same pins: 0 leaked.
fn restart_under_traffic(signal: i32, subnet: u8, tag: &str, next: &Path) {
    let _g = serial();
    let lab = Lab::new(tag, subnet).expect("lab");
    let iface = lab.a_end.ifname.clone();
    let dirs = StateDirs::unique(tag);
    std::fs::create_dir_all(&dirs.run).unwrap();
    let file = rules(&dirs.run, &iface);
    let listen = format!("127.0.0.1:{METRICS}");
    let args = [
        "--acl-file".as_ref(),
        file.as_os_str(),
        "--metrics-listen".as_ref(),
        listen.as_ref(),
    ];
    let d = Daemon::start_in(&lab.a, dirs, &[&iface], "native", &args).expect("start");
    let traffic = Traffic::start(&lab);
    std::thread::sleep(Duration::from_millis(800));
    let before = rule_packets(&d, &lab);
    assert!(before > 0, "the allowed flow is counted by its rule");
    // Labels as the exposition sorts them.
    let dropped = format!("action=\"drop\",family=\"ipv4\",interface=\"{iface}\"");
    let since = format!("interface=\"{iface}\"");
    let drops_before = metric(&lab, "xdpgate_packets_total", &dropped);
    let since_before = metric(&lab, "xdpgate_datapath_attached_timestamp_seconds", &since);
    let (_, dirs) = d.stop_keeping_state(signal);
    assert!(
        xdp_on(&lab.a, &iface),
        "the program stays attached without a daemon"
    );
    let out = dirs.run_ok(&lab.a, &["status", "--output", "json"]);
    assert!(out.contains("\"without_daemon\""), "{out}");
    let tag_before = dirs.status(&lab.a, &iface).1[0]["prog_tag"].clone();
    std::thread::sleep(Duration::from_secs(2));
    let d = Daemon::start_binary(&lab.a, dirs, next, &[&iface], "native", &args).expect("restart");
    assert!(d.log().contains("adopting the datapath"), "{}", d.log());
    let tag_after = d.dirs.status(&lab.a, &iface).1[0]["prog_tag"].clone();
    assert_eq!(
        tag_before != tag_after,
        next != binary(),
        "program tag {tag_before} -> {tag_after}"
    );
    eprintln!("program tag {tag_before} -> {tag_after}");
    std::thread::sleep(Duration::from_millis(800));
    let after = rule_packets(&d, &lab);
    let drops_after = metric(&lab, "xdpgate_packets_total", &dropped);
    let since_after = metric(&lab, "xdpgate_datapath_attached_timestamp_seconds", &since);
    let (denied_udp, denied_tcp, allowed, sent) = traffic.stop();
    eprintln!(
        "signal {signal}: leaked {denied_udp} UDP + {denied_tcp} TCP; allowed {allowed} of {sent} received; rule 1 counter {before} -> {after}"
    );
    assert_eq!((denied_udp, denied_tcp), (0, 0), "denied packets leaked");
    assert!(sent > 1000, "too little traffic: {sent}");
    // The allowed flow never stopped (a few in flight at the end may be lost).
    assert!(
        allowed + 20 >= sent,
        "allowed: {allowed} of {sent} received"
    );
    assert!(
        after > before,
        "rule counters continue: {before} -> {after}"
    );
    // Counted from the first packet on: about 4 s of drops now against 0.8 s
    // then (a reset at the restart would leave about 0.8 s again).
    assert!(
        drops_after > 2.0 * drops_before,
        "xdpgate_packets_total continues across the restart: {drops_before} -> {drops_after}"
    );
    assert_eq!(
        since_after, since_before,
        "the interface enforces since its first attach"
    );
    let out = d.dirs.run_ok(&lab.a, &["status"]);
    assert!(out.contains("yes, daemon"), "{out}");
}

#[test]
fn sigkill_and_restart_leak_no_denied_packet() {
    restart_under_traffic(libc::SIGKILL, 120, "lckill", &binary());
}

#[test]
fn sigterm_and_restart_leak_no_denied_packet() {
    restart_under_traffic(libc::SIGTERM, 121, "lcterm", &binary());
}

#[test]
fn an_upgrade_to_a_build_with_another_program_leaks_no_denied_packet() {
    // Same schema, another program (its tag differs): each link gets the new
    // program in one BPF_LINK_UPDATE.
    restart_under_traffic(libc::SIGTERM, 128, "lcupgr", &variant_binary());
}

#[test]
fn down_leaves_no_program_link_or_pin() {
    let _g = serial();
    let lab = Lab::new("lcdown", 122).expect("lab");
    let iface = lab.a_end.ifname.clone();
    let d = Daemon::start(&lab.a, &[&iface], "native").expect("start");
    let out = d.dirs.run(&lab.a, &["down"], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a daemon is running"),
        "down refuses while the daemon runs"
    );
    let (status, dirs) = d.stop_keeping_state(libc::SIGTERM);
    assert!(status.success());
    assert!(xdp_on(&lab.a, &iface));
    assert!(dirs.bpffs.join("links").join(&iface).exists());
    // One interface: its link goes, the maps stay.
    dirs.run_ok(&lab.a, &["down", "--iface", &iface]);
    assert!(!xdp_on(&lab.a, &iface), "program left after down --iface");
    assert!(!dirs.bpffs.join("links").join(&iface).exists());
    assert!(dirs.bpffs.join("maps/XG_STATS").exists(), "the maps stay");
    let out = dirs.run(
        &lab.a,
        &["down", "--iface", &iface],
        Duration::from_secs(30),
    );
    assert_eq!(
        out.status.code(),
        Some(64),
        "not enforcing there: caller's error"
    );
    dirs.run_ok(&lab.a, &["down"]);
    assert!(!xdp_on(&lab.a, &iface), "program left after down");
    assert!(!dirs.bpffs.exists(), "pins left after down");
    let out = dirs.run_ok(&lab.a, &["down"]);
    assert!(out.contains("nothing to do"), "{out}");
}

/// Pins a `meta` record holding `meta` at `path`.
fn pin_meta(path: &Path, meta: &Meta) {
    xdpgate::datapath::pins::pin_meta(path, meta).expect("pin meta");
}

fn meta(schema: u32) -> Meta {
    Meta {
        magic: META_MAGIC,
        schema,
        committed_unix_ns: 1,
        ..Meta::default()
    }
}

/// Starts a daemon over pins prepared by `prepare`; it must fail naming
/// `names` and leave the interface and the pins as they were.
fn refused(lab: &Lab, tag: &str, prepare: impl FnOnce(&Path), names: &[&str]) {
    let iface = lab.a_end.ifname.as_str();
    let dirs = StateDirs::unique(tag);
    std::fs::create_dir_all(dirs.bpffs.join("maps")).unwrap();
    std::fs::create_dir_all(dirs.bpffs.join("links")).unwrap();
    prepare(&dirs.bpffs);
    let before = list(&dirs.bpffs);
    let xdp_before = xdp_on(&lab.a, iface);
    let out = dirs.run(
        &lab.a,
        &["run", "--iface", iface, "--mode", "native", "--no-metrics"],
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{tag}: {err}");
    for n in names {
        assert!(err.contains(n), "{tag}: the error names {n}: {err}");
    }
    assert_eq!(list(&dirs.bpffs), before, "{tag}: pins changed");
    assert_eq!(
        xdp_on(&lab.a, iface),
        xdp_before,
        "{tag}: attachment changed"
    );
}

fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walk(dir);
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        out.push(p.display().to_string());
        if p.is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

#[test]
fn pins_it_cannot_use_are_refused_and_left_alone() {
    let _g = serial();
    let lab = Lab::new("lcpins", 123).expect("lab");
    let iface = lab.a_end.ifname.clone();
    // A newer schema.
    refused(
        &lab,
        "lcnewer",
        |root| pin_meta(&root.join("meta"), &meta(SCHEMA_VERSION + 1)),
        &["/meta", "newer xdpgate", "xdpgate down"],
    );
    // A map with the right name but the wrong key size (and type).
    refused(
        &lab,
        "lckey",
        |root| {
            pin_meta(&root.join("meta"), &meta(SCHEMA_VERSION));
            let fd = object::create_record(8).unwrap();
            object::obj_pin(fd.as_fd(), &root.join("maps/XG_LOCAL_ADDRS")).unwrap();
        },
        &["maps/XG_LOCAL_ADDRS", "key size 4 (expected 24)"],
    );
    // A pinned link to a program that is not xdpgate's, attached and enforcing.
    let prog = bpf::load_constant_xdp(2, "foreign").unwrap();
    let link = lab
        .a
        .run(|| bpf::attach_native(&prog, lab.a_end.ifindex))
        .unwrap();
    refused(
        &lab,
        "lclink",
        |root| {
            pin_meta(&root.join("meta"), &meta(SCHEMA_VERSION));
            object::obj_pin(link.as_fd(), &root.join("links").join(&iface)).unwrap();
        },
        &[&format!("links/{iface}"), "not xdpgate's"],
    );
    // (`refused` checked that the foreign program stayed attached; removing
    // the test's directory detached it.)
    // A directory others may write to.
    refused(
        &lab,
        "lcmode",
        |root| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o777)).unwrap();
        },
        &["writable by others"],
    );
}

fn pings(lab: &Lab, addr: &str) -> bool {
    lab.b.exec("ping", &["-c", "1", "-W", "1", addr]).is_ok()
}

#[test]
fn a_restart_that_lost_its_state_file_drops_what_no_binding_makes() {
    // The earlier daemon bound 10.200.124.50 with drop_unbound on and died;
    // its state file is gone and the configuration no longer binds it. The
    // address stays on the interface (xdpgate no longer knows it added it),
    // but the gate must not let it through as bound.
    let _g = serial();
    let lab = Lab::new("lcbind", 124).expect("lab");
    let iface = lab.a_end.ifname.clone();
    let own = lab.a_end.ipv4.to_string();
    let dir = std::env::temp_dir().join(format!("xdpgate-lcbind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("xdpgate.toml");
    let write = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[[interface]]\nname = \"{iface}\"\ndrop_unbound = true\n\n\
                 [[bind]]\niface = \"{iface}\"\nspec = \"{own}\"\n{extra}"
            ),
        )
        .unwrap();
    };
    write(&format!(
        "\n[[bind]]\niface = \"{iface}\"\nspec = \"10.200.124.50\"\n"
    ));
    let args = [
        "--config".as_ref(),
        config.as_os_str(),
        "--no-metrics".as_ref(),
    ];
    let d = Daemon::start_in(&lab.a, StateDirs::unique("lcbind"), &[], "", &args).expect("start");
    assert!(pings(&lab, "10.200.124.50"), "bound: passes");
    let (_, dirs) = d.stop_keeping_state(libc::SIGKILL);
    std::fs::remove_file(&dirs.state_file).unwrap();
    write("");
    let d = Daemon::start_in(&lab.a, dirs, &[], "", &args).expect("restart");
    assert!(d.log().contains("adopting the datapath"), "{}", d.log());
    assert!(
        lab.a
            .exec("ip", &["-o", "addr", "show", "dev", &iface])
            .unwrap()
            .contains("10.200.124.50"),
        "the address stays on the interface"
    );
    assert!(!pings(&lab, "10.200.124.50"), "no longer bound: dropped");
    assert!(pings(&lab, &own), "still bound: passes");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `inner` (an IPv4 packet) from `b` inside IPIP to `dst`, through a
/// raw socket (the kernel writes the outer header).
fn send_ipip(lab: &Lab, dst: std::net::Ipv4Addr, inner: &[u8]) {
    lab.b.run(|| {
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_IPIP) };
        assert!(
            fd >= 0,
            "raw IPIP socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a fresh descriptor we own from here on.
        let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: inner and addr outlive the call; the lengths are theirs.
        let rc = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                inner.as_ptr().cast(),
                inner.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(
            rc,
            inner.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
    });
}

#[test]
fn a_restart_that_turns_decapsulation_off_decapsulates_nothing_more() {
    use xdpgate_tests::packet::{Ipv4, Transport};
    let _g = serial();
    let lab = Lab::new("lcdecap", 125).expect("lab");
    let iface = lab.a_end.ifname.clone();
    let (a, b) = (lab.a_end.ipv4, lab.b_end.ipv4);
    let sock = lab.a.run(|| {
        let s = UdpSocket::bind("0.0.0.0:7100").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s
    });
    let inner = Ipv4::new(b.octets(), a.octets(), 17)
        .build(&Transport::udp(7101, 7100).payload(b"inner").bytes());
    let received = || {
        send_ipip(&lab, a, &inner);
        let mut buf = [0u8; 64];
        matches!(sock.recv_from(&mut buf), Ok((5, _)))
    };
    let no_metrics = ["--no-metrics".as_ref()];
    let decap = ["--decap".as_ref(), "--no-metrics".as_ref()];
    let d = Daemon::start_in(
        &lab.a,
        StateDirs::unique("lcdecap"),
        &[&iface],
        "native",
        &decap,
    )
    .expect("start");
    assert!(
        received(),
        "decapsulated in XDP, the inner datagram arrives"
    );
    let (_, dirs) = d.stop_keeping_state(libc::SIGKILL);
    assert!(received(), "and without a daemon, as configured");
    let d = Daemon::start_in(&lab.a, dirs, &[&iface], "native", &no_metrics).expect("restart");
    assert!(d.log().contains("adopting the datapath"), "{}", d.log());
    assert!(
        !received(),
        "decapsulation is off: the tunnel packet is not opened"
    );
}

#[test]
fn a_second_daemon_or_down_on_the_same_pins_is_refused_and_changes_nothing() {
    let _g = serial();
    let lab = Lab::new("lcrace", 126).expect("lab");
    let iface = lab.a_end.ifname.clone();
    let d = Daemon::start(&lab.a, &[&iface], "native").expect("start");
    let prog = |lab: &Lab| {
        let (_, rows) = d.dirs.status(&lab.a, &iface);
        rows.first().map(|r| r["prog_id"].clone())
    };
    let before = prog(&lab);
    // Another run directory (so the daemon lock does not stop it), the same pins.
    let mut other = StateDirs::unique("lcrace2");
    other.bpffs = d.dirs.bpffs.clone();
    for args in [
        &[
            "run",
            "--iface",
            iface.as_str(),
            "--mode",
            "native",
            "--no-metrics",
        ][..],
        &["down"][..],
    ] {
        let out = other.run(&lab.a, args, Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("another process is using the pins"),
            "{args:?}: {err}"
        );
        assert_eq!(prog(&lab), before, "{args:?}: the attachment changed");
    }
    // `other` must not remove the pins it shares with the running daemon.
    other.bpffs = std::env::temp_dir().join("xdpgate-lcrace-none");
    drop(other);
    assert!(d.dirs.bpffs.join("links").join(&iface).exists());
    d.dirs.run_ok(&lab.a, &["status"]);
}

/// Counts datagrams arriving at `addr` (inside `ns`) until `stop`.
fn count_at(
    ns: &xdpgate_tests::lab::Netns,
    addr: SocketAddr,
    stop: &Arc<AtomicBool>,
) -> (Arc<AtomicU64>, JoinHandle<()>) {
    let sock = ns.run(|| UdpSocket::bind(addr).unwrap());
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let n = Arc::new(AtomicU64::new(0));
    let (count, stop) = (n.clone(), stop.clone());
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        while !stop.load(Ordering::Relaxed) {
            if sock.recv_from(&mut buf).is_ok() {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    (n, t)
}

#[test]
fn a_reload_adds_and_removes_interfaces_under_traffic() {
    let _g = serial();
    let lab = Lab::new("lcifs", 127).expect("lab");
    let first = lab.a_end.ifname.clone();
    // A second link between the namespaces: xg2a (10.200.227.1) in a.
    let b_name = lab.b.name().to_owned();
    lab.a
        .exec(
            "ip",
            &[
                "link", "add", "xg2a", "type", "veth", "peer", "name", "xg2b", "netns", &b_name,
            ],
        )
        .unwrap();
    lab.a
        .exec("ip", &["addr", "add", "10.200.227.1/24", "dev", "xg2a"])
        .unwrap();
    lab.a.exec("ip", &["link", "set", "xg2a", "up"]).unwrap();
    lab.b
        .exec("ip", &["addr", "add", "10.200.227.2/24", "dev", "xg2b"])
        .unwrap();
    lab.b.exec("ip", &["link", "set", "xg2b", "up"]).unwrap();
    let dir = std::env::temp_dir().join(format!("xdpgate-lcifs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("xdpgate.toml");
    let write = |ifaces: &[&str]| {
        let mut text = String::new();
        for i in ifaces {
            text.push_str(&format!(
                "[[interface]]\nname = \"{i}\"\npolicy = \"deny\"\n\n"
            ));
        }
        std::fs::write(&config, text).unwrap();
    };
    write(&[&first]);
    let args = [
        "--config".as_ref(),
        config.as_os_str(),
        "--no-metrics".as_ref(),
    ];
    let d = Daemon::start_in(&lab.a, StateDirs::unique("lcifs"), &[], "", &args).expect("start");

    // Denied traffic to both links, 500 datagrams/s each, counted behind XDP.
    let stop = Arc::new(AtomicBool::new(false));
    let on_first: SocketAddr = (lab.a_end.ipv4, DENIED).into();
    let on_second: SocketAddr = ([10, 200, 227, 1], DENIED).into();
    let (first_seen, t1) = count_at(&lab.a, on_first, &stop);
    let (second_seen, t2) = count_at(&lab.a, on_second, &stop);
    let sender = lab.b.run(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    let send_stop = stop.clone();
    let t3 = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !send_stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let _ = sender.send_to(b"x", on_first);
            let _ = sender.send_to(b"x", on_second);
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let settle = || std::thread::sleep(Duration::from_millis(700));
    settle();
    assert!(
        second_seen.load(Ordering::Relaxed) > 0,
        "xg2a is not protected yet"
    );

    // Add xg2a: from the reload's answer on, nothing denied reaches it.
    write(&[&first, "xg2a"]);
    let out = d.dirs.run_ok(&lab.a, &["reload"]);
    assert!(out.contains("reloaded"), "{out}");
    let at_reload = second_seen.load(Ordering::Relaxed);
    settle();
    assert_eq!(
        second_seen.load(Ordering::Relaxed),
        at_reload,
        "denied packets reached xg2a after the reload attached it"
    );
    assert!(xdp_on(&lab.a, "xg2a"));

    // Remove the first interface: it is detached (and passes what it got),
    // xg2a goes on enforcing.
    write(&["xg2a"]);
    let first_before = first_seen.load(Ordering::Relaxed);
    d.dirs.run_ok(&lab.a, &["reload"]);
    let first_at = first_seen.load(Ordering::Relaxed);
    let second_at = second_seen.load(Ordering::Relaxed);
    settle();
    stop.store(true, Ordering::Relaxed);
    for t in [t1, t2, t3] {
        t.join().unwrap();
    }
    assert_eq!(
        first_before, 0,
        "the first interface enforced until it was removed"
    );
    assert!(
        first_seen.load(Ordering::Relaxed) > first_at,
        "removed from the configuration: detached"
    );
    assert!(!xdp_on(&lab.a, &first));
    assert_eq!(
        second_seen.load(Ordering::Relaxed),
        second_at,
        "xg2a still enforces"
    );
    assert!(!d.dirs.bpffs.join("links").join(&first).exists());
    let out = d.dirs.run_ok(&lab.a, &["status"]);
    assert!(out.contains("xg2a") && out.contains("yes, daemon"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

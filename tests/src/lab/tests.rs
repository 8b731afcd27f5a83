//! Tests of the lab itself: real namespaces, traffic, cleanup on drop and
//! panic, the host namespace untouched, the sweep, names.
use super::command::{describe, ip_program, run_command};
use super::netns::{delete_netns, netns_path, sysctl_path};
use super::pair::{lab_addrs, veth_names};
use super::*;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::{Command, Stdio};

const READ_TIMEOUT: Option<Duration> = Some(Duration::from_secs(2));

/// Runs `ip ARGS` in the host namespace (read-only queries only).
fn host_ip(args: &[&str]) -> String {
    let mut cmd = Command::new(ip_program());
    cmd.args(args);
    run_command(cmd, &describe("ip", args, None), CMD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

/// The host's addresses as `ifname addr` lines (lifetimes stripped).
fn host_addrs() -> BTreeSet<String> {
    host_ip(&["-o", "addr", "show"])
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 4).then(|| format!("{} {}", fields[1], fields[3]))
        })
        .collect()
}

/// The host's IPv4 and IPv6 routes with expiry counters stripped.
fn host_routes() -> Vec<String> {
    let mut routes = Vec::new();
    for family in ["-4", "-6"] {
        for line in host_ip(&[family, "route", "show", "table", "all"]).lines() {
            let mut words = line.split_whitespace();
            let mut kept = Vec::new();
            while let Some(word) = words.next() {
                if word == "expires" {
                    words.next();
                } else {
                    kept.push(word);
                }
            }
            routes.push(kept.join(" "));
        }
    }
    routes
}

fn netns_exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// Sends a datagram from `a` (bound to `src`) to `b` (bound to `dst`)
/// and a reply back, checking payloads and source addresses.
fn udp_exchange(lab: &Lab, src: IpAddr, dst: IpAddr) {
    let rx = lab.b.run(|| {
        let socket = UdpSocket::bind(SocketAddr::new(dst, 0))
            .unwrap_or_else(|e| panic!("bind {dst} in b: {e}"));
        socket.set_read_timeout(READ_TIMEOUT).unwrap();
        socket
    });
    let rx_addr = rx.local_addr().unwrap();
    let request = format!("xdpgate lab request to {dst}");

    let tx = lab.a.run(|| {
        let socket = UdpSocket::bind(SocketAddr::new(src, 0))
            .unwrap_or_else(|e| panic!("bind {src} in a: {e}"));
        socket.set_read_timeout(READ_TIMEOUT).unwrap();
        socket
            .send_to(request.as_bytes(), rx_addr)
            .unwrap_or_else(|e| panic!("send to {rx_addr}: {e}"));
        socket
    });
    let tx_addr = tx.local_addr().unwrap();

    lab.b.run(|| {
        let mut buf = [0u8; 256];
        let (n, from) = rx
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no datagram at {rx_addr}: {e}"));
        assert_eq!(&buf[..n], request.as_bytes());
        assert_eq!(from, tx_addr);
        rx.send_to(b"reply", from).unwrap();
    });

    lab.a.run(|| {
        let mut buf = [0u8; 256];
        let (n, from) = tx
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no reply at {tx_addr}: {e}"));
        assert_eq!(&buf[..n], b"reply");
        assert_eq!(from, rx_addr);
    });
}

#[test]
fn udp_both_families() {
    let _g = serial();
    let lab = Lab::new("udp", 1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lab.a_end.ipv4, Ipv4Addr::new(10, 200, 1, 1));
    assert_eq!(lab.b_end.ipv4, Ipv4Addr::new(10, 200, 1, 2));
    assert_eq!(lab.a_end.ipv6, "fd00:200:1::1".parse::<Ipv6Addr>().unwrap());
    assert_eq!(lab.b_end.ipv6, "fd00:200:1::2".parse::<Ipv6Addr>().unwrap());
    assert!(lab.a_end.ifname.len() <= 15 && lab.b_end.ifname.len() <= 15);
    assert!(lab.a_end.ifindex > 1 && lab.b_end.ifindex > 1);
    assert_ne!(lab.a_end.mac, lab.b_end.mac);
    assert_ne!(lab.a_end.mac, [0; 6]);

    // Static neighbours exist on both sides for both families.
    for (ns, end, peer) in [
        (&lab.a, &lab.a_end, &lab.b_end),
        (&lab.b, &lab.b_end, &lab.a_end),
    ] {
        let neigh = ns
            .exec("ip", &["neigh", "show", "dev", &end.ifname])
            .unwrap();
        let neigh6 = ns
            .exec("ip", &["-6", "neigh", "show", "dev", &end.ifname])
            .unwrap();
        let mac = format_mac(&peer.mac);
        for (table, addr) in [
            (&neigh, peer.ipv4.to_string()),
            (&neigh6, peer.ipv6.to_string()),
        ] {
            let line = table
                .lines()
                .find(|line| line.starts_with(&format!("{addr} ")))
                .unwrap_or_else(|| panic!("no neighbour {addr} in {table:?}"));
            assert!(line.contains(&mac) && line.contains("PERMANENT"), "{line}");
        }
        assert_eq!(ns.sysctl_get("net.ipv6.conf.all.accept_ra").unwrap(), "0");
    }

    udp_exchange(&lab, lab.a_end.ipv4.into(), lab.b_end.ipv4.into());
    udp_exchange(&lab, lab.a_end.ipv6.into(), lab.b_end.ipv6.into());

    // Commands report failures with their stderr.
    match lab.a.exec("ip", &["link", "show", "dev", "xgnonexist0"]) {
        Err(LabError::Command { cmd, stderr, .. }) => {
            assert!(cmd.contains(lab.a.name()), "{cmd}");
            assert!(!stderr.is_empty());
        }
        other => panic!("unexpected result {other:?}"),
    }
}

#[test]
fn drop_removes_namespaces() {
    let _g = serial();
    let lab = Lab::new("drop", 2).unwrap_or_else(|e| panic!("{e}"));
    let names = [lab.a.name().to_owned(), lab.b.name().to_owned()];
    assert!(lab.a.path().starts_with(NETNS_DIR));
    for name in &names {
        assert!(netns_exists(name), "{name} missing while the lab lives");
    }
    drop(lab);
    for name in &names {
        assert!(!netns_exists(name), "{name} still exists after drop");
    }
}

fn deliberate_panic() -> u32 {
    panic!("deliberate panic inside a namespace closure");
}

#[test]
fn panic_cleans_up() {
    let _g = serial();
    let names = Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let lab = Lab::new("panic", 3).unwrap_or_else(|e| panic!("{e}"));
        names
            .lock()
            .unwrap()
            .extend([lab.a.name().to_owned(), lab.b.name().to_owned()]);
        lab.a.run(deliberate_panic)
    }));
    assert!(result.is_err(), "the panic was not propagated");
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 2);
    for name in &names {
        assert!(!netns_exists(name), "{name} survived a panic");
    }
}

#[test]
fn host_namespace_untouched() {
    let _g = serial();
    let links = host_ip(&["-o", "link", "show"]);
    let addrs = host_addrs();
    let routes = host_routes();
    let host_ttl = std::fs::read_to_string("/proc/sys/net/ipv4/ip_default_ttl").unwrap();

    let lab = Lab::new("host", 4).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(host_ip(&["-o", "link", "show"]), links);
    assert_eq!(host_addrs(), addrs);
    assert_eq!(host_routes(), routes);
    // The lab addresses do not exist in the host namespace.
    for addr in [IpAddr::from(lab.a_end.ipv4), IpAddr::from(lab.b_end.ipv6)] {
        assert!(
            UdpSocket::bind(SocketAddr::new(addr, 0)).is_err(),
            "{addr} is on the host"
        );
    }
    // A namespace sysctl does not leak into the host.
    let ttl = if host_ttl.trim() == "63" { "62" } else { "63" };
    lab.a.sysctl("net.ipv4.ip_default_ttl", ttl).unwrap();
    assert_eq!(lab.a.sysctl_get("net.ipv4.ip_default_ttl").unwrap(), ttl);
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_default_ttl").unwrap(),
        host_ttl
    );
    drop(lab);

    assert_eq!(host_ip(&["-o", "link", "show"]), links);
    assert_eq!(host_addrs(), addrs);
    assert_eq!(host_routes(), routes);
}

#[test]
fn sweep_removes_dead_owner() {
    let _g = serial();
    let mut child = Command::new(ip_program())
        .arg("-V")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    assert!(!pid_alive(dead_pid));
    let name = format!("{NETNS_PREFIX}sweep-{dead_pid}-0");
    let mut add = Command::new(ip_program());
    add.args(["netns", "add", &name]);
    run_command(add, "ip netns add", CMD_TIMEOUT).unwrap();
    assert!(netns_exists(&name));

    // Our own namespaces are kept.
    let own = Netns::new("sweepown").unwrap();
    sweep_stale();
    let swept = !netns_exists(&name);
    if !swept {
        delete_netns(&name);
    }
    assert!(swept, "stale namespace {name} was not swept");
    assert!(netns_exists(own.name()));
}

#[test]
fn names() {
    let _g = serial();
    let (a, b) = veth_names(4_194_304, u32::MAX);
    assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
    assert_ne!(a, b);
    assert_ne!(veth_names(0x12, 0x34).0, veth_names(0x123, 0x4).0);
    assert_eq!(owner_pid("xg-udpa-1234-7"), Some(1234));
    assert_eq!(owner_pid("xg-1234-7"), None);
    assert_eq!(owner_pid("xg-udp-12x-7"), None);
    assert_eq!(owner_pid("other-udp-1234-7"), None);
    assert_eq!(sanitize_tag("Foo-Bar_9"), "foobar9");
    assert_eq!(sanitize_tag("--"), "t");
    assert_eq!(
        lab_addrs(17, 2),
        (
            Ipv4Addr::new(10, 200, 17, 2),
            "fd00:200:17::2".parse().unwrap()
        )
    );
    assert_eq!(
        sysctl_path("net.ipv6.conf.all.accept_ra").unwrap(),
        Path::new("/proc/sys/net/ipv6/conf/all/accept_ra")
    );
    assert!(sysctl_path("net/../../etc").is_err());
    assert_eq!(parse_mac("02:fc:00:00:00:01"), Some([2, 0xfc, 0, 0, 0, 1]));
    assert_eq!(parse_mac("02:fc:00:00:00"), None);
    assert_eq!(format_mac(&[2, 0xfc, 0, 0, 0, 1]), "02:fc:00:00:00:01");
}

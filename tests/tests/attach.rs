//! Attach, count, detach (end to end): `xdpgate run` in native and skb mode on
//! one end of a veth pair in a lab namespace; real ping, TCP and UDP of both
//! families cross it; `xdpgate status` names the program and `xdpgate stats`
//! must count exactly what the peer sent; SIGTERM, SIGINT and SIGKILL leave
//! the program enforcing (pinned), and `xdpgate down` leaves nothing behind.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use serde_json::Value;
use xdpgate_tests::{
    lab::{Lab, Netns, serial},
    xdpgate::{Daemon, sum, xdp_on},
};

/// Packets and bytes the peer's veth end transmitted (`ip -s -j link`).
fn tx_counters(ns: &Netns, ifname: &str) -> (u64, u64) {
    let out = ns
        .exec("ip", &["-s", "-j", "link", "show", "dev", ifname])
        .expect("ip -s link");
    let v: Value = serde_json::from_str(&out).expect("ip -j JSON");
    let tx = &v[0]["stats64"]["tx"];
    (
        tx["packets"].as_u64().unwrap(),
        tx["bytes"].as_u64().unwrap(),
    )
}

/// `Ip: OutRequests` and `Ip6OutRequests` of the namespace: every IPv4 and IPv6
/// packet its stack originated.
fn out_requests(ns: &Netns) -> (u64, u64) {
    ns.run(|| {
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap();
        let mut ip = snmp.lines().filter(|l| l.starts_with("Ip: "));
        let names: Vec<&str> = ip.next().unwrap().split_whitespace().collect();
        let values: Vec<&str> = ip.next().unwrap().split_whitespace().collect();
        let i = names.iter().position(|n| *n == "OutRequests").unwrap();
        let v4 = values[i].parse().unwrap();
        let snmp6 = std::fs::read_to_string("/proc/thread-self/net/snmp6").unwrap();
        let v6 = snmp6
            .lines()
            .find_map(|l| l.strip_prefix("Ip6OutRequests"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        (v4, v6)
    })
}

/// One TCP echo and one UDP echo between b (client) and a (server) on `addr`.
fn tcp_udp_exchange(lab: &Lab, addr: IpAddr) {
    let any: IpAddr = if addr.is_ipv4() {
        "0.0.0.0".parse().unwrap()
    } else {
        "::".parse().unwrap()
    };
    let (tcp, udp) = lab.a.run(|| {
        (
            TcpListener::bind(SocketAddr::new(addr, 0)).unwrap(),
            UdpSocket::bind(SocketAddr::new(addr, 0)).unwrap(),
        )
    });
    let (tport, uport) = (
        tcp.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    );
    let server = std::thread::spawn(move || {
        let (mut conn, _) = tcp.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).unwrap();
        conn.write_all(&buf[..n]).unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (n, from) = udp.recv_from(&mut buf).unwrap();
        udp.send_to(&buf[..n], from).unwrap();
        // Wait for the client's FIN so the connection closes in order.
        let _ = conn.read(&mut buf);
    });
    lab.b.run(|| {
        let mut c =
            TcpStream::connect_timeout(&SocketAddr::new(addr, tport), Duration::from_secs(5))
                .unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"tcp over xdpgate").unwrap();
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"tcp over xdpgate");
        let u = UdpSocket::bind(SocketAddr::new(any, 0)).unwrap();
        u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        u.send_to(b"udp over xdpgate", SocketAddr::new(addr, uport))
            .unwrap();
        let (n, _) = u.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"udp over xdpgate");
    });
    server.join().unwrap();
}

fn ping(lab: &Lab, addr: IpAddr, count: u32) {
    let out = lab
        .b
        .command("ping")
        .args([
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            &addr.to_string(),
        ])
        .output()
        .expect("run ping");
    assert!(
        out.status.success(),
        "ping {addr} failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn attach_count_detach(mode: &str, subnet: u8) {
    let _g = serial();
    let lab = Lab::new("e2e", subnet).expect("lab");
    let iface = lab.a_end.ifname.clone();
    let daemon = Daemon::start(&lab.a, &[&iface], mode).expect("xdpgate run");
    assert!(
        daemon.log().contains(&format!("in {mode} mode")),
        "daemon must log the mode it got: {}",
        daemon.log()
    );

    // status names our interface, the mode and the program.
    let (status, ours) = daemon.dirs.status(&lab.a, &iface);
    assert_eq!(ours.len(), 1, "{status}");
    assert_eq!(ours[0]["mode"], mode);
    assert_eq!(ours[0]["xdpgate"], true);
    assert_eq!(ours[0]["program"], "xdpgate");
    assert_eq!(status["daemon"]["running"], true);
    assert_eq!(status["daemon"]["pid"], daemon.pid());

    let before = daemon.stats(&lab.a);
    let tx0 = tx_counters(&lab.b, &lab.b_end.ifname);
    let (v4_0, v6_0) = out_requests(&lab.b);

    let v4 = IpAddr::V4(lab.a_end.ipv4);
    let v6 = IpAddr::V6(lab.a_end.ipv6);
    ping(&lab, v4, 3);
    ping(&lab, v6, 3);
    tcp_udp_exchange(&lab, v4);
    tcp_udp_exchange(&lab, v6);
    std::thread::sleep(Duration::from_millis(300)); // let the last ACKs land

    let after = daemon.stats(&lab.a);
    let tx1 = tx_counters(&lab.b, &lab.b_end.ifname);
    let (v4_1, v6_1) = out_requests(&lab.b);

    let delta = |rows_a: &[Value], rows_b: &[Value], family, action| {
        let (p0, b0) = sum(rows_a, &iface, family, action);
        let (p1, b1) = sum(rows_b, &iface, family, action);
        (p1 - p0, b1 - b0)
    };
    // Everything the peer put on the wire reached the program and was counted once.
    let (all_p, all_b) = delta(&before, &after, None, None);
    // xdpgate counts bytes from the Ethernet header on. veth reports the peer's
    // tx bytes with the header in skb mode, but in native mode it reports the
    // receiving queue's count, taken after eth_type_trans() pulled the 14-byte
    // Ethernet header (no VLAN tags here).
    let l2_not_in_tx = if mode == "native" { 14 * all_p } else { 0 };
    assert_eq!(
        (all_p, all_b),
        (tx1.0 - tx0.0, tx1.1 - tx0.1 + l2_not_in_tx),
        "packets/bytes counted vs sent by peer"
    );
    // Per family, against what the peer's IP stacks originated.
    let (p4, _) = delta(&before, &after, Some("ipv4"), None);
    let (p6, _) = delta(&before, &after, Some("ipv6"), None);
    assert_eq!(
        p4,
        v4_1 - v4_0,
        "IPv4 packets counted vs originated by peer"
    );
    assert_eq!(
        p6,
        v6_1 - v6_0,
        "IPv6 packets counted vs originated by peer"
    );
    // 3 echo requests + SYN, ACK, data, FIN at least + 1 datagram, per family.
    const AT_LEAST: u64 = 3 + 4 + 1;
    assert!(p4 >= AT_LEAST, "ipv4 {p4}");
    assert!(p6 >= AT_LEAST, "ipv6 {p6}");
    // This stage of the datapath passes everything.
    assert_eq!(delta(&before, &after, None, Some("pass")), (all_p, all_b));
    assert_eq!(sum(&after, &iface, None, Some("drop")), (0, 0));

    let maps = xdpgate::paths::maps_dir(xdpgate_common::pins::SCHEMA_VERSION);
    assert!(daemon.dirs.bpffs.join(maps).join("XG_STATS").exists());
    let (status, dirs) = daemon.stop_keeping_state(libc::SIGTERM);
    assert!(
        status.success(),
        "xdpgate exit status after SIGTERM: {status}"
    );
    assert!(xdp_on(&lab.a, &iface), "SIGTERM leaves {iface} enforcing");
    dirs.run_ok(&lab.a, &["down"]);
    assert!(!xdp_on(&lab.a, &iface), "XDP program left on {iface}");
    assert!(
        !dirs.bpffs.exists(),
        "pinned maps left in {}",
        dirs.bpffs.display()
    );
}

#[test]
fn native_mode_counts_both_families_and_down_detaches() {
    attach_count_detach("native", 20);
}

#[test]
fn skb_mode_counts_both_families_and_down_detaches() {
    attach_count_detach("skb", 21);
}

#[test]
fn sigint_leaves_the_program_enforcing() {
    let _g = serial();
    let lab = Lab::new("sigint", 22).expect("lab");
    let iface = lab.a_end.ifname.clone();
    let daemon = Daemon::start(&lab.a, &[&iface], "native").expect("xdpgate run");
    assert!(xdp_on(&lab.a, &iface));
    let (status, _dirs) = daemon.stop_keeping_state(libc::SIGINT);
    assert!(status.success(), "{status}");
    assert!(xdp_on(&lab.a, &iface));
}

#[test]
fn killed_daemon_leaves_the_program_enforcing() {
    // The links are pinned: they outlive the process.
    let _g = serial();
    let lab = Lab::new("kill", 23).expect("lab");
    let iface = lab.a_end.ifname.clone();
    let daemon = Daemon::start(&lab.a, &[&iface], "native").expect("xdpgate run");
    assert!(xdp_on(&lab.a, &iface));
    let (status, dirs) = daemon.stop_keeping_state(libc::SIGKILL);
    assert!(!status.success());
    assert!(xdp_on(&lab.a, &iface));
    drop(dirs); // removing the pins detaches
    assert!(!xdp_on(&lab.a, &iface));
}

#[test]
fn jumbo_frames_of_both_families_are_classified_in_native_mode() {
    // MTU 9000 on both ends: native XDP attaches only with a program that
    // takes multi-buffer frames, and 8,900-byte datagrams of both families
    // are judged like small ones.
    let _g = serial();
    let lab = Lab::new("jumbo", 24).expect("lab");
    let iface = lab.a_end.ifname.clone();
    lab.a
        .exec("ip", &["link", "set", &iface, "mtu", "9000"])
        .unwrap();
    lab.b
        .exec("ip", &["link", "set", &lab.b_end.ifname, "mtu", "9000"])
        .unwrap();
    let dir = std::env::temp_dir().join(format!("xdpgate-jumbo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nid = 1\npriority = 1\nproto = \"udp\"\ndport = 7001\naction = \"deny\"\n\n\
         [[rule]]\nid = 2\npriority = 2\nproto = \"udp\"\ndport = 7000\naction = \"allow\"\n",
    )
    .unwrap();
    let d = Daemon::start_with(
        &lab.a,
        &[&iface],
        "native",
        &[
            "--acl-file".as_ref(),
            rules.as_os_str(),
            "--no-metrics".as_ref(),
        ],
    )
    .expect("native mode attaches at MTU 9000");
    let (allowed, denied) = lab.a.run(|| {
        let bind = |port| {
            let s = UdpSocket::bind(SocketAddr::from(([0u16; 8], port))).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            s
        };
        (bind(7000), bind(7001))
    });
    // Receivers run while the datagrams are sent: 40 jumbo datagrams would
    // overflow a default receive buffer.
    let drain = |s: UdpSocket| {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 9000];
            let mut sizes = Vec::new();
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                sizes.push(n);
            }
            sizes
        })
    };
    let (allowed, denied) = (drain(allowed), drain(denied));
    let payload = vec![0x5a_u8; 8900];
    const EACH: usize = 20;
    for dst in [IpAddr::V4(lab.a_end.ipv4), IpAddr::V6(lab.a_end.ipv6)] {
        let sock = lab
            .b
            .run(|| UdpSocket::bind(if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap());
        for _ in 0..EACH {
            sock.send_to(&payload, SocketAddr::new(dst, 7000)).unwrap();
            sock.send_to(&payload, SocketAddr::new(dst, 7001)).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let got = allowed.join().unwrap();
    assert_eq!(
        got.len(),
        2 * EACH,
        "allowed jumbo datagrams arrive: {got:?}"
    );
    assert!(got.iter().all(|n| *n == payload.len()), "whole: {got:?}");
    assert!(
        denied.join().unwrap().is_empty(),
        "denied jumbo datagrams are dropped"
    );
    // Ethernet + IP + UDP headers + payload: the whole frame, all buffers.
    let frame = |ip: u64| 14 + ip + 8 + 8900;
    let rows = d.stats(&lab.a);
    for (family, ip) in [("ipv4", 20), ("ipv6", 40)] {
        // The family counters also see the link's own traffic (an MLD
        // report after the MTU change, now and then): at least the datagrams.
        let (p, b) = sum(&rows, &iface, Some(family), Some("pass"));
        assert!(p >= EACH as u64, "{family} passed: {p}");
        assert!(b >= EACH as u64 * frame(ip), "{family} bytes: {b}");
    }
    let out = d.dirs.run_ok(&lab.a, &["acl", "list", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let rule = |id: u64| {
        v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap()
    };
    // Exactly the datagrams, counted over their whole frames.
    let (denied, allowed) = (rule(1), rule(2));
    assert_eq!(denied["packets"], 2 * EACH as u64, "{denied}");
    assert_eq!(allowed["packets"], 2 * EACH as u64, "{allowed}");
    assert_eq!(
        allowed["bytes"],
        EACH as u64 * (frame(20) + frame(40)),
        "{allowed}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

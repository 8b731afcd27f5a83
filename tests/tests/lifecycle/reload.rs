//! Interfaces added and removed by reload, under traffic.
use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use xdpgate_tests::{
    lab::{Lab, serial},
    xdpgate::{Daemon, StateDirs, xdp_on},
};

use super::traffic::DENIED;

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

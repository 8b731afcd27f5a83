//! A cold start installs everything before the first attach: with a
//! 1,000,000-prefix deny set and a default-deny policy, under traffic that
//! flows before the daemon starts, the program's own counters show that not
//! one packet it saw was passed.
use std::{fmt::Write as _, net::Ipv4Addr, time::Duration, time::Instant};

use xdpgate_tests::{
    lab::{Lab, serial},
    xdpgate::{Daemon, StateDirs, sum},
};

use super::traffic::Traffic;

/// A rule file denying a set of `n` prefixes, half of each family (host
/// routes in 100.64.0.0/10 and fd00:200:ffff::/48), the lab peer's
/// addresses among them, and `iface`'s default policy deny.
fn deny_set(lab: &Lab, iface: &str, n: u32) -> String {
    let mut set = String::with_capacity(n as usize * 24);
    let _ = write!(set, "\"{}/32\",\"{}/128\"", lab.b_end.ipv4, lab.b_end.ipv6);
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 0));
    for i in 0..n / 2 - 1 {
        let _ = write!(set, ",\"{}/32\"", Ipv4Addr::from(base + i));
        let _ = write!(
            set,
            ",\"fd00:200:ffff::{:x}:{:x}/128\"",
            i >> 16,
            i & 0xffff
        );
    }
    format!(
        "[sets]\nbig = [{set}]\n\n[[rule]]\nid = 1\npriority = 1\nsrc = \"@big\"\naction = \"deny\"\n\n\
         [policy]\n{iface} = \"deny\"\n"
    )
}

#[test]
fn a_cold_start_with_a_million_prefixes_judges_the_first_packet_by_the_whole_policy() {
    let _g = serial();
    let lab = Lab::new("lccold", 130).expect("lab");
    let iface = lab.a_end.ifname.clone();
    let dirs = StateDirs::unique("lccold");
    std::fs::create_dir_all(&dirs.run).unwrap();
    let file = dirs.run.join("big.toml");
    std::fs::write(&file, deny_set(&lab, &iface, 1_000_000)).unwrap();
    // Traffic first: until the program is attached, nothing stops it.
    let traffic = Traffic::start(&lab);
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let args = [
        "--acl-file".as_ref(),
        file.as_os_str(),
        "--no-metrics".as_ref(),
    ];
    let d = Daemon::start_in(&lab.a, dirs, &[&iface], "native", &args).expect("start");
    let ready = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let rows = d.stats(&lab.a);
    let (passed, _) = sum(&rows, &iface, Some("ipv4"), Some("pass"));
    let (passed6, _) = sum(&rows, &iface, Some("ipv6"), Some("pass"));
    let (dropped, _) = sum(&rows, &iface, None, Some("drop"));
    let counted = traffic.stop();
    eprintln!(
        "1,000,000 prefixes: enforcing {:.1} s after the start; the program passed {passed} IPv4 and {passed6} IPv6 packets, dropped {dropped}; before it was attached {} pings were answered",
        ready.as_secs_f64(),
        counted.ping_replies
    );
    assert!(
        counted.ping_replies > 0,
        "before the attach nothing stops the pings (this checks the counting)"
    );
    assert_eq!(
        (passed, passed6),
        (0, 0),
        "every packet the program saw was judged by the whole policy"
    );
    assert!(dropped > 100, "traffic reached the program: {dropped}");
}

//! Restarts and upgrades under traffic: SIGKILL, SIGTERM, another build of
//! the program, the next schema.
use std::time::Duration;

use xdpgate::paths::maps_dir;
use xdpgate_tests::{
    lab::{Lab, serial},
    xdpgate::{Daemon, StateDirs, binary, schema_variant_binary, variant_binary, xdp_on},
};

use super::traffic::{Counted, METRICS, Traffic, metric, rule_packets, rules};

/// What starts after the daemon is stopped under traffic.
enum Next {
    /// This build again (a restart).
    Same,
    /// Another build of the program, same schema (its tag differs).
    Program(std::path::PathBuf),
    /// A build of the next schema (a migration; counters start from zero).
    Schema(std::path::PathBuf),
}

/// Kill or stop the daemon under traffic, wait, start `next` on the same
/// pins: 0 leaked, the allowed flow never stops.
fn restart_under_traffic(signal: i32, subnet: u8, tag: &str, next: &Next) {
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
    let out = dirs.run(
        &lab.a,
        &["status", "--output", "json"],
        Duration::from_secs(10),
    );
    // 4: enforcing without a daemon.
    assert_eq!(out.status.code(), Some(4));
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("\"without_daemon\""), "{out}");
    let row = |d: &StateDirs| d.status(&lab.a, &iface).1[0].clone();
    let was = row(&dirs);
    std::thread::sleep(Duration::from_secs(2));
    let bin = match next {
        Next::Same => binary(),
        Next::Program(b) | Next::Schema(b) => b.clone(),
    };
    let d = Daemon::start_binary(&lab.a, dirs, &bin, &[&iface], "native", &args).expect("restart");
    let now = row(&d.dirs);
    eprintln!(
        "program tag {} -> {}, schema {} -> {}",
        was["prog_tag"], now["prog_tag"], was["schema"], now["schema"]
    );
    match next {
        Next::Same => {
            assert!(d.log().contains("adopting the datapath"), "{}", d.log());
            assert_eq!(now["prog_tag"], was["prog_tag"]);
        }
        Next::Program(_) => {
            assert!(d.log().contains("adopting the datapath"), "{}", d.log());
            assert_ne!(now["prog_tag"], was["prog_tag"], "another program");
            assert_eq!(now["schema"], was["schema"]);
        }
        Next::Schema(_) => {
            assert!(d.log().contains("migrating the datapath"), "{}", d.log());
            assert_eq!(
                now["schema"].as_u64(),
                was["schema"].as_u64().map(|s| s + 1),
                "the next schema is committed"
            );
            let old = maps_dir(u32::try_from(was["schema"].as_u64().unwrap()).unwrap());
            assert!(
                !d.dirs.bpffs.join(old).exists(),
                "the older maps are removed"
            );
        }
    }
    std::thread::sleep(Duration::from_millis(800));
    let after = rule_packets(&d, &lab);
    let drops_after = metric(&lab, "xdpgate_packets_total", &dropped);
    let since_after = metric(&lab, "xdpgate_datapath_attached_timestamp_seconds", &since);
    // The pins stay until the traffic has stopped (dropping them detaches).
    let mut kept = None;
    let mut kept_daemon = None;
    if matches!(next, Next::Schema(_)) {
        // Downgrading onto the newer schema is refused, and changes nothing:
        // the traffic below goes on meeting the same gate.
        let (_, dirs) = d.stop_keeping_state(libc::SIGTERM);
        let out = dirs.run(
            &lab.a,
            &["run", "--iface", &iface, "--mode", "native", "--no-metrics"],
            Duration::from_secs(60),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("newer xdpgate") && err.contains("/meta"),
            "{err}"
        );
        assert_eq!(row(&dirs)["prog_tag"], now["prog_tag"], "nothing changed");
        std::thread::sleep(Duration::from_millis(500));
        kept = Some(dirs);
    } else {
        kept_daemon = Some(d);
    }
    let Counted {
        denied_udp,
        denied_tcp,
        ping_replies,
        allowed,
        sent,
    } = traffic.stop();
    drop((kept, kept_daemon));
    eprintln!(
        "signal {signal}: leaked {denied_udp} UDP + {denied_tcp} TCP + {ping_replies} pings; allowed {allowed} of {sent} received; rule 1 counter {before} -> {after}; dropped {drops_before} -> {drops_after}"
    );
    assert_eq!(
        (denied_udp, denied_tcp, ping_replies),
        (0, 0, 0),
        "denied packets leaked"
    );
    assert!(sent > 1000, "too little traffic: {sent}");
    // The allowed flow never stopped (a few in flight at the end may be lost).
    assert!(
        allowed + 20 >= sent,
        "allowed: {allowed} of {sent} received"
    );
    assert_eq!(
        since_after, since_before,
        "the interface enforces since its first attach"
    );
    if !matches!(next, Next::Schema(_)) {
        assert!(
            after > before,
            "rule counters continue: {before} -> {after}"
        );
        // Counted from the first packet on: about 4 s of drops now against
        // 0.8 s then (a reset at the restart would leave about 0.8 s again).
        assert!(
            drops_after > 2.0 * drops_before,
            "xdpgate_packets_total continues across the restart: {drops_before} -> {drops_after}"
        );
    }
}

#[test]
fn sigkill_and_restart_leak_no_denied_packet() {
    restart_under_traffic(libc::SIGKILL, 120, "lckill", &Next::Same);
}

#[test]
fn sigterm_and_restart_leak_no_denied_packet() {
    restart_under_traffic(libc::SIGTERM, 121, "lcterm", &Next::Same);
}

#[test]
fn an_upgrade_to_a_build_with_another_program_leaks_no_denied_packet() {
    // Same schema, another program (its tag differs): each link gets the new
    // program in one BPF_LINK_UPDATE.
    restart_under_traffic(
        libc::SIGTERM,
        128,
        "lcupgr",
        &Next::Program(variant_binary()),
    );
}

#[test]
fn an_upgrade_to_a_new_schema_migrates_and_leaks_no_denied_packet() {
    // The next schema (a map value with one field more): new maps beside the
    // old, filled, each link switched, the commit, the old maps removed; then
    // this build refuses to start on the newer pins and changes nothing.
    restart_under_traffic(
        libc::SIGTERM,
        129,
        "lcschema",
        &Next::Schema(schema_variant_binary()),
    );
}

//! The daemon's checks of the TCP sysctls SYN cookies depend on, in a fresh
//! network namespace (the sysctls are per namespace): rules with
//! `syncookie = true` are refused with the sysctl, its value and the fix,
//! exit 64 and nothing attached, while `net.ipv4.tcp_syncookies` is not 2
//! (at start, on `acl replace`, on reload); with 2 they are accepted, the
//! datapath's `XG_SYNCOOKIE` carries what the namespace's sysctls allow, and
//! `status` says SYN cookies are enabled.
use std::{path::PathBuf, process::Output, time::Duration};

use serde_json::Value;
use xdpgate_tests::{
    lab::{Lab, serial},
    xdpgate::{Daemon, StateDirs, http_get, xdp_on},
};

/// A file removed on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp(tag: &str, ext: &str) -> TempFile {
    TempFile(std::env::temp_dir().join(format!(
        "xdpgate-syncookie-{tag}-{}.{ext}",
        std::process::id()
    )))
}

const RULE_200: &str = "[[rule]]\nid = 200\npriority = 200\nproto = \"tcp\"\ndport = \"443\"\naction = \"allow\"\nsyncookie = true\n\n";
const RULE_300: &str = "[[rule]]\nid = 300\npriority = 300\nproto = \"tcp\"\ndport = \"8443\"\naction = \"allow\"\nsyncookie = true\n\n";
const RULE_100: &str = "[[rule]]\nid = 100\npriority = 100\nproto = \"icmp\"\naction = \"allow\"\nlimit = { pps = 1, burst_packets = 1, per = \"rule\" }\n\n";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a refusal for `tcp_syncookies = 1`: exit 64 and the message.
fn assert_refused(out: &Output, what: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(64), "{what} exits 64: {err}");
    for part in [
        "200",
        "syncookie",
        "net.ipv4.tcp_syncookies is 1",
        "sysctl -w net.ipv4.tcp_syncookies=2",
    ] {
        assert!(err.contains(part), "{what}: {part:?} missing in: {err}");
    }
}

/// `XG_SYNCOOKIE` as pinned by the daemon: (flags, wscale, window, refresh_ns).
fn syncookie_map(dirs: &StateDirs) -> (u32, u32, u32, u64) {
    let pin = dirs
        .bpffs
        .join(xdpgate::paths::maps_dir(
            xdpgate_common::pins::SCHEMA_VERSION,
        ))
        .join(xdpgate_common::limit::maps::SYNCOOKIE);
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&pin)
        .output()
        .expect("run bpftool");
    assert!(out.status.success(), "bpftool: {}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    let bytes: Vec<u8> = v[0]["value"]
        .as_array()
        .expect("value bytes")
        .iter()
        .map(|b| {
            u8::from_str_radix(b.as_str().expect("hex").trim_start_matches("0x"), 16).expect("hex")
        })
        .collect();
    let u32_at = |i: usize| u32::from_ne_bytes(bytes[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_ne_bytes(bytes[i..i + 8].try_into().unwrap());
    (u32_at(0), u32_at(4), u32_at(8), u64_at(16))
}

#[test]
fn syncookie_rules_need_tcp_syncookies_2_in_the_daemons_namespace() {
    use xdpgate_common::limit::{
        SYNCOOKIE_ENABLED, SYNCOOKIE_SACK, SYNCOOKIE_TIMESTAMPS, SYNCOOKIE_WSCALE,
    };
    let _g = serial();
    let lab = Lab::new("syncookie", 93).expect("lab");
    let iface = lab.a_end.ifname.clone();
    let rules = temp("rules", "toml");
    let replace = ["acl", "replace", "--file", rules.0.to_str().unwrap()];

    // tcp_syncookies = 1 (the kernel's default in a new namespace): a daemon
    // without syncookie rules starts, with SYN cookies disabled and why.
    lab.a.sysctl("net.ipv4.tcp_syncookies", "1").unwrap();
    lab.a.sysctl("net.ipv4.tcp_timestamps", "1").unwrap();
    lab.a.sysctl("net.ipv4.tcp_sack", "1").unwrap();
    lab.a.sysctl("net.ipv4.tcp_window_scaling", "1").unwrap();
    lab.a
        .sysctl("net.ipv4.tcp_rmem", "4096 131072 6291456")
        .unwrap();
    let d = Daemon::start(&lab.a, &[&iface], "skb").expect("start without syncookie rules");
    let (status, _) = d.dirs.status(&lab.a, &iface);
    let sc = &status["daemon"]["detail"]["syncookies"];
    assert_eq!(sc["enabled"], false, "{status}");
    assert!(
        sc["reason"]
            .as_str()
            .unwrap_or("")
            .contains("net.ipv4.tcp_syncookies is 1"),
        "{status}"
    );
    assert_eq!(syncookie_map(&d.dirs).0 & SYNCOOKIE_ENABLED, 0);

    // ... and refuses a change that brings a syncookie rule: exit 64, the
    // sysctl, its value and the fix; the rules stay as they were.
    std::fs::write(&rules.0, format!("{RULE_100}{RULE_200}")).unwrap();
    let before = d.dirs.run_ok(&lab.a, &["acl", "list", "-o", "json"]);
    let out = d.dirs.run(&lab.a, &replace, Duration::from_secs(60));
    assert_refused(&out, "acl replace under tcp_syncookies = 1");
    let after = d.dirs.run_ok(&lab.a, &["acl", "list", "-o", "json"]);
    assert_eq!(before, after, "the refusal changed no rule");

    // tcp_syncookies = 2, timestamps 1: accepted, with the warning; the
    // datapath sends no timestamps and keeps SACK and window scaling.
    lab.a.sysctl("net.ipv4.tcp_syncookies", "2").unwrap();
    d.dirs.run_ok(&lab.a, &replace);
    assert!(
        d.log().contains("net.ipv4.tcp_timestamps=2"),
        "the timestamps warning names the fix: {}",
        d.log()
    );
    let (flags, wscale, window, refresh_ns) = syncookie_map(&d.dirs);
    assert_eq!(
        flags,
        SYNCOOKIE_ENABLED | SYNCOOKIE_SACK | SYNCOOKIE_WSCALE,
        "enabled, no timestamps under tcp_timestamps = 1"
    );
    let rmem_max: u64 = lab
        .a
        .sysctl_get("net.core.rmem_max")
        .map_or(0, |v| v.parse().unwrap());
    let space = rmem_max.max(6_291_456);
    assert_eq!(wscale, (space.ilog2().saturating_sub(15)).min(14));
    assert_eq!((window, refresh_ns), (65_535, 30_000_000_000));
    let (status, _) = d.dirs.status(&lab.a, &iface);
    let sc = &status["daemon"]["detail"]["syncookies"];
    assert_eq!(sc["enabled"], true, "{status}");
    assert!(
        sc["warning"]
            .as_str()
            .unwrap_or("")
            .contains("tcp_timestamps"),
        "{status}"
    );
    let acl: Value =
        serde_json::from_str(&d.dirs.run_ok(&lab.a, &["acl", "list", "-o", "json"])).unwrap();
    let rule = acl["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == 200)
        .expect("rule 200 listed");
    assert_eq!(rule["syncookie"], true);
    assert_eq!(rule["limit_counters"]["cookies_sent"], 0, "{rule}");
    let text = d.dirs.run_ok(&lab.a, &["acl", "list"]);
    assert!(
        text.contains("syncookie: limited 0, cookies_sent 0"),
        "{text}"
    );

    // Timestamps 2 and the next change: the datapath sends timestamps.
    lab.a.sysctl("net.ipv4.tcp_timestamps", "2").unwrap();
    std::fs::write(&rules.0, format!("{RULE_100}{RULE_200}{RULE_300}")).unwrap();
    d.dirs.run_ok(&lab.a, &replace);
    assert_eq!(
        syncookie_map(&d.dirs).0,
        SYNCOOKIE_ENABLED | SYNCOOKIE_TIMESTAMPS | SYNCOOKIE_SACK | SYNCOOKIE_WSCALE
    );

    // Connections to port 443 from b (nothing listens: the kernel resets
    // what reaches it) and pings over rule 100's limit: the rules' counters
    // in `acl list` (one map lookup per counter) and the totals of `stats`
    // (batch lookups over every rule) agree, and are not all zero.
    let target = std::net::SocketAddr::new(lab.a_end.ipv4.into(), 443);
    lab.b.run(|| {
        for _ in 0..5 {
            let _ = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1));
        }
    });
    // Ten pings in a tenth of a second against rule 100's 1 packet/s, burst 1
    // (some are lost: the exit code does not matter).
    let a4 = lab.a_end.ipv4.to_string();
    let _ = lab
        .b
        .exec("ping", &["-c", "10", "-i", "0.01", "-W", "1", &a4]);
    let acl: Value =
        serde_json::from_str(&d.dirs.run_ok(&lab.a, &["acl", "list", "-o", "json"])).unwrap();
    let stats: Value =
        serde_json::from_str(&d.dirs.run_ok(&lab.a, &["stats", "-o", "json"])).unwrap();
    let mut seen = 0;
    for kind in xdpgate_common::limit::rule_stat::NAMES {
        let per_rule: u64 = acl["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["limit_counters"][kind].as_u64())
            .sum();
        assert_eq!(
            stats["limits"][kind].as_u64(),
            Some(per_rule),
            "{kind}: stats {stats} vs acl list {acl}"
        );
        seen += per_rule;
    }
    assert!(seen >= 5 + 8, "five SYNs and eight limited pings: {acl}");
    assert!(
        stats["limits"]["limited"].as_u64() >= Some(8),
        "at most two of ten pings pass 1/s with a burst of 1: {stats}"
    );
    eprintln!(
        "limit counters after 5 connections and 10 pings: {}",
        stats["limits"]
    );
    // The metrics say the same, per rule and kind, and count the drops
    // under their reason.
    let (code, body) = http_get(&lab.a, 9464, "/metrics").expect("scrape");
    assert_eq!(code, 200);
    let sample = |series: &str| -> Option<u64> {
        body.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let limited_100 = acl["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == 100)
        .and_then(|r| r["limit_counters"]["limited"].as_u64());
    assert_eq!(
        sample(r#"xdpgate_rule_limit_packets_total{kind="limited",rule_id="100"}"#),
        limited_100,
        "{body}"
    );
    assert_eq!(
        sample(r#"xdpgate_rule_limit_packets_total{kind="cookies_sent",rule_id="200"}"#),
        stats["limits"]["cookies_sent"].as_u64(),
        "{body}"
    );
    let reason = format!(
        r#"xdpgate_drop_reason_packets_total{{interface="{iface}",reason="rate_limited"}}"#
    );
    assert!(sample(&reason) >= limited_100, "{body}");

    // A restart under tcp_syncookies = 1 that would resume the saved rules
    // is refused, exit 64, with the same message.
    let (_, dirs) = d.stop_keeping_state(libc::SIGTERM);
    lab.a.sysctl("net.ipv4.tcp_syncookies", "1").unwrap();
    let out = dirs.run(
        &lab.a,
        &["run", "--iface", &iface, "--mode", "skb"],
        Duration::from_secs(60),
    );
    assert_refused(&out, "a start resuming syncookie rules");
    assert!(
        xdp_on(&lab.a, &iface),
        "the earlier datapath still enforces"
    );
    assert_eq!(
        syncookie_map(&dirs).0 & SYNCOOKIE_ENABLED,
        SYNCOOKIE_ENABLED,
        "and the refused start did not touch its SYN-cookie configuration"
    );
    // With 2 it starts, and resumes them.
    lab.a.sysctl("net.ipv4.tcp_syncookies", "2").unwrap();
    let d = Daemon::start_in(&lab.a, dirs, &[&iface], "skb", &[]).expect("restart");
    assert!(d.log().contains("resuming the state"), "{}", d.log());
    assert_eq!(
        syncookie_map(&d.dirs).0 & SYNCOOKIE_ENABLED,
        SYNCOOKIE_ENABLED
    );
    assert!(xdp_on(&lab.a, &iface));
}

/// A configuration on `iface` with rule 200 (`syncookie`) and `[ddos]`
/// `syncookie_refresh_secs = refresh`.
fn config(iface: &str, refresh: u32) -> String {
    format!(
        "[daemon]\nshutdown_grace_seconds = 3\n\n[metrics]\nlisten = []\n\n\
         [[interface]]\nname = \"{iface}\"\nmode = \"skb\"\n\n\
         [ddos]\nsyncookie_refresh_secs = {refresh}\n\n{RULE_200}"
    )
}

#[test]
fn a_configuration_with_syncookie_rules_starts_and_reloads_only_with_tcp_syncookies_2() {
    use xdpgate_common::limit::SYNCOOKIE_ENABLED;
    let _g = serial();
    let lab = Lab::new("sycfg", 96).expect("lab");
    let iface = lab.a_end.ifname.clone();
    let cfg = temp("cfg", "toml");
    std::fs::write(&cfg.0, config(&iface, 10)).unwrap();
    let args = ["--config".as_ref(), cfg.0.as_os_str()];

    lab.a.sysctl("net.ipv4.tcp_syncookies", "1").unwrap();
    let dirs = StateDirs::unique("sycfg");
    let out = dirs.run(
        &lab.a,
        &["run", "--config", cfg.0.to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert_refused(&out, "a start from a configuration with a syncookie rule");
    assert!(
        !xdp_on(&lab.a, &iface),
        "nothing attached after the refusal"
    );

    lab.a.sysctl("net.ipv4.tcp_syncookies", "2").unwrap();
    let d = Daemon::start_in(&lab.a, dirs, &[], "", &args).expect("start under 2");
    let (flags, _, _, refresh_ns) = syncookie_map(&d.dirs);
    assert_eq!(flags & SYNCOOKIE_ENABLED, SYNCOOKIE_ENABLED);
    assert_eq!(refresh_ns, 10_000_000_000, "[ddos] syncookie_refresh_secs");

    // A reload under 1 is refused and changes nothing; under 2 it applies
    // the new [ddos] settings.
    std::fs::write(&cfg.0, config(&iface, 20)).unwrap();
    lab.a.sysctl("net.ipv4.tcp_syncookies", "1").unwrap();
    let out = d.dirs.run(&lab.a, &["reload"], Duration::from_secs(60));
    assert_refused(&out, "a reload");
    assert_eq!(syncookie_map(&d.dirs).3, 10_000_000_000, "unchanged");
    lab.a.sysctl("net.ipv4.tcp_syncookies", "2").unwrap();
    d.dirs.run_ok(&lab.a, &["reload"]);
    assert_eq!(syncookie_map(&d.dirs).3, 20_000_000_000, "reloaded");
}

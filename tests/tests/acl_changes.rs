//! ACL changes on a running daemon (end to end): `acl`, `set` and `policy`
//! changes through the CLI, and rule files (`--acl-file`, `acl replace`), take
//! effect on live ping, TCP and UDP of both families while the daemon runs;
//! invalid changes are rejected with a clear error and change nothing.
use std::{net::IpAddr, time::Duration};

use serde_json::Value;
use xdpgate_tests::{
    lab::{Lab, serial},
    traffic::{ping_ok, reach, tcp_ok, udp_ok},
    xdpgate::Daemon,
};

fn cli(d: &Daemon, lab: &Lab, args: &[&str]) -> std::process::Output {
    d.dirs.run(&lab.a, args, Duration::from_secs(30))
}

fn cli_ok(d: &Daemon, lab: &Lab, args: &[&str]) -> String {
    d.dirs.run_ok(&lab.a, args)
}

fn rule_packets(d: &Daemon, lab: &Lab, id: u64) -> u64 {
    let v: Value = serde_json::from_str(&cli_ok(d, lab, &["acl", "list", "-o", "json"])).unwrap();
    v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .map(|r| r["packets"].as_u64().unwrap())
        .unwrap_or_else(|| panic!("rule {id} not listed: {v}"))
}

#[test]
fn runtime_changes_take_effect_on_live_traffic() {
    let _g = serial();
    let lab = Lab::new("acle2e", 40).expect("lab");
    let iface = lab.a_end.ifname.clone();
    let d = Daemon::start(&lab.a, &[&iface], "native").expect("xdpgate run");
    let v4 = IpAddr::V4(lab.a_end.ipv4);
    let v6 = IpAddr::V6(lab.a_end.ipv6);
    let (b4, b6) = (lab.b_end.ipv4.to_string(), lab.b_end.ipv6.to_string());

    assert_eq!(reach(&lab, v4), (true, true, true), "baseline v4");
    assert_eq!(reach(&lab, v6), (true, true, true), "baseline v6");

    // Deny ICMP from b's IPv4 address: IPv4 ping stops, nothing else does.
    cli_ok(
        &d,
        &lab,
        &[
            "acl",
            "add",
            "--id",
            "10",
            "--priority",
            "10",
            "--src",
            &format!("{b4}/32"),
            "--proto",
            "icmp",
            "--action",
            "deny",
        ],
    );
    let before = rule_packets(&d, &lab, 10);
    assert_eq!(reach(&lab, v4), (false, true, true), "icmp v4 denied");
    assert_eq!(reach(&lab, v6), (true, true, true), "v6 untouched");
    assert_eq!(
        rule_packets(&d, &lab, 10) - before,
        1,
        "one echo request counted"
    );

    // A set of b's IPv6 address, used to deny TCP: IPv6 TCP stops.
    cli_ok(&d, &lab, &["set", "add", "peers", &format!("{b6}/128")]);
    cli_ok(
        &d,
        &lab,
        &[
            "acl",
            "add",
            "--id",
            "20",
            "--priority",
            "20",
            "--src",
            "@peers",
            "--proto",
            "tcp",
            "--action",
            "deny",
        ],
    );
    assert_eq!(
        reach(&lab, v6),
        (true, false, true),
        "tcp v6 denied via set"
    );
    assert_eq!(reach(&lab, v4), (false, true, true), "set holds only v6");
    // Adding b's IPv4 address to the set extends the rule to IPv4 TCP.
    cli_ok(&d, &lab, &["set", "add", "peers", &format!("{b4}/32")]);
    assert_eq!(
        reach(&lab, v4),
        (false, false, true),
        "tcp v4 denied after set add"
    );

    // Invalid changes are rejected with a clear error and change nothing.
    let listed = cli_ok(&d, &lab, &["acl", "list", "-o", "json"]);
    let strip = |s: &str| -> Value {
        let mut v: Value = serde_json::from_str(s).unwrap();
        for r in v["rules"].as_array_mut().unwrap() {
            r.as_object_mut()
                .unwrap()
                .retain(|k, _| k != "packets" && k != "bytes");
        }
        v["defaults"] = Value::Null;
        v
    };
    for (args, msg) in [
        (
            vec![
                "acl",
                "add",
                "--id",
                "30",
                "--priority",
                "1",
                "--src",
                "10.0.0.1/33",
                "--action",
                "deny",
            ],
            "bad prefix",
        ),
        (
            vec![
                "acl",
                "add",
                "--id",
                "30",
                "--priority",
                "1",
                "--src",
                "10.0.0.1/24",
                "--action",
                "deny",
            ],
            "did you mean 10.0.0.0/24",
        ),
        (
            vec![
                "acl",
                "add",
                "--id",
                "30",
                "--priority",
                "1",
                "--src",
                "@nope",
                "--action",
                "deny",
            ],
            "unknown set @nope",
        ),
        (
            vec![
                "acl",
                "add",
                "--id",
                "10",
                "--priority",
                "1",
                "--action",
                "deny",
            ],
            "rule id 10 is used more than once",
        ),
        (
            vec![
                "acl",
                "add",
                "--id",
                "31",
                "--priority",
                "1",
                "--dport",
                "80",
                "--action",
                "deny",
            ],
            "ports need proto",
        ),
        (vec!["set", "del", "peers"], "used by rule"),
        (vec!["acl", "del", "99"], "no rule with id 99"),
    ] {
        let out = cli(&d, &lab, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(msg), "{args:?}: expected {msg:?} in {err}");
    }
    assert_eq!(
        strip(&cli_ok(&d, &lab, &["acl", "list", "-o", "json"])),
        strip(&listed)
    );

    // Default deny on the interface: everything from b stops, both families.
    cli_ok(&d, &lab, &["acl", "del", "10", "20"]);
    cli_ok(&d, &lab, &["policy", &iface, "deny"]);
    assert_eq!(reach(&lab, v4), (false, false, false), "default deny v4");
    assert_eq!(reach(&lab, v6), (false, false, false), "default deny v6");
    // An allow rule for UDP opens UDP only.
    cli_ok(
        &d,
        &lab,
        &[
            "acl",
            "add",
            "--id",
            "40",
            "--priority",
            "5",
            "--proto",
            "udp",
            "--action",
            "allow",
        ],
    );
    assert_eq!(reach(&lab, v4), (false, false, true), "udp allowed v4");
    assert_eq!(reach(&lab, v6), (false, false, true), "udp allowed v6");
    // Back to allow: everything works again.
    cli_ok(&d, &lab, &["policy", &iface, "allow"]);
    assert_eq!(reach(&lab, v4), (true, true, true), "restored v4");
    assert_eq!(reach(&lab, v6), (true, true, true), "restored v6");

    // The text listing shows rules and the interface default.
    let text = cli_ok(&d, &lab, &["acl", "list"]);
    assert!(
        text.contains("proto 17") && text.contains(&format!("default policy of {iface}")),
        "{text}"
    );

    assert!(d.stop_with(libc::SIGTERM).success());
}

#[test]
fn rule_file_at_start_and_replace() {
    let _g = serial();
    let lab = Lab::new("aclfile", 41).expect("lab");
    let iface = lab.a_end.ifname.clone();
    let v4 = IpAddr::V4(lab.a_end.ipv4);
    let v6 = IpAddr::V6(lab.a_end.ipv6);
    let dir = std::env::temp_dir().join(format!("xdpgate-acl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let deny_icmp = dir.join("deny-icmp.toml");
    std::fs::write(
        &deny_icmp,
        format!(
            "[[rule]]\nid = 1\npriority = 1\nproto = \"icmp\"\naction = \"deny\"\n\n\
             [[rule]]\nid = 2\npriority = 1\nproto = \"icmpv6\"\nicmp_type = 128\naction = \"deny\"\n\n\
             [policy]\n{iface} = \"allow\"\n"
        ),
    )
    .unwrap();
    let d = Daemon::start_with(
        &lab.a,
        &[&iface],
        "native",
        &["--acl-file".as_ref(), deny_icmp.as_os_str()],
    )
    .expect("xdpgate run --acl-file");
    let dirs = &d.dirs;
    assert!(
        !ping_ok(&lab, v4) && !ping_ok(&lab, v6),
        "file rules active at start"
    );
    assert!(tcp_ok(&lab, v4) && udp_ok(&lab, v6));

    let allow_all = dir.join("empty.toml");
    std::fs::write(&allow_all, "").unwrap();
    let out = dirs.run(
        &lab.a,
        &["acl", "replace", "--file", allow_all.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        ping_ok(&lab, v4) && ping_ok(&lab, v6),
        "replaced by an empty rule set"
    );

    // An invalid file is rejected as a whole.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[rule]]\nid = 1\npriority = 1\nproto = \"icmp\"\naction = \"deny\"\n\n[[rule]]\nid = 1\npriority = 2\naction = \"deny\"\n").unwrap();
    let out = dirs.run(
        &lab.a,
        &["acl", "replace", "--file", bad.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rule id 1 is used more than once"));
    assert!(ping_ok(&lab, v4), "nothing changed");

    assert!(d.stop_with(libc::SIGTERM).success());
    let _ = std::fs::remove_dir_all(&dir);
}

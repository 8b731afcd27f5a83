//! Tests of the exposition: every series, bounded labels, promtool.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    process::{Command, Stdio},
};

use xdpgate_common::{Action, DropReason, Family};
use xdpgate_model::lb::Forward;

use super::{
    UNREGISTERED, render,
    render::render_server,
    snapshot::{BuildInfo, DatapathInfo, DefaultRow, RuleRow, Snapshot, StateSave, TableFill},
};
use crate::{
    datapath::stats::{CacheStats, ReasonRow, Report, Row},
    lb::{BackendStatus, ServiceStatus},
};

/// A snapshot with two interfaces. `eth1` has no drop-reason rows and no
/// bound-address rows (both are filled in at zero); the
/// unregistered slot has no rows at all.
fn snapshot() -> Snapshot {
    let mut counters = Vec::new();
    for (i, iface) in ["eth0", "eth1"].into_iter().enumerate() {
        for f in Family::ALL {
            for a in Action::ALL {
                let packets = if a == Action::Pass { 10 + i as u64 } else { 0 };
                counters.push(Row {
                    interface: iface.into(),
                    ifindex: 2 + i as u32,
                    family: f.name(),
                    action: a.name(),
                    packets,
                    bytes: packets * 100,
                });
            }
        }
    }
    let malformed = DropReason::ALL
        .iter()
        .map(|r| ReasonRow {
            interface: "eth0".into(),
            ifindex: 2,
            reason: r.name(),
            packets: u64::from(*r == DropReason::TruncatedL4) * 3,
            bytes: u64::from(*r == DropReason::TruncatedL4) * 180,
        })
        .collect();
    Snapshot {
        report: Report {
            counters,
            malformed,
            decision_cache: CacheStats {
                hits: 40,
                misses: 2,
                walks: 0,
                addr_hits: 70,
                addr_misses: 6,
            },
            limits: [4, 0, 0, 0, 0, 0],
        },
        rules: vec![
            RuleRow {
                id: 7,
                action: "deny".into(),
                packets: 5,
                bytes: 500,
                limits: None,
            },
            RuleRow {
                id: 12,
                action: "allow".into(),
                packets: 0,
                bytes: 0,
                limits: Some([4, 0, 0, 0, 0, 0]),
            },
        ],
        defaults: vec![
            DefaultRow {
                interface: "eth0".into(),
                policy: "allow".into(),
                packets: 9,
                bytes: 900,
            },
            DefaultRow {
                interface: "eth1".into(),
                policy: "deny".into(),
                packets: 0,
                bytes: 0,
            },
        ],
        tables: vec![
            TableFill {
                table: "rules",
                entries: 2,
                capacity: 12288,
            },
            TableFill {
                table: "ipv4_prefixes",
                entries: 0,
                capacity: 1 << 20,
            },
        ],
        bound_addresses: vec![
            ("eth0".into(), "ipv4".into(), 1),
            ("eth0".into(), "ipv6".into(), 2),
        ],
        last_reload_success_unix: 1_700_000_000,
        last_reload_ok: true,
        state_save: StateSave::default(),
        build: BuildInfo {
            version: "0.1.0".into(),
            kernel: "6.18.0-test".into(),
        },
        lb_services: vec![ServiceStatus {
            service: "192.0.2.10:80/tcp".parse().expect("valid service"),
            forward: Forward::Encap,
            health_checked: true,
            ring_size: 65537,
            forwarded_packets: 10,
            slow_path_packets: 1,
            dropped_packets: 0,
            backends: vec![BackendStatus {
                addr: "10.200.2.2".parse().expect("valid address"),
                weight: 1,
                healthy: true,
                ring_entries: 65537,
                packets: 11,
                bytes: 1100,
            }],
        }],
        health: Vec::new(),
        decap: vec![("eth0".into(), "ipv4", "ipv6", 3, 300)],
        datapath: DatapathInfo {
            schema: 1,
            prog_tag: "5c0154887c3c18c7".into(),
            attached: vec![
                ("eth0".into(), 1_796_430_359),
                ("eth1".into(), 1_796_430_360),
            ],
        },
    }
}

/// One sample line: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the exposition (enough of it for these tests: our label values
/// contain no quotes, commas or braces). Returns the samples and the
/// `# TYPE` of each family.
fn parse(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
    let mut samples = Vec::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap();
            types.insert(name.to_owned(), ty.to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').unwrap();
                let labels = inner
                    .split(',')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap();
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                (name, labels)
            }
        };
        samples.push((name.to_owned(), labels, value.parse().unwrap()));
    }
    (samples, types)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|(n, l, _)| n == name && *l == want)
        .map(|s| s.2)
}

#[test]
fn render_has_every_series_with_bounded_labels() {
    let text = render(&snapshot());
    let (samples, types) = parse(&text);

    let expected: BTreeMap<&str, (&str, &[&str])> = BTreeMap::from([
        (
            "xdpgate_packets_total",
            ("counter", &["interface", "family", "action"][..]),
        ),
        (
            "xdpgate_bytes_total",
            ("counter", &["interface", "family", "action"][..]),
        ),
        (
            "xdpgate_drop_reason_packets_total",
            ("counter", &["interface", "reason"][..]),
        ),
        (
            "xdpgate_drop_reason_bytes_total",
            ("counter", &["interface", "reason"][..]),
        ),
        (
            "xdpgate_rule_packets_total",
            ("counter", &["rule_id", "action"][..]),
        ),
        (
            "xdpgate_rule_bytes_total",
            ("counter", &["rule_id", "action"][..]),
        ),
        (
            "xdpgate_rule_limit_packets_total",
            ("counter", &["rule_id", "kind"][..]),
        ),
        (
            "xdpgate_default_policy_packets_total",
            ("counter", &["interface", "policy"][..]),
        ),
        (
            "xdpgate_default_policy_bytes_total",
            ("counter", &["interface", "policy"][..]),
        ),
        (
            "xdpgate_acl_decision_cache_lookups_total",
            ("counter", &["result"][..]),
        ),
        (
            "xdpgate_acl_address_cache_lookups_total",
            ("counter", &["result"][..]),
        ),
        ("xdpgate_table_entries", ("gauge", &["table"][..])),
        ("xdpgate_table_capacity_entries", ("gauge", &["table"][..])),
        (
            "xdpgate_bound_addresses",
            ("gauge", &["interface", "family"][..]),
        ),
        ("xdpgate_build_info", ("gauge", &["version", "kernel"][..])),
        (
            "xdpgate_datapath_info",
            ("gauge", &["schema", "prog_tag"][..]),
        ),
        (
            "xdpgate_datapath_attached_timestamp_seconds",
            ("gauge", &["interface"][..]),
        ),
        (
            "xdpgate_config_last_reload_success_timestamp_seconds",
            ("gauge", &[][..]),
        ),
        ("xdpgate_config_last_reload_successful", ("gauge", &[][..])),
        ("xdpgate_state_unsaved", ("gauge", &[][..])),
        ("xdpgate_state_save_failures_total", ("counter", &[][..])),
        (
            "xdpgate_lb_backend_packets_total",
            ("counter", &["service", "backend"][..]),
        ),
        (
            "xdpgate_lb_backend_bytes_total",
            ("counter", &["service", "backend"][..]),
        ),
        (
            "xdpgate_lb_backend_up",
            ("gauge", &["service", "backend"][..]),
        ),
        (
            "xdpgate_lb_backend_ring_entries",
            ("gauge", &["service", "backend"][..]),
        ),
        (
            "xdpgate_lb_service_packets_total",
            ("counter", &["service", "result"][..]),
        ),
        (
            "xdpgate_decap_packets_total",
            ("counter", &["interface", "outer", "inner"][..]),
        ),
        (
            "xdpgate_decap_bytes_total",
            ("counter", &["interface", "outer", "inner"][..]),
        ),
    ]);
    let names: BTreeSet<&str> = types.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        expected.keys().copied().collect::<BTreeSet<_>>(),
        "{text}"
    );
    for (name, (ty, labels)) in &expected {
        assert_eq!(types[*name], *ty, "{name}");
        assert_eq!(name.ends_with("_total"), *ty == "counter", "{name}");
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
        let want: BTreeSet<&str> = labels.iter().copied().collect();
        for (n, l, _) in samples.iter().filter(|s| s.0 == *name) {
            let have: BTreeSet<&str> = l.keys().map(String::as_str).collect();
            assert_eq!(have, want, "labels of {n}");
        }
    }

    // Bounded label values, and every combination present (zeros included).
    let ifaces = ["eth0", "eth1", UNREGISTERED];
    let fams: Vec<&str> = Family::ALL.iter().map(|f| f.name()).collect();
    let acts: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
    let reasons: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
    for name in ["xdpgate_packets_total", "xdpgate_bytes_total"] {
        let rows: Vec<&Sample> = samples.iter().filter(|s| s.0 == name).collect();
        assert_eq!(rows.len(), ifaces.len() * fams.len() * acts.len(), "{name}");
        for (_, l, _) in &rows {
            assert!(ifaces.contains(&l["interface"].as_str()));
            assert!(fams.contains(&l["family"].as_str()));
            assert!(acts.contains(&l["action"].as_str()));
        }
    }
    for name in [
        "xdpgate_drop_reason_packets_total",
        "xdpgate_drop_reason_bytes_total",
    ] {
        let rows: Vec<&Sample> = samples.iter().filter(|s| s.0 == name).collect();
        assert_eq!(rows.len(), ifaces.len() * reasons.len(), "{name}");
        for (_, l, _) in &rows {
            assert!(reasons.contains(&l["reason"].as_str()));
        }
    }

    let v = |name, labels: &[(&str, &str)]| {
        value(&samples, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?}\n{text}"))
    };
    let pkt = |i, f, a| {
        v(
            "xdpgate_packets_total",
            &[("interface", i), ("family", f), ("action", a)],
        )
    };
    assert_eq!(pkt("eth0", "ipv4", "pass"), 10.0);
    assert_eq!(pkt("eth1", "ipv6", "pass"), 11.0);
    assert_eq!(pkt("eth1", "other", "aborted"), 0.0);
    assert_eq!(pkt(UNREGISTERED, "ipv4", "drop"), 0.0);
    assert_eq!(
        v(
            "xdpgate_bytes_total",
            &[
                ("interface", "eth1"),
                ("family", "ipv4"),
                ("action", "pass")
            ]
        ),
        1100.0
    );
    let reason = |i, r| {
        v(
            "xdpgate_drop_reason_packets_total",
            &[("interface", i), ("reason", r)],
        )
    };
    assert_eq!(reason("eth0", "truncated_l4"), 3.0);
    assert_eq!(reason("eth1", "truncated_l4"), 0.0);
    assert_eq!(reason(UNREGISTERED, "vlan_too_deep"), 0.0);
    for r in ["rate_limited", "synack_limited", "bad_cookie"] {
        assert_eq!(reason("eth1", r), 0.0, "{r} present at zero");
    }
    // Limit counters: only for the rule with a limit, every kind present.
    let limits: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.0 == "xdpgate_rule_limit_packets_total")
        .collect();
    assert_eq!(limits.len(), 6, "six kinds of the one limited rule");
    for kind in xdpgate_common::limit::rule_stat::NAMES {
        let want = if kind == "limited" { 4.0 } else { 0.0 };
        assert_eq!(
            v(
                "xdpgate_rule_limit_packets_total",
                &[("rule_id", "12"), ("kind", kind)]
            ),
            want,
            "{kind}"
        );
    }
    assert_eq!(
        v(
            "xdpgate_rule_packets_total",
            &[("rule_id", "7"), ("action", "deny")]
        ),
        5.0
    );
    assert_eq!(
        v(
            "xdpgate_rule_bytes_total",
            &[("rule_id", "12"), ("action", "allow")]
        ),
        0.0
    );
    assert_eq!(
        v(
            "xdpgate_default_policy_packets_total",
            &[("interface", "eth0"), ("policy", "allow")]
        ),
        9.0
    );
    assert_eq!(
        v(
            "xdpgate_default_policy_packets_total",
            &[("interface", "eth1"), ("policy", "deny")]
        ),
        0.0
    );
    assert_eq!(
        v(
            "xdpgate_acl_decision_cache_lookups_total",
            &[("result", "hit")]
        ),
        40.0
    );
    assert_eq!(
        v(
            "xdpgate_acl_decision_cache_lookups_total",
            &[("result", "miss")]
        ),
        2.0
    );
    assert_eq!(
        v(
            "xdpgate_acl_address_cache_lookups_total",
            &[("result", "hit")]
        ),
        70.0
    );
    assert_eq!(
        v(
            "xdpgate_acl_address_cache_lookups_total",
            &[("result", "miss")]
        ),
        6.0
    );
    assert_eq!(v("xdpgate_table_entries", &[("table", "rules")]), 2.0);
    assert_eq!(
        v("xdpgate_table_capacity_entries", &[("table", "rules")]),
        12288.0
    );
    let bound = |i, f| {
        v(
            "xdpgate_bound_addresses",
            &[("interface", i), ("family", f)],
        )
    };
    assert_eq!(bound("eth0", "ipv6"), 2.0);
    assert_eq!(bound("eth1", "ipv4"), 0.0, "filled in at zero");
    assert_eq!(bound("eth1", "ipv6"), 0.0, "filled in at zero");
    assert_eq!(
        samples
            .iter()
            .filter(|s| s.0 == "xdpgate_bound_addresses")
            .count(),
        4
    );
    assert_eq!(
        v(
            "xdpgate_build_info",
            &[("version", "0.1.0"), ("kernel", "6.18.0-test")]
        ),
        1.0
    );
    assert_eq!(
        v("xdpgate_config_last_reload_success_timestamp_seconds", &[]),
        1.7e9
    );
    assert_eq!(v("xdpgate_config_last_reload_successful", &[]), 1.0);
    // Present at zero while the state is saved.
    assert_eq!(v("xdpgate_state_unsaved", &[]), 0.0);
    assert_eq!(v("xdpgate_state_save_failures_total", &[]), 0.0);
}

#[test]
fn empty_snapshot_still_has_the_unregistered_slot_at_zero() {
    let (samples, _) = parse(&render(&Snapshot::default()));
    let packets: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.0 == "xdpgate_packets_total")
        .collect();
    assert_eq!(packets.len(), 15);
    assert!(
        packets
            .iter()
            .all(|s| s.1["interface"] == UNREGISTERED && s.2 == 0.0)
    );
    assert_eq!(
        value(
            &samples,
            "xdpgate_config_last_reload_success_timestamp_seconds",
            &[]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(&samples, "xdpgate_config_last_reload_successful", &[]),
        Some(0.0)
    );
    // The default build info names this crate's version and the kernel.
    let build = samples
        .iter()
        .find(|s| s.0 == "xdpgate_build_info")
        .unwrap();
    assert_eq!(build.1["version"], env!("CARGO_PKG_VERSION"));
    assert!(!build.1["kernel"].is_empty());
}

/// `promtool check metrics` must accept the exposition (with the metrics
/// server's own series appended, as served) without a single
/// lint complaint. promtool comes with the Debian package `prometheus`,
/// which `cargo xtask bootstrap` installs; without it this test fails.
#[test]
fn promtool_accepts_the_exposition() {
    const PROMTOOL: &str = "/usr/bin/promtool";
    assert!(
        std::path::Path::new(PROMTOOL).is_file(),
        "{PROMTOOL} is missing: install the Debian package `prometheus` \
         (`cargo xtask bootstrap` does; or `apt-get install --no-install-recommends prometheus`)"
    );
    // What the server answers: the exposition and its own series.
    let text = render(&snapshot())
        + &render_server(&[
            ("head_timeout", 2),
            ("evicted", 40),
            ("refused", 0),
            ("write_timeout", 0),
        ]);
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {report}\n{text}");
    assert!(report.trim().is_empty(), "promtool lint: {report}");
}

#[test]
fn the_datapath_series_name_the_schema_the_program_and_since_when() {
    let (samples, _) = parse(&render(&snapshot()));
    assert_eq!(
        value(
            &samples,
            "xdpgate_datapath_info",
            &[("schema", "1"), ("prog_tag", "5c0154887c3c18c7")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "xdpgate_datapath_attached_timestamp_seconds",
            &[("interface", "eth1")]
        ),
        Some(1_796_430_360.0)
    );
}

//! Tests of a rule's `limit` and `syncookie` keys and of `[ddos]`: every
//! problem at the line and column of the key at fault.
use super::*;
use crate::acl::{Limit, LimitKey, Rule};

/// The head of an allow rule (four lines); a case's keys start on line 5.
const ALLOW: &str = "[[rule]]\nid = 1\npriority = 1\naction = \"allow\"\n";

/// A named case: the file's text and the issues it must give, each as
/// (line, column, a phrase of the message).
type Case<'a> = (&'a str, String, &'a [(usize, usize, &'a str)]);

/// Every issue of `text` as (line, column, message).
fn located(text: &str) -> Vec<(usize, usize, String)> {
    match parse(text, Path::new("x.toml")) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid { issues, .. }) => issues
            .into_iter()
            .map(|i| {
                let (l, c) = i.at.expect("every issue is located");
                (l, c, i.message)
            })
            .collect(),
        Err(e) => panic!("not a parse error: {e}"),
    }
}

/// Checks each case: exactly the listed issues, in order, each at its line
/// and column and containing its phrase.
fn check_cases(cases: &[Case<'_>]) {
    for (case, text, want) in cases {
        let got = located(text);
        let at: Vec<(usize, usize)> = got.iter().map(|(l, c, _)| (*l, *c)).collect();
        let want_at: Vec<(usize, usize)> = want.iter().map(|(l, c, _)| (*l, *c)).collect();
        assert_eq!(at, want_at, "{case}: {got:?}");
        for ((l, c, m), (_, _, phrase)) in got.iter().zip(want.iter()) {
            assert!(
                m.contains(phrase),
                "{case}: {l}:{c}: {m:?} lacks {phrase:?}"
            );
        }
    }
}

#[test]
fn each_problem_of_a_limit_is_reported_at_its_key() {
    let allow = |keys: &str| format!("{ALLOW}{keys}\n");
    let cases: &[Case<'_>] = &[
        (
            "zero rate",
            allow("limit = { pps = 0 }"),
            &[(
                5,
                11,
                "rule 1: limit.pps: 0 is not a rate from 1 to 1000000000000 per second",
            )],
        ),
        (
            "rate above the highest",
            allow("limit = { bytes_per_sec = 1000000000001 }"),
            &[(
                5,
                11,
                "limit.bytes_per_sec: 1000000000001 is not a rate from 1 to",
            )],
        ),
        (
            "burst 0",
            allow("limit = { pps = 10, burst_packets = 0 }"),
            &[(
                5,
                21,
                "limit.burst_packets: 0 is not a burst from 1 to 3600 seconds of the rate",
            )],
        ),
        (
            "burst longer than 3600 s of the rate",
            allow("limit = { pps = 10, burst_packets = 36010 }"),
            &[(
                5,
                21,
                "limit.burst_packets: 36010 is not a burst from 1 to 3600 seconds",
            )],
        ),
        (
            "burst_bytes below one full-sized frame",
            allow("limit = { bytes_per_sec = 100000, burst_bytes = 1513 }"),
            &[(
                5,
                35,
                "limit.burst_bytes: 1513 is not a burst from 1514 to 3600 seconds",
            )],
        ),
        (
            "burst without its rate",
            allow("limit = { bytes_per_sec = 100000, burst_packets = 10 }"),
            &[(
                5,
                35,
                "limit.burst_packets: needs the rate it is a burst of",
            )],
        ),
        (
            "no rate at all, at the limit key",
            allow("limit = { per = \"rule\" }"),
            &[(5, 1, "names no rate: give pps and/or bytes_per_sec")],
        ),
        (
            "prefix /0",
            allow("limit = { pps = 10, v4_prefix = 0 }"),
            &[(
                5,
                21,
                "limit.v4_prefix: /0 is not a prefix length from 1 to 32",
            )],
        ),
        (
            "prefix /33",
            allow("limit = { pps = 10, v4_prefix = 33 }"),
            &[(
                5,
                21,
                "limit.v4_prefix: /33 is not a prefix length from 1 to 32",
            )],
        ),
        (
            "prefix /129",
            allow("limit = { pps = 10, v6_prefix = 129 }"),
            &[(
                5,
                21,
                "limit.v6_prefix: /129 is not a prefix length from 1 to 128",
            )],
        ),
        (
            "prefix longer than a byte",
            allow("limit = { pps = 10, v6_prefix = 300 }"),
            &[(
                5,
                21,
                "v6_prefix = 300: /300 is not a prefix length from 1 to 128",
            )],
        ),
        (
            "v4_prefix on an IPv6-only rule",
            allow("proto = \"icmpv6\"\nlimit = { pps = 10, v4_prefix = 24 }"),
            &[(6, 21, "limit.v4_prefix: the rule matches only IPv6")],
        ),
        (
            "v6_prefix on a rule with an IPv4 source",
            allow("src = \"192.0.2.0/24\"\nlimit = { pps = 10, v6_prefix = 48 }"),
            &[(6, 21, "limit.v6_prefix: the rule matches only IPv4")],
        ),
        (
            "a prefix on per = \"rule\"",
            allow("limit = { pps = 10, per = \"rule\", v6_prefix = 48 }"),
            &[(
                5,
                35,
                "a rule-wide limit (per = \"rule\") has no prefix length",
            )],
        ),
        (
            "an unknown key in the limit",
            allow("limit = { pps = 10, brust = 5 }"),
            &[(
                5,
                21,
                "limit: unknown key \"brust\" (known keys: pps, burst_packets",
            )],
        ),
        (
            "a key of an unknown kind of bucket",
            allow("limit = { pps = 10, per = \"host\" }"),
            &[(5, 21, "per = \"host\": use \"rule\"")],
        ),
        (
            "a negative rate",
            allow("limit = { pps = -1 }"),
            &[(5, 11, "limit: pps = -1: use a whole number from 0 to")],
        ),
        (
            "a rate in quotes",
            allow("limit = { pps = \"100\" }"),
            &[(5, 11, "limit: pps must be a whole number, not a string")],
        ),
        (
            "a limit that is not a table",
            allow("limit = 100"),
            &[(
                5,
                1,
                "limit must be a table, { key = value, ... }, not a whole number",
            )],
        ),
        (
            "every problem of one limit",
            allow("limit = { pps = 0, burst_bytes = 100, v6_prefix = 0 }"),
            &[
                (5, 11, "limit.pps: 0 is not a rate"),
                (5, 20, "limit.burst_bytes: needs the rate"),
                (5, 39, "limit.v6_prefix: /0 is not a prefix length"),
            ],
        ),
        (
            "the limit as its own table",
            format!("{ALLOW}\n[rule.limit]\npps = 100\nburst_packets = 0\n"),
            &[(8, 1, "limit.burst_packets: 0 is not a burst")],
        ),
        (
            "limit on a deny rule, at the limit key",
            "[[rule]]\nid = 1\npriority = 1\naction = \"deny\"\nlimit = { pps = 10 }\n".into(),
            &[(5, 1, "rule 1: a limit needs action allow")],
        ),
    ];
    check_cases(cases);
}

#[test]
fn each_problem_of_syncookie_is_reported_at_its_key() {
    let allow = |keys: &str| format!("{ALLOW}{keys}\n");
    let cases: &[Case<'_>] = &[
        (
            "syncookie on udp",
            allow("proto = \"udp\"\ndport = 53\nsyncookie = true"),
            &[(7, 1, "rule 1: syncookie needs proto tcp")],
        ),
        (
            "syncookie without dport",
            allow("proto = \"tcp\"\nsyncookie = true"),
            &[(6, 1, "rule 1: syncookie needs dport")],
        ),
        (
            "syncookie on a deny rule",
            "[[rule]]\nid = 1\npriority = 1\naction = \"deny\"\nproto = \"tcp\"\ndport = 443\nsyncookie = true\n".into(),
            &[(7, 1, "rule 1: syncookie needs action allow")],
        ),
        (
            "syncookie that is not true or false",
            allow("proto = \"tcp\"\ndport = 443\nsyncookie = \"yes\""),
            &[(7, 1, "syncookie must be true or false, not a string")],
        ),
    ];
    check_cases(cases);
}

#[test]
fn each_bad_ddos_value_is_reported_at_its_key() {
    let ddos = |keys: &str| format!("[ddos]\n{keys}\n");
    let cases: &[Case<'_>] = &[
        (
            "too few buckets",
            ddos("limit_buckets = 1023"),
            &[(2, 1, "[ddos] limit_buckets = 1023: use 1024 to 16777216")],
        ),
        (
            "too many buckets",
            ddos("limit_buckets = 16777217"),
            &[(
                2,
                1,
                "[ddos] limit_buckets = 16777217: use 1024 to 16777216",
            )],
        ),
        (
            "no SYN-ACKs at all",
            ddos("synack_pps = 0"),
            &[(2, 1, "[ddos] synack_pps = 0: use 1 to 1000000000")],
        ),
        (
            "SYN-ACK rate above a billion",
            ddos("synack_pps = 1000000001"),
            &[(2, 1, "[ddos] synack_pps = 1000000001: use 1 to 1000000000")],
        ),
        (
            "SYN-ACK burst 0",
            ddos("synack_burst = 0"),
            &[(
                2,
                1,
                "[ddos] synack_burst = 0: use 1 to 1800000 (3600 seconds of synack_pps = 500)",
            )],
        ),
        (
            "SYN-ACK burst longer than 3600 s of this file's rate",
            ddos("synack_pps = 10\nsynack_burst = 36001"),
            &[(3, 1, "[ddos] synack_burst = 36001: use 1 to 36000")],
        ),
        (
            "a negative SYN-ACK burst",
            ddos("synack_burst = -5"),
            &[(
                2,
                1,
                "[ddos]: synack_burst = -5: use a whole number from 0 to",
            )],
        ),
        (
            "SYN-ACK IPv4 prefix /0",
            ddos("synack_v4_prefix = 0"),
            &[(2, 1, "[ddos] synack_v4_prefix = 0: use 1 to 32")],
        ),
        (
            "SYN-ACK IPv4 prefix /33",
            ddos("synack_v4_prefix = 33"),
            &[(2, 1, "[ddos] synack_v4_prefix = 33: use 1 to 32")],
        ),
        (
            "SYN-ACK IPv6 prefix /129",
            ddos("synack_v6_prefix = 129"),
            &[(2, 1, "[ddos] synack_v6_prefix = 129: use 1 to 128")],
        ),
        (
            "refresh 0",
            ddos("syncookie_refresh_secs = 0"),
            &[(2, 1, "[ddos] syncookie_refresh_secs = 0: use 1 to 60")],
        ),
        (
            "refresh above a minute",
            ddos("syncookie_refresh_secs = 61"),
            &[(2, 1, "[ddos] syncookie_refresh_secs = 61: use 1 to 60")],
        ),
        (
            "a refresh with a fraction",
            ddos("syncookie_refresh_secs = 1.5"),
            &[(2, 1, "syncookie_refresh_secs must be a whole number")],
        ),
        (
            "an unknown key",
            ddos("synack_rate = 5"),
            &[(
                2,
                1,
                "[ddos]: unknown key \"synack_rate\" (known keys: limit_buckets",
            )],
        ),
        (
            "ddos that is not a table",
            "ddos = 5\n".into(),
            &[(1, 8, "[ddos] must be a table of keys, not a whole number")],
        ),
    ];
    check_cases(cases);
}

#[test]
fn ddos_values_in_range_are_taken_and_absent_ones_keep_their_defaults() {
    let text = "[ddos]\nlimit_buckets = 1024\nsynack_pps = 1000000000\nsynack_burst = 3600000000000\nsynack_v4_prefix = 32\nsynack_v6_prefix = 128\nsyncookie_refresh_secs = 60\n";
    let cfg = parse(text, Path::new("x.toml")).unwrap();
    assert_eq!(
        cfg.ddos,
        DdosSettings {
            limit_buckets: 1024,
            synack_pps: 1_000_000_000,
            synack_burst: 3_600_000_000_000,
            synack_v4_prefix: 32,
            synack_v6_prefix: 128,
            syncookie_refresh: Duration::from_secs(60),
        }
    );
    let cfg = parse("[ddos]\nsynack_v6_prefix = 1\n", Path::new("x.toml")).unwrap();
    assert_eq!(
        cfg.ddos,
        DdosSettings {
            synack_v6_prefix: 1,
            ..DdosSettings::default()
        }
    );
    assert_eq!(
        parse("", Path::new("x.toml")).unwrap().ddos,
        DdosSettings::default()
    );
}

#[test]
fn only_a_change_of_limit_buckets_needs_a_restart() {
    let running = DdosSettings::default();
    let other_keys = DdosSettings {
        synack_pps: 7,
        synack_burst: 7,
        synack_v4_prefix: 16,
        synack_v6_prefix: 32,
        syncookie_refresh: Duration::from_secs(5),
        ..running.clone()
    };
    assert_eq!(running.needs_restart(&other_keys), None);
    let resized = DdosSettings {
        limit_buckets: 131_072,
        ..running.clone()
    };
    assert_eq!(
        running.needs_restart(&resized).as_deref(),
        Some(
            "[ddos] limit_buckets changed from 65536 to 131072 (the bucket table is sized when the datapath is loaded)"
        )
    );
}

#[test]
fn limits_and_syncookie_parse_to_what_the_rule_file_form_gives() {
    let text = r#"
[[rule]]
id = 1
priority = 1
proto = "icmp"
icmp_type = 8
action = "allow"
limit = { pps = 100, burst_packets = 20, v4_prefix = 24 }

[[rule]]
id = 2
priority = 2
proto = "udp"
action = "allow"
[rule.limit]
bytes_per_sec = 1000000
burst_bytes = 1514
per = "dst"
v6_prefix = 48

[[rule]]
id = 3
priority = 3
proto = "tcp"
dport = 443
action = "allow"
syncookie = true
"#;
    #[derive(serde::Deserialize)]
    struct Rules {
        rule: Vec<Rule>,
    }
    let cfg = parse(text, Path::new("x.toml")).unwrap();
    let serde: Rules = toml::from_str(text).unwrap();
    assert_eq!(cfg.acl.rules, serde.rule);
    assert_eq!(
        cfg.acl.rules[0].limit,
        Some(Limit {
            pps: Some(100),
            burst_packets: Some(20),
            v4_prefix: Some(24),
            ..Limit::default()
        })
    );
    let l = cfg.acl.rules[1].limit.as_ref().unwrap();
    assert_eq!(
        (l.per, l.byte_burst(), l.v6()),
        (LimitKey::Dst, Some(1514), 48)
    );
    assert!(cfg.acl.rules[2].syncookie && cfg.acl.rules[2].limit.is_none());
    assert!(!cfg.acl.rules[0].syncookie);
}

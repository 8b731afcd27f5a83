//! Tests of the configuration parser.
use super::*;
use xdpgate_common::lb::FlowHash;

fn issues(text: &str) -> Vec<String> {
    match parse(text, Path::new("x.toml")) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid { issues, .. }) => {
            issues.iter().map(ToString::to_string).collect()
        }
        Err(e) => vec![e.to_string()],
    }
}

#[test]
fn the_shipped_example_is_valid() {
    let text = include_str!("../../../deploy/xdpgate.toml");
    let cfg = parse(text, Path::new("deploy/xdpgate.toml")).unwrap();
    assert_eq!(cfg.iface_names(), ["eth0"]);
    assert_eq!(cfg.metrics_listen.len(), 2);
    assert_eq!(cfg.bindings.len(), 2);
    assert_eq!(cfg.acl_state().rules.len(), 9);
    assert_eq!(cfg.ddos, DdosSettings::default());
    // The DDoS profile: ping per /24 and /48, DNS per /24 and /48, a
    // rule-wide UDP cap, SYN cookies on 443 and 80.
    let limited: Vec<(u32, String)> = cfg
        .acl
        .rules
        .iter()
        .filter_map(|r| r.limit.as_ref().map(|l| (r.id, l.to_string())))
        .collect();
    assert_eq!(
        limited,
        [
            (100, "100pps burst 20 per src /24 /64".to_owned()),
            (110, "100pps burst 20 per src /32 /48".to_owned()),
            (
                120,
                "200pps burst 20 200000B/s burst 20000B per src /24 /48".to_owned()
            ),
            (
                130,
                "20000pps burst 2000 100000000B/s burst 10000000B per rule".to_owned()
            ),
        ]
    );
    let cookies: Vec<u32> = cfg
        .acl
        .rules
        .iter()
        .filter(|r| r.syncookie)
        .map(|r| r.id)
        .collect();
    assert_eq!(cookies, [140, 150]);
    assert_eq!(cfg.services.len(), 2);
    assert_eq!(cfg.lb, LbSettings::default());
    let specs = crate::lb::specs_of(&cfg.services, cfg.lb.max_services).unwrap();
    assert_eq!(specs[0].backends[1].weight, 2);
    assert!(specs[0].health.is_some());
    assert_eq!(cfg.state_file, Path::new(DEFAULT_STATE_FILE));
    assert_eq!(cfg.digest, digest(text));
    assert_ne!(cfg.digest, digest(&format!("{text}\n")));
}

#[test]
fn every_error_is_reported_with_its_line() {
    let text = r#"
[daemon]
malformed = "maybe"

[metrics]
listen = ["127.0.0.1", "[::1]:9464"]

[[interface]]
name = "veth0"
mode = "turbo"

[[interface]]
name = "veth0"

[sets]
good = ["10.200.0.0/16"]
bad = ["10.200.0.1/16"]

[[rule]]
id = 1
priority = 1
src = "@nosuch"
action = "deny"

[[rule]]
id = 2
priority = 2
dport = 70000
action = "deny"

[[rule]]
id = 3
priority = 3
iface = "eth9"
action = "allow"
"#;
    let got = issues(text);
    let want = [
        ("3:", "malformed"),
        ("6:", "127.0.0.1"),
        ("10:", "turbo"),
        ("13:", "listed twice"),
        ("17:", "10.200.0.1/16"),
        ("22:", "unknown set @nosuch"),
        ("28:", "70000 is not a port"),
        ("34:", "eth9"),
    ];
    for (line, what) in want {
        assert!(
            got.iter().any(|g| g.starts_with(line) && g.contains(what)),
            "no error at line {line} about {what:?} in {got:#?}"
        );
    }
}

#[test]
fn syntax_and_unknown_keys_are_located() {
    let got = issues("[daemon]\nmalformed = \n");
    assert!(got[0].starts_with("2:"), "{got:?}");
    let got = issues("[deamon]\nmalformed = \"drop\"\n");
    assert!(
        got[0].starts_with("1:") && got[0].contains("deamon"),
        "{got:?}"
    );
    let got = issues("[[interface]]\nname = \"a\"\nmtu = 9000\n");
    assert!(
        got[0].starts_with("3:1:") && got[0].contains("mtu"),
        "{got:?}"
    );
}

#[test]
fn datapath_event_settings_are_range_checked_and_located() {
    let cfg = parse(
        "[daemon]\ndatapath_events = true\ndatapath_events_sample = 1\ndatapath_events_per_second = 5\n",
        Path::new("x.toml"),
    )
    .unwrap();
    assert!(cfg.datapath_events);
    assert_eq!(cfg.datapath_events_sample, 1);
    assert_eq!(cfg.datapath_events_per_second, 5);
    let dflt = parse("", Path::new("x.toml")).unwrap();
    assert!(!dflt.datapath_events);
    assert_eq!(dflt.datapath_events_sample, DEFAULT_EVENTS_SAMPLE);
    assert_eq!(dflt.datapath_events_per_second, 20);
    let got = issues("[daemon]\ndatapath_events_sample = 0\ndatapath_events_per_second = 10001\n");
    assert!(
        got.iter()
            .any(|g| g.starts_with("2:") && g.contains("datapath_events_sample = 0")),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|g| g.starts_with("3:") && g.contains("datapath_events_per_second = 10001")),
        "{got:?}"
    );
}

#[test]
fn load_balancer_errors_are_located() {
    let text = r#"
[[interface]]
name = "eth0"

[lb]
table_size = 65536
encap_source_v4 = "10.0.0.1/16"

[[service]]
service = "192.0.2.10:80"
backends = ["10.0.0.1"]

[[service]]
service = "192.0.2.11:80/tcp"
backends = ["10.0.0.1", "10.0.0.1", "10.0.0.2 weight=5000"]
health = { type = "http", payload = "x" }

[[service]]
service = "192.0.2.12/udp"
backends = ["10.0.0.3"]
health = { type = "udp" }
"#;
    let got = issues(text);
    let want = [
        "6:1: [lb] table_size = 65536",
        "7:1: [lb] encap_source_v4",
        "10:1: [[service]] #1: service \"192.0.2.10:80\"",
        "16:27: [[service]] #2: 192.0.2.11:80/tcp: health payload",
        "21:1: [[service]] #3: 192.0.2.12:*/udp: a service on every port needs a health-check port",
    ];
    for w in want {
        assert!(
            got.iter().any(|g| g.starts_with(w)),
            "missing {w:?} in {got:#?}"
        );
    }
    // The duplicate backend and the weight: found once the health entry
    // is fixed (entry errors come first, then the whole service).
    let fixed = text.replace(r#"health = { type = "http", payload = "x" }"#, "");
    let got = issues(&fixed);
    assert!(got.iter().any(|g| g.contains("listed twice")), "{got:#?}");
    assert!(got.iter().any(|g| g.contains("weight 5000")), "{got:#?}");
}

#[test]
fn the_flow_hash_is_kept_unless_the_file_names_one() {
    let with = |line: &str| format!("[[interface]]\nname = \"eth0\"\n\n[lb]\n{line}\n");
    let cases = [
        ("not given: keep each service's", "", None),
        ("fast", "flow_hash = \"fast\"", Some(FlowHash::Fast)),
        (
            "murmur3",
            "flow_hash = \"murmur3\"",
            Some(FlowHash::Murmur3),
        ),
    ];
    for (name, line, want) in cases {
        let cfg = parse(&with(line), Path::new("x.toml")).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(cfg.lb.flow_hash, want, "{name}");
    }
    assert_eq!(
        issues(&with("flow_hash = \"xor\"")),
        ["5:1: [lb] flow_hash = \"xor\": use \"fast\" or \"murmur3\""]
    );
}

#[test]
fn digest_is_stable() {
    // FNV-1a 64 test vectors.
    assert_eq!(digest(""), "cbf29ce484222325");
    assert_eq!(digest("a"), "af63dc4c8601ec8c");
}

/// The issues of `text` as (line, column, message).
fn located(text: &str) -> Vec<(usize, usize, String)> {
    match parse(text, Path::new("x.toml")) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid { issues, .. }) => issues
            .into_iter()
            .map(|i| {
                let (l, c) = i.at.expect("every issue has a position");
                (l, c, i.message)
            })
            .collect(),
        Err(e) => panic!("not a validation error: {e}"),
    }
}

/// Words of Rust's type system that an operator's message must not hold.
const INTERNAL: &[&str] = &[
    "enum",
    "struct",
    "Raw",
    "Saved",
    "untagged",
    "Option",
    "Vec<",
    "u32",
    "u16",
    "i64",
    "usize",
    "f64",
    "invalid type",
    "Section",
    "DeValue",
];

fn assert_operator_terms(got: &[(usize, usize, String)]) {
    for (l, c, m) in got {
        for w in INTERNAL {
            assert!(!m.contains(w), "{l}:{c}: {m:?} holds {w:?}");
        }
    }
}

/// A file with errors in every table, six of them in `[daemon]`; line
/// numbers on the left.
const MANY_ERRORS: &str = r#"[daemon]
malformed = "maybe"
decision_cache = "yes"
state_file = "/tmp"
shutdown_grace_seconds = 900
datapath_events_sample = 0
colour = "blue"

[metrics]
listen = ["127.0.0.1:9464", "nowhere"]
freebind = 1

[[interface]]
name = "veth0"
mode = "turbo"
policy = "maybe"

[[bind]]
iface = "veth9"
spec = "10.0.0.300"

[sets]
good = ["10.200.0.0/16", "10.200.0.1/16"]
"bad name!" = ["10.0.0.0/8"]

[[rule]]
id = 1
priority = "high"
src = "@nosuch"
action = "maybe"

[[rule]]
id = 2
priority = 2
proto = 300
dport = 70000
icmp_type = 3
action = "deny"

[lb]
table_size = 100
encap_ttl = 0

[[service]]
service = "192.0.2.10:80/tcp"
backends = ["10.0.0.1", "not-an-address"]
health = { type = "http", rise = 0, colour = 1 }

[deamon]
"#;

#[test]
fn every_error_of_a_file_is_reported_at_its_own_line_and_column() {
    // (line, column, a phrase of the message), in file order.
    let want: &[(usize, usize, &str)] = &[
        (2, 1, "malformed = \"maybe\": use \"drop\" or \"pass\""),
        (3, 1, "decision_cache must be true or false, not a string"),
        (4, 1, "/tmp is a directory"),
        (5, 1, "shutdown_grace_seconds = 900: use 0 to 300"),
        (6, 1, "datapath_events_sample = 0: use 1 to 1000000"),
        (7, 1, "unknown key \"colour\" (known keys: malformed,"),
        (10, 29, "\"nowhere\" is not ADDRESS:PORT"),
        (11, 1, "freebind must be true or false, not a whole number"),
        (15, 1, "mode \"turbo\" is not native, skb or hw"),
        (16, 1, "policy \"maybe\" is not allow or deny"),
        (
            19,
            1,
            "interface veth9 is not one of the [[interface]] entries",
        ),
        (20, 1, "10.0.0.300"),
        (23, 26, "bad prefix \"10.200.0.1/16\": host bits set"),
        (24, 1, "bad set name \"bad name!\""),
        (28, 1, "priority must be a whole number, not a string"),
        (29, 1, "rule 1: unknown set @nosuch"),
        (30, 1, "action = \"maybe\": use \"allow\" or \"deny\""),
        (35, 1, "proto = 300: use 0 to 255"),
        (36, 1, "dport = 70000 is not a port (0-65535)"),
        (41, 1, "table_size = 100: use a prime"),
        (42, 1, "encap_ttl = 0: use 1 to 255"),
        (46, 25, "backend \"not-an-address\" is not an IP address"),
        (47, 27, "health check rise 0 is not in 1..=100"),
        (47, 37, "[[service]] #1 health: unknown key \"colour\""),
        (49, 2, "unknown table [deamon]"),
    ];
    let got = located(MANY_ERRORS);
    let got_at: Vec<(usize, usize)> = got.iter().map(|(l, c, _)| (*l, *c)).collect();
    let want_at: Vec<(usize, usize)> = want.iter().map(|(l, c, _)| (*l, *c)).collect();
    assert_eq!(got_at, want_at, "positions; got {got:#?}");
    for ((l, c, m), (_, _, phrase)) in got.iter().zip(want) {
        assert!(m.contains(phrase), "{l}:{c}: {m:?} lacks {phrase:?}");
    }
    assert_eq!(
        got.iter().filter(|(l, _, _)| (2..=7).contains(l)).count(),
        6,
        "all six errors of [daemon]"
    );
    assert_operator_terms(&got);
}

#[test]
fn each_kind_of_bad_input_is_located_in_operator_terms() {
    let tmp = std::env::temp_dir().display().to_string();
    // (case, file, line, column, a phrase of the message)
    let table: Vec<(&str, String, usize, usize, &str)> = vec![
        (
            "a state file that is an existing directory",
            format!("[daemon]\nstate_file = {tmp:?}\n"),
            2,
            1,
            "is a directory: give the path of a file in it",
        ),
        (
            "a NUL byte in the state file's path",
            "[daemon]\n\nstate_file = \"/var/lib/x\\u0000y.json\"\n".into(),
            3,
            1,
            "NUL byte",
        ),
        (
            "a relative state file",
            "[daemon]\nstate_file = \"state.json\"\n".into(),
            2,
            1,
            "must be an absolute path",
        ),
        (
            "an unknown key in an entry",
            "[[rule]]\nid = 1\npriority = 1\naction = \"allow\"\n  dprt = 22\n".into(),
            5,
            3,
            "[[rule]] #1: unknown key \"dprt\" (known keys: id, priority, src, dst, proto, sport, dport",
        ),
        (
            "a table given as a value",
            "daemon = 1\n".into(),
            1,
            10,
            "[daemon] must be a table of keys, not a whole number",
        ),
        (
            "a single table where entries are expected",
            "[interface]\nname = \"eth0\"\n".into(),
            1,
            2,
            "interface must be written [[interface]], once per entry",
        ),
        (
            "a protocol number out of range",
            "[[rule]]\nid = 1\npriority = 1\nproto = 256\naction = \"deny\"\n".into(),
            4,
            1,
            "proto = 256: use 0 to 255",
        ),
        (
            "a missing required key",
            "[[rule]]\nid = 1\naction = \"deny\"\n".into(),
            1,
            1,
            "[[rule]] #1: priority is missing",
        ),
        (
            "a number too large for any field",
            "[[rule]]\nid = 99999999999999999999\npriority = 1\naction = \"deny\"\n".into(),
            2,
            1,
            "id = 99999999999999999999: use 0 to 4294967295",
        ),
        (
            "a duplicate rule id",
            "[[rule]]\nid = 1\npriority = 1\naction = \"deny\"\n[[rule]]\nid = 1\npriority = 2\naction = \"deny\"\n"
                .into(),
            6,
            1,
            "rule id 1 is used more than once",
        ),
        (
            "ports without a protocol that has them",
            "[[rule]]\nid = 1\npriority = 1\nsrc = \"10.0.0.0/8\"\ndport = 22\naction = \"deny\"\n"
                .into(),
            5,
            1,
            "rule 1: ports need proto tcp, udp or sctp",
        ),
        (
            "more services than [lb] max_services",
            "[lb]\nmax_services = 1\n[[service]]\nservice = \"192.0.2.1:80/tcp\"\n[[service]]\nservice = \"192.0.2.2:80/tcp\"\n"
                .into(),
            5,
            1,
            "more than 1 services, but [lb] max_services is 1",
        ),
        (
            "a syntax error",
            "[daemon]\nmalformed = \n".into(),
            2,
            13,
            "string values must be quoted",
        ),
    ];
    for (case, text, line, col, phrase) in table {
        let got = located(&text);
        assert!(
            got.iter()
                .any(|(l, c, m)| (*l, *c) == (line, col) && m.contains(phrase)),
            "{case}: want {line}:{col} {phrase:?}, got {got:#?}"
        );
        assert_operator_terms(&got);
    }
}

#[test]
fn capacity_errors_are_located_at_the_entry_that_exceeds_the_limit() {
    // 256 interfaces: slot 0 is reserved, so the 256th is one too many.
    let text: String = (0..256)
        .map(|i| format!("[[interface]]\nname = \"v{i}\"\n"))
        .collect();
    let got = located(&text);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!((got[0].0, got[0].1), (2 * 255 + 1, 1), "{got:#?}");
    assert!(got[0].2.contains("at most 255"), "{got:#?}");
    // 1,025 sets: the 1,025th (in name order) is one too many.
    let text: String = (0..=crate::acl::model::limits::MAX_SETS)
        .map(|i| format!("s{i:05} = []\n"))
        .collect();
    let got = located(&format!("[sets]\n{text}"));
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!((got[0].0, got[0].1), (1026, 1), "{got:#?}");
    assert!(
        got[0]
            .2
            .contains("capacity exceeded: prefix sets (1025 > 1024)"),
        "{got:#?}"
    );
}

#[test]
fn a_file_that_is_not_utf8_is_an_error_at_its_first_bad_byte() {
    let path = std::env::temp_dir().join(format!("xdpgate-utf8-{}.toml", std::process::id()));
    std::fs::write(&path, b"[daemon]\nmalformed = \"dr\xffop\"\n").unwrap();
    let got = load(&path);
    std::fs::remove_file(&path).unwrap();
    let Err(ConfigError::Invalid { issues, .. }) = got else {
        panic!("not refused as invalid: {got:?}");
    };
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].at, Some((2, 16)), "{issues:?}");
    assert!(
        issues[0]
            .message
            .contains("byte 0xff (offset 24) is not UTF-8"),
        "{issues:?}"
    );
}

#[test]
fn a_valid_file_parses_to_what_the_serde_forms_of_its_parts_give() {
    #[derive(serde::Deserialize)]
    struct Parts {
        bind: Vec<BindEntry>,
        service: Vec<ServiceEntry>,
        sets: BTreeMap<String, Vec<String>>,
        rule: Vec<crate::acl::Rule>,
    }
    let text = include_str!("../../../deploy/xdpgate.toml");
    let extra = "\n[[rule]]\nid = 40\npriority = 40\nsrc = \"10.0.0.0/8\"\ndst = \"@admins\"\nproto = 17\nsport = \"1000-2000\"\ndport = 53\niface = \"eth0\"\naction = \"allow\"\n\n[[rule]]\nid = 50\npriority = 50\nproto = \"icmpv6\"\nicmp_type = 128\nicmp_code = 0\naction = \"deny\"\n\n[[bind]]\niface = \"eth0\"\naddr = \"192.0.2.0/30\"\nplen = 24\n";
    let text = format!("{text}{extra}");
    let cfg = parse(&text, Path::new("x.toml")).unwrap();
    let parts: Parts = toml::from_str(&text).unwrap();
    assert_eq!(cfg.bindings, parts.bind);
    assert_eq!(cfg.services, parts.service);
    assert_eq!(cfg.acl.sets, parts.sets);
    assert_eq!(cfg.acl.rules, parts.rule);
    assert_eq!(
        cfg.interfaces,
        [Interface {
            name: "eth0".into(),
            mode: XdpMode::Native,
            policy: Verdict::Allow,
            drop_unbound: false,
            decap: false,
        }]
    );
    assert_eq!(cfg.malformed, Malformed::Drop);
    assert!(cfg.decision_cache);
    assert_eq!(cfg.shutdown_grace, Duration::from_secs(5));
    assert_eq!(cfg.bind_limit, 65_536);
    assert!(!cfg.metrics_freebind);
    assert_eq!(cfg.lb.max_services, 16);
    assert_eq!(cfg.lb.table_size, 65_537);
    assert_eq!(cfg.lb.ttl, 64);
    assert_eq!(cfg.lb.source_v4.to_string(), "172.16.0.0/16");
    assert_eq!(cfg.lb.source_v6.to_string(), "100::/64");
    assert_eq!(
        cfg.acl.policy,
        BTreeMap::from([("eth0".to_string(), Verdict::Allow)])
    );
}

#[test]
fn too_many_rules_and_prefixes_are_located_at_the_first_one_over() {
    use crate::acl::model::limits::{MAX_PREFIXES_PER_FAMILY, MAX_RULES};
    let max_rules = MAX_RULES.min(xdpgate_common::acl::MAX_RULES as usize);
    // Rule n (from 0) starts on line 4n + 1.
    let text: String = (0..=max_rules)
        .map(|i| format!("[[rule]]\nid = {i}\npriority = 1\naction = \"deny\"\n"))
        .collect();
    let got = located(&text);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!((got[0].0, got[0].1), (4 * max_rules + 1, 1), "{got:#?}");
    assert!(got[0].2.contains("capacity exceeded: rules"), "{got:#?}");
    // One IPv4 prefix too many, in one set on one line per prefix.
    let mut text = String::from("[sets]\nbig = [\n");
    for i in 0..=MAX_PREFIXES_PER_FAMILY as u32 {
        text.push_str(&format!(
            "\"{}\",\n",
            std::net::Ipv4Addr::from(0x0b00_0000 + i)
        ));
    }
    text.push_str("]\n");
    let got = located(&text);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(
        (got[0].0, got[0].1),
        (MAX_PREFIXES_PER_FAMILY + 3, 1),
        "{got:#?}"
    );
    assert!(
        got[0].2.contains("capacity exceeded: IPv4 prefixes"),
        "{got:#?}"
    );
}

#[test]
fn an_invalid_interface_name_is_reported_once_not_again_where_it_is_used() {
    let got = located(
        "[[interface]]\nname = \"a/b\"\n[[bind]]\niface = \"a/b\"\nspec = \"192.0.2.1\"\n[[rule]]\nid = 1\npriority = 1\niface = \"a/b\"\naction = \"deny\"\n",
    );
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!((got[0].0, got[0].1), (2, 1), "{got:#?}");
    assert!(
        got[0].2.contains("\"a/b\" is not an interface name"),
        "{got:#?}"
    );
}

//! Tests of the configuration parser.
use super::*;

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
    assert_eq!(cfg.acl_state().rules.len(), 3);
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
        ("12:", "listed twice"),
        ("17:", "10.200.0.1/16"),
        ("19:", "unknown set @nosuch"),
        ("25:", "70000 is not a port"),
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
        got[0].starts_with("1:") && got[0].contains("mtu"),
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
        "14:1: [[service]] #2: 192.0.2.11:80/tcp: health payload",
        "19:1: [[service]] #3: 192.0.2.12:*/udp: a service on every port needs a health-check port",
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
fn digest_is_stable() {
    // FNV-1a 64 test vectors.
    assert_eq!(digest(""), "cbf29ce484222325");
    assert_eq!(digest("a"), "af63dc4c8601ec8c");
}

//! Tests of `[acl]` (the capacities of the ACL tables): every bad value at
//! its key with the allowed range, values in range taken (prefix slots
//! rounded up), and a rule set over a configured capacity refused naming the
//! key.
use super::*;

/// Every issue of `text` as (line, column, message).
fn located(text: &str) -> Vec<(usize, usize, String)> {
    match parse(text, Path::new("x.toml")) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid { issues, .. }) => issues
            .into_iter()
            .map(|i| {
                let (l, c) = i.at.unwrap_or((0, 0));
                (l, c, i.message)
            })
            .collect(),
        Err(e) => panic!("not a parse error: {e}"),
    }
}

#[test]
fn each_bad_acl_capacity_is_reported_at_its_key_with_the_range() {
    struct Case {
        name: &'static str,
        keys: &'static str,
        want: &'static str,
    }
    let cases = [
        Case {
            name: "fewer prefix slots than the smallest table",
            keys: "prefix_slots = 1023",
            want: "[acl] prefix_slots = 1023: use 1024 to 4194304 (rounded up to a power of two of 4-slot buckets)",
        },
        Case {
            name: "more prefix slots than the largest table",
            keys: "prefix_slots = 4194305",
            want: "[acl] prefix_slots = 4194305: use 1024 to 4194304 (rounded up to a power of two of 4-slot buckets)",
        },
        Case {
            name: "negative prefix slots",
            keys: "prefix_slots = -1",
            want: "[acl]: prefix_slots = -1: use a whole number from 0 to",
        },
        Case {
            name: "more phase cells than the largest table",
            keys: "phase_cells = 16777217",
            want: "[acl] phase_cells = 16777217: use 0 to 16777216",
        },
        Case {
            name: "fewer walk address classes than IPv4 and IPv6 need",
            keys: "walk_addr_classes = 1",
            want: "[acl] walk_addr_classes = 1: use 2 to 8192",
        },
        Case {
            name: "more walk address classes than the largest table",
            keys: "walk_addr_classes = 8193",
            want: "[acl] walk_addr_classes = 8193: use 2 to 8192",
        },
        Case {
            name: "no walk port classes",
            keys: "walk_port_classes = 0",
            want: "[acl] walk_port_classes = 0: use 1 to 4096",
        },
        Case {
            name: "a capacity given as text",
            keys: "phase_cells = \"many\"",
            want: "phase_cells",
        },
        Case {
            name: "an unknown key",
            keys: "prefixes = 5",
            want: "[acl]: unknown key \"prefixes\" (known keys: prefix_slots",
        },
    ];
    for c in cases {
        let got = located(&format!("[acl]\n{}\n", c.keys));
        assert_eq!(got.len(), 1, "{}: {got:?}", c.name);
        let (line, col, msg) = &got[0];
        assert_eq!((*line, *col), (2, 1), "{}: {msg}", c.name);
        assert!(
            msg.contains(c.want),
            "{}: {msg:?} lacks {:?}",
            c.name,
            c.want
        );
    }
}

#[test]
fn acl_capacities_in_range_are_taken_and_absent_ones_keep_their_defaults() {
    struct Case {
        name: &'static str,
        text: &'static str,
        want: Capacities,
    }
    let cases = [
        Case {
            name: "no [acl]: the largest tables",
            text: "",
            want: Capacities::default(),
        },
        Case {
            name: "a small host",
            text: "[acl]\nprefix_slots = 4096\nphase_cells = 65536\nwalk_addr_classes = 512\nwalk_port_classes = 256\nv6_blocks = 64\n",
            want: Capacities {
                prefix_bucket_bits: 10,
                phase_cells: 65_536,
                walk_addr_classes: 512,
                walk_port_classes: 256,
                v6_blocks: 64,
            },
        },
        Case {
            name: "prefix slots rounded up to a power of two of buckets",
            text: "[acl]\nprefix_slots = 5000\n",
            want: Capacities {
                prefix_bucket_bits: 11,
                ..Capacities::default()
            },
        },
        Case {
            name: "no phased tables at all",
            text: "[acl]\nphase_cells = 0\n",
            want: Capacities {
                phase_cells: 0,
                ..Capacities::default()
            },
        },
    ];
    for c in cases {
        let cfg = parse(c.text, Path::new("x.toml")).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(cfg.capacities, c.want, "{}", c.name);
    }
}

/// A configuration with one rule denying `n` IPv4 /32s (each a long prefix:
/// longer than /24; none adjacent, so none merge) under `[acl]` keys `acl`.
fn many_hosts(acl: &str, n: u32) -> String {
    let hosts: Vec<String> = (0..n)
        .map(|i| format!("\"10.200.{}.{}/32\"", i / 100, i % 100 * 2 + 1))
        .collect();
    format!(
        "[acl]\n{acl}\n[[interface]]\nname = \"veth0\"\n\n[sets]\nhosts = [{}]\n\n[[rule]]\nid = 1\npriority = 1\nsrc = \"@hosts\"\naction = \"deny\"\n",
        hosts.join(", ")
    )
}

#[test]
fn a_rule_set_over_the_configured_long_prefix_table_is_refused_naming_the_key() {
    // 1,024 slots hold 969 entries (95%, rounded down to whole twentieths); 1,000 /32s need 1,000.
    let got = located(&many_hosts("prefix_slots = 1024", 1000));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0].2,
        "long-prefix table full (IPv4 prefixes longer than /24, IPv6 longer than /16, and search markers): 1000 needed, [acl] prefix_slots = 1024 holds 969"
    );
    // The same rule set fits the default table, and 969 hosts fit 1,024 slots.
    assert!(parse(&many_hosts("", 1000), Path::new("x.toml")).is_ok());
    assert!(parse(&many_hosts("prefix_slots = 1024", 969), Path::new("x.toml")).is_ok());
}

/// A configuration with `n` rules, each denying its own IPv4 /32 (each its
/// own address class), under `[acl]` keys `acl`.
fn host_rules(acl: &str, n: u32) -> String {
    let mut text = format!("[acl]\n{acl}\n[[interface]]\nname = \"veth0\"\n");
    for i in 0..n {
        text.push_str(&format!(
            "\n[[rule]]\nid = {}\npriority = {}\nsrc = \"10.200.{}.{}/32\"\naction = \"deny\"\n",
            i + 1,
            i + 1,
            i / 200,
            i % 200 + 1
        ));
    }
    text
}

#[test]
fn without_phased_tables_a_rule_set_over_the_walk_tables_is_refused_naming_the_key() {
    // Every /32 is its own address class, plus the two "no rule" classes.
    let text = host_rules("phase_cells = 0\nwalk_addr_classes = 64", 62);
    assert!(parse(&text, Path::new("x.toml")).is_ok(), "64 classes fit");
    let got = located(&host_rules("phase_cells = 0\nwalk_addr_classes = 64", 63));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0]
            .2
            .contains("65 needed, [acl] walk_addr_classes = 64 holds 64"),
        "{got:?}"
    );
    // With phased tables the walk tables' size does not limit the rule set.
    assert!(
        parse(
            &host_rules("walk_addr_classes = 64", 63),
            Path::new("x.toml")
        )
        .is_ok()
    );
}

//! Tests of the ACL model: parsing, validation of changes, set use.
use super::*;

fn rule(id: u32) -> Rule {
    Rule {
        ..Rule::new(id, 10, Verdict::Deny)
    }
}

#[test]
fn prefixes_reject_host_bits_and_bad_lengths() {
    assert!(parse_prefix("10.0.0.0/8").is_ok());
    assert!(parse_prefix("2001:db8::/32").is_ok());
    assert_eq!(
        parse_prefix("192.0.2.1").unwrap(),
        "192.0.2.1/32".parse::<IpNetwork>().unwrap()
    );
    let e = parse_prefix("10.0.0.1/24").unwrap_err().to_string();
    assert!(e.contains("did you mean 10.0.0.0/24"), "{e}");
    assert!(parse_prefix("10.0.0.1/33").is_err());
    assert!(parse_prefix("2001:db8::/129").is_err());
    assert!(parse_prefix("not-an-ip").is_err());
}

#[test]
fn ports_parse() {
    assert_eq!(
        "80".parse::<PortRange>().unwrap(),
        PortRange { lo: 80, hi: 80 }
    );
    assert_eq!("1024-65535".parse::<PortRange>().unwrap().hi, 65535);
    assert!("90-80".parse::<PortRange>().is_err());
    assert!("65536".parse::<PortRange>().is_err());
}

#[test]
fn invalid_change_leaves_state_untouched_and_lists_every_error() {
    let s = AclState::default()
        .apply(&Change::SetAdd {
            name: "bogons".into(),
            prefixes: vec!["10.0.0.0/8".into(), "fc00::/7".into()],
        })
        .unwrap();
    let mut r1 = rule(1);
    r1.src = Some(AddrMatch::Set("nope".into()));
    let mut r2 = rule(2);
    r2.dport = Some("80".parse().unwrap());
    let mut r3 = rule(3);
    r3.src = Some("10.0.0.0/8".parse().unwrap());
    r3.dst = Some("2001:db8::/32".parse().unwrap());
    let errs = s
        .apply(&Change::RuleAdd {
            rules: vec![r1, r2, r3],
        })
        .unwrap_err();
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(
        matches!(errs[0], AclError::BadRule { rule: 2, .. })
            || errs
                .iter()
                .any(|e| matches!(e, AclError::BadRule { rule: 2, .. }))
    );
    assert!(
        errs.iter()
            .any(|e| matches!(e, AclError::UnknownSet { rule: 1, .. }))
    );
    assert!(
        errs.iter()
            .any(|e| matches!(e, AclError::BadRule { rule: 3, .. }))
    );
    assert!(s.rules.is_empty());
}

#[test]
fn duplicate_ids_and_unknown_deletes_are_rejected() {
    let s = AclState::default()
        .apply(&Change::RuleAdd {
            rules: vec![rule(1)],
        })
        .unwrap();
    assert_eq!(
        s.apply(&Change::RuleAdd {
            rules: vec![rule(1)]
        })
        .unwrap_err(),
        vec![AclError::DuplicateRule(1)]
    );
    assert_eq!(
        s.apply(&Change::RuleDel { ids: vec![7] }).unwrap_err(),
        vec![AclError::NoSuchRule(7)]
    );
}

#[test]
fn rule_file_parses_from_toml() {
    let text = r#"
        [sets]
        bogons = ["10.0.0.0/8", "fc00::/7"]

        [[rule]]
        id = 1
        priority = 10
        src = "@bogons"
        action = "deny"

        [[rule]]
        id = 2
        priority = 20
        proto = "tcp"
        dport = "22"
        iface = "eth0"
        action = "allow"

        [policy]
        eth0 = "deny"
    "#;
    let file: RuleFile = toml::from_str(text).unwrap();
    let s = AclState::from_file(&file).unwrap();
    assert_eq!(s.rules.len(), 2);
    assert_eq!(s.rules[&2].proto, Some(proto::TCP));
    assert_eq!(s.policy("eth0"), Verdict::Deny);
    assert_eq!(s.policy("eth1"), Verdict::Allow);
    assert_eq!(s.sets["bogons"].len(), 2);
}

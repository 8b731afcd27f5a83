//! The ACL controller against the in-memory datapath: the order of an
//! install and what a failure at each of its steps leaves behind.
use std::collections::BTreeMap;

use xdpgate_model::acl::{AclState, Change, RuleFile};

use super::{AclController, ApplyError};
use crate::datapath::{
    AclTables as _,
    fake::{AclGeneration, FakeDatapath, Op},
};

fn state(text: &str) -> AclState {
    AclState::from_file(&toml::from_str::<RuleFile>(text).expect("rule file")).expect("state")
}

/// Two rules on eth0.
const BEFORE: &str = r#"
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
"#;

/// Rule 1 goes, rule 3 comes, rule 2 stays.
fn change() -> Change {
    Change::Replace {
        file: toml::from_str(
            r#"
            [[rule]]
            id = 2
            priority = 20
            proto = "tcp"
            dport = "22"
            iface = "eth0"
            action = "allow"

            [[rule]]
            id = 3
            priority = 30
            dst = "192.0.2.0/24"
            action = "deny"
        "#,
        )
        .expect("rule file"),
    }
}

/// A datapath with `BEFORE` installed and some traffic counted on its rules.
fn installed() -> (FakeDatapath, AclController) {
    let mut dp = FakeDatapath::default();
    let mut ctl = AclController::new(BTreeMap::from([("eth0".to_owned(), 1)]));
    ctl.install(&mut dp, state(BEFORE)).expect("install");
    for (i, slot) in ctl.counter_of.values().enumerate() {
        dp.maps_mut()
            .rule_counters
            .insert(*slot, (10 + i as u64, 1000 + i as u64));
    }
    (dp, ctl)
}

#[test]
fn an_install_writes_the_idle_generation_zeroes_new_counters_switches_then_waits() {
    let (mut dp, mut ctl) = installed();
    let (cfg, _) = dp.acl_view();
    assert_eq!(cfg.epoch, 1, "the first install is epoch 1, generation 1");
    assert!(matches!(
        dp.maps().acl_generations[1],
        AclGeneration::Written { .. }
    ));
    assert_eq!(
        dp.log(),
        [
            Op::WriteAclGeneration,
            Op::ZeroRuleCounters,
            Op::SetAclConfig,
            Op::RcuWait,
            // The same tables into the generation that went idle.
            Op::WriteAclGeneration,
        ]
    );
    assert_eq!(
        dp.maps().acl_generations[0],
        dp.maps().acl_generations[1],
        "both generations hold the installed tables"
    );

    let kept = ctl.counter_of[&ctl.state.rules[&2]];
    let counted = dp.maps().rule_counters[&kept];
    ctl.apply(&mut dp, &change()).expect("apply");
    let (cfg, live) = dp.acl_view();
    assert_eq!((cfg.epoch, cfg.generation()), (2, 0));
    let AclGeneration::Written {
        rule_ids, counters, ..
    } = live
    else {
        panic!("generation 0 is written: {live:?}");
    };
    assert_eq!(rule_ids, [2, 3]);
    assert_eq!(
        counters[0], kept,
        "an unchanged rule keeps its counter slot"
    );
    assert_eq!(dp.maps().rule_counters[&kept], counted, "and its counts");
    assert!(
        !dp.maps().rule_counters.contains_key(&counters[1]),
        "a new rule's counter starts at zero"
    );
    assert_eq!(
        ctl.rule_counters(&dp).expect("counters")[0].packets,
        counted.0
    );
}

#[test]
fn a_failed_install_leaves_the_live_generation_and_the_controller_unchanged() {
    let cases: &[(&str, Op)] = &[
        ("reading the configuration word", Op::AclConfig),
        (
            "writing the idle generation's tables",
            Op::WriteAclGeneration,
        ),
        ("zeroing the new rules' counters", Op::ZeroRuleCounters),
        ("the switch", Op::SetAclConfig),
        ("the wait after the switch", Op::RcuWait),
    ];
    for (name, op) in cases {
        let (mut dp, mut ctl) = installed();
        let live = dp.acl_view();
        let counts = dp.maps().rule_counters.clone();
        let before = ctl.clone();

        dp.fail_next(*op);
        let e = ctl.apply(&mut dp, &change()).unwrap_err();
        assert!(!dp.failures_pending(), "{name}: the failure happened");
        assert!(matches!(e, ApplyError::Datapath(_)), "{name}: {e}");
        assert!(e.to_string().contains("injected failure"), "{name}: {e}");
        assert_eq!(dp.acl_view(), live, "{name}: the live generation");
        for (slot, c) in &counts {
            assert_eq!(
                dp.maps().rule_counters.get(slot),
                Some(c),
                "{name}: the counter of a live rule"
            );
        }
        assert_eq!(ctl, before, "{name}: the controller's state");

        // Nothing is left half done: the same change goes through now.
        ctl.apply(&mut dp, &change())
            .unwrap_or_else(|e| panic!("{name}: retry: {e}"));
        let (_, live) = dp.acl_view();
        assert!(
            matches!(&live, AclGeneration::Written { rule_ids, .. } if rule_ids == &[2, 3]),
            "{name}: {live:?}"
        );
    }
}

#[test]
fn a_failed_switch_back_reports_both_errors() {
    let (mut dp, mut ctl) = installed();
    let before = ctl.clone();
    dp.fail_next(Op::RcuWait);
    // The switch is the first configuration write, the switch back the second.
    dp.fail_call(Op::SetAclConfig, 1);
    let e = ctl.apply(&mut dp, &change()).unwrap_err();
    let ApplyError::Rollback { cause, undo } = &e else {
        panic!("expected Rollback, got {e}");
    };
    assert!(cause.to_string().contains("RcuWait"), "{e}");
    assert!(undo.to_string().contains("SetAclConfig"), "{e}");
    assert!(
        e.to_string()
            .contains("switching back to the previous generation failed too"),
        "{e}"
    );
    assert_eq!(ctl, before, "the controller keeps the state it knows");
    assert_eq!(
        dp.acl_config().expect("config").epoch,
        2,
        "the new one is live"
    );
}

#[test]
fn a_new_controller_adopting_a_running_datapath_keeps_the_counters_of_kept_rules() {
    // A daemon installed BEFORE and counted traffic, then died; the datapath
    // (here the fake's maps) stayed. A new controller adopts it.
    let (mut dp, old) = installed();
    let counted: Vec<_> = old
        .state
        .rules
        .values()
        .map(|r| (r.clone(), dp.maps().rule_counters[&old.counter_of[r]]))
        .collect();
    let mut ctl = AclController::new(BTreeMap::from([("eth0".to_owned(), 1)]));
    assert_eq!(ctl.adopt_counters(&dp, &state(BEFORE)).expect("adopt"), 2);
    ctl.install(&mut dp, state(BEFORE)).expect("install");
    for (rule, (packets, bytes)) in &counted {
        let slot = ctl.counter_of[rule];
        assert_eq!(
            slot, old.counter_of[rule],
            "rule {} keeps its slot",
            rule.id
        );
        assert_eq!(dp.maps().rule_counters[&slot], (*packets, *bytes));
    }
    // Then a change: the kept rule 2 still keeps its counts, rule 3 starts at 0.
    let kept = ctl.counter_of[&ctl.state.rules[&2]];
    let before = dp.maps().rule_counters[&kept];
    ctl.apply(&mut dp, &change()).expect("apply");
    assert_eq!(dp.maps().rule_counters[&kept], before);
}

#[test]
fn adopting_a_datapath_without_a_live_generation_takes_no_counters() {
    let dp = FakeDatapath::default();
    let mut ctl = AclController::new(BTreeMap::from([("eth0".to_owned(), 1)]));
    assert_eq!(ctl.adopt_counters(&dp, &state(BEFORE)).expect("adopt"), 0);
    assert!(ctl.counter_of.is_empty());
}

#[test]
fn a_change_stopped_at_its_cancellation_point_leaves_everything_as_it_was() {
    let (mut dp, mut ctl) = installed();
    let live = dp.acl_view();
    let before = ctl.clone();
    let work = crate::cancel::Work::new("acl replace", tokio_util::sync::CancellationToken::new());
    work.client_gone();
    let e = crate::cancel::scope(&work, || ctl.apply(&mut dp, &change())).unwrap_err();
    assert!(
        matches!(
            e,
            ApplyError::Cancelled(crate::cancel::Cancelled::ClientGone)
        ),
        "{e}"
    );
    assert!(e.to_string().contains("nothing was changed"), "{e}");
    assert_eq!(dp.acl_view(), live);
    assert_eq!(ctl, before);
    // Outside the scope the same change goes through.
    ctl.apply(&mut dp, &change()).expect("apply");
}

#[test]
fn a_new_rule_on_a_reused_counter_slot_starts_with_zero_limit_counters_and_a_full_bucket() {
    let mut dp = FakeDatapath::default();
    let mut ctl = AclController::new(BTreeMap::from([("eth0".to_owned(), 1)]));
    let limited = r#"
        [[rule]]
        id = 10
        priority = 10
        proto = "udp"
        action = "allow"
        limit = { pps = 100, per = "rule" }

        [[rule]]
        id = 11
        priority = 11
        proto = "icmp"
        action = "allow"
        limit = { pps = 50 }
    "#;
    ctl.install(&mut dp, state(limited)).expect("install");
    let slot_of = |ctl: &AclController, id: u32| {
        ctl.counter_of
            .iter()
            .find(|(r, _)| r.id == id)
            .map(|(_, s)| *s)
            .expect("rule has a slot")
    };
    let (gone, kept) = (slot_of(&ctl, 10), slot_of(&ctl, 11));
    // Traffic: both rules limited some packets and spent their buckets.
    let mut traffic = crate::datapath::RuleLimitStats::default();
    traffic[0].packets = 7;
    traffic[0].bytes = 700;
    for slot in [gone, kept] {
        dp.maps_mut().rule_limits.insert(slot, (traffic, true));
    }
    ctl.apply(&mut dp, &Change::RuleDel { ids: vec![10] })
        .expect("delete");
    let syncookie: RuleFile = toml::from_str(
        r#"
        [[rule]]
        id = 12
        priority = 12
        proto = "tcp"
        dport = "443"
        action = "allow"
        syncookie = true
    "#,
    )
    .expect("rule file");
    ctl.apply(
        &mut dp,
        &Change::RuleAdd {
            rules: syncookie.rules,
        },
    )
    .expect("add");
    assert_eq!(
        slot_of(&ctl, 12),
        gone,
        "the new rule reuses the freed slot"
    );
    assert!(
        !dp.maps().rule_limits.contains_key(&gone),
        "its limit counters are zero and its rule-wide bucket full"
    );
    assert_eq!(
        dp.maps().rule_limits[&kept],
        (traffic, true),
        "the kept rule keeps its own"
    );
    let rows = ctl.rule_counters(&dp).expect("counters");
    let limits: Vec<(u32, Option<u64>)> = rows
        .iter()
        .map(|r| (r.rule.id, r.limits.map(|l| l[0].packets)))
        .collect();
    assert_eq!(limits, vec![(11, Some(7)), (12, Some(0))]);
}

/// One prefix more in the set rule 1 names.
fn add_prefix() -> Change {
    Change::SetAdd {
        name: "bogons".into(),
        prefixes: vec!["192.0.2.0/24".into()],
    }
}

#[test]
fn a_prefix_change_writes_its_delta_into_both_generations_and_keeps_every_counter() {
    let (mut dp, mut ctl) = installed();
    let counts = dp.maps().rule_counters.clone();
    let steps = dp.steps();
    ctl.apply(&mut dp, &add_prefix()).expect("apply");
    assert_eq!(
        dp.log()[steps..],
        [
            Op::WriteAclDelta,
            Op::ZeroRuleCounters,
            Op::SetAclConfig,
            Op::RcuWait,
            Op::WriteAclDelta,
        ]
    );
    assert!(ctl.last_timing().expect("timed").incremental);
    assert_eq!(dp.maps().rule_counters, counts, "every counter kept");
    assert_eq!(dp.maps().acl_generations[0], dp.maps().acl_generations[1]);
    assert!(ctl.state().sets["bogons"].contains("192.0.2.1".parse().unwrap()));
    // A rule change goes the same way, and the new rule's counter is fresh.
    let steps = dp.steps();
    let rule: RuleFile = toml::from_str(
        r#"
        [[rule]]
        id = 7
        priority = 5
        src = "198.51.100.0/24"
        action = "allow"
    "#,
    )
    .expect("rule file");
    ctl.apply(&mut dp, &Change::RuleAdd { rules: rule.rules })
        .expect("apply");
    assert_eq!(dp.log()[steps], Op::WriteAclDelta);
    let (_, live) = dp.acl_view();
    assert!(
        matches!(&live, AclGeneration::Written { rule_ids, .. } if rule_ids == &[7, 1, 2]),
        "{live:?}"
    );
    for (slot, c) in &counts {
        assert_eq!(dp.maps().rule_counters.get(slot), Some(c));
    }
}

#[test]
fn a_failed_incremental_change_leaves_the_live_generation_and_the_controller_unchanged() {
    let cases: &[(&str, Op)] = &[
        ("reading the configuration word", Op::AclConfig),
        (
            "writing the delta into the idle generation",
            Op::WriteAclDelta,
        ),
        ("zeroing the new rules' counters", Op::ZeroRuleCounters),
        ("the switch", Op::SetAclConfig),
        ("the wait after the switch", Op::RcuWait),
    ];
    for (name, op) in cases {
        let (mut dp, mut ctl) = installed();
        let live = dp.acl_view();
        let counts = dp.maps().rule_counters.clone();
        let before = ctl.clone();
        dp.fail_next(*op);
        let e = ctl.apply(&mut dp, &add_prefix()).unwrap_err();
        assert!(!dp.failures_pending(), "{name}: the failure happened");
        assert!(e.to_string().contains("injected failure"), "{name}: {e}");
        assert_eq!(dp.acl_view(), live, "{name}: the live generation");
        assert_eq!(dp.maps().rule_counters, counts, "{name}: the counters");
        assert_eq!(ctl, before, "{name}: the controller's state");
        // The kept tables went with the failure: the retry compiles in full
        // and writes the idle generation whole.
        let steps = dp.steps();
        ctl.apply(&mut dp, &add_prefix())
            .unwrap_or_else(|e| panic!("{name}: retry: {e}"));
        assert_eq!(dp.log()[steps], Op::WriteAclGeneration, "{name}");
        assert!(!ctl.last_timing().expect("timed").incremental, "{name}");
        assert!(ctl.state().sets["bogons"].contains("192.0.2.1".parse().unwrap()));
        assert_eq!(dp.maps().acl_generations[0], dp.maps().acl_generations[1]);
    }
}

#[test]
fn a_failed_second_copy_is_written_whole_by_the_next_change() {
    let (mut dp, mut ctl) = installed();
    // The first delta write (the idle generation) succeeds, the second
    // (the generation that went idle after the switch) fails.
    dp.fail_call(Op::WriteAclDelta, 1);
    ctl.apply(&mut dp, &add_prefix())
        .expect("the change is in force");
    assert!(!dp.failures_pending());
    let (cfg, live) = dp.acl_view();
    assert!(matches!(live, AclGeneration::Written { .. }));
    assert_eq!(
        dp.maps().acl_generations[1 - cfg.generation()],
        AclGeneration::Torn
    );
    let steps = dp.steps();
    ctl.apply(
        &mut dp,
        &Change::SetDel {
            name: "bogons".into(),
            prefixes: vec!["192.0.2.0/24".into()],
        },
    )
    .expect("apply");
    assert_eq!(
        dp.log()[steps..],
        [
            Op::WriteAclGeneration,
            Op::ZeroRuleCounters,
            Op::SetAclConfig,
            Op::RcuWait,
            Op::WriteAclDelta,
        ],
        "the stale copy written whole, the other one by delta"
    );
    assert!(ctl.last_timing().expect("timed").incremental);
    assert_eq!(dp.maps().acl_generations[0], dp.maps().acl_generations[1]);
}

/// Rule 7 (no port: the incremental path), in front of the others.
fn add_rule() -> Change {
    Change::RuleAdd {
        rules: vec![xdpgate_model::acl::Rule {
            src: Some(xdpgate_model::acl::AddrMatch::Prefix(
                "198.51.100.7/32".parse().unwrap(),
            )),
            ..xdpgate_model::acl::Rule::new(7, 1, xdpgate_model::acl::Verdict::Deny)
        }],
    }
}

#[test]
fn a_deferred_second_copy_is_written_by_finish_or_first_by_the_next_change() {
    let (mut dp, mut ctl) = installed();
    let counts = dp.maps().rule_counters.clone();
    ctl.apply_deferred(&mut dp, &add_rule()).expect("apply");
    let (cfg, live) = dp.acl_view();
    assert!(
        matches!(&live, AclGeneration::Written { rule_ids, .. } if rule_ids == &[7, 1, 2]),
        "enforced: {live:?}"
    );
    assert_ne!(
        dp.maps().acl_generations[1 - cfg.generation()],
        live,
        "the other generation still holds the tables before"
    );
    assert!(ctl.unfinished());
    assert!(ctl.finish(&mut dp), "the copy is written");
    assert!(!ctl.unfinished());
    assert!(!ctl.finish(&mut dp), "nothing is left to write");
    assert_eq!(dp.maps().acl_generations[0], dp.maps().acl_generations[1]);

    // Not finished: the next change writes the copy first, then its own
    // delta (not the whole generation: the copy made it current).
    ctl.apply_deferred(&mut dp, &Change::RuleDel { ids: vec![7] })
        .expect("del");
    let steps = dp.steps();
    ctl.apply_deferred(&mut dp, &add_rule()).expect("again");
    assert_eq!(
        dp.log()[steps..],
        [
            Op::WriteAclDelta,
            Op::WriteAclDelta,
            Op::ZeroRuleCounters,
            Op::SetAclConfig,
            Op::RcuWait,
        ],
        "the pending copy, then the change"
    );
    ctl.finish(&mut dp);
    assert_eq!(dp.maps().acl_generations[0], dp.maps().acl_generations[1]);
    for (slot, c) in &counts {
        assert_eq!(dp.maps().rule_counters.get(slot), Some(c), "counters kept");
    }
}

#[test]
fn a_rule_change_that_fails_is_undone_in_the_state_and_leaves_the_live_generation() {
    let cases: &[(&str, Change, Op)] = &[
        (
            "a rule added, the switch fails",
            add_rule(),
            Op::SetAclConfig,
        ),
        (
            "a rule removed, the delta write fails",
            Change::RuleDel { ids: vec![1] },
            Op::WriteAclDelta,
        ),
        (
            "a rule removed, the wait fails",
            Change::RuleDel { ids: vec![2] },
            Op::RcuWait,
        ),
    ];
    for (name, change, op) in cases {
        let (mut dp, mut ctl) = installed();
        let live = dp.acl_view();
        let counts = dp.maps().rule_counters.clone();
        let before = ctl.clone();
        dp.fail_next(*op);
        ctl.apply(&mut dp, change).unwrap_err();
        assert!(!dp.failures_pending(), "{name}: the failure happened");
        assert_eq!(dp.acl_view(), live, "{name}: the live generation");
        assert_eq!(dp.maps().rule_counters, counts, "{name}: the counters");
        assert_eq!(ctl, before, "{name}: the controller's state");
        assert_eq!(
            *ctl.shared_state(),
            *before.state(),
            "{name}: the readers' copy"
        );
    }
}

#[test]
fn the_readers_copy_follows_every_change_and_a_copy_held_keeps_the_state_before() {
    let (mut dp, mut ctl) = installed();
    let first = ctl.shared_state();
    assert_eq!(*first, *ctl.state());
    ctl.apply(&mut dp, &add_prefix()).expect("prefix");
    let second = ctl.shared_state();
    assert_eq!(*second, *ctl.state(), "replayed into the copy");
    assert_eq!(
        *first,
        state(BEFORE),
        "the copy held keeps the state before"
    );
    drop((first, second));
    ctl.apply(&mut dp, &add_rule()).expect("rule");
    ctl.apply(&mut dp, &Change::RuleDel { ids: vec![2] })
        .expect("del");
    assert_eq!(*ctl.shared_state(), *ctl.state(), "two changes replayed");
    let rejected = Change::RuleDel { ids: vec![1, 99] };
    ctl.apply(&mut dp, &rejected).unwrap_err();
    assert_eq!(*ctl.shared_state(), *ctl.state(), "a rejected change");
    ctl.apply(&mut dp, &change()).expect("replace");
    assert_eq!(*ctl.shared_state(), *ctl.state(), "after a replacement");
}

/// The live tables' image (the kept tables equal the live generation).
fn walking(ctl: &AclController) -> bool {
    let tables = ctl.compiled.tables.as_ref().expect("kept tables");
    tables.image().phases.is_none()
}

#[test]
fn a_rule_change_is_enforced_by_the_walk_then_the_rebuilt_phased_tables_are_switched_to() {
    let (mut dp, mut ctl) = installed();
    assert!(!walking(&ctl), "a full install has phased tables");
    let counts = dp.maps().rule_counters.clone();
    ctl.apply(&mut dp, &add_rule()).expect("apply");
    assert!(ctl.last_timing().expect("timed").incremental);
    assert!(
        ctl.rebuild_pending() && walking(&ctl),
        "the walk until the rebuild"
    );
    let (cfg, live) = dp.acl_view();
    assert!(
        matches!(&live, AclGeneration::Written { rule_ids, .. } if rule_ids == &[7, 1, 2]),
        "enforced: {live:?}"
    );
    let steps = dp.steps();
    assert!(ctl.wait_rebuilt(&mut dp).expect("installed"), "switched");
    assert_eq!(
        dp.log()[steps..],
        [
            Op::WriteAclDelta,
            Op::ZeroRuleCounters,
            Op::SetAclConfig,
            Op::RcuWait,
            Op::WriteAclDelta,
        ],
        "a switch like any other, both generations"
    );
    assert!(!ctl.rebuild_pending() && !walking(&ctl));
    let (after, rebuilt) = dp.acl_view();
    assert_eq!(after.epoch, cfg.epoch + 1);
    assert_eq!(rebuilt, live, "the same rules on the same counter slots");
    assert_eq!(dp.maps().acl_generations[0], dp.maps().acl_generations[1]);
    for (slot, c) in &counts {
        assert_eq!(dp.maps().rule_counters.get(slot), Some(c), "counters kept");
    }
    assert!(!ctl.wait_rebuilt(&mut dp).expect("none"), "nothing left");
}

#[test]
fn a_change_during_a_rebuild_stops_it_and_its_own_rebuild_is_installed() {
    let (mut dp, mut ctl) = installed();
    ctl.apply(&mut dp, &add_rule()).expect("apply");
    let first = ctl.rebuild_wait().expect("a rebuild runs");
    ctl.apply(&mut dp, &Change::RuleDel { ids: vec![1] })
        .expect("del");
    // Stopped (or done, for the tables of before): it returns either way.
    first.wait();
    assert!(ctl.rebuild_pending() && walking(&ctl));
    assert!(ctl.wait_rebuilt(&mut dp).expect("installed"));
    assert!(!walking(&ctl));
    let (_, live) = dp.acl_view();
    assert!(
        matches!(&live, AclGeneration::Written { rule_ids, .. } if rule_ids == &[7, 2]),
        "{live:?}"
    );
    assert_eq!(dp.maps().acl_generations[0], dp.maps().acl_generations[1]);
}

#[test]
fn a_rejected_change_during_a_rebuild_changes_nothing_and_the_rebuild_still_lands() {
    let (mut dp, mut ctl) = installed();
    ctl.apply(&mut dp, &add_rule()).expect("apply");
    let live = dp.acl_view();
    let e = ctl
        .apply(&mut dp, &Change::RuleDel { ids: vec![99] })
        .unwrap_err();
    assert!(matches!(e, ApplyError::Invalid(_)), "{e}");
    assert_eq!(dp.acl_view(), live, "nothing written");
    assert!(ctl.wait_rebuilt(&mut dp).expect("installed"));
    assert!(!walking(&ctl));
}

#[test]
fn a_failed_switch_to_the_rebuilt_tables_leaves_the_walk_live_and_the_next_change_compiles_in_full()
{
    let (mut dp, mut ctl) = installed();
    ctl.apply(&mut dp, &add_rule()).expect("apply");
    let live = dp.acl_view();
    let counts = dp.maps().rule_counters.clone();
    dp.fail_next(Op::SetAclConfig);
    ctl.wait_rebuilt(&mut dp).unwrap_err();
    assert!(!dp.failures_pending(), "the failure happened");
    assert_eq!(dp.acl_view(), live, "the walking generation stays live");
    assert_eq!(dp.maps().rule_counters, counts);
    let steps = dp.steps();
    ctl.apply(&mut dp, &add_prefix()).expect("apply");
    assert_eq!(dp.log()[steps], Op::WriteAclGeneration);
    assert!(!ctl.last_timing().expect("timed").incremental);
    assert!(!walking(&ctl), "a full compile builds the phased tables");
}

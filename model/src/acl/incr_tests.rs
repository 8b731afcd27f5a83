//! The incremental compiler (`compile::incr`) against the full compile, on
//! random states and changes from [`random`](super::random). (A sibling of
//! both modules: `random`'s own tests use the compiler.)
use std::collections::HashMap;

use ipnetwork::IpNetwork;
use xdpgate_common::acl::{V4_EXT, V6_CHILD, V6Bucket, prefix_buckets};

use super::{
    AclError, AclState, AddrMatch, Change, Rule,
    compile::{
        Image,
        incr::{Fallback, Incremental},
    },
    random::{Rng, rand_packet, rand_prefix, rand_state, slots},
    reference::classify,
};

/// A class as what it means: its family and the address matches it holds.
type Meaning = (u8, Vec<AddrMatch>);

/// `state` with `change` applied in place on a copy, and its undo (what
/// the controller hands the incremental compiler).
fn applied(
    state: &AclState,
    change: &Change,
) -> Result<(AclState, super::model::Undo), Vec<AclError>> {
    let mut next = state.clone();
    let undo = next.apply_in_place(change)?;
    Ok((next, undo))
}

fn meaning(x: &Incremental, c: u16) -> Meaning {
    let (tag, mut m) = x.class_meaning(c).expect("a live class");
    m.sort();
    (tag, m)
}

fn intervals(x: &Incremental, f: usize) -> Vec<(u128, u128, Meaning)> {
    x.intervals(f)
        .into_iter()
        .map(|(a, b, c)| (a, b, meaning(x, c)))
        .collect()
}

fn lens(img: &Image, id: u16) -> &[u8] {
    let s = &img.lensets[id as usize];
    &s.lens[..s.n as usize]
}

/// Asserts that IPv6 entry `g` of image `got` and `w` of image `want` are
/// the same (classes through `map`), their tries included, block by block.
fn assert_same_v6(at: &str, map: &[u16], got: (&Image, V6Bucket), want: (&Image, V6Bucket)) {
    let ((gi, g), (wi, w)) = (got, want);
    match (g.lenset, w.lenset) {
        (V6_CHILD, V6_CHILD) => {
            let (gb, wb) = (
                &gi.v6_blocks[g.class as usize],
                &wi.v6_blocks[w.class as usize],
            );
            for (j, (ge, we)) in gb.entries.iter().zip(&wb.entries).enumerate() {
                assert_same_v6(&format!("{at}, entry {j:#x}"), map, (gi, *ge), (wi, *we));
            }
        }
        (V6_CHILD, _) | (_, V6_CHILD) => panic!("{at}: {g:?} vs {w:?}: a block on one side only"),
        _ => assert!(
            map[g.class as usize] == w.class && lens(gi, g.lenset) == lens(wi, w.lenset),
            "{at}: {g:?} vs {w:?}"
        ),
    }
}

/// Asserts that `got` (updated incrementally) holds the tables of `want` (a
/// full compile of the same state) up to the numbering of classes and length
/// sets and the placement of keys in the cuckoo table.
fn assert_same(step: &str, got: &Incremental, want: &Incremental) {
    for f in 0..2 {
        assert_eq!(
            intervals(got, f),
            intervals(want, f),
            "{step}: intervals of family {f}"
        );
    }
    // Classes: a bijection by meaning, with the same bitmaps.
    let by_meaning: HashMap<Meaning, u16> = (0..want.class_ids() as u16)
        .map(|c| (meaning(want, c), c))
        .collect();
    let live: Vec<u16> = (0..got.class_ids() as u16)
        .filter(|c| got.class_meaning(*c).is_some())
        .collect();
    assert_eq!(live.len(), by_meaning.len(), "{step}: number of classes");
    let mut map = vec![u16::MAX; got.class_ids()];
    let (g, w) = (got.image(), want.image());
    for c in live {
        let wc = by_meaning[&meaning(got, c)];
        map[c as usize] = wc;
        assert_eq!(
            g.src_bm[c as usize], w.src_bm[wc as usize],
            "{step}: source bitmap of class {c}"
        );
        assert_eq!(
            g.dst_bm[c as usize], w.dst_bm[wc as usize],
            "{step}: destination bitmap of class {c}"
        );
    }
    // The other dimensions: identical.
    assert_eq!(g.rule_ids, w.rule_ids, "{step}: rule order");
    assert_eq!(g.rule_verdicts, w.rule_verdicts, "{step}");
    assert_eq!(g.rule_extras, w.rule_extras, "{step}");
    assert_eq!(g.default_verdicts, w.default_verdicts, "{step}");
    assert!(g.iface_bm == w.iface_bm, "{step}: interface bitmaps");
    assert!(g.proto_bm == w.proto_bm, "{step}: protocol bitmaps");
    assert!(
        g.sport_class == w.sport_class,
        "{step}: source port classes"
    );
    assert!(
        g.dport_class == w.dport_class,
        "{step}: destination port classes"
    );
    assert!(g.sport_bm == w.sport_bm, "{step}: source port bitmaps");
    assert!(g.dport_bm == w.dport_bm, "{step}: destination port bitmaps");
    // First levels: the same classes and length sets everywhere.
    for (i, (ge, we)) in g.v4_tbl24.iter().zip(&w.v4_tbl24).enumerate() {
        let same = match (ge & V4_EXT != 0, we & V4_EXT != 0) {
            (false, false) => map[*ge as usize] == *we as u16,
            (true, true) => {
                map[(ge & 0xffff) as usize] == (we & 0xffff) as u16
                    && lens(g, (ge >> 16 & 0xfff) as u16) == lens(w, (we >> 16 & 0xfff) as u16)
            }
            _ => false,
        };
        assert!(same, "{step}: IPv4 /24 {i:#x}: {ge:#x} vs {we:#x}");
    }
    for (i, (gb, wb)) in g.v6_buckets.iter().zip(&w.v6_buckets).enumerate() {
        assert_same_v6(
            &format!("{step}: IPv6 /16 {i:#x}"),
            &map,
            (g, *gb),
            (w, *wb),
        );
    }
    let reached = |img: &Image| {
        let mut n = 0;
        let mut stack: Vec<V6Bucket> = img.v6_buckets.clone();
        while let Some(e) = stack.pop() {
            if e.lenset == V6_CHILD {
                n += 1;
                stack.extend(img.v6_blocks[e.class as usize].entries);
            }
        }
        n
    };
    assert_eq!(reached(g), reached(w), "{step}: IPv6 trie blocks");
    // The long-prefix table: the same keys and entries, each key in one of
    // its two buckets.
    let entries = |img: &Image, map: Option<&[u16]>| {
        let mut out = HashMap::new();
        for (b, bucket) in img.prefix_table.iter().enumerate() {
            for s in bucket.slots.iter().filter(|s| s.len != 0) {
                let (b1, b2) = prefix_buckets(&s.addr, s.len as u32, img.caps.prefix_bucket_bits);
                assert!(b as u32 == b1 || b as u32 == b2, "{step}: misplaced {s:?}");
                let class = match map {
                    Some(m) if s.marker == 0 => m[s.class as usize],
                    _ => s.class,
                };
                assert!(
                    out.insert((s.len, s.addr), (s.marker, class)).is_none(),
                    "{step}: key twice: {s:?}"
                );
            }
        }
        out
    };
    let ge = entries(g, Some(&map));
    assert_eq!(ge.len(), g.prefix_entries, "{step}: entry count");
    assert!(ge == entries(w, None), "{step}: long-prefix entries");
}

/// A random change to `state`: prefixes added to or removed from a set,
/// a rule added or removed.
fn rand_change(rng: &mut Rng, state: &AclState) -> Change {
    let names: Vec<&String> = state.sets.keys().collect();
    match rng.below(4) {
        0 => Change::SetAdd {
            name: (*rng.pick(&names)).clone(),
            prefixes: (0..1 + rng.below(3))
                .map(|_| {
                    let v6 = rng.chance(1, 2);
                    rand_prefix(rng, v6).to_string()
                })
                .collect(),
        },
        1 => {
            let name = (*rng.pick(&names)).clone();
            let set = &state.sets[&name];
            let all: Vec<IpNetwork> = set
                .v4
                .iter()
                .map(|p| IpNetwork::V4(*p))
                .chain(set.v6.iter().map(|p| IpNetwork::V6(*p)))
                .collect();
            if all.is_empty() {
                return rand_change(rng, state);
            }
            Change::SetDel {
                name,
                prefixes: vec![rng.pick(&all).to_string()],
            }
        }
        2 => {
            let donor = rand_state(rng, state.sets.len(), 0, 1);
            Change::RuleAdd {
                rules: donor.rules.into_values().collect(),
            }
        }
        _ => {
            let ids: Vec<u32> = state.rules.keys().copied().collect();
            if ids.is_empty() {
                return rand_change(rng, state);
            }
            Change::RuleDel {
                ids: vec![*rng.pick(&ids)],
            }
        }
    }
}

/// The main correctness test of incremental updates: for random states and
/// random sequences of prefix and rule changes, the incrementally updated
/// tables equal a full compile of the same state (up to numbering and
/// placement), and decide random packets as the reference classifier does.
#[test]
fn incremental_updates_equal_a_full_compile_of_the_same_state() {
    let slots = slots();
    let (mut incremental, mut full) = (0, 0);
    for seed in 0..8u64 {
        let mut rng = Rng::new(seed);
        let rules = 1 + rng.below(30) as usize;
        let mut state = rand_state(&mut rng, 3, 20, rules);
        let mut x = Incremental::build(&state, &slots).expect("compile");
        for step in 0..8 {
            let change = rand_change(&mut rng, &state);
            let Ok((next, undo)) = applied(&state, &change) else {
                continue;
            };
            let name = format!("seed {seed}, step {step}, {change:?}");
            match x.update(&next, &undo, &change) {
                Ok(_) => incremental += 1,
                Err(Fallback::Shape) => {
                    full += 1;
                    x = Incremental::build(&next, &slots).expect("compile");
                }
                Err(Fallback::Spoiled) => panic!("{name}: spoiled on a small state"),
            }
            let want = Incremental::build(&next, &slots).expect("compile");
            assert_same(&name, &x, &want);
            for _ in 0..50 {
                let pkt = rand_packet(&mut rng, &next);
                assert_eq!(
                    x.image().decide(1, &pkt),
                    classify(&next, "eth0", &pkt),
                    "{name}: {pkt:?}"
                );
            }
            state = next;
        }
    }
    // Most changes must take the incremental path, or the test shows little.
    assert!(
        incremental > 8 * full,
        "incremental {incremental}, full {full}"
    );
}

fn deny_set(id: u32, set: &str) -> Rule {
    Rule {
        src: Some(AddrMatch::Set(set.into())),
        ..Rule::new(id, id, crate::acl::Verdict::Deny)
    }
}

fn state_with(prefixes: &[&str]) -> AclState {
    let mut state = AclState::default();
    state = state
        .apply(&Change::SetAdd {
            name: "block".into(),
            prefixes: prefixes.iter().map(ToString::to_string).collect(),
        })
        .expect("valid");
    state
        .apply(&Change::RuleAdd {
            rules: vec![deny_set(1, "block")],
        })
        .expect("valid")
}

/// Named cases: a change and the table entries its delta must name.
#[test]
fn a_delta_names_exactly_the_entries_that_change() {
    struct Case {
        name: &'static str,
        change: Change,
        v4: &'static [u32],
        v6: &'static [u32],
        long: bool,
    }
    let add = |p: &str| Change::SetAdd {
        name: "block".into(),
        prefixes: vec![p.into()],
    };
    let cases = [
        Case {
            name: "a /24 rewrites one first-level entry",
            change: add("198.51.100.0/24"),
            v4: &[0xc63364],
            v6: &[],
            long: false,
        },
        Case {
            name: "a /32 makes its /24 a length-search block",
            change: add("198.51.100.7/32"),
            v4: &[0xc63364],
            v6: &[],
            long: true,
        },
        Case {
            name: "a /22 rewrites four entries",
            change: add("198.51.100.0/22"),
            v4: &[0xc63364, 0xc63365, 0xc63366, 0xc63367],
            v6: &[],
            long: false,
        },
        Case {
            name: "an IPv6 /48 goes to the long-prefix table of its /16",
            change: add("2001:db8:1::/48"),
            v4: &[],
            v6: &[0x2001],
            long: true,
        },
        Case {
            name: "a prefix inside one already in the set changes nothing",
            change: add("192.0.2.128/25"),
            v4: &[],
            v6: &[],
            long: false,
        },
        Case {
            name: "removing a prefix restores its entry",
            change: Change::SetDel {
                name: "block".into(),
                prefixes: vec!["192.0.2.0/24".into()],
            },
            v4: &[0xc00002],
            v6: &[],
            long: false,
        },
    ];
    for case in cases {
        let state = state_with(&["192.0.2.0/24"]);
        let (next, undo) = applied(&state, &case.change).expect(case.name);
        let mut x = Incremental::build(&state, &slots()).expect("compile");
        let delta = x.update(&next, &undo, &case.change).expect(case.name);
        assert_eq!(delta.v4_tbl24, case.v4, "{}", case.name);
        assert_eq!(delta.v6_buckets, case.v6, "{}", case.name);
        assert_eq!(!delta.prefix_buckets.is_empty(), case.long, "{}", case.name);
        assert!(!delta.rules, "{}", case.name);
        let want = Incremental::build(&next, &slots()).expect("compile");
        assert_same(case.name, &x, &want);
    }
}

#[test]
fn a_prefix_added_to_a_set_no_rule_names_changes_no_table() {
    let state = state_with(&["192.0.2.0/24"]);
    let change = Change::SetAdd {
        name: "unused".into(),
        prefixes: vec!["198.51.100.0/24".into()],
    };
    let (next, undo) = applied(&state, &change).expect("valid");
    let mut x = Incremental::build(&state, &slots()).expect("compile");
    assert!(
        x.update(&next, &undo, &change)
            .expect("incremental")
            .is_empty()
    );
}

#[test]
fn a_prefix_wider_than_a_slash_8_is_compiled_in_full_and_changes_nothing() {
    let state = state_with(&["192.0.2.0/24"]);
    let change = Change::SetAdd {
        name: "block".into(),
        prefixes: vec!["0.0.0.0/1".into()],
    };
    let (next, undo) = applied(&state, &change).expect("valid");
    let mut x = Incremental::build(&state, &slots()).expect("compile");
    assert_eq!(x.update(&next, &undo, &change), Err(Fallback::Shape));
    assert_same(
        "after a fallback",
        &x,
        &Incremental::build(&state, &slots()).unwrap(),
    );
}

#[test]
fn freed_classes_and_length_sets_are_reused() {
    let state = state_with(&["192.0.2.0/24"]);
    let mut x = Incremental::build(&state, &slots()).expect("compile");
    let rule = Change::RuleAdd {
        rules: vec![Rule {
            src: Some(AddrMatch::Prefix("198.51.100.7/32".parse().unwrap())),
            ..Rule::new(2, 2, crate::acl::Verdict::Allow)
        }],
    };
    let (with, undo) = applied(&state, &rule).expect("valid");
    let added = x.update(&with, &undo, &rule).expect("incremental");
    assert_eq!(added.new_classes.len(), 1, "{added:?}");
    let del = Change::RuleDel { ids: vec![2] };
    let (without, undo_del) = applied(&with, &del).expect("valid");
    let removed = x.update(&without, &undo_del, &del).expect("incremental");
    assert_eq!(removed.freed_classes, added.new_classes);
    let (classes, lensets) = (x.class_ids(), x.image().lensets.len());
    let again = x.update(&with, &undo, &rule).expect("incremental");
    assert_eq!(again.new_classes, added.new_classes, "the freed id again");
    assert_eq!((x.class_ids(), x.image().lensets.len()), (classes, lensets));
}

/// Rebuilds deferred (the controller's mode): an update that changes a rule
/// or an address class leaves the image walking the bitmaps, which decides
/// every packet as the reference classifier does; the rebuilt phased tables,
/// once installed, decide them the same, and a later update without a class
/// or rule change keeps them.
#[test]
fn deferred_phase_rebuilds_walk_exactly_until_phased_tables_deciding_the_same_are_installed() {
    let slots = slots();
    let (mut deferred, mut installed) = (0, 0);
    for seed in 0..6u64 {
        let mut rng = Rng::new(seed);
        let rules = 1 + rng.below(30) as usize;
        let mut state = rand_state(&mut rng, 3, 20, rules);
        let mut x = Incremental::build(&state, &slots).expect("compile");
        x.defer_phases(true);
        assert!(
            x.image().phases.is_some(),
            "seed {seed}: phased to begin with"
        );
        for step in 0..8 {
            let change = rand_change(&mut rng, &state);
            let Ok((next, undo)) = applied(&state, &change) else {
                continue;
            };
            let name = format!("seed {seed}, step {step}, {change:?}");
            let had = x.image().phases.is_some();
            match x.update(&next, &undo, &change) {
                Ok(delta) => {
                    if x.phases_pending() {
                        deferred += 1;
                        assert!(x.image().phases.is_none(), "{name}: walking");
                        assert_eq!(delta.phases, had, "{name}: a switch to the walk");
                    }
                }
                // A rule whose prefix spans too wide a range is compiled in
                // full (as without deferral), as is any other shape.
                Err(Fallback::Shape | Fallback::Spoiled) => {
                    x = Incremental::build(&next, &slots).expect("compile");
                    x.defer_phases(true);
                }
            }
            let decide = |x: &Incremental, rng: &mut Rng, what: &str| {
                for _ in 0..50 {
                    let pkt = rand_packet(rng, &next);
                    assert_eq!(
                        x.image().decide(1, &pkt),
                        classify(&next, "eth0", &pkt),
                        "{name}, {what}: {pkt:?}"
                    );
                }
            };
            decide(&x, &mut rng, "before the rebuild");
            // Every other step the rebuild lands before the next change.
            if step % 2 == 0
                && let Some(job) = x.phase_job()
            {
                let built = job.run(&|| false).expect("not stopped");
                let delta = x.install_phases(&job, built).expect("phased tables fit");
                assert!(delta.phases && !delta.rules, "{name}: {delta:?}");
                assert!(!x.phases_pending() && x.image().phases.is_some(), "{name}");
                installed += 1;
                decide(&x, &mut rng, "after the rebuild");
            }
            state = next;
        }
    }
    assert!(
        deferred > 10 && installed > 5,
        "deferred {deferred}, installed {installed}"
    );
}

#[test]
fn a_phase_rebuild_of_tables_changed_since_installs_nothing() {
    let state = state_with(&["192.0.2.0/24"]);
    let mut x = Incremental::build(&state, &slots()).expect("compile");
    x.defer_phases(true);
    let add = |id: u32, p: &str| Change::RuleAdd {
        rules: vec![Rule {
            dst: Some(AddrMatch::Prefix(p.parse().unwrap())),
            ..Rule::new(id, id, crate::acl::Verdict::Allow)
        }],
    };
    let first = add(2, "198.51.100.0/24");
    let (s1, undo) = applied(&state, &first).expect("valid");
    x.update(&s1, &undo, &first).expect("incremental");
    let stale = x.phase_job().expect("a rebuild is pending");
    let second = add(3, "203.0.113.0/24");
    let (s2, undo) = applied(&s1, &second).expect("valid");
    x.update(&s2, &undo, &second).expect("incremental");
    let built = stale.run(&|| false).expect("not stopped");
    assert!(built.is_some(), "the stale job built tables");
    assert_eq!(x.install_phases(&stale, built), None, "tables of before");
    assert!(x.phases_pending() && x.image().phases.is_none());
    let job = x.phase_job().expect("the current rebuild");
    assert_eq!(
        job.run(&|| true),
        Err(crate::acl::compile::phases::Stopped),
        "asked to stop, a rebuild ends"
    );
    let built = job.run(&|| false).expect("not stopped");
    assert!(x.install_phases(&job, built).is_some());
    assert!(x.image().phases.is_some());
}

/// The IPv6 trie blocks the first level reaches.
fn reached_blocks(img: &Image) -> Vec<u16> {
    let mut out = Vec::new();
    let mut stack: Vec<V6Bucket> = img.v6_buckets.clone();
    while let Some(e) = stack.pop() {
        if e.lenset == V6_CHILD {
            out.push(e.class);
            stack.extend(img.v6_blocks[e.class as usize].entries);
        }
    }
    out.sort_unstable();
    out
}

/// Prefixes of four lengths under 2001:db8::/32 split its /16, /24 and /32
/// into blocks one at a time as they are added, and merge them back as
/// they are removed; each delta names every block it changed, and freed
/// blocks are reused.
#[test]
fn a_region_splits_into_blocks_and_merges_back_incrementally() {
    let steps: [(&str, bool, usize); 7] = [
        ("2001:db8:100::/40", true, 0),
        ("2001:db8:8000::/33", true, 0),
        ("2001:db8:3:4::/64", true, 3),
        ("2001:db8:3:4::/64", false, 0),
        ("2001:db8:3:4::/64", true, 3),
        ("2001:db8:100::/40", false, 0),
        ("2001:db8:8000::/33", false, 0),
    ];
    let mut state = state_with(&["2001:db8:1::/48"]);
    let mut x = Incremental::build(&state, &slots()).expect("compile");
    assert!(reached_blocks(x.image()).is_empty(), "one length: no block");
    let mut most = 0;
    for (i, (prefix, add, blocks)) in steps.into_iter().enumerate() {
        let name = format!("step {i}: {} {prefix}", if add { "add" } else { "remove" });
        let prefixes = vec![prefix.to_string()];
        let change = if add {
            Change::SetAdd {
                name: "block".into(),
                prefixes,
            }
        } else {
            Change::SetDel {
                name: "block".into(),
                prefixes,
            }
        };
        let (next, undo) = applied(&state, &change).expect("valid");
        let before = x.image().v6_blocks.clone();
        let delta = x.update(&next, &undo, &change).expect(&name);
        let after = reached_blocks(x.image());
        assert_eq!(after.len(), blocks, "{name}");
        for b in &after {
            if before.get(*b as usize) != Some(&x.image().v6_blocks[*b as usize]) {
                assert!(
                    delta.v6_blocks.contains(&u32::from(*b)),
                    "{name}: block {b}"
                );
            }
        }
        most = most.max(x.image().v6_blocks.len());
        assert_same(
            &name,
            &x,
            &Incremental::build(&next, &slots()).expect("compile"),
        );
        state = next;
    }
    assert_eq!(most, 3, "the blocks freed at step 3 are reused at step 4");
}

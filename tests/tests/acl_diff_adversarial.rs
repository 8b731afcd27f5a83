//! Differential test of the ACL datapath on rule sets built to be hard for
//! the phased tables (`xdpgate_model::acl::random::adversarial_state`): each
//! is installed, packets aimed at its rules are run through the loaded XDP
//! program with BPF_PROG_TEST_RUN with the decision cache off, and every
//! verdict is compared with the reference classifier. Kept apart from
//! `acl_diff` so the kernel matrix (`cargo xtask vmtest`), whose 6.1 guest is
//! near its time limit, does not run it.
//!
//! `XDPGATE_DIFF_PACKETS` / 20 packets per installed image (default 5,000).
mod common;

use common::frame_of;
use xdpgate::datapath::{AclTables, Datapath, RcuWait};
use xdpgate_model::{
    acl::{
        Verdict,
        compile::{Image, compile},
        random::{ADVERSARIES, Adversary, Rng, adversarial_packet, adversarial_state, slots},
        reference::classify,
    },
    iface::Malformed,
};
use xdpgate_tests::{
    lab::{Netns, serial},
    packet::hex,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn packets_wanted() -> usize {
    std::env::var("XDPGATE_DIFF_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// Writes `image` into the idle generation and switches to it, as the
/// controller does (counter slot `i` for rule `i`): lets a test install an
/// image compiled with a smaller phased-table budget than the controller's.
fn install_image(dp: &mut Datapath, image: &Image) {
    let cfg = AclTables::acl_config(dp).expect("config");
    let epoch = cfg.next_epoch();
    let t = (epoch & 1) as usize;
    let counters: Vec<u32> = (0..image.rule_ids.len() as u32).collect();
    AclTables::write_acl_generation(dp, t, image, &counters).expect("write generation");
    let mut next = cfg;
    next.epoch = epoch;
    next.rules[t] = image.rule_ids.len() as u32;
    AclTables::set_acl_config(dp, next).expect("switch");
    RcuWait::rcu_wait(dp).expect("rcu wait");
}

/// Rule sets built to be hard for the phased tables (own address pairs and
/// port ranges, overlapping ports, alternating wildcards), with the decision
/// cache off so every packet is resolved by the phased tables: every verdict
/// agrees with the reference. The own-pairs set is installed with the remaps
/// folded into the steps, with its remaps, split into several rule groups,
/// and without phased tables (the bitmap walk).
#[test]
fn datapath_agrees_with_reference_on_adversarial_rule_sets() {
    let _g = serial();
    let ns = Netns::new("acladv").unwrap();
    let per_set = packets_wanted() / 20;
    let checked = ns.run(move || {
        let mut dp = Datapath::load().expect("load");
        dp.register(1, 1, Malformed::Drop).expect("register lo");
        dp.set_decision_cache(false).expect("cache off");
        let mut checked = 0usize;
        for (seed, kind) in ADVERSARIES.into_iter().enumerate() {
            let mut rng = Rng::new(seed as u64);
            let state = adversarial_state(&mut rng, kind, 300);
            let mut image = compile(&state, &slots()).expect("compile");
            // One image at a time (each holds the 64 MiB IPv4 table): the
            // phased tables (remaps folded into the steps where they fit),
            // then for the own-pairs set the same image within one cell
            // less, twice (one group with its remaps, then several groups),
            // then without phased tables.
            let steps = if kind == Adversary::OwnPairs { 4 } else { 1 };
            let rules = state.ordered_rules();
            let mut seen = Vec::new();
            for step in 0..steps {
                match step {
                    0 => {}
                    3 => image = image.with_phase_budget(0),
                    _ => {
                        let cells = image.stats().phases.expect("phased tables").1;
                        image = image.with_phase_budget(cells - 1);
                    }
                }
                let (shape, what) = match image.phases.as_ref() {
                    None => ("walk", "bitmap walk".to_string()),
                    Some(p) if p.groups.len() > 1 => {
                        ("groups", format!("{} groups", p.groups.len()))
                    }
                    Some(p) if p.folded => ("folded", "phased, remaps folded".to_string()),
                    Some(_) => ("remaps", "phased, with remaps".to_string()),
                };
                seen.push(shape);
                install_image(&mut dp, &image);
                for _ in 0..per_set {
                    let pkt = adversarial_packet(&mut rng, &rules);
                    let frame = frame_of(&pkt);
                    let want = classify(&state, "eth0", &pkt);
                    let want_action = match want.verdict {
                        Verdict::Allow => XDP_PASS,
                        Verdict::Deny => XDP_DROP,
                    };
                    let got = dp.test_run(&frame, 1).expect("test run");
                    assert_eq!(
                        got.action,
                        want_action,
                        "{kind:?} ({what}): packet {pkt:?}\nframe {}\nreference {want:?}",
                        hex(&frame),
                    );
                    checked += 1;
                }
            }
            if kind == Adversary::OwnPairs {
                assert_eq!(
                    seen,
                    ["folded", "remaps", "groups", "walk"],
                    "{kind:?}: every shape of the tables installed"
                );
            }
        }
        checked
    });
    assert_eq!(checked, per_set * (ADVERSARIES.len() + 3));
}

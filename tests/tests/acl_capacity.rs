//! The ACL tables' configurable capacities (`[acl]`) with real frames: a
//! datapath loaded with small tables (the long-prefix table's bucket count
//! read by the program at run time, fewer phased cells, or none) classifies
//! every frame as the reference classifier and a default datapath do; a
//! change over a configured capacity is refused naming the key while the
//! old rules keep enforcing; and a daemon restarted on its pins with another
//! `prefix_slots` is refused with the setting and the way out.
mod common;

use std::path::PathBuf;

use common::frame_of;
use xdpgate::{
    acl::{AclController, ApplyError},
    datapath::{Datapath, MapSizes},
};
use xdpgate_model::{
    acl::{
        AclError, AclState, Exceeded, RuleFile, Verdict,
        compile::{Capacities, compile_for},
        random::{Rng, rand_packet, rand_state, slots},
        reference::{PacketInfo, classify},
    },
    iface::Malformed,
};
use xdpgate_tests::{
    lab::{Lab, Netns, serial},
    packet::hex,
    xdpgate::{Daemon, StateDirs, xdp_on},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// A state from the TOML of a rule file.
fn state_of(toml_text: &str) -> AclState {
    let file: RuleFile = toml::from_str(toml_text).expect("rule file");
    AclState::from_file(&file).expect("valid state")
}

/// `n` IPv4 /32s, /27s, IPv6 /128s and /60s (all longer than /24 or /16, so
/// all in the long-prefix table; none adjacent), as TOML strings.
fn long_prefixes(n: u32) -> Vec<String> {
    (0..n)
        .map(|i| match i % 4 {
            0 => format!("\"10.200.{}.{}/32\"", i / 100 % 250, i % 100 * 2 + 1),
            1 => format!("\"198.51.{}.{}/27\"", i / 8 % 250, i % 8 * 32),
            2 => format!("\"fd00:200:{:x}::{:x}/128\"", i / 1000, i % 1000 * 2 + 1),
            _ => format!("\"2001:db8:{:x}:{:x}0::/60\"", i / 4000, i % 4000),
        })
        .collect()
}

/// A rule set whose long prefixes fill much of a small table: a deny of
/// `n` long prefixes for UDP, an allow of TCP to port 443 from the same
/// set, and rules of their own prefixes and ports.
fn dense_state(n: u32) -> AclState {
    state_of(&format!(
        r#"
        [sets]
        hosts = [{}]

        [[rule]]
        id = 1
        priority = 1
        src = "@hosts"
        proto = "udp"
        action = "deny"

        [[rule]]
        id = 2
        priority = 2
        src = "@hosts"
        proto = "tcp"
        dport = "443"
        action = "allow"

        [[rule]]
        id = 3
        priority = 3
        dst = "2001:db8:0:10::/60"
        action = "deny"

        [[rule]]
        id = 4
        priority = 4
        src = "10.200.0.0/16"
        proto = "tcp"
        sport = "1000-2000"
        action = "deny"
        "#,
        long_prefixes(n).join(", ")
    ))
}

/// Runs `pkt` through `dp` (the namespace's lo plays "eth0", slot 1) and
/// returns the XDP action.
fn action(dp: &mut Datapath, pkt: &PacketInfo) -> u32 {
    dp.test_run(&frame_of(pkt), 1).expect("test run").action
}

fn verdict_action(v: Verdict) -> u32 {
    match v {
        Verdict::Allow => XDP_PASS,
        Verdict::Deny => XDP_DROP,
    }
}

#[test]
fn small_capacities_classify_real_frames_like_the_reference_and_the_default() {
    struct Case {
        name: &'static str,
        caps: Capacities,
        /// Long prefixes of the dense rule set (with the gaps between them,
        /// which are long prefixes of another class, about 85% of the table).
        dense: u32,
        /// Prefixes per set of the random rule sets (a small table holds
        /// fewer: each prefix brings markers and the gaps around it).
        set_size: usize,
    }
    let cases = [
        Case {
            name: "4,096 prefix slots and 65,536 phase cells",
            caps: Capacities {
                prefix_bucket_bits: 10,
                phase_cells: 65_536,
                ..Capacities::default()
            },
            dense: 1500,
            set_size: 32,
        },
        Case {
            name: "2,048 prefix slots, walk only (no phase cells), small walk tables",
            caps: Capacities {
                prefix_bucket_bits: 9,
                phase_cells: 0,
                walk_addr_classes: 512,
                walk_port_classes: 256,
                // Fewer IPv6 trie blocks than the random states' tries take:
                // the rest keep the length search.
                v6_blocks: 2,
            },
            dense: 800,
            set_size: 8,
        },
    ];
    let _g = serial();
    let ns = Netns::new("aclcap").unwrap();
    let checked = ns.run(move || {
        let mut default = Datapath::load().expect("load the default datapath");
        default
            .register(1, 1, Malformed::Drop)
            .expect("register lo");
        let mut checked = 0usize;
        for case in cases {
            let mut small = Datapath::load_sized(MapSizes {
                acl: case.caps,
                ..MapSizes::default()
            })
            .unwrap_or_else(|e| panic!("{}: load: {e}", case.name));
            assert_eq!(small.acl_capacities(), case.caps, "{}", case.name);
            small.register(1, 1, Malformed::Drop).expect("register lo");
            let mut ctl_small = AclController::new(slots()).with_capacities(case.caps);
            let mut ctl_default = AclController::new(slots());
            let mut states = vec![("dense".to_owned(), dense_state(case.dense))];
            for seed in 1..=6u64 {
                let mut rng = Rng::new(seed);
                let rules = 1 + rng.below(40) as usize;
                states.push((
                    format!("random seed {seed}"),
                    rand_state(&mut rng, 4, case.set_size, rules),
                ));
            }
            let mut cut = 0;
            for (what, state) in states {
                let applied = ctl_small.install(&mut small, state.clone());
                applied.unwrap_or_else(|e| panic!("{}: {what}: install: {e}", case.name));
                ctl_default
                    .install(&mut default, state.clone())
                    .expect("install on the default datapath");
                let image = compile_for(&state, &slots(), &case.caps).expect("compiles");
                let full = compile_for(&state, &slots(), &Capacities::default()).expect("compiles");
                assert!(image.v6_blocks.len() <= case.caps.v6_blocks as usize);
                cut += usize::from(image.v6_blocks.len() < full.v6_blocks.len());
                assert_eq!(
                    image.phases.is_some(),
                    case.caps.phase_cells > 0,
                    "{}: {what}: phased only when cells are configured",
                    case.name
                );
                let mut rng = Rng::new(0x5eed ^ checked as u64);
                for _ in 0..400 {
                    let pkt = rand_packet(&mut rng, &state);
                    let want = verdict_action(classify(&state, "eth0", &pkt).verdict);
                    let got = action(&mut small, &pkt);
                    assert_eq!(
                        got,
                        want,
                        "{}: {what}: packet {pkt:?}\nframe {}",
                        case.name,
                        hex(&frame_of(&pkt))
                    );
                    assert_eq!(
                        got,
                        action(&mut default, &pkt),
                        "{}: {what}: the default datapath disagrees on {pkt:?}",
                        case.name
                    );
                    checked += 1;
                }
            }
            assert_eq!(
                cut > 0,
                case.caps.v6_blocks < Capacities::default().v6_blocks,
                "{}: {cut} states ran out of IPv6 trie blocks",
                case.name
            );
        }
        checked
    });
    assert_eq!(checked, 2 * 7 * 400);
}

#[test]
fn an_over_capacity_change_is_refused_naming_the_key_and_the_old_rules_keep_enforcing() {
    let _g = serial();
    let ns = Netns::new("aclcapful").unwrap();
    ns.run(|| {
        let caps = Capacities {
            prefix_bucket_bits: 8,
            ..Capacities::default()
        };
        let mut dp = Datapath::load_sized(MapSizes {
            acl: caps,
            ..MapSizes::default()
        })
        .expect("load with 1,024 prefix slots");
        dp.register(1, 1, Malformed::Drop).expect("register lo");
        let mut ctl = AclController::new(slots()).with_capacities(caps);
        let udp = |src: &str| PacketInfo {
            src: src.parse().unwrap(),
            dst: "10.200.99.1".parse().unwrap(),
            proto: 17,
            later_fragment: false,
            ports: Some((5000, 53)),
            icmp: None,
        };
        // The old rules deny one host; the new ones would deny 1,000 more.
        let old = state_of(
            r#"
            [[rule]]
            id = 1
            priority = 1
            src = "10.200.250.7/32"
            proto = "udp"
            action = "deny"
            "#,
        );
        ctl.install(&mut dp, old.clone())
            .expect("install the old rules");
        let (denied, other) = (udp("10.200.250.7"), udp("10.200.0.1"));
        let before = (action(&mut dp, &denied), action(&mut dp, &other));
        assert_eq!(before, (XDP_DROP, XDP_PASS), "the old rules enforce");

        // Under the new rules the old host would pass and the other (the
        // set's first host) be dropped.
        let next = dense_state(1000);
        let err = ctl
            .install(&mut dp, next)
            .expect_err("1,000 long prefixes do not fit 1,024 slots");
        let ApplyError::Invalid(errs) = &err else {
            panic!("not a refusal: {err}");
        };
        assert!(
            errs.iter().any(|e| matches!(
                e,
                AclError::Configured(Exceeded {
                    key: "[acl] prefix_slots",
                    setting: 1024,
                    max: 969,
                    ..
                })
            )),
            "{errs:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("long-prefix table full")
                && msg.contains("[acl] prefix_slots = 1024 holds 969"),
            "{msg}"
        );
        assert_eq!(ctl.state(), &old, "the controller keeps the old state");
        assert_eq!(
            (action(&mut dp, &denied), action(&mut dp, &other)),
            before,
            "the datapath keeps enforcing the old rules: all or nothing"
        );
    });
}

/// A file removed on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_restart_with_another_prefix_slots_is_refused_naming_acl_prefix_slots() {
    let _g = serial();
    let lab = Lab::new("aclcapsz", 97).expect("lab");
    let iface = lab.a_end.ifname.clone();
    let cfg =
        TempFile(std::env::temp_dir().join(format!("xdpgate-aclcap-{}.toml", std::process::id())));
    let config = |slots: u32| {
        format!(
            "[daemon]\nshutdown_grace_seconds = 3\n\n[metrics]\nlisten = []\n\n\
             [[interface]]\nname = \"{iface}\"\nmode = \"skb\"\n\n\
             [acl]\nprefix_slots = {slots}\nphase_cells = 65536\n\n\
             [[rule]]\nid = 1\npriority = 1\nsrc = \"10.200.97.2/32\"\nproto = \"udp\"\naction = \"deny\"\n"
        )
    };
    std::fs::write(&cfg.0, config(4096)).unwrap();
    let args = ["--config".as_ref(), cfg.0.as_os_str()];
    let d = Daemon::start_in(&lab.a, StateDirs::unique("acs"), &[], "", &args)
        .expect("start with 4,096 prefix slots");
    let (_, dirs) = d.stop_keeping_state(libc::SIGTERM);
    let maps = dirs.bpffs.join(xdpgate::paths::maps_dir(
        xdpgate_common::pins::SCHEMA_VERSION,
    ));
    let capacity = |name: &str| {
        let out = std::process::Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(maps.join(name))
            .output()
            .expect("bpftool");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
        v["max_entries"].as_u64()
    };
    for g in 0..2 {
        assert_eq!(
            capacity(&format!("XG_PREFIXES_{g}")),
            Some(1024),
            "4,096 slots are 1,024 buckets"
        );
        assert_eq!(capacity(&format!("XG_PHASE_CELLS_{g}")), Some(16_384));
    }

    std::fs::write(&cfg.0, config(8192)).unwrap();
    dirs.run_refused(
        &lab.a,
        &cfg.0,
        &[
            "XG_PREFIXES_",
            "was made with 1024 entries",
            "asks for 2048",
            "Set [acl] prefix_slots back to 4096",
            "xdpgate down",
        ],
    );
    assert!(
        xdp_on(&lab.a, &iface),
        "the running datapath still enforces"
    );
    assert_eq!(
        capacity("XG_PREFIXES_0"),
        Some(1024),
        "its table is the same"
    );

    std::fs::write(&cfg.0, config(4096)).unwrap();
    let d = Daemon::start_in(&lab.a, dirs, &[], "", &args).expect("the old size adopts the pins");
    assert!(d.log().contains("adopting the datapath"), "{}", d.log());
}

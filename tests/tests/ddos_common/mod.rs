//! Helpers shared by the rate-limit and SYN-cookie fixtures (`limit.rs`,
//! `syncookie.rs`): a freshly loaded datapath in a fresh namespace with lo
//! registered as interface slot 1, rules installed through the real ACL
//! controller, and readers of the per-rule limit counters and the drop
//! reasons.
#![allow(dead_code, reason = "each test binary uses its own part")]

use xdpgate::{
    acl::AclController,
    datapath::{Datapath, stats},
};
use xdpgate_common::{DropReason, limit::rule_stat, maps};
use xdpgate_model::{
    acl::{AclState, RuleFile},
    iface::Malformed,
};
use xdpgate_tests::lab::{Netns, serial};

/// `XDP_DROP`.
pub(crate) const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
pub(crate) const XDP_PASS: u32 = 2;
/// `XDP_TX`.
pub(crate) const XDP_TX: u32 = 3;

/// A loaded datapath with lo (ifindex 1) as interface slot 1 ("eth0" of the
/// rule files) and the rules of one rule file installed.
pub(crate) struct Gate {
    pub(crate) dp: Datapath,
    pub(crate) ctl: AclController,
}

impl Gate {
    /// Loads the datapath and installs `rules` (a rule file in TOML). Must be
    /// called inside the test's namespace.
    pub(crate) fn new(rules: &str) -> Gate {
        Gate::with(Datapath::load().expect("load the XDP program"), rules)
    }

    /// Like [`Gate::new`] on a datapath loaded by the caller.
    pub(crate) fn with(mut dp: Datapath, rules: &str) -> Gate {
        assert_eq!(
            dp.ddos_unavailable(),
            None,
            "the kernel refused the DDoS program (limits and SYN cookies)"
        );
        dp.register(1, 1, Malformed::Drop).expect("register lo");
        let file: RuleFile = toml::from_str(rules).expect("rule file");
        let state = AclState::from_file(&file).expect("valid rules");
        let mut ctl = AclController::new(xdpgate_model::acl::random::slots());
        ctl.install(&mut dp, state).expect("install the rules");
        Gate { dp, ctl }
    }

    /// The verdict of one run of `frame`.
    pub(crate) fn run(&mut self, frame: &[u8]) -> u32 {
        self.dp.test_run(frame, 1).expect("test run").action
    }

    /// Runs `frame` `n` times, one test run each; returns how many passed,
    /// and panics on a verdict other than `XDP_PASS` or `XDP_DROP`.
    pub(crate) fn passed(&mut self, frame: &[u8], n: usize) -> usize {
        let mut passed = 0;
        for _ in 0..n {
            match self.run(frame) {
                XDP_PASS => passed += 1,
                XDP_DROP => {}
                other => panic!("verdict {other}, expected XDP_PASS or XDP_DROP"),
            }
        }
        passed
    }

    /// The counter slot of rule `id`.
    pub(crate) fn slot(&self, id: u32) -> u32 {
        self.dp
            .live_rule_slots()
            .expect("live rule slots")
            .into_iter()
            .find(|&(i, _)| i == id)
            .unwrap_or_else(|| panic!("rule {id} not installed"))
            .1
    }

    /// Packets of rule `id`'s `kind` counter in `XG_LIMIT_STATS`
    /// (a `rule_stat` kind), summed over CPUs.
    pub(crate) fn rule_stat(&self, id: u32, kind: u32) -> u64 {
        self.dp
            .rule_limit_stats(self.slot(id))
            .expect("read XG_LIMIT_STATS")[kind as usize]
            .packets
    }

    /// Every `rule_stat` counter of rule `id`, by name (for messages and
    /// exact comparisons).
    pub(crate) fn rule_stats(&self, id: u32) -> Vec<(&'static str, u64)> {
        (0..rule_stat::ENTRIES)
            .map(|k| (rule_stat::NAMES[k as usize], self.rule_stat(id, k)))
            .collect()
    }

    /// Packets rule `id` matched (its own counter, `XG_RULE_STATS`).
    pub(crate) fn rule_packets(&self, id: u32) -> u64 {
        self.dp.rule_counter(self.slot(id)).expect("rule counter").0
    }

    /// Packets counted on lo under drop reason `reason` (`XG_REASONS`).
    pub(crate) fn reason(&self, reason: DropReason) -> u64 {
        let report = stats::collect(
            self.dp.map(maps::IFACES).expect("IFACES map"),
            self.dp.map(maps::STATS).expect("STATS map"),
            self.dp.map(maps::REASONS).expect("REASONS map"),
        )
        .expect("read counters");
        report
            .malformed
            .iter()
            .filter(|r| r.ifindex == 1 && r.reason == reason.name())
            .map(|r| r.packets)
            .sum()
    }
}

/// Runs `f` on a thread inside a fresh namespace (serialized with the other
/// datapath tests), pinned to the CPU it starts on: the decision cache is
/// per CPU, so every run after a frame's first is a cache hit.
pub(crate) fn in_netns<T: Send>(tag: &str, f: impl FnOnce(&Netns) -> T + Send) -> T {
    let _g = serial();
    let ns = Netns::new(tag).expect("create namespace");
    ns.run(|| {
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = unsafe { libc::sched_getcpu() };
        assert!(cpu >= 0, "sched_getcpu failed");
        xdpgate_tests::bpf::pin_to_cpu(cpu as usize).expect("sched_setaffinity");
        f(&ns)
    })
}

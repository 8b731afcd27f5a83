//! Expectations and the runner: what the datapath must do with a frame, and
//! a freshly loaded datapath in a fresh namespace that runs the cases and
//! checks verdicts, output frames and every counter.
use std::collections::BTreeMap;

use xdpgate::datapath::{Datapath, DatapathError, stats};
use xdpgate_common::{Action, DropReason, Family, maps};
use xdpgate_model::iface::Malformed;
use xdpgate_tests::{
    lab::{Netns, serial},
    packet::hex,
};

use Want::{Bad, Pass, Refused};

use crate::{XDP_DROP, XDP_PASS};

/// What the datapath must do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Want {
    /// Well-formed: `XDP_PASS`, counted under the family and `pass`.
    Pass(Family),
    /// Malformed: counted under the family and the reason; `XDP_DROP` and
    /// `drop`, or `XDP_PASS` and `pass` when the interface passes malformed
    /// frames.
    Bad(Family, DropReason),
    /// `BPF_PROG_TEST_RUN` refuses the frame with `EINVAL` before the program
    /// runs, so nothing is counted (frames shorter than `ETH_HLEN`, see
    /// [`short_frame`](crate::truncation::short_frame)).
    Refused,
}

/// One fixture: a name for failure messages, a frame and what must happen.
#[derive(Clone, Debug)]
pub(crate) struct Case {
    pub(crate) name: String,
    pub(crate) frame: Vec<u8>,
    pub(crate) want: Want,
}

pub(crate) fn case(name: impl Into<String>, frame: Vec<u8>, want: Want) -> Case {
    Case {
        name: name.into(),
        frame,
        want,
    }
}

/// Non-zero counters of the registered interface, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// `(family, action)` -> `(packets, bytes)`.
    stats: BTreeMap<(&'static str, &'static str), (u64, u64)>,
    /// Drop reason -> `(packets, bytes)`.
    reasons: BTreeMap<&'static str, (u64, u64)>,
}

impl Counters {
    /// Reads the counters with `stats::collect`; panics if anything was
    /// counted on an interface other than lo (ifindex 1).
    fn read(dp: &Datapath) -> Self {
        let report = stats::collect(
            dp.map(maps::IFACES).expect("IFACES map"),
            dp.map(maps::STATS).expect("STATS map"),
            dp.map(maps::REASONS).expect("REASONS map"),
        )
        .expect("read counters");
        let mut c = Counters::default();
        for r in report.counters {
            if r.packets != 0 || r.bytes != 0 {
                assert_eq!(r.ifindex, 1, "counted outside the registered lo: {r:?}");
                c.stats.insert((r.family, r.action), (r.packets, r.bytes));
            }
        }
        for r in report.malformed {
            if r.packets != 0 || r.bytes != 0 {
                assert_eq!(r.ifindex, 1, "counted outside the registered lo: {r:?}");
                c.reasons.insert(r.reason, (r.packets, r.bytes));
            }
        }
        c
    }

    /// `self - before`, keeping the non-zero differences.
    fn since(&self, before: &Counters) -> Counters {
        fn diff<K: Ord + Copy>(
            a: &BTreeMap<K, (u64, u64)>,
            b: &BTreeMap<K, (u64, u64)>,
        ) -> BTreeMap<K, (u64, u64)> {
            a.iter()
                .filter_map(|(k, &(p, by))| {
                    let (p0, b0) = b.get(k).copied().unwrap_or((0, 0));
                    let d = (p - p0, by - b0);
                    (d != (0, 0)).then_some((*k, d))
                })
                .collect()
        }
        Counters {
            stats: diff(&self.stats, &before.stats),
            reasons: diff(&self.reasons, &before.reasons),
        }
    }

    /// What `repeat` runs of a `len`-byte frame must add under `policy`.
    fn expected(want: Want, policy: Malformed, len: usize, repeat: u32) -> Counters {
        let n = u64::from(repeat);
        let add = (n, n * len as u64);
        let mut c = Counters::default();
        match want {
            Pass(f) => {
                c.stats.insert((f.name(), Action::Pass.name()), add);
            }
            Bad(f, r) => {
                let action = match policy {
                    Malformed::Drop => Action::Drop,
                    Malformed::Pass => Action::Pass,
                };
                c.stats.insert((f.name(), action.name()), add);
                c.reasons.insert(r.name(), add);
            }
            Refused => {}
        }
        c
    }
}

/// The OS error number inside a datapath error, if any.
pub(crate) fn errno(e: &DatapathError) -> Option<i32> {
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.raw_os_error();
        }
        src = s.source();
    }
    None
}

/// A freshly loaded datapath with lo registered, running cases and keeping
/// the totals every counter must reach.
pub(crate) struct Runner {
    dp: Datapath,
    policy: Malformed,
    failures: Vec<String>,
    cases: usize,
    /// Expected totals: program runs, bytes, and packets per reason.
    runs: u64,
    bytes: u64,
    reasons: BTreeMap<&'static str, u64>,
}

impl Runner {
    /// Must be called inside the test namespace.
    fn new(policy: Malformed) -> Self {
        let mut dp = Datapath::load().expect("load the XDP program");
        dp.register(1, 1, policy).expect("register lo");
        Runner {
            dp,
            policy,
            failures: Vec::new(),
            cases: 0,
            runs: 0,
            bytes: 0,
            reasons: BTreeMap::new(),
        }
    }

    pub(crate) fn run_all(&mut self, cases: &[Case]) {
        for c in cases {
            self.run(c, 1);
        }
    }

    /// Runs `case` `repeat` times in one `BPF_PROG_TEST_RUN` and records what
    /// differs from its expectation.
    pub(crate) fn run(&mut self, case: &Case, repeat: u32) {
        self.cases += 1;
        let len = case.frame.len();
        let before = Counters::read(&self.dp);
        let result = self.dp.test_run(&case.frame, repeat);
        let delta = Counters::read(&self.dp).since(&before);
        let mut problems = Vec::new();
        let action = match (case.want, self.policy) {
            (Pass(_), _) | (Bad(..), Malformed::Pass) => XDP_PASS,
            (Bad(..), Malformed::Drop) | (Refused, _) => XDP_DROP,
        };
        match (&result, case.want) {
            (Err(e), Refused) => {
                if errno(e) != Some(libc::EINVAL) {
                    problems.push(format!("refused with {e:?}, expected EINVAL"));
                }
            }
            (Ok(out), Refused) => problems.push(format!(
                "expected the kernel to refuse the frame, but the program ran: action {}",
                out.action
            )),
            (Err(e), _) => problems.push(format!("test run failed: {e}")),
            (Ok(out), _) => {
                if out.action != action {
                    problems.push(format!("action {}, expected {action}", out.action));
                }
                if out.frame != case.frame {
                    problems.push(format!("frame rewritten to {}", hex(&out.frame)));
                }
            }
        }
        let want = Counters::expected(case.want, self.policy, len, repeat);
        if delta != want {
            problems.push(format!("counters moved by {delta:?}, expected {want:?}"));
        }
        if !problems.is_empty() {
            self.failures.push(format!(
                "{} (want {:?}, policy {:?}): {}\n    frame ({len} bytes): {}",
                case.name,
                case.want,
                self.policy,
                problems.join("; "),
                hex(&case.frame)
            ));
        }
        if case.want != Refused {
            self.runs += u64::from(repeat);
            self.bytes += u64::from(repeat) * len as u64;
        }
        if let Bad(_, r) = case.want {
            *self.reasons.entry(r.name()).or_default() += u64::from(repeat);
        }
    }

    /// Checks the totals (packets over all families and actions = runs, bytes
    /// = bytes run, each reason = frames expected with it) and fails the test
    /// with every problem found.
    fn finish(mut self) -> usize {
        let c = Counters::read(&self.dp);
        let (packets, bytes) = c
            .stats
            .values()
            .fold((0, 0), |(p, b), &(p1, b1)| (p + p1, b + b1));
        if (packets, bytes) != (self.runs, self.bytes) {
            self.failures.push(format!(
                "totals: {packets} packets / {bytes} bytes counted, {} / {} run",
                self.runs, self.bytes
            ));
        }
        for r in DropReason::ALL {
            let got = c.reasons.get(r.name()).map_or(0, |v| v.0);
            let want = self.reasons.get(r.name()).copied().unwrap_or(0);
            if got != want {
                self.failures.push(format!(
                    "reason {}: {got} counted, {want} expected",
                    r.name()
                ));
            }
        }
        assert!(
            self.failures.is_empty(),
            "{} problem(s) in {} cases:\n{}",
            self.failures.len(),
            self.cases,
            self.failures.join("\n")
        );
        self.cases
    }
}

/// Runs `f` with a fresh datapath in a fresh namespace; returns the number
/// of cases run.
pub(crate) fn with_runner(policy: Malformed, f: impl FnOnce(&mut Runner) + Send) -> usize {
    let _g = serial();
    let ns = Netns::new("parse").expect("create namespace");
    ns.run(move || {
        let mut r = Runner::new(policy);
        f(&mut r);
        r.finish()
    })
}

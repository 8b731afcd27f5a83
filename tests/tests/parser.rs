//! Parser fixtures: hand-built frames run through the XDP program with
//! `BPF_PROG_TEST_RUN`, checking for every frame the verdict, that the frame
//! comes out unchanged, and that exactly the expected counters moved.
//!
//! The semantics under test are the doc comments of `xdp-prog/src/parse.rs`,
//! `xdp-prog/src/main.rs` and `common/src/lib.rs` (`DropReason`, `Family`):
//! a malformed frame is counted under its family and drop reason and dropped
//! unless its interface passes malformed frames; a well-formed frame passes;
//! every frame is counted by family and action.
//!
//! `BPF_PROG_TEST_RUN` gives the program the loopback device of the calling
//! thread's network namespace as ingress interface. Every test therefore runs
//! in a fresh namespace (never the host's), where `lo` has ifindex 1, and
//! registers it as counter slot 1 of a freshly loaded datapath, so every
//! counter starts at zero.
use std::collections::BTreeMap;

use xdpgate::{
    datapath::{Datapath, DatapathError, Malformed},
    stats,
};
use xdpgate_common::{Action, DropReason, Family, maps};
use xdpgate_tests::{
    lab::{Netns, serial},
    packet::{Ethernet, Ext, Ipv4, Ipv6, Transport, checksum, ethertype, hex, pad, proto},
};

use DropReason::*;
use Family::{Ipv4 as V4, Ipv6 as V6, Other};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const A4: [u8; 4] = [192, 0, 2, 1];
const B4: [u8; 4] = [198, 51, 100, 2];
const A6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const B6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const PAYLOAD: &[u8] = b"xdpgate parser fixture";

// ---------------------------------------------------------------------------
// Expectations and the runner.
// ---------------------------------------------------------------------------

/// What the datapath must do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// Well-formed: `XDP_PASS`, counted under the family and `pass`.
    Pass(Family),
    /// Malformed: counted under the family and the reason; `XDP_DROP` and
    /// `drop`, or `XDP_PASS` and `pass` when the interface passes malformed
    /// frames.
    Bad(Family, DropReason),
    /// `BPF_PROG_TEST_RUN` refuses the frame with `EINVAL` before the program
    /// runs, so nothing is counted (frames shorter than `ETH_HLEN`, see
    /// [`short_frame`]).
    Refused,
}

use Want::{Bad, Pass, Refused};

/// One fixture: a name for failure messages, a frame and what must happen.
#[derive(Clone, Debug)]
struct Case {
    name: String,
    frame: Vec<u8>,
    want: Want,
}

fn case(name: impl Into<String>, frame: Vec<u8>, want: Want) -> Case {
    Case {
        name: name.into(),
        frame,
        want,
    }
}

/// Non-zero counters of the registered interface, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Counters {
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
fn errno(e: &DatapathError) -> Option<i32> {
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
struct Runner {
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

    fn run_all(&mut self, cases: &[Case]) {
        for c in cases {
            self.run(c, 1);
        }
    }

    /// Runs `case` `repeat` times in one `BPF_PROG_TEST_RUN` and records what
    /// differs from its expectation.
    fn run(&mut self, case: &Case, repeat: u32) {
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
fn with_runner(policy: Malformed, f: impl FnOnce(&mut Runner) + Send) -> usize {
    let _g = serial();
    let ns = Netns::new("parse").expect("create namespace");
    ns.run(move || {
        let mut r = Runner::new(policy);
        f(&mut r);
        r.finish()
    })
}

// ---------------------------------------------------------------------------
// Frame helpers.
// ---------------------------------------------------------------------------

/// VLAN taggings applied to both families: name and `(TPID, TCI)` outermost first.
const TAGGINGS: &[(&str, &[(u16, u16)])] = &[
    ("802.1Q", &[(0x8100, 100)]),
    ("single 802.1ad", &[(0x88a8, 100)]),
    ("QinQ 88a8/8100", &[(0x88a8, 10), (0x8100, 20)]),
    ("double 8100/8100", &[(0x8100, 10), (0x8100, 20)]),
    ("88a8/88a8", &[(0x88a8, 10), (0x88a8, 20)]),
];

fn tagged(tags: &[(u16, u16)], ether_type: u16) -> Ethernet {
    tags.iter()
        .fold(Ethernet::new(ether_type), |e, &(tpid, tci)| {
            e.tag(tpid, tci)
        })
}

fn ip4(l4: &Transport) -> Ipv4 {
    Ipv4::new(A4, B4, l4.proto())
}

fn ip6(l4: &Transport) -> Ipv6 {
    Ipv6::new(A6, B6, l4.proto())
}

fn frame4(ip: &Ipv4, l4: &Transport) -> Vec<u8> {
    Ethernet::new(ethertype::IPV4).build(&ip.build(&l4.bytes()))
}

fn frame6(ip: &Ipv6, l4: &Transport) -> Vec<u8> {
    Ethernet::new(ethertype::IPV6).build(&ip.build(&l4.bytes()))
}

fn tcp() -> Transport {
    Transport::tcp(40000, 443).payload(PAYLOAD)
}

fn udp() -> Transport {
    Transport::udp(5353, 53).payload(PAYLOAD)
}

/// The L4 protocols of each family, each with a payload.
fn transports(family: Family) -> Vec<(&'static str, Transport)> {
    let icmp = match family {
        V4 => ("icmp echo", Transport::icmp(8, 0).payload(PAYLOAD)),
        _ => ("icmpv6 echo", Transport::icmpv6(128, 0).payload(PAYLOAD)),
    };
    vec![
        ("tcp", tcp()),
        ("udp", udp()),
        ("sctp", Transport::sctp(2905, 2905).payload(PAYLOAD)),
        icmp,
    ]
}

/// The first `n` bytes of `l4` (header and payload), still announced as its protocol.
fn cut(l4: &Transport, n: usize) -> Transport {
    Transport::raw(l4.proto(), &l4.bytes()[..n])
}

/// Bytes of L4 header the parser needs for `proto` in `family` (0: it reads none).
/// From `DropReason::TruncatedL4`: TCP 20, UDP 8, SCTP 12, ICMP/ICMPv6 4.
fn l4_need(family: Family, proto: u8) -> usize {
    match (family, proto) {
        (_, proto::TCP) => 20,
        (_, proto::UDP) => 8,
        (_, proto::SCTP) => 12,
        (V4, proto::ICMP) | (V6, proto::ICMPV6) => 4,
        _ => 0,
    }
}

/// An IPv6 frame whose IP packet is cut after `keep` bytes of the payload
/// (extension headers included), with a payload length saying exactly that.
fn frame6_cut(ip: &Ipv6, l4: &Transport, keep: usize) -> Vec<u8> {
    let mut p = ip.clone().payload_len(keep as u16).build(&l4.bytes());
    p.truncate(Ipv6::HEADER_LEN + keep);
    Ethernet::new(ethertype::IPV6).build(&p)
}

/// `n` extension headers cycling through every kind (fragment headers are
/// atomic: offset 0, no M flag).
fn ext_chain(n: usize) -> Vec<Ext> {
    let kinds = [
        Ext::hop_by_hop(),
        Ext::dest_opts(),
        Ext::routing(),
        Ext::fragment(0, false),
        Ext::ah(),
    ];
    (0..n).map(|i| kinds[i % kinds.len()].clone()).collect()
}

fn with_exts(mut ip: Ipv6, exts: Vec<Ext>) -> Ipv6 {
    ip.exts = exts;
    ip
}

/// The single extension headers, by name.
fn single_exts() -> Vec<(&'static str, Ext)> {
    vec![
        ("hop-by-hop", Ext::hop_by_hop()),
        (
            "hop-by-hop router alert",
            Ext::HopByHop(vec![5, 2, 0, 0]), // RFC 2711, MLD
        ),
        ("routing type 2", Ext::routing()),
        ("destination options", Ext::dest_opts()),
        (
            "24-byte destination options",
            Ext::DestOpts([vec![0x1e, 20], vec![0; 20]].concat()),
        ),
        ("ah (24 bytes, length field 4)", Ext::ah()),
        (
            "ah without ICV (16 bytes, length field 2)",
            Ext::Ah {
                spi: 7,
                seq: 9,
                icv: vec![],
            },
        ),
        ("atomic fragment", Ext::fragment(0, false)),
    ]
}

// ---------------------------------------------------------------------------
// Fixtures.
// ---------------------------------------------------------------------------

/// Well-formed frames: every one must pass.
fn well_formed() -> Vec<Case> {
    let mut v = Vec::new();

    // Plain L4 of both families, and exactly the header the parser needs.
    for (family, et) in [(V4, ethertype::IPV4), (V6, ethertype::IPV6)] {
        for (name, l4) in transports(family) {
            let build = |l4: &Transport| match family {
                V4 => frame4(&ip4(l4), l4),
                _ => frame6(&ip6(l4), l4),
            };
            v.push(case(
                format!("{} {name}", family.name()),
                build(&l4),
                Pass(family),
            ));
            let exact = cut(&l4, l4_need(family, l4.proto()));
            v.push(case(
                format!(
                    "{} {name}, exactly the L4 bytes the parser reads",
                    family.name()
                ),
                build(&exact),
                Pass(family),
            ));
            // One and two VLAN tags of every kind.
            for (tname, tags) in TAGGINGS {
                let ip = match family {
                    V4 => ip4(&l4).build(&l4.bytes()),
                    _ => ip6(&l4).build(&l4.bytes()),
                };
                v.push(case(
                    format!("{tname} {} {name}", family.name()),
                    tagged(tags, et).build(&ip),
                    Pass(family),
                ));
            }
        }
    }

    // Non-IP frames.
    let arp = [
        0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 192, 0, 2, 2,
    ];
    let lldp = [
        2, 7, 4, 2, 0, 0, 0, 0, 1, 4, 3, 3, 101, 116, 104, 6, 2, 0, 120, 0, 0,
    ];
    v.push(case(
        "arp",
        Ethernet::new(ethertype::ARP).build(&arp),
        Pass(Other),
    ));
    v.push(case(
        "lldp",
        Ethernet::new(ethertype::LLDP).build(&lldp),
        Pass(Other),
    ));
    v.push(case(
        "arp padded to 60",
        pad(Ethernet::new(ethertype::ARP).build(&arp), 60),
        Pass(Other),
    ));
    v.push(case(
        "802.1Q arp",
        Ethernet::new(ethertype::ARP).vlan(5).build(&arp),
        Pass(Other),
    ));
    v.push(case(
        "QinQ lldp",
        Ethernet::new(ethertype::LLDP).qinq(5, 6).build(&lldp),
        Pass(Other),
    ));
    v.push(case(
        "unknown ethertype 0x88b5, no payload (exactly 14 bytes)",
        Ethernet::new(0x88b5).build(&[]),
        Pass(Other),
    ));
    v.push(case(
        "802.3 length field with LLC",
        Ethernet::new(0x0026).build(&[0x42, 0x42, 0x03, 0, 0, 0]),
        Pass(Other),
    ));
    v.push(case(
        "802.1Q tag then an unknown ethertype, no payload",
        Ethernet::new(0x1234).vlan(1).build(&[]),
        Pass(Other),
    ));

    // IPv4 options: IHL 6..15.
    for ihl in 6..=15usize {
        let mut options = vec![1u8; (ihl - 5) * 4 - 1]; // NOPs
        options.push(0); // end of option list
        let l4 = tcp();
        v.push(case(
            format!("ipv4 IHL {ihl} + tcp"),
            frame4(&ip4(&l4).options(&options), &l4),
            Pass(V4),
        ));
    }
    let l4 = udp();
    v.push(case(
        "ipv4 router alert option (IHL 6) + udp",
        frame4(&ip4(&l4).options(&[0x94, 0x04, 0, 0]), &l4),
        Pass(V4),
    ));
    v.push(case(
        "ipv4 3 option bytes padded to IHL 6 + udp",
        frame4(&ip4(&l4).options(&[1, 1, 0]), &l4),
        Pass(V4),
    ));

    // Ethernet padding after the IP packet.
    let l4 = tcp();
    v.push(case(
        "ipv4 tcp + 10 bytes of ethernet padding",
        pad(frame4(&ip4(&l4), &l4), 14 + 20 + 20 + PAYLOAD.len() + 10),
        Pass(V4),
    ));
    let l4 = Transport::udp(1, 2);
    v.push(case(
        "ipv4 udp without payload padded to 60",
        pad(frame4(&ip4(&l4), &l4), 60),
        Pass(V4),
    ));
    let l4 = Transport::tcp(1, 2);
    v.push(case(
        "ipv4 bare tcp SYN padded to 60",
        pad(frame4(&ip4(&l4), &l4), 60),
        Pass(V4),
    ));
    let l4 = Transport::raw(proto::GRE, &[]);
    v.push(case(
        "ipv4 with no payload (tot_len 20) padded to 60",
        pad(frame4(&ip4(&l4), &l4), 60),
        Pass(V4),
    ));
    let l4 = udp();
    v.push(case(
        "ipv6 udp + 7 bytes of trailing padding",
        pad(frame6(&ip6(&l4), &l4), 14 + 40 + 8 + PAYLOAD.len() + 7),
        Pass(V6),
    ));

    // IPv4 fragments.
    for (name, l4) in transports(V4) {
        v.push(case(
            format!("ipv4 first fragment (MF, offset 0) with full {name}"),
            frame4(&ip4(&l4).fragment(0, true), &l4),
            Pass(V4),
        ));
        v.push(case(
            format!("ipv4 later fragment (offset 1, MF) with 2 bytes of {name}"),
            frame4(&ip4(&l4).fragment(1, true), &cut(&l4, 2)),
            Pass(V4),
        ));
    }
    let l4 = tcp();
    v.push(case(
        "ipv4 later fragment (offset 3, MF) whose 8 bytes look like a cut tcp header",
        frame4(&ip4(&l4).fragment(3, true), &cut(&l4, 8)),
        Pass(V4),
    ));
    v.push(case(
        "ipv4 last fragment (offset 185, no MF) with 4 bytes",
        frame4(&ip4(&l4).fragment(185, false), &cut(&l4, 4)),
        Pass(V4),
    ));
    v.push(case(
        "ipv4 later fragment with no payload",
        frame4(&ip4(&l4).fragment(0x1fff, false), &cut(&l4, 0)),
        Pass(V4),
    ));
    v.push(case(
        "ipv4 DF set, not a fragment",
        frame4(&ip4(&l4).dont_fragment(), &l4),
        Pass(V4),
    ));
    v.push(case(
        "ipv4 IHL 15 first fragment with full udp",
        frame4(&ip4(&udp()).options(&[1; 40]).fragment(0, true), &udp()),
        Pass(V4),
    ));

    // Protocols the parser reads no L4 fields of.
    for (name, family, p, n) in [
        ("ipv4 gre, no payload", V4, proto::GRE, 0),
        (
            "ipv4 protocol 58 (icmpv6 number) with 2 bytes",
            V4,
            proto::ICMPV6,
            2,
        ),
        (
            "ipv4 protocol 44 (ipv6 fragment number) with 1 byte",
            V4,
            proto::FRAGMENT,
            1,
        ),
        ("ipv4 protocol 0 with 1 byte", V4, proto::HOPOPTS, 1),
        ("ipv6 no next header, no payload", V6, proto::NONE, 0),
        (
            "ipv6 next header 1 (icmp number) with 2 bytes",
            V6,
            proto::ICMP,
            2,
        ),
        ("ipv6 gre with 3 bytes", V6, proto::GRE, 3),
    ] {
        let l4 = Transport::raw(p, &[0xee; 3][..n]);
        let f = match family {
            V4 => frame4(&ip4(&l4), &l4),
            _ => frame6(&ip6(&l4), &l4),
        };
        v.push(case(name, f, Pass(family)));
    }

    // IPv6 extension headers.
    for (ename, ext) in single_exts() {
        for (lname, l4) in [
            ("tcp", tcp()),
            ("udp", udp()),
            ("icmpv6", Transport::icmpv6(143, 0)),
        ] {
            v.push(case(
                format!("ipv6 {ename} + {lname}"),
                frame6(&ip6(&l4).ext(ext.clone()), &l4),
                Pass(V6),
            ));
        }
    }
    for (name, l4) in [
        ("udp", udp()),
        ("tcp", tcp()),
        ("nothing", Transport::raw(proto::NONE, &[])),
    ] {
        v.push(case(
            format!("ipv6 chain of 8 extension headers + {name}"),
            frame6(&with_exts(ip6(&l4), ext_chain(8)), &l4),
            Pass(V6),
        ));
    }
    let l4 = udp();
    v.push(case(
        "ipv6 chain of 8 destination options + udp",
        frame6(&with_exts(ip6(&l4), vec![Ext::dest_opts(); 8]), &l4),
        Pass(V6),
    ));
    v.push(case(
        "ipv6 all five kinds, hop-by-hop first + udp",
        frame6(&with_exts(ip6(&l4), ext_chain(5)), &l4),
        Pass(V6),
    ));
    for l4 in [tcp(), udp(), Transport::icmpv6(128, 0)] {
        v.push(case(
            format!(
                "ipv6 first fragment (offset 0, M) with full proto {}",
                l4.proto()
            ),
            frame6(&ip6(&l4).ext(Ext::fragment(0, true)), &l4),
            Pass(V6),
        ));
    }
    v.push(case(
        "ipv6 hop-by-hop + first fragment + destination options + udp",
        frame6(
            &ip6(&l4)
                .ext(Ext::hop_by_hop())
                .ext(Ext::fragment(0, true))
                .ext(Ext::dest_opts()),
            &l4,
        ),
        Pass(V6),
    ));
    let l4 = tcp();
    v.push(case(
        "ipv6 later fragment (offset 185, M) whose 8 bytes look like a cut tcp header",
        frame6(&ip6(&l4).ext(Ext::fragment(185, true)), &cut(&l4, 8)),
        Pass(V6),
    ));
    v.push(case(
        "ipv6 last fragment (offset 1, no M) with 2 bytes",
        frame6(&ip6(&l4).ext(Ext::fragment(1, false)), &cut(&l4, 2)),
        Pass(V6),
    ));
    v.push(case(
        "ipv6 hop-by-hop + later fragment with no payload",
        frame6(
            &ip6(&l4).ext(Ext::hop_by_hop()).ext(Ext::fragment(8, true)),
            &cut(&l4, 0),
        ),
        Pass(V6),
    ));
    let dst = Transport::raw(proto::DSTOPTS, &[proto::UDP]);
    v.push(case(
        "ipv6 later fragment naming destination options, 1 byte of them",
        frame6(&ip6(&dst).ext(Ext::fragment(2, true)), &dst),
        Pass(V6),
    ));
    v
}

/// Malformed frames: every one is counted under its reason.
fn malformed() -> Vec<Case> {
    let mut v = Vec::new();

    // VLAN.
    for (name, et) in [
        ("ipv4", ethertype::IPV4),
        ("ipv6", ethertype::IPV6),
        ("arp", ethertype::ARP),
    ] {
        let l4 = udp();
        let payload = match et {
            ethertype::IPV4 => ip4(&l4).build(&l4.bytes()),
            ethertype::IPV6 => ip6(&l4).build(&l4.bytes()),
            _ => vec![0; 28],
        };
        v.push(case(
            format!("three tags (QinQ + 802.1Q) {name}"),
            Ethernet::new(et).qinq(1, 2).vlan(3).build(&payload),
            Bad(Other, VlanTooDeep),
        ));
        v.push(case(
            format!("three 802.1Q tags {name}"),
            Ethernet::new(et).vlan(1).vlan(2).vlan(3).build(&payload),
            Bad(Other, VlanTooDeep),
        ));
        v.push(case(
            format!("four tags {name}"),
            Ethernet::new(et).qinq(1, 2).vlan(3).vlan(4).build(&payload),
            Bad(Other, VlanTooDeep),
        ));
    }
    v.push(case(
        "two tags then a third TPID, frame ends",
        Ethernet::new(ethertype::VLAN).qinq(1, 2).build(&[]),
        Bad(Other, VlanTooDeep),
    ));
    let tag1 = Ethernet::new(ethertype::IPV4).vlan(7).build(&[]);
    for n in 14..tag1.len() {
        v.push(case(
            format!("802.1Q tag cut after {} bytes", n - 14),
            tag1[..n].to_vec(),
            Bad(Other, TruncatedVlan),
        ));
    }
    let tag2 = Ethernet::new(ethertype::IPV6).qinq(7, 8).build(&[]);
    for n in 18..tag2.len() {
        v.push(case(
            format!("QinQ inner tag cut after {} bytes", n - 18),
            tag2[..n].to_vec(),
            Bad(Other, TruncatedVlan),
        ));
    }

    // IPv4 header.
    let l4 = tcp();
    let full4 = ip4(&l4).build(&l4.bytes());
    for n in [0, 1, 10, 19] {
        v.push(case(
            format!("ipv4 header cut after {n} bytes"),
            Ethernet::new(ethertype::IPV4).build(&full4[..n]),
            Bad(V4, TruncatedIpv4),
        ));
        v.push(case(
            format!("802.1Q ipv4 header cut after {n} bytes"),
            Ethernet::new(ethertype::IPV4).vlan(9).build(&full4[..n]),
            Bad(V4, TruncatedIpv4),
        ));
    }
    let opts = ip4(&l4).options(&[1; 40]);
    let full = frame4(&opts, &l4);
    for n in [20, 21, 39, 59] {
        v.push(case(
            format!("ipv4 IHL 15 options cut after {} option bytes", n - 20),
            full[..14 + n].to_vec(),
            Bad(V4, TruncatedIpv4),
        ));
    }
    v.push(case(
        "ipv4 IHL 15 claimed on a 20-byte header with 20 bytes of tcp behind it",
        frame4(&ip4(&l4).ihl(15), &cut(&l4, 20)),
        Bad(V4, TruncatedIpv4),
    ));
    v.push(case(
        "ipv4 IHL 6 claimed, frame ends with the base header",
        frame4(&ip4(&l4).ihl(6).tot_len(24), &cut(&l4, 0)),
        Bad(V4, TruncatedIpv4),
    ));
    for ihl in 0..5 {
        v.push(case(
            format!("ipv4 IHL {ihl}"),
            frame4(&ip4(&l4).ihl(ihl), &l4),
            Bad(V4, BadIpv4Header),
        ));
    }
    for version in [0, 5, 6, 15] {
        v.push(case(
            format!("ipv4 ethertype, version {version}"),
            frame4(&ip4(&l4).version(version), &l4),
            Bad(V4, BadIpv4Header),
        ));
    }
    v.push(case(
        "ipv4 ethertype carrying an ipv6 packet",
        Ethernet::new(ethertype::IPV4).build(&ip6(&l4).build(&l4.bytes())),
        Bad(V4, BadIpv4Header),
    ));
    let n = (20 + l4.bytes().len()) as u16;
    for (name, ip) in [
        ("total length 0", ip4(&l4).tot_len(0)),
        ("total length 19 < header 20", ip4(&l4).tot_len(19)),
        (
            "total length 23 < header 24 (IHL 6)",
            ip4(&l4).options(&[1; 4]).tot_len(23),
        ),
        ("total length one beyond the frame", ip4(&l4).tot_len(n + 1)),
        ("total length 65535", ip4(&l4).tot_len(65535)),
        (
            "later fragment, total length beyond the frame",
            ip4(&l4).fragment(5, true).tot_len(n + 8),
        ),
        (
            "later fragment, total length 19",
            ip4(&l4).fragment(5, true).tot_len(19),
        ),
    ] {
        v.push(case(
            format!("ipv4 {name}"),
            frame4(&ip, &l4),
            Bad(V4, BadIpv4Length),
        ));
    }

    // Truncated L4, lengths consistent (the frame ends where the IP packet does).
    for family in [V4, V6] {
        for (name, l4) in transports(family) {
            let need = l4_need(family, l4.proto());
            let mut lens = vec![0, need - 1];
            if name == "tcp" {
                lens.push(4);
                lens.push(8);
            }
            if name.starts_with("icmp") {
                lens.push(2);
            }
            for k in lens {
                let short = cut(&l4, k);
                let f = match family {
                    V4 => frame4(&ip4(&short), &short),
                    _ => frame6(&ip6(&short), &short),
                };
                v.push(case(
                    format!("{} {name} with {k} of {need} header bytes", family.name()),
                    f,
                    Bad(family, TruncatedL4),
                ));
                if family == V4 {
                    v.push(case(
                        format!("ipv4 first fragment, {name} with {k} of {need} header bytes"),
                        frame4(&ip4(&short).fragment(0, true), &short),
                        Bad(V4, TruncatedL4),
                    ));
                    v.push(case(
                        format!("ipv4 IHL 15, {name} with {k} of {need} header bytes"),
                        frame4(&ip4(&short).options(&[1; 40]), &short),
                        Bad(V4, TruncatedL4),
                    ));
                } else {
                    v.push(case(
                        format!("ipv6 first fragment, {name} with {k} of {need} header bytes"),
                        frame6(&ip6(&short).ext(Ext::fragment(0, true)), &short),
                        Bad(V6, TruncatedL4),
                    ));
                    v.push(case(
                        format!(
                            "ipv6 hop-by-hop + routing, {name} with {k} of {need} header bytes"
                        ),
                        frame6(
                            &ip6(&short).ext(Ext::hop_by_hop()).ext(Ext::routing()),
                            &short,
                        ),
                        Bad(V6, TruncatedL4),
                    ));
                }
            }
        }
    }

    // IPv6 fixed header.
    let l4 = udp();
    let full6 = ip6(&l4).build(&l4.bytes());
    for n in [0, 1, 6, 39] {
        v.push(case(
            format!("ipv6 header cut after {n} bytes"),
            Ethernet::new(ethertype::IPV6).build(&full6[..n]),
            Bad(V6, TruncatedIpv6),
        ));
        v.push(case(
            format!("QinQ ipv6 header cut after {n} bytes"),
            Ethernet::new(ethertype::IPV6).qinq(1, 2).build(&full6[..n]),
            Bad(V6, TruncatedIpv6),
        ));
    }
    for version in [0, 4, 7, 15] {
        v.push(case(
            format!("ipv6 ethertype, version {version}"),
            frame6(&ip6(&l4).version(version), &l4),
            Bad(V6, BadIpv6Header),
        ));
    }
    v.push(case(
        "ipv6 ethertype carrying an ipv4 packet",
        Ethernet::new(ethertype::IPV6).build(&ip4(&l4).build(&l4.bytes())),
        Bad(V6, BadIpv6Header),
    ));
    let n = l4.bytes().len() as u16;
    for (name, ip) in [
        (
            "payload length one beyond the frame",
            ip6(&l4).payload_len(n + 1),
        ),
        ("payload length 65535", ip6(&l4).payload_len(65535)),
        (
            "hop-by-hop, payload length one beyond the frame",
            ip6(&l4).ext(Ext::hop_by_hop()).payload_len(n + 9),
        ),
        (
            "later fragment, payload length beyond the frame",
            ip6(&l4).ext(Ext::fragment(3, true)).payload_len(n + 100),
        ),
    ] {
        v.push(case(
            format!("ipv6 {name}"),
            frame6(&ip, &l4),
            Bad(V6, BadIpv6Header),
        ));
    }

    // IPv6 extension headers cut short, payload length consistent.
    for (ename, ext) in single_exts() {
        let len = ext.len();
        for (pre_name, pre) in [("", vec![]), (" after hop-by-hop", vec![Ext::hop_by_hop()])] {
            let ip = with_exts(ip6(&l4), pre.clone()).ext(ext.clone());
            let before: usize = pre.iter().map(Ext::len).sum();
            for k in [0, 1, 2, len / 2, len - 1] {
                v.push(case(
                    format!("ipv6 {ename}{pre_name} cut after {k} of its {len} bytes"),
                    frame6_cut(&ip, &l4, before + k),
                    Bad(V6, TruncatedIpv6Ext),
                ));
            }
        }
    }
    let hbh_255 = Transport::raw(proto::HOPOPTS, &[proto::UDP, 255, 1, 4, 0, 0, 0, 0]);
    v.push(case(
        "ipv6 hop-by-hop claiming 2048 bytes in an 8-byte payload",
        frame6(&ip6(&hbh_255), &hbh_255),
        Bad(V6, TruncatedIpv6Ext),
    ));
    let ah_255 = Transport::raw(
        proto::AH,
        &[proto::UDP, 255, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0],
    );
    v.push(case(
        "ipv6 ah claiming 1028 bytes in a 16-byte payload",
        frame6(&ip6(&ah_255), &ah_255),
        Bad(V6, TruncatedIpv6Ext),
    ));
    let ip = ip6(&l4).ext(Ext::ah()).ext(Ext::dest_opts());
    v.push(case(
        "ipv6 ah (24 bytes) + destination options cut after 4 of their 8 bytes",
        frame6_cut(&ip, &l4, 24 + 4),
        Bad(V6, TruncatedIpv6Ext),
    ));

    // IPv6 extension chains too deep.
    for (name, exts, l4) in [
        ("9 extension headers + udp", ext_chain(9), udp()),
        ("10 extension headers + udp", ext_chain(10), udp()),
        (
            "9 destination options + udp",
            vec![Ext::dest_opts(); 9],
            udp(),
        ),
        (
            "8 extension headers + a fragment header + tcp",
            [ext_chain(8), vec![Ext::fragment(0, false)]].concat(),
            tcp(),
        ),
        (
            "8 extension headers + a later fragment",
            [ext_chain(8), vec![Ext::fragment(9, true)]].concat(),
            cut(&tcp(), 8),
        ),
        (
            "8 extension headers + ah + icmpv6",
            [ext_chain(8), vec![Ext::ah()]].concat(),
            Transport::icmpv6(128, 0),
        ),
        ("16 extension headers + udp", ext_chain(16), udp()),
    ] {
        v.push(case(
            format!("ipv6 {name}"),
            frame6(&with_exts(ip6(&l4), exts), &l4),
            Bad(V6, Ipv6ExtTooDeep),
        ));
    }
    let nine = with_exts(ip6(&l4), ext_chain(9));
    let eight: usize = ext_chain(8).iter().map(Ext::len).sum();
    v.push(case(
        "ipv6 8 extension headers, a 9th announced but absent",
        frame6_cut(&nine, &l4, eight),
        Bad(V6, Ipv6ExtTooDeep),
    ));
    v
}

// ---------------------------------------------------------------------------
// Truncation sweeps.
// ---------------------------------------------------------------------------

/// What `BPF_PROG_TEST_RUN` does with frames shorter than an Ethernet header.
///
/// Observed on Linux 6.18: the kernel refuses every XDP test run with fewer
/// than 14 bytes (`ETH_HLEN`) of data, 0 bytes included, with `EINVAL`
/// before the program runs (the size check of `net/bpf/test_run.c`), so
/// nothing is counted, whatever the interface's malformed policy. From 14
/// bytes on the program runs. `TruncatedEthernet` therefore cannot be produced
/// through the test-run path; it is asserted nowhere else.
fn short_frame() -> Want {
    Refused
}

/// A complete, well-formed frame and where the headers the parser reads end.
struct Layered {
    name: String,
    frame: Vec<u8>,
    family: Family,
    /// End of the Ethernet header with its tags.
    eth_end: usize,
    /// End of the IPv4 header with its options, or of the IPv6 fixed header.
    ip_end: usize,
    /// After `ip_end`: where each extension header and the L4 bytes the
    /// parser needs end, with the reason when the packet ends before.
    inner: Vec<(usize, DropReason)>,
}

impl Layered {
    fn v4(name: &str, eth: Ethernet, ip: Ipv4, l4: Transport) -> Layered {
        assert_eq!(eth.ether_type, ethertype::IPV4);
        let frame = eth.build(&ip.build(&l4.bytes()));
        let eth_end = eth.header_len();
        let ip_end = eth_end + ip.header_len();
        let mut inner = Vec::new();
        let need = l4_need(V4, l4.proto());
        if ip.frag_offset == 0 && need > 0 {
            inner.push((ip_end + need, TruncatedL4));
        }
        Layered {
            name: name.into(),
            frame,
            family: V4,
            eth_end,
            ip_end,
            inner,
        }
    }

    fn v6(name: &str, eth: Ethernet, ip: Ipv6, l4: Transport) -> Layered {
        assert_eq!(eth.ether_type, ethertype::IPV6);
        let frame = eth.build(&ip.build(&l4.bytes()));
        let eth_end = eth.header_len();
        let ip_end = eth_end + Ipv6::HEADER_LEN;
        let mut inner = Vec::new();
        let mut at = ip_end;
        let mut later = false;
        for ext in &ip.exts {
            at += ext.len();
            inner.push((at, TruncatedIpv6Ext));
            if let Ext::Fragment { offset, .. } = ext {
                later |= *offset != 0;
            }
        }
        let need = l4_need(V6, l4.proto());
        if !later && need > 0 {
            inner.push((at + need, TruncatedL4));
        }
        Layered {
            name: name.into(),
            frame,
            family: V6,
            eth_end,
            ip_end,
            inner,
        }
    }

    /// What the first `n` bytes of the frame must give, lengths unchanged (so
    /// once the IP header is complete its length field exceeds the frame).
    fn prefix_want(&self, n: usize) -> Want {
        if n < Ethernet::HEADER_LEN {
            short_frame()
        } else if n < self.eth_end {
            Bad(Other, TruncatedVlan)
        } else if n < self.ip_end {
            // IPv4: the base header or its options are cut (options are
            // skipped before the total length is checked).
            match self.family {
                V4 => Bad(V4, TruncatedIpv4),
                _ => Bad(V6, TruncatedIpv6),
            }
        } else {
            match self.family {
                V4 => Bad(V4, BadIpv4Length),
                _ => Bad(V6, BadIpv6Header),
            }
        }
    }

    /// The first `n` bytes (`n >= ip_end`) with the IP length field rewritten
    /// to end exactly there (IPv4 checksum fixed).
    fn consistent_prefix(&self, n: usize) -> Vec<u8> {
        let mut f = self.frame[..n].to_vec();
        let e = self.eth_end;
        match self.family {
            V4 => {
                f[e + 2..e + 4].copy_from_slice(&((n - e) as u16).to_be_bytes());
                f[e + 10..e + 12].copy_from_slice(&[0, 0]);
                let sum = checksum(&f[e..self.ip_end]);
                f[e + 10..e + 12].copy_from_slice(&sum.to_be_bytes());
            }
            _ => {
                let len = (n - self.ip_end) as u16;
                f[e + 4..e + 6].copy_from_slice(&len.to_be_bytes());
            }
        }
        f
    }

    /// What [`Layered::consistent_prefix`] of `n` bytes must give.
    fn consistent_want(&self, n: usize) -> Want {
        match self.inner.iter().find(|(end, _)| n < *end) {
            Some(&(_, reason)) => Bad(self.family, reason),
            None => Pass(self.family),
        }
    }
}

fn layered() -> Vec<Layered> {
    let opts = [0x94, 0x04, 0, 0, 1, 1, 1, 0]; // router alert, NOPs, end: IHL 7
    vec![
        Layered::v4(
            "802.1Q ipv4 + 8 option bytes + tcp",
            Ethernet::new(ethertype::IPV4).vlan(42),
            ip4(&tcp()).options(&opts),
            tcp(),
        ),
        Layered::v6(
            "QinQ ipv6 + hop-by-hop + fragment (first) + udp",
            Ethernet::new(ethertype::IPV6).qinq(100, 200),
            ip6(&udp())
                .ext(Ext::hop_by_hop())
                .ext(Ext::fragment(0, true)),
            udp(),
        ),
        Layered::v6(
            "ipv6 + routing + icmpv6",
            Ethernet::new(ethertype::IPV6),
            ip6(&Transport::icmpv6(128, 0)).ext(Ext::routing()),
            Transport::icmpv6(128, 0).payload(PAYLOAD),
        ),
        Layered::v4(
            "QinQ ipv4 first fragment + IHL 15 + sctp",
            Ethernet::new(ethertype::IPV4).qinq(1, 2),
            ip4(&Transport::sctp(1, 2))
                .options(&[1; 40])
                .fragment(0, true),
            Transport::sctp(1, 2).payload(PAYLOAD),
        ),
        Layered::v4(
            "ipv4 icmp",
            Ethernet::new(ethertype::IPV4),
            ip4(&Transport::icmp(0, 0)),
            Transport::icmp(0, 0).payload(b"pong"),
        ),
        Layered::v6(
            "802.1Q ipv6 + ah + destination options + tcp",
            Ethernet::new(ethertype::IPV6).vlan(3),
            ip6(&tcp()).ext(Ext::ah()).ext(Ext::dest_opts()),
            tcp(),
        ),
    ]
}

/// Every prefix of every layered frame, lengths unchanged.
fn prefix_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for l in layered() {
        for n in 0..l.frame.len() {
            v.push(case(
                format!("{}: first {n} of {} bytes", l.name, l.frame.len()),
                l.frame[..n].to_vec(),
                l.prefix_want(n),
            ));
        }
    }
    v
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

#[test]
fn well_formed_frames_pass() {
    let cases = well_formed();
    assert!(cases.iter().all(|c| matches!(c.want, Pass(_))));
    with_runner(Malformed::Drop, |r| r.run_all(&cases));
}

#[test]
fn malformed_frames_are_dropped_and_counted_under_their_reason() {
    let cases = malformed();
    assert!(cases.iter().all(|c| matches!(c.want, Bad(..))));
    // Every malformed reason the test-run path can produce is covered
    // (`not_bound` is a policy drop, covered by tests/tests/bind.rs).
    for r in DropReason::ALL {
        assert!(
            r == TruncatedEthernet
                || !r.is_malformed()
                || cases.iter().any(|c| matches!(c.want, Bad(_, x) if x == r)),
            "no fixture for {}",
            r.name()
        );
    }
    with_runner(Malformed::Drop, |r| r.run_all(&cases));
}

#[test]
fn malformed_frames_pass_but_are_counted_when_the_interface_passes_them() {
    let mut cases = malformed();
    cases.extend(prefix_cases());
    // Well-formed frames are unaffected by the policy.
    cases.extend(well_formed().into_iter().step_by(7));
    with_runner(Malformed::Pass, |r| r.run_all(&cases));
}

/// Every prefix of a complete frame is malformed, with the reason of the
/// header it ends in (or, once the IP header is complete, the IP length
/// field that now exceeds the frame).
#[test]
fn truncated_at_every_offset() {
    let cases = prefix_cases();
    assert!(
        cases
            .iter()
            .all(|c| c.want != Pass(V4) && c.want != Pass(V6))
    );
    with_runner(Malformed::Drop, |r| r.run_all(&cases));
}

/// Every prefix from the end of the IP header on, with the IP length field
/// rewritten to match: now extension headers and the L4 header are the ones
/// cut, and once the parser has what it reads the frame passes.
#[test]
fn truncated_at_every_offset_with_consistent_ip_length() {
    let mut cases = Vec::new();
    for l in layered() {
        for n in l.ip_end..=l.frame.len() {
            cases.push(case(
                format!(
                    "{}: first {n} of {} bytes, IP length fixed up",
                    l.name,
                    l.frame.len()
                ),
                l.consistent_prefix(n),
                l.consistent_want(n),
            ));
        }
        assert_eq!(l.consistent_prefix(l.frame.len()), l.frame, "{}", l.name);
    }
    with_runner(Malformed::Drop, |r| r.run_all(&cases));
}

/// Frames shorter than an Ethernet header, explicitly (see [`short_frame`]).
#[test]
fn frames_shorter_than_an_ethernet_header() {
    let cases: Vec<Case> = (0..Ethernet::HEADER_LEN)
        .map(|n| case(format!("{n}-byte frame"), vec![0xff; n], short_frame()))
        .collect();
    for policy in [Malformed::Drop, Malformed::Pass] {
        with_runner(policy, |r| r.run_all(&cases));
    }
}

#[test]
fn repeat_advances_counters_by_the_repeat_count() {
    let l4 = tcp();
    let good = case("ipv4 tcp", frame4(&ip4(&l4), &l4), Pass(V4));
    let l4 = udp();
    let bad = case(
        "ipv6 9 extension headers",
        frame6(&with_exts(ip6(&l4), ext_chain(9)), &l4),
        Bad(V6, Ipv6ExtTooDeep),
    );
    let arp = case(
        "arp",
        Ethernet::new(ethertype::ARP).build(&[0; 28]),
        Pass(Other),
    );
    with_runner(Malformed::Drop, |r| {
        for c in [&good, &bad, &arp, &good] {
            r.run(c, 1000);
        }
    });
}

/// L4 and extension headers are bounded by the end of the IP packet (IPv4 total
/// length, IPv6 payload length), not of the frame: bytes after the packet
/// (Ethernet padding, trailers) never count as headers. A first fragment
/// carrying only 8 bytes of TCP in a minimum-size (60-byte) Ethernet frame, the
/// RFC 1858 tiny fragment, must not pass on the strength of 18 padding bytes.
/// (This test found that bug in the first parser.)
#[test]
fn headers_are_bounded_by_ip_length_not_frame() {
    let mut cases = Vec::new();
    let l4 = tcp();
    let short = cut(&l4, 8);
    cases.push(case(
        "ipv4 first fragment, tot_len covers 8 bytes of tcp, padded to 60",
        pad(frame4(&ip4(&short).fragment(0, true), &short), 60),
        Bad(V4, TruncatedL4),
    ));
    let short = cut(&l4, 4);
    cases.push(case(
        "ipv4 tot_len covers 4 bytes of tcp, padded to 60",
        pad(frame4(&ip4(&short), &short), 60),
        Bad(V4, TruncatedL4),
    ));
    let short = cut(&Transport::icmp(8, 0), 2);
    cases.push(case(
        "ipv4 tot_len covers 2 bytes of icmp, padded to 60",
        pad(frame4(&ip4(&short), &short), 60),
        Bad(V4, TruncatedL4),
    ));
    let short = cut(&l4, 4);
    cases.push(case(
        "ipv6 payload_len 4 with tcp, 16 trailer bytes",
        pad(frame6(&ip6(&short), &short), 14 + 40 + 4 + 16),
        Bad(V6, TruncatedL4),
    ));
    let l4 = udp();
    cases.push(case(
        "ipv6 payload_len 4, an 8-byte hop-by-hop and udp after it",
        frame6(&ip6(&l4).ext(Ext::hop_by_hop()).payload_len(4), &l4),
        Bad(V6, TruncatedIpv6Ext),
    ));
    with_runner(Malformed::Drop, |r| r.run_all(&cases));
}

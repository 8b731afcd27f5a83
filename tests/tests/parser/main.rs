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
//!
//! The cases are built in [`fixtures`] (the tables), [`truncation`] (prefix
//! sweeps) and [`frames`] (helpers); [`runner`] runs them and checks every
//! counter.
mod fixtures;
mod frames;
mod runner;
mod truncation;

use xdpgate_common::{DropReason, Family};
use xdpgate_model::iface::Malformed;
use xdpgate_tests::packet::{Ethernet, Ext, Transport, ethertype, pad};

use DropReason::*;
use Family::{Ipv4 as V4, Ipv6 as V6, Other};

use fixtures::{malformed, well_formed};
use frames::{cut, ext_chain, frame4, frame6, ip4, ip6, tcp, udp, with_exts};
use runner::{
    Case,
    Want::{Bad, Pass},
    case, with_runner,
};
use truncation::{layered, prefix_cases, short_frame};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const A4: [u8; 4] = [192, 0, 2, 1];
const B4: [u8; 4] = [198, 51, 100, 2];
const A6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const B6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const PAYLOAD: &[u8] = b"xdpgate parser fixture";

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

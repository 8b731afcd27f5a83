//! Rate-limit fixtures: rules with a `limit` installed through the real ACL
//! controller, frames run through the loaded XDP program with
//! `BPF_PROG_TEST_RUN`, and the bucket arithmetic checked at its edges (see
//! `docs/design/ddos.md` and `common/src/limit.rs`): a burst of B passes at
//! once and packet B+1 is dropped (reason `rate_limited`, the rule's
//! `limited` counter), time refills the bucket at the configured rate and no
//! faster, packets and bytes alike, and buckets are shared exactly by the
//! addresses of one /24, /48 or /64 (or one destination, or the whole rule).
//!
//! The rates are chosen so that a run of packets takes far less than one
//! interval (checked), which makes "exactly B" exact; the refill checks
//! allow what the measured time allows, plus one.
mod ddos_common;

use std::time::{Duration, Instant};

use ddos_common::{Gate, XDP_DROP, XDP_PASS, in_netns};
use xdpgate::datapath::{Datapath, MapSizes};
use xdpgate_common::{
    DropReason,
    limit::{MIN_BUCKETS, rule_stat},
};
use xdpgate_tests::packet::{Ethernet, Ipv4, Ipv6, Transport, ethertype};

const DPORT: u16 = 5000;

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>()
        .expect("IPv6 address")
        .octets()
}

fn v4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>()
        .expect("IPv4 address")
        .octets()
}

/// A UDP frame of exactly `len` bytes (Ethernet header included) to `DPORT`.
fn udp4(src: &str, dst: &str, len: usize) -> Vec<u8> {
    let payload = vec![0x5a; len - 14 - 20 - 8];
    let l4 = Transport::udp(40000, DPORT).payload(&payload);
    let f = Ethernet::new(ethertype::IPV4)
        .build(&Ipv4::new(v4(src), v4(dst), l4.proto()).build(&l4.bytes()));
    assert_eq!(f.len(), len);
    f
}

/// As [`udp4`], IPv6.
fn udp6(src: &str, dst: &str, len: usize) -> Vec<u8> {
    let payload = vec![0x5a; len - 14 - 40 - 8];
    let l4 = Transport::udp(40000, DPORT).payload(&payload);
    let f = Ethernet::new(ethertype::IPV6)
        .build(&Ipv6::new(v6(src), v6(dst), l4.proto()).build(&l4.bytes()));
    assert_eq!(f.len(), len);
    f
}

/// A rule file with one UDP rule (id 1) to `DPORT` carrying `limit` (an
/// inline TOML table's body), and a rule (id 2) allowing everything else.
fn rules(limit: &str) -> String {
    format!(
        "[[rule]]\nid = 1\npriority = 1\nproto = \"udp\"\ndport = {DPORT}\naction = \"allow\"\n\
         limit = {{ {limit} }}\n\n\
         [[rule]]\nid = 2\npriority = 2\naction = \"allow\"\n"
    )
}

/// Runs `frame` until the first drop (at most `max` times, one test run
/// each); returns how many passed first and how long it took.
fn pass_until_drop(g: &mut Gate, frame: &[u8], max: usize) -> (usize, Duration) {
    let t0 = Instant::now();
    for n in 0..max {
        match g.run(frame) {
            XDP_PASS => {}
            XDP_DROP => return (n, t0.elapsed()),
            other => panic!("verdict {other} after {n} passes"),
        }
    }
    panic!("{max} packets passed without a drop");
}

#[test]
fn a_packet_limit_passes_exactly_its_burst_then_drops_and_counts_the_drop() {
    in_netns("limburst", |_| {
        // 10 pps: one packet per 100 ms; 25 test runs take well under that.
        let mut g = Gate::new(&rules("pps = 10, burst_packets = 25"));
        let frame = udp4("10.1.0.1", "10.9.0.1", 100);
        let cache = g.dp.cache_stats().expect("cache stats");
        let (passed, took) = pass_until_drop(&mut g, &frame, 100);
        assert!(took < Duration::from_millis(50), "runs took {took:?}");
        assert_eq!(passed, 25, "the burst passes at once, packet 26 is dropped");
        // More packets at once: all dropped.
        assert_eq!(g.passed(&frame, 10), 0, "nothing more within the interval");
        // All but the first were decided by the decision cache: the limit
        // applies after it.
        let hits = g.dp.cache_stats().expect("cache stats").hits - cache.hits;
        assert_eq!(hits, 35, "decision-cache hits");
        assert_eq!(
            g.rule_stat(1, rule_stat::LIMITED),
            11,
            "{:?}",
            g.rule_stats(1)
        );
        assert_eq!(g.reason(DropReason::RateLimited), 11);
        // The rule counts every packet it matched, passed or dropped.
        assert_eq!(g.rule_packets(1), 36);
        // No other limit or cookie counter moved.
        for (name, n) in g.rule_stats(1) {
            if name != "limited" {
                assert_eq!(n, 0, "{name}");
            }
        }
        // Another rule's traffic is not limited.
        let other = Ethernet::new(ethertype::IPV4).build(
            &Ipv4::new(v4("10.1.0.1"), v4("10.9.0.1"), 17)
                .build(&Transport::udp(40000, 6000).bytes()),
        );
        assert_eq!(g.passed(&other, 50), 50);
        assert_eq!(g.rule_packets(2), 50);
    });
}

#[test]
fn a_packet_limit_refills_at_its_rate_and_no_faster() {
    in_netns("limrefill", |_| {
        // 20 pps: 50 ms per packet.
        let interval = Duration::from_millis(50);
        let mut g = Gate::new(&rules("pps = 20, burst_packets = 5"));
        let frame = udp6("fd00:1::1", "fd00:9::1", 120);
        let (passed, _) = pass_until_drop(&mut g, &frame, 50);
        assert_eq!(passed, 5);
        let mut dropped = 1u64;
        let mut empty_at = Instant::now();
        for k in [2u32, 6] {
            std::thread::sleep(interval * k);
            let sent = 3 * k as usize;
            let n = g.passed(&frame, sent);
            let since = empty_at.elapsed();
            // At least k - 1 (the sleep is at least k intervals; one may be
            // lost to where the empty bucket's clock stood), at most what
            // the time since the bucket was empty allows.
            assert!(n + 1 >= k as usize, "after {k} intervals only {n} passed");
            let allowed = (since.as_nanos() / interval.as_nanos()) as usize + 1;
            assert!(
                n <= allowed,
                "after {k} intervals {n} passed, {since:?} allow {allowed}"
            );
            // Spend what is left, so the next round starts empty.
            let (more, _) = pass_until_drop(&mut g, &frame, 10);
            assert!(more <= 1, "{more} more passed right after");
            dropped += (sent - n) as u64 + 1;
            empty_at = Instant::now();
        }
        assert_eq!(g.rule_stat(1, rule_stat::LIMITED), dropped);
        assert_eq!(g.reason(DropReason::RateLimited), dropped);
    });
}

#[test]
fn a_byte_limit_passes_exactly_its_burst_of_bytes_then_refills_by_bytes() {
    in_netns("limbytes", |_| {
        // 100,000 bytes/s with a 10,000-byte burst: ten 1000-byte frames at
        // once; one more every 10 ms.
        let mut g = Gate::new(&rules("bytes_per_sec = 100000, burst_bytes = 10000"));
        let big = udp4("10.1.0.1", "10.9.0.1", 1000);
        let (passed, took) = pass_until_drop(&mut g, &big, 50);
        assert!(took < Duration::from_millis(5), "runs took {took:?}");
        assert_eq!(passed, 10, "10 x 1000 bytes fill a 10,000-byte burst");
        assert_eq!(g.rule_stat(1, rule_stat::LIMITED), 1);
        assert_eq!(g.reason(DropReason::RateLimited), 1);
        // 60 ms later: 6,000 bytes of credit: six 1000-byte frames (seven
        // if the runs were slow), never ten.
        std::thread::sleep(Duration::from_millis(60));
        let t0 = Instant::now();
        let (n, _) = pass_until_drop(&mut g, &big, 50);
        let extra = (t0.elapsed().as_micros() / 10_000) as usize;
        assert!(
            (5..=7 + extra).contains(&n),
            "{n} frames of 1000 bytes after 60 ms"
        );
        // Small frames cost less: after 10 ms, 1000 bytes of credit are
        // about 1000/100 = 10 frames of 100 bytes, not 10 x 1000 bytes.
        std::thread::sleep(Duration::from_millis(10));
        let small = udp4("10.1.0.1", "10.9.0.1", 100);
        let (n, _) = pass_until_drop(&mut g, &small, 100);
        assert!((8..=14).contains(&n), "{n} frames of 100 bytes after 10 ms");
    });
}

/// Exhausts the bucket of `first` (burst 2), then checks that `same` finds it
/// empty and `other` has its own.
fn shares(g: &mut Gate, first: &[u8], same: &[&[u8]], other: &[&[u8]], what: &str) {
    assert_eq!(g.passed(first, 3), 2, "{what}: burst of the first address");
    for (i, f) in same.iter().enumerate() {
        assert_eq!(g.run(f), XDP_DROP, "{what}: same bucket #{i}");
    }
    for (i, f) in other.iter().enumerate() {
        assert_eq!(g.passed(f, 3), 2, "{what}: own bucket #{i}");
    }
}

#[test]
fn per_source_buckets_aggregate_exactly_at_the_slash_24_and_slash_48() {
    in_netns("limagg1", |_| {
        // 1 pps: nothing refills during the test.
        let mut g = Gate::new(&rules(
            "pps = 1, burst_packets = 2, per = \"src\", v4_prefix = 24, v6_prefix = 48",
        ));
        let d4 = "10.9.0.1";
        shares(
            &mut g,
            &udp4("10.200.5.1", d4, 80),
            &[&udp4("10.200.5.254", d4, 80), &udp4("10.200.5.0", d4, 80)],
            &[&udp4("10.200.6.1", d4, 80), &udp4("10.200.4.255", d4, 80)],
            "ipv4 /24",
        );
        let d6 = "fd00:9::1";
        shares(
            &mut g,
            &udp6("fd00:200:1::1", d6, 90),
            &[
                &udp6("fd00:200:1:ffff::1", d6, 90),
                &udp6("fd00:200:1:ffff:ffff:ffff:ffff:ffff", d6, 90),
            ],
            &[
                &udp6("fd00:200:2::1", d6, 90),
                &udp6("fd00:200:0:ffff:ffff:ffff:ffff:ffff", d6, 90),
            ],
            "ipv6 /48",
        );
        // Families never share: 10.200.5.1's bucket is not an IPv6 one.
        assert_eq!(g.rule_stat(1, rule_stat::LIMITED), 1 + 2 + 2 + 1 + 2 + 2);
        assert_eq!(g.reason(DropReason::RateLimited), 10);
    });
}

#[test]
fn per_source_buckets_default_to_one_ipv4_address_and_one_ipv6_slash_64() {
    in_netns("limagg2", |_| {
        let mut g = Gate::new(&rules("pps = 1, burst_packets = 2"));
        let d6 = "fd00:9::1";
        shares(
            &mut g,
            &udp6("fd00:200:1:1::1", d6, 90),
            &[
                &udp6("fd00:200:1:1:ffff::1", d6, 90),
                &udp6("fd00:200:1:1:ffff:ffff:ffff:ffff", d6, 90),
            ],
            &[
                &udp6("fd00:200:1:2::1", d6, 90),
                &udp6("fd00:200:1:0:ffff:ffff:ffff:ffff", d6, 90),
            ],
            "ipv6 /64",
        );
        let d4 = "10.9.0.1";
        shares(
            &mut g,
            &udp4("10.200.5.1", d4, 80),
            &[],
            &[&udp4("10.200.5.2", d4, 80), &udp4("10.200.5.0", d4, 80)],
            "ipv4 /32",
        );
    });
}

#[test]
fn per_destination_buckets_aggregate_destinations_not_sources() {
    in_netns("limdst", |_| {
        let mut g = Gate::new(&rules(
            "pps = 1, burst_packets = 2, per = \"dst\", v4_prefix = 24, v6_prefix = 64",
        ));
        shares(
            &mut g,
            &udp4("10.1.0.1", "10.200.5.1", 80),
            &[
                &udp4("10.1.0.2", "10.200.5.254", 80),
                &udp4("192.0.2.7", "10.200.5.9", 80),
            ],
            &[&udp4("10.1.0.1", "10.200.6.1", 80)],
            "ipv4 dst /24",
        );
        shares(
            &mut g,
            &udp6("fd00:1::1", "fd00:200:1:1::1", 90),
            &[&udp6("fd00:2::9", "fd00:200:1:1:ffff::2", 90)],
            &[&udp6("fd00:1::1", "fd00:200:1:2::1", 90)],
            "ipv6 dst /64",
        );
    });
}

#[test]
fn a_rule_wide_limit_is_one_bucket_for_every_source_and_destination() {
    in_netns("limrule", |_| {
        let mut g = Gate::new(&rules("pps = 1, burst_packets = 3, per = \"rule\""));
        let frames = [
            udp4("10.1.0.1", "10.9.0.1", 80),
            udp6("fd00:1::1", "fd00:9::1", 90),
            udp4("192.0.2.1", "10.9.9.9", 80),
        ];
        let passed: usize = frames.iter().map(|f| g.passed(f, 1)).sum();
        assert_eq!(passed, 3);
        for f in &frames {
            assert_eq!(g.run(f), XDP_DROP);
        }
        assert_eq!(g.rule_stat(1, rule_stat::LIMITED), 3);
    });
}

/// Rule 1 limits per source (each new source takes an LRU entry); rule 3 is
/// a rule-wide limit of 1 pps. After rule 3's burst is spent, more distinct
/// sources than the bucket table holds pass rule 1; rule 3's bucket must
/// still be empty afterwards (an evicted bucket would come back full).
#[test]
fn a_rule_wide_limit_keeps_its_budget_after_the_bucket_table_overflows() {
    in_netns("limlru", |_| {
        let file = format!(
            "{}\n[[rule]]\nid = 3\npriority = 0\nproto = \"udp\"\ndport = 7000\naction = \"allow\"\n\
             limit = {{ pps = 1, burst_packets = 20, per = \"rule\" }}\n",
            rules("pps = 1000, burst_packets = 10")
        );
        // The smallest bucket table the configuration allows.
        let dp = Datapath::load_sized(MapSizes {
            limit_buckets: MIN_BUCKETS,
            ..MapSizes::default()
        })
        .expect("load with 1024 buckets");
        let mut g = Gate::with(dp, &file);
        let wide = Ethernet::new(ethertype::IPV4).build(
            &Ipv4::new(v4("10.1.0.1"), v4("10.9.0.1"), 17)
                .build(&Transport::udp(40000, 7000).bytes()),
        );
        let t0 = Instant::now();
        assert_eq!(g.passed(&wide, 25), 20, "the rule-wide burst");
        let sources = 5000;
        for i in 0..sources {
            let [_, b, c, d] = (i as u32 + 1).to_be_bytes();
            let f = udp4(&format!("10.{b}.{c}.{d}"), "10.9.0.1", 64);
            assert_eq!(g.run(&f), XDP_PASS, "source #{i} has its own bucket");
        }
        // Only the time since the burst refills the rule-wide bucket.
        let allowed = t0.elapsed().as_secs() as usize + 1;
        let n = g.passed(&wide, 20);
        assert!(
            n <= allowed,
            "{n} passed after {sources} sources churned the bucket table \
             ({MIN_BUCKETS} entries), {:?} allow {allowed}",
            t0.elapsed()
        );
        assert_eq!(g.rule_stat(1, rule_stat::LIMITED), 0);
        assert_eq!(g.rule_stat(3, rule_stat::LIMITED), 5 + 20 - n as u64);
    });
}

/// `docs/design/ddos.md`: a limit that changes, or a rule that is replaced,
/// starts with a full bucket; a rule a replacement leaves unchanged keeps its
/// bucket. A rule that takes over the counter slot of a removed one (the
/// controller reuses freed slots first) must not inherit its empty bucket,
/// rule-wide (`XG_LIMIT_RULE` by slot) or per source (`XG_LIMIT_BUCKETS`
/// keyed by slot).
#[test]
fn a_replaced_rule_starts_with_a_full_bucket_and_an_unchanged_one_keeps_its_own() {
    in_netns("limreplace", |_| {
        for per in ["rule", "src"] {
            let limit = |id: u32, burst: u32| {
                format!(
                    "[[rule]]\nid = {id}\npriority = 1\nproto = \"udp\"\ndport = {DPORT}\n\
                     action = \"allow\"\n\
                     limit = {{ pps = 1, burst_packets = {burst}, per = \"{per}\" }}\n"
                )
            };
            let install = |g: &mut Gate, file: &str| {
                let file: xdpgate_model::acl::RuleFile = toml::from_str(file).unwrap();
                let state = xdpgate_model::acl::AclState::from_file(&file).unwrap();
                g.ctl.install(&mut g.dp, state).expect("install");
            };
            let mut g = Gate::new(&limit(1, 3));
            let frame = udp4("10.1.0.1", "10.9.0.1", 100);
            assert_eq!(g.passed(&frame, 5), 3, "per {per}: the first burst");
            let slot = g.slot(1);
            install(&mut g, &limit(1, 3));
            assert_eq!(g.slot(1), slot, "an unchanged rule keeps its slot");
            assert_eq!(
                g.passed(&frame, 3),
                0,
                "per {per}: an unchanged rule keeps its bucket"
            );
            install(&mut g, &limit(1, 4));
            assert_eq!(
                g.passed(&frame, 6),
                4,
                "per {per}: a changed limit starts full"
            );
            // Rule 7 takes the slot rule 1 had first (freed, then reused).
            install(&mut g, &limit(7, 3));
            let reused = g.slot(7) == slot;
            assert_eq!(
                g.passed(&frame, 5),
                3,
                "per {per}: a new rule starts full (slot {} reused: {reused})",
                g.slot(7)
            );
        }
    });
}

//! `BPF_PROG_TEST_RUN` fixtures of the steering program: the per-CPU next-hop
//! cache. A cached next hop forwards exactly like the lookup, failed lookups
//! are never cached, a neighbour's new MAC is used at once when the daemon's
//! task moves the routing generation on the kernel's notification, and
//! without a daemon once the cached entry's lifetime has passed; so is a
//! lowered device MTU, and a reused backend slot does not inherit the old
//! address's next hop.
//!
//! The rig (a namespace with a veth pair, the backends' neighbours and
//! routes; the datapath with lo as slot 1; expected frames written out field
//! by field) is in `lb_common/`.
mod lb_common;

use std::time::{Duration, Instant};

use lb_common::{
    IN_DST, IN_SRC, LBT0, LO, MAC2, Net, XDP_DROP, XDP_PASS, XDP_REDIRECT, action_packets,
    backend_counts, encapsulated, fmt_mac, frame, ip, l4_of, load, mac_of, net, outer_dst,
    pin_to_current_cpu, reason_packets, reasons, run, same, service_counts, sid, spec,
};
use tokio_util::sync::CancellationToken;
use xdpgate::{
    datapath::Datapath,
    lb::{LbController, route_watch},
    sys::rtnl_events::RouteEvents,
};
use xdpgate_common::{DropReason, lb::HOP_LIFETIME_JIFFIES};
use xdpgate_model::lb::{Forward, Proto, ServiceSpec, packet_hash};
use xdpgate_tests::{
    lab::serial,
    packet::{Transport, hex},
};

/// `CONFIG_HZ` of the running kernel, from `/boot/config-RELEASE`; `None`
/// when that file is not there.
fn config_hz() -> Option<u64> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let config = std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok()?;
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
}

/// The shortest and the longest a cached next hop can live here
/// (`HOP_LIFETIME_JIFFIES`): both the same when the kernel's `CONFIG_HZ` is
/// known, else those of HZ=1000 and of HZ=100.
fn lifetime() -> (Duration, Duration) {
    let of = |hz: u64| Duration::from_millis(HOP_LIFETIME_JIFFIES * 1000 / hz);
    match config_hz() {
        Some(hz) => (of(hz), of(hz)),
        None => (of(1000), of(100)),
    }
}

/// Whether a next hop resolved after `since` is certainly still cached: its
/// shortest lifetime (jiffies trail `Instant`'s CLOCK_MONOTONIC by at most a
/// tick) has not passed, with a margin of 100 ms.
fn within_lifetime(since: Instant) -> bool {
    since.elapsed() + Duration::from_millis(100) < lifetime().0
}

/// How long to wait after a change for every next hop cached before it to
/// have expired: the longest lifetime and 100 ms.
fn past_lifetime() -> Duration {
    lifetime().1 + Duration::from_millis(100)
}

/// One service of a fixture: its id, a client, its one backend, and whether
/// it is L2 DSR (else encapsulated).
#[derive(Clone, Copy)]
struct Svc {
    id: &'static str,
    client: &'static str,
    backend: &'static str,
    dsr: bool,
}

/// Four services to the .2 neighbours (10.200.9.2, fd00:200:9::2): IPv4 and
/// IPv6, encapsulated and L2 DSR.
const FOUR: [Svc; 4] = [
    Svc {
        id: "192.0.2.10:80/tcp",
        client: "198.51.100.7",
        backend: "10.200.9.2",
        dsr: false,
    },
    Svc {
        id: "[2001:db8::10]:80/tcp",
        client: "2001:db8:1::7",
        backend: "fd00:200:9::2",
        dsr: false,
    },
    Svc {
        id: "192.0.2.20:80/tcp",
        client: "198.51.100.7",
        backend: "10.200.9.2",
        dsr: true,
    },
    Svc {
        id: "[2001:db8::20]:80/tcp",
        client: "2001:db8:1::7",
        backend: "fd00:200:9::2",
        dsr: true,
    },
];

/// Every family pair, encapsulated, and L2 DSR of both families, to the .2
/// and .3 neighbours.
const SIX: [Svc; 6] = [
    Svc {
        id: "192.0.2.10:80/tcp",
        client: "198.51.100.7",
        backend: "10.200.9.2",
        dsr: false,
    },
    Svc {
        id: "192.0.2.11:80/tcp",
        client: "198.51.100.7",
        backend: "fd00:200:9::3",
        dsr: false,
    },
    Svc {
        id: "[2001:db8::10]:80/tcp",
        client: "2001:db8:1::7",
        backend: "fd00:200:9::2",
        dsr: false,
    },
    Svc {
        id: "[2001:db8::11]:80/tcp",
        client: "2001:db8:1::7",
        backend: "10.200.9.3",
        dsr: false,
    },
    Svc {
        id: "192.0.2.20:80/tcp",
        client: "198.51.100.7",
        backend: "10.200.9.3",
        dsr: true,
    },
    Svc {
        id: "[2001:db8::20]:80/tcp",
        client: "2001:db8:1::7",
        backend: "fd00:200:9::2",
        dsr: true,
    },
];

/// The neighbours' new MAC in the neighbour-change fixtures.
const NEW: [u8; 6] = [0x02, 0, 0, 0, 0x09, 0xee];

/// The services' specs, one backend of weight 1 each.
fn specs(svcs: &[Svc]) -> Vec<ServiceSpec> {
    svcs.iter()
        .map(|s| {
            let forward = if s.dsr {
                Forward::L2dsr
            } else {
                Forward::Encap
            };
            spec(s.id, forward, &[(s.backend, 1)])
        })
        .collect()
}

/// A TCP frame from `s`'s client to its service, and what leaves for its
/// backend through the neighbour `dmac` (`n`'s lbt0 as the source MAC).
fn expected(n: &Net, s: &Svc, dmac: [u8; 6]) -> (Vec<u8>, Vec<u8>) {
    let (src, vip, be) = (ip(s.client), sid(s.id).vip, ip(s.backend));
    let input = frame(src, vip, &l4_of(Proto::Tcp, 4000, 80));
    let out = if s.dsr {
        dsr_frame(&input, dmac, n.mac)
    } else {
        let hash = packet_hash(src, 4000, vip, 80, Proto::Tcp);
        encapsulated(&input, input.len() - 14, be, hash, dmac, n.mac)
    };
    (input, out)
}

/// Runs each service's frame once: redirected, byte for byte what goes to
/// neighbour `dmac`.
fn forwards_to(dp: &mut Datapath, n: &Net, svcs: &[Svc], dmac: [u8; 6], when: &str) {
    for s in svcs {
        let (input, out) = expected(n, s, dmac);
        let (action, got) = run(dp, &input);
        assert_eq!(action, XDP_REDIRECT, "{}: {when}", s.id);
        same(&got, &out, &format!("{}: {when}", s.id));
    }
}

/// `ip neigh replace ADDR lladdr MAC dev lbt0 nud permanent`.
fn set_neighbour(n: &Net, addr: &str, mac: &[u8; 6]) {
    n.ns.exec(
        "ip",
        &[
            "neigh",
            "replace",
            addr,
            "lladdr",
            &fmt_mac(mac),
            "dev",
            LBT0,
            "nud",
            "permanent",
        ],
    )
    .unwrap_or_else(|e| panic!("neighbour {addr}: {e}"));
}

/// The frame L2 DSR makes of `input`: only the MACs change.
fn dsr_frame(input: &[u8], dmac: [u8; 6], smac: [u8; 6]) -> Vec<u8> {
    let mut want = input.to_vec();
    want[..6].copy_from_slice(&dmac);
    want[6..12].copy_from_slice(&smac);
    want
}

/// The next-hop cache: a frame run twice (the second time with the next hop
/// the first run cached) comes out byte for byte the same, as written out
/// independently, for every family pair and L2 DSR, and counts the same;
/// failed lookups (no neighbour, no route, off-link) are never cached, so
/// the next hop appearing is used at once.
#[test]
fn next_hop_cache_forwards_like_the_lookup() {
    let _g = serial();
    let n = net("lbhop");
    n.ns.run(|| {
        pin_to_current_cpu();
        let mut dp = load();
        let mut ctl = LbController::new(&dp, vec![LO]);
        let mut all = specs(&SIX);
        all.extend([
            // Behind the gateway .2 (its route is added below).
            spec("192.0.2.30:80/tcp", Forward::Encap, &[("10.201.0.1", 1)]),
            // No neighbour yet.
            spec("192.0.2.31:80/tcp", Forward::Encap, &[("10.200.9.77", 1)]),
            spec(
                "[2001:db8::31]:80/tcp",
                Forward::Encap,
                &[("fd00:200:9::77", 1)],
            ),
            spec("192.0.2.32:80/tcp", Forward::L2dsr, &[("10.200.9.78", 1)]),
        ]);
        ctl.apply(&mut dp, &all).expect("apply");

        let (mut n4, mut n6) = (0, 0);
        let mut cached = 0;
        for s in &SIX {
            let (input, want) = expected(&n, s, mac_of(ip(s.backend)));
            let start = Instant::now();
            let (a1, first) = run(&mut dp, &input);
            let (a2, second) = run(&mut dp, &input);
            if within_lifetime(start) {
                cached += 1;
            }
            let svc = s.id;
            assert_eq!((a1, a2), (XDP_REDIRECT, XDP_REDIRECT), "{svc}");
            same(&first, &want, &format!("{svc}: first run (lookup)"));
            same(&second, &first, &format!("{svc}: second run (cached)"));
            let bytes = 2 * input.len() as u64;
            assert_eq!(service_counts(&ctl, &dp, svc), (2, 0, 0), "{svc}");
            assert_eq!(
                backend_counts(&ctl, &dp, svc, s.backend),
                (2, bytes),
                "{svc}"
            );
            if sid(svc).vip.is_ipv4() {
                n4 += 2;
            } else {
                n6 += 2;
            }
        }
        eprintln!("{cached} of 6 second runs within the first one's next-hop lifetime");
        assert_eq!(action_packets(&dp, "ipv4", "redirect"), n4);
        assert_eq!(action_packets(&dp, "ipv6", "redirect"), n6);
        assert!(reasons(&dp).values().all(|n| *n == 0), "{:?}", reasons(&dp));

        // Failures are not cached: no route, then the route; no neighbour
        // (slow path, or dropped for L2 DSR), then the neighbour.
        let src = ip("198.51.100.7");
        let input = frame(
            src,
            sid("192.0.2.30:80/tcp").vip,
            &l4_of(Proto::Tcp, 4000, 80),
        );
        for _ in 0..2 {
            assert_eq!(run(&mut dp, &input).0, XDP_DROP, "no route yet");
        }
        assert_eq!(reason_packets(&dp, DropReason::LbNoRoute), 2);
        n.ns.exec(
            "ip",
            &["route", "add", "10.201.0.0/24", "via", "10.200.9.2"],
        )
        .expect("route");
        let (action, got) = run(&mut dp, &input);
        assert_eq!(action, XDP_REDIRECT, "the route, at once");
        assert_eq!(outer_dst(&got), ip("10.201.0.1"));
        assert_eq!(got[..6], MAC2, "the gateway's MAC");

        const MAC77: [u8; 6] = [0x02, 0, 0, 0, 0x09, 0x77];
        for (svc, client, backend) in [
            ("192.0.2.31:80/tcp", "198.51.100.7", "10.200.9.77"),
            ("[2001:db8::31]:80/tcp", "2001:db8:1::7", "fd00:200:9::77"),
        ] {
            let (src, vip, be) = (ip(client), sid(svc).vip, ip(backend));
            let input = frame(src, vip, &l4_of(Proto::Tcp, 4000, 80));
            let hash = packet_hash(src, 4000, vip, 80, Proto::Tcp);
            for _ in 0..2 {
                let want = encapsulated(&input, input.len() - 14, be, hash, IN_DST, IN_SRC);
                let (action, got) = run(&mut dp, &input);
                assert_eq!(action, XDP_PASS, "{svc}: slow path");
                same(&got, &want, svc);
            }
            set_neighbour(&n, backend, &MAC77);
            let want = encapsulated(&input, input.len() - 14, be, hash, MAC77, n.mac);
            let (action, got) = run(&mut dp, &input);
            assert_eq!(action, XDP_REDIRECT, "{svc}: the neighbour, at once");
            same(&got, &want, svc);
            assert_eq!(service_counts(&ctl, &dp, svc), (1, 2, 0), "{svc}");
        }
        let svc = "192.0.2.32:80/tcp";
        let input = frame(src, sid(svc).vip, &l4_of(Proto::Tcp, 4000, 80));
        for _ in 0..2 {
            assert_eq!(run(&mut dp, &input).0, XDP_DROP, "{svc}: no neighbour yet");
        }
        assert_eq!(reason_packets(&dp, DropReason::LbNoNeighbor), 2);
        set_neighbour(&n, "10.200.9.78", &MAC77);
        let (action, got) = run(&mut dp, &input);
        assert_eq!(action, XDP_REDIRECT, "{svc}: the neighbour, at once");
        same(&got, &dsr_frame(&input, MAC77, n.mac), svc);

        // A route's MTU below the device's (locked, so the FIB lookup
        // applies it): a next hop cached by a short packet serves packets
        // only up to the length its lookup checked; longer ones are looked
        // up again, and dropped as too big beyond the route's MTU.
        for args in [
            &[
                "route",
                "add",
                "10.200.60.0/24",
                "via",
                "10.200.9.2",
                "mtu",
                "lock",
                "1300",
            ][..],
            &[
                "-6",
                "route",
                "add",
                "fd00:200:60::/64",
                "via",
                "fd00:200:9::2",
                "mtu",
                "lock",
                "1300",
            ][..],
        ] {
            n.ns.exec("ip", args)
                .unwrap_or_else(|e| panic!("ip {}: {e}", args.join(" ")));
        }
        ctl.apply(
            &mut dp,
            &[
                spec("192.0.2.40:80/tcp", Forward::Encap, &[("10.200.60.5", 1)]),
                spec(
                    "[2001:db8::40]:80/tcp",
                    Forward::Encap,
                    &[("fd00:200:60::5", 1)],
                ),
            ],
        )
        .expect("apply");
        let tcp_of = |ip_len: usize, hdr: usize| {
            let payload = vec![0x5a; ip_len - hdr - Transport::TCP_LEN];
            Transport::tcp(4000, 80).payload(&payload)
        };
        let mut too_big = 0;
        for (svc, client, outer_hdr) in [
            ("192.0.2.40:80/tcp", "198.51.100.7", 20),
            ("[2001:db8::40]:80/tcp", "2001:db8:1::7", 40),
        ] {
            let (src, vip) = (ip(client), sid(svc).vip);
            let hdr = if src.is_ipv4() { 20 } else { 40 };
            // Inner lengths: short, then outer packets of 1300 and 1301 bytes.
            let (short, fits) = (100, 1300 - outer_hdr);
            for (len, want) in [
                (short, XDP_REDIRECT),
                (short, XDP_REDIRECT),
                (fits + 1, XDP_DROP),
                (fits, XDP_REDIRECT),
                (fits + 1, XDP_DROP),
                (fits, XDP_REDIRECT),
                (short, XDP_REDIRECT),
            ] {
                let input = frame(src, vip, &tcp_of(len, hdr));
                let (action, got) = run(&mut dp, &input);
                assert_eq!(action, want, "{svc}: inner packet of {len} bytes");
                if action == XDP_REDIRECT {
                    assert_eq!(got[..6], MAC2, "{svc}: the gateway's MAC");
                } else {
                    too_big += 1;
                }
            }
            assert_eq!(service_counts(&ctl, &dp, svc), (5, 0, 2), "{svc}");
        }
        assert_eq!(reason_packets(&dp, DropReason::LbTooBig), too_big);
    });
}

/// Without a daemon (nothing moves the routing generation), a neighbour's
/// new MAC address is used once the cached next hop's lifetime has passed;
/// within it the cached one may still be (and, when provably within it, is:
/// the runs use the cache).
#[test]
fn next_hop_cache_follows_a_neighbour_change_without_a_daemon() {
    let _g = serial();
    let n = net("lbneigh");
    n.ns.run(|| {
        pin_to_current_cpu();
        let mut dp = load();
        let mut ctl = LbController::new(&dp, vec![LO]);
        ctl.apply(&mut dp, &specs(&FOUR)).expect("apply");
        let start = Instant::now();
        forwards_to(&mut dp, &n, &FOUR, MAC2, "before the change");
        set_neighbour(&n, "10.200.9.2", &NEW);
        set_neighbour(&n, "fd00:200:9::2", &NEW);
        let changed = Instant::now();
        // Within the lifetime: the old MAC (cached) or the new one (expired
        // or not cached) are both correct; when the run provably happened
        // within the lifetime, it is the cached old one.
        for s in &FOUR {
            let (input, _) = expected(&n, s, MAC2);
            let (action, got) = run(&mut dp, &input);
            assert_eq!(action, XDP_REDIRECT, "{}", s.id);
            let fresh = within_lifetime(start);
            assert!(
                got[..6] == MAC2 || got[..6] == NEW,
                "{}: destination MAC {}",
                s.id,
                hex(&got[..6])
            );
            if fresh {
                assert_eq!(
                    got[..6],
                    MAC2,
                    "{}: within the lifetime, the cached MAC",
                    s.id
                );
            }
            eprintln!(
                "{}: right after the change (cached next hop {}): {}",
                s.id,
                if fresh { "live" } else { "maybe expired" },
                fmt_mac(&got[..6].try_into().unwrap())
            );
        }
        std::thread::sleep(past_lifetime().saturating_sub(changed.elapsed()));
        for round in ["first", "second"] {
            forwards_to(
                &mut dp,
                &n,
                &FOUR,
                NEW,
                &format!("after the lifetime, {round} run"),
            );
        }
    });
}

/// With the daemon's task moving the routing generation (on rtnetlink
/// notifications only here: its period is an hour), a neighbour's new MAC
/// address is used by the first packet after the generation moved, also
/// while the next hop cached before the change is provably within its
/// lifetime.
#[test]
fn next_hop_cache_follows_a_neighbour_change_when_the_generation_moves() {
    let _g = serial();
    let n = net("lbgen");
    n.ns.run(|| {
        pin_to_current_cpu();
        let mut dp = load();
        let mut ctl = LbController::new(&dp, vec![LO]);
        ctl.apply(&mut dp, &specs(&FOUR)).expect("apply");
        let mut word = dp.route_generation().expect("map the generation");
        let task_word = dp.route_generation().expect("map the generation");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            // Subscribed here, in the test's namespace, before any change.
            let events = RouteEvents::open().expect("subscribe to rtnetlink");
            let stop = CancellationToken::new();
            let task = tokio::spawn(route_watch::run(
                task_word,
                Some(events),
                Duration::from_secs(3600),
                stop.clone(),
            ));
            let start = Instant::now();
            forwards_to(&mut dp, &n, &FOUR, MAC2, "before the change");
            let before = word.get();
            set_neighbour(&n, "10.200.9.2", &NEW);
            set_neighbour(&n, "fd00:200:9::2", &NEW);
            // Bounded wait for the task to read the notifications.
            let waited = Instant::now();
            while word.get() == before {
                assert!(
                    waited.elapsed() < Duration::from_secs(5),
                    "the generation did not move within 5 s of the change"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let fresh = within_lifetime(start);
            forwards_to(&mut dp, &n, &FOUR, NEW, "once the generation moved");
            eprintln!(
                "generation {before} -> {} after {:?}; the entries cached before were {}",
                word.get(),
                waited.elapsed(),
                if fresh {
                    "provably within their lifetime"
                } else {
                    "maybe expired"
                }
            );
            stop.cancel();
            task.await.expect("the task ends when stopped");
        });
    });
}

/// A backend slot freed and reused for another address does not use the
/// next hop cached for the old one (the cache entry is for an address).
#[test]
fn next_hop_cache_not_reused_with_the_slot() {
    let _g = serial();
    let n = net("lbslot");
    n.ns.run(|| {
        pin_to_current_cpu();
        let mut dp = load();
        let mut ctl = LbController::new(&dp, vec![LO]);
        let one = "192.0.2.10:80/tcp";
        let two = "192.0.2.11:80/tcp";
        let (src, sport) = (ip("198.51.100.7"), 4000);
        let check = |dp: &mut Datapath, svc: &str, backend: &str| {
            let (vip, be) = (sid(svc).vip, ip(backend));
            let input = frame(src, vip, &l4_of(Proto::Tcp, sport, 80));
            let hash = packet_hash(src, sport, vip, 80, Proto::Tcp);
            let want = encapsulated(&input, input.len() - 14, be, hash, mac_of(be), n.mac);
            let (action, got) = run(dp, &input);
            assert_eq!(action, XDP_REDIRECT, "{svc} via {backend}");
            same(&got, &want, &format!("{svc} via {backend}"));
        };
        ctl.apply(&mut dp, &[spec(one, Forward::Encap, &[("10.200.9.2", 1)])])
            .expect("apply");
        let start = Instant::now();
        check(&mut dp, one, "10.200.9.2");
        // The backend is replaced: .2's slot is freed (after the update),
        // .3 gets a fresh one.
        ctl.apply(&mut dp, &[spec(one, Forward::Encap, &[("10.200.9.3", 1)])])
            .expect("replace the backend");
        check(&mut dp, one, "10.200.9.3");
        // A new service's backend gets the freed slot first (the
        // controller's free list), with another address, the same family
        // and mode as the entry cached for .2.
        ctl.apply(
            &mut dp,
            &[
                spec(one, Forward::Encap, &[("10.200.9.3", 1)]),
                spec(two, Forward::Encap, &[("10.200.9.3", 1)]),
            ],
        )
        .expect("add a service");
        let live = within_lifetime(start);
        check(&mut dp, two, "10.200.9.3");
        eprintln!(
            "reused slot checked {} the old next hop's lifetime",
            if live { "within" } else { "maybe after" }
        );
        let len = frame(src, sid(two).vip, &l4_of(Proto::Tcp, sport, 80)).len() as u64;
        assert_eq!(backend_counts(&ctl, &dp, two, "10.200.9.3"), (1, len));
    });
}

/// Without a daemon, a lowered MTU of the egress device applies to cached
/// next hops once their lifetime has passed (the cache does not call
/// `bpf_check_mtu` per packet):
/// then a packet over the new MTU is dropped as too big, like without the
/// cache, and a packet under it is forwarded.
#[test]
fn next_hop_cache_follows_a_lowered_device_mtu() {
    let _g = serial();
    let n = net("lbmtu");
    n.ns.run(|| {
        pin_to_current_cpu();
        let mut dp = load();
        let mut ctl = LbController::new(&dp, vec![LO]);
        ctl.apply(
            &mut dp,
            &[
                spec("192.0.2.50:80/tcp", Forward::Encap, &[("10.200.9.2", 1)]),
                spec(
                    "[2001:db8::50]:80/tcp",
                    Forward::Encap,
                    &[("fd00:200:9::2", 1)],
                ),
            ],
        )
        .expect("apply");
        let tcp_of = |ip_len: usize, hdr: usize| {
            let payload = vec![0x5a; ip_len - hdr - Transport::TCP_LEN];
            Transport::tcp(4000, 80).payload(&payload)
        };
        // (service, client, outer header): inner packets whose outer packet
        // is 1400 bytes (over the new MTU) and 1200 (under it).
        let cases = [
            ("192.0.2.50:80/tcp", "198.51.100.7", 20),
            ("[2001:db8::50]:80/tcp", "2001:db8:1::7", 40),
        ];
        let input = |svc: &str, client: &str, outer: usize, len: usize| {
            let (src, vip) = (ip(client), sid(svc).vip);
            let hdr = if src.is_ipv4() { 20 } else { 40 };
            frame(src, vip, &tcp_of(len - outer, hdr))
        };
        for (svc, client, outer) in cases {
            let (action, _) = run(&mut dp, &input(svc, client, outer, 1400));
            assert_eq!(action, XDP_REDIRECT, "{svc}: 1400 bytes under MTU 1500");
        }
        n.ns.exec("ip", &["link", "set", LBT0, "mtu", "1300"])
            .expect("lowering the MTU");
        std::thread::sleep(past_lifetime());
        for (svc, client, outer) in cases {
            let (action, _) = run(&mut dp, &input(svc, client, outer, 1400));
            assert_eq!(action, XDP_DROP, "{svc}: 1400 bytes over MTU 1300");
            let (action, _) = run(&mut dp, &input(svc, client, outer, 1200));
            assert_eq!(action, XDP_REDIRECT, "{svc}: 1200 bytes under MTU 1300");
        }
        assert_eq!(reason_packets(&dp, DropReason::LbTooBig), 2);
    });
}

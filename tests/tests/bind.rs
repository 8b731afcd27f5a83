//! Address bindings (`xdpgate::bind`) with real packets in a network-namespace
//! lab, plus `BPF_PROG_TEST_RUN` fixtures of the `not_bound` verdict.
//!
//! The library is driven directly inside the lab's namespace `a`: the datapath
//! is loaded, the lab veth registered as slot 1 and the program attached to it
//! in native mode; `Bindings` adds and removes addresses on that veth. Traffic
//! comes from namespace `b`, over the veth pair only.
use std::{
    collections::BTreeMap,
    net::{IpAddr, UdpSocket},
    time::Duration,
};

use xdpgate::{
    bind::{BindError, Bindings},
    datapath::{Datapath, stats},
};
use xdpgate_common::{DropReason, maps};
use xdpgate_model::{
    bind::{self, BindRequest, Origin},
    iface::{Malformed, XdpMode},
};
use xdpgate_tests::{
    lab::{Lab, Netns, serial},
    packet::{Ethernet, Ipv4, Ipv6, Transport, ethertype, hex},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn req(iface: &str, spec: &str) -> BindRequest {
    BindRequest {
        iface: iface.into(),
        spec: spec.into(),
        plen: None,
        nodad: true,
    }
}

/// Every address on `ifname` in `ns` (from `ip -j addr`), with how often it
/// appears.
fn kernel_addrs(ns: &Netns, ifname: &str) -> BTreeMap<IpAddr, usize> {
    let out = ns
        .exec("ip", &["-j", "addr", "show", "dev", ifname])
        .expect("ip -j addr");
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
    let mut m = BTreeMap::new();
    for link in v.as_array().expect("array") {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            let ip: IpAddr = a["local"].as_str().expect("local").parse().unwrap();
            *m.entry(ip).or_default() += 1;
        }
    }
    m
}

/// Packets counted under `reason` on the interface with `ifindex`.
fn reason_packets(dp: &Datapath, ifindex: u32, reason: DropReason) -> u64 {
    let report = stats::collect(
        dp.map(maps::IFACES).unwrap(),
        dp.map(maps::STATS).unwrap(),
        dp.map(maps::REASONS).unwrap(),
    )
    .expect("counters");
    report
        .malformed
        .iter()
        .filter(|r| r.ifindex == ifindex && r.reason == reason.name())
        .map(|r| r.packets)
        .sum()
}

/// The datapath map's addresses (all slots), sorted.
fn map_addrs(dp: &mut Datapath) -> Vec<(u32, IpAddr)> {
    let mut v: Vec<(u32, IpAddr)> = dp
        .local_addrs()
        .expect("local addrs")
        .into_iter()
        .map(|k| {
            let a = if k.family == xdpgate_common::LOCAL_ADDR_V4 {
                IpAddr::from(<[u8; 4]>::try_from(&k.addr[..4]).unwrap())
            } else {
                IpAddr::from(k.addr)
            };
            (k.slot, a)
        })
        .collect();
    v.sort();
    v
}

fn ping(ns: &Netns, addr: &str) -> bool {
    ns.command("ping")
        .args(["-c", "1", "-W", "2", addr])
        .output()
        .expect("run ping")
        .status
        .success()
}

/// Sends `n` UDP datagrams from `ns` to `addr:port`.
fn send_udp(ns: &Netns, addr: &str, port: u16, n: usize) {
    let addr: IpAddr = addr.parse().unwrap();
    ns.run(|| {
        let local = if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let s = UdpSocket::bind(local).expect("udp socket");
        for i in 0..n {
            s.send_to(format!("bind test {i}").as_bytes(), (addr, port))
                .expect("send");
        }
    });
}

/// A veth lab with the datapath attached natively to `a`'s end (slot 1).
fn attach(lab: &Lab) -> Datapath {
    let mut dp = Datapath::load().expect("load the XDP program");
    dp.register(lab.a_end.ifindex, 1, Malformed::Drop)
        .expect("register");
    dp.attach(&lab.a_end.ifname, lab.a_end.ifindex, XdpMode::Native)
        .expect("attach native");
    dp
}

/// Static neighbour on `b` for an address `a` does not own, so traffic to it
/// leaves `b` without ARP/NDP and reaches the XDP program on `a`.
fn static_neigh(lab: &Lab, addr: &str) {
    let mac = lab
        .a_end
        .mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    lab.b
        .exec(
            "ip",
            &[
                "neigh",
                "replace",
                addr,
                "lladdr",
                &mac,
                "dev",
                &lab.b_end.ifname,
                "nud",
                "permanent",
            ],
        )
        .expect("ip neigh");
}

#[test]
fn bind_adopt_drop_unbound_and_delete() {
    let _g = serial();
    let lab = Lab::new("bind", 50).expect("lab");
    let ifname = lab.a_end.ifname.clone();
    let ifindex = lab.a_end.ifindex;
    // Two pre-existing addresses of each family (one with another prefix
    // length). The bound ranges leave out the lab's own addresses (.1, .2):
    // binding b's address on a would break the lab.
    for (a, extra) in [
        ("10.200.50.17/32", None),
        ("10.200.50.18/24", None),
        ("fd00:200:50::11/128", Some("nodad")),
        ("fd00:200:50::12/64", Some("nodad")),
    ] {
        let mut args = vec!["addr", "add", a, "dev", &ifname];
        args.extend(extra);
        lab.a.exec("ip", &args).unwrap();
    }
    let before = kernel_addrs(&lab.a, &ifname);

    lab.a.run(|| {
        let mut dp = attach(&lab);
        let mut b = Bindings::new(bind::DEFAULT_LIMIT);
        let reqs = [
            req(&ifname, "10.200.50.16/28"),
            req(&ifname, "fd00:200:50::10/124"),
        ];
        let r = b.add(&mut dp, &reqs).expect("bind");
        // Two of each family were there already.
        assert_eq!((r.added, r.adopted, r.total), (28, 4, 32), "{r}");
        for a in [
            "10.200.50.17",
            "10.200.50.18",
            "fd00:200:50::11",
            "fd00:200:50::12",
        ] {
            let a: IpAddr = a.parse().unwrap();
            let got = b.list().iter().find(|x| x.addr == a).expect("bound");
            assert_eq!(got.origin, Origin::Adopted, "{a}");
        }
        let now = kernel_addrs(&lab.a, &ifname);
        for i in 16..32 {
            for a in [format!("10.200.50.{i}"), format!("fd00:200:50::{i:x}")] {
                let a: IpAddr = a.parse().unwrap();
                assert_eq!(
                    now.get(&a),
                    Some(&1),
                    "{a} must be on {ifname} exactly once"
                );
            }
        }
        assert_eq!(map_addrs(&mut dp).len(), 32);
        assert!(map_addrs(&mut dp).iter().all(|(slot, _)| *slot == 1));
        assert_eq!(
            b.counts(),
            vec![(ifname.clone(), "ipv4", 16), (ifname.clone(), "ipv6", 16)]
        );

        // Binding again changes nothing and duplicates nothing.
        let r = b.add(&mut dp, &reqs).expect("bind again");
        assert_eq!((r.added, r.adopted, r.unchanged, r.total), (0, 0, 32, 32));
        assert_eq!(kernel_addrs(&lab.a, &ifname), now);

        // Drop-unbound: bound destinations answer, others are dropped.
        b.set_drop_unbound(&mut dp, &ifname, true).expect("flag");
        // IPv6 first: the neighbour of fd00:200:50::15 is resolved by NDP
        // (multicast solicitation), which must get through.
        assert!(ping(&lab.b, "fd00:200:50::15"), "ping6 to a bound address");
        assert!(ping(&lab.b, "10.200.50.21"), "ping to a bound address");
        // UDP to a bound address arrives.
        let rx = UdpSocket::bind("10.200.50.22:7001").expect("listen");
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        send_udp(&lab.b, "10.200.50.22", 7001, 1);
        let mut buf = [0u8; 64];
        rx.recv(&mut buf).expect("datagram to a bound address");

        // Unbound destinations in the same subnets: dropped and counted.
        static_neigh(&lab, "10.200.50.40");
        static_neigh(&lab, "fd00:200:50::40");
        let n0 = reason_packets(&dp, ifindex, DropReason::NotBound);
        send_udp(&lab.b, "10.200.50.40", 7002, 7);
        std::thread::sleep(Duration::from_millis(200));
        let n1 = reason_packets(&dp, ifindex, DropReason::NotBound);
        assert_eq!(n1 - n0, 7, "IPv4 datagrams to an unbound address");
        send_udp(&lab.b, "fd00:200:50::40", 7002, 5);
        std::thread::sleep(Duration::from_millis(200));
        let n2 = reason_packets(&dp, ifindex, DropReason::NotBound);
        assert_eq!(n2 - n1, 5, "IPv6 datagrams to an unbound address");
        assert!(!ping(&lab.b, "10.200.50.40"));
        assert_eq!(
            reason_packets(&dp, ifindex, DropReason::NotBound) - n2,
            1,
            "the echo request is the only packet dropped"
        );
        // Flag off: the kernel gets unbound traffic again (and ignores it).
        b.set_drop_unbound(&mut dp, &ifname, false).expect("flag");
        let n3 = reason_packets(&dp, ifindex, DropReason::NotBound);
        send_udp(&lab.b, "10.200.50.40", 7002, 3);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(reason_packets(&dp, ifindex, DropReason::NotBound), n3);

        // Delete: added addresses vanish, adopted ones stay.
        let r = b.del(&mut dp, &reqs).expect("unbind");
        assert_eq!((r.removed, r.released, r.total), (28, 4, 0), "{r}");
        assert_eq!(kernel_addrs(&lab.a, &ifname), before);
        assert!(map_addrs(&mut dp).is_empty());
        assert!(b.list().is_empty());

        // Unbinding what is not bound is refused.
        let e = b.del(&mut dp, &[req(&ifname, "10.200.50.9")]).unwrap_err();
        assert!(matches!(e, BindError::Invalid(_)), "{e}");
    });
}

#[test]
fn failures_leave_addresses_and_map_unchanged() {
    let _g = serial();
    let lab = Lab::new("bindfail", 51).expect("lab");
    let ifname = lab.a_end.ifname.clone();
    let before = kernel_addrs(&lab.a, &ifname);
    lab.a.run(|| {
        let mut dp = attach(&lab);
        let mut b = Bindings::new(100);
        let first = b
            .add(&mut dp, &[req(&ifname, "10.200.51.100-10.200.51.101")])
            .expect("bind two");
        assert_eq!(first.added, 2);
        let with_two = kernel_addrs(&lab.a, &ifname);
        let map_two = map_addrs(&mut dp);

        // Validation: every problem at once, nothing changed.
        let e = b
            .add(
                &mut dp,
                &[
                    req(&ifname, "10.200.51.5/24"),
                    req(&ifname, "10.200.51.0/24"),
                    req("xg-no-such-if", "10.200.51.7"),
                    req(&ifname, "10.200.51.9-10.200.51.8"),
                ],
            )
            .unwrap_err();
        match &e {
            BindError::Invalid(errs) => {
                assert_eq!(errs.len(), 4, "{e}");
                let s = e.to_string();
                assert!(
                    s.contains("to bind the whole prefix write 10.200.51.0/24"),
                    "{s}"
                );
                assert!(
                    s.contains("256 addresses, more than the limit of 100"),
                    "{s}"
                );
                assert!(s.contains("xg-no-such-if is not an interface xdpgate is attached to"));
            }
            other => panic!("expected Invalid, got {other}"),
        }

        // A failure midway (injected at the 20th new address, IPv6): the 19
        // added before it are removed again.
        b.inject_failure(19);
        let e = b
            .add(
                &mut dp,
                &[
                    req(&ifname, "10.200.51.16/28"),
                    req(&ifname, "fd00:200:51::10/124"),
                ],
            )
            .unwrap_err();
        assert!(e.to_string().contains("injected failure"), "{e}");
        assert!(e.to_string().contains(&ifname), "{e}");
        assert_eq!(kernel_addrs(&lab.a, &ifname), with_two);
        assert_eq!(map_addrs(&mut dp), map_two);
        assert_eq!(b.list().len(), 2);

        // A real kernel refusal: IPv6 disabled on the interface. The IPv4
        // addresses of the same request are rolled back.
        lab.a
            .sysctl(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "1")
            .unwrap();
        let without_v6 = kernel_addrs(&lab.a, &ifname);
        let e = b
            .add(
                &mut dp,
                &[
                    req(&ifname, "10.200.51.16/28"),
                    req(&ifname, "fd00:200:51::10/124"),
                ],
            )
            .unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("cannot add address fd00:200:51::") && s.contains(&ifname),
            "{s}"
        );
        assert_eq!(kernel_addrs(&lab.a, &ifname), without_v6);
        assert_eq!(map_addrs(&mut dp), map_two);
        lab.a
            .sysctl(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "0")
            .unwrap();
        // Disabling IPv6 took the lab's own IPv6 address along.
        lab.a
            .exec(
                "ip",
                &["addr", "add", "fd00:200:51::1/64", "dev", &ifname, "nodad"],
            )
            .unwrap();

        // Declarative replace: {100, 101} -> {101, 102}.
        let r = b
            .replace(&mut dp, &[req(&ifname, "10.200.51.101-10.200.51.102")])
            .expect("replace");
        assert_eq!(
            (r.added, r.removed, r.unchanged, r.total),
            (1, 1, 1, 2),
            "{r}"
        );
        let now = kernel_addrs(&lab.a, &ifname);
        assert!(!now.contains_key(&"10.200.51.100".parse::<IpAddr>().unwrap()));
        assert!(now.contains_key(&"10.200.51.102".parse::<IpAddr>().unwrap()));

        // Restore in a "new run": ownership kept; a vanished address is
        // added again.
        let saved = b.list().to_vec();
        lab.a
            .exec("ip", &["addr", "del", "10.200.51.102/32", "dev", &ifname])
            .unwrap();
        let mut dp2 = attach_again(dp, &lab);
        let mut b2 = Bindings::new(100);
        let r = b2.restore(&mut dp2, saved.clone()).expect("restore");
        assert_eq!((r.readded, r.unchanged, r.total), (1, 1, 2), "{r}");
        assert_eq!(b2.list(), &saved[..]);
        assert_eq!(map_addrs(&mut dp2).len(), 2);
        let r = b2.replace(&mut dp2, &[]).expect("replace with nothing");
        assert_eq!(r.removed, 2);
        assert_eq!(kernel_addrs(&lab.a, &ifname), before);
    });
}

/// Drops `dp` (detaching it) and loads a fresh datapath, as a restart does.
fn attach_again(dp: Datapath, lab: &Lab) -> Datapath {
    drop(dp);
    attach(lab)
}

/// `BPF_PROG_TEST_RUN` fixtures of the not_bound verdict on `lo` (slot 1) of
/// a fresh namespace.
#[test]
fn not_bound_fixtures() {
    let _g = serial();
    let ns = Netns::new("bindfix").unwrap();
    ns.run(|| {
        let mut dp = Datapath::load().expect("load");
        dp.register(1, 1, Malformed::Pass).expect("register lo");
        let bound4 = [10, 200, 52, 1];
        let bound6 = {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[0xfd, 0, 2, 0]);
            a[15] = 1;
            a
        };
        dp.insert_local_addrs(&[
            bind::key(1, IpAddr::from(bound4)),
            bind::key(1, IpAddr::from(bound6)),
        ])
        .unwrap();
        let src4 = [10, 200, 52, 2];
        let src6 = {
            let mut a = bound6;
            a[15] = 2;
            a
        };
        let udp = Transport::udp(1000, 53).bytes();
        let v4 = |dst: [u8; 4]| {
            Ethernet::new(ethertype::IPV4).build(&Ipv4::new(src4, dst, 17).build(&udp))
        };
        let v6 = |dst: [u8; 16]| {
            Ethernet::new(ethertype::IPV6).build(&Ipv6::new(src6, dst, 17).build(&udp))
        };
        let v6_of = |s: &str| match s.parse::<IpAddr>().unwrap() {
            IpAddr::V6(a) => a.octets(),
            _ => unreachable!(),
        };
        // An IPv4 address whose bytes equal the start of the bound IPv6 one
        // must not match it (family is part of the key).
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("v4 bound", v4(bound4), true),
            ("v4 unbound", v4([10, 200, 52, 9]), false),
            ("v4 same bytes as the v6 key", v4([0xfd, 0, 2, 0]), false),
            ("v4 multicast", v4([224, 0, 0, 251]), true),
            ("v4 multicast top", v4([239, 255, 255, 250]), true),
            ("v4 limited broadcast", v4([255, 255, 255, 255]), true),
            ("v4 link-local", v4([169, 254, 1, 1]), true),
            (
                "v4 subnet broadcast (unbound)",
                v4([10, 200, 52, 255]),
                false,
            ),
            ("v6 bound", v6(bound6), true),
            ("v6 unbound", v6(v6_of("fd00:200::9")), false),
            ("v6 multicast", v6(v6_of("ff02::1")), true),
            ("v6 solicited-node", v6(v6_of("ff02::1:ff00:1")), true),
            ("v6 link-local", v6(v6_of("fe80::1")), true),
            ("v6 link-local top", v6(v6_of("febf::1")), true),
            ("v6 just past link-local", v6(v6_of("fec0::1")), false),
            ("arp", Ethernet::new(ethertype::ARP).build(&[0u8; 28]), true),
        ];
        let malformed = Ethernet::new(ethertype::IPV4)
            .build(&Ipv4::new(src4, [10, 200, 52, 9], 17).ihl(4).build(&udp));
        for (flag, policy) in [
            (true, Malformed::Pass),
            (true, Malformed::Drop),
            (false, Malformed::Pass),
        ] {
            dp.register(1, 1, policy).unwrap();
            dp.set_drop_unbound(1, flag).unwrap();
            for (name, frame, pass) in &cases {
                let before = reason_packets(&dp, 1, DropReason::NotBound);
                let got = dp.test_run(frame, 3).expect("test run").action;
                let dropped = flag && !pass;
                let want = if dropped { XDP_DROP } else { XDP_PASS };
                assert_eq!(
                    got,
                    want,
                    "{name} (flag {flag}, {policy:?}): {}",
                    hex(frame)
                );
                let counted = reason_packets(&dp, 1, DropReason::NotBound) - before;
                assert_eq!(counted, if dropped { 3 } else { 0 }, "{name}");
            }
            // A malformed frame to an unbound address counts as malformed only.
            let bad_before = reason_packets(&dp, 1, DropReason::BadIpv4Header);
            let nb_before = reason_packets(&dp, 1, DropReason::NotBound);
            let got = dp.test_run(&malformed, 1).unwrap().action;
            let want = match policy {
                Malformed::Pass => XDP_PASS,
                Malformed::Drop => XDP_DROP,
            };
            assert_eq!(got, want);
            assert_eq!(
                reason_packets(&dp, 1, DropReason::BadIpv4Header) - bad_before,
                1
            );
            assert_eq!(reason_packets(&dp, 1, DropReason::NotBound), nb_before);
        }
        // Re-registering keeps the flag.
        dp.set_drop_unbound(1, true).unwrap();
        dp.register(1, 1, Malformed::Drop).unwrap();
        assert_eq!(
            dp.test_run(&v4([10, 200, 52, 9]), 1).unwrap().action,
            XDP_DROP
        );
    });
}

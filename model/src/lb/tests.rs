//! Unit tests of the load balancer's model.
use super::*;
use xdpgate_common::lb::FlowHash;

#[test]
fn service_ids_parse_and_print() {
    for (text, shown) in [
        ("192.0.2.10:80/tcp", "192.0.2.10:80/tcp"),
        ("[2001:db8::10]:443/tcp", "[2001:db8::10]:443/tcp"),
        ("192.0.2.10/udp", "192.0.2.10:*/udp"),
        ("192.0.2.10:*/udp", "192.0.2.10:*/udp"),
        ("2001:db8::10/sctp", "[2001:db8::10]:*/sctp"),
        ("[2001:db8::10]/tcp", "[2001:db8::10]:*/tcp"),
        ("[::ffff:192.0.2.1]:53/udp", "192.0.2.1:53/udp"),
    ] {
        let id: ServiceId = text.parse().unwrap();
        assert_eq!(id.to_string(), shown, "{text}");
        assert_eq!(shown.parse::<ServiceId>().unwrap(), id);
    }
    for bad in [
        "192.0.2.10:80",
        "192.0.2.10:80/icmp",
        "192.0.2.10:70000/tcp",
        "192.0.2.10:0/tcp",
        "0.0.0.0:80/tcp",
        "[2001:db8::1:80/tcp",
        "example.com:80/tcp",
    ] {
        assert!(bad.parse::<ServiceId>().is_err(), "{bad} accepted");
    }
}

#[test]
fn backends_parse_with_weights() {
    let t: Vec<String> = ["10.200.2.2", "fd00:200:2::3", "weight=2"]
        .iter()
        .map(ToString::to_string)
        .collect();
    let b = parse_backends(&t).unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].weight, 1);
    assert_eq!(b[1].weight, 2);
    assert!(parse_backends(&["weight=2".into()]).is_err());
    assert!(parse_backends(&["10.0.0.1".into(), "weight=x".into()]).is_err());
    assert!(parse_backends(&["host".into()]).is_err());
}

#[test]
fn validation_lists_every_problem() {
    let id: ServiceId = "192.0.2.10:80/tcp".parse().unwrap();
    let spec = ServiceSpec {
        id,
        forward: Forward::Encap,
        backends: vec![
            BackendSpec {
                addr: "10.0.0.1".parse().unwrap(),
                weight: 1,
            },
            BackendSpec {
                addr: "10.0.0.1".parse().unwrap(),
                weight: MAX_WEIGHT + 1,
            },
            BackendSpec {
                addr: "127.0.0.1".parse().unwrap(),
                weight: 1,
            },
        ],
        health: None,
    };
    let p = validate(&[spec.clone(), spec], 16);
    assert!(p.iter().any(|m| m.contains("defined twice")), "{p:?}");
    assert!(p.iter().any(|m| m.contains("listed twice")), "{p:?}");
    assert!(p.iter().any(|m| m.contains("weight")), "{p:?}");
    assert!(p.iter().any(|m| m.contains("loopback")), "{p:?}");
}

#[test]
fn outer_source_config() {
    let c = default_lb_config();
    assert_eq!(c.src_v4, [172, 16, 0, 0]);
    assert_eq!(c.mask_v4, 0xffff);
    assert_eq!(c.mask_v6, u32::MAX);
    let c = lb_config(
        "10.200.255.0".parse().unwrap(),
        24,
        "fd00:200:ff::".parse().unwrap(),
        112,
        32,
    )
    .unwrap();
    assert_eq!(c.mask_v4, 0xff);
    assert_eq!(c.mask_v6, 0xffff);
    assert!(
        lb_config(
            "10.0.0.1".parse().unwrap(),
            24,
            "::".parse().unwrap(),
            64,
            64
        )
        .is_err()
    );
    assert!(lb_config("10.0.0.0".parse().unwrap(), 8, "::".parse().unwrap(), 64, 0).is_err());
}

#[test]
fn a_service_key_reads_back_as_its_service() {
    for text in [
        "192.0.2.10:80/tcp",
        "[2001:db8::10]:443/udp",
        "192.0.2.10:*/sctp",
    ] {
        let id: ServiceId = text.parse().unwrap();
        assert_eq!(service_id(&service_key(&id)), Some(id), "{text}");
    }
    let mut foreign = service_key(&"192.0.2.10:80/tcp".parse().unwrap());
    foreign.proto = 1;
    assert_eq!(service_id(&foreign), None, "ICMP is no service protocol");
    foreign.family = 7;
    assert_eq!(addr_of(foreign.addr, foreign.family), None);
}

/// Chi-square statistic and max/mean of how `flows` fall on the backends of
/// a ten-backend Maglev ring of the default size, each backend expected in
/// proportion to its ring entries.
fn spread(flows: &[(IpAddr, u16)], hash: impl Fn(IpAddr, u16) -> u32) -> (f64, f64) {
    const BACKENDS: u32 = 10;
    let members: Vec<maglev::Member> = (1..=BACKENDS)
        .map(|slot| maglev::Member {
            slot,
            addr: IpAddr::V4(Ipv4Addr::new(10, 200, 9, slot as u8)),
            weight: 1,
        })
        .collect();
    let ring = maglev::build(&members, DEFAULT_RING_SIZE).unwrap();
    let mut entries = [0u64; BACKENDS as usize + 1];
    for slot in &ring {
        entries[*slot as usize] += 1;
    }
    let mut hits = [0u64; BACKENDS as usize + 1];
    for (src, sport) in flows {
        hits[maglev::lookup(&ring, hash(*src, *sport)) as usize] += 1;
    }
    let n = flows.len() as f64;
    let mut chi2 = 0.0;
    let mut worst: f64 = 0.0;
    for slot in 1..=BACKENDS as usize {
        let expected = n * entries[slot] as f64 / ring.len() as f64;
        let d = hits[slot] as f64 - expected;
        chi2 += d * d / expected;
        worst = worst.max(hits[slot] as f64 / expected);
    }
    (chi2, worst)
}

/// Flow sets an operator meets: one client's source ports, consecutive
/// clients, a grid of clients and ports; of the VIP's family.
fn flow_patterns(v4: bool) -> Vec<(&'static str, Vec<(IpAddr, u16)>)> {
    let client = |i: u32| -> IpAddr {
        if v4 {
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
        } else {
            IpAddr::V6(std::net::Ipv6Addr::from(
                0x2001_0db8_0000_0000_0000_0000_0000_0000u128 + u128::from(i),
            ))
        }
    };
    vec![
        (
            "one client, source ports 1024-61023",
            (0..60_000).map(|p| (client(1), 1024 + p as u16)).collect(),
        ),
        (
            "60,000 consecutive clients, one source port",
            (0..60_000).map(|i| (client(i), 40_000)).collect(),
        ),
        (
            "600 clients 256 apart, 100 source ports each",
            (0..600)
                .flat_map(|i| (0..100).map(move |p| (client(i * 256), 32_768 + p)))
                .collect(),
        ),
    ]
}

#[test]
fn both_flow_hashes_spread_flows_evenly_over_the_backends() {
    // Chi-square with 9 degrees of freedom: 33.7 is the 99.99th percentile
    // of a uniform spread; max/mean: about 5 standard deviations at 6,000
    // flows per backend.
    const CHI2_LIMIT: f64 = 33.7;
    const WORST_LIMIT: f64 = 1.07;
    for kind in [FlowHash::Fast, FlowHash::Murmur3] {
        for (family, v4, vip) in [
            ("IPv4", true, "192.0.2.10".parse::<IpAddr>().unwrap()),
            ("IPv6", false, "2001:db8:200::20".parse::<IpAddr>().unwrap()),
        ] {
            for (pattern, flows) in flow_patterns(v4) {
                let (chi2, worst) = spread(&flows, |src, sport| {
                    packet_hash_of(kind, src, sport, vip, 443, Proto::Tcp)
                });
                let case = format!("{} hash, {family}, {pattern}", kind.name());
                assert!(chi2 < CHI2_LIMIT, "{case}: chi-square {chi2:.1}");
                assert!(worst < WORST_LIMIT, "{case}: max/mean {worst:.3}");
            }
        }
    }
}

#[test]
fn the_spread_check_catches_a_hash_that_ignores_the_source_port() {
    let vip: IpAddr = "192.0.2.10".parse().unwrap();
    let (_, flows) = flow_patterns(true).swap_remove(0);
    let (chi2, worst) = spread(&flows, |src, _| {
        packet_hash_of(FlowHash::Fast, src, 0, vip, 443, Proto::Tcp)
    });
    assert!(
        chi2 > 1_000.0 && worst > 5.0,
        "chi-square {chi2:.1}, max/mean {worst:.3}"
    );
}

#[test]
fn the_model_hashes_a_flow_as_the_service_entry_names() {
    let src: IpAddr = "198.51.100.1".parse().unwrap();
    let vip: IpAddr = "203.0.113.20".parse().unwrap();
    let mapped: IpAddr = "::ffff:198.51.100.1".parse().unwrap();
    let s = addr_words(&addr_key(src).0);
    let d = addr_words(&addr_key(vip).0);
    let cases = [
        (
            "murmur3",
            FlowHash::Murmur3,
            xdpgate_common::lb::flow_hash(&s, &d, 40000, 443, 6),
        ),
        (
            "fast",
            FlowHash::Fast,
            xdpgate_common::lb::flow_hash_fast(true, &s, &d, 40000, 443, 6),
        ),
    ];
    for (name, kind, want) in cases {
        assert_eq!(
            packet_hash_of(kind, src, 40000, vip, 443, Proto::Tcp),
            want,
            "{name}"
        );
        assert_eq!(
            packet_hash_of(kind, mapped, 40000, vip, 443, Proto::Tcp),
            want,
            "{name}, v4-mapped source"
        );
    }
    assert_eq!(
        packet_hash(src, 40000, vip, 443, Proto::Tcp),
        packet_hash_of(FlowHash::Fast, src, 40000, vip, 443, Proto::Tcp),
        "a new service hashes fast"
    );
    assert_ne!(
        packet_hash_of(FlowHash::Murmur3, src, 40000, vip, 443, Proto::Tcp),
        packet_hash_of(FlowHash::Fast, src, 40000, vip, 443, Proto::Tcp)
    );
}

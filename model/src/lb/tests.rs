//! Unit tests of the load balancer's model.
use super::*;

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

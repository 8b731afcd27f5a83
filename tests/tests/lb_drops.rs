//! `BPF_PROG_TEST_RUN` fixtures of the steering program: the slow path (next
//! hop unresolved: encapsulated and passed to the stack) and the drops, each
//! counted under its reason: no route, no backend, egress MTU (also for
//! next hops cached before the MTU was lowered, once their lifetime passed).
//!
//! The rig (a namespace with a veth pair, the backends' neighbours and
//! routes; the datapath with lo as slot 1; expected frames written out field
//! by field) is in `lb_common/`.
mod lb_common;

use std::collections::BTreeMap;

use lb_common::{
    IN_DST, IN_SRC, LBT0, LO, MAC2, XDP_DROP, XDP_PASS, XDP_REDIRECT, backend_counts, encapsulated,
    frame, ip, l4_of, load, mac_of, net, pin_to_current_cpu, reasons, run, same, service_counts,
    sid, spec, status,
};
use xdpgate::{datapath::Datapath, lb::LbController};
use xdpgate_common::DropReason;
use xdpgate_model::lb::{Forward, Proto, packet_hash};
use xdpgate_tests::{
    lab::serial,
    packet::{Transport, hex},
};

/// Slow path (next hop unresolved), no route, no backend, egress MTU.
#[test]
fn slow_path_and_drops() {
    let _g = serial();
    let n = net("lbdrop");
    n.ns.run(|| {
        let mut dp = load();
        let mut ctl = LbController::new(&dp, vec![LO]);
        ctl.apply(
            &mut dp,
            &[
                spec("192.0.2.50:80/tcp", Forward::Encap, &[("10.200.9.77", 1)]),
                spec(
                    "[2001:db8::50]:80/tcp",
                    Forward::Encap,
                    &[("fd00:200:9::77", 1)],
                ),
                spec("192.0.2.51:80/tcp", Forward::Encap, &[("10.201.0.1", 1)]),
                spec(
                    "[2001:db8::51]:80/tcp",
                    Forward::Encap,
                    &[("fd00:201::1", 1)],
                ),
                spec(
                    "192.0.2.52:80/tcp",
                    Forward::Encap,
                    &[("10.200.9.2", 0), ("10.200.9.3", 0)],
                ),
                spec(
                    "[2001:db8::53]:80/tcp",
                    Forward::Encap,
                    &[("fd00:200:9::2", 1)],
                ),
                spec("192.0.2.10:80/tcp", Forward::Encap, &[("10.200.9.2", 1)]),
                spec("192.0.2.11:80/tcp", Forward::Encap, &[("fd00:200:9::2", 1)]),
                spec(
                    "[2001:db8::10]:80/tcp",
                    Forward::Encap,
                    &[("fd00:200:9::2", 1)],
                ),
                spec(
                    "[2001:db8::11]:80/tcp",
                    Forward::Encap,
                    &[("10.200.9.2", 1)],
                ),
                spec("192.0.2.20:80/tcp", Forward::L2dsr, &[("10.200.9.2", 1)]),
            ],
        )
        .expect("apply");

        // Slow path: encapsulated, original Ethernet addresses, passed.
        for (svc, client, backend) in [
            ("192.0.2.50:80/tcp", "198.51.100.7", "10.200.9.77"),
            ("[2001:db8::50]:80/tcp", "2001:db8:1::7", "fd00:200:9::77"),
        ] {
            let (src, vip, be) = (ip(client), sid(svc).vip, ip(backend));
            let input = frame(src, vip, &l4_of(Proto::Tcp, 4321, 80));
            let hash = packet_hash(src, 4321, vip, 80, Proto::Tcp);
            let want = encapsulated(&input, input.len() - 14, be, hash, IN_DST, IN_SRC);
            let (action, got) = run(&mut dp, &input);
            assert_eq!(action, XDP_PASS, "{svc}");
            same(&got, &want, svc);
            assert_eq!(service_counts(&ctl, &dp, svc), (0, 1, 0), "{svc}");
            assert_eq!(
                backend_counts(&ctl, &dp, svc, backend),
                (1, input.len() as u64),
                "{svc}"
            );
        }
        assert!(reasons(&dp).values().all(|n| *n == 0));

        // Drops, each with its reason.
        let mut want_reasons: BTreeMap<&str, u64> = BTreeMap::new();
        let mut dropped_as = |dp: &mut Datapath,
                              ctl: &LbController,
                              svc: &str,
                              client: &str,
                              input: Vec<u8>,
                              reason: DropReason,
                              dropped: u64| {
            let (action, _) = run(dp, &input);
            assert_eq!(action, XDP_DROP, "{svc} {client}: {}", hex(&input));
            *want_reasons.entry(reason.name()).or_default() += 1;
            let got = reasons(dp);
            for (name, n) in &got {
                assert_eq!(
                    *n,
                    want_reasons.get(name).copied().unwrap_or(0),
                    "{svc}: reason {name} ({got:?})"
                );
            }
            assert_eq!(service_counts(ctl, dp, svc).2, dropped, "{svc}");
        };
        for (svc, client) in [
            ("192.0.2.51:80/tcp", "198.51.100.7"),
            ("[2001:db8::51]:80/tcp", "2001:db8:1::7"),
        ] {
            let input = frame(ip(client), sid(svc).vip, &l4_of(Proto::Tcp, 1000, 80));
            dropped_as(&mut dp, &ctl, svc, client, input, DropReason::LbNoRoute, 1);
        }
        let svc = "192.0.2.52:80/tcp";
        for sport in [1000, 2000] {
            let input = frame(
                ip("198.51.100.7"),
                sid(svc).vip,
                &l4_of(Proto::Tcp, sport, 80),
            );
            let dropped = u64::from(sport / 1000);
            dropped_as(
                &mut dp,
                &ctl,
                svc,
                "198.51.100.7",
                input,
                DropReason::LbNoBackend,
                dropped,
            );
        }
        // Every backend down: no backend either.
        let svc = "[2001:db8::53]:80/tcp";
        let input = frame(
            ip("2001:db8:1::7"),
            sid(svc).vip,
            &l4_of(Proto::Tcp, 1000, 80),
        );
        assert_eq!(run(&mut dp, &input).0, XDP_REDIRECT, "{svc} up");
        assert!(
            ctl.set_health(&mut dp, &sid(svc), ip("fd00:200:9::2"), false)
                .unwrap()
        );
        dropped_as(
            &mut dp,
            &ctl,
            svc,
            "2001:db8:1::7",
            input,
            DropReason::LbNoBackend,
            1,
        );
        for svc in [
            "192.0.2.51:80/tcp",
            "[2001:db8::51]:80/tcp",
            "192.0.2.52:80/tcp",
        ] {
            let st = status(&ctl, &dp, svc);
            assert!(st.backends.iter().all(|b| b.packets == 0), "{svc}: {st:?}");
        }

        // Egress MTU 1280. bpf_fib_lookup compares the length it is given
        // (the outer packet's) with the route's MTU and fails only when it
        // is larger: 1280 bytes pass, 1281 do not.
        let tcp_of = |ip_len: usize, hdr: usize, sport: u16| {
            let payload = vec![0x5a; ip_len - hdr - Transport::TCP_LEN];
            Transport::tcp(sport, 80).payload(&payload)
        };
        // (service, client, inner IP length that just fits, backend)
        let mtu_cases = [
            ("192.0.2.10:80/tcp", "198.51.100.7", 1260, "10.200.9.2"),
            ("192.0.2.11:80/tcp", "198.51.100.7", 1240, "fd00:200:9::2"),
            (
                "[2001:db8::10]:80/tcp",
                "2001:db8:1::7",
                1240,
                "fd00:200:9::2",
            ),
            ("[2001:db8::11]:80/tcp", "2001:db8:1::7", 1260, "10.200.9.2"),
        ];
        // The next-hop cache (per CPU: this thread stays on one) serves
        // packets up to the length its lookup checked. A 1400-byte packet
        // to each service before the change leaves such a next hop, so the
        // packets below would use it without a lookup when within its
        // lifetime (1 s): the cache does not call `bpf_check_mtu` per packet,
        // so the lowered device MTU holds for them once it has passed.
        pin_to_current_cpu();
        let l2dsr = "192.0.2.20:80/tcp";
        for (svc, client, _, _) in mtu_cases {
            let (src, vip) = (ip(client), sid(svc).vip);
            let hdr = if src.is_ipv4() { 20 } else { 40 };
            let input = frame(src, vip, &tcp_of(1400, hdr, 777));
            assert_eq!(run(&mut dp, &input).0, XDP_REDIRECT, "{svc}: MTU 1500");
        }
        let input = frame(ip("198.51.100.7"), sid(l2dsr).vip, &tcp_of(1400, 20, 9));
        assert_eq!(run(&mut dp, &input).0, XDP_REDIRECT, "{l2dsr}: MTU 1500");
        n.ns.exec("ip", &["link", "set", "dev", LBT0, "mtu", "1280"])
            .expect("mtu");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        // Twice: the second round with the next hop the first one cached.
        for round in 1..=2 {
            for (svc, client, fits, backend) in mtu_cases {
                let (src, vip, be) = (ip(client), sid(svc).vip, ip(backend));
                let hdr = if src.is_ipv4() { 20 } else { 40 };
                let input = frame(src, vip, &tcp_of(fits, hdr, 777));
                assert_eq!(input.len(), 14 + fits);
                let hash = packet_hash(src, 777, vip, 80, Proto::Tcp);
                let want = encapsulated(&input, fits, be, hash, mac_of(be), n.mac);
                let (action, got) = run(&mut dp, &input);
                assert_eq!(
                    action, XDP_REDIRECT,
                    "{svc}: outer packet of 1280 bytes, round {round}"
                );
                same(&got, &want, svc);
                let input = frame(src, vip, &tcp_of(fits + 1, hdr, 777));
                dropped_as(
                    &mut dp,
                    &ctl,
                    svc,
                    client,
                    input,
                    DropReason::LbTooBig,
                    round,
                );
            }
            // L2 DSR: the packet itself against the MTU.
            let src = ip("198.51.100.7");
            let input = frame(src, sid(l2dsr).vip, &tcp_of(1280, 20, 9));
            let mut want = input.clone();
            want[..6].copy_from_slice(&MAC2);
            want[6..12].copy_from_slice(&n.mac);
            let (action, got) = run(&mut dp, &input);
            assert_eq!(action, XDP_REDIRECT, "{l2dsr}: 1280 bytes, round {round}");
            same(&got, &want, l2dsr);
            let input = frame(src, sid(l2dsr).vip, &tcp_of(1281, 20, 9));
            dropped_as(
                &mut dp,
                &ctl,
                l2dsr,
                "198.51.100.7",
                input,
                DropReason::LbTooBig,
                round,
            );
        }
    });
}

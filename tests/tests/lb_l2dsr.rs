//! `BPF_PROG_TEST_RUN` fixtures of the steering program: L2 DSR (only the
//! MACs change; off-link and unresolved backends are dropped; VLAN-tagged
//! frames are left alone), with exact output bytes, verdicts and counters.
//!
//! The rig (a namespace with a veth pair, the backends' neighbours and
//! routes; the datapath with lo as slot 1; expected frames written out field
//! by field) is in `lb_common/`.
mod lb_common;

use lb_common::{
    LO, MAC2, MAC3, XDP_DROP, XDP_PASS, XDP_REDIRECT, backend_counts, frame, ip, l4_of, load, net,
    reason_packets, reasons, run, same, service_counts, sid, spec, tagged,
};
use xdpgate::lb::LbController;
use xdpgate_common::DropReason;
use xdpgate_model::lb::{Forward, Proto};
use xdpgate_tests::{lab::serial, packet::hex};

/// L2 DSR: only the MACs change; off-link and unresolved backends are
/// dropped as lb_no_neighbor.
#[test]
fn l2dsr_rewrites_only_the_macs() {
    let _g = serial();
    let n = net("lbdsr");
    n.ns.run(|| {
        let mut dp = load();
        let mut ctl = LbController::new(&dp, vec![LO]);
        ctl.apply(
            &mut dp,
            &[
                spec("192.0.2.20:80/tcp", Forward::L2dsr, &[("10.200.9.2", 1)]),
                spec(
                    "[2001:db8::20]:80/tcp",
                    Forward::L2dsr,
                    &[("fd00:200:9::3", 1)],
                ),
                spec("192.0.2.21:80/tcp", Forward::L2dsr, &[("10.200.50.5", 1)]),
                spec(
                    "[2001:db8::21]:80/tcp",
                    Forward::L2dsr,
                    &[("fd00:200:50::5", 1)],
                ),
                spec("192.0.2.22:80/tcp", Forward::L2dsr, &[("10.200.9.77", 1)]),
                spec(
                    "[2001:db8::22]:80/tcp",
                    Forward::L2dsr,
                    &[("fd00:200:9::77", 1)],
                ),
            ],
        )
        .expect("apply");
        for (svc, client, backend, mac) in [
            ("192.0.2.20:80/tcp", "198.51.100.7", "10.200.9.2", MAC2),
            (
                "[2001:db8::20]:80/tcp",
                "2001:db8:1::7",
                "fd00:200:9::3",
                MAC3,
            ),
        ] {
            let vip = sid(svc).vip;
            let mut bytes = 0;
            for sport in [1000u16, 2000, 3000] {
                let input = frame(ip(client), vip, &l4_of(Proto::Tcp, sport, 80));
                let mut want = input.clone();
                want[..6].copy_from_slice(&mac);
                want[6..12].copy_from_slice(&n.mac);
                let (action, got) = run(&mut dp, &input);
                assert_eq!(action, XDP_REDIRECT, "{svc} {sport}");
                same(&got, &want, svc);
                bytes += input.len() as u64;
            }
            assert_eq!(service_counts(&ctl, &dp, svc), (3, 0, 0), "{svc}");
            assert_eq!(backend_counts(&ctl, &dp, svc, backend), (3, bytes), "{svc}");
        }
        // Behind a gateway (whose neighbour exists), and on-link without a
        // neighbour entry: dropped, lb_no_neighbor.
        let mut dropped = 0;
        for (svc, client, backend) in [
            ("192.0.2.21:80/tcp", "198.51.100.7", "10.200.50.5"),
            ("[2001:db8::21]:80/tcp", "2001:db8:1::7", "fd00:200:50::5"),
            ("192.0.2.22:80/tcp", "198.51.100.7", "10.200.9.77"),
            ("[2001:db8::22]:80/tcp", "2001:db8:1::7", "fd00:200:9::77"),
        ] {
            let input = frame(ip(client), sid(svc).vip, &l4_of(Proto::Tcp, 1000, 80));
            let (action, _) = run(&mut dp, &input);
            assert_eq!(action, XDP_DROP, "{svc} via {backend}");
            dropped += 1;
            assert_eq!(
                reason_packets(&dp, DropReason::LbNoNeighbor),
                dropped,
                "{svc}"
            );
            assert_eq!(service_counts(&ctl, &dp, svc), (0, 0, 1), "{svc}");
            assert_eq!(backend_counts(&ctl, &dp, svc, backend), (0, 0), "{svc}");
        }
        let r = reasons(&dp);
        assert_eq!(r.values().sum::<u64>(), 4, "{r:?}");
    });
}

/// VLAN-tagged frames to an L2 DSR VIP pass unchanged, as they do to an
/// encapsulating VIP (the steering program bypasses tagged frames: its route
/// lookup is the ingress interface's, not the VLAN's).
#[test]
fn l2dsr_leaves_vlan_tagged_frames_alone() {
    let _g = serial();
    let n = net("lbdsrvlan");
    n.ns.run(|| {
        let mut dp = load();
        let mut ctl = LbController::new(&dp, vec![LO]);
        let specs = [
            spec("192.0.2.20:80/tcp", Forward::L2dsr, &[("10.200.9.2", 1)]),
            spec(
                "[2001:db8::20]:80/tcp",
                Forward::L2dsr,
                &[("fd00:200:9::2", 1)],
            ),
        ];
        ctl.apply(&mut dp, &specs).expect("apply");
        let tcp = l4_of(Proto::Tcp, 40000, 80);
        for (client, svc) in [
            ("198.51.100.7", "192.0.2.20:80/tcp"),
            ("2001:db8:1::7", "[2001:db8::20]:80/tcp"),
        ] {
            let (src, vip) = (ip(client), sid(svc).vip);
            // Untagged: forwarded.
            assert_eq!(
                run(&mut dp, &frame(src, vip, &tcp)).0,
                XDP_REDIRECT,
                "{svc}"
            );
            for vlan in [true, false] {
                let what = format!("{svc}, {}", if vlan { "VLAN" } else { "QinQ" });
                let input = tagged(vlan, src, vip, &tcp);
                let (action, got) = run(&mut dp, &input);
                assert_eq!(action, XDP_PASS, "{what}: {}", hex(&got));
                same(&got, &input, &what);
            }
            assert_eq!(service_counts(&ctl, &dp, svc), (1, 0, 0), "{svc}");
        }
    });
}

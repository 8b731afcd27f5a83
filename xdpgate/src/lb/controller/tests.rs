//! The load-balancer controller against the in-memory datapath: the order of
//! its writes, and what a failure at each step of a change leaves behind.
use std::net::IpAddr;

use xdpgate_common::{
    Counter, IFACE_LB,
    lb::{FlowHash, SERVICE_L2DSR, ServiceInfo, ServiceStat, service_stat_index},
};
use xdpgate_model::lb::{BackendSpec, Forward, LoadOptions, ServiceId, ServiceSpec};

use super::{LbController, LbError};
use crate::datapath::fake::{FakeDatapath, Op};

/// Interfaces the datapath is registered on (ifindex, slot).
const IFACES: [(u32, u32); 2] = [(2, 1), (3, 2)];

fn sizes() -> LoadOptions {
    LoadOptions {
        ring_services: 4,
        ring_size: 13,
    }
}

fn sid(s: &str) -> ServiceId {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn spec(id: &str, forward: Forward, backends: &[(&str, u32)]) -> ServiceSpec {
    ServiceSpec {
        id: sid(id),
        forward,
        backends: backends
            .iter()
            .map(|(a, w)| BackendSpec {
                addr: ip(a),
                weight: *w,
            })
            .collect(),
        health: None,
    }
}

const A: &str = "192.0.2.10:80/tcp";
const B: &str = "[2001:db8::10]:53/udp";
const C: &str = "192.0.2.11:443/tcp";

fn a() -> ServiceSpec {
    spec(A, Forward::Encap, &[("10.0.0.1", 1), ("10.0.0.2", 1)])
}

fn b() -> ServiceSpec {
    spec(B, Forward::L2dsr, &[("2001:db8:1::1", 1), ("10.0.0.3", 2)])
}

fn c() -> ServiceSpec {
    spec(C, Forward::Encap, &[("10.0.0.4", 1), ("10.0.0.5", 1)])
}

/// A datapath registered on [`IFACES`] and a controller that installed
/// `specs`, with backends `down` marked down by health checks.
fn installed(specs: &[ServiceSpec], down: &[(&str, &str)]) -> (FakeDatapath, LbController) {
    let mut dp = FakeDatapath::new(sizes());
    for (ifindex, slot) in IFACES {
        dp.register(ifindex, slot);
    }
    let mut ctl = LbController::new(&dp, IFACES.iter().map(|(i, _)| *i).collect());
    ctl.apply(&mut dp, specs)
        .expect("install the services in force");
    // Traffic: every live service and backend has counted something.
    let live: Vec<ServiceInfo> = dp.maps().services.values().copied().collect();
    for (n, info) in live.iter().enumerate() {
        let n = n as u64 + 1;
        for what in ServiceStat::ALL {
            dp.maps_mut().service_counters.insert(
                service_stat_index(info.slot, what),
                Counter {
                    packets: n * 10 + what as u64,
                    bytes: n * 1000,
                },
            );
        }
        let at = info.ring_base as usize;
        let slots: Vec<u32> = dp.maps().rings[at..at + info.ring_size as usize].to_vec();
        for slot in slots {
            dp.maps_mut().backend_counters.insert(
                slot,
                Counter {
                    packets: u64::from(slot) * 3,
                    bytes: u64::from(slot) * 300,
                },
            );
        }
    }
    for (svc, addr) in down {
        assert!(
            ctl.set_health(&mut dp, &sid(svc), ip(addr), false)
                .expect("mark down"),
            "{svc} {addr}"
        );
    }
    (dp, ctl)
}

/// A change from the services in force (`before`, with `down` backends) to
/// `after`.
struct Case {
    name: &'static str,
    before: Vec<ServiceSpec>,
    down: &'static [(&'static str, &'static str)],
    after: Vec<ServiceSpec>,
}

fn cases() -> Vec<Case> {
    let mut a2 = a();
    a2.backends.remove(0);
    a2.backends.push(BackendSpec {
        addr: ip("10.0.0.6"),
        weight: 3,
    });
    let mut a_dsr = a();
    a_dsr.forward = Forward::L2dsr;
    a_dsr.backends[1].weight = 0;
    vec![
        Case {
            name: "the first services",
            before: vec![],
            down: &[],
            after: vec![a(), b()],
        },
        Case {
            name: "a service added",
            before: vec![a()],
            down: &[],
            after: vec![a(), b()],
        },
        Case {
            name: "a backend replaced and a weight changed",
            before: vec![a(), b()],
            down: &[],
            after: vec![a2, b()],
        },
        Case {
            name: "a service replaced by another (slots reused)",
            before: vec![a(), b()],
            down: &[],
            after: vec![b(), c()],
        },
        Case {
            name: "every service removed",
            before: vec![a(), b()],
            down: &[],
            after: vec![],
        },
        Case {
            name: "forwarding changed and a backend drained, another one down",
            before: vec![a(), b()],
            down: &[(A, "10.0.0.1"), (B, "10.0.0.3")],
            after: vec![a_dsr, b(), c()],
        },
    ]
}

#[test]
fn a_change_writes_backends_then_the_ring_then_the_entry_and_frees_after_a_wait() {
    let (mut dp, mut ctl) = installed(&[], &[]);
    let start = dp.steps();
    ctl.apply(&mut dp, &[a()]).expect("add");
    assert_eq!(
        dp.log()[start..],
        [
            Op::ResetServiceCounters,
            Op::SetBackend,
            Op::ResetBackendCounter,
            Op::SetBackend,
            Op::ResetBackendCounter,
            Op::WriteRing,
            Op::SetService,
            Op::SetIfaceFlag,
            Op::SetIfaceFlag,
        ],
        "a new service: counters, backends, ring, entry, then the interfaces"
    );
    for (ifindex, _) in IFACES {
        assert_eq!(dp.maps().ifaces[&ifindex].flags & IFACE_LB, IFACE_LB);
    }

    let start = dp.steps();
    let mut a2 = a();
    a2.backends.remove(0);
    ctl.apply(&mut dp, &[a2]).expect("change");
    assert_eq!(
        dp.log()[start..],
        [
            Op::WriteRing,
            Op::SetService,
            Op::RcuWait,
            Op::SetIfaceFlag,
            Op::SetIfaceFlag,
        ],
        "a dropped backend's slot is free only after a wait"
    );

    let start = dp.steps();
    ctl.apply(&mut dp, &[]).expect("remove");
    assert_eq!(
        dp.log()[start..],
        [
            Op::RemoveService,
            Op::RcuWait,
            Op::SetIfaceFlag,
            Op::SetIfaceFlag
        ],
        "a removed service: its entry, a wait, then the interfaces"
    );
    assert!(dp.lb_view().services.is_empty());
    for (ifindex, _) in IFACES {
        assert_eq!(dp.maps().ifaces[&ifindex].flags & IFACE_LB, 0);
    }
}

#[test]
fn a_change_that_fails_at_any_step_leaves_the_datapath_and_the_controller_as_before() {
    for case in cases() {
        let (dp0, ctl0) = installed(&case.before, case.down);
        let view0 = dp0.lb_view();
        let status0 = ctl0.status(&dp0).expect("status");

        // The change without failures: how many steps it takes, and where it
        // leads.
        let (mut dp, mut ctl) = (dp0.clone(), ctl0.clone());
        let start = dp.steps();
        ctl.apply(&mut dp, &case.after).expect(case.name);
        let steps = dp.steps() - start;
        let log = dp.log();
        let view1 = dp.lb_view();
        assert!(
            steps > 0 && view1 != view0,
            "{}: the change does something",
            case.name
        );

        for i in 0..steps {
            let what = format!("{}: step {i} ({:?}) fails", case.name, log[start + i]);
            let (mut dp, mut ctl) = (dp0.clone(), ctl0.clone());
            dp.fail_step(i);
            let e = ctl.apply(&mut dp, &case.after).unwrap_err();
            assert!(!dp.failures_pending(), "{what}: the failure happened");
            assert!(
                matches!(&e, LbError::Datapath(_)),
                "{what}: the error is the step's: {e}"
            );
            assert_eq!(dp.lb_view(), view0, "{what}: what packets see");
            assert_eq!(ctl, ctl0, "{what}: the controller's state");
            assert_eq!(
                ctl.status(&dp).expect("status"),
                status0,
                "{what}: services, health and counters as `lb list` shows them"
            );

            // Nothing is left half done: the same change goes through now,
            // to the same place.
            ctl.apply(&mut dp, &case.after)
                .unwrap_or_else(|e| panic!("{what}: retry: {e}"));
            assert_eq!(dp.lb_view(), view1, "{what}: the change after the failure");
        }
    }
}

#[test]
fn a_restore_that_fails_too_reports_both_errors() {
    let (mut dp, mut ctl) = installed(&[a(), b()], &[]);
    let before = ctl.clone();
    // The last step of the change fails (the second interface's flag), and
    // so does the first step of putting things back.
    let (mut probe, mut probe_ctl) = (dp.clone(), ctl.clone());
    let start = probe.steps();
    probe_ctl.apply(&mut probe, &[b(), c()]).expect("change");
    let steps = probe.steps() - start;
    dp.fail_step(steps - 1);
    dp.fail_step(steps);
    let e = ctl.apply(&mut dp, &[b(), c()]).unwrap_err();
    let LbError::Rollback { cause, undo } = &e else {
        panic!("expected Rollback, got {e}");
    };
    assert!(matches!(**cause, LbError::Datapath(_)), "{e}");
    assert!(!undo.is_empty(), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("SetIfaceFlag")
            && text.contains("restoring the previous services failed too"),
        "{text}"
    );
    assert_eq!(ctl, before, "the controller keeps the services it knows");
}

#[test]
fn a_failed_health_change_leaves_the_ring_in_force() {
    for op in [Op::WriteRing, Op::SetService] {
        let (mut dp, mut ctl) = installed(&[a(), b()], &[]);
        let (view, before) = (dp.lb_view(), ctl.clone());
        dp.fail_next(op);
        ctl.set_health(&mut dp, &sid(A), ip("10.0.0.1"), false)
            .unwrap_err();
        assert_eq!(dp.lb_view(), view, "{op:?} fails: what packets see");
        assert_eq!(ctl, before, "{op:?} fails: the controller's state");
    }
}

#[test]
fn a_failed_change_gives_reused_slots_back_to_their_service_after_a_wait() {
    // C takes A's service slot, ring half and backend slots; the last step
    // (the second interface's flag) fails.
    let (dp0, ctl0) = installed(&[a(), b()], &[]);
    let (mut probe, mut probe_ctl) = (dp0.clone(), ctl0.clone());
    let start = probe.steps();
    probe_ctl.apply(&mut probe, &[b(), c()]).expect("change");
    let steps = probe.steps() - start;

    let (mut dp, mut ctl) = (dp0.clone(), ctl0.clone());
    dp.fail_step(steps - 1);
    ctl.apply(&mut dp, &[b(), c()]).unwrap_err();
    let mut want = vec![Op::RemoveService, Op::RemoveService, Op::RcuWait];
    want.extend([Op::SetServiceCounter; ServiceStat::ALL.len()]);
    want.extend([
        Op::SetBackend,
        Op::SetBackendCounter,
        Op::SetBackend,
        Op::SetBackendCounter,
        Op::WriteRing,
        Op::SetService,
        Op::SetIfaceFlag,
        Op::SetIfaceFlag,
    ]);
    assert_eq!(
        dp.log()[start + steps..],
        want,
        "C's entry and A's go, then A's counters, backends, ring and entry come back"
    );
    assert_eq!(dp.lb_view(), dp0.lb_view());
    assert_eq!(ctl.status(&dp).unwrap(), ctl0.status(&dp0).unwrap());
}

/// A new controller (a restarted daemon) on the maps `installed` left.
fn adopting(dp: &mut FakeDatapath, previous: &[ServiceSpec]) -> LbController {
    let mut ctl = LbController::new(dp, IFACES.iter().map(|(i, _)| *i).collect());
    ctl.adopt(dp, previous).expect("adopt");
    ctl
}

#[test]
fn adopting_the_same_services_writes_nothing_and_keeps_every_counter() {
    let (mut dp, old) = installed(&[a(), b()], &[]);
    let view = dp.lb_view();
    let counters = (
        dp.maps().service_counters.clone(),
        dp.maps().backend_counters.clone(),
    );
    let steps = dp.steps();
    let mut ctl = adopting(&mut dp, &old.specs());
    ctl.apply(&mut dp, &[a(), b()]).expect("apply");
    assert_eq!(
        &dp.log()[steps..],
        [Op::SetIfaceFlag, Op::SetIfaceFlag],
        "only the interfaces' flags are written again"
    );
    assert_eq!(dp.lb_view(), view);
    assert_eq!(
        (
            dp.maps().service_counters.clone(),
            dp.maps().backend_counters.clone()
        ),
        counters
    );
    assert_eq!(ctl.specs(), old.specs());
}

#[test]
fn adopting_then_a_changed_configuration_replaces_changed_and_removes_dropped_services() {
    let (mut dp, old) = installed(&[a(), b()], &[]);
    let a_slot = dp.maps().services[&xdpgate_model::lb::service_key(&sid(A))].slot;
    // The configuration changed while no daemon ran: A gets a third backend,
    // B is gone, C is new.
    let mut a2 = a();
    a2.backends.push(BackendSpec {
        addr: ip("10.0.0.9"),
        weight: 1,
    });
    let mut ctl = adopting(&mut dp, &old.specs());
    ctl.apply(&mut dp, &[a2.clone(), c()]).expect("apply");
    let keys: Vec<ServiceId> = dp
        .maps()
        .services
        .keys()
        .map(|k| xdpgate_model::lb::service_id(k).unwrap())
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.contains(&sid(A)) && keys.contains(&sid(C)), "{keys:?}");
    assert_eq!(
        dp.maps().services[&xdpgate_model::lb::service_key(&sid(A))].slot,
        a_slot,
        "A keeps its slot (and its counters)"
    );
    // What packets see is what a fresh controller would install.
    let mut fresh_dp = FakeDatapath::new(sizes());
    for (ifindex, slot) in IFACES {
        fresh_dp.register(ifindex, slot);
    }
    let mut fresh = LbController::new(&fresh_dp, IFACES.iter().map(|(i, _)| *i).collect());
    fresh.apply(&mut fresh_dp, &[a2, c()]).unwrap();
    assert_eq!(ctl.specs(), fresh.specs());
    for id in [A, C] {
        assert_eq!(
            ctl.predict(&sid(id), ip("198.51.100.7"), 40000, 80),
            fresh.predict(&sid(id), ip("198.51.100.7"), 40000, 80),
            "{id} steers the same flow to the same backend"
        );
    }
}

#[test]
fn adopting_without_a_saved_state_removes_what_the_configuration_lacks() {
    let (mut dp, _) = installed(&[a(), b()], &[]);
    let mut ctl = adopting(&mut dp, &[]);
    ctl.apply(&mut dp, &[b()]).expect("apply");
    let key_a = xdpgate_model::lb::service_key(&sid(A));
    assert!(
        !dp.maps().services.contains_key(&key_a),
        "A no longer steered"
    );
    assert_eq!(ctl.specs(), [b()]);
}

#[test]
fn adopting_puts_backends_the_earlier_daemon_saw_down_back_in_the_ring() {
    // Health starts up at every start: the down backend is in the ring again
    // until its checks take it out.
    let (mut dp, old) = installed(&[a()], &[(A, "10.0.0.2")]);
    let ctl = adopting(&mut dp, &old.specs());
    let info = dp.maps().services[&xdpgate_model::lb::service_key(&sid(A))];
    let at = info.ring_base as usize;
    let slots: std::collections::BTreeSet<u32> = dp.maps().rings[at..at + info.ring_size as usize]
        .iter()
        .copied()
        .collect();
    assert_eq!(slots.len(), 2, "both backends are in the live ring");
    assert_eq!(ctl.specs(), [a()]);
}

/// The entry of service `id` as packets see it.
fn entry(dp: &FakeDatapath, id: &str) -> ServiceInfo {
    dp.maps().services[&xdpgate_model::lb::service_key(&sid(id))]
}

/// The flows the hash tests follow: 64 source ports of one client.
fn flow_backends(ctl: &LbController, id: &str) -> Vec<Option<IpAddr>> {
    (0..64)
        .map(|p| ctl.predict(&sid(id), ip("198.51.100.7"), 40_000 + p, 80))
        .collect()
}

#[test]
fn a_new_service_gets_the_fast_flow_hash() {
    let (dp, ctl) = installed(&[a(), b()], &[]);
    for id in [A, B] {
        assert_eq!(ctl.flow_hash(&sid(id)), Some(FlowHash::Fast), "{id}");
        assert_eq!(
            FlowHash::of_flags(entry(&dp, id).flags),
            FlowHash::Fast,
            "{id}"
        );
    }
    assert_eq!(entry(&dp, B).flags & SERVICE_L2DSR, SERVICE_L2DSR);
}

#[test]
fn an_upgrade_in_place_keeps_the_murmur3_hash_of_services_pinned_before_the_flag() {
    // A datapath of the previous build: its entries lack SERVICE_HASH_FAST.
    let (mut dp, mut old) = installed(&[a(), b()], &[]);
    assert_eq!(old.set_flow_hash(&mut dp, FlowHash::Murmur3).unwrap(), 2);
    let before = (flow_backends(&old, A), flow_backends(&old, B));
    let entries = (entry(&dp, A), entry(&dp, B));
    // The upgraded daemon adopts the pins and applies the same services,
    // then a changed one (A drains a backend) and a new one (C).
    let mut ctl = adopting(&mut dp, &old.specs());
    ctl.apply(&mut dp, &[a(), b()]).expect("apply");
    assert_eq!(
        (entry(&dp, A), entry(&dp, B)),
        entries,
        "entries not rewritten"
    );
    assert_eq!(
        (flow_backends(&ctl, A), flow_backends(&ctl, B)),
        before,
        "every flow keeps its backend"
    );
    let mut a2 = a();
    a2.backends.push(BackendSpec {
        addr: ip("10.0.0.9"),
        weight: 0,
    });
    ctl.apply(&mut dp, &[a2, b(), c()]).expect("apply");
    assert_eq!(
        FlowHash::of_flags(entry(&dp, A).flags),
        FlowHash::Murmur3,
        "a changed service keeps its hash"
    );
    assert_eq!(flow_backends(&ctl, A), before.0);
    assert_eq!(
        ctl.flow_hash(&sid(C)),
        Some(FlowHash::Fast),
        "a new service hashes fast"
    );
    assert_eq!(FlowHash::of_flags(entry(&dp, C).flags), FlowHash::Fast);
}

#[test]
fn switching_the_flow_hash_rewrites_each_entry_once_and_keeps_its_ring() {
    let (mut dp, mut ctl) = installed(&[a(), b()], &[]);
    ctl.set_flow_hash(&mut dp, FlowHash::Murmur3).unwrap();
    let murmur = flow_backends(&ctl, A);
    let (ea, eb) = (entry(&dp, A), entry(&dp, B));
    let steps = dp.steps();
    assert_eq!(ctl.set_flow_hash(&mut dp, FlowHash::Fast).unwrap(), 2);
    assert_eq!(&dp.log()[steps..], [Op::SetService, Op::SetService]);
    for (id, was) in [(A, ea), (B, eb)] {
        let now = entry(&dp, id);
        assert_eq!(FlowHash::of_flags(now.flags), FlowHash::Fast, "{id}");
        assert_eq!(
            (
                now.slot,
                now.ring_base,
                now.ring_size,
                now.flags & SERVICE_L2DSR
            ),
            (
                was.slot,
                was.ring_base,
                was.ring_size,
                was.flags & SERVICE_L2DSR
            ),
            "{id}: only the hash changed"
        );
    }
    assert_ne!(flow_backends(&ctl, A), murmur, "the flows were remapped");
    let steps = dp.steps();
    assert_eq!(ctl.set_flow_hash(&mut dp, FlowHash::Fast).unwrap(), 0);
    assert_eq!(dp.steps(), steps, "nothing to switch, nothing written");
}

#[test]
fn a_failed_switch_of_the_flow_hash_puts_the_entries_back() {
    let (mut dp, mut ctl) = installed(&[a(), b(), c()], &[]);
    let view = dp.lb_view();
    let flows = flow_backends(&ctl, A);
    dp.fail_call(Op::SetService, 1);
    let err = ctl.set_flow_hash(&mut dp, FlowHash::Murmur3).unwrap_err();
    assert!(matches!(err, LbError::Datapath(_)), "{err}");
    assert_eq!(dp.lb_view(), view, "the switched entry was written back");
    for id in [A, B, C] {
        assert_eq!(ctl.flow_hash(&sid(id)), Some(FlowHash::Fast), "{id}");
    }
    assert_eq!(flow_backends(&ctl, A), flows);
}

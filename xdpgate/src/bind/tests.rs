//! The binding manager against the in-memory kernel and datapath: every
//! failure midway is undone, exactly.
use std::{
    collections::{BTreeSet, HashSet},
    net::IpAddr,
};

use xdpgate_common::LocalAddrKey;
use xdpgate_model::bind::{BindRequest, Binding, Origin};

use super::{BindError, Bindings};
use crate::{
    datapath::fake::{FakeDatapath, FakeKernel, KernelFailure, Op},
    sys::netlink::AddrOpKind,
};

/// The attached interface (counter slot 1).
const ETH0: u32 = 2;
/// An interface xdpgate is not attached to.
const ETH1: u32 = 3;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn req(iface: &str, spec: &str) -> BindRequest {
    BindRequest {
        iface: iface.into(),
        spec: spec.into(),
        plen: None,
        nodad: true,
    }
}

/// eth0 (attached) with its own address and 10.1.0.5, which a bind of
/// 10.1.0.4-10.1.0.7 adopts; eth1 (not attached).
fn lab() -> (FakeDatapath, Bindings<FakeKernel>) {
    let mut kernel = FakeKernel::new();
    kernel.link(1, "lo");
    kernel.link(ETH0, "eth0");
    kernel.link(ETH1, "eth1");
    kernel.put_addr(ETH0, ip("10.1.0.1"), 24);
    kernel.put_addr(ETH0, ip("10.1.0.5"), 32);
    let mut dp = FakeDatapath::default();
    dp.register(ETH0, 1);
    (dp, Bindings::with_kernel(kernel, 100))
}

/// Four addresses: 4, 6 and 7 are added, 5 is adopted.
fn four() -> [BindRequest; 1] {
    [req("eth0", "10.1.0.4-10.1.0.7")]
}

/// Everything a change may touch: eth0's addresses, the local-address map,
/// the bindings in force.
#[derive(Debug, PartialEq)]
struct World {
    addrs: BTreeSet<(IpAddr, u8)>,
    map: HashSet<LocalAddrKey>,
    bindings: Vec<Binding>,
}

fn world(dp: &FakeDatapath, b: &Bindings<FakeKernel>) -> World {
    World {
        addrs: b.kernel().addrs(ETH0),
        map: dp.maps().local_addrs.clone(),
        bindings: b.list().to_vec(),
    }
}

/// The address requests of `op` from entry `from` of the kernel's log on.
fn requests(b: &Bindings<FakeKernel>, from: usize, op: AddrOpKind) -> Vec<IpAddr> {
    b.kernel().log()[from..]
        .iter()
        .filter(|(o, _)| *o == op)
        .map(|(_, a)| *a)
        .collect()
}

#[test]
fn a_bind_adds_the_missing_addresses_adopts_the_present_one_and_maps_all() {
    let (mut dp, mut b) = lab();
    let r = b.add(&mut dp, &four()).expect("bind");
    assert_eq!((r.added, r.adopted, r.total), (3, 1, 4), "{r}");
    assert_eq!(dp.maps().local_addrs.len(), 4);
    assert_eq!(b.kernel().addrs(ETH0).len(), 5);
    let adopted: Vec<IpAddr> = b
        .list()
        .iter()
        .filter(|x| x.origin == Origin::Adopted)
        .map(|x| x.addr)
        .collect();
    assert_eq!(adopted, [ip("10.1.0.5")]);

    let r = b.del(&mut dp, &four()).expect("unbind");
    assert_eq!((r.removed, r.released, r.total), (3, 1, 0), "{r}");
    assert_eq!(
        b.kernel().addrs(ETH0),
        BTreeSet::from([(ip("10.1.0.1"), 24), (ip("10.1.0.5"), 32)]),
        "the adopted address stays"
    );
    assert!(dp.maps().local_addrs.is_empty());
}

#[test]
fn a_bind_whose_map_insert_fails_removes_exactly_the_addresses_it_added() {
    let (mut dp, mut b) = lab();
    let before = world(&dp, &b);
    let from = b.kernel().log().len();
    dp.fail_next(Op::InsertLocalAddrs);
    let e = b.add(&mut dp, &four()).unwrap_err();
    assert!(matches!(e, BindError::Datapath(_)), "{e}");
    assert!(e.to_string().ends_with("(nothing was changed)"), "{e}");
    assert_eq!(world(&dp, &b), before);
    let added = requests(&b, from, AddrOpKind::Add);
    assert_eq!(added, [ip("10.1.0.4"), ip("10.1.0.6"), ip("10.1.0.7")]);
    assert_eq!(
        requests(&b, from, AddrOpKind::Delete),
        [ip("10.1.0.7"), ip("10.1.0.6"), ip("10.1.0.4")],
        "the added addresses, newest first, and not the adopted one"
    );
}

#[test]
fn a_bind_whose_nth_address_add_fails_undoes_the_ones_before() {
    let added = [ip("10.1.0.4"), ip("10.1.0.6"), ip("10.1.0.7")];
    let cases = [
        ("refused", KernelFailure::Refused(libc::EACCES)),
        ("unanswered (it did happen)", KernelFailure::NoAnswer),
    ];
    for (name, how) in cases {
        for n in 0..added.len() {
            let what = format!("add {n} {name}");
            let (mut dp, mut b) = lab();
            let before = world(&dp, &b);
            let from = b.kernel().log().len();
            b.kernel_mut().fail_add(n, how);
            let e = b.add(&mut dp, &four()).unwrap_err();
            assert!(matches!(e, BindError::Netlink(_)), "{what}: {e}");
            let s = e.to_string();
            assert!(
                s.contains(&format!("cannot add address {}/32 to eth0", added[n])),
                "{what}: {s}"
            );
            assert_eq!(world(&dp, &b), before, "{what}");
            let mut undone = requests(&b, from, AddrOpKind::Delete);
            undone.sort();
            let mut want = match how {
                // The refused one was not added; the rest of the batch was.
                KernelFailure::Refused(_) => [&added[..n], &added[n + 1..]].concat(),
                // No answer: that one and the rest of the batch are unknown,
                // so they are deleted too (absent ones are no problem).
                KernelFailure::NoAnswer => added.to_vec(),
            };
            want.sort();
            assert_eq!(undone, want, "{what}: what is deleted again");
        }
    }
}

#[test]
fn a_delete_that_fails_midway_restores_the_addresses_and_the_map() {
    for n in 0..3 {
        let (mut dp, mut b) = lab();
        b.add(&mut dp, &four()).expect("bind");
        let bound = world(&dp, &b);
        let from = b.kernel().log().len();
        b.kernel_mut()
            .fail_delete(n, KernelFailure::Refused(libc::EPERM));
        let e = b.del(&mut dp, &four()).unwrap_err();
        assert!(
            e.to_string().contains("cannot delete address"),
            "delete {n}: {e}"
        );
        assert_eq!(world(&dp, &b), bound, "delete {n}");
        // Newest first: 7, 6, 4; those before the failed one come back.
        let deleted = [ip("10.1.0.7"), ip("10.1.0.6"), ip("10.1.0.4")];
        let readded = requests(&b, from, AddrOpKind::Add);
        let mut want: Vec<IpAddr> = deleted[..n].to_vec();
        want.extend(&deleted[n + 1..]);
        assert_eq!(readded, want, "delete {n}: what is added again");
    }
}

#[test]
fn a_delete_whose_map_removal_fails_leaves_the_kernel_alone() {
    let (mut dp, mut b) = lab();
    b.add(&mut dp, &four()).expect("bind");
    let bound = world(&dp, &b);
    let from = b.kernel().log().len();
    dp.fail_next(Op::RemoveLocalAddrs);
    let e = b.del(&mut dp, &four()).unwrap_err();
    assert!(matches!(e, BindError::Datapath(_)), "{e}");
    assert_eq!(world(&dp, &b), bound);
    assert!(b.kernel().log()[from..].is_empty(), "no address request");
}

#[test]
fn a_replace_that_fails_removing_undoes_its_additions() {
    let (mut dp, mut b) = lab();
    b.add(&mut dp, &[req("eth0", "10.1.0.4")]).expect("bind");
    let bound = world(&dp, &b);
    // 10.1.0.4 goes (a delete, which fails), 10.1.0.8 comes (added first).
    b.kernel_mut()
        .fail_delete(0, KernelFailure::Refused(libc::EPERM));
    let e = b.replace(&mut dp, &[req("eth0", "10.1.0.8")]).unwrap_err();
    assert!(matches!(e, BindError::Netlink(_)), "{e}");
    assert_eq!(world(&dp, &b), bound);
}

#[test]
fn a_failed_address_dump_changes_nothing() {
    let (mut dp, mut b) = lab();
    let before = world(&dp, &b);
    b.kernel_mut().fail_next_dump();
    let e = b.add(&mut dp, &four()).unwrap_err();
    assert!(matches!(e, BindError::Netlink(_)), "{e}");
    assert_eq!(world(&dp, &b), before);
    assert!(b.kernel().log().is_empty(), "no address request");
}

#[test]
fn a_restore_whose_map_write_fails_removes_the_addresses_it_added_again() {
    let (mut dp, mut b) = lab();
    b.add(&mut dp, &four()).expect("bind");
    let saved = b.list().to_vec();
    // A new run: 10.1.0.6 vanished meanwhile; the map is as the old run
    // left it.
    let mut kernel = b.kernel().clone();
    kernel.drop_addr(ETH0, ip("10.1.0.6"));
    let from = kernel.log().len();
    let mut b2 = Bindings::with_kernel(kernel, 100);
    let before = world(&dp, &b2);
    dp.fail_next(Op::InsertLocalAddrs);
    let e = b2.restore(&mut dp, saved.clone()).unwrap_err();
    assert!(matches!(e, BindError::Datapath(_)), "{e}");
    assert_eq!(world(&dp, &b2), before, "10.1.0.6 is gone again");
    assert_eq!(
        requests(&b2, from, AddrOpKind::Add),
        [ip("10.1.0.6")],
        "it was added again"
    );

    // Without the failure the restore takes everything over.
    let r = b2.restore(&mut dp, saved.clone()).expect("restore");
    assert_eq!((r.readded, r.unchanged, r.total), (1, 3, 4), "{r}");
    assert_eq!(b2.list(), &saved[..]);
}

#[test]
fn an_undo_that_fails_too_reports_both_errors() {
    let (mut dp, mut b) = lab();
    dp.fail_next(Op::InsertLocalAddrs);
    // Undoing deletes 7, 6, 4: the delete of 6 fails.
    b.kernel_mut()
        .fail_delete(1, KernelFailure::Refused(libc::EBUSY));
    let e = b.add(&mut dp, &four()).unwrap_err();
    let BindError::Rollback { cause, undo } = &e else {
        panic!("expected Rollback, got {e}");
    };
    assert!(matches!(**cause, BindError::Datapath(_)), "{e}");
    assert!(
        undo.contains("cannot delete address 10.1.0.6/32 from eth0"),
        "{undo}"
    );
    assert!(
        e.to_string().contains("undoing the change failed too"),
        "{e}"
    );
    // The others were undone all the same.
    assert_eq!(
        b.kernel().addrs(ETH0),
        BTreeSet::from([
            (ip("10.1.0.1"), 24),
            (ip("10.1.0.5"), 32),
            (ip("10.1.0.6"), 32)
        ])
    );
}

#[test]
fn binding_on_an_interface_that_is_not_attached_is_refused_before_any_change() {
    let (mut dp, mut b) = lab();
    let before = world(&dp, &b);
    let e = b
        .add(&mut dp, &[req("eth1", "10.2.0.1"), req("eth0", "10.1.0.9")])
        .unwrap_err();
    let BindError::Invalid(errs) = &e else {
        panic!("expected Invalid, got {e}");
    };
    assert_eq!(errs.len(), 1, "{e}");
    assert!(e.to_string().contains("eth1"), "{e}");
    assert_eq!(world(&dp, &b), before);
    assert!(b.kernel().log().is_empty());
}

#[test]
fn a_sweep_removes_the_keys_no_binding_makes_and_keeps_the_rest() {
    let (mut dp, mut b) = lab();
    b.add(&mut dp, &four()).expect("bind");
    let kept = dp.maps().local_addrs.clone();
    // An earlier daemon bound 10.1.0.9 and saved no state: its key is in the map.
    let stale = xdpgate_model::bind::key(1, ip("10.1.0.9"));
    dp.maps_mut().local_addrs.insert(stale);
    assert_eq!(b.sweep(&mut dp).expect("sweep"), 1);
    assert_eq!(dp.maps().local_addrs, kept);
    assert_eq!(b.sweep(&mut dp).expect("sweep again"), 0);
}

#[test]
fn a_bind_stopped_at_a_cancellation_point_adds_nothing_and_reports_why() {
    let (mut dp, mut b) = lab();
    let before = world(&dp, &b);
    let work = crate::cancel::Work::new("bind add", tokio_util::sync::CancellationToken::new());
    work.client_gone();
    let e = crate::cancel::scope(&work, || {
        b.add(&mut dp, &[req("eth0", "10.1.0.16-10.1.0.55")])
    })
    .unwrap_err();
    assert!(
        matches!(
            e,
            BindError::Cancelled(crate::cancel::Cancelled::ClientGone)
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "stopped: the client went away (nothing was changed)"
    );
    assert_eq!(world(&dp, &b), before);
    assert!(requests(&b, 0, AddrOpKind::Add).is_empty());
}

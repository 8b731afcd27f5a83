//! `down`, pins this build cannot use, two writers on the same pins.
use std::{os::fd::AsFd as _, path::Path, time::Duration};

use xdpgate::{paths::maps_dir, sys::object};
use xdpgate_common::pins::{META_MAGIC, Meta, SCHEMA_VERSION};
use xdpgate_tests::{
    bpf,
    lab::{Lab, serial},
    xdpgate::{Daemon, StateDirs, xdp_on},
};

#[test]
fn down_leaves_no_program_link_or_pin() {
    let _g = serial();
    let lab = Lab::new("lcdown", 122).expect("lab");
    let iface = lab.a_end.ifname.clone();
    let d = Daemon::start(&lab.a, &[&iface], "native").expect("start");
    let out = d.dirs.run(&lab.a, &["down"], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a daemon is running"),
        "down refuses while the daemon runs"
    );
    let (status, dirs) = d.stop_keeping_state(libc::SIGTERM);
    assert!(status.success());
    assert!(xdp_on(&lab.a, &iface));
    assert!(dirs.bpffs.join("links").join(&iface).exists());
    // One interface: its link goes, the maps stay.
    dirs.run_ok(&lab.a, &["down", "--iface", &iface]);
    assert!(!xdp_on(&lab.a, &iface), "program left after down --iface");
    assert!(!dirs.bpffs.join("links").join(&iface).exists());
    assert!(
        dirs.bpffs
            .join(maps_dir(SCHEMA_VERSION))
            .join("XG_STATS")
            .exists(),
        "the maps stay"
    );
    let out = dirs.run(
        &lab.a,
        &["down", "--iface", &iface],
        Duration::from_secs(30),
    );
    assert_eq!(
        out.status.code(),
        Some(64),
        "not enforcing there: caller's error"
    );
    dirs.run_ok(&lab.a, &["down"]);
    assert!(!xdp_on(&lab.a, &iface), "program left after down");
    assert!(!dirs.bpffs.exists(), "pins left after down");
    let out = dirs.run_ok(&lab.a, &["down"]);
    assert!(out.contains("nothing to do"), "{out}");
}

/// Pins a `meta` record holding `meta` at `path`.
fn pin_meta(path: &Path, meta: &Meta) {
    xdpgate::datapath::pins::pin_meta(path, meta).expect("pin meta");
}

fn meta(schema: u32) -> Meta {
    Meta {
        magic: META_MAGIC,
        schema,
        committed_unix_ns: 1,
        ..Meta::default()
    }
}

/// Starts a daemon over pins prepared by `prepare`; it must fail naming
/// `names` and leave the interface and the pins as they were.
fn refused(lab: &Lab, tag: &str, prepare: impl FnOnce(&Path), names: &[&str]) {
    let iface = lab.a_end.ifname.as_str();
    let dirs = StateDirs::unique(tag);
    std::fs::create_dir_all(dirs.bpffs.join(maps_dir(SCHEMA_VERSION))).unwrap();
    std::fs::create_dir_all(dirs.bpffs.join("links")).unwrap();
    prepare(&dirs.bpffs);
    let before = list(&dirs.bpffs);
    let xdp_before = xdp_on(&lab.a, iface);
    let out = dirs.run(
        &lab.a,
        &["run", "--iface", iface, "--mode", "native", "--no-metrics"],
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{tag}: {err}");
    for n in names {
        assert!(err.contains(n), "{tag}: the error names {n}: {err}");
    }
    assert_eq!(list(&dirs.bpffs), before, "{tag}: pins changed");
    assert_eq!(
        xdp_on(&lab.a, iface),
        xdp_before,
        "{tag}: attachment changed"
    );
}

fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walk(dir);
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        out.push(p.display().to_string());
        if p.is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

#[test]
fn pins_it_cannot_use_are_refused_and_left_alone() {
    let _g = serial();
    let lab = Lab::new("lcpins", 123).expect("lab");
    let iface = lab.a_end.ifname.clone();
    // A newer schema.
    refused(
        &lab,
        "lcnewer",
        |root| pin_meta(&root.join("meta"), &meta(SCHEMA_VERSION + 1)),
        &["/meta", "newer xdpgate", "xdpgate down"],
    );
    // A map with the right name but the wrong key size (and type).
    refused(
        &lab,
        "lckey",
        |root| {
            pin_meta(&root.join("meta"), &meta(SCHEMA_VERSION));
            let fd = object::create_record(8).unwrap();
            let path = root.join(maps_dir(SCHEMA_VERSION)).join("XG_LOCAL_ADDRS");
            object::obj_pin(fd.as_fd(), &path).unwrap();
        },
        &[
            &format!("{}/XG_LOCAL_ADDRS", maps_dir(SCHEMA_VERSION)),
            "key size 4 (expected 24)",
        ],
    );
    // A pinned link to a program that is not xdpgate's, attached and enforcing.
    let prog = bpf::load_constant_xdp(2, "foreign").unwrap();
    let link = lab
        .a
        .run(|| bpf::attach_native(&prog, lab.a_end.ifindex))
        .unwrap();
    refused(
        &lab,
        "lclink",
        |root| {
            pin_meta(&root.join("meta"), &meta(SCHEMA_VERSION));
            object::obj_pin(link.as_fd(), &root.join("links").join(&iface)).unwrap();
        },
        &[&format!("links/{iface}"), "not xdpgate's"],
    );
    // (`refused` checked that the foreign program stayed attached; removing
    // the test's directory detached it.)
    // A directory owned by another user.
    refused(
        &lab,
        "lcowner",
        |root| std::os::unix::fs::chown(root, Some(65534), Some(65534)).unwrap(),
        &["owned by uid 65534"],
    );
    // A directory others may write to.
    refused(
        &lab,
        "lcmode",
        |root| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o777)).unwrap();
        },
        &["writable by others"],
    );
}

#[test]
fn a_second_daemon_or_down_on_the_same_pins_is_refused_and_changes_nothing() {
    let _g = serial();
    let lab = Lab::new("lcrace", 126).expect("lab");
    let iface = lab.a_end.ifname.clone();
    let d = Daemon::start(&lab.a, &[&iface], "native").expect("start");
    let prog = |lab: &Lab| {
        let (_, rows) = d.dirs.status(&lab.a, &iface);
        rows.first().map(|r| r["prog_id"].clone())
    };
    let before = prog(&lab);
    // Another run directory (so the daemon lock does not stop it), the same pins.
    let mut other = StateDirs::unique("lcrace2");
    other.bpffs = d.dirs.bpffs.clone();
    for args in [
        &[
            "run",
            "--iface",
            iface.as_str(),
            "--mode",
            "native",
            "--no-metrics",
        ][..],
        &["down"][..],
    ] {
        let out = other.run(&lab.a, args, Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("another process is using the pins"),
            "{args:?}: {err}"
        );
        assert_eq!(prog(&lab), before, "{args:?}: the attachment changed");
    }
    // `other` must not remove the pins it shares with the running daemon.
    other.bpffs = std::env::temp_dir().join("xdpgate-lcrace-none");
    drop(other);
    assert!(d.dirs.bpffs.join("links").join(&iface).exists());
    d.dirs.run_ok(&lab.a, &["status"]);
}

//! The CLI's failure modes: clear messages, non-zero exits, nothing left behind.
use std::{os::unix::process::CommandExt as _, process::Stdio, time::Duration};

use xdpgate_tests::{
    lab::{Lab, Netns, serial},
    xdpgate::{Daemon, StateDirs, xdp_on},
};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unknown_interface_is_a_clear_error() {
    let _g = serial();
    let ns = Netns::new("cli").unwrap();
    let dirs = StateDirs::unique("cli");
    let out = dirs.run(
        &ns,
        &["run", "--iface", "doesnotexist"],
        Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("\"doesnotexist\" does not exist in this network namespace"),
        "{err}"
    );
    assert!(!dirs.bpffs.exists(), "nothing may be pinned on failure");
}

#[test]
fn hw_mode_on_veth_fails_and_names_the_other_modes() {
    let _g = serial();
    let lab = Lab::new("hw", 30).unwrap();
    let dirs = StateDirs::unique("hw");
    let iface = lab.a_end.ifname.as_str();
    let out = dirs.run(
        &lab.a,
        &["run", "--iface", iface, "--mode", "hw"],
        Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot attach XDP to {iface} in hw mode")),
        "{err}"
    );
    assert!(
        err.contains("--mode native") && err.contains("--mode skb"),
        "{err}"
    );
    assert!(err.contains("does not fall back"), "{err}");
    assert!(!xdp_on(&lab.a, iface), "failed attach left a program");
    assert!(!dirs.bpffs.exists(), "failed attach left pinned maps");
}

#[test]
fn failure_on_second_interface_undoes_the_first() {
    let _g = serial();
    let lab = Lab::new("undo", 31).unwrap();
    let dirs = StateDirs::unique("undo");
    let iface = lab.a_end.ifname.as_str();
    let out = dirs.run(
        &lab.a,
        &["run", "--iface", iface, "--iface", "lo", "--mode", "native"],
        Duration::from_secs(120),
    );
    // lo has no native XDP: the whole start fails and veth is detached again.
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot attach XDP to lo in native mode"));
    assert!(!xdp_on(&lab.a, iface), "first interface left attached");
    assert!(!dirs.bpffs.exists());
}

#[test]
fn without_root_says_so() {
    let _g = serial();
    let ns = Netns::new("noroot").unwrap();
    let dirs = StateDirs::unique("noroot");
    for args in [&["run", "--iface", "lo"][..], &["stats"][..]] {
        let mut cmd = dirs.command(&ns);
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        // SAFETY: setgid/setuid between fork and exec; async-signal-safe calls only.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("needs root"), "{}", stderr(&out));
    }
}

#[test]
fn usage_errors_exit_64() {
    let _g = serial();
    let ns = Netns::new("usage").unwrap();
    let dirs = StateDirs::unique("usage");
    for args in [
        &["run"][..],
        &["run", "--iface", "lo", "--mode", "turbo"][..],
        &["frobnicate"][..],
    ] {
        let out = dirs.run(&ns, args, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
    }
    let out = dirs.run(&ns, &["--help"], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn second_daemon_on_same_state_is_refused() {
    let _g = serial();
    let lab = Lab::new("lock", 32).unwrap();
    let iface = lab.a_end.ifname.as_str();
    let daemon = Daemon::start(&lab.a, &[iface], "skb").unwrap();
    let out = daemon.dirs.run(
        &lab.a,
        &["run", "--iface", iface, "--mode", "skb"],
        Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "another xdpgate daemon (pid {}) already runs",
            daemon.pid()
        )),
        "{}",
        stderr(&out)
    );
    // The first daemon is unaffected.
    assert!(xdp_on(&lab.a, iface));
    assert!(daemon.stop_with(libc::SIGTERM).success());
}

#[test]
fn stats_and_status_without_daemon() {
    let _g = serial();
    let ns = Netns::new("nodaemon").unwrap();
    let dirs = StateDirs::unique("nodaemon");
    let out = dirs.run(&ns, &["stats"], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no running xdpgate daemon"),
        "{}",
        stderr(&out)
    );
    let out = dirs.run(&ns, &["status"], Duration::from_secs(10));
    // 3: not running, nothing enforcing (the health check's code).
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("daemon: not running"), "{text}");
    assert!(text.contains("no interface in this network namespace has an XDP program"));
}

#[test]
fn status_names_foreign_programs_and_run_refuses_their_interface() {
    use xdpgate_tests::bpf;
    let _g = serial();
    let lab = Lab::new("foreign", 33).unwrap();
    let iface = lab.a_end.ifname.clone();
    let ifindex = lab.a_end.ifindex;
    let (prog, link) = lab.a.run(|| {
        let prog = bpf::load_constant_xdp(bpf::XDP_PASS, "foreign").expect("load");
        let link = bpf::attach(&prog, ifindex, bpf::XDP_FLAGS_SKB_MODE).expect("attach");
        (prog, link)
    });
    let dirs = StateDirs::unique("foreign");

    let (status, ours) = dirs.status(&lab.a, &iface);
    assert_eq!(ours.len(), 1, "{status}");
    assert_eq!(ours[0]["mode"], "skb");
    assert_eq!(ours[0]["program"], "foreign");
    assert_eq!(ours[0]["xdpgate"], false);
    let text = dirs.run(&lab.a, &["status"], Duration::from_secs(10));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&iface) && l.contains("skb") && l.contains(" other ")),
        "{text}"
    );

    // xdpgate will not take over the interface, and says why.
    let out = dirs.run(
        &lab.a,
        &["run", "--iface", &iface, "--mode", "skb"],
        Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("another XDP program is already attached"),
        "{}",
        stderr(&out)
    );
    assert!(
        xdp_on(&lab.a, &iface),
        "the foreign program must stay attached"
    );
    assert!(!dirs.bpffs.exists());

    drop(link);
    drop(prog);
    assert!(!xdp_on(&lab.a, &iface));
}

#[test]
fn a_run_directory_of_another_owner_or_writable_by_others_is_refused_before_anything_is_written() {
    use std::os::unix::fs::PermissionsExt as _;
    let _g = serial();
    let lab = Lab::new("sockown", 34).unwrap();
    let iface = lab.a_end.ifname.as_str();
    // The run directory is checked before anything is written in it (the
    // lock file), with the fix named.
    for (uid, mode, why) in [
        (65534, 0o700, "is owned by uid 65534 (nobody)"),
        (0, 0o777, "is writable by others (mode 0777)"),
    ] {
        let dirs = StateDirs::unique("sockown");
        std::fs::create_dir_all(&dirs.run).unwrap();
        std::fs::set_permissions(&dirs.run, std::fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&dirs.run, Some(uid), Some(uid)).unwrap();
        let out = dirs.run(
            &lab.a,
            &["run", "--iface", iface, "--mode", "skb", "--no-metrics"],
            Duration::from_secs(120),
        );
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&dirs.run.display().to_string())
                && stderr(&out).contains(why)
                && stderr(&out).contains("fix: "),
            "{}",
            stderr(&out)
        );
        assert!(!xdp_on(&lab.a, iface), "nothing attached");
    }
}

/// A file removed on drop.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn run_with_a_bad_limit_prints_each_located_error_exits_64_and_attaches_nothing() {
    let _g = serial();
    let lab = Lab::new("badlim", 35).unwrap();
    let dirs = StateDirs::unique("badlim");
    let iface = lab.a_end.ifname.as_str();
    let cfg =
        TempFile(std::env::temp_dir().join(format!("xdpgate-badlim-{}.toml", std::process::id())));
    let text = format!(
        "[ddos]\nsynack_v4_prefix = 33\n\n[[interface]]\nname = \"{iface}\"\nmode = \"skb\"\n\n[[rule]]\nid = 1\npriority = 1\nproto = \"udp\"\naction = \"allow\"\nlimit = {{ pps = 0, v6_prefix = 129 }}\nsyncookie = true\n"
    );
    std::fs::write(&cfg.0, text).unwrap();
    let path = cfg.0.to_str().unwrap();
    let out = dirs.run(&lab.a, &["run", "--config", path], Duration::from_secs(120));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{err}");
    for line in [
        format!("{path}:2:1: [ddos] synack_v4_prefix = 33: use 1 to 32"),
        format!("{path}:13:11: rule 1: limit.pps: 0 is not a rate"),
        format!("{path}:13:20: rule 1: limit.v6_prefix: /129 is not a prefix length"),
        format!("{path}:14:1: rule 1: syncookie needs proto tcp"),
        format!("{path}:14:1: rule 1: syncookie needs dport"),
    ] {
        assert!(err.contains(&line), "{line:?} not in {err}");
    }
    assert!(err.contains("has 5 error(s)"), "{err}");
    assert!(
        !xdp_on(&lab.a, iface),
        "a refused configuration attached a program"
    );
    assert!(!dirs.bpffs.exists(), "a refused configuration pinned maps");
}

#[test]
fn acl_add_with_a_bad_limit_flag_exits_64_naming_the_flag() {
    let _g = serial();
    let ns = Netns::new("acllim").unwrap();
    let dirs = StateDirs::unique("acllim");
    let base = [
        "acl",
        "add",
        "--id",
        "5",
        "--priority",
        "5",
        "--action",
        "allow",
    ];
    for (extra, phrase) in [
        (&["--limit-pps", "0"][..], "--limit-pps: 0 is not a rate"),
        (
            &["--limit-pps", "10", "--limit-v4-prefix", "40"][..],
            "--limit-v4-prefix: /40 is not a prefix length from 1 to 32",
        ),
        (
            &["--limit-pps", "many"][..],
            "invalid value 'many' for '--limit-pps <N>'",
        ),
        (
            &["--proto", "udp", "--dport", "53", "--syncookie"][..],
            "syncookie needs proto tcp",
        ),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let out = dirs.run(&ns, &args, Duration::from_secs(10));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(phrase), "{args:?}: {phrase:?} not in {err}");
    }
}

#[test]
fn reload_refuses_a_new_bucket_table_size_and_accepts_changes_of_the_other_ddos_keys() {
    let _g = serial();
    let lab = Lab::new("ddosrl", 36).unwrap();
    let iface = lab.a_end.ifname.as_str();
    let cfg =
        TempFile(std::env::temp_dir().join(format!("xdpgate-ddosrl-{}.toml", std::process::id())));
    let base = format!(
        "[daemon]\nshutdown_grace_seconds = 3\n\n[metrics]\nlisten = []\n\n[[interface]]\nname = \"{iface}\"\nmode = \"skb\"\n"
    );
    std::fs::write(&cfg.0, &base).unwrap();
    let cfg_arg = ["--config".as_ref(), cfg.0.as_os_str()];
    let d = Daemon::start_in(&lab.a, StateDirs::unique("ddosrl"), &[], "", &cfg_arg)
        .expect("run --config");
    let reload = || d.dirs.run(&lab.a, &["reload"], Duration::from_secs(60));

    std::fs::write(&cfg.0, format!("{base}\n[ddos]\nlimit_buckets = 131072\n")).unwrap();
    let out = reload();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("[ddos] limit_buckets changed from 65536 to 131072")
            && err.contains("restart xdpgate to apply it"),
        "{err}"
    );

    let keys = "synack_pps = 100\nsynack_burst = 10\nsynack_v4_prefix = 16\nsynack_v6_prefix = 32\nsyncookie_refresh_secs = 5\n";
    std::fs::write(&cfg.0, format!("{base}\n[ddos]\n{keys}")).unwrap();
    let out = reload();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(xdp_on(&lab.a, iface));
}

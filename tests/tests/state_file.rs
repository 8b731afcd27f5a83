//! The daemon's own files against a hostile or unlucky host (issue 14,
//! defects 2, 3, 6 and 8): a state or run directory another user may write
//! to, symbolic links planted where the daemon writes (the victim's bytes
//! must not change), a state filesystem that is full or read-only (the
//! daemon starts anyway, enforces the saved state, reports the state
//! unsaved and saves once it can), and the exit codes of `xdpgate status`.
use std::{
    fs,
    io::Write as _,
    os::{
        fd::AsRawFd as _,
        unix::fs::{PermissionsExt as _, chown, lchown, symlink},
    },
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use xdpgate_model::state::{self, journal};
use xdpgate_tests::{
    lab::{Lab, Netns, serial},
    traffic::ping_ok,
    xdpgate::{Daemon, StateDirs, http_get, xdp_on},
};

const NOBODY: u32 = 65534;
const METRICS: u16 = 9464;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A unique directory of the test (under /run, root's), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = PathBuf::from("/run").join(format!(
            "xdpgate-scratch-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
        Scratch(p)
    }

    /// A root-owned file (mode 0600) with known bytes: what a planted link
    /// points to.
    fn victim(&self) -> PathBuf {
        let v = self.0.join("victim");
        fs::write(&v, b"root's precious bytes\n").unwrap();
        fs::set_permissions(&v, fs::Permissions::from_mode(0o600)).unwrap();
        v
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn assert_untouched(victim: &Path) {
    assert_eq!(
        fs::read(victim).unwrap(),
        b"root's precious bytes\n",
        "the planted link's target was written"
    );
}

/// A small tmpfs (mode 0700, root's) mounted for the test; unmounted on
/// drop, also when the test fails.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, size: &str) -> Tmpfs {
        fs::create_dir_all(&at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(&at)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "mount: {}", stderr(&out));
        Tmpfs(at)
    }

    fn remount(&self, opt: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(&self.0)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "remount {opt}: {}", stderr(&out));
    }

    /// Fills the filesystem: writes a file until ENOSPC (bounded by the
    /// filesystem's size). Returns the filler's path.
    fn fill(&self) -> PathBuf {
        let p = self.0.join("filler");
        let mut f = fs::File::create(&p).unwrap();
        let chunk = [0xa5u8; 1024];
        for _ in 0..4096 {
            if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                return p;
            }
        }
        panic!("the tmpfs did not fill up within 4 MiB");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = fs::remove_dir(&self.0);
    }
}

/// `xdpgate status -o json` with its exit code, checked to agree with the
/// document's `exit_code`.
fn status(dirs: &StateDirs, ns: &Netns) -> (i32, serde_json::Value) {
    let out = dirs.run(ns, &["status", "--output", "json"], Duration::from_secs(10));
    let code = out.status.code().expect("exit code");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status JSON ({e}): {}", stderr(&out)));
    assert_eq!(doc["exit_code"].as_i64(), Some(i64::from(code)), "{doc}");
    (code, doc)
}

fn metric(ns: &Netns, name: &str) -> f64 {
    let (code, body) = http_get(ns, METRICS, "/metrics").expect("scrape");
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        .trim()
        .parse()
        .unwrap()
}

/// The policy of `iface` as the daemon left it saved: the state file, then
/// the changes of its journal after it.
fn saved_policy(path: &Path, iface: &str) -> String {
    let mut saved = state::load(path).unwrap().expect("a state file");
    journal::replay(path, &mut saved).unwrap();
    saved.acl.policy.get(iface).map_or_else(
        || "none".to_owned(),
        |v| {
            serde_json::to_value(v)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        },
    )
}

#[test]
fn a_state_directory_of_another_user_or_writable_by_others_is_refused_and_the_planted_links_target_is_untouched()
 {
    let _g = serial();
    let lab = Lab::new("stdir", 201).unwrap();
    let iface = lab.a_end.ifname.clone();
    for (uid, mode, found, fix) in [
        (NOBODY, 0o755, "owned by uid 65534 (nobody)", "chown root"),
        (0, 0o777, "writable by others (mode 0777)", "chmod 0755"),
    ] {
        let s = Scratch::new("stdir");
        let victim = s.victim();
        let dir = s.0.join("state");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
        chown(&dir, Some(uid), Some(uid)).unwrap();
        // What an unprivileged user plants: the state file, and the old
        // predictable temporaries for the next pids.
        let state = dir.join("state.json");
        symlink(&victim, &state).unwrap();
        lchown(&state, Some(NOBODY), Some(NOBODY)).unwrap();
        let next_pid = std::process::id();
        for pid in next_pid..next_pid + 64 {
            let tmp = dir.join(format!(".state.json.tmp.{pid}"));
            symlink(&victim, &tmp).unwrap();
            lchown(&tmp, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        let mut dirs = StateDirs::unique("stdir");
        dirs.state_file = state;
        let out = dirs.run(
            &lab.a,
            &["run", "--iface", &iface, "--mode", "skb", "--no-metrics"],
            Duration::from_secs(60),
        );
        let err = stderr(&out);
        assert_untouched(&victim);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(&dir.display().to_string()), "{err}");
        assert!(err.contains(found), "{err}");
        assert!(
            err.contains(&format!("{fix} {}", dir.display())),
            "the message names the fix: {err}"
        );
        assert!(!xdp_on(&lab.a, &iface), "nothing attached");
    }
}

#[test]
fn a_planted_lock_file_symlink_is_refused_and_its_target_is_untouched() {
    let _g = serial();
    let lab = Lab::new("stlock", 202).unwrap();
    let iface = lab.a_end.ifname.clone();
    // In a run directory others may write to, and in a good one (a link
    // left by someone with root's powers is not followed either).
    for (mode, found) in [
        (0o777, "writable by others (mode 0777)"),
        (0o700, "a symbolic link"),
    ] {
        let s = Scratch::new("stlock");
        let victim = s.victim();
        let dirs = StateDirs::unique("stlock");
        fs::create_dir(&dirs.run).unwrap();
        fs::set_permissions(&dirs.run, fs::Permissions::from_mode(mode)).unwrap();
        symlink(&victim, dirs.run.join("xdpgate.lock")).unwrap();
        let out = dirs.run(
            &lab.a,
            &["run", "--iface", &iface, "--mode", "skb", "--no-metrics"],
            Duration::from_secs(60),
        );
        let err = stderr(&out);
        assert_untouched(&victim);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(found), "{err}");
        assert!(err.contains(&dirs.run.display().to_string()), "{err}");
        assert!(!xdp_on(&lab.a, &iface), "nothing attached");
        assert!(
            !dirs.bpffs.exists(),
            "refused before the datapath was touched"
        );
    }
}

/// Starts the daemon on `iface` with the metrics listener.
fn start(lab: &Lab, dirs: StateDirs, ifaces: &[&str]) -> Daemon {
    let listen = format!("127.0.0.1:{METRICS}");
    Daemon::start_in(
        &lab.a,
        dirs,
        ifaces,
        "skb",
        &["--metrics-listen".as_ref(), listen.as_ref()],
    )
    .unwrap_or_else(|e| panic!("start: {e}"))
}

/// Stops `d`, removes the datapath (so that the next start is cold and
/// enforces only what it installs) and hands back its directories.
fn stop_and_down(d: Daemon, lab: &Lab) -> StateDirs {
    let (st, dirs) = d.stop_keeping_state(libc::SIGTERM);
    assert!(st.success(), "{st}");
    dirs.run_ok(&lab.a, &["down"]);
    dirs
}

#[test]
fn a_full_or_read_only_state_filesystem_starts_from_the_saved_state_reports_it_unsaved_and_saves_once_it_can()
 {
    let _g = serial();
    let lab = Lab::new("stfull", 203).unwrap();
    let iface = lab.a_end.ifname.clone();
    let a4 = std::net::IpAddr::V4(lab.a_end.ipv4);
    let fs_dir = PathBuf::from("/run").join(format!("xdpgate-stfull-{}", std::process::id()));
    let tmpfs = Tmpfs::mount(fs_dir.clone(), "64k");
    let mut dirs = StateDirs::unique("stfull");
    dirs.state_file = fs_dir.join("state.json");
    let state = dirs.state_file.clone();

    // A valid state file: a runtime change (default deny) saved.
    let d = start(&lab, dirs, &[&iface]);
    assert!(ping_ok(&lab, a4), "allowed before the change");
    d.dirs.run_ok(&lab.a, &["policy", &iface, "deny"]);
    assert!(!ping_ok(&lab, a4), "denied after the change");
    assert_eq!(saved_policy(&state, &iface), "deny");
    let dirs = stop_and_down(d, &lab);
    assert!(!xdp_on(&lab.a, &iface));

    // Full: the daemon starts from the saved state without writing.
    let filler = tmpfs.fill();
    let d = start(&lab, dirs, &[&iface]);
    let log = d.log();
    assert!(log.contains("resuming the state saved"), "{log}");
    assert!(
        log.contains("state not saved") && log.contains("No space left on device"),
        "{log}"
    );
    assert_eq!(
        log.matches("state not saved").count(),
        1,
        "logged once: {log}"
    );
    assert!(xdp_on(&lab.a, &iface));
    assert!(!ping_ok(&lab, a4), "the saved default deny is enforced");
    let (code, doc) = status(&d.dirs, &lab.a);
    assert_eq!(code, 2, "{doc}");
    assert_eq!(doc["health"], "degraded");
    let why = doc["daemon"]["detail"]["state_not_saved"].as_str().unwrap();
    assert!(why.contains("No space left on device"), "{why}");
    let text = d.dirs.run(&lab.a, &["status"], Duration::from_secs(10));
    assert_eq!(text.status.code(), Some(2));
    assert!(
        stdout(&text).contains("state not saved: "),
        "{}",
        stdout(&text)
    );
    assert!(stderr(&text).contains("degraded"), "{}", stderr(&text));
    assert_eq!(metric(&lab.a, "xdpgate_state_unsaved"), 1.0);
    assert!(metric(&lab.a, "xdpgate_state_save_failures_total") >= 1.0);

    // A change while full: in force, reported unsaved, the file unchanged.
    let out = d.dirs.run(
        &lab.a,
        &["policy", &iface, "allow"],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the change is in force, but it could not be saved"),
        "{}",
        stderr(&out)
    );
    assert!(ping_ok(&lab, a4), "the change is in force");
    assert_eq!(saved_policy(&state, &iface), "deny", "the old state stays");
    assert_eq!(status(&d.dirs, &lab.a).0, 2);

    // Space again: the daemon saves by itself (it retries every 15 s) and
    // the condition clears, without any change.
    fs::remove_file(&filler).unwrap();
    let t0 = Instant::now();
    let mut cleared = None;
    while t0.elapsed() < Duration::from_secs(40) {
        if status(&d.dirs, &lab.a).0 == 0 {
            cleared = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let cleared = cleared.expect("the state is saved within 40 s of space coming back");
    eprintln!("state saved again {cleared:?} after space came back");
    assert_eq!(
        saved_policy(&state, &iface),
        "allow",
        "the state in force was saved"
    );
    d.dirs.run_ok(&lab.a, &["policy", &iface, "deny"]);
    assert_eq!(saved_policy(&state, &iface), "deny");
    let (code, doc) = status(&d.dirs, &lab.a);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(
        doc["daemon"]["detail"]["state_not_saved"],
        serde_json::Value::Null
    );
    assert_eq!(metric(&lab.a, "xdpgate_state_unsaved"), 0.0);
    assert!(d.log().contains("state saved in"), "{}", d.log());
    let dirs = stop_and_down(d, &lab);

    // Read-only: the same.
    tmpfs.remount("ro");
    let d = start(&lab, dirs, &[&iface]);
    assert!(d.log().contains("Read-only file system"), "{}", d.log());
    assert!(!ping_ok(&lab, a4), "the saved default deny is enforced");
    let (code, doc) = status(&d.dirs, &lab.a);
    assert_eq!(code, 2, "{doc}");
    assert!(
        doc["daemon"]["detail"]["state_not_saved"]
            .as_str()
            .unwrap()
            .contains("Read-only file system"),
        "{doc}"
    );
    // Writable again: the next change saves (it does not wait for the
    // retry), and the condition clears.
    tmpfs.remount("rw");
    d.dirs.run_ok(&lab.a, &["policy", &iface, "deny"]);
    assert_eq!(saved_policy(&state, &iface), "deny");
    assert_eq!(status(&d.dirs, &lab.a).0, 0);
    assert_eq!(metric(&lab.a, "xdpgate_state_unsaved"), 0.0);
    let dirs = stop_and_down(d, &lab);
    drop(dirs);
    drop(tmpfs);
}

#[test]
fn status_exit_codes_tell_running_degraded_unreachable_enforcing_without_a_daemon_and_not_running()
{
    let _g = serial();
    let lab = Lab::new("stcode", 204).unwrap();
    let iface = lab.a_end.ifname.clone();
    let dirs = StateDirs::unique("stcode");

    // 3: nothing runs, nothing enforces.
    let (code, doc) = status(&dirs, &lab.a);
    assert_eq!((code, doc["health"].as_str()), (3, Some("not_running")));
    let out = dirs.run(&lab.a, &["status"], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("xdpgate: status: not running"),
        "{}",
        stderr(&out)
    );

    // 1: a lock is held, but nothing answers on the socket.
    fs::create_dir(&dirs.run).unwrap();
    fs::set_permissions(&dirs.run, fs::Permissions::from_mode(0o700)).unwrap();
    let mut lock = fs::File::create(dirs.run.join("xdpgate.lock")).unwrap();
    writeln!(lock, "{}", std::process::id()).unwrap();
    // SAFETY: flock on a descriptor `lock` owns.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let out = dirs.run(&lab.a, &["status"], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not answer"), "{}", stderr(&out));
    drop(lock);
    fs::remove_dir_all(&dirs.run).unwrap();

    // 0: running, enforcing, saved.
    let d = start(&lab, dirs, &[&iface]);
    let (code, doc) = status(&d.dirs, &lab.a);
    assert_eq!((code, doc["health"].as_str()), (0, Some("ok")), "{doc}");

    // 4: stopped; the pinned datapath enforces without it.
    let (_, dirs) = d.stop_keeping_state(libc::SIGTERM);
    let (code, doc) = status(&dirs, &lab.a);
    assert_eq!(
        (code, doc["health"].as_str()),
        (4, Some("enforcing_without_daemon")),
        "{doc}"
    );
    dirs.run_ok(&lab.a, &["down"]);
    assert_eq!(status(&dirs, &lab.a).0, 3);

    // 64: invalid input, as for every verb.
    let out = dirs.run(
        &lab.a,
        &["status", "--output", "yaml"],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(64));
    // (2, degraded, is checked with a full state filesystem above.)
}

#[test]
fn a_saved_policy_for_an_interface_no_longer_configured_is_warned_about_at_start_and_in_status() {
    let _g = serial();
    let lab = Lab::new("storph", 205).unwrap();
    let iface = lab.a_end.ifname.clone();
    // A second interface in the protected namespace (a veth pair, both
    // ends there; the namespace and they go away with the lab).
    lab.a
        .exec(
            "ip",
            &[
                "link", "add", "orph0", "type", "veth", "peer", "name", "orph1",
            ],
        )
        .unwrap();
    lab.a.exec("ip", &["link", "set", "orph0", "up"]).unwrap();
    lab.a.exec("ip", &["link", "set", "orph1", "up"]).unwrap();
    let d = start(&lab, StateDirs::unique("storph"), &[&iface, "orph0"]);
    d.dirs.run_ok(&lab.a, &["policy", "orph0", "deny"]);
    let dirs = stop_and_down(d, &lab);
    // The same (flag-only) configuration without orph0: the state is resumed.
    let d = start(&lab, dirs, &[&iface]);
    let log = d.log();
    assert!(
        log.contains("names interface orph0, which the configuration does not configure"),
        "{log}"
    );
    let (code, doc) = status(&d.dirs, &lab.a);
    assert_eq!(code, 0, "a warning, not a failure: {doc}");
    let warnings = doc["daemon"]["detail"]["warnings"].to_string();
    assert!(warnings.contains("orph0"), "{doc}");
    let text = d.dirs.run_ok(&lab.a, &["status"]);
    assert!(text.contains("warning: the state file"), "{text}");
    let dirs = stop_and_down(d, &lab);
    drop(dirs);
}

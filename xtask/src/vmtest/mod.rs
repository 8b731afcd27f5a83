//! `cargo xtask vmtest`: the kernel-compatibility matrix.
//!
//! For each kernel series it boots Debian's cloud kernel of that series in
//! QEMU (TCG emulation, no KVM) with an initramfs holding busybox, iproute2,
//! the kernel's veth module and statically linked test binaries, runs the
//! kernel-touching tests inside the guest and prints a table.
//!
//! Steps, each saying what it found or did:
//! 1. installs the host packages it needs (QEMU, busybox-static, kmod, xz);
//! 2. keeps a private apt state under `.tools/vmtest/apt/` (its own sources
//!    list for bullseye, bookworm-security, trixie, trixie-backports and sid
//!    on the host's Debian mirror; the host's apt sources are never touched)
//!    and refreshes its package index when it is older than a day;
//! 3. resolves the newest kernel package of each series, downloads its .debs
//!    into `.tools/vmtest/debs/` and extracts the kernel and its modules into
//!    `.tools/vmtest/kernels/<release>/` (`dpkg -x`, `depmod -b`); both are
//!    reused by later runs;
//! 4. builds the test binaries and `xdpgate` statically (`+crt-static`,
//!    `--target x86_64-unknown-linux-gnu`, release, in `target/vmtest/`);
//! 5. per kernel, writes an initramfs and boots it with a time limit; the
//!    guest's init prints delimited per-group results on the serial console,
//!    which goes to `target/vmtest/logs/<release>.log`.
//!
//! Nothing is installed into the host's /boot, and the guests have no network.
//!
//! Files: `kernels.rs` (the private apt state; resolving, downloading and
//! extracting kernels), `binaries.rs` (the static test binaries),
//! `initramfs.rs` (the image and the guest's init script), `boot.rs`
//! (booting a guest and reading the results from its console); this file
//! holds the series, the groups, [`run`] and the table.

mod binaries;
mod boot;
mod initramfs;
mod kernels;

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::bail;

use binaries::build;
use boot::{boot, guest_oops};
use initramfs::{base_image, write_initramfs};
use kernels::{Apt, fetch_kernel};

use crate::{bootstrap, say};

/// Series that must pass.
pub(crate) const SUPPORTED: &[&str] = &["6.1", "6.12", "6.16", "6.17", "6.18", "7.2", "7.3"];
/// Series run for information only: failures show in the table but do not fail
/// the command.
pub(crate) const INFORMATIONAL: &[&str] = &["5.10"];

/// Host packages the matrix needs.
const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "xz-utils",
    "iproute2",
    "iputils-ping",
];

/// Integration-test binaries put into the guest.
const TEST_BINARIES: &[&str] = &[
    "verify",
    "parser",
    "acl_diff",
    "attach",
    "bind",
    "lb_encap",
    "lb_l2dsr",
    "lb_maglev",
    "lb_drops",
    "lb_next_hop",
    "lb_not_steered",
    "lb_decap",
    "syncookie",
    "cli",
    "lifecycle",
    "vm_probe",
];

/// Options of `cargo xtask vmtest`.
pub(crate) struct Options {
    /// Series to run (empty: the default set).
    pub kernels: Vec<String>,
    /// Every series, including the informational ones.
    pub all: bool,
    /// Also run the deliberately demanding feature probe.
    pub probe_broken: bool,
    /// Time limit per guest.
    pub timeout: Duration,
    /// Refresh the package index even if it is recent.
    pub refresh: bool,
}

/// One group of tests run in the guest: a test binary and its arguments.
struct Group {
    name: &'static str,
    binary: &'static str,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    /// Loads the xdpgate program: skipped once the kernel's verifier refused it
    /// (every test would fail the same way, slowly under TCG).
    loads_program: bool,
}

fn groups(probe_broken: bool) -> Vec<Group> {
    let mut g = vec![
        Group {
            name: "verify",
            binary: "verify",
            // Prints the verified instruction count (read by parse_console).
            args: &["--nocapture"],
            env: &[],
            loads_program: true,
        },
        Group {
            name: "parser",
            binary: "parser",
            args: &[],
            env: &[],
            loads_program: true,
        },
        Group {
            name: "acl_diff",
            binary: "acl_diff",
            args: &[],
            env: &[("XDPGATE_DIFF_PACKETS", "5000")],
            loads_program: true,
        },
        Group {
            name: "attach",
            binary: "attach",
            args: &[],
            env: &[],
            loads_program: true,
        },
        Group {
            name: "bind",
            binary: "bind",
            args: &[],
            env: &[],
            loads_program: true,
        },
        Group {
            name: "lb_encap",
            binary: "lb_encap",
            // Prints the steering program's verified instruction count.
            args: &["--nocapture"],
            env: &[],
            loads_program: true,
        },
        Group {
            name: "lb_l2dsr",
            binary: "lb_l2dsr",
            args: &[],
            env: &[],
            loads_program: true,
        },
        Group {
            name: "lb_maglev",
            binary: "lb_maglev",
            args: &[],
            env: &[],
            loads_program: true,
        },
        Group {
            name: "lb_drops",
            binary: "lb_drops",
            args: &[],
            env: &[],
            loads_program: true,
        },
        Group {
            name: "lb_next_hop",
            binary: "lb_next_hop",
            args: &[],
            env: &[],
            loads_program: true,
        },
        Group {
            name: "lb_not_steered",
            binary: "lb_not_steered",
            args: &[],
            env: &[],
            loads_program: true,
        },
        Group {
            name: "lb_decap",
            binary: "lb_decap",
            args: &[],
            env: &[],
            loads_program: true,
        },
        // The SYN-cookie helpers and the kernel's cookie check differ by
        // kernel: on each, the handshake of both families (SYN-ACK bytes,
        // the cookie ACK, wrong cookies), VLAN tags and IPv6 extension
        // headers. The other cases of the file run on the host: every test
        // loads the datapath, which the 6.1 verifier takes 15-20 s for under
        // TCG.
        Group {
            name: "syncookie",
            binary: "syncookie",
            args: &[
                "gets_a_cookie_synack",
                "vlan_tagged_syn",
                "syn_with_extension_headers",
            ],
            env: &[],
            loads_program: true,
        },
        Group {
            name: "cli",
            binary: "cli",
            args: &[],
            env: &[],
            loads_program: true,
        },
        Group {
            name: "lifecycle",
            binary: "lifecycle",
            // Prints what leaked and what arrived across each restart. The
            // upgrade tests need second builds of the daemon, which only the
            // host run has; the million-prefix cold start takes minutes
            // under TCG and runs on the host.
            args: &[
                "--nocapture",
                "--skip",
                "an_upgrade_to",
                "--skip",
                "a_cold_start",
            ],
            env: &[],
            loads_program: true,
        },
    ];
    // The probe goes first: it is quick, and its result shows even when a
    // later group runs into the time limit.
    if probe_broken {
        g.insert(
            0,
            Group {
                name: "probe_frags",
                binary: "vm_probe",
                args: &["--ignored"],
                env: &[],
                loads_program: false,
            },
        );
    }
    g
}

/// A resolved kernel of one series.
#[derive(Clone, Debug)]
struct Kernel {
    /// `uname -r`, e.g. `6.1.0-56-cloud-amd64`.
    release: String,
    /// Debian package version, e.g. `6.1.192-2`.
    version: String,
    /// Packages to download (the image and, from 7.x, its binary and modules).
    packages: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Status {
    Pass,
    Fail,
    Timeout,
    Error(String),
}

struct Outcome {
    series: String,
    kernel: String,
    status: Status,
    passed: u32,
    failed: u32,
    ignored: u32,
    secs: f64,
    /// Failing groups: name and the tail of their output.
    failures: Vec<(String, String)>,
    log: Option<PathBuf>,
    /// The guest kernel's oops that made this series boot a second time.
    retried_after: Option<String>,
    /// Instructions the guest's verifier processed for the main program and
    /// the steering program, as the `verify` and `lb_encap` groups print them.
    verified: Verified,
}

/// The verifier's processed-instruction counts one guest reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Verified {
    /// `xdpgate`.
    pub(crate) main: Option<u32>,
    /// `xdpgate_steer`.
    pub(crate) steer: Option<u32>,
}

/// Runs the matrix; fails if a supported series does not pass.
pub(crate) fn run(root: &Path, env: &bootstrap::Env, opts: &Options) -> anyhow::Result<()> {
    let series = select(opts)?;
    say(&format!("vmtest: series {}", series.join(", ")));
    bootstrap::apt_install(HOST_PACKAGES, "vmtest host packages")?;
    let cache = root.join(".tools/vmtest");
    let apt = Apt::new(&cache)?;
    apt.update(opts.refresh)?;

    let t0 = Instant::now();
    let bins = build(root, env)?;
    say(&format!(
        "vmtest: static test binaries ready in {:.0} s",
        t0.elapsed().as_secs_f64()
    ));
    let base = base_image(&bins)?;
    let logs = root.join("target/vmtest/logs");
    fs::create_dir_all(&logs)?;

    let groups = groups(opts.probe_broken);
    let mut outcomes = Vec::new();
    for s in &series {
        let started = Instant::now();
        let outcome = (|| -> anyhow::Result<Outcome> {
            let k = apt.resolve(s)?;
            let dir = fetch_kernel(&cache, &apt, &k)?;
            let initrd = root.join(format!("target/vmtest/initrd-{}.cpio", k.release));
            write_initramfs(&base, &dir, &k, &groups, &initrd)?;
            let log = logs.join(format!("{}.log", k.release));
            let mut o = boot(&dir, &initrd, &log, opts.timeout, &groups)?;
            // A guest kernel that oopses (seen once: an int3 in live-patched
            // text under TCG) gets one more boot; the first console is kept
            // and the table says so. An oops that repeats fails the series.
            if o.status != Status::Pass
                && let Some(oops) = guest_oops(&log)
            {
                let first = log.with_extension("oops.log");
                fs::rename(&log, &first)?;
                say(&format!(
                    "vmtest: {s}: the guest kernel oopsed ({oops}); booting it once more \
                     (first console kept in {})",
                    first.display()
                ));
                o = boot(&dir, &initrd, &log, opts.timeout, &groups)?;
                o.retried_after = Some(format!("{oops} (console: {})", first.display()));
            }
            o.series = s.clone();
            o.kernel = format!("{} ({})", k.release, k.version);
            Ok(o)
        })();
        let mut o = outcome.unwrap_or_else(|e| Outcome {
            series: s.clone(),
            kernel: "-".into(),
            status: Status::Error(format!("{e:#}")),
            passed: 0,
            failed: 0,
            ignored: 0,
            secs: 0.0,
            failures: Vec::new(),
            log: None,
            retried_after: None,
            verified: Verified::default(),
        });
        o.secs = started.elapsed().as_secs_f64();
        say(&format!(
            "vmtest: {} {}: {} ({} passed, {} failed) in {:.0} s",
            o.series,
            o.kernel,
            status_word(&o.status),
            o.passed,
            o.failed,
            o.secs
        ));
        outcomes.push(o);
    }
    print!("{}", table(&outcomes));
    let bad: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.status != Status::Pass && SUPPORTED.contains(&o.series.as_str()))
        .map(|o| o.series.as_str())
        .collect();
    say(&format!(
        "vmtest: done in {:.0} s",
        t0.elapsed().as_secs_f64()
    ));
    if !bad.is_empty() {
        bail!("kernel series failing: {}", bad.join(", "));
    }
    Ok(())
}

/// The series to run, in table order.
fn select(opts: &Options) -> anyhow::Result<Vec<String>> {
    let known = |s: &str| SUPPORTED.contains(&s) || INFORMATIONAL.contains(&s);
    let mut set: Vec<String> = if opts.all {
        INFORMATIONAL
            .iter()
            .chain(SUPPORTED)
            .map(ToString::to_string)
            .collect()
    } else if opts.kernels.is_empty() {
        vec![
            SUPPORTED[0].to_string(),
            SUPPORTED[SUPPORTED.len() - 1].to_string(),
        ]
    } else {
        Vec::new()
    };
    for k in &opts.kernels {
        if !known(k) {
            bail!(
                "unknown kernel series {k:?}: known are {} and (informational) {}",
                SUPPORTED.join(", "),
                INFORMATIONAL.join(", ")
            );
        }
        if !set.contains(k) {
            set.push(k.clone());
        }
    }
    set.sort_by_key(|s| series_key(s));
    Ok(set)
}

fn series_key(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

fn status_word(s: &Status) -> &'static str {
    match s {
        Status::Pass => "PASS",
        Status::Fail => "FAIL",
        Status::Timeout => "TIMEOUT",
        Status::Error(_) => "ERROR",
    }
}

fn table(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<6} {:<50} {:<8} {:>6} {:>6} {:>7} {:>5}  failing groups",
        "series", "kernel", "result", "passed", "failed", "ignored", "secs"
    );
    for o in outcomes {
        let info = if INFORMATIONAL.contains(&o.series.as_str()) {
            " (informational)"
        } else {
            ""
        };
        let failing: Vec<&str> = o
            .failures
            .iter()
            .map(|(what, _)| what.split(' ').next().unwrap_or(what))
            .collect();
        let result = match (&o.status, &o.retried_after) {
            (Status::Pass, Some(_)) => "PASS(2)",
            (st, _) => status_word(st),
        };
        let _ = writeln!(
            s,
            "{:<6} {:<50} {:<8} {:>6} {:>6} {:>7} {:>5.0}  {}{info}",
            o.series,
            o.kernel,
            result,
            o.passed,
            o.failed,
            o.ignored,
            o.secs,
            if failing.is_empty() {
                "-".to_string()
            } else {
                failing.join(",")
            }
        );
    }
    if outcomes.iter().any(|o| o.verified != Verified::default()) {
        let _ = writeln!(s, "\nverified instructions (xdpgate / xdpgate_steer):");
        let n = |v: Option<u32>| v.map_or("?".to_string(), |n| n.to_string());
        for o in outcomes {
            let _ = writeln!(
                s,
                "{:<6} {:>9} / {}",
                o.series,
                n(o.verified.main),
                n(o.verified.steer)
            );
        }
    }
    for o in outcomes.iter().filter(|o| o.retried_after.is_some()) {
        let _ = writeln!(
            s,
            "\n=== {} {}: the first boot's guest kernel oopsed, so it was booted again \
             (PASS(2) = passed on the second boot)\n{}",
            o.series,
            o.kernel,
            o.retried_after.as_deref().unwrap_or_default()
        );
    }
    for o in outcomes.iter().filter(|o| o.status != Status::Pass) {
        let _ = writeln!(
            s,
            "\n=== {} {}: {}",
            o.series,
            o.kernel,
            status_word(&o.status)
        );
        if let Status::Error(e) = &o.status {
            let _ = writeln!(s, "{e}");
        }
        for (what, out) in &o.failures {
            let _ = writeln!(s, "--- {what}\n{out}");
        }
        if let Some(log) = &o.log {
            let _ = writeln!(s, "(whole console: {})", log.display());
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use std::{fs, process::Command, time::Duration};

    use super::boot::{oops_line, parse_console};
    use super::initramfs::init_script;
    use super::*;

    #[test]
    fn counts_come_from_the_summary_even_when_output_splits_a_test_line() {
        let body = "running 1 test\n\
                    test loads_and_runs ... verifier processed 215620 instructions\n\
                    ACL empty: ok\n\
                    ok\n\n\
                    test result: ok. 1 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 6.58s\n";
        assert_eq!(boot::summary(body), Some((1, 0, 2)));
        assert_eq!(boot::summary("test a ... ok\n"), None);
    }

    #[test]
    fn verified_counts_are_read_from_the_console() {
        let console = "test loads_and_runs ... verifier processed 215620 instructions\n\
                       verifier processed 9765 instructions of the steering program\n\
                       verifier processed 9765 instructions of the steering program\n";
        assert_eq!(
            boot::verified(console),
            Verified {
                main: Some(215_620),
                steer: Some(9_765)
            }
        );
        assert_eq!(boot::verified("no counts\n"), Verified::default());
    }

    #[test]
    fn console_results_are_counted_per_group() {
        let groups = groups(false);
        let mut console = String::from("@@VMTEST-KERNEL 6.1.0-1-cloud-amd64\r\n");
        for g in &groups {
            console.push_str(&format!("@@VMTEST-BEGIN {}\r\n", g.name));
            if g.name == "parser" {
                console.push_str(
                    "test a ... ok\ntest b ... FAILED\n\nthread 'b' panicked at x.rs:1:1:\nload: refused\n\
                     math between pkt pointer and register\nverification time 1 usec\nstack depth 0\n\
                     processed 92 insns (limit 1000000)\n",
                );
                console.push_str("@@VMTEST-END parser rc=101\n");
            } else {
                console.push_str("test c ... ok\ntest d ... ignored\n");
                console.push_str(&format!("@@VMTEST-END {} rc=0\n", g.name));
            }
        }
        let o = parse_console(&console, &groups);
        assert_eq!(o.status, Status::Fail, "no completion marker");
        console.push_str("@@VMTEST-DONE\n");
        let o = parse_console(&console, &groups);
        assert_eq!(o.status, Status::Fail);
        assert_eq!((o.passed, o.failed), (1 + groups.len() as u32 - 1, 1));
        assert_eq!(o.ignored, groups.len() as u32 - 1);
        assert_eq!(o.failures.len(), 1);
        assert!(o.failures[0].0.starts_with("parser (exit 101; failed: b)"));
        assert!(o.failures[0].1.contains("load: refused"));
        assert!(
            o.failures[0]
                .1
                .contains("verifier: math between pkt pointer")
        );
    }

    #[test]
    fn guest_oops_is_found_on_the_console() {
        let clean = "[    1.0] veth: loaded\n@@VMTEST-DONE\n";
        assert_eq!(oops_line(clean), None);
        let oops =
            "test x ... \n[   12.5] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n[   12.5] CPU: 1\n";
        assert_eq!(
            oops_line(oops).as_deref(),
            Some("[   12.5] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI")
        );
        assert!(oops_line("[ 3.1] BUG: kernel NULL pointer dereference").is_some());
    }

    #[test]
    fn default_series_are_the_oldest_and_newest_supported() {
        let opts = Options {
            kernels: vec![],
            all: false,
            probe_broken: false,
            timeout: Duration::from_secs(1),
            refresh: false,
        };
        assert_eq!(select(&opts).unwrap(), ["6.1", "7.3"]);
        let all = Options { all: true, ..opts };
        assert_eq!(select(&all).unwrap()[0], "5.10");
        assert_eq!(select(&all).unwrap().len(), 8);
    }

    #[test]
    fn init_script_is_valid_shell_and_gates_on_refusal() {
        let k = Kernel {
            release: "6.1.0-1-cloud-amd64".into(),
            version: "6.1.1-1".into(),
            packages: vec![],
        };
        let script = init_script(&k, &["kernel/drivers/net/veth.ko.xz".into()], &groups(true));
        assert!(
            script.contains("insmod /lib/modules/6.1.0-1-cloud-amd64/kernel/drivers/net/veth.ko ")
        );
        assert!(script.contains("@@VMTEST-SKIPPED parser"));
        assert!(!script.contains("@@VMTEST-SKIPPED probe_frags"));
        let path = std::env::temp_dir().join(format!("vmtest-init-{}.sh", std::process::id()));
        fs::write(&path, &script).unwrap();
        let ok = Command::new("sh")
            .arg("-n")
            .arg(&path)
            .status()
            .unwrap()
            .success();
        let _ = fs::remove_file(&path);
        assert!(ok, "sh -n refuses the init script:\n{script}");
    }
}

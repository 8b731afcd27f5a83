//! Booting a guest in QEMU (TCG) with a time limit, and reading the groups'
//! results, a guest kernel's oops and the failures from its console.
use std::{
    fmt::Write as _,
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{Group, Outcome, Status, Verified};
use crate::say;

pub(super) fn boot(
    kdir: &Path,
    initrd: &Path,
    log: &Path,
    timeout: Duration,
    groups: &[Group],
) -> anyhow::Result<Outcome> {
    let mut qemu: Vec<String> = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        // The datapath at its default capacities holds 512 MiB of kernel
        // memory (README, "Capacities"), beside the initramfs's test
        // binaries: with 1024 MiB the 7.3 guest killed acl_diff (OOM) once
        // the IPv6 trie's blocks were added.
        "-m",
        "2048",
        "-smp",
        "2",
        "-nographic",
        "-no-reboot",
        "-monitor",
        "none",
        "-serial",
    ]
    .map(String::from)
    .to_vec();
    qemu.push(format!("file:{}", log.display()));
    qemu.push("-kernel".into());
    qemu.push(kdir.join("vmlinuz").display().to_string());
    qemu.push("-initrd".into());
    qemu.push(initrd.display().to_string());
    qemu.push("-append".into());
    qemu.push("console=ttyS0 panic=-1 quiet loglevel=3".into());
    // The paravirtual /dev/kvm here cannot run stock kernels: hide it from QEMU
    // in a private mount namespace (the host's /dev is unchanged).
    let mut cmd = if Path::new("/dev/kvm").exists() {
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind /dev/null /dev/kvm && exec \"$@\"")
            .arg("sh")
            .args(&qemu);
        c
    } else {
        let mut c = Command::new(&qemu[0]);
        c.args(&qemu[1..]);
        c
    };
    let _ = fs::remove_file(log);
    say(&format!(
        "vmtest: booting {} (limit {} s, console in {})",
        kdir.display(),
        timeout.as_secs(),
        log.display()
    ));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read as _;
        let _ = e.read_to_string(&mut stderr);
    }
    let console = fs::read(log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let mut o = parse_console(&console, groups);
    o.log = Some(log.to_path_buf());
    if timed_out {
        o.status = Status::Timeout;
        o.failures.push((
            "(guest)".into(),
            format!(
                "killed after {} s; last console lines:\n{}",
                timeout.as_secs(),
                tail(&console, 20)
            ),
        ));
    } else if let Some(st) = status
        && !st.success()
        && !console.contains("@@VMTEST-DONE")
    {
        o.status = Status::Error(format!("qemu exited with {st}: {}", stderr.trim()));
    }
    Ok(o)
}

/// Reads the delimited group results from the guest console.
pub(super) fn parse_console(console: &str, groups: &[Group]) -> Outcome {
    let mut o = Outcome {
        series: String::new(),
        kernel: String::new(),
        status: Status::Pass,
        passed: 0,
        failed: 0,
        ignored: 0,
        secs: 0.0,
        failures: Vec::new(),
        log: None,
        retried_after: None,
        verified: verified(console),
    };
    let console = console.replace('\r', "");
    for line in console.lines() {
        if let Some(m) = line.strip_prefix("@@VMTEST-MODULE-FAILED ") {
            o.failures
                .push(("(modules)".into(), format!("insmod {m} failed")));
            o.status = Status::Fail;
        }
    }
    for g in groups {
        let begin = format!("@@VMTEST-BEGIN {}\n", g.name);
        let end = format!("@@VMTEST-END {} rc=", g.name);
        let Some(b) = console.find(&begin) else {
            o.status = Status::Fail;
            let why = if console.contains(&format!("@@VMTEST-SKIPPED {}\n", g.name)) {
                "skipped: the kernel's verifier refused the program (see the first group)"
            } else {
                "did not run"
            };
            o.failures.push((g.name.into(), why.into()));
            continue;
        };
        let body = &console[b + begin.len()..];
        let (body, rc) = match body.find(&end) {
            Some(e) => {
                let rc = body[e + end.len()..]
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string();
                (&body[..e], Some(rc))
            }
            None => (body, None),
        };
        // Counts from libtest's summary line: with --nocapture a test's own
        // output can land between "test NAME ..." and its "ok". The per-test
        // lines are the fallback when a binary died before its summary.
        let mut failed_here = Vec::new();
        let mut counted = (0, 0, 0);
        for line in body.lines() {
            let Some(rest) = line.strip_prefix("test ") else {
                continue;
            };
            if rest.ends_with(" ... ok") {
                counted.0 += 1;
            } else if let Some(name) = rest.strip_suffix(" ... FAILED") {
                counted.1 += 1;
                failed_here.push(name.to_string());
            } else if rest.ends_with(" ... ignored") {
                counted.2 += 1;
            }
        }
        let (passed, failed, ignored) = summary(body).unwrap_or(counted);
        o.passed += passed;
        o.failed += failed;
        o.ignored += ignored;
        if rc.as_deref() != Some("0") {
            o.status = Status::Fail;
            let why = match &rc {
                Some(rc) => format!("exit {rc}"),
                None => "no end marker".into(),
            };
            o.failures.push((
                format!("{} ({why}; failed: {})", g.name, failed_here.join(", ")),
                failure_summary(body),
            ));
        }
    }
    if !console.contains("@@VMTEST-DONE") && o.status == Status::Pass {
        o.status = Status::Fail;
        o.failures.push((
            "(guest)".into(),
            format!("no completion marker; last lines:\n{}", tail(&console, 20)),
        ));
    }
    o
}

/// The passed, failed and ignored counts of a test binary's summary lines
/// (`test result: ok. 3 passed; 0 failed; 1 ignored; ...`), summed.
pub(super) fn summary(body: &str) -> Option<(u32, u32, u32)> {
    let mut total = None::<(u32, u32, u32)>;
    for line in body.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        let count = |what: &str| {
            rest.split(';')
                .find_map(|part| part.trim().strip_suffix(what))
                .and_then(|n| n.trim().rsplit(' ').next()?.parse::<u32>().ok())
                .unwrap_or(0)
        };
        let t = total.get_or_insert((0, 0, 0));
        t.0 += count(" passed");
        t.1 += count(" failed");
        t.2 += count(" ignored");
    }
    total
}

/// The first line of a guest kernel oops on a console log, if any.
pub(super) fn guest_oops(log: &Path) -> Option<String> {
    let console = fs::read(log).ok()?;
    oops_line(&String::from_utf8_lossy(&console))
}

pub(super) fn oops_line(console: &str) -> Option<String> {
    const MARKS: [&str; 4] = ["Oops:", "BUG:", "general protection fault", "Kernel panic"];
    console
        .lines()
        .find(|l| MARKS.iter().any(|m| l.contains(m)))
        .map(|l| truncate(l.trim(), 160).to_string())
}

/// The panic messages of a group's output (the first lines of each), then its
/// last lines.
fn failure_summary(body: &str) -> String {
    let lines: Vec<&str> = body.lines().collect();
    let mut s = String::new();
    let mut panics = 0;
    for (i, l) in lines.iter().enumerate() {
        if l.contains("panicked at") && panics < 2 {
            panics += 1;
            for m in &lines[i..(i + 3).min(lines.len())] {
                let _ = writeln!(s, "  {}", truncate(m, 300));
            }
        }
    }
    // Verifier rejections: the kernel's reason is the line before the
    // "verification time" / "processed N insns" summary.
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("verification time ") && i >= 1 {
            let _ = writeln!(s, "  verifier: {}", lines[i - 1]);
            break;
        }
    }
    let _ = write!(s, "  ... last lines:\n{}", tail(body, 15));
    s
}

pub(super) fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

pub(super) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The verified instruction counts the guest printed ("verifier processed N
/// instructions", "... of the steering program"): the first of each.
pub(super) fn verified(console: &str) -> Verified {
    let mut v = Verified::default();
    for line in console.lines() {
        let Some(rest) = line.split("verifier processed ").nth(1) else {
            continue;
        };
        let Some(n) = rest
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let slot = if rest.contains("of the steering program") {
            &mut v.steer
        } else {
            &mut v.main
        };
        slot.get_or_insert(n);
    }
    v
}

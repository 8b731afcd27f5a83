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
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{bootstrap, say};

/// Series that must pass.
pub const SUPPORTED: &[&str] = &["6.1", "6.12", "6.16", "6.17", "6.18", "7.2", "7.3"];
/// Series run for information only: failures show in the table but do not fail
/// the command.
pub const INFORMATIONAL: &[&str] = &["5.10"];

/// Host packages the matrix needs.
const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "xz-utils",
    "iproute2",
    "iputils-ping",
];

/// The suites of the private apt state: where each series' cloud kernels live.
const SUITES: &[(&str, &str)] = &[
    ("debian", "bullseye"),
    ("debian-security", "bookworm-security"),
    ("debian", "trixie"),
    ("debian", "trixie-backports"),
    ("debian", "sid"),
];
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// The package index is refreshed when older than this.
const INDEX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const TARGET: &str = "x86_64-unknown-linux-gnu";
/// What `Datapath::load` errors say when the verifier refuses the program.
const REFUSED_MARK: &str = "the kernel refused the XDP program";

/// Integration-test binaries put into the guest.
const TEST_BINARIES: &[&str] = &[
    "verify", "parser", "acl_diff", "e2e", "bind", "lb", "cli", "vm_probe",
];

/// Options of `cargo xtask vmtest`.
pub struct Options {
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
            args: &[],
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
            name: "e2e",
            binary: "e2e",
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
            name: "lb",
            binary: "lb",
            args: &[],
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
}

/// Runs the matrix; fails if a supported series does not pass.
pub fn run(root: &Path, env: &bootstrap::Env, opts: &Options) -> anyhow::Result<()> {
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
            .map(|s| s.to_string())
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

// ---------------------------------------------------------------------------
// The private apt state.
// ---------------------------------------------------------------------------

struct Apt {
    dir: PathBuf,
    opts: Vec<String>,
}

impl Apt {
    fn new(cache: &Path) -> anyhow::Result<Apt> {
        let dir = cache.join("apt");
        for d in ["lists/partial", "cache/archives/partial", "etc"] {
            fs::create_dir_all(dir.join(d))?;
        }
        let mirror = host_mirror();
        let mut list = String::new();
        for (archive, suite) in SUITES {
            let base = if *archive == "debian-security" {
                mirror.replace("/debian", "/debian-security")
            } else {
                mirror.clone()
            };
            writeln!(list, "deb [signed-by={KEYRING}] {base} {suite} main")?;
        }
        let sources = dir.join("etc/sources.list");
        if fs::read_to_string(&sources).ok().as_deref() != Some(list.as_str()) {
            say(&format!(
                "vmtest: writing the private apt sources list {} (mirror {mirror})",
                sources.display()
            ));
            fs::write(&sources, &list)?;
        }
        let p = |s: &Path| s.display().to_string();
        let opts = vec![
            format!("Dir::Etc::sourcelist={}", p(&sources)),
            "Dir::Etc::sourceparts=-".into(),
            format!("Dir::State::Lists={}", p(&dir.join("lists"))),
            format!("Dir::Cache={}", p(&dir.join("cache"))),
            "Dir::State::status=/dev/null".into(),
            "APT::Sandbox::User=root".into(),
        ];
        Ok(Apt { dir, opts })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        for o in &self.opts {
            c.arg("-o").arg(o);
        }
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        c
    }

    fn update(&self, force: bool) -> anyhow::Result<()> {
        let stamp = self.dir.join("updated");
        let age = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        if let Some(age) = age.filter(|a| !force && *a < INDEX_MAX_AGE) {
            say(&format!(
                "vmtest: kernel package index is {} min old, reusing it (--refresh updates it)",
                age.as_secs() / 60
            ));
            return Ok(());
        }
        say("vmtest: updating the private kernel package index (apt-get update, about 45 MB)");
        let status = self
            .cmd("apt-get")
            .args(["-q", "update"])
            .status()
            .context("running apt-get update")?;
        if !status.success() {
            bail!("apt-get update of the private kernel index failed ({status})");
        }
        fs::write(&stamp, b"")?;
        Ok(())
    }

    fn output(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .cmd(program)
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            bail!("`{program} {}` failed ({})", args.join(" "), out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The newest cloud kernel package of `series`.
    fn resolve(&self, series: &str) -> anyhow::Result<Kernel> {
        let pattern = format!(
            "^linux-image-{}\\.[0-9].*-cloud-amd64$",
            series.replace('.', "\\.")
        );
        let found = self.output("apt-cache", &["search", "--names-only", &pattern])?;
        let newest = found
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| !n.contains("-dbg") && !n.contains("unsigned"))
            .max_by_key(|n| series_key(n))
            .ok_or_else(|| anyhow!("no cloud kernel package of series {series} in the index"))?
            .to_string();
        let show = self.output("apt-cache", &["show", "--no-all-versions", &newest])?;
        let field = |name: &str| {
            show.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .map(str::to_string)
        };
        let version = field("Version").ok_or_else(|| anyhow!("{newest} has no Version"))?;
        let release = newest
            .strip_prefix("linux-image-")
            .expect("matched the pattern")
            .to_string();
        // From 7.x the image is a meta package over linux-binary-* and
        // linux-modules-*; take those of the same release.
        let mut packages = vec![newest.clone()];
        for dep in field("Depends").unwrap_or_default().split(',') {
            let name = dep.split_whitespace().next().unwrap_or("");
            if (name.starts_with("linux-binary-") || name.starts_with("linux-modules-"))
                && name.ends_with(&release)
            {
                packages.push(name.to_string());
            }
        }
        Ok(Kernel {
            release,
            version,
            packages,
        })
    }
}

/// The Debian mirror the host's apt uses (`http://deb.debian.org/debian` if
/// none is found).
fn host_mirror() -> String {
    let mut texts = Vec::new();
    texts.extend(fs::read_to_string("/etc/apt/sources.list").ok());
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            texts.extend(fs::read_to_string(e.path()).ok());
        }
    }
    for t in texts {
        for word in t.split_whitespace() {
            let w = word.trim_end_matches('/');
            if (w.starts_with("http://") || w.starts_with("https://")) && w.ends_with("/debian") {
                return w.to_string();
            }
        }
    }
    "http://deb.debian.org/debian".into()
}

// ---------------------------------------------------------------------------
// Kernels: download, extract, depmod; cached.
// ---------------------------------------------------------------------------

/// Ensures `.tools/vmtest/kernels/<release>/` holds `vmlinuz` and
/// `root/lib/modules/<release>/` with `modules.dep`; returns that directory.
fn fetch_kernel(cache: &Path, apt: &Apt, k: &Kernel) -> anyhow::Result<PathBuf> {
    let dir = cache.join("kernels").join(&k.release);
    let stamp = dir.join("stamp");
    let want = format!("{} {}\n", k.release, k.version);
    if fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        say(&format!(
            "vmtest: kernel {} ({}): cached in {}, no download",
            k.release,
            k.version,
            dir.display()
        ));
        return Ok(dir);
    }
    let debs = cache.join("debs");
    fs::create_dir_all(&debs)?;
    let mut files = Vec::new();
    for p in &k.packages {
        // apt-get download names files <package>_<version, ':' as %3a>_<arch>.deb.
        let file = debs.join(format!("{p}_{}_amd64.deb", k.version.replace(':', "%3a")));
        if file.is_file() {
            say(&format!("vmtest: {p}: .deb cached ({})", file.display()));
        } else {
            say(&format!(
                "vmtest: downloading {p} {} into {}",
                k.version,
                debs.display()
            ));
            let status = apt
                .cmd("apt-get")
                .current_dir(&debs)
                .args(["-q", "download", &format!("{p}={}", k.version)])
                .status()
                .context("running apt-get download")?;
            if !status.success() {
                bail!("apt-get download {p} failed ({status})");
            }
            if !file.is_file() {
                bail!("apt-get download {p} left no {}", file.display());
            }
        }
        files.push(file);
    }
    say(&format!(
        "vmtest: extracting {} into {}",
        k.release,
        dir.display()
    ));
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    let x = dir.join("x");
    fs::create_dir_all(&x)?;
    for f in &files {
        run_quiet(Command::new("dpkg").arg("-x").arg(f).arg(&x))?;
    }
    let mods = [
        x.join("lib/modules").join(&k.release),
        x.join("usr/lib/modules").join(&k.release),
    ]
    .into_iter()
    .find(|p| p.is_dir())
    .ok_or_else(|| anyhow!("no lib/modules/{} in the packages", k.release))?;
    let vmlinuz = [
        x.join("boot").join(format!("vmlinuz-{}", k.release)),
        mods.join("vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .ok_or_else(|| anyhow!("no vmlinuz for {} in the packages", k.release))?;
    fs::rename(&vmlinuz, dir.join("vmlinuz"))?;
    let root = dir.join("root");
    fs::create_dir_all(root.join("lib/modules"))?;
    fs::rename(&mods, root.join("lib/modules").join(&k.release))?;
    run_quiet(Command::new("depmod").arg("-b").arg(&root).arg(&k.release))?;
    fs::remove_dir_all(&x)?;
    fs::write(&stamp, want)?;
    Ok(dir)
}

fn run_quiet(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Static test binaries.
// ---------------------------------------------------------------------------

/// Builds the test binaries and `xdpgate` statically; returns name -> path.
fn build(root: &Path, env: &bootstrap::Env) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let target_dir = root.join("target/vmtest");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut bins = BTreeMap::new();
    let mut test_args = vec![
        "test",
        "--release",
        "--no-run",
        "--package",
        "xdpgate-tests",
    ];
    for t in TEST_BINARIES {
        test_args.extend(["--test", t]);
    }
    for args in [
        test_args,
        vec![
            "build",
            "--release",
            "--package",
            "xdpgate",
            "--bin",
            "xdpgate",
        ],
    ] {
        let mut args: Vec<&str> = args;
        let td = target_dir.display().to_string();
        args.extend([
            "--target",
            TARGET,
            "--message-format=json-render-diagnostics",
        ]);
        say(&format!(
            "cargo {} --target-dir {td} (static: CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS=\"-C target-feature=+crt-static\")",
            args.join(" ")
        ));
        let mut child = Command::new(&cargo)
            .current_dir(root)
            .args(&args)
            .arg("--target-dir")
            .arg(&target_dir)
            .env("PATH", &env.path)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env(
                "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                "-C target-feature=+crt-static",
            )
            .stdout(Stdio::piped())
            .spawn()
            .context("running cargo")?;
        let stdout = child.stdout.take().expect("piped");
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["reason"] != "compiler-artifact" {
                continue;
            }
            let Some(exe) = v["executable"].as_str() else {
                continue;
            };
            let name = v["target"]["name"].as_str().unwrap_or_default().to_string();
            bins.insert(name, PathBuf::from(exe));
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("static build failed ({status})");
        }
    }
    for want in TEST_BINARIES.iter().chain(&["xdpgate"]) {
        if !bins.contains_key(*want) {
            bail!("the static build produced no `{want}` binary");
        }
    }
    Ok(bins)
}

// ---------------------------------------------------------------------------
// The initramfs.
// ---------------------------------------------------------------------------

/// A file of the initramfs.
enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

/// Everything but the kernel's modules and the init script: path -> entry.
type Image = BTreeMap<String, Entry>;

fn add_dirs(img: &mut Image, path: &str) {
    let mut p = String::new();
    for part in path.trim_start_matches('/').split('/') {
        if !p.is_empty() {
            p.push('/');
        }
        p.push_str(part);
        img.entry(p.clone()).or_insert(Entry::Dir);
    }
}

fn add_file(img: &mut Image, path: &str, data: Vec<u8>, mode: u32) {
    let path = path.trim_start_matches('/');
    if let Some((parent, _)) = path.rsplit_once('/') {
        add_dirs(img, parent);
    }
    img.insert(path.to_string(), Entry::File { data, mode });
}

/// Adds the host binary `path` and the shared libraries `ldd` lists for it.
fn add_host_binary(img: &mut Image, path: &str) -> anyhow::Result<()> {
    let data = fs::read(path).with_context(|| format!("reading {path}"))?;
    add_file(img, path, data, 0o755);
    let out = Command::new("ldd")
        .arg(path)
        .output()
        .context("running ldd")?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libx.so.1 => /lib/x/libx.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let lib = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(lib) = lib.filter(|l| l.starts_with('/')) else {
            continue;
        };
        let key = lib.trim_start_matches('/');
        if img.contains_key(key) {
            continue;
        }
        let real = fs::canonicalize(lib)?;
        add_file(img, lib, fs::read(&real)?, 0o755);
    }
    Ok(())
}

/// The kernel-independent part of the initramfs.
fn base_image(bins: &BTreeMap<String, PathBuf>) -> anyhow::Result<Image> {
    let mut img = Image::new();
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "run", "tmp", "etc", "root",
    ] {
        add_dirs(&mut img, d);
    }
    add_file(&mut img, "bin/busybox", fs::read("/bin/busybox")?, 0o755);
    img.insert("bin/sh".into(), Entry::Symlink("busybox".into()));
    add_host_binary(&mut img, "/usr/sbin/ip")?;
    // iputils ping (the tests use -i 0.2 and both families).
    add_host_binary(&mut img, "/usr/bin/ping")?;
    add_file(
        &mut img,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n".to_vec(),
        0o644,
    );
    add_file(
        &mut img,
        "etc/group",
        b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
        0o644,
    );
    for (name, path) in bins {
        let data = stripped(path)?;
        add_file(&mut img, &format!("tests/{name}"), data, 0o755);
    }
    Ok(img)
}

/// The binary at `path` without symbols (smaller initramfs), or as is when
/// `strip` is not available.
fn stripped(path: &Path) -> anyhow::Result<Vec<u8>> {
    let out = path.with_extension("stripped");
    let ok = Command::new("strip")
        .arg("-o")
        .arg(&out)
        .arg(path)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let data = fs::read(if ok { &out } else { path })?;
    let _ = fs::remove_file(&out);
    Ok(data)
}

/// Modules to load, dependencies first, as paths relative to the modules
/// directory (from `modules.dep`).
fn module_order(mods: &Path, wanted: &[&str]) -> anyhow::Result<Vec<String>> {
    let dep = fs::read_to_string(mods.join("modules.dep"))?;
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in dep.lines() {
        if let Some((m, d)) = line.split_once(':') {
            deps.insert(
                m.to_string(),
                d.split_whitespace().map(str::to_string).collect(),
            );
        }
    }
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for w in wanted {
        let Some(path) = deps.keys().find(|p| {
            let file = p.rsplit('/').next().unwrap_or(p);
            file.split('.').next() == Some(*w)
        }) else {
            // Built into this kernel.
            continue;
        };
        // modules.dep lists every (transitive) dependency, in load order
        // reversed: load them last-first, then the module.
        let mut chain: Vec<String> = deps[path].iter().rev().cloned().collect();
        chain.push(path.clone());
        for m in chain {
            if seen.insert(m.clone()) {
                order.push(m);
            }
        }
    }
    Ok(order)
}

fn init_script(k: &Kernel, modules: &[String], groups: &[Group]) -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev 2>/dev/null\n\
         mount -t tmpfs tmpfs /run\n\
         mount -t tmpfs tmpfs /tmp\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         echo 1 > /proc/sys/kernel/printk\n",
    );
    writeln!(s, "echo \"@@VMTEST-KERNEL $(uname -r)\"").unwrap();
    for m in modules {
        let m = m.trim_end_matches(".xz").trim_end_matches(".zst");
        writeln!(
            s,
            "insmod /lib/modules/{}/{m} || echo \"@@VMTEST-MODULE-FAILED {m}\"",
            k.release
        )
        .unwrap();
    }
    s.push_str(
        "ip link set lo up\n\
         cd /tests\n\
         export XDPGATE_BIN=/tests/xdpgate RUST_BACKTRACE=1\n",
    );
    // Each group's output goes to the console and to /tmp/out; once a group
    // reports that the kernel refused the program, the groups that load it
    // are skipped.
    s.push_str("REFUSED=\n");
    for g in groups {
        let env: Vec<String> = g.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let name = g.name;
        if g.loads_program {
            writeln!(
                s,
                "if [ -n \"$REFUSED\" ]; then echo \"@@VMTEST-SKIPPED {name}\"; else"
            )
            .unwrap();
        }
        writeln!(s, "echo \"@@VMTEST-BEGIN {name}\"").unwrap();
        writeln!(
            s,
            "{{ env {} /tests/{} --test-threads=1 {} 2>&1; echo $? > /tmp/rc; }} | tee /tmp/out",
            env.join(" "),
            g.binary,
            g.args.join(" ")
        )
        .unwrap();
        writeln!(s, "rc=$(cat /tmp/rc)").unwrap();
        writeln!(
            s,
            "[ \"$rc\" != 0 ] && grep -q '{REFUSED_MARK}' /tmp/out && REFUSED=1"
        )
        .unwrap();
        writeln!(s, "echo \"@@VMTEST-END {name} rc=$rc\"").unwrap();
        if g.loads_program {
            s.push_str("fi\n");
        }
    }
    s.push_str("echo \"@@VMTEST-DONE\"\nsync\npoweroff -f\n");
    s
}

/// Writes the initramfs of kernel `k` (base image, modules, init) to `out`.
fn write_initramfs(
    base: &Image,
    kdir: &Path,
    k: &Kernel,
    groups: &[Group],
    out: &Path,
) -> anyhow::Result<()> {
    let mods = kdir.join("root/lib/modules").join(&k.release);
    let order = module_order(&mods, &["veth"])?;
    let mut extra = Image::new();
    for m in &order {
        let src = mods.join(m);
        let data = if m.ends_with(".xz") {
            let out = Command::new("xz")
                .arg("-dc")
                .arg(&src)
                .output()
                .context("running xz")?;
            if !out.status.success() {
                bail!("xz -dc {} failed", src.display());
            }
            out.stdout
        } else if m.ends_with(".zst") {
            let out = Command::new("zstd")
                .arg("-dc")
                .arg(&src)
                .output()
                .context("running zstd")?;
            if !out.status.success() {
                bail!("zstd -dc {} failed", src.display());
            }
            out.stdout
        } else {
            fs::read(&src)?
        };
        let m = m.trim_end_matches(".xz").trim_end_matches(".zst");
        add_file(
            &mut extra,
            &format!("lib/modules/{}/{m}", k.release),
            data,
            0o644,
        );
    }
    add_file(
        &mut extra,
        "init",
        init_script(k, &order, groups).into_bytes(),
        0o755,
    );
    let mut cpio = Vec::new();
    let mut ino = 1u32;
    for (path, e) in base.iter().chain(extra.iter()) {
        cpio_entry(&mut cpio, ino, path, e);
        ino += 1;
    }
    cpio_trailer(&mut cpio, ino);
    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(out, &cpio)?;
    Ok(())
}

fn cpio_header(buf: &mut Vec<u8>, ino: u32, mode: u32, nlink: u32, size: usize, name: &str) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        size as u32,
        0, // devmajor
        0, // devminor
        0, // rdevmajor
        0, // rdevminor
        name.len() as u32 + 1,
        0, // check
    ];
    buf.extend_from_slice(b"070701");
    for f in fields {
        buf.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    buf.extend_from_slice(name.as_bytes());
    buf.push(0);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn cpio_entry(buf: &mut Vec<u8>, ino: u32, path: &str, e: &Entry) {
    let (mode, data): (u32, &[u8]) = match e {
        Entry::Dir => (0o040755, &[]),
        Entry::File { data, mode } => (0o100000 | mode, data),
        Entry::Symlink(target) => (0o120777, target.as_bytes()),
    };
    let nlink = if matches!(e, Entry::Dir) { 2 } else { 1 };
    cpio_header(buf, ino, mode, nlink, data.len(), path);
    buf.extend_from_slice(data);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn cpio_trailer(buf: &mut Vec<u8>, ino: u32) {
    cpio_header(buf, ino, 0, 1, 0, "TRAILER!!!");
}

// ---------------------------------------------------------------------------
// Booting and reading the results.
// ---------------------------------------------------------------------------

fn boot(
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
        "-m",
        "1024",
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
fn parse_console(console: &str, groups: &[Group]) -> Outcome {
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
        let mut failed_here = Vec::new();
        for line in body.lines() {
            let Some(rest) = line.strip_prefix("test ") else {
                continue;
            };
            if let Some(name) = rest.strip_suffix(" ... ok") {
                let _ = name;
                o.passed += 1;
            } else if let Some(name) = rest.strip_suffix(" ... FAILED") {
                o.failed += 1;
                failed_here.push(name.to_string());
            } else if rest.ends_with(" ... ignored") {
                o.ignored += 1;
            }
        }
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

/// The first line of a guest kernel oops on a console log, if any.
fn guest_oops(log: &Path) -> Option<String> {
    let console = fs::read(log).ok()?;
    oops_line(&String::from_utf8_lossy(&console))
}

fn oops_line(console: &str) -> Option<String> {
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

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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
    use super::*;

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

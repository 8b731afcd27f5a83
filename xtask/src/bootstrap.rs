//! Installs the prerequisites of building and testing xdpgate, idempotently.
//!
//! What it does, in order (each step says what it found or did):
//! 1. checks the `nightly` toolchain exists and adds its `rust-src` component
//!    (needed for `-Z build-std=core` on the BPF target);
//! 2. builds `bpf-linker` against the nightly's own libLLVM, with the matching
//!    LLVM major, into `.tools/bpf-linker/llvm-<major>/`, and points
//!    `.tools/bpf-linker/current` at it; a stamp records the libLLVM it was built
//!    against, so a new nightly with another LLVM triggers a rebuild;
//! 3. mounts bpffs at `/sys/fs/bpf` if it is not mounted;
//! 4. installs the Debian packages the tests and the demo use.
use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};

use crate::say;

/// bpf-linker version built by bootstrap.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages the tests and the demo need: `ping` (iputils-ping), `ip`
/// with netns support (iproute2), and `prometheus` (the metrics tests run
/// `promtool check metrics` and scrape through a real Prometheus server),
/// and `bpftool` (the DDoS tests read pinned maps with it, as an operator
/// would).
const APT_PACKAGES: &[&str] = &["iputils-ping", "iproute2", "prometheus", "bpftool"];
const NIGHTLY: &str = "nightly";

/// Environment for the cargo runs that follow bootstrap.
pub(crate) struct Env {
    /// PATH with the project's bpf-linker first.
    pub path: OsString,
}

/// Runs every bootstrap step; returns the environment to build with.
pub(crate) fn run(root: &Path) -> anyhow::Result<Env> {
    rust_src()?;
    let linker_bin = bpf_linker(root)?;
    bpffs()?;
    apt_packages()?;
    let mut dirs = vec![linker_bin];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    Ok(Env {
        path: std::env::join_paths(dirs)?,
    })
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn rust_src() -> anyhow::Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to build the XDP program (it runs `rustup run nightly`)")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly-")) {
        bail!(
            "the nightly toolchain is not installed; install it with \
             `rustup toolchain install nightly --component rust-src` and run again"
        );
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        say("nightly rust-src: present");
        return Ok(());
    }
    say("nightly rust-src: missing, running `rustup component add rust-src --toolchain nightly`");
    output(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
        .context("could not add rust-src to nightly; run `rustup component add rust-src --toolchain nightly`")?;
    Ok(())
}

/// The nightly's LLVM major and the path of its real libLLVM shared object.
fn nightly_llvm() -> anyhow::Result<(u32, PathBuf)> {
    let vv = output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "-vV"]))?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .ok_or_else(|| anyhow!("`rustc -vV` of nightly reports no LLVM version"))?;
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.trim().parse().ok())
        .ok_or_else(|| anyhow!("cannot parse LLVM version {version:?}"))?;
    let sysroot =
        output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    // The real library is `libLLVM.so.<major>.<minor>-rust-<ver>-nightly`;
    // `libLLVM-<major>-rust-...so` beside it is only a linker script.
    let mut found = None;
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("libLLVM.so.{major}.")) && entry.metadata()?.len() > 1 << 20 {
            found = Some(entry.path());
        }
    }
    let lib = found.ok_or_else(|| {
        anyhow!(
            "no libLLVM.so.{major}.* in {}: the nightly toolchain looks incomplete",
            lib.display()
        )
    })?;
    Ok((major, lib))
}

/// Ensures `.tools/bpf-linker/llvm-<major>/bin/bpf-linker` is built against the
/// nightly's libLLVM; returns its `bin` directory.
fn bpf_linker(root: &Path) -> anyhow::Result<PathBuf> {
    let (major, libllvm) = nightly_llvm()?;
    let tools = root.join(".tools/bpf-linker");
    let dir = tools.join(format!("llvm-{major}"));
    let bin = dir.join("bin");
    let stamp = dir.join("stamp");
    let want = format!(
        "bpf-linker {BPF_LINKER_VERSION} llvm-{major} {}\n",
        libllvm.display()
    );
    let current = tools.join("current");
    if bin.join("bpf-linker").is_file() && fs::read_to_string(&stamp).ok().as_deref() == Some(&want)
    {
        say(&format!(
            "bpf-linker {BPF_LINKER_VERSION}: present for LLVM {major} in {}",
            dir.display()
        ));
    } else {
        say(&format!(
            "bpf-linker {BPF_LINKER_VERSION}: building against {} (LLVM {major}) into {}; takes one to two minutes",
            libllvm.display(),
            dir.display()
        ));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        // A prefix whose lib/ holds both the unversioned name (for linking) and the
        // versioned soname (for the binary's rpath at run time).
        let prefix = dir.join("llvm");
        let prefix_lib = prefix.join("lib");
        fs::create_dir_all(&prefix_lib)?;
        let soname = libllvm
            .file_name()
            .context("libLLVM path has no file name")?;
        std::os::unix::fs::symlink(&libllvm, prefix_lib.join("libLLVM.so"))?;
        std::os::unix::fs::symlink(&libllvm, prefix_lib.join(soname))?;
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
                "--root",
            ])
            .arg(&dir)
            .env("LLVM_PREFIX", &prefix)
            .env("CARGO_TARGET_DIR", tools.join("build"))
            .status()
            .context("running cargo install bpf-linker")?;
        if !status.success() {
            bail!(
                "building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} failed ({status}); \
                 it needs a C++ compiler (g++) and the nightly toolchain's libLLVM"
            );
        }
        let _ = fs::remove_dir_all(tools.join("build"));
        fs::write(&stamp, &want)?;
    }
    // Check the binary actually runs (finds libLLVM through its rpath).
    output(
        Command::new(bin.join("bpf-linker"))
            .arg("--version")
            .stdout(Stdio::null()),
    )
    .context("the built bpf-linker does not run; delete .tools/ and run `cargo xtask bootstrap`")?;
    let target = PathBuf::from(format!("llvm-{major}"));
    if fs::read_link(&current).ok().as_deref() != Some(target.as_path()) {
        let _ = fs::remove_file(&current);
        std::os::unix::fs::symlink(&target, &current)?;
        say(&format!(
            "bpf-linker: {} -> {}",
            current.display(),
            target.display()
        ));
    }
    Ok(bin)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn bpffs() -> anyhow::Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    // SAFETY: statfs is plain data; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a zeroed out-struct.
    let rc = unsafe { libc::statfs(c"/sys/fs/bpf".as_ptr(), &raw mut st) };
    if rc == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        say("bpffs: mounted at /sys/fs/bpf");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "bpffs is not mounted at /sys/fs/bpf and we are not root: run `sudo mount -t bpf bpf /sys/fs/bpf`"
        );
    }
    say("bpffs: not mounted, running `mount -t bpf bpf /sys/fs/bpf`");
    output(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    Ok(())
}

fn apt_packages() -> anyhow::Result<()> {
    let had_prometheus = installed("prometheus");
    apt_install(APT_PACKAGES, "Debian packages")?;
    // Debian's package enables and starts a Prometheus server on :9090 when
    // systemd runs. The tests start their own inside a lab namespace; the
    // host's is not ours to leave running.
    if !had_prometheus && Path::new("/run/systemd/system").exists() {
        say(
            "Debian packages: stopping and disabling the prometheus.service the package started (the tests run their own)",
        );
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "prometheus.service"])
            .stdin(Stdio::null())
            .status();
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs the Debian `packages` that are not installed yet (apt-get,
/// non-interactive, `--no-install-recommends`), saying what it does; `what`
/// names them in the messages. Idempotent: nothing runs when all are present.
pub(crate) fn apt_install(packages: &[&str], what: &str) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        say(&format!("{what}: present ({})", packages.join(", ")));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `sudo apt-get install --no-install-recommends {}`",
            missing.join(", "),
            missing.join(" ")
        );
    }
    say(&format!(
        "{what}: installing {} (apt-get install --no-install-recommends)",
        missing.join(", ")
    ));
    let apt = |args: &[&str]| {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("`apt-get {}` failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["-q", "update"])?;
    let mut args = vec!["-q", "-y", "install", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)
}

//! `cargo xtask`: the project's build, test and demo entry points.
//!
//! Every command first runs [`bootstrap::run`], which installs whatever the build
//! and the tests need on a fresh machine, idempotently, saying what it does.
mod arch;
mod bench;
mod bootstrap;
mod demo;
mod vmtest;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// Seconds a VM guest may run before it is killed (TIMEOUT). The 6.1 guest
/// took 522 s of 600 under TCG when issue 15 landed (every datapath load is
/// verified by 6.1's slower verifier, emulated); 900 keeps a margin while
/// the whole suite stays well inside CI's 90 minutes.
const GUEST_TIMEOUT_SECS: u64 = 900;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "xdpgate build, test and demo tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install prerequisites: nightly rust-src, bpf-linker for the nightly's LLVM,
    /// bpffs, and the Debian packages the tests use.
    Bootstrap,
    /// Bootstrap and build the xdpgate binary (and its embedded XDP program).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Bootstrap, check formatting and lints, build, and run every test (unit
    /// tests and the network-namespace end-to-end tests), then the kernel
    /// matrix (`vmtest`) on 6.1 and the newest series.
    Test {
        /// Every kernel series in the matrix (as `vmtest --all`).
        #[arg(long)]
        all: bool,
        /// Skip the kernel matrix (host tests only; not what CI runs).
        #[arg(long, conflicts_with = "all")]
        no_vm: bool,
    },
    /// Build and run xdpgate. Without --iface: create a two-namespace dual-stack
    /// lab, attach xdpgate in it, drive traffic of both families and print live
    /// stats. With --iface: attach to those interfaces and print live stats.
    /// With --lb: the load balancer's lab instead (client, LB, two backends).
    Demo {
        /// Stop after this many seconds (default: run until Ctrl-C). With
        /// --lb: seconds of traffic once the lab is up, at least 12.
        #[arg(long, value_name = "SECS")]
        duration: Option<u64>,
        /// Run the load-balancer lab: a client, the LB and two `--decap`
        /// backends; both VIPs with health-checked backends of both families,
        /// short TCP connections, `lb list` every 2 s, backend 2 drained
        /// halfway and restored at three quarters.
        #[arg(long)]
        lb: bool,
        /// Real interface(s) to attach to instead of the lab.
        #[arg(long = "iface", value_name = "IF")]
        ifaces: Vec<String>,
        /// XDP mode: native, skb or hw.
        #[arg(long, default_value = "native")]
        mode: String,
    },
    /// Bootstrap, install xdp-tools and nftables, and run the benchmarks
    /// (BPF_PROG_TEST_RUN per packet class against an empty program, xdp-filter
    /// side by side, live-frame drop rates against xdp-filter and nftables).
    /// Prints a table and writes JSON. Needs root; takes minutes.
    Bench {
        /// Fewer repetitions and smaller rule sets (1k/100k prefixes, 10/1k rules).
        #[arg(long)]
        quick: bool,
        /// JSON report path (default target/bench/latest.json).
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// Architecture checks: each crate's dependencies between sibling
    /// modules, import cycles, and source files over the length limit (the
    /// same checks run as unit tests in `cargo xtask test`).
    Arch,
    /// Kernel-compatibility matrix: boot Debian's cloud kernels of each series
    /// in QEMU (TCG) and run the kernel-touching tests inside (verifier, parser
    /// fixtures, differential ACL test, veth end-to-end, CLI). Default: 6.1 and
    /// the newest series. Downloads are cached in .tools/vmtest/.
    Vmtest {
        /// Kernel series to run (repeatable): 6.1, 6.12, 6.16, 6.17, 6.18,
        /// 7.2, 7.3, or 5.10 (informational: its failures do not fail the run).
        #[arg(long = "kernel", value_name = "SERIES")]
        kernels: Vec<String>,
        /// Every series, including 5.10.
        #[arg(long)]
        all: bool,
        /// Time limit per guest, in seconds; a guest still running is killed
        /// and reported as TIMEOUT.
        #[arg(long, value_name = "SECS", default_value_t = GUEST_TIMEOUT_SECS)]
        timeout: u64,
        /// Update the kernel package index even if it is less than a day old.
        #[arg(long)]
        refresh: bool,
        /// Also run a deliberately demanding feature probe (XDP frags), which
        /// fails on kernels older than 5.18: shows that the matrix catches it.
        #[arg(long, hide = true)]
        probe_broken: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Task::Bootstrap => {
            bootstrap::run(&root)?;
        }
        Task::Build { release } => {
            let env = bootstrap::run(&root)?;
            build(&root, &env, release)?;
        }
        Task::Test { all, no_vm } => {
            let env = bootstrap::run(&root)?;
            test(&root, &env)?;
            if no_vm {
                say("kernel matrix skipped (--no-vm)");
            } else {
                vmtest::run(
                    &root,
                    &env,
                    &vmtest::Options {
                        kernels: Vec::new(),
                        all,
                        probe_broken: false,
                        timeout: std::time::Duration::from_secs(GUEST_TIMEOUT_SECS),
                        refresh: false,
                    },
                )?;
            }
        }
        Task::Demo {
            duration,
            lb,
            ifaces,
            mode,
        } => {
            if lb {
                if !ifaces.is_empty() {
                    bail!(
                        "--lb runs its own lab of network namespaces and cannot attach to real \
                         interfaces: use either --lb or --iface"
                    );
                }
                if mode != "native" {
                    bail!(
                        "--lb runs in native mode only (the LB answers with XDP_TX); drop --mode"
                    );
                }
                if let Some(d) = duration
                    && d < demo::LB_MIN_SECS
                {
                    bail!(
                        "--lb needs --duration {} or more: backend 2 is drained at half of it \
                         and restored at three quarters, each after a few health checks",
                        demo::LB_MIN_SECS
                    );
                }
            }
            let env = bootstrap::run(&root)?;
            let bin = build(&root, &env, false)?;
            if lb {
                demo::run_lb(&bin, duration)?;
            } else {
                demo::run(&bin, duration, &ifaces, &mode)?;
            }
        }
        Task::Arch => arch::run(&root)?,
        Task::Bench { quick, out } => {
            let env = bootstrap::run(&root)?;
            bench::run(&root, &env, quick, out.as_deref())?;
        }
        Task::Vmtest {
            kernels,
            all,
            timeout,
            refresh,
            probe_broken,
        } => {
            let env = bootstrap::run(&root)?;
            vmtest::run(
                &root,
                &env,
                &vmtest::Options {
                    kernels,
                    all,
                    probe_broken,
                    timeout: std::time::Duration::from_secs(timeout),
                    refresh,
                },
            )?;
        }
    }
    Ok(())
}

/// The workspace root (the parent of this crate's directory).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Runs `cmd` with the bootstrap environment, echoing it; fails on non-zero exit.
fn cargo(root: &Path, env: &bootstrap::Env, args: &[&str]) -> anyhow::Result<()> {
    cargo_with(root, env, args, &[])
}

/// [`cargo`] with more environment variables.
fn cargo_with(
    root: &Path,
    env: &bootstrap::Env,
    args: &[&str],
    vars: &[(&str, &str)],
) -> anyhow::Result<()> {
    // `cargo +nightly` needs the rustup proxy, not the cargo binary running us.
    let program = if args.first().is_some_and(|a| a.starts_with('+')) {
        "cargo".into()
    } else {
        std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
    };
    let mut cmd = Command::new(program);
    cmd.current_dir(root)
        .args(args)
        .env("PATH", &env.path)
        .envs(vars.iter().copied());
    let shown: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    say(&format!("{}cargo {}", shown.concat(), args.join(" ")));
    let status = cmd.status().context("running cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

pub(crate) fn build(root: &Path, env: &bootstrap::Env, release: bool) -> anyhow::Result<PathBuf> {
    let mut args = vec!["build", "--package", "xdpgate"];
    if release {
        args.push("--release");
    }
    cargo(root, env, &args)?;
    Ok(root
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("xdpgate"))
}

/// Another build of the daemon for the upgrade tests, made with `var` set:
/// `XDPGATE_PROG_VARIANT` (the XDP program differs in its tag only, see
/// xdp-prog's `VARIANT`) or `XDPGATE_SCHEMA_VARIANT` (the next schema, see
/// `xdpgate_common::pins::SCHEMA_VERSION`). Built, then copied aside as
/// `target/debug/NAME` (the next normal build puts the normal one back).
pub(crate) fn build_variant(
    root: &Path,
    env: &bootstrap::Env,
    var: &str,
    name: &str,
    release: bool,
) -> anyhow::Result<PathBuf> {
    let mut args = vec!["build", "--package", "xdpgate"];
    if release {
        args.push("--release");
    }
    cargo_with(root, env, &args, &[(var, "1")])?;
    let profile = root
        .join("target")
        .join(if release { "release" } else { "debug" });
    let built = profile.join("xdpgate");
    let aside = profile.join(name);
    std::fs::copy(&built, &aside)
        .with_context(|| format!("copying {} to {}", built.display(), aside.display()))?;
    Ok(aside)
}

fn test(root: &Path, env: &bootstrap::Env) -> anyhow::Result<()> {
    cargo(root, env, &["fmt", "--all", "--", "--check"])?;
    // Host crates (the workspace's default members; the eBPF crate cannot build
    // for the host), then the eBPF crate for its own target with nightly.
    cargo(
        root,
        env,
        &["clippy", "--all-targets", "--", "-D", "warnings"],
    )?;
    cargo(
        root,
        env,
        &[
            "+nightly",
            "clippy",
            "--package",
            "xdp-prog",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    let variant = build_variant(root, env, "XDPGATE_PROG_VARIANT", "xdpgate-variant", false)?;
    let schema = build_variant(
        root,
        env,
        "XDPGATE_SCHEMA_VARIANT",
        "xdpgate-schema-next",
        false,
    )?;
    let bin = build(root, env, false)?;
    // SAFETY: single-threaded at this point; the tests read XDPGATE_BIN and
    // (the upgrade tests) XDPGATE_BIN_VARIANT and XDPGATE_BIN_SCHEMA.
    unsafe {
        std::env::set_var("XDPGATE_BIN", &bin);
        std::env::set_var("XDPGATE_BIN_VARIANT", &variant);
        std::env::set_var("XDPGATE_BIN_SCHEMA", &schema);
    }
    cargo(root, env, &["test", "--no-fail-fast"])?;
    model_on_stable(root)?;
    say("all host tests passed");
    Ok(())
}

/// Runs the model crate's tests the way a machine without the nightly
/// toolchain or bpf-linker would: rustup sees only the stable toolchain (a
/// private RUSTUP_HOME that links just that one), PATH has no bpf-linker, and
/// the build has its own target directory. Proves that `xdpgate-model` needs
/// neither aya nor the eBPF build.
fn model_on_stable(root: &Path) -> anyhow::Result<()> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let rustup = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&home).join(".rustup"));
    let out = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("running rustup")?;
    let stable = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
        .find(|t| t.starts_with("stable-"))
        .context("no stable toolchain installed")?;
    let only = root.join("target/stable-only-rustup");
    let _ = std::fs::remove_dir_all(&only);
    std::fs::create_dir_all(only.join("toolchains"))?;
    std::os::unix::fs::symlink(
        rustup.join("toolchains").join(&stable),
        only.join("toolchains").join(&stable),
    )?;
    std::fs::write(
        only.join("settings.toml"),
        format!(
            "version = \"12\"\ndefault_toolchain = \"{stable}\"\nprofile = \"default\"\nauto_self_update = \"disable\"\n"
        ),
    )?;
    // PATH without the project's tools: rustup's proxies and the system.
    let path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .filter(|d| !d.starts_with(root))
        .collect::<Vec<_>>();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .args(["test", "--package", "xdpgate-model"])
        .env("RUSTUP_HOME", &only)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("PATH", std::env::join_paths(path)?)
        .env("CARGO_TARGET_DIR", root.join("target/stable-only"));
    say(&format!(
        "cargo test --package xdpgate-model, with only {stable} visible to rustup and no bpf-linker on PATH"
    ));
    let status = cmd.status().context("running cargo")?;
    if !status.success() {
        bail!("the model crate's tests failed with stable Rust alone ({status})");
    }
    Ok(())
}

/// Prints a progress line.
pub fn say(msg: &str) {
    eprintln!("xtask: {msg}");
}

//! `cargo xtask bench`: bootstrap, install the extra Debian packages the
//! benchmark compares against (xdp-tools for xdp-filter, nftables), then run
//! the `xdpgate-bench` crate in release mode with the bootstrap PATH.
//!
//! xtask cannot depend on the benchmark crate (it needs bpf-linker, which
//! bootstrap builds), so the benchmark runs as its own cargo invocation.
//! Never part of `cargo xtask test`.
use std::path::Path;

use crate::{bootstrap, build, build_variant, cargo};

/// Debian packages only the benchmark needs: `xdp-filter` (xdp-tools) and
/// `nft` (nftables).
const BENCH_PACKAGES: &[&str] = &["xdp-tools", "nftables"];

/// Runs the benchmark; `args` go to the benchmark binary.
pub(crate) fn run(
    root: &Path,
    env: &bootstrap::Env,
    quick: bool,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    bootstrap::apt_install(BENCH_PACKAGES, "benchmark packages")?;
    // Part 5 runs the daemon: this build, another build of the program and a
    // build of the next schema (release builds, as the benchmark is).
    let variant = build_variant(root, env, "XDPGATE_PROG_VARIANT", "xdpgate-variant", true)?;
    let schema = build_variant(
        root,
        env,
        "XDPGATE_SCHEMA_VARIANT",
        "xdpgate-schema-next",
        true,
    )?;
    let bin = build(root, env, true)?;
    // SAFETY: single-threaded at this point; the benchmark reads them.
    unsafe {
        std::env::set_var("XDPGATE_BIN", &bin);
        std::env::set_var("XDPGATE_BIN_VARIANT", &variant);
        std::env::set_var("XDPGATE_BIN_SCHEMA", &schema);
    }
    let mut args: Vec<String> = ["run", "--release", "--package", "xdpgate-bench", "--"]
        .map(String::from)
        .to_vec();
    if quick {
        args.push("--quick".into());
    }
    if let Some(out) = out {
        let out = if out.is_absolute() {
            out.to_path_buf()
        } else {
            std::env::current_dir()?.join(out)
        };
        args.push("--out".into());
        args.push(out.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cargo(root, env, &args)
}

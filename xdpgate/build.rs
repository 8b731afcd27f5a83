//! Compiles the XDP program (`xdp-prog`) for the BPF target with aya-build and
//! leaves the object in `OUT_DIR/xdpgate-xdp`, which `src/datapath/mod.rs` embeds.
//!
//! bpf-linker comes from the project-local tools folder that `cargo xtask
//! bootstrap` fills (`.tools/bpf-linker/current/bin`); it is put first on PATH
//! here so plain `cargo build` works once bootstrap has run.
use std::{env, path::PathBuf};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .context("xdpgate crate has no parent directory")?;
    let tools_bin = workspace.join(".tools/bpf-linker/current/bin");
    println!("cargo:rerun-if-changed={}", tools_bin.display());
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("common").display()
    );
    // The upgrade test's second build of the program (see xdp-prog's VARIANT).
    println!("cargo:rerun-if-env-changed=XDPGATE_PROG_VARIANT");
    // And the schema-upgrade test's (see xdpgate_common::pins::SCHEMA_VERSION).
    println!("cargo:rerun-if-env-changed=XDPGATE_SCHEMA_VARIANT");

    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = vec![tools_bin.clone()];
    dirs.extend(env::split_paths(&path));
    if !dirs.iter().any(|d| d.join("bpf-linker").is_file()) {
        return Err(anyhow!(
            "bpf-linker not found in {} or on PATH: run `cargo xtask bootstrap` first",
            tools_bin.display()
        ));
    }
    let joined = env::join_paths(dirs)?;
    // SAFETY: build scripts are single-threaded; aya-build's child cargo inherits PATH.
    unsafe { env::set_var("PATH", joined) };

    let root_dir = workspace.join("xdp-prog");
    let package = aya_build::Package {
        name: "xdp-prog",
        root_dir: root_dir.to_str().context("non-UTF-8 path")?,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}

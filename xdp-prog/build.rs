//! Makes cargo rebuild the eBPF object when the bpf-linker binary changes (for
//! example after `cargo xtask bootstrap` rebuilt it for a new LLVM major).
use std::{env, path::PathBuf};

fn main() {
    // The host build of this crate (its empty library, a build-dependency of
    // userspace) links nothing with bpf-linker.
    if env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("bpf") {
        return;
    }
    let Some(path) = env::var_os("PATH") else {
        return;
    };
    let linker: Option<PathBuf> = env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|candidate| candidate.is_file());
    match linker {
        Some(linker) => println!("cargo:rerun-if-changed={}", linker.display()),
        None => println!(
            "cargo:warning=bpf-linker is not on PATH; run `cargo xtask bootstrap` to build it"
        ),
    }
}

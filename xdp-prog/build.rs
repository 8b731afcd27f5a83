//! Makes cargo rebuild the eBPF object when the bpf-linker binary changes (for
//! example after `cargo xtask bootstrap` rebuilt it for a new LLVM major).
use std::{env, path::PathBuf};

fn main() {
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

//! The test binaries and `xdpgate`, built statically (`+crt-static`) in
//! release mode into `target/vmtest/`.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::TEST_BINARIES;
use crate::{bootstrap, say};

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds the test binaries and `xdpgate` statically; returns name -> path.
pub(super) fn build(
    root: &Path,
    env: &bootstrap::Env,
) -> anyhow::Result<BTreeMap<String, PathBuf>> {
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

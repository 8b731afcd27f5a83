//! The initramfs: busybox, iproute2, the test binaries, the kernel's veth
//! module and the `/init` script that runs the groups; written as an
//! uncompressed newc archive by xtask itself.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::{Group, Kernel};

/// What `Datapath::load` errors say when the verifier refuses the program.
const REFUSED_MARK: &str = "the kernel refused the XDP program";

/// A file of the initramfs.
pub(super) enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

/// Everything but the kernel's modules and the init script: path -> entry.
pub(super) type Image = BTreeMap<String, Entry>;

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
pub(super) fn base_image(bins: &BTreeMap<String, PathBuf>) -> anyhow::Result<Image> {
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

pub(super) fn init_script(k: &Kernel, modules: &[String], groups: &[Group]) -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev 2>/dev/null\n\
         mount -t tmpfs -o mode=755 tmpfs /run\n\
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
pub(super) fn write_initramfs(
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

//! The private apt state under `.tools/vmtest/apt/` (its own sources list on
//! the host's Debian mirror) and the kernels: the newest package of a series,
//! downloaded, extracted and `depmod`ed once into `.tools/vmtest/`.
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, anyhow, bail};

use super::{Kernel, series_key};
use crate::say;

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

pub(super) struct Apt {
    dir: PathBuf,
    opts: Vec<String>,
}

impl Apt {
    pub(super) fn new(cache: &Path) -> anyhow::Result<Apt> {
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

    pub(super) fn update(&self, force: bool) -> anyhow::Result<()> {
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
    pub(super) fn resolve(&self, series: &str) -> anyhow::Result<Kernel> {
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

/// Ensures `.tools/vmtest/kernels/<release>/` holds `vmlinuz` and
/// `root/lib/modules/<release>/` with `modules.dep`; returns that directory.
pub(super) fn fetch_kernel(cache: &Path, apt: &Apt, k: &Kernel) -> anyhow::Result<PathBuf> {
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

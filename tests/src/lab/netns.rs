//! One network namespace created by the lab ([`Netns`]): commands, threads
//! and sysctls inside it, deleted again on drop.
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv6Addr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::command::{describe, ip_program, run_command};
use super::{
    CMD_TIMEOUT, EXEC_TIMEOUT, LabError, NETNS_DIR, NETNS_PREFIX, WAIT_TIMEOUT, next_id, parse_mac,
    sanitize_tag,
};

/// A network namespace created by the lab, deleted again on drop.
#[derive(Debug)]
pub struct Netns {
    pub(super) name: String,
    /// Open namespace file; shared with commands built by [`Netns::command`]
    /// so the descriptor stays valid until they are gone.
    fd: Arc<File>,
    /// `(st_dev, st_ino)` of the namespace, used to verify `setns`.
    id: (u64, u64),
}

impl Netns {
    /// Creates a new, uniquely named namespace (`xg-TAG-PID-N`) with
    /// `ip netns add` and brings its loopback interface up.
    ///
    /// Only ASCII letters and digits of `tag` are used (at most 12 of them).
    pub fn new(tag: &str) -> Result<Netns, LabError> {
        let tag = sanitize_tag(tag);
        let pid = std::process::id();
        let mut last_error = String::from("no attempt made");
        for _ in 0..64 {
            let name = format!("{NETNS_PREFIX}{tag}-{pid}-{}", next_id());
            if netns_path(&name).exists() {
                // Left over by an earlier process that had the same pid.
                log::warn!("namespace {name} already exists; trying another name");
                last_error = format!("{name} already exists");
                continue;
            }
            let mut cmd = Command::new(ip_program());
            cmd.args(["netns", "add", &name]);
            let desc = describe(ip_program(), &["netns", "add", &name], None);
            match run_command(cmd, &desc, CMD_TIMEOUT) {
                Ok(_) => return Netns::open_created(name),
                Err(LabError::Command { stderr, .. }) if stderr.contains("File exists") => {
                    last_error = stderr;
                }
                Err(e) => return Err(e),
            }
        }
        Err(LabError::Setup(format!(
            "could not find a free namespace name for tag {tag:?}: {last_error}"
        )))
    }

    /// Opens a namespace just created by `ip netns add`; deletes it again if
    /// that fails.
    fn open_created(name: String) -> Result<Netns, LabError> {
        let path = netns_path(&name);
        let opened = File::open(&path).and_then(|file| {
            let meta = file.metadata()?;
            Ok((file, meta))
        });
        let (file, meta) = match opened {
            Ok(x) => x,
            Err(source) => {
                delete_netns(&name);
                return Err(LabError::Io {
                    op: format!("open {}", path.display()),
                    source,
                });
            }
        };
        // From here on, dropping `ns` deletes the namespace.
        let ns = Netns {
            name,
            fd: Arc::new(file),
            id: (meta.dev(), meta.ino()),
        };
        if let Ok(own) = std::fs::metadata("/proc/thread-self/ns/net")
            && (own.dev(), own.ino()) == ns.id
        {
            return Err(LabError::Setup(format!(
                "{} refers to the namespace of the calling thread",
                path.display()
            )));
        }
        ns.ip(&["link", "set", "dev", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace name (the file name under `/run/netns`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        netns_path(&self.name)
    }

    /// Runs `f` on a fresh thread that has entered this namespace; returns
    /// its result (propagates panics).
    ///
    /// Sockets created inside `f` stay in this namespace even after they are
    /// returned to the caller. Panics if the thread cannot enter the
    /// namespace.
    pub fn run<F, T>(&self, f: F) -> T
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let fd = self.fd.as_raw_fd();
        let id = self.id;
        let name = self.name.as_str();
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name(format!("netns-{name}"))
                .spawn_scoped(scope, move || {
                    if let Err(e) = enter_netns(fd, name, id) {
                        panic!("{e}");
                    }
                    f()
                })
                .unwrap_or_else(|e| panic!("cannot spawn a thread for namespace {name}: {e}"));
            match handle.join() {
                Ok(value) => value,
                Err(payload) => std::panic::resume_unwind(payload),
            }
        })
    }

    /// A Command whose child process enters this namespace before exec.
    ///
    /// The child calls `setns(fd, CLONE_NEWNET)` between `fork` and `exec`;
    /// if that fails, spawning the command fails and nothing runs. The
    /// command keeps the namespace file descriptor alive.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let fd = Arc::clone(&self.fd);
        let enter = move || -> io::Result<()> {
            // SAFETY: setns on a namespace descriptor kept open by `fd`; it
            // is async-signal-safe and only affects the forked child.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: the hook only calls setns(2) and reads errno, both of which
        // are async-signal-safe; it neither allocates nor takes locks.
        unsafe {
            cmd.pre_exec(enter);
        }
        cmd
    }

    /// Runs a command in the namespace, returns stdout as String, error
    /// (with stderr) on non-zero exit.
    ///
    /// Standard input is `/dev/null`. The command is killed if it runs for
    /// more than 60 seconds.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, LabError> {
        let mut cmd = self.command(program);
        cmd.args(args);
        run_command(
            cmd,
            &describe(program, args, Some(&self.name)),
            EXEC_TIMEOUT,
        )
    }

    /// Sets a sysctl inside this namespace, e.g.
    /// `sysctl("net.ipv6.conf.all.accept_ra", "0")`.
    ///
    /// Dots in `key` separate path components (as for `sysctl -w`); a key
    /// containing `/` is taken as a path below `/proc/sys` verbatim (use that
    /// for interface names containing dots). The value is written from a
    /// thread that entered the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), LabError> {
        let desc = format!("sysctl -w {key}={value} (in netns {})", self.name);
        let path = sysctl_path(key).map_err(|source| LabError::Sysctl {
            cmd: desc.clone(),
            source,
        })?;
        self.run(|| -> io::Result<()> {
            let mut file = OpenOptions::new().write(true).open(&path)?;
            file.write_all(value.as_bytes())
        })
        .map_err(|source| LabError::Sysctl { cmd: desc, source })
    }

    /// Reads a sysctl inside this namespace (same key syntax as
    /// [`Netns::sysctl`]); returns the value without the trailing newline.
    pub fn sysctl_get(&self, key: &str) -> Result<String, LabError> {
        let desc = format!("sysctl {key} (in netns {})", self.name);
        let path = sysctl_path(key).map_err(|source| LabError::Sysctl {
            cmd: desc.clone(),
            source,
        })?;
        self.run(|| std::fs::read_to_string(&path))
            .map(|value| value.trim_end().to_owned())
            .map_err(|source| LabError::Sysctl { cmd: desc, source })
    }

    /// Runs `ip ARGS` inside the namespace.
    pub(super) fn ip(&self, args: &[&str]) -> Result<String, LabError> {
        let mut cmd = self.command(ip_program());
        cmd.args(args);
        run_command(cmd, &describe("ip", args, Some(&self.name)), CMD_TIMEOUT)
    }

    /// Reads the ifindex and MAC address of `ifname` inside the namespace.
    pub(super) fn link_info(&self, ifname: &str) -> Result<(u32, [u8; 6]), LabError> {
        let args = ["-o", "link", "show", "dev", ifname];
        let out = self.ip(&args)?;
        let parse_error = |reason: &str| LabError::Parse {
            cmd: describe("ip", &args, Some(&self.name)),
            reason: reason.to_owned(),
            output: out.clone(),
        };
        let ifindex = out
            .split_once(':')
            .and_then(|(index, _)| index.trim().parse::<u32>().ok())
            .ok_or_else(|| parse_error("no ifindex"))?;
        let mac = out
            .split_whitespace()
            .skip_while(|word| *word != "link/ether")
            .nth(1)
            .and_then(parse_mac)
            .ok_or_else(|| parse_error("no link/ether address"))?;
        Ok((ifindex, mac))
    }

    /// Polls `ip -o link show dev IFNAME` until the link is operationally up.
    pub(super) fn wait_oper_up(&self, ifname: &str) -> Result<(), LabError> {
        let args = ["-o", "link", "show", "dev", ifname];
        self.poll(&format!("{ifname} to be operationally up"), &args, |out| {
            Ok(out.contains(" state UP "))
        })
    }

    /// Polls until `addr` is present on `ifname` and no IPv6 address of the
    /// interface is tentative.
    pub(super) fn wait_ipv6_ready(&self, ifname: &str, addr: Ipv6Addr) -> Result<(), LabError> {
        let args = ["-o", "-6", "addr", "show", "dev", ifname];
        let needle = format!(" {addr}/");
        self.poll(
            &format!("IPv6 addresses on {ifname} to leave the tentative state"),
            &args,
            |out| {
                if out.contains("dadfailed") {
                    return Err(format!("duplicate address detection failed: {out}"));
                }
                Ok(out.contains(&needle) && !out.contains("tentative"))
            },
        )
    }

    /// Runs `ip ARGS` every few milliseconds until `done` returns `Ok(true)`,
    /// for at most [`WAIT_TIMEOUT`].
    fn poll(
        &self,
        what: &str,
        args: &[&str],
        done: impl Fn(&str) -> Result<bool, String>,
    ) -> Result<(), LabError> {
        let start = Instant::now();
        loop {
            let out = self.ip(args)?;
            match done(&out) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(reason) => {
                    return Err(LabError::Parse {
                        cmd: describe("ip", args, Some(&self.name)),
                        reason,
                        output: out,
                    });
                }
            }
            if start.elapsed() >= WAIT_TIMEOUT {
                return Err(LabError::Timeout {
                    what: what.to_owned(),
                    cmd: describe("ip", args, Some(&self.name)),
                    waited: start.elapsed(),
                    last: out,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Netns {
    /// Deletes the namespace with `ip netns del` (which also destroys the
    /// veth ends inside it); failures are logged, never raised.
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}

/// `/run/netns/NAME`.
pub(super) fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Deletes a namespace with `ip netns del`, falling back to unmounting and
/// removing its file. Logs failures; returns whether the file is gone.
pub(super) fn delete_netns(name: &str) -> bool {
    let mut cmd = Command::new(ip_program());
    cmd.args(["netns", "del", name]);
    let desc = describe(ip_program(), &["netns", "del", name], None);
    match run_command(cmd, &desc, CMD_TIMEOUT) {
        Ok(_) => {
            log::debug!("deleted namespace {name}");
            return true;
        }
        Err(e) => log::warn!("cannot delete namespace {name}: {e}"),
    }
    let path = netns_path(name);
    if !path.exists() {
        return true;
    }
    if let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: c_path is a valid NUL-terminated path; this only detaches
        // the bind mount of our own namespace file.
        unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
    }
    match std::fs::remove_file(&path) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("cannot remove {}: {e}", path.display());
            false
        }
    }
}

/// Makes the calling thread enter the namespace `fd` and checks that it did.
fn enter_netns(fd: libc::c_int, name: &str, id: (u64, u64)) -> Result<(), LabError> {
    // SAFETY: setns on an open namespace descriptor; affects only this thread.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(LabError::Io {
            op: format!("setns into namespace {name}"),
            source: io::Error::last_os_error(),
        });
    }
    let own = std::fs::metadata("/proc/thread-self/ns/net").map_err(|source| LabError::Io {
        op: "stat /proc/thread-self/ns/net".to_owned(),
        source,
    })?;
    if (own.dev(), own.ino()) != id {
        return Err(LabError::Setup(format!(
            "thread is not in namespace {name} after setns"
        )));
    }
    Ok(())
}

/// Maps a sysctl key to its file under `/proc/sys`.
pub(super) fn sysctl_path(key: &str) -> io::Result<PathBuf> {
    let relative = if key.contains('/') {
        PathBuf::from(key.trim_start_matches('/'))
    } else {
        PathBuf::from(key.replace('.', "/"))
    };
    let valid = !key.is_empty()
        && relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if !valid {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid sysctl key {key:?}"),
        ));
    }
    Ok(Path::new("/proc/sys").join(relative))
}

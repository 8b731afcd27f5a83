//! Network-namespace test lab for end-to-end tests of the XDP program.
//!
//! The lab creates uniquely named network namespaces (`ip netns add`) and
//! joins them with veth pairs carrying dual-stack addresses from
//! `10.200.0.0/16` and `fd00:200::/32`. Everything the lab creates lives
//! inside namespaces it created itself: the veth pair is created inside
//! namespace `a` with its peer placed directly into namespace `b`, every
//! configuration command runs in the target namespace (the child enters it
//! with `setns(2)` before `exec`), and sysctls are written from a thread that
//! entered the namespace. `ip netns exec` is never used, because it remounts
//! `/sys` and hides bpffs.
//!
//! The host network namespace is only ever touched by `ip netns add` and
//! `ip netns del` (which manage files under `/run/netns`); no address, route,
//! link or program is ever added to it.
//!
//! Namespaces are deleted when their [`Netns`] value is dropped (on success,
//! failure and panic alike); deleting a namespace also destroys the veth ends
//! inside it. Namespaces left behind by killed test runs are removed by
//! [`sweep_stale`], which [`Lab::new`] calls.
//!
//! Kernel-touching tests must not run concurrently; every such test starts
//! with `let _g = lab::serial();`.

use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Prefix of every namespace name created by the lab.
///
/// Namespace names have the form `xg-TAG-PID-N`, where `TAG` is the
/// sanitised test tag, `PID` the id of the creating process and `N` a
/// per-process counter. [`sweep_stale`] relies on this format.
pub const NETNS_PREFIX: &str = "xg-";

/// Directory in which `ip netns add` creates the namespace files.
const NETNS_DIR: &str = "/run/netns";

/// Lock file shared by all test processes, see [`serial`].
const LOCK_PATH: &str = "/run/xdpgate-tests.lock";

/// Upper bound for any single helper command (`ip ...`).
const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// Upper bound for a command started through [`Netns::exec`].
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// Upper bound for waiting on link and address state.
const WAIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Maximum length of the sanitised tag embedded in namespace names.
const MAX_TAG_LEN: usize = 12;

/// Per-process counter making namespace and interface names unique.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Errors produced by the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command could not be started (including failure to enter the
    /// namespace before `exec`).
    #[error("failed to start `{cmd}`: {source}")]
    Spawn {
        /// The command line, including the namespace it was meant to run in.
        cmd: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A command exited unsuccessfully.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line, including the namespace it ran in.
        cmd: String,
        /// The exit status as printed by the standard library.
        status: String,
        /// The command's standard error output.
        stderr: String,
    },
    /// A command did not finish (or did not close its output) in time and was
    /// killed.
    #[error("`{cmd}` did not finish within {timeout:?}; stderr so far: {stderr}")]
    CommandTimeout {
        /// The command line, including the namespace it ran in.
        cmd: String,
        /// The time limit that was exceeded.
        timeout: Duration,
        /// Whatever the command wrote to standard error.
        stderr: String,
    },
    /// A command's output could not be understood.
    #[error("unexpected output from `{cmd}`: {reason}; output: {output:?}")]
    Parse {
        /// The command line that produced the output.
        cmd: String,
        /// What was wrong with it.
        reason: String,
        /// The output itself.
        output: String,
    },
    /// Some state was not reached within the time limit.
    #[error("timed out after {waited:?} waiting for {what}; last output of `{cmd}`: {last:?}")]
    Timeout {
        /// The state that was awaited.
        what: String,
        /// The command used to poll the state.
        cmd: String,
        /// How long the lab waited.
        waited: Duration,
        /// The last output of the polling command.
        last: String,
    },
    /// Writing or reading a sysctl inside a namespace failed.
    #[error("sysctl `{cmd}` failed: {source}")]
    Sysctl {
        /// A description like `sysctl -w KEY=VALUE (in netns NAME)`.
        cmd: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Any other operating-system level failure.
    #[error("{op}: {source}")]
    Io {
        /// What the lab was trying to do.
        op: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The lab could not set something up for a reason not covered above.
    #[error("lab setup failed: {0}")]
    Setup(String),
}

/// Holds the cross-process test lock; see [`serial`]. Released on drop.
#[derive(Debug)]
pub struct SerialGuard {
    // Field order matters: the flock (file) is released before the mutex.
    _file: File,
    _guard: MutexGuard<'static, ()>,
}

/// Serialises kernel-touching tests, within this process and across
/// processes.
///
/// Takes a process-wide mutex (poisoning is ignored) and then an exclusive
/// `flock(2)` on `/run/xdpgate-tests.lock` (created if missing), blocking
/// until both are available. Both are released when the returned guard is
/// dropped. Panics if the lock file cannot be opened or locked.
pub fn serial() -> SerialGuard {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(LOCK_PATH)
        .unwrap_or_else(|e| panic!("cannot open test lock {LOCK_PATH}: {e}"));
    // flock only returns early on EINTR; retry a bounded number of times.
    let mut attempts = 0u32;
    loop {
        // SAFETY: flock on a valid, open file descriptor owned by `file`.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        attempts += 1;
        if err.kind() != io::ErrorKind::Interrupted || attempts >= 1000 {
            panic!("cannot lock {LOCK_PATH}: {err}");
        }
    }
    SerialGuard {
        _file: file,
        _guard: guard,
    }
}

/// Removes namespaces left behind by earlier, no longer running test
/// processes.
///
/// Every entry of `/run/netns` whose name has the lab format
/// (`xg-TAG-PID-N`, see [`NETNS_PREFIX`]) and whose embedded `PID` is not a
/// live process is deleted with `ip netns del`. Namespaces of live processes
/// (including this one) are left alone. Errors are logged, not returned.
/// Returns the number of namespaces removed.
pub fn sweep_stale() -> usize {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return 0,
        Err(e) => {
            log::warn!("cannot list {NETNS_DIR}: {e}");
            return 0;
        }
    };
    let me = std::process::id();
    let mut removed = 0;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        let Some(pid) = owner_pid(name) else {
            continue;
        };
        if pid == me || pid_alive(pid) {
            continue;
        }
        log::info!("removing stale namespace {name} (process {pid} is gone)");
        if delete_netns(name) {
            removed += 1;
        }
    }
    removed
}

/// A network namespace created by the lab, deleted again on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
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
    fn ip(&self, args: &[&str]) -> Result<String, LabError> {
        let mut cmd = self.command(ip_program());
        cmd.args(args);
        run_command(cmd, &describe("ip", args, Some(&self.name)), CMD_TIMEOUT)
    }

    /// Reads the ifindex and MAC address of `ifname` inside the namespace.
    fn link_info(&self, ifname: &str) -> Result<(u32, [u8; 6]), LabError> {
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
    fn wait_oper_up(&self, ifname: &str) -> Result<(), LabError> {
        let args = ["-o", "link", "show", "dev", ifname];
        self.poll(&format!("{ifname} to be operationally up"), &args, |out| {
            Ok(out.contains(" state UP "))
        })
    }

    /// Polls until `addr` is present on `ifname` and no IPv6 address of the
    /// interface is tentative.
    fn wait_ipv6_ready(&self, ifname: &str, addr: Ipv6Addr) -> Result<(), LabError> {
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

/// One end of a veth link inside a namespace with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Interface name (at most 15 bytes), valid inside its namespace.
    pub ifname: String,
    /// Interface index inside its namespace.
    pub ifindex: u32,
    /// IPv4 address (prefix length 24).
    pub ipv4: Ipv4Addr,
    /// IPv6 address (prefix length 64).
    pub ipv6: Ipv6Addr,
    /// MAC address of the interface.
    pub mac: [u8; 6],
}

/// Two namespaces `a` and `b` joined by one veth pair, dual-stack.
///
/// Dropping the lab deletes both namespaces (and with them the veth pair).
/// No explicit `Drop` impl is needed: the namespaces clean up after
/// themselves, also when [`Lab::new`] fails halfway.
#[derive(Debug)]
pub struct Lab {
    /// Namespace holding `a_end`.
    pub a: Netns,
    /// Namespace holding `b_end`.
    pub b: Netns,
    /// The veth end in `a` (`10.200.X.1`, `fd00:200:X::1`).
    pub a_end: Endpoint,
    /// The veth end in `b` (`10.200.X.2`, `fd00:200:X::2`).
    pub b_end: Endpoint,
    /// The subnet number `X` the lab was built with.
    pub subnet: u8,
}

impl Lab {
    /// subnet X: a gets 10.200.X.1/24 and fd00:200:X::1/64, b gets
    /// 10.200.X.2/24 and fd00:200:X::2/64 (IPv6 added with `nodad`). Before
    /// addressing: disable IPv6 router solicitations and accept_ra, set static
    /// (permanent) neighbour entries on both sides for both families so no
    /// ARP/NDP is needed; set both links up; wait until both links are
    /// operationally up (poll `ip -o link show`, bounded 5 s) and until IPv6
    /// addresses are not tentative (poll, bounded 5 s).
    ///
    /// The decimal digits of X are used as the third IPv6 group, so subnet 17
    /// yields `10.200.17.1` and `fd00:200:17::1`. Calls [`sweep_stale`]
    /// first. Does not take [`serial`]; callers do that.
    pub fn new(tag: &str, subnet: u8) -> Result<Lab, LabError> {
        let swept = sweep_stale();
        if swept > 0 {
            log::info!("removed {swept} stale lab namespace(s)");
        }
        let tag: String = sanitize_tag(tag).chars().take(MAX_TAG_LEN - 1).collect();
        let a = Netns::new(&format!("{tag}a"))?;
        let b = Netns::new(&format!("{tag}b"))?;
        let (if_a, if_b) = veth_names(std::process::id(), next_id());
        let (ipv4_a, ipv6_a) = lab_addrs(subnet, 1);
        let (ipv4_b, ipv6_b) = lab_addrs(subnet, 2);

        // Defaults first, so the veth ends inherit them from creation on.
        for ns in [&a, &b] {
            for scope in ["all", "default"] {
                ns.sysctl(&format!("net.ipv6.conf.{scope}.accept_ra"), "0")?;
                ns.sysctl(&format!("net.ipv6.conf.{scope}.router_solicitations"), "0")?;
                ns.sysctl(&format!("net.ipv6.conf.{scope}.accept_dad"), "0")?;
            }
        }

        // Created inside `a`, peer moved straight into `b`: never in the host.
        a.ip(&[
            "link", "add", &if_a, "type", "veth", "peer", "name", &if_b, "netns", &b.name,
        ])?;

        for (ns, ifname) in [(&a, &if_a), (&b, &if_b)] {
            ns.sysctl(&format!("net/ipv6/conf/{ifname}/accept_ra"), "0")?;
            ns.sysctl(&format!("net/ipv6/conf/{ifname}/router_solicitations"), "0")?;
            ns.sysctl(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0")?;
        }
        let (ifindex_a, mac_a) = a.link_info(&if_a)?;
        let (ifindex_b, mac_b) = b.link_info(&if_b)?;

        a.ip(&["link", "set", "dev", &if_a, "up"])?;
        b.ip(&["link", "set", "dev", &if_b, "up"])?;
        a.wait_oper_up(&if_a)?;
        b.wait_oper_up(&if_b)?;

        // Static neighbours (before any address exists), so no ARP/NDP.
        for (ns, ifname, peer4, peer6, peer_mac) in [
            (&a, &if_a, ipv4_b, ipv6_b, mac_b),
            (&b, &if_b, ipv4_a, ipv6_a, mac_a),
        ] {
            let mac = format_mac(&peer_mac);
            for peer in [peer4.to_string(), peer6.to_string()] {
                ns.ip(&[
                    "neigh",
                    "replace",
                    &peer,
                    "lladdr",
                    &mac,
                    "dev",
                    ifname,
                    "nud",
                    "permanent",
                ])?;
            }
        }

        for (ns, ifname, ipv4, ipv6) in [(&a, &if_a, ipv4_a, ipv6_a), (&b, &if_b, ipv4_b, ipv6_b)] {
            ns.ip(&["addr", "add", &format!("{ipv4}/24"), "dev", ifname])?;
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{ipv6}/64"),
                "dev",
                ifname,
                "nodad",
            ])?;
        }
        a.wait_ipv6_ready(&if_a, ipv6_a)?;
        b.wait_ipv6_ready(&if_b, ipv6_b)?;

        log::debug!(
            "lab ready: {} ({if_a}) <-> {} ({if_b}), subnet {subnet}",
            a.name,
            b.name
        );
        Ok(Lab {
            a_end: Endpoint {
                ifname: if_a,
                ifindex: ifindex_a,
                ipv4: ipv4_a,
                ipv6: ipv6_a,
                mac: mac_a,
            },
            b_end: Endpoint {
                ifname: if_b,
                ifindex: ifindex_b,
                ipv4: ipv4_b,
                ipv6: ipv6_b,
                mac: mac_b,
            },
            a,
            b,
            subnet,
        })
    }
}

/// Returns the next value of the per-process name counter.
fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Keeps the ASCII alphanumerics of `tag` (lower-cased, at most
/// [`MAX_TAG_LEN`]); never empty.
fn sanitize_tag(tag: &str) -> String {
    let tag: String = tag
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(MAX_TAG_LEN)
        .collect();
    if tag.is_empty() {
        return "t".to_owned();
    }
    tag
}

/// Veth names `xg{pid:x}v{n:x}a` / `...b`: at most 14 bytes (Linux pids are
/// below 2^22), unique per process and counter value.
fn veth_names(pid: u32, n: u32) -> (String, String) {
    let base = format!("xg{:x}v{:x}", pid & 0xff_ffff, n & 0xffff);
    (format!("{base}a"), format!("{base}b"))
}

/// The addresses of host `host` (1 or 2) in lab subnet `subnet`.
fn lab_addrs(subnet: u8, host: u8) -> (Ipv4Addr, Ipv6Addr) {
    // Decimal digits of the subnet as a hex group: 17 -> fd00:200:17::.
    let group = u16::from_str_radix(&subnet.to_string(), 16).unwrap_or(0);
    (
        Ipv4Addr::new(10, 200, subnet, host),
        Ipv6Addr::new(0xfd00, 0x200, group, 0, 0, 0, 0, u16::from(host)),
    )
}

/// The pid embedded in a lab namespace name `xg-TAG-PID-N`, if `name` has
/// that form.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NETNS_PREFIX)?;
    let mut parts = rest.rsplitn(3, '-');
    let counter = parts.next()?;
    let pid = parts.next()?;
    let tag = parts.next()?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if tag.is_empty() || !all_digits(counter) || !all_digits(pid) {
        return None;
    }
    pid.parse::<u32>().ok().filter(|&pid| pid > 0)
}

/// Whether a process with this pid exists (in our pid namespace).
fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence and permission.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// `/run/netns/NAME`.
fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Deletes a namespace with `ip netns del`, falling back to unmounting and
/// removing its file. Logs failures; returns whether the file is gone.
fn delete_netns(name: &str) -> bool {
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
fn sysctl_path(key: &str) -> io::Result<PathBuf> {
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

/// The `ip` binary: `/usr/sbin/ip` or another usual location, else `ip`
/// from `PATH`.
fn ip_program() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|candidate| Path::new(candidate).is_file())
        .unwrap_or("ip")
}

/// A printable command line, with the namespace it runs in.
fn describe(program: &str, args: &[&str], netns: Option<&str>) -> String {
    let mut line = program.to_owned();
    for arg in args {
        line.push(' ');
        line.push_str(arg);
    }
    if let Some(netns) = netns {
        line.push_str(&format!(" (in netns {netns})"));
    }
    line
}

/// Runs `cmd` with stdin from `/dev/null`, capturing its output; kills it if
/// it takes longer than `timeout`. Returns stdout on success.
fn run_command(mut cmd: Command, desc: &str, timeout: Duration) -> Result<String, LabError> {
    log::debug!("running {desc}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let deadline = Instant::now() + timeout;
    let mut child = cmd.spawn().map_err(|source| LabError::Spawn {
        cmd: desc.to_owned(),
        source,
    })?;
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());
    let status = match wait_until(&mut child, deadline) {
        Ok(Some(status)) => status,
        Ok(None) => {
            kill_and_reap(&mut child);
            return Err(LabError::CommandTimeout {
                cmd: desc.to_owned(),
                timeout,
                stderr: collect(&stderr, Instant::now() + Duration::from_millis(200))
                    .unwrap_or_default(),
            });
        }
        Err(source) => {
            kill_and_reap(&mut child);
            return Err(LabError::Io {
                op: format!("wait for `{desc}`"),
                source,
            });
        }
    };
    // A descendant may hold the pipes open; give the output a bounded grace
    // period past the deadline.
    let output_deadline = deadline.max(Instant::now() + Duration::from_secs(1));
    let timed_out = || LabError::CommandTimeout {
        cmd: desc.to_owned(),
        timeout,
        stderr: String::from("(output pipes were not closed)"),
    };
    let err_text = collect(&stderr, output_deadline).ok_or_else(timed_out)?;
    let out_text = collect(&stdout, output_deadline).ok_or_else(timed_out)?;
    if !status.success() {
        return Err(LabError::Command {
            cmd: desc.to_owned(),
            status: status.to_string(),
            stderr: err_text.trim_end().to_owned(),
        });
    }
    Ok(out_text)
}

/// Polls `child` until it exits or `deadline` passes (`Ok(None)`).
fn wait_until(
    child: &mut Child,
    deadline: Instant,
) -> io::Result<Option<std::process::ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Kills and reaps a child that overran its time limit.
fn kill_and_reap(child: &mut Child) {
    if let Err(e) = child.kill() {
        log::warn!("cannot kill child {}: {e}", child.id());
    }
    // Reaping a SIGKILLed child returns promptly.
    let _ = child.wait();
}

/// Reads a pipe to its end on a helper thread.
fn read_in_background(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    match pipe {
        Some(mut pipe) => {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = pipe.read_to_end(&mut buf);
                let _ = tx.send(buf);
            });
        }
        None => {
            let _ = tx.send(Vec::new());
        }
    }
    rx
}

/// Waits (until `deadline`) for the output collected by
/// [`read_in_background`].
fn collect(rx: &mpsc::Receiver<Vec<u8>>, deadline: Instant) -> Option<String> {
    let wait = deadline.saturating_duration_since(Instant::now());
    rx.recv_timeout(wait)
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// Parses `aa:bb:cc:dd:ee:ff`.
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::net::{IpAddr, SocketAddr, UdpSocket};
    use std::panic::AssertUnwindSafe;

    const READ_TIMEOUT: Option<Duration> = Some(Duration::from_secs(2));

    /// Runs `ip ARGS` in the host namespace (read-only queries only).
    fn host_ip(args: &[&str]) -> String {
        let mut cmd = Command::new(ip_program());
        cmd.args(args);
        run_command(cmd, &describe("ip", args, None), CMD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The host's addresses as `ifname addr` lines (lifetimes stripped).
    fn host_addrs() -> BTreeSet<String> {
        host_ip(&["-o", "addr", "show"])
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.len() >= 4).then(|| format!("{} {}", fields[1], fields[3]))
            })
            .collect()
    }

    /// The host's IPv4 and IPv6 routes with expiry counters stripped.
    fn host_routes() -> Vec<String> {
        let mut routes = Vec::new();
        for family in ["-4", "-6"] {
            for line in host_ip(&[family, "route", "show", "table", "all"]).lines() {
                let mut words = line.split_whitespace();
                let mut kept = Vec::new();
                while let Some(word) = words.next() {
                    if word == "expires" {
                        words.next();
                    } else {
                        kept.push(word);
                    }
                }
                routes.push(kept.join(" "));
            }
        }
        routes
    }

    fn netns_exists(name: &str) -> bool {
        netns_path(name).exists()
    }

    /// Sends a datagram from `a` (bound to `src`) to `b` (bound to `dst`)
    /// and a reply back, checking payloads and source addresses.
    fn udp_exchange(lab: &Lab, src: IpAddr, dst: IpAddr) {
        let rx = lab.b.run(|| {
            let socket = UdpSocket::bind(SocketAddr::new(dst, 0))
                .unwrap_or_else(|e| panic!("bind {dst} in b: {e}"));
            socket.set_read_timeout(READ_TIMEOUT).unwrap();
            socket
        });
        let rx_addr = rx.local_addr().unwrap();
        let request = format!("xdpgate lab request to {dst}");

        let tx = lab.a.run(|| {
            let socket = UdpSocket::bind(SocketAddr::new(src, 0))
                .unwrap_or_else(|e| panic!("bind {src} in a: {e}"));
            socket.set_read_timeout(READ_TIMEOUT).unwrap();
            socket
                .send_to(request.as_bytes(), rx_addr)
                .unwrap_or_else(|e| panic!("send to {rx_addr}: {e}"));
            socket
        });
        let tx_addr = tx.local_addr().unwrap();

        lab.b.run(|| {
            let mut buf = [0u8; 256];
            let (n, from) = rx
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("no datagram at {rx_addr}: {e}"));
            assert_eq!(&buf[..n], request.as_bytes());
            assert_eq!(from, tx_addr);
            rx.send_to(b"reply", from).unwrap();
        });

        lab.a.run(|| {
            let mut buf = [0u8; 256];
            let (n, from) = tx
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("no reply at {tx_addr}: {e}"));
            assert_eq!(&buf[..n], b"reply");
            assert_eq!(from, rx_addr);
        });
    }

    #[test]
    fn udp_both_families() {
        let _g = serial();
        let lab = Lab::new("udp", 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(lab.a_end.ipv4, Ipv4Addr::new(10, 200, 1, 1));
        assert_eq!(lab.b_end.ipv4, Ipv4Addr::new(10, 200, 1, 2));
        assert_eq!(lab.a_end.ipv6, "fd00:200:1::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(lab.b_end.ipv6, "fd00:200:1::2".parse::<Ipv6Addr>().unwrap());
        assert!(lab.a_end.ifname.len() <= 15 && lab.b_end.ifname.len() <= 15);
        assert!(lab.a_end.ifindex > 1 && lab.b_end.ifindex > 1);
        assert_ne!(lab.a_end.mac, lab.b_end.mac);
        assert_ne!(lab.a_end.mac, [0; 6]);

        // Static neighbours exist on both sides for both families.
        for (ns, end, peer) in [
            (&lab.a, &lab.a_end, &lab.b_end),
            (&lab.b, &lab.b_end, &lab.a_end),
        ] {
            let neigh = ns
                .exec("ip", &["neigh", "show", "dev", &end.ifname])
                .unwrap();
            let neigh6 = ns
                .exec("ip", &["-6", "neigh", "show", "dev", &end.ifname])
                .unwrap();
            let mac = format_mac(&peer.mac);
            for (table, addr) in [
                (&neigh, peer.ipv4.to_string()),
                (&neigh6, peer.ipv6.to_string()),
            ] {
                let line = table
                    .lines()
                    .find(|line| line.starts_with(&format!("{addr} ")))
                    .unwrap_or_else(|| panic!("no neighbour {addr} in {table:?}"));
                assert!(line.contains(&mac) && line.contains("PERMANENT"), "{line}");
            }
            assert_eq!(ns.sysctl_get("net.ipv6.conf.all.accept_ra").unwrap(), "0");
        }

        udp_exchange(&lab, lab.a_end.ipv4.into(), lab.b_end.ipv4.into());
        udp_exchange(&lab, lab.a_end.ipv6.into(), lab.b_end.ipv6.into());

        // Commands report failures with their stderr.
        match lab.a.exec("ip", &["link", "show", "dev", "xgnonexist0"]) {
            Err(LabError::Command { cmd, stderr, .. }) => {
                assert!(cmd.contains(lab.a.name()), "{cmd}");
                assert!(!stderr.is_empty());
            }
            other => panic!("unexpected result {other:?}"),
        }
    }

    #[test]
    fn drop_removes_namespaces() {
        let _g = serial();
        let lab = Lab::new("drop", 2).unwrap_or_else(|e| panic!("{e}"));
        let names = [lab.a.name().to_owned(), lab.b.name().to_owned()];
        assert!(lab.a.path().starts_with(NETNS_DIR));
        for name in &names {
            assert!(netns_exists(name), "{name} missing while the lab lives");
        }
        drop(lab);
        for name in &names {
            assert!(!netns_exists(name), "{name} still exists after drop");
        }
    }

    fn deliberate_panic() -> u32 {
        panic!("deliberate panic inside a namespace closure");
    }

    #[test]
    fn panic_cleans_up() {
        let _g = serial();
        let names = Mutex::new(Vec::new());
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let lab = Lab::new("panic", 3).unwrap_or_else(|e| panic!("{e}"));
            names
                .lock()
                .unwrap()
                .extend([lab.a.name().to_owned(), lab.b.name().to_owned()]);
            lab.a.run(deliberate_panic)
        }));
        assert!(result.is_err(), "the panic was not propagated");
        let names = names.into_inner().unwrap();
        assert_eq!(names.len(), 2);
        for name in &names {
            assert!(!netns_exists(name), "{name} survived a panic");
        }
    }

    #[test]
    fn host_namespace_untouched() {
        let _g = serial();
        let links = host_ip(&["-o", "link", "show"]);
        let addrs = host_addrs();
        let routes = host_routes();
        let host_ttl = std::fs::read_to_string("/proc/sys/net/ipv4/ip_default_ttl").unwrap();

        let lab = Lab::new("host", 4).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(host_ip(&["-o", "link", "show"]), links);
        assert_eq!(host_addrs(), addrs);
        assert_eq!(host_routes(), routes);
        // The lab addresses do not exist in the host namespace.
        for addr in [IpAddr::from(lab.a_end.ipv4), IpAddr::from(lab.b_end.ipv6)] {
            assert!(
                UdpSocket::bind(SocketAddr::new(addr, 0)).is_err(),
                "{addr} is on the host"
            );
        }
        // A namespace sysctl does not leak into the host.
        let ttl = if host_ttl.trim() == "63" { "62" } else { "63" };
        lab.a.sysctl("net.ipv4.ip_default_ttl", ttl).unwrap();
        assert_eq!(lab.a.sysctl_get("net.ipv4.ip_default_ttl").unwrap(), ttl);
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_default_ttl").unwrap(),
            host_ttl
        );
        drop(lab);

        assert_eq!(host_ip(&["-o", "link", "show"]), links);
        assert_eq!(host_addrs(), addrs);
        assert_eq!(host_routes(), routes);
    }

    #[test]
    fn sweep_removes_dead_owner() {
        let _g = serial();
        let mut child = Command::new(ip_program())
            .arg("-V")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        assert!(!pid_alive(dead_pid));
        let name = format!("{NETNS_PREFIX}sweep-{dead_pid}-0");
        let mut add = Command::new(ip_program());
        add.args(["netns", "add", &name]);
        run_command(add, "ip netns add", CMD_TIMEOUT).unwrap();
        assert!(netns_exists(&name));

        // Our own namespaces are kept.
        let own = Netns::new("sweepown").unwrap();
        sweep_stale();
        let swept = !netns_exists(&name);
        if !swept {
            delete_netns(&name);
        }
        assert!(swept, "stale namespace {name} was not swept");
        assert!(netns_exists(own.name()));
    }

    #[test]
    fn names() {
        let _g = serial();
        let (a, b) = veth_names(4_194_304, u32::MAX);
        assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
        assert_ne!(a, b);
        assert_ne!(veth_names(0x12, 0x34).0, veth_names(0x123, 0x4).0);
        assert_eq!(owner_pid("xg-udpa-1234-7"), Some(1234));
        assert_eq!(owner_pid("xg-1234-7"), None);
        assert_eq!(owner_pid("xg-udp-12x-7"), None);
        assert_eq!(owner_pid("other-udp-1234-7"), None);
        assert_eq!(sanitize_tag("Foo-Bar_9"), "foobar9");
        assert_eq!(sanitize_tag("--"), "t");
        assert_eq!(
            lab_addrs(17, 2),
            (
                Ipv4Addr::new(10, 200, 17, 2),
                "fd00:200:17::2".parse().unwrap()
            )
        );
        assert_eq!(
            sysctl_path("net.ipv6.conf.all.accept_ra").unwrap(),
            Path::new("/proc/sys/net/ipv6/conf/all/accept_ra")
        );
        assert!(sysctl_path("net/../../etc").is_err());
        assert_eq!(parse_mac("02:fc:00:00:00:01"), Some([2, 0xfc, 0, 0, 0, 1]));
        assert_eq!(parse_mac("02:fc:00:00:00"), None);
        assert_eq!(format_mac(&[2, 0xfc, 0, 0, 0, 1]), "02:fc:00:00:00:01");
    }
}

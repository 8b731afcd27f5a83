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
//!
//! Files: `netns.rs` ([`Netns`]: one namespace, commands and sysctls inside
//! it), `pair.rs` ([`Lab`]: two namespaces joined by a veth pair), `command.rs`
//! (running helper commands with time limits); this file holds the errors,
//! the cross-process lock, the sweep of stale namespaces and naming.

mod command;
mod netns;
mod pair;
#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub use netns::Netns;
pub use pair::{Endpoint, Lab};

use netns::delete_netns;

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

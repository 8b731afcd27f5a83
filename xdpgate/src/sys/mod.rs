//! The operating system below the daemon, each part behind a small typed
//! interface: the raw `bpf(2)` calls aya lacks ([`bpf`]: RCU barrier, array
//! maps written through mmap), rtnetlink ([`netlink`]: links, XDP
//! attachments, addresses, neighbours; [`rtnl_events`]: its change
//! notifications), listening sockets with explicit
//! options ([`listen`]), the TCP sysctls of SYN cookies ([`sysctl`]), and
//! here the small helpers: privilege and bpffs
//! checks, interface names and indexes, program names, the daemon lock, the
//! kernel release.
pub mod bpf;
pub mod listen;
mod malloc;
pub mod netlink;
pub mod object;
mod rlimit;
pub mod rtnl_events;
pub mod sysctl;

pub use malloc::no_fastbins;
pub use rlimit::raise_nofile_limit;

use std::{
    ffi::{CStr, CString},
    fs::File,
    io::{self, Read as _, Seek as _, Write as _},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use thiserror::Error;
use xdpgate_model::fsafe::{FsafeError, SafeDir};

/// Errors of the OS helpers.
#[derive(Debug, Error)]
pub enum SysError {
    /// Not running as root.
    #[error("{what} needs root (CAP_BPF and CAP_NET_ADMIN): run it as root, for example with sudo")]
    NotRoot {
        /// What was attempted.
        what: &'static str,
    },
    /// bpffs is not mounted.
    #[error("bpffs is not mounted at {0}: mount it with `mount -t bpf bpf {0}`")]
    NoBpffs(PathBuf),
    /// An interface name does not exist in this network namespace.
    #[error("interface {0:?} does not exist in this network namespace (see `ip link`)")]
    NoSuchInterface(String),
    /// Another daemon holds the lock.
    #[error("another xdpgate daemon{pid} already runs with state in {dir}; stop it first or pass a different --run-dir/--bpffs-dir",
        pid = .pid.map(|p| format!(" (pid {p})")).unwrap_or_default(), dir = .dir.display())]
    Locked {
        /// Pid recorded in the lock file, if readable.
        pid: Option<u32>,
        /// The run directory.
        dir: PathBuf,
    },
    /// The run directory or the lock file is not safe to use (nothing was
    /// written).
    #[error(transparent)]
    Unsafe(#[from] FsafeError),
    /// Other I/O failure.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Fails with [`SysError::NotRoot`] unless the effective uid is 0.
pub fn require_root(what: &'static str) -> Result<(), SysError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(SysError::NotRoot { what });
    }
    Ok(())
}

/// Fails with [`SysError::NoBpffs`] unless `mount` is a bpffs mount.
pub fn require_bpffs(mount: &Path) -> Result<(), SysError> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let c = CString::new(mount.as_os_str().as_encoded_bytes())
        .map_err(|_| SysError::NoBpffs(mount.to_path_buf()))?;
    // SAFETY: statfs writes into a zeroed struct of the right type.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid, writable statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), &raw mut st) };
    if rc != 0 || st.f_type as i64 != BPF_FS_MAGIC {
        return Err(SysError::NoBpffs(mount.to_path_buf()));
    }
    Ok(())
}

/// The index of interface `name` in the current network namespace.
pub fn ifindex(name: &str) -> Result<u32, SysError> {
    let c = CString::new(name).map_err(|_| SysError::NoSuchInterface(name.to_owned()))?;
    // SAFETY: c is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(SysError::NoSuchInterface(name.to_owned())),
        i => Ok(i),
    }
}

/// The name of interface `ifindex` in the current network namespace, if it exists.
pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// The names of the BPF programs loaded in the kernel, by program id. Reading
/// them needs CAP_SYS_ADMIN: without it (or for a program that cannot be
/// read) the map has no entry.
pub fn program_names() -> std::collections::HashMap<u32, String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_owned()))
        .collect()
}

/// An exclusive `flock` on the daemon's lock file, held until dropped. The file
/// holds the owner's pid; it is left in place on exit (the lock, not the file's
/// existence, tells whether a daemon runs, so removing it would only open a race).
#[derive(Debug)]
pub struct DaemonLock {
    _file: File,
}

impl DaemonLock {
    /// Takes the lock without waiting. `run_dir` is created (mode 0700) if
    /// needed and checked first (owned by root, writable by no one else, no
    /// symbolic link); the lock file is then opened without following a
    /// symbolic link and without truncating it, and only once the lock is
    /// held is it emptied and the pid written.
    pub fn acquire(run_dir: &Path, lock_file: &Path) -> Result<Self, SysError> {
        let dir = SafeDir::create(run_dir, 0o700)?;
        let name = lock_file.file_name().unwrap_or(lock_file.as_os_str());
        let mut file = dir.open_file(name)?;
        // SAFETY: valid fd owned by `file`.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut s = String::new();
            let _ = file.read_to_string(&mut s);
            return Err(SysError::Locked {
                pid: s.trim().parse().ok(),
                dir: run_dir.to_path_buf(),
            });
        }
        let io = |source| SysError::Io {
            what: "cannot write",
            path: lock_file.to_path_buf(),
            source,
        };
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DaemonLock { _file: file })
    }

    /// Whether some live process holds the lock at `lock_file`; returns its pid.
    /// The file is opened without following a symbolic link.
    pub fn holder(lock_file: &Path) -> Option<u32> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(lock_file)
            .ok()?;
        // SAFETY: valid fd owned by `file`; a shared non-blocking probe.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            return None; // nobody holds it exclusively
        }
        let mut s = String::new();
        file.read_to_string(&mut s).ok()?;
        s.trim().parse().ok()
    }
}

/// The running kernel's release string (`uname -r`) and its (major, minor).
pub fn kernel_release() -> Option<(String, (u32, u32))> {
    // SAFETY: `utsname` is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a utsname.
    if unsafe { libc::uname(&raw mut u) } != 0 {
        return None;
    }
    // SAFETY: uname NUL-terminates the field.
    let release = unsafe { CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let version = parse_release(&release)?;
    Some((release, version))
}

/// (major, minor) of a kernel release string like `6.1.0-56-cloud-amd64`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod release_tests {
    use super::parse_release;

    #[test]
    fn parses_kernel_releases() {
        assert_eq!(parse_release("6.1.0-56-cloud-amd64"), Some((6, 1)));
        assert_eq!(parse_release("6.12.117+deb12-cloud-amd64"), Some((6, 12)));
        assert_eq!(parse_release("7.3.4+deb13-cloud-amd64"), Some((7, 3)));
        assert_eq!(parse_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_release("garbage"), None);
    }
}

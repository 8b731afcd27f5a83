//! Files in directories that others must not be able to tamper with: the
//! state directory, the run directory (lock file, control socket) and the
//! pin directory under bpffs. One check, one way to create a missing
//! directory, one atomic write, shared by every caller.
//!
//! - [`SafeDir::open`] opens a directory without following a symbolic link
//!   at its last component and refuses it unless it is owned by root or by
//!   the effective user and writable by neither group nor others; the error
//!   names the directory, what was found and the command that fixes it.
//! - [`SafeDir::create`] makes the missing components (mode 0700 or 0755,
//!   each created relative to its parent's descriptor and reopened without
//!   following symbolic links), then opens and checks the directory.
//! - [`SafeDir::write_atomic`] writes a file in the checked directory through
//!   its descriptor: a temporary with an unpredictable name created with
//!   `O_CREAT|O_EXCL|O_NOFOLLOW` (mode 0600), fsynced, renamed over the
//!   target, the directory fsynced; the temporary is removed on any failure.
//!   A symbolic link planted at the temporary's or the target's name is never
//!   followed.
//! - [`SafeDir::open_file`] opens a file in it without following a symbolic
//!   link and refuses anything but a regular file with one link owned by us.
use std::{
    ffi::{CString, OsStr},
    fs::File,
    io::{self, Write as _},
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Component, Path, PathBuf},
};

use thiserror::Error;

/// Why a directory or a file in it was refused or could not be used.
#[derive(Debug, Error)]
pub enum FsafeError {
    /// The path is not safe to trust: another user could replace or redirect
    /// what xdpgate writes there.
    #[error(
        "{path} is {found}; xdpgate keeps its files only where no other user can write (fix: {fix})"
    )]
    Unsafe {
        /// The directory or file.
        path: PathBuf,
        /// What was found (owner, mode, kind).
        found: String,
        /// The command or step that fixes it.
        fix: String,
    },
    /// A system call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl FsafeError {
    /// The OS error, if a system call failed (for example `ENOSPC` or
    /// `EROFS` on a full or read-only filesystem).
    pub fn os_error(&self) -> Option<&io::Error> {
        match self {
            FsafeError::Io { source, .. } => Some(source),
            FsafeError::Unsafe { .. } => None,
        }
    }

    /// Whether the path was refused as unsafe (not a passing failure).
    pub fn is_unsafe(&self) -> bool {
        matches!(self, FsafeError::Unsafe { .. })
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FsafeError + 'a {
    move |source| FsafeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn cstr(name: &OsStr, path: &Path) -> Result<CString, FsafeError> {
    CString::new(name.as_bytes()).map_err(|_| FsafeError::Io {
        what: "a NUL byte in",
        path: path.to_path_buf(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })
}

/// Converts a `-1` return into the OS error.
fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a writable stat.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &raw mut st) })?;
    Ok(st)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; `None` if there is no entry.
fn lstat_at(dir: BorrowedFd<'_>, name: &CString) -> io::Result<Option<libc::stat>> {
    // SAFETY: stat is plain data; fstatat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor, a NUL-terminated name and a writable stat.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &raw mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    match check(rc) {
        Ok(_) => Ok(Some(st)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `openat(dir, name, flags | O_CLOEXEC | O_NOFOLLOW, mode)`.
fn open_at(
    dir: BorrowedFd<'_>,
    name: &CString,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: a valid descriptor and a NUL-terminated name; the mode is
    // passed as the variadic argument open(2) expects.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            libc::c_uint::from(mode),
        )
    })?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The owner of a file, as shown to the operator.
fn owner(uid: u32) -> String {
    match uid {
        0 => "root".to_owned(),
        65534 => "uid 65534 (nobody)".to_owned(),
        u => format!("uid {u}"),
    }
}

fn is_symlink(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

/// The refusal of a path that should be a directory and is not.
fn not_a_directory(path: &Path) -> FsafeError {
    FsafeError::Unsafe {
        path: path.to_path_buf(),
        found: "not a directory".to_owned(),
        fix: format!(
            "remove it, or choose another directory than {}",
            path.display()
        ),
    }
}

/// Refuses a directory not owned by root or us, or writable by group or
/// others; the message names the fix.
fn judge_dir(path: &Path, st: &libc::stat) -> Result<(), FsafeError> {
    let me = euid();
    let mode = st.st_mode & 0o7777;
    let mut found = Vec::new();
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(not_a_directory(path));
    }
    let foreign = st.st_uid != me && st.st_uid != 0;
    if foreign {
        found.push(format!("owned by {}", owner(st.st_uid)));
    }
    if mode & 0o022 != 0 {
        found.push(format!("writable by others (mode {mode:04o})"));
    }
    if found.is_empty() {
        return Ok(());
    }
    let d = path.display();
    let mut fix = Vec::new();
    if foreign {
        fix.push(format!("chown {} {d}", owner(me).replace("uid ", "")));
    }
    if mode & 0o022 != 0 {
        fix.push(format!("chmod {:04o} {d}", mode & !0o022));
    }
    Err(FsafeError::Unsafe {
        path: path.to_path_buf(),
        found: found.join(" and "),
        fix: fix.join(" && "),
    })
}

/// A directory checked as safe, held open: everything done in it goes
/// through its descriptor, so the directory checked is the one written to.
#[derive(Debug)]
pub struct SafeDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl AsFd for SafeDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl SafeDir {
    /// Opens `path` (`O_DIRECTORY|O_NOFOLLOW`) and checks it: owned by root
    /// or the effective user, writable by neither group nor others, not a
    /// symbolic link.
    pub fn open(path: &Path) -> Result<SafeDir, FsafeError> {
        let c = cstr(path.as_os_str(), path)?;
        // SAFETY: a NUL-terminated path; no mode is needed without O_CREAT.
        let rc = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        let fd = match check(rc) {
            Ok(fd) => fd,
            // With O_DIRECTORY, a symbolic link fails ENOTDIR rather than ELOOP.
            Err(e)
                if e.raw_os_error() == Some(libc::ELOOP)
                    || std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink()) =>
            {
                return Err(FsafeError::Unsafe {
                    path: path.to_path_buf(),
                    found: "a symbolic link".to_owned(),
                    fix: format!(
                        "replace it with a directory owned by root (mode 0700), or give the path it points to; {} was not followed",
                        path.display()
                    ),
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(not_a_directory(path));
            }
            Err(e) => return Err(io_err("cannot open the directory", path)(e)),
        };
        // SAFETY: open returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let st = fstat(fd.as_fd()).map_err(io_err("cannot stat", path))?;
        judge_dir(path, &st)?;
        Ok(SafeDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Checks `path` as [`SafeDir::open`] does.
    pub fn check(path: &Path) -> Result<(), FsafeError> {
        Self::open(path).map(drop)
    }

    /// Creates `path` with `mode` (0700 or 0755) and any missing parent,
    /// each made relative to its parent's descriptor and reopened without
    /// following a symbolic link (one planted meanwhile is refused), then
    /// opens and checks it as [`SafeDir::open`] does.
    pub fn create(path: &Path, mode: u32) -> Result<SafeDir, FsafeError> {
        // The deepest ancestor that exists is taken as the system made it
        // (`/run`, `/var/lib`, a symbolic link like `/var/run`); below it
        // every component is made here.
        let mut base = path;
        let mut missing = Vec::new();
        loop {
            match std::fs::metadata(base) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("cannot stat", base)(e)),
            }
            match (base.parent(), base.components().next_back()) {
                (Some(parent), Some(Component::Normal(name))) => {
                    missing.push(name);
                    base = if parent.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        parent
                    };
                }
                _ => break,
            }
        }
        if missing.is_empty() {
            return Self::open(path);
        }
        let c = cstr(base.as_os_str(), base)?;
        // SAFETY: a NUL-terminated path; no mode is needed without O_CREAT.
        let rc = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        let raw = check(rc).map_err(io_err("cannot open the directory", base))?;
        // SAFETY: open returned a new descriptor that nothing else owns.
        let mut fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut at = base.to_path_buf();
        for name in missing.into_iter().rev() {
            at.push(name);
            let n = cstr(name, &at)?;
            // SAFETY: a valid descriptor and a NUL-terminated name.
            let rc = unsafe { libc::mkdirat(fd.as_raw_fd(), n.as_ptr(), mode as libc::mode_t) };
            match check(rc) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(io_err("cannot create", &at)(e)),
            }
            fd = match open_at(fd.as_fd(), &n, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
                Ok(fd) => fd,
                Err(e)
                    if e.raw_os_error() == Some(libc::ELOOP)
                        || e.raw_os_error() == Some(libc::ENOTDIR) =>
                {
                    return Err(FsafeError::Unsafe {
                        path: at,
                        found: "a symbolic link or file planted while it was being created"
                            .to_owned(),
                        fix: "remove it and find out who made it".to_owned(),
                    });
                }
                Err(e) => return Err(io_err("cannot open the directory", &at)(e)),
            };
        }
        let st = fstat(fd.as_fd()).map_err(io_err("cannot stat", path))?;
        judge_dir(path, &st)?;
        Ok(SafeDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's descriptor, for a lock on it.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Refuses entry `name` if it is a symbolic link owned by neither root
    /// nor us (one another user planted); `Ok(true)` if it is a symbolic
    /// link of ours, `Ok(false)` if it is none or there is no entry.
    pub fn check_link(&self, name: &OsStr) -> Result<bool, FsafeError> {
        let path = self.path.join(name);
        let n = cstr(name, &path)?;
        let st = lstat_at(self.fd.as_fd(), &n).map_err(io_err("cannot stat", &path))?;
        match st {
            Some(st) if is_symlink(&st) => {
                if st.st_uid != euid() && st.st_uid != 0 {
                    Err(FsafeError::Unsafe {
                        path,
                        found: format!("a symbolic link owned by {}", owner(st.st_uid)),
                        fix: "remove it (xdpgate does not follow it) and find out who made it"
                            .to_owned(),
                    })
                } else {
                    Ok(true)
                }
            }
            _ => Ok(false),
        }
    }

    /// Opens the regular file `name` for reading and writing, creating it
    /// with mode 0600 if needed and never truncating it, without following a
    /// symbolic link; refuses anything but a regular file with one link
    /// owned by root or us.
    pub fn open_file(&self, name: &OsStr) -> Result<File, FsafeError> {
        self.open_with(name, libc::O_RDWR | libc::O_CREAT)
    }

    /// Opens the regular file `name` read-only as [`SafeDir::open_file`]
    /// does (without creating it: a missing file is an `Io` error of kind
    /// `NotFound`).
    pub fn open_read(&self, name: &OsStr) -> Result<File, FsafeError> {
        self.open_with(name, libc::O_RDONLY)
    }

    fn open_with(&self, name: &OsStr, flags: libc::c_int) -> Result<File, FsafeError> {
        let path = self.path.join(name);
        let n = cstr(name, &path)?;
        let fd = match open_at(self.fd.as_fd(), &n, flags, 0o600) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(FsafeError::Unsafe {
                    path,
                    found: "a symbolic link".to_owned(),
                    fix: "remove it (xdpgate does not follow it) and find out who made it"
                        .to_owned(),
                });
            }
            Err(e) => return Err(io_err("cannot open", &path)(e)),
        };
        let st = fstat(fd.as_fd()).map_err(io_err("cannot stat", &path))?;
        let me = euid();
        let why = if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            Some("not a regular file".to_owned())
        } else if st.st_uid != me && st.st_uid != 0 {
            Some(format!("owned by {}", owner(st.st_uid)))
        } else if st.st_nlink != 1 {
            Some(format!("a file with {} hard links", st.st_nlink))
        } else {
            None
        };
        if let Some(found) = why {
            return Err(FsafeError::Unsafe {
                path,
                found,
                fix: "remove it and find out who made it".to_owned(),
            });
        }
        Ok(File::from(fd))
    }

    /// Writes `bytes` to `name` in this directory atomically: a temporary
    /// with an unpredictable name made with `O_CREAT|O_EXCL|O_NOFOLLOW`
    /// (mode 0600), written and fsynced, renamed over `name` (a symbolic
    /// link at `name` is replaced, never followed), then the directory
    /// fsynced. On any failure the temporary is removed and `name` is as it
    /// was.
    pub fn write_atomic(&self, name: &OsStr, bytes: &[u8]) -> Result<(), FsafeError> {
        let target = self.path.join(name);
        let n = cstr(name, &target)?;
        let (tmp, file) = self.create_temporary(name)?;
        let tmp_path = self.path.join(OsStr::from_bytes(tmp.as_bytes()));
        let written = (|| {
            let mut file = file;
            file.write_all(bytes)
                .map_err(io_err("cannot write", &tmp_path))?;
            file.sync_all().map_err(io_err("cannot fsync", &tmp_path))?;
            let dir = self.fd.as_raw_fd();
            // SAFETY: a valid descriptor and two NUL-terminated names.
            check(unsafe { libc::renameat(dir, tmp.as_ptr(), dir, n.as_ptr()) })
                .map_err(io_err("cannot rename into place", &target))?;
            Ok(())
        })();
        if let Err(e) = written {
            // SAFETY: a valid descriptor and a NUL-terminated name.
            unsafe { libc::unlinkat(self.fd.as_raw_fd(), tmp.as_ptr(), 0) };
            return Err(e);
        }
        // SAFETY: a valid descriptor.
        check(unsafe { libc::fsync(self.fd.as_raw_fd()) })
            .map_err(io_err("cannot fsync the directory", &self.path))?;
        Ok(())
    }

    /// A new temporary `.NAME.tmp.RANDOM` made with `O_EXCL|O_NOFOLLOW`:
    /// an existing entry of that name (a planted symbolic link) is never
    /// opened; another random name is tried instead.
    fn create_temporary(&self, name: &OsStr) -> Result<(CString, File), FsafeError> {
        const TRIES: usize = 16;
        let mut last = None;
        for _ in 0..TRIES {
            let mut tmp = b".".to_vec();
            tmp.extend_from_slice(name.as_bytes());
            tmp.extend_from_slice(format!(".tmp.{:016x}", random_u64()).as_bytes());
            let path = self.path.join(OsStr::from_bytes(&tmp));
            let c = cstr(OsStr::from_bytes(&tmp), &path)?;
            match open_at(
                self.fd.as_fd(),
                &c,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                0o600,
            ) {
                Ok(fd) => return Ok((c, File::from(fd))),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => last = Some(e),
                Err(e) => return Err(io_err("cannot create the temporary file", &path)(e)),
            }
        }
        Err(io_err("cannot create a temporary file in", &self.path)(
            last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)),
        ))
    }
}

/// 64 unpredictable bits from the kernel (`getrandom`), or, should that
/// fail, bits of the clock and the pid: the name only has to be hard to
/// guess, `O_EXCL` makes it safe.
fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: buf is writable for its length.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == 8 {
        return u64::from_ne_bytes(buf);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}

#[cfg(test)]
mod tests;

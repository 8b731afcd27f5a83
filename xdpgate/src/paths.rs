//! Where a daemon keeps its state: pinned maps under bpffs, and the lock file
//! and the control socket under the run directory. Both are configurable so
//! that several daemons (for example one per test namespace) never share
//! maps or sockets.
use std::path::{Path, PathBuf};

/// Default directory for pinned maps.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/xdpgate";
/// Default runtime directory (lock file and control socket).
pub const DEFAULT_RUN_DIR: &str = "/run/xdpgate";

/// The filesystem locations of one daemon instance.
#[derive(Clone, Debug)]
pub struct Paths {
    /// Directory under bpffs holding the pinned maps.
    pub bpffs_dir: PathBuf,
    /// Runtime directory holding the lock file and the control socket.
    pub run_dir: PathBuf,
}

impl Paths {
    /// Path at which map `name` is pinned.
    pub fn map_pin(&self, name: &str) -> PathBuf {
        self.bpffs_dir
            .join(maps_dir(xdpgate_common::pins::SCHEMA_VERSION))
            .join(name)
    }

    /// The daemon's lock file; holds the daemon's pid while it runs.
    pub fn lock_file(&self) -> PathBuf {
        self.run_dir.join("xdpgate.lock")
    }

    /// The control API socket.
    pub fn socket(&self) -> PathBuf {
        self.run_dir.join("xdpgate.sock")
    }

    /// The bpffs mount point that `bpffs_dir` must live under.
    pub fn bpffs_mount(&self) -> &Path {
        Path::new("/sys/fs/bpf")
    }
}

/// The folder of the pinned maps of `schema`, under the bpffs directory
/// (`maps-1`; see `xdpgate_common::pins`).
pub fn maps_dir(schema: u32) -> String {
    format!("{}{schema}", xdpgate_common::pins::MAPS_DIR_PREFIX)
}

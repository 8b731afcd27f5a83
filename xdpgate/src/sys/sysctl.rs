//! The kernel's TCP settings the SYN-cookie path depends on, read from
//! `/proc/sys` of the caller's network namespace (they are per namespace),
//! and what they decide: whether cookies the datapath sends are accepted at
//! all, and which TCP options its SYN-ACKs may carry. The decisions are pure
//! functions of [`TcpSysctls`], tested on a fixture table.
use std::{
    fs,
    path::{Path, PathBuf},
};

use thiserror::Error;
use xdpgate_common::limit::{SYNCOOKIE_SACK, SYNCOOKIE_TIMESTAMPS, SYNCOOKIE_WSCALE};

/// Where the sysctls live.
pub const PROC_SYS: &str = "/proc/sys";

/// Errors of reading the sysctls.
#[derive(Debug, Error)]
pub enum SysctlError {
    /// A sysctl file could not be read.
    #[error("cannot read {path} (is /proc mounted?): {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A sysctl file held something else than numbers.
    #[error("{path} holds {text:?}, not the numbers the kernel writes there")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it held.
        text: String,
    },
}

/// The sysctls the SYN-cookie path reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSysctls {
    /// `net.ipv4.tcp_syncookies` (0 off, 1 under SYN-queue overflow, 2 always).
    pub syncookies: u64,
    /// `net.ipv4.tcp_timestamps` (0 off, 1 with per-connection offsets, 2 without).
    pub timestamps: u64,
    /// `net.ipv4.tcp_sack`.
    pub sack: u64,
    /// `net.ipv4.tcp_window_scaling`.
    pub window_scaling: u64,
    /// `net.ipv4.tcp_rmem`, its third (largest) value.
    pub tcp_rmem_max: u64,
    /// `net.core.rmem_max` (0 where the namespace cannot see it).
    pub rmem_max: u64,
}

/// The value the SYN-cookie path needs of `net.ipv4.tcp_syncookies`.
pub const SYNCOOKIES_ALWAYS: u64 = 2;

/// The largest window scale TCP allows (RFC 7323).
pub const MAX_WSCALE: u32 = 14;

impl TcpSysctls {
    /// Reads them from `/proc/sys` of the calling thread's network namespace.
    pub fn read() -> Result<TcpSysctls, SysctlError> {
        Self::read_from(Path::new(PROC_SYS))
    }

    /// Reads them from the `/proc/sys`-like tree at `root`.
    pub fn read_from(root: &Path) -> Result<TcpSysctls, SysctlError> {
        let one = |name: &str| -> Result<u64, SysctlError> {
            let v = values(&root.join(name))?;
            Ok(v[0])
        };
        let rmem_path = root.join("net/ipv4/tcp_rmem");
        let rmem = values(&rmem_path)?;
        let tcp_rmem_max = match rmem.as_slice() {
            [_, _, max] => *max,
            _ => {
                return Err(SysctlError::Parse {
                    text: rmem
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(" "),
                    path: rmem_path,
                });
            }
        };
        Ok(TcpSysctls {
            syncookies: one("net/ipv4/tcp_syncookies")?,
            timestamps: one("net/ipv4/tcp_timestamps")?,
            sack: one("net/ipv4/tcp_sack")?,
            window_scaling: one("net/ipv4/tcp_window_scaling")?,
            tcp_rmem_max,
            // Per namespace only in newer kernels; elsewhere the namespace
            // cannot see it, and tcp_rmem alone sizes the window scale (the
            // kernel then uses the scale the SYN-ACK announced anyway).
            rmem_max: match one("net/core/rmem_max") {
                Err(SysctlError::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    0
                }
                other => other?,
            },
        })
    }

    /// Why the kernel would not accept the datapath's cookies, with the fix;
    /// `None` when it would (`net.ipv4.tcp_syncookies = 2`: with 1 the
    /// kernel checks cookie ACKs only while its own SYN queue overflows, and
    /// answers the others with a reset; with 0 never).
    pub fn syncookie_refusal(&self) -> Option<String> {
        (self.syncookies != SYNCOOKIES_ALWAYS).then(|| {
            format!(
                "net.ipv4.tcp_syncookies is {} in the daemon's network namespace, and SYN cookies sent in XDP need 2 (with {} the kernel {}): run `sysctl -w net.ipv4.tcp_syncookies=2` (and set it in /etc/sysctl.d to keep it across reboots)",
                self.syncookies,
                self.syncookies,
                if self.syncookies == 0 {
                    "never accepts a cookie ACK"
                } else {
                    "accepts cookie ACKs only while its own SYN queue overflows, and resets the other connections"
                }
            )
        })
    }

    /// The `SYNCOOKIE_*` option bits these settings allow (without
    /// `SYNCOOKIE_ENABLED`, which the caller decides): timestamps only with
    /// `tcp_timestamps = 2` (with 1 the kernel subtracts a per-connection
    /// offset from the echoed value, which a cookie sent in XDP cannot know),
    /// SACK and window scaling as the kernel offers them.
    pub fn syncookie_options(&self) -> u32 {
        let mut flags = 0;
        if self.timestamps == 2 {
            flags |= SYNCOOKIE_TIMESTAMPS;
        }
        if self.sack != 0 {
            flags |= SYNCOOKIE_SACK;
        }
        if self.window_scaling != 0 {
            flags |= SYNCOOKIE_WSCALE;
        }
        flags
    }

    /// The window scale the kernel's listeners announce (what
    /// `tcp_select_initial_window` computes from the largest receive
    /// buffer): `ilog2(max(tcp_rmem[2], rmem_max)) - 15`, within 0..=14.
    pub fn wscale(&self) -> u32 {
        let space = self.tcp_rmem_max.max(self.rmem_max).max(1);
        space.ilog2().saturating_sub(15).min(MAX_WSCALE)
    }

    /// The warning for timestamps other than 2: connections through cookies
    /// then lose window scaling and SACK (a cookie carries them only in the
    /// timestamp option). `None` with `tcp_timestamps = 2`.
    pub fn timestamps_warning(&self) -> Option<String> {
        (self.timestamps != 2).then(|| {
            format!(
                "net.ipv4.tcp_timestamps is {}: SYN-ACKs with cookies carry no timestamps, so connections made through a cookie lose window scaling and SACK; `sysctl -w net.ipv4.tcp_timestamps=2` (timestamps without per-connection offsets) keeps them",
                self.timestamps
            )
        })
    }
}

/// The whitespace-separated numbers of sysctl file `path`.
fn values(path: &Path) -> Result<Vec<u64>, SysctlError> {
    let text = fs::read_to_string(path).map_err(|source| SysctlError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let parsed: Result<Vec<u64>, _> = text.split_whitespace().map(str::parse).collect();
    match parsed {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(SysctlError::Parse {
            path: path.to_path_buf(),
            text: text.trim().to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysctls(syncookies: u64, timestamps: u64, sack: u64, wscale: u64) -> TcpSysctls {
        TcpSysctls {
            syncookies,
            timestamps,
            sack,
            window_scaling: wscale,
            tcp_rmem_max: 6_291_456,
            rmem_max: 212_992,
        }
    }

    #[test]
    fn only_syncookies_2_accepts_cookies_and_the_refusal_names_the_fix() {
        for (value, refused) in [(0, true), (1, true), (2, false), (3, true)] {
            let r = sysctls(value, 2, 1, 1).syncookie_refusal();
            assert_eq!(r.is_some(), refused, "tcp_syncookies = {value}");
            if let Some(r) = r {
                assert!(
                    r.contains(&format!("net.ipv4.tcp_syncookies is {value}")),
                    "{r}"
                );
                assert!(r.contains("sysctl -w net.ipv4.tcp_syncookies=2"), "{r}");
            }
        }
    }

    #[test]
    fn options_follow_timestamps_2_sack_and_window_scaling() {
        let table = [
            // (timestamps, sack, window_scaling) -> flags, warned
            (
                (2, 1, 1),
                SYNCOOKIE_TIMESTAMPS | SYNCOOKIE_SACK | SYNCOOKIE_WSCALE,
                false,
            ),
            ((1, 1, 1), SYNCOOKIE_SACK | SYNCOOKIE_WSCALE, true),
            ((0, 1, 1), SYNCOOKIE_SACK | SYNCOOKIE_WSCALE, true),
            ((2, 0, 1), SYNCOOKIE_TIMESTAMPS | SYNCOOKIE_WSCALE, false),
            ((2, 1, 0), SYNCOOKIE_TIMESTAMPS | SYNCOOKIE_SACK, false),
            ((0, 0, 0), 0, true),
        ];
        for ((ts, sack, ws), flags, warned) in table {
            let s = sysctls(2, ts, sack, ws);
            assert_eq!(s.syncookie_options(), flags, "ts {ts} sack {sack} ws {ws}");
            let w = s.timestamps_warning();
            assert_eq!(w.is_some(), warned, "ts {ts}");
            if let Some(w) = w {
                assert!(w.contains("window scaling and SACK"), "{w}");
                assert!(w.contains("net.ipv4.tcp_timestamps=2"), "{w}");
            }
        }
    }

    #[test]
    fn wscale_is_what_the_kernel_computes_from_the_larger_receive_buffer() {
        let table = [
            // (tcp_rmem[2], rmem_max) -> wscale
            ((6_291_456, 212_992), 7), // Linux defaults: 6 MiB -> 7
            ((131_072, 212_992), 2),   // rmem_max larger: 208 KiB -> 2
            ((65_535, 4096), 0),       // fits 16 bits: no scaling
            ((65_536, 0), 1),
            ((1 << 31, 0), 14), // clamped to RFC 7323's 14
            ((u64::MAX, u64::MAX), 14),
            ((0, 0), 0),
        ];
        for ((rmem, core), want) in table {
            let s = TcpSysctls {
                tcp_rmem_max: rmem,
                rmem_max: core,
                ..sysctls(2, 2, 1, 1)
            };
            assert_eq!(s.wscale(), want, "tcp_rmem[2] {rmem}, rmem_max {core}");
            // The kernel's loop: shift until the space fits 16 bits.
            let mut space = rmem.max(core);
            let mut k = 0;
            while space > 65_535 && k < MAX_WSCALE {
                space >>= 1;
                k += 1;
            }
            assert_eq!(s.wscale(), k, "as tcp_select_initial_window");
        }
    }

    #[test]
    fn sysctls_are_read_from_a_proc_sys_tree_and_garbage_is_refused() {
        let dir = std::env::temp_dir().join(format!("xg-sysctl-{}", std::process::id()));
        let w = |name: &str, text: &str| {
            let p = dir.join(name);
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(p, text).expect("write");
        };
        w("net/ipv4/tcp_syncookies", "1\n");
        w("net/ipv4/tcp_timestamps", "2\n");
        w("net/ipv4/tcp_sack", "1\n");
        w("net/ipv4/tcp_window_scaling", "0\n");
        w("net/ipv4/tcp_rmem", "4096\t131072\t6291456\n");
        w("net/core/rmem_max", "212992\n");
        let s = TcpSysctls::read_from(&dir);
        w("net/ipv4/tcp_rmem", "4096 131072\n");
        let short = TcpSysctls::read_from(&dir);
        w("net/ipv4/tcp_rmem", "4096 131072 6291456\n");
        w("net/ipv4/tcp_sack", "yes\n");
        let garbage = TcpSysctls::read_from(&dir);
        w("net/ipv4/tcp_sack", "0\n");
        fs::remove_file(dir.join("net/core/rmem_max")).expect("remove rmem_max");
        let no_core = TcpSysctls::read_from(&dir);
        fs::remove_dir_all(&dir).expect("clean up");
        assert_eq!(
            s.expect("read"),
            TcpSysctls {
                syncookies: 1,
                timestamps: 2,
                sack: 1,
                window_scaling: 0,
                tcp_rmem_max: 6_291_456,
                rmem_max: 212_992,
            }
        );
        let short = short.expect_err("two values of tcp_rmem").to_string();
        assert!(
            short.contains("tcp_rmem") && short.contains("4096 131072"),
            "{short}"
        );
        let no_core = no_core.expect("a namespace without net.core.rmem_max reads");
        assert_eq!((no_core.rmem_max, no_core.sack), (0, 0));
        let garbage = garbage.expect_err("not a number").to_string();
        assert!(
            garbage.contains("tcp_sack") && garbage.contains("yes"),
            "{garbage}"
        );
    }
}

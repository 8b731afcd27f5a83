//! The open-file limit: raised from its soft to its hard value at start, so
//! that the daemon's ceiling is what the administrator (or systemd's
//! `LimitNOFILE`) set, not the shell's default of 1,024.

/// Raises `RLIMIT_NOFILE`'s soft limit to the hard one and returns the soft
/// limit in force afterwards (logged; a failure to raise it is logged and the
/// old one kept).
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        log::warn!(
            "cannot read the open-file limit: {}",
            std::io::Error::last_os_error()
        );
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; raising the soft limit up to
        // the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            log::info!(
                "open-file limit raised from {} to {}",
                lim.rlim_cur,
                lim.rlim_max
            );
            return lim.rlim_max;
        }
        log::warn!(
            "cannot raise the open-file limit from {} to {}: {}",
            lim.rlim_cur,
            lim.rlim_max,
            std::io::Error::last_os_error()
        );
    }
    lim.rlim_cur
}

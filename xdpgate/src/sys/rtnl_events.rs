//! rtnetlink change notifications: a socket of the current network namespace
//! subscribed to the multicast groups of everything a FIB lookup depends on
//! (routes and policy rules of both families, neighbours, links, addresses,
//! the per-device forwarding settings), read without parsing: any message is
//! a change. The load balancer moves its routing generation on them
//! (`lb::route_watch`).
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use tokio::io::unix::AsyncFd;

use super::netlink::NetlinkError;

/// The legacy group bits of `sockaddr_nl.nl_groups`: links, neighbours, the
/// addresses, routes and (IPv4) rules.
const GROUP_BITS: libc::c_int = libc::RTMGRP_LINK
    | libc::RTMGRP_NEIGH
    | libc::RTMGRP_IPV4_IFADDR
    | libc::RTMGRP_IPV4_ROUTE
    | libc::RTMGRP_IPV4_RULE
    | libc::RTMGRP_IPV6_IFADDR
    | libc::RTMGRP_IPV6_ROUTE;

/// Groups past the legacy bits, joined with `NETLINK_ADD_MEMBERSHIP`: IPv6
/// rules and the forwarding settings of both families.
const MORE_GROUPS: [libc::c_uint; 3] = [
    libc::RTNLGRP_IPV6_RULE,
    libc::RTNLGRP_IPV4_NETCONF,
    libc::RTNLGRP_IPV6_NETCONF,
];

/// Bytes read per `recv`: a few notifications each; what is left is read by
/// the next call.
const RECV_BYTES: usize = 16 * 1024;

/// A subscribed rtnetlink socket (non-blocking, registered with the runtime).
pub struct RouteEvents {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<u8>,
}

/// What [`RouteEvents::changed`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Changes {
    /// Datagrams read (notifications; several may share one).
    pub datagrams: usize,
    /// Whether the kernel dropped notifications because the socket's buffer
    /// was full (`ENOBUFS`): changes happened that were not read.
    pub overrun: bool,
}

impl RouteEvents {
    /// Opens the socket in the current network namespace and joins the groups.
    /// Needs a Tokio runtime with I/O enabled.
    pub fn open() -> Result<Self, NetlinkError> {
        let io_err = |call| move |source| NetlinkError::Io { call, source };
        // SAFETY: plain socket(2) call; the fd is owned right below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io_err("socket")(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh, valid descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: a zeroed sockaddr_nl with family and groups set, of its size.
        let rc = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            addr.nl_groups = GROUP_BITS as u32;
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast::<libc::sockaddr>(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io_err("bind")(io::Error::last_os_error()));
        }
        for group in MORE_GROUPS {
            // SAFETY: setsockopt with a valid unsigned int option value.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_NETLINK,
                    libc::NETLINK_ADD_MEMBERSHIP,
                    (&raw const group).cast(),
                    size_of::<libc::c_uint>() as u32,
                )
            };
            if rc < 0 {
                return Err(io_err("setsockopt NETLINK_ADD_MEMBERSHIP")(
                    io::Error::last_os_error(),
                ));
            }
        }
        // SAFETY: the OwnedFd is the descriptor itself: open and the same
        // until the AsyncFd, which owns it, is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| io_err("registering the socket")(io::Error::from(e)))?;
        Ok(RouteEvents {
            fd,
            buf: vec![0; RECV_BYTES],
        })
    }

    /// Waits until at least one notification arrived (or the kernel reports
    /// that some were lost), then reads every one that is queued.
    pub async fn changed(&mut self) -> Result<Changes, NetlinkError> {
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|source| NetlinkError::Io {
                    call: "poll",
                    source,
                })?;
            let seen = drain(guard.get_inner().as_raw_fd(), &mut self.buf)?;
            guard.clear_ready();
            if seen.datagrams > 0 || seen.overrun {
                return Ok(seen);
            }
        }
    }
}

/// Reads datagrams from the non-blocking socket `fd` until none is left.
fn drain(fd: i32, buf: &mut [u8]) -> Result<Changes, NetlinkError> {
    let mut seen = Changes {
        datagrams: 0,
        overrun: false,
    };
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let rc = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if rc >= 0 {
            seen.datagrams += 1;
            continue;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(seen),
            Some(libc::EINTR) => {}
            Some(libc::ENOBUFS) => seen.overrun = true,
            _ => {
                return Err(NetlinkError::Io {
                    call: "recv",
                    source: err,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The socket sees a change made in its own namespace: lo brought up in
    /// a fresh network namespace of the test's own thread (root), so nothing
    /// of the host's is touched.
    #[test]
    fn a_link_brought_up_in_the_namespace_is_reported() {
        let t = std::thread::spawn(|| {
            // SAFETY: unshare(2) of this thread's network namespace only.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET) needs root: {}",
                io::Error::last_os_error()
            );
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut ev = RouteEvents::open().expect("subscribe");
                let status = std::process::Command::new("ip")
                    .args(["link", "set", "lo", "up"])
                    .status()
                    .expect("ip");
                assert!(status.success());
                let seen = tokio::time::timeout(std::time::Duration::from_secs(5), ev.changed())
                    .await
                    .expect("a notification within 5 s")
                    .expect("read");
                assert!(seen.datagrams > 0 || seen.overrun, "{seen:?}");
            });
        });
        t.join().expect("the test thread");
    }
}

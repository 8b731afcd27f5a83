//! TCP listeners with explicit socket options, for the metrics endpoint.
//!
//! Every option that changes what a bind means is set deliberately before
//! `bind(2)`, never left to system defaults: `SO_REUSEADDR` (a restarted daemon
//! rebinds at once although connections of its predecessor linger in
//! TIME_WAIT), `IPV6_V6ONLY` on IPv6 sockets (so `[::]` does not silently also
//! take IPv4 and `0.0.0.0` can be bound next to it, whatever
//! `net.ipv6.bindv6only` says), and optionally `IP_FREEBIND`/`IPV6_FREEBIND`
//! (so an address that is not configured yet, such as a VIP that arrives
//! later, can be bound). The listener comes back non-blocking, ready for
//! `tokio::net::TcpListener::from_std`.
use std::{io, net::SocketAddr};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use thiserror::Error;

/// How to open a listener. [`ListenOptions::default`] is what the daemon uses
/// unless configured otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenOptions {
    /// On IPv6 addresses: accept IPv6 only (`IPV6_V6ONLY=1`). With `true`
    /// (the default) `[::]:P` and `0.0.0.0:P` are separate listeners that can
    /// both be bound; with `false`, `[::]:P` also takes IPv4 (as mapped
    /// addresses) and `0.0.0.0:P` can no longer be bound. Ignored for IPv4.
    pub v6only: bool,
    /// Bind even if the address is not (yet) configured on the host
    /// (`IP_FREEBIND` / `IPV6_FREEBIND`). Default `false`: binding an absent
    /// address fails with `EADDRNOTAVAIL`, which catches typos.
    pub freebind: bool,
    /// `listen(2)` backlog (the kernel caps it at `net.core.somaxconn`).
    /// Default 1024: under a flood of connections (slowloris) a queue of 128
    /// filled and the kernel dropped SYNs, so a scrape's connection waited
    /// for its 1 s retransmission.
    pub backlog: i32,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            v6only: true,
            freebind: false,
            backlog: 1024,
        }
    }
}

/// The step of opening a listener that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenStep {
    /// `socket(2)`.
    Socket,
    /// Setting `SO_REUSEADDR`.
    ReuseAddr,
    /// Setting `IPV6_V6ONLY`.
    V6Only,
    /// Setting `IP_FREEBIND` or `IPV6_FREEBIND`.
    Freebind,
    /// `bind(2)`.
    Bind,
    /// `listen(2)`.
    Listen,
    /// Switching the socket to non-blocking mode.
    NonBlocking,
}

impl ListenStep {
    /// What the step does, as the error message names it.
    pub const fn describe(self) -> &'static str {
        match self {
            ListenStep::Socket => "cannot create a socket",
            ListenStep::ReuseAddr => "cannot set SO_REUSEADDR",
            ListenStep::V6Only => "cannot set IPV6_V6ONLY",
            ListenStep::Freebind => "cannot set IP_FREEBIND",
            ListenStep::Bind => "cannot bind",
            ListenStep::Listen => "cannot listen",
            ListenStep::NonBlocking => "cannot make the socket non-blocking",
        }
    }
}

/// Why a listener could not be opened.
#[derive(Debug, Error)]
pub enum ListenError {
    /// One step failed; the message names the address and the step, and for
    /// `EADDRNOTAVAIL`/`EADDRINUSE` how to get past it.
    #[error("listener {addr}: {}: {source}{}", .step.describe(), hint(*.step, .source))]
    Step {
        /// The address being opened.
        addr: SocketAddr,
        /// The failing step.
        step: ListenStep,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl ListenError {
    /// The OS error behind the failure.
    pub fn io_error(&self) -> &io::Error {
        match self {
            ListenError::Step { source, .. } => source,
        }
    }

    /// The step that failed.
    pub fn step(&self) -> ListenStep {
        match self {
            ListenError::Step { step, .. } => *step,
        }
    }
}

fn hint(step: ListenStep, e: &io::Error) -> &'static str {
    match (step, e.raw_os_error()) {
        (ListenStep::Bind, Some(libc::EADDRNOTAVAIL)) => {
            " (the address is not configured on this host; enable freebind to bind it anyway)"
        }
        (ListenStep::Bind, Some(libc::EADDRINUSE)) => {
            " (another socket listens there; for [::] next to 0.0.0.0 keep v6only on)"
        }
        _ => "",
    }
}

/// Opens a TCP listener on `addr` with `opts`: `SO_REUSEADDR` always,
/// `IPV6_V6ONLY` set to `opts.v6only` on IPv6, `IP_FREEBIND`/`IPV6_FREEBIND`
/// when `opts.freebind`, close-on-exec, and non-blocking (hand it to
/// `tokio::net::TcpListener::from_std`). Port 0 picks a free port; read it
/// back with `local_addr`.
pub fn tcp_listener(
    addr: SocketAddr,
    opts: ListenOptions,
) -> Result<std::net::TcpListener, ListenError> {
    let at = |step| move |source| ListenError::Step { addr, step, source };
    // socket2 opens with SOCK_CLOEXEC on Linux.
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(at(ListenStep::Socket))?;
    socket
        .set_reuse_address(true)
        .map_err(at(ListenStep::ReuseAddr))?;
    match addr {
        SocketAddr::V4(_) => {
            if opts.freebind {
                socket
                    .set_freebind_v4(true)
                    .map_err(at(ListenStep::Freebind))?;
            }
        }
        SocketAddr::V6(_) => {
            socket
                .set_only_v6(opts.v6only)
                .map_err(at(ListenStep::V6Only))?;
            if opts.freebind {
                socket
                    .set_freebind_v6(true)
                    .map_err(at(ListenStep::Freebind))?;
            }
        }
    }
    socket
        .bind(&SockAddr::from(addr))
        .map_err(at(ListenStep::Bind))?;
    socket
        .listen(opts.backlog)
        .map_err(at(ListenStep::Listen))?;
    socket
        .set_nonblocking(true)
        .map_err(at(ListenStep::NonBlocking))?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use socket2::SockRef;

    use super::*;

    fn sa(ip: IpAddr, port: u16) -> SocketAddr {
        SocketAddr::new(ip, port)
    }

    #[test]
    fn binds_loopback_of_both_families_nonblocking_with_reuseaddr() {
        for ip in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            let l = tcp_listener(sa(ip, 0), ListenOptions::default()).unwrap();
            let local = l.local_addr().unwrap();
            assert_eq!(local.ip(), ip);
            assert_ne!(local.port(), 0);
            let s = SockRef::from(&l);
            assert!(s.reuse_address().unwrap());
            assert!(s.nonblocking().unwrap());
            // Non-blocking: accept without a pending connection returns at once.
            let e = l.accept().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
            // A real connection over loopback is accepted.
            let c = std::net::TcpStream::connect(local).unwrap();
            let mut accepted = None;
            for _ in 0..200 {
                match l.accept() {
                    Ok((conn, peer)) => {
                        accepted = Some((conn, peer));
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
            let (_, peer) = accepted.expect("connection accepted within 1 s");
            assert_eq!(peer, c.local_addr().unwrap());
        }
    }

    #[test]
    fn v6only_lets_any_of_both_families_share_a_port() {
        let v6 = tcp_listener(
            sa(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
            ListenOptions::default(),
        )
        .unwrap();
        assert!(SockRef::from(&v6).only_v6().unwrap());
        let port = v6.local_addr().unwrap().port();
        let v4 = tcp_listener(
            sa(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
            ListenOptions::default(),
        )
        .expect("0.0.0.0 binds next to [::] with v6only");
        assert_eq!(v4.local_addr().unwrap().port(), port);
    }

    #[test]
    fn dual_stack_any_takes_the_ipv4_port_too() {
        let opts = ListenOptions {
            v6only: false,
            ..ListenOptions::default()
        };
        let v6 = tcp_listener(sa(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0), opts).unwrap();
        assert!(!SockRef::from(&v6).only_v6().unwrap());
        let port = v6.local_addr().unwrap().port();
        let err = tcp_listener(
            sa(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
            ListenOptions::default(),
        )
        .unwrap_err();
        assert_eq!(err.step(), ListenStep::Bind);
        assert_eq!(err.io_error().raw_os_error(), Some(libc::EADDRINUSE));
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("listener 0.0.0.0:{port}: cannot bind: ")),
            "{msg}"
        );
        assert!(msg.contains("v6only"), "{msg}");
    }

    #[test]
    fn freebind_binds_an_address_the_host_does_not_have() {
        // 192.0.2.0/24 and 2001:db8::/32 are documentation ranges (RFC 5737,
        // RFC 3849): never configured here. Nothing is sent; the listeners
        // are closed at the end of the test.
        for ip in [
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 123)),
            IpAddr::V6("2001:db8::123".parse().unwrap()),
        ] {
            let err = tcp_listener(sa(ip, 0), ListenOptions::default()).unwrap_err();
            assert_eq!(err.step(), ListenStep::Bind, "{err}");
            assert_eq!(
                err.io_error().raw_os_error(),
                Some(libc::EADDRNOTAVAIL),
                "{err}"
            );
            let msg = err.to_string();
            assert!(msg.contains(&ip.to_string()), "{msg}");
            assert!(msg.contains("freebind"), "{msg}");

            let opts = ListenOptions {
                freebind: true,
                ..ListenOptions::default()
            };
            let l = tcp_listener(sa(ip, 0), opts).expect("freebind binds an absent address");
            assert_eq!(l.local_addr().unwrap().ip(), ip);
        }
    }
}

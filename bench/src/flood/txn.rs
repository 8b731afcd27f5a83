//! The legitimate load: request/response transactions over a new TCP
//! connection each (64-byte request, 64-byte response), from the client
//! namespace to a server in the gate's namespace.
//!
//! Server: [`SERVER_THREADS`] threads accept on one listener
//! ([`SERVER_V4`]:[`PORT`] and every other address of `s`), read 64 bytes,
//! write 64, close. Client: [`CLIENT_THREADS`] threads, each a closed loop:
//! a socket bound to the next of the [`CLIENT_PREFIXES`] source addresses,
//! one per /24: about 22,000 transactions/s spread over 64 /24s stay under
//! xdpgate's default SYN-ACK budget of 500/s per /24, as a real server's
//! clients from many networks do (from 32 /24s they would not, and the
//! reflector limit, not the flood, would cap the rate). Then connect,
//! write 64, read 64, close with a
//! reset (`SO_LINGER` 0: no TIME_WAIT, no port exhaustion). Connect and I/O
//! time out after [`IO_TIMEOUT`]; a transaction that fails is counted and the
//! loop goes on. Every thread stops at the stop flag or at its deadline.
//!
//! Every thread of the load is pinned to [`LOAD_CPU`], the flood's generator
//! to the other CPU: on this 2-CPU rig the flood at its maximum takes a whole
//! core (generation and the gate's receive path run in the same context),
//! and without the pinning the legitimate loop would lose half its CPU to
//! any flood, however cheaply the gate dropped it. Pinned, the baseline and
//! every attacked configuration give the loop the same core, and what the
//! attack takes from it is what reaches the loop's path: the listener's
//! queues, the gate's treatment of legitimate packets, shared state.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, RawFd},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{CLIENT_PREFIXES, PORT, SERVER_V4, attack::enter, rig::client_addr};
use crate::bpf;

/// The CPU every thread of the legitimate load runs on (the flood's
/// generator, and with it the flood's receive path, is on
/// [`crate::live::CPU`]).
pub(super) const LOAD_CPU: usize = 0;
/// Client threads (closed loops).
pub(super) const CLIENT_THREADS: usize = 16;
/// Server threads on the listener.
const SERVER_THREADS: usize = 2;
/// Connect, read and write time-out of one transaction.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Request and response size, bytes.
const MSG: usize = 64;

/// Counters shared by the client threads.
#[derive(Default)]
pub(super) struct Counts {
    pub(super) ok: AtomicU64,
    pub(super) failed: AtomicU64,
}

/// The running server and client loops.
pub(super) struct Load {
    stop: Arc<AtomicBool>,
    pub(super) counts: Arc<Counts>,
    threads: Vec<JoinHandle<()>>,
}

fn set_timeout(fd: RawFd, opt: libc::c_int, d: Duration) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(d.subsec_micros() as i32),
    };
    setsockopt(fd, libc::SOL_SOCKET, opt, &tv)
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, opt: libc::c_int, v: &T) -> std::io::Result<()> {
    // SAFETY: `v` points at a live value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (v as *const T).cast::<libc::c_void>(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// One transaction from `src`.
fn transaction(src: Ipv4Addr) -> std::io::Result<()> {
    // SAFETY: plain socket(2); the descriptor is owned by `stream` below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nothing else owns; the stream closes it.
    let mut stream = unsafe { TcpStream::from_raw_fd(fd) };
    set_timeout(fd, libc::SO_SNDTIMEO, IO_TIMEOUT)?;
    set_timeout(fd, libc::SO_RCVTIMEO, IO_TIMEOUT)?;
    setsockopt(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, &1i32)?;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger)?;
    let local = sockaddr(SocketAddrV4::new(src, 0));
    let peer = sockaddr(SocketAddrV4::new(SERVER_V4, PORT));
    let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: valid sockaddr_in values of the length passed.
    if unsafe { libc::bind(fd, (&raw const local).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above; a blocking connect bounded by SO_SNDTIMEO.
    if unsafe { libc::connect(fd, (&raw const peer).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    stream.write_all(&[b'q'; MSG])?;
    let mut buf = [0u8; MSG];
    stream.read_exact(&mut buf)?;
    Ok(())
}

fn serve(listener: &TcpListener, stop: &AtomicBool, deadline: Instant) {
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        // The listener's SO_RCVTIMEO bounds each accept.
        let Ok((mut conn, _)) = listener.accept() else {
            continue;
        };
        let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
        let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
        let mut buf = [0u8; MSG];
        if conn.read_exact(&mut buf).is_ok() {
            let _ = conn.write_all(&[b'r'; MSG]);
        }
    }
}

impl Load {
    /// Starts the server in `s` and the clients in `c`; both stop at
    /// `max` at the latest.
    pub(super) fn start(s: PathBuf, c: &Path, max: Duration) -> anyhow::Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let deadline = Instant::now() + max;
        let listener = std::thread::spawn(move || -> anyhow::Result<TcpListener> {
            enter(&s)?;
            let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT))
                .with_context(|| format!("listening on port {PORT}"))?;
            set_timeout(l.as_raw_fd(), libc::SO_RCVTIMEO, Duration::from_millis(200))?;
            Ok(l)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the listener thread panicked"))??;
        let listener = Arc::new(listener);
        let mut threads = Vec::new();
        for _ in 0..SERVER_THREADS {
            let (l, st) = (listener.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let _ = bpf::pin_to_cpu(LOAD_CPU);
                serve(&l, &st, deadline);
            }));
        }
        for t in 0..CLIENT_THREADS {
            let (st, n, c) = (stop.clone(), counts.clone(), c.to_path_buf());
            threads.push(std::thread::spawn(move || {
                if enter(&c).is_err() || bpf::pin_to_cpu(LOAD_CPU).is_err() {
                    n.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let mut i = t;
                while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let ok = transaction(client_addr(i)).is_ok();
                    let c = if ok { &n.ok } else { &n.failed };
                    c.fetch_add(1, Ordering::Relaxed);
                    i = (i + CLIENT_THREADS) % CLIENT_PREFIXES;
                }
            }));
        }
        Ok(Load {
            stop,
            counts,
            threads,
        })
    }

    /// (completed, failed) so far.
    pub(super) fn snapshot(&self) -> (u64, u64) {
        (
            self.counts.ok.load(Ordering::Relaxed),
            self.counts.failed.load(Ordering::Relaxed),
        )
    }

    /// Stops every thread and waits for them.
    pub(super) fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

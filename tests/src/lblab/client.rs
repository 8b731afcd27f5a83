//! The client's streams: connections from chosen source ports, pseudo-random
//! payloads, and running many flows and collecting each one's greeting.
use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use super::{IO_TIMEOUT, PORT, Topo};

/// A `sockaddr_in`/`sockaddr_in6` for `a`.
fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and aligned for it.
            unsafe { std::ptr::write((&raw mut ss).cast::<libc::sockaddr_in>(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut ss).cast::<libc::sockaddr_in6>(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// A TCP connection from exactly `src` (bound before connecting, with
/// SO_REUSEADDR) to `dst`, in the calling thread's namespace; the connect is
/// bounded by `timeout` (SO_SNDTIMEO).
pub fn connect_from(src: SocketAddr, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let domain = if src.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    let (s, slen) = sockaddr(src);
    let (d, dlen) = sockaddr(dst);
    // SAFETY: valid descriptor, option values and addresses of the sizes given.
    unsafe {
        if libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast::<libc::c_void>(),
            size_of_val(&one) as libc::socklen_t,
        ) != 0
            || libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&raw const tv).cast::<libc::c_void>(),
                size_of_val(&tv) as libc::socklen_t,
            ) != 0
            || libc::bind(
                fd.as_raw_fd(),
                (&raw const s).cast::<libc::sockaddr>(),
                slen,
            ) != 0
            || libc::connect(
                fd.as_raw_fd(),
                (&raw const d).cast::<libc::sockaddr>(),
                dlen,
            ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// Pseudo-random bytes (xorshift64*), the same for the same seed.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// One client stream: source port and payload size.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    /// The VIP it connects to (port [`PORT`]).
    pub vip: IpAddr,
    /// Its source port (the client's address of the VIP's family).
    pub sport: u16,
    /// Bytes it sends and expects back.
    pub len: usize,
}

impl Flow {
    /// The bytes it sends: pseudo-random, the same for the same port and
    /// length.
    pub fn data(&self) -> Vec<u8> {
        payload(self.len, (u64::from(self.sport) << 8) ^ self.len as u64)
    }

    /// Client segments this stream sends at least: SYN, the length and data
    /// in segments of at most 1360 bytes (MTU 1400), the ACK of the server's
    /// FIN.
    pub fn min_segments(&self) -> u64 {
        2 + (self.len as u64 + 8).div_ceil(1360)
    }
}

/// `n` flows to `vip` from source ports `base..`, sizes from 4 KiB to 256 KiB.
pub fn flows(vip: IpAddr, base: u16, n: u16) -> Vec<Flow> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(base);
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Flow {
                vip,
                sport: base + i,
                len: 4096 + (x % (252 * 1024)) as usize,
            }
        })
        .collect()
}

/// Writes `data` from a second thread while reading as many bytes back.
pub fn echo_through(s: &TcpStream, data: &[u8]) -> io::Result<Vec<u8>> {
    std::thread::scope(|scope| {
        let mut w = s.try_clone()?;
        let writer = scope.spawn(move || w.write_all(data));
        let mut got = vec![0u8; data.len()];
        let r = (&*s).read_exact(&mut got);
        let w = writer.join().expect("writer thread");
        r?;
        w?;
        Ok(got)
    })
}

/// Reads the server's greeting line (the backend's name) of at most 16 bytes.
pub fn read_greeting(s: &TcpStream) -> io::Result<String> {
    let mut name = Vec::new();
    let mut b = [0u8; 1];
    while name.len() < 16 {
        (&*s).read_exact(&mut b)?;
        if b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&name).into_owned());
        }
        name.push(b[0]);
    }
    Err(io::Error::other(format!("no greeting: {name:?}")))
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// Runs one stream in the calling thread's namespace: the greeting (the
/// backend's name) if every byte came back unchanged and the server closed.
fn stream(src: IpAddr, f: &Flow) -> Result<String, String> {
    let data = f.data();
    let what = format!("{src}:{} -> {}:{PORT} ({} bytes)", f.sport, f.vip, f.len);
    let s = connect_from(
        SocketAddr::new(src, f.sport),
        SocketAddr::new(f.vip, PORT),
        Duration::from_secs(3),
    )
    .map_err(|e| format!("{what}: connect: {e}"))?;
    (&s).write_all(&(f.len as u64).to_be_bytes())
        .map_err(|e| format!("{what}: length: {e}"))?;
    let name = read_greeting(&s).map_err(|e| format!("{what}: greeting: {e}"))?;
    let got = echo_through(&s, &data).map_err(|e| format!("{what} on {name}: echo: {e}"))?;
    if got != data {
        return Err(format!(
            "{what} on {name}: echo differs from byte {}",
            first_difference(&got, &data)
        ));
    }
    let mut rest = Vec::new();
    (&s).read_to_end(&mut rest)
        .map_err(|e| format!("{what} on {name}: close: {e}"))?;
    if !rest.is_empty() {
        return Err(format!(
            "{what} on {name}: {} bytes after the echo",
            rest.len()
        ));
    }
    Ok(name)
}

/// Runs `flows` from the client, `parallel` at a time; each flow's greeting
/// or error, in order.
pub fn run_flows(topo: &Topo, flows: &[Flow], parallel: usize) -> Vec<Result<String, String>> {
    topo.client.ns.run(|| {
        let mut out = Vec::new();
        for chunk in flows.chunks(parallel) {
            // Threads spawned here inherit this thread's namespace.
            std::thread::scope(|scope| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|f| {
                        let src = topo.client_addr(f.vip);
                        scope.spawn(move || stream(src, f))
                    })
                    .collect();
                for h in handles {
                    out.push(h.join().expect("stream thread"));
                }
            });
        }
        out
    })
}

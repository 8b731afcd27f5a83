//! The backends' echo servers: one per backend and family, greeting with the
//! backend's name, echoing a length-prefixed stream, closing first.
use std::{
    collections::BTreeMap,
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{Node, PORT, SERVER_LIFETIME, Topo};

/// Largest stream an echo server accepts.
const MAX_STREAM: u64 = 1 << 20;

/// One backend's echo server for one family on port 80 (wildcard address, so
/// it serves the VIP and the health checks to the backend's own address).
/// Stopped (listener closed) on drop; connections in progress end by their
/// read timeouts.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Starts `node`'s server for one family (`v4`: IPv4, else IPv6, v6-only)
    /// for at most [`SERVER_LIFETIME`].
    pub fn start(node: &Node, v4: bool) -> EchoServer {
        Self::start_for(node, v4, SERVER_LIFETIME)
    }

    /// Like [`EchoServer::start`], with the accept loop ending after
    /// `lifetime` at the latest.
    pub fn start_for(node: &Node, v4: bool, lifetime: Duration) -> EchoServer {
        let any: IpAddr = if v4 {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        let listener = node.ns.run(|| {
            TcpListener::bind(SocketAddr::new(any, PORT))
                .unwrap_or_else(|e| panic!("{}: bind {any}:{PORT}: {e}", node.name))
        });
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let greeting = format!("{}\n", node.name);
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + lifetime;
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let g = greeting.clone();
                        std::thread::spawn(move || {
                            let _ = serve(conn, g.as_bytes());
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        EchoServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection: 8-byte length, greeting, echo of that many bytes, close.
fn serve(mut c: TcpStream, greeting: &[u8]) -> io::Result<()> {
    c.set_nonblocking(false)?;
    c.set_read_timeout(Some(Duration::from_secs(15)))?;
    c.set_write_timeout(Some(Duration::from_secs(15)))?;
    let mut len = [0u8; 8];
    c.read_exact(&mut len)?;
    let mut left = u64::from_be_bytes(len).min(MAX_STREAM);
    c.write_all(greeting)?;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let want = (left as usize).min(buf.len());
        let n = c.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        c.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Echo servers of both families on every backend, keyed by backend name and
/// family (`true`: IPv4), for at most [`SERVER_LIFETIME`].
pub fn echo_all(topo: &Topo) -> BTreeMap<(String, bool), EchoServer> {
    echo_all_for(topo, SERVER_LIFETIME)
}

/// Like [`echo_all`], the accept loops ending after `lifetime` at the latest.
pub fn echo_all_for(topo: &Topo, lifetime: Duration) -> BTreeMap<(String, bool), EchoServer> {
    let mut m = BTreeMap::new();
    for b in &topo.backends {
        for v4 in [true, false] {
            m.insert((b.name.clone(), v4), EchoServer::start_for(b, v4, lifetime));
        }
    }
    m
}

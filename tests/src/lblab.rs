//! The load balancer's three-role lab: a client, the load balancer (LB) and
//! two or three backends on one L2 segment, with echo servers on the
//! backends, the daemons of every role and TCP streams from the client.
//! Used by the `lb_lab` tests and by `cargo xtask demo --lb`.
//!
//! # Topology
//!
//! ```text
//!                       switch namespace: bridge br0
//!        sw-c            sw-lb (XDP_PASS)    sw-be1    sw-be2   (sw-be3)
//!         |                 |                   |         |         |
//!   client eth0        LB eth0             be1 eth0   be2 eth0  be3 eth0
//!   .1 / ::1           .2 / ::2            .11/::11   .12/::12  .13/::13
//!   MTU 1400           xdpgate run         xdpgate run --decap (native)
//!                      (native)            VIPs on lo, echo servers
//! ```
//!
//! One segment, 10.200.60.0/24 and fd00:200:60::/64 (IPv6 added `nodad`, DAD
//! off), neighbours resolved by ARP/NDP through the bridge. The client routes
//! the VIPs 192.0.2.10/32 and 2001:db8::10/128 via the LB's addresses; its MTU
//! is 1400 so that encapsulated packets (at most 40 bytes more) fit the 1500
//! of every other link. The LB has forwarding on (its kernel forwards the
//! encapsulated packets of the slow path until a backend's neighbour entry
//! exists). Backends hold the VIPs on `lo` (`arp_ignore=1`, `arp_announce=2`,
//! as DSR backends do) and answer the client directly. Every namespace,
//! link and program of the lab is gone when its [`Topo`] is dropped.
//!
//! # XDP modes
//!
//! Everything runs in native (driver) mode. The LB answers with XDP_TX on its
//! veth, which only works when the *peer* (`sw-lb`, the switch-side end) runs
//! NAPI: the lab attaches a two-instruction XDP_PASS program to `sw-lb` in
//! native mode (`bpf::load_constant_xdp` + `bpf::attach_native`).
//!
//! # Streams
//!
//! Each echo server (one per backend and family, threads with bounded
//! lifetimes inside the backend's namespace) reads an 8-byte length, sends
//! `beN\n`, echoes exactly that many bytes and closes first, so the client
//! never holds a TIME_WAIT and can reuse its source ports. A [`Flow`] is one
//! such stream from a chosen source port; [`run_flows`] runs them from the
//! client and returns each one's greeting, the name of the backend that
//! served it.
//!
//! # Lab details that matter
//!
//! - The client's transmit checksum offload is off (see [`tx_checksum_off`]):
//!   otherwise its veth hands the LB `CHECKSUM_PARTIAL` packets, XDP_TX sends
//!   their incomplete checksums on, and the backends drop every segment
//!   (`TcpInCsumErrors`). A real NIC checksums on the wire.
//! - L2 DSR needs the backends' neighbour entries (it drops as
//!   `lb_no_neighbor` without them); the daemon keeps them resolved as
//!   managed entries.
//!
//! Helpers panic on failure, as test helpers do; everything built so far is
//! removed while the panic unwinds.
use std::{
    collections::BTreeMap,
    ffi::OsStr,
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    bpf,
    lab::Netns,
    xdpgate::{Daemon, StateDirs},
};

/// The interface of every role namespace (names are per namespace).
pub const IF: &str = "eth0";
/// The IPv4 VIP (on the backends' `lo`, routed via the LB by the client).
pub const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The IPv6 VIP.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
/// The services' port, where the echo servers listen.
pub const PORT: u16 = 80;
/// The IPv4 VIP's TCP service, as `lb add` and `lb list` name it.
pub const SVC4: &str = "192.0.2.10:80/tcp";
/// The IPv6 VIP's TCP service.
pub const SVC6: &str = "[2001:db8::10]:80/tcp";
/// Client-side bound of one stream's connect, reads and writes.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of an echo server's accept loop ([`EchoServer::start`]).
pub const SERVER_LIFETIME: Duration = Duration::from_secs(150);

/// [`VIP4`] as an [`IpAddr`].
pub fn vip4() -> IpAddr {
    VIP4.into()
}

/// [`VIP6`] as an [`IpAddr`].
pub fn vip6() -> IpAddr {
    VIP6.into()
}

// ---------------------------------------------------------------------------
// Topology
// ---------------------------------------------------------------------------

/// One role's namespace and its addresses on `eth0`.
pub struct Node {
    /// The role: `client`, `lb`, `be1`, `be2` or `be3` (the backends' echo
    /// servers greet with it).
    pub name: String,
    /// The role's namespace.
    pub ns: Netns,
    /// Its IPv4 address on `eth0`.
    pub v4: Ipv4Addr,
    /// Its IPv6 address on `eth0`.
    pub v6: Ipv6Addr,
}

impl Node {
    /// Its address of one family (`v4`: IPv4, else IPv6).
    pub fn addr(&self, v4: bool) -> IpAddr {
        if v4 { self.v4.into() } else { self.v6.into() }
    }
}

/// The lab. Field order is drop order: the XDP_PASS link on `sw-lb` first,
/// then the namespaces (each deletes itself, and its veth ends with it).
pub struct Topo {
    _peer_xdp: OwnedFd,
    /// The client (10.200.60.1, fd00:200:60::1).
    pub client: Node,
    /// The load balancer (10.200.60.2, fd00:200:60::2).
    pub lb: Node,
    /// The backends `be1`, `be2`, ... (10.200.60.11, fd00:200:60::11, ...).
    pub backends: Vec<Node>,
    _sw: Netns,
}

fn ip(ns: &Netns, args: &[&str]) {
    ns.exec("ip", args)
        .unwrap_or_else(|e| panic!("ip {args:?} in {}: {e}", ns.name()));
}

fn sysctl(ns: &Netns, key: &str, value: &str) {
    ns.sysctl(key, value)
        .unwrap_or_else(|e| panic!("{key}={value} in {}: {e}", ns.name()));
}

/// Turns transmit checksum offload of `ifname` off (`ETHTOOL_STXCSUM`
/// through `SIOCETHTOOL`: there is no ethtool binary) in the calling thread's
/// namespace and checks that it is off.
///
/// A veth hands its peer `CHECKSUM_PARTIAL` packets whose TCP checksum holds
/// only the pseudo-header sum. Native XDP on the peer sees those bytes, and
/// frames it sends with XDP_TX carry no checksum metadata, so they reach the
/// backend with a bad checksum (`TcpInCsumErrors`). A real NIC puts complete
/// checksums on the wire; the lab's client does so too with this.
pub fn tx_checksum_off(ifname: &str) -> io::Result<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    const ETHTOOL_GTXCSUM: u32 = 0x16;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let call = |cmd: u32, data: u32| -> io::Result<u32> {
        let mut v = EthtoolValue { cmd, data };
        // SAFETY: an all-zero ifreq is valid.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(ifname.bytes().take(15)) {
            *d = s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = (&mut v as *mut EthtoolValue).cast();
        // SAFETY: SIOCETHTOOL with an ifreq whose data points to a live
        // ethtool_value, as the ethtool ABI requires.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(v.data)
    };
    call(ETHTOOL_STXCSUM, 0)?;
    match call(ETHTOOL_GTXCSUM, 0)? {
        0 => Ok(()),
        on => Err(io::Error::other(format!("tx checksumming still {on}"))),
    }
}

/// Polls `done` every 20 ms until it holds or `limit` passes; returns the time
/// it took, panics with `what` otherwise.
fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if done() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A node's addresses: host `h` of 10.200.60.0/24 and fd00:200:60::/64.
fn addrs(h: u8) -> (Ipv4Addr, Ipv6Addr) {
    (
        Ipv4Addr::new(10, 200, 60, h),
        Ipv6Addr::new(0xfd00, 0x200, 0x60, 0, 0, 0, 0, u16::from(h)),
    )
}

impl Topo {
    /// Builds the switch, client, LB and `n_backends` backends (see the module
    /// documentation) and checks that the client reaches every node by ping.
    pub fn new(n_backends: usize) -> Topo {
        let sw = Netns::new("lbsw").expect("switch namespace");
        // The bridge and its ports carry no IPv6 of their own (no RS, MLD, DAD).
        sysctl(&sw, "net.ipv6.conf.default.disable_ipv6", "1");
        ip(
            &sw,
            &[
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
                "mcast_snooping",
                "0",
            ],
        );
        ip(&sw, &["link", "set", "dev", "br0", "up"]);

        let mut roles = vec![("client", 1u8, "lbcl"), ("lb", 2, "lblb")];
        let names = ["be1", "be2", "be3"];
        for (i, name) in names.iter().enumerate().take(n_backends) {
            roles.push((name, 11 + i as u8, name));
        }
        let mut nodes = Vec::new();
        for (name, host, tag) in roles {
            let ns = Netns::new(tag).expect("role namespace");
            for scope in ["all", "default"] {
                sysctl(&ns, &format!("net.ipv6.conf.{scope}.accept_ra"), "0");
                sysctl(
                    &ns,
                    &format!("net.ipv6.conf.{scope}.router_solicitations"),
                    "0",
                );
                sysctl(&ns, &format!("net.ipv6.conf.{scope}.accept_dad"), "0");
                sysctl(&ns, &format!("net.ipv4.conf.{scope}.rp_filter"), "0");
            }
            let port = format!("sw-{}", if name == "client" { "c" } else { name });
            // Created in the switch namespace with the peer placed straight into
            // the role's namespace: nothing ever exists in the host namespace.
            ip(
                &sw,
                &[
                    "link",
                    "add",
                    &port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    IF,
                    "netns",
                    ns.name(),
                ],
            );
            ip(&sw, &["link", "set", "dev", &port, "master", "br0", "up"]);
            for (key, value) in [
                ("accept_ra", "0"),
                ("router_solicitations", "0"),
                ("accept_dad", "0"),
                ("disable_ipv6", "0"),
            ] {
                sysctl(&ns, &format!("net/ipv6/conf/{IF}/{key}"), value);
            }
            sysctl(&ns, &format!("net/ipv4/conf/{IF}/rp_filter"), "0");
            let (v4, v6) = addrs(host);
            if name == "client" {
                ip(&ns, &["link", "set", "dev", IF, "mtu", "1400"]);
                ns.run(|| tx_checksum_off(IF))
                    .expect("client: tx checksum offload off");
            }
            ip(&ns, &["link", "set", "dev", IF, "up"]);
            ip(&ns, &["addr", "add", &format!("{v4}/24"), "dev", IF]);
            ip(
                &ns,
                &["-6", "addr", "add", &format!("{v6}/64"), "dev", IF, "nodad"],
            );
            nodes.push(Node {
                name: name.to_owned(),
                ns,
                v4,
                v6,
            });
        }
        let mut nodes = nodes.into_iter();
        let client = nodes.next().unwrap();
        let lb = nodes.next().unwrap();
        let backends: Vec<Node> = nodes.collect();

        // Client: the VIPs via the LB.
        ip(
            &client.ns,
            &[
                "route",
                "add",
                &format!("{VIP4}/32"),
                "via",
                &lb.v4.to_string(),
            ],
        );
        ip(
            &client.ns,
            &[
                "-6",
                "route",
                "add",
                &format!("{VIP6}/128"),
                "via",
                &lb.v6.to_string(),
            ],
        );
        // LB: forwards the slow path's encapsulated packets.
        sysctl(&lb.ns, "net.ipv4.conf.all.forwarding", "1");
        sysctl(&lb.ns, "net.ipv6.conf.all.forwarding", "1");
        // Backends: the VIPs on lo, DSR-style ARP, v6-only IPv6 listeners.
        for b in &backends {
            ip(&b.ns, &["addr", "add", &format!("{VIP4}/32"), "dev", "lo"]);
            ip(
                &b.ns,
                &["-6", "addr", "add", &format!("{VIP6}/128"), "dev", "lo"],
            );
            sysctl(&b.ns, "net.ipv4.conf.all.arp_ignore", "1");
            sysctl(&b.ns, "net.ipv4.conf.all.arp_announce", "2");
            sysctl(&b.ns, "net.ipv6.bindv6only", "1");
        }

        // XDP_TX on the LB's veth needs NAPI on its peer: XDP_PASS on sw-lb.
        let peer_xdp = sw.run(|| {
            let ifindex = unsafe { libc::if_nametoindex(c"sw-lb".as_ptr()) };
            assert_ne!(ifindex, 0, "sw-lb: {}", io::Error::last_os_error());
            let prog = bpf::load_constant_xdp(bpf::XDP_PASS, "lblab_pass").expect("load XDP_PASS");
            bpf::attach_native(&prog, ifindex).expect("attach XDP_PASS to sw-lb natively")
        });

        let topo = Topo {
            _peer_xdp: peer_xdp,
            client,
            lb,
            backends,
            _sw: sw,
        };
        for n in std::iter::once(&topo.lb).chain(&topo.backends) {
            for v4 in [true, false] {
                let a = n.addr(v4).to_string();
                wait_for(
                    &format!("ping from the client to {} ({a})", n.name),
                    Duration::from_secs(10),
                    || {
                        topo.client
                            .ns
                            .command("ping")
                            .args(["-c", "1", "-W", "1", "-q", &a])
                            .output()
                            .expect("run ping")
                            .status
                            .success()
                    },
                );
            }
        }
        topo
    }

    /// The backend named `name` (`be1`, ...).
    pub fn backend(&self, name: &str) -> &Node {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }

    /// The backend that owns `addr`.
    pub fn owner(&self, addr: IpAddr) -> &Node {
        self.backends
            .iter()
            .find(|b| b.addr(addr.is_ipv4()) == addr)
            .unwrap_or_else(|| panic!("{addr} is no backend's address"))
    }

    /// The client's address of `vip`'s family.
    pub fn client_addr(&self, vip: IpAddr) -> IpAddr {
        self.client.addr(vip.is_ipv4())
    }

    /// The LB's `eth0` receive counter (`ip -s -j link`: /sys shows the host).
    pub fn lb_rx_packets(&self) -> u64 {
        let out = self
            .lb
            .ns
            .exec("ip", &["-s", "-j", "link", "show", "dev", IF])
            .expect("ip -s link");
        let v: Value = serde_json::from_str(&out).expect("ip -j");
        v[0]["stats64"]["rx"]["packets"]
            .as_u64()
            .expect("rx packets")
    }
}

// ---------------------------------------------------------------------------
// Daemons and their JSON
// ---------------------------------------------------------------------------

/// Starts `xdpgate run` (native, no metrics listener) on the LB's `eth0`.
pub fn start_lb(topo: &Topo) -> Daemon {
    Daemon::start_with(&topo.lb.ns, &[IF], "native", &[OsStr::new("--no-metrics")])
        .expect("LB daemon (native)")
}

/// Starts `xdpgate run --decap` (native, no metrics listener) on a
/// backend's `eth0`.
pub fn start_backend(node: &Node) -> Daemon {
    Daemon::start_with(
        &node.ns,
        &[IF],
        "native",
        &[OsStr::new("--decap"), OsStr::new("--no-metrics")],
    )
    .unwrap_or_else(|e| panic!("{} daemon (native, --decap): {e}", node.name))
}

/// `xdpgate lb add SERVICE --backend ADDR weight=W ... EXTRA` on the LB.
pub fn lb_add(d: &Daemon, topo: &Topo, service: &str, backends: &[(IpAddr, u32)], extra: &[&str]) {
    let mut args: Vec<String> = vec!["lb".into(), "add".into(), service.into()];
    for (a, w) in backends {
        args.extend(["--backend".into(), a.to_string(), format!("weight={w}")]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    d.dirs.run_ok(&topo.lb.ns, &args);
}

/// `xdpgate lb list -o json` of the daemon with state directories `dirs` in
/// `ns`, parsed.
pub fn lb_list(dirs: &StateDirs, ns: &Netns) -> Value {
    serde_json::from_str(&dirs.run_ok(ns, &["lb", "list", "-o", "json"])).expect("lb list JSON")
}

/// The service `id` of an `lb list` document.
pub fn service<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["service"] == id)
        .unwrap_or_else(|| panic!("no service {id} in {list:#}"))
}

/// The backend `addr` of a service of `lb list`.
pub fn backend_of(svc: &Value, addr: IpAddr) -> Option<&Value> {
    svc["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["addr"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) == Some(addr))
}

/// The unsigned number `key` of a JSON object; panics if it is missing.
pub fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v:#}"))
}

// ---------------------------------------------------------------------------
// Echo servers
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Client streams
// ---------------------------------------------------------------------------

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
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
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
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
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
            &one as *const _ as *const libc::c_void,
            std::mem::size_of_val(&one) as libc::socklen_t,
        ) != 0
            || libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of_val(&tv) as libc::socklen_t,
            ) != 0
            || libc::bind(
                fd.as_raw_fd(),
                &s as *const _ as *const libc::sockaddr,
                slen,
            ) != 0
            || libc::connect(
                fd.as_raw_fd(),
                &d as *const _ as *const libc::sockaddr,
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

/// The LB's `stats`, `lb list` and neighbours, for failure messages.
pub fn diagnose(topo: &Topo, lb: &Daemon) -> String {
    let ns = &topo.lb.ns;
    let stats = lb.dirs.run(ns, &["stats"], Duration::from_secs(10));
    let list = lb.dirs.run(ns, &["lb", "list"], Duration::from_secs(10));
    let neigh = ns.exec("ip", &["neigh", "show"]).unwrap_or_default();
    let neigh6 = ns.exec("ip", &["-6", "neigh", "show"]).unwrap_or_default();
    format!(
        "LB stats:\n{}\nLB lb list:\n{}\nLB neighbours:\n{neigh}{neigh6}\nLB daemon log:\n{}",
        String::from_utf8_lossy(&stats.stdout),
        String::from_utf8_lossy(&list.stdout),
        lb.log()
    )
}

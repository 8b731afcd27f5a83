//! The load balancer end to end, in a three-role lab: a client, the load
//! balancer (LB) and two or three backends on one L2 segment, with real TCP
//! streams through real daemons.
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
//! as DSR backends do) and answer the client directly.
//!
//! # XDP modes
//!
//! Everything runs in native (driver) mode. The LB answers with XDP_TX on its
//! veth, which only works when the *peer* (`sw-lb`, the switch-side end) runs
//! NAPI: the lab attaches a two-instruction XDP_PASS program to `sw-lb` in
//! native mode (`bpf::load_constant_xdp` + `bpf::attach_native`). Whether the
//! frames really flow is what every test checks: each stream's bytes come
//! back intact from the backend the test predicted.
//!
//! # What the tests check
//!
//! The backend of every flow is predicted with `maglev::build` over the
//! service's backends (addresses and weights) and `lb::packet_hash` of the
//! flow, and compared with the name the backend's echo server greets with.
//! Each echo server (one per backend and family, threads with bounded
//! lifetimes inside the backend's namespace) reads an 8-byte length, sends
//! `beN\n`, echoes exactly that many bytes and closes first, so the client
//! never holds a TIME_WAIT and can reuse its source ports.
//!
//! # Lab details that matter
//!
//! - The client's transmit checksum offload is off (see [`tx_checksum_off`]):
//!   otherwise its veth hands the LB `CHECKSUM_PARTIAL` packets, XDP_TX sends
//!   their incomplete checksums on, and the backends drop every segment
//!   (`TcpInCsumErrors`). A real NIC checksums on the wire.
//! - L2 DSR needs the backends' neighbour entries (it drops as
//!   `lb_no_neighbor` without them); the daemon keeps them resolved as
//!   managed entries, which the L2 DSR test checks.
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
use xdpgate::{
    lb::{Proto, packet_hash},
    maglev::{self, Member},
};
use xdpgate_tests::{
    bpf,
    lab::{Netns, serial},
    xdpgate::{Daemon, StateDirs, sum},
};

/// The interface of every role namespace (names are per namespace).
const IF: &str = "eth0";
const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const PORT: u16 = 80;
const SVC4: &str = "192.0.2.10:80/tcp";
const SVC6: &str = "[2001:db8::10]:80/tcp";
/// The ring size the daemon builds (checked against `lb list`).
const RING: u32 = 65_537;
/// Client-side bound of one stream's connect, reads and writes.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of an echo server's accept loop.
const SERVER_LIFETIME: Duration = Duration::from_secs(150);

fn vip4() -> IpAddr {
    VIP4.into()
}

fn vip6() -> IpAddr {
    VIP6.into()
}

// ---------------------------------------------------------------------------
// Topology
// ---------------------------------------------------------------------------

/// One role's namespace and its addresses on `eth0`.
struct Node {
    name: String,
    ns: Netns,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
}

impl Node {
    fn addr(&self, v4: bool) -> IpAddr {
        if v4 { self.v4.into() } else { self.v6.into() }
    }
}

/// The lab. Field order is drop order: the XDP_PASS link on `sw-lb` first,
/// then the namespaces (each deletes itself, and its veth ends with it).
struct Topo {
    _peer_xdp: OwnedFd,
    client: Node,
    lb: Node,
    backends: Vec<Node>,
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
fn tx_checksum_off(ifname: &str) -> io::Result<()> {
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
    fn new(n_backends: usize) -> Topo {
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

    fn backend(&self, name: &str) -> &Node {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }

    /// The backend that owns `addr`.
    fn owner(&self, addr: IpAddr) -> &Node {
        self.backends
            .iter()
            .find(|b| b.addr(addr.is_ipv4()) == addr)
            .unwrap_or_else(|| panic!("{addr} is no backend's address"))
    }

    /// The client's address of `vip`'s family.
    fn client_addr(&self, vip: IpAddr) -> IpAddr {
        self.client.addr(vip.is_ipv4())
    }

    /// The LB's `eth0` receive counter (`ip -s -j link`: /sys shows the host).
    fn lb_rx_packets(&self) -> u64 {
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

fn start_lb(topo: &Topo) -> Daemon {
    Daemon::start_with(&topo.lb.ns, &[IF], "native", &[OsStr::new("--no-metrics")])
        .expect("LB daemon (native)")
}

fn start_backend(node: &Node) -> Daemon {
    Daemon::start_with(
        &node.ns,
        &[IF],
        "native",
        &[OsStr::new("--decap"), OsStr::new("--no-metrics")],
    )
    .unwrap_or_else(|e| panic!("{} daemon (native, --decap): {e}", node.name))
}

/// `xdpgate lb add SERVICE --backend ADDR weight=W ... EXTRA` on the LB.
fn lb_add(d: &Daemon, topo: &Topo, service: &str, backends: &[(IpAddr, u32)], extra: &[&str]) {
    let mut args: Vec<String> = vec!["lb".into(), "add".into(), service.into()];
    for (a, w) in backends {
        args.extend(["--backend".into(), a.to_string(), format!("weight={w}")]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    d.dirs.run_ok(&topo.lb.ns, &args);
}

fn lb_list(dirs: &StateDirs, ns: &Netns) -> Value {
    serde_json::from_str(&dirs.run_ok(ns, &["lb", "list", "-o", "json"])).expect("lb list JSON")
}

/// The service `id` of an `lb list` document.
fn service<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["service"] == id)
        .unwrap_or_else(|| panic!("no service {id} in {list:#}"))
}

/// The backend `addr` of a service of `lb list`.
fn backend_of(svc: &Value, addr: IpAddr) -> Option<&Value> {
    svc["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["addr"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) == Some(addr))
}

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v:#}"))
}

/// Decapsulated packets of a backend daemon (`lb list` "decap" rows) with
/// outer family `outer` and inner family `inner` ("ipv4"/"ipv6").
fn decap_packets(list: &Value, outer: &str, inner: &str) -> u64 {
    list["decap"]
        .as_array()
        .expect("decap rows")
        .iter()
        .filter(|r| r["interface"] == IF && r["outer"] == outer && r["inner"] == inner)
        .map(|r| num(r, "packets"))
        .sum()
}

fn fam(a: IpAddr) -> &'static str {
    if a.is_ipv4() { "ipv4" } else { "ipv6" }
}

// ---------------------------------------------------------------------------
// Maglev prediction
// ---------------------------------------------------------------------------

/// A service's ring as the test predicts it.
struct Ring {
    ring: Vec<u32>,
    /// Member `i` has slot `i + 1`.
    addrs: Vec<IpAddr>,
}

impl Ring {
    /// The ring of the backends of weight above 0 (slots are labels only:
    /// the ring depends on addresses and weights).
    fn new(backends: &[(IpAddr, u32)]) -> Ring {
        let members: Vec<Member> = backends
            .iter()
            .enumerate()
            .map(|(i, (addr, weight))| Member {
                slot: i as u32 + 1,
                addr: *addr,
                weight: *weight,
            })
            .collect();
        Ring {
            ring: maglev::build(&members, RING).expect("maglev build"),
            addrs: backends.iter().map(|(a, _)| *a).collect(),
        }
    }

    /// The backend address of the flow `src:sport -> vip:PORT/tcp`.
    fn pick(&self, src: IpAddr, sport: u16, vip: IpAddr) -> IpAddr {
        let slot = maglev::lookup(&self.ring, packet_hash(src, sport, vip, PORT, Proto::Tcp));
        assert_ne!(slot, 0, "empty ring");
        self.addrs[slot as usize - 1]
    }

    fn entries(&self, addr: IpAddr) -> u64 {
        let Some(i) = self.addrs.iter().position(|a| *a == addr) else {
            return 0;
        };
        self.ring.iter().filter(|s| **s == i as u32 + 1).count() as u64
    }
}

/// Checks a service's ring shares in `lb list` against the prediction.
fn check_ring(list: &Value, id: &str, ring: &Ring, configured: &[IpAddr]) {
    let svc = service(list, id);
    assert_eq!(num(svc, "ring_size"), u64::from(RING), "{id}: ring size");
    let listed = svc["backends"].as_array().expect("backends").len();
    assert_eq!(listed, configured.len(), "{id}: backends listed {svc:#}");
    for a in configured {
        let b = backend_of(svc, *a).unwrap_or_else(|| panic!("{id}: no backend {a}"));
        assert_eq!(
            num(b, "ring_entries"),
            ring.entries(*a),
            "{id}: ring entries of {a} (predicted by maglev::build)"
        );
    }
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
struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    fn start(node: &Node, v4: bool) -> EchoServer {
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
            let deadline = Instant::now() + SERVER_LIFETIME;
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

/// Echo servers of both families on every backend.
fn echo_all(topo: &Topo) -> BTreeMap<(String, bool), EchoServer> {
    let mut m = BTreeMap::new();
    for b in &topo.backends {
        for v4 in [true, false] {
            m.insert((b.name.clone(), v4), EchoServer::start(b, v4));
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
fn connect_from(src: SocketAddr, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
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
struct Flow {
    vip: IpAddr,
    sport: u16,
    len: usize,
}

impl Flow {
    fn data(&self) -> Vec<u8> {
        payload(self.len, (u64::from(self.sport) << 8) ^ self.len as u64)
    }

    /// Client segments this stream sends at least: SYN, the length and data
    /// in segments of at most 1360 bytes (MTU 1400), the ACK of the server's
    /// FIN.
    fn min_segments(&self) -> u64 {
        2 + (self.len as u64 + 8).div_ceil(1360)
    }
}

/// `n` flows to `vip` from source ports `base..`, sizes from 4 KiB to 256 KiB.
fn flows(vip: IpAddr, base: u16, n: u16) -> Vec<Flow> {
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
fn echo_through(s: &TcpStream, data: &[u8]) -> io::Result<Vec<u8>> {
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

fn read_greeting(s: &TcpStream) -> io::Result<String> {
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
fn run_flows(topo: &Topo, flows: &[Flow], parallel: usize) -> Vec<Result<String, String>> {
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

/// Runs `flows` and asserts that every one went intact to the backend
/// `ring` predicts; returns the backend address of each.
fn run_predicted(topo: &Topo, lb: &Daemon, flows: &[Flow], ring: &Ring, what: &str) -> Vec<IpAddr> {
    let results = run_flows(topo, flows, 8);
    let mut picks = Vec::new();
    let mut wrong = Vec::new();
    for (f, r) in flows.iter().zip(results) {
        let src = topo.client_addr(f.vip);
        let want = ring.pick(src, f.sport, f.vip);
        let want_name = &topo.owner(want).name;
        match r {
            Ok(name) if &name == want_name => {}
            Ok(name) => wrong.push(format!(
                "{src}:{} -> {}: greeted by {name}, predicted {want_name} ({want})",
                f.sport, f.vip
            )),
            Err(e) => wrong.push(e),
        }
        picks.push(want);
    }
    assert!(
        wrong.is_empty(),
        "{what}: {} of {} streams wrong:\n  {}\n{}",
        wrong.len(),
        flows.len(),
        wrong.join("\n  "),
        diagnose(topo, lb)
    );
    picks
}

/// The LB's `stats`, `lb list` and neighbours, for failure messages.
fn diagnose(topo: &Topo, lb: &Daemon) -> String {
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

/// Counts of flows per predicted backend.
fn tally(picks: &[IpAddr]) -> BTreeMap<IpAddr, usize> {
    let mut m = BTreeMap::new();
    for p in picks {
        *m.entry(*p).or_default() += 1;
    }
    m
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// 40 streams per VIP (4 KiB to 256 KiB each) through encapsulation of every
/// family pair: VIP4 to be1's IPv4 (IPIP) and be2's IPv6 (IPv4-in-IPv6),
/// VIP6 to be1's IPv6 (IP6IP6) and be2's IPv4 (IPv6-in-IPv4), weights 1 and
/// 2. Every stream lands on the predicted backend and echoes intact; the
/// LB's per-backend counters cover the client's segments and equal the
/// backends' decapsulation counters; replies bypass the LB.
#[test]
fn maglev_predicted_dsr_streams() {
    let _g = serial();
    let t0 = Instant::now();
    let topo = Topo::new(2);
    let (be1, be2) = (topo.backend("be1"), topo.backend("be2"));
    let _echo = echo_all(&topo);
    let be_d: Vec<Daemon> = topo.backends.iter().map(start_backend).collect();
    let lb = start_lb(&topo);
    let set4 = [(be1.addr(true), 1), (be2.addr(false), 2)];
    let set6 = [(be1.addr(false), 1), (be2.addr(true), 2)];
    lb_add(&lb, &topo, SVC4, &set4, &[]);
    lb_add(&lb, &topo, SVC6, &set6, &[]);
    let (ring4, ring6) = (Ring::new(&set4), Ring::new(&set6));
    let list = lb_list(&lb.dirs, &topo.lb.ns);
    check_ring(&list, SVC4, &ring4, &[be1.v4.into(), be2.v6.into()]);
    check_ring(&list, SVC6, &ring6, &[be1.v6.into(), be2.v4.into()]);
    let setup = t0.elapsed();

    let rx0 = topo.lb_rx_packets();
    let stats0 = lb.stats(&topo.lb.ns);
    let t1 = Instant::now();
    let f4 = flows(vip4(), 30000, 40);
    let f6 = flows(vip6(), 31000, 40);
    let p4 = run_predicted(&topo, &lb, &f4, &ring4, "IPv4 VIP");
    let p6 = run_predicted(&topo, &lb, &f6, &ring6, "IPv6 VIP");
    let traffic = t1.elapsed();
    let bytes: usize = f4.iter().chain(&f6).map(|f| f.len).sum();
    eprintln!(
        "streams: {} bytes each way in {traffic:?}; IPv4 VIP per backend {:?}, IPv6 VIP {:?}",
        bytes,
        tally(&p4),
        tally(&p6)
    );

    // Per backend: at least the segments its flows needed, nothing for a
    // backend without flows; the backends' decapsulation counters equal the
    // LB's per-backend counters (outer family = the backend address's,
    // inner = the VIP's).
    let mut forwarded = 0;
    let mut slow = 0;
    let mut expect_decap: BTreeMap<(String, &str, &str), u64> = BTreeMap::new();
    let list = lb_list(&lb.dirs, &topo.lb.ns);
    eprintln!("LB lb list: {list:#}");
    for (id, fl, picks, set) in [(SVC4, &f4, &p4, &set4), (SVC6, &f6, &p6, &set6)] {
        let svc = service(&list, id);
        assert_eq!(num(svc, "dropped_packets"), 0, "{id}: dropped");
        let (fwd, sp) = (num(svc, "forwarded_packets"), num(svc, "slow_path_packets"));
        forwarded += fwd;
        slow += sp;
        let mut per_backend = 0;
        for (addr, _) in set {
            let b = backend_of(svc, *addr).expect("backend listed");
            let packets = num(b, "packets");
            per_backend += packets;
            let min: u64 = fl
                .iter()
                .zip(picks.iter())
                .filter(|(_, p)| *p == addr)
                .map(|(f, _)| f.min_segments())
                .sum();
            if min == 0 {
                assert_eq!(packets, 0, "{id}: {addr} got packets without flows");
            } else {
                assert!(
                    packets >= min,
                    "{id}: {addr}: {packets} packets, its flows sent at least {min}"
                );
            }
            *expect_decap
                .entry((topo.owner(*addr).name.clone(), fam(*addr), fam(svc_vip(id))))
                .or_default() += packets;
        }
        assert_eq!(
            per_backend,
            fwd + sp,
            "{id}: backend counters vs forwarded + slow path"
        );
        assert!(
            sp <= 10,
            "{id}: {sp} packets took the slow path (only a flow's first packets before \
             the neighbour entry exists should)"
        );
    }
    for (b, d) in topo.backends.iter().zip(&be_d) {
        let mut last = Value::Null;
        let got = |last: &mut Value| {
            *last = lb_list(&d.dirs, &b.ns);
            ["ipv4", "ipv6"]
                .iter()
                .flat_map(|o| ["ipv4", "ipv6"].map(|i| (*o, i)))
                .all(|(o, i)| {
                    decap_packets(last, o, i)
                        == expect_decap
                            .get(&(b.name.clone(), o, i))
                            .copied()
                            .unwrap_or(0)
                })
        };
        let ok = wait_for_opt(Duration::from_secs(3), || got(&mut last));
        assert!(
            ok,
            "{}: decap counters {:#} vs the LB's per-backend counters {expect_decap:?}",
            b.name, last["decap"]
        );
        // The decapsulated packets went on to the stack (XDP_PASS).
        let rows = d.stats(&b.ns);
        let passed = sum(&rows, IF, None, Some("pass")).0;
        let decapped: u64 = expect_decap
            .iter()
            .filter(|((n, _, _), _)| *n == b.name)
            .map(|(_, v)| v)
            .sum();
        assert!(decapped > 0, "{}: nothing decapsulated", b.name);
        assert!(
            passed >= decapped,
            "{}: pass {passed} < decap {decapped}",
            b.name
        );
    }

    // Direct server return: the LB received the client's segments and little
    // else; the replies (at least one segment per 1360 echoed bytes) did not
    // pass it.
    let stats1 = lb.stats(&topo.lb.ns);
    let rx = topo.lb_rx_packets() - rx0;
    let delta = |fam: Option<&str>, act: &str| {
        sum(&stats1, IF, fam, Some(act)).0 - sum(&stats0, IF, fam, Some(act)).0
    };
    let tx = delta(None, "tx");
    let pass = delta(Some("ipv4"), "pass") + delta(Some("ipv6"), "pass");
    let replies_min: u64 = f4
        .iter()
        .chain(&f6)
        .map(|f| (f.len as u64).div_ceil(1360))
        .sum();
    eprintln!(
        "LB: rx {rx}, XDP_TX {tx}, IP passed {pass}, forwarded {forwarded}, slow path {slow}; \
         the backends sent at least {replies_min} reply segments"
    );
    assert_eq!(tx, forwarded, "LB XDP_TX vs forwarded packets");
    assert_eq!(delta(None, "drop"), 0, "LB drops");
    assert!(
        pass <= slow + 30,
        "LB passed {pass} IP packets to its stack (slow path {slow}): replies went through it?"
    );
    assert!(
        rx <= forwarded + slow + 60,
        "LB received {rx} packets for {} forwarded: replies went through it?",
        forwarded + slow
    );
    assert!(replies_min > 2 * rx.saturating_sub(forwarded + slow).max(1));
    eprintln!(
        "maglev_predicted_dsr_streams: setup {setup:?}, traffic {traffic:?}, total {:?}",
        t0.elapsed()
    );
}

/// The VIP of a service id of this file.
fn svc_vip(id: &str) -> IpAddr {
    if id == SVC4 { vip4() } else { vip6() }
}

/// Like [`wait_for`], returning whether `done` held within `limit`.
fn wait_for_opt(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// Connections held open across a change
// ---------------------------------------------------------------------------

/// A stream stopped halfway: greeted, the first half echoed.
struct Held {
    flow: Flow,
    s: TcpStream,
    data: Vec<u8>,
    name: String,
}

/// Opens `flows` from the client and echoes the first half of each.
fn open_held(topo: &Topo, flows: &[Flow]) -> Vec<Held> {
    topo.client.ns.run(|| {
        flows
            .iter()
            .map(|f| {
                let src = topo.client_addr(f.vip);
                let what = format!("held {src}:{} -> {}", f.sport, f.vip);
                let s = connect_from(
                    SocketAddr::new(src, f.sport),
                    SocketAddr::new(f.vip, PORT),
                    Duration::from_secs(3),
                )
                .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
                let data = f.data();
                (&s).write_all(&(f.len as u64).to_be_bytes())
                    .unwrap_or_else(|e| panic!("{what}: length: {e}"));
                let name = read_greeting(&s).unwrap_or_else(|e| panic!("{what}: greeting: {e}"));
                let half = &data[..f.len / 2];
                let got =
                    echo_through(&s, half).unwrap_or_else(|e| panic!("{what}: first half: {e}"));
                assert!(got == half, "{what}: first half differs");
                Held {
                    flow: *f,
                    s,
                    data,
                    name,
                }
            })
            .collect()
    })
}

/// Echoes the second half of a held stream and waits for the server's close.
fn finish_held(h: &Held) -> io::Result<()> {
    let rest = &h.data[h.flow.len / 2..];
    let got = echo_through(&h.s, rest)?;
    if got != rest {
        return Err(io::Error::other("second half differs"));
    }
    let mut tail = Vec::new();
    (&h.s).read_to_end(&mut tail)?;
    if !tail.is_empty() {
        return Err(io::Error::other("bytes after the echo"));
    }
    Ok(())
}

/// Polls the LB's `lb list` until `done` holds for it (bounded by `limit`);
/// the time it took and the last document.
fn wait_list(
    lb: &Daemon,
    topo: &Topo,
    limit: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> (Duration, Value) {
    let start = Instant::now();
    loop {
        let list = lb_list(&lb.dirs, &topo.lb.ns);
        if done(&list) {
            return (start.elapsed(), list);
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}; lb list: {list:#}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Whether every backend of `set` has the health state `up` and the ring
/// entries `ring` predicts in service `id`.
fn backends_are(list: &Value, id: &str, set: &[(IpAddr, u32)], ring: &Ring, up: &[bool]) -> bool {
    let svc = service(list, id);
    set.iter().zip(up).all(|((a, _), up)| {
        backend_of(svc, *a).is_some_and(|b| {
            b["healthy"].as_bool() == Some(*up) && num(b, "ring_entries") == ring.entries(*a)
        })
    })
}

// ---------------------------------------------------------------------------
// Tests: removal, health, L2 DSR
// ---------------------------------------------------------------------------

/// Three backends per VIP (mixed families, weights 1); `lb add --replace`
/// without be2. Streams held open across the change continue on be1 and be3
/// and are reset where they moved; new streams from the same source ports
/// stay on be1/be3 if they were there and move to the predicted backend if
/// they were on be2.
#[test]
fn removal_moves_only_its_flows() {
    let _g = serial();
    let t0 = Instant::now();
    let topo = Topo::new(3);
    let be = |n: &str| topo.backend(n);
    let _echo = echo_all(&topo);
    let _be_d: Vec<Daemon> = topo.backends.iter().map(start_backend).collect();
    let lb = start_lb(&topo);
    let all4 = [
        (be("be1").addr(true), 1),
        (be("be2").addr(false), 1),
        (be("be3").addr(true), 1),
    ];
    let all6 = [
        (be("be1").addr(false), 1),
        (be("be2").addr(true), 1),
        (be("be3").addr(false), 1),
    ];
    let gone: Vec<IpAddr> = vec![be("be2").v6.into(), be("be2").v4.into()];
    let kept4: Vec<_> = all4
        .iter()
        .copied()
        .filter(|b| !gone.contains(&b.0))
        .collect();
    let kept6: Vec<_> = all6
        .iter()
        .copied()
        .filter(|b| !gone.contains(&b.0))
        .collect();
    lb_add(&lb, &topo, SVC4, &all4, &[]);
    lb_add(&lb, &topo, SVC6, &all6, &[]);
    let (a4, a6) = (Ring::new(&all4), Ring::new(&all6));
    let (b4, b6) = (Ring::new(&kept4), Ring::new(&kept6));
    let list = lb_list(&lb.dirs, &topo.lb.ns);
    check_ring(&list, SVC4, &a4, &all4.map(|b| b.0));
    check_ring(&list, SVC6, &a6, &all6.map(|b| b.0));

    let f4 = flows(vip4(), 32000, 40);
    let f6 = flows(vip6(), 33000, 40);
    let before4 = run_predicted(&topo, &lb, &f4, &a4, "IPv4 VIP, 3 backends");
    let before6 = run_predicted(&topo, &lb, &f6, &a6, "IPv6 VIP, 3 backends");
    let held_flows: Vec<Flow> = flows(vip4(), 34000, 12)
        .into_iter()
        .chain(flows(vip6(), 35000, 12))
        .collect();
    let held = open_held(&topo, &held_flows);
    let ring_of = |vip: IpAddr, after: bool| match (vip.is_ipv4(), after) {
        (true, false) => &a4,
        (false, false) => &a6,
        (true, true) => &b4,
        (false, true) => &b6,
    };
    for h in &held {
        let f = &h.flow;
        let want = ring_of(f.vip, false).pick(topo.client_addr(f.vip), f.sport, f.vip);
        assert_eq!(h.name, topo.owner(want).name, "held {f:?}");
    }

    // The prediction itself: Maglev keeps every flow of a remaining backend.
    for (fl, before, after) in [(&f4, &before4, &b4), (&f6, &before6, &b6)] {
        for (f, was) in fl.iter().zip(before.iter()) {
            let now = after.pick(topo.client_addr(f.vip), f.sport, f.vip);
            if !gone.contains(was) {
                assert_eq!(now, *was, "maglev moved {f:?} off a remaining backend");
            }
        }
    }
    let moved = before4
        .iter()
        .chain(&before6)
        .filter(|b| gone.contains(b))
        .count();
    assert!(
        moved > 0,
        "no flow was on be2: the test would prove nothing"
    );

    let t1 = Instant::now();
    lb_add(&lb, &topo, SVC4, &kept4, &["--replace"]);
    lb_add(&lb, &topo, SVC6, &kept6, &["--replace"]);
    let list = lb_list(&lb.dirs, &topo.lb.ns);
    check_ring(
        &list,
        SVC4,
        &b4,
        &kept4.iter().map(|b| b.0).collect::<Vec<_>>(),
    );
    check_ring(
        &list,
        SVC6,
        &b6,
        &kept6.iter().map(|b| b.0).collect::<Vec<_>>(),
    );

    // Held streams: those on be1/be3 finish intact; those on be2 now reach
    // another backend, which has no such connection and resets it.
    let mut held_kept = 0;
    for h in &held {
        let f = &h.flow;
        let src = topo.client_addr(f.vip);
        let was = ring_of(f.vip, false).pick(src, f.sport, f.vip);
        let r = finish_held(h);
        if gone.contains(&was) {
            assert!(
                r.is_err(),
                "held {f:?} on be2 survived its backend's removal"
            );
        } else {
            held_kept += 1;
            r.unwrap_or_else(|e| {
                panic!(
                    "held {f:?} on {} broke after be2's removal: {e}\n{}",
                    h.name,
                    diagnose(&topo, &lb)
                )
            });
        }
    }
    drop(held);

    // New streams from the same source ports.
    let after4 = run_predicted(&topo, &lb, &f4, &b4, "IPv4 VIP after removing be2");
    let after6 = run_predicted(&topo, &lb, &f6, &b6, "IPv6 VIP after removing be2");
    let mut stayed = 0;
    for (was, now) in before4
        .iter()
        .chain(&before6)
        .zip(after4.iter().chain(&after6))
    {
        if !gone.contains(was) {
            assert_eq!(was, now);
            stayed += 1;
        } else {
            assert!(!gone.contains(now));
        }
    }
    eprintln!(
        "removal_moves_only_its_flows: {moved} of 80 flows moved off be2, {stayed} stayed; \
         {held_kept} of {} held streams survived the change; change and checks {:?}, total {:?}",
        held_flows.len(),
        t1.elapsed(),
        t0.elapsed()
    );
}

/// Health checks (`--health tcp --interval 0.3 --timeout 0.2 --rise 2
/// --fall 2`): be2's listeners stop, it leaves both rings within fall x
/// interval (bounded 3 s) and new streams all go to be1; they come back,
/// be2 rejoins within rise x interval (bounded 3 s) and streams map as
/// first predicted.
#[test]
fn health_drains_and_restores() {
    let _g = serial();
    let t0 = Instant::now();
    let topo = Topo::new(2);
    let (be1, be2) = (topo.backend("be1"), topo.backend("be2"));
    let mut echo = echo_all(&topo);
    let _be_d: Vec<Daemon> = topo.backends.iter().map(start_backend).collect();
    let lb = start_lb(&topo);
    let set4 = [(be1.addr(true), 1), (be2.addr(false), 2)];
    let set6 = [(be1.addr(false), 1), (be2.addr(true), 2)];
    let health = [
        "--health",
        "tcp",
        "--interval",
        "0.3",
        "--timeout",
        "0.2",
        "--rise",
        "2",
        "--fall",
        "2",
    ];
    lb_add(&lb, &topo, SVC4, &set4, &health);
    lb_add(&lb, &topo, SVC6, &set6, &health);
    let (full4, full6) = (Ring::new(&set4), Ring::new(&set6));
    let drained = |set: &[(IpAddr, u32)]| Ring::new(&[set[0], (set[1].0, 0)]);
    let (only4, only6) = (drained(&set4), drained(&set6));
    let both = |l: &Value, r4: &Ring, r6: &Ring, up: [bool; 2]| {
        backends_are(l, SVC4, &set4, r4, &up) && backends_are(l, SVC6, &set6, r6, &up)
    };
    let (t_up, list) = wait_list(
        &lb,
        &topo,
        Duration::from_secs(5),
        "both backends up",
        |l| both(l, &full4, &full6, [true, true]),
    );
    assert_eq!(service(&list, SVC4)["health_checked"], true);
    eprintln!("health: both up {t_up:?} after lb add");

    let f4 = flows(vip4(), 36000, 20);
    let f6 = flows(vip6(), 37000, 20);
    run_predicted(&topo, &lb, &f4, &full4, "IPv4 VIP, both healthy");
    run_predicted(&topo, &lb, &f6, &full6, "IPv6 VIP, both healthy");

    // be2's listeners stop: its probes (to its IPv6 address for the IPv4 VIP,
    // to its IPv4 address for the IPv6 VIP) are refused.
    echo.remove(&("be2".to_owned(), true));
    echo.remove(&("be2".to_owned(), false));
    let (t_down, list) = wait_list(&lb, &topo, Duration::from_secs(3), "be2 drained", |l| {
        both(l, &only4, &only6, [true, false])
    });
    for id in [SVC4, SVC6] {
        let svc = service(&list, id);
        let b2 = backend_of(
            svc,
            if id == SVC4 {
                be2.v6.into()
            } else {
                be2.v4.into()
            },
        )
        .unwrap();
        assert_eq!(num(b2, "ring_entries"), 0, "{id}: be2 still in the ring");
    }
    let p4 = run_predicted(&topo, &lb, &f4, &only4, "IPv4 VIP, be2 down");
    let p6 = run_predicted(&topo, &lb, &f6, &only6, "IPv6 VIP, be2 down");
    assert!(
        p4.iter().chain(&p6).all(|p| topo.owner(*p).name == "be1"),
        "flows predicted off be1 with be2 down"
    );

    // Back: be2 rejoins and the flows map as first predicted.
    echo.insert(("be2".to_owned(), true), EchoServer::start(be2, true));
    echo.insert(("be2".to_owned(), false), EchoServer::start(be2, false));
    let (t_back, _) = wait_list(&lb, &topo, Duration::from_secs(3), "be2 restored", |l| {
        both(l, &full4, &full6, [true, true])
    });
    run_predicted(&topo, &lb, &f4, &full4, "IPv4 VIP, be2 restored");
    run_predicted(&topo, &lb, &f6, &full6, "IPv6 VIP, be2 restored");
    eprintln!(
        "health_drains_and_restores: drained in {t_down:?} (fall x interval = 0.6 s), \
         restored in {t_back:?} (rise x interval = 0.6 s), total {:?}",
        t0.elapsed()
    );
}

/// L2 DSR (`--forward l2dsr`) to backends on the segment: no decapsulation,
/// the frame keeps its IP packet and only changes its MACs. Without a
/// The daemon has the kernel keep the backends' neighbour entries resolved
/// (managed entries, without any traffic from the LB); then streams go intact
/// to the predicted backends.
#[test]
fn l2dsr_streams() {
    let _g = serial();
    let t0 = Instant::now();
    let topo = Topo::new(2);
    let (be1, be2) = (topo.backend("be1"), topo.backend("be2"));
    let _echo = echo_all(&topo);
    // No backend daemons: nothing is encapsulated.
    let lb = start_lb(&topo);
    let set4 = [(be1.addr(true), 1), (be2.addr(true), 2)];
    let set6 = [(be1.addr(false), 1), (be2.addr(false), 2)];
    lb_add(&lb, &topo, SVC4, &set4, &["--forward", "l2dsr"]);
    lb_add(&lb, &topo, SVC6, &set6, &["--forward", "l2dsr"]);
    let (ring4, ring6) = (Ring::new(&set4), Ring::new(&set6));

    // The daemon asks the kernel to keep the on-link backends' neighbour
    // entries resolved (managed entries): no traffic from the LB needed.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let shown = topo.lb.ns.exec("ip", &["neigh", "show"]).unwrap();
        let resolved = [be1, be2].iter().all(|b| {
            [b.v4.to_string(), b.v6.to_string()].iter().all(|a| {
                shown.lines().any(|l| {
                    l.starts_with(&format!("{a} ")) && l.contains("managed") && l.contains("lladdr")
                })
            })
        });
        if resolved {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the LB did not resolve its backends' neighbour entries within 5 s:\n{shown}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let stats0 = lb.stats(&topo.lb.ns);
    let f4 = flows(vip4(), 38000, 40);
    let f6 = flows(vip6(), 39000, 40);
    let p4 = run_predicted(&topo, &lb, &f4, &ring4, "IPv4 VIP, L2 DSR");
    let p6 = run_predicted(&topo, &lb, &f6, &ring6, "IPv6 VIP, L2 DSR");
    let stats1 = lb.stats(&topo.lb.ns);
    let list = lb_list(&lb.dirs, &topo.lb.ns);
    let mut forwarded = 0;
    for (id, fl, picks, set) in [(SVC4, &f4, &p4, &set4), (SVC6, &f6, &p6, &set6)] {
        let svc = service(&list, id);
        assert_eq!(svc["forward"], "l2dsr");
        assert_eq!(
            num(svc, "slow_path_packets"),
            0,
            "{id}: L2 DSR has no slow path"
        );
        forwarded += num(svc, "forwarded_packets");
        for (addr, _) in set {
            let min: u64 = fl
                .iter()
                .zip(picks.iter())
                .filter(|(_, p)| *p == addr)
                .map(|(f, _)| f.min_segments())
                .sum();
            let got = num(backend_of(svc, *addr).unwrap(), "packets");
            assert!(got >= min, "{id}: {addr}: {got} packets < {min}");
        }
    }
    let d = |act: &str| sum(&stats1, IF, None, Some(act)).0 - sum(&stats0, IF, None, Some(act)).0;
    assert_eq!(d("tx"), forwarded, "XDP_TX vs forwarded");
    assert_eq!(d("drop"), 0, "drops after resolution");
    eprintln!(
        "l2dsr_streams: {forwarded} packets forwarded by MAC rewrite, total {:?}",
        t0.elapsed()
    );
}

//! The lab's namespaces, links and addresses ([`Topo`]): a switch namespace
//! with a bridge, the client, the LB and the backends, built and checked
//! step by step; everything is removed when the [`Topo`] is dropped.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{IF, VIP4, VIP6};
use crate::{bpf, lab::Netns};

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
        ifr.ifr_ifru.ifru_data = (&raw mut v).cast();
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
            // SAFETY: a NUL-terminated literal; the call only reads it.
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

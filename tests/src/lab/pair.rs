//! Two namespaces joined by one dual-stack veth pair ([`Lab`]), and the names
//! and addresses of its ends.
use std::net::{Ipv4Addr, Ipv6Addr};

use super::{LabError, MAX_TAG_LEN, Netns, format_mac, next_id, sanitize_tag, sweep_stale};

/// One end of a veth link inside a namespace with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Interface name (at most 15 bytes), valid inside its namespace.
    pub ifname: String,
    /// Interface index inside its namespace.
    pub ifindex: u32,
    /// IPv4 address (prefix length 24).
    pub ipv4: Ipv4Addr,
    /// IPv6 address (prefix length 64).
    pub ipv6: Ipv6Addr,
    /// MAC address of the interface.
    pub mac: [u8; 6],
}

/// Two namespaces `a` and `b` joined by one veth pair, dual-stack.
///
/// Dropping the lab deletes both namespaces (and with them the veth pair).
/// No explicit `Drop` impl is needed: the namespaces clean up after
/// themselves, also when [`Lab::new`] fails halfway.
#[derive(Debug)]
pub struct Lab {
    /// Namespace holding `a_end`.
    pub a: Netns,
    /// Namespace holding `b_end`.
    pub b: Netns,
    /// The veth end in `a` (`10.200.X.1`, `fd00:200:X::1`).
    pub a_end: Endpoint,
    /// The veth end in `b` (`10.200.X.2`, `fd00:200:X::2`).
    pub b_end: Endpoint,
    /// The subnet number `X` the lab was built with.
    pub subnet: u8,
}

impl Lab {
    /// subnet X: a gets 10.200.X.1/24 and fd00:200:X::1/64, b gets
    /// 10.200.X.2/24 and fd00:200:X::2/64 (IPv6 added with `nodad`). Before
    /// addressing: disable IPv6 router solicitations and accept_ra, set static
    /// (permanent) neighbour entries on both sides for both families so no
    /// ARP/NDP is needed; set both links up; wait until both links are
    /// operationally up (poll `ip -o link show`, bounded 5 s) and until IPv6
    /// addresses are not tentative (poll, bounded 5 s).
    ///
    /// The decimal digits of X are used as the third IPv6 group, so subnet 17
    /// yields `10.200.17.1` and `fd00:200:17::1`. Calls [`sweep_stale`]
    /// first. Does not take [`serial`]; callers do that.
    pub fn new(tag: &str, subnet: u8) -> Result<Lab, LabError> {
        let swept = sweep_stale();
        if swept > 0 {
            log::info!("removed {swept} stale lab namespace(s)");
        }
        let tag: String = sanitize_tag(tag).chars().take(MAX_TAG_LEN - 1).collect();
        let a = Netns::new(&format!("{tag}a"))?;
        let b = Netns::new(&format!("{tag}b"))?;
        let (if_a, if_b) = veth_names(std::process::id(), next_id());
        let (ipv4_a, ipv6_a) = lab_addrs(subnet, 1);
        let (ipv4_b, ipv6_b) = lab_addrs(subnet, 2);

        // Defaults first, so the veth ends inherit them from creation on.
        for ns in [&a, &b] {
            for scope in ["all", "default"] {
                ns.sysctl(&format!("net.ipv6.conf.{scope}.accept_ra"), "0")?;
                ns.sysctl(&format!("net.ipv6.conf.{scope}.router_solicitations"), "0")?;
                ns.sysctl(&format!("net.ipv6.conf.{scope}.accept_dad"), "0")?;
            }
        }

        // Created inside `a`, peer moved straight into `b`: never in the host.
        a.ip(&[
            "link", "add", &if_a, "type", "veth", "peer", "name", &if_b, "netns", &b.name,
        ])?;

        for (ns, ifname) in [(&a, &if_a), (&b, &if_b)] {
            ns.sysctl(&format!("net/ipv6/conf/{ifname}/accept_ra"), "0")?;
            ns.sysctl(&format!("net/ipv6/conf/{ifname}/router_solicitations"), "0")?;
            ns.sysctl(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0")?;
        }
        let (ifindex_a, mac_a) = a.link_info(&if_a)?;
        let (ifindex_b, mac_b) = b.link_info(&if_b)?;

        a.ip(&["link", "set", "dev", &if_a, "up"])?;
        b.ip(&["link", "set", "dev", &if_b, "up"])?;
        a.wait_oper_up(&if_a)?;
        b.wait_oper_up(&if_b)?;

        // Static neighbours (before any address exists), so no ARP/NDP.
        for (ns, ifname, peer4, peer6, peer_mac) in [
            (&a, &if_a, ipv4_b, ipv6_b, mac_b),
            (&b, &if_b, ipv4_a, ipv6_a, mac_a),
        ] {
            let mac = format_mac(&peer_mac);
            for peer in [peer4.to_string(), peer6.to_string()] {
                ns.ip(&[
                    "neigh",
                    "replace",
                    &peer,
                    "lladdr",
                    &mac,
                    "dev",
                    ifname,
                    "nud",
                    "permanent",
                ])?;
            }
        }

        for (ns, ifname, ipv4, ipv6) in [(&a, &if_a, ipv4_a, ipv6_a), (&b, &if_b, ipv4_b, ipv6_b)] {
            ns.ip(&["addr", "add", &format!("{ipv4}/24"), "dev", ifname])?;
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{ipv6}/64"),
                "dev",
                ifname,
                "nodad",
            ])?;
        }
        a.wait_ipv6_ready(&if_a, ipv6_a)?;
        b.wait_ipv6_ready(&if_b, ipv6_b)?;

        log::debug!(
            "lab ready: {} ({if_a}) <-> {} ({if_b}), subnet {subnet}",
            a.name,
            b.name
        );
        Ok(Lab {
            a_end: Endpoint {
                ifname: if_a,
                ifindex: ifindex_a,
                ipv4: ipv4_a,
                ipv6: ipv6_a,
                mac: mac_a,
            },
            b_end: Endpoint {
                ifname: if_b,
                ifindex: ifindex_b,
                ipv4: ipv4_b,
                ipv6: ipv6_b,
                mac: mac_b,
            },
            a,
            b,
            subnet,
        })
    }
}

/// Veth names `xg{pid:x}v{n:x}a` / `...b`: at most 14 bytes (Linux pids are
/// below 2^22), unique per process and counter value.
pub(super) fn veth_names(pid: u32, n: u32) -> (String, String) {
    let base = format!("xg{:x}v{:x}", pid & 0xff_ffff, n & 0xffff);
    (format!("{base}a"), format!("{base}b"))
}

/// The addresses of host `host` (1 or 2) in lab subnet `subnet`.
pub(super) fn lab_addrs(subnet: u8, host: u8) -> (Ipv4Addr, Ipv6Addr) {
    // Decimal digits of the subnet as a hex group: 17 -> fd00:200:17::.
    let group = u16::from_str_radix(&subnet.to_string(), 16).unwrap_or(0);
    (
        Ipv4Addr::new(10, 200, subnet, host),
        Ipv6Addr::new(0xfd00, 0x200, group, 0, 0, 0, 0, u16::from(host)),
    )
}

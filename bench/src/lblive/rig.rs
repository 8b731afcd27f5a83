//! The rig: forwarding and the backends' neighbours in namespace a, the TCP
//! frames b sends, and receive counts.

use std::net::IpAddr;

use anyhow::{Context as _, anyhow};
use xdpgate_tests::{
    lab::{Lab, Netns},
    packet::{Ethernet, Ipv4, Ipv6, Transport, ethertype, pad, proto},
};

use super::{BACKEND_V4, BACKEND_V6, PORT};
use crate::workload;

/// Packets the veth end `ifname` in `ns` received (`ip -s link`).
pub(super) fn rx_packets(ns: &Netns, ifname: &str) -> anyhow::Result<u64> {
    let o = ns.exec("ip", &["-j", "-s", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&o)?;
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .ok_or_else(|| anyhow!("no rx packet count in `ip -j -s link`: {o}"))
}

fn mac_string(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A TCP frame b -> a from the client to `dst`.
pub(super) fn tcp_frame(lab: &Lab, dst: IpAddr) -> Vec<u8> {
    let l4 = Transport::tcp(workload::SPORT, PORT).bytes();
    let (et, ip) = match dst {
        IpAddr::V4(d) => (
            ethertype::IPV4,
            Ipv4::new(workload::MISS_V4.octets(), d.octets(), proto::TCP).build(&l4),
        ),
        IpAddr::V6(d) => (
            ethertype::IPV6,
            Ipv6::new(workload::MISS_V6.octets(), d.octets(), proto::TCP).build(&l4),
        ),
    };
    let mut eth = Ethernet::new(et);
    eth.src = lab.b_end.mac;
    eth.dst = lab.a_end.mac;
    pad(eth.build(&ip), 60)
}

/// Forwarding, and permanent neighbours for the backends on a's end (b's
/// MAC), in namespace a.
pub(super) fn setup(lab: &Lab) -> anyhow::Result<()> {
    for key in [
        "net.ipv4.conf.all.forwarding",
        "net.ipv6.conf.all.forwarding",
    ] {
        lab.a
            .sysctl(key, "1")
            .with_context(|| format!("setting {key} in namespace a"))?;
    }
    let mac = mac_string(lab.b_end.mac);
    for b in [IpAddr::V4(BACKEND_V4), IpAddr::V6(BACKEND_V6)] {
        let args: [&str; 9] = [
            "neigh",
            "replace",
            &b.to_string(),
            "lladdr",
            &mac,
            "dev",
            &lab.a_end.ifname,
            "nud",
            "permanent",
        ];
        lab.a
            .exec("ip", &args)
            .with_context(|| format!("ip {}", args.join(" ")))?;
    }
    Ok(())
}

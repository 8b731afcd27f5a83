//! The rig: three namespaces the benchmark creates. `s` (server and gate)
//! holds two veth ends: `s_leg` to the client namespace `c`
//! ([`LEG_NET`]`.0/24`) and `s_att` to the attacker namespace `a`
//! ([`ATT_NET`]`.0/24`). The client's [`CLIENT_PREFIXES`] source addresses
//! (one per /24 of 10.200.128.0/18) and the attack prefix 10.200.64.0/18 are
//! routed back through their veth; every neighbour is static (no ARP), IPv6
//! is off. `a`'s end runs `r0 = XDP_DROP; exit` natively: its receive path
//! (NAPI) must be on for frames `s` sends back (SYN-ACKs, replies), and they
//! die there as cheaply as possible. `s_att` has GRO on, so it accepts the
//! generator's `ndo_xdp_xmit` frames without an XDP program of its own.
//! `c`'s end runs `r0 = XDP_PASS; exit` natively, for the SYN-ACKs xdpgate
//! sends it with `XDP_TX` (in every configuration).

use std::{
    net::Ipv4Addr,
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use xdpgate_tests::lab::Netns;

use super::{CLIENT_PREFIXES, SERVER_V4};
use crate::{bpf, live::enable_gro};

/// 10.200.244.0/24: the legitimate path (s .1, c .2).
pub(super) const LEG_NET: [u8; 3] = [10, 200, 244];
/// 10.200.245.0/24: the attack path (s .1, a .2).
pub(super) const ATT_NET: [u8; 3] = [10, 200, 245];

/// One veth end.
pub(super) struct End {
    pub(super) ifname: String,
    pub(super) ifindex: u32,
    pub(super) mac: [u8; 6],
}

/// The three namespaces and their veth ends. Dropping it deletes the
/// namespaces (and the veths with them).
pub(super) struct Rig {
    pub(super) s: Netns,
    pub(super) c: Netns,
    pub(super) a: Netns,
    pub(super) s_leg: End,
    pub(super) s_att: End,
    pub(super) a_end: End,
    /// The XDP_DROP sink on `a_end` (detached on drop).
    _sink: OwnedFd,
    /// `r0 = XDP_PASS; exit` on `c`'s end (detached on drop).
    _client_xdp: OwnedFd,
}

/// The client's source addresses: 10.200.(128 + i).2, i < [`CLIENT_PREFIXES`].
pub(super) fn client_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 128 + (i % CLIENT_PREFIXES) as u8, 2)
}

fn addr(net: [u8; 3], host: u8) -> String {
    format!("{}.{}.{}.{host}", net[0], net[1], net[2])
}

fn link_info(ns: &Netns, ifname: &str) -> anyhow::Result<End> {
    let o = ns.exec("ip", &["-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&o)?;
    let ifindex = v[0]["ifindex"]
        .as_u64()
        .ok_or_else(|| anyhow!("no ifindex for {ifname}: {o}"))? as u32;
    let text = v[0]["address"]
        .as_str()
        .ok_or_else(|| anyhow!("no MAC for {ifname}: {o}"))?;
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(text.split(':')) {
        *m = u8::from_str_radix(p, 16)?;
    }
    Ok(End {
        ifname: ifname.to_owned(),
        ifindex,
        mac,
    })
}

fn mac_string(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn wait_up(ns: &Netns, ifname: &str) -> anyhow::Result<()> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        let o = ns.exec("ip", &["-j", "link", "show", "dev", ifname])?;
        if o.contains("\"operstate\":\"UP\"") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{ifname} did not come up within 5 s")
}

fn neigh(ns: &Netns, ip: &str, mac: [u8; 6], dev: &str) -> anyhow::Result<()> {
    let m = mac_string(mac);
    ns.exec(
        "ip",
        &[
            "neigh",
            "replace",
            ip,
            "lladdr",
            &m,
            "dev",
            dev,
            "nud",
            "permanent",
        ],
    )?;
    Ok(())
}

impl Rig {
    /// Builds the rig.
    pub(super) fn new() -> anyhow::Result<Rig> {
        let s = Netns::new("floods").context("creating the server namespace")?;
        let c = Netns::new("floodc").context("creating the client namespace")?;
        let a = Netns::new("flooda").context("creating the attacker namespace")?;
        for ns in [&s, &c, &a] {
            for scope in ["all", "default"] {
                ns.sysctl(&format!("net.ipv6.conf.{scope}.disable_ipv6"), "1")?;
            }
        }
        let base = format!("xf{:x}", std::process::id() & 0xff_ffff);
        let (sl, cl, st, at) = (
            format!("{base}sl"),
            format!("{base}cl"),
            format!("{base}st"),
            format!("{base}at"),
        );
        // Created inside `s`, peers moved straight into `c` and `a`.
        s.exec(
            "ip",
            &[
                "link",
                "add",
                &sl,
                "type",
                "veth",
                "peer",
                "name",
                &cl,
                "netns",
                c.name(),
            ],
        )?;
        s.exec(
            "ip",
            &[
                "link",
                "add",
                &st,
                "type",
                "veth",
                "peer",
                "name",
                &at,
                "netns",
                a.name(),
            ],
        )?;
        let s_leg = link_info(&s, &sl)?;
        let s_att = link_info(&s, &st)?;
        let c_end = link_info(&c, &cl)?;
        let a_end = link_info(&a, &at)?;
        for (ns, e) in [(&s, &s_leg), (&s, &s_att), (&c, &c_end), (&a, &a_end)] {
            ns.exec("ip", &["link", "set", "dev", &e.ifname, "up"])?;
        }
        for (ns, e) in [(&s, &s_leg), (&s, &s_att), (&c, &c_end), (&a, &a_end)] {
            wait_up(ns, &e.ifname)?;
        }
        let cidr = |net, host| format!("{}/24", addr(net, host));
        s.exec("ip", &["addr", "add", &cidr(LEG_NET, 1), "dev", &sl])?;
        s.exec("ip", &["addr", "add", &cidr(ATT_NET, 1), "dev", &st])?;
        c.exec("ip", &["addr", "add", &cidr(LEG_NET, 2), "dev", &cl])?;
        a.exec("ip", &["addr", "add", &cidr(ATT_NET, 2), "dev", &at])?;
        for i in 0..CLIENT_PREFIXES {
            let a4 = format!("{}/32", client_addr(i));
            c.exec("ip", &["addr", "add", &a4, "dev", &cl])?;
        }
        neigh(&s, &addr(LEG_NET, 2), c_end.mac, &sl)?;
        neigh(&s, &addr(ATT_NET, 2), a_end.mac, &st)?;
        neigh(&c, &SERVER_V4.to_string(), s_leg.mac, &cl)?;
        neigh(&a, &addr(ATT_NET, 1), s_att.mac, &at)?;
        s.exec(
            "ip",
            &["route", "add", "10.200.128.0/18", "via", &addr(LEG_NET, 2)],
        )?;
        s.exec(
            "ip",
            &["route", "add", "10.200.64.0/18", "via", &addr(ATT_NET, 2)],
        )?;
        let ifname = s_att.ifname.clone();
        s.run(|| enable_gro(&ifname))
            .with_context(|| format!("enabling GRO on {ifname}"))?;
        // The client's end takes the SYN-ACKs xdpgate sends with XDP_TX
        // from `s_leg` (a NIC would take them anyway): with GRO on it
        // counted none of them (measured: 32 XDP_TX on s_leg, no errors,
        // nothing received), with an XDP program it does.
        let pass = bpf::load_constant_xdp(bpf::XDP_PASS, "bench_fl_pass")
            .context("loading the client's XDP_PASS program")?;
        let idx = c_end.ifindex;
        let client_xdp = c
            .run(|| bpf::attach_native(&pass, idx))
            .context("attaching XDP_PASS to the client's end")?;
        let prog = bpf::load_constant_xdp(bpf::XDP_DROP, "bench_fl_sink")
            .context("loading the attacker's XDP_DROP sink")?;
        let idx = a_end.ifindex;
        let sink = a
            .run(|| bpf::attach_native(&prog, idx))
            .context("attaching the XDP_DROP sink to the attacker's end")?;
        Ok(Rig {
            s,
            c,
            a,
            s_leg,
            s_att,
            a_end,
            _sink: sink,
            _client_xdp: client_xdp,
        })
    }

    /// Packets `s_att` received (`ip -s link`): every flood frame that
    /// reached the gate, whatever XDP or the stack then did with it.
    pub(super) fn attack_rx(&self) -> anyhow::Result<u64> {
        Ok(self.packets(&self.s_att.ifname)?.0)
    }

    /// (received, sent) packets of `ifname` in `s` (`ip -s link`).
    pub(super) fn packets(&self, ifname: &str) -> anyhow::Result<(u64, u64)> {
        let o = self
            .s
            .exec("ip", &["-j", "-s", "link", "show", "dev", ifname])?;
        let v: serde_json::Value = serde_json::from_str(&o)?;
        let get = |dir: &str| {
            v[0]["stats64"][dir]["packets"]
                .as_u64()
                .ok_or_else(|| anyhow!("no {dir} packet count in `ip -j -s link`: {o}"))
        };
        Ok((get("rx")?, get("tx")?))
    }

    /// The id of the XDP program attached to `ifname` in `s`, if any.
    pub(super) fn xdp_prog_id(&self, ifname: &str) -> anyhow::Result<Option<u32>> {
        let o = self.s.exec("ip", &["-j", "link", "show", "dev", ifname])?;
        let v: serde_json::Value = serde_json::from_str(&o)?;
        Ok(v[0]["xdp"]["prog"]["id"].as_u64().map(|i| i as u32))
    }
}

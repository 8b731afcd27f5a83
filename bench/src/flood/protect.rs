//! The protections, applied to the gate's namespace and removed again: none,
//! xdpgate (the daemon with a DDoS profile on both veth ends) and nftables
//! (per-/24 `limit` on UDP in netdev ingress, `synproxy` on the server
//! port in an inet table).
//!
//! The same profile either way: TCP to [`PORT`] allowed, its SYNs answered
//! with cookies; UDP to [`UDP_PORT`] allowed up to [`UDP_PPS`] packets/s
//! (burst [`UDP_BURST`]) per source /24; everything else from outside
//! dropped (default deny). xdpgate's SYN-ACKs are limited by the daemon's
//! defaults (`[ddos]`: 500/s, burst 100, per source /24).

use std::{os::fd::OwnedFd, path::PathBuf};

use anyhow::{Context as _, bail};
use serde::Serialize;
use xdpgate_tests::xdpgate::{Daemon, StateDirs, binary};

use super::{PORT, UDP_PORT, rig::Rig};
use crate::bpf;

/// UDP rate per source /24, packets per second (both gates).
pub(super) const UDP_PPS: u64 = 100;
/// Its burst, packets.
pub(super) const UDP_BURST: u64 = 20;
/// Bench-only rules of the xdpgate profile (part 2's cost runs): a limit
/// that always admits, one that drops after the first packet, and a plain
/// allow, on these UDP ports.
pub(super) const COST_PORTS: [u16; 3] = [5000, 5001, 5002];

/// Which protection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Protection {
    /// Nothing.
    None,
    /// xdpgate's daemon.
    Xdpgate,
    /// nftables limit + synproxy.
    Nftables,
    /// The empty program `r0 = XDP_DROP; exit` on the attack interface
    /// only: the rig's ceiling (the flood dropped as cheaply as possible,
    /// the legitimate path untouched).
    XdpDrop,
}

/// A protection in force.
pub(super) struct Active {
    daemon: Option<Daemon>,
    /// The empty XDP_DROP program's link (detached on drop).
    xdp_drop: Option<OwnedFd>,
    nft: bool,
    syncookies_before: Option<String>,
    /// The xdpgate configuration file (removed on drop).
    config: Option<PathBuf>,
}

/// The daemon's configuration.
fn xdpgate_config(rig: &Rig) -> String {
    let mut s = String::new();
    for e in [&rig.s_leg, &rig.s_att] {
        s.push_str(&format!(
            "[[interface]]\nname = \"{}\"\nmode = \"native\"\npolicy = \"deny\"\n\n",
            e.ifname
        ));
    }
    s.push_str(&format!(
        "[[rule]]\nid = 10\npriority = 10\nproto = \"tcp\"\ndport = {PORT}\naction = \"allow\"\nsyncookie = true\n\n\
         [[rule]]\nid = 20\npriority = 20\nproto = \"udp\"\ndport = {UDP_PORT}\naction = \"allow\"\n\
         limit = {{ pps = {UDP_PPS}, burst_packets = {UDP_BURST}, per = \"src\", v4_prefix = 24 }}\n\n"
    ));
    let [admit, drop, plain] = COST_PORTS;
    s.push_str(&format!(
        "[[rule]]\nid = 901\npriority = 901\nproto = \"udp\"\ndport = {admit}\naction = \"allow\"\n\
         limit = {{ pps = 1000000000000, per = \"src\" }}\n\n\
         [[rule]]\nid = 902\npriority = 902\nproto = \"udp\"\ndport = {drop}\naction = \"allow\"\n\
         limit = {{ pps = 1, burst_packets = 1, per = \"src\" }}\n\n\
         [[rule]]\nid = 903\npriority = 903\nproto = \"udp\"\ndport = {plain}\naction = \"allow\"\n"
    ));
    s
}

/// The nftables ruleset.
pub(super) fn nft_ruleset(rig: &Rig) -> String {
    let mut s = String::from(
        "table netdev xgflood {\n\
         set u4 { type ipv4_addr; size 65536; flags dynamic,timeout; timeout 10s; }\n",
    );
    for (name, e) in [("leg", &rig.s_leg), ("att", &rig.s_att)] {
        s.push_str(&format!(
            "chain {name} {{ type filter hook ingress device \"{}\" priority 0; policy drop;\n\
             meta protocol arp accept\n\
             tcp dport {PORT} accept\n\
             udp dport {UDP_PORT} update @u4 {{ ip saddr and 255.255.255.0 limit rate over {UDP_PPS}/second burst {UDP_BURST} packets }} counter drop\n\
             udp dport {UDP_PORT} accept\n\
             }}\n",
            e.ifname
        ));
    }
    s.push_str(&format!(
        "}}\n\
         table inet xgsyn {{\n\
         chain pre {{ type filter hook prerouting priority raw; policy accept;\n\
         tcp dport {PORT} tcp flags syn notrack\n\
         udp dport {UDP_PORT} notrack\n\
         }}\n\
         chain inp {{ type filter hook input priority filter; policy accept;\n\
         tcp dport {PORT} ct state invalid,untracked synproxy mss 1460 wscale 7 timestamp sack-perm\n\
         tcp dport {PORT} ct state invalid drop\n\
         }}\n\
         }}\n"
    ));
    s
}

impl Active {
    /// Applies `p` in the gate's namespace.
    pub(super) fn apply(rig: &Rig, p: Protection) -> anyhow::Result<Active> {
        let mut a = Active {
            daemon: None,
            xdp_drop: None,
            nft: false,
            syncookies_before: None,
            config: None,
        };
        if let Err(e) = a.apply_inner(rig, p) {
            let _ = a.undo(rig);
            return Err(e);
        }
        Ok(a)
    }

    fn apply_inner(&mut self, rig: &Rig, p: Protection) -> anyhow::Result<()> {
        let a = self;
        match p {
            Protection::None => {}
            Protection::XdpDrop => {
                let prog = bpf::load_constant_xdp(bpf::XDP_DROP, "bench_fl_drop")
                    .context("loading the empty XDP_DROP program")?;
                let idx = rig.s_att.ifindex;
                let link = rig
                    .s
                    .run(|| bpf::attach_native(&prog, idx))
                    .context("attaching XDP_DROP to the gate's attack end")?;
                a.xdp_drop = Some(link);
            }
            Protection::Nftables => {
                let path = std::env::temp_dir()
                    .join(format!("xdpgate-bench-flood-{}.nft", std::process::id()));
                std::fs::write(&path, nft_ruleset(rig))?;
                let loaded = rig.s.exec("nft", &["-f", &path.display().to_string()]);
                let _ = std::fs::remove_file(&path);
                loaded.context("nft -f (limit + synproxy)")?;
                a.nft = true;
                rig.s
                    .sysctl("net.netfilter.nf_conntrack_tcp_loose", "0")
                    .context("synproxy needs nf_conntrack_tcp_loose = 0")?;
            }
            Protection::Xdpgate => {
                let key = "net.ipv4.tcp_syncookies";
                a.syncookies_before = Some(rig.s.sysctl_get(key)?);
                rig.s.sysctl(key, "2")?;
                let path = std::env::temp_dir()
                    .join(format!("xdpgate-bench-flood-{}.toml", std::process::id()));
                std::fs::write(&path, xdpgate_config(rig))?;
                a.config = Some(path.clone());
                let args = [
                    "--config".as_ref(),
                    path.as_os_str(),
                    "--no-metrics".as_ref(),
                ];
                let d = Daemon::start_binary(
                    &rig.s,
                    StateDirs::unique("benchfl"),
                    &binary(),
                    &[],
                    "",
                    &args,
                )
                .map_err(anyhow::Error::msg)
                .context("starting xdpgate with the DDoS profile")?;
                a.daemon = Some(d);
                for e in [&rig.s_leg, &rig.s_att] {
                    if rig.xdp_prog_id(&e.ifname)?.is_none() {
                        bail!("xdpgate is not attached to {}", e.ifname);
                    }
                }
            }
        }
        Ok(())
    }

    /// The daemon, when xdpgate is in force.
    pub(super) fn daemon(&self) -> Option<&Daemon> {
        self.daemon.as_ref()
    }

    /// Removes the protection.
    pub(super) fn remove(mut self, rig: &Rig) -> anyhow::Result<()> {
        self.undo(rig)
    }

    fn undo(&mut self, rig: &Rig) -> anyhow::Result<()> {
        self.xdp_drop = None;
        if let Some(d) = self.daemon.take() {
            // Waits for the exit, then detaches the pinned links.
            let _ = d.stop_with(libc::SIGTERM);
            for e in [&rig.s_leg, &rig.s_att] {
                if let Some(id) = rig.xdp_prog_id(&e.ifname)? {
                    bail!(
                        "program {id} is still attached to {} after xdpgate stopped",
                        e.ifname
                    );
                }
            }
        }
        if let Some(v) = self.syncookies_before.take() {
            rig.s.sysctl("net.ipv4.tcp_syncookies", &v)?;
        }
        if let Some(p) = self.config.take() {
            let _ = std::fs::remove_file(p);
        }
        if std::mem::take(&mut self.nft) {
            rig.s
                .exec("nft", &["delete", "table", "netdev", "xgflood"])?;
            rig.s.exec("nft", &["delete", "table", "inet", "xgsyn"])?;
        }
        Ok(())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Some(p) = self.config.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

//! Part 4: address bindings. Binds 10,000 IPv4 and 10,000 IPv6 addresses
//! (`xdpgate::bind`, rtnetlink plus the datapath's local-address map) on the
//! veth of a lab the benchmark creates, with the datapath attached natively,
//! then removes them again; wall-clock seconds of each step.
use std::time::Instant;

use anyhow::{Context as _, anyhow, bail};
use serde::Serialize;
use xdpgate::{bind::Bindings, datapath::Datapath, sys::netlink};
use xdpgate_model::{
    bind::BindRequest,
    iface::{Malformed, XdpMode},
};
use xdpgate_tests::lab::Lab;

/// Lab subnet of this part (10.200.232.0/24); the bound ranges lie in
/// 10.200.100.0-10.200.139.15 and fd00:200:100::/112, away from the lab's own
/// addresses.
const SUBNET: u8 = 232;

/// What part 4 measured.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct BindReport {
    /// Addresses bound per family.
    pub per_family: usize,
    /// Seconds to bind the IPv4 addresses (one request).
    pub add_v4_s: f64,
    /// Seconds to bind the IPv6 addresses (one request, `nodad`).
    pub add_v6_s: f64,
    /// Seconds to unbind both (one request each, in one call).
    pub del_s: f64,
    /// Addresses on the interface after binding (kernel count).
    pub on_interface: usize,
    /// Entries in the datapath map after binding.
    pub map_entries: usize,
    /// The kernel's own cost for comparison: `ip -batch` adding the same IPv4
    /// addresses, seconds.
    pub ip_batch_v4_s: Option<f64>,
    /// `ip -batch` adding the same IPv6 addresses (`nodad`), seconds.
    pub ip_batch_v6_s: Option<f64>,
}

impl BindReport {
    /// Seconds to bind both families.
    pub(crate) fn add_s(&self) -> f64 {
        self.add_v4_s + self.add_v6_s
    }
}

/// The last address of `n` consecutive ones starting at 10.200.100.0.
fn v4_range(n: usize) -> String {
    let last = u32::from(std::net::Ipv4Addr::new(10, 200, 100, 0)) + n as u32 - 1;
    format!("10.200.100.0-{}", std::net::Ipv4Addr::from(last))
}

fn v6_range(n: usize) -> String {
    format!("fd00:200:100::1-fd00:200:100::{:x}", n)
}

/// Runs part 4 with `n` addresses per family (at most 10,000).
pub(crate) fn run(n: usize) -> anyhow::Result<BindReport> {
    if n == 0 || n > 10_000 {
        bail!("the bind benchmark takes 1 to 10,000 addresses per family");
    }
    let lab = Lab::new("bindbench", SUBNET).context("creating the bind lab")?;
    let ifname = lab.a_end.ifname.clone();
    let ifindex = lab.a_end.ifindex;
    lab.a.run(|| -> anyhow::Result<BindReport> {
        let mut dp = Datapath::load().context("loading the datapath")?;
        dp.register(ifindex, 1, Malformed::Drop)?;
        dp.attach(&ifname, ifindex, XdpMode::Native)?;
        let mut b = Bindings::new(n);
        let req = |spec: String| BindRequest {
            iface: ifname.clone(),
            spec,
            plen: None,
            nodad: true,
        };
        let (r4, r6) = (req(v4_range(n)), req(v6_range(n)));
        let before = netlink::addresses(Some(ifindex))?.len();

        let t = Instant::now();
        let a = b.add(&mut dp, std::slice::from_ref(&r4))?;
        let add_v4_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let a6 = b.add(&mut dp, std::slice::from_ref(&r6))?;
        let add_v6_s = t.elapsed().as_secs_f64();
        if a.added != n || a6.added != n {
            return Err(anyhow!(
                "expected {n} addresses added per family, got {a} / {a6}"
            ));
        }
        let on_interface = netlink::addresses(Some(ifindex))?.len() - before;
        let map_entries = dp.local_addrs()?.len();

        let t = Instant::now();
        let d = b.del(&mut dp, &[r4, r6])?;
        let del_s = t.elapsed().as_secs_f64();
        let left = netlink::addresses(Some(ifindex))?.len();
        if d.removed != 2 * n || left != before {
            return Err(anyhow!(
                "unbinding left {} addresses (expected {before}): {d}",
                left
            ));
        }
        // The same additions with iproute2, as the kernel's floor.
        let ip_batch = |v6: bool| -> anyhow::Result<f64> {
            let path = std::env::temp_dir().join(format!(
                "xdpgate-bench-bind-{}-{}",
                std::process::id(),
                if v6 { 6 } else { 4 }
            ));
            let addrs = |op: &str| -> String {
                (0..n)
                    .map(|i| {
                        if v6 {
                            format!("addr {op} fd00:200:100::{:x}/128 dev {ifname}\n", i + 1)
                        } else {
                            let a = std::net::Ipv4Addr::from(
                                u32::from(std::net::Ipv4Addr::new(10, 200, 100, 0)) + i as u32,
                            );
                            format!("addr {op} {a}/32 dev {ifname}\n")
                        }
                    })
                    .collect()
            };
            let mut add = addrs("add");
            if v6 {
                add = add.replace('\n', " nodad\n");
            }
            std::fs::write(&path, add)?;
            let t = Instant::now();
            let r = lab.a.exec("ip", &["-batch", &path.display().to_string()]);
            let secs = t.elapsed().as_secs_f64();
            std::fs::write(&path, addrs("del"))?;
            let d = lab.a.exec("ip", &["-batch", &path.display().to_string()]);
            let _ = std::fs::remove_file(&path);
            r?;
            d?;
            Ok(secs)
        };
        let ip_batch_v4_s = ip_batch(false)
            .map_err(|e| eprintln!("bench: ip -batch: {e:#}"))
            .ok();
        let ip_batch_v6_s = ip_batch(true)
            .map_err(|e| eprintln!("bench: ip -batch: {e:#}"))
            .ok();
        Ok(BindReport {
            per_family: n,
            add_v4_s,
            add_v6_s,
            del_s,
            on_interface,
            map_entries,
            ip_batch_v4_s,
            ip_batch_v6_s,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_hold_n_addresses() {
        assert_eq!(v4_range(10_000), "10.200.100.0-10.200.139.15");
        assert_eq!(v6_range(10_000), "fd00:200:100::1-fd00:200:100::2710");
    }
}

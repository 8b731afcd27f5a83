//! Part 2: Debian's xdp-filter (xdp-tools) on the same frames, timed with
//! `BPF_PROG_TEST_RUN` like xdpgate, and the handle part 3 uses to drive it.
//!
//! xdp-filter keeps its state in bpffs (`/sys/fs/bpf/xdp-filter`) and a lock
//! file, both global to the machine: if another xdp-filter is loaded anywhere
//! the benchmark leaves it alone and skips this part.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context as _, anyhow, bail};
use serde::Serialize;
use xdpgate_model::acl::random::Rng;
use xdpgate_tests::lab::{Lab, Netns};

use crate::{
    bpf, testrun,
    workload::{self, Class},
};

const PIN_DIR: &str = "/sys/fs/bpf/xdp-filter";
const LOCK: &str = "/run/xdp-filter.lck";

/// xdp-filter loaded on one interface of a namespace; unloaded on drop.
pub(crate) struct XdpFilter<'a> {
    ns: &'a Netns,
    iface: String,
    /// Addresses added per family.
    pub v4: usize,
    /// Addresses added per family.
    pub v6: usize,
}

fn xdp_filter_running() -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "xdp-filter")
    })
}

impl<'a> XdpFilter<'a> {
    /// `xdp-filter load IFACE --mode native` inside `ns`.
    pub(crate) fn load(ns: &'a Netns, iface: &str) -> anyhow::Result<Self> {
        if Path::new(PIN_DIR).exists() {
            bail!(
                "{PIN_DIR} exists: an xdp-filter is already loaded on this machine; \
                 the benchmark does not touch it (xdp-filter's state is global)"
            );
        }
        if Path::new(LOCK).exists() && !xdp_filter_running() {
            eprintln!("bench: removing stale {LOCK} (no xdp-filter process is running)");
            std::fs::remove_file(LOCK).with_context(|| format!("removing {LOCK}"))?;
        }
        ns.exec("xdp-filter", &["load", iface, "--mode", "native"])
            .context("xdp-filter load")?;
        Ok(XdpFilter {
            ns,
            iface: iface.to_owned(),
            v4: 0,
            v6: 0,
        })
    }

    /// `xdp-filter ip ADDR --mode src`.
    pub(crate) fn deny_src(&mut self, addr: IpAddr) -> anyhow::Result<()> {
        self.ns
            .exec("xdp-filter", &["ip", &addr.to_string(), "--mode", "src"])
            .with_context(|| format!("xdp-filter ip {addr}"))?;
        match addr {
            IpAddr::V4(_) => self.v4 += 1,
            IpAddr::V6(_) => self.v6 += 1,
        }
        Ok(())
    }

    /// The kernel id of the program attached to the interface.
    pub(crate) fn prog_id(&self) -> anyhow::Result<u32> {
        let out = self
            .ns
            .exec("ip", &["-j", "-d", "link", "show", "dev", &self.iface])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("ip -j output")?;
        v[0]["xdp"]["prog"]["id"]
            .as_u64()
            .or_else(|| v[0]["xdp"]["attached"][0]["prog"]["id"].as_u64())
            .map(|id| id as u32)
            .ok_or_else(|| anyhow!("no XDP program on {}: {out}", self.iface))
    }

    /// Packets xdp-filter counted as XDP_DROP (`xdp-filter status`).
    pub(crate) fn drops(&self) -> anyhow::Result<u64> {
        let out = self.ns.exec("xdp-filter", &["status"])?;
        out.lines()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("XDP_DROP")).then(|| w.next()?.parse().ok())?
            })
            .ok_or_else(|| anyhow!("no XDP_DROP line in xdp-filter status: {out}"))
    }
}

impl Drop for XdpFilter<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.ns.exec("xdp-filter", &["unload", &self.iface]) {
            eprintln!("bench: xdp-filter unload {}: {e}", self.iface);
        }
    }
}

/// Random addresses to fill xdp-filter's deny list (198.18.0.0/15 and
/// 2001:db8:f000::/36, so none is a test packet's source).
fn filler(i: usize, rng: &mut Rng, v6: bool) -> IpAddr {
    if v6 {
        let a = (0x2001_0db8_f000_u128 << 80) | (i as u128) << 32 | rng.below(1 << 32) as u128;
        Ipv6Addr::from(a).into()
    } else {
        Ipv4Addr::from(0xc612_0000 | (i as u32 & 0x1_ffff)).into()
    }
}

/// One deny-list size.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct FilterConfig {
    /// Addresses per family.
    pub entries: usize,
    /// Time to add them with one `xdp-filter ip` per address.
    pub add_s: f64,
    /// Per class: ns, ratio to the empty program on the same frame, action.
    pub classes: BTreeMap<String, testrun::ClassResult>,
}

/// Part 2's results.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct FilterReport {
    /// The program name the kernel reports.
    pub program: String,
    /// Deny-list sizes measured.
    pub configs: Vec<FilterConfig>,
    /// Most entries per family xdp-filter's maps take.
    pub map_capacity: usize,
}

/// xdp-filter's map size per family (its `filter_ipv4`/`filter_ipv6` maps).
const XDP_FILTER_CAPACITY: usize = 10_000;

/// Runs part 2 in the lab's namespace `a`.
pub(crate) fn run(
    lab: &Lab,
    repeat: u32,
    classes: &[Class],
    sizes: &[usize],
) -> anyhow::Result<FilterReport> {
    let empty_fd = bpf::load_constant_xdp(bpf::XDP_PASS, "bench_empty")
        .context("loading the empty XDP program")?;
    let mut xf = XdpFilter::load(&lab.a, &lab.a_end.ifname)?;
    for a in [
        workload::HIT_V4.into(),
        workload::NEST_V4.into(),
        workload::HIT_V6.into(),
        workload::NEST_V6.into(),
    ] {
        xf.deny_src(a)?;
    }
    let id = xf.prog_id()?;
    let fd = bpf::prog_fd_by_id(id).with_context(|| format!("BPF_PROG_GET_FD_BY_ID {id}"))?;
    let program = lab
        .a
        .exec(
            "ip",
            &["-j", "-d", "link", "show", "dev", &lab.a_end.ifname],
        )
        .ok()
        .and_then(|o| serde_json::from_str::<serde_json::Value>(&o).ok())
        .and_then(|v| v[0]["xdp"]["prog"]["name"].as_str().map(String::from))
        .unwrap_or_default();
    let mut rng = Rng::new(0xf117);
    let mut configs = Vec::new();
    for &n in sizes {
        let n = n.min(XDP_FILTER_CAPACITY);
        eprintln!("bench: xdp-filter: adding {n} source addresses per family ...");
        let t = std::time::Instant::now();
        while xf.v4 < n {
            let a = filler(xf.v4, &mut rng, false);
            xf.deny_src(a)?;
        }
        while xf.v6 < n {
            let a = filler(xf.v6, &mut rng, true);
            xf.deny_src(a)?;
        }
        let add_s = t.elapsed().as_secs_f64();
        let results = lab.a.run(|| -> anyhow::Result<_> {
            let mut results = BTreeMap::new();
            for c in classes {
                let res = testrun::side_by_side(&empty_fd, &c.frame, repeat, || {
                    let r = bpf::test_run(&fd, &c.frame, repeat)?;
                    Ok((r.duration, r.retval))
                })?;
                results.insert(c.name.to_string(), res);
            }
            Ok(results)
        })?;
        configs.push(FilterConfig {
            entries: n,
            add_s,
            classes: results,
        });
    }
    Ok(FilterReport {
        program,
        configs,
        map_capacity: XDP_FILTER_CAPACITY,
    })
}

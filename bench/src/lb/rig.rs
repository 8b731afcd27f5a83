//! The rig in part 1's namespace: forwarding, the veth pair and the
//! backends' neighbours; which backend a forwarded frame went to; the first
//! flow of a service that reaches a backend of the wanted family.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, bail};
use xdpgate::{datapath::Datapath, lb::LbController};
use xdpgate_model::lb::ServiceId;
use xdpgate_tests::lab::Netns;

use super::{
    FIRST_SPORT, PEER, PORT, VETH, VETH_MAC, XDP_REDIRECT, backend_mac, backends, mac_string,
};

/// Sets up forwarding, the veth pair and the backends' neighbours in `ns`.
pub(super) fn setup_network(ns: &Netns) -> anyhow::Result<()> {
    for key in [
        "net.ipv4.conf.all.forwarding",
        "net.ipv6.conf.all.forwarding",
    ] {
        ns.sysctl(key, "1")
            .with_context(|| format!("setting {key} in the benchmark namespace"))?;
    }
    let ip = |args: &[&str]| -> anyhow::Result<()> {
        ns.exec("ip", args)
            .with_context(|| format!("ip {}", args.join(" ")))?;
        Ok(())
    };
    let mac = mac_string(VETH_MAC);
    ip(&[
        "link", "add", VETH, "address", &mac, "type", "veth", "peer", "name", PEER,
    ])?;
    ip(&["addr", "add", "10.200.9.1/24", "dev", VETH])?;
    ip(&["addr", "add", "fd00:200:9::1/64", "dev", VETH, "nodad"])?;
    ip(&["link", "set", VETH, "up"])?;
    ip(&["link", "set", PEER, "up"])?;
    for b in backends() {
        ip(&[
            "neigh",
            "replace",
            &b.to_string(),
            "lladdr",
            &mac_string(backend_mac(b)),
            "dev",
            VETH,
            "nud",
            "permanent",
        ])?;
    }
    Ok(())
}

/// The backend a forwarded frame went to: the outer destination of an
/// encapsulation, or (`dsr`) the backend whose neighbour MAC is the
/// destination MAC; `None` if it is not one of [`backends`].
fn sent_to(o: &[u8], dsr: bool) -> Option<IpAddr> {
    let a = if dsr {
        match o.get(0..6)? {
            [0x02, 0, 0, 0, 0x09, n] => IpAddr::V4(Ipv4Addr::new(10, 200, 9, *n)),
            [0x02, 0, 0, 0x06, 0x09, n] => {
                let net = u128::from(Ipv6Addr::new(0xfd00, 0x200, 9, 0, 0, 0, 0, 0));
                IpAddr::V6((net + u128::from(*n)).into())
            }
            _ => return None,
        }
    } else if o.get(12..14)? == [0x08, 0x00] && matches!(o.get(23)?, 4 | 41) {
        let d: [u8; 4] = o.get(30..34)?.try_into().ok()?;
        IpAddr::V4(d.into())
    } else if o.get(12..14)? == [0x86, 0xdd] && matches!(o.get(20)?, 4 | 41) {
        let d: [u8; 16] = o.get(38..54)?.try_into().ok()?;
        IpAddr::V6(d.into())
    } else {
        return None;
    };
    backends().contains(&a).then_some(a)
}

/// A flow of a service: its source port, the backend the datapath sends it
/// to, and the one `LbController::predict` names.
pub(super) struct Flow {
    pub(super) sport: u16,
    pub(super) backend: IpAddr,
    pub(super) predicted: Option<IpAddr>,
}

/// The first source port from [`FIRST_SPORT`] whose frame (`frame(sport)`)
/// the datapath forwards to a backend of the wanted family. Asked of the
/// datapath itself (one run per port), not of the controller's prediction.
pub(super) fn pick_flow(
    dp: &mut Datapath,
    ctl: &LbController,
    id: &ServiceId,
    src: IpAddr,
    want_v4: bool,
    dsr: bool,
    frame: impl Fn(u16) -> Vec<u8>,
) -> anyhow::Result<Flow> {
    for sport in FIRST_SPORT..FIRST_SPORT + 1000 {
        let o = dp.test_run(&frame(sport), 1)?;
        if o.action != XDP_REDIRECT {
            continue;
        }
        if let Some(backend) = sent_to(&o.frame, dsr)
            && backend.is_ipv4() == want_v4
        {
            return Ok(Flow {
                sport,
                backend,
                predicted: ctl.predict(id, src, sport, PORT),
            });
        }
    }
    bail!("{id}: no source port of 1,000 is forwarded to a backend of the wanted family")
}

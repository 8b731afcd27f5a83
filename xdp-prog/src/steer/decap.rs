//! Decapsulation (`IFACE_DECAP`): an IPv4 packet of protocol 4 (IPIP) or 41
//! (IPv6-in-IPv4), or an IPv6 packet whose fixed header's next header is 4
//! or 41, addressed to an outer destination listed in `maps::DECAP_DSTS` for
//! the interface, loses its outer header; the inner packet goes to the stack
//! with the original Ethernet addresses. Outer IPv6 extension headers, outer
//! fragments and VLAN tags are not decapsulated (the packet passes
//! unchanged).
use aya_ebpf::programs::XdpContext;
use xdpgate_common::{
    Action, Family, LocalAddrKey,
    lb::{FAMILY_V4, FAMILY_V6},
    wire::{ETH_HLEN, IPPROTO_IPIP, IPPROTO_IPV6, IPV4_VERSION, IPV6_HLEN, IPV6_VERSION},
};

use crate::{
    cursor::Frame,
    handoff::{SteerCtx, addr_bytes},
    maps::DECAP_DSTS,
    stats,
    wire::{ETH_IP_BYTES, ETH_IPV6_BYTES, EthHdr, Ipv4Hdr, Ipv6Hdr},
};

/// Decapsulates a tunnelled packet to a listed outer destination; `None`
/// leaves the packet to the load balancer / the stack unchanged.
#[inline(always)]
pub(super) fn decap(ctx: &XdpContext, s: &SteerCtx) -> Option<Action> {
    let outer_v4 = s.family == Family::Ipv4 as u32;
    let key = LocalAddrKey {
        slot: s.slot,
        family: s.family,
        addr: addr_bytes(&s.dst),
    };
    let key = &key;
    // SAFETY: presence check only.
    unsafe { DECAP_DSTS.get(key) }?;
    let mut f = Frame::new(ctx);
    let eth = f.read::<EthHdr>(0)?;
    let (inner_off, proto) = if outer_v4 {
        if eth.ether_type != ETH_IP_BYTES {
            return None;
        }
        let ip = f.at::<Ipv4Hdr>(ETH_HLEN)?;
        // A fragment of a tunnelled packet is left to the stack.
        if ip.is_fragment() {
            return None;
        }
        (
            ETH_HLEN + ((ip.version_ihl & 0x0f) as usize) * 4,
            ip.protocol,
        )
    } else {
        if eth.ether_type != ETH_IPV6_BYTES {
            return None;
        }
        let ip = f.at::<Ipv6Hdr>(ETH_HLEN)?;
        (ETH_HLEN + IPV6_HLEN, ip.next_hdr)
    };
    let inner_v4 = match proto {
        IPPROTO_IPIP => true,
        IPPROTO_IPV6 => false,
        // Tunnel protocol behind IPv6 extension headers: not decapsulated.
        _ => return None,
    };
    // The inner fixed header must be there, with its version.
    let version = if inner_v4 {
        f.at::<Ipv4Hdr>(inner_off)?.version_ihl >> 4
    } else {
        f.at::<Ipv6Hdr>(inner_off)?.version_tc >> 4
    };
    if version != if inner_v4 { IPV4_VERSION } else { IPV6_VERSION } {
        return None;
    }
    let new_eth = EthHdr {
        dst: eth.dst,
        src: eth.src,
        ether_type: if inner_v4 {
            ETH_IP_BYTES
        } else {
            ETH_IPV6_BYTES
        },
    };
    if !f.write(inner_off - ETH_HLEN, &new_eth) {
        return None;
    }
    if !f.adjust_head((inner_off - ETH_HLEN) as i32) {
        return Some(Action::Aborted);
    }
    stats::count_decap(
        s.slot,
        if outer_v4 { FAMILY_V4 } else { FAMILY_V6 },
        if inner_v4 { FAMILY_V4 } else { FAMILY_V6 },
        s.bytes,
    );
    Some(Action::Pass)
}

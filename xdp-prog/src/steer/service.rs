//! Service lookup: a packet with ports to a service in `maps::LB_SERVICES`
//! (by VIP, protocol and port, then by VIP and protocol with port 0) that
//! can be balanced goes to the backend its flow hash (the service's kind,
//! `FlowHash`) picks from the service's Maglev ring (`maps::LB_RINGS`), by
//! L2 DSR or encapsulated (the service's mode); the service's and backend's
//! counters are kept here.
use aya_ebpf::programs::XdpContext;
use xdpgate_common::{
    Action, DropReason, Family,
    lb::{FlowHash, SERVICE_L2DSR, ServiceKey, ServiceStat},
    wire::ETH_HLEN,
};

use super::{encap::encap, l2dsr::l2dsr, nexthop::Outcome};
use crate::{
    cursor::Frame,
    handoff::{SteerCtx, addr_bytes},
    maps::{LB_BACKENDS, LB_NEXTHOP, LB_RINGS, LB_SERVICES},
    stats,
    wire::{ETH_IP_BYTES, ETH_IPV6_BYTES, EthHdr, Ipv4Hdr, Ipv6Hdr},
};

/// Looks the packet up in the services and forwards it to its backend.
#[inline(always)]
pub(super) fn lb(ctx: &XdpContext, s: &SteerCtx) -> Outcome {
    let mut key = ServiceKey {
        addr: addr_bytes(&s.dst),
        port: s.dport.to_be(),
        proto: s.proto,
        family: s.family as u8,
    };
    // Through references: `get(key)` would copy the key first.
    let k = &key;
    // SAFETY: plain data, copied out.
    let info = match unsafe { LB_SERVICES.get(k) } {
        Some(info) => *info,
        None => {
            key.port = 0;
            let k = &key;
            // SAFETY: as above.
            match unsafe { LB_SERVICES.get(k) } {
                Some(info) => *info,
                None => return Outcome::Act(Action::Pass),
            }
        }
    };
    if !balanceable(ctx, s) {
        return Outcome::Bypass;
    }
    let out = forward(ctx, s, info.ring_base, info.ring_size, info.flags);
    match out {
        Outcome::Act(Action::Pass) => {
            stats::count_service(info.slot, ServiceStat::SlowPath, s.bytes);
        }
        Outcome::Act(_) => stats::count_service(info.slot, ServiceStat::Forwarded, s.bytes),
        Outcome::Drop(_) => stats::count_service(info.slot, ServiceStat::Dropped, s.bytes),
        Outcome::Bypass => {}
    }
    out
}

/// Whether a packet to a service can be balanced: an untagged frame of its
/// family that is not a fragment. IPv4: no MF flag and offset 0. IPv6: the
/// fixed header's next header is the transport protocol itself (a fragment
/// header, or any extension header, before it: not balanced). Fragments carry
/// ports only in the first one, so balancing by ports would split them.
#[inline(always)]
fn balanceable(ctx: &XdpContext, s: &SteerCtx) -> bool {
    let mut f = Frame::new(ctx);
    let Some(eth) = f.at::<EthHdr>(0) else {
        return false;
    };
    if s.family == Family::Ipv4 as u32 {
        if eth.ether_type != ETH_IP_BYTES {
            return false;
        }
        let Some(ip) = f.at::<Ipv4Hdr>(ETH_HLEN) else {
            return false;
        };
        !ip.is_fragment()
    } else {
        if eth.ether_type != ETH_IPV6_BYTES {
            return false;
        }
        let Some(ip) = f.at::<Ipv6Hdr>(ETH_HLEN) else {
            return false;
        };
        ip.next_hdr == s.proto
    }
}

/// Picks the backend from the ring and forwards to it.
#[inline(always)]
fn forward(ctx: &XdpContext, s: &SteerCtx, ring_base: u32, ring_size: u32, flags: u32) -> Outcome {
    if ring_size == 0 {
        return Outcome::Drop(DropReason::LbNoBackend);
    }
    // The service's own hash (`SERVICE_HASH_FAST`): entries pinned before
    // the flag existed keep MurmurHash3, so their flows stay where they were.
    let v4 = s.family == Family::Ipv4 as u32;
    let hash = FlowHash::of_flags(flags).hash(v4, &s.src, &s.dst, s.sport, s.dport, s.proto);
    let slot = match LB_RINGS.get(ring_base + hash % ring_size) {
        Some(slot) => *slot,
        None => 0,
    };
    if slot == 0 {
        return Outcome::Drop(DropReason::LbNoBackend);
    }
    let Some(backend) = LB_BACKENDS.get(slot) else {
        return Outcome::Drop(DropReason::LbNoBackend);
    };
    // Same index range as `LB_BACKENDS`: present whenever the backend is.
    let Some(hop) = LB_NEXTHOP.get_ptr_mut(slot) else {
        return Outcome::Drop(DropReason::LbNoRoute);
    };
    let out = if flags & SERVICE_L2DSR != 0 {
        l2dsr(ctx, s, backend, hop)
    } else {
        encap(ctx, s, backend, hop, hash)
    };
    if let Outcome::Act(_) = out {
        // Read anew (volatile): otherwise LLVM reuses the length an earlier
        // load left on some paths, which keeps it live (spilled) across the
        // helper calls of the others (measured on 6.18: 4,603 verified
        // instructions instead of 4,523).
        // SAFETY: a field of the per-CPU value `s` refers to.
        let bytes = unsafe { core::ptr::read_volatile(&raw const s.bytes) };
        stats::count_backend(slot, bytes);
    }
    out
}

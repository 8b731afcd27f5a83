//! Encapsulation: the packet gets an outer IPv4 or IPv6 header of the
//! backend's family (IPIP, IPv6-in-IPv4, IPv4-in-IPv6 or IP6IP6), whose
//! source varies per flow within the configured prefix (`maps::LB_CONFIG`),
//! and a new Ethernet header towards the next hop; without a neighbour entry
//! for the next hop yet, the stack forwards it (counted `slow_path`).
use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    programs::XdpContext,
};
use xdpgate_common::{
    Action, DropReason, Family,
    csum::{add32, fold32},
    lb::{Backend, DEFAULT_OUTER_TTL, FAMILY_V4, LbConfig},
    wire::{
        ETH_HLEN, IPPROTO_IPIP, IPPROTO_IPV6, IPV4_DST, IPV4_HLEN, IPV4_SRC, IPV4_VERSION_IHL,
        IPV4_VERSION_IHL_NO_OPTIONS, IPV6_DST, IPV6_HLEN, IPV6_SRC, IPV6_VERSION, IPV6_VERSION_TC,
    },
};

use super::nexthop::{Outcome, hop_macs, resolve, send};
use crate::{
    cursor::Frame,
    handoff::{HOP_ENCAP, NextHop, SteerCtx},
    maps::LB_CONFIG,
    wire::{ETH_IP_BYTES, ETH_IPV6_BYTES, EthHdr, Ipv4Hdr, Ipv6Hdr},
};

/// The outer source for a flow: the configured prefix with the flow hash in
/// its host bits.
#[inline(always)]
fn outer_source(cfg: &LbConfig, v4: bool, hash: u32) -> [u8; 16] {
    let mut src = [0u8; 16];
    if v4 {
        let word = u32::from_be_bytes(cfg.src_v4) | (hash & cfg.mask_v4);
        src[..4].copy_from_slice(&word.to_be_bytes());
    } else {
        src = cfg.src_v6;
        let last = u32::from_be_bytes([src[12], src[13], src[14], src[15]]) | (hash & cfg.mask_v6);
        src[12..16].copy_from_slice(&last.to_be_bytes());
    }
    src
}

/// An address as four words, bytes in memory order.
#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// Encapsulates the packet in an outer header of the backend's family and
/// sends it to the backend.
#[inline(always)]
pub(super) fn encap(
    ctx: &XdpContext,
    s: &SteerCtx,
    backend: &Backend,
    hop: *mut NextHop,
    hash: u32,
) -> Outcome {
    let inner_v4 = s.family == Family::Ipv4 as u32;
    let outer_v4 = backend.family == FAMILY_V4 as u32;
    let default = LbConfig::default();
    let cfg = LB_CONFIG.get(0).unwrap_or(&default);
    let ttl = if cfg.ttl == 0 || cfg.ttl > 255 {
        DEFAULT_OUTER_TTL as u8
    } else {
        cfg.ttl as u8
    };
    let mut f = Frame::new(ctx);
    let Some(eth) = f.read::<EthHdr>(0) else {
        return Outcome::Bypass;
    };
    // Inner length (from its own header: Ethernet padding is not carried)
    // and traffic class. The length's bytes are picked one by one: the
    // field's array passed whole to `from_be_bytes` measured about 100
    // verified instructions more (6.18).
    let (inner_len, tos) = if inner_v4 {
        if eth.ether_type != ETH_IP_BYTES {
            return Outcome::Bypass;
        }
        let Some(ip) = f.at::<Ipv4Hdr>(ETH_HLEN) else {
            return Outcome::Bypass;
        };
        (
            u16::from_be_bytes([ip.tot_len[0], ip.tot_len[1]]) as u32,
            ip.tos,
        )
    } else {
        if eth.ether_type != ETH_IPV6_BYTES {
            return Outcome::Bypass;
        }
        let Some(ip) = f.at::<Ipv6Hdr>(ETH_HLEN) else {
            return Outcome::Bypass;
        };
        (
            u16::from_be_bytes([ip.payload_len[0], ip.payload_len[1]]) as u32 + IPV6_HLEN as u32,
            (ip.version_tc << 4) | (ip.tc_flow[0] >> 4),
        )
    };
    let hdr_len = if outer_v4 { IPV4_HLEN } else { IPV6_HLEN } as u32;
    let outer_len = inner_len + hdr_len;
    if outer_len > 0xffff {
        return Outcome::Drop(DropReason::LbTooBig);
    }
    let proto = if inner_v4 { IPPROTO_IPIP } else { IPPROTO_IPV6 };
    let src = outer_source(cfg, outer_v4, hash);
    let ret = resolve(
        ctx,
        hop,
        backend,
        HOP_ENCAP,
        &words(&src),
        proto,
        outer_len as u16,
    );
    let (dmac, smac, egress) = if ret == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        let (d, m) = hop_macs(hop);
        // SAFETY: `resolve` filled this CPU's entry.
        (d, m, unsafe { (*hop).ifindex })
    } else if ret == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        // The stack forwards it and resolves the neighbour meanwhile.
        (eth.dst, eth.src, 0)
    } else if ret == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        return Outcome::Drop(DropReason::LbTooBig);
    } else {
        return Outcome::Drop(DropReason::LbNoRoute);
    };
    if !f.adjust_head(-(hdr_len as i32)) {
        return Outcome::Drop(DropReason::LbTooBig);
    }
    let mut f = Frame::new(ctx);
    let new_eth = EthHdr {
        dst: dmac,
        src: smac,
        ether_type: if outer_v4 {
            ETH_IP_BYTES
        } else {
            ETH_IPV6_BYTES
        },
    };
    if !f.write(0, &new_eth) {
        return Outcome::Act(Action::Aborted);
    }
    let dst = &backend.addr;
    // In pieces, from values already at hand: no header-sized copy on the
    // stack (the steering program's frame is close to the 512-byte limit).
    let written = if outer_v4 {
        let src_word = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        let dst_word = u32::from_be_bytes([dst[0], dst[1], dst[2], dst[3]]);
        // RFC 1071 over the ten header words (identification and fragment
        // offset are zero, so they add nothing).
        let mut sum = ((IPV4_VERSION_IHL_NO_OPTIONS as u32) << 8) | tos as u32;
        sum += outer_len;
        sum += ((ttl as u32) << 8) | proto as u32;
        sum = add32(sum, src_word);
        sum = add32(sum, dst_word);
        let ck = (!fold32(sum)).to_be_bytes();
        let len = (outer_len as u16).to_be_bytes();
        // Version/IHL, TOS, total length, identification, flags/fragment
        // offset, TTL, protocol, checksum; then the addresses.
        f.write(
            ETH_HLEN + IPV4_VERSION_IHL,
            &[
                IPV4_VERSION_IHL_NO_OPTIONS,
                tos,
                len[0],
                len[1],
                0,
                0,
                0,
                0,
                ttl,
                proto,
                ck[0],
                ck[1],
            ],
        ) && f.write(ETH_HLEN + IPV4_SRC, &src_word.to_be_bytes())
            && f.write(ETH_HLEN + IPV4_DST, &dst_word.to_be_bytes())
    } else {
        let flow = hash & 0x000f_ffff;
        let len = (inner_len as u16).to_be_bytes();
        // Version, traffic class and flow label, payload length, next
        // header, hop limit; then the addresses.
        f.write(
            ETH_HLEN + IPV6_VERSION_TC,
            &[
                (IPV6_VERSION << 4) | (tos >> 4),
                ((tos & 0x0f) << 4) | (flow >> 16) as u8,
                (flow >> 8) as u8,
                flow as u8,
                len[0],
                len[1],
                proto,
                ttl,
            ],
        ) && f.write(ETH_HLEN + IPV6_SRC, &src)
            && f.write(ETH_HLEN + IPV6_DST, dst)
    };
    if !written {
        return Outcome::Act(Action::Aborted);
    }
    if egress == 0 {
        return Outcome::Act(Action::Pass);
    }
    send(ctx, egress)
}

//! L2 direct server return: the backend must be on-link (the FIB lookup's
//! next hop is the backend itself); only the Ethernet addresses change, and
//! the frame goes out towards the backend unchanged otherwise.
use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    programs::XdpContext,
};
use xdpgate_common::{
    DropReason,
    lb::Backend,
    wire::{ETH_DST, ETH_HLEN},
};

use super::nexthop::{Outcome, hop_macs, resolve, send};
use crate::{
    cursor::Frame,
    handoff::{HOP_L2DSR, NextHop, SteerCtx},
};

/// L2 direct server return: the backend must be on-link; only the Ethernet
/// addresses change.
#[inline(always)]
pub(super) fn l2dsr(
    ctx: &XdpContext,
    s: &SteerCtx,
    backend: &Backend,
    hop: *mut NextHop,
) -> Outcome {
    let len = (s.bytes as u16).saturating_sub(ETH_HLEN as u16);
    let ret = resolve(ctx, hop, backend, HOP_L2DSR, &[0; 4], 0, len);
    if ret == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return Outcome::Drop(DropReason::LbNoNeighbor);
    }
    if ret == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        return Outcome::Drop(DropReason::LbTooBig);
    }
    if ret != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Outcome::Drop(DropReason::LbNoRoute);
    }
    let (d, m) = hop_macs(hop);
    // SAFETY: `resolve` filled this CPU's entry.
    let egress = unsafe { (*hop).ifindex };
    // Destination then source MAC: the first 12 bytes of the header.
    let macs = [
        d[0], d[1], d[2], d[3], d[4], d[5], m[0], m[1], m[2], m[3], m[4], m[5],
    ];
    if !Frame::new(ctx).write(ETH_DST, &macs) {
        return Outcome::Bypass;
    }
    send(ctx, egress)
}

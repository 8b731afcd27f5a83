//! Measurement only: the wrappers the benchmark times the load-balancer path
//! with (`xdpgate_time_path`, `xdpgate_time_noop` in `main.rs`). Never
//! loaded by the daemon (`Datapath` loads them only on request, for the
//! benchmark, on the benchmark host's kernel): they are not held to 6.1's
//! verifier budget and `cargo xtask vmtest` does not load them.
//!
//! Why: `BPF_PROG_TEST_RUN` with `repeat` N runs a program N times on one
//! `xdp_buff` without restoring it (net/bpf/test_run.c), so from the second
//! repetition an encapsulating program sees its own output, addressed to a
//! backend and not to a VIP, and takes a cheaper path. The path wrapper runs
//! the path (the main program's work with the steering program's called
//! directly instead of tail-called: `gate::<true>`) between [`save`] and
//! [`restore`], which restores the frame the path was given: the head moved
//! back by what the path prepended
//! (`bpf_xdp_adjust_head`) and the Ethernet header written back. That undoes
//! what the load balancer does to a frame (encapsulation: an outer header
//! prepended, a new Ethernet header written over the original one; L2 DSR:
//! the Ethernet addresses rewritten), so every repetition sees the original
//! bytes. Decapsulation overwrites the outer header it strips, which this
//! does not restore: the benchmark checks each class's output frame against
//! its input.
//!
//! The no-op wrapper does the same save and restore work (a head adjustment
//! by 0 bytes and the same Ethernet write) and the same two BPF-to-BPF calls
//! around nothing, so `path - noop` is the path's own cost.
use aya_ebpf::programs::XdpContext;
use xdpgate_common::Action;

use crate::{cursor::Frame, wire::EthHdr};

/// What `gate::<true>` returns where the main program would tail-call the
/// steering program: not an XDP action.
pub(crate) const STEER: u32 = u32::MAX;

/// What [`restore`] needs: the frame's length and Ethernet header as the
/// path was given them (the header as three words: kept as 14 bytes, it
/// took 14 stack slots of 8 bytes, and the wrapper's stack with the
/// steering program's exceeded 512 bytes, measured on 6.18).
pub(crate) struct Saved {
    len: i64,
    eth: (u64, u32, u16),
}

/// Saves what [`restore`] puts back; `None` when the frame is too short for
/// an Ethernet header.
#[inline(always)]
pub(crate) fn save(ctx: &XdpContext) -> Option<Saved> {
    let len = (ctx.data_end() - ctx.data()) as i64;
    // Through memory, so that LLVM keeps the length and not the two packet
    // pointers (it would compute the difference after the path as pointer
    // arithmetic, which the verifier refuses).
    // SAFETY: reads a local through a valid pointer.
    let len = unsafe { core::ptr::read_volatile(&raw const len) };
    let h = Frame::new(ctx).read::<EthHdr>(0)?;
    let (d, m, t) = (h.dst, h.src, h.ether_type);
    let eth = (
        u64::from_ne_bytes([d[0], d[1], d[2], d[3], d[4], d[5], m[0], m[1]]),
        u32::from_ne_bytes([m[2], m[3], m[4], m[5]]),
        u16::from_ne_bytes(t),
    );
    // Through memory as words: otherwise LLVM keeps the 14 bytes apart.
    // SAFETY: reads a local through a valid pointer.
    let eth = unsafe { core::ptr::read_volatile(&raw const eth) };
    Some(Saved { len, eth })
}

/// Restores the frame [`save`] saw (see the module) after the path returned
/// `action`; returns `action`, or XDP_ABORTED when the kernel refused the
/// head adjustment or the frame no longer holds an Ethernet header.
#[inline(always)]
pub(crate) fn restore(ctx: &XdpContext, saved: &Saved, action: u32) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as i64;
    // SAFETY: as in `save` (here LLVM would add the saved length to a
    // packet pointer instead).
    let len = unsafe { core::ptr::read_volatile(&raw const len) };
    // What the path prepended (negative: stripped), undone with one head
    // adjustment in every case, so both wrappers make the same helper call.
    let grown = len - saved.len;
    if !Frame::new(ctx).adjust_head(grown as i32) {
        return Action::Aborted as u32;
    }
    let (a, b, c) = (
        saved.eth.0.to_ne_bytes(),
        saved.eth.1.to_ne_bytes(),
        saved.eth.2.to_ne_bytes(),
    );
    let eth = EthHdr {
        dst: [a[0], a[1], a[2], a[3], a[4], a[5]],
        src: [a[6], a[7], b[0], b[1], b[2], b[3]],
        ether_type: c,
    };
    if !Frame::new(ctx).write(0, &eth) {
        return Action::Aborted as u32;
    }
    action
}

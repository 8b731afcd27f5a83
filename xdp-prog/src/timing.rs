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
//! bytes. Decapsulation strips the outer header and writes the Ethernet
//! header over the end of it, so the 20 bytes after the Ethernet header (an
//! outer IPv4 header) are saved and written back too. The benchmark checks
//! every wrapper run's output frame against its input.
//!
//! The no-op wrapper does the same save and restore work (a head adjustment
//! by 0 bytes and the same writes) and the same two BPF-to-BPF calls
//! around nothing, so `path - noop` is the path's own cost.
use aya_ebpf::programs::XdpContext;
use xdpgate_common::{Action, wire::ETH_HLEN};

use crate::cursor::Frame;

/// What `gate::<true>` returns where the main program would tail-call the
/// steering program: not an XDP action.
pub(crate) const STEER: u32 = u32::MAX;

/// What [`restore`] needs: the frame's length and its first [`SAVED`]
/// bytes as the path was given them (the Ethernet header and the 20 bytes
/// after it), packed into five words that are written and read through
/// memory one by one: kept as bytes, they took a stack slot of 8 bytes
/// each, and the wrapper's frame (at most 64 bytes: the chain through the
/// main program's calls is otherwise over 512, measured on 6.18) overflowed.
pub(crate) struct Saved {
    /// Bytes 0-31 of the frame, 8 per word; word 4: bytes 32-33 in its low
    /// 16 bits, the frame's length above them.
    words: [u64; 5],
}

/// Bytes at the start of the frame that [`restore`] writes back: the
/// Ethernet header and an IPv4 header without options after it (what
/// decapsulation overwrites).
const SAVED: usize = ETH_HLEN + 20;

/// The frame's length as a scalar: through memory, so that LLVM keeps the
/// length and not the two packet pointers (it would compute with the saved
/// length as pointer arithmetic, which the verifier refuses).
#[inline(always)]
fn frame_len(ctx: &XdpContext) -> u64 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    // SAFETY: reads a local through a valid pointer.
    unsafe { core::ptr::read_volatile(&raw const len) }
}

/// Saves what [`restore`] puts back; `None` when the frame is shorter than
/// [`SAVED`] bytes.
#[inline(always)]
pub(crate) fn save(ctx: &XdpContext) -> Option<Saved> {
    let len = frame_len(ctx);
    let mut f = Frame::new(ctx);
    let p = f.at::<[u8; SAVED]>(0)?;
    let w = |i: usize| {
        u64::from_ne_bytes([
            p[i],
            p[i + 1],
            p[i + 2],
            p[i + 3],
            p[i + 4],
            p[i + 5],
            p[i + 6],
            p[i + 7],
        ])
    };
    let words = [
        w(0),
        w(8),
        w(16),
        w(24),
        (u16::from_ne_bytes([p[32], p[33]]) as u64) | (len << 16),
    ];
    let mut saved = Saved { words: [0; 5] };
    for (i, v) in words.into_iter().enumerate() {
        // SAFETY: writes a local through a valid pointer.
        unsafe { core::ptr::write_volatile(&raw mut saved.words[i], v) };
    }
    Some(saved)
}

/// Restores the frame [`save`] saw (see the module) after the path returned
/// `action`; returns `action`, or XDP_ABORTED when the kernel refused the
/// head adjustment or the frame no longer holds what was saved.
#[inline(always)]
pub(crate) fn restore(ctx: &XdpContext, saved: &Saved, action: u32) -> u32 {
    // SAFETY: reads a field of a valid reference.
    let w = |i: usize| unsafe { core::ptr::read_volatile(&raw const saved.words[i]) };
    // What the path prepended (negative: stripped), undone with one head
    // adjustment in every case, so both wrappers make the same helper call.
    let grown = frame_len(ctx) as i64 - (w(4) >> 16) as i64;
    if !Frame::new(ctx).adjust_head(grown as i32) {
        return Action::Aborted as u32;
    }
    let mut f = Frame::new(ctx);
    for i in 0..4 {
        if !f.write(i * 8, &w(i).to_ne_bytes()) {
            return Action::Aborted as u32;
        }
    }
    if !f.write(32, &(w(4) as u16).to_ne_bytes()) {
        return Action::Aborted as u32;
    }
    action
}

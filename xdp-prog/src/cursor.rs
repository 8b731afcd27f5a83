//! The only module with packet pointers.
//!
//! [`Cursor`] reads a frame front to back for the parser; [`Frame`] gives the
//! steering program bounds-checked mutable access at fixed offsets and moves
//! the frame's start ([`Frame::adjust_head`]). Both prove to the verifier
//! that the bytes lie before `data_end` before they hand out a reference, and
//! they hand out references only to `wire::Header` types (alignment 1, any
//! byte pattern valid), so nothing else dereferences a packet pointer.
//! [`load`] reads a multi-byte field of such a header as one integer load.
use core::{marker::PhantomData, mem::size_of};

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};

use crate::wire::Header;

/// An integer (or integer array) [`load`] reads a header field as.
///
/// # Safety
///
/// Implementers are plain integers or arrays of them: every byte pattern is
/// a valid value.
pub(crate) unsafe trait Word: Copy {}
// SAFETY: plain integers and arrays of them.
unsafe impl Word for u16 {}
// SAFETY: as above.
unsafe impl Word for u32 {}
// SAFETY: as above.
unsafe impl Word for [u32; 4] {}

/// The bytes of header field `field` as a `T` of the same size, in memory
/// (network) byte order: one load per word of `T`.
///
/// The load is emitted as aligned for `T` although the field may not be (an
/// IPv4 address in an untagged frame is 2 bytes off a 4-byte boundary).
/// LLVM's BPF backend turns a load it cannot assume aligned
/// (`read_unaligned`) into byte loads and shifts: measured, 160,739 ->
/// 162,476 verified instructions on 6.18 for the main program, and more work
/// per packet. The BPF machine has no alignment requirement for packet loads
/// here: the program is not loaded with `BPF_F_STRICT_ALIGNMENT`, the
/// verifier accepts misaligned packet access on architectures with efficient
/// unaligned access (x86-64, arm64), and the JIT emits plain loads. This is
/// the one place that relies on that; the header structs with `u16`/`u32`
/// fields it replaced relied on it at every field.
#[inline(always)]
pub(crate) fn load<T: Word, const N: usize>(field: &[u8; N]) -> T {
    const { assert!(size_of::<T>() == N) };
    // SAFETY: `field` is N readable bytes (a reference handed out after a
    // bounds check) and any N bytes are a valid `T`. Rust wants `T`'s
    // alignment for this read; the BPF target does not (see above).
    unsafe { field.as_ptr().cast::<T>().read() }
}

/// Mask of a frame length: the verifier accepts a packet pointer plus a
/// scalar below 64 KiB only, and 6.1's loses the bounds of a clamped length
/// that the compiler spilled to the stack before clamping ("math between pkt
/// pointer and register with unbounded min value", measured in the VM
/// matrix), so [`Cursor::new`] masks the length right where it adds it. A
/// multi-buffer frame of 64 KiB or more is then seen shorter than its IP
/// length field and dropped as malformed (`bad_ipv4_length`,
/// `bad_ipv6_header`).
const FRAME_MASK: usize = 0xffff;

/// The frame's length in all its buffers (`bpf_xdp_get_buff_len`): with
/// multi-buffer frames (`xdp.frags`), `data_end` ends the first buffer only.
#[inline(always)]
pub(crate) fn frame_len(ctx: &XdpContext) -> usize {
    // SAFETY: `ctx.ctx` is this program's own context; the helper only reads it.
    unsafe { aya_ebpf::helpers::bpf_xdp_get_buff_len(ctx.ctx) as usize }
}

/// A bounds-checked read position in the frame.
///
/// Two bounds: `end` is the first buffer's `data_end`, the bound the verifier
/// knows and the end of what can be read; `limit` is where the frame ends
/// (all its buffers: a multi-buffer frame's `data_end` ends its first buffer
/// only), then where the IP packet ends according to its own length field
/// (once known), so Ethernet padding after the packet is never read as
/// headers and lengths are checked against the whole frame.
pub(crate) struct Cursor<'a> {
    start: usize,
    pos: usize,
    end: usize,
    limit: usize,
    /// The references handed out point into the frame of this context.
    _frame: PhantomData<&'a XdpContext>,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of a frame of `len` bytes in all its buffers
    /// ([`frame_len`]).
    #[inline(always)]
    pub(crate) fn new(ctx: &'a XdpContext, len: usize) -> Self {
        Cursor {
            start: ctx.data(),
            pos: ctx.data(),
            end: ctx.data_end(),
            limit: ctx.data() + (len & FRAME_MASK),
            _frame: PhantomData,
        }
    }

    /// The `T` at the cursor, advancing past it, or `None` if the frame ends
    /// before the whole `T`.
    #[inline(always)]
    pub(crate) fn take<T: Header>(&mut self) -> Option<&'a T> {
        let start = self.pos;
        if start + size_of::<T>() > self.end || start + size_of::<T>() > self.limit {
            return None;
        }
        self.pos = start + size_of::<T>();
        // SAFETY: the `size_of::<T>()` bytes at `start` lie inside the frame
        // (checked above), `T` has alignment 1 and no invalid values, and the
        // main program never moves or writes the frame while it parses.
        Some(unsafe { &*(start as *const T) })
    }

    /// Advances `len` bytes, or returns `None` if the frame ends first. `len`
    /// must be bounded by the caller (the verifier needs a maximum).
    #[inline(always)]
    pub(crate) fn skip(&mut self, len: usize) -> Option<()> {
        if self.pos + len > self.end || self.pos + len > self.limit {
            return None;
        }
        self.pos += len;
        Some(())
    }

    /// Bytes from the cursor to the end of the IP packet (or of the frame,
    /// before the packet's length is known).
    #[inline(always)]
    pub(crate) fn remaining(&self) -> usize {
        self.limit - self.pos
    }

    /// Ends the readable region `len` bytes after `from` (a position this cursor
    /// passed). The caller has checked that this lies within the frame.
    #[inline(always)]
    pub(crate) fn limit_to(&mut self, from: usize, len: usize) {
        self.limit = from + len;
    }

    /// The current position, for [`Cursor::limit_to`].
    #[inline(always)]
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// The current position as an offset from the start of the frame (what
    /// `bpf_xdp_load_bytes` takes).
    #[inline(always)]
    pub(crate) fn offset(&self) -> u16 {
        (self.pos - self.start) as u16
    }
}

/// Bounds-checked mutable access to the frame, for rewriting it. Regions are
/// `wire::Header` types (alignment 1), so no field is ever read or written
/// unaligned. [`Frame::adjust_head`] consumes the `Frame`: make a new one
/// afterwards (only one at a time: another would keep the old bounds).
pub(crate) struct Frame<'a> {
    ctx: &'a XdpContext,
    start: usize,
    end: usize,
}

impl<'a> Frame<'a> {
    /// The frame as it is now.
    #[inline(always)]
    pub(crate) fn new(ctx: &'a XdpContext) -> Self {
        Frame {
            ctx,
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// The `T` at offset `off`, or `None` if the frame ends first.
    /// `off` must be bounded by the caller (the verifier needs a maximum).
    #[inline(always)]
    pub(crate) fn at<T: Header>(&mut self, off: usize) -> Option<&mut T> {
        let at = self.start + off;
        // Through memory once, so LLVM cannot recompute the pointer after the
        // check (the recomputed register would lack the checked range).
        // SAFETY: reads a local through a valid pointer.
        let at = unsafe { core::ptr::read_volatile(&raw const at) };
        if at + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: the bytes lie inside the frame (checked above), `T` has
        // alignment 1 and no invalid values, and `&mut self` keeps the borrow
        // unique.
        Some(unsafe { &mut *(at as *mut T) })
    }

    /// A copy of the `T` at `off`, or `None` if the frame ends first.
    /// Byte by byte and volatile, so LLVM emits no `memcpy`/`memmove` call
    /// (the verifier loses packet bounds across such calls).
    #[inline(always)]
    pub(crate) fn read<T: Header + Copy>(&mut self, off: usize) -> Option<T> {
        let src = core::ptr::from_mut(self.at::<T>(off)?).cast::<u8>();
        let mut out = core::mem::MaybeUninit::<T>::uninit();
        let dst = out.as_mut_ptr().cast::<u8>();
        for i in 0..size_of::<T>() {
            // SAFETY: `i < size_of::<T>()`: inside the checked region and
            // inside `out`.
            unsafe { dst.add(i).write(core::ptr::read_volatile(src.add(i))) };
        }
        // SAFETY: every byte written above; any bytes are a valid `T`.
        Some(unsafe { out.assume_init() })
    }

    /// Writes `value` at `off`; false if the frame ends first. Byte by byte
    /// and volatile, like [`Frame::read`].
    #[inline(always)]
    pub(crate) fn write<T: Header>(&mut self, off: usize, value: &T) -> bool {
        let Some(dst) = self.at::<T>(off) else {
            return false;
        };
        let dst = core::ptr::from_mut(dst).cast::<u8>();
        let src = core::ptr::from_ref(value).cast::<u8>();
        for i in 0..size_of::<T>() {
            // SAFETY: `i < size_of::<T>()`: inside the checked region and
            // inside `value`.
            unsafe { core::ptr::write_volatile(dst.add(i), src.add(i).read()) };
        }
        true
    }

    /// Moves the start of the frame by `delta` bytes (negative: prepends room
    /// for headers; positive: strips them). False if the kernel refused.
    /// Every reference into the frame ends here.
    #[inline(always)]
    pub(crate) fn adjust_head(self, delta: i32) -> bool {
        // SAFETY: `ctx.ctx` is the program's context pointer.
        unsafe { bpf_xdp_adjust_head(self.ctx.ctx, delta) == 0 }
    }
}

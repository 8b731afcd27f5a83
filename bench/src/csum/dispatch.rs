//! The Internet checksum in user space, with the one's-complement sum
//! chosen for the running CPU: how far a checksum can go past the portable
//! one, measured by the `csum` part of the benchmark (no shipped path of the
//! daemon checksums packets, so this lives here, where it is used).
//!
//! [`xdpgate_common::csum`] is shared with the eBPF datapath, so it is
//! `no_std`, portable and compiled once for every x86-64 machine: its bulk
//! sum [`sum_wide`] is limited to the 128-bit SSE2 of the baseline target.
//! This module adds run-time dispatch: at the first
//! call, [`sum`] picks the best implementation the CPU supports (checked
//! with `is_x86_feature_detected!`) and keeps that choice for the life of
//! the process:
//!
//! 1. `avx512bw`: 512-bit vectors, and byte-masked loads for the last
//!    0-63 bytes;
//! 2. `avx2`: 256-bit vectors, masked loads of the last whole 64-bit words
//!    and scalar code for the last 0-7 bytes;
//! 3. `sum_wide`: the portable [`sum_wide`] (any other CPU or architecture).
//!
//! Every implementation returns an accumulator whose [`fold`] equals that
//! of [`sum_naive`](xdpgate_common::csum::sum_naive) over the same bytes
//! (the unit tests check each one available on the machine against it).
//! [`implementation`] names the choice, e.g. for a benchmark report.
//!
//! # Method
//!
//! The vector loops use the same identity as [`sum_wide`]: the data is
//! read as native-endian 64-bit lanes, and each lane `w` is added twice,
//! wrapping into an accumulator `a` and its high half `w >> 32` into an
//! accumulator `h`. Then `a - (h << 32)` (mod 2^64) is the exact sum of the
//! low 32-bit halves and `h` that of the high halves, and a 64-bit word is
//! congruent to the sum of its halves modulo 0xffff. That is a load and
//! three vector operations per vector of data, with four independent
//! accumulator pairs in the main loop (128 bytes per iteration with AVX2,
//! 256 with AVX-512). Chunks after the main loop add both halves
//! (`w & 0xffff_ffff` and `w >> 32`), which needs no final correction.
//! Data of at most 64 bytes (a minimal frame, a header) takes no loop: one
//! byte-masked load with AVX-512, two masked loads of whole words and a
//! scalar tail with AVX2. The lanes are added up, and the native-endian
//! (little-endian) sum becomes the big-endian one by a rotation left by 8
//! bits (see the byte-order section of [`xdpgate_common::csum`]).
//!
//! Bounds: data is summed in blocks of at most 1 GiB, so a 64-bit lane of
//! the main loop adds at most 2^23 words (2^22 with AVX-512), the sums of
//! their low and of their high halves stay below 2^55, every lane below
//! 2^59 and a block's total below 2^62: nothing overflows. Blocks are
//! combined with an end-around carry, as in [`sum_wide`].

use std::sync::OnceLock;

#[cfg(test)]
use xdpgate_common::csum::fold;
use xdpgate_common::csum::sum_wide;

/// Most bytes one vector pass sums before its lanes are combined (an even
/// number, so every block starts at an even offset and its native-endian
/// words line up with the big-endian words of the whole data).
#[cfg_attr(
    not(target_arch = "x86_64"),
    allow(dead_code, reason = "used by the x86-64 vector implementations only")
)]
const BLOCK: usize = 1 << 30;

/// A sum implementation: the signature of [`sum`] and [`sum_wide`], as an
/// `unsafe fn` so that it can point to a `#[target_feature]` function
/// directly (no wrapper call per sum). Calling it is sound only on a CPU with
/// the features the function enables.
type SumFn = unsafe fn(u64, &[u8]) -> u64;

/// The implementation [`sum`] uses, chosen once.
struct Choice {
    /// What [`implementation`] returns.
    name: &'static str,
    /// The function; every feature it needs is present on this CPU.
    sum: SumFn,
}

/// The choice, made at the first call of [`sum`] or [`implementation`].
static CHOICE: OnceLock<Choice> = OnceLock::new();

/// The best implementation for the running CPU.
fn detect() -> Choice {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512bw") {
            // The CPU (and the OS, for the 512-bit and mask registers)
            // supports AVX-512BW.
            return Choice {
                name: "avx512bw",
                sum: x86::avx512::sum_avx512,
            };
        }
        if is_x86_feature_detected!("avx2") {
            return Choice {
                name: "avx2",
                sum: x86::sum_avx2,
            };
        }
    }
    Choice {
        name: "sum_wide",
        sum: sum_wide,
    }
}

/// The implementation in use, detecting it on the first call.
#[inline]
fn choice() -> &'static Choice {
    CHOICE.get_or_init(detect)
}

/// One's-complement sum of `data` as 16-bit big-endian words (an odd last
/// byte padded with zero), added to the accumulator `sum` with an
/// end-around carry: the same value after [`fold`] as
/// [`sum_naive`](xdpgate_common::csum::sum_naive) and [`sum_wide`], with
/// the fastest implementation for this CPU (see [`implementation`]).
/// `data` may have any length and alignment.
#[inline]
pub(super) fn sum(sum: u64, data: &[u8]) -> u64 {
    // SAFETY: `detect` chose a function whose target features the running
    // CPU has.
    unsafe { (choice().sum)(sum, data) }
}

/// The Internet checksum of `data` (RFC 1071), the complement of the folded
/// [`sum`]: the same value as [`xdpgate_common::csum::checksum`], faster
/// (most of all on large buffers). The benchmark times [`sum`]; the tests
/// check this against the RFC's vectors.
#[cfg(test)]
fn checksum(data: &[u8]) -> u16 {
    !fold(sum(0, data))
}

/// The name of the implementation [`sum`] uses on this machine:
/// `"avx512bw"`, `"avx2"` or `"sum_wide"` (the portable one).
pub(super) fn implementation() -> &'static str {
    choice().name
}

/// `a + b` with an end-around carry out of bit 63 (2^64 = 1 mod 0xffff).
#[cfg_attr(
    not(target_arch = "x86_64"),
    allow(dead_code, reason = "used by the x86-64 vector implementations only")
)]
#[inline(always)]
const fn add_carry(a: u64, b: u64) -> u64 {
    let (s, carry) = a.overflowing_add(b);
    s + carry as u64
}

/// The vector implementations (x86-64 only).
///
/// Their entry points are `#[target_feature]` functions: calling one on a
/// CPU without the feature is undefined behaviour, so [`detect`] calls them
/// only after `is_x86_feature_detected!`, as do the tests.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    use super::{BLOCK, add_carry};

    /// The native-endian sum of a little-endian host as the sum of
    /// big-endian words (congruent modulo 0xffff, zero only if it was
    /// zero).
    #[inline(always)]
    const fn to_big_endian(native: u64) -> u64 {
        native.rotate_left(8)
    }

    /// The native-endian sum of `data` in blocks of `block` bytes (even),
    /// each summed by `block_sum`, combined with end-around carries.
    #[cold]
    #[inline(never)]
    pub(super) fn in_blocks(data: &[u8], block: usize, block_sum: impl Fn(&[u8]) -> u64) -> u64 {
        data.chunks(block)
            .fold(0, |native, b| add_carry(native, block_sum(b)))
    }

    /// The native-endian sum of the last 0-7 bytes of the data (which
    /// start at an even offset), in scalar code.
    #[inline(always)]
    fn scalar_tail(mut tail: &[u8]) -> u64 {
        let mut s = 0;
        if let Some((w, rest)) = tail.split_first_chunk::<4>() {
            s += u32::from_ne_bytes(*w) as u64;
            tail = rest;
        }
        if let Some((w, rest)) = tail.split_first_chunk::<2>() {
            s += u16::from_ne_bytes(*w) as u64;
            tail = rest;
        }
        if let [last] = tail {
            // The byte and a zero pad byte in native order, like every
            // other word (the high byte of a big-endian word once swapped).
            s += *last as u64;
        }
        s
    }

    /// One's-complement sum with AVX2, like [`super::sum`].
    #[target_feature(enable = "avx2")]
    pub(super) fn sum_avx2(sum: u64, data: &[u8]) -> u64 {
        let native = if data.len() <= 64 {
            avx2_short(data)
        } else if data.len() <= BLOCK {
            avx2_block(data)
        } else {
            // The closure inherits this function's target features.
            in_blocks(data, BLOCK, |b| avx2_block(b))
        };
        add_carry(sum, to_big_endian(native))
    }

    /// 32 bytes as a vector of four native-endian 64-bit lanes.
    #[target_feature(enable = "avx2")]
    fn load256(bytes: &[u8; 32]) -> __m256i {
        // SAFETY: `bytes` is 32 readable bytes; the load is unaligned.
        unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
    }

    /// `v`'s lanes with both 32-bit halves added (congruent to `v`).
    #[target_feature(enable = "avx2")]
    fn halves256(v: __m256i) -> __m256i {
        _mm256_add_epi64(
            _mm256_and_si256(v, _mm256_set1_epi64x(0xffff_ffff)),
            _mm256_srli_epi64::<32>(v),
        )
    }

    /// The lanes' sum from an accumulator pair (see the module docs): the
    /// sum of the low halves `a - (h << 32)`, plus `h`.
    #[target_feature(enable = "avx2")]
    fn pair256(a: __m256i, h: __m256i) -> __m256i {
        _mm256_add_epi64(_mm256_sub_epi64(a, _mm256_slli_epi64::<32>(h)), h)
    }

    /// The sum of a vector's four lanes (each below 2^59, so no overflow).
    #[target_feature(enable = "avx2")]
    fn reduce256(v: __m256i) -> u64 {
        let x = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let x = _mm_add_epi64(x, _mm_unpackhi_epi64(x, x));
        _mm_cvtsi128_si64(x) as u64
    }

    /// The first `words` (at most 4) 64-bit words at `p` as a vector, with
    /// zero lanes after them: a masked load, which neither reads nor faults
    /// in the lanes at or past `words`.
    ///
    /// # Safety
    ///
    /// The first `words` 8-byte words at `p` must be readable.
    #[target_feature(enable = "avx2")]
    unsafe fn load256_words(p: *const u8, words: i64) -> __m256i {
        let lanes = _mm256_setr_epi64x(0, 1, 2, 3);
        let mask = _mm256_cmpgt_epi64(_mm256_set1_epi64x(words), lanes);
        // SAFETY: the lanes read are the first `words` words at `p`,
        // readable as the caller guarantees; the load is unaligned.
        unsafe { _mm256_maskload_epi64(p.cast(), mask) }
    }

    /// The native-endian 16-bit-word sum of at most 64 bytes (a minimal
    /// frame, a header): the whole 64-bit words with two masked loads, no
    /// loop, then the last 0-7 bytes.
    #[target_feature(enable = "avx2")]
    fn avx2_short(data: &[u8]) -> u64 {
        debug_assert!(data.len() <= 64);
        let words = (data.len() / 8) as i64;
        let p = data.as_ptr();
        // SAFETY: the words read are the `data.len() / 8` whole words of
        // `data`: the first load reads up to four from `p`, the second the
        // rest from `p + 32` (`wrapping_add`: if `data` is shorter, that
        // address is past its end but reads nothing).
        let (v0, v1) = unsafe {
            (
                load256_words(p, words),
                load256_words(p.wrapping_add(32), words - 4),
            )
        };
        let acc = _mm256_add_epi64(halves256(v0), halves256(v1));
        reduce256(acc) + scalar_tail(&data[data.len() & !7..])
    }

    /// The native-endian 16-bit-word sum of at most [`BLOCK`] bytes, unfolded.
    #[target_feature(enable = "avx2")]
    pub(super) fn avx2_block(data: &[u8]) -> u64 {
        let mut acc = _mm256_setzero_si256();
        let mut rest = data;
        if data.len() >= 128 {
            let z = _mm256_setzero_si256();
            let (mut a, mut h) = ([z; 4], [z; 4]);
            while let Some((c, r)) = rest.split_first_chunk::<128>() {
                for i in 0..4 {
                    // SAFETY: bytes 32 * i .. 32 * i + 32 of the 128 of `c`;
                    // the load is unaligned.
                    let v = unsafe { _mm256_loadu_si256(c.as_ptr().add(32 * i).cast()) };
                    a[i] = _mm256_add_epi64(a[i], v);
                    h[i] = _mm256_add_epi64(h[i], _mm256_srli_epi64::<32>(v));
                }
                rest = r;
            }
            acc = _mm256_add_epi64(
                _mm256_add_epi64(pair256(a[0], h[0]), pair256(a[1], h[1])),
                _mm256_add_epi64(pair256(a[2], h[2]), pair256(a[3], h[3])),
            );
        }
        // Fewer than 128 bytes: at most three whole vectors.
        while let Some((v, r)) = rest.split_first_chunk::<32>() {
            acc = _mm256_add_epi64(acc, halves256(load256(v)));
            rest = r;
        }
        // Fewer than 32 bytes: the whole 64-bit words with one masked load,
        // then the last 0-7 bytes.
        let words = rest.len() / 8;
        if words > 0 {
            // SAFETY: the `words` whole words of `rest` are readable.
            let v = unsafe { load256_words(rest.as_ptr(), words as i64) };
            acc = _mm256_add_epi64(acc, halves256(v));
        }
        reduce256(acc) + scalar_tail(&rest[words * 8..])
    }

    /// The AVX-512BW implementation.
    ///
    /// Its intrinsics and the `avx512bw` target feature are stable since
    /// Rust 1.89; the workspace declares 1.91, which its dependency tree
    /// needs anyway (aya-build's `cargo-platform` 0.3).
    pub(super) mod avx512 {
        use core::arch::x86_64::*;

        use super::{BLOCK, add_carry, in_blocks, to_big_endian};

        /// One's-complement sum with AVX-512BW, like [`sum`](super::sum).
        #[target_feature(enable = "avx512bw")]
        pub(in super::super) fn sum_avx512(sum: u64, data: &[u8]) -> u64 {
            let native = if data.len() <= 64 {
                // A minimal frame or header: one masked load, no loop.
                reduce512(halves512(load512_partial(data)))
            } else if data.len() <= BLOCK {
                avx512_block(data)
            } else {
                // The closure inherits this function's target features.
                in_blocks(data, BLOCK, |b| avx512_block(b))
            };
            add_carry(sum, to_big_endian(native))
        }

        /// 64 bytes as a vector of eight native-endian 64-bit lanes.
        #[target_feature(enable = "avx512bw")]
        fn load512(bytes: &[u8; 64]) -> __m512i {
            // SAFETY: `bytes` is 64 readable bytes; the load is unaligned.
            unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) }
        }

        /// At most 64 bytes as a vector, zero-padded: a byte-masked load, which
        /// neither reads nor faults in the bytes past the end of `bytes`.
        #[target_feature(enable = "avx512bw")]
        fn load512_partial(bytes: &[u8]) -> __m512i {
            debug_assert!(bytes.len() <= 64);
            let mask = u64::MAX.checked_shr(64 - bytes.len() as u32).unwrap_or(0);
            // SAFETY: the bytes selected by `mask` are the `bytes.len()` bytes
            // of `bytes`; masked-off bytes are not accessed.
            unsafe { _mm512_maskz_loadu_epi8(mask, bytes.as_ptr().cast()) }
        }

        /// `v`'s lanes with both 32-bit halves added (congruent to `v`).
        #[target_feature(enable = "avx512bw")]
        fn halves512(v: __m512i) -> __m512i {
            _mm512_add_epi64(
                _mm512_and_si512(v, _mm512_set1_epi64(0xffff_ffff)),
                _mm512_srli_epi64::<32>(v),
            )
        }

        /// The lanes' sum from an accumulator pair (see [`pair256`](super::pair256)).
        #[target_feature(enable = "avx512bw")]
        fn pair512(a: __m512i, h: __m512i) -> __m512i {
            _mm512_add_epi64(_mm512_sub_epi64(a, _mm512_slli_epi64::<32>(h)), h)
        }

        /// The sum of the eight lanes (each below 2^59, so no overflow).
        #[target_feature(enable = "avx512bw")]
        fn reduce512(v: __m512i) -> u64 {
            _mm512_reduce_add_epi64(v) as u64
        }

        /// The native-endian 16-bit-word sum of at most [`BLOCK`] bytes, unfolded.
        #[target_feature(enable = "avx512bw")]
        pub(in super::super) fn avx512_block(data: &[u8]) -> u64 {
            let mut acc = _mm512_setzero_si512();
            let mut rest = data;
            if data.len() >= 256 {
                let z = _mm512_setzero_si512();
                let (mut a, mut h) = ([z; 4], [z; 4]);
                while let Some((c, r)) = rest.split_first_chunk::<256>() {
                    for i in 0..4 {
                        // SAFETY: bytes 64 * i .. 64 * i + 64 of the 256 of `c`;
                        // the load is unaligned.
                        let v = unsafe { _mm512_loadu_si512(c.as_ptr().add(64 * i).cast()) };
                        a[i] = _mm512_add_epi64(a[i], v);
                        h[i] = _mm512_add_epi64(h[i], _mm512_srli_epi64::<32>(v));
                    }
                    rest = r;
                }
                acc = _mm512_add_epi64(
                    _mm512_add_epi64(pair512(a[0], h[0]), pair512(a[1], h[1])),
                    _mm512_add_epi64(pair512(a[2], h[2]), pair512(a[3], h[3])),
                );
            }
            // Fewer than 256 bytes: at most three whole vectors, then the last
            // 0-63 bytes with a masked load.
            while let Some((v, r)) = rest.split_first_chunk::<64>() {
                acc = _mm512_add_epi64(acc, halves512(load512(v)));
                rest = r;
            }
            if !rest.is_empty() {
                acc = _mm512_add_epi64(acc, halves512(load512_partial(rest)));
            }
            reduce512(acc)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use xdpgate_common::csum::sum_naive;

    use super::*;

    /// RFC 1071 section 3, "Numerical example": the folded sum is 0xddf2.
    const RFC1071: [u8; 8] = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];

    /// A sum implementation safe to call on this machine.
    type Safe = fn(u64, &[u8]) -> u64;

    /// Every implementation this machine can run, by name, with the
    /// dispatched [`sum`] first.
    fn implementations() -> Vec<(&'static str, Safe)> {
        let mut all: Vec<(&'static str, Safe)> = vec![("sum", sum), ("sum_wide", sum_wide)];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is available, checked just above.
                all.push(("avx2", |s, d| unsafe { x86::sum_avx2(s, d) }));
            }
            if is_x86_feature_detected!("avx512bw") {
                // SAFETY: AVX-512BW is available, checked just above.
                all.push(("avx512bw", |s, d| unsafe { x86::avx512::sum_avx512(s, d) }));
            }
        }
        all
    }

    #[test]
    fn reports_the_best_available() {
        let name = implementation();
        #[cfg(target_arch = "x86_64")]
        {
            let expect = if is_x86_feature_detected!("avx512bw") {
                "avx512bw"
            } else if is_x86_feature_detected!("avx2") {
                "avx2"
            } else {
                "sum_wide"
            };
            assert_eq!(name, expect);
        }
        let tested: Vec<&str> = implementations().iter().map(|(n, _)| *n).collect();
        eprintln!("csum implementation: {name}; tested: {tested:?}");
    }

    #[test]
    fn rfc1071_example() {
        for (name, f) in implementations() {
            assert_eq!(fold(f(0, &RFC1071)), 0xddf2, "{name}");
            // The byte-swapped order of RFC 1071 section 2(B).
            let swapped: Vec<u8> = RFC1071.chunks(2).flat_map(|w| [w[1], w[0]]).collect();
            assert_eq!(fold(f(0, &swapped)), 0xf2dd, "{name}");
        }
        assert_eq!(checksum(&RFC1071), !0xddf2);
        assert_eq!(checksum(&RFC1071), xdpgate_common::csum::checksum(&RFC1071));
    }

    #[test]
    fn every_short_length_and_offset() {
        // Every tail (masked loads, 4/2/1-byte scalar tails) and every
        // number of whole vectors after the main loops, at even and odd
        // starts.
        let buf: Vec<u8> = (0..1100u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        let ones = [0xffu8; 1100];
        for (name, f) in implementations() {
            for off in 0..4 {
                for len in 0..=1090 {
                    for d in [&buf[off..off + len], &ones[off..off + len]] {
                        assert_eq!(
                            fold(f(0, d)),
                            fold(sum_naive(0, d)),
                            "{name}: offset {off}, length {len}"
                        );
                    }
                }
            }
            assert_eq!(f(0, &[]), 0, "{name}");
            assert_eq!(f(0x1_0000_0000, &[]), 0x1_0000_0000, "{name}");
        }
    }

    #[test]
    fn many_carries_and_a_full_accumulator() {
        // All ones: every lane addition carries; the sum is 0xffff (-0).
        let ones = vec![0xffu8; 70_000];
        let sum = u64::MAX - 1; // 0xfffe modulo 0xffff
        for (name, f) in implementations() {
            assert_eq!(fold(f(0, &ones)), 0xffff, "{name}");
            assert_eq!(fold(f(sum, &ones)), 0xfffe, "{name}");
            assert_eq!(fold(f(sum, &RFC1071)), fold(0xfffe + 0xddf2), "{name}");
        }
        assert_eq!(checksum(&ones), 0);
    }

    /// A native-endian block sum safe to call on this machine.
    #[cfg(target_arch = "x86_64")]
    type BlockFn = fn(&[u8]) -> u64;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn blocks_combine_with_end_around_carry() {
        // Blocks of 1 GiB in production; the same combination with small
        // even blocks (each block sum is exact, so it is rotated only once).
        let mixed: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        let ones = [0xffu8; 5001];
        let mut blocks: Vec<(&str, BlockFn)> = Vec::new();
        if is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is available, checked just above.
            blocks.push(("avx2", |b| unsafe { x86::avx2_block(b) }));
        }
        if is_x86_feature_detected!("avx512bw") {
            // SAFETY: AVX-512BW is available, checked just above.
            blocks.push(("avx512bw", |b| unsafe { x86::avx512::avx512_block(b) }));
        }
        for (name, block_sum) in blocks {
            for d in [&mixed[..], &mixed[..4999], &ones[..], &ones[..5001]] {
                for block in [2, 64, 66, 1000, 4096] {
                    let native = x86::in_blocks(d, block, block_sum);
                    assert_eq!(
                        fold(native.rotate_left(8)),
                        fold(sum_naive(0, d)),
                        "{name}: block {block}, length {}",
                        d.len()
                    );
                }
            }
        }
    }

    /// Random data of 0..70,000 bytes at a random offset (0..64) into its
    /// buffer, so the vector loads are misaligned and the data may start at
    /// an odd address.
    fn misaligned() -> impl Strategy<Value = (Vec<u8>, usize)> {
        (0usize..70_000, 0usize..64).prop_flat_map(|(len, off)| {
            (proptest::collection::vec(any::<u8>(), len + off), Just(off))
        })
    }

    proptest! {
        #[test]
        fn equals_sum_naive((buf, off) in misaligned(), acc in any::<u32>()) {
            let d = &buf[off..];
            let expect = fold(sum_naive(0, d));
            let acc = u64::from(acc);
            let expect_acc = fold(sum_naive(acc, d));
            for (name, f) in implementations() {
                prop_assert_eq!(fold(f(0, d)), expect, "{}", name);
                // A running accumulator carries through.
                prop_assert_eq!(fold(f(acc, d)), expect_acc, "{}", name);
            }
            prop_assert_eq!(checksum(d), xdpgate_common::csum::checksum(d));
        }
    }
}

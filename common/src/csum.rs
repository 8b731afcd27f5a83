//! The Internet checksum, shared by the datapath and the control plane: the
//! full one's-complement sum of RFC 1071 and the incremental update of
//! RFC 1624.
//!
//! Sums are kept unfolded in a `u32`/`u64` accumulator of 16-bit big-endian
//! words and folded (end-around carry) at the end; a checksum field holds the
//! complement of the folded sum.
//!
//! Two full sums are provided: [`sum_naive`], a plain loop over 16-bit words
//! (small, for headers), and [`sum_wide`], which reads 64-bit words, for bulk
//! data. Both return an accumulator whose [`fold`] is the same 16-bit sum.
//!
//! # Byte order
//!
//! The one's-complement sum is byte-order independent up to a final byte
//! swap (RFC 1071 section 2(B)): summing the same bytes as little-endian
//! 16-bit words gives the byte-swapped folded sum of the big-endian words,
//! because swapping the bytes of every addend only rotates each end-around
//! carry from bit 7 into bit 8 instead of from bit 15 into bit 0. Wider words
//! work too: 2^16 = 1 (mod 0xffff), so a 32- or 64-bit word is congruent to
//! the sum of its 16-bit halves, and [`sum_wide`] may add native-endian
//! `u64`s and correct the byte order once at the end (on little-endian
//! hosts).
//!
//! # Zero
//!
//! One's complement has two zeros, +0 (0x0000) and -0 (0xffff). [`fold`]
//! returns 0 only for a zero accumulator (all data zero) and otherwise a
//! value in `1..=0xffff`, so a checksum computed from scratch is 0xffff only
//! over all-zero data; over anything else (an IPv4 header always has a
//! non-zero version field) it is in `0..=0xfffe`. The incremental updates
//! ([`update16`], [`update32`], [`update_bytes`]) use RFC 1624 eqn. 3 and
//! give exactly the from-scratch checksum whenever the data after the change
//! is not all zero; over all-zero data they give +0 (0x0000) where the
//! from-scratch checksum is -0 (0xffff) -- the two zeros, a case RFC 1624
//! section 3 rules out by assuming a non-zero field.

/// Folds a one's-complement accumulator to 16 bits (end-around carry).
#[inline(always)]
pub const fn fold(sum: u64) -> u16 {
    let s = (sum & 0xffff_ffff) + (sum >> 32);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Folds a 32-bit accumulator (at most 65,537 words of 16 bits can be added
/// to a `u32` without overflow).
#[inline(always)]
pub const fn fold32(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Adds the two 16-bit halves of a 32-bit value (e.g. an IPv4 address) to `sum`.
#[inline(always)]
pub const fn add32(sum: u32, value: u32) -> u32 {
    sum + (value >> 16) + (value & 0xffff)
}

/// One's-complement sum of `data` as 16-bit big-endian words (an odd last
/// byte padded with zero), added to `sum`, straightforward u16 loop.
pub fn sum_naive(sum: u64, data: &[u8]) -> u64 {
    let mut s = sum;
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        s += u16::from_be_bytes([w[0], w[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        s += (*last as u64) << 8;
    }
    s
}

/// The Internet checksum of `data` (RFC 1071): the complement of the folded
/// sum. Over a header holding a correct checksum the result is 0.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum_naive(0, data))
}

/// Most bytes [`wide_block`] sums at once: each of its two streams then holds
/// at most 2^26 words, so the sums of their 32-bit halves stay far below
/// 2^64.
const WIDE_BLOCK: usize = 1 << 30;

/// Shortest data [`sum_wide`] walks as two streams; shorter data only takes
/// the 32-byte chunks, which have less to set up and reduce.
const WIDE_STREAMS_MIN: usize = 256;

/// One's-complement sum of `data` added to `sum`, like [`sum_naive`] (the
/// same value after [`fold`]), but reading 64-bit native-endian words, for
/// bulk data. `data` may have any length and alignment.
///
/// The bytes are summed as native-endian words into a 64-bit one's-complement
/// accumulator; on little-endian hosts that is the byte-swapped sum, which is
/// corrected by one rotation left by 8 bits (a multiplication by 2^8 modulo
/// 2^64 - 1, hence modulo 0xffff, and 2^8 * x is `x.swap_bytes()` modulo
/// 0xffff for a 16-bit `x`; see the module docs). It is added to `sum` with
/// an end-around carry, so `sum` may be any accumulator.
///
/// From [`WIDE_STREAMS_MIN`] bytes on, the inner loop adds each word `w`
/// twice: wrapping into `a`, and its high half into `h`. Then `a - (h << 32)`
/// (mod 2^64) is the exact sum of the low halves and `h` the sum of the high
/// halves, and a word is congruent to the sum of its halves modulo 0xffff:
/// the carries are recovered without a compare, in three vector operations
/// per 16 bytes. The data is split into two halves walked side by side, so
/// the loop vectorizer, which interleaves each stream twice, keeps four
/// independent vector accumulator pairs. (Written over `chunks_exact(32)`
/// with four scalar accumulator pairs, LLVM's SLP cost model keeps this loop
/// scalar on x86-64.) The rest, and shorter data, is read as 32-byte chunks
/// of four words into four accumulators, adding both 32-bit halves of each
/// word (four vector operations per 16 bytes, little to set up).
pub fn sum_wide(sum: u64, data: &[u8]) -> u64 {
    // Short data in a leaf function: nothing to save, nothing to set up.
    let native = if data.len() < WIDE_STREAMS_MIN {
        wide_short(data)
    } else {
        wide_long(data)
    };
    add_carry(sum, to_big_endian(native))
}

/// A native-endian sum as the sum of big-endian words (congruent modulo
/// 0xffff, zero only if it was zero): rotated left by 8 bits on
/// little-endian hosts.
#[inline(always)]
const fn to_big_endian(native: u64) -> u64 {
    if cfg!(target_endian = "little") {
        native.rotate_left(8)
    } else {
        native
    }
}

/// The native-endian sum of [`WIDE_STREAMS_MIN`] bytes or more.
#[inline(never)]
fn wide_long(data: &[u8]) -> u64 {
    if data.len() <= WIDE_BLOCK {
        wide_block(data)
    } else {
        wide_blocks(data, WIDE_BLOCK)
    }
}

/// The native-endian sum of `data` in blocks of `block` bytes (even, at most
/// [`WIDE_BLOCK`]), combined with end-around carries.
#[cold]
fn wide_blocks(data: &[u8], block: usize) -> u64 {
    // Blocks have an even length, so every block starts at an even offset
    // and its native-endian words line up with the big-endian words.
    data.chunks(block)
        .fold(0, |native, block| add_carry(native, wide_block(block)))
}

/// `a + b` with an end-around carry out of bit 63 (2^64 = 1 mod 0xffff).
#[inline(always)]
const fn add_carry(a: u64, b: u64) -> u64 {
    let (s, carry) = a.overflowing_add(b);
    s + carry as u64
}

/// `word` as a native-endian `u64` (`word` is 8 bytes long).
#[inline(always)]
fn ne64(word: &[u8]) -> u64 {
    u64::from_ne_bytes(word.try_into().unwrap_or([0; 8]))
}

/// `w`'s 32-bit halves added (congruent to `w` modulo 0xffff).
#[inline(always)]
const fn halves(w: u64) -> u64 {
    (w & 0xffff_ffff) + (w >> 32)
}

/// Native-endian 16-bit-word sum of at most [`WIDE_BLOCK`] bytes starting at
/// an even offset, unfolded (below 2^61).
#[inline(always)]
fn wide_block(data: &[u8]) -> u64 {
    // A multiple of 64 bytes as two streams, the rest (or short data) as
    // 32-byte chunks.
    let (body, rest) = data.split_at(data.len() & !63);
    wide_streams(body) + wide_short(rest)
}

/// Native-endian 16-bit-word sum of `data` (at most [`WIDE_BLOCK`] bytes,
/// in practice fewer than [`WIDE_STREAMS_MIN`]) starting at an even offset,
/// unfolded.
#[inline(always)]
fn wide_short(data: &[u8]) -> u64 {
    // 32-byte chunks of four words in four accumulators (no overflow: each
    // adds fewer than 2^25 values below 2^33).
    let mut acc = [0u64; 4];
    let mut chunks = data.chunks_exact(32);
    for c in &mut chunks {
        for (a, w) in acc.iter_mut().zip(c.chunks_exact(8)) {
            *a += halves(ne64(w));
        }
    }
    let mut s = acc[0] + acc[1] + acc[2] + acc[3];
    // At most 31 bytes, from an even offset, without loops to vectorize.
    let mut tail = chunks.remainder();
    while let Some((w, rest)) = tail.split_first_chunk::<8>() {
        s += halves(u64::from_ne_bytes(*w));
        tail = rest;
    }
    if let Some((w, rest)) = tail.split_first_chunk::<4>() {
        s += u32::from_ne_bytes(*w) as u64;
        tail = rest;
    }
    if let Some((w, rest)) = tail.split_first_chunk::<2>() {
        s += u16::from_ne_bytes(*w) as u64;
        tail = rest;
    }
    if let [last] = tail {
        // The byte and a zero pad byte, read in the same order as every
        // other word (the high byte of a big-endian word once swapped).
        s += u16::from_ne_bytes([*last, 0]) as u64;
    }
    s
}

/// The native-endian sum of `body` (a multiple of 64 bytes, at most
/// [`WIDE_BLOCK`]) as two streams, its halves, walked side by side.
#[inline(always)]
fn wide_streams(body: &[u8]) -> u64 {
    let (x, y) = body.split_at(body.len() / 2);
    let (mut a0, mut h0, mut a1, mut h1) = (0u64, 0u64, 0u64, 0u64);
    for (p, q) in x.chunks_exact(8).zip(y.chunks_exact(8)) {
        let (p, q) = (ne64(p), ne64(q));
        a0 = a0.wrapping_add(p);
        h0 += p >> 32;
        a1 = a1.wrapping_add(q);
        h1 += q >> 32;
    }
    // Sums of the low halves (exact: each is below 2^58).
    let l0 = a0.wrapping_sub(h0 << 32);
    let l1 = a1.wrapping_sub(h1 << 32);
    l0 + h0 + l1 + h1
}

/// The Internet checksum of `data` computed with [`sum_wide`]: the same value
/// as [`checksum`], faster on large buffers.
pub fn checksum_wide(data: &[u8]) -> u16 {
    !fold(sum_wide(0, data))
}

/// RFC 1624 eqn. 3: the checksum field `check` after one 16-bit word of the
/// covered data changes from `old` to `new`: `HC' = ~(~HC + ~m + m')`.
#[inline(always)]
pub const fn update16(check: u16, old: u16, new: u16) -> u16 {
    !fold32((!check) as u32 + (!old) as u32 + new as u32)
}

/// RFC 1624 update for a 32-bit field (two words) changing from `old` to `new`.
#[inline(always)]
pub const fn update32(check: u16, old: u32, new: u32) -> u16 {
    let sum = (!check) as u32 + ((!old) >> 16) + ((!old) & 0xffff) + (new >> 16) + (new & 0xffff);
    !fold32(sum)
}

/// RFC 1624 eqn. 3 for a field of several words: the checksum field `check`
/// after the covered bytes `old` are replaced by `new`,
/// `HC' = ~(~HC + ~sum(old) + sum(new))`.
///
/// Preconditions: `old` and `new` have the same length, and the field starts
/// at an even offset of the checksummed data, so its bytes pair up into the
/// same 16-bit words as in the full sum. The length should be even (a whole
/// number of words); an odd length at an even offset is also right, as its
/// last byte is the high byte of a word whose low byte did not change. A
/// field at an odd offset would need its sums byte-swapped; nothing here
/// checks the preconditions (no panics, for the datapath).
///
/// If `check` was correct, the result equals the checksum recomputed from
/// scratch, except over all-zero data (see the module docs on zero).
pub fn update_bytes(check: u16, old: &[u8], new: &[u8]) -> u16 {
    // ~sum(old) is congruent to the sum of the complemented words ~m (mod
    // 0xffff); three folded 16-bit terms cannot overflow.
    let sum = (!check) as u64 + (!fold(sum_naive(0, old))) as u64 + fold(sum_naive(0, new)) as u64;
    !fold(sum)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec::Vec;

    use proptest::prelude::*;

    use super::*;

    /// RFC 1071 section 3, "Numerical example".
    const RFC1071: [u8; 8] = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];

    /// An IPv4 header (UDP, 192.168.0.1 -> 192.168.0.199) with its correct
    /// checksum 0xb861 at offset 10.
    const IPV4: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn rfc1071_example_sum() {
        assert_eq!(fold(sum_naive(0, &RFC1071)), 0xddf2);
        assert_eq!(fold(sum_wide(0, &RFC1071)), 0xddf2);
        assert_eq!(checksum(&RFC1071), !0xddf2);
        assert_eq!(checksum_wide(&RFC1071), !0xddf2);
        // The byte-swapped order of section 2(B) gives the swapped sum.
        let swapped: Vec<u8> = RFC1071.chunks(2).flat_map(|w| [w[1], w[0]]).collect();
        assert_eq!(fold(sum_naive(0, &swapped)), 0xf2dd);
        assert_eq!(fold(sum_wide(0, &swapped)), 0xf2dd);
    }

    #[test]
    fn rfc1624_example_gives_plus_zero() {
        // RFC 1624 section 4: HC 0xDD2F, m 0x5555 -> m' 0x3285. Eqn. 3 gives
        // 0x0000; the faulty eqn. 2 of RFC 1141 gave 0xFFFF.
        assert_eq!(update16(0xdd2f, 0x5555, 0x3285), 0x0000);
        assert_eq!(update_bytes(0xdd2f, &[0x55, 0x55], &[0x32, 0x85]), 0x0000);
        // The same change as half of a 32-bit field whose other half stays.
        assert_eq!(update32(0xdd2f, 0x1234_5555, 0x1234_3285), 0x0000);
    }

    #[test]
    fn ipv4_header_vector() {
        let mut zeroed = IPV4;
        zeroed[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(checksum(&zeroed), 0xb861);
        assert_eq!(checksum_wide(&zeroed), 0xb861);
        assert_eq!(checksum(&IPV4), 0);
        assert_eq!(checksum_wide(&IPV4), 0);
        // Decrementing the TTL (64 -> 63), as a router does, in place.
        let mut ttl = IPV4;
        ttl[8] = 63;
        ttl[10..12].copy_from_slice(&[0, 0]);
        let expect = checksum(&ttl);
        assert_eq!(update16(0xb861, 0x4011, 0x3f11), expect);
        assert_eq!(update_bytes(0xb861, &IPV4[8..10], &ttl[8..10]), expect);
        // Rewriting the destination address (NAT).
        let mut nat = zeroed;
        nat[16..20].copy_from_slice(&[10, 0, 0, 7]);
        let expect = checksum(&nat);
        assert_eq!(update32(0xb861, 0xc0a8_00c7, 0x0a00_0007), expect);
        assert_eq!(update_bytes(0xb861, &IPV4[16..20], &nat[16..20]), expect);
    }

    #[test]
    fn empty_odd_and_edge_lengths() {
        assert_eq!(checksum(&[]), 0xffff);
        assert_eq!(checksum_wide(&[]), 0xffff);
        assert_eq!(checksum_wide(&[0x12]), !0x1200);
        assert_eq!(sum_wide(0x1_0000_0000, &[]), 0x1_0000_0000);
        // Every length through the 32-byte chunks and the 8-, 4-, 2- and
        // 1-byte tails, below and above the two streams (256 bytes).
        for len in 0..700 {
            let d: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(fold(sum_wide(0, &d)), fold(sum_naive(0, &d)), "len {len}");
        }
        // All ones: many end-around carries, sum 0xffff (-0), checksum +0.
        let ones = [0xffu8; 4096];
        assert_eq!(fold(sum_wide(0, &ones)), 0xffff);
        assert_eq!(checksum_wide(&ones), 0);
        // An accumulator close to u64::MAX takes an end-around carry out of
        // bit 63 (2^64 - 2 is 0xfffe modulo 0xffff).
        let sum = u64::MAX - 1;
        assert_eq!(fold(sum), 0xfffe);
        assert_eq!(fold(sum_wide(sum, &ones)), 0xfffe);
        assert_eq!(fold(sum_wide(sum, &RFC1071)), fold(0xfffe + 0xddf2));
    }

    #[test]
    fn blocks_combine_with_end_around_carry() {
        // Blocks of 1 GiB in production; the same combination with small
        // even blocks, over data with and without carries.
        let mixed: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        let ones = [0xffu8; 5001];
        for d in [&mixed[..], &mixed[..4999], &ones[..], &ones[..5001]] {
            for block in [2, 64, 66, 1000, 4096] {
                let sum = to_big_endian(wide_blocks(d, block));
                assert_eq!(fold(sum), fold(sum_naive(0, d)), "block {block}");
            }
        }
    }

    #[test]
    fn all_zero_data_is_the_one_zero_ambiguity() {
        // Clearing the only non-zero word: from scratch the checksum is -0
        // (0xffff, the complement of +0), eqn. 3 gives +0. RFC 1624 section 3
        // excludes this by assuming a non-zero field; both are zeros.
        let data = [0x12, 0x34, 0, 0];
        let check = checksum(&data);
        assert_eq!(checksum(&[0; 4]), 0xffff);
        assert_eq!(update16(check, 0x1234, 0), 0x0000);
        assert_eq!(update_bytes(check, &data[..2], &[0, 0]), 0x0000);
        assert_eq!(update32(check, 0x1234_0000, 0), 0x0000);
    }

    /// Random data of 0..4096 bytes at a random offset (0..64) into its
    /// buffer, so the 64-bit reads are misaligned.
    fn misaligned() -> impl Strategy<Value = (Vec<u8>, usize)> {
        (0usize..4096, 0usize..64).prop_flat_map(|(len, off)| {
            (proptest::collection::vec(any::<u8>(), len + off), Just(off))
        })
    }

    /// Random data of an even length of 2..1500 bytes (a header or packet).
    fn packet() -> impl Strategy<Value = Vec<u8>> {
        (1usize..750).prop_flat_map(|words| proptest::collection::vec(any::<u8>(), 2 * words))
    }

    /// Checks an incremental update against the recomputation. Exact unless
    /// the edited data is all zero, where the two differ only in the sign of
    /// zero (see `all_zero_data_is_the_one_zero_ambiguity`).
    fn same_as_recomputed(updated: u16, edited: &[u8]) -> Result<(), TestCaseError> {
        let full = checksum(edited);
        if edited.iter().all(|&b| b == 0) {
            prop_assert_eq!((updated, full), (0x0000, 0xffff));
        } else {
            prop_assert_eq!(updated, full);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn sum_wide_equals_sum_naive((buf, off) in misaligned(), sum in any::<u32>()) {
            let d = &buf[off..];
            prop_assert_eq!(fold(sum_wide(0, d)), fold(sum_naive(0, d)));
            prop_assert_eq!(checksum_wide(d), checksum(d));
            // A running accumulator carries through.
            let sum = u64::from(sum);
            prop_assert_eq!(fold(sum_wide(sum, d)), fold(sum_naive(sum, d)));
        }

        #[test]
        fn update16_equals_recomputation(data in packet(), word in any::<usize>(), new in any::<u16>()) {
            let at = 2 * (word % (data.len() / 2));
            let old = u16::from_be_bytes([data[at], data[at + 1]]);
            let mut edited = data.clone();
            edited[at..at + 2].copy_from_slice(&new.to_be_bytes());
            same_as_recomputed(update16(checksum(&data), old, new), &edited)?;
        }

        #[test]
        fn update32_equals_recomputation(data in packet(), field in any::<usize>(), new in any::<u32>()) {
            prop_assume!(data.len() >= 4);
            let at = 4 * (field % (data.len() / 4));
            let old = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
            let mut edited = data.clone();
            edited[at..at + 4].copy_from_slice(&new.to_be_bytes());
            same_as_recomputed(update32(checksum(&data), old, new), &edited)?;
        }

        #[test]
        fn update_bytes_equals_recomputation(
            data in packet(),
            start in any::<usize>(),
            len in 0usize..64,
            fill in proptest::collection::vec(any::<u8>(), 64),
        ) {
            // Any length (even or odd) at an even offset.
            let at = 2 * (start % (data.len() / 2));
            let end = (at + len).min(data.len());
            let mut edited = data.clone();
            edited[at..end].copy_from_slice(&fill[..end - at]);
            let updated = update_bytes(checksum(&data), &data[at..end], &edited[at..end]);
            same_as_recomputed(updated, &edited)?;
        }

        #[test]
        fn zeroing_words_reaches_the_zero_boundary(data in proptest::collection::vec(any::<u8>(), 2..64usize)) {
            // Clearing everything word by word with update16 ends at the
            // all-zero boundary; every step before it is exact.
            let mut check = checksum(&data);
            let mut cur = data.clone();
            for at in (0..cur.len() & !1).step_by(2) {
                let old = u16::from_be_bytes([cur[at], cur[at + 1]]);
                cur[at..at + 2].copy_from_slice(&[0, 0]);
                check = update16(check, old, 0);
                same_as_recomputed(check, &cur)?;
            }
        }
    }
}

//! The Internet checksum, shared by the datapath and the control plane: the
//! full one's-complement sum of RFC 1071 and the incremental update of
//! RFC 1624.
//!
//! Sums are kept unfolded in a `u32`/`u64` accumulator of 16-bit big-endian
//! words and folded (end-around carry) at the end; a checksum field holds the
//! complement of the folded sum.

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

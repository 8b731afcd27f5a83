//! Weighted Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and
//! Reliable Software Network Load Balancer", NSDI 2016): the lookup table
//! ("ring") the datapath indexes with
//! [`flow_hash`](xdpgate_common::lb::flow_hash) `% size` to pick a backend.
//!
//! # Algorithm
//!
//! The ring has `size` entries, `size` a prime larger than the number of
//! members. Each member (backend) has a *preference list*, a permutation of
//! `0..size`:
//!
//! ```text
//! permutation[j] = (offset + j * skip) % size      j = 0, 1, 2, ...
//! ```
//!
//! with `offset` in `0..size` and `skip` in `1..size`; since `size` is prime,
//! every `skip` visits every entry exactly once. Members take turns claiming
//! the next entry of their preference list that is still free, until the ring
//! is full. Removing a member frees only its own entries and leaves the others'
//! preference lists unchanged, so most entries keep their backend (Maglev's
//! "minimal disruption"; the unit tests measure it, docs/bench.md quotes it).
//!
//! # Weights
//!
//! Members take turns in *rounds*, as in Katran's weighted Maglev: every round,
//! each member (in identity order, below) adds its weight to a credit, and when
//! the credit reaches `max_weight` (the largest weight among the members) it
//! subtracts `max_weight` and claims one entry. A member of weight `w` thus
//! claims one entry in `w` rounds out of `max_weight`, every claim succeeds,
//! and its share of the ring is `w / sum(weights)`, up to the rounding of the
//! last rounds: fewer than `2 + 2 * members * w / sum(weights)` entries off
//! (weights 1..4 among 1,000 members at 65,537 entries: a few entries).
//! Members of weight 0 are left out (drained). Weights are at most
//! [`MAX_WEIGHT`].
//!
//! The rounds are not run one by one: the `k`-th claim of a member of weight
//! `w` happens in round `ceil(k * max_weight / w)`, so [`build`] computes how
//! many rounds fill the ring, lists every claim and orders them by (round,
//! member) with a counting sort. That costs `O(size + members)` whatever the
//! weights (a literal loop over rounds costs `rounds * members`, up to about
//! 30 million steps for one member of weight 1000 among 999 of weight 1). The
//! result is the same as the literal loop (a unit test compares them).
//!
//! # Identity, hash and seeds
//!
//! A member's preference list depends only on its address, never on its slot
//! or on its position in the input, so the ring is the same across restarts and
//! whatever the order of the configuration, and tests can predict it. The
//! identity is five `u32` words: the family (4 for IPv4, 6 for IPv6), then
//! [`addr_words`] of the address as 16 bytes (network order, an IPv4 address
//! in the first 4 bytes and zeros after). Then
//!
//! ```text
//! offset = murmur3_32(identity, SEED_OFFSET) % size
//! skip   = murmur3_32(identity, SEED_SKIP) % (size - 1) + 1
//! ```
//!
//! [`murmur3_32`] is the fixed MurmurHash3_x86_32 of the shared ABI (the same
//! function family as the datapath's flow hash). The hash must be fixed and
//! specified: std's `DefaultHasher` (SipHash with unspecified, changeable
//! keys and algorithm) may differ between Rust releases, which would reshuffle
//! every flow on an upgrade. The two seeds ([`SEED_OFFSET`], [`SEED_SKIP`]) are
//! different constants, so that `offset` and `skip` are independent, and both
//! differ from [`FLOW_HASH_SEED`](xdpgate_common::lb::FLOW_HASH_SEED). Members
//! are sorted by identity before filling, which makes the claim order, and so
//! the ring, independent of the input order.
use std::net::IpAddr;

use thiserror::Error;
use xdpgate_common::lb::{DEFAULT_RING_SIZE, addr_words, murmur3_32};

/// Seed of the hash giving a member's `offset` (first preferred entry):
/// `0x4d47_4f46`, "MGOF".
pub const SEED_OFFSET: u32 = 0x4d47_4f46; // "MGOF"

/// Seed of the hash giving a member's `skip` (step through the ring):
/// `0x4d47_534b`, "MGSK".
pub const SEED_SKIP: u32 = 0x4d47_534b; // "MGSK"

/// Largest member weight [`build`] accepts. A bound keeps the credit
/// arithmetic small and still allows weight ratios of 1:1000.
pub const MAX_WEIGHT: u32 = 1_000;

/// Largest ring size [`build`] accepts: the datapath's
/// [`DEFAULT_RING_SIZE`] (65,537), the size its ring map is laid out for.
pub const MAX_RING_SIZE: u32 = DEFAULT_RING_SIZE;

/// One backend of a service, as [`build`] takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    /// The backend's slot in the datapath's backend array
    /// ([`maps::LB_BACKENDS`](xdpgate_common::maps::LB_BACKENDS)): the value
    /// written into the ring entries this member gets. Never 0 (a ring entry
    /// of 0 means "no backend").
    pub slot: u32,
    /// The backend's address: the member's identity, which alone decides its
    /// preference list.
    pub addr: IpAddr,
    /// Relative share of the ring, `0..=MAX_WEIGHT`; 0 leaves the member out.
    pub weight: u32,
}

/// Why [`build`] refused its input.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum MaglevError {
    /// The ring size is not a prime (Maglev's permutations need one).
    #[error("Maglev ring size {0} is not a prime")]
    SizeNotPrime(u32),
    /// The ring size is below 2, or not larger than the number of members
    /// with a weight above 0.
    #[error(
        "Maglev ring size {size} is too small for {members} backends: it must be a prime of at least 2 and larger than the number of backends"
    )]
    SizeTooSmall {
        /// The size asked for.
        size: u32,
        /// Members with a weight above 0.
        members: usize,
    },
    /// The ring size is above [`MAX_RING_SIZE`].
    #[error("Maglev ring size {0} is above the maximum {MAX_RING_SIZE}")]
    SizeTooLarge(u32),
    /// Two members have the same address.
    #[error("backend {0} is listed twice")]
    DuplicateAddress(IpAddr),
    /// Two members have the same slot.
    #[error("backend slot {0} is used by two backends")]
    DuplicateSlot(u32),
    /// A member has slot 0, which is reserved.
    #[error("backend {0}: slot 0 is reserved (a ring entry of 0 means no backend)")]
    ZeroSlot(IpAddr),
    /// A member's weight is above [`MAX_WEIGHT`].
    #[error("backend {addr}: weight {weight} is above the maximum {MAX_WEIGHT}")]
    WeightTooLarge {
        /// The member's address.
        addr: IpAddr,
        /// Its weight.
        weight: u32,
    },
}

/// Whether `n` is a prime (trial division; at most about 2^15 steps for a
/// `u32`).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d = 5u64;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// The five identity words of an address: family (4 or 6), then
/// [`addr_words`] of its 16-byte form.
fn identity(addr: IpAddr) -> [u32; 5] {
    let (family, bytes) = match addr {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (4, b)
        }
        IpAddr::V6(a) => (6, a.octets()),
    };
    let w = addr_words(&bytes);
    [family, w[0], w[1], w[2], w[3]]
}

/// Builds the Maglev ring of `members` with `size` entries: `size` backend
/// slots, entry `i` being the backend of flows whose
/// [`flow_hash`](xdpgate_common::lb::flow_hash) `% size == i` (see
/// [`lookup`]).
///
/// Members of weight 0 are left out; if no member has a weight above 0, every
/// entry is 0 ("no backend"). The result depends only on the set of members
/// (addresses, slots, weights) and on `size`, not on the order of `members`.
///
/// Errors: `size` below 2, not a prime, above [`MAX_RING_SIZE`] or not larger
/// than the number of members of weight above 0; two members with the same
/// address or slot; a slot of 0; a weight above [`MAX_WEIGHT`].
pub fn build(members: &[Member], size: u32) -> Result<Vec<u32>, MaglevError> {
    if size < 2 {
        return Err(MaglevError::SizeTooSmall {
            size,
            members: members.iter().filter(|m| m.weight > 0).count(),
        });
    }
    if size > MAX_RING_SIZE {
        return Err(MaglevError::SizeTooLarge(size));
    }
    if !is_prime(size) {
        return Err(MaglevError::SizeNotPrime(size));
    }
    for m in members {
        if m.slot == 0 {
            return Err(MaglevError::ZeroSlot(m.addr));
        }
        if m.weight > MAX_WEIGHT {
            return Err(MaglevError::WeightTooLarge {
                addr: m.addr,
                weight: m.weight,
            });
        }
    }
    let mut slots: Vec<u32> = members.iter().map(|m| m.slot).collect();
    slots.sort_unstable();
    if let Some(w) = slots.windows(2).find(|w| w[0] == w[1]) {
        return Err(MaglevError::DuplicateSlot(w[0]));
    }
    // Identity order: the claim order within a round.
    let mut sorted: Vec<([u32; 5], &Member)> =
        members.iter().map(|m| (identity(m.addr), m)).collect();
    sorted.sort_unstable_by_key(|a| a.0);
    if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(MaglevError::DuplicateAddress(w[0].1.addr));
    }
    sorted.retain(|(_, m)| m.weight > 0);
    let n = sorted.len();
    if n == 0 {
        return Ok(vec![0; size as usize]);
    }
    if size as usize <= n {
        return Err(MaglevError::SizeTooSmall { size, members: n });
    }

    // Per member: the next entry of its preference list to try, and its step.
    let mut next = Vec::with_capacity(n);
    let mut skip = Vec::with_capacity(n);
    let mut weights = Vec::with_capacity(n);
    let mut slot = Vec::with_capacity(n);
    for (id, m) in &sorted {
        next.push(murmur3_32(id, SEED_OFFSET) % size);
        skip.push(murmur3_32(id, SEED_SKIP) % (size - 1) + 1);
        weights.push(m.weight);
        slot.push(m.slot);
    }

    let mut ring = vec![0u32; size as usize];
    // Taken entries as a bitmap (8 KiB at 65,537 entries, in the L1 cache):
    // the probes of the last claims, which walk far, read it and not the ring.
    let mut taken = vec![0u64; (size as usize).div_ceil(64)];
    for i in claim_order(&weights, size) {
        let i = i as usize;
        let (mut p, s) = (next[i], skip[i]);
        // The preference list is a full cycle of the ring and fewer than
        // `size` entries are taken, so this finds a free one. `p + s < 2 *
        // size`, so one subtraction replaces the modulo.
        while taken[p as usize / 64] & (1 << (p % 64)) != 0 {
            p += s;
            if p >= size {
                p -= size;
            }
        }
        taken[p as usize / 64] |= 1 << (p % 64);
        ring[p as usize] = slot[i];
        p += s;
        if p >= size {
            p -= size;
        }
        next[i] = p;
    }
    Ok(ring)
}

/// The members (indexes into `weights`, all above 0) in the order they claim
/// entries, `size` claims in all: by round, then by index, member `i`
/// claiming in round `r` (from 1) when `floor(r * w_i / max)` grows, i.e. its
/// `k`-th claim is in round `ceil(k * max / w_i)`.
fn claim_order(weights: &[u32], size: u32) -> Vec<u32> {
    let max = weights.iter().copied().max().unwrap_or(1);
    let sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let (size64, max64) = (u64::from(size), u64::from(max));
    let claims_by = |rounds: u64| -> u64 {
        weights
            .iter()
            .map(|&w| rounds * u64::from(w) / max64)
            .sum::<u64>()
    };
    // The fewest rounds with `size` claims. `rounds * sum / max` minus less
    // than one per member are made by then, which bounds the search; and a
    // member of weight `max` claims every round, so `size` rounds are enough.
    let mut lo = (size64 * max64).div_ceil(sum);
    let mut hi = ((size64 + weights.len() as u64) * max64)
        .div_ceil(sum)
        .min(size64);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if claims_by(mid) >= size64 {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let rounds = lo as u32;
    // Counting sort by round; members in index order within a round.
    let mut start = vec![0u32; rounds as usize + 1];
    for &w in weights {
        for r in claim_rounds(w, max, rounds) {
            start[r as usize + 1] += 1;
        }
    }
    for r in 1..start.len() {
        start[r] += start[r - 1];
    }
    let mut order = vec![0u32; start[rounds as usize] as usize];
    for (i, &w) in weights.iter().enumerate() {
        for r in claim_rounds(w, max, rounds) {
            order[start[r as usize] as usize] = i as u32;
            start[r as usize] += 1;
        }
    }
    // The last round may hold more claims than entries left.
    order.truncate(size as usize);
    order
}

/// The rounds (from 0, below `rounds`) in which a member of weight `w`
/// (`1..=max`) claims an entry: its `k`-th claim is in round
/// `ceil(k * max / w) - 1`. Computed with additions only, keeping
/// `k * max = a * w + b` with `0 <= b < w` (divisions here cost more than the
/// whole fill).
fn claim_rounds(w: u32, max: u32, rounds: u32) -> impl Iterator<Item = u32> {
    let (q, rem) = (max / w, max % w);
    let (mut a, mut b) = (0u32, 0u32);
    std::iter::from_fn(move || {
        a += q;
        b += rem;
        if b >= w {
            b -= w;
            a += 1;
        }
        // `a >= 1` as `q >= 1`.
        let r = a + u32::from(b > 0) - 1;
        (r < rounds).then_some(r)
    })
}

/// The backend slot of a flow: `ring[hash % ring.len()]`, what the datapath
/// does with [`flow_hash`](xdpgate_common::lb::flow_hash). 0 ("no backend")
/// for an empty ring.
pub fn lookup(ring: &[u32], hash: u32) -> u32 {
    if ring.is_empty() {
        return 0;
    }
    ring[hash as usize % ring.len()]
}

#[cfg(test)]
mod tests;

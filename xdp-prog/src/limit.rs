//! The rate-limit action: GCRA buckets shared by every CPU (see
//! `docs/design/ddos.md`).
//!
//! A bucket holds one theoretical arrival time (TAT) per dimension. A packet
//! costs `interval x units` nanoseconds (one packet, or its bytes) and is
//! admitted when `max(TAT, now) + cost` is at most `tolerance` (the burst)
//! ahead of now; admitting writes that value back with compare-and-swap, so
//! two CPUs never both spend the same credit. A CPU that loses the race
//! [`ATTEMPTS`] times in a row drops the packet (counted like any other
//! packet over the limit).
use aya_ebpf::helpers::bpf_ktime_get_ns;
use xdpgate_common::limit::{
    Bucket, BucketKey, INTERVAL_SHIFT, LimitSpec, key, kind, rule_stat_index,
};

use crate::{
    acl::PREFIX_MASKS,
    handoff::Fields,
    maps::{LIMIT_BUCKETS, LIMIT_KEY, LIMIT_RULE, LIMIT_STATS},
};

/// Compare-and-swap attempts per dimension before a packet is dropped.
const ATTEMPTS: usize = 4;

/// Whether a packet of `bytes` that rule counter slot `counter` matched is
/// under the rule's limit `spec`; spends its cost when it is. `f` is the
/// packet as the classifier saw it (`maps::SCRATCH`).
#[inline(always)]
pub(crate) fn admit(spec: &LimitSpec, counter: u32, bytes: u64, f: &Fields) -> bool {
    let bucket = if spec.key == key::RULE {
        LIMIT_RULE.get_ptr_mut(counter)
    } else {
        let v4 = f.v4 != 0;
        let (addr, k) = match (spec.key == key::SRC, v4) {
            (true, true) => (&f.src, kind::SRC4),
            (true, false) => (&f.src, kind::SRC6),
            (false, true) => (&f.dst, kind::DST4),
            (false, false) => (&f.dst, kind::DST6),
        };
        let len = if v4 { spec.v4_prefix } else { spec.v6_prefix };
        prefix_bucket(counter, k, addr, len, spec.tag)
    };
    let Some(b) = bucket else {
        return false;
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `b` points to a bucket in map memory, valid for this run;
    // every write to it is an atomic compare-and-swap.
    unsafe { take(b, now, spec, bytes) }
}

/// The bucket of `(slot, kind, addr masked to len, tag)` in the LRU table,
/// created full when missing (`None` only if the table refuses both).
#[inline(always)]
pub(crate) fn prefix_bucket(
    slot: u32,
    kind: u32,
    addr: &[u32; 4],
    len: u32,
    tag: u32,
) -> Option<*mut Bucket> {
    let k = LIMIT_KEY.get_ptr_mut(0)?;
    let mask = PREFIX_MASKS.get(len as usize)?;
    // SAFETY: per-CPU scratch key, written and used by this packet only.
    let key = unsafe {
        k.write(BucketKey {
            slot,
            kind,
            addr: [
                addr[0] & mask[0],
                addr[1] & mask[1],
                addr[2] & mask[2],
                addr[3] & mask[3],
            ],
            tag,
        });
        &*k
    };
    if let Some(b) = LIMIT_BUCKETS.get_ptr_mut(key) {
        return Some(b);
    }
    // A full bucket. Another CPU may insert the same key first; then this
    // insert fails and the lookup below finds that one.
    let _ = LIMIT_BUCKETS.insert(key, Bucket::default(), 0);
    LIMIT_BUCKETS.get_ptr_mut(key)
}

/// Spends the cost of one packet of `bytes` from bucket `b` if both
/// dimensions of `spec` allow it.
///
/// # Safety
///
/// `b` points to a bucket in map memory.
#[inline(always)]
pub(crate) unsafe fn take(b: *mut Bucket, now: u64, spec: &LimitSpec, bytes: u64) -> bool {
    // SAFETY: per the caller, `b` is a valid bucket.
    unsafe {
        if spec.pkt_interval != 0
            && !gcra(
                &raw mut (*b).tat_packets,
                now,
                spec.pkt_interval,
                spec.pkt_tolerance,
                1,
            )
        {
            return false;
        }
        if spec.byte_interval != 0
            && !gcra(
                &raw mut (*b).tat_bytes,
                now,
                spec.byte_interval,
                spec.byte_tolerance,
                bytes,
            )
        {
            return false;
        }
    }
    true
}

/// One GCRA dimension: admits `units` if the advanced arrival time stays
/// within `tolerance` of `now`, and stores it.
///
/// # Safety
///
/// `tat` points to a `u64` in map memory.
#[inline(always)]
unsafe fn gcra(tat: *mut u64, now: u64, interval: u64, tolerance: u64, units: u64) -> bool {
    // At most 2^48 (1 unit per second) times 2^16 units: no overflow.
    let cost = (interval * (units & 0xffff)) >> INTERVAL_SHIFT;
    for _ in 0..ATTEMPTS {
        // SAFETY: per the caller.
        let old = unsafe { core::ptr::read_volatile(tat) };
        let base = if old > now { old } else { now };
        let next = base + cost;
        if next - now > tolerance {
            return false;
        }
        // SAFETY: per the caller; an aligned u64 of map memory.
        if unsafe { cas(tat, old, next) } {
            return true;
        }
    }
    false
}

/// Atomically replaces `*p` with `new` if it equals `old`; whether it did.
///
/// LLVM emits BPF atomics with a fetched result only for `-mcpu=v3`, and the
/// object is built for `generic`; the instruction itself
/// (`BPF_ATOMIC | BPF_CMPXCHG`, Linux 5.12) is what every supported kernel
/// accepts on map values, so it is written out here.
///
/// # Safety
///
/// `p` points to an aligned `u64` in map memory.
#[inline(always)]
unsafe fn cas(p: *mut u64, old: u64, new: u64) -> bool {
    let prev: u64;
    // SAFETY: per the caller; the instruction reads and writes only `*p`
    // and r0.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({p} + 0, r0, {new})",
            p = in(reg) p,
            new = in(reg) new,
            inout("r0") old => prev,
            options(nostack),
        );
    }
    prev == old
}

/// Adds a packet of `bytes` to rule counter slot `counter`'s `kind`
/// counter (`rule_stat`).
#[inline(always)]
pub(crate) fn count(counter: u32, kind: u32, bytes: u64) {
    if let Some(c) = LIMIT_STATS.get_ptr_mut(rule_stat_index(counter, kind)) {
        // SAFETY: per-CPU value, so no other CPU writes it concurrently.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

//! The per-CPU hand-off values: what one part of the datapath leaves in a
//! per-CPU map slot (`maps`) for another to read, on the same CPU, for the
//! same packet (or, for the next-hop cache, for later packets).
//!
//! Passing values through memory is deliberate: a value the verifier reads
//! back from a map is an unknown scalar, the same from every path that wrote
//! it, so the code after the hand-off is checked once instead of once per
//! path (each user says what it measured). These types are datapath-only:
//! the control plane never reads or writes them, so they are not part of the
//! ABI in `xdpgate_common`.
//!
//! Addresses here use the parser's layout: four big-endian words, IPv4 in
//! word 0 and the rest zero.

/// An address of the parser's layout as key bytes (`LocalAddrKey::addr`,
/// `ServiceKey::addr`).
#[inline(always)]
pub(crate) fn addr_bytes(words: &[u32; 4]) -> [u8; 16] {
    // SAFETY: [u32; 4] and [u8; 16] have the same size and no invalid values.
    unsafe { core::mem::transmute(*words) }
}

/// What classification needs from a packet, flattened to plain integers:
/// the value of `maps::SCRATCH`, written by `acl::classify` and read back
/// before the classifier runs; `events` and the steering program read it
/// again for the same packet.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Fields {
    pub(crate) src: [u32; 4],
    pub(crate) dst: [u32; 4],
    /// 1 for IPv4, 0 for IPv6.
    pub(crate) v4: u32,
    pub(crate) proto: u32,
    /// Index into the source-port class table, or [`NONE`].
    pub(crate) sport: u32,
    /// Index into the destination-port/ICMP class table, or [`NONE`].
    pub(crate) dport: u32,
}

/// `Fields::sport`/`dport` of a packet without that L4 field.
pub(crate) const NONE: u32 = u32::MAX;

/// Per-CPU event state (`maps::EVENT_SAMPLE`): the sampling count, and the
/// drop being reported, passed from `events::dropped` to `events::emit`
/// through memory.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Pending {
    /// Drops seen since the last report.
    pub(crate) seen: u32,
    pub(crate) ifindex: u32,
    pub(crate) cause: u32,
    pub(crate) rule: u32,
}

/// What the main program hands over to the steering program it tail-calls
/// (`maps::STEER_CTX`): the main program writes `bytes`, `slot` and `flags`,
/// `steer::fill` the rest from [`Fields`].
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct SteerCtx {
    /// Source address as parsed (big-endian words, IPv4 in word 0).
    pub(crate) src: [u32; 4],
    /// Destination address, like `src`.
    pub(crate) dst: [u32; 4],
    /// Frame length in bytes.
    pub(crate) bytes: u64,
    /// Interface counter slot.
    pub(crate) slot: u32,
    /// Interface flags.
    pub(crate) flags: u32,
    /// `Family` as u32 (IPv4 or IPv6 only).
    pub(crate) family: u32,
    /// Source port, host order (0 without ports).
    pub(crate) sport: u16,
    /// Destination port, host order.
    pub(crate) dport: u16,
    /// L4 protocol.
    pub(crate) proto: u8,
    /// Non-zero: the packet has ports (TCP, UDP, SCTP; not a later fragment).
    pub(crate) ports: u8,
    /// Padding.
    pub(crate) _pad: [u8; 2],
}

/// [`NextHop::mode`]: resolved for encapsulation (outer header of the
/// backend's family, any next hop).
pub(crate) const HOP_ENCAP: u8 = 1;
/// [`NextHop::mode`]: resolved for L2 DSR (the backend itself on-link).
pub(crate) const HOP_L2DSR: u8 = 2;

/// A cached next hop: the value of `maps::LB_NEXTHOP` (per CPU, by backend
/// slot), what a successful `bpf_fib_lookup` to the backend returned (see
/// `steer::nexthop`). Valid for a packet when it was resolved for the
/// backend's current address and family (a reused slot never matches its
/// previous backend's entry), the same mode and ingress interface, in the
/// routing generation in force (`maps::LB_ROUTE_GEN`), has not expired, and
/// was resolved for a packet at least as long (the lookup's MTU check,
/// against the route's MTU or else the egress device's: a device MTU
/// lowered since applies at the next generation or when the entry expires).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct NextHop {
    /// The backend address it was resolved for: `Backend::addr` as words.
    pub(crate) addr: [u32; 4],
    /// The routing generation (`maps::LB_ROUTE_GEN`) read before the lookup.
    pub(crate) generation: u64,
    /// `bpf_jiffies64` after which it is stale; 0: never valid.
    pub(crate) expires: u64,
    /// The ingress interface of the lookup (the FIB lookup depends on it:
    /// forwarding enabled, policy rules).
    pub(crate) iif: u32,
    /// Egress interface.
    pub(crate) ifindex: u32,
    /// Source MAC (the egress interface's) and destination MAC (the next
    /// hop's), the 12 bytes as `bpf_fib_lookup` returns them (`hop_macs`).
    pub(crate) macs: [u32; 3],
    /// The L3 length the lookup checked against the route's MTU: packets up
    /// to this long use the entry, longer ones are looked up again.
    pub(crate) fits: u16,
    /// The backend's family (`FAMILY_V4`, `FAMILY_V6`): the outer family.
    pub(crate) family: u8,
    /// [`HOP_ENCAP`] or [`HOP_L2DSR`].
    pub(crate) mode: u8,
}

// The size `maps::LB_NEXTHOP`'s memory is documented with.
const _: () = assert!(size_of::<NextHop>() == 56);

/// What the main program hands over to the DDoS program it tail-calls for
/// a packet that a rule with a limit or `syncookie` allowed
/// (`maps::DDOS_CTX`); the addresses, ports and family are in `Fields`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct DdosCtx {
    /// Frame length in bytes.
    pub(crate) bytes: u64,
    /// Interface counter slot.
    pub(crate) slot: u32,
    /// Interface flags (`IFACE_*`), for the hand-over to steering.
    pub(crate) iface_flags: u32,
    /// Ingress ifindex (datapath events).
    pub(crate) ifindex: u32,
    /// The rule's counter slot.
    pub(crate) counter: u32,
    /// The rule's id (datapath events).
    pub(crate) rule_id: u32,
    /// The rule's `limit::RULE_*` flags.
    pub(crate) rule_flags: u32,
    /// The rule's limit (when `rule_flags` has `RULE_LIMIT`).
    pub(crate) limit: xdpgate_common::limit::LimitSpec,
}

/// Bytes of [`SynScratch::ip`]: an IPv6 header (an IPv4 one uses the first 20).
pub(crate) const SCRATCH_IP: usize = 40;
/// Bytes of [`SynScratch::tcp`]: the longest TCP header.
pub(crate) const SCRATCH_TCP: usize = 60;

/// The SYN-cookie program's working memory (`maps::SYN_SCRATCH`): copies
/// of the packet's IP and TCP headers, which the cookie helpers read, and
/// the reply's headers as they are built. Map memory, not the stack: the
/// helpers take pointers to it, and it keeps 180 bytes off the 512-byte
/// stack.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct SynScratch {
    /// The received IP header (without options or extension headers).
    pub(crate) ip: [u8; SCRATCH_IP],
    /// The received TCP header with its options.
    pub(crate) tcp: [u8; SCRATCH_TCP],
    /// The reply: IP header (20 or 40 bytes) then the TCP header.
    pub(crate) out: [u8; SCRATCH_IP + xdpgate_common::limit::SYNACK_TCP_LEN],
    /// The option walk's position, passed through memory (see
    /// `syncookie::client_options`).
    pub(crate) at: u32,
    /// Offset of the IP header in the frame (`syncookie::find_headers`).
    pub(crate) l3: u16,
    /// Offset of the TCP header.
    pub(crate) l4: u16,
    /// The client's window scale (0xff: none), from its options.
    pub(crate) wscale: u8,
    /// 1: the client permits SACK.
    pub(crate) sack: u8,
    /// 1: the client sent timestamps (`tsval`).
    pub(crate) ts: u8,
    /// Padding.
    pub(crate) _pad: u8,
    /// The client's timestamp value, network byte order.
    pub(crate) tsval: [u8; 4],
}

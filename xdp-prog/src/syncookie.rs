//! The SYN-cookie path, run by the DDoS program (`ddos`) for TCP packets
//! that a rule with `syncookie` allowed (see `docs/design/ddos.md`).
//!
//! - A SYN is answered here with a SYN-ACK whose sequence number is the
//!   kernel's own SYN cookie (`bpf_tcp_raw_gen_syncookie_ipv4/ipv6`), sent
//!   back out of the interface (`XDP_TX`), unless the SYN-ACKs to its source
//!   prefix are over the reflector limit (dropped, `synack_limited`) or its
//!   destination and port are due a kernel refresh (passed: the kernel
//!   checks cookie ACKs only on listeners that sent a cookie themselves in
//!   the last two minutes, and under `tcp_syncookies = 2` it answers that SYN
//!   with one).
//! - A packet of an established connection (the kernel has a socket that is
//!   not a listener for it) passes; so does an ACK whose cookie the kernel's
//!   check accepts: the kernel then creates the connection from it.
//! - An RST passes (the kernel checks its sequence number itself);
//!   anything else is dropped (`bad_cookie`).
//!
//! The reply keeps the frame's Ethernet header and VLAN tags (MACs swapped)
//! and replaces everything after them: an IPv4 header without options, or an
//! IPv6 header without extension headers, and a 40-byte TCP header. The
//! headers are read into and built in per-CPU map memory (`SynScratch`) with
//! `bpf_xdp_load_bytes`/`bpf_xdp_store_bytes`, so the offsets of VLAN tags,
//! IPv4 options and IPv6 extension headers need no packet-pointer proofs.
use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock, bpf_sock_tuple, xdp_md},
    helpers::{
        bpf_ktime_get_ns, bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_raw_check_syncookie_ipv4,
        bpf_tcp_raw_check_syncookie_ipv6, bpf_tcp_raw_gen_syncookie_ipv4,
        bpf_tcp_raw_gen_syncookie_ipv6, bpf_xdp_adjust_tail, bpf_xdp_load_bytes,
        bpf_xdp_store_bytes,
    },
    programs::XdpContext,
};
use xdpgate_common::{
    Action, DropReason, MAX_IPV6_EXT_HEADERS,
    csum::{add32, fold32},
    limit::{
        SYNACK_TCP_LEN, SYNCOOKIE_ENABLED, SYNCOOKIE_SACK, SYNCOOKIE_TIMESTAMPS, SYNCOOKIE_WSCALE,
        SyncookieConfig, kind, rule_stat,
    },
    wire::{
        ETH_ALEN, ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, IPPROTO_AH, IPPROTO_DSTOPTS,
        IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_TCP, IPV4_DF, IPV4_HLEN,
        IPV4_VERSION_IHL_NO_OPTIONS, IPV6_AH_UNIT, IPV6_EXT_UNIT, IPV6_FRAG_HLEN, IPV6_HLEN,
        TCP_ACK, TCP_FIN, TCP_HLEN, TCP_RST, TCP_SYN, TCPOPT_EOL, TCPOPT_MSS, TCPOPT_NOP,
        TCPOPT_SACK_PERM, TCPOPT_TIMESTAMP, TCPOPT_WINDOW, VLAN_HLEN,
    },
};

use crate::{
    handoff::{DdosCtx, Fields, NONE, SCRATCH_TCP, SynScratch},
    limit,
    maps::{SYN_SCRATCH, SYNCOOKIE},
};

/// `TCP_LISTEN` of the kernel's `enum tcp_state`.
const TCP_LISTEN: u32 = 10;
/// Hop limit / TTL of the replies.
const REPLY_TTL: u8 = 64;
/// The cookie timestamp's low bits (`TSBITS` in net/ipv4/syncookies.c):
/// window scale in bits 0-3 (15: none), SACK in bit 4, ECN in bit 5.
const TS_BITS: u32 = 6;
/// Window-scale field of the cookie timestamp meaning "no window scaling".
const TS_NO_WSCALE: u32 = 0xf;
/// SACK bit of the cookie timestamp.
const TS_SACK: u32 = 1 << 4;
/// Largest window scale (RFC 7323).
const MAX_WSCALE: u8 = 14;

/// What to do with a TCP packet a `syncookie` rule allowed, or why it is
/// dropped. `f` is the packet as the classifier saw it (`maps::SCRATCH`).
#[inline(always)]
pub(crate) fn decide(ctx: &XdpContext, s: &DdosCtx, f: &Fields) -> Result<Action, DropReason> {
    let v4 = f.v4 != 0;
    let sc = SYN_SCRATCH.get_ptr_mut(0).ok_or(DropReason::BadCookie)?;
    let cfg = SYNCOOKIE.get_ptr(0).ok_or(DropReason::BadCookie)?;
    // SAFETY: per-CPU scratch (this packet only) and the config's only
    // element.
    let (sc, cfg): (&mut SynScratch, SyncookieConfig) = unsafe { (&mut *sc, *cfg) };
    let ip_len = if v4 { IPV4_HLEN } else { IPV6_HLEN };
    // The IP header and the fixed TCP header, then the whole TCP header.
    if f.proto != IPPROTO_TCP as u32 || f.dport == NONE {
        return Err(DropReason::BadCookie);
    }
    if find_headers(ctx.ctx, sc, v4 as u32) != 0 {
        return Err(DropReason::BadCookie);
    }
    // SAFETY: fields of this packet's per-CPU scratch, just written.
    let (l3, l4) = unsafe {
        (
            core::ptr::read_volatile(&raw const sc.l3) as u32,
            core::ptr::read_volatile(&raw const sc.l4) as u32,
        )
    };
    load(ctx, l3, &mut sc.ip, ip_len)?;
    load(ctx, l4, &mut sc.tcp, TCP_HLEN)?;
    // The header length as 20 + 4 x (data offset - 5), the extra words
    // passed through memory: LLVM otherwise computes it as a shift and a
    // mask, and 6.1's verifier loses the lower bound in the mask, then
    // refuses a length that may be zero for the helpers below.
    let doff = (sc.tcp[12] >> 4) as usize;
    if doff < TCP_HLEN / 4 {
        return Err(DropReason::BadCookie);
    }
    let extra = doff - TCP_HLEN / 4;
    // SAFETY: reads a local through a valid pointer.
    let extra = unsafe { core::ptr::read_volatile(&raw const extra) };
    if extra > (SCRATCH_TCP - TCP_HLEN) / 4 {
        return Err(DropReason::BadCookie);
    }
    let th_len = TCP_HLEN + extra * 4;
    load(ctx, l4, &mut sc.tcp, th_len)?;
    let flags = sc.tcp[13];
    if flags & TCP_RST != 0 {
        return Ok(Action::Pass);
    }
    if flags & (TCP_SYN | TCP_ACK | TCP_FIN) == TCP_SYN {
        let h = Headers { v4, l3, th_len };
        return syn(ctx, s, &h, sc, &cfg, f);
    }
    if established(ctx, v4, f) {
        return Ok(Action::Pass);
    }
    if flags & (TCP_SYN | TCP_ACK) == TCP_ACK && cfg.flags & SYNCOOKIE_ENABLED != 0 {
        let ip = sc.ip.as_mut_ptr();
        let th = sc.tcp.as_mut_ptr();
        // SAFETY: `ip` and `th` point to the header copies in map memory,
        // 40 and 60 bytes: at least an IPv6 or IPv4 header and a TCP header.
        let ok = unsafe {
            if v4 {
                bpf_tcp_raw_check_syncookie_ipv4(ip.cast(), th.cast())
            } else {
                bpf_tcp_raw_check_syncookie_ipv6(ip.cast(), th.cast())
            }
        } == 0;
        if ok {
            limit::count(s.counter, rule_stat::COOKIE_ACKS, s.bytes);
            return Ok(Action::Pass);
        }
    }
    Err(DropReason::BadCookie)
}

/// The byte at frame offset `off`, or `None` past the frame's end.
#[inline(always)]
fn byte_at(ctx: *mut xdp_md, off: u32) -> Option<u8> {
    let mut b = [0u8; 1];
    // SAFETY: one byte of stack; the helper checks the frame.
    let r = unsafe { bpf_xdp_load_bytes(ctx, off & 0xffff, b.as_mut_ptr().cast(), 1) };
    (r == 0).then_some(b[0])
}

/// Finds the IP and TCP headers of the frame the parser accepted as TCP
/// (VLAN tags, IPv4 options, IPv6 extension headers as the parser walks
/// them) and stores their offsets in `sc.l3`/`sc.l4`; 0 on success.
///
/// The parser does not hand the offsets over: a value that differs per
/// parser path and stays live until the hand-over kept the 6.1 verifier from
/// merging the main program's paths (over 1,000,000 instructions). A
/// function of its own, returning through memory, for the reason
/// [`client_options`] is.
#[inline(never)]
fn find_headers(ctx: *mut xdp_md, sc: &mut SynScratch, v4: u32) -> u32 {
    let Some(l4) = walk_headers(ctx, sc, v4 != 0) else {
        return 1;
    };
    // SAFETY: a field of this packet's per-CPU scratch.
    unsafe { core::ptr::write_volatile(&raw mut sc.l4, l4 as u16) };
    0
}

#[inline(always)]
fn walk_headers(ctx: *mut xdp_md, sc: &mut SynScratch, v4: bool) -> Option<u32> {
    let mut l3 = ETH_HLEN as u32;
    let mut et = u16::from_be_bytes([byte_at(ctx, 12)?, byte_at(ctx, 13)?]);
    for _ in 0..2 {
        if et != ETH_P_8021Q && et != ETH_P_8021AD {
            break;
        }
        et = u16::from_be_bytes([byte_at(ctx, l3 + 2)?, byte_at(ctx, l3 + 3)?]);
        l3 += VLAN_HLEN as u32;
    }
    // SAFETY: a field of this packet's per-CPU scratch.
    unsafe { core::ptr::write_volatile(&raw mut sc.l3, l3 as u16) };
    if v4 {
        let ihl = (byte_at(ctx, l3)? & 0x0f) as u32;
        return Some(l3 + ihl * 4);
    }
    let mut next = byte_at(ctx, l3 + 6)?;
    let mut off = l3 + IPV6_HLEN as u32;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let len = byte_at(ctx, off + 1)? as u32;
                next = byte_at(ctx, off)?;
                off += (len + 1) * IPV6_EXT_UNIT as u32;
            }
            IPPROTO_AH => {
                let len = byte_at(ctx, off + 1)? as u32;
                next = byte_at(ctx, off)?;
                off += (len + 2) * IPV6_AH_UNIT as u32;
            }
            IPPROTO_FRAGMENT => {
                next = byte_at(ctx, off)?;
                off += IPV6_FRAG_HLEN as u32;
            }
            _ => break,
        }
        off &= 0xffff;
    }
    (next == IPPROTO_TCP).then_some(off)
}

/// Copies `len` bytes at frame offset `off` into `buf`.
#[inline(always)]
fn load<const N: usize>(
    ctx: &XdpContext,
    off: u32,
    buf: &mut [u8; N],
    len: usize,
) -> Result<(), DropReason> {
    // Through memory, so the verifier sees both bounds checked on the
    // value passed (LLVM otherwise folds them into a mask that loses the
    // lower one, and the helper refuses a size that may be zero).
    // SAFETY: reads a local through a valid pointer.
    let len = unsafe { core::ptr::read_volatile(&raw const len) };
    if len == 0 || len > N {
        return Err(DropReason::BadCookie);
    }
    // SAFETY: `buf` has room for `len <= N` bytes; the helper checks the
    // frame's bounds.
    let r =
        unsafe { bpf_xdp_load_bytes(ctx.ctx, off & 0xffff, buf.as_mut_ptr().cast(), len as u32) };
    if r == 0 {
        Ok(())
    } else {
        Err(DropReason::BadCookie)
    }
}

/// Whether the kernel has a socket for the packet that is not a listener.
#[inline(always)]
fn established(ctx: &XdpContext, v4: bool, f: &Fields) -> bool {
    // SAFETY: an all-zero tuple is a valid value of the plain-data union.
    let mut t: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    // Ports in network byte order; `Fields` holds them as class-table
    // indexes with the port in the low 16 bits.
    let sport = (f.sport as u16).to_be();
    let dport = (f.dport as u16).to_be();
    let size = if v4 {
        t.__bindgen_anon_1.ipv4.saddr = f.src[0];
        t.__bindgen_anon_1.ipv4.daddr = f.dst[0];
        t.__bindgen_anon_1.ipv4.sport = sport;
        t.__bindgen_anon_1.ipv4.dport = dport;
        12
    } else {
        t.__bindgen_anon_1.ipv6.saddr = f.src;
        t.__bindgen_anon_1.ipv6.daddr = f.dst;
        t.__bindgen_anon_1.ipv6.sport = sport;
        t.__bindgen_anon_1.ipv6.dport = dport;
        36
    };
    // SAFETY: the tuple is on the stack and `size` bytes long; a socket the
    // helper returns is released below.
    let sk = unsafe {
        bpf_skc_lookup_tcp(
            ctx.ctx.cast(),
            &raw mut t,
            size,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    }
    .cast::<bpf_sock>();
    if sk.is_null() {
        return false;
    }
    // SAFETY: a socket the helper returned, read then released once.
    let state = unsafe {
        let state = (*sk).state;
        bpf_sk_release(sk.cast());
        state
    };
    state != TCP_LISTEN
}

/// Where the packet's headers are.
#[derive(Clone, Copy)]
struct Headers {
    /// IPv4 (else IPv6).
    v4: bool,
    /// Offset of the IP header.
    l3: u32,
    /// Length of the TCP header with its options (20..=60).
    th_len: usize,
}

/// A SYN: answered with a cookie, passed for a refresh, or refused by the
/// reflector limit.
#[inline(always)]
fn syn(
    ctx: &XdpContext,
    s: &DdosCtx,
    h: &Headers,
    sc: &mut SynScratch,
    cfg: &SyncookieConfig,
    f: &Fields,
) -> Result<Action, DropReason> {
    let Headers { v4, l3, th_len } = *h;
    if cfg.flags & SYNCOOKIE_ENABLED == 0 {
        return Err(DropReason::BadCookie);
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let dport = f.dport & 0xffff;
    let (refresh_kind, synack_kind, len) = if v4 {
        (kind::REFRESH4, kind::SYNACK4, cfg.synack.v4_prefix)
    } else {
        (kind::REFRESH6, kind::SYNACK6, cfg.synack.v6_prefix)
    };
    // Once per refresh interval per destination and port, the kernel
    // answers (and so keeps accepting cookie ACKs).
    if let Some(b) = limit::prefix_bucket(s.counter, refresh_kind, &f.dst, 128, dport) {
        // SAFETY: a bucket in map memory.
        let last = unsafe { core::ptr::read_volatile(&raw const (*b).tat_packets) };
        if last == 0 || now.wrapping_sub(last) > cfg.refresh_ns {
            // SAFETY: as above; a plain store is enough: two CPUs that both
            // refresh pass one SYN each.
            unsafe { core::ptr::write_volatile(&raw mut (*b).tat_packets, now) };
            limit::count(s.counter, rule_stat::KERNEL_SYNS, s.bytes);
            return Ok(Action::Pass);
        }
    }
    let b = limit::prefix_bucket(s.counter, synack_kind, &f.src, len, 0)
        .ok_or(DropReason::SynackLimited)?;
    // SAFETY: a bucket in map memory, updated with compare-and-swap.
    if !unsafe { limit::take(b, now, &cfg.synack, 0) } {
        return Err(DropReason::SynackLimited);
    }
    let ip = sc.ip.as_mut_ptr();
    let th = sc.tcp.as_mut_ptr();
    // SAFETY: the header copies in map memory; `th_len` (20..=60) bytes of
    // the TCP copy were loaded and it has room for 60.
    let r = unsafe {
        if v4 {
            bpf_tcp_raw_gen_syncookie_ipv4(ip.cast(), th.cast(), th_len as u32)
        } else {
            bpf_tcp_raw_gen_syncookie_ipv6(ip.cast(), th.cast(), th_len as u32)
        }
    };
    if r < 0 {
        return Err(DropReason::BadCookie);
    }
    let cookie = r as u32;
    let mss = (r >> 32) as u16;
    client_options(sc, th_len);
    build(sc, cfg, v4, cookie, mss, now);
    send(ctx, s, l3, sc, v4)?;
    limit::count(s.counter, rule_stat::COOKIES_SENT, s.bytes);
    Ok(Action::Tx)
}

/// [`SynScratch::wscale`] of a client that offered no window scaling.
const NO_WSCALE: u8 = 0xff;

/// Reads the options of the TCP header copy (`th_len` bytes) into the
/// scratch's `wscale`, `sack`, `ts` and `tsval`. They live in map memory,
/// not registers: the walk's paths then reach the next step in the same
/// verifier state and merge (with the options in registers the verifier gave
/// up after 1,000,000 instructions). A function of its own (a BPF-to-BPF
/// call): every way out of the walk returns to the same caller state, so
/// the reply's code after it is verified once, not once per step the walk
/// ended at (measured on 6.18: 589,132 -> 78,726 instructions for the
/// program).
#[inline(never)]
fn client_options(sc: &mut SynScratch, th_len: usize) {
    // SAFETY: fields of this packet's per-CPU scratch.
    unsafe {
        core::ptr::write_volatile(&raw mut sc.wscale, NO_WSCALE);
        core::ptr::write_volatile(&raw mut sc.sack, 0);
        core::ptr::write_volatile(&raw mut sc.ts, 0);
    }
    let mut i = TCP_HLEN;
    // Each step consumes at least one byte of at most 40 option bytes.
    for _ in 0..(SCRATCH_TCP - TCP_HLEN) {
        // The position passes through per-CPU memory too.
        // SAFETY: a field of this packet's per-CPU scratch.
        i = unsafe {
            core::ptr::write_volatile(&raw mut sc.at, i as u32);
            core::ptr::read_volatile(&raw const sc.at) as usize
        };
        if i >= th_len || i + 1 >= SCRATCH_TCP {
            break;
        }
        let kind = sc.tcp[i];
        if kind == TCPOPT_EOL {
            break;
        }
        if kind == TCPOPT_NOP {
            i += 1;
            continue;
        }
        let len = sc.tcp[i + 1] as usize;
        if len < 2 || i + len > th_len {
            break;
        }
        // Volatile stores: LLVM would otherwise keep the fields in registers
        // through the loop (scalar promotion), and the verifier would see
        // one state per combination again.
        // SAFETY: fields of this packet's per-CPU scratch.
        unsafe {
            if kind == TCPOPT_WINDOW && len == 3 && i + 2 < SCRATCH_TCP {
                let w = sc.tcp[i + 2];
                core::ptr::write_volatile(&raw mut sc.wscale, w);
            } else if kind == TCPOPT_SACK_PERM && len == 2 {
                core::ptr::write_volatile(&raw mut sc.sack, 1);
            } else if kind == TCPOPT_TIMESTAMP && len == 10 && i + 6 <= SCRATCH_TCP {
                let v = [sc.tcp[i + 2], sc.tcp[i + 3], sc.tcp[i + 4], sc.tcp[i + 5]];
                core::ptr::write_volatile(&raw mut sc.tsval, v);
                core::ptr::write_volatile(&raw mut sc.ts, 1);
            }
        }
        i += len;
    }
}

/// Builds the reply's IP and TCP headers in `sc.out`.
#[inline(always)]
fn build(sc: &mut SynScratch, cfg: &SyncookieConfig, v4: bool, cookie: u32, mss: u16, now: u64) {
    let ip_len = if v4 { IPV4_HLEN } else { IPV6_HLEN };
    let out = &mut sc.out;
    // The TCP header, from the client's: ports swapped, our sequence number
    // is the cookie, we acknowledge the SYN.
    let t = ip_len;
    let client_seq = u32::from_be_bytes([sc.tcp[4], sc.tcp[5], sc.tcp[6], sc.tcp[7]]);
    out[t] = sc.tcp[2];
    out[t + 1] = sc.tcp[3];
    out[t + 2] = sc.tcp[0];
    out[t + 3] = sc.tcp[1];
    out[t + 4..t + 8].copy_from_slice(&cookie.to_be_bytes());
    out[t + 8..t + 12].copy_from_slice(&client_seq.wrapping_add(1).to_be_bytes());
    out[t + 12] = ((SYNACK_TCP_LEN / 4) as u8) << 4;
    out[t + 13] = TCP_SYN | TCP_ACK;
    out[t + 14..t + 16].copy_from_slice(&(cfg.window as u16).to_be_bytes());
    out[t + 16] = 0;
    out[t + 17] = 0;
    out[t + 18] = 0;
    out[t + 19] = 0;
    // Options: MSS, then with timestamps SACK permitted (or two NOPs), the
    // timestamps and the window scale (or four NOPs); without timestamps
    // the end of the list (window scaling and SACK are encoded in the
    // timestamp, so without it the kernel cannot honour them).
    let p = t + TCP_HLEN;
    out[p] = TCPOPT_MSS;
    out[p + 1] = 4;
    out[p + 2..p + 4].copy_from_slice(&mss.to_be_bytes());
    let ts = if cfg.flags & SYNCOOKIE_TIMESTAMPS != 0 && sc.ts != 0 {
        Some(sc.tsval)
    } else {
        None
    };
    match ts {
        Some(ecr) => {
            let sack = sc.sack != 0 && cfg.flags & SYNCOOKIE_SACK != 0;
            let ws = if cfg.flags & SYNCOOKIE_WSCALE != 0 && sc.wscale != NO_WSCALE {
                Some(sc.wscale.min(MAX_WSCALE))
            } else {
                None
            };
            let (k, l) = if sack {
                (TCPOPT_SACK_PERM, 2)
            } else {
                (TCPOPT_NOP, TCPOPT_NOP)
            };
            out[p + 4] = k;
            out[p + 5] = l;
            // The kernel's cookie timestamp: milliseconds with the low bits
            // replaced by the client's window scale and SACK (decoded from
            // the echo by cookie_timestamp_decode), never ahead of now.
            let now_ms = (now / 1_000_000) as u32;
            let mut bits = match ws {
                Some(w) => w as u32,
                None => TS_NO_WSCALE,
            };
            if sack {
                bits |= TS_SACK;
            }
            let mut tsval = (now_ms >> TS_BITS << TS_BITS) | bits;
            if tsval > now_ms {
                tsval = tsval.wrapping_sub(1 << TS_BITS);
            }
            out[p + 6] = TCPOPT_TIMESTAMP;
            out[p + 7] = 10;
            out[p + 8..p + 12].copy_from_slice(&tsval.to_be_bytes());
            out[p + 12..p + 16].copy_from_slice(&ecr);
            match ws {
                Some(_) => {
                    out[p + 16] = TCPOPT_NOP;
                    out[p + 17] = TCPOPT_WINDOW;
                    out[p + 18] = 3;
                    out[p + 19] = cfg.wscale.min(MAX_WSCALE as u32) as u8;
                }
                None => {
                    out[p + 16] = TCPOPT_NOP;
                    out[p + 17] = TCPOPT_NOP;
                    out[p + 18] = TCPOPT_NOP;
                    out[p + 19] = TCPOPT_NOP;
                }
            }
        }
        None => {
            let mut i = p + 4;
            while i < p + 20 {
                out[i] = TCPOPT_EOL;
                i += 1;
            }
        }
    }
    // The IP header and the checksums (the TCP one over the pseudo-header).
    let mut pseudo: u32 = IPPROTO_TCP as u32 + SYNACK_TCP_LEN as u32;
    if v4 {
        let tot = (IPV4_HLEN + SYNACK_TCP_LEN) as u16;
        out[0] = IPV4_VERSION_IHL_NO_OPTIONS;
        out[1] = 0;
        out[2..4].copy_from_slice(&tot.to_be_bytes());
        out[4] = 0;
        out[5] = 0;
        out[6..8].copy_from_slice(&IPV4_DF.to_be_bytes());
        out[8] = REPLY_TTL;
        out[9] = IPPROTO_TCP;
        out[10] = 0;
        out[11] = 0;
        // Addresses swapped.
        let mut i = 0;
        while i < 4 {
            out[12 + i] = sc.ip[16 + i];
            out[16 + i] = sc.ip[12 + i];
            i += 1;
        }
        let ck = !fold32(sum(out, 0, IPV4_HLEN, 0));
        out[10..12].copy_from_slice(&ck.to_be_bytes());
        pseudo = sum(out, 12, 8, pseudo);
    } else {
        out[0] = 0x60;
        out[1] = 0;
        out[2] = 0;
        out[3] = 0;
        out[4..6].copy_from_slice(&(SYNACK_TCP_LEN as u16).to_be_bytes());
        out[6] = IPPROTO_TCP;
        out[7] = REPLY_TTL;
        let mut i = 0;
        while i < 16 {
            out[8 + i] = sc.ip[24 + i];
            out[24 + i] = sc.ip[8 + i];
            i += 1;
        }
        pseudo = sum(out, 8, 32, pseudo);
    }
    let ck = !fold32(sum(out, t, SYNACK_TCP_LEN, pseudo));
    out[t + 16..t + 18].copy_from_slice(&ck.to_be_bytes());
}

/// `acc` plus the big-endian 16-bit words of `out[from..from + len]` (`len`
/// even).
#[inline(always)]
fn sum(out: &[u8], from: usize, len: usize, acc: u32) -> u32 {
    let mut acc = acc;
    let mut i = 0;
    while i < len {
        let hi = out.get(from + i).copied().unwrap_or(0) as u32;
        let lo = out.get(from + i + 1).copied().unwrap_or(0) as u32;
        acc = add32(acc, hi << 8 | lo);
        i += 2;
    }
    acc
}

/// Resizes the frame to the reply, writes it after the Ethernet header and
/// VLAN tags, and swaps the MAC addresses.
#[inline(always)]
fn send(
    ctx: &XdpContext,
    s: &DdosCtx,
    l3: u32,
    sc: &mut SynScratch,
    v4: bool,
) -> Result<(), DropReason> {
    let ip_len = if v4 { IPV4_HLEN } else { IPV6_HLEN };
    let l3 = (l3 & 0xff) as i64;
    let want = l3 + (ip_len + SYNACK_TCP_LEN) as i64;
    let delta = want - (s.bytes & 0xffff) as i64;
    // SAFETY: the program's own context; the helper checks the new length.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) } != 0 {
        return Err(DropReason::BadCookie);
    }
    let out = sc.out.as_mut_ptr().cast();
    // SAFETY: `out` holds `ip_len + SYNACK_TCP_LEN` bytes (its size for
    // IPv6; the IPv4 reply is shorter); the helper checks the frame.
    let r = unsafe {
        if v4 {
            bpf_xdp_store_bytes(ctx.ctx, l3 as u32, out, (IPV4_HLEN + SYNACK_TCP_LEN) as u32)
        } else {
            bpf_xdp_store_bytes(ctx.ctx, l3 as u32, out, (IPV6_HLEN + SYNACK_TCP_LEN) as u32)
        }
    };
    if r != 0 {
        return Err(DropReason::BadCookie);
    }
    let mut macs = [0u8; 2 * ETH_ALEN];
    // SAFETY: 12 bytes of stack; the helper checks the frame.
    if unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, macs.as_mut_ptr().cast(), 12) } != 0 {
        return Err(DropReason::BadCookie);
    }
    let mut swapped = [0u8; 2 * ETH_ALEN];
    swapped[..ETH_ALEN].copy_from_slice(&macs[ETH_ALEN..]);
    swapped[ETH_ALEN..].copy_from_slice(&macs[..ETH_ALEN]);
    // SAFETY: as above.
    if unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, swapped.as_mut_ptr().cast(), 12) } != 0 {
        return Err(DropReason::BadCookie);
    }
    Ok(())
}

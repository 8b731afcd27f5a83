//! The flood: live frames from random sources (a SYN flood to the server's
//! port and a UDP flood), injected as if received on the attacker's veth
//! end, whose `XDP_TX` puts them on the gate's receive ring.
//!
//! The generator program writes the whole 60-byte frame from constants, then
//! a random source (`bpf_get_prandom_u32`) in [`ATTACK_V4`]`/18`, and the
//! 16-bit one's complement of the source's low half into the IPv4
//! identification and the source port: each pair sums to 0xffff, so the IP
//! and L4 checksums computed once stay valid for every source. Rewriting the
//! whole frame matters: live-frames mode recycles its pages with their bytes
//! (net/bpf/test_run.c), and xdpgate's SYN-cookie path turns a SYN into a
//! SYN-ACK in place.

use std::{
    net::Ipv4Addr,
    os::fd::OwnedFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use xdpgate_tests::packet::checksum;

use super::{ATTACK_V4, rig::Rig};
use crate::{
    bpf::{self, XdpMd},
    live::{BATCH, CPU},
};

/// Frame length (Ethernet minimum without FCS).
pub(super) const FRAME_LEN: usize = 60;
/// Each `BPF_PROG_TEST_RUN` call (SYN and UDP calls alternate) is sized to
/// take about this long: a live-frames call has a fixed cost that sleeps
/// (the page pool's setup and teardown; measured: the generator thread on
/// CPU only a third of the time with 50,000-frame calls at 1.4 Mpps), so
/// calls must be long, and short enough to alternate the two floods often.
const CALL_TARGET: Duration = Duration::from_millis(300);
/// Bounds of a call's frame count.
const CALL_FRAMES: (u32, u32) = (10_000, 2_000_000);
/// A call's frame count at the first flood.
const CALL_START: u32 = 20_000;
/// Upper bound of one flood's calls, besides its time.
const MAX_CALLS: u64 = 5_000;

/// The frame's bytes: Ethernet (to the gate's attack end), IPv4 from `src`
/// (identification: the complement of the source's low half), then `l4`
/// (whose source port is that complement too), checksums filled in, padded
/// to [`FRAME_LEN`].
fn frame(rig: &Rig, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    frame_between((rig.s_att.mac, rig.a_end.mac), src, dst, proto, l4)
}

/// [`frame`] between the MAC addresses `(dst, src)`.
fn frame_between(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    l4: &[u8],
) -> Vec<u8> {
    let src = src.octets();
    let lo = u16::from_be_bytes([src[2], src[3]]);
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(20 + l4.len() as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&(!lo).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut l4 = l4.to_vec();
    l4[0..2].copy_from_slice(&(!lo).to_be_bytes());
    let mut pseudo = Vec::with_capacity(12 + l4.len());
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&l4);
    let c = checksum(&pseudo);
    let at = if proto == 6 { 16 } else { 6 };
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::with_capacity(FRAME_LEN);
    f.extend_from_slice(&macs.0);
    f.extend_from_slice(&macs.1);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&l4);
    f.resize(FRAME_LEN, 0);
    f
}

/// A SYN (MSS option) from `src` to `dst`:`dport`.
pub(super) fn syn_frame(rig: &Rig, src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    frame(rig, src, dst, 6, &syn_l4(dport))
}

fn syn_l4(dport: u16) -> Vec<u8> {
    let mut tcp = vec![0u8; 24];
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    tcp[12] = 6 << 4; // data offset: 24 bytes
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
    tcp
}

/// A UDP datagram (18 bytes of payload) from `src` to `dst`:`dport`.
pub(super) fn udp_frame(rig: &Rig, src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    frame(rig, src, dst, 17, &udp_l4(dport))
}

fn udp_l4(dport: u16) -> Vec<u8> {
    let mut udp = vec![0u8; 8 + 18];
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    udp[4..6].copy_from_slice(&26u16.to_be_bytes());
    udp[8..].copy_from_slice(b"xdpgate-flood-0123");
    udp
}

/// Loads the generator of `frame` (exactly [`FRAME_LEN`] bytes, from
/// [`ATTACK_V4`]).
pub(super) fn load(frame: &[u8], name: &str) -> std::io::Result<OwnedFd> {
    const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
    const MOV_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
    const ADD_K: u8 = 0x07; // BPF_ALU64 | BPF_ADD | BPF_K
    const AND_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
    const OR_K: u8 = 0x47; // BPF_ALU64 | BPF_OR | BPF_K
    const XOR_K: u8 = 0xa7; // BPF_ALU64 | BPF_XOR | BPF_K
    const TO_BE: u8 = 0xdc; // BPF_ALU | BPF_END | BPF_TO_BE
    const JGT_X: u8 = 0x2d; // BPF_JMP | BPF_JGT | BPF_X
    const ST_W: u8 = 0x62; // BPF_ST | BPF_MEM | BPF_W
    const STX_H: u8 = 0x6b; // BPF_STX | BPF_MEM | BPF_H
    const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
    const MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
    const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
    const GET_PRANDOM_U32: i32 = 7;
    assert_eq!(frame.len(), FRAME_LEN, "generator frames are 60 bytes");
    let insn = bpf::Insn::new;
    let mut p = vec![
        insn(LDX_W, 7, 1, 0, 0), // r7 = ctx->data
        insn(LDX_W, 3, 1, 4, 0), // r3 = ctx->data_end
        insn(MOV_X, 4, 7, 0, 0), // r4 = r7
        insn(ADD_K, 4, 0, 0, FRAME_LEN as i32),
        // if r4 > r3: drop (patched below)
        insn(JGT_X, 4, 3, 0, 0),
    ];
    for (i, w) in frame.chunks_exact(4).enumerate() {
        let v = i32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        p.push(insn(ST_W, 7, 0, (i * 4) as i16, v));
    }
    let (a, b) = (ATTACK_V4.octets()[2], ATTACK_V4.octets()[3]);
    let base = i32::from(u16::from_be_bytes([a, b]));
    p.extend([
        insn(CALL, 0, 0, 0, GET_PRANDOM_U32),
        insn(AND_K, 0, 0, 0, 0x3fff), // the /18's host bits
        insn(OR_K, 0, 0, 0, base),
        insn(TO_BE, 0, 0, 0, 16),
        insn(STX_H, 7, 0, 28, 0), // source address, low half
        insn(XOR_K, 0, 0, 0, 0xffff),
        insn(STX_H, 7, 0, 18, 0), // IPv4 identification
        insn(STX_H, 7, 0, 34, 0), // source port
        insn(MOV_K, 0, 0, 0, bpf::XDP_TX as i32),
        insn(EXIT, 0, 0, 0, 0),
        insn(MOV_K, 0, 0, 0, bpf::XDP_DROP as i32),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    let drop_at = p.len() - 2;
    p[4] = insn(JGT_X, 4, 3, (drop_at - 5) as i16, 0);
    bpf::load_xdp(&p, name, 0)
}

/// A running flood: one thread in the attacker's namespace, pinned to
/// [`CPU`], alternating calls of SYN and UDP frames until stopped (or
/// `max` passed, or [`MAX_CALLS`] calls).
pub(super) struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    /// The thread's CPU time after its last call, ns.
    cpu: Arc<AtomicU64>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The two generators and the frames they start from.
pub(super) struct Generators {
    pub(super) syn: (OwnedFd, Vec<u8>),
    pub(super) udp: (OwnedFd, Vec<u8>),
    /// Frames per call of each (SYN, UDP), adapted to [`CALL_TARGET`]
    /// during a flood (from [`CALL_START`] at its start).
    pub(super) frames: [AtomicU32; 2],
}

impl Generators {
    /// The generators of `syn` and `udp` (see [`load`]).
    pub(super) fn new(syn: Vec<u8>, udp: Vec<u8>) -> anyhow::Result<Generators> {
        Ok(Generators {
            syn: (
                load(&syn, "bench_fl_syn").context("loading the SYN generator")?,
                syn,
            ),
            udp: (
                load(&udp, "bench_fl_udp").context("loading the UDP generator")?,
                udp,
            ),
            frames: [AtomicU32::new(CALL_START), AtomicU32::new(CALL_START)],
        })
    }
}

impl Flood {
    /// Starts the flood on `rig` with `gens` (at most `max`).
    pub(super) fn start(rig: &Rig, gens: Arc<Generators>, max: Duration) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let cpu = Arc::new(AtomicU64::new(0));
        let (st, se, cp) = (stop.clone(), sent.clone(), cpu.clone());
        let ns = rig.a.path();
        let ingress = rig.a_end.ifindex;
        for f in &gens.frames {
            f.store(CALL_START, Ordering::Relaxed);
        }
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            enter(&ns)?;
            bpf::pin_to_cpu(CPU).context("pinning the flood generator")?;
            cp.store(thread_cpu_ns(), Ordering::Relaxed);
            let t = Instant::now();
            let mut calls = 0u64;
            while !st.load(Ordering::Relaxed) && t.elapsed() < max && calls < MAX_CALLS {
                let k = usize::from(!calls.is_multiple_of(2));
                let (prog, frame) = if k == 0 { &gens.syn } else { &gens.udp };
                let ctx = XdpMd {
                    data_end: frame.len() as u32,
                    ingress_ifindex: ingress,
                    ..Default::default()
                };
                let n = gens.frames[k].load(Ordering::Relaxed);
                let c = Instant::now();
                bpf::live_frames(prog, frame, n, BATCH, ctx)
                    .context("BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES")?;
                se.fetch_add(u64::from(n), Ordering::Relaxed);
                let scale = CALL_TARGET.as_secs_f64() / c.elapsed().as_secs_f64().max(1e-6);
                let next = ((f64::from(n) * scale.clamp(0.1, 3.0)) as u32)
                    .clamp(CALL_FRAMES.0, CALL_FRAMES.1);
                gens.frames[k].store(next, Ordering::Relaxed);
                cp.store(thread_cpu_ns(), Ordering::Relaxed);
                calls += 1;
            }
            Ok(())
        });
        Flood {
            stop,
            sent,
            cpu,
            thread: Some(thread),
        }
    }

    /// The generator thread's CPU time so far, ns (updated after each call).
    pub(super) fn cpu_ns(&self) -> u64 {
        self.cpu.load(Ordering::Relaxed)
    }

    /// Frames injected so far.
    pub(super) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the flood; returns the frames injected.
    pub(super) fn stop(mut self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
        }
        Ok(self.sent())
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The calling thread's CPU time, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec passed.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Moves the calling thread into the namespace at `path`.
pub(super) fn enter(path: &std::path::Path) -> anyhow::Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns on an open namespace file; affects only this thread.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the generator program does to a frame, in Rust: host bits `r`.
    fn rewrite(f: &mut [u8], r: u16) {
        let lo = (r & 0x3fff) | u16::from_be_bytes([ATTACK_V4.octets()[2], ATTACK_V4.octets()[3]]);
        f[28..30].copy_from_slice(&lo.to_be_bytes());
        f[18..20].copy_from_slice(&(!lo).to_be_bytes());
        f[34..36].copy_from_slice(&(!lo).to_be_bytes());
    }

    /// The Internet checksum over the L4 segment with its pseudo-header.
    fn l4_sum(f: &[u8]) -> u16 {
        let tot = usize::from(u16::from_be_bytes([f[16], f[17]]));
        let seg = &f[34..14 + tot];
        let mut p = Vec::new();
        p.extend_from_slice(&f[26..34]);
        p.extend_from_slice(&[0, f[23]]);
        p.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        p.extend_from_slice(seg);
        checksum(&p)
    }

    #[test]
    fn every_random_source_keeps_both_checksums_valid() {
        let dst = Ipv4Addr::new(10, 200, 245, 1);
        for (proto, l4) in [(6u8, syn_l4(8080)), (17, udp_l4(53))] {
            let base = frame_between(([2; 6], [4; 6]), ATTACK_V4, dst, proto, &l4);
            for r in [0u16, 1, 0x1234, 0x2fff, 0x3ffe, 0x3fff, 0xffff] {
                let mut f = base.clone();
                rewrite(&mut f, r);
                assert_eq!(
                    checksum(&f[14..34]),
                    0,
                    "IPv4 header, proto {proto}, r {r:#x}"
                );
                assert_eq!(l4_sum(&f), 0, "L4, proto {proto}, r {r:#x}");
                let src = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
                assert!(
                    ipnetwork::Ipv4Network::new(ATTACK_V4, 18)
                        .unwrap()
                        .contains(src),
                    "{src} is outside the attack prefix"
                );
            }
        }
    }
}

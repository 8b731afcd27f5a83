//! The live-frames generator: a program that stores the frame's Ethernet
//! header and sends it with `XDP_TX`, run on b's end with
//! `BPF_F_TEST_XDP_LIVE_FRAMES`.

use std::{
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use xdpgate_tests::lab::Lab;

use crate::{
    bpf::{self, XdpMd},
    live::{BATCH, CHUNK, CPU},
};

/// Loads the generator: writes `eth` (14 bytes) at the frame's start, then
/// `XDP_TX`.
pub(super) fn load_generator(eth: [u8; 14], name: &str) -> std::io::Result<OwnedFd> {
    const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
    const MOV_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
    const ADD_K: u8 = 0x07; // BPF_ALU64 | BPF_ADD | BPF_K
    const JGT_X: u8 = 0x2d; // BPF_JMP | BPF_JGT | BPF_X
    const ST_W: u8 = 0x62; // BPF_ST | BPF_MEM | BPF_W
    const ST_H: u8 = 0x6a; // BPF_ST | BPF_MEM | BPF_H
    const MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
    const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
    let w = |o: usize| i32::from_le_bytes([eth[o], eth[o + 1], eth[o + 2], eth[o + 3]]);
    let h = |o: usize| i32::from(u16::from_le_bytes([eth[o], eth[o + 1]]));
    let insn = bpf::Insn::new;
    let insns = [
        insn(LDX_W, 2, 1, 0, 0), // r2 = ctx->data
        insn(LDX_W, 3, 1, 4, 0), // r3 = ctx->data_end
        insn(MOV_X, 4, 2, 0, 0), // r4 = r2
        insn(ADD_K, 4, 0, 0, 14),
        insn(JGT_X, 4, 3, 5, 0), // if r4 > r3: skip the stores
        insn(ST_W, 2, 0, 0, w(0)),
        insn(ST_H, 2, 0, 4, h(4)),
        insn(ST_W, 2, 0, 6, w(6)),
        insn(ST_H, 2, 0, 10, h(10)),
        insn(ST_H, 2, 0, 12, h(12)),
        insn(MOV_K, 0, 0, 0, bpf::XDP_TX as i32),
        insn(EXIT, 0, 0, 0, 0),
    ];
    bpf::load_xdp(&insns, name, 0)
}

/// A live-frames generator on b's end.
pub(super) struct Generator<'a> {
    pub(super) lab: &'a Lab,
    pub(super) prog: &'a OwnedFd,
}

impl Generator<'_> {
    fn ctx(&self, frame: &[u8]) -> XdpMd {
        XdpMd {
            data_end: frame.len() as u32,
            ingress_ifindex: self.lab.b_end.ifindex,
            ..Default::default()
        }
    }

    /// Injects `n` frames in one call.
    pub(super) fn burst(&self, frame: &[u8], n: u32) -> anyhow::Result<()> {
        let ctx = self.ctx(frame);
        self.lab.b.run(|| -> anyhow::Result<()> {
            bpf::pin_to_cpu(CPU).context("pinning the generator")?;
            bpf::live_frames(self.prog, frame, n, BATCH, ctx)
                .context("BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES")
        })
    }

    /// Injects frames for about `secs` (bounded by time and by count);
    /// returns frames injected and the wall time.
    pub(super) fn run(&self, frame: &[u8], secs: f64) -> anyhow::Result<(u64, Duration)> {
        let max_calls = 400; // 100M frames at most
        let ctx = self.ctx(frame);
        self.lab.b.run(|| -> anyhow::Result<(u64, Duration)> {
            bpf::pin_to_cpu(CPU).context("pinning the generator")?;
            let t = Instant::now();
            let (mut sent, mut calls) = (0u64, 0);
            while t.elapsed().as_secs_f64() < secs && calls < max_calls {
                bpf::live_frames(self.prog, frame, CHUNK, BATCH, ctx)
                    .context("BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES")?;
                sent += u64::from(CHUNK);
                calls += 1;
            }
            Ok((sent, t.elapsed()))
        })
    }
}

//! A deliberately demanding feature probe, for showing that `cargo xtask vmtest`
//! catches a kernel that lacks a feature: it loads a two-instruction XDP
//! program with `BPF_F_XDP_HAS_FRAGS` (multi-buffer XDP, Linux 5.18+), which
//! older kernels refuse with `EINVAL`. xdpgate itself does not need the flag.
//!
//! Ignored by default; `cargo xtask vmtest --probe-broken` runs it with
//! `--ignored`: it fails on 5.10 and passes on 6.1 and later.
use xdpgate_tests::bpf;

/// `BPF_F_XDP_HAS_FRAGS`: the program accepts multi-buffer frames.
const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;

#[test]
#[ignore = "feature probe for cargo xtask vmtest --probe-broken"]
fn xdp_program_with_frags_flag_loads() {
    let loaded =
        bpf::load_constant_xdp_with_flags(bpf::XDP_PASS, "xg_probe_frags", BPF_F_XDP_HAS_FRAGS);
    assert!(
        loaded.is_ok(),
        "BPF_PROG_LOAD with BPF_F_XDP_HAS_FRAGS failed: {} (the kernel lacks multi-buffer XDP)",
        loaded.unwrap_err()
    );
}

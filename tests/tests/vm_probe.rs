//! A deliberately demanding feature probe, for showing that `cargo xtask vmtest`
//! catches a kernel that lacks a feature: it loads a two-instruction XDP
//! program with `BPF_F_XDP_HAS_FRAGS` (multi-buffer XDP, Linux 5.18+), which
//! older kernels refuse with `EINVAL`. xdpgate itself does not need the flag.
//!
//! Ignored by default; `cargo xtask vmtest --probe-broken` runs it with
//! `--ignored`: it fails on 5.10 and passes on 6.1 and later.
use std::io;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `BPF_F_XDP_HAS_FRAGS`: the program accepts multi-buffer frames.
const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;
const XDP_PASS: i32 = 2;

#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[test]
#[ignore = "feature probe for cargo xtask vmtest --probe-broken"]
fn xdp_program_with_frags_flag_loads() {
    let insns = [
        // r0 = XDP_PASS
        Insn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm: XDP_PASS,
        },
        // exit
        Insn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_flags: BPF_F_XDP_HAS_FRAGS,
        ..Default::default()
    };
    // SAFETY: `attr` is a zero-padded bpf_attr prefix of the size passed; the
    // instruction and license pointers outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &mut attr as *mut ProgLoadAttr as *mut libc::c_void,
            std::mem::size_of::<ProgLoadAttr>() as libc::c_uint,
        )
    };
    assert!(
        fd >= 0,
        "BPF_PROG_LOAD with BPF_F_XDP_HAS_FRAGS failed: {} (the kernel lacks multi-buffer XDP)",
        io::Error::last_os_error()
    );
    // SAFETY: the kernel returned a new fd that nothing else owns.
    unsafe { libc::close(fd as libc::c_int) };
}

//! Raw `bpf(2)` calls that tests and the benchmark need beside the `xdpgate`
//! library: a two-instruction XDP program (a foreign program for tests, the
//! empty baseline and the live-frames generator of the benchmark), attaching it
//! with a bpf_link, `BPF_PROG_TEST_RUN` on any program fd (with the live-frames
//! flag and an `xdp_md` context), and `BPF_PROG_GET_FD_BY_ID` for programs
//! loaded by other tools (xdp-filter).
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_XDP: u32 = 37;
/// `XDP_FLAGS_SKB_MODE`: generic XDP.
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`: native XDP.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `BPF_F_TEST_XDP_LIVE_FRAMES`: frames are injected into the stack and the
/// program's `XDP_TX`/`XDP_REDIRECT` really transmit.
pub const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
pub const XDP_PASS: u32 = 2;
/// `XDP_TX`.
pub const XDP_TX: u32 = 3;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    /// An instruction: opcode, destination and source registers, offset,
    /// immediate.
    pub const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: dst | (src << 4),
            off,
            imm,
        }
    }
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

/// The `BPF_PROG_TEST_RUN` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// The `BPF_PROG_GET_FD_BY_ID` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `struct xdp_md` as a test-run context.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct XdpMd {
    /// Must be 0 in a test-run context.
    pub data: u32,
    /// Must be 0 in a test-run context.
    pub data_end: u32,
    /// Must be 0 in a test-run context.
    pub data_meta: u32,
    /// The device the frames are injected on (live frames: the one `XDP_TX`
    /// transmits from).
    pub ingress_ifindex: u32,
    /// Receive queue.
    pub rx_queue_index: u32,
    /// Must be 0.
    pub egress_ifindex: u32,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a properly laid out, zero-padded bpf_attr prefix of
    // size_of::<T>() bytes; the kernel reads and writes within that size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Loads the XDP program `r0 = action; exit` (license GPL) and returns its fd.
/// With `XDP_PASS` it is the empty baseline; with `XDP_TX`, run in
/// live-frames mode, it is a frame generator.
pub fn load_constant_xdp(action: u32, name: &str) -> io::Result<OwnedFd> {
    load_constant_xdp_with_flags(action, name, 0)
}

/// [`load_constant_xdp`] with `BPF_PROG_LOAD` program flags (`prog_flags`),
/// e.g. `BPF_F_XDP_HAS_FRAGS` for a feature probe.
pub fn load_constant_xdp_with_flags(
    action: u32,
    name: &str,
    prog_flags: u32,
) -> io::Result<OwnedFd> {
    let insns = [
        // BPF_ALU64 | BPF_MOV | BPF_K, dst r0
        Insn::new(0xb7, 0, 0, 0, action as i32),
        // BPF_JMP | BPF_EXIT
        Insn::new(0x95, 0, 0, 0, 0),
    ];
    load_xdp(&insns, name, prog_flags)
}

/// Loads an XDP program of `insns` (license GPL) with `BPF_PROG_LOAD`
/// program flags `prog_flags` and returns its fd.
pub fn load_xdp(insns: &[Insn], name: &str, prog_flags: u32) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_flags,
        ..Default::default()
    };
    for (d, s) in attr.prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let fd = sys_bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// An fd for the loaded program with kernel id `id`.
pub fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = GetFdAttr {
        prog_id: id,
        ..Default::default()
    };
    let fd = sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The `BPF_LINK_CREATE` part of `union bpf_attr` (XDP).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// Attaches `prog` to `ifindex` (of the calling thread's namespace) in native
/// (driver) mode with a bpf_link; closing the returned fd detaches it.
pub fn attach_native(prog: &impl AsRawFd, ifindex: u32) -> io::Result<OwnedFd> {
    attach(prog, ifindex, XDP_FLAGS_DRV_MODE)
}

/// Attaches `prog` to `ifindex` (of the calling thread's namespace) with a
/// bpf_link in the mode `flags` (`XDP_FLAGS_*`); closing the returned fd
/// detaches it.
pub fn attach(prog: &impl AsRawFd, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags,
    };
    let fd = sys_bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Detaches the bpf_link pinned at `path` now (`BPF_OBJ_GET`, then
/// `BPF_LINK_DETACH`), as `xdpgate down` does; the pin stays until removed.
pub fn detach_pinned_link(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    #[repr(C)]
    #[derive(Default)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let mut get = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        ..Default::default()
    };
    let fd = sys_bpf(BPF_OBJ_GET, &mut get)?;
    // SAFETY: the kernel returned a fresh descriptor that we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let mut detach = [fd.as_raw_fd() as u32, 0];
    sys_bpf(BPF_LINK_DETACH, &mut detach).map(|_| ())
}

/// What a test run returned.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// The program's return value (the XDP action of the last run).
    pub retval: u32,
    /// The kernel's average time per repetition.
    pub duration: Duration,
}

/// `BPF_PROG_TEST_RUN` of `prog` on `frame`, `repeat` times; the kernel reports
/// the average per repetition. The ingress device is the loopback device of the
/// calling thread's network namespace.
pub fn test_run(prog: &impl AsRawFd, frame: &[u8], repeat: u32) -> io::Result<RunResult> {
    run_with(prog, frame, repeat, None)
}

/// [`test_run`] with a context: `ctx.ingress_ifindex` names the receiving
/// device of the calling thread's namespace (a program that looks up its
/// interface, as xdpgate's does, sees that device instead of loopback).
pub fn test_run_ctx(
    prog: &impl AsRawFd,
    frame: &[u8],
    repeat: u32,
    ctx: XdpMd,
) -> io::Result<RunResult> {
    run_with(prog, frame, repeat, Some(&ctx))
}

fn run_with(
    prog: &impl AsRawFd,
    frame: &[u8],
    repeat: u32,
    ctx: Option<&XdpMd>,
) -> io::Result<RunResult> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: repeat.max(1),
        ..Default::default()
    };
    if let Some(ctx) = ctx {
        attr.ctx_size_in = size_of::<XdpMd>() as u32;
        attr.ctx_in = std::ptr::from_ref(ctx) as u64;
    }
    sys_bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(RunResult {
        retval: attr.retval,
        duration: Duration::from_nanos(attr.duration as u64),
    })
}

/// `BPF_PROG_TEST_RUN` in live-frames mode: `repeat` copies of `frame` are
/// injected as if received on `ctx.ingress_ifindex`, in batches of `batch`;
/// what the program does with them (`XDP_TX` transmits them from that device)
/// really happens. Runs on the calling thread's CPU.
pub fn live_frames(
    prog: &impl AsRawFd,
    frame: &[u8],
    repeat: u32,
    batch: u32,
    ctx: XdpMd,
) -> io::Result<()> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: size_of::<XdpMd>() as u32,
        ctx_in: &raw const ctx as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: batch,
        ..Default::default()
    };
    sys_bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(())
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

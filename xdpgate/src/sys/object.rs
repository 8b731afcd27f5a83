//! BPF objects by raw bpf(2): pins (`BPF_OBJ_PIN`, `BPF_OBJ_GET`), XDP links
//! (`BPF_LINK_CREATE`, `BPF_LINK_UPDATE`, `BPF_LINK_DETACH`) and what the
//! kernel says about a map, a link or a program (`BPF_OBJ_GET_INFO_BY_FD`).
//!
//! aya's links detach when their owner is dropped; the pinned datapath needs
//! links that outlive the daemon, so it holds them as plain descriptors.
use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use super::bpf::{create_map, put_u32, put_u64, sys_bpf};

const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_OBJ_PIN: u32 = 6;
const BPF_OBJ_GET: u32 = 7;
const BPF_PROG_GET_FD_BY_ID: u32 = 13;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_LINK_CREATE: u32 = 28;
const BPF_LINK_UPDATE: u32 = 29;
const BPF_LINK_DETACH: u32 = 34;
/// `enum bpf_attach_type`: `BPF_XDP`.
const BPF_XDP: u32 = 37;
/// `enum bpf_link_type`: `BPF_LINK_TYPE_XDP`.
pub const BPF_LINK_TYPE_XDP: u32 = 6;
const BPF_MAP_TYPE_ARRAY: u32 = 2;

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel returned a fresh descriptor that we now own.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

/// Opens the object pinned at `path` (`BPF_OBJ_GET`).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut attr = [0u8; 128];
    put_u64(&mut attr, 0, c.as_ptr() as u64);
    sys_bpf(BPF_OBJ_GET, &mut attr).map(owned)
}

/// Pins the object `fd` at `path` (`BPF_OBJ_PIN`).
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    let mut attr = [0u8; 128];
    put_u64(&mut attr, 0, c.as_ptr() as u64);
    put_u32(&mut attr, 8, fd.as_raw_fd() as u32);
    sys_bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// Attaches the XDP program `prog` to `ifindex` through a new bpf_link
/// (`flags`: `XDP_FLAGS_*` mode bits). The link detaches when its last
/// reference (descriptor or pin) goes.
pub fn xdp_link_create(prog: BorrowedFd<'_>, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, prog.as_raw_fd() as u32);
    put_u32(&mut attr, 4, ifindex);
    put_u32(&mut attr, 8, BPF_XDP);
    put_u32(&mut attr, 12, flags);
    sys_bpf(BPF_LINK_CREATE, &mut attr).map(owned)
}

/// Replaces the program of `link` with `prog` in one step (`BPF_LINK_UPDATE`):
/// every packet is run by either the old or the new program.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, link.as_raw_fd() as u32);
    put_u32(&mut attr, 4, prog.as_raw_fd() as u32);
    sys_bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// Detaches `link` from its interface now, pinned or not (`BPF_LINK_DETACH`).
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, link.as_raw_fd() as u32);
    sys_bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}

/// Opens the program with kernel id `id`.
pub fn prog_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, id);
    sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).map(owned)
}

fn info(fd: BorrowedFd<'_>, buf: &mut [u8; 256]) -> io::Result<()> {
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, fd.as_raw_fd() as u32);
    put_u32(&mut attr, 4, buf.len() as u32);
    put_u64(&mut attr, 8, buf.as_mut_ptr() as u64);
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(|_| ())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn name_at(b: &[u8], off: usize) -> String {
    let raw = &b[off..off + 16];
    let end = raw.iter().position(|c| *c == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// What the kernel says about a map (`struct bpf_map_info`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapInfo {
    /// `BPF_MAP_TYPE_*`.
    pub map_type: u32,
    /// Kernel id.
    pub id: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Capacity.
    pub max_entries: u32,
    /// `BPF_F_*` creation flags.
    pub flags: u32,
    /// The name, cut by the kernel at 15 bytes.
    pub name: String,
}

/// Reads a map's [`MapInfo`]; fails with `EINVAL` when `fd` is no map.
pub fn map_info(fd: BorrowedFd<'_>) -> io::Result<MapInfo> {
    let mut b = [0u8; 256];
    info(fd, &mut b)?;
    Ok(MapInfo {
        map_type: u32_at(&b, 0),
        id: u32_at(&b, 4),
        key_size: u32_at(&b, 8),
        value_size: u32_at(&b, 12),
        max_entries: u32_at(&b, 16),
        flags: u32_at(&b, 20),
        name: name_at(&b, 24),
    })
}

/// What the kernel says about a link (`struct bpf_link_info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// `BPF_LINK_TYPE_*`.
    pub link_type: u32,
    /// Kernel id.
    pub id: u32,
    /// The program it runs.
    pub prog_id: u32,
    /// For an XDP link: the interface (0 once the interface is gone).
    pub ifindex: u32,
}

/// Reads a link's [`LinkInfo`].
pub fn link_info(fd: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    let mut b = [0u8; 256];
    info(fd, &mut b)?;
    Ok(LinkInfo {
        link_type: u32_at(&b, 0),
        id: u32_at(&b, 4),
        prog_id: u32_at(&b, 8),
        // The union after `prog_id` is 8-byte aligned: `xdp.ifindex` is at 16.
        ifindex: u32_at(&b, 16),
    })
}

/// What the kernel says about a program (`struct bpf_prog_info`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgInfo {
    /// Kernel id.
    pub id: u32,
    /// The kernel's tag (a hash of the instructions, map references zeroed).
    pub tag: [u8; 8],
    /// The name, cut by the kernel at 15 bytes.
    pub name: String,
}

/// Reads a program's [`ProgInfo`].
pub fn prog_info(fd: BorrowedFd<'_>) -> io::Result<ProgInfo> {
    let mut b = [0u8; 256];
    info(fd, &mut b)?;
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&b[8..16]);
    Ok(ProgInfo {
        id: u32_at(&b, 4),
        tag,
        name: name_at(&b, 64),
    })
}

/// Creates a one-entry array map whose value is `value_size` bytes.
pub fn create_record(value_size: u32) -> io::Result<OwnedFd> {
    create_map(BPF_MAP_TYPE_ARRAY, 4, value_size, 1, None)
}

/// Reads entry 0 of an array map into `value` (its size must be the map's value size).
pub fn read_record(fd: BorrowedFd<'_>, value: &mut [u8]) -> io::Result<()> {
    let key = 0u32;
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, fd.as_raw_fd() as u32);
    put_u64(&mut attr, 8, &raw const key as u64);
    put_u64(&mut attr, 16, value.as_mut_ptr() as u64);
    sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).map(|_| ())
}

/// Writes entry 0 of an array map (`value` must be the map's value size).
pub fn write_record(fd: BorrowedFd<'_>, value: &[u8]) -> io::Result<()> {
    let key = 0u32;
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, fd.as_raw_fd() as u32);
    put_u64(&mut attr, 8, &raw const key as u64);
    put_u64(&mut attr, 16, value.as_ptr() as u64);
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

//! Low-level writing of datapath tables: mmapped array copies and an RCU
//! barrier that waits for every running BPF program.
use std::{
    io,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

/// `BPF_MAP_CREATE`.
const BPF_MAP_CREATE: u32 = 0;
/// `BPF_MAP_UPDATE_ELEM`.
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

pub(super) fn sys_bpf(cmd: u32, attr: &mut [u8; 128]) -> io::Result<i64> {
    // SAFETY: `attr` is a zero-initialised bpf_attr-sized buffer the kernel reads
    // (and for some commands writes) within its 128 bytes.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

pub(super) fn put_u32(attr: &mut [u8; 128], off: usize, v: u32) {
    attr[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

pub(super) fn put_u64(attr: &mut [u8; 128], off: usize, v: u64) {
    attr[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

pub(super) fn create_map(
    ty: u32,
    key: u32,
    value: u32,
    entries: u32,
    inner: Option<BorrowedFd<'_>>,
) -> io::Result<OwnedFd> {
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, ty);
    put_u32(&mut attr, 4, key);
    put_u32(&mut attr, 8, value);
    put_u32(&mut attr, 12, entries);
    if let Some(inner) = inner {
        put_u32(&mut attr, 20, inner.as_raw_fd() as u32);
    }
    let fd = sys_bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until every BPF program that may have started before the call has
/// finished.
///
/// The kernel runs `synchronize_rcu()` before returning from an update of a
/// map-in-map (`maybe_wait_bpf_programs` in kernel/bpf/syscall.c), and XDP
/// programs run inside RCU read-side sections; so one update of a private
/// array-of-maps is a barrier for all XDP programs in flight.
#[derive(Debug)]
pub struct RcuBarrier {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl RcuBarrier {
    /// Creates the two small maps the barrier updates.
    pub fn new() -> io::Result<Self> {
        let inner = create_map(BPF_MAP_TYPE_ARRAY, 4, 4, 1, None)?;
        let outer = create_map(BPF_MAP_TYPE_ARRAY_OF_MAPS, 4, 4, 1, Some(inner.as_fd()))?;
        Ok(RcuBarrier { outer, inner })
    }

    /// Blocks for one RCU grace period.
    pub fn wait(&self) -> io::Result<()> {
        let key: u32 = 0;
        let value: u32 = self.inner.as_raw_fd() as u32;
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, self.outer.as_raw_fd() as u32);
        put_u64(&mut attr, 8, &raw const key as u64);
        put_u64(&mut attr, 16, &raw const value as u64);
        sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
    }
}

/// Bytes the kernel uses per element of an array map with values of `size`.
pub const fn elem_size(size: usize) -> usize {
    size.div_ceil(8) * 8
}

/// A shared writable mapping of an array map created with `BPF_F_MMAPABLE`.
pub struct ArrayMmap {
    ptr: *mut u8,
    len: usize,
}

impl ArrayMmap {
    /// Maps the whole array: `entries` elements of `value_size` bytes.
    pub fn new(fd: BorrowedFd<'_>, entries: u32, value_size: usize) -> io::Result<Self> {
        let page = 4096;
        let len = (entries as usize * elem_size(value_size)).div_ceil(page) * page;
        // SAFETY: mapping a BPF array fd; the kernel checks size and flags.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(ArrayMmap {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The mapped bytes.
    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: ptr/len describe a live mapping owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

// SAFETY: the mapping is memory of the whole process, not of a thread; it
// is unmapped once, by its one owner.
unsafe impl Send for ArrayMmap {}

impl Drop for ArrayMmap {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Writes `values` into the array map `fd` of `entries` elements (each value
/// at its element's offset) and zeroes the elements after them.
pub fn write_array<T: Copy>(fd: BorrowedFd<'_>, entries: u32, values: &[T]) -> io::Result<()> {
    let size = size_of::<T>();
    let stride = elem_size(size);
    if values.len() > entries as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} values for an array of {entries}", values.len()),
        ));
    }
    let mut map = ArrayMmap::new(fd, entries, size)?;
    let bytes = map.bytes();
    if stride == size {
        // SAFETY: T is plain data (Copy, repr(C) ABI types); viewing it as bytes is fine.
        let src = unsafe {
            std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), size_of_val(values))
        };
        bytes[..src.len()].copy_from_slice(src);
    } else {
        for (i, v) in values.iter().enumerate() {
            // SAFETY: as above, for one value.
            let src = unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size) };
            bytes[i * stride..i * stride + size].copy_from_slice(src);
            bytes[i * stride + size..(i + 1) * stride].fill(0);
        }
    }
    bytes[values.len() * stride..entries as usize * stride].fill(0);
    Ok(())
}

/// `BPF_MAP_LOOKUP_BATCH`.
const BPF_MAP_LOOKUP_BATCH: u32 = 24;
/// Elements one `BPF_MAP_LOOKUP_BATCH` call reads at most.
const BATCH: usize = 1024;

/// Reads the first `entries` elements of the per-CPU array map `fd`, whose
/// values are `value_size` bytes on each of `cpus` possible CPUs, with
/// `BPF_MAP_LOOKUP_BATCH`: one call per 1,024 elements instead of one per
/// element. The value of element `i` on CPU `c` is at
/// `(i * cpus + c) * elem_size(value_size)` of the result.
pub fn read_percpu_array(
    fd: BorrowedFd<'_>,
    entries: usize,
    value_size: usize,
    cpus: usize,
) -> io::Result<Vec<u8>> {
    let stride = elem_size(value_size) * cpus;
    let mut out = vec![0u8; entries * stride];
    let mut keys = vec![0u32; BATCH];
    let (mut token_in, mut token_out) = (0u32, 0u32);
    let mut done = 0;
    while done < entries {
        let want = BATCH.min(entries - done);
        let values = out[done * stride..].as_mut_ptr();
        let mut attr = [0u8; 128];
        if done > 0 {
            put_u64(&mut attr, 0, std::ptr::from_ref(&token_in) as u64);
        }
        put_u64(&mut attr, 8, std::ptr::from_mut(&mut token_out) as u64);
        put_u64(&mut attr, 16, keys.as_mut_ptr() as u64);
        put_u64(&mut attr, 24, values as u64);
        put_u32(&mut attr, 32, want as u32);
        put_u32(&mut attr, 36, fd.as_raw_fd() as u32);
        let result = sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = u32::from_ne_bytes(attr[32..36].try_into().expect("4 bytes")) as usize;
        // An array's keys come in order from the one after `token_in`.
        if keys[..got.min(want)]
            .iter()
            .enumerate()
            .any(|(i, k)| *k as usize != done + i)
        {
            return Err(io::Error::other(
                "a batch lookup returned keys out of order",
            ));
        }
        done += got.min(want);
        match result {
            Ok(_) if got > 0 => token_in = token_out,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Ok(_) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elem_sizes_round_to_eight() {
        assert_eq!(elem_size(4), 8);
        assert_eq!(elem_size(8), 8);
        assert_eq!(elem_size(116), 120);
        assert_eq!(elem_size(1080), 1080);
    }
}

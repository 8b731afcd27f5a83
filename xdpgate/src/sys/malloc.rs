//! The daemon's allocator setting: glibc without fastbins.
//!
//! glibc keeps freed chunks of up to 160 bytes in per-arena "fastbins"
//! without merging them, and merges them all at once
//! (`malloc_consolidate`) at the next request of a large chunk. After a
//! whole ACL state is freed (a million-prefix `acl replace`, the journal's
//! compaction, a reader's snapshot let go) the fastbins hold millions of
//! chunks, and the next change paid for merging them: measured (bench part
//! 7, 1M prefixes per family) 11.4-16.1 ms inside the first change after a
//! load, in its first allocation of a 1 KiB B-tree node, against 16 us
//! with fastbins off; that change was the CLI's one call over 50 ms. Off,
//! a freed chunk is merged when it is freed (the per-thread caches still
//! serve the small sizes first).

/// Turns glibc's fastbins off for this process (`mallopt(M_MXFAST, 0)`);
/// logged and left as it was if glibc refuses. Other C libraries have no
/// such bins: nothing to do.
pub fn no_fastbins() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only sets a parameter of the allocator, under the
        // allocator's own lock; no memory is touched.
        if unsafe { libc::mallopt(libc::M_MXFAST, 0) } != 1 {
            log::warn!(
                "could not turn the allocator's fastbins off; changes after a large free may stall once"
            );
        }
    }
}

#[cfg(all(test, target_env = "gnu"))]
mod tests {
    use super::no_fastbins;

    /// Bytes the allocator holds in fastbins.
    fn fastbin_bytes() -> usize {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        unsafe { libc::mallinfo2() }.fsmblks
    }

    #[test]
    fn small_chunks_freed_after_the_setting_are_not_kept_in_fastbins() {
        no_fastbins();
        let before = fastbin_bytes();
        // Far more than the per-thread cache holds (7 per size), of sizes
        // glibc keeps in fastbins by default (up to 160 bytes).
        let chunks: Vec<Vec<Box<[u8]>>> = (0..2_000)
            .map(|i| {
                (1..=8usize)
                    .map(|k| vec![i as u8; k * 16].into_boxed_slice())
                    .collect()
            })
            .collect();
        drop(std::hint::black_box(chunks));
        assert!(
            fastbin_bytes() <= before,
            "fastbins grew from {before} to {} bytes",
            fastbin_bytes()
        );
    }
}

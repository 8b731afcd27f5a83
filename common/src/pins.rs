//! The pinned datapath's contract: where its objects live under the daemon's
//! bpffs directory, the schema version of its maps and program, and the
//! record that names both.
//!
//! ```text
//! <bpffs_dir>/            mode 0700, owned by root
//!   meta                  array map, 1 entry: `Meta` (this layout never changes)
//!   maps-<schema>/XG_*    every map of the XDP object, by its full name, in a
//!                         folder per schema ([`MAPS_DIR_PREFIX`])
//!   links/<ifname>        one XDP bpf_link per enforcing interface
//! ```
//!
//! The links keep the program attached when no daemon runs; the maps keep
//! the policy, the bindings, the services and the counters. A daemon that
//! finds pins of its own [`SCHEMA_VERSION`] reuses the maps and replaces the
//! program in each link atomically (`BPF_LINK_UPDATE`). One of an older
//! schema fills the maps of its own schema beside the old ones, switches each
//! link to its program, and commits by writing its schema into `meta` (one
//! map update); only then are the old maps removed.

/// The datapath's schema: changes whenever any map's key or value layout,
/// size or type, any map's meaning, or the program's contract (attach type,
/// frags, tail-call slots) changes. Pins of another schema are never reused
/// as they are.
///
/// History: 1 = the first pinned datapath; 2 = the programs load with
/// multi-buffer support (`xdp.frags`, jumbo MTUs in native mode). Both
/// issue 13. 3 = rate limits and SYN cookies (issue 15): `RuleInfo` grows a
/// limit, three drop reasons, the SYN-cookie program's tail-call slot and
/// the `XG_LIMIT_*` and `XG_SYNCOOKIE` maps. 4 = the `XG_IFACE_INDEX`
/// array beside `XG_IFACES` and the per-CPU `XG_IFACE_SCRATCH` (issue 16).
/// 5 = the routing generation `XG_LB_ROUTE_GEN`, and `XG_LB_NEXTHOP`'s
/// entries carry it and expire in jiffies (56 bytes instead of 48); the
/// per-CPU IPv6 address-class cache `XG_ADDR_CACHE`, and `XG_CACHE_STATS`
/// counts its hits and misses (issue 16).
/// 6 = the IPv6 address trie: `XG_V6_BLOCKS_0/1` and `V6Bucket` entries
/// pointing to blocks (issue 16).
///
/// A build made with `XDPGATE_SCHEMA_VARIANT` set (only `cargo xtask test`
/// and `cargo xtask bench` make one, for their schema-upgrade runs) has the
/// next schema, whose [`crate::EventConfig`] has one field more.
pub const SCHEMA_VERSION: u32 = if SCHEMA_VARIANT {
    SCHEMA_RELEASED + 1
} else {
    SCHEMA_RELEASED
};

/// The schema of this source tree's own builds.
const SCHEMA_RELEASED: u32 = 6;

/// Whether this is the schema-upgrade test's build (see [`SCHEMA_VERSION`]).
pub const SCHEMA_VARIANT: bool = option_env!("XDPGATE_SCHEMA_VARIANT").is_some();

/// [`Meta::magic`]: `b"XDPGATE\0"` read as a little-endian `u64`.
pub const META_MAGIC: u64 = u64::from_le_bytes(*b"XDPGATE\0");

/// The pin of the [`Meta`] record, under the bpffs directory.
pub const META_PIN: &str = "meta";
/// The folders of the pinned maps, under the bpffs directory: this prefix and
/// the schema number (`maps-1`). bpffs refuses names with a dot (EPERM).
pub const MAPS_DIR_PREFIX: &str = "maps-";
/// The folder of the pinned links (one per interface name), under the bpffs directory.
pub const LINKS_DIR: &str = "links";

/// The one value of the [`META_PIN`] array map: what the pins under the
/// directory are. Its layout is fixed for every schema, so any build can read
/// what another build left.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// [`META_MAGIC`].
    pub magic: u64,
    /// The [`SCHEMA_VERSION`] of the datapath committed: its maps are under
    /// `maps-<schema>/`.
    pub schema: u32,
    /// Zero.
    pub flags: u32,
    /// The kernel's tag of the main program the links run (`bpf_prog_info.tag`).
    pub prog_tag: [u8; 8],
    /// When the datapath was first installed (Unix time, nanoseconds).
    pub created_unix_ns: u64,
    /// When the running program and state were last committed (Unix time, nanoseconds).
    pub committed_unix_ns: u64,
    /// Zero.
    pub _reserved: [u64; 4],
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    #[test]
    fn the_meta_record_keeps_its_layout_forever() {
        // Any build must read what any other build left: never change these.
        assert_eq!(size_of::<Meta>(), 72);
        assert_eq!(offset_of!(Meta, schema), 8);
        assert_eq!(offset_of!(Meta, prog_tag), 16);
        assert_eq!(offset_of!(Meta, created_unix_ns), 24);
        assert_eq!(offset_of!(Meta, committed_unix_ns), 32);
        assert_eq!(&META_MAGIC.to_le_bytes(), b"XDPGATE\0");
    }
}

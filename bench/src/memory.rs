//! Kernel memory of the loaded datapath: the `memlock` the kernel charges
//! for every BPF map this process holds (`/proc/self/fdinfo`), read right
//! after `Datapath::load` in part 1. Array and preallocated hash maps are
//! charged in full when created, so the figure does not depend on what the
//! tables hold.
use std::{fs, path::Path};

use anyhow::Context as _;
use serde::Serialize;

/// One map's charge.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct MapCharge {
    /// Kernel map id.
    pub id: u32,
    /// `BPF_MAP_TYPE_*` number.
    pub map_type: u32,
    /// Entries the map was created with.
    pub max_entries: u64,
    /// Bytes of one value.
    pub value_size: u64,
    /// Bytes the kernel charges for it.
    pub memlock: u64,
}

/// Every BPF map this process holds, largest first, and their sum.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct MapMemory {
    /// Sum of `memlock` over the maps, in bytes.
    pub total: u64,
    /// Every map (one entry per map id, however many descriptors hold it).
    pub maps: Vec<MapCharge>,
}

impl MapMemory {
    /// The `n` largest charges, as "MiB (entries x value bytes)" for the table.
    pub(crate) fn largest(&self, n: usize) -> String {
        self.maps
            .iter()
            .take(n)
            .map(|m| {
                format!(
                    "{:.1} MiB ({} x {} B)",
                    m.memlock as f64 / MIB,
                    m.max_entries,
                    m.value_size
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Bytes per MiB.
pub(crate) const MIB: f64 = 1024.0 * 1024.0;

/// Reads the charges of every BPF map descriptor of this process.
pub(crate) fn of_this_process() -> anyhow::Result<MapMemory> {
    let mut maps: Vec<MapCharge> = Vec::new();
    for entry in fs::read_dir("/proc/self/fd").context("listing /proc/self/fd")? {
        let entry = entry.context("reading /proc/self/fd")?;
        let Ok(target) = fs::read_link(entry.path()) else {
            continue; // closed meanwhile (the directory's own descriptor)
        };
        if target != Path::new("anon_inode:bpf-map") {
            continue;
        }
        let info = Path::new("/proc/self/fdinfo").join(entry.file_name());
        let Ok(text) = fs::read_to_string(&info) else {
            continue;
        };
        let field = |name: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        };
        let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) else {
            continue;
        };
        if maps.iter().any(|m| u64::from(m.id) == id) {
            continue;
        }
        maps.push(MapCharge {
            id: id as u32,
            map_type: field("map_type:").unwrap_or(0) as u32,
            max_entries: field("max_entries:").unwrap_or(0),
            value_size: field("value_size:").unwrap_or(0),
            memlock,
        });
    }
    maps.sort_by_key(|m| std::cmp::Reverse(m.memlock));
    Ok(MapMemory {
        total: maps.iter().map(|m| m.memlock).sum(),
        maps,
    })
}

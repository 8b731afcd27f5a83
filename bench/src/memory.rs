//! Kernel memory of the loaded datapath: the `memlock` the kernel charges
//! for every BPF map this process holds (`/proc/self/fdinfo`), read right
//! after `Datapath::load` in part 1. Array and preallocated hash maps are
//! charged in full when created, so the figure does not depend on what the
//! tables hold.
//!
//! [`compare`] loads the datapath at the default (largest) capacities and at
//! small ones in the same run, each measured alone (the maps it added), and
//! [`print`] shows both with the large maps by name.
use std::{collections::BTreeSet, fs, os::fd::BorrowedFd, path::Path};

use anyhow::Context as _;
use serde::Serialize;
use xdpgate::datapath::{Datapath, MapSizes};
use xdpgate_model::{acl::compile::Capacities, lb::LoadOptions};
use xdpgate_tests::lab::Netns;

/// One map's charge.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct MapCharge {
    /// Kernel map id.
    pub id: u32,
    /// The map's name (cut by the kernel at 15 bytes).
    pub name: String,
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
        let name = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
            .and_then(|fd| {
                // SAFETY: the descriptor is this process's, open (listed in
                // /proc/self/fd, its fdinfo just read) and only borrowed for
                // the one call.
                let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                xdpgate::sys::object::map_info(fd).ok()
            })
            .map(|i| i.name)
            .unwrap_or_default();
        maps.push(MapCharge {
            id: id as u32,
            name,
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

/// One configuration's maps.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Footprint {
    /// What was configured.
    pub config: String,
    /// Its maps, largest first.
    pub memory: MapMemory,
}

/// The datapath's maps at the default capacities and at small ones.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Comparison {
    /// Default (largest) capacities first.
    pub footprints: Vec<Footprint>,
}

/// The configurations [`compare`] measures: the defaults; small ACL tables
/// (`[acl]` only); and a small host (small ACL tables, the smallest rate-limit
/// bucket table, 4 services of Maglev rings of 4,099).
fn configurations() -> Vec<(String, MapSizes)> {
    let small_acl = Capacities {
        prefix_bucket_bits: 10,
        phase_cells: 65_536,
        walk_addr_classes: 1024,
        walk_port_classes: 1024,
        v6_blocks: 64,
    };
    let acl_keys = "[acl] prefix_slots = 4096, phase_cells = 65536, walk_addr_classes = 1024, walk_port_classes = 1024, v6_blocks = 64";
    vec![
        (
            "defaults (the largest tables)".to_owned(),
            MapSizes::default(),
        ),
        (
            acl_keys.to_owned(),
            MapSizes {
                acl: small_acl,
                ..MapSizes::default()
            },
        ),
        (
            format!(
                "{acl_keys}; [ddos] limit_buckets = 1024; [lb] max_services = 4, table_size = 4099"
            ),
            MapSizes {
                acl: small_acl,
                limit_buckets: xdpgate_common::limit::MIN_BUCKETS,
                rings: LoadOptions {
                    ring_services: 4,
                    ring_size: 4099,
                },
            },
        ),
    ]
}

/// The maps one datapath loaded with `sizes` adds to this process.
fn of_datapath(sizes: MapSizes) -> anyhow::Result<MapMemory> {
    let before: BTreeSet<u32> = of_this_process()?.maps.iter().map(|m| m.id).collect();
    let dp = Datapath::load_sized(sizes).context("loading xdpgate")?;
    let mut mem = of_this_process()?;
    drop(dp);
    mem.maps.retain(|m| !before.contains(&m.id));
    mem.total = mem.maps.iter().map(|m| m.memlock).sum();
    Ok(mem)
}

/// Loads the datapath (in namespace `ns`, nothing attached) in each of
/// [`configurations`] in turn and measures its maps.
pub(crate) fn compare(ns: &Netns) -> anyhow::Result<Comparison> {
    let footprints = ns.run(|| {
        configurations()
            .into_iter()
            .map(|(config, sizes)| {
                Ok(Footprint {
                    config,
                    memory: of_datapath(sizes)?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    Ok(Comparison { footprints })
}

/// Maps of at least this many bytes are listed by name.
const LISTED: u64 = 1 << 20;

/// Prints each configuration's total and its maps of 1 MiB or more.
pub(crate) fn print(c: &Comparison) {
    println!("Kernel memory of the datapath's maps (memlock, /proc/self/fdinfo), by configuration");
    let max = c.footprints.first().map_or(0, |f| f.memory.total);
    for f in &c.footprints {
        let m = &f.memory;
        println!(
            "   {:.1} MiB in {} maps ({:.2}x the defaults): {}",
            m.total as f64 / MIB,
            m.maps.len(),
            m.total as f64 / max.max(1) as f64,
            f.config
        );
        let big: Vec<String> = m
            .maps
            .iter()
            .filter(|m| m.memlock >= LISTED)
            .map(|m| {
                format!(
                    "{} {:.1} MiB ({} x {} B)",
                    m.name,
                    m.memlock as f64 / MIB,
                    m.max_entries,
                    m.value_size
                )
            })
            .collect();
        let rest: u64 = m
            .maps
            .iter()
            .filter(|m| m.memlock < LISTED)
            .map(|m| m.memlock)
            .sum();
        for line in big.chunks(3) {
            println!("      {}", line.join(", "));
        }
        println!(
            "      the other {} maps: {:.1} MiB",
            m.maps.iter().filter(|m| m.memlock < LISTED).count(),
            rest as f64 / MIB
        );
    }
}

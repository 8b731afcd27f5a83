//! Reading the datapath's per-CPU counters from the daemon's pinned maps.
use std::path::PathBuf;

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray};
use serde::Serialize;
use thiserror::Error;
use xdpgate_common::{
    Action, Counter, DropReason, Family, IfaceConfig, MAX_IFACES, UNKNOWN_IFACE_SLOT,
    acl::cache_stat, limit::maps as limit_maps, maps, reason_index, stats_index,
};

use crate::{paths::Paths, sys};

/// Errors of reading the counters.
#[derive(Debug, Error)]
pub enum StatsError {
    /// No daemon state is pinned.
    #[error(
        "no running xdpgate daemon: nothing pinned at {0} (start one with `xdpgate run --iface IF`)"
    )]
    NotRunning(PathBuf),
    /// A pinned map could not be read in batches.
    #[error("map {map}: {source}")]
    Read {
        /// The map's name.
        map: &'static str,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A pinned map could not be opened or read.
    #[error("map {map}: {source}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// The failure.
        #[source]
        source: MapError,
    },
}

/// One counter row: packets and bytes of one interface, family and action,
/// summed over all CPUs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    /// Interface name (`ifindex N` if it no longer exists, `unregistered` for slot 0).
    pub interface: String,
    /// Interface index (0 for unregistered interfaces).
    pub ifindex: u32,
    /// `ipv4`, `ipv6` or `other`.
    pub family: &'static str,
    /// `pass`, `drop`, `tx`, `redirect` or `aborted`.
    pub action: &'static str,
    /// Packets.
    pub packets: u64,
    /// Bytes, Ethernet header included.
    pub bytes: u64,
}

/// Drop-reason counter of one interface, summed over all CPUs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReasonRow {
    /// Interface name, as in [`Row`].
    pub interface: String,
    /// Interface index.
    pub ifindex: u32,
    /// Reason name (`xdpgate_common::DropReason::name`).
    pub reason: &'static str,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Everything `xdpgate stats` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Packets and bytes per interface, family and action.
    pub counters: Vec<Row>,
    /// Packets per interface and drop reason: malformed frames (dropped unless
    /// the interface passes malformed packets) and, under `not_bound`, packets
    /// to unbound destinations (always dropped). The field keeps its name for
    /// existing consumers; it lists every reason.
    pub malformed: Vec<ReasonRow>,
    /// ACL decision-cache hits and misses over all interfaces.
    pub decision_cache: CacheStats,
    /// Packets of each rule limit and SYN-cookie counter
    /// (`xdpgate_common::limit::rule_stat` order), summed over every rule.
    pub limits: [u64; 6],
}

/// ACL decision-cache counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// Packets decided from the cache.
    pub hits: u64,
    /// Packets resolved without the cache (not cached, or cache off).
    pub misses: u64,
    /// Of the misses, packets that walked the rule bitmaps (a generation
    /// without phased tables: its rule set exceeded their budget, or a rule
    /// change's phased tables were still being rebuilt).
    pub walks: u64,
    /// IPv6 addresses (source and destination counted apart) whose class
    /// came from the address-class cache (`XG_ADDR_CACHE`).
    pub addr_hits: u64,
    /// IPv6 addresses looked up in the address tables with that cache on.
    pub addr_misses: u64,
}

/// Reads the decision-cache and address-cache counters from `XG_CACHE_STATS`.
pub fn cache_stats(map: &Map) -> Result<CacheStats, MapError> {
    let map: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
    let sum = |i: u32| map.get(&i, 0).map(|v| v.iter().sum::<u64>());
    Ok(CacheStats {
        hits: sum(cache_stat::HIT)?,
        misses: sum(cache_stat::MISS)?,
        walks: sum(cache_stat::WALK)?,
        addr_hits: sum(cache_stat::ADDR_HIT)?,
        addr_misses: sum(cache_stat::ADDR_MISS)?,
    })
}

fn open(paths: &Paths, name: &'static str) -> Result<MapData, StatsError> {
    let path = paths.map_pin(name);
    if !path.exists() {
        return Err(StatsError::NotRunning(paths.bpffs_dir.clone()));
    }
    MapData::from_pin(&path).map_err(|source| StatsError::Map { map: name, source })
}

/// Reads the counters from the maps a daemon pinned under `paths.bpffs_dir`.
pub fn read(paths: &Paths) -> Result<Report, StatsError> {
    let ifaces = Map::HashMap(open(paths, maps::IFACES)?);
    let stats = Map::PerCpuArray(open(paths, maps::STATS)?);
    let reasons = Map::PerCpuArray(open(paths, maps::REASONS)?);
    let cache = Map::PerCpuArray(open(paths, maps::CACHE_STATS)?);
    let limits = Map::PerCpuArray(open(paths, limit_maps::LIMIT_STATS)?);
    let mut report = collect(&ifaces, &stats, &reasons)?;
    report.decision_cache = cache_stats(&cache).map_err(|source| StatsError::Map {
        map: maps::CACHE_STATS,
        source,
    })?;
    let totals = super::limit_totals(&limits).map_err(|source| StatsError::Read {
        map: limit_maps::LIMIT_STATS,
        source,
    })?;
    report.limits = totals.map(|c| c.packets);
    Ok(report)
}

/// Reads every counter of every registered interface (and of slot 0, the
/// unregistered-interface slot, when it is non-zero), ordered by slot, family,
/// action. Rows are present at zero.
pub fn collect(ifaces: &Map, stats: &Map, reasons: &Map) -> Result<Report, StatsError> {
    let err = |map| move |source| StatsError::Map { map, source };
    let ifaces: HashMap<_, u32, IfaceConfig> =
        HashMap::try_from(ifaces).map_err(err(maps::IFACES))?;
    let stats: PerCpuArray<_, Counter> = PerCpuArray::try_from(stats).map_err(err(maps::STATS))?;
    let reasons: PerCpuArray<_, Counter> =
        PerCpuArray::try_from(reasons).map_err(err(maps::REASONS))?;

    let mut slots: Vec<(u32, u32)> = Vec::new(); // (slot, ifindex)
    for item in &ifaces {
        let (ifindex, cfg) = item.map_err(err(maps::IFACES))?;
        if cfg.slot != UNKNOWN_IFACE_SLOT && cfg.slot < MAX_IFACES {
            slots.push((cfg.slot, ifindex));
        }
    }
    slots.sort_unstable();
    slots.insert(0, (UNKNOWN_IFACE_SLOT, 0));

    let sum = |map: &PerCpuArray<_, Counter>, index: u32, name| {
        map.get(&index, 0).map_err(err(name)).map(|values| {
            values
                .iter()
                .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes))
        })
    };
    let mut report = Report::default();
    for (slot, ifindex) in slots {
        let interface = if slot == UNKNOWN_IFACE_SLOT {
            "unregistered".to_owned()
        } else {
            sys::ifname(ifindex).unwrap_or_else(|| format!("ifindex {ifindex}"))
        };
        let mut rows = Vec::new();
        for family in Family::ALL {
            for action in Action::ALL {
                let (packets, bytes) = sum(&stats, stats_index(slot, family, action), maps::STATS)?;
                rows.push(Row {
                    interface: interface.clone(),
                    ifindex,
                    family: family.name(),
                    action: action.name(),
                    packets,
                    bytes,
                });
            }
        }
        let mut reason_rows = Vec::new();
        for reason in DropReason::ALL {
            let (packets, bytes) = sum(&reasons, reason_index(slot, reason), maps::REASONS)?;
            reason_rows.push(ReasonRow {
                interface: interface.clone(),
                ifindex,
                reason: reason.name(),
                packets,
                bytes,
            });
        }
        if slot != UNKNOWN_IFACE_SLOT || rows.iter().any(|r| r.packets != 0) {
            report.counters.extend(rows);
            report.malformed.extend(reason_rows);
        }
    }
    Ok(report)
}

//! The ACL tables: writing a compiled generation (`xdpgate_model::acl::compile`)
//! into one half of the double-buffered tables, the configuration word whose
//! update switches generations, and the rule counters. The order of an
//! install (idle generation, fresh counters, switch, wait) is the ACL
//! controller's, through [`AclTables`].
use std::{os::fd::AsFd as _, path::PathBuf};

use aya::maps::{Array, PerCpuArray};
use xdpgate_common::{
    Action, Counter, MAX_IFACES,
    acl::{
        ACL_NO_CACHE, AclConfig, DPORT_QUADS, LENSETS, MAX_PHASE_GROUPS, MAX_RULES,
        MIN_PREFIX_BUCKET_BITS, PHASE_CELLS_MAP, PHASE_GROUPS_MAP, PREFIX_BUCKET_BITS, Pair,
        PhaseGroup, Quad, RULE_BITS, RuleInfo, SPORT_QUADS, V4_TBL24_PAIRS,
    },
    maps::{self, GEN_TABLES},
};
use xdpgate_model::acl::{
    Verdict,
    compile::{Capacities, Image, incr::Delta},
};

use super::{
    Datapath, DatapathError, RuleLimitStats,
    seam::{AclTables, RcuWait},
    stats::{self, CacheStats},
};
use crate::sys::bpf;

/// Base names of the per-generation maps whose size the ACL capacities
/// (`[acl]`) set, with the key that sets each.
const SIZED: [(&str, &str); 7] = [
    (GEN_TABLES[11], "[acl] prefix_slots"),
    (GEN_TABLES[12], "[acl] v6_blocks"),
    (PHASE_CELLS_MAP, "[acl] phase_cells"),
    (GEN_TABLES[2], "[acl] walk_port_classes"),
    (GEN_TABLES[3], "[acl] walk_port_classes"),
    (GEN_TABLES[4], "[acl] walk_addr_classes"),
    (GEN_TABLES[5], "[acl] walk_addr_classes"),
];

/// The maps of [`SIZED`], both generations (the loader keeps the names for
/// its lifetime, so they are spelled out).
const SIZED_MAPS: [&str; 14] = [
    "XG_PREFIXES_0",
    "XG_PREFIXES_1",
    "XG_V6_BLOCKS_0",
    "XG_V6_BLOCKS_1",
    "XG_PHASE_CELLS_0",
    "XG_PHASE_CELLS_1",
    "XG_BM_SPORT_0",
    "XG_BM_SPORT_1",
    "XG_BM_DPORT_0",
    "XG_BM_DPORT_1",
    "XG_BM_SRC_0",
    "XG_BM_SRC_1",
    "XG_BM_DST_0",
    "XG_BM_DST_1",
];

/// Every value the long-prefix index bits can take, so the loader can hold
/// a reference to the one it sets for as long as it lives.
static PREFIX_BITS: [u32; (PREFIX_BUCKET_BITS - MIN_PREFIX_BUCKET_BITS + 1) as usize] = {
    let mut v = [0; (PREFIX_BUCKET_BITS - MIN_PREFIX_BUCKET_BITS + 1) as usize];
    let mut i = 0;
    while i < v.len() {
        v[i] = MIN_PREFIX_BUCKET_BITS + i as u32;
        i += 1;
    }
    v
};

/// The value of the datapath's `PREFIX_BITS_GLOBAL` for `caps` (valid
/// capacities: see `MapSizes::is_valid`).
pub(super) fn prefix_bits_ref(caps: &Capacities) -> &'static u32 {
    let i = caps
        .prefix_bucket_bits
        .clamp(MIN_PREFIX_BUCKET_BITS, PREFIX_BUCKET_BITS)
        - MIN_PREFIX_BUCKET_BITS;
    &PREFIX_BITS[i as usize]
}

/// Elements of map `base` (a base name of [`SIZED`]) under `caps`.
fn entries_of(base: &str, caps: &Capacities) -> Option<u32> {
    Some(match base {
        b if b == GEN_TABLES[11] => caps.prefix_buckets(),
        b if b == GEN_TABLES[12] => caps.v6_blocks,
        PHASE_CELLS_MAP => caps.phase_quads(),
        b if b == GEN_TABLES[2] || b == GEN_TABLES[3] => caps.walk_port_classes,
        b if b == GEN_TABLES[4] || b == GEN_TABLES[5] => caps.walk_addr_classes,
        _ => return None,
    })
}

/// The generation of map `name` stripped (`XG_PREFIXES_1` -> `XG_PREFIXES`).
fn base_of(name: &str) -> &str {
    name.strip_suffix("_0")
        .or_else(|| name.strip_suffix("_1"))
        .unwrap_or(name)
}

/// Elements of map `name` when the ACL capacities size it.
pub(super) fn sized_entries(name: &str, caps: &Capacities) -> Option<u32> {
    entries_of(base_of(name), caps)
}

/// Every map the ACL capacities size (both generations) and its elements.
pub(super) fn sized_maps(caps: &Capacities) -> Vec<(&'static str, u32)> {
    SIZED_MAPS
        .iter()
        .filter_map(|name| Some((*name, sized_entries(name, caps)?)))
        .collect()
}

/// The `[acl]` key that sizes map `name`, when one does.
pub(super) fn resizable(name: &str) -> Option<&'static str> {
    let base = base_of(name);
    SIZED.iter().find(|(b, _)| *b == base).map(|(_, key)| *key)
}

/// The value of `[acl]` key `key` that makes its maps `entries` elements.
pub(super) fn setting_of(key: &str, entries: u32) -> Option<String> {
    match key {
        "[acl] prefix_slots" => Some((u64::from(entries) * 4).to_string()),
        // One element is the table of `phase_cells = 0` (the kernel has no
        // empty arrays).
        "[acl] phase_cells" if entries <= 1 => Some("0".to_owned()),
        "[acl] phase_cells" => Some((u64::from(entries) * 4).to_string()),
        "[acl] walk_addr_classes" | "[acl] walk_port_classes" | "[acl] v6_blocks" => {
            Some(entries.to_string())
        }
        _ => None,
    }
}

impl Datapath {
    /// The ACL tables' capacities (`[acl]`) the datapath was loaded with.
    pub fn acl_capacities(&self) -> Capacities {
        self.acl_caps
    }

    pub(super) fn write<T: Copy>(
        &self,
        base: &'static str,
        generation: usize,
        entries: u32,
        values: &[T],
    ) -> Result<(), DatapathError> {
        let name = format!("{base}_{generation}");
        let fd = self.map_data(&name)?.fd().as_fd();
        bpf::write_array(fd, entries, values).map_err(|source| DatapathError::Io {
            what: "cannot write table",
            path: PathBuf::from(name),
            source,
        })
    }

    /// The live ACL configuration (generation, rule counts).
    pub fn acl_config(&self) -> Result<AclConfig, DatapathError> {
        let map: Array<_, AclConfig> = Array::try_from(
            self.ebpf
                .map(maps::ACL_CONFIG)
                .ok_or_else(|| DatapathError::Missing(maps::ACL_CONFIG.into()))?,
        )
        .map_err(|source| DatapathError::Map {
            map: maps::ACL_CONFIG,
            source,
        })?;
        map.get(&0, 0).map_err(|source| DatapathError::Map {
            map: maps::ACL_CONFIG,
            source,
        })
    }

    fn set_acl_config(&mut self, cfg: AclConfig) -> Result<(), DatapathError> {
        let mut map: Array<_, AclConfig> = Array::try_from(
            self.ebpf
                .map_mut(maps::ACL_CONFIG)
                .ok_or_else(|| DatapathError::Missing(maps::ACL_CONFIG.into()))?,
        )
        .map_err(|source| DatapathError::Map {
            map: maps::ACL_CONFIG,
            source,
        })?;
        map.set(0, cfg, 0).map_err(|source| DatapathError::Map {
            map: maps::ACL_CONFIG,
            source,
        })
    }

    /// Turns the datapath's decision cache on (the default) or off. Off, every
    /// packet is resolved through the phased tables (or, for a generation
    /// over their budget, by walking the rule bitmaps): the worst case, for
    /// measurements and diagnosis. Decisions are the same either way.
    pub fn set_decision_cache(&mut self, on: bool) -> Result<(), DatapathError> {
        let mut cfg = self.acl_config()?;
        if on {
            cfg.flags &= !ACL_NO_CACHE;
        } else {
            cfg.flags |= ACL_NO_CACHE;
        }
        self.set_acl_config(cfg)
    }

    /// Decision-cache hits and misses so far, summed over CPUs.
    pub fn cache_stats(&self) -> Result<CacheStats, DatapathError> {
        let map = self
            .ebpf
            .map(maps::CACHE_STATS)
            .ok_or_else(|| DatapathError::Missing(maps::CACHE_STATS.into()))?;
        stats::cache_stats(map).map_err(|source| DatapathError::Map {
            map: maps::CACHE_STATS,
            source,
        })
    }

    /// Writes `image` into every table of generation `generation`: the
    /// classification tables in [`GEN_TABLES`] order (the six rule-bitmap
    /// tables only when the image has no phased tables: the datapath reads
    /// them only then), the phased tables, then the rule information
    /// (`counters[i]` is the counter slot of rule `i`; the per-interface
    /// default rules follow the real ones).
    fn write_generation(
        &self,
        generation: usize,
        image: &Image,
        counters: &[u32],
    ) -> Result<(), DatapathError> {
        let t = generation;
        let caps = self.acl_caps;
        if image.caps != caps {
            return Err(DatapathError::Missing(format!(
                "ACL tables compiled for the capacities the datapath was loaded with ({caps:?}, not {:?})",
                image.caps
            )));
        }
        match &image.phases {
            Some(p) => {
                let mut cells = p.cells.clone();
                cells.resize(cells.len().div_ceil(4) * 4, 0);
                self.write(PHASE_CELLS_MAP, t, caps.phase_quads(), quads(&cells))?;
                self.write(PHASE_GROUPS_MAP, t, MAX_PHASE_GROUPS as u32, &p.groups)?;
            }
            None => {
                self.write(
                    PHASE_GROUPS_MAP,
                    t,
                    MAX_PHASE_GROUPS as u32,
                    &[PhaseGroup::default()],
                )?;
                self.write(GEN_TABLES[0], t, MAX_IFACES, &image.iface_bm)?;
                self.write(GEN_TABLES[1], t, 256, &image.proto_bm)?;
                self.write(GEN_TABLES[2], t, caps.walk_port_classes, &image.sport_bm)?;
                self.write(GEN_TABLES[3], t, caps.walk_port_classes, &image.dport_bm)?;
                self.write(GEN_TABLES[4], t, caps.walk_addr_classes, &image.src_bm)?;
                self.write(GEN_TABLES[5], t, caps.walk_addr_classes, &image.dst_bm)?;
            }
        }
        self.write(GEN_TABLES[6], t, SPORT_QUADS, quads(&image.sport_class))?;
        self.write(GEN_TABLES[7], t, DPORT_QUADS, quads(&image.dport_class))?;
        self.write(GEN_TABLES[8], t, V4_TBL24_PAIRS, pairs(&image.v4_tbl24))?;
        self.write(GEN_TABLES[9], t, 65536, &image.v6_buckets)?;
        self.write(GEN_TABLES[12], t, caps.v6_blocks, &image.v6_blocks)?;
        self.write(GEN_TABLES[10], t, LENSETS, &image.lensets)?;
        self.write(
            GEN_TABLES[11],
            t,
            caps.prefix_buckets(),
            &image.prefix_table,
        )?;
        self.write(maps::RULE_INFO, t, RULE_BITS, &rule_info(image, counters))
    }

    /// Zeroes rule counter slots `slots` on every CPU.
    /// See [`AclTables::live_rule_slots`].
    pub fn live_rule_slots(&self) -> Result<Vec<(u32, u32)>, DatapathError> {
        let cfg = self.acl_config()?;
        if !cfg.enabled() {
            return Ok(Vec::new());
        }
        let t = cfg.generation();
        let name = format!("{}_{t}", maps::RULE_INFO);
        let n = cfg.rules[t].min(MAX_RULES);
        let info: Array<_, RuleInfo> = Array::try_from(
            self.ebpf
                .map(&name)
                .ok_or_else(|| DatapathError::Missing(name.clone()))?,
        )
        .map_err(|source| DatapathError::Map {
            map: maps::RULE_INFO,
            source,
        })?;
        (0..n)
            .map(|i| {
                info.get(&i, 0)
                    .map(|r| (r.id, r.counter))
                    .map_err(|source| DatapathError::Map {
                        map: maps::RULE_INFO,
                        source,
                    })
            })
            .collect()
    }

    fn zero_rule_counters(&mut self, slots: &[u32]) -> Result<(), DatapathError> {
        if slots.is_empty() {
            return Ok(());
        }
        self.zero_counters(maps::RULE_STATS, slots)?;
        self.reset_rule_limits(slots)
    }

    /// Packets and bytes of rule counter `slot`, summed over CPUs.
    pub fn rule_counter(&self, slot: u32) -> Result<(u64, u64), DatapathError> {
        let err = |source| DatapathError::Map {
            map: maps::RULE_STATS,
            source,
        };
        let map: PerCpuArray<_, Counter> = PerCpuArray::try_from(
            self.ebpf
                .map(maps::RULE_STATS)
                .ok_or_else(|| DatapathError::Missing(maps::RULE_STATS.into()))?,
        )
        .map_err(err)?;
        let v = map.get(&slot, 0).map_err(err)?;
        Ok(v.iter()
            .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes)))
    }
}

/// The ACL controller's view of the datapath (see [`AclTables`]).
impl AclTables for Datapath {
    fn acl_config(&self) -> Result<AclConfig, DatapathError> {
        Datapath::acl_config(self)
    }

    fn write_acl_generation(
        &mut self,
        generation: usize,
        image: &Image,
        counters: &[u32],
    ) -> Result<(), DatapathError> {
        self.write_generation(generation, image, counters)
    }

    fn write_acl_delta(
        &mut self,
        generation: usize,
        image: &Image,
        delta: &Delta,
        counters: &[u32],
    ) -> Result<(), DatapathError> {
        self.write_delta(generation, image, delta, counters)
    }

    fn live_rule_slots(&self) -> Result<Vec<(u32, u32)>, DatapathError> {
        Datapath::live_rule_slots(self)
    }

    fn zero_rule_counters(&mut self, slots: &[u32]) -> Result<(), DatapathError> {
        Datapath::zero_rule_counters(self, slots)
    }

    fn set_acl_config(&mut self, cfg: AclConfig) -> Result<(), DatapathError> {
        Datapath::set_acl_config(self, cfg)
    }

    fn rule_counter(&self, slot: u32) -> Result<(u64, u64), DatapathError> {
        Datapath::rule_counter(self, slot)
    }

    fn rule_limit_stats(&self, slot: u32) -> Result<RuleLimitStats, DatapathError> {
        Datapath::rule_limit_stats(self, slot)
    }
}

impl RcuWait for Datapath {
    fn rcu_wait(&mut self) -> Result<(), DatapathError> {
        Datapath::rcu_wait(self)
    }
}

/// The rule information of `image` (`counters[i]` is the counter slot of
/// rule `i`; the per-interface default rules follow the real ones).
pub(super) fn rule_info(image: &Image, counters: &[u32]) -> Vec<RuleInfo> {
    let n = image.rule_ids.len();
    let mut info = Vec::with_capacity(n + MAX_IFACES as usize);
    for (i, v) in image.rule_verdicts.iter().enumerate() {
        info.push(RuleInfo {
            counter: counters[i],
            action: action_of(*v),
            id: image.rule_ids[i],
            flags: image.rule_extras[i].0,
            limit: image.rule_extras[i].1,
        });
    }
    for (slot, v) in image.default_verdicts.iter().enumerate() {
        info.push(RuleInfo {
            counter: MAX_RULES + slot as u32,
            action: action_of(*v),
            id: 0,
            ..RuleInfo::default()
        });
    }
    info
}

fn action_of(v: Verdict) -> u32 {
    match v {
        Verdict::Allow => Action::Pass as u32,
        Verdict::Deny => Action::Drop as u32,
    }
}

/// Views a table of `u16` classes as the four-per-element layout of the maps.
pub(super) fn quads(v: &[u16]) -> &[Quad] {
    assert_eq!(v.len() % 4, 0);
    // SAFETY: [u16; 4] has the alignment of u16 and no padding.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), v.len() / 4) }
}

/// Views the IPv4 first level as the two-per-element layout of its map.
pub(super) fn pairs(v: &[u32]) -> &[Pair] {
    assert_eq!(v.len() % 2, 0);
    // SAFETY: [u32; 2] has the alignment of u32 and no padding.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), v.len() / 2) }
}

//! Rate limits and SYN cookies (see `xdpgate_common::limit`): the per-prefix
//! bucket table sized at load time, the DDoS program that runs both,
//! installed as a tail-call target (or, when the kernel refuses it, the
//! reason limits and SYN cookies are unavailable), the SYN-cookie
//! configuration word, and the per-rule limit and cookie counters.
use std::os::fd::AsFd as _;

use aya::{maps::Array, programs::Xdp};
use xdpgate_common::{
    Counter,
    acl::RULE_COUNTERS,
    lb::PROG_DDOS,
    limit::{
        Bucket, DEFAULT_BUCKETS, LIMIT_STAT_ENTRIES, MAX_BUCKETS, MIN_BUCKETS, SyncookieConfig,
        maps as limit_maps, rule_stat, rule_stat_index,
    },
    maps,
};
use xdpgate_model::{acl::compile::Capacities, lb::LoadOptions};

use super::{DDOS_PROGRAM_NAME, Datapath, DatapathError};
use crate::sys::bpf;

/// The sizes of the maps the configuration sizes, fixed when the datapath
/// is loaded (a change needs a restart on new maps: see `PinError::Resized`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// The Maglev ring storage (`[lb] max_services`, `table_size`).
    pub rings: LoadOptions,
    /// Entries of the per-prefix bucket table (`[ddos] limit_buckets`).
    pub limit_buckets: u32,
    /// The ACL tables' capacities (`[acl]`).
    pub acl: Capacities,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            rings: LoadOptions::default(),
            limit_buckets: DEFAULT_BUCKETS,
            acl: Capacities::default(),
        }
    }
}

impl MapSizes {
    /// Whether the datapath can be loaded with these sizes.
    pub fn is_valid(&self) -> bool {
        self.rings.is_valid()
            && (MIN_BUCKETS..=MAX_BUCKETS).contains(&self.limit_buckets)
            && self.acl.is_valid()
    }
}

/// The six limit and cookie counters of one rule (`rule_stat` order), packets
/// summed over CPUs.
pub type RuleLimitStats = [Counter; rule_stat::ENTRIES as usize];

impl Datapath {
    /// Loads the DDoS program (limits and SYN cookies) and installs it in
    /// its tail-call slot. A kernel that refuses it (no `CONFIG_SYN_COOKIES`,
    /// a verifier of another mind) does not stop the datapath: limits and
    /// SYN cookies are then unavailable (the main program drops what a rule
    /// with either would have handed over), and
    /// [`Datapath::ddos_unavailable`] says why.
    pub(super) fn load_ddos(&mut self) -> Result<(), DatapathError> {
        if let Err(e) = self.tail_program(DDOS_PROGRAM_NAME)?.load() {
            let why = format!(
                "the kernel refused the DDoS program {DDOS_PROGRAM_NAME} (rate limits and SYN cookies): {e}"
            );
            log::warn!("rate limits and SYN cookies unavailable: {why}");
            // The reason travels in refusals and `status`: the end of a
            // verifier log is where it says why.
            self.ddos_unavailable = Some(tail(&why, REASON_MAX));
            return Ok(());
        }
        self.install_tail(DDOS_PROGRAM_NAME, PROG_DDOS)
    }

    /// Why limits and SYN cookies cannot be used on this kernel (`None`: the
    /// DDoS program is loaded and installed).
    pub fn ddos_unavailable(&self) -> Option<&str> {
        self.ddos_unavailable.as_deref()
    }

    /// Instructions the verifier processed for the DDoS program.
    pub fn ddos_verified_instructions(&mut self) -> Option<u32> {
        let prog: &mut Xdp = self.ebpf.program_mut(DDOS_PROGRAM_NAME)?.try_into().ok()?;
        prog.info().ok()?.verified_instruction_count()
    }

    /// The sizes the object was loaded with.
    pub fn map_sizes(&self) -> MapSizes {
        MapSizes {
            rings: self.sizes,
            limit_buckets: self.limit_buckets,
            acl: self.acl_caps,
        }
    }

    /// Replaces the SYN-cookie configuration (one map update: the next packet
    /// sees all of it).
    pub fn set_syncookie_config(&mut self, cfg: &SyncookieConfig) -> Result<(), DatapathError> {
        let name = limit_maps::SYNCOOKIE;
        let mut map: Array<_, SyncookieConfig> =
            Array::try_from(self.map_mut_ref(name)?).map_err(Self::map_err(name))?;
        map.set(0, cfg, 0).map_err(Self::map_err(name))
    }

    /// The SYN-cookie configuration in force.
    pub fn syncookie_config(&self) -> Result<SyncookieConfig, DatapathError> {
        let name = limit_maps::SYNCOOKIE;
        let map: Array<_, SyncookieConfig> =
            Array::try_from(self.map_ref(name)?).map_err(Self::map_err(name))?;
        map.get(&0, 0).map_err(Self::map_err(name))
    }

    /// Gives rule counter slots `slots` a clean slate of limits: their
    /// rule-wide buckets full again and their limit and cookie counters zero.
    /// (Per-prefix buckets of an earlier rule on the slot are not searched
    /// out of the LRU table: a bucket's state is a time, which lies at most
    /// one burst ahead, so a stale one refills within a burst's time.)
    pub(super) fn reset_rule_limits(&mut self, slots: &[u32]) -> Result<(), DatapathError> {
        let slots: Vec<u32> = slots
            .iter()
            .copied()
            .filter(|s| *s < RULE_COUNTERS)
            .collect();
        if slots.is_empty() {
            return Ok(());
        }
        let name = limit_maps::LIMIT_RULE;
        let mut buckets: Array<_, Bucket> =
            Array::try_from(self.map_mut_ref(name)?).map_err(Self::map_err(name))?;
        for s in &slots {
            buckets
                .set(*s, Bucket::default(), 0)
                .map_err(Self::map_err(name))?;
        }
        let indices: Vec<u32> = slots
            .iter()
            .flat_map(|s| (0..rule_stat::ENTRIES).map(move |k| rule_stat_index(*s, k)))
            .collect();
        self.zero_counters(limit_maps::LIMIT_STATS, &indices)
    }

    /// The limit and cookie counters of rule counter `slot`, summed over CPUs.
    pub fn rule_limit_stats(&self, slot: u32) -> Result<RuleLimitStats, DatapathError> {
        let mut out = RuleLimitStats::default();
        for (kind, c) in (0..rule_stat::ENTRIES).zip(out.iter_mut()) {
            *c = self.per_cpu_sum(limit_maps::LIMIT_STATS, rule_stat_index(slot, kind))?;
        }
        Ok(out)
    }
}

/// The limit and cookie counters of every rule counter slot, summed over
/// slots and CPUs (`xdpgate stats`), read from the pinned `XG_LIMIT_STATS`
/// with batch lookups (one `bpf(2)` call per 1,024 of its 74,112 entries).
pub fn limit_totals(map: &aya::maps::Map) -> std::io::Result<RuleLimitStats> {
    let aya::maps::Map::PerCpuArray(data) = map else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a per-CPU array",
        ));
    };
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let entries = LIMIT_STAT_ENTRIES as usize;
    let size = size_of::<Counter>();
    let bytes = bpf::read_percpu_array(data.fd().as_fd(), entries, size, cpus)?;
    let stride = bpf::elem_size(size);
    let mut out = RuleLimitStats::default();
    for (i, value) in bytes.chunks_exact(stride).enumerate() {
        let kind = (i / cpus) % rule_stat::ENTRIES as usize;
        let word = |at: usize| u64::from_ne_bytes(value[at..at + 8].try_into().expect("8 bytes"));
        out[kind].packets += word(0);
        out[kind].bytes += word(8);
    }
    Ok(out)
}

/// Longest reason kept for refusals and `status` (the log has all of it).
const REASON_MAX: usize = 2000;

/// The last `max` bytes of `s` (at a character boundary), marked as cut.
fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut at = s.len() - max;
    while !s.is_char_boundary(at) {
        at += 1;
    }
    format!("... {}", &s[at..])
}

/// The setting that sizes map `name`, when the configuration sizes it (pins
/// of another size are refused naming it: see [`super::pins`]).
pub(super) fn resizable(name: &str) -> Option<&'static str> {
    if name == maps::LB_RINGS {
        Some("[lb] max_services and table_size")
    } else if name == limit_maps::LIMIT_BUCKETS {
        Some("[ddos] limit_buckets")
    } else {
        super::acl::resizable(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_reason_keeps_its_end() {
        assert_eq!(tail("short", 10), "short");
        let long = format!("{}the end", "x".repeat(5000));
        let t = tail(&long, 100);
        assert!(t.starts_with("... ") && t.ends_with("the end"), "{t}");
        assert_eq!(t.len(), 104);
        assert_eq!(tail("ééé", 3), "... é", "cut at a character boundary");
    }
}

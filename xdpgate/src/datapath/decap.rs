//! Decapsulation: the outer destinations the decapsulator accepts
//! (`XG_DECAP_DSTS`) and its counters.
use std::collections::HashSet;

use aya::maps::{HashMap, MapData};
use xdpgate_common::{Counter, LOCAL_ADDR_BOUND, LocalAddrKey, lb::decap_stat_index, maps};

use super::{Datapath, DatapathError};

impl Datapath {
    /// Decapsulated packets on interface slot `slot` with outer family
    /// `outer` and inner family `inner` (`lb::FAMILY_*`), summed over CPUs.
    pub fn decap_counter(&self, slot: u32, outer: u8, inner: u8) -> Result<Counter, DatapathError> {
        self.per_cpu_sum(maps::DECAP_STATS, decap_stat_index(slot, outer, inner))
    }

    fn decap_map(&mut self) -> Result<HashMap<&mut MapData, LocalAddrKey, u32>, DatapathError> {
        HashMap::try_from(self.map_mut_ref(maps::DECAP_DSTS)?)
            .map_err(Self::map_err(maps::DECAP_DSTS))
    }

    /// Replaces the decapsulator's outer destinations with `keys`.
    pub fn set_decap_dsts(&mut self, keys: &[LocalAddrKey]) -> Result<(), DatapathError> {
        let want: HashSet<LocalAddrKey> = keys.iter().copied().collect();
        let mut map = self.decap_map()?;
        let have = map
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(Self::map_err(maps::DECAP_DSTS))?;
        for k in &want {
            map.insert(k, LOCAL_ADDR_BOUND, 0)
                .map_err(Self::map_err(maps::DECAP_DSTS))?;
        }
        for k in have.iter().filter(|k| !want.contains(k)) {
            let _ = map.remove(k);
        }
        Ok(())
    }

    /// The decapsulator's outer destinations.
    pub fn decap_dsts(&mut self) -> Result<Vec<LocalAddrKey>, DatapathError> {
        self.decap_map()?
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(Self::map_err(maps::DECAP_DSTS))
    }
}

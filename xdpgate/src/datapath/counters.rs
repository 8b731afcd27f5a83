//! Per-CPU counter arrays: sums over CPUs, zeroing before a slot is reused,
//! and setting a counter back to a sum it had (rollbacks).
use std::path::PathBuf;

use aya::maps::{PerCpuArray, PerCpuValues};
use xdpgate_common::Counter;

use super::{Datapath, DatapathError};

impl Datapath {
    /// Zeroes entries `indices` of the per-CPU counter array `name` on every CPU.
    pub(super) fn zero_counters(
        &mut self,
        name: &'static str,
        indices: &[u32],
    ) -> Result<(), DatapathError> {
        self.write_counters(name, indices.iter().map(|i| (*i, Counter::default())))
    }

    /// Sets entry `index` of the per-CPU counter array `name` to `value` on
    /// the first CPU and to zero on the others, so that it sums to `value`.
    pub(super) fn set_counter(
        &mut self,
        name: &'static str,
        index: u32,
        value: Counter,
    ) -> Result<(), DatapathError> {
        self.write_counters(name, [(index, value)])
    }

    /// Writes each (index, value) of `entries` into the per-CPU counter array
    /// `name`: `value` on the first CPU, zero on the others. One map update
    /// per entry.
    fn write_counters(
        &mut self,
        name: &'static str,
        entries: impl IntoIterator<Item = (u32, Counter)>,
    ) -> Result<(), DatapathError> {
        let cpus = aya::util::nr_cpus().map_err(|(what, source)| DatapathError::Io {
            what,
            path: PathBuf::new(),
            source,
        })?;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| DatapathError::Missing(format!("map {name}")))?;
        let mut map: PerCpuArray<_, Counter> = PerCpuArray::try_from(map)
            .map_err(|source| DatapathError::Map { map: name, source })?;
        for (index, value) in entries {
            let mut values = vec![Counter::default(); cpus];
            values[0] = value;
            let values = PerCpuValues::try_from(values).map_err(|source| DatapathError::Io {
                what: "per-CPU values",
                path: PathBuf::new(),
                source,
            })?;
            map.set(index, values, 0)
                .map_err(|source| DatapathError::Map { map: name, source })?;
        }
        Ok(())
    }

    pub(super) fn per_cpu_sum(
        &self,
        name: &'static str,
        index: u32,
    ) -> Result<Counter, DatapathError> {
        let map: PerCpuArray<_, Counter> =
            PerCpuArray::try_from(self.map_ref(name)?).map_err(Self::map_err(name))?;
        let values = map.get(&index, 0).map_err(Self::map_err(name))?;
        Ok(values.iter().fold(Counter::default(), |a, c| Counter {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
        }))
    }
}

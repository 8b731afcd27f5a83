//! Writing an incremental update (`xdpgate_model::acl::compile::incr::Delta`)
//! into one generation of the ACL tables: only the entries the delta names,
//! one map update each. The ACL controller writes it into the idle generation, switches,
//! waits, and writes it into the other generation (see its module
//! documentation).
use std::{io, path::PathBuf};

use aya::{Pod, maps::Array};

use xdpgate_common::{
    acl::{
        DPORT_QUADS, MAX_PHASE_GROUPS, PHASE_CELLS_MAP, PHASE_GROUPS_MAP, PhaseGroup, RULE_BITS,
        SPORT_QUADS,
    },
    maps::{self, GEN_TABLES},
};
use xdpgate_model::acl::compile::{Image, incr::Delta, phases::Phases};

/// Phase-cell elements (four cells each) written one map update each; more
/// go through the memory mapping.
const SMALL_PHASE_QUADS: usize = 4096;

use super::{
    Datapath, DatapathError,
    acl::{pairs, quads, rule_info},
};

impl Datapath {
    /// Writes `values[i]` for every `i` of `indices` into the array
    /// `{base}_{generation}`, one map update each. (Not through the memory
    /// mapping: mapping a BPF array maps all its pages at once, which for
    /// the 64 MiB IPv4 first level and the 80 MiB long-prefix table cost
    /// more than the whole update; measured with `perf`, see
    /// `docs/design/acl.md`, "Incremental updates".)
    fn write_entries<T: Pod>(
        &mut self,
        base: &'static str,
        generation: usize,
        values: &[T],
        indices: impl IntoIterator<Item = usize>,
    ) -> Result<(), DatapathError> {
        let name = format!("{base}_{generation}");
        let map = self
            .ebpf
            .map_mut(&name)
            .ok_or_else(|| DatapathError::Missing(name.clone()))?;
        let mut array: Array<_, T> =
            Array::try_from(map).map_err(|source| DatapathError::Map { map: base, source })?;
        for i in indices {
            let value = values.get(i).ok_or_else(|| DatapathError::Io {
                what: "cannot write table entries",
                path: PathBuf::from(&name),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("entry {i} is outside the compiled table ({})", values.len()),
                ),
            })?;
            array
                .set(i as u32, value, 0)
                .map_err(|source| DatapathError::Map { map: base, source })?;
        }
        Ok(())
    }

    /// Writes the entries `delta` names, with their values from `image`,
    /// into generation `generation` (which holds the tables of before the
    /// change). A rule change rewrites every rule-dimension table, the
    /// bitmap of every address class and the rule information
    /// (`counters[i]` is the counter slot of rule `i`).
    pub(super) fn write_delta(
        &mut self,
        generation: usize,
        image: &Image,
        delta: &Delta,
        counters: &[u32],
    ) -> Result<(), DatapathError> {
        let t = generation;
        let all = |v: usize| 0..v;
        match &image.phases {
            // The datapath reads the phased tables, not the bitmaps (which
            // `write_generation` leaves unwritten for such a generation).
            Some(p) => {
                if delta.phases {
                    self.write_phases(t, p)?;
                }
            }
            // The rules changed, or the generation goes from the phased
            // tables to the walk (its bitmap tables were never written).
            None if delta.rules || delta.phases => {
                if delta.phases {
                    self.write(
                        PHASE_GROUPS_MAP,
                        t,
                        MAX_PHASE_GROUPS as u32,
                        &[PhaseGroup::default()],
                    )?;
                }
                let n = image.iface_bm.len();
                self.write_entries(GEN_TABLES[0], t, &image.iface_bm, all(n))?;
                self.write_entries(GEN_TABLES[1], t, &image.proto_bm, all(256))?;
                let (s, d) = (image.sport_bm.len(), image.dport_bm.len());
                self.write_entries(GEN_TABLES[2], t, &image.sport_bm, all(s))?;
                self.write_entries(GEN_TABLES[3], t, &image.dport_bm, all(d))?;
                let classes = image.src_bm.len();
                self.write_entries(GEN_TABLES[4], t, &image.src_bm, all(classes))?;
                self.write_entries(GEN_TABLES[5], t, &image.dst_bm, all(classes))?;
            }
            None => {
                let new = || delta.new_classes.iter().map(|c| *c as usize);
                self.write_entries(GEN_TABLES[4], t, &image.src_bm, new())?;
                self.write_entries(GEN_TABLES[5], t, &image.dst_bm, new())?;
            }
        }
        if delta.rules {
            self.write(GEN_TABLES[6], t, SPORT_QUADS, quads(&image.sport_class))?;
            self.write(GEN_TABLES[7], t, DPORT_QUADS, quads(&image.dport_class))?;
        }
        let mut v4: Vec<usize> = delta.v4_tbl24.iter().map(|e| *e as usize / 2).collect();
        v4.dedup();
        self.write_entries(GEN_TABLES[8], t, pairs(&image.v4_tbl24), v4)?;
        let v6 = delta.v6_buckets.iter().map(|b| *b as usize);
        // The blocks first: a /16 entry written next may point to them.
        let blocks = delta.v6_blocks.iter().map(|b| *b as usize);
        self.write_entries(GEN_TABLES[12], t, &image.v6_blocks, blocks)?;
        self.write_entries(GEN_TABLES[9], t, &image.v6_buckets, v6)?;
        let sets = delta.lensets.iter().map(|l| *l as usize);
        self.write_entries(GEN_TABLES[10], t, &image.lensets, sets)?;
        let buckets = delta.prefix_buckets.iter().map(|b| *b as usize);
        self.write_entries(GEN_TABLES[11], t, &image.prefix_table, buckets)?;
        if delta.rules {
            self.write(maps::RULE_INFO, t, RULE_BITS, &rule_info(image, counters))?;
        }
        Ok(())
    }

    /// Writes phased tables `p` into generation `generation`: every group,
    /// and the cells in use (a small table one map update per element; a
    /// large one through the memory mapping, whose cost is the mapping of
    /// the whole 32 MiB array rather than the elements).
    fn write_phases(&mut self, generation: usize, p: &Phases) -> Result<(), DatapathError> {
        let mut cells = p.cells.clone();
        cells.resize(cells.len().div_ceil(4) * 4, 0);
        let q = quads(&cells);
        if q.len() <= SMALL_PHASE_QUADS {
            self.write_entries(PHASE_CELLS_MAP, generation, q, 0..q.len())?;
        } else {
            self.write(PHASE_CELLS_MAP, generation, self.acl_caps.phase_quads(), q)?;
        }
        self.write(
            PHASE_GROUPS_MAP,
            generation,
            MAX_PHASE_GROUPS as u32,
            &p.groups,
        )
    }
}

//! Writing an incremental update (`xdpgate_model::acl::compile::incr::Delta`)
//! into one generation of the ACL tables: only the entries the delta names,
//! through the arrays' memory mappings (memory writes, no system call per
//! entry). The ACL controller writes it into the idle generation, switches,
//! waits, and writes it into the other generation (see its module
//! documentation).
use std::{io, os::fd::AsFd as _, path::PathBuf};

use xdpgate_common::{
    MAX_IFACES,
    acl::{
        DPORT_QUADS, LENSETS, MAX_ADDR_CLASSES, MAX_PORT_CLASSES, PREFIX_BUCKETS, RULE_BITS,
        SPORT_QUADS, V4_TBL24_PAIRS,
    },
    maps::{self, GEN_TABLES},
};
use xdpgate_model::acl::compile::{Image, incr::Delta};

use super::{
    Datapath, DatapathError,
    acl::{pairs, quads, rule_info},
};
use crate::sys::bpf::{ArrayMmap, elem_size};

impl Datapath {
    /// Writes `values[i]` for every `i` of `indices` into the array
    /// `{base}_{generation}` of `entries` elements.
    fn write_entries<T: Copy>(
        &self,
        base: &'static str,
        generation: usize,
        entries: u32,
        values: &[T],
        indices: impl IntoIterator<Item = usize>,
    ) -> Result<(), DatapathError> {
        let name = format!("{base}_{generation}");
        let fail = |source| DatapathError::Io {
            what: "cannot write table entries",
            path: PathBuf::from(&name),
            source,
        };
        let fd = self.map_data(&name)?.fd().as_fd();
        let size = size_of::<T>();
        let stride = elem_size(size);
        let mut map = ArrayMmap::new(fd, entries, size).map_err(fail)?;
        let bytes = map.bytes();
        for i in indices {
            if i >= values.len() || i >= entries as usize {
                return Err(fail(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("entry {i} is outside the table ({entries} entries)"),
                )));
            }
            // SAFETY: T is plain data (Copy, repr(C) ABI types); viewing one
            // value as bytes is fine.
            let src =
                unsafe { std::slice::from_raw_parts((&raw const values[i]).cast::<u8>(), size) };
            bytes[i * stride..i * stride + size].copy_from_slice(src);
        }
        Ok(())
    }

    /// Writes the entries `delta` names, with their values from `image`,
    /// into generation `generation` (which holds the tables of before the
    /// change). A rule change rewrites every rule-dimension table, the
    /// bitmap of every address class and the rule information
    /// (`counters[i]` is the counter slot of rule `i`).
    pub(super) fn write_delta(
        &self,
        generation: usize,
        image: &Image,
        delta: &Delta,
        counters: &[u32],
    ) -> Result<(), DatapathError> {
        let t = generation;
        if delta.rules {
            let all = |v: usize| 0..v;
            self.write_entries(
                GEN_TABLES[0],
                t,
                MAX_IFACES,
                &image.iface_bm,
                all(image.iface_bm.len()),
            )?;
            self.write_entries(GEN_TABLES[1], t, 256, &image.proto_bm, all(256))?;
            let (s, d) = (image.sport_bm.len(), image.dport_bm.len());
            self.write_entries(GEN_TABLES[2], t, MAX_PORT_CLASSES, &image.sport_bm, all(s))?;
            self.write_entries(GEN_TABLES[3], t, MAX_PORT_CLASSES, &image.dport_bm, all(d))?;
            let classes = image.src_bm.len();
            self.write_entries(
                GEN_TABLES[4],
                t,
                MAX_ADDR_CLASSES,
                &image.src_bm,
                all(classes),
            )?;
            self.write_entries(
                GEN_TABLES[5],
                t,
                MAX_ADDR_CLASSES,
                &image.dst_bm,
                all(classes),
            )?;
            self.write(GEN_TABLES[6], t, SPORT_QUADS, quads(&image.sport_class))?;
            self.write(GEN_TABLES[7], t, DPORT_QUADS, quads(&image.dport_class))?;
        } else {
            let new = || delta.new_classes.iter().map(|c| *c as usize);
            self.write_entries(GEN_TABLES[4], t, MAX_ADDR_CLASSES, &image.src_bm, new())?;
            self.write_entries(GEN_TABLES[5], t, MAX_ADDR_CLASSES, &image.dst_bm, new())?;
        }
        let mut v4: Vec<usize> = delta.v4_tbl24.iter().map(|e| *e as usize / 2).collect();
        v4.dedup();
        self.write_entries(GEN_TABLES[8], t, V4_TBL24_PAIRS, pairs(&image.v4_tbl24), v4)?;
        let v6 = delta.v6_buckets.iter().map(|b| *b as usize);
        self.write_entries(GEN_TABLES[9], t, 65536, &image.v6_buckets, v6)?;
        let sets = delta.lensets.iter().map(|l| *l as usize);
        self.write_entries(GEN_TABLES[10], t, LENSETS, &image.lensets, sets)?;
        let buckets = delta.prefix_buckets.iter().map(|b| *b as usize);
        self.write_entries(
            GEN_TABLES[11],
            t,
            PREFIX_BUCKETS,
            &image.prefix_table,
            buckets,
        )?;
        if delta.rules {
            self.write(maps::RULE_INFO, t, RULE_BITS, &rule_info(image, counters))?;
        }
        Ok(())
    }
}

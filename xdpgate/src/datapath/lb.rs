//! The load balancer's maps: the steering program as the main program's
//! tail-call target, services, backends, the Maglev rings (written through
//! mmap), the outer-source configuration, and their counters.
use std::{
    os::fd::AsFd as _,
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::{
    maps::{Array, HashMap, MapError},
    programs::Xdp,
};
use xdpgate_common::{
    Counter,
    lb::{
        Backend, LbConfig, PROG_STEER, ServiceInfo, ServiceKey, ServiceStat, ring_entries,
        service_stat_index,
    },
    maps,
};
use xdpgate_model::lb::LoadOptions;

use super::{Datapath, DatapathError, STEER_PROGRAM_NAME, seam::LbMaps};
use crate::sys::bpf;

impl Datapath {
    /// Loads the steering program and installs it as the main program's
    /// tail-call target.
    pub(super) fn load_steering(&mut self) -> Result<(), DatapathError> {
        self.tail_program(STEER_PROGRAM_NAME)?
            .load()
            .map_err(DatapathError::VerifySteer)?;
        self.install_tail(STEER_PROGRAM_NAME, PROG_STEER)
    }

    /// The program `name` of the object, one the main program tail-calls.
    pub(super) fn tail_program(&mut self, name: &str) -> Result<&mut Xdp, DatapathError> {
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| DatapathError::Missing(format!("program {name}")))?
            .try_into()
            .map_err(|_| DatapathError::Missing(format!("XDP program {name}")))
    }

    /// Installs the loaded program `name` at `slot` of `XG_PROGS`.
    pub(super) fn install_tail(&mut self, name: &str, slot: u32) -> Result<(), DatapathError> {
        let fd = self
            .tail_program(name)?
            .fd()
            .map_err(DatapathError::Verify)?
            .try_clone()
            .map_err(|source| DatapathError::Io {
                what: "cannot duplicate the descriptor of",
                path: PathBuf::from(name),
                source,
            })?;
        let map = self
            .ebpf
            .map_mut(maps::PROGS)
            .ok_or_else(|| DatapathError::Missing(format!("map {}", maps::PROGS)))?;
        let mut progs: aya::maps::ProgramArray<_> = aya::maps::ProgramArray::try_from(map)
            .map_err(|source| DatapathError::Map {
                map: maps::PROGS,
                source,
            })?;
        progs
            .set(slot, &fd, 0)
            .map_err(|source| DatapathError::Map {
                map: maps::PROGS,
                source,
            })
    }

    /// Instructions the verifier processed for the steering program.
    pub fn steer_verified_instructions(&mut self) -> Option<u32> {
        let prog: &mut Xdp = self.ebpf.program_mut(STEER_PROGRAM_NAME)?.try_into().ok()?;
        prog.info().ok()?.verified_instruction_count()
    }

    /// The ring sizing the object was loaded with.
    pub fn ring_sizes(&self) -> LoadOptions {
        self.sizes
    }

    /// Sets the outer source prefixes and TTL of encapsulated packets.
    pub fn set_lb_config(&mut self, cfg: &LbConfig) -> Result<(), DatapathError> {
        let mut map: Array<_, LbConfig> = Array::try_from(self.map_mut_ref(maps::LB_CONFIG)?)
            .map_err(Self::map_err(maps::LB_CONFIG))?;
        map.set(0, cfg, 0).map_err(Self::map_err(maps::LB_CONFIG))
    }

    /// The outer source prefixes and TTL in force.
    pub fn lb_config(&self) -> Result<LbConfig, DatapathError> {
        let map: Array<_, LbConfig> = Array::try_from(self.map_ref(maps::LB_CONFIG)?)
            .map_err(Self::map_err(maps::LB_CONFIG))?;
        map.get(&0, 0).map_err(Self::map_err(maps::LB_CONFIG))
    }

    /// The routing generation (`XG_LB_ROUTE_GEN`), mapped: what moves it.
    pub fn route_generation(&self) -> Result<RouteGen, DatapathError> {
        let fd = self.map_data(maps::LB_ROUTE_GEN)?.fd().as_fd();
        let map =
            bpf::ArrayMmap::new(fd, 1, size_of::<u64>()).map_err(|source| DatapathError::Io {
                what: "cannot map",
                path: PathBuf::from(maps::LB_ROUTE_GEN),
                source,
            })?;
        Ok(RouteGen { map })
    }

    /// The ring array's memory mapping, after checking that `len` entries
    /// from index `base` lie inside it. Elements are 8 bytes apart (the
    /// kernel's layout of array maps, even of u32 values):
    /// [`bpf::elem_size`].
    pub(super) fn ring_mmap(&self, base: u32, len: usize) -> Result<bpf::ArrayMmap, DatapathError> {
        let entries = ring_entries(self.sizes.ring_services, self.sizes.ring_size);
        if base as u64 + len as u64 > entries as u64 {
            return Err(DatapathError::Missing(format!(
                "ring room for {len} entries at {base} (array of {entries})"
            )));
        }
        let fd = self.map_data(maps::LB_RINGS)?.fd().as_fd();
        bpf::ArrayMmap::new(fd, entries, 4).map_err(|source| DatapathError::Io {
            what: "cannot map",
            path: PathBuf::from(maps::LB_RINGS),
            source,
        })
    }

    /// Writes one ring half: `ring` (exactly `ring_size` entries) at index
    /// `base` of the ring array, through its memory mapping.
    pub fn write_ring(&self, base: u32, ring: &[u32]) -> Result<(), DatapathError> {
        let mut mm = self.ring_mmap(base, ring.len())?;
        let bytes = mm.bytes();
        let stride = bpf::elem_size(4);
        for (i, slot) in ring.iter().enumerate() {
            let at = (base as usize + i) * stride;
            bytes[at..at + 4].copy_from_slice(&slot.to_ne_bytes());
        }
        Ok(())
    }

    /// Reads `len` ring entries at index `base` (for checks and tests).
    pub fn read_ring(&self, base: u32, len: u32) -> Result<Vec<u32>, DatapathError> {
        let mut mm = self.ring_mmap(base, len as usize)?;
        let bytes = mm.bytes();
        let stride = bpf::elem_size(4);
        Ok((0..len as usize)
            .map(|i| {
                let at = (base as usize + i) * stride;
                u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
            })
            .collect())
    }

    /// Writes backend slot `slot`.
    pub fn set_backend(&mut self, slot: u32, backend: &Backend) -> Result<(), DatapathError> {
        let mut map: Array<_, Backend> = Array::try_from(self.map_mut_ref(maps::LB_BACKENDS)?)
            .map_err(Self::map_err(maps::LB_BACKENDS))?;
        map.set(slot, backend, 0)
            .map_err(Self::map_err(maps::LB_BACKENDS))
    }

    /// Backend slot `slot`.
    pub fn backend(&self, slot: u32) -> Result<Backend, DatapathError> {
        let map: Array<_, Backend> = Array::try_from(self.map_ref(maps::LB_BACKENDS)?)
            .map_err(Self::map_err(maps::LB_BACKENDS))?;
        map.get(&slot, 0).map_err(Self::map_err(maps::LB_BACKENDS))
    }

    /// Zeroes the counters of backend slot `slot` (before it is reused).
    pub fn reset_backend_counter(&mut self, slot: u32) -> Result<(), DatapathError> {
        self.zero_counters(maps::LB_BACKEND_STATS, &[slot])
    }

    /// Packets and bytes sent to backend slot `slot`, summed over CPUs.
    pub fn backend_counter(&self, slot: u32) -> Result<Counter, DatapathError> {
        self.per_cpu_sum(maps::LB_BACKEND_STATS, slot)
    }

    /// Service slot `slot`'s counter of `what`, summed over CPUs.
    pub fn service_counter(&self, slot: u32, what: ServiceStat) -> Result<Counter, DatapathError> {
        self.per_cpu_sum(maps::LB_SERVICE_STATS, service_stat_index(slot, what))
    }

    /// Zeroes every counter of service slot `slot` (before it is reused).
    pub fn reset_service_counters(&mut self, slot: u32) -> Result<(), DatapathError> {
        let indices = ServiceStat::ALL.map(|what| service_stat_index(slot, what));
        self.zero_counters(maps::LB_SERVICE_STATS, &indices)
    }

    /// Inserts or replaces a service entry (an atomic replace for readers).
    pub fn set_service(
        &mut self,
        key: &ServiceKey,
        info: &ServiceInfo,
    ) -> Result<(), DatapathError> {
        let mut map: HashMap<_, ServiceKey, ServiceInfo> =
            HashMap::try_from(self.map_mut_ref(maps::LB_SERVICES)?)
                .map_err(Self::map_err(maps::LB_SERVICES))?;
        map.insert(key, info, 0)
            .map_err(Self::map_err(maps::LB_SERVICES))
    }

    /// Removes a service entry (absent is fine).
    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DatapathError> {
        let mut map: HashMap<_, ServiceKey, ServiceInfo> =
            HashMap::try_from(self.map_mut_ref(maps::LB_SERVICES)?)
                .map_err(Self::map_err(maps::LB_SERVICES))?;
        match map.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(source) => Err(DatapathError::Map {
                map: maps::LB_SERVICES,
                source,
            }),
        }
    }

    /// Every service entry.
    pub fn services(&self) -> Result<Vec<(ServiceKey, ServiceInfo)>, DatapathError> {
        let map: HashMap<_, ServiceKey, ServiceInfo> =
            HashMap::try_from(self.map_ref(maps::LB_SERVICES)?)
                .map_err(Self::map_err(maps::LB_SERVICES))?;
        map.iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(Self::map_err(maps::LB_SERVICES))
    }
}

/// The routing generation of the datapath (`XG_LB_ROUTE_GEN`, one `u64`
/// mapped into the daemon): a next hop the steering program cached is used
/// only while the word is what it was when the hop was looked up, so moving
/// it makes every CPU look its next hops up again. Owns the mapping (which
/// keeps the map alive), so it can move to a task of its own.
pub struct RouteGen {
    map: bpf::ArrayMmap,
}

impl RouteGen {
    /// The word, for atomic access.
    fn word(&mut self) -> &AtomicU64 {
        let bytes = self.map.bytes();
        assert!(bytes.len() >= 8, "the mapping holds the word");
        // SAFETY: the mapping is page-aligned and at least 8 bytes long (checked);
        // the datapath reads the word with plain aligned 8-byte loads.
        unsafe { AtomicU64::from_ptr(bytes.as_mut_ptr().cast::<u64>()) }
    }

    /// The generation in force.
    pub fn get(&mut self) -> u64 {
        self.word().load(Ordering::Relaxed)
    }

    /// Moves to the next generation; returns it.
    pub fn bump(&mut self) -> u64 {
        self.word().fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }
}

/// The load-balancer controller's view of the datapath (see [`LbMaps`]).
impl LbMaps for Datapath {
    fn ring_sizes(&self) -> LoadOptions {
        Datapath::ring_sizes(self)
    }

    fn write_ring(&mut self, base: u32, ring: &[u32]) -> Result<(), DatapathError> {
        Datapath::write_ring(self, base, ring)
    }

    fn set_backend(&mut self, slot: u32, backend: &Backend) -> Result<(), DatapathError> {
        Datapath::set_backend(self, slot, backend)
    }

    fn reset_backend_counter(&mut self, slot: u32) -> Result<(), DatapathError> {
        Datapath::reset_backend_counter(self, slot)
    }

    fn reset_service_counters(&mut self, slot: u32) -> Result<(), DatapathError> {
        Datapath::reset_service_counters(self, slot)
    }

    fn set_service(&mut self, key: &ServiceKey, info: &ServiceInfo) -> Result<(), DatapathError> {
        Datapath::set_service(self, key, info)
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DatapathError> {
        Datapath::remove_service(self, key)
    }

    fn service_counter(&self, slot: u32, what: ServiceStat) -> Result<Counter, DatapathError> {
        Datapath::service_counter(self, slot, what)
    }

    fn backend_counter(&self, slot: u32) -> Result<Counter, DatapathError> {
        Datapath::backend_counter(self, slot)
    }

    fn set_service_counter(
        &mut self,
        slot: u32,
        what: ServiceStat,
        value: Counter,
    ) -> Result<(), DatapathError> {
        self.set_counter(
            maps::LB_SERVICE_STATS,
            service_stat_index(slot, what),
            value,
        )
    }

    fn set_backend_counter(&mut self, slot: u32, value: Counter) -> Result<(), DatapathError> {
        self.set_counter(maps::LB_BACKEND_STATS, slot, value)
    }

    fn live_services(&self) -> Result<Vec<(ServiceKey, ServiceInfo)>, DatapathError> {
        Datapath::services(self)
    }

    fn read_ring(&self, base: u32, len: u32) -> Result<Vec<u32>, DatapathError> {
        Datapath::read_ring(self, base, len)
    }

    fn backend(&self, slot: u32) -> Result<Backend, DatapathError> {
        Datapath::backend(self, slot)
    }
}

//! An in-memory datapath and kernel for unit tests. [`FakeDatapath`]
//! implements every datapath trait of [`seam`](super::seam) over plain
//! collections; [`FakeKernel`] implements [`AddrKernel`](super::seam::AddrKernel) over a table of
//! interfaces and their addresses. Neither needs root or a kernel with BPF.
//!
//! Failure injection: any operation can be made to fail, by position among
//! all the datapath's steps ([`FakeDatapath::fail_step`]: "the 5th write or
//! wait from now fails", which lets a test fail a change at every step in
//! turn) or by operation ([`FakeDatapath::fail_call`]: "the 2nd
//! `set_service` from now fails"); on the kernel side, the n-th address add
//! or delete from now is refused or gets no answer ([`FakeKernel::fail_add`],
//! [`FakeKernel::fail_delete`]), and address dumps can fail
//! ([`FakeKernel::fail_next_dump`]). A failed write changes nothing where the
//! real map update is atomic, and changes part of its target where the real
//! operation is several updates (a generation of ACL tables, a ring, a run of
//! counters), so a rollback cannot rely on a failed write having done
//! nothing.
//!
//! Both keep a log of the steps they took ([`FakeDatapath::log`],
//! [`FakeKernel::log`]), so tests can check the order of the writes.
use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    io,
    path::PathBuf,
};

use xdpgate_common::{
    Counter, IfaceConfig, LocalAddrKey,
    acl::AclConfig,
    lb::{Backend, ServiceInfo, ServiceKey, ServiceStat, ring_entries, service_stat_index},
    maps,
};
use xdpgate_model::{
    acl::{
        Verdict,
        compile::{Image, incr::Delta},
    },
    lb::LoadOptions,
};

mod kernel;

pub(crate) use kernel::{FakeKernel, KernelFailure};

use super::{
    DatapathError, RuleLimitStats,
    seam::{AclTables, IfaceTable, LbMaps, LocalAddrs, RcuWait},
};

/// An operation of the fake datapath, as failure injection and the log name
/// it. Writes and waits are *steps*; reads are not (they can still be failed
/// by [`FakeDatapath::fail_call`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Op {
    /// [`AclTables::acl_config`] (read).
    AclConfig,
    /// [`AclTables::write_acl_generation`].
    WriteAclGeneration,
    /// [`AclTables::write_acl_delta`].
    WriteAclDelta,
    /// [`AclTables::zero_rule_counters`].
    ZeroRuleCounters,
    /// [`AclTables::set_acl_config`].
    SetAclConfig,
    /// [`AclTables::rule_counter`] (read).
    RuleCounter,
    /// [`RcuWait::rcu_wait`].
    RcuWait,
    /// [`IfaceTable::iface_config`] (read).
    IfaceConfig,
    /// [`IfaceTable::set_iface_flag`].
    SetIfaceFlag,
    /// [`LbMaps::write_ring`].
    WriteRing,
    /// [`LbMaps::set_backend`].
    SetBackend,
    /// [`LbMaps::reset_backend_counter`].
    ResetBackendCounter,
    /// [`LbMaps::reset_service_counters`].
    ResetServiceCounters,
    /// [`LbMaps::set_service`].
    SetService,
    /// [`LbMaps::remove_service`].
    RemoveService,
    /// [`LbMaps::service_counter`] (read).
    ServiceCounter,
    /// [`LbMaps::backend_counter`] (read).
    BackendCounter,
    /// [`LbMaps::set_service_counter`].
    SetServiceCounter,
    /// [`LbMaps::set_backend_counter`].
    SetBackendCounter,
    /// [`LocalAddrs::insert_local_addrs`].
    InsertLocalAddrs,
    /// [`LocalAddrs::remove_local_addrs`].
    RemoveLocalAddrs,
}

impl Op {
    /// Whether the operation is a step (a write or a wait).
    fn is_step(self) -> bool {
        !matches!(
            self,
            Op::AclConfig
                | Op::RuleCounter
                | Op::IfaceConfig
                | Op::ServiceCounter
                | Op::BackendCounter
        )
    }

    /// The map the operation touches.
    fn map(self) -> &'static str {
        match self {
            Op::AclConfig | Op::SetAclConfig => maps::ACL_CONFIG,
            Op::WriteAclGeneration | Op::WriteAclDelta => maps::RULE_INFO,
            Op::ZeroRuleCounters | Op::RuleCounter => maps::RULE_STATS,
            Op::RcuWait => "the RCU barrier",
            Op::IfaceConfig | Op::SetIfaceFlag => maps::IFACES,
            Op::WriteRing => maps::LB_RINGS,
            Op::SetBackend => maps::LB_BACKENDS,
            Op::ResetBackendCounter | Op::BackendCounter | Op::SetBackendCounter => {
                maps::LB_BACKEND_STATS
            }
            Op::ResetServiceCounters | Op::ServiceCounter | Op::SetServiceCounter => {
                maps::LB_SERVICE_STATS
            }
            Op::SetService | Op::RemoveService => maps::LB_SERVICES,
            Op::InsertLocalAddrs | Op::RemoveLocalAddrs => maps::LOCAL_ADDRS,
        }
    }
}

/// Which calls fail, and the log of steps.
#[derive(Clone, Debug, Default)]
struct Injector {
    /// Steps taken so far.
    steps: usize,
    /// Calls so far, per operation.
    calls: BTreeMap<Op, usize>,
    /// Absolute step numbers that fail.
    fail_steps: BTreeSet<usize>,
    /// Absolute (operation, call number) pairs that fail.
    fail_calls: BTreeSet<(Op, usize)>,
    /// Every step taken, failed or not.
    log: Vec<Op>,
}

impl Injector {
    /// Counts a call of `op`; `Err` when it is to fail.
    fn call(&mut self, op: Op) -> Result<(), DatapathError> {
        let n = self.calls.entry(op).or_default();
        let mut fail = self.fail_calls.remove(&(op, *n));
        *n += 1;
        if op.is_step() {
            fail |= self.fail_steps.remove(&self.steps);
            self.steps += 1;
            self.log.push(op);
        }
        if fail { Err(injected(op)) } else { Ok(()) }
    }
}

/// The error of an injected failure.
pub(crate) fn injected(op: Op) -> DatapathError {
    DatapathError::Io {
        what: "injected failure of",
        path: PathBuf::from(format!("{op:?}")),
        source: io::Error::other(format!("fake datapath, map {}", op.map())),
    }
}

/// One generation of the ACL tables as the fake keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum AclGeneration {
    /// Never written.
    #[default]
    Empty,
    /// A write failed halfway.
    Torn,
    /// Written completely.
    Written {
        /// Rule ids in evaluation order.
        rule_ids: Vec<u32>,
        /// Their verdicts.
        verdicts: Vec<Verdict>,
        /// Default verdict per interface slot.
        defaults: Vec<Verdict>,
        /// Counter slot per rule.
        counters: Vec<u32>,
    },
}

/// The fake's maps. Fields are open to tests (to set up a state or to
/// simulate traffic on the counters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FakeMaps {
    /// `XG_IFACES`.
    pub(crate) ifaces: BTreeMap<u32, IfaceConfig>,
    /// `XG_LOCAL_ADDRS`.
    pub(crate) local_addrs: HashSet<LocalAddrKey>,
    /// `XG_ACL_CONFIG`.
    pub(crate) acl_config: AclConfig,
    /// The two generations of ACL tables.
    pub(crate) acl_generations: [AclGeneration; 2],
    /// `XG_RULE_STATS`: (packets, bytes) per slot (absent: zero).
    pub(crate) rule_counters: BTreeMap<u32, (u64, u64)>,
    /// `XG_LIMIT_STATS`, and whether `XG_LIMIT_RULE` was spent (absent: zero, full).
    pub(crate) rule_limits: BTreeMap<u32, (RuleLimitStats, bool)>,
    /// `XG_LB_SERVICES`.
    pub(crate) services: HashMap<ServiceKey, ServiceInfo>,
    /// `XG_LB_RINGS`.
    pub(crate) rings: Vec<u32>,
    /// `XG_LB_BACKENDS` (absent: never written).
    pub(crate) backends: BTreeMap<u32, Backend>,
    /// `XG_LB_SERVICE_STATS` by index (absent: zero).
    pub(crate) service_counters: BTreeMap<u32, Counter>,
    /// `XG_LB_BACKEND_STATS` by slot (absent: zero).
    pub(crate) backend_counters: BTreeMap<u32, Counter>,
}

/// What packets can see of the load balancer: every service entry with the
/// ring it points at and the backends that ring names, and the interfaces'
/// flags. Ring halves no entry points at and backend slots no live ring
/// names are left out: the datapath never reads them, so a change may use
/// them as scratch space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LbView {
    /// By (family, address, port, protocol) of the service key.
    pub(crate) services: BTreeMap<(u8, [u8; 16], u16, u8), ServiceView>,
    /// Flags per registered interface.
    pub(crate) iface_flags: BTreeMap<u32, u32>,
}

/// One service entry as packets see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceView {
    /// The entry.
    pub(crate) info: ServiceInfo,
    /// The `ring_size` entries at `ring_base`.
    pub(crate) ring: Vec<u32>,
    /// The backend of every slot the ring names.
    pub(crate) backends: BTreeMap<u32, Option<Backend>>,
}

/// The in-memory datapath. See the module documentation.
#[derive(Clone, Debug)]
pub(crate) struct FakeDatapath {
    maps: FakeMaps,
    sizes: LoadOptions,
    injector: RefCell<Injector>,
}

impl Default for FakeDatapath {
    /// An empty datapath with ring storage for one service of 13 entries.
    fn default() -> Self {
        FakeDatapath::new(LoadOptions {
            ring_services: 1,
            ring_size: 13,
        })
    }
}

impl FakeDatapath {
    /// An empty datapath with ring storage of `sizes`.
    pub(crate) fn new(sizes: LoadOptions) -> Self {
        FakeDatapath {
            maps: FakeMaps {
                rings: vec![0; ring_entries(sizes.ring_services, sizes.ring_size) as usize],
                ..FakeMaps::default()
            },
            sizes,
            injector: RefCell::default(),
        }
    }

    /// Registers interface `ifindex` under counter slot `slot`, no flags.
    pub(crate) fn register(&mut self, ifindex: u32, slot: u32) {
        self.maps
            .ifaces
            .insert(ifindex, IfaceConfig { slot, flags: 0 });
    }

    /// The maps.
    pub(crate) fn maps(&self) -> &FakeMaps {
        &self.maps
    }

    /// The maps, to change them behind the controllers' back.
    pub(crate) fn maps_mut(&mut self) -> &mut FakeMaps {
        &mut self.maps
    }

    /// Makes the `n`-th step from now (0: the next one) fail.
    pub(crate) fn fail_step(&mut self, n: usize) {
        let inj = self.injector.get_mut();
        inj.fail_steps.insert(inj.steps + n);
    }

    /// Makes the `n`-th call of `op` from now (0: the next one) fail.
    pub(crate) fn fail_call(&mut self, op: Op, n: usize) {
        let inj = self.injector.get_mut();
        let done = inj.calls.get(&op).copied().unwrap_or(0);
        inj.fail_calls.insert((op, done + n));
    }

    /// Makes the next call of `op` fail.
    pub(crate) fn fail_next(&mut self, op: Op) {
        self.fail_call(op, 0);
    }

    /// Steps taken so far.
    pub(crate) fn steps(&self) -> usize {
        self.injector.borrow().steps
    }

    /// Every step taken so far, in order (failed ones included).
    pub(crate) fn log(&self) -> Vec<Op> {
        self.injector.borrow().log.clone()
    }

    /// Whether failures were injected that did not happen yet.
    pub(crate) fn failures_pending(&self) -> bool {
        let inj = self.injector.borrow();
        !inj.fail_steps.is_empty() || !inj.fail_calls.is_empty()
    }

    /// The live ACL: the configuration word and the generation it selects
    /// (`Empty` while no generation was installed).
    pub(crate) fn acl_view(&self) -> (AclConfig, AclGeneration) {
        let cfg = self.maps.acl_config;
        let live = if cfg.enabled() {
            self.maps.acl_generations[cfg.generation()].clone()
        } else {
            AclGeneration::Empty
        };
        (cfg, live)
    }

    /// What packets can see of the load balancer (see [`LbView`]).
    pub(crate) fn lb_view(&self) -> LbView {
        let services = self
            .maps
            .services
            .iter()
            .map(|(k, info)| {
                let at = info.ring_base as usize;
                let ring = self.maps.rings[at..at + info.ring_size as usize].to_vec();
                let backends = ring
                    .iter()
                    .map(|slot| (*slot, self.maps.backends.get(slot).copied()))
                    .collect();
                (
                    (k.family, k.addr, k.port, k.proto),
                    ServiceView {
                        info: *info,
                        ring,
                        backends,
                    },
                )
            })
            .collect();
        let iface_flags = self
            .maps
            .ifaces
            .iter()
            .map(|(i, c)| (*i, c.flags))
            .collect();
        LbView {
            services,
            iface_flags,
        }
    }

    fn call(&self, op: Op) -> Result<(), DatapathError> {
        self.injector.borrow_mut().call(op)
    }
}

impl RcuWait for FakeDatapath {
    fn rcu_wait(&mut self) -> Result<(), DatapathError> {
        self.call(Op::RcuWait)
    }
}

impl IfaceTable for FakeDatapath {
    fn iface_config(&mut self, ifindex: u32) -> Result<Option<IfaceConfig>, DatapathError> {
        self.call(Op::IfaceConfig)?;
        Ok(self.maps.ifaces.get(&ifindex).copied())
    }

    fn set_iface_flag(&mut self, ifindex: u32, flag: u32, on: bool) -> Result<(), DatapathError> {
        self.call(Op::SetIfaceFlag)?;
        let Some(cfg) = self.maps.ifaces.get_mut(&ifindex) else {
            return Err(DatapathError::Missing(format!(
                "registered interface with ifindex {ifindex}"
            )));
        };
        if on {
            cfg.flags |= flag;
        } else {
            cfg.flags &= !flag;
        }
        Ok(())
    }
}

impl AclTables for FakeDatapath {
    fn acl_config(&self) -> Result<AclConfig, DatapathError> {
        self.call(Op::AclConfig)?;
        Ok(self.maps.acl_config)
    }

    fn write_acl_generation(
        &mut self,
        generation: usize,
        image: &Image,
        counters: &[u32],
    ) -> Result<(), DatapathError> {
        if let Err(e) = self.call(Op::WriteAclGeneration) {
            self.maps.acl_generations[generation] = AclGeneration::Torn;
            return Err(e);
        }
        self.maps.acl_generations[generation] = AclGeneration::Written {
            rule_ids: image.rule_ids.clone(),
            verdicts: image.rule_verdicts.clone(),
            defaults: image.default_verdicts.clone(),
            counters: counters.to_vec(),
        };
        Ok(())
    }

    fn write_acl_delta(
        &mut self,
        generation: usize,
        image: &Image,
        _delta: &Delta,
        counters: &[u32],
    ) -> Result<(), DatapathError> {
        if let Err(e) = self.call(Op::WriteAclDelta) {
            self.maps.acl_generations[generation] = AclGeneration::Torn;
            return Err(e);
        }
        // A delta completes only a generation that holds whole tables.
        let table = &mut self.maps.acl_generations[generation];
        if matches!(table, AclGeneration::Written { .. }) {
            *table = AclGeneration::Written {
                rule_ids: image.rule_ids.clone(),
                verdicts: image.rule_verdicts.clone(),
                defaults: image.default_verdicts.clone(),
                counters: counters.to_vec(),
            };
        } else {
            *table = AclGeneration::Torn;
        }
        Ok(())
    }

    fn live_rule_slots(&self) -> Result<Vec<(u32, u32)>, DatapathError> {
        let cfg = self.maps.acl_config;
        if !cfg.enabled() {
            return Ok(Vec::new());
        }
        Ok(match &self.maps.acl_generations[cfg.generation()] {
            AclGeneration::Written {
                rule_ids, counters, ..
            } => rule_ids
                .iter()
                .copied()
                .zip(counters.iter().copied())
                .collect(),
            _ => Vec::new(),
        })
    }

    fn zero_rule_counters(&mut self, slots: &[u32]) -> Result<(), DatapathError> {
        let result = self.call(Op::ZeroRuleCounters);
        // A failure stops halfway.
        let done = if result.is_ok() {
            slots.len()
        } else {
            slots.len() / 2
        };
        for s in &slots[..done] {
            self.maps.rule_counters.remove(s);
            self.maps.rule_limits.remove(s);
        }
        result
    }

    fn set_acl_config(&mut self, cfg: AclConfig) -> Result<(), DatapathError> {
        self.call(Op::SetAclConfig)?;
        self.maps.acl_config = cfg;
        Ok(())
    }

    fn rule_counter(&self, slot: u32) -> Result<(u64, u64), DatapathError> {
        self.call(Op::RuleCounter)?;
        Ok(self
            .maps
            .rule_counters
            .get(&slot)
            .copied()
            .unwrap_or_default())
    }

    fn rule_limit_stats(&self, slot: u32) -> Result<RuleLimitStats, DatapathError> {
        self.call(Op::RuleCounter)?;
        Ok(self
            .maps
            .rule_limits
            .get(&slot)
            .map_or_else(Default::default, |l| l.0))
    }
}

impl LbMaps for FakeDatapath {
    fn ring_sizes(&self) -> LoadOptions {
        self.sizes
    }

    fn write_ring(&mut self, base: u32, ring: &[u32]) -> Result<(), DatapathError> {
        let result = self.call(Op::WriteRing);
        let at = base as usize;
        if at + ring.len() > self.maps.rings.len() {
            return Err(DatapathError::Missing(format!(
                "ring room for {} entries at {base}",
                ring.len()
            )));
        }
        // A failure stops halfway.
        let done = if result.is_ok() {
            ring.len()
        } else {
            ring.len() / 2
        };
        self.maps.rings[at..at + done].copy_from_slice(&ring[..done]);
        result
    }

    fn set_backend(&mut self, slot: u32, backend: &Backend) -> Result<(), DatapathError> {
        self.call(Op::SetBackend)?;
        self.maps.backends.insert(slot, *backend);
        Ok(())
    }

    fn reset_backend_counter(&mut self, slot: u32) -> Result<(), DatapathError> {
        self.call(Op::ResetBackendCounter)?;
        self.maps.backend_counters.remove(&slot);
        Ok(())
    }

    fn reset_service_counters(&mut self, slot: u32) -> Result<(), DatapathError> {
        let result = self.call(Op::ResetServiceCounters);
        // A failure stops after the first counter.
        let done = if result.is_ok() {
            ServiceStat::ALL.len()
        } else {
            1
        };
        for what in &ServiceStat::ALL[..done] {
            self.maps
                .service_counters
                .remove(&service_stat_index(slot, *what));
        }
        result
    }

    fn set_service(&mut self, key: &ServiceKey, info: &ServiceInfo) -> Result<(), DatapathError> {
        self.call(Op::SetService)?;
        self.maps.services.insert(*key, *info);
        Ok(())
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DatapathError> {
        self.call(Op::RemoveService)?;
        self.maps.services.remove(key);
        Ok(())
    }

    fn service_counter(&self, slot: u32, what: ServiceStat) -> Result<Counter, DatapathError> {
        self.call(Op::ServiceCounter)?;
        Ok(self
            .maps
            .service_counters
            .get(&service_stat_index(slot, what))
            .copied()
            .unwrap_or_default())
    }

    fn backend_counter(&self, slot: u32) -> Result<Counter, DatapathError> {
        self.call(Op::BackendCounter)?;
        Ok(self
            .maps
            .backend_counters
            .get(&slot)
            .copied()
            .unwrap_or_default())
    }

    fn set_service_counter(
        &mut self,
        slot: u32,
        what: ServiceStat,
        value: Counter,
    ) -> Result<(), DatapathError> {
        self.call(Op::SetServiceCounter)?;
        self.maps
            .service_counters
            .insert(service_stat_index(slot, what), value);
        Ok(())
    }

    fn set_backend_counter(&mut self, slot: u32, value: Counter) -> Result<(), DatapathError> {
        self.call(Op::SetBackendCounter)?;
        self.maps.backend_counters.insert(slot, value);
        Ok(())
    }

    fn live_services(&self) -> Result<Vec<(ServiceKey, ServiceInfo)>, DatapathError> {
        Ok(self.maps.services.iter().map(|(k, i)| (*k, *i)).collect())
    }

    fn read_ring(&self, base: u32, len: u32) -> Result<Vec<u32>, DatapathError> {
        let at = base as usize;
        self.maps
            .rings
            .get(at..at + len as usize)
            .map(<[u32]>::to_vec)
            .ok_or_else(|| DatapathError::Missing(format!("ring entries {at}+{len}")))
    }

    fn backend(&self, slot: u32) -> Result<Backend, DatapathError> {
        Ok(self.maps.backends.get(&slot).copied().unwrap_or_default())
    }
}

impl LocalAddrs for FakeDatapath {
    fn insert_local_addrs(&mut self, keys: &[LocalAddrKey]) -> Result<(), DatapathError> {
        // All or nothing, as the real map's own undo makes it.
        self.call(Op::InsertLocalAddrs)?;
        self.maps.local_addrs.extend(keys.iter().copied());
        Ok(())
    }

    fn remove_local_addrs(&mut self, keys: &[LocalAddrKey]) -> Result<(), DatapathError> {
        self.call(Op::RemoveLocalAddrs)?;
        for k in keys {
            self.maps.local_addrs.remove(k);
        }
        Ok(())
    }

    fn local_addr_keys(&mut self) -> Result<Vec<LocalAddrKey>, DatapathError> {
        Ok(self.maps.local_addrs.iter().copied().collect())
    }
}

//! The load balancer's controller: installs services (`xdpgate_model::lb`)
//! in the datapath, with their Maglev rings, and keeps them in step with the
//! health of each backend.
//!
//! The ring of a service is built by [`maglev::build`] over its backends that
//! are healthy and have a weight above zero; it is written into the idle half
//! of the service's ring storage and then the service's map entry is
//! replaced, so packets see the old ring or the new one, never a mix.
//!
//! Changes ([`LbController::apply`]) are validated as a whole first; then,
//! in this order: removed services lose their entry, and after a wait (no
//! packet can still be reading them) their slots are free; every new or
//! changed service gets its new backends (slot, then zeroed counter), its
//! ring in the idle half, then its entry, and backends it dropped are free
//! after a wait; last the interfaces' `IFACE_LB` flag follows whether any
//! service exists. Slots freed by a change may be reused later in the same
//! change.
//!
//! All or nothing: if a step fails, the controller goes back to the state it
//! had (a copy taken first) and puts back everything packets could see of
//! it, from the journal of what the change wrote: entries the change set or
//! removed are set back (or removed, for services that did not exist); a
//! service whose ring, backends or counters the change overwrote by reusing
//! its freed slots is first taken out, and after a wait gets its counters,
//! backends, ring and then its entry back; the interfaces' flags are set
//! back. Counters of reused slots are read before they are zeroed, for that.
//! Ring halves and backend slots no live entry points at are scratch space
//! and are not restored. If restoring fails too, both errors are reported
//! ([`LbError::Rollback`]).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use thiserror::Error;
use xdpgate_common::{
    Counter, IFACE_LB,
    lb::{
        Backend, FlowHash, MAX_BACKENDS, SERVICE_ENCAP, SERVICE_L2DSR, ServiceInfo, ServiceKey,
        ServiceStat, ring_base,
    },
};
use xdpgate_model::lb::{
    BackendSpec, BackendStatus, Forward, ParseError, ServiceId, ServiceSpec, ServiceStatus,
    addr_key, addr_of,
    health::{CheckSpec, TargetKey},
    maglev::{self, Member},
    normalise, packet_hash_of, service_id, service_key, validate,
};

use crate::datapath::{DatapathError, LbMaps};

/// Errors of the load balancer's control plane.
#[derive(Debug, Error)]
pub enum LbError {
    /// A service, backend or option could not be parsed.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The services are invalid as a whole; every problem is listed.
    #[error("invalid load-balancer configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
    /// The service named does not exist.
    #[error("no service {0}")]
    NoService(String),
    /// The datapath refused an update; the previous state was restored.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// A change failed, and restoring the previous services failed too: the
    /// datapath may hold a mix of both.
    #[error("{cause}; restoring the previous services failed too: {}",
        .undo.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Rollback {
        /// Why the change failed.
        cause: Box<LbError>,
        /// What failed while restoring.
        undo: Vec<DatapathError>,
    },
}

/// What the controller keeps per installed service.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Installed {
    spec: ServiceSpec,
    slot: u32,
    /// Live ring half (0 or 1).
    half: u32,
    /// Backend slot per address.
    backends: BTreeMap<IpAddr, u32>,
    /// Backends health checks consider down.
    down: BTreeSet<IpAddr>,
    /// The ring last written (backend slots), shared with copies of the
    /// controller.
    ring: Arc<[u32]>,
    /// The entry last written (what packets see).
    info: ServiceInfo,
    /// Its flow hash: kept across every rewrite of the entry, so its flows
    /// stay on their backends; changed only by
    /// [`LbController::set_flow_hash`].
    hash: FlowHash,
}

/// One write of a change, recorded before it is made (a failed write may
/// have happened in part).
#[derive(Debug)]
enum Wrote {
    /// A service entry set or removed.
    Entry(ServiceKey),
    /// `len` ring entries from `base`.
    Ring { base: u32, len: usize },
    /// A backend slot.
    Backend(u32),
    /// The interface's flags.
    Flag(u32),
}

/// What a change wrote, to put the previous services back if it fails.
#[derive(Debug, Default)]
struct Journal {
    /// Service slots in use when the change began.
    live_services: BTreeSet<u32>,
    /// Backend slots in use when the change began.
    live_backends: BTreeSet<u32>,
    /// The writes, in order.
    wrote: Vec<Wrote>,
    /// Counters of service slots in use before that the change zeroed, with
    /// their values then.
    service_counters: BTreeMap<u32, Vec<(ServiceStat, Counter)>>,
    /// The same for backend slots.
    backend_counters: BTreeMap<u32, Counter>,
}

impl Journal {
    /// A journal for a change of the services of `ctl`.
    fn of(ctl: &LbController) -> Self {
        Journal {
            live_services: ctl.services.values().map(|i| i.slot).collect(),
            live_backends: ctl
                .services
                .values()
                .flat_map(|i| i.backends.values().copied())
                .collect(),
            ..Journal::default()
        }
    }

    /// Backend slots the change wrote.
    fn backends_written(&self) -> HashSet<u32> {
        self.wrote
            .iter()
            .filter_map(|w| match w {
                Wrote::Backend(slot) => Some(*slot),
                _ => None,
            })
            .collect()
    }

    /// Whether the change overwrote part of what `inst` (a service in force
    /// before it) shows packets: its ring, a backend, a counter.
    fn clobbered(&self, inst: &Installed, backends_written: &HashSet<u32>) -> bool {
        let live = u64::from(inst.info.ring_base);
        let live_end = live + u64::from(inst.info.ring_size);
        self.service_counters.contains_key(&inst.slot)
            || inst
                .backends
                .values()
                .any(|s| backends_written.contains(s) || self.backend_counters.contains_key(s))
            || self.wrote.iter().any(|w| match w {
                Wrote::Ring { base, len } => {
                    let base = u64::from(*base);
                    base < live_end && live < base + *len as u64
                }
                _ => false,
            })
    }

    /// Puts back what packets saw of `before` (the controller as it was when
    /// the change began). Returns what failed.
    fn restore<D: LbMaps + ?Sized>(&self, dp: &mut D, before: &LbController) -> Vec<DatapathError> {
        let mut problems = Vec::new();
        let backends_written = self.backends_written();
        let by_key: HashMap<ServiceKey, &Installed> = before
            .services
            .values()
            .map(|i| (service_key(&i.spec.id), i))
            .collect();
        let clobbered: Vec<&Installed> = before
            .services
            .values()
            .filter(|i| self.clobbered(i, &backends_written))
            .collect();
        let clobbered_slots: HashSet<u32> = clobbered.iter().map(|i| i.slot).collect();

        // Entries: back to what they were, except those of services whose
        // ring, backends or counters were overwritten: those are taken out
        // (with entries of services that did not exist).
        let mut done = HashSet::new();
        for w in self.wrote.iter().rev() {
            let Wrote::Entry(key) = w else {
                continue;
            };
            if !done.insert(*key) {
                continue;
            }
            let result = match by_key.get(key) {
                Some(inst) if !clobbered_slots.contains(&inst.slot) => {
                    dp.set_service(key, &inst.info)
                }
                _ => dp.remove_service(key),
            };
            problems.extend(result.err());
        }
        // After a wait no packet uses what the failed change showed them, so
        // its slots are free again and the overwritten ones can be rewritten.
        let waited = done.is_empty() || {
            let r = dp.rcu_wait();
            let ok = r.is_ok();
            problems.extend(r.err());
            ok
        };
        if waited {
            for inst in &clobbered {
                problems.extend(self.rewrite(dp, inst, &backends_written).err());
            }
        }
        let on = !before.services.is_empty();
        let mut flags = BTreeSet::new();
        for w in &self.wrote {
            if let Wrote::Flag(ifindex) = w
                && flags.insert(*ifindex)
            {
                problems.extend(dp.set_iface_flag(*ifindex, IFACE_LB, on).err());
            }
        }
        problems
    }

    /// Rewrites what the change overwrote of `inst` (whose entry is out):
    /// counters, backends, ring, then its entry.
    fn rewrite<D: LbMaps + ?Sized>(
        &self,
        dp: &mut D,
        inst: &Installed,
        backends_written: &HashSet<u32>,
    ) -> Result<(), DatapathError> {
        if let Some(saved) = self.service_counters.get(&inst.slot) {
            for (what, c) in saved {
                dp.set_service_counter(inst.slot, *what, *c)?;
            }
        }
        for (addr, slot) in &inst.backends {
            if backends_written.contains(slot) {
                dp.set_backend(*slot, &backend_entry(*addr))?;
            }
            if let Some(c) = self.backend_counters.get(slot) {
                dp.set_backend_counter(*slot, *c)?;
            }
        }
        dp.write_ring(
            inst.info.ring_base,
            &inst.ring[..inst.info.ring_size as usize],
        )?;
        dp.set_service(&service_key(&inst.spec.id), &inst.info)
    }
}

/// The datapath's entry of backend `addr`.
fn backend_entry(addr: IpAddr) -> Backend {
    let (addr, family) = addr_key(addr);
    Backend {
        addr,
        family: family as u32,
        flags: 0,
    }
}

/// Owns the services installed in the datapath.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbController {
    services: BTreeMap<ServiceId, Installed>,
    free_services: BTreeSet<u32>,
    free_backends: VecDeque<u32>,
    next_backend: u32,
    ifindexes: Vec<u32>,
    /// The flow hash new services get.
    hash: FlowHash,
}

impl LbController {
    /// A controller with no services, for a datapath registered on
    /// `ifindexes` (they get `IFACE_LB` while any service exists).
    pub fn new<D: LbMaps + ?Sized>(dp: &D, ifindexes: Vec<u32>) -> Self {
        LbController {
            services: BTreeMap::new(),
            free_services: (0..dp.ring_sizes().ring_services).collect(),
            free_backends: VecDeque::new(),
            next_backend: 1,
            ifindexes,
            hash: FlowHash::default(),
        }
    }

    /// Takes over the services of a running datapath an earlier daemon left,
    /// before the first [`LbController::apply`]; `previous` are the specs that
    /// daemon saved. Each live entry becomes an installed service as packets
    /// see it: its slot, live ring half and ring, and the backend slots its
    /// ring names. Its spec is `previous`'s of the same id when the ring names
    /// only that spec's backends, else one made from the entry (which the next
    /// apply replaces or removes). The next apply then changes only what
    /// differs, all or nothing as always: unchanged services are not written
    /// (their counters continue), changed ones keep their slot and get their
    /// new ring in the idle half, and entries no longer configured are removed.
    ///
    /// Health starts from "up", as at any start (the monitor's targets start
    /// up): a service whose live ring leaves out a weighted backend (one the
    /// earlier daemon had seen down) gets a ring with it, in the idle half,
    /// and its checks take it out again if it is still down. Backend slots no
    /// live ring names are free; configured backends without a slot get one
    /// no ring names yet. Each service keeps the flow hash its entry names
    /// (an entry written before `SERVICE_HASH_FAST` existed: MurmurHash3),
    /// so an upgrade in place moves no flow; services added later get the
    /// fast hash, and [`LbController::set_flow_hash`] switches the rest.
    /// Returns how many services were taken over.
    pub fn adopt<D: LbMaps + ?Sized>(
        &mut self,
        dp: &mut D,
        previous: &[ServiceSpec],
    ) -> Result<usize, LbError> {
        let sizes = dp.ring_sizes();
        let previous: HashMap<ServiceId, ServiceSpec> =
            previous.iter().map(|s| (s.id, normalise(s))).collect();
        let corrupt = |why: String| {
            LbError::Invalid(vec![format!(
                "the running datapath's services cannot be taken over: {why}"
            )])
        };
        let mut adopted = Vec::new();
        let mut named = BTreeSet::new();
        for (key, info) in dp.live_services()? {
            let id = service_id(&key).ok_or_else(|| {
                corrupt(format!(
                    "an entry of protocol {} and family {}",
                    key.proto, key.family
                ))
            })?;
            let half = (0..2)
                .find(|h| ring_base(info.slot, *h, sizes.ring_size) == info.ring_base)
                .filter(|_| self.free_services.contains(&info.slot))
                .ok_or_else(|| {
                    corrupt(format!(
                        "{id}: slot {} (ring at {}) is out of range, not the slot's, or taken twice",
                        info.slot, info.ring_base
                    ))
                })?;
            let ring = dp.read_ring(info.ring_base, info.ring_size)?;
            let mut backends = BTreeMap::new();
            for slot in ring.iter().copied().collect::<BTreeSet<u32>>() {
                let b = dp.backend(slot)?;
                let addr = addr_of(b.addr, b.family as u8).ok_or_else(|| {
                    corrupt(format!("{id}: backend slot {slot} holds no address"))
                })?;
                backends.insert(addr, slot);
                named.insert(slot);
            }
            let spec = match previous.get(&id) {
                Some(p)
                    if backends
                        .keys()
                        .all(|a| p.backends.iter().any(|b| b.addr == *a)) =>
                {
                    p.clone()
                }
                _ => ServiceSpec {
                    id,
                    forward: if info.flags & SERVICE_L2DSR != 0 {
                        Forward::L2dsr
                    } else {
                        Forward::Encap
                    },
                    backends: backends
                        .keys()
                        .map(|a| BackendSpec {
                            addr: *a,
                            weight: 1,
                        })
                        .collect(),
                    health: None,
                },
            };
            self.free_services.remove(&info.slot);
            adopted.push(Installed {
                spec,
                slot: info.slot,
                half,
                backends,
                down: BTreeSet::new(),
                ring: ring.into(),
                hash: FlowHash::of_flags(info.flags),
                info,
            });
        }
        let top = named.last().map_or(1, |s| s + 1);
        self.next_backend = top;
        self.free_backends = (1..top).filter(|s| !named.contains(s)).collect();
        let n = adopted.len();
        for mut inst in adopted {
            for b in inst.spec.backends.clone() {
                if inst.backends.contains_key(&b.addr) {
                    continue;
                }
                let slot = self.alloc_backend().ok_or_else(|| {
                    LbError::Invalid(vec![format!("no free backend slot for {}", b.addr)])
                })?;
                dp.set_backend(slot, &backend_entry(b.addr))?;
                dp.reset_backend_counter(slot)?;
                inst.backends.insert(b.addr, slot);
            }
            let members: BTreeSet<u32> = inst
                .spec
                .backends
                .iter()
                .filter(|b| b.weight > 0)
                .map(|b| inst.backends[&b.addr])
                .collect();
            let live: BTreeSet<u32> = inst.ring.iter().copied().collect();
            if members != live {
                self.switch_ring(dp, &mut inst, &mut Journal::default())?;
            }
            self.services.insert(inst.spec.id, inst);
        }
        Ok(n)
    }

    /// The interfaces that get `IFACE_LB` while any service exists (from the
    /// next apply on); returns the previous list.
    pub fn set_ifindexes(&mut self, ifindexes: Vec<u32>) -> Vec<u32> {
        std::mem::replace(&mut self.ifindexes, ifindexes)
    }

    /// The services as configured, in order.
    pub fn specs(&self) -> Vec<ServiceSpec> {
        self.services.values().map(|i| i.spec.clone()).collect()
    }

    /// The spec of one service.
    pub fn spec(&self, id: &ServiceId) -> Option<&ServiceSpec> {
        self.services.get(id).map(|i| &i.spec)
    }

    /// Every health-check target of every service.
    pub fn health_targets(&self) -> Vec<(TargetKey, SocketAddr, CheckSpec)> {
        self.services
            .values()
            .flat_map(|i| i.spec.health_targets())
            .collect()
    }

    fn alloc_backend(&mut self) -> Option<u32> {
        if let Some(s) = self.free_backends.pop_front() {
            return Some(s);
        }
        if self.next_backend < MAX_BACKENDS {
            self.next_backend += 1;
            Some(self.next_backend - 1)
        } else {
            None
        }
    }

    /// Replaces the installed services with `specs`, all or nothing.
    pub fn apply<D: LbMaps + ?Sized>(
        &mut self,
        dp: &mut D,
        specs: &[ServiceSpec],
    ) -> Result<(), LbError> {
        let specs: Vec<ServiceSpec> = specs.iter().map(normalise).collect();
        let problems = validate(&specs, dp.ring_sizes().ring_services);
        if !problems.is_empty() {
            return Err(LbError::Invalid(problems));
        }
        let before = self.clone();
        let mut journal = Journal::of(self);
        match self.apply_inner(dp, &specs, &mut journal) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Back to the state before, in the controller and in what
                // packets see (see the module documentation).
                *self = before;
                let undo = journal.restore(dp, self);
                if undo.is_empty() {
                    return Err(e);
                }
                let e = LbError::Rollback {
                    cause: Box::new(e),
                    undo,
                };
                log::error!("load balancer: {e}");
                Err(e)
            }
        }
    }

    fn apply_inner<D: LbMaps + ?Sized>(
        &mut self,
        dp: &mut D,
        specs: &[ServiceSpec],
        journal: &mut Journal,
    ) -> Result<(), LbError> {
        let want: BTreeMap<ServiceId, &ServiceSpec> = specs.iter().map(|s| (s.id, s)).collect();
        // Removed services: entry first, then (after every program that may
        // still read them finished) their slots are free.
        let removed: Vec<ServiceId> = self
            .services
            .keys()
            .filter(|id| !want.contains_key(id))
            .copied()
            .collect();
        for id in &removed {
            let key = service_key(id);
            journal.wrote.push(Wrote::Entry(key));
            dp.remove_service(&key)?;
        }
        if !removed.is_empty() {
            dp.rcu_wait()?;
        }
        for id in removed {
            if let Some(inst) = self.services.remove(&id) {
                self.free_services.insert(inst.slot);
                self.free_backends.extend(inst.backends.values());
            }
        }
        for spec in specs {
            let unchanged = self.services.get(&spec.id).is_some_and(|i| i.spec == *spec);
            if !unchanged {
                self.install(dp, spec, journal)?;
            }
        }
        let on = !self.services.is_empty();
        for ifindex in self.ifindexes.clone() {
            journal.wrote.push(Wrote::Flag(ifindex));
            dp.set_iface_flag(ifindex, IFACE_LB, on)?;
        }
        Ok(())
    }

    /// Installs or updates one service: backends, ring, entry. On an error
    /// the controller's state is partly updated; [`LbController::apply`]
    /// puts it back.
    fn install<D: LbMaps + ?Sized>(
        &mut self,
        dp: &mut D,
        spec: &ServiceSpec,
        journal: &mut Journal,
    ) -> Result<(), LbError> {
        let (mut inst, new) = match self.services.get(&spec.id) {
            Some(i) => (i.clone(), false),
            None => {
                let slot = *self
                    .free_services
                    .iter()
                    .next()
                    .ok_or_else(|| LbError::Invalid(vec!["no free service slot".into()]))?;
                (
                    Installed {
                        spec: spec.clone(),
                        slot,
                        half: 1,
                        backends: BTreeMap::new(),
                        down: BTreeSet::new(),
                        ring: Arc::new([]),
                        info: ServiceInfo::default(),
                        hash: self.hash,
                    },
                    true,
                )
            }
        };
        if new {
            if journal.live_services.contains(&inst.slot) {
                // Freed by this change: keep its counters for a rollback.
                let mut saved = Vec::with_capacity(ServiceStat::ALL.len());
                for what in ServiceStat::ALL {
                    saved.push((what, dp.service_counter(inst.slot, what)?));
                }
                journal.service_counters.insert(inst.slot, saved);
            }
            dp.reset_service_counters(inst.slot)?;
        }
        // Backend slots: keep those of kept addresses, allocate new ones.
        let keep: BTreeSet<IpAddr> = spec.backends.iter().map(|b| b.addr).collect();
        let mut freed = Vec::new();
        inst.backends.retain(|a, s| {
            if keep.contains(a) {
                true
            } else {
                freed.push(*s);
                false
            }
        });
        inst.down.retain(|a| keep.contains(a));
        for b in &spec.backends {
            if let std::collections::btree_map::Entry::Vacant(e) = inst.backends.entry(b.addr) {
                let slot = self.alloc_backend().ok_or_else(|| {
                    LbError::Invalid(vec![format!("no free backend slot for {}", b.addr)])
                })?;
                if journal.live_backends.contains(&slot) {
                    // Freed by this change: keep its counter for a rollback.
                    let c = dp.backend_counter(slot)?;
                    journal.backend_counters.insert(slot, c);
                }
                journal.wrote.push(Wrote::Backend(slot));
                dp.set_backend(slot, &backend_entry(b.addr))?;
                dp.reset_backend_counter(slot)?;
                e.insert(slot);
            }
        }
        inst.spec = spec.clone();
        self.switch_ring(dp, &mut inst, journal)?;
        if new {
            self.free_services.remove(&inst.slot);
        }
        self.services.insert(spec.id, inst);
        if !freed.is_empty() {
            dp.rcu_wait()?;
            self.free_backends.extend(freed);
        }
        Ok(())
    }

    /// Builds the ring of `inst` from its healthy, weighted backends, writes
    /// it into the idle half and switches the service entry to it.
    fn switch_ring<D: LbMaps + ?Sized>(
        &self,
        dp: &mut D,
        inst: &mut Installed,
        journal: &mut Journal,
    ) -> Result<(), LbError> {
        let size = dp.ring_sizes().ring_size;
        let members: Vec<Member> = inst
            .spec
            .backends
            .iter()
            .filter(|b| b.weight > 0 && !inst.down.contains(&b.addr))
            .map(|b| Member {
                slot: inst.backends[&b.addr],
                addr: b.addr,
                weight: b.weight,
            })
            .collect();
        let ring = maglev::build(&members, size)
            .map_err(|e| LbError::Invalid(vec![format!("{}: {e}", inst.spec.id)]))?;
        let idle = 1 - inst.half;
        let base = ring_base(inst.slot, idle, size);
        journal.wrote.push(Wrote::Ring {
            base,
            len: ring.len(),
        });
        dp.write_ring(base, &ring)?;
        let info = ServiceInfo {
            slot: inst.slot,
            flags: inst.hash.flag()
                | match inst.spec.forward {
                    Forward::Encap => SERVICE_ENCAP,
                    Forward::L2dsr => SERVICE_L2DSR,
                },
            ring_base: base,
            ring_size: if members.is_empty() { 0 } else { size },
        };
        let key = service_key(&inst.spec.id);
        journal.wrote.push(Wrote::Entry(key));
        dp.set_service(&key, &info)?;
        inst.half = idle;
        inst.ring = ring.into();
        inst.info = info;
        Ok(())
    }

    /// Marks backend `addr` of service `id` healthy or not and rebuilds the
    /// service's ring when that changes. Returns whether it changed.
    pub fn set_health<D: LbMaps + ?Sized>(
        &mut self,
        dp: &mut D,
        id: &ServiceId,
        addr: IpAddr,
        up: bool,
    ) -> Result<bool, LbError> {
        let Some(inst) = self.services.get(id) else {
            return Ok(false);
        };
        if !inst.backends.contains_key(&addr) || inst.down.contains(&addr) != up {
            return Ok(false);
        }
        let mut next = inst.clone();
        if up {
            next.down.remove(&addr);
        } else {
            next.down.insert(addr);
        }
        // One entry update: a failure leaves the ring in force as it was.
        self.switch_ring(dp, &mut next, &mut Journal::default())?;
        self.services.insert(*id, next);
        Ok(true)
    }

    /// The backend the datapath picks for a flow, from the ring last written
    /// (`None`: no service or no backend).
    pub fn predict(&self, id: &ServiceId, src: IpAddr, sport: u16, dport: u16) -> Option<IpAddr> {
        let inst = self.services.get(id)?;
        if inst.ring.is_empty() {
            return None;
        }
        let h = packet_hash_of(inst.hash, src, sport, id.vip, dport, id.proto);
        let slot = maglev::lookup(&inst.ring, h);
        inst.backends
            .iter()
            .find(|(_, s)| **s == slot)
            .map(|(a, _)| *a)
    }

    /// Every service's state, with the datapath's counters.
    pub fn status<D: LbMaps + ?Sized>(&self, dp: &D) -> Result<Vec<ServiceStatus>, LbError> {
        let mut out = Vec::new();
        for inst in self.services.values() {
            let c = |what| dp.service_counter(inst.slot, what);
            let mut backends = Vec::new();
            for b in &inst.spec.backends {
                let slot = inst.backends[&b.addr];
                let Counter { packets, bytes } = dp.backend_counter(slot)?;
                backends.push(BackendStatus {
                    addr: b.addr,
                    weight: b.weight,
                    healthy: !inst.down.contains(&b.addr),
                    ring_entries: inst.ring.iter().filter(|s| **s == slot).count() as u32,
                    packets,
                    bytes,
                });
            }
            out.push(ServiceStatus {
                service: inst.spec.id,
                forward: inst.spec.forward,
                health_checked: inst.spec.health.is_some(),
                ring_size: inst.ring.len() as u32,
                forwarded_packets: c(ServiceStat::Forwarded)?.packets,
                slow_path_packets: c(ServiceStat::SlowPath)?.packets,
                dropped_packets: c(ServiceStat::Dropped)?.packets,
                backends,
            });
        }
        Ok(out)
    }
}

mod hash;

#[cfg(test)]
mod tests;

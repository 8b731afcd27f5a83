//! The binding manager ("many IPs per interface"): puts the addresses of
//! binding requests (`xdpgate_model::bind`) on interfaces through rtnetlink,
//! records them in the datapath's local-address map (`XG_LOCAL_ADDRS`), and
//! removes exactly what xdpgate added.
//!
//! Ownership: an address already on the interface is *adopted* (recorded, not
//! added again); one xdpgate put there is *added*. Deleting a binding removes
//! the kernel address only if it was added; adopted ones are only forgotten.
//!
//! Every change is all or nothing: validation errors are reported together
//! before anything changes, and a failure midway (a netlink or map error)
//! undoes what the change did so far, kernel addresses and map alike.
//!
//! The manager changes the kernel through [`AddrKernel`] (the running kernel,
//! [`SystemKernel`], unless built [`Bindings::with_kernel`]) and the datapath
//! through [`LocalAddrs`], so its undo paths run in unit tests against the
//! in-memory kernel and datapath of `datapath::fake`.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use thiserror::Error;
use xdpgate_common::{IFACE_DROP_UNBOUND, LOCAL_ADDR_ENTRIES, LocalAddrKey};
use xdpgate_model::bind::{BindRequest, Binding, Origin, Report, RequestError, expand, key};

use crate::{
    cancel::{self, Cancelled},
    datapath::{AddrKernel, DatapathError, LocalAddrs, SystemKernel},
    sys::netlink::{AddrOpKind, AddrReq, NetlinkError},
};

/// Addresses added to the kernel per netlink batch, between cancellation
/// points (about 0.1 s of kernel work at the slowest rate measured, 10,000
/// IPv6 addresses in 55 s).
const ADD_BATCH: usize = 16;

/// Errors of the binding manager.
#[derive(Debug, Error)]
pub enum BindError {
    /// Every problem found while validating the requests (nothing was changed).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<RequestError>),
    /// The bindings would not fit the datapath map.
    #[error("{count} bound addresses would exceed the datapath's capacity of {max}")]
    Capacity {
        /// Addresses after the change.
        count: usize,
        /// The map's capacity.
        max: u32,
    },
    /// A netlink request failed; what the change did so far was undone.
    #[error("{0} (nothing was changed)")]
    Netlink(#[source] NetlinkError),
    /// A datapath map operation failed; what the change did so far was undone.
    #[error("{0} (nothing was changed)")]
    Datapath(#[source] DatapathError),
    /// The change stopped at a cancellation point (the daemon shuts down or
    /// the client went away); what it did so far was undone.
    #[error("{0} (nothing was changed)")]
    Cancelled(#[from] Cancelled),
    /// Undoing a failed change failed too: the state may be inconsistent.
    #[error("{cause}; undoing the change failed too: {undo}")]
    Rollback {
        /// The original failure.
        cause: Box<BindError>,
        /// What went wrong while undoing it.
        undo: String,
    },
}

/// One expanded address of a request.
#[derive(Clone, Debug)]
struct Want {
    iface: String,
    ifindex: u32,
    slot: u32,
    addr: IpAddr,
    plen: u8,
    nodad: bool,
}

impl Want {
    fn key(&self) -> LocalAddrKey {
        key(self.slot, self.addr)
    }
    fn req(&self) -> AddrReq {
        AddrReq {
            ifindex: self.ifindex,
            addr: self.addr,
            plen: self.plen,
            nodad: self.nodad,
        }
    }
}

/// One step of a change, as it is undone.
enum Step {
    /// Kernel addresses added.
    Added(Vec<AddrReq>),
    /// Kernel addresses deleted.
    Deleted(Vec<AddrReq>),
    /// Map keys inserted.
    Inserted(Vec<LocalAddrKey>),
    /// Map keys removed.
    Removed(Vec<LocalAddrKey>),
}

/// The steps a change did so far, undone in reverse on failure.
#[derive(Default)]
struct Journal(Vec<Step>);

/// The error of a failed address request, naming the address and the
/// interface (as [`address_error`](crate::sys::netlink::address_error) in
/// `sys::netlink` does, with the interface name from `kernel`).
fn address_error<K: AddrKernel + ?Sized>(
    kernel: &K,
    op: AddrOpKind,
    req: &AddrReq,
    source: std::io::Error,
) -> NetlinkError {
    NetlinkError::Address {
        op,
        addr: req.addr,
        plen: req.plen,
        iface: kernel
            .ifname(req.ifindex)
            .unwrap_or_else(|| format!("ifindex {}", req.ifindex)),
        source,
    }
}

/// Undoes kernel address changes with `kind`; `already` is the errno that
/// means the address is already as wanted (not a problem).
fn undo_addrs<K: AddrKernel + ?Sized>(
    kernel: &mut K,
    kind: AddrOpKind,
    reqs: &[AddrReq],
    already: i32,
    problems: &mut Vec<String>,
) {
    let outcomes = kernel.address_batch(kind, reqs);
    for (r, out) in reqs.iter().zip(outcomes) {
        if let Err(e) = out
            && e.raw_os_error() != Some(already)
        {
            problems.push(address_error(kernel, kind, r, e).to_string());
        }
    }
}

impl Journal {
    fn undo<D: LocalAddrs + ?Sized, K: AddrKernel + ?Sized>(
        self,
        dp: &mut D,
        kernel: &mut K,
        cause: BindError,
    ) -> BindError {
        let mut problems = Vec::new();
        for step in self.0.into_iter().rev() {
            match step {
                Step::Added(reqs) => {
                    let rev: Vec<AddrReq> = reqs.into_iter().rev().collect();
                    undo_addrs(
                        kernel,
                        AddrOpKind::Delete,
                        &rev,
                        libc::EADDRNOTAVAIL,
                        &mut problems,
                    );
                }
                Step::Deleted(reqs) => {
                    undo_addrs(kernel, AddrOpKind::Add, &reqs, libc::EEXIST, &mut problems);
                }
                Step::Inserted(keys) => {
                    if let Err(e) = dp.remove_local_addrs(&keys) {
                        problems.push(e.to_string());
                    }
                }
                Step::Removed(keys) => {
                    if let Err(e) = dp.insert_local_addrs(&keys) {
                        problems.push(e.to_string());
                    }
                }
            }
        }
        if problems.is_empty() {
            cause
        } else {
            BindError::Rollback {
                cause: Box::new(cause),
                undo: problems.join("; "),
            }
        }
    }
}

/// The binding manager: the bindings in force, by interface and address.
/// It changes addresses in the kernel `K` (the running one by default; an
/// in-memory one in unit tests) and the local-address map of the datapath
/// each method is given.
#[derive(Debug)]
pub struct Bindings<K: AddrKernel = SystemKernel> {
    kernel: K,
    limit: usize,
    list: Vec<Binding>,
    /// Index into `list` by (interface, address).
    index: HashMap<(String, IpAddr), usize>,
    /// Test hook: the kernel "fails" the add of the n-th address (0-based) of
    /// the next change.
    fail_at: Option<usize>,
}

/// What a change will do, computed before anything is touched.
#[derive(Default)]
struct Plan {
    add: Vec<Want>,
    remove: Vec<Binding>,
    unchanged: usize,
}

impl Bindings {
    /// No bindings; requests may expand to at most `limit` addresses each.
    /// Addresses are changed in the running kernel.
    pub fn new(limit: usize) -> Self {
        Bindings::with_kernel(SystemKernel, limit)
    }
}

impl<K: AddrKernel> Bindings<K> {
    /// No bindings, changing addresses in `kernel`; requests may expand to at
    /// most `limit` addresses each.
    pub fn with_kernel(kernel: K, limit: usize) -> Self {
        Bindings {
            kernel,
            limit,
            list: Vec::new(),
            index: HashMap::new(),
            fail_at: None,
        }
    }

    /// The kernel whose addresses this manager changes.
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// The kernel, mutably (tests use it to inject failures).
    pub fn kernel_mut(&mut self) -> &mut K {
        &mut self.kernel
    }

    /// Changes the per-request expansion limit (for later requests).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// The bindings in force, in the order they were made.
    pub fn list(&self) -> &[Binding] {
        &self.list
    }

    /// Bound addresses per interface and family (`ipv4`/`ipv6`), sorted.
    pub fn counts(&self) -> Vec<(String, &'static str, usize)> {
        xdpgate_model::bind::counts(&self.list)
    }

    /// Test hook for tests against the running kernel: make the kernel add of
    /// the `n`-th new address (0-based) of the next change fail, as if
    /// netlink had refused it. (Unit tests fail operations through the
    /// in-memory kernel and datapath of `datapath::fake` instead.)
    #[doc(hidden)]
    pub fn inject_failure(&mut self, n: usize) {
        self.fail_at = Some(n);
    }

    /// Expands and checks requests against the kernel's interfaces and the
    /// datapath's registered slots; every problem is reported together.
    fn resolve<D: LocalAddrs + ?Sized>(
        &self,
        dp: &mut D,
        reqs: &[BindRequest],
    ) -> Result<Vec<Want>, BindError> {
        let mut errs = Vec::new();
        let mut out = Vec::new();
        let mut slots: HashMap<String, Option<(u32, u32)>> = HashMap::new();
        let mut seen = HashSet::new();
        for r in reqs {
            let slot = match slots.get(&r.iface) {
                Some(s) => *s,
                None => {
                    let s = match self.kernel.ifindex(&r.iface) {
                        Ok(ifindex) => match dp.iface_config(ifindex) {
                            Ok(Some(cfg)) => Some((ifindex, cfg.slot)),
                            Ok(None) => None,
                            Err(e) => return Err(BindError::Datapath(e)),
                        },
                        Err(_) => None,
                    };
                    slots.insert(r.iface.clone(), s);
                    if s.is_none() {
                        errs.push(RequestError::NotAttached {
                            iface: r.iface.clone(),
                        });
                    }
                    s
                }
            };
            match expand(&r.iface, &r.spec, r.plen, self.limit) {
                Ok(addrs) => {
                    if let Some((ifindex, slot)) = slot {
                        for addr in addrs {
                            if seen.insert((r.iface.clone(), addr)) {
                                out.push(Want {
                                    iface: r.iface.clone(),
                                    ifindex,
                                    slot,
                                    addr,
                                    plen: r.plen.unwrap_or(if addr.is_ipv4() { 32 } else { 128 }),
                                    nodad: r.nodad,
                                });
                            }
                        }
                    }
                }
                Err(e) => errs.push(e),
            }
        }
        if errs.is_empty() {
            Ok(out)
        } else {
            Err(BindError::Invalid(errs))
        }
    }

    /// Binds the addresses of `reqs` (all or nothing). Addresses bound
    /// already are left as they are.
    pub fn add<D: LocalAddrs + ?Sized>(
        &mut self,
        dp: &mut D,
        reqs: &[BindRequest],
    ) -> Result<Report, BindError> {
        let wants = self.resolve(dp, reqs)?;
        let mut plan = Plan::default();
        for w in wants {
            if self.index.contains_key(&(w.iface.clone(), w.addr)) {
                plan.unchanged += 1;
            } else {
                plan.add.push(w);
            }
        }
        self.execute(dp, &plan)
    }

    /// Unbinds the addresses of `reqs` (all or nothing): added ones are
    /// removed from their interface, adopted ones stay there. Every address
    /// must be bound.
    pub fn del<D: LocalAddrs + ?Sized>(
        &mut self,
        dp: &mut D,
        reqs: &[BindRequest],
    ) -> Result<Report, BindError> {
        let mut errs = Vec::new();
        let mut plan = Plan::default();
        let mut seen = HashSet::new();
        for r in reqs {
            match expand(&r.iface, &r.spec, None, self.limit) {
                Ok(addrs) => {
                    let missing: Vec<IpAddr> = addrs
                        .iter()
                        .copied()
                        .filter(|a| !self.index.contains_key(&(r.iface.clone(), *a)))
                        .collect();
                    if let Some(first) = missing.first() {
                        errs.push(RequestError::NotBound {
                            iface: r.iface.clone(),
                            spec: r.spec.clone(),
                            count: missing.len(),
                            example: *first,
                        });
                        continue;
                    }
                    for a in addrs {
                        if seen.insert((r.iface.clone(), a)) {
                            plan.remove
                                .push(self.list[self.index[&(r.iface.clone(), a)]].clone());
                        }
                    }
                }
                Err(e) => errs.push(e),
            }
        }
        if !errs.is_empty() {
            return Err(BindError::Invalid(errs));
        }
        self.execute(dp, &plan)
    }

    /// Makes the bindings exactly `desired` (configuration load and reload),
    /// all or nothing. Bindings not desired are removed like [`Bindings::del`];
    /// desired addresses bound already keep their binding (and its prefix
    /// length).
    pub fn replace<D: LocalAddrs + ?Sized>(
        &mut self,
        dp: &mut D,
        desired: &[BindRequest],
    ) -> Result<Report, BindError> {
        let wants = self.resolve(dp, desired)?;
        let mut plan = Plan::default();
        let keep: HashSet<(String, IpAddr)> =
            wants.iter().map(|w| (w.iface.clone(), w.addr)).collect();
        for w in wants {
            if self.index.contains_key(&(w.iface.clone(), w.addr)) {
                plan.unchanged += 1;
            } else {
                plan.add.push(w);
            }
        }
        plan.remove = self
            .list
            .iter()
            .filter(|b| !keep.contains(&(b.iface.clone(), b.addr)))
            .cloned()
            .collect();
        self.execute(dp, &plan)
    }

    /// Takes over the bindings a previous run persisted: each is checked
    /// against the kernel (an address still there keeps its origin; one that
    /// vanished is added again, and is then `added`), and the datapath map is
    /// written. Bindings on interfaces that are not attached now are dropped
    /// from the list (their addresses stay on the interface). Replaces the
    /// bindings in force. All or nothing.
    pub fn restore<D: LocalAddrs + ?Sized>(
        &mut self,
        dp: &mut D,
        persisted: Vec<Binding>,
    ) -> Result<Report, BindError> {
        let mut report = Report::default();
        let mut slots: HashMap<String, Option<(u32, u32)>> = HashMap::new();
        let mut present: HashMap<u32, HashSet<IpAddr>> = HashMap::new();
        let mut journal = Journal::default();
        let mut readd: Vec<AddrReq> = Vec::new();
        let mut keys = Vec::new();
        let mut next: Vec<Binding> = Vec::new();
        let mut seen = HashSet::new();
        for mut b in persisted {
            let slot = *slots.entry(b.iface.clone()).or_insert_with(|| {
                let ifindex = self.kernel.ifindex(&b.iface).ok()?;
                let cfg = dp.iface_config(ifindex).ok()??;
                Some((ifindex, cfg.slot))
            });
            let Some((ifindex, slot)) = slot else {
                log::warn!(
                    "restore: {} on {} dropped: the interface is not attached",
                    b.addr,
                    b.iface
                );
                report.dropped += 1;
                continue;
            };
            if !seen.insert((b.iface.clone(), b.addr)) {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = present.entry(ifindex) {
                let addrs = self
                    .kernel
                    .addresses(Some(ifindex))
                    .map_err(BindError::Netlink)?
                    .into_iter()
                    .map(|a| a.addr)
                    .collect();
                e.insert(addrs);
            }
            if !present[&ifindex].contains(&b.addr) {
                readd.push(AddrReq {
                    ifindex,
                    addr: b.addr,
                    plen: b.plen,
                    nodad: b.nodad,
                });
                b.origin = Origin::Added;
                report.readded += 1;
            } else {
                report.unchanged += 1;
            }
            keys.push(key(slot, b.addr));
            next.push(b);
        }
        if next.len() > LOCAL_ADDR_ENTRIES as usize {
            return Err(BindError::Capacity {
                count: next.len(),
                max: LOCAL_ADDR_ENTRIES,
            });
        }
        if let Err(e) = add_kernel(&mut self.kernel, &readd, &mut journal, None) {
            return Err(journal.undo(dp, &mut self.kernel, e));
        }
        // The map may hold keys of the bindings in force; start from these.
        let old: Vec<LocalAddrKey> = self.keys(dp);
        if let Err(e) = dp.remove_local_addrs(&old) {
            return Err(journal.undo(dp, &mut self.kernel, BindError::Datapath(e)));
        }
        journal.0.push(Step::Removed(old));
        if let Err(e) = dp.insert_local_addrs(&keys) {
            return Err(journal.undo(dp, &mut self.kernel, BindError::Datapath(e)));
        }
        self.list = next;
        self.reindex();
        report.total = self.list.len();
        Ok(report)
    }

    /// Map keys of the bindings in force (interfaces that vanished skipped).
    fn keys<D: LocalAddrs + ?Sized>(&self, dp: &mut D) -> Vec<LocalAddrKey> {
        self.keys_of(dp, &self.list)
    }

    /// Map keys of `list` (bindings on interfaces that vanished skipped).
    fn keys_of<D: LocalAddrs + ?Sized>(&self, dp: &mut D, list: &[Binding]) -> Vec<LocalAddrKey> {
        let mut slots: HashMap<&str, Option<u32>> = HashMap::new();
        let mut out = Vec::new();
        for b in list {
            let slot = *slots.entry(&b.iface).or_insert_with(|| {
                let ifindex = self.kernel.ifindex(&b.iface).ok()?;
                Some(dp.iface_config(ifindex).ok()??.slot)
            });
            if let Some(slot) = slot {
                out.push(key(slot, b.addr));
            }
        }
        out
    }

    fn reindex(&mut self) {
        self.index = self
            .list
            .iter()
            .enumerate()
            .map(|(i, b)| ((b.iface.clone(), b.addr), i))
            .collect();
    }

    /// Removes from the local-address map every key no binding in force
    /// makes (left by an earlier daemon whose state this one did not take
    /// over): an address the configuration no longer binds must not pass an
    /// interface that drops unbound traffic. Returns how many were removed.
    pub fn sweep<D: LocalAddrs + ?Sized>(&self, dp: &mut D) -> Result<usize, BindError> {
        let keep: HashSet<LocalAddrKey> = self.keys_of(dp, &self.list).into_iter().collect();
        let stale: Vec<LocalAddrKey> = dp
            .local_addr_keys()
            .map_err(BindError::Datapath)?
            .into_iter()
            .filter(|k| !keep.contains(k))
            .collect();
        dp.remove_local_addrs(&stale).map_err(BindError::Datapath)?;
        Ok(stale.len())
    }

    /// Sets or clears the drop-unbound flag of attached interface `iface`.
    pub fn set_drop_unbound<D: LocalAddrs + ?Sized>(
        &mut self,
        dp: &mut D,
        iface: &str,
        on: bool,
    ) -> Result<(), BindError> {
        let not_attached = || {
            BindError::Invalid(vec![RequestError::NotAttached {
                iface: iface.to_owned(),
            }])
        };
        let ifindex = self.kernel.ifindex(iface).map_err(|_| not_attached())?;
        if dp
            .iface_config(ifindex)
            .map_err(BindError::Datapath)?
            .is_none()
        {
            return Err(not_attached());
        }
        dp.set_iface_flag(ifindex, IFACE_DROP_UNBOUND, on)
            .map_err(BindError::Datapath)
    }

    /// Carries out a plan: new addresses first (kernel, then map), then the
    /// removals (map, then kernel). Undoes everything on a failure.
    fn execute<D: LocalAddrs + ?Sized>(
        &mut self,
        dp: &mut D,
        plan: &Plan,
    ) -> Result<Report, BindError> {
        let total = self.list.len() + plan.add.len() - plan.remove.len();
        if total > LOCAL_ADDR_ENTRIES as usize {
            return Err(BindError::Capacity {
                count: total,
                max: LOCAL_ADDR_ENTRIES,
            });
        }
        let fail_at = self.fail_at.take();
        let mut report = Report {
            unchanged: plan.unchanged,
            ..Default::default()
        };
        let mut journal = Journal::default();

        // Which new addresses are on their interface already: adopt those.
        let mut present: HashMap<u32, HashMap<IpAddr, u8>> = HashMap::new();
        for w in &plan.add {
            if let std::collections::hash_map::Entry::Vacant(e) = present.entry(w.ifindex) {
                let addrs = self
                    .kernel
                    .addresses(Some(w.ifindex))
                    .map_err(BindError::Netlink)?;
                e.insert(addrs.into_iter().map(|a| (a.addr, a.plen)).collect());
            }
        }
        let mut new = Vec::with_capacity(plan.add.len());
        let mut to_add = Vec::new();
        for w in &plan.add {
            let origin = match present[&w.ifindex].get(&w.addr) {
                Some(plen) => {
                    new.push(Binding {
                        iface: w.iface.clone(),
                        addr: w.addr,
                        plen: *plen,
                        nodad: w.nodad,
                        origin: Origin::Adopted,
                    });
                    continue;
                }
                None => Origin::Added,
            };
            to_add.push(w.req());
            new.push(Binding {
                iface: w.iface.clone(),
                addr: w.addr,
                plen: w.plen,
                nodad: w.nodad,
                origin,
            });
        }
        let raced = match add_kernel(&mut self.kernel, &to_add, &mut journal, fail_at) {
            Ok(raced) => raced,
            Err(e) => return Err(journal.undo(dp, &mut self.kernel, e)),
        };
        // An address that appeared between the dump and the add is adopted.
        for b in &mut new {
            if raced.contains(&(b.iface.clone(), b.addr)) {
                b.origin = Origin::Adopted;
            }
        }
        let keys: Vec<LocalAddrKey> = plan.add.iter().map(Want::key).collect();
        if let Err(e) = dp.insert_local_addrs(&keys) {
            return Err(journal.undo(dp, &mut self.kernel, BindError::Datapath(e)));
        }
        journal.0.push(Step::Inserted(keys));

        // Removals: the map first, then the kernel addresses xdpgate added
        // (newest first, so IPv4 secondaries go before their primary).
        let old_keys = self.keys_of(dp, &plan.remove);
        if let Err(e) = dp.remove_local_addrs(&old_keys) {
            return Err(journal.undo(dp, &mut self.kernel, BindError::Datapath(e)));
        }
        journal.0.push(Step::Removed(old_keys));
        let mut to_del = Vec::new();
        for b in plan.remove.iter().rev() {
            match b.origin {
                Origin::Added => match self.kernel.ifindex(&b.iface) {
                    Ok(ifindex) => to_del.push(AddrReq {
                        ifindex,
                        addr: b.addr,
                        plen: b.plen,
                        nodad: b.nodad,
                    }),
                    // The interface is gone, and its addresses with it.
                    Err(_) => report.removed += 1,
                },
                Origin::Adopted => report.released += 1,
            }
        }
        let outcomes = self.kernel.address_batch(AddrOpKind::Delete, &to_del);
        let mut deleted = Vec::new();
        let mut failure = None;
        for (r, out) in to_del.iter().zip(outcomes) {
            match out {
                Ok(()) => deleted.push(*r),
                // Gone already (e.g. a deleted IPv4 primary took it along).
                Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
                Err(e) => {
                    if failure.is_none() {
                        failure = Some(address_error(&self.kernel, AddrOpKind::Delete, r, e));
                    }
                }
            }
        }
        report.removed += to_del.len();
        journal.0.push(Step::Deleted(deleted));
        if let Some(e) = failure {
            return Err(journal.undo(dp, &mut self.kernel, BindError::Netlink(e)));
        }

        // Commit.
        report.added = new.iter().filter(|b| b.origin == Origin::Added).count();
        report.adopted = new.len() - report.added;
        let gone: HashSet<(String, IpAddr)> = plan
            .remove
            .iter()
            .map(|b| (b.iface.clone(), b.addr))
            .collect();
        self.list
            .retain(|b| !gone.contains(&(b.iface.clone(), b.addr)));
        self.list.extend(new);
        self.reindex();
        report.total = self.list.len();
        Ok(report)
    }
}

/// Adds `reqs` to the kernel, journaling what was added. Returns the
/// addresses that turned out to exist already (`EEXIST`: adopted). On a
/// failure the journal holds exactly the successful adds. `fail_at` makes the
/// n-th request fail (test hook).
fn add_kernel<K: AddrKernel + ?Sized>(
    kernel: &mut K,
    reqs: &[AddrReq],
    journal: &mut Journal,
    fail_at: Option<usize>,
) -> Result<HashSet<(String, IpAddr)>, BindError> {
    let (reqs, injected) = match fail_at {
        Some(n) if n < reqs.len() => (&reqs[..n], Some(reqs[n])),
        _ => (reqs, None),
    };
    let mut added = Vec::new();
    let mut raced = HashSet::new();
    let mut failure = None;
    // In batches, with a cancellation point before each: a stopped add is
    // undone like a failed one (the journal holds what was added).
    let mut outcomes = Vec::with_capacity(reqs.len());
    for (i, chunk) in reqs.chunks(ADD_BATCH).enumerate() {
        cancel::progress(
            "adding addresses",
            (i * ADD_BATCH) as u64,
            reqs.len() as u64,
        );
        if let Err(c) = cancel::checkpoint() {
            failure = Some(BindError::Cancelled(c));
            break;
        }
        outcomes.extend(kernel.address_batch(AddrOpKind::Add, chunk));
    }
    for (r, out) in reqs.iter().zip(outcomes) {
        match out {
            Ok(()) => added.push(*r),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let name = kernel.ifname(r.ifindex).unwrap_or_default();
                raced.insert((name, r.addr));
            }
            // No answer: the add may have happened; undo deletes it if so.
            Err(e) if e.raw_os_error().is_none() => {
                added.push(*r);
                failure.get_or_insert_with(|| {
                    BindError::Netlink(address_error(kernel, AddrOpKind::Add, r, e))
                });
            }
            Err(e) => {
                failure.get_or_insert_with(|| {
                    BindError::Netlink(address_error(kernel, AddrOpKind::Add, r, e))
                });
            }
        }
    }
    journal.0.push(Step::Added(added));
    if let Some(r) = injected {
        failure.get_or_insert_with(|| {
            BindError::Netlink(address_error(
                kernel,
                AddrOpKind::Add,
                &r,
                std::io::Error::other("injected failure (test hook)"),
            ))
        });
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(raced),
    }
}

#[cfg(test)]
mod tests;

//! Address bindings ("many IPs per interface"): adds addresses to interfaces
//! through rtnetlink, records them in the datapath's local-address map
//! (`XG_LOCAL_ADDRS`), and removes exactly what xdpgate added.
//!
//! A binding request names an interface and an address spec:
//! - `10.200.1.5`: one address;
//! - `10.200.1.0/28`: every address of the prefix, network and broadcast
//!   included (host bits set, as in `10.200.1.5/24`, is an error);
//! - `10.200.1.10-10.200.1.20`: an inclusive range of one family.
//!
//! IPv6 alike. Each address is added with prefix length `plen` (default 32 or
//! 128). A request may expand to at most `limit` addresses.
//!
//! Ownership: an address already on the interface is *adopted* (recorded, not
//! added again); one xdpgate put there is *added*. Deleting a binding removes
//! the kernel address only if it was added; adopted ones are only forgotten.
//!
//! Every change is all or nothing: validation errors are reported together
//! before anything changes, and a failure midway (a netlink or map error)
//! undoes what the change did so far, kernel addresses and map alike.
use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use xdpgate_common::{LOCAL_ADDR_ENTRIES, LOCAL_ADDR_V4, LOCAL_ADDR_V6, LocalAddrKey};

use crate::{
    datapath::{Datapath, DatapathError},
    netlink::{self, AddrOpKind, AddrReq, NetlinkError},
    sys,
};

/// Default limit on the addresses one request may expand to.
pub const DEFAULT_LIMIT: usize = 65_536;

/// Who put a bound address on its interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// xdpgate added it; deleting the binding removes it from the interface.
    Added,
    /// It was already there; deleting the binding leaves it on the interface.
    Adopted,
}

/// One bound address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// Interface name.
    pub iface: String,
    /// The address.
    pub addr: IpAddr,
    /// Prefix length it is on the interface with.
    pub plen: u8,
    /// IPv6: added without duplicate address detection.
    #[serde(default)]
    pub nodad: bool,
    /// Whether xdpgate added it or adopted it.
    pub origin: Origin,
}

/// A binding request, as the CLI and the configuration file give it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindRequest {
    /// Interface name.
    pub iface: String,
    /// An address, a prefix or a range (see the module documentation).
    pub spec: String,
    /// Prefix length of each address (default 32 or 128).
    #[serde(default)]
    pub plen: Option<u8>,
    /// IPv6: add without duplicate address detection (`IFA_F_NODAD`).
    #[serde(default)]
    pub nodad: bool,
}

/// What a change did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Addresses xdpgate added to interfaces.
    pub added: usize,
    /// Addresses found on the interface and adopted.
    pub adopted: usize,
    /// Requested addresses that were bound already (nothing done).
    pub unchanged: usize,
    /// Added addresses removed from interfaces.
    pub removed: usize,
    /// Adopted addresses unbound and left on their interface.
    pub released: usize,
    /// Restore only: addresses that had vanished and were added again.
    pub readded: usize,
    /// Restore only: bindings dropped because their interface is not attached
    /// (their addresses stay where they are).
    pub dropped: usize,
    /// Bound addresses after the change.
    pub total: usize,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (n, what) in [
            (self.added, "added"),
            (self.adopted, "adopted"),
            (self.readded, "re-added"),
            (self.unchanged, "already bound"),
            (self.removed, "removed"),
            (self.released, "released (left on the interface)"),
            (self.dropped, "dropped (interface not attached)"),
        ] {
            if n != 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        if parts.is_empty() {
            parts.push("no change".into());
        }
        write!(f, "{}; {} bound addresses", parts.join(", "), self.total)
    }
}

/// Errors of the binding manager.
#[derive(Debug, Error)]
pub enum BindError {
    /// Every problem found while validating a request (nothing was changed).
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<BindError>),
    /// The address spec does not parse.
    #[error("{spec:?} on {iface}: {why}")]
    Spec {
        /// Interface.
        iface: String,
        /// The spec.
        spec: String,
        /// What is wrong.
        why: String,
    },
    /// A prefix with host bits set.
    #[error(
        "{spec} on {iface} has host bits set: to bind one address write {addr} (use --plen {plen} for its on-link prefix length), to bind the whole prefix write {network}/{plen}"
    )]
    HostBits {
        /// Interface.
        iface: String,
        /// The spec.
        spec: String,
        /// The address part.
        addr: IpAddr,
        /// The prefix length.
        plen: u8,
        /// The prefix's network address.
        network: IpAddr,
    },
    /// The spec expands to more addresses than the limit.
    #[error(
        "{spec} on {iface} expands to {count} addresses, more than the limit of {limit} per request (raise the limit or split the request)"
    )]
    TooMany {
        /// Interface.
        iface: String,
        /// The spec.
        spec: String,
        /// Addresses it expands to.
        count: u128,
        /// The limit.
        limit: usize,
    },
    /// The bindings would not fit the datapath map.
    #[error("{count} bound addresses would exceed the datapath's capacity of {max}")]
    Capacity {
        /// Addresses after the change.
        count: usize,
        /// The map's capacity.
        max: u32,
    },
    /// The prefix length does not fit the family.
    #[error("{spec} on {iface}: --plen {plen} is out of range for {family} (1 to {max})")]
    Plen {
        /// Interface.
        iface: String,
        /// The spec.
        spec: String,
        /// The prefix length.
        plen: u8,
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// Largest valid length.
        max: u8,
    },
    /// An address that cannot be bound (multicast, unspecified, loopback, ...).
    #[error("{spec} on {iface}: {addr} cannot be bound ({why})")]
    Unbindable {
        /// Interface.
        iface: String,
        /// The spec.
        spec: String,
        /// The address.
        addr: IpAddr,
        /// Why.
        why: &'static str,
    },
    /// The interface is not one the daemon is attached to.
    #[error("{iface} is not an interface xdpgate is attached to")]
    NotAttached {
        /// Interface.
        iface: String,
    },
    /// Addresses to unbind that are not bound.
    #[error("{count} address(es) of {spec} are not bound on {iface}, e.g. {example}")]
    NotBound {
        /// Interface.
        iface: String,
        /// The spec.
        spec: String,
        /// How many.
        count: usize,
        /// The first.
        example: IpAddr,
    },
    /// A netlink request failed; what the change did so far was undone.
    #[error("{0} (nothing was changed)")]
    Netlink(#[source] NetlinkError),
    /// A datapath map operation failed; what the change did so far was undone.
    #[error("{0} (nothing was changed)")]
    Datapath(#[source] DatapathError),
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

/// The local-address map key of `addr` on interface slot `slot`.
pub fn key(slot: u32, addr: IpAddr) -> LocalAddrKey {
    let mut k = LocalAddrKey {
        slot,
        ..Default::default()
    };
    match addr {
        IpAddr::V4(a) => {
            k.family = LOCAL_ADDR_V4;
            k.addr[..4].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            k.family = LOCAL_ADDR_V6;
            k.addr = a.octets();
        }
    }
    k
}

/// Parses an address spec and expands it, refusing more than `limit`
/// addresses. Also checks `plen` against the family. Errors name `iface`.
pub fn expand(
    iface: &str,
    spec: &str,
    plen: Option<u8>,
    limit: usize,
) -> Result<Vec<IpAddr>, BindError> {
    let s = spec.trim();
    let bad = |why: String| BindError::Spec {
        iface: iface.to_owned(),
        spec: spec.to_owned(),
        why,
    };
    let parse = |a: &str| -> Result<IpAddr, BindError> {
        a.trim()
            .parse::<IpAddr>()
            .map_err(|_| bad(format!("{:?} is not an IPv4 or IPv6 address", a.trim())))
    };
    let (first, last, v4) = if let Some((a, p)) = s.split_once('/') {
        let addr = parse(a)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = p
            .trim()
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| bad(format!("prefix length {p:?} is not 0 to {max}")))?;
        let (v, bits) = num(addr);
        let host = if len as u32 >= bits {
            0
        } else {
            u128::MAX >> (128 - bits + len as u32)
        };
        if v & host != 0 {
            return Err(BindError::HostBits {
                iface: iface.to_owned(),
                spec: spec.to_owned(),
                addr,
                plen: len,
                network: ip(addr.is_ipv4(), v & !host),
            });
        }
        (v, v | host, addr.is_ipv4())
    } else if let Some((a, b)) = s.split_once('-') {
        let (a, b) = (parse(a)?, parse(b)?);
        if a.is_ipv4() != b.is_ipv4() {
            return Err(bad("the range mixes IPv4 and IPv6".into()));
        }
        if num(a).0 > num(b).0 {
            return Err(bad(format!("the range starts after its end ({a} > {b})")));
        }
        (num(a).0, num(b).0, a.is_ipv4())
    } else {
        let a = parse(s)?;
        (num(a).0, num(a).0, a.is_ipv4())
    };
    let count = (last - first).saturating_add(1);
    if count > limit as u128 {
        return Err(BindError::TooMany {
            iface: iface.to_owned(),
            spec: spec.to_owned(),
            count,
            limit,
        });
    }
    if let Some(p) = plen {
        let max = if v4 { 32 } else { 128 };
        if p == 0 || p > max {
            return Err(BindError::Plen {
                iface: iface.to_owned(),
                spec: spec.to_owned(),
                plen: p,
                family: if v4 { "IPv4" } else { "IPv6" },
                max,
            });
        }
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut v = first;
    loop {
        let addr = ip(v4, v);
        if let Some(why) = unbindable(addr) {
            return Err(BindError::Unbindable {
                iface: iface.to_owned(),
                spec: spec.to_owned(),
                addr,
                why,
            });
        }
        out.push(addr);
        if v == last {
            break;
        }
        v += 1;
    }
    Ok(out)
}

/// Why `addr` cannot be an interface's own unicast address, if it cannot.
fn unbindable(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V4(a) if a.is_multicast() => Some("multicast"),
        IpAddr::V4(a) if a.is_broadcast() => Some("limited broadcast"),
        IpAddr::V4(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V6(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V6(a) if a.is_multicast() => Some("multicast"),
        IpAddr::V6(a) if a.is_loopback() => Some("loopback"),
        _ => None,
    }
}

fn num(a: IpAddr) -> (u128, u32) {
    match a {
        IpAddr::V4(a) => (u32::from(a) as u128, 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

fn ip(v4: bool, v: u128) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
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

/// Undoes kernel address changes with `kind`; `already` is the errno that
/// means the address is already as wanted (not a problem).
fn undo_addrs(kind: AddrOpKind, reqs: &[AddrReq], already: i32, problems: &mut Vec<String>) {
    for (r, out) in reqs.iter().zip(netlink::address_batch(kind, reqs)) {
        if let Err(e) = out
            && e.raw_os_error() != Some(already)
        {
            problems.push(netlink::address_error(kind, r, e).to_string());
        }
    }
}

impl Journal {
    fn undo(self, dp: &mut Datapath, cause: BindError) -> BindError {
        let mut problems = Vec::new();
        for step in self.0.into_iter().rev() {
            match step {
                Step::Added(reqs) => {
                    let rev: Vec<AddrReq> = reqs.into_iter().rev().collect();
                    undo_addrs(AddrOpKind::Delete, &rev, libc::EADDRNOTAVAIL, &mut problems);
                }
                Step::Deleted(reqs) => {
                    undo_addrs(AddrOpKind::Add, &reqs, libc::EEXIST, &mut problems);
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
#[derive(Debug)]
pub struct Bindings {
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
    pub fn new(limit: usize) -> Self {
        Bindings {
            limit,
            list: Vec::new(),
            index: HashMap::new(),
            fail_at: None,
        }
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
        let mut m: std::collections::BTreeMap<(String, &'static str), usize> = Default::default();
        for b in &self.list {
            let fam = if b.addr.is_ipv4() { "ipv4" } else { "ipv6" };
            *m.entry((b.iface.clone(), fam)).or_default() += 1;
        }
        m.into_iter().map(|((i, f), n)| (i, f, n)).collect()
    }

    /// Test hook: make the kernel add of the `n`-th new address (0-based) of
    /// the next change fail, as if netlink had refused it.
    #[doc(hidden)]
    pub fn inject_failure(&mut self, n: usize) {
        self.fail_at = Some(n);
    }

    /// Checks requests without touching the kernel (for `xdpgate check`):
    /// syntax, prefix lengths, the expansion limit and that each interface is
    /// in `known_ifaces`. Returns every problem found.
    pub fn validate(reqs: &[BindRequest], limit: usize, known_ifaces: &[String]) -> Vec<BindError> {
        let mut errs = Vec::new();
        for r in reqs {
            if !known_ifaces.contains(&r.iface) {
                errs.push(BindError::NotAttached {
                    iface: r.iface.clone(),
                });
            }
            if let Err(e) = expand(&r.iface, &r.spec, r.plen, limit) {
                errs.push(e);
            }
        }
        errs
    }

    /// Expands and checks requests against the kernel's interfaces and the
    /// datapath's registered slots; every problem is reported together.
    fn resolve(&self, dp: &mut Datapath, reqs: &[BindRequest]) -> Result<Vec<Want>, BindError> {
        let mut errs = Vec::new();
        let mut out = Vec::new();
        let mut slots: HashMap<String, Option<(u32, u32)>> = HashMap::new();
        let mut seen = HashSet::new();
        for r in reqs {
            let slot = match slots.get(&r.iface) {
                Some(s) => *s,
                None => {
                    let s = match sys::ifindex(&r.iface) {
                        Ok(ifindex) => match dp.iface_config(ifindex) {
                            Ok(Some(cfg)) => Some((ifindex, cfg.slot)),
                            Ok(None) => None,
                            Err(e) => return Err(BindError::Datapath(e)),
                        },
                        Err(_) => None,
                    };
                    slots.insert(r.iface.clone(), s);
                    if s.is_none() {
                        errs.push(BindError::NotAttached {
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
    pub fn add(&mut self, dp: &mut Datapath, reqs: &[BindRequest]) -> Result<Report, BindError> {
        let wants = self.resolve(dp, reqs)?;
        let mut plan = Plan::default();
        for w in wants {
            if self.index.contains_key(&(w.iface.clone(), w.addr)) {
                plan.unchanged += 1;
            } else {
                plan.add.push(w);
            }
        }
        self.execute(dp, plan)
    }

    /// Unbinds the addresses of `reqs` (all or nothing): added ones are
    /// removed from their interface, adopted ones stay there. Every address
    /// must be bound.
    pub fn del(&mut self, dp: &mut Datapath, reqs: &[BindRequest]) -> Result<Report, BindError> {
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
                        errs.push(BindError::NotBound {
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
        self.execute(dp, plan)
    }

    /// Makes the bindings exactly `desired` (configuration load and reload),
    /// all or nothing. Bindings not desired are removed like [`Bindings::del`];
    /// desired addresses bound already keep their binding (and its prefix
    /// length).
    pub fn replace(
        &mut self,
        dp: &mut Datapath,
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
        self.execute(dp, plan)
    }

    /// Takes over the bindings a previous run persisted: each is checked
    /// against the kernel (an address still there keeps its origin; one that
    /// vanished is added again, and is then `added`), and the datapath map is
    /// written. Bindings on interfaces that are not attached now are dropped
    /// from the list (their addresses stay on the interface). Replaces the
    /// bindings in force. All or nothing.
    pub fn restore(
        &mut self,
        dp: &mut Datapath,
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
                let ifindex = sys::ifindex(&b.iface).ok()?;
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
                let addrs = netlink::addresses(Some(ifindex))
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
        if let Err(e) = add_kernel(&readd, &mut journal, None) {
            return Err(journal.undo(dp, e));
        }
        // The map may hold keys of the bindings in force; start from these.
        let old: Vec<LocalAddrKey> = self.keys(dp);
        if let Err(e) = dp.remove_local_addrs(&old) {
            return Err(journal.undo(dp, BindError::Datapath(e)));
        }
        journal.0.push(Step::Removed(old));
        if let Err(e) = dp.insert_local_addrs(&keys) {
            return Err(journal.undo(dp, BindError::Datapath(e)));
        }
        self.list = next;
        self.reindex();
        report.total = self.list.len();
        Ok(report)
    }

    /// Map keys of the bindings in force (interfaces that vanished skipped).
    fn keys(&self, dp: &mut Datapath) -> Vec<LocalAddrKey> {
        let mut slots: HashMap<&str, Option<u32>> = HashMap::new();
        let mut out = Vec::new();
        for b in &self.list {
            let slot = *slots.entry(&b.iface).or_insert_with(|| {
                let ifindex = sys::ifindex(&b.iface).ok()?;
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

    /// Sets or clears the drop-unbound flag of attached interface `iface`.
    pub fn set_drop_unbound(
        &mut self,
        dp: &mut Datapath,
        iface: &str,
        on: bool,
    ) -> Result<(), BindError> {
        let not_attached = || BindError::NotAttached {
            iface: iface.to_owned(),
        };
        let ifindex = sys::ifindex(iface).map_err(|_| not_attached())?;
        if dp
            .iface_config(ifindex)
            .map_err(BindError::Datapath)?
            .is_none()
        {
            return Err(not_attached());
        }
        dp.set_drop_unbound(ifindex, on)
            .map_err(BindError::Datapath)
    }

    /// Carries out a plan: new addresses first (kernel, then map), then the
    /// removals (map, then kernel). Undoes everything on a failure.
    fn execute(&mut self, dp: &mut Datapath, plan: Plan) -> Result<Report, BindError> {
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
                let addrs = netlink::addresses(Some(w.ifindex)).map_err(BindError::Netlink)?;
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
        let raced = match add_kernel(&to_add, &mut journal, fail_at) {
            Ok(raced) => raced,
            Err(e) => return Err(journal.undo(dp, e)),
        };
        // An address that appeared between the dump and the add is adopted.
        for b in &mut new {
            if raced.contains(&(b.iface.clone(), b.addr)) {
                b.origin = Origin::Adopted;
            }
        }
        let keys: Vec<LocalAddrKey> = plan.add.iter().map(Want::key).collect();
        if let Err(e) = dp.insert_local_addrs(&keys) {
            return Err(journal.undo(dp, BindError::Datapath(e)));
        }
        journal.0.push(Step::Inserted(keys));

        // Removals: the map first, then the kernel addresses xdpgate added
        // (newest first, so IPv4 secondaries go before their primary).
        let old_keys = {
            let mut slots: HashMap<&str, Option<u32>> = HashMap::new();
            let mut out = Vec::new();
            for b in &plan.remove {
                let slot = *slots.entry(&b.iface).or_insert_with(|| {
                    let ifindex = sys::ifindex(&b.iface).ok()?;
                    Some(dp.iface_config(ifindex).ok()??.slot)
                });
                if let Some(slot) = slot {
                    out.push(key(slot, b.addr));
                }
            }
            out
        };
        if let Err(e) = dp.remove_local_addrs(&old_keys) {
            return Err(journal.undo(dp, BindError::Datapath(e)));
        }
        journal.0.push(Step::Removed(old_keys));
        let mut to_del = Vec::new();
        for b in plan.remove.iter().rev() {
            match b.origin {
                Origin::Added => match sys::ifindex(&b.iface) {
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
        let outcomes = netlink::address_batch(AddrOpKind::Delete, &to_del);
        let mut deleted = Vec::new();
        let mut failure = None;
        for (r, out) in to_del.iter().zip(outcomes) {
            match out {
                Ok(()) => deleted.push(*r),
                // Gone already (e.g. a deleted IPv4 primary took it along).
                Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
                Err(e) => {
                    if failure.is_none() {
                        failure = Some(netlink::address_error(AddrOpKind::Delete, r, e));
                    }
                }
            }
        }
        report.removed += to_del.len();
        journal.0.push(Step::Deleted(deleted));
        if let Some(e) = failure {
            return Err(journal.undo(dp, BindError::Netlink(e)));
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
fn add_kernel(
    reqs: &[AddrReq],
    journal: &mut Journal,
    fail_at: Option<usize>,
) -> Result<HashSet<(String, IpAddr)>, BindError> {
    let (reqs, injected) = match fail_at {
        Some(n) if n < reqs.len() => (&reqs[..n], Some(reqs[n])),
        _ => (reqs, None),
    };
    let outcomes = netlink::address_batch(AddrOpKind::Add, reqs);
    let mut added = Vec::new();
    let mut raced = HashSet::new();
    let mut failure = None;
    for (r, out) in reqs.iter().zip(outcomes) {
        match out {
            Ok(()) => added.push(*r),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let name = sys::ifname(r.ifindex).unwrap_or_default();
                raced.insert((name, r.addr));
            }
            // No answer: the add may have happened; undo deletes it if so.
            Err(e) if e.raw_os_error().is_none() => {
                added.push(*r);
                failure.get_or_insert(netlink::address_error(AddrOpKind::Add, r, e));
            }
            Err(e) => {
                failure.get_or_insert(netlink::address_error(AddrOpKind::Add, r, e));
            }
        }
    }
    journal.0.push(Step::Added(added));
    if let Some(r) = injected {
        failure.get_or_insert(netlink::address_error(
            AddrOpKind::Add,
            &r,
            std::io::Error::other("injected failure (test hook)"),
        ));
    }
    match failure {
        Some(e) => Err(BindError::Netlink(e)),
        None => Ok(raced),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(spec: &str) -> Result<Vec<IpAddr>, BindError> {
        expand("eth0", spec, None, DEFAULT_LIMIT)
    }

    #[test]
    fn single_prefix_and_range() {
        assert_eq!(
            ex("10.200.1.5").unwrap(),
            vec!["10.200.1.5".parse::<IpAddr>().unwrap()]
        );
        let p = ex("10.200.1.0/28").unwrap();
        assert_eq!(p.len(), 16);
        assert_eq!(p[0].to_string(), "10.200.1.0");
        assert_eq!(p[15].to_string(), "10.200.1.15");
        let r = ex("10.200.1.10-10.200.1.20").unwrap();
        assert_eq!(r.len(), 11);
        let v6 = ex("fd00:200::/124").unwrap();
        assert_eq!(v6.len(), 16);
        assert_eq!(v6[15].to_string(), "fd00:200::f");
        assert_eq!(ex("fd00:200::1 - fd00:200::3").unwrap().len(), 3);
        assert_eq!(ex("10.200.1.7/32").unwrap().len(), 1);
    }

    #[test]
    fn host_bits_message_says_both_ways() {
        let e = ex("10.200.1.5/24").unwrap_err().to_string();
        assert!(
            e.contains("to bind one address write 10.200.1.5 (use --plen 24"),
            "{e}"
        );
        assert!(
            e.contains("to bind the whole prefix write 10.200.1.0/24"),
            "{e}"
        );
        let e = ex("fd00:200::5/120").unwrap_err().to_string();
        assert!(e.contains("write fd00:200::/120"), "{e}");
    }

    #[test]
    fn errors() {
        assert!(ex("10.200.1.20-10.200.1.10").is_err());
        assert!(ex("10.200.1.1-fd00::1").is_err());
        assert!(ex("10.200.1.0/33").is_err());
        assert!(ex("nonsense").is_err());
        assert!(matches!(ex("224.0.0.1"), Err(BindError::Unbindable { .. })));
        assert!(matches!(ex("ff02::1"), Err(BindError::Unbindable { .. })));
        let e = expand("eth0", "10.0.0.0/8", None, 65_536).unwrap_err();
        assert!(e.to_string().contains("16777216 addresses"), "{e}");
        let e = expand("eth0", "fd00::/64", None, 65_536).unwrap_err();
        assert!(e.to_string().contains("18446744073709551616"), "{e}");
        assert!(expand("eth0", "10.0.0.1", Some(33), 10).is_err());
        assert!(expand("eth0", "fd00::1", Some(64), 10).is_ok());
    }

    #[test]
    fn validate_reports_everything() {
        let reqs = vec![
            BindRequest {
                iface: "eth0".into(),
                spec: "10.0.0.5/24".into(),
                plen: None,
                nodad: false,
            },
            BindRequest {
                iface: "eth9".into(),
                spec: "10.0.0.1".into(),
                plen: None,
                nodad: false,
            },
            BindRequest {
                iface: "eth0".into(),
                spec: "10.0.0.0/8".into(),
                plen: None,
                nodad: false,
            },
        ];
        let errs = Bindings::validate(&reqs, 1000, &["eth0".into()]);
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn keys_zero_pad_ipv4() {
        let k = key(3, "10.1.2.3".parse().unwrap());
        assert_eq!(k.slot, 3);
        assert_eq!(k.family, LOCAL_ADDR_V4);
        assert_eq!(&k.addr[..4], &[10, 1, 2, 3]);
        assert!(k.addr[4..].iter().all(|b| *b == 0));
    }

    #[test]
    fn binding_round_trips_through_json() {
        let b = Binding {
            iface: "eth0".into(),
            addr: "fd00::1".parse().unwrap(),
            plen: 128,
            nodad: true,
            origin: Origin::Adopted,
        };
        let s = serde_json::to_string(&b).unwrap();
        assert!(s.contains("\"adopted\""), "{s}");
        assert_eq!(serde_json::from_str::<Binding>(&s).unwrap(), b);
    }
}

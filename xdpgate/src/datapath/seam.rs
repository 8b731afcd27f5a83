//! The seam between the controllers and what they write: one trait per
//! controller that says exactly which map operations it uses, implemented by
//! [`Datapath`](super::Datapath) (the real maps, in `acl.rs`, `lb.rs` and
//! `ifaces.rs`) and, in unit tests, by the in-memory `datapath::fake`, which
//! can fail any operation on request. The binding manager also changes the
//! kernel's interface addresses; that half is [`AddrKernel`], implemented by
//! [`SystemKernel`] (rtnetlink and the interface-name calls of `sys`) and by
//! the fake's kernel.
//!
//! The controllers are generic over these traits (the daemon passes its
//! `Datapath`), so every rollback path (a write that fails halfway through a
//! load-balancer change, a failed ACL switch, a bind that fails after the
//! kernel took some addresses) runs in unit tests without root. The idea is
//! aya's (`aya/src/sys/fake.rs` swaps the `bpf(2)` call itself under
//! `cfg(test)`); the seam here sits one level up, at the map operations, so a
//! test states its failures in the controllers' terms ("the 3rd service
//! update fails").
//!
//! Every method maps one-to-one onto an operation of the real datapath; the
//! order in which a controller calls them is part of its all-or-nothing
//! design and is documented (and tested) with the controller.
use std::io;

use xdpgate_common::{
    Counter, IfaceConfig, LocalAddrKey,
    acl::AclConfig,
    lb::{Backend, ServiceInfo, ServiceKey, ServiceStat},
};
use xdpgate_model::{
    acl::compile::{Image, incr::Delta},
    lb::LoadOptions,
};

use super::{DatapathError, RuleLimitStats};
use crate::sys::{
    self, SysError,
    netlink::{self, AddrOpKind, AddrReq, IfAddr, NetlinkError},
};

/// Waiting for the datapath's readers: after it returns, no XDP program that
/// started before the call still runs, so nothing it read may still be in
/// use (the RCU grace period every "free after unlink" step waits for).
pub trait RcuWait {
    /// Waits one grace period.
    fn rcu_wait(&mut self) -> Result<(), DatapathError>;
}

/// The interface map (`XG_IFACES`): which interfaces are registered, under
/// which counter slot, with which flags.
pub trait IfaceTable {
    /// The configuration of interface `ifindex` (`None`: not registered).
    fn iface_config(&mut self, ifindex: u32) -> Result<Option<IfaceConfig>, DatapathError>;

    /// Sets or clears flag bit(s) `flag` (`IFACE_*`) of registered interface
    /// `ifindex` (one map update).
    fn set_iface_flag(&mut self, ifindex: u32, flag: u32, on: bool) -> Result<(), DatapathError>;
}

/// What the ACL controller writes and reads: the double-buffered generation
/// tables, the configuration word whose update switches generations, and
/// the rule counters.
pub trait AclTables: RcuWait {
    /// The ACL configuration in force (live epoch, rule counts, flags).
    fn acl_config(&self) -> Result<AclConfig, DatapathError>;

    /// Writes `image` into every table of generation `generation` (0 or 1),
    /// `counters[i]` being the counter slot of rule `i`. Packets do not read
    /// that generation until [`AclTables::set_acl_config`] switches to it; a
    /// failure may leave it half written.
    fn write_acl_generation(
        &mut self,
        generation: usize,
        image: &Image,
        counters: &[u32],
    ) -> Result<(), DatapathError>;

    /// Writes the entries `delta` names (their values from `image`, the
    /// tables after the change) into generation `generation`, which holds
    /// the tables of before the change; `counters` as for
    /// [`AclTables::write_acl_generation`]. Same contract otherwise.
    fn write_acl_delta(
        &mut self,
        generation: usize,
        image: &Image,
        delta: &Delta,
        counters: &[u32],
    ) -> Result<(), DatapathError>;
    /// The rules of the live generation: each rule's id and counter slot, in
    /// evaluation order (empty when no generation is live). A daemon that
    /// adopts a running datapath learns from it which counter each rule has.
    fn live_rule_slots(&self) -> Result<Vec<(u32, u32)>, DatapathError>;

    /// Zeroes rule counter slots `slots` (slots about to be given to new
    /// rules): their packet counters, their limit and cookie counters, and
    /// their rule-wide limit buckets (full again).
    fn zero_rule_counters(&mut self, slots: &[u32]) -> Result<(), DatapathError>;

    /// Replaces the configuration word: one map update, seen atomically by the
    /// next packet. Writing a new epoch is the switch to its generation.
    fn set_acl_config(&mut self, cfg: AclConfig) -> Result<(), DatapathError>;

    /// Packets and bytes of rule counter `slot`, summed over CPUs.
    fn rule_counter(&self, slot: u32) -> Result<(u64, u64), DatapathError>;

    /// The limit and cookie counters of rule counter `slot` (`rule_stat`
    /// order), summed over CPUs.
    fn rule_limit_stats(&self, slot: u32) -> Result<RuleLimitStats, DatapathError>;
}

/// What the load-balancer controller writes and reads: service entries,
/// backend slots, the Maglev rings, their counters, and the interfaces'
/// `IFACE_LB` flag.
pub trait LbMaps: IfaceTable + RcuWait {
    /// The ring storage the datapath was loaded with.
    fn ring_sizes(&self) -> LoadOptions;

    /// Writes `ring` at index `base` of the ring array.
    fn write_ring(&mut self, base: u32, ring: &[u32]) -> Result<(), DatapathError>;

    /// Writes backend slot `slot`.
    fn set_backend(&mut self, slot: u32, backend: &Backend) -> Result<(), DatapathError>;

    /// Zeroes the counters of backend slot `slot`.
    fn reset_backend_counter(&mut self, slot: u32) -> Result<(), DatapathError>;

    /// Zeroes every counter of service slot `slot`.
    fn reset_service_counters(&mut self, slot: u32) -> Result<(), DatapathError>;

    /// Inserts or replaces a service entry (an atomic replace for readers).
    fn set_service(&mut self, key: &ServiceKey, info: &ServiceInfo) -> Result<(), DatapathError>;

    /// Removes a service entry (absent is fine).
    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DatapathError>;

    /// Service slot `slot`'s counter of `what`, summed over CPUs.
    fn service_counter(&self, slot: u32, what: ServiceStat) -> Result<Counter, DatapathError>;

    /// Backend slot `slot`'s counter, summed over CPUs.
    fn backend_counter(&self, slot: u32) -> Result<Counter, DatapathError>;

    /// Sets service slot `slot`'s counter of `what` so that it sums to
    /// `value` (a rollback puts back counters a failed change zeroed).
    fn set_service_counter(
        &mut self,
        slot: u32,
        what: ServiceStat,
        value: Counter,
    ) -> Result<(), DatapathError>;

    /// Sets backend slot `slot`'s counter so that it sums to `value`.
    fn set_backend_counter(&mut self, slot: u32, value: Counter) -> Result<(), DatapathError>;

    /// Every service entry (what a running datapath steers).
    fn live_services(&self) -> Result<Vec<(ServiceKey, ServiceInfo)>, DatapathError>;

    /// `len` ring entries at index `base`.
    fn read_ring(&self, base: u32, len: u32) -> Result<Vec<u32>, DatapathError>;

    /// Backend slot `slot`.
    fn backend(&self, slot: u32) -> Result<Backend, DatapathError>;
}

/// What the binding manager writes in the datapath: the local-address map
/// (`XG_LOCAL_ADDRS`), and the interface map for slots and the
/// drop-unbound flag.
pub trait LocalAddrs: IfaceTable {
    /// Adds `keys` (keys present already stay). All or nothing: on an error
    /// the keys this call added are removed again.
    fn insert_local_addrs(&mut self, keys: &[LocalAddrKey]) -> Result<(), DatapathError>;

    /// Removes `keys` (absent keys are fine). All or nothing: on an error the
    /// keys this call removed are put back.
    fn remove_local_addrs(&mut self, keys: &[LocalAddrKey]) -> Result<(), DatapathError>;

    /// Every key of the map (what a running datapath lets through).
    fn local_addr_keys(&mut self) -> Result<Vec<LocalAddrKey>, DatapathError>;
}

/// The kernel's interfaces and addresses as the binding manager sees them:
/// name and index lookups and rtnetlink address requests.
pub trait AddrKernel {
    /// The index of interface `name`.
    fn ifindex(&self, name: &str) -> Result<u32, SysError>;

    /// The name of interface `ifindex`, if it exists.
    fn ifname(&self, ifindex: u32) -> Option<String>;

    /// The addresses of both families, of interface `ifindex` only when given.
    fn addresses(&mut self, ifindex: Option<u32>) -> Result<Vec<IfAddr>, NetlinkError>;

    /// Adds (create-exclusive) or deletes every address of `reqs`, in order;
    /// one outcome per request, a failed request does not stop the others.
    /// An `Err` without an OS error number means the request's fate is
    /// unknown (no answer). See [`netlink::address_batch`].
    fn address_batch(&mut self, op: AddrOpKind, reqs: &[AddrReq]) -> Vec<Result<(), io::Error>>;
}

/// The running kernel of the current network namespace: [`AddrKernel`]
/// through rtnetlink ([`netlink`]) and `if_nametoindex`/`if_indextoname`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemKernel;

impl AddrKernel for SystemKernel {
    fn ifindex(&self, name: &str) -> Result<u32, SysError> {
        sys::ifindex(name)
    }

    fn ifname(&self, ifindex: u32) -> Option<String> {
        sys::ifname(ifindex)
    }

    fn addresses(&mut self, ifindex: Option<u32>) -> Result<Vec<IfAddr>, NetlinkError> {
        netlink::addresses(ifindex)
    }

    fn address_batch(&mut self, op: AddrOpKind, reqs: &[AddrReq]) -> Vec<Result<(), io::Error>> {
        netlink::address_batch(op, reqs)
    }
}

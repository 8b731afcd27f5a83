//! The fake's kernel half: interfaces and their addresses, with refused,
//! unanswered and failed requests on demand (see the parent module).
use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::IpAddr,
};

use crate::{
    datapath::seam::AddrKernel,
    sys::{
        SysError,
        netlink::{AddrOpKind, AddrReq, IfAddr, NetlinkError},
    },
};

/// How the fake kernel fails an address request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KernelFailure {
    /// The kernel refuses it with this errno; nothing changes.
    Refused(i32),
    /// The request is carried out but its answer is lost, and the rest of
    /// the batch is neither carried out nor answered (a socket failure).
    NoAnswer,
}

/// The in-memory kernel: interfaces and their addresses. See the module
/// documentation.
#[derive(Clone, Debug, Default)]
pub(crate) struct FakeKernel {
    links: BTreeMap<u32, String>,
    /// Addresses per interface, in the order they were added.
    addrs: BTreeMap<u32, Vec<(IpAddr, u8)>>,
    adds: usize,
    deletes: usize,
    dumps: usize,
    fail_adds: BTreeMap<usize, KernelFailure>,
    fail_deletes: BTreeMap<usize, KernelFailure>,
    fail_dumps: BTreeSet<usize>,
    log: Vec<(AddrOpKind, IpAddr)>,
}

impl FakeKernel {
    /// A kernel without interfaces.
    pub(crate) fn new() -> Self {
        FakeKernel::default()
    }

    /// Adds interface `name` with index `ifindex`.
    pub(crate) fn link(&mut self, ifindex: u32, name: &str) {
        self.links.insert(ifindex, name.to_owned());
        self.addrs.entry(ifindex).or_default();
    }

    /// Puts `addr/plen` on interface `ifindex` (behind the manager's back).
    pub(crate) fn put_addr(&mut self, ifindex: u32, addr: IpAddr, plen: u8) {
        self.addrs.entry(ifindex).or_default().push((addr, plen));
    }

    /// Takes `addr` off interface `ifindex` (behind the manager's back).
    pub(crate) fn drop_addr(&mut self, ifindex: u32, addr: IpAddr) {
        if let Some(list) = self.addrs.get_mut(&ifindex) {
            list.retain(|(a, _)| *a != addr);
        }
    }

    /// The addresses of `ifindex`, sorted.
    pub(crate) fn addrs(&self, ifindex: u32) -> BTreeSet<(IpAddr, u8)> {
        self.addrs
            .get(&ifindex)
            .map(|a| a.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Makes the `n`-th address add from now (0: the next one) fail.
    pub(crate) fn fail_add(&mut self, n: usize, how: KernelFailure) {
        self.fail_adds.insert(self.adds + n, how);
    }

    /// Makes the `n`-th address delete from now (0: the next one) fail.
    pub(crate) fn fail_delete(&mut self, n: usize, how: KernelFailure) {
        self.fail_deletes.insert(self.deletes + n, how);
    }

    /// Makes the next address dump fail.
    pub(crate) fn fail_next_dump(&mut self) {
        self.fail_dumps.insert(self.dumps);
    }

    /// Every add and delete requested so far, in order.
    pub(crate) fn log(&self) -> &[(AddrOpKind, IpAddr)] {
        &self.log
    }

    /// Carries out one request; the flag says its answer was lost (the rest
    /// of the batch then goes unanswered).
    fn request(&mut self, op: AddrOpKind, r: &AddrReq) -> (Result<(), io::Error>, bool) {
        self.log.push((op, r.addr));
        let failure = match op {
            AddrOpKind::Add => {
                self.adds += 1;
                self.fail_adds.remove(&(self.adds - 1))
            }
            AddrOpKind::Delete => {
                self.deletes += 1;
                self.fail_deletes.remove(&(self.deletes - 1))
            }
        };
        if let Some(KernelFailure::Refused(errno)) = failure {
            return (Err(io::Error::from_raw_os_error(errno)), false);
        }
        let Some(list) = self.addrs.get_mut(&r.ifindex) else {
            return (Err(io::Error::from_raw_os_error(libc::ENODEV)), false);
        };
        let at = list.iter().position(|(a, _)| *a == r.addr);
        let outcome = match (op, at) {
            (AddrOpKind::Add, Some(_)) => Err(io::Error::from_raw_os_error(libc::EEXIST)),
            (AddrOpKind::Add, None) => {
                list.push((r.addr, r.plen));
                Ok(())
            }
            (AddrOpKind::Delete, Some(i)) => {
                list.remove(i);
                Ok(())
            }
            (AddrOpKind::Delete, None) => Err(io::Error::from_raw_os_error(libc::EADDRNOTAVAIL)),
        };
        match failure {
            Some(KernelFailure::NoAnswer) => (
                Err(io::Error::other(
                    "no answer from the kernel: fake socket failure",
                )),
                true,
            ),
            _ => (outcome, false),
        }
    }
}

impl AddrKernel for FakeKernel {
    fn ifindex(&self, name: &str) -> Result<u32, SysError> {
        self.links
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(i, _)| *i)
            .ok_or_else(|| SysError::NoSuchInterface(name.to_owned()))
    }

    fn ifname(&self, ifindex: u32) -> Option<String> {
        self.links.get(&ifindex).cloned()
    }

    fn addresses(&mut self, ifindex: Option<u32>) -> Result<Vec<IfAddr>, NetlinkError> {
        self.dumps += 1;
        if self.fail_dumps.remove(&(self.dumps - 1)) {
            return Err(NetlinkError::Io {
                call: "recv",
                source: io::Error::other("injected failure (fake kernel)"),
            });
        }
        Ok(self
            .addrs
            .iter()
            .filter(|(i, _)| ifindex.is_none_or(|want| want == **i))
            .flat_map(|(i, list)| {
                list.iter().map(|(addr, plen)| IfAddr {
                    ifindex: *i,
                    addr: *addr,
                    plen: *plen,
                    flags: 0,
                })
            })
            .collect())
    }

    fn address_batch(&mut self, op: AddrOpKind, reqs: &[AddrReq]) -> Vec<Result<(), io::Error>> {
        let mut out = Vec::with_capacity(reqs.len());
        let mut lost = false;
        for r in reqs {
            if lost {
                out.push(Err(io::Error::other(
                    "no answer from the kernel: fake socket failure",
                )));
                continue;
            }
            let (outcome, stop) = self.request(op, r);
            lost = stop;
            out.push(outcome);
        }
        out
    }
}

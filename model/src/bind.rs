//! Address bindings as requested: the address specs an operator writes
//! (`10.200.1.5`, a prefix `10.200.1.0/28` meaning every address in it, or a
//! range `10.200.1.10-10.200.1.20`; IPv6 alike), their expansion and checks,
//! the bindings in force as the state file records them, and the datapath
//! key of a bound address. The manager that puts addresses on interfaces is
//! `xdpgate::bind`.
//!
//! Each address is added with prefix length `plen` (default 32 or 128). A
//! request may expand to at most `limit` addresses. A prefix with host bits
//! set (`10.200.1.5/24`) is an error that says how to write either meaning.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use xdpgate_common::{LOCAL_ADDR_V4, LOCAL_ADDR_V6, LocalAddrKey};

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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// A problem with a binding request, found before anything is touched.
#[derive(Debug, Error)]
pub enum RequestError {
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
) -> Result<Vec<IpAddr>, RequestError> {
    let s = spec.trim();
    let bad = |why: String| RequestError::Spec {
        iface: iface.to_owned(),
        spec: spec.to_owned(),
        why,
    };
    let parse = |a: &str| -> Result<IpAddr, RequestError> {
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
            return Err(RequestError::HostBits {
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
        return Err(RequestError::TooMany {
            iface: iface.to_owned(),
            spec: spec.to_owned(),
            count,
            limit,
        });
    }
    if let Some(p) = plen {
        let max = if v4 { 32 } else { 128 };
        if p == 0 || p > max {
            return Err(RequestError::Plen {
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
            return Err(RequestError::Unbindable {
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

/// Checks requests without touching the kernel (`xdpgate check`, a reload
/// before it applies anything): syntax, prefix lengths, the expansion limit
/// and that each interface is in `known_ifaces`. Returns every problem found.
pub fn validate(reqs: &[BindRequest], limit: usize, known_ifaces: &[String]) -> Vec<RequestError> {
    let mut errs = Vec::new();
    for r in reqs {
        if !known_ifaces.contains(&r.iface) {
            errs.push(RequestError::NotAttached {
                iface: r.iface.clone(),
            });
        }
        if let Err(e) = expand(&r.iface, &r.spec, r.plen, limit) {
            errs.push(e);
        }
    }
    errs
}

/// Bound addresses per interface and family (`ipv4`/`ipv6`), sorted.
pub fn counts(list: &[Binding]) -> Vec<(String, &'static str, usize)> {
    let mut m: std::collections::BTreeMap<(String, &'static str), usize> = Default::default();
    for b in list {
        let fam = if b.addr.is_ipv4() { "ipv4" } else { "ipv6" };
        *m.entry((b.iface.clone(), fam)).or_default() += 1;
    }
    m.into_iter().map(|((i, f), n)| (i, f, n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(spec: &str) -> Result<Vec<IpAddr>, RequestError> {
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
        assert!(matches!(
            ex("224.0.0.1"),
            Err(RequestError::Unbindable { .. })
        ));
        assert!(matches!(
            ex("ff02::1"),
            Err(RequestError::Unbindable { .. })
        ));
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
        let errs = validate(&reqs, 1000, &["eth0".into()]);
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

//! The operator-facing ACL state and its validation.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    str::FromStr,
};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Capacity limits of one generation; exceeding one rejects the change.
pub mod limits {
    /// Rules.
    pub const MAX_RULES: usize = 12_288;
    /// Prefixes per family over all sets and rules (before leaf pushing).
    pub const MAX_PREFIXES_PER_FAMILY: usize = 1 << 20;
    /// Prefix sets.
    pub const MAX_SETS: usize = 1024;
}

/// One error in a proposed change. A rejected change lists all of them.
#[derive(Clone, Debug, Error, PartialEq, Eq, Serialize)]
pub enum AclError {
    /// A prefix that does not parse or has host bits set.
    #[error("bad prefix {0:?}: {1}")]
    BadPrefix(String, String),
    /// A set name with characters outside `[A-Za-z0-9_.-]` or too long.
    #[error("bad set name {0:?}: use 1 to 64 of A-Z a-z 0-9 _ . -")]
    BadSetName(String),
    /// A reference to a set that does not exist.
    #[error("rule {rule}: unknown set @{set}")]
    UnknownSet {
        /// The rule.
        rule: u32,
        /// The set.
        set: String,
    },
    /// A set operation on a set that does not exist.
    #[error("no set named {0}")]
    NoSuchSet(String),
    /// Deleting a set that rules still use.
    #[error("set {set} is used by rule(s) {rules:?}")]
    SetInUse {
        /// The set.
        set: String,
        /// The rules using it.
        rules: Vec<u32>,
    },
    /// Two rules with the same id.
    #[error("rule id {0} is used more than once")]
    DuplicateRule(u32),
    /// Deleting a rule that does not exist.
    #[error("no rule with id {0}")]
    NoSuchRule(u32),
    /// A rule whose fields contradict each other.
    #[error("rule {rule}: {reason}")]
    BadRule {
        /// The rule.
        rule: u32,
        /// What is wrong.
        reason: String,
    },
    /// A field value that does not parse.
    #[error("{field}: {reason}")]
    BadValue {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A capacity exceeded.
    #[error("capacity exceeded: {what} ({have} > {max})")]
    Capacity {
        /// What ran out.
        what: &'static str,
        /// How many the change would need.
        have: usize,
        /// The limit.
        max: usize,
    },
    /// A capacity the configuration sets (`[acl]`), exceeded.
    #[error("{0}")]
    Configured(Exceeded),
}

/// What a rule or a default policy does with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Pass the packet.
    Allow,
    /// Drop the packet.
    Deny,
}

impl FromStr for Verdict {
    type Err = AclError;
    fn from_str(s: &str) -> Result<Self, AclError> {
        match s {
            "allow" | "pass" | "accept" => Ok(Verdict::Allow),
            "deny" | "drop" => Ok(Verdict::Deny),
            _ => Err(AclError::BadValue {
                field: "action",
                reason: format!("{s:?} is not allow or deny"),
            }),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        })
    }
}

/// Parses a prefix, rejecting host bits. A bare address is a /32 or /128.
pub fn parse_prefix(s: &str) -> Result<IpNetwork, AclError> {
    let bad = |why: &str| AclError::BadPrefix(s.to_owned(), why.to_owned());
    let net = if s.contains('/') {
        IpNetwork::from_str(s).map_err(|e| bad(&e.to_string()))?
    } else {
        let ip = IpAddr::from_str(s).map_err(|e| bad(&e.to_string()))?;
        IpNetwork::from(ip)
    };
    if net.network() != net.ip() {
        return Err(bad(&format!(
            "host bits set (did you mean {}/{}?)",
            net.network(),
            net.prefix()
        )));
    }
    Ok(net)
}

/// An inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port.
    pub hi: u16,
}

impl PortRange {
    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

impl FromStr for PortRange {
    type Err = AclError;
    fn from_str(s: &str) -> Result<Self, AclError> {
        let bad = || AclError::BadValue {
            field: "port",
            reason: format!("{s:?} is not a port (0-65535) or a range A-B with A <= B"),
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            ),
            None => {
                let p = s.trim().parse().map_err(|_| bad())?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(bad());
        }
        Ok(PortRange { lo, hi })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port (0-65535) or a range \"A-B\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortRange, E> {
                u16::try_from(v)
                    .map(|p| PortRange { lo: p, hi: p })
                    .map_err(|_| E::custom(format!("{v} is not a port (0-65535)")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortRange, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("{v} is not a port (0-65535)")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<PortRange, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A source or destination match: one prefix, or a named set.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddrMatch {
    /// One prefix.
    Prefix(IpNetwork),
    /// Every prefix of the named set (of the packet's family).
    Set(String),
}

impl FromStr for AddrMatch {
    type Err = AclError;
    fn from_str(s: &str) -> Result<Self, AclError> {
        match s.strip_prefix('@') {
            Some(name) => {
                check_set_name(name)?;
                Ok(AddrMatch::Set(name.to_owned()))
            }
            None => parse_prefix(s).map(AddrMatch::Prefix),
        }
    }
}

impl fmt::Display for AddrMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrMatch::Prefix(p) => write!(f, "{p}"),
            AddrMatch::Set(s) => write!(f, "@{s}"),
        }
    }
}

impl Serialize for AddrMatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AddrMatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

mod apply;
mod exceeded;
pub mod proto;

pub use apply::Undo;
pub use exceeded::Exceeded;

fn de_proto<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u8),
        S(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::N(n)) => Ok(Some(n)),
        Some(Raw::S(s)) => proto::parse(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

/// One rule. See `docs/design/acl.md` for the semantics.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique id.
    pub id: u32,
    /// Lower is evaluated first; ties by id.
    pub priority: u32,
    /// Source match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<AddrMatch>,
    /// Destination match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<AddrMatch>,
    /// IP protocol.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_proto"
    )]
    pub proto: Option<u8>,
    /// Source ports (needs tcp, udp or sctp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<PortRange>,
    /// Destination ports (needs tcp, udp or sctp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<PortRange>,
    /// ICMP or ICMPv6 type (needs icmp or icmpv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    /// ICMP or ICMPv6 code (needs icmp_type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    /// Ingress interface name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    /// What a match does.
    pub action: Verdict,
    /// A rate limit (action `allow` only): packets over it are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<crate::acl::limit::Limit>,
    /// Answer SYNs with SYN cookies in XDP and pass only established
    /// connections and valid cookie ACKs (action `allow`, proto `tcp`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub syncookie: bool,
}

/// The address family a rule is restricted to, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleFamily {
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
    /// Both.
    Any,
}

impl Rule {
    /// A rule that matches every packet (no field named), to be narrowed with
    /// struct update syntax: `Rule { proto: Some(6), ..Rule::new(1, 10, Verdict::Deny) }`.
    pub fn new(id: u32, priority: u32, action: Verdict) -> Self {
        Rule {
            id,
            priority,
            src: None,
            dst: None,
            proto: None,
            sport: None,
            dport: None,
            icmp_type: None,
            icmp_code: None,
            iface: None,
            action,
            limit: None,
            syncookie: false,
        }
    }

    /// Whether the rule names ports or ICMP fields (so never matches a later fragment).
    pub fn names_l4(&self) -> bool {
        self.sport.is_some()
            || self.dport.is_some()
            || self.icmp_type.is_some()
            || self.icmp_code.is_some()
    }

    /// The evaluation order key.
    pub fn order(&self) -> (u32, u32) {
        (self.priority, self.id)
    }

    /// The family the rule's fields restrict it to (assumes a validated rule).
    pub fn family(&self) -> RuleFamily {
        let of = |m: &Option<AddrMatch>| match m {
            Some(AddrMatch::Prefix(IpNetwork::V4(_))) => RuleFamily::V4,
            Some(AddrMatch::Prefix(IpNetwork::V6(_))) => RuleFamily::V6,
            _ => RuleFamily::Any,
        };
        match (of(&self.src), of(&self.dst), self.proto) {
            (RuleFamily::V4, _, _) | (_, RuleFamily::V4, _) | (_, _, Some(proto::ICMP)) => {
                RuleFamily::V4
            }
            (RuleFamily::V6, _, _) | (_, RuleFamily::V6, _) | (_, _, Some(proto::ICMPV6)) => {
                RuleFamily::V6
            }
            _ => RuleFamily::Any,
        }
    }

    /// Checks the rule on its own (sets are checked against the state).
    pub fn check(&self) -> Vec<AclError> {
        let mut errs = Vec::new();
        let mut bad = |reason: &str| {
            errs.push(AclError::BadRule {
                rule: self.id,
                reason: reason.to_owned(),
            });
        };
        if (self.sport.is_some() || self.dport.is_some())
            && !self.proto.is_some_and(proto::has_ports)
        {
            bad("ports need proto tcp, udp or sctp");
        }
        if self.icmp_type.is_some() && !matches!(self.proto, Some(proto::ICMP | proto::ICMPV6)) {
            bad("icmp_type needs proto icmp or icmpv6");
        }
        if self.icmp_code.is_some() && self.icmp_type.is_none() {
            bad("icmp_code needs icmp_type");
        }
        let fam = |m: &Option<AddrMatch>| match m {
            Some(AddrMatch::Prefix(IpNetwork::V4(_))) => Some(4),
            Some(AddrMatch::Prefix(IpNetwork::V6(_))) => Some(6),
            _ => None,
        };
        let proto_fam = match self.proto {
            Some(proto::ICMP) => Some(4),
            Some(proto::ICMPV6) => Some(6),
            _ => None,
        };
        let fams: BTreeSet<i32> = [fam(&self.src), fam(&self.dst), proto_fam]
            .into_iter()
            .flatten()
            .collect();
        if fams.len() > 1 {
            bad("mixes IPv4 and IPv6 (prefixes or icmp/icmpv6)");
        }
        if let Some(i) = &self.iface
            && (i.is_empty() || i.len() > 15)
        {
            bad("iface must be an interface name of 1 to 15 characters");
        }
        for reason in extras_problems(self) {
            bad(&reason);
        }
        errs
    }
}

/// The problems of a rule's `limit` and `syncookie` (part of `Rule::check`).
fn extras_problems(rule: &Rule) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(limit) = &rule.limit {
        if rule.action != Verdict::Allow {
            out.push("a limit needs action allow (packets under it are allowed)".to_owned());
        }
        let (v4, v6) = match rule.family() {
            RuleFamily::V4 => (true, false),
            RuleFamily::V6 => (false, true),
            RuleFamily::Any => (true, true),
        };
        for (field, reason) in limit.problems(v4, v6) {
            out.push(format!("limit.{field}: {reason}"));
        }
    }
    if rule.syncookie {
        if rule.action != Verdict::Allow {
            out.push("syncookie needs action allow".to_owned());
        }
        if rule.proto != Some(proto::TCP) {
            out.push("syncookie needs proto tcp".to_owned());
        }
        if rule.dport.is_none() {
            out.push("syncookie needs dport (the protected service's ports)".to_owned());
        }
    }
    out
}

fn check_set_name(name: &str) -> Result<(), AclError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(AclError::BadSetName(name.to_owned()))
    }
}

/// A named set of prefixes of both families.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixSet {
    /// IPv4 prefixes.
    pub v4: BTreeSet<Ipv4Network>,
    /// IPv6 prefixes.
    pub v6: BTreeSet<Ipv6Network>,
}

impl PrefixSet {
    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any prefix of the set contains `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.v4.iter().any(|p| p.contains(a)),
            IpAddr::V6(a) => self.v6.iter().any(|p| p.contains(a)),
        }
    }
}

/// A change to the ACL state. Applied all or nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// Add prefixes to a set, creating it if needed.
    SetAdd {
        /// The set.
        name: String,
        /// Prefixes to add.
        prefixes: Vec<String>,
    },
    /// Remove prefixes from a set (all of them must be present).
    SetDel {
        /// The set.
        name: String,
        /// Prefixes to remove; empty removes the whole set.
        prefixes: Vec<String>,
    },
    /// Add rules (their ids must be new).
    RuleAdd {
        /// The rules.
        rules: Vec<Rule>,
    },
    /// Delete rules by id.
    RuleDel {
        /// The ids.
        ids: Vec<u32>,
    },
    /// Replace the whole rule set (sets included if given).
    Replace {
        /// The new file.
        file: RuleFile,
    },
    /// Set an interface's default policy.
    Policy {
        /// The interface.
        iface: String,
        /// Its default verdict.
        verdict: Verdict,
    },
}

/// A rule file (`acl replace --file`): sets, rules and policies, TOML.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Prefix sets by name: lists of prefixes of either family.
    #[serde(default)]
    pub sets: BTreeMap<String, Vec<String>>,
    /// Rules.
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
    /// Default policy per interface.
    #[serde(default)]
    pub policy: BTreeMap<String, Verdict>,
}

/// The whole ACL state: what the operator configured.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclState {
    /// Prefix sets by name.
    pub sets: BTreeMap<String, PrefixSet>,
    /// Rules by id.
    pub rules: BTreeMap<u32, Rule>,
    /// Default policy per interface name (absent: allow).
    pub policies: BTreeMap<String, Verdict>,
}

impl AclState {
    /// The default verdict of `iface`.
    pub fn policy(&self, iface: &str) -> Verdict {
        self.policies.get(iface).copied().unwrap_or(Verdict::Allow)
    }

    /// Rules in evaluation order.
    pub fn ordered_rules(&self) -> Vec<&Rule> {
        let mut v: Vec<&Rule> = self.rules.values().collect();
        v.sort_by_key(|r| r.order());
        v
    }

    /// Whether set `name` is referenced by a rule; returns the rule ids.
    pub fn set_users(&self, name: &str) -> Vec<u32> {
        self.rules
            .values()
            .filter(|r| {
                [&r.src, &r.dst]
                    .into_iter()
                    .flatten()
                    .any(|m| matches!(m, AddrMatch::Set(s) if s == name))
            })
            .map(|r| r.id)
            .collect()
    }
}

/// What an applied change did, as the controller reports it (the API's
/// answer to `apply`, and the log).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Rules now installed.
    pub rules: usize,
    /// Prefixes in all sets.
    pub prefixes: usize,
    /// Address classes of the new generation.
    pub address_classes: usize,
    /// Time to validate and compile (`{"secs", "nanos"}` in JSON).
    pub compile: std::time::Duration,
    /// Time to write the tables, switch and wait for the old generation to drain.
    pub install: std::time::Duration,
}

#[cfg(test)]
mod tests;

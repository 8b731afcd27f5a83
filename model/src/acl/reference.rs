//! The reference classifier: the ACL semantics of `docs/design/acl.md` written as
//! plainly as possible (a linear scan). It is the oracle the compiled tables and
//! the datapath are tested against, never used on the packet path.
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::model::{AclState, AddrMatch, Rule, RuleFamily, Verdict, proto};

/// What the classifier needs to know about an IPv4 or IPv6 packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketInfo {
    /// Source address (its family is the packet's).
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol (IPv6: next header after the extension chain, or the
    /// fragment header's next header for a later fragment).
    pub proto: u8,
    /// A fragment other than the first: no L4 fields.
    pub later_fragment: bool,
    /// Source and destination port, for TCP, UDP and SCTP (not later fragments).
    pub ports: Option<(u16, u16)>,
    /// ICMP type and code, for ICMP in IPv4 and ICMPv6 in IPv6 (not later fragments).
    pub icmp: Option<(u8, u8)>,
}

impl PacketInfo {
    /// IPv6 neighbour discovery (router/neighbour solicitation and
    /// advertisement, redirect): ICMPv6 types 133 to 137.
    pub fn is_neighbour_discovery(&self) -> bool {
        self.src.is_ipv6()
            && self.proto == proto::ICMPV6
            && self.icmp.is_some_and(|(t, _)| (133..=137).contains(&t))
    }
}

/// The outcome of classifying one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Pass or drop.
    pub verdict: Verdict,
    /// The rule that matched; `None` when the default policy or lockout
    /// protection decided.
    pub rule: Option<u32>,
}

fn addr_matches(state: &AclState, m: &AddrMatch, ip: IpAddr) -> bool {
    match (m, ip) {
        (AddrMatch::Prefix(IpNetwork::V4(p)), IpAddr::V4(a)) => p.contains(a),
        (AddrMatch::Prefix(IpNetwork::V6(p)), IpAddr::V6(a)) => p.contains(a),
        (AddrMatch::Prefix(_), _) => false,
        (AddrMatch::Set(name), ip) => state.sets.get(name).is_some_and(|s| s.contains(ip)),
    }
}

/// Whether `rule` matches `pkt` arriving on `iface`.
pub fn rule_matches(state: &AclState, rule: &Rule, iface: &str, pkt: &PacketInfo) -> bool {
    let names_nd = rule.proto == Some(proto::ICMPV6)
        && rule.icmp_type.is_some_and(|t| (133..=137).contains(&t));
    if pkt.is_neighbour_discovery() && !names_nd {
        return false;
    }
    match (rule.family(), pkt.src) {
        (RuleFamily::V4, IpAddr::V6(_)) | (RuleFamily::V6, IpAddr::V4(_)) => return false,
        _ => {}
    }
    if rule.iface.as_deref().is_some_and(|i| i != iface) {
        return false;
    }
    if rule
        .src
        .as_ref()
        .is_some_and(|m| !addr_matches(state, m, pkt.src))
    {
        return false;
    }
    if rule
        .dst
        .as_ref()
        .is_some_and(|m| !addr_matches(state, m, pkt.dst))
    {
        return false;
    }
    if rule.proto.is_some_and(|p| p != pkt.proto) {
        return false;
    }
    if rule.names_l4() && pkt.later_fragment {
        return false;
    }
    if let Some(r) = rule.sport
        && !pkt.ports.is_some_and(|(s, _)| r.contains(s))
    {
        return false;
    }
    if let Some(r) = rule.dport
        && !pkt.ports.is_some_and(|(_, d)| r.contains(d))
    {
        return false;
    }
    if let Some(t) = rule.icmp_type
        && pkt.icmp.is_none_or(|(pt, _)| pt != t)
    {
        return false;
    }
    if let Some(c) = rule.icmp_code
        && pkt.icmp.is_none_or(|(_, pc)| pc != c)
    {
        return false;
    }
    true
}

/// Classifies an IPv4 or IPv6 packet arriving on `iface`.
pub fn classify(state: &AclState, iface: &str, pkt: &PacketInfo) -> Decision {
    for rule in state.ordered_rules() {
        if rule_matches(state, rule, iface, pkt) {
            return Decision {
                verdict: rule.action,
                rule: Some(rule.id),
            };
        }
    }
    let verdict = if pkt.is_neighbour_discovery() {
        Verdict::Allow
    } else {
        state.policy(iface)
    };
    Decision {
        verdict,
        rule: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::model::{Change, RuleFile};

    fn state(text: &str) -> AclState {
        AclState::from_file(&toml::from_str::<RuleFile>(text).unwrap()).unwrap()
    }

    fn pkt(src: &str, dst: &str, proto: u8) -> PacketInfo {
        PacketInfo {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto,
            later_fragment: false,
            ports: None,
            icmp: None,
        }
    }

    const RULES: &str = r#"
        [sets]
        bad = ["192.0.2.0/24", "2001:db8:bad::/48"]

        [[rule]]
        id = 5
        priority = 10
        src = "@bad"
        action = "deny"

        [[rule]]
        id = 4
        priority = 10
        src = "192.0.2.7"
        action = "allow"

        [[rule]]
        id = 7
        priority = 20
        proto = "tcp"
        dport = "22"
        action = "allow"

        [[rule]]
        id = 8
        priority = 30
        proto = "tcp"
        action = "deny"

        [policy]
        eth0 = "deny"
    "#;

    #[test]
    fn priority_then_id_decides() {
        let s = state(RULES);
        // Rule 4 and 5 both match 192.0.2.7 at priority 10: lower id wins.
        let d = classify(&s, "eth0", &pkt("192.0.2.7", "198.51.100.1", 6));
        assert_eq!(d.rule, Some(4));
        let d = classify(&s, "eth0", &pkt("192.0.2.8", "198.51.100.1", 6));
        assert_eq!((d.rule, d.verdict), (Some(5), Verdict::Deny));
        let d = classify(&s, "eth0", &pkt("2001:db8:bad::1", "2001:db8::1", 17));
        assert_eq!(d.rule, Some(5));
    }

    #[test]
    fn ports_and_later_fragments() {
        let s = state(RULES);
        let mut p = pkt("198.51.100.9", "198.51.100.1", 6);
        p.ports = Some((40000, 22));
        assert_eq!(classify(&s, "eth0", &p).rule, Some(7));
        p.ports = Some((40000, 23));
        assert_eq!(classify(&s, "eth0", &p).rule, Some(8));
        // A later fragment skips the port rule but meets the proto-only rule.
        p.ports = None;
        p.later_fragment = true;
        assert_eq!(classify(&s, "eth0", &p).rule, Some(8));
    }

    #[test]
    fn default_policy_and_lockout() {
        let s = state(RULES);
        let p = pkt("198.51.100.9", "198.51.100.1", 17);
        assert_eq!(classify(&s, "eth0", &p).verdict, Verdict::Deny);
        assert_eq!(classify(&s, "eth1", &p).verdict, Verdict::Allow);
        let mut ns = pkt("2001:db8:bad::1", "ff02::1:ff00:1", proto::ICMPV6);
        ns.icmp = Some((135, 0));
        // Rule 5 covers the source, but ND is only matched by rules naming it.
        assert_eq!(
            classify(&s, "eth0", &ns),
            Decision {
                verdict: Verdict::Allow,
                rule: None
            }
        );
        let s = s
            .apply(&Change::RuleAdd {
                rules: vec![Rule {
                    proto: Some(proto::ICMPV6),
                    icmp_type: Some(135),
                    ..Rule::new(99, 1, Verdict::Deny)
                }],
            })
            .unwrap();
        assert_eq!(classify(&s, "eth0", &ns).rule, Some(99));
    }

    #[test]
    fn family_of_rule_is_respected() {
        let s = state(
            r#"
            [[rule]]
            id = 1
            priority = 1
            proto = 1
            action = "deny"
        "#,
        );
        // proto icmp makes rule 1 IPv4-only: an IPv6 packet with next header 1
        // does not match it.
        assert_eq!(
            classify(&s, "x", &pkt("2001:db8::1", "2001:db8::2", 1)).rule,
            None
        );
        assert_eq!(
            classify(&s, "x", &pkt("192.0.2.1", "192.0.2.2", 1)).rule,
            Some(1)
        );
    }
}

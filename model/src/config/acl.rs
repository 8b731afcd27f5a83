//! `[sets]` and `[[rule]]`: each prefix and each rule field converted on its
//! own and reported at its position; then the whole ACL validated and
//! compiled by the code that validates runtime changes, each of its errors
//! placed at the item it names (a capacity at the item that exceeds it).
use std::collections::{BTreeMap, BTreeSet};

use ipnetwork::IpNetwork;

use super::{
    Config,
    fields::{Ctx, Section, Span},
    limit::{LimitPlace, limit},
};
use crate::acl::{
    AclError, AclState, AddrMatch, PortRange, Rule, Verdict,
    compile::compile_for,
    model::{limits, parse_prefix, proto},
};

const RULE_KEYS: &[&str] = &[
    "id",
    "priority",
    "src",
    "dst",
    "proto",
    "sport",
    "dport",
    "icmp_type",
    "icmp_code",
    "iface",
    "action",
    "limit",
    "syncookie",
];

/// Where each item of the ACL is, to place the errors of the whole.
#[derive(Default)]
struct Places {
    /// Set name -> its key.
    sets: BTreeMap<String, Span>,
    /// The set keys in file order.
    set_order: Vec<Span>,
    /// Per family (0: IPv4, 1: IPv6): the item that takes the count of
    /// prefixes over the limit.
    prefix_over: [Option<Span>; 2],
    prefix_count: [usize; 2],
    /// Rule id -> the rules with that id (header, keys).
    rules: BTreeMap<u32, Vec<RulePlace>>,
    /// The header of each rule with a new id, in file order.
    rule_order: Vec<Span>,
    /// The last rule's header.
    last_rule: Option<Span>,
    /// The `[sets]` header.
    sets_header: Option<Span>,
}

struct RulePlace {
    header: Span,
    keys: BTreeMap<&'static str, Span>,
    /// The `src`/`dst` key naming each set.
    set_refs: Vec<(String, Span)>,
    /// The `limit` table's keys, if the rule has one.
    limit: Option<LimitPlace>,
}

impl Places {
    fn count_prefix(&mut self, net: &IpNetwork, at: &Span) {
        let fam = usize::from(net.is_ipv6());
        self.prefix_count[fam] += 1;
        if self.prefix_count[fam] == limits::MAX_PREFIXES_PER_FAMILY + 1 {
            self.prefix_over[fam] = Some(at.clone());
        }
    }

    /// Where the error `e` of the whole ACL belongs.
    fn of(&self, e: &AclError) -> Span {
        let fallback = self
            .last_rule
            .clone()
            .or_else(|| self.sets_header.clone())
            .unwrap_or(0..0);
        let at = match e {
            AclError::DuplicateRule(id) => self
                .rules
                .get(id)
                .and_then(|v| v.get(1))
                .map(|r| r.keys.get("id").cloned().unwrap_or(r.header.clone())),
            AclError::BadSetName(n) | AclError::NoSuchSet(n) => self.sets.get(n).cloned(),
            AclError::Capacity { what, max, .. } => match *what {
                "rules" => self.rule_order.get(*max).cloned(),
                "prefix sets" => self.set_order.get(*max).cloned(),
                "IPv4 prefixes" => self.prefix_over[0].clone(),
                "IPv6 prefixes" => self.prefix_over[1].clone(),
                _ => None,
            },
            _ => None,
        };
        at.unwrap_or(fallback)
    }
}

/// Converts `[sets]` and the `[[rule]]` entries into `cfg.acl` (with the
/// interfaces' default policies), reporting every error.
pub(super) fn acl(
    cx: &mut Ctx<'_>,
    sets: Option<&Section<'_, '_>>,
    rules: &[(Section<'_, '_>, usize)],
    names: &BTreeSet<String>,
    cfg: &mut Config,
) {
    let mut places = Places {
        sets_header: sets.map(|s| s.span.clone()),
        ..Places::default()
    };
    if let Some(s) = sets {
        for (name, _) in s.table {
            let name = name.get_ref().to_string();
            let Some((list, at)) = cx.strings(s, &name) else {
                continue;
            };
            places.sets.insert(name.clone(), at.clone());
            places.set_order.push(at);
            let mut seen = BTreeSet::new();
            for (p, at) in &list {
                match parse_prefix(p) {
                    Ok(net) => {
                        if seen.insert(net) {
                            places.count_prefix(&net, at);
                        }
                    }
                    Err(e) => cx.push(at, format!("[sets] {name}: {e}")),
                }
            }
            cfg.acl
                .sets
                .insert(name, list.into_iter().map(|(p, _)| p).collect());
        }
    }
    for (s, _) in rules {
        places.last_rule = Some(s.span.clone());
        let Some((rule, place)) = rule(cx, s, names, &cfg.acl.sets) else {
            continue;
        };
        for m in [&rule.src, &rule.dst].into_iter().flatten() {
            if let AddrMatch::Prefix(net) = m {
                let at = place.header.clone();
                places.count_prefix(net, &at);
            }
        }
        let same = places.rules.entry(rule.id).or_default();
        if same.is_empty() {
            places.rule_order.push(place.header.clone());
        }
        same.push(place);
        cfg.acl.rules.push(rule);
    }
    for i in &cfg.interfaces {
        cfg.acl.policy.insert(i.name.clone(), i.policy);
    }
    let errors = match AclState::from_file(&cfg.acl) {
        // Too many interfaces (reported at the first one too many) have no
        // slots to compile for.
        Ok(_) if cfg.interfaces.len() >= xdpgate_common::MAX_IFACES as usize => Vec::new(),
        Ok(state) => compile_for(&state, &cfg.slots(), &cfg.capacities)
            .err()
            .unwrap_or_default(),
        Err(errs) => errs,
    };
    for e in errors {
        // Bad prefixes, contradictory rules and unknown sets were reported
        // item by item.
        if matches!(
            e,
            AclError::BadPrefix(..) | AclError::BadRule { .. } | AclError::UnknownSet { .. }
        ) {
            continue;
        }
        cx.push(&places.of(&e), e.to_string());
    }
}

/// One `[[rule]]`, field by field; `None` if a field has an error (each is
/// reported) or a required one is missing.
fn rule(
    cx: &mut Ctx<'_>,
    s: &Section<'_, '_>,
    names: &BTreeSet<String>,
    sets: &BTreeMap<String, Vec<String>>,
) -> Option<(Rule, RulePlace)> {
    cx.known_keys(s, RULE_KEYS);
    let mut place = RulePlace {
        header: s.span.clone(),
        keys: RULE_KEYS
            .iter()
            .filter_map(|k| s.key(k).map(|at| (*k, at)))
            .collect(),
        set_refs: Vec::new(),
        limit: None,
    };
    let mut ok = true;
    let required = |cx: &mut Ctx<'_>, key: &str, hint: &str| {
        if s.key(key).is_none() {
            cx.missing(s, key, hint);
        }
    };
    required(cx, "id", "a number that names the rule, e.g. id = 10");
    required(
        cx,
        "priority",
        "lower is evaluated first, e.g. priority = 100",
    );
    required(cx, "action", "action = \"allow\" or action = \"deny\"");
    let id = cx.integer(s, "id", 0..=i64::from(u32::MAX));
    let priority = cx.integer(s, "priority", 0..=i64::from(u32::MAX));
    let action = match cx.string(s, "action") {
        Some((a, _)) if a == "allow" => Some(Verdict::Allow),
        Some((a, _)) if a == "deny" => Some(Verdict::Deny),
        Some((a, at)) => {
            cx.push(
                &at,
                format!("{}: action = {a:?}: use \"allow\" or \"deny\"", s.name),
            );
            None
        }
        None => None,
    };
    let addr = |cx: &mut Ctx<'_>, key: &str, place: &mut RulePlace, ok: &mut bool| {
        let (text, at) = cx.string(s, key).or_else(|| {
            *ok &= s.key(key).is_none();
            None
        })?;
        match text.parse::<AddrMatch>() {
            Ok(m) => {
                if let AddrMatch::Set(name) = &m {
                    place.set_refs.push((name.clone(), at));
                }
                Some(m)
            }
            Err(e) => {
                cx.push(&at, format!("{}: {key}: {e}", s.name));
                *ok = false;
                None
            }
        }
    };
    let src = addr(cx, "src", &mut place, &mut ok);
    let dst = addr(cx, "dst", &mut place, &mut ok);
    let proto = protocol(cx, s, &mut ok);
    let sport = port_range(cx, s, "sport", &mut ok);
    let dport = port_range(cx, s, "dport", &mut ok);
    let mut byte = |cx: &mut Ctx<'_>, key: &str| {
        let v = cx.integer(s, key, 0..=255).map(|(n, _)| n as u8);
        ok &= v.is_some() || s.key(key).is_none();
        v
    };
    let icmp_type = byte(cx, "icmp_type");
    let icmp_code = byte(cx, "icmp_code");
    let iface = cx.string(s, "iface");
    if s.key("iface").is_some() && iface.is_none() {
        ok = false;
    }
    let limit = limit(cx, s, &mut ok).map(|(l, at)| {
        place.limit = Some(at);
        l
    });
    let syncookie = cx.boolean(s, "syncookie");
    ok &= syncookie.is_some() || s.key("syncookie").is_none();
    // References are checked even when another field is wrong.
    let who = match &id {
        Some((n, _)) => format!("rule {n}"),
        None => s.name.clone(),
    };
    for (set, at) in &place.set_refs {
        if !sets.contains_key(set) {
            cx.push(at, format!("{who}: unknown set @{set}"));
        }
    }
    if let Some((ifc, at)) = &iface
        && !names.contains(ifc)
    {
        cx.push(
            at,
            format!("{who}: iface {ifc} is not one of the [[interface]] entries"),
        );
    }
    let (Some((id, _)), Some((priority, _)), Some(action), true) = (id, priority, action, ok)
    else {
        return None;
    };
    let rule = Rule {
        src,
        dst,
        proto,
        sport,
        dport,
        icmp_type,
        icmp_code,
        iface: iface.map(|(i, _)| i),
        limit,
        syncookie: syncookie.unwrap_or(false),
        ..Rule::new(id as u32, priority as u32, action)
    };
    for e in rule.check() {
        let at = match &e {
            AclError::BadRule { reason, .. } => bad_rule_key(&place, reason),
            _ => None,
        };
        cx.push(&at.unwrap_or(place.header.clone()), e.to_string());
    }
    Some((rule, place))
}

/// The key a contradiction found by [`Rule::check`] belongs to.
fn bad_rule_key(place: &RulePlace, reason: &str) -> Option<Span> {
    let key = |k: &str| place.keys.get(k).cloned();
    if reason.starts_with("ports need") {
        key("dport").or_else(|| key("sport"))
    } else if reason.starts_with("icmp_type") {
        key("icmp_type")
    } else if reason.starts_with("icmp_code") {
        key("icmp_code")
    } else if reason.starts_with("iface") {
        key("iface")
    } else if reason.starts_with("syncookie") {
        key("syncookie")
    } else if reason.starts_with("a limit") {
        key("limit")
    } else if let Some(at) = place.limit.as_ref().and_then(|l| l.of(reason)) {
        Some(at)
    } else if reason.starts_with("mixes") {
        // The last of the fields that fix a family brings the conflict.
        ["src", "dst", "proto"]
            .iter()
            .filter_map(|k| key(k))
            .max_by_key(|at| at.start)
    } else {
        None
    }
}

/// `proto`: a name (tcp, udp, sctp, icmp, icmpv6) or a number 0-255.
fn protocol(cx: &mut Ctx<'_>, s: &Section<'_, '_>, ok: &mut bool) -> Option<u8> {
    let (at, v) = s.get("proto")?;
    let got = match v.get_ref() {
        toml::de::DeValue::String(t) => proto::parse(t).map_err(|e| e.to_string()),
        toml::de::DeValue::Integer(_) => {
            return cx
                .integer(s, "proto", 0..=255)
                .map(|(n, _)| n as u8)
                .or_else(|| {
                    *ok = false;
                    None
                });
        }
        other => Err(format!(
            "must be a name (tcp, udp, sctp, icmp, icmpv6) or a number 0-255, not {}",
            super::fields::kind(other)
        )),
    };
    got.map_err(|why| {
        cx.push(&at, format!("{}: proto {why}", s.name));
        *ok = false;
    })
    .ok()
}

/// `sport`/`dport`: a port number or a range "A-B".
fn port_range(
    cx: &mut Ctx<'_>,
    s: &Section<'_, '_>,
    key: &str,
    ok: &mut bool,
) -> Option<PortRange> {
    let (at, v) = s.get(key)?;
    let got = match v.get_ref() {
        toml::de::DeValue::String(t) => t.parse::<PortRange>().map_err(|e| match e {
            AclError::BadValue { reason, .. } => reason,
            other => other.to_string(),
        }),
        toml::de::DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .ok()
            .and_then(|n| u16::try_from(n).ok())
            .map(|p| PortRange { lo: p, hi: p })
            .ok_or_else(|| format!("{i} is not a port (0-65535)")),
        other => Err(format!(
            "must be a port number or a range \"A-B\", not {}",
            super::fields::kind(other)
        )),
    };
    got.map_err(|why| {
        cx.push(&at, format!("{}: {key} = {why}", s.name));
        *ok = false;
    })
    .ok()
}

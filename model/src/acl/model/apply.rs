//! Changes applied to the state in place, validated against the state plus
//! the change: no copy of the state (at a million prefixes per family the
//! copy alone took 10-19 ms of every change), and an [`Undo`] that puts the
//! state back when the change is rejected or cannot be installed.
use std::collections::BTreeSet;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::{
    AclError, AclState, AddrMatch, Change, PrefixSet, Rule, RuleFile, Verdict, check_set_name,
    limits, parse_prefix,
};

/// What [`AclState::apply_in_place`] changed, to put it back with
/// [`AclState::undo`].
#[derive(Debug)]
#[must_use = "an applied change is undone only through its Undo"]
pub enum Undo {
    /// Prefixes added to set `name` (only those that were not in it).
    SetAdd {
        /// The set.
        name: String,
        /// Whether the change created the set.
        created: bool,
        /// IPv4 prefixes added.
        v4: Vec<Ipv4Network>,
        /// IPv6 prefixes added.
        v6: Vec<Ipv6Network>,
    },
    /// Prefixes removed from set `name`.
    SetDel {
        /// The set.
        name: String,
        /// IPv4 prefixes removed.
        v4: Vec<Ipv4Network>,
        /// IPv6 prefixes removed.
        v6: Vec<Ipv6Network>,
    },
    /// A whole set removed.
    SetRemoved {
        /// The set's name.
        name: String,
        /// Its prefixes.
        set: PrefixSet,
    },
    /// Rules added or removed.
    Rules {
        /// Ids written, in order, with the rule each replaced (only a
        /// rejected change replaces one: a duplicate id).
        inserted: Vec<(u32, Option<Rule>)>,
        /// Rules removed, in order.
        removed: Vec<Rule>,
    },
    /// The whole state replaced: the state before.
    Replaced(Box<AclState>),
    /// Nothing changed (a replacement that did not build).
    Unchanged,
    /// An interface's default policy set: its policy before.
    Policy {
        /// The interface.
        iface: String,
        /// Its policy before (absent: allow).
        before: Option<Verdict>,
    },
}

impl Undo {
    /// The rules the change removed (for the incremental compiler, which
    /// needs the rules before the change).
    pub fn removed_rules(&self) -> &[Rule] {
        match self {
            Undo::Rules { removed, .. } => removed,
            _ => &[],
        }
    }
}

impl AclState {
    /// Applies `change` to a copy of the state and validates the result. On any
    /// error the state is untouched and every error found is returned.
    pub fn apply(&self, change: &Change) -> Result<AclState, Vec<AclError>> {
        let mut next = self.clone();
        let _applied = next.apply_in_place(change)?;
        Ok(next)
    }

    /// Applies `change` to the state itself and validates what it changed
    /// (the rules it adds, the set it removes, the capacities), assuming the
    /// state was valid before (every state a controller holds is). On any
    /// error the state is as before and every error found is returned; on
    /// success the [`Undo`] puts the state back.
    pub fn apply_in_place(&mut self, change: &Change) -> Result<Undo, Vec<AclError>> {
        let mut errs = Vec::new();
        let undo = self.change(change, &mut errs);
        if let Undo::Rules { inserted, .. } = &undo {
            for (id, _) in inserted {
                if let Some(r) = self.rules.get(id) {
                    self.rule_errors(r, &mut errs);
                }
            }
        }
        self.capacity_errors(&mut errs);
        if errs.is_empty() {
            Ok(undo)
        } else {
            self.undo(undo);
            Err(errs)
        }
    }

    /// Puts back what [`AclState::apply_in_place`] changed.
    pub fn undo(&mut self, undo: Undo) {
        match undo {
            Undo::SetAdd {
                name,
                created,
                v4,
                v6,
            } => {
                if created {
                    self.sets.remove(&name);
                } else if let Some(set) = self.sets.get_mut(&name) {
                    for p in &v4 {
                        set.v4.remove(p);
                    }
                    for p in &v6 {
                        set.v6.remove(p);
                    }
                }
            }
            Undo::SetDel { name, v4, v6 } => {
                if let Some(set) = self.sets.get_mut(&name) {
                    set.v4.extend(v4);
                    set.v6.extend(v6);
                }
            }
            Undo::SetRemoved { name, set } => {
                self.sets.insert(name, set);
            }
            Undo::Rules { inserted, removed } => {
                for (id, before) in inserted.into_iter().rev() {
                    match before {
                        Some(r) => self.rules.insert(id, r),
                        None => self.rules.remove(&id),
                    };
                }
                for r in removed {
                    self.rules.insert(r.id, r);
                }
            }
            Undo::Replaced(before) => *self = *before,
            Undo::Unchanged => {}
            Undo::Policy { iface, before } => {
                match before {
                    Some(v) => self.policies.insert(iface, v),
                    None => self.policies.remove(&iface),
                };
            }
        }
    }

    /// Makes `change`, pushing the errors of the change itself (not of the
    /// resulting state) into `errs`.
    fn change(&mut self, change: &Change, errs: &mut Vec<AclError>) -> Undo {
        match change {
            Change::SetAdd { name, prefixes } => {
                if let Err(e) = check_set_name(name) {
                    errs.push(e);
                }
                let created = !self.sets.contains_key(name);
                let set = self.sets.entry(name.clone()).or_default();
                let (mut v4, mut v6) = (Vec::new(), Vec::new());
                for p in prefixes {
                    match parse_prefix(p) {
                        Ok(IpNetwork::V4(n)) => {
                            if set.v4.insert(n) {
                                v4.push(n);
                            }
                        }
                        Ok(IpNetwork::V6(n)) => {
                            if set.v6.insert(n) {
                                v6.push(n);
                            }
                        }
                        Err(e) => errs.push(e),
                    }
                }
                Undo::SetAdd {
                    name: name.clone(),
                    created,
                    v4,
                    v6,
                }
            }
            Change::SetDel { name, prefixes } => {
                let (mut v4, mut v6) = (Vec::new(), Vec::new());
                if !self.sets.contains_key(name) {
                    errs.push(AclError::NoSuchSet(name.clone()));
                    return Undo::Unchanged;
                } else if prefixes.is_empty() {
                    let rules = self.set_users(name);
                    if rules.is_empty()
                        && let Some(set) = self.sets.remove(name)
                    {
                        return Undo::SetRemoved {
                            name: name.clone(),
                            set,
                        };
                    }
                    errs.push(AclError::SetInUse {
                        set: name.clone(),
                        rules,
                    });
                } else if let Some(set) = self.sets.get_mut(name) {
                    for p in prefixes {
                        match parse_prefix(p) {
                            Ok(IpNetwork::V4(n)) if set.v4.remove(&n) => v4.push(n),
                            Ok(IpNetwork::V6(n)) if set.v6.remove(&n) => v6.push(n),
                            Ok(n) => errs.push(AclError::BadPrefix(
                                n.to_string(),
                                format!("not in set {name}"),
                            )),
                            Err(e) => errs.push(e),
                        }
                    }
                }
                Undo::SetDel {
                    name: name.clone(),
                    v4,
                    v6,
                }
            }
            Change::RuleAdd { rules } => {
                let mut inserted = Vec::with_capacity(rules.len());
                for r in rules {
                    let before = self.rules.insert(r.id, r.clone());
                    if before.is_some() {
                        errs.push(AclError::DuplicateRule(r.id));
                    }
                    inserted.push((r.id, before));
                }
                Undo::Rules {
                    inserted,
                    removed: Vec::new(),
                }
            }
            Change::RuleDel { ids } => {
                let mut removed = Vec::with_capacity(ids.len());
                for id in ids {
                    match self.rules.remove(id) {
                        Some(r) => removed.push(r),
                        None => errs.push(AclError::NoSuchRule(*id)),
                    }
                }
                Undo::Rules {
                    inserted: Vec::new(),
                    removed,
                }
            }
            Change::Replace { file } => match AclState::from_file(file) {
                Ok(state) => Undo::Replaced(Box::new(std::mem::replace(self, state))),
                Err(e) => {
                    errs.extend(e);
                    Undo::Unchanged
                }
            },
            Change::Policy { iface, verdict } => {
                if iface.is_empty() || iface.len() > 15 {
                    errs.push(AclError::BadValue {
                        field: "iface",
                        reason: format!("{iface:?} is not an interface name"),
                    });
                }
                Undo::Policy {
                    iface: iface.clone(),
                    before: self.policies.insert(iface.clone(), *verdict),
                }
            }
        }
    }

    /// Builds a state from a rule file, validating it.
    pub fn from_file(file: &RuleFile) -> Result<AclState, Vec<AclError>> {
        let mut state = AclState {
            policies: file.policy.clone(),
            ..Default::default()
        };
        let mut errs = Vec::new();
        for (name, prefixes) in &file.sets {
            let added = state.apply_in_place(&Change::SetAdd {
                name: name.clone(),
                prefixes: prefixes.clone(),
            });
            if let Err(e) = added {
                errs.extend(e);
            }
        }
        let mut seen = BTreeSet::new();
        for r in &file.rules {
            if !seen.insert(r.id) {
                errs.push(AclError::DuplicateRule(r.id));
            }
            state.rules.insert(r.id, r.clone());
        }
        errs.extend(state.validate());
        if errs.is_empty() {
            Ok(state)
        } else {
            Err(errs)
        }
    }

    /// Every error in the state (empty when valid).
    pub fn validate(&self) -> Vec<AclError> {
        let mut errs = Vec::new();
        for r in self.rules.values() {
            self.rule_errors(r, &mut errs);
        }
        self.capacity_errors(&mut errs);
        errs
    }

    /// The errors of rule `r` in this state: its own, and sets it names
    /// that do not exist.
    fn rule_errors(&self, r: &Rule, errs: &mut Vec<AclError>) {
        errs.extend(r.check());
        for m in [&r.src, &r.dst].into_iter().flatten() {
            if let AddrMatch::Set(s) = m
                && !self.sets.contains_key(s)
            {
                errs.push(AclError::UnknownSet {
                    rule: r.id,
                    set: s.clone(),
                });
            }
        }
    }

    /// The capacities the state exceeds.
    fn capacity_errors(&self, errs: &mut Vec<AclError>) {
        let cap = |errs: &mut Vec<AclError>, what, have, max| {
            if have > max {
                errs.push(AclError::Capacity { what, have, max });
            }
        };
        cap(errs, "rules", self.rules.len(), limits::MAX_RULES);
        cap(errs, "prefix sets", self.sets.len(), limits::MAX_SETS);
        let (mut v4, mut v6) = (0, 0);
        for s in self.sets.values() {
            v4 += s.v4.len();
            v6 += s.v6.len();
        }
        for r in self.rules.values() {
            for m in [&r.src, &r.dst].into_iter().flatten() {
                match m {
                    AddrMatch::Prefix(IpNetwork::V4(_)) => v4 += 1,
                    AddrMatch::Prefix(IpNetwork::V6(_)) => v6 += 1,
                    AddrMatch::Set(_) => {}
                }
            }
        }
        cap(errs, "IPv4 prefixes", v4, limits::MAX_PREFIXES_PER_FAMILY);
        cap(errs, "IPv6 prefixes", v6, limits::MAX_PREFIXES_PER_FAMILY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set `block` (two prefixes of each family), set `spare` (one), rule 1
    /// naming `block`, rule 2 a plain deny, a policy on eth0.
    fn base() -> AclState {
        AclState::from_file(
            &toml::from_str(
                r#"
                [sets]
                block = ["10.0.0.0/8", "192.0.2.0/24", "fc00::/7", "2001:db8::/32"]
                spare = ["198.51.100.0/24"]

                [[rule]]
                id = 1
                priority = 10
                src = "@block"
                action = "deny"

                [[rule]]
                id = 2
                priority = 20
                action = "deny"

                [policy]
                eth0 = "deny"
                "#,
            )
            .expect("rule file"),
        )
        .expect("state")
    }

    fn set_add(name: &str, prefixes: &[&str]) -> Change {
        Change::SetAdd {
            name: name.into(),
            prefixes: prefixes.iter().map(ToString::to_string).collect(),
        }
    }

    fn set_del(name: &str, prefixes: &[&str]) -> Change {
        Change::SetDel {
            name: name.into(),
            prefixes: prefixes.iter().map(ToString::to_string).collect(),
        }
    }

    fn deny_from(id: u32, src: &str) -> Rule {
        Rule {
            src: Some(AddrMatch::Prefix(src.parse().expect("prefix"))),
            ..Rule::new(id, 5, Verdict::Deny)
        }
    }

    /// Changes that are valid on [`base`], each of another kind.
    fn valid() -> Vec<(&'static str, Change)> {
        vec![
            (
                "prefixes added, one already in the set",
                set_add(
                    "block",
                    &["203.0.113.0/24", "10.0.0.0/8", "2001:db8:1::/48"],
                ),
            ),
            ("a new set", set_add("fresh", &["203.0.113.7/32"])),
            (
                "prefixes removed",
                set_del("block", &["192.0.2.0/24", "fc00::/7"]),
            ),
            ("a whole set no rule names removed", set_del("spare", &[])),
            (
                "rules added",
                Change::RuleAdd {
                    rules: vec![
                        deny_from(3, "203.0.113.1/32"),
                        deny_from(4, "2001:db8::1/128"),
                    ],
                },
            ),
            ("rules removed", Change::RuleDel { ids: vec![2, 1] }),
            (
                "a policy changed",
                Change::Policy {
                    iface: "eth0".into(),
                    verdict: Verdict::Allow,
                },
            ),
            (
                "a policy set",
                Change::Policy {
                    iface: "eth1".into(),
                    verdict: Verdict::Deny,
                },
            ),
            (
                "the whole state replaced",
                Change::Replace {
                    file: toml::from_str("[sets]\nother = [\"203.0.113.0/24\"]").unwrap(),
                },
            ),
        ]
    }

    #[test]
    fn a_change_made_in_place_equals_the_same_change_on_a_copy_and_its_undo_restores_the_state() {
        for (name, change) in valid() {
            let before = base();
            let on_copy = before.apply(&change).expect(name);
            let mut state = before.clone();
            let undo = state.apply_in_place(&change).expect(name);
            assert_eq!(state, on_copy, "{name}: in place");
            assert_ne!(state, before, "{name}: the change changed something");
            state.undo(undo);
            assert_eq!(state, before, "{name}: undone");
        }
    }

    #[test]
    fn a_rejected_change_leaves_the_state_as_it_was_and_lists_every_error() {
        let mut full = base();
        for i in 0..limits::MAX_SETS - 2 {
            full.sets
                .insert(format!("s{i}"), base().sets["spare"].clone());
        }
        struct Case {
            name: &'static str,
            state: AclState,
            change: Change,
            errors: usize,
        }
        let cases = [
            Case {
                name: "a bad prefix among good ones",
                state: base(),
                change: set_add("block", &["203.0.113.0/24", "203.0.113.1/24"]),
                errors: 1,
            },
            Case {
                name: "a new set with a bad name and a bad prefix",
                state: base(),
                change: set_add("no spaces", &["203.0.113.0/24", "nope"]),
                errors: 2,
            },
            Case {
                name: "a present prefix and one the set does not hold",
                state: base(),
                change: set_del("block", &["10.0.0.0/8", "203.0.113.0/24"]),
                errors: 1,
            },
            Case {
                name: "a whole set a rule names",
                state: base(),
                change: set_del("block", &[]),
                errors: 1,
            },
            Case {
                name: "a set that does not exist",
                state: base(),
                change: set_del("nope", &["10.0.0.0/8"]),
                errors: 1,
            },
            Case {
                name: "a good rule, one with an id in use, one naming a missing set",
                state: base(),
                change: Change::RuleAdd {
                    rules: vec![
                        deny_from(3, "203.0.113.1/32"),
                        deny_from(1, "203.0.113.2/32"),
                        Rule {
                            src: Some(AddrMatch::Set("nope".into())),
                            ..Rule::new(4, 5, Verdict::Deny)
                        },
                    ],
                },
                errors: 2,
            },
            Case {
                name: "the same new id twice",
                state: base(),
                change: Change::RuleAdd {
                    rules: vec![
                        deny_from(3, "203.0.113.1/32"),
                        deny_from(3, "203.0.113.2/32"),
                    ],
                },
                errors: 1,
            },
            Case {
                name: "a present rule and a missing one",
                state: base(),
                change: Change::RuleDel { ids: vec![1, 9] },
                errors: 1,
            },
            Case {
                name: "a replacement with a rule naming a missing set",
                state: base(),
                change: Change::Replace {
                    file: toml::from_str(
                        "[[rule]]\nid = 1\npriority = 1\nsrc = \"@nope\"\naction = \"deny\"",
                    )
                    .unwrap(),
                },
                errors: 1,
            },
            Case {
                name: "a policy of a name too long for an interface",
                state: base(),
                change: Change::Policy {
                    iface: "a-very-long-interface".into(),
                    verdict: Verdict::Deny,
                },
                errors: 1,
            },
            Case {
                name: "a set over the capacity",
                state: full,
                change: set_add("one-too-many", &["203.0.113.0/24"]),
                errors: 1,
            },
        ];
        for case in cases {
            let mut state = case.state.clone();
            let errs = state.apply_in_place(&case.change).unwrap_err();
            assert_eq!(errs.len(), case.errors, "{}: {errs:?}", case.name);
            assert_eq!(state, case.state, "{}: the state", case.name);
        }
    }
}

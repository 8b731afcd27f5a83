//! The ACL controller: the one writer of the ACL tables. It holds the
//! operator's state, validates every change against it, compiles the result,
//! keeps each unchanged rule on its counter slot, and installs the new
//! generation, all or nothing.
use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use serde::Serialize;
use thiserror::Error;
use xdpgate_common::acl::MAX_RULES;

use crate::{
    acl::{AclError, AclState, Change, Rule, compile::compile},
    datapath::{Datapath, DatapathError},
};

/// Why a change was not applied. In every case the running datapath and the
/// controller's state are unchanged.
#[derive(Debug, Error)]
pub enum ApplyError {
    /// The change is invalid or exceeds a capacity.
    #[error("rejected: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<AclError>),
    /// Writing the new generation failed.
    #[error("datapath: {0}")]
    Datapath(#[from] DatapathError),
}

/// What an applied change did.
#[derive(Clone, Debug, Serialize)]
pub struct Applied {
    /// Rules now installed.
    pub rules: usize,
    /// Prefixes in all sets.
    pub prefixes: usize,
    /// Address classes of the new generation.
    pub address_classes: usize,
    /// Time to validate and compile.
    pub compile: Duration,
    /// Time to write the tables, switch and wait for the old generation to drain.
    pub install: Duration,
}

/// A rule with its counters.
#[derive(Clone, Debug, Serialize)]
pub struct RuleCounters {
    /// The rule.
    #[serde(flatten)]
    pub rule: Rule,
    /// Packets it matched.
    pub packets: u64,
    /// Bytes it matched.
    pub bytes: u64,
}

/// The controller. See the module documentation.
#[derive(Debug)]
pub struct AclController {
    state: AclState,
    slots: BTreeMap<String, u32>,
    counter_of: HashMap<Rule, u32>,
    free: Vec<u32>,
}

impl AclController {
    /// A controller for the interfaces in `slots` (name -> counter slot), with an
    /// empty state: nothing is installed until the first [`AclController::install`].
    pub fn new(slots: BTreeMap<String, u32>) -> Self {
        AclController {
            state: AclState::default(),
            slots,
            counter_of: HashMap::new(),
            free: (0..MAX_RULES).rev().collect(),
        }
    }

    /// The installed state.
    pub fn state(&self) -> &AclState {
        &self.state
    }

    /// The interfaces and their slots.
    pub fn slots(&self) -> &BTreeMap<String, u32> {
        &self.slots
    }

    /// Validates `change` against the installed state and installs the result.
    pub fn apply(&mut self, dp: &mut Datapath, change: &Change) -> Result<Applied, ApplyError> {
        let t0 = Instant::now();
        let next = self.state.apply(change).map_err(ApplyError::Invalid)?;
        self.install_timed(dp, next, t0)
    }

    /// Installs a whole (already validated) state.
    pub fn install(&mut self, dp: &mut Datapath, next: AclState) -> Result<Applied, ApplyError> {
        let errs = next.validate();
        if !errs.is_empty() {
            return Err(ApplyError::Invalid(errs));
        }
        self.install_timed(dp, next, Instant::now())
    }

    fn install_timed(
        &mut self,
        dp: &mut Datapath,
        next: AclState,
        t0: Instant,
    ) -> Result<Applied, ApplyError> {
        let image = compile(&next, &self.slots).map_err(ApplyError::Invalid)?;
        let compiled = t0.elapsed();

        // Counter slots: unchanged rules keep theirs; new rules take free ones.
        let mut free = self.free.clone();
        let mut counter_of = HashMap::with_capacity(image.rule_ids.len());
        let mut counters = Vec::with_capacity(image.rule_ids.len());
        let mut fresh = Vec::new();
        for id in &image.rule_ids {
            let rule = &next.rules[id];
            let slot = match self.counter_of.get(rule) {
                Some(s) => *s,
                None => {
                    let s = free.pop().ok_or_else(|| {
                        ApplyError::Invalid(vec![AclError::Capacity {
                            what: "rule counters",
                            have: image.rule_ids.len(),
                            max: MAX_RULES as usize,
                        }])
                    })?;
                    fresh.push(s);
                    s
                }
            };
            counter_of.insert(rule.clone(), slot);
            counters.push(slot);
        }
        let t1 = Instant::now();
        dp.apply_acl(&image, &counters, &fresh)?;
        // Installed: release the slots of rules that are gone.
        for (rule, slot) in &self.counter_of {
            if !counter_of.contains_key(rule) {
                free.push(*slot);
            }
        }
        self.free = free;
        self.counter_of = counter_of;
        self.state = next;
        Ok(Applied {
            rules: self.state.rules.len(),
            prefixes: self.state.sets.values().map(|s| s.len()).sum(),
            address_classes: image.stats().addr_classes,
            compile: compiled,
            install: t1.elapsed(),
        })
    }

    /// Every rule in evaluation order with its counters.
    pub fn rule_counters(&self, dp: &Datapath) -> Result<Vec<RuleCounters>, DatapathError> {
        self.state
            .ordered_rules()
            .into_iter()
            .map(|r| {
                let (packets, bytes) = match self.counter_of.get(r) {
                    Some(slot) => dp.rule_counter(*slot)?,
                    None => (0, 0),
                };
                Ok(RuleCounters {
                    rule: r.clone(),
                    packets,
                    bytes,
                })
            })
            .collect()
    }

    /// Packets and bytes that fell to `iface`'s default policy.
    pub fn default_counters(
        &self,
        dp: &Datapath,
        iface: &str,
    ) -> Result<(u64, u64), DatapathError> {
        match self.slots.get(iface) {
            Some(slot) => dp.rule_counter(MAX_RULES + slot),
            None => Ok((0, 0)),
        }
    }
}

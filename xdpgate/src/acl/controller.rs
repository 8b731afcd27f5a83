//! The ACL controller: the one writer of the ACL tables. It holds the
//! operator's state, validates every change against it, compiles the result,
//! keeps each unchanged rule on its counter slot, and installs the new
//! generation, all or nothing.
//!
//! An install, in this order (through [`AclTables`]): write every table of
//! the idle generation (packets read only the live one), zero the counter
//! slots of new rules (free until now), switch the live generation with one
//! update of the configuration word, and wait until no packet can still be
//! using the old generation (only then may the next install overwrite it).
//! A failure before the switch leaves the live generation as it was; a
//! failed wait after the switch switches back. In every failed case the
//! controller's state (rules, counter slots) is unchanged.
//!
//! Incremental updates (`docs/design/acl.md`, "Incremental updates"): the
//! controller keeps the compiled tables ([`Incremental`]) and, after each
//! install, writes them into the generation that just went idle too, so
//! both generations hold the same tables. A change of prefixes or rules is
//! then compiled into a [`Delta`] (the entries that change), written into
//! the idle generation, switched to and waited for as above, and written
//! into the other generation (by [`AclController::apply`] before it returns;
//! after [`AclController::apply_deferred`], by [`AclController::finish`],
//! which the daemon calls after its answer, and which every change calls
//! first). A failed write of that second copy leaves it
//! stale: the next change writes the idle generation whole from the kept
//! tables (which equal the live ones) instead of the delta. A change the
//! incremental compiler does not take (a replacement, a policy, a range too
//! wide) is compiled and written in full.
//!
//! A change that needs the phased tables rebuilt (a rule, a new address
//! class) is installed into a generation that walks the rule bitmaps, and
//! the phased tables are rebuilt on a thread and switched to later
//! ([`AclController::install_rebuilt`], module `rebuild`).
//!
//! A change is made in the controller's state itself and validated there
//! (`AclState::apply_in_place`: no copy of the state); a change rejected or
//! not installed is undone. Readers get a copy of the state kept beside it
//! ([`AclController::shared_state`]).
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Instant,
};

use serde::Serialize;
use thiserror::Error;
use xdpgate_common::acl::MAX_RULES;
use xdpgate_model::acl::{
    AclError, AclState, Applied, Change, Rule, Undo,
    compile::{
        Capacities, Image,
        incr::{Delta, Fallback, Incremental},
    },
};

use crate::{
    cancel::{self, Cancelled},
    datapath::{AclTables, DatapathError, RuleLimitStats},
};

/// Why a change was not applied. In every case the running datapath and the
/// controller's state are unchanged.
#[derive(Debug, Error)]
pub enum ApplyError {
    /// The change is invalid or exceeds a capacity.
    #[error("rejected: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<AclError>),
    /// Writing the new generation failed; the live generation is unchanged.
    #[error("datapath: {0}")]
    Datapath(#[from] DatapathError),
    /// The write stopped at a cancellation point before the switch (the
    /// daemon shuts down or the client went away).
    #[error("{0} (nothing was changed)")]
    Cancelled(#[from] Cancelled),
    /// The wait after the switch failed, and switching back failed too: the
    /// new generation may be live while the controller keeps the old state.
    #[error("datapath: {cause}; switching back to the previous generation failed too: {undo}")]
    Rollback {
        /// The failure of the install.
        cause: Box<DatapathError>,
        /// The failure of switching back.
        undo: Box<DatapathError>,
    },
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
    /// Its limit and cookie counters (`rule_stat` order), for a rule with
    /// a limit or `syncookie`.
    #[serde(skip)]
    pub limits: Option<RuleLimitStats>,
}

/// Where the time of the last change went (for the benchmark and logs),
/// each from the call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpdateTiming {
    /// Whether the change went through the incremental compiler.
    pub incremental: bool,
    /// To the validated next state (the change made in place).
    pub validated: std::time::Duration,
    /// To the compiled tables (or delta), counter slots included.
    pub compiled: std::time::Duration,
    /// To the tables written into the idle generation.
    pub written: std::time::Duration,
    /// To the switch: from then on every packet that starts sees the change.
    pub switched: std::time::Duration,
    /// To the end of the grace period: no packet still uses the old
    /// generation (the change is enforced for every packet).
    pub enforced: std::time::Duration,
    /// To the return: with the second copy written, unless it was deferred
    /// ([`AclController::apply_deferred`]).
    pub total: std::time::Duration,
}

/// The copy of the state handed to readers ([`AclController::shared_state`]):
/// the daemon's snapshot for the reads during a change, and its journal
/// compaction. The controller changes its own state in place; the changes
/// since the copy was last handed out are replayed into it when it is asked
/// for (microseconds each; the copy is cloned only when a reader still holds
/// it, and after a whole install).
#[derive(Clone, Default)]
struct Published {
    copy: Option<Arc<AclState>>,
    behind: Vec<Change>,
}

/// Changes kept for the readers' copy before it is dropped (and cloned
/// again when asked for).
const MAX_BEHIND: usize = 64;

impl Published {
    /// `change` was applied to the controller's state incrementally.
    fn changed(&mut self, change: &Change) {
        if self.behind.len() >= MAX_BEHIND {
            *self = Published::default();
        } else if self.copy.is_some() {
            self.behind.push(change.clone());
        }
    }

    /// `state` was installed in full: a fresh copy, made in the install's
    /// time (seconds) rather than in the next small change's (measured:
    /// 15-40 ms at 1M prefixes per family).
    fn installed(&mut self, state: &AclState) {
        *self = Published {
            copy: Some(Arc::new(state.clone())),
            behind: Vec::new(),
        };
    }

    /// The copy, brought up to `state` (which it equals once the changes
    /// behind are replayed).
    fn get(&mut self, state: &AclState) -> Arc<AclState> {
        let behind = std::mem::take(&mut self.behind);
        if let Some(copy) = &mut self.copy {
            let s = Arc::make_mut(copy);
            // The same changes succeeded on the same state: none fails.
            if behind.iter().any(|c| s.apply_in_place(c).is_err()) {
                self.copy = None;
            }
        }
        self.copy
            .get_or_insert_with(|| Arc::new(state.clone()))
            .clone()
    }
}

impl PartialEq for Published {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Published {}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Published")
            .field("copy", &self.copy.is_some())
            .field("behind", &self.behind.len())
            .finish()
    }
}

/// The compiled tables kept between changes, and whether both generations
/// hold them. Derived from the installed state (a cache): two controllers
/// with the same state, slots and counters are equal whatever it holds.
#[derive(Clone, Default)]
struct Compiled {
    tables: Option<Box<Incremental>>,
    /// Both generations hold `tables` (else only the live one does).
    synced: bool,
    /// The second copy of the last change, deferred
    /// ([`AclController::apply_deferred`]): the generation that went idle
    /// and the delta it lacks. Written by [`AclController::finish`], at the
    /// latest when the next change begins.
    behind: Option<(usize, Delta)>,
    /// The counter slot of each rule of `tables`, in evaluation order.
    counters: Vec<u32>,
    last: Option<UpdateTiming>,
    /// The rebuild of the phased tables running for `tables`, when they
    /// walk the bitmaps until it is installed (module `rebuild`).
    rebuild: Option<rebuild::Rebuild>,
}

impl PartialEq for Compiled {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Compiled {}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("tables", &self.tables.is_some())
            .field("synced", &self.synced)
            .field("behind", &self.behind.is_some())
            .field("rebuild", &self.rebuild.is_some())
            .finish_non_exhaustive()
    }
}

/// The counter slots of a new generation (see [`AclController::counters`]).
struct Slots {
    free: Vec<u32>,
    counter_of: HashMap<Rule, u32>,
    counters: Vec<u32>,
    fresh: Vec<u32>,
}

/// The controller. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclController {
    /// The installed state, changed in place by [`AclController::apply`].
    state: AclState,
    /// Its copy for readers.
    published: Published,
    slots: BTreeMap<String, u32>,
    counter_of: HashMap<Rule, u32>,
    free: Vec<u32>,
    compiled: Compiled,
    /// The capacities every change is compiled for (`[acl]`).
    caps: Capacities,
}

impl AclController {
    /// A controller for the interfaces in `slots` (name -> counter slot), with an
    /// empty state: nothing is installed until the first [`AclController::install`].
    pub fn new(slots: BTreeMap<String, u32>) -> Self {
        AclController {
            state: AclState::default(),
            published: Published::default(),
            slots,
            counter_of: HashMap::new(),
            free: (0..MAX_RULES).rev().collect(),
            compiled: Compiled::default(),
            caps: Capacities::default(),
        }
    }

    /// This controller compiling for tables of capacities `caps` (`[acl]`,
    /// those the datapath was loaded with) instead of the largest.
    pub fn with_capacities(mut self, caps: Capacities) -> Self {
        self.caps = caps;
        self
    }

    /// Takes over the rule counters of a running datapath whose live
    /// generation holds `previous` (the state an earlier daemon saved): each
    /// rule of `previous` found in the live generation by id keeps its
    /// counter slot, so the next [`AclController::install`] does not zero the
    /// counters of rules it keeps. Changes nothing in the datapath.
    pub fn adopt_counters<D: AclTables + ?Sized>(
        &mut self,
        dp: &D,
        previous: &AclState,
    ) -> Result<usize, DatapathError> {
        let live: HashMap<u32, u32> = dp.live_rule_slots()?.into_iter().collect();
        let mut taken = 0;
        for (id, rule) in &previous.rules {
            if let Some(slot) = live.get(id)
                && *slot < MAX_RULES
                && !self.counter_of.values().any(|s| s == slot)
            {
                self.counter_of.insert(rule.clone(), *slot);
                self.free.retain(|s| s != slot);
                taken += 1;
            }
        }
        Ok(taken)
    }

    /// The installed state.
    pub fn state(&self) -> &AclState {
        &self.state
    }

    /// The installed state, shared (for a snapshot): a copy kept for
    /// readers, brought up to date by replaying the changes since it was
    /// last asked for (see [`Published`]).
    pub fn shared_state(&mut self) -> Arc<AclState> {
        self.published.get(&self.state)
    }

    /// The interfaces and their slots.
    pub fn slots(&self) -> &BTreeMap<String, u32> {
        &self.slots
    }

    /// Where the time of the last successful change went.
    pub fn last_timing(&self) -> Option<UpdateTiming> {
        self.compiled.last
    }

    /// Validates `change` against the installed state and installs the
    /// result: incrementally when it can (see the module documentation),
    /// else in full.
    ///
    /// The change is made in the controller's state itself and validated
    /// there (no copy of the state); a change that is rejected or cannot be
    /// installed is undone, so on every error the state is as before.
    pub fn apply<D: AclTables + ?Sized>(
        &mut self,
        dp: &mut D,
        change: &Change,
    ) -> Result<Applied, ApplyError> {
        let t0 = Instant::now();
        let applied = self.apply_deferred(dp, change)?;
        if self.finish(dp)
            && let Some(t) = &mut self.compiled.last
        {
            t.total = t0.elapsed();
        }
        Ok(applied)
    }

    /// As [`AclController::apply`], but an incremental change returns when
    /// it is enforced (after the grace period) and leaves the copy of its
    /// delta into the other generation to [`AclController::finish`] (the
    /// daemon calls it after its answer; the next change calls it first).
    /// Until then only the live generation holds the change, as after a
    /// failed second copy; nothing reads the other one.
    pub fn apply_deferred<D: AclTables + ?Sized>(
        &mut self,
        dp: &mut D,
        change: &Change,
    ) -> Result<Applied, ApplyError> {
        self.finish(dp);
        let t0 = Instant::now();
        let undo = self
            .state
            .apply_in_place(change)
            .map_err(ApplyError::Invalid)?;
        let validated = t0.elapsed();
        let installed = match self.apply_delta(dp, change, &undo, (t0, validated)) {
            Ok(Some(timing)) => Ok(timing),
            Ok(None) => self.install_timed(dp, (t0, validated)),
            Err(e) => Err(e),
        };
        self.start_rebuild();
        match installed {
            Ok(timing) => {
                if timing.incremental {
                    self.published.changed(change);
                } else {
                    self.published.installed(&self.state);
                }
                Ok(self.applied(timing))
            }
            Err(e) => {
                self.state.undo(undo);
                Err(e)
            }
        }
    }

    /// Writes the deferred second copy of the last change, if any
    /// ([`AclController::apply_deferred`]); returns whether one was
    /// written. A failed write leaves that generation stale: the next change
    /// writes it whole from the kept tables.
    pub fn finish<D: AclTables + ?Sized>(&mut self, dp: &mut D) -> bool {
        let Some((generation, delta)) = self.compiled.behind.take() else {
            return false;
        };
        let Some(tables) = &self.compiled.tables else {
            return false;
        };
        self.compiled.synced = dp
            .write_acl_delta(generation, tables.image(), &delta, &self.compiled.counters)
            .is_ok();
        self.compiled.synced
    }

    /// Whether a deferred second copy waits for [`AclController::finish`].
    pub fn unfinished(&self) -> bool {
        self.compiled.behind.is_some()
    }

    /// The incremental path of [`AclController::apply`] (the state already
    /// holds the change); `None` when the change is to be installed in
    /// full. On error the kept tables are dropped (the next change compiles
    /// in full); the counter slots and live generation are as before.
    fn apply_delta<D: AclTables + ?Sized>(
        &mut self,
        dp: &mut D,
        change: &Change,
        undo: &Undo,
        t0: (Instant, std::time::Duration),
    ) -> Result<Option<UpdateTiming>, ApplyError> {
        cancel::checkpoint()?;
        let Some(mut tables) = self.compiled.tables.take() else {
            return Ok(None);
        };
        // A rebuild of the phased tables of before the change is of no use.
        self.stop_rebuild();
        let delta = match tables.update(&self.state, undo, change) {
            Ok(delta) => delta,
            Err(Fallback::Shape) => {
                self.compiled.tables = Some(tables);
                return Ok(None);
            }
            // Half updated: dropped.
            Err(Fallback::Spoiled) => return Ok(None),
        };
        // From here the tables are the new state's: a failure drops them.
        let (timing, counters) = self.install_delta(dp, &tables, &delta, t0)?;
        self.compiled = Compiled {
            tables: Some(tables),
            synced: false,
            behind: Some((1 - timing.1, delta)),
            counters,
            last: Some(timing.0),
            rebuild: None,
        };
        let timing = timing.0;
        Ok(Some(timing))
    }

    /// Writes `delta` (or, when the idle generation is stale, the whole
    /// tables) into the idle generation, switches and waits (the copy into
    /// the other generation is the caller's). Commits the counter slots;
    /// returns the timing with the generation now live, and the counter
    /// slot of each rule.
    fn install_delta<D: AclTables + ?Sized>(
        &mut self,
        dp: &mut D,
        tables: &Incremental,
        delta: &Delta,
        (t0, validated): (Instant, std::time::Duration),
    ) -> Result<((UpdateTiming, usize), Vec<u32>), ApplyError> {
        let image = tables.image();
        // Prefix changes keep every rule, and so every counter slot.
        let slots = if delta.rules {
            Some(self.counters(image, &self.state)?)
        } else {
            None
        };
        let counters = slots
            .as_ref()
            .map_or_else(|| self.compiled.counters.clone(), |s| s.counters.clone());
        let fresh = slots.as_ref().map_or(&[][..], |s| &s.fresh[..]);
        let compiled = t0.elapsed();
        cancel::checkpoint()?;
        let synced = self.compiled.synced;
        let sw = switch_generation(dp, image, fresh, |dp, t| {
            if synced {
                dp.write_acl_delta(t, image, delta, &counters)
            } else {
                dp.write_acl_generation(t, image, &counters)
            }
        })?;
        if let Some(slots) = slots {
            self.commit_slots(slots);
        }
        let timing = sw.timing(true, t0, validated, compiled);
        Ok(((timing, sw.live), counters))
    }

    /// Installs a whole (already validated) state for the interfaces in
    /// `slots` (name -> counter slot; a reload that adds or removes
    /// interfaces). The default-policy counters of slots that are new are
    /// zeroed with the switch. On error nothing changed, slots included.
    pub fn install_for<D: AclTables + ?Sized>(
        &mut self,
        dp: &mut D,
        next: AclState,
        slots: BTreeMap<String, u32>,
    ) -> Result<Applied, ApplyError> {
        let old = std::mem::replace(&mut self.slots, slots);
        let fresh: Vec<u32> = self
            .slots
            .values()
            .filter(|s| !old.values().any(|o| o == *s))
            .map(|s| MAX_RULES + s)
            .collect();
        let result = dp
            .zero_rule_counters(&fresh)
            .map_err(ApplyError::Datapath)
            .and_then(|()| self.install(dp, next));
        if result.is_err() {
            self.slots = old;
        }
        result
    }

    /// Installs a whole (already validated) state.
    pub fn install<D: AclTables + ?Sized>(
        &mut self,
        dp: &mut D,
        next: AclState,
    ) -> Result<Applied, ApplyError> {
        let errs = next.validate();
        if !errs.is_empty() {
            return Err(ApplyError::Invalid(errs));
        }
        self.finish(dp);
        let t0 = Instant::now();
        let before = std::mem::replace(&mut self.state, next);
        match self.install_timed(dp, (t0, std::time::Duration::ZERO)) {
            Ok(timing) => {
                self.published.installed(&self.state);
                Ok(self.applied(timing))
            }
            Err(e) => {
                self.state = before;
                Err(e)
            }
        }
    }

    /// Compiles the controller's state in full and installs it (the caller
    /// puts the state back on error).
    fn install_timed<D: AclTables + ?Sized>(
        &mut self,
        dp: &mut D,
        (t0, validated): (Instant, std::time::Duration),
    ) -> Result<UpdateTiming, ApplyError> {
        let prefixes: u64 = self.state.sets.values().map(|s| s.len() as u64).sum();
        cancel::progress("compiling prefixes", 0, prefixes);
        cancel::checkpoint()?;
        let mut tables = Incremental::build_for(&self.state, &self.slots, &self.caps)
            .map_err(ApplyError::Invalid)?;
        // Later changes rebuild the phased tables off the change (`rebuild`).
        tables.defer_phases(true);
        let image = tables.image();
        // The last point where stopping leaves everything as it was.
        cancel::progress("installing prefixes", 0, prefixes);
        cancel::checkpoint()?;
        let slots = self.counters(image, &self.state)?;
        let compiled = t0.elapsed();
        let switched = switch_generation(dp, image, &slots.fresh, |dp, t| {
            dp.write_acl_generation(t, image, &slots.counters)
        });
        if let Err(e) = switched {
            // The kept tables are still the live ones; the idle copy is torn.
            self.compiled.synced = false;
            return Err(e);
        }
        let sw = switched?;
        // The same tables into the generation that went idle, so the next
        // change can write just its delta there.
        let synced = dp
            .write_acl_generation(1 - sw.live, image, &slots.counters)
            .is_ok();
        let counters = slots.counters.clone();
        self.commit_slots(slots);
        let timing = sw.timing(false, t0, validated, compiled);
        self.stop_rebuild();
        self.compiled = Compiled {
            tables: Some(Box::new(tables)),
            synced,
            behind: None,
            counters,
            last: Some(timing),
            rebuild: None,
        };
        Ok(timing)
    }

    /// What an install reports.
    fn applied(&self, timing: UpdateTiming) -> Applied {
        Applied {
            rules: self.state.rules.len(),
            prefixes: self
                .state
                .sets
                .values()
                .map(xdpgate_model::acl::PrefixSet::len)
                .sum(),
            address_classes: self
                .compiled
                .tables
                .as_ref()
                .map_or(0, |t| t.image().stats().addr_classes),
            compile: timing.compiled,
            install: timing.total - timing.compiled,
        }
    }

    /// Counter slots for the rules of `image` (rules of `next`): unchanged
    /// rules keep theirs; new rules take free ones.
    fn counters(&self, image: &Image, next: &AclState) -> Result<Slots, ApplyError> {
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
        Ok(Slots {
            free,
            counter_of,
            counters,
            fresh,
        })
    }

    /// Installed: releases the slots of rules that are gone.
    fn commit_slots(&mut self, slots: Slots) {
        let Slots {
            mut free,
            counter_of,
            ..
        } = slots;
        for (rule, slot) in &self.counter_of {
            if !counter_of.contains_key(rule) {
                free.push(*slot);
            }
        }
        self.free = free;
        self.counter_of = counter_of;
    }

    /// Every rule in evaluation order with its counters (and, for rules
    /// with a limit or `syncookie`, their limit and cookie counters).
    pub fn rule_counters<D: AclTables + ?Sized>(
        &self,
        dp: &D,
    ) -> Result<Vec<RuleCounters>, DatapathError> {
        self.state
            .ordered_rules()
            .into_iter()
            .map(|r| {
                let slot = self.counter_of.get(r);
                let (packets, bytes) = match slot {
                    Some(slot) => dp.rule_counter(*slot)?,
                    None => (0, 0),
                };
                let limits = if r.limit.is_some() || r.syncookie {
                    Some(match slot {
                        Some(slot) => dp.rule_limit_stats(*slot)?,
                        None => RuleLimitStats::default(),
                    })
                } else {
                    None
                };
                Ok(RuleCounters {
                    rule: r.clone(),
                    packets,
                    bytes,
                    limits,
                })
            })
            .collect()
    }

    /// Packets and bytes that fell to `iface`'s default policy.
    pub fn default_counters<D: AclTables + ?Sized>(
        &self,
        dp: &D,
        iface: &str,
    ) -> Result<(u64, u64), DatapathError> {
        match self.slots.get(iface) {
            Some(slot) => dp.rule_counter(MAX_RULES + slot),
            None => Ok((0, 0)),
        }
    }
}

/// A generation switched to by [`switch_generation`].
struct Switched {
    /// The generation now live.
    live: usize,
    /// When its tables were written, the switch made and the grace period over.
    written: Instant,
    switched: Instant,
    waited: Instant,
}

impl Switched {
    /// The timing of a change called at `t0`, ending now.
    fn timing(
        &self,
        incremental: bool,
        t0: Instant,
        validated: std::time::Duration,
        compiled: std::time::Duration,
    ) -> UpdateTiming {
        UpdateTiming {
            incremental,
            validated,
            compiled,
            written: self.written - t0,
            switched: self.switched - t0,
            enforced: self.waited - t0,
            total: t0.elapsed(),
        }
    }
}

/// Installs `image` as the new generation (see the module documentation for
/// the order): `write` fills the idle generation (with the counter slot of
/// each rule), `fresh` are the slots to zero first. Returns the
/// generation now live; on error the live generation is the old one.
fn switch_generation<D: AclTables + ?Sized>(
    dp: &mut D,
    image: &Image,
    fresh: &[u32],
    write: impl FnOnce(&mut D, usize) -> Result<(), DatapathError>,
) -> Result<Switched, ApplyError> {
    let cfg = dp.acl_config()?;
    let epoch = cfg.next_epoch();
    let t = (epoch & 1) as usize;
    write(dp, t)?;
    dp.zero_rule_counters(fresh)?;
    let written = Instant::now();
    // The switch: one map update, seen atomically by the next packet.
    let mut next = cfg;
    next.epoch = epoch;
    next.rules[t] = image.rule_ids.len() as u32;
    dp.set_acl_config(next)?;
    let switched = Instant::now();
    // Packets that read the old generation before the switch finish before
    // this returns; only then may the next install overwrite it.
    if let Err(cause) = dp.rcu_wait() {
        return Err(match dp.set_acl_config(cfg) {
            Ok(()) => ApplyError::Datapath(cause),
            Err(undo) => ApplyError::Rollback {
                cause: Box::new(cause),
                undo: Box::new(undo),
            },
        });
    }
    Ok(Switched {
        live: t,
        written,
        switched,
        waited: Instant::now(),
    })
}

mod rebuild;
#[cfg(test)]
mod tests;

pub use rebuild::RebuildWait;

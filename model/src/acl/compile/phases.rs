//! Phased cross-product reduction of the rule resolution (Gupta and
//! McKeown's Recursive Flow Classification): the six per-packet class ids
//! (interface slot, protocol, source, destination, source port, destination
//! port) are remapped to the classes that matter for a group of rules, then
//! combined pairwise by five table reads into the first matching rule. See
//! `docs/design/acl.md`, "Phased reduction".
//!
//! Where the budget allows, the remaps are folded into the steps: every leaf
//! but the destination port then indexes its step by its raw class
//! ([`PHASE_RAW`]), so a group costs one remap read and five step reads
//! instead of six and five, for larger step tables.
//!
//! Sets of rules are bitmaps over the group's rules, trimmed of trailing zero
//! words, and truncated after the first rule that every dimension not yet
//! combined accepts (no later rule can be the first match then), which is what
//! keeps the intermediate tables small.
use std::collections::HashMap;

use xdpgate_common::acl::{
    Bitmap, MAX_PHASE_CLASSES, MAX_PHASE_GROUPS, PHASE_NODEFAULT, PHASE_NONE, PHASE_RAW,
    PHASE_STEPS, PhaseGroup, PhaseStep, leaf,
};

/// The phased tables of one generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Phases {
    /// The rule groups (contiguous in evaluation order).
    pub groups: Vec<PhaseGroup>,
    /// Every remap and step table of every group.
    pub cells: Vec<u16>,
    /// Which plan (pairing order, index into [`PLANS`]) was chosen.
    pub plan: usize,
    /// Whether the remaps are folded into the steps (every leaf but the
    /// destination port is [`PHASE_RAW`]).
    pub folded: bool,
}

/// Pairing orders the compiler tries, as (left, right) id indices per step
/// (0..6 are the leaves in `leaf` order, 6 + s is step s). It keeps the one
/// with the fewest cells.
pub const PLANS: [[(u32, u32); PHASE_STEPS]; 4] = [
    // (proto x dport), (src x dst), (iface x sport), (L4 x iface/sport), (addresses x rest).
    [(1, 5), (2, 3), (0, 4), (6, 8), (7, 9)],
    // (proto x dport), (that x dst): services; (iface x sport), (that x src), (services x rest).
    [(1, 5), (6, 3), (0, 4), (8, 2), (7, 9)],
    // (proto x dport), (src x dst), (L4 x addresses), (iface x sport), (all x rest).
    [(1, 5), (2, 3), (6, 7), (0, 4), (8, 9)],
    // (proto x dport), (iface x sport), (L4 x L4'), (that x dst), (that x src).
    [(1, 5), (0, 4), (6, 7), (8, 3), (9, 2)],
];

/// What the compiler needs of one dimension: the bitmap of every class.
pub struct Dims<'a> {
    /// Class bitmaps per leaf, in `leaf` order.
    pub bms: [&'a Vec<Bitmap>; leaf::COUNT],
    /// Real rules (bits at and above are interface defaults).
    pub rules: usize,
}

/// A rule set: a bitmap over the group's rules, trailing zero words trimmed.
type Set = Vec<u64>;

/// Bits `lo..hi` of a bitmap, as a set starting at bit 0.
fn slice(bm: &Bitmap, lo: usize, hi: usize) -> Set {
    let mut out = vec![0u64; (hi - lo).div_ceil(64)];
    for (i, w) in out.iter_mut().enumerate() {
        let bit = lo + i * 64;
        let (q, r) = (bit / 64, bit % 64);
        let mut v = bm.words[q] >> r;
        if r != 0 && q + 1 < bm.words.len() {
            v |= bm.words[q + 1] << (64 - r);
        }
        let left = hi - bit;
        if left < 64 {
            v &= (1u64 << left) - 1;
        }
        *w = v;
    }
    trim(&mut out);
    out
}

fn trim(s: &mut Set) {
    while s.last() == Some(&0) {
        s.pop();
    }
}

/// Keeps `s` up to and including its first bit that is also in `term`.
fn truncate(s: &mut Set, term: &[u64]) {
    for w in 0..s.len() {
        let t = s[w] & term.get(w).copied().unwrap_or(0);
        if t != 0 {
            let low = t & t.wrapping_neg();
            s[w] &= low | (low - 1);
            s.truncate(w + 1);
            return;
        }
    }
}

/// Interns sets as class ids.
#[derive(Default)]
struct Interner {
    ids: HashMap<Set, u16>,
    sets: Vec<Set>,
}

impl Interner {
    fn id(&mut self, s: &[u64]) -> Option<u16> {
        if let Some(id) = self.ids.get(s) {
            return Some(*id);
        }
        let id = self.sets.len();
        if id >= MAX_PHASE_CLASSES as usize {
            return None;
        }
        self.sets.push(s.to_vec());
        self.ids.insert(s.to_vec(), id as u16);
        Some(id as u16)
    }
}

/// One group's reduction under one plan: its cells (remaps, then steps) with
/// offsets relative to the group's start, or `None` when it exceeds `budget`
/// cells or a step has too many classes. With `fold`, every leaf but the
/// destination port has no remap ([`PHASE_RAW`]): its raw classes are its
/// classes.
fn group(
    dims: &Dims,
    lo: usize,
    hi: usize,
    plan: &[(u32, u32); PHASE_STEPS],
    fold: bool,
    budget: usize,
    stop: &dyn Fn() -> bool,
) -> Option<(PhaseGroup, Vec<u16>)> {
    let words = (hi - lo).div_ceil(64);
    // Rules of the group that accept every class of a dimension.
    let wild: Vec<Set> = dims
        .bms
        .iter()
        .map(|bms| {
            let mut w = vec![u64::MAX; words];
            for b in *bms {
                let s = slice(b, lo, hi);
                for (i, x) in w.iter_mut().enumerate() {
                    *x &= s.get(i).copied().unwrap_or(0);
                }
            }
            w
        })
        .collect();
    // Rules every dimension outside `covered` accepts (all rules when none is left).
    let terminal = |covered: u32| -> Set {
        let mut t = vec![u64::MAX; words];
        for (d, w) in wild.iter().enumerate() {
            if covered & (1 << d) == 0 {
                t.iter_mut().zip(w).for_each(|(a, b)| *a &= b);
            }
        }
        t
    };
    let mut g = PhaseGroup::default();
    let mut cells: Vec<u16> = Vec::new();
    // Per id index: the classes' sets and the dimensions it covers.
    let mut sets: Vec<Vec<Set>> = Vec::new();
    let mut cover: Vec<u32> = Vec::new();
    for (d, bms) in dims.bms.iter().enumerate() {
        let term = terminal(1 << d);
        if fold && d != leaf::DPORT as usize {
            // Raw class ids index the step; the destination port keeps its
            // remap, which carries PHASE_NODEFAULT.
            if bms.len() > MAX_PHASE_CLASSES as usize {
                return None;
            }
            g.remap[d] = PHASE_RAW;
            let raw = bms
                .iter()
                .map(|b| {
                    let mut s = slice(b, lo, hi);
                    truncate(&mut s, &term);
                    s
                })
                .collect();
            sets.push(raw);
            cover.push(1 << d);
            continue;
        }
        let mut intern = Interner::default();
        g.remap[d] = cells.len() as u32;
        for b in *bms {
            let mut s = slice(b, lo, hi);
            truncate(&mut s, &term);
            let mut id = intern.id(&s)?;
            if d == leaf::DPORT as usize && b.words[dims.rules / 64] >> (dims.rules % 64) & 1 == 0 {
                // No default bits: neighbour discovery that no rule names.
                id |= PHASE_NODEFAULT;
            }
            cells.push(id);
        }
        if intern.sets.len() >= PHASE_NODEFAULT as usize {
            return None;
        }
        sets.push(intern.sets);
        cover.push(1 << d);
    }
    let mut buf: Set = Vec::with_capacity(words);
    for (s, &(l, r)) in plan.iter().enumerate() {
        let (l, r) = (l as usize, r as usize);
        let covered = cover[l] | cover[r];
        let last = s == PHASE_STEPS - 1;
        let (nl, nr) = (sets[l].len(), sets[r].len());
        if cells.len() + nl * nr > budget {
            return None;
        }
        g.steps[s] = PhaseStep {
            left: l as u32,
            right: r as u32,
            off: cells.len() as u32,
            stride: nr as u32,
        };
        let term = terminal(covered);
        let mut intern = Interner::default();
        for a in &sets[l] {
            // Asked per row: a stopped rebuild frees its core at once.
            if stop() {
                return None;
            }
            for b in &sets[r] {
                if last {
                    let first = a
                        .iter()
                        .zip(b)
                        .position(|(x, y)| x & y != 0)
                        .map(|w| lo + w * 64 + (a[w] & b[w]).trailing_zeros() as usize);
                    cells.push(first.map_or(PHASE_NONE, |i| i as u16));
                    continue;
                }
                buf.clear();
                buf.extend(a.iter().zip(b).map(|(x, y)| x & y));
                trim(&mut buf);
                truncate(&mut buf, &term);
                cells.push(intern.id(&buf)?);
            }
        }
        sets.push(intern.sets);
        cover.push(covered);
    }
    Some((g, cells))
}

/// Builds the phased tables within `cells` (`[acl] phase_cells`): for 1, 2,
/// 4, 8 and 16 groups of rules (contiguous in evaluation order), every plan
/// of [`PLANS`]; the first group count that fits, with its smallest plan, and
/// that plan's remaps folded into its steps if the folded tables fit too.
/// `None` when none fits (the datapath then walks the rule bitmaps, within
/// [`Capacities::walk_fits`](super::Capacities::walk_fits)).
pub fn build_within(dims: &Dims, cells: usize) -> Option<Phases> {
    build_until(dims, cells, &|| false).unwrap_or(None)
}

/// [`build_within`] stopping early: `stop` is asked before every group of
/// rules is reduced and before every row of a step, and when it answers
/// `true` the build ends with
/// [`Stopped`] (a rebuild off the change that a later change cancelled:
/// `incr::PhaseJob`).
pub fn build_until(
    dims: &Dims,
    cells: usize,
    stop: &dyn Fn() -> bool,
) -> Result<Option<Phases>, Stopped> {
    debug_assert!(dims.rules < PHASE_NONE as usize);
    let mut k = 1;
    while k <= MAX_PHASE_GROUPS {
        let mut best: Option<Phases> = None;
        for (p, plan) in PLANS.iter().enumerate() {
            let budget = best.as_ref().map_or(cells, |b| b.cells.len());
            if let Some(ph) = groups(dims, k, plan, p, false, budget, stop)? {
                best = Some(ph);
            }
        }
        if let Some(b) = best {
            // The chosen plan again with its remaps folded, if that fits:
            // five reads fewer per group. Only this plan: folding every plan
            // doubled the compile time at 10,000 firewall-like rules.
            let folded = groups(dims, k, &PLANS[b.plan], b.plan, true, cells, stop)?;
            return Ok(Some(folded.unwrap_or(b)));
        }
        k *= 2;
    }
    Ok(None)
}

/// A build of the phased tables ended early ([`build_until`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stopped;

/// Groups and cells of phased tables, for [`super::CompileStats`].
pub fn stats(p: Option<&Phases>) -> Option<(usize, usize)> {
    p.map(|p| (p.groups.len(), p.cells.len()))
}

/// All `k` groups under one plan, within `budget` cells in total.
fn groups(
    dims: &Dims,
    k: usize,
    plan: &[(u32, u32); PHASE_STEPS],
    p: usize,
    fold: bool,
    budget: usize,
    stop: &dyn Fn() -> bool,
) -> Result<Option<Phases>, Stopped> {
    let n = dims.rules;
    let per = n.div_ceil(k).max(1);
    let mut out = Phases {
        groups: Vec::new(),
        cells: Vec::new(),
        plan: p,
        folded: fold,
    };
    let mut lo = 0;
    while lo < n || (n == 0 && out.groups.is_empty()) {
        if stop() {
            return Err(Stopped);
        }
        let hi = (lo + per).min(n);
        let Some((mut g, cells)) = group(dims, lo, hi, plan, fold, budget - out.cells.len(), stop)
        else {
            return if stop() { Err(Stopped) } else { Ok(None) };
        };
        let base = out.cells.len() as u32;
        g.remap
            .iter_mut()
            .filter(|o| **o != PHASE_RAW)
            .for_each(|o| *o += base);
        g.steps.iter_mut().for_each(|s| s.off += base);
        out.cells.extend(cells);
        out.groups.push(g);
        lo = hi;
    }
    let count = out.groups.len() as u32;
    for g in &mut out.groups {
        (g.groups, g.rules) = (count, n as u32);
    }
    Ok(Some(out))
}

impl Phases {
    /// The lowest rule index any group resolves for the six leaf ids, and
    /// whether the interface default applies when none does.
    pub fn resolve(&self, leaves: [u32; leaf::COUNT]) -> (Option<usize>, bool) {
        let mut best: Option<usize> = None;
        let mut default = true;
        for g in &self.groups {
            let mut id = [0u32; leaf::COUNT + PHASE_STEPS];
            for d in 0..leaf::COUNT {
                if g.remap[d] == PHASE_RAW && d != leaf::DPORT as usize {
                    id[d] = leaves[d];
                    continue;
                }
                let mut v = self.cells[(g.remap[d] + leaves[d]) as usize];
                if d == leaf::DPORT as usize {
                    default = v & PHASE_NODEFAULT == 0;
                    v &= !PHASE_NODEFAULT;
                }
                id[d] = u32::from(v);
            }
            for (s, st) in g.steps.iter().enumerate() {
                let at = st.off + id[st.left as usize] * st.stride + id[st.right as usize];
                id[leaf::COUNT + s] = u32::from(self.cells[at as usize]);
            }
            let r = id[leaf::COUNT + PHASE_STEPS - 1];
            if r != u32::from(PHASE_NONE) {
                best = Some(best.map_or(r as usize, |b: usize| b.min(r as usize)));
            }
        }
        (best, default)
    }
}

impl super::Image {
    /// Rebuilds the phased tables within a budget of `cells` (tests: several
    /// groups, or none and the bitmap walk).
    pub fn with_phase_budget(mut self, cells: usize) -> Self {
        self.phases = build_within(
            &Dims {
                bms: [
                    &self.iface_bm,
                    &self.proto_bm,
                    &self.src_bm,
                    &self.dst_bm,
                    &self.sport_bm,
                    &self.dport_bm,
                ],
                rules: self.rule_ids.len(),
            },
            cells,
        );
        self
    }
}

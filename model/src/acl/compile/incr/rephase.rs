//! The phased tables after an update: rebuilt in the update (the default),
//! or, with [`Incremental::defer_phases`], off the change: the update
//! leaves the image without phased tables (the datapath walks the bitmaps,
//! which the update keeps exact), and a [`PhaseJob`] rebuilds them from a
//! copy of the bitmaps, on a thread of the caller's, to be installed by
//! [`Incremental::install_phases`] when no update came in between. See
//! `docs/design/acl.md`, "Incremental updates".
use xdpgate_common::acl::Bitmap;

use super::{Delta, Fallback, Incremental};
use crate::acl::compile::phases::{self, Dims, Phases, Stopped};

/// A rebuild of the phased tables of one version of the kept tables: owned
/// copies of the six dimensions' class bitmaps, so it runs without them
/// ([`PhaseJob::run`], on any thread).
#[derive(Clone, Debug)]
pub struct PhaseJob {
    bms: [Vec<Bitmap>; 6],
    rules: usize,
    cells: usize,
    version: u64,
}

impl PhaseJob {
    /// Builds the phased tables (`None`: they do not fit `[acl]
    /// phase_cells`, the generation keeps walking the bitmaps), asking
    /// `stop` before every group of rules; [`Stopped`] when it said yes.
    pub fn run(&self, stop: &dyn Fn() -> bool) -> Result<Option<Phases>, Stopped> {
        let [a, b, c, d, e, f] = &self.bms;
        let dims = Dims {
            bms: [a, b, c, d, e, f],
            rules: self.rules,
        };
        phases::build_until(&dims, self.cells, stop)
    }
}

impl Incremental {
    /// Rebuilds the phased tables off the change from now on (`true`; the
    /// controller's choice) or in the update itself (`false`, the default).
    /// Deferred, an update that changes a rule or an address class leaves
    /// the image without phased tables when the bitmap walk can hold its
    /// classes ([`Capacities::walk_fits`](crate::acl::compile::Capacities::walk_fits)),
    /// and [`Incremental::phase_job`] hands out the rebuild.
    pub fn defer_phases(&mut self, on: bool) {
        self.deferred = on;
    }

    /// Whether the image walks the bitmaps until a deferred rebuild of its
    /// phased tables is installed.
    pub fn phases_pending(&self) -> bool {
        self.pending
    }

    /// The deferred rebuild of the phased tables of the tables as they are
    /// now, if one is pending.
    pub fn phase_job(&self) -> Option<PhaseJob> {
        if !self.pending {
            return None;
        }
        let img = &self.image;
        Some(PhaseJob {
            bms: [
                img.iface_bm.clone(),
                img.proto_bm.clone(),
                img.src_bm.clone(),
                img.dst_bm.clone(),
                img.sport_bm.clone(),
                img.dport_bm.clone(),
            ],
            rules: img.rule_ids.len(),
            cells: img.caps.phase_cells as usize,
            version: self.version,
        })
    }

    /// Installs the result of `job` (from [`PhaseJob::run`]): the delta that
    /// takes a generation holding these tables (walking the bitmaps) to the
    /// phased tables, or `None` when there is nothing to write (the job is
    /// not of the tables as they are now, or its tables did not fit: the
    /// generation keeps walking the bitmaps, exactly).
    pub fn install_phases(&mut self, job: &PhaseJob, built: Option<Phases>) -> Option<Delta> {
        if !self.pending || job.version != self.version {
            return None;
        }
        self.pending = false;
        let phases = built?;
        self.image.phases = Some(phases);
        Some(Delta {
            phases: true,
            ..Delta::default()
        })
    }

    /// Brings the phased tables up to the update when the rules or the
    /// address classes changed: they are a function of every class bitmap.
    /// Deferred ([`Incremental::defer_phases`]) and within the walk's
    /// capacity, the image drops them and the rebuild is pending; else they
    /// are computed again from the updated bitmaps, in full (their cost grows
    /// with the rules and classes, not with the prefixes). A change that
    /// moves the generation between the phased tables and the bitmap walk
    /// otherwise (a rule set that now fits the budget or no longer does), or
    /// over the walk's capacity, is compiled in full instead.
    pub(super) fn rephase(&mut self, delta: &mut Delta) -> Result<(), Fallback> {
        if !delta.rules && delta.new_classes.is_empty() && delta.freed_classes.is_empty() {
            return Ok(());
        }
        let img = &self.image;
        let dims = Dims {
            bms: [
                &img.iface_bm,
                &img.proto_bm,
                &img.src_bm,
                &img.dst_bm,
                &img.sport_bm,
                &img.dport_bm,
            ],
            rules: img.rule_ids.len(),
        };
        let walkable = img.caps.walk_fits(None, &dims).is_ok();
        if self.deferred && img.caps.phase_cells > 0 && (self.pending || img.phases.is_some()) {
            if walkable {
                delta.phases = img.phases.is_some();
                self.image.phases = None;
                self.pending = true;
                return Ok(());
            }
            if self.pending {
                // Walking, and the walk no longer holds the classes.
                return Err(Fallback::Spoiled);
            }
        }
        let next = phases::build_within(&dims, img.caps.phase_cells as usize);
        if next.is_some() != img.phases.is_some()
            || img.caps.walk_fits(next.as_ref(), &dims).is_err()
        {
            return Err(Fallback::Spoiled);
        }
        delta.phases = next != img.phases;
        self.image.phases = next;
        Ok(())
    }
}

//! The phased tables rebuilt off the change (`docs/design/acl.md`,
//! "Incremental updates"): a change that needs them rebuilt is installed at
//! once into a generation that walks the rule bitmaps (exact, at the walk's
//! per-packet cost), a thread rebuilds them from a copy of the bitmaps, and
//! [`AclController::install_rebuilt`] switches to them (a switch like any
//! other: idle generation, switch, grace period, second copy), keeping every
//! counter. A later change stops the rebuild and starts another for its own
//! tables.
use std::{
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use xdpgate_model::acl::compile::{incr::PhaseJob, phases::Phases};

use super::{AclController, ApplyError, Compiled};
use crate::datapath::AclTables;

/// Where a rebuild is: running, stopped by a later change, or done.
#[derive(Default)]
struct Progress {
    stop: AtomicBool,
    /// `Some` when done: the phased tables (`None`: over `[acl]
    /// phase_cells`, or stopped).
    result: Mutex<Option<Option<Phases>>>,
    done: Condvar,
}

impl Progress {
    fn finish(&self, built: Option<Phases>) {
        *self.result.lock().unwrap_or_else(PoisonError::into_inner) = Some(built);
        self.done.notify_all();
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        // Under the lock, so a waiter between its check and its wait
        // cannot miss the notification.
        let _held = self.result.lock().unwrap_or_else(PoisonError::into_inner);
        self.done.notify_all();
    }
}

/// A rebuild running on its thread, for the tables it was taken from.
#[derive(Clone)]
pub(super) struct Rebuild {
    job: Arc<PhaseJob>,
    progress: Arc<Progress>,
}

/// A handle to wait on the running rebuild without holding the controller
/// ([`AclController::rebuild_wait`]).
#[derive(Clone)]
pub struct RebuildWait(Arc<Progress>);

impl RebuildWait {
    /// Blocks until the rebuild is done or stopped by a later change.
    pub fn wait(&self) {
        let p = &self.0;
        let mut result = p.result.lock().unwrap_or_else(PoisonError::into_inner);
        while result.is_none() && !p.stop.load(Ordering::Relaxed) {
            result = p.done.wait(result).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl AclController {
    /// Stops the running rebuild, if any (its tables are about to change).
    pub(super) fn stop_rebuild(&mut self) {
        if let Some(r) = self.compiled.rebuild.take() {
            r.progress.stop();
        }
    }

    /// Starts the rebuild of the phased tables when the kept tables walk the
    /// bitmaps until one is installed and none runs for them yet. A thread
    /// that cannot be started leaves the walk in force (exact) until the
    /// next change tries again.
    pub(super) fn start_rebuild(&mut self) {
        if self.compiled.rebuild.is_some() {
            return;
        }
        let Some(job) = self.compiled.tables.as_ref().and_then(|t| t.phase_job()) else {
            return;
        };
        let r = Rebuild {
            job: Arc::new(job),
            progress: Arc::new(Progress::default()),
        };
        let (job, progress) = (r.job.clone(), r.progress.clone());
        let spawned = std::thread::Builder::new()
            .name("acl-phases".into())
            .spawn(move || {
                let stop = || progress.stop.load(Ordering::Relaxed);
                progress.finish(job.run(&stop).ok().flatten());
            });
        match spawned {
            Ok(_) => self.compiled.rebuild = Some(r),
            Err(e) => log::warn!("the phased tables are rebuilt at the next change: {e}"),
        }
    }

    /// Whether the live tables walk the rule bitmaps until a rebuild of the
    /// phased tables is installed.
    pub fn rebuild_pending(&self) -> bool {
        self.compiled
            .tables
            .as_ref()
            .is_some_and(|t| t.phases_pending())
    }

    /// A handle to wait for the running rebuild (the daemon waits on it
    /// without its lock, then calls [`AclController::install_rebuilt`]).
    pub fn rebuild_wait(&self) -> Option<RebuildWait> {
        let r = self.compiled.rebuild.as_ref()?;
        Some(RebuildWait(r.progress.clone()))
    }

    /// Installs the rebuilt phased tables if the running rebuild is done
    /// (else does nothing): written into the idle generation, switched to,
    /// waited for, and copied into the other generation; no rule changes,
    /// so every counter stays. Returns whether it switched. On error the
    /// live generation walks the bitmaps as before and the kept tables are
    /// dropped (the next change compiles in full).
    pub fn install_rebuilt<D: AclTables + ?Sized>(
        &mut self,
        dp: &mut D,
    ) -> Result<bool, ApplyError> {
        let Some(r) = &self.compiled.rebuild else {
            return Ok(false);
        };
        let done = r
            .progress
            .result
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(built) = done else {
            return Ok(false);
        };
        let job = r.job.clone();
        self.compiled.rebuild = None;
        self.finish(dp);
        let Some(mut tables) = self.compiled.tables.take() else {
            return Ok(false);
        };
        let Some(delta) = tables.install_phases(&job, built) else {
            self.compiled.tables = Some(tables);
            return Ok(false);
        };
        let t0 = Instant::now();
        let (timing, counters) = self.install_delta(dp, &tables, &delta, (t0, Duration::ZERO))?;
        self.compiled = Compiled {
            tables: Some(tables),
            synced: false,
            behind: Some((1 - timing.1, delta)),
            counters,
            last: self.compiled.last,
            rebuild: None,
        };
        self.finish(dp);
        Ok(true)
    }

    /// Waits for the running rebuild and installs it
    /// ([`AclController::install_rebuilt`]); `Ok(false)` when none runs or
    /// its tables did not fit. For tests and the benchmark; the daemon
    /// waits without holding the controller.
    pub fn wait_rebuilt<D: AclTables + ?Sized>(&mut self, dp: &mut D) -> Result<bool, ApplyError> {
        match self.rebuild_wait() {
            Some(w) => {
                w.wait();
                self.install_rebuilt(dp)
            }
            None => Ok(false),
        }
    }
}

//! Cancellation points and progress for long writes.
//!
//! A write (an ACL change with a million prefixes, ten thousand address
//! bindings, a reload) runs on a blocking thread inside a [`scope`] that names
//! its [`Work`]: the token that says whether the daemon shuts down or the
//! client went away, and the progress the daemon's `status` shows. The code
//! that does the work calls [`checkpoint`] where stopping leaves nothing
//! changed (before a generation switch, between netlink batches whose adds
//! the caller's journal can undo) and [`progress`] as it goes; neither needs
//! a parameter threaded through every layer, and outside a scope (start-up,
//! unit tests) both do nothing.
use std::{
    cell::RefCell,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Why a write stopped at a cancellation point (what it had done was undone).
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum Cancelled {
    /// The daemon is shutting down.
    #[error("stopped: the daemon is shutting down")]
    Shutdown,
    /// The client that asked for the change closed its connection.
    #[error("stopped: the client went away")]
    ClientGone,
}

/// Where a write is, for `status` and the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The phase ("validating", "compiling", "installing", "adding addresses").
    pub phase: &'static str,
    /// Items done in this phase.
    pub done: u64,
    /// Items in this phase (0 when unknown).
    pub total: u64,
}

/// One write in progress: what it is, since when, how far it got, and the
/// token that stops it.
#[derive(Debug)]
pub struct Work {
    what: String,
    started: Instant,
    shutdown: CancellationToken,
    client_gone: CancellationToken,
    progress: Mutex<(Progress, Option<Instant>)>,
}

/// How often a write's progress is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(2);

impl Work {
    /// A write named `what` (e.g. "acl replace") that stops when `shutdown`
    /// is cancelled or [`Work::client_gone`] is called.
    pub fn new(what: impl Into<String>, shutdown: CancellationToken) -> Arc<Self> {
        Self::of_client(what, shutdown, CancellationToken::new())
    }

    /// A write that also stops when `client_gone` is cancelled (by the
    /// connection that watches its client).
    pub fn of_client(
        what: impl Into<String>,
        shutdown: CancellationToken,
        client_gone: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Work {
            what: what.into(),
            started: Instant::now(),
            shutdown,
            client_gone,
            progress: Mutex::new((Progress::default(), None)),
        })
    }

    /// The client went away: the write stops at its next cancellation point.
    pub fn client_gone(&self) {
        self.client_gone.cancel();
    }

    /// Why the write should stop, if it should.
    pub fn cancelled(&self) -> Option<Cancelled> {
        if self.shutdown.is_cancelled() {
            Some(Cancelled::Shutdown)
        } else if self.client_gone.is_cancelled() {
            Some(Cancelled::ClientGone)
        } else {
            None
        }
    }

    /// What the write is.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// How long it has been running.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Its latest progress.
    pub fn progress(&self) -> Progress {
        self.progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    fn report(&self, p: Progress) {
        let mut g = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        let due = g.1.is_none_or(|t| t.elapsed() >= LOG_EVERY);
        if due && self.started.elapsed() >= LOG_EVERY {
            let pct = (p.done * 100)
                .checked_div(p.total)
                .map_or_else(String::new, |pct| format!(" ({pct}%)"));
            log::info!(
                "{}: {} {}/{}{pct}, {:.1} s so far",
                self.what,
                p.phase,
                p.done,
                p.total,
                self.started.elapsed().as_secs_f64()
            );
            g.1 = Some(Instant::now());
        }
        g.0 = p;
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Work>>> = const { RefCell::new(None) };
}

/// Runs `f` with `work` as the current write of this thread: [`checkpoint`]
/// and [`progress`] inside `f` refer to it.
pub fn scope<R>(work: &Arc<Work>, f: impl FnOnce() -> R) -> R {
    struct Reset(Option<Arc<Work>>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let prev = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = prev);
        }
    }
    let prev = CURRENT.with(|c| c.borrow_mut().replace(work.clone()));
    let _reset = Reset(prev);
    f()
}

/// A cancellation point: `Err` when the current write should stop.
pub fn checkpoint() -> Result<(), Cancelled> {
    CURRENT.with(|c| match c.borrow().as_ref().and_then(|w| w.cancelled()) {
        Some(why) => Err(why),
        None => Ok(()),
    })
}

/// Reports the current write's progress (logged at most every two seconds,
/// and only for writes that run longer than that).
pub fn progress(phase: &'static str, done: u64, total: u64) {
    CURRENT.with(|c| {
        if let Some(w) = c.borrow().as_ref() {
            w.report(Progress { phase, done, total });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_pass_outside_a_scope_and_inside_an_uncancelled_one() {
        assert_eq!(checkpoint(), Ok(()));
        let w = Work::new("acl add", CancellationToken::new());
        assert_eq!(scope(&w, checkpoint), Ok(()));
    }

    #[test]
    fn a_client_that_went_away_stops_the_write_at_its_next_checkpoint() {
        let w = Work::new("bind add", CancellationToken::new());
        let r = scope(&w, || {
            checkpoint()?;
            w.client_gone();
            checkpoint()
        });
        assert_eq!(r, Err(Cancelled::ClientGone));
        // The scope ended: this thread has no current write any more.
        assert_eq!(checkpoint(), Ok(()));
    }

    #[test]
    fn shutdown_wins_over_client_gone_and_progress_is_kept() {
        let root = CancellationToken::new();
        let w = Work::new("reload", root.child_token());
        w.client_gone();
        root.cancel();
        scope(&w, || progress("installing", 3, 10));
        assert_eq!(w.cancelled(), Some(Cancelled::Shutdown));
        assert_eq!(
            w.progress(),
            Progress {
                phase: "installing",
                done: 3,
                total: 10
            }
        );
    }
}

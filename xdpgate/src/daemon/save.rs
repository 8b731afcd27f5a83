//! Saving the state file, and the degraded condition when it cannot be
//! written: a full or read-only filesystem never stops the daemon from
//! starting or from applying a change. The change is in force; the daemon
//! says it is not saved (`status`, the log once, the metrics
//! `xdpgate_state_unsaved` and `xdpgate_state_save_failures_total`), retries
//! after every change and every [`SAVE_RETRY`] ([`retry_saves`]), and clears
//! the condition at the first save that succeeds.
use std::{future::Future, sync::Arc, time::Duration};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use xdpgate_model::{
    lb::ServiceEntry,
    state::{self, Saved, StateError},
};

use super::{Daemon, now_unix, shared::Shared};

/// How often an unsaved state is retried (besides after every change).
pub const SAVE_RETRY: Duration = Duration::from_secs(15);

/// Whether the state in force is saved, and the save failures so far.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SaveStatus {
    /// Why the state in force is not saved, while it is not.
    pub unsaved: Option<Unsaved>,
    /// Saves that failed since the start.
    pub failures: u64,
}

/// The state in force differs from the state file: a restart would lose it.
#[derive(Clone, Debug, Serialize)]
pub struct Unsaved {
    /// The last save's error.
    pub reason: String,
    /// When the first unsaved change was made (seconds since the epoch).
    pub since_unix: u64,
}

impl SaveStatus {
    /// Records the outcome of one save: logs when the condition starts (once,
    /// not at every retry) and when it clears.
    fn record(&mut self, path: &std::path::Path, result: &Result<(), StateError>) {
        match (result, &mut self.unsaved) {
            (Ok(()), None) => {}
            (Ok(()), Some(u)) => {
                log::info!(
                    "state saved in {} again: the state in force is no longer unsaved (it was since {})",
                    path.display(),
                    u.since_unix
                );
                self.unsaved = None;
            }
            (Err(e), unsaved) => {
                self.failures += 1;
                match unsaved {
                    Some(u) => u.reason = e.to_string(),
                    None => {
                        log::warn!(
                            "state not saved: {e}; the state in force stays in force but a restart would lose it; retrying after every change and every {}s",
                            SAVE_RETRY.as_secs()
                        );
                        *unsaved = Some(Unsaved {
                            reason: e.to_string(),
                            since_unix: now_unix(),
                        });
                    }
                }
            }
        }
    }
}

impl Daemon {
    /// Saves the state in force to the state file, and records the outcome
    /// ([`SaveStatus`]): a failure leaves the daemon degraded, not stopped.
    pub fn persist(&mut self) -> Result<(), StateError> {
        let saved = Saved {
            services: self
                .lb
                .specs()
                .iter()
                .map(ServiceEntry::from_spec)
                .collect(),
            ..Saved::new(
                &self.config.digest,
                self.ctl.state(),
                self.binds.list().to_vec(),
            )
        };
        let result = state::save(&self.config.state_file, &saved);
        self.save.record(&self.config.state_file, &result);
        result
    }

    /// Saves again if the state in force is not saved; true if it is saved
    /// now.
    pub fn retry_save(&mut self) -> bool {
        self.save.unsaved.is_none() || self.persist().is_ok()
    }

    /// Whether the state in force is saved, and the failures so far.
    pub fn save_status(&self) -> &SaveStatus {
        &self.save
    }

    /// Warnings about the state in force: interfaces the state file names
    /// that the configuration does not configure.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// Retries an unsaved state every [`SAVE_RETRY`] until `token` is
/// cancelled, each attempt on a blocking thread (a save fsyncs, and the
/// daemon may be held by a change: the attempt then waits for it, and the
/// change's own save may already have cleared the condition). Spawned beside
/// the API server in `run.rs`:
/// `tracker.spawn(save::retry_saves(shared.clone(), root.child_token()));`
pub(super) async fn retry_saves(shared: Arc<Shared>, token: CancellationToken) {
    retry_every(SAVE_RETRY, token, move || {
        let shared = shared.clone();
        async move {
            let attempt = tokio::task::spawn_blocking(move || shared.lock().retry_save());
            if let Err(e) = attempt.await {
                log::error!("state save retry failed: {e}");
            }
        }
    })
    .await;
}

/// Runs `attempt` every `period` (the first one a period from now) until
/// `token` is cancelled, which also stops an attempt under way. The core
/// of [`retry_saves`], for a daemon shared some other way.
pub async fn retry_every<F, Fut>(period: Duration, token: CancellationToken, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            _ = tick.tick() => {}
        }
        tokio::select! {
            () = token.cancelled() => break,
            () = attempt() => {}
        }
    }
}

/// Interfaces `saved` names that `configured` does not, each with a
/// warning for the log and `status`.
pub(super) fn orphans(saved: &Saved, configured: &[String], path: &std::path::Path) -> Vec<String> {
    saved
        .interfaces_named()
        .into_iter()
        .filter(|i| !configured.contains(i))
        .map(|i| {
            format!(
                "the state file {} names interface {i}, which the configuration does not configure: its default policy, rules and bindings apply nowhere (configure it, or remove them)",
                path.display()
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn failed() -> Result<(), StateError> {
        Err(StateError::Io {
            path: "/s".into(),
            what: "cannot write",
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        })
    }

    #[test]
    fn a_failed_save_is_unsaved_until_one_succeeds_and_every_failure_counts() {
        let mut s = SaveStatus::default();
        s.record(Path::new("/s"), &Ok(()));
        assert!(s.unsaved.is_none());
        s.record(Path::new("/s"), &failed());
        s.record(Path::new("/s"), &failed());
        let u = s.unsaved.clone().unwrap();
        assert!(u.reason.contains("No space left on device"), "{}", u.reason);
        assert_eq!(s.failures, 2);
        s.record(Path::new("/s"), &Ok(()));
        assert!(s.unsaved.is_none());
        assert_eq!(s.failures, 2);
    }

    /// The retry task tries once per period, not before the first period,
    /// and stops when cancelled.
    #[tokio::test(start_paused = true)]
    async fn the_retry_task_tries_once_per_period_and_stops_when_cancelled() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let n = Arc::new(AtomicU32::new(0));
        let token = CancellationToken::new();
        let counted = n.clone();
        let task = tokio::spawn(retry_every(SAVE_RETRY, token.clone(), move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async {}
        }));
        tokio::time::sleep(SAVE_RETRY - Duration::from_secs(1)).await;
        assert_eq!(n.load(Ordering::SeqCst), 0, "not before the first period");
        tokio::time::sleep(SAVE_RETRY * 3).await;
        assert_eq!(n.load(Ordering::SeqCst), 3);
        token.cancel();
        task.await.unwrap();
        tokio::time::sleep(SAVE_RETRY * 3).await;
        assert_eq!(n.load(Ordering::SeqCst), 3, "none after cancellation");
    }
}

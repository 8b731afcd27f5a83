//! Saving the state file and its journal of ACL changes ([`Journaled`]), and
//! the degraded condition when either cannot be written (a failed append
//! counts as a failed save): a full or read-only filesystem never stops the daemon from
//! starting or from applying a change. The change is in force; the daemon
//! says it is not saved (`status`, the log once, the metrics
//! `xdpgate_state_unsaved` and `xdpgate_state_save_failures_total`), retries
//! after every change and every [`SAVE_RETRY`] ([`retry_saves`]), and clears
//! the condition at the first save that succeeds.
use std::{
    future::Future,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use xdpgate_model::{
    acl::Change,
    config::Config,
    lb::ServiceEntry,
    state::{
        self, Saved, StateError,
        journal::{self, Journal},
    },
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
    fn record(&mut self, path: &Path, result: &Result<(), StateError>) {
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

/// The write-ahead journal of ACL changes ([`journal`]) and its compaction.
///
/// An ACL change is appended (and `fdatasync`ed) before the CLI is answered;
/// every full save ([`Daemon::persist`]: binds, services, reload, start,
/// shutdown, an unsaved state retried) writes the state file with the
/// sequence number it includes and trims the journal to the entries after
/// it. When the journal grows past its bound, a background thread writes
/// the state as of the last entry (the controller's immutable state, shared,
/// not copied) and trims; appends meanwhile only wait for the short trim.
#[derive(Debug, Default)]
pub struct Journaled {
    /// The sequence number of the last change in force.
    seq: u64,
    /// The journal open for appending: `None` before the first full save
    /// and after a failed append (a full save opens it again, clean).
    open: Arc<Mutex<Option<Journal>>>,
    /// The background compaction under way.
    compaction: Option<JoinHandle<()>>,
}

impl Journaled {
    /// Starts at sequence number `seq` (the state file's after replay, or
    /// the journal's last when the journal is not replayed).
    pub(super) fn new(seq: u64) -> Self {
        Journaled {
            seq,
            ..Journaled::default()
        }
    }

    fn wait_compaction(&mut self) {
        if let Some(t) = self.compaction.take()
            && t.join().is_err()
        {
            log::error!("the journal's compaction thread panicked");
        }
    }
}

/// Trims the journal of `path` to the entries after `seq`, opening it
/// first if it is not open.
fn trim(open: &Mutex<Option<Journal>>, path: &Path, seq: u64) -> Result<(), StateError> {
    let mut j = open.lock().unwrap_or_else(PoisonError::into_inner);
    let r = match j.as_mut() {
        Some(j) => j.trim(seq),
        None => Journal::open(path).and_then(|mut n| {
            n.trim(seq)?;
            *j = Some(n);
            Ok(())
        }),
    };
    if r.is_err() {
        *j = None;
    }
    r
}

/// Reads the state file of `cfg` and, when the daemon resumes from it (same
/// configuration), replays its journal onto it; with the sequence number
/// the daemon goes on from (never below the journal's last, so that a full
/// save trims entries that were not replayed).
pub(super) fn load(cfg: &Config) -> Result<(Option<Saved>, u64), StateError> {
    let path = &cfg.state_file;
    let mut saved = state::load(path)?;
    match saved.as_mut() {
        Some(s) if s.config_digest == cfg.digest => {
            let t0 = Instant::now();
            let r = journal::replay(path, s)?;
            if let Some(line) = r.torn {
                log::warn!(
                    "journal {} ends in a torn line {line} (a change cut short by a crash, never acknowledged): ignored",
                    journal::path_of(path).display()
                );
            }
            if r.applied > 0 {
                log::info!(
                    "replayed {} change(s) of the journal {} in {:?}",
                    r.applied,
                    journal::path_of(path).display(),
                    t0.elapsed()
                );
            }
            Ok((saved, r.last_seq))
        }
        other => {
            let file_seq = other.as_ref().map_or(0, |s| s.seq);
            let last = journal::read(path)?.last_seq().unwrap_or(0);
            if last > file_seq {
                log::info!(
                    "the journal {} is not replayed: the daemon does not resume from the state file",
                    journal::path_of(path).display()
                );
            }
            Ok((saved, last.max(file_seq)))
        }
    }
}

impl Daemon {
    /// The state in force as the state file holds it.
    fn saved_now(&self) -> Saved {
        Saved {
            services: self
                .lb
                .specs()
                .iter()
                .map(ServiceEntry::from_spec)
                .collect(),
            seq: self.journal.seq,
            ..Saved::new(
                &self.config.digest,
                self.ctl.state(),
                self.binds.list().to_vec(),
            )
        }
    }

    /// Saves the state in force to the state file (after a background
    /// compaction under way), trims the journal to the changes after it, and
    /// records the outcome ([`SaveStatus`]): a failure leaves the daemon
    /// degraded, not stopped.
    pub fn persist(&mut self) -> Result<(), StateError> {
        self.journal.wait_compaction();
        let saved = self.saved_now();
        let path = &self.config.state_file;
        let result =
            state::save(path, &saved).and_then(|()| trim(&self.journal.open, path, saved.seq));
        self.save.record(&self.config.state_file, &result);
        result
    }

    /// Records the ACL change just made in force: appended to the journal
    /// (a full save instead while the state is unsaved, as every change
    /// retries it), then a background compaction if the journal is over
    /// its bound.
    pub(super) fn record_change(&mut self, change: &Change) -> Result<(), StateError> {
        self.journal.seq += 1;
        let seq = self.journal.seq;
        let path = self.config.state_file.clone();
        let appended = {
            let mut open = self
                .journal
                .open
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match open.as_mut() {
                Some(j) if self.save.unsaved.is_none() => {
                    let r = j.append(seq, change).map(|()| j.over_bound());
                    if r.is_err() {
                        *open = None;
                    }
                    Some(r)
                }
                _ => None,
            }
        };
        match appended {
            None => self.persist(),
            Some(r) => {
                let r = r.map(|over| {
                    if over {
                        self.compact_in_background();
                    }
                });
                self.save.record(&path, &r);
                r
            }
        }
    }

    /// Writes the state as of the last change on a background thread, then
    /// trims the journal to the entries after it (unless one is under way).
    fn compact_in_background(&mut self) {
        if self
            .journal
            .compaction
            .as_ref()
            .is_some_and(|t| !t.is_finished())
        {
            return;
        }
        self.journal.wait_compaction();
        let acl = self.ctl.shared_state();
        let bindings = self.binds.list().to_vec();
        let services: Vec<ServiceEntry> = self
            .lb
            .specs()
            .iter()
            .map(ServiceEntry::from_spec)
            .collect();
        let (digest, seq) = (self.config.digest.clone(), self.journal.seq);
        let path = self.config.state_file.clone();
        let open = self.journal.open.clone();
        let spawned = std::thread::Builder::new()
            .name("journal-compaction".into())
            .spawn(move || {
                let t0 = Instant::now();
                let saved = Saved {
                    services,
                    seq,
                    ..Saved::new(&digest, &acl, bindings)
                };
                match state::save(&path, &saved).and_then(|()| trim(&open, &path, seq)) {
                    Ok(()) => log::info!(
                        "journal compacted into {} as of change {seq} in {:?}",
                        path.display(),
                        t0.elapsed()
                    ),
                    // The journal still holds every change: nothing is lost.
                    Err(e) => log::warn!("journal not compacted (it keeps every change): {e}"),
                }
            });
        match spawned {
            Ok(t) => self.journal.compaction = Some(t),
            Err(e) => log::warn!("journal not compacted (it keeps every change): {e}"),
        }
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
pub(super) fn orphans(saved: &Saved, configured: &[String], path: &Path) -> Vec<String> {
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

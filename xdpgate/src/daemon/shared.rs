//! The daemon shared by its tasks, so that nothing on the runtime thread ever
//! waits for a long operation.
//!
//! - Changes (API writes, SIGHUP reloads) run one at a time on blocking
//!   threads, holding the daemon, inside a `cancel::scope`: they stop
//!   (undone) at their cancellation points when the daemon shuts down or the
//!   client goes away, and report their progress.
//! - Before a change starts, it takes a [`Snapshot`] of every read's answer.
//!   Reads (`status`, `acl list`, `set list`, `bind list`, `lb list`,
//!   `/metrics`) take the daemon when it is free and are answered from that
//!   snapshot while a change runs (as of the change's start, with the
//!   change's progress in `status`). `stats` reads the pinned maps and needs
//!   no daemon at all. A [`Weight::Small`] change (a few prefixes or rules,
//!   a policy: tens of milliseconds) leaves the metrics exposition out of
//!   its snapshot (gathering it reads every pinned counter: 18-30 ms at 1M
//!   prefixes per family, as long as the change itself), and the rule list
//!   with its counters (one counter read per rule: 10,000 rules made every
//!   change slower than at 10); a scrape or an `acl list` during such a
//!   change waits for it, as reads wait for anything brief.
//! - What a change leaves for after it ([`AfterChange`]: the second copy of
//!   an incremental change, the install of the rebuilt phased tables, the
//!   snapshot's drop) starts once the API's answer is written (the
//!   server's [`AfterAnswer`]), on threads of their own: the second copy
//!   takes 5-9 ms of one core at 10,000 rules and freeing a snapshot that
//!   holds a replaced state of 2M prefixes 7-11 ms, and on two cores they
//!   delayed the answer by 3-4 ms. A reload starts them at once.
//! - Health events take the daemon on a blocking thread too, one at a time,
//!   so that the probes (async tasks) keep their timing during a change.
use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError, Weak},
    time::{Duration, Instant},
};

use xdpgate_model::acl::AclState;

use super::{Daemon, handler};
use crate::{
    acl::RebuildWait,
    api::{
        AfterAnswer, Handler, Request, Response,
        protocol::{Answer, Busy, Status},
    },
    cancel::{self, Cancelled, Work},
    paths::Paths,
};

/// How long a read waits for a daemon that is held without a change
/// running (another read, a health event, a change taking its snapshot)
/// before it gives up with an error.
const READ_WAIT: Duration = Duration::from_secs(5);

/// Every read's answer as of the start of the running change.
struct Snapshot {
    status: Status,
    /// `None`: not taken (a small change; `acl list` waits for it).
    acl_list: Option<Response>,
    set_list: Response,
    bind_list: Response,
    lb_list: Response,
    acl: Arc<AclState>,
    /// `None`: not taken (a small change; a scrape waits for it).
    metrics: Option<Result<String, String>>,
}

/// How much of a snapshot a change needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Weight {
    /// A change of a few items: everything but the metrics exposition and
    /// the rule list (with its counters).
    Small,
    /// Any other change: every read's answer.
    Full,
}

/// Prefixes or rules up to which an ACL change is [`Weight::Small`].
const SMALL_ITEMS: usize = 64;

impl Weight {
    /// The weight of the change `req` asks for.
    pub(super) fn of(req: &Request) -> Weight {
        use xdpgate_model::acl::Change;
        let small = match req {
            Request::Apply { change } => match change {
                Change::SetAdd { prefixes, .. } => prefixes.len() <= SMALL_ITEMS,
                // An empty list removes the whole set.
                Change::SetDel { prefixes, .. } => {
                    !prefixes.is_empty() && prefixes.len() <= SMALL_ITEMS
                }
                Change::RuleAdd { rules } => rules.len() <= SMALL_ITEMS,
                Change::RuleDel { ids } => ids.len() <= SMALL_ITEMS,
                Change::Policy { .. } => true,
                Change::Replace { .. } => false,
            },
            _ => false,
        };
        if small { Weight::Small } else { Weight::Full }
    }
}

impl Snapshot {
    /// Lets go of the snapshot's ACL state at once when the controller's
    /// readers' copy holds it too (a decrement: the copy is the same
    /// `Arc`), so that the next change's snapshot brings that copy up to
    /// date in place: while this holder lived on, `shared_state` cloned the
    /// state instead (17-39 ms at 1M prefixes per family, measured when
    /// back-to-back changes came before the snapshot's drop). What is left
    /// (the last holder of a state a whole install replaced, or a snapshot
    /// a read still holds) is freed after the answer.
    fn release(snapshot: Arc<Snapshot>) -> Arc<Snapshot> {
        match Arc::try_unwrap(snapshot) {
            Ok(mut s) => {
                release_shared(&mut s.acl);
                Arc::new(s)
            }
            Err(shared) => shared,
        }
    }

    fn take(d: &mut Daemon, weight: Weight) -> Self {
        Snapshot {
            status: handler::status(d),
            acl_list: (weight == Weight::Full).then(|| handler::execute(d, Request::AclList)),
            set_list: handler::execute(d, Request::SetList { name: None }),
            bind_list: handler::execute(d, Request::BindList),
            lb_list: handler::execute(d, Request::LbList),
            acl: d.ctl.shared_state(),
            metrics: (weight == Weight::Full).then(|| d.metrics()),
        }
    }
}

/// The daemon and what reads need while it is busy.
pub(super) struct Shared {
    daemon: Mutex<Daemon>,
    paths: Paths,
    /// The running change and the snapshot taken at its start.
    busy: Mutex<Option<(Arc<Work>, Arc<Snapshot>)>>,
    /// This, for the thread that finishes a change after its answer.
    me: Weak<Shared>,
}

/// What a change leaves for after it: the deferred second copy, the
/// install of the rebuilt phased tables, and the drop of the snapshot (the
/// only other holder of the ACL state a whole install replaced: freeing 2M
/// prefixes took 7-11 ms).
#[must_use = "start it, or the second copy waits for the next change"]
pub(super) struct AfterChange {
    shared: Weak<Shared>,
    unfinished: bool,
    rebuild: Option<RebuildWait>,
    snapshot: Option<Arc<Snapshot>>,
}

impl AfterChange {
    /// Starts each on a thread of its own.
    pub(super) fn start(self) {
        if self.unfinished {
            Shared::finish_in_background(self.shared.clone());
        }
        if let Some(wait) = self.rebuild {
            Shared::install_rebuilt_in_background(self.shared, wait);
        }
        let snapshot = self.snapshot;
        if let Err(e) = std::thread::Builder::new()
            .name("snapshot-drop".into())
            .spawn(move || drop(snapshot))
        {
            log::debug!("snapshot freed in place: {e}");
        }
    }
}

/// Where a read is answered.
enum Source<'a> {
    Live(MutexGuard<'a, Daemon>),
    Snapshot(Arc<Work>, Arc<Snapshot>),
}

impl Shared {
    pub(super) fn new(daemon: Daemon) -> Arc<Self> {
        Arc::new_cyclic(|me| Shared {
            paths: daemon.paths.clone(),
            daemon: Mutex::new(daemon),
            busy: Mutex::new(None),
            me: me.clone(),
        })
    }

    /// The daemon, waiting for the running change (blocking threads only).
    pub(super) fn lock(&self) -> MutexGuard<'_, Daemon> {
        self.daemon.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs the change `f` as `work`: after the change before it, with a
    /// snapshot for the reads meanwhile, inside `work`'s cancellation scope;
    /// then starts what the change left for after it ([`AfterChange`]).
    /// `Err` when `work` was cancelled while it waited (nothing was done).
    pub(super) fn change<R>(
        &self,
        work: &Arc<Work>,
        weight: Weight,
        f: impl FnOnce(&mut Daemon) -> R,
    ) -> Result<R, Cancelled> {
        self.change_deferred(work, weight, f).map(|(r, after)| {
            after.start();
            r
        })
    }

    /// As [`Shared::change`], but what the change left for after it is
    /// returned, for the caller to start once the change is answered: the
    /// second copy (5-9 ms of one core at 10,000 rules) and the snapshot's
    /// drop then do not compete with the answer for the two cores.
    fn change_deferred<R>(
        &self,
        work: &Arc<Work>,
        weight: Weight,
        f: impl FnOnce(&mut Daemon) -> R,
    ) -> Result<(R, AfterChange), Cancelled> {
        let t0 = Instant::now();
        let mut d = self.lock();
        if let Some(why) = work.cancelled() {
            return Err(why);
        }
        let t1 = Instant::now();
        let snapshot = Arc::new(Snapshot::take(&mut d, weight));
        let t2 = Instant::now();
        *self.busy_slot() = Some((work.clone(), snapshot));
        let r = cancel::scope(work, || f(&mut d));
        let after = AfterChange {
            shared: self.me.clone(),
            unfinished: d.ctl.unfinished(),
            rebuild: d.ctl.rebuild_wait(),
            snapshot: self.busy_slot().take().map(|(_, s)| Snapshot::release(s)),
        };
        drop(d);
        log::debug!(
            "{}: waited {:?} for the daemon, snapshot {:?}, change {:?}",
            work.what(),
            t1 - t0,
            t2 - t1,
            t2.elapsed()
        );
        Ok((r, after))
    }

    /// Writes the deferred second copy of the last ACL change
    /// (`AclController::apply_deferred`) off the answer's path, on a thread
    /// that takes the daemon when it is free: the change is enforced
    /// already, and the next change writes the copy first if this thread
    /// has not yet.
    fn finish_in_background(me: Weak<Shared>) {
        let spawned = std::thread::Builder::new()
            .name("acl-second-copy".into())
            .spawn(move || {
                if let Some(shared) = me.upgrade() {
                    let mut d = shared.lock();
                    let d = &mut *d;
                    d.ctl.finish(&mut d.dp);
                }
            });
        if let Err(e) = spawned {
            log::debug!("the second copy waits for the next change: {e}");
        }
    }

    /// Installs the phased tables rebuilt after an ACL change (the change
    /// is enforced already, by the bitmap walk) once their thread is done,
    /// on a thread that takes the daemon when it is free. A later change
    /// stops that rebuild and starts its own: this thread then installs
    /// nothing.
    fn install_rebuilt_in_background(me: Weak<Shared>, wait: RebuildWait) {
        let spawned = std::thread::Builder::new()
            .name("acl-phases-install".into())
            .spawn(move || {
                wait.wait();
                if let Some(shared) = me.upgrade() {
                    let mut d = shared.lock();
                    let d = &mut *d;
                    match d.ctl.install_rebuilt(&mut d.dp) {
                        Ok(true) => log::debug!("ACL: the rebuilt phased tables are live"),
                        Ok(false) => {}
                        Err(e) => log::warn!(
                            "ACL: the rebuilt phased tables were not installed (the bitmap walk stays in force, exact; the next change compiles in full): {e}"
                        ),
                    }
                }
            });
        if let Err(e) = spawned {
            log::warn!("the rebuilt phased tables wait for the next change: {e}");
        }
    }

    fn busy_slot(&self) -> MutexGuard<'_, Option<(Arc<Work>, Arc<Snapshot>)>> {
        self.busy.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The daemon if it is free, else the running change's snapshot; waits
    /// (briefly, polling) only while the daemon is held by something else.
    fn source(&self) -> Option<Source<'_>> {
        let t0 = Instant::now();
        loop {
            match self.daemon.try_lock() {
                Ok(d) => return Some(Source::Live(d)),
                Err(TryLockError::Poisoned(p)) => return Some(Source::Live(p.into_inner())),
                Err(TryLockError::WouldBlock) => {}
            }
            if let Some((w, s)) = self.busy_slot().as_ref() {
                return Some(Source::Snapshot(w.clone(), s.clone()));
            }
            if t0.elapsed() >= READ_WAIT {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Answers a read.
    fn read(&self, req: Request) -> Response {
        if let Request::Stats = req {
            return handler::respond(handler::stats_answer(&self.paths));
        }
        match self.source() {
            None => Response::refused(
                vec![format!(
                    "the daemon did not become available for reading within {READ_WAIT:?}; retry"
                )],
                false,
            ),
            Some(Source::Live(mut d)) => handler::execute(&mut d, req),
            Some(Source::Snapshot(work, s)) => match req {
                Request::Status => Response::answer(Answer::Status(Box::new(Status {
                    busy: Some(busy(&work)),
                    uptime_seconds: s.status.uptime_seconds + work.elapsed().as_secs(),
                    ..s.status.clone()
                }))),
                Request::AclList => match &s.acl_list {
                    Some(r) => r.clone(),
                    None => self.after_change(
                        |d| handler::execute(d, Request::AclList),
                        |why| Response::refused(vec![format!("{why}; retry")], false),
                    ),
                },
                Request::SetList { name: None } => s.set_list.clone(),
                Request::SetList { name } => handler::respond(handler::set_list(&s.acl, name)),
                Request::BindList => s.bind_list.clone(),
                Request::LbList => s.lb_list.clone(),
                // Changes never come here; stats above.
                req => Response::refused(vec![format!("{} is not a read", req.verb())], false),
            },
        }
    }

    /// The metrics exposition: live, or the running change's snapshot.
    pub(super) fn metrics(&self) -> Result<String, String> {
        match self.source() {
            None => Err(format!(
                "the daemon did not become available within {READ_WAIT:?}"
            )),
            Some(Source::Live(d)) => d.metrics(),
            Some(Source::Snapshot(_, s)) => match &s.metrics {
                Some(m) => m.clone(),
                None => self.after_change(|d| d.metrics(), Err),
            },
        }
    }

    /// `read` of the live daemon once the small change running now is done
    /// (polling, at most [`READ_WAIT`]; else `gave_up` with the reason).
    fn after_change<T>(
        &self,
        read: impl FnOnce(&mut Daemon) -> T,
        gave_up: impl FnOnce(String) -> T,
    ) -> T {
        let t0 = Instant::now();
        loop {
            match self.daemon.try_lock() {
                Ok(mut d) => return read(&mut d),
                Err(TryLockError::Poisoned(p)) => return read(&mut p.into_inner()),
                Err(TryLockError::WouldBlock) => {}
            }
            if t0.elapsed() >= READ_WAIT {
                return gave_up(format!(
                    "the daemon did not become available within {READ_WAIT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Lets go of `acl` (leaving an empty state) when another holder keeps it.
fn release_shared(acl: &mut Arc<AclState>) {
    if Arc::strong_count(acl) > 1 {
        drop(std::mem::take(acl));
    }
}

fn busy(work: &Work) -> Busy {
    let p = work.progress();
    Busy {
        what: work.what().to_owned(),
        seconds: work.elapsed().as_secs_f64(),
        phase: p.phase.to_owned(),
        done: p.done,
        total: p.total,
    }
}

impl Handler for Shared {
    fn execute(&self, req: Request, work: &Arc<Work>) -> (Response, Option<AfterAnswer>) {
        if !req.is_write() {
            return (self.read(req), None);
        }
        let verb = req.verb();
        match self.change_deferred(work, Weight::of(&req), |d| handler::execute(d, req)) {
            Ok((r, after)) => {
                if !r.ok && work.cancelled().is_some() {
                    log::warn!("{verb}: {}", r.errors.join("; "));
                }
                (r, Some(Box::new(move || after.start())))
            }
            Err(why) => (
                Response::refused(
                    vec![format!(
                        "{why} before the change began (nothing was changed)"
                    )],
                    false,
                ),
                None,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use xdpgate_model::acl::{Change, RuleFile, Verdict};

    use super::*;

    #[test]
    fn a_snapshot_lets_go_of_a_state_the_readers_copy_shares_and_keeps_the_last_holder_of_a_replaced_one()
     {
        let mut state = AclState::default();
        let _undo = state
            .apply_in_place(&Change::SetAdd {
                name: "s".into(),
                prefixes: vec!["10.200.0.1/32".into()],
            })
            .expect("a valid change");
        let readers_copy = Arc::new(state);
        let mut shared = readers_copy.clone();
        release_shared(&mut shared);
        assert_eq!(
            Arc::strong_count(&readers_copy),
            1,
            "shared with the readers' copy: let go at once"
        );
        let mut replaced = readers_copy;
        let before = replaced.clone();
        drop(before);
        release_shared(&mut replaced);
        assert_eq!(
            replaced.sets.len(),
            1,
            "the last holder of a replaced state keeps it (freed after the answer)"
        );
    }

    #[test]
    fn a_change_of_a_few_items_leaves_the_metrics_and_rule_list_out_of_its_snapshot_and_any_other_takes_them()
     {
        let prefixes = |n: usize| (0..n).map(|i| format!("10.200.0.{i}/32")).collect();
        let apply = |change| Request::Apply { change };
        let cases = [
            (
                "one prefix added",
                apply(Change::SetAdd {
                    name: "s".into(),
                    prefixes: prefixes(1),
                }),
                Weight::Small,
            ),
            (
                "64 prefixes removed",
                apply(Change::SetDel {
                    name: "s".into(),
                    prefixes: prefixes(SMALL_ITEMS),
                }),
                Weight::Small,
            ),
            (
                "65 prefixes added",
                apply(Change::SetAdd {
                    name: "s".into(),
                    prefixes: prefixes(SMALL_ITEMS + 1),
                }),
                Weight::Full,
            ),
            (
                "a whole set removed",
                apply(Change::SetDel {
                    name: "s".into(),
                    prefixes: Vec::new(),
                }),
                Weight::Full,
            ),
            (
                "one rule removed",
                apply(Change::RuleDel { ids: vec![7] }),
                Weight::Small,
            ),
            (
                "a policy",
                apply(Change::Policy {
                    iface: "x".into(),
                    verdict: Verdict::Deny,
                }),
                Weight::Small,
            ),
            (
                "a replace",
                apply(Change::Replace {
                    file: RuleFile::default(),
                }),
                Weight::Full,
            ),
            ("a reload", Request::Reload, Weight::Full),
        ];
        for (name, req, weight) in cases {
            assert_eq!(Weight::of(&req), weight, "{name}");
        }
    }
}

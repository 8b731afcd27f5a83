//! What keeps the API server up whatever its clients do: a cap on the
//! connections open at once (the idlest one makes room, else the newcomer is
//! refused), a memory budget shared by every request still arriving, and an
//! accept loop that backs off (and logs once per interval) when the process
//! is out of file descriptors instead of spinning.
use std::{
    collections::BTreeMap,
    io,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

/// A connection idle for less than this is never closed to make room: a
/// client that just connected is about to send its request.
pub(super) const MIN_IDLE: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Entry {
    /// When the connection started waiting for its next request (`None`
    /// while a request arrives, runs or is answered).
    idle_since: Option<Instant>,
    /// Cancelled to close the connection.
    evict: CancellationToken,
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    open: BTreeMap<u64, Entry>,
    evicted: u64,
    refused: u64,
}

/// The connection table: at most `cap` open at once.
#[derive(Clone, Debug)]
pub(super) struct Slots {
    cap: usize,
    table: Arc<Mutex<Table>>,
}

/// One open connection's place in the table, released when dropped.
#[derive(Debug)]
pub(super) struct Slot {
    id: u64,
    table: Arc<Mutex<Table>>,
    /// Cancelled when the connection is closed to make room.
    pub(super) evicted: CancellationToken,
}

impl Slots {
    /// A table for `cap` connections (at least one).
    pub(super) fn new(cap: usize) -> Self {
        Slots {
            cap: cap.max(1),
            table: Arc::default(),
        }
    }

    /// The cap.
    pub(super) fn cap(&self) -> usize {
        self.cap
    }

    /// A place for a new connection: free, or made by closing the
    /// connection idle the longest (at least [`MIN_IDLE`]); `None` when
    /// every connection is busy (the newcomer is refused).
    pub(super) fn admit(&self, now: Instant) -> Option<Slot> {
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if t.open.len() >= self.cap {
            let idlest = t
                .open
                .iter()
                .filter_map(|(id, e)| e.idle_since.map(|s| (s, *id)))
                .filter(|(s, _)| now.saturating_duration_since(*s) >= MIN_IDLE)
                .min();
            match idlest {
                Some((_, id)) => {
                    if let Some(e) = t.open.remove(&id) {
                        e.evict.cancel();
                    }
                    t.evicted += 1;
                }
                None => {
                    t.refused += 1;
                    return None;
                }
            }
        }
        let id = t.next;
        t.next += 1;
        let evicted = CancellationToken::new();
        t.open.insert(
            id,
            Entry {
                idle_since: Some(now),
                evict: evicted.clone(),
            },
        );
        Some(Slot {
            id,
            table: self.table.clone(),
            evicted,
        })
    }

    /// Connections open, closed to make room, and refused so far.
    pub(super) fn counts(&self) -> (usize, u64, u64) {
        let t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        (t.open.len(), t.evicted, t.refused)
    }
}

impl Slot {
    /// Marks the connection idle (waiting for a request) or busy.
    pub(super) fn set_idle(&self, idle: bool) {
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = t.open.get_mut(&self.id) {
            e.idle_since = idle.then(Instant::now);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        t.open.remove(&self.id);
    }
}

/// Bytes of requests still arriving, over every connection, bounded by a
/// total.
#[derive(Clone, Debug)]
pub(super) struct Budget {
    total: usize,
    used: Arc<Mutex<usize>>,
}

/// Part of the [`Budget`] held by one arriving request, returned on drop.
#[derive(Debug)]
pub(super) struct Held {
    used: Arc<Mutex<usize>>,
    total: usize,
    bytes: usize,
}

impl Budget {
    /// A budget of `total` bytes.
    pub(super) fn new(total: usize) -> Self {
        Budget {
            total,
            used: Arc::default(),
        }
    }

    /// An empty holding.
    pub(super) fn hold(&self) -> Held {
        Held {
            used: self.used.clone(),
            total: self.total,
            bytes: 0,
        }
    }

    /// Bytes held now by every request together.
    #[cfg(test)]
    pub(super) fn used(&self) -> usize {
        *self.used.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Held {
    /// Holds `more` bytes in addition; `false` (nothing taken) when the
    /// budget has not that much left.
    pub(super) fn grow(&mut self, more: usize) -> bool {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        if *used + more > self.total {
            return false;
        }
        *used += more;
        self.bytes += more;
        true
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        *used -= self.bytes;
    }
}

/// The accept loop's answer to errors: a growing pause while they repeat
/// (the listener stays readable while the process cannot take another file
/// descriptor, so retrying at once spins), and one log line per interval with
/// how many there were.
#[derive(Debug)]
pub(super) struct AcceptBackoff {
    pause: Duration,
    failures: u64,
    last_log: Option<Instant>,
}

/// The first pause after an accept error, and the longest.
const PAUSE_MIN: Duration = Duration::from_millis(10);
const PAUSE_MAX: Duration = Duration::from_millis(500);
/// One log line per this interval at most.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

impl AcceptBackoff {
    pub(super) fn new() -> Self {
        AcceptBackoff {
            pause: PAUSE_MIN,
            failures: 0,
            last_log: None,
        }
    }

    /// An accept failed with `e`: how long to pause before the next one.
    pub(super) fn failed(&mut self, e: &io::Error, now: Instant) -> Duration {
        self.failures += 1;
        if self
            .last_log
            .is_none_or(|t| now.saturating_duration_since(t) >= LOG_INTERVAL)
        {
            let hint = match e.raw_os_error() {
                Some(libc::EMFILE | libc::ENFILE) => {
                    " (out of file descriptors: raise LimitNOFILE, or fewer clients)"
                }
                _ => "",
            };
            log::warn!(
                "api: cannot accept connections: {e}{hint}; {} failure(s) since the last report, retrying with a pause of up to {PAUSE_MAX:?}",
                self.failures
            );
            self.failures = 0;
            self.last_log = Some(now);
        }
        let pause = self.pause;
        self.pause = (self.pause * 2).min(PAUSE_MAX);
        pause
    }

    /// An accept succeeded: the next failure starts with a short pause again.
    pub(super) fn succeeded(&mut self) {
        self.pause = PAUSE_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_closes_the_connection_idle_the_longest() {
        let slots = Slots::new(2);
        let t0 = Instant::now();
        let a = slots.admit(t0).unwrap();
        let b = slots.admit(t0).unwrap();
        b.set_idle(false);
        // a is idle since t0, b is busy: the newcomer takes a's place.
        let c = slots.admit(t0 + Duration::from_secs(5)).unwrap();
        assert!(a.evicted.is_cancelled());
        assert!(!b.evicted.is_cancelled());
        assert!(!c.evicted.is_cancelled());
        assert_eq!(slots.counts(), (2, 1, 0));
    }

    #[test]
    fn a_full_table_of_busy_or_fresh_connections_refuses_the_newcomer() {
        let slots = Slots::new(2);
        let t0 = Instant::now();
        let a = slots.admit(t0).unwrap();
        a.set_idle(false);
        let _b = slots.admit(t0).unwrap();
        // b is idle, but for less than MIN_IDLE.
        assert!(slots.admit(t0 + MIN_IDLE / 2).is_none());
        assert_eq!(slots.counts(), (2, 0, 1));
        drop(a);
        assert!(slots.admit(t0).is_some());
    }

    #[test]
    fn the_budget_refuses_growth_beyond_its_total_and_returns_it_on_drop() {
        let budget = Budget::new(100);
        let mut a = budget.hold();
        assert!(a.grow(60));
        let mut b = budget.hold();
        assert!(!b.grow(41));
        assert!(b.grow(40));
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn accept_errors_pause_longer_each_time_and_log_once_per_interval() {
        let mut b = AcceptBackoff::new();
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        let t0 = Instant::now();
        let pauses: Vec<Duration> = (0..10).map(|_| b.failed(&e, t0)).collect();
        assert_eq!(pauses[0], PAUSE_MIN);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*pauses.last().unwrap(), PAUSE_MAX);
        // Logged at the first failure; the nine after it are counted.
        assert_eq!(b.failures, 9);
        b.failed(&e, t0 + LOG_INTERVAL);
        assert_eq!(b.failures, 0);
        b.succeeded();
        assert_eq!(b.failed(&e, t0 + LOG_INTERVAL), PAUSE_MIN);
    }
}

//! The metrics server's connection slots, and which connection gives up its
//! slot when a new one arrives and none is free.
//!
//! A connection is in one of three stages: it waits for its request head
//! ([`Stage::Head`]), it is being answered ([`Stage::Answering`]), or it was
//! answered and the server waits for the client to close
//! ([`Stage::Lingering`]). When the table is full, or the new connection's
//! peer address already holds its share, the new connection takes the slot
//! of the connection that has waited longest on its client: a lingering one
//! first (its answer is already sent), else the one that has waited longest
//! for its request head. A connection being answered is never evicted; if
//! every candidate is being answered, the new connection is refused.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{
    sync::{Notify, futures::Notified},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

/// Why the server closed a connection before a complete exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Closed {
    /// No complete request head within the head time limit.
    HeadTimeout,
    /// Its slot was given to a newer connection.
    Evicted,
    /// No slot was free and none could be taken: every candidate was being
    /// answered.
    Refused,
    /// The client did not take its answer within the write time limit.
    WriteTimeout,
}

impl Closed {
    /// Every reason, in the order of [`ClosedCounts::get`].
    pub(super) const ALL: [Closed; 4] = [
        Closed::HeadTimeout,
        Closed::Evicted,
        Closed::Refused,
        Closed::WriteTimeout,
    ];

    /// The reason's label value in the exposition.
    pub(super) fn name(self) -> &'static str {
        match self {
            Closed::HeadTimeout => "head_timeout",
            Closed::Evicted => "evicted",
            Closed::Refused => "refused",
            Closed::WriteTimeout => "write_timeout",
        }
    }
}

/// How many connections were closed, by [`Closed`] reason, and a wake-up
/// for whoever reports them.
#[derive(Debug, Default)]
pub(super) struct ClosedCounts {
    counts: [AtomicU64; 4],
    changed: Notify,
}

impl ClosedCounts {
    /// Counts one connection closed for `why`.
    pub(super) fn add(&self, why: Closed) {
        self.counts[why as usize].fetch_add(1, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// The counts, in the order of [`Closed::ALL`].
    pub(super) fn get(&self) -> [u64; 4] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }

    /// Completes after the next [`ClosedCounts::add`] (at once if one
    /// happened since the last call completed).
    pub(super) fn changed(&self) -> Notified<'_> {
        self.changed.notified()
    }
}

/// What a connection is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Waiting for its request head.
    Head,
    /// A complete head arrived; being answered. Never evicted.
    Answering,
    /// Answered; waiting for the client to close.
    Lingering,
}

#[derive(Debug)]
struct Conn {
    peer: IpAddr,
    stage: Stage,
    /// Since when the connection waits on its client (its accept, or the
    /// end of its answer).
    since: Instant,
    evict: CancellationToken,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    conns: BTreeMap<u64, Conn>,
}

impl Table {
    /// The connection to evict among those `pick` selects: the lingering
    /// one that has waited longest, else the one that has waited longest
    /// for its head; none if all are being answered.
    fn victim(&self, pick: impl Fn(&Conn) -> bool) -> Option<u64> {
        self.conns
            .iter()
            .filter(|(_, c)| c.stage != Stage::Answering && pick(c))
            .min_by_key(|(id, c)| (c.stage != Stage::Lingering, c.since, **id))
            .map(|(id, _)| *id)
    }
}

/// The connection table: at most `max` connections, at most `per_peer` from
/// one address.
#[derive(Debug)]
pub(super) struct Slots {
    max: usize,
    per_peer: usize,
    table: Mutex<Table>,
    /// Connections closed early, by reason.
    pub(super) closed: ClosedCounts,
}

impl Slots {
    /// An empty table for at most `max` connections, `per_peer` of them
    /// from one address.
    pub(super) fn new(max: usize, per_peer: usize) -> Arc<Self> {
        Arc::new(Slots {
            max: max.max(1),
            per_peer: per_peer.clamp(1, max.max(1)),
            table: Mutex::default(),
            closed: ClosedCounts::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Every critical section below leaves the table consistent.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new connection from `peer`, evicting another if needed
    /// (that one's [`Slot::evicted`] token is cancelled and its slot freed
    /// at once); `None` if it must be refused. Both are counted.
    pub(super) fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let peer = peer.to_canonical();
        let mut t = self.lock();
        let from_peer = t.conns.values().filter(|c| c.peer == peer).count();
        let victim = if from_peer >= self.per_peer {
            Some(t.victim(|c| c.peer == peer))
        } else if t.conns.len() >= self.max {
            Some(t.victim(|_| true))
        } else {
            None
        };
        match victim {
            Some(None) => {
                drop(t);
                self.closed.add(Closed::Refused);
                return None;
            }
            Some(Some(id)) => {
                if let Some(c) = t.conns.remove(&id) {
                    c.evict.cancel();
                }
                self.closed.add(Closed::Evicted);
            }
            None => {}
        }
        let id = t.next_id;
        t.next_id += 1;
        let evict = CancellationToken::new();
        t.conns.insert(
            id,
            Conn {
                peer,
                stage: Stage::Head,
                since: Instant::now(),
                evict: evict.clone(),
            },
        );
        Some(Slot {
            slots: self.clone(),
            id,
            evict,
        })
    }

    /// Connections holding a slot.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.lock().conns.len()
    }

    fn set_stage(&self, id: u64, stage: Stage) -> bool {
        let mut t = self.lock();
        match t.conns.get_mut(&id) {
            Some(c) => {
                c.stage = stage;
                c.since = Instant::now();
                true
            }
            None => false,
        }
    }
}

/// One admitted connection's slot; freed on drop.
#[derive(Debug)]
pub(super) struct Slot {
    slots: Arc<Slots>,
    id: u64,
    evict: CancellationToken,
}

impl Slot {
    /// Marks the connection as being answered (its head is complete), so it
    /// is not evicted; false if it was evicted already.
    pub(super) fn answering(&self) -> bool {
        self.slots.set_stage(self.id, Stage::Answering)
    }

    /// Marks the connection as answered: it may be evicted again, first.
    pub(super) fn lingering(&self) {
        self.slots.set_stage(self.id, Stage::Lingering);
    }

    /// Cancelled when the connection is evicted.
    pub(super) fn evicted(&self) -> &CancellationToken {
        &self.evict
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().conns.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, time::Duration};

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    async fn tick() {
        tokio::time::advance(Duration::from_millis(10)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_table_evicts_the_connection_that_waited_longest_for_its_head() {
        let slots = Slots::new(3, 3);
        let a = slots.admit(ip(1)).unwrap();
        tick().await;
        let b = slots.admit(ip(2)).unwrap();
        tick().await;
        let c = slots.admit(ip(3)).unwrap();
        tick().await;
        // a is being answered: b has waited longest for its head.
        assert!(a.answering());
        let d = slots.admit(ip(4)).unwrap();
        assert!(!a.evicted().is_cancelled());
        assert!(b.evicted().is_cancelled());
        assert!(!c.evicted().is_cancelled());
        assert_eq!(slots.held(), 3);
        // b's task notices, too late: it stays evicted.
        assert!(!b.answering());
        drop(b);
        assert_eq!(slots.held(), 3);
        tick().await;
        // Next: c, then d.
        let _e = slots.admit(ip(5)).unwrap();
        assert!(c.evicted().is_cancelled() && !d.evicted().is_cancelled());
        let _f = slots.admit(ip(6)).unwrap();
        assert!(d.evicted().is_cancelled());
        assert!(!a.evicted().is_cancelled());
        assert_eq!(slots.closed.get(), [0, 3, 0, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answered_connection_waiting_for_its_client_to_close_goes_first() {
        let slots = Slots::new(2, 2);
        let head = slots.admit(ip(1)).unwrap();
        tick().await;
        let done = slots.admit(ip(2)).unwrap();
        assert!(done.answering());
        tick().await;
        done.lingering();
        let _new = slots.admit(ip(3)).unwrap();
        assert!(done.evicted().is_cancelled());
        assert!(!head.evicted().is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_connection_is_being_answered_the_new_one_is_refused() {
        let slots = Slots::new(2, 2);
        let a = slots.admit(ip(1)).unwrap();
        let b = slots.admit(ip(2)).unwrap();
        assert!(a.answering() && b.answering());
        assert!(slots.admit(ip(3)).is_none());
        assert!(!a.evicted().is_cancelled() && !b.evicted().is_cancelled());
        assert_eq!(slots.closed.get(), [0, 0, 1, 0]);
        drop(a);
        assert!(slots.admit(ip(3)).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_at_its_share_evicts_its_own_connections_not_others() {
        let slots = Slots::new(4, 2);
        let other = slots.admit(ip(9)).unwrap();
        tick().await;
        let p1 = slots.admit(ip(1)).unwrap();
        tick().await;
        let p2 = slots.admit(ip(1)).unwrap();
        tick().await;
        // The table has room, but ip(1) holds its share: its oldest goes,
        // although `other` has waited longer.
        let p3 = slots.admit(ip(1)).unwrap();
        assert!(p1.evicted().is_cancelled());
        assert!(!other.evicted().is_cancelled() && !p2.evicted().is_cancelled());
        // With both of its connections being answered, the peer is refused
        // even though a slot is free.
        assert!(p2.answering() && p3.answering());
        assert!(slots.admit(ip(1)).is_none());
        assert!(slots.admit(ip(2)).is_some());
        assert_eq!(slots.closed.get(), [0, 1, 1, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ipv4_mapped_address_is_the_same_peer() {
        let slots = Slots::new(4, 1);
        let a = slots.admit(ip(1)).unwrap();
        let mapped = match ip(1) {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            IpAddr::V6(_) => unreachable!(),
        };
        let _b = slots.admit(mapped).unwrap();
        assert!(a.evicted().is_cancelled());
    }
}

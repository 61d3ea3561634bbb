//! The primary's batching queue, fair between origins.
//!
//! Every pending request has an origin: the replica that answers for it
//! (the primary itself for its own clients' requests, the forwarding or
//! vouching replica for the others). One queue per origin, first come first
//! served within it, and deficit round robin between them (Shreedhar and
//! Varghese, 1995): each origin's turn adds `QUANTUM` bytes to its credit
//! and it takes requests while their cost is within the credit. So when
//! more is queued than a batch holds, every origin gets an equal share of
//! the batch bytes, and an origin that sends more than its share (a
//! byzantine replica forwarding valid requests as fast as it can, or a node
//! whose clients flood it) waits behind its own requests, not in front of
//! everyone else's. When less is queued than a batch holds, every request
//! is taken, in whatever order: fairness only decides who waits when not
//! everyone fits, and the primary never leaves room unused (a backup's
//! "passed over" check in `suspicion.rs` relies on that).

use crate::{NodeId, RequestKey};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// The credit an origin gets per turn, in request bytes (payload plus
/// [`REQUEST_OVERHEAD`]): a 64th of a batch (64 KiB of the default 4 MiB),
/// so that origins interleave finely within one batch, and at least
/// [`MIN_QUANTUM`]. A head larger than the credit (a whole vouched forward)
/// waits a few turns, which costs a few loop steps per origin, nothing
/// more.
pub(super) fn quantum(max_batch_bytes: usize) -> usize {
    (max_batch_bytes / 64).max(MIN_QUANTUM)
}

const MIN_QUANTUM: usize = 4 * 1024;

/// What a request costs beyond its payload (its client, id, signature,
/// bookkeeping): so a flood of empty requests is not free. The nodes'
/// client admission weighs requests the same way.
pub const REQUEST_OVERHEAD: usize = 128;

/// What one request weighs in the queue and the pipeline: its payload
/// plus [`REQUEST_OVERHEAD`].
pub(super) fn request_cost(request: &crate::SignedRequest) -> usize {
    request.payload_len() + REQUEST_OVERHEAD
}

/// What a batch weighs: its requests' costs.
pub(super) fn batch_cost(batch: &crate::Batch) -> usize {
    batch.requests.iter().map(request_cost).sum()
}

/// A queued request: its key and when it was queued.
pub(super) type Entry = (RequestKey, Duration);

/// An entry taken into a batch: its origin, the entry, and what it cost
/// (to put it back as it was if the batch is not proposed).
pub(super) type Taken = (NodeId, Entry, usize);

#[derive(Debug, Default)]
struct Lane {
    entries: VecDeque<Entry>,
    /// Bytes this origin may still take in its current turn.
    credit: usize,
    /// Whether its current turn has started (credit added).
    in_turn: bool,
}

/// The primary's queue: one lane per origin, served in deficit round robin.
#[derive(Debug)]
pub(super) struct FairQueue {
    lanes: BTreeMap<NodeId, Lane>,
    /// Origins with queued entries, in turn order; the front is served.
    ring: VecDeque<NodeId>,
    /// Entries in all lanes (dead ones included until they are skipped).
    len: usize,
    /// Credit per turn (see [`quantum`]).
    quantum: usize,
}

/// What [`FairQueue::next`] asks of each head entry.
pub(super) enum Cost {
    /// No longer wanted (executed, dropped or already proposed): skip it.
    Dead,
    /// Taking it costs this many bytes of its origin's credit.
    Bytes(usize),
}

impl FairQueue {
    /// An empty queue giving each origin `quantum` bytes per turn.
    pub(super) fn new(quantum: usize) -> Self {
        Self {
            lanes: BTreeMap::new(),
            ring: VecDeque::new(),
            len: 0,
            quantum,
        }
    }

    /// Queues `entry` behind `origin`'s other requests.
    pub(super) fn push_back(&mut self, origin: NodeId, entry: Entry) {
        self.lane(origin).entries.push_back(entry);
    }

    /// Puts `entry` back at the head of `origin`'s lane (a cut batch that
    /// was not proposed), its cost credited back.
    pub(super) fn push_front(&mut self, origin: NodeId, entry: Entry, cost: usize) {
        let lane = self.lane(origin);
        lane.entries.push_front(entry);
        lane.credit = lane.credit.saturating_add(cost);
    }

    fn lane(&mut self, origin: NodeId) -> &mut Lane {
        self.len += 1;
        let lane = self.lanes.entry(origin).or_default();
        if lane.entries.is_empty() {
            self.ring.push_back(origin);
        }
        lane
    }

    /// Entries queued (dead ones included).
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Forgets every entry (a new view requeues what is pending).
    pub(super) fn clear(&mut self) {
        *self = Self::new(self.quantum);
    }

    /// The earliest queued time among the lanes' heads: how long the
    /// oldest request has waited (each lane is in arrival order).
    pub(super) fn oldest(&self) -> Option<Duration> {
        self.lanes
            .values()
            .filter_map(|lane| lane.entries.front().map(|&(_, since)| since))
            .min()
    }

    /// Drops dead entries from the head of every lane, so that
    /// [`FairQueue::oldest`] names a live request.
    pub(super) fn skip_dead(&mut self, mut live: impl FnMut(&RequestKey) -> bool) {
        for lane in self.lanes.values_mut() {
            while lane.entries.front().is_some_and(|(key, _)| !live(key)) {
                lane.entries.pop_front();
                self.len -= 1;
            }
        }
        self.forget_empty();
    }

    fn forget_empty(&mut self) {
        let lanes = &mut self.lanes;
        self.ring
            .retain(|origin| lanes.get(origin).is_some_and(|l| !l.entries.is_empty()));
        lanes.retain(|_, lane| !lane.entries.is_empty());
    }

    /// The entry deficit round robin serves next, with its origin and cost,
    /// without taking it (the caller may find the batch is full); dead
    /// entries met on the way are dropped. `None` when nothing live is
    /// queued.
    pub(super) fn next(
        &mut self,
        mut cost: impl FnMut(&RequestKey) -> Cost,
    ) -> Option<(NodeId, Entry, usize)> {
        loop {
            let origin = *self.ring.front()?;
            let Some(lane) = self.lanes.get_mut(&origin) else {
                self.ring.pop_front();
                continue;
            };
            if !lane.in_turn {
                lane.in_turn = true;
                lane.credit = lane.credit.saturating_add(self.quantum);
            }
            let Some(&entry) = lane.entries.front() else {
                self.end_lane(origin);
                continue;
            };
            match cost(&entry.0) {
                Cost::Dead => {
                    lane.entries.pop_front();
                    self.len -= 1;
                    if lane.entries.is_empty() {
                        self.end_lane(origin);
                    }
                }
                Cost::Bytes(bytes) if bytes <= lane.credit => {
                    return Some((origin, entry, bytes));
                }
                Cost::Bytes(_) => {
                    // Its turn is over; the credit carries to the next one.
                    lane.in_turn = false;
                    self.ring.rotate_left(1);
                }
            }
        }
    }

    /// Takes the entry [`FairQueue::next`] returned last (of `origin`,
    /// costing `bytes`).
    pub(super) fn take(&mut self, origin: NodeId, bytes: usize) {
        let Some(lane) = self.lanes.get_mut(&origin) else {
            return;
        };
        if lane.entries.pop_front().is_some() {
            self.len -= 1;
        }
        lane.credit = lane.credit.saturating_sub(bytes);
        if lane.entries.is_empty() {
            self.end_lane(origin);
        }
    }

    /// An origin with nothing queued leaves the ring and loses its credit
    /// (credit is for waiting, not saved up while idle).
    fn end_lane(&mut self, origin: NodeId) {
        self.lanes.remove(&origin);
        self.ring.retain(|&o| o != origin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bftd_crypto::PublicKey;

    const QUANTUM: usize = 64 * 1024;

    fn key(client: u8, id: u64) -> RequestKey {
        RequestKey {
            client: PublicKey([client; 32]),
            request_id: id,
        }
    }

    /// Takes up to `limit` entries, each costing `size`.
    fn drain(queue: &mut FairQueue, size: usize, limit: usize) -> Vec<NodeId> {
        let mut served = Vec::new();
        while served.len() < limit {
            let Some((origin, _, bytes)) = queue.next(|_| Cost::Bytes(size)) else {
                break;
            };
            queue.take(origin, bytes);
            served.push(origin);
        }
        served
    }

    #[test]
    fn a_flooding_origin_gets_its_share_not_the_queue() {
        let mut queue = FairQueue::new(QUANTUM);
        let now = Duration::ZERO;
        // Origin 3 floods 10,000 requests before origin 1's 10 arrive.
        for id in 0..10_000 {
            queue.push_back(NodeId(3), (key(3, id), now));
        }
        for id in 0..10 {
            queue.push_back(NodeId(1), (key(1, id), now));
        }
        // Each costs 1 KiB: 64 per turn. Origin 1's ten are all served
        // within the first two turns, not after 10,000.
        let served = drain(&mut queue, 1024, 200);
        let last_of_1 = served.iter().rposition(|&o| o == NodeId(1)).unwrap();
        assert!(last_of_1 < 128, "origin 1 served by position {last_of_1}");
        assert_eq!(served.iter().filter(|&&o| o == NodeId(1)).count(), 10);
        assert_eq!(queue.len(), 10_010 - 200);
    }

    #[test]
    fn backlogged_origins_share_equally_and_nothing_is_lost() {
        let mut queue = FairQueue::new(QUANTUM);
        for origin in 0..4u16 {
            for id in 0..1000 {
                queue.push_back(NodeId(origin), (key(origin as u8, id), Duration::ZERO));
            }
        }
        let served = drain(&mut queue, 600, 2000);
        // Deficit round robin's bound: backlogged origins' shares differ by
        // at most one turn's worth (a quantum) of requests.
        let shares: Vec<usize> = (0..4u16)
            .map(|origin| served.iter().filter(|&&o| o == NodeId(origin)).count())
            .collect();
        let spread = shares.iter().max().unwrap() - shares.iter().min().unwrap();
        assert!(spread <= QUANTUM / 600 + 1, "shares of 2000: {shares:?}");
        assert_eq!(drain(&mut queue, 600, usize::MAX).len(), 2000);
        assert_eq!(queue.len(), 0);
        assert!(queue.next(|_| Cost::Bytes(1)).is_none());
    }

    #[test]
    fn a_head_bigger_than_the_quantum_waits_for_credit_then_goes() {
        let mut queue = FairQueue::new(QUANTUM);
        queue.push_back(NodeId(2), (key(2, 0), Duration::ZERO));
        queue.push_back(NodeId(1), (key(1, 0), Duration::ZERO));
        queue.push_back(NodeId(1), (key(1, 1), Duration::ZERO));
        let cost = |k: &RequestKey| Cost::Bytes(if k.client.0[0] == 2 { 4 << 20 } else { 100 });
        let mut order = Vec::new();
        while let Some((origin, entry, bytes)) = queue.next(cost) {
            queue.take(origin, bytes);
            order.push(entry.0);
        }
        assert_eq!(order, vec![key(1, 0), key(1, 1), key(2, 0)]);
    }

    #[test]
    fn dead_entries_are_skipped_and_oldest_names_a_live_head() {
        let mut queue = FairQueue::new(QUANTUM);
        queue.push_back(NodeId(0), (key(0, 0), Duration::from_millis(1)));
        queue.push_back(NodeId(0), (key(0, 1), Duration::from_millis(5)));
        queue.push_back(NodeId(1), (key(1, 0), Duration::from_millis(3)));
        assert_eq!(queue.oldest(), Some(Duration::from_millis(1)));
        queue.skip_dead(|k| *k != key(0, 0));
        assert_eq!(queue.oldest(), Some(Duration::from_millis(3)));
        assert_eq!(queue.len(), 2);
        let next = queue.next(|k| {
            if *k == key(1, 0) {
                Cost::Dead
            } else {
                Cost::Bytes(1)
            }
        });
        assert_eq!(next.map(|(o, e, _)| (o, e.0)), Some((NodeId(0), key(0, 1))));
    }

    #[test]
    fn a_request_put_back_is_served_first_again() {
        let mut queue = FairQueue::new(QUANTUM);
        queue.push_back(NodeId(0), (key(0, 0), Duration::ZERO));
        queue.push_back(NodeId(0), (key(0, 1), Duration::ZERO));
        let (origin, entry, bytes) = queue.next(|_| Cost::Bytes(10)).unwrap();
        queue.take(origin, bytes);
        queue.push_front(origin, entry, bytes);
        let (_, again, _) = queue.next(|_| Cost::Bytes(10)).unwrap();
        assert_eq!(again, entry);
        assert_eq!(queue.len(), 2);
    }
}

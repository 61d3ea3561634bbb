//! Frames received from peers, queued per peer and per lane, and taken
//! fairly: the consensus lane before the requests lane, round-robin across
//! peers within a lane.
//!
//! Every peer has its own byte budget (a share of `inbound_bytes`, at least
//! one maximal frame) and, per lane, its own bound in frames. A reader that
//! finds its peer's budget or lane full stops reading that peer's stream,
//! so QUIC flow control pushes back on that peer alone; the other peers'
//! readers go on. A byzantine peer that floods forwards therefore fills
//! only its own requests lane, and a pre-prepare from an honest peer waits
//! at most for the batch being verified (see design notes §25).

use super::stats::Counters;
use super::{lock, PeerFrame};
use bftd_protocol::NodeId;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Which queue a peer's frame waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// What keeps the cluster live (pre-prepares, votes, checkpoints, view
    /// changes, fetches): taken first.
    Consensus,
    /// Bulk that can wait (forwarded client requests).
    Requests,
}

impl Lane {
    fn index(self) -> usize {
        match self {
            Lane::Consensus => 0,
            Lane::Requests => 1,
        }
    }
}

/// Sorts a frame into its lane by looking at its head (its first
/// [`HEAD_BYTES`](super::frame::HEAD_BYTES) bytes, without decoding) and its
/// length, or refuses it (`None`: for bftd, a frame bigger than any honest
/// message of its kind, see `MessageLimits::max_encoded_bytes`). A refused
/// frame is skipped as it arrives, never buffered whole, and counted
/// (`oversized_for_kind`).
#[derive(Clone)]
pub struct LaneOf(Arc<SortFrame>);

/// `(head, length) -> lane`, see [`LaneOf`].
type SortFrame = dyn Fn(&[u8], usize) -> Option<Lane> + Send + Sync;

impl LaneOf {
    /// Sorts frames with `lane_of(head, length)`.
    pub fn new(lane_of: impl Fn(&[u8], usize) -> Option<Lane> + Send + Sync + 'static) -> LaneOf {
        LaneOf(Arc::new(lane_of))
    }

    pub(crate) fn of(&self, frame: &[u8]) -> Option<Lane> {
        (self.0)(frame, frame.len())
    }

    /// The check a peer stream's reader makes before reading a frame.
    pub(crate) fn refuse(&self) -> super::frame::Refuse {
        let lane_of = self.0.clone();
        Arc::new(move |head, length| lane_of(head, length).is_none())
    }
}

impl std::fmt::Debug for LaneOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LaneOf")
    }
}

impl Default for LaneOf {
    /// Every frame in the consensus lane: for transports whose user has no
    /// bulk traffic (and tests).
    fn default() -> LaneOf {
        LaneOf::new(|_, _| Some(Lane::Consensus))
    }
}

/// One peer's queues and budgets.
#[derive(Debug)]
struct PeerQueues {
    id: NodeId,
    lanes: [Mutex<VecDeque<PeerFrame>>; 2],
    /// Frames in each lane, taken until the consumer drops the frame.
    frame_slots: [Arc<Semaphore>; 2],
    /// Bytes of this peer's frames not yet dropped by the consumer.
    bytes: Arc<Semaphore>,
}

/// What the readers and the consumer share.
#[derive(Debug)]
pub(crate) struct InboundQueues {
    peers: Vec<PeerQueues>,
    lane_of: LaneOf,
    counters: Arc<Counters>,
    /// Woken on every frame queued, and at close.
    ready: Notify,
    closed: AtomicBool,
}

/// The budgets a queued frame holds; released when the frame is dropped.
#[derive(Debug)]
pub(crate) struct Accounting {
    _bytes: OwnedSemaphorePermit,
    _frame: OwnedSemaphorePermit,
}

impl InboundQueues {
    /// Queues for `peers`, each with `bytes_per_peer` bytes and
    /// `frames_per_lane` frames per lane.
    pub(crate) fn new(
        peers: impl IntoIterator<Item = NodeId>,
        bytes_per_peer: usize,
        frames_per_lane: usize,
        lane_of: LaneOf,
        counters: Arc<Counters>,
    ) -> Arc<InboundQueues> {
        let peers = peers
            .into_iter()
            .map(|id| PeerQueues {
                id,
                lanes: Default::default(),
                frame_slots: [
                    Arc::new(Semaphore::new(frames_per_lane)),
                    Arc::new(Semaphore::new(frames_per_lane)),
                ],
                bytes: Arc::new(Semaphore::new(bytes_per_peer)),
            })
            .collect();
        Arc::new(InboundQueues {
            peers,
            lane_of,
            counters,
            ready: Notify::new(),
            closed: AtomicBool::new(false),
        })
    }

    /// The check peer streams' readers make before reading a frame: the
    /// lanes' refusals.
    pub(crate) fn refuse(&self) -> super::frame::Refuse {
        self.lane_of.refuse()
    }

    /// Queues `frame` from `from`, first waiting for room in that peer's
    /// byte budget and lane (only that peer's reader waits). `false` once
    /// the queues are closed.
    pub(crate) async fn push(&self, from: NodeId, frame: bytes::Bytes) -> bool {
        let Some(peer) = self.peers.iter().find(|peer| peer.id == from) else {
            return false;
        };
        let Some(lane) = self.lane_of.of(&frame) else {
            self.counters.oversized_for_kind.increment();
            return true;
        };
        let lane = lane.index();
        // `frame.len()` <= max_frame_bytes <= each peer's budget (see
        // `Transport::start`), so the permits always exist eventually.
        let length = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        let Ok(bytes) = peer.bytes.clone().acquire_many_owned(length).await else {
            return false;
        };
        let Some(slots) = peer.frame_slots.get(lane) else {
            return false;
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return false;
        };
        let frame = PeerFrame {
            from,
            frame,
            _accounting: Some(Accounting {
                _bytes: bytes,
                _frame: slot,
            }),
        };
        if let Some(queue) = peer.lanes.get(lane) {
            let mut queue = lock(queue);
            // Counted under the lock the consumer takes it with, so a
            // frame that can be taken is always already counted.
            self.counters.frames_in.increment();
            self.counters.bytes_in.add(u64::from(length));
            queue.push_back(frame);
        }
        self.ready.notify_one();
        true
    }

    /// Stops the readers waiting for room, and tells the consumer that no
    /// more frames will come.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for peer in &self.peers {
            peer.bytes.close();
            for slots in &peer.frame_slots {
                slots.close();
            }
        }
        self.ready.notify_one();
    }
}

/// The consumer's end: frames from every peer, taken fairly.
#[derive(Debug)]
pub struct Inbound {
    queues: Arc<InboundQueues>,
    /// Per lane, the peer to take from next.
    next_peer: [usize; 2],
}

impl Inbound {
    pub(crate) fn new(queues: Arc<InboundQueues>) -> Inbound {
        Inbound {
            queues,
            next_peer: [0; 2],
        }
    }

    /// Moves up to `max` frames of `lane` into `batch`, one per peer in
    /// turn (round-robin, continuing where the last call stopped).
    /// Returns how many.
    /// Stops early once the frames taken hold `max_bytes` (at least one
    /// frame is taken if any waits): what is taken is decoded at once, and
    /// a decoded message takes about as much memory again as its frame.
    pub fn take(
        &mut self,
        lane: Lane,
        max: usize,
        max_bytes: usize,
        batch: &mut Vec<PeerFrame>,
    ) -> usize {
        let peers = &self.queues.peers;
        let count = peers.len();
        let Some(next) = self.next_peer.get_mut(lane.index()) else {
            return 0;
        };
        let mut taken = 0;
        let mut bytes = 0usize;
        let mut empty_in_a_row = 0;
        while taken < max && bytes < max_bytes && empty_in_a_row < count {
            let at = *next % count;
            *next = (at + 1) % count;
            let frame = peers
                .get(at)
                .and_then(|peer| peer.lanes.get(lane.index()))
                .and_then(|queue| lock(queue).pop_front());
            match frame {
                Some(frame) => {
                    bytes = bytes.saturating_add(frame.frame.len());
                    batch.push(frame);
                    taken += 1;
                    empty_in_a_row = 0;
                }
                None => empty_in_a_row += 1,
            }
        }
        taken
    }

    /// The next frame without waiting: consensus lane first, round-robin
    /// across peers.
    pub fn try_recv(&mut self) -> Option<PeerFrame> {
        let mut batch = Vec::with_capacity(1);
        if self.take(Lane::Consensus, 1, usize::MAX, &mut batch) == 0 {
            self.take(Lane::Requests, 1, usize::MAX, &mut batch);
        }
        batch.pop()
    }

    /// The next frame (as [`Inbound::try_recv`]), waiting for one; `None`
    /// once the transport stopped and every queued frame was taken.
    pub async fn recv(&mut self) -> Option<PeerFrame> {
        loop {
            if let Some(frame) = self.try_recv() {
                return Some(frame);
            }
            if self.queues.closed.load(Ordering::Acquire) {
                return None;
            }
            self.queues.ready.notified().await;
        }
    }

    /// Waits until a frame may have been queued since the last call, or the
    /// transport stopped.
    pub async fn ready(&self) {
        if self.is_closed() {
            return;
        }
        self.queues.ready.notified().await;
    }

    /// Whether the transport stopped (frames already queued may remain).
    pub fn is_closed(&self) -> bool {
        self.queues.closed.load(Ordering::Acquire)
    }

    /// Frames queued and not yet taken, all peers and lanes together.
    pub fn len(&self) -> usize {
        self.queues
            .peers
            .iter()
            .flat_map(|peer| peer.lanes.iter())
            .map(|queue| lock(queue).len())
            .sum()
    }

    /// Whether no frame is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the transport stopped and every queued frame was taken.
    pub fn is_finished(&self) -> bool {
        self.is_closed() && self.is_empty()
    }
}

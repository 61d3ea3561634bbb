//! The durability worker: group commit, then send.
//!
//! Consensus hands over each step's records, deliveries, messages and client
//! answers. The worker takes every step waiting, answers their clients
//! (receipts prove themselves with commit certificates, see [`Worker::run`]),
//! writes all their records in one transaction (one fsync), and only then
//! sends their messages, in step order. So nothing a step signed leaves
//! before the state that covers it is durable — and consensus itself never
//! waits for the disk: a slower disk makes bigger groups, not a slower
//! protocol loop.
//!
//! A request that executed earlier (a client's retry, or anyone replaying
//! a request seen in a block) is answered with a receipt for its old block.
//! Building one means reading the block and hashing its Merkle tree: work
//! in the size of the block, for a message of a few hundred bytes. So the
//! worker never does it itself: blocks answered for are kept in a cache
//! bounded in bytes ([`ReceiptCache`]), and a block not there is loaded by
//! a separate thread ([`Loader`]) fed through a bounded queue; when that is
//! full the request is answered "busy" (counted), and the client retries.

use super::consensus::Waiter;
use super::metrics::NodeMetrics;
use super::Shared;
use crate::client_api::{NodeMessage, Receipt, Rejection};
use crate::storage::DiskStorage;
use crate::transport::{Bytes, SendError, Transport};
use bftd_protocol::merkle::MerkleTree;
use bftd_protocol::replica::{RejectReason, ReplyOutcome};
use bftd_protocol::{
    BlockSource, CommittedBlock, Delivery, Destination, Record, RequestKey, SeqNum, Storage,
};
use std::collections::HashMap;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Steps written together at most: bounds one write's size and latency.
const MAX_GROUP: usize = 64;
/// Blocks waiting to be loaded for receipts, at most (each with the
/// answers waiting for it); beyond, requests are answered "busy".
pub(crate) const LOAD_QUEUE: usize = 64;
/// Bytes of blocks (payload, tree and index, estimated) kept for
/// receipts: a few of the largest blocks, thousands of small ones.
pub(crate) const RECEIPT_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// A message ready for the wire.
pub(crate) struct Outbound {
    pub delay: Duration,
    pub to: Destination,
    pub bytes: Bytes,
}

/// The outcome of a request, for the clients waiting on it.
pub(crate) struct Answer {
    pub waiters: Vec<Waiter>,
    pub request_id: u64,
    pub outcome: ReplyOutcome,
}

/// What one replica step produced.
pub(crate) struct Step {
    pub persist: Vec<Record>,
    pub deliver: Vec<Delivery>,
    pub sends: Vec<Outbound>,
    pub answers: Vec<Answer>,
}

impl Step {
    pub(crate) fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.deliver.is_empty()
            && self.sends.is_empty()
            && self.answers.is_empty()
    }
}

pub(crate) struct Worker {
    pub storage: DiskStorage,
    pub transport: Transport,
    pub shared: Arc<Shared>,
    pub height: watch::Sender<SeqNum>,
    pub runtime: tokio::runtime::Handle,
    pub steps: mpsc::Receiver<Step>,
    /// Blocks recently answered for.
    pub cache: Arc<Mutex<ReceiptCache>>,
    /// Blocks to load for receipts, on the [`Loader`]'s thread.
    pub loads: mpsc::Sender<Load>,
}

impl Worker {
    /// Runs on its own thread until consensus stops or storage fails (then
    /// the node must stop: it can no longer promise durability).
    pub(crate) fn run(mut self) {
        while let Some(first) = self.steps.blocking_recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match self.steps.try_recv() {
                    Ok(step) => group.push(step),
                    Err(_) => break,
                }
            }
            let mut records = Vec::new();
            let mut deliveries = Vec::new();
            let mut answers = Vec::new();
            for step in group.iter_mut() {
                records.append(&mut step.persist);
                deliveries.append(&mut step.deliver);
                answers.append(&mut step.answers);
            }
            // Clients need not wait for the write: a receipt carries the
            // block's commit certificate (2f+1 signed commits, each sent
            // only after its signer's state was durable), which proves the
            // block committed whatever becomes of this node's disk; a node
            // that crashes before writing the block fetches it back from
            // its peers. This takes one fsync off every request's latency.
            // (A replayed request may name a block delivered earlier in this
            // group, so the answers see all of the group's deliveries.)
            if !answers.is_empty() {
                self.answer(&deliveries, answers);
            }
            if let Err(error) = self.write(&records, &deliveries) {
                tracing::error!(%error, "storage failed; stopping the node");
                self.shared.fail(error.to_string());
                return;
            }
            for step in group {
                self.release(step);
            }
        }
    }

    fn write(
        &mut self,
        records: &[Record],
        deliveries: &[Delivery],
    ) -> Result<(), bftd_protocol::StorageError> {
        if records.is_empty() && deliveries.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        self.storage.apply(records, deliveries)?;
        self.shared.metrics.storage_apply.observe(started.elapsed());
        self.shared
            .metrics
            .first_height
            .store(self.storage.first_height().0, Ordering::Relaxed);
        if let Some(last) = deliveries.last() {
            self.height.send_replace(last.block.height());
        }
        Ok(())
    }

    /// The step is durable: send its messages.
    fn release(&self, step: Step) {
        for outbound in step.sends {
            if outbound.delay.is_zero() {
                transmit(
                    &self.transport,
                    &self.shared.metrics,
                    outbound.to,
                    outbound.bytes,
                );
            } else {
                let transport = self.transport.clone();
                let shared = self.shared.clone();
                self.runtime.spawn(async move {
                    tokio::time::sleep(outbound.delay).await;
                    transmit(&transport, &shared.metrics, outbound.to, outbound.bytes);
                });
            }
        }
    }

    /// A verifiable receipt for each committed request, a rejection
    /// otherwise. Each block's Merkle tree and request index are built once,
    /// however many of its requests are answered: from the tree the replica
    /// kept for a block delivered in this group, from the cache, or by the
    /// loader thread (never here).
    fn answer(&self, delivered: &[Delivery], answers: Vec<Answer>) {
        let metrics = &self.shared.metrics;
        let mut blocks: HashMap<SeqNum, Arc<Answered>> = HashMap::new();
        for answer in answers {
            let height = match answer.outcome {
                ReplyOutcome::Rejected(reason) => {
                    let reason = match reason {
                        RejectReason::Busy => Rejection::Busy,
                        RejectReason::Expired => Rejection::Expired,
                        RejectReason::TooFarAhead => Rejection::TooFarAhead,
                        RejectReason::TooLarge => Rejection::TooLarge,
                    };
                    reject(metrics, answer, reason);
                    continue;
                }
                ReplyOutcome::Committed { height } => height,
            };
            if let Some(answered) = blocks.get(&height) {
                send_receipt(metrics, answered, answer);
                continue;
            }
            let fresh = delivered
                .iter()
                .find(|d| d.block.height() == height)
                .map(|d| {
                    Arc::new(Answered::new(
                        d.block.clone(),
                        &d.duplicates,
                        d.tree.clone(),
                    ))
                });
            let answered = match fresh {
                Some(answered) => {
                    lock(&self.cache).insert(height, answered.clone());
                    Some(answered)
                }
                None => lock(&self.cache).get(height),
            };
            match answered {
                Some(answered) => {
                    send_receipt(metrics, &answered, answer);
                    blocks.insert(height, answered);
                }
                None => {
                    if let Err(full) = self.loads.try_send(Load { height, answer }) {
                        let (mpsc::error::TrySendError::Full(load)
                        | mpsc::error::TrySendError::Closed(load)) = full;
                        metrics
                            .receipt_loads_refused
                            .fetch_add(1, Ordering::Relaxed);
                        reject(metrics, load.answer, Rejection::Busy);
                    }
                }
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn reject(metrics: &NodeMetrics, answer: Answer, reason: Rejection) {
    metrics.rejected(reason);
    let message = NodeMessage::Rejected {
        request_id: answer.request_id,
        reason,
    };
    for waiter in answer.waiters {
        if waiter.reply_to.try_send(message.clone()).is_err() {
            metrics.replies_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The receipt of a request that executed in `answered`, to its waiters.
fn send_receipt(metrics: &NodeMetrics, answered: &Answered, answer: Answer) {
    let Some(first) = answer.waiters.first() else {
        return;
    };
    // The request's own position (not a later duplicate of it). A lying
    // node could name the wrong block; the client's check of the proof
    // then fails.
    let index = answered
        .positions
        .get(&first.request.key())
        .copied()
        .unwrap_or(0);
    let message = NodeMessage::Receipt(Receipt::new(
        &answered.block,
        &answered.tree,
        index,
        answer.request_id,
    ));
    for waiter in answer.waiters {
        metrics.commit_latency.observe(waiter.received.elapsed());
        if waiter.reply_to.try_send(message.clone()).is_err() {
            metrics.replies_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A block to load for the answers waiting on it.
pub(crate) struct Load {
    height: SeqNum,
    answer: Answer,
}

/// Loads old blocks for receipts, one at a time, on its own thread: the
/// durability worker (and its fsyncs) never waits for it, and however many
/// replays arrive, at most one block is read and hashed at a time, with at
/// most [`LOAD_QUEUE`] waiting.
pub(crate) struct Loader {
    pub storage: DiskStorage,
    pub shared: Arc<Shared>,
    pub cache: Arc<Mutex<ReceiptCache>>,
    pub loads: mpsc::Receiver<Load>,
}

impl Loader {
    pub(crate) fn run(mut self) {
        let metrics = &self.shared.metrics;
        while let Some(Load { height, answer }) = self.loads.blocking_recv() {
            // An earlier load may have brought the block in.
            let cached = lock(&self.cache).get(height);
            let answered = cached.or_else(|| {
                metrics.receipt_block_loads.fetch_add(1, Ordering::Relaxed);
                let block = self.storage.block(height)?;
                let duplicates = self.storage.duplicates(height);
                let answered = Arc::new(Answered::new(block, &duplicates, None));
                lock(&self.cache).insert(height, answered.clone());
                Some(answered)
            });
            // A block this node does not hold (it was answered before the
            // write failed): no answer; the client asks another node.
            if let Some(answered) = answered {
                send_receipt(metrics, &answered, answer);
            }
        }
    }
}

/// Blocks answered for, oldest inserted evicted first, within a bound in
/// bytes (a block larger than the bound is not kept).
pub(crate) struct ReceiptCache {
    blocks: BTreeMap<SeqNum, (Arc<Answered>, usize)>,
    order: VecDeque<SeqNum>,
    bytes: usize,
    capacity: usize,
}

impl ReceiptCache {
    pub(crate) fn new(capacity: usize) -> ReceiptCache {
        ReceiptCache {
            blocks: BTreeMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            capacity,
        }
    }

    fn get(&self, height: SeqNum) -> Option<Arc<Answered>> {
        self.blocks
            .get(&height)
            .map(|(answered, _)| answered.clone())
    }

    fn insert(&mut self, height: SeqNum, answered: Arc<Answered>) {
        let size = answered.size();
        if size > self.capacity || self.blocks.contains_key(&height) {
            return;
        }
        while self.bytes + size > self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some((_, freed)) = self.blocks.remove(&oldest) {
                self.bytes -= freed;
            }
        }
        self.bytes += size;
        self.order.push_back(height);
        self.blocks.insert(height, (answered, size));
    }
}

/// A committed block being answered for: its Merkle tree, and where each
/// request executed (its first position; later duplicates were skipped).
pub(crate) struct Answered {
    block: Arc<CommittedBlock>,
    tree: Arc<MerkleTree>,
    positions: HashMap<RequestKey, usize>,
}

impl Answered {
    /// `tree` is the one the replica built checking the pre-prepare, if it
    /// kept it (a block from state transfer or storage has none): hashing
    /// a 1,000-request batch again was 5 % of a node's CPU.
    fn new(
        block: Arc<CommittedBlock>,
        duplicates: &[u32],
        tree: Option<Arc<MerkleTree>>,
    ) -> Answered {
        let tree = tree
            .filter(|tree| tree.root() == block.block.batch_digest)
            .unwrap_or_else(|| Arc::new(MerkleTree::new(&block.block.batch)));
        let mut positions = HashMap::with_capacity(block.block.batch.requests.len());
        for (index, request) in block.block.batch.requests.iter().enumerate() {
            if !duplicates.contains(&(index as u32)) {
                positions.entry(request.key()).or_insert(index);
            }
        }
        Answered {
            block,
            tree,
            positions,
        }
    }

    /// Bytes it holds, estimated: each request's payload, plus its
    /// signature and key, two tree nodes and an index entry.
    fn size(&self) -> usize {
        self.block
            .block
            .batch
            .requests
            .iter()
            .map(|request| request.payload_len() + 256)
            .sum::<usize>()
            + 1024
    }
}

fn transmit(transport: &Transport, metrics: &NodeMetrics, to: Destination, bytes: Bytes) {
    match to {
        Destination::AllOthers => transport.broadcast(bytes),
        Destination::To(peer) => match transport.send(peer, bytes) {
            Ok(()) | Err(SendError::UnknownPeer { .. }) => {}
            Err(_) => {
                metrics.send_dropped.fetch_add(1, Ordering::Relaxed);
            }
        },
    }
}

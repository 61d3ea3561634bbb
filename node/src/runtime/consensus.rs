//! The consensus task: the only owner of the replica. It takes verified
//! inputs, lets the replica step, makes the step's records durable in one
//! write (group commit), and only then sends what the step produced.

use super::metrics::{NodeMetrics, Snapshot};
use super::Shared;
use crate::client_api::{NodeMessage, Receipt, Rejection};
use crate::storage::DiskStorage;
use crate::transport::{Bytes, SendError, Transport};
use bftd_protocol::merkle::MerkleTree;
use bftd_protocol::replica::{ClientReply, RejectReason, ReplyOutcome};
use bftd_protocol::{
    codec, BlockSource, CommittedBlock, Delivery, Destination, NodeId, Outgoing, Replica,
    RequestKey, SeqNum, SignedRequest, Storage, Verified, WireMessage,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// What the consensus task is fed.
pub(crate) enum Input {
    /// A verified message from a peer.
    Peer {
        from: NodeId,
        message: Verified<WireMessage>,
    },
    /// A verified request from a client connected here.
    Request {
        request: Verified<SignedRequest>,
        reply_to: mpsc::Sender<NodeMessage>,
        received: Instant,
    },
}

/// A client waiting for its request's outcome.
struct Waiter {
    reply_to: mpsc::Sender<NodeMessage>,
    received: Instant,
    request: SignedRequest,
}

/// Most inputs handled before one durable write: bounds the latency a big
/// burst adds, while still amortising the fsync over many inputs.
const MAX_INPUTS_PER_STEP: usize = 512;
/// Most clients that may wait on the same request.
const MAX_WAITERS_PER_REQUEST: usize = 4;

pub(crate) struct Consensus {
    pub replica: Replica,
    pub storage: DiskStorage,
    pub transport: Transport,
    pub shared: Arc<Shared>,
    pub inputs: mpsc::Receiver<Input>,
    pub height: watch::Sender<SeqNum>,
    pub shutdown: watch::Receiver<bool>,
    pub started: Instant,
    #[cfg(feature = "byzantine")]
    pub adversary: Option<bftd_protocol::byzantine::Adversary>,
    waiting: HashMap<RequestKey, Vec<Waiter>>,
}

impl Consensus {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        replica: Replica,
        storage: DiskStorage,
        transport: Transport,
        shared: Arc<Shared>,
        inputs: mpsc::Receiver<Input>,
        height: watch::Sender<SeqNum>,
        shutdown: watch::Receiver<bool>,
        started: Instant,
    ) -> Consensus {
        Consensus {
            replica,
            storage,
            transport,
            shared,
            inputs,
            height,
            shutdown,
            started,
            #[cfg(feature = "byzantine")]
            adversary: None,
            waiting: HashMap::new(),
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn metrics(&self) -> &NodeMetrics {
        &self.shared.metrics
    }

    /// Runs until shutdown, or until storage fails (then the node must stop:
    /// it can no longer promise what it signs is durable).
    pub(crate) async fn run(mut self) -> Result<(), bftd_protocol::StorageError> {
        self.step_done()?;
        loop {
            let deadline = self
                .replica
                .next_deadline()
                .map(|at| self.started + at)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                input = self.inputs.recv() => {
                    let Some(input) = input else { return Ok(()) };
                    self.handle(input);
                    // Take what else is waiting, up to a bound: one durable
                    // write then covers all of it.
                    for _ in 0..MAX_INPUTS_PER_STEP {
                        match self.inputs.try_recv() {
                            Ok(input) => self.handle(input),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let now = self.now();
                    self.replica.handle_timeout(now);
                }
                _ = self.shutdown.changed() => return Ok(()),
            }
            self.step_done()?;
        }
    }

    fn handle(&mut self, input: Input) {
        let now = self.now();
        match input {
            Input::Peer { from, message } => {
                #[cfg(feature = "byzantine")]
                if let Some(adversary) = self.adversary.as_mut() {
                    adversary.observe(&message);
                }
                self.replica.handle_message(now, from, message);
            }
            Input::Request {
                request,
                reply_to,
                received,
            } => {
                let key = request.key();
                if !self.waiting.contains_key(&key)
                    && self.waiting.len() >= self.replica.config().max_pending_requests
                {
                    self.metrics().rejected(Rejection::Busy);
                    let _ = reply_to.try_send(NodeMessage::Rejected {
                        request_id: key.request_id,
                        reason: Rejection::Busy,
                    });
                    return;
                }
                let waiters = self.waiting.entry(key).or_default();
                if waiters.len() < MAX_WAITERS_PER_REQUEST {
                    waiters.push(Waiter {
                        reply_to,
                        received,
                        request: (*request).clone(),
                    });
                }
                self.replica.handle_request(now, request, true);
            }
        }
    }

    /// After a step: persist, send, reply, publish.
    fn step_done(&mut self) -> Result<(), bftd_protocol::StorageError> {
        let actions = self.replica.drain_actions();
        if !actions.persist.is_empty() || !actions.deliver.is_empty() {
            let started = Instant::now();
            let storage = &mut self.storage;
            tokio::task::block_in_place(|| storage.apply(&actions.persist, &actions.deliver))?;
            self.metrics().storage_apply.observe(started.elapsed());
        }
        self.send(actions.send);
        let replies = self.tamper_replies(actions.replies);
        self.reply(&actions.deliver, replies);
        if let Some(last) = actions.deliver.last() {
            self.height.send_replace(last.block.height());
        }
        self.metrics().publish(Snapshot {
            status: self.replica.status(),
            replica: self.replica.metrics().clone(),
            evidence: self.replica.evidence().to_vec(),
        });
        Ok(())
    }

    #[cfg(feature = "byzantine")]
    fn tamper_replies(&mut self, replies: Vec<ClientReply>) -> Vec<ClientReply> {
        match self.adversary.as_mut() {
            Some(adversary) => adversary.tamper_replies(replies),
            None => replies,
        }
    }

    #[cfg(not(feature = "byzantine"))]
    fn tamper_replies(&mut self, replies: Vec<ClientReply>) -> Vec<ClientReply> {
        replies
    }

    fn send(&mut self, sends: Vec<Outgoing>) {
        #[cfg(feature = "byzantine")]
        if let Some(adversary) = self.adversary.as_mut() {
            for emission in adversary.tamper(sends) {
                let transport = self.transport.clone();
                let bytes = Bytes::from(emission.bytes);
                let to = emission.to;
                if emission.delay.is_zero() {
                    transmit(&transport, &self.shared.metrics, to, bytes);
                } else {
                    let shared = self.shared.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(emission.delay).await;
                        transmit(&transport, &shared.metrics, to, bytes);
                    });
                }
            }
            return;
        }
        for outgoing in sends {
            match codec::encode(&outgoing.message) {
                Ok(bytes) => transmit(
                    &self.transport,
                    self.metrics(),
                    outgoing.to,
                    Bytes::from(bytes),
                ),
                Err(error) => tracing::error!(%error, "cannot encode an outgoing message"),
            }
        }
    }

    /// Answers local clients: a verifiable receipt for each committed
    /// request, a rejection otherwise.
    fn reply(&mut self, delivered: &[Delivery], replies: Vec<ClientReply>) {
        let mut trees: HashMap<SeqNum, (Arc<CommittedBlock>, Vec<u32>, MerkleTree)> =
            HashMap::new();
        for reply in replies {
            let key = RequestKey {
                client: reply.client,
                request_id: reply.request_id,
            };
            let Some(waiters) = self.waiting.remove(&key) else {
                continue;
            };
            let message = match reply.outcome {
                ReplyOutcome::Rejected(reason) => {
                    let reason = match reason {
                        RejectReason::Busy => Rejection::Busy,
                        RejectReason::Stale => Rejection::Stale,
                        RejectReason::TooLarge => Rejection::TooLarge,
                    };
                    self.metrics().rejected(reason);
                    NodeMessage::Rejected {
                        request_id: reply.request_id,
                        reason,
                    }
                }
                ReplyOutcome::Committed { height } => {
                    if let std::collections::hash_map::Entry::Vacant(entry) = trees.entry(height) {
                        let found = delivered
                            .iter()
                            .find(|d| d.block.height() == height)
                            .map(|d| (d.block.clone(), d.duplicates.clone()))
                            .or_else(|| {
                                self.storage
                                    .block(height)
                                    .map(|b| (b, self.storage.duplicates(height)))
                            });
                        let Some((block, duplicates)) = found else {
                            continue;
                        };
                        let tree = MerkleTree::new(&block.block.batch);
                        entry.insert((block, duplicates, tree));
                    }
                    let Some((block, duplicates, tree)) = trees.get(&height) else {
                        continue;
                    };
                    let Some(first) = waiters.first() else {
                        continue;
                    };
                    // The request's own position (not a later duplicate of
                    // it). A lying shell could name the wrong block; the
                    // client's check of the proof then fails.
                    let index = block
                        .block
                        .batch
                        .requests
                        .iter()
                        .enumerate()
                        .position(|(i, r)| r == &first.request && !duplicates.contains(&(i as u32)))
                        .unwrap_or(0);
                    NodeMessage::Receipt(Receipt::new(block, tree, index, reply.request_id))
                }
            };
            for waiter in waiters {
                if matches!(message, NodeMessage::Receipt(_)) {
                    self.metrics()
                        .commit_latency
                        .observe(waiter.received.elapsed());
                }
                if waiter.reply_to.try_send(message.clone()).is_err() {
                    self.metrics()
                        .replies_dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }
}

fn transmit(transport: &Transport, metrics: &NodeMetrics, to: Destination, bytes: Bytes) {
    match to {
        Destination::AllOthers => transport.broadcast(bytes),
        Destination::To(peer) => match transport.send(peer, bytes) {
            Ok(()) | Err(SendError::UnknownPeer { .. }) => {}
            Err(_) => {
                metrics
                    .send_dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        },
    }
}

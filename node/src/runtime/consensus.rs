//! The consensus task: the only owner of the replica. It takes verified
//! inputs, lets the replica step, and hands what the step produced to the
//! durability worker (`durable.rs`), which makes the step's records durable
//! and only then sends its messages. Consensus never waits for a disk.

use super::admission::Slot;
use super::clients::Replies;
use super::durable::{Answer, Outbound, Step};
use super::metrics::{NodeMetrics, Snapshot};
use super::quorum::{InTouch, QuorumChange, QuorumWatch};
use super::Shared;
use crate::client_api::{NodeMessage, Rejection};
use crate::transport::Bytes;
use bftd_protocol::replica::ClientReply;
use bftd_protocol::{
    codec, NodeId, Outgoing, Replica, RequestKey, SignedRequest, Verified, WireMessage,
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
        reply_to: Replies,
        received: Instant,
        /// Its place in the node's window, held until it is answered.
        slot: Slot,
    },
}

/// A client waiting for its request's outcome.
pub(crate) struct Waiter {
    pub reply_to: Replies,
    pub received: Instant,
    pub request: SignedRequest,
    /// Given back to the window when the waiter is dropped, answered.
    pub _slot: Slot,
}

/// Most inputs handled before one durable write: bounds the latency a big
/// burst adds, while still amortising the fsync over many inputs.
const MAX_INPUTS_PER_STEP: usize = 512;
/// Most clients that may wait on the same request.
const MAX_WAITERS_PER_REQUEST: usize = 4;

pub(crate) struct Consensus {
    pub replica: Replica,
    pub shared: Arc<Shared>,
    pub inputs: mpsc::Receiver<Input>,
    pub writer: mpsc::Sender<Step>,
    pub shutdown: watch::Receiver<bool>,
    /// The stable checkpoint, for the fetch server's answers.
    pub checkpoint: Option<watch::Sender<bftd_protocol::CheckpointCertificate>>,
    pub started: Instant,
    /// What makes this node lie (`bftd-byzantine` only; never in `bftd`).
    pub intercept: Option<Box<dyn super::Intercept>>,
    waiting: HashMap<RequestKey, Vec<Waiter>>,
    /// Peers the replica ignores for other consensus settings, as last
    /// logged.
    mismatched: std::collections::BTreeMap<NodeId, &'static str>,
    quorum: QuorumWatch,
}

impl Consensus {
    pub(crate) fn new(
        replica: Replica,
        shared: Arc<Shared>,
        inputs: mpsc::Receiver<Input>,
        writer: mpsc::Sender<Step>,
        shutdown: watch::Receiver<bool>,
        started: Instant,
    ) -> Consensus {
        Consensus {
            replica,
            shared,
            inputs,
            writer,
            shutdown,
            started,
            intercept: None,
            checkpoint: None,
            waiting: HashMap::new(),
            mismatched: Default::default(),
            quorum: QuorumWatch::default(),
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
        self.step_done().await?;
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
            self.step_done().await?;
        }
    }

    fn handle(&mut self, input: Input) {
        let now = self.now();
        match input {
            Input::Peer { from, message } => {
                let message = match self.intercept.as_mut() {
                    Some(intercept) => match intercept.admit(now, message) {
                        Some(admitted) => admitted,
                        None => return,
                    },
                    None => message,
                };
                self.replica.handle_message(now, from, message);
            }
            Input::Request {
                request,
                reply_to,
                received,
                slot,
            } => {
                if let Some(intercept) = self.intercept.as_mut() {
                    if !intercept.admit_request(now, &request) {
                        return;
                    }
                }
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
                        _slot: slot,
                    });
                }
                self.replica.handle_request(now, request, true);
            }
        }
    }

    /// Says once, by name, which setting a peer disagrees on (it is ignored
    /// until its cluster file matches ours), and when it matches again.
    fn log_settings_mismatches(&mut self) {
        let now = self.replica.settings_mismatches();
        if *now == self.mismatched {
            return;
        }
        for (peer, setting) in now {
            if self.mismatched.get(peer) != Some(setting) {
                tracing::warn!(
                    %peer,
                    setting,
                    "peer ignored: its [protocol] {setting} differs from our cluster file's; every node must use the same cluster file"
                );
            }
        }
        for peer in self.mismatched.keys() {
            if !now.contains_key(peer) {
                tracing::info!(%peer, "peer's consensus settings match ours again");
            }
        }
        self.mismatched = now.clone();
    }

    /// After a step: hand what the step produced to the durability worker
    /// (which writes it, then sends and replies), and publish the status.
    async fn step_done(&mut self) -> Result<(), bftd_protocol::StorageError> {
        self.log_settings_mismatches();
        let actions = self.replica.drain_actions();
        let sends = self.encode(actions.send);
        let replies = self.tamper_replies(actions.replies);
        let answers = replies
            .into_iter()
            .filter_map(|reply| {
                let key = RequestKey {
                    client: reply.client,
                    request_id: reply.request_id,
                };
                let waiters = self.waiting.remove(&key)?;
                Some(Answer {
                    waiters,
                    request_id: reply.request_id,
                    outcome: reply.outcome,
                })
            })
            .collect();
        let step = Step {
            persist: actions.persist,
            deliver: actions.deliver,
            sends,
            answers,
        };
        if !step.is_empty() && self.writer.send(step).await.is_err() {
            return Err(self.shared.storage_failure());
        }
        if let Some(checkpoint) = &self.checkpoint {
            let stable = self.replica.stable_checkpoint();
            if checkpoint.borrow().seq() != stable.seq() {
                checkpoint.send_replace(stable.clone());
            }
        }
        let status = self.replica.status();
        self.watch_quorum(InTouch::of(&status));
        self.metrics().publish(Snapshot {
            status,
            replica: self.replica.metrics().clone(),
            evidence: self.replica.evidence().to_vec(),
        });
        Ok(())
    }

    /// Logs losing a quorum and regaining it, once each.
    fn watch_quorum(&mut self, touch: InTouch) {
        let n = self.shared.committee.n();
        match self.quorum.observe(touch, self.now(), n) {
            Some(QuorumChange::Lost(health)) => tracing::warn!(
                peers_in_touch = touch.peers_in_touch,
                quorum = touch.quorum,
                "{health}; nothing commits until more nodes are up and reachable \
                 (check the other nodes and the network between them)"
            ),
            Some(QuorumChange::Regained { peers_in_touch }) => tracing::info!(
                peers_in_touch,
                quorum = touch.quorum,
                "quorum regained: hears from {peers_in_touch} of {} peers",
                n.saturating_sub(1)
            ),
            None => {}
        }
    }

    fn tamper_replies(&mut self, replies: Vec<ClientReply>) -> Vec<ClientReply> {
        match self.intercept.as_mut() {
            Some(intercept) => intercept.tamper_replies(replies),
            None => replies,
        }
    }

    /// Encodes each message once (a broadcast shares its bytes), through the
    /// byzantine layer if this node lies.
    fn encode(&mut self, sends: Vec<Outgoing>) -> Vec<Outbound> {
        if let Some(intercept) = self.intercept.as_mut() {
            return intercept
                .tamper(sends)
                .into_iter()
                .map(|emission| Outbound {
                    delay: emission.delay,
                    to: emission.to,
                    bytes: Bytes::from(emission.bytes),
                })
                .collect();
        }
        sends
            .into_iter()
            .filter_map(|outgoing| match codec::encode(&outgoing.message) {
                Ok(bytes) => Some(Outbound {
                    delay: Duration::ZERO,
                    to: outgoing.to,
                    bytes: Bytes::from(bytes),
                }),
                Err(error) => {
                    tracing::error!(%error, "cannot encode an outgoing message");
                    None
                }
            })
            .collect()
    }
}

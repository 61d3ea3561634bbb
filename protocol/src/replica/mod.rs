//! The PBFT replica as a deterministic state machine.
//!
//! Inputs: [`Replica::handle_message`], [`Replica::handle_request`],
//! [`Replica::handle_timeout`]; time is a value passed in. Output: the
//! [`Actions`] drained with [`Replica::drain_actions`]. Same inputs, same
//! outputs — that is what lets the simulator replay a failing seed.
//!
//! The work is split by protocol phase: `requests` (client requests and
//! batching), `normal_case` (pre-prepare, prepare, commit, execution),
//! `checkpoint`, `view_change`, `state_transfer`.

mod checkpoint;
mod fair;
mod jump;
#[cfg(test)]
mod liveness_tests;
mod metrics;
mod normal_case;
mod requests;
mod state_transfer;
mod suspicion;
#[cfg(test)]
mod tests;
mod view_change;
mod vouching;

#[cfg(feature = "byzantine")]
pub(crate) use view_change::compute_reproposals;
pub(crate) use view_change::{valid_new_view, valid_view_change};

pub use fair::REQUEST_OVERHEAD;
pub use metrics::{DropReason, Metrics};
pub use state_transfer::{blocks_to_serve, is_pruned, FETCH_MAX_BYTES};

use crate::certificate::{CheckpointCertificate, CommitCertificate, PreparedCertificate};
use crate::clients::ExecutedRequests;
use crate::committee::Committee;
use crate::config::{Config, ConfigError};
use crate::ids::{NodeId, SeqNum, View};
use crate::merkle::MerkleTree;
use crate::message::{
    Batch, Checkpoint, Commit, NewView, PrePrepare, Prepare, RequestKey, Signed, SignedRequest,
    Status, Suspect, ViewChange, WireMessage,
};
use crate::signer::Signer;
use crate::storage::{BlockSource, Delivery, Record, Recovered};
use crate::verify::Verified;
use bftd_crypto::{Digest, KeyPair, PublicKey};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// One replica.
    To(NodeId),
    /// Every replica but the sender.
    AllOthers,
}

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Where to.
    pub to: Destination,
    /// What.
    pub message: WireMessage,
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// Too many requests pending; retry later.
    Busy,
    /// `valid_until` is below the next height: the request can never
    /// execute (if it executed before, that answer came instead).
    Expired,
    /// `valid_until` is more than `request_lifetime` above the next height.
    TooFarAhead,
    /// The payload exceeds `max_request_bytes`.
    TooLarge,
}

/// What a client is told about its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyOutcome {
    /// Executed in the block at `height`.
    Committed {
        /// The block's height.
        height: SeqNum,
    },
    /// Refused.
    Rejected(RejectReason),
}

/// An answer to a client that submitted through this replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientReply {
    /// The client.
    pub client: PublicKey,
    /// Its request id.
    pub request_id: u64,
    /// The outcome.
    pub outcome: ReplyOutcome,
}

/// What the shell must do after an input. In this order: make `persist` and
/// `deliver` durable (one atomic write), then send `send`, then answer
/// `replies`. Nothing in `send` may leave before the write completes: it may
/// carry votes that the persisted safety state must already cover.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actions {
    /// Records to make durable.
    pub persist: Vec<Record>,
    /// Blocks executed, in height order, to store and hand to the
    /// application.
    pub deliver: Vec<Delivery>,
    /// Messages to send.
    pub send: Vec<Outgoing>,
    /// Answers to local clients.
    pub replies: Vec<ClientReply>,
}

impl Actions {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.deliver.is_empty()
            && self.send.is_empty()
            && self.replies.is_empty()
    }
}

/// Evidence of misbehaviour: two conflicting messages, both validly signed by
/// the same replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// Two pre-prepares for one view and sequence.
    PrePrepare(Signed<PrePrepare>, Signed<PrePrepare>),
    /// Two prepares for one view and sequence.
    Prepare(Signed<Prepare>, Signed<Prepare>),
    /// Two commits for one view and sequence.
    Commit(Signed<Commit>, Signed<Commit>),
    /// Two checkpoints for one sequence.
    Checkpoint(Signed<Checkpoint>, Signed<Checkpoint>),
}

impl Evidence {
    /// The replica both messages are signed by.
    pub fn culprit(&self) -> NodeId {
        match self {
            Evidence::PrePrepare(a, _) => a.signer,
            Evidence::Prepare(a, _) => a.signer,
            Evidence::Commit(a, _) => a.signer,
            Evidence::Checkpoint(a, _) => a.signer,
        }
    }
}

/// Most pieces of evidence kept (the oldest are kept; later ones only count).
const MAX_EVIDENCE: usize = 64;

/// Normal operation, or between views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Normal,
    /// Moving to `Replica::view`.
    ViewChange {
        /// When 2f+1 view-changes for the view were in: the new-view timer
        /// runs from then.
        quorum_at: Option<Duration>,
    },
}

/// Per-sequence protocol state, inside the watermark window.
#[derive(Clone, Debug, Default)]
struct Slot {
    /// The pre-prepare accepted in the current view.
    pre_prepare: Option<Signed<PrePrepare>>,
    /// A batch known to hash to the digest beside it.
    batch: Option<(Digest, Arc<Batch>)>,
    /// `batch`'s Merkle tree, when this replica built it to check the digest:
    /// handed on at execution (in [`Delivery::tree`]) so receipts' proofs
    /// need no second pass over the batch.
    tree: Option<Arc<MerkleTree>>,
    /// Prepares for the current view, first per signer.
    prepares: BTreeMap<NodeId, Signed<Prepare>>,
    /// Commits for the current view, first per signer.
    commits: BTreeMap<NodeId, Signed<Commit>>,
    /// This replica sent its commit in the current view.
    commit_sent: bool,
    /// The prepared certificate from the highest view.
    prepared: Option<PreparedCertificate>,
    /// The commit certificate, once committed.
    committed: Option<CommitCertificate>,
    /// When the current view's pre-prepare was accepted here.
    pre_prepare_at: Option<Duration>,
    /// Who vouches for the batch's requests, when known (the pre-prepare
    /// came with them, or this replica proposed it): re-sent with it.
    vouches: Vec<crate::message::Vouch>,
    /// The bytes of the batch this replica proposed here as primary in the
    /// current view (requests counted as in the fair queue), 0 otherwise:
    /// what the pipeline's byte bound counts.
    proposed_bytes: usize,
}

/// A request the replica holds until it executes.
#[derive(Clone, Debug)]
struct PendingRequest {
    request: SignedRequest,
    /// The replica that answers for it: this one for its own clients'
    /// requests, else the one that forwarded (or vouched for) it. Its share
    /// of the pending pool and of the primary's batches is this origin's
    /// (see `fair.rs`).
    origin: NodeId,
    /// A client of this replica submitted it: reply when it executes.
    local: bool,
    /// In a batch proposed (or re-proposed) in the current view.
    proposed: bool,
    /// Since when this replica has been waiting for it to execute (its
    /// arrival, or the start of the current view): the request timer runs
    /// from here.
    since: Duration,
    /// How far the request timer got with it.
    watch: Watch,
    /// The primary passed it over: a block it proposed well after this
    /// request reached it left the request out, with room to spare or with
    /// newer requests in (see `suspicion.rs`).
    passed_over: bool,
    /// Its inclusion latency was measured (once, at its first pre-prepare).
    included: bool,
    /// Connection-authenticated mode: the forward that vouches for it (see
    /// `vouching.rs`); `None` for this replica's own clients' requests
    /// until it signs one.
    vouch: Option<vouching::Vouched>,
}

/// What one origin holds of the pending requests.
#[derive(Clone, Copy, Debug, Default)]
struct Held {
    requests: usize,
    bytes: usize,
}

/// The request timer's stages for one pending request (see `suspicion.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watch {
    /// Only this replica and the primary may have it.
    Fresh,
    /// This replica relayed it to every replica, at this time.
    RelayedByUs(Duration),
    /// Another backup relayed it to us: every replica has it.
    RelayedToUs,
}

/// An outstanding state-transfer request.
#[derive(Clone, Copy, Debug)]
struct Fetch {
    peer: NodeId,
    deadline: Duration,
}

/// Read-only view of the replica's position, for status pages and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// This replica.
    pub id: NodeId,
    /// Current view (the target view while changing views).
    pub view: View,
    /// Whether it is between views.
    pub in_view_change: bool,
    /// The primary of `view`.
    pub primary: NodeId,
    /// Highest executed sequence.
    pub last_executed: SeqNum,
    /// Hash of the block at `last_executed`.
    pub head_hash: Digest,
    /// Stable checkpoint (low watermark).
    pub stable_checkpoint: SeqNum,
    /// Requests held, not yet executed.
    pub pending_requests: usize,
    /// Sequence numbers in the window with protocol state.
    pub active_slots: usize,
    /// Other replicas heard from (any verified message) within the last
    /// [`IN_TOUCH_STATUS_INTERVALS`] status intervals.
    pub peers_in_touch: usize,
    /// Replicas needed for a quorum (2f+1, this one included).
    pub quorum: usize,
    /// A peer answered this replica's fetch with a refusal: it pruned the
    /// blocks this replica needs next (`[storage] retain_blocks`), and its
    /// certified stable checkpoint is above this replica's height. Once
    /// f+1 peers refused, a replica with no embedded application jumps to
    /// their checkpoint (`Config::jump_past_pruned`, design notes §47);
    /// one with an application needs a snapshot (§29, not built yet) or a
    /// peer that keeps the blocks. Cleared when a block executes.
    pub needs_snapshot: bool,
}

impl ReplicaStatus {
    /// Whether this replica hears from enough peers to form a quorum with
    /// them: without one nothing can commit, and a node should say so (in
    /// its health check, and to its clients) rather than time out silently.
    pub fn has_quorum(&self) -> bool {
        self.peers_in_touch + 1 >= self.quorum
    }
}

/// A peer counts as in touch if any of its messages arrived within this many
/// status intervals (it sends a status every interval).
pub const IN_TOUCH_STATUS_INTERVALS: u32 = 4;

/// Why a replica could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The id is not in the committee.
    #[error("replica {id} is not in the committee of {n}")]
    NotAMember {
        /// The id.
        id: NodeId,
        /// Committee size.
        n: usize,
    },
    /// The key does not match the committee's key for this id.
    #[error("the key given for replica {id} is not the committee's key for it")]
    WrongKey {
        /// The id.
        id: NodeId,
    },
    /// Stored blocks do not chain, or one the restart needs is missing.
    #[error("stored block {height} is missing or does not chain to the one before it (or to the stable checkpoint's hash): the store is damaged")]
    CorruptLog {
        /// The first bad height.
        height: SeqNum,
    },
}

/// One PBFT replica.
pub struct Replica {
    id: NodeId,
    committee: Committee,
    config: Config,
    signer: Signer,
    blocks: Arc<dyn BlockSource>,
    now: Duration,

    /// The current view, or the one being moved to while `phase` is
    /// `ViewChange`.
    view: View,
    phase: Phase,
    /// Views that failed in a row: the new-view timeout doubles with each.
    failed_views: u32,

    stable_checkpoint: CheckpointCertificate,
    slots: BTreeMap<SeqNum, Slot>,
    /// The primary's next sequence number to assign.
    next_seq: SeqNum,
    last_executed: SeqNum,
    head_hash: Digest,
    /// Hashes of executed blocks at checkpoint sequences above the stable
    /// checkpoint (to adopt checkpoints and certify our own).
    checkpoint_hashes: BTreeMap<SeqNum, Digest>,
    /// Checkpoint votes above the stable checkpoint, by sequence and signer.
    checkpoint_votes: BTreeMap<SeqNum, BTreeMap<NodeId, Signed<Checkpoint>>>,

    /// Executed requests, for at-most-once.
    executed: ExecutedRequests,
    /// Requests admitted and not yet executed, dropped or expired. A hash
    /// map, not a B-tree: it is met several times per request on the hot
    /// path, and a B-tree's lookups compared 40-byte keys byte by byte
    /// (`memcmp` was 5.6 % of a primary's CPU at saturation). Nothing
    /// depends on its order: the one walk that sends (a view change's
    /// resubmission) sorts first.
    pending: std::collections::HashMap<RequestKey, PendingRequest>,
    /// Payload bytes of `pending`, plus the bytes of the forwards kept for
    /// them (bounded by `max_pending_bytes`).
    pending_bytes: usize,
    /// Connection-authenticated mode: the forwards that vouch for pending
    /// requests, by signature (see `vouching.rs`).
    retained: std::collections::HashMap<bftd_crypto::Signature, vouching::Retained>,
    /// What each origin holds of `pending` (requests, and bytes as counted
    /// in `pending_bytes`): each may hold at most its share.
    held: BTreeMap<NodeId, Held>,
    /// The primary's batching queue: one lane per origin, in arrival order,
    /// served fairly between origins (see `fair.rs`).
    queue: fair::FairQueue,
    /// Requests waiting to be forwarded to the primary, and their payload
    /// bytes (see [`Replica::flush_forwards`]).
    to_forward: Vec<SignedRequest>,
    to_forward_bytes: usize,
    /// When the last forward left: forwards are paced to one per
    /// `batch_delay` under load, so one signature covers many requests.
    last_forward: Option<Duration>,
    /// Pending requests in the order this replica started waiting for them
    /// (`since`, key); entries of requests no longer pending are skipped
    /// lazily. The request timer watches the front: the oldest request.
    waiting: VecDeque<(Duration, RequestKey)>,
    /// Pending requests by the last height they may execute at, to drop
    /// them when they expire (entries no longer pending are skipped).
    /// (By height, then in admission order: only the heights need ordering.)
    expiring: BTreeMap<SeqNum, Vec<RequestKey>>,
    /// The longest recent time from a request's arrival here to the first
    /// pre-prepare carrying it (decaying): how long forwarding and the
    /// primary's queue take now, so a request is judged passed over only
    /// well beyond it.
    inclusion: (Duration, Duration),
    /// The longest recent time from a pre-prepare to its execution
    /// (decaying): how long a block takes to commit now, so a loaded
    /// cluster is not judged stalled.
    commit_time: (Duration, Duration),
    /// Who suspects the primary of the current view, and when their
    /// suspicion (re-sent every status interval while it stands) last
    /// arrived.
    suspects: BTreeMap<NodeId, (Signed<Suspect>, Duration)>,
    /// The 2f+1 suspicions that made this replica leave its last normal
    /// view: relayed while the view change lasts.
    suspicion: Vec<Signed<Suspect>>,
    /// When this replica last executed a block (or started, or entered a
    /// view): state transfer and retransmission start when it stalls.
    last_execution: Duration,
    /// `last_executed` at the previous status tick: unchanged means stalled.
    executed_at_last_tick: SeqNum,
    /// The first sequence number the current view's primary proposed afresh
    /// (after the new-view's re-proposals): only its execution proves the
    /// view works and resets `failed_views`.
    view_fresh_from: SeqNum,

    /// View-changes above the current view, by view and signer; at most
    /// `VIEW_CHANGES_PER_PEER` views per signer (the highest).
    view_changes: BTreeMap<View, BTreeMap<NodeId, Signed<ViewChange>>>,
    /// The new-view that started the current view, to re-send to replicas
    /// that missed it.
    new_view: Option<Signed<NewView>>,
    /// When each peer was last sent that new-view (and for which view):
    /// re-sent at most once per `new_view_resend`.
    new_view_sent: BTreeMap<NodeId, (View, Duration)>,
    /// Normal-case messages for future views, per sender, each with its
    /// encoded size; bounded per sender in messages and in bytes.
    future: BTreeMap<NodeId, VecDeque<(usize, WireMessage)>>,
    /// Batches wanted for re-proposed digests, with when they were asked for.
    wanted_batches: BTreeMap<Digest, Duration>,

    peer_status: BTreeMap<NodeId, Status>,
    /// When each peer was last heard from (any verified message).
    heard_from: BTreeMap<NodeId, Duration>,
    /// Peers whose status showed other consensus settings, with the first
    /// setting that differs: everything else they send is ignored.
    settings_mismatches: BTreeMap<NodeId, &'static str>,
    fetch: Option<Fetch>,
    /// See [`ReplicaStatus::needs_snapshot`].
    needs_snapshot: bool,
    /// Peers that refused a fetch since the last block executed because
    /// they pruned the blocks asked for: f+1 of them start a jump.
    refused_by: std::collections::BTreeSet<NodeId>,
    /// Peers not to ask for blocks again until something executes: they
    /// refused, or served an invalid block, since (see `fetch_elsewhere`).
    avoid: std::collections::BTreeSet<NodeId>,
    /// A jump past pruned history under way (see `jump.rs`).
    jump: Option<jump::Jump>,
    next_status_at: Duration,

    actions: Actions,
    metrics: Metrics,
    evidence: Vec<Evidence>,
    /// See [`Replica::break_commit_quorum_for_testing`].
    broken_commit_quorum: bool,
    /// See [`Replica::break_new_view_rule_for_testing`].
    broken_new_view_rule: bool,
    /// See [`Replica::break_jump_table_for_testing`].
    broken_jump_table: bool,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("status", &self.status())
            .finish()
    }
}

/// The parts a replica is made of.
#[derive(Clone)]
pub struct ReplicaSetup {
    /// This replica's id.
    pub id: NodeId,
    /// Its identity key (must match the committee's key for `id`).
    pub key: KeyPair,
    /// The committee.
    pub committee: Committee,
    /// Protocol parameters.
    pub config: Config,
    /// Where executed blocks are read back from (for state transfer and
    /// recovery).
    pub blocks: Arc<dyn BlockSource>,
}

impl std::fmt::Debug for ReplicaSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaSetup")
            .field("id", &self.id)
            .finish()
    }
}

impl Replica {
    /// Builds a replica from its setup and what storage recovered (use
    /// `Recovered::default()` for a new one). Reads only the stored blocks
    /// after the stable checkpoint and the keys of the requests executed in
    /// the last `request_lifetime` heights (see `rebuild_from_store`).
    pub fn new(
        setup: ReplicaSetup,
        recovered: Recovered,
        now: Duration,
    ) -> Result<Replica, ReplicaError> {
        let ReplicaSetup {
            id,
            key,
            committee,
            config,
            blocks,
        } = setup;
        config.validate()?;
        let member_key = committee.key(id).ok_or(ReplicaError::NotAMember {
            id,
            n: committee.n(),
        })?;
        if member_key.public() != key.public() {
            return Err(ReplicaError::WrongKey { id });
        }
        let stable_checkpoint = recovered
            .stable_checkpoint
            .clone()
            .unwrap_or_else(CheckpointCertificate::genesis);
        let last_height = blocks.last_height();
        let (head_hash, executed) =
            rebuild_from_store(&*blocks, &stable_checkpoint, config.request_lifetime)?;
        let safety = recovered.safety.clone();
        let view = safety.view;
        let phase = if safety.in_view_change {
            Phase::ViewChange { quorum_at: None }
        } else {
            Phase::Normal
        };
        let mut replica = Replica {
            id,
            committee,
            signer: Signer::new(id, key, safety),
            blocks,
            now,
            view,
            phase,
            failed_views: 0,
            next_seq: last_height.max(stable_checkpoint.seq()).next(),
            last_executed: last_height,
            head_hash,
            checkpoint_hashes: BTreeMap::new(),
            checkpoint_votes: BTreeMap::new(),
            stable_checkpoint,
            slots: BTreeMap::new(),
            pending: std::collections::HashMap::new(),
            pending_bytes: 0,
            retained: Default::default(),
            held: BTreeMap::new(),
            queue: fair::FairQueue::new(fair::quantum(config.max_batch_bytes)),
            to_forward: Vec::new(),
            to_forward_bytes: 0,
            last_forward: None,
            waiting: VecDeque::new(),
            expiring: BTreeMap::new(),
            inclusion: (Duration::ZERO, now),
            commit_time: (Duration::ZERO, now),
            suspects: BTreeMap::new(),
            suspicion: Vec::new(),
            last_execution: now,
            executed_at_last_tick: last_height,
            view_fresh_from: SeqNum(0),
            view_changes: BTreeMap::new(),
            new_view: None,
            new_view_sent: BTreeMap::new(),
            future: BTreeMap::new(),
            wanted_batches: BTreeMap::new(),
            peer_status: BTreeMap::new(),
            heard_from: BTreeMap::new(),
            settings_mismatches: BTreeMap::new(),
            fetch: None,
            needs_snapshot: false,
            refused_by: Default::default(),
            avoid: Default::default(),
            jump: None,
            next_status_at: now,
            actions: Actions::default(),
            metrics: Metrics::default(),
            evidence: Vec::new(),
            broken_commit_quorum: false,
            broken_new_view_rule: false,
            broken_jump_table: false,
            executed,
            config,
        };
        replica.restore(recovered);
        Ok(replica)
    }

    /// Puts recovered prepared certificates and batches back into their
    /// slots, so a view change after a restart still reports them.
    fn restore(&mut self, recovered: Recovered) {
        let low = self.stable_checkpoint.seq();
        let view = self.view;
        self.new_view = recovered
            .new_view
            .filter(|nv| nv.value.view == view && self.phase == Phase::Normal);
        for cert in recovered.prepared {
            if cert.seq() > low {
                let seq = cert.seq();
                self.slots.entry(seq).or_default().prepared = Some(cert);
            }
        }
        // What this replica accepted in the current view, per sequence.
        let accepted: BTreeMap<SeqNum, Digest> = self
            .signer
            .state()
            .accepted
            .iter()
            .filter(|(_, &(accepted_view, _))| accepted_view == view)
            .map(|(&seq, &(_, digest))| (seq, digest))
            .collect();
        for (seq, digest, batch) in recovered.batches {
            if seq > low && seq > self.last_executed {
                let slot = self.slots.entry(seq).or_default();
                // Keep the batch accepted in the current view, else the one
                // that goes with the prepared certificate, else the last one.
                let wanted = accepted
                    .get(&seq)
                    .copied()
                    .or_else(|| slot.prepared.as_ref().map(|p| p.digest()));
                let holds_wanted = slot
                    .batch
                    .as_ref()
                    .is_some_and(|(held, _)| Some(*held) == wanted);
                if !holds_wanted && wanted.is_none_or(|w| w == digest) {
                    slot.batch = Some((digest, batch));
                    slot.tree = None;
                }
            }
        }
        if self.phase == Phase::Normal {
            self.resume_view(&accepted);
        } else {
            // A restarted replica in the middle of a view change re-sends its
            // view-change (the signer allows it: same view), and the
            // suspicions that started it, so replicas that never saw them
            // follow it out of the old view.
            self.suspicion = recovered.suspicion;
            self.send_view_change();
            self.relay_suspicion();
        }
    }

    // ----- inputs -------------------------------------------------------

    /// A message from replica `from`, whose signatures the shell verified.
    pub fn handle_message(&mut self, now: Duration, from: NodeId, message: Verified<WireMessage>) {
        self.now = now;
        let message = message.into_inner();
        self.metrics.received(message.kind());
        if !self.committee.contains(from) {
            self.metrics.dropped(DropReason::WrongSender);
            return;
        }
        self.heard_from.insert(from, now);
        if self.settings_mismatches.contains_key(&from)
            && !matches!(message, WireMessage::Status(_))
        {
            self.metrics.dropped(DropReason::OtherSettings);
            return;
        }
        self.dispatch(from, message);
        self.finish_step();
    }

    fn dispatch(&mut self, from: NodeId, message: WireMessage) {
        match message {
            WireMessage::PrePrepare {
                pre_prepare,
                batch,
                vouches,
            } => self.on_pre_prepare(pre_prepare, batch, vouches),
            WireMessage::Prepare(prepare) => self.on_prepare(prepare),
            WireMessage::Commit(commit) => self.on_commit(commit),
            WireMessage::Checkpoint(checkpoint) => self.on_checkpoint(checkpoint),
            WireMessage::ViewChange(view_change) => self.on_view_change(view_change),
            WireMessage::NewView(new_view) => self.on_new_view(new_view),
            WireMessage::Status(status) => self.on_status(status),
            WireMessage::Forward(forward) => self.on_forward(forward),
            WireMessage::FetchBlocks(fetch) => self.on_fetch_blocks(from, fetch),
            WireMessage::Blocks(blocks) => self.on_blocks(blocks),
            WireMessage::FetchBatch(fetch) => self.on_fetch_batch(from, fetch),
            WireMessage::Batch(batch) => self.on_batch(batch),
            WireMessage::Suspect(suspect) => self.on_suspect(suspect),
        }
    }

    /// A request from a client. `local` means the client submitted it to this
    /// replica and waits for its reply here.
    pub fn handle_request(&mut self, now: Duration, request: Verified<SignedRequest>, local: bool) {
        self.now = now;
        self.accept_request(request.into_inner(), local);
        self.finish_step();
    }

    /// Time passed: call at [`Replica::next_deadline`] (earlier is harmless).
    pub fn handle_timeout(&mut self, now: Duration) {
        self.now = now;
        if now >= self.next_status_at {
            self.next_status_at = now + self.config.status_interval;
            self.send_status();
            self.retransmit();
        }
        self.check_request_timer();
        self.check_new_view_timer();
        self.check_fetch_timer();
        self.propose_batches();
        self.finish_step();
    }

    /// When [`Replica::handle_timeout`] should next be called.
    pub fn next_deadline(&self) -> Option<Duration> {
        [
            Some(self.next_status_at),
            self.request_deadline(),
            self.new_view_deadline(),
            self.fetch.map(|fetch| fetch.deadline),
            self.batch_deadline(),
            self.forward_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Everything the replica wants done since the last drain.
    pub fn drain_actions(&mut self) -> Actions {
        std::mem::take(&mut self.actions)
    }

    /// Deliberately breaks the commit rule: commit on 2f matching commits
    /// instead of 2f+1. Exists only so the simulator can show that its
    /// checkers catch a broken quorum rule (`bftnet sim --break-quorum`); no
    /// configuration, message or command of the daemon reaches it.
    #[doc(hidden)]
    pub fn break_commit_quorum_for_testing(&mut self) {
        self.broken_commit_quorum = true;
    }

    /// Deliberately breaks the new-view rule: for each sequence, `O` takes
    /// the digest prepared in the *lowest* view of `V` instead of the
    /// highest, so a new primary may re-propose a batch that lost to one
    /// that already committed. Exists only so the simulator can show its
    /// adversary reaches the view change's semantics (`bftnet sim
    /// --break-new-view`); nothing in the daemon reaches it.
    #[doc(hidden)]
    pub fn break_new_view_rule_for_testing(&mut self) {
        self.broken_new_view_rule = true;
    }

    /// Deliberately breaks the table a jump past pruned history rebuilds
    /// (§47): it records only the checkpoint block's requests, forgetting
    /// the rest of the window. Exists only so the simulator can show its
    /// checkers catch it (`bftnet sim --break-jump-table`); nothing in the
    /// daemon reaches it.
    #[doc(hidden)]
    pub fn break_jump_table_for_testing(&mut self) {
        self.broken_jump_table = true;
    }

    // ----- inspection ----------------------------------------------------

    /// Where the replica stands.
    pub fn status(&self) -> ReplicaStatus {
        let (view, in_view_change) = self.view_and_phase();
        ReplicaStatus {
            id: self.id,
            view,
            in_view_change,
            primary: self.committee.primary(view),
            last_executed: self.last_executed,
            head_hash: self.head_hash,
            stable_checkpoint: self.stable_checkpoint.seq(),
            pending_requests: self.pending.len(),
            active_slots: self.slots.len(),
            peers_in_touch: self.peers_in_touch(),
            quorum: self.committee.quorum(),
            needs_snapshot: self.needs_snapshot,
        }
    }

    /// The last executed height and the fingerprint of the at-most-once
    /// table there ([`ExecutedRequests::fingerprint`]), for checkers:
    /// honest replicas at one height must hold the same table, or some
    /// later block's `duplicates` differ between them.
    pub fn executed_table(&self) -> (SeqNum, bftd_crypto::Digest) {
        (self.last_executed, self.executed.fingerprint())
    }

    /// Peers heard from within [`IN_TOUCH_STATUS_INTERVALS`] status
    /// intervals.
    fn peers_in_touch(&self) -> usize {
        let window = self.config.status_interval * IN_TOUCH_STATUS_INTERVALS;
        self.heard_from
            .iter()
            .filter(|(&peer, &at)| peer != self.id && self.now.saturating_sub(at) <= window)
            .count()
    }

    /// The replica's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Evidence of misbehaviour seen so far (bounded; see
    /// [`Metrics::evidence`] for the full count).
    pub fn evidence(&self) -> &[Evidence] {
        &self.evidence
    }

    /// Peers ignored because their consensus settings differ from this
    /// replica's, each with the first setting that differs.
    pub fn settings_mismatches(&self) -> &BTreeMap<NodeId, &'static str> {
        &self.settings_mismatches
    }

    /// The stable checkpoint's certificate (sent with state-transfer
    /// answers, so a fetcher far behind can advance its watermarks).
    pub fn stable_checkpoint(&self) -> &CheckpointCertificate {
        &self.stable_checkpoint
    }

    /// The committee.
    pub fn committee(&self) -> &Committee {
        &self.committee
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This replica's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    // ----- helpers shared by the phases -----------------------------------

    fn view_and_phase(&self) -> (View, bool) {
        (self.view, self.phase != Phase::Normal)
    }

    fn primary(&self) -> NodeId {
        self.committee.primary(self.view)
    }

    fn is_primary(&self) -> bool {
        self.phase == Phase::Normal && self.primary() == self.id
    }

    fn low_watermark(&self) -> SeqNum {
        self.stable_checkpoint.seq()
    }

    fn high_watermark(&self) -> SeqNum {
        self.low_watermark().plus(self.config.window)
    }

    fn in_window(&self, seq: SeqNum) -> bool {
        seq > self.low_watermark() && seq <= self.high_watermark()
    }

    fn send(&mut self, to: NodeId, message: WireMessage) {
        if to == self.id {
            return;
        }
        self.metrics.sent(message.kind());
        self.actions.send.push(Outgoing {
            to: Destination::To(to),
            message,
        });
    }

    fn broadcast(&mut self, message: WireMessage) {
        self.metrics.sent(message.kind());
        self.actions.send.push(Outgoing {
            to: Destination::AllOthers,
            message,
        });
    }

    fn drop_input(&mut self, reason: DropReason) {
        self.metrics.dropped(reason);
    }

    fn record_evidence(&mut self, evidence: Evidence) {
        self.metrics.evidence += 1;
        self.metrics.dropped(DropReason::Equivocation);
        if self.evidence.len() < MAX_EVIDENCE {
            self.evidence.push(evidence);
        }
    }

    fn persist(&mut self, record: Record) {
        self.actions.persist.push(record);
    }

    /// End of every input: flush forwards (if due), and put the signer's state first
    /// among the records so it is durable before the votes it covers leave.
    fn finish_step(&mut self) {
        self.flush_forwards();
        self.prune_waiting();
        if let Some(safety) = self.signer.take_changes() {
            self.actions.persist.insert(0, Record::Safety(safety));
        }
    }
}

impl Slot {
    /// The batch if it is the one with `digest`.
    fn batch_for(&self, digest: Digest) -> Option<&Arc<Batch>> {
        match &self.batch {
            Some((d, batch)) if *d == digest => Some(batch),
            _ => None,
        }
    }
}

/// What a restarting replica needs from its stored blocks, read in time
/// bounded by the protocol's windows, not by the store's history: the hash
/// of the last block, and the at-most-once table.
///
/// - The chain is checked from the stable checkpoint's block (whose hash
///   2f+1 replicas certified, and which chains every block before it) up to
///   the last stored block: at most `window` blocks. Blocks below it are
///   not read at all (they may have been pruned).
/// - The table holds what executed in the last `request_lifetime` heights
///   (older requests have expired: the expiry rule alone refuses their
///   replays), read through [`BlockSource::executed`]: the daemon keeps
///   those keys in a table of their own, so no payload is read.
///
/// Before this, a restart read and decoded every block from height 1: 5.3
/// to 5.7 s for a store of 10 million requests (see design notes §29).
fn rebuild_from_store(
    blocks: &dyn BlockSource,
    stable_checkpoint: &CheckpointCertificate,
    request_lifetime: u64,
) -> Result<(Digest, ExecutedRequests), ReplicaError> {
    let last_height = blocks.last_height();
    let checkpoint = stable_checkpoint.seq();
    // The first block whose link is checked, and the hash it must carry
    // (or chain from). A checkpoint adopted from peers may lie above what
    // this replica stored (it was fetching when it stopped): then only
    // the stored tail's own links are checked, from as far back as the
    // table needs and the store holds.
    let (anchor, mut head_hash) = if checkpoint.0 > 0 && checkpoint <= last_height {
        (checkpoint, stable_checkpoint.value.block_hash)
    } else if checkpoint.0 == 0 {
        (SeqNum(0), Digest::ZERO)
    } else {
        // From the first stored block the table needs (nothing if none is
        // stored): its own link is not checked, those above it are.
        let from = last_height
            .0
            .saturating_sub(request_lifetime.saturating_add(1))
            .max(blocks.first_height().0);
        let anchor = if from <= last_height.0 { from } else { 0 };
        (SeqNum(anchor), Digest::ZERO)
    };
    if anchor.0 > 0 {
        let block = blocks
            .block(anchor)
            .ok_or(ReplicaError::CorruptLog { height: anchor })?;
        if checkpoint == anchor && block.hash() != head_hash {
            return Err(ReplicaError::CorruptLog { height: anchor });
        }
        head_hash = block.hash();
    }
    for height in anchor.0.saturating_add(1)..=last_height.0 {
        let height = SeqNum(height);
        let block = blocks
            .block(height)
            .filter(|b| b.block.prev_hash == head_hash)
            .ok_or(ReplicaError::CorruptLog { height })?;
        head_hash = block.hash();
    }
    // Only the last `request_lifetime` heights can hold requests that have
    // not expired.
    let mut executed = ExecutedRequests::new(request_lifetime);
    // A store that jumped past pruned history keeps the window's executed
    // requests below its first block (`BlockSource::executed_from`).
    let replay_from = last_height
        .0
        .saturating_sub(request_lifetime)
        .saturating_add(1)
        .max(blocks.executed_from().0);
    for height in replay_from..=last_height.0 {
        let height = SeqNum(height);
        let keys = blocks
            .executed(height)
            .ok_or(ReplicaError::CorruptLog { height })?;
        for key in keys {
            executed.record(key, height);
        }
    }
    executed.forget_expired(last_height.next());
    Ok((head_hash, executed))
}

//! The normal case: pre-prepare, prepare, commit, and execution in sequence
//! order.

use super::{DropReason, Evidence, Phase, Replica, ReplyOutcome, Slot};
use crate::block::{Block, CommittedBlock};
use crate::certificate::{PreparedCertificate, QuorumCertificate};
use crate::clients::Lookup;
use crate::ids::{SeqNum, View};
use crate::merkle::MerkleTree;
use crate::message::{Batch, Commit, PrePrepare, Prepare, Signed, Vouch, WireMessage};
use crate::storage::{Delivery, Record};
use bftd_crypto::Digest;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Pre-prepares a stalled primary re-sends per status interval (the lowest
/// uncommitted ones: execution is in order, so they are the ones everyone
/// waits for). They carry whole batches; votes are small and all re-sent.
const PRE_PREPARES_RESENT_PER_TICK: usize = 4;

impl Replica {
    /// Whether a normal-case message for `view` can be handled now. Messages
    /// for a future view are kept (bounded, per sender) until that view
    /// starts; those for past views are dropped.
    fn admit_view(&mut self, view: View, message: WireMessage) -> bool {
        if view < self.view {
            self.drop_input(DropReason::StaleView);
            return false;
        }
        if view > self.view || self.phase != Phase::Normal {
            self.buffer_future(message);
            return false;
        }
        true
    }

    /// Keeps a message for a future view, at most
    /// `max_future_messages_per_peer` messages and
    /// `max_future_bytes_per_peer` bytes per sender (or just the newest
    /// message, if it alone is larger): the oldest are dropped, counted.
    fn buffer_future(&mut self, message: WireMessage) {
        let Ok(size) = crate::codec::encoded_len(&message) else {
            self.drop_input(DropReason::Oversized);
            return;
        };
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        let max_messages = self.config.max_future_messages_per_peer;
        let max_bytes = self.config.max_future_bytes_per_peer;
        let queue = self.future.entry(message.signer()).or_default();
        queue.push_back((size, message));
        let mut bytes: usize = queue.iter().map(|(size, _)| size).sum();
        let mut dropped = 0;
        while queue.len() > 1 && (queue.len() > max_messages || bytes > max_bytes) {
            if let Some((size, _)) = queue.pop_front() {
                bytes -= size;
                dropped += 1;
            }
        }
        for _ in 0..dropped {
            self.drop_input(DropReason::FutureBufferFull);
        }
    }

    /// Replays buffered messages for the view just entered; drops older ones.
    pub(super) fn replay_future(&mut self) {
        let view = self.view;
        let mut ready = Vec::new();
        for queue in self.future.values_mut() {
            queue.retain(|(_, message)| {
                let message_view = normal_case_view(message).unwrap_or(view);
                if message_view == view {
                    ready.push(message.clone());
                }
                message_view > view
            });
        }
        self.future.retain(|_, queue| !queue.is_empty());
        for message in ready {
            let from = message.signer();
            self.dispatch(from, message);
        }
    }

    /// The primary proposes `batch` at the next sequence number, with who
    /// vouches for its requests. False if the signer refused (nothing was
    /// sent).
    pub(super) fn propose(&mut self, batch: Batch, vouches: Vec<Vouch>) -> bool {
        let seq = self.next_seq;
        let tree = Arc::new(MerkleTree::new(&batch));
        let digest = tree.root();
        let value = PrePrepare {
            view: self.view,
            seq,
            digest,
        };
        let pre_prepare = match self.signer.sign_pre_prepare(value) {
            Ok(signed) => signed,
            Err(_) => {
                self.drop_input(DropReason::SafetyRefused);
                return false;
            }
        };
        self.next_seq = seq.next();
        let bytes = super::fair::batch_cost(&batch);
        let batch = Arc::new(batch);
        let slot = self.slot_mut(seq);
        slot.vouches = vouches.clone();
        slot.proposed_bytes = bytes;
        self.broadcast(WireMessage::PrePrepare {
            pre_prepare: pre_prepare.clone(),
            batch: batch.clone(),
            vouches,
        });
        self.install_pre_prepare(pre_prepare, Some(batch), Some(tree));
        true
    }

    /// After a restart in a normal view: puts back what this replica agreed
    /// to in the view, so the slots it voted on can still commit. A prepared
    /// certificate of this view gives back its pre-prepare and prepares (the
    /// commit is signed again: the signer allows the same digest). A primary
    /// signs its pre-prepares again (the same digests, so the same
    /// signatures) and re-sends them with their batches, as PBFT re-sends
    /// its log: backups that restarted too lost them. Without this, a
    /// restarted primary proposed at sequence numbers it had already used,
    /// its signer refused, and nothing ever committed again.
    pub(super) fn resume_view(&mut self, accepted: &BTreeMap<SeqNum, Digest>) {
        let view = self.view;
        let prepared: Vec<PreparedCertificate> = self
            .slots
            .range(self.last_executed.next()..)
            .filter_map(|(_, slot)| slot.prepared.clone())
            .filter(|cert| cert.view() == view)
            .collect();
        for cert in &prepared {
            let slot = self.slot_mut(cert.seq());
            slot.pre_prepare = Some(cert.pre_prepare.clone());
            for vote in &cert.prepares.votes {
                slot.prepares.insert(
                    vote.signer,
                    Signed {
                        signer: vote.signer,
                        value: cert.prepares.value,
                        signature: vote.signature,
                    },
                );
            }
        }
        if self.committee.primary(view) == self.id {
            for (&seq, &digest) in accepted.range(self.last_executed.next()..) {
                if !self.in_window(seq) {
                    continue;
                }
                let batch = if digest == null_digest() {
                    Some(Arc::new(Batch::default()))
                } else {
                    self.slots
                        .get(&seq)
                        .and_then(|slot| slot.batch_for(digest).cloned())
                };
                let Some(batch) = batch else {
                    // Cannot happen: the batch is written with the signer
                    // state that accepted it. Should it, the backups'
                    // request timers replace a primary stuck on the gap.
                    continue;
                };
                let Ok(pre_prepare) =
                    self.signer
                        .sign_pre_prepare(PrePrepare { view, seq, digest })
                else {
                    self.drop_input(DropReason::SafetyRefused);
                    continue;
                };
                self.next_seq = self.next_seq.max(seq.next());
                // The vouches did not survive the restart: in
                // connection-authenticated mode backups that lost this
                // pre-prepare refuse it and wait for the view change.
                self.broadcast(WireMessage::PrePrepare {
                    pre_prepare: pre_prepare.clone(),
                    batch: batch.clone(),
                    vouches: Vec::new(),
                });
                self.install_pre_prepare(pre_prepare, Some(batch), None);
            }
        }
        for cert in prepared {
            self.check_prepared(cert.seq());
        }
    }

    /// Re-sends, once per status interval while nothing executes, what this
    /// replica contributed to the slots everyone waits for: its prepares and
    /// commits for every unexecuted slot of the view, and as primary the
    /// pre-prepares of the lowest uncommitted ones. PBFT leaves
    /// retransmission to the implementation; without it one lost vote, or a
    /// peer that restarted and forgot the votes it had received, stalls a
    /// slot until the primary is replaced.
    pub(super) fn retransmit_votes(&mut self) {
        if self.phase != Phase::Normal {
            return;
        }
        let primary = self.is_primary();
        let mut votes = Vec::new();
        let mut pre_prepares = Vec::new();
        for (_, slot) in self.slots.range(self.last_executed.next()..) {
            let Some(pre_prepare) = &slot.pre_prepare else {
                continue;
            };
            if let Some(prepare) = slot.prepares.get(&self.id) {
                votes.push(WireMessage::Prepare(prepare.clone()));
            }
            if let Some(commit) = slot.commits.get(&self.id) {
                votes.push(WireMessage::Commit(commit.clone()));
            }
            let digest = pre_prepare.value.digest;
            if primary
                && slot.committed.is_none()
                && pre_prepares.len() < PRE_PREPARES_RESENT_PER_TICK
            {
                if let Some(batch) = slot.batch_for(digest) {
                    pre_prepares.push(WireMessage::PrePrepare {
                        pre_prepare: pre_prepare.clone(),
                        batch: batch.clone(),
                        vouches: slot.vouches.clone(),
                    });
                }
            }
        }
        self.metrics.retransmissions += (votes.len() + pre_prepares.len()) as u64;
        for message in pre_prepares.into_iter().chain(votes) {
            self.broadcast(message);
        }
    }

    pub(super) fn on_pre_prepare(
        &mut self,
        pre_prepare: Signed<PrePrepare>,
        batch: Arc<Batch>,
        vouches: Vec<Vouch>,
    ) {
        let value = pre_prepare.value;
        if pre_prepare.signer != self.committee.primary(value.view) {
            self.drop_input(DropReason::WrongSender);
            return;
        }
        // Before the batch is held for a future view, too.
        if !self.batch_within_limits(&batch) {
            self.drop_input(DropReason::Oversized);
            return;
        }
        let message = WireMessage::PrePrepare {
            pre_prepare: pre_prepare.clone(),
            batch: batch.clone(),
            vouches: vouches.clone(),
        };
        if !self.admit_view(value.view, message) || pre_prepare.signer == self.id {
            return;
        }
        if !self.in_window(value.seq) {
            self.drop_input(DropReason::OutsideWindow);
            return;
        }
        if let Some(existing) = self
            .slots
            .get(&value.seq)
            .and_then(|s| s.pre_prepare.clone())
        {
            if existing.value != value {
                self.record_evidence(Evidence::PrePrepare(existing, pre_prepare));
            }
            return;
        }
        let tree = Arc::new(MerkleTree::new(&batch));
        if tree.root() != value.digest {
            self.drop_input(DropReason::DigestMismatch);
            return;
        }
        self.slot_mut(value.seq).vouches = vouches;
        self.install_pre_prepare(pre_prepare, Some(batch), Some(tree));
    }

    fn batch_within_limits(&self, batch: &Batch) -> bool {
        crate::verify::batch_within_limits(
            &batch.requests,
            self.config.max_batch_requests,
            self.config.max_batch_bytes,
            self.config.max_request_bytes,
        )
    }

    /// Accepts a pre-prepare for the current view (from the primary, or
    /// re-proposed by a new view). Without its batch the replica asks peers
    /// for it and prepares once it arrives.
    pub(super) fn install_pre_prepare(
        &mut self,
        pre_prepare: Signed<PrePrepare>,
        batch: Option<Arc<Batch>>,
        tree: Option<Arc<MerkleTree>>,
    ) {
        let value = pre_prepare.value;
        let now = self.now;
        let slot = self.slots.entry(value.seq).or_default();
        slot.pre_prepare = Some(pre_prepare);
        slot.pre_prepare_at.get_or_insert(now);
        if let Some(batch) = batch {
            slot.batch = Some((value.digest, batch));
            slot.tree = tree.filter(|tree| tree.root() == value.digest);
        }
        let Some(batch) = slot.batch_for(value.digest).cloned() else {
            self.want_batch(value.digest);
            return;
        };
        self.persist(Record::Batch {
            seq: value.seq,
            digest: value.digest,
            batch: batch.clone(),
        });
        for request in &batch.requests {
            if let Some(pending) = self.pending.get_mut(&request.key()) {
                pending.proposed = true;
                if !std::mem::replace(&mut pending.included, true) {
                    let waited = now.saturating_sub(pending.since);
                    super::suspicion::note_max(&mut self.inclusion, waited, now);
                }
            }
        }
        if self.committee.primary(value.view) != self.id {
            let prepare = Prepare {
                view: value.view,
                seq: value.seq,
                digest: value.digest,
            };
            match self.signer.sign_prepare(prepare) {
                Ok(signed) => {
                    let id = self.id;
                    self.slot_mut(value.seq).prepares.insert(id, signed.clone());
                    self.broadcast(WireMessage::Prepare(signed));
                }
                Err(_) => {
                    self.drop_input(DropReason::SafetyRefused);
                    return;
                }
            }
        }
        self.check_prepared(value.seq);
    }

    fn slot_mut(&mut self, seq: SeqNum) -> &mut Slot {
        self.slots.entry(seq).or_default()
    }

    /// Common checks for prepares and commits: view, window, not executed.
    fn admit_vote(&mut self, view: View, seq: SeqNum, message: WireMessage) -> bool {
        if !self.admit_view(view, message) {
            return false;
        }
        if !self.in_window(seq) {
            self.drop_input(DropReason::OutsideWindow);
            return false;
        }
        true
    }

    pub(super) fn on_prepare(&mut self, prepare: Signed<Prepare>) {
        let value = prepare.value;
        if prepare.signer == self.committee.primary(value.view) {
            self.drop_input(DropReason::WrongSender);
            return;
        }
        if !self.admit_vote(value.view, value.seq, WireMessage::Prepare(prepare.clone())) {
            return;
        }
        let slot = self.slot_mut(value.seq);
        if let Some(existing) = slot.prepares.get(&prepare.signer).cloned() {
            if existing.value != value {
                self.record_evidence(Evidence::Prepare(existing, prepare));
            }
            return;
        }
        slot.prepares.insert(prepare.signer, prepare);
        self.check_prepared(value.seq);
    }

    pub(super) fn on_commit(&mut self, commit: Signed<Commit>) {
        let value = commit.value;
        if !self.admit_vote(value.view, value.seq, WireMessage::Commit(commit.clone())) {
            return;
        }
        let slot = self.slot_mut(value.seq);
        if let Some(existing) = slot.commits.get(&commit.signer).cloned() {
            if existing.value != value {
                self.record_evidence(Evidence::Commit(existing, commit));
            }
            return;
        }
        slot.commits.insert(commit.signer, commit);
        self.check_committed(value.seq);
    }

    /// Prepared: the pre-prepare and 2f matching prepares from distinct
    /// backups. Persist the certificate, then commit.
    fn check_prepared(&mut self, seq: SeqNum) {
        let view = self.view;
        let needed = 2 * self.committee.f();
        let Some(slot) = self.slots.get(&seq) else {
            return;
        };
        let Some(pre_prepare) = slot.pre_prepare.clone() else {
            return;
        };
        if slot.commit_sent || slot.batch_for(pre_prepare.value.digest).is_none() {
            return;
        }
        let value = Prepare {
            view,
            seq,
            digest: pre_prepare.value.digest,
        };
        let prepares = QuorumCertificate::collect(value, slot.prepares.values());
        if prepares.votes.len() < needed {
            return;
        }
        let certificate = PreparedCertificate {
            pre_prepare,
            prepares,
        };
        self.persist(Record::Prepared(certificate.clone()));
        let commit = Commit {
            view,
            seq,
            digest: value.digest,
        };
        let slot = self.slot_mut(seq);
        slot.prepared = Some(certificate);
        slot.commit_sent = true;
        match self.signer.sign_commit(commit) {
            Ok(signed) => {
                let id = self.id;
                self.slot_mut(seq).commits.insert(id, signed.clone());
                self.broadcast(WireMessage::Commit(signed));
            }
            Err(_) => self.drop_input(DropReason::SafetyRefused),
        }
        self.check_committed(seq);
    }

    /// Committed: 2f+1 matching commits for the accepted pre-prepare.
    fn check_committed(&mut self, seq: SeqNum) {
        let quorum = self.commit_quorum();
        let view = self.view;
        let Some(slot) = self.slots.get(&seq) else {
            return;
        };
        if slot.committed.is_some() {
            return;
        }
        let Some(pre_prepare) = &slot.pre_prepare else {
            return;
        };
        if slot.batch_for(pre_prepare.value.digest).is_none() {
            return;
        }
        let value = Commit {
            view,
            seq,
            digest: pre_prepare.value.digest,
        };
        let certificate = QuorumCertificate::collect(value, slot.commits.values());
        if certificate.votes.len() < quorum {
            return;
        }
        self.slot_mut(seq).committed = Some(certificate);
        self.execute_ready();
    }

    /// 2f+1 — or one less once [`Replica::break_commit_quorum_for_testing`]
    /// was called.
    fn commit_quorum(&self) -> usize {
        if self.broken_commit_quorum {
            self.committee.quorum().saturating_sub(1).max(1)
        } else {
            self.committee.quorum()
        }
    }

    /// Executes committed slots in sequence order.
    pub(super) fn execute_ready(&mut self) {
        loop {
            let next = self.last_executed.next();
            let Some(slot) = self.slots.get_mut(&next) else {
                return;
            };
            let Some(certificate) = slot.committed.clone() else {
                return;
            };
            let Some(batch) = slot.batch_for(certificate.value.digest).cloned() else {
                return;
            };
            // Only in flight: the slot lives on until the next checkpoint.
            let tree = slot
                .tree
                .take()
                .filter(|tree| tree.root() == certificate.value.digest);
            let proposed_at = slot.pre_prepare_at;
            let block = Arc::new(CommittedBlock {
                block: Block {
                    height: next,
                    prev_hash: self.head_hash,
                    batch_digest: certificate.value.digest,
                    batch,
                },
                certificate,
            });
            self.execute_block(block, tree, proposed_at);
        }
    }

    /// Applies the next block (from the normal case or state transfer):
    /// deduplicates its requests, answers local clients, delivers it, and
    /// checkpoints every K blocks.
    ///
    /// `proposed_at` is when its pre-prepare was accepted here (unknown for
    /// blocks fetched by state transfer): it lets the request timer judge
    /// whether the primary passed over a request waiting here.
    pub(super) fn execute_block(
        &mut self,
        block: Arc<CommittedBlock>,
        tree: Option<Arc<MerkleTree>>,
        proposed_at: Option<Duration>,
    ) {
        if let Some(proposed_at) = proposed_at {
            let commit_time = self.now.saturating_sub(proposed_at);
            super::suspicion::note_max(&mut self.commit_time, commit_time, self.now);
            self.check_passed_over(&block.block.batch, proposed_at);
        }
        let height = block.height();
        self.needs_snapshot = false;
        self.refused_by.clear();
        self.avoid.clear();
        let mut duplicates = Vec::new();
        for (index, request) in block.block.batch.requests.iter().enumerate() {
            match self.executed.lookup(&request.request, height) {
                Lookup::Fresh => {
                    self.executed.record(request.key(), height);
                    self.complete_request(request, ReplyOutcome::Committed { height });
                    self.metrics.requests_executed += 1;
                }
                Lookup::Executed { height: earlier } => {
                    duplicates.push(index as u32);
                    self.metrics.duplicates_skipped += 1;
                    self.complete_request(request, ReplyOutcome::Committed { height: earlier });
                }
                Lookup::Expired => {
                    // Never valid again: skipped like a duplicate, and
                    // dropped from the pending set below.
                    duplicates.push(index as u32);
                    self.metrics.duplicates_skipped += 1;
                }
                Lookup::TooFarAhead => {
                    // Only a byzantine primary proposes one (admission
                    // refuses it): skipped here, valid later, so it goes
                    // back to the queue if it is pending.
                    duplicates.push(index as u32);
                    self.metrics.duplicates_skipped += 1;
                    self.requeue(request.key());
                }
            }
        }
        self.executed.forget_expired(height.next());
        self.drop_expired_pending(height);
        let hash = block.hash();
        self.last_executed = height;
        self.head_hash = hash;
        self.last_execution = self.now;
        // Only a block the current view's primary proposed afresh shows the
        // view works; re-proposals of the view change do not.
        if block.certificate.value.view == self.view && height >= self.view_fresh_from {
            self.failed_views = 0;
        }
        self.metrics.blocks_executed += 1;
        if self.next_seq <= height {
            self.next_seq = height.next();
        }
        self.actions.deliver.push(Delivery {
            block,
            duplicates,
            tree,
        });
        if height.0.is_multiple_of(self.config.checkpoint_interval) {
            self.checkpoint_hashes.insert(height, hash);
            self.send_checkpoint(height, hash);
        }
        self.propose_batches();
    }
}

/// The view of a normal-case message (`None` for other kinds).
pub(super) fn normal_case_view(message: &WireMessage) -> Option<View> {
    match message {
        WireMessage::PrePrepare { pre_prepare, .. } => Some(pre_prepare.value.view),
        WireMessage::Prepare(m) => Some(m.value.view),
        WireMessage::Commit(m) => Some(m.value.view),
        _ => None,
    }
}

/// The digest of the empty batch, which a new primary proposes for gaps.
pub(super) fn null_digest() -> Digest {
    MerkleTree::new(&Batch::default()).root()
}

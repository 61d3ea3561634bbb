//! Checkpoints: every K blocks replicas sign the chain head; 2f+1 matching
//! make it stable, which moves the low watermark and discards the protocol
//! state at or below it.

use super::{DropReason, Evidence, Replica};
use crate::certificate::{CheckpointCertificate, QuorumCertificate};
use crate::ids::{NodeId, SeqNum};
use crate::message::{Checkpoint, Signed, WireMessage};
use crate::storage::Record;
use bftd_crypto::Digest;

/// Checkpoint votes kept per peer above the stable checkpoint. A few, so a
/// replica that fell far behind still sees 2f+1 matching votes for a recent
/// checkpoint, and a byzantine peer cannot fill memory with votes.
const CHECKPOINT_VOTES_PER_PEER: usize = 4;

impl Replica {
    pub(super) fn send_checkpoint(&mut self, seq: SeqNum, block_hash: Digest) {
        match self.signer.sign(Checkpoint { seq, block_hash }) {
            Ok(signed) => {
                self.broadcast(WireMessage::Checkpoint(signed.clone()));
                self.record_checkpoint_vote(signed);
            }
            Err(_) => self.drop_input(DropReason::Oversized),
        }
    }

    /// Re-sends our checkpoint votes that are not stable yet (a lost vote
    /// would otherwise keep the window from moving until the next
    /// checkpoint).
    pub(super) fn retransmit_checkpoint_votes(&mut self) {
        let own: Vec<Signed<Checkpoint>> = self
            .checkpoint_votes
            .values()
            .filter_map(|votes| votes.get(&self.id).cloned())
            .collect();
        self.metrics.retransmissions += own.len() as u64;
        for vote in own {
            self.broadcast(WireMessage::Checkpoint(vote));
        }
    }

    pub(super) fn on_checkpoint(&mut self, checkpoint: Signed<Checkpoint>) {
        let seq = checkpoint.value.seq;
        if seq <= self.low_watermark() {
            return;
        }
        if !seq.0.is_multiple_of(self.config.checkpoint_interval) {
            self.drop_input(DropReason::InvalidCheckpoint);
            return;
        }
        self.record_checkpoint_vote(checkpoint);
    }

    fn record_checkpoint_vote(&mut self, vote: Signed<Checkpoint>) {
        let seq = vote.value.seq;
        let signer = vote.signer;
        if let Some(existing) = self
            .checkpoint_votes
            .get(&seq)
            .and_then(|votes| votes.get(&signer))
            .cloned()
        {
            if existing.value != vote.value {
                self.record_evidence(Evidence::Checkpoint(existing, vote));
            }
            return;
        }
        if !self.make_room_for_vote(signer, seq) {
            self.drop_input(DropReason::InvalidCheckpoint);
            return;
        }
        self.checkpoint_votes
            .entry(seq)
            .or_default()
            .insert(signer, vote);
        self.check_stable(seq);
    }

    /// Keeps at most [`CHECKPOINT_VOTES_PER_PEER`] votes per peer, the
    /// highest ones. Returns false if the new vote is the lowest.
    fn make_room_for_vote(&mut self, signer: NodeId, seq: SeqNum) -> bool {
        let held: Vec<SeqNum> = self
            .checkpoint_votes
            .iter()
            .filter(|(_, votes)| votes.contains_key(&signer))
            .map(|(&s, _)| s)
            .collect();
        if held.len() < CHECKPOINT_VOTES_PER_PEER {
            return true;
        }
        match held.first() {
            Some(&lowest) if lowest < seq => {
                if let Some(votes) = self.checkpoint_votes.get_mut(&lowest) {
                    votes.remove(&signer);
                    if votes.is_empty() {
                        self.checkpoint_votes.remove(&lowest);
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// 2f+1 votes on one hash at `seq` make it stable.
    fn check_stable(&mut self, seq: SeqNum) {
        let Some(votes) = self.checkpoint_votes.get(&seq) else {
            return;
        };
        let mut hashes: Vec<Digest> = votes.values().map(|v| v.value.block_hash).collect();
        hashes.sort();
        hashes.dedup();
        for block_hash in hashes {
            let value = Checkpoint { seq, block_hash };
            let certificate = QuorumCertificate::collect(value, votes.values());
            if certificate.votes.len() >= self.committee.quorum() {
                if let Some(&ours) = self.checkpoint_hashes.get(&seq) {
                    if ours != block_hash {
                        // 2f+1 replicas signed a chain we did not execute:
                        // only possible beyond f faults. Never adopt it.
                        self.drop_input(DropReason::InvalidCheckpoint);
                        return;
                    }
                }
                self.advance_stable(certificate);
                return;
            }
        }
    }

    /// Moves the low watermark to a stable checkpoint. If this replica has
    /// not executed that far, it fetches the missing blocks.
    pub(super) fn advance_stable(&mut self, certificate: CheckpointCertificate) {
        let seq = certificate.seq();
        if seq <= self.low_watermark() {
            return;
        }
        self.metrics.checkpoints_stable += 1;
        self.stable_checkpoint = certificate.clone();
        self.persist(Record::StableCheckpoint(certificate));
        self.slots.retain(|&s, _| s > seq);
        self.checkpoint_votes.retain(|&s, _| s > seq);
        self.checkpoint_hashes.retain(|&s, _| s >= seq);
        self.signer.forget_through(seq);
        if self.next_seq <= seq {
            self.next_seq = seq.next();
        }
        if self.last_executed < seq {
            self.catch_up();
        }
        self.propose_batches();
    }
}

//! Jumping past history every peer pruned.
//!
//! Peers that prune (`[storage] retain_blocks`) keep the blocks from some
//! height below their stable checkpoint on; a replica that was down longer
//! than that asks for blocks nobody serves any more, and is refused (an
//! empty `Blocks` with the peer's certified stable checkpoint `s`). Once
//! f+1 peers refused, at least one honest peer really pruned, and the
//! replica jumps: it fetches the last `L = request_lifetime` blocks up to
//! `s`, checks each against its own commit certificate, rebuilds the
//! at-most-once table from their requests as execution would, and installs
//! `s` as both its stable checkpoint and its last executed height. It then
//! catches up from `s + 1` by ordinary state transfer.
//!
//! Why that is enough (design notes §47):
//!
//! - A block's commit certificate (2f+1 commits on height and batch
//!   digest) certifies its requests without any chain: the batch digest is
//!   their Merkle root. The window's blocks need not chain to anything.
//! - The block at `s` must hash to the checkpoint's `block_hash`, which
//!   2f+1 replicas signed: that fixes the chain head, so the next fetched
//!   block is checked against it as usual.
//! - The at-most-once table of an honest replica at `s` holds exactly the
//!   requests executed in the window. The rebuilt one can differ only for a
//!   request first executed below the window and proposed again inside it:
//!   that request expired before `s + 1` (its `valid_until` is at most its
//!   first height plus `L`), so at every later height both tables skip it
//!   (one as expired, one as executed). Every later block's `duplicates`
//!   are the same.
//!
//! Only a replica with no embedded application may jump
//! (`Config::jump_past_pruned`): an application's state is not in the
//! blocks, and it would miss the skipped ones.

use super::{DropReason, Replica, ReplyOutcome};
use crate::block::CommittedBlock;
use crate::certificate::CheckpointCertificate;
use crate::clients::{ExecutedRequests, Lookup};
use crate::ids::{NodeId, SeqNum};
use crate::message::{RequestKey, SignedRequest};
use crate::storage::{JumpRecord, Record};
use std::collections::BTreeSet;
use std::sync::Arc;

/// A jump under way.
#[derive(Clone, Debug)]
pub(super) struct Jump {
    /// The certified stable checkpoint jumped to.
    checkpoint: CheckpointCertificate,
    /// The next height to fetch: the window runs from
    /// `checkpoint - request_lifetime + 1` to the checkpoint.
    next: SeqNum,
    /// The requests of each fetched height (key, last valid height), in
    /// height order: 48 bytes a request, what the at-most-once table of
    /// any replica holds anyway.
    heights: Vec<(SeqNum, Vec<(RequestKey, SeqNum)>)>,
    /// Peers that refused this jump's fetches as pruned, and the highest
    /// checkpoint they showed: f+1 of them restart the jump there.
    refused_by: BTreeSet<NodeId>,
    highest_refusal: Option<CheckpointCertificate>,
}

impl Jump {
    /// The next height to fetch, and the last.
    pub(super) fn range(&self) -> (SeqNum, SeqNum) {
        (self.next, self.checkpoint.seq())
    }
}

impl Replica {
    /// A peer refused a fetch as pruned, showing `checkpoint` (certified,
    /// above our height). Starts a jump once f+1 peers have refused; during
    /// a jump, f+1 refusals restart it at the highest checkpoint they
    /// showed (the cluster pruned past the window meanwhile). Then asks
    /// another peer.
    pub(super) fn on_pruned(&mut self, peer: NodeId, checkpoint: CheckpointCertificate) {
        self.refused_by.insert(peer);
        if !self.config.jump_past_pruned {
            return;
        }
        let f = self.committee.f();
        match self.jump.as_mut() {
            // Refused below its own checkpoint: a liar, or a peer that
            // keeps less; another peer is asked.
            Some(jump) if checkpoint.seq() <= jump.checkpoint.seq() => {}
            Some(jump) => {
                jump.refused_by.insert(peer);
                if jump
                    .highest_refusal
                    .as_ref()
                    .is_none_or(|c| c.seq() < checkpoint.seq())
                {
                    jump.highest_refusal = Some(checkpoint);
                }
                if jump.refused_by.len() > f {
                    if let Some(highest) = jump.highest_refusal.take() {
                        self.jump = None;
                        self.start_jump(highest);
                    }
                }
            }
            None if self.refused_by.len() > f => self.start_jump(checkpoint),
            None => {}
        }
    }

    fn start_jump(&mut self, checkpoint: CheckpointCertificate) {
        let s = checkpoint.seq();
        let from = SeqNum(
            s.0.saturating_sub(self.config.request_lifetime)
                .saturating_add(1)
                .max(1),
        );
        // A window that reaches down to what we hold needs no jump: honest
        // peers that pruned above our height keep more than the window
        // below their checkpoint, so only a liar's refusal gets here.
        if from <= self.last_executed.next() || s <= self.last_executed {
            return;
        }
        self.jump = Some(Jump {
            checkpoint,
            next: from,
            heights: Vec::new(),
            refused_by: BTreeSet::new(),
            highest_refusal: None,
        });
        self.fetch = None;
        self.avoid.clear();
    }

    /// Blocks fetched for the jump: each must be the next height and carry
    /// a valid commit certificate for its batch; the last must hash to the
    /// checkpoint's block hash. Returns whether one was invalid.
    pub(super) fn jump_blocks(&mut self, blocks: Vec<Arc<CommittedBlock>>) -> bool {
        for block in blocks {
            let Some(jump) = self.jump.as_mut() else {
                return false;
            };
            let height = block.height();
            if height < jump.next {
                continue;
            }
            let s = jump.checkpoint.seq();
            // `check` against the block's own `prev_hash`: the certificate
            // and the batch, not the chain (see the module doc).
            let valid = height == jump.next
                && height <= s
                && block.check(&self.committee, block.block.prev_hash).is_ok()
                && (height < s || block.hash() == jump.checkpoint.value.block_hash);
            if !valid {
                self.drop_input(DropReason::InvalidBlock);
                return true;
            }
            self.metrics.blocks_fetched += 1;
            let requests = block
                .block
                .batch
                .requests
                .iter()
                .map(|r| (r.key(), r.request.valid_until))
                .collect();
            jump.heights.push((height, requests));
            jump.next = height.next();
            if height == s {
                if let Some(jump) = self.jump.take() {
                    self.finish_jump(jump, block);
                }
                return false;
            }
        }
        false
    }

    /// Installs the checkpoint block `top` as executed, with the
    /// at-most-once table its window gives, and goes on fetching from the
    /// height after it.
    fn finish_jump(&mut self, jump: Jump, top: Arc<CommittedBlock>) {
        let s = top.height();
        let mut table = ExecutedRequests::new(self.config.request_lifetime);
        let mut executed = Vec::with_capacity(jump.heights.len());
        let mut duplicates = Vec::new();
        for (height, requests) in jump.heights {
            let mut fresh = Vec::with_capacity(requests.len());
            for (index, (key, valid_until)) in requests.into_iter().enumerate() {
                if table.lookup_key(&key, valid_until, height) == Lookup::Fresh {
                    if height == s || !self.broken_jump_table {
                        table.record(key, height);
                    }
                    fresh.push(key);
                } else if height == s {
                    duplicates.push(index as u32);
                }
            }
            table.forget_expired(height.next());
            if height < s {
                executed.push((height, fresh));
            }
        }
        let hash = top.hash();
        self.persist(Record::Jump(Box::new(JumpRecord {
            checkpoint: jump.checkpoint.clone(),
            block: top,
            duplicates,
            executed,
        })));
        self.executed = table;
        self.last_executed = s;
        self.head_hash = hash;
        self.last_execution = self.now;
        self.needs_snapshot = false;
        self.refused_by.clear();
        self.avoid.clear();
        self.metrics.jumps += 1;
        self.slots.retain(|&seq, _| seq > s);
        self.checkpoint_hashes.insert(s, hash);
        // Requests this replica holds that the window executed (it could
        // admit one valid up to `request_lifetime` above its old height):
        // settled as executed, not left to expire and be answered as
        // expired. In key order, so the replies are deterministic.
        let mut settled: Vec<(SignedRequest, SeqNum)> = self
            .pending
            .values()
            .filter_map(
                |pending| match self.executed.lookup(&pending.request.request, s.next()) {
                    Lookup::Executed { height } => Some((pending.request.clone(), height)),
                    _ => None,
                },
            )
            .collect();
        settled.sort_by_key(|(request, _)| request.key());
        for (request, height) in settled {
            self.complete_request(&request, ReplyOutcome::Committed { height });
        }
        self.drop_expired_pending(s);
        if self.next_seq <= s {
            self.next_seq = s.next();
        }
        self.fetch = None;
        self.advance_stable(jump.checkpoint);
        self.catch_up();
    }
}

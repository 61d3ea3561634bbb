//! Status reports, catch-up and retransmission.
//!
//! Every replica broadcasts a small signed status now and then. A replica
//! that sees a peer ahead of it while making no progress itself fetches the
//! missing blocks with their commit certificates from that peer and verifies
//! each one itself: it never trusts the peer that sent them. The same reports
//! let a replica re-send the new-view to a peer stuck in an old view.

use super::{DropReason, Fetch, Phase, Replica};
use crate::block::CommittedBlock;
use crate::ids::{NodeId, SeqNum};
use crate::merkle::MerkleTree;
use crate::message::{
    Batch, BatchResponse, Blocks, FetchBatch, FetchBlocks, Signed, Status, WireMessage,
};
use crate::storage::BlockSource;
use bftd_crypto::Digest;
use std::sync::Arc;

/// Most payload bytes in one state-transfer response, so a response stays far
/// below the message size limit whatever the blocks hold.
pub const FETCH_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Most batch fetches outstanding at once (each is one re-proposed digest).
pub(super) const MAX_WANTED_BATCHES: usize = 1024;

/// Whether `wanted` starts below the oldest block `source` still holds
/// (the rest was pruned): answered with a [`Blocks`] holding no block and
/// the stable checkpoint, a refusal the fetcher can tell from silence
/// (see [`Replica::on_blocks`]).
pub fn is_pruned(source: &dyn BlockSource, wanted: FetchBlocks) -> bool {
    wanted.from.max(crate::SeqNum(1)) < source.first_height()
}

/// The committed blocks that answer `wanted`: consecutive from its first
/// height, at most `fetch_max_blocks` of them and about 16 MiB of payload;
/// with that payload estimate in bytes (each request's payload plus 128).
pub fn blocks_to_serve(
    source: &dyn BlockSource,
    wanted: FetchBlocks,
    fetch_max_blocks: u64,
) -> (Vec<Arc<CommittedBlock>>, usize) {
    let last = source.last_height();
    let to = wanted
        .to
        .min(last)
        .min(wanted.from.plus(fetch_max_blocks.saturating_sub(1)));
    let mut blocks = Vec::new();
    let mut bytes = 0usize;
    let mut height = wanted.from.max(crate::SeqNum(1));
    while height <= to && bytes < FETCH_MAX_BYTES {
        let Some(block) = source.block(height) else {
            break;
        };
        bytes += block
            .block
            .batch
            .requests
            .iter()
            .map(|r| r.payload_len() + 128)
            .sum::<usize>();
        blocks.push(block);
        height = height.next();
    }
    (blocks, bytes)
}

impl Replica {
    pub(super) fn send_status(&mut self) {
        let (view, in_view_change) = self.view_and_phase();
        let status = Status {
            view,
            in_view_change,
            last_executed: self.last_executed,
            stable_checkpoint: self.low_watermark(),
            settings: self.config.consensus(),
        };
        if let Ok(signed) = self.signer.sign(status) {
            self.broadcast(WireMessage::Status(signed));
        }
    }

    /// Periodic re-sends, every status interval: our view-change and the
    /// suspicions that started it while a view change lasts; our standing
    /// suspicion; while nothing executes, our votes for the slots everyone
    /// waits for; requests for batches still missing.
    pub(super) fn retransmit(&mut self) {
        self.retransmit_view_change();
        self.relay_suspicion();
        self.refresh_suspicion();
        let stalled = self.last_executed == self.executed_at_last_tick;
        self.executed_at_last_tick = self.last_executed;
        if stalled {
            self.retransmit_votes();
            self.retransmit_checkpoint_votes();
        }
        self.prune_wanted_batches();
        let wanted: Vec<Digest> = self.wanted_batches.keys().copied().collect();
        for digest in wanted {
            self.ask_for_batch(digest);
        }
    }

    pub(super) fn on_status(&mut self, status: Signed<Status>) {
        let peer = status.signer;
        let value = status.value;
        let differences = self.config.consensus().differences(&value.settings);
        if let Some(&(name, _, _)) = differences.first() {
            // A peer with another cluster file: what it sends cannot be
            // judged by our rules. Ignore it until its settings match.
            self.settings_mismatches.insert(peer, name);
            self.drop_input(DropReason::OtherSettings);
            return;
        }
        self.settings_mismatches.remove(&peer);
        self.peer_status.insert(peer, value);
        // A peer in an older view (or still changing to ours) missed the
        // new-view that started our view: send it.
        let behind = value.view < self.view || (value.view == self.view && value.in_view_change);
        if behind {
            self.resend_new_view(peer);
        }
        // A peer ahead of us while we make no progress: fetch from it.
        let stalled = self.now >= self.last_execution + self.config.status_interval;
        if value.last_executed > self.last_executed && self.fetch.is_none() && stalled {
            if self.avoid.contains(&peer) {
                self.fetch_elsewhere(peer);
            } else {
                self.start_fetch(peer);
            }
        }
    }

    /// Sends `peer` the new-view that started our view, unless it was sent
    /// that one less than `new_view_resend` ago: a status is a few signed
    /// bytes, the new-view 2f+1 view-changes with their certificates, and a
    /// peer (byzantine, or just stuck) reporting itself behind at every
    /// status would otherwise get it every time.
    fn resend_new_view(&mut self, peer: NodeId) {
        let Some(view) = self.new_view_message().map(|nv| nv.value.view) else {
            return;
        };
        if let Some(&(sent_view, at)) = self.new_view_sent.get(&peer) {
            if sent_view == view && self.now < at.saturating_add(self.config.new_view_resend) {
                self.metrics.new_views_withheld += 1;
                return;
            }
        }
        let Some(new_view) = self.new_view_message().cloned() else {
            return;
        };
        self.new_view_sent.insert(peer, (view, self.now));
        self.send(peer, WireMessage::NewView(new_view));
    }

    /// Starts state transfer from the peer most ahead (after the stable
    /// checkpoint moved past what we executed).
    pub(super) fn catch_up(&mut self) {
        if self.fetch.is_some() {
            return;
        }
        let best = self
            .peer_status
            .iter()
            .filter(|(&peer, _)| peer != self.id)
            .max_by_key(|(_, status)| status.last_executed)
            .map(|(&peer, _)| peer);
        let peer = best.unwrap_or_else(|| self.next_peer(self.id));
        self.start_fetch(peer);
    }

    fn next_peer(&self, after: NodeId) -> NodeId {
        let n = self.committee.n() as u16;
        let mut candidate = NodeId((after.0 + 1) % n);
        if candidate == self.id {
            candidate = NodeId((candidate.0 + 1) % n);
        }
        candidate
    }

    fn start_fetch(&mut self, peer: NodeId) {
        if peer == self.id {
            return;
        }
        // During a jump, the window below its checkpoint; else what follows
        // the last executed block.
        let (from, last) = match &self.jump {
            Some(jump) => jump.range(),
            None => (self.last_executed.next(), SeqNum(u64::MAX)),
        };
        let request = FetchBlocks {
            from,
            to: from
                .plus(self.config.fetch_max_blocks.saturating_sub(1))
                .min(last),
        };
        if let Ok(signed) = self.signer.sign(request) {
            self.send(peer, WireMessage::FetchBlocks(signed));
            self.fetch = Some(Fetch {
                peer,
                deadline: self.now + self.config.fetch_timeout,
            });
        }
    }

    /// An unanswered fetch goes to another peer.
    pub(super) fn check_fetch_timer(&mut self) {
        let Some(fetch) = self.fetch else {
            return;
        };
        if self.now < fetch.deadline {
            return;
        }
        self.fetch = None;
        let ahead = self
            .peer_status
            .iter()
            .filter(|(&peer, status)| {
                peer != fetch.peer && peer != self.id && status.last_executed > self.last_executed
            })
            .map(|(&peer, _)| peer)
            .min_by_key(|peer| {
                (peer.0 + self.committee.n() as u16 - fetch.peer.0) % self.committee.n() as u16
            });
        let behind_checkpoint = self.last_executed < self.low_watermark();
        match ahead {
            Some(peer) => self.start_fetch(peer),
            None if behind_checkpoint => {
                let peer = self.next_peer(fetch.peer);
                self.start_fetch(peer);
            }
            None => {}
        }
    }

    /// Serves committed blocks from storage. (The daemon serves fetches
    /// off its consensus task with the same [`blocks_to_serve`]; this is
    /// for shells that let the replica answer, like the simulator.)
    pub(super) fn on_fetch_blocks(&mut self, from: NodeId, request: Signed<FetchBlocks>) {
        let (blocks, _) =
            blocks_to_serve(&*self.blocks, request.value, self.config.fetch_max_blocks);
        if blocks.is_empty() && !is_pruned(&*self.blocks, request.value) {
            return;
        }
        let response = Blocks {
            blocks,
            checkpoint: self.stable_checkpoint.clone(),
        };
        if let Ok(signed) = self.signer.sign(response) {
            self.send(from, WireMessage::Blocks(signed));
        }
    }

    /// Applies fetched blocks that extend our chain, each verified against
    /// the committee; then adopts the responder's checkpoint if we now hold
    /// its block. During a jump, the blocks go to it instead.
    pub(super) fn on_blocks(&mut self, response: Signed<Blocks>) {
        let peer = response.signer;
        let Blocks { blocks, checkpoint } = response.value;
        let jumping = self.jump.is_some();
        let before = self.fetch_position();
        // Only an answer to our outstanding fetch moves the fetch on: an
        // unsolicited refusal or bad block (a liar's, as often as it likes)
        // must not make this replica send a fetch each time.
        let asked = self.fetch.is_some_and(|f| f.peer == peer);
        let refused = blocks.is_empty()
            && checkpoint.seq() > self.last_executed
            && checkpoint.check(&self.committee).is_ok();
        if refused {
            // A refusal: the peer pruned the blocks we need, and 2f+1
            // replicas certified a checkpoint above our height. Counted and
            // shown (`needs_snapshot`); f+1 of them start a jump (see
            // `jump.rs`), else another peer is asked, which may still hold
            // them.
            self.metrics.fetches_refused_pruned += 1;
            self.needs_snapshot = true;
            self.on_pruned(peer, checkpoint.clone());
        }
        let mut invalid = false;
        if jumping {
            invalid = self.jump_blocks(blocks);
        } else {
            for block in blocks {
                if block.height() <= self.last_executed {
                    continue;
                }
                if block.height() != self.last_executed.next()
                    || block.check(&self.committee, self.head_hash).is_err()
                {
                    self.drop_input(DropReason::InvalidBlock);
                    invalid = true;
                    break;
                }
                self.metrics.blocks_fetched += 1;
                self.execute_block(block, None, None);
            }
        }
        let seq = checkpoint.seq();
        if seq > self.low_watermark()
            && seq <= self.last_executed
            && self.checkpoint_hashes.get(&seq) == Some(&checkpoint.value.block_hash)
            && checkpoint.check(&self.committee).is_ok()
        {
            self.advance_stable(checkpoint);
        }
        self.execute_ready();
        if jumping && self.jump.is_none() {
            // The jump finished, and started fetching what follows it.
            return;
        }
        let failed = refused || invalid;
        if asked {
            self.fetch = None;
            let progressed = self.fetch_position() > before;
            let peer_ahead = self
                .peer_status
                .get(&peer)
                .is_some_and(|s| s.last_executed > self.last_executed);
            let behind = self.last_executed < self.low_watermark() || self.jump.is_some();
            if failed {
                self.avoid.insert(peer);
                self.fetch_elsewhere(peer);
            } else if progressed && (peer_ahead || behind) {
                self.start_fetch(peer);
            }
        }
    }

    /// How far fetching got: the jump's next height, or the next height to
    /// execute.
    fn fetch_position(&self) -> SeqNum {
        match &self.jump {
            Some(jump) => jump.range().0,
            None => self.last_executed.next(),
        }
    }

    /// Asks the next peer after `after`, in ring order, that is not avoided
    /// (it refused, or served an invalid block, since the last execution).
    /// Without this, the peer whose status arrives first would be asked
    /// again and again, however it answers. When every peer is avoided,
    /// none is asked now and the set is forgotten: the next status report
    /// or fetch timeout asks again, so a round of refusals costs one status
    /// interval, not a loop (at most f peers lie, and an honest one that
    /// refused may have something to serve by then).
    fn fetch_elsewhere(&mut self, after: NodeId) {
        let n = self.committee.n() as u16;
        let candidate = (1..n)
            .map(|step| NodeId((after.0 + step) % n))
            .find(|&peer| peer != self.id && !self.avoid.contains(&peer));
        match candidate {
            Some(peer) => self.start_fetch(peer),
            None => self.avoid.clear(),
        }
    }

    /// A batch held in the window with this digest.
    pub(super) fn batch_with_digest(&self, digest: Digest) -> Option<Arc<Batch>> {
        self.slots
            .values()
            .find_map(|slot| slot.batch_for(digest).cloned())
    }

    pub(super) fn want_batch(&mut self, digest: Digest) {
        if self.wanted_batches.contains_key(&digest) {
            return;
        }
        if self.wanted_batches.len() >= MAX_WANTED_BATCHES {
            self.prune_wanted_batches();
            if self.wanted_batches.len() >= MAX_WANTED_BATCHES {
                return;
            }
        }
        self.wanted_batches.insert(digest, self.now);
        self.ask_for_batch(digest);
    }

    /// Forgets batch fetches nothing waits for any more (the slot executed,
    /// was discarded at a checkpoint, changed view, or got its batch another
    /// way), so the bounded set never fills up with dead digests and later
    /// ones can still be fetched.
    pub(super) fn prune_wanted_batches(&mut self) {
        if self.wanted_batches.is_empty() {
            return;
        }
        let needed: std::collections::BTreeSet<Digest> = self
            .slots
            .range(self.last_executed.next()..)
            .filter_map(|(_, slot)| {
                let digest = slot.pre_prepare.as_ref()?.value.digest;
                slot.batch_for(digest).is_none().then_some(digest)
            })
            .collect();
        self.wanted_batches
            .retain(|digest, _| needed.contains(digest));
    }

    fn ask_for_batch(&mut self, digest: Digest) {
        if let Ok(signed) = self.signer.sign(FetchBatch { digest }) {
            self.broadcast(WireMessage::FetchBatch(signed));
        }
    }

    pub(super) fn on_fetch_batch(&mut self, from: NodeId, request: Signed<FetchBatch>) {
        let Some(batch) = self.batch_with_digest(request.value.digest) else {
            return;
        };
        if let Ok(signed) = self.signer.sign(BatchResponse { batch }) {
            self.send(from, WireMessage::Batch(signed));
        }
    }

    /// A batch we asked for: prepare the pre-prepares that waited on it.
    pub(super) fn on_batch(&mut self, response: Signed<BatchResponse>) {
        let batch = response.value.batch;
        let tree = Arc::new(MerkleTree::new(&batch));
        let digest = tree.root();
        if self.wanted_batches.remove(&digest).is_none() {
            self.drop_input(DropReason::Unsolicited);
            return;
        }
        if self.phase != Phase::Normal {
            return;
        }
        let waiting: Vec<_> = self
            .slots
            .values()
            .filter_map(|slot| slot.pre_prepare.clone())
            .filter(|pp| pp.value.digest == digest && pp.value.view == self.view)
            .collect();
        for pre_prepare in waiting {
            if self
                .slots
                .get(&pre_prepare.value.seq)
                .is_some_and(|slot| slot.batch_for(digest).is_none())
            {
                self.install_pre_prepare(pre_prepare, Some(batch.clone()), Some(tree.clone()));
            }
        }
        self.execute_ready();
    }
}

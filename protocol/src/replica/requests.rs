//! Client requests: admission, deduplication, forwarding to the primary,
//! batching at the primary, and the request timer that catches a primary
//! that censors or stalls.

use super::fair::{request_cost, Cost};
use super::{ClientReply, Held, PendingRequest, RejectReason, Replica, ReplyOutcome, Watch};
use crate::clients::Lookup;
use crate::ids::NodeId;
use crate::message::{Batch, Forward, Signed, SignedRequest, WireMessage};
use crate::RequestKey;
use std::time::Duration;

/// Blocks in flight below which the primary proposes a batch that is not
/// full (see [`Replica::propose_batches`]).
pub(super) const PARTIAL_BATCHES_IN_FLIGHT: u64 = 2;

/// The pipeline's byte bound, in full batches: the primary proposes while
/// the batches it has in flight weigh less than this many times
/// `max_batch_bytes` (and fewer than `pipeline` are in flight). With the
/// defaults, 2 MiB: about three blocks of a thousand 512-byte requests
/// (about 0.65 MiB each), two of big requests (a flood of them, say). Why:
/// when the cluster is bound by bytes (disk, network), a request waits for
/// what is in flight ahead of it to be sent, hashed and written (Little's
/// law: latency = bytes in flight / byte rate), and more in flight buys no
/// throughput once the disk is busy (design notes §36, §38).
pub(super) const PIPELINE_BATCHES_OF_BYTES: usize = 2;

impl Replica {
    pub(super) fn reply(&mut self, request: &SignedRequest, outcome: ReplyOutcome) {
        self.actions.replies.push(ClientReply {
            client: request.request.client,
            request_id: request.request.request_id,
            outcome,
        });
    }

    /// Admits a request from a client (`local`: of this replica).
    pub(super) fn accept_request(&mut self, request: SignedRequest, local: bool) {
        self.admit_request(request, self.id, local, Watch::Fresh, None);
    }

    /// Admits a request that `origin` answers for (see
    /// [`PendingRequest::origin`]); `watch` says whether every replica has
    /// it already (another backup relayed it to us), which shortens the
    /// request timer.
    fn admit_request(
        &mut self,
        request: SignedRequest,
        origin: NodeId,
        local: bool,
        watch: Watch,
        vouch: Option<(super::vouching::Vouched, usize)>,
    ) {
        if request.payload_len() > self.config.max_request_bytes {
            self.drop_input(super::DropReason::Oversized);
            if local {
                self.reply(&request, ReplyOutcome::Rejected(RejectReason::TooLarge));
            }
            return;
        }
        let key = request.key();
        let refusal = match self
            .executed
            .lookup(&request.request, self.last_executed.next())
        {
            Lookup::Executed { height } => {
                self.metrics.requests_replayed += 1;
                if local {
                    self.reply(&request, ReplyOutcome::Committed { height });
                }
                return;
            }
            Lookup::Expired => Some(RejectReason::Expired),
            Lookup::TooFarAhead => Some(RejectReason::TooFarAhead),
            Lookup::Fresh => None,
        };
        if let Some(reason) = refusal {
            self.metrics.requests_refused_validity += 1;
            if local {
                self.reply(&request, ReplyOutcome::Rejected(reason));
            }
            return;
        }
        if let Some(pending) = self.pending.get_mut(&key) {
            pending.local |= local;
            if watch == Watch::RelayedToUs && pending.watch == Watch::Fresh {
                pending.watch = watch;
            }
            let unvouched = pending.vouch.is_none() && !local;
            self.metrics.requests_replayed += 1;
            // The forward that vouches for it, if it has none yet and the
            // forward fits (it goes on waiting for one otherwise).
            if let Some((forward, bytes)) = vouch.filter(|_| unvouched) {
                if self.fits(forward.signer, self.vouch_cost(&forward, bytes), 0) {
                    let held = self.hold_vouch(forward, bytes);
                    if let Some(pending) = self.pending.get_mut(&key) {
                        pending.vouch = Some(held);
                    }
                }
            }
            return;
        }
        let size = request.payload_len();
        let vouch_cost = vouch
            .as_ref()
            .map_or(0, |(forward, bytes)| self.vouch_cost(forward, *bytes));
        // The forward is charged to its signer: the origin itself, since a
        // forwarded request's origin is the forward's signer.
        if !self.fits(origin, size.saturating_add(vouch_cost), 1) {
            self.metrics.requests_refused_busy += 1;
            if local {
                self.reply(&request, ReplyOutcome::Rejected(RejectReason::Busy));
            }
            return;
        }
        self.pending_bytes += size;
        let held = self.held.entry(origin).or_default();
        held.requests += 1;
        held.bytes += size;
        let vouch = vouch.map(|(forward, bytes)| self.hold_vouch(forward, bytes));
        self.pending.insert(
            key,
            PendingRequest {
                request: request.clone(),
                origin,
                local,
                proposed: false,
                since: self.now,
                watch,
                passed_over: false,
                included: false,
                vouch,
            },
        );
        self.waiting.push_back((self.now, key));
        self.expiring
            .entry(request.request.valid_until)
            .or_default()
            .push(key);
        if self.is_primary() {
            self.queue.push_back(origin, (key, self.now));
            self.propose_batches();
        } else if self.phase == super::Phase::Normal && (local || !self.vouching()) {
            // Connection-authenticated mode: another replica's requests go
            // on in the forward that vouches for them, never in one of ours
            // (we cannot vouch for them; see `on_forward`).
            self.to_forward_bytes += request.payload_len();
            self.to_forward.push(request);
        }
        // While changing views the request waits; it is forwarded to the new
        // primary when the view starts.
    }

    /// Requests another replica passed on: a backup forwarding to us as
    /// primary, or a backup whose request timer fired re-sending its pending
    /// requests to everyone (then we watch them too, and forward them to the
    /// primary ourselves).
    pub(super) fn on_forward(&mut self, forward: Signed<Forward>) {
        if self.phase != super::Phase::Normal {
            self.drop_input(super::DropReason::NotNow);
            return;
        }
        // To a backup, a forward is a relay: another backup waited too long
        // for these and sent them to every replica.
        let watch = if self.is_primary() {
            Watch::Fresh
        } else {
            Watch::RelayedToUs
        };
        if self.vouching() {
            // Kept whole, as signed: it vouches for its requests wherever
            // they go from here.
            if !self.forward_within_limits(&forward.value) {
                self.drop_input(super::DropReason::Oversized);
                return;
            }
            let vouched = std::sync::Arc::new(forward);
            let before = self.pending.len();
            let bytes = Self::forward_bytes(&vouched);
            let origin = vouched.signer;
            for request in &vouched.value.requests {
                let vouch = Some((vouched.clone(), bytes));
                self.admit_request(request.clone(), origin, false, watch, vouch);
            }
            // A relay: we watch its requests too, and pass the forward on to
            // the primary as it was signed.
            if !self.is_primary() && self.pending.len() > before {
                let primary = self.primary();
                self.send(primary, WireMessage::Forward((*vouched).clone()));
            }
            return;
        }
        let origin = forward.signer;
        for request in forward.value.requests {
            self.admit_request(request, origin, false, watch, None);
        }
    }

    /// Forwards the gathered requests to the primary in one signed message
    /// when due: at once if no forward left for `batch_delay` (an idle
    /// backup adds no latency), at once when a batch's worth has gathered,
    /// otherwise `batch_delay` after the previous forward. Under load a
    /// backup thus signs (and the primary verifies) about one forward per
    /// `batch_delay` instead of one per request.
    pub(super) fn flush_forwards(&mut self) {
        if self.to_forward.is_empty() {
            return;
        }
        if self.phase != super::Phase::Normal {
            // A view change started: the requests stay pending and go to
            // the new primary when its view starts (`resubmit_pending`).
            self.to_forward.clear();
            self.to_forward_bytes = 0;
            return;
        }
        let full = self.to_forward.len() >= self.config.max_batch_requests
            || self.to_forward_bytes >= self.config.max_batch_bytes;
        let due = self
            .forward_deadline()
            .is_none_or(|deadline| self.now >= deadline);
        if full || due {
            let requests = std::mem::take(&mut self.to_forward);
            self.to_forward_bytes = 0;
            // Within the batch limits, as receivers check before verifying
            // (one input may have gathered more than a batch's worth).
            for chunk in self.forward_chunks(requests) {
                self.send_forward(chunk);
            }
        }
    }

    /// When the gathered requests are due to be forwarded.
    pub(super) fn forward_deadline(&self) -> Option<Duration> {
        if self.to_forward.is_empty() {
            return None;
        }
        self.last_forward.map(|last| last + self.config.batch_delay)
    }

    fn send_forward(&mut self, requests: Vec<SignedRequest>) {
        self.last_forward = Some(self.now);
        let primary = self.primary();
        if self.vouching() {
            if let Some(vouched) = self.vouch(requests) {
                self.send(primary, WireMessage::Forward((*vouched).clone()));
            }
            return;
        }
        match self.signer.sign(Forward { requests }) {
            Ok(signed) => self.send(primary, WireMessage::Forward(signed)),
            Err(_) => self.drop_input(super::DropReason::Oversized),
        }
    }

    /// After a new view: every pending request goes to the new primary (or
    /// into its queue, if that is us), since the old primary may have dropped
    /// it, and the request timer restarts for all of them: the new primary
    /// gets a full timeout. A request another backup relayed stays marked so:
    /// every replica still has it, and a new primary that censors it too is
    /// suspected after one timeout.
    pub(super) fn resubmit_pending(&mut self) {
        self.queue.clear();
        self.waiting.clear();
        let primary = self.is_primary();
        let now = self.now;
        let mut forward = Vec::new();
        let mut keys = Vec::new();
        // In the order this replica started waiting for them (then by
        // key), as `waiting` holds them: what a replica sends must not
        // depend on a hash map's order.
        let mut order: Vec<(Duration, RequestKey)> = self
            .pending
            .iter()
            .map(|(key, pending)| (pending.since, *key))
            .collect();
        order.sort_unstable();
        for (_, key) in order {
            let Some(pending) = self.pending.get_mut(&key) else {
                continue;
            };
            pending.since = now;
            pending.passed_over = false;
            self.waiting.push_back((now, key));
            if pending.proposed {
                continue;
            }
            if primary {
                self.queue.push_back(pending.origin, (key, now));
            } else {
                forward.push(pending.request.clone());
                keys.push(key);
            }
        }
        if self.vouching() {
            // Each forward as its voucher signed it (within the batch
            // limits: forwards are split where they are first signed).
            let primary = self.primary();
            for vouched in self.vouched_forwards(&keys) {
                self.send(primary, WireMessage::Forward((*vouched).clone()));
            }
        } else {
            // Keep each forward under the batch limits.
            for chunk in self.forward_chunks(forward) {
                self.send_forward(chunk);
            }
        }
        self.propose_batches();
    }

    /// When the primary's oldest queued request has waited `batch_delay`.
    pub(super) fn batch_deadline(&self) -> Option<Duration> {
        // With too many blocks in flight for a partial batch, the next
        // proposal waits for an execution, not for a time.
        if !self.is_primary()
            || !self.can_propose()
            || self.in_flight() >= PARTIAL_BATCHES_IN_FLIGHT
        {
            return None;
        }
        self.queue
            .oldest()
            .map(|since| since + self.config.batch_delay)
    }

    pub(super) fn in_flight(&self) -> u64 {
        self.next_seq
            .0
            .saturating_sub(self.last_executed.0.saturating_add(1))
    }

    /// What the batches this replica proposed and has not executed weigh.
    pub(super) fn in_flight_bytes(&self) -> usize {
        let first = self.last_executed.next();
        if first >= self.next_seq {
            return 0; // (`range` refuses an empty range given backwards)
        }
        self.slots
            .range(first..self.next_seq)
            .map(|(_, slot)| slot.proposed_bytes)
            .sum()
    }

    fn can_propose(&self) -> bool {
        self.next_seq <= self.high_watermark()
            && self.next_seq > self.low_watermark()
            && self.in_flight() < self.config.pipeline
            && self.in_flight_bytes()
                < PIPELINE_BATCHES_OF_BYTES.saturating_mul(self.config.max_batch_bytes)
    }

    /// The primary cuts batches while the pipeline has room: at once when a
    /// batch is full or nothing is in flight (low latency when idle), else
    /// when the oldest request has waited `batch_delay` and fewer than
    /// [`PARTIAL_BATCHES_IN_FLIGHT`] blocks are in flight. Full batches may
    /// fill the whole pipeline; partial ones wait for a block to commit
    /// first, so under moderate load blocks grow with the commit latency
    /// instead of being cut every `batch_delay` (each block costs every
    /// replica 2f+1 signature checks and a group commit, whatever its size).
    pub(super) fn propose_batches(&mut self) {
        while self.is_primary() && self.can_propose() {
            self.skip_dead_queue_entries();
            let Some(oldest) = self.queue.oldest() else {
                return;
            };
            let full = self.queue.len() >= self.config.max_batch_requests;
            let idle = self.in_flight() == 0;
            let waited = self.now >= oldest + self.config.batch_delay
                && self.in_flight() < PARTIAL_BATCHES_IN_FLIGHT;
            if !(full || idle || waited) {
                return;
            }
            let (batch, vouches, cut) = if self.vouching() {
                self.cut_vouched_batch()
            } else {
                let (batch, cut) = self.cut_batch();
                (batch, Vec::new(), cut)
            };
            if batch.requests.is_empty() {
                return;
            }
            if !self.propose(batch, vouches) {
                // Nothing was signed: the requests go back to the head of
                // the queue, still unproposed, and wait for a view change.
                for (origin, entry, cost) in cut.into_iter().rev() {
                    self.queue.push_front(origin, entry, cost);
                }
                return;
            }
        }
    }

    fn skip_dead_queue_entries(&mut self) {
        let pending = &self.pending;
        self.queue
            .skip_dead(|key| pending.get(key).is_some_and(|p| !p.proposed));
    }

    /// What taking a queued request costs its origin's share (see
    /// `fair.rs`), or that it is no longer wanted.
    pub(super) fn queue_cost(pending: Option<&PendingRequest>) -> Cost {
        match pending {
            Some(pending) if !pending.proposed => Cost::Bytes(request_cost(&pending.request)),
            _ => Cost::Dead,
        }
    }

    /// The next batch from the queue, fair between origins, and the queue
    /// entries it took. The requests are marked proposed only once a
    /// pre-prepare carrying them is signed (`install_pre_prepare`).
    pub(super) fn cut_batch(&mut self) -> (Batch, Vec<super::fair::Taken>) {
        let mut requests = Vec::new();
        let mut cut = Vec::new();
        let mut bytes = 0usize;
        loop {
            let pending = &self.pending;
            let Some((origin, entry, cost)) =
                self.queue.next(|key| Self::queue_cost(pending.get(key)))
            else {
                break;
            };
            let Some(pending) = self.pending.get(&entry.0) else {
                break;
            };
            let size = pending.request.payload_len();
            if requests.len() >= self.config.max_batch_requests
                || (!requests.is_empty() && bytes + size > self.config.max_batch_bytes)
            {
                break;
            }
            bytes += size;
            requests.push(pending.request.clone());
            self.queue.take(origin, cost);
            cut.push((origin, entry, cost));
        }
        (Batch { requests }, cut)
    }

    /// A pending request left a block unexecuted: it may be proposed again.
    pub(super) fn requeue(&mut self, key: crate::RequestKey) {
        let primary = self.is_primary();
        if let Some(pending) = self.pending.get_mut(&key) {
            pending.proposed = false;
            if primary {
                self.queue.push_back(pending.origin, (key, self.now));
            }
        }
    }

    /// Height `height` executed: pending requests valid only up to it can
    /// never execute any more. Answer and drop them, or they would be
    /// watched (and the primary suspected) forever.
    pub(super) fn drop_expired_pending(&mut self, height: crate::SeqNum) {
        while let Some(entry) = self.expiring.first_entry() {
            if *entry.key() > height {
                return;
            }
            let (valid_until, keys) = entry.remove_entry();
            for key in keys {
                let expired = self
                    .pending
                    .get(&key)
                    .filter(|pending| pending.request.request.valid_until == valid_until)
                    .map(|pending| pending.request.clone());
                if let Some(request) = expired {
                    self.complete_request(&request, ReplyOutcome::Rejected(RejectReason::Expired));
                }
            }
        }
    }

    /// Whether `requests` more requests and `bytes` more bytes, answered
    /// for by `origin`, can be held: within `max_pending_requests` and
    /// `max_pending_bytes`, and within `origin`'s share of them (see
    /// [`Replica::origin_share`]).
    pub(super) fn fits(&self, origin: NodeId, bytes: usize, requests: usize) -> bool {
        let held = self.held.get(&origin).copied().unwrap_or_default();
        let share = self.origin_share();
        self.pending_bytes.saturating_add(bytes) <= self.config.max_pending_bytes
            && self.pending.len() + requests <= self.config.max_pending_requests
            && held.bytes.saturating_add(bytes) <= share.bytes
            && held.requests + requests <= share.requests
    }

    /// What one origin may hold of the pending pool: an equal share, so
    /// that no origin (a byzantine replica forwarding valid requests as
    /// fast as it can, or one node's flooding clients) can fill the pool
    /// and leave the others' requests refused; but at least a batch's
    /// worth, so that any origin can fill a batch.
    pub(super) fn origin_share(&self) -> Held {
        let n = self.committee.n().max(1);
        Held {
            requests: (self.config.max_pending_requests / n)
                .max(self.config.max_batch_requests)
                .min(self.config.max_pending_requests),
            bytes: (self.config.max_pending_bytes / n)
                .max(self.config.max_batch_bytes)
                .min(self.config.max_pending_bytes),
        }
    }

    /// Adds `bytes` (or takes them away) from what `origin` holds.
    pub(super) fn charge(&mut self, origin: NodeId, bytes: usize, add: bool) {
        let held = self.held.entry(origin).or_default();
        if add {
            held.bytes = held.bytes.saturating_add(bytes);
        } else {
            held.bytes = held.bytes.saturating_sub(bytes);
        }
        if held.requests == 0 && held.bytes == 0 {
            self.held.remove(&origin);
        }
    }

    /// A request was settled by execution (run, or found a duplicate), or
    /// expired: stop waiting for it and answer a local client.
    pub(super) fn complete_request(&mut self, request: &SignedRequest, outcome: ReplyOutcome) {
        if let Some(pending) = self.pending.remove(&request.key()) {
            self.pending_bytes = self
                .pending_bytes
                .saturating_sub(pending.request.payload_len());
            if let Some(held) = self.held.get_mut(&pending.origin) {
                held.requests = held.requests.saturating_sub(1);
            }
            self.charge(pending.origin, pending.request.payload_len(), false);
            if let Some(forward) = &pending.vouch {
                self.release_vouch(forward);
            }
            if pending.local {
                self.reply(request, outcome);
            }
        }
    }
}

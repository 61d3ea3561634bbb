//! The request timer, and suspicion of the primary.
//!
//! A backup watches the requests it waits for, oldest first (PBFT's request
//! timer), and judges the primary by what it does with them, not by how long
//! they wait: under load an honest primary's queue makes every request wait,
//! and a faulty primary can keep everything else moving. The oldest waiting
//! request is *overdue* when
//!
//! - **passed over**: a block the primary proposed well after the request
//!   reached it (beyond twice the recent inclusion latency, the time
//!   forwarding and the primary's queue take now) left it out, with room to
//!   spare or with requests that arrived here later: censorship, or tiny
//!   batches, is seen at the next block;
//! - **stalled**: nothing executed for the stall timeout (the request
//!   timeout, raised to twice the recent pre-prepare-to-execution time, so
//!   a loaded cluster is not judged stalled), counted from the request's
//!   arrival or the last execution: a silent primary;
//! - **too old**: it waited `request_timeout_max`, whatever else happens:
//!   the bound on a primary that fills blocks with requests of its own (from
//!   here it is indistinguishable from an honest cluster that is overloaded
//!   that much).
//!
//! An overdue request is first relayed to every replica (as a PBFT client
//! re-sends to all), so every honest backup watches it and forwards it to
//! the primary itself; a stall timeout later, if it is still overdue, this
//! backup signs a [`Suspect`] for the view (at once, for a request another
//! backup relayed to us) and re-sends it every status interval while it
//! stands. 2f+1 replicas suspecting the primary (so at least f+1 honest
//! ones) start the view change, and the 2f+1 suspicions are relayed so that
//! every replica follows. One replica whose timer fired alone never leaves
//! the view on its own, and so never strands itself in a view change while
//! the others carry on.

use super::{Phase, Replica, Watch};
use crate::message::{Batch, Forward, Signed, SignedRequest, Suspect, WireMessage};
use crate::storage::Record;
use std::time::Duration;

/// Timeouts are at least this many times the recent figure they follow.
const LATENCY_FACTOR: u32 = 2;
/// A suspicion not re-sent for this many status intervals has lapsed.
const SUSPECT_TTL_INTERVALS: u32 = 4;
/// Most requests relayed per firing: enough for every backup to watch the
/// oldest ones (which is all a relay is for: one overdue request watched by
/// all makes 2f+1 suspicions possible), few enough that a cluster that is
/// merely overloaded does not multiply its load by n when a stall timeout
/// fires everywhere at once.
const RELAY_LIMIT: usize = 16;

/// A decaying maximum `(value, measured_at)`: a new sample replaces it if
/// larger than what is left of it; it falls by a quarter of the time since
/// it was measured.
pub(super) fn note_max(figure: &mut (Duration, Duration), sample: Duration, now: Duration) {
    if sample >= decayed(*figure, now) {
        *figure = (sample, now);
    }
}

fn decayed((value, at): (Duration, Duration), now: Duration) -> Duration {
    value.saturating_sub(now.saturating_sub(at) / 4)
}

impl Replica {
    /// The stall timeout (also the gap between relaying a request and
    /// suspecting the primary over it): the configured request timeout,
    /// raised to twice the recent pre-prepare-to-execution time, capped at
    /// `request_timeout_max`.
    pub(super) fn request_timeout(&self) -> Duration {
        decayed(self.commit_time, self.now)
            .saturating_mul(LATENCY_FACTOR)
            .max(self.config.request_timeout)
            .min(self.config.request_timeout_max)
    }

    /// How late past its arrival a pre-prepare may leave a request out
    /// before the request counts as passed over: half the request timeout,
    /// raised to twice the recent inclusion latency, capped at
    /// `request_timeout_max`.
    fn inclusion_slack(&self) -> Duration {
        decayed(self.inclusion, self.now)
            .saturating_mul(LATENCY_FACTOR)
            .max(self.config.request_timeout / 2)
            .min(self.config.request_timeout_max)
    }

    /// A block proposed (pre-prepare accepted here) at `proposed_at` is
    /// executing: if it left out the oldest request waiting here although
    /// the request reached us well before, with room to spare or with
    /// requests that arrived here after it, the primary passed it over.
    pub(super) fn check_passed_over(&mut self, batch: &Batch, proposed_at: Duration) {
        if self.is_primary() {
            return;
        }
        let Some(&(since, key)) = self.waiting.front() else {
            return;
        };
        let slack = self.inclusion_slack();
        if proposed_at <= since + slack {
            return;
        }
        let Some(oldest) = self.pending.get(&key).filter(|p| p.since == since) else {
            return;
        };
        if oldest.proposed || oldest.passed_over {
            return;
        }
        let mut bytes = 0usize;
        let mut newer = false;
        for request in &batch.requests {
            if request.key() == key {
                return;
            }
            bytes = bytes.saturating_add(request.payload_len());
            newer |= self
                .pending
                .get(&request.key())
                .is_some_and(|p| p.since > since + slack);
        }
        let room = batch.requests.len() < self.config.max_batch_requests
            && bytes.saturating_add(oldest.request.payload_len()) <= self.config.max_batch_bytes;
        if room || newer {
            if let Some(pending) = self.pending.get_mut(&key) {
                pending.passed_over = true;
            }
        }
    }

    /// Drops entries of requests no longer pending from the front of
    /// `waiting` (and compacts it when dead entries pile up behind a front
    /// that stays), so its front is the oldest pending request.
    pub(super) fn prune_waiting(&mut self) {
        while let Some(&(since, key)) = self.waiting.front() {
            if self.pending.get(&key).is_some_and(|p| p.since == since) {
                break;
            }
            self.waiting.pop_front();
        }
        if self.waiting.len() > 2 * self.pending.len() + 1024 {
            let pending = &self.pending;
            self.waiting
                .retain(|(since, key)| pending.get(key).is_some_and(|p| p.since == *since));
        }
    }

    /// When the oldest waiting request is (or was) overdue, and its stage.
    fn oldest_overdue(&self) -> Option<(Duration, Watch)> {
        let &(since, key) = self.waiting.front()?;
        let pending = self.pending.get(&key).filter(|p| p.since == since)?;
        let overdue = if pending.passed_over {
            since
        } else {
            let stalled = since.max(self.last_execution) + self.request_timeout();
            stalled.min(since + self.config.request_timeout_max)
        };
        Some((overdue, pending.watch))
    }

    /// When the oldest request's next stage is due (relay, or suspicion).
    fn oldest_due(&self) -> Option<(Duration, Watch)> {
        let (overdue, watch) = self.oldest_overdue()?;
        let due = match watch {
            Watch::Fresh | Watch::RelayedToUs => overdue,
            Watch::RelayedByUs(at) => overdue.max(at + self.request_timeout()),
        };
        Some((due, watch))
    }

    /// The request timer runs at a replica in a normal view that waits for
    /// a request and does not already suspect the primary (a standing
    /// suspicion is re-sent on the status tick instead). The primary runs it
    /// too: a primary whose own proposals do not commit (its view has no
    /// quorum: some replicas went ahead to a later view change) suspects
    /// itself, so that the replicas left behind can make up the 2f+1 that
    /// move everyone to the view the others went to.
    pub(super) fn request_deadline(&self) -> Option<Duration> {
        if self.phase != Phase::Normal || self.suspects.contains_key(&self.id) {
            return None;
        }
        self.oldest_due().map(|(due, _)| due)
    }

    pub(super) fn check_request_timer(&mut self) {
        if self.request_deadline().is_none_or(|due| self.now < due) {
            return;
        }
        match self.oldest_due() {
            Some((_, Watch::Fresh)) => self.relay_overdue(),
            Some(_) => self.suspect(),
            None => {}
        }
    }

    /// Relays the oldest request, which is overdue, and the next oldest
    /// that have waited beyond the inclusion slack and were not relayed yet,
    /// at most [`RELAY_LIMIT`] per firing.
    fn relay_overdue(&mut self) {
        let slack = self.inclusion_slack();
        let limit = RELAY_LIMIT;
        let now = self.now;
        let mut requests = Vec::new();
        for (position, &(since, key)) in self.waiting.iter().enumerate() {
            if (position > 0 && since + slack > now) || requests.len() >= limit {
                break;
            }
            if let Some(pending) = self.pending.get_mut(&key) {
                if pending.since == since && pending.watch == Watch::Fresh {
                    pending.watch = Watch::RelayedByUs(now);
                    requests.push(pending.request.clone());
                }
            }
        }
        self.metrics.requests_relayed += requests.len() as u64;
        if self.vouching() {
            // Each forward as its voucher signed it.
            let keys: Vec<_> = requests.iter().map(SignedRequest::key).collect();
            for vouched in self.vouched_forwards(&keys) {
                self.broadcast(WireMessage::Forward((*vouched).clone()));
            }
            return;
        }
        for chunk in self.forward_chunks(requests) {
            match self.signer.sign(Forward { requests: chunk }) {
                Ok(signed) => self.broadcast(WireMessage::Forward(signed)),
                Err(_) => self.drop_input(super::DropReason::Oversized),
            }
        }
    }

    /// Splits requests into forwards within the batch limits.
    pub(super) fn forward_chunks(&self, requests: Vec<SignedRequest>) -> Vec<Vec<SignedRequest>> {
        let mut chunks = Vec::new();
        let mut chunk = Vec::new();
        let mut bytes = 0usize;
        for request in requests {
            let size = request.payload_len();
            if !chunk.is_empty()
                && (chunk.len() >= self.config.max_batch_requests
                    || bytes + size > self.config.max_batch_bytes)
            {
                chunks.push(std::mem::take(&mut chunk));
                bytes = 0;
            }
            bytes += size;
            chunk.push(request);
        }
        if !chunk.is_empty() {
            chunks.push(chunk);
        }
        chunks
    }

    /// Signs and broadcasts a suspicion of the current view's primary.
    fn suspect(&mut self) {
        let view = self.view;
        let Ok(signed) = self.signer.sign(Suspect { view }) else {
            return;
        };
        self.metrics.suspicions += 1;
        self.suspects.insert(self.id, (signed.clone(), self.now));
        self.broadcast(WireMessage::Suspect(signed));
        self.check_suspects();
    }

    /// On the status tick: a suspicion that still stands is re-sent (else it
    /// lapses at the others); one whose request executed is withdrawn.
    pub(super) fn refresh_suspicion(&mut self) {
        if self.phase != Phase::Normal {
            return;
        }
        let Some((own, _)) = self.suspects.get(&self.id).cloned() else {
            return;
        };
        let overdue = matches!(
            self.oldest_due(),
            Some((due, Watch::RelayedByUs(_) | Watch::RelayedToUs)) if due <= self.now
        );
        if overdue {
            self.suspects.insert(self.id, (own.clone(), self.now));
            self.broadcast(WireMessage::Suspect(own));
            self.check_suspects();
        } else {
            self.suspects.remove(&self.id);
        }
    }

    pub(super) fn on_suspect(&mut self, suspect: Signed<Suspect>) {
        if suspect.value.view != self.view || self.phase != Phase::Normal {
            // Relayed suspicions keep arriving after the view changed.
            self.drop_input(super::DropReason::StaleView);
            return;
        }
        if suspect.signer == self.id {
            return;
        }
        self.suspects.insert(suspect.signer, (suspect, self.now));
        self.check_suspects();
    }

    /// 2f+1 replicas want to leave the view (a standing suspicion, or a
    /// view-change for a later view: replicas that went ahead count too):
    /// leave it, keeping (durably) and relaying the suspicions so every
    /// replica leaves with us.
    pub(super) fn check_suspects(&mut self) {
        if self.phase != Phase::Normal {
            return;
        }
        let ttl = self.config.status_interval * SUSPECT_TTL_INTERVALS;
        let now = self.now;
        self.suspects
            .retain(|_, (_, at)| now.saturating_sub(*at) <= ttl);
        let mut leaving: std::collections::BTreeSet<crate::NodeId> =
            self.suspects.keys().copied().collect();
        for by_signer in self.view_changes.range(self.view.next()..).map(|(_, v)| v) {
            leaving.extend(by_signer.keys().copied());
        }
        if leaving.len() < self.committee.quorum() {
            return;
        }
        let proof: Vec<Signed<Suspect>> = self.suspects.values().map(|(s, _)| s.clone()).collect();
        self.suspicion = proof.clone();
        self.persist(Record::Suspicion(proof));
        let next = self.view.next();
        self.start_view_change(next);
        self.relay_suspicion();
    }

    /// Sends the suspicions that started this view change to everyone, so
    /// replicas still in the old view (they missed some) follow.
    pub(super) fn relay_suspicion(&mut self) {
        if self.phase == Phase::Normal {
            return;
        }
        for suspect in self.suspicion.clone() {
            self.broadcast(WireMessage::Suspect(suspect));
        }
    }
}

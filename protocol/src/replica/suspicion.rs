//! The request timer, and suspicion of the primary.
//!
//! A backup watches the requests it waits for, oldest first (PBFT's request
//! timer): not the time since anything executed, which a primary that orders
//! everyone but one client, or only tiny batches, would keep resetting.
//!
//! - The oldest request has waited one request timeout: this backup relays
//!   every request that waited that long to every replica (as a PBFT client
//!   re-sends to all), so every honest backup watches it and forwards it to
//!   the primary itself.
//! - It has waited another timeout (or one, if another backup relayed it to
//!   us): this backup signs a [`Suspect`] for the view and re-sends it every
//!   status interval while the wait lasts.
//! - 2f+1 replicas suspect the primary (so at least f+1 honest ones): the
//!   view change starts, and the 2f+1 suspicions are relayed so that every
//!   replica follows. One replica whose timer fired alone never leaves the
//!   view on its own, and so never strands itself in a view change while the
//!   others carry on.
//!
//! The timeout adapts to load: never below twice the longest wait of a
//! recently executed request, so a busy primary is not mistaken for a faulty
//! one, and never above `request_timeout_max`, so a primary that slows
//! everyone down cannot stretch it without bound.

use super::{Phase, Replica, Watch};
use crate::message::{Forward, Signed, SignedRequest, Suspect, WireMessage};
use crate::storage::Record;
use std::time::Duration;

/// The request timeout is at least this many times the longest recent wait.
const LATENCY_FACTOR: u32 = 2;
/// A suspicion not re-sent for this many status intervals has lapsed.
const SUSPECT_TTL_INTERVALS: u32 = 4;
/// Most requests relayed per firing, in batches' worth.
const RELAY_BATCHES: usize = 4;

impl Replica {
    /// The request timeout in force: the configured one, raised to twice the
    /// longest recent wait, capped at `request_timeout_max`.
    pub(super) fn request_timeout(&self) -> Duration {
        self.recent_latency()
            .saturating_mul(LATENCY_FACTOR)
            .max(self.config.request_timeout)
            .min(self.config.request_timeout_max)
    }

    /// The longest wait of a recently executed request, falling by a quarter
    /// of the time since it was measured (so the timeout comes back down
    /// once load eases).
    pub(super) fn recent_latency(&self) -> Duration {
        let (wait, at) = self.latency;
        wait.saturating_sub(self.now.saturating_sub(at) / 4)
    }

    /// A pending request executed after waiting `wait` here.
    pub(super) fn note_wait(&mut self, wait: Duration) {
        if wait >= self.recent_latency() {
            self.latency = (wait, self.now);
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

    /// The oldest pending request's wait start and stage.
    fn oldest_waiting(&self) -> Option<(Duration, Watch)> {
        let &(since, key) = self.waiting.front()?;
        let pending = self.pending.get(&key).filter(|p| p.since == since)?;
        Some((since, pending.watch))
    }

    /// When the oldest request's next stage is due (relay, or suspicion).
    fn oldest_due(&self) -> Option<(Duration, Watch)> {
        let (since, watch) = self.oldest_waiting()?;
        let timeout = self.request_timeout();
        let due = match watch {
            Watch::Fresh | Watch::RelayedToUs => since + timeout,
            Watch::RelayedByUs => since + timeout.saturating_mul(2),
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

    /// Relays every request that waited a timeout and was not relayed yet,
    /// oldest first, bounded per firing.
    fn relay_overdue(&mut self) {
        let timeout = self.request_timeout();
        let limit = self.config.max_batch_requests.saturating_mul(RELAY_BATCHES);
        let mut requests = Vec::new();
        for &(since, key) in &self.waiting {
            if since + timeout > self.now || requests.len() >= limit {
                break;
            }
            if let Some(pending) = self.pending.get_mut(&key) {
                if pending.since == since && pending.watch == Watch::Fresh {
                    pending.watch = Watch::RelayedByUs;
                    requests.push(pending.request.clone());
                }
            }
        }
        self.metrics.requests_relayed += requests.len() as u64;
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
            Some((due, Watch::RelayedByUs | Watch::RelayedToUs)) if due <= self.now
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

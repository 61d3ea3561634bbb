//! Connection-authenticated mode: keeping each request with the forward
//! that vouches for it, so that a batch is made of whole vouched forwards
//! and every replica can check who answers for each request's origin (see
//! `crate::vouch`).
//!
//! A replica vouches for its own clients' requests by signing the forward
//! that carries them (a backup when it forwards them to the primary, the
//! primary when it cuts a batch). A forward it receives is kept whole, as
//! signed, beside each of its requests: relayed, re-forwarded after a view
//! change and proposed only as it is, since its signature covers exactly
//! its requests.

use super::fair::{Cost, REQUEST_OVERHEAD};
use super::{Replica, RequestKey};
use crate::codec;
use crate::message::{Batch, Forward, Signed, SignedRequest, Vouch};
use crate::verify::RequestMode;
use std::collections::HashSet;
use std::sync::Arc;

/// A forward as its voucher signed it, shared by its requests.
pub(super) type Vouched = Arc<Signed<Forward>>;

/// A forward kept for the pending requests it vouches for.
///
/// It is kept whole, whatever became of its other requests (executed,
/// expired, refused), because its signature covers all of them: so while
/// one of its requests is pending, all of its bytes count against
/// `max_pending_bytes`. Counting only the pending requests' payloads let a
/// byzantine peer pin a whole forward (up to `max_batch_bytes`) per tiny
/// pending request, by sending one fresh request among expired ones, again
/// and again. Kept by signature, so a forward that arrives twice (relayed)
/// is held, and counted, once.
#[derive(Debug)]
pub(super) struct Retained {
    forward: Vouched,
    /// Its encoded size, charged to `pending_bytes` while it is kept.
    bytes: usize,
    /// Pending requests that travel in it.
    holders: usize,
}

impl Replica {
    /// Whether requests travel in vouched forwards (connection-authenticated
    /// mode).
    pub(super) fn vouching(&self) -> bool {
        self.config.request_mode == RequestMode::ConnectionAuthenticated
    }

    /// Signs a forward of this replica's own clients' requests, and keeps it
    /// beside each of them: from now on they travel in it.
    pub(super) fn vouch(&mut self, requests: Vec<SignedRequest>) -> Option<Vouched> {
        let signed = match self.signer.sign(Forward { requests }) {
            Ok(signed) => Arc::new(signed),
            Err(_) => {
                self.drop_input(super::DropReason::Oversized);
                return None;
            }
        };
        // These requests are admitted already: the forward is charged even
        // beyond the budget (new requests are refused until it is released).
        let bytes = Self::forward_bytes(&signed);
        for request in &signed.value.requests {
            let key = request.key();
            if self.pending.get(&key).is_some_and(|p| p.vouch.is_none()) {
                let held = self.hold_vouch(signed.clone(), bytes);
                if let Some(pending) = self.pending.get_mut(&key) {
                    pending.vouch = Some(held);
                }
            }
        }
        Some(signed)
    }

    /// A forward's encoded size: what keeping it costs. Computed once per
    /// forward received (it walks every request), not once per request.
    pub(super) fn forward_bytes(forward: &Vouched) -> usize {
        codec::encoded_len(&**forward).map_or(usize::MAX, |bytes| bytes as usize)
    }

    /// What keeping `forward` (of `bytes`) would add to `pending_bytes`:
    /// nothing if it is kept already.
    pub(super) fn vouch_cost(&self, forward: &Vouched, bytes: usize) -> usize {
        if self.retained.contains_key(&forward.signature) {
            0
        } else {
            bytes
        }
    }

    /// Keeps `forward` (of `bytes`) for one more pending request, charging
    /// its bytes when it is first kept; returns the copy kept (one per
    /// signature).
    pub(super) fn hold_vouch(&mut self, forward: Vouched, bytes: usize) -> Vouched {
        let retained = self
            .retained
            .entry(forward.signature)
            .or_insert_with(|| Retained {
                forward,
                bytes,
                holders: 0,
            });
        retained.holders += 1;
        let (kept, first) = (retained.forward.clone(), retained.holders == 1);
        if first {
            let bytes = retained.bytes;
            self.pending_bytes = self.pending_bytes.saturating_add(bytes);
            self.charge(kept.signer, bytes, true);
        }
        kept
    }

    /// A pending request that travelled in `forward` is gone: the forward
    /// is dropped, and its bytes released, with its last such request.
    pub(super) fn release_vouch(&mut self, forward: &Vouched) {
        let Some(retained) = self.retained.get_mut(&forward.signature) else {
            return;
        };
        retained.holders = retained.holders.saturating_sub(1);
        if retained.holders == 0 {
            let bytes = retained.bytes;
            self.pending_bytes = self.pending_bytes.saturating_sub(bytes);
            self.retained.remove(&forward.signature);
            self.charge(forward.signer, bytes, false);
        }
    }

    /// The vouched forwards that carry `keys`' requests, each once, in the
    /// order of the first request each carries; this replica's own clients'
    /// requests not yet vouched for are signed into new forwards first.
    pub(super) fn vouched_forwards(&mut self, keys: &[RequestKey]) -> Vec<Vouched> {
        let own: Vec<SignedRequest> = keys
            .iter()
            .filter_map(|key| self.pending.get(key))
            .filter(|pending| pending.vouch.is_none())
            .map(|pending| pending.request.clone())
            .collect();
        for chunk in self.forward_chunks(own) {
            self.vouch(chunk);
        }
        let mut seen = HashSet::new();
        keys.iter()
            .filter_map(|key| self.pending.get(key)?.vouch.clone())
            .filter(|forward| seen.insert(Arc::as_ptr(forward)))
            .collect()
    }

    /// The next batch from the primary's queue, made of whole vouched
    /// forwards (its own clients' requests in one forward it signs now), with
    /// the vouches that say so, and the queue entries it took.
    pub(super) fn cut_vouched_batch(&mut self) -> (Batch, Vec<Vouch>, Vec<super::fair::Taken>) {
        let mut runs: Vec<Vouched> = Vec::new();
        let mut taken = HashSet::new();
        let mut own = Vec::new();
        let mut cut = Vec::new();
        let (mut count, mut bytes) = (0usize, 0usize);
        loop {
            // What each request adds: its whole forward the first time one
            // of the forward's requests is met, nothing after that.
            let size_of = |pending: &super::PendingRequest| match &pending.vouch {
                Some(forward) if taken.contains(&Arc::as_ptr(forward)) => (0, 0),
                Some(forward) => (
                    forward.value.requests.len(),
                    forward
                        .value
                        .requests
                        .iter()
                        .map(SignedRequest::payload_len)
                        .sum(),
                ),
                None => (1, pending.request.payload_len()),
            };
            let pending = &self.pending;
            let next = self.queue.next(|key| match pending.get(key) {
                Some(pending) if !pending.proposed => {
                    let (more, size) = size_of(pending);
                    Cost::Bytes(size + more * REQUEST_OVERHEAD)
                }
                _ => Cost::Dead,
            });
            let Some((origin, entry, cost)) = next else {
                break;
            };
            let Some(pending) = self.pending.get(&entry.0) else {
                break;
            };
            let (more, size) = size_of(pending);
            if count > 0
                && (count + more > self.config.max_batch_requests
                    || bytes + size > self.config.max_batch_bytes)
            {
                break;
            }
            count += more;
            bytes += size;
            match &pending.vouch {
                Some(forward) => {
                    if taken.insert(Arc::as_ptr(forward)) {
                        runs.push(forward.clone());
                    }
                }
                None => own.push(pending.request.clone()),
            }
            self.queue.take(origin, cost);
            cut.push((origin, entry, cost));
        }
        if !own.is_empty() {
            if let Some(forward) = self.vouch(own) {
                runs.push(forward);
            }
        }
        let mut batch = Batch::default();
        let mut vouches = Vec::with_capacity(runs.len());
        for forward in runs {
            vouches.push(Vouch {
                voucher: forward.signer,
                count: forward.value.requests.len() as u32,
                signature: forward.signature,
            });
            batch
                .requests
                .extend(forward.value.requests.iter().cloned());
        }
        (batch, vouches, cut)
    }

    /// Whether a received forward can be kept whole as a vouch: within the
    /// batch limits, every request within the request size limit (a forward
    /// the primary could never propose whole is refused whole).
    pub(super) fn forward_within_limits(&self, forward: &Forward) -> bool {
        let mut bytes = 0usize;
        for request in &forward.requests {
            let size = request.payload_len();
            if size > self.config.max_request_bytes {
                return false;
            }
            bytes = bytes.saturating_add(size);
        }
        !forward.requests.is_empty()
            && forward.requests.len() <= self.config.max_batch_requests
            && (bytes <= self.config.max_batch_bytes || forward.requests.len() == 1)
    }
}

//! Admission: how much of this node's clients' work may be in the cluster
//! at once, and who goes next when that is full.
//!
//! Without it, every verified request went straight to the replica, and
//! from there to the primary, whatever was already waiting. A connection
//! that keeps thousands of requests unanswered then filled the queues a
//! request meets after this node, all of them first come first served
//! within this node's share: another client's request, arriving behind
//! them, waited for all of them. The primary's queue is fair between
//! replicas (`fair.rs`), but it cannot be fair between the connections
//! behind one replica: it never sees them.
//!
//! So the queue forms here, where connections are known. A request holds
//! a [`Slot`] of the node's window from the moment it is handed to
//! consensus until its client is answered (committed, refused or expired);
//! the window is `[clients] in_flight_bytes` of request *weight* (below).
//! When the window is full, a connection waits for room before it hands
//! on its next request, and reads nothing more meanwhile (its client's
//! QUIC stream fills, which holds the client back). Room is given in the
//! order connections asked for it, one request each (tokio's semaphore is
//! first come first served, and a connection asks again only once its
//! last request was let in): round robin between connections, so a
//! connection waits for about one request of each other waiting
//! connection, not for everything they keep queued. Room comes before the
//! signature check, so a request the node has no room for costs no
//! signature check.
//!
//! The window is in weight, not requests: a client-signed request costs
//! every replica a signature check, so a window of them drains several
//! times slower than one of connection-authenticated requests of the same
//! size. Design notes §46 has the measurements, and what this does not
//! fix (a flood that saturates the CPU still slows everyone).

use bftd_protocol::{RequestMode, SignedRequest};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a request weighs beyond its payload: its client, id, expiry and
/// signature on the wire, and the bookkeeping every replica does for it
/// (the overhead the primary's fair queue charges too).
const REQUEST_WEIGHT: usize = bftd_protocol::replica::REQUEST_OVERHEAD;

/// What a client-signed request weighs more: every replica checks its
/// signature. At saturation a client-signed cluster commits about a third
/// of what a connection-authenticated one does with 512-byte requests
/// (BENCHMARKS.md), so a signed request weighs about what three unsigned
/// ones do (3 × (512 + 128) ≈ 512 + 128 + 2048).
const SIGNATURE_WEIGHT: usize = 2048;

/// The node's window: `[clients] in_flight_bytes` of request weight.
#[derive(Debug)]
pub(crate) struct Admission {
    window: Arc<Semaphore>,
    capacity: u32,
    signed: bool,
}

/// A request's place in the window, given back when it is dropped (with
/// the waiter that answers the request's client).
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    /// A window of `bytes` of weight (at most `u32::MAX`, checked with the
    /// node file).
    pub(crate) fn new(bytes: usize, mode: RequestMode) -> Admission {
        let capacity = bytes.clamp(1, u32::MAX as usize) as u32;
        Admission {
            window: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
            signed: mode == RequestMode::ClientSigned,
        }
    }

    /// What `request` holds of the window while it is in flight: at most
    /// the whole window, so that a request bigger than it still goes (on
    /// its own).
    pub(crate) fn weight(&self, request: &SignedRequest) -> u32 {
        let signature = if self.signed { SIGNATURE_WEIGHT } else { 0 };
        let weight = request
            .payload_len()
            .saturating_add(REQUEST_WEIGHT + signature);
        weight.min(self.capacity as usize) as u32
    }

    /// Waits for room for `request`, behind the connections that asked
    /// before; returns its slot and whether it had to wait (`None` only if
    /// the window was closed, which it never is).
    pub(crate) async fn enter(&self, request: &SignedRequest) -> Option<(Slot, bool)> {
        let weight = self.weight(request);
        if let Ok(permit) = self.window.clone().try_acquire_many_owned(weight) {
            return Some((Slot { _permit: permit }, false));
        }
        let permit = self.window.clone().acquire_many_owned(weight).await.ok()?;
        Some((Slot { _permit: permit }, true))
    }

    /// Weight in flight now.
    pub(crate) fn in_use(&self) -> u64 {
        u64::from(self.capacity).saturating_sub(self.window.available_permits() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bftd_crypto::KeyPair;
    use bftd_protocol::message::Request;
    use bftd_protocol::SeqNum;
    use std::time::Duration;

    fn request(key: &KeyPair, id: u64, payload: usize) -> SignedRequest {
        let request = Request {
            client: key.public(),
            request_id: id,
            valid_until: SeqNum(100),
            payload: vec![0; payload],
        };
        SignedRequest::sign(request, key).unwrap()
    }

    fn key() -> KeyPair {
        KeyPair::generate(&mut rand::rngs::OsRng)
    }

    /// A connection that keeps the window full does not hold back another:
    /// room goes to whoever asked first, one request each, so the second
    /// connection's request is let in as soon as one of the first's is
    /// answered, not after every one the first has queued.
    #[tokio::test]
    async fn a_full_window_lets_connections_in_by_turns() {
        let flood = key();
        let honest = key();
        let one = request(&flood, 0, 0).payload_len() + REQUEST_WEIGHT;
        let admission = Arc::new(Admission::new(
            4 * one,
            RequestMode::ConnectionAuthenticated,
        ));
        // The flood fills the window.
        let mut held = Vec::new();
        for id in 0..4 {
            let (slot, waited) = admission.enter(&request(&flood, id, 0)).await.unwrap();
            assert!(!waited);
            held.push(slot);
        }
        assert_eq!(admission.in_use(), 4 * one as u64);
        // The flood asks for its fifth, then the honest connection for its
        // first: the flood's goes in first, then the honest one's, before
        // the flood's sixth, which asked after it.
        let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let spawn = |key: KeyPair, id: u64, who: &'static str| {
            let admission = admission.clone();
            let order_tx = order_tx.clone();
            tokio::spawn(async move {
                let (slot, waited) = admission.enter(&request(&key, id, 0)).await.unwrap();
                order_tx.send((who, waited)).unwrap();
                slot
            })
        };
        let flood_fifth = spawn(flood.clone(), 4, "flood");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let honest_first = spawn(honest, 0, "honest");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let flood_sixth = spawn(flood, 5, "flood");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(order.try_recv().is_err(), "nothing fits a full window");
        for _ in 0..3 {
            held.pop();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let admitted: Vec<_> = std::iter::from_fn(|| order.try_recv().ok()).collect();
        assert_eq!(
            admitted,
            vec![("flood", true), ("honest", true), ("flood", true)]
        );
        for task in [flood_fifth, honest_first, flood_sixth] {
            drop(task.await.unwrap());
        }
        drop(held);
        assert_eq!(admission.in_use(), 0);
    }

    /// A client-signed request weighs a signature check more; a request
    /// bigger than the window takes all of it and still goes.
    #[tokio::test]
    async fn weight_counts_signatures_and_never_exceeds_the_window() {
        let key = key();
        let small = request(&key, 0, 100);
        let unsigned = Admission::new(1 << 20, RequestMode::ConnectionAuthenticated);
        let signed = Admission::new(1 << 20, RequestMode::ClientSigned);
        assert_eq!(unsigned.weight(&small), (100 + REQUEST_WEIGHT) as u32);
        assert_eq!(
            signed.weight(&small),
            (100 + REQUEST_WEIGHT + SIGNATURE_WEIGHT) as u32
        );
        let tiny = Admission::new(1000, RequestMode::ClientSigned);
        let big = request(&key, 1, 5000);
        assert_eq!(tiny.weight(&big), 1000);
        let (slot, waited) = tiny.enter(&big).await.unwrap();
        assert!(!waited);
        assert_eq!(tiny.in_use(), 1000);
        drop(slot);
        assert_eq!(tiny.in_use(), 0);
    }
}

//! Who answers for a request's origin in connection-authenticated mode.
//!
//! In that mode a client proves its key only in the TLS handshake with the
//! node it submits to, so no other replica can check that a request really
//! comes from the client it names. Trusting every replica for every client
//! let one byzantine replica (the primary, or any forwarder) invent
//! requests in *any* client's name. Instead:
//!
//! - the client signs, once per node it submits through, a [`Grant`]
//!   letting that node vouch for it, and every request it sends there
//!   carries that signature (in [`SignedRequest::signature`]);
//! - the node vouches for its clients' requests by signing the forward that
//!   carries them ([`Forward`]), a backup when it passes them to the
//!   primary, the primary for its own clients when it cuts a batch;
//! - forwards travel whole, as signed (relays, re-forwarding after a view
//!   change), and the primary builds each batch from whole forwards, naming
//!   them run by run in the pre-prepare's [`Vouch`]es;
//! - every replica checks, before a pre-prepare reaches consensus, that the
//!   vouches cover the batch exactly, that each run is a forward its
//!   voucher signed, and that each request in it carries its client's grant
//!   to that voucher.
//!
//! So a byzantine replica can put requests only in the name of clients
//! that granted it (its own clients, as the README says), and its signature
//! proves it did. The cost is one signature per forward (a batch's worth of
//! requests) and one grant check per client and node, remembered by the
//! verifier ([`crate::verify::ClientCheckCache`]): not one per request, which is
//! what client-signed mode pays. A batch that a prepared certificate covers
//! (re-proposed by a new-view, fetched in state transfer) needs no vouches:
//! 2f + 1 replicas accepted it, f + 1 of them honest ones that checked.
//!
//! [`Grant`]: crate::message::Grant
//! [`Forward`]: crate::message::Forward
//! [`Vouch`]: crate::message::Vouch
//! [`SignedRequest::signature`]: crate::message::SignedRequest

#[cfg(test)]
mod tests {
    use crate::committee::Committee;
    use crate::ids::{NodeId, SeqNum, View};
    use crate::merkle::MerkleTree;
    use crate::message::{
        Batch, Forward, PrePrepare, Request, Signed, SignedRequest, Vouch, WireMessage,
    };
    use crate::verify::{
        verify_message, verify_request, BatchVerifier, CachingVerifier, ClientCheckCache,
        MessageLimits, RequestMode, VerifyError,
    };
    use bftd_crypto::KeyPair;
    use std::sync::Arc;

    const MODE: RequestMode = RequestMode::ConnectionAuthenticated;

    fn keys() -> Vec<KeyPair> {
        (0..4)
            .map(|i| KeyPair::from_seed([i as u8 + 1; 32]))
            .collect()
    }

    fn committee() -> Committee {
        Committee::new(&keys().iter().map(KeyPair::public).collect::<Vec<_>>()).unwrap()
    }

    fn request(client: &KeyPair, id: u64) -> Request {
        Request {
            client: client.public(),
            request_id: id,
            valid_until: SeqNum(100),
            payload: b"pay mallory 1000".to_vec(),
        }
    }

    /// Replica `id` signs a forward of `requests`: its vouch for them.
    fn forward(id: u16, requests: Vec<SignedRequest>) -> Signed<Forward> {
        Signed::sign(NodeId(id), Forward { requests }, &keys()[usize::from(id)]).unwrap()
    }

    /// The primary of view 0 proposes `batch` with `vouches`.
    fn pre_prepare(batch: Batch, vouches: Vec<Vouch>) -> WireMessage {
        let digest = MerkleTree::new(&batch).root();
        let value = PrePrepare {
            view: View(0),
            seq: SeqNum(1),
            digest,
        };
        WireMessage::PrePrepare {
            pre_prepare: Signed::sign(NodeId(0), value, &keys()[0]).unwrap(),
            batch: Arc::new(batch),
            vouches,
        }
    }

    fn vouch_of(forward: &Signed<Forward>) -> Vouch {
        Vouch {
            voucher: forward.signer,
            count: forward.value.requests.len() as u32,
            signature: forward.signature,
        }
    }

    fn verify(message: WireMessage) -> Result<(), VerifyError> {
        let limits = MessageLimits {
            request_mode: MODE,
            ..MessageLimits::of(&crate::Config::default())
        };
        verify_message(message, &committee(), &limits, &mut BatchVerifier).map(|_| ())
    }

    /// A byzantine primary proposes a request in the name of a client that
    /// never connected to it and that no replica vouched for (before
    /// vouching, this passed verification: "an invented request in another
    /// client's name passed verification").
    #[test]
    fn an_invented_request_in_a_pre_prepare_is_refused() {
        let victim = KeyPair::from_seed([42; 32]);
        let batch = Batch {
            requests: vec![SignedRequest::unsigned(request(&victim, 7))],
        };
        assert_eq!(
            verify(pre_prepare(batch, Vec::new())),
            Err(VerifyError::Unvouched),
            "an invented request in another client's name passed verification"
        );
    }

    /// Whole vouched forwards from two replicas, each request granted to its
    /// voucher: accepted.
    #[test]
    fn a_batch_of_vouched_forwards_is_accepted() {
        let (alice, bob) = (KeyPair::from_seed([42; 32]), KeyPair::from_seed([43; 32]));
        let from_1 = forward(
            1,
            vec![
                SignedRequest::granted(request(&alice, 1), &alice, NodeId(1)),
                SignedRequest::granted(request(&alice, 2), &alice, NodeId(1)),
            ],
        );
        let from_0 = forward(
            0,
            vec![SignedRequest::granted(request(&bob, 1), &bob, NodeId(0))],
        );
        let mut batch = Batch::default();
        batch.requests.extend(from_1.value.requests.iter().cloned());
        batch.requests.extend(from_0.value.requests.iter().cloned());
        let vouches = vec![vouch_of(&from_1), vouch_of(&from_0)];
        assert_eq!(verify(pre_prepare(batch, vouches)), Ok(()));
    }

    /// The primary vouches for a request of a client that granted another
    /// replica: refused. So does a voucher that signed the request but was
    /// never granted.
    #[test]
    fn a_voucher_the_client_did_not_grant_is_refused() {
        let alice = KeyPair::from_seed([42; 32]);
        let granted_to_1 = SignedRequest::granted(request(&alice, 1), &alice, NodeId(1));
        let by_0 = forward(0, vec![granted_to_1.clone()]);
        let batch = Batch {
            requests: vec![granted_to_1],
        };
        assert_eq!(
            verify(pre_prepare(batch, vec![vouch_of(&by_0)])),
            Err(VerifyError::InvalidSignature)
        );
        // The same as a forward, relayed or sent to the primary.
        assert_eq!(
            verify(WireMessage::Forward(by_0)),
            Err(VerifyError::InvalidSignature)
        );
    }

    /// A request slipped into a vouched run, a run cut short, runs that do
    /// not cover the batch, and a vouch for nothing: all refused.
    #[test]
    fn vouches_must_cover_the_batch_exactly() {
        let alice = KeyPair::from_seed([42; 32]);
        let own = |id| SignedRequest::granted(request(&alice, id), &alice, NodeId(1));
        let vouched = forward(1, vec![own(1), own(2)]);
        let vouch = vouch_of(&vouched);

        let slipped_in = Batch {
            requests: vec![own(1), own(3)],
        };
        assert_eq!(
            verify(pre_prepare(slipped_in, vec![vouch])),
            Err(VerifyError::InvalidSignature)
        );
        let longer = Batch {
            requests: vec![own(1), own(2), own(3)],
        };
        assert_eq!(
            verify(pre_prepare(longer, vec![vouch])),
            Err(VerifyError::Unvouched)
        );
        let shorter = Batch {
            requests: vec![own(1)],
        };
        assert_eq!(
            verify(pre_prepare(shorter, vec![vouch])),
            Err(VerifyError::Unvouched)
        );
        let empty_run = Vouch { count: 0, ..vouch };
        let exact = Batch {
            requests: vec![own(1), own(2)],
        };
        assert_eq!(
            verify(pre_prepare(exact, vec![empty_run, vouch])),
            Err(VerifyError::Unvouched)
        );
    }

    /// A client's grant is checked once, then remembered; a request with
    /// no grant is refused with a reason that says so.
    #[test]
    fn grants_are_checked_once_and_required() {
        let alice = KeyPair::from_seed([42; 32]);
        let cache = std::sync::Mutex::new(ClientCheckCache::default());
        let granted = SignedRequest::granted(request(&alice, 1), &alice, NodeId(2));
        for _ in 0..2 {
            verify_request(
                granted.clone(),
                NodeId(2),
                &committee(),
                MODE,
                &mut CachingVerifier(&cache),
            )
            .unwrap();
        }
        assert_eq!(cache.lock().unwrap().len(), 1);
        let bare = SignedRequest::unsigned(request(&alice, 2));
        assert_eq!(
            verify_request(bare, NodeId(2), &committee(), MODE, &mut BatchVerifier).err(),
            Some(VerifyError::MissingGrant)
        );
    }
}

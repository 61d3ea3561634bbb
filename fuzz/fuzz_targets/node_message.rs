//! Client frames, node to client: a `NodeMessage` decoded as the client
//! library does, then what the client does with it: a receipt verified
//! (inclusion and certificate) for a fixed request, a block verified
//! against the committee, a status described.
#![no_main]

use bftd::client_api::NodeMessage;
use bftd_crypto::{Digest, KeyPair};
use bftd_fuzz::{committee, decode_canonical, verify_for_real};
use bftd_protocol::{Request, SeqNum, SignedRequest};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn request() -> &'static SignedRequest {
    static REQUEST: OnceLock<SignedRequest> = OnceLock::new();
    REQUEST.get_or_init(|| {
        let client = KeyPair::from_seed([9; 32]);
        let request = Request {
            client: client.public(),
            request_id: 1,
            valid_until: SeqNum(100),
            payload: b"fuzz".to_vec(),
        };
        SignedRequest::sign(request, &client).expect("a small request signs")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(message) = decode_canonical::<NodeMessage>(data) else {
        return;
    };
    match message {
        NodeMessage::Receipt(receipt) => {
            for lifetime in [0, 1000, u64::MAX] {
                let _ = receipt.verify_inclusion(request(), lifetime);
            }
            if verify_for_real(data) {
                let _ = receipt.verify(committee(), 1000, request());
            }
        }
        NodeMessage::Block { block, duplicates } => {
            let _ = block.check(committee(), Digest::ZERO);
            if verify_for_real(data) {
                let _ = block.verify(committee(), block.block.prev_hash);
            }
            let _ = block.hash();
            let _ = duplicates.len();
        }
        NodeMessage::Status(status) => {
            let _ = status.has_quorum();
            let _ = status.describe_peers();
        }
        NodeMessage::Rejected { reason, .. } => {
            let _ = reason.to_string();
        }
        NodeMessage::SubscriptionEnded { reason } => {
            let _ = reason.len();
        }
        NodeMessage::Snapshots(held) => {
            // What a node fetching a snapshot does with a peer's list.
            for attestation in &held {
                let _ = attestation.manifest.check_shape();
                let _ = attestation.manifest.chunk_range(u32::MAX);
            }
            if verify_for_real(data) {
                let _ = bftd_protocol::snapshot::certified(committee(), &held, SeqNum(0));
            }
        }
        NodeMessage::SnapshotChunk { bytes, .. } => {
            let _ = bytes.map(|bytes| bytes.len());
        }
        NodeMessage::Malformed => {}
    }
});

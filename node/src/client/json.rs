//! One JSON object per committed block or receipt, with every field, for
//! `bftd tail --json` and `bftd submit --json`: so a shell pipeline, or a
//! program in any language, can consume the ordered stream without
//! speaking the client protocol. Keys, digests and signatures are lowercase
//! hex; payloads are standard base64 (RFC 4648, with padding), since they
//! are arbitrary bytes.
//!
//! What the objects say was verified by the client library before they are
//! printed (certificate signatures, Merkle proof, hash chain); a consumer
//! that trusts this process need check nothing. One that does not can
//! re-verify from the fields: the certificate's votes, the batch's requests
//! and the header fields are all here (docs/client-protocol.md).

use super::VerifiedBlock;
use crate::client_api::Committed;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};

/// The block as one JSON object: header, hash, certificate, and each
/// request with whether it executes here (`false` for the positions in
/// `duplicates`: executed before, or not valid at this height).
pub fn block(block: &VerifiedBlock) -> Value {
    let committed = &block.block;
    let certificate = &committed.certificate;
    let requests: Vec<Value> = committed
        .block
        .batch
        .requests
        .iter()
        .enumerate()
        .map(|(index, signed)| {
            let request = &signed.request;
            json!({
                "index": index,
                "client": request.client.to_string(),
                "request_id": request.request_id,
                "valid_until": request.valid_until.0,
                "payload": BASE64.encode(&request.payload),
                "signature": signed.signature.map(|s| hex::encode(s.0)),
                // `duplicates` is in ascending order (positions in the batch).
                "executes": block.duplicates.binary_search(&(index as u32)).is_err(),
            })
        })
        .collect();
    json!({
        "height": committed.block.height.0,
        "hash": block.hash.to_string(),
        "prev_hash": committed.block.prev_hash.to_string(),
        "batch_digest": committed.block.batch_digest.to_string(),
        "requests": requests,
        "duplicates": block.duplicates,
        "certificate": {
            "view": certificate.value.view.0,
            "seq": certificate.value.seq.0,
            "digest": certificate.value.digest.to_string(),
            "votes": certificate.votes.iter().map(|vote| json!({
                "signer": vote.signer.0,
                "signature": hex::encode(vote.signature.0),
            })).collect::<Vec<_>>(),
        },
    })
}

/// A verified receipt for `payload` as one JSON object.
pub fn receipt(payload: &[u8], committed: &Committed) -> Value {
    json!({
        "payload": BASE64.encode(payload),
        "request_id": committed.request_id,
        "height": committed.height.0,
        "batch_digest": committed.batch_digest.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bftd_crypto::{Digest, KeyPair, Signature};
    use bftd_protocol::{
        Batch, Block, CommitCertificate, CommittedBlock, NodeId, Request, SeqNum, SignedRequest,
        View, Vote,
    };
    use std::sync::Arc;

    fn sample() -> VerifiedBlock {
        let client = KeyPair::from_seed([7; 32]);
        let requests = (1..=2u64)
            .map(|id| {
                let request = Request {
                    client: client.public(),
                    request_id: id,
                    valid_until: SeqNum(90),
                    payload: vec![0, 0xff, id as u8],
                };
                SignedRequest::sign(request, &client).unwrap()
            })
            .collect();
        let batch = Batch { requests };
        let block = Block {
            height: SeqNum(5),
            prev_hash: Digest([1; 32]),
            batch_digest: Digest([2; 32]),
            batch: Arc::new(batch),
        };
        let hash = block.hash();
        let certificate = CommitCertificate {
            value: bftd_protocol::message::Commit {
                view: View(3),
                seq: SeqNum(5),
                digest: Digest([2; 32]),
            },
            votes: vec![Vote {
                signer: NodeId(1),
                signature: Signature([9; 64]),
            }],
        };
        VerifiedBlock {
            block: Arc::new(CommittedBlock { block, certificate }),
            duplicates: vec![1],
            hash,
        }
    }

    /// Every field is there, payloads decode back to their bytes, and a
    /// duplicate position is marked as not executing.
    #[test]
    fn a_block_has_every_field() {
        let verified = sample();
        let value = block(&verified);
        assert_eq!(value["height"], 5);
        assert_eq!(value["hash"], verified.hash.to_string());
        assert_eq!(value["prev_hash"], "01".repeat(32));
        assert_eq!(value["batch_digest"], "02".repeat(32));
        assert_eq!(value["duplicates"], json!([1]));
        assert_eq!(value["certificate"]["view"], 3);
        assert_eq!(value["certificate"]["votes"][0]["signer"], 1);
        assert_eq!(
            value["certificate"]["votes"][0]["signature"],
            "09".repeat(64)
        );
        let requests = value["requests"].as_array().unwrap();
        assert_eq!(requests.len(), 2);
        for (index, request) in requests.iter().enumerate() {
            let payload = BASE64.decode(request["payload"].as_str().unwrap()).unwrap();
            assert_eq!(payload, vec![0, 0xff, index as u8 + 1]);
            assert_eq!(request["request_id"], index as u64 + 1);
            assert_eq!(request["valid_until"], 90);
            assert_eq!(request["signature"].as_str().unwrap().len(), 128);
        }
        assert_eq!(requests[0]["executes"], true);
        assert_eq!(requests[1]["executes"], false);
        // One line: a consumer reads the stream line by line.
        assert!(!value.to_string().contains('\n'));
    }

    #[test]
    fn a_receipt_has_every_field() {
        let committed = Committed {
            request_id: 11,
            height: SeqNum(4),
            batch_digest: Digest([3; 32]),
        };
        let value = receipt(b"\x00hi", &committed);
        assert_eq!(value["payload"], "AGhp");
        assert_eq!(value["request_id"], 11);
        assert_eq!(value["height"], 4);
        assert_eq!(value["batch_digest"], "03".repeat(32));
    }
}

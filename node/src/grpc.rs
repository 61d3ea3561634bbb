//! The gRPC API's messages (proto/bftd.proto, package `bftd.v1`), generated
//! at build time, and their conversions to and from the client protocol's
//! types. The server is `runtime/grpc.rs`; a Rust program may also use the
//! generated client ([`v1::ordering_client::OrderingClient`]) and verify
//! what it gets with [`crate::client_api::Receipt::verify`] after
//! [`receipt_from_proto`].
//!
//! What a client signs and verifies travels as the client protocol's bytes
//! (docs/client-protocol.md section 9): a request as the encoding of its
//! `SignedRequest`, a block's requests likewise.

/// The generated messages, server and client.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("bftd.v1");
}

use crate::client_api::{NodeStatus, Receipt, Rejection};
use bftd_crypto::{Digest, Signature};
use bftd_protocol::merkle::MerkleProof;
use bftd_protocol::message::Commit;
use bftd_protocol::{codec, CommitCertificate, CommittedBlock, NodeId, SeqNum, View};

/// Why a message from the other side does not convert (a field of the wrong
/// length, an id out of range).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {field}: {reason}")]
pub struct ProtoError {
    /// The field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn digest(field: &'static str, bytes: &[u8]) -> Result<Digest, ProtoError> {
    <[u8; 32]>::try_from(bytes)
        .map(Digest)
        .map_err(|_| ProtoError {
            field,
            reason: "not 32 bytes",
        })
}

/// The wire form of a commit certificate.
pub fn certificate_to_proto(certificate: &CommitCertificate) -> v1::CommitCertificate {
    v1::CommitCertificate {
        view: certificate.value.view.0,
        seq: certificate.value.seq.0,
        digest: certificate.value.digest.0.to_vec(),
        votes: certificate
            .votes
            .iter()
            .map(|vote| v1::Vote {
                signer: u32::from(vote.signer.0),
                signature: vote.signature.0.to_vec(),
            })
            .collect(),
    }
}

/// A commit certificate from its wire form (not verified: see
/// [`Receipt::verify`]).
pub fn certificate_from_proto(
    certificate: v1::CommitCertificate,
) -> Result<CommitCertificate, ProtoError> {
    let votes = certificate
        .votes
        .into_iter()
        .map(|vote| {
            let signer = u16::try_from(vote.signer).map_err(|_| ProtoError {
                field: "vote.signer",
                reason: "not a node id",
            })?;
            let signature = <[u8; 64]>::try_from(vote.signature.as_slice())
                .map(Signature)
                .map_err(|_| ProtoError {
                    field: "vote.signature",
                    reason: "not 64 bytes",
                })?;
            Ok(bftd_protocol::Vote {
                signer: NodeId(signer),
                signature,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CommitCertificate {
        value: Commit {
            view: View(certificate.view),
            seq: SeqNum(certificate.seq),
            digest: digest("certificate.digest", &certificate.digest)?,
        },
        votes,
    })
}

/// The wire form of a receipt.
pub fn receipt_to_proto(receipt: &Receipt) -> v1::Receipt {
    v1::Receipt {
        request_id: receipt.request_id,
        height: receipt.height.0,
        prev_hash: receipt.prev_hash.0.to_vec(),
        batch_digest: receipt.batch_digest.0.to_vec(),
        proof: Some(v1::MerkleProof {
            index: receipt.proof.index,
            count: receipt.proof.count,
            siblings: receipt
                .proof
                .siblings
                .iter()
                .map(|s| s.0.to_vec())
                .collect(),
        }),
        certificate: Some(certificate_to_proto(&receipt.certificate)),
    }
}

/// A receipt from its wire form (not verified: call [`Receipt::verify`]).
pub fn receipt_from_proto(receipt: v1::Receipt) -> Result<Receipt, ProtoError> {
    let missing = |field| ProtoError {
        field,
        reason: "missing",
    };
    let proof = receipt.proof.ok_or(missing("proof"))?;
    let certificate = receipt.certificate.ok_or(missing("certificate"))?;
    Ok(Receipt {
        request_id: receipt.request_id,
        height: SeqNum(receipt.height),
        prev_hash: digest("prev_hash", &receipt.prev_hash)?,
        batch_digest: digest("batch_digest", &receipt.batch_digest)?,
        proof: MerkleProof {
            index: proof.index,
            count: proof.count,
            siblings: proof
                .siblings
                .iter()
                .map(|s| digest("proof.siblings", s))
                .collect::<Result<_, _>>()?,
        },
        certificate: certificate_from_proto(certificate)?,
    })
}

/// The wire form of a committed block and its duplicate positions.
pub fn block_to_proto(block: &CommittedBlock, duplicates: &[u32]) -> v1::Block {
    v1::Block {
        height: block.block.height.0,
        prev_hash: block.block.prev_hash.0.to_vec(),
        batch_digest: block.block.batch_digest.0.to_vec(),
        // A request in a stored block encoded before, so encodes again.
        requests: block
            .block
            .batch
            .requests
            .iter()
            .filter_map(|request| codec::encode(request).ok())
            .collect(),
        duplicates: duplicates.to_vec(),
        certificate: Some(certificate_to_proto(&block.certificate)),
    }
}

/// The wire code of a rejection.
pub fn reject_code(reason: Rejection) -> v1::RejectCode {
    match reason {
        Rejection::Busy => v1::RejectCode::Busy,
        Rejection::Expired => v1::RejectCode::Expired,
        Rejection::TooLarge => v1::RejectCode::TooLarge,
        Rejection::BadSignature => v1::RejectCode::BadSignature,
        Rejection::WrongClient => v1::RejectCode::WrongClient,
        Rejection::TooFarAhead => v1::RejectCode::TooFarAhead,
    }
}

/// The wire form of a node's status.
pub fn status_to_proto(status: &NodeStatus) -> v1::NodeStatus {
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    v1::NodeStatus {
        id: u32::from(status.id),
        n: count(status.n),
        f: count(status.f),
        view: status.view,
        in_view_change: status.in_view_change,
        primary: u32::from(status.primary),
        height: status.height,
        head_hash: status.head_hash.clone(),
        stable_checkpoint: status.stable_checkpoint,
        pending_requests: count(status.pending_requests),
        request_mode: match status.request_mode {
            bftd_protocol::RequestMode::ClientSigned => "client-signed",
            bftd_protocol::RequestMode::ConnectionAuthenticated => "connection-authenticated",
        }
        .to_owned(),
        byzantine: status.byzantine.clone().unwrap_or_default(),
        peers_in_touch: count(status.peers_in_touch),
        quorum: count(status.quorum),
        request_lifetime: status.request_lifetime,
    }
}

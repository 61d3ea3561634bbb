//! The client protocol: what clients and nodes say to each other over the
//! client ALPN, and the receipts that let a client trust a result without
//! trusting the node that gave it.
//!
//! A [`Receipt`] carries the block's header fields, a Merkle proof that the
//! request is in the block's batch, and the block's commit certificate (2f+1
//! signatures). [`Receipt::verify`] checks all three against the committee's
//! public keys: a lying node cannot produce a receipt that verifies.

use bftd_crypto::Digest;
use bftd_protocol::merkle::{MerkleProof, MerkleTree};
use bftd_protocol::snapshot::SnapshotAttestation;
use bftd_protocol::{
    CertificateError, CommitCertificate, CommittedBlock, Committee, RequestMode, SeqNum,
    SignedRequest,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Client to node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// Order this request.
    Submit(SignedRequest),
    /// Stream committed blocks from this height on (each with its
    /// certificate), then every new block as it commits.
    Subscribe {
        /// First height wanted (1 for everything).
        from: SeqNum,
    },
    /// Report the node's status.
    Status,
    /// List the application snapshots the node took and signs for
    /// (design notes §48); answered with [`NodeMessage::Snapshots`].
    Snapshots,
    /// One chunk of a snapshot the node holds; answered with
    /// [`NodeMessage::SnapshotChunk`].
    SnapshotChunk {
        /// The snapshot's height.
        height: SeqNum,
        /// The chunk's index in its manifest.
        index: u32,
    },
}

/// Bytes a client frame may hold beyond the request's payload: the
/// message tag, the request's other fields and the client's signature
/// (under 200 bytes; the rest is headroom).
pub const CLIENT_FRAME_OVERHEAD: usize = 1024;

/// The largest frame a node accepts from a client of a cluster whose
/// requests carry at most `max_request_bytes` of payload: every client
/// message is one request, a subscription or a status query.
pub fn max_client_frame_bytes(max_request_bytes: usize) -> usize {
    max_request_bytes.saturating_add(CLIENT_FRAME_OVERHEAD)
}

/// Why a node refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// Too many requests pending: retry later.
    Busy,
    /// The request's `valid_until` is below the cluster's next height: it
    /// can never execute (had it executed, the answer would be its receipt).
    Expired,
    /// The payload exceeds the cluster's `max_request_bytes`.
    TooLarge,
    /// The client signature does not verify (client-signed clusters).
    BadSignature,
    /// The request names another client than the one connected.
    WrongClient,
    /// The request's `valid_until` is more than the cluster's request
    /// lifetime above its next height.
    TooFarAhead,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rejection::Busy => "busy: too many pending requests, retry later",
            Rejection::Expired => "expired: its valid_until is below the cluster's height; it never executed and never will; submit it again as a new request",
            Rejection::TooFarAhead => "valid_until too far ahead: at most the cluster's height plus its request lifetime",
            Rejection::TooLarge => "payload larger than the cluster's max_request_bytes",
            Rejection::BadSignature => "client signature does not verify (connection-authenticated clusters: the client's grant to this node does not)",
            Rejection::WrongClient => "request signed for another client than this connection's",
        })
    }
}

/// A node's position, for `bftd status`, `/status` and scripts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id.
    pub id: u16,
    /// Committee size.
    pub n: usize,
    /// Faults tolerated.
    pub f: usize,
    /// Current view (the one being moved to while changing views).
    pub view: u64,
    /// Whether a view change is in progress.
    pub in_view_change: bool,
    /// Primary of `view`.
    pub primary: u16,
    /// Highest executed (committed) height.
    pub height: u64,
    /// Hash of the block at `height`, hex.
    pub head_hash: String,
    /// Stable checkpoint.
    pub stable_checkpoint: u64,
    /// Requests held, not yet executed.
    pub pending_requests: usize,
    /// How requests are authenticated.
    pub request_mode: RequestMode,
    /// Byzantine behaviour, if this is a testnet liar.
    pub byzantine: Option<String>,
    /// Other nodes heard from in the last few status intervals.
    pub peers_in_touch: usize,
    /// Nodes a quorum needs (2f+1, this one included).
    pub quorum: usize,
    /// Heights a request may be valid for above the height it executes at
    /// (clients set `valid_until` within it).
    pub request_lifetime: u64,
    /// The oldest block height the node still stores (1 unless
    /// `[storage] retain_blocks` pruned older ones): subscribe from here
    /// or later.
    pub first_height: u64,
    /// The node cannot catch up by blocks: a peer refused its fetch having
    /// pruned the blocks it needs (see the `bftd_needs_snapshot` metric).
    pub needs_snapshot: bool,
}

impl NodeStatus {
    /// Whether the node hears from enough peers to form a quorum with them:
    /// without one nothing commits, whatever the node is sent.
    /// The counts come from a node, which may lie: no arithmetic on them
    /// may overflow.
    pub fn has_quorum(&self) -> bool {
        self.peers_in_touch.saturating_add(1) >= self.quorum
    }

    /// "hears from 1 of 3 peers, a quorum needs 2", for people.
    pub fn describe_peers(&self) -> String {
        format!(
            "hears from {} of {} peers, a quorum needs {}",
            self.peers_in_touch,
            self.n.saturating_sub(1),
            self.quorum.saturating_sub(1)
        )
    }
}

/// Proof that a request committed at a height.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The request id.
    pub request_id: u64,
    /// The block height.
    pub height: SeqNum,
    /// The block's `prev_hash`.
    pub prev_hash: Digest,
    /// The block's batch digest.
    pub batch_digest: Digest,
    /// The request's place in the batch.
    pub proof: MerkleProof,
    /// The block's commit certificate.
    pub certificate: CommitCertificate,
}

/// Why a receipt does not prove what it claims.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// The receipt is for another request id.
    #[error("receipt for request {got}, expected {expected}")]
    WrongRequest {
        /// The id submitted.
        expected: u64,
        /// The id in the receipt.
        got: u64,
    },
    /// The Merkle proof does not lead from the request to the batch digest.
    #[error("the request is not in the block the receipt names (height {height})")]
    NotInBlock {
        /// The height claimed.
        height: SeqNum,
    },
    /// The certificate does not certify this block.
    #[error("the commit certificate does not verify: {0}")]
    Certificate(#[from] CertificateError),
    /// The request was not valid at the height the receipt names (expired,
    /// or valid too far ahead), so it was skipped there, not executed.
    #[error("the request is valid through height {valid_until}, which does not allow it to execute at height {height} (lifetime {lifetime})")]
    NotValidThere {
        /// The height claimed.
        height: SeqNum,
        /// The request's `valid_until`.
        valid_until: SeqNum,
        /// The cluster's request lifetime.
        lifetime: u64,
    },
}

/// A verified result, everything in it certified by 2f+1 replicas: the
/// request is in the batch with digest `batch_digest` committed at `height`,
/// at a height where it was valid, so it executed there (or, if it had been
/// ordered before and a node answers with this later copy, at an earlier
/// height: either way exactly once, and no later than `height`).
///
/// The block's hash is not in a receipt: it covers the previous block's
/// hash, which no certificate of this block covers. Follow the chain
/// ([`crate::client::Client::subscribe`]) for verified block hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The request id.
    pub request_id: u64,
    /// The block height.
    pub height: SeqNum,
    /// The block's batch digest (the Merkle root its certificate signs).
    pub batch_digest: Digest,
}

impl Receipt {
    /// Builds the receipt for the request at `index` of `block`.
    pub fn new(
        block: &CommittedBlock,
        tree: &MerkleTree,
        index: usize,
        request_id: u64,
    ) -> Receipt {
        Receipt {
            request_id,
            height: block.block.height,
            prev_hash: block.block.prev_hash,
            batch_digest: block.block.batch_digest,
            proof: tree.proof(index).unwrap_or(MerkleProof {
                index: 0,
                count: 0,
                siblings: Vec::new(),
            }),
            certificate: block.certificate.clone(),
        }
    }

    /// Checks the receipt for `request` against the committee and the
    /// cluster's request lifetime: validity, the proof and every
    /// certificate signature.
    pub fn verify(
        &self,
        committee: &Committee,
        lifetime: u64,
        request: &SignedRequest,
    ) -> Result<Committed, ReceiptError> {
        let committed = self.verify_inclusion(request, lifetime)?;
        self.verify_certificate(committee)?;
        Ok(committed)
    }

    /// The cheap half of [`Receipt::verify`]: the receipt is for `request`,
    /// at a height where the request was valid under the cluster's
    /// `lifetime` (else it was skipped there), and its Merkle proof leads to
    /// the batch digest. Alone this proves nothing until
    /// [`Receipt::verify_certificate`] (or a certificate already verified
    /// for the same height and batch digest) shows that batch committed;
    /// clients verify each block's certificate once for all the receipts of
    /// that block.
    pub fn verify_inclusion(
        &self,
        request: &SignedRequest,
        lifetime: u64,
    ) -> Result<Committed, ReceiptError> {
        let expected = request.request.request_id;
        if self.request_id != expected {
            return Err(ReceiptError::WrongRequest {
                expected,
                got: self.request_id,
            });
        }
        let valid_until = request.request.valid_until;
        if valid_until < self.height || valid_until.0 - self.height.0 > lifetime {
            return Err(ReceiptError::NotValidThere {
                height: self.height,
                valid_until,
                lifetime,
            });
        }
        if self.proof.root_for(request) != Some(self.batch_digest) {
            return Err(ReceiptError::NotInBlock {
                height: self.height,
            });
        }
        Ok(Committed {
            request_id: expected,
            height: self.height,
            batch_digest: self.batch_digest,
        })
    }

    /// The expensive half of [`Receipt::verify`]: 2f+1 committee members
    /// signed commits for this height and batch digest.
    pub fn verify_certificate(&self, committee: &Committee) -> Result<(), ReceiptError> {
        Ok(self
            .certificate
            .verify_for(committee, self.height, self.batch_digest)?)
    }
}

/// The (height, batch digest) pairs whose commit certificates a client has
/// verified, most recent last; bounded, oldest forgotten first.
#[derive(Clone, Debug, Default)]
pub struct VerifiedCertificates {
    recent: std::collections::VecDeque<(SeqNum, Digest)>,
}

impl VerifiedCertificates {
    /// Blocks remembered: receipts arrive for a handful of recent blocks at
    /// a time, so a short list is enough (and a linear scan is fastest).
    const CAPACITY: usize = 32;

    /// Whether a certificate for `certified` was verified.
    pub fn contains(&self, certified: (SeqNum, Digest)) -> bool {
        self.recent.iter().rev().any(|&known| known == certified)
    }

    /// Remembers a verified certificate.
    pub fn insert(&mut self, certified: (SeqNum, Digest)) {
        if self.contains(certified) {
            return;
        }
        if self.recent.len() >= Self::CAPACITY {
            self.recent.pop_front();
        }
        self.recent.push_back(certified);
    }
}

/// Node to client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeMessage {
    /// A request committed.
    Receipt(Receipt),
    /// A request was refused.
    Rejected {
        /// The request id.
        request_id: u64,
        /// Why.
        reason: Rejection,
    },
    /// A committed block (for subscribers).
    Block {
        /// The block and its certificate.
        block: Arc<CommittedBlock>,
        /// Positions of duplicate requests the application must skip.
        duplicates: Vec<u32>,
    },
    /// The node's status.
    Status(NodeStatus),
    /// The client sent something the node could not decode.
    Malformed,
    /// The node ended this connection's subscription: no more blocks come
    /// on it. The connection stays open; subscribe again to resume.
    SubscriptionEnded {
        /// Why, for people (a subscriber that stopped reading, say).
        reason: String,
    },
    /// The application snapshots the node holds, each signed by it (none
    /// when it embeds no application that takes them).
    Snapshots(Vec<SnapshotAttestation>),
    /// A chunk of a snapshot, or `None` when the node does not hold that
    /// snapshot (any more) or has no such chunk.
    SnapshotChunk {
        /// The snapshot's height.
        height: SeqNum,
        /// The chunk's index.
        index: u32,
        /// The chunk.
        bytes: Option<Vec<u8>>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status comes from a node the client does not trust: a lying node's
    /// counts must not panic the client (found by `fuzz/node_message`:
    /// `peers_in_touch = usize::MAX` overflowed `peers_in_touch + 1`).
    #[test]
    fn status_from_a_lying_node_does_not_overflow() {
        let status = NodeStatus {
            id: 0,
            n: usize::MAX,
            f: usize::MAX,
            view: u64::MAX,
            in_view_change: true,
            primary: u16::MAX,
            height: u64::MAX,
            head_hash: String::new(),
            stable_checkpoint: u64::MAX,
            pending_requests: usize::MAX,
            request_mode: RequestMode::ClientSigned,
            byzantine: None,
            peers_in_touch: usize::MAX,
            quorum: 0,
            request_lifetime: u64::MAX,
            first_height: u64::MAX,
            needs_snapshot: true,
        };
        assert!(status.has_quorum());
        assert!(!status.describe_peers().is_empty());
        let status = NodeStatus {
            peers_in_touch: 0,
            quorum: usize::MAX,
            ..status
        };
        assert!(!status.has_quorum());
    }

    /// The largest request a cluster allows, signed, fits in a client
    /// frame; one byte more of payload does not need to.
    #[test]
    fn the_largest_request_fits_the_client_frame_limit() {
        use bftd_protocol::Request;
        let key = bftd_crypto::KeyPair::from_seed([4; 32]);
        for max_request_bytes in [1, 64 * 1024, 16 << 20] {
            let request = Request {
                client: key.public(),
                request_id: u64::MAX,
                valid_until: SeqNum(u64::MAX),
                payload: vec![0xff; max_request_bytes],
            };
            let message = ClientMessage::Submit(SignedRequest::sign(request, &key).unwrap());
            let length = bftd_protocol::codec::encoded_len(&message).unwrap() as usize;
            assert!(length <= max_client_frame_bytes(max_request_bytes));
            assert!(length > max_request_bytes);
        }
    }

    /// The cache remembers exactly what was inserted, up to its capacity,
    /// forgetting the oldest first; a height with another digest is not a hit.
    #[test]
    fn verified_certificates_are_bounded_and_exact() {
        let mut cache = VerifiedCertificates::default();
        let entry = |h: u64| (SeqNum(h), Digest([h as u8; 32]));
        for h in 0..(VerifiedCertificates::CAPACITY as u64 + 5) {
            cache.insert(entry(h));
            cache.insert(entry(h));
        }
        assert_eq!(cache.recent.len(), VerifiedCertificates::CAPACITY);
        assert!(!cache.contains(entry(4)), "oldest forgotten");
        assert!(cache.contains(entry(5)));
        assert!(cache.contains(entry(VerifiedCertificates::CAPACITY as u64 + 4)));
        assert!(
            !cache.contains((SeqNum(10), Digest([11; 32]))),
            "same height, other batch"
        );
    }

    /// A receipt proves execution only at a height where its request was
    /// valid: one for a position where the request had expired (or was
    /// valid too far ahead), and so was skipped, is refused, even with a
    /// correct Merkle proof.
    #[test]
    fn receipts_for_positions_where_the_request_was_not_valid_are_refused() {
        use bftd_protocol::certificate::QuorumCertificate;
        use bftd_protocol::message::Commit;
        use bftd_protocol::{Batch, Block, Request, View};
        let key = bftd_crypto::KeyPair::from_seed([3; 32]);
        let request = SignedRequest::sign(
            Request {
                client: key.public(),
                request_id: 9,
                valid_until: SeqNum(10),
                payload: b"pay".to_vec(),
            },
            &key,
        )
        .unwrap();
        let batch = Batch {
            requests: vec![request.clone()],
        };
        let tree = MerkleTree::new(&batch);
        let receipt_at = |height: u64| {
            let block = CommittedBlock {
                block: Block {
                    height: SeqNum(height),
                    prev_hash: Digest::ZERO,
                    batch_digest: tree.root(),
                    batch: std::sync::Arc::new(batch.clone()),
                },
                certificate: QuorumCertificate {
                    value: Commit {
                        view: View(0),
                        seq: SeqNum(height),
                        digest: tree.root(),
                    },
                    votes: Vec::new(),
                },
            };
            Receipt::new(&block, &tree, 0, 9)
        };
        assert!(receipt_at(10).verify_inclusion(&request, 5).is_ok());
        assert!(receipt_at(5).verify_inclusion(&request, 5).is_ok());
        for (height, why) in [(11, "expired"), (4, "too far ahead")] {
            assert!(
                matches!(
                    receipt_at(height).verify_inclusion(&request, 5),
                    Err(ReceiptError::NotValidThere { .. })
                ),
                "{why}"
            );
        }
    }
}

//! Blocks: what the ordering service delivers. One block per sequence number,
//! chained by hash.

use crate::certificate::{CertificateError, CommitCertificate};
use crate::committee::Committee;
use crate::ids::SeqNum;
use crate::merkle::MerkleTree;
use crate::message::Batch;
use bftd_crypto::{Digest, DigestBuilder, Domain};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

const BLOCK: Domain = Domain::new("bftd/v1/block");

/// A block: the batch ordered at `height`, chained to its predecessor.
///
/// The header hash covers `height`, `prev_hash` and `batch_digest` but not the
/// view: replicas may commit the same batch at the same height in different
/// views (one from the normal case, another after a view change), and they
/// must still agree on every block hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// Height, equal to the sequence number the batch was ordered at.
    pub height: SeqNum,
    /// Hash of the block at `height - 1` ([`Digest::ZERO`] for height 1).
    pub prev_hash: Digest,
    /// The batch's Merkle root, as certified.
    pub batch_digest: Digest,
    /// The batch.
    pub batch: Arc<Batch>,
}

impl Block {
    /// The block hash.
    pub fn hash(&self) -> Digest {
        Block::header_hash(self.height, self.prev_hash, self.batch_digest)
    }

    /// The hash of a block with these header fields.
    pub fn header_hash(height: SeqNum, prev_hash: Digest, batch_digest: Digest) -> Digest {
        let mut builder = DigestBuilder::new(BLOCK);
        builder
            .update(&height.0.to_le_bytes())
            .update(&prev_hash.0)
            .update(&batch_digest.0);
        builder.finish()
    }
}

/// Why a block was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The batch does not hash to `batch_digest`.
    #[error("block {height}: batch does not match its digest")]
    BatchMismatch {
        /// The block's height.
        height: SeqNum,
    },
    /// `prev_hash` is not the hash of the block before.
    #[error("block {height}: prev_hash {got:#} does not chain to {expected:#}")]
    BrokenChain {
        /// The block's height.
        height: SeqNum,
        /// The previous block's hash.
        expected: Digest,
        /// What the block claims.
        got: Digest,
    },
    /// Not the next height.
    #[error("expected block {expected}, got {got}")]
    WrongHeight {
        /// The height wanted.
        expected: SeqNum,
        /// The height received.
        got: SeqNum,
    },
    /// The commit certificate is invalid.
    #[error("block {height}: {source}")]
    Certificate {
        /// The block's height.
        height: SeqNum,
        /// What is wrong with it.
        source: CertificateError,
    },
}

/// A block and the 2f+1 commits that decided it: everything an integrator
/// needs to trust it with only the committee's public keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedBlock {
    /// The block.
    pub block: Block,
    /// 2f+1 commits on `(view, height, batch_digest)`.
    pub certificate: CommitCertificate,
}

impl CommittedBlock {
    /// The block's height.
    pub fn height(&self) -> SeqNum {
        self.block.height
    }

    /// The block hash.
    pub fn hash(&self) -> Digest {
        self.block.hash()
    }

    /// Checks everything but signatures: the batch matches its digest, the
    /// certificate is a quorum for this height and digest, and the block
    /// chains to `prev_hash`.
    pub fn check(&self, committee: &Committee, prev_hash: Digest) -> Result<(), BlockError> {
        let height = self.block.height;
        if self.block.prev_hash != prev_hash {
            return Err(BlockError::BrokenChain {
                height,
                expected: prev_hash,
                got: self.block.prev_hash,
            });
        }
        let value = &self.certificate.value;
        if value.seq != height || value.digest != self.block.batch_digest {
            return Err(BlockError::Certificate {
                height,
                source: CertificateError::WrongValue {
                    expected_seq: height,
                    expected_digest: self.block.batch_digest,
                    got_seq: value.seq,
                    got_digest: value.digest,
                },
            });
        }
        self.certificate
            .check(committee)
            .map_err(|source| BlockError::Certificate { height, source })?;
        if MerkleTree::new(&self.block.batch).root() != self.block.batch_digest {
            return Err(BlockError::BatchMismatch { height });
        }
        Ok(())
    }

    /// [`Self::check`] plus every signature of the certificate: what an
    /// integrator runs on each block it receives.
    pub fn verify(&self, committee: &Committee, prev_hash: Digest) -> Result<(), BlockError> {
        self.check(committee, prev_hash)?;
        let height = self.block.height;
        self.certificate
            .verify_for(committee, height, self.block.batch_digest)
            .map_err(|source| BlockError::Certificate { height, source })
    }
}

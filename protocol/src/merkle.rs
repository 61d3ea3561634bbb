//! The batch digest is the root of a Merkle tree over the batch's requests.
//!
//! A whole-batch hash would serve consensus equally well; a tree also lets a
//! node hand a client a short proof that its request is in a committed block,
//! which the client checks against the block's commit certificate without
//! trusting the node (see `Receipt` in the daemon's client API).
//!
//! Leaves are domain-separated from inner nodes, an odd node is promoted
//! unchanged (never duplicated, which would let two batches share a root), and
//! the root binds the leaf count.

use crate::codec;
use crate::message::{Batch, SignedRequest};
use bftd_crypto::{Digest, DigestBuilder, Domain};
use serde::{Deserialize, Serialize};

const LEAF: Domain = Domain::new("bftd/v1/merkle-leaf");
const NODE: Domain = Domain::new("bftd/v1/merkle-node");
const ROOT: Domain = Domain::new("bftd/v1/batch");

/// Hash of one request: the leaf of the batch tree.
pub fn leaf(request: &SignedRequest, scratch: &mut Vec<u8>) -> Digest {
    // Encoding a request cannot fail: requests are bounded far below the
    // codec limit when they are decoded or built. Fall back to hashing nothing
    // extra rather than panicking if that invariant were ever broken.
    if codec::encode_into(request, scratch).is_err() {
        scratch.clear();
    }
    Digest::of(LEAF, scratch)
}

fn node(left: &Digest, right: &Digest) -> Digest {
    let mut builder = DigestBuilder::new(NODE);
    builder.update(&left.0).update(&right.0);
    builder.finish()
}

fn root(count: usize, top: Option<&Digest>) -> Digest {
    let mut builder = DigestBuilder::new(ROOT);
    builder.update(&(count as u64).to_le_bytes());
    if let Some(top) = top {
        builder.update(&top.0);
    }
    builder.finish()
}

/// The levels of a batch's tree, leaves first. Kept by the replica for a
/// batch until it is executed, so proofs cost no rehashing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerkleTree {
    levels: Vec<Vec<Digest>>,
}

impl MerkleTree {
    /// Builds the tree over `batch`'s requests.
    pub fn new(batch: &Batch) -> MerkleTree {
        let mut scratch = Vec::new();
        let leaves: Vec<Digest> = batch
            .requests
            .iter()
            .map(|request| leaf(request, &mut scratch))
            .collect();
        let mut levels = vec![leaves];
        while let Some(last) = levels.last() {
            if last.len() <= 1 {
                break;
            }
            let next: Vec<Digest> = last
                .chunks(2)
                .map(|pair| match pair {
                    [left, right] => node(left, right),
                    [single] => *single,
                    _ => Digest::ZERO, // chunks(2) yields 1 or 2 items
                })
                .collect();
            levels.push(next);
        }
        MerkleTree { levels }
    }

    /// The batch digest: binds the number of requests and the tree's top.
    pub fn root(&self) -> Digest {
        let count = self.levels.first().map_or(0, Vec::len);
        root(count, self.levels.last().and_then(|level| level.first()))
    }

    /// A proof that the request at `index` is in the batch.
    pub fn proof(&self, index: usize) -> Option<MerkleProof> {
        let count = self.levels.first().map_or(0, Vec::len);
        if index >= count {
            return None;
        }
        let mut siblings = Vec::new();
        let mut position = index;
        for level in &self.levels {
            if level.len() <= 1 {
                break;
            }
            let sibling = position ^ 1;
            if let Some(digest) = level.get(sibling) {
                siblings.push(*digest);
            }
            position /= 2;
        }
        Some(MerkleProof {
            index: index as u64,
            count: count as u64,
            siblings,
        })
    }
}

/// Proof that a request is the `index`-th of `count` in a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleProof {
    /// The request's position in the batch.
    pub index: u64,
    /// How many requests the batch holds.
    pub count: u64,
    /// Sibling digests from the leaf level upward (levels where the node had
    /// no sibling contribute nothing).
    pub siblings: Vec<Digest>,
}

impl MerkleProof {
    /// The batch digest this proof leads to from `request`, or `None` if the
    /// proof is malformed (index out of range, wrong number of siblings).
    pub fn root_for(&self, request: &SignedRequest) -> Option<Digest> {
        if self.index >= self.count {
            return None;
        }
        let mut hash = leaf(request, &mut Vec::new());
        let mut position = self.index;
        let mut width = self.count;
        let mut siblings = self.siblings.iter();
        while width > 1 {
            let sibling = position ^ 1;
            if sibling < width {
                let other = siblings.next()?;
                hash = if position.is_multiple_of(2) {
                    node(&hash, other)
                } else {
                    node(other, &hash)
                };
            }
            position /= 2;
            width = width.div_ceil(2);
        }
        if siblings.next().is_some() {
            return None;
        }
        Some(root(self.count as usize, Some(&hash)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Request;
    use bftd_crypto::PublicKey;
    use proptest::prelude::*;

    fn batch(count: usize) -> Batch {
        Batch {
            requests: (0..count)
                .map(|i| SignedRequest {
                    request: Request {
                        client: PublicKey([1; 32]),
                        request_id: i as u64,
                        valid_until: crate::SeqNum(100),
                        payload: vec![i as u8; 3],
                    },
                    signature: None,
                })
                .collect(),
        }
    }

    proptest! {
        /// Every request's proof leads to the batch digest, and only its own
        /// request does.
        #[test]
        fn proofs_verify_for_every_member(count in 1usize..70) {
            let batch = batch(count);
            let tree = MerkleTree::new(&batch);
            for (index, request) in batch.requests.iter().enumerate() {
                let proof = tree.proof(index).unwrap();
                prop_assert_eq!(proof.root_for(request), Some(tree.root()));
                let other = &batch.requests[(index + 1) % count];
                if count > 1 {
                    prop_assert_ne!(proof.root_for(other), Some(tree.root()));
                }
            }
            prop_assert!(tree.proof(count).is_none());
        }
    }

    /// Batches that differ only by length or order have different digests;
    /// the empty batch has a digest of its own.
    #[test]
    fn digest_binds_count_and_order() {
        let three = MerkleTree::new(&batch(3)).root();
        let mut reordered = batch(3);
        reordered.requests.swap(0, 2);
        assert_ne!(three, MerkleTree::new(&reordered).root());
        assert_ne!(three, MerkleTree::new(&batch(4)).root());
        assert_ne!(
            MerkleTree::new(&batch(0)).root(),
            MerkleTree::new(&batch(1)).root()
        );
    }

    /// A proof with extra or missing siblings is refused.
    #[test]
    fn malformed_proofs_are_refused() {
        let batch = batch(5);
        let tree = MerkleTree::new(&batch);
        let mut proof = tree.proof(2).unwrap();
        proof.siblings.push(Digest::ZERO);
        assert_eq!(proof.root_for(&batch.requests[2]), None);
        let mut proof = tree.proof(2).unwrap();
        proof.siblings.pop();
        assert_eq!(proof.root_for(&batch.requests[2]), None);
        let mut proof = tree.proof(2).unwrap();
        proof.index = 9;
        assert_eq!(proof.root_for(&batch.requests[2]), None);
    }
}

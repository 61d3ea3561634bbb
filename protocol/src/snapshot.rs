//! Application snapshots, and how a node trusts one it did not compute
//! (design notes §48).
//!
//! A node whose embedded application cannot be fed the blocks it needs
//! (its peers, or its own store, pruned them) restores the application's
//! state at some height `t` instead, then is fed `t + 1` on. The state
//! comes from peers, so it is checked before it is restored:
//!
//! - every honest node's application takes a snapshot after the same
//!   heights (multiples of `snapshot_every`) and the bytes are a function
//!   of the blocks alone (the application promises it), so honest nodes
//!   describe a height's snapshot by the same [`SnapshotManifest`]: the
//!   height, the hash of the block at that height, the size and the
//!   SHA-256 of each 1 MiB chunk;
//! - each node signs the manifests of the snapshots it took itself
//!   ([`SnapshotAttestation`]); a manifest signed by f+1 distinct members
//!   of the committee was signed by at least one honest node, so it is the
//!   state every honest application reached at that height
//!   ([`certified`]);
//! - each chunk, from whichever peer serves it, must hash to the
//!   manifest's entry ([`SnapshotManifest::check_chunk`]): a liar can waste
//!   a fetch, never change what is restored.
//!
//! Why f+1 attestations and not a digest in the checkpoint certificate (as
//! in the paper): the application runs behind consensus at its own pace,
//! and binding its state into checkpoint votes would make every checkpoint
//! wait for it; nor would the wire or store format of checkpoints change.

use crate::committee::Committee;
use crate::ids::{NodeId, SeqNum};
use bftd_crypto::{Digest, Domain, KeyPair, Signature};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bytes in each chunk of a snapshot but the last.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Chunks in the largest snapshot a node takes or fetches (16 GiB): bounds
/// a manifest from a peer to half a mebibyte.
pub const MAX_SNAPSHOT_CHUNKS: usize = 16 * 1024;

const ATTESTATION: Domain = Domain::new("bftd/v1/snapshot");
const CHUNK: Domain = Domain::new("bftd/v1/snapshot-chunk");

/// What a snapshot is: enough to check every chunk of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotManifest {
    /// The application's state after executing the block at this height.
    pub height: SeqNum,
    /// The hash of that block: which history the state is of.
    pub block_hash: Digest,
    /// Bytes in the whole snapshot.
    pub size: u64,
    /// The digest of each chunk, in order.
    pub chunks: Vec<Digest>,
}

/// Why a snapshot or a chunk of one was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The state is larger than [`MAX_SNAPSHOT_CHUNKS`] chunks.
    #[error("a snapshot of {size} bytes is larger than the {max} bytes a node takes or fetches")]
    TooLarge {
        /// The state's size.
        size: u64,
        /// The largest allowed.
        max: u64,
    },
    /// The manifest's chunk count does not match its size.
    #[error("the manifest lists {listed} chunks for {size} bytes ({expected} expected)")]
    Shape {
        /// Chunks listed.
        listed: usize,
        /// Size stated.
        size: u64,
        /// Chunks that size takes.
        expected: usize,
    },
    /// A chunk index beyond the manifest.
    #[error("no chunk {index} in a snapshot of {chunks} chunks")]
    NoSuchChunk {
        /// The index.
        index: u32,
        /// Chunks in the snapshot.
        chunks: usize,
    },
    /// A chunk does not hash to the manifest's entry.
    #[error("chunk {index} does not match the manifest (a corrupted or lying peer)")]
    ChunkMismatch {
        /// The index.
        index: u32,
    },
}

impl SnapshotManifest {
    /// The manifest of `state`, the application's state after the block at
    /// `height` whose hash is `block_hash`.
    pub fn of(
        height: SeqNum,
        block_hash: Digest,
        state: &[u8],
    ) -> Result<SnapshotManifest, SnapshotError> {
        let size = state.len() as u64;
        check_size(size)?;
        Ok(SnapshotManifest {
            height,
            block_hash,
            size,
            chunks: state
                .chunks(SNAPSHOT_CHUNK_BYTES)
                .map(|chunk| Digest::of(CHUNK, chunk))
                .collect(),
        })
    }

    /// Whether the chunk list fits the size (a peer's manifest may not).
    pub fn check_shape(&self) -> Result<(), SnapshotError> {
        check_size(self.size)?;
        let expected = chunks_for(self.size);
        if self.chunks.len() != expected {
            return Err(SnapshotError::Shape {
                listed: self.chunks.len(),
                size: self.size,
                expected,
            });
        }
        Ok(())
    }

    /// The byte range of chunk `index` within the state.
    pub fn chunk_range(&self, index: u32) -> Result<std::ops::Range<u64>, SnapshotError> {
        if index as usize >= self.chunks.len() {
            return Err(SnapshotError::NoSuchChunk {
                index,
                chunks: self.chunks.len(),
            });
        }
        let start = u64::from(index) * SNAPSHOT_CHUNK_BYTES as u64;
        let end = (start + SNAPSHOT_CHUNK_BYTES as u64).min(self.size);
        Ok(start..end)
    }

    /// Checks that `bytes` are chunk `index` of this snapshot.
    pub fn check_chunk(&self, index: u32, bytes: &[u8]) -> Result<(), SnapshotError> {
        let range = self.chunk_range(index)?;
        let expected = self.chunks.get(index as usize);
        if range.end - range.start != bytes.len() as u64
            || expected != Some(&Digest::of(CHUNK, bytes))
        {
            return Err(SnapshotError::ChunkMismatch { index });
        }
        Ok(())
    }

    /// What an attestation signs.
    fn signed_bytes(&self) -> Vec<u8> {
        // A manifest is a few fixed fields and a list of digests: its
        // encoding cannot fail.
        crate::codec::encode(self).unwrap_or_default()
    }
}

fn chunks_for(size: u64) -> usize {
    size.div_ceil(SNAPSHOT_CHUNK_BYTES as u64) as usize
}

fn check_size(size: u64) -> Result<(), SnapshotError> {
    let max = (MAX_SNAPSHOT_CHUNKS * SNAPSHOT_CHUNK_BYTES) as u64;
    if size > max {
        return Err(SnapshotError::TooLarge { size, max });
    }
    Ok(())
}

/// A node's signed word that it took this snapshot itself, by executing
/// the blocks up to its height.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotAttestation {
    /// The snapshot.
    pub manifest: SnapshotManifest,
    /// The node that took it.
    pub signer: NodeId,
    /// `signer`'s signature over the manifest.
    pub signature: Signature,
}

impl SnapshotAttestation {
    /// `signer` attests `manifest` with its key.
    pub fn sign(manifest: SnapshotManifest, signer: NodeId, key: &KeyPair) -> SnapshotAttestation {
        let signature = key.sign(ATTESTATION, &manifest.signed_bytes());
        SnapshotAttestation {
            manifest,
            signer,
            signature,
        }
    }

    /// Whether a member of `committee` signed this manifest.
    pub fn verify(&self, committee: &Committee) -> bool {
        self.verify_over(committee, &self.manifest.signed_bytes())
    }

    /// [`Self::verify`] given the manifest's signed bytes.
    fn verify_over(&self, committee: &Committee, signed: &[u8]) -> bool {
        committee
            .key(self.signer)
            .is_some_and(|key| key.verify(ATTESTATION, signed, &self.signature).is_ok())
    }
}

/// The highest snapshot at or above `at_least` whose manifest f+1 distinct
/// members of `committee` signed (so at least one honest node took it),
/// with the members that did: the peers to fetch its chunks from.
/// Attestations that do not verify, or whose manifest is malformed, are
/// ignored; a signer counts once per manifest however often it repeats.
pub fn certified<'a>(
    committee: &Committee,
    attestations: impl IntoIterator<Item = &'a SnapshotAttestation>,
    at_least: SeqNum,
) -> Option<(SnapshotManifest, Vec<NodeId>)> {
    let mut signers: BTreeMap<(SeqNum, Digest), (&SnapshotManifest, Vec<NodeId>)> = BTreeMap::new();
    for attestation in attestations {
        let manifest = &attestation.manifest;
        if manifest.height < at_least || manifest.check_shape().is_err() {
            continue;
        }
        // Encoded once: checked against the signature and keyed by.
        let signed = manifest.signed_bytes();
        if !attestation.verify_over(committee, &signed) {
            continue;
        }
        let key = (manifest.height, Digest::of(ATTESTATION, &signed));
        let entry = signers.entry(key).or_insert((manifest, Vec::new()));
        if !entry.1.contains(&attestation.signer) {
            entry.1.push(attestation.signer);
        }
    }
    signers
        .into_values()
        .rev()
        .find(|(_, signers)| signers.len() > committee.f())
        .map(|(manifest, signers)| (manifest.clone(), signers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<KeyPair> {
        (0..4u8).map(|i| KeyPair::from_seed([i + 1; 32])).collect()
    }

    fn committee(keys: &[KeyPair]) -> Committee {
        Committee::new(&keys.iter().map(KeyPair::public).collect::<Vec<_>>()).unwrap()
    }

    fn state(size: usize, seed: u8) -> Vec<u8> {
        (0..size)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn chunks_are_checked_against_the_manifest() {
        let bytes = state(2 * SNAPSHOT_CHUNK_BYTES + 10, 7);
        let manifest = SnapshotManifest::of(SeqNum(64), Digest([1; 32]), &bytes).unwrap();
        manifest.check_shape().unwrap();
        assert_eq!(manifest.chunks.len(), 3);
        for index in 0..3 {
            let range = manifest.chunk_range(index).unwrap();
            let chunk = &bytes[range.start as usize..range.end as usize];
            manifest.check_chunk(index, chunk).unwrap();
            let mut flipped = chunk.to_vec();
            flipped[0] ^= 1;
            assert_eq!(
                manifest.check_chunk(index, &flipped),
                Err(SnapshotError::ChunkMismatch { index })
            );
        }
        let last = manifest.chunk_range(2).unwrap();
        assert_eq!(last.end - last.start, 10);
        assert!(manifest.check_chunk(3, &[]).is_err());
        // A chunk cut short does not match, even by its own hash.
        assert!(manifest.check_chunk(2, &bytes[..5]).is_err());
        // An empty state is a snapshot of no chunks.
        let empty = SnapshotManifest::of(SeqNum(1), Digest::ZERO, &[]).unwrap();
        empty.check_shape().unwrap();
        assert!(empty.chunks.is_empty());
    }

    #[test]
    fn a_manifest_whose_chunks_do_not_fit_its_size_is_malformed() {
        let bytes = state(100, 1);
        let mut manifest = SnapshotManifest::of(SeqNum(64), Digest([1; 32]), &bytes).unwrap();
        manifest.size = SNAPSHOT_CHUNK_BYTES as u64 + 1;
        assert!(matches!(
            manifest.check_shape(),
            Err(SnapshotError::Shape { expected: 2, .. })
        ));
        manifest.size = u64::MAX;
        assert!(matches!(
            manifest.check_shape(),
            Err(SnapshotError::TooLarge { .. })
        ));
    }

    /// f+1 distinct signers certify a manifest; f do not, repeated or not;
    /// a forged or foreign signature counts for nothing; the highest
    /// certified height wins.
    #[test]
    fn f_plus_one_distinct_signers_certify_a_snapshot() {
        let keys = keys();
        let committee = committee(&keys);
        let honest = SnapshotManifest::of(SeqNum(64), Digest([1; 32]), &state(50, 1)).unwrap();
        let lie = SnapshotManifest::of(SeqNum(128), Digest([2; 32]), &state(50, 2)).unwrap();
        let attest = |manifest: &SnapshotManifest, id: u16| {
            SnapshotAttestation::sign(manifest.clone(), NodeId(id), &keys[id as usize])
        };
        // One liar (f = 1) repeating itself certifies nothing.
        let lies = vec![attest(&lie, 3), attest(&lie, 3), attest(&lie, 3)];
        assert_eq!(certified(&committee, &lies, SeqNum(0)), None);
        // Its signature under another member's id does not verify.
        let mut forged = attest(&lie, 3);
        forged.signer = NodeId(2);
        let mut offered = lies.clone();
        offered.push(forged);
        assert_eq!(certified(&committee, &offered, SeqNum(0)), None);
        // Two honest nodes certify theirs, whatever the liar adds.
        offered.extend([attest(&honest, 0), attest(&honest, 1)]);
        let (manifest, signers) = certified(&committee, &offered, SeqNum(0)).unwrap();
        assert_eq!(manifest, honest);
        assert_eq!(signers, vec![NodeId(0), NodeId(1)]);
        // Below the height asked for, nothing.
        assert_eq!(certified(&committee, &offered, SeqNum(65)), None);
        // A higher certified height wins over a lower one.
        let later = SnapshotManifest::of(SeqNum(192), Digest([3; 32]), &state(60, 3)).unwrap();
        offered.extend([attest(&later, 1), attest(&later, 2)]);
        assert_eq!(
            certified(&committee, &offered, SeqNum(0)).unwrap().0.height,
            SeqNum(192)
        );
        // A signature over one manifest does not carry to a changed one.
        let mut altered = attest(&honest, 2);
        altered.manifest.chunks[0] = Digest([9; 32]);
        assert!(!altered.verify(&committee));
    }
}

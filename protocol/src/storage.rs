//! What a replica persists, and the storage interface its shell implements.
//!
//! The replica never writes: it returns [`Record`]s and deliveries in its
//! [`crate::Actions`], and the shell makes them durable (in one atomic write
//! per step: group commit) before it sends anything from that step. The
//! replica reads committed blocks through [`BlockSource`] to serve state
//! transfer.
//!
//! [`MemStorage`] is the in-memory implementation the simulator uses; the
//! daemon has a disk one. [`suite`] is one set of tests that both pass.

use crate::block::CommittedBlock;
use crate::certificate::{CheckpointCertificate, PreparedCertificate};
use crate::ids::SeqNum;
use crate::merkle::MerkleTree;
use crate::message::{Batch, NewView, RequestKey, Signed, Suspect};
use crate::signer::SafetyState;
use bftd_crypto::Digest;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One thing to make durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// The signer's state. Must be durable before any vote signed under it
    /// is sent.
    Safety(SafetyState),
    /// A batch this replica accepted at `seq`: needed to execute it, or to
    /// hand it to a new primary, after a restart.
    Batch {
        /// The sequence it was accepted at.
        seq: SeqNum,
        /// Its digest.
        digest: Digest,
        /// The batch.
        batch: Arc<Batch>,
    },
    /// A prepared certificate: must survive a restart so that a later
    /// view-change reports it (else a committed request could be lost).
    Prepared(PreparedCertificate),
    /// A new stable checkpoint; batches and prepared certificates at or below
    /// it may be discarded.
    StableCheckpoint(CheckpointCertificate),
    /// The new-view that started the replica's current view (replaces any
    /// earlier one). After a restart the replica re-sends it to peers that
    /// missed it; without it, a primary that restarts right after sending a
    /// new-view could leave the others waiting for it forever.
    NewView(Signed<NewView>),
    /// The 2f+1 suspicions that made this replica leave its last normal view
    /// (replaces any earlier ones). After a restart in the middle of that
    /// view change it relays them again, so replicas that never saw them
    /// follow it out of the view instead of leaving it alone there.
    Suspicion(Vec<Signed<Suspect>>),
    /// The replica jumped past history its peers pruned (see
    /// [`JumpRecord`]).
    Jump(Box<JumpRecord>),
}

/// What a replica that jumped past pruned history makes durable, in one
/// write: it forgets every block, batch and prepared certificate at or
/// below the checkpoint; keeps the checkpoint's block as its only block
/// (its first height becomes the checkpoint's); and keeps the requests
/// executed at the heights of the last `request_lifetime` below and at it,
/// so that a restart rebuilds the same at-most-once table (see
/// [`BlockSource::executed_from`], and design notes §47).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JumpRecord {
    /// The stable checkpoint jumped to (a store that holds a later one
    /// keeps the later one).
    pub checkpoint: CheckpointCertificate,
    /// The block at the checkpoint's height; its hash is the checkpoint's.
    pub block: Arc<CommittedBlock>,
    /// `block`'s duplicate positions.
    pub duplicates: Vec<u32>,
    /// The requests that executed at each height of the window below
    /// `block`, in height order (`block`'s own follow from its duplicates).
    pub executed: Vec<(SeqNum, Vec<RequestKey>)>,
}

/// A block the replica executed, to be stored and handed to the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The block and its commit certificate.
    pub block: Arc<CommittedBlock>,
    /// Positions of requests in the batch that were already executed in an
    /// earlier block (a byzantine or confused primary can re-propose one);
    /// the application must skip them. Every replica computes the same list.
    pub duplicates: Vec<u32>,
    /// The batch's Merkle tree, if the replica built it while checking the
    /// pre-prepare: whoever cuts receipts (Merkle proofs) for this block can
    /// use it instead of hashing the batch again. Not stored.
    pub tree: Option<Arc<MerkleTree>>,
}

/// Everything a replica needs to restart where it stopped.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// The signer's state.
    pub safety: SafetyState,
    /// The stable checkpoint (genesis if none).
    pub stable_checkpoint: Option<CheckpointCertificate>,
    /// Prepared certificates above the checkpoint.
    pub prepared: Vec<PreparedCertificate>,
    /// Accepted batches above the checkpoint.
    pub batches: Vec<(SeqNum, Digest, Arc<Batch>)>,
    /// The latest new-view.
    pub new_view: Option<Signed<NewView>>,
    /// The suspicions that started the last view change.
    pub suspicion: Vec<Signed<Suspect>>,
}

/// A storage failure. Carries the backend's message for the operator.
#[derive(Debug, thiserror::Error)]
#[error("storage: {source}")]
pub struct StorageError {
    /// The backend's error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Durable storage for one replica.
pub trait Storage {
    /// Makes `records` and `deliveries` durable, atomically: after a crash,
    /// either all of them are there or none.
    fn apply(&mut self, records: &[Record], deliveries: &[Delivery]) -> Result<(), StorageError>;

    /// What a restarting replica needs.
    fn recover(&self) -> Result<Recovered, StorageError>;
}

/// Read access to committed blocks.
pub trait BlockSource: Send + Sync {
    /// The block at `height`, if stored.
    fn block(&self, height: SeqNum) -> Option<Arc<CommittedBlock>>;

    /// The highest stored height (0 if none).
    fn last_height(&self) -> SeqNum;

    /// The lowest height still stored: 1 unless older blocks were pruned
    /// (then every block from it to [`Self::last_height`] is stored).
    fn first_height(&self) -> SeqNum {
        SeqNum(1)
    }

    /// Duplicate positions recorded with the block at `height`.
    fn duplicates(&self, height: SeqNum) -> Vec<u32>;

    /// The lowest height whose executed requests ([`Self::executed`]) are
    /// kept: [`Self::first_height`], except in a store that jumped past
    /// pruned history ([`Record::Jump`]), which keeps the requests of the
    /// window below its first block without the blocks.
    fn executed_from(&self) -> SeqNum {
        self.first_height()
    }

    /// The requests that executed in the block at `height` (its requests
    /// less its duplicates), in block order; `None` if the block is not
    /// stored. A restarting replica rebuilds its at-most-once table from
    /// the last `request_lifetime` heights of these. The default reads the
    /// whole block; a store that keeps the keys apart (the daemon's
    /// `executed` table) reads a few bytes per request instead of every
    /// payload.
    fn executed(&self, height: SeqNum) -> Option<Vec<RequestKey>> {
        let block = self.block(height)?;
        Some(executed_keys(&block, &self.duplicates(height)))
    }
}

/// The requests of `block` that executed: all but the positions in
/// `duplicates`, in block order.
pub fn executed_keys(block: &CommittedBlock, duplicates: &[u32]) -> Vec<RequestKey> {
    block
        .block
        .batch
        .requests
        .iter()
        .enumerate()
        .filter(|(index, _)| !duplicates.contains(&(*index as u32)))
        .map(|(_, request)| request.key())
        .collect()
}

#[derive(Debug, Default)]
struct MemState {
    safety: SafetyState,
    checkpoint: Option<CheckpointCertificate>,
    prepared: BTreeMap<SeqNum, PreparedCertificate>,
    batches: BTreeMap<(SeqNum, Digest), Arc<Batch>>,
    blocks: BTreeMap<SeqNum, (Arc<CommittedBlock>, Vec<u32>)>,
    /// Requests executed at heights below the first block, kept by a jump.
    executed: BTreeMap<SeqNum, Vec<RequestKey>>,
    new_view: Option<Signed<NewView>>,
    suspicion: Vec<Signed<Suspect>>,
    /// See [`MemStorage::with_retention`].
    retain_blocks: Option<u64>,
}

/// In-memory storage: "durable" for the simulator's crashes, which lose the
/// replica but keep its storage. Cheap to clone (shared).
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    state: Arc<Mutex<MemState>>,
}

impl MemStorage {
    /// Empty storage.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// Empty storage that prunes like the daemon's `[storage]
    /// retain_blocks`: each new stable checkpoint `s` drops the blocks
    /// below `s - retain_blocks`.
    pub fn with_retention(retain_blocks: u64) -> MemStorage {
        let storage = MemStorage::default();
        storage.lock().retain_blocks = Some(retain_blocks);
        storage
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        // A poisoned lock only means another thread panicked mid-update; the
        // maps are still structurally sound.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Storage for MemStorage {
    fn apply(&mut self, records: &[Record], deliveries: &[Delivery]) -> Result<(), StorageError> {
        let mut state = self.lock();
        for record in records {
            match record {
                Record::Safety(safety) => state.safety = safety.clone(),
                Record::Batch { seq, digest, batch } => {
                    state.batches.insert((*seq, *digest), batch.clone());
                }
                Record::Prepared(cert) => {
                    let replace = state
                        .prepared
                        .get(&cert.seq())
                        .is_none_or(|old| old.view() <= cert.view());
                    if replace {
                        state.prepared.insert(cert.seq(), cert.clone());
                    }
                }
                Record::NewView(new_view) => state.new_view = Some(new_view.clone()),
                Record::Suspicion(suspects) => state.suspicion = suspects.clone(),
                Record::StableCheckpoint(cert) => state.stable_checkpoint(cert),
                Record::Jump(jump) => {
                    let seq = jump.checkpoint.seq();
                    state.blocks.retain(|&s, _| s > seq);
                    state.prepared.retain(|&s, _| s > seq);
                    state.batches.retain(|&(s, _), _| s > seq);
                    state.blocks.insert(
                        jump.block.height(),
                        (jump.block.clone(), jump.duplicates.clone()),
                    );
                    state.executed = jump.executed.iter().cloned().collect();
                    state.stable_checkpoint(&jump.checkpoint);
                }
            }
        }
        for delivery in deliveries {
            state.blocks.insert(
                delivery.block.height(),
                (delivery.block.clone(), delivery.duplicates.clone()),
            );
        }
        Ok(())
    }

    fn recover(&self) -> Result<Recovered, StorageError> {
        let state = self.lock();
        Ok(Recovered {
            safety: state.safety.clone(),
            stable_checkpoint: state.checkpoint.clone(),
            prepared: state.prepared.values().cloned().collect(),
            batches: state
                .batches
                .iter()
                .map(|(&(seq, digest), batch)| (seq, digest, batch.clone()))
                .collect(),
            new_view: state.new_view.clone(),
            suspicion: state.suspicion.clone(),
        })
    }
}

impl MemState {
    /// The first block's height (1 while none is stored).
    fn first_height(&self) -> SeqNum {
        self.blocks
            .first_key_value()
            .map_or(SeqNum(1), |(&height, _)| height)
    }

    fn stable_checkpoint(&mut self, cert: &CheckpointCertificate) {
        let seq = cert.seq();
        if self.checkpoint.as_ref().is_some_and(|c| c.seq() >= seq) {
            return;
        }
        self.checkpoint = Some(cert.clone());
        self.prepared.retain(|&s, _| s > seq);
        self.batches.retain(|&(s, _), _| s > seq);
        if let Some(retain) = self.retain_blocks {
            let keep_from = SeqNum(seq.0.saturating_sub(retain));
            self.blocks.retain(|&s, _| s >= keep_from);
            self.executed.retain(|&s, _| s >= keep_from);
        }
    }
}

impl BlockSource for MemStorage {
    fn block(&self, height: SeqNum) -> Option<Arc<CommittedBlock>> {
        self.lock()
            .blocks
            .get(&height)
            .map(|(block, _)| block.clone())
    }

    fn last_height(&self) -> SeqNum {
        self.lock()
            .blocks
            .last_key_value()
            .map_or(SeqNum(0), |(&height, _)| height)
    }

    fn first_height(&self) -> SeqNum {
        self.lock().first_height()
    }

    fn duplicates(&self, height: SeqNum) -> Vec<u32> {
        self.lock()
            .blocks
            .get(&height)
            .map(|(_, duplicates)| duplicates.clone())
            .unwrap_or_default()
    }

    fn executed_from(&self) -> SeqNum {
        let state = self.lock();
        let first = state.first_height();
        state
            .executed
            .first_key_value()
            .map_or(first, |(&height, _)| height.min(first))
    }

    fn executed(&self, height: SeqNum) -> Option<Vec<RequestKey>> {
        if let Some(keys) = self.lock().executed.get(&height) {
            return Some(keys.clone());
        }
        let block = self.block(height)?;
        Some(executed_keys(&block, &self.duplicates(height)))
    }
}

/// One test suite for every [`Storage`] implementation: call it from the
/// implementation's tests with a fresh store and a function that "restarts" it
/// (reopens from disk, or clones the shared memory).
#[cfg(any(test, feature = "test-suite"))]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
pub mod suite {
    use super::*;
    use crate::block::Block;
    use crate::certificate::QuorumCertificate;
    use crate::ids::{NodeId, View};
    use crate::message::{Checkpoint, Commit, PrePrepare, Prepare};
    use bftd_crypto::Signature;

    fn prepared(seq: u64, view: u64) -> PreparedCertificate {
        let value = PrePrepare {
            view: View(view),
            seq: SeqNum(seq),
            digest: Digest([seq as u8; 32]),
        };
        PreparedCertificate {
            pre_prepare: Signed {
                signer: NodeId(0),
                value,
                signature: Signature([1; 64]),
            },
            prepares: QuorumCertificate {
                value: Prepare {
                    view: value.view,
                    seq: value.seq,
                    digest: value.digest,
                },
                votes: Vec::new(),
            },
        }
    }

    fn block(height: u64) -> Arc<CommittedBlock> {
        Arc::new(CommittedBlock {
            block: Block {
                height: SeqNum(height),
                prev_hash: Digest([height as u8; 32]),
                batch_digest: Digest::ZERO,
                batch: Arc::new(Batch::default()),
            },
            certificate: QuorumCertificate {
                value: Commit {
                    view: View(0),
                    seq: SeqNum(height),
                    digest: Digest::ZERO,
                },
                votes: Vec::new(),
            },
        })
    }

    /// Runs every check. `reopen` must return the same store as seen after a
    /// restart.
    pub fn run<S: Storage + BlockSource>(mut store: S, reopen: impl Fn(S) -> S) {
        // A new store recovers to genesis.
        let recovered = store.recover().unwrap();
        assert_eq!(recovered.safety, SafetyState::default());
        assert!(recovered.stable_checkpoint.is_none());
        assert_eq!(store.last_height(), SeqNum(0));

        // Everything applied survives a restart.
        let safety = SafetyState {
            view: View(3),
            accepted: [(SeqNum(7), (View(3), Digest([7; 32])))].into(),
            ..SafetyState::default()
        };
        let batch = Arc::new(Batch::default());
        store
            .apply(
                &[
                    Record::Safety(safety.clone()),
                    Record::Batch {
                        seq: SeqNum(7),
                        digest: Digest([7; 32]),
                        batch: batch.clone(),
                    },
                    Record::Prepared(prepared(7, 2)),
                    Record::Prepared(prepared(9, 1)),
                ],
                &[
                    Delivery {
                        block: block(1),
                        duplicates: vec![],
                        tree: None,
                    },
                    Delivery {
                        block: block(2),
                        duplicates: vec![0, 3],
                        tree: None,
                    },
                ],
            )
            .unwrap();
        let store = reopen(store);
        let recovered = store.recover().unwrap();
        assert_eq!(recovered.safety, safety);
        assert_eq!(recovered.prepared, vec![prepared(7, 2), prepared(9, 1)]);
        assert_eq!(recovered.batches.len(), 1);
        assert_eq!(store.last_height(), SeqNum(2));
        assert_eq!(store.block(SeqNum(2)), Some(block(2)));
        assert_eq!(store.duplicates(SeqNum(2)), vec![0, 3]);
        assert_eq!(store.block(SeqNum(3)), None);

        // The latest new-view is kept.
        let new_view = |view: u64| Signed {
            signer: NodeId(1),
            value: NewView {
                view: View(view),
                view_changes: Vec::new(),
                pre_prepares: Vec::new(),
            },
            signature: Signature([2; 64]),
        };
        let mut store = store;
        store.apply(&[Record::NewView(new_view(5))], &[]).unwrap();
        store.apply(&[Record::NewView(new_view(9))], &[]).unwrap();
        let mut store = reopen(store);
        assert_eq!(store.recover().unwrap().new_view, Some(new_view(9)));

        // The latest suspicions are kept.
        let suspect = |view: u64, signer: u16| Signed {
            signer: NodeId(signer),
            value: crate::message::Suspect { view: View(view) },
            signature: Signature([3; 64]),
        };
        store
            .apply(&[Record::Suspicion(vec![suspect(4, 0)])], &[])
            .unwrap();
        let latest = vec![suspect(8, 1), suspect(8, 2), suspect(8, 3)];
        store
            .apply(&[Record::Suspicion(latest.clone())], &[])
            .unwrap();
        let mut store = reopen(store);
        assert_eq!(store.recover().unwrap().suspicion, latest);

        // A prepared certificate from a lower view never replaces a higher one.
        store
            .apply(&[Record::Prepared(prepared(7, 1))], &[])
            .unwrap();
        let recovered = store.recover().unwrap();
        assert_eq!(recovered.prepared.first(), Some(&prepared(7, 2)));

        // A stable checkpoint discards what is at or below it.
        let checkpoint = QuorumCertificate {
            value: Checkpoint {
                seq: SeqNum(8),
                block_hash: Digest([8; 32]),
            },
            votes: Vec::new(),
        };
        store
            .apply(&[Record::StableCheckpoint(checkpoint.clone())], &[])
            .unwrap();
        let store = reopen(store);
        let recovered = store.recover().unwrap();
        assert_eq!(recovered.stable_checkpoint, Some(checkpoint));
        assert_eq!(recovered.prepared, vec![prepared(9, 1)]);
        assert!(recovered.batches.is_empty());
        assert_eq!(store.block(SeqNum(1)), Some(block(1)), "blocks are kept");

        // A jump forgets every block at or below its checkpoint, keeps the
        // checkpoint's block as the first, and the window's executed
        // requests below it.
        let mut store = store;
        let top = block(20);
        let key = RequestKey {
            client: bftd_crypto::KeyPair::from_seed([5; 32]).public(),
            request_id: 5,
        };
        let jumped_to = QuorumCertificate {
            value: Checkpoint {
                seq: SeqNum(20),
                block_hash: top.hash(),
            },
            votes: Vec::new(),
        };
        let jump = JumpRecord {
            checkpoint: jumped_to.clone(),
            block: top.clone(),
            duplicates: vec![],
            executed: vec![(SeqNum(18), vec![key]), (SeqNum(19), vec![])],
        };
        store.apply(&[Record::Jump(Box::new(jump))], &[]).unwrap();
        let store = reopen(store);
        let recovered = store.recover().unwrap();
        assert_eq!(recovered.stable_checkpoint, Some(jumped_to));
        assert!(recovered.prepared.is_empty(), "{:?}", recovered.prepared);
        assert_eq!(store.first_height(), SeqNum(20));
        assert_eq!(store.last_height(), SeqNum(20));
        assert_eq!(store.block(SeqNum(2)), None, "older blocks are gone");
        assert_eq!(store.block(SeqNum(20)), Some(top));
        assert_eq!(store.executed_from(), SeqNum(18));
        assert_eq!(store.executed(SeqNum(18)), Some(vec![key]));
        assert_eq!(store.executed(SeqNum(19)), Some(vec![]));
        assert_eq!(store.executed(SeqNum(20)), Some(vec![]));
    }

    #[cfg(test)]
    #[test]
    fn mem_storage_passes_the_suite() {
        run(MemStorage::new(), |store| store.clone());
    }
}

//! The on-disk layout: table names, key encodings, the format version and
//! the store's identity. Changing anything here changes the file format:
//! bump [`FORMAT_VERSION`].

use bftd_crypto::{Digest, PublicKey};
use bftd_protocol::{CommitCertificate, Committee, ConsensusSettings, SeqNum};
use redb::TableDefinition;
use serde::{Deserialize, Serialize};

/// The format this code writes and reads. Stored under `meta/format`; a
/// store of a format from [`OLDEST_UPGRADABLE_FORMAT`] on is upgraded in
/// place when opened, any other version is refused rather than misread.
/// Version 2: requests carry `valid_until`; the `suspicion` state record.
/// Version 3: the `executed` table, so a restart need not read old blocks.
/// Version 4: a batch is written once, in chunks (`batch_chunks`), and a
/// block written since is its header and certificate (`headers`) over the
/// batch already there; blocks written before stay in `blocks`.
/// Version 5: a store that jumped past pruned history (`Record::Jump`)
/// keeps `executed` entries below its first block, which a restart must
/// read (a format-4 bftd would skip them); the upgrade from 4 only writes
/// the version.
/// Version 6: batches larger than one chunk are written to the batch log's
/// segments (`log.rs`), indexed by [`BATCH_LOG`]; batches written before
/// stay in [`BATCH_CHUNKS`] and are read and deleted there (the upgrade
/// writes the version and creates the index).
/// Version 7: every step appends a step record to the log and is durable
/// once the log is synced; redb commits without an fsync, durably about
/// every 200 ms, and `meta/log` says which steps a restart redoes (design
/// notes §51). The upgrade writes the version (a format-6 store has no step
/// to redo); a format-6 bftd must not open a format-7 store, whose last
/// second may be only in the log.
pub const FORMAT_VERSION: u32 = 7;

/// The oldest format [`super::DiskStorage::open`] upgrades in place: from
/// 2 it fills the `executed` table from the blocks; from 2 and 3 it moves
/// the pending batches of the old `batches` table into `batch_chunks`.
pub const OLDEST_UPGRADABLE_FORMAT: u32 = 2;

/// `meta`: what the store is. Keys [`META_FORMAT`] (`u32`) and
/// [`META_IDENTITY`] ([`StoreIdentity`]), both codec-encoded.
pub(super) const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("meta");
pub(super) const META_FORMAT: &str = "format";
pub(super) const META_IDENTITY: &str = "identity";
/// `meta/log`: where the log stood after the step this commit holds
/// (`log::Position`); a restart redoes the step records after the one its
/// last durable commit names (design notes §51). Since format 7.
pub(super) const META_LOG: &str = "log";

/// `state`: the single-valued parts of the replica's state, codec-encoded:
/// [`STATE_SAFETY`], [`STATE_CHECKPOINT`], [`STATE_NEW_VIEW`],
/// [`STATE_SUSPICION`].
pub(super) const STATE: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("state");
pub(super) const STATE_SAFETY: &str = "safety";
pub(super) const STATE_CHECKPOINT: &str = "stable_checkpoint";
pub(super) const STATE_NEW_VIEW: &str = "new_view";
pub(super) const STATE_SUSPICION: &str = "suspicion";

/// `prepared`: sequence number (big-endian) → `PreparedCertificate`.
pub(super) const PREPARED: TableDefinition<'static, SeqKey, &[u8]> =
    TableDefinition::new("prepared");

/// `batches` (formats 2 and 3 only): sequence number (big-endian) ‖
/// digest → `Batch`, whole. Emptied into [`BATCH_CHUNKS`] and [`PENDING`]
/// and deleted by the upgrade to format 4.
pub(super) const LEGACY_BATCHES: TableDefinition<'static, BatchKey, &[u8]> =
    TableDefinition::new("batches");

/// `batch_log`: sequence number (big-endian) ‖ digest → where the batch's
/// record is in the batch log (segment, offset, length: `log::Location`).
///
/// Every batch the replica records, and every block's batch, is written
/// once: when a pre-prepare is accepted (`Record::Batch`), or, for a block
/// whose batch never came that way (fetched by state transfer), with the
/// block; to the log if it is larger than one chunk, else as one chunk in
/// [`BATCH_CHUNKS`]. A block in [`HEADERS`] refers to the batch
/// under its height and digest, so executing a batch writes a header and
/// certificate, not the batch again. A batch's entry is deleted when it
/// stops being pending (see [`PENDING`]) unless it is its height's block's
/// batch; then it goes with the block, when `retain_blocks` prunes it. A
/// segment goes when no entry refers to it any more.
pub(super) const BATCH_LOG: TableDefinition<'static, BatchKey, super::log::LocationBytes> =
    TableDefinition::new("batch_log");

/// `batch_chunks`: sequence number (big-endian) ‖ digest ‖ chunk index
/// (big-endian `u32`) → a piece of the `Batch`'s encoding, at most
/// [`BLOCK_CHUNK_BYTES`] (for the reason blocks are chunked, below).
/// Since format 6 only batches of one chunk are written here (larger
/// ones go to the log, [`BATCH_LOG`]); formats 4 and 5 wrote every batch
/// here, and those are read and deleted here.
pub(super) const BATCH_CHUNKS: TableDefinition<'static, BatchChunkKey, &[u8]> =
    TableDefinition::new("batch_chunks");

/// `pending`: sequence number (big-endian) ‖ digest → nothing: the batches
/// the replica recorded and a restart gives back to it
/// (`Recovered::batches`), with `MemStorage`'s semantics: recorded by
/// `Record::Batch`, discarded by a stable checkpoint at or above them.
/// Their bytes are in the batch log ([`BATCH_LOG`]), or in
/// [`BATCH_CHUNKS`] (batches of one chunk, and those written before
/// format 6).
pub(super) const PENDING: TableDefinition<'static, BatchKey, ()> = TableDefinition::new("pending");

/// `headers`: height (big-endian) → [`StoredHeader`]: a block written since
/// format 4, without its batch (which is in the batch log, or in
/// [`BATCH_CHUNKS`], under the block's height and `batch_digest`).
pub(super) const HEADERS: TableDefinition<'static, SeqKey, &[u8]> = TableDefinition::new("headers");

/// `blocks`: height (big-endian) ‖ chunk index (big-endian `u32`) → a
/// piece of the `CommittedBlock`'s encoding, at most [`BLOCK_CHUNK_BYTES`]:
/// blocks written by formats up to 3 (batch included). Read as they are,
/// never written since; kept forever, unless `StorageOptions::retain_blocks`
/// prunes them below the stable checkpoint.
///
/// Why chunks: redb gives a value that does not fit a page a power-of-two
/// run of pages, so a 630 KB block took 1 MiB and the file grew 2.2× the
/// encoded size; in ~32 KiB chunks it grows 1.13× (measured, see the module
/// doc), at no cost in write latency and ~10 µs per block read.
pub(super) const BLOCKS: TableDefinition<'static, ChunkKey, &[u8]> = TableDefinition::new("blocks");

/// Largest piece of a block's encoding stored under one key: 32 KiB less
/// room for the leaf page's header and key.
pub(super) const BLOCK_CHUNK_BYTES: usize = 32 * 1024 - 512;

/// `duplicates`: height (big-endian) → `Vec<u32>`, written in the same
/// transaction as the block; only non-empty lists are stored (almost every
/// block has none), so a missing entry means "none".
pub(super) const DUPLICATES: TableDefinition<'static, SeqKey, &[u8]> =
    TableDefinition::new("duplicates");

/// `executed`: height (big-endian) → `Vec<RequestKey>`, the requests that
/// executed in that block (its requests less its duplicates), written in
/// the same transaction as the block, for every block (an empty list
/// too: a missing entry means "not recorded", and the block is read
/// instead). A restart rebuilds the at-most-once table from the last
/// `request_lifetime` heights of this table: 40 bytes a request instead of
/// decoding every payload. Entries older than that are deleted at each
/// stable checkpoint when the store knows the lifetime (from its
/// identity): they can never matter again.
pub(super) const EXECUTED: TableDefinition<'static, SeqKey, &[u8]> =
    TableDefinition::new("executed");

/// Every table a bftd store has, created with the store.
pub(super) const TABLE_NAMES: [&str; 10] = [
    "meta",
    "state",
    "prepared",
    "batch_log",
    "batch_chunks",
    "pending",
    "headers",
    "blocks",
    "duplicates",
    "executed",
];

/// A block without its batch: what [`HEADERS`] holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StoredHeader {
    /// The block's height (checked against its key on reading).
    pub height: SeqNum,
    /// `Block::prev_hash`.
    pub prev_hash: Digest,
    /// `Block::batch_digest`: the batch's key, with the height, in
    /// [`BATCH_LOG`] (or [`BATCH_CHUNKS`]).
    pub batch_digest: Digest,
    /// The commit certificate.
    pub certificate: CommitCertificate,
}

/// A sequence number as a key: big-endian, so byte order is numeric order
/// and range scans come out sorted (and the layout would carry over to any
/// byte-ordered store).
pub(super) type SeqKey = [u8; 8];

/// A batch key: sequence number (big-endian) then digest.
pub(super) type BatchKey = [u8; 40];

/// A batch chunk key: a [`BatchKey`] then the chunk index (big-endian).
pub(super) type BatchChunkKey = [u8; 44];

/// A block chunk key: height (big-endian) then chunk index (big-endian), so
/// a block's chunks are adjacent and in order.
pub(super) type ChunkKey = [u8; 12];

pub(super) fn chunk_key(height: SeqNum, index: u32) -> ChunkKey {
    let mut key = [0u8; 12];
    let (height_part, index_part) = key.split_at_mut(8);
    height_part.copy_from_slice(&height.0.to_be_bytes());
    index_part.copy_from_slice(&index.to_be_bytes());
    key
}

pub(super) fn chunk_from_key(key: ChunkKey) -> (SeqNum, u32) {
    let mut height = [0u8; 8];
    let mut index = [0u8; 4];
    let (height_part, index_part) = key.split_at(8);
    height.copy_from_slice(height_part);
    index.copy_from_slice(index_part);
    (
        SeqNum(u64::from_be_bytes(height)),
        u32::from_be_bytes(index),
    )
}

pub(super) fn seq_key(seq: SeqNum) -> SeqKey {
    seq.0.to_be_bytes()
}

pub(super) fn batch_key(seq: SeqNum, digest: &Digest) -> BatchKey {
    let mut key = [0u8; 40];
    let (seq_part, digest_part) = key.split_at_mut(8);
    seq_part.copy_from_slice(&seq.0.to_be_bytes());
    digest_part.copy_from_slice(&digest.0);
    key
}

/// The largest batch key at `seq`: an inclusive upper bound for "every batch
/// at or below `seq`".
pub(super) fn last_batch_key(seq: SeqNum) -> BatchKey {
    batch_key(seq, &Digest([0xff; 32]))
}

pub(super) fn batch_chunk_key(seq: SeqNum, digest: &Digest, index: u32) -> BatchChunkKey {
    let mut key = [0u8; 44];
    let (batch_part, index_part) = key.split_at_mut(40);
    batch_part.copy_from_slice(&batch_key(seq, digest));
    index_part.copy_from_slice(&index.to_be_bytes());
    key
}

/// The batch a chunk key belongs to, and the chunk's index.
pub(super) fn batch_chunk_from_key(key: BatchChunkKey) -> (SeqNum, Digest, u32) {
    let mut batch = [0u8; 40];
    let mut index = [0u8; 4];
    let (batch_part, index_part) = key.split_at(40);
    batch.copy_from_slice(batch_part);
    index.copy_from_slice(index_part);
    let (seq, digest) = batch_from_key(batch);
    (seq, digest, u32::from_be_bytes(index))
}

pub(super) fn batch_from_key(key: BatchKey) -> (SeqNum, Digest) {
    let mut seq = [0u8; 8];
    let mut digest = [0u8; 32];
    let (seq_part, digest_part) = key.split_at(8);
    seq.copy_from_slice(seq_part);
    digest.copy_from_slice(digest_part);
    (SeqNum(u64::from_be_bytes(seq)), Digest(digest))
}

/// Whom a store belongs to: the node's key and its committee. Recorded when
/// the store is created through [`super::DiskStorage::open_for`] and checked
/// on every later `open_for`, so a data directory copied to the wrong node,
/// or kept across a committee change, is refused instead of feeding a
/// replica safety state that is not its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreIdentity {
    /// This node's public key.
    pub node_key: PublicKey,
    /// The committee's keys, in replica order.
    pub committee: Vec<PublicKey>,
    /// The consensus settings the store's blocks were executed under: the
    /// same blocks under other settings would execute differently.
    pub settings: ConsensusSettings,
}

impl StoreIdentity {
    /// The identity of the node holding `node_key` in `committee`, under
    /// `settings`.
    pub fn new(
        node_key: PublicKey,
        committee: &Committee,
        settings: ConsensusSettings,
    ) -> StoreIdentity {
        StoreIdentity {
            node_key,
            committee: committee.public_keys(),
            settings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys sort like the numbers they encode, and a batch key round-trips.
    #[test]
    fn keys_are_ordered_and_round_trip() {
        assert!(seq_key(SeqNum(255)) < seq_key(SeqNum(256)));
        assert!(seq_key(SeqNum(1)) < seq_key(SeqNum(u64::MAX)));
        let digest = Digest([7; 32]);
        assert_eq!(
            batch_from_key(batch_key(SeqNum(300), &digest)),
            (SeqNum(300), digest)
        );
        assert!(batch_key(SeqNum(9), &Digest([0xff; 32])) < batch_key(SeqNum(10), &Digest::ZERO));
        assert_eq!(
            last_batch_key(SeqNum(9)),
            batch_key(SeqNum(9), &Digest([0xff; 32]))
        );
        assert_eq!(chunk_from_key(chunk_key(SeqNum(42), 7)), (SeqNum(42), 7));
        assert_eq!(
            batch_chunk_from_key(batch_chunk_key(SeqNum(42), &digest, 9)),
            (SeqNum(42), digest, 9)
        );
        assert!(
            batch_chunk_key(SeqNum(9), &digest, u32::MAX)
                < batch_chunk_key(SeqNum(10), &Digest::ZERO, 0)
        );
        assert!(batch_chunk_key(SeqNum(9), &digest, 1) < batch_chunk_key(SeqNum(9), &digest, 2));
        assert!(chunk_key(SeqNum(1), u32::MAX) < chunk_key(SeqNum(2), 0));
        assert!(chunk_key(SeqNum(1), 255) < chunk_key(SeqNum(1), 256));
    }
}

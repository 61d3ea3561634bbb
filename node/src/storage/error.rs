//! What can go wrong with the disk store. Every variant names the store's
//! path, so an operator reading the log knows which file to look at.

use bftd_crypto::PublicKey;
use bftd_protocol::codec::CodecError;
use bftd_protocol::{SeqNum, StorageError};
use std::path::PathBuf;

/// A failure of [`super::DiskStorage`]. It reaches callers inside a
/// [`StorageError`] (the protocol's storage trait fixes that type); use
/// [`DiskStorageError::of`] to get it back.
#[derive(Debug, thiserror::Error)]
pub enum DiskStorageError {
    /// Another process, or another `DiskStorage` in this one, has the store
    /// open. Two writers on one store would break the replica's safety.
    #[error(
        "store {path} is locked: another bftd process (or another handle in this one) has it open"
    )]
    Locked {
        /// The store.
        path: PathBuf,
    },
    /// The file cannot be opened, created or read.
    #[error("cannot open store {path}: {source}")]
    Unreadable {
        /// The store.
        path: PathBuf,
        /// The operating system's report.
        source: std::io::Error,
    },
    /// The file is not a redb database at all.
    #[error("{path} is not a bftd store (not a redb database)")]
    NotADatabase {
        /// The file.
        path: PathBuf,
    },
    /// A redb database, but not one bftd created.
    #[error("{path} is a redb database but not a bftd store (no format version)")]
    NotABftdStore {
        /// The file.
        path: PathBuf,
    },
    /// A bftd store of a format version this code neither reads nor
    /// upgrades: written by a newer bftd, or by one too old to upgrade.
    #[error("store {path} has format version {found}; this bftd reads version {supported} and upgrades version 2 in place: a newer version was written by a newer bftd (run that one, or a newer one), an older one cannot be upgraded (start the node with a new store and let it catch up from its peers)")]
    UnsupportedFormat {
        /// The store.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The version this code reads.
        supported: u32,
    },
    /// The store was created for another node.
    #[error("store {path} belongs to node key {found}, not to this node ({expected})")]
    WrongNode {
        /// The store.
        path: PathBuf,
        /// This node's key.
        expected: PublicKey,
        /// The key recorded in the store.
        found: PublicKey,
    },
    /// The store was created for another committee.
    #[error(
        "store {path} was created for another committee ({found} members, this one has {expected})"
    )]
    WrongCommittee {
        /// The store.
        path: PathBuf,
        /// Size of this node's committee.
        expected: usize,
        /// Size of the recorded committee.
        found: usize,
    },
    /// The store's blocks were executed under other consensus settings.
    #[error("store {path} was created with [protocol] {setting} = {recorded}, but the cluster file now says {ours}: its blocks would execute differently; restore the cluster file's value (every node must use the same), or start a new cluster with new stores")]
    OtherSettings {
        /// The store.
        path: PathBuf,
        /// The first setting that differs.
        setting: &'static str,
        /// The cluster file's value.
        ours: String,
        /// The store's value.
        recorded: String,
    },
    /// redb found the file damaged (checksums, structure) and could not
    /// repair it.
    #[error("store {path} is damaged: {source}")]
    Corrupted {
        /// The store.
        path: PathBuf,
        /// redb's report.
        source: redb::Error,
    },
    /// A value in the store does not decode: damage, or a format change that
    /// did not bump the version.
    #[error("store {path}: a value in table `{table}` does not decode: {source}")]
    Decode {
        /// The store.
        path: PathBuf,
        /// The table holding the value.
        table: &'static str,
        /// The decoder's report.
        source: CodecError,
    },
    /// A block's chunks are not 0, 1, 2, …: the store was damaged.
    #[error("store {path} is damaged: block {height} lacks chunk {chunk}")]
    BrokenBlock {
        /// The store.
        path: PathBuf,
        /// The block's height.
        height: SeqNum,
        /// The first chunk missing.
        chunk: u32,
    },
    /// A batch's chunks are not 0, 1, 2, …, or a block's or a pending
    /// batch's chunks are not there at all: the store was damaged.
    #[error(
        "store {path} is damaged: the batch at {seq} with digest {digest:#} lacks chunk {chunk}"
    )]
    BrokenBatch {
        /// The store.
        path: PathBuf,
        /// The batch's sequence number (its block's height).
        seq: SeqNum,
        /// Its digest.
        digest: bftd_crypto::Digest,
        /// The first chunk missing.
        chunk: u32,
    },
    /// The block stored under a height is of another height.
    #[error("store {path} is damaged: the block stored at {key} is block {found}")]
    MisplacedBlock {
        /// The store.
        path: PathBuf,
        /// The height it is stored under.
        key: SeqNum,
        /// Its own height.
        found: SeqNum,
    },
    /// A value is too large to encode.
    /// The batch log's directory or a segment cannot be created, read or
    /// written.
    #[error("store {path}: the batch log cannot be read or written: {source}")]
    Log {
        /// The segment file or the log's directory.
        path: PathBuf,
        /// The operating system's report.
        source: std::io::Error,
    },
    /// A batch record the index refers to is torn, damaged, not the batch
    /// it should be, or gone with its segment.
    #[error("store is damaged: {path} at offset {offset}: {reason}. This node cannot read the batch stored there (the other nodes serve the same blocks). Do not restore an old copy of this store, or create a new one for the same key, before reading docs/operating.md, \"Backups: never roll a store back\": the node would forget what it signed")]
    DamagedLog {
        /// The segment file.
        path: PathBuf,
        /// The record's offset in it.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    #[error("store {path}: cannot encode a value for table `{table}`: {source}")]
    Encode {
        /// The store.
        path: PathBuf,
        /// The table it was meant for.
        table: &'static str,
        /// The encoder's report.
        source: CodecError,
    },
    /// The blocks asked for were pruned (`[storage] retain_blocks`).
    #[error("block {} is no longer stored: this node keeps blocks from height {} on ([storage] retain_blocks pruned the older ones); the oldest kept height is {}: ask from it or later, or ask a node that keeps them", .height.0, .first_height.0, .first_height.0)]
    Pruned {
        /// The store.
        path: PathBuf,
        /// The height asked for.
        height: SeqNum,
        /// The oldest height still stored.
        first_height: SeqNum,
    },
    /// Any other failure of redb (I/O during a transaction, a full disk).
    #[error("store {path}: {source}")]
    Backend {
        /// The store.
        path: PathBuf,
        /// redb's report.
        source: redb::Error,
    },
    /// Opening redb panicked. redb trusts a cleanly closed file and may
    /// panic on one damaged outside it; the panic is caught so that the
    /// node reports the path instead of crashing with a backtrace.
    #[error("store {path} is damaged: the database panicked while opening it")]
    OpenPanicked {
        /// The store.
        path: PathBuf,
    },
}

impl DiskStorageError {
    /// The disk error inside a [`StorageError`] from a `DiskStorage`, if it
    /// is one.
    pub fn of(error: &StorageError) -> Option<&DiskStorageError> {
        error.source.downcast_ref::<DiskStorageError>()
    }
}

impl From<DiskStorageError> for StorageError {
    fn from(error: DiskStorageError) -> StorageError {
        StorageError {
            source: Box::new(error),
        }
    }
}

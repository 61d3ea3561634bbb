//! The daemon's crash-safe store: [`DiskStorage`], the disk implementation of
//! the replica's [`Storage`] and [`BlockSource`].
//!
//! The replica never writes; each step it returns [`Record`]s and
//! [`Delivery`]s, and the shell calls [`Storage::apply`] with all of them
//! before it sends anything from that step. `apply` is **one redb write
//! transaction committed durably**: one fsync'd commit per replica step,
//! however many records (group commit), and atomic — after a crash, either
//! every record and block of a step is on disk or none is.
//!
//! # Why redb
//!
//! - Pure Rust, no C++ toolchain (rocksdb) and no `unsafe` FFI surface in
//!   the node.
//! - ACID: copy-on-write B-trees, a commit writes new pages then flips a
//!   checksummed root in the header and fsyncs, so a crash at any point
//!   leaves the last committed tree. Exactly the "all of a step or none"
//!   this module must give.
//! - One file, one writer, file-locked: a second process cannot open the
//!   store and sign with the same safety state.
//! - Maintained, with a changelog of crash-recovery fixes and a fuzzer.
//!   sled's last release is a 2021 beta with a documented on-disk format
//!   churn; a hand-written log would need its own torn-write, checksum and
//!   compaction code, for no measured gain (see the numbers below).
//!
//! We use redb 4.x rather than 2.x: 4.2–4.6 fixed crash-recovery bugs that
//! are exactly our failure model (a crash while the file grows leaving it
//! unopenable; a crash during recovery from an earlier crash rolling back
//! durable commits; repair falling back to a slot whose checksum failed,
//! opening a damaged store as empty) and turned several panics on damaged
//! files into `Corrupted` errors. None of those fixes were backported to 2.6.
//!
//! # Layout
//!
//! One redb file (the `path` given to [`DiskStorage::open`]). Values are
//! encoded with [`bftd_protocol::codec`]; integer keys are big-endian so
//! byte order is numeric order.
//!
//! | table        | key                           | value                     |
//! |--------------|-------------------------------|---------------------------|
//! | `meta`       | `"format"`, `"identity"`      | `u32` 1, [`StoreIdentity`] |
//! | `state`      | `"safety"`, `"stable_checkpoint"`, `"new_view"` | `SafetyState`, `CheckpointCertificate`, `Signed<NewView>` |
//! | `prepared`   | seq (8 bytes BE)              | `PreparedCertificate`     |
//! | `batches`    | seq (8 BE) ‖ digest (32)      | `Batch`                   |
//! | `blocks`     | height (8 BE)                 | `CommittedBlock`          |
//! | `duplicates` | height (8 BE)                 | `Vec<u32>`, only if non-empty |
//!
//! The semantics are [`bftd_protocol::MemStorage`]'s, checked by the shared
//! [`bftd_protocol::storage::suite`]: a prepared certificate is never
//! replaced by one of a lower view; a newer stable checkpoint discards
//! prepared certificates and batches at or below it; blocks are kept
//! forever, with their duplicates.
//!
//! # Durability
//!
//! Every write transaction commits with redb's default
//! `Durability::Immediate` (fsync before `commit` returns) and with
//! **two-phase commit**: the new root is fsync'd before the header's
//! primary bit flips and is fsync'd again. One-phase commit relies on a
//! non-cryptographic checksum to detect a torn commit after a crash, and
//! redb documents that a writer who controls the committed bytes and can
//! crash the process could defeat it; here the bytes are client payloads,
//! i.e. adversary-chosen. **Quick repair** (allocator state saved with each
//! commit) makes reopening after a crash independent of the store's size,
//! which grows forever with blocks; without it redb walks the whole file.
//! The measurements below put the cost of both at a fraction of the
//! commit. A `Durability::Immediate` commit that returns `Err` leaves the
//! database refusing writes until reopened: the shell must treat an
//! `apply` error as fatal and stop without sending anything of that step.
//!
//! A new store's directory entry is fsync'd after creation, so the file
//! itself survives a power loss, not only a process kill.
//!
//! # Identity
//!
//! [`DiskStorage::open_for`] records the node's key and committee in a new
//! store and refuses an existing store recorded for another node or
//! committee (a store with no identity yet adopts the given one).
//! [`DiskStorage::open`] checks only the format version: for tools and
//! tests. Both refuse a file that is not a bftd store, a store of another
//! format version, and a store another process holds (redb locks the file).
//!
//! # Performance
//!
//! `last_height` is an atomic, updated after each commit. Blocks are cached
//! decoded (a small LRU, [`StorageOptions::block_cache_entries`]) as they are
//! stored and as they are read, because decoding a 1000-request block costs
//! ~2 ms while a cache hit costs ~1 µs (measured, below).
//!
//! Measured on the project's machine with
//! `CARGO_TARGET_DIR=/work/target-storage cargo test -p bftd --release --test storage -- --ignored storage_latency --nocapture`
//! (one step = safety state + one 1000×512-byte batch + its block with a
//! 3-vote certificate, ~1.05 MB written; 500 steps):
//!
//! MEASUREMENTS
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

mod cache;
mod error;
mod layout;
#[cfg(test)]
mod tests;

pub use error::DiskStorageError;
pub use layout::{StoreIdentity, FORMAT_VERSION};

use bftd_protocol::codec;
use bftd_protocol::{
    BlockSource, CheckpointCertificate, CommittedBlock, Delivery, PreparedCertificate, Record,
    Recovered, SeqNum, Storage, StorageError,
};
use cache::BlockCache;
use layout::{
    batch_from_key, batch_key, chunk_from_key, chunk_key, last_batch_key, seq_key, BATCHES, BLOCKS,
    BLOCK_CHUNK_BYTES, DUPLICATES, META, META_FORMAT, META_IDENTITY, PREPARED, STATE,
    STATE_CHECKPOINT, STATE_NEW_VIEW, STATE_SAFETY, TABLE_NAMES,
};
use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, TableHandle, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Tuning of a [`DiskStorage`]. The defaults are what the daemon uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageOptions {
    /// Decoded blocks kept in memory (0 disables the cache).
    pub block_cache_entries: usize,
    /// Bound on the encoded size of the cached blocks.
    pub block_cache_bytes: usize,
    /// redb's page cache. redb's default (1 GiB) is sized for a database
    /// server, not for a node sharing a small machine.
    pub page_cache_bytes: usize,
    /// How a step is committed (see the module doc).
    pub commit: CommitMode,
}

/// How a write transaction is made durable. Both are fsync'd before
/// `apply` returns and both are atomic; they differ in cost and in what a
/// restart after a crash has to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CommitMode {
    /// One fsync per commit; after a crash redb finds the last complete
    /// commit by its checksum and rebuilds its allocator state by walking
    /// the whole file, so reopening takes time proportional to the store.
    OnePhase,
    /// Two fsyncs per commit (data, then the header's commit bit) and the
    /// allocator state saved with each commit: reopening after a crash
    /// takes the same few milliseconds whatever the store's size. The
    /// default.
    #[default]
    TwoPhaseQuickRepair,
}

impl Default for StorageOptions {
    fn default() -> StorageOptions {
        StorageOptions {
            block_cache_entries: 64,
            block_cache_bytes: 64 * 1024 * 1024,
            page_cache_bytes: 64 * 1024 * 1024,
            commit: CommitMode::TwoPhaseQuickRepair,
        }
    }
}

/// A stored block and the positions of its duplicate requests (see
/// [`Delivery::duplicates`]).
pub type StoredBlock = (Arc<CommittedBlock>, Vec<u32>);

/// The disk store of one replica. Cheap to clone (shared); `Send + Sync`.
#[derive(Clone)]
pub struct DiskStorage {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    options: StorageOptions,
    /// The highest stored height, updated after each commit.
    last_height: AtomicU64,
    cache: Mutex<BlockCache>,
}

impl fmt::Debug for DiskStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskStorage")
            .field("path", &self.inner.path)
            .field("last_height", &self.last_height())
            .finish_non_exhaustive()
    }
}

impl DiskStorage {
    /// Opens the store at `path` (a file), creating it if absent. Checks the
    /// format version but not whose store it is; the daemon uses
    /// [`Self::open_for`].
    pub fn open(path: &Path) -> Result<DiskStorage, StorageError> {
        DiskStorage::open_with(path, None, &StorageOptions::default())
    }

    /// Opens the store at `path` for the node `identity` describes, creating
    /// it if absent. A new store (or one with no identity yet) records
    /// `identity`; an existing one recorded for another node key or another
    /// committee is refused.
    pub fn open_for(path: &Path, identity: &StoreIdentity) -> Result<DiskStorage, StorageError> {
        DiskStorage::open_with(path, Some(identity), &StorageOptions::default())
    }

    /// [`Self::open`] or [`Self::open_for`] with explicit options.
    pub fn open_with(
        path: &Path,
        identity: Option<&StoreIdentity>,
        options: &StorageOptions,
    ) -> Result<DiskStorage, StorageError> {
        let db = open_database(path, options)?;
        let last_height = initialize(&db, path, identity, options)?;
        Ok(DiskStorage {
            inner: Arc::new(Inner {
                db,
                path: path.to_path_buf(),
                options: options.clone(),
                last_height: AtomicU64::new(last_height.0),
                cache: Mutex::new(BlockCache::new(
                    options.block_cache_entries,
                    options.block_cache_bytes,
                )),
            }),
        })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The stored blocks at heights `height` and above, in order, at most
    /// `max` of them, each with its duplicates: for `tail` and
    /// subscriptions. Reads one consistent snapshot. Blocks already cached
    /// are not decoded again; blocks read here are not cached (a subscriber
    /// scanning history must not evict the recent blocks peers ask for).
    pub fn blocks_from(
        &self,
        height: SeqNum,
        max: usize,
    ) -> Result<Vec<StoredBlock>, StorageError> {
        let inner = &*self.inner;
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        let txn = inner.db.begin_read().map_err(|e| inner.backend(e))?;
        let blocks = txn.open_table(BLOCKS).map_err(|e| inner.backend(e))?;
        let mut pending: Option<PendingBlock> = None;
        for entry in blocks
            .range(chunk_key(height, 0)..)
            .map_err(|e| inner.backend(e))?
        {
            let (key, value) = entry.map_err(|e| inner.backend(e))?;
            let (at, index) = chunk_from_key(key.value());
            if pending.as_ref().is_none_or(|block| block.height != at) {
                if let Some(done) = pending.take() {
                    out.push(done.finish(inner, &txn)?.0);
                }
                if out.len() >= max {
                    break;
                }
                pending = Some(PendingBlock::new(at, inner.cache().get(at)));
            }
            if let Some(block) = pending.as_mut() {
                block.push(inner, index, value.value())?;
            }
        }
        if let Some(done) = pending.take() {
            out.push(done.finish(inner, &txn)?.0);
        }
        Ok(out)
    }

    /// The block at `height` and its duplicates, from the cache or the disk
    /// (then cached).
    fn read_block(&self, height: SeqNum) -> Result<Option<StoredBlock>, DiskStorageError> {
        let inner = &*self.inner;
        if let Some(cached) = inner.cache().get(height) {
            return Ok(Some(cached));
        }
        let txn = inner.db.begin_read().map_err(|e| inner.backend(e))?;
        let blocks = txn.open_table(BLOCKS).map_err(|e| inner.backend(e))?;
        let mut pending = PendingBlock::new(height, None);
        for entry in blocks
            .range(chunk_key(height, 0)..=chunk_key(height, u32::MAX))
            .map_err(|e| inner.backend(e))?
        {
            let (key, value) = entry.map_err(|e| inner.backend(e))?;
            pending.push(inner, chunk_from_key(key.value()).1, value.value())?;
        }
        if pending.next_index == 0 {
            return Ok(None);
        }
        let (stored, bytes) = pending.finish(inner, &txn)?;
        inner
            .cache()
            .insert(stored.0.clone(), stored.1.clone(), bytes);
        Ok(Some(stored))
    }
}

/// A block being read back from its chunks.
struct PendingBlock {
    height: SeqNum,
    /// The index the next chunk must have.
    next_index: u32,
    bytes: Vec<u8>,
    /// Already decoded: its chunks are only checked, not copied.
    cached: Option<StoredBlock>,
}

impl PendingBlock {
    fn new(height: SeqNum, cached: Option<StoredBlock>) -> PendingBlock {
        PendingBlock {
            height,
            next_index: 0,
            bytes: Vec::new(),
            cached,
        }
    }

    fn push(&mut self, inner: &Inner, index: u32, chunk: &[u8]) -> Result<(), DiskStorageError> {
        let broken = || DiskStorageError::BrokenBlock {
            path: inner.path.clone(),
            height: self.height,
            chunk: self.next_index,
        };
        if index != self.next_index {
            return Err(broken());
        }
        self.next_index = self.next_index.checked_add(1).ok_or_else(broken)?;
        if self.cached.is_none() {
            self.bytes.extend_from_slice(chunk);
        }
        Ok(())
    }

    /// The block and its duplicates, and its encoded size.
    fn finish(
        self,
        inner: &Inner,
        txn: &redb::ReadTransaction,
    ) -> Result<(StoredBlock, usize), DiskStorageError> {
        if let Some(cached) = self.cached {
            return Ok((cached, 0));
        }
        let block: CommittedBlock = inner.decode("blocks", &self.bytes)?;
        if block.height() != self.height {
            return Err(DiskStorageError::MisplacedBlock {
                path: inner.path.clone(),
                key: self.height,
                found: block.height(),
            });
        }
        let duplicates = read_duplicates(inner, txn, self.height)?;
        Ok(((Arc::new(block), duplicates), self.bytes.len()))
    }
}

fn read_duplicates(
    inner: &Inner,
    txn: &redb::ReadTransaction,
    height: SeqNum,
) -> Result<Vec<u32>, DiskStorageError> {
    let table = txn.open_table(DUPLICATES).map_err(|e| inner.backend(e))?;
    match table.get(seq_key(height)).map_err(|e| inner.backend(e))? {
        Some(bytes) => inner.decode("duplicates", bytes.value()),
        None => Ok(Vec::new()),
    }
}

impl Inner {
    fn cache(&self) -> MutexGuard<'_, BlockCache> {
        // A poisoned lock only means another thread panicked mid-update; the
        // cache is still structurally sound (and only a cache).
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn backend(&self, error: impl Into<redb::Error>) -> DiskStorageError {
        redb_error(&self.path, error)
    }

    fn decode<T: DeserializeOwned>(
        &self,
        table: &'static str,
        bytes: &[u8],
    ) -> Result<T, DiskStorageError> {
        decode_value(&self.path, table, bytes)
    }
}

/// Opens (or creates) the redb file, mapping redb's refusals to errors that
/// name the path.
fn open_database(path: &Path, options: &StorageOptions) -> Result<Database, DiskStorageError> {
    let unreadable = |source| DiskStorageError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let existed = path.try_exists().map_err(unreadable)?;
    let mut builder = Database::builder();
    builder.set_cache_size(options.page_cache_bytes);
    // redb trusts a cleanly closed file and may panic on one damaged
    // outside it; report that as damage of this path, not a node crash.
    let opened = catch_unwind(AssertUnwindSafe(|| builder.create(path))).map_err(|_| {
        DiskStorageError::OpenPanicked {
            path: path.to_path_buf(),
        }
    })?;
    let db = opened.map_err(|error| open_error(path, error))?;
    if !existed {
        sync_parent_directory(path).map_err(unreadable)?;
    }
    Ok(db)
}

fn open_error(path: &Path, error: DatabaseError) -> DiskStorageError {
    let path = path.to_path_buf();
    match error {
        DatabaseError::DatabaseAlreadyOpen => DiskStorageError::Locked { path },
        // redb reports "not a redb database" as InvalidData.
        DatabaseError::Storage(redb::StorageError::Io(source))
            if source.kind() == std::io::ErrorKind::InvalidData =>
        {
            DiskStorageError::NotADatabase { path }
        }
        DatabaseError::Storage(redb::StorageError::Io(source)) => {
            DiskStorageError::Unreadable { path, source }
        }
        // bftd never wrote an older redb file format.
        DatabaseError::UpgradeRequired(_) => DiskStorageError::NotABftdStore { path },
        error @ (DatabaseError::RepairAborted
        | DatabaseError::Storage(redb::StorageError::Corrupted(_))) => {
            DiskStorageError::Corrupted {
                path,
                source: error.into(),
            }
        }
        error => DiskStorageError::Backend {
            path,
            source: error.into(),
        },
    }
}

/// Makes a new file's directory entry durable: without it a power loss
/// right after creation can lose the whole store.
fn sync_parent_directory(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)?.sync_all()
}

/// Maps a redb error to ours: damage is [`DiskStorageError::Corrupted`],
/// everything else [`DiskStorageError::Backend`].
fn redb_error(path: &Path, error: impl Into<redb::Error>) -> DiskStorageError {
    let path = path.to_path_buf();
    match error.into() {
        source @ redb::Error::Corrupted(_) => DiskStorageError::Corrupted { path, source },
        source => DiskStorageError::Backend { path, source },
    }
}

/// A write transaction with the durability this module promises.
fn begin_write(
    db: &Database,
    options: &StorageOptions,
) -> Result<WriteTransaction, redb::TransactionError> {
    let mut txn = db.begin_write()?;
    // `Durability::Immediate` is redb's default: commit returns after fsync.
    let two_phase = options.commit == CommitMode::TwoPhaseQuickRepair;
    txn.set_two_phase_commit(two_phase);
    txn.set_quick_repair(two_phase);
    Ok(txn)
}

fn encode_value<T: Serialize + ?Sized>(
    path: &Path,
    table: &'static str,
    value: &T,
    buffer: &mut Vec<u8>,
) -> Result<(), DiskStorageError> {
    codec::encode_into(value, buffer).map_err(|source| DiskStorageError::Encode {
        path: path.to_path_buf(),
        table,
        source,
    })
}

fn decode_value<T: DeserializeOwned>(
    path: &Path,
    table: &'static str,
    bytes: &[u8],
) -> Result<T, DiskStorageError> {
    codec::decode(bytes).map_err(|source| DiskStorageError::Decode {
        path: path.to_path_buf(),
        table,
        source,
    })
}

/// Checks (or, for a new store, writes) the format version and identity,
/// creates missing tables, and returns the highest stored height.
fn initialize(
    db: &Database,
    path: &Path,
    identity: Option<&StoreIdentity>,
    options: &StorageOptions,
) -> Result<SeqNum, DiskStorageError> {
    let fail = |error: redb::Error| redb_error(path, error);
    let txn = begin_write(db, options).map_err(|e| fail(e.into()))?;
    let existing = txn
        .list_tables()
        .map_err(|e| fail(e.into()))?
        .map(|table| table.name().to_owned())
        .collect::<Vec<_>>();
    let has_multimap = txn
        .list_multimap_tables()
        .map_err(|e| fail(e.into()))?
        .next()
        .is_some();
    let fresh = existing.is_empty() && !has_multimap;
    if !fresh && !existing.iter().any(|name| name == META.name()) {
        return Err(DiskStorageError::NotABftdStore {
            path: path.to_path_buf(),
        });
    }
    let mut changed = TABLE_NAMES
        .iter()
        .any(|name| !existing.iter().any(|table| table == name));
    {
        let mut meta = txn.open_table(META).map_err(|error| match error {
            redb::TableError::TableTypeMismatch { .. } => DiskStorageError::NotABftdStore {
                path: path.to_path_buf(),
            },
            error => fail(error.into()),
        })?;
        let mut buffer = Vec::new();
        if fresh {
            encode_value(path, "meta", &FORMAT_VERSION, &mut buffer)?;
            meta.insert(META_FORMAT, buffer.as_slice())
                .map_err(|e| fail(e.into()))?;
        } else {
            let format = meta.get(META_FORMAT).map_err(|e| fail(e.into()))?;
            let not_ours = || DiskStorageError::NotABftdStore {
                path: path.to_path_buf(),
            };
            let found: u32 =
                codec::decode(format.ok_or_else(not_ours)?.value()).map_err(|_| not_ours())?;
            if found != FORMAT_VERSION {
                return Err(DiskStorageError::UnsupportedFormat {
                    path: path.to_path_buf(),
                    found,
                    supported: FORMAT_VERSION,
                });
            }
        }
        if let Some(identity) = identity {
            let recorded = meta
                .get(META_IDENTITY)
                .map_err(|e| fail(e.into()))?
                .map(|bytes| decode_value::<StoreIdentity>(path, "meta", bytes.value()))
                .transpose()?;
            match recorded {
                Some(found) => check_identity(path, identity, &found)?,
                None => {
                    encode_value(path, "meta", identity, &mut buffer)?;
                    meta.insert(META_IDENTITY, buffer.as_slice())
                        .map_err(|e| fail(e.into()))?;
                    changed = true;
                }
            }
        }
    }
    // Every table exists from creation on, so that readers can open them.
    for result in [
        txn.open_table(STATE).map(drop),
        txn.open_table(PREPARED).map(drop),
        txn.open_table(BATCHES).map(drop),
        txn.open_table(DUPLICATES).map(drop),
    ] {
        result.map_err(|e| fail(e.into()))?;
    }
    let last_height = {
        let blocks = txn.open_table(BLOCKS).map_err(|e| fail(e.into()))?;
        let last = blocks.last().map_err(|e| fail(e.into()))?;
        last.map_or(SeqNum(0), |(key, _)| chunk_from_key(key.value()).0)
    };
    if changed {
        txn.commit().map_err(|e| fail(e.into()))?;
    } else {
        txn.abort().map_err(|e| fail(e.into()))?;
    }
    Ok(last_height)
}

fn check_identity(
    path: &Path,
    expected: &StoreIdentity,
    found: &StoreIdentity,
) -> Result<(), DiskStorageError> {
    if found.node_key != expected.node_key {
        return Err(DiskStorageError::WrongNode {
            path: path.to_path_buf(),
            expected: expected.node_key,
            found: found.node_key,
        });
    }
    if found.committee != expected.committee {
        return Err(DiskStorageError::WrongCommittee {
            path: path.to_path_buf(),
            expected: expected.committee.len(),
            found: found.committee.len(),
        });
    }
    Ok(())
}

impl DiskStorage {
    /// The whole of [`Storage::apply`]: one write transaction, committed
    /// durably, then the in-memory views (last height, cache) updated.
    fn apply_step(
        &self,
        records: &[Record],
        deliveries: &[Delivery],
    ) -> Result<(), DiskStorageError> {
        let inner = &*self.inner;
        let path = inner.path.as_path();
        let fail = |error: redb::Error| redb_error(path, error);
        let txn = begin_write(&inner.db, &inner.options).map_err(|e| fail(e.into()))?;
        let mut stored = Vec::with_capacity(deliveries.len());
        {
            let mut tables = WriteTables::open(&txn).map_err(|e| fail(e.into()))?;
            let mut buffer = Vec::new();
            for record in records {
                tables.record(path, record, &mut buffer)?;
            }
            for delivery in deliveries {
                let bytes = tables.deliver(path, delivery, &mut buffer)?;
                stored.push((delivery, bytes));
            }
        }
        // Dropping `txn` on an error above aborts it: nothing of the step
        // is written.
        txn.commit().map_err(|e| fail(e.into()))?;

        let mut cache = inner.cache();
        for (delivery, bytes) in stored {
            let height = delivery.block.height();
            inner.last_height.fetch_max(height.0, Ordering::AcqRel);
            cache.insert(delivery.block.clone(), delivery.duplicates.clone(), bytes);
        }
        Ok(())
    }

    fn recover_state(&self) -> Result<Recovered, DiskStorageError> {
        let inner = &*self.inner;
        let path = inner.path.as_path();
        let fail = |error: redb::Error| redb_error(path, error);
        let txn = inner.db.begin_read().map_err(|e| fail(e.into()))?;
        let state = txn.open_table(STATE).map_err(|e| fail(e.into()))?;
        let get = |key: &str| -> Result<
            Option<redb::AccessGuard<'static, &'static [u8]>>,
            DiskStorageError,
        > { state.get(key).map_err(|e| fail(e.into())) };
        let mut recovered = Recovered::default();
        if let Some(bytes) = get(STATE_SAFETY)? {
            recovered.safety = decode_value(path, "state", bytes.value())?;
        }
        if let Some(bytes) = get(STATE_CHECKPOINT)? {
            recovered.stable_checkpoint = Some(decode_value(path, "state", bytes.value())?);
        }
        if let Some(bytes) = get(STATE_NEW_VIEW)? {
            recovered.new_view = Some(decode_value(path, "state", bytes.value())?);
        }
        let prepared = txn.open_table(PREPARED).map_err(|e| fail(e.into()))?;
        for entry in prepared.iter().map_err(|e| fail(e.into()))? {
            let (_, value) = entry.map_err(|e| fail(e.into()))?;
            recovered
                .prepared
                .push(decode_value(path, "prepared", value.value())?);
        }
        let batches = txn.open_table(BATCHES).map_err(|e| fail(e.into()))?;
        for entry in batches.iter().map_err(|e| fail(e.into()))? {
            let (key, value) = entry.map_err(|e| fail(e.into()))?;
            let (seq, digest) = batch_from_key(key.value());
            let batch = decode_value(path, "batches", value.value())?;
            recovered.batches.push((seq, digest, Arc::new(batch)));
        }
        Ok(recovered)
    }
}

/// The tables one step writes, open in its transaction.
struct WriteTables<'txn> {
    state: redb::Table<'txn, &'static str, &'static [u8]>,
    prepared: redb::Table<'txn, layout::SeqKey, &'static [u8]>,
    batches: redb::Table<'txn, layout::BatchKey, &'static [u8]>,
    blocks: redb::Table<'txn, layout::ChunkKey, &'static [u8]>,
    duplicates: redb::Table<'txn, layout::SeqKey, &'static [u8]>,
}

impl<'txn> WriteTables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<WriteTables<'txn>, redb::TableError> {
        Ok(WriteTables {
            state: txn.open_table(STATE)?,
            prepared: txn.open_table(PREPARED)?,
            batches: txn.open_table(BATCHES)?,
            blocks: txn.open_table(BLOCKS)?,
            duplicates: txn.open_table(DUPLICATES)?,
        })
    }

    /// Applies one record with `MemStorage`'s semantics.
    fn record(
        &mut self,
        path: &Path,
        record: &Record,
        buffer: &mut Vec<u8>,
    ) -> Result<(), DiskStorageError> {
        let fail = |error: redb::StorageError| redb_error(path, error);
        match record {
            Record::Safety(safety) => {
                encode_value(path, "state", safety, buffer)?;
                self.state
                    .insert(STATE_SAFETY, buffer.as_slice())
                    .map_err(fail)?;
            }
            Record::Batch { seq, digest, batch } => {
                encode_value(path, "batches", &**batch, buffer)?;
                self.batches
                    .insert(batch_key(*seq, digest), buffer.as_slice())
                    .map_err(fail)?;
            }
            Record::Prepared(cert) => {
                let key = seq_key(cert.seq());
                let old_view = match self.prepared.get(key).map_err(fail)? {
                    Some(bytes) => Some(
                        decode_value::<PreparedCertificate>(path, "prepared", bytes.value())?
                            .view(),
                    ),
                    None => None,
                };
                // Never replace a prepared certificate by a lower view's.
                if old_view.is_none_or(|view| view <= cert.view()) {
                    encode_value(path, "prepared", cert, buffer)?;
                    self.prepared.insert(key, buffer.as_slice()).map_err(fail)?;
                }
            }
            Record::StableCheckpoint(cert) => self.stable_checkpoint(path, cert, buffer)?,
            Record::NewView(new_view) => {
                encode_value(path, "state", new_view, buffer)?;
                self.state
                    .insert(STATE_NEW_VIEW, buffer.as_slice())
                    .map_err(fail)?;
            }
        }
        Ok(())
    }

    /// A newer stable checkpoint replaces the old one and discards the
    /// prepared certificates and batches at or below it.
    fn stable_checkpoint(
        &mut self,
        path: &Path,
        cert: &CheckpointCertificate,
        buffer: &mut Vec<u8>,
    ) -> Result<(), DiskStorageError> {
        let fail = |error: redb::StorageError| redb_error(path, error);
        let seq = cert.seq();
        let old_seq = match self.state.get(STATE_CHECKPOINT).map_err(fail)? {
            Some(bytes) => {
                Some(decode_value::<CheckpointCertificate>(path, "state", bytes.value())?.seq())
            }
            None => None,
        };
        if old_seq.is_some_and(|old| old >= seq) {
            return Ok(());
        }
        encode_value(path, "state", cert, buffer)?;
        self.state
            .insert(STATE_CHECKPOINT, buffer.as_slice())
            .map_err(fail)?;
        self.prepared
            .retain_in(..=seq_key(seq), |_, _| false)
            .map_err(fail)?;
        self.batches
            .retain_in(..=last_batch_key(seq), |_, _| false)
            .map_err(fail)?;
        Ok(())
    }

    /// Stores a block and its duplicates; returns its encoded size.
    fn deliver(
        &mut self,
        path: &Path,
        delivery: &Delivery,
        buffer: &mut Vec<u8>,
    ) -> Result<usize, DiskStorageError> {
        let fail = |error: redb::StorageError| redb_error(path, error);
        let height = delivery.block.height();
        let key = seq_key(height);
        encode_value(path, "blocks", &*delivery.block, buffer)?;
        let bytes = buffer.len();
        // Re-storing a height: its old encoding may have had more chunks.
        self.blocks
            .retain_in(
                chunk_key(height, 0)..=chunk_key(height, u32::MAX),
                |_, _| false,
            )
            .map_err(fail)?;
        for (index, chunk) in (0u32..).zip(buffer.chunks(BLOCK_CHUNK_BYTES)) {
            self.blocks
                .insert(chunk_key(height, index), chunk)
                .map_err(fail)?;
        }
        if delivery.duplicates.is_empty() {
            self.duplicates.remove(key).map_err(fail)?;
        } else {
            encode_value(path, "duplicates", &delivery.duplicates, buffer)?;
            self.duplicates
                .insert(key, buffer.as_slice())
                .map_err(fail)?;
        }
        Ok(bytes)
    }
}

impl Storage for DiskStorage {
    fn apply(&mut self, records: &[Record], deliveries: &[Delivery]) -> Result<(), StorageError> {
        Ok(self.apply_step(records, deliveries)?)
    }

    fn recover(&self) -> Result<Recovered, StorageError> {
        Ok(self.recover_state()?)
    }
}

impl BlockSource for DiskStorage {
    fn block(&self, height: SeqNum) -> Option<Arc<CommittedBlock>> {
        match self.read_block(height) {
            Ok(found) => found.map(|(block, _)| block),
            Err(error) => {
                // The trait has no error channel: a peer asking for this
                // block gets nothing, and the operator gets the cause.
                tracing::error!(height = height.0, %error, "cannot read a stored block");
                None
            }
        }
    }

    fn last_height(&self) -> SeqNum {
        SeqNum(self.inner.last_height.load(Ordering::Acquire))
    }

    fn duplicates(&self, height: SeqNum) -> Vec<u32> {
        let inner = &*self.inner;
        if let Some((_, duplicates)) = inner.cache().get(height) {
            return duplicates;
        }
        let read = || -> Result<Vec<u32>, DiskStorageError> {
            let txn = inner
                .db
                .begin_read()
                .map_err(|e| redb_error(&inner.path, e))?;
            read_duplicates(inner, &txn, height)
        };
        read().unwrap_or_else(|error| {
            tracing::error!(height = height.0, %error, "cannot read a block's duplicates");
            Vec::new()
        })
    }
}

//! The daemon's crash-safe store: [`DiskStorage`], the disk implementation of
//! the replica's [`Storage`] and [`BlockSource`].
//!
//! The replica never writes; each step it returns [`Record`]s and
//! [`Delivery`]s, and the shell calls [`Storage::apply`] with all of them
//! before it sends anything from that step. `apply` appends the step's new
//! batches and then a **step record** (what a replay needs to redo the
//! step, batches named by where they are) to the **log** (`log.rs`,
//! `step.rs`: checksummed segment files beside the redb file) and syncs it:
//! one `fdatasync` per replica step, however many records (group commit),
//! and from then on the step is durable. It then commits **one redb write
//! transaction** with the same writes, without an fsync, and every 200 ms
//! one with (design notes §51). After a crash redb holds everything up to
//! its last durable commit, which names the log position it covers, and
//! the open redoes the step records after it: either every record and
//! block of a step is back or none is, and every step whose `apply`
//! returned is back.
//!
//! # Why redb
//!
//! - Pure Rust: no C++ toolchain and FFI (rocksdb), nothing `unsafe` added
//!   to the node's build.
//! - ACID with copy-on-write B-trees: a commit writes new pages, then a
//!   checksummed header pointing at the new root, and fsyncs before
//!   `commit` returns; a crash at any point leaves the last committed tree.
//!   That is exactly "all of a step or none".
//! - One file, one writer, locked: a second process cannot open the store
//!   and sign from the same safety state.
//! - Well maintained: regular releases, a fuzzer, and a changelog of
//!   crash-recovery fixes. sled's stable line dates from 2021 and its
//!   rewrite is still alpha.
//!
//! The first version kept everything in redb, arguing that a hand-written
//! log would win back at most redb's CPU share of a step. That missed the
//! restart: after a crash redb walks its whole file, and the file held
//! every batch (3 s at 10 million transactions). Since format 6 the
//! batches, 98 % of the bytes, are in a log of our own beside the file
//! (`log.rs`, design notes §50): append-only segments with per-record
//! checksums, the only parts a hand-written log needs when nothing in it
//! is ever updated in place.
//!
//! redb 4.x rather than the 2.6 the workspace first named: 4.2–4.6 fixed
//! crash-recovery bugs that are our failure model (a crash while the file
//! grows leaving it unopenable; a crash during the recovery from an earlier
//! crash rolling back durable commits; repair falling back to a commit slot
//! whose checksum failed, opening a damaged file as empty) and turned
//! several panics on damaged files into `Corrupted` errors; none of this was
//! backported to 2.6. redb 4 needs Rust 1.90 (the workspace's
//! `rust-version`).
//!
//! # Layout
//!
//! One redb file (the `path` given to [`DiskStorage::open`]; the daemon
//! puts it in its data directory) and the batch log's directory beside it
//! (`<path>.batches/`, segments `<16 hex digits>.seg`). Values are encoded
//! with [`bftd_protocol::codec`]; integer keys are big-endian, so byte
//! order is numeric order and range scans come out sorted.
//!
//! | table        | key                                  | value                                  |
//! |--------------|--------------------------------------|----------------------------------------|
//! | `meta`       | `"format"`, `"identity"`, `"log"`    | `u32` ([`FORMAT_VERSION`]), [`StoreIdentity`], where the log stood after this commit's step (segment, offset, next step number) |
//! | `state`      | `"safety"`, `"stable_checkpoint"`, `"new_view"`, `"suspicion"` | `SafetyState`, `CheckpointCertificate`, `Signed<NewView>`, `Vec<Signed<Suspect>>` |
//! | `prepared`   | seq (8 bytes)                        | `PreparedCertificate`                  |
//! | `batch_log`  | seq (8) ‖ digest (32)                | where the batch is in the log: segment, offset, length |
//! | `batch_chunks` | seq (8) ‖ digest (32) ‖ chunk index (4) | ≤ 32 KiB piece of a `Batch` written by format 4 or 5 |
//! | `pending`    | seq (8) ‖ digest (32)                | nothing: the batch is pending          |
//! | `headers`    | height (8)                           | the block without its batch, and its certificate |
//! | `blocks`     | height (8) ‖ chunk index (4)         | ≤ 32 KiB piece of a `CommittedBlock` written by format ≤ 3 |
//! | `duplicates` | height (8)                           | `Vec<u32>`, only when non-empty        |
//! | `executed`   | height (8)                           | `Vec<RequestKey>` executed in the block (format 3) |
//!
//! **A batch is written once** (format 4; to the log since format 6):
//! when the replica records it (`Record::Batch`, at a pre-prepare), under
//! its sequence number and digest. Executing it writes a header (height,
//! previous hash, digest, certificate) that refers to it; a block whose
//! batch was never recorded here (fetched by state transfer) brings it. A
//! stable checkpoint deletes a pending batch only if no block was made of
//! it. Before format 4 the batch was written whole at the pre-prepare and
//! again inside the block: at 10,000 tx/s a node wrote 16–18 bytes to disk
//! per byte of payload, 2.2–2.5 after (design notes §39). A store of format
//! 4 or 5 is upgraded in place by the first open: its batches stay in
//! `batch_chunks` and are read and deleted there, new ones go to the log
//! (§50). A store of format 2 or 3 too: its few pending batches move to
//! `batch_chunks`, its blocks stay in `blocks` and are read from there.
//!
//! Values larger than a page are stored in chunks (old blocks and batches)
//! because redb gives a value larger than a page a power-of-two run of
//! pages: whole 630 KB blocks took 2.2× their size on disk, 32 KiB chunks
//! take 1.13×. Reading a block back checks that its chunks are 0, 1, 2, …
//! and that it is stored under its own height; reading a batch from the
//! log checks its record's checksum and that it is the batch the index
//! says.
//!
//! The semantics are [`bftd_protocol::MemStorage`]'s, checked by the shared
//! `bftd_protocol::storage::suite`: records apply in order; a prepared
//! certificate is never replaced by one of a lower view; a newer stable
//! checkpoint discards the prepared certificates and pending batches at or
//! below it (an older one changes nothing); blocks are kept, with their
//! duplicates and the keys of the requests they executed, forever unless
//! [`StorageOptions::retain_blocks`] is set (then a stable checkpoint `s`
//! prunes the blocks below `s - retain_blocks`).
//!
//! # Durability and atomicity
//!
//! [`Storage::apply`] returns once its step record is synced in the log.
//! Its redb transaction is committed after that with `Durability::None`
//! (no fsync; redb keeps the commit's header in memory and writes it with
//! the next durable commit), except every `DURABLE_EVERY` (200 ms, `write.rs`)
//! and for a jump, which are committed with `Durability::Immediate`. redb
//! writes a commit's pages to free space only (copy-on-write), then, for a
//! durable commit, the header slot naming the new roots with a checksum;
//! after a crash, open takes the newest slot whose checksum verifies, else
//! the previous one: the store as after its last durable commit. Every
//! commit records in `meta/log` where the log stood after its step, so the
//! open then reads the log from the position that commit names and redoes
//! each step record after it, in order, with the same code that wrote it
//! (`write.rs`), on the same redb state the step saw, and ends with a
//! durable commit. Step records are numbered: a step missing in the middle,
//! or a damaged one with intact ones after it, is refused as damage (a
//! torn last record is the step a crash interrupted, never acknowledged).
//! The in-memory views (last height, block cache) are updated only after
//! the commit. An `apply` that fails before its log sync leaves nothing of
//! the step; one that fails after it (a failed commit) leaves a step the
//! next open redoes, and redb refuses writes until reopened, so the shell
//! must treat an `apply` error as fatal and stop without sending anything
//! of that step.
//!
//! [`CommitMode`] applies to the durable commits. The default
//! [`CommitMode::OnePhase`] costs one fsync per durable commit, whatever
//! the store's size. redb's alternative, two-phase commit with quick repair
//! ([`CommitMode::TwoPhaseQuickRepair`]), makes reopening after a crash
//! instant but writes redb's whole allocator state with every commit, a
//! cost that grows with the store (measured below: 0.1 ms at 0 GB, 1 ms at
//! 8 GB per commit, CPU alone) — and this store grows forever. A crash is
//! rare, a commit is every step: we pay at restart. redb documents one more
//! reason for two-phase commit, a torn commit forged past the checksum by a
//! writer who controls the flush order and crashes the process during
//! fsync; that is control of the node's host, which PBFT already counts as
//! one of the f faulty nodes.
//!
//! A new store's directory entry is fsync'd after creation, so the file
//! survives a power loss, not only a process kill.
//!
//! # Identity
//!
//! [`DiskStorage::open_for`] records the node's key and committee in a new
//! store and refuses a store recorded for another node or committee (a
//! store with no identity yet adopts the given one). [`DiskStorage::open`]
//! checks only the format: for tools and tests. Both refuse, with an error
//! naming the path ([`DiskStorageError`]): a store another process (or
//! another handle in this one) holds, a file that is not a redb database,
//! a redb database that is not a bftd store, a store of another format
//! version, and a file redb finds damaged (redb trusts a cleanly closed
//! file and may panic on one damaged behind its back; that panic is caught
//! at open and reported as damage).
//!
//! # Performance
//!
//! `last_height` is an atomic, updated after each commit. Decoded blocks
//! are kept in a small LRU ([`StorageOptions::block_cache_entries`]), filled
//! as blocks are stored (the shell already holds the `Arc`) and as they are
//! read by `block`; `blocks_from` uses it but does not fill it, so a
//! subscriber reading history does not evict what peers catching up ask
//! for. The cache is worth it: a hit costs 40–70 ns, a read and decode of a
//! 1000-request block 0.5–1.3 ms.
//!
//! Measured with
//! `CARGO_TARGET_DIR=/work/target-storage cargo test -p bftd --release --test storage -- --ignored storage_latency --nocapture`
//! (a typical step: safety state, one 1000×512-byte batch, its block with
//! a 3-vote certificate, ~1.26 MB encoded; 400 steps per mode, the modes
//! interleaved step by step so both see the same load; the disk's own
//! fdatasync of 4 KiB sampled between the steps). On the project's machine
//! (2 vCPUs, ext4 on a virtual disk), shared with the lead's builds and test
//! clusters: one run while it was quieter (fdatasync p50 0.28 ms), three
//! while it was busy (fdatasync p50 3.7–3.8 ms, not the 0.12 ms DESIGN.md
//! measured on an idle disk), and one on tmpfs (`TMPDIR=/dev/shm`: the CPU
//! cost alone). p50 / p99:
//!
//! | measurement                          | quieter disk   | busy disk            | tmpfs            |
//! |--------------------------------------|----------------|----------------------|------------------|
//! | `apply` typical, `OnePhase`          | 8.1 / 17 ms    | 8.3–12 / 20–43 ms    | 1.8 / 8.4 ms     |
//! | `apply` typical, `TwoPhaseQuickRepair` | 9.1 / 24 ms  | 16–21 / 28–50 ms     | 2.0 / 8.1 ms     |
//! | `apply` safety only, `OnePhase`      | 0.86 / 9.6 ms  | 4.9–7.9 / 15–16 ms   | 0.10 / 0.21 ms   |
//! | `apply` safety only, `TwoPhaseQuickRepair` | 1.4 / 12 ms | 7.8–7.9 / 16–20 ms | 0.24 / 0.46 ms   |
//! | `block`, cache hit                   | 61 ns / 1.1 µs | 40–70 ns / ~1 µs     | 40 ns / 0.7 µs   |
//! | `block`, no cache (read, decode)     | 0.51 / 0.77 ms | 0.54–1.3 / 5–7 ms    | 0.48 / 4.8 ms    |
//! | encode a typical block (reference)   | 64 / 258 µs    |                      | 43 / 89 µs       |
//!
//! A typical step is bound by the bytes it writes (~1.7 MB of pages: the
//! batch record, the block's chunks, tree pages), a safety-only step by one
//! fsync. The files took 682 MB of disk for 512 MB of encoded blocks and
//! batches (the batches were never discarded in this run).
//!
//! Reopening after a SIGKILL: with `OnePhase` (a full repair) 164–576 ms
//! for stores of 277–554 MB (523 ms for 554 MB on tmpfs: the checksum walk
//! is CPU-bound, ~1 GB/s); with `TwoPhaseQuickRepair` 0.4–30 ms whatever
//! the size. Outside this test, in a throwaway redb program on the same
//! disk: a full repair took 3.3 s for 1 GB and 7.3 s for 4 GB, and a small
//! commit with quick repair took 0.10 / 0.32 / 0.49 / 0.96 ms (tmpfs) at
//! 0 / 1 / 4 / 8 GB of store, against 0.04–0.06 ms throughout for one-phase
//! commit.
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
mod check;
mod error;
mod layout;
mod log;
mod open;
mod read;
mod step;
#[cfg(test)]
pub(crate) mod tests;
mod write;

pub use check::{CheckError, StoreCheck};
pub use error::DiskStorageError;
pub use layout::{StoreIdentity, FORMAT_VERSION, OLDEST_UPGRADABLE_FORMAT};

use bftd_protocol::codec;
use bftd_protocol::storage::executed_keys;
use bftd_protocol::{
    BlockSource, CommittedBlock, Delivery, Record, Recovered, RequestKey, SeqNum, Storage,
    StorageError,
};
use cache::BlockCache;
use redb::{Database, ReadableDatabase};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
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
    /// Blocks kept below the stable checkpoint (`[storage] retain_blocks`);
    /// `None` keeps every block. See [`DiskStorage::first_height`].
    pub retain_blocks: Option<u64>,
}

/// How a write transaction is made durable. Both fsync before `apply`
/// returns and both are atomic; they trade the cost of every commit against
/// the cost of the restart after a crash (measured in the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CommitMode {
    /// One fsync per commit, at a cost independent of the store's size.
    /// After a crash redb finds the last complete commit by its checksum and
    /// rebuilds its allocator state by walking the whole file: the first
    /// open takes time proportional to the store. The default.
    #[default]
    OnePhase,
    /// Two fsyncs per commit (data, then the header's commit bit) and
    /// redb's whole allocator state written with every commit: reopening
    /// after a crash takes milliseconds, but every commit costs more as the
    /// store grows (~0.1 ms of CPU per GB of store, measured).
    TwoPhaseQuickRepair,
}

impl Default for StorageOptions {
    fn default() -> StorageOptions {
        StorageOptions {
            block_cache_entries: 64,
            block_cache_bytes: 64 * 1024 * 1024,
            page_cache_bytes: 64 * 1024 * 1024,
            commit: CommitMode::OnePhase,
            retain_blocks: None,
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
    /// The lowest stored height (1 until blocks are pruned), updated after
    /// each commit that prunes.
    first_height: AtomicU64,
    /// The cluster's `request_lifetime`, from the store's identity (if it
    /// has one): how far back the `executed` table must reach.
    request_lifetime: Option<u64>,
    /// Pruning keeps every block from this height on (`u64::MAX`: no
    /// hold); see [`DiskStorage::hold_from`].
    held_from: AtomicU64,
    cache: Mutex<BlockCache>,
    /// The batch log's writer; readers need only [`Self::log_dir`].
    log: Mutex<log::BatchLog>,
    log_dir: PathBuf,
    /// Set by a test's crash point: the redb file takes no more writes.
    #[cfg(test)]
    crashed: Arc<std::sync::atomic::AtomicBool>,
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
        #[cfg(test)]
        let crashed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let db = open::open_database(
            path,
            options,
            #[cfg(test)]
            &crashed,
        )?;
        let opened = open::initialize(&db, path, identity, options)?;
        let log = log::BatchLog::open(path, opened.live, opened.durable)?;
        let from = opened.durable.unwrap_or_else(|| log.position());
        let storage = DiskStorage {
            inner: Arc::new(Inner {
                db,
                path: path.to_path_buf(),
                options: options.clone(),
                last_height: AtomicU64::new(opened.last_height.0),
                first_height: AtomicU64::new(opened.first_height.0),
                request_lifetime: opened.request_lifetime,
                held_from: AtomicU64::new(u64::MAX),
                cache: Mutex::new(BlockCache::new(
                    options.block_cache_entries,
                    options.block_cache_bytes,
                )),
                log_dir: log.directory().to_path_buf(),
                log: Mutex::new(log),
                #[cfg(test)]
                crashed,
            }),
        };
        let redone = storage.replay(from)?;
        if redone > 0 {
            tracing::info!(path = %path.display(), steps = redone, "redid the steps the log held after the last durable commit");
        }
        Ok(storage)
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The oldest block height the store holds: 1, until
    /// [`StorageOptions::retain_blocks`] pruned what lies below. Every
    /// block from here to the last height is stored.
    pub fn first_height(&self) -> SeqNum {
        SeqNum(self.inner.first_height.load(Ordering::Acquire))
    }

    /// From now on, pruning keeps every block from `height` on, however far
    /// below the stable checkpoint: the next block the node's embedded
    /// application needs, moved as it is fed (design notes §48). Without
    /// it an application slower than pruning would lose its next block on
    /// its own node. A jump past pruned history still drops what lies below
    /// its checkpoint (those blocks do not connect to what follows).
    pub fn hold_from(&self, height: SeqNum) {
        self.inner.held_from.store(height.0, Ordering::Release);
    }
}

/// Whether `record`, a batch log record (header and body), is the intact
/// record of the batch stored under `(seq, digest)` and decodes: the check
/// every read from the log makes. Public for the fuzzer: the log's bytes
/// come from a disk that may be damaged.
pub fn check_log_record(record: &[u8], seq: SeqNum, digest: &bftd_crypto::Digest) -> bool {
    log::check(record, layout::batch_key(seq, digest)).is_ok()
}

/// A batch log record of `body` as the batch `(seq, digest)`: header and
/// body, as the log writes it. For the fuzzer, which needs intact records
/// to reach the batch decoder behind the checksum.
#[doc(hidden)]
pub fn log_record(seq: SeqNum, digest: &bftd_crypto::Digest, body: &[u8]) -> Vec<u8> {
    log::record(seq, digest, body)
}

/// Whether `body` decodes as a step record, what the open's replay decodes
/// from the log after a crash (design notes §51). For the fuzzer: the
/// log's bytes come from a disk that may be damaged.
#[doc(hidden)]
pub fn decode_step_record(body: &[u8]) -> bool {
    codec::decode::<Vec<step::Entry>>(body).is_ok()
}

impl Inner {
    fn cache(&self) -> MutexGuard<'_, BlockCache> {
        // A poisoned lock only means another thread panicked mid-update; the
        // cache is still structurally sound (and only a cache).
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The batch log's writer, with nothing staged: a step that failed or
    /// panicked may have left its staging behind (it wrote nothing that
    /// the index refers to).
    fn log(&self) -> MutexGuard<'_, log::BatchLog> {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.aborted();
        log
    }

    /// A test's crash point: from here on the redb file takes no writes.
    #[cfg(test)]
    fn crash(&self) {
        self.crashed
            .store(true, std::sync::atomic::Ordering::Release);
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

/// Maps a redb error to ours: damage is [`DiskStorageError::Corrupted`],
/// everything else [`DiskStorageError::Backend`].
pub(super) fn redb_error(path: &Path, error: impl Into<redb::Error>) -> DiskStorageError {
    let path = path.to_path_buf();
    match error.into() {
        source @ redb::Error::Corrupted(_) => DiskStorageError::Corrupted { path, source },
        source => DiskStorageError::Backend { path, source },
    }
}

pub(super) fn encode_value<T: Serialize + ?Sized>(
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

pub(super) fn decode_value<T: DeserializeOwned>(
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
        if height < DiskStorage::first_height(self) {
            // Pruned (a cached copy may linger): not held.
            return None;
        }
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

    fn first_height(&self) -> SeqNum {
        DiskStorage::first_height(self)
    }

    fn executed_from(&self) -> SeqNum {
        let first = DiskStorage::first_height(self);
        match self.first_executed() {
            Ok(Some(height)) => height.min(first),
            Ok(None) => first,
            Err(error) => {
                tracing::error!(%error, "cannot read the executed requests' first height");
                first
            }
        }
    }

    fn executed(&self, height: SeqNum) -> Option<Vec<RequestKey>> {
        match self.read_executed(height) {
            Ok(Some(keys)) => Some(keys),
            // Not recorded (cannot happen in a store of this format, but a
            // missing index entry must not lose at-most-once): the block.
            Ok(None) => {
                let block = self.block(height)?;
                Some(executed_keys(&block, &self.duplicates(height)))
            }
            Err(error) => {
                tracing::error!(height = height.0, %error, "cannot read a block's executed requests");
                None
            }
        }
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
            read::read_duplicates(inner, &txn, height)
        };
        read().unwrap_or_else(|error| {
            tracing::error!(height = height.0, %error, "cannot read a block's duplicates");
            Vec::new()
        })
    }
}

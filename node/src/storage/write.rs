//! Writing: one replica step as one step record synced in the log (durable
//! from then on) and one atomic redb write transaction; and the open's
//! replay of the steps redb lost in a crash.

use super::layout::{
    batch_chunk_key, batch_from_key, batch_key, chunk_from_key, chunk_key, last_batch_key, seq_key,
    BatchChunkKey, BatchKey, ChunkKey, SeqKey, StoredHeader, BATCH_CHUNKS, BATCH_LOG, BLOCKS,
    BLOCK_CHUNK_BYTES, DUPLICATES, EXECUTED, HEADERS, META, META_LOG, PENDING, PREPARED, STATE,
    STATE_CHECKPOINT, STATE_NEW_VIEW, STATE_SAFETY, STATE_SUSPICION,
};
use super::log::{self, BatchLog, Location, LocationBytes, LoggedStep, Position};
use super::step::{Entry, EntryRef, Stored, StoredRef};
use super::{
    decode_value, encode_value, redb_error, CommitMode, DiskStorage, DiskStorageError,
    StorageOptions,
};
use bftd_crypto::Digest;
use bftd_protocol::storage::executed_keys;
use bftd_protocol::{
    codec, Batch, Block, CheckpointCertificate, CommittedBlock, Delivery, JumpRecord,
    PreparedCertificate, Record, SeqNum,
};
use redb::{Database, Durability, ReadableTable, WriteTransaction};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How long redb commits go without an fsync: the steps since the last
/// durable commit are in the log, and a restart after a crash redoes them
/// (at most this long's worth). A durable commit flushes every page redb
/// dirtied since the one before; at 50,000 tx/s, once a second made that
/// flush a stall (p99 659 -> 1,010 ms), every 200 ms it is not (686 ms),
/// and it still writes a third fewer bytes at 25,000 tx/s (design notes
/// §51).
pub(super) const DURABLE_EVERY: Duration = Duration::from_millis(200);

/// A write transaction with the durability this module promises.
pub(super) fn begin_write(
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

impl DiskStorage {
    /// The whole of [`Storage::apply`]: the step's batches and then its
    /// step record appended to the log and synced (the step is durable
    /// from here on), then one redb write transaction with the same writes
    /// committed (with an fsync only if [`DURABLE_EVERY`] has passed), then
    /// the in-memory views (last height, cache) updated.
    pub(super) fn apply_step(
        &self,
        records: &[Record],
        deliveries: &[Delivery],
    ) -> Result<(), DiskStorageError> {
        let inner = &*self.inner;
        let path = inner.path.as_path();
        let fail = |error: redb::Error| redb_error(path, error);
        let mut log = inner.log();
        let mut txn = begin_write(&inner.db, &inner.options).map_err(|e| fail(e.into()))?;
        let mut entries = Vec::with_capacity(records.len().saturating_add(deliveries.len()));
        let mut stored = Vec::with_capacity(deliveries.len());
        let mut buffer = Vec::new();
        let written = {
            let mut tables = WriteTables::open(&txn, &mut log, inner.request_lifetime)
                .map_err(|e| fail(e.into()))?;
            tables.retain_blocks = inner.options.retain_blocks;
            tables.held_from = SeqNum(inner.held_from.load(Ordering::Acquire));
            for record in records {
                if let Some(entry) = tables.record(path, record, &mut buffer)? {
                    entries.push(entry);
                }
            }
            for delivery in deliveries {
                let (bytes, entry) = tables.deliver(path, delivery, &mut buffer)?;
                entries.push(entry);
                stored.push((delivery.block.clone(), delivery.duplicates.clone(), bytes));
            }
            Written {
                pruned_to: tables.pruned_to,
                jumped_to: tables.jumped_to,
            }
        };
        // A jump (rare, and carrying a whole window's executed keys) is not
        // logged: its commit is made durable instead.
        let durable = written.jumped_to.is_some() || log.durable_due();
        if written.jumped_to.is_none() {
            encode_value(path, "log", &entries, &mut buffer)?;
            log.stage_step(&buffer)?;
        }
        let position = log.position();
        write_position(&txn, path, position, &mut buffer)?;
        if !durable {
            txn.set_durability(Durability::None)
                .map_err(|e| fail(e.into()))?;
        }
        // Returning early on an error drops `txn`, which aborts it: nothing
        // of the step is in redb, and the log holds at most bytes no
        // position names, or a synced step record a restart redoes.
        log.sync()?;
        #[cfg(test)]
        if log
            .crash_at
            .is_some_and(|at| at != super::log::CrashPoint::AfterCommit)
        {
            inner.crash();
            return Err(super::log::crashed());
        }
        txn.commit().map_err(|e| fail(e.into()))?;
        #[cfg(test)]
        if log.crash_at == Some(super::log::CrashPoint::AfterCommit) {
            inner.crash();
            return Err(super::log::crashed());
        }
        log.committed();
        if durable {
            log.made_durable(position);
        }
        drop(log);
        self.after_commit(written, stored);
        Ok(())
    }

    /// The in-memory views after a commit: first and last height, the
    /// cache.
    fn after_commit(&self, written: Written, stored: Vec<(Arc<CommittedBlock>, Vec<u32>, usize)>) {
        let inner = &*self.inner;
        if let Some(first) = written.pruned_to {
            inner.first_height.fetch_max(first.0, Ordering::AcqRel);
        }
        if let Some(height) = written.jumped_to {
            // The checkpoint's block is now the only one below what follows.
            inner.first_height.fetch_max(height.0, Ordering::AcqRel);
            inner.last_height.fetch_max(height.0, Ordering::AcqRel);
        }
        let mut cache = inner.cache();
        for (block, duplicates, bytes) in stored {
            inner
                .last_height
                .fetch_max(block.height().0, Ordering::AcqRel);
            cache.insert(block, duplicates, bytes);
        }
    }

    /// Redoes the steps the log holds after `from`, the position of the
    /// last durable commit (see `step.rs`), each in a transaction of its
    /// own, then commits durably. Called by the open, before anything else
    /// reads or writes the store.
    pub(super) fn replay(&self, from: Position) -> Result<usize, DiskStorageError> {
        let inner = &*self.inner;
        let path = inner.path.as_path();
        let fail = |error: redb::Error| redb_error(path, error);
        let steps = log::steps_from(&inner.log_dir, from)?;
        let count = steps.len();
        let mut buffer = Vec::new();
        let mut log = inner.log();
        for LoggedStep { step, body, after } in steps {
            let entries: Vec<Entry> =
                decode_value(path, "log", &body).map_err(|error| DiskStorageError::DamagedLog {
                    path: inner.log_dir.clone(),
                    offset: after.offset,
                    reason: format!("step {step} does not decode: {error}"),
                })?;
            let mut txn = begin_write(&inner.db, &inner.options).map_err(|e| fail(e.into()))?;
            txn.set_durability(Durability::None)
                .map_err(|e| fail(e.into()))?;
            let mut stored = Vec::new();
            let written = {
                let mut tables = WriteTables::open(&txn, &mut log, inner.request_lifetime)
                    .map_err(|e| fail(e.into()))?;
                tables.retain_blocks = inner.options.retain_blocks;
                for entry in entries {
                    if let Some(block) = tables.redo(path, &inner.log_dir, entry, &mut buffer)? {
                        stored.push(block);
                    }
                }
                Written {
                    pruned_to: tables.pruned_to,
                    jumped_to: None,
                }
            };
            write_position(&txn, path, after, &mut buffer)?;
            txn.commit().map_err(|e| fail(e.into()))?;
            log.committed();
            log.set_next_step(after.next_step);
            self.after_commit(written, stored);
        }
        // One durable commit for all of them, naming where appends go now
        // (a new segment): the segments before it need no replay again.
        let position = log.position();
        let txn = begin_write(&inner.db, &inner.options).map_err(|e| fail(e.into()))?;
        write_position(&txn, path, position, &mut buffer)?;
        txn.commit().map_err(|e| fail(e.into()))?;
        log.made_durable(position);
        Ok(count)
    }
}

/// A block a step stored, its duplicates, and its encoded size (for the
/// cache).
type StoredDelivery = (Arc<CommittedBlock>, Vec<u32>, usize);

/// What a step's writes changed that the in-memory views follow.
struct Written {
    /// The new first height, if the step pruned blocks.
    pruned_to: Option<SeqNum>,
    /// The checkpoint's height, if the step jumped past pruned history.
    jumped_to: Option<SeqNum>,
}

/// Records in `meta` where the log stands after this transaction's step.
fn write_position(
    txn: &WriteTransaction,
    path: &Path,
    position: Position,
    buffer: &mut Vec<u8>,
) -> Result<(), DiskStorageError> {
    let fail = |error: redb::Error| redb_error(path, error);
    encode_value(path, "meta", &position, buffer)?;
    let mut meta = txn.open_table(META).map_err(|e| fail(e.into()))?;
    meta.insert(META_LOG, buffer.as_slice())
        .map_err(|e| fail(e.into()))?;
    Ok(())
}

/// The tables one step writes, open in its transaction.
struct WriteTables<'txn> {
    state: redb::Table<'txn, &'static str, &'static [u8]>,
    prepared: redb::Table<'txn, SeqKey, &'static [u8]>,
    /// The batch log's index, and the log the step appends to.
    batch_log: redb::Table<'txn, BatchKey, LocationBytes>,
    log: &'txn mut BatchLog,
    /// Batches of formats 4 and 5: only read and deleted.
    batch_chunks: redb::Table<'txn, BatchChunkKey, &'static [u8]>,
    pending: redb::Table<'txn, BatchKey, ()>,
    headers: redb::Table<'txn, SeqKey, &'static [u8]>,
    /// Blocks of formats up to 3: only pruned, and replaced if re-stored.
    blocks: redb::Table<'txn, ChunkKey, &'static [u8]>,
    duplicates: redb::Table<'txn, SeqKey, &'static [u8]>,
    executed: redb::Table<'txn, SeqKey, &'static [u8]>,
    /// See `Inner::request_lifetime`.
    request_lifetime: Option<u64>,
    /// See [`StorageOptions::retain_blocks`].
    retain_blocks: Option<u64>,
    /// See [`DiskStorage::hold_from`].
    held_from: SeqNum,
    /// The new first height, if this step pruned blocks.
    pruned_to: Option<SeqNum>,
    /// The checkpoint's height, if this step jumped past pruned history.
    jumped_to: Option<SeqNum>,
}

/// Most blocks one stable checkpoint prunes: a store that enables
/// `retain_blocks` late (or lowers it) holds many blocks to delete, and
/// deleting them all in one step would hold up that step's commit. At
/// four checkpoint intervals' worth per checkpoint (by default), pruning
/// outpaces growth fourfold and each step's share stays small.
const PRUNE_MAX_BLOCKS: u64 = 256;

impl<'txn> WriteTables<'txn> {
    fn open(
        txn: &'txn WriteTransaction,
        log: &'txn mut BatchLog,
        request_lifetime: Option<u64>,
    ) -> Result<WriteTables<'txn>, redb::TableError> {
        Ok(WriteTables {
            batch_log: txn.open_table(BATCH_LOG)?,
            log,
            executed: txn.open_table(EXECUTED)?,
            request_lifetime,
            retain_blocks: None,
            held_from: SeqNum(u64::MAX),
            pruned_to: None,
            jumped_to: None,
            state: txn.open_table(STATE)?,
            prepared: txn.open_table(PREPARED)?,
            batch_chunks: txn.open_table(BATCH_CHUNKS)?,
            pending: txn.open_table(PENDING)?,
            headers: txn.open_table(HEADERS)?,
            blocks: txn.open_table(BLOCKS)?,
            duplicates: txn.open_table(DUPLICATES)?,
        })
    }

    /// Applies one record with `MemStorage`'s semantics; returns what the
    /// step record says of it (nothing for a jump, which is not logged).
    fn record<'r>(
        &mut self,
        path: &Path,
        record: &'r Record,
        buffer: &mut Vec<u8>,
    ) -> Result<Option<EntryRef<'r>>, DiskStorageError> {
        let fail = |error: redb::StorageError| redb_error(path, error);
        let entry = match record {
            Record::Safety(safety) => {
                encode_value(path, "state", safety, buffer)?;
                self.state
                    .insert(STATE_SAFETY, buffer.as_slice())
                    .map_err(fail)?;
                EntryRef::Safety(safety)
            }
            Record::Batch { seq, digest, batch } => {
                let stored = self.write_batch(path, *seq, digest, batch, buffer)?;
                self.pending
                    .insert(batch_key(*seq, digest), ())
                    .map_err(fail)?;
                EntryRef::Batch {
                    seq: *seq,
                    digest: *digest,
                    stored,
                }
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
                EntryRef::Prepared(cert)
            }
            Record::StableCheckpoint(cert) => {
                self.stable_checkpoint(path, cert, buffer)?;
                EntryRef::StableCheckpoint(cert)
            }
            Record::NewView(new_view) => {
                encode_value(path, "state", new_view, buffer)?;
                self.state
                    .insert(STATE_NEW_VIEW, buffer.as_slice())
                    .map_err(fail)?;
                EntryRef::NewView(new_view)
            }
            Record::Suspicion(suspects) => {
                encode_value(path, "state", suspects, buffer)?;
                self.state
                    .insert(STATE_SUSPICION, buffer.as_slice())
                    .map_err(fail)?;
                EntryRef::Suspicion(suspects)
            }
            Record::Jump(jump) => {
                self.jump(path, jump, buffer)?;
                return Ok(None);
            }
        };
        Ok(Some(entry))
    }

    /// Redoes one entry of a logged step (see `step.rs`): the same writes
    /// as [`Self::record`] or [`Self::deliver`] made, with each batch
    /// found where the step put it. Returns a redone delivery's block.
    fn redo(
        &mut self,
        path: &Path,
        log_dir: &Path,
        entry: Entry,
        buffer: &mut Vec<u8>,
    ) -> Result<Option<StoredDelivery>, DiskStorageError> {
        let fail = |error: redb::StorageError| redb_error(path, error);
        let record = match entry {
            Entry::Safety(safety) => Record::Safety(safety),
            Entry::Prepared(cert) => Record::Prepared(cert),
            Entry::StableCheckpoint(cert) => Record::StableCheckpoint(cert),
            Entry::NewView(new_view) => Record::NewView(new_view),
            Entry::Suspicion(suspects) => Record::Suspicion(suspects),
            Entry::Batch {
                seq,
                digest,
                stored,
            } => {
                self.place_batch(path, seq, &digest, &stored, buffer)?;
                self.pending
                    .insert(batch_key(seq, &digest), ())
                    .map_err(fail)?;
                return Ok(None);
            }
            Entry::Deliver {
                height,
                prev_hash,
                batch_digest,
                certificate,
                duplicates,
                stored,
            } => {
                self.place_batch(path, height, &batch_digest, &stored, buffer)?;
                let batch = match stored {
                    Stored::Here(batch) => batch,
                    Stored::Before | Stored::Log(_) => {
                        let found = super::read::read_batch(
                            path,
                            log_dir,
                            &self.batch_log,
                            &self.batch_chunks,
                            height,
                            &batch_digest,
                        )?;
                        let (batch, _) = found.ok_or(DiskStorageError::BrokenBatch {
                            path: path.to_path_buf(),
                            seq: height,
                            digest: batch_digest,
                            chunk: 0,
                        })?;
                        Arc::unwrap_or_clone(batch)
                    }
                };
                let delivery = Delivery {
                    block: Arc::new(CommittedBlock {
                        block: Block {
                            height,
                            prev_hash,
                            batch_digest,
                            batch: Arc::new(batch),
                        },
                        certificate,
                    }),
                    duplicates,
                    tree: None,
                };
                let (bytes, _) = self.deliver(path, &delivery, buffer)?;
                return Ok(Some((delivery.block, delivery.duplicates, bytes)));
            }
        };
        self.record(path, &record, buffer)?;
        Ok(None)
    }

    /// Puts a replayed step's batch where the step put it: its chunk, or
    /// its index entry (the record is in the log already).
    fn place_batch(
        &mut self,
        path: &Path,
        seq: SeqNum,
        digest: &Digest,
        stored: &Stored,
        buffer: &mut Vec<u8>,
    ) -> Result<(), DiskStorageError> {
        let fail = |error: redb::StorageError| redb_error(path, error);
        match stored {
            Stored::Before => {}
            Stored::Here(batch) => {
                encode_value(path, "batch_chunks", batch, buffer)?;
                self.batch_chunks
                    .insert(batch_chunk_key(seq, digest, 0), buffer.as_slice())
                    .map_err(fail)?;
            }
            Stored::Log(location) => {
                let previous = self
                    .batch_log
                    .insert(batch_key(seq, digest), *location)
                    .map_err(fail)?;
                if previous.is_none() {
                    self.log.referenced(Location::from_bytes(*location).segment);
                }
            }
        }
        Ok(())
    }

    /// A jump past pruned history (`MemStorage`'s semantics): every block
    /// at or below the checkpoint goes, with its batch, duplicates and
    /// executed keys, and the pending batches and prepared certificates
    /// there; the checkpoint's block is stored as the first block, the
    /// window's executed keys below it, and the checkpoint installed
    /// (unless a later one is).
    fn jump(
        &mut self,
        path: &Path,
        jump: &JumpRecord,
        buffer: &mut Vec<u8>,
    ) -> Result<(), DiskStorageError> {
        let fail = |error: redb::StorageError| redb_error(path, error);
        let above = jump.checkpoint.seq().next();
        self.delete_below(path, above)?;
        self.prepared
            .retain_in(..seq_key(above), |_, _| false)
            .map_err(fail)?;
        let delivery = Delivery {
            block: jump.block.clone(),
            duplicates: jump.duplicates.clone(),
            tree: None,
        };
        self.deliver(path, &delivery, buffer)?;
        for (height, keys) in &jump.executed {
            encode_value(path, "executed", keys, buffer)?;
            self.executed
                .insert(seq_key(*height), buffer.as_slice())
                .map_err(fail)?;
        }
        self.stable_checkpoint(path, &jump.checkpoint, buffer)?;
        self.jumped_to = Some(jump.block.height());
        Ok(())
    }

    /// A newer stable checkpoint replaces the old one and discards the
    /// prepared certificates and pending batches at or below it (a batch's
    /// bytes stay if it is its height's block's batch).
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
        let discarded = self
            .pending
            .extract_from_if(..=last_batch_key(seq), |_, _| true)
            .map_err(fail)?
            .map(|entry| entry.map(|(key, _)| key.value()))
            .collect::<Result<Vec<BatchKey>, _>>()
            .map_err(fail)?;
        for key in discarded {
            let (at, digest) = batch_from_key(key);
            if !self.is_block_batch(path, at, &digest)? {
                self.delete_batch(path, at, &digest)?;
            }
        }
        // What executed at or below `seq - lifetime` is forgotten by the
        // table of any replica past `seq` (it has expired): a restart never
        // reads it again.
        if let Some(lifetime) = self.request_lifetime {
            let keep_from = seq.0.saturating_add(1).saturating_sub(lifetime);
            self.executed
                .retain_in(..seq_key(SeqNum(keep_from)), |_, _| false)
                .map_err(fail)?;
        }
        if let Some(retain) = self.retain_blocks {
            let keep_from = SeqNum(seq.0.saturating_sub(retain)).min(self.held_from);
            self.prune(path, keep_from)?;
        }
        Ok(())
    }

    /// Deletes the blocks below `keep_from` (headers and batches, or old
    /// blocks' chunks, duplicates and executed keys), at most
    /// [`PRUNE_MAX_BLOCKS`] of them, oldest first.
    fn prune(&mut self, path: &Path, keep_from: SeqNum) -> Result<(), DiskStorageError> {
        let fail = |error: redb::StorageError| redb_error(path, error);
        let first_old = self
            .blocks
            .first()
            .map_err(fail)?
            .map(|(key, _)| chunk_from_key(key.value()).0);
        let first_new = self
            .headers
            .first()
            .map_err(fail)?
            .map(|(key, _)| SeqNum(u64::from_be_bytes(key.value())));
        let Some(first) = first_old.into_iter().chain(first_new).min() else {
            return Ok(());
        };
        if first >= keep_from {
            return Ok(());
        }
        let to = SeqNum(keep_from.0.min(first.0.saturating_add(PRUNE_MAX_BLOCKS)));
        self.delete_below(path, to)?;
        self.pruned_to = Some(to);
        Ok(())
    }

    /// Deletes every block below `to`: old blocks' chunks, headers, batches
    /// (pending ones too), duplicates and executed keys.
    fn delete_below(&mut self, path: &Path, to: SeqNum) -> Result<(), DiskStorageError> {
        let fail = |error: redb::StorageError| redb_error(path, error);
        self.blocks
            .retain_in(..chunk_key(to, 0), |_, _| false)
            .map_err(fail)?;
        self.headers
            .retain_in(..seq_key(to), |_, _| false)
            .map_err(fail)?;
        self.batch_chunks
            .retain_in(..batch_chunk_key(to, &Digest::ZERO, 0), |_, _| false)
            .map_err(fail)?;
        let freed = self
            .batch_log
            .extract_from_if(..batch_key(to, &Digest::ZERO), |_, _| true)
            .map_err(fail)?
            .map(|entry| entry.map(|(_, location)| Location::from_bytes(location.value())))
            .collect::<Result<Vec<Location>, _>>()
            .map_err(fail)?;
        for location in freed {
            self.log.free(location.segment);
        }
        self.pending
            .retain_in(..batch_key(to, &Digest::ZERO), |_, _| false)
            .map_err(fail)?;
        self.duplicates
            .retain_in(..seq_key(to), |_, _| false)
            .map_err(fail)?;
        self.executed
            .retain_in(..seq_key(to), |_, _| false)
            .map_err(fail)?;
        Ok(())
    }

    /// Stores a block and its duplicates; returns its encoded size and
    /// what the step record says of it. The batch is written only if it is
    /// not there already (it is whenever this replica accepted the
    /// pre-prepare that ordered it).
    fn deliver<'d>(
        &mut self,
        path: &Path,
        delivery: &'d Delivery,
        buffer: &mut Vec<u8>,
    ) -> Result<(usize, EntryRef<'d>), DiskStorageError> {
        let fail = |error: redb::StorageError| redb_error(path, error);
        let block = &delivery.block.block;
        let height = block.height;
        let key = seq_key(height);
        let stored = self.write_batch(path, height, &block.batch_digest, &block.batch, buffer)?;
        let batch_bytes = match &stored {
            StoredRef::Before => encoded_len(path, &block.batch)?,
            StoredRef::Here(_) => buffer.len(),
            StoredRef::Log(location) => Location::from_bytes(*location).len as usize,
        };
        let header = StoredHeader {
            height,
            prev_hash: block.prev_hash,
            batch_digest: block.batch_digest,
            certificate: delivery.block.certificate.clone(),
        };
        encode_value(path, "headers", &header, buffer)?;
        let bytes = buffer.len().saturating_add(batch_bytes);
        self.headers.insert(key, buffer.as_slice()).map_err(fail)?;
        // A store of format 3 re-storing a height it holds the old way: the
        // header replaces it.
        self.blocks
            .retain_in(
                chunk_key(height, 0)..=chunk_key(height, u32::MAX),
                |_, _| false,
            )
            .map_err(fail)?;
        let executed = executed_keys(&delivery.block, &delivery.duplicates);
        encode_value(path, "executed", &executed, buffer)?;
        self.executed.insert(key, buffer.as_slice()).map_err(fail)?;
        if delivery.duplicates.is_empty() {
            self.duplicates.remove(key).map_err(fail)?;
        } else {
            encode_value(path, "duplicates", &delivery.duplicates, buffer)?;
            self.duplicates
                .insert(key, buffer.as_slice())
                .map_err(fail)?;
        }
        let entry = EntryRef::Deliver {
            height,
            prev_hash: block.prev_hash,
            batch_digest: block.batch_digest,
            certificate: &delivery.block.certificate,
            duplicates: &delivery.duplicates,
            stored,
        };
        Ok((bytes, entry))
    }

    /// Writes a batch unless it is stored (in the log, or in chunks);
    /// returns where it is for the step record (after a chunk, `buffer`
    /// holds its encoding). A batch's digest is the
    /// Merkle root of its requests, so what is stored under `(seq, digest)`
    /// is this batch.
    ///
    /// A batch of one chunk or less stays in redb, in the commit the step
    /// makes anyway: in the log it would cost the step a second `fdatasync`
    /// (0.2 ms here for an append) for a few kilobytes. A larger batch goes
    /// to the log, where it is written once, sequentially, and never
    /// walked by redb's repair (design notes §50).
    fn write_batch<'b>(
        &mut self,
        path: &Path,
        seq: SeqNum,
        digest: &Digest,
        batch: &'b Batch,
        buffer: &mut Vec<u8>,
    ) -> Result<StoredRef<'b>, DiskStorageError> {
        let fail = |error: redb::StorageError| redb_error(path, error);
        let key = batch_key(seq, digest);
        if self.batch_log.get(key).map_err(fail)?.is_some()
            || self
                .batch_chunks
                .get(batch_chunk_key(seq, digest, 0))
                .map_err(fail)?
                .is_some()
        {
            return Ok(StoredRef::Before);
        }
        if encoded_len(path, batch)? > BLOCK_CHUNK_BYTES {
            let location = self.log.stage(seq, digest, batch)?;
            self.batch_log
                .insert(key, location.to_bytes())
                .map_err(fail)?;
            return Ok(StoredRef::Log(location.to_bytes()));
        }
        encode_value(path, "batch_chunks", batch, buffer)?;
        self.batch_chunks
            .insert(batch_chunk_key(seq, digest, 0), buffer.as_slice())
            .map_err(fail)?;
        Ok(StoredRef::Here(batch))
    }

    /// Whether the block stored at `seq` (since format 4) is over this batch.
    fn is_block_batch(
        &self,
        path: &Path,
        seq: SeqNum,
        digest: &Digest,
    ) -> Result<bool, DiskStorageError> {
        let fail = |error: redb::StorageError| redb_error(path, error);
        match self.headers.get(seq_key(seq)).map_err(fail)? {
            Some(bytes) => {
                let header: StoredHeader = decode_value(path, "headers", bytes.value())?;
                Ok(header.batch_digest == *digest)
            }
            None => Ok(false),
        }
    }

    fn delete_batch(
        &mut self,
        path: &Path,
        seq: SeqNum,
        digest: &Digest,
    ) -> Result<(), DiskStorageError> {
        let removed = self
            .batch_log
            .remove(batch_key(seq, digest))
            .map_err(|error| redb_error(path, error))?
            .map(|location| Location::from_bytes(location.value()));
        if let Some(location) = removed {
            self.log.free(location.segment);
        }
        self.batch_chunks
            .retain_in(
                batch_chunk_key(seq, digest, 0)..=batch_chunk_key(seq, digest, u32::MAX),
                |_, _| false,
            )
            .map_err(|error| redb_error(path, error))
    }
}

/// A batch's encoded size, without encoding it.
fn encoded_len(path: &Path, batch: &Batch) -> Result<usize, DiskStorageError> {
    let len = codec::encoded_len(batch).map_err(|source| DiskStorageError::Encode {
        path: path.to_path_buf(),
        table: "batches",
        source,
    })?;
    Ok(usize::try_from(len).unwrap_or(usize::MAX))
}

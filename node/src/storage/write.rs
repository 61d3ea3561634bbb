//! Writing: one replica step as one durable, atomic write transaction.

use super::layout::{
    batch_chunk_key, batch_from_key, batch_key, chunk_from_key, chunk_key, last_batch_key, seq_key,
    BatchChunkKey, BatchKey, ChunkKey, SeqKey, StoredHeader, BATCH_CHUNKS, BATCH_LOG, BLOCKS,
    BLOCK_CHUNK_BYTES, DUPLICATES, EXECUTED, HEADERS, PENDING, PREPARED, STATE, STATE_CHECKPOINT,
    STATE_NEW_VIEW, STATE_SAFETY, STATE_SUSPICION,
};
use super::log::{BatchLog, Location, LocationBytes};
use super::{
    decode_value, encode_value, redb_error, CommitMode, DiskStorage, DiskStorageError,
    StorageOptions,
};
use bftd_crypto::Digest;
use bftd_protocol::storage::executed_keys;
use bftd_protocol::{
    codec, Batch, CheckpointCertificate, Delivery, JumpRecord, PreparedCertificate, Record, SeqNum,
};
use redb::{Database, ReadableTable, WriteTransaction};
use std::path::Path;
use std::sync::atomic::Ordering;

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
    /// The whole of [`Storage::apply`]: the step's batches appended to the
    /// batch log and synced, then one write transaction (which refers to
    /// them) committed durably, then the in-memory views (last height,
    /// cache) updated.
    pub(super) fn apply_step(
        &self,
        records: &[Record],
        deliveries: &[Delivery],
    ) -> Result<(), DiskStorageError> {
        let inner = &*self.inner;
        let path = inner.path.as_path();
        let fail = |error: redb::Error| redb_error(path, error);
        let mut log = inner.log();
        let txn = begin_write(&inner.db, &inner.options).map_err(|e| fail(e.into()))?;
        let mut stored = Vec::with_capacity(deliveries.len());
        let pruned_to;
        let jumped_to;
        {
            let mut tables = WriteTables::open(&txn, &mut log, inner.request_lifetime)
                .map_err(|e| fail(e.into()))?;
            tables.retain_blocks = inner.options.retain_blocks;
            tables.held_from = SeqNum(inner.held_from.load(Ordering::Acquire));
            let mut buffer = Vec::new();
            for record in records {
                tables.record(path, record, &mut buffer)?;
            }
            for delivery in deliveries {
                let bytes = tables.deliver(path, delivery, &mut buffer)?;
                stored.push((delivery, bytes));
            }
            pruned_to = tables.pruned_to;
            jumped_to = tables.jumped_to;
        }
        // Returning early on an error drops `txn`, which aborts it: nothing
        // of the step is written but, perhaps, log bytes nothing refers to.
        // The index must never name bytes that are not durable: the log is
        // synced first.
        log.sync()?;
        #[cfg(test)]
        if log
            .crash_at
            .is_some_and(|at| at != super::log::CrashPoint::AfterCommit)
        {
            return Err(super::log::crashed());
        }
        txn.commit().map_err(|e| fail(e.into()))?;
        #[cfg(test)]
        if log.crash_at == Some(super::log::CrashPoint::AfterCommit) {
            return Err(super::log::crashed());
        }
        log.committed();
        drop(log);

        if let Some(first) = pruned_to {
            inner.first_height.fetch_max(first.0, Ordering::AcqRel);
        }
        if let Some(height) = jumped_to {
            // The checkpoint's block is now the only one below what follows.
            inner.first_height.fetch_max(height.0, Ordering::AcqRel);
            inner.last_height.fetch_max(height.0, Ordering::AcqRel);
        }
        let mut cache = inner.cache();
        for (delivery, bytes) in stored {
            let height = delivery.block.height();
            inner.last_height.fetch_max(height.0, Ordering::AcqRel);
            cache.insert(delivery.block.clone(), delivery.duplicates.clone(), bytes);
        }
        Ok(())
    }
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
                self.write_batch(path, *seq, digest, batch, buffer)?;
                self.pending
                    .insert(batch_key(*seq, digest), ())
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
            Record::Suspicion(suspects) => {
                encode_value(path, "state", suspects, buffer)?;
                self.state
                    .insert(STATE_SUSPICION, buffer.as_slice())
                    .map_err(fail)?;
            }
            Record::Jump(jump) => self.jump(path, jump, buffer)?,
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

    /// Stores a block and its duplicates; returns its encoded size. The
    /// batch is written only if it is not there already (it is whenever
    /// this replica accepted the pre-prepare that ordered it).
    fn deliver(
        &mut self,
        path: &Path,
        delivery: &Delivery,
        buffer: &mut Vec<u8>,
    ) -> Result<usize, DiskStorageError> {
        let fail = |error: redb::StorageError| redb_error(path, error);
        let block = &delivery.block.block;
        let height = block.height;
        let key = seq_key(height);
        let batch_bytes =
            match self.write_batch(path, height, &block.batch_digest, &block.batch, buffer)? {
                Some(written) => written,
                None => encoded_len(path, &block.batch)?,
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
        Ok(bytes)
    }

    /// Writes a batch unless it is stored (in the log, or in chunks);
    /// returns its encoded size if it wrote it. A batch's digest is the
    /// Merkle root of its requests, so what is stored under `(seq, digest)`
    /// is this batch.
    ///
    /// A batch of one chunk or less stays in redb, in the commit the step
    /// makes anyway: in the log it would cost the step a second `fdatasync`
    /// (0.2 ms here for an append) for a few kilobytes. A larger batch goes
    /// to the log, where it is written once, sequentially, and never
    /// walked by redb's repair (design notes §50).
    fn write_batch(
        &mut self,
        path: &Path,
        seq: SeqNum,
        digest: &Digest,
        batch: &Batch,
        buffer: &mut Vec<u8>,
    ) -> Result<Option<usize>, DiskStorageError> {
        let fail = |error: redb::StorageError| redb_error(path, error);
        let key = batch_key(seq, digest);
        if self.batch_log.get(key).map_err(fail)?.is_some()
            || self
                .batch_chunks
                .get(batch_chunk_key(seq, digest, 0))
                .map_err(fail)?
                .is_some()
        {
            return Ok(None);
        }
        if encoded_len(path, batch)? > BLOCK_CHUNK_BYTES {
            let location = self.log.stage(seq, digest, batch)?;
            self.batch_log
                .insert(key, location.to_bytes())
                .map_err(fail)?;
            return Ok(Some(location.len as usize));
        }
        encode_value(path, "batch_chunks", batch, buffer)?;
        self.batch_chunks
            .insert(batch_chunk_key(seq, digest, 0), buffer.as_slice())
            .map_err(fail)?;
        Ok(Some(buffer.len()))
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

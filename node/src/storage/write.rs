//! Writing: one replica step as one durable, atomic write transaction.

use super::layout::{
    batch_key, chunk_from_key, chunk_key, last_batch_key, seq_key, BatchKey, ChunkKey, SeqKey,
    BATCHES, BLOCKS, BLOCK_CHUNK_BYTES, DUPLICATES, EXECUTED, PREPARED, STATE, STATE_CHECKPOINT,
    STATE_NEW_VIEW, STATE_SAFETY, STATE_SUSPICION,
};
use super::{
    decode_value, encode_value, redb_error, CommitMode, DiskStorage, DiskStorageError,
    StorageOptions,
};
use bftd_protocol::storage::executed_keys;
use bftd_protocol::{CheckpointCertificate, Delivery, PreparedCertificate, Record, SeqNum};
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
    /// The whole of [`Storage::apply`]: one write transaction, committed
    /// durably, then the in-memory views (last height, cache) updated.
    pub(super) fn apply_step(
        &self,
        records: &[Record],
        deliveries: &[Delivery],
    ) -> Result<(), DiskStorageError> {
        let inner = &*self.inner;
        let path = inner.path.as_path();
        let fail = |error: redb::Error| redb_error(path, error);
        let txn = begin_write(&inner.db, &inner.options).map_err(|e| fail(e.into()))?;
        let mut stored = Vec::with_capacity(deliveries.len());
        let pruned_to;
        {
            let mut tables =
                WriteTables::open(&txn, inner.request_lifetime).map_err(|e| fail(e.into()))?;
            tables.retain_blocks = inner.options.retain_blocks;
            let mut buffer = Vec::new();
            for record in records {
                tables.record(path, record, &mut buffer)?;
            }
            for delivery in deliveries {
                let bytes = tables.deliver(path, delivery, &mut buffer)?;
                stored.push((delivery, bytes));
            }
            pruned_to = tables.pruned_to;
        }
        // Dropping `txn` on an error above aborts it: nothing of the step
        // is written.
        txn.commit().map_err(|e| fail(e.into()))?;

        if let Some(first) = pruned_to {
            inner.first_height.fetch_max(first.0, Ordering::AcqRel);
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
    batches: redb::Table<'txn, BatchKey, &'static [u8]>,
    blocks: redb::Table<'txn, ChunkKey, &'static [u8]>,
    duplicates: redb::Table<'txn, SeqKey, &'static [u8]>,
    executed: redb::Table<'txn, SeqKey, &'static [u8]>,
    /// See `Inner::request_lifetime`.
    request_lifetime: Option<u64>,
    /// See [`StorageOptions::retain_blocks`].
    retain_blocks: Option<u64>,
    /// The new first height, if this step pruned blocks.
    pruned_to: Option<SeqNum>,
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
        request_lifetime: Option<u64>,
    ) -> Result<WriteTables<'txn>, redb::TableError> {
        Ok(WriteTables {
            executed: txn.open_table(EXECUTED)?,
            request_lifetime,
            retain_blocks: None,
            pruned_to: None,
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
            Record::Suspicion(suspects) => {
                encode_value(path, "state", suspects, buffer)?;
                self.state
                    .insert(STATE_SUSPICION, buffer.as_slice())
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
            self.prune(path, SeqNum(seq.0.saturating_sub(retain)))?;
        }
        Ok(())
    }

    /// Deletes the blocks below `keep_from` (their chunks, duplicates and
    /// executed keys), at most [`PRUNE_MAX_BLOCKS`] of them, oldest first.
    fn prune(&mut self, path: &Path, keep_from: SeqNum) -> Result<(), DiskStorageError> {
        let fail = |error: redb::StorageError| redb_error(path, error);
        let first = match self.blocks.first().map_err(fail)? {
            Some((key, _)) => chunk_from_key(key.value()).0,
            None => return Ok(()),
        };
        if first >= keep_from {
            return Ok(());
        }
        let to = SeqNum(keep_from.0.min(first.0.saturating_add(PRUNE_MAX_BLOCKS)));
        self.blocks
            .retain_in(..chunk_key(to, 0), |_, _| false)
            .map_err(fail)?;
        self.duplicates
            .retain_in(..seq_key(to), |_, _| false)
            .map_err(fail)?;
        self.executed
            .retain_in(..seq_key(to), |_, _| false)
            .map_err(fail)?;
        self.pruned_to = Some(to);
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
}

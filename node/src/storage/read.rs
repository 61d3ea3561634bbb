//! Reading: blocks (reassembled from their chunks, checked, cached),
//! duplicates, and the state a restarting replica recovers.

use super::layout::{
    batch_from_key, chunk_from_key, chunk_key, seq_key, BATCHES, BLOCKS, DUPLICATES, EXECUTED,
    PREPARED, STATE, STATE_CHECKPOINT, STATE_NEW_VIEW, STATE_SAFETY, STATE_SUSPICION,
};
use super::{decode_value, redb_error, DiskStorage, DiskStorageError, Inner, StoredBlock};
use bftd_protocol::{CommittedBlock, Recovered, RequestKey, SeqNum, StorageError};
use redb::{ReadableDatabase, ReadableTable};
use std::sync::Arc;

impl DiskStorage {
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
        let first_height = self.first_height();
        if height.max(SeqNum(1)) < first_height {
            return Err(DiskStorageError::Pruned {
                path: inner.path.clone(),
                height,
                first_height,
            }
            .into());
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
    pub(super) fn read_block(
        &self,
        height: SeqNum,
    ) -> Result<Option<StoredBlock>, DiskStorageError> {
        let inner = &*self.inner;
        let generation = {
            let mut cache = inner.cache();
            if let Some(cached) = cache.get(height) {
                return Ok(Some(cached));
            }
            cache.generation()
        };
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
            .insert_read(generation, stored.0.clone(), stored.1.clone(), bytes);
        Ok(Some(stored))
    }

    /// The keys recorded in the `executed` table at `height`, if any.
    pub(super) fn read_executed(
        &self,
        height: SeqNum,
    ) -> Result<Option<Vec<RequestKey>>, DiskStorageError> {
        let inner = &*self.inner;
        let txn = inner.db.begin_read().map_err(|e| inner.backend(e))?;
        let table = txn.open_table(EXECUTED).map_err(|e| inner.backend(e))?;
        match table.get(seq_key(height)).map_err(|e| inner.backend(e))? {
            Some(bytes) => Ok(Some(inner.decode("executed", bytes.value())?)),
            None => Ok(None),
        }
    }

    pub(super) fn recover_state(&self) -> Result<Recovered, DiskStorageError> {
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
        if let Some(bytes) = get(STATE_SUSPICION)? {
            recovered.suspicion = decode_value(path, "state", bytes.value())?;
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

pub(super) fn read_duplicates(
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

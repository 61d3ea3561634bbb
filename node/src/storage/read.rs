//! Reading: blocks (a header over its batch, or reassembled from the
//! chunks of an older format; checked, cached), duplicates, and the state a
//! restarting replica recovers.

use super::layout::{
    batch_chunk_key, batch_from_key, batch_key, chunk_from_key, chunk_key, seq_key, BatchChunkKey,
    BatchKey, ChunkKey, SeqKey, StoredHeader, BATCH_CHUNKS, BATCH_LOG, BLOCKS, DUPLICATES,
    EXECUTED, HEADERS, PENDING, PREPARED, STATE, STATE_CHECKPOINT, STATE_NEW_VIEW, STATE_SAFETY,
    STATE_SUSPICION,
};
use super::log::{self, Location, LocationBytes};
use super::{decode_value, redb_error, DiskStorage, DiskStorageError, Inner, StoredBlock};
use bftd_crypto::Digest;
use bftd_protocol::{Batch, Block, CommittedBlock, Recovered, RequestKey, SeqNum, StorageError};
use redb::{ReadTransaction, ReadableDatabase, ReadableTable};
use std::path::Path;
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
        let tables = ReadTables::open(inner, &txn)?;
        let mut at = Some(height.max(SeqNum(1)));
        while let Some(here) = at {
            let cached = inner.cache().get(here);
            match tables.block(inner, &txn, here, cached)? {
                Some((block, _)) => {
                    out.push(block);
                    if out.len() >= max {
                        break;
                    }
                    at = Some(here.next());
                }
                // A gap (heights a node was still fetching): on to the
                // next stored height, found in the trees, not by counting.
                None => at = tables.next_stored(inner, here.next())?,
            }
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
        let tables = ReadTables::open(inner, &txn)?;
        let Some((stored, bytes)) = tables.block(inner, &txn, height, None)? else {
            return Ok(None);
        };
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

    /// The lowest height with executed keys stored, if any.
    pub(super) fn first_executed(&self) -> Result<Option<SeqNum>, DiskStorageError> {
        let inner = &*self.inner;
        let txn = inner.db.begin_read().map_err(|e| inner.backend(e))?;
        let table = txn.open_table(EXECUTED).map_err(|e| inner.backend(e))?;
        let first = table.first().map_err(|e| inner.backend(e))?;
        Ok(first.map(|(key, _)| SeqNum(u64::from_be_bytes(key.value()))))
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
        let pending = txn.open_table(PENDING).map_err(|e| fail(e.into()))?;
        let batches = BatchTables::open(inner, &txn)?;
        for entry in pending.iter().map_err(|e| fail(e.into()))? {
            let (key, _) = entry.map_err(|e| fail(e.into()))?;
            let (seq, digest) = batch_from_key(key.value());
            let (batch, _) = batches.read(inner, seq, &digest)?.ok_or_else(|| {
                DiskStorageError::BrokenBatch {
                    path: path.to_path_buf(),
                    seq,
                    digest,
                    chunk: 0,
                }
            })?;
            recovered.batches.push((seq, digest, batch));
        }
        Ok(recovered)
    }
}

/// The tables a block is read from, open in one read transaction.
struct ReadTables {
    headers: redb::ReadOnlyTable<SeqKey, &'static [u8]>,
    batches: BatchTables,
    blocks: redb::ReadOnlyTable<ChunkKey, &'static [u8]>,
}

impl ReadTables {
    fn open(inner: &Inner, txn: &ReadTransaction) -> Result<ReadTables, DiskStorageError> {
        Ok(ReadTables {
            headers: txn.open_table(HEADERS).map_err(|e| inner.backend(e))?,
            batches: BatchTables::open(inner, txn)?,
            blocks: txn.open_table(BLOCKS).map_err(|e| inner.backend(e))?,
        })
    }

    /// The block at `height` with its duplicates and its encoded size (0 if
    /// `cached`, which is returned as it is once the block is known to be
    /// stored), or `None` if no block is stored there.
    fn block(
        &self,
        inner: &Inner,
        txn: &ReadTransaction,
        height: SeqNum,
        cached: Option<StoredBlock>,
    ) -> Result<Option<(StoredBlock, usize)>, DiskStorageError> {
        let header = self
            .headers
            .get(seq_key(height))
            .map_err(|e| inner.backend(e))?;
        let Some(header) = header else {
            return self.old_block(inner, txn, height, cached);
        };
        if let Some(cached) = cached {
            return Ok(Some((cached, 0)));
        }
        let header_bytes = header.value().len();
        let header: StoredHeader = inner.decode("headers", header.value())?;
        if header.height != height {
            return Err(DiskStorageError::MisplacedBlock {
                path: inner.path.clone(),
                key: height,
                found: header.height,
            });
        }
        let digest = header.batch_digest;
        let (batch, batch_bytes) = self.batches.read(inner, height, &digest)?.ok_or_else(|| {
            DiskStorageError::BrokenBatch {
                path: inner.path.clone(),
                seq: height,
                digest,
                chunk: 0,
            }
        })?;
        let block = CommittedBlock {
            block: Block {
                height,
                prev_hash: header.prev_hash,
                batch_digest: digest,
                batch,
            },
            certificate: header.certificate,
        };
        let duplicates = read_duplicates(inner, txn, height)?;
        Ok(Some((
            (Arc::new(block), duplicates),
            header_bytes.saturating_add(batch_bytes),
        )))
    }

    /// The lowest height at or above `from` with a block stored (of any
    /// format), if any.
    fn next_stored(&self, inner: &Inner, from: SeqNum) -> Result<Option<SeqNum>, DiskStorageError> {
        let new = match self
            .headers
            .range(seq_key(from)..)
            .map_err(|e| inner.backend(e))?
            .next()
        {
            Some(entry) => {
                let (key, _) = entry.map_err(|e| inner.backend(e))?;
                Some(SeqNum(u64::from_be_bytes(key.value())))
            }
            None => None,
        };
        let old = match self
            .blocks
            .range(chunk_key(from, 0)..)
            .map_err(|e| inner.backend(e))?
            .next()
        {
            Some(entry) => {
                let (key, _) = entry.map_err(|e| inner.backend(e))?;
                Some(chunk_from_key(key.value()).0)
            }
            None => None,
        };
        Ok(new.into_iter().chain(old).min())
    }

    /// A block written by format 3 or earlier: whole, in chunks.
    fn old_block(
        &self,
        inner: &Inner,
        txn: &ReadTransaction,
        height: SeqNum,
        cached: Option<StoredBlock>,
    ) -> Result<Option<(StoredBlock, usize)>, DiskStorageError> {
        let mut pending = PendingBlock::new(height, cached);
        for entry in self
            .blocks
            .range(chunk_key(height, 0)..=chunk_key(height, u32::MAX))
            .map_err(|e| inner.backend(e))?
        {
            let (key, value) = entry.map_err(|e| inner.backend(e))?;
            pending.push(inner, chunk_from_key(key.value()).1, value.value())?;
        }
        if pending.next_index == 0 {
            return Ok(None);
        }
        pending.finish(inner, txn).map(Some)
    }
}

/// Where batches are: the batch log's index, and the chunks of formats 4
/// and 5.
struct BatchTables {
    index: redb::ReadOnlyTable<BatchKey, LocationBytes>,
    chunks: redb::ReadOnlyTable<BatchChunkKey, &'static [u8]>,
}

impl BatchTables {
    fn open(inner: &Inner, txn: &ReadTransaction) -> Result<BatchTables, DiskStorageError> {
        Ok(BatchTables {
            index: txn.open_table(BATCH_LOG).map_err(|e| inner.backend(e))?,
            chunks: txn.open_table(BATCH_CHUNKS).map_err(|e| inner.backend(e))?,
        })
    }

    /// The batch stored under `(seq, digest)` and its encoded size, from
    /// the log (checked there) or reassembled from its chunks, or `None`
    /// if it is in neither.
    fn read(
        &self,
        inner: &Inner,
        seq: SeqNum,
        digest: &Digest,
    ) -> Result<Option<(Arc<Batch>, usize)>, DiskStorageError> {
        read_batch(
            &inner.path,
            &inner.log_dir,
            &self.index,
            &self.chunks,
            seq,
            digest,
        )
    }
}

/// The batch stored under `(seq, digest)` and its encoded size, from the
/// log (checked there) or reassembled from its chunks, or `None` if it is
/// in neither: through a read transaction's tables or a write's.
pub(super) fn read_batch(
    path: &Path,
    log_dir: &Path,
    index: &impl ReadableTable<BatchKey, LocationBytes>,
    chunks: &impl ReadableTable<BatchChunkKey, &'static [u8]>,
    seq: SeqNum,
    digest: &Digest,
) -> Result<Option<(Arc<Batch>, usize)>, DiskStorageError> {
    let backend = |error| redb_error(path, error);
    let key = batch_key(seq, digest);
    if let Some(location) = index.get(key).map_err(backend)? {
        let location = Location::from_bytes(location.value());
        let (batch, len) = log::read(log_dir, key, location)?;
        return Ok(Some((Arc::new(batch), len)));
    }
    let mut bytes = Vec::new();
    let mut next_index = 0u32;
    for entry in chunks
        .range(batch_chunk_key(seq, digest, 0)..=batch_chunk_key(seq, digest, u32::MAX))
        .map_err(backend)?
    {
        let (key, value) = entry.map_err(backend)?;
        let index = super::layout::batch_chunk_from_key(key.value()).2;
        if index != next_index {
            return Err(DiskStorageError::BrokenBatch {
                path: path.to_path_buf(),
                seq,
                digest: *digest,
                chunk: next_index,
            });
        }
        next_index = next_index.saturating_add(1);
        bytes.extend_from_slice(value.value());
    }
    if next_index == 0 {
        return Ok(None);
    }
    let batch: Batch = decode_value(path, "batches", &bytes)?;
    Ok(Some((Arc::new(batch), bytes.len())))
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
        txn: &ReadTransaction,
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
    txn: &ReadTransaction,
    height: SeqNum,
) -> Result<Vec<u32>, DiskStorageError> {
    let table = txn.open_table(DUPLICATES).map_err(|e| inner.backend(e))?;
    match table.get(seq_key(height)).map_err(|e| inner.backend(e))? {
        Some(bytes) => inner.decode("duplicates", bytes.value()),
        None => Ok(Vec::new()),
    }
}

//! A small LRU of decoded blocks.
//!
//! Decoding a block of 1000 requests allocates a thousand payloads; the
//! measurement in the module doc shows a cache hit is two orders of
//! magnitude cheaper. Blocks are put in as they are stored (the shell already
//! holds the `Arc`), so subscribers following the tip and peers catching up
//! on recent heights are served from memory. Bounded in entries and in bytes
//! (a block may be as large as a message, 64 MiB).

use super::StoredBlock;
use bftd_protocol::{CommittedBlock, SeqNum};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug)]
struct Entry {
    block: Arc<CommittedBlock>,
    duplicates: Vec<u32>,
    bytes: usize,
    last_used: u64,
}

/// Decoded blocks by height, least recently used evicted first.
#[derive(Debug)]
pub(super) struct BlockCache {
    entries: BTreeMap<SeqNum, Entry>,
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    clock: u64,
    /// Bumped by every [`Self::insert`]: a reader that decoded a block from
    /// an older snapshot must not overwrite what a newer commit put here.
    generation: u64,
}

impl BlockCache {
    /// A cache of at most `max_entries` blocks and `max_bytes` encoded
    /// bytes. `max_entries == 0` disables it.
    pub(super) fn new(max_entries: usize, max_bytes: usize) -> BlockCache {
        BlockCache {
            entries: BTreeMap::new(),
            max_entries,
            max_bytes,
            bytes: 0,
            clock: 0,
            generation: 0,
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock = self.clock.wrapping_add(1);
        self.clock
    }

    /// The block at `height` and its duplicates, if cached.
    pub(super) fn get(&mut self, height: SeqNum) -> Option<StoredBlock> {
        let now = self.tick();
        let entry = self.entries.get_mut(&height)?;
        entry.last_used = now;
        Some((entry.block.clone(), entry.duplicates.clone()))
    }

    /// The current generation, to pass to [`Self::insert_read`].
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Caches a block read from disk, unless anything was inserted since
    /// `generation` (a commit may have replaced it meanwhile).
    pub(super) fn insert_read(
        &mut self,
        generation: u64,
        block: Arc<CommittedBlock>,
        duplicates: Vec<u32>,
        bytes: usize,
    ) {
        if generation == self.generation {
            self.insert(block, duplicates, bytes);
        }
    }

    /// Caches a block whose encoding is `bytes` long, replacing any entry at
    /// its height. A block larger than the whole budget is not cached.
    pub(super) fn insert(
        &mut self,
        block: Arc<CommittedBlock>,
        duplicates: Vec<u32>,
        bytes: usize,
    ) {
        self.generation = self.generation.wrapping_add(1);
        let height = block.height();
        if let Some(old) = self.entries.remove(&height) {
            self.bytes = self.bytes.saturating_sub(old.bytes);
        }
        if self.max_entries == 0 || bytes > self.max_bytes {
            return;
        }
        while self.entries.len() >= self.max_entries
            || self.bytes.saturating_add(bytes) > self.max_bytes
        {
            if !self.evict_one() {
                break;
            }
        }
        let last_used = self.tick();
        self.bytes = self.bytes.saturating_add(bytes);
        self.entries.insert(
            height,
            Entry {
                block,
                duplicates,
                bytes,
                last_used,
            },
        );
    }

    /// Evicts the least recently used entry: a linear scan, fine for the
    /// few dozen entries this cache holds.
    fn evict_one(&mut self) -> bool {
        let oldest = self
            .entries
            .iter()
            .min_by_key(|(_, entry)| entry.last_used)
            .map(|(&height, _)| height);
        match oldest.and_then(|height| self.entries.remove(&height)) {
            Some(entry) => {
                self.bytes = self.bytes.saturating_sub(entry.bytes);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bftd_crypto::Digest;
    use bftd_protocol::certificate::QuorumCertificate;
    use bftd_protocol::message::Commit;
    use bftd_protocol::{Batch, Block, View};

    fn block(height: u64) -> Arc<CommittedBlock> {
        Arc::new(CommittedBlock {
            block: Block {
                height: SeqNum(height),
                prev_hash: Digest::ZERO,
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

    /// The cache keeps the most recently used blocks within both bounds.
    #[test]
    fn evicts_least_recently_used_within_bounds() {
        let mut cache = BlockCache::new(2, 100);
        cache.insert(block(1), vec![], 10);
        cache.insert(block(2), vec![4], 10);
        assert!(cache.get(SeqNum(1)).is_some()); // 2 is now the oldest
        cache.insert(block(3), vec![], 10);
        assert!(cache.get(SeqNum(2)).is_none());
        assert!(cache.get(SeqNum(1)).is_some());
        assert!(cache.get(SeqNum(3)).is_some());

        // The byte bound evicts too, and an oversized block is not cached.
        cache.insert(block(4), vec![], 95);
        assert_eq!(cache.entries.len(), 1);
        assert_eq!(cache.bytes, 95);
        cache.insert(block(5), vec![], 101);
        assert!(cache.get(SeqNum(5)).is_none());

        // Replacing a height replaces its duplicates and its byte count.
        cache.insert(block(4), vec![1], 5);
        assert_eq!(cache.get(SeqNum(4)).map(|(_, d)| d), Some(vec![1]));
        assert_eq!(cache.bytes, 5);

        // A block read from an older snapshot does not replace a newer one.
        let generation = cache.generation();
        cache.insert(block(4), vec![2], 5);
        cache.insert_read(generation, block(4), vec![1], 5);
        assert_eq!(cache.get(SeqNum(4)).map(|(_, d)| d), Some(vec![2]));
        let generation = cache.generation();
        cache.insert_read(generation, block(6), vec![], 5);
        assert!(cache.get(SeqNum(6)).is_some());

        let mut disabled = BlockCache::new(0, 100);
        disabled.insert(block(1), vec![], 1);
        assert!(disabled.get(SeqNum(1)).is_none());
    }
}

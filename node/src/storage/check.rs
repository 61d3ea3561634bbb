//! `bftd check`: a stopped node's whole store read back and verified, the
//! way a client verifies what it is sent. For an operator who suspects the
//! disk (a damaged sector, a copy taken while the node ran) or wants to
//! know a backup is whole before relying on it.

use super::{open, DiskStorage, DiskStorageError, StorageOptions};
use bftd_crypto::Digest;
use bftd_protocol::{BlockError, Committee, SeqNum, Storage, StorageError};
use std::path::Path;

/// What [`DiskStorage::check`] read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreCheck {
    /// The lowest and highest stored heights (0 and 0: no block).
    pub first_height: SeqNum,
    pub last_height: SeqNum,
    /// Blocks read and verified.
    pub blocks: u64,
    /// Requests in them.
    pub requests: u64,
    /// Heights missing between the first and the last (a node that was
    /// still fetching them when it stopped): (first missing, last missing).
    pub gaps: Vec<(SeqNum, SeqNum)>,
    /// Batches the replica recovers (accepted, not yet in a block).
    pub pending_batches: usize,
    /// Size of the redb file, and of the batch log's segments.
    pub redb_bytes: u64,
    pub log_bytes: u64,
    pub segments: usize,
}

/// Why a store did not check.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Opening or reading failed; the error says where and what to do.
    #[error(transparent)]
    Store(#[from] StorageError),
    /// redb found damaged pages and repaired its file (as it does after a
    /// crash); the blocks were read after the repair.
    #[error("store {path}: damaged pages were found and repaired; check again")]
    Repaired {
        /// The redb file.
        path: std::path::PathBuf,
    },
    /// A block that reads back but does not verify.
    #[error("block {} does not verify against the cluster file: {source}", .height.0)]
    Block {
        /// Its height.
        height: SeqNum,
        /// What is wrong with it.
        source: BlockError,
    },
}

/// Blocks read per read transaction.
const READ_AT_ONCE: usize = 256;

impl DiskStorage {
    /// Checks redb's own page checksums, then opens the store for the node
    /// `identity` names and [`DiskStorage::check`]s it. The store must not
    /// be open elsewhere (a running node holds its lock).
    pub fn check_path(
        path: &Path,
        identity: &super::StoreIdentity,
        committee: &Committee,
    ) -> Result<StoreCheck, CheckError> {
        if !path.exists() {
            // Opening would create one.
            return Err(StorageError::from(DiskStorageError::Unreadable {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no store here"),
            })
            .into());
        }
        {
            let mut db = open::open_database(
                path,
                &StorageOptions::default(),
                #[cfg(test)]
                &Default::default(),
            )
            .map_err(StorageError::from)?;
            let intact = db
                .check_integrity()
                .map_err(|error| StorageError::from(super::redb_error(path, error)))?;
            if !intact {
                return Err(CheckError::Repaired {
                    path: path.to_path_buf(),
                });
            }
        }
        let store = DiskStorage::open_for(path, identity)?;
        store.check(committee)
    }

    /// Reads every stored block back (every batch record's checksum is
    /// checked on the way) and verifies each one's commit certificate
    /// against `committee` and its link to the block below; reads back the
    /// state a restart recovers.
    pub fn check(&self, committee: &Committee) -> Result<StoreCheck, CheckError> {
        let mut report = StoreCheck {
            first_height: self.first_height(),
            pending_batches: self.recover()?.batches.len(),
            redb_bytes: file_len(self.path()),
            ..StoreCheck::default()
        };
        let entries = std::fs::read_dir(&self.inner.log_dir).into_iter().flatten();
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".seg") {
                report.segments += 1;
                report.log_bytes += entry.metadata().map_or(0, |meta| meta.len());
            }
        }
        let mut next = report.first_height;
        // The block below the first is pruned: the first's link is taken
        // on trust (its certificate still covers it).
        let mut prev: Option<Digest> = None;
        loop {
            let blocks = self.blocks_from(next, READ_AT_ONCE)?;
            let Some((last, _)) = blocks.last() else {
                break;
            };
            let after = last.height().next();
            for (block, _) in blocks {
                let height = block.height();
                if height != next {
                    report.gaps.push((next, SeqNum(height.0.saturating_sub(1))));
                    prev = None;
                }
                block
                    .verify(committee, prev.unwrap_or(block.block.prev_hash))
                    .map_err(|source| CheckError::Block { height, source })?;
                prev = Some(block.hash());
                report.blocks += 1;
                report.requests += block.block.batch.requests.len() as u64;
                report.last_height = height;
                next = height.next();
            }
            next = after;
        }
        if report.blocks == 0 {
            report.first_height = SeqNum(0);
        }
        Ok(report)
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |meta| meta.len())
}

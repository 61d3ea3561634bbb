//! Opening a store: the redb file, its lock, and the checks that it is a
//! bftd store of this format and, with an identity, of this node.

use super::layout::{
    batch_chunk_key, batch_from_key, chunk_from_key, chunk_key, seq_key, BATCH_CHUNKS, BATCH_LOG,
    BLOCKS, BLOCK_CHUNK_BYTES, DUPLICATES, EXECUTED, HEADERS, LEGACY_BATCHES, META, META_FORMAT,
    META_IDENTITY, META_LOG, OLDEST_UPGRADABLE_FORMAT, PENDING, PREPARED, STATE, TABLE_NAMES,
};
use super::log::{Location, Position};
use super::{
    decode_value, encode_value, redb_error, write::begin_write, DiskStorageError, StorageOptions,
    StoreIdentity, FORMAT_VERSION,
};
use bftd_protocol::codec;
use bftd_protocol::storage::executed_keys;
use bftd_protocol::{CommittedBlock, SeqNum};
use redb::{Database, DatabaseError, ReadableTable, TableHandle, WriteTransaction};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// Opens (or creates) the redb file, mapping redb's refusals to errors that
/// name the path.
pub(super) fn open_database(
    path: &Path,
    options: &StorageOptions,
    #[cfg(test)] crashed: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<Database, DiskStorageError> {
    let unreadable = |source| DiskStorageError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let existed = path.try_exists().map_err(unreadable)?;
    let mut builder = Database::builder();
    builder.set_cache_size(options.page_cache_bytes);
    // redb trusts a cleanly closed file and may panic on one damaged
    // outside it; report that as damage of this path, not a node crash.
    #[cfg(not(test))]
    let create = || builder.create(path);
    #[cfg(test)]
    let create = || -> Result<Database, DatabaseError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        builder.create_with_backend(crashable::Backend {
            file: redb::backends::FileBackend::new(file)?,
            crashed: crashed.clone(),
        })
    };
    let opened =
        catch_unwind(AssertUnwindSafe(create)).map_err(|_| DiskStorageError::OpenPanicked {
            path: path.to_path_buf(),
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

/// What opening learnt about a store.
pub(super) struct Opened {
    /// The highest stored height.
    pub last_height: SeqNum,
    /// The lowest stored height (1 if none is stored).
    pub first_height: SeqNum,
    /// The `request_lifetime` of the store's identity, if it has one.
    pub request_lifetime: Option<u64>,
    /// The batch log's segments the index refers to, with how many entries
    /// refer to each.
    pub live: BTreeMap<u64, u64>,
    /// Where the log stood at the last durable commit: the steps after it
    /// are to be redone (`None` in a store that never logged a step).
    pub durable: Option<Position>,
}

/// Checks (or, for a new store, writes) the format version and identity,
/// upgrades a store of an older format from [`OLDEST_UPGRADABLE_FORMAT`] on
/// in place, creates missing
/// tables, and returns what it found.
pub(super) fn initialize(
    db: &Database,
    path: &Path,
    identity: Option<&StoreIdentity>,
    options: &StorageOptions,
) -> Result<Opened, DiskStorageError> {
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
    let mut upgrade_from = None;
    let request_lifetime;
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
            if (OLDEST_UPGRADABLE_FORMAT..FORMAT_VERSION).contains(&found) {
                upgrade_from = Some(found);
            } else if found != FORMAT_VERSION {
                return Err(DiskStorageError::UnsupportedFormat {
                    path: path.to_path_buf(),
                    found,
                    supported: FORMAT_VERSION,
                });
            }
        }
        let recorded = meta
            .get(META_IDENTITY)
            .map_err(|e| fail(e.into()))?
            .map(|bytes| decode_value::<StoreIdentity>(path, "meta", bytes.value()))
            .transpose()?;
        if let Some(identity) = identity {
            match &recorded {
                Some(found) => check_identity(path, identity, found)?,
                None => {
                    encode_value(path, "meta", identity, &mut buffer)?;
                    meta.insert(META_IDENTITY, buffer.as_slice())
                        .map_err(|e| fail(e.into()))?;
                    changed = true;
                }
            }
        }
        request_lifetime = recorded
            .as_ref()
            .or(identity)
            .map(|identity| identity.settings.request_lifetime);
        if upgrade_from.is_some() {
            encode_value(path, "meta", &FORMAT_VERSION, &mut buffer)?;
            meta.insert(META_FORMAT, buffer.as_slice())
                .map_err(|e| fail(e.into()))?;
            changed = true;
        }
    }
    // Every table exists from creation on, so that readers can open them.
    for result in [
        txn.open_table(STATE).map(drop),
        txn.open_table(PREPARED).map(drop),
        txn.open_table(BATCH_LOG).map(drop),
        txn.open_table(BATCH_CHUNKS).map(drop),
        txn.open_table(PENDING).map(drop),
        txn.open_table(DUPLICATES).map(drop),
        txn.open_table(EXECUTED).map(drop),
    ] {
        result.map_err(|e| fail(e.into()))?;
    }
    let (first_height, last_height) = {
        // Blocks of format 4 on (`headers`) and of older ones (`blocks`).
        let blocks = txn.open_table(BLOCKS).map_err(|e| fail(e.into()))?;
        let headers = txn.open_table(HEADERS).map_err(|e| fail(e.into()))?;
        let height = |key: [u8; 8]| SeqNum(u64::from_be_bytes(key));
        let ends = [
            blocks
                .first()
                .map_err(|e| fail(e.into()))?
                .map(|(key, _)| chunk_from_key(key.value()).0),
            headers
                .first()
                .map_err(|e| fail(e.into()))?
                .map(|(key, _)| height(key.value())),
            blocks
                .last()
                .map_err(|e| fail(e.into()))?
                .map(|(key, _)| chunk_from_key(key.value()).0),
            headers
                .last()
                .map_err(|e| fail(e.into()))?
                .map(|(key, _)| height(key.value())),
        ];
        let [first_old, first_new, last_old, last_new] = ends;
        (
            first_old
                .into_iter()
                .chain(first_new)
                .min()
                .unwrap_or(SeqNum(1)),
            last_old
                .into_iter()
                .chain(last_new)
                .max()
                .unwrap_or(SeqNum(0)),
        )
    };
    if let Some(found) = upgrade_from {
        if found < 3 {
            fill_executed(&txn, path, last_height, request_lifetime)?;
        }
        if existing.iter().any(|name| name == LEGACY_BATCHES.name()) {
            move_batches(&txn, path)?;
        }
        tracing::info!(path = %path.display(), from = found, to = FORMAT_VERSION, "store upgraded in place");
    }
    let mut live = BTreeMap::new();
    {
        let index = txn.open_table(BATCH_LOG).map_err(|e| fail(e.into()))?;
        for entry in index.iter().map_err(|e| fail(e.into()))? {
            let (_, location) = entry.map_err(|e| fail(e.into()))?;
            let segment = Location::from_bytes(location.value()).segment;
            let count = live.entry(segment).or_insert(0u64);
            *count = count.saturating_add(1);
        }
    }
    let durable = {
        let meta = txn.open_table(META).map_err(|e| fail(e.into()))?;
        let position = meta.get(META_LOG).map_err(|e| fail(e.into()))?;
        position
            .map(|bytes| decode_value::<Position>(path, "meta", bytes.value()))
            .transpose()?
    };
    if changed {
        txn.commit().map_err(|e| fail(e.into()))?;
    } else {
        txn.abort().map_err(|e| fail(e.into()))?;
    }
    Ok(Opened {
        first_height,
        last_height,
        request_lifetime,
        live,
        durable,
    })
}

/// The upgrade from formats 2 and 3: the pending batches, stored whole in
/// `batches`, are written in chunks and listed as pending, and `batches`
/// goes. They are few (the window's), so this is quick; it runs in the
/// open's transaction, so a crash during it leaves the older format.
fn move_batches(txn: &WriteTransaction, path: &Path) -> Result<(), DiskStorageError> {
    let fail = |error: redb::Error| redb_error(path, error);
    {
        let old = txn.open_table(LEGACY_BATCHES).map_err(|e| fail(e.into()))?;
        let mut chunks = txn.open_table(BATCH_CHUNKS).map_err(|e| fail(e.into()))?;
        let mut pending = txn.open_table(PENDING).map_err(|e| fail(e.into()))?;
        for entry in old.iter().map_err(|e| fail(e.into()))? {
            let (key, value) = entry.map_err(|e| fail(e.into()))?;
            let (seq, digest) = batch_from_key(key.value());
            for (index, chunk) in (0u32..).zip(value.value().chunks(BLOCK_CHUNK_BYTES)) {
                chunks
                    .insert(batch_chunk_key(seq, &digest, index), chunk)
                    .map_err(|e| fail(e.into()))?;
            }
            pending
                .insert(key.value(), ())
                .map_err(|e| fail(e.into()))?;
        }
    }
    txn.delete_table(LEGACY_BATCHES)
        .map_err(|e| fail(e.into()))?;
    Ok(())
}

/// The upgrade from format 2: fills the `executed` table from the stored
/// blocks a restart will ask it for (the last `request_lifetime` heights,
/// or every block if the store has no identity to say the lifetime). Runs
/// in the open's transaction: a crash during the upgrade leaves the store
/// at format 2, upgraded again at the next open.
fn fill_executed(
    txn: &WriteTransaction,
    path: &Path,
    last_height: SeqNum,
    request_lifetime: Option<u64>,
) -> Result<(), DiskStorageError> {
    let fail = |error: redb::Error| redb_error(path, error);
    let blocks = txn.open_table(BLOCKS).map_err(|e| fail(e.into()))?;
    let duplicates = txn.open_table(DUPLICATES).map_err(|e| fail(e.into()))?;
    let mut executed = txn.open_table(EXECUTED).map_err(|e| fail(e.into()))?;
    let from = match request_lifetime {
        Some(lifetime) => last_height.0.saturating_sub(lifetime).max(1),
        None => 1,
    };
    let mut bytes = Vec::new();
    let mut buffer = Vec::new();
    for height in from..=last_height.0 {
        let height = SeqNum(height);
        bytes.clear();
        let mut next_index = 0u32;
        for entry in blocks
            .range(chunk_key(height, 0)..=chunk_key(height, u32::MAX))
            .map_err(|e| fail(e.into()))?
        {
            let (key, value) = entry.map_err(|e| fail(e.into()))?;
            if chunk_from_key(key.value()).1 != next_index {
                break;
            }
            next_index = next_index.saturating_add(1);
            bytes.extend_from_slice(value.value());
        }
        if next_index == 0 {
            // Not stored (a gap the node was fetching): nothing executed
            // here that a restart could read.
            continue;
        }
        let block: CommittedBlock = decode_value(path, "blocks", &bytes)?;
        let skipped: Vec<u32> = match duplicates
            .get(seq_key(height))
            .map_err(|e| fail(e.into()))?
        {
            Some(value) => decode_value(path, "duplicates", value.value())?,
            None => Vec::new(),
        };
        encode_value(
            path,
            "executed",
            &executed_keys(&block, &skipped),
            &mut buffer,
        )?;
        executed
            .insert(seq_key(height), buffer.as_slice())
            .map_err(|e| fail(e.into()))?;
    }
    Ok(())
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
    if let Some((setting, ours, recorded)) = expected.settings.differences(&found.settings).first()
    {
        return Err(DiskStorageError::OtherSettings {
            path: path.to_path_buf(),
            setting,
            ours: ours.clone(),
            recorded: recorded.clone(),
        });
    }
    Ok(())
}

/// A redb file that unit tests can "crash": from the moment the flag is
/// set, nothing more reaches the file (writes, syncs and the close's
/// header are dropped), so reopening it shows what a killed process left:
/// the last durable commit, never a later one.
#[cfg(test)]
pub(super) mod crashable {
    use redb::backends::FileBackend;
    use redb::{BackendError, StorageBackend};
    use std::io::Error as BackendIoError;
    use std::ops::Bound;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[derive(Debug)]
    pub struct Backend {
        pub file: FileBackend,
        pub crashed: Arc<AtomicBool>,
    }

    impl Backend {
        fn alive(&self) -> bool {
            !self.crashed.load(Ordering::Acquire)
        }
    }

    impl StorageBackend for Backend {
        fn len(&self) -> Result<u64, BackendIoError> {
            self.file.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendIoError> {
            self.file.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), BackendIoError> {
            if self.alive() {
                self.file.set_len(len)
            } else {
                Ok(())
            }
        }
        fn sync_data(&self) -> Result<(), BackendIoError> {
            if self.alive() {
                self.file.sync_data()
            } else {
                Ok(())
            }
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendIoError> {
            if self.alive() {
                self.file.write(offset, data)
            } else {
                Ok(())
            }
        }
        fn close(&self) -> Result<(), BackendIoError> {
            self.file.close()
        }
        fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
            self.file.try_lock_range(start, end)
        }
        fn try_lock_shared_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<bool, BackendError> {
            self.file.try_lock_shared_range(start, end)
        }
        fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
            self.file.lock_range(start, end)
        }
        fn lock_shared_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<(), BackendError> {
            self.file.lock_shared_range(start, end)
        }
        fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
            self.file.unlock_range(start, end)
        }
    }
}

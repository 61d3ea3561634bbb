//! Tests of the disk store: the shared suite, and what only a disk store can
//! get wrong (locking, damaged or foreign files, identity, reopening, an
//! aborted step). The crash test with a real SIGKILL and the latency
//! measurement are in `node/tests/storage.rs`.

use super::*;
use bftd_crypto::{Digest, KeyPair, PublicKey, Signature};
use bftd_protocol::certificate::{QuorumCertificate, Vote};
use bftd_protocol::message::{Checkpoint, Commit, PrePrepare, Prepare};
use bftd_protocol::signer::SafetyState;
use bftd_protocol::{
    Batch, Block, CheckpointCertificate, NodeId, PreparedCertificate, Request, Signed,
    SignedRequest, View,
};
use layout::BatchKey;
use redb::{ReadableDatabase, ReadableTable};
use std::io::Write;

fn store_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("store.redb")
}

/// The store at `path` without a block cache: every read goes to disk.
fn uncached(path: &Path) -> DiskStorage {
    let options = StorageOptions {
        block_cache_entries: 0,
        ..StorageOptions::default()
    };
    DiskStorage::open_with(path, None, &options).unwrap()
}

fn disk_error(error: &StorageError) -> &DiskStorageError {
    match DiskStorageError::of(error) {
        Some(error) => error,
        None => panic!("not a disk storage error: {error}"),
    }
}

fn open_error(path: &Path) -> DiskStorageError {
    match DiskStorage::open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(error) => match error.source.downcast::<DiskStorageError>() {
            Ok(error) => *error,
            Err(error) => panic!("not a disk storage error: {error}"),
        },
    }
}

fn batch(requests: usize, payload_bytes: usize, tag: u64) -> Arc<Batch> {
    let requests = (0..requests)
        .map(|i| {
            SignedRequest::unsigned(Request {
                client: PublicKey([i as u8; 32]),
                request_id: tag,
                valid_until: SeqNum(1000),
                payload: vec![tag as u8; payload_bytes],
            })
        })
        .collect();
    Arc::new(Batch { requests })
}

fn block(height: u64, batch: Arc<Batch>) -> Arc<CommittedBlock> {
    Arc::new(CommittedBlock {
        block: Block {
            height: SeqNum(height),
            prev_hash: Digest([height as u8; 32]),
            batch_digest: Digest([1; 32]),
            batch,
        },
        certificate: QuorumCertificate {
            value: Commit {
                view: View(0),
                seq: SeqNum(height),
                digest: Digest([1; 32]),
            },
            votes: (0..3)
                .map(|i| Vote {
                    signer: NodeId(i),
                    signature: Signature([9; 64]),
                })
                .collect(),
        },
    })
}

/// A block whose batch (two 50 KB requests) is written to the batch log.
fn big_delivery(height: u64) -> Delivery {
    Delivery {
        block: block(height, batch(2, 50_000, height)),
        duplicates: vec![],
        tree: None,
    }
}

pub(crate) fn delivery(height: u64, duplicates: Vec<u32>) -> Delivery {
    Delivery {
        block: block(height, batch(3, 10, height)),
        duplicates,
        tree: None,
    }
}

fn prepared(seq: u64, view: u64) -> PreparedCertificate {
    let value = PrePrepare {
        view: View(view),
        seq: SeqNum(seq),
        digest: Digest([seq as u8; 32]),
    };
    PreparedCertificate {
        pre_prepare: Signed {
            signer: NodeId(0),
            value,
            signature: Signature([1; 64]),
        },
        prepares: QuorumCertificate {
            value: Prepare {
                view: value.view,
                seq: value.seq,
                digest: value.digest,
            },
            votes: Vec::new(),
        },
    }
}

fn checkpoint(seq: u64) -> CheckpointCertificate {
    QuorumCertificate {
        value: Checkpoint {
            seq: SeqNum(seq),
            block_hash: Digest([seq as u8; 32]),
        },
        votes: Vec::new(),
    }
}

fn identity(node_seed: u8, committee_size: u8) -> StoreIdentity {
    StoreIdentity {
        node_key: KeyPair::from_seed([node_seed; 32]).public(),
        committee: (0..committee_size)
            .map(|i| KeyPair::from_seed([i; 32]).public())
            .collect(),
        settings: bftd_protocol::ConsensusSettings::default(),
    }
}

/// The disk store passes the suite every `Storage` passes, reopening from
/// disk where the suite restarts.
#[test]
fn passes_the_shared_suite() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let store = DiskStorage::open(&path).unwrap();
    bftd_protocol::storage::suite::run(store, |store| {
        drop(store);
        DiskStorage::open(&path).unwrap()
    });
}

/// The shared suite again, each reopen after a crash: redb loses every
/// commit since the open's durable one, and the open redoes them from the
/// log's step records, every kind of record and delivery (design notes
/// §51).
#[test]
fn passes_the_shared_suite_through_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let store = DiskStorage::open(&path).unwrap();
    bftd_protocol::storage::suite::run(store, |store| {
        store.inner.crash();
        drop(store);
        DiskStorage::open(&path).unwrap()
    });
}

/// A store held open (here by another handle in the same process; across
/// processes the same file lock applies, see the crash test) cannot be
/// opened again, and the error names the path.
#[test]
fn a_store_held_open_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let first = DiskStorage::open(&path).unwrap();
    let error = open_error(&path);
    assert!(matches!(error, DiskStorageError::Locked { .. }), "{error}");
    assert!(error.to_string().contains(&*path.to_string_lossy()));
    // A clone is the same handle, not a second open.
    let clone = first.clone();
    drop(first);
    assert!(matches!(open_error(&path), DiskStorageError::Locked { .. }));
    drop(clone);
    DiskStorage::open(&path).unwrap();
}

/// Garbage, a damaged redb file, a foreign redb file, and a directory are
/// all refused with an error naming the path, never a panic.
#[test]
fn files_that_are_not_a_store_are_refused() {
    let dir = tempfile::tempdir().unwrap();

    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, vec![0x5a; 100_000]).unwrap();
    let error = open_error(&garbage);
    assert!(
        matches!(error, DiskStorageError::NotADatabase { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("garbage"), "{error}");

    // redb's magic number, then garbage: past the first check.
    let mut file = std::fs::read(&garbage).unwrap();
    file.splice(0..9, [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A]);
    let magic = dir.path().join("magic");
    std::fs::write(&magic, &file).unwrap();
    let error = open_error(&magic);
    assert!(error.to_string().contains("magic"), "{error}");

    // A real store, damaged: its second half overwritten.
    let damaged = dir.path().join("damaged");
    let mut store = DiskStorage::open(&damaged).unwrap();
    for height in 1..=20 {
        store.apply(&[], &[delivery(height, vec![])]).unwrap();
    }
    drop(store);
    let mut bytes = std::fs::read(&damaged).unwrap();
    let half = bytes.len() / 2;
    bytes.iter_mut().skip(half).for_each(|byte| *byte ^= 0xa5);
    std::fs::write(&damaged, &bytes).unwrap();
    match DiskStorage::open(&damaged) {
        // redb trusts a cleanly closed file's header; then the damage shows
        // when the data is read, as an error, not a panic.
        Ok(store) => {
            let read = store.blocks_from(SeqNum(1), 100);
            assert!(read.is_err() || read.is_ok_and(|blocks| blocks.len() < 20));
        }
        Err(error) => assert!(error.to_string().contains("damaged"), "{error}"),
    }

    // A redb database some other program wrote.
    let foreign = dir.path().join("foreign");
    {
        let db = Database::create(&foreign).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<u64, u64>::new("accounts"))
            .unwrap()
            .insert(1, 2)
            .unwrap();
        txn.commit().unwrap();
    }
    let error = open_error(&foreign);
    assert!(
        matches!(error, DiskStorageError::NotABftdStore { .. }),
        "{error}"
    );

    let error = open_error(dir.path());
    assert!(
        matches!(error, DiskStorageError::Unreadable { .. }),
        "{error}"
    );
    let error = open_error(&dir.path().join("missing/store.redb"));
    assert!(
        matches!(error, DiskStorageError::Unreadable { .. }),
        "{error}"
    );
}

/// A store of another format version is refused rather than misread.
#[test]
fn another_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    drop(DiskStorage::open(&path).unwrap());
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let version = codec::encode(&(FORMAT_VERSION + 1)).unwrap();
        txn.open_table(layout::META)
            .unwrap()
            .insert(layout::META_FORMAT, version.as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let error = open_error(&path);
    assert!(
        matches!(error, DiskStorageError::UnsupportedFormat { found, supported, .. }
            if found == FORMAT_VERSION + 1 && supported == FORMAT_VERSION),
        "{error}"
    );
}

/// Rewrites a store into the layout of an older format. 5 (and 4): the
/// log's batches in `batch_chunks` too, no `batch_log`. 2 and 3: every block
/// whole, in chunks, in `blocks`; pending batches whole in `batches`; no
/// `batch_log`, `batch_chunks`, `pending` or `headers`; for format 2 no
/// `executed` table either. The segments stay, referred to by nothing.
fn rewrite_as_format(path: &Path, version: u32) {
    assert!((2..=5).contains(&version));
    let (blocks, pending, logged) = {
        let store = DiskStorage::open(path).unwrap();
        let last = store.last_height();
        let blocks: Vec<Arc<CommittedBlock>> = (1..=last.0)
            .filter_map(|h| store.block(SeqNum(h)))
            .collect();
        let logged: Vec<(BatchKey, Vec<u8>)> = stored_batches(&store)
            .into_iter()
            .filter_map(|(seq, digest)| {
                let key = layout::batch_key(SeqNum(seq), &digest);
                let location = logged_at(&store, key)?;
                let (batch, _) = log::read(&store.inner.log_dir, key, location).unwrap();
                Some((key, codec::encode(&batch).unwrap()))
            })
            .collect();
        (blocks, store.recover().unwrap().batches, logged)
    };
    let db = Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    if version >= 4 {
        let mut chunks = txn.open_table(layout::BATCH_CHUNKS).unwrap();
        for (key, bytes) in &logged {
            let (seq, digest) = layout::batch_from_key(*key);
            for (index, chunk) in (0u32..).zip(bytes.chunks(layout::BLOCK_CHUNK_BYTES)) {
                chunks
                    .insert(layout::batch_chunk_key(seq, &digest, index), chunk)
                    .unwrap();
            }
        }
    } else {
        let mut old_blocks = txn.open_table(layout::BLOCKS).unwrap();
        for block in &blocks {
            let bytes = codec::encode(&**block).unwrap();
            for (index, chunk) in (0u32..).zip(bytes.chunks(layout::BLOCK_CHUNK_BYTES)) {
                old_blocks
                    .insert(layout::chunk_key(block.height(), index), chunk)
                    .unwrap();
            }
        }
        let mut old_batches = txn.open_table(layout::LEGACY_BATCHES).unwrap();
        for (seq, digest, batch) in &pending {
            old_batches
                .insert(
                    layout::batch_key(*seq, digest),
                    codec::encode(&**batch).unwrap().as_slice(),
                )
                .unwrap();
        }
    }
    assert!(txn.delete_table(layout::BATCH_LOG).unwrap());
    if version < 4 {
        assert!(txn.delete_table(layout::HEADERS).unwrap());
        assert!(txn.delete_table(layout::BATCH_CHUNKS).unwrap());
        assert!(txn.delete_table(layout::PENDING).unwrap());
    }
    if version == 2 {
        assert!(txn.delete_table(layout::EXECUTED).unwrap());
    }
    let version = codec::encode(&version).unwrap();
    txn.open_table(layout::META)
        .unwrap()
        .insert(layout::META_FORMAT, version.as_slice())
        .unwrap();
    txn.commit().unwrap();
}

/// The batches stored, in the log or in the chunks of an older format:
/// (seq, digest), in key order.
fn stored_batches(store: &DiskStorage) -> Vec<(u64, Digest)> {
    let txn = store.inner.db.begin_read().unwrap();
    let mut out: Vec<(u64, Digest)> = Vec::new();
    let index = txn.open_table(layout::BATCH_LOG).unwrap();
    for entry in index.iter().unwrap() {
        let (seq, digest) = layout::batch_from_key(entry.unwrap().0.value());
        out.push((seq.0, digest));
    }
    let chunks = txn.open_table(layout::BATCH_CHUNKS).unwrap();
    for entry in chunks.iter().unwrap() {
        let (seq, digest, _) = layout::batch_chunk_from_key(entry.unwrap().0.value());
        if out.last() != Some(&(seq.0, digest)) {
            out.push((seq.0, digest));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Where the log holds the batch stored under `key`, if it does.
fn logged_at(store: &DiskStorage, key: BatchKey) -> Option<log::Location> {
    let txn = store.inner.db.begin_read().unwrap();
    let index = txn.open_table(layout::BATCH_LOG).unwrap();
    let location = index.get(key).unwrap()?;
    Some(log::Location::from_bytes(location.value()))
}

/// The batch log's segment files and their sizes, in order.
fn segments(store: &DiskStorage) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = std::fs::read_dir(&store.inner.log_dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (
                entry.file_name().into_string().unwrap(),
                entry.metadata().unwrap().len(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Each segment that holds batch records, with the bytes of its header and
/// its batch records (step records left out).
fn batch_bytes(store: &DiskStorage) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for (name, _) in segments(store) {
        let bytes = std::fs::read(store.inner.log_dir.join(&name)).unwrap();
        let mut offset = log::SEGMENT_HEADER_BYTES;
        let mut batches = 0u64;
        while offset + log::HEADER_BYTES <= bytes.len() {
            let len =
                u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().unwrap()) as usize;
            if &bytes[offset..offset + 4] == b"bftB" {
                batches += (log::HEADER_BYTES + len) as u64;
            }
            offset += log::HEADER_BYTES + len;
        }
        if batches > 0 {
            out.push((name, log::SEGMENT_HEADER_BYTES as u64 + batches));
        }
    }
    out
}

/// Makes `store`'s next step commit durably (as a second after the last
/// durable one would), so that the segments it leaves unreferenced go.
fn durable_next(store: &DiskStorage) {
    store.inner.log().durable_overdue();
}

fn recorded_format(path: &Path) -> u32 {
    format_in(&Database::open(path).unwrap())
}

/// The format version a store's database records.
fn format_in(db: &Database) -> u32 {
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(layout::META).unwrap();
    let bytes = meta.get(layout::META_FORMAT).unwrap().unwrap();
    codec::decode(bytes.value()).unwrap()
}

/// A store of the previous format (2: no `executed` table) is upgraded in
/// place when opened: the format becomes 3 and the `executed` table holds,
/// for the last `request_lifetime` heights, exactly the requests each block
/// executed (duplicates left out), read from the table and not rebuilt
/// from the block. Heights further back are not filled (a restart never
/// reads them). Older versions are refused with the version named.
#[test]
fn a_format_2_store_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let mut identity = identity(0, 4);
    identity.settings.request_lifetime = 3;
    {
        let mut store = DiskStorage::open_for(&path, &identity).unwrap();
        let deliveries: Vec<Delivery> = (1..=6)
            .map(|h| delivery(h, if h == 5 { vec![1] } else { vec![] }))
            .collect();
        store.apply(&[], &deliveries).unwrap();
    }
    rewrite_as_format(&path, 2);
    assert_eq!(recorded_format(&path), 2);
    {
        let store = DiskStorage::open_for(&path, &identity).unwrap();
        assert_eq!(store.last_height(), SeqNum(6));
        for height in 3..=6 {
            let block = store.block(SeqNum(height)).unwrap();
            let keys: Vec<_> = block
                .block
                .batch
                .requests
                .iter()
                .enumerate()
                .filter(|&(i, _)| !(height == 5 && i == 1))
                .map(|(_, r)| r.key())
                .collect();
            assert_eq!(
                store.read_executed(SeqNum(height)).unwrap(),
                Some(keys),
                "height {height}"
            );
        }
        for height in 1..=2 {
            assert_eq!(store.read_executed(SeqNum(height)).unwrap(), None);
            // The block stands in for the missing entry.
            assert_eq!(store.executed(SeqNum(height)).unwrap().len(), 3);
        }
    }
    assert_eq!(recorded_format(&path), FORMAT_VERSION);

    // Format 1 (and anything older than 2) is refused, naming the version.
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let version = codec::encode(&1u32).unwrap();
        txn.open_table(layout::META)
            .unwrap()
            .insert(layout::META_FORMAT, version.as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let error = open_error(&path);
    assert!(
        matches!(error, DiskStorageError::UnsupportedFormat { found: 1, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("format version 1"), "{error}");
}

/// A store of format 3 (blocks whole in `blocks`, pending batches whole in
/// `batches`) is upgraded in place: its blocks read back as they were, its
/// pending batches are recovered, new blocks are written the new way and
/// `blocks_from` reads across both; retention prunes both kinds.
#[test]
fn a_format_3_store_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let batch_record = |seq: u64, digest: u8| Record::Batch {
        seq: SeqNum(seq),
        digest: Digest([digest; 32]),
        batch: batch(2, 100, seq),
    };
    let old: Vec<Arc<CommittedBlock>>;
    {
        let mut store = DiskStorage::open(&path).unwrap();
        let deliveries: Vec<Delivery> = (1..=4).map(|h| delivery(h, vec![])).collect();
        old = deliveries.iter().map(|d| d.block.clone()).collect();
        store
            .apply(&[batch_record(5, 5), batch_record(6, 6)], &deliveries)
            .unwrap();
    }
    rewrite_as_format(&path, 3);
    assert_eq!(recorded_format(&path), 3);

    let mut store = DiskStorage::open_with(
        &path,
        None,
        &StorageOptions {
            retain_blocks: Some(2),
            block_cache_entries: 0,
            ..StorageOptions::default()
        },
    )
    .unwrap();
    assert_eq!(store.last_height(), SeqNum(4));
    for block in &old {
        assert_eq!(store.block(block.height()).as_ref(), Some(block));
    }
    let recovered: Vec<_> = store
        .recover()
        .unwrap()
        .batches
        .iter()
        .map(|(seq, digest, batch)| (seq.0, digest.0[0], batch.requests.len()))
        .collect();
    assert_eq!(recovered, vec![(5, 5, 2), (6, 6, 2)]);

    store
        .apply(&[], &[delivery(5, vec![]), delivery(6, vec![1])])
        .unwrap();
    let all = store.blocks_from(SeqNum(1), 100).unwrap();
    let heights: Vec<u64> = all.iter().map(|(b, _)| b.height().0).collect();
    assert_eq!(heights, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(all[5].1, vec![1]);
    assert_eq!(all[4].0, delivery(5, vec![]).block);

    // A checkpoint at 6 with 2 blocks retained prunes heights 1..=3: old
    // blocks and new alike.
    store
        .apply(&[Record::StableCheckpoint(checkpoint(6))], &[])
        .unwrap();
    assert_eq!(store.first_height(), SeqNum(4));
    assert_eq!(store.block(SeqNum(3)), None);
    assert_eq!(store.block(SeqNum(4)).as_ref(), old.last());
    store
        .apply(&[], &[delivery(7, vec![]), delivery(8, vec![])])
        .unwrap();
    store
        .apply(&[Record::StableCheckpoint(checkpoint(8))], &[])
        .unwrap();
    assert_eq!(store.first_height(), SeqNum(6));
    assert_eq!(store.block(SeqNum(5)), None);
    assert_eq!(stored_batches(&store).first().map(|b| b.0), Some(6));
    assert_eq!(
        batch_bytes(&store),
        vec![],
        "the segment the rewrite left unreferenced went at the open (7 and 8 are small: in redb)"
    );
    drop(store);
    assert_eq!(recorded_format(&path), FORMAT_VERSION);
    let store = DiskStorage::open(&path).unwrap();
    assert_eq!(store.first_height(), SeqNum(6));
    assert_eq!(store.last_height(), SeqNum(8));
}

/// A store of format 5 (every batch in `batch_chunks`) is upgraded in
/// place: its blocks and pending batches read back from the chunks, new
/// large batches go to the log, and a delivery or a checkpoint finds a
/// batch in either place; pruning and discarding delete both kinds.
#[test]
fn a_format_5_store_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let batch_of = |height: u64| Record::Batch {
        seq: SeqNum(height),
        digest: Digest([1; 32]),
        batch: big_delivery(height).block.block.batch.clone(),
    };
    let old: Vec<Arc<CommittedBlock>> = (1..=3).map(|h| big_delivery(h).block).collect();
    {
        let mut store = DiskStorage::open(&path).unwrap();
        let deliveries: Vec<Delivery> = (1..=3).map(big_delivery).collect();
        store.apply(&[batch_of(4)], &deliveries).unwrap();
    }
    rewrite_as_format(&path, 5);
    assert_eq!(recorded_format(&path), 5);

    let options = StorageOptions {
        retain_blocks: Some(1),
        block_cache_entries: 0,
        ..StorageOptions::default()
    };
    let mut store = DiskStorage::open_with(&path, None, &options).unwrap();
    assert_eq!(format_in(&store.inner.db), FORMAT_VERSION);
    assert_eq!(
        segments(&store),
        vec![],
        "the old segment went: nothing refers to it"
    );
    for block in &old {
        assert_eq!(store.block(block.height()).as_ref(), Some(block));
    }
    let pending = store.recover().unwrap().batches;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].2, big_delivery(4).block.block.batch);
    // Block 4's batch is in the chunks: delivering it writes no record;
    // block 5 brings a new batch, which goes to the log.
    store
        .apply(&[], &[big_delivery(4), big_delivery(5)])
        .unwrap();
    let key = |height: u64| layout::batch_key(SeqNum(height), &Digest([1; 32]));
    assert!(logged_at(&store, key(4)).is_none());
    assert!(logged_at(&store, key(5)).is_some());
    assert_eq!(store.block(SeqNum(4)), Some(big_delivery(4).block));
    assert_eq!(store.block(SeqNum(5)), Some(big_delivery(5).block));
    // A checkpoint at 5 keeping one block below it prunes 1..=3, whose
    // batches were chunks.
    store
        .apply(&[Record::StableCheckpoint(checkpoint(5))], &[])
        .unwrap();
    assert_eq!(store.first_height(), SeqNum(4));
    assert_eq!(
        stored_batches(&store),
        vec![(4, Digest([1; 32])), (5, Digest([1; 32]))]
    );
    drop(store);
    let store = DiskStorage::open_with(&path, None, &options).unwrap();
    assert_eq!(store.blocks_from(SeqNum(4), 10).unwrap().len(), 2);
}

/// `blocks_from` steps over gaps (heights a node was still fetching) to
/// the next stored block, of either format, without visiting every
/// missing height.
#[test]
fn blocks_from_steps_over_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    {
        let mut store = DiskStorage::open(&path).unwrap();
        store
            .apply(
                &[],
                &[
                    delivery(1, vec![]),
                    delivery(2, vec![]),
                    delivery(1000, vec![]),
                ],
            )
            .unwrap();
    }
    rewrite_as_format(&path, 3);
    let mut store = DiskStorage::open(&path).unwrap();
    store
        .apply(
            &[],
            &[delivery(500, vec![]), delivery(1_000_000_000, vec![])],
        )
        .unwrap();
    let heights = |from: u64, max: usize| -> Vec<u64> {
        store
            .blocks_from(SeqNum(from), max)
            .unwrap()
            .iter()
            .map(|(block, _)| block.height().0)
            .collect()
    };
    assert_eq!(heights(1, 10), vec![1, 2, 500, 1000, 1_000_000_000]);
    assert_eq!(heights(3, 2), vec![500, 1000]);
    assert_eq!(heights(1001, 10), vec![1_000_000_000]);
    assert!(heights(1_000_000_001, 10).is_empty());
}

/// A batch is written once: when its pre-prepare is recorded; executing
/// it writes only a header over it. A stable checkpoint discards the
/// batches that were only pending, and keeps the ones blocks are made
/// of; a block whose batch never came as a record (state transfer) brings
/// it.
#[test]
fn a_batch_is_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let mut store = uncached(&path);
    let big = batch(4, 40_000, 2);
    let record = |seq: u64, digest: u8, batch: &Arc<Batch>| Record::Batch {
        seq: SeqNum(seq),
        digest: Digest([digest; 32]),
        batch: batch.clone(),
    };
    let record_bytes =
        |batch: &Batch| (log::HEADER_BYTES + codec::encode(batch).unwrap().len()) as u64;
    let logged = |seqs: &[(u64, u8)]| -> Vec<(u64, Digest)> {
        seqs.iter()
            .map(|&(seq, d)| (seq, Digest([d; 32])))
            .collect()
    };
    store
        .apply(
            &[
                // The batch of block 2 (every test block's digest is [1; 32]),
                // another view's candidate at 2, and one pending at 3.
                record(2, 1, &big),
                record(2, 7, &batch(1, 10, 9)),
                record(3, 1, &batch(1, 10, 3)),
            ],
            &[],
        )
        .unwrap();
    assert_eq!(stored_batches(&store), logged(&[(2, 1), (2, 7), (3, 1)]));
    // The big batch in the log, the small ones in redb's commit.
    let written = log::SEGMENT_HEADER_BYTES as u64 + record_bytes(&big);
    assert_eq!(
        batch_bytes(&store),
        vec![("0000000000000000.seg".into(), written)]
    );
    let segment = std::fs::read(store.inner.log_dir.join("0000000000000000.seg")).unwrap();
    assert_eq!(
        &segment[..20],
        b"bftd batch log\n\0\x01\0\0\0",
        "header, version 1"
    );
    let key = |seq: u64, d: u8| layout::batch_key(SeqNum(seq), &Digest([d; 32]));
    assert!(logged_at(&store, key(2, 1)).is_some());
    assert!(logged_at(&store, key(2, 7)).is_none() && logged_at(&store, key(3, 1)).is_none());
    let block_2 = Delivery {
        block: block(2, big.clone()),
        duplicates: vec![],
        tree: None,
    };
    // Block 1 was never recorded as a batch: it brings its own.
    let block_1 = Delivery {
        block: block(1, batch(4, 40_000, 1)),
        duplicates: vec![],
        tree: None,
    };
    store
        .apply(&[], &[block_1.clone(), block_2.clone()])
        .unwrap();
    assert_eq!(
        stored_batches(&store),
        logged(&[(1, 1), (2, 1), (2, 7), (3, 1)]),
    );
    let written = written + record_bytes(&block_1.block.block.batch);
    assert_eq!(
        batch_bytes(&store),
        vec![("0000000000000000.seg".into(), written)],
        "block 2 wrote no second copy"
    );
    assert_eq!(store.block(SeqNum(2)), Some(block_2.block.clone()));

    store
        .apply(&[Record::StableCheckpoint(checkpoint(2))], &[])
        .unwrap();
    assert_eq!(
        stored_batches(&store),
        logged(&[(1, 1), (2, 1), (3, 1)]),
        "only the candidate that became no block is gone"
    );
    assert_eq!(store.block(SeqNum(2)), Some(block_2.block.clone()));
    let pending: Vec<u64> = store
        .recover()
        .unwrap()
        .batches
        .iter()
        .map(|(seq, _, _)| seq.0)
        .collect();
    assert_eq!(pending, vec![3], "a block's batch is no longer pending");

    // What shows that delivering did not write the batch again: a block
    // whose batch differs from the one stored under its digest (which
    // cannot happen: the digest is the batch's Merkle root) reads back
    // with the stored one.
    let mut store = store;
    store
        .apply(
            &[],
            &[Delivery {
                block: block(3, batch(2, 10, 33)),
                duplicates: vec![],
                tree: None,
            }],
        )
        .unwrap();
    let block_3 = store.block(SeqNum(3)).unwrap();
    assert_eq!(block_3.block.batch, batch(1, 10, 3));
    drop(store);
    let store = DiskStorage::open(&path).unwrap();
    assert_eq!(store.block(SeqNum(2)), Some(block_2.block));
}

/// What a crash can leave in the batch log is harmless: bytes after the
/// last record the index refers to (appended and synced, then the process
/// died before the commit) and a segment nothing refers to (created, or
/// emptied and not yet deleted). The next open deletes the segment, keeps
/// the torn one for what it holds, and appends to a new one.
#[test]
fn a_crash_leaves_nothing_in_the_log_that_matters() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let deliveries: Vec<Delivery> = (1..=4).map(big_delivery).collect();
    {
        let mut store = DiskStorage::open(&path).unwrap();
        store.apply(&[], &deliveries[..3]).unwrap();
    }
    let dir_of_log = log::directory(&path);
    let first = dir_of_log.join("0000000000000000.seg");
    let torn = {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&first)
            .unwrap();
        file.write_all(b"bftB\x10\x00\x00\x00half a rec").unwrap();
        file.metadata().unwrap().len()
    };
    std::fs::write(dir_of_log.join("0000000000000005.seg"), b"never committed").unwrap();
    std::fs::write(dir_of_log.join("notes.txt"), b"not ours").unwrap();

    let mut store = DiskStorage::open(&path).unwrap();
    assert_eq!(
        segments(&store),
        vec![
            ("0000000000000000.seg".into(), torn),
            ("notes.txt".into(), 8),
        ]
    );
    for delivery in &deliveries[..3] {
        assert_eq!(
            store.block(delivery.block.height()),
            Some(delivery.block.clone())
        );
    }
    store.apply(&[], &deliveries[3..]).unwrap();
    assert_eq!(
        segments(&store)
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>(),
        vec!["0000000000000000.seg", "0000000000000006.seg", "notes.txt"],
        "appends go to a new segment, never after torn bytes"
    );
    drop(store);
    let store = DiskStorage::open(&path).unwrap();
    let all = store.blocks_from(SeqNum(1), 10).unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[3].0, deliveries[3].block);
}

/// A crash between any two of a step's writes (half its log bytes written;
/// its log synced but nothing committed; committed but the segments it
/// emptied not deleted), at every step of a history that rotates,
/// discards and prunes segments: the reopened store is exactly the model
/// (`MemStorage`) after the steps before it, or with it for a crash after
/// the commit; no segment is left that nothing refers to; and the rest of
/// the history applies and ends where the model does.
#[test]
fn a_crash_between_any_two_writes_loses_nothing_committed() {
    use bftd_protocol::storage::MemStorage;
    use log::CrashPoint;
    let batch_of = |height: u64| Record::Batch {
        seq: SeqNum(height),
        digest: Digest([1; 32]),
        batch: big_delivery(height).block.block.batch.clone(),
    };
    let safety = |view: u64| {
        Record::Safety(SafetyState {
            view: View(view),
            ..SafetyState::default()
        })
    };
    let candidate = Record::Batch {
        seq: SeqNum(2),
        digest: Digest([9; 32]),
        batch: batch(2, 50_000, 99),
    };
    let steps: Vec<(Vec<Record>, Vec<Delivery>)> = vec![
        (vec![safety(1), batch_of(1)], vec![]),
        (vec![batch_of(2), candidate], vec![big_delivery(1)]),
        (
            vec![safety(2), Record::Prepared(prepared(3, 2))],
            vec![big_delivery(2), delivery(3, vec![])],
        ),
        (vec![Record::StableCheckpoint(checkpoint(2))], vec![]),
        (vec![batch_of(4), batch_of(5)], vec![big_delivery(4)]),
        (vec![], vec![big_delivery(5), big_delivery(6)]),
        (
            vec![Record::StableCheckpoint(checkpoint(6))],
            vec![big_delivery(7)],
        ),
        (vec![batch_of(8), safety(3)], vec![big_delivery(8)]),
        (vec![Record::StableCheckpoint(checkpoint(8))], vec![]),
    ];
    let options = StorageOptions {
        retain_blocks: Some(2),
        ..StorageOptions::default()
    };
    let model_after = |count: usize| {
        let mut model = MemStorage::with_retention(2);
        for (records, deliveries) in &steps[..count] {
            model.apply(records, deliveries).unwrap();
        }
        model
    };
    let same = |store: &DiskStorage, model: &MemStorage, context: &str| {
        let (ours, theirs) = (store.recover().unwrap(), model.recover().unwrap());
        assert_eq!(ours.safety, theirs.safety, "{context}");
        assert_eq!(
            ours.stable_checkpoint, theirs.stable_checkpoint,
            "{context}"
        );
        assert_eq!(ours.prepared, theirs.prepared, "{context}");
        let sorted = |mut batches: Vec<(SeqNum, Digest, Arc<Batch>)>| {
            batches.sort_by_key(|(seq, digest, _)| (*seq, *digest));
            batches
        };
        assert_eq!(sorted(ours.batches), sorted(theirs.batches), "{context}");
        assert_eq!(store.last_height(), model.last_height(), "{context}");
        assert_eq!(
            DiskStorage::first_height(store),
            BlockSource::first_height(model),
            "{context}"
        );
        for height in 1..=model.last_height().0 {
            let height = SeqNum(height);
            assert_eq!(
                store.block(height),
                model.block(height),
                "{context}, block {height:?}"
            );
        }
        // Every segment is referred to, and every referred one is there.
        let live: Vec<String> = store
            .inner
            .log()
            .live()
            .keys()
            .map(|id| format!("{id:016x}.seg"))
            .collect();
        let files: Vec<String> = segments(store).into_iter().map(|(name, _)| name).collect();
        assert!(
            files.iter().all(|file| live.contains(file)),
            "{context}: segments {files:?}, referred to {live:?}"
        );
    };
    let mut crashes = 0;
    for at in 0..steps.len() {
        for point in [
            CrashPoint::TornAppend,
            CrashPoint::BeforeCommit,
            CrashPoint::AfterCommit,
        ] {
            let context = format!("crash {point:?} in step {at}");
            let dir = tempfile::tempdir().unwrap();
            let path = store_path(&dir);
            let mut store = DiskStorage::open_with(&path, None, &options).unwrap();
            for (i, (records, deliveries)) in steps[..at].iter().enumerate() {
                // Every third commit durable: a crash then rolls redb back
                // to one in the middle of the history, not to the open.
                if i % 3 == 2 {
                    durable_next(&store);
                }
                store.apply(records, deliveries).unwrap();
            }
            store.inner.log().crash_at = Some(point);
            let (records, deliveries) = &steps[at];
            assert!(store.apply(records, deliveries).is_err(), "{context}");
            crashes += 1;
            drop(store);

            // Once its log is synced a step is durable: only a torn append
            // loses it. The reopened store is redb's last durable commit and
            // the log's replay of the steps after it.
            let mut store = DiskStorage::open_with(&path, None, &options).unwrap();
            let applied = if point == CrashPoint::TornAppend {
                at
            } else {
                at + 1
            };
            same(&store, &model_after(applied), &context);
            for (records, deliveries) in &steps[applied..] {
                store.apply(records, deliveries).unwrap();
            }
            // Segments emptied since the open go with the next durable
            // commit: the reopen's.
            drop(store);
            let store = DiskStorage::open_with(&path, None, &options).unwrap();
            same(
                &store,
                &model_after(steps.len()),
                &format!("{context}, then the rest"),
            );
        }
    }
    assert_eq!(crashes, 27);
}

/// A segment the index refers to that is gone (a data directory copied
/// without it) is refused at open, naming it; a record that is not what
/// the index says (another batch, cut short) is refused when read.
#[test]
fn a_missing_or_wrong_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let mut store = uncached(&path);
    store
        .apply(&[], &[big_delivery(1), big_delivery(2)])
        .unwrap();
    let key = |height: u64| layout::batch_key(SeqNum(height), &Digest([1; 32]));
    let first = logged_at(&store, key(1)).unwrap();
    let second = logged_at(&store, key(2)).unwrap();
    let log_dir = store.inner.log_dir.clone();
    let refused = |height: u64, location: log::Location, why: &str| match log::read(
        &log_dir,
        key(height),
        location,
    ) {
        Err(DiskStorageError::DamagedLog { reason, .. }) if reason.contains(why) => {}
        other => panic!("{location:?} for {height}: {other:?}, not \"{why}\""),
    };
    // The index entry of 2 pointed at 1's record.
    refused(2, first, "not batch 2");
    // A record longer than the file.
    let cut = log::Location {
        len: second.len + 1_000_000,
        ..second
    };
    refused(2, cut, "cut short");
    // Not at a record's start.
    let inside = log::Location {
        offset: first.offset + 1,
        ..first
    };
    refused(1, inside, "no record starts here");
    // A length no batch can have: refused before anything is allocated.
    let huge = log::Location {
        len: u32::MAX,
        ..first
    };
    refused(1, huge, "more than any batch");
    drop(store);

    std::fs::remove_file(log_dir.join("0000000000000000.seg")).unwrap();
    let error = open_error(&path);
    assert!(
        matches!(&error, DiskStorageError::DamagedLog { reason, .. } if reason.contains("missing")),
        "{error}"
    );
    assert!(
        error.to_string().contains("0000000000000000.seg"),
        "{error}"
    );
    std::fs::remove_dir(&log_dir).unwrap();
    let error = open_error(&path);
    assert!(error.to_string().contains("missing"), "{error}");
}

/// Segments rotate when full, and a segment goes once nothing refers to
/// it: pruned blocks' batches, discarded candidates.
#[test]
fn segments_rotate_and_go_when_nothing_refers_to_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let mut store = DiskStorage::open_with(
        &path,
        None,
        &StorageOptions {
            retain_blocks: Some(2),
            ..StorageOptions::default()
        },
    )
    .unwrap();
    // 100 KB batches: a few a segment (256 KiB in unit tests).
    let big = big_delivery;
    for height in 1..=12 {
        store.apply(&[], &[big(height)]).unwrap();
    }
    let before = segments(&store);
    assert!(before.len() >= 4, "{before:?}");
    assert_eq!(store.inner.log().live().values().sum::<u64>(), 12);
    durable_next(&store);
    store
        .apply(&[Record::StableCheckpoint(checkpoint(12))], &[])
        .unwrap();
    assert_eq!(store.first_height(), SeqNum(10));
    let after = segments(&store);
    assert!(
        after.len() < before.len() && after.len() <= 2,
        "{before:?} → {after:?}"
    );
    assert_eq!(store.inner.log().live().values().sum::<u64>(), 3);
    for height in 10..=12 {
        assert_eq!(store.block(SeqNum(height)), Some(big(height).block));
    }
    let after = batch_bytes(&store);
    drop(store);
    let store = DiskStorage::open(&path).unwrap();
    assert_eq!(batch_bytes(&store), after, "no batch lost at open");
    assert_eq!(store.block(SeqNum(11)), Some(big(11).block));
}

/// Every stored block records what it executed, and a stable checkpoint
/// deletes what is older than `request_lifetime` below it (never what a
/// restart reads: the heights above `checkpoint - lifetime`).
#[test]
fn executed_keys_are_kept_for_the_request_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let mut identity = identity(0, 4);
    identity.settings.request_lifetime = 3;
    let mut store = DiskStorage::open_for(&path, &identity).unwrap();
    let deliveries: Vec<Delivery> = (1..=10).map(|h| delivery(h, vec![0])).collect();
    store.apply(&[], &deliveries).unwrap();
    for height in 1..=10 {
        assert_eq!(
            store.read_executed(SeqNum(height)).unwrap().unwrap().len(),
            2
        );
    }
    store
        .apply(&[Record::StableCheckpoint(checkpoint(8))], &[])
        .unwrap();
    for height in 1..=5 {
        assert_eq!(
            store.read_executed(SeqNum(height)).unwrap(),
            None,
            "{height}"
        );
    }
    for height in 6..=10 {
        assert!(
            store.read_executed(SeqNum(height)).unwrap().is_some(),
            "{height}"
        );
    }
}

/// With `retain_blocks = 5`, a stable checkpoint at 20 prunes the blocks
/// below 15 (their duplicates and executed keys too) and nothing at or
/// above; reads below the first height are refused naming it, `block`
/// finds nothing there (even cached), and the first height survives a
/// reopen. Without the option nothing is pruned.
#[test]
fn retain_blocks_prunes_below_the_checkpoint_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let options = StorageOptions {
        retain_blocks: Some(5),
        ..StorageOptions::default()
    };
    {
        let mut store = DiskStorage::open_with(&path, None, &options).unwrap();
        let deliveries: Vec<Delivery> = (1..=30).map(|h| delivery(h, vec![0])).collect();
        store.apply(&[], &deliveries).unwrap();
        assert_eq!(store.first_height(), SeqNum(1));
        store
            .apply(&[Record::StableCheckpoint(checkpoint(20))], &[])
            .unwrap();
        assert_eq!(store.first_height(), SeqNum(15));
        assert_eq!(BlockSource::first_height(&store), SeqNum(15));
        assert!(store.block(SeqNum(14)).is_none(), "pruned, though cached");
        assert!(store.block(SeqNum(15)).is_some());
        assert!(store.block(SeqNum(30)).is_some());
        assert_eq!(store.duplicates(SeqNum(15)), vec![0]);
        let error = store.blocks_from(SeqNum(3), 10).unwrap_err();
        assert!(
            matches!(
                disk_error(&error),
                DiskStorageError::Pruned {
                    height: SeqNum(3),
                    first_height: SeqNum(15),
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("from height 15"), "{error}");
        let from = store.blocks_from(SeqNum(15), 100).unwrap();
        assert_eq!(from.len(), 16);
        assert_eq!(from[0].0.height(), SeqNum(15));
        // An older checkpoint prunes nothing more.
        store
            .apply(&[Record::StableCheckpoint(checkpoint(18))], &[])
            .unwrap();
        assert_eq!(store.first_height(), SeqNum(15));
    }
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        for (table, first) in [(layout::DUPLICATES, 15u64), (layout::EXECUTED, 15)] {
            let table = txn.open_table(table).unwrap();
            let (key, _) = table.first().unwrap().unwrap();
            assert_eq!(key.value(), layout::seq_key(SeqNum(first)));
        }
    }
    let store = DiskStorage::open(&path).unwrap();
    assert_eq!(store.first_height(), SeqNum(15));
    assert_eq!(store.last_height(), SeqNum(30));

    // Without retain_blocks, a checkpoint prunes no block.
    let dir = tempfile::tempdir().unwrap();
    let mut store = DiskStorage::open(&store_path(&dir)).unwrap();
    let deliveries: Vec<Delivery> = (1..=30).map(|h| delivery(h, vec![])).collect();
    store.apply(&[], &deliveries).unwrap();
    store
        .apply(&[Record::StableCheckpoint(checkpoint(20))], &[])
        .unwrap();
    assert_eq!(store.first_height(), SeqNum(1));
    assert!(store.block(SeqNum(1)).is_some());
}

/// A hold keeps the blocks from its height on, whatever `retain_blocks`
/// says: a checkpoint at 20 with 5 retained prunes only below the hold at
/// 9; with the hold at 17, a checkpoint at 25 prunes below 17, not below
/// the retention line (20); released, the next prunes to that line.
#[test]
fn a_hold_keeps_the_blocks_the_application_needs() {
    let dir = tempfile::tempdir().unwrap();
    let options = StorageOptions {
        retain_blocks: Some(5),
        ..StorageOptions::default()
    };
    let mut store = DiskStorage::open_with(&store_path(&dir), None, &options).unwrap();
    let deliveries: Vec<Delivery> = (1..=30).map(|h| delivery(h, vec![])).collect();
    store.apply(&[], &deliveries).unwrap();
    store.hold_from(SeqNum(9));
    store
        .apply(&[Record::StableCheckpoint(checkpoint(20))], &[])
        .unwrap();
    assert_eq!(store.first_height(), SeqNum(9));
    assert!(store.block(SeqNum(9)).is_some());
    assert!(store.block(SeqNum(8)).is_none());
    store.hold_from(SeqNum(17));
    store
        .apply(&[Record::StableCheckpoint(checkpoint(25))], &[])
        .unwrap();
    assert_eq!(store.first_height(), SeqNum(17), "held at 17, not 20");
    store.hold_from(SeqNum(u64::MAX));
    store
        .apply(&[Record::StableCheckpoint(checkpoint(26))], &[])
        .unwrap();
    assert_eq!(store.first_height(), SeqNum(21));
}

/// Pruning a long history goes at most `PRUNE_MAX_BLOCKS` blocks per
/// checkpoint, oldest first, so one step never deletes the whole store.
#[test]
fn pruning_a_long_history_is_spread_over_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let options = StorageOptions {
        retain_blocks: Some(2),
        ..StorageOptions::default()
    };
    let mut store = DiskStorage::open_with(&store_path(&dir), None, &options).unwrap();
    let deliveries: Vec<Delivery> = (1..=600).map(|h| delivery(h, vec![])).collect();
    store.apply(&[], &deliveries).unwrap();
    store
        .apply(&[Record::StableCheckpoint(checkpoint(590))], &[])
        .unwrap();
    assert_eq!(store.first_height(), SeqNum(257));
    store
        .apply(&[Record::StableCheckpoint(checkpoint(595))], &[])
        .unwrap();
    assert_eq!(store.first_height(), SeqNum(513));
    store
        .apply(&[Record::StableCheckpoint(checkpoint(600))], &[])
        .unwrap();
    assert_eq!(store.first_height(), SeqNum(598));
}

/// `open_for` records the identity in a new store and refuses the store
/// for another node or another committee; a store created without one
/// adopts the first identity it is opened for.
#[test]
fn a_store_belongs_to_one_node_and_committee() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    drop(DiskStorage::open_for(&path, &identity(1, 4)).unwrap());
    drop(DiskStorage::open_for(&path, &identity(1, 4)).unwrap());
    drop(DiskStorage::open(&path).unwrap());

    let error = DiskStorage::open_for(&path, &identity(2, 4)).unwrap_err();
    assert!(
        matches!(disk_error(&error), DiskStorageError::WrongNode { .. }),
        "{error}"
    );
    let error = DiskStorage::open_for(&path, &identity(1, 7)).unwrap_err();
    assert!(
        matches!(
            disk_error(&error),
            DiskStorageError::WrongCommittee {
                expected: 7,
                found: 4,
                ..
            }
        ),
        "{error}"
    );

    let other = dir.path().join("other.redb");
    drop(DiskStorage::open(&other).unwrap());
    drop(DiskStorage::open_for(&other, &identity(3, 4)).unwrap());
    assert!(DiskStorage::open_for(&other, &identity(1, 4)).is_err());

    // Its blocks were executed under the cluster's consensus settings: a
    // restart under other ones is refused, naming the setting.
    let mut changed = identity(1, 4);
    changed.settings.request_lifetime += 1;
    let error = DiskStorage::open_for(&path, &changed).unwrap_err();
    assert!(
        matches!(
            disk_error(&error),
            DiskStorageError::OtherSettings {
                setting: "request_lifetime",
                ..
            }
        ),
        "{error}"
    );
}

/// A value damaged on disk surfaces as a decode error naming its table
/// (`recover`, `blocks_from`) or as a missing block (`block`), never as a
/// panic.
#[test]
fn damaged_values_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let mut store = DiskStorage::open(&path).unwrap();
    store.apply(&[], &[delivery(1, vec![])]).unwrap();
    drop(store);
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(layout::STATE)
            .unwrap()
            .insert(layout::STATE_SAFETY, [0xff_u8; 3].as_slice())
            .unwrap();
        txn.open_table(layout::HEADERS)
            .unwrap()
            .insert(layout::seq_key(SeqNum(1)), [0xff_u8; 3].as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let store = DiskStorage::open(&path).unwrap();
    let error = store.recover().unwrap_err();
    assert!(
        matches!(
            disk_error(&error),
            DiskStorageError::Decode { table: "state", .. }
        ),
        "{error}"
    );
    assert_eq!(store.block(SeqNum(1)), None);
    let error = store.blocks_from(SeqNum(1), 10).unwrap_err();
    assert!(
        matches!(
            disk_error(&error),
            DiskStorageError::Decode {
                table: "headers",
                ..
            }
        ),
        "{error}"
    );
}

/// A step that fails part way (here: a batch too large to encode) writes
/// nothing, not even the records before the failing one.
#[test]
fn a_failed_step_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let mut store = DiskStorage::open(&path).unwrap();
    let safety = SafetyState {
        view: View(1),
        ..SafetyState::default()
    };
    store.apply(&[Record::Safety(safety.clone())], &[]).unwrap();

    let mut newer = safety.clone();
    newer.view = View(2);
    let huge = batch(1, 65 * 1024 * 1024, 7);
    let error = store
        .apply(
            &[
                Record::Safety(newer),
                Record::Batch {
                    seq: SeqNum(7),
                    digest: Digest([7; 32]),
                    batch: huge,
                },
            ],
            &[delivery(1, vec![])],
        )
        .unwrap_err();
    assert!(
        matches!(
            disk_error(&error),
            DiskStorageError::Encode {
                table: "batches",
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(store.recover().unwrap().safety, safety);
    assert_eq!(store.last_height(), SeqNum(0));
    assert_eq!(store.block(SeqNum(1)), None);
    // The store still works after the failed step.
    store.apply(&[], &[delivery(1, vec![])]).unwrap();
    assert_eq!(store.last_height(), SeqNum(1));
}

/// Checkpoints discard exactly what is at or below them (every digest at
/// the checkpoint's sequence included), and an older checkpoint changes
/// nothing.
#[test]
fn a_checkpoint_discards_at_or_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let mut store = DiskStorage::open(&path).unwrap();
    let batch_record = |seq: u64, digest: u8| Record::Batch {
        seq: SeqNum(seq),
        digest: Digest([digest; 32]),
        batch: batch(1, 1, seq),
    };
    store
        .apply(
            &[
                batch_record(7, 0),
                batch_record(8, 0),
                batch_record(8, 0xff),
                batch_record(9, 0),
                Record::Prepared(prepared(8, 1)),
                Record::Prepared(prepared(9, 1)),
                Record::Prepared(prepared(300, 1)),
                Record::StableCheckpoint(checkpoint(8)),
                // In the same step, after the checkpoint: kept.
                batch_record(8, 1),
            ],
            &[],
        )
        .unwrap();
    store
        .apply(&[Record::StableCheckpoint(checkpoint(5))], &[])
        .unwrap();
    drop(store);
    let store = DiskStorage::open(&path).unwrap();
    let recovered = store.recover().unwrap();
    assert_eq!(recovered.stable_checkpoint, Some(checkpoint(8)));
    let seqs: Vec<_> = recovered.prepared.iter().map(|cert| cert.seq().0).collect();
    assert_eq!(seqs, vec![9, 300], "in sequence order");
    let batches: Vec<_> = recovered
        .batches
        .iter()
        .map(|(seq, digest, _)| (seq.0, digest.0[0]))
        .collect();
    assert_eq!(batches, vec![(8, 1), (9, 0)]);
}

/// Blocks read back equal what was stored, from the cache and from disk;
/// `last_height` follows `apply`; `blocks_from` returns blocks in order with
/// their duplicates, at most `max`; re-storing a height replaces its
/// duplicates.
#[test]
fn blocks_read_back_from_cache_and_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let mut store = DiskStorage::open(&path).unwrap();
    let deliveries: Vec<_> = (1..=5)
        .map(|height| delivery(height, if height == 3 { vec![0, 2] } else { vec![] }))
        .collect();
    store.apply(&[], &deliveries[..2]).unwrap();
    store.apply(&[], &deliveries[2..]).unwrap();
    assert_eq!(store.last_height(), SeqNum(5));
    assert_eq!(store.block(SeqNum(3)), Some(deliveries[2].block.clone()));
    assert_eq!(store.duplicates(SeqNum(3)), vec![0, 2]);

    let options = StorageOptions {
        block_cache_entries: 0,
        ..StorageOptions::default()
    };
    drop(store);
    let mut store = DiskStorage::open_with(&path, None, &options).unwrap();
    assert_eq!(store.last_height(), SeqNum(5));
    for delivery in &deliveries {
        let height = delivery.block.height();
        assert_eq!(store.block(height), Some(delivery.block.clone()));
        assert_eq!(store.duplicates(height), delivery.duplicates);
    }
    assert_eq!(store.block(SeqNum(6)), None);
    assert_eq!(store.duplicates(SeqNum(6)), Vec::<u32>::new());

    let from = store.blocks_from(SeqNum(2), 3).unwrap();
    let heights: Vec<_> = from.iter().map(|(block, _)| block.height().0).collect();
    assert_eq!(heights, vec![2, 3, 4]);
    assert_eq!(from[1].1, vec![0, 2]);
    assert!(store.blocks_from(SeqNum(6), 3).unwrap().is_empty());
    assert!(store.blocks_from(SeqNum(1), 0).unwrap().is_empty());

    store.apply(&[], &[delivery(3, vec![])]).unwrap();
    assert_eq!(store.duplicates(SeqNum(3)), Vec::<u32>::new());
    assert_eq!(
        store.last_height(),
        SeqNum(5),
        "re-storing does not lower it"
    );
}

/// A new store is a file at `path`, usable from another thread (the shell
/// reads blocks from the transport's tasks while it applies steps).
#[test]
fn is_send_sync_and_creates_the_file() {
    fn assert_send_sync<T: Send + Sync + 'static>(_: &T) {}
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let mut store = DiskStorage::open(&path).unwrap();
    assert_send_sync(&store);
    assert!(path.is_file());
    assert_eq!(store.path(), path);
    let reader = store.clone();
    let thread = std::thread::spawn(move || {
        while reader.last_height() < SeqNum(20) {
            std::thread::yield_now();
        }
        reader.block(SeqNum(20)).is_some()
    });
    for height in 1..=20 {
        store.apply(&[], &[delivery(height, vec![])]).unwrap();
    }
    assert!(thread.join().unwrap());
    let mut log = std::io::sink();
    writeln!(log, "{store:?}").unwrap();
}

/// A batch larger than a chunk is split and its block read back whole; a
/// missing chunk or a block stored under the wrong height is reported as
/// damage. The same for blocks of format 3 (whole, in chunks), and
/// re-storing such a height replaces its old chunks.
#[test]
fn large_blocks_are_chunked_and_checked() {
    let options = StorageOptions {
        block_cache_entries: 0,
        ..StorageOptions::default()
    };
    let large = |height: u64| Delivery {
        block: block(height, batch(5, 40_000, height)),
        duplicates: vec![1],
        tree: None,
    };
    let deliveries = [large(1), large(2), large(3)];
    let new_store = |dir: &tempfile::TempDir| {
        let path = store_path(dir);
        let mut store = DiskStorage::open_with(&path, None, &options).unwrap();
        store.apply(&[], &deliveries).unwrap();
        for delivery in &deliveries {
            assert_eq!(
                store.block(delivery.block.height()),
                Some(delivery.block.clone())
            );
        }
        let all = store.blocks_from(SeqNum(1), 10).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].0, deliveries[2].block);
        assert_eq!(store.blocks_from(SeqNum(2), 1).unwrap().len(), 1);
        path
    };
    // Damage is found and named, and the blocks before it still read.
    let check_damage = |path: &Path, broken: &dyn Fn(&DiskStorageError) -> bool| {
        let store = DiskStorage::open_with(path, None, &options).unwrap();
        assert_eq!(store.last_height(), SeqNum(4));
        assert_eq!(store.block(SeqNum(3)), None);
        let error = store.blocks_from(SeqNum(3), 1).unwrap_err();
        assert!(broken(disk_error(&error)), "{error}");
        assert_eq!(store.block(SeqNum(4)), None);
        let error = store.blocks_from(SeqNum(4), 1).unwrap_err();
        assert!(
            matches!(disk_error(&error), DiskStorageError::MisplacedBlock { .. }),
            "{error}"
        );
        assert_eq!(store.blocks_from(SeqNum(1), 2).unwrap().len(), 2);
    };

    // Header 2 copied to height 4: a block stored under the wrong height.
    let misplace_block_2 = |db: &Database| {
        let txn = db.begin_write().unwrap();
        {
            let mut headers = txn.open_table(layout::HEADERS).unwrap();
            let header = headers
                .get(layout::seq_key(SeqNum(2)))
                .unwrap()
                .unwrap()
                .value()
                .to_vec();
            headers
                .insert(layout::seq_key(SeqNum(4)), header.as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    };

    // Format 6: the batch in the log, a header over it. One byte of block
    // 3's record flipped: its checksum fails.
    let dir = tempfile::tempdir().unwrap();
    let path = new_store(&dir);
    let location = {
        let store = DiskStorage::open(&path).unwrap();
        logged_at(&store, layout::batch_key(SeqNum(3), &Digest([1; 32]))).unwrap()
    };
    assert!(location.len > 200_000, "{location:?}");
    {
        let segment = log::directory(&path).join(format!("{:016x}.seg", location.segment));
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes[location.offset as usize + log::HEADER_BYTES + 1000] ^= 1;
        std::fs::write(&segment, bytes).unwrap();
    }
    misplace_block_2(&Database::open(&path).unwrap());
    check_damage(
        &path,
        &|error| matches!(error, DiskStorageError::DamagedLog { reason, .. } if reason.contains("checksum")),
    );

    // Format 5: the batch in chunks under its height and digest.
    let dir = tempfile::tempdir().unwrap();
    let path = new_store(&dir);
    rewrite_as_format(&path, 5);
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut chunks = txn.open_table(layout::BATCH_CHUNKS).unwrap();
            let count = chunks
                .range(
                    layout::batch_chunk_key(SeqNum(2), &Digest([1; 32]), 0)
                        ..=layout::batch_chunk_key(SeqNum(2), &Digest([1; 32]), u32::MAX),
                )
                .unwrap()
                .count();
            assert!(count > 5, "200 KB is more than five chunks");
            chunks
                .remove(layout::batch_chunk_key(SeqNum(3), &Digest([1; 32]), 2))
                .unwrap();
        }
        txn.commit().unwrap();
        misplace_block_2(&db);
    }
    check_damage(&path, &|error| {
        matches!(error, DiskStorageError::BrokenBatch { chunk: 2, .. })
    });

    // Format 3: the whole block in chunks.
    let dir = tempfile::tempdir().unwrap();
    let path = new_store(&dir);
    rewrite_as_format(&path, 3);
    let old_chunks = |db: &Database, height: u64| {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(layout::BLOCKS).unwrap();
        table
            .range(
                layout::chunk_key(SeqNum(height), 0)..=layout::chunk_key(SeqNum(height), u32::MAX),
            )
            .unwrap()
            .count()
    };
    {
        let db = Database::open(&path).unwrap();
        assert!(old_chunks(&db, 2) > 5, "200 KB is more than five chunks");
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(layout::BLOCKS).unwrap();
            table.remove(layout::chunk_key(SeqNum(3), 2)).unwrap();
            let block_2: Vec<(u32, Vec<u8>)> = table
                .range(layout::chunk_key(SeqNum(2), 0)..=layout::chunk_key(SeqNum(2), u32::MAX))
                .unwrap()
                .map(|entry| {
                    let (key, value) = entry.unwrap();
                    (
                        layout::chunk_from_key(key.value()).1,
                        value.value().to_vec(),
                    )
                })
                .collect();
            for (index, chunk) in block_2 {
                table
                    .insert(layout::chunk_key(SeqNum(4), index), chunk.as_slice())
                    .unwrap();
            }
        }
        txn.commit().unwrap();
    }
    check_damage(&path, &|error| {
        matches!(error, DiskStorageError::BrokenBlock { chunk: 2, .. })
    });
    let mut store = DiskStorage::open_with(&path, None, &options).unwrap();
    store.apply(&[], &[delivery(2, vec![])]).unwrap();
    assert_eq!(store.block(SeqNum(2)), Some(delivery(2, vec![]).block));
    drop(store);
    assert_eq!(old_chunks(&Database::open(&path).unwrap(), 2), 0);
}

/// A step record lost in the middle of the log (damage, not a torn tail) is
/// refused at the open, naming the gap, never skipped: redoing the steps
/// after it without it would make a state no run of the replica made.
#[test]
fn a_replay_refuses_a_missing_step() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let safety = |view: u64| {
        Record::Safety(SafetyState {
            view: View(view),
            ..SafetyState::default()
        })
    };
    let mut store = DiskStorage::open(&path).unwrap();
    for view in 1..=3 {
        store.apply(&[safety(view)], &[]).unwrap();
    }
    // A crash: redb keeps only its last durable commit (the open's).
    store.inner.crash();
    drop(store);
    let segment = log::directory(&path).join("0000000000000000.seg");
    let mut bytes = std::fs::read(&segment).unwrap();
    let mut steps = Vec::new();
    let mut offset = log::SEGMENT_HEADER_BYTES;
    while offset + log::HEADER_BYTES <= bytes.len() {
        let len = u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().unwrap()) as usize;
        if &bytes[offset..offset + 4] == b"bftS" {
            steps.push(offset);
        }
        offset += log::HEADER_BYTES + len;
    }
    assert_eq!(steps.len(), 3, "one step record per step");
    // Each open below starts from the file the crash left (an open's
    // replay ends in a durable commit).
    let crashed = std::fs::read(&path).unwrap();
    // Intact, the replay redoes all three.
    {
        let store = DiskStorage::open(&path).unwrap();
        assert_eq!(store.recover().unwrap().safety.view, View(3));
    }
    // The middle one damaged: refused, naming the gap.
    std::fs::write(&path, &crashed).unwrap();
    bytes[steps[1] + log::HEADER_BYTES] ^= 1;
    std::fs::write(&segment, &bytes).unwrap();
    let error = open_error(&path);
    assert!(
        matches!(&error, DiskStorageError::DamagedLog { reason, .. } if reason.contains("intact steps follow")),
        "{error}"
    );
    // The last one damaged is a torn tail: the two before it are redone.
    bytes[steps[1] + log::HEADER_BYTES] ^= 1;
    bytes[steps[2] + log::HEADER_BYTES] ^= 1;
    std::fs::write(&segment, &bytes).unwrap();
    std::fs::write(&path, &crashed).unwrap();
    let store = DiskStorage::open(&path).unwrap();
    assert_eq!(store.recover().unwrap().safety.view, View(2));
}

//! How long a node takes to restart, measured (design notes §29).
//!
//! `restart_time` (ignored; run with
//! `cargo test -p bftd --release --test restart -- --ignored restart_time --nocapture`,
//! `BFTD_RESTART_TX=N` transactions, default 20,000;
//! `BFTD_RESTART_RETAIN=N` to keep only N blocks below the stable
//! checkpoint) builds a store of N transactions (1,000 per block, 512-byte
//! payloads, a stable checkpoint every 64 blocks) and times what a node
//! does before it can serve: open the store, recover, build the replica.
//! Four numbers:
//!
//! - clean restart: the store was closed cleanly;
//! - crash restart: a child process (this binary, re-executed) opened the
//!   store, committed one more block and was killed with SIGKILL, so redb
//!   repairs the file (a walk of the whole file) before the replica is
//!   built;
//! - and each again the way a restart worked before bounded restart: after
//!   opening, read and decode every block from height 1, check its link,
//!   and replay the last `request_lifetime` blocks' requests into the
//!   at-most-once table (what `Replica::new` did), so before and after are
//!   measured on the same store in one run.

use bftd::storage::{DiskStorage, StorageOptions, StoreIdentity};
use bftd_crypto::{Digest, KeyPair, PublicKey};
use bftd_protocol::certificate::QuorumCertificate;
use bftd_protocol::message::{Checkpoint, Commit};
use bftd_protocol::replica::{Replica, ReplicaSetup};
use bftd_protocol::{
    Batch, Block, BlockSource, CommittedBlock, Committee, Config, Delivery, NodeId, Record,
    Request, SeqNum, SignedRequest, Storage, View,
};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Transactions in the store.
const TX: &str = "BFTD_RESTART_TX";
/// Blocks kept below the stable checkpoint (unset: all).
const RETAIN: &str = "BFTD_RESTART_RETAIN";
/// Set in the child: the store to add a block to before it is killed.
const CHILD_STORE: &str = "BFTD_RESTART_CHILD_STORE";

const PER_BLOCK: u64 = 1000;
const PAYLOAD_BYTES: usize = 512;
/// Blocks written per `apply` while building (one fsync each).
const BLOCKS_PER_WRITE: u64 = 16;

fn keys() -> Vec<KeyPair> {
    (0..4u8).map(|i| KeyPair::from_seed([i + 1; 32])).collect()
}

fn committee() -> Committee {
    Committee::new(&keys().iter().map(KeyPair::public).collect::<Vec<_>>()).unwrap()
}

fn config() -> Config {
    Config::default()
}

fn identity() -> StoreIdentity {
    StoreIdentity::new(keys()[0].public(), &committee(), config().consensus())
}

/// The store's options: `BFTD_RESTART_RETAIN` blocks kept below the
/// stable checkpoint, if set (the child inherits it).
fn options() -> StorageOptions {
    StorageOptions {
        retain_blocks: std::env::var(RETAIN).ok().and_then(|t| t.parse().ok()),
        ..StorageOptions::default()
    }
}

/// Block `height`, chained to `prev_hash`: `PER_BLOCK` requests with
/// distinct keys.
fn block(height: u64, prev_hash: Digest) -> Arc<CommittedBlock> {
    let requests = (0..PER_BLOCK)
        .map(|i| {
            SignedRequest::unsigned(Request {
                client: PublicKey([(i % 251) as u8; 32]),
                request_id: height * PER_BLOCK + i,
                valid_until: SeqNum(height + config().request_lifetime),
                payload: vec![(height % 256) as u8; PAYLOAD_BYTES],
            })
        })
        .collect();
    let digest = Digest([(height % 256) as u8; 32]);
    Arc::new(CommittedBlock {
        block: Block {
            height: SeqNum(height),
            prev_hash,
            batch_digest: digest,
            batch: Arc::new(Batch { requests }),
        },
        certificate: QuorumCertificate {
            value: Commit {
                view: View(0),
                seq: SeqNum(height),
                digest,
            },
            votes: Vec::new(),
        },
    })
}

fn checkpoint(block: &CommittedBlock) -> Record {
    Record::StableCheckpoint(QuorumCertificate {
        value: Checkpoint {
            seq: block.height(),
            block_hash: block.hash(),
        },
        votes: Vec::new(),
    })
}

/// Appends blocks to the store up to `last`, a stable checkpoint at every
/// checkpoint interval, as a replica would have written them.
fn extend(store: &mut DiskStorage, last: u64) {
    let interval = config().checkpoint_interval;
    let mut height = store.last_height().0 + 1;
    let mut prev_hash = match height - 1 {
        0 => Digest::ZERO,
        below => store.block(SeqNum(below)).unwrap().hash(),
    };
    while height <= last {
        let mut records = Vec::new();
        let mut deliveries = Vec::new();
        for _ in 0..BLOCKS_PER_WRITE {
            if height > last {
                break;
            }
            let block = block(height, prev_hash);
            prev_hash = block.hash();
            if height.is_multiple_of(interval) {
                records.push(checkpoint(&block));
            }
            deliveries.push(Delivery {
                block,
                duplicates: Vec::new(),
                tree: None,
            });
            height += 1;
        }
        store.apply(&records, &deliveries).unwrap();
    }
}

fn open(path: &Path) -> DiskStorage {
    DiskStorage::open_with(path, Some(&identity()), &options()).unwrap()
}

/// What a node does before it serves: open, recover, build the replica.
fn restart(path: &Path) -> (Duration, Replica) {
    let start = Instant::now();
    let store = open(path);
    let opened = start.elapsed();
    let recovered = store.recover().unwrap();
    let recovered_at = start.elapsed();
    let setup = ReplicaSetup {
        id: NodeId(0),
        key: keys()[0].clone(),
        committee: committee(),
        config: config(),
        blocks: Arc::new(store),
    };
    let replica = Replica::new(setup, recovered, Duration::ZERO).unwrap();
    let elapsed = start.elapsed();
    println!(
        "  (open {opened:?}, recover {:?}, replica {:?})",
        recovered_at - opened,
        elapsed - recovered_at
    );
    (elapsed, replica)
}

/// The restart before bounded restart, as `Replica::new` did it: open,
/// read and decode every stored block from the first, checking each link,
/// and replay the requests of the last `request_lifetime` blocks into the
/// at-most-once table.
fn full_replay(path: &Path) -> Duration {
    let start = Instant::now();
    let store = open(path);
    let _ = store.recover().unwrap();
    let lifetime = config().request_lifetime;
    let mut table = bftd_protocol::clients::ExecutedRequests::new(lifetime);
    let mut prev_hash = Digest::ZERO;
    let first = store.first_height().0;
    let last = store.last_height().0;
    for height in first..=last {
        let block = store.block(SeqNum(height)).unwrap();
        assert!(first > 1 || block.block.prev_hash == prev_hash);
        prev_hash = block.hash();
        if height + lifetime > last {
            let duplicates = store.duplicates(SeqNum(height));
            for key in bftd_protocol::storage::executed_keys(&block, &duplicates) {
                table.record(key, SeqNum(height));
            }
        }
    }
    table.forget_expired(SeqNum(last + 1));
    start.elapsed()
}

/// The child: adds one block, says so, and waits to be killed.
#[test]
#[ignore = "the child process of restart_time"]
fn restart_crash_child() {
    let Ok(path) = std::env::var(CHILD_STORE) else {
        return;
    };
    let mut store = open(Path::new(&path));
    let next = store.last_height().0 + 1;
    extend(&mut store, next);
    println!("committed {next}");
    std::thread::sleep(Duration::from_secs(600));
}

/// Runs the child on `path` and kills it with SIGKILL once its block is
/// durable, leaving the store as a crashed node leaves it.
fn crash(path: &Path) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "restart_crash_child", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD_STORE, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !line.contains("committed ") {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 || Instant::now() > deadline {
            let _ = child.kill();
            panic!("the child stopped before committing");
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
#[ignore = "a measurement: run with --release -- --ignored restart_time --nocapture"]
fn restart_time() {
    let tx: u64 = std::env::var(TX)
        .ok()
        .and_then(|text| text.replace('_', "").parse().ok())
        .unwrap_or(20_000);
    let retain = options().retain_blocks;
    let blocks = tx.div_ceil(PER_BLOCK).max(1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bftd.redb");
    let built = Instant::now();
    {
        let mut store = open(&path);
        extend(&mut store, blocks);
    }
    // The redb file, and the batch log's segments beside it.
    let bytes = std::fs::metadata(&path).unwrap().len();
    let log_bytes: u64 = std::fs::read_dir(dir.path().join("bftd.redb.batches"))
        .map(|entries| {
            entries
                .filter_map(|entry| Some(entry.ok()?.metadata().ok()?.len()))
                .sum()
        })
        .unwrap_or(0);
    let first = open(&path).first_height();
    println!(
        "store: {} tx in {blocks} blocks, redb file {} MB, batch log {} MB, built in {:?}; retain_blocks {retain:?}, first height {}",
        blocks * PER_BLOCK,
        bytes / 1_000_000,
        log_bytes / 1_000_000,
        built.elapsed(),
        first.0
    );

    // Warm the page cache the same way for every measurement.
    let _ = full_replay(&path);
    let before = full_replay(&path);
    let (after, replica) = restart(&path);
    assert_eq!(replica.status().last_executed, SeqNum(blocks));
    drop(replica);
    println!("clean restart: before (replay from height 1) {before:?}, after (from the stable checkpoint) {after:?}");

    crash(&path);
    let before = full_replay(&path);
    crash(&path);
    let (after, replica) = restart(&path);
    assert_eq!(replica.status().last_executed, SeqNum(blocks + 2));
    println!("crash restart (SIGKILL): before {before:?}, after {after:?}");
}

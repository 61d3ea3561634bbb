//! The disk store under a real SIGKILL, and its latency on this machine.
//!
//! - `storage_survives_sigkill_without_losing_a_committed_step`: a child process (this test
//!   binary, re-executed) applies replica steps in a loop and reports each
//!   one after `apply` returns; the parent kills it with SIGKILL at a random
//!   moment, reopens the store and checks that its whole state is exactly the
//!   state after some step at or after the last one reported: nothing
//!   reported is lost, and no step is half there.
//! - `storage_latency` (ignored; run with `--release -- --ignored
//!   storage_latency --nocapture`): p50/p99 of `apply` and `block`.

use bftd::storage::{CommitMode, DiskStorage, DiskStorageError, StorageOptions};
use bftd_crypto::{Digest, PublicKey, Signature};
use bftd_protocol::certificate::{QuorumCertificate, Vote};
use bftd_protocol::message::{Checkpoint, Commit, PrePrepare, Prepare};
use bftd_protocol::signer::SafetyState;
use bftd_protocol::{
    Batch, Block, BlockSource, CheckpointCertificate, CommittedBlock, Delivery, NodeId,
    PreparedCertificate, Record, Request, SeqNum, Signed, SignedRequest, Storage, View,
};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Set in the child: the store to write.
const CHILD_STORE: &str = "BFTD_STORAGE_CHILD_STORE";
/// Set in the child: requests per batch and payload bytes per request.
const CHILD_SHAPE: &str = "BFTD_STORAGE_CHILD_SHAPE";
/// Set in the child: "1" for two-phase commit and quick repair.
const CHILD_TWO_PHASE: &str = "BFTD_STORAGE_CHILD_TWO_PHASE";

/// A checkpoint becomes stable every this many steps, four steps behind.
const CHECKPOINT_EVERY: u64 = 8;
const CHECKPOINT_LAG: u64 = 4;

/// The shape of the batches a run writes.
#[derive(Clone, Copy, Debug)]
struct Shape {
    requests: usize,
    payload_bytes: usize,
}

fn digest_of(step: u64) -> Digest {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&step.to_be_bytes());
    bytes[31] = 0x5a;
    Digest(bytes)
}

fn batch(step: u64, shape: Shape) -> Arc<Batch> {
    let requests = (0..shape.requests)
        .map(|i| SignedRequest {
            request: Request {
                client: PublicKey([(i % 251) as u8; 32]),
                request_id: step,
                valid_until: SeqNum(1000),
                payload: vec![(step % 251) as u8; shape.payload_bytes],
            },
            signature: Some(Signature([(i % 13) as u8; 64])),
        })
        .collect();
    Arc::new(Batch { requests })
}

fn votes(count: u16) -> Vec<Vote> {
    (0..count)
        .map(|i| Vote {
            signer: NodeId(i),
            signature: Signature([i as u8; 64]),
        })
        .collect()
}

fn prepared(step: u64) -> PreparedCertificate {
    let value = PrePrepare {
        view: View(step),
        seq: SeqNum(step),
        digest: digest_of(step),
    };
    PreparedCertificate {
        pre_prepare: Signed {
            signer: NodeId(0),
            value,
            signature: Signature([3; 64]),
        },
        prepares: QuorumCertificate {
            value: Prepare {
                view: value.view,
                seq: value.seq,
                digest: value.digest,
            },
            votes: votes(2),
        },
    }
}

fn checkpoint(seq: u64) -> CheckpointCertificate {
    QuorumCertificate {
        value: Checkpoint {
            seq: SeqNum(seq),
            block_hash: digest_of(seq),
        },
        votes: votes(3),
    }
}

/// The safety state after `step`: the signer's window, 16 sequences wide.
fn safety(step: u64) -> SafetyState {
    let mut state = SafetyState {
        view: View(step),
        ..SafetyState::default()
    };
    for seq in step.saturating_sub(15)..=step {
        state
            .accepted
            .insert(SeqNum(seq), (View(seq), digest_of(seq)));
    }
    state
}

fn duplicates(step: u64) -> Vec<u32> {
    if step.is_multiple_of(5) {
        vec![(step % 7) as u32, 9]
    } else {
        Vec::new()
    }
}

/// What one replica step persists: its safety state, the batch it
/// accepted, a prepared certificate, every few steps a stable checkpoint,
/// and the block it executed (chained to `prev_hash`).
fn step_contents(step: u64, prev_hash: Digest, shape: Shape) -> (Vec<Record>, Delivery) {
    let batch = batch(step, shape);
    let mut records = vec![
        Record::Safety(safety(step)),
        Record::Batch {
            seq: SeqNum(step),
            digest: digest_of(step),
            batch: batch.clone(),
        },
        Record::Prepared(prepared(step)),
    ];
    if step.is_multiple_of(CHECKPOINT_EVERY) {
        records.push(Record::StableCheckpoint(checkpoint(step - CHECKPOINT_LAG)));
    }
    let block = Arc::new(CommittedBlock {
        block: Block {
            height: SeqNum(step),
            prev_hash,
            batch_digest: digest_of(step),
            batch,
        },
        certificate: QuorumCertificate {
            value: Commit {
                view: View(step),
                seq: SeqNum(step),
                digest: digest_of(step),
            },
            votes: votes(3),
        },
    });
    let delivery = Delivery {
        block,
        duplicates: duplicates(step),
        tree: None,
    };
    (records, delivery)
}

fn child_shape() -> Shape {
    let parsed = std::env::var(CHILD_SHAPE).ok().and_then(|text| {
        let (requests, payload) = text.split_once('x')?;
        Some(Shape {
            requests: requests.parse().ok()?,
            payload_bytes: payload.parse().ok()?,
        })
    });
    parsed.unwrap_or(Shape {
        requests: 100,
        payload_bytes: 64,
    })
}

/// The child: continues the store from its last block, forever, printing
/// `committed N` after step N is durable. Does nothing unless run by the
/// parent (it is `#[ignore]`d and needs `CHILD_STORE`).
#[test]
#[ignore = "the child process of the crash test"]
fn storage_crash_child() {
    let Ok(path) = std::env::var(CHILD_STORE) else {
        return;
    };
    let two_phase = std::env::var(CHILD_TWO_PHASE).is_ok_and(|value| value == "1");
    let options = StorageOptions {
        commit: if two_phase {
            CommitMode::TwoPhaseQuickRepair
        } else {
            CommitMode::OnePhase
        },
        ..StorageOptions::default()
    };
    let shape = child_shape();
    let mut store = DiskStorage::open_with(Path::new(&path), None, &options).unwrap();
    let last = store.last_height();
    let mut prev_hash = match last {
        SeqNum(0) => Digest::ZERO,
        height => store.block(height).unwrap().hash(),
    };
    for step in last.0 + 1.. {
        let (records, delivery) = step_contents(step, prev_hash, shape);
        store
            .apply(&records, std::slice::from_ref(&delivery))
            .unwrap();
        println!("committed {step}");
        prev_hash = delivery.block.hash();
    }
}

/// A running child and the steps it has reported.
struct Child {
    process: std::process::Child,
    lines: mpsc::Receiver<u64>,
}

fn spawn_child(store: &Path, shape: Shape, two_phase: bool) -> Child {
    let mut process = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "storage_crash_child", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD_STORE, store)
        .env(
            CHILD_SHAPE,
            format!("{}x{}", shape.requests, shape.payload_bytes),
        )
        .env(CHILD_TWO_PHASE, if two_phase { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = process.stdout.take().unwrap();
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                // A line cut by the kill has no newline: not a report.
                Ok(_) if !line.ends_with('\n') => return,
                Ok(_) => {
                    // libtest may print "test storage_crash_child ... "
                    // before the first report, on the same line.
                    let step = line.trim().rsplit_once("committed ");
                    if let Some(step) = step.and_then(|(_, step)| step.parse().ok()) {
                        if sender.send(step).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    Child { process, lines }
}

impl Child {
    /// Kills the child with SIGKILL; returns every step it reported.
    fn kill(mut self) -> Vec<u64> {
        let exited_early = self.process.try_wait().unwrap();
        if let Some(status) = exited_early {
            let mut stderr = String::new();
            if let Some(mut pipe) = self.process.stderr.take() {
                pipe.read_to_string(&mut stderr).unwrap();
            }
            panic!("the child exited by itself ({status}):\n{stderr}");
        }
        // `Child::kill` sends SIGKILL on Unix.
        self.process.kill().unwrap();
        self.process.wait().unwrap();
        self.lines.iter().collect()
    }
}

/// The expected state of the store after `last` steps, checked in full:
/// every block 1..=last decodes, chains, and equals what the step wrote;
/// safety, checkpoint, prepared certificates and batches are those of step
/// `last`, no more, no less. A half-applied step would fail one of these.
fn check_store(store: &DiskStorage, last: u64, shape: Shape) {
    assert_eq!(store.last_height(), SeqNum(last));
    let mut prev_hash = Digest::ZERO;
    let mut height = 1;
    while height <= last {
        let chunk = store.blocks_from(SeqNum(height), 64).unwrap();
        assert!(!chunk.is_empty(), "block {height} missing");
        for (block, dups) in chunk {
            assert_eq!(block.height(), SeqNum(height), "blocks are contiguous");
            let (_, expected) = step_contents(height, prev_hash, shape);
            assert_eq!(block, expected.block, "block {height}");
            assert_eq!(dups, expected.duplicates, "duplicates of {height}");
            prev_hash = block.hash();
            height += 1;
        }
    }
    assert_eq!(height, last + 1, "no block above the last height");

    let recovered = store.recover().unwrap();
    let stable = (last / CHECKPOINT_EVERY * CHECKPOINT_EVERY).checked_sub(CHECKPOINT_LAG);
    let stable = stable.filter(|_| last >= CHECKPOINT_EVERY);
    if last == 0 {
        assert_eq!(recovered.safety, SafetyState::default());
    } else {
        assert_eq!(recovered.safety, safety(last), "safety of step {last}");
    }
    assert_eq!(recovered.stable_checkpoint, stable.map(checkpoint));
    let kept = stable.unwrap_or(0) + 1..=last;
    let prepared_seqs: Vec<u64> = recovered.prepared.iter().map(|c| c.seq().0).collect();
    assert_eq!(prepared_seqs, kept.clone().collect::<Vec<_>>());
    for cert in &recovered.prepared {
        assert_eq!(cert, &prepared(cert.seq().0));
    }
    let batch_seqs: Vec<u64> = recovered.batches.iter().map(|(s, _, _)| s.0).collect();
    assert_eq!(batch_seqs, kept.collect::<Vec<_>>());
    for (seq, digest, batch) in &recovered.batches {
        assert_eq!(*digest, digest_of(seq.0));
        assert_eq!(batch, &self::batch(seq.0, shape));
    }
}

/// One round of the crash test.
#[derive(Clone, Copy, Debug)]
struct Round {
    /// Commit with two-phase commit and quick repair.
    two_phase: bool,
    /// Kill within 60 ms of the start, reports or not: the child may be
    /// opening (and repairing) the store, or in its first steps.
    early: bool,
    /// Reopen and check the store after the kill. Skipped after some early
    /// kills, so that the next child opens a store that crashed (and may be
    /// killed again while repairing it).
    check: bool,
}

/// A writer killed with SIGKILL at random moments, seven times over the same
/// store, in both commit modes, sometimes while it opens or repairs a store
/// that just crashed, never loses a step it reported committed and never
/// leaves a step half applied. While the child runs, the store is locked
/// against this process.
#[test]
fn storage_survives_sigkill_without_losing_a_committed_step() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let shape = child_shape();
    let round = |two_phase, early, check| Round {
        two_phase,
        early,
        check,
    };
    let rounds = [
        round(false, false, true),
        round(true, true, false),
        round(false, true, false),
        round(true, false, true),
        round(false, true, true),
        round(false, false, true),
        round(true, false, true),
    ];
    // Every reported step must be stored; at most one step more than the
    // child reported can be (committed, killed before its report).
    let mut reported_max = 0;
    let mut possible_max = 0;
    for (number, round) in rounds.into_iter().enumerate() {
        let child = spawn_child(&path, shape, round.two_phase);
        let mut reported = Vec::new();
        let delay = Duration::from_millis(rand::random::<u64>() % 300);
        if round.early {
            std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 60));
        } else {
            let first = child
                .lines
                .recv_timeout(Duration::from_secs(20))
                .expect("the child reports its first step");
            reported.push(first);
            let error = DiskStorage::open(&path).unwrap_err();
            assert!(
                matches!(
                    DiskStorageError::of(&error),
                    Some(DiskStorageError::Locked { .. })
                ),
                "{error}"
            );
            std::thread::sleep(delay);
        }
        reported.extend(child.kill());
        if let Some(&first) = reported.first() {
            assert!(
                first > reported_max && first <= possible_max + 1,
                "the child continues the store: first report {first}, \
                 reported so far {reported_max}, possibly stored {possible_max}"
            );
            let expected: Vec<u64> = (first..first + reported.len() as u64).collect();
            assert_eq!(reported, expected, "reports are consecutive");
        }
        match reported.last() {
            Some(&last) => {
                reported_max = last;
                possible_max = last + 1;
            }
            None => possible_max += 1,
        }
        if !round.check {
            println!(
                "round {number} {round:?}: {} steps reported, not reopened",
                reported.len()
            );
            continue;
        }
        let reopen = Instant::now();
        let store = DiskStorage::open(&path).unwrap();
        let reopen = reopen.elapsed();
        let last = store.last_height().0;
        assert!(
            (reported_max..=possible_max).contains(&last),
            "reported {reported_max}, at most {possible_max} possible, stored {last}"
        );
        check_store(&store, last, shape);
        println!(
            "round {number} {round:?}: {} steps reported, store at {last}, reopened in {reopen:?}",
            reported.len()
        );
        reported_max = last;
        possible_max = last;
    }
    println!("crash test took {:?}", started.elapsed());
}

fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    let index = (sorted.len() * percent / 100).min(sorted.len().saturating_sub(1));
    sorted.get(index).copied().unwrap_or_default()
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what:<48} n={:<5} p50={:>9.3?} p99={:>9.3?} max={:>9.3?}",
        samples.len(),
        percentile(&samples, 50),
        percentile(&samples, 99),
        samples.last().copied().unwrap_or_default(),
    );
}

/// Latency of `apply` for a typical step and of `block` reads, on this
/// machine's disk; the two commit modes run interleaved, step by step, so
/// that both see the same load. Numbers, not a pass/fail check.
#[test]
#[ignore = "a measurement: cargo test -p bftd --release --test storage -- --ignored storage_latency --nocapture"]
fn storage_latency() {
    let typical = Shape {
        requests: 1000,
        payload_bytes: 512,
    };
    let steps = 400;
    let modes = [CommitMode::OnePhase, CommitMode::TwoPhaseQuickRepair];
    let dir = tempfile::tempdir().unwrap();
    let mut stores: Vec<DiskStorage> = modes
        .iter()
        .map(|&commit| {
            let options = StorageOptions {
                commit,
                ..StorageOptions::default()
            };
            let path = dir.path().join(format!("{commit:?}.redb"));
            DiskStorage::open_with(&path, None, &options).unwrap()
        })
        .collect();
    let mut typical_samples = vec![Vec::new(); modes.len()];
    let mut safety_samples = vec![Vec::new(); modes.len()];
    // The disk's own fsync latency, sampled between the steps: the floor a
    // commit cannot beat.
    let probe = std::fs::File::create(dir.path().join("fsync-probe")).unwrap();
    let mut raw_fsync = Vec::new();
    let mut encoded_bytes = 0;
    let mut prev_hash = Digest::ZERO;
    for step in 1..=steps {
        let (records, delivery) = step_contents(step, prev_hash, typical);
        // Safety state, batch and block: the "typical step".
        let records: Vec<Record> = records
            .into_iter()
            .filter(|r| matches!(r, Record::Safety(_) | Record::Batch { .. }))
            .collect();
        encoded_bytes += bftd_protocol::codec::encoded_len(&*delivery.block).unwrap()
            + bftd_protocol::codec::encoded_len(&*delivery.block.block.batch).unwrap();
        for turn in 0..modes.len() {
            let index = (turn + step as usize) % modes.len();
            let store = &mut stores[index];
            let start = Instant::now();
            store
                .apply(&records, std::slice::from_ref(&delivery))
                .unwrap();
            typical_samples[index].push(start.elapsed());
            let start = Instant::now();
            store.apply(&[Record::Safety(safety(step))], &[]).unwrap();
            safety_samples[index].push(start.elapsed());
        }
        std::os::unix::fs::FileExt::write_at(&probe, &[step as u8; 4096], 0).unwrap();
        let start = Instant::now();
        probe.sync_data().unwrap();
        raw_fsync.push(start.elapsed());
        prev_hash = delivery.block.hash();
    }
    report("raw fsync of a 4 KiB write (baseline)", raw_fsync);
    for (index, mode) in modes.iter().enumerate() {
        report(
            &format!("apply typical step ({mode:?})"),
            std::mem::take(&mut typical_samples[index]),
        );
        report(
            &format!("apply safety-only step ({mode:?})"),
            std::mem::take(&mut safety_samples[index]),
        );
    }
    let path = stores[0].path().to_path_buf();
    let metadata = std::fs::metadata(&path).unwrap();
    println!(
        "store after {steps} steps: {} MB of disk blocks (file length {} MB) for {} MB of encoded blocks and batches",
        std::os::unix::fs::MetadataExt::blocks(&metadata) * 512 / 1_000_000,
        metadata.len() / 1_000_000,
        encoded_bytes / 1_000_000
    );

    let store = stores.swap_remove(0);
    let mut hits = Vec::new();
    for round in 0..20 {
        for height in steps - 31..=steps {
            let start = Instant::now();
            let block = store.block(SeqNum(height));
            hits.push(start.elapsed());
            assert!(block.is_some(), "round {round}");
        }
    }
    report("block() cache hit (recent block)", hits);
    let (_, sample) = step_contents(1, Digest::ZERO, typical);
    let mut encode = Vec::new();
    for _ in 0..100 {
        let start = Instant::now();
        let bytes = bftd_protocol::codec::encode(&*sample.block).unwrap();
        encode.push(start.elapsed());
        assert!(!bytes.is_empty());
    }
    report("encode a typical block (CPU, for reference)", encode);
    drop(store);
    let uncached = StorageOptions {
        block_cache_entries: 0,
        ..StorageOptions::default()
    };
    let store = DiskStorage::open_with(&path, None, &uncached).unwrap();
    let mut cold = Vec::new();
    for i in 0..200u64 {
        let height = 1 + (i * 7919) % steps;
        let start = Instant::now();
        let block = store.block(SeqNum(height));
        cold.push(start.elapsed());
        assert!(block.is_some());
    }
    report("block() without cache (read + decode)", cold);
    drop(store);
    drop(stores);

    // Reopening after a SIGKILL, on a store of ~800 typical steps.
    for two_phase in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let child = spawn_child(&path, typical, two_phase);
        while child
            .lines
            .recv_timeout(Duration::from_secs(60))
            .expect("child progress")
            < 800
        {}
        child.kill();
        let options = StorageOptions {
            commit: if two_phase {
                CommitMode::TwoPhaseQuickRepair
            } else {
                CommitMode::OnePhase
            },
            ..StorageOptions::default()
        };
        let start = Instant::now();
        let store = DiskStorage::open_with(&path, None, &options).unwrap();
        let elapsed = start.elapsed();
        println!(
            "reopen after SIGKILL ({:?}), {} MB, {} blocks: {elapsed:?}",
            options.commit,
            std::fs::metadata(&path).unwrap().len() / 1_000_000,
            store.last_height().0
        );
    }
}

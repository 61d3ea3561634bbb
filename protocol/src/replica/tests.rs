//! Unit tests of the replica's bounds and rules, each driving one replica
//! with validly signed messages from its peers.

use super::*;
use crate::certificate::QuorumCertificate;
use crate::message::{Checkpoint, Prepare, Signable};
use crate::storage::MemStorage;
use crate::verify::{verify_message, verify_request, BatchVerifier};
use proptest::prelude::*;

fn keys() -> Vec<KeyPair> {
    (0..4)
        .map(|i| KeyPair::from_seed([i as u8 + 1; 32]))
        .collect()
}

fn committee() -> Committee {
    Committee::new(&keys().iter().map(KeyPair::public).collect::<Vec<_>>()).unwrap()
}

/// Replica 2 (a backup in view 0), with its stable checkpoint at `low`.
fn replica(low: u64) -> Replica {
    let config = Config::default();
    let setup = ReplicaSetup {
        id: NodeId(2),
        key: keys()[2].clone(),
        committee: committee(),
        config,
        blocks: Arc::new(MemStorage::new()),
    };
    let recovered = Recovered {
        stable_checkpoint: (low > 0).then(|| QuorumCertificate {
            value: Checkpoint {
                seq: SeqNum(low),
                block_hash: Digest([1; 32]),
            },
            votes: Vec::new(),
        }),
        ..Recovered::default()
    };
    Replica::new(setup, recovered, Duration::ZERO).unwrap()
}

/// Replica 0, the primary of view 0, fresh, with `config`.
fn fresh_primary(config: &Config) -> Replica {
    let setup = ReplicaSetup {
        id: NodeId(0),
        key: keys()[0].clone(),
        committee: committee(),
        config: config.clone(),
        blocks: Arc::new(MemStorage::new()),
    };
    let primary = Replica::new(setup, Recovered::default(), Duration::ZERO).unwrap();
    assert!(primary.is_primary());
    primary
}

fn signed<T: Signable>(signer: u16, value: T) -> Signed<T> {
    Signed::sign(NodeId(signer), value, &keys()[usize::from(signer)]).unwrap()
}

fn deliver(replica: &mut Replica, message: WireMessage) {
    let from = message.signer();
    let verified = verify_message(
        message,
        &committee(),
        &crate::verify::MessageLimits::of(&Config::default()),
        &mut BatchVerifier,
    )
    .unwrap();
    replica.handle_message(Duration::from_millis(1), from, verified);
}

fn prepare(signer: u16, view: u64, seq: u64, digest: u8) -> WireMessage {
    WireMessage::Prepare(signed(
        signer,
        Prepare {
            view: View(view),
            seq: SeqNum(seq),
            digest: Digest([digest; 32]),
        },
    ))
}

use crate::verify::RequestMode;

proptest! {
    /// Watermarks: a prepare is kept iff its sequence is in (h, h + L];
    /// anything else is dropped and counted, never stored.
    #[test]
    fn only_sequences_inside_the_window_are_kept(k in 0u64..1000, offset in 0u64..600) {
        let low = k * 64;
        let mut replica = replica(low);
        let seq = low.saturating_sub(50) + offset;
        deliver(&mut replica, prepare(1, 0, seq, 9));
        let inside = seq > low && seq <= low + 256;
        prop_assert_eq!(replica.status().active_slots, usize::from(inside));
        prop_assert_eq!(replica.metrics().dropped_for(DropReason::OutsideWindow), u64::from(!inside));
    }
}

/// A peer flooding messages for future views fills only its own bounded
/// buffer; the overflow is dropped and counted.
#[test]
fn future_view_messages_are_bounded_per_peer() {
    let mut replica = replica(0);
    let cap = replica.config().max_future_messages_per_peer;
    for seq in 1..=(cap as u64 + 50) {
        deliver(&mut replica, prepare(1, 6, seq % 200 + 1, 7));
    }
    assert_eq!(replica.future.get(&NodeId(1)).map_or(0, |q| q.len()), cap);
    assert_eq!(
        replica.metrics().dropped_for(DropReason::FutureBufferFull),
        50
    );
    assert_eq!(
        replica.status().active_slots,
        0,
        "future messages touch no slot"
    );
}

/// Two different prepares for one slot from one replica are evidence of
/// equivocation; only the first counts.
#[test]
fn conflicting_votes_are_evidence() {
    let mut replica = replica(0);
    deliver(&mut replica, prepare(1, 0, 3, 1));
    deliver(&mut replica, prepare(1, 0, 3, 2));
    deliver(&mut replica, prepare(1, 0, 3, 1));
    assert_eq!(replica.evidence().len(), 1);
    assert_eq!(replica.evidence()[0].culprit(), NodeId(1));
    assert_eq!(replica.metrics().evidence, 1);
}

/// The primary may not vote prepare in its own view.
#[test]
fn prepares_from_the_primary_are_refused() {
    let mut replica = replica(0);
    deliver(&mut replica, prepare(0, 0, 3, 1));
    assert_eq!(replica.metrics().dropped_for(DropReason::WrongSender), 1);
    assert_eq!(replica.status().active_slots, 0);
}

/// Checkpoint votes are bounded per peer: a replica spraying checkpoints at
/// ever higher sequences keeps only its newest few.
#[test]
fn checkpoint_votes_are_bounded_per_peer() {
    let mut replica = replica(0);
    for i in 1..=100u64 {
        let vote = signed(
            1,
            Checkpoint {
                seq: SeqNum(i * 64),
                block_hash: Digest([i as u8; 32]),
            },
        );
        deliver(&mut replica, WireMessage::Checkpoint(vote));
    }
    let held: usize = replica
        .checkpoint_votes
        .values()
        .map(|votes| votes.len())
        .sum();
    assert_eq!(held, 4);
}

fn forwards(actions: &Actions) -> Vec<usize> {
    actions
        .send
        .iter()
        .filter_map(|outgoing| match &outgoing.message {
            WireMessage::Forward(forward) => Some(forward.value.requests.len()),
            _ => None,
        })
        .collect()
}

/// A backup forwards an isolated request at once, but under a stream of
/// requests it sends at most one forward per `batch_delay` (or per full
/// batch), each covering everything gathered since: one signature for
/// many requests.
#[test]
fn forwards_are_paced_under_load() {
    let mut replica = replica(0);
    let client = KeyPair::from_seed([42; 32]);
    let delay = replica.config().batch_delay;
    let submit = |replica: &mut Replica, id: u64, at: Duration| {
        let request = crate::message::Request {
            client: client.public(),
            request_id: id,
            valid_until: SeqNum(100),
            payload: vec![7; 16],
        };
        let request = verify_request(
            SignedRequest::sign(request, &client).unwrap(),
            NodeId(2),
            &committee(),
            RequestMode::ClientSigned,
            &mut BatchVerifier,
        )
        .unwrap();
        replica.handle_request(at, request, true);
    };
    let start = Duration::from_secs(1);
    submit(&mut replica, 1, start);
    assert_eq!(forwards(&replica.drain_actions()), vec![1], "idle: at once");
    // Ten more within the same delay: held back until the deadline.
    for id in 2..=11 {
        submit(&mut replica, id, start + delay / 20 * id as u32);
    }
    assert!(forwards(&replica.drain_actions()).is_empty());
    assert_eq!(replica.forward_deadline(), Some(start + delay));
    assert!(replica.next_deadline() <= Some(start + delay));
    replica.handle_timeout(start + delay);
    assert_eq!(
        forwards(&replica.drain_actions()),
        vec![10],
        "one forward for all"
    );
    // A full batch leaves without waiting.
    let max = replica.config().max_batch_requests as u64;
    for id in 12..12 + max {
        submit(&mut replica, id, start + delay + delay / 2);
    }
    assert_eq!(forwards(&replica.drain_actions()), vec![max as usize]);
}

/// A peer whose status shows other consensus settings (another cluster
/// file) is ignored, and the setting that differs is named; once its
/// settings match again it is heard.
#[test]
fn a_peer_with_other_consensus_settings_is_ignored() {
    let mut replica = replica(0);
    let status = |settings: crate::config::ConsensusSettings| {
        WireMessage::Status(signed(
            1,
            crate::message::Status {
                view: View(0),
                in_view_change: false,
                last_executed: SeqNum(0),
                stable_checkpoint: SeqNum(0),
                settings,
            },
        ))
    };
    let mut other = Config::default().consensus();
    other.request_lifetime += 1;
    deliver(&mut replica, status(other));
    assert_eq!(
        replica.settings_mismatches().get(&NodeId(1)),
        Some(&"request_lifetime")
    );
    deliver(&mut replica, prepare(1, 0, 3, 1));
    assert_eq!(replica.status().active_slots, 0, "its prepare was ignored");
    assert_eq!(replica.metrics().dropped_for(DropReason::OtherSettings), 2);
    deliver(&mut replica, status(Config::default().consensus()));
    assert!(replica.settings_mismatches().is_empty());
    deliver(&mut replica, prepare(1, 0, 3, 1));
    assert_eq!(replica.status().active_slots, 1, "heard again");
}

/// A peer's buffer of messages for future views is bounded in bytes, not
/// only in messages: a future primary sending hundreds of pre-prepares with
/// large (valid-size) batches pins no more than
/// `max_future_bytes_per_peer` (or one message, if that alone is larger).
#[test]
fn future_view_messages_are_bounded_in_bytes() {
    let mut replica = replica(0);
    replica.config.max_future_bytes_per_peer = FUTURE_BYTES_UNDER_TEST as usize;
    let client = KeyPair::from_seed([43; 32]);
    // View 5's primary is replica 1.
    for seq in 1..=200u64 {
        let request = crate::message::Request {
            client: client.public(),
            request_id: seq,
            valid_until: SeqNum(1000),
            payload: vec![seq as u8; 60 * 1024],
        };
        let batch = Batch {
            requests: vec![SignedRequest::sign(request, &client).unwrap()],
        };
        let digest = MerkleTree::new(&batch).root();
        let pre_prepare = signed(
            1,
            PrePrepare {
                view: View(5),
                seq: SeqNum(seq),
                digest,
            },
        );
        deliver(
            &mut replica,
            WireMessage::PrePrepare {
                pre_prepare,
                batch: Arc::new(batch),
                vouches: Vec::new(),
            },
        );
    }
    let queue = replica.future.get(&NodeId(1)).cloned().unwrap_or_default();
    let bytes: u64 = queue
        .iter()
        .map(|(_, message)| crate::codec::encoded_len(message).unwrap())
        .sum();
    let bound = FUTURE_BYTES_UNDER_TEST;
    println!("peer 1 buffers {} messages, {bytes} bytes", queue.len());
    assert!(
        bytes <= bound,
        "peer 1 buffers {} messages, {bytes} bytes, over {bound}",
        queue.len()
    );
    assert!(!queue.is_empty(), "the newest is kept");
    assert!(replica.metrics().dropped_for(DropReason::FutureBufferFull) > 0);
}

const FUTURE_BYTES_UNDER_TEST: u64 = 4 * 1024 * 1024;

/// The requests a replica holds until they execute are bounded in bytes,
/// not only in number: one client sending large requests faster than they
/// commit is refused "busy" once `max_pending_bytes` are held.
#[test]
fn pending_requests_are_bounded_in_bytes() {
    let mut replica = replica(0);
    set_max_pending_bytes(&mut replica, PENDING_BYTES_UNDER_TEST);
    let client = KeyPair::from_seed([44; 32]);
    for id in 1..=200u64 {
        let request = crate::message::Request {
            client: client.public(),
            request_id: id,
            valid_until: SeqNum(1000),
            payload: vec![id as u8; 60 * 1024],
        };
        let request = verify_request(
            SignedRequest::sign(request, &client).unwrap(),
            NodeId(2),
            &committee(),
            RequestMode::ClientSigned,
            &mut BatchVerifier,
        )
        .unwrap();
        replica.handle_request(Duration::from_millis(1), request, true);
    }
    let held: usize = replica
        .pending
        .values()
        .map(|pending| pending.request.payload_len())
        .sum();
    println!(
        "{} requests pending, {held} payload bytes; {} refused busy",
        replica.pending.len(),
        replica.metrics().requests_refused_busy
    );
    assert!(held <= PENDING_BYTES_UNDER_TEST, "{held} bytes held");
    assert!(replica.metrics().requests_refused_busy > 0);
    let busy = replica
        .drain_actions()
        .replies
        .iter()
        .filter(|reply| reply.outcome == ReplyOutcome::Rejected(RejectReason::Busy))
        .count();
    assert!(busy > 0, "the clients are told");
}

const PENDING_BYTES_UNDER_TEST: usize = 4 * 1024 * 1024;

fn set_max_pending_bytes(replica: &mut Replica, bytes: usize) {
    replica.config.max_pending_bytes = bytes;
}

/// Connection-authenticated mode: a forward is kept whole, as its voucher
/// signed it, while any of its requests is pending (its one signature
/// vouches for them all), so what it holds counts against
/// `max_pending_bytes`, not only the pending requests' own payloads.
/// Otherwise a byzantine peer pins a whole forward per tiny pending request:
/// one fresh request in a forward of expired ones, again and again.
#[test]
fn retained_forwards_count_against_pending_bytes() {
    let mut config = Config {
        request_mode: RequestMode::ConnectionAuthenticated,
        // An origin's share is at least a batch: with batches of 4 MiB,
        // several of these 800 KB forwards fit it.
        max_batch_bytes: 4 * 1024 * 1024,
        ..Config::default()
    };
    config.max_pending_bytes = PENDING_BYTES_UNDER_TEST;
    let mut replica = replica(0);
    replica.config = config.clone();
    let limits = crate::verify::MessageLimits::of(&config);
    let client = KeyPair::from_seed([45; 32]);
    let granted = |id: u64, valid_until: u64, payload: Vec<u8>| {
        let request = crate::message::Request {
            client: client.public(),
            request_id: id,
            valid_until: SeqNum(valid_until),
            payload,
        };
        SignedRequest::granted(request, &client, NodeId(3))
    };
    for id in 1..=64u64 {
        // One fresh request, then twelve expired ones of 64 KiB that are
        // refused but travel in the forward all the same.
        let mut requests = vec![granted(id, 100, vec![1])];
        requests.extend((1..=12).map(|k| granted(1_000_000 * k + id, 0, vec![k as u8; 64 * 1024])));
        let forward = WireMessage::Forward(signed(3, crate::message::Forward { requests }));
        let verified = verify_message(forward, &committee(), &limits, &mut BatchVerifier).unwrap();
        replica.handle_message(Duration::from_millis(1), NodeId(3), verified);
    }
    let mut forwards = std::collections::HashSet::new();
    let mut held = 0usize;
    for pending in replica.pending.values() {
        held += pending.request.payload_len();
        if let Some(forward) = &pending.vouch {
            if forwards.insert(Arc::as_ptr(forward)) {
                held += crate::codec::encoded_len(&**forward).unwrap() as usize;
            }
        }
    }
    println!(
        "{} requests pending in {} forwards, {held} bytes held; {} refused busy",
        replica.pending.len(),
        forwards.len(),
        replica.metrics().requests_refused_busy
    );
    assert!(replica.pending.len() > 1, "some forwards are kept");
    assert!(
        held <= PENDING_BYTES_UNDER_TEST,
        "{held} bytes held for {} pending requests",
        replica.pending.len()
    );
    assert!(replica.metrics().requests_refused_busy > 0);
}

/// Fair admission per origin (issue 10): a byzantine replica forwarding
/// valid requests as fast as it can gets its share of the primary's pending
/// pool and of its batches, not all of them. Its flood arrives first; the
/// next batch the primary cuts still carries the primary's own client's
/// request and an honest backup's forward, and what the flooder holds stays
/// within its share, so the others are never refused "busy" for it.
/// Before the change (one FIFO queue, one shared pool) the flooder held
/// 500 requests, 512,000 of the pool's 524,288 bytes ("the flood met its
/// share" failed), and the honest requests queued behind all of them.
#[test]
fn a_flooding_replica_gets_its_share_of_the_primary() {
    for mode in [
        RequestMode::ClientSigned,
        RequestMode::ConnectionAuthenticated,
    ] {
        let config = Config {
            request_mode: mode,
            pipeline: 1,
            max_batch_requests: 50,
            max_batch_bytes: 64 * 1024,
            max_pending_bytes: 512 * 1024,
            ..Config::default()
        };
        let mut primary = fresh_primary(&config);
        let limits = crate::verify::MessageLimits::of(&config);
        let client = |seed: u8| KeyPair::from_seed([seed; 32]);
        let request = |key: &KeyPair, id: u64, node: u16| {
            let request = crate::message::Request {
                client: key.public(),
                request_id: id,
                valid_until: SeqNum(100),
                payload: vec![id as u8; 1024],
            };
            match mode {
                RequestMode::ClientSigned => SignedRequest::sign(request, key).unwrap(),
                _ => SignedRequest::granted(request, key, NodeId(node)),
            }
        };
        let forward = |from: u16, requests: Vec<SignedRequest>| {
            let message = WireMessage::Forward(signed(from, crate::message::Forward { requests }));
            verify_message(message, &committee(), &limits, &mut BatchVerifier).unwrap()
        };
        // Replica 3 floods: 10 forwards of 50 requests of 1 KiB from 50
        // clients. The first fills the one-block pipeline; the rest queue.
        let flooders: Vec<KeyPair> = (0..50).map(|i| client(100 + i)).collect();
        for round in 0..10u64 {
            let requests = flooders
                .iter()
                .map(|key| request(key, round + 1, 3))
                .collect();
            primary.handle_message(Duration::from_millis(1), NodeId(3), forward(3, requests));
        }
        let flood_held = primary.held.get(&NodeId(3)).copied().unwrap_or_default();
        let share = primary.origin_share();
        println!(
            "{mode:?}: flooder holds {} requests, {} bytes (share {} bytes of {}); {} refused busy",
            flood_held.requests,
            flood_held.bytes,
            share.bytes,
            config.max_pending_bytes,
            primary.metrics().requests_refused_busy
        );
        assert!(flood_held.bytes <= share.bytes);
        assert!(
            primary.metrics().requests_refused_busy > 0,
            "the flood met its share"
        );
        // Then an honest backup's forward and the primary's own client.
        let honest_backup = request(&client(1), 1, 1);
        primary.handle_message(
            Duration::from_millis(2),
            NodeId(1),
            forward(1, vec![honest_backup.clone()]),
        );
        let own = request(&client(2), 1, 0);
        let own = verify_request(own, NodeId(0), &committee(), mode, &mut BatchVerifier).unwrap();
        let own_key = own.key();
        primary.handle_request(Duration::from_millis(3), own, true);
        assert!(primary.pending.contains_key(&own_key), "not refused busy");
        assert!(primary.pending.contains_key(&honest_backup.key()));
        let batch = match mode {
            RequestMode::ClientSigned => primary.cut_batch().0,
            _ => primary.cut_vouched_batch().0,
        };
        let keys: Vec<_> = batch.requests.iter().map(SignedRequest::key).collect();
        println!("{mode:?}: next batch holds {} requests", keys.len());
        assert!(
            keys.contains(&honest_backup.key()),
            "{mode:?}: the backup's request waits"
        );
        assert!(
            keys.contains(&own_key),
            "{mode:?}: the primary's client's request waits"
        );
    }
}

/// A block source that records which heights were read in full.
struct CountingSource {
    inner: MemStorage,
    read: std::sync::Mutex<Vec<u64>>,
}

impl BlockSource for CountingSource {
    fn block(&self, height: SeqNum) -> Option<Arc<crate::CommittedBlock>> {
        self.read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(height.0);
        self.inner.block(height)
    }
    fn last_height(&self) -> SeqNum {
        self.inner.last_height()
    }
    fn duplicates(&self, height: SeqNum) -> Vec<u32> {
        self.inner.duplicates(height)
    }
    fn executed(&self, height: SeqNum) -> Option<Vec<RequestKey>> {
        // Like the daemon's `executed` table: no block read.
        let block = self.inner.block(height)?;
        Some(crate::storage::executed_keys(
            &block,
            &self.inner.duplicates(height),
        ))
    }
}

/// Heights 1..=last, chained, one request each (client `height`, id 7).
fn chained_store(last: u64) -> (MemStorage, Vec<Arc<crate::CommittedBlock>>) {
    use crate::storage::Storage;
    let mut store = MemStorage::new();
    let mut prev_hash = Digest::ZERO;
    let mut blocks = Vec::new();
    for height in 1..=last {
        let request = crate::message::Request {
            client: bftd_crypto::PublicKey([height as u8; 32]),
            request_id: 7,
            valid_until: SeqNum(height + 10),
            payload: vec![1],
        };
        let block = Arc::new(crate::CommittedBlock {
            block: crate::Block {
                height: SeqNum(height),
                prev_hash,
                batch_digest: Digest([2; 32]),
                batch: Arc::new(Batch {
                    requests: vec![SignedRequest::unsigned(request)],
                }),
            },
            certificate: QuorumCertificate {
                value: crate::message::Commit {
                    view: View(0),
                    seq: SeqNum(height),
                    digest: Digest([2; 32]),
                },
                votes: Vec::new(),
            },
        });
        prev_hash = block.hash();
        store
            .apply(
                &[],
                &[Delivery {
                    block: block.clone(),
                    duplicates: Vec::new(),
                    tree: None,
                }],
            )
            .unwrap();
        blocks.push(block);
    }
    (store, blocks)
}

fn restart_from(
    store: MemStorage,
    checkpoint: &crate::CommittedBlock,
    block_hash: Digest,
    request_lifetime: u64,
) -> (Result<Replica, ReplicaError>, Vec<u64>) {
    let source = Arc::new(CountingSource {
        inner: store,
        read: Default::default(),
    });
    let config = Config {
        request_lifetime,
        ..Config::default()
    };
    let setup = ReplicaSetup {
        id: NodeId(2),
        key: keys()[2].clone(),
        committee: committee(),
        config,
        blocks: source.clone(),
    };
    let recovered = Recovered {
        stable_checkpoint: Some(QuorumCertificate {
            value: Checkpoint {
                seq: checkpoint.height(),
                block_hash,
            },
            votes: Vec::new(),
        }),
        ..Recovered::default()
    };
    let replica = Replica::new(setup, recovered, Duration::ZERO);
    let read = source.read.lock().unwrap().clone();
    (replica, read)
}

/// A restart reads only the blocks from the stable checkpoint on (and the
/// executed keys of the last `request_lifetime` heights), not the store's
/// whole history; it still ends at the same head and remembers the
/// requests a replay could name; and a checkpoint block whose hash is not
/// the certified one is refused as a damaged store.
#[test]
fn restart_reads_from_the_stable_checkpoint_only() {
    let (store, blocks) = chained_store(40);
    let (replica, read) = restart_from(store.clone(), &blocks[31], blocks[31].hash(), 5);
    let replica = replica.unwrap();
    assert_eq!(read, (32..=40).collect::<Vec<_>>());
    assert_eq!(replica.status().last_executed, SeqNum(40));
    assert_eq!(replica.status().head_hash, blocks[39].hash());
    // Executed at 36..=40 is remembered; 35 and older have expired.
    let lookup = |height: u64| {
        replica.executed.lookup(
            &blocks[height as usize - 1].block.batch.requests[0].request,
            SeqNum(41),
        )
    };
    assert_eq!(
        lookup(36),
        crate::clients::Lookup::Executed { height: SeqNum(36) }
    );
    assert_eq!(
        lookup(40),
        crate::clients::Lookup::Executed { height: SeqNum(40) }
    );
    assert_eq!(replica.executed.len(), 5);

    let (refused, _) = restart_from(store, &blocks[31], Digest([9; 32]), 5);
    assert!(
        matches!(
            refused,
            Err(ReplicaError::CorruptLog { height: SeqNum(32) })
        ),
        "{:?}",
        refused.err()
    );
}

/// A store whose blocks below `first` were pruned.
struct PrunedSource {
    inner: MemStorage,
    first: SeqNum,
}

impl BlockSource for PrunedSource {
    fn block(&self, height: SeqNum) -> Option<Arc<crate::CommittedBlock>> {
        (height >= self.first)
            .then(|| self.inner.block(height))
            .flatten()
    }
    fn last_height(&self) -> SeqNum {
        self.inner.last_height()
    }
    fn first_height(&self) -> SeqNum {
        self.first
    }
    fn duplicates(&self, height: SeqNum) -> Vec<u32> {
        self.inner.duplicates(height)
    }
}

/// A fetch for pruned heights is answered with a refusal (a `Blocks` with
/// no block and the stable checkpoint), not silence; a fetch above what is
/// stored still gets nothing. The fetcher that gets the refusal, with a
/// checkpoint certified above its height, says it needs a snapshot, and
/// stops saying so once a block executes.
#[test]
fn a_fetch_for_pruned_blocks_is_refused_and_shown() {
    let (store, blocks) = chained_store(40);
    let source = Arc::new(PrunedSource {
        inner: store,
        first: SeqNum(20),
    });
    let setup = ReplicaSetup {
        id: NodeId(2),
        key: keys()[2].clone(),
        committee: committee(),
        config: Config {
            request_lifetime: 5,
            ..Config::default()
        },
        blocks: source,
    };
    let recovered = Recovered {
        stable_checkpoint: Some(QuorumCertificate {
            value: Checkpoint {
                seq: SeqNum(32),
                block_hash: blocks[31].hash(),
            },
            votes: Vec::new(),
        }),
        ..Recovered::default()
    };
    let mut server = Replica::new(setup, recovered, Duration::ZERO).unwrap();
    server.drain_actions();
    let fetch = |from: u64, to: u64| {
        signed(
            1,
            crate::message::FetchBlocks {
                from: SeqNum(from),
                to: SeqNum(to),
            },
        )
    };
    server.on_fetch_blocks(NodeId(1), fetch(3, 10));
    let sent = server.drain_actions().send;
    assert_eq!(sent.len(), 1);
    let refusal = match &sent[0].message {
        WireMessage::Blocks(answer) => answer.clone(),
        other => panic!("{other:?}"),
    };
    assert!(refusal.value.blocks.is_empty());
    server.on_fetch_blocks(NodeId(1), fetch(41, 50));
    assert!(server.drain_actions().send.is_empty(), "not stored yet");
    server.on_fetch_blocks(NodeId(1), fetch(25, 26));
    match &server.drain_actions().send[0].message {
        WireMessage::Blocks(answer) => assert_eq!(answer.value.blocks.len(), 2),
        other => panic!("{other:?}"),
    }

    // The fetcher: a certified checkpoint above its height, no block.
    let mut fetcher = replica(0);
    let value = Checkpoint {
        seq: SeqNum(64),
        block_hash: Digest([3; 32]),
    };
    let votes = (0..3)
        .map(|i| crate::certificate::Vote {
            signer: NodeId(i),
            signature: signed(i, value).signature,
        })
        .collect();
    let answer = signed(
        1,
        crate::message::Blocks {
            blocks: Vec::new(),
            checkpoint: QuorumCertificate { value, votes },
        },
    );
    fetcher.on_blocks(answer);
    assert!(fetcher.status().needs_snapshot);
    assert_eq!(fetcher.metrics().fetches_refused_pruned, 1);
    // A block executing clears it.
    fetcher.execute_block(blocks[0].clone(), None, None);
    assert!(!fetcher.status().needs_snapshot);
}

/// The pipeline's byte bound: big batches stop the primary proposing at
/// four batches' worth of bytes in flight, with most of the sixteen slots
/// free and requests still queued; small batches fill all sixteen slots,
/// as before the bound (ordinary load never meets it).
#[test]
fn big_batches_are_bounded_in_flight_by_bytes_small_ones_by_count() {
    let config = Config {
        request_mode: RequestMode::ClientSigned,
        pipeline: 16,
        max_batch_requests: 5,
        max_batch_bytes: 64 * 1024,
        ..Config::default()
    };
    let client = KeyPair::from_seed([31; 32]);
    for (payload, requests) in [(16 * 1024, 60u64), (100, 100)] {
        let mut primary = fresh_primary(&config);
        for id in 1..=requests {
            let request = crate::message::Request {
                client: client.public(),
                request_id: id,
                valid_until: SeqNum(1000),
                payload: vec![7; payload],
            };
            let request = SignedRequest::sign(request, &client).unwrap();
            let request = verify_request(
                request,
                NodeId(0),
                &committee(),
                RequestMode::ClientSigned,
                &mut BatchVerifier,
            )
            .unwrap();
            primary.handle_request(Duration::from_millis(1), request, true);
        }
        let bound = requests::PIPELINE_BATCHES_OF_BYTES * config.max_batch_bytes;
        println!(
            "{payload}-byte requests: {} batches, {} bytes in flight (bound {bound}), {} queued",
            primary.in_flight(),
            primary.in_flight_bytes(),
            primary.queue.len()
        );
        assert_ne!(primary.queue.len(), 0, "requests still wait");
        if payload > 1024 {
            assert!(primary.in_flight() < 8, "big batches stopped by bytes");
            assert!(primary.in_flight_bytes() >= bound);
            assert!(primary.in_flight_bytes() < bound + config.max_batch_bytes);
        } else {
            assert_eq!(primary.in_flight(), 16, "small batches fill the pipeline");
        }
    }
}

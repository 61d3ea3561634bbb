//! Hot paths of the core: encoding and decoding a full batch, the batch
//! digest (Merkle root), signature collection + batch verification of a
//! pre-prepare, and one whole consensus instance across four replicas.

use bftd_crypto::KeyPair;
use bftd_protocol::merkle::MerkleTree;
use bftd_protocol::{
    codec, verify_message, Batch, BatchVerifier, Committee, Config, Destination, MemStorage,
    MessageLimits, NodeId, Recovered, Replica, ReplicaSetup, Request, RequestMode, SignedRequest,
    WireMessage,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::sync::Arc;
use std::time::Duration;

fn batch(count: usize, size: usize, signed: bool) -> Batch {
    let client = KeyPair::from_seed([7; 32]);
    Batch {
        requests: (0..count)
            .map(|i| {
                let request = Request {
                    client: client.public(),
                    request_id: i as u64,
                    valid_until: bftd_protocol::SeqNum(1000),
                    payload: vec![(i % 251) as u8; size],
                };
                if signed {
                    SignedRequest::sign(request, &client).expect("small")
                } else {
                    // Connection-authenticated: granted to the primary.
                    SignedRequest::granted(request, &client, NodeId(0))
                }
            })
            .collect(),
    }
}

fn codec_and_digest(c: &mut Criterion) {
    let batch = batch(1000, 512, false);
    let bytes = codec::encode(&batch).expect("encodes");
    let mut group = c.benchmark_group("batch_1000x512B");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("encode", |b| b.iter(|| codec::encode(&batch)));
    group.bench_function("decode", |b| b.iter(|| codec::decode::<Batch>(&bytes)));
    group.bench_function("merkle_root", |b| b.iter(|| MerkleTree::new(&batch).root()));
    group.finish();
}

struct Cluster {
    replicas: Vec<Replica>,
    committee: Committee,
    limits: MessageLimits,
}

fn cluster(mode: RequestMode) -> Cluster {
    let keys: Vec<KeyPair> = (0..4).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
    let committee =
        Committee::new(&keys.iter().map(KeyPair::public).collect::<Vec<_>>()).expect("4 keys");
    let config = Config {
        request_mode: mode,
        max_batch_requests: 1000,
        ..Config::default()
    };
    let replicas = keys
        .into_iter()
        .enumerate()
        .map(|(i, key)| {
            let setup = ReplicaSetup {
                id: NodeId(i as u16),
                key,
                committee: committee.clone(),
                config: config.clone(),
                blocks: Arc::new(MemStorage::new()),
            };
            Replica::new(setup, Recovered::default(), Duration::ZERO).expect("replica")
        })
        .collect();
    Cluster {
        replicas,
        committee,
        limits: MessageLimits::of(&config),
    }
}

/// Runs one batch through pre-prepare, prepare and commit on four replicas,
/// passing messages as encoded bytes and verifying every signature, until
/// every replica delivered it.
fn one_instance(cluster: &mut Cluster, batch: &Batch, mode: RequestMode, round: u64) {
    let now = Duration::from_millis(round);
    let primary = cluster.replicas[0].status().primary.index();
    for request in &batch.requests {
        let mut request = request.clone();
        request.request.request_id += round * 10_000;
        if mode == RequestMode::ClientSigned {
            continue;
        }
        let verified = bftd_protocol::verify_request(
            request,
            NodeId(primary as u16),
            &cluster.committee,
            mode,
            &mut BatchVerifier,
        )
        .expect("valid");
        cluster.replicas[primary].handle_request(now, verified, false);
    }
    let mut queue: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    let mut delivered = 0;
    let collect = |from: usize,
                   replica: &mut Replica,
                   queue: &mut Vec<(usize, usize, Vec<u8>)>,
                   delivered: &mut usize| {
        let actions = replica.drain_actions();
        *delivered += actions.deliver.len();
        for outgoing in actions.send {
            let bytes = codec::encode(&outgoing.message).expect("encodes");
            match outgoing.to {
                Destination::To(to) => queue.push((from, to.index(), bytes)),
                Destination::AllOthers => {
                    for to in (0..4).filter(|&to| to != from) {
                        queue.push((from, to, bytes.clone()));
                    }
                }
            }
        }
    };
    collect(
        primary,
        &mut cluster.replicas[primary],
        &mut queue,
        &mut delivered,
    );
    while let Some((from, to, bytes)) = queue.pop() {
        let message: WireMessage = codec::decode(&bytes).expect("decodes");
        let verified = verify_message(
            message,
            &cluster.committee,
            &cluster.limits,
            &mut BatchVerifier,
        )
        .expect("valid");
        cluster.replicas[to].handle_message(now, NodeId(from as u16), verified);
        collect(to, &mut cluster.replicas[to], &mut queue, &mut delivered);
    }
    assert!(delivered >= 4, "all four replicas deliver the batch");
}

fn consensus_instance(c: &mut Criterion) {
    let mut group = c.benchmark_group("consensus_instance_n4");
    group.sample_size(20);
    let batch = batch(1000, 512, false);
    group.throughput(Throughput::Elements(1000));
    let mode = RequestMode::ConnectionAuthenticated;
    let mut cluster = cluster(mode);
    let mut round = 0;
    group.bench_function("1000x512B_connection_authenticated", |b| {
        b.iter_batched(
            || {
                round += 1;
                round
            },
            |round| one_instance(&mut cluster, &batch, mode, round),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, codec_and_digest, consensus_instance);
criterion_main!(benches);

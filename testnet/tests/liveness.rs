//! Liveness with real processes, for the crash patterns users hit: every
//! node SIGKILLed at once under load and restarted in another order; a
//! primary that leaves one client out; nodes started one at a time while a
//! client already submits. Each states its bound and measures against it.
//!
//! Same harness as `scenarios.rs` (testnets through the `bftnet` binary,
//! every process stopped by PID even on failure).

mod common;

use bftd::client::{Client, ClientError};
use bftd::config::Cluster;
use bftd_crypto::{Digest, KeyPair};
use bftd_protocol::{NodeId, SeqNum};
use common::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn cluster(net: &Testnet) -> Cluster {
    Cluster::load(&net.dir.join("cluster.toml")).expect("cluster file")
}

async fn connect(net: &Testnet, node: u16) -> Client {
    let key = KeyPair::generate(&mut rand::rngs::OsRng);
    Client::connect(&cluster(net), NodeId(node), key)
        .await
        .unwrap_or_else(|error| panic!("connect to node {node}: {error}"))
}

/// The PIDs of the running nodes, with the markers that tell them apart.
fn node_pids(net: &Testnet) -> Vec<(u32, String)> {
    let layout = bftnet::net::layout::Layout::new(&net.dir);
    let state = bftnet::net::layout::State::load(&layout).expect("state");
    state
        .nodes
        .iter()
        .map(|node| {
            (
                node.pid.expect("a running node's PID"),
                bftnet::net::launch::node_marker(&layout, node.id),
            )
        })
        .collect()
}

/// SIGKILLs every node at once and waits until none runs.
fn power_cut(net: &Testnet) {
    let nodes = node_pids(net);
    for (pid, _) in &nodes {
        bftnet::net::launch::kill(*pid);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while nodes
        .iter()
        .any(|(pid, marker)| bftnet::net::launch::alive(*pid, marker))
    {
        assert!(Instant::now() < deadline, "SIGKILLed nodes still run");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An acknowledged transaction: what its verified receipt said.
#[derive(Clone, Debug)]
struct Acknowledged {
    payload: Vec<u8>,
    height: SeqNum,
    batch_digest: Digest,
}

/// Every block from height 1 to `to`, as node `id` serves them (each
/// certificate and hash link verified by the client library): its hash,
/// batch digest and payloads.
async fn chain(net: &Testnet, id: u16, to: u64) -> BTreeMap<u64, (Digest, Digest, Vec<Vec<u8>>)> {
    let client = connect(net, id).await;
    let mut blocks = client.subscribe(SeqNum(1)).await.expect("subscribe");
    let mut chain = BTreeMap::new();
    while (chain.len() as u64) < to {
        let block = tokio::time::timeout(Duration::from_secs(10), blocks.next())
            .await
            .expect("the next block in time")
            .expect("a valid block")
            .expect("the node keeps the connection");
        let payloads = block
            .block
            .block
            .batch
            .requests
            .iter()
            .map(|r| r.request.payload.clone())
            .collect();
        chain.insert(
            block.block.height().0,
            (block.hash, block.block.block.batch_digest, payloads),
        );
    }
    chain
}

/// A power cut under load: every bftd SIGKILLed at once while clients
/// submit to every node, then the nodes restarted one by one in another
/// order (3, 1, 0, 2). Bound: a transaction submitted to the primary once
/// the last node is back commits within 5 s (the failure users hit was a
/// restarted primary that never proposed again). And nothing acknowledged
/// is lost: every transaction whose verified receipt a client got before
/// the cut is at the height its receipt named, in the batch it named, and
/// every node holds the same block (same hash) there. One client per node
/// sends 12 KB transactions, so batches go to the batch log too.
#[test]
fn power_cut_under_load_then_restart_in_another_order() {
    let _serial = serial();
    let started = Instant::now();
    let net = Testnet::up("power-cut-load", &[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let acknowledged: Arc<Mutex<Vec<Acknowledged>>> = Arc::default();
    let load = runtime.block_on(async {
        let mut tasks = Vec::new();
        for node in 0..4u16 {
            for lane in 0..4u32 {
                let client = connect(&net, node).await;
                let acknowledged = acknowledged.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0u64.. {
                        let mut payload = format!("node {node} lane {lane} tx {i}").into_bytes();
                        if lane == 0 {
                            // Big enough that batches outgrow one chunk and
                            // go to the batch log (design notes §50): the
                            // cut then lands among log appends too.
                            payload.resize(12_000, b'.');
                        }
                        match client.submit(payload.clone()).await {
                            Ok(committed) => acknowledged
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(Acknowledged {
                                    payload,
                                    height: committed.height,
                                    batch_digest: committed.batch_digest,
                                }),
                            Err(_) => return,
                        }
                    }
                }));
            }
        }
        tasks
    });
    std::thread::sleep(Duration::from_millis(2500));
    power_cut(&net);
    runtime.block_on(async {
        for task in load {
            task.abort();
        }
    });
    let acknowledged = acknowledged
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert!(
        acknowledged.len() >= 20,
        "only {} transactions acknowledged before the cut",
        acknowledged.len()
    );
    for id in ["3", "1", "0", "2"] {
        net.ok("restart", &[id]);
    }
    let back = Instant::now();
    let (primary, _) = net.primary();
    let took = runtime.block_on(async {
        let client = connect(&net, primary).await;
        tokio::time::timeout(
            Duration::from_secs(30),
            client.submit(b"after the power cut".to_vec()),
        )
        .await
    });
    let elapsed = back.elapsed();
    assert!(
        matches!(took, Ok(Ok(_))),
        "nothing committed within 30 s of the restart: {took:?}"
    );
    assert!(
        elapsed <= Duration::from_secs(5),
        "commits resumed only {elapsed:?} after the last restart (bound 5 s)"
    );
    let top = acknowledged.iter().map(|a| a.height.0).max().unwrap_or(0);
    let reference = runtime.block_on(chain(&net, 0, top));
    for node in 0..4u16 {
        let blocks = runtime.block_on(chain(&net, node, top));
        for ack in &acknowledged {
            let (hash, batch, payloads) = blocks
                .get(&ack.height.0)
                .unwrap_or_else(|| panic!("node {node} has no block {}", ack.height.0));
            assert_eq!(
                *batch, ack.batch_digest,
                "node {node}: block {} is not the one a receipt named",
                ack.height.0
            );
            assert_eq!(
                Some(hash),
                reference.get(&ack.height.0).map(|(hash, _, _)| hash),
                "node {node} and node 0 hold different blocks at {}",
                ack.height.0
            );
            assert!(
                payloads.contains(&ack.payload),
                "node {node}: block {} lost {:?}",
                ack.height.0,
                String::from_utf8_lossy(&ack.payload)
            );
        }
    }
    net.assert_check("after the power cut");
    let segments = std::fs::read_dir(net.dir.join("data/node0/bftd.redb.batches"))
        .map(|entries| entries.flatten().count())
        .unwrap_or(0);
    assert!(
        segments > 0,
        "no batch went to node 0's batch log: the cut did not exercise it"
    );
    eprintln!(
        "[power-cut-load] {} acknowledged before the cut (up to height {top}), all kept; \
         commits resumed {:.2} s after the last restart; {:.1} s",
        acknowledged.len(),
        elapsed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// A primary that censors one client (`--byzantine 0=censor`: node 0, the
/// primary of view 0, leaves the first client it sees out of everything)
/// is replaced: that client's transaction, submitted to a backup, commits
/// within 3 s, through a view change, while other clients' transactions
/// keep committing. Bound: two request timeouts (800 ms each: relay, then
/// suspicion) plus the view change.
#[test]
fn a_censoring_primary_is_replaced_within_3_s() {
    let _serial = serial();
    let net = Testnet::up("censor", &["--byzantine", "0=censor"]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (took, others) = runtime.block_on(async {
        let victim = connect(&net, 1).await;
        let other = connect(&net, 2).await;
        let start = Instant::now();
        let censored = async {
            let result = victim.submit(b"censored client".to_vec()).await;
            (result, start.elapsed())
        };
        let traffic = async {
            // The victim's request reaches the primary first; others follow.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut committed = 0;
            while start.elapsed() < Duration::from_secs(3) {
                if other.submit(b"another client".to_vec()).await.is_ok() {
                    committed += 1;
                }
            }
            committed
        };
        let (result, others) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(20), censored),
            traffic
        );
        match result {
            Ok((Ok(_), took)) => (took, others),
            other => panic!("the censored client's transaction never committed: {other:?}"),
        }
    });
    let (_, view) = net.primary();
    assert!(view >= 1, "no view change");
    assert!(
        took <= Duration::from_secs(3),
        "the censored transaction took {took:?} (bound 3 s)"
    );
    net.assert_check("after the censoring primary");
    eprintln!(
        "[censor] censored transaction committed after {:.2} s, in view {view}; {others} others meanwhile",
        took.as_secs_f64()
    );
}

/// Nodes brought up one at a time while a client already submits (an
/// operator starting hosts in turn): nodes 0 and 1 first, a client submits
/// to node 1 and waits (no quorum yet: its request times out there, and
/// node 1 suspects the primary alone), then node 2, then node 3. Bound:
/// within 5 s of the last start all four are in the same view, none is
/// changing views, and the client's transaction has committed everywhere.
#[test]
fn nodes_started_one_at_a_time_agree_on_a_view_and_commit() {
    let _serial = serial();
    let net = Testnet::up("one-at-a-time", &[]);
    power_cut(&net);
    for id in ["0", "1"] {
        net.ok("restart", &[id]);
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let client = runtime.block_on(connect(&net, 1));
    let client = Arc::new(client);
    let waiting = {
        let client = client.clone();
        runtime.spawn(async move { client.submit(b"submitted early".to_vec()).await })
    };
    // Long enough for node 1 to relay the request and suspect the primary.
    std::thread::sleep(Duration::from_secs(3));
    net.ok("restart", &["2"]);
    std::thread::sleep(Duration::from_secs(1));
    net.ok("restart", &["3"]);
    let last_start = Instant::now();
    let result: Result<_, ClientError> = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .map_err(|_| ClientError::Timeout(Duration::from_secs(30)))?
            .expect("the submit task")
    });
    let committed = result.unwrap_or_else(|error| panic!("never committed: {error}"));
    let deadline = last_start + Duration::from_secs(5);
    let views = loop {
        let status = net.status();
        let views: Vec<(Option<u64>, bool, Option<u64>)> = status["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|node| {
                (
                    node["status"]["view"].as_u64(),
                    node["status"]["in_view_change"].as_bool().unwrap_or(true),
                    node["status"]["height"].as_u64(),
                )
            })
            .collect();
        let agreed = views.iter().all(|&(view, changing, height)| {
            view.is_some()
                && view == views[0].0
                && !changing
                && height.is_some_and(|h| h >= committed.height.0)
        });
        if agreed {
            break views;
        }
        assert!(
            Instant::now() < deadline,
            "5 s after the last start: (view, changing, height) per node {views:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    net.assert_check("after starting one at a time");
    eprintln!(
        "[one-at-a-time] committed at height {} ; all in view {:?} {:.2} s after the last start",
        committed.height.0,
        views[0].0,
        last_start.elapsed().as_secs_f64()
    );
}

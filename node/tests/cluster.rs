//! Real `bftd` processes on loopback: ordering under concurrent load, crash
//! and recovery of a backup and of the primary, verified end to end with
//! nothing but the cluster file.

mod common;

use bftd::client::Client;
use bftd_crypto::Digest;
use bftd_protocol::{RequestKey, RequestMode, SeqNum, SignedRequest};
use common::TestCluster;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Submits `per_client` transactions from each client, `in_flight` at a time
/// per client, resubmitting after errors (safe: ordered at most once).
/// `on_progress` sees the number of receipts so far.
async fn load(
    clients: Vec<Client>,
    per_client: usize,
    in_flight: usize,
    progress: Arc<AtomicUsize>,
) -> Vec<SignedRequest> {
    let mut tasks = tokio::task::JoinSet::new();
    for client in clients {
        let client = Arc::new(client);
        let progress = progress.clone();
        tasks.spawn(async move {
            let requests: Vec<SignedRequest> = (0..per_client)
                .map(|i| client.request(format!("tx-{i}-{}", client.public_key()).into_bytes()))
                .collect();
            let gate = Arc::new(tokio::sync::Semaphore::new(in_flight));
            let mut submits = tokio::task::JoinSet::new();
            for request in requests.clone() {
                let permit = gate.clone().acquire_owned().await.unwrap();
                let client = client.clone();
                let progress = progress.clone();
                submits.spawn(async move {
                    let _permit = permit;
                    for attempt in 0.. {
                        match client.submit_request(&request).await {
                            Ok(_) => break,
                            Err(error) => {
                                assert!(attempt < 20, "request never committed: {error}");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    }
                    progress.fetch_add(1, Ordering::Relaxed);
                });
            }
            while let Some(result) = submits.join_next().await {
                result.unwrap();
            }
            requests
        });
    }
    let mut all = Vec::new();
    while let Some(result) = tasks.join_next().await {
        all.extend(result.unwrap());
    }
    all
}

/// Every block of node `node` up to `height`, each certificate and link
/// verified by the client library.
async fn chain(
    cluster: &TestCluster,
    node: usize,
    height: u64,
) -> Vec<(Digest, Arc<bftd_protocol::CommittedBlock>, Vec<u32>)> {
    let client = cluster.client(node).await;
    let mut stream = client.subscribe(SeqNum(1)).await.unwrap();
    let mut blocks = Vec::new();
    while (blocks.len() as u64) < height {
        let block = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .unwrap_or_else(|_| panic!("node {node} stuck at {} of {height}", blocks.len()))
            .unwrap()
            .unwrap();
        blocks.push((block.hash, block.block, block.duplicates));
    }
    blocks
}

/// All nodes hold the same chain up to the highest height; every submitted
/// request executes exactly once; nothing else executes.
async fn assert_consistent(cluster: &TestCluster, nodes: &[usize], submitted: &[SignedRequest]) {
    let mut heights = Vec::new();
    for &node in nodes {
        heights.push(cluster.client(node).await.status().await.unwrap().height);
    }
    let height = heights.iter().copied().max().unwrap();
    let reference = chain(cluster, nodes[0], height).await;
    for &node in &nodes[1..] {
        let other = chain(cluster, node, height).await;
        for (h, (a, b)) in reference.iter().zip(&other).enumerate() {
            assert_eq!(
                a.0,
                b.0,
                "nodes {} and {node} differ at height {}",
                nodes[0],
                h + 1
            );
        }
    }
    let wanted: BTreeSet<RequestKey> = submitted.iter().map(SignedRequest::key).collect();
    let mut executed: BTreeMap<RequestKey, u64> = BTreeMap::new();
    for (height, (_, block, duplicates)) in reference.iter().enumerate() {
        for (index, request) in block.block.batch.requests.iter().enumerate() {
            if duplicates.contains(&(index as u32)) {
                continue;
            }
            let key = request.key();
            assert!(
                wanted.contains(&key),
                "height {}: a request nobody submitted",
                height + 1
            );
            assert!(
                executed.insert(key, height as u64 + 1).is_none(),
                "executed twice: {key:?}"
            );
        }
    }
    assert_eq!(
        executed.len(),
        wanted.len(),
        "every submitted request executes"
    );
}

/// 4 nodes, 10,000 transactions from 4 concurrent clients: every node
/// delivers the same blocks in the same order, every certificate verifies
/// with only the cluster file, every transaction exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_transactions_from_four_clients() {
    let cluster = TestCluster::start(4, RequestMode::ClientSigned, "");
    let mut clients = Vec::new();
    for node in 0..4 {
        clients.push(cluster.client(node).await);
    }
    let progress = Arc::new(AtomicUsize::new(0));
    let submitted =
        tokio::time::timeout(Duration::from_secs(120), load(clients, 2500, 200, progress))
            .await
            .expect("10,000 transactions within 120 s");
    assert_eq!(submitted.len(), 10_000);
    assert_consistent(&cluster, &[0, 1, 2, 3], &submitted).await;
}

/// Kills `victim` with SIGKILL in the middle of the load, restarts it, and
/// checks that nothing committed is lost or changed, the node catches up,
/// and ordering continues.
async fn crash_and_recover(victim: usize) {
    let mut cluster = TestCluster::start(4, RequestMode::ConnectionAuthenticated, "");
    let survivors: Vec<usize> = (0..4).filter(|&n| n != victim).collect();
    let mut clients = Vec::new();
    for &node in &survivors {
        clients.push(cluster.client(node).await);
    }
    let progress = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(load(clients, 1000, 50, progress.clone()));
    while progress.load(Ordering::Relaxed) < 800 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = cluster.client(survivors[0]).await.status().await.unwrap();
    cluster.kill(victim);
    let killed_at = progress.load(Ordering::Relaxed);
    // Ordering continues without the victim (a view change if it was the
    // primary).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while progress.load(Ordering::Relaxed) < killed_at + 500 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress after killing node {victim}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.start_node(victim);
    let submitted = tokio::time::timeout(Duration::from_secs(120), load)
        .await
        .unwrap()
        .unwrap();
    let after = cluster.client(survivors[0]).await.status().await.unwrap();
    assert!(after.height > before.height);
    if victim == 0 {
        assert!(after.view > 0, "losing the primary forces a view change");
    }
    // The restarted node catches up and agrees with everyone on everything.
    let target = after.height;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let caught_up =
            match tokio::time::timeout(Duration::from_secs(2), cluster.client(victim)).await {
                Ok(client) => client
                    .status()
                    .await
                    .map(|s| s.height >= target)
                    .unwrap_or(false),
                Err(_) => false,
            };
        if caught_up {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {victim} never caught up; log:\n{}",
            cluster.log(victim)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_consistent(&cluster, &[0, 1, 2, 3], &submitted).await;
}

/// SIGKILL of a backup under load, then restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_crash_under_load() {
    crash_and_recover(3).await;
}

/// SIGKILL of the primary under load: a view change, then restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_crash_under_load() {
    crash_and_recover(0).await;
}

/// A client that reads its connection too slowly for the node's reply queue
/// (here 32 replies) loses answers: the node drops them and counts them. The
/// client library resends a request it got no answer for, the node answers
/// the replay with its receipt, and every submit succeeds on its own, with no
/// retry by the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_receipts_are_recovered_by_resending() {
    let cluster = TestCluster::start(
        4,
        RequestMode::ConnectionAuthenticated,
        "[clients]\nreply_queue = 32",
    );
    let mut client = cluster.client(0).await;
    client.set_resend_after(Duration::from_millis(300));
    client.set_timeout(Duration::from_secs(60));
    let client = Arc::new(client);
    let mut submits = tokio::task::JoinSet::new();
    for i in 0..300 {
        let client = client.clone();
        submits.spawn(async move {
            client
                .submit(format!("burst-{i}").into_bytes())
                .await
                .map_err(|error| format!("request {i}: {error}"))
        });
    }
    let committed = tokio::time::timeout(Duration::from_secs(90), async {
        let mut committed = 0;
        while let Some(result) = submits.join_next().await {
            result.unwrap().unwrap();
            committed += 1;
        }
        committed
    })
    .await
    .expect("every request answered within 90 s");
    assert_eq!(committed, 300);
    assert!(
        cluster.metric(0, "bftd_replies_dropped_total") > 0.0,
        "the burst overflowed the reply queue: the test exercised resending"
    );
}

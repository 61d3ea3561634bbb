//! Bounded restart and retention with real `bftd` processes (design notes
//! §29): a cluster whose nodes prune (`[storage] retain_blocks`) still
//! refuses a replayed request after every node restarted from its pruned
//! store, a node restarted from its checkpoint reaches its peers' height
//! and head, and `bftd tail --from` a pruned height fails naming the oldest
//! kept height.

mod common;

use bftd::client::{Client, ClientError};
use bftd_protocol::SeqNum;
use common::{small_windows, TestCluster};
use std::process::Command;
use std::time::Duration;

const NODE_FILE: &str = "pipeline = 8\n\n[storage]\nretain_blocks = 17";

/// Four nodes that prune, each with its store, started and healthy.
fn pruning_cluster() -> TestCluster {
    let mut cluster = TestCluster::configure_with(4, small_windows(), NODE_FILE);
    for id in 0..4 {
        cluster.init(id);
        cluster.start_node(id);
    }
    cluster.wait_healthy(Duration::from_secs(30));
    cluster
}

/// Submits `count` requests one after another (about a block each).
async fn submit_sequentially(client: &Client, count: usize) {
    for i in 0..count {
        let result = tokio::time::timeout(
            Duration::from_secs(30),
            client.submit(format!("tx-{i}").into_bytes()),
        )
        .await;
        result
            .expect("a request commits within 30 s")
            .expect("a request commits");
    }
}

/// Waits until every node in `nodes` reports the same height and head
/// hash, at least `at_least`; returns that height.
async fn wait_same_head(cluster: &TestCluster, nodes: &[usize], at_least: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut heads = Vec::new();
        for &node in nodes {
            let status = match tokio::time::timeout(Duration::from_secs(2), async {
                cluster.client(node).await.status().await
            })
            .await
            {
                Ok(Ok(status)) => Some((status.height, status.head_hash)),
                _ => None,
            };
            heads.push(status);
        }
        let first = heads.first().cloned().flatten();
        if let Some((height, _)) = &first {
            if *height >= at_least && heads.iter().all(|head| *head == first) {
                return *height;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes {nodes:?} never agreed at or above {at_least}: {heads:?}; log of node 3:\n{}",
            cluster.log(3)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_pruning_keeps_at_most_once_and_catches_up() {
    let mut cluster = pruning_cluster();
    let client = cluster.client(0).await;

    // Enough blocks for a stable checkpoint of at least 32, which prunes
    // below 15 on every node.
    submit_sequentially(&client, 40).await;
    let status = client.status().await.unwrap();
    assert!(status.stable_checkpoint >= 32, "{status:?}");
    assert!(
        status.first_height > 1 && status.first_height < status.stable_checkpoint,
        "pruned below the checkpoint only: {status:?}"
    );
    assert!(!status.needs_snapshot);

    // `bftd tail --from 1` fails, naming the oldest kept height.
    let output = Command::new("timeout")
        .arg("30")
        .arg(common::bftd())
        .args(["tail", "--node", "0", "--from", "1", "--count", "1"])
        .arg("--cluster")
        .arg(cluster.path().join("cluster.toml"))
        .output()
        .expect("run bftd tail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "tail of a pruned height succeeded"
    );
    let first_now = client.status().await.unwrap().first_height;
    assert!(
        stderr.contains(&format!("oldest kept height is {}.", status.first_height))
            || stderr.contains(&format!("oldest kept height is {first_now}.")),
        "{stderr}"
    );
    // The library reads request_lifetime blocks before the first it
    // shows: from the height the refusal names, blocks come.
    let from = SeqNum(first_now + small_windows().request_lifetime);
    let mut stream = client.subscribe(from).await.unwrap();
    let block = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a kept block streams")
        .expect("block verifies")
        .expect("stream open");
    assert_eq!(block.block.height(), from);

    // A backup misses a few blocks, restarts from its checkpoint, and
    // reaches the same height and head as its peers.
    cluster.kill(3);
    submit_sequentially(&client, 4).await;
    let old = client.request(b"the one to replay".to_vec());
    let executed = client.submit_request(&old).await.unwrap();
    cluster.start_node(3);
    let height = wait_same_head(&cluster, &[0, 1, 2, 3], executed.height.0).await;

    // Every node restarts from its pruned store; a replay of a request
    // executed before is answered with its original block, not executed
    // again: the at-most-once table came back from the store.
    for id in 0..4 {
        cluster.kill(id);
    }
    for id in 0..4 {
        cluster.start_node(id);
    }
    cluster.wait_healthy(Duration::from_secs(30));
    let status = cluster.client(1).await.status().await.unwrap();
    assert_eq!(status.height, height, "a restart loses nothing");
    assert!(status.first_height > 1, "{status:?}");
    let replay = tokio::time::timeout(Duration::from_secs(30), async {
        cluster.client(1).await.submit_request(&old).await
    })
    .await
    .expect("the replay is answered");
    match replay {
        Ok(committed) => assert_eq!(
            committed.height, executed.height,
            "the replay executed again"
        ),
        Err(error @ ClientError::Rejected(_)) => panic!("replay refused: {error}"),
        Err(error) => panic!("replay: {error}"),
    }
    let after = cluster.client(1).await.status().await.unwrap();
    assert_eq!(after.height, height, "nothing new executed");
}

/// A backup down while its peers commit and prune far past it: every peer
/// refuses its fetch (they pruned what it needs next), and it jumps to
/// their certified checkpoint (design notes §47) instead of waiting
/// forever. It then reaches their head, commits new requests with them,
/// and restarts from the store the jump wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_past_every_peers_retention_jumps_and_catches_up() {
    let mut cluster = pruning_cluster();
    let client = cluster.client(0).await;
    submit_sequentially(&client, 2).await;
    cluster.kill(3);

    // A stable checkpoint of at least 56: every peer prunes below 39.
    submit_sequentially(&client, 60).await;
    let status = client.status().await.unwrap();
    assert!(status.first_height > 20, "{status:?}");

    cluster.start_node(3);
    let height = wait_same_head(&cluster, &[0, 1, 2, 3], status.height).await;
    let jumps = cluster.metric_reaches(3, "bftd_jumps_total", 1.0).await;
    assert_eq!(jumps, 1.0, "one jump");
    let jumped = cluster.client(3).await.status().await.unwrap();
    assert!(
        jumped.first_height > 20 && !jumped.needs_snapshot,
        "node 3 holds from the checkpoint it jumped to: {jumped:?}"
    );

    // It orders with the others: a request through it commits everywhere.
    let committed = tokio::time::timeout(Duration::from_secs(30), async {
        cluster
            .client(3)
            .await
            .submit(b"after the jump".to_vec())
            .await
    })
    .await
    .expect("a request through node 3 commits within 30 s")
    .expect("a request through node 3 commits");
    assert!(committed.height.0 > height);
    let height = wait_same_head(&cluster, &[0, 1, 2, 3], committed.height.0).await;

    // And it restarts from what the jump stored.
    cluster.kill(3);
    cluster.start_node(3);
    submit_sequentially(&client, 2).await;
    wait_same_head(&cluster, &[0, 1, 2, 3], height + 2).await;
}

//! Liveness as clients see it, with real `bftd` processes on loopback: a
//! request the client's own node never answers still commits through the
//! other nodes (PBFT clients send to every replica on a timeout), and a
//! node that cannot reach a quorum says so — in `/healthz`, in its log and
//! in the client's error — instead of leaving the client with a bare
//! timeout.

mod common;

use bftd_protocol::RequestMode;
use common::{http_answer, TestCluster};
use std::time::{Duration, Instant};

/// A client of node `own` that goes to every node after 300 ms without an
/// answer, and gives up after 20 s.
async fn patient_client(cluster: &TestCluster, own: usize) -> bftd::client::Client {
    let mut client = cluster.client(own).await;
    client.set_resend_after(Duration::from_millis(300));
    client.set_timeout(Duration::from_secs(20));
    client
}

/// Submits one transaction through node `own` after `silence` made that
/// node stop answering, and returns the verified result.
async fn submit_past(cluster: &TestCluster, own: usize, silence: impl FnOnce()) {
    let client = patient_client(cluster, own).await;
    silence();
    let started = Instant::now();
    let committed = client
        .submit(b"past a silent node".to_vec())
        .await
        .unwrap_or_else(|error| panic!("the request never committed: {error}"));
    eprintln!(
        "committed at height {} in {:?} without node {own}",
        committed.height.0,
        started.elapsed()
    );
}

/// The client's node is the primary and is frozen (SIGSTOP: connected, but
/// it never answers). The request goes to the backups, which start their
/// timers, replace the primary, and commit it; the receipt from one of
/// them verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_primary_is_replaced_and_the_request_commits() {
    let cluster = TestCluster::start(4, RequestMode::ClientSigned, "");
    submit_past(&cluster, 0, || cluster.pause(0)).await;
    let status = cluster.client(1).await.status().await.unwrap();
    assert!(status.view > 0, "a view change replaced the silent primary");
    cluster.resume(0);
}

/// Connection-authenticated requests (no client signature) after the
/// client's node, a backup, is SIGKILLed: the client proves its key to the
/// other nodes on connections it opens when it first needs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backup_is_bypassed_with_connection_authentication() {
    let mut cluster = TestCluster::start(4, RequestMode::ConnectionAuthenticated, "");
    let client = patient_client(&cluster, 2).await;
    cluster.kill(2);
    client
        .submit(b"past a dead node".to_vec())
        .await
        .unwrap_or_else(|error| panic!("the request never committed: {error}"));
}

/// Two of four nodes die: the survivors hear from one peer each, a quorum
/// needs two. Node 0 answers `/healthz` with 503 and says why, logs the
/// loss (once, not at every tick), and a client's submit fails with an
/// error naming the missing quorum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_without_quorum_says_so() {
    let mut cluster = TestCluster::start(4, RequestMode::ClientSigned, "");
    let mut client = cluster.client(0).await;
    client.set_resend_after(Duration::from_millis(500));
    client.set_timeout(Duration::from_secs(3));
    cluster.kill(2);
    cluster.kill(3);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (code, body) = loop {
        let answer = http_answer(cluster.metrics[0], "/healthz");
        if let Some((503, body)) = answer {
            break (503, body);
        }
        assert!(
            Instant::now() < deadline,
            "node 0 still answers /healthz with {answer:?} 10 s after losing its quorum"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (code, body.trim()),
        (503, "no quorum: hears from 1 of 3 peers, a quorum needs 2")
    );
    let error = client
        .submit(b"cannot commit".to_vec())
        .await
        .expect_err("nothing commits without a quorum");
    let message = error.to_string();
    eprintln!("{message}");
    assert!(
        message.contains("node 0 hears from only 1 of 3 peers (a quorum needs 3 of 4 nodes)"),
        "the error names the missing quorum: {message}"
    );
    let status = client.status().await.unwrap();
    assert!(!status.has_quorum());
    assert_eq!((status.peers_in_touch, status.quorum), (1, 3));
    // Logged when lost, not at every status interval since (a busy
    // machine may have made it flap before, hence no exact count).
    let warnings = || cluster.log(0).matches("no quorum: hears from").count();
    let logged = warnings();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(logged >= 1, "the loss is logged:\n{}", cluster.log(0));
    assert_eq!(
        warnings(),
        logged,
        "no new warning while nothing changes:\n{}",
        cluster.log(0)
    );
}

/// A client whose own node crashes and restarts goes back to that node.
/// The request that finds its connection closed goes to every node (as any
/// request its node leaves unanswered); the client dials its node again
/// meanwhile, and the requests after that reach only it, not every node of
/// the cluster (each of which would otherwise take, check and forward a
/// copy of every request for as long as the client lives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_goes_back_to_its_node_after_the_node_restarts() {
    let mut cluster = TestCluster::start(4, RequestMode::ClientSigned, "");
    let client = patient_client(&cluster, 1).await;
    client.submit(b"before".to_vec()).await.unwrap();
    cluster.kill(1);
    cluster.start_node(1);
    cluster.wait_healthy(Duration::from_secs(20));
    // The first requests find the old connection closed (the restarted
    // node answers its packets with a stateless reset) and go everywhere.
    for i in 0..3 {
        client
            .submit(format!("around the restart {i}").into_bytes())
            .await
            .unwrap_or_else(|error| panic!("request {i} after the restart: {error}"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let others = |cluster: &TestCluster| -> f64 {
        [0, 2, 3]
            .iter()
            .map(|&id| cluster.metric(id, "bftd_client_requests_total"))
            .sum()
    };
    let own_before = cluster.metric(1, "bftd_client_requests_total");
    let others_before = others(&cluster);
    for i in 0..5 {
        client
            .submit(format!("after the restart {i}").into_bytes())
            .await
            .unwrap_or_else(|error| panic!("request {i}: {error}"));
    }
    let own_after = cluster
        .metric_reaches(1, "bftd_client_requests_total", own_before + 5.0)
        .await;
    // (Metrics are published after the step that counted: give any copy
    // sent elsewhere the time to show.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    let others_after = others(&cluster);
    assert_eq!(
        others_after - others_before,
        0.0,
        "after node 1 restarted, its client still sent its requests to the other nodes"
    );
    assert!(
        own_after - own_before >= 5.0,
        "node 1 took {} of the 5 requests",
        own_after - own_before
    );
}

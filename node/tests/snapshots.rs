//! Application snapshots (design notes §48), with four nodes in this
//! process, each embedding the same application: a node down past every
//! peer's retention jumps (§47) and its application, which missed the
//! pruned blocks, is restored from a snapshot f+1 peers signed, fetched
//! chunk by chunk around a peer whose snapshot files are damaged; a restart
//! with a fresh application restores the node's own snapshot.

mod common;

use bftd::config::NodeConfig;
use bftd::{Application, NodeHandle};
use bftd_crypto::{Digest, DigestBuilder, Domain};
use bftd_protocol::{CommittedBlock, SeqNum};
use common::{small_windows, TestCluster};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const STATE: Domain = Domain::new("test/v1/state");

/// One test at a time: each runs four nodes and their applications in this
/// process, and on two cores two such clusters starve each other's
/// applications, which is not what these tests are about.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Bytes of filler in each snapshot: more than two 1 MiB chunks (so a
/// fetch from three signers asks each, the damaged one too), or
/// `BFTD_SNAPSHOT_BYTES` (to time the restore of a big state).
fn filler() -> usize {
    std::env::var("BFTD_SNAPSHOT_BYTES")
        .ok()
        .and_then(|bytes| bytes.parse().ok())
        .unwrap_or((2 << 20) + 4096)
}

/// Everything the test reads of one node's application.
#[derive(Default)]
struct Seen {
    /// The state after each height delivered (or restored).
    states: BTreeMap<u64, Digest>,
    /// Heights restored at.
    restored: Vec<u64>,
}

/// A chain of every executed payload: the state after height `h` is
/// `H(state after h-1, payloads of h less its duplicates)`. The snapshot is
/// that digest and the height, then two megabytes of filler derived from
/// it, so a snapshot spans three chunks and a wrong chunk changes the
/// state.
struct Chain {
    height: u64,
    state: Digest,
    seen: Arc<Mutex<Seen>>,
}

impl Chain {
    fn new(seen: Arc<Mutex<Seen>>) -> Chain {
        Chain {
            height: 0,
            state: Digest::ZERO,
            seen,
        }
    }
}

impl Application for Chain {
    fn deliver(&mut self, block: &CommittedBlock, duplicates: &[u32]) {
        assert_eq!(
            block.height().0,
            self.height + 1,
            "blocks in order, none missed"
        );
        let mut next = DigestBuilder::new(STATE);
        next.update(&self.state.0);
        for (index, request) in block.block.batch.requests.iter().enumerate() {
            if !duplicates.contains(&(index as u32)) {
                next.update(&request.request.payload);
            }
        }
        self.state = next.finish();
        self.height = block.height().0;
        self.seen
            .lock()
            .unwrap()
            .states
            .insert(self.height, self.state);
    }

    fn takes_snapshots(&self) -> bool {
        true
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut bytes = self.height.to_le_bytes().to_vec();
        bytes.extend_from_slice(&self.state.0);
        bytes.extend(self.state.0.iter().cycle().take(filler()));
        bytes
    }

    fn restore(&mut self, height: SeqNum, state: &[u8]) -> Result<(), String> {
        let (stated, rest) = state.split_at(8);
        let digest: [u8; 32] = rest[..32].try_into().unwrap();
        let padded = digest.iter().cycle().take(filler());
        if u64::from_le_bytes(stated.try_into().unwrap()) != height.0
            || !rest[32..].iter().eq(padded)
        {
            return Err("a snapshot that is not this application's".into());
        }
        self.height = height.0;
        self.state = Digest(digest);
        let mut seen = self.seen.lock().unwrap();
        seen.restored.push(height.0);
        seen.states.insert(height.0, self.state);
        Ok(())
    }
}

const NODE_FILE: &str = "pipeline = 8\n\n[storage]\nretain_blocks = 17\nsnapshot_every = 8";
/// The same without retention: every block kept.
const KEEP_ALL: &str = "pipeline = 8\n\n[storage]\nsnapshot_every = 8";

/// Starts node `id` with a [`Chain`] application fed from height 1. A
/// node restarted at once in this process finds its UDP port still bound
/// for a few seconds while QUIC drains the closed connections of the one
/// it replaces (RFC 9000 §10.2: three probe timeouts): retried.
async fn start(cluster: &TestCluster, id: usize, seen: &Arc<Mutex<Seen>>) -> NodeHandle {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let config = NodeConfig::load(&cluster.node_file(id)).unwrap();
        let application: Box<dyn Application> = Box::new(Chain::new(seen.clone()));
        match bftd::start(config, Some((application, SeqNum(1)))).await {
            Ok(node) => return node,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("node {id} did not start within 10 s: {error}"),
        }
    }
}

/// Four nodes with `node_file`, each with its store and a [`Chain`]
/// application, started; with what each application saw.
async fn start_all(
    node_file: &str,
) -> (TestCluster, Vec<Arc<Mutex<Seen>>>, Vec<Option<NodeHandle>>) {
    let cluster = TestCluster::configure_with(4, small_windows(), node_file);
    let seen: Vec<Arc<Mutex<Seen>>> = (0..4).map(|_| Arc::default()).collect();
    let mut nodes = Vec::new();
    for (id, seen) in seen.iter().enumerate() {
        cluster.init(id);
        nodes.push(Some(start(&cluster, id, seen).await));
    }
    (cluster, seen, nodes)
}

async fn submit(cluster: &TestCluster, node: usize, count: usize, tag: &str) {
    let client = cluster.client(node).await;
    for i in 0..count {
        tokio::time::timeout(
            Duration::from_secs(30),
            client.submit(format!("{tag}-{i}").into_bytes()),
        )
        .await
        .expect("a request commits within 30 s")
        .expect("a request commits");
    }
}

/// Waits until `seen` holds a state at `height`; returns it.
async fn state_at(seen: &Arc<Mutex<Seen>>, height: u64, what: &str) -> Digest {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(state) = seen.lock().unwrap().states.get(&height) {
            return *state;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: no application state at height {height} within 60 s (restored at {:?}, highest {:?})",
            seen.lock().unwrap().restored,
            seen.lock().unwrap().states.keys().next_back()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `node`'s application took the snapshot after the newest
/// multiple of 8 at or below the node's height (it is taken once that
/// height's delivery returned); returns its height.
async fn wait_for_snapshot(node: &NodeHandle) -> u64 {
    let height = node.status().height;
    let newest = height - height % 8;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while metric(node, "bftd_snapshot_height") < newest as f64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot at {newest} within 30 s (newest {}, {} taken)",
            metric(node, "bftd_snapshot_height"),
            metric(node, "bftd_snapshots_taken_total")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    newest
}

fn metric(node: &NodeHandle, name: &str) -> f64 {
    node.render_metrics()
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_behind_pruned_blocks_is_restored_from_a_certified_snapshot() {
    let _one = ONE_AT_A_TIME.lock().await;
    if std::env::var_os("RUST_LOG").is_some() {
        bftd::init_logging(bftd::config::LogFormat::Human);
    }
    let (cluster, seen, mut nodes) = start_all(NODE_FILE).await;
    submit(&cluster, 0, 3, "early").await;
    let node3 = nodes[3].take().unwrap();
    let left_at = node3.status().height;
    node3.shutdown().await;

    // 60 blocks without node 3: every peer prunes the block node 3 needs
    // next (more blocks if a checkpoint has not pruned it yet; pruning
    // also waits for each peer's own application, §48's hold).
    submit(&cluster, 0, 60, "while-down").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let first: Vec<u64> = nodes[..3]
            .iter()
            .map(|node| node.as_ref().unwrap().status().first_height)
            .collect();
        if first.iter().all(|&first| first > left_at + 1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the peers did not prune: first heights {first:?}"
        );
        submit(&cluster, 0, 8, "prune").await;
    }
    wait_for_snapshot(nodes[0].as_ref().unwrap()).await;
    // The peers restart too (their applications restore their own
    // snapshots): nothing they queued for node 3 while it was down, which
    // a reconnect would deliver and let it execute every height it
    // missed, survives. Node 3 must fetch, and everything it needs was
    // pruned.
    for (id, seen) in seen.iter().enumerate().take(3) {
        nodes[id].take().unwrap().shutdown().await;
        nodes[id] = Some(start(&cluster, id, seen).await);
    }
    // Node 0's snapshots are damaged on disk: every chunk it serves is
    // wrong, and the fetch must get each from another signer.
    let snapshots = cluster.path().join("data0/snapshots");
    for entry in std::fs::read_dir(&snapshots).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "state") {
            let mut bytes = std::fs::read(&path).unwrap();
            for byte in bytes.iter_mut().step_by(4096) {
                *byte ^= 0xff;
            }
            std::fs::write(&path, bytes).unwrap();
        }
    }

    // Node 3 comes back with a new application, fed from height 1.
    let restarted: Arc<Mutex<Seen>> = Arc::default();
    let started = std::time::Instant::now();
    nodes[3] = Some(start(&cluster, 3, &restarted).await);
    let node3 = nodes[3].as_ref().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while restarted.lock().unwrap().restored.is_empty() {
        if tokio::time::Instant::now() >= deadline {
            let node3_metrics: Vec<String> = node3
                .render_metrics()
                .lines()
                .filter(|line| !line.starts_with('#'))
                .filter(|line| ["fetch", "jump", "height"].iter().any(|w| line.contains(w)))
                .map(str::to_owned)
                .collect();
            panic!(
                "node 3's application was not restored within 60 s (states up to {:?}; first heights {:?}, applications at {:?}); node 3: {}",
                restarted.lock().unwrap().states.keys().next_back(),
                nodes.iter().flatten().map(|node| node.status().first_height).collect::<Vec<_>>(),
                seen.iter().map(|seen| seen.lock().unwrap().states.keys().next_back().copied()).collect::<Vec<_>>(),
                node3_metrics.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let restored_at = restarted.lock().unwrap().restored[0];
    eprintln!(
        "node 3's application restored at height {restored_at} from a {} byte snapshot {:.2} s after its start",
        filler() + 40,
        started.elapsed().as_secs_f64()
    );
    assert!(
        restored_at > left_at,
        "restored past the pruned blocks, at {restored_at}"
    );
    assert_eq!(
        state_at(&restarted, restored_at, "node 3").await,
        state_at(&seen[1], restored_at, "node 1").await,
        "the restored state is the one the honest applications computed"
    );
    assert!(
        metric(node3, "bftd_snapshot_fetches_failed_total") >= 1.0,
        "node 0's damaged chunks were refused"
    );

    // It goes on from there with everyone: new blocks reach its
    // application, and its state stays the others'.
    submit(&cluster, 3, 10, "after").await;
    let head = nodes[1].as_ref().unwrap().status().height;
    assert_eq!(
        state_at(&restarted, head, "node 3").await,
        state_at(&seen[1], head, "node 1").await,
        "node 3's application agrees at height {head}"
    );

    // Restarted again, with another new application: node 3's own store
    // pruned below what it needs, and its own snapshot restores it.
    nodes[3].take().unwrap().shutdown().await;
    let again: Arc<Mutex<Seen>> = Arc::default();
    nodes[3] = Some(start(&cluster, 3, &again).await);
    submit(&cluster, 2, 3, "last").await;
    let head = nodes[1].as_ref().unwrap().status().height;
    assert_eq!(
        state_at(&again, head, "node 3 after its restart").await,
        state_at(&seen[1], head, "node 1").await,
    );
    assert_eq!(
        again.lock().unwrap().restored.len(),
        1,
        "restored once, from its own snapshot"
    );
    assert_eq!(
        metric(
            nodes[3].as_ref().unwrap(),
            "bftd_snapshot_fetches_failed_total"
        ),
        0.0,
        "nothing fetched from peers"
    );
    for node in nodes.into_iter().flatten() {
        node.shutdown().await;
    }
}

/// A new application on a node that keeps every block starts from the
/// node's newest snapshot instead of replaying the history: it is fed only
/// the blocks after it, and reaches the others' state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_application_starts_from_its_nodes_snapshot() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (cluster, seen, mut nodes) = start_all(KEEP_ALL).await;
    submit(&cluster, 1, 20, "tx").await;
    let head = nodes[0].as_ref().unwrap().status().height;
    let newest = wait_for_snapshot(nodes[0].as_ref().unwrap()).await;
    nodes[0].take().unwrap().shutdown().await;
    let again: Arc<Mutex<Seen>> = Arc::default();
    nodes[0] = Some(start(&cluster, 0, &again).await);
    assert_eq!(
        state_at(&again, head, "node 0 after its restart").await,
        state_at(&seen[1], head, "node 1").await
    );
    let (restored, first_state) = {
        let again = again.lock().unwrap();
        (again.restored.clone(), again.states.keys().next().copied())
    };
    assert_eq!(restored, vec![newest], "restored from its newest snapshot");
    assert_eq!(
        first_state,
        Some(newest),
        "no block at or below the snapshot was delivered"
    );
    for node in nodes.into_iter().flatten() {
        node.shutdown().await;
    }
}

/// An application that takes no snapshots, and stops at height 5 until
/// its gate opens (an application that fell behind: a long pause, a slow
/// disk), then goes on at 5 ms a block.
struct Stalled {
    fed: Arc<Mutex<Vec<u64>>>,
    gate: Arc<Gate>,
}

/// Closed until opened; a wait gives up after 60 s, so a failing test
/// does not hang on an application that never goes on.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: std::sync::Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    fn wait(&self) {
        let open = self.open.lock().unwrap();
        let _open = self
            .opened
            .wait_timeout_while(open, Duration::from_secs(60), |open| !*open)
            .unwrap();
    }
}

impl Application for Stalled {
    fn deliver(&mut self, block: &CommittedBlock, _duplicates: &[u32]) {
        if block.height().0 == 5 {
            // On the feeding task's blocking thread: waiting here holds
            // back only this application.
            self.gate.wait();
        }
        std::thread::sleep(Duration::from_millis(5));
        let mut heights = self.fed.lock().unwrap();
        assert_eq!(
            block.height().0,
            heights.last().copied().unwrap_or(0) + 1,
            "blocks in order, none missed"
        );
        heights.push(block.height().0);
    }
}

/// Retention waits for the node's own application (§48's hold): node 0's
/// application stops at height 5 while the cluster commits 80 blocks and
/// its peers prune far past it; node 0 keeps what it needs, and once the
/// application goes on it gets every block, with no snapshot to restore
/// from, and node 0 prunes like the others. Without the hold its next
/// block is pruned under it and it waits forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_waits_for_a_slow_application() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = TestCluster::configure_with(4, small_windows(), NODE_FILE);
    let fed: Arc<Mutex<Vec<u64>>> = Arc::default();
    let gate: Arc<Gate> = Arc::default();
    let mut nodes = Vec::new();
    for id in 0..4 {
        cluster.init(id);
        let config = NodeConfig::load(&cluster.node_file(id)).unwrap();
        let application: Option<(Box<dyn Application>, SeqNum)> = (id == 0).then(|| {
            let stalled = Stalled {
                fed: fed.clone(),
                gate: gate.clone(),
            };
            (Box::new(stalled) as Box<dyn Application>, SeqNum(1))
        });
        nodes.push(bftd::start(config, application).await.unwrap());
    }
    submit(&cluster, 1, 80, "fast").await;
    let head = nodes[1].status().height;
    // The peers prune far past where node 0's application stopped; node 0
    // keeps its next block.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while nodes[1].status().first_height <= 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 1 did not prune (keeps from {})",
            nodes[1].status().first_height
        );
        submit(&cluster, 1, 8, "prune").await;
    }
    let head = head.max(nodes[1].status().height);
    assert_eq!(fed.lock().unwrap().last().copied(), Some(4), "stopped at 5");
    let first = nodes[0].status().first_height;
    assert!(
        first <= 5,
        "node 0 pruned height 5 before its application was fed it (store from {first}; node 1 from {})",
        nodes[1].status().first_height
    );
    gate.open();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let applied = fed.lock().unwrap().last().copied().unwrap_or(0);
        if applied >= head {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 0's application reached only {applied} of {head} within 60 s (node 0's store from {}, {} read errors)",
            nodes[0].status().first_height,
            metric(&nodes[0], "bftd_application_read_errors_total")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        metric(&nodes[0], "bftd_application_height") >= head as f64,
        "the gauge follows the application"
    );
    // Caught up, it lets node 0 prune like the others.
    submit(&cluster, 1, 24, "more").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while nodes[0].status().first_height <= 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 0 never pruned once its application caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for node in nodes {
        node.shutdown().await;
    }
}

//! `bftnet check`: the safety check of a real testnet.
//!
//! Reads every honest node's log from height 1 — through the client API
//! while the node runs, from its store while it is down — verifying every
//! block's commit certificate with the cluster's public keys and the hash
//! chain, then compares the logs: at every height two honest nodes both
//! hold, they must hold the same block (prefix consistency), and no
//! `(client, request id)` may be executed twice (positions a block lists as
//! duplicates are skipped, as the node skips them).

use super::error::NetError;
use super::launch::node_alive;
use super::layout::{Layout, State};
use bftd::client::Client;
use bftd::config::Cluster;
use bftd::storage::DiskStorage;
use bftd_crypto::{Digest, KeyPair};
use bftd_protocol::{CommittedBlock, NodeId, SeqNum};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// No block for this long while reading a live node's log: give up on it.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// One node's log as read.
#[derive(Clone, Debug, Serialize)]
pub struct NodeLog {
    /// The node.
    pub id: u16,
    /// "live" (client API) or "store" (the node is down).
    pub source: &'static str,
    /// Blocks read (heights 1..=height).
    pub height: u64,
    /// Requests executed (duplicates skipped).
    pub requests: u64,
    /// Why the log could not be read completely, or a verification failure.
    pub error: Option<String>,
    /// Block hashes, by height - 1.
    #[serde(skip)]
    pub hashes: Vec<Digest>,
}

/// Nodes holding one block at the divergent height.
#[derive(Clone, Debug, Serialize)]
pub struct Fork {
    /// The block hash.
    pub hash: String,
    /// Nodes holding it.
    pub nodes: Vec<u16>,
}

/// The check's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// Every honest node's log.
    pub nodes: Vec<NodeLog>,
    /// Heights held by at least two honest nodes, all compared.
    pub common_height: u64,
    /// The first height where honest nodes hold different blocks.
    pub divergent_height: Option<u64>,
    /// Who holds what there.
    pub forks: Vec<Fork>,
    /// Requests executed twice: "node N: client C request R at heights A and B".
    pub double_executions: Vec<String>,
}

impl CheckReport {
    /// Whether every property holds.
    pub fn ok(&self) -> bool {
        self.divergent_height.is_none()
            && self.double_executions.is_empty()
            && self.nodes.iter().all(|node| node.error.is_none())
            && !self.nodes.is_empty()
    }

    /// The one-line summary, or the report of what failed.
    pub fn render(&self) -> String {
        let heights = self
            .nodes
            .iter()
            .map(|node| format!("{}:{}", node.id, node.height))
            .collect::<Vec<_>>()
            .join(" ");
        if self.ok() && self.nodes.iter().all(|node| node.height == 0) {
            return format!(
                "ok: no blocks committed yet ({} honest nodes read)",
                self.nodes.len()
            );
        }
        if self.ok() {
            let requests = self.nodes.iter().map(|n| n.requests).max().unwrap_or(0);
            return format!(
                "ok: {} honest nodes agree on heights 1..={} (heights {heights}); every certificate and hash link verified; {requests} requests, none executed twice",
                self.nodes.len(),
                self.common_height,
            );
        }
        let mut out = Vec::new();
        if let Some(height) = self.divergent_height {
            out.push(format!(
                "FORK at height {height}: honest nodes committed different blocks"
            ));
            for fork in &self.forks {
                let nodes = fork
                    .nodes
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                out.push(format!("  block {} held by node(s) {nodes}", fork.hash));
            }
            out.push("  (more byzantine nodes than f? `bftnet status` shows who lies)".into());
        }
        for node in &self.nodes {
            if let Some(error) = &node.error {
                out.push(format!("node {} ({}): {error}", node.id, node.source));
            }
        }
        for double in &self.double_executions {
            out.push(format!("executed twice: {double}"));
        }
        if self.nodes.is_empty() {
            out.push("no honest node to check".into());
        }
        out.push(format!("heights read: {heights}"));
        format!("FAILED\n{}", out.join("\n"))
    }
}

/// Tracks what one node's log executed.
struct Reader {
    log: NodeLog,
    executed: HashMap<(bftd_crypto::PublicKey, u64), u64>,
    doubles: Vec<String>,
}

impl Reader {
    fn new(id: u16, source: &'static str) -> Reader {
        Reader {
            log: NodeLog {
                id,
                source,
                height: 0,
                requests: 0,
                error: None,
                hashes: Vec::new(),
            },
            executed: HashMap::new(),
            doubles: Vec::new(),
        }
    }

    fn add(&mut self, block: &CommittedBlock, duplicates: &[u32], hash: Digest) {
        let height = block.height().0;
        for (position, request) in block.block.batch.requests.iter().enumerate() {
            if duplicates.contains(&(position as u32)) {
                continue;
            }
            let key = (request.request.client, request.request.request_id);
            if let Some(first) = self.executed.insert(key, height) {
                if self.doubles.len() < 10 {
                    self.doubles.push(format!(
                        "node {}: client {} request {} at heights {first} and {height}",
                        self.log.id,
                        request.request.client.short(),
                        request.request.request_id
                    ));
                }
            }
            self.log.requests += 1;
        }
        self.log.hashes.push(hash);
        self.log.height = height;
    }
}

/// Reads a running node's log through the client API.
async fn read_live(cluster: &Cluster, id: u16) -> Reader {
    let mut reader = Reader::new(id, "live");
    let key = KeyPair::generate(&mut rand::rngs::OsRng);
    let client = match Client::connect(cluster, NodeId(id), key).await {
        Ok(client) => client,
        Err(error) => {
            reader.log.error = Some(format!("cannot connect: {error}"));
            return reader;
        }
    };
    let target = match client.status().await {
        Ok(status) => status.height,
        Err(error) => {
            reader.log.error = Some(format!("no status: {error}"));
            return reader;
        }
    };
    if target == 0 {
        return reader;
    }
    let mut blocks = match client.subscribe(SeqNum(1)).await {
        Ok(blocks) => blocks,
        Err(error) => {
            reader.log.error = Some(format!("cannot subscribe: {error}"));
            return reader;
        }
    };
    while reader.log.height < target {
        match tokio::time::timeout(BLOCK_TIMEOUT, blocks.next()).await {
            Ok(Ok(Some(block))) => reader.add(&block.block, &block.duplicates, block.hash),
            Ok(Ok(None)) => {
                reader.log.error = Some(format!("disconnected after height {}", reader.log.height));
                break;
            }
            Ok(Err(error)) => {
                reader.log.error = Some(format!(
                    "block {} does not verify: {error}",
                    reader.log.height + 1
                ));
                break;
            }
            Err(_) => {
                reader.log.error = Some(format!(
                    "no block {} within {BLOCK_TIMEOUT:?}",
                    reader.log.height + 1
                ));
                break;
            }
        }
    }
    reader
}

/// Reads a stopped node's log from its store, verifying as a client would.
fn read_store(layout: &Layout, cluster: &Cluster, id: u16) -> Reader {
    let mut reader = Reader::new(id, "store");
    let path = layout.data_dir(id).join("bftd.redb");
    if !path.exists() {
        return reader; // never started: an empty log
    }
    let storage = match DiskStorage::open(&path) {
        Ok(storage) => storage,
        Err(error) => {
            reader.log.error = Some(format!("cannot open {}: {error}", path.display()));
            return reader;
        }
    };
    let mut prev = Digest::ZERO;
    let mut next = SeqNum(1);
    loop {
        let blocks = match storage.blocks_from(next, 256) {
            Ok(blocks) => blocks,
            Err(error) => {
                reader.log.error = Some(format!("cannot read {}: {error}", path.display()));
                return reader;
            }
        };
        if blocks.is_empty() {
            return reader;
        }
        for (block, duplicates) in blocks {
            if block.height() != next {
                reader.log.error = Some(format!(
                    "store skips from height {} to {}",
                    next.0,
                    block.height().0
                ));
                return reader;
            }
            if let Err(error) = block.verify(&cluster.committee, prev) {
                reader.log.error = Some(format!("block {} does not verify: {error}", next.0));
                return reader;
            }
            prev = block.hash();
            reader.add(&block, &duplicates, prev);
            next = next.next();
        }
    }
}

/// Runs the check on the testnet in `layout`.
pub async fn run(layout: &Layout, state: &State) -> Result<CheckReport, NetError> {
    let cluster = Cluster::load(&layout.cluster())?;
    let mut nodes = Vec::new();
    let mut doubles = Vec::new();
    for node in state.nodes.iter().filter(|node| node.honest()) {
        let reader = if node_alive(layout, state, node.id) {
            read_live(&cluster, node.id).await
        } else {
            let layout = layout.clone();
            let cluster = cluster.clone();
            let id = node.id;
            tokio::task::spawn_blocking(move || read_store(&layout, &cluster, id))
                .await
                .unwrap_or_else(|_| Reader::new(id, "store"))
        };
        doubles.extend(reader.doubles);
        nodes.push(reader.log);
    }
    Ok(compare(nodes, doubles))
}

/// Runs the check on every node of `cluster`, each over the client API
/// (any cluster: no testnet directory, no stores to fall back on; a node
/// that does not answer is reported and fails the check).
pub async fn run_cluster(cluster: &Cluster) -> CheckReport {
    let mut nodes = Vec::new();
    let mut doubles = Vec::new();
    for id in 0..cluster.committee.n() as u16 {
        let reader = read_live(cluster, id).await;
        doubles.extend(reader.doubles);
        nodes.push(reader.log);
    }
    compare(nodes, doubles)
}

/// Compares the logs height by height.
fn compare(nodes: Vec<NodeLog>, double_executions: Vec<String>) -> CheckReport {
    let longest = nodes
        .iter()
        .map(|node| node.hashes.len())
        .max()
        .unwrap_or(0);
    let mut common_height = 0;
    let mut divergent_height = None;
    let mut forks = Vec::new();
    for index in 0..longest {
        let mut holders: BTreeMap<Digest, Vec<u16>> = BTreeMap::new();
        for node in &nodes {
            if let Some(hash) = node.hashes.get(index) {
                holders.entry(*hash).or_default().push(node.id);
            }
        }
        if holders.len() > 1 {
            divergent_height = Some(index as u64 + 1);
            forks = holders
                .into_iter()
                .map(|(hash, nodes)| Fork {
                    hash: hash.to_string(),
                    nodes,
                })
                .collect();
            break;
        }
        if holders.values().next().is_some_and(|held| held.len() >= 2) {
            common_height = index as u64 + 1;
        }
    }
    CheckReport {
        nodes,
        common_height,
        divergent_height,
        forks,
        double_executions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(id: u16, hashes: &[u8]) -> NodeLog {
        NodeLog {
            id,
            source: "live",
            height: hashes.len() as u64,
            requests: 0,
            error: None,
            hashes: hashes.iter().map(|b| Digest([*b; 32])).collect(),
        }
    }

    /// Prefix-consistent logs pass; the first differing height is reported
    /// with who holds which block.
    #[test]
    fn prefix_consistency() {
        let report = compare(
            vec![log(0, &[1, 2, 3]), log(1, &[1, 2]), log(2, &[1, 2, 3])],
            Vec::new(),
        );
        assert!(report.ok(), "{}", report.render());
        assert_eq!(report.common_height, 3);
        let report = compare(
            vec![log(0, &[1, 2, 3]), log(1, &[1, 9]), log(2, &[1, 2])],
            Vec::new(),
        );
        assert!(!report.ok());
        assert_eq!(report.divergent_height, Some(2));
        assert_eq!(report.forks.len(), 2);
        assert!(
            report.render().contains("FORK at height 2"),
            "{}",
            report.render()
        );
    }
}

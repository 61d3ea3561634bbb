//! Configuration: a node file (who am I, where are my key and data) and a
//! cluster file (every node's id, address and public key), both TOML,
//! validated at start with errors that say what to fix.
//!
//! ```toml
//! # node.toml
//! id = 0
//! key_file = "node0.key"          # relative paths are relative to this file
//! cluster_file = "cluster.toml"
//! data_dir = "data/node0"
//! listen = "127.0.0.1:7000"       # optional: defaults to this node's cluster address
//! metrics = "127.0.0.1:9100"      # optional: Prometheus /metrics, /status, /healthz
//! log_format = "human"            # or "json"
//!
//! [protocol]                      # optional: every field has a default
//! request_mode = "client-signed"  # or "connection-authenticated"
//! max_batch_requests = 1000
//!
//! [grpc]                          # optional: the gRPC API (docs/client-protocol.md §9)
//! listen = "127.0.0.1:50051"
//! ```
//!
//! ```toml
//! # cluster.toml
//! [[node]]
//! id = 0
//! address = "127.0.0.1:7000"
//! public_key = "3b6a27bc..."
//! grpc = "127.0.0.1:50051"        # optional: where clients find its gRPC API
//! ```

use bftd_crypto::{KeyPair, PublicKey};
use bftd_protocol::{
    Committee, CommitteeError, Config as ProtocolConfig, ConfigError, ConsensusSettings, NodeId,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why a configuration could not be loaded. Each variant names the file and
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not valid TOML for its schema.
    #[error("{path} is not a valid {what}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// "node config" or "cluster file".
        what: &'static str,
        /// The parser's message, with line and column.
        source: Box<toml::de::Error>,
    },
    /// A key file does not hold a bftd secret key.
    #[error("{path} does not hold a bftd secret key ({source}); create one with `bftd keygen --out {path}`")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        source: bftd_crypto::KeyTextError,
    },
    /// A public key in the cluster file is malformed.
    #[error("{path}: node {id} has a malformed public_key ({source})")]
    BadPublicKey {
        /// The cluster file.
        path: PathBuf,
        /// The node.
        id: u16,
        /// What is wrong.
        source: bftd_crypto::KeyTextError,
    },
    /// Node ids must be 0..n, each once.
    #[error("{path}: node ids must be 0, 1, ..., n-1, each exactly once; found {ids:?}")]
    BadIds {
        /// The cluster file.
        path: PathBuf,
        /// The ids found, in file order.
        ids: Vec<u16>,
    },
    /// Two nodes share an address.
    #[error("{path}: nodes {first} and {second} have the same address {address}")]
    DuplicateAddress {
        /// The cluster file.
        path: PathBuf,
        /// First node.
        first: u16,
        /// Second node.
        second: u16,
        /// The address.
        address: SocketAddr,
    },
    /// The committee is invalid (size, duplicate keys).
    #[error("{path}: {source}")]
    Committee {
        /// The cluster file.
        path: PathBuf,
        /// What is wrong.
        source: CommitteeError,
    },
    /// This node's id is not in the cluster file.
    #[error("node id {id} is not in {path}")]
    UnknownId {
        /// The id.
        id: u16,
        /// The cluster file.
        path: PathBuf,
    },
    /// The key file does not hold this node's key.
    #[error("{key_file} holds key {found:#}, but {cluster_file} says node {id} has {expected:#}: wrong key file, or a stale cluster file")]
    KeyMismatch {
        /// The node.
        id: u16,
        /// The key file.
        key_file: PathBuf,
        /// The cluster file.
        cluster_file: PathBuf,
        /// The key in the cluster file.
        expected: PublicKey,
        /// The key in the key file.
        found: PublicKey,
    },
    /// The protocol section is invalid.
    #[error("[protocol] in {path}: {source}")]
    Protocol {
        /// The node config.
        path: PathBuf,
        /// What is wrong.
        source: ConfigError,
    },
    /// A node file sets a consensus setting, which must be the same on every
    /// node and so belongs in the cluster file.
    #[error("{path}: [protocol] {setting} decides what executes and must be the same on every node: set it in the cluster file's [protocol] section instead")]
    ConsensusSettingInNodeFile {
        /// The node config.
        path: PathBuf,
        /// The setting.
        setting: &'static str,
    },
    /// The connections section is invalid.
    #[error(
        "[connections] in {path}: {source} (see the README's node file reference for the defaults)"
    )]
    Connections {
        /// The node config.
        path: PathBuf,
        /// What is wrong.
        source: crate::transport::ConfigError,
    },
    /// A file the node file names cannot be loaded: names the node file
    /// and the field that names it.
    #[error("{node_file}: {field} = \"{value}\": {source}")]
    Referenced {
        /// The node file.
        node_file: PathBuf,
        /// The field ("key_file", "cluster_file").
        field: &'static str,
        /// The value as written in the node file.
        value: String,
        /// Why it could not be loaded.
        source: Box<LoadError>,
    },
    /// The peers section is invalid.
    #[error("[peers] in {path}: {reason}")]
    Peers {
        /// The node config.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The storage section is invalid.
    #[error("[storage] in {path}: {reason}")]
    Storage {
        /// The node config.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// `[runtime] worker_threads` is more than any machine needs.
    #[error("[runtime] in {path}: worker_threads = {worker_threads} is more than {MAX_WORKER_THREADS}; use 0 for one thread per core, or the number of cores this node may use")]
    TooManyThreads {
        path: PathBuf,
        worker_threads: usize,
    },
    /// `[storage] retain_blocks` would prune blocks at-most-once needs.
    #[error("[storage] in {path}: retain_blocks = {retain_blocks} must be greater than the cluster's request_lifetime ({request_lifetime}): a request is remembered as executed for request_lifetime heights, so that a replay of it is answered with its receipt instead of executing twice, and a restarting node reads those heights' blocks back; keep at least request_lifetime + 1 blocks, or remove retain_blocks to keep every block")]
    RetainTooFew {
        /// The node file.
        path: PathBuf,
        /// The value set.
        retain_blocks: u64,
        /// The cluster's request lifetime.
        request_lifetime: u64,
    },
    /// The clients section is invalid.
    #[error("[clients] in {path}: {reason}")]
    Clients {
        /// The node config.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

/// One node of the cluster, as in the cluster file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterNode {
    /// Node id: 0..n.
    pub id: u16,
    /// Where it listens (peers and clients).
    pub address: SocketAddr,
    /// Its Ed25519 public key, 64 hex digits.
    pub public_key: String,
    /// Where it serves gRPC (`host:port`), if it does: for clients to find
    /// it (docs/client-protocol.md section 9). Nodes do not use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<String>,
}

/// The cluster file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// The settings every node must share (`[protocol]`; defaults if
    /// absent). Before the nodes, as TOML wants tables before arrays.
    #[serde(default)]
    pub protocol: ConsensusSettings,
    /// The nodes.
    #[serde(rename = "node")]
    pub nodes: Vec<ClusterNode>,
}

/// A validated cluster: the committee and every node's address.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// The committee (keys in id order).
    pub committee: Committee,
    /// Addresses, indexed by node id.
    pub addresses: Vec<SocketAddr>,
    /// The settings every node shares: clients trust these (the request
    /// mode, the request lifetime), not what a node says.
    pub protocol: ConsensusSettings,
}

impl Cluster {
    /// Reads and validates a cluster file.
    pub fn load(path: &Path) -> Result<Cluster, LoadError> {
        let text = read(path)?;
        Cluster::parse(&text, path)
    }

    /// Parses and validates the text of a cluster file (`path` is only for
    /// messages).
    pub fn parse(text: &str, path: &Path) -> Result<Cluster, LoadError> {
        let file: ClusterFile = toml::from_str(text).map_err(|source| LoadError::Parse {
            path: path.to_owned(),
            what: "cluster file",
            source: Box::new(source),
        })?;
        Cluster::from_file(&file, path)
    }

    /// Validates a parsed cluster file (`path` is only for messages).
    pub fn from_file(file: &ClusterFile, path: &Path) -> Result<Cluster, LoadError> {
        let mut nodes = file.nodes.clone();
        let ids: Vec<u16> = nodes.iter().map(|node| node.id).collect();
        nodes.sort_by_key(|node| node.id);
        let contiguous = nodes
            .iter()
            .enumerate()
            .all(|(index, node)| usize::from(node.id) == index);
        if !contiguous {
            return Err(LoadError::BadIds {
                path: path.to_owned(),
                ids,
            });
        }
        let mut keys = Vec::with_capacity(nodes.len());
        for node in &nodes {
            let key: PublicKey =
                node.public_key
                    .parse()
                    .map_err(|source| LoadError::BadPublicKey {
                        path: path.to_owned(),
                        id: node.id,
                        source,
                    })?;
            keys.push(key);
        }
        let mut seen = BTreeSet::new();
        for node in &nodes {
            if !seen.insert(node.address) {
                let first = nodes
                    .iter()
                    .find(|other| other.address == node.address)
                    .map_or(0, |other| other.id);
                return Err(LoadError::DuplicateAddress {
                    path: path.to_owned(),
                    first,
                    second: node.id,
                    address: node.address,
                });
            }
        }
        let committee = Committee::new(&keys).map_err(|source| LoadError::Committee {
            path: path.to_owned(),
            source,
        })?;
        file.protocol
            .apply(ProtocolConfig::default())
            .validate()
            .map_err(|source| LoadError::Protocol {
                path: path.to_owned(),
                source,
            })?;
        Ok(Cluster {
            committee,
            addresses: nodes.iter().map(|node| node.address).collect(),
            protocol: file.protocol,
        })
    }

    /// The address of node `id`.
    pub fn address(&self, id: NodeId) -> Option<SocketAddr> {
        self.addresses.get(id.index()).copied()
    }

    /// The cluster as a file.
    pub fn to_file(&self) -> ClusterFile {
        ClusterFile {
            protocol: self.protocol,
            nodes: self
                .committee
                .public_keys()
                .iter()
                .zip(&self.addresses)
                .enumerate()
                .map(|(id, (key, address))| ClusterNode {
                    id: id as u16,
                    address: *address,
                    public_key: key.to_string(),
                    grpc: None,
                })
                .collect(),
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// The node config file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// This node's id in the cluster file.
    pub id: u16,
    /// The secret key file (from `bftd keygen`).
    pub key_file: PathBuf,
    /// The cluster file.
    pub cluster_file: PathBuf,
    /// Where the node keeps its store.
    pub data_dir: PathBuf,
    /// Listen address; defaults to this node's address in the cluster file.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// HTTP address for /metrics, /status and /healthz; none if absent.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Log format.
    #[serde(default)]
    pub log_format: LogFormat,
    /// A byzantine behaviour, for testnets only: `bftd` refuses it; the
    /// testnets' `bftd-byzantine` binary runs it.
    #[serde(default)]
    pub byzantine: Option<String>,
    /// For `byzantine = "collude"`: every colluding node's id (this one
    /// included), so each derives the same fork without talking.
    #[serde(default)]
    pub colluders: Vec<u16>,
    /// Protocol parameters.
    #[serde(default)]
    pub protocol: ProtocolConfig,
    /// Client connections.
    #[serde(default)]
    pub clients: ClientsConfig,
    /// Handshake and connection slots.
    #[serde(default)]
    pub connections: ConnectionsConfig,
    /// What peers may make this node do for them.
    #[serde(default)]
    pub peers: PeersConfig,
    /// What the store keeps.
    #[serde(default)]
    pub storage: StorageConfig,
    /// The gRPC API (`[grpc] listen = "127.0.0.1:PORT"`); off if absent.
    #[serde(default)]
    pub grpc: Option<GrpcConfig>,
    /// The async runtime's threads.
    #[serde(default)]
    pub runtime: RuntimeConfig,
}

/// The most `[runtime] worker_threads` a node file may ask for.
pub const MAX_WORKER_THREADS: usize = 1024;

/// The `[runtime]` section of a node file. Node-local.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Threads that run the node's async tasks (consensus, transport,
    /// clients); signature checks and store writes have threads of their
    /// own besides. 0 (default): one per core. Set it when several nodes
    /// share a machine's cores: one thread per node gave lower latency and
    /// more throughput than one per core with four nodes on two cores
    /// (design notes §44), and `bftnet` writes it for its local testnets.
    pub worker_threads: usize,
}

/// The `[storage]` section of a node file. Node-local.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Blocks kept below the stable checkpoint: each new stable checkpoint
    /// `s` prunes the blocks below `s - retain_blocks` (never one above the
    /// checkpoint). Must be greater than the cluster's `request_lifetime`:
    /// at-most-once is checked against the requests executed in the last
    /// `request_lifetime` heights, which a restart reads back from the
    /// store. Absent: every block is kept. A peer asking for a pruned
    /// height, and `bftd tail --from` one, are told the oldest kept height.
    /// A block the node's embedded application has yet to be fed is never
    /// pruned (design notes §48).
    pub retain_blocks: Option<u64>,
    /// An embedded application that takes snapshots (design notes §48)
    /// takes one after every height that is a multiple of this; the node
    /// keeps the last two and serves them to peers whose application must
    /// be restored. Nodes restore only a snapshot f+1 of them signed, so
    /// give every node the same value. Default 256 (four checkpoint
    /// intervals of the default cluster); with `retain_blocks`, keep it
    /// well below `retain_blocks - request_lifetime`, so a node that jumps
    /// past pruned blocks finds a snapshot soon.
    pub snapshot_every: u64,
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            retain_blocks: None,
            snapshot_every: 256,
        }
    }
}

/// The `[grpc]` section of a node file: serve the gRPC client API
/// (proto/bftd.proto) on `listen`, plaintext HTTP/2, client-signed requests
/// only (docs/client-protocol.md section 9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// The TCP address to listen on (loopback unless clients are remote).
    pub listen: SocketAddr,
}

/// The `[connections]` section of a node file: how many connections and
/// handshakes the node holds, and from one address (design notes §25).
/// Node-local: nodes of one cluster may differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Incoming handshakes in progress at once; more attempts are refused.
    /// Default 64.
    pub max_handshakes: usize,
    /// Handshakes in progress before an attempt from an address that has
    /// not proven it receives our packets is answered with a QUIC Retry
    /// (one more round trip; forged-address floods then hold at most this
    /// many slots). 0: always Retry; `max_handshakes`: never. Default 32.
    pub handshakes_before_retry: usize,
    /// Validated handshakes in progress from one IP address. Default 16.
    pub max_handshakes_per_address: usize,
    /// Client connections open at once. Default 1024.
    pub max_client_connections: usize,
    /// Client connections open at once from one IP address. On a local
    /// testnet every client shares 127.0.0.1: raise it for benchmarks with
    /// more than 256 clients per node. Default 256.
    pub max_clients_per_address: usize,
    /// A client connection that sends nothing (no request, subscription or
    /// status query) for this long, and is not receiving a subscription's
    /// blocks, is closed with a reason it can read. QUIC keep-alives do not
    /// count. Default 60000.
    pub client_idle_timeout_ms: u64,
}

impl Default for ConnectionsConfig {
    fn default() -> ConnectionsConfig {
        let limits = crate::transport::ConnectionLimits::default();
        ConnectionsConfig {
            max_handshakes: limits.max_handshakes,
            handshakes_before_retry: limits.handshakes_before_retry,
            max_handshakes_per_address: limits.max_handshakes_per_address,
            max_client_connections: limits.max_client_connections,
            max_clients_per_address: limits.max_clients_per_address,
            client_idle_timeout_ms: limits.client_idle_timeout.as_millis() as u64,
        }
    }
}

impl ConnectionsConfig {
    /// The transport's limits, checked.
    pub fn limits(
        &self,
    ) -> Result<crate::transport::ConnectionLimits, crate::transport::ConfigError> {
        if self.client_idle_timeout_ms == 0 {
            return Err(crate::transport::ConfigError::Zero {
                field: "client_idle_timeout_ms",
            });
        }
        let limits = crate::transport::ConnectionLimits {
            max_handshakes: self.max_handshakes,
            handshakes_before_retry: self.handshakes_before_retry,
            max_handshakes_per_address: self.max_handshakes_per_address,
            max_client_connections: self.max_client_connections,
            max_clients_per_address: self.max_clients_per_address,
            client_idle_timeout: std::time::Duration::from_millis(self.client_idle_timeout_ms),
        };
        limits.validate()?;
        Ok(limits)
    }
}

/// The `[peers]` section of a node file: this node's own limits on work
/// for its peers (not consensus settings: nodes may differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeersConfig {
    /// Bytes of blocks (each request's payload plus 128) served per second
    /// to one peer's state-transfer fetches; fetches beyond it are refused
    /// and counted (`bftd_fetches_refused_total{reason="rate"}`), and the
    /// fetcher asks again after its fetch timeout. Default 64 MiB/s: a
    /// node catching up from one peer gets 64 MiB of blocks a second,
    /// about 290 blocks of 1,000 100-byte requests.
    pub fetch_bytes_per_second: u64,
    /// How much of that rate a peer may save up while it fetches nothing.
    /// Default 16 MiB (one whole answer).
    pub fetch_burst_bytes: u64,
}

impl Default for PeersConfig {
    fn default() -> PeersConfig {
        PeersConfig {
            fetch_bytes_per_second: 64 * 1024 * 1024,
            fetch_burst_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The `[clients]` section of a node file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientsConfig {
    /// Replies (receipts, rejections, blocks) queued per client connection
    /// while the client is not reading; beyond it replies are dropped and
    /// counted (`bftd_replies_dropped_total`), so a slow client cannot grow
    /// the node's memory. A client that gets no answer resends its request
    /// and is answered again. Default 4096.
    pub reply_queue: usize,
    /// The same queue's bound in bytes (encoded replies, counted until
    /// written to the connection). A receipt that does not fit is dropped
    /// and counted as above; a subscription's next block waits for room
    /// (one block always fits in an empty queue). Default 4 MiB.
    pub reply_queue_bytes: usize,
    /// A subscriber whose queue stays full this long (it reads nothing, or
    /// too slowly to keep up) is ended with `SubscriptionEnded` and the
    /// reason, counted in `bftd_subscriptions_ended_total`; it may
    /// subscribe again from where it stopped. Default 10000.
    pub subscriber_stall_ms: u64,
    /// Store reads for subscribers running at once, over all connections
    /// (each connection runs at most one); more wait their turn. Default 4.
    pub subscription_reads: usize,
    /// Bytes of old blocks (more than a few heights behind the head) served
    /// to all subscribers together per second, with one second's worth
    /// saved up at most. Streaming history costs a node reads, encoding
    /// and encryption: without a bound, a few clients resubscribing from
    /// height 1 took the CPU consensus needed (the `cheap-expensive`
    /// attack). Subscribers following the head are not counted. Default
    /// 8 MiB (about 13,000 transactions of 512 bytes a second: catching up
    /// a million takes about 80 s); raise it where cores are plentiful.
    pub history_bytes_per_second: u64,
    /// How much of this node's clients' work may be in the cluster at once,
    /// in bytes of request weight: a request's payload plus 128, plus 2048
    /// in a client-signed cluster (a signature check every replica makes).
    /// A request holds its weight from the moment it is handed to consensus
    /// until its client is answered; when the window is full, connections
    /// wait their turn, one request each, and read nothing meanwhile. So a
    /// client keeping thousands of requests unanswered queues them at this
    /// node, where the others pass them, instead of in front of everyone
    /// in the cluster, and the node checks no signature of a request it has
    /// no room for. Default 2 MiB: about 3,300 connection-authenticated
    /// requests of 512 bytes, or 780 client-signed ones. Smaller cuts
    /// the time an admitted request waits behind others (Little's law:
    /// what is in flight divided by the commit rate), but blocks get
    /// smaller and dearer: 1 MiB cost 7 % of client-signed throughput on
    /// two cores (design notes §46); larger only adds waiting.
    pub in_flight_bytes: usize,
}

/// Largest `[clients] reply_queue`: beyond it one slow client could hold
/// a lot of memory (and a value near `usize::MAX` would make every client
/// connection panic).
pub const MAX_REPLY_QUEUE: usize = 65536;

impl Default for ClientsConfig {
    fn default() -> ClientsConfig {
        ClientsConfig {
            reply_queue: 4096,
            reply_queue_bytes: 4 * 1024 * 1024,
            subscriber_stall_ms: 10_000,
            subscription_reads: 4,
            history_bytes_per_second: 8 * 1024 * 1024,
            in_flight_bytes: 2 * 1024 * 1024,
        }
    }
}

/// Everything a node needs, loaded and validated.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node.
    pub id: NodeId,
    /// Its identity key.
    pub key: KeyPair,
    /// The cluster.
    pub cluster: Cluster,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its listen address.
    pub listen: SocketAddr,
    /// Its metrics address.
    pub metrics: Option<SocketAddr>,
    /// Log format.
    pub log_format: LogFormat,
    /// Byzantine behaviour (testnets).
    pub byzantine: Option<String>,
    /// Colluding nodes (testnets).
    pub colluders: Vec<NodeId>,
    /// Protocol parameters.
    pub protocol: ProtocolConfig,
    /// Client connections.
    pub clients: ClientsConfig,
    /// Handshake and connection slots.
    pub connections: crate::transport::ConnectionLimits,
    /// Work for peers.
    pub peers: PeersConfig,
    /// What the store keeps.
    pub storage: StorageConfig,
    /// The gRPC address, if the node serves gRPC.
    pub grpc: Option<SocketAddr>,
    /// The async runtime's threads.
    pub runtime: RuntimeConfig,
}

impl NodeConfig {
    /// Reads the node file, its key and its cluster file, and checks them
    /// against each other.
    pub fn load(path: &Path) -> Result<NodeConfig, LoadError> {
        let text = read(path)?;
        let file = NodeFile::parse(&text, path)?;
        let key_file = resolve(path, &file.key_file);
        let cluster_file = resolve(path, &file.cluster_file);
        let referenced = |field, value: &Path| {
            let value = value.display().to_string();
            move |source| LoadError::Referenced {
                node_file: path.to_owned(),
                field,
                value,
                source: Box::new(source),
            }
        };
        let key = read_key(&key_file).map_err(referenced("key_file", &file.key_file))?;
        let cluster =
            Cluster::load(&cluster_file).map_err(referenced("cluster_file", &file.cluster_file))?;
        NodeConfig::from_file(file, path, key, cluster)
    }

    /// Checks a parsed node file against its key and its cluster (`path`,
    /// the node file's, resolves the relative paths in it).
    pub fn from_file(
        file: NodeFile,
        path: &Path,
        key: KeyPair,
        cluster: Cluster,
    ) -> Result<NodeConfig, LoadError> {
        let key_file = resolve(path, &file.key_file);
        let cluster_file = resolve(path, &file.cluster_file);
        let id = NodeId(file.id);
        let expected =
            cluster
                .committee
                .key(id)
                .map(|key| key.public())
                .ok_or(LoadError::UnknownId {
                    id: file.id,
                    path: cluster_file.clone(),
                })?;
        if expected != key.public() {
            return Err(LoadError::KeyMismatch {
                id: file.id,
                key_file,
                cluster_file,
                expected,
                found: key.public(),
            });
        }
        // The node's own timing and bounds, with the cluster's consensus
        // settings (which the node file may not set).
        let protocol = cluster.protocol.apply(file.protocol.clone());
        protocol.validate().map_err(|source| LoadError::Protocol {
            path: path.to_owned(),
            source,
        })?;
        if !(1..=MAX_REPLY_QUEUE).contains(&file.clients.reply_queue) {
            return Err(LoadError::Clients {
                path: path.to_owned(),
                reason: "reply_queue must be from 1 to 65536 (the default is 4096)",
            });
        }
        if !(1024..=u32::MAX as usize).contains(&file.clients.reply_queue_bytes) {
            return Err(LoadError::Clients {
                path: path.to_owned(),
                reason:
                    "reply_queue_bytes must be between 1024 and 4294967295 (the default is 4194304)",
            });
        }
        if file.clients.subscriber_stall_ms == 0 {
            return Err(LoadError::Clients {
                path: path.to_owned(),
                reason: "subscriber_stall_ms must be at least 1 (the default is 10000)",
            });
        }
        let connections = file
            .connections
            .limits()
            .map_err(|source| LoadError::Connections {
                path: path.to_owned(),
                source,
            })?;
        if !(1..=1024).contains(&file.clients.subscription_reads) {
            return Err(LoadError::Clients {
                path: path.to_owned(),
                reason: "subscription_reads must be from 1 to 1024 (the default is 4)",
            });
        }
        if !(4096..=u32::MAX as usize).contains(&file.clients.in_flight_bytes) {
            return Err(LoadError::Clients {
                path: path.to_owned(),
                reason: "in_flight_bytes must be between 4096 and 4294967295 (the default is \
                         2097152)",
            });
        }
        if file.clients.history_bytes_per_second < 1024 {
            return Err(LoadError::Clients {
                path: path.to_owned(),
                reason: "history_bytes_per_second must be at least 1024: below it a subscriber \
                         that starts behind the head would never catch up (the default is 8388608)",
            });
        }
        if file.peers.fetch_bytes_per_second < 1024 {
            return Err(LoadError::Peers {
                path: path.to_owned(),
                reason: "fetch_bytes_per_second must be at least 1024: below it a node that fell \
                         behind cannot catch up (the default is 67108864)",
            });
        }
        if file.peers.fetch_burst_bytes < 1024 {
            return Err(LoadError::Peers {
                path: path.to_owned(),
                reason: "fetch_burst_bytes must be at least 1024 (the default is 16777216)",
            });
        }
        if file.storage.snapshot_every == 0 {
            return Err(LoadError::Storage {
                path: path.to_owned(),
                reason: "snapshot_every must be at least 1 (the default is 256)",
            });
        }
        if let Some(retain_blocks) = file.storage.retain_blocks {
            let request_lifetime = cluster.protocol.request_lifetime;
            if retain_blocks <= request_lifetime {
                return Err(LoadError::RetainTooFew {
                    path: path.to_owned(),
                    retain_blocks,
                    request_lifetime,
                });
            }
        }
        if file.runtime.worker_threads > MAX_WORKER_THREADS {
            return Err(LoadError::TooManyThreads {
                path: path.to_owned(),
                worker_threads: file.runtime.worker_threads,
            });
        }
        let listen = match file.listen {
            Some(listen) => listen,
            None => cluster.address(id).ok_or(LoadError::UnknownId {
                id: file.id,
                path: cluster_file,
            })?,
        };
        Ok(NodeConfig {
            id,
            key,
            cluster,
            data_dir: resolve(path, &file.data_dir),
            listen,
            metrics: file.metrics,
            log_format: file.log_format,
            byzantine: file.byzantine,
            colluders: file.colluders.iter().map(|&id| NodeId(id)).collect(),
            protocol,
            clients: file.clients,
            connections,
            peers: file.peers,
            storage: file.storage,
            grpc: file.grpc.map(|grpc| grpc.listen),
            runtime: file.runtime,
        })
    }
}

impl NodeFile {
    /// Parses the text of a node file, refusing consensus settings in its
    /// `[protocol]` (`path` is only for messages).
    pub fn parse(text: &str, path: &Path) -> Result<NodeFile, LoadError> {
        let file: NodeFile = toml::from_str(text).map_err(|source| LoadError::Parse {
            path: path.to_owned(),
            what: "node config",
            source: Box::new(source),
        })?;
        refuse_consensus_settings(text, path)?;
        Ok(file)
    }
}

/// `file` as named in the node file at `node_file`: relative paths are
/// relative to the node file's directory.
fn resolve(node_file: &Path, file: &Path) -> PathBuf {
    if file.is_absolute() {
        file.to_owned()
    } else {
        node_file.parent().unwrap_or(Path::new(".")).join(file)
    }
}

/// A node file's `[protocol]` may not set what must be the same on every
/// node (a node out of step would compute other executions silently).
fn refuse_consensus_settings(text: &str, path: &Path) -> Result<(), LoadError> {
    let Ok(table) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    let Some(protocol) = table.get("protocol").and_then(toml::Value::as_table) else {
        return Ok(());
    };
    match ConsensusSettings::NAMES
        .iter()
        .find(|name| protocol.contains_key(**name))
    {
        Some(setting) => Err(LoadError::ConsensusSettingInNodeFile {
            path: path.to_owned(),
            setting,
        }),
        None => Ok(()),
    }
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The environment variable client commands read the cluster file's path
/// from when no `--cluster` is given.
pub const CLUSTER_ENV: &str = "BFTD_CLUSTER";

/// The cluster file a client command uses: `--cluster` if given, else
/// `$BFTD_CLUSTER`, else `./cluster.toml` if there is one (a node
/// directory made by `bftnet init`), else `testnet-data/cluster.toml`
/// (`bftnet up`'s).
pub fn find_cluster_file(explicit: Option<&Path>) -> PathBuf {
    choose_cluster_file(
        explicit,
        std::env::var_os(CLUSTER_ENV),
        Path::new("cluster.toml").is_file(),
    )
}

fn choose_cluster_file(
    explicit: Option<&Path>,
    env: Option<std::ffi::OsString>,
    here: bool,
) -> PathBuf {
    match (explicit, env) {
        (Some(path), _) => path.to_owned(),
        (None, Some(path)) if !path.is_empty() => PathBuf::from(path),
        _ if here => PathBuf::from("cluster.toml"),
        _ => PathBuf::from("testnet-data/cluster.toml"),
    }
}

/// Reads a secret key file written by `bftd keygen`.
pub fn read_key(path: &Path) -> Result<KeyPair, LoadError> {
    let text = zeroize::Zeroizing::new(read(path)?);
    KeyPair::from_secret_text(&text).map_err(|source| LoadError::BadKey {
        path: path.to_owned(),
        source,
    })
}

/// Writes a new secret key file, readable only by its owner. Refuses to
/// overwrite an existing file.
pub fn write_key(path: &Path, key: &KeyPair) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(key.to_secret_text().as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster_file(n: usize) -> ClusterFile {
        ClusterFile {
            protocol: ConsensusSettings::default(),
            nodes: (0..n)
                .map(|i| ClusterNode {
                    id: i as u16,
                    address: format!("127.0.0.1:{}", 7000 + i).parse().unwrap(),
                    public_key: KeyPair::from_seed([i as u8 + 1; 32]).public().to_string(),
                    grpc: None,
                })
                .collect(),
        }
    }

    /// A cluster file round-trips through TOML; bad ids, duplicate addresses
    /// and wrong sizes are refused with errors naming the problem.
    #[test]
    fn cluster_validation() {
        let path = Path::new("cluster.toml");
        let file = cluster_file(4);
        let text = toml::to_string(&file).unwrap();
        let parsed: ClusterFile = toml::from_str(&text).unwrap();
        let cluster = Cluster::from_file(&parsed, path).unwrap();
        assert_eq!(cluster.committee.n(), 4);
        assert_eq!(cluster.to_file(), file);

        let mut gap = file.clone();
        gap.nodes[3].id = 7;
        assert!(matches!(
            Cluster::from_file(&gap, path),
            Err(LoadError::BadIds { .. })
        ));

        let mut same_address = file.clone();
        same_address.nodes[2].address = same_address.nodes[1].address;
        let error = Cluster::from_file(&same_address, path).unwrap_err();
        assert!(error.to_string().contains("same address"), "{error}");

        let error = Cluster::from_file(&cluster_file(5), path).unwrap_err();
        assert!(error.to_string().contains("3f + 1"), "{error}");

        let mut same_key = file;
        same_key.nodes[3].public_key = same_key.nodes[0].public_key.clone();
        let error = Cluster::from_file(&same_key, path).unwrap_err();
        assert!(error.to_string().contains("same public key"), "{error}");
    }

    /// A node file with a key that is not the cluster's key for its id is
    /// refused, naming both files.
    #[test]
    fn key_must_match_cluster() {
        let dir = node0_dir();
        write_key(&dir.path().join("wrong.key"), &KeyPair::from_seed([9; 32])).unwrap();
        let node = |key: &str| {
            format!("id = 0\nkey_file = \"{key}\"\ncluster_file = \"cluster.toml\"\ndata_dir = \"data\"\n")
        };
        std::fs::write(dir.path().join("good.toml"), node("node0.key")).unwrap();
        std::fs::write(dir.path().join("bad.toml"), node("wrong.key")).unwrap();
        let config = NodeConfig::load(&dir.path().join("good.toml")).unwrap();
        assert_eq!(config.listen, "127.0.0.1:7000".parse().unwrap());
        let error = NodeConfig::load(&dir.path().join("bad.toml")).unwrap_err();
        assert!(matches!(error, LoadError::KeyMismatch { .. }), "{error}");
        assert!(
            write_key(&dir.path().join("node0.key"), &KeyPair::from_seed([1; 32])).is_err(),
            "keygen never overwrites a key"
        );
        assert_eq!(config.clients.reply_queue, 4096, "the default");
        assert_eq!(config.grpc, None, "gRPC is off by default");
        let grpc = format!(
            "{}\n[grpc]\nlisten = \"127.0.0.1:50051\"\n",
            node("node0.key")
        );
        std::fs::write(dir.path().join("grpc.toml"), grpc).unwrap();
        let with_grpc = NodeConfig::load(&dir.path().join("grpc.toml")).unwrap();
        assert_eq!(with_grpc.grpc, Some("127.0.0.1:50051".parse().unwrap()));

        let with_clients = |section: &str| format!("{}\n[clients]\n{section}\n", node("node0.key"));
        std::fs::write(dir.path().join("q8.toml"), with_clients("reply_queue = 8")).unwrap();
        std::fs::write(dir.path().join("q0.toml"), with_clients("reply_queue = 0")).unwrap();
        let config = NodeConfig::load(&dir.path().join("q8.toml")).unwrap();
        assert_eq!(config.clients.reply_queue, 8);
        let error = NodeConfig::load(&dir.path().join("q0.toml")).unwrap_err();
        assert!(
            error.to_string().contains("reply_queue must be from 1"),
            "{error}"
        );
        // The byte bound and the stall timeout: defaults, each settable
        // alone, nonsense refused by name.
        assert_eq!(config.clients.reply_queue_bytes, 4 << 20, "the default");
        assert_eq!(config.clients.subscriber_stall_ms, 10_000, "the default");
        assert_eq!(config.clients.in_flight_bytes, 2 << 20, "the default");
        for (name, section, expected) in [
            ("b.toml", "reply_queue_bytes = 65536", None),
            (
                "b0.toml",
                "reply_queue_bytes = 10",
                Some("reply_queue_bytes"),
            ),
            (
                "s0.toml",
                "subscriber_stall_ms = 0",
                Some("subscriber_stall_ms"),
            ),
            (
                "r0.toml",
                "subscription_reads = 0",
                Some("subscription_reads"),
            ),
            (
                "h0.toml",
                "history_bytes_per_second = 1000",
                Some("history_bytes_per_second"),
            ),
            ("w0.toml", "in_flight_bytes = 100", Some("in_flight_bytes")),
            (
                "w1.toml",
                "in_flight_bytes = 4294967296",
                Some("in_flight_bytes"),
            ),
        ] {
            std::fs::write(dir.path().join(name), with_clients(section)).unwrap();
            match (NodeConfig::load(&dir.path().join(name)), expected) {
                (Ok(config), None) => {
                    assert_eq!(config.clients.reply_queue_bytes, 65536);
                    assert_eq!(config.clients.reply_queue, 4096);
                }
                (Err(error), Some(setting)) => {
                    assert!(error.to_string().contains(setting), "{error}")
                }
                (other, _) => panic!("{section}: {:?}", other.map(|c| c.clients)),
            }
        }
    }

    /// A missing key file or cluster file is reported with the node file
    /// and the field that names it.
    #[test]
    fn missing_files_name_the_field() {
        let dir = node0_dir();
        let node = |key: &str, cluster: &str| {
            format!(
                "id = 0\nkey_file = \"{key}\"\ncluster_file = \"{cluster}\"\ndata_dir = \"data\"\n"
            )
        };
        let path = dir.path().join("node.toml");
        std::fs::write(&path, node("missing.key", "cluster.toml")).unwrap();
        let error = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(
            error.contains("node.toml: key_file = \"missing.key\": cannot read"),
            "{error}"
        );
        std::fs::write(&path, node("node0.key", "nowhere.toml")).unwrap();
        let error = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(
            error.contains("node.toml: cluster_file = \"nowhere.toml\": cannot read"),
            "{error}"
        );
    }

    /// Client commands find the cluster file: the flag, then the
    /// environment, then ./cluster.toml, then bftnet up's.
    #[test]
    fn cluster_file_discovery() {
        let flag = Some(Path::new("a.toml"));
        let env = || Some(std::ffi::OsString::from("b.toml"));
        assert_eq!(choose_cluster_file(flag, env(), true), Path::new("a.toml"));
        assert_eq!(choose_cluster_file(None, env(), true), Path::new("b.toml"));
        assert_eq!(
            choose_cluster_file(None, None, true),
            Path::new("cluster.toml")
        );
        assert_eq!(
            choose_cluster_file(None, Some("".into()), false),
            Path::new("testnet-data/cluster.toml")
        );
    }

    /// A directory with a 4-node cluster file and node 0's key.
    fn node0_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cluster.toml"),
            toml::to_string(&cluster_file(4)).unwrap(),
        )
        .unwrap();
        write_key(&dir.path().join("node0.key"), &KeyPair::from_seed([1; 32])).unwrap();
        dir
    }

    /// Node 0's node file in `node0_dir`, before its sections.
    const NODE0: &str =
        "id = 0\nkey_file = \"node0.key\"\ncluster_file = \"cluster.toml\"\ndata_dir = \"data\"\n";

    /// `[peers]`: defaults that let a node catch up fast, each settable,
    /// a rate too low to ever catch up refused by name.
    #[test]
    fn peer_limits_are_validated() {
        let dir = node0_dir();
        let node = |section: &str| format!("{NODE0}[peers]\n{section}\n");
        std::fs::write(dir.path().join("default.toml"), node("")).unwrap();
        let config = NodeConfig::load(&dir.path().join("default.toml")).unwrap();
        assert_eq!(config.peers.fetch_bytes_per_second, 64 << 20);
        assert_eq!(config.peers.fetch_burst_bytes, 16 << 20);
        std::fs::write(
            dir.path().join("set.toml"),
            node("fetch_bytes_per_second = 1048576"),
        )
        .unwrap();
        let config = NodeConfig::load(&dir.path().join("set.toml")).unwrap();
        assert_eq!(config.peers.fetch_bytes_per_second, 1 << 20);
        for section in ["fetch_bytes_per_second = 10", "fetch_burst_bytes = 0"] {
            std::fs::write(dir.path().join("bad.toml"), node(section)).unwrap();
            let error = NodeConfig::load(&dir.path().join("bad.toml")).unwrap_err();
            let setting = section.split(' ').next().unwrap();
            assert!(error.to_string().contains(setting), "{error}");
        }
    }

    /// `[storage] retain_blocks` is optional (keep everything) and must
    /// exceed the cluster's request_lifetime (1024 by default): at or below
    /// it is refused with why (at-most-once needs the recent blocks).
    #[test]
    fn retain_blocks_must_exceed_the_request_lifetime() {
        let dir = node0_dir();
        let path = dir.path().join("default.toml");
        std::fs::write(&path, NODE0).unwrap();
        assert_eq!(NodeConfig::load(&path).unwrap().storage.retain_blocks, None);
        for (retain, accepted) in [("1025", true), ("1024", false), ("0", false)] {
            let path = dir.path().join(format!("r{retain}.toml"));
            std::fs::write(
                &path,
                format!("{NODE0}[storage]\nretain_blocks = {retain}\n"),
            )
            .unwrap();
            match NodeConfig::load(&path) {
                Ok(config) => {
                    assert!(accepted, "retain_blocks = {retain} was accepted");
                    assert_eq!(config.storage.retain_blocks.unwrap().to_string(), retain);
                }
                Err(error) => {
                    assert!(!accepted, "retain_blocks = {retain} refused: {error}");
                    let text = error.to_string();
                    assert!(
                        text.contains("retain_blocks") && text.contains("request_lifetime (1024)"),
                        "{text}"
                    );
                }
            }
        }
    }

    /// The README's node file example is one bftd loads, every section and
    /// setting in it known (each section refuses unknown fields), with the
    /// values it documents.
    #[test]
    fn the_readme_node_file_example_loads() {
        let readme = include_str!("../../README.md");
        let example = readme
            .split("```toml\n")
            .map(|block| block.split("```").next().unwrap_or_default())
            .find(|block| block.starts_with("id = 0\nkey_file"))
            .expect("the README has a node file example");
        let dir = node0_dir();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, example.replace("\"node.key\"", "\"node0.key\"")).unwrap();
        let config = NodeConfig::load(&path).unwrap();
        assert_eq!(config.storage.retain_blocks, Some(5000));
        assert_eq!(config.runtime.worker_threads, 0);
        assert!(config.protocol.jump_past_pruned);
    }

    /// `[runtime] worker_threads` is optional (0: one per core), taken as
    /// given up to MAX_WORKER_THREADS, refused beyond with what to write.
    #[test]
    fn worker_threads_is_bounded() {
        let dir = node0_dir();
        let path = dir.path().join("default.toml");
        std::fs::write(&path, NODE0).unwrap();
        assert_eq!(NodeConfig::load(&path).unwrap().runtime.worker_threads, 0);
        for (threads, accepted) in [("1", true), ("1024", true), ("1025", false)] {
            let path = dir.path().join(format!("t{threads}.toml"));
            std::fs::write(
                &path,
                format!("{NODE0}[runtime]\nworker_threads = {threads}\n"),
            )
            .unwrap();
            match NodeConfig::load(&path) {
                Ok(config) => {
                    assert!(accepted, "worker_threads = {threads} was accepted");
                    assert_eq!(config.runtime.worker_threads.to_string(), threads);
                }
                Err(error) => {
                    assert!(!accepted, "worker_threads = {threads} refused: {error}");
                    let text = error.to_string();
                    assert!(text.contains("worker_threads = 1025"), "{text}");
                }
            }
        }
    }

    /// `[clients] reply_queue` is a capacity: a value the queue cannot
    /// have (zero, or one that would make every client connection panic)
    /// is refused at load, naming the setting and its range.
    #[test]
    fn reply_queue_must_be_in_range() {
        let dir = node0_dir();
        let node = |queue: &str| format!("{NODE0}[clients]\nreply_queue = {queue}\n");
        for (queue, accepted) in [
            ("1", true),
            ("65536", true),
            ("9223372036854775807", false),
            ("65537", false),
            ("0", false),
        ] {
            let path = dir.path().join(format!("q{queue}.toml"));
            std::fs::write(&path, node(queue)).unwrap();
            match NodeConfig::load(&path) {
                Ok(config) => {
                    assert!(accepted, "reply_queue = {queue} was accepted");
                    assert_eq!(config.clients.reply_queue.to_string(), queue);
                }
                Err(error) => {
                    assert!(!accepted, "reply_queue = {queue} refused: {error}");
                    let text = error.to_string();
                    assert!(
                        text.contains("reply_queue") && text.contains("65536"),
                        "{text}"
                    );
                }
            }
        }
    }

    /// Settings that decide what executes come from the cluster file, the
    /// same for every node: a node file that sets one is refused, naming it
    /// and where it belongs; the cluster's values reach the node's protocol
    /// configuration; an invalid cluster value is refused by name.
    #[test]
    fn consensus_settings_live_in_the_cluster_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = cluster_file(4);
        cluster.protocol.request_lifetime = 77;
        cluster.protocol.window = 128;
        std::fs::write(
            dir.path().join("cluster.toml"),
            toml::to_string(&cluster).unwrap(),
        )
        .unwrap();
        write_key(&dir.path().join("node0.key"), &KeyPair::from_seed([1; 32])).unwrap();
        let node = |protocol: &str| {
            format!("id = 0\nkey_file = \"node0.key\"\ncluster_file = \"cluster.toml\"\ndata_dir = \"data\"\n[protocol]\n{protocol}\n")
        };
        std::fs::write(
            dir.path().join("local.toml"),
            node("request_timeout_ms = 500"),
        )
        .unwrap();
        let config = NodeConfig::load(&dir.path().join("local.toml")).unwrap();
        assert_eq!(config.protocol.request_lifetime, 77);
        assert_eq!(config.protocol.window, 128);
        assert_eq!(
            config.protocol.request_timeout,
            std::time::Duration::from_millis(500)
        );

        std::fs::write(dir.path().join("window.toml"), node("window = 512")).unwrap();
        let error = NodeConfig::load(&dir.path().join("window.toml")).unwrap_err();
        assert!(
            matches!(
                error,
                LoadError::ConsensusSettingInNodeFile {
                    setting: "window",
                    ..
                }
            ),
            "{error}"
        );
        assert!(
            error.to_string().contains("cluster file's [protocol]"),
            "{error}"
        );

        cluster.protocol.window = 100;
        std::fs::write(
            dir.path().join("cluster.toml"),
            toml::to_string(&cluster).unwrap(),
        )
        .unwrap();
        let error = Cluster::load(&dir.path().join("cluster.toml")).unwrap_err();
        assert!(error.to_string().contains("window"), "{error}");
    }
}

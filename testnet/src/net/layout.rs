//! A testnet directory: generated keys and configs, and `testnet.json`, the
//! state every subcommand reads (ports, PIDs, behaviours).
//!
//! ```text
//! DIR/testnet.json        state: ports, PIDs, behaviours (bftnet rewrites it)
//! DIR/cluster.toml        ids, addresses (the fault proxy's ports, or the nodes'
//!                         own for a direct testnet), public keys
//! DIR/faults.json         the proxy's rules (partition/heal rewrite it)
//! DIR/faults-applied.json the generation of rules the proxy has put in force
//! DIR/events.jsonl       what bftnet commands did, one JSON line each (events.rs)
//! DIR/node0.toml ...      node files, for `bftd run --config`
//! DIR/keys/node0.key ...  node keys; keys/client.key for `bftnet submit`
//! DIR/data/node0/ ...     node stores
//! DIR/logs/node0.log ...  node logs; logs/proxy.log
//! ```

use super::error::NetError;
use super::proxy::Faults;
use bftd::config::write_key;
use bftd_crypto::KeyPair;
use bftd_protocol::byzantine::Behaviour;
use bftd_protocol::RequestMode;
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

/// The state file's name.
pub const STATE_FILE: &str = "testnet.json";
/// The state file's format version.
const FORMAT: u32 = 1;

/// Paths inside a testnet directory.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The directory (absolute).
    pub dir: PathBuf,
}

impl Layout {
    /// The layout of `dir`, made absolute so printed paths work from
    /// anywhere.
    pub fn new(dir: &Path) -> Layout {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        Layout { dir }
    }

    /// `testnet.json`.
    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }
    /// `cluster.toml`.
    pub fn cluster(&self) -> PathBuf {
        self.dir.join("cluster.toml")
    }
    /// `faults.json`, the proxy's rules.
    pub fn faults(&self) -> PathBuf {
        self.dir.join("faults.json")
    }
    /// `faults-applied.json`: which generation of `faults.json` the proxy
    /// has put in force.
    pub fn faults_applied(&self) -> PathBuf {
        self.dir.join("faults-applied.json")
    }
    /// A node's config file.
    pub fn node_config(&self, id: u16) -> PathBuf {
        self.dir.join(format!("node{id}.toml"))
    }
    /// A node's key file.
    pub fn node_key(&self, id: u16) -> PathBuf {
        self.dir.join("keys").join(format!("node{id}.key"))
    }
    /// The client key used by `bftnet submit`.
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("keys").join("client.key")
    }
    /// A node's data directory.
    pub fn data_dir(&self, id: u16) -> PathBuf {
        self.dir.join("data").join(format!("node{id}"))
    }
    /// A node's log file.
    pub fn node_log(&self, id: u16) -> PathBuf {
        self.dir.join("logs").join(format!("node{id}.log"))
    }
    /// The proxy's log file.
    pub fn proxy_log(&self) -> PathBuf {
        self.dir.join("logs").join("proxy.log")
    }
}

/// The lock file's name.
pub const LOCK_FILE: &str = ".lock";

/// An exclusive lock on a testnet directory, held while a command changes
/// its processes or state file, so two commands (`kill` from one terminal,
/// `restart` from another) never lose each other's PIDs. Released on drop.
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

impl Layout {
    /// Takes the directory's lock, waiting for another command holding it.
    /// The directory must exist.
    pub fn lock(&self) -> Result<StateLock, NetError> {
        let path = self.dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(NetError::io("open", &path))?;
        if let Err(std::fs::TryLockError::WouldBlock) = file.try_lock() {
            eprintln!(
                "waiting for another bftnet command working on {} ...",
                self.dir.display()
            );
            file.lock().map_err(NetError::io("lock", &path))?;
        }
        Ok(StateLock { _file: file })
    }
}

/// How the nodes of a testnet reach each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Network {
    /// Through the fault proxy (`bftnet up`): partitions, delay and loss
    /// need no root.
    #[default]
    Proxied,
    /// Straight to each other's QUIC sockets, no proxy in the path
    /// (`bftnet bench`: the figures are the nodes', not the proxy's).
    Direct,
}

/// Whether `value` is its type's default (left out of `testnet.json`, so
/// state files of `bftnet up` read as before).
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// One node as the testnet knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    /// Node id.
    pub id: u16,
    /// Its address in the cluster file, which peers and clients dial: the
    /// fault proxy's port for it, or `listen` on a direct testnet.
    pub address: SocketAddr,
    /// Where the node itself binds (its QUIC socket).
    pub listen: SocketAddr,
    /// Its HTTP address (/metrics, /status, /healthz).
    pub metrics: SocketAddr,
    /// Its gRPC address (`[grpc] listen`); absent in testnets made before
    /// the gRPC API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<SocketAddr>,
    /// Byzantine behaviour, if any.
    pub behaviour: Option<String>,
    /// For `collude`: every colluder's id.
    #[serde(default)]
    pub colluders: Vec<u16>,
    /// PID of its `bftd` process, while bftnet believes it runs.
    pub pid: Option<u32>,
    /// Whether bftnet created its store (`bftd init`), which it does once,
    /// at the node's first start: a store that goes missing later stays
    /// missing, and the node refuses to start, as a real one would.
    #[serde(default, skip_serializing_if = "is_default")]
    pub store_created: bool,
}

impl NodeState {
    /// Whether the node runs the honest protocol.
    pub fn honest(&self) -> bool {
        self.behaviour.is_none()
    }
}

/// The fault proxy's process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProxyState {
    /// Its PID, while running.
    pub pid: Option<u32>,
}

/// `testnet.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Format version.
    pub format: u32,
    /// Nodes.
    pub n: usize,
    /// Faults tolerated.
    pub f: usize,
    /// How requests are authenticated.
    pub request_mode: RequestMode,
    /// Whether more than f byzantine nodes were allowed.
    pub allow_unsafe: bool,
    /// The `bftd` binary the nodes run.
    pub bftd: PathBuf,
    /// Through the fault proxy or direct.
    #[serde(default, skip_serializing_if = "is_default")]
    pub network: Network,
    /// `[protocol] max_batch_requests` of every node; `None` keeps bftd's
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_requests: Option<usize>,
    /// `[storage] retain_blocks` of every node; `None` keeps every block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_blocks: Option<u64>,
    /// The fault proxy (never started on a direct testnet).
    pub proxy: ProxyState,
    /// The nodes, by id.
    pub nodes: Vec<NodeState>,
}

impl State {
    /// Reads `testnet.json` from `layout`.
    pub fn load(layout: &Layout) -> Result<State, NetError> {
        let path = layout.state();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(NetError::NoTestnet {
                    dir: layout.dir.clone(),
                })
            }
            Err(source) => {
                return Err(NetError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        serde_json::from_str(&text).map_err(|source| NetError::BadState { path, source })
    }

    /// Writes `testnet.json` atomically (write, then rename), so a reader
    /// never sees half a file.
    pub fn save(&self, layout: &Layout) -> Result<(), NetError> {
        let path = layout.state();
        let text = serde_json::to_string_pretty(self).unwrap_or_default() + "\n";
        write_atomic(&path, &text)
    }

    /// Node `id`, or an error naming the valid ids.
    pub fn node(&self, id: u16) -> Result<&NodeState, NetError> {
        self.nodes
            .get(usize::from(id))
            .ok_or(NetError::UnknownNode {
                id,
                last: self.n.saturating_sub(1),
            })
    }

    /// Node `id`, mutably.
    pub fn node_mut(&mut self, id: u16) -> Result<&mut NodeState, NetError> {
        let last = self.n.saturating_sub(1);
        self.nodes
            .get_mut(usize::from(id))
            .ok_or(NetError::UnknownNode { id, last })
    }

    /// Byzantine nodes.
    pub fn byzantine_count(&self) -> usize {
        self.nodes.iter().filter(|node| !node.honest()).count()
    }

    /// The honest nodes' ids, in order.
    pub fn honest_ids(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| node.honest())
            .map(|node| node.id)
            .collect()
    }
}

/// Writes `text` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), NetError> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).map_err(NetError::io("write", &temporary))?;
    std::fs::rename(&temporary, path).map_err(NetError::io("write", path))
}

/// One `--byzantine ID=BEHAVIOUR` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ByzantineArg {
    /// The node.
    pub id: u16,
    /// What it does.
    pub behaviour: Behaviour,
}

impl std::str::FromStr for ByzantineArg {
    type Err = String;
    fn from_str(text: &str) -> Result<ByzantineArg, String> {
        let (id, behaviour) = text.split_once('=').ok_or_else(|| {
            format!(
                "expected ID=BEHAVIOUR, for example 3=equivocate; behaviours: {}",
                Behaviour::NAMES
            )
        })?;
        let id = id
            .trim()
            .parse()
            .map_err(|_| format!("`{id}` is not a node id (0, 1, 2, ...)"))?;
        let behaviour = behaviour.parse().map_err(|e| format!("{e}"))?;
        Ok(ByzantineArg { id, behaviour })
    }
}

/// Assigns behaviours to the nodes of `state`: every node not named is
/// honest; the `collude` nodes each learn the whole group. Refuses unknown
/// ids, a node named twice, and more than f liars without `allow_unsafe`.
pub fn assign_behaviours(
    state: &mut State,
    byzantine: &[ByzantineArg],
    allow_unsafe: bool,
) -> Result<(), NetError> {
    let behaviours = behaviours(state.n, byzantine, allow_unsafe)?;
    let colluders: Vec<u16> = behaviours
        .iter()
        .enumerate()
        .filter(|(_, b)| b.as_ref() == Some(&Behaviour::Collude))
        .map(|(id, _)| id as u16)
        .collect();
    for (node, behaviour) in state.nodes.iter_mut().zip(behaviours) {
        node.colluders = if behaviour == Some(Behaviour::Collude) {
            colluders.clone()
        } else {
            Vec::new()
        };
        node.behaviour = behaviour.map(|b| b.to_string());
    }
    state.allow_unsafe = allow_unsafe;
    Ok(())
}

/// Each node's behaviour for `n` nodes, checked as [`assign_behaviours`]
/// says (callable before any file exists).
pub fn behaviours(
    n: usize,
    byzantine: &[ByzantineArg],
    allow_unsafe: bool,
) -> Result<Vec<Option<Behaviour>>, NetError> {
    let f = n.saturating_sub(1) / 3;
    let mut behaviours: Vec<Option<Behaviour>> = vec![None; n];
    for arg in byzantine {
        let value = format!("{}={}", arg.id, arg.behaviour);
        let slot =
            behaviours
                .get_mut(usize::from(arg.id))
                .ok_or_else(|| NetError::BadArgument {
                    flag: "--byzantine",
                    value: value.clone(),
                    reason: format!("node {} does not exist (nodes are 0..={})", arg.id, n - 1),
                })?;
        if slot.is_some() {
            return Err(NetError::BadArgument {
                flag: "--byzantine",
                value,
                reason: format!("node {} is named twice", arg.id),
            });
        }
        *slot = Some(arg.behaviour.clone());
    }
    let count = behaviours.iter().flatten().count();
    if count > f && !allow_unsafe {
        return Err(NetError::Unsafe { count, f, n });
    }
    Ok(behaviours)
}

/// What can break with more than f liars, printed when `--allow-unsafe`
/// lets it happen.
pub fn unsafe_warning(count: usize, f: usize) -> String {
    format!(
        "warning: {count} byzantine nodes > f = {f}. PBFT's guarantees are gone: colluding nodes \
         can make honest nodes commit different blocks at the same height (a fork; \
         `bftnet check` reports it), lie in certificates that now verify, and f + 1 silent \
         nodes stop all progress."
    )
}

/// Refuses a committee size that is not 3f + 1 (or is unreasonably large);
/// `hint` ends the message (another way to say it, if the command has one).
pub fn check_size(n: usize, hint: &str) -> Result<(), NetError> {
    if n == 0 || n % 3 != 1 || n > 301 {
        return Err(NetError::BadArgument {
            flag: "-n",
            value: n.to_string(),
            reason: format!("n must be 3f + 1: 1, 4, 7, 10, ... up to 301{hint}"),
        });
    }
    Ok(())
}

/// Loopback addresses for one node: its real QUIC port, its proxy port,
/// its HTTP port and its gRPC port.
struct FreeAddresses {
    listen: SocketAddr,
    proxied: SocketAddr,
    metrics: SocketAddr,
    grpc: SocketAddr,
}

/// Ports testnets take: below Linux's ephemeral range (32768-60999 by
/// default), where the kernel puts the source ports of outgoing UDP and
/// TCP sockets. A port from that range that was free when chosen could be
/// taken by any client socket on the machine (a load generator's, another
/// testnet's) before the node bound it: "address already in use" at start,
/// about one scenario run in a few hundred when several run at once.
const NODE_PORTS: std::ops::Range<u16> = 20_000..32_768;

/// [`FreeAddresses`] for `n` nodes, each port from [`NODE_PORTS`] and free
/// for both UDP and TCP when chosen. All sockets stay bound until every
/// port is chosen, so no two are equal.
fn free_addresses(n: usize) -> std::io::Result<Vec<FreeAddresses>> {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let mut held = Vec::with_capacity(4 * n);
    let mut attempts = 0;
    while held.len() < 4 * n {
        attempts += 1;
        if attempts > 100_000 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "no free loopback ports between {} and {}",
                    NODE_PORTS.start, NODE_PORTS.end
                ),
            ));
        }
        let port = rng.gen_range(NODE_PORTS);
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        if let (Ok(udp), Ok(tcp)) = (UdpSocket::bind(address), TcpListener::bind(address)) {
            held.push((address, udp, tcp));
        }
    }
    Ok(held
        .chunks(4)
        .filter_map(|ports| match ports {
            [real, proxy, http, grpc] => Some(FreeAddresses {
                listen: real.0,
                proxied: proxy.0,
                metrics: http.0,
                grpc: grpc.0,
            }),
            _ => None,
        })
        .collect())
}

/// Creates a new testnet in `layout.dir` (which must be absent or empty):
/// keys, free ports, cluster file. Node files are written by
/// [`write_node_files`] once behaviours are assigned.
pub fn generate(
    layout: &Layout,
    n: usize,
    request_mode: RequestMode,
    network: Network,
    bftd: &Path,
) -> Result<State, NetError> {
    for dir in [
        layout.dir.clone(),
        layout.dir.join("keys"),
        layout.dir.join("data"),
        layout.dir.join("logs"),
    ] {
        std::fs::create_dir_all(&dir).map_err(NetError::io("create", &dir))?;
    }
    let addresses = free_addresses(n).map_err(NetError::io("find free ports on", "127.0.0.1"))?;
    let mut cluster = bftd::config::ClusterFile {
        protocol: consensus_settings(request_mode, None),
        nodes: Vec::new(),
    };
    let mut nodes = Vec::with_capacity(n);
    let mut rng = rand::rngs::OsRng;
    for (id, free) in addresses.into_iter().enumerate() {
        let FreeAddresses {
            listen,
            proxied,
            metrics,
            grpc,
        } = free;
        let id = id as u16;
        let address = match network {
            Network::Proxied => proxied,
            Network::Direct => listen,
        };
        let key = KeyPair::generate(&mut rng);
        let path = layout.node_key(id);
        write_key(&path, &key).map_err(NetError::io("write", &path))?;
        cluster.nodes.push(bftd::config::ClusterNode {
            id,
            address,
            public_key: key.public().to_string(),
            // Clients reach gRPC directly: the fault proxy carries QUIC only.
            grpc: Some(grpc.to_string()),
        });
        nodes.push(NodeState {
            id,
            address,
            listen,
            metrics,
            grpc: Some(grpc),
            behaviour: None,
            colluders: Vec::new(),
            pid: None,
            store_created: false,
        });
    }
    let client = layout.client_key();
    write_key(&client, &KeyPair::generate(&mut rng)).map_err(NetError::io("write", &client))?;
    write_cluster_file(layout, network, &cluster)?;
    Ok(State {
        format: FORMAT,
        n,
        f: (n - 1) / 3,
        request_mode,
        allow_unsafe: false,
        bftd: bftd.to_owned(),
        network,
        max_batch_requests: None,
        retain_blocks: None,
        proxy: ProxyState::default(),
        nodes,
    })
}

/// The cluster file's `[protocol]`: what every node must share.
fn consensus_settings(
    request_mode: RequestMode,
    max_batch_requests: Option<usize>,
) -> bftd_protocol::ConsensusSettings {
    let mut settings = bftd_protocol::ConsensusSettings {
        request_mode,
        ..Default::default()
    };
    if let Some(batch) = max_batch_requests {
        settings.max_batch_requests = batch;
    }
    settings
}

fn write_cluster_file(
    layout: &Layout,
    network: Network,
    cluster: &bftd::config::ClusterFile,
) -> Result<(), NetError> {
    let header = match network {
        Network::Proxied => {
            "# Generated by `bftnet up`. Addresses are the fault proxy's ports: peers and\n\
             # clients reach each node through it, so `bftnet partition` can cut links.\n\
             # [protocol] holds what every node must share (it decides what executes).\n"
        }
        Network::Direct => {
            "# Generated by bftnet for a direct testnet (no fault proxy): addresses are\n\
             # the nodes' own QUIC sockets. [protocol] holds what every node must share.\n"
        }
    };
    let text = format!("{header}{}", toml::to_string(cluster).unwrap_or_default());
    write_atomic(&layout.cluster(), &text)?;
    // Validate what we wrote with the node's own loader.
    bftd::config::Cluster::load(&layout.cluster())?;
    Ok(())
}

#[derive(Serialize)]
struct NodeFileOut<'a> {
    id: u16,
    key_file: String,
    cluster_file: &'static str,
    data_dir: String,
    listen: SocketAddr,
    metrics: SocketAddr,
    log_format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    byzantine: Option<&'a str>,
    #[serde(skip_serializing_if = "<[u16]>::is_empty")]
    colluders: &'a [u16],
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc: Option<GrpcOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime: Option<RuntimeOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    storage: Option<StorageOut>,
}

/// A node file's `[storage]`.
#[derive(Serialize)]
struct StorageOut {
    retain_blocks: u64,
}

#[derive(Serialize)]
struct GrpcOut {
    listen: SocketAddr,
}

/// A node file's `[runtime]`, for a node that shares this machine's cores.
#[derive(Serialize)]
pub(super) struct RuntimeOut {
    worker_threads: usize,
}

impl RuntimeOut {
    /// The runtime of one of `sharing` nodes on this machine: an equal
    /// share of its cores, at least one thread. On two cores four nodes
    /// with one thread each had lower latency and more throughput than
    /// with one thread per core each (design notes §44). `None` for a node
    /// alone on its machine (bftd's default, one thread per core).
    pub(super) fn shared(sharing: usize) -> Option<RuntimeOut> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (sharing > 1).then(|| RuntimeOut {
            worker_threads: (cores / sharing).max(1),
        })
    }
}

/// Writes the cluster file's `[protocol]` (the request mode and batch size
/// of `state`) and every node's config file, and checks each loads.
pub fn write_node_files(layout: &Layout, state: &State) -> Result<(), NetError> {
    let path = layout.cluster();
    let text = std::fs::read_to_string(&path).map_err(NetError::io("read", &path))?;
    let mut cluster: bftd::config::ClusterFile =
        toml::from_str(&text).map_err(|source| bftd::config::LoadError::Parse {
            path: path.clone(),
            what: "cluster file",
            source: Box::new(source),
        })?;
    cluster.protocol = consensus_settings(state.request_mode, state.max_batch_requests);
    write_cluster_file(layout, state.network, &cluster)?;
    for node in &state.nodes {
        let file = NodeFileOut {
            id: node.id,
            key_file: format!("keys/node{}.key", node.id),
            cluster_file: "cluster.toml",
            data_dir: format!("data/node{}", node.id),
            listen: node.listen,
            metrics: node.metrics,
            log_format: "human",
            byzantine: node.behaviour.as_deref(),
            colluders: &node.colluders,
            grpc: node.grpc.map(|listen| GrpcOut { listen }),
            runtime: RuntimeOut::shared(state.nodes.len()),
            storage: state
                .retain_blocks
                .map(|retain_blocks| StorageOut { retain_blocks }),
        };
        let reached = match state.network {
            Network::Proxied => format!(
                "Peers and clients reach it through\n# the fault proxy at {}; it binds {} itself.",
                node.address, node.listen
            ),
            Network::Direct => format!(
                "Peers and clients reach it directly\n# at {} (no fault proxy).",
                node.listen
            ),
        };
        let text = format!(
            "# Generated by bftnet: node {} of {}. {reached}\n\
             # Run by hand: bftd run --config {}\n{}",
            node.id,
            state.n,
            layout.node_config(node.id).display(),
            toml::to_string(&file).unwrap_or_default()
        );
        let path = layout.node_config(node.id);
        write_atomic(&path, &text)?;
        bftd::config::NodeConfig::load(&path)?;
    }
    Ok(())
}

/// Writes the proxy's rules.
pub fn write_faults(layout: &Layout, faults: &Faults) -> Result<(), NetError> {
    let text = serde_json::to_string_pretty(faults).unwrap_or_default() + "\n";
    write_atomic(&layout.faults(), &text)
}

/// Reads the proxy's rules (none if the file is absent or unreadable).
pub fn read_faults(layout: &Layout) -> Faults {
    std::fs::read_to_string(layout.faults())
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

/// `faults-applied.json`, written by the proxy.
#[derive(Debug, Serialize, Deserialize)]
struct AppliedFaults {
    /// The `generation` of the rules in force.
    generation: u64,
}

/// Records that the proxy has put generation `generation` of the rules in
/// force (written by the proxy).
pub fn write_applied(layout: &Layout, generation: u64) -> Result<(), NetError> {
    let text = serde_json::to_string(&AppliedFaults { generation }).unwrap_or_default() + "\n";
    write_atomic(&layout.faults_applied(), &text)
}

/// The generation of rules the proxy last put in force, if it said.
pub fn read_applied(layout: &Layout) -> Option<u64> {
    let text = std::fs::read_to_string(layout.faults_applied()).ok()?;
    serde_json::from_str::<AppliedFaults>(&text)
        .ok()
        .map(|applied| applied.generation)
}

/// The generation the next change of the rules gets: above both the one
/// written and the one the proxy last applied, so waiting for it never
/// mistakes an old acknowledgement for the new one.
pub fn next_generation(layout: &Layout) -> u64 {
    read_faults(layout)
        .generation
        .max(read_applied(layout).unwrap_or(0))
        .saturating_add(1)
}

/// A freshly generated 4-node testnet in a new temporary directory named
/// after `name`, for tests; the caller removes `layout.dir`.
#[cfg(test)]
pub(crate) fn test_testnet(name: &str, mode: RequestMode, network: Network) -> (Layout, State) {
    let dir = std::env::temp_dir().join(format!("bftnet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let layout = Layout::new(&dir);
    let state = generate(&layout, 4, mode, network, Path::new("bftd")).unwrap();
    (layout, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generated node files load with bftd's own loader, behaviours and
    /// colluders included, and the state file round-trips.
    #[test]
    fn generated_files_load() {
        let (layout, mut state) =
            test_testnet("layout-test", RequestMode::ClientSigned, Network::Proxied);
        let dir = layout.dir.clone();
        let args: Vec<ByzantineArg> =
            vec!["1=collude".parse().unwrap(), "2=collude".parse().unwrap()];
        assert!(matches!(
            assign_behaviours(&mut state, &args, false),
            Err(NetError::Unsafe {
                count: 2,
                f: 1,
                n: 4
            })
        ));
        assign_behaviours(&mut state, &args, true).unwrap();
        write_node_files(&layout, &state).unwrap();
        let config = bftd::config::NodeConfig::load(&layout.node_config(2)).unwrap();
        assert_eq!(config.byzantine.as_deref(), Some("collude"));
        assert_eq!(config.colluders.len(), 2);
        assert_eq!(config.listen, state.nodes[2].listen);
        assert_eq!(config.cluster.addresses[2], state.nodes[2].address);
        state.save(&layout).unwrap();
        assert_eq!(State::load(&layout).unwrap(), state);
        assert!("9".parse::<ByzantineArg>().is_err());
        assert!("x=silent".parse::<ByzantineArg>().is_err());
        assert!("1=sneaky".parse::<ByzantineArg>().is_err());
        let too_big = vec!["4=silent".parse().unwrap()];
        assert!(assign_behaviours(&mut state, &too_big, false).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A direct testnet's cluster file names the nodes' own sockets (no
    /// proxy in the path), and a batch size reaches every node's protocol
    /// section.
    #[test]
    fn direct_network_and_batch_size() {
        let (layout, mut state) = test_testnet(
            "layout-direct",
            RequestMode::ConnectionAuthenticated,
            Network::Direct,
        );
        let dir = layout.dir.clone();
        state.max_batch_requests = Some(64);
        state.retain_blocks = Some(2000);
        write_node_files(&layout, &state).unwrap();
        for node in &state.nodes {
            assert_eq!(node.address, node.listen);
        }
        let config = bftd::config::NodeConfig::load(&layout.node_config(1)).unwrap();
        assert_eq!(config.cluster.addresses[3], state.nodes[3].listen);
        assert_eq!(config.protocol.max_batch_requests, 64);
        assert_eq!(config.storage.retain_blocks, Some(2000));
        assert_eq!(
            config.protocol.request_mode,
            RequestMode::ConnectionAuthenticated
        );
        state.save(&layout).unwrap();
        assert_eq!(State::load(&layout).unwrap(), state);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

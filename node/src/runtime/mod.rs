//! The daemon: the replica driven over QUIC with a disk store.
//!
//! Tasks, each with bounded queues between them:
//! - *ingress*: peer frames → decode → batch signature verification (on
//!   blocking threads) → consensus;
//! - *consensus*: the replica's only owner; one durable write per step,
//!   then sends, then client replies;
//! - *clients*: one task per client connection (submissions, subscriptions,
//!   status);
//! - *http*: `/metrics`, `/status`, `/healthz`, `/evidence`;
//! - *application*: feeds committed blocks, in order, to an embedding
//!   application.

mod clients;
mod consensus;
mod durable;
mod http;
mod ingress;
pub mod metrics;
mod quorum;

use crate::client_api::NodeStatus;
use crate::config::NodeConfig;
use crate::storage::{DiskStorage, StoreIdentity};
use crate::transport::{Peer, Transport, TransportConfig, TransportError, TransportStats};
use bftd_protocol::{
    BlockSource, CommittedBlock, Committee, MessageLimits, Replica, ReplicaError, ReplicaSetup,
    RequestMode, SeqNum, Storage, StorageError,
};
use consensus::{Consensus, Input};
use metrics::NodeMetrics;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Inputs queued for the consensus task.
const INPUT_QUEUE: usize = 8192;
/// Steps queued for the durability worker; when full, consensus waits
/// (backpressure from a slow disk).
const STEP_QUEUE: usize = 256;

/// Receives committed blocks, in height order, exactly once each, when bftd
/// is embedded as a library.
pub trait Application: Send + 'static {
    /// A committed block. `duplicates` lists positions of requests that were
    /// already executed in an earlier block: skip them.
    fn deliver(&mut self, block: &CommittedBlock, duplicates: &[u32]);
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened or read.
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// The replica could not be built from the store.
    #[error("{0}")]
    Replica(#[from] ReplicaError),
    /// The QUIC endpoint could not start.
    #[error("{0}")]
    Transport(#[from] TransportError),
    /// The metrics address could not be bound.
    #[error("cannot listen for metrics on {address}: {source}")]
    Metrics {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The durability worker thread could not be started.
    #[error("cannot start the storage thread: {0}")]
    Thread(std::io::Error),
    /// A byzantine behaviour was asked for but cannot be used.
    #[error("byzantine behaviour `{behaviour}`: {reason}")]
    Byzantine {
        /// The behaviour given.
        behaviour: String,
        /// Why it is refused.
        reason: &'static str,
    },
}

/// What the tasks share.
pub(crate) struct Shared {
    pub metrics: NodeMetrics,
    pub committee: Committee,
    pub request_mode: RequestMode,
    /// What a peer message may hold, checked before its signatures.
    pub limits: MessageLimits,
    /// Heights a request may be valid for (`[protocol] request_lifetime`).
    pub request_lifetime: u64,
    /// Replies queued per client connection (`[clients] reply_queue`).
    pub reply_queue: usize,
    /// The same queue's bound in bytes (`[clients] reply_queue_bytes`).
    pub reply_queue_bytes: usize,
    /// How long a subscriber's queue may stay full before the subscription
    /// is ended (`[clients] subscriber_stall_ms`).
    pub subscriber_stall: std::time::Duration,
    pub id: u16,
    pub byzantine: Option<String>,
    /// When the node started (the replica's clock starts here too).
    pub started: Instant,
    transport: Mutex<Option<Transport>>,
    /// Set by the durability worker when storage fails.
    fatal: Mutex<Option<String>>,
}

impl Shared {
    pub(crate) fn fail(&self, error: String) {
        *self.fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    pub(crate) fn storage_failure(&self) -> StorageError {
        let message = self
            .fatal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "the durability worker stopped".into());
        StorageError {
            source: message.into(),
        }
    }

    pub(crate) fn transport_stats(&self) -> TransportStats {
        self.transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Transport::stats)
            .unwrap_or_default()
    }

    pub(crate) fn status(&self) -> NodeStatus {
        let snapshot = self.metrics.latest();
        let status = snapshot.as_ref().map(|s| s.status);
        NodeStatus {
            id: self.id,
            n: self.committee.n(),
            f: self.committee.f(),
            view: status.map_or(0, |s| s.view.0),
            in_view_change: status.is_some_and(|s| s.in_view_change),
            primary: status.map_or(0, |s| s.primary.0),
            height: status.map_or(0, |s| s.last_executed.0),
            head_hash: status.map_or_else(String::new, |s| s.head_hash.to_string()),
            stable_checkpoint: status.map_or(0, |s| s.stable_checkpoint.0),
            pending_requests: status.map_or(0, |s| s.pending_requests),
            request_mode: self.request_mode,
            request_lifetime: self.request_lifetime,
            byzantine: self.byzantine.clone(),
            peers_in_touch: status.map_or(0, |s| s.peers_in_touch),
            quorum: status.map_or(self.committee.quorum(), |s| s.quorum),
        }
    }

    /// What `/healthz` says.
    pub(crate) fn health(&self) -> quorum::Health {
        let touch = self
            .metrics
            .latest()
            .map(|snapshot| quorum::InTouch::of(&snapshot.status));
        quorum::Health::of(touch, self.started.elapsed(), self.committee.n())
    }
}

/// A running node. Dropping it does not stop the node; call
/// [`NodeHandle::shutdown`].
pub struct NodeHandle {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    height: watch::Receiver<SeqNum>,
    consensus: JoinHandle<Result<(), StorageError>>,
    tasks: Vec<JoinHandle<()>>,
    transport: Transport,
    listen: SocketAddr,
    metrics: Option<SocketAddr>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeHandle({} on {})", self.shared.id, self.listen)
    }
}

impl NodeHandle {
    /// The node's status.
    pub fn status(&self) -> NodeStatus {
        self.shared.status()
    }

    /// The QUIC address the node listens on.
    pub fn listen_address(&self) -> SocketAddr {
        self.listen
    }

    /// The HTTP metrics address, if any.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// Prometheus text of the node's metrics.
    pub fn render_metrics(&self) -> String {
        self.shared.metrics.render(&self.transport.stats())
    }

    /// Waits until the node has committed at least `height`.
    pub async fn wait_for_height(&mut self, height: SeqNum) {
        while *self.height.borrow_and_update() < height {
            if self.height.changed().await.is_err() {
                return;
            }
        }
    }

    /// Runs until the consensus task stops (shutdown or a storage failure).
    pub async fn wait(&mut self) -> Result<(), StorageError> {
        match (&mut self.consensus).await {
            Ok(result) => result,
            Err(_) => Ok(()),
        }
    }

    /// Stops every task and closes the endpoint.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.consensus.await;
        for task in &self.tasks {
            task.abort();
        }
        self.transport.shutdown().await;
    }
}

/// Starts a node from its configuration; `application`, if given, receives
/// committed blocks from height `deliver_from` on. Must run inside a
/// multi-threaded tokio runtime.
pub async fn start(
    config: NodeConfig,
    application: Option<(Box<dyn Application>, SeqNum)>,
) -> Result<NodeHandle, StartError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let committee = config.cluster.committee.clone();
    let identity = StoreIdentity::new(config.key.public(), &committee, config.cluster.protocol);
    let storage = DiskStorage::open_for(&config.data_dir.join("bftd.redb"), &identity)?;
    let recovered = storage.recover()?;
    let started = Instant::now();
    let setup = ReplicaSetup {
        id: config.id,
        key: config.key.clone(),
        committee: committee.clone(),
        config: config.protocol.clone(),
        blocks: Arc::new(storage.clone()),
    };
    let replica = Replica::new(setup, recovered, started.elapsed())?;
    #[cfg(feature = "byzantine")]
    let adversary = byzantine_adversary(&config)?;
    #[cfg(not(feature = "byzantine"))]
    if let Some(behaviour) = &config.byzantine {
        return Err(StartError::Byzantine {
            behaviour: behaviour.clone(),
            reason:
                "this bftd was built without the `byzantine` feature (testnets build it with it)",
        });
    }

    let shared = Arc::new(Shared {
        metrics: NodeMetrics::default(),
        committee: committee.clone(),
        request_mode: config.protocol.request_mode,
        limits: MessageLimits::of(&config.protocol),
        request_lifetime: config.protocol.request_lifetime,
        reply_queue: config.clients.reply_queue,
        reply_queue_bytes: config.clients.reply_queue_bytes,
        subscriber_stall: std::time::Duration::from_millis(config.clients.subscriber_stall_ms),
        id: config.id.0,
        byzantine: config.byzantine.clone(),
        started,
        transport: Mutex::new(None),
        fatal: Mutex::new(None),
    });
    let metrics_listener = match config.metrics {
        Some(address) => Some(
            http::bind(address)
                .await
                .map_err(|source| StartError::Metrics { address, source })?,
        ),
        None => None,
    };
    let metrics_address = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let peers = committee
        .public_keys()
        .into_iter()
        .zip(&config.cluster.addresses)
        .enumerate()
        .map(|(id, (key, address))| Peer {
            id: bftd_protocol::NodeId(id as u16),
            address: *address,
            key,
        })
        .collect();
    let mut transport_config =
        TransportConfig::new(config.id, config.key.clone(), config.listen, peers);
    transport_config.max_client_connections = 1024;
    // A client frame is one request: the cluster's request limit plus the
    // envelope, not the peers' 64 MiB.
    transport_config.max_client_frame_bytes =
        crate::client_api::max_client_frame_bytes(config.protocol.max_request_bytes);
    let (transport, frames, client_connections) = Transport::start(transport_config).await?;
    *shared.transport.lock().unwrap_or_else(|e| e.into_inner()) = Some(transport.clone());
    let listen = transport.local_address();

    let (inputs_tx, inputs) = mpsc::channel::<Input>(INPUT_QUEUE);
    let (height_tx, height) = watch::channel(storage.last_height());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (writer, steps) = mpsc::channel(STEP_QUEUE);
    let worker = durable::Worker {
        storage: storage.clone(),
        transport: transport.clone(),
        shared: shared.clone(),
        height: height_tx,
        runtime: tokio::runtime::Handle::current(),
        steps,
    };
    std::thread::Builder::new()
        .name(format!("bftd-durable-{}", config.id.0))
        .spawn(move || worker.run())
        .map_err(StartError::Thread)?;
    #[allow(unused_mut)]
    let mut consensus = Consensus::new(
        replica,
        shared.clone(),
        inputs,
        writer,
        shutdown_rx,
        started,
    );
    #[cfg(feature = "byzantine")]
    {
        consensus.adversary = adversary;
    }
    let consensus = tokio::spawn(consensus.run());
    let mut tasks = vec![
        tokio::spawn(ingress::run(frames, inputs_tx.clone(), shared.clone())),
        tokio::spawn(clients::accept(
            client_connections,
            inputs_tx,
            shared.clone(),
            storage.clone(),
            height.clone(),
        )),
    ];
    if let Some(listener) = metrics_listener {
        tasks.push(tokio::spawn(http::serve(listener, shared.clone())));
    }
    if let Some((application, from)) = application {
        tasks.push(tokio::spawn(follow(
            application,
            from,
            storage,
            height.clone(),
        )));
    }
    tracing::info!(
        node = config.id.0,
        n = committee.n(),
        f = committee.f(),
        %listen,
        metrics = ?metrics_address,
        mode = ?config.protocol.request_mode,
        "node started"
    );
    Ok(NodeHandle {
        shared,
        shutdown,
        height,
        consensus,
        tasks,
        transport,
        listen,
        metrics: metrics_address,
    })
}

/// Feeds the application every committed block from `from` on, in order,
/// reading from storage at its own pace: a slow application never holds
/// consensus back, and no queue grows.
async fn follow(
    application: Box<dyn Application>,
    from: SeqNum,
    storage: DiskStorage,
    mut height: watch::Receiver<SeqNum>,
) {
    let application = Arc::new(Mutex::new(application));
    let mut next = from.max(SeqNum(1));
    loop {
        let last = *height.borrow_and_update();
        while next <= last {
            let storage = storage.clone();
            let application = application.clone();
            let start = next;
            let done = tokio::task::spawn_blocking(move || {
                let blocks = storage.blocks_from(start, 64).unwrap_or_default();
                let mut app = application.lock().unwrap_or_else(|e| e.into_inner());
                let mut next = start;
                for (block, duplicates) in blocks {
                    app.deliver(&block, &duplicates);
                    next = block.height().next();
                }
                next
            })
            .await;
            match done {
                Ok(advanced) if advanced > next => next = advanced,
                _ => return,
            }
        }
        if height.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(feature = "byzantine")]
fn byzantine_adversary(
    config: &NodeConfig,
) -> Result<Option<bftd_protocol::byzantine::Adversary>, StartError> {
    use bftd_protocol::byzantine::{Adversary, Behaviour};
    let Some(text) = &config.byzantine else {
        return Ok(None);
    };
    let behaviour: Behaviour = text.parse().map_err(|_| StartError::Byzantine {
        behaviour: text.clone(),
        reason: "unknown; see `bftnet up --help` for the list",
    })?;
    // Colluders never talk: bftnet writes the list of colluding ids into
    // each colluder's node file, and each derives the same fork from it.
    let colluders = config.colluders.clone();
    Ok(Some(Adversary::new(
        behaviour,
        config.id,
        config.key.clone(),
        config.cluster.committee.clone(),
        colluders,
        u64::from(config.id.0),
    )))
}

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

mod admission;
mod application;
mod clients;
mod consensus;
mod durable;
mod fetch;
#[cfg(feature = "grpc")]
mod grpc;
mod http;
mod ingress;
mod intercept;
pub mod metrics;
mod quorum;

use crate::client_api::NodeStatus;
use crate::config::NodeConfig;
use crate::storage::{DiskStorage, StorageOptions, StoreIdentity};
use crate::transport::{Peer, Transport, TransportConfig, TransportError, TransportStats};
use application::{Feed, Snapshotting};
use bftd_protocol::{
    BlockSource, CommittedBlock, Committee, MessageLimits, Replica, ReplicaError, ReplicaSetup,
    RequestMode, SeqNum, Storage, StorageError,
};
use consensus::{Consensus, Input};
pub use intercept::{Emission, Intercept};
use metrics::NodeMetrics;
use std::future::Future;
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

    /// Whether this application takes snapshots of its state and restores
    /// them (design notes §48). One that does can follow a node that
    /// prunes blocks (`[storage] retain_blocks`) or jumps past blocks its
    /// peers pruned: when the blocks it needs next are gone, it is restored
    /// from a snapshot and fed from the height after it. One that does
    /// not needs every block from where it starts, and its node never
    /// jumps.
    fn takes_snapshots(&self) -> bool {
        false
    }

    /// The state after the last block delivered, as bytes that depend on
    /// the delivered blocks alone: every honest node's application must
    /// give the same bytes at the same height (sorted maps, no times,
    /// addresses or random seeds), because a node trusts a snapshot it
    /// did not take only when f+1 nodes signed the same bytes. Called
    /// between deliveries, after every height that is a multiple of
    /// `[storage] snapshot_every`. At most 16 GiB.
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Replaces the state with `state`: a snapshot taken after the block
    /// at `height`, by this node's application or by f+1 others'. The next
    /// block delivered is `height + 1`. An error is logged and the restore
    /// is tried again later.
    fn restore(&mut self, height: SeqNum, state: &[u8]) -> Result<(), String> {
        let _ = (height, state);
        Err("this application does not restore snapshots".into())
    }
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
    /// The gRPC address could not be bound.
    #[error("cannot listen for gRPC on {address} (the node file's [grpc] listen): {source}")]
    Grpc {
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
    /// The node has no store: never created, or its data directory is
    /// missing or not mounted. Starting on a new empty store would forget
    /// every vote the node signed, so it must be created explicitly.
    #[error(
        "no store at {}: a new node's store is created once, with `bftd init --config FILE` \
         (or `bftd run --init --config FILE` at its first start). If this node ran before, \
         its data directory is missing or not mounted: starting it on an empty store would \
         forget the votes it signed, and it could sign conflicting ones. Mount the data \
         directory (or restore it), or, only for a node that never ran, create the store.",
        path.display()
    )]
    NoStore {
        /// The store file looked for.
        path: std::path::PathBuf,
    },
    /// `bftd init` for a node that already has a store.
    #[error("a store already exists at {}: nothing to initialise (`bftd run` uses it)", path.display())]
    StoreExists {
        /// The store file.
        path: std::path::PathBuf,
    },
    /// The application's snapshot directory could not be opened.
    #[error("{0}")]
    Snapshots(#[from] crate::snapshots::SnapshotStoreError),
    /// The durability worker thread could not be started.
    #[error("cannot start the storage thread: {0}")]
    Thread(std::io::Error),
    /// The node file asks for a byzantine behaviour, which the operator's
    /// `bftd` does not have.
    #[error(
        "byzantine = \"{behaviour}\" in the node file: this bftd never lies; byzantine \
         behaviours are a test instrument, the separate `bftd-byzantine` binary that bftnet \
         runs for the nodes it makes byzantine. Remove the `byzantine` setting."
    )]
    Byzantine {
        /// The behaviour given.
        behaviour: String,
    },
}

/// A start-up error as the operator should read it: the node file and
/// the field in it to fix, then what went wrong and what to do.
/// `node_file` is the file `config` was loaded from.
pub fn explain_start_error(
    node_file: &std::path::Path,
    config: &NodeConfig,
    error: &StartError,
) -> String {
    use crate::transport::TransportError;
    let listen = || {
        format!(
            "listen = \"{}\"{}",
            config.listen,
            if config.cluster.address(config.id) == Some(config.listen) {
                " (this node's cluster-file address: `listen` is not set)"
            } else {
                ""
            }
        )
    };
    let (field, hint) = match error {
        StartError::Transport(TransportError::AddressInUse { .. }) => (
            listen(),
            "another process has this UDP port: is this node already running? Stop it, or \
             choose another port (in the cluster file too, if peers dial it)",
        ),
        StartError::Transport(TransportError::Bind { .. }) => (
            listen(),
            "the address must be one of this host's: behind NAT or on a cloud host whose \
             public address is not on an interface, set listen = \"0.0.0.0:PORT\" and keep \
             the public address in the cluster file",
        ),
        StartError::Metrics { address, source } => (
            format!("metrics = \"{address}\""),
            if source.kind() == std::io::ErrorKind::AddrNotAvailable {
                "the address must be one of this host's: behind NAT or on a cloud host, use \
                 0.0.0.0:PORT or the private address (and keep the port firewalled: /status and \
                 /evidence are public there)"
            } else {
                "another process has this TCP port: is this node already running? Choose a free \
                 port, or remove `metrics`"
            },
        ),
        StartError::DataDir { .. }
        | StartError::NoStore { .. }
        | StartError::StoreExists { .. } => {
            (format!("data_dir = \"{}\"", config.data_dir.display()), "")
        }
        StartError::Byzantine { behaviour } => (format!("byzantine = \"{behaviour}\""), ""),
        _ => return format!("{}: {error}", node_file.display()),
    };
    let hint = if hint.is_empty() {
        String::new()
    } else {
        format!("; {hint}")
    };
    format!("{}: {field}: {error}{hint}", node_file.display())
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
    /// A client connection that sends nothing this long (and has no
    /// subscription delivering blocks) is closed (`[connections]
    /// client_idle_timeout_ms`).
    pub client_idle_timeout: std::time::Duration,
    /// Store reads for subscribers that may run at once, node-wide
    /// (`[clients] subscription_reads`).
    pub subscription_read_slots: Arc<tokio::sync::Semaphore>,
    /// Bytes of old blocks served to subscribers, node-wide (`[clients]
    /// history_bytes_per_second`).
    pub history: Mutex<fetch::TokenBucket>,
    pub id: u16,
    pub byzantine: Option<String>,
    /// When the node started (the replica's clock starts here too).
    pub started: Instant,
    transport: Mutex<Option<Transport>>,
    /// Set by the durability worker when storage fails.
    fatal: Mutex<Option<String>>,
    /// How much of this node's clients' work may be in the cluster at once
    /// (`[clients] in_flight_bytes`; `admission.rs`).
    pub admission: admission::Admission,
    /// Client checks that verified: request signatures (client-signed
    /// mode; met again in the pre-prepare after a request's arrival) and
    /// grants (connection-authenticated mode; one per client and voucher,
    /// seen in every request of theirs).
    pub client_checks: Mutex<bftd_protocol::ClientCheckCache>,
    /// The embedded application's snapshots, served to peers; `None`
    /// without an application that takes them.
    pub snapshots: Option<Arc<crate::snapshots::SnapshotStore>>,
}

impl Shared {
    /// Prometheus text of the node's metrics.
    pub(crate) fn render_metrics(&self, transport: &TransportStats) -> String {
        self.metrics.render(transport, self.admission.in_use())
    }

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
            first_height: self
                .metrics
                .first_height
                .load(std::sync::atomic::Ordering::Relaxed),
            needs_snapshot: status.is_some_and(|s| s.needs_snapshot),
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
    /// The other tasks, by name.
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    transport: Transport,
    listen: SocketAddr,
    metrics: Option<SocketAddr>,
    grpc: Option<SocketAddr>,
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

    /// The gRPC address, if any (`[grpc] listen`).
    pub fn grpc_address(&self) -> Option<SocketAddr> {
        self.grpc
    }

    /// Prometheus text of the node's metrics.
    pub fn render_metrics(&self) -> String {
        self.shared.render_metrics(&self.transport.stats())
    }

    /// Waits until the node has committed at least `height`.
    pub async fn wait_for_height(&mut self, height: SeqNum) {
        while *self.height.borrow_and_update() < height {
            if self.height.changed().await.is_err() {
                return;
            }
        }
    }

    /// Runs until the consensus task stops (shutdown or a storage failure)
    /// or any task panics. A panic is an error (so `bftd` exits non-zero
    /// and a supervisor restarts it), never a clean stop.
    pub async fn wait(&mut self) -> Result<(), NodeStopped> {
        loop {
            let other = std::future::poll_fn(|cx| {
                for (index, (_, task)) in self.tasks.iter_mut().enumerate() {
                    if let std::task::Poll::Ready(joined) = std::pin::Pin::new(task).poll(cx) {
                        return std::task::Poll::Ready((index, joined));
                    }
                }
                std::task::Poll::Pending
            });
            tokio::select! {
                joined = &mut self.consensus => return consensus_ended(joined),
                (index, joined) = other => {
                    let (task, _) = self.tasks.swap_remove(index);
                    if let Err(error) = joined {
                        if error.is_panic() {
                            return Err(NodeStopped::Panicked { task, message: panic_message(error) });
                        }
                    }
                }
            }
        }
    }

    /// Stops every task (each awaited, not just aborted: an aborted task
    /// drops its connections and its store handle only when it next runs)
    /// and closes the endpoint. The UDP port stays bound for a few seconds
    /// more while QUIC drains the closed connections (RFC 9000 §10.2): a
    /// node restarted in the same process right after retries its start.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.consensus.await;
        for (_, task) in &self.tasks {
            task.abort();
        }
        for (_, task) in self.tasks {
            let _ = task.await;
        }
        self.transport.shutdown().await;
    }
}

/// Starts a node from its configuration; `application`, if given, receives
/// committed blocks from height `deliver_from` on. Must run inside a
/// multi-threaded tokio runtime. A node file with a `byzantine` setting is
/// refused: this node never lies.
pub async fn start(
    config: NodeConfig,
    application: Option<(Box<dyn Application>, SeqNum)>,
) -> Result<NodeHandle, StartError> {
    if let Some(behaviour) = &config.byzantine {
        return Err(StartError::Byzantine {
            behaviour: behaviour.clone(),
        });
    }
    start_with(config, application, None).await
}

/// [`start`] with an [`Intercept`] between the replica and the network:
/// how the testnets' `bftd-byzantine` binary makes a node lie.
pub async fn start_with(
    config: NodeConfig,
    application: Option<(Box<dyn Application>, SeqNum)>,
    intercept: Option<Box<dyn Intercept>>,
) -> Result<NodeHandle, StartError> {
    if let (Some(behaviour), None) = (&config.byzantine, &intercept) {
        return Err(StartError::Byzantine {
            behaviour: behaviour.clone(),
        });
    }
    let path = store_path(&config);
    match path.try_exists() {
        Ok(true) => {}
        Ok(false) => return Err(StartError::NoStore { path }),
        Err(source) => {
            return Err(StartError::DataDir {
                path: config.data_dir.clone(),
                source,
            })
        }
    }
    let committee = config.cluster.committee.clone();
    let identity = store_identity(&config);
    let options = StorageOptions {
        retain_blocks: config.storage.retain_blocks,
        ..StorageOptions::default()
    };
    let storage = DiskStorage::open_with(&path, Some(&identity), &options)?;
    if let Some((_, from)) = &application {
        // Held before consensus runs: no checkpoint prunes what the
        // application has yet to be fed (the feeding task moves it).
        storage.hold_from((*from).max(SeqNum(1)));
    }
    let recovered = storage.recover()?;
    let started = Instant::now();
    let setup = ReplicaSetup {
        id: config.id,
        key: config.key.clone(),
        committee: committee.clone(),
        config: bftd_protocol::Config {
            // An embedded application's state is not in the blocks: a jump
            // past pruned history skips blocks it never saw, which only a
            // snapshot of its state makes up for.
            jump_past_pruned: config.protocol.jump_past_pruned
                && application
                    .as_ref()
                    .is_none_or(|(application, _)| application.takes_snapshots()),
            ..config.protocol.clone()
        },
        blocks: Arc::new(storage.clone()),
    };
    let replica = Replica::new(setup, recovered, started.elapsed())?;
    let snapshots = match &application {
        Some((application, _)) if application.takes_snapshots() => Some(Arc::new(
            crate::snapshots::SnapshotStore::open(&config.data_dir)?,
        )),
        _ => None,
    };

    let shared = Arc::new(Shared {
        metrics: NodeMetrics::default(),
        committee: committee.clone(),
        request_mode: config.protocol.request_mode,
        limits: MessageLimits::of(&config.protocol),
        request_lifetime: config.protocol.request_lifetime,
        reply_queue: config.clients.reply_queue,
        reply_queue_bytes: config.clients.reply_queue_bytes,
        subscriber_stall: std::time::Duration::from_millis(config.clients.subscriber_stall_ms),
        client_idle_timeout: config.connections.client_idle_timeout,
        subscription_read_slots: Arc::new(tokio::sync::Semaphore::new(
            config.clients.subscription_reads,
        )),
        history: Mutex::new(fetch::TokenBucket::new(
            config.clients.history_bytes_per_second,
            config.clients.history_bytes_per_second,
            std::time::Instant::now(),
        )),
        id: config.id.0,
        byzantine: intercept.as_ref().and(config.byzantine.clone()),
        started,
        transport: Mutex::new(None),
        fatal: Mutex::new(None),
        client_checks: Mutex::new(bftd_protocol::ClientCheckCache::default()),
        snapshots: snapshots.clone(),
        admission: admission::Admission::new(
            config.clients.in_flight_bytes,
            config.protocol.request_mode,
        ),
    });
    if let Some(newest) = snapshots.as_ref().and_then(|store| store.newest()) {
        let height = newest.manifest.height.0;
        tracing::info!(height, "application snapshot held");
        shared
            .metrics
            .snapshot_height
            .store(height, std::sync::atomic::Ordering::Relaxed);
    }
    shared.metrics.first_height.store(
        storage.first_height().0,
        std::sync::atomic::Ordering::Relaxed,
    );
    let metrics_listener = match config.metrics {
        Some(address) => Some(
            http::bind(address)
                .await
                .map_err(|source| StartError::Metrics { address, source })?,
        ),
        None => None,
    };
    let metrics_address = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    #[cfg(feature = "grpc")]
    let grpc_listener = match config.grpc {
        Some(address) => Some(
            grpc::bind(address)
                .await
                .map_err(|source| StartError::Grpc { address, source })?,
        ),
        None => None,
    };
    #[cfg(feature = "grpc")]
    let grpc_address = grpc_listener.as_ref().and_then(|l| l.local_addr().ok());
    #[cfg(not(feature = "grpc"))]
    let grpc_address: Option<SocketAddr> = match config.grpc {
        Some(address) => {
            return Err(StartError::Grpc {
                address,
                source: std::io::Error::other(
                    "this bftd was built without the `grpc` cargo feature",
                ),
            })
        }
        None => None,
    };
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
    transport_config.connections = config.connections;
    // Forwards wait in their sender's requests lane, behind everyone's
    // consensus messages (see `ingress`).
    transport_config.lane_of = ingress::lanes(shared.limits, config.cluster.committee.n());
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
    let cache = Arc::new(Mutex::new(durable::ReceiptCache::new(
        durable::RECEIPT_CACHE_BYTES,
    )));
    let (loads, load_queue) = mpsc::channel(durable::LOAD_QUEUE);
    let worker = durable::Worker {
        storage: storage.clone(),
        transport: transport.clone(),
        shared: shared.clone(),
        height: height_tx,
        runtime: tokio::runtime::Handle::current(),
        steps,
        cache: cache.clone(),
        loads,
    };
    let loader = durable::Loader {
        storage: storage.clone(),
        shared: shared.clone(),
        cache,
        loads: load_queue,
    };
    std::thread::Builder::new()
        .name(format!("bftd-durable-{}", config.id.0))
        .spawn(move || worker.run())
        .map_err(StartError::Thread)?;
    std::thread::Builder::new()
        .name(format!("bftd-receipts-{}", config.id.0))
        .spawn(move || loader.run())
        .map_err(StartError::Thread)?;
    let (checkpoint_tx, checkpoint) = watch::channel(replica.stable_checkpoint().clone());
    let (fetches, fetch_queue) = mpsc::channel(fetch::FETCH_QUEUE);
    let fetch_server = fetch::FetchServer {
        storage: storage.clone(),
        transport: transport.clone(),
        shared: shared.clone(),
        signer: Arc::new(bftd_protocol::signer::Signer::new(
            config.id,
            config.key.clone(),
            Default::default(),
        )),
        fetch_max_blocks: config.protocol.fetch_max_blocks,
        rate: config.peers.fetch_bytes_per_second,
        burst: config.peers.fetch_burst_bytes,
        checkpoint,
        requests: fetch_queue,
    };
    let mut consensus = Consensus::new(
        replica,
        shared.clone(),
        inputs,
        writer,
        shutdown_rx,
        started,
    );
    consensus.intercept = intercept;
    consensus.checkpoint = Some(checkpoint_tx);
    let consensus = tokio::spawn(consensus.run());
    let mut tasks = vec![
        (
            "ingress",
            tokio::spawn(ingress::run(
                frames,
                inputs_tx.clone(),
                fetches,
                shared.clone(),
            )),
        ),
        ("fetch", tokio::spawn(fetch_server.run())),
        (
            "clients",
            tokio::spawn(clients::accept(
                client_connections,
                inputs_tx.clone(),
                shared.clone(),
                storage.clone(),
                height.clone(),
            )),
        ),
    ];
    if let Some(listener) = metrics_listener {
        tasks.push(("http", tokio::spawn(http::serve(listener, shared.clone()))));
    }
    #[cfg(feature = "grpc")]
    if let Some(listener) = grpc_listener {
        let serve = grpc::serve(
            listener,
            inputs_tx,
            shared.clone(),
            storage.clone(),
            height.clone(),
        );
        tasks.push(("grpc", tokio::spawn(serve)));
    }
    if let Some((application, from)) = application {
        let snapshotting = shared.snapshots.clone().map(|store| Snapshotting {
            store,
            every: config.storage.snapshot_every,
            id: config.id,
            key: config.key.clone(),
            cluster: config.cluster.clone(),
            shared: shared.clone(),
        });
        let first = storage.clone();
        let counted = shared.clone();
        let held = storage.clone();
        let fed_metric = shared.clone();
        let feed = Feed {
            application,
            read: Arc::new(move |from| storage.blocks_from(from, 64)),
            first_height: Arc::new(move || first.first_height()),
            read_error: Box::new(move || {
                counted
                    .metrics
                    .application_read_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }),
            fed: Box::new(move |next| {
                held.hold_from(next);
                fed_metric
                    .metrics
                    .application_height
                    .store(next.0 - 1, std::sync::atomic::Ordering::Relaxed);
            }),
            snapshotting,
        };
        tasks.push((
            "application",
            tokio::spawn(application::follow(feed, from, height.clone())),
        ));
    }
    tracing::info!(
        node = config.id.0,
        n = committee.n(),
        f = committee.f(),
        %listen,
        metrics = ?metrics_address,
        grpc = ?grpc_address,
        mode = ?config.protocol.request_mode,
        signatures = bftd_crypto::signature_backend(),
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
        grpc: grpc_address,
    })
}

/// The node's store file.
pub fn store_path(config: &NodeConfig) -> std::path::PathBuf {
    config.data_dir.join("bftd.redb")
}

fn store_identity(config: &NodeConfig) -> StoreIdentity {
    StoreIdentity::new(
        config.key.public(),
        &config.cluster.committee,
        config.cluster.protocol,
    )
}

/// Creates a new node's store (`bftd init`), bound to its key, committee
/// and consensus settings, and returns its path. Refuses if one exists.
/// [`start`] never creates a store: a missing one is an error, so a data
/// directory that is gone or not mounted cannot silently become a new,
/// empty node that forgot what it signed.
pub fn init(config: &NodeConfig) -> Result<std::path::PathBuf, StartError> {
    let path = store_path(config);
    if path.exists() {
        return Err(StartError::StoreExists { path });
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    drop(DiskStorage::open_for(&path, &store_identity(config))?);
    Ok(path)
}

/// Reads a stopped node's whole store back and verifies it (`bftd check`):
/// redb's page checksums, every batch record's checksum, every block's
/// certificate against the cluster file and its link to the block below,
/// and the state a restart recovers.
pub fn check_store(
    config: &NodeConfig,
) -> Result<crate::storage::StoreCheck, crate::storage::CheckError> {
    DiskStorage::check_path(
        &store_path(config),
        &store_identity(config),
        &config.cluster.committee,
    )
}

/// Why a node stopped by itself.
#[derive(Debug, thiserror::Error)]
pub enum NodeStopped {
    /// Storage failed: the node can no longer promise that what it signs
    /// is durable.
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// A task panicked (a bug): the node cannot go on.
    #[error("the {task} task panicked: {message}")]
    Panicked {
        /// Which task.
        task: &'static str,
        /// The panic's message.
        message: String,
    },
}

/// What the consensus task's end means for the node: a panic is a
/// failure, and so is a cancellation (only `shutdown` may stop it, and
/// `shutdown` does not wait here).
fn consensus_ended(
    joined: Result<Result<(), StorageError>, tokio::task::JoinError>,
) -> Result<(), NodeStopped> {
    match joined {
        Ok(result) => Ok(result?),
        Err(error) => Err(NodeStopped::Panicked {
            task: "consensus",
            message: panic_message(error),
        }),
    }
}

/// The message of a panicked (or cancelled) task.
fn panic_message(error: tokio::task::JoinError) -> String {
    if !error.is_panic() {
        return error.to_string();
    }
    let payload = error.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic in the consensus task is a failure of the node (so `bftd`
    /// exits non-zero and a supervisor restarts it), never a clean stop.
    #[tokio::test]
    async fn a_panic_in_consensus_is_a_failure() {
        let joined = tokio::spawn(async {
            if std::hint::black_box(true) {
                panic!("boom");
            }
            Ok::<(), StorageError>(())
        })
        .await;
        let ended = consensus_ended(joined);
        assert!(
            ended.is_err(),
            "a panicked consensus task ended as {ended:?}"
        );
        assert!(format!("{}", ended.unwrap_err()).contains("boom"));
    }
}

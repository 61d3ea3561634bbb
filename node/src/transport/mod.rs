//! The QUIC transport: authenticated, long-lived connections between the
//! nodes of a committee, and client connections on the same endpoint.
//!
//! - **Identity.** TLS 1.3 certificates carry each node's and client's
//!   Ed25519 identity key; dialers pin the key the cluster file names for
//!   the address, listeners admit a peer only if its key is a committee
//!   member's (`tls.rs` explains why no PKI is involved).
//! - **Endpoint.** One quinn endpoint per node serves both ALPNs,
//!   `bftd-peer/1` and `bftd-client/1`, tuned for loopback throughput
//!   (`endpoint.rs`).
//! - **Peers.** One connection per pair, dialed by the lower id, frames on a
//!   long-lived unidirectional stream per direction, a bounded outbound queue
//!   per peer (`peer.rs`). Frames received go into per-peer, per-lane
//!   queues, each peer bounded in bytes and each lane in frames, and the
//!   consumer takes them fairly ([`Inbound`], `inbound.rs`).
//! - **Hostile input.** Frames are checked against `max_frame_bytes` (from
//!   clients: the much smaller `max_client_frame_bytes`) before
//!   allocation, stream counts are limited by QUIC itself, handshakes are
//!   bounded in time and in number, and each rejection is counted in
//!   [`TransportStats`].
//!
//! ```no_run
//! # async fn example(config: bftd::transport::TransportConfig) -> Result<(), bftd::transport::TransportError> {
//! use bftd::transport::{Bytes, Transport};
//! let (transport, mut frames, _clients) = Transport::start(config).await?;
//! transport.broadcast(Bytes::from_static(b"hello"));
//! while let Some(frame) = frames.recv().await {
//!     println!("{} bytes from {}", frame.frame.len(), frame.from);
//! }
//! # Ok(()) }
//! ```

// Bytes from the network must never panic the node (STYLE.md 6).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

mod accept;
mod client;
mod config;
mod endpoint;
mod error;
mod frame;
mod inbound;
mod limits;
mod peer;
mod stats;
#[cfg(test)]
mod tests;
mod tls;

pub use bytes::Bytes;
pub use client::{
    abandoned_initials, connect_client, connect_client_on, connect_client_with, idle_clients,
    ClientConnection, ClientEndpoint, ClientLink, IdleClients,
};
pub use config::{Peer, TransportConfig};
pub use error::{ConfigError, SendError, TransportError};
pub use frame::{FrameReceiver, FrameSender};
pub use inbound::{Inbound, Lane, LaneOf};
pub use limits::{
    ConnectionLimits, DEFAULT_CLIENT_IDLE_TIMEOUT, DEFAULT_HANDSHAKES_BEFORE_RETRY,
    DEFAULT_MAX_CLIENTS_PER_ADDRESS, DEFAULT_MAX_CLIENT_CONNECTIONS, DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
};
pub use stats::TransportStats;
pub use tls::{ALPN_CLIENT, ALPN_PEER};

use bftd_crypto::PublicKey;
use bftd_protocol::NodeId;
use peer::PeerLink;
use stats::Counters;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

/// Default limit on one frame: far above any honest protocol message (a
/// full batch is well under this), and small enough that a few in flight
/// cannot exhaust memory.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Default limit on one frame a client sends: one request of the default
/// `max_request_bytes` (64 KiB) and its envelope. Nodes derive theirs from
/// the cluster's `max_request_bytes` (see
/// `client_api::max_client_frame_bytes`). Frames to clients (blocks) keep
/// the peers' limit.
pub const DEFAULT_MAX_CLIENT_FRAME_BYTES: usize = 64 * 1024 + 1024;
/// Default per-peer outbound queue bound, in frames.
pub const DEFAULT_PEER_QUEUE_FRAMES: usize = 4096;
/// Default per-peer outbound queue bound, in bytes (an empty queue takes
/// one frame of any size). 32 MiB is many times the batches the pipeline
/// has in flight (2 MiB with the defaults, design notes §38), so a backup
/// that keeps up should not meet it; a peer that reads slowly or not at all
/// pins no more. It was two maximal frames (128 MiB): under the forward
/// flood of issue 10, encoded frames waiting in the primary's outbound
/// queues were 224 MB of its 640 MB.
pub const DEFAULT_PEER_QUEUE_BYTES: usize = 32 * 1024 * 1024;
/// Default bound of each inbound lane, in frames, all peers together
/// (shared out equally).
pub const DEFAULT_INBOUND_CAPACITY: usize = 4096;
/// Default bound of all peers' inbound frames, in bytes, shared out
/// equally (each peer gets at least one maximal frame).
pub const DEFAULT_INBOUND_BYTES: usize = 4 * DEFAULT_MAX_FRAME_BYTES;

/// A handshake that has not finished in this time is abandoned.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Accepted client connections waiting for the consumer to take them.
const CLIENT_BACKLOG: usize = 64;
/// How long `shutdown` waits for connections to close gracefully.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// QUIC application error codes this transport closes connections and
/// streams with.
pub(crate) mod close_code {
    use quinn::VarInt;
    /// The node is shutting down.
    pub(crate) const SHUTDOWN: VarInt = VarInt::from_u32(0);
    /// A newer connection from the same peer replaced this one.
    pub(crate) const REPLACED: VarInt = VarInt::from_u32(1);
    /// The key is not allowed on this ALPN, or a peer dialed the wrong way.
    pub(crate) const UNAUTHORIZED: VarInt = VarInt::from_u32(2);
    /// A frame's length prefix exceeded `max_frame_bytes`.
    pub(crate) const FRAME_TOO_LARGE: VarInt = VarInt::from_u32(3);
    /// Too many clients, or the node is not taking new ones fast enough.
    pub(crate) const BUSY: VarInt = VarInt::from_u32(4);
    /// A stream the role does not allow, or a receiver that stopped reading.
    pub(crate) const STREAM_STOPPED: VarInt = VarInt::from_u32(5);
    /// Closed by the application.
    pub(crate) const CLOSED: VarInt = VarInt::from_u32(6);
    /// A client sent nothing for `client_idle_timeout_ms`.
    pub(crate) const IDLE: VarInt = VarInt::from_u32(7);
}

/// A frame received from a peer.
///
/// Its bytes count against its sender's inbound byte budget, and it holds a
/// place in its sender's lane, until this value (or what remains of it
/// after moving `frame` out) is dropped.
#[derive(Debug)]
pub struct PeerFrame {
    /// The sender, authenticated by the connection's TLS handshake.
    pub from: NodeId,
    /// The frame's bytes, exactly as sent.
    pub frame: Bytes,
    _accounting: Option<inbound::Accounting>,
}

impl PeerFrame {
    /// A frame not tied to a transport (for tests and simulations).
    pub fn new(from: NodeId, frame: Bytes) -> PeerFrame {
        PeerFrame {
            from,
            frame,
            _accounting: None,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding one of these locks leaves plain data
    // in a consistent state; keep going rather than cascade the panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by the transport's handle and its tasks.
pub(crate) struct Shared {
    me: NodeId,
    max_frame_bytes: usize,
    max_client_frame_bytes: usize,
    counters: Arc<Counters>,
    links: BTreeMap<NodeId, Arc<PeerLink>>,
    committee: HashMap<PublicKey, NodeId>,
    inbound: Arc<inbound::InboundQueues>,
    clients: Mutex<Option<mpsc::Sender<ClientConnection>>>,
    limits: ConnectionLimits,
    client_slots: Arc<Semaphore>,
    clients_per_address: Arc<limits::PerAddress>,
    handshake_slots: Arc<Semaphore>,
    handshakes_per_address: Arc<limits::PerAddress>,
    /// Committee members' IP addresses, and the handshake slots reserved for
    /// attempts from them (see `accept::accept_loop`).
    peer_ips: HashSet<IpAddr>,
    peer_handshake_slots: Arc<Semaphore>,
    endpoint: Mutex<Option<quinn::Endpoint>>,
    /// Every task of this transport; `None` once shut down.
    tasks: Mutex<Option<JoinSet<()>>>,
    shut_down: AtomicBool,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("me", &self.me)
            .field("peers", &self.links.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Spawns a task that shutdown will abort. After shutdown, does nothing.
    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Some(tasks) = lock(&self.tasks).as_mut() {
            // Reap finished tasks so the set does not grow with every
            // connection ever made.
            while tasks.try_join_next().is_some() {}
            tasks.spawn(task);
        }
    }

    /// Stops everything without waiting: closes the endpoint, aborts the
    /// tasks, drops connection handles and channel senders. Returns the
    /// endpoint and the aborted tasks, for `shutdown` to wait on; `None` if
    /// already stopped.
    fn stop(&self) -> Option<(quinn::Endpoint, JoinSet<()>)> {
        let endpoint = lock(&self.endpoint).take()?;
        self.shut_down.store(true, Ordering::Release);
        endpoint.close(close_code::SHUTDOWN, b"shutting down");
        let mut tasks = lock(&self.tasks).take().unwrap_or_default();
        tasks.abort_all();
        for link in self.links.values() {
            link.clear();
        }
        self.inbound.close();
        lock(&self.clients).take();
        Some((endpoint, tasks))
    }
}

/// Stops the transport when the last [`Transport`] handle is dropped (the
/// tasks hold `Shared` too, so its own drop would never run).
#[derive(Debug)]
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// A running transport. Cheap to clone; the transport stops when the last
/// clone is dropped or on [`Transport::shutdown`].
#[derive(Debug, Clone)]
pub struct Transport {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
    local_address: SocketAddr,
}

impl Transport {
    /// Binds the listen address, starts dialing the peers with higher ids and
    /// accepting the others and clients. Returns the handle, the inbound
    /// frames from all peers (taken fairly, see [`Inbound`]), and newly
    /// connected clients.
    pub async fn start(
        config: TransportConfig,
    ) -> Result<(Transport, Inbound, mpsc::Receiver<ClientConnection>), TransportError> {
        config.validate()?;
        let counters = Arc::new(Counters::default());
        let identity = tls::certified_key(&config.key)?;
        let mut server =
            quinn::ServerConfig::with_crypto(Arc::new(tls::server_crypto(&identity, &counters)?));
        server
            .transport_config(endpoint::transport_config(
                endpoint::LISTENER_STREAMS,
                endpoint::SEGMENTATION_OFFLOAD,
            ))
            // Connection attempts not yet taken by the accept loop.
            .max_incoming(2 * config.connections.max_handshakes);
        let endpoint = endpoint::endpoint(
            endpoint::bind_socket(config.listen)?,
            Some(server),
            Some(&config.key),
        )?;
        let local_address = endpoint
            .local_addr()
            .map_err(|source| TransportError::Endpoint { source })?;

        let mut links = BTreeMap::new();
        let mut queues = Vec::new();
        for peer in config.peers.iter().filter(|peer| peer.id != config.me) {
            let (link, queue) = PeerLink::new(
                peer.id,
                peer.address,
                peer.key,
                config.peer_queue_frames,
                config.peer_queue_bytes,
            );
            links.insert(peer.id, link.clone());
            queues.push((link, queue));
        }
        // Each peer's share of the bounds (so the whole stays what it was
        // with one shared queue: deeper queues would only add latency under
        // overload), and never less than one maximal frame, so any frame fits.
        let others = config.peers.len().saturating_sub(1).max(1);
        let inbound = inbound::InboundQueues::new(
            links.keys().copied(),
            (config.inbound_bytes / others).max(config.max_frame_bytes),
            (config.inbound_capacity / others).max(1),
            config.lane_of,
            counters.clone(),
        );
        let inbound_receiver = Inbound::new(inbound.clone());
        let (clients, clients_receiver) = mpsc::channel(CLIENT_BACKLOG);
        let shared = Arc::new(Shared {
            me: config.me,
            max_frame_bytes: config.max_frame_bytes,
            max_client_frame_bytes: config.max_client_frame_bytes.min(config.max_frame_bytes),
            counters: counters.clone(),
            links,
            committee: config
                .peers
                .iter()
                .map(|peer| (peer.key, peer.id))
                .collect(),
            inbound,
            clients: Mutex::new(Some(clients)),
            limits: config.connections,
            client_slots: Arc::new(Semaphore::new(config.connections.max_client_connections)),
            clients_per_address: limits::PerAddress::new(
                config.connections.max_clients_per_address,
            ),
            handshake_slots: Arc::new(Semaphore::new(config.connections.max_handshakes)),
            handshakes_per_address: limits::PerAddress::new(
                config.connections.max_handshakes_per_address,
            ),
            peer_ips: config
                .peers
                .iter()
                .filter(|peer| peer.id != config.me)
                .map(|peer| peer.address.ip())
                .collect(),
            peer_handshake_slots: Arc::new(Semaphore::new(2 * config.peers.len())),
            endpoint: Mutex::new(Some(endpoint.clone())),
            tasks: Mutex::new(Some(JoinSet::new())),
            shut_down: AtomicBool::new(false),
        });

        // Every fallible step before the first spawn: tasks hold `shared`, and
        // until `Owner` exists nothing would stop them.
        let mut dialers = Vec::new();
        for (link, _) in queues.iter().filter(|(link, _)| config.me < link.id) {
            let crypto = tls::client_crypto(&identity, link.key, ALPN_PEER, &counters)?;
            let mut dial = quinn::ClientConfig::new(Arc::new(crypto));
            dial.transport_config(endpoint::transport_config(
                endpoint::PEER_DIALER_STREAMS,
                endpoint::SEGMENTATION_OFFLOAD,
            ));
            dialers.push((link.clone(), dial));
        }
        let owner = Arc::new(Owner(shared.clone()));
        for (link, queue) in queues {
            shared.spawn(peer::run_writer(shared.clone(), link, queue));
        }
        for (link, dial) in dialers {
            shared.spawn(peer::run_dialer(
                shared.clone(),
                link,
                endpoint.clone(),
                dial,
            ));
        }
        shared.spawn(accept::accept_loop(shared.clone(), endpoint));
        tracing::info!(me = %config.me, address = %local_address, "transport listening");
        let transport = Transport {
            _owner: owner,
            shared,
            local_address,
        };
        Ok((transport, inbound_receiver, clients_receiver))
    }

    /// The address the endpoint is bound to.
    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    /// Queues `frame` for peer `to` without waiting. A full queue, an unknown
    /// peer or an oversized frame drops the frame, counts it, and says why.
    pub fn send(&self, to: NodeId, frame: Bytes) -> Result<(), SendError> {
        if self.shared.shut_down.load(Ordering::Acquire) {
            return Err(SendError::ShutDown);
        }
        if frame.len() > self.shared.max_frame_bytes {
            self.shared.counters.oversized_sent.increment();
            return Err(SendError::FrameTooLarge {
                length: frame.len(),
                max_frame_bytes: self.shared.max_frame_bytes,
            });
        }
        let Some(link) = self.shared.links.get(&to) else {
            self.shared.counters.dropped_unknown_peer.increment();
            return Err(SendError::UnknownPeer { to });
        };
        self.enqueue(link, frame)
    }

    fn enqueue(&self, link: &PeerLink, frame: Bytes) -> Result<(), SendError> {
        link.enqueue(frame).inspect_err(|error| {
            if let SendError::QueueFull { .. } = error {
                self.shared.counters.dropped_queue_full.increment();
            }
        })
    }

    /// Queues `frame` for every peer except this node, without waiting.
    /// Clones of `frame` share its bytes. Drops are counted per peer.
    pub fn broadcast(&self, frame: Bytes) {
        if self.shared.shut_down.load(Ordering::Acquire) {
            return;
        }
        if frame.len() > self.shared.max_frame_bytes {
            self.shared.counters.oversized_sent.increment();
            return;
        }
        for link in self.shared.links.values() {
            let _ = self.enqueue(link, frame.clone());
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransportStats {
        self.shared.counters.snapshot()
    }

    /// Closes every connection and stops every task, then waits (briefly)
    /// for the closes to reach the peers. Queued frames are discarded. The
    /// UDP port is free again once the [`ClientConnection`]s handed out are
    /// dropped too. Idempotent.
    pub async fn shutdown(&self) {
        let Some((endpoint, mut tasks)) = self.shared.stop() else {
            return;
        };
        // Aborted tasks drop their connection handles when they finish.
        while tasks.join_next().await.is_some() {}
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, endpoint.wait_idle()).await;
        tracing::info!(me = %self.shared.me, "transport shut down");
    }
}

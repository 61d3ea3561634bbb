//! The QUIC transport: authenticated, long-lived connections between the
//! nodes of a committee, and client connections on the same endpoint.
//!
//! - **Identity.** TLS 1.3 certificates carry each node's and client's
//!   Ed25519 identity key; dialers pin the key the cluster file names for
//!   the address, listeners admit a peer only if its key is a committee
//!   member's ([`tls`] explains why no PKI is involved).
//! - **Endpoint.** One quinn endpoint per node serves both ALPNs,
//!   `bftd-peer/1` and `bftd-client/1`, tuned for loopback throughput
//!   ([`endpoint`]).
//! - **Peers.** One connection per pair, dialed by the lower id, frames on a
//!   long-lived unidirectional stream per direction, a bounded outbound queue
//!   per peer ([`peer`]). Every frame received from any peer goes into one
//!   bounded channel, [`PeerFrame`]s, bounded in frames and in bytes.
//! - **Hostile input.** Frames are checked against `max_frame_bytes` before
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

mod client;
mod endpoint;
mod frame;
mod peer;
mod stats;
#[cfg(test)]
mod tests;
mod tls;

pub use bytes::Bytes;
pub use client::{connect_client, connect_client_with, ClientConnection, ClientLink};
pub use frame::{FrameReceiver, FrameSender};
pub use stats::TransportStats;
pub use tls::{ALPN_CLIENT, ALPN_PEER};

use bftd_crypto::{KeyPair, PublicKey};
use bftd_protocol::NodeId;
use peer::PeerLink;
use stats::Counters;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// Default limit on one frame: far above any honest protocol message (a
/// full batch is well under this), and small enough that a few in flight
/// cannot exhaust memory.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Default per-peer outbound queue bound, in frames.
pub const DEFAULT_PEER_QUEUE_FRAMES: usize = 4096;
/// Default per-peer outbound queue bound, in bytes: two maximal frames.
pub const DEFAULT_PEER_QUEUE_BYTES: usize = 2 * DEFAULT_MAX_FRAME_BYTES;
/// Default bound of the inbound channel, in frames.
pub const DEFAULT_INBOUND_CAPACITY: usize = 4096;
/// Default bound of the inbound channel, in bytes.
pub const DEFAULT_INBOUND_BYTES: usize = 4 * DEFAULT_MAX_FRAME_BYTES;
/// Default limit on concurrently open client connections. Each may make
/// us buffer up to 2.5 MB (QUIC flow control), so 512 caps that at 1.25 GB.
pub const DEFAULT_MAX_CLIENT_CONNECTIONS: usize = 512;

/// A handshake that has not finished in this time is abandoned.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Incoming handshakes in progress at once; beyond this, new connection
/// attempts are refused, so a flood of half-open handshakes costs bounded
/// memory and CPU.
const MAX_CONCURRENT_HANDSHAKES: usize = 64;
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
}

/// One committee member, as the cluster file lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The member's index.
    pub id: NodeId,
    /// Where it listens.
    pub address: SocketAddr,
    /// Its identity key, pinned in TLS.
    pub key: PublicKey,
}

/// Everything the transport needs to start.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// This node's id.
    pub me: NodeId,
    /// This node's identity key; must be the key `peers` lists for `me`.
    pub key: KeyPair,
    /// Address to listen on for peers and clients.
    pub listen: SocketAddr,
    /// The whole committee, including this node.
    pub peers: Vec<Peer>,
    /// Largest frame sent or accepted, in bytes; at most `u32::MAX`.
    pub max_frame_bytes: usize,
    /// Per-peer outbound queue bound, in frames.
    pub peer_queue_frames: usize,
    /// Per-peer outbound queue bound, in bytes. A frame larger than this is
    /// always dropped.
    pub peer_queue_bytes: usize,
    /// Inbound channel bound, in frames.
    pub inbound_capacity: usize,
    /// Inbound channel bound, in bytes of frames not yet dropped by the
    /// consumer; at least `max_frame_bytes`.
    pub inbound_bytes: usize,
    /// Client connections open at once; more are refused.
    pub max_client_connections: usize,
}

impl TransportConfig {
    /// A configuration with the default limits.
    pub fn new(me: NodeId, key: KeyPair, listen: SocketAddr, peers: Vec<Peer>) -> TransportConfig {
        TransportConfig {
            me,
            key,
            listen,
            peers,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            peer_queue_frames: DEFAULT_PEER_QUEUE_FRAMES,
            peer_queue_bytes: DEFAULT_PEER_QUEUE_BYTES,
            inbound_capacity: DEFAULT_INBOUND_CAPACITY,
            inbound_bytes: DEFAULT_INBOUND_BYTES,
            max_client_connections: DEFAULT_MAX_CLIENT_CONNECTIONS,
        }
    }

    /// Checks the configuration; [`Transport::start`] calls this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let nonzero = [
            ("max_frame_bytes", self.max_frame_bytes),
            ("peer_queue_frames", self.peer_queue_frames),
            ("peer_queue_bytes", self.peer_queue_bytes),
            ("inbound_capacity", self.inbound_capacity),
            ("max_client_connections", self.max_client_connections),
        ];
        if let Some((field, _)) = nonzero.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::Zero { field });
        }
        if u32::try_from(self.max_frame_bytes).is_err() {
            return Err(ConfigError::MaxFrameBytes {
                max_frame_bytes: self.max_frame_bytes,
            });
        }
        if self.inbound_bytes < self.max_frame_bytes || self.inbound_bytes > Semaphore::MAX_PERMITS
        {
            return Err(ConfigError::InboundBytes {
                inbound_bytes: self.inbound_bytes,
                max_frame_bytes: self.max_frame_bytes,
            });
        }
        let mut ids = HashMap::new();
        let mut keys = HashMap::new();
        for peer in &self.peers {
            if ids.insert(peer.id, ()).is_some() {
                return Err(ConfigError::DuplicatePeer { id: peer.id });
            }
            if peer.key.validate().is_err() {
                return Err(ConfigError::InvalidPeerKey { id: peer.id });
            }
            if let Some(first) = keys.insert(peer.key, peer.id) {
                return Err(ConfigError::DuplicateKey {
                    first,
                    second: peer.id,
                });
            }
        }
        match self.peers.iter().find(|peer| peer.id == self.me) {
            None => Err(ConfigError::MissingSelf { me: self.me }),
            Some(peer) if peer.key != self.key.public() => {
                Err(ConfigError::WrongKey { me: self.me })
            }
            Some(_) => Ok(()),
        }
    }
}

/// A problem in a [`TransportConfig`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A limit that must be positive is zero.
    #[error("`{field}` must be greater than zero")]
    Zero {
        /// The field.
        field: &'static str,
    },
    /// Frames carry a `u32` length prefix.
    #[error("max_frame_bytes {max_frame_bytes} does not fit the u32 length prefix")]
    MaxFrameBytes {
        /// The configured value.
        max_frame_bytes: usize,
    },
    /// The inbound byte bound must admit one maximal frame (and fit a
    /// semaphore).
    #[error("inbound_bytes {inbound_bytes} must be at least max_frame_bytes {max_frame_bytes}")]
    InboundBytes {
        /// The configured bound.
        inbound_bytes: usize,
        /// The frame limit it must admit.
        max_frame_bytes: usize,
    },
    /// Two committee entries share an id.
    #[error("node {id} is listed twice")]
    DuplicatePeer {
        /// The repeated id.
        id: NodeId,
    },
    /// Two committee entries share a key, so a connection could not be
    /// attributed to one node.
    #[error("nodes {first} and {second} have the same key")]
    DuplicateKey {
        /// The first node with the key.
        first: NodeId,
        /// The second node with the key.
        second: NodeId,
    },
    /// A committee key is not a valid, non-weak Ed25519 key.
    #[error("node {id} has an invalid key")]
    InvalidPeerKey {
        /// The node.
        id: NodeId,
    },
    /// `me` is not in the committee.
    #[error("this node ({me}) is not in the committee")]
    MissingSelf {
        /// Our id.
        me: NodeId,
    },
    /// Our key pair is not the key the committee lists for `me`.
    #[error("the key pair does not match the committee's key for {me}")]
    WrongKey {
        /// Our id.
        me: NodeId,
    },
}

/// Errors of the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The configuration is invalid.
    #[error("invalid transport configuration: {source}")]
    Config {
        /// What is wrong.
        #[from]
        source: ConfigError,
    },
    /// Another process (or transport) already uses the listen address.
    #[error("address {address} is already in use")]
    AddressInUse {
        /// The address.
        address: SocketAddr,
    },
    /// Creating or binding the UDP socket failed.
    #[error("cannot bind {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// quinn could not start an endpoint on the socket.
    #[error("cannot start the QUIC endpoint: {source}")]
    Endpoint {
        /// The OS error.
        source: std::io::Error,
    },
    /// Building the self-signed certificate failed.
    #[error("cannot build the TLS certificate: {source}")]
    Certificate {
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// Building the TLS configuration failed.
    #[error("TLS configuration: {source}")]
    Tls {
        /// rustls's error.
        source: rustls::Error,
    },
    /// The TLS configuration is not usable for QUIC.
    #[error("TLS configuration unusable for QUIC: {source}")]
    QuicCrypto {
        /// quinn's error.
        source: quinn::crypto::rustls::NoInitialCipherSuite,
    },
    /// A connection attempt could not start.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// The address dialed.
        address: SocketAddr,
        /// quinn's error.
        source: quinn::ConnectError,
    },
    /// The handshake did not finish within the handshake timeout.
    #[error("handshake with {address} timed out")]
    HandshakeTimeout {
        /// The address dialed.
        address: SocketAddr,
    },
    /// The connection failed or was closed (including a refused handshake).
    #[error("connection lost: {source}")]
    Connection {
        /// quinn's error.
        source: quinn::ConnectionError,
    },
    /// Writing to a stream failed.
    #[error("write failed: {source}")]
    Write {
        /// quinn's error.
        source: quinn::WriteError,
    },
    /// Reading from a stream failed.
    #[error("read failed: {source}")]
    Read {
        /// quinn's error.
        source: quinn::ReadError,
    },
    /// The stream is already finished or reset.
    #[error("stream already closed")]
    StreamClosed,
    /// A frame longer than the limit, sent or announced by a length prefix.
    #[error("frame of {length} bytes exceeds the limit of {max_frame_bytes}")]
    FrameTooLarge {
        /// The frame's (announced) length.
        length: u64,
        /// The limit.
        max_frame_bytes: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended after {received} of {expected} bytes")]
    TruncatedFrame {
        /// Bytes expected.
        expected: usize,
        /// Bytes received before the end.
        received: usize,
    },
}

/// Why [`Transport::send`] dropped a frame. The frame is gone either way and
/// the drop is counted; callers usually just ignore this.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    /// The peer's outbound queue is full (frames or bytes).
    #[error("outbound queue to {to} is full")]
    QueueFull {
        /// The destination.
        to: NodeId,
    },
    /// The destination is not a peer (unknown id, or this node).
    #[error("{to} is not a peer")]
    UnknownPeer {
        /// The destination.
        to: NodeId,
    },
    /// The frame exceeds `max_frame_bytes`.
    #[error("frame of {length} bytes exceeds the limit of {max_frame_bytes}")]
    FrameTooLarge {
        /// The frame's length.
        length: usize,
        /// The limit.
        max_frame_bytes: usize,
    },
    /// The transport was shut down.
    #[error("the transport is shut down")]
    ShutDown,
}

/// A frame received from a peer.
///
/// Its bytes count against the inbound byte bound until this value is
/// dropped (or destructured).
#[derive(Debug)]
pub struct PeerFrame {
    /// The sender, authenticated by the connection's TLS handshake.
    pub from: NodeId,
    /// The frame's bytes, exactly as sent.
    pub frame: Bytes,
    _accounting: Option<OwnedSemaphorePermit>,
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
    counters: Arc<Counters>,
    links: BTreeMap<NodeId, Arc<PeerLink>>,
    committee: HashMap<PublicKey, NodeId>,
    inbound: Mutex<Option<mpsc::Sender<PeerFrame>>>,
    inbound_bytes: Arc<Semaphore>,
    clients: Mutex<Option<mpsc::Sender<ClientConnection>>>,
    client_slots: Arc<Semaphore>,
    handshake_slots: Arc<Semaphore>,
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

    pub(crate) fn inbound(&self) -> Option<mpsc::Sender<PeerFrame>> {
        lock(&self.inbound).clone()
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
        lock(&self.inbound).take();
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
    /// frames from all peers, and newly connected clients.
    pub async fn start(
        config: TransportConfig,
    ) -> Result<
        (
            Transport,
            mpsc::Receiver<PeerFrame>,
            mpsc::Receiver<ClientConnection>,
        ),
        TransportError,
    > {
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
            .max_incoming(2 * MAX_CONCURRENT_HANDSHAKES);
        let endpoint = endpoint::endpoint(endpoint::bind_socket(config.listen)?, Some(server))?;
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
        let (inbound, inbound_receiver) = mpsc::channel(config.inbound_capacity);
        let (clients, clients_receiver) = mpsc::channel(CLIENT_BACKLOG);
        let shared = Arc::new(Shared {
            me: config.me,
            max_frame_bytes: config.max_frame_bytes,
            counters: counters.clone(),
            links,
            committee: config
                .peers
                .iter()
                .map(|peer| (peer.key, peer.id))
                .collect(),
            inbound: Mutex::new(Some(inbound)),
            inbound_bytes: Arc::new(Semaphore::new(config.inbound_bytes)),
            clients: Mutex::new(Some(clients)),
            client_slots: Arc::new(Semaphore::new(config.max_client_connections)),
            handshake_slots: Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES)),
            endpoint: Mutex::new(Some(endpoint.clone())),
            tasks: Mutex::new(Some(JoinSet::new())),
            shut_down: AtomicBool::new(false),
        });

        for (link, queue) in queues {
            shared.spawn(peer::run_writer(shared.clone(), link.clone(), queue));
            if config.me < link.id {
                let crypto = tls::client_crypto(&identity, link.key, ALPN_PEER, &counters)?;
                let mut dial = quinn::ClientConfig::new(Arc::new(crypto));
                dial.transport_config(endpoint::transport_config(
                    endpoint::PEER_DIALER_STREAMS,
                    endpoint::SEGMENTATION_OFFLOAD,
                ));
                shared.spawn(peer::run_dialer(
                    shared.clone(),
                    link,
                    endpoint.clone(),
                    dial,
                ));
            }
        }
        shared.spawn(accept_loop(shared.clone(), endpoint));
        tracing::info!(me = %config.me, address = %local_address, "transport listening");
        let transport = Transport {
            _owner: Arc::new(Owner(shared.clone())),
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

/// Accepts connection attempts, each handshake in its own task, at most
/// `MAX_CONCURRENT_HANDSHAKES` at once.
async fn accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        match shared.handshake_slots.clone().try_acquire_owned() {
            Ok(slot) => shared.spawn(handle_incoming(shared.clone(), incoming, slot)),
            Err(_) => {
                shared.counters.handshake_busy.increment();
                incoming.refuse();
            }
        }
    }
}

/// Completes one incoming handshake and routes the connection by ALPN.
async fn handle_incoming(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    slot: OwnedSemaphorePermit,
) {
    let address = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(error) => {
            shared.counters.handshake_failed.increment();
            tracing::debug!(%address, %error, "incoming connection failed");
            return;
        }
    };
    // Dropping `connecting` on timeout abandons the connection.
    let connection = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            shared.counters.handshake_failed.increment();
            tracing::debug!(%address, %error, "incoming handshake failed");
            return;
        }
        Err(_) => {
            shared.counters.handshake_failed.increment();
            tracing::debug!(%address, "incoming handshake timed out");
            return;
        }
    };
    drop(slot);
    let (Some(key), Some(alpn)) = (
        tls::connection_key(&connection),
        tls::connection_alpn(&connection),
    ) else {
        // Our verifier and ALPN list guarantee both; be safe anyway.
        refuse(&shared, &connection, "no identity or ALPN");
        return;
    };
    if alpn == ALPN_PEER {
        match shared.committee.get(&key) {
            // The lower id dials (see `peer`): only lower ids may connect to us.
            Some(&id) if id < shared.me => {
                if let Some(link) = shared.links.get(&id) {
                    peer::run_connection(shared.clone(), link.clone(), connection).await;
                }
            }
            Some(&id) => {
                tracing::warn!(peer = %id, "peer dialed us, but the lower id dials: refused");
                refuse(&shared, &connection, "the lower id dials");
            }
            None => {
                tracing::warn!(%address, key = %key.short(), "non-committee key on the peer ALPN: refused");
                refuse(&shared, &connection, "not a committee key");
            }
        }
    } else if alpn == ALPN_CLIENT {
        accept_client(&shared, connection, key);
    } else {
        refuse(&shared, &connection, "unknown ALPN");
    }
}

fn refuse(shared: &Shared, connection: &quinn::Connection, reason: &'static str) {
    shared.counters.handshake_rejected.increment();
    connection.close(close_code::UNAUTHORIZED, reason.as_bytes());
}

/// Hands a client connection to the consumer, or refuses it when the client
/// limit is reached or the consumer is not keeping up.
fn accept_client(shared: &Shared, connection: quinn::Connection, key: PublicKey) {
    let Ok(slot) = shared.client_slots.clone().try_acquire_owned() else {
        shared.counters.clients_refused.increment();
        connection.close(close_code::BUSY, b"too many clients");
        return;
    };
    let client = ClientConnection::new(
        key,
        connection.clone(),
        shared.max_frame_bytes,
        shared.counters.clone(),
        slot,
    );
    let sent = lock(&shared.clients)
        .as_ref()
        .map(|clients| clients.try_send(client).is_ok());
    if sent == Some(true) {
        shared.counters.client_connections.increment();
    } else {
        shared.counters.clients_refused.increment();
        connection.close(close_code::BUSY, b"node busy");
    }
}

//! Peer links: one long-lived connection per pair of nodes, a bounded
//! outbound queue per peer, a writer, and the dialer that reconnects.
//!
//! **Who dials.** The lower `NodeId` of a pair dials, the higher one only
//! accepts. Exactly one connection per pair exists by construction, with no
//! tie-breaking race to get wrong when both sides restart at once. The cost
//! is that after the *dialer* crashes, the acceptor relies on it to come
//! back and dial (it does, on start); after the *acceptor* stops, the
//! dialer notices and redials with backoff: by its close frame; after a
//! crash, by the stateless reset its restarted endpoint answers the old
//! connection's next packet with (keys derived from its identity, see
//! `endpoint.rs`), or by a dial alongside once the connection has been
//! silent for 4 s ([`run_watched`]); while it stays down, by the 10 s
//! idle timeout. A new connection from a peer replaces the old one (the old
//! one may be a half-dead leftover of a peer that restarted).
//!
//! **Queues.** Each peer has one outbound queue bounded both in frames and in
//! bytes. `send` never waits: when either bound is reached the frame is
//! dropped and counted, and PBFT's retransmission and view change recover.
//! While a peer is unreachable its queue fills and then drops; frames queued
//! before a reconnect are delivered on the new connection.
//!
//! **Streams.** Each side sends on one unidirectional stream per connection,
//! opened by its writer, so frames from one sender arrive in order for as
//! long as a connection lasts.

use super::frame::{write_frames, FrameReceiver, KeepAlive};
use super::{close_code, SendError, Shared, TransportError};
use bftd_crypto::PublicKey;
use bftd_protocol::NodeId;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// First wait before redialing a peer; doubles on each failure.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest wait between dials: a restarted peer is found within this.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A connection that has received nothing for this long is suspect: both
/// ends send a keep-alive every 2 s, so a live peer is never this silent.
/// The dialer then dials alongside (see [`run_watched`]).
const SILENCE: Duration = Duration::from_secs(4);
/// How often a dialer looks at its connection for silence.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// The handshake timeout of a dial alongside a silent connection: short, so
/// a peer that is down is tried again every ~1.5 s and found soon after it
/// is back.
const REDIAL_HANDSHAKE: Duration = Duration::from_secs(1);
/// A writer takes queued frames into one write until they reach this size.
pub(crate) const WRITE_BYTES: usize = 1024 * 1024;

/// What we keep about one peer.
#[derive(Debug)]
pub(crate) struct PeerLink {
    pub(crate) id: NodeId,
    pub(crate) address: SocketAddr,
    pub(crate) key: PublicKey,
    queue: mpsc::Sender<Bytes>,
    /// Bytes currently in `queue`; reserved before a frame enters it.
    queued_bytes: AtomicUsize,
    queue_bytes_limit: usize,
    /// The current connection, if any. The writer follows it.
    connection: watch::Sender<Option<quinn::Connection>>,
    ever_connected: AtomicBool,
}

impl PeerLink {
    /// A link and the receiving end of its queue (for the writer task).
    pub(crate) fn new(
        id: NodeId,
        address: SocketAddr,
        key: PublicKey,
        queue_frames: usize,
        queue_bytes: usize,
    ) -> (Arc<PeerLink>, mpsc::Receiver<Bytes>) {
        let (queue, receiver) = mpsc::channel(queue_frames);
        let link = PeerLink {
            id,
            address,
            key,
            queue,
            queued_bytes: AtomicUsize::new(0),
            queue_bytes_limit: queue_bytes,
            connection: watch::Sender::new(None),
            ever_connected: AtomicBool::new(false),
        };
        (Arc::new(link), receiver)
    }

    /// Queues a frame without waiting. The byte budget is reserved first
    /// with a compare-and-swap, so concurrent senders can never overshoot it.
    /// An empty queue takes any frame (the transport already refused those
    /// over the frame limit): the bound is for a backlog, and a state-transfer
    /// answer bigger than it must still go out, alone. So a peer that reads
    /// slowly, or not at all, pins at most the bound or one frame.
    pub(crate) fn enqueue(&self, frame: Bytes) -> Result<(), SendError> {
        let length = frame.len();
        let limit = self.queue_bytes_limit;
        let reserved =
            self.queued_bytes
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                    queued
                        .checked_add(length)
                        .filter(|total| *total <= limit || queued == 0)
                });
        if reserved.is_err() {
            return Err(SendError::QueueFull { to: self.id });
        }
        match self.queue.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.release(length);
                Err(SendError::QueueFull { to: self.id })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.release(length);
                Err(SendError::ShutDown)
            }
        }
    }

    fn release(&self, length: usize) {
        self.queued_bytes.fetch_sub(length, Ordering::AcqRel);
    }

    /// Makes `connection` the link's connection, closing any previous one.
    fn register(&self, connection: &quinn::Connection, shared: &Shared) {
        let previous = self.connection.send_replace(Some(connection.clone()));
        if let Some(previous) = previous {
            if previous.stable_id() != connection.stable_id() {
                previous.close(close_code::REPLACED, b"replaced by a newer connection");
            }
        }
        shared.counters.connections.increment();
        if self.ever_connected.swap(true, Ordering::Relaxed) {
            shared.counters.reconnects.increment();
        }
        tracing::info!(peer = %self.id, address = %connection.remote_address(), "peer connected");
    }

    /// Forgets `connection` if it is still the current one.
    fn unregister(&self, connection: &quinn::Connection) {
        let removed = self.connection.send_if_modified(|current| {
            let same = current
                .as_ref()
                .is_some_and(|current| current.stable_id() == connection.stable_id());
            if same {
                *current = None;
            }
            same
        });
        if removed {
            tracing::info!(peer = %self.id, reason = ?connection.close_reason(), "peer disconnected");
        }
    }

    /// Drops the current connection handle (at shutdown), so nothing keeps
    /// the socket open.
    pub(crate) fn clear(&self) {
        self.connection.send_replace(None);
    }
}

/// Runs one established connection to `link`'s peer until it closes:
/// registers it, reads the peer's streams, then unregisters it.
pub(crate) async fn run_connection(
    shared: Arc<Shared>,
    link: Arc<PeerLink>,
    connection: quinn::Connection,
) {
    link.register(&connection, &shared);
    loop {
        tokio::select! {
            stream = connection.accept_uni() => match stream {
                Ok(recv) => {
                    let reader = FrameReceiver::new(
                        recv,
                        connection.clone(),
                        shared.max_frame_bytes,
                        shared.counters.clone(),
                        false,
                        KeepAlive::default(),
                    )
                    .refusing(shared.inbound.refuse());
                    if shared.shut_down.load(Ordering::Acquire) {
                        break;
                    }
                    shared.spawn(read_stream(shared.clone(), link.id, reader));
                }
                Err(_) => break,
            },
            // Peers never use bidirectional streams; the listener's limit
            // allows one for clients, so reset it here.
            stream = connection.accept_bi() => match stream {
                Ok((mut send, mut recv)) => {
                    shared.counters.streams_refused.increment();
                    let _ = send.reset(close_code::STREAM_STOPPED);
                    let _ = recv.stop(close_code::STREAM_STOPPED);
                }
                Err(_) => break,
            },
        }
    }
    link.unregister(&connection);
}

/// Reads one peer stream, handing frames to the consumer. Waiting for room
/// in this peer's inbound budget or lane stops reading this stream, which
/// stops QUIC flow-control credit: a slow consumer slows the peer down
/// instead of growing memory, and a peer that floods one lane slows only
/// itself.
async fn read_stream(shared: Arc<Shared>, from: NodeId, mut reader: FrameReceiver) {
    loop {
        let frame = match reader.recv().await {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(TransportError::FrameTooLarge {
                length,
                max_frame_bytes,
            }) => {
                tracing::warn!(peer = %from, length, max_frame_bytes,
                    "peer sent an oversized frame: connection closed");
                return;
            }
            Err(error) => {
                tracing::debug!(peer = %from, %error, "peer stream ended");
                return;
            }
        };
        if !shared.inbound.push(from, frame).await {
            return; // Shut down.
        }
    }
}

/// Moves frames from `link`'s queue to its current connection, following
/// the connection across reconnects.
pub(crate) async fn run_writer(
    shared: Arc<Shared>,
    link: Arc<PeerLink>,
    mut queue: mpsc::Receiver<Bytes>,
) {
    let mut current = link.connection.subscribe();
    loop {
        let connection = loop {
            if let Some(connection) = current.borrow_and_update().clone() {
                break connection;
            }
            if current.changed().await.is_err() {
                return;
            }
        };
        let mut send = tokio::select! {
            opened = connection.open_uni() => match opened {
                Ok(send) => send,
                Err(_) => {
                    // Dead connection: wait for its owner to replace it.
                    if current.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
            },
            changed = current.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        loop {
            tokio::select! {
                // Connection replaced or gone: start over on the new one.
                changed = current.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                frame = queue.recv() => {
                    let Some(frame) = frame else { return };
                    // Everything queued meanwhile goes in the same write.
                    let mut frames = vec![frame];
                    let mut length = frames.iter().map(Bytes::len).sum::<usize>();
                    while length < WRITE_BYTES {
                        let Ok(frame) = queue.try_recv() else { break };
                        length += frame.len();
                        frames.push(frame);
                    }
                    link.release(length);
                    let count = frames.len() as u64;
                    if let Err(error) = write_frames(&mut send, frames).await {
                        shared.counters.dropped_in_flight.add(count);
                        tracing::debug!(peer = %link.id, %error, "write failed");
                        break;
                    }
                    shared.counters.frames_out.add(count);
                    shared.counters.bytes_out.add(length as u64);
                }
            }
        }
    }
}

/// Dials `link`'s peer (we have the lower id) and keeps redialing with
/// exponential backoff, reset after each successful connection.
pub(crate) async fn run_dialer(
    shared: Arc<Shared>,
    link: Arc<PeerLink>,
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match dial(&endpoint, &config, link.address, super::HANDSHAKE_TIMEOUT).await {
            Ok(connection) => {
                backoff = BACKOFF_MIN;
                run_watched(&shared, &link, &endpoint, &config, connection).await;
            }
            Err(error) => {
                shared.counters.dial_failures.increment();
                tracing::debug!(peer = %link.id, address = %link.address, %error, "dial failed");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Runs a dialed connection until it closes, watching it for silence.
///
/// Why: when the peer crashes (no close frame) and restarts, our packets on
/// the old connection reach its new run, which answers them with a
/// stateless reset that closes the connection at once (see `endpoint.rs`).
/// But while the peer was down, nothing of ours was acknowledged, and QUIC
/// backs off its retransmissions exponentially: after a few seconds down,
/// our next packet, the one that would draw the reset, may be seconds
/// away, up to the idle timeout. So a connection that has received nothing
/// for [`SILENCE`] gets a new dial alongside, every ~1.5 s, with a short
/// handshake; it keeps working meanwhile (a peer merely slow to answer
/// loses nothing), and the first new connection that succeeds replaces it.
async fn run_watched(
    shared: &Arc<Shared>,
    link: &Arc<PeerLink>,
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    mut connection: quinn::Connection,
) {
    loop {
        let reading = run_connection(shared.clone(), link.clone(), connection.clone());
        tokio::pin!(reading);
        let mut heard = Heard::new(&connection);
        let replacement = loop {
            tokio::select! {
                () = &mut reading => return,
                () = tokio::time::sleep(WATCH_EVERY) => {}
            }
            if !heard.silent_for(&connection, SILENCE) {
                continue;
            }
            tokio::select! {
                // Closed meanwhile: the dialer's own loop redials.
                () = &mut reading => return,
                dialed = dial(endpoint, config, link.address, REDIAL_HANDSHAKE) => {
                    if let Ok(new) = dialed {
                        break new;
                    }
                }
            }
        };
        shared.counters.silent_redials.increment();
        tracing::info!(peer = %link.id, silent_s = SILENCE.as_secs(),
            "peer silent: a new connection replaces the old one");
        // Registering the new connection closes the old one.
        connection = replacement;
    }
}

/// When a connection last received a datagram, as seen by polling.
struct Heard {
    datagrams: u64,
    at: tokio::time::Instant,
}

impl Heard {
    fn new(connection: &quinn::Connection) -> Heard {
        Heard {
            datagrams: connection.stats().udp_rx.datagrams,
            at: tokio::time::Instant::now(),
        }
    }

    /// Whether nothing arrived on `connection` for `silence` (or more).
    fn silent_for(&mut self, connection: &quinn::Connection, silence: Duration) -> bool {
        let datagrams = connection.stats().udp_rx.datagrams;
        if datagrams != self.datagrams {
            self.datagrams = datagrams;
            self.at = tokio::time::Instant::now();
        }
        self.at.elapsed() >= silence
    }
}

/// One connection attempt, bounded by `handshake_timeout`.
pub(crate) async fn dial(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    address: SocketAddr,
    handshake_timeout: Duration,
) -> Result<quinn::Connection, TransportError> {
    let connecting = endpoint
        .connect_with(config.clone(), address, super::tls::SERVER_NAME)
        .map_err(|source| TransportError::Connect { address, source })?;
    match tokio::time::timeout(handshake_timeout, connecting).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(source)) => Err(TransportError::Connection { source }),
        Err(_) => Err(TransportError::HandshakeTimeout { address }),
    }
}

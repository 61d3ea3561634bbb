//! Transport counters: atomics updated on the hot path, read as one
//! [`TransportStats`] snapshot (which the metrics exporter turns into
//! Prometheus counters).

use std::sync::atomic::{AtomicU64, Ordering};

/// One monotonically increasing counter.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn increment(&self) {
        self.add(1);
    }

    pub(crate) fn add(&self, amount: u64) {
        // Relaxed: counters order nothing; a snapshot may be a few events
        // behind, which a scrape every few seconds cannot tell.
        self.0.fetch_add(amount, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// The live counters, shared by every task of one transport.
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: Counter,)*
        }

        /// A snapshot of a transport's counters. Every field counts events
        /// since the transport started and only ever grows.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct TransportStats {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> TransportStats {
                TransportStats { $($name: self.$name.get(),)* }
            }
        }
    };
}

counters! {
    /// Frames received from peers and queued for the consumer.
    frames_in,
    /// Payload bytes of `frames_in` (length prefixes excluded).
    bytes_in,
    /// Frames written to a peer's stream.
    frames_out,
    /// Payload bytes of `frames_out`.
    bytes_out,
    /// Frames received from clients.
    client_frames_in,
    /// Frames sent to clients.
    client_frames_out,
    /// Frames dropped because the peer's outbound queue was full (in frames
    /// or in bytes).
    dropped_queue_full,
    /// Frames dropped because the destination is not a peer (unknown id, or
    /// ourselves).
    dropped_unknown_peer,
    /// Frames lost because the connection failed while they were being
    /// written; the protocol's retransmission recovers them.
    dropped_in_flight,
    /// Frames refused on receive because their length prefix exceeded
    /// `max_frame_bytes`; the sender's connection was closed.
    oversized_received,
    /// Of `oversized_received`, those from clients (over
    /// `max_client_frame_bytes`).
    client_oversized_received,
    /// Peer frames refused on receive, before queueing or decoding, because
    /// they are bigger than any honest message of their kind (a vote the
    /// size of a batch, a forward over the batch limits).
    oversized_for_kind,
    /// Frames refused on send because they exceed `max_frame_bytes`.
    oversized_sent,
    /// Certificates refused: not a well-formed Ed25519 certificate, a key
    /// other than the one pinned, a bad handshake signature, or (after the
    /// handshake) a key not allowed on the peer ALPN.
    handshake_rejected,
    /// Incoming handshakes that did not complete, for any reason (including
    /// the rejections above, timeouts and protocol errors).
    handshake_failed,
    /// Incoming connection attempts refused because too many handshakes
    /// were already in progress.
    handshake_busy,
    /// Connection attempts from addresses not yet validated, answered with
    /// a QUIC Retry because `handshakes_before_retry` handshakes were in
    /// progress; only a sender that receives the Retry can come back.
    handshakes_retried,
    /// Validated connection attempts refused because their IP address
    /// already had `max_handshakes_per_address` handshakes in progress.
    handshakes_refused_per_address,
    /// Outgoing dials to peers that failed (peer down, refused, timed out).
    dial_failures,
    /// Peer connections established (both directions).
    connections,
    /// Peer connections established to a peer we had been connected to
    /// before.
    reconnects,
    /// Peer connections replaced after they received nothing for 4 s (the
    /// peer crashed and restarted, or the path died) by a dial alongside.
    silent_redials,
    /// Client connections handed to the consumer.
    client_connections,
    /// Client connections refused: too many clients, or the consumer's
    /// channel was full.
    clients_refused,
    /// Client connections refused because their IP address already had
    /// `max_clients_per_address` open.
    clients_refused_per_address,
    /// Streams a peer or client opened that its role does not allow, reset
    /// on arrival.
    streams_refused,
}

//! Errors of the transport and of its configuration.

use bftd_protocol::NodeId;
use std::net::SocketAddr;

/// A problem in a [`TransportConfig`](super::TransportConfig).
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
    /// A limit is larger than the limit it is a part of.
    #[error("`{field}` ({value}) must not exceed `{bound_field}` ({bound})")]
    AboveBound {
        /// The field.
        field: &'static str,
        /// Its value.
        value: usize,
        /// The field it is a part of.
        bound_field: &'static str,
        /// That field's value.
        bound: usize,
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

/// Why [`Transport::send`](super::Transport::send) dropped a frame. The frame is gone either way and
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

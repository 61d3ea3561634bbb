//! The transport's configuration and its validation.

use super::{
    ConfigError, ConnectionLimits, DEFAULT_INBOUND_BYTES, DEFAULT_INBOUND_CAPACITY,
    DEFAULT_MAX_CLIENT_FRAME_BYTES, DEFAULT_MAX_FRAME_BYTES, DEFAULT_PEER_QUEUE_BYTES,
    DEFAULT_PEER_QUEUE_FRAMES,
};
use bftd_crypto::{KeyPair, PublicKey};
use bftd_protocol::NodeId;
use std::collections::HashMap;
use std::net::SocketAddr;
use tokio::sync::Semaphore;

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
    /// Largest frame accepted from a client, in bytes (capped at
    /// `max_frame_bytes`). A client frame is one request (or a subscription
    /// or status query), so this is a request's size plus its envelope: a
    /// client cannot make the node read, copy and decode megabytes to
    /// refuse them.
    pub max_client_frame_bytes: usize,
    /// Per-peer outbound queue bound, in frames.
    pub peer_queue_frames: usize,
    /// Per-peer outbound queue bound, in bytes. A frame that does not fit is
    /// dropped and counted, unless the queue is empty: an empty queue takes
    /// one frame of any size up to `max_frame_bytes`.
    pub peer_queue_bytes: usize,
    /// Bound of each inbound lane in frames, all peers together: each peer
    /// gets an equal share (at least one frame) of each lane.
    pub inbound_capacity: usize,
    /// Bound of inbound frames not yet dropped by the consumer, in bytes;
    /// at least `max_frame_bytes`. Each peer gets an equal share, and at
    /// least `max_frame_bytes`, so one peer cannot use the others' share.
    pub inbound_bytes: usize,
    /// Sorts received frames into lanes (see [`Inbound`](super::Inbound)).
    pub lane_of: super::LaneOf,
    /// Handshake and client connection slots (the node file's
    /// `[connections]`).
    pub connections: ConnectionLimits,
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
            max_client_frame_bytes: DEFAULT_MAX_CLIENT_FRAME_BYTES,
            peer_queue_frames: DEFAULT_PEER_QUEUE_FRAMES,
            peer_queue_bytes: DEFAULT_PEER_QUEUE_BYTES,
            inbound_capacity: DEFAULT_INBOUND_CAPACITY,
            inbound_bytes: DEFAULT_INBOUND_BYTES,
            lane_of: super::LaneOf::default(),
            connections: ConnectionLimits::default(),
        }
    }

    /// Checks the configuration; [`Transport::start`](super::Transport::start) calls this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let nonzero = [
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_client_frame_bytes", self.max_client_frame_bytes),
            ("peer_queue_frames", self.peer_queue_frames),
            ("peer_queue_bytes", self.peer_queue_bytes),
            ("inbound_capacity", self.inbound_capacity),
        ];
        if let Some((field, _)) = nonzero.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::Zero { field });
        }
        self.connections.validate()?;
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

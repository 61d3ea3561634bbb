//! The attacker as a committee member: node `attacker`'s key (bftnet
//! generated every key of its testnets), its listen address (its own bftd
//! does not run), and bftd's transport, so the honest nodes dial it and
//! take its frames as that node's, exactly as from a byzantine replica.

use super::Context;
use bftd::transport::{Bytes, Peer, Transport, TransportConfig};
use bftd_crypto::KeyPair;
use bftd_protocol::message::{Request, SignedRequest};
use bftd_protocol::signer::{SafetyState, Signer};
use bftd_protocol::{codec, NodeId, SeqNum, View, WireMessage};

/// A committee member's transport and signer, in the attacker's hands.
pub(super) struct Impostor {
    /// Its transport (the honest nodes with lower ids dial it).
    pub transport: Transport,
    /// Who it is.
    pub id: NodeId,
    /// Its key.
    pub key: KeyPair,
    /// The honest nodes it may send to.
    pub targets: Vec<NodeId>,
}

impl Impostor {
    /// Starts the transport as `context.attacker`.
    pub async fn start(context: &Context) -> Result<Impostor, String> {
        let id = context.attacker;
        let key = bftd::config::read_key(&context.layout.node_key(id))
            .map_err(|error| format!("node {id}'s key: {error}"))?;
        let peers: Vec<Peer> = context
            .cluster
            .committee
            .public_keys()
            .into_iter()
            .zip(&context.cluster.addresses)
            .enumerate()
            .map(|(index, (key, address))| Peer {
                id: NodeId(index as u16),
                address: *address,
                key,
            })
            .collect();
        let listen = context
            .state
            .node(id)
            .map_err(|error| error.to_string())?
            .listen;
        let config = TransportConfig::new(NodeId(id), key.clone(), listen, peers);
        let (transport, frames, clients) = Transport::start(config)
            .await
            .map_err(|error| format!("node {id}'s transport: {error}"))?;
        // Read and drop what the honest nodes send, so their queues to us
        // drain as they would to a replica that reads.
        tokio::spawn(async move {
            let mut frames = frames;
            let _clients = clients;
            while frames.recv().await.is_some() {}
        });
        Ok(Impostor {
            transport,
            id: NodeId(id),
            key,
            targets: context.honest.iter().map(|&id| NodeId(id)).collect(),
        })
    }

    /// A signer for messages that carry no vote.
    pub fn signer(&self) -> Signer {
        Signer::new(self.id, self.key.clone(), SafetyState::default())
    }

    /// A signer that may pre-prepare in `view` (this node must be its
    /// primary for the pre-prepares to be taken as the primary's).
    pub fn signer_in(&self, view: View) -> Signer {
        let state = SafetyState {
            view,
            ..SafetyState::default()
        };
        Signer::new(self.id, self.key.clone(), state)
    }

    /// Queues `message` for every target; returns the frame's size.
    pub fn broadcast(&self, message: &WireMessage) -> usize {
        let Ok(bytes) = codec::encode(message) else {
            return 0;
        };
        let length = bytes.len();
        let frame = Bytes::from(bytes);
        for &to in &self.targets {
            let _ = self.transport.send(to, frame.clone());
        }
        length
    }

    /// Queues `message` for node `to`; returns the frame's size.
    pub fn send(&self, to: NodeId, message: &WireMessage) -> usize {
        let Ok(bytes) = codec::encode(message) else {
            return 0;
        };
        let length = bytes.len();
        let _ = self.transport.send(to, Bytes::from(bytes));
        length
    }

    /// Frames the transport dropped because a peer's queue was full.
    pub fn dropped(&self) -> u64 {
        self.transport.stats().dropped_queue_full
    }
}

/// `count` valid requests of `size` bytes each from one throwaway client,
/// signed, ids from `first`, valid until `valid_until`.
pub(super) fn signed_requests(
    client: &KeyPair,
    first: u64,
    count: usize,
    size: usize,
    valid_until: SeqNum,
) -> Vec<SignedRequest> {
    (0..count as u64)
        .filter_map(|index| {
            let request = Request {
                client: client.public(),
                request_id: first + index,
                valid_until,
                payload: vec![(index % 251) as u8; size],
            };
            SignedRequest::sign(request, client).ok()
        })
        .collect()
}

/// A fresh throwaway key.
pub(super) fn throwaway() -> KeyPair {
    KeyPair::generate(&mut rand::rngs::OsRng)
}

/// The highest height any honest node reports (for `valid_until`).
pub(super) async fn height(context: &Context) -> u64 {
    let mut best = 0;
    for &id in &context.honest {
        if let Ok(node) = context.state.node(id) {
            if let Some(status) =
                super::super::launch::node_status(node.metrics, std::time::Duration::from_secs(1))
                    .await
            {
                best = best.max(status.height);
            }
        }
    }
    best
}

/// A raw client connection to node `node` as `key`: frames as the attacker
/// writes them, nothing checked (frames up to 64 MiB either way).
pub(super) async fn raw_link(
    context: &Context,
    node: u16,
    key: &KeyPair,
) -> Result<bftd::transport::ClientLink, String> {
    let index = usize::from(node);
    let address = *context
        .cluster
        .addresses
        .get(index)
        .ok_or_else(|| format!("no node {node}"))?;
    let node_key = *context
        .cluster
        .committee
        .public_keys()
        .get(index)
        .ok_or_else(|| format!("no node {node}"))?;
    let endpoint = context
        .client_endpoint
        .get_or_try_init(|| async { bftd::transport::ClientEndpoint::bind(address.is_ipv6()) })
        .await
        .map_err(|error| format!("client endpoint: {error}"))?;
    bftd::transport::connect_client_on(endpoint, key, address, node_key, 64 << 20)
        .await
        .map_err(|error| format!("client connection to node {node}: {error}"))
}

/// A client message's frame.
pub(super) fn client_frame(message: &bftd::client_api::ClientMessage) -> Bytes {
    Bytes::from(codec::encode(message).unwrap_or_default())
}

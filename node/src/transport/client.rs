//! Client connections: the node's side ([`ClientConnection`]) and the
//! client's side ([`connect_client`], [`ClientLink`]).
//!
//! A client opens one long-lived bidirectional stream and sends request
//! frames on it; the node sends reply frames back on the same stream. Both
//! directions use the framing of [`super::frame`].

use super::accept::ClientSlot;
use super::endpoint::{self, CLIENT_STREAMS};
use super::frame::{FrameReceiver, FrameSender, KeepAlive};
use super::stats::Counters;
use super::tls::{self, ALPN_CLIENT};
use super::{TransportError, DEFAULT_MAX_FRAME_BYTES};
use bftd_crypto::{KeyPair, PublicKey};
use bytes::Bytes;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// A client connected to this node over the client ALPN.
///
/// `client` is the key the client proved in the TLS handshake (its
/// certificate's key signed the handshake), so requests arriving on this
/// connection come from the holder of that key.
#[derive(Debug)]
pub struct ClientConnection {
    /// The client's identity key, proven in the handshake.
    pub client: PublicKey,
    connection: quinn::Connection,
    /// Largest frame sent to the client (blocks).
    max_frame_bytes: usize,
    /// Largest frame accepted from the client (one request).
    max_request_frame_bytes: usize,
    counters: Arc<Counters>,
    /// Holds one of the `max_client_connections` slots, and one of its
    /// address's `max_clients_per_address`, until the connection and both
    /// stream halves are dropped.
    slot: Arc<ClientSlot>,
}

impl ClientConnection {
    pub(crate) fn new(
        client: PublicKey,
        connection: quinn::Connection,
        max_frame_bytes: usize,
        max_request_frame_bytes: usize,
        counters: Arc<Counters>,
        slot: ClientSlot,
    ) -> ClientConnection {
        ClientConnection {
            client,
            connection,
            max_frame_bytes,
            max_request_frame_bytes,
            counters,
            slot: Arc::new(slot),
        }
    }

    /// The client's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// Waits for the client's request stream: a sender for replies and a
    /// receiver of requests. QUIC announces a stream with its first bytes, so
    /// this returns once the first request starts arriving. The connection
    /// allows one such stream at a time; unidirectional streams are reset.
    pub async fn accept_stream(&self) -> Result<(FrameSender, FrameReceiver), TransportError> {
        let keep = KeepAlive {
            endpoint: None,
            client_slot: Some(self.slot.clone()),
        };
        loop {
            tokio::select! {
                stream = self.connection.accept_bi() => {
                    let (send, recv) =
                        stream.map_err(|source| TransportError::Connection { source })?;
                    let sender = FrameSender::new(
                        send,
                        self.max_frame_bytes,
                        self.counters.clone(),
                        true,
                        keep.clone(),
                    );
                    let receiver = FrameReceiver::new(
                        recv,
                        self.connection.clone(),
                        self.max_request_frame_bytes,
                        self.counters.clone(),
                        true,
                        keep,
                    );
                    return Ok((sender, receiver));
                }
                stream = self.connection.accept_uni() => {
                    let mut recv = stream.map_err(|source| TransportError::Connection { source })?;
                    self.counters.streams_refused.increment();
                    let _ = recv.stop(super::close_code::STREAM_STOPPED);
                }
            }
        }
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.connection
            .close(super::close_code::CLOSED, b"closed by the node");
    }

    /// Closes a connection that sent nothing for `idle`, telling the client
    /// why and what to do.
    pub fn close_idle(&self, idle: Duration) {
        let reason = format!(
            "closed after {} ms without a request, subscription or status query (client_idle_timeout_ms); reconnect when there is something to send",
            idle.as_millis()
        );
        self.connection
            .close(super::close_code::IDLE, reason.as_bytes());
    }
}

/// A client's connection to one node: send request frames, receive reply
/// frames.
#[derive(Debug)]
pub struct ClientLink {
    connection: quinn::Connection,
    sender: FrameSender,
    receiver: FrameReceiver,
}

/// Connects to the node at `server` whose key is `server_key`, presenting
/// `key` as the client identity. Fails if the server proves any other key.
pub async fn connect_client(
    key: &KeyPair,
    server: SocketAddr,
    server_key: PublicKey,
) -> Result<ClientLink, TransportError> {
    connect_client_with(key, server, server_key, DEFAULT_MAX_FRAME_BYTES).await
}

/// A client's QUIC configuration: its key's certificate, the node's key
/// pinned, the client ALPN and the client's stream limits.
fn client_config(
    key: &KeyPair,
    server_key: PublicKey,
    counters: &Arc<Counters>,
) -> Result<quinn::ClientConfig, TransportError> {
    let identity = tls::certified_key(key)?;
    let crypto = tls::client_crypto(&identity, server_key, ALPN_CLIENT, counters)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(endpoint::transport_config(
        CLIENT_STREAMS,
        endpoint::SEGMENTATION_OFFLOAD,
    ));
    Ok(config)
}

/// [`connect_client`] with an explicit limit on frames in both directions.
pub async fn connect_client_with(
    key: &KeyPair,
    server: SocketAddr,
    server_key: PublicKey,
    max_frame_bytes: usize,
) -> Result<ClientLink, TransportError> {
    let endpoint = ClientEndpoint::bind(server.is_ipv6())?;
    connect_client_on(&endpoint, key, server, server_key, max_frame_bytes).await
}

/// One local UDP endpoint that many client connections share. Each
/// endpoint has receive buffers of its own (up to ~130 MB once a burst of
/// big datagrams has touched them), so a process that holds many client
/// connections, such as an attack harness with dozens of subscribers that
/// never read, holds them on one endpoint. Cheap to clone; the socket
/// closes when the last clone and the last connection on it are gone.
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct ClientEndpoint(quinn::Endpoint);

impl ClientEndpoint {
    /// Binds a new endpoint to an ephemeral port on every local address of
    /// the family (IPv6 if `ipv6`).
    pub fn bind(ipv6: bool) -> Result<ClientEndpoint, TransportError> {
        let local: SocketAddr = if ipv6 {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        };
        Ok(ClientEndpoint(endpoint::endpoint(
            endpoint::bind_socket(local)?,
            None,
            None,
        )?))
    }
}

/// [`connect_client_with`] on an endpoint shared with other connections.
#[doc(hidden)]
pub async fn connect_client_on(
    endpoint: &ClientEndpoint,
    key: &KeyPair,
    server: SocketAddr,
    server_key: PublicKey,
    max_frame_bytes: usize,
) -> Result<ClientLink, TransportError> {
    let counters = Arc::new(Counters::default());
    let config = client_config(key, server_key, &counters)?;
    let endpoint = endpoint.0.clone();
    let connection =
        super::peer::dial(&endpoint, &config, server, super::HANDSHAKE_TIMEOUT).await?;
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|source| TransportError::Connection { source })?;
    let keep = KeepAlive {
        endpoint: Some(endpoint),
        client_slot: None,
    };
    Ok(ClientLink {
        sender: FrameSender::new(send, max_frame_bytes, counters.clone(), false, keep.clone()),
        receiver: FrameReceiver::new(
            recv,
            connection.clone(),
            max_frame_bytes,
            counters,
            false,
            keep,
        ),
        connection,
    })
}

impl ClientLink {
    /// Sends one request frame.
    pub async fn send(&mut self, frame: Bytes) -> Result<(), TransportError> {
        self.sender.send(frame).await
    }

    /// The next reply frame, or `None` if the node finished the stream.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        self.receiver.recv().await
    }

    /// The two halves, to send and receive from different tasks. Each half
    /// keeps the connection open.
    pub fn split(self) -> (FrameSender, FrameReceiver) {
        (self.sender, self.receiver)
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.connection
            .close(super::close_code::CLOSED, b"closed by the client");
    }
}

/// For attack harnesses (`bftnet attack connection-slots`), not for
/// clients: the first datagram (a QUIC Initial carrying a TLS ClientHello
/// for the `bftd-client/1` ALPN, addressed to a node whose key is
/// `server_key`) of each of `count` handshakes, every one with fresh
/// connection IDs. Sent to a node from any address, each opens a handshake
/// the sender never finishes. The handshakes themselves go to a local
/// socket that never answers and are dropped on return.
#[doc(hidden)]
pub async fn abandoned_initials(
    key: &KeyPair,
    server_key: PublicKey,
    count: usize,
) -> Result<Vec<Bytes>, TransportError> {
    let counters = Arc::new(Counters::default());
    let config = client_config(key, server_key, &counters)?;
    let loopback: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();
    let sink = tokio::net::UdpSocket::bind(loopback)
        .await
        .map_err(|source| TransportError::Endpoint { source })?;
    let sink_address = sink
        .local_addr()
        .map_err(|source| TransportError::Endpoint { source })?;
    let endpoint = endpoint::endpoint(endpoint::bind_socket(loopback)?, None, None)?;
    let mut pending = Vec::with_capacity(count);
    let mut initials = Vec::with_capacity(count);
    let mut buffer = vec![0u8; 65_536];
    for _ in 0..count {
        let connecting = endpoint
            .connect_with(config.clone(), sink_address, tls::SERVER_NAME)
            .map_err(|source| TransportError::Connect {
                address: sink_address,
                source,
            })?;
        // Kept until the end: a dropped attempt would send a close, which
        // the sink would take for the next Initial.
        pending.push(connecting);
        match tokio::time::timeout(Duration::from_secs(1), sink.recv_from(&mut buffer)).await {
            Ok(Ok((length, _))) => initials.push(Bytes::copy_from_slice(
                buffer.get(..length).unwrap_or_default(),
            )),
            _ => break,
        }
    }
    endpoint.close(super::close_code::CLOSED, b"");
    drop(pending);
    Ok(initials)
}

/// Client connections that connect and then do nothing, all on one local
/// endpoint; closed when dropped. See [`idle_clients`].
#[doc(hidden)]
#[derive(Debug)]
pub struct IdleClients {
    endpoint: quinn::Endpoint,
    connections: Vec<quinn::Connection>,
}

impl IdleClients {
    /// Connections established.
    pub fn len(&self) -> usize {
        self.connections.len()
    }

    /// Whether none was established.
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }
}

impl Drop for IdleClients {
    fn drop(&mut self) {
        self.endpoint.close(super::close_code::CLOSED, b"");
    }
}

/// For attack harnesses (`bftnet attack connection-slots`), not for
/// clients: up to `count` client connections to the node at `server`
/// (whose key is `server_key`), each with a fresh key, all from one local
/// endpoint (one UDP socket: an endpoint each would cost the attacker
/// megabytes of receive buffers per connection), dialed `concurrency` at a
/// time; they open no stream and send nothing. Failed attempts are counted
/// in the second value.
#[doc(hidden)]
pub async fn idle_clients(
    server: SocketAddr,
    server_key: PublicKey,
    count: usize,
    concurrency: usize,
) -> Result<(IdleClients, usize), TransportError> {
    let local: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();
    let endpoint = endpoint::endpoint(endpoint::bind_socket(local)?, None, None)?;
    let counters = Arc::new(Counters::default());
    let mut connections = Vec::with_capacity(count);
    let mut failed = 0;
    let mut remaining = count;
    while remaining > 0 {
        let batch = remaining.min(concurrency.max(1));
        remaining -= batch;
        let mut attempts = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let key = KeyPair::generate(&mut rand::rngs::OsRng);
            let config = client_config(&key, server_key, &counters)?;
            let endpoint = endpoint.clone();
            attempts.spawn(async move {
                super::peer::dial(&endpoint, &config, server, super::HANDSHAKE_TIMEOUT).await
            });
        }
        while let Some(attempt) = attempts.join_next().await {
            match attempt {
                Ok(Ok(connection)) => connections.push(connection),
                _ => failed += 1,
            }
        }
    }
    Ok((
        IdleClients {
            endpoint,
            connections,
        },
        failed,
    ))
}

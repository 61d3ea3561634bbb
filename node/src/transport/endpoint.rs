//! The UDP socket and quinn settings.
//!
//! Tuning, from DESIGN.md's loopback measurements (660 MB/s stock vs
//! ~2.4 GB/s tuned, and half the CPU per byte):
//! - 4 MiB socket buffers: the default ones drop ~0.7% of loopback packets
//!   under load, and every drop costs a retransmission and a congestion
//!   back-off. Best effort: the kernel caps them at `net.core.rmem_max` /
//!   `wmem_max`, and we log what we got.
//! - MTU discovery up to 65000 bytes and a matching `max_udp_payload_size`:
//!   on loopback (MTU 65536) a packet carries ~50x the data of a 1200-byte
//!   one, and per-packet work (crypto setup, syscalls, ACKs) dominates.
//!   Discovery only *probes* upward from the safe 1200-byte initial MTU, so
//!   on a real network the same setting settles at the path MTU.
//! - Segmentation offload (GSO): see [`SEGMENTATION_OFFLOAD`].

use super::TransportError;
use quinn::{IdleTimeout, MtuDiscoveryConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Requested socket send and receive buffer size.
const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Largest UDP payload we accept and the MTU discovery upper bound.
const MAX_UDP_PAYLOAD_BYTES: u16 = 65000;
/// Flow-control limit of one connection, all streams together: two of
/// quinn's default stream windows. Each role has one busy stream, so this
/// costs no throughput, and it caps what a hostile client can make us
/// buffer (times `max_client_connections`).
const CONNECTION_RECEIVE_WINDOW: u32 = 2 * 1_250_000;
/// Close a connection that has been silent this long. Keep-alives make
/// silence mean a dead peer; 10 s lets a stalled-but-alive peer (GC pause,
/// overloaded 2-core box) survive while still noticing a crash quickly.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Ping an otherwise idle connection this often: several per idle timeout,
/// so a couple of lost pings do not kill a healthy connection.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);

/// The round-trip time a connection assumes before it has measured one
/// (quinn's default is 333 ms). It sets when an unanswered handshake packet
/// is sent again: after about three of it. A peer that redials a restarting
/// node sends its first packet while the node is down, and with 333 ms
/// the retransmission that reaches the node's new run came a second later:
/// a node restarted in 160 ms was cut off from its peers for 1.15 s (the
/// slow-node scenario's p99 rose past its 1 s bound, CI 2026-12-05). With
/// 100 ms it is about 0.3 s. On a link slower than that the cost is a
/// spurious resend of the first handshake packet.
const INITIAL_RTT: Duration = Duration::from_millis(100);

/// Whether quinn hands the kernel several packets per `sendmsg` (UDP GSO).
///
/// Measured with `tests::measure_segmentation_offload` (release build, 2-core
/// machine with another process using about one core; 512 MiB in 64 KiB
/// frames on one stream over loopback, 3 rounds each):
///
/// | setting | MB/s | CPU-ms/MB |
/// |---|---|---|
/// | GSO off (chosen) | 770–1040 | 0.9–1.3 |
/// | GSO on | 160–200 | 4.8–5.8 |
/// | GSO off, MTU discovery off (1200-byte packets) | 80–90 | 11–13 |
/// | GSO off, stream windows 4 or 16 MiB | 525–680 | 1.4–1.9 |
///
/// With ~64 KiB loopback packets GSO has little left to batch, and a burst
/// of several such segments likely overflows the receive buffer, so losses
/// and congestion back-off follow. Off is also the safe choice where GSO is
/// broken (some virtual NICs). The MTU row is why discovery goes to 65000;
/// the last row is why quinn's default flow-control windows are kept.
pub(crate) const SEGMENTATION_OFFLOAD: bool = false;

/// Binds the UDP socket with enlarged buffers. An address already in use is
/// reported as [`TransportError::AddressInUse`] naming the address.
pub(crate) fn bind_socket(address: SocketAddr) -> Result<std::net::UdpSocket, TransportError> {
    let bind_error = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            TransportError::AddressInUse { address }
        } else {
            TransportError::Bind { address, source }
        }
    };
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )
    .map_err(bind_error)?;
    // Best effort: an unprivileged process may get less than it asks for.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    tracing::debug!(
        %address,
        recv_buffer = ?socket.recv_buffer_size().ok(),
        send_buffer = ?socket.send_buffer_size().ok(),
        "UDP socket buffers"
    );
    socket.bind(&address.into()).map_err(bind_error)?;
    socket.set_nonblocking(true).map_err(bind_error)?;
    Ok(socket.into())
}

/// Domains of what a node's endpoint derives from its identity key.
const RESET_KEY_DOMAIN: bftd_crypto::Domain =
    bftd_crypto::Domain::new("bftd/v1/quic-stateless-reset");
const CID_KEY_DOMAIN: bftd_crypto::Domain = bftd_crypto::Domain::new("bftd/v1/quic-connection-id");

/// Creates an endpoint on `socket`, listening if `server` is given.
///
/// A node passes its `identity`, and two keys are derived from it, so they
/// are the same after a restart: the key that marks the connection IDs it
/// issues as its own, and its stateless reset key. Why: a peer that dialed
/// us before we crashed (kill -9, power loss: no close frame) keeps sending
/// on the old connection. With keys drawn at random per run, our new
/// endpoint drops those packets as strangers' ("invalid CID"), and the peer
/// only gives up at the idle timeout (10 s) before it redials. With the
/// same keys it recognises the connection IDs as ones it issued, answers
/// with a stateless reset the peer can verify, and the peer redials at
/// once (RFC 9000 §10.3: a static key lets an endpoint that lost its state
/// end the connections it had). Both are hashes of the secret identity key
/// under their own domains: as secret as that key, revealing nothing of it.
/// Clients pass `None` (random keys: nobody dials a client).
pub(crate) fn endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
    identity: Option<&bftd_crypto::KeyPair>,
) -> Result<quinn::Endpoint, TransportError> {
    let mut config = match identity {
        Some(key) => {
            let seed = key.secret_seed();
            let reset = bftd_crypto::Digest::of(RESET_KEY_DOMAIN, &*seed);
            let cid = bftd_crypto::Digest::of(CID_KEY_DOMAIN, &*seed);
            let cid_key = u64::from_le_bytes(cid.as_bytes()[..8].try_into().unwrap_or_default());
            let mut config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                reset.as_bytes(),
            )));
            config.cid_generator(move || {
                Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            });
            config
        }
        None => quinn::EndpointConfig::default(),
    };
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD_BYTES)
        .map_err(|_| TransportError::Endpoint {
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
    quinn::Endpoint::new(config, server, socket, Arc::new(quinn::TokioRuntime))
        .map_err(|source| TransportError::Endpoint { source })
}

/// How many streams the remote side of a connection may open, by role.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamLimits {
    /// Unidirectional streams the remote may have open at once.
    pub(crate) uni: u32,
    /// Bidirectional streams the remote may have open at once.
    pub(crate) bidi: u32,
}

/// The listening side: a peer needs one unidirectional stream (two lets a
/// replacement stream start before the old one is fully closed); a client
/// needs one bidirectional stream. QUIC limits are set before the ALPN is
/// known, so the listener allows the union, and each role resets the
/// streams the other role would use.
pub(crate) const LISTENER_STREAMS: StreamLimits = StreamLimits { uni: 2, bidi: 1 };
/// Dialing a peer: the peer sends us its frames on one unidirectional
/// stream.
pub(crate) const PEER_DIALER_STREAMS: StreamLimits = StreamLimits { uni: 2, bidi: 0 };
/// A client: the server opens nothing; replies come back on the client's
/// own bidirectional stream.
pub(crate) const CLIENT_STREAMS: StreamLimits = StreamLimits { uni: 0, bidi: 0 };

/// Transport parameters shared by every connection, with per-role stream
/// limits.
pub(crate) fn transport_config(streams: StreamLimits, gso: bool) -> Arc<quinn::TransportConfig> {
    let mut config = quinn::TransportConfig::default();
    config
        .max_concurrent_uni_streams(VarInt::from_u32(streams.uni))
        .max_concurrent_bidi_streams(VarInt::from_u32(streams.bidi))
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .initial_rtt(INITIAL_RTT)
        // Ten seconds always fits a QUIC idle timeout (62 bits of ms).
        .max_idle_timeout(IdleTimeout::try_from(IDLE_TIMEOUT).ok())
        .enable_segmentation_offload(gso)
        // Memory per connection, whatever the remote does: every stream it
        // may open buffers at most quinn's default stream window (1.25 MB),
        // the connection as a whole at most `CONNECTION_RECEIVE_WINDOW`.
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        // We never read QUIC datagrams: advertise none, so nobody can fill
        // a datagram buffer we would never drain.
        .datagram_receive_buffer_size(None);
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD_BYTES);
    config.mtu_discovery_config(Some(mtu));
    Arc::new(config)
}

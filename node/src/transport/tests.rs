//! Transport tests on loopback, with free ports. Each test runs under a
//! timeout, so a hang fails in seconds instead of stalling CI.

use super::stats::Counters;
use super::*;
use std::future::Future;
use std::net::UdpSocket;
use std::time::Instant;

const TEST_TIMEOUT: Duration = Duration::from_secs(25);
const WAIT: Duration = Duration::from_secs(10);

async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out");
}

fn key(seed: u8) -> KeyPair {
    KeyPair::from_seed([seed; 32])
}

/// Addresses of ports that were free a moment ago (a test that loses the
/// race to another process fails loudly at bind, it does not hang).
fn free_addresses(count: usize) -> Vec<SocketAddr> {
    let sockets: Vec<UdpSocket> = (0..count)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    sockets.iter().map(|s| s.local_addr().unwrap()).collect()
}

/// Configurations of a `count`-node committee with keys from `first_seed`.
fn cluster(count: u16, first_seed: u8) -> Vec<TransportConfig> {
    let addresses = free_addresses(count.into());
    let keys: Vec<KeyPair> = (0..count).map(|i| key(first_seed + i as u8)).collect();
    let peers: Vec<Peer> = (0..count)
        .map(|i| Peer {
            id: NodeId(i),
            address: addresses[usize::from(i)],
            key: keys[usize::from(i)].public(),
        })
        .collect();
    (0..count)
        .map(|i| {
            let index = usize::from(i);
            TransportConfig::new(
                NodeId(i),
                keys[index].clone(),
                addresses[index],
                peers.clone(),
            )
        })
        .collect()
}

struct Node {
    transport: Transport,
    frames: mpsc::Receiver<PeerFrame>,
    clients: mpsc::Receiver<ClientConnection>,
}

impl Node {
    fn stats(&self) -> TransportStats {
        self.transport.stats()
    }
}

async fn start(config: TransportConfig) -> Node {
    // A port just released by a stopped transport can take a moment to free.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Transport::start(config.clone()).await {
            Ok((transport, frames, clients)) => {
                return Node {
                    transport,
                    frames,
                    clients,
                }
            }
            Err(TransportError::AddressInUse { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("transport failed to start: {error}"),
        }
    }
}

async fn start_all(configs: Vec<TransportConfig>) -> Vec<Node> {
    let mut nodes = Vec::new();
    for config in configs {
        nodes.push(start(config).await);
    }
    nodes
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `payload` from `sender` to `to` until `receiver` gets it from
/// `from` (the link may be reconnecting); other frames are skipped.
async fn deliver(
    sender: &Transport,
    to: NodeId,
    receiver: &mut mpsc::Receiver<PeerFrame>,
    from: NodeId,
    payload: &'static [u8],
) {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "{payload:?} never arrived");
        let _ = sender.send(to, Bytes::from_static(payload));
        if let Ok(frame) = tokio::time::timeout(Duration::from_millis(250), receiver.recv()).await {
            let frame = frame.expect("inbound channel closed");
            if frame.from == from && frame.frame == payload {
                return;
            }
        }
    }
}

/// A raw QUIC connection with our TLS setup but any ALPN, for hostile tests.
async fn raw_connection(
    identity: &KeyPair,
    server: SocketAddr,
    server_key: PublicKey,
    alpn: &[u8],
) -> Result<quinn::Connection, TransportError> {
    let counters = Arc::new(Counters::default());
    let certified = tls::certified_key(identity)?;
    let crypto = tls::client_crypto(&certified, server_key, alpn, &counters)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(endpoint::transport_config(
        endpoint::PEER_DIALER_STREAMS,
        endpoint::SEGMENTATION_OFFLOAD,
    ));
    let local = endpoint::endpoint(endpoint::bind_socket(([127, 0, 0, 1], 0).into())?, None)?;
    peer::dial(&local, &config, server).await
}

/// `[sender, receiver, seq (u32 LE)]` plus a size that varies with `seq`.
fn numbered_frame(sender: u16, receiver: u8, seq: u32) -> Bytes {
    let mut bytes = vec![sender as u8, receiver];
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.resize(bytes.len() + (seq as usize % 7) * 300, 0xab);
    Bytes::from(bytes)
}

/// Four nodes connect all-to-all; every node's frames reach every other node
/// in the order sent, and a broadcast reaches everyone but its sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_nodes_exchange_in_order_and_broadcast() {
    bounded(async {
        const PER_PAIR: u32 = 300;
        const BROADCAST: u8 = 255;
        let mut nodes = start_all(cluster(4, 10)).await;
        // Sent before any connection exists: queued, then delivered.
        for (i, node) in nodes.iter().enumerate() {
            let i = i as u16;
            for seq in 0..PER_PAIR {
                for j in (0..4u16).filter(|j| *j != i) {
                    node.transport
                        .send(NodeId(j), numbered_frame(i, j as u8, seq))
                        .unwrap();
                }
            }
            node.transport
                .broadcast(numbered_frame(i, BROADCAST, PER_PAIR));
        }
        for (j, node) in nodes.iter_mut().enumerate() {
            let mut next = [0u32; 4];
            for _ in 0..3 * (PER_PAIR + 1) {
                let frame = node.frames.recv().await.unwrap();
                let sender = usize::from(frame.from.0);
                assert_eq!(frame.frame[0] as usize, sender, "attributed to its sender");
                let seq = u32::from_le_bytes(frame.frame[2..6].try_into().unwrap());
                assert_eq!(seq, next[sender], "in order from {sender}");
                assert_eq!(
                    frame.frame,
                    numbered_frame(frame.from.0, frame.frame[1], seq)
                );
                let expected_receiver = if seq == PER_PAIR { BROADCAST } else { j as u8 };
                assert_eq!(frame.frame[1], expected_receiver);
                next[sender] += 1;
            }
            assert!(next
                .iter()
                .enumerate()
                .all(|(i, n)| *n == if i == j { 0 } else { PER_PAIR + 1 }));
        }
        for node in &nodes {
            let stats = node.stats();
            assert_eq!(stats.connections, 3, "one connection per pair");
            assert_eq!(stats.frames_out, u64::from(3 * (PER_PAIR + 1)));
            assert_eq!(stats.frames_in, u64::from(3 * (PER_PAIR + 1)));
            assert_eq!(stats.handshake_rejected, 0);
        }
    })
    .await;
}

/// A node whose key is not in the committee cannot get a frame through,
/// and the refusal is counted, while the real member still connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_is_refused() {
    bounded(async {
        let configs = cluster(2, 20);
        let mut nodes = start_all(configs.clone()).await;
        // The intruder claims id 0 with its own key and dials node 1.
        let mut peers = configs[0].peers.clone();
        let intruder_address = free_addresses(1)[0];
        peers[0] = Peer {
            id: NodeId(0),
            address: intruder_address,
            key: key(99).public(),
        };
        let intruder = start(TransportConfig::new(
            NodeId(0),
            key(99),
            intruder_address,
            peers,
        ))
        .await;
        let _ = intruder
            .transport
            .send(NodeId(1), Bytes::from_static(b"intruder"));
        wait_for("node 1 to refuse the intruder", || {
            nodes[1].stats().handshake_rejected >= 1
        })
        .await;
        let sender = nodes[0].transport.clone();
        deliver(&sender, NodeId(1), &mut nodes[1].frames, NodeId(0), b"real").await;
        let _ = intruder
            .transport
            .send(NodeId(1), Bytes::from_static(b"intruder"));
        let late = tokio::time::timeout(Duration::from_millis(500), nodes[1].frames.recv()).await;
        assert!(
            late.map_or(true, |frame| frame
                .is_some_and(|f| f.frame != b"intruder"[..])),
            "no frame from the intruder"
        );
    })
    .await;
}

/// A server presenting a different key than the one pinned for its address
/// is refused by the dialer, and nothing is sent to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impostor_at_pinned_address_is_refused() {
    bounded(async {
        let configs = cluster(2, 30);
        let mut impostor_config = configs[1].clone();
        impostor_config.key = key(98);
        impostor_config.peers[1].key = key(98).public();
        let node = start(configs[0].clone()).await;
        let mut impostor = start(impostor_config).await;
        node.transport
            .send(NodeId(1), Bytes::from_static(b"secret"))
            .unwrap();
        wait_for("node 0 to refuse the impostor", || {
            node.stats().handshake_rejected >= 1
        })
        .await;
        assert_eq!(node.stats().connections, 0);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), impostor.frames.recv())
                .await
                .is_err(),
            "the impostor received nothing"
        );
    })
    .await;
}

/// A client with an arbitrary key connects on the client ALPN and the node
/// sees exactly that key; requests and replies flow on its stream. A client
/// that pins the wrong server key fails, and a non-committee key on the peer
/// ALPN is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_identified_by_their_key() {
    bounded(async {
        let config = cluster(1, 40).remove(0);
        let server_key = config.key.public();
        let mut node = start(config).await;
        let address = node.transport.local_address();

        let client_key = key(77);
        let mut link = connect_client(&client_key, address, server_key)
            .await
            .unwrap();
        link.send(Bytes::from_static(b"request 1")).await.unwrap();
        let connection = node.clients.recv().await.unwrap();
        assert_eq!(connection.client, client_key.public());
        let (mut replies, mut requests) = connection.accept_stream().await.unwrap();
        assert_eq!(requests.recv().await.unwrap().unwrap(), &b"request 1"[..]);
        replies.send(Bytes::from_static(b"reply 1")).await.unwrap();
        assert_eq!(link.recv().await.unwrap().unwrap(), &b"reply 1"[..]);
        link.send(Bytes::new()).await.unwrap();
        assert_eq!(requests.recv().await.unwrap().unwrap(), Bytes::new());

        assert!(connect_client(&client_key, address, key(76).public())
            .await
            .is_err());

        let before = node.stats().handshake_rejected;
        let raw = raw_connection(&key(75), address, server_key, ALPN_PEER)
            .await
            .unwrap();
        match raw.closed().await {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, close_code::UNAUTHORIZED);
            }
            other => panic!("unexpected close: {other}"),
        }
        assert!(node.stats().handshake_rejected > before);
        assert_eq!(node.stats().client_connections, 1);
    })
    .await;
}

/// An oversized frame from a peer closes that connection and is counted;
/// the peers reconnect and frames flow again in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_from_peer_is_refused() {
    bounded(async {
        let mut configs = cluster(2, 50);
        configs[1].max_frame_bytes = 1024;
        let mut nodes = start_all(configs).await;
        nodes[0]
            .transport
            .send(NodeId(1), Bytes::from(vec![7; 4096]))
            .unwrap();
        wait_for("the oversized frame to be refused", || {
            nodes[1].stats().oversized_received == 1
        })
        .await;
        let zero = nodes[0].transport.clone();
        let one = nodes[1].transport.clone();
        deliver(&zero, NodeId(1), &mut nodes[1].frames, NodeId(0), b"after").await;
        deliver(&one, NodeId(0), &mut nodes[0].frames, NodeId(1), b"back").await;
        assert!(nodes[0].stats().reconnects >= 1);
        // Our own limit refuses oversized sends up front.
        assert_eq!(
            one.send(NodeId(0), Bytes::from(vec![0; 1025])),
            Err(SendError::FrameTooLarge {
                length: 1025,
                max_frame_bytes: 1024
            })
        );
        assert_eq!(one.stats().oversized_sent, 1);
    })
    .await;
}

/// From a client: an oversized frame, a 4 GiB length prefix and a frame cut
/// short are each refused without allocating what they announce; the node
/// keeps serving other clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_client_frames_are_refused() {
    bounded(async {
        let mut config = cluster(1, 60).remove(0);
        config.max_frame_bytes = 1024;
        let server_key = config.key.public();
        let mut node = start(config).await;
        let address = node.transport.local_address();

        let mut oversized = connect_client_with(&key(61), address, server_key, 1 << 20)
            .await
            .unwrap();
        oversized.send(Bytes::from(vec![1; 4096])).await.unwrap();
        let connection = node.clients.recv().await.unwrap();
        let (_replies, mut requests) = connection.accept_stream().await.unwrap();
        assert!(matches!(
            requests.recv().await,
            Err(TransportError::FrameTooLarge {
                length: 4096,
                max_frame_bytes: 1024
            })
        ));
        assert!(oversized.recv().await.is_err(), "connection closed");

        let raw = raw_connection(&key(62), address, server_key, ALPN_CLIENT)
            .await
            .unwrap();
        let (mut send, _recv) = raw.open_bi().await.unwrap();
        send.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        send.write_all(b"tiny").await.unwrap();
        let connection = node.clients.recv().await.unwrap();
        let (_replies, mut requests) = connection.accept_stream().await.unwrap();
        assert!(matches!(
            requests.recv().await,
            Err(TransportError::FrameTooLarge { length, .. }) if length == u64::from(u32::MAX)
        ));

        let raw = raw_connection(&key(63), address, server_key, ALPN_CLIENT)
            .await
            .unwrap();
        let (mut send, _recv) = raw.open_bi().await.unwrap();
        send.write_all(&100u32.to_le_bytes()).await.unwrap();
        send.write_all(&[0; 10]).await.unwrap();
        send.finish().unwrap();
        let connection = node.clients.recv().await.unwrap();
        let (_replies, mut requests) = connection.accept_stream().await.unwrap();
        assert!(matches!(
            requests.recv().await,
            Err(TransportError::TruncatedFrame {
                expected: 100,
                received: 10
            })
        ));
        assert_eq!(node.stats().oversized_received, 2);

        let mut good = connect_client(&key(64), address, server_key).await.unwrap();
        good.send(Bytes::from_static(b"still here")).await.unwrap();
        let connection = node.clients.recv().await.unwrap();
        let (mut replies, mut requests) = connection.accept_stream().await.unwrap();
        assert_eq!(requests.recv().await.unwrap().unwrap(), &b"still here"[..]);
        replies.send(Bytes::from_static(b"yes")).await.unwrap();
        assert_eq!(good.recv().await.unwrap().unwrap(), &b"yes"[..]);
    })
    .await;
}

/// QUIC stream limits hold per role: a client gets one bidirectional
/// stream at a time, and a bidirectional stream from a peer is reset and
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_limits_hold() {
    bounded(async {
        let configs = cluster(2, 120);
        let server_key = configs[1].key.public();
        let peer_key = configs[0].key.clone();
        let node = start(configs[1].clone()).await;
        let address = node.transport.local_address();

        let client = raw_connection(&key(121), address, server_key, ALPN_CLIENT)
            .await
            .unwrap();
        let (mut send, _recv) = client.open_bi().await.unwrap();
        send.write_all(&0u32.to_le_bytes()).await.unwrap();
        let second = tokio::time::timeout(Duration::from_millis(300), client.open_bi()).await;
        assert!(
            second.is_err(),
            "a second concurrent stream must wait for credit"
        );

        // Node 0's key, dialing node 1 on the peer ALPN as node 0 would.
        let peer = raw_connection(&peer_key, address, server_key, ALPN_PEER)
            .await
            .unwrap();
        let (mut send, mut recv) = peer.open_bi().await.unwrap();
        send.write_all(b"not allowed").await.unwrap();
        wait_for("the bidirectional stream to be refused", || {
            node.stats().streams_refused == 1
        })
        .await;
        assert!(recv.read_to_end(16).await.is_err(), "the stream was reset");
        assert_eq!(node.stats().connections, 1, "the connection itself stays");
    })
    .await;
}

/// Random datagrams at the port, some shaped like QUIC long headers, do not
/// disturb the node: peers and clients keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_garbage_is_ignored() {
    bounded(async {
        let configs = cluster(2, 70);
        let server_key = configs[1].key.public();
        let mut nodes = start_all(configs).await;
        let zero = nodes[0].transport.clone();
        deliver(&zero, NodeId(1), &mut nodes[1].frames, NodeId(0), b"before").await;

        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move || {
            // xorshift64: deterministic, good enough for garbage.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..3000u32 {
            let length = match i % 3 {
                0 => (random() % 64) as usize,
                1 => 1200 + (random() % 300) as usize,
                _ => (random() % 65_000) as usize,
            };
            let mut datagram: Vec<u8> = (0..length).map(|_| random() as u8).collect();
            if i % 2 == 0 && length > 6 {
                // Long header, QUIC v1, so the packet reaches deeper parsing.
                datagram[0] = 0xc0 | (random() as u8 & 0x3f);
                datagram[1..5].copy_from_slice(&[0, 0, 0, 1]);
            }
            for node in &nodes {
                let _ = socket.send_to(&datagram, node.transport.local_address());
            }
        }
        let one = nodes[1].transport.clone();
        deliver(&zero, NodeId(1), &mut nodes[1].frames, NodeId(0), b"after").await;
        deliver(&one, NodeId(0), &mut nodes[0].frames, NodeId(1), b"back").await;
        let mut client = connect_client(&key(71), one.local_address(), server_key)
            .await
            .unwrap();
        client.send(Bytes::from_static(b"hello")).await.unwrap();
        let connection = nodes[1].clients.recv().await.unwrap();
        let (_replies, mut requests) = connection.accept_stream().await.unwrap();
        assert_eq!(requests.recv().await.unwrap().unwrap(), &b"hello"[..]);
    })
    .await;
}

/// With the peer down, its queue fills to its frame or byte bound and then
/// drops and counts, and `send` never waits. Unknown destinations and
/// oversized frames are refused and counted too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_without_blocking() {
    bounded(async {
        let mut configs = cluster(3, 80);
        configs[0].peer_queue_frames = 8;
        configs[0].peer_queue_bytes = 1000;
        // Nodes 1 and 2 are never started.
        let node = start(configs.remove(0)).await;
        let started = Instant::now();
        let by_bytes: Vec<_> = (0..100)
            .map(|_| node.transport.send(NodeId(1), Bytes::from(vec![0; 200])))
            .collect();
        let by_frames: Vec<_> = (0..100)
            .map(|_| node.transport.send(NodeId(2), Bytes::from_static(b"x")))
            .collect();
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "send never waits"
        );
        assert_eq!(
            by_bytes.iter().filter(|r| r.is_ok()).count(),
            5,
            "1000 bytes / 200"
        );
        assert_eq!(by_frames.iter().filter(|r| r.is_ok()).count(), 8);
        assert_eq!(by_bytes[99], Err(SendError::QueueFull { to: NodeId(1) }));
        assert_eq!(
            node.transport.send(NodeId(9), Bytes::new()),
            Err(SendError::UnknownPeer { to: NodeId(9) })
        );
        assert_eq!(
            node.transport.send(NodeId(0), Bytes::new()),
            Err(SendError::UnknownPeer { to: NodeId(0) })
        );
        node.transport.broadcast(Bytes::from_static(b"y"));
        let stats = node.stats();
        assert_eq!(
            stats.dropped_queue_full,
            95 + 92 + 2,
            "the broadcast drops at both"
        );
        assert_eq!(stats.dropped_unknown_peer, 2);
        node.transport.shutdown().await;
        assert_eq!(
            node.transport.send(NodeId(1), Bytes::new()),
            Err(SendError::ShutDown)
        );
    })
    .await;
}

/// A node whose transport stops and restarts on the same port is reached
/// again by the node that dials it and dials its own higher peers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_reconnects() {
    bounded(async {
        let configs = cluster(3, 90);
        let mut nodes = start_all(configs.clone()).await;
        let zero = nodes[0].transport.clone();
        let two = nodes[2].transport.clone();
        deliver(&zero, NodeId(1), &mut nodes[1].frames, NodeId(0), b"first").await;
        deliver(&two, NodeId(1), &mut nodes[1].frames, NodeId(2), b"first").await;

        let stopped = nodes.remove(1);
        stopped.transport.shutdown().await;
        drop(stopped);
        let _ = zero.send(NodeId(1), Bytes::from_static(b"while down"));
        nodes.insert(1, start(configs[1].clone()).await);

        let one = nodes[1].transport.clone();
        deliver(&zero, NodeId(1), &mut nodes[1].frames, NodeId(0), b"again").await;
        deliver(&two, NodeId(1), &mut nodes[1].frames, NodeId(2), b"again").await;
        deliver(&one, NodeId(0), &mut nodes[0].frames, NodeId(1), b"back").await;
        deliver(&one, NodeId(2), &mut nodes[2].frames, NodeId(1), b"back").await;
        assert!(nodes[0].stats().reconnects >= 1);
        assert!(nodes[2].stats().reconnects >= 1);
    })
    .await;
}

/// Two transports cannot share a listen address; the error names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_in_use_is_named() {
    bounded(async {
        let config = cluster(1, 100).remove(0);
        let _node = start(config.clone()).await;
        match Transport::start(config.clone()).await {
            Err(error @ TransportError::AddressInUse { address }) => {
                assert_eq!(address, config.listen);
                assert!(error.to_string().contains(&config.listen.to_string()));
            }
            other => panic!("expected AddressInUse, got {:?}", other.map(|_| ())),
        }
    })
    .await;
}

/// Invalid configurations are refused before anything binds.
#[test]
fn invalid_configs_are_refused() {
    let base = cluster(2, 110);
    let mut config = base[0].clone();
    config.key = key(1);
    assert_eq!(
        config.validate(),
        Err(ConfigError::WrongKey { me: NodeId(0) })
    );
    let mut config = base[0].clone();
    config.peers[1].key = config.peers[0].key;
    assert_eq!(
        config.validate(),
        Err(ConfigError::DuplicateKey {
            first: NodeId(0),
            second: NodeId(1)
        })
    );
    let mut config = base[0].clone();
    config.me = NodeId(5);
    assert_eq!(
        config.validate(),
        Err(ConfigError::MissingSelf { me: NodeId(5) })
    );
    let mut config = base[0].clone();
    config.peer_queue_frames = 0;
    assert_eq!(
        config.validate(),
        Err(ConfigError::Zero {
            field: "peer_queue_frames"
        })
    );
    let mut config = base[0].clone();
    config.inbound_bytes = config.max_frame_bytes - 1;
    assert!(matches!(
        config.validate(),
        Err(ConfigError::InboundBytes { .. })
    ));
}

/// Process CPU time (user + system) in seconds, from /proc (Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, in clock ticks (100/s).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// One bulk transfer of `total` bytes in 64 KiB frames over a peer-style
/// unidirectional stream; returns (MB/s, CPU ms per MB).
async fn bulk_transfer(gso: bool, total: usize) -> (f64, f64) {
    let counters = Arc::new(Counters::default());
    let server_key = key(200);
    let server_identity = tls::certified_key(&server_key).unwrap();
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        tls::server_crypto(&server_identity, &counters).unwrap(),
    ));
    server.transport_config(endpoint::transport_config(endpoint::LISTENER_STREAMS, gso));
    let listener = endpoint::endpoint(
        endpoint::bind_socket(([127, 0, 0, 1], 0).into()).unwrap(),
        Some(server),
    )
    .unwrap();
    let address = listener.local_addr().unwrap();
    let receiving = tokio::spawn(async move {
        let connection = listener.accept().await.unwrap().await.unwrap();
        let recv = connection.accept_uni().await.unwrap();
        let mut frames = FrameReceiver::new(
            recv,
            connection.clone(),
            DEFAULT_MAX_FRAME_BYTES,
            Arc::new(Counters::default()),
            false,
            frame::KeepAlive::default(),
        );
        let mut received = 0;
        while let Some(frame) = frames.recv().await.unwrap() {
            received += frame.len();
        }
        received
    });
    let client_identity = tls::certified_key(&key(201)).unwrap();
    let crypto =
        tls::client_crypto(&client_identity, server_key.public(), ALPN_PEER, &counters).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(endpoint::transport_config(
        endpoint::PEER_DIALER_STREAMS,
        gso,
    ));
    let local = endpoint::endpoint(
        endpoint::bind_socket(([127, 0, 0, 1], 0).into()).unwrap(),
        None,
    )
    .unwrap();
    let connection = peer::dial(&local, &config, address).await.unwrap();
    let mut send = connection.open_uni().await.unwrap();
    let chunk = Bytes::from(vec![0x5a; 64 * 1024]);
    let (wall, cpu) = (Instant::now(), cpu_seconds());
    for _ in 0..total / chunk.len() {
        frame::write_frame(&mut send, chunk.clone()).await.unwrap();
    }
    send.finish().unwrap();
    assert_eq!(receiving.await.unwrap(), total);
    let seconds = wall.elapsed().as_secs_f64();
    let megabytes = total as f64 / 1e6;
    let cpu_ms = (cpu_seconds() - cpu) * 1000.0;
    (megabytes / seconds, cpu_ms / megabytes)
}

/// Measures loopback throughput with UDP segmentation offload on and off,
/// to choose `endpoint::SEGMENTATION_OFFLOAD`. Not a check: run with
/// `cargo test -p bftd --release -- --ignored measure_segmentation_offload --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check; takes a while"]
async fn measure_segmentation_offload() {
    const TOTAL: usize = 512 * 1024 * 1024;
    for round in 0..3 {
        for gso in [false, true] {
            let (rate, cpu) = bulk_transfer(gso, TOTAL).await;
            println!("round {round} gso {gso:5}: {rate:7.0} MB/s, {cpu:.2} CPU-ms/MB");
        }
    }
}

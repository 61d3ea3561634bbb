//! What a byzantine peer, a hostile client or a stranger on the network can
//! throw at a node: each is refused, counted, and the node keeps serving.

use super::*;

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

/// A client's frames have their own, smaller limit than peers': a frame
/// between the two closes the client's connection and is counted, while a
/// frame that size from a peer would be accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_frames_have_their_own_limit() {
    bounded(async {
        let mut config = cluster(1, 63).remove(0);
        config.max_client_frame_bytes = 2048;
        let server_key = config.key.public();
        let mut node = start(config).await;
        let address = node.transport.local_address();
        let mut link = connect_client_with(&key(64), address, server_key, 1 << 20)
            .await
            .unwrap();
        link.send(Bytes::from(vec![1; 2048])).await.unwrap();
        link.send(Bytes::from(vec![1; 2049])).await.unwrap();
        let connection = node.clients.recv().await.unwrap();
        let (_replies, mut requests) = connection.accept_stream().await.unwrap();
        assert_eq!(requests.recv().await.unwrap().unwrap().len(), 2048);
        assert!(matches!(
            requests.recv().await,
            Err(TransportError::FrameTooLarge {
                length: 2049,
                max_frame_bytes: 2048
            })
        ));
        assert_eq!(node.transport.stats().oversized_received, 1);
        assert_eq!(node.transport.stats().client_oversized_received, 1);
    })
    .await;
}

/// MTU probes are packets of PADDING frames, one byte each. quinn-proto
/// 0.11.19 decodes every byte as a frame (about 25 ns a byte, 30 times the
/// decryption), so one client's probes up to 65,000 bytes cost the node
/// about 15 ms of CPU, and an attacker's 600 connections held a cluster's
/// cores for seconds (design notes §41). The vendored quinn-proto skips a
/// run of padding at once. A current-thread runtime runs both ends of every
/// connection on this thread, so this thread's CPU time is the whole cost:
/// 40 handshakes and both sides' MTU discovery to 65,000 bytes.
#[tokio::test(flavor = "current_thread")]
async fn mtu_probes_cost_little_cpu() {
    const CONNECTIONS: usize = 40;
    bounded(async {
        let config = cluster(1, 140).remove(0);
        let server_key = config.key.public();
        let mut node = start(config).await;
        let address = node.transport.local_address();
        // Hold the node's side of each connection, or it closes them.
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(connection) = node.clients.recv().await {
                held.push(connection);
            }
            (node.transport, held)
        });
        let before = thread_cpu();
        let mut connections = Vec::new();
        for seed in 0..CONNECTIONS {
            let identity = key(160 + seed as u8);
            let connection = raw_connection(&identity, address, server_key, ALPN_CLIENT)
                .await
                .unwrap();
            connections.push(connection);
        }
        // Wait until every client's probes reached loopback's MTU.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while connections
            .iter()
            .any(|connection| connection.stats().path.current_mtu < 60_000)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "MTU discovery did not reach 60,000 bytes on loopback"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let per_connection = (thread_cpu() - before) / CONNECTIONS as u32;
        println!("CPU per connection, both ends: {per_connection:?}");
        assert!(
            per_connection < Duration::from_millis(11),
            "a connection cost {per_connection:?} of CPU (padding decoded byte by byte again?)"
        );
        held.abort();
    })
    .await;
}

/// This thread's CPU time (user and system), from /proc in clock ticks.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // Fields after the command name (which may hold spaces): state is the
    // first, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

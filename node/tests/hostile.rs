//! Hostile input against a running cluster: an impostor peer, UDP garbage,
//! malformed, oversized and replayed client frames. None may crash or stall
//! a node, and each shows in /metrics.

mod common;

use bftd::client_api::{ClientMessage, NodeMessage};
use bftd::transport::{connect_client_with, Bytes, Peer, Transport, TransportConfig};
use bftd_crypto::KeyPair;
use bftd_protocol::{codec, NodeId, RequestMode, SeqNum};
use common::TestCluster;
use std::time::Duration;

/// A peer whose key is not in the cluster file is refused at the handshake
/// (counted), and the cluster keeps ordering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impostor_peer_is_refused() {
    let cluster = TestCluster::start(4, RequestMode::ClientSigned, "");
    // The impostor claims to be node 0 (lowest id: it dials everyone), with
    // its own key.
    let impostor = KeyPair::generate(&mut rand::rngs::OsRng);
    let mut peers: Vec<Peer> = cluster.peers();
    peers[0].key = impostor.public();
    peers[0].address = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let config = TransportConfig::new(NodeId(0), impostor, peers[0].address, peers);
    let (transport, _frames, _clients) = Transport::start(config).await.unwrap();
    transport.broadcast(Bytes::from_static(b"let me in"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rejected: f64 = (1..4)
            .map(|id| cluster.metric(id, "bftd_rejected_total{reason=\"handshake_rejected\"}"))
            .sum();
        if rejected > 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the impostor was never refused"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    transport.shutdown().await;
    let client = cluster.client(1).await;
    client.submit(b"still ordering".to_vec()).await.unwrap();
}

/// Random datagrams at every node's port do not disturb ordering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_garbage_is_harmless() {
    let cluster = TestCluster::start(4, RequestMode::ClientSigned, "");
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut state = 0x1234_5678_9abc_def0u64;
    for _ in 0..3000 {
        for address in &cluster.cluster.addresses {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let length = 1 + (state % 1400) as usize;
            let datagram: Vec<u8> = (0..length).map(|i| (state >> (i % 56)) as u8).collect();
            let _ = socket.send_to(&datagram, address);
        }
    }
    let client = cluster.client(2).await;
    for i in 0..20 {
        client
            .submit(format!("after garbage {i}").into_bytes())
            .await
            .unwrap();
    }
}

/// Malformed, oversized and replayed client frames: answered or cut off,
/// counted, and the node keeps serving other clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_client_frames() {
    let cluster = TestCluster::start(4, RequestMode::ClientSigned, "");
    let address = cluster.cluster.addresses[1];
    let node_key = cluster.cluster.committee.public_keys()[1];
    let key = KeyPair::generate(&mut rand::rngs::OsRng);

    // Malformed: the node says so and counts it.
    let mut link = connect_client_with(&key, address, node_key, 128 << 20)
        .await
        .unwrap();
    link.send(Bytes::from_static(b"\xff\xff\xff\xff not a message"))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), link.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        codec::decode::<NodeMessage>(&reply).unwrap(),
        NodeMessage::Malformed
    );
    assert!(cluster.metric(1, "bftd_rejected_total{reason=\"malformed_client_frame\"}") >= 1.0);

    // Replayed: the same signed request twice commits once, at one height.
    let client = cluster.client(1).await;
    let request = client.request(b"only once".to_vec());
    let first = client.submit_request(&request).await.unwrap();
    let again = client.submit_request(&request).await.unwrap();
    assert_eq!(first, again);
    let bytes = codec::encode(&ClientMessage::Submit(request)).unwrap();
    link.send(Bytes::from(bytes)).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), link.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(codec::decode::<NodeMessage>(&reply).unwrap(), NodeMessage::Receipt(r) if r.height == first.height)
    );
    assert!(
        cluster
            .metric_reaches(1, "bftd_requests_replayed_total", 2.0)
            .await
            >= 2.0
    );

    // Oversized: a frame above the node's 64 MiB limit closes that
    // connection, is counted, and other clients are unaffected.
    let huge = Bytes::from(vec![0u8; 65 << 20]);
    let _ = link.send(huge).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cluster.metric(1, "bftd_rejected_total{reason=\"oversized_frame\"}") < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "oversized frame not counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.submit(b"still serving".to_vec()).await.unwrap();
}

/// A client connection that sends nothing for `client_idle_timeout_ms` is
/// closed with a reason naming the setting, and counted; QUIC keep-alives
/// do not keep it open. A subscriber receiving blocks is not idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_closed_but_subscribers_are_not() {
    let cluster = TestCluster::start(
        4,
        RequestMode::ClientSigned,
        "[connections]\nclient_idle_timeout_ms = 700",
    );
    let address = cluster.cluster.addresses[1];
    let node_key = cluster.cluster.committee.public_keys()[1];
    let connect = || async {
        let key = KeyPair::generate(&mut rand::rngs::OsRng);
        connect_client_with(&key, address, node_key, 128 << 20)
            .await
            .unwrap()
    };
    let mut idle = connect().await;
    idle.send(Bytes::from(codec::encode(&ClientMessage::Status).unwrap()))
        .await
        .unwrap();
    let mut subscriber = connect().await;
    let subscribe = ClientMessage::Subscribe { from: SeqNum(1) };
    subscriber
        .send(Bytes::from(codec::encode(&subscribe).unwrap()))
        .await
        .unwrap();
    // Three idle timeouts of blocks for the subscriber.
    let client = cluster.client(1).await;
    let started = tokio::time::Instant::now();
    let mut blocks = 0;
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(2100) {
        client
            .submit(format!("block {i}").into_bytes())
            .await
            .unwrap();
        i += 1;
        while let Ok(frame) =
            tokio::time::timeout(Duration::from_millis(10), subscriber.recv()).await
        {
            let frame = frame
                .unwrap_or_else(|error| {
                    panic!("a subscriber receiving blocks was closed: {error:?}")
                })
                .expect("the subscription stream ended");
            if let Ok(NodeMessage::Block { .. }) = codec::decode::<NodeMessage>(&frame) {
                blocks += 1;
            }
        }
    }
    assert!(blocks > 0, "the subscriber received no block");
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), idle.recv())
            .await
            .expect("the idle client was never closed")
        {
            Ok(Some(_)) => continue, // The status reply.
            Ok(None) => panic!("the idle client's stream ended without a reason"),
            Err(error) => break error,
        }
    };
    // The reason travels in the close packet; if that one packet is lost
    // (a loaded machine's UDP buffers), the client learns of the close from
    // a stateless reset instead, without a reason.
    let closed = format!("{closed:?}");
    assert!(
        closed.contains("client_idle_timeout_ms") || closed.contains("Reset"),
        "closed as idle, with a reason naming the setting: {closed}"
    );
    assert!(
        cluster
            .metric_reaches(1, "bftd_clients_closed_idle_total", 1.0)
            .await
            >= 1.0
    );
}

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

/// The node file section the fetch-flood test runs with: a low rate so
/// that a few dozen small blocks exceed it.
const FETCH_LIMITS: &str = "\n[peers]\nfetch_bytes_per_second = 20000\nfetch_burst_bytes = 20000\n";

/// Payload bytes of a state-transfer answer, as the server estimates them
/// (payload plus 128 per request).
fn served_bytes(message: &bftd_protocol::WireMessage) -> u64 {
    match message {
        bftd_protocol::WireMessage::Blocks(blocks) => blocks
            .value
            .blocks
            .iter()
            .flat_map(|block| block.block.batch.requests.iter())
            .map(|request| request.payload_len() as u64 + 128)
            .sum(),
        _ => 0,
    }
}

/// A peer asking for blocks in a loop (each `FetchBlocks` is a few signed
/// bytes; each answer a store read of up to 16 MiB) is served at most its
/// byte rate (`[peers] fetch_bytes_per_second`, with `fetch_burst_bytes`
/// saved up), the rest refused and counted; and the fetches never reach
/// the consensus task, which goes on committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_blocks_flood_is_rate_limited_off_consensus() {
    let mut cluster = TestCluster::start(4, RequestMode::ClientSigned, FETCH_LIMITS);
    let client = cluster.client(1).await;
    for i in 0..30 {
        client
            .submit(format!("block {i}").into_bytes())
            .await
            .unwrap();
    }
    // Node 3 leaves; the test takes its place, with its key.
    cluster.kill(3);
    let key = bftd::config::read_key(&cluster.path().join("node3.key")).unwrap();
    let peers = cluster.peers();
    let config = TransportConfig::new(NodeId(3), key.clone(), peers[3].address, peers);
    let (transport, mut frames, _clients) = Transport::start(config).await.unwrap();
    let signer = bftd_protocol::signer::Signer::new(NodeId(3), key.clone(), Default::default());
    let fetch = signer
        .sign(bftd_protocol::message::FetchBlocks {
            from: bftd_protocol::SeqNum(1),
            to: bftd_protocol::SeqNum(64),
        })
        .unwrap();
    let fetch =
        Bytes::from(codec::encode(&bftd_protocol::WireMessage::FetchBlocks(fetch)).unwrap());
    // Until node 1 answers once (it redials node 3 after the restart).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    'connected: loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 1 never answered a fetch"
        );
        let _ = transport.send(NodeId(1), fetch.clone());
        let wait = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                frame = frames.recv() => {
                    let frame = frame.expect("transport open");
                    if frame.from == NodeId(1) && matches!(codec::decode(&frame.frame), Ok(bftd_protocol::WireMessage::Blocks(_))) {
                        break 'connected;
                    }
                }
                _ = &mut wait => break,
            }
        }
    }
    // Let the bucket fill again, then flood.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = tokio::time::Instant::now();
    for _ in 0..400 {
        let _ = transport.send(NodeId(1), fetch.clone());
    }
    let window = Duration::from_secs(3);
    let mut served = 0u64;
    let mut answers = 0u64;
    let mut largest = 0u64;
    while let Ok(Some(frame)) = tokio::time::timeout_at(started + window, frames.recv()).await {
        if frame.from != NodeId(1) {
            continue;
        }
        if let Ok(message) = codec::decode::<bftd_protocol::WireMessage>(&frame.frame) {
            let bytes = served_bytes(&message);
            if bytes > 0 {
                answers += 1;
                served += bytes;
                largest = largest.max(bytes);
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let bound = (20_000.0 * elapsed) as u64 + 20_000 + largest;
    assert!(
        served <= bound,
        "a flood of 400 fetches was served {served} bytes in {answers} answers in {elapsed:.1} s; the bound is {bound}"
    );
    assert!(
        cluster.metric(1, "bftd_fetches_refused_total{reason=\"rate\"}") > 0.0,
        "refusals not counted"
    );
    assert_eq!(
        cluster.metric(1, "bftd_messages_received_total{kind=\"fetch_blocks\"}"),
        0.0,
        "fetches reached the consensus task"
    );
    transport.shutdown().await;
    client.submit(b"still ordering".to_vec()).await.unwrap();
}

/// Sends one client message on a raw link.
async fn send_client(link: &mut bftd::transport::ClientLink, message: &ClientMessage) {
    link.send(Bytes::from(codec::encode(message).unwrap()))
        .await
        .unwrap();
}

/// The next reply on a raw link (within 10 s).
async fn next_reply(link: &mut bftd::transport::ClientLink) -> NodeMessage {
    let frame = tokio::time::timeout(Duration::from_secs(10), link.recv())
        .await
        .expect("a reply within 10 s")
        .unwrap()
        .unwrap();
    codec::decode(&frame).unwrap()
}

/// Replaying a request that executed blocks ago (any client may: requests
/// are public once in a block) is answered with its receipt, but does not
/// cost a store read of its block and a rebuilt Merkle tree each time:
/// 200 replays, one at a time, load the block at most twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_receipts_do_not_reload_their_block() {
    let cluster = TestCluster::start(4, RequestMode::ClientSigned, "");
    let client = cluster.client(1).await;
    let request = client.request(b"replayed".to_vec());
    let first = client.submit_request(&request).await.unwrap();
    for i in 0..5 {
        client
            .submit(format!("later {i}").into_bytes())
            .await
            .unwrap();
    }
    let address = cluster.cluster.addresses[1];
    let node_key = cluster.cluster.committee.public_keys()[1];
    let key = KeyPair::generate(&mut rand::rngs::OsRng);
    let mut link = connect_client_with(&key, address, node_key, 128 << 20)
        .await
        .unwrap();
    let before = cluster.metric(1, "bftd_receipt_block_loads_total");
    let mut receipts = 0;
    for _ in 0..200 {
        send_client(&mut link, &ClientMessage::Submit(request.clone())).await;
        match next_reply(&mut link).await {
            NodeMessage::Receipt(receipt) => {
                assert_eq!(receipt.height, first.height);
                receipts += 1;
            }
            NodeMessage::Rejected { .. } => {}
            other => panic!("unexpected reply {other:?}"),
        }
    }
    assert!(receipts >= 1, "no replay was answered with its receipt");
    let loads = cluster.metric(1, "bftd_receipt_block_loads_total") - before;
    assert!(
        loads <= 2.0,
        "200 replays of one executed request loaded its block {loads} times ({receipts} receipts)"
    );
}

/// A client that subscribes from height 1 again and again does not leave
/// store reads running behind it: aborting a replaced subscription's task
/// does not stop its read on a blocking thread, so each re-subscription
/// used to add a read. Reads of one connection must never overlap (the
/// node-wide peak stays at 1 with one subscriber), and closing the
/// connection leaves none running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribing_does_not_multiply_store_reads() {
    let cluster = TestCluster::start(4, RequestMode::ClientSigned, "");
    // Big blocks (about 60 KB requests, submitted together), so that a
    // read takes a while.
    let client = std::sync::Arc::new(cluster.client(1).await);
    for round in 0..2u8 {
        let submits: Vec<_> = (0..48u8)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move { client.submit(vec![round ^ i; 60_000]).await })
            })
            .collect();
        for submit in submits {
            submit.await.unwrap().unwrap();
        }
    }
    let address = cluster.cluster.addresses[1];
    let node_key = cluster.cluster.committee.public_keys()[1];
    let key = KeyPair::generate(&mut rand::rngs::OsRng);
    let mut link = connect_client_with(&key, address, node_key, 128 << 20)
        .await
        .unwrap();
    let subscribe = Bytes::from(
        codec::encode(&ClientMessage::Subscribe {
            from: bftd_protocol::SeqNum(1),
        })
        .unwrap(),
    );
    for _ in 0..300 {
        link.send(subscribe.clone()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let reads = cluster.metric(1, "bftd_subscription_reads_total");
    assert!(reads > 0.0, "no store read for the subscriptions");
    drop(link);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cluster.metric(1, "bftd_subscription_reads_running") > 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "store reads still running 10 s after the subscriber left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peak = cluster.metric(1, "bftd_subscription_reads_peak");
    assert!(
        peak <= 1.0,
        "300 re-subscriptions on one connection ran {peak} store reads at once ({reads} reads)"
    );
}

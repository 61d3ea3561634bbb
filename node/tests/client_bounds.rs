//! What one client can make a node hold: its frames are limited to one
//! request's worth, and a subscriber that stops reading is ended with a
//! reason it can read instead of pinning blocks in the node's memory.

mod common;

use bftd::client::ClientError;
use bftd::client_api::{ClientMessage, NodeMessage, Rejection};
use bftd::transport::{connect_client_with, Bytes};
use bftd_crypto::KeyPair;
use bftd_protocol::{codec, RequestMode, SeqNum};
use common::TestCluster;
use std::sync::Arc;
use std::time::Duration;

/// A frame far above a request's size (1 MiB, with the default 64 KiB
/// `max_request_bytes`) is refused at its length prefix: the node never
/// reads, copies or decodes it, the connection is closed and counted, and
/// other clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_frames_are_limited_to_one_request() {
    let cluster = TestCluster::start(4, RequestMode::ClientSigned, "");
    let address = cluster.cluster.addresses[1];
    let node_key = cluster.cluster.committee.public_keys()[1];
    let key = KeyPair::generate(&mut rand::rngs::OsRng);
    let mut link = connect_client_with(&key, address, node_key, 64 << 20)
        .await
        .unwrap();
    let request = bftd_protocol::Request {
        client: key.public(),
        request_id: 1,
        valid_until: SeqNum(100),
        payload: vec![7; 1 << 20],
    };
    let submit = ClientMessage::Submit(bftd_protocol::SignedRequest::sign(request, &key).unwrap());
    let _ = link
        .send(Bytes::from(codec::encode(&submit).unwrap()))
        .await;
    let answer = tokio::time::timeout(Duration::from_secs(10), link.recv()).await;
    let oversized = cluster.metric(1, "bftd_rejected_total{reason=\"oversized_client_frame\"}");
    println!("answer to a 1 MiB frame: {answer:?}; oversized_frame counted {oversized}");
    let answer = answer.expect("the node answers or closes within 10 s");
    assert!(
        !matches!(answer, Ok(Some(_))),
        "the node read the 1 MiB frame and answered it"
    );
    assert!(oversized >= 1.0);
    let client = cluster.client(1).await;
    client.submit(b"still serving".to_vec()).await.unwrap();

    // Just over max_request_bytes (inside the frame limit) with a bad
    // signature: refused as too large, so the size was checked first and
    // no signature was verified.
    let mut link = connect_client_with(&key, address, node_key, 64 << 20)
        .await
        .unwrap();
    let request = bftd_protocol::Request {
        client: key.public(),
        request_id: 2,
        valid_until: SeqNum(100),
        payload: vec![7; 64 * 1024 + 1],
    };
    let mut signed = bftd_protocol::SignedRequest::sign(request, &key).unwrap();
    signed.request.request_id = 3;
    let submit = ClientMessage::Submit(signed);
    link.send(Bytes::from(codec::encode(&submit).unwrap()))
        .await
        .unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(5), link.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        codec::decode::<NodeMessage>(&frame).unwrap(),
        NodeMessage::Rejected {
            request_id: 3,
            reason: Rejection::TooLarge
        }
    );
    // The Rust client says so itself, before sending.
    let error = client.submit(vec![0; 64 * 1024 + 1]).await.unwrap_err();
    assert!(
        matches!(error, ClientError::Rejected(Rejection::TooLarge)),
        "{error}"
    );
}

/// A subscriber that never reads while blocks commit: it gets what fitted
/// in its connection's byte-bounded queue, then `SubscriptionEnded`
/// with the reason, rather than the node queueing every block for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_ended_with_a_reason() {
    // The [protocol] section is left empty; these go to [clients].
    let cluster = TestCluster::start(
        4,
        RequestMode::ClientSigned,
        "[clients]\nreply_queue_bytes = 1048576\nsubscriber_stall_ms = 1000",
    );
    let address = cluster.cluster.addresses[1];
    let node_key = cluster.cluster.committee.public_keys()[1];
    let key = KeyPair::generate(&mut rand::rngs::OsRng);
    let mut link = connect_client_with(&key, address, node_key, 64 << 20)
        .await
        .unwrap();
    let subscribe = ClientMessage::Subscribe { from: SeqNum(1) };
    link.send(Bytes::from(codec::encode(&subscribe).unwrap()))
        .await
        .unwrap();
    // About 12 MB of blocks commit while the subscriber reads nothing.
    let client = Arc::new(cluster.client(2).await);
    let mut tasks = Vec::new();
    for task in 0..8u8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                client.submit(vec![task; 60 * 1024]).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let height = client.status().await.unwrap().height;
    let mut blocks = 0u64;
    let mut end = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Ok(Some(frame))) = tokio::time::timeout_at(deadline, link.recv()).await {
        match codec::decode::<NodeMessage>(&frame) {
            Ok(NodeMessage::Block { block, .. }) => {
                blocks += 1;
                assert_eq!(block.height(), SeqNum(blocks), "every block, in order");
            }
            decoded => {
                end = Some(decoded);
                break;
            }
        }
    }
    println!(
        "a subscriber that did not read for 3 s then got {blocks} of {height} blocks, then {end:?}"
    );
    let Some(Ok(NodeMessage::SubscriptionEnded { reason })) = end else {
        panic!("the subscription was never ended: {end:?}");
    };
    assert!(blocks < height, "ended before every block was queued");
    assert!(
        reason.contains(&format!("from height {}", blocks + 1)),
        "the reason says where to resume: {reason}"
    );
    assert!(
        cluster
            .metric_reaches(1, "bftd_subscriptions_ended_total", 1.0)
            .await
            >= 1.0
    );
    // The connection itself still serves.
    link.send(Bytes::from(codec::encode(&ClientMessage::Status).unwrap()))
        .await
        .unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(5), link.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(
        codec::decode::<NodeMessage>(&frame).unwrap(),
        NodeMessage::Status(_)
    ));
}

/// A byzantine peer (node 3's key, its process replaced) sends a message
/// whose checkpoint certificate repeats one valid vote 10,000 times: every
/// node refuses it while decoding it, at the second vote (design notes
/// §42; before, after decoding, on its shape), counted as
/// `malformed_frame`, no signature is checked, and the cluster keeps
/// ordering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_message_of_repeated_votes_is_refused_while_decoded() {
    use bftd::transport::{Peer, Transport, TransportConfig};
    use bftd_protocol::message::{Blocks, Checkpoint};
    use bftd_protocol::signer::{SafetyState, Signer};
    use bftd_protocol::{NodeId, QuorumCertificate, Vote, WireMessage};

    let mut cluster = TestCluster::start(4, RequestMode::ClientSigned, "");
    cluster.kill(3);
    let key = bftd::config::read_key(&cluster.path().join("node3.key")).unwrap();
    let peers: Vec<Peer> = cluster.peers();
    let config = TransportConfig::new(NodeId(3), key.clone(), peers[3].address, peers);
    let (transport, _frames, _clients) = Transport::start(config).await.unwrap();
    let signer = Signer::new(NodeId(3), key, SafetyState::default());
    let checkpoint = Checkpoint {
        seq: SeqNum(64),
        block_hash: bftd_crypto::Digest([9; 32]),
    };
    let vote = signer.sign(checkpoint).unwrap();
    let certificate = QuorumCertificate {
        value: checkpoint,
        votes: vec![
            Vote {
                signer: vote.signer,
                signature: vote.signature,
            };
            10_000
        ],
    };
    let message = WireMessage::Blocks(
        signer
            .sign(Blocks {
                blocks: Vec::new(),
                checkpoint: certificate,
            })
            .unwrap(),
    );
    let frame = Bytes::from(codec::encode(&message).unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        transport.broadcast(frame.clone());
        let refused: Vec<f64> = (0..3)
            .map(|id| cluster.metric(id, "bftd_rejected_total{reason=\"malformed_frame\"}"))
            .collect();
        if refused.iter().all(|&count| count >= 1.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the repeated votes were not refused while decoded by every node: {refused:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let invalid: f64 = (0..3)
        .map(|id| cluster.metric(id, "bftd_rejected_total{reason=\"invalid_signature\"}"))
        .sum();
    assert_eq!(invalid, 0.0, "no signature was checked and found wanting");
    transport.shutdown().await;
    let client = cluster.client(1).await;
    client.submit(b"still ordering".to_vec()).await.unwrap();
}

/// A connection that keeps the node's window (`[clients] in_flight_bytes`)
/// full queues at its own connection: another connection's requests go in
/// by turns, not behind everything the first has sent, and every slot is
/// given back once its request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_connection_waits_its_turn_in_the_window() {
    // About ten client-signed requests fit (each weighs its payload + 128 +
    // 2048).
    let cluster = TestCluster::start(
        4,
        RequestMode::ClientSigned,
        "[clients]\nin_flight_bytes = 22000",
    );
    let address = cluster.cluster.addresses[1];
    let node_key = cluster.cluster.committee.public_keys()[1];
    let key = KeyPair::generate(&mut rand::rngs::OsRng);
    let link = connect_client_with(&key, address, node_key, 1 << 20)
        .await
        .unwrap();
    let (mut sender, mut receiver) = link.split();
    const FLOOD: u64 = 600;
    let started = std::time::Instant::now();
    let flood = tokio::spawn(async move {
        for id in 1..=FLOOD {
            let request = bftd_protocol::Request {
                client: key.public(),
                request_id: id,
                valid_until: SeqNum(1_000),
                payload: vec![1; 16],
            };
            let signed = bftd_protocol::SignedRequest::sign(request, &key).unwrap();
            let frame = codec::encode(&ClientMessage::Submit(signed)).unwrap();
            if sender.send(Bytes::from(frame)).await.is_err() {
                break;
            }
        }
        sender
    });
    // Answers to every flood request (receipts, or "expired" if the flood
    // outlives their validity), in a task of their own.
    let answers = tokio::spawn(async move {
        let mut answered = 0;
        while answered < FLOOD {
            match tokio::time::timeout(Duration::from_secs(60), receiver.recv()).await {
                Ok(Ok(Some(_))) => answered += 1,
                _ => break,
            }
        }
        (answered, started.elapsed())
    });
    cluster
        .metric_reaches(1, "bftd_admission_wait_seconds_count", 20.0)
        .await;
    // The flood fills the window and has hundreds more waiting; an honest
    // connection's requests each go in within a turn or two.
    let client = cluster.client(1).await;
    let mut honest = Vec::new();
    for n in 0..5u8 {
        let sent = std::time::Instant::now();
        client.submit(vec![n; 32]).await.unwrap();
        honest.push(sent.elapsed());
    }
    let honest_done = started.elapsed();
    let _sender = flood.await.unwrap();
    let (answered, flood_took) = answers.await.unwrap();
    let slowest = honest.iter().max().copied().unwrap();
    println!(
        "flood of {FLOOD}: {answered} answered in {flood_took:?}; honest requests took {honest:?}"
    );
    assert_eq!(answered, FLOOD, "every flood request is answered");
    assert!(
        honest_done < flood_took,
        "the honest requests ended at {honest_done:?}, after the flood's last answer at \
         {flood_took:?}: they never met a full window"
    );
    assert!(
        slowest * 4 < flood_took,
        "an honest request waited {slowest:?}, a quarter of the flood's {flood_took:?} or more: \
         it queued behind the flood instead of taking turns"
    );
    // Every slot was given back.
    assert_eq!(
        cluster.metric(1, "bftd_admission_in_flight_bytes"),
        0.0,
        "{}",
        cluster.metrics(1)
    );
}

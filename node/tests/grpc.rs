//! The gRPC API against real `bftd` processes: receipts and blocks that
//! verify with the client library's own checks, coded rejections, a slow
//! subscriber ended with RESOURCE_EXHAUSTED saying why, and a
//! connection-authenticated node refusing `Submit` by name.

mod common;

use bftd::grpc::v1::{self, ordering_client::OrderingClient};
use bftd_crypto::KeyPair;
use bftd_protocol::{codec, Request, RequestMode, SeqNum, SignedRequest};
use common::*;
use std::time::Duration;
use tonic::transport::Channel;

/// A cluster whose nodes serve gRPC too; returns each node's endpoint.
fn start(mode: RequestMode, extra: &str) -> (TestCluster, Vec<String>) {
    let mut cluster = TestCluster::configure(4, mode, extra);
    let mut endpoints = Vec::new();
    for id in 0..4 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let path = cluster.node_file(id);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}\n[grpc]\nlisten = \"{address}\"\n")).unwrap();
        endpoints.push(format!("http://{address}"));
    }
    for id in 0..4 {
        cluster.init(id);
        cluster.start_node(id);
    }
    cluster.wait_healthy(Duration::from_secs(20));
    (cluster, endpoints)
}

async fn connect(endpoint: &str) -> OrderingClient<Channel> {
    OrderingClient::connect(endpoint.to_owned())
        .await
        .expect("connect to the gRPC endpoint")
}

fn signed(key: &KeyPair, request_id: u64, payload: Vec<u8>) -> SignedRequest {
    let request = Request {
        client: key.public(),
        request_id,
        valid_until: SeqNum(500),
        payload,
    };
    SignedRequest::sign(request, key).unwrap()
}

fn submit_request(request: &SignedRequest) -> v1::SubmitRequest {
    v1::SubmitRequest {
        signed_request: codec::encode(request).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_receipts_blocks_and_rejections() {
    let (cluster, endpoints) = start(RequestMode::ClientSigned, "");
    let mut client = connect(&endpoints[1]).await;
    let key = KeyPair::generate(&mut rand::rngs::OsRng);
    let good = signed(&key, 1, b"hello over grpc".to_vec());
    let mut tampered = signed(&key, 2, b"original".to_vec());
    tampered.request.payload = b"altered".to_vec();
    // One byte over the cluster's 64 KiB request limit (the message itself
    // is within gRPC's limit, so the node's own check answers).
    let huge = signed(&key, 3, vec![0; (64 << 10) + 1]);
    let requests = vec![
        submit_request(&good),
        v1::SubmitRequest {
            signed_request: vec![1, 2, 3],
        },
        submit_request(&tampered),
        submit_request(&huge),
    ];
    let mut replies = client
        .submit(tokio_stream::iter(requests))
        .await
        .expect("Submit")
        .into_inner();
    let mut receipt = None;
    let mut codes = Vec::new();
    while receipt.is_none() || codes.len() < 3 {
        let reply = tokio::time::timeout(Duration::from_secs(10), replies.message())
            .await
            .expect("replies in time")
            .expect("the stream stays up")
            .expect("a reply for every request");
        match reply.reply.expect("a reply") {
            v1::submit_reply::Reply::Receipt(r) => receipt = Some(r),
            v1::submit_reply::Reply::Rejection(r) => codes.push((r.request_id, r.code())),
        }
    }
    codes.sort_by_key(|(id, _)| *id);
    assert_eq!(
        codes,
        vec![
            (0, v1::RejectCode::Malformed),
            (2, v1::RejectCode::BadSignature),
            (3, v1::RejectCode::TooLarge),
        ]
    );
    let receipt = bftd::grpc::receipt_from_proto(receipt.unwrap()).unwrap();
    let lifetime = cluster.cluster.protocol.request_lifetime;
    let committed = receipt
        .verify(&cluster.cluster.committee, lifetime, &good)
        .expect("the gRPC receipt verifies with the library's checks");

    // The block, from another node: its certificate verifies and it holds
    // the request as the spec's bytes.
    let mut other = connect(&endpoints[2]).await;
    let mut blocks = other
        .deliver(v1::DeliverRequest {
            from_height: committed.height.0,
        })
        .await
        .unwrap()
        .into_inner();
    let block = tokio::time::timeout(Duration::from_secs(10), blocks.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(block.height, committed.height.0);
    assert!(block.requests.contains(&codec::encode(&good).unwrap()));
    let certificate =
        bftd::grpc::certificate_from_proto(block.certificate.expect("a certificate")).unwrap();
    assert_eq!(certificate.value.digest, committed.batch_digest);
    let status = other
        .status(v1::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((status.id, status.n), (2, 4));
    assert_eq!(status.request_mode, "client-signed");
}

/// A subscriber that stops reading is ended with RESOURCE_EXHAUSTED, and
/// the message says why and where to resume.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_slow_subscriber_is_told() {
    let (_cluster, endpoints) = start(
        RequestMode::ClientSigned,
        "\n[clients]\nreply_queue_bytes = 1024\nsubscriber_stall_ms = 200\n",
    );
    // About 6 MB of blocks: more than HTTP/2's windows (2 MB for the
    // stream) and the node's queues hold.
    const BLOCKS: u64 = 100;
    let mut client = connect(&endpoints[0]).await;
    let key = KeyPair::generate(&mut rand::rngs::OsRng);
    // Big blocks, one request each, so HTTP/2's windows and the queues
    // fill well before the subscriber reads.
    for id in 0..BLOCKS {
        let request = submit_request(&signed(&key, id, vec![id as u8; 60 << 10]));
        let mut replies = client
            .submit(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        let reply = tokio::time::timeout(Duration::from_secs(10), replies.message())
            .await
            .expect("a receipt in time")
            .unwrap()
            .unwrap();
        assert!(matches!(
            reply.reply,
            Some(v1::submit_reply::Reply::Receipt(_))
        ));
    }
    let mut blocks = client
        .deliver(v1::DeliverRequest { from_height: 1 })
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut read = 0;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), blocks.message()).await {
            Ok(Ok(Some(_))) => read += 1,
            Ok(Err(status)) => break status,
            other => panic!("the slow subscription was not ended: {other:?} after {read} blocks"),
        }
    };
    assert_eq!(ended.code(), tonic::Code::ResourceExhausted, "{ended:?}");
    assert!(
        ended.message().contains("subscribe again from height"),
        "{ended:?}"
    );
    assert!(read < BLOCKS, "ended before the end: {read} blocks read");
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_refuses_submit_in_connection_authenticated_mode() {
    let (_cluster, endpoints) = start(RequestMode::ConnectionAuthenticated, "");
    let mut client = connect(&endpoints[0]).await;
    let key = KeyPair::generate(&mut rand::rngs::OsRng);
    let request = submit_request(&signed(&key, 1, b"x".to_vec()));
    let refused = client
        .submit(tokio_stream::iter(vec![request]))
        .await
        .expect_err("Submit refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("connection-authenticated"),
        "{refused:?}"
    );
    // Reading works in either mode.
    let status = client.status(v1::StatusRequest {}).await.unwrap();
    assert_eq!(status.into_inner().request_mode, "connection-authenticated");
}

//! Committed tx/s and latency through the gRPC API from Rust, every
//! receipt verified (BENCHMARKS.md, "Client APIs"): keeps `WINDOW` requests
//! in flight on one `Submit` stream per node, for `SECONDS`, and prints
//! committed tx/s and the p50/p99 of submit → verified receipt.
//!
//! ```text
//! cargo run --release -p bftd --example grpc_load -- testnet-data/cluster.toml [SECONDS] [WINDOW] [NODES...]
//! ```
//!
//! The cluster file must give each node's `grpc` address (`bftnet up`
//! writes them).

use bftd::client_api::VerifiedCertificates;
use bftd::config::{Cluster, ClusterFile};
use bftd::grpc::v1::{self, ordering_client::OrderingClient};
use bftd_crypto::KeyPair;
use bftd_protocol::{codec, Request, SeqNum, SignedRequest};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const PAYLOAD_BYTES: usize = 512;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "testnet-data/cluster.toml".into());
    let seconds: f64 = args.get(2).map_or(Ok(10.0), |s| s.parse())?;
    let window: usize = args.get(3).map_or(Ok(500), |s| s.parse())?;
    let nodes: Vec<u16> = if args.len() > 4 {
        args[4..]
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?
    } else {
        vec![0]
    };
    let cluster = Cluster::load(path.as_ref())?;
    let file: ClusterFile = toml::from_str(&std::fs::read_to_string(&path)?)?;
    let duration = Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for node in nodes {
        let address = file
            .nodes
            .iter()
            .find(|n| n.id == node)
            .and_then(|n| n.grpc.clone())
            .ok_or(format!("{path} gives no grpc address for node {node}"))?;
        let cluster = cluster.clone();
        tasks.push(tokio::spawn(async move {
            stream(cluster, format!("http://{address}"), duration, window).await
        }));
    }
    let mut latencies = Vec::new();
    let mut rejected = 0;
    for task in tasks {
        let (mut l, r) = task.await?.map_err(|error| error.to_string())?;
        latencies.append(&mut l);
        rejected += r;
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(f64::NAN, |d: &Duration| d.as_secs_f64() * 1000.0)
    };
    println!(
        "rust gRPC: {:.0} tx/s committed (verified), p50 {:.1} ms, p99 {:.1} ms, {} rejected",
        latencies.len() as f64 / seconds,
        pct(0.50),
        pct(0.99),
        rejected
    );
    Ok(())
}

type Outcome = Result<(Vec<Duration>, usize), Box<dyn std::error::Error + Send + Sync>>;

/// One `Submit` stream, refilled as verified receipts arrive.
async fn stream(cluster: Cluster, endpoint: String, duration: Duration, window: usize) -> Outcome {
    let mut client = OrderingClient::connect(endpoint)
        .await?
        .max_decoding_message_size(usize::MAX);
    let status = client.status(v1::StatusRequest {}).await?.into_inner();
    let lifetime = cluster.protocol.request_lifetime;
    let valid_until = SeqNum(status.height + lifetime / 2);
    let key = KeyPair::generate(&mut rand::rngs::OsRng);
    let mut next_id = rand::random::<u64>() >> 1;
    let (requests, outgoing) = mpsc::channel(window * 2);
    let mut sent: HashMap<u64, (Instant, SignedRequest)> = HashMap::new();
    let mut send_one = |sent: &mut HashMap<u64, (Instant, SignedRequest)>| {
        next_id += 1;
        let request = Request {
            client: key.public(),
            request_id: next_id,
            valid_until,
            payload: vec![0; PAYLOAD_BYTES],
        };
        let signed = SignedRequest::sign(request, &key).expect("a request signs");
        let bytes = codec::encode(&signed).expect("a request encodes");
        sent.insert(next_id, (Instant::now(), signed));
        requests.try_send(v1::SubmitRequest {
            signed_request: bytes,
        })
    };
    for _ in 0..window {
        send_one(&mut sent)?;
    }
    let mut replies = client
        .submit(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await?
        .into_inner();
    let deadline = Instant::now() + duration;
    let mut latencies = Vec::new();
    let mut rejected = 0;
    let mut certified = VerifiedCertificates::default();
    while let Some(reply) = replies.message().await? {
        let now = Instant::now();
        match reply.reply {
            Some(v1::submit_reply::Reply::Receipt(receipt)) => {
                let Some((at, request)) = sent.remove(&receipt.request_id) else {
                    continue;
                };
                let receipt = bftd::grpc::receipt_from_proto(receipt)?;
                receipt.verify_inclusion(&request, lifetime)?;
                let pair = (receipt.height, receipt.batch_digest);
                if !certified.contains(pair) {
                    receipt.verify_certificate(&cluster.committee)?;
                    certified.insert(pair);
                }
                if now <= deadline {
                    latencies.push(now - at);
                }
            }
            Some(v1::submit_reply::Reply::Rejection(rejection)) => {
                sent.remove(&rejection.request_id);
                rejected += 1;
            }
            None => continue,
        }
        if now < deadline {
            send_one(&mut sent)?;
        } else if sent.is_empty() || now > deadline + Duration::from_secs(5) {
            break;
        }
    }
    Ok((latencies, rejected))
}

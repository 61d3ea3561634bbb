//! Committed tx/s and latency from Rust through the gRPC API or the QUIC
//! client library, every receipt verified (BENCHMARKS.md, "Client APIs"):
//! keeps `WINDOW` requests in flight per node (gRPC: on one `Submit`
//! stream; QUIC: `WINDOW` tasks sharing one `Client`), for `SECONDS`, and
//! prints committed tx/s and the p50/p99 of submit → verified receipt.
//!
//! ```text
//! cargo run --release -p bftd --example client_load -- testnet-data/cluster.toml SECONDS WINDOW grpc|quic [NODES...]
//! ```
//!
//! gRPC dials each node's `grpc` address from the cluster file (`bftnet up`
//! writes them). QUIC dials each node's own `listen` address from its node
//! file beside the cluster file (`nodeID.toml`, as bftnet writes them), so
//! neither path goes through bftnet's fault proxy.

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
    let quic = args.get(4).is_some_and(|mode| mode == "quic");
    let nodes: Vec<u16> = if args.len() > 5 {
        args[5..]
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
        if quic {
            let dir = std::path::Path::new(&path)
                .parent()
                .unwrap_or(std::path::Path::new("."));
            let config = bftd::config::NodeConfig::load(&dir.join(format!("node{node}.toml")))?;
            let mut direct = cluster.clone();
            direct.addresses[usize::from(node)] = config.listen;
            tasks.push(tokio::spawn(async move {
                quic_load(direct, node, duration, window).await
            }));
            continue;
        }
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
        "rust {}: {:.0} tx/s committed (verified), p50 {:.1} ms, p99 {:.1} ms, {} rejected or failed",
        if quic { "QUIC" } else { "gRPC" },
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
    // Moved forward with every receipt: a long run passes many heights.
    let mut valid_until = SeqNum(status.height + lifetime / 2);
    let key = KeyPair::generate(&mut rand::rngs::OsRng);
    let mut next_id = rand::random::<u64>() >> 1;
    let (requests, outgoing) = mpsc::channel(window * 2);
    let mut sent: HashMap<u64, (Instant, SignedRequest)> = HashMap::new();
    let mut send_one = |sent: &mut HashMap<u64, (Instant, SignedRequest)>, valid_until: SeqNum| {
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
        send_one(&mut sent, valid_until)?;
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
                valid_until = valid_until.max(SeqNum(receipt.height.0 + lifetime / 2));
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
            send_one(&mut sent, valid_until)?;
        } else if sent.is_empty() || now > deadline + Duration::from_secs(5) {
            break;
        }
    }
    Ok((latencies, rejected))
}

/// `window` tasks submitting through one QUIC client, each waiting for its
/// verified receipt before the next.
async fn quic_load(cluster: Cluster, node: u16, duration: Duration, window: usize) -> Outcome {
    let key = KeyPair::generate(&mut rand::rngs::OsRng);
    let client = std::sync::Arc::new(
        bftd::client::Client::connect(&cluster, bftd_protocol::NodeId(node), key).await?,
    );
    let deadline = Instant::now() + duration;
    let mut workers = Vec::new();
    for _ in 0..window {
        let client = client.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0;
            while Instant::now() < deadline {
                let sent = Instant::now();
                match client.submit(vec![0; PAYLOAD_BYTES]).await {
                    Ok(_) if Instant::now() <= deadline => latencies.push(sent.elapsed()),
                    Ok(_) => {}
                    Err(_) => failed += 1,
                }
            }
            (latencies, failed)
        }));
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    for worker in workers {
        let (mut l, f) = worker.await?;
        latencies.append(&mut l);
        failed += f;
    }
    Ok((latencies, failed))
}

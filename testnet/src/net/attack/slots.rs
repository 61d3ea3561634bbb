//! Issue 10 item 9: connection slots. From one address, QUIC handshakes
//! that are started and never finished (the first datagram of a real
//! client handshake, sent from 16 ports, 50 a second to each honest node:
//! each holds a handshake slot for the node's 5 s handshake timeout, and
//! a node has 64)
//! and 600 client connections that connect and then sit idle (more than
//! the 512 client slots). Meanwhile a newcomer (a fresh key, a fresh
//! connection) tries to connect and commit one request every half second:
//! honest clients that join during the attack must get in.

use super::peer::throwaway;
use super::{pause, stopped, Context, Outcome};
use bftd::client::Client;
use bftd::transport::{abandoned_initials, idle_clients};
use bftd_protocol::NodeId;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Source ports the handshakes come from.
const PORTS: usize = 16;
/// Handshake attempts per batch, per node; a batch a second.
const BATCH: usize = 50;
/// Idle client connections.
const IDLE: usize = 600;
/// Newcomers that failed beyond this share fail the attack's verdict.
const NEWCOMERS_MAY_FAIL: f64 = 0.05;

pub(super) async fn run(
    context: Arc<Context>,
    stop: watch::Receiver<bool>,
) -> Result<Outcome, String> {
    let handshakes = Arc::new(AtomicU64::new(0));
    let flood = tokio::spawn(handshake_flood(
        context.clone(),
        stop.clone(),
        handshakes.clone(),
    ));
    let idle = tokio::spawn(idle_connections(context.clone(), stop.clone()));
    let newcomers = newcomers(&context, stop).await;
    let _ = flood.await;
    let (held, refused) = idle.await.unwrap_or((0, 0));
    let mut outcome = Outcome::default();
    outcome.count(
        "abandoned_handshakes",
        handshakes.load(Ordering::Relaxed) as f64,
    );
    outcome.count("idle_connections_held", held as f64);
    outcome.count("idle_connections_refused", refused as f64);
    let (joined, failed, slowest) = newcomers;
    outcome.count("newcomers_joined", joined as f64);
    outcome.count("newcomers_failed", failed as f64);
    outcome.count("newcomer_slowest_ms", slowest.as_millis() as f64);
    let tried = (joined + failed).max(1) as f64;
    if failed as f64 / tried > NEWCOMERS_MAY_FAIL {
        outcome.violations.push(format!(
            "{failed} of {} newcomers could not connect and commit",
            joined + failed
        ));
    }
    Ok(outcome)
}

async fn handshake_flood(
    context: Arc<Context>,
    mut stop: watch::Receiver<bool>,
    sent: Arc<AtomicU64>,
) {
    let mut sockets = Vec::new();
    for _ in 0..PORTS {
        if let Ok(socket) = tokio::net::UdpSocket::bind("127.0.0.1:0").await {
            sockets.push(socket);
        }
    }
    let keys = context.cluster.committee.public_keys();
    let client = throwaway();
    let mut turn = 0usize;
    while !stopped(&stop) {
        for &id in &context.honest {
            let index = usize::from(id);
            let (Some(&address), Some(&node_key)) =
                (context.cluster.addresses.get(index), keys.get(index))
            else {
                continue;
            };
            let Ok(initials) = abandoned_initials(&client, node_key, BATCH).await else {
                continue;
            };
            for initial in initials {
                turn += 1;
                if let Some(socket) = sockets.get(turn % sockets.len().max(1)) {
                    if socket.send_to(&initial, address).await.is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        pause(&mut stop, Duration::from_secs(1)).await;
    }
}

/// Holds as many idle client connections as the nodes let it, [`IDLE`]
/// spread over the honest nodes, dialed 64 at a time from one local
/// endpoint; returns (held, refused attempts).
async fn idle_connections(context: Arc<Context>, mut stop: watch::Receiver<bool>) -> (u64, u64) {
    let keys = context.cluster.committee.public_keys();
    let per_node = IDLE.div_ceil(context.honest.len().max(1));
    let mut held = Vec::new();
    let mut refused = 0u64;
    for &id in &context.honest {
        let index = usize::from(id);
        let (Some(&address), Some(&node_key)) =
            (context.cluster.addresses.get(index), keys.get(index))
        else {
            continue;
        };
        match idle_clients(address, node_key, per_node, 64).await {
            Ok((clients, failed)) => {
                refused += failed as u64;
                held.push(clients);
            }
            Err(_) => refused += per_node as u64,
        }
    }
    while !stopped(&stop) {
        pause(&mut stop, Duration::from_millis(500)).await;
    }
    let count: usize = held.iter().map(|clients| clients.len()).sum();
    drop(held);
    (count as u64, refused)
}

/// Every half second, a fresh client connects to the next honest node and
/// commits one request (10 s for both). Returns (joined, failed, slowest).
async fn newcomers(context: &Context, mut stop: watch::Receiver<bool>) -> (u64, u64, Duration) {
    let slowest = Mutex::new(Duration::ZERO);
    let (mut joined, mut failed) = (0u64, 0u64);
    let mut turn = 0usize;
    // Let the flood and the idle connections take hold first.
    pause(&mut stop, Duration::from_secs(2)).await;
    while !stopped(&stop) {
        let node = context.honest[turn % context.honest.len()];
        turn += 1;
        let started = Instant::now();
        let attempt = tokio::time::timeout(Duration::from_secs(10), async {
            let mut client = Client::connect(&context.cluster, NodeId(node), throwaway()).await?;
            client.set_timeout(Duration::from_secs(8));
            client.submit(b"newcomer".to_vec()).await
        })
        .await;
        match attempt {
            Ok(Ok(_)) => joined += 1,
            _ => failed += 1,
        }
        if let Ok(mut slowest) = slowest.lock() {
            *slowest = (*slowest).max(started.elapsed());
        }
        pause(&mut stop, Duration::from_millis(500)).await;
    }
    let slowest = slowest.into_inner().unwrap_or_default();
    (joined, failed, slowest)
}

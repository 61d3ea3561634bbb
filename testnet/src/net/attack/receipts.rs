//! Issue 10 items 2 and 3, what is cheap of them in a live testnet: the
//! last node restarts as `bftd-byzantine lie-to-clients` (receipts naming
//! wrong heights), and two clients of that node submit 20 requests a
//! second. Every lying receipt must be refused by the client library (the
//! height's block and certificate do not match): a request it reports as
//! committed came with a receipt that verified.
//!
//! Item 3 (a replica in connection-authenticated mode inventing requests in
//! another node's clients' names) has no `bftd-byzantine` behaviour: the
//! vouching rules are checked by `protocol::vouch` tests and the
//! simulator's connection-authenticated sweeps, not here.

use super::peer::{height, throwaway};
use super::{pause, stopped, Context, Outcome};
use crate::net::launch::{kill, node_status, start_node, wait_healthy};
use crate::net::layout::{write_node_files, State};
use bftd::client::{Client, ClientError};
use bftd_protocol::NodeId;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Clients of the lying node.
const CLIENTS: usize = 2;

pub(super) async fn run(
    context: Arc<Context>,
    mut stop: watch::Receiver<bool>,
) -> Result<Outcome, String> {
    let liar = context.attacker;
    let layout = &context.layout;
    let mut state = State::load(layout).map_err(|e| e.to_string())?;
    if let Some(pid) = state.node(liar).map_err(|e| e.to_string())?.pid {
        kill(pid);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    state.node_mut(liar).map_err(|e| e.to_string())?.behaviour = Some("lie-to-clients".into());
    write_node_files(layout, &state).map_err(|e| e.to_string())?;
    let _child = start_node(layout, &mut state, liar).map_err(|e| e.to_string())?;
    wait_healthy(layout, &state, &[liar], Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    // Its clients set their requests' validity from the height it reports:
    // wait until it caught up, so what is measured is its lies, not its lag.
    let metrics = state.node(liar).map_err(|e| e.to_string())?.metrics;
    let target = height(&context).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        let status = node_status(metrics, Duration::from_secs(1)).await;
        if status.is_some_and(|status| status.height >= target) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("  node {liar} restarted as bftd-byzantine lie-to-clients, caught up to {target}");
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (context, stop) = (context.clone(), stop.clone());
        tasks.push(tokio::spawn(
            async move { submit(&context, liar, stop).await },
        ));
    }
    while !stopped(&stop) {
        pause(&mut stop, Duration::from_millis(500)).await;
    }
    let (mut committed, mut invalid, mut failed) = (0u64, 0u64, 0u64);
    for task in tasks {
        if let Ok((c, i, f)) = task.await {
            committed += c;
            invalid += i;
            failed += f;
        }
    }
    let mut outcome = Outcome::default();
    outcome.count("liar_clients_verified_receipts", committed as f64);
    outcome.count("lying_receipts_refused", invalid as f64);
    outcome.count("liar_clients_other_failures", failed as f64);
    Ok(outcome)
}

/// Submits 10 requests a second through the liar; returns (committed,
/// refused as invalid, other failures).
async fn submit(context: &Context, liar: u16, mut stop: watch::Receiver<bool>) -> (u64, u64, u64) {
    let Ok(mut client) = Client::connect(&context.cluster, NodeId(liar), throwaway()).await else {
        return (0, 0, 1);
    };
    client.set_timeout(Duration::from_secs(10));
    let client = Arc::new(client);
    let (mut committed, mut invalid, mut failed) = (0u64, 0u64, 0u64);
    let mut number = 0u64;
    let mut running = Vec::new();
    while !stopped(&stop) {
        number += 1;
        let client = client.clone();
        running.push(tokio::spawn(async move {
            client
                .submit(format!("to the liar {number}").into_bytes())
                .await
        }));
        pause(&mut stop, Duration::from_millis(100)).await;
    }
    for task in running {
        match task.await {
            Ok(Ok(_)) => committed += 1,
            Ok(Err(ClientError::InvalidReceipt(_))) => invalid += 1,
            _ => failed += 1,
        }
    }
    (committed, invalid, failed)
}

//! Issue 10 item 11: requests cheap to send and expensive to answer, all at
//! once: subscriptions from height 1 renewed every 100 ms (each renewal
//! starts reading the log from the start again), replays of 50 executed
//! requests in a loop (each answered with a receipt: a block read and a
//! Merkle proof), and, as the last node, `FetchBlocks` for the whole log
//! and statuses claiming to be at height 0 (each could make a node send
//! every block it has), 20 a second each to every honest node.

use super::peer::{client_frame, raw_link, throwaway, Impostor};
use super::{pause, stopped, Context, Outcome};
use bftd::client::Client;
use bftd::client_api::ClientMessage;
use bftd_protocol::message::{FetchBlocks, Status};
use bftd_protocol::{NodeId, SeqNum, View, WireMessage};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Resubscribing connections.
const RESUBSCRIBERS: usize = 8;
/// Executed requests replayed.
const REPLAYED: usize = 50;
/// Replaying connections.
const REPLAYERS: usize = 4;

pub(super) async fn run(
    context: Arc<Context>,
    mut stop: watch::Receiver<bool>,
) -> Result<Outcome, String> {
    let impostor = Impostor::start(&context).await?;
    let resubscribed = Arc::new(AtomicU64::new(0));
    let replayed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for index in 0..RESUBSCRIBERS {
        let node = context.honest[index % context.honest.len()];
        let (context, stop, count) = (context.clone(), stop.clone(), resubscribed.clone());
        tasks.push(tokio::spawn(async move {
            resubscribe(&context, node, stop, &count).await
        }));
    }
    // The requests to replay: committed first.
    let node = context.honest[0];
    let client = Client::connect(&context.cluster, NodeId(node), throwaway())
        .await
        .map_err(|e| format!("replayer: {e}"))?;
    let mut executed = Vec::new();
    for index in 0..REPLAYED {
        let request = client.request(format!("replayed {index}").into_bytes());
        if client.submit_request(&request).await.is_ok() {
            executed.push(client_frame(&ClientMessage::Submit(request)));
        }
    }
    let executed = Arc::new(executed);
    for index in 0..REPLAYERS {
        let node = context.honest[index % context.honest.len()];
        let (context, stop, count) = (context.clone(), stop.clone(), replayed.clone());
        let executed = executed.clone();
        tasks.push(tokio::spawn(async move {
            replay(&context, node, &executed, stop, &count).await
        }));
    }
    let signer = impostor.signer();
    let fetch = signer
        .sign(FetchBlocks {
            from: SeqNum(1),
            to: SeqNum(u64::MAX / 2),
        })
        .map(WireMessage::FetchBlocks)
        .map_err(|e| e.to_string())?;
    let behind = signer
        .sign(Status {
            view: View(0),
            in_view_change: false,
            last_executed: SeqNum(0),
            stable_checkpoint: SeqNum(0),
            settings: context.cluster.protocol,
        })
        .map(WireMessage::Status)
        .map_err(|e| e.to_string())?;
    let (mut fetches, mut statuses) = (0u64, 0u64);
    while !stopped(&stop) {
        impostor.broadcast(&fetch);
        impostor.broadcast(&behind);
        fetches += 1;
        statuses += 1;
        pause(&mut stop, Duration::from_millis(50)).await;
    }
    for task in tasks {
        let _ = task.await;
    }
    let mut outcome = Outcome::default();
    outcome.count(
        "resubscriptions",
        resubscribed.load(Ordering::Relaxed) as f64,
    );
    outcome.count("replays_sent", replayed.load(Ordering::Relaxed) as f64);
    outcome.count("fetch_blocks_per_node", fetches as f64);
    outcome.count("behind_statuses_per_node", statuses as f64);
    outcome.count("attacker_queue_full_drops", impostor.dropped() as f64);
    impostor.transport.shutdown().await;
    Ok(outcome)
}

async fn resubscribe(
    context: &Context,
    node: u16,
    mut stop: watch::Receiver<bool>,
    count: &AtomicU64,
) {
    let Ok(link) = raw_link(context, node, &throwaway()).await else {
        return;
    };
    let (mut sender, mut receiver) = link.split();
    let reader = tokio::spawn(async move { while let Ok(Some(_)) = receiver.recv().await {} });
    let subscribe = client_frame(&ClientMessage::Subscribe { from: SeqNum(1) });
    while !stopped(&stop) {
        if sender.send(subscribe.clone()).await.is_err() {
            break;
        }
        count.fetch_add(1, Ordering::Relaxed);
        pause(&mut stop, Duration::from_millis(100)).await;
    }
    reader.abort();
}

async fn replay(
    context: &Context,
    node: u16,
    executed: &[bftd::transport::Bytes],
    mut stop: watch::Receiver<bool>,
    count: &AtomicU64,
) {
    let Ok(link) = raw_link(context, node, &throwaway()).await else {
        return;
    };
    let (mut sender, mut receiver) = link.split();
    let reader = tokio::spawn(async move { while let Ok(Some(_)) = receiver.recv().await {} });
    while !stopped(&stop) {
        for frame in executed {
            if sender.send(frame.clone()).await.is_err() {
                reader.abort();
                return;
            }
            count.fetch_add(1, Ordering::Relaxed);
        }
        pause(&mut stop, Duration::from_millis(50)).await;
    }
    reader.abort();
}

//! Issue 10 item 1: at-most-once against eviction. A victim commits a
//! signed request; then 100,001 requests from as many throwaway keys flood
//! the nodes (a per-client table of bounded size would have to forget the
//! victim); then the victim's old request is replayed to every honest node.
//! Each answer must be the original receipt (same height) or a refusal
//! (expired): a receipt at another height means it executed twice.

use super::peer::{client_frame, raw_link, throwaway};
use super::{stopped, Context, Outcome};
use bftd::client::Client;
use bftd::client_api::{ClientMessage, NodeMessage, Rejection};
use bftd_protocol::message::{Request, SignedRequest};
use bftd_protocol::{codec, NodeId, SeqNum};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// Throwaway keys, one request each.
const KEYS: usize = 100_001;
/// Flooding connections.
const LINKS: usize = 8;
/// Requests awaiting an answer per connection.
const IN_FLIGHT: usize = 500;

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    committed: AtomicU64,
    busy: AtomicU64,
    refused: AtomicU64,
}

pub(super) async fn run(
    context: Arc<Context>,
    stop: watch::Receiver<bool>,
) -> Result<Outcome, String> {
    let victim_node = *context.honest.first().ok_or("no honest node")?;
    let mut victim = Client::connect(&context.cluster, NodeId(victim_node), throwaway())
        .await
        .map_err(|e| format!("victim: {e}"))?;
    victim.set_timeout(Duration::from_secs(30));
    let request = victim.request(b"the victim's one payment".to_vec());
    let first = victim
        .submit_request(&request)
        .await
        .map_err(|e| format!("victim's request: {e}"))?;
    eprintln!(
        "  victim's request committed at height {}; flooding {KEYS} keys",
        first.height.0
    );

    let tally = Arc::new(Tally::default());
    let lifetime = context.cluster.protocol.request_lifetime.max(2);
    let mut tasks = Vec::new();
    for link in 0..LINKS {
        let node = context.honest[link % context.honest.len()];
        let share = KEYS / LINKS + usize::from(link < KEYS % LINKS);
        let context = context.clone();
        let tally = tally.clone();
        let valid_until = SeqNum(first.height.0 + lifetime / 2);
        tasks.push(tokio::spawn(async move {
            flood(&context, node, share, valid_until, &tally).await
        }));
    }
    for task in tasks {
        if let Ok(Err(error)) = task.await {
            eprintln!("  flood connection: {error}");
        }
    }
    let _ = stopped(&stop);

    // The replay, to every honest node, after the flood.
    let mut outcome = Outcome::default();
    let (mut same, mut expired, mut other) = (0u32, 0u32, 0u32);
    let frame = client_frame(&ClientMessage::Submit(request.clone()));
    for &node in &context.honest {
        let Ok(mut link) = raw_link(&context, node, &throwaway()).await else {
            other += 1;
            continue;
        };
        if link.send(frame.clone()).await.is_err() {
            other += 1;
            continue;
        }
        let reply = tokio::time::timeout(Duration::from_secs(15), link.recv()).await;
        match reply.ok().and_then(|r| r.ok().flatten()) {
            Some(bytes) => match codec::decode::<NodeMessage>(&bytes) {
                Ok(NodeMessage::Receipt(receipt)) if receipt.height == first.height => same += 1,
                Ok(NodeMessage::Receipt(receipt)) => outcome.violations.push(format!(
                    "the victim's request executed again: node {node} sent a receipt at height {} (first at {})",
                    receipt.height.0, first.height.0
                )),
                Ok(NodeMessage::Rejected {
                    reason: Rejection::Expired,
                    ..
                }) => expired += 1,
                _ => other += 1,
            },
            None => other += 1,
        }
        link.close();
    }
    // And through the victim's own client (which verifies the receipt).
    match victim.submit_request(&request).await {
        Ok(again) if again.height == first.height => same += 1,
        Ok(again) => outcome.violations.push(format!(
            "the victim's client got a verified receipt at height {} (first at {})",
            again.height.0, first.height.0
        )),
        Err(bftd::client::ClientError::Rejected(Rejection::Expired)) => expired += 1,
        Err(_) => other += 1,
    }
    outcome.count("flood_sent", tally.sent.load(Ordering::Relaxed) as f64);
    outcome.count(
        "flood_committed",
        tally.committed.load(Ordering::Relaxed) as f64,
    );
    outcome.count("flood_busy", tally.busy.load(Ordering::Relaxed) as f64);
    outcome.count(
        "flood_other_refusals",
        tally.refused.load(Ordering::Relaxed) as f64,
    );
    outcome.count("replay_same_receipt", same);
    outcome.count("replay_expired", expired);
    outcome.count("replay_unanswered", other);
    outcome.count("executed_twice", outcome.violations.len() as f64);
    Ok(outcome)
}

/// Sends `count` requests, each from a fresh key, on one connection to
/// `node`, at most [`IN_FLIGHT`] unanswered; returns when all are answered
/// (or the connection fails, or answers stop for 30 s).
async fn flood(
    context: &Context,
    node: u16,
    count: usize,
    valid_until: SeqNum,
    tally: &Arc<Tally>,
) -> Result<(), String> {
    let link = raw_link(context, node, &throwaway()).await?;
    let (mut sender, mut receiver) = link.split();
    let window = Arc::new(Semaphore::new(IN_FLIGHT));
    let reader = {
        let window = window.clone();
        let tally = tally.clone();
        tokio::spawn(async move {
            let mut answered = 0;
            while answered < count {
                let Ok(Ok(Some(bytes))) =
                    tokio::time::timeout(Duration::from_secs(30), receiver.recv()).await
                else {
                    break;
                };
                let counter = match codec::decode::<NodeMessage>(&bytes) {
                    Ok(NodeMessage::Receipt(_)) => &tally.committed,
                    Ok(NodeMessage::Rejected {
                        reason: Rejection::Busy,
                        ..
                    }) => &tally.busy,
                    Ok(NodeMessage::Rejected { .. }) => &tally.refused,
                    _ => continue,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                answered += 1;
                window.add_permits(1);
            }
            // Unblocks the sender if answers stopped.
            window.close();
        })
    };
    for index in 0..count {
        let Ok(permit) = window.acquire().await else {
            break;
        };
        permit.forget();
        let key = throwaway();
        let request = Request {
            client: key.public(),
            request_id: index as u64,
            valid_until,
            payload: format!("flood {node} {index}").into_bytes(),
        };
        let Ok(signed) = SignedRequest::sign(request, &key) else {
            continue;
        };
        if sender
            .send(client_frame(&ClientMessage::Submit(signed)))
            .await
            .is_err()
        {
            break;
        }
        tally.sent.fetch_add(1, Ordering::Relaxed);
    }
    let _ = reader.await;
    Ok(())
}

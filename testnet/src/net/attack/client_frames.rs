//! Issue 10 item 8: what one client can make a node hold or compute.
//!
//! - `client-frames`: connections that send frames of exactly the client
//!   frame limit, alternately junk (answered `Malformed`) and requests of
//!   `max_request_bytes` with a bad signature (a full-size hash and a
//!   signature check each, if the size were not checked first), plus a new
//!   connection every second sending a 64 MiB frame (the peers' limit).
//! - `slow-subscriber`: connections that subscribe from height 1 and never
//!   read a byte.

use super::peer::{client_frame, raw_link, throwaway};
use super::{pause, stopped, Context, Outcome};
use bftd::client_api::{max_client_frame_bytes, ClientMessage};
use bftd::transport::Bytes;
use bftd_protocol::message::{Request, SignedRequest};
use bftd_protocol::SeqNum;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Connections sending full-size frames.
const FRAME_LINKS: usize = 8;
/// Full-size frames per second on each.
const FRAMES_PER_SECOND: u64 = 100;
/// Subscribers that never read.
const SUBSCRIBERS: usize = 64;

pub(super) async fn frames(
    context: Arc<Context>,
    mut stop: watch::Receiver<bool>,
) -> Result<Outcome, String> {
    let settings = &context.cluster.protocol;
    let limit = max_client_frame_bytes(settings.max_request_bytes);
    let junk = Bytes::from(vec![0xff; limit]);
    let key = throwaway();
    let mut forged = SignedRequest::sign(
        Request {
            client: key.public(),
            request_id: 1,
            valid_until: SeqNum(u64::MAX / 2),
            payload: vec![7; settings.max_request_bytes],
        },
        &key,
    )
    .map_err(|e| e.to_string())?;
    forged.request.request_id = 2; // the signature no longer matches
    let mut forged_frame = client_frame(&ClientMessage::Submit(forged)).to_vec();
    forged_frame.truncate(limit);
    let forged_frame = Bytes::from(forged_frame);
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for index in 0..FRAME_LINKS {
        let node = context.honest[index % context.honest.len()];
        let (context, stop, sent) = (context.clone(), stop.clone(), sent.clone());
        let (junk, forged) = (junk.clone(), forged_frame.clone());
        tasks.push(tokio::spawn(async move {
            full_size_frames(&context, node, junk, forged, stop, &sent).await
        }));
    }
    let mut huge = 0u64;
    let mut turn = 0usize;
    let oversized = Bytes::from(vec![0u8; 64 << 20]);
    while !stopped(&stop) {
        let node = context.honest[turn % context.honest.len()];
        turn += 1;
        if let Ok(mut link) = raw_link(&context, node, &throwaway()).await {
            huge += 1;
            // The node cuts it off at the length prefix (counted as
            // oversized_client_frame); give up on the rest after 2 s.
            let _ =
                tokio::time::timeout(Duration::from_secs(2), link.send(oversized.clone())).await;
            link.close();
        }
        pause(&mut stop, Duration::from_secs(1)).await;
    }
    let mut outcome = Outcome::default();
    for task in tasks {
        if let Ok(Err(error)) = task.await {
            outcome.count(&format!("link_error: {error}"), 1.0);
        }
    }
    outcome.count("full_size_frames", sent.load(Ordering::Relaxed) as f64);
    outcome.count("frames_64mib", huge as f64);
    Ok(outcome)
}

async fn full_size_frames(
    context: &Context,
    node: u16,
    junk: Bytes,
    forged: Bytes,
    mut stop: watch::Receiver<bool>,
    sent: &AtomicU64,
) -> Result<(), String> {
    let mut connection = 0;
    while !stopped(&stop) {
        let link = raw_link(context, node, &throwaway()).await?;
        connection += 1;
        let (mut sender, mut receiver) = link.split();
        // Answers are read and thrown away, so it is the node's work that
        // is measured, not a full queue.
        let reader = tokio::spawn(async move { while let Ok(Some(_)) = receiver.recv().await {} });
        let period = Duration::from_secs_f64(1.0 / FRAMES_PER_SECOND as f64);
        let mut count = 0u64;
        while !stopped(&stop) {
            let frame = if count.is_multiple_of(2) {
                junk.clone()
            } else {
                forged.clone()
            };
            if sender.send(frame).await.is_err() {
                break; // cut off: connect again
            }
            count += 1;
            sent.fetch_add(1, Ordering::Relaxed);
            pause(&mut stop, period).await;
        }
        reader.abort();
        if connection > 100 {
            return Err("cut off more than 100 times".into());
        }
    }
    Ok(())
}

pub(super) async fn subscribers(
    context: Arc<Context>,
    mut stop: watch::Receiver<bool>,
) -> Result<Outcome, String> {
    let mut links = Vec::new();
    let mut failed = 0u64;
    let subscribe = client_frame(&ClientMessage::Subscribe { from: SeqNum(1) });
    for index in 0..SUBSCRIBERS {
        let node = context.honest[index % context.honest.len()];
        match raw_link(&context, node, &throwaway()).await {
            Ok(mut link) => {
                if link.send(subscribe.clone()).await.is_ok() {
                    // Kept, never read.
                    links.push(link);
                } else {
                    failed += 1;
                }
            }
            Err(_) => failed += 1,
        }
    }
    while !stopped(&stop) {
        pause(&mut stop, Duration::from_millis(500)).await;
    }
    let mut outcome = Outcome::default();
    outcome.count("subscribers_never_reading", links.len() as f64);
    outcome.count("subscribers_not_connected", failed as f64);
    for link in &links {
        link.close();
    }
    Ok(outcome)
}

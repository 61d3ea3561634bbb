//! Client connections: submissions, subscriptions to committed blocks, and
//! status queries, each connection served by its own tasks with bounded
//! queues, so one slow or hostile client can only hurt itself.

use super::consensus::Input;
use super::Shared;
use crate::client_api::{ClientMessage, NodeMessage, Rejection};
use crate::storage::DiskStorage;
use crate::transport::{Bytes, ClientConnection, FrameReceiver, FrameSender};
use bftd_protocol::{codec, verify_request, GrantCachingVerifier, NodeId, RequestMode, SeqNum};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Replies written together at most.
const REPLY_WRITE_BATCH: usize = 512;
/// A client must open its stream this soon after connecting.
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// Blocks read from storage at a time when catching a subscriber up.
const SUBSCRIBE_CHUNK: usize = 64;

/// Accepts client connections until the channel closes.
pub(crate) async fn accept(
    mut connections: mpsc::Receiver<ClientConnection>,
    inputs: mpsc::Sender<Input>,
    shared: Arc<Shared>,
    storage: DiskStorage,
    height: watch::Receiver<SeqNum>,
) {
    while let Some(connection) = connections.recv().await {
        let inputs = inputs.clone();
        let shared = shared.clone();
        let storage = storage.clone();
        let height = height.clone();
        tokio::spawn(async move {
            let client = connection.client;
            match tokio::time::timeout(STREAM_TIMEOUT, connection.accept_stream()).await {
                Ok(Ok((sender, receiver))) => {
                    serve(
                        connection, sender, receiver, inputs, shared, storage, height,
                    )
                    .await;
                }
                _ => {
                    tracing::debug!(client = %client.short(), "client opened no stream in time");
                    connection.close();
                }
            }
        });
    }
}

async fn serve(
    connection: ClientConnection,
    sender: FrameSender,
    mut receiver: FrameReceiver,
    inputs: mpsc::Sender<Input>,
    shared: Arc<Shared>,
    storage: DiskStorage,
    height: watch::Receiver<SeqNum>,
) {
    // Beyond this the client is not reading: replies are dropped (counted),
    // and the client resends what it still waits for.
    let (reply_to, replies) = mpsc::channel::<NodeMessage>(shared.reply_queue.max(1));
    let writer = tokio::spawn(write_replies(sender, replies));
    let mut subscription: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let frame = match receiver.recv().await {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => break,
        };
        let message = match codec::decode::<ClientMessage>(&frame) {
            Ok(message) => message,
            Err(_) => {
                shared
                    .metrics
                    .malformed_client_frames
                    .fetch_add(1, Ordering::Relaxed);
                let _ = reply_to.try_send(NodeMessage::Malformed);
                continue;
            }
        };
        match message {
            ClientMessage::Submit(request) => {
                shared
                    .metrics
                    .client_requests
                    .fetch_add(1, Ordering::Relaxed);
                let request_id = request.request.request_id;
                let reject = |reason: Rejection| {
                    shared.metrics.rejected(reason);
                    let _ = reply_to.try_send(NodeMessage::Rejected { request_id, reason });
                };
                // Connection-authenticated: the handshake proved the key, so
                // a request may only be in this connection's own name.
                if shared.request_mode == RequestMode::ConnectionAuthenticated
                    && request.request.client != connection.client
                {
                    reject(Rejection::WrongClient);
                    continue;
                }
                let verified = match verify_request(
                    request,
                    NodeId(shared.id),
                    &shared.committee,
                    shared.request_mode,
                    &mut GrantCachingVerifier(&shared.grants),
                ) {
                    Ok(verified) => verified,
                    Err(_) => {
                        reject(Rejection::BadSignature);
                        continue;
                    }
                };
                let input = Input::Request {
                    request: verified,
                    reply_to: reply_to.clone(),
                    received: Instant::now(),
                };
                if inputs.send(input).await.is_err() {
                    break;
                }
            }
            ClientMessage::Subscribe { from } => {
                if let Some(previous) = subscription.take() {
                    previous.abort();
                }
                let task = subscribe(from, storage.clone(), height.clone(), reply_to.clone());
                subscription = Some(tokio::spawn(task));
            }
            ClientMessage::Status => {
                let status = shared.status();
                let _ = reply_to.try_send(NodeMessage::Status(status));
            }
        }
    }
    if let Some(task) = subscription {
        task.abort();
    }
    drop(reply_to);
    let _ = writer.await;
}

/// Writes replies as they come; every reply queued while the last write was
/// under way goes out in the next one (one QUIC write for a block's worth of
/// receipts, not one each).
async fn write_replies(mut sender: FrameSender, mut replies: mpsc::Receiver<NodeMessage>) {
    let mut batch = Vec::new();
    while replies.recv_many(&mut batch, REPLY_WRITE_BATCH).await > 0 {
        let frames = batch
            .drain(..)
            .filter_map(|reply| codec::encode(&reply).ok())
            .map(Bytes::from)
            .collect();
        if sender.send_many(frames).await.is_err() {
            break;
        }
    }
    let _ = sender.finish();
}

/// Streams blocks from `from`: first what storage holds, then each new block
/// as the height advances. Waits for the client (bounded queue) rather than
/// dropping blocks: a subscriber gets every block, in order, or is cut off.
async fn subscribe(
    from: SeqNum,
    storage: DiskStorage,
    mut height: watch::Receiver<SeqNum>,
    reply_to: mpsc::Sender<NodeMessage>,
) {
    let mut next = from.max(SeqNum(1));
    loop {
        let last = *height.borrow_and_update();
        while next <= last {
            let chunk = {
                let storage = storage.clone();
                tokio::task::spawn_blocking(move || storage.blocks_from(next, SUBSCRIBE_CHUNK))
                    .await
            };
            let blocks = match chunk {
                Ok(Ok(blocks)) if !blocks.is_empty() => blocks,
                _ => return,
            };
            for (block, duplicates) in blocks {
                next = block.height().next();
                if reply_to
                    .send(NodeMessage::Block { block, duplicates })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        if height.changed().await.is_err() {
            return;
        }
    }
}

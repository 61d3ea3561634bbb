//! Client connections: submissions, subscriptions to committed blocks, and
//! status queries, each connection served by its own tasks with bounded
//! queues, so one slow or hostile client can only hurt itself.
//!
//! What one connection can make the node hold: one frame of at most a
//! request's size (the transport's client frame limit), and a reply queue
//! bounded in replies and in bytes ([`Replies`]). A subscription holds a
//! cursor, not blocks: it reads the next blocks from storage only when the
//! queue has room, and a subscriber whose queue stays full for
//! `subscriber_stall_ms` is told why and ended.
//!
//! Store reads for subscribers run on blocking threads, which aborting a
//! task does not stop. So a subscription replaced by another, or whose
//! connection closed, is marked cancelled (checked before every read), a
//! connection's reads never overlap (each holds the connection's one read
//! permit until it is done, even after its subscription is gone), and all
//! connections together run at most `[clients] subscription_reads` at once.
//! A client re-subscribing in a loop gets one read at a time, most of them
//! never started.

use super::consensus::Input;
use super::Shared;
use crate::client_api::{ClientMessage, NodeMessage, Rejection};
use crate::storage::DiskStorage;
use crate::transport::{Bytes, ClientConnection, FrameReceiver, FrameSender};
use bftd_crypto::PublicKey;
use bftd_protocol::{
    codec, verify_request, CachingVerifier, NodeId, RequestMode, SeqNum, SignedRequest,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

/// Replies written together at most.
const REPLY_WRITE_BATCH: usize = 512;
/// A client must open its stream this soon after connecting (or within
/// `client_idle_timeout_ms`, if shorter): until then it holds a slot and
/// has sent nothing.
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// Blocks read from storage at a time when catching a subscriber up, at
/// most (fewer when blocks are big: see [`subscribe`]).
const SUBSCRIBE_CHUNK: usize = 64;
/// A subscription reading more than this many heights behind the head is
/// reading history, paced by `[clients] history_bytes_per_second`; closer,
/// it is following the head and is not.
const HISTORY_MARGIN: u64 = 16;

/// A reply waiting to be written, holding its bytes of the queue's bound.
pub(crate) struct Queued {
    message: NodeMessage,
    _bytes: Option<OwnedSemaphorePermit>,
}

#[cfg(feature = "grpc")]
impl Queued {
    /// The reply.
    pub(crate) fn message(&self) -> &NodeMessage {
        &self.message
    }
}

/// Why a reply could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum QueueFull {
    /// The connection is gone.
    Closed,
    /// No room within the time allowed.
    NoRoom,
}

/// One client connection's reply queue: at most `[clients] reply_queue`
/// replies and `reply_queue_bytes` bytes (encoded) not yet written. A reply
/// larger than the whole byte bound (a big block) takes all of it, so it
/// still goes out, alone.
#[derive(Clone, Debug)]
pub(crate) struct Replies {
    queue: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
    capacity: usize,
}

impl Replies {
    pub(crate) fn new(replies: usize, bytes: usize) -> (Replies, mpsc::Receiver<Queued>) {
        let (queue, receiver) = mpsc::channel(replies.max(1));
        // At most u32::MAX (checked with the node file): one acquire covers
        // the whole bound.
        let capacity = bytes.clamp(1, u32::MAX as usize);
        let replies = Replies {
            queue,
            bytes: Arc::new(Semaphore::new(capacity)),
            capacity,
        };
        (replies, receiver)
    }

    /// The bytes `message` holds of the bound.
    fn cost(&self, message: &NodeMessage) -> u32 {
        let length = codec::encoded_len(message).unwrap_or(u64::MAX);
        length.min(self.capacity as u64) as u32
    }

    /// Queues `message` if there is room now.
    pub(crate) fn try_send(&self, message: NodeMessage) -> Result<(), QueueFull> {
        let cost = self.cost(&message);
        let Ok(permit) = self.bytes.clone().try_acquire_many_owned(cost) else {
            return Err(QueueFull::NoRoom);
        };
        let queued = Queued {
            message,
            _bytes: Some(permit),
        };
        self.queue.try_send(queued).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => QueueFull::NoRoom,
            mpsc::error::TrySendError::Closed(_) => QueueFull::Closed,
        })
    }

    /// Queues `message`, waiting up to `patience` for room.
    pub(crate) async fn send_within(
        &self,
        message: NodeMessage,
        patience: Duration,
    ) -> Result<(), QueueFull> {
        let cost = self.cost(&message);
        let queued = async {
            let permit = self
                .bytes
                .clone()
                .acquire_many_owned(cost)
                .await
                .map_err(|_| QueueFull::Closed)?;
            self.queue
                .send(Queued {
                    message,
                    _bytes: Some(permit),
                })
                .await
                .map_err(|_| QueueFull::Closed)
        };
        tokio::time::timeout(patience, queued)
            .await
            .unwrap_or(Err(QueueFull::NoRoom))
    }

    /// Queues a small notice outside the byte bound (it still takes a
    /// place among the replies), waiting up to `patience`.
    async fn send_notice(&self, message: NodeMessage, patience: Duration) -> bool {
        let notice = Queued {
            message,
            _bytes: None,
        };
        matches!(
            tokio::time::timeout(patience, self.queue.send(notice)).await,
            Ok(Ok(()))
        )
    }
}

/// Accepts client connections until the channel closes.
pub(crate) async fn accept(
    mut connections: mpsc::Receiver<ClientConnection>,
    inputs: mpsc::Sender<Input>,
    shared: Arc<Shared>,
    storage: DiskStorage,
    height: watch::Receiver<SeqNum>,
) {
    // Every connection's task, so that stopping this one (a node shutting
    // down aborts it) stops them all: a connection's task left running
    // kept its connection (so the endpoint) and a handle on the store
    // after its node shut down.
    let mut served = tokio::task::JoinSet::new();
    loop {
        let connection = tokio::select! {
            connection = connections.recv() => match connection {
                Some(connection) => connection,
                None => break,
            },
            Some(_) = served.join_next(), if !served.is_empty() => continue,
        };
        let inputs = inputs.clone();
        let shared = shared.clone();
        let storage = storage.clone();
        let height = height.clone();
        served.spawn(async move {
            let client = connection.client;
            // A connection that opens no stream sends nothing: it is idle.
            let idle = shared.client_idle_timeout.min(STREAM_TIMEOUT);
            match tokio::time::timeout(idle, connection.accept_stream()).await {
                Ok(Ok((sender, receiver))) => {
                    serve(
                        connection, sender, receiver, inputs, shared, storage, height,
                    )
                    .await;
                }
                Err(_) => {
                    tracing::debug!(client = %client.short(), "client opened no stream in time");
                    shared
                        .metrics
                        .clients_closed_idle
                        .fetch_add(1, Ordering::Relaxed);
                    connection.close_idle(idle);
                }
                Ok(Err(_)) => connection.close(),
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
    let (reply_to, replies) = Replies::new(shared.reply_queue, shared.reply_queue_bytes);
    // Aborted with this task (a node shutting down): see `accept`.
    let writer = AbortOnDrop(tokio::spawn(write_replies(sender, replies)));
    let mut subscription: Option<Subscription> = None;
    let connection_reads = Arc::new(Semaphore::new(1));
    let idle = shared.client_idle_timeout;
    // One timer, moved forward lazily when it fires: not one per frame.
    let mut last_frame = tokio::time::Instant::now();
    let deadline = tokio::time::sleep(idle);
    tokio::pin!(deadline);
    loop {
        // Idle means no frame from the client, and no subscription still
        // delivering blocks (a subscriber only listens). QUIC keep-alives
        // are not frames, so they keep no useless connection open.
        // `FrameReceiver::recv` is cancel-safe, so the timer may win mid-frame.
        let received = tokio::select! {
            received = receiver.recv() => received,
            () = &mut deadline => {
                let subscribed = subscription
                    .as_ref()
                    .is_some_and(|subscription| !subscription.task.is_finished());
                if subscribed || last_frame.elapsed() < idle {
                    let from = if subscribed { tokio::time::Instant::now() } else { last_frame };
                    deadline.as_mut().reset(from + idle);
                    continue;
                }
                shared
                    .metrics
                    .clients_closed_idle
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(client = %connection.client.short(), "idle client closed");
                connection.close_idle(idle);
                break;
            }
        };
        let frame = match received {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => break,
        };
        last_frame = tokio::time::Instant::now();
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
                let connected = Some(connection.client);
                if submit(request, connected, &shared, &reply_to, &inputs)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            ClientMessage::Subscribe { from } => {
                if let Some(previous) = subscription.take() {
                    previous.cancel();
                }
                subscription = Some(Subscription::start(
                    from,
                    storage.clone(),
                    connection_reads.clone(),
                    height.clone(),
                    reply_to.clone(),
                    shared.clone(),
                ));
            }
            ClientMessage::Status => {
                let status = shared.status();
                let _ = reply_to.try_send(NodeMessage::Status(status));
            }
            ClientMessage::Snapshots => {
                let held = shared
                    .snapshots
                    .as_ref()
                    .map(|snapshots| snapshots.held())
                    .unwrap_or_default();
                let _ = reply_to.try_send(NodeMessage::Snapshots(held));
            }
            ClientMessage::SnapshotChunk { height, index } => {
                // Read here, not in a task of its own: this connection
                // reads its next frame once the chunk is queued, so one
                // fetcher holds at most one chunk read and one queued chunk.
                let bytes = snapshot_chunk(&shared, height, index).await;
                let answer = NodeMessage::SnapshotChunk {
                    height,
                    index,
                    bytes,
                };
                if reply_to.send_within(answer, shared.subscriber_stall).await
                    == Err(QueueFull::Closed)
                {
                    break;
                }
            }
        }
    }
    if let Some(subscription) = subscription {
        subscription.cancel();
    }
    drop(reply_to);
    let _ = writer.finish().await;
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    /// Waits for the task to end by itself.
    async fn finish(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Hands a client's request to consensus the same way for every client API
/// (QUIC and gRPC): size first, then the connection's identity
/// (`connected`: the key the connection authenticated, if any), then room
/// in the node's window (`admission.rs`; the caller reads nothing more
/// from its client meanwhile), and only then the signature: a connection
/// waiting for its turn costs no signature checks, so a flood of them
/// cannot take the CPU the admitted requests need. A refusal is answered on
/// `reply_to` (counted). `Err` when consensus has stopped.
pub(crate) async fn submit(
    request: SignedRequest,
    connected: Option<PublicKey>,
    shared: &Shared,
    reply_to: &Replies,
    inputs: &mpsc::Sender<Input>,
) -> Result<(), ()> {
    let metrics = &shared.metrics;
    metrics.client_requests.fetch_add(1, Ordering::Relaxed);
    let request_id = request.request.request_id;
    let reject = |reason: Rejection| {
        metrics.rejected(reason);
        let _ = reply_to.try_send(NodeMessage::Rejected { request_id, reason });
    };
    // Size first: an oversized request costs no signature check.
    if request.payload_len() > shared.limits.max_request_bytes {
        reject(Rejection::TooLarge);
        return Ok(());
    }
    // Connection-authenticated: the handshake proved the key, so a request
    // may only be in this connection's own name (and a connection that
    // authenticated no key may send none).
    if shared.request_mode == RequestMode::ConnectionAuthenticated
        && connected != Some(request.request.client)
    {
        reject(Rejection::WrongClient);
        return Ok(());
    }
    let received = Instant::now();
    let (slot, waited) = shared.admission.enter(&request).await.ok_or(())?;
    if waited {
        metrics.admission_wait.observe(received.elapsed());
    }
    let request = match verify_request(
        request,
        NodeId(shared.id),
        &shared.committee,
        shared.request_mode,
        &mut CachingVerifier(&shared.client_checks),
    ) {
        Ok(verified) => verified,
        Err(_) => {
            reject(Rejection::BadSignature);
            return Ok(());
        }
    };
    let input = Input::Request {
        request,
        reply_to: reply_to.clone(),
        received,
        slot,
    };
    inputs.send(input).await.map_err(|_| ())
}

/// A running subscription.
pub(crate) struct Subscription {
    task: tokio::task::JoinHandle<()>,
    cancelled: Arc<AtomicBool>,
}

impl Subscription {
    /// Streams committed blocks from `from` into `reply_to` (see
    /// [`subscribe`]); `connection_reads` is the connection's one read
    /// permit.
    pub(crate) fn start(
        from: SeqNum,
        storage: DiskStorage,
        connection_reads: Arc<Semaphore>,
        height: watch::Receiver<SeqNum>,
        reply_to: Replies,
        shared: Arc<Shared>,
    ) -> Subscription {
        let cancelled = Arc::new(AtomicBool::new(false));
        let reads = SubscriptionReads {
            storage,
            connection: connection_reads,
            cancelled: cancelled.clone(),
        };
        let task = subscribe(from, reads, height, reply_to, shared);
        Subscription {
            task: tokio::spawn(task),
            cancelled,
        }
    }

    /// Stops it: the task at its next await, a read not yet begun before
    /// it begins. (A read under way on its blocking thread finishes, still
    /// holding the connection's read permit.)
    pub(crate) fn cancel(self) {
        drop(self);
    }
}

/// A subscription dropped with its connection's task (a node shutting
/// down aborts it) is cancelled too.
impl Drop for Subscription {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Release);
        self.task.abort();
    }
}

/// How a subscription reads blocks.
struct SubscriptionReads {
    storage: DiskStorage,
    /// The connection's one read permit.
    connection: Arc<Semaphore>,
    cancelled: Arc<AtomicBool>,
}

impl SubscriptionReads {
    /// Up to `chunk` blocks from `next`, once no other read of this
    /// connection runs and a node-wide read slot is free; `None` if the
    /// subscription was cancelled meanwhile (or the store failed).
    async fn read(
        &self,
        next: SeqNum,
        chunk: usize,
        shared: &Arc<Shared>,
    ) -> Option<Vec<crate::storage::StoredBlock>> {
        let connection = self.connection.clone().acquire_owned().await.ok()?;
        let node = shared
            .subscription_read_slots
            .clone()
            .acquire_owned()
            .await
            .ok()?;
        if self.cancelled.load(Ordering::Acquire) {
            return None;
        }
        shared.metrics.subscription_read_started();
        let storage = self.storage.clone();
        let cancelled = self.cancelled.clone();
        let counted = shared.clone();
        // The permits go with the read: they are released when it ends,
        // not when this task is aborted.
        let read = tokio::task::spawn_blocking(move || {
            let _permits = (connection, node);
            let read = (!cancelled.load(Ordering::Acquire))
                .then(|| storage.blocks_from(next, chunk).ok())
                .flatten();
            counted.metrics.subscription_read_ended();
            read
        });
        read.await.ok().flatten()
    }
}

/// Writes replies as they come; every reply queued while the last write was
/// under way goes out in the next one (one QUIC write for a block's worth of
/// receipts, not one each).
///
/// Each reply's bytes count against the queue's bound until its write is
/// done (QUIC then holds at most the stream's flow-control window).
async fn write_replies(mut sender: FrameSender, mut replies: mpsc::Receiver<Queued>) {
    let mut batch = Vec::new();
    while replies.recv_many(&mut batch, REPLY_WRITE_BATCH).await > 0 {
        let frames = batch
            .iter()
            .filter_map(|reply| codec::encode(&reply.message).ok())
            .map(Bytes::from)
            .collect();
        let written = sender.send_many(frames).await;
        batch.clear();
        if written.is_err() {
            break;
        }
    }
    let _ = sender.finish();
}

/// Streams blocks from `from`: first what storage holds, then each new block
/// as the height advances. Waits for the client (bounded queue) rather than
/// dropping blocks: a subscriber gets every block, in order, or is told
/// that its subscription ended and why.
///
/// It reads from storage only as many blocks as the queue's byte bound
/// holds (judged by the blocks just sent), so a subscriber that reads
/// slowly pins at most about the bound, not a chunk of 64 large blocks; and
/// when its queue stays full for `subscriber_stall_ms`, the subscription
/// ends with [`NodeMessage::SubscriptionEnded`] (queued behind the blocks
/// already waiting, so the subscriber reads it after them).
async fn subscribe(
    from: SeqNum,
    reads: SubscriptionReads,
    mut height: watch::Receiver<SeqNum>,
    reply_to: Replies,
    shared: Arc<Shared>,
) {
    let stall = shared.subscriber_stall;
    let mut next = from.max(SeqNum(1));
    let mut chunk = 1;
    loop {
        let last = *height.borrow_and_update();
        while next <= last {
            let first_height = reads.storage.first_height();
            if next < first_height {
                end_pruned(&reply_to, &shared, next, first_height).await;
                return;
            }
            let history = last.0.saturating_sub(next.0) > HISTORY_MARGIN;
            if history {
                pace_history(&shared).await;
            }
            let blocks = match reads.read(next, chunk, &shared).await {
                Some(blocks) if !blocks.is_empty() => blocks,
                _ => return,
            };
            let count = blocks.len();
            let mut bytes = 0u64;
            for (block, duplicates) in blocks {
                let at = block.height();
                let message = NodeMessage::Block { block, duplicates };
                let size = codec::encoded_len(&message).unwrap_or(u64::MAX / 2);
                bytes += size;
                // Charged as read, before sending: a subscriber that goes
                // away mid-chunk has still cost the node the read.
                if history {
                    if let Ok(mut budget) = shared.history.lock() {
                        budget.charge(size as f64);
                    }
                }
                match reply_to.send_within(message, stall).await {
                    Ok(()) => next = at.next(),
                    Err(QueueFull::Closed) => return,
                    Err(QueueFull::NoRoom) => {
                        end_subscription(&reply_to, &shared, at).await;
                        return;
                    }
                }
            }
            let average = (bytes / count as u64).max(1);
            chunk = usize::try_from(reply_to.capacity as u64 / average)
                .unwrap_or(SUBSCRIBE_CHUNK)
                .clamp(1, SUBSCRIBE_CHUNK);
        }
        if height.changed().await.is_err() {
            return;
        }
    }
}

/// Chunk `index` of the snapshot at `height`, if the node holds it: read
/// on a blocking thread in one of the node's store read slots, and charged
/// to the budget for serving history (a chunk is history in another form).
async fn snapshot_chunk(shared: &Arc<Shared>, height: SeqNum, index: u32) -> Option<Vec<u8>> {
    let snapshots = shared.snapshots.clone()?;
    pace_history(shared).await;
    let slot = shared
        .subscription_read_slots
        .clone()
        .acquire_owned()
        .await
        .ok()?;
    let read = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        snapshots.chunk(height, index)
    });
    match read.await {
        Ok(Ok(bytes)) => {
            let size = bytes.as_ref().map_or(0, Vec::len);
            if let Ok(mut budget) = shared.history.lock() {
                budget.charge(size as f64);
            }
            shared
                .metrics
                .snapshot_chunks_served
                .fetch_add(u64::from(bytes.is_some()), Ordering::Relaxed);
            bytes
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, height = height.0, index, "cannot read a snapshot chunk");
            None
        }
        Err(_) => None,
    }
}

/// Waits until the node's budget for serving old blocks has room (see
/// `[clients] history_bytes_per_second`); counts a read that had to wait.
async fn pace_history(shared: &Shared) {
    let mut waited = false;
    loop {
        let wait = match shared.history.lock() {
            Ok(mut budget) => budget.wait(std::time::Instant::now()),
            Err(_) => return,
        };
        if wait.is_zero() {
            break;
        }
        if !waited {
            waited = true;
            shared
                .metrics
                .subscription_history_paced
                .fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(wait).await;
    }
}

/// Tells a subscriber asking for a pruned height (`bftd tail --from` one,
/// or one that fell behind the pruning) what the oldest kept height is.
async fn end_pruned(reply_to: &Replies, shared: &Shared, asked: SeqNum, first_height: SeqNum) {
    // The client library (and `bftd tail`) subscribes `request_lifetime`
    // heights before the first block it shows, to work out duplicates:
    // say from where that works.
    let reason = format!(
        "block {} is no longer stored: this node keeps blocks from height {} on ([storage] retain_blocks pruned the older ones); the oldest kept height is {}. A client that checks duplicates (bftd tail, the client library) reads the {} blocks before the first it shows: subscribe from {} or later, or ask a node that keeps more",
        asked.0,
        first_height.0,
        first_height.0,
        shared.request_lifetime,
        first_height.0.saturating_add(shared.request_lifetime)
    );
    let notice = NodeMessage::SubscriptionEnded { reason };
    if !reply_to.send_notice(notice, shared.subscriber_stall).await {
        tracing::debug!("could not queue the end of a subscription");
    }
}

/// Tells a subscriber that stopped reading that its subscription is over,
/// and where to resume.
async fn end_subscription(reply_to: &Replies, shared: &Shared, resume_at: SeqNum) {
    shared
        .metrics
        .subscriptions_ended
        .fetch_add(1, Ordering::Relaxed);
    let reason = format!(
        "the subscriber read no block for {} ms while {} bytes of blocks waited for it (subscriber_stall_ms, reply_queue_bytes); subscribe again from height {} to resume",
        shared.subscriber_stall.as_millis(),
        reply_to.capacity,
        resume_at.0
    );
    tracing::debug!(%reason, "subscriber ended");
    let notice = NodeMessage::SubscriptionEnded { reason };
    if !reply_to.send_notice(notice, shared.subscriber_stall).await {
        tracing::debug!("could not queue the end of a subscription");
    }
}

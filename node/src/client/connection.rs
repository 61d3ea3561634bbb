//! One client connection to one node, and the client's links to every
//! node: its own node's connection, dialled again when it closes, and the
//! lazily opened connections to the rest of the cluster that a request goes
//! to when its own node does not answer.

use super::ClientError;
use crate::client_api::{NodeMessage, NodeStatus};
use crate::config::Cluster;
use crate::transport::{connect_client, Bytes, FrameSender};
use bftd_crypto::KeyPair;
use bftd_protocol::snapshot::SnapshotAttestation;
use bftd_protocol::{codec, CommittedBlock, NodeId, SeqNum};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// Frames queued for the writer at most; `send` waits beyond that.
const OUTBOX_FRAMES: usize = 4096;
/// Frames sent in one write at most.
const WRITE_BATCH: usize = 512;
/// A node that could not be reached is dialled again no sooner than this:
/// every request that times out at once shares one attempt per node, and
/// an unreachable node is not dialled thousands of times a second.
const REDIAL_AFTER: Duration = Duration::from_secs(1);

pub(super) type BlockItem = (Arc<CommittedBlock>, Vec<u32>);

/// Why the node ended a subscription, once it has.
pub(super) type SubscriptionEnd = Arc<Mutex<Option<String>>>;

/// Who waits for the answer to a request on a connection.
pub(super) enum Waiter {
    /// The request's first try, on the client's own node: the cheapest
    /// channel there is, since nearly every request ends here.
    Once(oneshot::Sender<NodeMessage>),
    /// A request sent to several nodes: every answer, tagged with its node,
    /// goes to one queue.
    Any(mpsc::UnboundedSender<(NodeId, NodeMessage)>),
}

#[derive(Default)]
struct Routes {
    receipts: HashMap<u64, Waiter>,
    status: Vec<oneshot::Sender<NodeStatus>>,
    /// Who asked for the node's snapshots, in order.
    snapshots: Vec<oneshot::Sender<Vec<SnapshotAttestation>>>,
    /// Who asked for a snapshot chunk, by (height, index).
    chunks: HashMap<(SeqNum, u32), oneshot::Sender<Option<Vec<u8>>>>,
    blocks: Option<mpsc::Sender<BlockItem>>,
    /// Where the reason goes if the node ends the subscription.
    subscription_end: Option<SubscriptionEnd>,
    /// The node closed the connection: nothing registered now would ever
    /// be answered.
    closed: bool,
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connection to one node: a writer task sending queued frames, a reader
/// task routing the node's answers to whoever waits for them.
pub(super) struct Connection {
    pub node: NodeId,
    /// Frames for the writer task, which sends everything queued since its
    /// last write in one write (concurrent submits share QUIC writes).
    outbox: mpsc::Sender<Bytes>,
    routes: Arc<Mutex<Routes>>,
    opened: Instant,
    /// Microseconds after `opened` when the node last sent anything.
    heard: Arc<AtomicU64>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl Connection {
    /// Connects to `node` of `cluster` as the client with `key`, pinning the
    /// node's key from the cluster file.
    pub async fn open(
        cluster: &Cluster,
        node: NodeId,
        key: &KeyPair,
    ) -> Result<Connection, ClientError> {
        let address = cluster
            .address(node)
            .ok_or(ClientError::UnknownNode(node))?;
        let node_key = cluster
            .committee
            .key(node)
            .ok_or(ClientError::UnknownNode(node))?
            .public();
        let link = connect_client(key, address, node_key).await?;
        let (sender, mut receiver) = link.split();
        let routes = Arc::new(Mutex::new(Routes::default()));
        let opened = Instant::now();
        let heard = Arc::new(AtomicU64::new(0));
        let reader_routes = routes.clone();
        let reader_heard = heard.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(frame)) = receiver.recv().await {
                reader_heard.store(opened.elapsed().as_micros() as u64, Ordering::Relaxed);
                let Ok(message) = codec::decode::<NodeMessage>(&frame) else {
                    continue;
                };
                route(&reader_routes, node, message).await;
            }
            // Disconnected: fail everyone waiting, and whoever comes later.
            let mut routes = lock(&reader_routes);
            routes.closed = true;
            routes.receipts.clear();
            routes.status.clear();
            routes.snapshots.clear();
            routes.chunks.clear();
            routes.blocks = None;
        });
        let (outbox, frames) = mpsc::channel(OUTBOX_FRAMES);
        let writer = tokio::spawn(write_frames(sender, frames));
        Ok(Connection {
            node,
            outbox,
            routes,
            opened,
            heard,
            reader,
            writer,
        })
    }

    /// Whether the node closed the connection.
    pub fn closed(&self) -> bool {
        lock(&self.routes).closed
    }

    /// How long since the node last sent anything.
    pub fn silent_for(&self) -> Duration {
        let heard = Duration::from_micros(self.heard.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(heard)
    }

    /// Routes the answer to request `id` to `waiter` (replacing any earlier
    /// waiter). False if the connection is closed: nothing would answer.
    pub fn wait_for(&self, id: u64, waiter: Waiter) -> bool {
        let mut routes = lock(&self.routes);
        if routes.closed {
            return false;
        }
        routes.receipts.insert(id, waiter);
        true
    }

    /// Stops routing answers to request `id`.
    pub fn forget(&self, id: u64) {
        lock(&self.routes).receipts.remove(&id);
    }

    /// Queues a frame for the node.
    pub async fn send(&self, frame: Bytes) -> Result<(), ClientError> {
        self.outbox
            .send(frame)
            .await
            .map_err(|_| ClientError::Disconnected)
    }

    /// Routes blocks to `blocks` (one subscription per connection). The
    /// returned slot receives the node's reason if it ends the
    /// subscription (then `blocks` is closed).
    pub fn set_blocks(&self, blocks: mpsc::Sender<BlockItem>) -> SubscriptionEnd {
        let end = SubscriptionEnd::default();
        let mut routes = lock(&self.routes);
        routes.blocks = Some(blocks);
        routes.subscription_end = Some(end.clone());
        end
    }

    /// Asks the node for its status, waiting at most `timeout`.
    pub async fn status(&self, frame: Bytes, timeout: Duration) -> Result<NodeStatus, ClientError> {
        self.ask(frame, timeout, |routes, tx| routes.status.push(tx))
            .await
    }

    /// Asks the node for the snapshots it holds, waiting at most `timeout`.
    pub async fn snapshots(
        &self,
        frame: Bytes,
        timeout: Duration,
    ) -> Result<Vec<SnapshotAttestation>, ClientError> {
        self.ask(frame, timeout, |routes, tx| routes.snapshots.push(tx))
            .await
    }

    /// Asks the node for chunk `index` of its snapshot at `height`, waiting
    /// at most `timeout`.
    pub async fn snapshot_chunk(
        &self,
        frame: Bytes,
        height: SeqNum,
        index: u32,
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        self.ask(frame, timeout, |routes, tx| {
            routes.chunks.insert((height, index), tx);
        })
        .await
    }

    /// Sends `frame` after registering, with `register`, who waits for its
    /// answer; waits at most `timeout` for it.
    async fn ask<T>(
        &self,
        frame: Bytes,
        timeout: Duration,
        register: impl FnOnce(&mut Routes, oneshot::Sender<T>),
    ) -> Result<T, ClientError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut routes = lock(&self.routes);
            if routes.closed {
                return Err(ClientError::Disconnected);
            }
            register(&mut routes, tx);
        }
        self.send(frame).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(ClientError::Disconnected),
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }
}

/// Sends queued frames, each write taking all that are waiting. On a write
/// error it stops: the connection is gone, the reader fails the waiters, and
/// later sends see the closed outbox.
async fn write_frames(mut sender: FrameSender, mut frames: mpsc::Receiver<Bytes>) {
    let mut batch = Vec::new();
    while frames.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        if sender.send_many(std::mem::take(&mut batch)).await.is_err() {
            return;
        }
    }
    let _ = sender.finish();
}

async fn route(routes: &Mutex<Routes>, node: NodeId, message: NodeMessage) {
    let request_id = match &message {
        NodeMessage::Receipt(receipt) => Some(receipt.request_id),
        NodeMessage::Rejected { request_id, .. } => Some(*request_id),
        _ => None,
    };
    if let Some(id) = request_id {
        let waiter = lock(routes).receipts.remove(&id);
        match waiter {
            Some(Waiter::Once(waiter)) => {
                let _ = waiter.send(message);
            }
            Some(Waiter::Any(waiter)) => {
                let _ = waiter.send((node, message));
            }
            None => {}
        }
        return;
    }
    match message {
        NodeMessage::Status(status) => {
            let waiter = {
                let mut routes = lock(routes);
                // Askers that gave up (timed out) must not swallow the
                // answer meant for the next one.
                routes.status.retain(|waiter| !waiter.is_closed());
                if routes.status.is_empty() {
                    None
                } else {
                    Some(routes.status.remove(0))
                }
            };
            if let Some(waiter) = waiter {
                let _ = waiter.send(status);
            }
        }
        NodeMessage::Block { block, duplicates } => {
            let sender = lock(routes).blocks.clone();
            if let Some(sender) = sender {
                let _ = sender.send((block, duplicates)).await;
            }
        }
        NodeMessage::SubscriptionEnded { reason } => {
            let mut routes = lock(routes);
            if let Some(end) = routes.subscription_end.take() {
                *lock(&end) = Some(reason);
            }
            // The blocks already routed are read first, then the end.
            routes.blocks = None;
        }
        NodeMessage::Snapshots(held) => {
            let waiter = {
                let mut routes = lock(routes);
                routes.snapshots.retain(|waiter| !waiter.is_closed());
                (!routes.snapshots.is_empty()).then(|| routes.snapshots.remove(0))
            };
            if let Some(waiter) = waiter {
                let _ = waiter.send(held);
            }
        }
        NodeMessage::SnapshotChunk {
            height,
            index,
            bytes,
        } => {
            if let Some(waiter) = lock(routes).chunks.remove(&(height, index)) {
                let _ = waiter.send(bytes);
            }
        }
        NodeMessage::Receipt(_) | NodeMessage::Rejected { .. } | NodeMessage::Malformed => {}
    }
}

/// Where one node stands for this client.
enum Dial {
    /// Never needed yet.
    Idle,
    /// An attempt is under way; the receiver changes when it ends.
    Connecting(watch::Receiver<()>),
    Up(Arc<Connection>),
    Down {
        since: Instant,
        error: Arc<ClientError>,
    },
}

/// The client's connections to the nodes: its own node's, opened at
/// connect, and the others', opened the first time a request needs them.
/// Each is kept for the next requests, and dialled again when it closed (a
/// node that restarted, say).
pub(super) struct Links {
    cluster: Cluster,
    key: KeyPair,
    dials: HashMap<NodeId, Mutex<Dial>>,
}

impl Links {
    /// Every node of `cluster`, with `own` connected already.
    pub fn new(cluster: &Cluster, key: KeyPair, own: &Arc<Connection>) -> Links {
        let dials = cluster
            .committee
            .ids()
            .map(|id| {
                let dial = if id == own.node {
                    Dial::Up(own.clone())
                } else {
                    Dial::Idle
                };
                (id, Mutex::new(dial))
            })
            .collect();
        Links {
            cluster: cluster.clone(),
            key,
            dials,
        }
    }

    /// Every node's id, in order.
    fn nodes(&self) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self.dials.keys().copied().collect();
        nodes.sort();
        nodes
    }

    /// Every node's id but `own`'s, in order.
    pub fn others(&self, own: NodeId) -> Vec<NodeId> {
        let mut nodes = self.nodes();
        nodes.retain(|&id| id != own);
        nodes
    }

    /// A connection to `node`: the open one, or a new one. Concurrent
    /// callers share one attempt; a node that just failed is reported as
    /// unreachable without dialling again (see [`REDIAL_AFTER`]). The
    /// attempt runs in its own task, so a caller that gives up does not
    /// cancel it for the others.
    pub async fn connection(
        self: &Arc<Self>,
        node: NodeId,
    ) -> Result<Arc<Connection>, Arc<ClientError>> {
        loop {
            let mut ended = match self.open_or_dial(node)? {
                Ok(connection) => return Ok(connection),
                Err(ended) => ended,
            };
            // Err once the attempt's task dropped its sender: it has ended.
            let _ = ended.changed().await;
        }
    }

    /// The open connection to `node`, without waiting: if there is none, an
    /// attempt starts in the background (unless one is under way, or the
    /// last one failed less than [`REDIAL_AFTER`] ago), and the next call
    /// may find it open.
    pub fn open_now(self: &Arc<Self>, node: NodeId) -> Option<Arc<Connection>> {
        self.open_or_dial(node).ok()?.ok()
    }

    /// The open connection to `node`; or the end of the attempt under way
    /// (started now if needed) to wait for; or the error of an attempt that
    /// failed less than [`REDIAL_AFTER`] ago.
    #[allow(clippy::type_complexity)]
    fn open_or_dial(
        self: &Arc<Self>,
        node: NodeId,
    ) -> Result<Result<Arc<Connection>, watch::Receiver<()>>, Arc<ClientError>> {
        let Some(dial) = self.dials.get(&node) else {
            return Err(Arc::new(ClientError::UnknownNode(node)));
        };
        let mut dial = lock(dial);
        match &*dial {
            Dial::Up(connection) if !connection.closed() => Ok(Ok(connection.clone())),
            Dial::Down { since, error } if since.elapsed() < REDIAL_AFTER => Err(error.clone()),
            Dial::Connecting(ended) => Ok(Err(ended.clone())),
            Dial::Idle | Dial::Up(_) | Dial::Down { .. } => {
                let (done, ended) = watch::channel(());
                *dial = Dial::Connecting(ended.clone());
                let links = self.clone();
                tokio::spawn(async move {
                    let result = Connection::open(&links.cluster, node, &links.key).await;
                    if let Some(dial) = links.dials.get(&node) {
                        *lock(dial) = match result {
                            Ok(connection) => Dial::Up(Arc::new(connection)),
                            Err(error) => Dial::Down {
                                since: Instant::now(),
                                error: Arc::new(error),
                            },
                        };
                    }
                    drop(done);
                });
                Ok(Err(ended))
            }
        }
    }

    /// The connections open now.
    pub fn open(&self) -> Vec<Arc<Connection>> {
        self.nodes()
            .into_iter()
            .filter_map(|node| match &*lock(self.dials.get(&node)?) {
                Dial::Up(connection) if !connection.closed() => Some(connection.clone()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's `SubscriptionEnded` closes the block stream, and the
    /// stream's next call returns the node's reason as an error, not a
    /// silent end.
    #[tokio::test]
    async fn a_subscription_the_node_ends_surfaces_its_reason() {
        let routes = Mutex::new(Routes::default());
        let (tx, rx) = mpsc::channel(4);
        let ended = SubscriptionEnd::default();
        {
            let mut routes = lock(&routes);
            routes.blocks = Some(tx);
            routes.subscription_end = Some(ended.clone());
        }
        let reason = "subscription ended: read nothing for 10000 ms".to_string();
        route(
            &routes,
            NodeId(1),
            NodeMessage::SubscriptionEnded {
                reason: reason.clone(),
            },
        )
        .await;
        let keys: Vec<KeyPair> = (0..4u8).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
        let committee =
            bftd_protocol::Committee::new(&keys.iter().map(KeyPair::public).collect::<Vec<_>>())
                .unwrap();
        let mut stream = super::super::BlockStream {
            committee,
            blocks: rx,
            ended,
            next: bftd_protocol::SeqNum(1),
            deliver_from: bftd_protocol::SeqNum(1),
            prev_hash: None,
            executed: bftd_protocol::clients::ExecutedRequests::new(10),
        };
        match stream.next().await {
            Err(ClientError::SubscriptionEnded(got)) => assert_eq!(got, reason),
            other => panic!("expected the node's reason, got {other:?}"),
        }
        assert!(matches!(stream.next().await, Ok(None)), "then a plain end");
    }
}

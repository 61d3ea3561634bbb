//! The Rust client: submit transactions and get verified receipts; follow
//! the committed chain, verifying every block's certificate yourself.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use bftd::client::Client;
//! use bftd::config::Cluster;
//! use bftd_crypto::KeyPair;
//! use bftd_protocol::{NodeId, SeqNum};
//!
//! let cluster = Cluster::load("testnet-data/cluster.toml".as_ref())?;
//! let key = KeyPair::generate(&mut rand::rngs::OsRng);
//! let client = Client::connect(&cluster, NodeId(0), key).await?;
//! let committed = client.submit(b"hello".to_vec()).await?;   // receipt verified
//! println!("height {} block {}", committed.height.0, committed.block_hash);
//! let mut blocks = client.subscribe(SeqNum(1)).await?;
//! while let Some(block) = blocks.next().await? {               // certificate verified
//!     println!("block {} with {} requests", block.block.height().0, block.block.block.batch.requests.len());
//! }
//! # Ok(()) }
//! ```

use crate::client_api::{
    ClientMessage, Committed, NodeMessage, NodeStatus, ReceiptError, Rejection,
    VerifiedCertificates,
};
use crate::config::Cluster;
use crate::transport::{
    connect_client, Bytes, FrameSender, TransportError, DEFAULT_MAX_FRAME_BYTES,
};
use bftd_crypto::{Digest, KeyPair};
use bftd_protocol::{
    codec, BlockError, CommittedBlock, Committee, NodeId, Request, RequestMode, SeqNum,
    SignedRequest,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// What can go wrong for a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No such node in the cluster file.
    #[error("node {0} is not in the cluster file")]
    UnknownNode(NodeId),
    /// The connection failed.
    #[error("{0}")]
    Transport(#[from] TransportError),
    /// The node refused the request.
    #[error("request refused: {0}")]
    Rejected(Rejection),
    /// The node's receipt does not verify: do not trust this node.
    #[error("invalid receipt from the node: {0}")]
    InvalidReceipt(#[from] ReceiptError),
    /// A block from the node does not verify: do not trust this node.
    #[error("invalid block from the node: {0}")]
    InvalidBlock(#[from] BlockError),
    /// The node closed the connection.
    #[error("the node closed the connection")]
    Disconnected,
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

type BlockItem = (Arc<CommittedBlock>, Vec<u32>);

#[derive(Default)]
struct Routes {
    receipts: HashMap<u64, oneshot::Sender<NodeMessage>>,
    status: Vec<oneshot::Sender<NodeStatus>>,
    blocks: Option<mpsc::Sender<BlockItem>>,
}

/// A connection to one node of a cluster.
pub struct Client {
    committee: Committee,
    key: KeyPair,
    mode: RequestMode,
    node: NodeId,
    /// Frames for the writer task, which sends everything queued since its
    /// last write in one write (concurrent submits share QUIC writes).
    outbox: mpsc::Sender<Bytes>,
    routes: Arc<Mutex<Routes>>,
    next_id: AtomicU64,
    timeout: Duration,
    resend_after: Duration,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
    /// Certificates of recent blocks, verified once for all their receipts.
    certificates: Mutex<VerifiedCertificates>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({:#} -> {})", self.key.public(), self.node)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

fn lock(routes: &Mutex<Routes>) -> std::sync::MutexGuard<'_, Routes> {
    routes.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    /// Connects to `node` of `cluster` as the client with `key`, pinning the
    /// node's key from the cluster file.
    pub async fn connect(
        cluster: &Cluster,
        node: NodeId,
        key: KeyPair,
    ) -> Result<Client, ClientError> {
        let address = cluster
            .address(node)
            .ok_or(ClientError::UnknownNode(node))?;
        let node_key = cluster
            .committee
            .key(node)
            .ok_or(ClientError::UnknownNode(node))?
            .public();
        let link = connect_client(&key, address, node_key).await?;
        let (sender, mut receiver) = link.split();
        let routes = Arc::new(Mutex::new(Routes::default()));
        let reader_routes = routes.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(frame)) = receiver.recv().await {
                let Ok(message) = codec::decode::<NodeMessage>(&frame) else {
                    continue;
                };
                route(&reader_routes, message).await;
            }
            // Disconnected: fail everyone waiting.
            let mut routes = lock(&reader_routes);
            routes.receipts.clear();
            routes.status.clear();
            routes.blocks = None;
        });
        let (outbox, frames) = mpsc::channel(OUTBOX_FRAMES);
        let writer = tokio::spawn(write_frames(sender, frames));
        // Ids increase across runs with the same key: start from the clock.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        let mut client = Client {
            committee: cluster.committee.clone(),
            key,
            mode: RequestMode::ClientSigned,
            node,
            outbox,
            routes,
            next_id: AtomicU64::new(start),
            timeout: Duration::from_secs(30),
            resend_after: DEFAULT_RESEND_AFTER,
            reader,
            writer,
            certificates: Mutex::default(),
        };
        client.mode = client.status().await?.request_mode;
        Ok(client)
    }

    /// How long to wait for a receipt or a status (default 30 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// How long a submitted request may go unanswered before it is sent
    /// again (default 5 s; the wait doubles after each resend, until the
    /// timeout). Resending is safe: a request is ordered at most once, and a
    /// node answers a request it already executed with its receipt. It
    /// recovers answers a node dropped because this client read its
    /// connection too slowly (see `[clients] reply_queue`).
    pub fn set_resend_after(&mut self, resend_after: Duration) {
        self.resend_after = resend_after.max(Duration::from_millis(1));
    }

    /// The client's public key.
    pub fn public_key(&self) -> bftd_crypto::PublicKey {
        self.key.public()
    }

    async fn send(&self, message: &ClientMessage) -> Result<(), ClientError> {
        let bytes =
            codec::encode(message).map_err(|_| ClientError::Rejected(Rejection::TooLarge))?;
        // The writer drops what the transport would refuse; refuse it here,
        // where the caller still hears about it.
        if bytes.len() > DEFAULT_MAX_FRAME_BYTES {
            return Err(ClientError::Rejected(Rejection::TooLarge));
        }
        self.outbox
            .send(Bytes::from(bytes))
            .await
            .map_err(|_| ClientError::Disconnected)
    }

    /// The node's status.
    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        let (tx, rx) = oneshot::channel();
        lock(&self.routes).status.push(tx);
        self.send(&ClientMessage::Status).await?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(_)) => Err(ClientError::Disconnected),
            Err(_) => Err(ClientError::Timeout(self.timeout)),
        }
    }

    /// Builds the next request for `payload` (signed if the cluster wants
    /// client signatures).
    pub fn request(&self, payload: Vec<u8>) -> SignedRequest {
        let request = Request {
            client: self.key.public(),
            request_id: self.next_id.fetch_add(1, Ordering::Relaxed),
            payload,
        };
        match self.mode {
            RequestMode::ClientSigned => SignedRequest::sign(request.clone(), &self.key)
                .unwrap_or_else(|_| SignedRequest::unsigned(request)),
            RequestMode::ConnectionAuthenticated => SignedRequest::unsigned(request),
        }
    }

    /// Submits `payload` and waits for its receipt, which is verified
    /// against the committee: the result is proven, not just claimed.
    pub async fn submit(&self, payload: Vec<u8>) -> Result<Committed, ClientError> {
        let request = self.request(payload);
        self.submit_request(&request).await
    }

    /// Submits a prepared request (see [`Client::request`]); resubmitting
    /// the same request is safe: it is ordered at most once.
    pub async fn submit_request(&self, request: &SignedRequest) -> Result<Committed, ClientError> {
        let id = request.request.request_id;
        let (tx, mut rx) = oneshot::channel();
        lock(&self.routes).receipts.insert(id, tx);
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut wait = self.resend_after;
        let answer = loop {
            if let Err(error) = self.send(&ClientMessage::Submit(request.clone())).await {
                lock(&self.routes).receipts.remove(&id);
                return Err(error);
            }
            let resend_at = (tokio::time::Instant::now() + wait).min(deadline);
            match tokio::time::timeout_at(resend_at, &mut rx).await {
                Ok(answer) => break Ok(answer),
                Err(elapsed) if resend_at >= deadline => break Err(elapsed),
                Err(_) => wait = wait.saturating_mul(2),
            }
        };
        lock(&self.routes).receipts.remove(&id);
        match answer {
            Ok(Ok(NodeMessage::Receipt(receipt))) => {
                let committed = receipt.verify_inclusion(request)?;
                let certified = (receipt.height, receipt.batch_digest);
                if !self.verified_certificates().contains(certified) {
                    // Outside the lock: signature checks take a while (two
                    // receipts of a new block may both verify it; harmless).
                    receipt.verify_certificate(&self.committee)?;
                    self.verified_certificates().insert(certified);
                }
                Ok(committed)
            }
            Ok(Ok(NodeMessage::Rejected { reason, .. })) => Err(ClientError::Rejected(reason)),
            Ok(Ok(_)) | Ok(Err(_)) => Err(ClientError::Disconnected),
            Err(_) => Err(ClientError::Timeout(self.timeout)),
        }
    }

    fn verified_certificates(&self) -> std::sync::MutexGuard<'_, VerifiedCertificates> {
        self.certificates.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Streams committed blocks from `from` on, then new ones as they
    /// commit. Every block's certificate is verified, and each block must
    /// chain to the one before it.
    pub async fn subscribe(&self, from: SeqNum) -> Result<BlockStream, ClientError> {
        let (tx, rx) = mpsc::channel(1024);
        lock(&self.routes).blocks = Some(tx);
        self.send(&ClientMessage::Subscribe { from }).await?;
        Ok(BlockStream {
            committee: self.committee.clone(),
            blocks: rx,
            next: from.max(SeqNum(1)),
            prev_hash: None,
        })
    }
}

/// How long a request may go unanswered before the client sends it again.
const DEFAULT_RESEND_AFTER: Duration = Duration::from_secs(5);
/// Frames queued for the writer at most; `send` waits beyond that.
const OUTBOX_FRAMES: usize = 4096;
/// Frames sent in one write at most.
const WRITE_BATCH: usize = 512;

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

async fn route(routes: &Mutex<Routes>, message: NodeMessage) {
    match message {
        NodeMessage::Receipt(ref receipt) => {
            let id = receipt.request_id;
            if let Some(waiter) = lock(routes).receipts.remove(&id) {
                let _ = waiter.send(message);
            }
        }
        NodeMessage::Rejected { request_id, .. } => {
            if let Some(waiter) = lock(routes).receipts.remove(&request_id) {
                let _ = waiter.send(message);
            }
        }
        NodeMessage::Status(status) => {
            let waiter = {
                let mut routes = lock(routes);
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
        NodeMessage::Malformed => {}
    }
}

/// A verified committed block.
#[derive(Clone, Debug)]
pub struct VerifiedBlock {
    /// The block and its certificate.
    pub block: Arc<CommittedBlock>,
    /// Positions of duplicate requests to skip.
    pub duplicates: Vec<u32>,
    /// The block hash.
    pub hash: Digest,
}

/// Committed blocks in order, each verified.
#[derive(Debug)]
pub struct BlockStream {
    committee: Committee,
    blocks: mpsc::Receiver<BlockItem>,
    next: SeqNum,
    prev_hash: Option<Digest>,
}

impl BlockStream {
    /// The next block, verified; `None` when the node disconnects.
    ///
    /// The first block's `prev_hash` is taken as given (its certificate
    /// covers its batch, not its predecessor); every later block must chain
    /// to the one before. Subscribe from height 1 to verify the whole chain.
    pub async fn next(&mut self) -> Result<Option<VerifiedBlock>, ClientError> {
        let Some((block, duplicates)) = self.blocks.recv().await else {
            return Ok(None);
        };
        if block.height() != self.next {
            return Err(ClientError::InvalidBlock(BlockError::WrongHeight {
                expected: self.next,
                got: block.height(),
            }));
        }
        let prev = self.prev_hash.unwrap_or(if self.next == SeqNum(1) {
            Digest::ZERO
        } else {
            block.block.prev_hash
        });
        block.verify(&self.committee, prev)?;
        let hash = block.hash();
        self.prev_hash = Some(hash);
        self.next = self.next.next();
        Ok(Some(VerifiedBlock {
            block,
            duplicates,
            hash,
        }))
    }
}

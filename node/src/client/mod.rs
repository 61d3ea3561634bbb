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
//! println!("height {} batch {}", committed.height.0, committed.batch_digest);
//! let mut blocks = client.subscribe(SeqNum(1)).await?;
//! while let Some(block) = blocks.next().await? {               // certificate verified
//!     println!("block {} with {} requests", block.block.height().0, block.block.block.batch.requests.len());
//! }
//! # Ok(()) }
//! ```

mod connection;
pub mod json;
mod retry;

pub use retry::{NoReceipt, QuorumShortfall};

use crate::client_api::{
    ClientMessage, Committed, NodeMessage, NodeStatus, Receipt, ReceiptError, Rejection,
    VerifiedCertificates,
};
use crate::config::Cluster;
use crate::transport::{Bytes, TransportError, DEFAULT_MAX_FRAME_BYTES};
use bftd_crypto::{Digest, KeyPair};
use bftd_protocol::snapshot::SnapshotAttestation;
use bftd_protocol::{
    codec, BlockError, CommittedBlock, Committee, NodeId, Request, RequestMode, SeqNum,
    SignedRequest,
};
use connection::{lock, BlockItem, Connection, Links, SubscriptionEnd, Waiter};
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
    /// The client's connection to the node closed and could not be opened
    /// again.
    #[error("node {0} is unreachable: {1}")]
    Unreachable(NodeId, Arc<ClientError>),
    /// A node listed other skipped (duplicate or expired) requests for a
    /// block than its certified batch and the ones before imply: do not
    /// trust this node.
    #[error("the node's list of skipped requests at height {height} is wrong")]
    WrongDuplicates {
        /// The block.
        height: SeqNum,
    },
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The node ended the subscription (this client read its blocks too
    /// slowly, say): the reason is the node's. Subscribe again to resume
    /// after the last block received.
    #[error("the node ended the subscription: {0}")]
    SubscriptionEnded(String),
    /// No node answered a request with a valid receipt in time, although it
    /// went to every node: why, as far as the nodes could tell.
    #[error("{0}")]
    NoReceipt(Box<NoReceipt>),
}

/// A client of a cluster: talks to one node, and to the others when that
/// one does not answer.
pub struct Client {
    committee: Committee,
    key: KeyPair,
    mode: RequestMode,
    node: NodeId,
    /// Connections to every node: to `node`, which every request tries
    /// first (dialled again when it closes), and to the others, opened when
    /// a request first needs them.
    links: Arc<Links>,
    /// The latest connection to `node`, open or not: how long it has been
    /// silent says whether the node is.
    latest_own: Mutex<Arc<Connection>>,
    next_id: AtomicU64,
    /// The highest height this client has seen (statuses, receipts), and the
    /// cluster's request lifetime: new requests are valid until half a
    /// lifetime past it (see [`Client::request`]).
    height: AtomicU64,
    lifetime: u64,
    /// The cluster's `max_request_bytes`: a larger payload is refused here,
    /// as the nodes would (and beyond their client frame limit, they would
    /// close the connection instead of answering).
    max_request_bytes: usize,
    timeout: Duration,
    resend_after: Duration,
    /// Certificates of recent blocks, verified once for all their receipts.
    certificates: Mutex<VerifiedCertificates>,
    /// The last look at why nothing commits, shared by requests that time
    /// out together (see [`retry`]).
    diagnosis: retry::DiagnosisCache,
    /// Connection-authenticated clusters: this client's grant to each node,
    /// signed once at connect; a request sent to a node carries its grant.
    grants: std::collections::HashMap<NodeId, bftd_crypto::Signature>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({:#} -> {})", self.key.public(), self.node)
    }
}

impl Client {
    /// Connects to `node` of `cluster` as the client with `key`, pinning the
    /// node's key from the cluster file. The other nodes are connected to
    /// only when a request needs them (see [`Client::submit_request`]).
    pub async fn connect(
        cluster: &Cluster,
        node: NodeId,
        key: KeyPair,
    ) -> Result<Client, ClientError> {
        let own = Arc::new(Connection::open(cluster, node, &key).await?);
        let links = Arc::new(Links::new(cluster, key.clone(), &own));
        let key_for_grants = key.clone();
        // Ids increase across runs with the same key: start from the clock.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        let client = Client {
            committee: cluster.committee.clone(),
            links,
            latest_own: Mutex::new(own),
            key,
            mode: cluster.protocol.request_mode,
            node,
            next_id: AtomicU64::new(start),
            height: AtomicU64::new(0),
            lifetime: cluster.protocol.request_lifetime.max(1),
            max_request_bytes: cluster.protocol.max_request_bytes,
            timeout: Duration::from_secs(30),
            resend_after: DEFAULT_RESEND_AFTER,
            certificates: Mutex::default(),
            diagnosis: retry::DiagnosisCache::default(),
            grants: cluster
                .committee
                .ids()
                .map(|id| (id, bftd_protocol::Grant::sign(&key_for_grants, id)))
                .collect(),
        };
        // The height to set requests' validity from (the mode and the
        // lifetime come from the cluster file, which a node cannot lie
        // about).
        client.status().await?;
        Ok(client)
    }

    /// How long to wait for a receipt or a status (default 30 s). A submit
    /// that times out then spends up to a second more asking the nodes why,
    /// to say so in its error.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// How long a submitted request may go unanswered before it is sent
    /// again, to every node of the cluster this time (default 5 s; the wait
    /// doubles after each round, until the timeout). Resending is safe: a
    /// request is ordered at most once, and a node answers a request it
    /// already executed with its receipt. Sending to every node is what
    /// PBFT asks of a client: the backups then start their timers, and a
    /// primary that is silent or censors the request is replaced. Resending
    /// also recovers answers a node dropped because this client read its
    /// connection too slowly (see `[clients] reply_queue`).
    pub fn set_resend_after(&mut self, resend_after: Duration) {
        self.resend_after = resend_after.max(Duration::from_millis(1));
    }

    /// The client's public key.
    pub fn public_key(&self) -> bftd_crypto::PublicKey {
        self.key.public()
    }

    /// The node this client talks to first.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// How long since this client's own node last sent it anything
    /// (receipts, refusals, statuses, blocks): a node that stays silent
    /// while requests wait for it is likely dead or cut off, whatever the
    /// other nodes answer meanwhile.
    pub fn silent_for(&self) -> Duration {
        lock(&self.latest_own).silent_for()
    }

    /// The open connection to this client's node, without waiting. If it
    /// closed (the node restarted, say), it is dialled again in the
    /// background and `None` returned meanwhile: the caller goes to every
    /// node, as for a node that does not answer.
    fn own_now(&self) -> Option<Arc<Connection>> {
        let own = self.links.open_now(self.node)?;
        let mut latest = lock(&self.latest_own);
        if !Arc::ptr_eq(&latest, &own) {
            *latest = own.clone();
        }
        Some(own)
    }

    /// The open connection to this client's node, dialled again if it
    /// closed.
    async fn own(&self) -> Result<Arc<Connection>, ClientError> {
        match self.links.connection(self.node).await {
            Ok(own) => {
                *lock(&self.latest_own) = own.clone();
                Ok(own)
            }
            Err(error) => Err(ClientError::Unreachable(self.node, error)),
        }
    }

    fn frame(message: &ClientMessage) -> Result<Bytes, ClientError> {
        let bytes =
            codec::encode(message).map_err(|_| ClientError::Rejected(Rejection::TooLarge))?;
        // The writer drops what the transport would refuse; refuse it here,
        // where the caller still hears about it.
        if bytes.len() > DEFAULT_MAX_FRAME_BYTES {
            return Err(ClientError::Rejected(Rejection::TooLarge));
        }
        Ok(Bytes::from(bytes))
    }

    /// The node's status (and the client notes its height).
    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        let frame = Self::frame(&ClientMessage::Status)?;
        let status = self.own().await?.status(frame, self.timeout).await?;
        self.height.fetch_max(status.height, Ordering::Relaxed);
        Ok(status)
    }

    /// The application snapshots the client's node holds, each signed by
    /// it (design notes §48). Trust one only once f+1 nodes signed its
    /// manifest ([`bftd_protocol::snapshot::certified`]).
    pub async fn snapshots(&self) -> Result<Vec<SnapshotAttestation>, ClientError> {
        let frame = Self::frame(&ClientMessage::Snapshots)?;
        self.own().await?.snapshots(frame, self.timeout).await
    }

    /// Chunk `index` of the node's snapshot at `height`, unchecked (check
    /// it with [`bftd_protocol::snapshot::SnapshotManifest::check_chunk`]);
    /// `None` if the node does not hold it.
    pub async fn snapshot_chunk(
        &self,
        height: SeqNum,
        index: u32,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let frame = Self::frame(&ClientMessage::SnapshotChunk { height, index })?;
        self.own()
            .await?
            .snapshot_chunk(frame, height, index, self.timeout)
            .await
    }

    /// Builds the next request for `payload` (signed if the cluster wants
    /// client signatures), valid until half the cluster's request lifetime
    /// past the highest height this client has seen: room for nodes that
    /// lag behind it, and for a while of retries. Resubmitting the returned
    /// request is safe until then; once it expires it can never execute.
    pub fn request(&self, payload: Vec<u8>) -> SignedRequest {
        let height = self.height.load(Ordering::Relaxed);
        let request = Request {
            client: self.key.public(),
            request_id: self.next_id.fetch_add(1, Ordering::Relaxed),
            valid_until: SeqNum(height.saturating_add((self.lifetime / 2).max(1))),
            payload,
        };
        match self.mode {
            RequestMode::ClientSigned => SignedRequest::sign(request.clone(), &self.key)
                .unwrap_or_else(|_| SignedRequest::unsigned(request)),
            RequestMode::ConnectionAuthenticated => self.copy_for(&request, self.node),
        }
    }

    /// The copy of `request` for `node`: in connection-authenticated
    /// clusters, the one carrying this client's grant to that node (a node
    /// vouches only for requests granted to it); in client-signed ones, the
    /// request as signed.
    fn copy_for(&self, request: &Request, node: NodeId) -> SignedRequest {
        SignedRequest {
            request: request.clone(),
            signature: self.grants.get(&node).copied(),
        }
    }

    /// Every copy of `request` a node may have ordered: the request itself,
    /// and in connection-authenticated clusters its copy for each node
    /// (sent to several nodes, any of them may be the one that executed).
    fn copies(&self, request: &SignedRequest) -> Vec<SignedRequest> {
        let mut copies = vec![request.clone()];
        if self.mode == RequestMode::ConnectionAuthenticated {
            let mut ids: Vec<NodeId> = self.grants.keys().copied().collect();
            ids.sort();
            for id in ids {
                let copy = self.copy_for(&request.request, id);
                if copy != *request {
                    copies.push(copy);
                }
            }
        }
        copies
    }

    /// The frame submitting `request` to `node`.
    fn submit_frame(&self, request: &SignedRequest, node: NodeId) -> Result<Bytes, ClientError> {
        let copy = match self.mode {
            RequestMode::ConnectionAuthenticated => self.copy_for(&request.request, node),
            RequestMode::ClientSigned => request.clone(),
        };
        Self::frame(&ClientMessage::Submit(copy))
    }

    /// Submits `payload` and waits for its receipt, which is verified
    /// against the committee: the result is proven, not just claimed.
    pub async fn submit(&self, payload: Vec<u8>) -> Result<Committed, ClientError> {
        let request = self.request(payload);
        self.submit_request(&request).await
    }

    /// Submits a prepared request (see [`Client::request`]); resubmitting
    /// the same request is safe: it is ordered at most once.
    ///
    /// The request goes to this client's node. If no answer comes within
    /// the resend interval (see [`Client::set_resend_after`]), or that node
    /// closes the connection, the same request goes to every node of the
    /// cluster, and the first receipt that verifies, from whichever node,
    /// is the answer. Past the timeout the error says what the nodes know
    /// of why nothing committed (see [`NoReceipt`]).
    pub async fn submit_request(&self, request: &SignedRequest) -> Result<Committed, ClientError> {
        let id = request.request.request_id;
        if request.payload_len() > self.max_request_bytes {
            return Err(ClientError::Rejected(Rejection::TooLarge));
        }
        let frame = self.submit_frame(request, self.node)?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let first_try_ends = (tokio::time::Instant::now() + self.resend_after).min(deadline);
        let (tx, rx) = oneshot::channel();
        let mut answer = None;
        // A closed connection (or none yet, while it is dialled again): go
        // elsewhere now.
        let own = self.own_now();
        if let Some(own) = &own {
            if own.wait_for(id, Waiter::Once(tx)) && own.send(frame.clone()).await.is_ok() {
                // An error here means the connection closed: go elsewhere now.
                if let Ok(Ok(message)) = tokio::time::timeout_at(first_try_ends, rx).await {
                    answer = Some(message);
                }
            }
        }
        match answer {
            Some(NodeMessage::Receipt(receipt)) => self.verify(request, &receipt),
            Some(NodeMessage::Rejected { reason, .. }) => Err(ClientError::Rejected(reason)),
            Some(_) | None => {
                if let Some(own) = own {
                    own.forget(id);
                }
                self.retry_everywhere(request, deadline).await
            }
        }
    }

    /// Checks a receipt for `request`: the Merkle proof always, the commit
    /// certificate once per block.
    fn verify(&self, request: &SignedRequest, receipt: &Receipt) -> Result<Committed, ClientError> {
        let mut inclusion = receipt.verify_inclusion(request, self.lifetime);
        if inclusion.is_err() {
            // Another node's copy of it may be the one in the block.
            for copy in self.copies(request).iter().skip(1) {
                if let Ok(committed) = receipt.verify_inclusion(copy, self.lifetime) {
                    inclusion = Ok(committed);
                    break;
                }
            }
        }
        let committed = inclusion?;
        self.height.fetch_max(receipt.height.0, Ordering::Relaxed);
        let certified = (receipt.height, receipt.batch_digest);
        if !self.verified_certificates().contains(certified) {
            // Outside the lock: signature checks take a while (two
            // receipts of a new block may both verify it; harmless).
            receipt.verify_certificate(&self.committee)?;
            self.verified_certificates().insert(certified);
        }
        Ok(committed)
    }

    fn verified_certificates(&self) -> std::sync::MutexGuard<'_, VerifiedCertificates> {
        self.certificates.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Streams committed blocks from `from` on, then new ones as they
    /// commit. Every block's certificate is verified, each block must chain
    /// to the one before it, and which requests each block skips
    /// (duplicates, expired) is worked out here from the certified batches,
    /// not taken from the node: the stream starts `request_lifetime`
    /// heights before `from` (those blocks are read, not delivered), since
    /// what executed in them decides what is a duplicate later. A node
    /// that pruned them (`[storage] retain_blocks`) ends the stream with
    /// [`ClientError::SubscriptionEnded`], naming its oldest kept height
    /// and the first `from` that works.
    pub async fn subscribe(&self, from: SeqNum) -> Result<BlockStream, ClientError> {
        let from = from.max(SeqNum(1));
        let start = SeqNum(from.0.saturating_sub(self.lifetime).max(1));
        let (tx, rx) = mpsc::channel(1024);
        let own = self.own().await?;
        let ended = own.set_blocks(tx);
        let frame = Self::frame(&ClientMessage::Subscribe { from: start })?;
        own.send(frame).await?;
        Ok(BlockStream {
            committee: self.committee.clone(),
            blocks: rx,
            ended,
            next: start,
            deliver_from: from,
            prev_hash: None,
            executed: bftd_protocol::clients::ExecutedRequests::new(self.lifetime),
        })
    }

    /// Continues `stream` on this client's connection (a new connection to
    /// the same node after it restarted, say, or to another node of the
    /// same cluster): asks for the blocks from the stream's next height and
    /// goes on checking them against what the stream verified before. The
    /// first block must chain to the last one delivered, and what executed
    /// before still decides which requests later blocks skip, so nothing is
    /// taken on trust anew. This client's previous subscription, if any,
    /// ends.
    pub async fn resubscribe(&self, stream: &mut BlockStream) -> Result<(), ClientError> {
        let (tx, rx) = mpsc::channel(1024);
        let own = self.own().await?;
        let ended = own.set_blocks(tx);
        let frame = Self::frame(&ClientMessage::Subscribe { from: stream.next })?;
        own.send(frame).await?;
        stream.blocks = rx;
        stream.ended = ended;
        Ok(())
    }
}

/// How long a request may go unanswered before the client sends it again.
const DEFAULT_RESEND_AFTER: Duration = Duration::from_secs(5);

/// A verified committed block.
#[derive(Clone, Debug)]
pub struct VerifiedBlock {
    /// The block and its certificate.
    pub block: Arc<CommittedBlock>,
    /// Positions of requests that do not execute in this block (executed
    /// before, or not valid at this height): worked out by the client from
    /// the certified batches, as every replica does.
    pub duplicates: Vec<u32>,
    /// The block hash (its `prev_hash` chain is verified from the stream's
    /// first block; from height 1, all the way to the genesis).
    pub hash: Digest,
}

/// Committed blocks in order, each verified.
#[derive(Debug)]
pub struct BlockStream {
    committee: Committee,
    blocks: mpsc::Receiver<BlockItem>,
    /// The node's reason, if it ended the subscription.
    ended: SubscriptionEnd,
    next: SeqNum,
    /// Blocks below this were asked for only to learn what executed.
    deliver_from: SeqNum,
    prev_hash: Option<Digest>,
    /// What executed in the blocks seen, to tell duplicates and expired
    /// requests in later ones.
    executed: bftd_protocol::clients::ExecutedRequests,
}

impl BlockStream {
    /// The height of the next block this stream will verify.
    pub fn next_height(&self) -> SeqNum {
        self.next
    }

    /// The next block, verified; `None` when the node disconnects (see
    /// [`Client::resubscribe`] to go on from another connection);
    /// [`ClientError::SubscriptionEnded`] with the node's reason when it
    /// ends the subscription (after the blocks it sent before).
    ///
    /// The stream's first block's `prev_hash` is taken as given (its
    /// certificate covers its batch, not its predecessor); every later
    /// block must chain to the one before. Subscribe from height 1 to anchor
    /// the whole chain at the genesis. A node that lists other skipped
    /// requests than the batches imply is caught here
    /// ([`ClientError::WrongDuplicates`]).
    pub async fn next(&mut self) -> Result<Option<VerifiedBlock>, ClientError> {
        loop {
            let Some((block, claimed)) = self.blocks.recv().await else {
                let reason = self.ended.lock().unwrap_or_else(|e| e.into_inner()).take();
                return match reason {
                    Some(reason) => Err(ClientError::SubscriptionEnded(reason)),
                    None => Ok(None),
                };
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
            let duplicates = self.skipped(&block);
            if duplicates != claimed {
                return Err(ClientError::WrongDuplicates {
                    height: block.height(),
                });
            }
            let hash = block.hash();
            self.prev_hash = Some(hash);
            self.next = self.next.next();
            if block.height() >= self.deliver_from {
                return Ok(Some(VerifiedBlock {
                    block,
                    duplicates,
                    hash,
                }));
            }
        }
    }

    /// The positions of `block` that do not execute, by the replicas' rule
    /// (see `bftd_protocol::clients`).
    fn skipped(&mut self, block: &CommittedBlock) -> Vec<u32> {
        use bftd_protocol::clients::Lookup;
        let height = block.height();
        let mut skipped = Vec::new();
        for (index, request) in block.block.batch.requests.iter().enumerate() {
            match self.executed.lookup(&request.request, height) {
                Lookup::Fresh => self.executed.record(request.key(), height),
                _ => skipped.push(index as u32),
            }
        }
        self.executed.forget_expired(height.next());
        skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bftd_protocol::certificate::QuorumCertificate;
    use bftd_protocol::message::{Commit, Prepare};
    use bftd_protocol::signer::{SafetyState, Signer};
    use bftd_protocol::{Batch, Block, View};

    fn keys() -> Vec<KeyPair> {
        (0..4u8).map(|i| KeyPair::from_seed([i + 40; 32])).collect()
    }

    /// A block at `height` over `requests`, chained to `prev`, with a real
    /// commit certificate from three of the four keys.
    fn block(height: u64, prev: Digest, requests: Vec<SignedRequest>) -> Arc<CommittedBlock> {
        let batch = Batch { requests };
        let digest = bftd_protocol::merkle::MerkleTree::new(&batch).root();
        let value = Commit {
            view: View(0),
            seq: SeqNum(height),
            digest,
        };
        let commits: Vec<_> = keys()
            .into_iter()
            .enumerate()
            .skip(1)
            .map(|(id, key)| {
                let mut signer = Signer::new(NodeId(id as u16), key, SafetyState::default());
                signer
                    .sign_prepare(Prepare {
                        view: View(0),
                        seq: SeqNum(height),
                        digest,
                    })
                    .unwrap();
                signer.sign_commit(value).unwrap()
            })
            .collect();
        Arc::new(CommittedBlock {
            block: Block {
                height: SeqNum(height),
                prev_hash: prev,
                batch_digest: digest,
                batch: Arc::new(batch),
            },
            certificate: QuorumCertificate::collect(value, &commits),
        })
    }

    /// Which requests a block skips is worked out by the client from the
    /// certified batches: a node that lists none for a replayed request is
    /// caught, and the right list comes out otherwise.
    #[tokio::test]
    async fn skipped_requests_are_worked_out_not_believed() {
        let committee =
            Committee::new(&keys().iter().map(KeyPair::public).collect::<Vec<_>>()).unwrap();
        let alice = KeyPair::from_seed([7; 32]);
        let paid = SignedRequest::sign(
            Request {
                client: alice.public(),
                request_id: 1,
                valid_until: SeqNum(50),
                payload: b"pay".to_vec(),
            },
            &alice,
        )
        .unwrap();
        let first = block(1, Digest::ZERO, vec![paid.clone()]);
        let second = block(2, first.hash(), vec![paid.clone()]);
        for (claimed, expected_ok) in [(vec![0u32], true), (Vec::new(), false)] {
            let (tx, rx) = mpsc::channel(4);
            let mut stream = BlockStream {
                committee: committee.clone(),
                blocks: rx,
                ended: SubscriptionEnd::default(),
                next: SeqNum(1),
                deliver_from: SeqNum(1),
                prev_hash: None,
                executed: bftd_protocol::clients::ExecutedRequests::new(100),
            };
            tx.send((first.clone(), Vec::new())).await.unwrap();
            tx.send((second.clone(), claimed)).await.unwrap();
            let one = stream.next().await.unwrap().unwrap();
            assert!(one.duplicates.is_empty());
            let two = stream.next().await;
            if expected_ok {
                assert_eq!(two.unwrap().unwrap().duplicates, vec![0]);
            } else {
                assert!(
                    matches!(two, Err(ClientError::WrongDuplicates { height }) if height == SeqNum(2)),
                    "{two:?}"
                );
            }
        }
    }
}

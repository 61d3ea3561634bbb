//! Feeding an embedded [`Application`]: committed blocks in order, read
//! from the store at the application's pace; snapshots of its state every
//! `[storage] snapshot_every` heights; and, when the blocks it needs next
//! were pruned, a restore from a snapshot (its node's own, or one f+1
//! peers signed) instead of waiting forever (design notes §48).

use super::{Application, Shared};
use crate::client::Client;
use crate::config::Cluster;
use crate::snapshots::SnapshotStore;
use bftd_crypto::KeyPair;
use bftd_protocol::snapshot::{certified, SnapshotAttestation, SnapshotManifest};
use bftd_protocol::{NodeId, SeqNum, StorageError};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Reads up to 64 committed blocks from a height on.
pub(super) type ReadBlocks =
    Arc<dyn Fn(SeqNum) -> Result<Vec<crate::storage::StoredBlock>, StorageError> + Send + Sync>;

/// The oldest height the store holds now.
pub(super) type FirstHeight = Arc<dyn Fn() -> SeqNum + Send + Sync>;

/// First wait after a failed read for the application; doubled after
/// each further failure, up to [`FOLLOW_RETRY_MAX`].
const FOLLOW_RETRY_MIN: Duration = Duration::from_millis(10);
const FOLLOW_RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a peer may take to answer one snapshot question.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// What an application that takes snapshots needs besides its blocks.
pub(super) struct Snapshotting {
    pub store: Arc<SnapshotStore>,
    /// A snapshot after every height that is a multiple of this.
    pub every: u64,
    pub id: NodeId,
    pub key: KeyPair,
    pub cluster: Cluster,
    pub shared: Arc<Shared>,
}

/// The application and how it is fed.
pub(super) struct Feed {
    pub application: Box<dyn Application>,
    pub read: ReadBlocks,
    pub first_height: FirstHeight,
    /// Counts a failed read (each is retried).
    pub read_error: Box<dyn Fn() + Send + Sync>,
    /// Told the next height the application needs whenever it moves (at
    /// start, after deliveries and restores): the node keeps its blocks
    /// from there on ([`crate::storage::DiskStorage::hold_from`]).
    pub fed: Box<dyn Fn(SeqNum) + Send + Sync>,
    /// `None` when the application takes no snapshots.
    pub snapshotting: Option<Snapshotting>,
}

/// The application, shared between the feeding task and the blocking
/// threads that deliver to it, take its snapshots and restore it.
type SharedApplication = Arc<Mutex<Box<dyn Application>>>;

fn lock(application: &SharedApplication) -> std::sync::MutexGuard<'_, Box<dyn Application>> {
    application.lock().unwrap_or_else(|e| e.into_inner())
}

/// Feeds the application every committed block from `from` on, in order,
/// exactly once each, reading from storage at its own pace: a slow
/// application never holds consensus back, and no queue grows. A failed
/// read is logged, counted and retried with backoff from where delivery
/// stopped, never the end of delivery. When the next block is below the
/// store's first height (pruned, or jumped past), an application that
/// takes snapshots is restored from one and fed from the height after it;
/// one that does not waits, its reads failing and counted. A panic of the
/// application ends this task with that panic, which
/// [`super::NodeHandle::wait`] reports.
pub(super) async fn follow(feed: Feed, from: SeqNum, mut height: watch::Receiver<SeqNum>) {
    let Feed {
        application,
        read,
        first_height,
        read_error,
        fed,
        snapshotting,
    } = feed;
    let application: SharedApplication = Arc::new(Mutex::new(application));
    let snapshotting = snapshotting.map(Arc::new);
    let mut fetcher = snapshotting.as_ref().map(|s| Fetcher::new(s.clone()));
    let mut next = from.max(SeqNum(1));
    fed(next);
    // A node's own snapshot at or above where delivery starts gives the
    // same state as delivering the blocks up to it: an application that
    // restarts from scratch need not replay the whole history.
    if let Some(fetcher) = fetcher.as_mut() {
        if fetcher.holds(next) {
            match fetcher.restore(&application, next, Source::Own).await {
                Ok(restored) => {
                    next = restored.next();
                    fed(next);
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot restore the node's own snapshot; delivering blocks instead")
                }
            }
        }
    }
    let mut retry = FOLLOW_RETRY_MIN;
    loop {
        let last = *height.borrow_and_update();
        while next <= last || next < first_height() {
            let first = first_height();
            let error = if let (true, Some(fetcher)) = (next < first, fetcher.as_mut()) {
                // The store holds the blocks after `first - 1`.
                let at_least = SeqNum(first.0.saturating_sub(1));
                match fetcher.restore(&application, at_least, Source::Any).await {
                    Ok(restored) => {
                        next = restored.next();
                        fed(next);
                        retry = FOLLOW_RETRY_MIN;
                        continue;
                    }
                    Err(error) => error,
                }
            } else if next > last {
                // Pruned below, nothing to restore from: wait for blocks.
                break;
            } else {
                match deliver(&application, &read, next, snapshotting.as_ref()).await {
                    Delivered::To(advanced) if advanced > next => {
                        next = advanced;
                        fed(next);
                        retry = FOLLOW_RETRY_MIN;
                        continue;
                    }
                    Delivered::To(_) => {
                        format!("no block at height {} (committed up to {})", next.0, last.0)
                    }
                    Delivered::ReadFailed(error) => error.to_string(),
                    Delivered::Cancelled => return,
                }
            };
            read_error();
            tracing::warn!(
                height = next.0,
                %error,
                retry_in_ms = retry.as_millis() as u64,
                "cannot feed the application; retrying"
            );
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(FOLLOW_RETRY_MAX);
        }
        if height.changed().await.is_err() {
            return;
        }
    }
}

enum Delivered {
    /// Delivered up to (not including) this height.
    To(SeqNum),
    ReadFailed(StorageError),
    /// The runtime is shutting down.
    Cancelled,
}

/// Delivers up to 64 blocks from `start` on a blocking thread, taking a
/// snapshot after each height that is a multiple of `snapshot_every`.
async fn deliver(
    application: &SharedApplication,
    read: &ReadBlocks,
    start: SeqNum,
    snapshotting: Option<&Arc<Snapshotting>>,
) -> Delivered {
    let read = read.clone();
    let application = application.clone();
    let snapshotting = snapshotting.cloned();
    let done = tokio::task::spawn_blocking(move || {
        let blocks = read(start)?;
        let mut app = lock(&application);
        let mut next = start;
        for (block, duplicates) in blocks {
            app.deliver(&block, &duplicates);
            let at = block.height();
            next = at.next();
            if let Some(snapshotting) = &snapshotting {
                if at.0 % snapshotting.every.max(1) == 0 {
                    take_snapshot(&**app, at, block.hash(), snapshotting);
                }
            }
        }
        Ok::<SeqNum, StorageError>(next)
    })
    .await;
    match done {
        Ok(Ok(next)) => Delivered::To(next),
        Ok(Err(error)) => Delivered::ReadFailed(error),
        Err(error) if error.is_panic() => {
            tracing::error!(
                height = start.0,
                "the application panicked while a block was delivered; delivery stops"
            );
            std::panic::resume_unwind(error.into_panic());
        }
        Err(_) => Delivered::Cancelled,
    }
}

/// Takes, signs and keeps a snapshot of the application after the block at
/// `height`. A failure is logged: delivery goes on (the previous snapshot
/// is still held, and peers hold theirs).
fn take_snapshot(
    application: &dyn Application,
    height: SeqNum,
    block_hash: bftd_crypto::Digest,
    snapshotting: &Snapshotting,
) {
    let state = application.snapshot();
    let kept = SnapshotManifest::of(height, block_hash, &state)
        .map_err(|error| error.to_string())
        .and_then(|manifest| {
            let attestation =
                SnapshotAttestation::sign(manifest, snapshotting.id, &snapshotting.key);
            snapshotting
                .store
                .save(attestation, &state)
                .map_err(|error| error.to_string())
        });
    match kept {
        Ok(()) => {
            let metrics = &snapshotting.shared.metrics;
            metrics.snapshots_taken.fetch_add(1, Ordering::Relaxed);
            metrics.snapshot_height.store(height.0, Ordering::Relaxed);
            tracing::debug!(height = height.0, bytes = state.len(), "snapshot taken");
        }
        Err(error) => {
            tracing::error!(height = height.0, %error, "cannot keep the application's snapshot")
        }
    }
}

/// Where a snapshot may come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The node's own store only.
    Own,
    /// The node's own, else peers.
    Any,
}

/// Finds, fetches, checks and restores snapshots for a node's application.
struct Fetcher {
    snapshotting: Arc<Snapshotting>,
    /// Connections to peers, kept between attempts.
    peers: HashMap<NodeId, Arc<Client>>,
}

impl Fetcher {
    fn new(snapshotting: Arc<Snapshotting>) -> Fetcher {
        Fetcher {
            snapshotting,
            peers: HashMap::new(),
        }
    }

    /// Whether the node holds a snapshot of its own at or above `height`.
    fn holds(&self, height: SeqNum) -> bool {
        self.snapshotting
            .store
            .newest()
            .is_some_and(|own| own.manifest.height >= height)
    }

    /// Restores the application from a snapshot at `at_least` or above:
    /// the node's own if it has one, else (from [`Source::Any`]) one f+1
    /// peers signed. Returns its height.
    async fn restore(
        &mut self,
        application: &SharedApplication,
        at_least: SeqNum,
        source: Source,
    ) -> Result<SeqNum, String> {
        let own = self.snapshotting.store.newest();
        let (manifest, state) = match own.filter(|own| own.manifest.height >= at_least) {
            Some(own) => {
                let store = self.snapshotting.store.clone();
                let height = own.manifest.height;
                let state = tokio::task::spawn_blocking(move || store.state(height))
                    .await
                    .map_err(|error| error.to_string())?
                    .map_err(|error| error.to_string())?
                    .ok_or("the node's own snapshot was forgotten meanwhile")?;
                (own.manifest, state)
            }
            None if source == Source::Own => {
                return Err(format!(
                    "no snapshot of its own at height {} or above",
                    at_least.0
                ))
            }
            None => {
                let fetched = self.fetch(at_least).await;
                if fetched.is_err() {
                    self.snapshotting
                        .shared
                        .metrics
                        .snapshot_fetches_failed
                        .fetch_add(1, Ordering::Relaxed);
                }
                fetched?
            }
        };
        let height = manifest.height;
        let application = application.clone();
        let snapshotting = self.snapshotting.clone();
        tokio::task::spawn_blocking(move || {
            lock(&application)
                .restore(height, &state)
                .map_err(|error| {
                    format!(
                        "the application refused the snapshot at height {}: {error}",
                        height.0
                    )
                })?;
            // Kept as the node's own, signed: f+1 signatures (one honest)
            // vouch for it, so this node's signature is true too, and a
            // restart restores it without asking peers.
            if snapshotting.store.newest().map(|own| own.manifest.height) != Some(height) {
                let attestation =
                    SnapshotAttestation::sign(manifest, snapshotting.id, &snapshotting.key);
                if let Err(error) = snapshotting.store.save(attestation, &state) {
                    tracing::warn!(%error, "cannot keep the restored snapshot");
                }
            }
            Ok::<(), String>(())
        })
        .await
        .map_err(|error| error.to_string())??;
        let metrics = &self.snapshotting.shared.metrics;
        metrics.snapshots_restored.fetch_add(1, Ordering::Relaxed);
        metrics
            .snapshot_height
            .fetch_max(height.0, Ordering::Relaxed);
        tracing::info!(
            height = height.0,
            "the application was restored from a snapshot; blocks are fed from the next height"
        );
        Ok(height)
    }

    /// Asks every peer for its snapshots, picks the highest at or above
    /// `at_least` that f+1 of them signed, and fetches its chunks from
    /// those signers, checking each against the manifest.
    async fn fetch(&mut self, at_least: SeqNum) -> Result<(SnapshotManifest, Vec<u8>), String> {
        let snapshotting = self.snapshotting.clone();
        let cluster = &snapshotting.cluster;
        let peers: Vec<NodeId> = cluster
            .committee
            .ids()
            .filter(|&peer| peer != self.snapshotting.id)
            .collect();
        let mut offered = Vec::new();
        for &peer in &peers {
            match self.peer(peer).await {
                Ok(client) => match client.snapshots().await {
                    // A peer signs for itself, and holds two snapshots: a
                    // longer list from a liar costs no more checks.
                    Ok(held) => offered.extend(
                        held.into_iter()
                            .filter(|held| held.signer == peer)
                            .take(2 * crate::snapshots::KEEP),
                    ),
                    Err(error) => {
                        tracing::debug!(peer = peer.0, %error, "no snapshot list");
                        self.peers.remove(&peer);
                    }
                },
                Err(error) => {
                    tracing::debug!(peer = peer.0, %error, "cannot reach a peer for snapshots")
                }
            }
        }
        let Some((manifest, signers)) = certified(&cluster.committee, &offered, at_least) else {
            return Err(format!(
                "no snapshot at height {} or above is signed by f+1 = {} peers yet ({} offered)",
                at_least.0,
                cluster.committee.f() + 1,
                offered.len()
            ));
        };
        let mut sources = Vec::with_capacity(signers.len());
        for &signer in &signers {
            match self.peer(signer).await {
                Ok(client) => sources.push((signer, client)),
                Err(error) => {
                    tracing::debug!(peer = signer.0, %error, "cannot reach a snapshot's signer")
                }
            }
        }
        let Fetched { state, dropped } = fetch_chunks(&manifest, sources, &snapshotting).await;
        for peer in &dropped {
            self.peers.remove(peer);
        }
        Ok((manifest, state?))
    }

    async fn peer(&mut self, peer: NodeId) -> Result<Arc<Client>, crate::client::ClientError> {
        if let Some(client) = self.peers.get(&peer) {
            return Ok(client.clone());
        }
        let key = KeyPair::generate(&mut rand::rngs::OsRng);
        let mut client = Client::connect(&self.snapshotting.cluster, peer, key).await?;
        client.set_timeout(PEER_TIMEOUT);
        let client = Arc::new(client);
        self.peers.insert(peer, client.clone());
        Ok(client)
    }
}

/// What fetching a snapshot's chunks gave: the state, or why not; and the
/// signers whose connections failed (dropped, to be dialled afresh next
/// time, whether or not the fetch succeeded).
struct Fetched {
    state: Result<Vec<u8>, String>,
    dropped: Vec<NodeId>,
}

/// How one signer answered for one chunk.
enum Served {
    Good(Vec<u8>),
    /// Not matching the manifest, or no longer held: the signer is not
    /// asked again in this fetch.
    Refused,
    /// The connection failed: not asked again, and dialled afresh next
    /// time.
    Failed,
}

/// Fetches every chunk of `manifest` from all its `sources` at once (each
/// serves within its own history budget, so k signers restore about k
/// times as fast as one): each idle signer is given the next chunk not yet
/// fetched. A signer that serves a chunk not matching the manifest (a
/// liar, or damaged files), no longer holds it, or fails to answer is
/// counted and not asked again in this fetch, and its chunk goes to the
/// next idle signer; the fetch fails only when chunks are missing and no
/// signer is left. At most one chunk per signer is in flight, and each is
/// copied into place as it arrives: memory is the state plus one chunk per
/// signer.
async fn fetch_chunks(
    manifest: &SnapshotManifest,
    sources: Vec<(NodeId, Arc<Client>)>,
    snapshotting: &Arc<Snapshotting>,
) -> Fetched {
    let count = manifest.chunks.len();
    let manifest = Arc::new(manifest.clone());
    let mut waiting: std::collections::VecDeque<u32> = (0..count as u32).collect();
    // The manifest's size was checked with its signature (at most 16 GiB).
    let mut state = vec![0u8; manifest.size as usize];
    let mut missing = count;
    let mut idle = sources;
    let mut dropped = Vec::new();
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        while !waiting.is_empty() && !idle.is_empty() {
            let (Some(index), Some((peer, client))) = (waiting.pop_front(), idle.pop()) else {
                break;
            };
            let manifest = manifest.clone();
            in_flight.spawn(async move {
                let served = match client.snapshot_chunk(manifest.height, index).await {
                    Ok(Some(bytes)) => match manifest.check_chunk(index, &bytes) {
                        Ok(()) => Served::Good(bytes),
                        Err(error) => {
                            tracing::warn!(peer = peer.0, %error, "a peer served a snapshot chunk that does not match; fetching it from the other signers");
                            Served::Refused
                        }
                    },
                    Ok(None) => {
                        tracing::debug!(peer = peer.0, index, "the peer no longer holds the snapshot");
                        Served::Refused
                    }
                    Err(error) => {
                        tracing::debug!(peer = peer.0, %error, "no snapshot chunk");
                        Served::Failed
                    }
                };
                (peer, client, index, served)
            });
        }
        let Some(joined) = in_flight.join_next().await else {
            break;
        };
        let Ok((peer, client, index, served)) = joined else {
            continue;
        };
        match served {
            Served::Good(bytes) => {
                // Checked against the manifest, so the range exists and
                // has the chunk's length.
                if let Ok(range) = manifest.chunk_range(index) {
                    state[range.start as usize..range.end as usize].copy_from_slice(&bytes);
                    missing -= 1;
                }
                idle.push((peer, client));
            }
            Served::Refused | Served::Failed => {
                snapshotting
                    .shared
                    .metrics
                    .snapshot_fetches_failed
                    .fetch_add(1, Ordering::Relaxed);
                if matches!(served, Served::Failed) {
                    dropped.push(peer);
                }
                waiting.push_front(index);
            }
        }
    }
    let state = if missing == 0 {
        Ok(state)
    } else {
        Err(format!(
            "no signer of the snapshot at height {} served {missing} of its {count} chunks (a signer that served a bad chunk or failed is not asked again in a fetch)",
            manifest.height.0
        ))
    };
    Fetched { state, dropped }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::DiskStorage;
    use bftd_protocol::{CommittedBlock, Storage};
    use std::sync::atomic::AtomicU64;
    use std::time::Instant;

    /// Collects the heights delivered.
    struct Heights(Arc<Mutex<Vec<u64>>>);

    impl Application for Heights {
        fn deliver(&mut self, block: &CommittedBlock, _duplicates: &[u32]) {
            self.0.lock().unwrap().push(block.height().0);
        }
    }

    /// A read error while feeding an embedded application (a disk hiccup)
    /// is retried, counted and logged: delivery resumes where it stopped,
    /// every block exactly once, instead of ending silently for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follow_retries_read_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = DiskStorage::open(&dir.path().join("store.redb")).unwrap();
        let deliveries: Vec<_> = (1..=5)
            .map(|height| crate::storage::tests::delivery(height, vec![]))
            .collect();
        storage.apply(&[], &deliveries).unwrap();
        let failures_left = Arc::new(AtomicU64::new(2));
        let failing = failures_left.clone();
        let read: ReadBlocks = Arc::new(move |from| {
            if failing
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(StorageError {
                    source: "injected read error".into(),
                });
            }
            storage.blocks_from(from, 2)
        });
        let errors = Arc::new(AtomicU64::new(0));
        let counted = errors.clone();
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let needs = Arc::new(AtomicU64::new(0));
        let told = needs.clone();
        let (_height_tx, height) = watch::channel(SeqNum(5));
        let feed = Feed {
            application: Box::new(Heights(delivered.clone())),
            read,
            first_height: Arc::new(|| SeqNum(1)),
            read_error: Box::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
            }),
            fed: Box::new(move |next| told.store(next.0, Ordering::SeqCst)),
            snapshotting: None,
        };
        let task = tokio::spawn(follow(feed, SeqNum(1), height));
        let deadline = Instant::now() + Duration::from_secs(10);
        while delivered.lock().unwrap().len() < 5 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        task.abort();
        assert_eq!(
            *delivered.lock().unwrap(),
            vec![1, 2, 3, 4, 5],
            "delivered after two read errors"
        );
        assert_eq!(errors.load(Ordering::SeqCst), 2, "read errors counted");
        assert_eq!(
            needs.load(Ordering::SeqCst),
            6,
            "the node told it needs 6 next"
        );
    }
}

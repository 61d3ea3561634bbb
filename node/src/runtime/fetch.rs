//! Serving peers' state-transfer fetches (`FetchBlocks`) off the consensus
//! task.
//!
//! A fetch reads up to `fetch_max_blocks` blocks (up to 16 MiB) from the
//! store and encodes and signs the answer. Done by the replica, that work
//! ran on the consensus task: one small signed request from a peer held up
//! ordering for a disk read, and a peer asking in a loop could keep it
//! busy. Here ingress hands verified fetches to this task through a bounded
//! queue (full: the fetch is refused and counted), each peer has a token
//! bucket in bytes served per second (empty: refused and counted), and the
//! reads, encoding and signing run on a blocking thread, one fetch at a
//! time, the answer going straight to the transport. The replica never sees
//! a fetch; the simulator's replicas still answer them themselves, with the
//! same [`bftd_protocol::replica::blocks_to_serve`].

use super::Shared;
use crate::storage::DiskStorage;
use crate::transport::{Bytes, Transport};
use bftd_protocol::message::{Blocks, FetchBlocks};
use bftd_protocol::replica::{blocks_to_serve, is_pruned};
use bftd_protocol::signer::Signer;
use bftd_protocol::{codec, CheckpointCertificate, NodeId, Signed};

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Fetches waiting to be served, at most; beyond, they are refused (the
/// fetcher times out and asks another peer).
pub(crate) const FETCH_QUEUE: usize = 64;
/// Least a fetch costs from its peer's bucket, even if it finds nothing:
/// asking for heights nobody has is not free either.
const MIN_FETCH_COST: f64 = 1024.0;

/// A verified fetch, from the peer that signed it.
pub(crate) struct FetchRequest {
    pub from: NodeId,
    pub request: Signed<FetchBlocks>,
}

/// Bytes a peer may be served: `rate` per second, at most `burst` saved up.
/// A fetch is served while the balance is positive and then charged its
/// whole size, so the balance may go negative by one answer: an answer
/// larger than the burst is still served, and paid back before the next.
#[derive(Clone, Debug)]
pub(crate) struct TokenBucket {
    balance: f64,
    rate: f64,
    burst: f64,
    updated: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: u64, burst: u64, now: Instant) -> TokenBucket {
        TokenBucket {
            balance: burst as f64,
            rate: rate as f64,
            burst: burst as f64,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.balance = (self.balance + elapsed * self.rate).min(self.burst);
        self.updated = now;
    }

    /// Whether anything may be served now.
    pub(crate) fn admits(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.balance > 0.0
    }

    /// Charges what was served.
    pub(crate) fn charge(&mut self, bytes: f64) {
        self.balance -= bytes;
    }

    /// How long until anything may be served (zero: now).
    pub(crate) fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.balance > 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((-self.balance + 1.0) / self.rate.max(1.0))
        }
    }
}

/// What serving fetches needs.
pub(crate) struct FetchServer {
    pub storage: DiskStorage,
    pub transport: Transport,
    pub shared: Arc<Shared>,
    /// Signs the answers. A `Blocks` answer is freely signable (no safety
    /// rule: it only carries blocks with their own commit certificates),
    /// and this signer signs nothing else, so it needs none of the
    /// replica's safety state.
    pub signer: Arc<Signer>,
    pub fetch_max_blocks: u64,
    /// Bytes per second served to one peer, and how many it may save up.
    pub rate: u64,
    pub burst: u64,
    /// The stable checkpoint, as consensus last published it: sent with
    /// the blocks so a fetcher far behind can advance its watermarks.
    pub checkpoint: watch::Receiver<CheckpointCertificate>,
    pub requests: mpsc::Receiver<FetchRequest>,
}

impl FetchServer {
    /// Serves fetches, one at a time, until the queue closes.
    pub(crate) async fn run(mut self) {
        let mut buckets: HashMap<NodeId, TokenBucket> = HashMap::new();
        let metrics = &self.shared.metrics;
        while let Some(FetchRequest { from, request }) = self.requests.recv().await {
            let now = Instant::now();
            let bucket = buckets
                .entry(from)
                .or_insert_with(|| TokenBucket::new(self.rate, self.burst, now));
            if !bucket.admits(now) {
                metrics.fetches_refused_rate.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let storage = self.storage.clone();
            let signer = self.signer.clone();
            let max_blocks = self.fetch_max_blocks;
            let checkpoint = self.checkpoint.borrow().clone();
            let wanted = request.value;
            let answered = tokio::task::spawn_blocking(move || {
                let (blocks, bytes) = blocks_to_serve(&storage, wanted, max_blocks);
                // Heights this node pruned: answered with no block and the
                // stable checkpoint, a refusal the fetcher counts and shows
                // (`needs_snapshot`) before it asks another peer. Heights
                // it does not have yet: no answer (the fetcher's timer).
                let pruned = blocks.is_empty() && is_pruned(&storage, wanted);
                if blocks.is_empty() && !pruned {
                    return (None, bytes, 0, false);
                }
                let count = blocks.len();
                let encoded = signer
                    .sign(Blocks { blocks, checkpoint })
                    .ok()
                    .and_then(|signed| {
                        codec::encode(&bftd_protocol::WireMessage::Blocks(signed)).ok()
                    });
                (encoded, bytes, count, pruned)
            })
            .await;
            let Ok((encoded, bytes, count, pruned)) = answered else {
                continue;
            };
            bucket.charge((bytes as f64).max(MIN_FETCH_COST));
            if pruned {
                metrics
                    .fetches_refused_pruned
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(encoded) = encoded {
                    if self.transport.send(from, Bytes::from(encoded)).is_err() {
                        metrics.send_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                continue;
            }
            if let Some(encoded) = encoded {
                metrics.fetches_served.fetch_add(1, Ordering::Relaxed);
                metrics
                    .fetch_blocks_served
                    .fetch_add(count as u64, Ordering::Relaxed);
                if self.transport.send(from, Bytes::from(encoded)).is_err() {
                    metrics.send_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A bucket serves while its balance lasts, refuses after, and serves
    /// again once the rate has paid back what was overdrawn.
    #[test]
    fn token_bucket_refuses_beyond_its_rate_and_refills() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1000, 500, start);
        assert!(bucket.admits(start));
        bucket.charge(2000.0);
        assert!(!bucket.admits(start + Duration::from_millis(1000)), "-500");
        assert!(bucket.admits(start + Duration::from_millis(1600)), "+100");
        // Saved up at most the burst.
        let mut idle = TokenBucket::new(1000, 500, start);
        assert!(idle.admits(start + Duration::from_secs(100)));
        idle.charge(600.0);
        assert!(!idle.admits(start + Duration::from_secs(100)));
    }

    /// `wait` says how long until the overdrawn balance is paid back, and
    /// after that long the bucket admits again.
    #[test]
    fn token_bucket_says_how_long_to_wait() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1000, 1000, start);
        assert_eq!(bucket.wait(start), Duration::ZERO);
        bucket.charge(3000.0);
        let wait = bucket.wait(start);
        assert!(
            wait >= Duration::from_millis(2000) && wait <= Duration::from_millis(2002),
            "{wait:?}"
        );
        assert!(!bucket.admits(start + Duration::from_millis(1999)));
        assert_eq!(bucket.wait(start + wait), Duration::ZERO);
    }
}

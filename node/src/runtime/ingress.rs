//! Peer frames in: decode and verify every signature off the consensus task,
//! in batches (one batch verification for all the messages that arrived
//! together), then hand verified messages to consensus.
//!
//! Two lanes. Forwarded requests (a backup's `Forward`, up to a batch of
//! client requests, each signature checked in client-signed clusters) are
//! bulky to verify; consensus messages (pre-prepares, votes, checkpoints,
//! view changes, fetches) are what keeps the cluster live. Frames are sorted
//! by kind as they arrive ([`MessageKind::peek`], no decoding), consensus
//! frames are verified first, and at most one job verifies forwards at a
//! time, so under a flood of requests a pre-prepare never waits behind
//! thousands of request signatures (it did: an overloaded client-signed
//! cluster missed its request timers and changed views again and again).
//!
//! Verified state-transfer fetches do not go to consensus: they go to the
//! fetch server (`fetch.rs`), which reads the store for them on its own,
//! within a byte rate per peer. Its queue is bounded; a fetch that finds it
//! full is refused and counted. (Only in a lying node, `bftd-byzantine`,
//! do fetches still go to its replica, so that its intercept can withhold
//! or doctor the answers as before.)

use super::consensus::Input;
use super::fetch::FetchRequest;
use super::Shared;
use crate::transport::PeerFrame;
use bftd_protocol::message::MessageKind;
use bftd_protocol::{codec, verify_messages, GrantCachingVerifier, VerifyError, WireMessage};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Consensus frames verified together at most.
const MAX_BATCH: usize = 128;
/// Forward frames verified together at most (each may hold a whole batch of
/// requests).
const FORWARDS_PER_JOB: usize = 4;
/// Frames read but not yet verified, per lane, at most: beyond, ingress
/// stops reading and the transport's bounded queues push back on the peers.
const MAX_WAITING: usize = 1024;
/// Verification jobs in flight at once (one per core is plenty).
const MAX_JOBS: usize = 2;

/// Which lane a frame waits in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lane {
    Consensus,
    Requests,
}

#[derive(Default)]
struct Lanes {
    consensus: VecDeque<PeerFrame>,
    requests: VecDeque<PeerFrame>,
}

impl Lanes {
    fn push(&mut self, frame: PeerFrame) {
        match MessageKind::peek(&frame.frame) {
            Some(MessageKind::Forward) => self.requests.push_back(frame),
            // Garbage goes with consensus frames: it is cheap to refuse.
            _ => self.consensus.push_back(frame),
        }
    }

    fn full(&self) -> bool {
        self.consensus.len() >= MAX_WAITING || self.requests.len() >= MAX_WAITING
    }

    /// The next job to start, consensus first; at most one requests job
    /// runs at a time.
    fn next_job(&mut self, requests_running: bool) -> Option<(Lane, Vec<PeerFrame>)> {
        if !self.consensus.is_empty() {
            let take = self.consensus.len().min(MAX_BATCH);
            return Some((Lane::Consensus, self.consensus.drain(..take).collect()));
        }
        if !requests_running && !self.requests.is_empty() {
            let take = self.requests.len().min(FORWARDS_PER_JOB);
            return Some((Lane::Requests, self.requests.drain(..take).collect()));
        }
        None
    }
}

/// Runs until the frame channel closes.
pub(crate) async fn run(
    mut frames: mpsc::Receiver<PeerFrame>,
    inputs: mpsc::Sender<Input>,
    fetches: mpsc::Sender<FetchRequest>,
    shared: Arc<Shared>,
) {
    let mut lanes = Lanes::default();
    let mut jobs: JoinSet<(Lane, Vec<Input>)> = JoinSet::new();
    let mut requests_running = false;
    let mut open = true;
    while open || !jobs.is_empty() || !lanes.consensus.is_empty() || !lanes.requests.is_empty() {
        // Read whatever has arrived, up to the lanes' bounds.
        while open && !lanes.full() {
            match frames.try_recv() {
                Ok(frame) => lanes.push(frame),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        while jobs.len() < MAX_JOBS {
            let Some((lane, batch)) = lanes.next_job(requests_running) else {
                break;
            };
            requests_running |= lane == Lane::Requests;
            let shared = shared.clone();
            jobs.spawn_blocking(move || (lane, verify(batch, &shared)));
        }
        let idle = jobs.is_empty();
        tokio::select! {
            frame = frames.recv(), if open && !lanes.full() => match frame {
                Some(frame) => lanes.push(frame),
                None => open = false,
            },
            done = jobs.join_next(), if !idle => {
                if let Some(Ok((lane, verified))) = done {
                    if lane == Lane::Requests {
                        requests_running = false;
                    }
                    if forward(&inputs, &fetches, &shared, verified).await.is_err() {
                        return;
                    }
                } else if let Some(Err(_)) = done {
                    // A verification job panicked (a bug): its lane may run again.
                    requests_running = false;
                }
            }
            else => {
                if !open && idle && lanes.consensus.is_empty() && lanes.requests.is_empty() {
                    break;
                }
            }
        }
    }
}

async fn forward(
    inputs: &mpsc::Sender<Input>,
    fetches: &mpsc::Sender<FetchRequest>,
    shared: &Shared,
    verified: Vec<Input>,
) -> Result<(), ()> {
    for input in verified {
        let input = match input {
            Input::Peer { from, message }
                if shared.byzantine.is_none()
                    && matches!(*message, WireMessage::FetchBlocks(_)) =>
            {
                let WireMessage::FetchBlocks(request) = message.into_inner() else {
                    continue;
                };
                if fetches.try_send(FetchRequest { from, request }).is_err() {
                    shared
                        .metrics
                        .fetches_refused_busy
                        .fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            other => other,
        };
        inputs.send(input).await.map_err(|_| ())?;
    }
    Ok(())
}

/// Decodes and verifies a batch; counts and drops what fails.
fn verify(batch: Vec<PeerFrame>, shared: &Shared) -> Vec<Input> {
    let metrics = &shared.metrics;
    let mut senders = Vec::with_capacity(batch.len());
    let mut messages = Vec::with_capacity(batch.len());
    for frame in batch {
        match codec::decode::<WireMessage>(&frame.frame) {
            Ok(message) => {
                senders.push(frame.from);
                messages.push(message);
            }
            Err(error) => {
                metrics.malformed_frames.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %frame.from, %error, "malformed frame");
            }
        }
    }
    let results = verify_messages(
        messages,
        &shared.committee,
        &shared.limits,
        &mut GrantCachingVerifier(&shared.grants),
    );
    senders
        .into_iter()
        .zip(results)
        .filter_map(|(from, result)| match result {
            Ok(message) => Some(Input::Peer { from, message }),
            Err(VerifyError::InvalidSignature) => {
                metrics.invalid_signatures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %from, "invalid signature");
                None
            }
            Err(VerifyError::Shape(what)) => {
                metrics.misshapen_messages.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %from, what, "message refused before verification");
                None
            }
            Err(error) => {
                metrics
                    .unverifiable_messages
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %from, %error, "unverifiable message");
                None
            }
        })
        .collect()
}

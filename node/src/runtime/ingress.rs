//! Peer frames in: decode and verify every signature off the consensus task,
//! in batches (one batch verification for all the messages that arrived
//! together), then hand verified messages to consensus.
//!
//! Two lanes, per peer. Forwarded requests (a backup's `Forward`, up to a
//! batch of client requests, each signature checked in client-signed
//! clusters) are bulky to verify; consensus messages (pre-prepares, votes,
//! checkpoints, view changes, fetches) are what keeps the cluster live. The
//! transport sorts frames by kind as they arrive ([`lane_of`],
//! [`MessageKind::peek`], no decoding) into queues of their sender's own,
//! and ingress takes them fairly: consensus frames first, round-robin
//! across peers, and at most one job verifies forwards at a time, so under
//! a flood of requests a pre-prepare never waits behind thousands of
//! request signatures (it did: an overloaded client-signed cluster missed
//! its request timers and changed views again and again). Ingress keeps no
//! queue of its own: what it has not taken waits in the sender's lane, and
//! a sender whose lane is full is the only one whose reading stops, so one
//! peer's forwards cannot hold back another's pre-prepares (design notes
//! §25).
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
use crate::transport::{Inbound, Lane, PeerFrame};
use bftd_protocol::message::MessageKind;
use bftd_protocol::{codec, verify_messages, GrantCachingVerifier, VerifyError, WireMessage};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Consensus frames verified together at most.
const MAX_BATCH: usize = 128;
/// Forward frames verified together at most (each may hold a whole batch of
/// requests).
const FORWARDS_PER_JOB: usize = 4;
/// Verification jobs in flight at once (one per core is plenty).
const MAX_JOBS: usize = 2;

/// The transport's lane for a peer frame: forwards wait in the requests
/// lane; everything else, garbage included (it is cheap to refuse), in the
/// consensus lane.
pub(crate) fn lane_of(frame: &[u8]) -> Lane {
    match MessageKind::peek(frame) {
        Some(MessageKind::Forward) => Lane::Requests,
        _ => Lane::Consensus,
    }
}

/// The next job to start, consensus first; at most one requests job runs at
/// a time.
fn next_job(frames: &mut Inbound, requests_running: bool) -> Option<(Lane, Vec<PeerFrame>)> {
    let mut batch = Vec::new();
    if frames.take(Lane::Consensus, MAX_BATCH, &mut batch) > 0 {
        return Some((Lane::Consensus, batch));
    }
    if !requests_running && frames.take(Lane::Requests, FORWARDS_PER_JOB, &mut batch) > 0 {
        return Some((Lane::Requests, batch));
    }
    None
}

/// Runs until the transport stops.
pub(crate) async fn run(
    mut frames: Inbound,
    inputs: mpsc::Sender<Input>,
    fetches: mpsc::Sender<FetchRequest>,
    shared: Arc<Shared>,
) {
    let mut jobs: JoinSet<(Lane, Vec<Input>)> = JoinSet::new();
    let mut requests_running = false;
    loop {
        while jobs.len() < MAX_JOBS {
            let Some((lane, batch)) = next_job(&mut frames, requests_running) else {
                break;
            };
            requests_running |= lane == Lane::Requests;
            let shared = shared.clone();
            jobs.spawn_blocking(move || (lane, verify(batch, &shared)));
        }
        if jobs.is_empty() && frames.is_finished() {
            return;
        }
        let idle = jobs.is_empty();
        let closed = frames.is_closed();
        tokio::select! {
            () = frames.ready(), if !closed => {}
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
            else => return,
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

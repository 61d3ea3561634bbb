//! Peer frames in: decode and verify every signature off the consensus task,
//! in batches (one batch verification for all the messages that arrived
//! together), then hand verified messages to consensus.
//!
//! Two lanes, per peer. Forwarded requests (a backup's `Forward`, up to a
//! batch of client requests, each signature checked in client-signed
//! clusters) are bulky to verify; consensus messages (pre-prepares, votes,
//! checkpoints, view changes, fetches) are what keeps the cluster live. The
//! transport sorts frames by kind as they arrive ([`lanes`],
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
use crate::transport::{Inbound, Lane, LaneOf, PeerFrame};
use bftd_protocol::message::MessageKind;
use bftd_protocol::{
    codec, verify_messages, CachingVerifier, MessageLimits, VerifyError, WireMessage,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Consensus frames verified together at most.
const MAX_BATCH: usize = 128;
/// Forward frames verified together at most (each may hold a whole batch of
/// requests).
const FORWARDS_PER_JOB: usize = 4;
/// Frame bytes one verification job takes at most (or one frame, if bigger):
/// decoding about doubles them, so with [`MAX_JOBS`] jobs this bounds what
/// verification holds at once whatever the peers send (before, a job took
/// four forwards of up to 64 MiB each and decoded them together: 500 MB).
const JOB_BYTES: usize = 16 * 1024 * 1024;
/// Verification jobs in flight at once (one per core is plenty).
const MAX_JOBS: usize = 2;
/// Consensus frames verified on the ingress task rather than a blocking
/// thread, at most (see [`is_small`]).
const INLINE_FRAMES: usize = 2;
/// Bytes of frames verified on the ingress task at most.
const INLINE_BYTES: usize = 2048;
/// Small batches verified inline before the task yields: a stream of small
/// frames (garbage decodes and is dropped without awaiting anything) must
/// not keep this task from finished jobs or the rest of the runtime.
const INLINE_PER_TURN: usize = 16;

/// How the transport sorts peer frames: forwards wait in the requests lane;
/// everything else, garbage included (it is cheap to refuse), in the
/// consensus lane; and a frame bigger than any honest message of its kind
/// (`MessageLimits::max_encoded_bytes`, for this committee's size) is
/// refused as soon as it is read, before it is queued or decoded (design
/// notes §27).
pub(crate) fn lanes(limits: MessageLimits, n: usize) -> LaneOf {
    let bounds: Vec<usize> = MessageKind::ALL
        .iter()
        .map(|&kind| limits.max_encoded_bytes(kind, n))
        .collect();
    let smallest = bounds.iter().copied().min().unwrap_or(usize::MAX);
    LaneOf::new(move |head, length| {
        let kind = MessageKind::peek(head);
        let bound = kind
            .and_then(|kind| MessageKind::ALL.iter().position(|k| *k == kind))
            .and_then(|index| bounds.get(index).copied())
            .unwrap_or(smallest);
        match kind {
            _ if length > bound => None,
            Some(MessageKind::Forward) => Some(Lane::Requests),
            _ => Some(Lane::Consensus),
        }
    })
}

/// Frames few and small enough to verify on the ingress task itself: at
/// most [`INLINE_FRAMES`] of at most [`INLINE_BYTES`] together, so a vote,
/// a status or a pre-prepare of a request or two (a few signatures, some
/// 100 µs at most), never a batch of client signatures.
fn is_small(batch: &[PeerFrame]) -> bool {
    batch.len() <= INLINE_FRAMES
        && batch.iter().map(|frame| frame.frame.len()).sum::<usize>() <= INLINE_BYTES
}

/// The next job to start, consensus first; at most one requests job runs at
/// a time.
fn next_job(frames: &mut Inbound, requests_running: bool) -> Option<(Lane, Vec<PeerFrame>)> {
    let mut batch = Vec::new();
    if frames.take(Lane::Consensus, MAX_BATCH, JOB_BYTES, &mut batch) > 0 {
        return Some((Lane::Consensus, batch));
    }
    if !requests_running && frames.take(Lane::Requests, FORWARDS_PER_JOB, JOB_BYTES, &mut batch) > 0
    {
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
        let mut inline = 0;
        while jobs.len() < MAX_JOBS && inline < INLINE_PER_TURN {
            let Some((lane, batch)) = next_job(&mut frames, requests_running) else {
                break;
            };
            if lane == Lane::Consensus && is_small(&batch) {
                // One vote or status: checking its signature here costs less
                // than handing it to a blocking thread and back.
                if forward(&inputs, &fetches, &shared, verify(batch, &shared))
                    .await
                    .is_err()
                {
                    return;
                }
                inline += 1;
                continue;
            }
            requests_running |= lane == Lane::Requests;
            let shared = shared.clone();
            jobs.spawn_blocking(move || (lane, verify(batch, &shared)));
        }
        if inline == INLINE_PER_TURN {
            tokio::task::yield_now().await;
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
        &mut CachingVerifier(&shared.client_checks),
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

#[cfg(test)]
mod tests {
    use super::*;
    use bftd_protocol::Config;

    /// A frame is sorted by its kind, and dropped before it is queued or
    /// decoded when it is bigger than any honest message of that kind (the
    /// reader holds it once, then frees it): a "prepare" of 100 KiB or a
    /// forward of 60 MiB (the huge-certificate and forward-flood attacks
    /// sent such frames; each was queued, then decoded, four at a time).
    #[test]
    fn frames_over_their_kinds_bound_are_dropped_before_queueing() {
        let limits = MessageLimits::of(&Config::default());
        let lanes = lanes(limits, 4);
        let frame = |kind: MessageKind, len: usize| {
            let index = MessageKind::ALL.iter().position(|k| *k == kind).unwrap() as u32;
            let mut frame = index.to_le_bytes().to_vec();
            frame.resize(len, 0);
            frame
        };
        let forward = limits.max_encoded_bytes(MessageKind::Forward, 4);
        assert_eq!(
            lanes.of(&frame(MessageKind::Forward, forward)),
            Some(Lane::Requests)
        );
        assert_eq!(lanes.of(&frame(MessageKind::Forward, forward + 1)), None);
        assert_eq!(lanes.of(&frame(MessageKind::Forward, 60 << 20)), None);
        assert_eq!(
            lanes.of(&frame(MessageKind::Prepare, 200)),
            Some(Lane::Consensus)
        );
        assert_eq!(lanes.of(&frame(MessageKind::Prepare, 100 << 10)), None);
        let blocks = frame(MessageKind::Blocks, 30 << 20);
        assert_eq!(lanes.of(&blocks), Some(Lane::Consensus));
        // Bytes no message starts with: the smallest bound.
        assert_eq!(lanes.of(&[0xff; 8]), Some(Lane::Consensus));
        assert_eq!(lanes.of(&vec![0xff; 1 << 20]), None);
    }
}

//! Peer frames in: decode and verify every signature off the consensus task,
//! in batches (one batch verification for all the messages that arrived
//! together), then hand verified messages to consensus.

use super::consensus::Input;
use super::Shared;
use crate::transport::PeerFrame;
use bftd_protocol::{codec, verify_messages, BatchVerifier, VerifyError, WireMessage};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Frames verified together at most.
const MAX_BATCH: usize = 128;
/// Verification jobs in flight at once (one per core is plenty).
const MAX_JOBS: usize = 2;

/// Runs until the frame channel closes.
pub(crate) async fn run(
    mut frames: mpsc::Receiver<PeerFrame>,
    inputs: mpsc::Sender<Input>,
    shared: Arc<Shared>,
) {
    let mut jobs = JoinSet::new();
    loop {
        // Keep at most MAX_JOBS verification jobs running; while at the
        // limit, wait for one to finish before reading more frames (the
        // transport then applies backpressure to the peers).
        while jobs.len() >= MAX_JOBS {
            if let Some(Ok(verified)) = jobs.join_next().await {
                if forward(&inputs, verified).await.is_err() {
                    return;
                }
            }
        }
        tokio::select! {
            frame = frames.recv() => {
                let Some(frame) = frame else { break };
                let mut batch = vec![frame];
                while batch.len() < MAX_BATCH {
                    match frames.try_recv() {
                        Ok(frame) => batch.push(frame),
                        Err(_) => break,
                    }
                }
                let shared = shared.clone();
                jobs.spawn_blocking(move || verify(batch, &shared));
            }
            Some(Ok(verified)) = jobs.join_next(), if !jobs.is_empty() => {
                if forward(&inputs, verified).await.is_err() {
                    return;
                }
            }
        }
    }
    while let Some(Ok(verified)) = jobs.join_next().await {
        if forward(&inputs, verified).await.is_err() {
            return;
        }
    }
}

async fn forward(inputs: &mpsc::Sender<Input>, verified: Vec<Input>) -> Result<(), ()> {
    for input in verified {
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
        shared.request_mode,
        &mut BatchVerifier,
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

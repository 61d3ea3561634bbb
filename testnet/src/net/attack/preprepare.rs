//! Issue 10 item 7: a byzantine future primary fills the buffer of
//! messages for views not yet entered. As the last node (primary of views
//! n-1, 2n-1, ...), validly signed pre-prepares for four of its future
//! views at many sequence numbers, each with a 4 MiB batch of valid
//! requests (within the batch limits, so only a byte bound stops it), and
//! every second one with a 16 MiB batch (beyond them).

use super::peer::{height, signed_requests, throwaway, Impostor};
use super::{pause, stopped, Context, Outcome};
use bftd_protocol::merkle::MerkleTree;
use bftd_protocol::message::PrePrepare;
use bftd_protocol::{Batch, SeqNum, View, WireMessage};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Payload bytes of each request (under the 64 KiB `max_request_bytes`).
const REQUEST_BYTES: usize = 65_000;

pub(super) async fn run(
    context: Arc<Context>,
    mut stop: watch::Receiver<bool>,
) -> Result<Outcome, String> {
    let impostor = Impostor::start(&context).await?;
    let n = context.state.n as u64;
    let me = u64::from(context.attacker);
    let views: Vec<View> = (0..4).map(|k| View(me + k * n)).collect();
    let mut signers: Vec<_> = views.iter().map(|&view| impostor.signer_in(view)).collect();
    let valid_until = SeqNum(height(&context).await + 1000);
    let client = throwaway();
    let settings = &context.cluster.protocol;
    let fits = (settings.max_batch_bytes / (REQUEST_BYTES + 256)).min(settings.max_batch_requests);
    let small = Arc::new(Batch {
        requests: signed_requests(&client, 1, fits, REQUEST_BYTES, valid_until),
    });
    let large = Arc::new(Batch {
        requests: signed_requests(&client, 10_000, 4 * fits, REQUEST_BYTES, valid_until),
    });
    let digests = [
        MerkleTree::new(&small).root(),
        MerkleTree::new(&large).root(),
    ];
    let window = settings.window.max(2);
    let (mut sent, mut refused_by_signer, mut bytes) = (0u64, 0u64, 0u64);
    let mut tick = 0u64;
    while !stopped(&stop) {
        let which = usize::from(tick % 5 == 4);
        let slot = (tick as usize) % signers.len();
        let seq = SeqNum(1 + (tick / signers.len() as u64) % (window - 1));
        let (batch, digest) = if which == 1 {
            (large.clone(), digests[1])
        } else {
            (small.clone(), digests[0])
        };
        let value = PrePrepare {
            view: views[slot],
            seq,
            digest,
        };
        match signers[slot].sign_pre_prepare(value) {
            Ok(pre_prepare) => {
                let message = WireMessage::PrePrepare {
                    pre_prepare,
                    batch,
                    vouches: Vec::new(),
                };
                bytes += impostor.broadcast(&message) as u64;
                sent += 1;
            }
            // The signer keeps one digest per sequence and view: a large
            // batch where a small one was signed is refused; skip it.
            Err(_) => refused_by_signer += 1,
        }
        tick += 1;
        pause(&mut stop, Duration::from_millis(200)).await;
    }
    let mut outcome = Outcome::default();
    outcome.count("future_preprepares_sent", sent as f64);
    outcome.count("batch_mb_per_node", bytes as f64 / 1e6);
    outcome.count("skipped", refused_by_signer as f64);
    outcome.count("attacker_queue_full_drops", impostor.dropped() as f64);
    impostor.transport.shutdown().await;
    Ok(outcome)
}

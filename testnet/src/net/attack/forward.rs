//! Issue 10 item 10: a byzantine replica floods forwards. As the last
//! node, ten times a second 4 MiB of fresh, validly signed requests to the
//! primary, in `Forward`s within the batch limits (each request must be
//! verified, held and ordered; the same 40 MiB/s whatever the cluster's
//! `max_batch_bytes`), and once a second a 60 MiB `Forward` (beyond them) to
//! every node.

use super::peer::{height, signed_requests, throwaway, Impostor};
use super::{pause, stopped, Context, Outcome};
use bftd_protocol::message::Forward;
use bftd_protocol::{NodeId, SeqNum, WireMessage};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Payload bytes of each request.
const REQUEST_BYTES: usize = 65_000;
/// Requests sent to the primary per tick (4 MiB of them).
const REQUESTS_PER_TICK: usize = 64;
/// Requests in the 60 MiB forward.
const HUGE_REQUESTS: usize = 930;

pub(super) async fn run(
    context: Arc<Context>,
    mut stop: watch::Receiver<bool>,
) -> Result<Outcome, String> {
    let impostor = Impostor::start(&context).await?;
    let signer = impostor.signer();
    let valid_until = SeqNum(height(&context).await + 1000);
    let settings = &context.cluster.protocol;
    let fits = (settings.max_batch_bytes / (REQUEST_BYTES + 256)).min(settings.max_batch_requests);
    let huge = signer
        .sign(Forward {
            requests: signed_requests(&throwaway(), 1, HUGE_REQUESTS, REQUEST_BYTES, valid_until),
        })
        .map(WireMessage::Forward)
        .map_err(|e| e.to_string())?;
    let client = throwaway();
    let primary = NodeId(0);
    let (mut forwards, mut huge_sent, mut bytes) = (0u64, 0u64, 0u64);
    let mut next_id = 1_000_000u64;
    let mut tick = 0u64;
    while !stopped(&stop) {
        let valid_until = SeqNum(height(&context).await + 500);
        let mut requests = signed_requests(
            &client,
            next_id,
            REQUESTS_PER_TICK,
            REQUEST_BYTES,
            valid_until,
        );
        next_id += REQUESTS_PER_TICK as u64;
        while !requests.is_empty() {
            let rest = requests.split_off(fits.max(1).min(requests.len()));
            if let Ok(forward) = signer.sign(Forward { requests }) {
                bytes += impostor.send(primary, &WireMessage::Forward(forward)) as u64;
                forwards += 1;
            }
            requests = rest;
        }
        if tick.is_multiple_of(10) {
            impostor.broadcast(&huge);
            huge_sent += 1;
        }
        tick += 1;
        pause(&mut stop, Duration::from_millis(100)).await;
    }
    let mut outcome = Outcome::default();
    outcome.count("valid_forwards_to_primary", forwards as f64);
    outcome.count("valid_forward_mb", bytes as f64 / 1e6);
    outcome.count("huge_forwards_per_node", huge_sent as f64);
    outcome.count("attacker_queue_full_drops", impostor.dropped() as f64);
    impostor.transport.shutdown().await;
    Ok(outcome)
}

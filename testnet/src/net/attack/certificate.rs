//! Issue 10 item 6: certificates built to cost. As the last node (its
//! key), `Blocks` messages whose checkpoint certificate holds one valid
//! vote repeated until the frame is 60 MB (~800,000 copies: a million would
//! not fit the 64 MiB frame limit), and certificates of 10,000 distinct forged
//! votes. A node that verified before checking the shape would check a
//! million signatures per frame.

use super::peer::Impostor;
use super::{pause, stopped, Context, Outcome};
use bftd_crypto::{Digest, Signature};
use bftd_protocol::message::{Blocks, Checkpoint};
use bftd_protocol::{NodeId, QuorumCertificate, SeqNum, Vote, WireMessage};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Bytes of the big certificate's votes: the frame stays under the 64 MiB
/// frame limit (a million votes would not).
const REPEATED_BYTES: u64 = 60_000_000;
/// Distinct forged votes in the small ones.
const FORGED_VOTES: usize = 10_000;

pub(super) async fn run(
    context: Arc<Context>,
    mut stop: watch::Receiver<bool>,
) -> Result<Outcome, String> {
    let impostor = Impostor::start(&context).await?;
    let signer = impostor.signer();
    let checkpoint = Checkpoint {
        seq: SeqNum(64),
        block_hash: Digest([9; 32]),
    };
    let vote = signer.sign(checkpoint).map_err(|e| e.to_string())?;
    let blocks = |votes: Vec<Vote>| -> Result<WireMessage, String> {
        let certificate = QuorumCertificate {
            value: checkpoint,
            votes,
        };
        signer
            .sign(Blocks {
                blocks: Vec::new(),
                checkpoint: certificate,
            })
            .map(WireMessage::Blocks)
            .map_err(|e| e.to_string())
    };
    let one = Vote {
        signer: vote.signer,
        signature: vote.signature,
    };
    let copies = REPEATED_BYTES / bftd_protocol::codec::encoded_len(&one).unwrap_or(80).max(1);
    let repeated = blocks(vec![one; copies as usize])?;
    let forged = blocks(
        (0..FORGED_VOTES)
            .map(|index| Vote {
                signer: NodeId((index % 65_536) as u16),
                signature: Signature([(index % 256) as u8; 64]),
            })
            .collect(),
    )?;
    let (mut big, mut small, mut bytes) = (0u64, 0u64, 0u64);
    let mut tick = 0u64;
    while !stopped(&stop) {
        // One 60 MB frame per node per second, twenty small ones.
        if tick.is_multiple_of(20) {
            bytes += impostor.broadcast(&repeated) as u64;
            big += 1;
        }
        bytes += impostor.broadcast(&forged) as u64;
        small += 1;
        tick += 1;
        pause(&mut stop, Duration::from_millis(50)).await;
    }
    let mut outcome = Outcome::default();
    outcome.count("votes_in_repeated_certificate", copies as f64);
    outcome.count("repeated_vote_frames", big as f64);
    outcome.count("forged_vote_frames", small as f64);
    outcome.count("attack_mb_per_node", bytes as f64 / 1e6);
    outcome.count("attacker_queue_full_drops", impostor.dropped() as f64);
    impostor.transport.shutdown().await;
    Ok(outcome)
}

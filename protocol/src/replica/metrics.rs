//! Counters the replica keeps about itself; the daemon exports them.

use crate::message::MessageKind;

/// Why an input was dropped. Every drop is counted under one reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// For a view older than the current one.
    StaleView,
    /// For a future view, and that peer's buffer is full.
    FutureBufferFull,
    /// Sequence number outside the watermark window.
    OutsideWindow,
    /// A pre-prepare or new-view not from the view's primary, or a prepare
    /// from the primary.
    WrongSender,
    /// The batch does not match the digest.
    DigestMismatch,
    /// Batch over the size limits, or a request over its size limit.
    Oversized,
    /// A certificate that does not hold.
    InvalidCertificate,
    /// A view-change that does not hold.
    InvalidViewChange,
    /// A new-view whose `O` differs from the one recomputed from `V`, or
    /// whose `V` does not hold.
    InvalidNewView,
    /// A second, different message from the same signer for the same slot.
    Equivocation,
    /// Forwarded requests received by a replica that is not the primary.
    NotPrimary,
    /// The signer refused (would conflict with an earlier vote).
    SafetyRefused,
    /// A state-transfer block that does not verify or chain.
    InvalidBlock,
    /// A response nobody asked for, or a duplicate.
    Unsolicited,
    /// A message this replica is not in a state to use (for example while
    /// changing views).
    NotNow,
    /// A checkpoint for a sequence that is not a checkpoint, or a vote beyond
    /// what is kept per peer.
    InvalidCheckpoint,
    /// From a peer whose consensus settings differ from ours.
    OtherSettings,
}

impl DropReason {
    /// Every reason, in a fixed order.
    pub const ALL: [DropReason; 17] = [
        DropReason::StaleView,
        DropReason::FutureBufferFull,
        DropReason::OutsideWindow,
        DropReason::WrongSender,
        DropReason::DigestMismatch,
        DropReason::Oversized,
        DropReason::InvalidCertificate,
        DropReason::InvalidViewChange,
        DropReason::InvalidNewView,
        DropReason::Equivocation,
        DropReason::NotPrimary,
        DropReason::SafetyRefused,
        DropReason::InvalidBlock,
        DropReason::Unsolicited,
        DropReason::NotNow,
        DropReason::InvalidCheckpoint,
        DropReason::OtherSettings,
    ];

    /// A snake_case label.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::StaleView => "stale_view",
            DropReason::FutureBufferFull => "future_buffer_full",
            DropReason::OutsideWindow => "outside_window",
            DropReason::WrongSender => "wrong_sender",
            DropReason::DigestMismatch => "digest_mismatch",
            DropReason::Oversized => "oversized",
            DropReason::InvalidCertificate => "invalid_certificate",
            DropReason::InvalidViewChange => "invalid_view_change",
            DropReason::InvalidNewView => "invalid_new_view",
            DropReason::Equivocation => "equivocation",
            DropReason::NotPrimary => "not_primary",
            DropReason::SafetyRefused => "safety_refused",
            DropReason::InvalidBlock => "invalid_block",
            DropReason::Unsolicited => "unsolicited",
            DropReason::NotNow => "not_now",
            DropReason::InvalidCheckpoint => "invalid_checkpoint",
            DropReason::OtherSettings => "other_settings",
        }
    }

    fn index(self) -> usize {
        DropReason::ALL
            .iter()
            .position(|&reason| reason == self)
            .unwrap_or(0)
    }
}

fn kind_index(kind: MessageKind) -> usize {
    MessageKind::ALL
        .iter()
        .position(|&k| k == kind)
        .unwrap_or(0)
}

/// The replica's counters. Monotonic; the daemon exports them as Prometheus
/// counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    received: [u64; MessageKind::ALL.len()],
    sent: [u64; MessageKind::ALL.len()],
    dropped: [u64; DropReason::ALL.len()],
    /// View changes this replica started (sent a view-change for).
    pub view_changes_started: u64,
    /// New views installed.
    pub views_installed: u64,
    /// Blocks executed (including through state transfer).
    pub blocks_executed: u64,
    /// Requests executed (duplicates excluded).
    pub requests_executed: u64,
    /// Duplicate requests found in committed batches and skipped.
    pub duplicates_skipped: u64,
    /// Blocks obtained through state transfer.
    pub blocks_fetched: u64,
    /// Fetches a peer refused because it pruned the blocks asked for.
    pub fetches_refused_pruned: u64,
    /// Jumps past history every peer pruned: to a certified checkpoint,
    /// from the last `request_lifetime` blocks below it (see `jump.rs`).
    pub jumps: u64,
    /// Requests refused because the pending set was full.
    pub requests_refused_busy: u64,
    /// Requests refused on arrival as expired, or valid too far ahead.
    pub requests_refused_validity: u64,
    /// Requests received again while pending or after they executed
    /// (client retries and replays); each is ordered at most once.
    pub requests_replayed: u64,
    /// Pieces of misbehaviour evidence recorded.
    pub evidence: u64,
    /// Checkpoints that became stable.
    pub checkpoints_stable: u64,
    /// Votes and pre-prepares re-sent while execution stalled.
    pub retransmissions: u64,
    /// Requests this replica relayed to every replica after waiting one
    /// request timeout for them.
    pub requests_relayed: u64,
    /// Times this replica began to suspect the primary (a request waited
    /// twice the request timeout).
    pub suspicions: u64,
    /// "Behind" statuses not answered with the new-view, because that peer
    /// was sent it less than `new_view_resend_ms` ago.
    pub new_views_withheld: u64,
}

impl Metrics {
    pub(crate) fn received(&mut self, kind: MessageKind) {
        if let Some(count) = self.received.get_mut(kind_index(kind)) {
            *count += 1;
        }
    }

    pub(crate) fn sent(&mut self, kind: MessageKind) {
        if let Some(count) = self.sent.get_mut(kind_index(kind)) {
            *count += 1;
        }
    }

    pub(crate) fn dropped(&mut self, reason: DropReason) {
        if let Some(count) = self.dropped.get_mut(reason.index()) {
            *count += 1;
        }
    }

    /// Messages received, by kind.
    pub fn received_by_kind(&self) -> impl Iterator<Item = (MessageKind, u64)> + '_ {
        MessageKind::ALL
            .iter()
            .copied()
            .zip(self.received.iter().copied())
    }

    /// Messages sent, by kind (a broadcast counts once).
    pub fn sent_by_kind(&self) -> impl Iterator<Item = (MessageKind, u64)> + '_ {
        MessageKind::ALL
            .iter()
            .copied()
            .zip(self.sent.iter().copied())
    }

    /// Inputs dropped, by reason.
    pub fn dropped_by_reason(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .copied()
            .zip(self.dropped.iter().copied())
    }

    /// Inputs dropped for `reason`.
    pub fn dropped_for(&self, reason: DropReason) -> u64 {
        self.dropped.get(reason.index()).copied().unwrap_or(0)
    }

    /// All inputs dropped.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }
}

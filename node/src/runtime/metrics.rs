//! The node's metrics: counters kept by the shell, the replica's own
//! counters (copied after every step), a commit-latency histogram, and their
//! Prometheus text rendering.

use crate::client_api::Rejection;
use crate::transport::TransportStats;
use bftd_protocol::replica::{Evidence, Metrics as ReplicaMetrics, ReplicaStatus};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Commit-latency bucket bounds, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// A fixed-bucket histogram with atomic counters.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(value.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// What the consensus task publishes after each step.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The replica's position.
    pub status: ReplicaStatus,
    /// The replica's counters.
    pub replica: ReplicaMetrics,
    /// Evidence of misbehaviour (bounded).
    pub evidence: Vec<Evidence>,
}

/// Counters kept by the daemon around the replica.
#[derive(Debug, Default)]
pub struct NodeMetrics {
    /// Peer frames that did not decode.
    pub malformed_frames: AtomicU64,
    /// Peer messages with an invalid signature.
    pub invalid_signatures: AtomicU64,
    /// Peer messages signed by an unknown replica or otherwise unverifiable.
    pub unverifiable_messages: AtomicU64,
    /// Peer messages refused on their shape (counts, signers, sizes) before
    /// any signature in them was checked.
    pub misshapen_messages: AtomicU64,
    /// Client frames that did not decode.
    pub malformed_client_frames: AtomicU64,
    /// Requests refused, by reason.
    rejected: [AtomicU64; 6],
    /// Client requests received.
    pub client_requests: AtomicU64,
    /// Receipts dropped because the client did not read them in time.
    pub replies_dropped: AtomicU64,
    /// Subscriptions ended because the subscriber stopped reading (its
    /// queue stayed full for `subscriber_stall_ms`).
    pub subscriptions_ended: AtomicU64,
    /// Client connections closed for sending nothing for
    /// `client_idle_timeout_ms`.
    pub clients_closed_idle: AtomicU64,
    /// Outgoing messages the transport dropped (queue full).
    pub send_dropped: AtomicU64,
    /// Store reads started to stream blocks to subscribers.
    pub subscription_reads: AtomicU64,
    /// Committed blocks loaded from the store (and their Merkle trees
    /// rebuilt) to answer a request that executed earlier.
    pub receipt_block_loads: AtomicU64,
    /// Subscriber store reads under way now, and the most there ever were
    /// at once.
    pub subscription_reads_running: AtomicU64,
    pub subscription_reads_peak: AtomicU64,
    /// Reads of old blocks for subscribers that waited for `[clients]
    /// history_bytes_per_second`.
    pub subscription_history_paced: AtomicU64,
    /// Requests answered "busy" because too many old blocks already waited
    /// to be loaded for receipts.
    pub receipt_loads_refused: AtomicU64,
    /// Peers' block fetches served, and the blocks in them.
    pub fetches_served: AtomicU64,
    pub fetch_blocks_served: AtomicU64,
    /// Peers' block fetches refused: the peer's byte rate was used up.
    pub fetches_refused_rate: AtomicU64,
    /// Peers' block fetches refused: too many waited to be served.
    pub fetches_refused_busy: AtomicU64,
    /// Peers' block fetches refused: they asked for pruned heights.
    pub fetches_refused_pruned: AtomicU64,
    /// The oldest block height the store still holds (above 1 once
    /// `[storage] retain_blocks` pruned).
    pub first_height: AtomicU64,
    /// The last height the embedded application was fed (or restored at);
    /// the store keeps every block above it.
    pub application_height: AtomicU64,
    /// Failed reads of committed blocks for the embedded application
    /// (each retried).
    pub application_read_errors: AtomicU64,
    /// Snapshots the embedded application took (design notes §48), and the
    /// height of the newest.
    pub snapshots_taken: AtomicU64,
    pub snapshot_height: AtomicU64,
    /// Times the embedded application was restored from a snapshot: its
    /// own node's, or one fetched from peers.
    pub snapshots_restored: AtomicU64,
    /// Snapshot chunks from peers that did not match their manifest, and
    /// fetches that failed (a peer that did not answer or lied).
    pub snapshot_fetches_failed: AtomicU64,
    /// Snapshot chunks served to peers.
    pub snapshot_chunks_served: AtomicU64,
    /// Storage write time.
    pub storage_apply: Histogram,
    /// Time from a client's request reaching this node to its receipt.
    pub commit_latency: Histogram,
    /// Time a client's request waited for room in the node's window
    /// (`[clients] in_flight_bytes`), included in `commit_latency`; only
    /// requests that found it full (its count is how many did).
    pub admission_wait: Histogram,
    /// The latest snapshot.
    pub snapshot: Mutex<Option<Snapshot>>,
}

fn rejection_index(reason: Rejection) -> usize {
    match reason {
        Rejection::Busy => 0,
        Rejection::Expired => 1,
        Rejection::TooLarge => 2,
        Rejection::BadSignature => 3,
        Rejection::WrongClient => 4,
        Rejection::TooFarAhead => 5,
    }
}

const REJECTIONS: [(Rejection, &str); 6] = [
    (Rejection::Busy, "busy"),
    (Rejection::Expired, "expired"),
    (Rejection::TooFarAhead, "too_far_ahead"),
    (Rejection::TooLarge, "too_large"),
    (Rejection::BadSignature, "bad_signature"),
    (Rejection::WrongClient, "wrong_client"),
];

impl NodeMetrics {
    /// A subscriber store read begins: counted, and the peak kept.
    pub fn subscription_read_started(&self) {
        self.subscription_reads.fetch_add(1, Ordering::Relaxed);
        let running = self
            .subscription_reads_running
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        self.subscription_reads_peak
            .fetch_max(running, Ordering::Relaxed);
    }

    /// A subscriber store read ended.
    pub fn subscription_read_ended(&self) {
        self.subscription_reads_running
            .fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a refused request.
    pub fn rejected(&self, reason: Rejection) {
        if let Some(counter) = self.rejected.get(rejection_index(reason)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Publishes a snapshot.
    pub fn publish(&self, snapshot: Snapshot) {
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some(snapshot);
    }

    /// The latest snapshot.
    pub fn latest(&self) -> Option<Snapshot> {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Prometheus text format; `admission_in_flight` is the request weight
    /// in the node's window now (`admission.rs`).
    pub fn render(&self, transport: &TransportStats, admission_in_flight: u64) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        if let Some(snapshot) = self.latest() {
            let status = &snapshot.status;
            let metrics = &snapshot.replica;
            gauge(
                &mut out,
                "bftd_height",
                "Highest committed (executed) block height.",
                status.last_executed.0,
            );
            gauge(
                &mut out,
                "bftd_view",
                "Current view (the target view during a view change).",
                status.view.0,
            );
            gauge(
                &mut out,
                "bftd_in_view_change",
                "1 while a view change is in progress.",
                u64::from(status.in_view_change),
            );
            gauge(
                &mut out,
                "bftd_primary",
                "Primary of the current view.",
                u64::from(status.primary.0),
            );
            gauge(
                &mut out,
                "bftd_stable_checkpoint",
                "Stable checkpoint (low watermark).",
                status.stable_checkpoint.0,
            );
            gauge(
                &mut out,
                "bftd_pending_requests",
                "Requests held and not yet executed.",
                status.pending_requests as u64,
            );
            gauge(
                &mut out,
                "bftd_active_slots",
                "Sequence numbers with protocol state in the window.",
                status.active_slots as u64,
            );
            gauge(
                &mut out,
                "bftd_peers_in_touch",
                "Other nodes heard from in the last few status intervals.",
                status.peers_in_touch as u64,
            );
            gauge(
                &mut out,
                "bftd_quorum",
                "Nodes a quorum needs (2f+1, this one included): below it nothing commits.",
                status.quorum as u64,
            );
            gauge(
                &mut out,
                "bftd_needs_snapshot",
                "1 when a peer refused this node's fetch because it pruned the blocks needed next (retain_blocks): it cannot catch up by blocks from that peer. Cleared when a block executes.",
                u64::from(status.needs_snapshot),
            );
            counter(
                &mut out,
                "bftd_fetches_refused_pruned_total",
                "This node's fetches refused by a peer that pruned the blocks asked for.",
                metrics.fetches_refused_pruned,
            );
            counter(
                &mut out,
                "bftd_jumps_total",
                "Jumps past history every peer pruned: to a certified stable checkpoint, skipping the blocks below it (design notes §47).",
                metrics.jumps,
            );
            counter(
                &mut out,
                "bftd_view_changes_total",
                "View changes this node started.",
                metrics.view_changes_started,
            );
            counter(
                &mut out,
                "bftd_views_installed_total",
                "New views installed.",
                metrics.views_installed,
            );
            counter(
                &mut out,
                "bftd_blocks_committed_total",
                "Blocks executed.",
                metrics.blocks_executed,
            );
            counter(
                &mut out,
                "bftd_requests_committed_total",
                "Requests executed (duplicates excluded).",
                metrics.requests_executed,
            );
            counter(
                &mut out,
                "bftd_duplicates_skipped_total",
                "Duplicate requests in committed batches, skipped.",
                metrics.duplicates_skipped,
            );
            counter(
                &mut out,
                "bftd_blocks_fetched_total",
                "Blocks obtained through state transfer.",
                metrics.blocks_fetched,
            );
            counter(
                &mut out,
                "bftd_checkpoints_stable_total",
                "Checkpoints that became stable.",
                metrics.checkpoints_stable,
            );
            counter(
                &mut out,
                "bftd_requests_replayed_total",
                "Requests received again while pending or after executing (ordered at most once).",
                metrics.requests_replayed,
            );
            counter(
                &mut out,
                "bftd_retransmissions_total",
                "Votes and pre-prepares re-sent while execution stalled.",
                metrics.retransmissions,
            );
            counter(
                &mut out,
                "bftd_new_views_withheld_total",
                "Behind statuses not answered with the new-view: that peer was sent it less than new_view_resend_ms ago.",
                metrics.new_views_withheld,
            );
            counter(
                &mut out,
                "bftd_requests_relayed_total",
                "Requests relayed to every replica after waiting one request timeout.",
                metrics.requests_relayed,
            );
            counter(
                &mut out,
                "bftd_suspicions_total",
                "Times this node began to suspect the primary (a request waited too long).",
                metrics.suspicions,
            );
            counter(
                &mut out,
                "bftd_misbehaviour_evidence_total",
                "Conflicting signed messages seen from one replica.",
                metrics.evidence,
            );
            let _ = writeln!(out, "# HELP bftd_messages_received_total Verified peer messages handed to the replica, by kind.\n# TYPE bftd_messages_received_total counter");
            for (kind, count) in metrics.received_by_kind() {
                let _ = writeln!(
                    out,
                    "bftd_messages_received_total{{kind=\"{}\"}} {count}",
                    kind.name()
                );
            }
            let _ = writeln!(out, "# HELP bftd_messages_sent_total Messages sent by the replica, by kind (a broadcast counts once).\n# TYPE bftd_messages_sent_total counter");
            for (kind, count) in metrics.sent_by_kind() {
                let _ = writeln!(
                    out,
                    "bftd_messages_sent_total{{kind=\"{}\"}} {count}",
                    kind.name()
                );
            }
            let _ = writeln!(out, "# HELP bftd_rejected_total Inputs refused, by reason.\n# TYPE bftd_rejected_total counter");
            for (reason, count) in metrics.dropped_by_reason() {
                let _ = writeln!(
                    out,
                    "bftd_rejected_total{{reason=\"{}\"}} {count}",
                    reason.name()
                );
            }
        }
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        for (name, value) in [
            ("malformed_frame", load(&self.malformed_frames)),
            ("invalid_signature", load(&self.invalid_signatures)),
            ("unverifiable", load(&self.unverifiable_messages)),
            ("malformed_shape", load(&self.misshapen_messages)),
            (
                "malformed_client_frame",
                load(&self.malformed_client_frames),
            ),
            ("oversized_frame", transport.oversized_received),
            ("oversized_for_kind", transport.oversized_for_kind),
            (
                "oversized_client_frame",
                transport.client_oversized_received,
            ),
            ("handshake_rejected", transport.handshake_rejected),
            ("handshake_failed", transport.handshake_failed),
            ("handshake_busy", transport.handshake_busy),
            (
                "handshake_per_address",
                transport.handshakes_refused_per_address,
            ),
            ("streams_refused", transport.streams_refused),
            ("clients_refused", transport.clients_refused),
            ("clients_per_address", transport.clients_refused_per_address),
        ] {
            let _ = writeln!(out, "bftd_rejected_total{{reason=\"{name}\"}} {value}");
        }
        let _ = writeln!(out, "# HELP bftd_client_rejected_total Client requests refused, by reason.\n# TYPE bftd_client_rejected_total counter");
        for (reason, name) in REJECTIONS {
            let value = self.rejected.get(rejection_index(reason)).map_or(0, load);
            let _ = writeln!(
                out,
                "bftd_client_rejected_total{{reason=\"{name}\"}} {value}"
            );
        }
        counter(
            &mut out,
            "bftd_client_requests_total",
            "Client requests received.",
            load(&self.client_requests),
        );
        counter(
            &mut out,
            "bftd_handshakes_retried_total",
            "Connection attempts answered with a QUIC Retry (address validation) under handshake pressure.",
            transport.handshakes_retried,
        );
        counter(
            &mut out,
            "bftd_clients_closed_idle_total",
            "Client connections closed after sending nothing for client_idle_timeout_ms.",
            load(&self.clients_closed_idle),
        );
        counter(
            &mut out,
            "bftd_replies_dropped_total",
            "Replies dropped because a client was not reading.",
            load(&self.replies_dropped),
        );
        gauge(
            &mut out,
            "bftd_application_height",
            "Last height the embedded application was fed or restored at; retention keeps every block above it (0: none yet, or no application).",
            load(&self.application_height),
        );
        counter(
            &mut out,
            "bftd_application_read_errors_total",
            "Failed reads of committed blocks for the embedded application (each retried).",
            load(&self.application_read_errors),
        );
        counter(
            &mut out,
            "bftd_snapshots_taken_total",
            "Snapshots the embedded application took (every [storage] snapshot_every heights).",
            load(&self.snapshots_taken),
        );
        gauge(
            &mut out,
            "bftd_snapshot_height",
            "Height of the newest snapshot the node holds (0: none).",
            load(&self.snapshot_height),
        );
        counter(
            &mut out,
            "bftd_snapshots_restored_total",
            "Times the embedded application was restored from a snapshot (its node's own, or one f+1 peers signed).",
            load(&self.snapshots_restored),
        );
        counter(
            &mut out,
            "bftd_snapshot_fetches_failed_total",
            "Snapshot fetches from peers that failed: no f+1 signed snapshot to restore, a peer that did not answer, or a chunk that did not match its manifest.",
            load(&self.snapshot_fetches_failed),
        );
        counter(
            &mut out,
            "bftd_snapshot_chunks_served_total",
            "Snapshot chunks served to peers.",
            load(&self.snapshot_chunks_served),
        );
        counter(
            &mut out,
            "bftd_subscriptions_ended_total",
            "Subscriptions ended because the subscriber stopped reading.",
            load(&self.subscriptions_ended),
        );
        counter(
            &mut out,
            "bftd_subscription_reads_total",
            "Store reads started to stream blocks to subscribers.",
            load(&self.subscription_reads),
        );
        let _ = writeln!(
            out,
            "# HELP bftd_subscription_reads_running Store reads for subscribers under way.\n# TYPE bftd_subscription_reads_running gauge\nbftd_subscription_reads_running {}",
            load(&self.subscription_reads_running)
        );
        let _ = writeln!(
            out,
            "# HELP bftd_subscription_reads_peak Most store reads for subscribers ever under way at once.\n# TYPE bftd_subscription_reads_peak gauge\nbftd_subscription_reads_peak {}",
            load(&self.subscription_reads_peak)
        );
        let _ = writeln!(
            out,
            "# HELP bftd_subscription_history_paced_total Reads of old blocks for subscribers that waited for [clients] history_bytes_per_second.\n# TYPE bftd_subscription_history_paced_total counter\nbftd_subscription_history_paced_total {}",
            load(&self.subscription_history_paced)
        );
        gauge(
            &mut out,
            "bftd_admission_in_flight_bytes",
            "Weight of this node's clients' requests in the cluster now (payload + 128, + 2048 if client-signed), of [clients] in_flight_bytes.",
            admission_in_flight,
        );
        counter(
            &mut out,
            "bftd_receipt_block_loads_total",
            "Committed blocks loaded from the store, Merkle tree rebuilt, to answer a request that executed earlier.",
            load(&self.receipt_block_loads),
        );
        counter(
            &mut out,
            "bftd_receipt_loads_refused_total",
            "Requests answered busy because too many old blocks waited to be loaded for receipts.",
            load(&self.receipt_loads_refused),
        );
        counter(
            &mut out,
            "bftd_fetches_served_total",
            "Peers' state-transfer fetches answered.",
            load(&self.fetches_served),
        );
        counter(
            &mut out,
            "bftd_fetch_blocks_served_total",
            "Blocks sent to peers in state-transfer answers.",
            load(&self.fetch_blocks_served),
        );
        let _ = writeln!(out, "# HELP bftd_fetches_refused_total Peers' state-transfer fetches refused, by reason ([peers] fetch_bytes_per_second used up; queue full).\n# TYPE bftd_fetches_refused_total counter");
        for (reason, value) in [
            ("rate", load(&self.fetches_refused_rate)),
            ("busy", load(&self.fetches_refused_busy)),
            ("pruned", load(&self.fetches_refused_pruned)),
        ] {
            let _ = writeln!(
                out,
                "bftd_fetches_refused_total{{reason=\"{reason}\"}} {value}"
            );
        }
        gauge(
            &mut out,
            "bftd_first_height",
            "Oldest block height the store holds ([storage] retain_blocks prunes below it).",
            load(&self.first_height),
        );
        counter(
            &mut out,
            "bftd_send_dropped_total",
            "Outgoing peer messages dropped (queue full).",
            load(&self.send_dropped),
        );
        counter(
            &mut out,
            "bftd_transport_frames_in_total",
            "Peer frames received.",
            transport.frames_in,
        );
        counter(
            &mut out,
            "bftd_transport_frames_out_total",
            "Peer frames sent.",
            transport.frames_out,
        );
        counter(
            &mut out,
            "bftd_transport_bytes_in_total",
            "Peer bytes received.",
            transport.bytes_in,
        );
        counter(
            &mut out,
            "bftd_transport_bytes_out_total",
            "Peer bytes sent.",
            transport.bytes_out,
        );
        counter(
            &mut out,
            "bftd_transport_dropped_queue_full_total",
            "Frames dropped at a full peer queue.",
            transport.dropped_queue_full,
        );
        counter(
            &mut out,
            "bftd_transport_reconnects_total",
            "Peer reconnections.",
            transport.reconnects,
        );
        counter(
            &mut out,
            "bftd_transport_silent_redials_total",
            "Peer connections that received nothing for 4 s and were replaced by a new dial (the peer crashed and restarted, or the path died).",
            transport.silent_redials,
        );
        gauge(
            &mut out,
            "bftd_transport_connections",
            "Peer connections established (cumulative).",
            transport.connections,
        );
        counter(
            &mut out,
            "bftd_client_connections_total",
            "Client connections accepted.",
            transport.client_connections,
        );
        self.commit_latency.render(
            &mut out,
            "bftd_commit_latency_seconds",
            "From a client's request reaching this node to its receipt.",
        );
        self.admission_wait.render(
            &mut out,
            "bftd_admission_wait_seconds",
            "Time a client's request waited for room in the node's window ([clients] in_flight_bytes) before going to consensus; part of the commit latency.",
        );
        self.storage_apply.render(
            &mut out,
            "bftd_storage_apply_seconds",
            "Durable write of one step (group commit).",
        );
        out
    }
}
